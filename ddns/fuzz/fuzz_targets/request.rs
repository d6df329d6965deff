//! Arbitrary bytes into the request path (fast path, full parser, TSIG
//! parsing and checks) over UDP and TCP: never a panic; any response is a
//! response to the request's id. Updates that get through go on into the
//! zone logic.
#![no_main]

use std::sync::OnceLock;

use fpn_ddns::answer::{Ctx, Outcome, handle};
use fpn_ddns::keys::KeyRing;
use fpn_ddns::zone::{Txn, Zone};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

static STATE: OnceLock<(Zone, KeyRing)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (zone, keys) = STATE.get_or_init(|| (common::zone(), common::keys()));
    let mut out = Vec::new();
    for tcp in [false, true] {
        let ctx = Ctx {
            zone,
            keys,
            now: common::NOW,
            tcp,
        };
        match handle(&ctx, data, &mut out) {
            Outcome::Reply => {
                assert!(out.len() >= 12);
                assert_eq!(out[..2], data[..2]);
                assert!(out[2] & 0x80 != 0, "a response");
            }
            Outcome::Update(p) => {
                let mut txn = Txn::new(zone);
                let _ = txn.update(&p.msg, p.key.policy());
                let _ = txn.finish();
            }
            Outcome::Transfer(_) | Outcome::Drop => {}
        }
    }
});
