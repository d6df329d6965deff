//! Fast open in the node core (docs/PROTOCOL.md, "Fast open"): after one
//! negotiation a pair's next flows open without one, their first packet
//! reaching the peer's TUN after one link delay; on the native path they
//! move to native once the peer's FOK says it steers them; a first packet
//! that overtakes its FOP waits for it instead of being lost.

use std::time::Duration;

use fpn_proto::dprp::msg::{Fop, Message};
use fpn_proto::ge::Mode;
use fpn_proto::packet::Packet;
use fpn_proto::path::{Force, PathConfig};

use super::sim::{CoreSim, LinkConfig};
use super::steering::NOTICE_WAIT;

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

/// A pair on the native path (link delay 10 ms, steering 5 ms) whose
/// first flow, 4000 -> 5000, made the pair's epoch. `fast_first`: first
/// packets inside FOPs.
fn native_pair_with_epoch(seed: u64, fast_first: bool) -> (CoreSim, usize, usize) {
    let (mut sim, a, b) = pair(seed, Force::Auto, LinkConfig::default());
    if !fast_first {
        for i in [a, b] {
            sim.fast_first = false;
            sim.restart(i);
        }
        sim.introduce_all();
    }
    sim.run_for(Duration::from_millis(500));
    sim.send_udp(a, b, 4000, 5000, b"FIRST");
    sim.run_for(Duration::from_millis(300));
    assert_eq!(received(&sim, b, b"FIRST"), 1);
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

/// Where in node `i`'s TUN the first packet carrying each of `markers`
/// was written (`usize::MAX`: none did).
fn positions(sim: &CoreSim, i: usize, markers: &[&[u8]]) -> Vec<usize> {
    markers
        .iter()
        .map(|m| {
            sim.nodes[i]
                .tun
                .iter()
                .position(|p| p.windows(m.len()).any(|w| w == *m))
                .unwrap_or(usize::MAX)
        })
        .collect()
}

/// The FOPs node `i` sent: over QUIC (control frames) and on the IP path
/// (IPv4 UDP to DPRP's port), in that order.
fn fops_from(sim: &CoreSim, i: usize) -> Vec<Fop> {
    let quic = sim
        .controls
        .iter()
        .filter(|f| f.from == i)
        .map(|f| f.payload.as_slice());
    let native = sim
        .wire()
        .iter()
        .filter(|f| f.from == i && f.native)
        .filter_map(|f| {
            let p = &f.payload;
            let ihl = usize::from(*p.first()? & 0x0f) * 4;
            let dport = u16::from_be_bytes([*p.get(ihl + 2)?, *p.get(ihl + 3)?]);
            (p.get(9) == Some(&17) && dport == super::PROBE_PORT).then(|| p.get(ihl + 8..))?
        });
    quic.chain(native)
        .filter_map(|b| match Message::decode(b) {
            Ok(Message::Fop(f)) => Some(f),
            _ => None,
        })
        .collect()
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

/// What [`second_flow_on_the_native_path`] saw.
struct NativeOpen {
    /// b had the first packet within 11 ms (one link delay) of a sending it.
    first_in_time: bool,
    /// a had b's answer, sent at once, 16 ms later (with the packet
    /// inside: held at b for a's notice, 5 ms, then natively; without:
    /// natively at once).
    answer_in_time: bool,
    /// Native data frames of the flow by then (the FOP is DPRP's).
    native_frames: usize,
    /// b's next answer, 11 ms later (a's steered notice in, b's own
    /// steering not yet), went natively.
    later_native: bool,
}

/// On the native path, after a first flow made the pair's epoch: a sends
/// the second flow's first datagram, b answers as soon as it has it and
/// once more 11 ms later, then both sides exchange three more. Link delay
/// 10 ms, a's steering 5 ms, b's 25 ms (its FOK comes late, so what b
/// sends natively before about 35 ms rests on a's notice alone).
fn second_flow_on_the_native_path(fast_first: bool) -> NativeOpen {
    let (mut sim, a, b) = native_pair_with_epoch(3, fast_first);
    sim.nodes[b].steer_delay = Duration::from_millis(25);
    let before = native_frames_of(&sim, 4001);
    let lost = sim.native_lost;
    sim.send_udp(a, b, 4001, 5001, b"SECOND");
    // With the packet inside its FOP: one link delay, a's steering not
    // awaited (note 75). Without: the FOP's round trip and b's steering.
    let mut waited = Duration::ZERO;
    while received(&sim, b, b"SECOND") == 0 && waited < Duration::from_millis(100) {
        sim.run_for(Duration::from_millis(1));
        waited += Duration::from_millis(1);
    }
    assert_eq!(received(&sim, b, b"SECOND"), 1);
    let first_in_time = waited <= Duration::from_millis(11);
    // b answers at once: with the packet inside, a's steered notice is on
    // its way still, and the answer waits for it at b (note 76).
    sim.send_udp(b, a, 5001, 4001, b"ANSWER");
    if fast_first {
        sim.run_for(Duration::from_millis(4));
        assert_eq!(
            native_frames_of(&sim, 4001),
            before,
            "b answered before a steered"
        );
        assert_eq!(sim.counter(b, "native_notice_waits"), 1);
    }
    sim.run_for(Duration::from_millis(if fast_first { 12 } else { 16 }));
    let answer_in_time = received(&sim, a, b"ANSWER") == 1;
    let native_frames = native_frames_of(&sim, 4001) - before;
    // The notice is in: b answers natively, before its own steering.
    sim.send_udp(b, a, 5001, 4001, b"LATER");
    sim.run_for(Duration::from_millis(1));
    let later_native = native_frames_of(&sim, 4001) - before > native_frames;
    sim.run_for(Duration::from_millis(100));
    assert_eq!(received(&sim, a, b"ANSWER"), 1);
    assert_eq!(received(&sim, a, b"LATER"), 1);
    // Then the flow runs natively both ways.
    let mid = native_frames_of(&sim, 4001);
    for n in 0..3u8 {
        sim.send_udp(a, b, 4001, 5001, &[b'M', n]);
        sim.run_for(Duration::from_millis(30));
        sim.send_udp(b, a, 5001, 4001, &[b'R', n]);
        sim.run_for(Duration::from_millis(30));
    }
    assert_eq!(native_frames_of(&sim, 4001) - mid, 6);
    assert_eq!(received(&sim, b, b"M\x02"), 1);
    assert_eq!(received(&sim, a, b"R\x02"), 1);
    assert_eq!(sim.counter(a, "dprp_fast_confirmed"), 1);
    assert_eq!(sim.counter(a, "dprp_started"), 1);
    // No native packet of the flow came to an end that did not steer it.
    assert_eq!(sim.native_lost, lost, "a native packet reached a kernel");
    let inside = u64::from(fast_first);
    assert_eq!(sim.counter(a, "dprp_fast_first_sent"), inside);
    // On the IP path: the FOP at once, not marked steered; the same FOP
    // again, marked, once a steers the flow.
    let steered: Vec<bool> = fops_from(&sim, a)
        .iter()
        .filter(|f| f.flow.src_port == 4001)
        .filter_map(|f| f.first.as_ref().map(|p| p.steered))
        .collect();
    let expected: &[bool] = if fast_first { &[false, true] } else { &[] };
    assert_eq!(steered, expected);
    assert_eq!(sim.counter(a, "dprp_fast_steered_sent"), inside);
    assert_eq!(sim.counter(b, "dprp_fast_steered_received"), inside);
    assert_eq!(sim.counter(b, "dprp_fast_first_received"), inside);
    assert_eq!(sim.counter(b, "native_notice_waits"), inside);
    for i in [a, b] {
        assert_eq!(sim.counter(i, "native_notice_timeouts"), 0);
        assert_eq!(sim.counter(i, "native_ready_timeouts"), 0);
        assert_eq!(sim.counter(i, "data_in_parked"), 0);
        assert_eq!(sim.counter(i, "native_in_unknown"), 0);
    }
    sim.check_invariants();
    NativeOpen {
        first_in_time,
        answer_in_time,
        native_frames,
        later_native,
    }
}

#[test]
fn on_the_native_path_a_udp_flow_s_first_packet_rides_its_fop_at_once_and_answers_go_natively_after_the_notice()
 {
    // a sends the FOP at once, with the packet inside: b has it after one
    // link delay and answers at once; a sends the FOP again marked
    // steered once its own steering is in, and b's answer, held for it,
    // goes natively then, as do b's next, before b's own steering and
    // its FOK.
    let with = second_flow_on_the_native_path(true);
    assert!(
        with.first_in_time,
        "the first packet did not ride its FOP at once"
    );
    assert!(
        with.answer_in_time,
        "b's answer did not come right after a's notice"
    );
    assert_eq!(
        with.native_frames, 1,
        "b's answer did not go natively after a's notice"
    );
    assert!(
        with.later_native,
        "b did not answer natively after a's notice"
    );
    // The control: the first packet waits for b's FOK (its round trip and
    // b's steering) and leaves natively; b answers natively after it.
    let without = second_flow_on_the_native_path(false);
    assert!(!without.first_in_time);
    assert_eq!(without.native_frames, 2, "the first packet and the answer");
    assert!(without.later_native);
}

#[test]
fn answers_held_for_a_notice_that_does_not_come_take_quic_after_the_wait() {
    // a's steering takes 40 ms, longer than b waits for its notice: b's
    // answer, held from 10 ms, goes over QUIC at 30 ms (note 76), and no
    // native packet reaches a's kernel before a steers the flow.
    let (mut sim, a, b) = native_pair_with_epoch(7, true);
    sim.nodes[a].steer_delay = Duration::from_millis(40);
    let lost = sim.native_lost;
    let before = native_frames_of(&sim, 4001);
    sim.send_udp(a, b, 4001, 5001, b"SECOND");
    sim.run_for(Duration::from_millis(11));
    assert_eq!(received(&sim, b, b"SECOND"), 1);
    sim.send_udp(b, a, 5001, 4001, b"ANSWER");
    sim.send_udp(b, a, 5001, 4001, b"AGAIN");
    sim.run_for(NOTICE_WAIT - Duration::from_millis(3));
    assert_eq!(
        received(&sim, a, b"ANSWER"),
        0,
        "b did not wait for the notice"
    );
    sim.run_for(Duration::from_millis(15));
    assert_eq!(received(&sim, a, b"ANSWER"), 1);
    assert_eq!(received(&sim, a, b"AGAIN"), 1);
    let at = positions(&sim, a, &[b"ANSWER", b"AGAIN"]);
    assert!(at[0] < at[1], "the held answers came out of order");
    assert_eq!(native_frames_of(&sim, 4001), before, "not natively");
    assert_eq!(sim.counter(b, "native_notice_waits"), 1);
    assert_eq!(sim.counter(b, "native_notice_timeouts"), 1);
    assert_eq!(sim.native_lost, lost, "a native packet reached a's kernel");
    sim.check_invariants();
}

#[test]
fn more_answers_than_a_flow_may_hold_leave_at_once_in_order_and_none_is_lost() {
    // a's notice comes late (a's steering 40 ms): b answers 70 times at
    // once. The hold takes 64 per flow; the 64th sends them all on, over
    // QUIC, and the rest follow; none is dropped, none overtakes.
    let (mut sim, a, b) = native_pair_with_epoch(8, true);
    sim.nodes[a].steer_delay = Duration::from_millis(40);
    sim.send_udp(a, b, 4001, 5001, b"SECOND");
    sim.run_for(Duration::from_millis(11));
    assert_eq!(received(&sim, b, b"SECOND"), 1);
    let marks: Vec<Vec<u8>> = (0..70u8)
        .map(|n| format!("R{n:03}#").into_bytes())
        .collect();
    for m in &marks {
        sim.send_udp(b, a, 5001, 4001, m);
    }
    sim.run_for(Duration::from_millis(15));
    let refs: Vec<&[u8]> = marks.iter().map(Vec::as_slice).collect();
    let at = positions(&sim, a, &refs);
    assert!(
        at.iter().all(|&p| p != usize::MAX),
        "answers lost or still held: {at:?}"
    );
    assert!(at.windows(2).all(|w| w[0] < w[1]), "out of order: {at:?}");
    assert_eq!(sim.counter(b, "native_notice_waits"), 1);
    assert_eq!(sim.counter(b, "native_notice_timeouts"), 1);
    assert_eq!(sim.counter(b, "policy_drops"), 0);
    sim.check_invariants();
}

#[test]
fn a_peer_whose_steering_is_late_does_not_open_the_opener_s_gate_early() {
    // A port of b's no flow uses yet (the sim hands b's node every packet
    // to a steered local port, whatever its source). b's steering takes
    // 150 ms: its FOK goes over QUIC after 100 ms (steering timeout),
    // while it answers natively once a's steered notice is in (15 ms).
    // a must not take b's native packets for b's steering: its own packets
    // go on QUIC until the grace, never natively into b's kernel before b
    // steers the flow.
    let (mut sim, a, b) = native_pair_with_epoch(6, true);
    sim.nodes[b].steer_delay = Duration::from_millis(150);
    let lost = sim.native_lost;
    sim.send_udp(a, b, 4001, 5001, b"SECOND");
    sim.run_for(Duration::from_millis(18));
    assert_eq!(received(&sim, b, b"SECOND"), 1);
    let native = native_frames_of(&sim, 4001);
    sim.send_udp(b, a, 5001, 4001, b"ANSWER");
    sim.run_for(Duration::from_millis(1));
    assert_eq!(
        native_frames_of(&sim, 4001),
        native + 1,
        "b's answer, natively"
    );
    // The FOK over QUIC reaches a at about 125 ms.
    sim.run_for(Duration::from_millis(119));
    assert_eq!(received(&sim, a, b"ANSWER"), 1);
    assert_eq!(sim.counter(b, "native_ready_timeouts"), 1);
    // b goes on natively; then a answers before b's steering (165 ms).
    sim.send_udp(b, a, 5001, 4001, b"MORE");
    sim.run_for(Duration::from_millis(11));
    assert_eq!(received(&sim, a, b"MORE"), 1);
    sim.send_udp(a, b, 4001, 5001, b"BACK");
    sim.run_for(Duration::from_millis(12));
    assert_eq!(received(&sim, b, b"BACK"), 1, "lost");
    assert_eq!(
        sim.native_lost, lost,
        "a's packet reached b before b steered the flow"
    );
    sim.check_invariants();
}

#[test]
fn on_the_native_path_a_tcp_syn_does_not_ride_its_fop() {
    // The peer's first native packet of the connection would be its
    // SYN-ACK, which conntrack on the way takes as invalid: a SYN waits
    // for the FOK and leaves natively, as before.
    let (mut sim, a, b) = native_pair_with_epoch(5, true);
    let syn = tcp_syn(sim.nodes[a].overlay, sim.nodes[b].overlay, 4002, 5002);
    sim.send_packet(a, &syn);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.counter(a, "dprp_fast_opened"), 1);
    assert_eq!(sim.counter(a, "dprp_fast_first_sent"), 0);
    assert_eq!(native_frames_of(&sim, 4002), 1, "the SYN, natively");
    assert_eq!(received(&sim, b, &syn[20..32]), 1);
}

/// A TCP SYN from `src:sport` to `dst:dport`, checksums filled.
pub(super) fn tcp_syn(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = fpn_proto::flow::protocol::TCP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..28].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x02;
    p[34..36].copy_from_slice(&64240u16.to_be_bytes());
    let c = fpn_proto::packet::checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let l4 = Packet::parse(&p[..]).unwrap().compute_l4_checksum();
    p[36..38].copy_from_slice(&l4.to_be_bytes());
    p
}

