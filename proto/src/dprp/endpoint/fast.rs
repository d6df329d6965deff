//! Fast open in the endpoint: opening a flow on a pair epoch, answering a
//! peer's FOP, the opener's retransmissions and its fallback to a
//! negotiation (docs/PROTOCOL.md, "Fast open"; the epochs themselves are in
//! `dprp::epoch`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Endpoint, Machine, Verdict};
use crate::action::Action;
use crate::dprp::epoch::{EpochId, FastOpen, MAX_OPENINGS};
use crate::dprp::msg::{FirstPacket, Fok, Fop, Message, Nak, NegotiationId, RefuseCode};
use crate::dprp::transcript::{self as tr, Hash};
use crate::dprp::{DPRP_PORT, Established, Event, FailReason, Position, Timer, Transmit};
use crate::flow::FlowId;
use crate::ge::GeId;
use crate::{Error, Result};

/// The opener's side of one fast-opened flow: the FOP, sent again until
/// the FOK comes; removed at the FOK or when the flow falls back.
pub(crate) struct FastOpener {
    pub(crate) flow: FlowId,
    epoch: EpochId,
    index: u32,
    peer: GeId,
    fop: Vec<u8>,
    /// What a NAK refusing the FOP signs.
    h_f: Hash,
    rto: Duration,
    retries_left: u32,
    retransmit_at: Instant,
    /// A copy of the packet that opened the flow: if the fast open fails,
    /// the negotiation that replaces it carries it (it went under keys the
    /// peer never got, or still waits in the node).
    first: Vec<u8>,
    /// The peer takes FOPs with the first packet inside (its epoch says).
    takes_first: bool,
}

impl FastOpener {
    pub(crate) fn next_timeout(&self) -> Option<(Instant, Timer)> {
        Some((self.retransmit_at, Timer::Retransmit))
    }
}

impl Endpoint {
    /// Opens `flow` on the pair epoch with the GE the directory names for
    /// its destination, if there is a live one: the FOP and the packet go
    /// out at once. `None`: no epoch fits, negotiate.
    pub(super) fn try_fast_open(
        &mut self,
        flow: FlowId,
        packet: Vec<u8>,
        now: Instant,
    ) -> Option<Verdict> {
        // A VIN's flow needs its gateway's port reservation: negotiated.
        let l = &self.cfg.limits;
        if !self.cfg.fast_open
            || self.vins.contains_key(&flow.dst)
            || self.initiated >= l.max_initiated.min(l.max_negotiations)
        {
            return None;
        }
        // A negotiation of this connection ended moments ago (its machine
        // lingers to absorb retransmissions, at both ends): the peer would
        // refuse a FOP for it as a late one, so it is negotiated again (an
        // entry evicted from a full PIT, or aged out, reopening).
        if self.negotiation_of(&flow).is_some() {
            return None;
        }
        let owner = self.directory_owner(flow.dst)?;
        let own = self.ge();
        let unix_now = self.unix_now(now);
        let e = self.epochs.for_opening(owner, now)?;
        // What a negotiation would check of the peer, again: revocation,
        // floor and validity (a short-lived credential may have expired).
        let usable = e.peer.covers(flow.dst)
            && self.peers.check(&e.peer, unix_now).is_ok()
            && self.keys.get(e.group, e.version).is_some();
        if !usable {
            return None;
        }
        // The epoch's last stretch: this flow is negotiated, and its
        // negotiation leaves the pair the next epoch (note 70).
        if e.renewal_due(now) {
            self.stats.epoch_renewals += 1;
            tracing::debug!(%flow, peer = %owner, "pair epoch ends soon: negotiating this flow to renew it");
            return None;
        }
        let id = loop {
            let mut b = [0u8; 8];
            self.rng.fill(&mut b).ok()?;
            let id = NegotiationId(u64::from_be_bytes(b));
            if !self.machines.contains_key(&id) {
                break id;
            }
        };
        let (index, keys) = e.open(own, &flow)?;
        let mut fop = Fop {
            id,
            epoch: e.id,
            index,
            age_ms: e.age_ms(now),
            flow,
            tag: [0; 32],
            first: None,
        };
        fop.tag = e.fop_tag(own, &fop);
        let (group, version, serial, epoch) = (e.group, e.version, e.peer.serial, e.id);
        let takes_first = e.first;
        let h_f = tr::fop_hash(&fop.core());
        let bytes = Message::Fop(fop).encode().ok()?;
        let first = packet.clone();
        let dst = SocketAddr::new(flow.dst, DPRP_PORT);
        self.transmits.push_back(Transmit {
            dst,
            payload: bytes.clone(),
        });
        let rto = self.cfg.timing.initial_rto;
        let m = FastOpener {
            flow,
            epoch,
            index,
            peer: owner,
            fop: bytes,
            h_f,
            rto,
            retries_left: self.cfg.timing.fast_open_retries,
            retransmit_at: now + rto,
            first,
            takes_first,
        };
        self.insert_machine(id, Machine::Fast(Box::new(m)));
        self.stats.fast_opened += 1;
        tracing::debug!(%id, %flow, peer = %owner, index, "fast open");
        self.events.push_back(Event::Established(Established {
            negotiation: id,
            flow,
            position: Position::Initiator,
            action: Action::Protect(group),
            peer: owner,
            key_version: Some(version),
            keys: Some(keys),
            peer_options: Vec::new(),
            peer_serial: Some(serial),
            natf: None,
            started: Some(now),
            fast: Some(FastOpen {
                epoch,
                index,
                opener: own,
            }),
            first: None,
            epoch: None,
        }));
        self.events.push_back(Event::Release {
            flow,
            packets: vec![packet],
        });
        Some(Verdict::Held)
    }

