//! Eviction notices in the node core (docs/PROTOCOL.md, "Eviction notice";
//! design note 69): a flow one end evicts from its full PIT goes at the
//! other end too, so the client that uses its ports again opens it afresh
//! and loses nothing, on either carrier; a notice seen again after the flow
//! was opened anew leaves the new entry alone.

use std::time::Duration;

use fpn_proto::dprp::{MessageType, msg};
use fpn_proto::ge::{GeId, Mode};
use fpn_proto::packet::Packet;
use fpn_proto::path::{Force, PathConfig};

use super::fast_tests::{received, tcp_syn};
use super::sim::{CoreSim, LinkConfig};
use crate::carrier::FrameKind;

/// a with the default table, b with room for 8 flows.
fn pair(seed: u64, force: Force, fast_open: bool) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    sim.fast_open = fast_open;
    sim.path = PathConfig {
        force,
        ..PathConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    sim.pit = fpn_proto::pit::PitConfig {
        max_entries: 8,
        ..fpn_proto::pit::PitConfig::default()
    };
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    (sim, a, b)
}

/// On the native path: a with room for 8 flows, b with the default table.
fn native_pair_a_small(seed: u64, fast_open: bool) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    sim.fast_open = fast_open;
    sim.path = PathConfig {
        force: Force::Native,
        ..PathConfig::default()
    };
    sim.pit = fpn_proto::pit::PitConfig {
        max_entries: 8,
        ..fpn_proto::pit::PitConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    sim.pit = fpn_proto::pit::PitConfig::default();
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    (sim, a, b)
}

fn holds(sim: &CoreSim, i: usize, sport: u16) -> bool {
    sim.nodes[i]
        .core
        .pit()
        .iter()
        .any(|(f, _)| f.src_port == sport)
}

/// The one source port of 10 000..10 008 that node `i` no longer holds.
fn evicted_port(sim: &CoreSim, i: usize) -> u16 {
    let gone: Vec<u16> = (10_000..10_008).filter(|p| !holds(sim, i, *p)).collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    gone[0]
}

/// An EVICT that `from` sent: a carrier control frame as it is, or the
/// whole native packet that carried it.
fn notice(sim: &CoreSim, from: usize) -> Option<(bool, Vec<u8>)> {
    let is_evict = |p: &[u8]| msg::peek(p).is_ok_and(|(t, _)| t == MessageType::Evict);
    let control = sim
        .controls
        .iter()
        .find(|f| f.from == from && is_evict(&f.payload))
        .map(|f| (false, f.payload.clone()));
    control.or_else(|| {
        sim.wire()
            .iter()
            .filter(|f| f.from == from && f.native)
            .find(|f| Packet::parse(&f.payload[..]).is_ok_and(|p| is_evict(p.payload())))
            .map(|f| (true, f.payload.clone()))
    })
}

