//! Changes to the zone: RFC 2136 UPDATE processing and the embedding API.
//!
//! A [`Txn`] reads a [`Zone`] and collects new versions of the names it
//! changes; the zone itself is never touched here. Several updates share one
//! transaction (one group commit): each sees the ones before it, and one
//! that fails leaves no trace, because its changes are made in a scratch map
//! merged into the transaction only on success.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record};

use super::node::{Node, rdata_canonical};
use super::{ChangeSet, Diff, NameKey, NodeData, RrSet, Zone, key_of, serial_gt, type_allowed};
use crate::Error;
use crate::keys::KeyPolicy;
use crate::lip::{LIP_TYPE, lip_addr, lip_rdata};
use crate::wire::{Rcode, class, rtype};

/// Most records one RRset may hold.
pub const MAX_RRSET: usize = 100;
/// Largest TTL (RFC 2181 section 8).
const MAX_TTL: u32 = 0x7fff_ffff;

/// Why an update was not applied: the RCODE for the answer and a reason
/// for the log.
pub type UpdateOutcome = Result<(), (Rcode, &'static str)>;

/// A change requested through the embedding API (no TSIG: the caller is
/// the process itself, e.g. the GMS keeping a GE's names in step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiChange {
    /// Replaces the A, AAAA and LIP records of a GE's name. `None` / empty
    /// removes that RRset; other types at the name are left alone.
    SetGe {
        /// The GE's name (inside the zone, not the apex).
        name: Name,
        /// TTL of the records.
        ttl: u32,
        /// Public IPv4 address.
        a: Option<Ipv4Addr>,
        /// Public IPv6 address.
        aaaa: Option<Ipv6Addr>,
        /// Local (private) addresses.
        lips: Vec<IpAddr>,
    },
    /// Removes a name and all its records (not the apex).
    RemoveName {
        /// The name.
        name: Name,
    },
    /// Replaces one RRset; an empty `rdatas` removes it.
    SetRrset {
        /// The owner name.
        name: Name,
        /// The type number.
        rtype: u16,
        /// TTL.
        ttl: u32,
        /// The records.
        rdatas: Vec<RData>,
    },
}

type Overlay = BTreeMap<NameKey, Option<NodeData>>;

/// A set of changes being prepared against a zone.
pub struct Txn<'z> {
    zone: &'z Zone,
    changed: Overlay,
}

impl<'z> Txn<'z> {
    /// Starts a transaction reading `zone`.
    pub fn new(zone: &'z Zone) -> Self {
        Self {
            zone,
            changed: BTreeMap::new(),
        }
    }

    /// Applies an RFC 2136 UPDATE already authenticated as signed by a key
    /// with `policy`. On error nothing of this update remains.
    pub fn update(&mut self, msg: &Message, policy: &KeyPolicy) -> UpdateOutcome {
        // 3.1: the zone section names exactly our zone, type SOA.
        let [zone] = msg.queries.as_slice() else {
            return Err((Rcode::FORMERR, "zone section must hold one entry"));
        };
        if u16::from(zone.query_type()) != rtype::SOA {
            return Err((Rcode::FORMERR, "zone section type is not SOA"));
        }
        if zone.query_class() != DNSClass::IN
            || key_of(zone.name()).as_ref() != self.zone.origin_key()
        {
            return Err((Rcode::NOTAUTH, "not authoritative for the zone named"));
        }
        self.check_prerequisites(&msg.answers)?;
        for rr in &msg.authorities {
            self.prescan(rr, policy)?;
        }
        let mut scratch = Overlay::new();
        for rr in &msg.authorities {
            self.apply_rr(&mut scratch, rr)?;
        }
        self.merge(scratch).map_err(|_| {
            (
                Rcode::REFUSED,
                "records of one name would exceed the size limit",
            )
        })
    }

