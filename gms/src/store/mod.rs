//! Durable storage of the GMS behind one small trait.
//!
//! [`Store`] is a key-value store with named trees, atomic multi-tree
//! batches and an append-only audit log. [`SledStore`] is the embedded
//! default. The trait is deliberately narrow (get, scan, commit, audit) so a
//! replicated backend (PostgreSQL: one table per tree, one SQL transaction per
//! batch) can be added for operators who outgrow one server.
//!
//! The contract every backend keeps: when [`Store::commit`] returns `Ok`, the
//! whole batch (all trees and the audit entries) is on stable storage and
//! survives a crash; when it returns `Err`, nothing of it is visible.

mod sled_store;

pub use sled_store::SledStore;

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
}

impl Tree {
    /// Every data tree, in a fixed order.
    pub const ALL: [Tree; 7] = [
        Tree::Meta,
        Tree::Ges,
        Tree::Groups,
        Tree::Keys,
        Tree::Certs,
        Tree::Tokens,
        Tree::Revocations,
    ];

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
        }
    }
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

    /// Applies `batch` atomically and durably (see the module doc).
    fn commit(&self, batch: Batch) -> Result<()>;

    /// Reads the audit log: `(sequence, entry)` in append order, at most
    /// `limit` entries with a sequence greater than `after`.
    fn audit_log(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
}
