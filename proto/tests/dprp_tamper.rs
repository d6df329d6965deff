//! Every byte of every DPRP message, corrupted on the wire: the receiver (or
//! the next GE that checks an authenticator over it) refuses it with a typed
//! error, no GE installs an entry from it, and the negotiation recovers by
//! retransmission with the ends' keys still pairing up. (A gateway passes a
//! DDE on to the flow's destination, so a DDE whose destination was mangled
//! before a gateway simply goes nowhere.)

use std::cell::Cell;
use std::rc::Rc;

use fpn_proto::action::Action;
use fpn_proto::dprp::msg::peek;
use fpn_proto::dprp::{Event, MessageType, Prefix};
use fpn_proto::ge::{GeKind, GroupId, Mode};
use fpn_proto::sim::{GeSpec, LinkConfig, NodeId, Sim};

const KINDS: [MessageType; 4] = [
    MessageType::Dde,
    MessageType::Rgi,
    MessageType::Mpit,
    MessageType::Cdn,
];

struct Net {
    sim: Sim,
    initiator: NodeId,
    responder: NodeId,
    all: Vec<NodeId>,
}

fn direct() -> Net {
    let mut sim = Sim::new(77, LinkConfig::default());
    let a = sim.add_ge(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"));
    let b = sim.add_ge(GeSpec::host(2, "b", Mode::Closed, &[1], "198.18.0.2"));
    Net {
        sim,
        initiator: a,
        responder: b,
        all: vec![a, b],
    }
}

fn via_gateway() -> Net {
    let mut sim = Sim::new(78, LinkConfig::default());
    let subnet = Prefix::host("10.0.0.100".parse().unwrap());
    let gw = sim.add_ge(GeSpec::gateway(
        10,
        "gw",
        GeKind::Gen,
        Mode::Closed,
        &[7],
        "198.18.0.10",
        subnet,
    ));
    let a = sim.add_ge(GeSpec::host(1, "a", Mode::Open, &[1], "10.0.0.2").behind(gw));
    let b = sim.add_ge(GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"));
    Net {
        sim,
        initiator: a,
        responder: b,
        all: vec![a, gw, b],
    }
}

/// The sizes of each message type as sent, in order, in a clean run.
fn clean_sizes(build: fn() -> Net) -> Vec<(MessageType, usize)> {
    let mut n = build();
    let dst = n.sim.addr(n.responder);
    n.sim.send_udp(n.initiator, dst, 1, 2, b"x");
    n.sim.drive();
    n.sim
        .wire()
        .iter()
        .map(|s| (peek(&s.payload).unwrap().0, s.payload.len()))
        .collect()
}

/// Runs one negotiation with byte `at` of the `nth` datagram of type `kind`
/// xored with `mask`; checks the outcome.
fn run(build: fn() -> Net, kind: MessageType, nth: usize, at: usize, mask: u8) {
    let mut n = build();
    let seen = Rc::new(Cell::new(0usize));
    let s = seen.clone();
    n.sim.set_tamper(move |_, bytes| {
        if peek(bytes).is_ok_and(|(t, _)| t == kind) {
            if s.get() == nth {
                bytes[at] ^= mask;
            }
            s.set(s.get() + 1);
        }
    });
    let dst = n.sim.addr(n.responder);
    n.sim.send_udp(n.initiator, dst, 1, 2, b"x");
    n.sim.drive();
    let ctx = format!("{kind:?} #{nth} byte {at} ^ {mask:#04x}");
    let errors: usize = n.all.iter().map(|g| n.sim.errors(*g).len()).sum();
    // Refused with a typed error, or (a mangled destination in a DDE a
    // gateway passes on) sent where no GE listens.
    assert!(
        errors > 0 || n.sim.stats.undeliverable > 0,
        "{ctx}: corruption went unnoticed"
    );
    for g in &n.all {
        let entries = n
            .sim
            .events(*g)
            .iter()
            .filter(|(_, e)| matches!(e, Event::Established(_)))
            .count();
        assert_eq!(entries, 1, "{ctx}: GE {g:?} installed {entries} entries");
    }
    let (i, r) = (
        n.sim.established(n.initiator).unwrap(),
        n.sim.established(n.responder).unwrap(),
    );
    assert_eq!(i.action, Action::Protect(GroupId(1)), "{ctx}");
    let (ik, rk) = (i.keys.as_ref().unwrap(), r.keys.as_ref().unwrap());
    assert_eq!(ik.tx.expose_secret(), rk.rx.expose_secret(), "{ctx}");
    assert_eq!(ik.rx.expose_secret(), rk.tx.expose_secret(), "{ctx}");
}

#[test]
fn every_corrupted_byte_between_two_ges_is_refused() {
    let sizes = clean_sizes(direct);
    assert_eq!(sizes.iter().map(|s| s.0).collect::<Vec<_>>(), KINDS);
    for (kind, len) in sizes {
        for at in 0..len {
            for mask in [0x01, 0x80] {
                run(direct, kind, 0, at, mask);
            }
        }
    }
}

#[test]
fn every_corrupted_byte_through_a_gateway_is_refused() {
    let sizes = clean_sizes(via_gateway);
    for kind in KINDS {
        // Each message crosses two hops: corrupt the first and the second copy.
        let lens: Vec<usize> = sizes.iter().filter(|s| s.0 == kind).map(|s| s.1).collect();
        assert_eq!(lens.len(), 2, "{kind:?}");
        for (nth, len) in lens.into_iter().enumerate() {
            for at in 0..len {
                run(via_gateway, kind, nth, at, 0xff);
            }
        }
    }
}
