//! Hosts behind gateways over the IPv6 overlay (vin6.rs, design note 60):
//! a remote's IPv6 packets to a VIN's IPv6 address reach the gateway as
//! the IPv4 flow it serves, the answers come back as IPv6, refusals as
//! ICMPv6, and the two families of one five-tuple never merge.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use etherparse::PacketBuilder;
use fpn_proto::packet::Packet;
use fpn_proto::path::Force;

use super::ipv6_tests::udp6;
use super::natf_tests::{home, vin};
use super::sim::{CoreSim, udp_packet};

fn net6(sim: &CoreSim) -> fpn_proto::overlay6::Overlay6 {
    fpn_proto::overlay6::Overlay6::of_ca(&sim.ca_public())
}

fn echo6(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .icmpv6_echo_request(id, seq)
        .write(&mut out, b"ping6 payload")
        .unwrap();
    out
}

fn echo_reply4(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_reply(id, seq)
        .write(&mut out, b"ping6 payload")
        .unwrap();
    out
}

#[test]
fn an_ipv6_flow_to_a_vin_reaches_the_host_as_ipv4_and_its_answers_come_back_as_ipv6() {
    for (seed, force) in [(61, Force::Quic), (62, Force::Auto)] {
        let (mut sim, r, g) = home(seed, force);
        sim.run_for(Duration::from_millis(500));
        let nas = vin(&sim, r, "nas");
        let (ro, net6) = (sim.nodes[r].overlay, net6(&sim));
        let (ro6, nas6) = (net6.address(ro), net6.address(nas));
        for i in 0..3usize {
            sim.send_packet(r, &udp6(ro6, nas6, 4000, 5000, b"MARKER-vin6"));
            sim.run_for(Duration::from_millis(100));
            // The gateway's TUN gets the IPv4 flow its DNAT serves.
            let got = &sim.nodes[g].tun;
            assert_eq!(got.len(), i + 1, "{force:?}: gateway TUN");
            let p = Packet::parse(&got[i][..]).unwrap();
            assert!(p.ip_checksum_ok() && p.l4_checksum_ok());
            let f = p.flow_id();
            assert_eq!((f.src, f.dst), (IpAddr::V4(ro), IpAddr::V4(nas)));
            assert_eq!((f.src_port, f.dst_port), (4000, 5000));
            assert_eq!(p.payload(), b"MARKER-vin6");
            // The NAS's answer (conntrack's, into the gateway's TUN)
            // reaches the application as IPv6 from the VIN's address.
            sim.send_packet(g, &udp_packet(nas, ro, 5000, 4000, b"from the NAS"));
            sim.run_for(Duration::from_millis(100));
            let back = &sim.nodes[r].tun;
            assert_eq!(back.len(), i + 1, "{force:?}: remote TUN");
            let p = Packet::parse(&back[i][..]).unwrap();
            assert!(p.l4_checksum_ok(), "{force:?}");
            let f = p.flow_id();
            assert_eq!((f.src, f.dst), (IpAddr::V6(nas6), IpAddr::V6(ro6)));
            assert_eq!((f.src_port, f.dst_port), (5000, 4000));
            assert_eq!(p.payload(), b"from the NAS");
        }
        assert_eq!(
            sim.nodes[g].natf_pairs.get(&(ro, nas)),
            Some(&IpAddr::from([192, 168, 1, 10]))
        );
        // status: the flow is marked as sent to the VIN's IPv6 address on
        // the remote (not on the gateway, which never sees IPv6), and the
        // host lists both addresses.
        let st = |i: usize| sim.nodes[i].core.snapshot(&[]);
        let natf = |i: usize| st(i).flows[0].natf.clone().unwrap();
        assert!(natf(r).ipv6 && !natf(g).ipv6);
        let host = st(r).hosts.into_iter().find(|h| h.name == "nas").unwrap();
        assert_eq!(host.vin6, Some(nas6.to_string()));
        assert!(
            !sim.wire()
                .iter()
                .any(|f| f.payload.windows(11).any(|x| x == b"MARKER-vin6")),
            "{force:?}: plaintext on the wire"
        );
        if force == Force::Auto {
            assert!(sim.counter(r, "native_out") > 0, "nothing went natively");
        }
    }
}

