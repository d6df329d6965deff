//! Fast open on the simulator (docs/PROTOCOL.md, "Fast open"): a second
//! flow between two GEs that negotiated once opens without a negotiation,
//! with keys both ends derive alike; revocations, rotations, restarts and a
//! gateway on the path send the flow back to a full negotiation.

use std::net::IpAddr;
use std::time::Duration;

use fpn_proto::Error;
use fpn_proto::action::Action;
use fpn_proto::dprp::{Established, Event, FailReason, MessageType, Prefix, RefuseCode, msg};
use fpn_proto::ge::{GeId, GeKind, GroupId, Mode};
use fpn_proto::keys::KeyVersion;
use fpn_proto::sim::{GeSpec, LinkConfig, NodeId, Sim};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Long enough for any negotiation or fast open here to settle, far short
/// of a pair epoch's lifetime (`Sim::drive` would run into its expiry).
const SETTLE: Duration = Duration::from_secs(15);

struct Pair {
    sim: Sim,
    a: NodeId,
    b: NodeId,
}

/// Two GESs in group 1 on the public underlay, fast open on, each with the
/// other in its directory.
fn pair(seed: u64) -> Pair {
    pair_with(seed, |_| {})
}

/// [`pair`], with b's DPRP configuration changed by `tune_b` after fast
/// open is turned on.
fn pair_with(seed: u64, tune_b: impl FnOnce(&mut fpn_proto::dprp::Config)) -> Pair {
    let mut sim = Sim::new(seed, LinkConfig::default());
    let fast = |c: &mut fpn_proto::dprp::Config| c.fast_open = true;
    let a = sim.add_ge_with(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"), fast);
    let b = sim.add_ge_with(
        GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"),
        |c: &mut fpn_proto::dprp::Config| {
            c.fast_open = true;
            tune_b(c);
        },
    );
    let dir = vec![
        (Prefix::host(ip("198.18.0.1")), GeId(1)),
        (Prefix::host(ip("198.18.0.2")), GeId(2)),
    ];
    sim.endpoint(a).set_directory(dir.clone());
    sim.endpoint(b).set_directory(dir);
    Pair { sim, a, b }
}

/// The messages of `kind` on the wire from `from` on.
fn sent(sim: &Sim, kind: MessageType, from: usize) -> usize {
    sim.wire()[from..]
        .iter()
        .filter(|s| msg::peek(&s.payload).is_ok_and(|(t, _)| t == kind))
        .count()
}

/// The entries a GE installed from event `from` on.
fn installed(sim: &Sim, node: NodeId, from: usize) -> Vec<Established> {
    sim.events(node)[from..]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Established(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// The UDP flow from a's `sport` to b's port 53.
fn a_to_b(sport: u16) -> fpn_proto::flow::FlowId {
    fpn_proto::flow::FlowId {
        src: ip("198.18.0.1"),
        dst: ip("198.18.0.2"),
        protocol: fpn_proto::flow::protocol::UDP,
        src_port: sport,
        dst_port: 53,
    }
}

/// Mangles the tag of FOPs on the wire, so the receiver drops them: every
/// one, or only the next.
fn lose_fops(sim: &mut Sim, only_the_next: bool) {
    let done = std::cell::Cell::new(false);
    sim.set_tamper(move |_, p| {
        if !done.get()
            && let Ok(msg::Message::Fop(mut f)) = msg::Message::decode(p)
        {
            done.set(only_the_next);
            f.tag[31] ^= 1;
            *p = msg::Message::Fop(f).encode().unwrap();
        }
    });
}

fn udp(sim: &mut Sim, from: NodeId, to: &str, sport: u16) {
    sim.send_udp(from, ip(to), sport, 53, b"query");
    sim.run_for(SETTLE);
}

#[test]
fn a_second_flow_between_a_negotiated_pair_opens_without_a_negotiation() {
    let Pair { mut sim, a, b } = pair(1);
    udp(&mut sim, a, "198.18.0.2", 1000);
    let first = installed(&sim, a, 0);
    assert_eq!(first.len(), 1);
    assert!(first[0].fast.is_none(), "the first flow is negotiated");

    let (wire, ea, eb) = (sim.wire().len(), sim.events(a).len(), sim.events(b).len());
    let t0 = sim.now();
    udp(&mut sim, a, "198.18.0.2", 1001);
    // Nothing but a FOP and its FOK: no DDE, RGI, MPIT or CDN.
    assert_eq!(sent(&sim, MessageType::Fop, wire), 1);
    assert_eq!(sent(&sim, MessageType::Fok, wire), 1);
    assert_eq!(sim.wire().len() - wire, 2);
    // The opener installs the flow and releases its packet at once, before
    // any answer could have come.
    let at_a = &sim.events(a)[ea..];
    assert!(matches!(&at_a[0], (t, Event::Established(e)) if *t == t0 && e.fast.is_some()));
    assert!(
        matches!(&at_a[1], (t, Event::Release { packets, .. }) if *t == t0 && packets.len() == 1)
    );
    assert!(
        at_a.iter()
            .any(|(_, e)| matches!(e, Event::FastConfirmed { .. }))
    );
    let (ia, ib) = (&installed(&sim, a, ea)[0], &installed(&sim, b, eb)[0]);
    assert_eq!(ia.flow, ib.flow);
    assert_eq!(ia.action, Action::Protect(GroupId(1)));
    assert_eq!(ib.action, Action::Protect(GroupId(1)));
    assert_eq!((ia.peer, ib.peer), (GeId(2), GeId(1)));
    assert_eq!(ia.key_version, Some(KeyVersion(1)));
    let (ka, kb) = (ia.keys.as_ref().unwrap(), ib.keys.as_ref().unwrap());
    assert_eq!(ka.tx.expose_secret(), kb.rx.expose_secret());
    assert_eq!(ka.rx.expose_secret(), kb.tx.expose_secret());
    // Not the first flow's keys.
    let k1 = first[0].keys.as_ref().unwrap();
    assert_ne!(ka.tx.expose_secret(), k1.tx.expose_secret());
    assert_eq!(ia.fast.unwrap().epoch, ib.fast.unwrap().epoch);

    // The epoch is the pair's: b opens a flow to a on it too.
    let (wire, ea) = (sim.wire().len(), sim.events(a).len());
    udp(&mut sim, b, "198.18.0.1", 2000);
    assert_eq!(sent(&sim, MessageType::Dde, wire), 0);
    let ia = &installed(&sim, a, ea)[0];
    assert_eq!(ia.fast.unwrap().opener, GeId(2));
    let st = sim.endpoint(a).stats();
    assert_eq!(
        (st.fast_opened, st.fast_confirmed, st.fast_accepted),
        (1, 1, 1)
    );
    assert_eq!(st.started, 1, "one negotiation in all");
}

#[test]
fn without_fast_open_every_flow_is_negotiated() {
    let mut sim = Sim::new(2, LinkConfig::default());
    let a = sim.add_ge(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"));
    let b = sim.add_ge(GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"));
    let dir = vec![(Prefix::host(ip("198.18.0.2")), GeId(2))];
    sim.endpoint(a).set_directory(dir);
    udp(&mut sim, a, "198.18.0.2", 1000);
    let wire = sim.wire().len();
    udp(&mut sim, a, "198.18.0.2", 1001);
    assert_eq!(sent(&sim, MessageType::Dde, wire), 1);
    assert_eq!(sent(&sim, MessageType::Fop, wire), 0);
    assert!(installed(&sim, b, 0).iter().all(|e| e.fast.is_none()));
}

#[test]
fn a_revocation_between_two_flows_ends_the_epoch_at_once() {
    let Pair { mut sim, a, b } = pair(3);
    udp(&mut sim, a, "198.18.0.2", 1000);
    // b learns a's revocation; a does not know yet and opens fast.
    sim.endpoint(b).revoke_ge(GeId(1));
    assert_eq!(sim.endpoint(b).occupancy().epochs, 0);
    let (eb, ea) = (sim.events(b).len(), sim.events(a).len());
    udp(&mut sim, a, "198.18.0.2", 1001);
    assert!(installed(&sim, b, eb).is_empty(), "b installed nothing");
    // b does not hold the epoch any more: a is told, negotiates, and the
    // negotiation is refused for the revoked credential.
    let evs: Vec<&Event> = sim.events(a)[ea..].iter().map(|(_, e)| e).collect();
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::FastOpenFailed {
            reason: FailReason::Refused {
                code: RefuseCode::UnknownEpoch,
                ..
            },
            ..
        }
    )));
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::Failed {
            reason: FailReason::Refused {
                code: RefuseCode::CredentialRejected,
                ..
            },
            ..
        }
    )));

    // The other way round: a revokes b, and a's next flow is not fast.
    let Pair { mut sim, a, .. } = pair(4);
    udp(&mut sim, a, "198.18.0.2", 1000);
    sim.endpoint(a).revoke_ge(GeId(2));
    let wire = sim.wire().len();
    udp(&mut sim, a, "198.18.0.2", 1001);
    assert_eq!(sent(&sim, MessageType::Fop, wire), 0);
}

