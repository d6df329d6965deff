//! Node cores in the simulator: real DPRP endpoints, PITs, PCCOM and
//! credentials between cores on a simulated network. (The real carrier and
//! TUN are exercised by the lab's acceptance tests.)

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use fpn_proto::ge::{GeId, GroupId, Mode};
use fpn_proto::keys::KeyVersion;

use super::Command;
use super::sim::{CoreSim, LinkConfig, group_key, udp_packet};
use crate::carrier::FrameKind;
use crate::directory::PeerRecord;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Two open nodes sharing group 1 that know where the other is.
fn open_pair(seed: u64) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    (sim, a, b)
}

/// A flow from `a` to `b` (ports 4000 -> 5000), established.
fn established_pair(seed: u64) -> (CoreSim, usize, usize) {
    let (mut sim, a, b) = open_pair(seed);
    sim.send_udp(a, b, 4000, 5000, b"x");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 1);
    (sim, a, b)
}

fn flows(sim: &CoreSim, i: usize) -> Vec<crate::status::FlowStatus> {
    sim.nodes[i].core.snapshot(&[]).flows
}

#[test]
fn the_first_packet_is_held_negotiated_and_delivered_encrypted() {
    let (mut sim, a, b) = open_pair(1);
    let pkt = udp_packet(
        sim.nodes[a].overlay,
        sim.nodes[b].overlay,
        4000,
        5000,
        b"MARKER-first-packet",
    );
    sim.send_packet(a, &pkt);
    assert_eq!(sim.counter(a, "held"), 1);
    assert_eq!(sim.counter(a, "dprp_started"), 1);
    assert!(sim.nodes[b].tun.is_empty());
    sim.drive();
    // Exactly the application's packet came out at b (PCCOM filled in the
    // UDP checksum the sender left 0), and the wire never carried its
    // payload in the clear.
    let got = &sim.nodes[b].tun;
    assert_eq!(got.len(), 1);
    assert_eq!((&got[0][..26], &got[0][28..]), (&pkt[..26], &pkt[28..]));
    assert_eq!(sim.wire().len(), 1);
    assert!(!contains(&sim.wire()[0].payload, b"MARKER"));
    // Both ends hold the one entry, keyed from version 1.
    for i in [a, b] {
        let f = flows(&sim, i);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].action.as_str(), f[0].carrier.as_str()),
            ("encrypt", "quic")
        );
        assert_eq!(f[0].key_version, Some(1));
    }
    // The reply travels under the same entry, no new negotiation.
    let reply = udp_packet(
        sim.nodes[b].overlay,
        sim.nodes[a].overlay,
        5000,
        4000,
        b"MARKER-reply",
    );
    sim.send_packet(b, &reply);
    sim.drive();
    let got = sim.nodes[a].tun.last().cloned().unwrap();
    assert_eq!((&got[..26], &got[28..]), (&reply[..26], &reply[28..]));
    let f = flows(&sim, a);
    assert_eq!((f[0].packets_out, f[0].packets_in), (1, 1));
    assert_eq!(sim.counter(a, "dprp_started"), 1);
    assert_eq!(sim.counter(b, "dprp_started"), 0);
    assert_eq!(sim.counter(a, "data_out") + sim.counter(b, "data_out"), 2);
}

#[test]
fn a_closed_peer_without_a_shared_group_is_refused_with_icmp_at_once() {
    let mut sim = CoreSim::new(2, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let c = sim.add_node(3, Mode::Closed, &[2]);
    sim.introduce_all();
    let pkt = udp_packet(
        sim.nodes[a].overlay,
        sim.nodes[c].overlay,
        4000,
        22,
        b"hello",
    );
    sim.send_packet(a, &pkt);
    sim.drive();
    assert!(sim.nodes[c].tun.is_empty());
    let icmp = sim.nodes[a].tun.last().cloned().expect("an ICMP error");
    assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 13));
    assert_eq!(&icmp[28..56], &pkt[..28]);
    let f = flows(&sim, a);
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].action.as_str(), f[0].peer), ("refuse", Some(3)));
    assert_eq!(sim.counter(a, "refused_flows"), 1);
    assert_eq!(sim.counter(a, "pit_entries"), 0);
    // The next packet of the flow is refused at once from the negative entry.
    sim.send_packet(a, &pkt);
    assert_eq!(sim.counter(a, "icmp_sent"), 2);
    assert_eq!(sim.counter(a, "dprp_started"), 1);
    // The refused flow leaves `status` after a minute, by its deadline.
    sim.run_for(Duration::from_secs(61));
    assert!(flows(&sim, a).is_empty());
}

