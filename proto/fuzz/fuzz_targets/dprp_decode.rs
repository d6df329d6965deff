//! Decoding arbitrary bytes as a DPRP message never panics; whatever decodes
//! re-encodes to exactly the same bytes (the codec is canonical, which the
//! transcript hashes rely on). The same bytes are then handed to a DPRP
//! endpoint as a datagram, which must refuse or answer them without panicking.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Instant;

use fpn_proto::credential::Credential;
use fpn_proto::dprp::{Config, Endpoint, Message, Prefix, msg};
use fpn_proto::ge::{GeId, GeInfo, GeKind, GroupId, Mode};
use fpn_proto::keys::{GroupKey, KeyVersion, NodeKey};
use fpn_proto::sim::{LinkConfig, Sim};
use libfuzzer_sys::fuzz_target;

const UNIX: u64 = 1_800_000_000;

/// The CA of `Sim::new(31, ..)`, whose messages seed the corpus (see
/// docs/TESTING.md), so real credentials verify and DDEs reach the machines.
fn sim_ca() -> [u8; 32] {
    static CA: OnceLock<[u8; 32]> = OnceLock::new();
    *CA.get_or_init(|| Sim::new(31, LinkConfig::default()).ca_public())
}

/// A gateway GE (so DDEs in transit are taken too) protecting 198.18.0.2.
fn endpoint(now: Instant) -> Endpoint {
    let ca = NodeKey::from_seed(&[0xca; 32]);
    let key = NodeKey::from_seed(&[2; 32]);
    let info = GeInfo {
        id: GeId(2),
        name: "fuzz".into(),
        kind: GeKind::Gen,
        mode: Mode::Closed,
        groups: [GroupId(1)].into(),
        overlay: Ipv4Addr::new(100, 64, 0, 2),
    };
    let cred = Credential::issue(&ca, 2, info, key.public(), 0, u64::MAX).unwrap();
    let protected = vec![Prefix::host([198, 18, 0, 2].into())];
    let mut ep = Endpoint::new(
        Config::new(key, cred, sim_ca(), protected),
        [9; 32],
        UNIX,
        now,
    )
    .unwrap();
    ep.set_group_key(GroupId(1), KeyVersion(1), GroupKey::from_bytes([1; 32]));
    ep
}

fuzz_target!(|data: &[u8]| {
    let peeked = msg::peek(data);
    if let Ok(m) = Message::decode(data) {
        assert_eq!(m.encode().unwrap(), data, "decode/encode not canonical");
        assert_eq!(peeked.unwrap(), (m.kind(), m.id()));
    }
    let now = Instant::now();
    let mut ep = endpoint(now);
    let from: SocketAddr = "198.18.0.9:7717".parse().unwrap();
    let _ = ep.handle_datagram(from, data, now);
    // A second copy exercises the duplicate paths.
    let _ = ep.handle_datagram(from, data, now);
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
    ep.handle_timeout(now + std::time::Duration::from_secs(60));
    assert_eq!(ep.negotiations(), 0);
});
