//! Durable storage of the GMS behind one small trait.
//!
//! [`Store`] is a key-value store with named trees, atomic multi-tree
//! batches and an append-only audit log. [`SledStore`] is the embedded
//! default. The trait is deliberately narrow (get, scan, commit, audit) so a
//! replicated backend (PostgreSQL: one table per tree, one SQL transaction per
//! batch) can be added for operators who outgrow one server.
//!
//! The contract every backend keeps, in two steps so that many changes can
//! share one sync (group commit):
//!
//! - when [`Store::commit`] returns `Ok`, the whole batch (all trees and the
//!   audit entries) is applied atomically and visible to reads, and has a
//!   [`CommitSeq`]; when it returns `Err`, nothing of it is visible;
//! - when [`Syncer::sync_through`] returns `Ok` for a sequence number, every
//!   batch up to it is on stable storage (written and fsynced) and survives a
//!   crash or power loss. Commits waiting together share one sync.
//!
//! The shell, not the core, decides when to sync: it answers and pushes only
//! after the commits an answer or push depends on are durable.

mod group_commit;
pub mod key_file;
mod sealed;
mod sled_store;

pub use group_commit::{Failpoint, GroupCommit};
pub use sealed::{META_STORE_KEY_CHECK, SEAL_OVERHEAD, SealedStore};
pub use sled_store::SledStore;

use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::Result;

/// The trees of the store. The audit log is separate: it can only be appended to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// Schema version and counters.
    Meta,
    /// GE records, by name.
    Ges,
    /// Group records, by number (u32 BE).
    Groups,
    /// Group key versions, by group (u32 BE) and version (u32 BE).
    Keys,
    /// Issued certificates, by SHA-256 fingerprint of the DER.
    Certs,
    /// Enrollment tokens, by token id.
    Tokens,
    /// Revoked certificate and credential serials (u64 BE).
    Revocations,
    /// Hosts behind gateways, by name.
    Hosts,
}

impl Tree {
    /// Every data tree, in a fixed order.
    pub const ALL: [Tree; 8] = [
        Tree::Meta,
        Tree::Ges,
        Tree::Groups,
        Tree::Keys,
        Tree::Certs,
        Tree::Tokens,
        Tree::Revocations,
        Tree::Hosts,
    ];

    /// True for the trees whose values are secret and sealed at rest
    /// ([`SealedStore`]): group keys, and the enrollment tokens (their
    /// SHA-256 verifiers; sealing them also keeps a token planted by
    /// editing the files from opening).
    pub const fn is_sealed(self) -> bool {
        matches!(self, Tree::Keys | Tree::Tokens)
    }

    /// The tree's name on disk.
    pub const fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Ges => "ges",
            Tree::Groups => "groups",
            Tree::Keys => "keys",
            Tree::Certs => "certs",
            Tree::Tokens => "tokens",
            Tree::Revocations => "revocations",
            Tree::Hosts => "hosts",
        }
    }
}

/// Opens the GMS store: the sled database in `db` with its secret values
/// sealed under the key in `key_file` (created on first use; see
/// [`SealedStore::open`] for every case and error).
pub fn open(db: &Path, key_file: &Path, now: u64) -> Result<SealedStore<SledStore>> {
    SealedStore::open(SledStore::open(db)?, key_file, now)
}

/// One write in a batch: a value to insert, or `None` to remove the key.
#[derive(Debug)]
pub struct Write {
    /// The tree written.
    pub tree: Tree,
    /// The key.
    pub key: Vec<u8>,
    /// The new value (zeroized when dropped: key records pass through here).
    pub value: Option<Zeroizing<Vec<u8>>>,
}

/// A set of writes that commit together, plus audit entries appended with them.
#[derive(Debug, Default)]
pub struct Batch {
    /// Writes in order; a later write to the same key wins.
    pub writes: Vec<Write>,
    /// Audit entries (JSON documents), appended in order.
    pub audit: Vec<Vec<u8>>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces `key` in `tree`.
    pub fn put(&mut self, tree: Tree, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.writes.push(Write {
            tree,
            key: key.into(),
            value: Some(Zeroizing::new(value)),
        });
    }

    /// Removes `key` from `tree`.
    pub fn delete(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.writes.push(Write {
            tree,
            key: key.into(),
            value: None,
        });
    }

    /// Appends an entry to the audit log.
    pub fn audit(&mut self, entry: Vec<u8>) {
        self.audit.push(entry);
    }

    /// True when the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.audit.is_empty()
    }
}

/// One record as read: key and value (zeroized when dropped).
pub type Entry = (Vec<u8>, Zeroizing<Vec<u8>>);

/// Storage backend of the GMS.
pub trait Store: Send + 'static {
    /// Reads one value.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>>;

    /// Reads a whole tree in key order.
    fn scan(&self, tree: Tree) -> Result<Vec<Entry>>;

    /// Applies `batch` atomically (see the module doc); it is durable once
    /// [`Syncer::sync_through`] returns for a sequence number at or after it.
    fn commit(&self, batch: Batch) -> Result<()>;

    /// The handle that makes commits durable; it can be used from any
    /// thread, without the store, while other commits go on.
    fn syncer(&self) -> Arc<dyn Syncer>;

    /// Reads the audit log: `(sequence, entry)` in append order, at most
    /// `limit` entries with a sequence greater than `after`.
    fn audit_log(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
}

/// The place of a commit in a store's history: commit `n` is the `n`-th
/// successful [`Store::commit`] since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct CommitSeq(pub u64);

/// Makes a store's commits durable.
pub trait Syncer: Send + Sync + 'static {
    /// The sequence number of the latest commit.
    fn committed(&self) -> CommitSeq;

    /// The highest sequence number known to be on stable storage.
    fn synced(&self) -> CommitSeq;

    /// Returns once every commit up to `seq` is on stable storage. Callers
    /// that arrive while a sync runs wait for it or for the next one, which
    /// covers all of them at once. After a failed sync every later call
    /// fails with [`crate::Error::NotDurable`]: what was written since the
    /// last good sync is in an unknown state until the process restarts.
    fn sync_through(&self, seq: CommitSeq) -> Result<()>;

    /// Makes every commit so far durable.
    fn sync_all(&self) -> Result<()> {
        self.sync_through(self.committed())
    }
}