#[test]
fn open_nodes_without_a_shared_group_talk_in_plain() {
    let mut sim = CoreSim::new(3, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let e = sim.add_node(5, Mode::Open, &[3]);
    sim.introduce_all();
    sim.send_udp(a, e, 4000, 5000, b"PLAIN-marker");
    sim.drive();
    let got = &sim.nodes[e].tun;
    assert_eq!(got.len(), 1);
    assert!(contains(&got[0], b"PLAIN-marker"));
    assert!(contains(&sim.wire()[0].payload, b"PLAIN-marker"));
    assert_eq!(flows(&sim, a)[0].action, "plain");
    assert_eq!(flows(&sim, e)[0].key_version, None);
}

#[test]
fn packets_from_a_ge_other_than_the_flows_peer_are_dropped() {
    let (mut sim, a, b) = established_pair(4);
    let _ = a;
    // The same protected bytes, replayed by another authenticated GE.
    let forged = sim.wire()[0].payload.clone();
    let from = SocketAddr::from(([198, 18, 0, 9], 7718));
    sim.inject(b, GeId(9), from, FrameKind::Data, &forged);
    assert_eq!(sim.counter(b, "data_in_wrong_peer"), 1);
    assert_eq!(sim.nodes[b].tun.len(), 1);
    // Replayed by the right peer: PCCOM's replay window refuses it.
    let from_a = sim.nodes[a].underlay;
    sim.inject(b, sim.nodes[a].ge, from_a, FrameKind::Data, &forged);
    assert_eq!(sim.counter(b, "data_in_replayed"), 1);
    assert_eq!(sim.nodes[b].tun.len(), 1);
}

#[test]
fn after_a_rotation_only_the_initiator_renegotiates_and_traffic_goes_on() {
    let (mut sim, a, b) = established_pair(5);
    let keys = || Command::Keys {
        group: GroupId(1),
        keys: vec![
            (KeyVersion(2), group_key(1, 2)),
            (KeyVersion(1), group_key(1, 1)),
        ],
    };
    let sent = sim.stats.sent;
    sim.command(a, keys());
    sim.command(b, keys());
    // Nothing happens at once; the old entry keeps carrying packets.
    assert_eq!(sim.stats.sent, sent);
    sim.send_udp(a, b, 4000, 5000, b"two");
    sim.drive();
    assert_eq!(flows(&sim, b)[0].key_version, Some(1));
    // The renegotiation is a deadline 1.5 s later, on the initiator only.
    let (at, timer) = sim.nodes[a].core.poll_timeout().unwrap();
    assert!(matches!(timer, super::Timer::Renegotiate(_)), "{timer:?}");
    let wait = at - sim.now();
    assert!(wait > Duration::from_millis(1400) && wait <= Duration::from_millis(1500));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.counter(a, "dprp_started"), 2);
    assert_eq!(sim.counter(b, "dprp_started"), 0);
    assert_eq!(flows(&sim, a)[0].key_version, Some(2));
    assert_eq!(flows(&sim, b)[0].key_version, Some(2));
    sim.send_udp(b, a, 5000, 4000, b"three");
    sim.send_udp(a, b, 4000, 5000, b"four");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 3);
    assert_eq!(sim.nodes[a].tun.len(), 1);
    assert_eq!(
        sim.counter(a, "data_in_rejected") + sim.counter(b, "data_in_rejected"),
        0
    );
}

