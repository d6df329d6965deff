//! When a new flow may leave natively: both ends' inbound steering (the
//! driver's nft set element and ring registration) must be in place, or
//! the first native packets reach the peer's kernel instead of its node (a
//! lost SYN-ACK, a RST: docs/DESIGN-NOTES.md notes 17 and 33).
//!
//! - Each new translation gets a [`Gate`]: closed until the driver confirms
//!   this node's steering ([`NodeCore::handle_native_flows_ready`]) *and*
//!   the peer's is known to be in place, or [`NATIVE_GRACE`] passed.
//! - **Responder**: its CDN waits until its own steering is confirmed, then
//!   goes the way the MPIT came (the IP path when the peer's path is
//!   native). A CDN that could not wait for that (no translation, or
//!   [`NATIVE_READY_TIMEOUT`] passed: counted as `native_ready_timeouts`)
//!   goes over QUIC. The responder learns the initiator's steering is in
//!   place from the flow's first accepted native packet.
//! - **Initiator**: a CDN that came on the IP path says the responder's
//!   steering is in place, so the held first packets wait (at most
//!   [`NATIVE_READY_TIMEOUT`]) for this node's own confirmation and then
//!   leave natively; a CDN over QUIC leaves the flow on QUIC for
//!   [`NATIVE_GRACE`], as before. The initiator asks for its steering when
//!   the negotiation starts (its inbound five-tuple is known then), so the
//!   driver's `nft` run overlaps the exchange; a flow that ends up without
//!   translation gives it back.
//!
//! - **Fast open** (note 64): the FOK plays the CDN's part. A UDP flow's
//!   FOP leaves at once with the first packet inside (note 71), not marked
//!   steered: the peer holds its answers meanwhile (note 76, at most
//!   [`NOTICE_WAIT`], then QUIC). Once this node steers the flow it sends
//!   the same FOP again, marked steered (note 75): the peer may then
//!   answer natively at once, before its own steering
//!   ([`Gate::early`]), since this node's next packets still wait for the
//!   FOK; for the same reason this node takes nothing from those early
//!   answers ([`Gate::peer_early`]). A fast open's first FOP (either
//!   path, with or without its packet) leaves at the end of the drain
//!   round, after the eviction notices of the flows the new one pushed out
//!   of a full table (notes 75 and 77).
//!
//! So between two nodes on the native path no packet of a new flow rides
//! QUIC, and the grace is only the fallback.

use std::time::{Duration, Instant};

use fpn_proto::dprp::{self, MessageType, NegotiationId, Position};
use fpn_proto::flow::{FastMap, FlowId};
use fpn_proto::ge::GeId;
use fpn_proto::pccom::TRAILER_LEN;
use fpn_proto::pit::{Disposition, Origin};
use tracing::{debug, trace};

use super::NodeCore;
use super::paths::NATIVE_GRACE;
use super::timers::Timer;
use crate::carrier::FrameKind;

/// How long a responder's CDN, or an initiator's released first packets,
/// wait for this node's inbound steering of the flow. The `nft`
/// transaction takes 2-16 ms (docs/DESIGN-NOTES.md note 15); past this the
/// flow completes anyway and starts on QUIC.
pub const NATIVE_READY_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a fast-opened flow's first packets wait for the peer's FOK
/// (a round trip and the peer's steering) before they take QUIC.
pub const FAST_READY_TIMEOUT: Duration = Duration::from_millis(200);
/// Most released packets of one flow waiting for its steering (DPRP's hold
/// queue is smaller).
const MAX_WAITING_PACKETS: usize = 64;
/// Most flows waiting for their steering at once; past it a flow completes
/// at once (on QUIC).
const MAX_WAITING_FLOWS: usize = 4096;
/// How long a responder holds a fast-opened UDP flow's answers for the
/// opener's steered notice (note 76) before they take QUIC. The notice
/// follows the opener's steering, one `nft` transaction (note 15: 2-16 ms
/// when the nft thread is busy, well under one when it is not).
pub const NOTICE_WAIT: Duration = Duration::from_millis(20);
/// Most answers held for steered notices at once, over all flows (about
/// 6 MB): past it a flow's answers leave at once, over QUIC.
const MAX_HELD_ANSWERS: usize = 4096;
/// The longest FOP with a first packet inside: one QUIC datagram or one
/// unfragmented packet, like an eviction notice.
pub(super) const MAX_FIRST_FOP: usize = 1100;

