//! The request path on crafted and arbitrary input, checked by parsing the
//! responses with hickory-proto.

use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, RData, Record, RecordType, TSigner};
use proptest::prelude::*;

use super::*;
use crate::keys::{Algorithm, KeyPolicy};
use crate::lip::lip_rdata;
use crate::zone::{ApiChange, Txn};

const SECRET: [u8; 32] = [9; 32];
const NOW: u64 = 1_800_000_000;

fn n(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn zone() -> Zone {
    let soa = SOA::new(
        n("ns1.home.fpn."),
        n("hostmaster.home.fpn."),
        7,
        3600,
        600,
        86400,
        60,
    );
    let mut z = Zone::new_empty(&n("home.fpn."), soa, 3600, &[n("ns1.home.fpn.")]).unwrap();
    let mut txn = Txn::new(&z);
    txn.api(&ApiChange::SetGe {
        name: n("nas.home.fpn."),
        ttl: 60,
        a: Some("198.18.0.7".parse().unwrap()),
        aaaa: None,
        lips: vec!["192.168.1.10".parse().unwrap()],
    })
    .unwrap();
    let big: Vec<RData> = (0..60)
        .map(|i| {
            RData::A(
                format!("10.0.0.{i}")
                    .parse::<std::net::Ipv4Addr>()
                    .unwrap()
                    .into(),
            )
        })
        .collect();
    txn.api(&ApiChange::SetRrset {
        name: n("big.home.fpn."),
        rtype: rtype::A,
        ttl: 60,
        rdatas: big,
    })
    .unwrap();
    let cs = txn.finish().unwrap().unwrap();
    z.apply(&cs).unwrap();
    z
}

fn keys(policy: KeyPolicy) -> KeyRing {
    let mut k = KeyRing::default();
    k.insert(TsigKey::new(
        n("k."),
        Algorithm::HmacSha256,
        SECRET.to_vec(),
        policy,
    ));
    k
}

fn ctx<'a>(z: &'a Zone, k: &'a KeyRing, tcp: bool) -> Ctx<'a> {
    Ctx {
        zone: z,
        keys: k,
        now: NOW,
        tcp,
    }
}

fn query(name: &str, t: RecordType, edns: bool) -> Message {
    let mut m = Message::new(0x1111, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.metadata.recursion_desired = true;
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m
}

fn signed(mut m: Message, secret: &[u8]) -> Vec<u8> {
    let signer = TSigner::new(secret.to_vec(), TsigAlgorithm::HmacSha256, n("k."), 300).unwrap();
    m.finalize(&signer, NOW).unwrap();
    m.to_vec().unwrap()
}

fn run(c: &Ctx<'_>, bytes: &[u8]) -> (Outcome, Vec<u8>) {
    let mut out = Vec::new();
    let o = handle(c, bytes, &mut out);
    (o, out)
}

fn reply(c: &Ctx<'_>, bytes: &[u8]) -> Message {
    let (o, out) = run(c, bytes);
    assert!(matches!(o, Outcome::Reply), "{o:?}");
    Message::from_vec(&out).unwrap()
}

#[test]
fn fast_path_answers_with_lip_and_echoes_the_question() {
    let z = zone();
    let k = KeyRing::default();
    for edns in [false, true] {
        let q = query("NaS.home.fpn.", RecordType::A, edns);
        let r = reply(&ctx(&z, &k, false), &q.to_vec().unwrap());
        assert_eq!(r.metadata.id, 0x1111);
        assert!(
            r.metadata.authoritative
                && r.metadata.recursion_desired
                && !r.metadata.recursion_available
        );
        assert_eq!(
            r.queries[0].name().to_ascii(),
            "NaS.home.fpn.",
            "case echoed"
        );
        assert_eq!(r.answers.len(), 1);
        assert_eq!(
            r.answers[0].data,
            RData::A("198.18.0.7".parse::<std::net::Ipv4Addr>().unwrap().into())
        );
        assert_eq!(r.additionals.len(), 1);
        assert_eq!(
            r.additionals[0].data,
            lip_rdata("192.168.1.10".parse().unwrap())
        );
        assert_eq!(r.edns.is_some(), edns);
    }
}

#[test]
fn negative_answers_carry_the_soa_and_foreign_names_are_refused() {
    let z = zone();
    let k = KeyRing::default();
    let c = ctx(&z, &k, false);
    let r = reply(
        &c,
        &query("nope.home.fpn.", RecordType::A, false)
            .to_vec()
            .unwrap(),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(r.authorities.len(), 1);
    assert_eq!(r.authorities[0].name, n("home.fpn."));
    assert_eq!(
        r.authorities[0].ttl, 60,
        "negative TTL = min(SOA TTL, minimum)"
    );
    let r = reply(
        &c,
        &query("nas.home.fpn.", RecordType::TXT, true)
            .to_vec()
            .unwrap(),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));
    let r = reply(
        &c,
        &query("example.com.", RecordType::A, false)
            .to_vec()
            .unwrap(),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.authoritative);
}

#[test]
fn large_answers_are_truncated_over_udp_only() {
    let z = zone();
    let k = KeyRing::default();
    let q = query("big.home.fpn.", RecordType::A, false)
        .to_vec()
        .unwrap();
    let r = reply(&ctx(&z, &k, false), &q);
    assert!(r.metadata.truncation);
    assert!(r.answers.is_empty());
    let r = reply(&ctx(&z, &k, true), &q);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 60);
    // EDNS raises the UDP limit
    let r = reply(
        &ctx(&z, &k, false),
        &query("big.home.fpn.", RecordType::A, true)
            .to_vec()
            .unwrap(),
    );
    assert!(!r.metadata.truncation);
}

#[test]
fn bad_requests_get_formerr_responses_are_dropped() {
    let z = zone();
    let k = KeyRing::default();
    let c = ctx(&z, &k, false);
    let mut q = query("nas.home.fpn.", RecordType::A, false)
        .to_vec()
        .unwrap();
    let mut bad = q.clone();
    bad.truncate(bad.len() - 3);
    let (o, out) = run(&c, &bad);
    assert!(matches!(o, Outcome::Reply));
    assert_eq!(out[3] & 0x0f, 1, "FORMERR");
    assert!(matches!(run(&c, &q[..5]).0, Outcome::Drop));
    q[2] |= 0x80;
    assert!(
        matches!(run(&c, &q).0, Outcome::Drop),
        "never answer a response"
    );
    // a compression loop in the question
    let mut looped = q.clone();
    looped[2] &= 0x7f;
    looped.truncate(12);
    looped.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let (o, out) = run(&c, &looped);
    assert!(matches!(o, Outcome::Reply));
    assert_eq!(out[3] & 0x0f, 1);
}

#[test]
fn edns_version_and_opcodes() {
    let z = zone();
    let k = KeyRing::default();
    let c = ctx(&z, &k, false);
    let mut q = query("nas.home.fpn.", RecordType::A, true);
    q.edns.as_mut().unwrap().set_version(1);
    let r = reply(&c, &q.to_vec().unwrap());
    assert_eq!(u16::from(r.metadata.response_code), 16, "BADVERS");
    let mut notify = Message::new(5, MessageType::Query, OpCode::Notify);
    notify.add_query(Query::query(n("home.fpn."), RecordType::SOA));
    assert_eq!(
        reply(&c, &notify.to_vec().unwrap()).metadata.response_code,
        ResponseCode::Refused
    );
    let mut status = Message::new(5, MessageType::Query, OpCode::Status);
    status.add_query(Query::query(n("home.fpn."), RecordType::SOA));
    assert_eq!(
        reply(&c, &status.to_vec().unwrap()).metadata.response_code,
        ResponseCode::NotImp
    );
}

fn update_msg() -> Message {
    let mut m = Message::new(0x2222, MessageType::Query, OpCode::Update);
    m.add_query(Query::query(n("home.fpn."), RecordType::SOA));
    m.add_authority(Record::from_rdata(
        n("x.home.fpn."),
        60,
        RData::A("198.18.0.1".parse::<std::net::Ipv4Addr>().unwrap().into()),
    ));
    m
}

#[test]
fn updates_need_a_valid_signature_and_the_update_permission() {
    let z = zone();
    let admin = keys(KeyPolicy::admin(&n("home.fpn.")));
    let c = ctx(&z, &admin, false);
    // unsigned: REFUSED
    let r = reply(&c, &update_msg().to_vec().unwrap());
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    // wrong secret: NOTAUTH, unsigned TSIG with BADSIG
    let (_, out) = run(&c, &signed(update_msg(), &[1; 32]));
    assert_eq!(out[3] & 0x0f, 9);
    let rec = tsig::find(&out).unwrap().unwrap();
    assert_eq!((rec.error, rec.mac.len()), (tsig::BADSIG, 0));
    // unknown key: BADKEY
    let (_, out) = run(
        &ctx(&z, &KeyRing::default(), false),
        &signed(update_msg(), &SECRET),
    );
    assert_eq!(tsig::find(&out).unwrap().unwrap().error, tsig::BADKEY);
    // stale: BADTIME, signed, with our clock
    let stale = Ctx {
        now: NOW + 1000,
        ..c
    };
    let (_, out) = run(&stale, &signed(update_msg(), &SECRET));
    let rec = tsig::find(&out).unwrap().unwrap();
    assert_eq!(rec.error, tsig::BADTIME);
    assert_eq!(rec.other, (NOW + 1000).to_be_bytes()[2..].to_vec());
    // good: handed to the commit thread
    assert!(matches!(
        run(&c, &signed(update_msg(), &SECRET)).0,
        Outcome::Update(_)
    ));
    // a transfer-only key cannot update
    let xfer = keys(KeyPolicy {
        update: vec![],
        transfer: true,
    });
    let (_, out) = run(&ctx(&z, &xfer, false), &signed(update_msg(), &SECRET));
    let r = Message::from_vec(&out).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(r.signature.is_some(), "signed requests get signed answers");
}

#[test]
fn update_answers_are_signed_for_the_client() {
    let z = zone();
    let admin = keys(KeyPolicy::admin(&n("home.fpn.")));
    let req = signed(update_msg(), &SECRET);
    let Outcome::Update(p) = run(&ctx(&z, &admin, false), &req).0 else {
        panic!("not an update")
    };
    let resp = update_response(&p, Rcode::NXRRSET, NOW);
    let key = admin.get(&n("k.")).unwrap();
    let mac = tsig::find(&req).unwrap().unwrap().mac;
    tsig::verify_response(key, &resp, &mac).unwrap();
    let m = Message::from_vec(&resp).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXRRSet);
    assert_eq!(m.metadata.op_code, OpCode::Update);
}

