//! Whole DPRP negotiations on the simulated network: the acceptance tests of
//! the control plane (completion direct and through gateways, loss,
//! duplication and reordering, clean failure, per-negotiation keys, forged
//! answers), plus holding, negative entries, refusals and key versions.

use std::net::IpAddr;
use std::time::Duration;

use fpn_proto::Error;
use fpn_proto::action::Action;
use fpn_proto::dprp::{
    DprpOption, DropCause, Established, Event, FailReason, MessageType, Position, Prefix,
    RefuseCode, Verdict,
};
use fpn_proto::flow::{FlowId, protocol};
use fpn_proto::ge::{GeId, GeKind, GroupId, Mode};
use fpn_proto::keys::{GroupKey, KeyVersion};
use fpn_proto::sim::{GeSpec, LinkConfig, NodeId, Sim};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn prefix(s: &str, len: u8) -> Prefix {
    Prefix::new(ip(s), len).unwrap()
}

/// Two GES on the public underlay.
fn pair(sim: &mut Sim, a: (Mode, &[u32]), b: (Mode, &[u32])) -> (NodeId, NodeId) {
    let na = sim.add_ge(GeSpec::host(1, "a", a.0, a.1, "198.18.0.1"));
    let nb = sim.add_ge(GeSpec::host(2, "b", b.0, b.1, "198.18.0.2"));
    (na, nb)
}

/// A GES behind a gateway GEN, and a GES on the public underlay.
fn behind_gateway(
    sim: &mut Sim,
    gw_mode: Mode,
    gw_groups: &[u32],
    inner: &[u32],
    outer: &[u32],
) -> (NodeId, NodeId, NodeId) {
    let gw = sim.add_ge(GeSpec::gateway(
        10,
        "gw",
        GeKind::Gen,
        gw_mode,
        gw_groups,
        "198.18.0.10",
        prefix("10.0.0.100", 32),
    ));
    let inner = sim.add_ge(GeSpec::host(11, "inner", Mode::Open, inner, "10.0.0.2").behind(gw));
    let outer = sim.add_ge(GeSpec::host(12, "outer", Mode::Open, outer, "198.18.0.12"));
    (gw, inner, outer)
}

fn failures(sim: &Sim, n: NodeId) -> Vec<(FailReason, usize)> {
    sim.events(n)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Failed {
                reason,
                dropped_packets,
                ..
            } => Some((reason.clone(), *dropped_packets)),
            _ => None,
        })
        .collect()
}