fn the_peer_s_eviction_frees_the_ports_for_a_new_opening(force: Force) {
    let (mut sim, a, b) = pair(3, force, true);
    for port in 0..8 {
        sim.send_udp(a, b, 10_000 + port, 53, b"query");
        sim.run_for(Duration::from_millis(300));
    }
    assert_eq!(received(&sim, b, b"query"), 8);
    assert_eq!(sim.counter(b, "pit_entries"), 8);

    // Two seconds on, a ninth flow: b's table is full and evicts one of
    // the idle eight; a's is not, and keeps it until b's notice.
    sim.run_for(Duration::from_secs(2));
    sim.send_udp(a, b, 10_100, 53, b"ninth");
    sim.run_for(Duration::from_millis(300));
    assert_eq!(received(&sim, b, b"ninth"), 1);
    assert_eq!(sim.counter(b, "flows_evicted"), 1);
    let gone = evicted_port(&sim, b);
    assert_eq!(sim.counter(b, "dprp_evict_sent"), 1);
    assert_eq!(sim.counter(a, "dprp_evict_received"), 1);
    assert_eq!(sim.counter(a, "flows_evicted_by_peer"), 1);
    assert_eq!(sim.counter(a, "flows_evicted"), 0);
    assert!(!holds(&sim, a, gone), "a dropped the flow b evicted");

    // The client uses the port again (a resolver's next query): a opens
    // the flow afresh (fast, or negotiated when the flow was the pair's
    // first, whose negotiation still lingers), b takes the packet and
    // answers it; no end meets a packet it has no keys for.
    let openings =
        |sim: &CoreSim| sim.counter(a, "dprp_fast_opened") + sim.counter(a, "dprp_started");
    let opened = openings(&sim);
    sim.send_udp(a, b, gone, 53, b"again");
    sim.run_for(Duration::from_millis(300));
    assert_eq!(received(&sim, b, b"again"), 1);
    assert_eq!(openings(&sim), opened + 1);
    sim.send_udp(b, a, 53, gone, b"answer");
    sim.run_for(Duration::from_millis(300));
    assert_eq!(received(&sim, a, b"answer"), 1);
    for i in [a, b] {
        for c in [
            "data_in_no_flow",
            "native_bindings_refused",
            "native_in_rejected",
        ] {
            assert_eq!(sim.counter(i, c), 0, "{c} at node {i}");
        }
    }

    // The same notice again (replayed, or late): it names the opening b
    // evicted, not a's new one, so the new entry stays and carries on.
    let (received_before, by_peer) = (
        sim.counter(a, "dprp_evict_received"),
        sim.counter(a, "flows_evicted_by_peer"),
    );
    let (native, bytes) = notice(&sim, b).expect("b's EVICT on the wire");
    assert_eq!(native, force == Force::Native);
    if native {
        sim.inject_native(a, &bytes);
    } else {
        let from = sim.nodes[b].underlay;
        sim.inject(a, GeId(2), from, FrameKind::Control, &bytes);
    }
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.counter(a, "dprp_evict_received"), received_before + 1);
    assert_eq!(sim.counter(a, "peer_evictions_ignored"), 1);
    assert_eq!(sim.counter(a, "flows_evicted_by_peer"), by_peer);
    assert!(holds(&sim, a, gone));
    sim.send_udp(a, b, gone, 53, b"still");
    sim.run_for(Duration::from_millis(300));
    assert_eq!(received(&sim, b, b"still"), 1);
    sim.check_invariants();
}

#[test]
fn a_flow_the_peer_evicted_is_dropped_and_opened_afresh_over_quic() {
    the_peer_s_eviction_frees_the_ports_for_a_new_opening(Force::Quic);
}

#[test]
fn a_flow_the_peer_evicted_is_dropped_and_opened_afresh_on_the_native_path() {
    the_peer_s_eviction_frees_the_ports_for_a_new_opening(Force::Native);
}

#[test]
fn without_a_pair_epoch_no_notice_goes_and_the_flow_heals_as_before() {
    // Fast open off: no pair epoch, so b cannot authenticate a notice; the
    // eviction shows only at b, and a's next packet meets an end without
    // its keys, as every eviction did before notices.
    let (mut sim, a, b) = pair(4, Force::Quic, false);
    for port in 0..9 {
        if port == 8 {
            sim.run_for(Duration::from_secs(2));
        }
        sim.send_udp(a, b, 10_000 + port, 53, b"query");
        sim.run_for(Duration::from_millis(300));
    }
    assert_eq!(sim.counter(b, "flows_evicted"), 1);
    assert_eq!(sim.counter(b, "dprp_evict_sent"), 0);
    let gone = evicted_port(&sim, b);
    assert!(holds(&sim, a, gone));
    sim.send_udp(a, b, gone, 53, b"again");
    sim.run_for(Duration::from_secs(1));
    // b has no keys for it: the packet is lost (what a notice prevents),
    // and b heals the flow by negotiating it from its side.
    assert_eq!(received(&sim, b, b"again"), 0);
    assert_eq!(sim.counter(b, "dprp_started"), 1);
    sim.send_udp(a, b, gone, 53, b"healed");
    sim.run_for(Duration::from_millis(300));
    assert_eq!(received(&sim, b, b"healed"), 1);
    assert_eq!(sim.counter(b, "data_in_no_flow"), 1);
}

