//! The real-address plane in the simulator (issue 11, part 2): cores whose
//! credentials name real addresses (a GES's own, a GEA's server) negotiate
//! and protect flows between those addresses, pass plain ones onto the wire
//! as they are, and refuse what the rules refuse. The paper's network with
//! real binaries is overlay-tests/tests/node_paper.rs.

use std::net::{IpAddr, Ipv4Addr};

use fpn_proto::dprp::Prefix;
use fpn_proto::ge::{GeKind, Mode};
use fpn_proto::packet::Packet;

use super::sim::{CoreSim, LinkConfig, udp_packet};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Node `id`'s real address in the sim: its underlay address.
fn real(id: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, id)
}

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 10);

fn host(a: Ipv4Addr) -> Prefix {
    Prefix::host(IpAddr::V4(a))
}

/// The paper's GES1 OP {1}, GES2 OP {1,2}, GES3 OP {3} on their real
/// addresses, and the GEA CL {2,3} in front of the server.
fn paper(seed: u64) -> (CoreSim, [usize; 4]) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    let g1 = sim.add_ge(1, GeKind::Ges, Mode::Open, &[1], vec![host(real(1))]);
    let g2 = sim.add_ge(2, GeKind::Ges, Mode::Open, &[1, 2], vec![host(real(2))]);
    let g3 = sim.add_ge(3, GeKind::Ges, Mode::Open, &[3], vec![host(real(3))]);
    let gea = sim.add_ge(5, GeKind::Gea, Mode::Closed, &[2, 3], vec![host(SERVER)]);
    sim.introduce_all();
    (sim, [g1, g2, g3, gea])
}

#[test]
fn a_flow_between_real_addresses_is_protected_and_arrives_with_those_addresses() {
    let (mut sim, [_, g2, _, gea]) = paper(71);
    let pkt = udp_packet(real(2), SERVER, 4000, 9100, b"MARKER-real-ges2-server");
    sim.send_packet(g2, &pkt);
    sim.drive();
    // The GEA opened it for the server: the packet the host sent, its
    // addresses untouched.
    let got = sim.nodes[gea].tun.last().expect("delivered at the GEA");
    let p = Packet::parse(&got[..]).unwrap();
    let flow = p.flow_id();
    assert_eq!(
        (flow.src, flow.dst),
        (IpAddr::V4(real(2)), IpAddr::V4(SERVER))
    );
    assert!(contains(got, b"MARKER-real-ges2-server"));
    assert!(
        !sim.wire()
            .iter()
            .any(|f| contains(&f.payload, b"MARKER-real-ges2-server")),
        "the marker crossed the wire in the clear"
    );
    let st = &sim.nodes[g2].core.snapshot(&[]).flows;
    assert!(
        st.iter()
            .any(|f| f.dst == SERVER.to_string() && f.action == "encrypt"),
        "{st:?}"
    );
}

#[test]
fn a_plain_flow_between_real_addresses_goes_on_the_wire_as_it_is() {
    let (mut sim, [g1, ..]) = paper(72);
    let pkt = udp_packet(real(1), real(3), 4001, 9100, b"MARKER-real-plain");
    sim.send_packet(g1, &pkt);
    sim.drive();
    // Neither GE opens or wraps it: it leaves node 1 as the raw packet
    // (the host's kernel at the other end takes it), never in a QUIC
    // frame, whose content would hide the plain flow from the network.
    let carried: Vec<bool> = sim
        .wire()
        .iter()
        .filter(|f| contains(&f.payload, b"MARKER-real-plain"))
        .map(|f| f.native)
        .collect();
    assert_eq!(carried, vec![true], "once, natively, in plain");
    let st = &sim.nodes[g1].core.snapshot(&[]).flows;
    assert!(
        st.iter()
            .any(|f| f.dst == real(3).to_string() && f.action == "plain"),
        "{st:?}"
    );
}

#[test]
fn a_real_address_flow_the_rules_refuse_is_refused_fast_at_the_sender() {
    let (mut sim, [g1, _, _, gea]) = paper(73);
    let pkt = udp_packet(real(1), SERVER, 4002, 9100, b"MARKER-refused");
    sim.send_packet(g1, &pkt);
    sim.drive();
    assert!(
        sim.nodes[gea].tun.is_empty(),
        "the GEA (CL, no shared group) let it through"
    );
    // The host is told (ICMP administratively prohibited into its TUN),
    // about its own real-address packet.
    let icmp = sim.nodes[g1]
        .tun
        .last()
        .expect("an ICMP error for the host");
    assert_eq!(icmp[9], 1, "ICMP");
    assert_eq!(
        &icmp[16..20],
        &real(1).octets(),
        "to the sender's real address"
    );
    assert!(
        !sim.wire()
            .iter()
            .any(|f| contains(&f.payload, b"MARKER-refused"))
    );
}