#[test]
fn a_revoked_peer_loses_its_flows_at_once() {
    let (mut sim, a, b) = established_pair(6);
    sim.command(
        a,
        Command::Revoked {
            ge: sim.nodes[b].ge,
            serials: vec![2],
        },
    );
    assert!(flows(&sim, a).is_empty());
    assert_eq!(sim.counter(a, "revoked_flows"), 1);
    // A new negotiation with the revoked credential fails.
    sim.send_udp(a, b, 4001, 5000, b"y");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 1);
    assert_eq!(sim.counter(a, "pit_entries"), 0);
}

#[test]
fn packets_of_a_flow_this_node_forgot_make_it_negotiate_again() {
    let (mut sim, a, b) = open_pair(7);
    sim.send_udp(b, a, 5000, 4000, b"x");
    sim.drive();
    // a restarts: a fresh core, same identity, no flows.
    sim.restart(a);
    sim.introduce(a, b);
    sim.send_udp(b, a, 5000, 4000, b"lost");
    sim.drive();
    assert_eq!(sim.counter(a, "data_in_no_flow"), 1);
    assert_eq!(sim.counter(a, "dprp_started"), 1);
    // a negotiated the flow again: b's next packet arrives.
    sim.send_udp(b, a, 5000, 4000, b"back");
    sim.drive();
    let got = &sim.nodes[a].tun;
    assert_eq!(got.len(), 2);
    assert!(contains(&got[1], b"back"));
}

#[test]
fn many_packets_over_a_lossy_reordering_link_arrive_once_each() {
    let (mut sim, a, b) = established_pair(8);
    let link = LinkConfig {
        latency: Duration::from_millis(10),
        jitter: Duration::from_millis(5),
        loss: 0.05,
        duplicate: 0.05,
        reorder: 0.1,
    };
    sim.set_link(link);
    let n = 2000u32;
    for i in 0..n {
        sim.send_udp(a, b, 4000, 5000, format!("pkt-{i:05}").as_bytes());
        sim.run_for(Duration::from_micros(500));
    }
    sim.drive();
    let got: Vec<u32> = sim.nodes[b].tun[1..]
        .iter()
        .map(|p| std::str::from_utf8(&p[32..37]).unwrap().parse().unwrap())
        .collect();
    let unique: BTreeSet<u32> = got.iter().copied().collect();
    // Every packet that arrived was taken exactly once, in whatever order.
    assert_eq!(unique.len(), got.len());
    assert!(
        got.windows(2).any(|w| w[0] > w[1]),
        "no reordering happened"
    );
    let st = sim.stats;
    assert!(st.lost > 0 && st.duplicated > 0);
    // The losses are the link's: all the rest came through, duplicates were
    // refused by the replay window and nothing else was.
    assert_eq!(
        got.len() as u64 + 1,
        sim.counter(b, "data_in") - sim.counter(b, "data_in_replayed")
    );
    assert!(sim.counter(b, "data_in_replayed") > 0);
    assert_eq!(sim.counter(b, "data_in_rejected"), 0);
    assert!(got.len() as u32 > n * 9 / 10, "{} of {n}", got.len());
    assert_eq!(flows(&sim, a)[0].packets_out, u64::from(n) + 1);
}

#[test]
fn a_node_that_moves_keeps_its_flow_once_the_directory_tells() {
    let (mut sim, a, b) = established_pair(9);
    let moved = SocketAddr::from(([198, 18, 1, 2], 7718));
    sim.move_node(b, moved);
    // a still dials the old address: lost.
    let lost = sim.stats.undeliverable;
    sim.send_udp(a, b, 4000, 5000, b"to-old");
    sim.drive();
    assert_eq!(sim.stats.undeliverable, lost + 1);
    assert_eq!(sim.nodes[b].tun.len(), 1);
    // b's packets come from the new address; a sees it there.
    sim.send_udp(b, a, 5000, 4000, b"from-new");
    sim.drive();
    assert_eq!(sim.nodes[a].tun.len(), 1);
    // The directory pushes b's new record: a dials the new address.
    sim.announce(b);
    sim.send_udp(a, b, 4000, 5000, b"to-new");
    sim.drive();
    assert!(contains(sim.nodes[b].tun.last().unwrap(), b"to-new"));
    let peer = sim.nodes[a].core.peers().get(sim.nodes[b].ge).unwrap();
    assert_eq!(peer.target.addrs, vec![moved]);
    // The same entry and keys all along: no new negotiation.
    assert_eq!(
        sim.counter(a, "dprp_started") + sim.counter(b, "dprp_started"),
        1
    );
    let f = flows(&sim, a);
    assert_eq!(
        (f[0].key_version, f[0].packets_out, f[0].packets_in),
        (Some(1), 3, 1)
    );
}

