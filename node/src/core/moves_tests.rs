//! A node that moves (issue 12, first step): the core takes QUIC for every
//! peer at once, probes again from the new address, moves its flows'
//! translations to it, and measures the gap; in the simulator with a fake
//! clock. The lab test with real binaries is overlay-tests/tests/node_move.rs.

use std::net::SocketAddr;
use std::time::Duration;

use fpn_proto::ge::Mode;
use fpn_proto::path::PathConfig;

use super::sim::{CoreSim, LinkConfig, SimNat};

fn peer_path(sim: &CoreSim, i: usize) -> (String, String) {
    let p = &sim.nodes[i].core.snapshot(&[]).peers[0];
    (p.carrier.clone(), p.path.clone())
}

#[test]
fn a_move_is_recorded_reprobed_and_its_gap_measured() {
    let mut sim = CoreSim::new(91, LinkConfig::default());
    sim.path = PathConfig::default();
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    sim.run_for(Duration::from_millis(500));
    assert_eq!(peer_path(&sim, a), ("native".into(), "native".into()));
    sim.send_udp(a, b, 4000, 5000, b"before");
    sim.drive();
    assert!(sim.nodes[a].core.snapshot(&[]).moves.is_empty());

    // a moves: new underlay address, then its watcher's notification.
    let new: SocketAddr = "198.18.9.1:7718".parse().unwrap();
    sim.move_node(a, new);
    sim.announce(a);
    sim.network_change(a, "address 198.18.9.1 added (if 2)");
    // Unproven from here: QUIC at once, with the reason.
    assert_eq!(
        peer_path(&sim, a),
        ("quic".into(), "quic (moved; probing native again)".into())
    );
    // A second notification of the same burst is the same move.
    sim.network_change(a, "new default route via 198.18.9.254 (if 2)");
    let moves = sim.nodes[a].core.snapshot(&[]).moves;
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert!(moves[0].cause.contains("198.18.9.1") && moves[0].cause.contains("default route"));
    assert_eq!(moves[0].gap_ms, None, "nothing received yet");

    sim.run_for(Duration::from_millis(500));
    // Native again, from the new address: the probes went out from it and
    // the flow's translation moved with it.
    assert_eq!(peer_path(&sim, a), ("native".into(), "native".into()));
    sim.run_for(Duration::from_millis(7));
    sim.send_udp(b, a, 5000, 4000, b"after");
    sim.drive();
    assert!(sim.nodes[a].tun.iter().any(|p| p.ends_with(b"after")));
    let moves = sim.nodes[a].core.snapshot(&[]).moves;
    let gap = moves[0]
        .gap_ms
        .expect("the gap is measured at the first packet");
    // From the last change of the burst to the packet: the 500 ms of
    // re-probing, the 7 ms, and the packet's flight.
    assert!((507.0..700.0).contains(&gap), "{gap}");
}

/// Issue 12: what the host sends between its move and the peer's
/// acknowledgement of the Binding Update is held, not sent into a path
/// that may lose it, and goes out in order once the peer acknowledged.
#[test]
fn packets_sent_during_a_move_are_held_until_the_binding_update_is_acknowledged() {
    let mut sim = CoreSim::new(92, LinkConfig::default());
    sim.path = PathConfig::default();
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    sim.run_for(Duration::from_millis(500));
    sim.send_udp(a, b, 4000, 5000, b"before");
    sim.drive();
    assert!(sim.nodes[b].tun.iter().any(|p| p.ends_with(b"before")));

    let new: SocketAddr = "198.18.9.1:7718".parse().unwrap();
    sim.move_node(a, new);
    sim.announce(a);
    sim.network_change(a, "address 198.18.9.1 added (if 2)");
    for m in [&b"held-1"[..], b"held-2", b"held-3"] {
        sim.send_udp(a, b, 4000, 5000, m);
    }
    assert_eq!(sim.counter(a, "move_held"), 3);
    assert!(
        !sim.nodes[b].tun.iter().any(|p| p.ends_with(b"held-1")),
        "nothing leaves before the acknowledgement"
    );
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.counter(b, "moved_received"), 1);
    assert_eq!(sim.counter(a, "moved_acked"), 1);
    let got: Vec<&[u8]> = sim.nodes[b]
        .tun
        .iter()
        .filter_map(|p| p.get(p.len() - 6..))
        .filter(|t| t.starts_with(b"held-"))
        .collect();
    assert_eq!(got, vec![&b"held-1"[..], b"held-2", b"held-3"]);
    // Released: the next packet goes at once.
    sim.send_udp(a, b, 4000, 5000, b"after!");
    sim.drive();
    assert!(sim.nodes[b].tun.iter().any(|p| p.ends_with(b"after!")));
    assert_eq!(sim.counter(a, "move_held"), 3);
}

