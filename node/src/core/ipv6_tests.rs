//! IPv6 overlay flows in the simulator (design note 59): a GE's IPv6
//! overlay address is its IPv4 one inside the network's ULA /48, so the
//! same negotiation, keys and policy apply; TCP, UDP and echoes cross the
//! IPv4 native path as IPv4 packets (the application's ports or echo
//! identifier, PCCOM payload); refusals come back as ICMPv6.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use etherparse::PacketBuilder;
use fpn_proto::ge::Mode;
use fpn_proto::packet::Packet;
use fpn_proto::path::{Force, PathConfig};

use super::Command;
use super::sim::{CoreSim, LinkConfig};

fn overlay6(sim: &CoreSim, i: usize) -> Ipv6Addr {
    fpn_proto::overlay6::Overlay6::of_ca(&sim.ca_public()).address(sim.nodes[i].overlay)
}

/// An IPv6/UDP packet with a valid checksum.
pub(super) fn udp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn pair(seed: u64, b_mode: Mode, b_groups: &[u32]) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    sim.path = PathConfig {
        force: Force::Auto,
        ..PathConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, b_mode, b_groups);
    sim.introduce_all();
    (sim, a, b)
}

#[test]
fn an_ipv6_udp_flow_crosses_the_native_path_as_ipv4_packets_and_arrives_as_ipv6() {
    let (mut sim, a, b) = pair(91, Mode::Open, &[1]);
    sim.run_for(Duration::from_millis(500));
    let (a6, b6) = (overlay6(&sim, a), overlay6(&sim, b));
    assert_ne!(a6, b6);
    let marker = b"IPV6-MARKER-0123456789";
    for i in 0..3u16 {
        sim.send_packet(a, &udp6(a6, b6, 4000, 5000, marker));
        sim.run_for(Duration::from_millis(50));
        sim.send_packet(b, &udp6(b6, a6, 5000, 4000, marker));
        sim.run_for(Duration::from_millis(50));
        assert_eq!(sim.nodes[b].tun.len(), usize::from(i) + 1);
    }
    // Delivered unchanged in family and addresses, with the payload.
    for (to, src, dst) in [(b, a6, b6), (a, b6, a6)] {
        let got = sim.nodes[to].tun.last().unwrap();
        let p = Packet::parse(&got[..]).unwrap();
        let f = p.flow_id();
        assert_eq!((f.src, f.dst), (IpAddr::V6(src), IpAddr::V6(dst)));
        assert!(p.l4_checksum_ok());
        assert_eq!(p.payload(), marker);
    }
    // The peers' path is native and the flow took it: IPv4 packets between
    // the underlay addresses with the application's ports, the marker
    // sealed (a native packet is all there is: no outer encryption).
    let peer = &sim.nodes[a].core.snapshot(&[]).peers[0];
    assert_eq!(peer.carrier, "native");
    let (ua, ub) = (sim.nodes[a].underlay.ip(), sim.nodes[b].underlay.ip());
    let data: Vec<_> = sim
        .wire()
        .iter()
        .filter(|w| w.native)
        .filter_map(|w| Packet::parse(&w.payload[..]).ok())
        .filter(|p| p.flow_id().protocol == 17 && p.flow_id().dst_port != super::PROBE_PORT)
        .map(|p| (p.flow_id(), p.l4_checksum_ok(), p.payload().len()))
        .collect();
    assert!(data.len() >= 4, "{data:?}");
    for (f, csum, len) in &data {
        assert!(f.src.is_ipv4() && f.dst.is_ipv4(), "{f}");
        assert!([(ua, ub), (ub, ua)].contains(&(f.src, f.dst)), "{f}");
        assert!(
            [(4000, 5000), (5000, 4000)].contains(&(f.src_port, f.dst_port)),
            "{f}"
        );
        assert!(csum, "{f}");
        assert_eq!(*len, marker.len() + fpn_proto::pccom::TRAILER_LEN);
    }
    assert!(sim.counter(a, "native_out") >= 3 && sim.counter(b, "native_in") >= 3);
    assert!(sim.wire().iter().all(|w| !contains(&w.payload, marker)));
    // One negotiation for the flow, not one per packet.
    assert_eq!(sim.counter(a, "dprp_started"), 1);
}

