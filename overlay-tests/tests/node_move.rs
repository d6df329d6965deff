//! Issue 12 (Mobile PPC), first step: a node notices its own move the
//! moment the kernel applies it (rtnetlink, not polling), says so in its
//! log and `status` with the gap the move caused, probes every path again
//! from the new address, and tells the GMS its new addresses; its flows go
//! on. configs/lab/nat-home.toml: the laptop (fpn-node) walks from the home
//! LAN to the cafe while it talks to a node on the home router.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{OVERLAY_TOOLS, echo_server, need, send_marked};

/// The UDP port of the echo server on the home router's node.
const PORT: u16 = 9300;
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, config_path};

/// A UDP message from `from` to `to`'s overlay address (an echo server
/// there), until one is answered (bounded); how long it took.
fn echo_until_answered(ov: &Overlay, from: &str, to: &str, bound: Duration) -> Duration {
    let dst = SocketAddr::new(ov.overlay_addr(to).unwrap().into(), PORT);
    let t = Instant::now();
    loop {
        let (r, _) = send_marked(
            ov.lab(),
            from,
            dst,
            format!("MOVE-MARK-{from}-to-{to}"),
            Duration::from_millis(600),
        );
        if r.is_ok() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < bound,
            "{from} never reached {to} within {bound:?}: {r:?}\n{}\n{from}: {}\n{to}: {}",
            ov.log_tails(40),
            ov.status(from).unwrap(),
            ov.status(to).unwrap()
        );
    }
}

/// nat-home.toml with fpn-node on the home router and on the laptop, both
/// at home, an echo server on the router's node, answered once.
fn at_home() -> (Overlay, fpn_lab::Process) {
    need(OVERLAY_TOOLS);
    let lab = Lab::up(config_path("nat-home.toml")).expect("nat-home lab");
    let ov = Overlay::start(
        lab,
        &Spec::new(
            &[(1, "home")],
            vec![
                NodeSpec::new("gw", Mode::Op, &[1]),
                NodeSpec::new("laptop", Mode::Op, &[1]),
            ],
        ),
    )
    .unwrap_or_else(|e| panic!("overlay start: {e}"));
    let echo = echo_server(ov.lab(), "gw", PORT);
    echo_until_answered(&ov, "laptop", "gw", Duration::from_secs(10));
    (ov, echo)
}

#[test]
fn a_roaming_node_notices_its_move_at_once_and_its_peer_stays_reachable() {
    let (ov, _echo) = at_home();
    let st = ov.status("laptop").unwrap();
    assert_eq!(st["moves"], serde_json::json!([]), "no move yet: {st}");

    // The laptop walks to the cafe: its wlan0 leaves the home LAN and gets
    // 10.20.0.50 and a default route there.
    ov.lab()
        .roam("laptop", "homelan", "cafelan")
        .expect("roam laptop");
    let back = echo_until_answered(&ov, "laptop", "gw", Duration::from_secs(15));
    eprintln!("gw answered again {back:?} after the move");

    let st = ov.status("laptop").unwrap();
    let moves = st["moves"].as_array().cloned().unwrap_or_default();
    assert!(!moves.is_empty(), "the move was not noticed: {st}");
    let last = moves.last().unwrap();
    let cause = last["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("10.20.0.50"), "{last}");
    let gap = last["gap_ms"].as_f64();
    assert!(gap.is_some_and(|g| g < 15_000.0), "{last}");
    eprintln!("laptop's moves: {moves:#?}");
    assert!(
        ov.node_log("laptop").contains("network changed"),
        "no log line for the move"
    );
    // The GMS has the new address (new peers find the laptop there).
    let t = Instant::now();
    loop {
        let ge = ov.gms_json(&["ge", "show", "laptop"]).unwrap();
        let reported = ge["reported"].to_string();
        if reported.contains("10.20.0.50") {
            assert!(!reported.contains("192.168.1.50"), "{reported}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the GMS still lists {reported}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The same walk with the GMS down: the move needs no GMS (the peer
/// follows the laptop's authenticated probes from the cafe).
#[test]
fn a_move_while_the_gms_is_down_keeps_the_peer_reachable() {
    let (ov, _echo) = at_home();
    ov.kill_gms();
    ov.lab()
        .roam("laptop", "homelan", "cafelan")
        .expect("roam laptop");
    let back = echo_until_answered(&ov, "laptop", "gw", Duration::from_secs(15));
    eprintln!("with the GMS down, gw answered again {back:?} after the move");
    // The GMS was really away (its admin answers nothing), and the move
    // is in the laptop's status all the same.
    assert!(
        ov.gms_json(&["ge", "list"]).is_err(),
        "the GMS still answers"
    );
    let st = ov.status("laptop").unwrap();
    assert!(
        st["moves"].as_array().is_some_and(|m| !m.is_empty()),
        "{st}"
    );
}
