//! Processes inside the lab: one-shot commands with a timeout, and background
//! processes whose guard kills them.
//!
//! Every process runs as `ip netns exec NS CMD...` (which execs CMD, so the
//! pid is the command's) in a session of its own (`setsid`): one signal to
//! the process group reaches the command and everything it started, and
//! background processes started by `fpn-lab up` outlive the CLI. Output of
//! background processes goes to a log file, never to a pipe nobody reads.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::Error;
use crate::sys;

/// How long a guard waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What a finished one-shot command printed, and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output (invalid UTF-8 replaced).
    pub stdout: String,
    /// Standard error (invalid UTF-8 replaced).
    pub stderr: String,
}

impl Output {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code, or None when a signal ended the command.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Where and how to start a process in a namespace.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub ip: PathBuf,
    pub netns: String,
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

impl Spec {
    /// The command line for messages (without the `ip netns exec` part).
    pub(crate) fn display(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `ip netns exec NS argv...` in a new session.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.arg("netns")
            .arg("exec")
            .arg(&self.netns)
            .args(&self.argv);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls setsid, sigemptyset and sigprocmask, which are
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // A caller that blocks SIGINT/SIGTERM to handle them on a
                // thread of its own (fpn-demo) must not pass that mask on:
                // a daemon with SIGTERM blocked would not stop when asked.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Runs a command to completion. After `timeout` it is killed with its
/// process group and [`Error::Timeout`] is returned. Processes the command
/// leaves behind in its session are killed when it exits: `exec` is for
/// commands that finish, `spawn` is for services.
pub(crate) fn exec(
    spec: &Spec,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Output, Error> {
    let shown = spec.display();
    let mut child = spec
        .command()
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("starting `{shown}` in {}", spec.netns), e))?;
    let pid = child.id() as i32;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A writer thread, so a command that does not read its input cannot
        // block us past the timeout.
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let exited = wait_exit(pid, deadline);
    // Until we reap the leader its pid (and so its process group id) cannot
    // be reused, so this kill reaches only what the command left in its
    // group (or the command itself, after a timeout). Then reap.
    sys::kill_group(pid, libc::SIGKILL);
    let status = child
        .wait()
        .map_err(|e| Error::io(format!("waiting for `{shown}`"), e))?;
    if !exited {
        let err = collect(stderr, Duration::from_millis(500));
        return Err(Error::Timeout {
            command: shown,
            after: timeout,
            stderr: err,
        });
    }
    let grace = Duration::from_secs(1);
    Ok(Output {
        status,
        stdout: collect(stdout, grace),
        stderr: collect(stderr, grace),
    })
}

/// Reads a pipe to the end on its own thread.
fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

/// The reader's bytes, or nothing if it has not finished within `grace`
/// (a daemon that escaped our process group holds the pipe).
fn collect(rx: mpsc::Receiver<Vec<u8>>, grace: Duration) -> String {
    rx.recv_timeout(grace)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Polls until child `pid` has exited, without reaping it; false when
/// `deadline` passed first.
fn wait_exit(pid: i32, deadline: Instant) -> bool {
    let mut pause = Duration::from_millis(1);
    loop {
        if sys::exited_unreaped(pid) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// A background process shared by its guard and the lab that started it.
#[derive(Debug)]
pub(crate) struct Proc {
    pid: i32,
    host: String,
    name: String,
    command: String,
    log: PathBuf,
    state: Mutex<ProcState>,
}

#[derive(Debug)]
struct ProcState {
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `spec` with stdout and stderr appended to `log`.
    pub(crate) fn start(
        spec: &Spec,
        host: &str,
        name: &str,
        log: PathBuf,
    ) -> Result<Arc<Self>, Error> {
        let shown = spec.display();
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(format!("creating log {}", log.display()), e))?;
        let file2 = file
            .try_clone()
            .map_err(|e| Error::io("duplicating a log fd", e))?;
        let child = spec
            .command()
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .map_err(|e| Error::io(format!("starting `{shown}` in {}", spec.netns), e))?;
        tracing::debug!(pid = child.id(), host, name, "spawned");
        Ok(Arc::new(Proc {
            pid: child.id() as i32,
            host: host.to_string(),
            name: name.to_string(),
            command: shown,
            log,
            state: Mutex::new(ProcState {
                child: Some(child),
                status: None,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, ProcState> {
        // A panic while holding this lock leaves plain data behind; go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The exit status once the process has ended (reaping it if needed).
    pub(crate) fn status(&self) -> Option<ExitStatus> {
        let mut st = self.lock();
        if st.status.is_none()
            && let Some(child) = st.child.as_mut()
            && let Ok(Some(s)) = child.try_wait()
        {
            st.status = Some(s);
        }
        st.status
    }

    /// True while the process runs (or was released to run on its own).
    pub(crate) fn running(&self) -> bool {
        let released = self.lock().child.is_none();
        if released {
            sys::pid_alive(self.pid)
        } else {
            self.status().is_none()
        }
    }

    fn wait_for(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Signals the process group, only while the leader is not reaped (so
    /// its pid cannot have been reused) and not released. False otherwise.
    pub(crate) fn signal_group(&self, sig: i32) -> bool {
        let st = self.lock();
        // Holding the lock: nobody reaps the leader between check and kill.
        st.child.is_some() && st.status.is_none() && sys::kill_group(self.pid, sig)
    }

    /// SIGTERM, then SIGKILL after `grace` (at once when `grace` is zero) to
    /// the process group; then reaps the leader. A process that already
    /// ended and was reaped is left alone (lab teardown kills whatever it
    /// left behind in its namespace).
    pub(crate) fn terminate(&self, grace: Duration) -> Option<ExitStatus> {
        {
            let st = self.lock();
            st.child.as_ref()?; // released: not ours to stop
            if st.status.is_some() {
                return st.status;
            }
        }
        if !grace.is_zero() && self.signal_group(libc::SIGTERM) {
            wait_exit(self.pid, Instant::now() + grace);
        }
        self.signal_group(libc::SIGKILL);
        self.wait_for(Duration::from_secs(5))
    }

    /// Gives the process up: it keeps running after every guard is gone.
    pub(crate) fn release(&self) {
        self.lock().child = None;
    }
}

/// A background process in a lab host. Dropping the guard stops the process
/// and everything it started (SIGTERM, SIGKILL after 2 s); so does dropping
/// the lab. Its stdout and stderr go to [`Process::log_path`].
#[derive(Debug)]
pub struct Process {
    inner: Arc<Proc>,
}

impl Process {
    pub(crate) fn new(inner: Arc<Proc>) -> Self {
        Process { inner }
    }

    /// The process id (also its process group and session id).
    pub fn pid(&self) -> u32 {
        self.inner.pid as u32
    }

    /// The lab host it runs in.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// Its name (used in the log file name).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The command line.
    pub fn command(&self) -> &str {
        &self.inner.command
    }

    /// The file that receives its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// Everything it has logged so far (invalid UTF-8 replaced).
    pub fn log(&self) -> String {
        std::fs::read(&self.inner.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// True while it runs.
    pub fn is_running(&self) -> bool {
        self.inner.running()
    }

    /// Its exit status, if it has ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.inner.status()
    }

    /// Waits until the log contains `needle`. Fails early with
    /// [`Error::ProcessExited`] (and the log's tail) if the process ends first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.inner.status() {
                // It may have logged the text just before exiting.
                if self.log().contains(needle) {
                    return Ok(());
                }
                return Err(self.exited(status, format!("log line `{needle}`")));
            }
            if Instant::now() >= deadline {
                return Err(Error::WaitTimeout {
                    what: format!(
                        "`{needle}` in the log of `{}` ({})",
                        self.command(),
                        self.log_tail()
                    ),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit on its own.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<ExitStatus, Error> {
        self.inner
            .wait_for(timeout)
            .ok_or_else(|| Error::WaitTimeout {
                what: format!("`{}` to exit", self.command()),
                after: timeout,
            })
    }

    /// Sends a signal (e.g. `libc::SIGHUP`) to its process group.
    pub fn signal(&self, sig: i32) {
        self.inner.signal_group(sig);
    }

    /// Stops it gracefully: SIGTERM, SIGKILL after 2 s. Returns how it ended.
    pub fn stop(&self) -> Option<ExitStatus> {
        self.inner.terminate(STOP_GRACE)
    }

    /// Kills it at once (SIGKILL), as a crash or power loss would.
    pub fn kill(&self) -> Option<ExitStatus> {
        self.inner.terminate(Duration::ZERO)
    }

    /// Lets it run on without this guard (the lab no longer stops it; `fpn-lab
    /// down` still does, as it kills everything in the lab's namespaces).
    pub fn release(self) -> u32 {
        self.inner.release();
        self.pid()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            "log empty".to_string()
        } else {
            format!("log: {tail}")
        }
    }

    pub(crate) fn exited(&self, status: ExitStatus, waiting_for: String) -> Error {
        Error::ProcessExited {
            command: self.command().to_string(),
            status: status.to_string(),
            waiting_for,
            log: self.inner.log.clone(),
            tail: self.log_tail(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.inner.terminate(STOP_GRACE);
    }
}

/// The processes a lab started, so it can stop them all at teardown even if
/// a guard was leaked.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    procs: Mutex<Vec<Arc<Proc>>>,
}

impl Registry {
    /// Remembers `p`, forgetting entries that have ended.
    pub(crate) fn add(&self, p: Arc<Proc>) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.retain(|q| q.status().is_none() && q.lock().child.is_some());
        procs.push(p);
    }

    /// Stops every remembered process, all at once: SIGTERM to each, then a
    /// shared grace period, then SIGKILL.
    pub(crate) fn stop_all(&self, grace: Duration) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        let live: Vec<_> = procs
            .into_iter()
            .filter(|p| p.signal_group(libc::SIGTERM))
            .collect();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && live.iter().any(|p| !sys::exited_unreaped(p.pid)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in &live {
            p.terminate(Duration::ZERO);
        }
    }
}