/// Suspend and resume (issue 12), on the simulator's clock: a sleeps five
/// minutes behind a NAT with random ports that forgets its mappings
/// meanwhile (they time out while nothing flows). Woken late for its
/// deadline, a takes it as a move: every path unproven (QUIC at once, not
/// the native path it had), a Binding Update to b, which drops the NAT
/// binding it had for a's flow and probes again; the move is in `status`
/// with its cause. The flow runs again both ways within 200 ms and native
/// returns through the NAT's new mapping. (Without the wake handling the
/// flow recovers about as fast here, through the NAT binding step and the
/// probes that timed out during the sleep; what fails then is the rest.)
#[test]
fn after_a_suspend_every_path_is_probed_before_it_is_trusted() {
    let mut sim = CoreSim::new(93, LinkConfig::default());
    sim.path = PathConfig::default();
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.nodes[a].nat = Some(SimNat::new(true, true));
    sim.introduce_all();
    sim.run_for(Duration::from_secs(2));
    for k in 0..3 {
        sim.send_udp(a, b, 4000, 5000, format!("BEFORE-{k}").as_bytes());
        sim.run_for(Duration::from_millis(50));
        sim.send_udp(b, a, 5000, 4000, format!("BEFORE-{k}").as_bytes());
        sim.run_for(Duration::from_millis(50));
    }
    assert_eq!(peer_path(&sim, a).0, "native");
    assert_eq!(sim.nodes[b].tun.len(), 3);

    sim.suspend(a, Duration::from_secs(300));
    sim.nodes[a].nat.as_mut().unwrap().forget_mappings();
    sim.run_for(Duration::from_secs(300));
    assert!(sim.nodes[a].asleep.is_none());
    let moves = sim.nodes[a].core.snapshot(&[]).moves;
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert!(moves[0].cause.starts_with("woke 299.8 s late"), "{moves:?}");
    assert_eq!(
        peer_path(&sim, a),
        ("quic".into(), "quic (moved; probing native again)".into()),
        "unproven after the sleep"
    );
    assert_eq!(sim.counter(a, "moved_sent"), 1);

    // The flow from before the sleep, one packet every 10 ms each way:
    // how long until each side hears the other.
    let (mut at_b, mut at_a) = (None, None);
    for k in 0..300u32 {
        let t = Duration::from_millis(10 * u64::from(k));
        sim.send_udp(a, b, 4000, 5000, format!("AFTER-{k}").as_bytes());
        sim.send_udp(b, a, 5000, 4000, format!("AFTER-{k}").as_bytes());
        sim.run_for(Duration::from_millis(10));
        let heard = |tun: &[Vec<u8>]| tun.iter().any(|p| p.windows(6).any(|w| w == b"AFTER-"));
        if at_b.is_none() && heard(&sim.nodes[b].tun) {
            at_b = Some(t);
        }
        if at_a.is_none() && heard(&sim.nodes[a].tun) {
            at_a = Some(t);
        }
        if at_a.is_some() && at_b.is_some() && k >= 100 {
            break;
        }
    }
    let bound = Duration::from_millis(200);
    assert!(
        at_b.is_some_and(|t| t < bound),
        "a -> b after the wake: {at_b:?}"
    );
    assert!(
        at_a.is_some_and(|t| t < bound),
        "b -> a after the wake: {at_a:?}"
    );
    assert_eq!(sim.counter(b, "moved_received"), 1);
    // Native again, through the NAT's new mapping, within the second.
    assert_eq!(peer_path(&sim, a), ("native".into(), "native".into()));
}