/// What the steering needs of a finished negotiation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Done {
    pub negotiation: NegotiationId,
    pub flow: FlowId,
    pub position: Position,
    pub peer: GeId,
    /// Fast-opened (no negotiation): the peer learns of the flow from the
    /// FOP, so its steering is known to be in place only at its FOK.
    pub fast: bool,
}

/// Whether a new translation's packets may leave natively yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gate {
    /// The driver confirmed this node's inbound steering.
    pub ready: bool,
    /// The peer's inbound steering is known to be in place.
    pub peer_ready: bool,
    /// From then on only `ready` is needed (the fallback grace).
    pub until: Instant,
    /// The peer marked the flow's FOP steered (a node before note 75: its
    /// FOP with the first packet; since: the FOP sent again, the steered
    /// notice), which it does only once it steers the flow: this end may
    /// send natively before its own steering is confirmed, since the peer
    /// sends natively only after this end's FOK, which waits for that
    /// (notes 71 and 75).
    pub early: bool,
    /// This end sent the steered notice: the peer may answer natively
    /// before its own steering, so its native packets prove nothing of
    /// it; only its FOK on the IP path (or the grace) does.
    pub peer_early: bool,
}

/// What waits for a flow's steering.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    /// The peer the flow was negotiated with.
    peer: Option<GeId>,
    /// The PIT key of the flow (the initiator's view).
    pit_key: Option<FlowId>,
    /// The responder's CDN (and its retransmissions).
    cdns: Vec<dprp::Transmit>,
    /// Its negotiation, while the CDN waits.
    negotiation: Option<NegotiationId>,
    /// The initiator's released first packets, plain.
    packets: Vec<Vec<u8>>,
    /// A fast-opened flow: released only once the peer's FOK (on the IP
    /// path) says it steers the flow too, not at this node's steering alone.
    needs_peer: bool,
    /// Its FOP as it left (and the fast open's id), with the first packet
    /// inside and not marked steered: sent again marked steered once this
    /// node steers the flow (note 75).
    notice: Option<(NegotiationId, dprp::Transmit)>,
    /// The first packet left inside the FOP: `packets` are those behind it.
    first_sent: bool,
}

/// A fast-opened UDP flow's answers at its responder, held until the
/// opener's steered notice says they may go natively (note 76).
#[derive(Debug)]
struct Answers {
    /// The flow's PIT key.
    pit_key: FlowId,
    /// The answers, plain, in order.
    packets: Vec<Vec<u8>>,
    /// When they stop waiting.
    until: Instant,
}

/// How a responder's CDN leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CdnRoute {
    /// Held until the overlay flow's steering is confirmed.
    Hold(FlowId),
    /// Over QUIC: this node does not steer the flow natively (yet).
    Quic(GeId),
}

/// The steering state of the core.
#[derive(Debug, Default)]
pub(super) struct Steering {
    /// Overlay flows with a new translation.
    pub gates: FastMap<FlowId, Gate>,
    /// Overlay flows whose CDN or first packets wait for steering.
    waiting: FastMap<FlowId, Waiting>,
    /// Held CDNs by negotiation (responder).
    cdn_holds: FastMap<NegotiationId, FlowId>,
    /// This drain round's responder decisions (cleared after each round).
    cdn_routes: FastMap<NegotiationId, CdnRoute>,
    /// This drain round's CDN transmits, routed once the round's events ran.
    staged: Vec<dprp::Transmit>,
    /// Overlay flows this node (as initiator) steers since their
    /// negotiation started -> (inbound wire flow, confirmed).
    presteered: FastMap<FlowId, (FlowId, bool)>,
    /// The same by inbound wire flow.
    presteer_wire: FastMap<FlowId, FlowId>,
    /// This drain round's first sendings of fast opens' FOPs, by PIT key:
    /// the round's release of the flow's first packet may put it inside.
    staged_fops: Vec<(FlowId, NegotiationId, dprp::Transmit)>,
    /// The round's first FOPs of fast opens, with or without their first
    /// packet inside, on either path, sent at the end of the drain round:
    /// after the eviction notices of the flows the new ones pushed out of
    /// a full table, so the peer's table has room when the FOP comes (else
    /// it evicts flows of its own, which this end may still use; notes 75
    /// and 77).
    late_fops: Vec<dprp::Transmit>,
    /// First packets (PIT key, plain) that leave beside their FOP, not in
    /// it: after [`Steering::late_fops`], so they follow their FOP.
    late_firsts: Vec<(FlowId, Vec<u8>)>,
    /// Overlay flows whose FOP came on the IP path with the first packet
    /// inside and not marked steered: their answers wait for the steered
    /// notice (or [`NOTICE_WAIT`]).
    answers: FastMap<FlowId, Answers>,
    /// The packets in `answers`, over all flows.
    held_answers: usize,
    /// The DPRP message being handled came on the IP path.
    pub via_native: bool,
}

