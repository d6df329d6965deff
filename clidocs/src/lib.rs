//! fpn-clidocs: shell completions and man pages for fpn's command-line
//! tools (`fpn-gms`, `fpn-node`, `fpn-lab`), generated from the same clap
//! definitions the binaries parse with, so they never drift from the real
//! options.
//!
//! Each binary exposes two subcommands built on this crate:
//! `completions SHELL` (the script on standard output, for bash, zsh, fish,
//! elvish or powershell) and `man --out DIR` (one roff page per command and
//! subcommand, e.g. `fpn-gms-ge-add.1`). Generating at run time rather than
//! in a build script means a packager runs the installed binary once and a
//! user needs no source tree.
//!
//! What it never does: touch anything but the writer or directory it is
//! given.

pub mod check;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// What went wrong writing completions or man pages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The output directory could not be created or a page not written.
    #[error("writing man pages to {dir}: {source}")]
    ManPages {
        /// The directory given with `--out`.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Listing the written pages failed.
    #[error("listing {dir}: {source}")]
    List {
        /// The directory given with `--out`.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Writes the completion script for `shell` to `out`.
///
/// `cmd` is the binary's top-level command (`Cli::command()`); the script
/// completes its subcommands and options under the command's name.
pub fn completions(
    mut cmd: clap::Command,
    shell: Shell,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name.clone(), &mut script);
    if shell == Shell::Bash {
        script = fix_bash_hyphenated_name(&script, &name);
    }
    out.write_all(&script)
}

/// clap_complete 4.6 (clap-rs/clap#6421, open) spells the state of a
/// subcommand two ways when the binary's name has a hyphen: the loop that
/// walks the words arrives at `fpn__gms__subcmd__ge`, the case arms are
/// labelled `fpn__subcmd__gms__subcmd__ge`, so nothing after the first
/// subcommand ever completes. Rewrite the arms the way the loop spells them.
fn fix_bash_hyphenated_name(script: &[u8], name: &str) -> Vec<u8> {
    const SEP: &str = "__subcmd__";
    if !name.contains('-') {
        return script.to_vec();
    }
    let wrong = format!("{}{SEP}", name.replace('-', SEP));
    let right = format!("{}{SEP}", name.replace('-', "__"));
    String::from_utf8_lossy(script)
        .replace(&wrong, &right)
        .into_bytes()
}

/// Writes one man page (section 1) per command and visible subcommand of
/// `cmd` into `dir` (created if missing) and returns their paths, sorted.
///
/// Pages are named after the command path joined by `-`
/// (`fpn-gms.1`, `fpn-gms-ge.1`, `fpn-gms-ge-add.1`), as git and cargo do,
/// so `man fpn-gms-ge-add` finds one once `dir` is in the MANPATH.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let err = |source| Error::ManPages {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    clap_mangen::generate_to(cmd, dir).map_err(err)?;
    let mut pages = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|source| Error::List {
        dir: dir.to_owned(),
        source,
    })?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "1") {
            pages.push(p);
        }
    }
    pages.sort();
    Ok(pages)
}

/// An error and its causes on one line for a CLI's last words: the causes
/// joined with `: `, leaving out one whose text the line already holds
/// (fpn's error types print their source in their own message), newlines
/// made spaces. Call with `e.chain()` of an `anyhow::Error`.
pub fn one_line<'a>(
    causes: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut line = String::new();
    for cause in causes {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> clap::Command {
        clap::Command::new("demo")
            .about("a demo")
            .subcommand(clap::Command::new("alpha").subcommand(clap::Command::new("beta")))
    }

    #[test]
    fn one_page_per_subcommand() {
        let d = tempfile::tempdir().unwrap();
        let pages = man_pages(demo(), &d.path().join("man1")).unwrap();
        let names: Vec<_> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["demo-alpha-beta.1", "demo-alpha.1", "demo.1"]);
    }

    #[test]
    fn bash_completion_names_the_subcommands() {
        let mut out = Vec::new();
        completions(demo(), Shell::Bash, &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("alpha") && s.contains("complete -F"), "{s}");
    }

    #[test]
    fn a_hyphenated_name_gets_one_spelling_of_each_state() {
        let cmd = clap::Command::new("my-app").subcommand(clap::Command::new("sub"));
        let mut out = Vec::new();
        completions(cmd, Shell::Bash, &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("my__app__subcmd__sub)"), "{s}");
        assert!(!s.contains("my__subcmd__app"), "{s}");
    }
}
