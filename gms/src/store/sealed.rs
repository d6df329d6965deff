//! Secret values sealed at rest: a [`Store`] wrapper that encrypts the
//! values of the secret trees ([`Tree::is_sealed`]) before they reach the
//! backend, and opens them on the way back.
//!
//! Why: sled is log-structured. A group key that was rotated away or
//! deleted stays in its log segments until sled happens to reuse the space,
//! and every copy of the files (a backup, a snapshot, a stolen disk image)
//! holds whatever the log held. Sealed, those copies are useless without
//! the store key, which lives in a file of its own (see [`super::key_file`])
//! and never in the store.
//!
//! A sealed value is `version u8 (=1) | nonce [12] | ciphertext | tag [16]`,
//! ChaCha20-Poly1305 (ring) under the store key with a random nonce. The
//! associated data names the tree and the key the value is stored under,
//! so a value copied to another key or tree does not open. A random 96-bit
//! nonce is safe here: a GMS seals a few values a day per group, far from
//! the 2^32 messages per key after which random nonces start to risk a
//! collision.
//!
//! The meta tree holds one sealed check value; it says that the store is
//! sealed and lets [`SealedStore::open`] tell a wrong key from a corrupt
//! record before anything is read or written. A store without it (written
//! before sealing existed, schema 1) is migrated on open: every secret
//! value sealed, the check value and schema 2 written, all in one batch
//! (one sled transaction), then synced.
//!
//! What it does not do: hide anything from whoever can read the key file
//! (root on the running machine, or a backup that holds both files), erase
//! the plaintext that a store migrated from schema 1 left in sled's log
//! (rotate every group after the upgrade), or protect the integrity of the
//! trees that are not sealed.

use std::path::Path;
use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{Batch, Entry, Store, Syncer, Tree, key_file};
use crate::model::{AuditEntry, META_SCHEMA, SCHEMA_VERSION, to_json};
use crate::{Error, Result};

/// Key of the sealed check value in [`Tree::Meta`].
pub const META_STORE_KEY_CHECK: &[u8] = b"store_key_check";
/// What the check value holds once opened.
const CHECK_PLAINTEXT: &[u8] = b"fpn-gms store key check v1";
/// First byte of every sealed value.
const SEAL_VERSION: u8 = 1;
/// Bytes a sealed value adds to its plaintext.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
const TAG_LEN: usize = 16;
/// Prefix of the associated data: binds a value to this format as well.
const AAD_PREFIX: &[u8] = b"fpn-gms sealed v1\0";
/// The first schema whose secret trees are sealed.
const SEALED_SCHEMA: u32 = 2;

/// A [`Store`] whose secret values are sealed under the store key.
pub struct SealedStore<S> {
    inner: S,
    key: SealKey,
}

impl<S> std::fmt::Debug for SealedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStore").finish_non_exhaustive()
    }
}

impl<S: Store> SealedStore<S> {
    /// Opens `inner` with the key in `key_path`.
    ///
    /// - sealed store, key file present: the key must open the check value
    ///   ([`Error::StoreKeyWrong`] otherwise);
    /// - sealed store, no key file: [`Error::StoreKeyMissing`] (no new key
    ///   is made: it could not open the store);
    /// - store not sealed yet (new, or schema 1): the key file is created
    ///   if missing, then the store is migrated (see the module doc).
    ///
    /// A key file that others may read, or that is not a key, is refused
    /// before anything else ([`Error::StoreKeyMode`],
    /// [`Error::StoreKeyUnreadable`]). No error path writes to the store or
    /// to the key file.
    #[tracing::instrument(skip_all, fields(key_file = %key_path.display()))]
    pub fn open(inner: S, key_path: &Path, now: u64) -> Result<Self> {
        let file_key = key_file::load(key_path)?;
        let check = inner.get(Tree::Meta, META_STORE_KEY_CHECK)?;
        match (file_key, check) {
            (Some(k), Some(check)) => {
                let key = SealKey::new(&k)?;
                let ok = key
                    .open(Tree::Meta, META_STORE_KEY_CHECK, &check)
                    .is_ok_and(|p| p.as_slice() == CHECK_PLAINTEXT);
                if !ok {
                    return Err(Error::StoreKeyWrong {
                        path: key_path.to_path_buf(),
                    });
                }
                Ok(Self { inner, key })
            }
            (None, Some(_)) => Err(Error::StoreKeyMissing {
                path: key_path.to_path_buf(),
            }),
            (file_key, None) => {
                refuse_newer_schema(&inner)?;
                let k = match file_key {
                    Some(k) => k,
                    None => {
                        let k = key_file::create(key_path)?;
                        info!(path = %key_path.display(), "created the store key");
                        k
                    }
                };
                let s = Self {
                    inner,
                    key: SealKey::new(&k)?,
                };
                s.migrate(now)?;
                Ok(s)
            }
        }
    }

