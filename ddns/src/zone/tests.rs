//! Zone logic, called directly: lookups, RFC 2136 semantics, the API.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, CNAME, NS, NULL, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::*;
use crate::keys::KeyPolicy;
use crate::lip::{LIP_RECORD_TYPE, lip_rdata};
use crate::wire::{Rcode, rtype};

fn n(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn zone() -> Zone {
    let soa = SOA::new(
        n("ns1.home.fpn."),
        n("hostmaster.home.fpn."),
        100,
        3600,
        600,
        86400,
        60,
    );
    Zone::new_empty(&n("home.fpn."), soa, 3600, &[n("ns1.home.fpn.")]).unwrap()
}

fn a(name: &str, ip: &str) -> Record {
    Record::from_rdata(n(name), 60, RData::A(A(ip.parse().unwrap())))
}

fn lip(name: &str, ip: &str) -> Record {
    Record::from_rdata(n(name), 60, lip_rdata(ip.parse().unwrap()))
}

/// An RFC 2136 "delete" or prerequisite record: class ANY/NONE, no data.
fn empty(name: &str, t: RecordType, class: DNSClass) -> Record {
    let mut r = Record::update0(n(name), 0, t);
    r.dns_class = class;
    r
}

fn with_class(mut r: Record, class: DNSClass, ttl: u32) -> Record {
    r.dns_class = class;
    r.ttl = ttl;
    r
}

/// An update message, round-tripped through the wire like a real one.
fn update(zone: &str, prereqs: Vec<Record>, updates: Vec<Record>) -> Message {
    let mut m = Message::new(7, MessageType::Query, OpCode::Update);
    m.add_query(Query::query(n(zone), RecordType::SOA));
    m.add_answers(prereqs);
    m.add_authorities(updates);
    Message::from_vec(&m.to_vec().unwrap()).unwrap()
}

fn admin() -> KeyPolicy {
    KeyPolicy::admin(&n("home.fpn."))
}

/// Applies updates in one transaction and commits the result to `z`.
fn commit(z: &mut Zone, msgs: &[Message], policy: &KeyPolicy) -> Vec<Result<(), Rcode>> {
    let mut txn = Txn::new(z);
    let results = msgs
        .iter()
        .map(|m| txn.update(m, policy).map_err(|(rc, _)| rc))
        .collect();
    if let Some(cs) = txn.finish().unwrap() {
        z.apply(&cs).unwrap();
    }
    results
}

fn key(s: &str) -> NameKey {
    key_of(&n(s))
}

fn answer_count(z: &Zone, name: &str, t: u16) -> Option<(u16, u16)> {
    match z.lookup(&key(name), t) {
        Lookup::Answer(e) => Some((e.an, e.ar)),
        _ => None,
    }
}

#[test]
fn lookups_distinguish_answer_nodata_nxdomain_and_foreign_names() {
    let mut z = zone();
    let r = commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![a("nas.lan.home.fpn.", "198.18.0.7")],
        )],
        &admin(),
    );
    assert_eq!(r, vec![Ok(())]);
    assert_eq!(
        answer_count(&z, "nas.lan.home.fpn.", rtype::A),
        Some((1, 0))
    );
    assert_eq!(
        answer_count(&z, "NAS.Lan.home.fpn.", rtype::A),
        Some((1, 0)),
        "case-insensitive"
    );
    assert!(matches!(
        z.lookup(&key("nas.lan.home.fpn."), rtype::AAAA),
        Lookup::NoData
    ));
    // an empty non-terminal exists without records
    assert!(matches!(
        z.lookup(&key("lan.home.fpn."), rtype::A),
        Lookup::NoData
    ));
    assert!(matches!(
        z.lookup(&key("other.home.fpn."), rtype::A),
        Lookup::NxDomain
    ));
    assert!(matches!(
        z.lookup(&key("home.fpn2."), rtype::A),
        Lookup::NotInZone
    ));
    assert!(matches!(
        z.lookup(&key("fpn."), rtype::A),
        Lookup::NotInZone
    ));
    assert_eq!(answer_count(&z, "home.fpn.", rtype::SOA), Some((1, 0)));
    // removing the name removes the empty non-terminal too
    let del = empty("nas.lan.home.fpn.", RecordType::ANY, DNSClass::ANY);
    commit(&mut z, &[update("home.fpn.", vec![], vec![del])], &admin());
    assert!(matches!(
        z.lookup(&key("lan.home.fpn."), rtype::A),
        Lookup::NxDomain
    ));
}

