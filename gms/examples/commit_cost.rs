//! Cost of a durable GMS change (not a test): commits to a real
//! [`SledStore`] in a temporary directory, each made durable
//! (flush + fdatasync) before the next "acknowledgement", first one at a
//! time, then from many writers at once so that the group commit shares one
//! sync among the changes that wait together.
//!
//! `cargo run --release -p fpn-gms --example commit_cost -- [CHANGES] [WRITERS] [DIR]`
//! (defaults 200, 16, a temporary directory under the current one: put it
//! on the disk the GMS will use).

use std::sync::Arc;
use std::time::Instant;

use fpn_gms::store::{Batch, SledStore, Store, Tree};

fn change(i: u64) -> Batch {
    // About the size of a GE record plus counters and an audit entry.
    let mut b = Batch::new();
    b.put(Tree::Ges, format!("ge{i}").into_bytes(), vec![b'x'; 300]);
    b.put(Tree::Meta, b"counters".to_vec(), i.to_be_bytes().to_vec());
    b.audit(format!("{{\"at\":{i},\"action\":\"ge add ge{i}\"}}").into_bytes());
    b
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let changes: u64 = args.first().map_or(Ok(200), |a| a.parse())?;
    let writers: u64 = args.get(1).map_or(Ok(16), |a| a.parse())?;
    let base = args
        .get(2)
        .map_or_else(|| ".".into(), std::path::PathBuf::from);
    let tmp = tempfile::tempdir_in(base)?;

    let store = Arc::new(SledStore::open(tmp.path())?);
    let sync = store.syncer();
    let t = Instant::now();
    for i in 0..changes {
        store.commit(change(i))?;
        sync.sync_all()?;
    }
    let one = t.elapsed();
    println!(
        "one at a time: {changes} changes, {} syncs, {:.3} ms per change",
        store.sync_rounds(),
        one.as_secs_f64() * 1e3 / changes as f64
    );

    // The server applies changes one after another under its lock and
    // syncs outside it: the same here (a mutex around commit).
    let rounds_before = store.sync_rounds();
    let lock = Arc::new(std::sync::Mutex::new(()));
    let t = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (store, lock) = (store.clone(), lock.clone());
            std::thread::spawn(move || -> fpn_gms::Result<()> {
                let sync = store.syncer();
                for i in 0..changes / writers {
                    let seq = {
                        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
                        store.commit(change(changes + w * changes + i))?;
                        sync.committed()
                    };
                    sync.sync_through(seq)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    let many = t.elapsed();
    let n = changes / writers * writers;
    println!(
        "{writers} writers at once: {n} changes, {} syncs, {:.3} ms per change",
        store.sync_rounds() - rounds_before,
        many.as_secs_f64() * 1e3 / n as f64
    );
    Ok(())
}
