//! Carriers: how a frame (a DPRP message or a PCCOM-protected packet)
//! reaches a peer GE.
//!
//! The engine talks to a [`Carrier`]: it hands over frames addressed to a
//! [`PeerTarget`] and reads [`Inbound`] frames from the channel the carrier
//! was created with. A carrier connects on demand, never blocks the caller,
//! and reports per-peer counters through [`Carrier::peers`].
//!
//! [`QuicCarrier`] is the QUIC fallback of ARCHITECTURE.md: one mutually
//! authenticated QUIC connection per peer (certificates from the GMS CA),
//! each packet in one QUIC DATAGRAM frame. The native carrier (a later
//! issue) implements the same trait.
//!
//! What a carrier never does: look into payloads, log them, or accept a peer
//! whose certificate does not chain to the network's CA or was revoked.

pub mod candidates;
mod frame;
mod quic;
pub mod relay_choice;
pub mod relayed;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fpn_proto::ge::GeId;

use crate::error::Result;

pub use quic::{ALPN, Congestion, DEFAULT_PORT, Direct, QuicCarrier, QuicCarrierConfig};
pub use relayed::{PathCarrier, is_relay_from, relay_from};

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A DPRP message.
    Control,
    /// A PCCOM-protected (or plain, for a plain flow) IP packet.
    Data,
}

/// Which carrier moved a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CarrierKind {
    /// QUIC DATAGRAM frames on a connection between the two GEs.
    Quic,
    /// The packet as it is, on the IP path (later issue).
    Native,
    /// QUIC DATAGRAM frames through the relay (no direct QUIC connection
    /// could be set up). Chosen by [`PathCarrier`], not by the node core:
    /// the core hands QUIC frames over and the carrier decides.
    Relay,
}

impl CarrierKind {
    /// The lowercase name used in status output (`"quic"`, `"native"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Native => "native",
            Self::Relay => "relay",
        }
    }
}

impl std::fmt::Display for CarrierKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where to send: the peer's GE id and the underlay addresses to try, best first.
///
/// The GE id is what the peer's certificate must carry: a connection to an
/// address that answers with another GE's certificate fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTarget {
    /// The peer GE.
    pub ge: GeId,
    /// Its addresses (candidates), best first. Only read when a new
    /// connection is needed: local candidates are dialed first, the
    /// reflexive one a moment later ([`candidates`]).
    pub addrs: Vec<SocketAddr>,
    /// Which of `addrs` is the peer's reflexive address (where the GMS sees
    /// its carrier socket, i.e. the public side of its NAT); the others are
    /// the local addresses it reported.
    pub reflexive: Option<SocketAddr>,
}

/// A frame received from a peer.
#[derive(Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The sending GE, taken from its verified certificate.
    pub peer: GeId,
    /// The underlay address it came from.
    pub from: SocketAddr,
    /// What the frame carries.
    pub kind: FrameKind,
    /// The frame (without the carrier's own framing).
    pub payload: Bytes,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payload bytes are never printed, only their length.
        f.debug_struct("Inbound")
            .field("peer", &self.peer)
            .field("from", &self.from)
            .field("kind", &self.kind)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// The state of a carrier's link to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// No connection, none being set up.
    Idle,
    /// A connection is being set up; frames wait in a bounded queue.
    Connecting,
    /// Connected: frames go out at once.
    Up,
}

impl PeerState {
    /// The lowercase name used in status output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Connecting => "connecting",
            Self::Up => "up",
        }
    }
}

/// Counters and state of one peer, as [`Carrier::peers`] reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer GE.
    pub ge: GeId,
    /// The carrier.
    pub carrier: CarrierKind,
    /// The link's state.
    pub state: PeerState,
    /// The underlay address of the current connection (or the last one tried).
    pub addr: Option<SocketAddr>,
    /// Smoothed round-trip time of the current connection.
    pub rtt: Option<Duration>,
    /// The largest frame payload that fits one datagram right now.
    pub max_payload: Option<usize>,
    /// Who opened the current connection (the lower GE id's connection wins
    /// when both sides connect at once).
    pub initiator: Option<GeId>,
    /// Connections set up because the GMS relayed the peer's connect-now
    /// (hole punching) so far.
    pub punches: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Frames dropped because they did not fit a datagram.
    pub drops_too_large: u64,
    /// Frames dropped because the queue was full while connecting, the
    /// connection could not be set up, or it was lost with frames queued.
    pub drops_unreachable: u64,
    /// Received frames dropped as malformed (unknown kind, empty, oversized control).
    pub drops_malformed: u64,
    /// Connections established with this peer so far (both directions).
    pub connections: u64,
    /// Background attempts at direct QUIC started while the peer was
    /// relayed (0 for a peer never relayed).
    pub direct_retries: u64,
    /// Why frames go through the relay (set when `carrier` is
    /// [`CarrierKind::Relay`]).
    pub why: Option<String>,
}

impl PeerStats {
    /// All dropped frames.
    pub fn drops(&self) -> u64 {
        self.drops_too_large + self.drops_unreachable + self.drops_malformed
    }
}

/// A way to move frames between this GE and its peers.
pub trait Carrier: Send + Sync {
    /// Which carrier this is.
    fn kind(&self) -> CarrierKind;

    /// Sends one frame to `to`. Never blocks: when no connection is up, one is
    /// started and the frame waits in a bounded per-peer queue.
    ///
    /// An `Err` means the frame was dropped, and counted in the peer's
    /// [`PeerStats`]: [`Error::CarrierTooLarge`] (tells the largest payload
    /// that fits, so the caller may answer with a "packet too big"),
    /// [`Error::CarrierDropped`], [`Error::CarrierRefused`] or
    /// [`Error::CarrierClosed`].
    ///
    /// [`Error::CarrierTooLarge`]: crate::error::Error::CarrierTooLarge
    /// [`Error::CarrierDropped`]: crate::error::Error::CarrierDropped
    /// [`Error::CarrierRefused`]: crate::error::Error::CarrierRefused
    /// [`Error::CarrierClosed`]: crate::error::Error::CarrierClosed
    fn send(&self, to: &PeerTarget, kind: FrameKind, payload: &[u8]) -> Result<()>;

    /// State and counters of every peer the carrier knows, ordered by GE id.
    fn peers(&self) -> Vec<PeerStats>;

    /// This host's addresses changed (it moved; `local`: its addresses
    /// now, empty when unknown): connections that cannot follow by
    /// themselves are set up again with the next frame.
    fn network_changed(&self, local: &[std::net::IpAddr]) {
        let _ = local;
    }
}
