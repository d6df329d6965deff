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

    // --- daemon (config, state directory, GMS, TUN, engine, control) ---
    /// The configuration file or a command-line value is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another daemon already runs on this state directory.
    #[error("another fpn-node already runs on {0} (lock held)")]
    AlreadyRunning(PathBuf),
    /// No daemon answers on the state directory's control socket (the
    /// directory holds an identity: it is the daemon that is missing).
    #[error(
        "no fpn-node daemon runs on {path} ({source}); start it with `sudo fpn-node up --state {}`",
        state.display()
    )]
    NotRunning {
        /// The control socket.
        path: PathBuf,
        /// The state directory (for the command that fixes it).
        state: PathBuf,
        /// Why connecting failed.
        source: std::io::Error,
    },
    /// The control socket exists but this user may not open it (the
    /// daemon runs as root and its state directory is 0700).
    #[error(
        "permission denied on {path}: the node's state belongs to the user that runs it; run this command with sudo"
    )]
    ControlDenied {
        /// The control socket.
        path: PathBuf,
    },
    /// The state directory has no identity: run `fpn-node enroll` first.
    #[error(
        "this node is not enrolled: no identity in {path} ({reason}); enroll it with `fpn-node enroll --token-file FILE --state {path}` (the token comes from `fpn-gms token create NAME` on the GMS), or give the --state DIR it was enrolled with"
    )]
    NotEnrolled {
        /// The state directory.
        path: PathBuf,
        /// What was missing or wrong.
        reason: String,
    },
    /// `up` lacks the privilege to create the TUN device and routes.
    #[error(
        "`fpn-node up` needs root or CAP_NET_ADMIN (it creates the TUN device, routes and firewall rules); run `sudo fpn-node up --state {}`",
        state.display()
    )]
    NeedsPrivilege {
        /// The state directory (for the command that fixes it).
        state: PathBuf,
    },
    /// The GMS refused the enrollment; `fix` says what to do.
    #[error("enrollment refused by the GMS: {reason}; {fix}")]
    EnrollRefused {
        /// The refusal code.
        code: fpn_gms_client::wire::RefusalCode,
        /// The GMS's explanation.
        reason: String,
        /// The command or step that fixes it.
        fix: &'static str,
    },
    /// The GMS named in the token did not answer.
    #[error(
        "no answer from the GMS at {addr} ({source}); is `fpn-gms serve` running there, and is UDP port {port} open in its firewall?",
        port = addr.rsplit_once(':').map_or("", |(_, p)| p)
    )]
    GmsUnreachable {
        /// `host:port` from the token.
        addr: String,
        /// What the client saw.
        source: fpn_gms_client::Error,
    },
    /// The `/metrics` endpoint could not listen on `[metrics] listen`.
    #[error("{0}")]
    Metrics(fpn_gms_client::Error),
    /// The GMS client library failed.
    #[error("GMS: {0}")]
    Gms(#[from] fpn_gms_client::Error),
    /// A protocol machine refused something.
    #[error("protocol: {0}")]
    Proto(#[from] fpn_proto::Error),
    /// The TUN device could not be set up.
    #[error("TUN device {name}: {reason}")]
    Tun {
        /// The interface name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// A control-socket request or answer was malformed or refused.
    #[error("control: {0}")]
    Control(String),
    /// The GMS ended this node for good (revoked or refused).
    #[error("this node was revoked or refused by the GMS: {0}")]
    Terminated(String),
    // --- carriers (node/src/carrier/) ---
    /// The carrier could not open its UDP socket.
    #[error("carrier cannot bind {addr}: {source}")]
    CarrierBind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The node's identity cannot be used for the carrier's TLS (bad
    /// certificate, key or CA, or no GE id in the certificate).
    #[error("carrier TLS set-up: {0}")]
    CarrierTls(String),
    /// A carrier setting is out of range.
    #[error("invalid carrier setting {setting}: {reason}")]
    CarrierConfig {
        /// The setting.
        setting: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A frame is larger than the peer's connection can carry in one
    /// datagram; it was dropped (and counted). `max` is the largest payload
    /// that fits right now (it grows when path-MTU discovery succeeds).
    #[error("frame of {size} bytes for {peer} does not fit a datagram (max {max})")]
    CarrierTooLarge {
        /// The peer.
        peer: fpn_proto::ge::GeId,
        /// The payload length.
        size: usize,
        /// The largest payload that fits.
        max: usize,
    },
    /// The frame was dropped (and counted): the peer's queue is full while
    /// its connection is being set up, or a recent attempt failed and the
    /// carrier waits before the next one.
    #[error("frame for {peer} dropped: {reason}")]
    CarrierDropped {
        /// The peer.
        peer: fpn_proto::ge::GeId,
        /// Why.
        reason: &'static str,
    },
    /// The peer is revoked (or is this node itself): nothing is sent to it.
    #[error("{peer} is refused by the carrier")]
    CarrierRefused {
        /// The peer.
        peer: fpn_proto::ge::GeId,
    },
    /// The carrier is closed.
    #[error("the carrier is closed")]
    CarrierClosed,

    // --- native carrier I/O (node/src/native/) ---
    /// A native I/O setting is out of range.
    #[error("invalid native I/O setting {setting}: {reason}")]
    NativeConfig {
        /// The setting.
        setting: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A socket or ring operation of the native I/O layer failed.
    #[error("native I/O: {what}: {source}")]
    NativeSocket {
        /// What was being done.
        what: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The `nft` (or, for the compat NFQUEUE rule, `iptables`) binary could
    /// not be run.
    #[error("cannot run nft/iptables: {source}")]
    NativeNftSpawn {
        /// What the OS said.
        source: std::io::Error,
    },
    /// The network watcher (rtnetlink notifications) could not start.
    #[error("network watcher: {0}")]
    NetWatch(String),
    /// `ip` refused (or could not run) a change of the real-address
    /// plane's policy routing (`crate::real_plane`).
    #[error("real-address plane: `ip {command}` failed: {stderr}")]
    RealPlane {
        /// The arguments given to `ip`.
        command: String,
        /// Its error output, or why it did not run.
        stderr: String,
    },
    /// nftables (or iptables) refused a change to the node's table.
    #[error("nftables refused the change ({status}): {stderr}")]
    NativeNft {
        /// The exit status, as printed by the OS.
        status: String,
        /// The tool's error output (trimmed, at most 400 bytes).
        stderr: String,
    },
    /// The kernel refused a netlink change of the node's nft sets (the
    /// whole batch was undone), or gave no answer.
    #[error("nftables refused to {op} elements of set {set:?}: {source}")]
    NativeNftNetlink {
        /// `add` or `delete` (or `batch` when the batch itself was refused).
        op: &'static str,
        /// The set the refused message named.
        set: String,
        /// The kernel's errno (ENOENT: no such table or set).
        source: std::io::Error,
    },
    /// The native I/O was closed: its table is gone, flows cannot change.
    #[error("the native I/O is closed")]
    NativeClosed,
    /// A packet handed to the raw sender (or the packet builder) is not a
    /// sendable IPv4 or IPv6 packet; nothing of its batch was sent.
    #[error("native packet refused: {reason}")]
    NativePacket {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An IPv6 packet for the raw sender on a host without IPv6 (its raw
    /// IPv6 socket could not be opened): it was not sent.
    #[error("native packet refused: this host has no IPv6")]
    NativeNoIpv6,
    /// A flow handed to the native flow set is not one its sets can hold
    /// (addresses of two families, or a protocol of the other family).
    #[error("native flow refused: {reason}")]
    NativeFlow {
        /// What is wrong with it.
        reason: &'static str,
    },

    // --- TUN device with offloads (node/src/tun/) ---
    /// A system call on the TUN device (open, ioctl, read, write) failed.
    #[error("TUN {name}: {op}: {source}")]
    TunIo {
        /// The interface name.
        name: String,
        /// The operation, e.g. "TUNSETIFF".
        op: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A TUN setting is out of range.
    #[error("invalid TUN setting {setting}: {reason}")]
    TunConfig {
        /// The setting.
        setting: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
}

/// The node's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
