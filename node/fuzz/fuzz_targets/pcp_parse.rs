//! PCP answers come from anything on the LAN: arbitrary bytes never panic
//! the parser or the check against a request, and what parses is a MAP
//! answer with its MAP body unless it is an error.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use fpn_node::portmap::pcp::{MapRequest, Nonce, Protocol, Response, ResultCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Response::parse(data) {
        assert_eq!(data[1], 0x81);
        assert!(r.map.is_some() || r.result != ResultCode::Success);
        let req = MapRequest {
            nonce: Nonce([7; 12]),
            protocol: Protocol::Udp,
            client: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
            internal_port: 7718,
            suggested: None,
            lifetime: 7200,
        };
        if let Ok(g) = req.check(&r) {
            assert!(g.lifetime > 0 && g.external.port() != 0);
        }
    }
});
