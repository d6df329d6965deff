//! The admin protocol: arbitrary text as JSON lines, each line decoded as an
//! admin request and, when it decodes, applied to a fresh GMS core in order
//! (a small in-memory store stands in for sled so each input starts clean
//! and runs fast). Nothing panics and every request gets an answer (the
//! admin paths assume their input came from our own CLI; this checks they
//! hold against anything a client of the admin socket can send).
#![no_main]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fpn_gms::admin::AdminRequest;
use fpn_gms::ca::Ca;
use fpn_gms::config::Config;
use fpn_gms::core::{Core, init_store};
use fpn_gms::schedule::Schedule;
use fpn_gms::store::{Batch, CommitSeq, Entry, Store, Syncer, Tree};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

const T0: u64 = 1_800_000_000;

/// Trees and an audit log in memory; commits apply a whole batch at once
/// and are "durable" at once (memory is all a fuzz run has).
#[derive(Default)]
struct MemStore {
    trees: Mutex<(BTreeMap<(Tree, Vec<u8>), Vec<u8>>, Vec<Vec<u8>>)>,
    commits: Arc<Commits>,
}

#[derive(Default)]
struct Commits(AtomicU64);

impl Syncer for Commits {
    fn committed(&self) -> CommitSeq {
        CommitSeq(self.0.load(Ordering::SeqCst))
    }
    fn synced(&self) -> CommitSeq {
        self.committed()
    }
    fn sync_through(&self, _seq: CommitSeq) -> fpn_gms::Result<()> {
        Ok(())
    }
}

impl Store for MemStore {
    fn get(&self, tree: Tree, key: &[u8]) -> fpn_gms::Result<Option<Zeroizing<Vec<u8>>>> {
        let t = self.trees.lock().unwrap();
        Ok(t.0.get(&(tree, key.to_vec())).cloned().map(Zeroizing::new))
    }
    fn scan(&self, tree: Tree) -> fpn_gms::Result<Vec<Entry>> {
        let t = self.trees.lock().unwrap();
        Ok(t.0
            .iter()
            .filter(|((tr, _), _)| *tr == tree)
            .map(|((_, k), v)| (k.clone(), Zeroizing::new(v.clone())))
            .collect())
    }
    fn commit(&self, batch: Batch) -> fpn_gms::Result<()> {
        let mut t = self.trees.lock().unwrap();
        for w in batch.writes {
            match w.value {
                Some(v) => {
                    t.0.insert((w.tree, w.key), v.to_vec());
                }
                None => {
                    t.0.remove(&(w.tree, w.key));
                }
            }
        }
        t.1.extend(batch.audit);
        self.commits.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn syncer(&self) -> Arc<dyn Syncer> {
        self.commits.clone()
    }
    fn audit_log(&self, after: Option<u64>, limit: usize) -> fpn_gms::Result<Vec<(u64, Vec<u8>)>> {
        let t = self.trees.lock().unwrap();
        Ok(t.1
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e.clone()))
            .filter(|(i, _)| after.is_none_or(|a| *i > a))
            .take(limit)
            .collect())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let requests: Vec<AdminRequest> = text
        .lines()
        .take(16)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if requests.is_empty() {
        return;
    }
    let store = MemStore::default();
    init_store(&store, "f.fpn.", T0).expect("init");
    let mut cfg = Config::new("f.fpn").expect("config");
    cfg.rotation_schedule = Schedule::Off;
    let ca = Ca::generate(T0).expect("ca");
    let mut core = Core::new(cfg, Box::new(store), ca, T0).expect("core");
    for (i, req) in requests.into_iter().enumerate() {
        let _ = core.handle_admin(req, T0 + i as u64);
    }
});
