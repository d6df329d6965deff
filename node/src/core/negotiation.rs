//! The core's side of negotiations: packets that start one, DPRP's
//! transmits routed to peers by the peer table, DPRP's events turned into
//! PIT entries, released packets and ICMP errors, renegotiation and healing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use fpn_proto::dprp::msg::FirstPacket;
use fpn_proto::dprp::{self, DropCause, EvictedFlow, FailReason, NegotiationId, Verdict};
use fpn_proto::flow::FlowId;
use fpn_proto::ge::GeId;
use fpn_proto::packet::Packet;
use fpn_proto::pccom::TRAILER_LEN;
use fpn_proto::pit::{Disposition, NewEntry, Origin, PitEvent, RenegotiateReason};
use tracing::{debug, info, trace, warn};

use super::DPRP_REFRESH;
use super::flows::{HEAL_GAP, RENEGOTIATE_DELAY, RENEGOTIATE_RETRY};
use super::parked::{self, Parking};
use super::steering;
use super::timers::{PIT_AGE_GRANULARITY, Timer};
use super::{MAX_OUTPUTS, NodeCore, Output, PENDING_PEERS, PENDING_PER_PEER};
use crate::carrier::{CarrierKind, FrameKind, PeerTarget};
use crate::icmp::{self, Unreachable};
use crate::status::action_name;

impl NodeCore {
    pub(super) fn negotiate(&mut self, flow: FlowId, packet: &[u8], now: Instant) {
        let _span = tracing::debug_span!("flow", %flow).entered();
        if self.dead_vin(flow.dst) {
            self.counters.no_route += 1;
            self.queue_unreachable(packet, Unreachable::NoAnswer);
            self.vin6_flow_ended(&flow);
            return;
        }
        self.dprp_touched = true;
        match self.dprp.handle_packet(flow, packet.to_vec(), now) {
            Ok(Verdict::Held) => {
                self.counters.held += 1;
                self.flows.keep_quote(flow, packet);
                self.presteer(flow);
            }
            Ok(Verdict::Dropped(DropCause::Negative(reason))) => {
                self.queue_unreachable(packet, unreachable_for(&reason));
            }
            Ok(Verdict::Dropped(cause)) => {
                self.counters.policy_drops += 1;
                trace!(?cause, "packet dropped by DPRP");
            }
            Ok(Verdict::Local) => {}
            Err(e) => {
                self.counters.dprp_errors += 1;
                debug!(error = %e, "cannot negotiate");
            }
        }
    }

    /// Drains DPRP's and the PIT's outputs into the core's.
    pub(super) fn drain(&mut self, now: Instant) {
        // Bounded: each round only handles what the previous one produced.
        for _ in 0..16 {
            let mut progress = false;
            while let Some(t) = self.dprp.poll_transmit() {
                progress = true;
                // A CDN waits for this round's events, which say whether
                // it must wait for the native steering (steering.rs).
                if let Some(t) = self.stage_cdn(t) {
                    self.route_transmit(t);
                }
            }
            while let Some(ev) = self.dprp.poll_event() {
                progress = true;
                self.on_dprp_event(ev, now);
            }
            self.route_staged_fops();
            self.route_staged_cdns(now);
            progress |= self.drain_pit(now);
            if !progress {
                break;
            }
        }
        // After the notices of what the rounds evicted (drain_pit's, sent
        // in the pass after it).
        self.route_late_fops(now);
        self.refresh_dprp_deadline(Some(now));
    }

    /// Recomputes DPRP's deadline after DPRP was touched, at most once per
    /// [`DPRP_REFRESH`] (`now` = `None`: at once).
    pub(super) fn refresh_dprp_deadline(&mut self, now: Option<Instant>) {
        // DPRP's poll_timeout looks at every negotiation: only ask it again
        // after DPRP was touched, never on the steady data path, and not on
        // every DPRP message either: under a DDE flood (tens of thousands a
        // second, nearly all refused by a budget) a scan of the hundreds of
        // negotiations the budgets admit, per message, cost more than a
        // core (the flood lab test measured it). Within the interval the
        // core wakes at its end and looks then, so a new negotiation's timer
        // runs at most that late.
        if !self.dprp_touched {
            return;
        }
        if let (Some(now), Some(last)) = (now, self.dprp_refreshed) {
            let next = last + DPRP_REFRESH;
            if now < next {
                self.dprp_deadline = Some(self.dprp_deadline.map_or(next, |t| t.min(next)));
                return;
            }
        }
        self.dprp_touched = false;
        self.dprp_refreshed = now;
        self.dprp_deadline = self.dprp.poll_timeout().map(|(t, _)| t);
    }

