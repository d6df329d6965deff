//! NAT-PMP answers come from anything on the LAN: arbitrary bytes never
//! panic the parser, and a parsed map answer names the opcode it came in.
#![no_main]

use fpn_node::portmap::natpmp::{Protocol, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Response::Map { protocol, .. }) = Response::parse(data) {
        let op = data[1];
        assert_eq!(protocol == Protocol::Udp, op == 129);
    }
});