#[test]
fn an_icmpv6_echo_crosses_the_native_path_as_an_ipv4_echo_and_arrives_unchanged() {
    let (mut sim, a, b) = pair(94, Mode::Open, &[1]);
    sim.run_for(Duration::from_millis(500));
    let (a6, b6) = (overlay6(&sim, a), overlay6(&sim, b));
    let echo = |src: Ipv6Addr, dst: Ipv6Addr, request: bool, seq: u16| {
        let mut out = Vec::new();
        let p = PacketBuilder::ipv6(src.octets(), dst.octets(), 64);
        let p = if request {
            p.icmpv6_echo_request(7, seq)
        } else {
            p.icmpv6_echo_reply(7, seq)
        };
        p.write(&mut out, b"ICMPV6-MARKER").unwrap();
        out
    };
    for seq in 1..=4u16 {
        let req = echo(a6, b6, true, seq);
        sim.send_packet(a, &req);
        // The first one waits for its negotiation: two round trips of
        // the simulated link, on the IP path.
        sim.run_for(Duration::from_millis(100));
        assert_eq!(sim.nodes[b].tun.last().map(Vec::as_slice), Some(&req[..]));
        let rep = echo(b6, a6, false, seq);
        sim.send_packet(b, &rep);
        sim.run_for(Duration::from_millis(50));
        assert_eq!(sim.nodes[a].tun.last().map(Vec::as_slice), Some(&rep[..]));
    }
    // On the wire: ICMP echoes over IPv4 between the underlay addresses,
    // with the echo's identifier, both ways; the marker nowhere.
    let under = |i: usize| sim.nodes[i].underlay.ip();
    let native: Vec<_> = sim
        .wire()
        .iter()
        .filter(|f| f.native)
        .filter_map(|f| Packet::parse(&f.payload[..]).ok().map(|p| p.flow_id()))
        .filter(|w| w.protocol == fpn_proto::flow::protocol::ICMP)
        .collect();
    for (from, to) in [(a, b), (b, a)] {
        assert!(
            native
                .iter()
                .any(|w| (w.src, w.dst, w.src_port) == (under(from), under(to), 7)),
            "no native echo {from} -> {to}: {native:?}"
        );
    }
    assert!(
        sim.wire()
            .iter()
            .all(|w| !contains(&w.payload, b"ICMPV6-MARKER"))
    );
    assert_eq!(sim.counter(a, "quic_ipv6"), 0);
}

#[test]
fn an_ipv6_flow_to_a_closed_peer_without_a_shared_group_gets_icmpv6_prohibited_at_once() {
    let (mut sim, a, c) = pair(92, Mode::Closed, &[2]);
    let (a6, c6) = (overlay6(&sim, a), overlay6(&sim, c));
    let pkt = udp6(a6, c6, 4000, 22, b"hello");
    sim.send_packet(a, &pkt);
    sim.drive();
    assert!(sim.nodes[c].tun.is_empty());
    let icmp = sim.nodes[a].tun.last().cloned().expect("an ICMPv6 error");
    let p = Packet::parse(&icmp[..]).unwrap();
    assert!(p.l4_checksum_ok());
    // Next header 58, type 1 (unreachable), code 1 (prohibited), from the
    // destination to the sender, quoting the packet.
    assert_eq!((icmp[6], icmp[40], icmp[41]), (58, 1, 1));
    assert_eq!(&icmp[8..24], &c6.octets());
    assert_eq!(&icmp[24..40], &a6.octets());
    assert_eq!(&icmp[48..88], &pkt[..40]);
    assert_eq!(sim.counter(a, "refused_flows"), 1);
}

#[test]
fn an_ipv6_address_outside_the_network_or_of_nobody_reaches_no_peer() {
    let (mut sim, a, b) = pair(93, Mode::Open, &[1]);
    let a6 = overlay6(&sim, a);
    let net = fpn_proto::overlay6::Overlay6::of_ca(&sim.ca_public());
    // A GE address of the network that nobody owns (asked of the
    // directory), and an address outside the /48 (nobody can own it).
    let nobody = net.address("100.64.0.77".parse().unwrap());
    sim.send_packet(a, &udp6(a6, nobody, 4000, 5000, b"x"));
    sim.send_packet(
        a,
        &udp6(a6, "2001:db8::1".parse().unwrap(), 4000, 5000, b"x"),
    );
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.counter(b, "dprp_responding"), 0);
    assert_eq!(sim.counter(a, "dprp_established"), 0);
    assert!(sim.counter(a, "no_route") >= 1);
    // A packet whose source is not this node's address never leaves.
    let started = sim.counter(a, "dprp_started");
    let b6 = overlay6(&sim, b);
    sim.send_packet(a, &udp6(b6, a6, 4000, 5000, b"x"));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.counter(a, "dprp_started"), started);
    assert_eq!(sim.counter(b, "dprp_responding"), 0);
}

#[test]
fn an_ipv6_flow_outlives_another_ges_address_change_and_moves_with_its_own() {
    let mut sim = CoreSim::new(95, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    let c = sim.add_node(3, Mode::Open, &[1]);
    sim.introduce_all();
    let (a6, b6) = (overlay6(&sim, a), overlay6(&sim, b));
    sim.send_packet(a, &udp6(a6, b6, 4000, 5000, b"one"));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[b].tun.len(), 1);
    let pit = |sim: &CoreSim| sim.nodes[a].core.pit().iter().count();
    assert_eq!(pit(&sim), 1);
    // Another GE's overlay address changes: the flows are checked against
    // their owners again (`unbind_flows`); the IPv6 one's owner is b, by
    // its embedded IPv4 address, and it stays.
    let mut rec = sim.record(c);
    rec.overlay = "100.64.0.33".parse().unwrap();
    sim.command(a, Command::Peer(rec));
    sim.run_for(Duration::from_millis(10));
    assert_eq!(pit(&sim), 1, "the IPv6 flow was dropped");
    sim.send_packet(a, &udp6(a6, b6, 4000, 5000, b"two"));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[b].tun.len(), 2);
    assert_eq!(sim.counter(a, "dprp_started"), 1);
    // b's own address handed to c: the flow no longer belongs to b.
    let mut rec = sim.record(c);
    rec.overlay = sim.nodes[b].overlay;
    sim.command(a, Command::Peer(rec));
    sim.run_for(Duration::from_millis(10));
    assert_eq!(pit(&sim), 0, "the IPv6 flow outlived its owner's address");
}