#[test]
fn a_directory_update_that_moves_the_address_to_another_ge_ends_the_flow() {
    let (mut sim, a, b) = established_pair(10);
    // The directory now says b's overlay address belongs to GE 3.
    sim.command(
        a,
        Command::Peer(PeerRecord {
            name: "n3".into(),
            ge: 3,
            overlay: sim.nodes[b].overlay,
            addrs: vec![SocketAddr::from(([198, 18, 0, 3], 7718))],
            reflexive: None,
            fetched: 1,
            key: None,
            info: None,
        }),
    );
    assert_eq!(sim.counter(a, "pit_entries"), 0);
    assert_eq!(sim.counter(a, "flows_unbound"), 1);
    assert_eq!(
        sim.nodes[a].core.peers().owner(sim.nodes[b].overlay),
        Some(GeId(3))
    );
    // b's packets on the old flow are no longer taken.
    sim.send_udp(b, a, 5000, 4000, b"stale");
    sim.drive();
    assert!(sim.nodes[a].tun.is_empty());
}

#[test]
fn a_peer_gone_from_the_directory_loses_its_flows_at_once() {
    let (mut sim, a, b) = established_pair(11);
    let ge = sim.nodes[b].ge;
    // The names the DNS stub publishes come from the same table.
    assert_eq!(
        sim.nodes[a].core.peer_names(),
        vec![("n2".to_owned(), sim.nodes[b].overlay)]
    );
    let changed = sim.nodes[a].peers_changed;
    sim.command(a, Command::PeerGone(ge));
    assert_eq!(sim.nodes[a].peers_changed, changed + 1);
    assert!(sim.nodes[a].core.peer_names().is_empty());
    assert_eq!(sim.counter(a, "pit_entries"), 0);
    assert!(sim.nodes[a].core.peers().get(ge).is_none());
    assert_eq!(sim.nodes[a].core.peers().owner(sim.nodes[b].overlay), None);
}

#[test]
fn a_flow_from_an_address_without_a_known_owner_is_refused_until_the_directory_answers() {
    let mut sim = CoreSim::new(12, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    // a knows b; b has never heard of a.
    sim.introduce(a, b);
    sim.directory_answers = false;
    sim.send_udp(a, b, 4000, 5000, b"first");
    sim.drive();
    // DPRP authenticated a, but b does not know who owns a's address: it
    // fails closed, asks the directory, and takes none of a's packets.
    assert_eq!(sim.counter(b, "unknown_owner"), 1);
    assert_eq!(sim.counter(b, "pit_entries"), 0);
    assert_eq!(sim.nodes[b].lookups, vec![sim.nodes[a].overlay]);
    assert_eq!(sim.counter(b, "data_in_no_flow"), 1);
    assert!(sim.nodes[b].tun.is_empty());
    assert_eq!(sim.counter(a, "pit_entries"), 1);
    // The directory answers; a's next packet makes b negotiate (healing),
    // and the one after arrives.
    sim.introduce(b, a);
    sim.send_udp(a, b, 4000, 5000, b"second");
    sim.drive();
    assert_eq!(sim.counter(b, "dprp_started"), 1);
    assert_eq!(sim.counter(b, "pit_entries"), 1);
    sim.send_udp(a, b, 4000, 5000, b"third");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 1);
    assert!(contains(&sim.nodes[b].tun[0], b"third"));
    let f = flows(&sim, b);
    assert_eq!((f[0].action.as_str(), f[0].peer), ("encrypt", Some(1)));
}

