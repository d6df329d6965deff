//! A gateway on the path (issue 11, part 2): DDEs of other GEs' flows that
//! cross this node, and the entries it keeps for them.
//!
//! A GEN or GEA forwards the traffic of GEs behind it (and toward them).
//! The kernel routes a forwarded DPRP DDE (UDP to port 7717, the first
//! bytes of a DDE) into the TUN instead of forwarding it (the real-address
//! plane's transit rule, `real_plane.rs`); the core hands it to DPRP's
//! transit machine, which appends this gateway's hop and sends it on from
//! this node's own address toward where its sender addressed it. The rest
//! of the negotiation comes to this node's address, hop by hop, like any
//! DPRP message on the IP path.
//!
//! What the gateway does with the flow then is the kernel's: a relayed or
//! plain flow is forwarded as it is (the ends protect it), a dropped one is
//! stopped by an element of the gateway table's `transit_drop` set
//! (`inet fpn_natf_<tun>`, [`Output::TransitDrop`]), so an end that ignores the refusal gets
//! nothing through either. The node sees none of the flow's packets, so
//! an entry lives one idle period from its negotiation; a flow that runs
//! longer is renegotiated by its ends (key rotation) or keeps being
//! forwarded (relay, pass) or dropped (the set element, renewed by each
//! attempt to negotiate it again).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fpn_proto::action::Action;
use fpn_proto::dprp::{self, Established};
use fpn_proto::flow::{FastMap, FlowId};
use fpn_proto::ge::GeId;
use tracing::{debug, info};

use super::{NodeCore, Output, Timer};

/// Most transit entries kept; beyond it the oldest is dropped first (its
/// drop rule with it: the ends' own entries still hold).
const MAX_TRANSIT: usize = 4096;
/// Most DPRP messages waiting for this node's source address toward their
/// next hop (the driver answers at once; these are a few at a time).
const MAX_HELD: usize = 64;
/// How long a transit entry is kept after its negotiation when the PIT's
/// idle timeout is shorter (the drop rule must outlast a retry).
const MIN_LIFETIME: Duration = Duration::from_secs(30);

/// One flow negotiated through this gateway.
#[derive(Debug, Clone, Copy)]
pub(super) struct TransitEntry {
    /// What this gateway does with it (relay, pass or drop).
    pub action: Action,
    /// The GE that initiated it.
    pub initiator: GeId,
    /// Until when it is listed (and, for a drop, enforced).
    pub until: Instant,
}

/// The gateway's transit state.
#[derive(Debug, Default)]
pub(super) struct Transit {
    pub entries: FastMap<FlowId, TransitEntry>,
    /// Transmits waiting for this node's source address toward their
    /// destination.
    held: Vec<dprp::Transmit>,
    pub ddes_in: u64,
    pub ddes_refused: u64,
    pub relayed: u64,
    pub passed: u64,
    pub dropped: u64,
}

impl NodeCore {
    /// Whether a TUN packet is a DDE (or a FOP, which a gateway refuses:
    /// the flow must be negotiated through it) this gateway intercepted on
    /// its way between two other GEs (only a gateway's kernel routes
    /// those here).
    pub(super) fn is_transit_dde(&self, flow: &FlowId, payload: &[u8]) -> bool {
        flow.protocol == 17
            && flow.dst_port == super::PROBE_PORT
            && self.dprp.credential().info.kind.is_gateway()
            && !self.is_own(flow.src)
            && !self.is_own(flow.dst)
            && dprp::msg::peek(payload).is_ok_and(|(t, _)| t.intercepted_in_transit())
    }

