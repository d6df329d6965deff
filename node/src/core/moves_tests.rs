//! A node that moves (issue 12, first step): the core takes QUIC for every
//! peer at once, probes again from the new address, moves its flows'
//! translations to it, and measures the gap; in the simulator with a fake
//! clock. The lab test with real binaries is overlay-tests/tests/node_move.rs.

use std::net::SocketAddr;
use std::time::Duration;

use fpn_proto::ge::Mode;
use fpn_proto::path::PathConfig;

use super::sim::{CoreSim, LinkConfig};

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
