//! Data-path workers in the simulator (design note 67, step b). A worker
//! repeats what the core installed for a flow; the core raises epochs and
//! the PIT retires cipher states whenever the outcome may change. So the
//! same scenario run with and without a worker per node must put the same
//! bytes on the wire and into every TUN and leave the same counters, while
//! the workers carry most of the packets. Each scenario crosses one thing
//! that must take a flow back from the workers: a path switch both ways, a
//! rotation and a revocation, a rekey at the packet limit, a move with its
//! hold, a NAT binding; and one where every packet changes family on the
//! way (IPv6 overlay on an IPv4 wire, IPv4 overlay on an IPv6 wire). The
//! last ones open new flows beside a long one (design note 79): no
//! install may be taken back for them, and an opener's worker opens the
//! answers with installs made at the fast opens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use fpn_proto::ge::{GroupId, Mode};
use fpn_proto::keys::KeyVersion;
use fpn_proto::path::{Force, PathConfig};

use super::Command;
use super::sim::{CoreSim, LinkConfig, SimNat, group_key};

/// What a run leaves to compare.
#[derive(Debug, PartialEq, Eq)]
struct Trace {
    /// Every data frame: sender, native or not, bytes.
    wire: Vec<(usize, bool, Vec<u8>)>,
    /// Every node's TUN writes.
    tuns: Vec<Vec<Vec<u8>>>,
    /// Every node's counters.
    counters: Vec<BTreeMap<String, u64>>,
}

fn trace(sim: &CoreSim) -> Trace {
    Trace {
        wire: sim
            .wire()
            .iter()
            .map(|f| (f.from, f.native, f.payload.clone()))
            .collect(),
        tuns: sim.nodes.iter().map(|n| n.tun.clone()).collect(),
        counters: sim.nodes.iter().map(|n| n.core.counters()).collect(),
    }
}

/// Packets the workers took, and packets the hosts sent or received
/// (TUN writes plus the data frames on the wire), over every node.
fn shares(sim: &CoreSim) -> (u64, u64) {
    let carried = sim
        .nodes
        .iter()
        .map(|n| n.worker.as_ref().map_or(0, |w| w.carried()))
        .sum();
    let packets =
        sim.nodes.iter().map(|n| n.tun.len() as u64).sum::<u64>() + sim.wire().len() as u64;
    (carried, packets)
}

/// Runs `scenario` without and with workers: the two traces must be the
/// same, and the workers must have carried at least `min_share` of the
/// packets (so the scenario exercises them).
fn same_with_workers(scenario: fn(bool) -> CoreSim, min_share: f64) {
    let without = scenario(false);
    let with = scenario(true);
    assert!(without.nodes.iter().all(|n| n.worker.is_none()));
    let (a, b) = (trace(&without), trace(&with));
    for (i, (x, y)) in a.counters.iter().zip(&b.counters).enumerate() {
        for (k, v) in x {
            assert_eq!(Some(v), y.get(k), "node {i} counter {k}");
        }
    }
    for (i, (x, y)) in a.tuns.iter().zip(&b.tuns).enumerate() {
        assert_eq!(x.len(), y.len(), "node {i}: TUN writes");
        assert!(x == y, "node {i}: TUN contents differ");
    }
    assert_eq!(a.wire.len(), b.wire.len(), "frames on the wire");
    if let Some(k) = a.wire.iter().zip(&b.wire).position(|(x, y)| x != y) {
        panic!(
            "frame {k} differs: {:?} / {:?} (sender, native, len)",
            (a.wire[k].0, a.wire[k].1, a.wire[k].2.len()),
            (b.wire[k].0, b.wire[k].1, b.wire[k].2.len())
        );
    }
    let (carried, packets) = shares(&with);
    eprintln!("workers carried {carried} of {packets} packets");
    assert!(
        carried as f64 >= min_share * packets as f64,
        "workers carried {carried} of {packets} packets"
    );
}

/// a's first packet of the flow, negotiated before b answers (when both
/// ends open it at once, the second negotiation replaces the first and
/// packets under the old keys are opened by the core for the grace).
fn open_flow(sim: &mut CoreSim, a: usize, b: usize) {
    sim.send_udp(a, b, 4000, 5000, b"open");
    sim.drive();
}

