//! The native receive path's packet parsing (`fpn_node::native::packet`):
//! what the receive ring hands over comes from the network, so arbitrary
//! bytes never panic `FiveTuple::parse`, the checksum check or the test
//! packets' sequence reader, and a parsed five-tuple is of one family, with
//! a protocol of that family.
#![no_main]

use fpn_node::native::packet::{l4_checksum_ok, packet_seq};
use fpn_node::native::{FiveTuple, L4Proto};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(f) = FiveTuple::parse(data) {
        assert_eq!(f.src.is_ipv6(), f.dst.is_ipv6());
        assert_eq!(f.src.is_ipv6(), data[0] >> 4 == 6);
        match f.proto {
            L4Proto::Icmp => assert!(f.src.is_ipv4()),
            L4Proto::Icmpv6 => assert!(f.src.is_ipv6()),
            L4Proto::Tcp | L4Proto::Udp => {}
        }
        assert_eq!(f.reversed().reversed(), f);
        let _ = f.to_string();
    }
    let _ = l4_checksum_ok(data);
    let _ = packet_seq(data);
});