    pub(super) fn drain_pit(&mut self, now: Instant) -> bool {
        let mut any = false;
        // The round's evictions, by peer: one notice each (note 69).
        let mut evicted: BTreeMap<GeId, Vec<EvictedFlow>> = BTreeMap::new();
        while let Some(ev) = self.pit.poll_event() {
            any = true;
            let (flow, reason) = match ev {
                PitEvent::Renegotiate { flow, reason } => (flow, reason),
                PitEvent::Evicted {
                    flow,
                    peer,
                    opening,
                } => {
                    // Made room for a new flow in a full table. Events are
                    // drained after the round's DPRP events: the flow may
                    // have been installed again since, keeping its state.
                    self.counters.flows_evicted += 1;
                    debug!(%flow, "idle flow evicted for a new one");
                    if self.pit.lookup(&flow).is_none() {
                        self.flow_ended(&flow);
                    }
                    if let (Some(peer), Some(opening)) = (peer, opening) {
                        evicted.entry(peer).or_default().push(EvictedFlow {
                            opening: NegotiationId(opening),
                            flow,
                        });
                    }
                    continue;
                }
            };
            // One end renegotiates, never both: two crossing negotiations
            // could leave each end with the other's keys. After a rotation it
            // is the end that started the flow, a moment later, so the
            // other end has received the new key version too.
            match reason {
                RenegotiateReason::KeyRotation if !self.is_own(flow.src) => {
                    debug!(%flow, "key rotated: the flow's initiator renegotiates");
                }
                RenegotiateReason::KeyRotation => {
                    self.flows.schedule_renegotiation(
                        flow,
                        now + RENEGOTIATE_DELAY,
                        &mut self.timers,
                    );
                }
                RenegotiateReason::PacketLimit => self.start_renegotiation(flow, now),
            }
        }
        // The peer still holds these flows: told, it drops them, and the
        // next packet of one (a client reusing its port) opens it afresh
        // instead of meeting an end without its keys. The notices go out
        // with this drain's next round of transmits.
        for (peer, flows) in evicted {
            self.dprp.notify_evicted(peer, &flows, now);
        }
        any
    }

    /// A peer's eviction notice: drops each listed entry that this peer
    /// installed under the listed opening. An entry opened again since (a
    /// later negotiation or fast open of the same ports) has another
    /// opening and stays.
    pub(super) fn on_peer_evicted(&mut self, peer: GeId, flows: &[EvictedFlow]) {
        for f in flows {
            let matches = self
                .pit
                .lookup(&f.flow)
                .is_some_and(|(_, e)| e.peer() == Some(peer) && e.opening() == Some(f.opening.0));
            if !matches {
                self.counters.peer_evictions_ignored += 1;
                continue;
            }
            self.pit.remove(&f.flow);
            self.flow_ended(&f.flow);
            self.counters.flows_evicted_by_peer += 1;
            debug!(flow = %f.flow, %peer, "flow dropped: the peer evicted it");
        }
    }

    pub(super) fn start_renegotiation(&mut self, flow: FlowId, now: Instant) {
        let oriented = if self.is_own(flow.src) {
            flow
        } else {
            flow.reversed()
        };
        if self.pit.lookup(&flow).is_none() {
            return;
        }
        debug!(%flow, "renegotiating");
        self.flows.renegotiating(oriented);
        if let Err(e) = self.dprp.initiate(oriented, Vec::new(), now) {
            self.flows.renegotiation_ended(&oriented);
            debug!(%flow, error = %e, "renegotiation not started");
        }
        self.dprp_touched = true;
    }