impl NodeCore {
    /// The driver put the inbound steering of these wire five-tuples (as
    /// received, from [`Output::NativeFlowAdded`]) in place: native packets
    /// of them now reach the node. Releases what waited for it. Then drain
    /// [`NodeCore::poll_output`].
    ///
    /// [`Output::NativeFlowAdded`]: super::Output::NativeFlowAdded
    pub fn handle_native_flows_ready(&mut self, inbound: &[FlowId], now: Instant) {
        for w in inbound {
            let Some(t) = self.xlat.by_inbound_wire(w).copied() else {
                if let Some(o) = self.steering.presteer_wire.get(w)
                    && let Some(p) = self.steering.presteered.get_mut(o)
                {
                    p.1 = true;
                }
                continue;
            };
            let overlay = t.overlay;
            let mut peer_ready = false;
            if let Some(g) = self.steering.gates.get_mut(&overlay) {
                g.ready = true;
                peer_ready = g.peer_ready;
            }
            self.send_steered_notice(overlay);
            let fast_waits = self
                .steering
                .waiting
                .get(&overlay)
                .is_some_and(|w| w.needs_peer && !peer_ready);
            if !fast_waits && let Some(wait) = self.steering.waiting.remove(&overlay) {
                trace!(flow = %overlay, "native steering ready");
                self.finish_waiting(overlay, wait, true, now);
            }
        }
        // The whole drain: evictions send notices, which leave with its
        // transmits.
        self.drain(now);
    }

    /// Whether the packets of overlay flow `overlay` may leave natively now
    /// (no gate, or an open one: the gate is then forgotten).
    pub(super) fn gate_open(&mut self, overlay: &FlowId, now: Instant) -> bool {
        if self.steering.gates.is_empty() {
            return true;
        }
        match self.steering.gates.get(overlay) {
            None => true,
            Some(g) if (g.ready || g.early) && g.peer_ready || g.ready && now >= g.until => {
                self.steering.gates.remove(overlay);
                true
            }
            Some(_) => false,
        }
    }

    /// A new translation: its packets wait for both ends' steering.
    pub(super) fn close_gate(&mut self, overlay: FlowId, now: Instant) {
        self.steering.gates.insert(
            overlay,
            Gate {
                ready: false,
                peer_ready: false,
                until: now + NATIVE_GRACE,
                early: false,
                peer_early: false,
            },
        );
    }

    /// An accepted native packet of `overlay`: the peer sends it natively
    /// only once its own steering is in place.
    pub(super) fn peer_steering_seen(&mut self, overlay: &FlowId) {
        // Except where the peer got the first packet inside the FOP: it
        // answers natively before its own steering is in place
        // (`Gate::early`), so its packets say nothing of it.
        if let Some(g) = self.steering.gates.get_mut(overlay)
            && !g.peer_early
        {
            g.peer_ready = true;
        }
    }

    /// The peer marked the FOP of `overlay` steered (the first packet's,
    /// or the steered notice): it steers the flow already
    /// ([`Gate::early`]).
    pub(super) fn first_came_inside_fop(&mut self, overlay: &FlowId) {
        if let Some(g) = self.steering.gates.get_mut(overlay) {
            g.peer_ready = true;
            g.early = true;
        }
    }

    /// The peer's FOK for fast-opened `overlay` came, on the IP path
    /// (`native`: the peer steers the flow; what waited goes natively once
    /// this node steers it too, at once if it does already) or over QUIC
    /// (the peer does not take the flow natively: what waited goes on QUIC
    /// now rather than at the timeout).
    pub(super) fn fast_open_confirmed(&mut self, overlay: FlowId, native: bool, now: Instant) {
        let ready = match self.steering.gates.get_mut(&overlay) {
            Some(g) if native => {
                g.peer_ready = true;
                g.ready
            }
            _ => true,
        };
        if ready && let Some(wait) = self.steering.waiting.remove(&overlay) {
            trace!(flow = %overlay, native, "fast open confirmed");
            self.finish_waiting(overlay, wait, native, now);
        }
    }

    /// A fast open failed: the packets that queued behind the one that
    /// opened the flow (DPRP holds its copy for the negotiation), taken,
    /// and the wait ended.
    pub(super) fn take_waiting(&mut self, overlay: &FlowId) -> Vec<Vec<u8>> {
        match self.steering.waiting.remove(overlay) {
            Some(w) => {
                if let Some(id) = w.negotiation {
                    self.steering.cdn_holds.remove(&id);
                }
                let opening = usize::from(!w.first_sent);
                w.packets.into_iter().skip(opening).collect()
            }
            None => Vec::new(),
        }
    }

