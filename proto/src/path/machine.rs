//! [`PathMachine`], the per-peer path state machine.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::probe::{self, ProbeKey, ProbeKind, ProbeRepr, ProbeView};
use super::{
    Force, MAX_CANDIDATES, PathConfig, PathEvent, PathKind, PathStats, PathStatus, Reason, Timer,
    Transmit, Unavailable,
};
use crate::ge::GeId;
use crate::pccom::ReplayWindow;
use crate::{Error, Result};

/// The most datagrams waiting in [`PathMachine::poll_transmit`].
const MAX_QUEUED: usize = 64;
/// Outstanding-probe table size (a power of two; slots by `seq % SLOTS`).
const SLOTS: usize = 32;
/// Native copies of QUIC-carried packets a trial sends per probe round:
/// enough for the peer's count to show whether native data gets through,
/// few enough that a trial costs little bandwidth.
pub const TRIAL_COPIES: u32 = 64;
/// A moved message unacknowledged this long is sent again (doubling).
pub const MOVED_RETRY: Duration = Duration::from_millis(100);
/// Moved messages per move, the first included: with [`MOVED_RETRY`]
/// doubling, the last goes 1.5 s after the move.
pub const MOVED_TRIES: u32 = 5;

/// The path state machine of one peer: which carrier its packets take.
///
/// Rules (docs/DESIGN-NOTES.md note 11 has the reasons):
/// - Start in `Probing` (carrier QUIC): one probe to every candidate address
///   per round; the first authenticated answer switches to native and fixes
///   that candidate. `fail_after` rounds without an answer fall back to QUIC.
/// - In `Native`, probe the chosen address every `keepalive_interval` when
///   idle, and every [`PathConfig::active_interval`] while native data is
///   being sent or after a loss, so a dead path is noticed within
///   `detect_budget` even for one-way traffic. A round counts as lost when no
///   answer came within `probe_timeout`; an answer also fails its *data
///   check* when at least `min_data_packets` native packets were sent before
///   the probe since the last checked answer and the peer took in none of
///   them (the answer carries the peer's count): a firewall that lets UDP
///   probes through but drops the raw packets, or a middlebox stripping the
///   trailer. `fail_after` consecutive lost rounds or failed checks fall back.
/// - In `Fallback` (carrier QUIC), retry native with one round after a delay
///   that doubles from `retry_initial` up to `retry_max`. An answer starts a
///   *trial*, not a switch: probes passing proved nothing the last time
///   (a firewall may pass the UDP probes and drop the raw packets). During
///   the trial the carrier stays QUIC and the node also sends up to
///   [`TRIAL_COPIES`] native copies of its packets per round
///   ([`PathMachine::take_trial_copy`]); the first answer showing the peer
///   took native data in switches to native, one showing it took none of
///   `min_data_packets` copies (or a lost round, or `fail_after` rounds
///   without a verdict) ends the trial and the backoff goes on. A trial
///   with nothing to send goes on, probing at the keepalive interval,
///   until there is data to test. A flow never waits on a path being
///   tested. The delay resets after native held for `stable_after`.
/// - `Force::Quic` never probes (and answers no probes: native data would
///   not be taken in); `Force::Native` always reports native but still
///   probes and shows failures in its reason.
///
/// Drive it like every core here: after each `handle_*` drain
/// [`PathMachine::poll_transmit`] (send each payload as a UDP datagram from
/// port 7717 on the underlay) and [`PathMachine::poll_event`], then re-arm
/// one timer at [`PathMachine::poll_timeout`].
pub struct PathMachine {
    cfg: PathConfig,
    local: GeId,
    peer: GeId,
    key: ProbeKey,
    epoch: Instant,
    phase: Phase,
    current: PathKind,
    reason: Reason,
    candidates: Vec<SocketAddr>,
    /// The candidate native packets go to.
    active: Option<SocketAddr>,
    /// Consecutive lost rounds or failed data checks.
    losses: u32,
    /// Probing: next round; Fallback: next retry.
    due: Option<Instant>,
    backoff: Duration,
    native_since: Option<Instant>,
    /// Native carried data to this peer at least once.
    was_native: bool,
    last_round_at: Instant,
    round: u64,
    /// The native send count when the running trial started.
    trial_tx: u64,
    /// Answered rounds of the running trial without a verdict.
    trial_rounds: u32,
    /// Native copies the running trial may still send this round.
    trial_copies: u32,
    next_seq: u64,
    slots: [Option<Slot>; SLOTS],
    peer_probes: ReplayWindow,
    tx_native: u64,
    rx_native: u64,
    last_native_send: Option<Instant>,
    last_native_receive: Option<Instant>,
    last_peer_probe: Option<Instant>,
    check: DataCheck,
    rtt: Option<Duration>,
    reflexive: Option<SocketAddr>,
    answer_source: Option<SocketAddr>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PathEvent>,
    stats: PathStats,
    /// The moved message waiting for its ack.
    moved: Option<MovedPending>,
}

/// When a waiting moved message is sent again (or given up).
fn moved_due(p: &MovedPending) -> Instant {
    p.sent_at + MOVED_RETRY * (1 << (p.tries - 1))
}

