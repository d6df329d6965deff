//! Fast open in the node core (docs/PROTOCOL.md, "Fast open"): after one
//! negotiation a pair's next flows open without one, their first packet
//! reaching the peer's TUN after one link delay; on the native path they
//! move to native once the peer's FOK says it steers them; a first packet
//! that overtakes its FOP waits for it instead of being lost.

use std::time::Duration;

use fpn_proto::ge::Mode;
use fpn_proto::packet::Packet;
use fpn_proto::path::{Force, PathConfig};

use super::sim::{CoreSim, LinkConfig};

fn pair(seed: u64, force: Force, link: LinkConfig) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, link);
    sim.fast_open = true;
    sim.path = PathConfig {
        force,
        ..PathConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    (sim, a, b)
}

/// The packets in node `i`'s TUN that carry `marker`.
pub(super) fn received(sim: &CoreSim, i: usize, marker: &[u8]) -> usize {
    sim.nodes[i]
        .tun
        .iter()
        .filter(|p| p.windows(marker.len()).any(|w| w == marker))
        .count()
}

/// Native data frames of the flow with source port `sport` either way.
fn native_frames_of(sim: &CoreSim, sport: u16) -> usize {
    sim.wire()
        .iter()
        .filter(|f| f.native)
        .filter(|f| {
            Packet::parse(&f.payload[..]).is_ok_and(|p| {
                let w = p.flow_id();
                w.src_port == sport || w.dst_port == sport
            })
        })
        .count()
}

#[test]
fn a_second_flow_reaches_the_peer_after_one_link_delay_without_a_negotiation() {
    let (mut sim, a, b) = pair(1, Force::Quic, LinkConfig::default());
    sim.send_udp(a, b, 4000, 5000, b"FIRST");
    sim.run_for(Duration::from_millis(500));
    assert_eq!(received(&sim, b, b"FIRST"), 1);
    assert_eq!(sim.counter(a, "dprp_started"), 1);
    assert_eq!(sim.counter(a, "dprp_epochs"), 1);
    assert_eq!(sim.counter(b, "dprp_epochs"), 1);

    // Link latency 10 ms: a negotiation would take two round trips (40 ms)
    // before the packet even left.
    sim.send_udp(a, b, 4001, 5000, b"SECOND");
    sim.run_for(Duration::from_millis(15));
    assert_eq!(received(&sim, b, b"SECOND"), 1, "after one link delay");
    sim.run_for(Duration::from_millis(100));
    sim.send_udp(b, a, 5000, 4001, b"REPLY");
    sim.run_for(Duration::from_millis(100));
    assert_eq!(received(&sim, a, b"REPLY"), 1);
    assert_eq!(sim.counter(a, "dprp_started"), 1, "no second negotiation");
    assert_eq!(sim.counter(b, "dprp_started"), 0);
    assert_eq!(sim.counter(a, "dprp_fast_opened"), 1);
    assert_eq!(sim.counter(a, "dprp_fast_confirmed"), 1);
    assert_eq!(sim.counter(b, "dprp_fast_accepted"), 1);
    assert_eq!(sim.counter(b, "data_in_no_flow"), 0);
    sim.check_invariants();
}

#[test]
fn without_fast_open_the_second_flow_is_negotiated() {
    let (mut sim, a, b) = pair(2, Force::Quic, LinkConfig::default());
    for i in [a, b] {
        sim.fast_open = false;
        sim.restart(i);
    }
    sim.introduce_all();
    sim.send_udp(a, b, 4000, 5000, b"FIRST");
    sim.run_for(Duration::from_millis(500));
    sim.send_udp(a, b, 4001, 5000, b"SECOND");
    sim.run_for(Duration::from_millis(15));
    assert_eq!(received(&sim, b, b"SECOND"), 0, "held for the negotiation");
    sim.run_for(Duration::from_millis(200));
    assert_eq!(received(&sim, b, b"SECOND"), 1);
    assert_eq!(sim.counter(a, "dprp_started"), 2);
    assert_eq!(sim.counter(a, "dprp_fast_opened"), 0);
}

