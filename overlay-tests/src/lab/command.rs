//! [`LabCommand`]: a command about to run in a lab host.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

use super::Lab;
use crate::process::{self, Proc, Process, Spec};
use crate::{Error, Output};

/// Default timeout of one-shot commands.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A command to run in a lab host, built by [`Lab::command`].
///
/// ```no_run
/// # fn f(lab: &fpn_lab::Lab) -> Result<(), fpn_lab::Error> {
/// use std::time::Duration;
/// let server = lab.command("bob", ["iperf3", "-s"]).name("iperf").spawn()?;
/// server.wait_for_log("Server listening", Duration::from_secs(5))?;
/// let report = lab
///     .command("alice", ["iperf3", "-c", "198.18.0.2", "-t", "10", "-J"])
///     .timeout(Duration::from_secs(30))
///     .run()?;
/// # Ok(()) }
/// ```
///
/// Every command gets `FPN_LAB_ID` and `FPN_LAB_HOST` in its environment.
#[derive(Debug)]
#[must_use = "a LabCommand does nothing until output(), run() or spawn()"]
pub struct LabCommand<'a> {
    lab: &'a Lab,
    host: String,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
    name: Option<String>,
    stdin: Option<Vec<u8>>,
}

impl<'a> LabCommand<'a> {
    pub(super) fn new<I, S>(lab: &'a Lab, host: &str, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        LabCommand {
            lab,
            host: host.to_string(),
            argv: argv
                .into_iter()
                .map(|a| a.as_ref().to_os_string())
                .collect(),
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            name: None,
            stdin: None,
        }
    }

    /// Kill the command (and its process group) after `d` (default 60 s).
    /// Only for [`output`](Self::output) and [`run`](Self::run).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Names a spawned process (log file `{host}-{name}.log`); default: the
    /// program's file name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Feeds these bytes to the command's stdin (one-shot commands only).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Runs to completion and returns the output, whatever the exit status.
    pub fn output(self) -> Result<Output, Error> {
        let spec = self.spec()?;
        process::exec(&spec, self.stdin, self.timeout)
    }

    /// Runs to completion; a non-zero exit is [`Error::CommandFailed`].
    /// Returns stdout.
    pub fn run(self) -> Result<String, Error> {
        let spec = self.spec()?;
        let host = self.host.clone();
        let out = process::exec(&spec, self.stdin, self.timeout)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            let stderr = out.stderr.trim();
            let stdout = out.stdout.trim();
            Err(Error::CommandFailed {
                command: format!("{} (in {host})", spec.display()),
                status: out.status.to_string(),
                stderr: if stderr.is_empty() {
                    stdout.to_string()
                } else {
                    stderr.to_string()
                },
            })
        }
    }

    /// Starts it in the background. The returned guard stops it on drop; the
    /// lab stops it at teardown in any case.
    pub fn spawn(self) -> Result<Process, Error> {
        let spec = self.spec()?;
        let name = match &self.name {
            Some(n) => n.clone(),
            None => std::path::Path::new(&self.argv[0])
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "process".into()),
        };
        let log = self.lab.new_file(&format!("{}-{name}", self.host), "log");
        let inner = Proc::start(&spec, &self.host, &name, log)?;
        self.lab.registry.add(inner.clone());
        Ok(Process::new(inner))
    }

    fn spec(&self) -> Result<Spec, Error> {
        if self.argv.is_empty() {
            return Err(Error::io(
                format!("running a command in {}", self.host),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
            ));
        }
        let st = self.lab.lock();
        let netns = st.netns(&self.host)?.to_string();
        let mut env = vec![
            (OsString::from("FPN_LAB_ID"), OsString::from(&st.id)),
            (OsString::from("FPN_LAB_HOST"), OsString::from(&self.host)),
        ];
        env.extend(self.env.iter().cloned());
        Ok(Spec {
            ip: self.lab.tools.ip.clone(),
            netns,
            argv: self.argv.clone(),
            env,
        })
    }
}
