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
fn control_commands_without_a_daemon_fail_at_once_and_say_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    // An enrolled directory (enroll writes identity.json last).
    std::fs::write(dir.path().join("identity.json"), "{}").unwrap();
    let state = dir.path().to_str().unwrap();
    for args in [
        vec!["status", "--state", state],
        vec!["status", "--state", state, "--json"],
        vec!["netcheck", "--state", state],
        vec!["ping", "b", "--state", state],
        vec!["down", "--state", state],
    ] {
        let (out, took) = fpn_node(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("no fpn-node daemon")
                && err.contains(&format!("sudo fpn-node up --state {state}")),
            "{args:?}: {err}"
        );
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    }
}

/// Every command on a state directory that `enroll` never wrote (a wrong
/// `--state`, or a first run before enrolling) says the node is not
/// enrolled and shows the enroll command, instead of "opening DIR/lock: No
/// such file or directory" or "no daemon". With --json the error is JSON
/// on standard output as well.
#[test]
fn every_command_on_a_directory_that_is_not_enrolled_says_to_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    for (state, reason) in [
        (dir.path().to_str().unwrap(), "No such file"),
        (missing.to_str().unwrap(), "no such directory"),
    ] {
        for args in [
            vec!["up", "--state", state],
            vec!["status", "--state", state],
            vec!["status", "--state", state, "--json"],
            vec!["netcheck", "--state", state, "--json"],
            vec!["ping", "b", "--state", state],
            vec!["down", "--state", state],
        ] {
            let (out, _) = fpn_node(&args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let err = stderr(&out);
            assert!(
                err.contains("this node is not enrolled")
                    && err.contains(reason)
                    && err.contains(&format!(
                        "fpn-node enroll --token-file FILE --state {state}"
                    )),
                "{args:?}: {err}"
            );
            assert!(!err.contains("lock"), "{args:?}: {err}");
            if args.contains(&"--json") {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert!(v["error"].as_str().unwrap().contains("not enrolled"), "{v}");
            }
        }
    }
    // Nothing of a daemon was left behind, and no directory was created.
    assert!(!dir.path().join("control.sock").exists());
    assert!(!dir.path().join("lock").exists());
    assert!(!missing.exists());
}

/// Runs fpn-node as the unprivileged user `nobody` (when the test runs as
/// root; otherwise as the current, unprivileged, user).
fn fpn_node_unprivileged(args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fpn-node"));
    cmd.args(args).env("RUST_LOG", "off");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    cmd.output().expect("run fpn-node")
}

#[test]
fn up_without_root_says_to_use_sudo_and_a_private_state_says_so_too() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("st");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("identity.json"), "{}").unwrap();
    // The state directory as enroll leaves it (0700), its parent open.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let s = state.to_str().unwrap();
    let out = fpn_node_unprivileged(&["up", "--state", s]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("needs root or CAP_NET_ADMIN")
            && err.contains(&format!("sudo fpn-node up --state {s}")),
        "{err}"
    );
    if unsafe { libc::geteuid() } == 0 {
        // A user who may not read the root-owned state: told to use sudo,
        // not that nothing runs.
        let out = fpn_node_unprivileged(&["status", "--state", s]);
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains("permission denied") && err.contains("sudo"),
            "{err}"
        );
    }
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

    // A TOML mistake: one line, with the file, line and column.
    std::fs::write(&cfg, "log = \"info\"\nmtu = \n").unwrap();
    let c = cfg.to_str().unwrap();
    let (out, _) = fpn_node(&["up", "--state", dir.path().to_str().unwrap(), "--config", c]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("file {c}: line 2, column 7")),
        "{err}"
    );

    // A config path that does not exist: named, with what to do instead.
    let gone = dir.path().join("gone.toml");
    let g = gone.to_str().unwrap();
    let (out, _) = fpn_node(&["up", "--state", dir.path().to_str().unwrap(), "--config", g]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("file {g}: No such file")) && err.contains("leave --config out"),
        "{err}"
    );
}

#[test]
fn the_example_config_is_accepted() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/node/node.toml");
    let text = std::fs::read_to_string(example).unwrap();
    fpn_node::config::NodeConfig::parse(&text).unwrap();
}
