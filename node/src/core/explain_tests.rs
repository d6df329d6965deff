//! `fpn-node why` in the simulator: for each row of the decision table
//! (ARCHITECTURE.md; the GMS paper's OP/CL table) the core's explanation,
//! asked before any packet, names the rule, and the real negotiation of
//! the same flow then does what it said. Also the rows outside the table:
//! no key, revoked, unknown, own and non-overlay addresses; and `status`
//! gives the reason of a refused flow.

use std::net::{IpAddr, Ipv4Addr};

use fpn_proto::flow::{FlowId, protocol};
use fpn_proto::ge::{GroupId, Mode};

use super::Command;
use super::sim::{CoreSim, LinkConfig};
use crate::status::WhyReport;

/// Two nodes `a` (id 1) and `b` (id 2) that know each other.
fn pair(seed: u64, a: (Mode, &[u32]), b: (Mode, &[u32])) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    let ia = sim.add_node(1, a.0, a.1);
    let ib = sim.add_node(2, b.0, b.1);
    sim.introduce_all();
    (sim, ia, ib)
}

fn why_to(sim: &CoreSim, from: usize, dst: Ipv4Addr, port: u16) -> (WhyReport, bool) {
    let flow = FlowId {
        src: IpAddr::V4(sim.nodes[from].overlay),
        dst: IpAddr::V4(dst),
        protocol: protocol::UDP,
        src_port: 0,
        dst_port: port,
    };
    sim.nodes[from].core.explain(&flow)
}

fn why(sim: &CoreSim, from: usize, to: usize) -> WhyReport {
    let (r, lookup) = why_to(sim, from, sim.nodes[to].overlay, 5000);
    assert!(!lookup, "the peer's entry is known: {r:?}");
    r
}

/// Sends one UDP packet a -> b and returns a's flow action for it.
fn actual(sim: &mut CoreSim, a: usize, b: usize) -> String {
    sim.send_udp(a, b, 4000, 5000, b"x");
    sim.drive();
    let flows = sim.nodes[a].core.snapshot(&[]).flows;
    assert_eq!(flows.len(), 1, "{flows:?}");
    flows[0].action.clone()
}

#[test]
fn op_op_without_a_shared_group_is_plain() {
    let (mut sim, a, b) = pair(41, (Mode::Open, &[1]), (Mode::Open, &[2]));
    let r = why(&sim, a, b);
    assert_eq!(
        (r.rule.as_str(), r.action.as_str()),
        ("both-open", "plain"),
        "{r:?}"
    );
    assert_eq!(r.peer.as_ref().unwrap().mode, "open");
    assert_eq!(actual(&mut sim, a, b), "plain");
}

#[test]
fn op_op_sharing_a_group_is_encrypted_with_the_lowest_shared_group() {
    let (mut sim, a, b) = pair(42, (Mode::Open, &[3, 1]), (Mode::Open, &[1, 3]));
    let r = why(&sim, a, b);
    assert_eq!(
        (r.rule.as_str(), r.group),
        ("shared-group", Some(1)),
        "{r:?}"
    );
    assert_eq!(r.own.keys, Some(vec![1, 3]));
    assert_eq!(actual(&mut sim, a, b), "encrypt");
}

#[test]
fn op_to_cl_without_a_shared_group_is_dropped_by_the_closed_peer() {
    let (mut sim, a, b) = pair(43, (Mode::Open, &[1]), (Mode::Closed, &[2]));
    let r = why(&sim, a, b);
    assert_eq!(
        (r.rule.as_str(), r.action.as_str()),
        ("closed-drops", "refuse"),
        "{r:?}"
    );
    assert_eq!(r.dropped_by, Some(2));
    assert!(
        r.reason.contains("n2") && r.reason.contains("closed"),
        "{}",
        r.reason
    );
    assert_eq!(actual(&mut sim, a, b), "refuse");
    // `status` says why, and so does `why` now, for the refused flow.
    let flows = sim.nodes[a].core.snapshot(&[]).flows;
    let reason = flows[0]
        .reason
        .clone()
        .expect("a reason for the refused flow");
    assert!(reason.contains("n2 (GE 2) is closed"), "{reason}");
    assert_eq!(why(&sim, a, b).refused.as_deref(), Some(reason.as_str()));
}