#[test]
fn when_the_directory_answers_the_refused_flow_is_negotiated_from_this_side() {
    let mut sim = CoreSim::new(13, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce(a, b);
    // A slow directory: a's released first packet reaches b before the
    // answer (and is dropped: no flow, no known owner to heal with).
    sim.directory_delay = Duration::from_millis(300);
    sim.send_udp(a, b, 4000, 5000, b"first");
    sim.drive();
    assert_eq!(sim.counter(b, "data_in_no_flow"), 1);
    // Refused, the directory asked and answered, and b negotiated the flow
    // from its side at the answer: a's next packet arrives.
    assert_eq!(sim.counter(b, "unknown_owner"), 1);
    assert_eq!(sim.nodes[b].lookups, vec![sim.nodes[a].overlay]);
    assert_eq!(sim.counter(b, "dprp_started"), 1);
    assert_eq!(sim.counter(b, "pit_entries"), 1);
    sim.send_udp(a, b, 4000, 5000, b"second");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 1);
    assert!(contains(&sim.nodes[b].tun[0], b"second"));
    let f = flows(&sim, b);
    assert_eq!((f.len(), f[0].action.as_str()), (1, "encrypt"));
}

#[test]
fn idle_flows_age_out_by_deadline_without_a_tick() {
    let (mut sim, a, b) = established_pair(14);
    // PIT ageing is a deadline at the idle timeout, not a periodic tick.
    sim.run_for(Duration::from_secs(15));
    let (at, timer) = sim.nodes[a].core.poll_timeout().unwrap();
    assert_eq!(timer, super::Timer::PitAgeing);
    assert!(at - sim.now() > Duration::from_secs(200));
    sim.run_for(Duration::from_secs(284));
    assert_eq!(sim.counter(a, "pit_entries"), 1);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.counter(a, "pit_entries"), 0);
    assert_eq!(sim.counter(b, "pit_entries"), 0);
    // Nothing left to wake up for.
    assert_eq!(sim.nodes[a].core.poll_timeout(), None);
}

#[test]
fn a_frame_too_large_for_the_carrier_comes_back_as_fragmentation_needed() {
    let (mut sim, a, b) = established_pair(15);
    let pkt = udp_packet(
        sim.nodes[a].overlay,
        sim.nodes[b].overlay,
        4000,
        5000,
        &[7; 1300],
    );
    let (ge, now) = (sim.nodes[b].ge, sim.now());
    let core = &mut sim.nodes[a].core;
    core.handle_send_error(
        ge,
        FrameKind::Data,
        &pkt,
        super::SendError::TooLarge { max: 1300 },
        now,
    );
    let Some(super::Output::Tun(icmp)) = core.poll_output() else {
        panic!("no ICMP error");
    };
    // Type 3 code 4 with the usable MTU (the carrier's room less the PCCOM
    // trailer), quoting the packet's header.
    assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 4));
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1300 - 24);
    assert_eq!(&icmp[28..48], &pkt[..20]);
    assert_eq!(core.poll_output(), None);
    // Any other failure is only counted.
    core.handle_send_error(ge, FrameKind::Data, &pkt, super::SendError::Dropped, now);
    assert_eq!(core.poll_output(), None);
    assert_eq!(sim.counter(a, "too_big"), 1);
    assert_eq!(sim.counter(a, "send_errors"), 1);
}

/// Three nodes in one group, each sending to the others over a lossy,
/// duplicating, reordering link; the UDP packets go out after the first
/// one's negotiation had time to finish.
fn three_nodes_talk(seed: u64) -> CoreSim {
    let mut sim = CoreSim::new(seed, LinkConfig::lossy(0.2));
    for id in 1..=3 {
        sim.add_node(id, Mode::Open, &[1]);
    }
    sim.introduce_all();
    for round in 0..20u16 {
        for from in 0..3 {
            for to in 0..3 {
                if from != to {
                    sim.send_udp(from, to, 4000 + to as u16, 5000, &round.to_be_bytes());
                }
            }
        }
        sim.run_for(Duration::from_millis(500));
    }
    sim.drive();
    sim
}

