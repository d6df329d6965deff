//! `fpn-gms completions SHELL` and `fpn-gms man --out DIR`, checked with
//! the real tools: bash loads the script and completes with it, groff
//! renders every page without a warning and `man -l` shows each subcommand.

use fpn_clidocs::check::render;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fpn-gms");
const SUBCOMMANDS: &[&str] = &[
    "init",
    "serve",
    "relay-cert",
    "status",
    "group",
    "ge",
    "host",
    "token",
    "rotate",
    "keys",
    "completions",
    "man",
    "audit",
    "admin-user",
];
/// The subcommands' own subcommands, each with a page of its own.
const NESTED: &[&str] = &[
    "group-add",
    "group-list",
    "group-remove",
    "group-rename",
    "ge-add",
    "ge-list",
    "ge-show",
    "ge-set",
    "ge-remove",
    "ge-revoke",
    "host-add",
    "host-list",
    "host-show",
    "host-set",
    "host-remove",
    "token-create",
    "token-list",
    "token-cancel",
    "admin-user-set",
    "admin-user-remove",
    "admin-user-list",
];

fn bash(script: &str) -> String {
    fpn_clidocs::check::bash(BIN, script)
}

fn complete(words: &[&str]) -> Vec<String> {
    fpn_clidocs::check::complete(BIN, "_fpn__gms", words)
}

#[test]
fn the_bash_completion_loads_and_completes_subcommands_and_their_options() {
    assert!(bash("complete -p fpn-gms").contains("-F _fpn__gms fpn-gms"));
    assert_eq!(complete(&["fpn-gms", "rel"]), ["relay-cert"]);
    // Past the first subcommand (broken by clap_complete for hyphenated
    // names without our fix): `ge`'s subcommands and `ge add`'s options.
    assert_eq!(complete(&["fpn-gms", "ge", "rev"]), ["revoke"]);
    assert_eq!(complete(&["fpn-gms", "ge", "add", "--k"]), ["--kind"]);
    assert_eq!(complete(&["fpn-gms", "host", "add", "--v"]), ["--via"]);
    let shells = ["bash", "zsh", "fish", "elvish", "powershell"];
    for shell in shells {
        let o = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}");
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains("relay-cert"), "{shell}");
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
    assert_eq!(
        v["pages"].as_array().unwrap().len(),
        SUBCOMMANDS.len() + NESTED.len() + 1
    );
    let top = render(&out.join("fpn-gms.1"));
    for sub in SUBCOMMANDS {
        assert!(top.contains(&format!("fpn-gms-{sub}(1)")), "{sub}: {top}");
        let page = render(&out.join(format!("fpn-gms-{sub}.1")));
        assert!(page.contains(&format!("fpn-gms-{sub}")), "{page}");
    }
    for sub in NESTED {
        let page = render(&out.join(format!("fpn-gms-{sub}.1")));
        assert!(page.contains(&format!("fpn-gms-{sub}")), "{page}");
    }
    let ge_add = render(&out.join("fpn-gms-ge-add.1"));
    assert!(
        ge_add.contains("--kind") && ge_add.contains("FPN_GMS_DATA"),
        "{ge_add}"
    );
    // The host pages say what a host behind a gateway is.
    let host = render(&out.join("fpn-gms-host.1"));
    assert!(host.contains("camera") && host.contains("LIP"), "{host}");
    let host_add = render(&out.join("fpn-gms-host-add.1"));
    assert!(
        host_add.contains("--via") && host_add.contains("--lan"),
        "{host_add}"
    );
}