/// a's table full, on the native path: new flows evict idle ones there,
/// and each new flow still gets its translation at both ends, so b's answers after the new-flow
/// grace (when b's gate opens on the grace alone) are taken in natively.
/// The translation of the flow a round evicts goes only when the round's
/// PIT events are drained, after the new flow's was made: with a
/// translation table no larger than the PIT (the old fixed 65 536 against
/// the default `max_flows` of 65 536) a's was refused while b made its
/// own, and b's native answers to a were lost (the native storm's lost
/// queries, design note 73).
#[test]
fn flows_that_evict_others_keep_their_native_answers() {
    // b has room: it makes its translation of each new flow whatever a
    // did.
    let (mut sim, a, b) = native_pair_a_small(5, false);
    let exchange = |sim: &mut CoreSim, port: u16, tag: &str| {
        sim.send_udp(a, b, port, 53, format!("query-{tag}-{port}-").as_bytes());
        sim.run_for(Duration::from_millis(150));
        sim.send_udp(b, a, 53, port, format!("answer-{tag}-{port}-").as_bytes());
        sim.run_for(Duration::from_millis(150));
    };
    // Eight flows fill a's table; two seconds on they may be evicted.
    for port in 20_000..20_008 {
        exchange(&mut sim, port, "fill");
    }
    sim.run_for(Duration::from_secs(2));
    // Four new flows, each evicting one; then past the grace, again.
    let new = 20_008..20_012;
    for port in new.clone() {
        exchange(&mut sim, port, "new");
    }
    assert!(sim.counter(a, "flows_evicted") >= 4, "a evicted");
    sim.run_for(super::paths::NATIVE_GRACE + Duration::from_millis(100));
    let native_in = sim.counter(a, "native_in");
    for port in new.clone() {
        exchange(&mut sim, port, "later");
    }
    for port in new.clone() {
        for tag in ["new", "later"] {
            let q = format!("query-{tag}-{port}-");
            let r = format!("answer-{tag}-{port}-");
            assert_eq!(received(&sim, b, q.as_bytes()), 1, "{q}");
            assert_eq!(received(&sim, a, r.as_bytes()), 1, "{r}");
        }
    }
    // The later answers came natively, taken in by a's translations.
    assert!(
        sim.counter(a, "native_in") >= native_in + 4,
        "{} native packets in",
        sim.counter(a, "native_in") - native_in
    );
    for i in [a, b] {
        assert_eq!(sim.counter(i, "native_translations_refused"), 0, "node {i}");
    }
    assert!(sim.nodes[a].core.pit().len() <= 8);
    sim.check_invariants();
}

/// A fast open that pushes a flow out of the opener's full table: its FOP
/// (with the first packet inside, note 75: sent at once) leaves after the
/// eviction notice of that flow, so the peer's table has room when the FOP
/// comes. Sent before it, a peer with a full table of its own evicted
/// flows the opener still used (the native storm lost queries so).
#[test]
fn a_fop_that_evicts_leaves_after_its_eviction_notice() {
    let (mut sim, a, b) = native_pair_a_small(6, true);
    for port in 20_000..20_008 {
        sim.send_udp(a, b, port, 53, b"fill");
        sim.run_for(Duration::from_millis(150));
    }
    sim.run_for(Duration::from_secs(2));
    let from = sim.wire().len();
    sim.send_udp(a, b, 20_008, 53, b"ninth");
    sim.run_for(Duration::from_millis(150));
    assert_eq!(received(&sim, b, b"ninth"), 1);
    assert_eq!(sim.counter(a, "flows_evicted"), 1);
    assert_eq!(sim.counter(a, "dprp_evict_sent"), 1);
    assert_eq!(sim.counter(a, "dprp_fast_first_sent"), 8);
    // a's DPRP on the IP path, in the order it left.
    let sent: Vec<msg::Message> = sim.wire()[from..]
        .iter()
        .filter(|f| f.from == a && f.native)
        .filter_map(|f| {
            let p = Packet::parse(&f.payload[..]).ok()?;
            msg::Message::decode(p.payload()).ok()
        })
        .collect();
    let evict = sent
        .iter()
        .position(|m| matches!(m, msg::Message::Evict(_)));
    let fop = sent
        .iter()
        .position(|m| matches!(m, msg::Message::Fop(f) if f.flow.src_port == 20_008));
    let (Some(evict), Some(fop)) = (evict, fop) else {
        panic!("no EVICT or no FOP on the IP path: {evict:?} {fop:?}");
    };
    assert!(evict < fop, "the FOP left before the notice");
    sim.check_invariants();
}

/// Both ends with room for 8 flows.
fn both_small(seed: u64, force: Force) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    sim.fast_open = true;
    sim.path = PathConfig {
        force,
        ..PathConfig::default()
    };
    sim.pit = fpn_proto::pit::PitConfig {
        max_entries: 8,
        ..fpn_proto::pit::PitConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    (sim, a, b)
}