    /// A packet from the TUN of a flow whose first packets wait for its
    /// steering: it waits behind them (never overtakes them on QUIC). True
    /// when taken.
    pub(super) fn queue_behind_waiting(&mut self, flow: &FlowId, packet: &[u8]) -> bool {
        !self.steering.waiting.is_empty()
            && self
                .steering
                .waiting
                .get(flow)
                .is_some_and(|w| w.needs_peer || !w.packets.is_empty())
            && self.hold_for_steering(flow, packet)
    }

    /// The first packet of fast-opened UDP flow `flow` (PIT key) came
    /// inside its FOP on the IP path, not marked steered: the opener sends
    /// the steered notice once it steers the flow. Until then (at most
    /// [`NOTICE_WAIT`]) this end's answers wait, so that they go natively
    /// and not over QUIC (note 76). Only for a new translation whose gate
    /// waits for the peer.
    pub(super) fn await_notice(&mut self, flow: FlowId, now: Instant) {
        let overlay = self.overlay_view(&flow);
        if !self.steering.via_native
            || self.steering.answers.len() >= MAX_WAITING_FLOWS
            || !self
                .steering
                .gates
                .get(&overlay)
                .is_some_and(|g| !g.early && !g.peer_ready)
        {
            return;
        }
        if self.steering.answers.contains_key(&overlay) {
            return;
        }
        self.steering.answers.insert(
            overlay,
            Answers {
                pit_key: flow,
                packets: Vec::new(),
                until: now + NOTICE_WAIT,
            },
        );
        self.timers
            .schedule(now + NOTICE_WAIT, Timer::NoticeWait(overlay));
    }

    /// A packet from the TUN of a flow whose answers wait for the steered
    /// notice: it waits too. True when taken. Past the per-flow or the
    /// overall bound, or once the peer's own native packet opened the gate
    /// (a lost notice), the flow's answers leave now, this one last, in
    /// order, rather than any being dropped.
    pub(super) fn hold_for_notice(&mut self, flow: &FlowId, packet: &[u8], now: Instant) -> bool {
        if self.steering.answers.is_empty() {
            return false;
        }
        let Some(a) = self.steering.answers.get_mut(flow) else {
            return false;
        };
        if a.packets.is_empty() {
            self.counters.native_notice_waits += 1;
        }
        a.packets.push(packet.to_vec());
        self.steering.held_answers += 1;
        let full = a.packets.len() >= MAX_WAITING_PACKETS
            || self.steering.held_answers >= MAX_HELD_ANSWERS;
        let open = self.steering.gates.get(flow).is_none_or(|g| g.peer_ready);
        if full || open {
            if full {
                self.counters.native_notice_timeouts += 1;
            }
            self.release_answers(flow, now);
        }
        true
    }

    /// [`Timer::NoticeWait`]: no steered notice for `overlay` within
    /// [`NOTICE_WAIT`]; its answers leave, over QUIC as for any closed
    /// gate. (A timer of an earlier opening of the same ports ends
    /// nothing.)
    pub(super) fn notice_wait_ended(&mut self, overlay: &FlowId, now: Instant) {
        let Some(a) = self.steering.answers.get(overlay) else {
            return;
        };
        if now < a.until {
            return;
        }
        if !a.packets.is_empty() {
            self.counters.native_notice_timeouts += 1;
            debug!(flow = %overlay, held = a.packets.len(), wait = ?NOTICE_WAIT, "no steered notice in time; the answers take QUIC");
        }
        self.release_answers(overlay, now);
    }

    /// The answers of `overlay` that waited for the steered notice leave:
    /// natively if the gate opened (the notice came), else over QUIC.
    pub(super) fn release_answers(&mut self, overlay: &FlowId, now: Instant) {
        let Some(a) = self.steering.answers.remove(overlay) else {
            return;
        };
        self.steering.held_answers -= a.packets.len();
        for p in a.packets {
            self.seal_and_send(a.pit_key, &p, now);
        }
    }

    /// The flow (overlay view) ended: nothing waits for it any more.
    pub(super) fn steering_ended(&mut self, overlay: &FlowId) {
        if let Some(a) = self.steering.answers.remove(overlay) {
            // The flow is gone: its held answers with it.
            self.steering.held_answers -= a.packets.len();
            self.counters.policy_drops += a.packets.len() as u64;
        }
        self.steering.gates.remove(overlay);
        if let Some(w) = self.steering.waiting.remove(overlay)
            && let Some(id) = w.negotiation
        {
            self.steering.cdn_holds.remove(&id);
        }
    }

