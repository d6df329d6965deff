//! The fpn-node binary without a network: its errors are typed, clear and
//! fast (no daemon, no identity, bad token, bad config), never a hang; the
//! enrollment token can come from a file or standard input.

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

/// Runs fpn-node with `stdin` as its standard input.
fn fpn_node_stdin(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fpn-node"))
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fpn-node");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// The token can stay off the command line (where `ps` shows it): it is
/// read from a file or from standard input, and reaches the token parser
/// (whose complaint about the prefix proves the text arrived).
#[test]
fn the_token_is_read_from_a_file_or_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("st");
    let state = state.to_str().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "  xyz1:not-a-token\n").unwrap();
    let (out, _) = fpn_node(&[
        "enroll",
        "--token-file",
        file.to_str().unwrap(),
        "--state",
        state,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("fpn1:"), "{}", stderr(&out));

    for args in [
        vec!["enroll", "--token-file", "-", "--state", state],
        vec!["enroll", "--state", state],
    ] {
        let out = fpn_node_stdin(&args, b"xyz1:not-a-token\n");
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains("fpn1:"), "{args:?}: {}", stderr(&out));
        let out = fpn_node_stdin(&args, b"  \n");
        assert!(
            stderr(&out).contains("no enrollment token in standard input"),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    let (out, _) = fpn_node(&["enroll", "--token-file", "/nonexistent/t", "--state", state]);
    assert!(
        stderr(&out).contains("reading the token from /nonexistent/t"),
        "{}",
        stderr(&out)
    );
    // An argument and a file at once is a usage error.
    let (out, _) = fpn_node(&["enroll", "x", "--token-file", "-", "--state", state]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!dir.path().join("st").join("node.key").exists());
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
