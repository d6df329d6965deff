//! The smaller DPRP holes of the hardening review (issue #9, item 5): who
//! may refuse a negotiation, what a simultaneous open may trust, and that
//! two open members of one group never fall back to plain.

use std::net::{IpAddr, SocketAddr};

use fpn_proto::Error;
use fpn_proto::dprp::msg::{CredentialBytes, Dde, Nak, NegotiationId, ResponderPart, Rgi};
use fpn_proto::dprp::transcript as tr;
use fpn_proto::dprp::{DPRP_PORT, Event, FailReason, Message, RefuseCode};
use fpn_proto::ge::{GeId, GroupId, Mode};
use fpn_proto::sim::{self, GeSpec, LinkConfig, NodeId, Sim};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The credential bytes the CA issued for the GE `spec` (public: they are
/// in every DDE and RGI that GE sends).
fn credential_of(sim: &Sim, spec: &GeSpec) -> CredentialBytes {
    let c = sim.issue(Sim::info_of(spec), &sim::node_key(spec.id));
    CredentialBytes::from_credential(&c).unwrap()
}

/// The last DDE `from` put on the wire.
fn last_dde(sim: &Sim, from: NodeId) -> Dde {
    let sent = sim.wire().iter().rev().find(|s| s.from == from).unwrap();
    match Message::decode(&sent.payload).unwrap() {
        Message::Dde(d) => d,
        m => panic!("not a DDE: {:?}", m.kind()),
    }
}

#[test]
fn a_nak_from_a_ge_that_does_not_speak_for_the_destination_is_dropped() {
    let mut sim = Sim::new(91, LinkConfig::default());
    let a = sim.add_ge(GeSpec::host(1, "alice", Mode::Open, &[1], "100.64.0.1"));
    let b = sim.add_ge(GeSpec::host(2, "bob", Mode::Open, &[1], "100.64.0.2"));
    sim.send_udp(a, ip("100.64.0.2"), 5000, 22, b"hello");
    let dde = last_dde(&sim, a);
    // Mallory, enrolled (a CA-valid credential), saw the DDE in the clear
    // and signs a genuine-looking NAK over its hash.
    let spec = GeSpec::host(9, "mallory", Mode::Open, &[1], "100.64.0.9");
    let mut nak = Nak {
        id: dde.id,
        code: RefuseCode::NotOwner,
        credential: credential_of(&sim, &spec),
        signature: [0; 64],
    };
    let h0 = tr::dde_hash(&dde.core().unwrap());
    let tbs = [tr::NAK_SIG, &h0[..], &nak.core().unwrap()].concat();
    nak.signature = sim::node_key(9).sign(&tbs);
    let raw = Message::Nak(nak).encode().unwrap();
    let now = sim.now();
    let from = SocketAddr::new(ip("100.64.0.9"), DPRP_PORT);
    let r = sim.endpoint(a).handle_datagram(from, &raw, now);
    assert_eq!(r, Err(Error::NakFromStranger(9)));
    assert_eq!(sim.endpoint(a).stats().stranger_naks, 1);
    sim.drive();
    // The genuine answer still came, and nothing failed.
    assert_eq!(sim.failures(a), vec![]);
    assert_eq!(sim.established(a).expect("alice's flow").peer, GeId(2));
    assert_eq!(sim.established_count(b), 1);
}

#[test]
fn a_copied_credential_does_not_win_a_simultaneous_open() {
    // Bob (id 5) negotiates with the victim (id 3, the lower id, so a DDE
    // from the victim for the same connection would win). Mallory copies the
    // victim's public credential into a DDE for the reverse flow: its source
    // is the victim's own address, so the ownership check passes, but
    // Mallory holds no node key to finish with.
    let mut sim = Sim::new(92, LinkConfig::default());
    let b = sim.add_ge(GeSpec::host(5, "bob", Mode::Open, &[1], "100.64.0.5"));
    let vspec = GeSpec::host(3, "victim", Mode::Open, &[1], "100.64.0.3");
    let v = sim.add_ge(vspec.clone());
    let flow = sim.send_udp(b, ip("100.64.0.3"), 6000, 22, b"hello");
    let genuine = last_dde(&sim, b);
    let forged = Dde {
        id: NegotiationId(0x00ba_d0ba_d0ba_d0ba),
        flow: flow.reversed(),
        nonce: [0x42; 16],
        share: [9; 32],
        credential: credential_of(&sim, &vspec),
        claims: genuine.claims.clone(),
        options: vec![],
        hops: vec![],
    };
    let raw = Message::Dde(forged).encode().unwrap();
    let now = sim.now();
    let from = SocketAddr::new(ip("100.64.0.66"), DPRP_PORT);
    sim.endpoint(b).handle_datagram(from, &raw, now).unwrap();
    sim.drive();
    assert_eq!(sim.failures(b), vec![], "bob's negotiation was cancelled");
    assert_eq!(sim.established(b).expect("bob's flow").peer, GeId(3));
    assert_eq!(
        sim.established(v).expect("the victim's entry").peer,
        GeId(5)
    );
}

#[test]
fn a_genuine_simultaneous_open_still_ends_in_one_entry_each() {
    let mut sim = Sim::new(93, LinkConfig::default());
    let b = sim.add_ge(GeSpec::host(5, "bob", Mode::Open, &[1], "100.64.0.5"));
    let v = sim.add_ge(GeSpec::host(3, "victim", Mode::Open, &[1], "100.64.0.3"));
    let flow = sim.send_udp(b, ip("100.64.0.3"), 6000, 22, b"from bob");
    sim.send_packet(v, flow.reversed(), b"from the victim".to_vec());
    sim.drive();
    assert_eq!(sim.failures(b), vec![]);
    assert_eq!(sim.failures(v), vec![]);
    assert_eq!(sim.established(b).unwrap().peer, GeId(3));
    assert_eq!(sim.established(v).unwrap().peer, GeId(5));
    assert_eq!(sim.endpoint(b).held_packets(), 0);
    assert_eq!(sim.endpoint(v).held_packets(), 0);
}

#[test]
fn open_members_of_one_group_never_fall_back_to_plain_when_one_lacks_the_key() {
    // The responder lacks the key, then the initiator does.
    for lacking in [2u32, 1] {
        let mut sim = Sim::new(94, LinkConfig::default());
        let a = sim.add_ge(GeSpec::host(1, "alice", Mode::Open, &[1], "100.64.0.1"));
        let b = sim.add_ge(GeSpec::host(2, "bob", Mode::Open, &[1], "100.64.0.2"));
        let node = if lacking == 1 { a } else { b };
        sim.endpoint(node).remove_group(GroupId(1));
        let (from, peer) = (a, b);
        sim.send_udp(from, ip("100.64.0.2"), 7000, 22, b"secret");
        sim.drive();
        assert_eq!(
            sim.established_count(from),
            0,
            "a plain entry was installed"
        );
        assert_eq!(
            sim.established_count(peer),
            0,
            "a plain entry was installed"
        );
        // The responder refuses with a signed NAK: the initiator fails at
        // once (its application gets ICMP), not after a timeout.
        assert_eq!(
            sim.failures(from),
            vec![FailReason::Refused {
                by: GeId(2),
                code: RefuseCode::KeyUnavailable
            }]
        );
        assert!(
            sim.errors(peer)
                .iter()
                .any(|(_, e)| *e == Error::GroupKeyMissing { group: 1 })
        );
    }
}

#[test]
fn members_without_a_shared_group_still_pass_plain_in_open_mode() {
    let mut sim = Sim::new(95, LinkConfig::default());
    let a = sim.add_ge(GeSpec::host(1, "alice", Mode::Open, &[1], "100.64.0.1"));
    let b = sim.add_ge(GeSpec::host(2, "bob", Mode::Open, &[2], "100.64.0.2"));
    sim.send_udp(a, ip("100.64.0.2"), 7000, 22, b"plain");
    sim.drive();
    assert_eq!(sim.established_count(a), 1);
    assert_eq!(sim.established_count(b), 1);
}

#[test]
fn an_initiator_refuses_a_plain_answer_from_a_member_of_its_group() {
    // A responder that predates the no-downgrade NAK (played by hand here:
    // a genuine RGI, tag and all, from b's key) answers a's DDE claiming no
    // key for group 1, which both credentials name. The initiator must
    // fail rather than decide `pass`.
    let mut sim = Sim::new(96, LinkConfig::default());
    let a = sim.add_ge(GeSpec::host(1, "alice", Mode::Open, &[1], "100.64.0.1"));
    let bspec = GeSpec::host(2, "bob", Mode::Open, &[1], "100.64.0.2");
    sim.send_udp(a, ip("100.64.0.2"), 5000, 22, b"hello");
    let dde = last_dde(&sim, a);
    let h0 = tr::dde_hash(&dde.core().unwrap());
    let mut rgi = Rgi {
        id: dde.id,
        echo: vec![],
        responder: ResponderPart {
            credential: credential_of(&sim, &bspec),
            share: x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([5; 32]))
                .to_bytes(),
            claims: vec![],
            chosen: None,
            options: vec![],
        },
        proof: None,
        tag: [0; 32],
        hops: vec![],
    };
    let c_r = tr::responder_hash(&h0, &rgi.core().unwrap());
    let pair = tr::PairKey::derive(&sim::node_key(2), &sim::node_key(1).public()).unwrap();
    rgi.tag = pair.tag(tr::RGI_TAG, &c_r, &[]);
    let raw = Message::Rgi(rgi).encode().unwrap();
    let now = sim.now();
    let from = SocketAddr::new(ip("100.64.0.2"), DPRP_PORT);
    sim.endpoint(a).handle_datagram(from, &raw, now).unwrap();
    let mut failed = vec![];
    while let Some(e) = sim.endpoint(a).poll_event() {
        if let Event::Failed { reason, .. } = e {
            failed.push(reason);
        }
    }
    assert_eq!(
        failed,
        vec![FailReason::Rejected(Error::GroupKeyMissing { group: 1 })]
    );
}