    /// Whether fast open `id`'s peer takes a FOP with the first packet
    /// inside (it answered option kind 5 when the epoch was made; an older
    /// node did not).
    pub fn fast_open_takes_first(&self, id: NegotiationId) -> bool {
        matches!(self.machines.get(&id), Some(Machine::Fast(m)) if m.takes_first)
    }

    /// Puts `packet` (the flow's first, sealed under the keys of fast open
    /// `id`'s entry) into that fast open's FOP, for its first sending and
    /// every retransmission (docs/PROTOCOL.md, "The first packet in its
    /// FOP"); `steered`: this node steers the flow's inbound native
    /// packets already, so the peer may answer natively at once. The
    /// retransmission timer starts again from `now`. Returns the FOP to
    /// send now.
    pub fn attach_first(
        &mut self,
        id: NegotiationId,
        packet: &[u8],
        steered: bool,
        now: Instant,
    ) -> Result<Vec<u8>> {
        let Some(Machine::Fast(m)) = self.machines.get_mut(&id) else {
            return Err(Error::UnknownNegotiation);
        };
        if !m.takes_first {
            return Err(Error::UnexpectedMessage(
                "a first packet in a FOP to a peer that does not take one",
            ));
        }
        let Message::Fop(mut fop) = Message::decode(&m.fop)? else {
            return Err(Error::UnexpectedMessage("a fast open without its FOP"));
        };
        fop.first = Some(FirstPacket {
            steered,
            packet: packet.to_vec(),
        });
        let bytes = Message::Fop(fop).encode()?;
        m.fop = bytes.clone();
        m.retransmit_at = now + m.rto;
        self.stats.fast_first_sent += 1;
        Ok(bytes)
    }

    /// `fop`, a FOP this GE sent with its flow's first packet inside and
    /// not marked steered, marked steered: sent once this node steers the
    /// flow's inbound native packets, it tells the peer (which answers the
    /// copy like a retransmission) that it may answer natively now
    /// ([`Event::FastSteered`] there; docs/PROTOCOL.md, "The steered
    /// notice"). The mark lies outside the tag: no key is needed.
    pub fn mark_steered(&mut self, fop: &[u8]) -> Result<Vec<u8>> {
        let Message::Fop(mut f) = Message::decode(fop)? else {
            return Err(Error::UnexpectedMessage("a steered notice of no FOP"));
        };
        let Some(first) = f.first.as_mut() else {
            return Err(Error::UnexpectedMessage(
                "a steered notice of a FOP without its first packet",
            ));
        };
        first.steered = true;
        let bytes = Message::Fop(f).encode()?;
        self.stats.fast_steered_sent += 1;
        Ok(bytes)
    }