    /// Applies a change from the embedding API.
    pub fn api(&mut self, change: &ApiChange) -> Result<(), Error> {
        let mut scratch = Overlay::new();
        match change {
            ApiChange::SetGe {
                name,
                ttl,
                a,
                aaaa,
                lips,
            } => {
                let key = self.ge_key(name)?;
                let node = self.entry(&mut scratch, &key, name);
                set_set(
                    node,
                    rtype::A,
                    *ttl,
                    a.map(|a| RData::A(A(a))).into_iter().collect(),
                );
                set_set(
                    node,
                    rtype::AAAA,
                    *ttl,
                    aaaa.map(|a| RData::AAAA(AAAA(a))).into_iter().collect(),
                );
                let mut lip_rds: Vec<RData> = Vec::new();
                for ip in lips {
                    let rd = lip_rdata(*ip);
                    if !lip_rds.contains(&rd) {
                        lip_rds.push(rd);
                    }
                }
                set_set(node, LIP_TYPE, *ttl, lip_rds);
            }
            ApiChange::RemoveName { name } => {
                let key = self.ge_key(name)?;
                scratch.insert(key, None);
            }
            ApiChange::SetRrset {
                name,
                rtype: t,
                ttl,
                rdatas,
            } => {
                let key = key_of(name);
                if !crate::wire::in_zone(&key, self.zone.origin_key()) {
                    return Err(Error::Name {
                        name: name.to_string(),
                        reason: "outside the zone",
                    });
                }
                let at_apex = key.as_ref() == self.zone.origin_key();
                if !type_allowed(*t, at_apex) || name.is_wildcard() {
                    return Err(Error::Refused("record type not allowed at this name"));
                }
                if *t == rtype::SOA && rdatas.len() != 1 {
                    return Err(Error::Refused("the zone must keep exactly one SOA record"));
                }
                if *t == rtype::NS && rdatas.is_empty() {
                    return Err(Error::Refused("the apex must keep its NS records"));
                }
                if rdatas
                    .iter()
                    .any(|rd| u16::from(rd.record_type()) != *t || !rdata_ok(rd))
                {
                    return Err(Error::Refused("record data does not match the type"));
                }
                let node = self.entry(&mut scratch, &key, name);
                set_set(node, *t, (*ttl).min(MAX_TTL), rdatas.clone());
            }
        }
        self.merge(scratch)
    }

    /// Ends the transaction: drops changes that change nothing, bumps the
    /// SOA serial once for the whole batch, and computes the IXFR diff.
    /// `None` when nothing changed.
    pub fn finish(self) -> Result<Option<ChangeSet>, Error> {
        let zone = self.zone;
        let mut nodes: Vec<(NameKey, Option<NodeData>)> = self
            .changed
            .into_iter()
            .map(|(k, v)| (k, v.filter(|d| !d.is_empty())))
            .filter(|(k, v)| zone.node(k).map(|n| n.data()) != v.as_ref())
            .collect();
        if nodes.is_empty() {
            return Ok(None);
        }
        let old_serial = zone.serial();
        let apex_key: NameKey = zone.origin_key().into();
        let pos = match nodes.iter().position(|(k, _)| *k == apex_key) {
            Some(p) => p,
            None => {
                let apex = zone.node(&apex_key).map(|n| n.data().clone());
                nodes.push((apex_key.clone(), apex));
                nodes.len() - 1
            }
        };
        let Some(Some(apex)) = nodes.get_mut(pos).map(|(_, d)| d) else {
            return Err(Error::Corrupt("zone apex missing".into()));
        };
        let Some(RData::SOA(soa)) = apex
            .rrsets
            .get_mut(&rtype::SOA)
            .and_then(|s| s.rdatas.first_mut())
        else {
            return Err(Error::Corrupt("zone apex has no SOA".into()));
        };
        // An update may have set a newer serial itself; otherwise count up.
        if !serial_gt(soa.serial, old_serial) {
            soa.serial = old_serial.wrapping_add(1);
        }
        let serial = soa.serial;
        let diff = diff(zone, &nodes)?;
        Ok(Some(ChangeSet {
            old_serial,
            serial,
            nodes,
            diff,
        }))
    }