#[test]
fn several_nodes_negotiate_every_pair_over_a_lossy_link() {
    for seed in 0..8 {
        let sim = three_nodes_talk(seed);
        for i in 0..3 {
            // One flow with each other node (each pair has two: one each way).
            assert_eq!(sim.counter(i, "pit_entries"), 4, "seed {seed} node {i}");
            let f = flows(&sim, i);
            assert!(
                f.iter()
                    .all(|f| f.action == "encrypt" && f.key_version == Some(1))
            );
            // Most rounds arrived, each at most once.
            let got = &sim.nodes[i].tun;
            let unique: BTreeSet<&Vec<u8>> = got.iter().collect();
            assert_eq!(
                unique.len(),
                got.len(),
                "seed {seed}: a duplicate reached the TUN"
            );
            assert!(
                got.len() >= 20,
                "seed {seed} node {i}: {} packets",
                got.len()
            );
            assert_eq!(
                sim.counter(i, "wrong_owner") + sim.counter(i, "unknown_owner"),
                0
            );
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let (one, two, other) = (
        three_nodes_talk(3),
        three_nodes_talk(3),
        three_nodes_talk(4),
    );
    assert_eq!(one.wire_digest(), two.wire_digest());
    assert_eq!(one.stats, two.stats);
    assert_ne!(one.wire_digest(), other.wire_digest());
}

#[test]
fn a_peer_negotiating_for_an_address_another_ge_owns_is_refused() {
    use std::net::{IpAddr, Ipv4Addr};

    use fpn_proto::dprp::{Config, Endpoint, Entropy, Prefix};
    use fpn_proto::flow::FlowId;
    use fpn_proto::ge::{GeInfo, GeKind};
    use fpn_proto::sim::{START_UNIX, node_key};

    let (mut sim, a, b) = open_pair(16);
    // Mallory (GE 9, overlay .9) is a member of group 1 with a valid
    // credential, and runs an endpoint that claims b's address.
    let key = node_key(9);
    let info = GeInfo {
        id: GeId(9),
        name: "mallory".into(),
        kind: GeKind::Ges,
        mode: Mode::Open,
        groups: [GroupId(1)].into_iter().collect(),
        overlay: Ipv4Addr::new(100, 64, 0, 9),
    };
    let cred = sim.issue(info, &key);
    let b_ip = sim.nodes[b].overlay;
    let cfg = Config::new(
        key,
        cred,
        sim.ca_public(),
        vec![Prefix::host(IpAddr::V4(b_ip))],
    );
    let mut mallory = Endpoint::new(cfg, Entropy::Seeded([9; 32]), START_UNIX, sim.now()).unwrap();
    mallory.set_group_key(GroupId(1), KeyVersion(1), group_key(1, 1));
    let flow = FlowId {
        src: IpAddr::V4(b_ip),
        dst: IpAddr::V4(sim.nodes[a].overlay),
        protocol: 17,
        src_port: 5000,
        dst_port: 4000,
    };
    mallory.initiate(flow, Vec::new(), sim.now()).unwrap();
    let from = SocketAddr::from(([198, 18, 0, 9], 7718));
    for _ in 0..8 {
        while let Some(t) = mallory.poll_transmit() {
            sim.inject(a, GeId(9), from, FrameKind::Control, &t.payload);
        }
        for (_, kind, payload) in std::mem::take(&mut sim.stray) {
            if kind == FrameKind::Control {
                let _ = mallory.handle_datagram(sim.nodes[a].underlay, &payload, sim.now());
            }
        }
    }
    // Whether DPRP or the core stops it, a never binds b's address to
    // mallory (check_invariants ran after every step), and takes no packet.
    // (Today DPRP lets the negotiation finish and the core refuses it:
    // `wrong_owner`; once DPRP checks the credential's addresses itself,
    // the refusal comes earlier, as a refused DPRP message.)
    assert_eq!(sim.counter(a, "pit_entries"), 0);
    assert!(sim.counter(a, "wrong_owner") + sim.counter(a, "control_errors") >= 1);
    assert!(sim.nodes[a].tun.is_empty());
}

mod robustness {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the TUN or a peer hands an established core, it never
        /// panics: the bytes are refused and counted, or handled.
        #[test]
        fn arbitrary_bytes_into_every_input_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..1600),
            keep_header in any::<bool>(),
            short_buf in any::<bool>(),
        ) {
            let (mut sim, a, b) = established_pair(17);
            let mut bytes = bytes;
            if keep_header && bytes.len() >= 28 {
                // Valid-looking addresses: the bytes reach the PIT and PCCOM.
                let real = udp_packet(sim.nodes[a].overlay, sim.nodes[b].overlay, 4000, 5000, b"");
                bytes[..20].copy_from_slice(&real[..20]);
            }
            let now = sim.now();
            let (peer, from) = (sim.nodes[b].ge, sim.nodes[b].underlay);
            let core = &mut sim.nodes[a].core;
            let room = if short_buf { bytes.len() } else { core.buffer_len().max(bytes.len()) };
            for kind in [FrameKind::Data, FrameKind::Control] {
                let mut buf = vec![0u8; room];
                buf[..bytes.len()].copy_from_slice(&bytes);
                let _ = core.handle_carrier_frame(peer, from, kind, &mut buf, bytes.len(), now);
            }
            let mut buf = vec![0u8; room];
            buf[..bytes.len()].copy_from_slice(&bytes);
            let _ = core.handle_tun_packet(&mut buf, bytes.len(), now);
            // A length beyond the buffer is refused, not sliced.
            let _ = core.handle_tun_packet(&mut buf, room + 1, now);
            let _ = core.handle_carrier_frame(peer, from, FrameKind::Data, &mut buf, room + 1, now);
            while core.poll_output().is_some() {}
            core.handle_timeout(now + Duration::from_secs(1));
        }
    }
}

