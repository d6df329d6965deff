//! The zone: a synchronous data structure, no I/O.
//!
//! [`Zone`] is what queries read. It holds every name's records together
//! with their pre-encoded answers, so the answer path copies bytes instead of
//! building messages. Changes are computed in a [`Txn`] (RFC 2136 rules,
//! the embedding API), which reads the zone but never mutates it; the result
//! is a [`ChangeSet`] that the commit thread makes durable and only then
//! [`Zone::apply`]s — so no query ever sees data that is not on disk yet.
//!
//! Names are keyed by their lower-case, uncompressed wire form ([`NameKey`]).

pub(crate) mod node;
mod update;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record};

pub use node::{Encoded, Node};
pub use update::{ApiChange, Txn, UpdateOutcome};

use crate::Error;
use crate::tsig::name_wire;
use crate::wire::{self, rtype};

/// A name's lower-case, uncompressed wire form: the key of every map here.
pub type NameKey = Box<[u8]>;

/// The records of one type at one name. All share a TTL (RFC 2181 5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RrSet {
    /// Time to live of the set, seconds.
    pub ttl: u32,
    /// The record data, in insertion order, without duplicates.
    pub rdatas: Vec<RData>,
}

/// The records at one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeData {
    /// The owner name, case as first written.
    pub name: Name,
    /// RRsets by type number.
    pub rrsets: BTreeMap<u16, RrSet>,
}

impl NodeData {
    /// An empty node.
    pub fn new(name: Name) -> Self {
        Self {
            name,
            rrsets: BTreeMap::new(),
        }
    }

    /// All records of the node, in type order.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.rrsets.values().flat_map(move |set| {
            set.rdatas
                .iter()
                .map(move |rd| Record::from_rdata(self.name.clone(), set.ttl, rd.clone()))
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.rrsets.values().map(|s| s.rdatas.len()).sum()
    }

    /// Whether the node holds no record.
    pub fn is_empty(&self) -> bool {
        self.rrsets.values().all(|s| s.rdatas.is_empty())
    }
}

/// The result of looking a name and type up.
#[derive(Debug)]
pub enum Lookup<'z> {
    /// Records of the type exist: the pre-encoded answer.
    Answer(&'z Encoded),
    /// The name exists (or is an empty non-terminal) without that type.
    NoData,
    /// The name does not exist in the zone.
    NxDomain,
    /// The name is not in this zone.
    NotInZone,
}

/// A committed change: what the commit thread persists and then applies.
#[derive(Clone, Debug)]
pub struct ChangeSet {
    /// The zone serial before the change.
    pub old_serial: u32,
    /// The zone serial after the change.
    pub serial: u32,
    /// New state of every changed name (`None`: the name is gone).
    pub nodes: Vec<(NameKey, Option<NodeData>)>,
    /// Records removed and added (SOA excluded), for IXFR.
    pub diff: Diff,
}

/// The difference between two versions of the zone, as IXFR sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// The SOA before the change.
    pub old_soa: Option<Record>,
    /// Records removed.
    pub removed: Vec<Record>,
    /// The SOA after the change.
    pub new_soa: Option<Record>,
    /// Records added.
    pub added: Vec<Record>,
}

/// The zone as queries see it.
pub struct Zone {
    origin: Name,
    origin_key: NameKey,
    nodes: HashMap<NameKey, Arc<Node>>,
    /// Empty non-terminals: names with descendants but no records, with the
    /// number of descendant nodes, so a query for one gets NODATA.
    ents: HashMap<NameKey, u32>,
    /// The SOA record without its owner, as the authority section of a
    /// negative answer carries it (TTL = min(SOA TTL, SOA minimum)).
    soa_authority: Box<[u8]>,
    serial: u32,
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("origin", &self.origin)
            .field("names", &self.nodes.len())
            .field("serial", &self.serial)
            .finish()
    }
}

impl Zone {
    /// A zone from its nodes. The apex must hold exactly one SOA record.
    pub fn from_nodes(origin: &Name, nodes: Vec<NodeData>) -> Result<Self, Error> {
        let origin = origin.to_lowercase();
        let origin_key = key_of(&origin);
        let mut zone = Self {
            origin,
            origin_key,
            nodes: HashMap::with_capacity(nodes.len()),
            ents: HashMap::new(),
            soa_authority: Box::new([]),
            serial: 0,
        };
        for data in nodes {
            let key = key_of(&data.name);
            if !wire::in_zone(&key, &zone.origin_key) {
                return Err(Error::Corrupt(format!(
                    "name {} is outside the zone",
                    data.name
                )));
            }
            zone.insert_node(key, data)?;
        }
        zone.refresh_soa()?;
        Ok(zone)
    }

    /// A new zone holding only its SOA and NS records.
    pub fn new_empty(origin: &Name, soa: SOA, soa_ttl: u32, ns: &[Name]) -> Result<Self, Error> {
        let mut apex = NodeData::new(origin.clone());
        apex.rrsets.insert(
            rtype::SOA,
            RrSet {
                ttl: soa_ttl,
                rdatas: vec![RData::SOA(soa)],
            },
        );
        let ns = ns
            .iter()
            .map(|n| RData::NS(hickory_proto::rr::rdata::NS(n.clone())))
            .collect();
        apex.rrsets.insert(
            rtype::NS,
            RrSet {
                ttl: soa_ttl,
                rdatas: ns,
            },
        );
        Self::from_nodes(origin, vec![apex])
    }