fn released(sim: &Sim, n: NodeId) -> Vec<Vec<u8>> {
    sim.events(n)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Release { packets, .. } => Some(packets.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn entries(sim: &Sim, n: NodeId) -> Vec<Established> {
    sim.events(n)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Established(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// The initiator's and responder's traffic keys pair up: one's tx is the other's rx.
fn assert_keys_pair(i: &Established, r: &Established) {
    let (ik, rk) = (
        i.keys.as_ref().expect("initiator keys"),
        r.keys.as_ref().expect("responder keys"),
    );
    assert_eq!(ik.tx.expose_secret(), rk.rx.expose_secret());
    assert_eq!(ik.rx.expose_secret(), rk.tx.expose_secret());
    assert_ne!(ik.tx.expose_secret(), ik.rx.expose_secret());
}

fn wire_types(sim: &Sim) -> Vec<(NodeId, MessageType)> {
    sim.wire()
        .iter()
        .map(|s| (s.from, fpn_proto::dprp::msg::peek(&s.payload).unwrap().0))
        .collect()
}

#[test]
fn completes_between_two_ges_and_releases_held_packets_in_order() {
    let mut sim = Sim::new(1, LinkConfig::default());
    let (a, b) = pair(&mut sim, (Mode::Closed, &[3, 1]), (Mode::Open, &[1, 2, 3]));
    let flow = sim.send_udp(a, ip("198.18.0.2"), 4000, 53, b"one");
    for p in [&b"two"[..], b"three"] {
        sim.send_packet(a, flow, p.to_vec());
    }
    assert_eq!(
        sim.verdicts(a),
        [Verdict::Held, Verdict::Held, Verdict::Held]
    );
    sim.drive();
    let (i, r) = (
        sim.established(a).unwrap().clone(),
        sim.established(b).unwrap().clone(),
    );
    assert_eq!(
        (i.position, r.position),
        (Position::Initiator, Position::Responder)
    );
    assert_eq!(i.action, Action::Protect(GroupId(1)), "lowest shared group");
    assert_eq!(r.action, i.action);
    assert_eq!((i.peer, r.peer), (GeId(2), GeId(1)));
    assert_eq!((i.flow, r.flow), (flow, flow));
    assert_eq!(i.key_version, Some(KeyVersion(1)));
    assert_keys_pair(&i, &r);
    assert_eq!(
        released(&sim, a),
        [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    assert_eq!(
        wire_types(&sim),
        [
            (a, MessageType::Dde),
            (b, MessageType::Rgi),
            (a, MessageType::Mpit),
            (b, MessageType::Cdn)
        ]
    );
    assert!(sim.errors(a).is_empty() && sim.errors(b).is_empty());
    assert_eq!(sim.endpoint(a).held_packets(), 0);
    assert_eq!(sim.endpoint(a).negotiations(), 0, "lingering state expired");
    // The initiator timed its negotiation (DDE to CDN: two round trips of
    // the simulated link); the responder did not start one.
    let d = sim.endpoint(a).stats().durations;
    assert_eq!(d.count, 1);
    assert_eq!(d.buckets.iter().sum::<u64>(), 1);
    let rtt2 = sim.wire()[3].at - sim.wire()[0].at;
    assert!(d.sum_us >= rtt2.as_micros() as u64, "{d:?} {rtt2:?}");
    assert_eq!(sim.endpoint(b).stats().durations.count, 0);
}

#[test]
fn completes_through_an_on_path_gateway_in_both_directions() {
    let mut sim = Sim::new(2, LinkConfig::default());
    let (gw, inner, outer) = behind_gateway(&mut sim, Mode::Closed, &[9], &[1], &[1]);
    let f1 = sim.send_udp(inner, ip("198.18.0.12"), 5000, 22, b"out");
    let f2 = sim.send_udp(outer, ip("10.0.0.2"), 6000, 80, b"in");
    sim.drive();
    for (flow, i, r) in [(f1, inner, outer), (f2, outer, inner)] {
        let ie = entries(&sim, i)
            .into_iter()
            .find(|e| e.flow == flow)
            .unwrap();
        let re = entries(&sim, r)
            .into_iter()
            .find(|e| e.flow == flow)
            .unwrap();
        let ge = entries(&sim, gw)
            .into_iter()
            .find(|e| e.flow == flow)
            .unwrap();
        assert_eq!(ie.action, Action::Protect(GroupId(1)));
        assert_keys_pair(&ie, &re);
        // A closed gateway between two ends that share a group relays.
        assert_eq!(
            (ge.position, ge.action, ge.keys.is_none()),
            (Position::Gateway, Action::Relay, true)
        );
        // A gateway's peer is the initiator end.
        assert_eq!(ge.peer, re.peer);
    }
    // The gateway signed its hop, and both MPIT and CDN carry signatures for it.
    let types = wire_types(&sim);
    assert_eq!(
        types
            .iter()
            .filter(|(n, t)| *n == gw && *t == MessageType::Rgi)
            .count(),
        2
    );
    for s in sim.wire() {
        if let Ok(fpn_proto::dprp::Message::Mpit(m)) = fpn_proto::dprp::Message::decode(&s.payload)
        {
            assert!(m.signature.is_some());
        }
    }
    assert!(sim.errors(gw).is_empty(), "{:?}", sim.errors(gw));
}

#[test]
fn completes_across_two_gateways() {
    let mut sim = Sim::new(3, LinkConfig::default());
    let g1 = sim.add_ge(GeSpec::gateway(
        20,
        "g1",
        GeKind::Gen,
        Mode::Open,
        &[],
        "198.18.1.1",
        prefix("10.1.0.100", 32),
    ));
    let g2 = sim.add_ge(GeSpec::gateway(
        21,
        "g2",
        GeKind::Gen,
        Mode::Closed,
        &[5],
        "198.18.2.1",
        prefix("10.2.0.100", 32),
    ));
    let a = sim.add_ge(GeSpec::host(22, "a", Mode::Open, &[4], "10.1.0.2").behind(g1));
    let b = sim.add_ge(GeSpec::host(23, "b", Mode::Closed, &[4], "10.2.0.2").behind(g2));
    sim.send_udp(a, ip("10.2.0.2"), 1, 2, b"x");
    sim.drive();
    let (i, r) = (sim.established(a).unwrap(), sim.established(b).unwrap());
    assert_keys_pair(i, r);
    assert_eq!(sim.established(g1).unwrap().action, Action::Relay);
    assert_eq!(sim.established(g2).unwrap().action, Action::Relay);
}

#[test]
fn completes_under_20_percent_loss_with_duplicates_and_reordering() {
    // Every hop loses 20%, duplicates 20% and holds back 20% of datagrams.
    // The direct pair runs on default timing; the path through a gateway has
    // two hops each way (36% loss per crossing), so its GEs get a longer
    // negotiation timeout, as a node on such a path would be configured.
    let patient = |c: &mut fpn_proto::dprp::Config| {
        c.timing.negotiation_timeout = Duration::from_secs(20);
        c.timing.linger = Duration::from_secs(20);
    };
    let (mut lost, mut duplicated) = (0, 0);
    for seed in 0..60 {
        let mut sim = Sim::new(1000 + seed, LinkConfig::lossy(0.2));
        let gw = sim.add_ge_with(
            GeSpec::gateway(
                10,
                "gw",
                GeKind::Gen,
                Mode::Open,
                &[],
                "198.18.0.10",
                prefix("10.0.0.100", 32),
            ),
            patient,
        );
        let inner = sim.add_ge_with(
            GeSpec::host(11, "inner", Mode::Open, &[1], "10.0.0.2").behind(gw),
            patient,
        );
        let outer = sim.add_ge_with(
            GeSpec::host(12, "outer", Mode::Open, &[1, 2], "198.18.0.12"),
            patient,
        );
        let (a, b) = pair(&mut sim, (Mode::Open, &[2]), (Mode::Closed, &[2]));
        sim.send_udp(a, ip("198.18.0.2"), 1, 2, b"direct");
        sim.send_udp(inner, ip("198.18.0.12"), 3, 4, b"via gateway");
        sim.drive();
        for (i, r) in [(a, b), (inner, outer)] {
            let (ie, re) = (sim.established(i), sim.established(r));
            assert!(
                ie.is_some() && re.is_some(),
                "seed {seed}: {:?}",
                failures(&sim, i)
            );
            assert_keys_pair(ie.unwrap(), re.unwrap());
            assert_eq!(released(&sim, i).len(), 1, "seed {seed}");
            assert_eq!(entries(&sim, i).len(), 1, "duplicates make no second entry");
        }
        assert_eq!(sim.established(gw).unwrap().action, Action::Relay);
        lost += sim.stats.lost;
        duplicated += sim.stats.duplicated;
    }
    // The dice really did lose and duplicate datagrams.
    assert!(
        lost > 100 && duplicated > 100,
        "lost {lost}, duplicated {duplicated}"
    );
}

#[test]
fn fails_cleanly_when_no_group_is_shared_and_a_closed_ge_is_on_the_path() {
    let mut sim = Sim::new(4, LinkConfig::default());
    // GES1 OP {1} -> server behind GEA CL {2,3}: dropped at the GEA.
    let ges1 = sim.add_ge(GeSpec::host(2, "ges1", Mode::Open, &[1], "198.18.0.2"));
    let gea = sim.add_ge(GeSpec::gateway(
        5,
        "gea",
        GeKind::Gea,
        Mode::Closed,
        &[2, 3],
        "198.18.0.5",
        prefix("192.168.5.10", 32),
    ));
    let _server = sim.add_terminal("server", "192.168.5.10", gea);
    let flow = sim.send_udp(ges1, ip("192.168.5.10"), 7000, 443, b"p1");
    sim.send_packet(ges1, flow, b"p2".to_vec());
    sim.drive();
    assert_eq!(
        failures(&sim, ges1),
        [(FailReason::Dropped { by: GeId(5) }, 2)]
    );
    assert!(sim.established(ges1).is_none() && released(&sim, ges1).is_empty());
    // The GEA learned the decision from the signed MPIT: a drop entry.
    assert_eq!(sim.established(gea).unwrap().action, Action::Drop);
    // The application is told at once: one round trip, not a timeout.
    let failed_at = sim
        .events(ges1)
        .iter()
        .find(|(_, e)| matches!(e, Event::Failed { .. }))
        .unwrap()
        .0;
    assert!(failed_at - sim.wire()[0].at < Duration::from_millis(100));
    assert_eq!(sim.endpoint(ges1).stats().failed_drops, 2);
    let by = sim.endpoint(ges1).stats().failed_by;
    assert_eq!(
        (by.dropped, by.timeout, by.refused, by.rejected),
        (1, 0, 0, 0)
    );
}

#[test]
fn a_closed_gateway_drops_a_plain_flow_it_stands_in() {
    let mut sim = Sim::new(5, LinkConfig::default());
    let (gw, inner, outer) = behind_gateway(&mut sim, Mode::Closed, &[9], &[1], &[2]);
    let flow = sim.send_udp(inner, ip("198.18.0.12"), 1, 2, b"x");
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        failures(&sim, inner),
        [(FailReason::Dropped { by: GeId(10) }, 1)]
    );
    assert_eq!(sim.established(gw).unwrap().action, Action::Drop);
    assert_eq!(sim.established(outer).unwrap().action, Action::Pass);
    // Until the negative entry expires, the flow's packets are dropped at once.
    let now = sim.now();
    let v = sim
        .endpoint(inner)
        .handle_packet(flow, b"y".to_vec(), now)
        .unwrap();
    assert_eq!(
        v,
        Verdict::Dropped(DropCause::Negative(FailReason::Dropped { by: GeId(10) }))
    );
    assert_eq!(sim.endpoint(inner).stats().negative_drops, 1);
}

#[test]
fn plain_flows_between_open_ges_pass() {
    let mut sim = Sim::new(6, LinkConfig::default());
    let (a, b) = pair(&mut sim, (Mode::Open, &[1]), (Mode::Open, &[3]));
    sim.send_udp(a, ip("198.18.0.2"), 1, 2, b"plain");
    sim.drive();
    let (i, r) = (sim.established(a).unwrap(), sim.established(b).unwrap());
    assert_eq!((i.action, r.action), (Action::Pass, Action::Pass));
    assert!(i.keys.is_none() && r.keys.is_none() && i.key_version.is_none());
    assert_eq!(released(&sim, a), [b"plain".to_vec()]);
}

#[test]
fn two_negotiations_with_the_same_group_key_yield_different_traffic_keys() {
    let mut sim = Sim::new(7, LinkConfig::default());
    let (a, _b) = pair(&mut sim, (Mode::Open, &[1]), (Mode::Open, &[1]));
    sim.send_udp(a, ip("198.18.0.2"), 1000, 53, b"x");
    sim.send_udp(a, ip("198.18.0.2"), 1001, 53, b"y");
    sim.drive();
    let es = entries(&sim, a);
    assert_eq!(es.len(), 2);
    let (k1, k2) = (es[0].keys.as_ref().unwrap(), es[1].keys.as_ref().unwrap());
    assert_ne!(k1.tx.expose_secret(), k2.tx.expose_secret());
    assert_ne!(k1.rx.expose_secret(), k2.rx.expose_secret());
    // The same flow negotiated again (a renegotiation) gets new keys too.
    let flow = es[0].flow;
    let now = sim.now();
    sim.endpoint(a).initiate(flow, Vec::new(), now).unwrap();
    sim.drive();
    let again = entries(&sim, a).pop().unwrap();
    assert_eq!(again.flow, flow);
    assert_ne!(
        again.keys.unwrap().tx.expose_secret(),
        k1.tx.expose_secret()
    );
}

#[test]
fn a_forged_rgi_with_the_wrong_group_key_is_rejected() {
    let mut sim = Sim::new(8, LinkConfig::default());
    let (a, b) = pair(&mut sim, (Mode::Open, &[1]), (Mode::Open, &[1]));
    // b is certified for group 1 but holds a wrong key: its proof cannot verify.
    sim.endpoint(b)
        .set_group_key(GroupId(1), KeyVersion(1), GroupKey::from_bytes([0x66; 32]));
    sim.send_udp(a, ip("198.18.0.2"), 1, 2, b"secret");
    sim.drive();
    assert_eq!(
        failures(&sim, a),
        [(FailReason::Rejected(Error::BadMac("group proof")), 1)]
    );
    assert!(sim.established(a).is_none() && released(&sim, a).is_empty());
    assert!(
        sim.established(b).is_none(),
        "no MPIT was sent for a rejected RGI"
    );
}

#[test]
fn held_packets_are_bounded_per_flow_and_in_total() {
    let mut sim = Sim::new(10, LinkConfig::default());
    let tune = |c: &mut fpn_proto::dprp::Config| {
        c.limits.hold_per_flow = 4;
        c.limits.hold_total_bytes = 1000;
    };
    let a = sim.add_ge_with(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"), tune);
    let _b = sim.add_ge(GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"));
    let flow = sim.send_udp(a, ip("198.18.0.2"), 1, 2, &[0]);
    for i in 1..10u8 {
        sim.send_packet(a, flow, vec![i]);
    }
    // A second flow fills the byte budget: 400 + 400 fit, the third does not.
    let f2 = sim.send_udp(a, ip("198.18.0.2"), 3, 4, &[7; 400]);
    sim.send_packet(a, f2, vec![8; 400]);
    sim.send_packet(a, f2, vec![9; 400]);
    let v = sim.verdicts(a);
    assert_eq!(
        v[..4],
        [Verdict::Held, Verdict::Held, Verdict::Held, Verdict::Held]
    );
    assert!(
        v[4..10]
            .iter()
            .all(|v| *v == Verdict::Dropped(DropCause::QueueFull))
    );
    assert_eq!(
        v[10..],
        [
            Verdict::Held,
            Verdict::Held,
            Verdict::Dropped(DropCause::QueueFull)
        ]
    );
    assert_eq!(sim.endpoint(a).stats().hold_overflow, 7);
    sim.drive();
    let rel = released(&sim, a);
    assert_eq!(
        rel[..4],
        [vec![0], vec![1], vec![2], vec![3]],
        "the first packets, in order"
    );
    assert_eq!(rel.len(), 6);
}

#[test]
fn an_unanswered_negotiation_backs_off_times_out_and_leaves_a_negative_entry() {
    let mut sim = Sim::new(11, LinkConfig::default());
    let a = sim.add_ge(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"));
    // Nobody lives at 198.18.0.99: every DDE is lost.
    let flow = sim.send_udp(a, ip("198.18.0.99"), 1, 2, b"x");
    sim.run_for(Duration::from_secs(11));
    assert_eq!(failures(&sim, a), [(FailReason::Timeout, 1)]);
    let sent: Vec<Duration> = sim.wire().iter().map(|s| s.at - sim.wire()[0].at).collect();
    let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
    // 250 ms, doubling to at most 1 s, until the 10 s deadline.
    assert_eq!(
        ms,
        [
            0, 250, 750, 1750, 2750, 3750, 4750, 5750, 6750, 7750, 8750, 9750
        ]
    );
    let now = sim.now();
    assert_eq!(
        sim.endpoint(a)
            .handle_packet(flow, b"y".to_vec(), now)
            .unwrap(),
        Verdict::Dropped(DropCause::Negative(FailReason::Timeout))
    );
    // After the negative entry expires the flow may try again.
    sim.run_for(Duration::from_secs(11));
    let now = sim.now();
    assert_eq!(
        sim.endpoint(a)
            .handle_packet(flow, b"z".to_vec(), now)
            .unwrap(),
        Verdict::Held
    );
}

#[test]
fn a_revoked_initiator_is_refused_with_a_signed_nak() {
    let mut sim = Sim::new(12, LinkConfig::default());
    let (a, b) = pair(&mut sim, (Mode::Open, &[1]), (Mode::Open, &[1]));
    sim.endpoint(b).revoke_ge(GeId(1));
    sim.send_udp(a, ip("198.18.0.2"), 1, 2, b"x");
    sim.drive();
    let f = failures(&sim, a);
    assert_eq!(
        f,
        [(
            FailReason::Refused {
                by: GeId(2),
                code: RefuseCode::CredentialRejected
            },
            1
        )]
    );
    assert_eq!(
        sim.errors(b).first().map(|e| e.1.clone()),
        Some(Error::Revoked(1))
    );
    assert!(sim.established(b).is_none());
    // Fails fast: one round trip, no retransmission.
    assert_eq!(
        wire_types(&sim),
        [(a, MessageType::Dde), (b, MessageType::Nak)]
    );
}

#[test]
fn a_revoked_responder_is_never_accepted() {
    let mut sim = Sim::new(13, LinkConfig::default());
    let (a, b) = pair(&mut sim, (Mode::Open, &[1]), (Mode::Open, &[1]));
    sim.endpoint(a).revoke_serial(2);
    sim.send_udp(a, ip("198.18.0.2"), 1, 2, b"x");
    sim.drive();
    assert_eq!(failures(&sim, a), [(FailReason::Timeout, 1)]);
    assert!(sim.errors(a).iter().all(|(_, e)| *e == Error::Revoked(2)));
    assert!(!sim.errors(a).is_empty());
    assert!(sim.established(a).is_none() && sim.established(b).is_none());
}

#[test]
fn simultaneous_open_ends_in_one_negotiation() {
    let mut sim = Sim::new(14, LinkConfig::default());
    let (a, b) = pair(&mut sim, (Mode::Open, &[1]), (Mode::Open, &[1]));
    let f = sim.send_udp(a, ip("198.18.0.2"), 1000, 2000, b"from a");
    let r = sim.send_udp(b, ip("198.18.0.1"), 2000, 1000, b"from b");
    assert_eq!(r, f.reversed());
    sim.drive();
    // a (the lower GE id) keeps its negotiation; b answers it and releases its own packet.
    let (ea, eb) = (entries(&sim, a), entries(&sim, b));
    assert_eq!((ea.len(), eb.len()), (1, 1));
    assert_eq!((ea[0].flow, eb[0].flow), (f, f));
    assert_keys_pair(&ea[0], &eb[0]);
    assert_eq!(released(&sim, a), [b"from a".to_vec()]);
    assert_eq!(released(&sim, b), [b"from b".to_vec()]);
    assert!(failures(&sim, a).is_empty() && failures(&sim, b).is_empty());
}

#[test]
fn the_directory_pins_which_ge_may_answer() {
    let mut sim = Sim::new(15, LinkConfig::default());
    let (a, _b) = pair(&mut sim, (Mode::Open, &[1]), (Mode::Open, &[1]));
    sim.endpoint(a)
        .set_directory(vec![(prefix("198.18.0.0", 24), GeId(7))]);
    sim.send_udp(a, ip("198.18.0.2"), 1, 2, b"x");
    sim.drive();
    assert_eq!(
        failures(&sim, a),
        [(
            FailReason::Rejected(Error::UnexpectedPeer {
                expected: 7,
                found: 2
            }),
            1
        )]
    );
}

#[test]
fn the_newest_key_version_both_ends_hold_is_used() {
    let mut sim = Sim::new(16, LinkConfig::default());
    let (a, b) = pair(&mut sim, (Mode::Open, &[1]), (Mode::Open, &[1]));
    // a rotated to v2 already (v1 kept as previous); b has only v1.
    sim.endpoint(a)
        .set_group_key(GroupId(1), KeyVersion(2), GroupKey::from_bytes([2; 32]));
    sim.send_udp(a, ip("198.18.0.2"), 1, 2, b"x");
    sim.drive();
    assert_eq!(sim.established(a).unwrap().key_version, Some(KeyVersion(1)));
    // Now b has v2 as well: the next flow uses v2.
    sim.endpoint(b)
        .set_group_key(GroupId(1), KeyVersion(2), GroupKey::from_bytes([2; 32]));
    sim.send_udp(a, ip("198.18.0.2"), 3, 4, b"y");
    sim.drive();
    let (i, r) = (
        sim.established(a).unwrap().clone(),
        sim.established(b).unwrap().clone(),
    );
    assert_eq!(
        (i.key_version, r.key_version),
        (Some(KeyVersion(2)), Some(KeyVersion(2)))
    );
    assert_keys_pair(&i, &r);
    // b moves on to v3 and drops v1; a retired v1: a holds v2, v1 -> v2 only.
    sim.endpoint(b)
        .set_group_key(GroupId(1), KeyVersion(3), GroupKey::from_bytes([3; 32]));
    sim.endpoint(b)
        .set_group_key(GroupId(1), KeyVersion(4), GroupKey::from_bytes([4; 32]));
    sim.send_udp(a, ip("198.18.0.2"), 5, 6, b"z");
    sim.drive();
    assert_eq!(
        failures(&sim, a),
        [(
            FailReason::Rejected(Error::UnknownKeyVersion {
                group: 1,
                version: 4
            }),
            1
        )]
    );
}

#[test]
fn options_reach_the_other_end_and_the_gateway() {
    let mut sim = Sim::new(17, LinkConfig::default());
    let (gw, inner, outer) = behind_gateway(&mut sim, Mode::Open, &[], &[1], &[1]);
    let opts = vec![
        DprpOption::BindingUpdate {
            old: "198.18.0.12:4000".parse().unwrap(),
            new: "198.18.7.12:4001".parse().unwrap(),
        },
        DprpOption::NatF {
            lip: ip("192.168.1.10"),
            reserved_port: 40001,
        },
    ];
    let flow = FlowId {
        src: ip("10.0.0.2"),
        dst: ip("198.18.0.12"),
        protocol: protocol::TCP,
        src_port: 40000,
        dst_port: 22,
    };
    let now = sim.now();
    sim.endpoint(inner)
        .initiate(flow, opts.clone(), now)
        .unwrap();
    sim.drive();
    assert_eq!(sim.established(outer).unwrap().peer_options, opts);
    assert_eq!(sim.established(gw).unwrap().peer_options, opts);
    assert!(sim.established(inner).unwrap().peer_options.is_empty());
}

#[test]
fn packets_of_flows_this_ge_does_not_stand_in_for_are_refused() {
    let mut sim = Sim::new(18, LinkConfig::default());
    let gen_ = sim.add_ge(GeSpec::gateway(
        1,
        "gen",
        GeKind::Gen,
        Mode::Open,
        &[1],
        "198.18.0.1",
        prefix("192.168.1.0", 24),
    ));
    let flow = |src: &str, dst: &str| FlowId {
        src: ip(src),
        dst: ip(dst),
        protocol: protocol::UDP,
        src_port: 1,
        dst_port: 2,
    };
    let now = sim.now();
    let ep = sim.endpoint(gen_);
    assert!(
        ep.handle_packet(flow("203.0.113.9", "198.18.0.2"), vec![], now)
            .is_err()
    );
    assert_eq!(
        ep.handle_packet(flow("192.168.1.5", "192.168.1.6"), vec![], now)
            .unwrap(),
        Verdict::Local
    );
    assert_eq!(
        ep.handle_packet(flow("192.168.1.5", "198.18.0.2"), vec![], now)
            .unwrap(),
        Verdict::Held
    );
    let local = flow("192.168.1.5", "192.168.1.7");
    assert!(ep.initiate(local, vec![], now).is_err());
    assert!(
        ep.initiate(flow("203.0.113.9", "198.18.0.2"), vec![], now)
            .is_err()
    );
}

#[test]
fn the_negotiation_table_is_bounded() {
    let mut sim = Sim::new(19, LinkConfig::default());
    let a = sim.add_ge_with(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"), |c| {
        c.limits.max_negotiations = 3
    });
    for port in 0..5 {
        sim.send_udp(a, ip("198.18.0.99"), port, 9, b"x");
    }
    let v = sim.verdicts(a);
    assert_eq!(v.iter().filter(|v| **v == Verdict::Held).count(), 3);
    assert_eq!(
        v.iter()
            .filter(|v| **v == Verdict::Dropped(DropCause::Busy))
            .count(),
        2
    );
    assert_eq!(sim.endpoint(a).negotiations(), 3);
}

#[test]
fn a_member_cannot_answer_in_another_members_name() {
    // c is a member of group 1 with a valid credential and the group key. It
    // rewrites b's RGI on the way: b's credential stays (a checks whose node
    // key the answer is bound to), but without b's node key c can only tag
    // with its own pair key. a refuses every such answer.
    use fpn_proto::dprp::Message;
    use fpn_proto::dprp::transcript::{self as tr, PairKey};
    use std::cell::Cell;
    use std::rc::Rc;
    let mut sim = Sim::new(20, LinkConfig::default());
    let (a, b) = pair(&mut sim, (Mode::Open, &[1]), (Mode::Open, &[1]));
    sim.add_ge(GeSpec::host(3, "c", Mode::Open, &[1], "198.18.0.3"));
    let (a_public, c_key) = (
        fpn_proto::sim::node_key(1).public(),
        fpn_proto::sim::node_key(3),
    );
    let h0 = Rc::new(Cell::new(None));
    let seen = h0.clone();
    sim.set_tamper(move |from, bytes| match Message::decode(bytes) {
        Ok(Message::Dde(d)) => seen.set(Some(tr::dde_hash(&d.core().unwrap()))),
        Ok(Message::Rgi(mut r)) if from == b => {
            let c_r = tr::responder_hash(&seen.get().unwrap(), &r.core().unwrap());
            let proof = r.proof.map(|p| p.to_vec()).unwrap_or_default();
            r.tag = PairKey::derive(&c_key, &a_public)
                .unwrap()
                .tag(tr::RGI_TAG, &c_r, &proof);
            *bytes = Message::Rgi(r).encode().unwrap();
        }
        _ => {}
    });
    sim.send_udp(a, ip("198.18.0.2"), 1, 2, b"for b only");
    sim.drive();
    assert!(h0.get().is_some());
    assert_eq!(failures(&sim, a), [(FailReason::Timeout, 1)]);
    assert!(sim.established(a).is_none());
    let errors = sim.errors(a);
    assert!(
        !errors.is_empty() && errors.iter().all(|(_, e)| *e == Error::BadMac("RGI tag")),
        "{errors:?}"
    );
}

#[test]
fn debug_output_shows_no_keys_and_no_payloads() {
    let mut sim = Sim::new(21, LinkConfig::default());
    let (a, _b) = pair(&mut sim, (Mode::Open, &[1]), (Mode::Open, &[1]));
    sim.send_udp(a, ip("198.18.0.2"), 1, 2, &[0xab; 64]);
    sim.drive();
    let e = sim.established(a).unwrap();
    let keys = e.keys.as_ref().unwrap();
    let dump = format!("{:?} {:#?}", sim.events(a), sim.events(a));
    for k in [keys.tx.expose_secret(), keys.rx.expose_secret()] {
        let hex: String = k[..6].iter().map(|x| format!("{x:02x}")).collect();
        let dec = format!("{}, {}, {}", k[0], k[1], k[2]);
        assert!(!dump.contains(&hex) && !dump.contains(&dec), "{dump}");
    }
    // The held packet (64 x 0xab) shows as a count and a length only.
    assert!(
        dump.contains("redacted") && !dump.contains("171, 171") && dump.contains("bytes: 64"),
        "{dump}"
    );
}