    /// A DDE crossing this gateway (`flow` its UDP five-tuple): DPRP's
    /// transit machine joins the negotiation and passes it on.
    pub(super) fn handle_transit_dde(&mut self, flow: &FlowId, payload: &[u8], now: Instant) {
        let from = SocketAddr::new(flow.src, flow.src_port);
        let to = SocketAddr::new(flow.dst, flow.dst_port);
        self.transit.ddes_in += 1;
        // The answers go back from this node's own address, hop by hop:
        // find it toward both neighbours before DPRP sends anything.
        for ip in [from.ip(), to.ip()] {
            if !self.paths.locals.contains_key(&ip) && self.paths.asked.insert(ip) {
                self.push_output(Output::FindLocalAddress(ip));
            }
        }
        let _span = tracing::debug_span!("transit", %flow).entered();
        if let Err(e) = self.dprp.handle_transit_datagram(from, to, payload, now) {
            self.transit.ddes_refused += 1;
            debug!(error = %e, "DDE in transit refused");
        }
        self.dprp_touched = true;
        self.drain(now);
    }

    /// A DPRP message to `t.dst` (port 7717) while this node does not know
    /// its own address toward it yet: kept until
    /// [`NodeCore::handle_local_address`] answers. True if taken.
    pub(super) fn hold_transit_transmit(&mut self, t: &dprp::Transmit) -> bool {
        let ip = t.dst.ip();
        if t.dst.port() != super::PROBE_PORT
            || self.paths.locals.contains_key(&ip)
            || !self.paths.asked.contains(&ip)
            || self.transit.held.len() >= MAX_HELD
        {
            return false;
        }
        self.transit.held.push(t.clone());
        true
    }

    /// Sends the held messages whose source address is known now.
    pub(super) fn release_transit_transmits(&mut self, known: IpAddr) {
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.transit.held)
            .into_iter()
            .partition(|t| t.dst.ip() == known);
        self.transit.held = wait;
        for t in ready {
            if !self.send_dprp_to(t.dst, &t.payload) {
                self.counters.no_route += 1;
            }
        }
    }

    /// This gateway's entry for a flow negotiated through it.
    pub(super) fn transit_established(&mut self, e: &Established, now: Instant) {
        let life = self.pit.config().idle_timeout.max(MIN_LIFETIME);
        let until = now + life;
        match e.action {
            Action::Relay => self.transit.relayed += 1,
            Action::Pass => self.transit.passed += 1,
            Action::Drop => self.transit.dropped += 1,
            // Not a gateway's action (DPRP gives a gateway no keys).
            Action::Protect(_) => return,
        }
        if !self.transit.entries.contains_key(&e.flow)
            && self.transit.entries.len() >= MAX_TRANSIT
            && let Some(oldest) = self
                .transit
                .entries
                .iter()
                .min_by_key(|(_, t)| t.until)
                .map(|(f, _)| *f)
        {
            self.end_transit(&oldest);
        }
        let before = self.transit.entries.insert(
            e.flow,
            TransitEntry {
                action: e.action,
                initiator: e.peer,
                until,
            },
        );
        if e.action == Action::Drop {
            self.push_output(Output::TransitDrop {
                flow: e.flow,
                drop: true,
            });
        } else if before.is_some_and(|b| b.action == Action::Drop) {
            self.push_output(Output::TransitDrop {
                flow: e.flow,
                drop: false,
            });
        }
        self.timers.schedule(until, Timer::TransitExpiry(e.flow));
        // A refusal is worth a line, as at the ends; a relayed flow is one
        // of many.
        if e.action == Action::Drop {
            info!(flow = %e.flow, initiator = %e.peer, "flow through this gateway refused by its rules");
        } else {
            debug!(flow = %e.flow, initiator = %e.peer, action = %e.action, "flow negotiated through this gateway");
        }
    }

    /// A transit entry's time is up (unless a newer negotiation renewed it).
    pub(super) fn transit_expired(&mut self, flow: FlowId, now: Instant) {
        if self
            .transit
            .entries
            .get(&flow)
            .is_some_and(|t| t.until <= now)
        {
            self.end_transit(&flow);
        }
    }

    fn end_transit(&mut self, flow: &FlowId) {
        if let Some(t) = self.transit.entries.remove(flow)
            && t.action == Action::Drop
        {
            self.push_output(Output::TransitDrop {
                flow: *flow,
                drop: false,
            });
        }
    }
}