#[test]
fn transfers_need_tcp_a_signature_and_the_transfer_permission() {
    let z = zone();
    let axfr = || query("home.fpn.", RecordType::AXFR, false);
    let xfer = keys(KeyPolicy {
        update: vec![],
        transfer: true,
    });
    let upd = keys(KeyPolicy::admin(&n("home.fpn.")));
    let upd_only = keys(KeyPolicy {
        update: vec![n("home.fpn.")],
        transfer: false,
    });
    assert_eq!(
        reply(&ctx(&z, &xfer, true), &axfr().to_vec().unwrap())
            .metadata
            .response_code,
        ResponseCode::Refused
    );
    let (_, out) = run(&ctx(&z, &upd_only, true), &signed(axfr(), &SECRET));
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
    let (_, out) = run(&ctx(&z, &xfer, false), &signed(axfr(), &SECRET));
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::NotImp
    );
    let Outcome::Transfer(req) = run(&ctx(&z, &upd, true), &signed(axfr(), &SECRET)).0 else {
        panic!("no transfer")
    };
    // the whole zone, SOA first and last, each message signed and chained
    let msgs = crate::xfr::axfr(&req, &z.soa_record(), z.snapshot(), NOW).unwrap();
    let key = upd.get(&n("k.")).unwrap();
    let mut mac = req.request_mac.clone();
    let mut records = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let rec = if i == 0 {
            tsig::verify_response(key, m, &mac)
        } else {
            tsig::verify_next(key, m, &mac)
        };
        mac = rec.unwrap().mac;
        records.extend(Message::from_vec(m).unwrap().answers);
    }
    assert_eq!(
        records.first().map(Record::record_type),
        Some(RecordType::SOA)
    );
    assert_eq!(
        records.last().map(Record::record_type),
        Some(RecordType::SOA)
    );
    assert_eq!(
        records.len(),
        2 + 1 + 2 + 60,
        "SOA, NS, nas A + LIP, 60 A, SOA"
    );
}

