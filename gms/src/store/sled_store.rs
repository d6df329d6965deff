//! The embedded sled backend.
//!
//! sled 0.34 keeps its data in `<dir>/db` (the log), `<dir>/conf`, and
//! `<dir>/blobs/<lsn>` for pages too large to inline; `snap.*` files are a
//! recovery cache it rebuilds from the log. Its `flush` writes the log with
//! `pwrite` and `sync_file_range`, which neither writes the file's metadata
//! nor flushes the device cache, and it never syncs blob files or
//! directories. So a sync round here is: `Db::flush`, then `fdatasync` of
//! the log, then an `fsync` of each blob file written since the last round
//! and of the blob directory. Files and directories sled creates at open
//! are synced once, at open.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use zeroize::Zeroizing;

use super::{Batch, CommitSeq, Entry, Failpoint, GroupCommit, Store, Syncer, Tree};
use crate::{Error, Result};

/// sled's page cache; the GMS's working set is small and the server keeps
/// its own in-memory view, so a small cache keeps memory per node honest.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// A [`Store`] in one sled database directory.
pub struct SledStore {
    trees: Vec<sled::Tree>,
    audit: sled::Tree,
    sync: Arc<SledSyncer>,
}

/// The sync side of a [`SledStore`] (see the module doc).
struct SledSyncer {
    db: sled::Db,
    dir: PathBuf,
    /// `<dir>/db`, opened once: an fd for fdatasync.
    log: File,
    /// Highest blob id synced so far (blob files are named by their lsn).
    blobs_synced: Mutex<i64>,
    group: GroupCommit,
    failpoint: Option<Failpoint>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    ///
    /// Only one process may hold it; a second open fails with a clear error.
    ///
    /// The test hook [`Failpoint`] is read from the environment here.
    pub fn open(dir: &Path) -> Result<Self> {
        let failpoint = Failpoint::from_env()?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            // Every acknowledged change is synced explicitly (SledSyncer);
            // the background flush only bounds what unacknowledged work
            // could be lost.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match e {
                // sled wraps flock's WouldBlock in an `Other` error.
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    Error::Store(format!(
                        "{} is in use by another fpn-gms process",
                        dir.display()
                    ))
                }
                other => Error::Store(format!("opening {}: {other}", dir.display())),
            })?;
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<sled::Result<Vec<_>>>()?;
        let audit = db.open_tree("audit")?;
        let log_path = dir.join("db");
        let log = File::open(&log_path).map_err(Error::io("opening", &log_path))?;
        let sync = SledSyncer {
            db,
            dir: dir.to_path_buf(),
            log,
            blobs_synced: Mutex::new(-1),
            group: GroupCommit::default(),
            failpoint,
        };
        sync.sync_created_files()?;
        Ok(Self {
            trees,
            audit,
            sync: Arc::new(sync),
        })
    }

    /// Sync rounds run since the store was opened.
    pub fn sync_rounds(&self) -> u64 {
        self.sync.group.rounds()
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        // Tree::ALL and self.trees are in the same order.
        &self.trees[Tree::ALL.iter().position(|x| *x == t).unwrap_or(0)]
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
        Ok(self
            .tree(tree)
            .get(key)?
            .map(|v| Zeroizing::new(v.to_vec())))
    }

    fn scan(&self, tree: Tree) -> Result<Vec<Entry>> {
        self.tree(tree)
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), Zeroizing::new(v.to_vec())))
            })
            .collect()
    }

    fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // After a failed sync nothing more is applied: it could never be
        // acknowledged.
        self.sync.group.check()?;
        let mut all: Vec<&sled::Tree> = self.trees.iter().collect();
        all.push(&self.audit);
        let audit_ix = all.len() - 1;
        let r: std::result::Result<(), TransactionError<String>> =
            all.as_slice().transaction(|views| {
                for w in &batch.writes {
                    let ix = Tree::ALL.iter().position(|x| *x == w.tree).ok_or_else(|| {
                        ConflictableTransactionError::Abort("unknown tree".to_owned())
                    })?;
                    match &w.value {
                        Some(v) => views[ix].insert(w.key.as_slice(), v.as_slice())?,
                        None => views[ix].remove(w.key.as_slice())?,
                    };
                }
                for entry in &batch.audit {
                    // generate_id is monotonic across restarts, so the audit
                    // log only ever grows at its end.
                    let seq = views[audit_ix].generate_id()?;
                    views[audit_ix].insert(&seq.to_be_bytes(), entry.as_slice())?;
                }
                Ok(())
            });
        r.map_err(|e| match e {
            TransactionError::Abort(reason) => Error::Store(reason),
            TransactionError::Storage(e) => Error::Store(e.to_string()),
        })?;
        // Applied; durable after the next sync round (the caller waits for
        // it before acknowledging).
        self.sync.group.committed_one();
        Ok(())
    }

    fn syncer(&self) -> Arc<dyn Syncer> {
        self.sync.clone()
    }

    fn audit_log(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        self.audit
            .range(start.to_be_bytes()..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                let seq: [u8; 8] = k.as_ref().try_into().map_err(|_| Error::Corrupt {
                    tree: "audit",
                    reason: "sequence key is not 8 bytes".into(),
                })?;
                Ok((u64::from_be_bytes(seq), v.to_vec()))
            })
            .collect()
    }
}