    /// A packet of `flow` (no entry here) from `peer`, with which this node
    /// holds a pair epoch: kept for [`parked::PARK_WAIT`] in case its FOP
    /// is behind it. False: handle it as before (healing).
    pub(super) fn park(&mut self, flow: FlowId, peer: GeId, packet: &[u8], now: Instant) -> bool {
        if !self.dprp.holds_epoch_with(peer, now) {
            return false;
        }
        match self.parked.park(flow, peer, packet) {
            Parking::First => {
                self.timers
                    .schedule(now + parked::PARK_WAIT, Timer::Parked(flow));
            }
            Parking::More => {}
            Parking::Full => return false,
        }
        self.counters.data_in_parked += 1;
        true
    }

    /// `flow` was fast-opened by its peer: the packets that came before
    /// its FOP go to the TUN now.
    pub(super) fn unpark(&mut self, flow: &FlowId, now: Instant) {
        let Some((peer, packets)) = self.parked.take(flow) else {
            return;
        };
        for p in packets {
            if self.open_into_tun(peer, p, now) {
                self.counters.data_in_unparked += 1;
            }
        }
    }

    /// Opens `packet`, a data frame of `peer` that came another way than
    /// the carrier's (parked, or inside a FOP), and writes it to the TUN.
    /// True when written.
    fn open_into_tun(&mut self, peer: GeId, packet: Vec<u8>, now: Instant) -> bool {
        let len = packet.len();
        let mut b = packet;
        // Room for what the path back to the TUN may add.
        b.resize(len + 64, 0);
        let Some(n) = self
            .handle_data(peer, &mut b, len, now)
            .and_then(|n| self.vin6_for_tun(&mut b, n))
        else {
            return false;
        };
        self.push_output(Output::Tun(b[..n].to_vec()));
        true
    }

    /// The first packet of `flow` that came inside its FOP from `peer`
    /// (note 71): opened like a data frame of the peer and written to the
    /// TUN. A UDP flow's packet marked as steered says the peer steers the
    /// flow already: this end may answer natively at once.
    fn deliver_first(&mut self, flow: FlowId, peer: GeId, first: FirstPacket, now: Instant) {
        // Only into the entry the FOP just installed (not one refused
        // here), and only the FOP's own flow: the packet lies outside the
        // FOP's tag, and a packet of another flow has no business riding it.
        if self.pit.lookup(&flow).and_then(|(_, e)| e.peer()) != Some(peer) {
            return;
        }
        let FirstPacket { steered, packet } = first;
        if !Packet::parse(&packet[..]).is_ok_and(|p| p.flow_id() == flow) {
            self.counters.data_in_rejected += 1;
            debug!(%flow, %peer, "the packet inside a FOP is not of its flow: dropped");
            return;
        }
        if !self.open_into_tun(peer, packet, now) {
            return;
        }
        if flow.protocol == fpn_proto::flow::protocol::UDP {
            if steered {
                let overlay = self.overlay_view(&flow);
                self.first_came_inside_fop(&overlay);
            } else {
                self.await_notice(flow, now);
            }
        }
    }

    /// [`Timer::Parked`]: no FOP came for `flow`: its packets are dropped
    /// and the flow is negotiated from this side, as without fast open.
    pub(super) fn parking_expired(&mut self, flow: FlowId, now: Instant) {
        let Some((peer, packets)) = self.parked.take(&flow) else {
            return;
        };
        self.counters.policy_drops += packets.len() as u64;
        if self.pit.lookup(&flow).is_some() {
            // Negotiated meanwhile: nothing to heal.
            return;
        }
        debug!(%flow, peer = %peer, packets = packets.len(), "no FOP for the parked packets: healing");
        self.heal(flow, peer, now);
    }

    /// A peer sends packets of a flow this node has no entry for (this
    /// node restarted, or aged the flow out while the peer kept it): start
    /// a negotiation for it from this side, which replaces the peer's stale
    /// entry. Only for flows to this node from the address the sending GE
    /// owns, and at most once per [`HEAL_GAP`] per flow.
    pub(super) fn heal(&mut self, flow: FlowId, from: GeId, now: Instant) {
        let Some(src) = self.cfg.net6.as_v4(flow.src) else {
            return;
        };
        if !self.is_own(flow.dst) || self.peers.owner(src) != Some(from) {
            return;
        }
        let oriented = flow.reversed();
        if !self.flows.may_heal(oriented, now, &mut self.timers) {
            return;
        }
        debug!(%flow, peer = %from, gap = ?HEAL_GAP, "packets for an unknown flow: negotiating it again");
        if let Err(e) = self.dprp.initiate(oriented, Vec::new(), now) {
            debug!(%flow, error = %e, "no negotiation for the unknown flow");
        }
        self.dprp_touched = true;
    }

