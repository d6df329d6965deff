//! The fpn-lab command line: up, exec, spawn, addr, roam, list, down and
//! down --all, each in its own state directory and namespace prefix so these
//! tests cannot touch any other lab.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{BIN, need, netns_exists, pids_in};

/// Runs fpn-lab with a private state directory and prefix.
struct Cli {
    dir: tempfile::TempDir,
    prefix: String,
}

impl Cli {
    fn new() -> Self {
        Cli {
            dir: tempfile::tempdir().unwrap(),
            prefix: format!("fpnt{}", fpn_lab::naming::new_id()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("FPN_LAB_STATE_DIR", self.dir.path())
            .env("FPN_LAB_PREFIX", &self.prefix)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "fpn-lab {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn topology(&self, text: &str) -> String {
        let p = self.dir.path().join("topo.toml");
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        // Whatever a failed assertion left behind.
        let _ = self.run(&["down", "--all"]);
    }
}

const TOPO: &str = r#"
[hosts.alice]
[hosts.bob]
services = [{ name = "sleeper", cmd = "echo sleeping; exec sleep 300", wait_for = "sleeping" }]
[[links]]
name = "ab"
ends = [{ host = "alice", addr = "198.18.0.1/24" }, { host = "bob", addr = "198.18.0.2/24" }]
"#;

#[test]
fn up_exec_down_round_trip() {
    need(&["ping"]);
    let cli = Cli::new();
    let file = cli.topology(TOPO);
    let json: serde_json::Value = serde_json::from_str(&cli.ok(&["up", &file, "--json"])).unwrap();
    let id = json["id"].as_str().unwrap().to_string();
    let bob_ns = json["hosts"]["bob"].as_str().unwrap().to_string();
    assert_eq!(bob_ns, format!("{}-{id}-bob", cli.prefix));
    assert!(netns_exists(&bob_ns));
    assert!(
        json["owner_pid"].is_null(),
        "a CLI lab has no owner process"
    );

    // The service outlived `fpn-lab up`.
    let pids = pids_in(&bob_ns);
    assert_eq!(pids.len(), 1, "the sleeper runs in bob");
    assert!(
        Path::new(json["log_dir"].as_str().unwrap())
            .join("bob-sleeper.log")
            .exists()
    );

    // exec: default lab, exit codes and output pass through.
    cli.ok(&["exec", "alice", "--", "ping", "-c1", "-W2", "198.18.0.2"]);
    let out = cli.run(&[
        "exec",
        "--lab",
        &id,
        "bob",
        "--",
        "sh",
        "-c",
        "echo $FPN_LAB_HOST; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bob\n");
    let out = cli.run(&["exec", "carol", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no host `carol`") && err.lines().count() == 1,
        "{err}"
    );

    assert_eq!(cli.ok(&["addr", "bob", "ab", "-1"]).trim(), "198.18.0.2");
    let spawned = cli.ok(&["spawn", "alice", "--", "sleep", "300"]);
    assert!(spawned.starts_with("pid "), "{spawned}");
    let list = cli.ok(&["list"]);
    assert!(list.contains(&id) && list.contains("fpn-lab up"), "{list}");

    let down = cli.ok(&["down"]);
    assert!(down.contains(&id), "{down}");
    assert!(!netns_exists(&bob_ns));
    for pid in pids {
        assert!(
            !fpn_lab::pid_alive(pid as i32),
            "service {pid} survived down"
        );
    }
    assert!(!cli.dir.path().join(format!("{id}.json")).exists());
    assert!(cli.ok(&["list"]).contains("no labs"));
    let out = cli.run(&["down"]);
    assert!(!out.status.success(), "down without a lab must fail");
}

#[test]
fn roam_and_attach_from_the_command_line() {
    need(&["nft"]);
    let cli = Cli::new();
    let nat_home = fpn_lab::config_path("nat-home.toml").display().to_string();
    let out = cli.ok(&["up", &nat_home, "--id", "roamcli"]);
    assert!(out.starts_with("lab roamcli up"), "{out}");
    let moved = cli.ok(&["roam", "laptop", "homelan", "cafelan"]);
    assert!(moved.contains("10.20.0.50/24"), "{moved}");
    assert_eq!(
        cli.ok(&["addr", "laptop", "cafelan", "-1"]).trim(),
        "10.20.0.50"
    );
    cli.ok(&["exec", "cafe", "--", "ping", "-c1", "-W2", "10.20.0.50"]);
    cli.ok(&["detach", "laptop", "cafelan"]);
    cli.ok(&["attach", "laptop", "homelan"]);
    cli.ok(&["exec", "gw", "--", "ping", "-c1", "-W2", "192.168.1.50"]);
    let out = cli.run(&["up", &nat_home, "--id", "roamcli"]);
    assert!(!out.status.success(), "a second lab with the same id");
    cli.ok(&["down", "roamcli"]);
}

#[test]
fn down_all_removes_labs_whose_state_is_lost() {
    need(&[]);
    let cli = Cli::new();
    let file = cli.topology(TOPO);
    let json: serde_json::Value = serde_json::from_str(&cli.ok(&["up", &file, "--json"])).unwrap();
    let id = json["id"].as_str().unwrap();
    let bob_ns = json["hosts"]["bob"].as_str().unwrap().to_string();
    let sleeper = pids_in(&bob_ns);
    // As if the machine running `up` had crashed: no state file.
    std::fs::remove_file(cli.dir.path().join(format!("{id}.json"))).unwrap();
    let list = cli.ok(&["list"]);
    assert!(
        list.contains(&format!("orphan namespace {bob_ns}")),
        "{list}"
    );
    let out = cli.ok(&["down", "--all"]);
    assert!(out.contains("removed 2 namespaces"), "{out}");
    assert!(!netns_exists(&bob_ns));
    assert!(sleeper.iter().all(|p| !fpn_lab::pid_alive(*p as i32)));
}

#[test]
fn check_validates_without_root_and_errors_are_one_line() {
    let cli = Cli::new();
    let good = fpn_lab::config_path("nat-home.toml").display().to_string();
    let out = cli.ok(&["check", &good]);
    assert!(out.contains("8 hosts, 6 links (3 switches)"), "{out}");
    let bad = cli.topology("[hosts.a]\n[[links]]\nname = \"l\"\nends = [{ host = \"b\" }]\n");
    let out = cli.run(&["check", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown host `b`"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let help = cli.ok(&["--help"]);
    for word in ["up", "exec", "down", "list", "roam", "--all"] {
        assert!(help.contains(word), "--help lacks {word}");
    }
}

#[test]
fn nat_shows_and_changes_a_router_from_the_command_line() {
    need(&["nft"]);
    let cli = Cli::new();
    let file = fpn_lab::config_path("nat-matrix-symmetric.toml");
    cli.ok(&["up", &file.display().to_string()]);
    let show = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["nat", "gwb", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&cli.ok(&all)).unwrap()
    };
    let before = show(&[]);
    assert_eq!(before["nat"]["mapping"], "address-and-port-dependent");
    assert_eq!(before["nat"]["ports"], "random");
    assert!(before["nftables"]["nftables"].is_array(), "{before}");

    let after = show(&[
        "--set",
        r#"mapping = "endpoint-independent", ports = "preserving""#,
    ]);
    assert_eq!(after["nat"]["mapping"], "endpoint-independent");
    assert_eq!(after["nat"]["ports"], "preserving");
    assert_eq!(after["nat"]["out"], "pub-b", "keys not given stay");
    // Recorded in the state file: a later invocation sees it.
    assert_eq!(show(&[])["nat"]["mapping"], "endpoint-independent");
    let text = cli.ok(&["nat", "gwb"]);
    assert!(text.contains("map bindings"), "{text}");

    // Bad keys are one-line errors and change nothing.
    let out = cli.run(&["nat", "gwb", "--set", r#"mapping = "full-cone""#]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("full-cone"));
    assert!(!cli.run(&["nat", "vps"]).status.success(), "vps has no nat");
    assert_eq!(show(&[])["nat"]["mapping"], "endpoint-independent");
    cli.ok(&["down"]);
}

/// `fpn-lab completions bash` loads in bash and completes past the first
/// subcommand (clap_complete's hyphenated-name bug, fixed in fpn-clidocs);
/// `fpn-lab man` writes a page per subcommand that groff renders cleanly.
/// No root, no lab.
#[test]
fn completions_and_man_pages() {
    let script = format!(
        "source <('{BIN}' completions bash) || exit 9\n\
         COMP_WORDS=(fpn-lab echo se); COMP_CWORD=2; _fpn__lab fpn-lab se echo\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\""
    );
    let o = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = String::from_utf8(o.stdout).unwrap();
    let mut words: Vec<&str> = got.split_whitespace().collect();
    words.sort_unstable();
    assert_eq!(words, ["send", "serve"], "{got}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let o = Command::new(BIN)
        .args(["man", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for page in ["fpn-lab.1", "fpn-lab-up.1", "fpn-lab-echo-serve.1"] {
        let g = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(out.join(page))
            .output()
            .expect("groff (Debian package groff-base) runs");
        assert!(g.status.success() && g.stderr.is_empty(), "{page}: {g:?}");
    }
}