    /// A peer's FOP, from the underlay address `from`.
    pub(super) fn on_fop(&mut self, from: SocketAddr, fop: Fop, now: Instant) -> Result<()> {
        let dst_ours = self.protects(fop.flow.dst);
        let own = self.ge();
        let unix_now = self.unix_now(now);
        // A negotiation of this connection runs or just ended here (this
        // GE healing it, or its peer's DDE): its keys are the flow's, and
        // a late FOP must not replace them with others.
        let negotiated = self.negotiation_of(&fop.flow).is_some();
        let own_fast = self.fast_open_of(&fop.flow);
        let Some(e) = self.epochs.get_mut(&fop.epoch, now) else {
            self.stats.fast_unknown_epoch += 1;
            self.nak_fop(from, &fop, RefuseCode::UnknownEpoch, now);
            return Err(Error::UnknownEpoch);
        };
        e.verify_fop(&fop)?;
        let opener = e.peer_ge();
        if let Some(fok) = e.answered(fop.index, &fop.flow)? {
            // A retransmission: the flow is installed, its FOK was lost.
            let payload = fok.to_vec();
            self.transmits.push_back(Transmit { dst: from, payload });
            // Or the opener's notice that it steers the flow now (its
            // first FOP left before that: note 75). Answered with the FOK
            // all the same: should the FOK have been lost, this brings it
            // a timeout sooner (the opener takes a second one silently).
            if fop.first.as_ref().is_some_and(|f| f.steered) {
                self.stats.fast_steered_received += 1;
                self.events.push_back(Event::FastSteered {
                    flow: fop.flow,
                    peer: opener,
                    opening: fop.id,
                });
            }
            return Ok(());
        }
        if fop.index >= MAX_OPENINGS {
            return Err(Error::invalid("FOP index", "past the epoch's openings"));
        }
        // Withheld and delivered late (the connection may have been
        // negotiated since): refused, like a replay.
        if !e.is_fresh(fop.age_ms, now) {
            return Err(Error::UnexpectedMessage("a stale FOP"));
        }
        let peer = e.peer_ge();
        if negotiated {
            return Err(Error::UnexpectedMessage(
                "a FOP for a flow being negotiated",
            ));
        }
        // Both ends fast-opened this connection at once: the lower GE id's
        // opening wins at both (as in a negotiation's simultaneous open).
        if let Some(id) = own_fast {
            if own < peer {
                return Err(Error::UnexpectedMessage(
                    "simultaneous fast open: this GE's opening wins",
                ));
            }
            self.remove_machine(id);
        }
        let Some(e) = self.epochs.get_mut(&fop.epoch, now) else {
            return Err(Error::UnknownEpoch);
        };
        if !self.fast_by_ge.take(peer, now) {
            self.stats.rate_limited += 1;
            return Err(Error::RateLimited("fast opens from this GE"));
        }
        // The checks a DDE and an MPIT get (docs/PROTOCOL.md, "Procedures").
        if !e.peer.covers(fop.flow.src) {
            self.stats.not_owner += 1;
            return Err(Error::NotOwner {
                ge: peer.0,
                addr: fop.flow.src,
            });
        }
        if !dst_ours {
            return Err(Error::invalid("FOP flow", "destination not behind this GE"));
        }
        let (group, version, serial) = (e.group, e.version, e.peer.serial);
        // A first packet only where both ends offered option kind 5: from
        // an opener that ignores what the epoch says, the flow is installed
        // and its packet dropped (it comes again as data or not at all).
        let first = fop.first.filter(|_| e.first);
        if let Err(err) = self.peers.check(&e.peer, unix_now) {
            self.epochs.end(|e| e.peer_ge() == peer);
            return Err(err);
        }
        if self.keys.get(group, version).is_none() {
            self.epochs
                .end(|e| e.group == group && e.version == version);
            return Err(Error::UnknownKeyVersion {
                group: group.0,
                version: version.0,
            });
        }
        let keys = e.accept_keys(fop.index, &fop.flow);
        let mut fok = Fok {
            id: fop.id,
            epoch: fop.epoch,
            index: fop.index,
            tag: [0; 32],
        };
        fok.tag = e.fok_tag(peer, &fok);
        let bytes = Message::Fok(fok).encode()?;
        e.mark(fop.index, fop.flow, bytes.clone());
        self.transmits.push_back(Transmit {
            dst: from,
            payload: bytes,
        });
        self.stats.fast_accepted += 1;
        self.stats.established += 1;
        if first.is_some() {
            self.stats.fast_first_received += 1;
        }
        tracing::debug!(id = %fop.id, flow = %fop.flow, %peer, index = fop.index, "fast open accepted");
        self.events.push_back(Event::Established(Established {
            negotiation: fop.id,
            flow: fop.flow,
            position: Position::Responder,
            action: Action::Protect(group),
            peer,
            key_version: Some(version),
            keys: Some(keys),
            peer_options: Vec::new(),
            peer_serial: Some(serial),
            natf: None,
            started: None,
            fast: Some(FastOpen {
                epoch: fop.epoch,
                index: fop.index,
                opener: peer,
            }),
            first,
            epoch: None,
        }));
        Ok(())
    }