#[test]
fn a_answers_carry_lip_records_in_the_additional_section() {
    let mut z = zone();
    let ups = vec![
        a("nas.home.fpn.", "198.18.0.7"),
        lip("nas.home.fpn.", "192.168.1.10"),
        lip("nas.home.fpn.", "fd00::10"),
        Record::from_rdata(
            n("nas.home.fpn."),
            60,
            RData::AAAA("2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().into()),
        ),
    ];
    commit(&mut z, &[update("home.fpn.", vec![], ups)], &admin());
    assert_eq!(answer_count(&z, "nas.home.fpn.", rtype::A), Some((1, 2)));
    assert_eq!(answer_count(&z, "nas.home.fpn.", rtype::AAAA), Some((1, 2)));
    assert_eq!(answer_count(&z, "nas.home.fpn.", rtype::LIP), Some((2, 0)));
    assert_eq!(answer_count(&z, "nas.home.fpn.", rtype::ANY), Some((4, 0)));
    // a name without LIP has no additional records
    commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![a("pc.home.fpn.", "198.18.0.8")],
        )],
        &admin(),
    );
    assert_eq!(answer_count(&z, "pc.home.fpn.", rtype::A), Some((1, 0)));
}

#[test]
fn serial_counts_once_per_commit_and_not_for_no_ops() {
    let mut z = zone();
    let s0 = z.serial();
    let r = commit(
        &mut z,
        &[
            update("home.fpn.", vec![], vec![a("x.home.fpn.", "198.18.0.1")]),
            update("home.fpn.", vec![], vec![a("y.home.fpn.", "198.18.0.2")]),
        ],
        &admin(),
    );
    assert_eq!(r, vec![Ok(()), Ok(())]);
    assert_eq!(z.serial(), s0 + 1);
    // adding what is there changes nothing: no new serial
    commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![a("x.home.fpn.", "198.18.0.1")],
        )],
        &admin(),
    );
    assert_eq!(z.serial(), s0 + 1);
    // add and delete in one update: no change either
    let add = a("z.home.fpn.", "198.18.0.3");
    let del = with_class(add.clone(), DNSClass::NONE, 0);
    commit(
        &mut z,
        &[update("home.fpn.", vec![], vec![add, del])],
        &admin(),
    );
    assert_eq!(z.serial(), s0 + 1);
    assert!(matches!(
        z.lookup(&key("z.home.fpn."), rtype::A),
        Lookup::NxDomain
    ));
}

#[test]
fn serial_arithmetic_wraps() {
    assert!(serial_gt(1, 0));
    assert!(serial_gt(0, u32::MAX));
    assert!(!serial_gt(0, 1));
    assert!(!serial_gt(5, 5));
    let mut z = zone();
    let set_serial = |z: &mut Zone, serial: u32| {
        let soa = SOA::new(
            n("ns1.home.fpn."),
            n("hostmaster.home.fpn."),
            serial,
            3600,
            600,
            86400,
            60,
        );
        let r = Record::from_rdata(n("home.fpn."), 3600, RData::SOA(soa));
        commit(z, &[update("home.fpn.", vec![], vec![r])], &admin())
    };
    // an older serial from a client is ignored (RFC 2136 3.4.2.2)
    set_serial(&mut z, 99);
    assert_eq!(z.serial(), 100);
    // a newer one is kept, in serial arithmetic
    set_serial(&mut z, 0x8000_0000);
    assert_eq!(z.serial(), 0x8000_0000);
    set_serial(&mut z, u32::MAX);
    assert_eq!(z.serial(), u32::MAX);
    commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![a("w.home.fpn.", "198.18.0.4")],
        )],
        &admin(),
    );
    assert_eq!(z.serial(), 0, "the serial wraps");
}

