//! The live name table: which names of the zone exist and where they point.
//!
//! The daemon writes it when the GMS directory changes; the stub reads it on
//! every query. Writes are rare and reads are hot, so the table is
//! copy-on-write: a writer builds a new [`Snapshot`] and swaps it in, a
//! reader takes the current snapshot (one uncontended read lock and one
//! reference-count increment) and looks up without holding any lock.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};

use hickory_proto::rr::Name;

use crate::error::{Error, Result};

/// Where a name of the zone points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// A peer GE: its overlay addresses.
    Peer {
        /// The overlay IPv4 address (answered to A queries).
        v4: Ipv4Addr,
        /// The overlay IPv6 address, if the peer has one (answered to AAAA).
        v6: Option<Ipv6Addr>,
    },
    /// A host behind a gateway (NAT-f): the virtual IP (VIN) this node routes
    /// into its TUN for it. Answered to A queries like a peer's address; the
    /// NAT-f code that allocates VINs writes these entries.
    Vin(Ipv4Addr),
}

impl Target {
    /// A peer with only an IPv4 overlay address.
    pub fn peer(v4: Ipv4Addr) -> Self {
        Self::Peer { v4, v6: None }
    }

    /// The address answered to an A query.
    pub fn v4(&self) -> Ipv4Addr {
        match *self {
            Self::Peer { v4, .. } | Self::Vin(v4) => v4,
        }
    }

    /// The address answered to an AAAA query, if any.
    pub fn v6(&self) -> Option<Ipv6Addr> {
        match *self {
            Self::Peer { v6, .. } => v6,
            Self::Vin(_) => None,
        }
    }
}

/// A shared, live-updated map from names of the zone to [`Target`]s.
///
/// Names are given relative to the zone (`"b"` for `b.home.fpn.`, or
/// `"nas.site"`), compared case-insensitively. Clones share the same table:
/// the daemon keeps one clone to write, the stub another to read.
#[derive(Clone, Debug, Default)]
pub struct NameTable {
    current: Arc<RwLock<Arc<Snapshot>>>,
}

impl NameTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or changes one name; returns the previous target.
    pub fn insert(&self, name: &str, target: Target) -> Result<Option<Target>> {
        let key = key_of(name)?;
        let mut old = None;
        self.update(|map| old = map.insert(key, target));
        Ok(old)
    }

    /// Removes one name; returns its target if it was there.
    pub fn remove(&self, name: &str) -> Result<Option<Target>> {
        let key = key_of(name)?;
        let mut old = None;
        self.update(|map| old = map.remove(&key));
        Ok(old)
    }

    /// Replaces the whole table (e.g. with a fresh GMS directory). Either all
    /// names are valid and the table changes at once, or it stays unchanged.
    pub fn replace_all<I, S>(&self, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (S, Target)>,
        S: AsRef<str>,
    {
        let mut fresh = HashMap::new();
        for (name, target) in entries {
            fresh.insert(key_of(name.as_ref())?, target);
        }
        self.update(|map| *map = fresh);
        Ok(())
    }

    /// The target of a name, if present.
    pub fn get(&self, name: &str) -> Option<Target> {
        let key = key_of(name).ok()?;
        self.snapshot().lookup(&key)
    }

    /// How many names the table holds.
    pub fn len(&self) -> usize {
        self.snapshot().names.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The current version: it grows by one with every change and is the
    /// zone's SOA serial, so a client can tell the data changed.
    pub fn serial(&self) -> u32 {
        self.snapshot().serial
    }

    /// The current snapshot (the query path's only access).
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        // A writer that panicked leaves a consistent snapshot behind (the
        // swap is one assignment), so a poisoned lock is still usable.
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&guard)
    }

    fn update(&self, change: impl FnOnce(&mut HashMap<Box<[u8]>, Target>)) {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut names = guard.names.clone();
        change(&mut names);
        let serial = guard.serial.wrapping_add(1).max(1);
        *guard = Arc::new(Snapshot::build(names, serial));
    }
}

/// One immutable version of the table.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Name key (see [`key_of`]) to target.
    names: HashMap<Box<[u8]>, Target>,
    /// Keys of empty non-terminals: names with no data that have names
    /// below them (`site` when `nas.site` exists). They answer NODATA, not
    /// NXDOMAIN (RFC 8020).
    interior: HashSet<Box<[u8]>>,
    /// The SOA serial.
    serial: u32,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            names: HashMap::new(),
            interior: HashSet::new(),
            serial: 1,
        }
    }
}

/// What a snapshot knows about one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The name has data.
    Data(Target),
    /// The name exists (it has names below it) but has no data.
    Empty,
    /// No such name.
    Missing,
}