    /// The zone's name (lower case).
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The zone's name as a [`NameKey`].
    pub fn origin_key(&self) -> &[u8] {
        &self.origin_key
    }

    /// The current SOA serial.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The SOA record.
    pub fn soa_record(&self) -> Record {
        let apex = self.nodes.get(&self.origin_key).map(|n| n.data());
        let set = apex.and_then(|a| a.rrsets.get(&rtype::SOA));
        match set.and_then(|s| s.rdatas.first().map(|rd| (s.ttl, rd))) {
            Some((ttl, rd)) => Record::from_rdata(
                apex.map_or(self.origin.clone(), |a| a.name.clone()),
                ttl,
                rd.clone(),
            ),
            // from_nodes refuses a zone without SOA, and no change removes it
            None => Record::from_rdata(self.origin.clone(), 0, RData::SOA(placeholder_soa())),
        }
    }

    /// Number of names holding records.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the zone has no names (never true for a valid zone).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node at `key`.
    pub fn node(&self, key: &[u8]) -> Option<&Arc<Node>> {
        self.nodes.get(key)
    }

    /// All nodes, for a zone transfer: a consistent snapshot the caller can
    /// encode after releasing the lock.
    pub fn snapshot(&self) -> Vec<Arc<Node>> {
        self.nodes.values().cloned().collect()
    }

    /// The SOA record without owner name, as negative answers carry it.
    pub fn soa_authority(&self) -> &[u8] {
        &self.soa_authority
    }

    /// Looks up `key` (lower-case wire name) and `qtype`.
    #[inline]
    pub fn lookup(&self, key: &[u8], qtype: u16) -> Lookup<'_> {
        if let Some(node) = self.nodes.get(key) {
            return match node.answer(qtype) {
                Some(e) => Lookup::Answer(e),
                None => Lookup::NoData,
            };
        }
        if !wire::in_zone(key, &self.origin_key) {
            Lookup::NotInZone
        } else if self.ents.contains_key(key) {
            Lookup::NoData
        } else {
            Lookup::NxDomain
        }
    }

    /// Applies a committed change set.
    pub fn apply(&mut self, changes: &ChangeSet) -> Result<(), Error> {
        for (key, data) in &changes.nodes {
            if let Some(old) = self.nodes.remove(key) {
                drop(old);
                self.count_ancestors(key, false);
            }
            if let Some(data) = data {
                self.insert_node(key.clone(), data.clone())?;
            }
        }
        self.refresh_soa()
    }

    fn insert_node(&mut self, key: NameKey, data: NodeData) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let node = Node::new(data)?;
        self.count_ancestors(&key, true);
        self.nodes.insert(key, Arc::new(node));
        Ok(())
    }

    /// Adds (or removes) one to the descendant count of every name strictly
    /// between `key` and the apex.
    fn count_ancestors(&mut self, key: &[u8], add: bool) {
        let stop = key.len().saturating_sub(self.origin_key.len());
        let mut pos = usize::from(key.first().copied().unwrap_or(0)) + 1;
        while pos < stop {
            let ancestor = &key[pos..];
            if add {
                *self.ents.entry(ancestor.into()).or_insert(0) += 1;
            } else if let Some(n) = self.ents.get_mut(ancestor) {
                *n -= 1;
                if *n == 0 {
                    self.ents.remove(ancestor);
                }
            }
            pos += usize::from(key[pos]) + 1;
        }
    }

    fn refresh_soa(&mut self) -> Result<(), Error> {
        let apex = self
            .nodes
            .get(&self.origin_key)
            .ok_or_else(|| Error::Corrupt("zone has no apex".into()))?;
        let set = apex
            .data()
            .rrsets
            .get(&rtype::SOA)
            .filter(|s| s.rdatas.len() == 1)
            .ok_or_else(|| Error::Corrupt("the apex must hold exactly one SOA record".into()))?;
        let RData::SOA(soa) = &set.rdatas[0] else {
            return Err(Error::Corrupt("SOA RRset holds other data".into()));
        };
        self.serial = soa.serial;
        let ttl = set.ttl.min(soa.minimum);
        let mut blob = Vec::with_capacity(64);
        node::put_rr_fixed(&mut blob, rtype::SOA, ttl, &set.rdatas[0])?;
        self.soa_authority = blob.into_boxed_slice();
        Ok(())
    }
}

/// The [`NameKey`] of a name.
pub fn key_of(name: &Name) -> NameKey {
    name_wire(name).into_boxed_slice()
}

/// RFC 1982 serial comparison: whether `a` is newer than `b`.
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

/// Whether records of this type may be added to the zone. CNAME and DNAME
/// would need alias processing the answer path does not do; DNSSEC and meta
/// types are not zone data here.
pub fn type_allowed(t: u16, at_apex: bool) -> bool {
    match t {
        rtype::SOA | rtype::NS => at_apex,
        rtype::A | rtype::AAAA | rtype::TXT | rtype::LIP => true,
        // MX, PTR, HINFO, SRV, SSHFP, TLSA, CAA, NAPTR
        15 | 12 | 13 | 33 | 44 | 52 | 257 | 35 => true,
        _ => false,
    }
}

fn placeholder_soa() -> SOA {
    SOA::new(Name::root(), Name::root(), 0, 0, 0, 0, 0)
}

#[cfg(test)]
mod tests;