#[test]
fn prerequisites_are_checked_and_a_failed_update_changes_nothing() {
    let mut z = zone();
    commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![a("nas.home.fpn.", "198.18.0.7")],
        )],
        &admin(),
    );
    let s = z.serial();
    let add = || vec![a("new.home.fpn.", "198.18.0.9")];
    let cases: Vec<(Record, Rcode)> = vec![
        (
            empty("nas.home.fpn.", RecordType::ANY, DNSClass::NONE),
            Rcode::YXDOMAIN,
        ),
        (
            empty("gone.home.fpn.", RecordType::ANY, DNSClass::ANY),
            Rcode::NXDOMAIN,
        ),
        (
            empty("nas.home.fpn.", RecordType::A, DNSClass::NONE),
            Rcode::YXRRSET,
        ),
        (
            empty("nas.home.fpn.", RecordType::TXT, DNSClass::ANY),
            Rcode::NXRRSET,
        ),
        (
            with_class(a("nas.home.fpn.", "198.18.0.99"), DNSClass::IN, 0),
            Rcode::NXRRSET,
        ),
        (
            empty("gone.other.", RecordType::ANY, DNSClass::ANY),
            Rcode::NOTZONE,
        ),
        (
            with_class(a("nas.home.fpn.", "198.18.0.7"), DNSClass::IN, 60),
            Rcode::FORMERR,
        ),
    ];
    for (pre, want) in cases {
        let r = commit(
            &mut z,
            &[update("home.fpn.", vec![pre.clone()], add())],
            &admin(),
        );
        assert_eq!(r, vec![Err(want)], "prerequisite {pre:?}");
        assert_eq!(z.serial(), s);
        assert!(matches!(
            z.lookup(&key("new.home.fpn."), rtype::A),
            Lookup::NxDomain
        ));
    }
    // and the ones that hold
    for pre in [
        empty("nas.home.fpn.", RecordType::ANY, DNSClass::ANY),
        empty("nas.home.fpn.", RecordType::A, DNSClass::ANY),
        empty("new.home.fpn.", RecordType::ANY, DNSClass::NONE),
        with_class(a("nas.home.fpn.", "198.18.0.7"), DNSClass::IN, 0),
    ] {
        let r = commit(
            &mut z,
            &[update("home.fpn.", vec![pre.clone()], vec![])],
            &admin(),
        );
        assert_eq!(r, vec![Ok(())], "prerequisite {pre:?}");
    }
}

#[test]
fn a_failed_update_in_a_batch_leaves_the_others() {
    let mut z = zone();
    let good = update("home.fpn.", vec![], vec![a("a.home.fpn.", "198.18.0.1")]);
    let bad = update(
        "home.fpn.",
        vec![empty("missing.home.fpn.", RecordType::ANY, DNSClass::ANY)],
        vec![a("b.home.fpn.", "198.18.0.2")],
    );
    // a later update in the batch sees the earlier one
    let sees = update(
        "home.fpn.",
        vec![empty("a.home.fpn.", RecordType::A, DNSClass::ANY)],
        vec![a("c.home.fpn.", "198.18.0.3")],
    );
    let r = commit(&mut z, &[good, bad, sees], &admin());
    assert_eq!(r, vec![Ok(()), Err(Rcode::NXDOMAIN), Ok(())]);
    assert!(answer_count(&z, "a.home.fpn.", rtype::A).is_some());
    assert!(answer_count(&z, "b.home.fpn.", rtype::A).is_none());
    assert!(answer_count(&z, "c.home.fpn.", rtype::A).is_some());
}