#[test]
fn ping6_to_a_vin_is_an_ipv4_echo_at_the_gateway_and_an_icmpv6_reply_at_the_remote() {
    let (mut sim, r, g) = home(63, Force::Quic);
    let nas = vin(&sim, r, "nas");
    let (ro, net6) = (sim.nodes[r].overlay, net6(&sim));
    let (ro6, nas6) = (net6.address(ro), net6.address(nas));
    sim.send_packet(r, &echo6(ro6, nas6, 0x77, 1));
    sim.drive();
    let got = &sim.nodes[g].tun;
    assert_eq!(got.len(), 1);
    let p = Packet::parse(&got[0][..]).unwrap();
    assert_eq!(p.flow_id().dst, IpAddr::V4(nas));
    assert_eq!((got[0][9], got[0][20]), (1, 8), "an ICMP echo request");
    assert!(p.l4_checksum_ok());
    sim.send_packet(g, &echo_reply4(nas, ro, 0x77, 1));
    sim.drive();
    let back = &sim.nodes[r].tun;
    assert_eq!(back.len(), 1);
    let p = Packet::parse(&back[0][..]).unwrap();
    assert_eq!((back[0][6], back[0][40]), (58, 129), "an ICMPv6 echo reply");
    assert!(p.l4_checksum_ok());
    assert_eq!(p.flow_id().src, IpAddr::V6(nas6));
}

#[test]
fn an_ipv6_flow_to_a_host_outside_the_groups_is_refused_with_icmpv6() {
    let (mut sim, r, g) = home(64, Force::Quic);
    let printer = vin(&sim, r, "printer");
    let (ro, net6) = (sim.nodes[r].overlay, net6(&sim));
    let (ro6, p6) = (net6.address(ro), net6.address(printer));
    sim.send_packet(r, &udp6(ro6, p6, 4000, 80, b"print"));
    sim.drive();
    assert!(sim.nodes[g].tun.is_empty());
    // ICMPv6 destination unreachable, administratively prohibited (1/1),
    // to this node's IPv6 address, quoting the packet as it was sent.
    let icmp = &sim.nodes[r].tun;
    assert_eq!(icmp.len(), 1, "{icmp:?}");
    let m = &icmp[0];
    assert_eq!((m[0] >> 4, m[6], m[40], m[41]), (6, 58, 1, 1));
    assert_eq!(&m[24..40], &ro6.octets());
    assert_eq!(&m[48 + 8..48 + 24], &ro6.octets(), "quoted source");
    assert_eq!(&m[48 + 24..48 + 40], &p6.octets(), "quoted destination");
    assert!(Packet::parse(&m[..]).unwrap().l4_checksum_ok());
    assert_eq!(sim.counter(r, "refused_flows"), 1);
}

#[test]
fn one_five_tuple_in_both_families_does_not_merge_into_one_flow() {
    let (mut sim, r, g) = home(65, Force::Quic);
    let nas = vin(&sim, r, "nas");
    let (ro, net6) = (sim.nodes[r].overlay, net6(&sim));
    let (ro6, nas6) = (net6.address(ro), net6.address(nas));
    sim.send_packet(r, &udp_packet(ro, nas, 4000, 5000, b"v4 first"));
    sim.drive();
    assert_eq!(sim.nodes[g].tun.len(), 1);
    let drops = sim.counter(r, "policy_drops");
    sim.send_packet(r, &udp6(ro6, nas6, 4000, 5000, b"v6 same ports"));
    sim.drive();
    assert_eq!(
        sim.nodes[g].tun.len(),
        1,
        "the IPv6 packet joined the IPv4 flow"
    );
    assert_eq!(sim.counter(r, "policy_drops"), drops + 1);
    // Another port is another flow, and works.
    sim.send_packet(r, &udp6(ro6, nas6, 4001, 5000, b"v6 own ports"));
    sim.drive();
    assert_eq!(sim.nodes[g].tun.len(), 2);
    // And the IPv4 packets of that five-tuple are refused while it lives.
    sim.send_packet(r, &udp_packet(ro, nas, 4001, 5000, b"v4 late"));
    sim.drive();
    assert_eq!(sim.nodes[g].tun.len(), 2);
    assert_eq!(sim.counter(r, "policy_drops"), drops + 2);
}