#[test]
fn cl_to_op_without_a_shared_group_is_dropped_here() {
    let (mut sim, a, b) = pair(44, (Mode::Closed, &[1]), (Mode::Open, &[2]));
    let r = why(&sim, a, b);
    assert_eq!(
        (r.rule.as_str(), r.dropped_by),
        ("closed-drops", Some(1)),
        "{r:?}"
    );
    assert!(r.reason.starts_with("this node"), "{}", r.reason);
    assert_eq!(actual(&mut sim, a, b), "refuse");
}

#[test]
fn cl_cl_with_a_common_group_is_encrypted_and_without_one_dropped() {
    let (mut sim, a, b) = pair(45, (Mode::Closed, &[1, 2]), (Mode::Closed, &[2]));
    let r = why(&sim, a, b);
    assert_eq!(
        (r.rule.as_str(), r.group),
        ("shared-group", Some(2)),
        "{r:?}"
    );
    assert_eq!(actual(&mut sim, a, b), "encrypt");

    let (mut sim, a, b) = pair(46, (Mode::Closed, &[1]), (Mode::Closed, &[2]));
    let r = why(&sim, a, b);
    assert_eq!(
        (r.rule.as_str(), r.dropped_by),
        ("closed-drops", Some(1)),
        "{r:?}"
    );
    assert_eq!(actual(&mut sim, a, b), "refuse");
}

#[test]
fn a_shared_group_without_its_key_is_refused_not_plain() {
    // Both open and both certified for group 1, but a lost its key: the
    // rules alone would say plain; no downgrade says refuse.
    let (mut sim, a, b) = pair(47, (Mode::Open, &[1]), (Mode::Open, &[1]));
    sim.command(
        a,
        Command::Keys {
            group: GroupId(1),
            keys: Vec::new(),
        },
    );
    let r = why(&sim, a, b);
    assert_eq!(
        (r.rule.as_str(), r.action.as_str()),
        ("key-missing", "refuse"),
        "{r:?}"
    );
    assert_eq!(r.own.keys, Some(vec![]));
    assert_eq!(actual(&mut sim, a, b), "refuse");
}

#[test]
fn revoked_unknown_own_and_non_overlay_addresses() {
    let (mut sim, a, b) = pair(48, (Mode::Open, &[1]), (Mode::Open, &[1]));
    let b_addr = sim.nodes[b].overlay;
    // Own address, outside the overlay range, nobody's address.
    let (r, _) = why_to(&sim, a, sim.nodes[a].overlay, 22);
    assert_eq!((r.rule.as_str(), r.action.as_str()), ("self", "local"));
    let (r, lookup) = why_to(&sim, a, Ipv4Addr::new(192, 0, 2, 7), 22);
    assert_eq!(
        (r.rule.as_str(), r.action.as_str(), lookup),
        ("not-overlay", "bypass", false)
    );
    let (r, lookup) = why_to(&sim, a, Ipv4Addr::new(100, 64, 0, 99), 22);
    assert_eq!(
        (r.rule.as_str(), r.action.as_str(), lookup),
        ("unknown-peer", "refuse", true)
    );
    // b revoked: it leaves the directory.
    sim.command(a, Command::PeerGone(sim.nodes[b].ge));
    let (r, lookup) = why_to(&sim, a, b_addr, 5000);
    assert_eq!(
        (r.rule.as_str(), r.action.as_str(), lookup),
        ("revoked", "refuse", false),
        "{r:?}"
    );
    assert_eq!(r.peer.map(|p| p.ge), Some(2));
}

#[test]
fn a_peer_known_only_from_the_listing_needs_its_credential_first() {
    let mut sim = CoreSim::new(49, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    let mut rec = sim.record(b);
    rec.info = None;
    sim.command(a, Command::Peer(rec));
    let (r, lookup) = why_to(&sim, a, sim.nodes[b].overlay, 0);
    assert_eq!(
        (r.rule.as_str(), lookup),
        ("peer-info-unknown", true),
        "{r:?}"
    );
}