#[test]
fn a_rotation_ends_the_epoch_and_the_next_one_is_under_the_new_key() {
    let Pair { mut sim, a, b } = pair(5);
    udp(&mut sim, a, "198.18.0.2", 1000);
    let key = sim.group_key(GroupId(1));
    for n in [a, b] {
        sim.endpoint(n)
            .set_group_key(GroupId(1), KeyVersion(2), key.clone());
        assert_eq!(sim.endpoint(n).occupancy().epochs, 0);
    }
    let (wire, ea) = (sim.wire().len(), sim.events(a).len());
    udp(&mut sim, a, "198.18.0.2", 1001);
    assert_eq!(sent(&sim, MessageType::Fop, wire), 0);
    let e = &installed(&sim, a, ea)[0];
    assert!(e.fast.is_none());
    assert_eq!(e.key_version, Some(KeyVersion(2)));
    // That negotiation left a new epoch, under version 2.
    let ea = sim.events(a).len();
    udp(&mut sim, a, "198.18.0.2", 1002);
    let e = &installed(&sim, a, ea)[0];
    assert!(e.fast.is_some());
    assert_eq!(e.key_version, Some(KeyVersion(2)));
}

#[test]
fn a_peer_that_lost_the_epoch_makes_the_opener_negotiate() {
    let Pair { mut sim, a, b } = pair(6);
    udp(&mut sim, a, "198.18.0.2", 1000);
    // b forgets its epochs (as after a restart: here by losing and
    // regaining its group key).
    let key = sim.group_key(GroupId(1));
    sim.endpoint(b).remove_group(GroupId(1));
    sim.endpoint(b)
        .set_group_key(GroupId(1), KeyVersion(1), key);
    let (ea, eb, wire) = (sim.events(a).len(), sim.events(b).len(), sim.wire().len());
    udp(&mut sim, a, "198.18.0.2", 1001);
    assert_eq!(sent(&sim, MessageType::Nak, wire), 1);
    assert_eq!(sent(&sim, MessageType::Dde, wire), 1);
    assert!(sim.events(a)[ea..].iter().any(|(_, e)| matches!(
        e,
        Event::FastOpenFailed {
            reason: FailReason::Refused {
                by: GeId(2),
                code: RefuseCode::UnknownEpoch
            },
            ..
        }
    )));
    let at_a = installed(&sim, a, ea);
    // The fast entry, then the negotiated one that replaces it.
    assert_eq!(at_a.len(), 2);
    assert!(at_a[1].fast.is_none());
    let at_b = installed(&sim, b, eb);
    assert_eq!(at_b.len(), 1);
    assert_eq!(
        at_a[1].keys.as_ref().unwrap().tx.expose_secret(),
        at_b[0].keys.as_ref().unwrap().rx.expose_secret()
    );
    assert!(sim.errors(b).iter().any(|(_, e)| *e == Error::UnknownEpoch));
}