#[test]
fn on_the_native_path_a_fast_opened_flow_goes_native_once_the_peer_confirms() {
    let (mut sim, a, b) = pair(3, Force::Auto, LinkConfig::default());
    sim.run_for(Duration::from_millis(500));
    sim.send_udp(a, b, 4000, 5000, b"FIRST");
    sim.run_for(Duration::from_millis(300));
    assert_eq!(received(&sim, b, b"FIRST"), 1);
    let before = native_frames_of(&sim, 4001);
    sim.send_udp(a, b, 4001, 5000, b"SECOND");
    sim.run_for(Duration::from_millis(100));
    assert_eq!(received(&sim, b, b"SECOND"), 1);
    // The first packet waited for b's FOK (on the IP path once b steered
    // the flow) and left natively: no QUIC connection needed.
    assert_eq!(native_frames_of(&sim, 4001) - before, 1, "the first packet");
    // a's next packets of the flow leave natively, and b's answers too.
    for n in 0..3u8 {
        sim.send_udp(a, b, 4001, 5000, &[b'M', n]);
        sim.run_for(Duration::from_millis(30));
        sim.send_udp(b, a, 5000, 4001, &[b'R', n]);
        sim.run_for(Duration::from_millis(30));
    }
    assert!(native_frames_of(&sim, 4001) - before >= 6);
    assert_eq!(sim.counter(a, "dprp_fast_confirmed"), 1);
    assert_eq!(sim.counter(a, "dprp_started"), 1);
    assert_eq!(received(&sim, a, b"R\x02"), 1);
    sim.check_invariants();
}

#[test]
fn a_first_packet_that_overtakes_its_fop_waits_for_it() {
    // Reordering on every link: in some runs the flow's first packet
    // arrives before its FOP. It must then wait (parked) and reach the
    // TUN once the FOP came, never be lost or make b negotiate.
    let mut overtaken = 0;
    for seed in 0..24 {
        let (mut sim, a, b) = pair(100 + seed, Force::Quic, LinkConfig::default());
        sim.send_udp(a, b, 4000, 5000, b"FIRST");
        sim.run_for(Duration::from_millis(500));
        sim.set_link(LinkConfig {
            reorder: 0.5,
            ..LinkConfig::default()
        });
        sim.send_udp(a, b, 4001, 5000, b"SECOND");
        sim.run_for(Duration::from_millis(300));
        assert_eq!(received(&sim, b, b"SECOND"), 1, "seed {seed}");
        assert_eq!(sim.counter(b, "dprp_started"), 0, "seed {seed}: b healed");
        if sim.counter(b, "data_in_parked") > 0 {
            overtaken += 1;
            assert_eq!(sim.counter(b, "data_in_unparked"), 1, "seed {seed}");
        }
    }
    assert!(overtaken > 0, "no run had the packet overtake its FOP");
}

#[test]
fn when_the_peer_lost_its_epoch_the_first_packet_arrives_through_a_negotiation() {
    let (mut sim, a, b) = pair(4, Force::Quic, LinkConfig::default());
    sim.send_udp(a, b, 4000, 5000, b"FIRST");
    sim.run_for(Duration::from_millis(500));
    // b restarts: no flows, no epoch; a still holds its epoch with b.
    sim.restart(b);
    sim.introduce_all();
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.counter(a, "dprp_epochs"), 1);
    sim.send_udp(a, b, 4001, 5000, b"AFTER-RESTART");
    sim.run_for(Duration::from_millis(500));
    // b answered the FOP with NAK 11; a fell back to a negotiation that
    // carried the packet, which arrives once.
    assert_eq!(sim.counter(a, "dprp_fast_fallbacks"), 1);
    assert_eq!(received(&sim, b, b"AFTER-RESTART"), 1);
    assert_eq!(sim.counter(a, "dprp_started"), 2);
    sim.check_invariants();
}
