//! `fpn-node completions SHELL` and `fpn-node man --out DIR`, checked with
//! the real tools: bash loads the script and completes with it, groff
//! renders every page without a warning and `man -l` shows each subcommand.

use fpn_clidocs::check::render;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fpn-node");
const SUBCOMMANDS: &[&str] = &[
    "enroll",
    "up",
    "status",
    "netcheck",
    "why",
    "ping",
    "completions",
    "man",
    "down",
];

fn bash(script: &str) -> String {
    fpn_clidocs::check::bash(BIN, script)
}

fn complete(words: &[&str]) -> Vec<String> {
    fpn_clidocs::check::complete(BIN, "_fpn__node", words)
}

#[test]
fn the_bash_completion_loads_and_completes_subcommands_and_their_options() {
    assert!(bash("complete -p fpn-node").contains("-F _fpn__node fpn-node"));
    assert_eq!(complete(&["fpn-node", "en"]), ["enroll"]);
    assert_eq!(complete(&["fpn-node", "ne"]), ["netcheck"]);
    // Past the subcommand (broken by clap_complete for hyphenated names
    // without our fix): the options of `up`.
    assert_eq!(complete(&["fpn-node", "up", "--st"]), ["--state"]);
    let shells = ["bash", "zsh", "fish", "elvish", "powershell"];
    for shell in shells {
        let o = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}");
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains("netcheck"), "{shell}");
    }
    let o = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn man_pages_render_and_name_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let o = Command::new(BIN)
        .args(["man", "--json", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pages"].as_array().unwrap().len(), SUBCOMMANDS.len() + 1);
    let top = render(&out.join("fpn-node.1"));
    for sub in SUBCOMMANDS {
        assert!(top.contains(&format!("fpn-node-{sub}(1)")), "{sub}: {top}");
        let page = render(&out.join(format!("fpn-node-{sub}.1")));
        assert!(page.contains(&format!("fpn-node-{sub}")), "{page}");
    }
    assert!(render(&out.join("fpn-node-up.1")).contains("--state"));
}