/// Both ways on one flow, `rounds` times, `gap` apart.
fn stream(sim: &mut CoreSim, a: usize, b: usize, rounds: usize, gap: Duration) {
    for k in 0..rounds {
        sim.send_udp(a, b, 4000, 5000, format!("a2b-{k}").as_bytes());
        sim.run_for(gap / 2);
        sim.send_udp(b, a, 5000, 4000, format!("b2a-{k}").as_bytes());
        sim.run_for(gap / 2);
    }
}

fn pair(seed: u64, workers: bool, force: Force, link: LinkConfig) -> (CoreSim, usize, usize) {
    pair_with(seed, workers, false, force, link)
}

/// As [`pair`], with fast open (new flows of a pair that negotiated once
/// open without a negotiation) on or off.
fn pair_with(
    seed: u64,
    workers: bool,
    fast_open: bool,
    force: Force,
    link: LinkConfig,
) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, link);
    sim.workers = workers;
    sim.fast_open = fast_open;
    sim.path = PathConfig {
        force,
        ..PathConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    (sim, a, b)
}

/// An IPv6 flow on an IPv4 wire (a, b), then an IPv4 flow on an IPv6
/// wire (c, d): the workers change each packet's family as the core does.
fn families_crossing(workers: bool) -> CoreSim {
    use super::ipv6_tests::{overlay6, to_v6_underlay, udp6};
    let (mut sim, a, b) = pair(66, workers, Force::Auto, LinkConfig::default());
    let c = sim.add_node(3, Mode::Open, &[1]);
    let d = sim.add_node(4, Mode::Open, &[1]);
    to_v6_underlay(&mut sim, &[c, d], None);
    sim.run_for(Duration::from_millis(500));
    let (a6, b6) = (overlay6(&sim, a), overlay6(&sim, b));
    // Each flow negotiated by one end first (see `open_flow`).
    sim.send_packet(a, &udp6(a6, b6, 4000, 5000, b"open"));
    open_flow(&mut sim, c, d);
    for k in 0..200 {
        let m = format!("six-{k}");
        sim.send_packet(a, &udp6(a6, b6, 4000, 5000, m.as_bytes()));
        sim.run_for(MS20 / 2);
        sim.send_packet(b, &udp6(b6, a6, 5000, 4000, m.as_bytes()));
        sim.run_for(MS20 / 2);
    }
    stream(&mut sim, c, d, 200, MS20);
    for (x, y) in [(a, b), (c, d)] {
        let snap = sim.nodes[x].core.snapshot(&[]);
        let peer = snap.peers.iter().find(|p| p.ge == sim.nodes[y].ge.0);
        assert_eq!(peer.map(|p| p.carrier.as_str()), Some("native"));
        assert!(sim.counter(y, "native_in") >= 190, "node {y}");
    }
    sim
}

#[test]
fn packets_that_change_family_on_the_wire_are_the_same_with_workers() {
    same_with_workers(families_crossing, 0.8);
}

fn carrier(sim: &CoreSim, i: usize) -> String {
    sim.nodes[i].core.snapshot(&[]).peers[0].carrier.clone()
}

const MS20: Duration = Duration::from_millis(20);
const MS100: Duration = Duration::from_millis(100);

fn native_blocked_and_back(workers: bool) -> CoreSim {
    let (mut sim, a, b) = pair(61, workers, Force::Auto, LinkConfig::default());
    sim.run_for(Duration::from_millis(500));
    open_flow(&mut sim, a, b);
    stream(&mut sim, a, b, 40, MS20);
    assert_eq!(carrier(&sim, a), "native");
    // A firewall drops the flows' raw packets (probes pass): QUIC within
    // 3 s, then native again once it lets them through.
    sim.native_data_blocked = true;
    stream(&mut sim, a, b, 200, MS20);
    assert_eq!(carrier(&sim, a), "quic");
    sim.native_data_blocked = false;
    stream(&mut sim, a, b, 350, Duration::from_millis(100));
    assert_eq!(carrier(&sim, a), "native");
    stream(&mut sim, a, b, 40, MS20);
    sim
}

#[test]
fn a_path_switch_both_ways_is_the_same_with_workers() {
    same_with_workers(native_blocked_and_back, 0.5);
}

