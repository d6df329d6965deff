//! Issue 4 acceptance, policy: a CL node with no shared group is refused
//! fast (connect fails within 1 s); two OP nodes with no shared group talk in
//! plain; a node that shares a group with only one of two peers reaches only
//! that one.
//!
//! Groups: 1 home {a, b}, 2 work {b, d}. a, b, c are OP (c in no group), d is
//! CL. So d shares a group with b only: d->b encrypted, d->a and d->c
//! refused (d is closed), a->d refused (d drops, a is told); a<->c plain.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{echo_send, overlay};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};

/// The bound for a refused connect.
const FAST: Duration = Duration::from_secs(1);

/// TCP connect from `host` to `to` (which has a listener); returns the
/// result and how long it took. The timeout is far above [`FAST`], so a
/// flow that hangs instead of being refused shows up as slow.
fn connect(ov: &Overlay, host: &str, to: SocketAddr) -> (std::io::Result<()>, Duration) {
    ov.lab()
        .run_in(host, move || {
            let t = Instant::now();
            let r = TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(drop);
            (r, t.elapsed())
        })
        .unwrap()
}

#[test]
fn closed_nodes_refuse_fast_open_nodes_talk_plain_and_groups_decide_who_reaches_whom() {
    let ov = overlay(&Spec::new(
        &[(1, "home"), (2, "work")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("b", Mode::Op, &[1, 2]),
            NodeSpec::new("c", Mode::Op, &[]),
            NodeSpec::new("d", Mode::Cl, &[2]),
        ],
    ));
    let lab = ov.lab();
    let addr = |n: &str| ov.overlay_addr(n).unwrap();
    // A listener everywhere, so only policy can make a connect fail.
    let _echo: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|h| common::echo_server(lab, h, 7002))
        .collect();

    // d (CL, group 2) reaches b (group 2), encrypted.
    let p = ov.ping("d", "b", 2).unwrap();
    assert!(p.ok, "d -> b: {:?}", p.output);
    assert_eq!(p.action(), "encrypt", "{}", p.json);
    let out = echo_send(lab, "d", "b.home.fpn:7002", "hello b", false);
    assert!(out.success(), "d -> b TCP: {}", out.stderr);

    // ... but not a or c: refused, fast, first flow and again (cached).
    for peer in ["a", "c"] {
        for attempt in 1..=2 {
            let (r, took) = connect(&ov, "d", SocketAddr::new(addr(peer).into(), 7002));
            assert!(r.is_err(), "d -> {peer} TCP connected (attempt {attempt})");
            assert!(
                took < FAST,
                "d -> {peer} refused after {took:?} (attempt {attempt}): {r:?}"
            );
        }
        let p = ov.ping("d", peer, 1).unwrap();
        assert!(!p.ok, "fpn-node ping d -> {peer} succeeded: {}", p.json);
        assert_eq!(p.action(), "refuse", "d -> {peer}: {:?}", p.output);
    }

    // a (OP) -> d (CL), no shared group: d drops it and a is told at once.
    let (r, took) = connect(&ov, "a", SocketAddr::new(addr("d").into(), 7002));
    assert!(r.is_err(), "a -> d TCP connected");
    assert!(took < FAST, "a -> d refused after {took:?}: {r:?}");

    // a and c: both OP, no shared group: plain, and it works both ways.
    let p = ov.ping("a", "c", 2).unwrap();
    assert!(p.ok, "a -> c: {:?}", p.output);
    assert_eq!(p.action(), "plain", "{}", p.json);
    for (from, to) in [("a", "c"), ("c", "a")] {
        let out = echo_send(
            lab,
            from,
            &format!("{to}.home.fpn:7002"),
            "plain hello",
            false,
        );
        assert!(out.success(), "{from} -> {to} TCP: {}", out.stderr);
    }
    let flows = ov.flows_with("a", "c").unwrap();
    assert!(
        !flows.is_empty() && flows.iter().all(|f| f["action"] == "plain"),
        "a's flows with c: {flows:?}"
    );

    // a and b share group 1: encrypted.
    let p = ov.ping("a", "b", 1).unwrap();
    assert!(p.ok, "a -> b: {:?}", p.output);
    assert_eq!(p.action(), "encrypt", "{}", p.json);

    // Refusals show up in d's flows, and nothing of a/c was carried to d.
    let flows = ov.flows_with("d", "a").unwrap();
    assert!(
        flows.iter().all(|f| f["action"] == "refuse"),
        "d's flows with a: {flows:?}"
    );
}