    /// The backend, with the values as stored (sealed).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Seals every secret value of a store that has none sealed, and marks
    /// it sealed: one batch, then synced.
    fn migrate(&self, now: u64) -> Result<()> {
        let mut b = Batch::new();
        let mut sealed = 0usize;
        for tree in Tree::ALL.into_iter().filter(|t| t.is_sealed()) {
            for (k, v) in self.inner.scan(tree)? {
                let s = self.key.seal(tree, &k, &v)?;
                b.writes.push(super::Write {
                    tree,
                    key: k,
                    value: Some(s),
                });
                sealed += 1;
            }
        }
        let check = self
            .key
            .seal(Tree::Meta, META_STORE_KEY_CHECK, CHECK_PLAINTEXT)?;
        b.writes.push(super::Write {
            tree: Tree::Meta,
            key: META_STORE_KEY_CHECK.to_vec(),
            value: Some(check),
        });
        // A store with a schema (not a new one) moves to the first sealed
        // schema, so that an older fpn-gms refuses it ("written by a newer
        // fpn-gms") instead of failing on sealed records.
        if self.inner.get(Tree::Meta, META_SCHEMA)?.is_some() {
            b.put(
                Tree::Meta,
                META_SCHEMA,
                SEALED_SCHEMA.to_be_bytes().to_vec(),
            );
            b.audit(to_json(&AuditEntry {
                at: now,
                action: format!("store sealed: {sealed} secret values migrated"),
                who: crate::core::SYSTEM_ACTOR.into(),
            }));
        }
        self.inner.commit(b)?;
        self.inner.syncer().sync_all()?;
        if sealed > 0 {
            warn!(
                values = sealed,
                "sealed the store's secret values; their plaintext stays in sled's log until the \
                 space is reused: rotate every group (`fpn-gms rotate`)"
            );
        }
        Ok(())
    }
}

/// A store migrated by a newer fpn-gms is left alone: the core refuses it
/// with the schema error.
fn refuse_newer_schema(store: &dyn Store) -> Result<()> {
    let Some(v) = store.get(Tree::Meta, META_SCHEMA)? else {
        return Ok(());
    };
    let found = <[u8; 4]>::try_from(v.as_slice()).map(u32::from_be_bytes);
    match found {
        Ok(found) if found > SCHEMA_VERSION => Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

impl<S: Store> Store for SealedStore<S> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
        match self.inner.get(tree, key)? {
            Some(v) if tree.is_sealed() => self.key.open(tree, key, &v).map(Some),
            other => Ok(other),
        }
    }

    fn scan(&self, tree: Tree) -> Result<Vec<Entry>> {
        let entries = self.inner.scan(tree)?;
        if !tree.is_sealed() {
            return Ok(entries);
        }
        entries
            .into_iter()
            .map(|(k, v)| {
                let p = self.key.open(tree, &k, &v)?;
                Ok((k, p))
            })
            .collect()
    }

    fn commit(&self, mut batch: Batch) -> Result<()> {
        for w in &mut batch.writes {
            if !w.tree.is_sealed() {
                continue;
            }
            if let Some(v) = &w.value {
                // The plaintext buffer is wiped when it is replaced.
                w.value = Some(self.key.seal(w.tree, &w.key, v)?);
            }
        }
        self.inner.commit(batch)
    }

    fn syncer(&self) -> Arc<dyn Syncer> {
        self.inner.syncer()
    }

    fn audit_log(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.inner.audit_log(after, limit)
    }
}

/// The store key as an AEAD key.
struct SealKey(LessSafeKey);

impl SealKey {
    fn new(bytes: &[u8; key_file::STORE_KEY_LEN]) -> Result<Self> {
        // ring refuses only a key of the wrong length, which the type rules out.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| Error::Store("the store key is not a ChaCha20-Poly1305 key".into()))?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    fn seal(&self, tree: Tree, key: &[u8], plaintext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let nonce = crate::random::<NONCE_LEN>()?;
        let mut out = Zeroizing::new(Vec::with_capacity(SEAL_OVERHEAD + plaintext.len()));
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tree, key)),
                &mut out[1 + NONCE_LEN..],
            )
            .map_err(|_| Error::Store("sealing a value failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    fn open(&self, tree: Tree, key: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let corrupt = |reason: &str| Error::Corrupt {
            tree: tree.name(),
            reason: reason.into(),
        };
        if sealed.len() < SEAL_OVERHEAD || sealed[0] != SEAL_VERSION {
            return Err(corrupt("not a sealed value"));
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
            .map_err(|_| corrupt("not a sealed value"))?;
        let mut buf = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
        let len = self
            .0
            .open_in_place(nonce, Aad::from(aad(tree, key)), &mut buf)
            .map_err(|_| {
                corrupt(
                    "a sealed value does not open: altered, moved from another key, or sealed \
                     under another store key",
                )
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Associated data of a value: format, tree and the key it is stored under.
/// Tree names hold no NUL, so the split between tree and key is unambiguous.
fn aad(tree: Tree, key: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_PREFIX.len() + 16 + key.len());
    a.extend_from_slice(AAD_PREFIX);
    a.extend_from_slice(tree.name().as_bytes());
    a.push(0);
    a.extend_from_slice(key);
    a
}

#[cfg(test)]
#[path = "sealed_tests.rs"]
mod tests;