/// Both tables full: a's ninth flow (a UDP datagram, or a TCP SYN) pushes
/// its oldest out and sends the EVICT before the ninth's FOP, over QUIC
/// as on the IP path (note 77), so b drops that flow when the notice comes
/// and has room for the FOP: it evicts nothing of its own (a flow a may
/// still use). Before, a FOP over QUIC, and any FOP without its first
/// packet inside, left first.
/// The ninth flow's first packet.
#[derive(Clone, Copy, PartialEq)]
enum First {
    /// A small UDP datagram: inside its FOP.
    Udp,
    /// A UDP datagram too large for its FOP (a QUIC client's Initial):
    /// beside it, after it.
    BigUdp,
    /// A TCP SYN: inside its FOP over QUIC, alone after the FOK natively.
    TcpSyn,
}

fn a_full_pair_s_new_flow_evicts_only_at_the_opener(force: Force, first: First) {
    let (mut sim, a, b) = both_small(9, force);
    for port in 20_000..20_008 {
        sim.send_udp(a, b, port, 53, b"fill");
        sim.run_for(Duration::from_millis(150));
    }
    sim.run_for(Duration::from_secs(2));
    let (controls, wire) = (sim.controls.len(), sim.wire().len());
    match first {
        First::Udp => sim.send_udp(a, b, 20_008, 53, b"ninth"),
        First::BigUdp => {
            let mut big = b"ninth".to_vec();
            big.resize(1200, b'.');
            sim.send_udp(a, b, 20_008, 53, &big);
        }
        First::TcpSyn => {
            let syn = tcp_syn(sim.nodes[a].overlay, sim.nodes[b].overlay, 20_008, 80);
            sim.send_packet(a, &syn);
        }
    }
    sim.run_for(Duration::from_millis(150));
    assert!(holds(&sim, b, 20_008), "b has no entry for the new flow");
    if first != First::TcpSyn {
        assert_eq!(received(&sim, b, b"ninth"), 1);
    }
    // Beside its FOP, the big one came after it: never parked.
    assert_eq!(sim.counter(b, "data_in_parked"), 0);
    assert_eq!(sim.counter(a, "flows_evicted"), 1);
    assert_eq!(sim.counter(a, "dprp_evict_sent"), 1);
    assert_eq!(sim.counter(b, "flows_evicted_by_peer"), 1);
    assert_eq!(
        sim.counter(b, "flows_evicted"),
        0,
        "b evicted a flow of its own: the FOP came before the EVICT"
    );
    // a's DPRP in the order it left, on either carrier.
    let quic = sim.controls[controls..]
        .iter()
        .filter(|f| f.from == a)
        .map(|f| f.payload.clone());
    let native = sim.wire()[wire..]
        .iter()
        .filter(|f| f.from == a && f.native)
        .filter_map(|f| {
            let p = Packet::parse(&f.payload[..]).ok()?;
            (p.flow_id().dst_port == super::PROBE_PORT).then(|| p.payload().to_vec())
        });
    let sent: Vec<msg::Message> = quic
        .chain(native)
        .filter_map(|b| msg::Message::decode(&b).ok())
        .collect();
    let evict = sent
        .iter()
        .position(|m| matches!(m, msg::Message::Evict(_)));
    let fop = sent
        .iter()
        .position(|m| matches!(m, msg::Message::Fop(f) if f.flow.src_port == 20_008));
    let (Some(evict), Some(fop)) = (evict, fop) else {
        panic!("no EVICT or no FOP: {evict:?} {fop:?}");
    };
    assert!(evict < fop, "the FOP left before the notice");
    sim.check_invariants();
}

#[test]
fn over_quic_a_full_pair_s_new_udp_flow_evicts_only_at_the_opener() {
    a_full_pair_s_new_flow_evicts_only_at_the_opener(Force::Quic, First::Udp);
}

#[test]
fn over_quic_a_full_pair_s_new_tcp_flow_evicts_only_at_the_opener() {
    a_full_pair_s_new_flow_evicts_only_at_the_opener(Force::Quic, First::TcpSyn);
}

#[test]
fn on_the_native_path_a_full_pair_s_new_tcp_flow_evicts_only_at_the_opener() {
    a_full_pair_s_new_flow_evicts_only_at_the_opener(Force::Native, First::TcpSyn);
}

#[test]
fn on_the_native_path_a_full_pair_s_new_udp_flow_evicts_only_at_the_opener() {
    a_full_pair_s_new_flow_evicts_only_at_the_opener(Force::Native, First::Udp);
}

#[test]
fn over_quic_a_full_pair_s_new_flow_with_a_big_first_packet_evicts_only_at_the_opener() {
    a_full_pair_s_new_flow_evicts_only_at_the_opener(Force::Quic, First::BigUdp);
}
