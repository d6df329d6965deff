//! The small set of OS operations the lab needs: finding tools, running setup
//! commands, entering a namespace on a dedicated thread, signalling process
//! groups, listing namespaces, and a lock file.
//!
//! `setns` only ever runs on a thread this module creates for the purpose:
//! a thread that switched namespaces must not go back to a pool (a tokio
//! worker, the test harness) where other code would run in the wrong network.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::Error;

/// Where `ip netns` keeps its namespace handles.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Tools the lab runs, with the Debian package that provides each.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("nft", "nftables"),
    ("tcpdump", "tcpdump"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("miniupnpd", "miniupnpd-nftables"),
    ("upnpc", "miniupnpc"),
    ("natpmpc", "natpmp-utils"),
    // The web admin's browser tests (overlay-tests web_admin).
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Finds `tool` in PATH, then in /usr/sbin and /sbin (often missing from a
/// non-login root PATH).
pub fn find_tool(tool: &'static str) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            let package = PACKAGES
                .iter()
                .find(|(t, _)| *t == tool)
                .map(|(_, p)| *p)
                .unwrap_or(tool);
            Error::MissingTool { tool, package }
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Checks the lab can run here: root, plus `ip` and every tool in `tools`.
/// Tests call this first so a missing tool fails the test loudly.
pub fn preflight(tools: &[&'static str]) -> Result<(), Error> {
    if !is_root() {
        return Err(Error::NotRoot);
    }
    find_tool("ip")?;
    for t in tools {
        find_tool(t)?;
    }
    Ok(())
}

/// Runs a setup command to completion and returns its stdout; a non-zero
/// exit becomes [`Error::CommandFailed`] with the command line and stderr.
pub(crate) fn run(program: &Path, args: &[&str]) -> Result<String, Error> {
    run_with_stdin(program, args, None)
}

/// Like [`run`], feeding `stdin` to the command (an nft ruleset).
pub(crate) fn run_with_stdin(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, Error> {
    let cmdline = command_line(program, args);
    tracing::debug!(command = %cmdline, "run");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("starting `{cmdline}`"), e))?;
    if let Some(input) = stdin {
        // Dropping the handle after writing closes the pipe: the tool sees EOF.
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes())
            .map_err(|e| Error::io(format!("writing to `{cmdline}`"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for `{cmdline}`"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::CommandFailed {
            command: cmdline,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A command line for messages: program name and arguments, space separated.
pub(crate) fn command_line<S: AsRef<std::ffi::OsStr>>(program: &Path, args: &[S]) -> String {
    let name = program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy();
    let mut s = name.into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// The handle file of namespace `netns`.
pub(crate) fn netns_path(netns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns)
}

/// Names of all namespaces in /run/netns.
pub(crate) fn list_netns() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Processes living in any of `netns` (by namespace inode, as `ip netns
/// pids` does), as (pid, namespace). Never our own process; zombies have
/// no namespace and are not listed.
pub(crate) fn pids_in_netns(netns: &[String]) -> Vec<(i32, String)> {
    use std::os::unix::fs::MetadataExt;
    let wanted: Vec<((u64, u64), &String)> = netns
        .iter()
        .filter_map(|ns| {
            std::fs::metadata(netns_path(ns))
                .ok()
                .map(|m| ((m.dev(), m.ino()), ns))
        })
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in proc_dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(m) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if let Some((_, ns)) = wanted.iter().find(|(key, _)| *key == (m.dev(), m.ino())) {
            found.push((pid, (*ns).clone()));
        }
    }
    found
}

/// Sends `sig` to the process group led by `pid`. False if there is none.
pub(crate) fn kill_group(pid: i32, sig: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions; a negative pid names
    // the process group, which our spawns lead (they call setsid).
    unsafe { libc::kill(-pid, sig) == 0 }
}

/// Sends `sig` to one process.
pub(crate) fn kill_pid(pid: i32, sig: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    // SAFETY: as above, for a single process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// True when our child `pid` has exited (or is already reaped), without
/// reaping it: while it is a zombie its pid and process group id stay ours.
pub(crate) fn exited_unreaped(pid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: waitid writes only into `info`, which outlives the call.
    let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    // ECHILD: not our child (any more), so it is not running as ours.
    // SAFETY: si_pid is valid to read after waitid (zero if no child changed
    // state).
    rc != 0 || unsafe { info.si_pid() } != 0
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesized command name, which may itself
    // contain spaces and parentheses: look after the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// A thread that runs a closure inside a network namespace. Sockets it
/// creates belong to that namespace and keep working from any thread.
#[derive(Debug)]
pub struct NetnsThread<T> {
    // None only when setns failed, and then no NetnsThread is handed out.
    handle: JoinHandle<Option<T>>,
}

impl<T> NetnsThread<T> {
    /// Waits for the closure's result; a panic inside it is resumed here.
    pub fn join(self) -> T {
        match self.handle.join() {
            Ok(Some(v)) => v,
            Ok(None) => unreachable!("a NetnsThread exists only after setns succeeded"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// True when the closure has returned.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Starts a thread, moves it into namespace `netns`, and runs `f` there.
/// Returns only after the thread entered the namespace (or failed to).
pub(crate) fn thread_in_netns<T, F>(netns: &str, f: F) -> Result<NetnsThread<T>, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let setns_err = |source| Error::Setns {
        netns: netns.to_string(),
        source,
    };
    let file = File::open(netns_path(netns)).map_err(setns_err)?;
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<()>>(1);
    let handle = std::thread::Builder::new()
        .name(format!("netns {netns}"))
        .spawn(move || {
            // SAFETY: setns with a valid namespace fd only changes this
            // thread's network namespace; the fd outlives the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            drop(file);
            if rc != 0 {
                let _ = tx.send(Err(std::io::Error::last_os_error()));
                return None;
            }
            let _ = tx.send(Ok(()));
            Some(f())
        })
        .map_err(|e| Error::io("spawning a namespace thread", e))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(NetnsThread { handle }),
        Ok(Err(e)) => Err(setns_err(e)),
        Err(_) => Err(setns_err(std::io::Error::other("namespace thread died"))),
    }
}

/// An exclusive advisory lock on a file, released on drop.
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
}

impl FileLock {
    /// Blocks until the lock on `path` (created if missing) is ours.
    pub(crate) fn acquire(path: &Path) -> Result<Self, Error> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening lock {}", path.display()), e))?;
        // SAFETY: flock on an fd we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::io(format!("locking {}", path.display()), e));
        }
        Ok(FileLock { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above. Closing the fd would release it too; explicit is clearer.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}