    pub(super) fn schedule_pit_ageing(&mut self, now: Instant) {
        if let Some(next) = self.pit.next_expiry() {
            let at = next.max(now + PIT_AGE_GRANULARITY);
            self.timers.schedule(at, Timer::PitAgeing);
        }
    }

    pub(super) fn on_dprp_event(&mut self, ev: dprp::Event, now: Instant) {
        match ev {
            dprp::Event::Established(mut e) => {
                let flow = e.flow;
                let peer = e.peer;
                let fast_responder = e.fast.is_some() && e.position == dprp::Position::Responder;
                let first = e.first.take();
                self.on_established(e, now);
                self.presteer_done(&flow);
                if fast_responder {
                    // The packet inside the FOP is the flow's first: ahead
                    // of any that overtook the FOP and were parked.
                    if let Some(p) = first {
                        self.deliver_first(flow, peer, p, now);
                    }
                    self.unpark(&flow, now);
                }
            }
            dprp::Event::Release { flow, packets } => {
                for p in packets {
                    self.release(flow, &p, now);
                }
            }
            dprp::Event::FastConfirmed { flow } => {
                // A FOK on the IP path says the peer steers the flow (it
                // holds its FOK until then, as a responder its CDN).
                let native = self.steering.via_native;
                debug!(%flow, native, "fast open confirmed by the peer");
                let overlay = self.overlay_view(&flow);
                self.fast_open_confirmed(overlay, native, now);
            }
            dprp::Event::FastSteered {
                flow,
                peer,
                opening,
            } => {
                // The opener steers the flow now (note 75): this end may
                // answer natively at once, as after a FOP marked steered.
                // Only a UDP flow whose entry that very FOP installed (a
                // late or replayed notice says nothing of a later opening
                // of the same ports).
                if flow.protocol == fpn_proto::flow::protocol::UDP
                    && self.pit.lookup(&flow).is_some_and(|(_, e)| {
                        e.peer() == Some(peer) && e.opening() == Some(opening.0)
                    })
                {
                    trace!(%flow, %peer, "the opener steers the flow now");
                    let overlay = self.overlay_view(&flow);
                    self.first_came_inside_fop(&overlay);
                    self.release_answers(&overlay, now);
                }
            }
            dprp::Event::PeerEvicted { peer, flows } => self.on_peer_evicted(peer, &flows),
            dprp::Event::FastOpenFailed { flow, reason } => {
                // The endpoint negotiates the flow now; until then its
                // packets are held there, not sealed under the epoch's keys.
                info!(%flow, %reason, "fast open failed; negotiating the flow");
                // DPRP holds a copy of the packet that opened the flow for
                // the negotiation; those that queued behind it here go to
                // DPRP after it.
                let overlay = self.overlay_view(&flow);
                let waiting = self.take_waiting(&overlay);
                self.pit.remove(&flow);
                self.flow_ended(&flow);
                for p in waiting {
                    self.negotiate(flow, &p, now);
                }
            }
            dprp::Event::Failed {
                flow,
                reason,
                dropped_packets,
            } => {
                self.presteer_done(&flow);
                if self.flows.is_healing(&flow) && self.pit.lookup(&flow).is_none() {
                    debug!(%flow, %reason, "re-negotiating an unknown flow failed");
                    return;
                }
                if self.flows.renegotiation_ended(&flow) && self.pit.lookup(&flow).is_some() {
                    // The flow keeps its current entry (its key version is
                    // still valid); try again later.
                    info!(%flow, %reason, "renegotiation failed; the flow keeps its keys for now");
                    self.flows.schedule_renegotiation(
                        flow,
                        now + RENEGOTIATE_RETRY,
                        &mut self.timers,
                    );
                    return;
                }
                self.counters.refused_flows += 1;
                info!(%flow, %reason, dropped_packets, "flow refused");
                let by = match &reason {
                    FailReason::Dropped { by } | FailReason::Refused { by, .. } => Some(*by),
                    _ => None,
                };
                let why = self.refusal_text(&reason);
                self.flows.refuse(flow, by, why, now, &mut self.timers);
                if let Some(q) = self.flows.take_quote(&flow) {
                    self.queue_unreachable(&q, unreachable_for(&reason));
                }
                self.vin6_flow_ended(&flow);
            }
        }
    }