#[test]
fn deletions_follow_rfc_2136_and_protect_the_apex() {
    let mut z = zone();
    let txt = Record::from_rdata(
        n("h.home.fpn."),
        60,
        RData::TXT(TXT::new(vec!["v=1".into()])),
    );
    commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![
                a("h.home.fpn.", "198.18.0.1"),
                a("h.home.fpn.", "198.18.0.2"),
                txt,
            ],
        )],
        &admin(),
    );
    assert_eq!(answer_count(&z, "h.home.fpn.", rtype::A), Some((2, 0)));
    // delete one RR (class NONE), case-insensitive name
    commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![with_class(
                a("H.home.fpn.", "198.18.0.1"),
                DNSClass::NONE,
                0,
            )],
        )],
        &admin(),
    );
    assert_eq!(answer_count(&z, "h.home.fpn.", rtype::A), Some((1, 0)));
    // delete an RRset (class ANY, type)
    commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![empty("h.home.fpn.", RecordType::TXT, DNSClass::ANY)],
        )],
        &admin(),
    );
    assert!(matches!(
        z.lookup(&key("h.home.fpn."), rtype::TXT),
        Lookup::NoData
    ));
    // delete everything at the apex: SOA and NS stay
    let s = z.serial();
    commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![empty("home.fpn.", RecordType::ANY, DNSClass::ANY)],
        )],
        &admin(),
    );
    assert_eq!(z.serial(), s);
    assert_eq!(answer_count(&z, "home.fpn.", rtype::NS), Some((1, 0)));
    // the last NS cannot be deleted, nor the SOA
    let ns = Record::from_rdata(n("home.fpn."), 0, RData::NS(NS(n("ns1.home.fpn."))));
    commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![with_class(ns, DNSClass::NONE, 0)],
        )],
        &admin(),
    );
    assert_eq!(answer_count(&z, "home.fpn.", rtype::NS), Some((1, 0)));
    commit(
        &mut z,
        &[update(
            "home.fpn.",
            vec![],
            vec![empty("home.fpn.", RecordType::SOA, DNSClass::ANY)],
        )],
        &admin(),
    );
    assert_eq!(answer_count(&z, "home.fpn.", rtype::SOA), Some((1, 0)));
}

#[test]
fn key_scope_limits_updates_to_a_subtree() {
    let mut z = zone();
    let router = KeyPolicy {
        update: vec![n("router1.home.fpn.")],
        transfer: false,
    };
    let r = commit(
        &mut z,
        &[
            update(
                "home.fpn.",
                vec![],
                vec![a("nas.router1.home.fpn.", "198.18.0.1")],
            ),
            update(
                "home.fpn.",
                vec![],
                vec![a("router1.home.fpn.", "198.18.0.1")],
            ),
            // one name outside the scope spoils the whole update
            update(
                "home.fpn.",
                vec![],
                vec![
                    a("pc.router1.home.fpn.", "198.18.0.2"),
                    a("router2.home.fpn.", "198.18.0.3"),
                ],
            ),
            update(
                "home.fpn.",
                vec![],
                vec![empty("home.fpn.", RecordType::ANY, DNSClass::ANY)],
            ),
        ],
        &router,
    );
    assert_eq!(
        r,
        vec![Ok(()), Ok(()), Err(Rcode::REFUSED), Err(Rcode::REFUSED)]
    );
    assert!(answer_count(&z, "pc.router1.home.fpn.", rtype::A).is_none());
    assert!(answer_count(&z, "router2.home.fpn.", rtype::A).is_none());
}

#[test]
fn zone_section_and_policy_errors() {
    let z = zone();
    let mut txn = Txn::new(&z);
    let rc = |r: UpdateOutcome| r.map_err(|(rc, _)| rc);
    assert_eq!(
        rc(txn.update(&update("other.fpn.", vec![], vec![]), &admin())),
        Err(Rcode::NOTAUTH)
    );
    let outside = update("home.fpn.", vec![], vec![a("x.other.fpn.", "198.18.0.1")]);
    assert_eq!(rc(txn.update(&outside, &admin())), Err(Rcode::NOTZONE));
    let cname = Record::from_rdata(n("c.home.fpn."), 60, RData::CNAME(CNAME(n("x.home.fpn."))));
    assert_eq!(
        rc(txn.update(&update("home.fpn.", vec![], vec![cname]), &admin())),
        Err(Rcode::REFUSED)
    );
    let wild = update("home.fpn.", vec![], vec![a("*.home.fpn.", "198.18.0.1")]);
    assert_eq!(rc(txn.update(&wild, &admin())), Err(Rcode::REFUSED));
    let sub_ns = Record::from_rdata(n("sub.home.fpn."), 60, RData::NS(NS(n("ns.elsewhere."))));
    assert_eq!(
        rc(txn.update(&update("home.fpn.", vec![], vec![sub_ns]), &admin())),
        Err(Rcode::REFUSED)
    );
    let bad_lip = Record::from_rdata(
        n("l.home.fpn."),
        60,
        RData::Unknown {
            code: LIP_RECORD_TYPE,
            rdata: NULL::with(vec![1, 2, 3]),
        },
    );
    assert_eq!(
        rc(txn.update(&update("home.fpn.", vec![], vec![bad_lip]), &admin())),
        Err(Rcode::FORMERR)
    );
    let any_add = empty("x.home.fpn.", RecordType::ANY, DNSClass::IN);
    assert_eq!(
        rc(txn.update(&update("home.fpn.", vec![], vec![any_add]), &admin())),
        Err(Rcode::FORMERR)
    );
    let no_scope = KeyPolicy::default();
    let ok = update("home.fpn.", vec![], vec![a("x.home.fpn.", "198.18.0.1")]);
    assert_eq!(rc(txn.update(&ok, &no_scope)), Err(Rcode::REFUSED));
    assert!(txn.finish().unwrap().is_none());
}