impl Syncer for SledSyncer {
    fn committed(&self) -> CommitSeq {
        self.group.committed()
    }

    fn synced(&self) -> CommitSeq {
        self.group.synced()
    }

    fn sync_through(&self, seq: CommitSeq) -> Result<()> {
        self.group.sync_through(seq, |round| self.round(round))
    }
}

impl SledSyncer {
    /// One sync round: everything applied before it reaches stable storage.
    fn round(&self, round: u64) -> Result<()> {
        self.db.flush()?;
        if let Some(fp) = self.failpoint {
            fp.after_write(round);
        }
        let log_path = || self.dir.join("db");
        self.log
            .sync_data()
            .map_err(|e| Error::io("syncing", log_path())(e))?;
        self.sync_new_blobs()
    }

    /// fsyncs blob files written since the last round, then their directory.
    fn sync_new_blobs(&self) -> Result<()> {
        let dir = self.dir.join("blobs");
        let mut high = self.blobs_synced.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest = *high;
        for entry in std::fs::read_dir(&dir).map_err(Error::io("listing", &dir))? {
            let entry = entry.map_err(Error::io("listing", &dir))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            if id > *high {
                match sync_path(&entry.path()) {
                    // sled removed it meanwhile (its page was rewritten
                    // inline): nothing left to make durable.
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    r => r?,
                }
                newest = newest.max(id);
            }
        }
        if newest > *high {
            sync_path(&dir)?;
            *high = newest;
        }
        Ok(())
    }

    /// Syncs what sled may have just created: the files, their directory
    /// and its parent (once per open; cheap when nothing changed).
    fn sync_created_files(&self) -> Result<()> {
        self.db.flush()?;
        for f in ["db", "conf"] {
            sync_path(&self.dir.join(f))?;
        }
        self.sync_new_blobs()?;
        sync_path(&self.dir.join("blobs"))?;
        sync_path(&self.dir)?;
        if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_path(parent)?;
        }
        Ok(())
    }
}

/// fsyncs a file or directory by path.
fn sync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("syncing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_commits_across_trees_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put(Tree::Ges, b"a".to_vec(), b"1".to_vec());
            b.put(Tree::Groups, b"g".to_vec(), b"2".to_vec());
            b.audit(b"{\"x\":1}".to_vec());
            b.audit(b"{\"x\":2}".to_vec());
            s.commit(b).unwrap();
            let mut b = Batch::new();
            b.delete(Tree::Ges, b"a".to_vec());
            s.commit(b).unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert!(s.get(Tree::Ges, b"a").unwrap().is_none());
        assert_eq!(s.get(Tree::Groups, b"g").unwrap().unwrap().as_slice(), b"2");
        let log = s.audit_log(None, 10).unwrap();
        assert_eq!(log.len(), 2);
        assert!(log[0].0 < log[1].0);
        assert_eq!(log[1].1, b"{\"x\":2}");
        assert_eq!(s.audit_log(Some(log[0].0), 10).unwrap().len(), 1);
    }

    #[test]
    fn a_value_stored_as_a_blob_file_is_synced_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; 300 * 1024];
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put(Tree::Certs, b"big".to_vec(), big.clone());
            s.commit(b).unwrap();
            s.syncer().sync_all().unwrap();
            let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
            assert!(blobs > 0, "sled kept a 300 KiB page inline");
            assert!(*s.sync.blobs_synced.lock().unwrap() >= 0, "blob not synced");
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Tree::Certs, b"big").unwrap().unwrap().as_slice(), big);
    }

    #[test]
    fn commits_become_durable_in_one_sync_round() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let sync = s.syncer();
        for i in 0..10u8 {
            let mut b = Batch::new();
            b.put(Tree::Ges, vec![i], vec![i]);
            s.commit(b).unwrap();
        }
        // An empty batch is no commit.
        s.commit(Batch::new()).unwrap();
        assert_eq!(sync.committed(), CommitSeq(10));
        assert_eq!(sync.synced(), CommitSeq(0), "commit alone does not sync");
        sync.sync_through(CommitSeq(3)).unwrap();
        assert_eq!(s.sync_rounds(), 1);
        assert_eq!(
            sync.synced(),
            CommitSeq(10),
            "one round covers every commit before it"
        );
        sync.sync_all().unwrap();
        assert_eq!(s.sync_rounds(), 1, "nothing new to sync");
    }
}
