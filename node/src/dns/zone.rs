//! Authoritative answers for names in the network's zone, from a snapshot of
//! the name table.
//!
//! The zone has no data of its own besides the table: the apex carries a
//! synthetic SOA and NS in the style of RFC 6303's locally served zones
//! (`<zone> SOA <zone> nobody.invalid.`, `<zone> NS <zone>`), whose serial is
//! the table's version and whose minimum is the stub's TTL, so negative
//! answers are cached no longer than positive ones.

use hickory_proto::op::{Message, MessageType, Metadata, Query};
use hickory_proto::op::{OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::table::{Entry, Snapshot, Target};
use crate::error::{Error, Result};

/// SOA timers of the synthetic SOA (RFC 6303's values). Nothing transfers
/// this zone, so only `minimum` (the negative TTL) matters.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 1200;
const SOA_EXPIRE: i32 = 604_800;

/// The zone the stub is authoritative for.
#[derive(Clone, Debug)]
pub(crate) struct Zone {
    /// The apex, lower-case, fully qualified.
    apex: Name,
    /// Number of labels of the apex.
    labels: usize,
    /// TTL of every record served.
    ttl: u32,
}

impl Zone {
    /// Parses and checks a zone name such as `home.fpn` or `home.fpn.`.
    pub(crate) fn new(zone: &str, ttl: u32) -> Result<Self> {
        let bad = |reason| Error::DnsName {
            name: zone.to_owned(),
            reason,
        };
        let mut apex = Name::from_ascii(zone).map_err(|_| bad("not a valid DNS name"))?;
        apex.set_fqdn(true);
        let apex = apex.to_lowercase();
        let labels = apex.iter().count();
        if labels == 0 {
            return Err(bad("the root cannot be the network's zone"));
        }
        if apex.iter().any(|l| l.is_empty() || l == b"*") {
            return Err(bad("empty or wildcard label"));
        }
        Ok(Self { apex, labels, ttl })
    }

    /// The apex.
    pub(crate) fn apex(&self) -> &Name {
        &self.apex
    }

    /// Whether `name` is the apex or below it (case-insensitive).
    pub(crate) fn contains(&self, name: &Name) -> bool {
        name.is_fqdn() && self.apex.zone_of(name)
    }

    /// Builds the authoritative response to `query`, a question for a name in
    /// this zone, asked in `req`.
    pub(crate) fn answer(&self, snap: &Snapshot, req: &Message, query: &Query) -> Message {
        let mut resp = Message::new(req.id, MessageType::Response, OpCode::Query);
        resp.metadata = Metadata::response_from_request(&req.metadata);
        resp.metadata.authoritative = true;
        // The stub forwards other names, so recursion is available.
        resp.metadata.recursion_available = true;
        resp.add_query(query.clone());

        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            resp.metadata.authoritative = false;
            resp.metadata.response_code = ResponseCode::Refused;
            return resp;
        }
        let qname = query.name();
        let qtype = query.query_type();
        let below = qname.iter().count().saturating_sub(self.labels);
        if below == 0 {
            match qtype {
                RecordType::SOA => {
                    resp.add_answer(self.soa(snap));
                }
                RecordType::NS => {
                    resp.add_answer(self.ns());
                }
                RecordType::ANY => {
                    resp.add_answer(self.soa(snap));
                    resp.add_answer(self.ns());
                }
                _ => {
                    resp.add_authority(self.soa(snap));
                }
            }
            return resp;
        }
        match snap.entry(qname.iter().take(below)) {
            Entry::Data(target) => {
                let records = self.records(qname, &target, qtype);
                if records.is_empty() {
                    resp.add_authority(self.soa(snap));
                } else {
                    resp.add_answers(records);
                }
            }
            Entry::Empty => {
                resp.add_authority(self.soa(snap));
            }
            Entry::Missing => {
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.add_authority(self.soa(snap));
            }
        }
        resp
    }

    /// The records of `target` that answer `qtype`, owned by `qname` as the
    /// client spelled it.
    fn records(&self, qname: &Name, target: &Target, qtype: RecordType) -> Vec<Record> {
        let a = || Record::from_rdata(qname.clone(), self.ttl, RData::A(A(target.v4())));
        let aaaa = || {
            target
                .v6()
                .map(|v6| Record::from_rdata(qname.clone(), self.ttl, RData::AAAA(AAAA(v6))))
        };
        match qtype {
            RecordType::A => vec![a()],
            RecordType::AAAA => aaaa().into_iter().collect(),
            RecordType::ANY => std::iter::once(a()).chain(aaaa()).collect(),
            _ => Vec::new(),
        }
    }

    fn soa(&self, snap: &Snapshot) -> Record {
        let rname = Name::from_ascii("nobody.invalid.").unwrap_or_else(|_| Name::root());
        let soa = SOA::new(
            self.apex.clone(),
            rname,
            snap.serial(),
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            self.ttl,
        );
        Record::from_rdata(self.apex.clone(), self.ttl, RData::SOA(soa))
    }

    fn ns(&self) -> Record {
        Record::from_rdata(
            self.apex.clone(),
            self.ttl,
            RData::NS(NS(self.apex.clone())),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::dns::table::NameTable;

    fn ask(zone: &Zone, table: &NameTable, name: &str, qtype: RecordType) -> Message {
        let q = Query::query(Name::from_ascii(name).unwrap(), qtype);
        let mut req = Message::query();
        req.add_query(q.clone());
        zone.answer(&table.snapshot(), &req, &q)
    }

    fn table() -> NameTable {
        let t = NameTable::new();
        t.insert(
            "b",
            Target::Peer {
                v4: Ipv4Addr::new(100, 64, 0, 2),
                v6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
            },
        )
        .unwrap();
        t.insert("c", Target::peer(Ipv4Addr::new(100, 64, 0, 3)))
            .unwrap();
        t
    }

    #[test]
    fn zone_names_are_checked() {
        assert!(Zone::new("home.fpn", 60).is_ok());
        assert!(
            Zone::new("Home.FPN.", 60)
                .unwrap()
                .contains(&"b.home.fpn.".parse().unwrap())
        );
        assert!(Zone::new(".", 60).is_err());
        assert!(Zone::new("a..b", 60).is_err());
        let z = Zone::new("home.fpn", 60).unwrap();
        assert!(!z.contains(&"home.fpn.example.".parse().unwrap()));
        assert!(!z.contains(&"xhome.fpn.".parse().unwrap()));
    }

    #[test]
    fn a_aaaa_any_and_nodata() {
        let z = Zone::new("home.fpn", 60).unwrap();
        let t = table();
        let r = ask(&z, &t, "B.home.fpn.", RecordType::A);
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(100, 64, 0, 2))));
        assert_eq!(ask(&z, &t, "b.home.fpn.", RecordType::ANY).answers.len(), 2);
        let r = ask(&z, &t, "c.home.fpn.", RecordType::AAAA);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        let r = ask(&z, &t, "c.home.fpn.", RecordType::MX);
        assert!(r.answers.is_empty() && r.authorities.len() == 1);
    }

    #[test]
    fn apex_and_missing_names() {
        let z = Zone::new("home.fpn", 60).unwrap();
        let t = table();
        let r = ask(&z, &t, "home.fpn.", RecordType::SOA);
        let RData::SOA(soa) = &r.answers[0].data else {
            panic!("not an SOA: {r:?}");
        };
        assert_eq!(soa.serial, t.serial());
        assert_eq!(
            ask(&z, &t, "home.fpn.", RecordType::NS).answers[0].record_type(),
            RecordType::NS
        );
        let r = ask(&z, &t, "nope.home.fpn.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        let r = ask(&z, &t, "x.b.home.fpn.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }
}