/// Issue 9 #3: a revocation that arrives while a negotiation runs (the
/// credential was valid when it was checked) stops the entry at
/// completion: at the responder after its RGI, at the initiator after its
/// MPIT.
#[test]
fn a_peer_revoked_during_the_negotiation_gets_no_entry() {
    for revoke_at_responder in [true, false] {
        let mut sim = Sim::new(95, LinkConfig::default());
        let a = sim.add_ge(GeSpec::host(1, "alice", Mode::Open, &[1], "100.64.0.1"));
        let b = sim.add_ge(GeSpec::host(2, "bob", Mode::Open, &[1], "100.64.0.2"));
        sim.send_udp(a, ip("100.64.0.2"), 5000, 22, b"hello");
        // Until the victim has checked the other's credential and answered:
        // b its RGI (one datagram), a its MPIT (its second).
        let (victim, other, sent) = if revoke_at_responder {
            (b, a, 1)
        } else {
            (a, b, 2)
        };
        for _ in 0..1000 {
            if sim.wire().iter().filter(|s| s.from == victim).count() >= sent {
                break;
            }
            sim.run_for(std::time::Duration::from_millis(1));
        }
        assert_eq!(sim.wire().iter().filter(|s| s.from == victim).count(), sent);
        assert_eq!(sim.established_count(victim), 0);
        // The credentials' serials are the GE ids in the simulation.
        let other_serial = if revoke_at_responder { 1 } else { 2 };
        sim.endpoint(victim).revoke_serial(other_serial);
        sim.drive();
        assert_eq!(sim.established_count(victim), 0, "revoked at {victim:?}");
        assert_eq!(sim.endpoint(victim).stats().revoked_at_completion, 1);
        // The other end knew nothing of it.
        assert_eq!(sim.endpoint(other).stats().revoked_at_completion, 0);
    }
}