fn rotation_then_revocation(workers: bool) -> CoreSim {
    let link = LinkConfig {
        loss: 0.05,
        reorder: 0.05,
        duplicate: 0.02,
        jitter: Duration::from_millis(3),
        ..LinkConfig::default()
    };
    let (mut sim, a, b) = pair(62, workers, Force::Quic, link);
    stream(&mut sim, a, b, 100, MS20);
    let keys = || Command::Keys {
        group: GroupId(1),
        keys: vec![
            (KeyVersion(2), group_key(1, 2)),
            (KeyVersion(1), group_key(1, 1)),
        ],
    };
    sim.command(a, keys());
    sim.command(b, keys());
    // Through the renegotiation and the old keys' grace.
    stream(&mut sim, a, b, 300, MS20);
    let ge = sim.nodes[b].ge;
    sim.command(
        a,
        Command::Revoked {
            ge,
            serials: vec![2],
        },
    );
    stream(&mut sim, a, b, 50, MS20);
    sim
}

#[test]
fn a_rotation_and_a_revocation_are_the_same_with_workers() {
    same_with_workers(rotation_then_revocation, 0.5);
}

fn rekeys_at_the_packet_limit(workers: bool) -> CoreSim {
    let mut sim = CoreSim::new(63, LinkConfig::default());
    sim.workers = workers;
    sim.pit.limits.rekey_after = 60;
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    stream(&mut sim, a, b, 400, MS20);
    assert!(sim.counter(a, "dprp_started") + sim.counter(b, "dprp_started") >= 4);
    sim
}

#[test]
fn rekeys_at_the_packet_limit_are_the_same_with_workers() {
    // Every 60 packets a new negotiation, and the old keys' grace: the
    // core opens inbound packets while it lasts.
    same_with_workers(rekeys_at_the_packet_limit, 0.4);
}

fn a_move_with_its_hold(workers: bool) -> CoreSim {
    let (mut sim, a, b) = pair(64, workers, Force::Auto, LinkConfig::default());
    sim.run_for(Duration::from_millis(500));
    open_flow(&mut sim, a, b);
    stream(&mut sim, a, b, 50, MS20);
    let new: SocketAddr = "198.18.9.1:7718".parse().unwrap();
    sim.move_node(a, new);
    sim.announce(a);
    sim.network_change(a, "address 198.18.9.1 added (if 2)");
    stream(&mut sim, a, b, 100, MS20);
    assert_eq!(carrier(&sim, a), "native");
    sim
}

#[test]
fn a_move_is_the_same_with_workers() {
    same_with_workers(a_move_with_its_hold, 0.5);
}

fn through_a_port_rewriting_nat(workers: bool) -> CoreSim {
    let (mut sim, a, b) = pair(65, workers, Force::Auto, LinkConfig::default());
    sim.nodes[a].nat = Some(SimNat::new(true, true));
    sim.run_for(Duration::from_secs(2));
    open_flow(&mut sim, a, b);
    stream(&mut sim, a, b, 100, MS20);
    assert!(sim.counter(b, "native_bindings") >= 1);
    // The NAT forgets its mappings: new ports, bound again.
    if let Some(nat) = sim.nodes[a].nat.as_mut() {
        nat.forget_mappings();
    }
    stream(&mut sim, a, b, 200, MS20);
    sim
}

#[test]
fn a_nat_binding_is_the_same_with_workers() {
    same_with_workers(through_a_port_rewriting_nat, 0.5);
}

fn carried(sim: &CoreSim, i: usize) -> u64 {
    sim.nodes[i].worker.as_ref().map_or(0, |w| w.carried())
}

fn delivered(sim: &CoreSim, i: usize, marker: &[u8]) -> bool {
    sim.nodes[i].tun.iter().any(|p| p.ends_with(marker))
}

#[test]
fn a_revocation_stops_the_workers_at_their_next_packet() {
    let (mut sim, a, b) = pair(66, true, Force::Quic, LinkConfig::default());
    open_flow(&mut sim, a, b);
    stream(&mut sim, a, b, 20, MS20);
    let before = carried(&sim, a);
    assert!(before >= 30, "a's worker carried {before}");
    let ge = sim.nodes[b].ge;
    sim.command(
        a,
        Command::Revoked {
            ge,
            serials: vec![2],
        },
    );
    sim.send_udp(a, b, 4000, 5000, b"after");
    sim.drive();
    assert_eq!(
        carried(&sim, a),
        before,
        "the worker took a packet after the revocation"
    );
    assert!(!delivered(&sim, b, b"after"));
}