    pub(super) fn on_established(&mut self, e: dprp::Established, now: Instant) {
        let _span = tracing::debug_span!("flow", flow = %e.flow).entered();
        if e.position == fpn_proto::dprp::Position::Gateway {
            // Neither end is here: no PIT entry, no translation.
            self.transit_established(&e, now);
            return;
        }
        self.flows.established(&e.flow);
        let action = e.action;
        // DPRP proves who the peer is, not that it owns the flow's remote
        // address: check that against the peer table, so one member cannot
        // negotiate flows in another member's name. An owner not known yet
        // fails closed: the directory is asked, and the initiator's retry
        // (or this node's healing) succeeds once it answered.
        let remote = if self.is_own(e.flow.src) {
            e.flow.dst
        } else {
            e.flow.src
        };
        let Some(r) = self.cfg.net6.as_v4(remote) else {
            self.counters.unknown_owner += 1;
            return;
        };
        match self.owner_of(r) {
            Some(owner) if owner != e.peer => {
                warn!(peer = %e.peer, %owner, "a peer negotiated a flow for an address it does not own; refused");
                self.counters.wrong_owner += 1;
                return;
            }
            Some(_) => {}
            None => {
                debug!(peer = %e.peer, "the flow's remote address has no known owner yet; refused, asking the directory");
                self.counters.unknown_owner += 1;
                self.flows.refuse(
                    e.flow,
                    Some(e.peer),
                    format!(
                        "{} negotiated it, but the directory does not say it owns {r} yet (asked the GMS)",
                        self.ge_label(e.peer)
                    ),
                    now,
                    &mut self.timers,
                );
                self.flows.await_owner(r, e.flow, e.peer);
                self.push_output(Output::DirectoryLookup(r));
                return;
            }
        }
        let done = steering::Done {
            negotiation: e.negotiation,
            flow: e.flow,
            position: e.position,
            peer: e.peer,
            fast: e.fast.is_some(),
        };
        // A transit gateway's entry is not a mapping of its own.
        let natf = e
            .natf
            .filter(|_| e.position != fpn_proto::dprp::Position::Gateway);
        let gateway = e.position == fpn_proto::dprp::Position::Responder;
        // Named by its opening, the same id at both ends: an eviction
        // here tells the peer which entry to drop (and no later one).
        let entry = NewEntry::from_parts(e.action, e.peer, e.key_version, e.keys)
            .map(|n| n.with_opening(e.negotiation.0));
        match entry.and_then(|n| self.pit.insert(e.flow, n, now)) {
            Ok(()) => {
                if let Some(m) = natf {
                    // Before the translation: the wire side takes the
                    // reserved port, and the gateway's DNAT is queued
                    // ahead of this round's CDN.
                    self.natf_established(e.flow, gateway, m.lip, m.reserved_port);
                }
                let mut learned = false;
                if let Some(p) = self.peers.get_mut(e.peer) {
                    p.had_flow = true;
                    // A peer this node knows from the listing alone (the
                    // directory on demand: it never asked about it) has no
                    // node key yet. DPRP has just verified the peer's
                    // CA-signed credential, which names it; the native
                    // path's probe key is derived from it.
                    if p.key.is_none()
                        && let Some(k) = self.dprp.peer_node_key(e.peer)
                    {
                        p.key = Some(k);
                        learned = true;
                    }
                }
                if learned {
                    self.update_machine(e.peer, now);
                }
                self.install_translation(e.flow, e.peer, true, now);
                if e.fast.is_some() && e.position == fpn_proto::dprp::Position::Initiator {
                    self.offer_first_inbound(&e.flow, e.peer, now);
                }
                self.steering_established(&done, now);
                let idle = self.pit.config().idle_timeout.max(PIT_AGE_GRANULARITY);
                self.timers.schedule(now + idle, Timer::PitAgeing);
                debug!(peer = %e.peer, action = action_name(action), position = ?e.position, "flow established");
            }
            Err(err @ fpn_proto::Error::PitFull { .. }) => {
                self.counters.flows_table_full += 1;
                // At most one line a second: a storm of new flows against
                // a full table must not flood the log.
                if self.full_logged.is_none_or(|t| {
                    now.saturating_duration_since(t) >= std::time::Duration::from_secs(1)
                }) {
                    self.full_logged = Some(now);
                    warn!(error = %err, peer = %e.peer, refused = self.counters.flows_table_full, "cannot install the flow: none of the flows that may make room (the peer's own when it holds its share of the table) has been idle for a second; raise max_flows if many peers need more");
                }
            }
            Err(err) => warn!(error = %err, "cannot install the flow"),
        }
    }

