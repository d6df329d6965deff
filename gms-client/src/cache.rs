//! The node's group key cache, in memory and on disk (0600).
//!
//! Nodes keep working from this cache while the GMS is down. File layout:
//!
//! ```text
//! "FPNK" | version u8 (=1) | n u16 | n x (group u32 | version u32 | expires u64 (0 = current) | key [32])
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use fpn_proto::ge::GroupId;
use fpn_proto::keys::{GroupKey, KeyVersion};
use fpn_proto::wire::{Reader, Writer};
use zeroize::Zeroizing;

use crate::wire::{GroupKeys, WireKey};
use crate::{Error, Result, fsutil};

const MAGIC: &[u8; 4] = b"FPNK";
const VERSION: u8 = 1;
/// Most entries a cache file may hold.
const MAX_ENTRIES: usize = fpn_proto::ge::MAX_GROUPS * crate::wire::MAX_KEYS_PER_GROUP;

/// One cached key version.
#[derive(Debug, Clone)]
pub struct CachedKey {
    /// The version.
    pub version: KeyVersion,
    /// `None` while current; else when it stops being valid (unix seconds).
    pub expires_at: Option<u64>,
    /// The key.
    pub key: GroupKey,
}

/// Valid key versions per group.
#[derive(Debug, Clone, Default)]
pub struct KeyCache {
    groups: BTreeMap<GroupId, Vec<CachedKey>>,
}

impl KeyCache {
    /// Replaces everything held for the group with the pushed set.
    pub fn apply(&mut self, gk: GroupKeys) {
        let mut keys: Vec<CachedKey> = gk
            .keys
            .into_iter()
            .map(
                |WireKey {
                     version,
                     expires_at,
                     key,
                 }| CachedKey {
                    version,
                    expires_at,
                    key,
                },
            )
            .collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.version));
        if keys.is_empty() {
            self.groups.remove(&gk.group);
        } else {
            self.groups.insert(gk.group, keys);
        }
    }

    /// Drops every group not in `groups` (the node left them).
    pub fn retain_groups(&mut self, groups: &BTreeSet<GroupId>) {
        self.groups.retain(|g, _| groups.contains(g));
    }

    /// Drops versions whose grace ended by `now`.
    pub fn prune(&mut self, now: u64) {
        for keys in self.groups.values_mut() {
            keys.retain(|k| k.expires_at.is_none_or(|e| e > now));
        }
        self.groups.retain(|_, k| !k.is_empty());
    }

    /// The key of `group` at `version`, if it is still valid at `now`.
    pub fn key(&self, group: GroupId, version: KeyVersion, now: u64) -> Option<&GroupKey> {
        self.groups
            .get(&group)?
            .iter()
            .find(|k| k.version == version && k.expires_at.is_none_or(|e| e > now))
            .map(|k| &k.key)
    }

    /// The current (newest) version of `group` and its key.
    pub fn current(&self, group: GroupId) -> Option<(KeyVersion, &GroupKey)> {
        self.groups
            .get(&group)?
            .first()
            .map(|k| (k.version, &k.key))
    }

    /// The versions held for `group`, newest first.
    pub fn versions(&self, group: GroupId) -> Vec<KeyVersion> {
        self.groups
            .get(&group)
            .map(|ks| ks.iter().map(|k| k.version).collect())
            .unwrap_or_default()
    }

    /// The groups held.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// The binary form.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::new());
        let mut w = Writer::new(&mut v);
        w.bytes(MAGIC);
        w.u8(VERSION);
        let n: usize = self.groups.values().map(Vec::len).sum();
        w.u16(n.min(MAX_ENTRIES) as u16);
        for (g, keys) in &self.groups {
            for k in keys {
                w.u32(g.0);
                w.u32(k.version.0);
                w.u64(k.expires_at.unwrap_or(0));
                w.bytes(k.key.expose_secret());
            }
        }
        v
    }

    /// Reads the binary form.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        if r.bytes(4, "magic")? != MAGIC {
            return Err(Error::Protocol("not an fpn key cache".into()));
        }
        let v = r.u8("version")?;
        if v != VERSION {
            return Err(fpn_proto::Error::UnsupportedVersion {
                what: "key cache",
                version: v,
            }
            .into());
        }
        let n = usize::from(r.u16("count")?);
        if n > MAX_ENTRIES {
            return Err(fpn_proto::Error::TooLarge {
                what: "key cache",
                len: n,
                max: MAX_ENTRIES,
            }
            .into());
        }
        let mut c = KeyCache::default();
        for _ in 0..n {
            let g = GroupId(r.u32("group")?);
            let version = KeyVersion(r.u32("version")?);
            let e = r.u64("expiry")?;
            let key = GroupKey::from_bytes(r.array("key")?);
            c.groups.entry(g).or_default().push(CachedKey {
                version,
                expires_at: (e != 0).then_some(e),
                key,
            });
        }
        r.finish("key cache")?;
        for keys in c.groups.values_mut() {
            keys.sort_by_key(|k| std::cmp::Reverse(k.version));
        }
        Ok(c)
    }

    /// Writes the cache to `path` (0600, atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        fsutil::write_atomic(path, &self.encode(), 0o600)
    }

    /// Reads a cache file; a missing file is an empty cache.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(b) => Self::decode(&Zeroizing::new(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io("reading", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gk(group: u32, versions: &[(u32, Option<u64>)]) -> GroupKeys {
        GroupKeys {
            group: GroupId(group),
            keys: versions
                .iter()
                .map(|(v, e)| WireKey {
                    version: KeyVersion(*v),
                    expires_at: *e,
                    key: GroupKey::from_bytes([*v as u8; 32]),
                })
                .collect(),
        }
    }

    #[test]
    fn apply_replaces_and_expiry_is_honoured() {
        let mut c = KeyCache::default();
        c.apply(gk(1, &[(1, None)]));
        c.apply(gk(1, &[(2, None), (1, Some(100))]));
        assert_eq!(c.versions(GroupId(1)), vec![KeyVersion(2), KeyVersion(1)]);
        assert_eq!(c.current(GroupId(1)).unwrap().0, KeyVersion(2));
        assert!(c.key(GroupId(1), KeyVersion(1), 99).is_some());
        assert!(c.key(GroupId(1), KeyVersion(1), 100).is_none());
        c.prune(100);
        assert_eq!(c.versions(GroupId(1)), vec![KeyVersion(2)]);
        c.apply(gk(2, &[(5, None)]));
        c.retain_groups(&[GroupId(2)].into());
        assert!(c.current(GroupId(1)).is_none());
    }

    #[test]
    fn file_round_trip_is_private_and_strict() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        let mut c = KeyCache::default();
        c.apply(gk(3, &[(7, None), (6, Some(1000))]));
        c.save(&p).unwrap();
        assert_eq!(fsutil::mode_of(&p).unwrap(), 0o600);
        let back = KeyCache::load(&p).unwrap();
        assert_eq!(back.versions(GroupId(3)), c.versions(GroupId(3)));
        assert!(
            back.key(GroupId(3), KeyVersion(6), 999)
                .unwrap()
                .ct_eq(&GroupKey::from_bytes([6; 32]))
        );
        let bytes = c.encode();
        for len in 0..bytes.len() {
            assert!(KeyCache::decode(&bytes[..len]).is_err());
        }
        assert!(
            KeyCache::load(&dir.path().join("missing"))
                .unwrap()
                .current(GroupId(3))
                .is_none()
        );
    }
}
