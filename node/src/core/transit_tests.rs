//! A gateway on the path in the simulator (issue 11, part 2): a GES in a
//! GEN's LAN negotiates with a GES outside; the GEN's kernel hands it their
//! DDE (the sim's `via`), the GEN joins the negotiation and relays, passes
//! or drops the flow. The lab test with real binaries is
//! overlay-tests/tests/node_onpath.rs.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use fpn_proto::dprp::Prefix;
use fpn_proto::ge::{GeKind, Mode};
use fpn_proto::packet::Packet;
use fpn_proto::path::PathConfig;

use super::sim::{CoreSim, LinkConfig, udp_packet};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn real(id: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, id)
}

fn host(a: Ipv4Addr) -> Prefix {
    Prefix::host(IpAddr::V4(a))
}

/// A closed GEN {9} in front of a terminal, with GES `inner` OP {1} in its
/// LAN; `outer` OP {1} and `stranger` OP {2} outside.
fn lan(seed: u64) -> (CoreSim, [usize; 4]) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    // As nodes run by default: native once probes answer.
    sim.path = PathConfig::default();
    let gw = sim.add_gateway(10, Mode::Closed, &[9], host(Ipv4Addr::new(192, 168, 1, 10)));
    let inner = sim.add_ge(11, GeKind::Ges, Mode::Open, &[1], vec![host(real(11))]);
    let outer = sim.add_ge(12, GeKind::Ges, Mode::Open, &[1], vec![host(real(12))]);
    let stranger = sim.add_ge(13, GeKind::Ges, Mode::Open, &[2], vec![host(real(13))]);
    sim.nodes[inner].via = Some(gw);
    sim.introduce_all();
    // The paths go native first (DPRP takes the IP path then, where the
    // gateway sees it).
    sim.run_for(Duration::from_secs(2));
    (sim, [gw, inner, outer, stranger])
}

fn transit_flows(sim: &CoreSim, gw: usize) -> Vec<crate::status::FlowStatus> {
    sim.nodes[gw]
        .core
        .snapshot(&[])
        .flows
        .into_iter()
        .filter(|f| f.carrier == "transit")
        .collect()
}

#[test]
fn a_gateway_on_the_path_joins_and_relays_in_both_directions() {
    let (mut sim, [gw, inner, outer, _]) = lan(81);
    let out = udp_packet(real(11), real(12), 4000, 9100, b"MARKER-out");
    sim.send_packet(inner, &out);
    sim.drive();
    let back = udp_packet(real(12), real(11), 4001, 9101, b"MARKER-back");
    sim.send_packet(outer, &back);
    sim.drive();
    assert!(
        sim.nodes[outer]
            .tun
            .iter()
            .any(|p| contains(p, b"MARKER-out"))
    );
    assert!(
        sim.nodes[inner]
            .tun
            .iter()
            .any(|p| contains(p, b"MARKER-back"))
    );
    assert!(
        !sim.wire()
            .iter()
            .any(|f| contains(&f.payload, b"MARKER-out") || contains(&f.payload, b"MARKER-back")),
        "a marker crossed the wire in the clear"
    );
    // The gateway took both DDEs from its kernel and relays both flows;
    // it decrypted nothing.
    assert_eq!(sim.counter(gw, "dprp_transit_in"), 2);
    assert_eq!(sim.counter(gw, "transit_relayed"), 2);
    assert!(sim.nodes[gw].tun.is_empty());
    let t = transit_flows(&sim, gw);
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(t.iter().all(|f| f.action == "relay"), "{t:?}");
    let initiators: Vec<Option<u32>> = t.iter().map(|f| f.peer).collect();
    assert!(initiators.contains(&Some(11)) && initiators.contains(&Some(12)));
    // The ends negotiated with each other, the gateway's hop included
    // (its signature is in the transcript both checked).
    let st = sim.nodes[inner].core.snapshot(&[]).flows;
    assert!(
        st.iter()
            .any(|f| f.dst == real(12).to_string() && f.action == "encrypt" && f.peer == Some(12)),
        "{st:?}"
    );
}

