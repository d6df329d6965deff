//! The one error type of fpn-node.
//!
//! Each area of the daemon keeps its variants in its own section below; other
//! node modules (TUN, GMS session, DPRP, carriers) add theirs the same way.
//! Problems with a DNS message from a client are not errors of this type:
//! they become a response code sent back to that client.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can fail in fpn-node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- DNS stub (node/src/dns/) ---
    /// The DNS stub could not bind its UDP or TCP socket.
    #[error("DNS stub cannot bind {addr}: {source}")]
    DnsBind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A DNS name (the zone, or a name given to the name table) is invalid.
    #[error("invalid DNS name {name:?}: {reason}")]
    DnsName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The resolver configuration (normally /etc/resolv.conf) cannot be read.
    #[error("cannot read resolver configuration {path}: {source}")]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A DNS stub setting is out of range.
    #[error("invalid DNS stub setting {setting}: {reason}")]
    DnsConfig {
        /// The setting.
        setting: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A command of the systemd-resolved set-up could not be started.
    #[error("cannot run `{command}`: {source}")]
    SplitDnsSpawn {
        /// The command line.
        command: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A command of the systemd-resolved set-up failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    SplitDnsCommand {
        /// The command line.
        command: String,
        /// The exit status, as printed by the OS.
        status: String,
        /// The command's error output (trimmed, at most a few hundred bytes).
        stderr: String,
    },
}

/// The node's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