    /// The current version of a name: this transaction's, else the zone's.
    fn get<'a>(&'a self, scratch: &'a Overlay, key: &[u8]) -> Option<&'a NodeData> {
        match scratch.get(key).or_else(|| self.changed.get(key)) {
            Some(v) => v.as_ref(),
            None => self.zone.node(key).map(|n| n.data()),
        }
    }

    /// A mutable copy of a name in `scratch`, created from the current
    /// version (or empty) on first use.
    fn entry<'a>(&self, scratch: &'a mut Overlay, key: &NameKey, name: &Name) -> &'a mut NodeData {
        // Absent from scratch: start from the current version. Present as
        // `None` (removed earlier in this update): start empty.
        let fresh = match scratch.get(key) {
            Some(_) => None,
            None => self.get(&Overlay::new(), key).cloned(),
        };
        let slot = scratch.entry(key.clone()).or_insert(None);
        if fresh.is_some() {
            *slot = fresh;
        }
        slot.get_or_insert_with(|| NodeData::new(name.clone()))
    }

    fn merge(&mut self, scratch: Overlay) -> Result<(), Error> {
        for data in scratch.values().flatten() {
            if data.rrsets.values().any(|s| s.rdatas.len() > MAX_RRSET) {
                return Err(Error::Refused("an RRset would exceed 100 records"));
            }
            // Encoding checks the size limit of a name's records.
            Node::new(data.clone())?;
        }
        self.changed.extend(scratch);
        Ok(())
    }

    fn ge_key(&self, name: &Name) -> Result<NameKey, Error> {
        let key = key_of(name);
        if !crate::wire::in_zone(&key, self.zone.origin_key())
            || key.as_ref() == self.zone.origin_key()
        {
            return Err(Error::Name {
                name: name.to_string(),
                reason: "not a name below the zone apex",
            });
        }
        if name.is_wildcard() {
            return Err(Error::Name {
                name: name.to_string(),
                reason: "wildcard names are not served",
            });
        }
        Ok(key)
    }

    fn in_zone(&self, name: &Name) -> Option<NameKey> {
        let key = key_of(name);
        crate::wire::in_zone(&key, self.zone.origin_key()).then_some(key)
    }

    /// RFC 2136 3.2: every prerequisite against the state before the update.
    fn check_prerequisites(&self, prereqs: &[Record]) -> UpdateOutcome {
        let none = Overlay::new();
        let mut value_sets: BTreeMap<(NameKey, u16), Vec<Vec<u8>>> = BTreeMap::new();
        for rr in prereqs {
            if rr.ttl != 0 {
                return Err((Rcode::FORMERR, "prerequisite with non-zero TTL"));
            }
            let key = self
                .in_zone(&rr.name)
                .ok_or((Rcode::NOTZONE, "prerequisite outside the zone"))?;
            let t = u16::from(rr.record_type());
            let node = self.get(&none, &key);
            let empty_rdata = matches!(rr.data, RData::Update0(_));
            match u16::from(rr.dns_class) {
                class::ANY if empty_rdata => {
                    let exists = match t {
                        rtype::ANY => node.is_some_and(|n| !n.is_empty()),
                        _ => node
                            .and_then(|n| n.rrsets.get(&t))
                            .is_some_and(|s| !s.rdatas.is_empty()),
                    };
                    if !exists {
                        return Err(if t == rtype::ANY {
                            (Rcode::NXDOMAIN, "prerequisite: name is not in use")
                        } else {
                            (Rcode::NXRRSET, "prerequisite: RRset does not exist")
                        });
                    }
                }
                class::NONE if empty_rdata => {
                    let exists = match t {
                        rtype::ANY => node.is_some_and(|n| !n.is_empty()),
                        _ => node
                            .and_then(|n| n.rrsets.get(&t))
                            .is_some_and(|s| !s.rdatas.is_empty()),
                    };
                    if exists {
                        return Err(if t == rtype::ANY {
                            (Rcode::YXDOMAIN, "prerequisite: name is in use")
                        } else {
                            (Rcode::YXRRSET, "prerequisite: RRset exists")
                        });
                    }
                }
                class::IN if !empty_rdata && t != rtype::ANY => {
                    let canon = rdata_canonical(&rr.data)
                        .map_err(|_| (Rcode::FORMERR, "bad prerequisite data"))?;
                    let set = value_sets.entry((key, t)).or_default();
                    if !set.contains(&canon) {
                        set.push(canon);
                    }
                }
                _ => return Err((Rcode::FORMERR, "malformed prerequisite")),
            }
        }
        // Value-dependent prerequisites: the RRset must equal the given set.
        for ((key, t), mut want) in value_sets {
            let mut have: Vec<Vec<u8>> = self
                .get(&none, &key)
                .and_then(|n| n.rrsets.get(&t))
                .map(|s| {
                    s.rdatas
                        .iter()
                        .filter_map(|rd| rdata_canonical(rd).ok())
                        .collect()
                })
                .unwrap_or_default();
            want.sort();
            have.sort();
            if want != have {
                return Err((Rcode::NXRRSET, "prerequisite: RRset differs"));
            }
        }
        Ok(())
    }

    /// RFC 2136 3.4.1.3 plus this server's policy.
    fn prescan(&self, rr: &Record, policy: &KeyPolicy) -> UpdateOutcome {
        let key = self
            .in_zone(&rr.name)
            .ok_or((Rcode::NOTZONE, "update outside the zone"))?;
        let t = u16::from(rr.record_type());
        let meta = is_meta(t);
        let empty_rdata = matches!(rr.data, RData::Update0(_));
        match u16::from(rr.dns_class) {
            class::IN => {
                if meta || empty_rdata {
                    return Err((Rcode::FORMERR, "addition of a meta type or without data"));
                }
                if rr.ttl > MAX_TTL {
                    return Err((Rcode::FORMERR, "TTL above 2^31-1"));
                }
                if !rdata_ok(&rr.data) {
                    return Err((
                        Rcode::FORMERR,
                        "malformed record data (LIP needs 4 or 16 bytes)",
                    ));
                }
                let at_apex = key.as_ref() == self.zone.origin_key();
                if !type_allowed(t, at_apex) {
                    return Err((Rcode::REFUSED, "record type not served at this name"));
                }
                if rr.name.is_wildcard() {
                    return Err((Rcode::REFUSED, "wildcard names are not served"));
                }
            }
            class::ANY => {
                if rr.ttl != 0 || !empty_rdata || (meta && t != rtype::ANY) {
                    return Err((Rcode::FORMERR, "malformed RRset deletion"));
                }
            }
            class::NONE => {
                if rr.ttl != 0 || meta || empty_rdata {
                    return Err((Rcode::FORMERR, "malformed record deletion"));
                }
            }
            _ => return Err((Rcode::FORMERR, "update with a foreign class")),
        }
        if !policy.may_update(&rr.name) {
            return Err((Rcode::REFUSED, "name outside the key's update scope"));
        }
        Ok(())
    }

    /// RFC 2136 3.4.2: one update record.
    fn apply_rr(&self, scratch: &mut Overlay, rr: &Record) -> UpdateOutcome {
        let key = key_of(&rr.name);
        let at_apex = key.as_ref() == self.zone.origin_key();
        let t = u16::from(rr.record_type());
        let bad = |_| (Rcode::FORMERR, "unencodable record data");
        match u16::from(rr.dns_class) {
            class::IN => {
                let node = self.entry(scratch, &key, &rr.name);
                if t == rtype::SOA {
                    let current = node.rrsets.get(&rtype::SOA).and_then(|s| s.rdatas.first());
                    let newer = match (current, &rr.data) {
                        (Some(RData::SOA(cur)), RData::SOA(new)) => {
                            serial_gt(new.serial, cur.serial)
                        }
                        _ => false,
                    };
                    if newer {
                        node.rrsets.insert(
                            t,
                            RrSet {
                                ttl: rr.ttl,
                                rdatas: vec![rr.data.clone()],
                            },
                        );
                    }
                    return Ok(());
                }
                let canon = rdata_canonical(&rr.data).map_err(bad)?;
                let set = node.rrsets.entry(t).or_insert_with(|| RrSet {
                    ttl: rr.ttl,
                    rdatas: Vec::new(),
                });
                // One TTL per RRset: the newest wins (as BIND does).
                set.ttl = rr.ttl;
                let dup = set
                    .rdatas
                    .iter()
                    .position(|rd| rdata_canonical(rd).ok().as_ref() == Some(&canon));
                match dup {
                    Some(i) => set.rdatas[i] = rr.data.clone(),
                    None => set.rdatas.push(rr.data.clone()),
                }
            }
            class::ANY => {
                if self.get(scratch, &key).is_none() {
                    return Ok(());
                }
                let node = self.entry(scratch, &key, &rr.name);
                if t == rtype::ANY {
                    node.rrsets
                        .retain(|&k, _| at_apex && (k == rtype::SOA || k == rtype::NS));
                } else if !(at_apex && (t == rtype::SOA || t == rtype::NS)) {
                    node.rrsets.remove(&t);
                }
            }
            class::NONE => {
                if t == rtype::SOA || self.get(scratch, &key).is_none() {
                    return Ok(());
                }
                let canon = rdata_canonical(&rr.data).map_err(bad)?;
                let node = self.entry(scratch, &key, &rr.name);
                if let Some(set) = node.rrsets.get_mut(&t) {
                    // The apex keeps at least one NS record.
                    if at_apex && t == rtype::NS && set.rdatas.len() <= 1 {
                        return Ok(());
                    }
                    set.rdatas
                        .retain(|rd| rdata_canonical(rd).ok().as_ref() != Some(&canon));
                    if set.rdatas.is_empty() {
                        node.rrsets.remove(&t);
                    }
                }
            }
            _ => return Err((Rcode::FORMERR, "update with a foreign class")),
        }
        Ok(())
    }
}

