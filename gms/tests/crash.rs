//! Crash safety: SIGKILL in the middle of a stream of admin changes loses
//! nothing that was acknowledged.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fpn_gms::admin::{AdminRequest, GeView, GroupView, KeysView};

/// Upper bound on the changes one writer issues (the kill comes long before).
const MAX_CHANGES: u32 = 5_000;
/// The kill comes right after this many acknowledged GE additions per round.
const KILL_AFTER_GES: usize = 40;
/// Kill/restart rounds: an unflushed acknowledgement survives one kill by
/// luck now and then (sled writes its buffers on its own too), not three.
const ROUNDS: u32 = 3;

#[derive(Debug, Default)]
struct Acked {
    groups: Vec<u32>,
    ges: Vec<String>,
    /// Group -> highest key version an acknowledged rotation reported.
    versions: BTreeMap<u32, u32>,
}

/// Issues changes until the server stops answering; returns how many were issued.
fn writer(socket: PathBuf, base: u32, acked: Arc<Mutex<Acked>>, reached: mpsc::Sender<()>) -> u32 {
    let ask = |req: AdminRequest| fpn_gms::admin::request(&socket, &req, WAIT);
    let mut ges = 0;
    for i in base + 1..=base + MAX_CHANGES {
        // A mix of single-tree and multi-tree changes (GE + counters +
        // audit; keys + audit).
        let (req, kind) = match (i - base) % 3 {
            1 => (
                AdminRequest::GroupAdd {
                    num: i,
                    name: format!("g{i}"),
                },
                0,
            ),
            2 => (
                AdminRequest::GeAdd {
                    name: format!("ge{i}"),
                    kind: Some("ges".into()),
                    mode: Some("op".into()),
                    groups: vec![i - 1],
                    protect: Vec::new(),
                },
                1,
            ),
            _ => (AdminRequest::Rotate { group: Some(i - 2) }, 2),
        };
        let Ok(r) = ask(req) else { return i - base };
        assert!(r.ok, "{:?}", r.error);
        let mut a = acked.lock().unwrap();
        match kind {
            0 => a.groups.push(i),
            1 => {
                a.ges.push(format!("ge{i}"));
                ges += 1;
                if ges == KILL_AFTER_GES {
                    let _ = reached.send(());
                }
            }
            _ => {
                for v in r.data.as_array().unwrap() {
                    a.versions.insert(
                        v["group"].as_u64().unwrap() as u32,
                        v["version"].as_u64().unwrap() as u32,
                    );
                }
            }
        }
    }
    MAX_CHANGES
}

fn check(gms: &Gms, acked: &Acked) {
    let groups: Vec<GroupView> =
        serde_json::from_value(gms.admin(AdminRequest::GroupList)).unwrap();
    let ges: Vec<GeView> = serde_json::from_value(gms.admin(AdminRequest::GeList)).unwrap();
    let keys: Vec<KeysView> = serde_json::from_value(gms.admin(AdminRequest::Keys)).unwrap();
    for g in &acked.groups {
        assert!(
            groups.iter().any(|x| x.num == *g),
            "acknowledged group {g} lost"
        );
    }
    for n in &acked.ges {
        assert!(ges.iter().any(|x| &x.name == n), "acknowledged GE {n} lost");
    }
    for (g, v) in &acked.versions {
        let k = keys
            .iter()
            .find(|k| k.group == *g)
            .expect("group with keys");
        assert!(
            k.versions[0].version >= *v,
            "group {g}: acknowledged v{v} lost"
        );
    }
    // Overlay addresses stayed unique across the crashes.
    let mut overlays: Vec<_> = ges.iter().map(|g| g.overlay).collect();
    overlays.sort();
    overlays.dedup();
    assert_eq!(overlays.len(), ges.len());
    let audit = gms.admin(AdminRequest::Audit {
        after: None,
        limit: 10_000,
    });
    let audited = audit.as_array().unwrap().len();
    assert!(
        audited > acked.groups.len() + acked.ges.len(),
        "audit log has {audited} entries"
    );
}

#[test]
fn sigkill_during_admin_changes_loses_no_acknowledged_change() {
    let mut gms = Gms::start_new(&[]);
    let acked = Arc::new(Mutex::new(Acked::default()));
    for round in 0..ROUNDS {
        let (reached, at_count) = mpsc::channel();
        let w = {
            let (socket, acked) = (gms.socket(), acked.clone());
            std::thread::spawn(move || writer(socket, round * MAX_CHANGES, acked, reached))
        };
        // Kill without warning while the next changes are in flight: the
        // last acknowledgement is microseconds old, so only a flush before
        // it can have saved it.
        at_count
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer made no progress");
        gms.kill();
        let issued = w.join().unwrap();
        assert!(
            issued < MAX_CHANGES,
            "the kill did not interrupt the stream"
        );
        gms.start();
        check(&gms, &acked.lock().unwrap());
    }
}
