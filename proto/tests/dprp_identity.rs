//! Identity binding: a flow's ends are the addresses the ends' credentials
//! cover (the overlay address, or a prefix a gateway credential names).
//!
//! A member GE that negotiates under an address it does not own is refused
//! by the responder; a GE that answers for a destination it does not own is
//! refused by the initiator. The misbehaving GEs here are honest code with a
//! dishonest configuration: they are told they protect addresses their
//! credentials do not name, which is what a modified node would claim.

use std::net::IpAddr;

use fpn_proto::Error;
use fpn_proto::action::Action;
use fpn_proto::dprp::{Config, FailReason, Prefix, RefuseCode};
use fpn_proto::flow::{FlowId, protocol};
use fpn_proto::ge::{GeId, GeKind, Mode};
use fpn_proto::sim::{GeSpec, LinkConfig, NodeId, Sim};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn udp(src: &str, dst: &str) -> FlowId {
    FlowId {
        src: ip(src),
        dst: ip(dst),
        protocol: protocol::UDP,
        src_port: 4000,
        dst_port: 22,
    }
}

/// A configuration that claims to protect `extra` besides what the
/// credential names (the credential itself is the CA's and stays honest).
fn claims(extra: Vec<Prefix>) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| c.protected.extend(extra)
}

const FORGED: [&str; 3] = [
    // another member's overlay address
    "100.64.0.3",
    // an overlay address nobody holds (yet)
    "100.64.0.99",
    // an address outside the overlay
    "203.0.113.5",
];

#[test]
fn a_forged_source_is_refused_by_the_responder_in_every_case() {
    // The forger shares a group with the responder (the flow would be
    // protected), or shares none (the flow would be plain): refused either way.
    for forger_groups in [&[1][..], &[7][..]] {
        let mut sim = Sim::new(71, LinkConfig::default());
        let forged: Vec<Prefix> = FORGED.iter().map(|a| Prefix::host(ip(a))).collect();
        let m = sim.add_ge_with(
            GeSpec::host(1, "mallory", Mode::Open, forger_groups, "100.64.0.1"),
            claims(forged),
        );
        let b = sim.add_ge(GeSpec::host(2, "bob", Mode::Open, &[1], "100.64.0.2"));
        let _victim = sim.add_ge(GeSpec::host(3, "victim", Mode::Open, &[1], "100.64.0.3"));
        for src in FORGED {
            sim.send_packet(m, udp(src, "100.64.0.2"), b"forged".to_vec());
        }
        sim.drive();
        assert_eq!(
            sim.established_count(b),
            0,
            "the responder installed a forged flow"
        );
        assert_eq!(sim.established_count(m), 0);
        // The forger learns at once, from a signed NAK, that it was refused.
        assert_eq!(
            sim.failures(m),
            vec![
                FailReason::Refused {
                    by: GeId(2),
                    code: RefuseCode::NotOwner
                };
                3
            ]
        );
        assert_eq!(sim.endpoint(b).stats().not_owner, 3);
        let refused: Vec<IpAddr> = sim
            .errors(b)
            .iter()
            .filter_map(|(_, e)| match e {
                Error::NotOwner { ge: 1, addr } => Some(*addr),
                _ => None,
            })
            .collect();
        assert_eq!(refused, FORGED.map(ip));
        // Its own address still works.
        sim.send_udp(m, ip("100.64.0.2"), 5000, 22, b"honest");
        sim.drive();
        assert_eq!(sim.established_count(b), 1);
    }
}

#[test]
fn a_forged_source_does_not_cancel_a_simultaneous_open() {
    // Bob negotiates with the victim; Mallory sends a DDE for the reverse
    // flow forged as the victim's. Bob's own negotiation must survive.
    let mut sim = Sim::new(72, LinkConfig::default());
    let m = sim.add_ge_with(
        GeSpec::host(1, "mallory", Mode::Open, &[1], "100.64.0.1"),
        claims(vec![Prefix::host(ip("100.64.0.3"))]),
    );
    let b = sim.add_ge(GeSpec::host(5, "bob", Mode::Open, &[1], "100.64.0.5"));
    let v = sim.add_ge(GeSpec::host(3, "victim", Mode::Open, &[1], "100.64.0.3"));
    let flow = sim.send_udp(b, ip("100.64.0.3"), 6000, 22, b"hello");
    sim.send_packet(m, flow.reversed(), b"forged".to_vec());
    sim.drive();
    let eb = sim.established(b).expect("bob's flow");
    assert_eq!(eb.peer, GeId(3));
    assert_eq!(sim.established(v).unwrap().peer, GeId(5));
    assert_eq!(sim.endpoint(b).stats().not_owner, 1);
}

/// A GEN whose credential names 192.168.1.0/24, with a terminal in it, and a
/// GES in its group on the public underlay.
fn gen_site(sim: &mut Sim, configured: Vec<Prefix>) -> (NodeId, NodeId) {
    let spec = GeSpec::gateway(
        10,
        "gw",
        GeKind::Gen,
        Mode::Closed,
        &[1],
        "198.18.0.10",
        net("192.168.1.0/24"),
    );
    let gw = sim.add_ge_with(spec, claims(configured));
    let b = sim.add_ge(GeSpec::host(2, "bob", Mode::Open, &[1], "198.18.0.2"));
    (gw, b)
}