#[test]
fn lost_fops_are_sent_again_and_a_silent_peer_means_a_negotiation() {
    let Pair { mut sim, a, b } = pair(7);
    udp(&mut sim, a, "198.18.0.2", 1000);
    // Every FOP's tag is mangled on the way (the receiver drops it).
    lose_fops(&mut sim, false);
    let (ea, eb, wire) = (sim.events(a).len(), sim.events(b).len(), sim.wire().len());
    udp(&mut sim, a, "198.18.0.2", 1001);
    // The FOP and its two retransmissions, then the negotiation.
    assert_eq!(sent(&sim, MessageType::Fop, wire), 3);
    assert!(sim.events(a)[ea..].iter().any(|(_, e)| matches!(
        e,
        Event::FastOpenFailed {
            reason: FailReason::Timeout,
            ..
        }
    )));
    let at_a = installed(&sim, a, ea);
    assert_eq!(at_a.len(), 2);
    assert!(at_a[1].fast.is_none());
    assert_eq!(installed(&sim, b, eb).len(), 1);
}

#[test]
fn a_replayed_fop_installs_nothing_twice_and_a_changed_one_nothing_at_all() {
    let Pair { mut sim, a, b } = pair(8);
    udp(&mut sim, a, "198.18.0.2", 1000);
    let wire = sim.wire().len();
    udp(&mut sim, a, "198.18.0.2", 1001);
    let fop = sim.wire()[wire..]
        .iter()
        .find(|s| msg::peek(&s.payload).is_ok_and(|(t, _)| t == MessageType::Fop))
        .unwrap()
        .payload
        .clone();
    let from = std::net::SocketAddr::new(ip("198.18.0.1"), 7717);
    let now = sim.now();
    let eb = sim.events(b).len();
    // The same bytes again: answered with the same FOK, nothing installed.
    let ep = sim.endpoint(b);
    ep.handle_datagram(from, &fop, now).unwrap();
    let fok = ep.poll_transmit().unwrap();
    assert!(msg::peek(&fok.payload).is_ok_and(|(t, _)| t == MessageType::Fok));
    assert!(ep.poll_event().is_none());
    // Another flow or index under the same tag: refused.
    let mut other = fop.clone();
    let n = other.len();
    other[n - 33] ^= 1; // last byte of the flow (destination port)
    assert_eq!(
        ep.handle_datagram(from, &other, now),
        Err(Error::BadMac("FOP tag"))
    );
    let mut index = fop.clone();
    index[21] ^= 1; // the index, after header (10) and epoch (8)
    assert_eq!(
        ep.handle_datagram(from, &index, now),
        Err(Error::BadMac("FOP tag"))
    );
    assert!(ep.poll_event().is_none());
    assert_eq!(sim.events(b).len(), eb);
}

#[test]
fn an_opener_cannot_fast_open_a_flow_from_an_address_it_does_not_own() {
    // a protects an extra address its credential does not name.
    let mut sim = Sim::new(9, LinkConfig::default());
    let a = sim.add_ge_with(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"), |c| {
        c.fast_open = true;
        c.protected.push(Prefix::host(ip("198.18.0.99")));
    });
    let b = sim.add_ge_with(GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"), |c| {
        c.fast_open = true
    });
    sim.endpoint(a)
        .set_directory(vec![(Prefix::host(ip("198.18.0.2")), GeId(2))]);
    udp(&mut sim, a, "198.18.0.2", 1000);
    let eb = sim.events(b).len();
    let flow = fpn_proto::flow::FlowId {
        src: ip("198.18.0.99"),
        dst: ip("198.18.0.2"),
        protocol: fpn_proto::flow::protocol::UDP,
        src_port: 5,
        dst_port: 53,
    };
    sim.send_packet(a, flow, b"spoofed".to_vec());
    sim.run_for(SETTLE);
    assert!(installed(&sim, b, eb).is_empty());
    assert!(
        sim.errors(b)
            .iter()
            .any(|(_, e)| matches!(e, Error::NotOwner { ge: 1, .. }))
    );
    // The FOP and its two retransmissions (a refused FOP gets no answer),
    // then the DDE of the negotiation a falls back to.
    assert_eq!(sim.endpoint(b).stats().not_owner, 4);
}

#[test]
fn a_gateway_on_the_route_refuses_the_fop_and_the_flow_is_negotiated_through_it() {
    // b is a GEN whose credential names 10.9.0.0/24; the pair negotiates
    // directly once (a flow to b's own address). The route to 10.9.0.5,
    // though, runs through gateway g, which the epoch never consulted.
    let mut sim = Sim::new(10, LinkConfig::default());
    let fast = |c: &mut fpn_proto::dprp::Config| c.fast_open = true;
    let a = sim.add_ge_with(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"), fast);
    let b = sim.add_ge_with(
        GeSpec::gateway(
            2,
            "b",
            GeKind::Gen,
            Mode::Open,
            &[1],
            "198.18.0.2",
            Prefix::new(ip("10.9.0.0"), 24).unwrap(),
        ),
        fast,
    );
    let g = sim.add_ge_with(
        GeSpec::gateway(
            3,
            "g",
            GeKind::Gen,
            Mode::Open,
            &[1],
            "198.18.0.3",
            Prefix::new(ip("10.9.0.0"), 16).unwrap(),
        ),
        fast,
    );
    sim.add_terminal("t", "10.9.0.5", g);
    sim.endpoint(a).set_directory(vec![
        (Prefix::host(ip("198.18.0.2")), GeId(2)),
        (Prefix::new(ip("10.9.0.0"), 24).unwrap(), GeId(2)),
    ]);
    udp(&mut sim, a, "198.18.0.2", 1000);
    assert_eq!(sim.endpoint(a).occupancy().epochs, 1);
    let (ea, eb) = (sim.events(a).len(), sim.events(b).len());
    udp(&mut sim, a, "10.9.0.5", 1001);
    assert_eq!(sim.endpoint(g).stats().fast_refused_in_transit, 1);
    assert!(installed(&sim, b, eb).is_empty(), "the FOP never reached b");
    assert!(sim.events(a)[ea..].iter().any(|(_, e)| matches!(
        e,
        Event::FastOpenFailed {
            reason: FailReason::Refused {
                by: GeId(3),
                code: RefuseCode::GatewayOnPath
            },
            ..
        }
    )));
    // The epoch with b is over: the path to b has a gateway now.
    assert_eq!(sim.endpoint(a).occupancy().epochs, 0);
    // And the flow was negotiated, which g took part in (here g answers
    // for the terminal itself, which the directory does not expect).
    assert!(sent(&sim, MessageType::Dde, 0) >= 2);
    assert!(sim.failures(a).iter().any(|r| matches!(
        r,
        FailReason::Rejected(Error::UnexpectedPeer {
            expected: 2,
            found: 3
        })
    )));
}

#[test]
fn an_epoch_is_kept_only_when_both_ends_offer_fast_open() {
    // One end with fast open off (or a node from before it, which never
    // answers the offer): neither end keeps an epoch, no FOP is ever sent.
    for off in [0, 1] {
        let mut sim = Sim::new(11 + off as u64, LinkConfig::default());
        let a = sim.add_ge_with(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"), |c| {
            c.fast_open = off != 0
        });
        let b = sim.add_ge_with(GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"), |c| {
            c.fast_open = off == 0
        });
        let dir = vec![
            (Prefix::host(ip("198.18.0.1")), GeId(1)),
            (Prefix::host(ip("198.18.0.2")), GeId(2)),
        ];
        sim.endpoint(a).set_directory(dir.clone());
        sim.endpoint(b).set_directory(dir);
        udp(&mut sim, a, "198.18.0.2", 1000);
        assert_eq!(installed(&sim, b, 0).len(), 1);
        for n in [a, b] {
            assert_eq!(sim.endpoint(n).occupancy().epochs, 0, "off = {off}");
        }
        udp(&mut sim, a, "198.18.0.2", 1001);
        udp(&mut sim, b, "198.18.0.1", 1002);
        assert_eq!(sent(&sim, MessageType::Fop, 0), 0);
        assert_eq!(sent(&sim, MessageType::Dde, 0), 3);
    }
}