#[test]
fn api_sets_and_removes_ge_records() {
    let mut z = zone();
    let mut txn = Txn::new(&z);
    let lips: Vec<IpAddr> = vec![
        "192.168.1.10".parse().unwrap(),
        "192.168.1.10".parse().unwrap(),
    ];
    txn.api(&ApiChange::SetGe {
        name: n("nas.home.fpn."),
        ttl: 30,
        a: Some(Ipv4Addr::new(198, 18, 0, 7)),
        aaaa: None,
        lips,
    })
    .unwrap();
    let cs = txn.finish().unwrap().unwrap();
    z.apply(&cs).unwrap();
    assert_eq!(
        answer_count(&z, "nas.home.fpn.", rtype::A),
        Some((1, 1)),
        "duplicate LIP folded"
    );
    assert_eq!(cs.diff.added.len(), 2);
    assert!(cs.diff.removed.is_empty());

    // replacing the address: the diff removes the old record
    let mut txn = Txn::new(&z);
    txn.api(&ApiChange::SetGe {
        name: n("nas.home.fpn."),
        ttl: 30,
        a: Some(Ipv4Addr::new(198, 18, 0, 8)),
        aaaa: None,
        lips: vec![],
    })
    .unwrap();
    let cs = txn.finish().unwrap().unwrap();
    assert_eq!(cs.diff.removed.len(), 2);
    assert_eq!(cs.diff.added.len(), 1);
    z.apply(&cs).unwrap();
    assert_eq!(answer_count(&z, "nas.home.fpn.", rtype::A), Some((1, 0)));

    let mut txn = Txn::new(&z);
    assert!(
        txn.api(&ApiChange::RemoveName {
            name: n("home.fpn.")
        })
        .is_err(),
        "not the apex"
    );
    assert!(
        txn.api(&ApiChange::RemoveName {
            name: n("x.other.")
        })
        .is_err()
    );
    txn.api(&ApiChange::RemoveName {
        name: n("nas.home.fpn."),
    })
    .unwrap();
    z.apply(&txn.finish().unwrap().unwrap()).unwrap();
    assert!(matches!(
        z.lookup(&key("nas.home.fpn."), rtype::A),
        Lookup::NxDomain
    ));
}

#[test]
fn rrset_size_is_limited() {
    let z = zone();
    let mut txn = Txn::new(&z);
    let many: Vec<Record> = (0..=update::MAX_RRSET)
        .map(|i| a("big.home.fpn.", &format!("10.0.{}.{}", i / 256, i % 256)))
        .collect();
    let r = txn.update(&update("home.fpn.", vec![], many), &admin());
    assert_eq!(r.map_err(|(rc, _)| rc), Err(Rcode::REFUSED));
    let long = TXT::new(vec!["x".repeat(250); 70]);
    let r = txn.update(
        &update(
            "home.fpn.",
            vec![],
            vec![Record::from_rdata(n("t.home.fpn."), 60, RData::TXT(long))],
        ),
        &admin(),
    );
    assert_eq!(
        r.map_err(|(rc, _)| rc),
        Err(Rcode::REFUSED),
        "over 16 KiB at one name"
    );
}