impl Snapshot {
    fn build(names: HashMap<Box<[u8]>, Target>, serial: u32) -> Self {
        let mut interior = HashSet::new();
        for key in names.keys() {
            // Every proper suffix of a key (drop labels from the front) is
            // an ancestor inside the zone.
            let mut at = 0;
            while let Some(&len) = key.get(at) {
                at += 1 + usize::from(len);
                if at < key.len() {
                    interior.insert(key[at..].into());
                }
            }
        }
        Self {
            names,
            interior,
            serial,
        }
    }

    /// The SOA serial of this version.
    pub(crate) fn serial(&self) -> u32 {
        self.serial
    }

    fn lookup(&self, key: &[u8]) -> Option<Target> {
        self.names.get(key).copied()
    }

    /// Looks up a name given by its labels below the apex (most specific
    /// first), e.g. `["nas", "site"]`.
    pub(crate) fn entry<'a>(&self, labels: impl Iterator<Item = &'a [u8]>) -> Entry {
        let mut key = Vec::with_capacity(64);
        for label in labels {
            let Ok(len) = u8::try_from(label.len()) else {
                return Entry::Missing;
            };
            key.push(len);
            key.extend(label.iter().map(u8::to_ascii_lowercase));
        }
        match self.names.get(key.as_slice()) {
            Some(t) => Entry::Data(*t),
            None if self.interior.contains(key.as_slice()) => Entry::Empty,
            None => Entry::Missing,
        }
    }
}

/// The table key of a relative name: its labels, lower-cased, each prefixed
/// with its length (the DNS wire form without the root), so that labels
/// containing dots cannot collide with multi-label names.
fn key_of(name: &str) -> Result<Box<[u8]>> {
    let bad = |reason| Error::DnsName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.ends_with('.') {
        return Err(bad("must be relative to the zone (no trailing dot)"));
    }
    let parsed = Name::from_ascii(name).map_err(|_| bad("not a valid DNS name"))?;
    let mut key = Vec::with_capacity(name.len() + 1);
    for label in parsed.iter() {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label == b"*" {
            return Err(bad("wildcards are not supported"));
        }
        // Name::from_ascii bounds labels to 63 bytes.
        key.push(label.len() as u8);
        key.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    Ok(key.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(name: &str) -> Vec<Vec<u8>> {
        name.split('.').map(|l| l.as_bytes().to_vec()).collect()
    }

    fn entry(t: &NameTable, name: &str) -> Entry {
        let l = labels(name);
        t.snapshot().entry(l.iter().map(Vec::as_slice))
    }

    #[test]
    fn insert_lookup_remove_case_insensitive() {
        let t = NameTable::new();
        let a = Target::peer(Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(t.insert("B", a).unwrap(), None);
        assert_eq!(t.get("b"), Some(a));
        assert_eq!(entry(&t, "b"), Entry::Data(a));
        assert_eq!(entry(&t, "c"), Entry::Missing);
        assert_eq!(t.remove("b").unwrap(), Some(a));
        assert_eq!(entry(&t, "b"), Entry::Missing);
    }

    #[test]
    fn interior_names_exist_without_data() {
        let t = NameTable::new();
        let a = Target::Vin(Ipv4Addr::new(100, 127, 0, 1));
        t.insert("nas.site", a).unwrap();
        assert_eq!(entry(&t, "nas.site"), Entry::Data(a));
        assert_eq!(entry(&t, "site"), Entry::Empty);
        assert_eq!(entry(&t, "x.site"), Entry::Missing);
        assert_eq!(entry(&t, "nas"), Entry::Missing);
    }

    #[test]
    fn serial_grows_with_every_change() {
        let t = NameTable::new();
        let s0 = t.serial();
        t.insert("a", Target::peer(Ipv4Addr::LOCALHOST)).unwrap();
        t.replace_all([("b", Target::peer(Ipv4Addr::LOCALHOST))])
            .unwrap();
        assert_eq!(t.serial(), s0 + 2);
        assert_eq!(t.len(), 1);
        assert!(t.get("a").is_none());
    }

    #[test]
    fn bad_names_are_refused_and_leave_the_table_alone() {
        let t = NameTable::new();
        t.insert("keep", Target::peer(Ipv4Addr::LOCALHOST)).unwrap();
        for bad in ["", "b.home.fpn.", "a..b", "*", &"x".repeat(64)] {
            assert!(
                matches!(
                    t.insert(bad, Target::peer(Ipv4Addr::LOCALHOST)),
                    Err(Error::DnsName { .. })
                ),
                "{bad:?}"
            );
        }
        let err = t.replace_all([
            ("ok", Target::peer(Ipv4Addr::LOCALHOST)),
            ("bad.", Target::peer(Ipv4Addr::LOCALHOST)),
        ]);
        assert!(err.is_err());
        assert!(t.get("keep").is_some());
    }
}
