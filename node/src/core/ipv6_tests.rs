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

pub(super) fn overlay6(sim: &CoreSim, i: usize) -> Ipv6Addr {
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

/// Two open GEs whose underlays are IPv6 only (note 63), as their drivers
/// say (`told`: what they say instead).
fn v6_underlay_pair(seed: u64, told: Option<super::Families>) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    sim.path = PathConfig {
        force: Force::Auto,
        ..PathConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    to_v6_underlay(&mut sim, &[a, b], told);
    (sim, a, b)
}

/// Moves `nodes` to IPv6 underlay addresses (told they have only that
/// family, or `told`) and introduces everyone.
pub(super) fn to_v6_underlay(sim: &mut CoreSim, nodes: &[usize], told: Option<super::Families>) {
    for &i in nodes {
        let port = sim.nodes[i].underlay.port();
        let last = u16::try_from(i + 1).unwrap_or(u16::MAX);
        let ip = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, last);
        sim.move_node(i, std::net::SocketAddr::new(IpAddr::V6(ip), port));
        let families = told.unwrap_or(super::Families::of(&[IpAddr::V6(ip)]));
        sim.underlay_families(i, families);
    }
    sim.introduce_all();
}

#[test]
fn on_ipv6_underlays_both_overlay_families_cross_natively_as_ipv6_packets() {
    let (mut sim, a, b) = v6_underlay_pair(96, None);
    sim.run_for(Duration::from_millis(500));
    let peer = &sim.nodes[a].core.snapshot(&[]).peers[0];
    assert_eq!(
        (peer.carrier.as_str(), peer.path.as_str()),
        ("native", "native")
    );
    let (a4, b4) = (sim.nodes[a].overlay, sim.nodes[b].overlay);
    let (a6, b6) = (overlay6(&sim, a), overlay6(&sim, b));
    let m4: &[u8] = b"V4-OVER-V6-MARKER-0123";
    let m6: &[u8] = b"V6-OVER-V6-MARKER-4567";
    let echo4 = |src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, request: bool, seq: u16| {
        let mut out = Vec::new();
        let p = PacketBuilder::ipv4(src.octets(), dst.octets(), 64);
        let p = if request {
            p.icmpv4_echo_request(9, seq)
        } else {
            p.icmpv4_echo_reply(9, seq)
        };
        p.write(&mut out, b"ECHO4-MARKER").unwrap();
        out
    };
    for i in 0..3u16 {
        sim.send_udp(a, b, 4000, 5000, m4);
        sim.send_packet(a, &udp6(a6, b6, 4001, 5001, m6));
        let req = echo4(a4, b4, true, i);
        sim.send_packet(a, &req);
        sim.run_for(Duration::from_millis(100));
        assert_eq!(sim.nodes[b].tun.last().map(Vec::as_slice), Some(&req[..]));
        sim.send_udp(b, a, 5000, 4000, m4);
        sim.send_packet(b, &udp6(b6, a6, 5001, 4001, m6));
        let rep = echo4(b4, a4, false, i);
        sim.send_packet(b, &rep);
        sim.run_for(Duration::from_millis(100));
        assert_eq!(sim.nodes[a].tun.last().map(Vec::as_slice), Some(&rep[..]));
    }
    // Delivered in their own family, addresses and payload.
    for (to, s4, d4, s6, d6) in [(b, a4, b4, a6, b6), (a, b4, a4, b6, a6)] {
        let got: Vec<_> = sim.nodes[to]
            .tun
            .iter()
            .filter_map(|p| {
                Packet::parse(&p[..])
                    .ok()
                    .map(|q| (q.flow_id(), q.payload().to_vec(), q.l4_checksum_ok()))
            })
            .collect();
        assert_eq!(got.len(), 9, "{got:?}");
        let v4 = got.iter().filter(|(f, m, ok)| {
            (f.src, f.dst) == (IpAddr::V4(s4), IpAddr::V4(d4)) && *ok && m == m4
        });
        let v6 = got.iter().filter(|(f, m, ok)| {
            (f.src, f.dst) == (IpAddr::V6(s6), IpAddr::V6(d6)) && *ok && m == m6
        });
        assert_eq!((v4.count(), v6.count()), (3, 3), "{got:?}");
    }
    // Every data packet took the native path as IPv6 between the underlay
    // addresses with the application's ports or echo id (an ICMP echo is
    // an ICMPv6 one there), valid checksums, the markers sealed; the
    // probes were IPv6 too. Nothing rode QUIC.
    let (ua, ub) = (sim.nodes[a].underlay.ip(), sim.nodes[b].underlay.ip());
    let native: Vec<_> = sim
        .wire()
        .iter()
        .filter(|w| w.native)
        .filter_map(|w| Packet::parse(&w.payload[..]).ok())
        .map(|p| (p.flow_id(), p.l4_checksum_ok()))
        .collect();
    assert!(!native.is_empty());
    for (f, ok) in &native {
        assert!([(ua, ub), (ub, ua)].contains(&(f.src, f.dst)), "{f}");
        assert!(*ok, "bad checksum: {f}");
    }
    let ports = |sp: u16, dp: u16, proto: u8| {
        native
            .iter()
            .filter(|(f, _)| {
                f.protocol == proto && [(sp, dp), (dp, sp)].contains(&(f.src_port, f.dst_port))
            })
            .count()
    };
    assert_eq!(ports(4000, 5000, 17), 6, "{native:?}");
    assert_eq!(ports(4001, 5001, 17), 6, "{native:?}");
    assert_eq!(
        ports(9, 9, fpn_proto::flow::protocol::ICMPV6),
        6,
        "{native:?}"
    );
    assert!(
        ports(super::PROBE_PORT, super::PROBE_PORT, 17) >= 2,
        "{native:?}"
    );
    for m in [m4, m6, b"ECHO4-MARKER"] {
        assert!(sim.wire().iter().all(|w| !contains(&w.payload, m)));
    }
    assert_eq!(sim.counter(a, "native_out"), 9);
    assert_eq!(sim.counter(b, "native_in"), 9);
}

