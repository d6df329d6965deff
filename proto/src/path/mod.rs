//! Per-peer path selection: which carrier a peer's packets take.
//!
//! Native (raw IP packets, PCCOM trailer only) is preferred; QUIC carries
//! the same packets when native does not get through. [`probe`] is the wire
//! format of the authenticated probe and its answer (UDP, port 7717, next to
//! DPRP); [`PathMachine`] is the sans-IO state machine of one peer that sends
//! probes, watches answers and native data, and decides. Switching never
//! touches a flow: PCCOM packets are the same bytes on either carrier, so
//! the node only changes where it hands them.

mod config;
mod machine;
pub mod probe;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;

pub use config::{Force, PathConfig};
pub use machine::{MOVED_RETRY, MOVED_TRIES, PathMachine, TRIAL_COPIES};
pub use probe::{ProbeKey, ProbeKind, ProbeRepr, ProbeView, is_probe};

/// The most candidate addresses a peer may have.
pub const MAX_CANDIDATES: usize = 8;

/// The carrier in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Raw IP packets between the underlay addresses.
    Native,
    /// QUIC DATAGRAM frames on the connection between the two GEs.
    Quic,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Quic => "quic",
        })
    }
}

/// Why native cannot be used at all (reported by the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unavailable {
    /// The node lacks the rights to open a raw socket.
    NoRawSocket,
    /// The node could not install its interception rules.
    NoInterception,
    /// The host had no underlay address (of either family) when the node
    /// started: the receive path has nothing to take packets to.
    NoAddress,
}

/// Why the path is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Native answered.
    Answered,
    /// Native is being probed for the first time.
    Probing,
    /// This many consecutive probe rounds got no answer.
    ProbeFailed {
        /// Rounds lost in a row.
        lost: u32,
    },
    /// Probes got through but the peer took in none of the native data.
    DataNotDelivered {
        /// Consecutive failed checks.
        checks: u32,
    },
    /// The configuration forces the carrier.
    Forced,
    /// Native cannot work on this node.
    Unavailable(Unavailable),
    /// The peer has no underlay address to probe.
    NoCandidates,
    /// A retry's probe was answered; native copies of the data test the
    /// path while QUIC carries it.
    Trying,
    /// The peer's native path to this node failed (its notice said so).
    PeerFellBack,
    /// This node's addresses or routes changed (a move): native is being
    /// probed again from where the node is now.
    Moved,
    /// The peer's authenticated probes come from a new address (it moved):
    /// native is being probed there.
    PeerMoved,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Answered => f.write_str("native answered"),
            Self::Probing => f.write_str("probing native"),
            Self::ProbeFailed { lost } => write!(f, "native probe failed {lost}x"),
            Self::DataNotDelivered { checks } => write!(f, "native data not delivered {checks}x"),
            Self::Forced => f.write_str("forced"),
            Self::Unavailable(Unavailable::NoRawSocket) => f.write_str("no raw socket"),
            Self::Unavailable(Unavailable::NoInterception) => f.write_str("no interception"),
            Self::Unavailable(Unavailable::NoAddress) => f.write_str("no underlay address"),
            Self::NoCandidates => f.write_str("no native address"),
            Self::Trying => f.write_str("trying native"),
            Self::PeerFellBack => f.write_str("peer's native path failed"),
            Self::Moved => f.write_str("moved; probing native again"),
            Self::PeerMoved => f.write_str("peer moved; probing native there"),
        }
    }
}

/// What `status` and `ping` show for a peer: `native`, `native (forced)`,
/// `quic (native probe failed 3x)`, `quic (forced)`, `quic (no raw socket)`,
/// `native (forced; native probe failed 3x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStatus {
    /// The carrier in use.
    pub path: PathKind,
    /// Why.
    pub reason: Reason,
    /// The configured force.
    pub force: Force,
}

impl fmt::Display for PathStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path, self.reason, self.force) {
            (PathKind::Native, Reason::Answered, _) => f.write_str("native"),
            (path, Reason::Forced, _) => write!(f, "{path} (forced)"),
            (PathKind::Native, r, Force::Native) => write!(f, "native (forced; {r})"),
            (path, r, _) => write!(f, "{path} ({r})"),
        }
    }
}

/// Something the node should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEvent {
    /// Packets to this peer now take `to`.
    Switched {
        /// The previous carrier.
        from: PathKind,
        /// The new carrier.
        to: PathKind,
        /// Why.
        reason: Reason,
    },
    /// The reason changed without a switch (a forced native path failing or
    /// healing, QUIC after probing for a different reason).
    Reason {
        /// The carrier (unchanged).
        path: PathKind,
        /// The new reason.
        reason: Reason,
    },
}

/// Which timer [`PathMachine::poll_timeout`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// An outstanding probe reaches its timeout.
    ProbeLost,
    /// The next probe round (first probing, native keepalive or active probe).
    NextProbe,
    /// The next native retry after a fallback.
    Retry,
    /// An unacknowledged moved message is sent again (or given up).
    MovedRetry,
}

/// A probe or answer to send: one UDP datagram from port 7717 to `dst`.
/// The bytes live inline, so producing one allocates nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Underlay destination.
    pub dst: SocketAddr,
    /// Probe or answer.
    pub kind: ProbeKind,
    len: usize,
    buf: [u8; probe::MAX_LEN],
}

impl Transmit {
    /// The datagram.
    pub fn payload(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transmit")
            .field("dst", &self.dst)
            .field("kind", &self.kind)
            .field("len", &self.len)
            .finish()
    }
}

/// Counters for `status --json` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Probes sent.
    pub probes_sent: u64,
    /// Probes answered in time.
    pub probes_answered: u64,
    /// Probes that timed out.
    pub probes_lost: u64,
    /// Answers that came after their probe timed out (ignored).
    pub answers_late: u64,
    /// Authenticated answers from another address than the one probed.
    pub answers_from_other_address: u64,
    /// Answers whose data check failed.
    pub data_checks_failed: u64,
    /// The peer's probes this machine answered.
    pub answers_sent: u64,
    /// Carrier switches.
    pub switches: u64,
    /// Trials of native after a fallback.
    pub trials: u64,
    /// Trials that showed native does not carry data.
    pub trials_failed: u64,
    /// Fallback notices sent to the peer.
    pub notices_sent: u64,
    /// The peer's fallback notices taken.
    pub notices_received: u64,
    /// Replayed probes and answers, and answers to no outstanding probe.
    pub replays_refused: u64,
    /// Datagrams whose tag did not verify.
    pub bad_tags: u64,
    /// Datagrams naming another GE pair, or of the wrong kind.
    pub misdirected: u64,
    /// The peer's authenticated probes came from another address than
    /// the native path's: it moved, and the path was probed again.
    pub peer_moves: u64,
    /// Structurally malformed datagrams.
    pub malformed: u64,
    /// Datagrams not queued because the transmit queue was full.
    pub transmits_dropped: u64,
    /// Rounds sent at once because a silent peer's probe arrived.
    pub punches: u64,
    /// Moved messages (Binding Updates) sent, retransmits included.
    pub moved_sent: u64,
    /// Moved messages this node sent that the peer acknowledged.
    pub moved_acked: u64,
    /// The peer's authenticated, fresh moved messages taken.
    pub moved_received: u64,
}
