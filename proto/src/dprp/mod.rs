//! DPRP, the per-flow negotiation: codec and sans-IO state machines.
//!
//! When a GE sees the first packet of a flow without a PIT entry it holds the
//! packet and runs DPRP with the GEs on the flow's path:
//!
//! ```text
//! initiator end          gateway(s)              responder end
//!   DDE  ------------------> +hop ------------------>        (UDP to flow.dst, port 7717)
//!        <----------------- +hop, sig <----------- RGI       (hop by hop back)
//!   MPIT ------------------> verify  -------------->
//!        <----------------- verify  <------------- CDN       entries final, packets released
//! ```
//!
//! Each negotiation runs an ephemeral X25519 exchange; traffic keys are
//! `HKDF(GK, X25519 shared, transcript)` ([`keys::derive_flow_keys`]). The
//! ends prove group-key possession with a MAC over the transcript and
//! authenticate each other with a pairwise key from their certified node keys;
//! gateways sign. docs/PROTOCOL.md is the specification; [`transcript`] lists
//! the hashes.
//!
//! [`Endpoint`] is the one object a node drives, the quinn-proto way: feed
//! [`Endpoint::handle_packet`] (first packet of a flow),
//! [`Endpoint::handle_datagram`] (a DPRP message from the underlay) and
//! [`Endpoint::handle_timeout`]; after each call drain
//! [`Endpoint::poll_transmit`] and [`Endpoint::poll_event`] and re-arm one
//! timer at [`Endpoint::poll_timeout`]. It never does I/O, never reads a clock
//! (`now` is an argument, wall-clock seconds an input); its randomness
//! source is chosen by the constructor ([`Entropy`]): the OS in a node, a
//! seed in the simulators.
//!
//! [`keys::derive_flow_keys`]: crate::keys::derive_flow_keys

mod budget;
mod config;
mod cookie;
mod endpoint;
mod entropy;
mod epoch;
mod gateway;
mod initiator;
pub mod msg;
mod natf;
#[cfg(test)]
mod natf_tests;
pub mod option;
mod peers;
mod responder;
pub mod transcript;

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

pub use budget::Rate;
pub use config::{Config, DEFAULT_NATF_PORTS, Keyring, Limits, Prefix, Timing};
pub use endpoint::{
    DURATION_BUCKETS_US, DropCause, DurationHistogram, Endpoint, FailCounts, Occupancy, Stats,
    Verdict,
};
pub use entropy::Entropy;
pub use epoch::{EpochId, FastOpen, MAX_OPENINGS};
pub use msg::{EvictedFlow, Message, MessageType, NegotiationId, RefuseCode};
pub use natf::{FrontedHost, NatfMapping, Vin};
pub use option::DprpOption;
pub use peers::CacheStats;

use crate::Error;
use crate::action::Action;
use crate::flow::FlowId;
use crate::ge::{GeId, GeInfo};
use crate::keys::{FlowKeys, KeyVersion};

/// The UDP port DPRP messages are sent to (a DDE goes to the flow's destination
/// address on this port, so gateways on the path can intercept it).
pub const DPRP_PORT: u16 = 7717;

/// A datagram to send.
#[derive(Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Underlay destination (address and port).
    pub dst: SocketAddr,
    /// The encoded DPRP message.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transmit")
            .field("dst", &self.dst)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// The part this GE played in a negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// Saw the first packet and sent the DDE.
    Initiator,
    /// The end GE of the flow's destination; answered with RGI.
    Responder,
    /// A gateway between the ends.
    Gateway,
}

/// A final PIT entry for a flow, produced by a finished negotiation.
#[derive(Debug, Clone)]
pub struct Established {
    /// The negotiation that produced it (a responder's CDN carries the same
    /// id: a node that delays its CDN until its data path is ready finds
    /// the CDN by it).
    pub negotiation: NegotiationId,
    /// The flow, in the direction of its first packet (the initiator's view).
    /// The reverse direction belongs to the same entry.
    pub flow: FlowId,
    /// This GE's part.
    pub position: Position,
    /// What this GE does with the flow's packets.
    pub action: Action,
    /// The GE at the other end (for a gateway: the initiator end).
    pub peer: GeId,
    /// The group key version the traffic keys come from (protected flows only).
    pub key_version: Option<KeyVersion>,
    /// The traffic keys, from this GE's view (`tx` = what this GE sends);
    /// present exactly when `action` is `Protect`.
    pub keys: Option<FlowKeys>,
    /// Options the other end sent (for a gateway: the initiator's).
    pub peer_options: Vec<DprpOption>,
    /// The serial of the credential the other end negotiated with (not
    /// known to a gateway): the endpoint checks it against revocations
    /// once more when the negotiation completes.
    pub peer_serial: Option<u64>,
    /// NAT-f (the ends only): the host's LAN address and the port the
    /// gateway reserved for the flow. The initiator has it from the
    /// gateway's authenticated RGI and installs its VAT entry with it; the
    /// gateway it is its own reservation, to install the mapping with and
    /// to free with [`Endpoint::release_natf_port`] when the flow goes.
    pub natf: Option<NatfMapping>,
    /// When this GE sent the DDE (initiator only): the endpoint measures
    /// the negotiation's duration from it ([`Stats::durations`]).
    pub started: Option<Instant>,
    /// Set when the flow was opened on a pair epoch, without a
    /// negotiation (docs/PROTOCOL.md, "Fast open").
    pub fast: Option<FastOpen>,
    /// A fast-open responder: the flow's first packet, sealed under its
    /// keys, that came inside the FOP (docs/PROTOCOL.md, "The first
    /// packet in its FOP"). The node opens it like a data frame from
    /// `peer`, before any packet parked for the flow.
    pub first: Option<msg::FirstPacket>,
    /// The pair epoch this negotiation leaves the endpoint (taken out
    /// before the event leaves it).
    pub(crate) epoch: Option<Box<epoch::EpochSeed>>,
}

