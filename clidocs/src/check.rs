//! What the binaries' CLI tests check their completions and man pages
//! with, against the real tools (bash, groff, man): one copy for fpn-gms
//! and fpn-node. For tests only: a failed check panics with what the tool
//! said.

use std::path::Path;
use std::process::Command;

/// Runs `script` in a non-interactive bash that has loaded `bin`'s bash
/// completion script, and returns its standard output.
pub fn bash(bin: &str, script: &str) -> String {
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <('{bin}' completions bash) || exit 9\n{script}"
        ))
        .output()
        .expect("bash (Debian package bash) runs");
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("bash prints UTF-8 here")
}

/// What bash's completion function `func` of `bin` offers for `words`
/// (the command line, the last word being completed).
pub fn complete(bin: &str, func: &str, words: &[&str]) -> Vec<String> {
    let n = words.len();
    let script = format!(
        "COMP_WORDS=({}); COMP_CWORD={}; {func} {} '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words.join(" "),
        n - 1,
        words[0],
        words[n - 1],
        words[n - 2],
    );
    bash(bin, &script).lines().map(str::to_owned).collect()
}

/// The page as `man -l` shows it (groff underneath), after checking that
/// groff itself finds nothing to warn about in the roff.
pub fn render(page: &Path) -> String {
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
    strip_overstrike(&String::from_utf8_lossy(&m.stdout))
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