    /// The FOK of this GE's fast open `id`.
    pub(super) fn on_fok(&mut self, fok: Fok, now: Instant) -> Result<()> {
        let Some(Machine::Fast(m)) = self.machines.get(&fok.id) else {
            // A second FOK for a fast open confirmed already (the answer
            // to a steered notice, note 75, or to a retransmission): taken
            // silently if it is the peer's.
            let own = self.ge();
            return match self.epochs.get_mut(&fok.epoch, now) {
                Some(e) if e.verify_fok(own, &fok).is_ok() => {
                    self.stats.fast_fok_repeats += 1;
                    Ok(())
                }
                _ => Err(Error::UnknownNegotiation),
            };
        };
        if m.epoch != fok.epoch || m.index != fok.index {
            return Err(Error::UnexpectedMessage("a FOK for another fast open"));
        }
        let flow = m.flow;
        let own = self.ge();
        let e = self
            .epochs
            .get_mut(&fok.epoch, now)
            .ok_or(Error::UnknownEpoch)?;
        e.verify_fok(own, &fok)?;
        self.remove_machine(fok.id);
        self.stats.fast_confirmed += 1;
        self.events.push_back(Event::FastConfirmed { flow });
        Ok(())
    }

    /// A signed NAK to this GE's fast open `id`: a gateway on the path, or
    /// the peer that no longer has the epoch. The flow is negotiated.
    pub(super) fn on_fast_nak(&mut self, id: NegotiationId, nak: Nak, now: Instant) -> Result<()> {
        let Some(Machine::Fast(m)) = self.machines.get(&id) else {
            return Err(Error::UnknownNegotiation);
        };
        let (h_f, peer) = (m.h_f, m.peer);
        let unix_now = self.unix_now(now);
        let refuser = self
            .peers
            .verify(&nak.credential, &self.cfg.ca_public, unix_now)?;
        let tbs = [tr::NAK_SIG, &h_f[..], &nak.core()?].concat();
        refuser.verify_node_signature(&tbs, &nak.signature, "NAK")?;
        let by = refuser.info.id;
        match nak.code {
            // Any GE on the route may ask for the negotiation: that is
            // what consulting the gateways on the path means.
            RefuseCode::GatewayOnPath => {
                self.epochs.end(|e| e.peer_ge() == peer);
            }
            RefuseCode::UnknownEpoch if by == peer => {
                let epoch = match self.machines.get(&id) {
                    Some(Machine::Fast(m)) => m.epoch,
                    _ => return Err(Error::UnknownNegotiation),
                };
                self.epochs.end(|e| e.id == epoch);
            }
            _ => {
                self.stats.stranger_naks += 1;
                return Err(Error::NakFromStranger(by.0));
            }
        }
        self.fast_failed(id, FailReason::Refused { by, code: nak.code }, now);
        Ok(())
    }

