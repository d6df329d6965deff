//! The native path through a NAT that rewrites ports, in the simulator:
//! the NAT binding step (docs/PROTOCOL.md "NAT binding") maps the NAT's
//! address and port back to the sender's flow once a packet of the flow
//! authenticates, and a replayed or forged one moves nothing.

use std::time::Duration;

use fpn_proto::ge::Mode;
use fpn_proto::packet::Packet;
use fpn_proto::path::{Force, PathConfig};

use super::sim::{CoreSim, LinkConfig, SimNat};

/// Nodes a (behind a NAT with random ports and address-dependent
/// filtering) and b, path selection automatic.
fn behind_nat(seed: u64) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    sim.path = PathConfig {
        force: Force::Auto,
        ..PathConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.nodes[a].nat = Some(SimNat::new(true, true));
    sim.introduce_all();
    (sim, a, b)
}

fn carrier(sim: &CoreSim, i: usize) -> (String, String) {
    let p = &sim.nodes[i].core.snapshot(&[]).peers[0];
    (p.carrier.clone(), p.path.clone())
}

/// a -> b 4000 -> 5000 and back, `rounds` times, 100 ms each.
fn exchange(sim: &mut CoreSim, a: usize, b: usize, rounds: u8) {
    for k in 0..rounds {
        sim.send_udp(a, b, 4000, 5000, format!("MARKER-{k}").as_bytes());
        sim.run_for(Duration::from_millis(50));
        sim.send_udp(b, a, 5000, 4000, format!("MARKER-{k}").as_bytes());
        sim.run_for(Duration::from_millis(50));
    }
}

#[test]
fn a_flow_through_a_port_rewriting_nat_is_bound_and_carried_natively() {
    let (mut sim, a, b) = behind_nat(21);
    // b's probes to a's 7717 meet a NAT with no mapping there; it goes
    // native once it probes where a's probes came from (the NAT's port).
    sim.run_for(Duration::from_secs(2));
    assert_eq!(carrier(&sim, a), ("native".into(), "native".into()));
    // b's status says where a is.
    assert_eq!(carrier(&sim, b), ("native".into(), "native via NAT".into()));
    exchange(&mut sim, a, b, 6);
    // Every packet arrived.
    assert_eq!(sim.nodes[a].tun.len(), 6);
    assert_eq!(sim.nodes[b].tun.len(), 6);
    // a's packets left its NAT from another port; b bound the flow once
    // and took them natively, and its own went back natively through the
    // NAT's mapping.
    assert_eq!(sim.counter(b, "native_bindings"), 1);
    assert!(
        sim.counter(b, "native_in") >= 5,
        "{}",
        sim.counter(b, "native_in")
    );
    assert!(
        sim.counter(b, "native_out") >= 5,
        "{}",
        sim.counter(b, "native_out")
    );
    assert!(
        sim.counter(a, "native_in") >= 5,
        "{}",
        sim.counter(a, "native_in")
    );
    assert_eq!(sim.counter(b, "native_in_wrong_source"), 0);
    // The bound translation sends to the NAT's port, not the application's.
    let t = *sim.nodes[b]
        .core
        .xlat
        .iter()
        .next()
        .expect("b's translation");
    assert_ne!(t.wire.dst_port, 4000, "{t:?}");
    assert_eq!(t.wire.dst, sim.nodes[a].underlay.ip());
}

#[test]
fn a_flow_into_the_nat_waits_on_quic_until_the_inside_node_answers() {
    let (mut sim, a, b) = behind_nat(22);
    sim.run_for(Duration::from_secs(2));
    // b opens a flow toward a: a's NAT has no mapping for it, so b's
    // packets go on QUIC (and a few native copies, which the NAT drops).
    sim.send_udp(b, a, 6000, 7000, b"first");
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[a].tun.len(), 1);
    assert_eq!(sim.counter(b, "native_out"), 0);
    assert!(sim.counter(b, "native_nat_waits") >= 1);
    assert!(sim.nodes[a].nat.as_ref().unwrap().dropped >= 1);
    // a answers; nothing came natively for the flow, so its packets wait
    // for the steering grace on QUIC (steering.rs), then go natively (b is
    // not behind a NAT): that packet opens the mapping and binds the flow
    // at b, whose next packets go natively.
    sim.send_udp(a, b, 7000, 6000, b"answer");
    sim.run_for(super::paths::NATIVE_GRACE);
    sim.send_udp(a, b, 7000, 6000, b"answer 2");
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[b].tun.len(), 2);
    assert_eq!(sim.counter(b, "native_bindings"), 1);
    for k in 0..3u8 {
        sim.send_udp(b, a, 6000, 7000, &[k]);
        sim.run_for(Duration::from_millis(50));
    }
    assert_eq!(sim.nodes[a].tun.len(), 4);
    assert_eq!(sim.counter(b, "native_out"), 3);
}