    /// Called by `on_established` after the translation step: decides how
    /// the responder's CDN leaves, and what the initiator learns from the
    /// way the CDN came.
    pub(super) fn steering_established(&mut self, e: &Done, now: Instant) {
        let overlay = self.overlay_view(&e.flow);
        let gated = self.steering.gates.get(&overlay).is_some_and(|g| !g.ready);
        match e.position {
            Position::Responder => {
                let route = if gated && self.steering.waiting.len() < MAX_WAITING_FLOWS {
                    CdnRoute::Hold(overlay)
                } else if !gated && self.xlat.get(&overlay).is_some() {
                    // Steered already (a renegotiation): the usual way.
                    return;
                } else {
                    CdnRoute::Quic(e.peer)
                };
                self.steering.cdn_routes.insert(e.negotiation, route);
            }
            Position::Initiator if e.fast => {
                // The FOP just left: the flow's first packets wait for the
                // peer's FOK and this node's steering, then go natively;
                // on QUIC after the timeout. Without a new translation
                // (the peer's path is not native) they go at once.
                if gated && self.steering.waiting.len() < MAX_WAITING_FLOWS {
                    let w = self.steering.waiting.entry(overlay).or_default();
                    w.peer = Some(e.peer);
                    w.pit_key = Some(e.flow);
                    w.needs_peer = true;
                    self.timers
                        .schedule(now + FAST_READY_TIMEOUT, Timer::NativeReady(overlay));
                }
            }
            Position::Initiator => {
                if let Some(g) = self.steering.gates.get_mut(&overlay)
                    && self.steering.via_native
                {
                    g.peer_ready = true;
                }
                // Only a CDN on the IP path says the peer steers the flow:
                // otherwise the first packets take QUIC at once.
                if gated
                    && self.steering.via_native
                    && self.steering.waiting.len() < MAX_WAITING_FLOWS
                {
                    let w = self.steering.waiting.entry(overlay).or_default();
                    w.peer = Some(e.peer);
                    w.pit_key = Some(e.flow);
                    self.timers
                        .schedule(now + NATIVE_READY_TIMEOUT, Timer::NativeReady(overlay));
                }
            }
            Position::Gateway => {}
        }
    }

    /// A held packet DPRP released: it waits if its flow's steering does.
    /// True when taken.
    pub(super) fn hold_for_steering(&mut self, flow: &FlowId, packet: &[u8]) -> bool {
        let overlay = self.overlay_view(flow);
        let Some(w) = self.steering.waiting.get_mut(&overlay) else {
            return false;
        };
        if w.packets.len() < MAX_WAITING_PACKETS {
            w.packets.push(packet.to_vec());
        } else {
            self.counters.policy_drops += 1;
        }
        true
    }

    /// A transmit of DPRP: CDNs (and FOKs, a fast open's CDN) wait for
    /// the round's events (they say how the CDN leaves), and a fast open's
    /// first FOP for its flow's first packet (note 71). `None` when taken.
    pub(super) fn stage_cdn(&mut self, t: dprp::Transmit) -> Option<dprp::Transmit> {
        match dprp::msg::peek(&t.payload) {
            Ok((MessageType::Cdn | MessageType::Fok, _)) => {
                self.steering.staged.push(t);
                None
            }
            Ok((MessageType::Fop, id)) => {
                // A retransmission has no release behind it in this round
                // and leaves at the round's end, unchanged.
                match dprp::msg::Message::decode(&t.payload) {
                    Ok(dprp::msg::Message::Fop(f)) if f.first.is_none() => {
                        self.steering.staged_fops.push((f.flow, id, t));
                        None
                    }
                    _ => Some(t),
                }
            }
            _ => Some(t),
        }
    }

    /// The staged FOP of `flow` (PIT key), if its fast open began in this
    /// drain round.
    pub(super) fn take_staged_fop(
        &mut self,
        flow: &FlowId,
    ) -> Option<(NegotiationId, dprp::Transmit)> {
        let i = self
            .steering
            .staged_fops
            .iter()
            .position(|(f, _, _)| f == flow)?;
        let (_, id, t) = self.steering.staged_fops.swap_remove(i);
        Some((id, t))
    }