#[test]
fn a_flow_only_workers_carry_ages_out_one_idle_timeout_after_its_last_packet() {
    let idle = Duration::from_secs(5);
    let mut sim = CoreSim::new(67, LinkConfig::default());
    sim.workers = true;
    sim.pit.idle_timeout = idle;
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    open_flow(&mut sim, a, b);
    stream(&mut sim, a, b, 100, MS20);
    assert!(carried(&sim, a) >= 150 && carried(&sim, b) >= 150);
    // The workers' use counts: the flow lives one idle timeout after its
    // last packet...
    sim.run_for(idle - Duration::from_millis(500));
    for i in [a, b] {
        assert_eq!(sim.counter(i, "pit_entries"), 1, "node {i}");
    }
    // ...and is gone within the ageing wheel's one-second slot after
    // that. (A use taken without its time counts from when the core took
    // it, an idle timeout after the flow's start: the entry would live
    // up to another idle timeout.)
    sim.run_for(Duration::from_secs(2));
    for i in [a, b] {
        assert_eq!(sim.counter(i, "pit_entries"), 0, "node {i}");
    }
    // Its install went with it: the next packet is the core's, which
    // negotiates the flow again.
    let (carried_a, started) = (carried(&sim, a), sim.counter(a, "dprp_started"));
    sim.send_udp(a, b, 4000, 5000, b"again");
    sim.drive();
    assert_eq!(carried(&sim, a), carried_a);
    assert_eq!(sim.counter(a, "dprp_started"), started + 1);
    assert!(delivered(&sim, b, b"again"));
}

/// A directory record of a third peer arrives while a and b talk: a's
/// installs for b stay in use (only c's epoch moves), while a record of b
/// itself makes them stale.
#[test]
fn a_third_peers_record_leaves_the_installs_in_use_and_the_peers_own_does_not() {
    let (mut sim, a, b) = pair(67, true, Force::Auto, LinkConfig::default());
    let c = sim.add_node(3, Mode::Open, &[1]);
    sim.introduce_all();
    sim.run_for(Duration::from_millis(500));
    open_flow(&mut sim, a, b);
    stream(&mut sim, a, b, 20, MS20);
    let carried = |sim: &CoreSim| sim.nodes[a].worker.as_ref().map_or(0, |w| w.carried());
    let one_packet = |sim: &mut CoreSim| {
        let before = carried(sim);
        sim.send_udp(a, b, 4000, 5000, b"next");
        sim.run_for(MS20);
        carried(sim) - before
    };
    assert_eq!(one_packet(&mut sim), 1, "a's worker carries the flow");
    let record = sim.record(c);
    sim.command(a, Command::Peer(record));
    assert_eq!(
        one_packet(&mut sim),
        1,
        "c's record made a's flow to b stale"
    );
    let record = sim.record(b);
    sim.command(a, Command::Peer(record));
    assert_eq!(
        one_packet(&mut sim),
        0,
        "b's own record left a stale install in use"
    );
}

/// New flows to the same peer while a and b talk natively on one flow (a
/// storm beside a long transfer): the long flow's installs stay in use
/// (design note 79). Before, every new flow's translation raised the
/// peer's epoch and sent the long flow's next packet each way back
/// through the core.
fn new_flows_beside_a_long_one(workers: bool) -> CoreSim {
    new_flows_beside_a_long_one_with(workers, false)
}

fn new_flows_beside_a_long_one_with(workers: bool, fast_open: bool) -> CoreSim {
    let (mut sim, a, b) = pair_with(68, workers, fast_open, Force::Auto, LinkConfig::default());
    sim.run_for(Duration::from_millis(500));
    open_flow(&mut sim, a, b);
    stream(&mut sim, a, b, 40, MS20);
    assert_eq!(carrier(&sim, a), "native");
    for k in 0..40u16 {
        new_flow_answered(&mut sim, a, b, 6000 + k);
        stream(&mut sim, a, b, 2, MS20);
    }
    sim
}

/// A new UDP flow from a's `port` to b's 7000, one packet each way.
fn new_flow_answered(sim: &mut CoreSim, a: usize, b: usize, port: u16) {
    sim.send_udp(a, b, port, 7000, b"new");
    sim.run_for(MS20);
    sim.send_udp(b, a, 7000, port, b"answer");
}

#[test]
fn new_flows_beside_a_long_one_are_the_same_with_workers() {
    same_with_workers(new_flows_beside_a_long_one, 0.4);
}