#[test]
fn a_simultaneous_fast_open_of_one_connection_ends_with_one_pair_of_keys() {
    let Pair { mut sim, a, b } = pair(12);
    udp(&mut sim, a, "198.18.0.2", 1000);
    // Both ends open the same connection (fixed ports) at the same instant.
    let (ea, eb) = (sim.events(a).len(), sim.events(b).len());
    sim.send_udp(a, ip("198.18.0.2"), 5000, 6000, b"from a");
    sim.send_udp(b, ip("198.18.0.1"), 6000, 5000, b"from b");
    sim.run_for(SETTLE);
    let last = |n: NodeId, from: usize| installed(&sim, n, from).pop().unwrap();
    let (la, lb) = (last(a, ea), last(b, eb));
    let (ka, kb) = (la.keys.unwrap(), lb.keys.unwrap());
    assert_eq!(ka.tx.expose_secret(), kb.rx.expose_secret());
    assert_eq!(ka.rx.expose_secret(), kb.tx.expose_secret());
    // The lower GE id's opening won at both ends, without a negotiation.
    assert_eq!(la.fast.unwrap().opener, GeId(1));
    assert_eq!(lb.fast.unwrap().opener, GeId(1));
    assert_eq!(sent(&sim, MessageType::Dde, 0), 1);
}

#[test]
fn a_late_fop_for_a_connection_just_negotiated_installs_nothing() {
    let Pair { mut sim, a, b } = pair(13);
    udp(&mut sim, a, "198.18.0.2", 1000);
    // Every FOP is lost on the way (its tag mangled).
    lose_fops(&mut sim, false);
    let flow = a_to_b(7000);
    // b negotiates the connection itself (as a node does that heals a
    // flow it has no entry for) while a fast-opens it.
    let (wire, eb) = (sim.wire().len(), sim.events(b).len());
    let now = sim.now();
    sim.endpoint(b)
        .initiate(flow.reversed(), Vec::new(), now)
        .unwrap();
    sim.send_packet(a, flow, b"late".to_vec());
    sim.run_for(Duration::from_secs(1));
    let negotiated = installed(&sim, b, eb);
    assert_eq!(negotiated.len(), 1);
    assert!(negotiated[0].fast.is_none());
    // The negotiated entry stopped a's fast open: one FOP, no fallback.
    assert_eq!(sent(&sim, MessageType::Fop, wire), 1);
    assert_eq!(sim.endpoint(a).stats().fast_fallbacks, 0);
    // A copy of that FOP, intact and late (reordered on the way), must
    // not replace b's negotiated keys with the epoch's.
    let mut fop = sim.wire()[wire..]
        .iter()
        .find(|s| msg::peek(&s.payload).is_ok_and(|(t, _)| t == MessageType::Fop))
        .unwrap()
        .payload
        .clone();
    let n = fop.len();
    fop[n - 1] ^= 1;
    let from = std::net::SocketAddr::new(ip("198.18.0.1"), 7717);
    let now = sim.now();
    let ep = sim.endpoint(b);
    let r = ep.handle_datagram(from, &fop, now);
    assert_eq!(
        r,
        Err(Error::UnexpectedMessage(
            "a FOP for a flow being negotiated"
        ))
    );
    assert!(ep.poll_event().is_none());
    assert!(ep.poll_transmit().is_none());
    // Much later (the negotiation long gone from b's table) the same copy
    // is stale: its age is not the epoch's age here.
    sim.run_for(SETTLE);
    let now = sim.now();
    let ep = sim.endpoint(b);
    let r = ep.handle_datagram(from, &fop, now);
    assert_eq!(r, Err(Error::UnexpectedMessage("a stale FOP")));
    assert!(ep.poll_event().is_none());
}

/// A pair like [`pair`]'s, but a's credential is valid for `secs` from the
/// start (and b does not list a: only a opens flows).
fn pair_with_short_credential(seed: u64, secs: u64) -> Pair {
    let mut sim = Sim::new(seed, LinkConfig::default());
    let spec = GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1");
    let short = sim.issue_valid(
        100,
        Sim::info_of(&spec),
        &fpn_proto::sim::node_key(1),
        fpn_proto::sim::START_UNIX - 5,
        fpn_proto::sim::START_UNIX + secs,
    );
    let a = sim.add_ge_with(spec, move |c| {
        c.fast_open = true;
        c.credential = short;
    });
    let b = sim.add_ge_with(GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"), |c| {
        c.fast_open = true
    });
    sim.endpoint(a)
        .set_directory(vec![(Prefix::host(ip("198.18.0.2")), GeId(2))]);
    Pair { sim, a, b }
}