    /// The FOPs with a first packet inside leave, once the drain made its
    /// eviction notices ([`Steering::late_fops`]).
    pub(super) fn route_late_fops(&mut self, now: Instant) {
        for t in std::mem::take(&mut self.steering.late_fops) {
            self.route_transmit(t);
        }
        for (flow, p) in std::mem::take(&mut self.steering.late_firsts) {
            self.seal_and_send(flow, &p, now);
        }
    }

    /// Fast open FOP `t` leaves at the end of the drain, and `packet`, the
    /// first of `flow` (PIT key), beside it, after it
    /// ([`Steering::late_firsts`]).
    pub(super) fn fop_then_first(&mut self, t: dprp::Transmit, flow: FlowId, packet: &[u8]) {
        self.steering.late_fops.push(t);
        self.steering.late_firsts.push((flow, packet.to_vec()));
    }

    /// The round's FOPs no first packet went into leave as they are, at
    /// the end of the drain ([`Steering::late_fops`]).
    pub(super) fn route_staged_fops(&mut self) {
        let staged = std::mem::take(&mut self.steering.staged_fops);
        self.steering
            .late_fops
            .extend(staged.into_iter().map(|(_, _, t)| t));
    }

    /// The first packet of fast-opened `flow` waits for this node's
    /// steering (the peer's path is native): a UDP packet that fits leaves
    /// now inside its FOP, on the IP path, not marked steered (the peer
    /// holds its answers until [`NodeCore::send_steered_notice`]);
    /// anything else lets the FOP go alone. Not TCP: the peer's first
    /// native packet of the connection would be its SYN-ACK, which a
    /// router's conntrack that never saw the SYN takes as invalid (and a
    /// NAT leaves untranslated).
    pub(super) fn send_fop_with_first(
        &mut self,
        flow: &FlowId,
        id: NegotiationId,
        t: dprp::Transmit,
        now: Instant,
    ) {
        let overlay = self.overlay_view(flow);
        let len = match self.steering.waiting.get(&overlay) {
            Some(w)
                if flow.protocol == fpn_proto::flow::protocol::UDP
                    && w.needs_peer
                    && w.packets.len() == 1
                    && !w.first_sent =>
            {
                w.packets[0].len()
            }
            _ => return self.steering.late_fops.push(t),
        };
        if !self.first_fits(id, &t, len) {
            return self.steering.late_fops.push(t);
        }
        let Some(w) = self.steering.waiting.get_mut(&overlay) else {
            return self.steering.late_fops.push(t);
        };
        w.first_sent = true;
        let first = w.packets.remove(0);
        // Not inside after all, it went beside its FOP; DPRP keeps its copy
        // for the fallback, as for any fast open.
        if let Some(fop) = self.send_first_in_fop(id, t, flow, &first, true, now)
            && let Some(w) = self.steering.waiting.get_mut(&overlay)
        {
            w.notice = Some((id, fop));
        }
    }

    /// This node now steers `overlay`: the FOP that left with the flow's
    /// first packet inside goes again, marked steered (note 75), and the
    /// peer's native packets prove nothing of its own steering from then.
    /// Only while the flow's entry is still that fast open's: one given up
    /// for the peer's simultaneous opening of the flow sends nothing (its
    /// FOP, marked, could be installed there once the peer's own opening
    /// is done, under keys this end no longer holds).
    fn send_steered_notice(&mut self, overlay: FlowId) {
        let Some(w) = self.steering.waiting.get_mut(&overlay) else {
            return;
        };
        let (Some((id, t)), Some(flow)) = (w.notice.take(), w.pit_key) else {
            return;
        };
        if self.pit.lookup(&flow).and_then(|(_, e)| e.opening()) != Some(id.0) {
            debug!(%flow, "the fast open was given up: no steered notice");
            return;
        }
        match self.dprp.mark_steered(&t.payload) {
            Ok(payload) => {
                if let Some(g) = self.steering.gates.get_mut(&overlay) {
                    g.peer_early = true;
                }
                self.route_transmit(dprp::Transmit {
                    dst: t.dst,
                    payload,
                });
            }
            Err(e) => debug!(flow = %overlay, error = %e, "no steered notice"),
        }
    }

    /// Whether a packet of `packet` bytes, sealed, may ride inside fast open `id`'s FOP `t`:
    /// the peer takes first packets and the FOP stays within
    /// [`MAX_FIRST_FOP`].
    pub(super) fn first_fits(&self, id: NegotiationId, t: &dprp::Transmit, packet: usize) -> bool {
        t.payload.len() + dprp::msg::FIRST_PACKET_OVERHEAD + packet + TRAILER_LEN <= MAX_FIRST_FOP
            && self.dprp.fast_open_takes_first(id)
    }

