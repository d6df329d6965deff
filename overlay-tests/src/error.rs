//! The one error type of the lab library.
//!
//! Variants say what failed and carry enough context (the command line, the
//! stderr it printed, the file it read) that a failing test explains itself.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can fail in the lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- environment ----
    /// The lab needs root (network namespaces, nftables, raw captures).
    #[error("the lab must run as root (network namespaces and nftables need CAP_NET_ADMIN)")]
    NotRoot,
    /// A tool the lab drives is not installed.
    #[error(
        "`{tool}` not found in PATH, /usr/sbin or /sbin; install it (Debian package {package})"
    )]
    MissingTool {
        /// The command name.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// The kernel lacks a feature the topology asks for.
    #[error("{feature} is not supported here: {detail}")]
    Unsupported {
        /// What was asked for.
        feature: String,
        /// What the tool said.
        detail: String,
    },
    /// A file or directory operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    // ---- topology files ----
    /// The topology is not valid TOML or has unknown or mistyped keys.
    #[error("{path}: {source}")]
    Parse {
        /// The file (or `<inline>`).
        path: String,
        /// What the TOML parser said.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The topology parsed but breaks a rule (unknown host, duplicate
    /// interface, bad name, conflicting routes, ...).
    #[error("invalid topology: {0}")]
    Topology(String),
    /// An address or prefix could not be parsed.
    #[error("invalid address `{value}`: {reason}")]
    InvalidAddress {
        /// The text given.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },

    // ---- running a lab ----
    /// A setup command (`ip`, `nft`, `tc`, ...) exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The full command line.
        command: String,
        /// Exit status as text.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A command did not finish in time and was killed with its process group.
    #[error("`{command}` timed out after {after:?} and was killed; stderr: {stderr}")]
    Timeout {
        /// The full command line.
        command: String,
        /// The timeout that expired.
        after: Duration,
        /// What it printed on stderr before it was killed.
        stderr: String,
    },
    /// A spawned process exited while the caller waited for it to get ready.
    #[error("`{command}` exited ({status}) before {waiting_for}; log {log}: {tail}")]
    ProcessExited {
        /// The full command line.
        command: String,
        /// Exit status as text.
        status: String,
        /// What the caller waited for.
        waiting_for: String,
        /// The process's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// A wait for a condition (log line, open port) ran out of time.
    #[error("timed out after {after:?} waiting for {what}")]
    WaitTimeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        after: Duration,
    },
    /// An fpn binary run by [`crate::overlay`] answered something unexpected.
    #[error("overlay: {0}")]
    Overlay(String),
    /// A host name is not part of the lab.
    #[error("no host `{0}` in this lab")]
    UnknownHost(String),
    /// A host has no end on that link.
    #[error("host `{host}` has no end on link `{link}`")]
    UnknownEnd {
        /// The host.
        host: String,
        /// The link.
        link: String,
    },
    /// The operation needs the host's end of a link attached (or detached).
    #[error("host `{host}` is {state} link `{link}`")]
    AttachState {
        /// The host.
        host: String,
        /// The link.
        link: String,
        /// "not attached to" or "already attached to".
        state: &'static str,
    },
    /// The end has no address of the requested kind.
    #[error("host `{host}` has no address on link `{link}`")]
    NoAddress {
        /// The host.
        host: String,
        /// The link.
        link: String,
    },
    /// Entering a network namespace failed.
    #[error("cannot enter network namespace {netns}: {source}")]
    Setns {
        /// The namespace name.
        netns: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    // ---- lab state (CLI) ----
    /// No lab with this id is recorded.
    #[error("no lab `{0}` (see `fpn-lab list`)")]
    NoSuchLab(String),
    /// No lab is running.
    #[error("no lab is running (start one with `fpn-lab up FILE`)")]
    NoLab,
    /// Several labs run and the caller did not say which one.
    #[error("several labs are running ({0}); choose one with --lab ID")]
    AmbiguousLab(String),
    /// A lab id was asked for that is already in use or badly formed.
    #[error("lab id `{id}`: {reason}")]
    BadLabId {
        /// The id.
        id: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// A state file could not be read or written.
    #[error("lab state {path}: {source}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },

    // ---- captures ----
    /// A capture file is not a pcap file this reader understands.
    #[error("capture {path}: {reason}")]
    Pcap {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A packet handed to [`crate::inject`] is not what it must be.
    #[error("packet to inject: {0}")]
    BadPacket(&'static str),
}

impl Error {
    /// An [`Error::Io`] with a context line.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`Error::Topology`].
    pub(crate) fn topo(msg: impl Into<String>) -> Self {
        Error::Topology(msg.into())
    }
}