#[test]
fn an_epoch_ends_with_the_credential_it_was_made_with() {
    // a's credential is valid for 20 s from the start: its epoch with b
    // ends then, and a flow after it is negotiated (and refused).
    let Pair { mut sim, a, b } = pair_with_short_credential(14, 20);
    let step = Duration::from_secs(1);
    sim.send_udp(a, ip("198.18.0.2"), 1000, 53, b"first");
    sim.run_for(step);
    assert_eq!(sim.endpoint(b).occupancy().epochs, 1);
    sim.send_udp(a, ip("198.18.0.2"), 1001, 53, b"second");
    sim.run_for(step);
    assert_eq!(
        sim.endpoint(b).stats().fast_accepted,
        1,
        "fast before the end"
    );
    sim.run_for(Duration::from_secs(20));
    let (wire, eb) = (sim.wire().len(), sim.events(b).len());
    udp(&mut sim, a, "198.18.0.2", 1002);
    assert_eq!(sent(&sim, MessageType::Fop, wire), 0);
    assert_eq!(sim.endpoint(b).occupancy().epochs, 0);
    assert!(
        installed(&sim, b, eb).is_empty(),
        "an expired credential was taken"
    );
}

#[test]
fn a_connection_reopened_while_its_negotiation_lingers_is_negotiated_not_fast_opened() {
    let Pair { mut sim, a, b } = pair(21);
    // The first flow is negotiated; its machines linger (10 s) at both
    // ends to absorb retransmissions.
    sim.send_udp(a, ip("198.18.0.2"), 1000, 53, b"query");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(installed(&sim, b, 0).len(), 1);
    // The opener lost the entry meanwhile (evicted from a full PIT, say)
    // and the connection's next packet comes: the peer would refuse a FOP
    // for a connection it just negotiated, so a negotiation it is, at once.
    let (wire, ea, eb) = (sim.wire().len(), sim.events(a).len(), sim.events(b).len());
    sim.send_udp(a, ip("198.18.0.2"), 1000, 53, b"again");
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sent(&sim, MessageType::Fop, wire), 0);
    assert_eq!(sent(&sim, MessageType::Dde, wire), 1);
    let (ia, ib) = (&installed(&sim, a, ea), &installed(&sim, b, eb));
    assert_eq!((ia.len(), ib.len()), (1, 1));
    assert!(ia[0].fast.is_none() && ib[0].fast.is_none());
    let (ka, kb) = (ia[0].keys.as_ref().unwrap(), ib[0].keys.as_ref().unwrap());
    assert_eq!(ka.tx.expose_secret(), kb.rx.expose_secret());
    // A later flow still opens fast.
    let wire = sim.wire().len();
    udp(&mut sim, a, "198.18.0.2", 1001);
    assert_eq!(sent(&sim, MessageType::Fop, wire), 1);
}

/// `n` flows from a to b (UDP, source ports from 2000), each with an opening.
fn evicted(n: u16) -> Vec<msg::EvictedFlow> {
    (0..n)
        .map(|i| msg::EvictedFlow {
            opening: msg::NegotiationId(0x1000 + u64::from(i)),
            flow: fpn_proto::flow::FlowId {
                src: ip("198.18.0.1"),
                dst: ip("198.18.0.2"),
                protocol: fpn_proto::flow::protocol::UDP,
                src_port: 2000 + i,
                dst_port: 53,
            },
        })
        .collect()
}