    /// A FOP this gateway intercepted on its way to another GE: the flow
    /// must be negotiated, with this gateway on its path. Answered with a
    /// signed NAK; the FOP goes no further.
    pub(super) fn on_transit_fop(&mut self, from: SocketAddr, fop: &Fop, now: Instant) {
        self.stats.fast_refused_in_transit += 1;
        self.nak_fop(from, fop, RefuseCode::GatewayOnPath, now);
    }

    /// Retransmits the FOP of fast open `id`, or, out of retries, falls
    /// back to a negotiation.
    pub(super) fn fast_timeout(&mut self, id: NegotiationId, now: Instant) {
        let max_rto = self.cfg.timing.max_rto;
        let Some(Machine::Fast(m)) = self.machines.get_mut(&id) else {
            return;
        };
        if m.retransmit_at > now {
            return;
        }
        if m.retries_left > 0 {
            m.retries_left -= 1;
            m.rto = (m.rto * 2).min(max_rto);
            m.retransmit_at = now + m.rto;
            let t = Transmit {
                dst: SocketAddr::new(m.flow.dst, DPRP_PORT),
                payload: m.fop.clone(),
            };
            self.transmits.push_back(t);
            return;
        }
        // The peer never confirmed: it may have lost the epoch.
        let epoch = m.epoch;
        self.epochs.end(|e| e.id == epoch);
        self.fast_failed(id, FailReason::Timeout, now);
    }

    /// Ends fast open `id`: the node drops the flow's entry
    /// ([`Event::FastOpenFailed`]) and a negotiation starts for it, so its
    /// next packets are held for that.
    fn fast_failed(&mut self, id: NegotiationId, reason: FailReason, now: Instant) {
        let Some(Machine::Fast(m)) = self.remove_machine(id) else {
            return;
        };
        let flow = m.flow;
        self.stats.fast_fallbacks += 1;
        tracing::debug!(%id, %flow, %reason, "fast open failed; negotiating the flow");
        self.events
            .push_back(Event::FastOpenFailed { flow, reason });
        if !self.flows.contains_key(&flow) {
            match self.begin(flow, Vec::new(), now) {
                // The opening packet goes again, under the negotiated keys.
                Ok(_) => {
                    let _ = self.hold(flow, m.first);
                }
                // Refused now (busy, rate limited): the flow's next packet
                // tries again.
                Err(e) => {
                    tracing::debug!(%flow, error = %e, "negotiation after a failed fast open not started");
                }
            }
        }
    }

    /// The running fast open of `flow` or its reverse, if any.
    pub(super) fn fast_open_of(&self, flow: &FlowId) -> Option<NegotiationId> {
        self.machine_of(flow, |m| matches!(m, Machine::Fast(_)))
    }

    /// A negotiation of `flow` or its reverse that runs or lingers here.
    pub(super) fn negotiation_of(&self, flow: &FlowId) -> Option<NegotiationId> {
        self.machine_of(flow, |m| {
            matches!(m, Machine::Initiator(_) | Machine::Responder(_))
        })
    }

    /// A negotiated entry for `flow` (or its reverse) replaces a
    /// fast-opened one: its FOP is not sent again and no
    /// [`Event::FastOpenFailed`] can remove the new entry.
    pub(super) fn cancel_fast(&mut self, flow: &FlowId) {
        if let Some(id) = self.fast_open_of(flow) {
            self.remove_machine(id);
        }
    }

    /// Sends a signed NAK for `fop` to `to`, within the source's DDE budget
    /// (a signature per forged FOP would otherwise be free to ask for).
    fn nak_fop(&mut self, to: SocketAddr, fop: &Fop, code: RefuseCode, now: Instant) {
        if !self.by_source.take(to.ip(), now) || !self.fop_naks.take((), now) {
            self.stats.rate_limited += 1;
            return;
        }
        let mut nak = Nak {
            id: fop.id,
            code,
            credential: self.own_bytes.clone(),
            signature: [0; 64],
        };
        let Ok(core) = nak.core() else { return };
        let h_f = tr::fop_hash(&fop.core());
        nak.signature = self
            .cfg
            .node_key
            .sign(&[tr::NAK_SIG, &h_f[..], &core].concat());
        if let Ok(payload) = Message::Nak(nak).encode() {
            self.transmits.push_back(Transmit { dst: to, payload });
        }
    }
}