#[test]
fn a_first_packet_that_overtakes_its_fop_waits_for_it() {
    // Reordering on every link: in some runs the flow's first packet
    // arrives before its FOP. It must then wait (parked) and reach the
    // TUN once the FOP came, never be lost or make b negotiate.
    // The first packet rides its FOP (note 71) unless told not to: then
    // it is a frame of its own, which reordering may put first.
    let mut overtaken = 0;
    for seed in 0..24 {
        let (mut sim, a, b) = pair(100 + seed, Force::Quic, LinkConfig::default());
        for i in [a, b] {
            sim.fast_first = false;
            sim.restart(i);
        }
        sim.introduce_all();
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
fn over_quic_the_first_packet_rides_its_fop_and_is_never_parked() {
    // The same reordering: with the packet inside its FOP nothing can
    // overtake it, and a sends one frame for the new flow, not two.
    for seed in 0..24 {
        let (mut sim, a, b) = pair(100 + seed, Force::Quic, LinkConfig::default());
        sim.send_udp(a, b, 4000, 5000, b"FIRST");
        sim.run_for(Duration::from_millis(500));
        sim.set_link(LinkConfig {
            reorder: 0.5,
            ..LinkConfig::default()
        });
        let data_out = sim.counter(a, "data_out");
        sim.send_udp(a, b, 4001, 5000, b"SECOND");
        sim.run_for(Duration::from_millis(300));
        assert_eq!(received(&sim, b, b"SECOND"), 1, "seed {seed}");
        assert_eq!(sim.counter(b, "data_in_parked"), 0, "seed {seed}");
        assert_eq!(
            sim.counter(a, "data_out"),
            data_out,
            "seed {seed}: a data frame"
        );
        assert_eq!(sim.counter(a, "dprp_fast_first_sent"), 1, "seed {seed}");
        // Over QUIC, without steering at a: not marked steered.
        let firsts: Vec<bool> = fops_from(&sim, a)
            .iter()
            .filter(|f| f.flow.src_port == 4001)
            .filter_map(|f| f.first.as_ref().map(|p| p.steered))
            .collect();
        assert_eq!(firsts, vec![false], "seed {seed}");
        assert_eq!(sim.counter(b, "dprp_fast_first_received"), 1, "seed {seed}");
        assert_eq!(sim.counter(b, "dprp_started"), 0, "seed {seed}: b healed");
        sim.check_invariants();
    }
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