#[test]
fn a_large_transfer_spans_several_signed_messages() {
    let mut z = zone();
    let mut txn = Txn::new(&z);
    for i in 0..2000 {
        txn.api(&ApiChange::SetGe {
            name: n(&format!("host{i}.home.fpn.")),
            ttl: 60,
            a: Some(std::net::Ipv4Addr::from(0xc612_0000 + i)),
            aaaa: None,
            lips: vec![],
        })
        .unwrap();
    }
    z.apply(&txn.finish().unwrap().unwrap()).unwrap();
    let upd = keys(KeyPolicy::admin(&n("home.fpn.")));
    let Outcome::Transfer(req) = run(
        &ctx(&z, &upd, true),
        &signed(query("home.fpn.", RecordType::AXFR, false), &SECRET),
    )
    .0
    else {
        panic!("no transfer")
    };
    let msgs = crate::xfr::axfr(&req, &z.soa_record(), z.snapshot(), NOW).unwrap();
    assert!(msgs.len() > 2);
    let key = upd.get(&n("k.")).unwrap();
    let mut mac = req.request_mac.clone();
    let mut count = 0;
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.len() <= crate::xfr::MAX_MESSAGE + 200);
        let rec = if i == 0 {
            tsig::verify_response(key, m, &mac)
        } else {
            tsig::verify_next(key, m, &mac)
        };
        mac = rec.unwrap().mac;
        count += Message::from_vec(m).unwrap().answers.len();
    }
    assert_eq!(
        count,
        2 + 1 + 2 + 60 + 2000,
        "SOA, NS, nas A + LIP, big, hosts, SOA"
    );
}

