//! `fpn-gms completions SHELL` and `fpn-gms man --out DIR`, checked with
//! the real tools: bash loads the script and completes with it, groff
//! renders every page without a warning and `man -l` shows each subcommand.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fpn-gms");
const SUBCOMMANDS: &[&str] = &[
    "init",
    "serve",
    "relay-cert",
    "status",
    "group",
    "ge",
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
    "token-create",
    "token-list",
    "token-cancel",
    "admin-user-set",
    "admin-user-remove",
    "admin-user-list",
];

/// Runs `script` in a non-interactive bash that has loaded the completion
/// script, and returns its standard output.
fn bash(script: &str) -> String {
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <('{BIN}' completions bash) || exit 9\n{script}"
        ))
        .output()
        .expect("bash (Debian package bash) runs");
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// What bash's completion offers for `words`, the last one being completed.
fn complete(words: &[&str]) -> Vec<String> {
    let n = words.len();
    let script = format!(
        "COMP_WORDS=({}); COMP_CWORD={}; _fpn__gms fpn-gms '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words.join(" "),
        n - 1,
        words[n - 1],
        words[n - 2],
    );
    bash(&script).lines().map(str::to_owned).collect()
}

#[test]
fn the_bash_completion_loads_and_completes_subcommands_and_their_options() {
    assert!(bash("complete -p fpn-gms").contains("-F _fpn__gms fpn-gms"));
    assert_eq!(complete(&["fpn-gms", "rel"]), ["relay-cert"]);
    // Past the first subcommand (broken by clap_complete for hyphenated
    // names without our fix): `ge`'s subcommands and `ge add`'s options.
    assert_eq!(complete(&["fpn-gms", "ge", "rev"]), ["revoke"]);
    assert_eq!(complete(&["fpn-gms", "ge", "add", "--k"]), ["--kind"]);
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
}

/// The page as `man -l` shows it (groff underneath), after checking that
/// groff itself finds nothing to warn about in the roff.
fn render(page: &Path) -> String {
    let g = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .expect("groff (Debian package groff-base) runs");
    assert!(
        g.status.success() && g.stderr.is_empty(),
        "{page:?}: {}",
        String::from_utf8_lossy(&g.stderr)
    );
    let m = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "")
        .output()
        .expect("man (Debian package man-db) runs");
    assert!(m.status.success(), "{page:?}");
    // No terminal: man prints plain text, but strip any overstrike anyway.
    let text = String::from_utf8_lossy(&m.stdout).into_owned();
    strip_overstrike(&text)
}

fn strip_overstrike(s: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in s.chars() {
        if c == '\u{8}' {
            out.pop();
            continue;
        }
        out.push(c);
    }
    out.into_iter().collect()
}
