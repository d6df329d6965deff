//! The embedded sled backend.

use std::path::Path;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use zeroize::Zeroizing;

use super::{Batch, Entry, Store, Tree};
use crate::{Error, Result};

/// sled's page cache; the GMS's working set is small and the server keeps
/// its own in-memory view, so a small cache keeps memory per node honest.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// A [`Store`] in one sled database directory.
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    audit: sled::Tree,
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
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            // Every acknowledged change is flushed explicitly; the background
            // flush only bounds what unacknowledged work could be lost.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => Error::Store(
                    format!("{} is in use by another fpn-gms process", dir.display()),
                ),
                other => Error::Store(format!("opening {}: {other}", dir.display())),
            })?;
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<sled::Result<Vec<_>>>()?;
        let audit = db.open_tree("audit")?;
        Ok(Self { db, trees, audit })
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
        // The acknowledgement waits for this: a crash after it loses nothing.
        self.db.flush()?;
        Ok(())
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
}