/// Replaces an RRset of a node (removes it when `rdatas` is empty).
fn set_set(node: &mut NodeData, t: u16, ttl: u32, rdatas: Vec<RData>) {
    if rdatas.is_empty() {
        node.rrsets.remove(&t);
    } else {
        node.rrsets.insert(t, RrSet { ttl, rdatas });
    }
}

/// Meta and pseudo types that never appear as zone data (RFC 6895 3.1):
/// OPT, TKEY, TSIG, IXFR, AXFR, MAILB, MAILA, ANY, and type 0.
fn is_meta(t: u16) -> bool {
    matches!(t, 0 | rtype::OPT | 249..=255)
}

/// Type-specific checks hickory's parser does not make.
fn rdata_ok(rd: &RData) -> bool {
    match rd {
        RData::Unknown { code, .. } if u16::from(*code) == LIP_TYPE => lip_addr(rd).is_some(),
        RData::Update0(_) => false,
        _ => true,
    }
}

/// Records removed and added between the zone and the new versions.
fn diff(zone: &Zone, nodes: &[(NameKey, Option<NodeData>)]) -> Result<Diff, Error> {
    let mut d = Diff {
        old_soa: Some(zone.soa_record()),
        ..Diff::default()
    };
    let canon = |r: &Record| -> Result<(u16, u32, Vec<u8>), Error> {
        Ok((u16::from(r.record_type()), r.ttl, rdata_canonical(&r.data)?))
    };
    for (key, new) in nodes {
        let old: Vec<Record> = zone
            .node(key)
            .map(|n| n.data().records().collect())
            .unwrap_or_default();
        let new: Vec<Record> = new
            .as_ref()
            .map(|n| n.records().collect())
            .unwrap_or_default();
        let old_c = old.iter().map(canon).collect::<Result<Vec<_>, _>>()?;
        let new_c = new.iter().map(canon).collect::<Result<Vec<_>, _>>()?;
        for (r, c) in old.iter().zip(&old_c) {
            if c.0 == rtype::SOA {
                continue;
            }
            if !new_c.contains(c) {
                d.removed.push(r.clone());
            }
        }
        for (r, c) in new.iter().zip(&new_c) {
            if c.0 == rtype::SOA {
                d.new_soa = Some(r.clone());
            } else if !old_c.contains(c) {
                d.added.push(r.clone());
            }
        }
    }
    Ok(d)
}