#[test]
fn a_gateway_speaks_for_its_prefix_and_nothing_else() {
    let mut sim = Sim::new(73, LinkConfig::default());
    // Configured for a second LAN its credential does not name.
    let (gw, b) = gen_site(&mut sim, vec![net("192.168.2.0/24")]);
    let nas = sim.add_terminal("nas", "192.168.1.10", gw);
    let other = sim.add_terminal("other", "192.168.2.10", gw);
    sim.send_udp(nas, ip("198.18.0.2"), 1000, 22, b"in the prefix");
    sim.drive();
    let e = sim.established(gw).expect("192.168.1.10 is the gateway's");
    assert!(matches!(e.action, Action::Protect(_)));
    assert_eq!(sim.established(b).unwrap().peer, GeId(10));
    sim.send_udp(other, ip("198.18.0.2"), 1000, 22, b"outside the prefix");
    sim.drive();
    assert_eq!(sim.established_count(b), 1, "no entry for 192.168.2.10");
    assert_eq!(
        sim.failures(gw),
        [FailReason::Refused {
            by: GeId(2),
            code: RefuseCode::NotOwner
        }]
    );
    assert_eq!(sim.endpoint(b).stats().not_owner, 1);
}

#[test]
fn a_responder_answering_for_a_destination_it_does_not_own_is_refused() {
    let mut sim = Sim::new(74, LinkConfig::default());
    let (gw, b) = gen_site(&mut sim, vec![net("192.168.2.0/24")]);
    let _other = sim.add_terminal("other", "192.168.2.10", gw);
    let _nas = sim.add_terminal("nas", "192.168.1.10", gw);
    // The gateway answers for 192.168.2.10, which its credential does not name.
    sim.send_udp(b, ip("192.168.2.10"), 2000, 80, b"to the wrong owner");
    sim.drive();
    assert_eq!(
        sim.failures(b),
        [FailReason::Rejected(Error::NotOwner {
            ge: 10,
            addr: ip("192.168.2.10")
        })]
    );
    assert_eq!(sim.established_count(b), 0);
    assert_eq!(sim.established_count(gw), 0, "no MPIT reached the gateway");
    assert_eq!(sim.endpoint(b).stats().not_owner, 1);
    // The same gateway answering for its own prefix is accepted.
    sim.send_udp(b, ip("192.168.1.10"), 2000, 80, b"to the owner");
    sim.drive();
    assert_eq!(sim.established_count(b), 1);
    assert_eq!(sim.established(b).unwrap().peer, GeId(10));
}

#[test]
fn a_gateway_credential_without_prefixes_speaks_for_no_terminal() {
    // A GEN enrolled before it was given prefixes (a version 1 credential):
    // it fails closed for its LAN until the GMS names the prefix.
    let mut sim = Sim::new(75, LinkConfig::default());
    let spec = GeSpec::gateway(
        10,
        "gw",
        GeKind::Gen,
        Mode::Open,
        &[1],
        "198.18.0.10",
        net("192.168.1.0/24"),
    );
    let bare = sim.issue(Sim::info_of(&spec), &fpn_proto::sim::node_key(10));
    let gw = sim.add_ge_with(spec, move |c| c.credential = bare);
    let b = sim.add_ge(GeSpec::host(2, "bob", Mode::Open, &[1], "198.18.0.2"));
    let nas = sim.add_terminal("nas", "192.168.1.10", gw);
    sim.send_udp(nas, ip("198.18.0.2"), 1000, 22, b"x");
    sim.drive();
    assert_eq!(sim.established_count(b), 0);
    assert_eq!(sim.endpoint(b).stats().not_owner, 1);
    // Its own overlay address is still its own.
    sim.send_udp(gw, ip("198.18.0.2"), 1000, 22, b"y");
    sim.drive();
    assert_eq!(sim.established_count(b), 1);
}

#[test]
fn legitimate_flows_still_work_and_count_no_refusal() {
    let mut sim = Sim::new(76, LinkConfig::default());
    let a = sim.add_ge(GeSpec::host(1, "a", Mode::Open, &[1], "100.64.0.1"));
    let b = sim.add_ge(GeSpec::host(2, "b", Mode::Closed, &[1], "100.64.0.2"));
    let gw = sim.add_ge(GeSpec::gateway(
        10,
        "gw",
        GeKind::Gen,
        Mode::Closed,
        &[1],
        "198.18.0.10",
        net("10.0.0.0/24"),
    ));
    let inner = sim.add_ge(GeSpec::host(11, "inner", Mode::Open, &[1], "10.0.0.2").behind(gw));
    let term = sim.add_terminal("printer", "10.0.0.9", gw);
    sim.send_udp(a, ip("100.64.0.2"), 1, 2, b"ges to ges");
    sim.send_udp(inner, ip("100.64.0.1"), 3, 4, b"ges behind a gen");
    sim.send_udp(term, ip("100.64.0.2"), 5, 6, b"terminal via its gen");
    sim.send_udp(b, ip("10.0.0.9"), 7, 8, b"to a terminal");
    sim.drive();
    assert_eq!(sim.established_count(a), 2);
    assert_eq!(sim.established_count(b), 3);
    assert!(sim.failures(a).is_empty() && sim.failures(b).is_empty());
    for n in [a, b, gw, inner] {
        assert_eq!(sim.endpoint(n).stats().not_owner, 0);
        assert!(sim.errors(n).is_empty(), "{:?}", sim.errors(n));
    }
}