/// `fpn-gms ge set a --group 2`, as the core sees it: the GMS pushes the
/// re-issued credential and the new group's key over the session.
fn ge_set_add_group(sim: &mut CoreSim, a: usize, mode: Mode, groups: &[u32]) {
    use fpn_proto::ge::{GeInfo, GeKind};
    let n = &sim.nodes[a];
    let info = GeInfo {
        id: n.ge,
        name: n.name.clone(),
        kind: GeKind::Ges,
        mode,
        groups: groups.iter().map(|g| GroupId(*g)).collect(),
        overlay: n.overlay,
    };
    let cred = sim.issue(info, &fpn_proto::sim::node_key(n.ge.0));
    for g in groups {
        sim.command(
            a,
            Command::Keys {
                group: GroupId(*g),
                keys: vec![(KeyVersion(1), group_key(*g, 1))],
            },
        );
    }
    sim.command(a, Command::Credential(Box::new(cred)));
}

#[test]
fn a_reissued_own_credential_is_used_for_new_flows_without_a_restart() {
    // b is closed and only in group 2: a (group 1) is dropped by it.
    let mut sim = CoreSim::new(61, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Closed, &[2]);
    sim.introduce_all();
    sim.send_udp(a, b, 4000, 5000, b"before");
    sim.drive();
    assert!(sim.nodes[b].tun.is_empty(), "a closed GE let a stranger in");
    // The operator adds a to group 2; the GMS re-issues a's credential.
    ge_set_add_group(&mut sim, a, Mode::Open, &[1, 2]);
    // A new flow, at once: b sees group 2 in a's credential and protects.
    sim.send_udp(a, b, 4001, 5000, b"after");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 1, "the new credential was not used");
    // Protected with group 2's key (the first flow's drop entry stays).
    assert!(flows(&sim, b).iter().any(|f| f.key_version == Some(1)));
}

#[test]
fn a_credential_for_another_node_key_is_refused_and_the_old_one_kept() {
    let (mut sim, a, b) = open_pair(62);
    let n = &sim.nodes[a];
    let info = fpn_proto::ge::GeInfo {
        id: n.ge,
        name: n.name.clone(),
        kind: fpn_proto::ge::GeKind::Ges,
        mode: Mode::Open,
        groups: [GroupId(1)].into(),
        overlay: n.overlay,
    };
    // Signed by the CA, but for another node's key.
    let cred = sim.issue(info, &fpn_proto::sim::node_key(77));
    sim.command(a, Command::Credential(Box::new(cred)));
    sim.send_udp(a, b, 4000, 5000, b"still works");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 1);
}

