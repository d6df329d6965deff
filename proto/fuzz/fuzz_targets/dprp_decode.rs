//! Decoding arbitrary bytes as a DPRP message never panics; whatever decodes
//! re-encodes to exactly the same bytes (the codec is canonical, which the
//! transcript hashes rely on). The same bytes are then handed to a DPRP
//! endpoint as a datagram, which must refuse or answer them without panicking.
//! A second endpoint is under load (cookie threshold 0), so DDEs take the
//! COOKIE path, and has a negotiation of its own running, whose id a COOKIE
//! in the input is given, so the initiator's cookie handling is reached too.
//! The endpoint fronts a NAT-f host (192.168.1.10, group 1), so DDEs with a
//! NAT-f option reach the gateway's host, group and port checks.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Instant;

use fpn_proto::credential::Credential;
use fpn_proto::dprp::{Config, Endpoint, FrontedHost, Message, MessageType, Prefix, msg};
use fpn_proto::flow::{FlowId, protocol};
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
fn endpoint(now: Instant, cookie_threshold: usize) -> Endpoint {
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
    // It fronts a NAT-f host in the LAN its credential names, so NAT-f
    // DDEs reach the host, group and port checks (and the refusal codes).
    let lan = Prefix::network([192, 168, 1, 0].into(), 24).unwrap();
    let cred = Credential::issue_with_prefixes(&ca, 2, info, vec![lan], key.public(), 0, u64::MAX)
        .unwrap();
    let protected = vec![Prefix::host([198, 18, 0, 2].into())];
    let mut cfg = Config::new(key, cred, sim_ca(), protected);
    cfg.limits.cookie_threshold = cookie_threshold;
    let mut ep = Endpoint::new(cfg, fpn_proto::dprp::Entropy::Seeded([9; 32]), UNIX, now).unwrap();
    ep.set_group_key(GroupId(1), KeyVersion(1), GroupKey::from_bytes([1; 32]));
    ep.set_fronted_hosts(vec![FrontedHost {
        lip: [192, 168, 1, 10].into(),
        groups: vec![GroupId(1)],
    }]);
    ep
}

fuzz_target!(|data: &[u8]| {
    let peeked = msg::peek(data);
    if let Ok(m) = Message::decode(data) {
        assert_eq!(m.encode().unwrap(), data, "decode/encode not canonical");
        assert_eq!(peeked.unwrap(), (m.kind(), m.id()));
    }
    let now = Instant::now();
    let mut ep = endpoint(now, usize::MAX);
    let from: SocketAddr = "198.18.0.9:7717".parse().unwrap();
    let _ = ep.handle_datagram(from, data, now);
    // A second copy exercises the duplicate paths.
    let _ = ep.handle_datagram(from, data, now);
    // The same bytes intercepted on their way to another GE (a DDE in
    // transit, NAT-f ones included).
    let to: SocketAddr = "198.18.0.7:7717".parse().unwrap();
    let _ = ep.handle_transit_datagram(from, to, data, now);
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
    ep.handle_timeout(now + std::time::Duration::from_secs(60));
    assert_eq!(ep.negotiations(), 0);

    // Under load, with a negotiation of its own to take a COOKIE.
    let mut loaded = endpoint(now, 0);
    let flow = FlowId {
        src: [198, 18, 0, 2].into(),
        dst: [198, 18, 0, 9].into(),
        protocol: protocol::UDP,
        src_port: 1,
        dst_port: 2,
    };
    let own = loaded.initiate(flow, Vec::new(), now).unwrap();
    let mut data = data.to_vec();
    if msg::peek(&data).is_ok_and(|(t, _)| t == MessageType::Cookie) {
        data[2..10].copy_from_slice(&own.0.to_be_bytes());
    }
    let _ = loaded.handle_datagram(from, &data, now);
    let _ = loaded.handle_datagram(from, &data, now);
    while loaded.poll_transmit().is_some() {}
    while loaded.poll_event().is_some() {}
    loaded.handle_timeout(now + std::time::Duration::from_secs(60));
    loaded.handle_timeout(now + std::time::Duration::from_secs(120));
    assert_eq!(loaded.negotiations(), 0);
});