    /// Seals `packet`, the first of fast-opened `flow` (PIT key), puts it
    /// into fast open `id`'s FOP `t`, not marked steered (note 75: the
    /// steered notice follows where it may), and sends that at the end of
    /// the drain round ([`Steering::late_fops`]); `keep`: returns a copy
    /// for the notice (the IP path).
    /// A first packet that cannot go inside leaves after the FOP on QUIC
    /// (the peer parks it until the FOP is in).
    pub(super) fn send_first_in_fop(
        &mut self,
        id: NegotiationId,
        t: dprp::Transmit,
        flow: &FlowId,
        packet: &[u8],
        keep: bool,
        now: Instant,
    ) -> Option<dprp::Transmit> {
        if packet.len() + TRAILER_LEN > self.scratch.len() {
            self.steering.late_fops.push(t);
            return None;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf[..packet.len()].copy_from_slice(packet);
        let sealed = match self
            .pit
            .handle_packet(flow, Origin::Local, &mut buf, packet.len(), now)
        {
            Ok(Disposition::Forward { len }) => Some(len),
            // As `release` answers it.
            Ok(Disposition::Drop) => {
                self.queue_unreachable(packet, crate::icmp::Unreachable::Prohibited);
                None
            }
            _ => {
                self.counters.policy_drops += 1;
                None
            }
        };
        let mut sent = None;
        match sealed {
            Some(len) => match self.dprp.attach_first(id, &buf[..len], false, now) {
                Ok(payload) => {
                    let fop = dprp::Transmit {
                        dst: t.dst,
                        payload,
                    };
                    if keep {
                        sent = Some(fop.clone());
                    }
                    self.steering.late_fops.push(fop);
                }
                Err(e) => {
                    debug!(%flow, error = %e, "first packet not put into its FOP");
                    self.route_transmit(t);
                    if let Some(ge) = self.pit.lookup(flow).and_then(|(_, e)| e.peer()) {
                        self.send_frame(ge, FrameKind::Data, buf[..len].to_vec());
                    }
                }
            },
            None => self.steering.late_fops.push(t),
        }
        self.scratch = buf;
        sent
    }

    /// Routes the round's CDNs: held, over QUIC, or the usual way.
    pub(super) fn route_staged_cdns(&mut self, now: Instant) {
        if self.steering.staged.is_empty() {
            self.steering.cdn_routes.clear();
            return;
        }
        for t in std::mem::take(&mut self.steering.staged) {
            let Ok((_, id)) = dprp::msg::peek(&t.payload) else {
                continue;
            };
            let route = match self.steering.cdn_holds.get(&id) {
                Some(f) => Some(CdnRoute::Hold(*f)),
                None => self.steering.cdn_routes.get(&id).copied(),
            };
            match route {
                Some(CdnRoute::Hold(overlay)) => {
                    let w = self.steering.waiting.entry(overlay).or_default();
                    if w.negotiation.is_none() {
                        w.negotiation = Some(id);
                        self.steering.cdn_holds.insert(id, overlay);
                        self.timers
                            .schedule(now + NATIVE_READY_TIMEOUT, Timer::NativeReady(overlay));
                    }
                    // A retransmission replaces the held copy (same bytes).
                    w.cdns.clear();
                    w.cdns.push(t);
                }
                Some(CdnRoute::Quic(peer)) if !self.to_gateway_hop(&t, peer) => {
                    self.counters.control_out += 1;
                    self.send_control(peer, t.payload);
                }
                Some(CdnRoute::Quic(_)) | None => self.route_transmit(t),
            }
        }
        self.steering.cdn_routes.clear();
    }

    /// Whether a CDN for `peer` goes back to a gateway between the two
    /// (the MPIT came from an address of none of the peer's): then it must
    /// go there on the IP path, since the gateway installs its entry on it
    /// (`core/transit.rs`); a CDN straight to the peer over QUIC would leave
    /// the gateway without one.
    fn to_gateway_hop(&self, t: &dprp::Transmit, peer: GeId) -> bool {
        let ip = t.dst.ip();
        t.dst.port() == super::PROBE_PORT
            && self.native_remote(peer) != Some(ip)
            && self
                .peers
                .get(peer)
                .is_none_or(|p| !p.target.addrs.iter().any(|a| a.ip() == ip))
            && self
                .paths
                .nat_sources
                .get(&peer)
                .is_none_or(|n| n.ip() != ip)
    }

    /// [`Timer::NativeReady`]: the steering of `overlay` was not confirmed
    /// in time; what waited goes on QUIC.
    pub(super) fn steering_timeout(&mut self, overlay: FlowId, now: Instant) {
        let Some(wait) = self.steering.waiting.remove(&overlay) else {
            return;
        };
        self.counters.native_ready_timeouts += 1;
        debug!(flow = %overlay, timeout = ?NATIVE_READY_TIMEOUT, "native steering not confirmed in time; the flow starts on QUIC");
        if let Some(g) = self.steering.gates.get_mut(&overlay) {
            // The peer learns nothing from a CDN over QUIC: fall back to
            // the grace from here.
            g.peer_ready = false;
            g.until = now + NATIVE_GRACE;
        }
        self.finish_waiting(overlay, wait, false, now);
    }

    fn finish_waiting(&mut self, overlay: FlowId, wait: Waiting, ready: bool, now: Instant) {
        if let Some(id) = wait.negotiation {
            self.steering.cdn_holds.remove(&id);
        }
        let peer = wait
            .peer
            .or_else(|| self.xlat.get(&overlay).map(|t| t.peer));
        for t in wait.cdns {
            match (ready, peer) {
                (true, _) => self.route_transmit(t),
                (false, Some(p)) if !self.to_gateway_hop(&t, p) => {
                    self.counters.control_out += 1;
                    self.send_control(p, t.payload);
                }
                (false, Some(_)) => self.route_transmit(t),
                (false, None) => {}
            }
        }
        if let Some(flow) = wait.pit_key {
            for p in wait.packets {
                self.release(flow, &p, now);
            }
        }
    }

    /// A new flow's first packet is held while DPRP runs: when its peer's
    /// path is native, this node's steering of the flow's inbound packets
    /// starts now, so the `nft` run overlaps the negotiation instead of
    /// following the CDN. Undone if the flow ends up without translation.
    pub(super) fn presteer(&mut self, flow: FlowId) {
        let overlay = self.overlay_view(&flow);
        if self.steering.presteered.contains_key(&overlay)
            || self.steering.presteered.len() >= MAX_WAITING_FLOWS
            || self.paths.unavailable.is_some()
            || self.xlat.get(&overlay).is_some()
            || !super::paths::natively_steerable(&overlay)
        {
            return;
        }
        let Some(dst) = self.cfg.net6.as_v4(overlay.dst) else {
            return;
        };
        let Some(ge) = self.peers.owner(dst) else {
            return;
        };
        if !self
            .peers
            .get(ge)
            .is_some_and(|p| p.path.current == crate::carrier::CarrierKind::Native)
        {
            return;
        }
        let Some(remote) = self.native_remote(ge) else {
            return;
        };
        let Some(local) = self.paths.locals.get(&remote).copied() else {
            return;
        };
        let inbound = fpn_proto::xlat::Translation::addresses(overlay, local, remote, ge)
            .wire
            .reversed();
        self.steering.presteered.insert(overlay, (inbound, false));
        self.steering.presteer_wire.insert(inbound, overlay);
        trace!(flow = %overlay, "steering before the negotiation ends");
        self.push_output(super::Output::NativeFlowAdded(inbound));
    }

    /// The translation of `overlay` was installed with inbound wire flow
    /// `inbound`: true if it is steered already (its gate takes over the
    /// confirmation). A presteer for another wire flow is undone.
    pub(super) fn take_presteer(&mut self, overlay: FlowId, inbound: FlowId) -> bool {
        let Some((wire, ready)) = self.steering.presteered.remove(&overlay) else {
            return false;
        };
        self.steering.presteer_wire.remove(&wire);
        if wire != inbound {
            self.push_output(super::Output::NativeFlowRemoved(wire));
            return false;
        }
        if let Some(g) = self.steering.gates.get_mut(&overlay) {
            g.ready = ready;
        }
        true
    }

    /// The negotiation of `flow` ended: a presteer the translation did not
    /// take is undone.
    pub(super) fn presteer_done(&mut self, flow: &FlowId) {
        if self.steering.presteered.is_empty() {
            return;
        }
        let overlay = self.overlay_view(flow);
        if let Some((wire, _)) = self.steering.presteered.remove(&overlay) {
            self.steering.presteer_wire.remove(&wire);
            self.push_output(super::Output::NativeFlowRemoved(wire));
        }
    }

    /// `flow` as seen from this node (source = this node's overlay address).
    pub(super) fn overlay_view(&self, flow: &FlowId) -> FlowId {
        if self.is_own(flow.src) {
            *flow
        } else {
            flow.reversed()
        }
    }
}