    /// A held packet of a flow that is now established.
    pub(super) fn release(&mut self, flow: FlowId, packet: &[u8], now: Instant) {
        if packet.len() + TRAILER_LEN > self.scratch.len() {
            return;
        }
        // The first packet of a fast open that began in this drain round:
        // its FOP is staged, and may carry it (note 71).
        let fop = self.take_staged_fop(&flow);
        if self.hold_for_steering(&flow, packet) {
            if let Some((id, t)) = fop {
                self.send_fop_with_first(&flow, id, t, now);
            }
            return;
        }
        if let Some((id, t)) = fop {
            // Over QUIC the packet would leave at once beside its FOP: it
            // goes inside instead (one frame, and the peer never parks it).
            let quic = self
                .pit
                .lookup(&flow)
                .and_then(|(_, e)| e.peer())
                .is_some_and(|ge| !self.peer_native(ge));
            if quic && !self.plain_on_wire(&flow) && self.first_fits(id, &t, packet.len()) {
                // Not marked as steered: should a retransmission go on the
                // IP path after a switch, the peer must not answer natively
                // before this node steers the flow.
                self.send_first_in_fop(id, t, &flow, packet, false, now);
                return;
            }
            // Beside it, both after the round's eviction notices (note 77).
            self.fop_then_first(t, flow, packet);
            return;
        }
        self.seal_and_send(flow, packet, now);
    }

