//! The fpn-node binary without a network: its errors are typed, clear and
//! fast (no daemon, no identity, bad token, bad config), never a hang.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn fpn_node(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_fpn-node"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run fpn-node");
    (out, t.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn control_commands_without_a_daemon_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    for args in [
        vec!["status", "--state", state],
        vec!["status", "--state", state, "--json"],
        vec!["ping", "b", "--state", state],
        vec!["down", "--state", state],
    ] {
        let (out, took) = fpn_node(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("no fpn-node daemon"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    }
}

#[test]
fn up_without_an_identity_says_to_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = fpn_node(&["up", "--state", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("fpn-node enroll"), "{}", stderr(&out));
    // Nothing of a daemon was left behind.
    assert!(!dir.path().join("control.sock").exists());
}

#[test]
fn a_malformed_token_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("st");
    let (out, took) = fpn_node(&["enroll", "not-a-token", "--state", state.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!stderr(&out).is_empty());
    assert!(!state.join("node.key").exists());
    assert!(took < Duration::from_secs(20));
}

#[test]
fn a_bad_config_file_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "mtu = 100\n").unwrap();
    let (out, _) = fpn_node(&[
        "up",
        "--state",
        dir.path().to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("mtu"), "{}", stderr(&out));
}

#[test]
fn the_example_config_is_accepted() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/node/node.toml");
    let text = std::fs::read_to_string(example).unwrap();
    fpn_node::config::NodeConfig::parse(&text).unwrap();
}