#[test]
fn many_flows_ageing_together_end_in_slices() {
    let mut sim = CoreSim::new(31, LinkConfig::default());
    sim.fast_open = true;
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    sim.send_udp(a, b, 4000, 5000, b"x");
    sim.drive();
    // 2500 more flows, fast-opened in bursts within the budget.
    let n = 2500u16;
    for burst in 0..5 {
        for i in 0..500 {
            sim.send_udp(a, b, 10_000 + burst * 500 + i, 7000, b"y");
        }
        sim.drive();
    }
    assert_eq!(sim.counter(a, "pit_entries"), u64::from(n) + 1);
    assert_eq!(sim.nodes[b].tun.len(), usize::from(n) + 1);

    // Past every flow's idle timeout at once: one call ends one slice.
    let late = sim.now() + Duration::from_secs(400);
    let core = &mut sim.nodes[a].core;
    let mut calls = 0;
    let mut left = core.pit().len();
    while left > 0 {
        core.handle_timeout(late);
        let now_left = core.pit().len();
        assert!(
            left - now_left <= super::timers::AGE_SLICE,
            "{} flows ended in one call",
            left - now_left
        );
        assert!(now_left < left, "a call with due flows ended none");
        left = now_left;
        calls += 1;
    }
    assert_eq!(
        calls,
        (usize::from(n) + 1).div_ceil(super::timers::AGE_SLICE)
    );
    assert!(core.snapshot(&[]).flows.is_empty());
}

#[test]
fn a_full_flow_table_evicts_the_idlest_flow_and_refuses_only_when_none_is_idle() {
    let mut sim = CoreSim::new(32, LinkConfig::default());
    sim.fast_open = true;
    sim.pit = fpn_proto::pit::PitConfig {
        max_entries: 16,
        ..fpn_proto::pit::PitConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    for port in 0..20 {
        sim.send_udp(a, b, 10_000 + port, 7000, b"z");
        sim.drive();
    }
    assert_eq!(sim.counter(a, "pit_entries"), 16);
    assert_eq!(sim.counter(b, "pit_entries"), 16);
    // All 16 were busy within the last second: nothing may go.
    assert_eq!(sim.counter(a, "flows_table_full"), 4);
    assert_eq!(sim.counter(a, "flows_evicted"), 0);
    assert_eq!(sim.nodes[b].tun.len(), 16);

    // Two seconds on, flow 10 005 carries a packet; a new flow then takes
    // the place of the least recently used idle one at both ends.
    sim.run_for(Duration::from_secs(2));
    sim.send_udp(a, b, 10_005, 7000, b"busy");
    sim.drive();
    sim.send_udp(a, b, 20_000, 7000, b"new");
    sim.drive();
    assert!(contains(sim.nodes[b].tun.last().unwrap(), b"new"));
    assert_eq!(sim.counter(a, "flows_evicted"), 1);
    // b drops the same flow on a's notice, which leaves before the new
    // flow's FOP (note 77): it evicts nothing of its own.
    assert_eq!(sim.counter(b, "flows_evicted"), 0);
    assert_eq!(sim.counter(b, "flows_evicted_by_peer"), 1);
    assert_eq!(sim.counter(a, "pit_entries"), 16);
    let ports: Vec<u16> = sim.nodes[a]
        .core
        .pit()
        .iter()
        .map(|(f, _)| f.src_port)
        .collect();
    assert!(ports.contains(&10_005) && ports.contains(&20_000));
    assert!(!ports.contains(&10_000), "the idlest flow went: {ports:?}");
    // The evicted flow speaks again: negotiated anew, delivered.
    sim.send_udp(a, b, 10_000, 7000, b"back");
    sim.drive();
    assert!(contains(sim.nodes[b].tun.last().unwrap(), b"back"));
    assert_eq!(sim.counter(a, "flows_evicted"), 2);
    sim.check_invariants();
}