    /// Seals held `packet` of established `flow` (PIT key) and sends it:
    /// natively where both ends steer the flow, else over QUIC.
    pub(super) fn seal_and_send(&mut self, flow: FlowId, packet: &[u8], now: Instant) {
        if packet.len() + TRAILER_LEN > self.scratch.len() {
            return;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf[..packet.len()].copy_from_slice(packet);
        match self
            .pit
            .handle_packet(&flow, Origin::Local, &mut buf, packet.len(), now)
        {
            Ok(Disposition::Forward { len }) => {
                if let Some(ge) = self.pit.lookup(&flow).and_then(|(_, e)| e.peer()) {
                    self.released = true;
                    // Natively when both ends steer the flow (steering.rs),
                    // else QUIC, which is always there. A plain flow of
                    // real addresses goes on the wire as it is (real.rs).
                    if self.plain_on_wire(&flow) {
                        self.push_output(Output::SendNative(buf[..len].to_vec()));
                    } else if !self.moves.holding.is_empty() && self.hold_for_move(ge, &buf[..len])
                    {
                        // Behind the move's held packets, as from the TUN.
                    } else if let Some((start, end)) = self.try_native(ge, &mut buf, len, now) {
                        self.counters.data_out += 1;
                        self.push_output(Output::SendNative(buf[start..end].to_vec()));
                    } else {
                        self.send_trial_copy(ge, &buf[..len], now);
                        self.send_frame(ge, FrameKind::Data, buf[..len].to_vec());
                    }
                }
            }
            Ok(Disposition::Drop) => self.queue_unreachable(packet, Unreachable::Prohibited),
            _ => self.counters.policy_drops += 1,
        }
        self.scratch = buf;
    }

    pub(super) fn route_transmit(&mut self, t: dprp::Transmit) {
        self.counters.control_out += 1;
        // An answer to a message that came on the IP path goes back on it
        // (to the NAT's port when one rewrote the sender's 7717).
        if (t.dst.port() == super::PROBE_PORT || self.paths.dprp_sources.contains(&t.dst))
            && self.send_dprp_to(t.dst, &t.payload)
        {
            return;
        }
        // A gateway passing a negotiation on: its address toward the next
        // hop is being looked up (transit.rs).
        if self.hold_transit_transmit(&t) {
            return;
        }
        // Answers go back to whoever sent the message (a GE the carrier authenticated).
        if let Some(ge) = self.peers.by_from(t.dst) {
            self.send_control(ge, t.payload);
            return;
        }
        // An IPv6 overlay address stands for its GE's IPv4 one (note 59).
        let Some(ip) = self.cfg.net6.as_v4(t.dst.ip()) else {
            self.counters.no_route += 1;
            return;
        };
        if let Some(ge) = self.owner_of(ip)
            && self.peers.target(ge).is_some()
        {
            // A new negotiation toward the flow's destination: on the IP
            // path when the peer's is native, else over QUIC.
            if !self.send_dprp_native(ge, &t.payload) {
                self.send_control(ge, t.payload);
            }
            return;
        }
        if !in_net(ip, self.cfg.overlay_net) {
            self.counters.no_route += 1;
            return;
        }
        // Unknown owner or no address yet: ask the directory, keep the
        // message for its answer (DPRP retransmits anyway).
        if self.pending.len() >= PENDING_PEERS && !self.pending.contains_key(&ip) {
            self.counters.pending_drops += 1;
            return;
        }
        let q = self.pending.entry(ip).or_default();
        if q.len() < PENDING_PER_PEER {
            q.push(t.payload);
        } else {
            self.counters.pending_drops += 1;
        }
        self.push_output(Output::DirectoryLookup(ip));
    }

    pub(super) fn send_control(&mut self, ge: GeId, payload: Vec<u8>) {
        self.send_frame(ge, FrameKind::Control, payload);
    }

    pub(super) fn send_frame(&mut self, ge: GeId, kind: FrameKind, payload: Vec<u8>) {
        let Some(p) = self.peers.get(ge).filter(|p| !p.target.addrs.is_empty()) else {
            self.counters.no_route += 1;
            return;
        };
        // Control messages and released first packets take QUIC: they are
        // not on the data path, and QUIC is always there.
        let out = Output::Send {
            target: PeerTarget::clone(&p.target),
            path: CarrierKind::Quic,
            kind,
            payload,
        };
        if kind == FrameKind::Data {
            self.counters.data_out += 1;
        }
        self.push_output(out);
    }

    pub(super) fn queue_unreachable(&mut self, packet: &[u8], why: Unreachable) {
        let as_sent = self.quote_as_sent(packet);
        let packet = as_sent.as_deref().unwrap_or(packet);
        if let Some(n) = icmp::unreachable(packet, why, &mut self.icmp_buf) {
            self.counters.icmp_sent += 1;
            self.counters.tun_out += 1;
            let p = self.icmp_buf[..n].to_vec();
            self.push_output(Output::Tun(p));
        }
    }

    pub(super) fn push_output(&mut self, o: Output) {
        if self.outputs.len() < MAX_OUTPUTS {
            self.outputs.push_back(o);
        } else {
            self.counters.output_drops += 1;
        }
    }
}

pub(super) fn unreachable_for(reason: &FailReason) -> Unreachable {
    match reason {
        FailReason::Timeout => Unreachable::NoAnswer,
        _ => Unreachable::Prohibited,
    }
}

/// Whether `ip` lies in the prefix `(net, len)`.
pub fn in_net(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_membership() {
        let net = (Ipv4Addr::new(100, 64, 0, 0), 10);
        assert!(in_net(Ipv4Addr::new(100, 127, 1, 1), net));
        assert!(!in_net(Ipv4Addr::new(100, 128, 0, 1), net));
        assert!(in_net(
            Ipv4Addr::new(1, 2, 3, 4),
            (Ipv4Addr::UNSPECIFIED, 0)
        ));
    }

    #[test]
    fn timeouts_answer_host_unreachable_and_policy_answers_prohibited() {
        assert_eq!(unreachable_for(&FailReason::Timeout), Unreachable::NoAnswer);
        assert_eq!(
            unreachable_for(&FailReason::Dropped { by: GeId(3) }),
            Unreachable::Prohibited
        );
    }
}