/// The same with every new flow fast-opened: the opener's workers open the
/// answers with the installs made at the fast opens (design note 79).
#[test]
fn fast_opened_flows_beside_a_long_one_are_the_same_with_workers() {
    same_with_workers(|w| new_flows_beside_a_long_one_with(w, true), 0.4);
}

#[test]
fn a_new_flow_leaves_the_peers_other_installs_in_use() {
    let (mut sim, a, b) = pair(69, true, Force::Auto, LinkConfig::default());
    sim.run_for(Duration::from_millis(500));
    open_flow(&mut sim, a, b);
    stream(&mut sim, a, b, 40, MS20);
    assert_eq!(carrier(&sim, a), "native");
    let (before_a, before_b) = (carried(&sim, a), carried(&sim, b));
    for k in 0..20u16 {
        new_flow_answered(&mut sim, a, b, 6000 + k);
        // One packet each way on the long flow after each new flow.
        stream(&mut sim, a, b, 1, MS20);
    }
    for (i, before) in [(a, before_a), (b, before_b)] {
        let n = sim.counter(i, "native_in");
        assert!(n > 0, "node {i} took no native packet");
        // Each end's worker sends the long flow's packet and opens the
        // peer's: two per new flow, none of them left to the core.
        assert!(
            carried(&sim, i) - before >= 2 * 20,
            "node {i}: its worker carried {} of the long flow's 40 packets",
            carried(&sim, i) - before
        );
    }
}

/// The answer to a fast-opened flow's first packet: the opener's worker
/// opens it with the install made at the fast open (design note 79), not
/// the core after a hand-over.
#[test]
fn the_openers_worker_opens_the_answer_to_a_fast_opened_flow() {
    let (mut sim, a, b) = pair_with(70, true, true, Force::Auto, LinkConfig::default());
    sim.run_for(Duration::from_millis(500));
    open_flow(&mut sim, a, b);
    stream(&mut sim, a, b, 20, MS20);
    assert_eq!(carrier(&sim, a), "native");
    let (fast, native_in, before) = (
        sim.counter(a, "dprp_fast_opened"),
        sim.counter(a, "native_in"),
        carried(&sim, a),
    );
    sim.send_udp(a, b, 6100, 7000, b"question");
    sim.run_for(MS100);
    assert_eq!(sim.counter(a, "dprp_fast_opened"), fast + 1);
    assert!(delivered(&sim, b, b"question"));
    sim.send_udp(b, a, 7000, 6100, b"answer");
    sim.run_for(MS100);
    assert!(delivered(&sim, a, b"answer"));
    assert_eq!(sim.counter(a, "native_in"), native_in + 1, "not native");
    assert_eq!(
        carried(&sim, a) - before,
        1,
        "a's worker did not open the answer"
    );
    // The worker's report told the core what the packet would have: the
    // flow is heard (through a NAT of the peer's, if any).
    let heard = &sim.nodes[a].core.paths.heard;
    assert!(
        heard
            .iter()
            .any(|f| f.src_port == 6100 && f.dst_port == 7000),
        "a's core did not learn of the answer"
    );
}

/// New flows to a peer behind a NAT: the opener sends copies natively
/// until a packet of the flow came in through the NAT (`heard`), which
/// its worker now reports instead of the core seeing it (design note 79).
fn new_flows_to_a_peer_behind_a_nat(workers: bool) -> CoreSim {
    let (mut sim, a, b) = pair_with(71, workers, true, Force::Auto, LinkConfig::default());
    // Ports kept: b's answers come from the ports the translation expects,
    // so the install made at the fast open takes them.
    sim.nodes[b].nat = Some(SimNat::new(false, true));
    sim.run_for(Duration::from_secs(2));
    open_flow(&mut sim, a, b);
    stream(&mut sim, a, b, 40, MS20);
    for k in 0..30u16 {
        let port = 6000 + k;
        sim.send_udp(a, b, port, 7000, b"new");
        sim.run_for(MS100);
        sim.send_udp(b, a, 7000, port, b"answer");
        sim.run_for(MS100);
        sim.send_udp(a, b, port, 7000, b"again");
        stream(&mut sim, a, b, 1, MS20);
    }
    sim
}

#[test]
fn new_flows_to_a_peer_behind_a_nat_are_the_same_with_workers() {
    same_with_workers(new_flows_to_a_peer_behind_a_nat, 0.3);
}