#[test]
fn refusal_logs_are_rate_limited() {
    let l = LogLimiter::new(3);
    let first: Vec<_> = (0..5).map(|_| l.allow(100)).collect();
    assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
    assert_eq!(
        l.allow(101),
        Some(2),
        "the next second reports what was suppressed"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic; whatever is sent back is a well-formed
    /// response to the request's id.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), tcp in any::<bool>()) {
        let z = zone();
        let k = keys(KeyPolicy::admin(&n("home.fpn.")));
        let (o, out) = run(&ctx(&z, &k, tcp), &bytes);
        if matches!(o, Outcome::Reply) {
            prop_assert!(out.len() >= 12);
            prop_assert_eq!(&out[..2], &bytes[..2]);
            prop_assert!(out[2] & 0x80 != 0);
        }
    }

    /// Mutations of valid requests (signed update, queries) never panic.
    #[test]
    fn mutated_requests_never_panic(flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8), which in 0usize..4, cut in any::<u16>()) {
        let z = zone();
        let k = keys(KeyPolicy::admin(&n("home.fpn.")));
        let base = match which {
            0 => signed(update_msg(), &SECRET),
            1 => query("nas.home.fpn.", RecordType::A, true).to_vec().unwrap(),
            2 => signed(query("home.fpn.", RecordType::AXFR, false), &SECRET),
            _ => signed(query("home.fpn.", RecordType::IXFR, false), &SECRET),
        };
        let mut m = base.clone();
        for (pos, val) in flips {
            let i = usize::from(pos) % m.len();
            m[i] ^= val;
        }
        m.truncate(usize::from(cut) % (m.len() + 1));
        let _ = run(&ctx(&z, &k, true), &m);
        let _ = run(&ctx(&z, &k, false), &m);
    }
}
