//! Short-lived credentials (issue 9 item 3): a peer refuses new
//! negotiations from a GE whose credential has expired, on a fake clock,
//! and takes the GE again once it presents a renewed one. Flows set up
//! before the expiry are not the responder's to end (they live on their
//! keys), so only new negotiations are checked.

use std::net::IpAddr;
use std::time::Duration;

use fpn_proto::Error;
use fpn_proto::ge::Mode;
use fpn_proto::sim::{GeSpec, LinkConfig, NodeId, START_UNIX, Sim, node_key};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn expired_refusals(sim: &Sim, n: NodeId, ge: u32) -> usize {
    sim.errors(n)
        .iter()
        .filter(|(_, e)| matches!(e, Error::CredentialExpired { ge: g, .. } if *g == ge))
        .count()
}

/// Alice (GE 1) holds a credential valid for 20 s from the start; Bob a
/// long one. Both are in group 1.
fn pair(seed: u64) -> (Sim, NodeId, NodeId) {
    let mut sim = Sim::new(seed, LinkConfig::default());
    let alice = GeSpec::host(1, "alice", Mode::Open, &[1], "100.64.0.1");
    let info = Sim::info_of(&alice);
    let short = sim.issue_valid(100, info, &node_key(1), START_UNIX - 5, START_UNIX + 20);
    let a = sim.add_ge_with(alice, move |c| c.credential = short);
    let b = sim.add_ge(GeSpec::host(2, "bob", Mode::Open, &[1], "100.64.0.2"));
    (sim, a, b)
}

#[test]
fn a_peer_refuses_new_negotiations_once_the_credential_expired() {
    let (mut sim, a, b) = pair(91);
    sim.send_udp(a, ip("100.64.0.2"), 4000, 22, b"before");
    sim.drive();
    assert_eq!(sim.established_count(b), 1, "a valid credential is taken");
    assert_eq!(expired_refusals(&sim, b, 1), 0);

    // 25 s later (fake clock) Alice's credential is 5 s past its end.
    sim.run_for(Duration::from_secs(25));
    sim.send_udp(a, ip("100.64.0.2"), 4001, 22, b"after");
    sim.drive();
    assert_eq!(
        sim.established_count(b),
        1,
        "an expired credential was taken"
    );
    assert!(expired_refusals(&sim, b, 1) >= 1, "{:?}", sim.errors(b));

    // Bob asking Alice fares no better: he judges her by her answer.
    sim.send_udp(b, ip("100.64.0.1"), 4002, 22, b"reverse");
    sim.drive();
    assert_eq!(sim.established_count(b), 1, "{:?}", sim.events(b));
}

#[test]
fn a_renewed_credential_is_taken_again() {
    let (mut sim, a, b) = pair(92);
    sim.run_for(Duration::from_secs(25));
    // The renewal a GMS would issue: same key and info, a fresh lifetime.
    let info = Sim::info_of(&GeSpec::host(1, "alice", Mode::Open, &[1], "100.64.0.1"));
    let renewed = sim.issue_valid(101, info, &node_key(1), START_UNIX + 24, START_UNIX + 45);
    sim.endpoint(a).set_credential(renewed).unwrap();
    sim.send_udp(a, ip("100.64.0.2"), 4003, 22, b"renewed");
    sim.drive();
    assert_eq!(sim.established_count(b), 1, "{:?}", sim.errors(b));
    assert_eq!(expired_refusals(&sim, b, 1), 0);
}