/// The flows the PeerEvicted events from event `from` on list, with their peer.
fn peer_evicted(sim: &Sim, node: NodeId, from: usize) -> Vec<(GeId, msg::EvictedFlow)> {
    sim.events(node)[from..]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::PeerEvicted { peer, flows } => Some(flows.iter().map(|f| (*peer, *f))),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn an_eviction_notice_reaches_the_peer_under_the_pair_epoch_and_nothing_else_passes() {
    let Pair { mut sim, a, b } = pair(21);
    let now = sim.now();
    // No epoch yet: nothing to send it under (the peer heals instead).
    assert_eq!(sim.endpoint(a).notify_evicted(GeId(2), &evicted(1), now), 0);
    assert!(sim.endpoint(a).poll_transmit().is_none());
    udp(&mut sim, a, "198.18.0.2", 1000);

    // 150 flows: split into datagrams that each fit one packet, all
    // authentic at b, every flow reported once with a as its evictor.
    let flows = evicted(150);
    let (wire, eb) = (sim.wire().len(), sim.events(b).len());
    let now = sim.now();
    assert_eq!(sim.endpoint(a).notify_evicted(GeId(2), &flows, now), 150);
    sim.run_for(SETTLE);
    let notices: Vec<Vec<u8>> = sim.wire()[wire..]
        .iter()
        .filter(|s| msg::peek(&s.payload).is_ok_and(|(t, _)| t == MessageType::Evict))
        .map(|s| s.payload.clone())
        .collect();
    // 45 IPv4 flows fit 1 100 bytes: 45 + 45 + 45 + 15.
    assert_eq!(notices.len(), 4);
    assert!(
        notices.iter().all(|n| n.len() <= 1_100),
        "one datagram each"
    );
    let got = peer_evicted(&sim, b, eb);
    assert_eq!(got.len(), 150);
    assert!(got.iter().all(|(p, _)| *p == GeId(1)));
    assert_eq!(got.iter().map(|(_, f)| *f).collect::<Vec<_>>(), flows);
    assert_eq!(sim.endpoint(b).stats().evict_received, 150);
    assert_eq!(sim.endpoint(a).stats().evict_sent, 150);

    let now = sim.now();
    let from_a = std::net::SocketAddr::new(ip("198.18.0.1"), 7717);
    let from_b = std::net::SocketAddr::new(ip("198.18.0.2"), 7717);
    let eb = sim.events(b).len();
    let ea = sim.events(a).len();
    // A changed id, flow or opening under the same tag: refused.
    for at in [5, notices[3].len() - 33, 20, 27] {
        let mut changed = notices[3].clone();
        changed[at] ^= 1;
        assert_eq!(
            sim.endpoint(b).handle_datagram(from_a, &changed, now),
            Err(Error::BadMac("EVICT tag")),
            "byte {at}"
        );
    }
    // Reflected to its sender: the tag binds the sender, a refuses it.
    assert_eq!(
        sim.endpoint(a).handle_datagram(from_b, &notices[3], now),
        Err(Error::BadMac("EVICT tag"))
    );
    assert_eq!(peer_evicted(&sim, a, ea).len(), 0);
    // An epoch b does not hold: counted, nothing reported.
    let mut unknown = notices[3].clone();
    unknown[10] ^= 0xff;
    assert_eq!(
        sim.endpoint(b).handle_datagram(from_a, &unknown, now),
        Err(Error::UnknownEpoch)
    );
    assert_eq!(sim.endpoint(b).stats().evict_unknown_epoch, 1);
    assert!(sim.endpoint(b).poll_event().is_none());
    assert_eq!(sim.events(b).len(), eb);
}

#[test]
fn an_eviction_notice_is_refused_in_transit_and_malformed_ones_are_typed_errors() {
    let Pair { mut sim, a, b } = pair(22);
    udp(&mut sim, a, "198.18.0.2", 1000);
    let now = sim.now();
    sim.endpoint(a).notify_evicted(GeId(2), &evicted(2), now);
    let notice = sim.endpoint(a).poll_transmit().unwrap().payload;
    assert_eq!(msg::peek(&notice).unwrap().0, MessageType::Evict);
    assert!(!MessageType::Evict.intercepted_in_transit());
    let from = std::net::SocketAddr::new(ip("198.18.0.1"), 7717);
    let to = std::net::SocketAddr::new(ip("198.18.0.9"), 7717);
    assert!(matches!(
        sim.endpoint(b)
            .handle_transit_datagram(from, to, &notice, now),
        Err(Error::UnexpectedMessage(_))
    ));
    // An empty list, a count over the limit, a cut or a longer notice.
    let mut empty = notice[..18].to_vec();
    empty.push(0);
    assert!(matches!(
        msg::Message::decode(&empty),
        Err(Error::InvalidField { .. })
    ));
    let mut over = notice.clone();
    over[18] = (msg::MAX_EVICTED + 1) as u8;
    assert!(msg::Message::decode(&over).is_err());
    for cut in [11, 18, 19, notice.len() - 1] {
        assert!(
            msg::Message::decode(&notice[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut long = notice.clone();
    long.push(0);
    assert!(msg::Message::decode(&long).is_err());
    // What decodes encodes back to the same bytes.
    assert_eq!(
        msg::Message::decode(&notice).unwrap().encode().unwrap(),
        notice
    );
}

/// The flows `node` opened from event `from` on: (source port, fast).
fn opened(sim: &Sim, node: NodeId, from: usize) -> Vec<(u16, bool)> {
    installed(sim, node, from)
        .iter()
        .filter(|e| e.position == fpn_proto::dprp::Position::Initiator)
        .map(|e| (e.flow.src_port, e.fast.is_some()))
        .collect()
}

#[test]
fn an_epoch_is_renewed_before_it_ends_and_new_flows_stay_fast_across_its_end() {
    let Pair { mut sim, a, b } = pair(23);
    let t0 = sim.now();
    udp(&mut sim, a, "198.18.0.2", 1000);
    udp(&mut sim, a, "198.18.0.2", 1001);
    assert_eq!(opened(&sim, a, 0), [(1000, false), (1001, true)]);
    // 25 s before the epoch's end (300 s; it renews in its last 30 s):
    // the next flow is negotiated, and leaves both ends the next epoch.
    sim.run_for(Duration::from_secs(275) - (sim.now() - t0));
    let ea = sim.events(a).len();
    udp(&mut sim, a, "198.18.0.2", 1002);
    assert_eq!(opened(&sim, a, ea), [(1002, false)]);
    assert_eq!(sim.endpoint(a).stats().epoch_renewals, 1);
    assert_eq!(sim.endpoint(a).occupancy().epochs, 2);
    assert_eq!(sim.endpoint(b).occupancy().epochs, 2);
    // Flows open fast on the new epoch, and keep doing so once the old
    // one has ended (at 300 s): no negotiation after the renewal.
    let ea = sim.events(a).len();
    let started = sim.endpoint(a).stats().started;
    udp(&mut sim, a, "198.18.0.2", 1003);
    udp(&mut sim, a, "198.18.0.2", 1004);
    assert!(sim.now() - t0 > Duration::from_secs(300));
    assert_eq!(sim.endpoint(a).occupancy().epochs, 1);
    udp(&mut sim, a, "198.18.0.2", 1005);
    assert_eq!(
        opened(&sim, a, ea),
        [(1003, true), (1004, true), (1005, true)]
    );
    assert_eq!(sim.endpoint(a).stats().started, started);
    assert_eq!(sim.endpoint(a).stats().epoch_renewals, 1);
}

#[test]
fn an_epoch_cut_short_by_a_credential_is_not_renewed() {
    // a's credential ends 60 s in: its epoch with b ends then too. A
    // renewal could only end at the same moment (and its shorter epoch
    // would ask for the next at once): the flows up to the end's last
    // 5 s stay fast, and none is negotiated to renew it.
    let Pair { mut sim, a, .. } = pair_with_short_credential(24, 60);
    let t0 = sim.now();
    sim.send_udp(a, ip("198.18.0.2"), 1000, 53, b"first");
    sim.run_for(Duration::from_secs(40));
    let ea = sim.events(a).len();
    // Flows each second from 40 s to 53 s: the epoch's last 13 s but 5.
    for port in 1001..=1013 {
        sim.send_udp(a, ip("198.18.0.2"), port, 53, b"late");
        sim.run_for(Duration::from_secs(1));
    }
    assert!(sim.now() - t0 < Duration::from_secs(55));
    let flows = opened(&sim, a, ea);
    assert_eq!(flows.len(), 13);
    assert!(flows.iter().all(|(_, fast)| *fast), "{flows:?}");
    assert_eq!(sim.endpoint(a).stats().epoch_renewals, 0);
}

#[test]
fn a_first_packet_inside_its_fop_reaches_the_peer_once_and_goes_again_with_each_retransmission() {
    let Pair { mut sim, a, b } = pair(21);
    udp(&mut sim, a, "198.18.0.2", 1000);
    // The first FOP of the next flow is lost (its tag mangled), so its
    // retransmission must carry the packet too.
    lose_fops(&mut sim, true);
    let flow = a_to_b(1001);
    let (wire, ea, eb) = (sim.wire().len(), sim.events(a).len(), sim.events(b).len());
    sim.send_packet(a, flow, b"query".to_vec());
    // What a node does: the released first packet (sealed by the node;
    // opaque here) goes into the fast open's FOP.
    let id = installed(&sim, a, ea)[0].negotiation;
    let now = sim.now();
    let ep = sim.endpoint(a);
    assert!(ep.fast_open_takes_first(id), "both ends offered kind 5");
    let with = ep.attach_first(id, b"SEALED-FIRST", true, now).unwrap();
    let Ok(msg::Message::Fop(f)) = msg::Message::decode(&with) else {
        panic!("not a FOP");
    };
    let first = msg::FirstPacket {
        steered: true,
        packet: b"SEALED-FIRST".to_vec(),
    };
    assert_eq!(f.first.as_ref(), Some(&first));
    assert_eq!(ep.stats().fast_first_sent, 1);
    // An unknown fast open is a typed error.
    assert_eq!(
        ep.attach_first(msg::NegotiationId(id.0 ^ 1), b"x", false, now),
        Err(Error::UnknownNegotiation)
    );
    sim.run_for(SETTLE);
    // Lost once, sent again with the packet inside, installed once.
    assert_eq!(sent(&sim, MessageType::Fop, wire), 2);
    let at_b = installed(&sim, b, eb);
    assert_eq!(at_b.len(), 1);
    assert_eq!(at_b[0].first.as_ref(), Some(&first));
    assert_eq!(sim.endpoint(b).stats().fast_first_received, 1);
    // A replay of the FOP with its packet is answered, and installs and
    // hands out nothing.
    let replay = sim.wire()[wire..]
        .iter()
        .rev()
        .find(|s| msg::peek(&s.payload).is_ok_and(|(t, _)| t == MessageType::Fop))
        .unwrap()
        .payload
        .clone();
    let from = std::net::SocketAddr::new(ip("198.18.0.1"), 7717);
    let now = sim.now();
    let ep = sim.endpoint(b);
    ep.handle_datagram(from, &replay, now).unwrap();
    // Marked steered, it says so again (note 75), and nothing more.
    assert!(matches!(ep.poll_event(), Some(Event::FastSteered { .. })));
    assert!(ep.poll_event().is_none());
    assert_eq!(ep.stats().fast_first_received, 1);
}

#[test]
fn a_fop_sent_again_marked_steered_tells_the_peer_and_hands_out_nothing_twice() {
    let Pair { mut sim, a, b } = pair(23);
    udp(&mut sim, a, "198.18.0.2", 1000);
    let flow = a_to_b(1001);
    let (eb, ea) = (sim.events(b).len(), sim.events(a).len());
    // The FOP's first sending is lost: its retransmission carries what
    // `attach_first` puts in.
    lose_fops(&mut sim, true);
    sim.send_packet(a, flow, b"query".to_vec());
    let id = installed(&sim, a, ea)[0].negotiation;
    let now = sim.now();
    // The node sends the FOP with the packet inside before it steers the
    // flow: not marked.
    let fop = sim
        .endpoint(a)
        .attach_first(id, b"SEALED-FIRST", false, now)
        .unwrap();
    // Up to b's answer, not beyond.
    let mut waited = Duration::ZERO;
    while installed(&sim, b, eb).is_empty() && waited < SETTLE {
        sim.run_for(Duration::from_millis(1));
        waited += Duration::from_millis(1);
    }
    let at_b = installed(&sim, b, eb);
    assert_eq!(at_b.len(), 1);
    assert!(!at_b[0].first.as_ref().unwrap().steered);

    // Once it steers the flow: the same FOP, marked. Nothing else changes,
    // so its tag still verifies.
    let ep = sim.endpoint(a);
    let notice = ep.mark_steered(&fop).unwrap();
    assert_eq!(ep.stats().fast_steered_sent, 1);
    let (Ok(msg::Message::Fop(before)), Ok(msg::Message::Fop(after))) =
        (msg::Message::decode(&fop), msg::Message::decode(&notice))
    else {
        panic!("not FOPs");
    };
    assert_eq!(
        (before.id, before.index, before.tag),
        (after.id, after.index, after.tag)
    );
    assert!(after.first.as_ref().unwrap().steered);
    assert_eq!(after.first.as_ref().unwrap().packet, b"SEALED-FIRST");
    // Only of a FOP with its first packet.
    let fok = sim
        .wire()
        .iter()
        .find(|s| msg::peek(&s.payload).is_ok_and(|(t, _)| t == MessageType::Fok));
    let fok = fok.unwrap().payload.clone();
    let bare = msg::Message::Fop(msg::Fop {
        first: None,
        ..after.clone()
    })
    .encode()
    .unwrap();
    let ep = sim.endpoint(a);
    for bad in [&fok[..], &bare[..], &b"\x01\x07garbage"[..]] {
        assert!(ep.mark_steered(bad).is_err());
    }
    assert_eq!(ep.stats().fast_steered_sent, 1);

    // b: reported as FastSteered by the epoch's peer for that opening, no
    // second entry, no packet again; answered with the FOK again, like a
    // retransmission.
    let from = std::net::SocketAddr::new(ip("198.18.0.1"), 7717);
    let now = sim.now();
    let ep = sim.endpoint(b);
    while ep.poll_transmit().is_some() {}
    ep.handle_datagram(from, &notice, now).unwrap();
    match ep.poll_event() {
        Some(Event::FastSteered {
            flow: f,
            peer,
            opening,
        }) => assert_eq!((f, peer, opening), (flow, GeId(1), id)),
        other => panic!("expected FastSteered, got {other:?}"),
    }
    assert!(ep.poll_event().is_none());
    let answer = ep.poll_transmit().expect("the FOK again");
    assert_eq!(msg::peek(&answer.payload).unwrap().0, MessageType::Fok);
    let st = ep.stats();
    assert_eq!(
        (
            st.fast_steered_received,
            st.fast_first_received,
            st.fast_accepted
        ),
        (1, 1, 1)
    );
    // A notice whose covered bytes were changed fails its tag: no event.
    let mut forged = notice.clone();
    forged[20] ^= 1; // in the index
    assert!(ep.handle_datagram(from, &forged, now).is_err());
    assert!(ep.poll_event().is_none());
    assert_eq!(ep.stats().fast_steered_received, 1);

    // a, its fast open confirmed by the first FOK, takes the second one
    // silently; one whose tag was changed is an error as before.
    sim.run_for(SETTLE);
    let from_b = std::net::SocketAddr::new(ip("198.18.0.2"), 7717);
    let now = sim.now();
    let ep = sim.endpoint(a);
    assert_eq!(ep.stats().fast_confirmed, 1);
    while ep.poll_event().is_some() {}
    ep.handle_datagram(from_b, &answer.payload, now).unwrap();
    assert!(ep.poll_event().is_none());
    assert_eq!(ep.stats().fast_fok_repeats, 1);
    let mut bad = answer.payload.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        ep.handle_datagram(from_b, &bad, now),
        Err(Error::UnknownNegotiation)
    );
    assert_eq!(ep.stats().fast_fok_repeats, 1);
}

#[test]
fn a_peer_that_does_not_take_first_packets_never_gets_one() {
    // b with first packets (the control) and without (like a node before
    // them: no option kind 5), the epoch negotiated by either end: both
    // ends' epochs say the same, and a FOP carries a packet only where
    // both offered kind 5.
    for (b_first, b_opens) in [(true, false), (true, true), (false, false), (false, true)] {
        let Pair { mut sim, a, b } = pair_with(22, |c| c.fast_first = b_first);
        if b_opens {
            udp(&mut sim, b, "198.18.0.1", 1000);
        } else {
            udp(&mut sim, a, "198.18.0.2", 1000);
        }
        let ea = sim.events(a).len();
        // The FOP's first sending is lost: its retransmission carries what
        // `attach_first` put in.
        lose_fops(&mut sim, true);
        sim.send_udp(a, ip("198.18.0.2"), 1001, 53, b"query");
        let id = installed(&sim, a, ea)[0].negotiation;
        assert!(installed(&sim, a, ea)[0].fast.is_some(), "fast-opened");
        let now = sim.now();
        let ep = sim.endpoint(a);
        let case = format!("b first packets {b_first}, b negotiated {b_opens}");
        assert_eq!(ep.fast_open_takes_first(id), b_first, "{case}");
        let attached = ep.attach_first(id, b"SEALED", false, now);
        if b_first {
            attached.unwrap();
        } else {
            assert!(
                matches!(attached, Err(Error::UnexpectedMessage(_))),
                "{case}"
            );
        }
        sim.run_for(SETTLE);
        assert_eq!(sim.endpoint(b).stats().fast_accepted, 1, "{case}");
        assert_eq!(
            sim.endpoint(b).stats().fast_first_received,
            u64::from(b_first),
            "{case}"
        );
    }
}

#[test]
fn a_first_packet_put_in_late_restarts_the_fop_s_retransmission_timer() {
    // The node holds a FOP until it steers the flow: the packet goes in
    // 200 ms after the FOP was made, and the retransmission comes a full
    // RTO (250 ms) after that, not 50 ms later.
    let Pair { mut sim, a, b: _ } = pair(23);
    udp(&mut sim, a, "198.18.0.2", 1000);
    lose_fops(&mut sim, false);
    let (wire, ea) = (sim.wire().len(), sim.events(a).len());
    sim.send_packet(a, a_to_b(1001), b"query".to_vec());
    let id = installed(&sim, a, ea)[0].negotiation;
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sent(&sim, MessageType::Fop, wire), 1);
    let now = sim.now();
    sim.endpoint(a)
        .attach_first(id, b"SEALED", true, now)
        .unwrap();
    sim.run_for(Duration::from_millis(240));
    assert_eq!(sent(&sim, MessageType::Fop, wire), 1, "retransmitted early");
    sim.run_for(Duration::from_millis(20));
    assert_eq!(sent(&sim, MessageType::Fop, wire), 2);
}

#[test]
fn a_receiver_without_first_packets_installs_the_flow_but_hands_out_no_packet() {
    // A FOP with a packet on an epoch made without kind 5 (an opener that
    // ignores what the epoch says): the flow is installed as for a plain
    // FOP, the packet is not handed out.
    let Pair { mut sim, a, b } = pair_with(24, |c| c.fast_first = false);
    udp(&mut sim, a, "198.18.0.2", 1000);
    let eb = sim.events(b).len();
    // a's FOP, taken before the simulator sends it, with a packet put in
    // (the tag does not cover it).
    let now = sim.now();
    let ep = sim.endpoint(a);
    ep.handle_packet(a_to_b(1001), b"query".to_vec(), now)
        .unwrap();
    let fop = std::iter::from_fn(|| ep.poll_transmit())
        .find(|t| msg::peek(&t.payload).is_ok_and(|(k, _)| k == MessageType::Fop))
        .unwrap()
        .payload;
    let Ok(msg::Message::Fop(mut f)) = msg::Message::decode(&fop) else {
        panic!("not a FOP");
    };
    f.first = Some(msg::FirstPacket {
        steered: true,
        packet: b"SEALED".to_vec(),
    });
    let bytes = msg::Message::Fop(f).encode().unwrap();
    let from = std::net::SocketAddr::new(ip("198.18.0.1"), 7717);
    let now = sim.now();
    let ep = sim.endpoint(b);
    ep.handle_datagram(from, &bytes, now).unwrap();
    let Some(Event::Established(e)) = ep.poll_event() else {
        panic!("not installed");
    };
    assert!(e.first.is_none());
    assert_eq!(ep.stats().fast_first_received, 0);
    assert_eq!(sim.events(b).len(), eb);
}
