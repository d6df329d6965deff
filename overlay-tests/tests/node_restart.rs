//! Issue 4 acceptance: restarting a node keeps its identity (no new
//! enrollment) and re-establishes flows, after `fpn-node down` and after a
//! crash (SIGKILL).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{echo_send, overlay};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use serde_json::Value;

/// How long flows to a crashed and restarted node may take to come back.
/// Generous (it takes about 50 ms: the restarted node's stateless reset, or
/// its new connection, replaces the peer's connection to the dead process),
/// yet far below the 30 s QUIC idle timeout that used to be the only cure.
const CRASH_RECOVERY: Duration = Duration::from_secs(10);

/// What identifies node `name`: its GE id and overlay address (its status)
/// and its certificate serial (the GMS's record).
fn identity(ov: &Overlay, name: &str) -> (Value, Value, Value) {
    let st = ov.status(name).unwrap();
    let ge = ov.gms_json(&["ge", "show", name]).unwrap();
    (
        st["ge"].clone(),
        st["overlay"].clone(),
        ge["cert_serial"].clone(),
    )
}

/// Enrollments in the GMS's audit log.
fn enrollments(ov: &Overlay) -> usize {
    let audit = ov.gms_json(&["audit", "--limit", "1000"]).unwrap();
    audit
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("enroll "))
        })
        .count()
}

/// Every file under `dir` whose name ends in `.key` (the node's private key).
fn key_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(key_files(&p));
        } else if p.extension().is_some_and(|x| x == "key") {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_restarted_node_keeps_its_identity_and_its_flows_come_back() {
    let ov = overlay(&Spec::new(
        &[(1, "home")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("b", Mode::Op, &[1]),
        ],
    ));
    let lab = ov.lab();
    let _echo: Vec<_> = ["a", "b"]
        .iter()
        .map(|h| common::echo_server(lab, h, 7005))
        .collect();

    // The state directory holds the identity, private to root.
    let dir = ov.state_dir("a").unwrap().to_path_buf();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "state directory mode");
    let keys = key_files(&dir);
    assert!(!keys.is_empty(), "no *.key in {}", dir.display());
    for k in &keys {
        assert_eq!(mode(k), 0o600, "{}", k.display());
    }
    let sock = dir.join("control.sock");
    assert_eq!(mode(&sock), 0o600, "control socket mode");

    let before = identity(&ov, "a");
    assert!(
        before.0.is_string() || before.0.is_number(),
        "status has no ge: {before:?}"
    );
    let p = ov.ping("a", "b", 1).unwrap();
    assert!(p.ok, "a -> b: {:?}", p.output);
    let enrolled = enrollments(&ov);
    assert_eq!(enrolled, 2, "a and b enrolled once each");

    // A clean stop: exit 0, the TUN is gone.
    assert!(
        ov.down("a").unwrap(),
        "fpn-node down: the daemon did not exit 0"
    );
    let link = lab.exec("a", ["ip", "link", "show", "fpn0"]).unwrap();
    assert!(!link.success(), "fpn0 still exists after down");
    let out = echo_send(lab, "b", "a.home.fpn:7005", "while a is down", false);
    assert!(!out.success(), "a answered while down");

    // Up again from the same state directory: same identity, flows back.
    ov.up("a").unwrap();
    assert_eq!(
        identity(&ov, "a"),
        before,
        "identity changed after a restart"
    );
    for (from, to) in [("a", "b"), ("b", "a")] {
        let out = echo_send(
            lab,
            from,
            &format!("{to}.home.fpn:7005"),
            "after restart",
            false,
        );
        assert!(
            out.success(),
            "{from} -> {to} after restart: {}",
            out.stderr
        );
    }

    // A crash: SIGKILL, then up again. b's carrier still holds a connection
    // to the dead process (nothing closed it); it must notice and move on.
    ov.kill("a").unwrap();
    ov.up("a").unwrap();
    let crashed = Instant::now();
    assert_eq!(identity(&ov, "a"), before, "identity changed after a crash");
    loop {
        let out = echo_send(lab, "b", "a.home.fpn:7005", "after crash", true);
        if out.success() {
            break;
        }
        assert!(
            crashed.elapsed() < CRASH_RECOVERY,
            "b -> a not back {CRASH_RECOVERY:?} after a's crash and restart: {}",
            out.stderr
        );
    }
    eprintln!("b -> a back {:?} after a's restart", crashed.elapsed());
    let p = ov.ping("b", "a", 2).unwrap();
    assert!(
        p.ok && p.action() == "encrypt",
        "b -> a after the crash: {:?}",
        p.output
    );
    let out = echo_send(lab, "a", "b.home.fpn:7005", "after crash", true);
    assert!(out.success(), "a -> b after the crash: {}", out.stderr);

    assert_eq!(enrollments(&ov), enrolled, "a restart enrolled again");
}