/// A moved message (Binding Update) this machine sent and the peer has not
/// acknowledged yet.
#[derive(Debug, Clone, Copy)]
struct MovedPending {
    seq: u64,
    timestamp: u64,
    sent_at: Instant,
    tries: u32,
}

impl fmt::Debug for PathMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathMachine")
            .field("peer", &self.peer)
            .field("status", &self.status().to_string())
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl PathMachine {
    /// A machine for the path from `local` to `peer`. `probe_key` is the
    /// per-peer probe key; `candidates` the peer's underlay addresses with
    /// the probe port (7717); `unix_now` wall-clock seconds, which start the
    /// probe sequence so a restarted node's probes pass the peer's replay
    /// window. Probes to every candidate are queued at once (unless forced
    /// to QUIC): drain [`PathMachine::poll_transmit`].
    pub fn new(
        cfg: PathConfig,
        local: GeId,
        peer: GeId,
        probe_key: &[u8; 32],
        candidates: Vec<SocketAddr>,
        unix_now: u64,
        now: Instant,
    ) -> Self {
        let backoff = cfg.retry_initial;
        let mut m = Self {
            local,
            peer,
            key: ProbeKey::new(probe_key),
            epoch: now,
            phase: Phase::Probing,
            current: PathKind::Quic,
            reason: Reason::Probing,
            candidates: Vec::with_capacity(MAX_CANDIDATES),
            active: None,
            losses: 0,
            due: None,
            backoff,
            native_since: None,
            was_native: false,
            last_round_at: now,
            round: 0,
            trial_tx: 0,
            trial_rounds: 0,
            trial_copies: 0,
            next_seq: (unix_now & ((1 << 39) - 1)) << 24,
            slots: [None; SLOTS],
            peer_probes: ReplayWindow::new(),
            tx_native: 0,
            rx_native: 0,
            last_native_send: None,
            last_native_receive: None,
            last_peer_probe: None,
            check: DataCheck::default(),
            rtt: None,
            reflexive: None,
            answer_source: None,
            transmits: VecDeque::with_capacity(MAX_QUEUED),
            events: VecDeque::with_capacity(4),
            stats: PathStats::default(),
            moved: None,
            cfg,
        };
        match m.cfg.force {
            Force::Quic => {
                m.phase = Phase::Off;
                m.reason = Reason::Forced;
            }
            Force::Native => {
                m.current = PathKind::Native;
                m.reason = Reason::Forced;
            }
            Force::Auto => {}
        }
        m.set_candidates_inner(candidates);
        m.restart(now);
        m.events.clear();
        m
    }

    /// The carrier to use for this peer's packets now.
    pub fn current(&self) -> PathKind {
        self.current
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// Carrier, reason and force, with the status text as `Display`.
    pub fn status(&self) -> PathStatus {
        PathStatus {
            path: self.current,
            reason: self.reason,
            force: self.cfg.force,
        }
    }

    /// True while a trial runs: the carrier is QUIC, and the node should
    /// also send native copies of its packets (see
    /// [`PathMachine::take_trial_copy`]).
    pub fn in_trial(&self) -> bool {
        self.phase == Phase::Trial
    }

    /// During a trial: true (and one copy fewer left this round) when the
    /// node should send a native copy of the packet it is sending on QUIC,
    /// then call [`PathMachine::handle_native_data_sent`] for it.
    pub fn take_trial_copy(&mut self) -> bool {
        if self.phase != Phase::Trial || self.trial_copies == 0 {
            return false;
        }
        self.trial_copies -= 1;
        true
    }

    /// Where native packets go (the candidate that answered first).
    pub fn native_addr(&self) -> Option<SocketAddr> {
        self.active
    }

    /// This node's address as the peer saw the last answered probe come
    /// from (the reflexive address, for NAT traversal).
    pub fn reflexive_addr(&self) -> Option<SocketAddr> {
        self.reflexive
    }

    /// The source address of the last accepted answer.
    pub fn answer_source(&self) -> Option<SocketAddr> {
        self.answer_source
    }

    /// The round-trip time of the last answered probe.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// When the last authenticated native data packet from the peer arrived.
    pub fn last_native_receive(&self) -> Option<Instant> {
        self.last_native_receive
    }

    /// When the peer's last probe was answered.
    pub fn last_peer_probe(&self) -> Option<Instant> {
        self.last_peer_probe
    }

    /// Counters.
    pub fn stats(&self) -> PathStats {
        self.stats
    }

    /// The peer's candidate addresses.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    /// Replaces the candidate addresses (duplicates dropped, at most
    /// [`MAX_CANDIDATES`]). If the address in use is gone, probing restarts
    /// (on QUIC, unless forced native).
    pub fn set_candidates(&mut self, candidates: Vec<SocketAddr>, now: Instant) {
        self.set_candidates_inner(candidates);
        let gone = self.active.is_some_and(|a| !self.candidates.contains(&a));
        let empty = self.candidates.is_empty();
        match self.phase {
            Phase::Native | Phase::Trial | Phase::Fallback | Phase::Probing if gone || empty => {
                self.restart(now);
            }
            Phase::NoCandidates if !empty => self.restart(now),
            _ => {}
        }
    }

    /// A datagram on the probe port with [`probe::is_probe`] true: dispatches
    /// on its type to [`PathMachine::handle_probe`] or
    /// [`PathMachine::handle_probe_answer`].
    pub fn handle_datagram(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) -> Result<()> {
        match bytes.get(1) {
            Some(&probe::TYPE_ANSWER) => self.handle_probe_answer(bytes, from, now),
            Some(&probe::TYPE_NOTICE) => self.handle_notice(bytes, now),
            Some(&probe::TYPE_MOVED) => self.handle_moved(bytes, from, now),
            Some(&probe::TYPE_MOVED_ACK) => self.handle_moved_ack(bytes),
            _ => self.handle_probe(bytes, from, now),
        }
    }

    /// The peer's probe arrived from `from`: queues the answer to `from`,
    /// unless native is forced off or unavailable here (native data would
    /// not be taken in, so the peer must not switch to it). Refused probes
    /// (malformed, bad tag, other GEs, replayed) change nothing but a counter.
    pub fn handle_probe(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) -> Result<()> {
        let repr = self.authenticate_fresh(bytes, ProbeKind::Probe)?;
        if matches!(self.phase, Phase::Off | Phase::Unavailable) {
            return Ok(());
        }
        self.queue_reply(ProbeKind::Answer, &repr, from)?;
        self.stats.answers_sent += 1;
        let heard_before = self
            .last_peer_probe
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.keepalive_interval);
        self.last_peer_probe = Some(now);
        let known_ip = self.candidates.iter().any(|c| c.ip() == from.ip());
        if !self.candidates.contains(&from) && self.candidates.len() < MAX_CANDIDATES {
            // A peer-reflexive candidate (ICE's term): the peer's NAT
            // mapped its probe port there, the one place probes get in.
            self.candidates.push(from);
        }
        // The peer probes from an address it never had, not the native
        // path's: it moved (a fresh, authenticated probe: only the peer can
        // say so, and not twice). The old address is unproven now: QUIC
        // carries the flows while the new one is probed, first. A peer
        // with several known addresses (a LAN and a NAT's) probing from
        // another of them is no move: its path stays. (When the directory
        // names the new address first, `set_candidates` restarts instead,
        // the old address being gone.)
        if matches!(self.phase, Phase::Native | Phase::Trial)
            && !known_ip
            && self.active.is_some_and(|a| a.ip() != from.ip())
        {
            self.stats.peer_moves += 1;
            if let Some(i) = self.candidates.iter().position(|c| *c == from) {
                let c = self.candidates.remove(i);
                self.candidates.insert(0, c);
            }
            self.backoff = self.cfg.retry_initial;
            self.restart(now);
            if self.phase == Phase::Probing {
                self.set_path(PathKind::Quic, Reason::PeerMoved);
            }
            return Ok(());
        }
        if !heard_before {
            self.punch(now);
        }
        Ok(())
    }

    /// A peer that was silent probes: it just came up, or its NAT just
    /// opened towards this node (its probe left through it), so probes this
    /// node sent before may have died there. While probing, this node sends
    /// the running round again at once (same round: its answer counts for
    /// it, and the round is lost only when every copy is), instead of
    /// waiting for the round to time out. After a first probing that never
    /// got through (`Fallback`, never native), it retries at once, the
    /// answer starting a trial as usual. At most once per peer silence, and
    /// not after a native path died, so a peer whose probes pass while this
    /// node's never do cannot defeat the backoff.
    fn punch(&mut self, now: Instant) {
        match self.phase {
            Phase::Probing => {
                self.stats.punches += 1;
                self.send_probes(now);
            }
            Phase::Fallback if !self.was_native => {
                self.stats.punches += 1;
                // A retry still out went before the peer's NAT opened; its
                // loss must not end the trial this round's answer starts.
                self.abandon_outstanding();
                self.send_round(now);
            }
            _ => {}
        }
    }

    /// The peer's fallback notice (it came over QUIC): its native path to
    /// this node failed, so this node's own is suspect too (a firewall that
    /// drops one kind of raw packet usually drops it both ways, and this end
    /// may send too little for its data check to notice soon). A native
    /// path falls back, to come back through a trial like any other;
    /// otherwise nothing changes. Refused notices change only a counter.
    pub fn handle_notice(&mut self, bytes: &[u8], now: Instant) -> Result<()> {
        self.authenticate_fresh(bytes, ProbeKind::Notice)?;
        self.stats.notices_received += 1;
        if self.phase == Phase::Native {
            self.native_down_quietly(Reason::PeerFellBack, now);
        }
        Ok(())
    }

    /// An answer to one of this machine's probes arrived from `from`.
    ///
    /// Accepted once, only for a probe still outstanding. An answer from
    /// another address than the one probed is accepted (the tag proves the
    /// peer sent it; its NAT or routing picked the source) and counted in
    /// `answers_from_other_address`: native packets keep going to the probed
    /// address, which the probe proved reachable, and
    /// [`PathMachine::answer_source`] keeps the source for NAT traversal.
    pub fn handle_probe_answer(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Result<()> {
        let repr = self.authenticate(bytes, ProbeKind::Answer)?;
        let i = slot_index(repr.seq);
        let Some(slot) = self.slots[i].filter(|s| s.seq == repr.seq) else {
            self.stats.replays_refused += 1;
            return Err(Error::UnsolicitedAnswer { seq: repr.seq });
        };
        if slot.timestamp != repr.timestamp {
            self.stats.misdirected += 1;
            return Err(Error::invalid("path probe timestamp", "not the probe's"));
        }
        match slot.state {
            SlotState::Answered => {
                self.stats.replays_refused += 1;
                return Err(Error::ProbeReplay { seq: repr.seq });
            }
            SlotState::Lost => {
                self.set_state(i, SlotState::Answered);
                self.stats.answers_late += 1;
                return Ok(());
            }
            SlotState::Pending => {}
        }
        self.set_state(i, SlotState::Answered);
        self.stats.probes_answered += 1;
        self.rtt = Some(Duration::from_micros(
            self.micros(now).saturating_sub(repr.timestamp),
        ));
        self.reflexive = repr.observed;
        self.answer_source = Some(from);
        if from != slot.dst {
            self.stats.answers_from_other_address += 1;
        }
        match self.phase {
            Phase::Probing | Phase::Fallback => {
                // The data check starts from here: nothing was sent natively
                // before this answer that the peer's count must show.
                self.check = DataCheck {
                    any: true,
                    seq: slot.seq,
                    rx: repr.rx_native,
                    tx: slot.tx_at_send,
                    delivered_tx: slot.tx_at_send,
                };
                self.active = Some(slot.dst);
                if self.phase == Phase::Probing {
                    self.native_up(now);
                } else {
                    self.start_trial(now);
                }
            }
            Phase::Native if Some(slot.dst) == self.active => {
                match self.data_check(&slot, repr.rx_native) {
                    Some(Verdict::Delivered | Verdict::Unknown) => self.losses = 0,
                    Some(Verdict::Stalled) => {
                        self.stats.data_checks_failed += 1;
                        self.losses += 1;
                        let reason = Reason::DataNotDelivered {
                            checks: self.losses,
                        };
                        if self.losses >= self.cfg.fail_after {
                            self.native_down(reason, now);
                        }
                    }
                    None => {}
                }
            }
            Phase::Trial if Some(slot.dst) == self.active => {
                match self.data_check(&slot, repr.rx_native) {
                    Some(Verdict::Delivered) => self.native_up(now),
                    Some(Verdict::Stalled) => {
                        self.stats.data_checks_failed += 1;
                        self.trial_failed(Reason::DataNotDelivered { checks: 1 }, now);
                    }
                    // Nothing sent during the trial yet: it goes on (with
                    // keepalive probes) until there is data to test. An
                    // idle end that switched on probes alone would put the
                    // next packets on a path that failed before: the lab
                    // saw exactly that for the side that sends only ACKs.
                    Some(Verdict::Unknown) if slot.tx_at_send == self.trial_tx => {}
                    Some(Verdict::Unknown) => {
                        self.trial_rounds += 1;
                        if self.trial_rounds >= self.cfg.fail_after {
                            let checks = self.trial_rounds;
                            self.trial_failed(Reason::DataNotDelivered { checks }, now);
                        }
                    }
                    None => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// An authenticated PCCOM packet from this peer arrived on the native
    /// path. Counted, and reported to the peer in answers to its probes.
    pub fn handle_native_data_received(&mut self, now: Instant) {
        self.rx_native += 1;
        self.last_native_receive = Some(now);
    }

    /// A packet to this peer went out on the native path. While this keeps
    /// happening the machine probes every active interval.
    pub fn handle_native_data_sent(&mut self, now: Instant) {
        self.tx_native += 1;
        self.last_native_send = Some(now);
    }

    /// What data-path workers carried natively for this peer since their
    /// last report: `sent` packets out (the last at `last_sent`) and
    /// `received` authenticated packets in (the last at `last_received`),
    /// as that many [`PathMachine::handle_native_data_sent`] and
    /// [`PathMachine::handle_native_data_received`] calls would count.
    pub fn handle_native_data(
        &mut self,
        sent: u64,
        last_sent: Option<Instant>,
        received: u64,
        last_received: Option<Instant>,
    ) {
        self.tx_native += sent;
        self.rx_native += received;
        if last_sent.is_some() {
            self.last_native_send = self.last_native_send.max(last_sent);
        }
        if last_received.is_some() {
            self.last_native_receive = self.last_native_receive.max(last_received);
        }
    }

    /// Native cannot work on this node (e.g. no raw-socket rights): QUIC
    /// until [`PathMachine::handle_native_available`]. Forced native stays
    /// native and shows the reason.
    pub fn handle_native_unavailable(&mut self, why: Unavailable, _now: Instant) {
        if self.phase == Phase::Off {
            return;
        }
        self.abandon_outstanding();
        self.phase = Phase::Unavailable;
        self.due = None;
        self.set_path(PathKind::Quic, Reason::Unavailable(why));
    }

    /// Native can work again: probing restarts.
    pub fn handle_native_available(&mut self, now: Instant) {
        if self.phase == Phase::Unavailable {
            self.restart(now);
        }
    }

    /// This node's own addresses or routes changed (it moved, a link went
    /// down or up, it resumed from sleep): the path in use is unproven from
    /// here. The flows take QUIC (which migrates its connection) while
    /// every candidate is probed again at once, with a fresh backoff; the
    /// peer's answers bring native back. Nothing changes while native is
    /// off or unavailable.
    pub fn handle_local_change(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Off | Phase::Unavailable) {
            return;
        }
        self.backoff = self.cfg.retry_initial;
        self.restart(now);
        if self.phase == Phase::Probing {
            self.set_path(PathKind::Quic, Reason::Moved);
        }
    }

    /// This node's addresses changed (Mobile PPC): queues a moved message
    /// (the Binding Update, kind [`ProbeKind::Moved`], for the carrier)
    /// that the peer acknowledges; sent again with a doubling delay until
    /// acknowledged, at most [`MOVED_TRIES`] times. A newer move replaces
    /// an unacknowledged one. Works whatever the native path does (forced
    /// QUIC too): the ack is how the node knows the carrier gets through
    /// from its new address.
    pub fn send_moved(&mut self, now: Instant) {
        self.moved = None;
        self.queue_moved(1, now);
    }

    fn queue_moved(&mut self, tries: u32, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let timestamp = self.micros(now);
        let to = self
            .active
            .or(self.candidates.first().copied())
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let msg = ProbeRepr {
            kind: ProbeKind::Moved,
            sender: self.local,
            receiver: self.peer,
            seq,
            timestamp,
            rx_native: 0,
            to,
            observed: None,
        };
        if self.queue(msg, to).is_ok() {
            self.stats.moved_sent += 1;
        }
        self.moved = Some(MovedPending {
            seq,
            timestamp,
            sent_at: now,
            tries,
        });
    }

    /// True while a moved message waits for its ack.
    pub fn moved_pending(&self) -> bool {
        self.moved.is_some()
    }

    /// The peer's moved message (it came over the carrier, from `from`):
    /// its addresses changed. Authenticated and replay-checked like a
    /// probe (one sequence and window for both), then acknowledged
    /// ([`ProbeKind::MovedAck`], to the carrier), and, unless native is off
    /// here, every path to the peer is probed again at once with QUIC
    /// meanwhile (its old address is unproven; `from`'s IP is tried
    /// first). A `from` with port 0 names no address (the message came
    /// through a relay, which hides where the peer is): nothing is tried
    /// first. A forged or replayed one changes nothing but a counter.
    pub fn handle_moved(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) -> Result<()> {
        let repr = self.authenticate_fresh(bytes, ProbeKind::Moved)?;
        self.stats.moved_received += 1;
        self.queue_reply(ProbeKind::MovedAck, &repr, from)?;
        if matches!(self.phase, Phase::Off | Phase::Unavailable) {
            return Ok(());
        }
        // The carrier's source is the peer's new address (or its NAT's):
        // probed first, on the probe port the other candidates use.
        if let Some(port) = self.candidates.first().map(SocketAddr::port)
            && from.port() != 0
        {
            let c = SocketAddr::new(from.ip(), port);
            self.candidates.retain(|x| *x != c);
            self.candidates.insert(0, c);
            self.candidates.truncate(MAX_CANDIDATES);
        }
        self.stats.peer_moves += 1;
        self.backoff = self.cfg.retry_initial;
        self.restart(now);
        if self.phase == Phase::Probing {
            self.set_path(PathKind::Quic, Reason::PeerMoved);
        }
        Ok(())
    }

    /// The ack of this machine's moved message (over the carrier): accepted
    /// once, for the message still waiting; then the carrier is known to
    /// get through from the new address.
    pub fn handle_moved_ack(&mut self, bytes: &[u8]) -> Result<()> {
        let repr = self.authenticate(bytes, ProbeKind::MovedAck)?;
        match self.moved {
            Some(p) if p.seq == repr.seq && p.timestamp == repr.timestamp => {
                self.moved = None;
                self.stats.moved_acked += 1;
                Ok(())
            }
            _ => {
                self.stats.replays_refused += 1;
                Err(Error::UnsolicitedAnswer { seq: repr.seq })
            }
        }
    }

    /// Runs whatever is due at `now`: lost probes, the next round, a retry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(p) = self.moved
            && moved_due(&p) <= now
        {
            if p.tries < MOVED_TRIES {
                self.queue_moved(p.tries + 1, now);
            } else {
                // The last one went unanswered too: given up.
                self.moved = None;
            }
        }
        self.expire_probes(now);
        match self.phase {
            Phase::Probing if self.due.is_some_and(|d| d <= now) => {
                self.due = None;
                self.send_round(now);
            }
            Phase::Fallback if self.due.is_some_and(|d| d <= now) => {
                // The delay doubles with every retry, whether it fails
                // (the next one waits longer) or succeeds (the next
                // fallback does).
                self.backoff = (self.backoff * 2).min(self.cfg.retry_max);
                self.due = Some(now + self.backoff);
                self.send_round(now);
            }
            Phase::Native if self.native_probe_due() <= now => self.send_round(now),
            Phase::Trial if self.native_probe_due() <= now => self.send_round(now),
            _ => {}
        }
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    /// When to call [`PathMachine::handle_timeout`] next, and why.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let lost = self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.state == SlotState::Pending)
            .map(|s| (s.sent_at + self.cfg.probe_timeout, Timer::ProbeLost))
            .min_by_key(|(t, _)| *t);
        let next = match self.phase {
            Phase::Probing => self.due.map(|d| (d, Timer::NextProbe)),
            Phase::Fallback => self.due.map(|d| (d, Timer::Retry)),
            Phase::Native => Some((self.native_probe_due(), Timer::NextProbe)),
            Phase::Trial => Some((self.native_probe_due(), Timer::NextProbe)),
            Phase::Off | Phase::Unavailable | Phase::NoCandidates => None,
        };
        let moved = self.moved.map(|p| (moved_due(&p), Timer::MovedRetry));
        [lost, next, moved]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    // ---- helpers ----

    /// [`PathMachine::authenticate`] for what the peer numbers from its
    /// probe sequence (probes, notices, moved messages): also through the
    /// replay window, which it then advances.
    fn authenticate_fresh(&mut self, bytes: &[u8], want: ProbeKind) -> Result<ProbeRepr> {
        let repr = self.authenticate(bytes, want)?;
        if let Err(e) = self.peer_probes.check(repr.seq) {
            self.stats.replays_refused += 1;
            tracing::trace!(peer = %self.peer, seq = repr.seq, kind = ?want, "replay refused");
            return Err(match e {
                Error::Replay { counter } => Error::ProbeReplay { seq: counter },
                other => other,
            });
        }
        self.peer_probes.update(repr.seq);
        Ok(repr)
    }

    fn authenticate(&mut self, bytes: &[u8], want: ProbeKind) -> Result<ProbeRepr> {
        let view = ProbeView::new_checked(bytes).inspect_err(|_| self.stats.malformed += 1)?;
        if view.kind() != want || view.sender() != self.peer || view.receiver() != self.local {
            self.stats.misdirected += 1;
            if view.kind() != want {
                return Err(Error::invalid(
                    "path probe type",
                    "probe where an answer was expected or the reverse",
                ));
            }
            return Err(Error::ProbePeerMismatch {
                sender: view.sender().0,
                receiver: view.receiver().0,
            });
        }
        ProbeRepr::parse(&view, &self.key).inspect_err(|_| self.stats.bad_tags += 1)
    }

    /// Checks the peer's count of native data it took in (`rx`, from the
    /// answer to `slot`) against what this machine sent before the probe;
    /// `None` for an answer older than the last checked one.
    ///
    /// The verdict is `Stalled` when the peer took in nothing since the last
    /// check and at least `min_data_packets` packets sent since its last
    /// delivery are unaccounted for. Which packets the last delivery covered
    /// is estimated as the earlier estimate plus the packets delivered since,
    /// but never below the count at the previous check's probe (what was
    /// sent before it arrived or is lost for good; without that floor old
    /// losses would pile up); it may run ahead of the count at this probe
    /// (a peer that counts on another thread counted later packets too),
    /// and what runs ahead counts at the next check. The count
    /// runs from the last delivery, not per answer: a TCP sender whose
    /// segments are dropped backs off to one retransmission per timeout,
    /// fewer than `min_data_packets` between two answers, and a per-answer
    /// count would never see the stall; and the estimate, not the count at
    /// the probe that last showed a delivery, because the window a TCP
    /// sender sends just after the path dies would otherwise look delivered.
    fn data_check(&mut self, slot: &Slot, rx: u64) -> Option<Verdict> {
        if self.check.any && slot.seq <= self.check.seq {
            return None;
        }
        // A count below the last one: the peer restarted.
        let delivered = rx.checked_sub(self.check.rx).unwrap_or(rx);
        // Capped at what was sent by now, not at this probe's send count: a
        // peer that counts data on another thread than the one that answers
        // reports packets sent after the probe too, and those must count for
        // the next check, not be missing from it. Counts of packets never
        // counted as sent here (NAT punch copies, duplicates) bank nothing
        // beyond that, so no credit hides a later stall.
        let delivered_tx = if delivered > 0 {
            self.check
                .delivered_tx
                .saturating_add(delivered)
                .max(self.check.tx)
                .min(self.tx_native.max(slot.tx_at_send))
        } else {
            self.check.delivered_tx
        };
        let undelivered = slot.tx_at_send.saturating_sub(delivered_tx);
        self.check = DataCheck {
            any: true,
            seq: slot.seq,
            rx,
            tx: slot.tx_at_send,
            delivered_tx,
        };
        Some(if delivered > 0 {
            Verdict::Delivered
        } else if undelivered >= self.cfg.min_data_packets {
            Verdict::Stalled
        } else {
            Verdict::Unknown
        })
    }

    fn native_probe_due(&self) -> Instant {
        let fast = self.last_round_at + self.cfg.active_interval();
        let sending = self
            .last_native_send
            .is_some_and(|s| s + self.cfg.detect_budget > fast);
        if self.losses > 0 || sending {
            fast
        } else {
            self.last_round_at + self.cfg.keepalive_interval
        }
    }

    fn expire_probes(&mut self, now: Instant) {
        loop {
            let Some((i, round)) = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|s| (i, s)))
                .filter(|(_, s)| {
                    s.state == SlotState::Pending && s.sent_at + self.cfg.probe_timeout <= now
                })
                .min_by_key(|(_, s)| s.seq)
                .map(|(i, s)| (i, s.round))
            else {
                return;
            };
            self.set_state(i, SlotState::Lost);
            self.stats.probes_lost += 1;
            let open = self.slots.iter().flatten().any(|s| {
                s.round == round && matches!(s.state, SlotState::Pending | SlotState::Answered)
            });
            if !open {
                self.round_lost(now);
            }
        }
    }

    fn round_lost(&mut self, now: Instant) {
        match self.phase {
            Phase::Probing => {
                self.losses += 1;
                if self.losses >= self.cfg.fail_after {
                    let reason = Reason::ProbeFailed { lost: self.losses };
                    self.native_down(reason, now);
                } else {
                    self.send_round(now);
                }
            }
            Phase::Native => {
                self.losses += 1;
                if self.losses >= self.cfg.fail_after {
                    let reason = Reason::ProbeFailed { lost: self.losses };
                    self.native_down(reason, now);
                }
            }
            Phase::Trial => self.trial_failed(Reason::ProbeFailed { lost: 1 }, now),
            _ => {}
        }
    }

    /// An answer arrived while probing or retrying.
    fn native_up(&mut self, now: Instant) {
        self.phase = Phase::Native;
        self.losses = 0;
        self.due = None;
        self.native_since = Some(now);
        self.was_native = true;
        self.last_round_at = now;
        let reason = match self.cfg.force {
            Force::Native => Reason::Forced,
            _ => Reason::Answered,
        };
        self.set_path(PathKind::Native, reason);
    }

    /// A retry's probe was answered: test native with copies of the data
    /// while QUIC keeps carrying it.
    fn start_trial(&mut self, now: Instant) {
        self.phase = Phase::Trial;
        self.losses = 0;
        self.due = None;
        self.last_round_at = now;
        self.trial_tx = self.tx_native;
        self.trial_rounds = 0;
        self.trial_copies = TRIAL_COPIES;
        self.stats.trials += 1;
        self.set_path(PathKind::Quic, Reason::Trying);
    }

    /// The trial showed native does not carry data: back to waiting for the
    /// next retry (the backoff already doubled when this one started).
    fn trial_failed(&mut self, reason: Reason, now: Instant) {
        self.stats.trials_failed += 1;
        self.abandon_outstanding();
        self.phase = Phase::Fallback;
        self.due = Some(now + self.backoff);
        self.set_path(PathKind::Quic, reason);
    }

    /// Native failed: QUIC (unless forced native), retry after the backoff,
    /// and a notice to the peer (queued as a transmit of kind
    /// [`ProbeKind::Notice`], for the QUIC carrier).
    fn native_down(&mut self, reason: Reason, now: Instant) {
        let was_native = self.phase == Phase::Native;
        self.native_down_quietly(reason, now);
        if was_native && self.cfg.force == Force::Auto {
            let seq = self.next_seq;
            self.next_seq += 1;
            let to = self.active.or(self.candidates.first().copied());
            if let Some(to) = to {
                let notice = ProbeRepr {
                    kind: ProbeKind::Notice,
                    sender: self.local,
                    receiver: self.peer,
                    seq,
                    timestamp: self.micros(now),
                    rx_native: 0,
                    to,
                    observed: None,
                };
                if self.queue(notice, to).is_ok() {
                    self.stats.notices_sent += 1;
                }
            }
        }
    }

    /// [`PathMachine::native_down`] without the notice.
    fn native_down_quietly(&mut self, reason: Reason, now: Instant) {
        if self
            .native_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.stable_after)
        {
            self.backoff = self.cfg.retry_initial;
        }
        self.native_since = None;
        self.abandon_outstanding();
        self.phase = Phase::Fallback;
        self.due = Some(now + self.backoff);
        self.set_path(PathKind::Quic, reason);
    }

    /// Back to first probing (new candidates, native available again).
    fn restart(&mut self, now: Instant) {
        self.abandon_outstanding();
        self.active = None;
        self.losses = 0;
        self.native_since = None;
        if self.phase == Phase::Off {
            return;
        }
        if self.candidates.is_empty() {
            self.phase = Phase::NoCandidates;
            self.due = None;
            self.set_path(PathKind::Quic, Reason::NoCandidates);
            return;
        }
        self.phase = Phase::Probing;
        self.due = None;
        self.set_path(PathKind::Quic, Reason::Probing);
        self.send_round(now);
    }

    /// Records the path; a forced native path stays native whatever happens.
    fn set_path(&mut self, path: PathKind, reason: Reason) {
        let path = if self.cfg.force == Force::Native {
            PathKind::Native
        } else {
            path
        };
        let reason = match (self.cfg.force, reason) {
            (Force::Native, Reason::Answered | Reason::Probing) => Reason::Forced,
            _ => reason,
        };
        if path != self.current {
            self.stats.switches += 1;
            tracing::debug!(peer = %self.peer, from = %self.current, to = %path, %reason, "path switched");
            self.events.push_back(PathEvent::Switched {
                from: self.current,
                to: path,
                reason,
            });
        } else if reason != self.reason {
            tracing::debug!(peer = %self.peer, %path, %reason, "path reason changed");
            self.events.push_back(PathEvent::Reason { path, reason });
        }
        self.current = path;
        self.reason = reason;
    }

    /// Marks outstanding probes as lost without counting them, so their late
    /// answers cannot switch the path.
    fn abandon_outstanding(&mut self) {
        for s in self.slots.iter_mut().flatten() {
            if s.state == SlotState::Pending {
                s.state = SlotState::Lost;
            }
        }
    }

    /// Sends one round: to the address in use when native, else to every
    /// candidate.
    fn send_round(&mut self, now: Instant) {
        self.round += 1;
        self.send_probes(now);
    }

    /// The probes of round `self.round`, sent at `now`.
    fn send_probes(&mut self, now: Instant) {
        self.last_round_at = now;
        let one = match self.phase {
            Phase::Native | Phase::Trial => self.active,
            _ => None,
        };
        if self.phase == Phase::Trial {
            self.trial_copies = TRIAL_COPIES;
        }
        let n = if one.is_some() {
            1
        } else {
            self.candidates.len()
        };
        for k in 0..n {
            let dst = one.unwrap_or(self.candidates[k]);
            let seq = self.next_seq;
            self.next_seq += 1;
            let timestamp = self.micros(now);
            let repr = ProbeRepr {
                kind: ProbeKind::Probe,
                sender: self.local,
                receiver: self.peer,
                seq,
                timestamp,
                rx_native: 0,
                to: dst,
                observed: None,
            };
            if self.queue(repr, dst).is_err() {
                continue;
            }
            self.stats.probes_sent += 1;
            self.slots[slot_index(seq)] = Some(Slot {
                state: SlotState::Pending,
                seq,
                round: self.round,
                dst,
                sent_at: now,
                timestamp,
                tx_at_send: self.tx_native,
            });
        }
    }

    /// Queues the answer-like reply (`kind`: answer or moved-ack) to the
    /// peer's `repr`, which came from `from`: its number and timestamp
    /// echoed, `from` as the observed address.
    fn queue_reply(&mut self, kind: ProbeKind, repr: &ProbeRepr, from: SocketAddr) -> Result<()> {
        let reply = ProbeRepr {
            kind,
            sender: self.local,
            receiver: self.peer,
            seq: repr.seq,
            timestamp: repr.timestamp,
            rx_native: self.rx_native,
            to: from,
            observed: Some(from),
        };
        self.queue(reply, from)
    }

    fn queue(&mut self, repr: ProbeRepr, dst: SocketAddr) -> Result<()> {
        // A shell that stops draining (or a peer probing far faster than a
        // machine does) must not grow the queue without bound.
        if self.transmits.len() >= MAX_QUEUED {
            self.stats.transmits_dropped += 1;
            return Err(Error::TableFull("path transmit queue"));
        }
        let mut t = Transmit {
            dst,
            kind: repr.kind,
            len: 0,
            buf: [0; probe::MAX_LEN],
        };
        t.len = repr.emit(&self.key, &mut t.buf)?;
        self.transmits.push_back(t);
        Ok(())
    }

    fn set_candidates_inner(&mut self, candidates: Vec<SocketAddr>) {
        self.candidates.clear();
        for c in candidates {
            if self.candidates.len() < MAX_CANDIDATES && !self.candidates.contains(&c) {
                self.candidates.push(c);
            }
        }
    }

    fn set_state(&mut self, i: usize, state: SlotState) {
        if let Some(s) = &mut self.slots[i] {
            s.state = state;
        }
    }

    fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// First probing (or again after new candidates): QUIC meanwhile.
    Probing,
    /// Native answered.
    Native,
    /// Native failed; retrying after a backoff.
    Fallback,
    /// A retry was answered: QUIC carries the data, native copies test it.
    Trial,
    /// Forced QUIC: no probes.
    Off,
    /// The node reported native cannot work.
    Unavailable,
    /// No candidate address.
    NoCandidates,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Pending,
    Answered,
    Lost,
}

/// One outstanding (or recently settled) probe.
#[derive(Debug, Clone, Copy)]
struct Slot {
    state: SlotState,
    seq: u64,
    round: u64,
    dst: SocketAddr,
    sent_at: Instant,
    timestamp: u64,
    /// Native packets sent before this probe.
    tx_at_send: u64,
}

/// The last checked answer: the data check compares against it.
#[derive(Debug, Clone, Copy, Default)]
struct DataCheck {
    any: bool,
    seq: u64,
    rx: u64,
    /// The send count when its probe left.
    tx: u64,
    /// How many of the packets sent the peer's deliveries account for (an
    /// estimate, see `data_check`; it may run ahead of `tx` when the peer
    /// counted packets sent after the probe): packets sent after them are
    /// all undelivered so far.
    delivered_tx: u64,
}

/// What an answer's count says about the native data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The peer took in native data since the last check.
    Delivered,
    /// It took in none, and enough was sent that it should have.
    Stalled,
    /// Too little was sent to tell.
    Unknown,
}

fn slot_index(seq: u64) -> usize {
    (seq % SLOTS as u64) as usize
}
