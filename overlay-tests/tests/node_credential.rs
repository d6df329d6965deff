//! Issue #9 item 5: a node takes the credential the GMS re-issues after
//! `fpn-gms ge set` at once, without a restart.
//!
//! a (OP, group 1) and d (CL, group 2): d drops a's flows, judging a by the
//! credential a sends in its DDE. `ge set a --add-group 2` re-issues a's
//! credential (groups 1 and 2) and gives a group 2's key; a new flow from a
//! to d must then be protected, with both daemons still the same processes.
//! b (OP, group 1) checks the other half: the GMS revokes a's superseded
//! credential when it re-issues it, so a node that kept sending the old one
//! would lose b as well.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::overlay;
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};

/// TCP connect from `host` to `to` (a listener is there).
fn connect(ov: &Overlay, host: &str, to: SocketAddr) -> std::io::Result<()> {
    ov.lab()
        .run_in(host, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(drop)
        })
        .unwrap()
}

/// True when `node`'s status lists a key for `group`.
fn has_group(ov: &Overlay, node: &str, group: u64) -> bool {
    let st = ov.status(node).unwrap();
    st["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|g| g["group"] == group)
}

#[test]
fn ge_set_add_group_lets_a_node_reach_a_closed_peer_without_a_restart() {
    let ov = overlay(&Spec::new(
        &[(1, "home"), (2, "work")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("b", Mode::Op, &[1]),
            NodeSpec::new("d", Mode::Cl, &[2]),
        ],
    ));
    let _echo: Vec<_> = ["b", "d"]
        .iter()
        .map(|h| common::echo_server(ov.lab(), h, 7002))
        .collect();
    let to = SocketAddr::new(ov.overlay_addr("d").unwrap().into(), 7002);
    let to_b = SocketAddr::new(ov.overlay_addr("b").unwrap().into(), 7002);

    // Before: d (closed, no shared group) refuses a; b takes it.
    assert!(
        connect(&ov, "a", to).is_err(),
        "a -> d connected before ge set"
    );
    connect(&ov, "a", to_b).expect("a -> b before ge set");

    ov.gms_admin(&["ge", "set", "a", "--add-group", "2"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !has_group(&ov, "a", 2) {
        assert!(Instant::now() < deadline, "a never got group 2's key");
        std::thread::sleep(Duration::from_millis(100));
    }
    // After: a new flow (a new source port) is protected with group 2. The
    // credential push and the key push are separate messages, so allow a
    // few tries, bounded in count and time.
    let mut last = Err(std::io::Error::other("not tried"));
    for _ in 0..10 {
        last = connect(&ov, "a", to);
        if last.is_ok() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(last.is_ok(), "a -> d after ge set: {last:?}");
    // b revoked a's old credential: a new flow works only with the new one.
    connect(&ov, "a", to_b).expect("a -> b after ge set");
    let flows = ov.flows_with("a", "d").unwrap();
    assert!(
        flows.iter().any(|f| f["action"] == "encrypt"),
        "a's flows with d: {flows:?}"
    );
}
