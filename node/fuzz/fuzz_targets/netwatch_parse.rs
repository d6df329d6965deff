//! rtnetlink notifications (`fpn_node::netwatch::parse`): arbitrary bytes
//! never panic the parser, and every change it reads names an interface
//! the datagram carried.
#![no_main]

use fpn_node::netwatch::{NetChange, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for c in parse(data) {
        if let NetChange::Link { name, .. } = &c {
            assert!(name.len() <= data.len());
        }
        let _ = c.to_string();
    }
});