#[test]
fn a_node_probes_a_peer_in_the_family_both_have_and_again_when_its_families_change() {
    // Both say their underlay is IPv4 only: the other's one address is
    // IPv6, so neither has a candidate in a family it holds.
    let v4_only = super::Families {
        v4: true,
        v6: false,
    };
    let (mut sim, a, _b) = v6_underlay_pair(97, Some(v4_only));
    sim.run_for(Duration::from_millis(500));
    let path = |sim: &CoreSim| sim.nodes[a].core.snapshot(&[]).peers[0].path.clone();
    assert_eq!(path(&sim), "quic (no native address)");
    // Its underlay gains IPv6 (a move): b is probed there at once.
    sim.underlay_families(a, super::Families { v4: true, v6: true });
    sim.run_for(Duration::from_millis(500));
    assert_eq!(path(&sim), "native");
    // And IPv4 again only where both ends have it: a dual-stack peer is
    // probed on IPv4 (unit check of the choice).
    let v4: std::net::SocketAddr = "198.18.0.2:7717".parse().unwrap();
    let v6: std::net::SocketAddr = "[fd00:18::2]:7717".parse().unwrap();
    let core = &mut sim.nodes[a].core;
    assert_eq!(core.native_family_v4(&[v6, v4]), Some(true));
    assert_eq!(core.native_family_v4(&[v6]), Some(false));
    core.paths.families = Some(super::Families {
        v4: false,
        v6: true,
    });
    assert_eq!(core.native_family_v4(&[v4, v6]), Some(false));
    // No family in common: no candidate at all (not the other family's).
    assert_eq!(core.native_family_v4(&[v4]), None);
}