/// Why a negotiation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// No valid answer before the negotiation timeout.
    Timeout,
    /// The decision rules drop the flow at this GE (the first CL GE on the path).
    Dropped {
        /// The dropping GE.
        by: GeId,
    },
    /// A GE on the path refused, with an authenticated NAK or CDN.
    Refused {
        /// The refusing GE.
        by: GeId,
        /// Its reason.
        code: RefuseCode,
    },
    /// The peer answered authentically, but its answer failed a check here
    /// (a bad group proof, a key version this GE lacks, an unexpected peer).
    Rejected(Error),
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timeout"),
            Self::Dropped { by } => write!(f, "dropped by {by} (closed, no shared group)"),
            Self::Refused { by, code } => write!(f, "refused by {by}: {code:?}"),
            Self::Rejected(e) => write!(f, "rejected: {e}"),
        }
    }
}

/// What an [`Endpoint`] reports.
#[derive(Clone)]
pub enum Event {
    /// A negotiation this GE took part in finished: install the entry.
    Established(Established),
    /// Held packets of a flow, to be processed under its new entry, in order.
    Release {
        /// The flow the packets belong to (as passed to `handle_packet`).
        flow: FlowId,
        /// The packets.
        packets: Vec<Vec<u8>>,
    },
    /// The other end confirmed (FOK) a flow this GE fast-opened: it holds
    /// the flow's entry, so the flow's packets may leave on any carrier.
    FastConfirmed {
        /// The flow (as in its `Established`).
        flow: FlowId,
    },
    /// The opener of a flow this GE installed from its FOP sent the FOP
    /// again marked steered: it steers the flow's inbound native packets
    /// now, so this end may answer natively (docs/PROTOCOL.md, "The first
    /// packet in its FOP"). The FOP's tag covers the flow and its opening,
    /// not the mark: a forged mark can only lose this end's next answers,
    /// which an attacker on the path can drop anyway.
    FastSteered {
        /// The flow (as in its `Established`).
        flow: FlowId,
        /// The opener (the pair epoch's peer).
        peer: GeId,
        /// The fast open (its id, the entry's opening): an entry of the
        /// same flow opened since is not this notice's.
        opening: NegotiationId,
    },
    /// A flow this GE fast-opened was refused on the way (a gateway on the
    /// path, the peer lost the epoch) or never confirmed: drop its entry.
    /// The endpoint has started a negotiation for it, so its next packets
    /// are held for that, as for any new flow.
    FastOpenFailed {
        /// The flow.
        flow: FlowId,
        /// Why.
        reason: FailReason,
    },
    /// A negotiation this GE started failed; its held packets were dropped
    /// and the flow is a negative entry until it expires.
    Failed {
        /// The flow.
        flow: FlowId,
        /// Why.
        reason: FailReason,
        /// How many held packets were dropped.
        dropped_packets: usize,
    },
    /// A peer evicted these flows from its full PIT (an authentic EVICT):
    /// drop the entries of these flows that `peer` installed with this GE
    /// under the same opening, so the next packet of such a flow opens it
    /// again instead of meeting an end without keys.
    PeerEvicted {
        /// The GE that evicted them (proved by the pair epoch's tag).
        peer: GeId,
        /// The flows, each with the opening its entry was installed by.
        flows: Vec<EvictedFlow>,
    },
}

impl fmt::Debug for Event {
    // Never the packets' bytes: counts and lengths only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Established(e) => f.debug_tuple("Established").field(e).finish(),
            Self::Release { flow, packets } => f
                .debug_struct("Release")
                .field("flow", flow)
                .field("packets", &packets.len())
                .field("bytes", &packets.iter().map(Vec::len).sum::<usize>())
                .finish(),
            Self::FastConfirmed { flow } => {
                f.debug_struct("FastConfirmed").field("flow", flow).finish()
            }
            Self::FastSteered {
                flow,
                peer,
                opening,
            } => f
                .debug_struct("FastSteered")
                .field("flow", flow)
                .field("peer", peer)
                .field("opening", opening)
                .finish(),
            Self::FastOpenFailed { flow, reason } => f
                .debug_struct("FastOpenFailed")
                .field("flow", flow)
                .field("reason", reason)
                .finish(),
            Self::Failed {
                flow,
                reason,
                dropped_packets,
            } => f
                .debug_struct("Failed")
                .field("flow", flow)
                .field("reason", reason)
                .field("dropped_packets", dropped_packets)
                .finish(),
            Self::PeerEvicted { peer, flows } => f
                .debug_struct("PeerEvicted")
                .field("peer", peer)
                .field("flows", &flows.len())
                .finish(),
        }
    }
}

/// The timers of an endpoint (for traces: `poll_timeout` names the next one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// Resend a DDE or MPIT that got no answer.
    Retransmit,
    /// A negotiation's overall deadline.
    Deadline,
    /// Forget a finished negotiation kept for retransmissions.
    Linger,
    /// A negative entry expires.
    NegativeExpiry,
    /// A pair epoch ends (fast open).
    EpochExpiry,
}

/// A GE's info restricted to the groups it holds a key for (its claims):
/// the info the decision rules use for the ends.
pub(crate) fn effective(info: &GeInfo, claims: &[msg::Claim]) -> GeInfo {
    let mut out = info.clone();
    out.groups
        .retain(|g| claims.binary_search_by(|c| c.group.cmp(g)).is_ok());
    out
}