#[test]
fn a_closed_gateway_drops_a_flow_its_rules_refuse_and_stops_it_on_the_path() {
    let (mut sim, [gw, inner, _, stranger]) = lan(82);
    // Both ends open and no shared group: plain for them, but the closed
    // gateway between them drops it.
    let p = udp_packet(real(11), real(13), 4002, 9102, b"MARKER-refused");
    sim.send_packet(inner, &p);
    sim.drive();
    assert!(sim.nodes[stranger].tun.is_empty());
    let icmp = sim.nodes[inner].tun.last().expect("ICMP to the sender");
    assert_eq!(icmp[9], 1, "ICMP");
    assert_eq!(sim.counter(gw, "transit_dropped"), 1);
    let flow = Packet::parse(&p[..]).unwrap().flow_id();
    assert!(sim.nodes[gw].transit_drops.contains(&flow));
    // An end that ignores the refusal gets nothing through the gateway,
    // in either direction.
    sim.send_raw(inner, p.clone());
    let reply = udp_packet(real(13), real(11), 9102, 4002, b"MARKER-reply");
    sim.send_raw(stranger, reply);
    sim.drive();
    assert_eq!(sim.nodes[gw].transit_dropped, 2);
    assert!(
        !sim.nodes[stranger]
            .tun
            .iter()
            .any(|p| contains(p, b"MARKER-refused"))
            && !sim.nodes[inner]
                .tun
                .iter()
                .any(|p| contains(p, b"MARKER-reply"))
    );
    // The drop lasts its time, then goes.
    sim.run_for(Duration::from_secs(600));
    assert!(sim.nodes[gw].transit_drops.is_empty());
    assert_eq!(sim.counter(gw, "transit_entries"), 0);
}

#[test]
fn without_the_gateway_on_the_path_the_same_flow_is_plain() {
    // The control of the test above: the refusal is the gateway's.
    let (mut sim, [gw, inner, _, _]) = lan(83);
    sim.nodes[inner].via = None;
    let p = udp_packet(real(11), real(13), 4003, 9103, b"MARKER-plain");
    sim.send_packet(inner, &p);
    sim.drive();
    assert_eq!(sim.counter(gw, "dprp_transit_in"), 0);
    let st = sim.nodes[inner].core.snapshot(&[]).flows;
    assert!(
        st.iter()
            .any(|f| f.dst == real(13).to_string() && f.action == "plain"),
        "{st:?}"
    );
}

#[test]
fn an_open_gateway_on_the_path_passes_a_plain_flow() {
    let mut sim = CoreSim::new(84, LinkConfig::default());
    sim.path = PathConfig::default();
    let gw = sim.add_gateway(10, Mode::Open, &[9], host(Ipv4Addr::new(192, 168, 1, 10)));
    let inner = sim.add_ge(11, GeKind::Ges, Mode::Open, &[1], vec![host(real(11))]);
    sim.add_ge(13, GeKind::Ges, Mode::Open, &[2], vec![host(real(13))]);
    sim.nodes[inner].via = Some(gw);
    sim.introduce_all();
    sim.run_for(Duration::from_secs(2));
    let p = udp_packet(real(11), real(13), 4004, 9104, b"MARKER-pass");
    sim.send_packet(inner, &p);
    sim.drive();
    assert_eq!(sim.counter(gw, "transit_passed"), 1);
    assert!(sim.nodes[gw].transit_drops.is_empty());
    let t = transit_flows(&sim, gw);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].action, "plain");
    // Plain on the wire, as the ends' rules and the gateway's say.
    assert!(
        sim.wire()
            .iter()
            .any(|f| f.native && contains(&f.payload, b"MARKER-pass"))
    );
}