#[test]
fn replayed_and_forged_bindings_move_nothing_and_are_counted() {
    let (mut sim, a, b) = behind_nat(23);
    sim.run_for(Duration::from_secs(2));
    exchange(&mut sim, a, b, 2);
    let before = *sim.nodes[b].core.xlat.iter().next().expect("bound");
    let tun_b = sim.nodes[b].tun.len();
    // A native data packet a sent (as it left a, before the NAT).
    let sent = sim
        .wire()
        .iter()
        .rev()
        .find(|f| {
            f.native
                && f.from == a
                && Packet::parse(&f.payload[..]).is_ok_and(|p| p.flow_id().dst_port == 5000)
        })
        .expect("a native packet of a")
        .payload
        .clone();
    // Replayed from another port of a's address: it opens, but the replay
    // window refuses it.
    let mut replay = sent.clone();
    Packet::parse(&mut replay[..])
        .unwrap()
        .set_src_port(33_333)
        .unwrap();
    sim.inject_native(b, &replay);
    assert_eq!(sim.counter(b, "native_bindings_refused"), 1);
    // Forged: a new port and a flipped payload byte (the tag fails).
    let mut forged = replay.clone();
    let last = forged.len() - 30;
    forged[last] ^= 0x40;
    Packet::parse(&mut forged[..])
        .unwrap()
        .set_src_port(33_334)
        .unwrap();
    sim.inject_native(b, &forged);
    assert_eq!(sim.counter(b, "native_bindings_refused"), 2);
    // Nothing moved, nothing delivered (other ports than the flow's: not
    // note 21's wrong source).
    assert_eq!(*sim.nodes[b].core.xlat.iter().next().unwrap(), before);
    assert_eq!(sim.nodes[b].tun.len(), tun_b);
    assert_eq!(sim.counter(b, "native_in_wrong_source"), 0);
    assert_eq!(sim.counter(b, "native_bindings"), 1);
    // And the flow still runs natively.
    exchange(&mut sim, a, b, 1);
    assert_eq!(sim.nodes[b].tun.len(), tun_b + 1);
}

/// An ICMP echo across a NAT that rewrites ports (and echo ids) stays on
/// QUIC: the peer's node could not match an echo whose id changed on the
/// way (its kernel would answer it, sealed payload and all), and the
/// failed data checks would take the whole peer off native, its TCP and
/// UDP flows with it. Both directions: a (behind the NAT) pings b, and b
/// pings a. Every echo arrives, the UDP flow alongside stays native.
#[test]
fn echoes_across_a_port_rewriting_nat_take_quic_and_the_peer_stays_native() {
    let (mut sim, a, b) = behind_nat(25);
    sim.run_for(Duration::from_secs(2));
    exchange(&mut sim, a, b, 3);
    assert_eq!(carrier(&sim, a), ("native".into(), "native".into()));
    let (oa, ob) = (sim.nodes[a].overlay, sim.nodes[b].overlay);
    let echo = super::native_tests::echo_packet;
    let is_echo = |p: &Vec<u8>| p.len() > 20 && p[9] == 1;
    for seq in 0..20 {
        sim.send_packet(a, &echo(oa, ob, 8, seq));
        sim.run_for(Duration::from_millis(50));
        sim.send_packet(b, &echo(ob, oa, 0, seq));
        sim.run_for(Duration::from_millis(50));
    }
    assert_eq!(sim.nodes[b].tun.iter().filter(|p| is_echo(p)).count(), 20);
    assert_eq!(sim.nodes[a].tun.iter().filter(|p| is_echo(p)).count(), 20);
    assert!(sim.counter(a, "native_echo_nat") >= 20);
    assert!(sim.counter(b, "native_echo_nat") >= 20);
    exchange(&mut sim, a, b, 3);
    assert_eq!(carrier(&sim, a), ("native".into(), "native".into()));
    assert_eq!(carrier(&sim, b), ("native".into(), "native via NAT".into()));
}

/// A peer behind a port-rewriting NAT moves, and its probes from the new
/// network arrive before its Binding Update (QUIC opens its connection
/// again first, the probes go at once). The update must not make b forget
/// the NAT it just learnt from those probes: b's answer to a's echo would
/// then go natively into a NAT that rewrote the echo's id and has no
/// mapping for it (the lab's cafe ping lost one echo this way).
#[test]
fn a_binding_update_after_the_new_networks_probes_keeps_the_nat_it_saw() {
    let (mut sim, a, b) = behind_nat(26);
    sim.run_for(Duration::from_secs(2));
    exchange(&mut sim, a, b, 2);
    assert_eq!(carrier(&sim, b), ("native".into(), "native via NAT".into()));
    let (oa, ob) = (sim.nodes[a].overlay, sim.nodes[b].overlay);
    let echo = super::native_tests::echo_packet;
    let is_echo = |p: &Vec<u8>| p.len() > 20 && p[9] == 1;

    sim.carrier_delay = Duration::from_millis(15);
    sim.nodes[a].nat.as_mut().unwrap().forget_mappings();
    let new: std::net::SocketAddr = "198.18.9.1:7718".parse().unwrap();
    sim.move_node(a, new);
    sim.announce(a);
    sim.network_change(a, "address 198.18.9.1 added (if 2)");
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.counter(b, "moved_received"), 1);
    assert_eq!(carrier(&sim, b).0, "native");
    for seq in 0..5 {
        sim.send_packet(b, &echo(ob, oa, 8, seq));
        sim.run_for(Duration::from_millis(50));
    }
    assert_eq!(sim.nodes[a].tun.iter().filter(|p| is_echo(p)).count(), 5);
    assert!(sim.counter(b, "native_echo_nat") >= 5);
}
