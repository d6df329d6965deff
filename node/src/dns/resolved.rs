//! systemd-resolved split DNS: send only the network's zone to the stub.
//!
//! When resolved runs, the node tells it that the overlay interface has a DNS
//! server (the stub) that is responsible for `~<zone>` only:
//!
//! ```text
//! resolvectl dns fpn0 100.64.0.1
//! resolvectl domain fpn0 ~home.fpn
//! resolvectl default-route fpn0 false
//! ```
//!
//! The third line keeps resolved from using the stub for other names
//! (otherwise a link with a DNS server may become a default route, and the
//! stub, which forwards to resolved, would loop). On shutdown
//! `resolvectl revert fpn0` drops all three. Without resolved the caller gets
//! [`SplitDnsOutcome::NotPresent`] and tells the user what to do instead.
//!
//! Commands are data ([`CommandLine`]) run through a [`CommandRunner`], so
//! tests check the exact command lines without resolved.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::error::{Error, Result};

/// Where resolved keeps its runtime state while it runs.
pub const RESOLVED_RUNTIME_DIR: &str = "/run/systemd/resolve";
/// The program that configures resolved.
pub const RESOLVECTL: &str = "resolvectl";
/// How long one `resolvectl` call may take before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// One command line: a program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// The program, looked up on PATH.
    pub program: String,
    /// The arguments.
    pub args: Vec<String>,
}

impl CommandLine {
    fn resolvectl<const N: usize>(args: [&str; N]) -> Self {
        Self {
            program: RESOLVECTL.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// Runs command lines. [`SystemRunner`] is the real one; tests record.
pub trait CommandRunner {
    /// Runs `cmd` to completion; an error if it cannot start, fails or hangs.
    fn run(&self, cmd: &CommandLine) -> Result<()>;
}

/// Runs commands as child processes, each bounded by [`COMMAND_TIMEOUT`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, cmd: &CommandLine) -> Result<()> {
        let spawn_err = |source| Error::SplitDnsSpawn {
            command: cmd.to_string(),
            source,
        };
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(spawn_err)? {
                break status;
            }
            if started.elapsed() > COMMAND_TIMEOUT {
                // Best effort: the child may have exited meanwhile.
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::SplitDnsCommand {
                    command: cmd.to_string(),
                    status: "timed out".to_owned(),
                    stderr: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if status.success() {
            return Ok(());
        }
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.by_ref().take(512).read_to_string(&mut stderr);
        }
        Err(Error::SplitDnsCommand {
            command: cmd.to_string(),
            status: status.to_string(),
            stderr: stderr.trim().to_owned(),
        })
    }
}

/// How to tell whether resolved is there.
#[derive(Clone, Debug)]
pub struct ResolvedProbe {
    /// resolved's runtime directory ([`RESOLVED_RUNTIME_DIR`]).
    pub runtime_dir: PathBuf,
    /// The PATH to search for `resolvectl` (the process's PATH).
    pub path: Option<OsString>,
}

impl Default for ResolvedProbe {
    fn default() -> Self {
        Self {
            runtime_dir: PathBuf::from(RESOLVED_RUNTIME_DIR),
            path: std::env::var_os("PATH"),
        }
    }
}

/// Why split DNS was not set up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotPresent {
    /// resolved is not running (its runtime directory is missing).
    NotRunning,
    /// resolved runs but `resolvectl` is not on PATH.
    NoResolvectl,
}

impl NotPresent {
    /// What the user can do instead, for a log line at INFO.
    pub fn advice(&self, zone: &str, stub: SocketAddr) -> String {
        let zone = zone.trim_end_matches('.');
        let why = match self {
            Self::NotRunning => "systemd-resolved is not running",
            Self::NoResolvectl => "resolvectl is not on PATH",
        };
        format!(
            "{why}: names in {zone} resolve only for programs that ask the stub at {stub}; \
             point /etc/resolv.conf at {ip} (the stub forwards other names), or have your \
             resolver forward {zone} to it (dnsmasq: server=/{zone}/{ip})",
            ip = stub.ip()
        )
    }
}

impl fmt::Display for NotPresent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotRunning => "systemd-resolved is not running",
            Self::NoResolvectl => "resolvectl not found",
        })
    }
}

/// The result of [`set_up`].
#[derive(Debug)]
#[must_use = "revert the set-up on shutdown"]
pub enum SplitDnsOutcome {
    /// resolved now sends the zone to the stub; revert on shutdown.
    Configured(SplitDns),
    /// Nothing was changed.
    NotPresent(NotPresent),
}

/// An active split-DNS set-up on one interface.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "revert the set-up on shutdown"]
pub struct SplitDns {
    ifname: String,
}

impl SplitDns {
    /// The interface configured.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Undoes the set-up (`resolvectl revert <ifname>`). Call on shutdown;
    /// when the interface disappears first, resolved forgets it anyway.
    pub fn revert(self, runner: &dyn CommandRunner) -> Result<()> {
        runner.run(&revert_command(&self.ifname))
    }
}

/// Whether resolved is present, per `probe`.
pub fn detect(probe: &ResolvedProbe) -> Result<(), NotPresent> {
    if !probe.runtime_dir.is_dir() {
        return Err(NotPresent::NotRunning);
    }
    let found = probe
        .path
        .as_ref()
        .is_some_and(|p| std::env::split_paths(p).any(|dir| is_executable(&dir.join(RESOLVECTL))));
    if !found {
        return Err(NotPresent::NoResolvectl);
    }
    Ok(())
}

/// The commands that route `zone` to the stub at `stub` on `ifname`.
pub fn setup_commands(ifname: &str, stub: SocketAddr, zone: &str) -> Vec<CommandLine> {
    let server = match stub {
        SocketAddr::V4(a) if a.port() == 53 => a.ip().to_string(),
        SocketAddr::V6(a) if a.port() == 53 => a.ip().to_string(),
        // resolved understands ADDRESS:PORT (and [V6]:PORT) since v246.
        other => other.to_string(),
    };
    let domain = format!("~{}", zone.trim_end_matches('.'));
    vec![
        CommandLine::resolvectl(["dns", ifname, &server]),
        CommandLine::resolvectl(["domain", ifname, &domain]),
        CommandLine::resolvectl(["default-route", ifname, "false"]),
    ]
}

/// The command that undoes [`setup_commands`].
pub fn revert_command(ifname: &str) -> CommandLine {
    CommandLine::resolvectl(["revert", ifname])
}

/// Sets up split DNS for `zone` on `ifname` when resolved is present. If a
/// command fails, what was done is reverted and the error returned.
pub fn set_up(
    probe: &ResolvedProbe,
    runner: &dyn CommandRunner,
    ifname: &str,
    stub: SocketAddr,
    zone: &str,
) -> Result<SplitDnsOutcome> {
    if let Err(why) = detect(probe) {
        debug!(%why, "no split DNS");
        return Ok(SplitDnsOutcome::NotPresent(why));
    }
    for cmd in setup_commands(ifname, stub, zone) {
        if let Err(e) = runner.run(&cmd) {
            if let Err(r) = runner.run(&revert_command(ifname)) {
                warn!(error = %r, "cannot revert a partial resolved set-up");
            }
            return Err(e);
        }
    }
    Ok(SplitDnsOutcome::Configured(SplitDns {
        ifname: ifname.to_owned(),
    }))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
