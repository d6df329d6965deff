//! The update path past authentication: the input is taken as a DNS
//! message, signed with a configured key (the fuzzer cannot forge MACs),
//! and run through the request path, the RFC 2136 logic, the commit into
//! the zone, the storage encoding and the IXFR/AXFR encoders. Never a
//! panic; a committed zone keeps its invariants (exactly one SOA, serial
//! moved forward, stored form round-trips).
#![no_main]

use fpn_ddns::answer::{Ctx, Outcome, TransferRequest, handle};
use fpn_ddns::keys::TsigKey;
use fpn_ddns::zone::{Txn, serial_gt};
use fpn_ddns::{store, tsig, xfr};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // First byte: which key signs; the rest: the message.
    let Some((&which, msg)) = data.split_first() else {
        return;
    };
    if msg.len() < 12 {
        return;
    }
    let mut zone = common::zone();
    let keys = common::keys();
    let key: &TsigKey = keys
        .iter()
        .find(|k| (which & 1 == 0) == (k.name().to_ascii() == "admin."))
        .expect("key");
    let mut signed = msg.to_vec();
    signed[2] = (signed[2] & 0x87) | (5 << 3); // opcode UPDATE, QR clear
    let mac = tsig::sign_request(&mut signed, key, common::NOW);
    let ctx = Ctx {
        zone: &zone,
        keys: &keys,
        now: common::NOW,
        tcp: which & 2 != 0,
    };
    let mut out = Vec::new();
    let Outcome::Update(p) = handle(&ctx, &signed, &mut out) else {
        return;
    };
    let before = zone.serial();
    let mut txn = Txn::new(&zone);
    let ok = txn.update(&p.msg, p.key.policy()).is_ok();
    let Ok(cs) = txn.finish() else { return };
    let _ = fpn_ddns::answer::update_response(&p, fpn_ddns::wire::Rcode::NOERROR, common::NOW);
    let Some(cs) = cs else { return };
    assert!(ok);
    assert!(serial_gt(cs.serial, before));
    for (_, node) in &cs.nodes {
        if let Some(node) = node {
            let bytes = store::encode_node(node).expect("encode");
            assert_eq!(&store::decode_node(&bytes).expect("decode"), node);
        }
    }
    zone.apply(&cs).expect("a merged change applies");
    assert_eq!(zone.serial(), cs.serial);
    let req = TransferRequest {
        id: 1,
        question: b"\x04home\x03fpn\x00\x00\xfc\x00\x01".to_vec(),
        key: std::sync::Arc::new(key.clone()),
        request_mac: mac,
        ixfr_from: None,
    };
    let soa = zone.soa_record();
    xfr::axfr(&req, &soa, zone.snapshot(), common::NOW).expect("axfr");
    xfr::ixfr(&req, &soa, std::slice::from_ref(&cs.diff), common::NOW).expect("ixfr");
});
