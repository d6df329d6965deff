//! This node moved (issue 12, Mobile PPC): its addresses or routes changed.
//! The driver's network watcher (`crate::netwatch`) says so the moment the
//! kernel applies the change; the core then treats every path as unproven
//! (QUIC until the probes from the new address answer), forgets its source
//! addresses toward the peers (asked again, so translations move to the
//! new one), and measures the move's gap: from the change to the first
//! packet of any flow received after it.
//!
//! Every peer with live flows gets a moved message (the Binding Update,
//! `fpn_proto::path`, over the carrier) and acknowledges it. Until that
//! ack (or the peer's native path proven again, or [`HOLD`] passed), the
//! packets for that peer are held instead of sent into a path that may
//! lose them: a TCP segment lost in a move costs the connection its
//! retransmission timeout (200 ms at least), a held one a few ms.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use fpn_proto::ge::GeId;
use tracing::{debug, info};

use super::NodeCore;
use super::output::Output;
use super::timers::Timer;
use crate::carrier::{CarrierKind, FrameKind};

/// Moves kept for `status`.
const RECENT: usize = 16;
/// Changes this close to the previous one (with no packet in between) are
/// one move.
const BURST: Duration = Duration::from_millis(500);
/// A move's cause grows with the changes of its burst up to about this.
const MAX_CAUSE: usize = 240;
/// Packets are held at most this long after a move's last change.
pub(super) const HOLD: Duration = Duration::from_millis(1000);
/// Packets held at once (all peers); more are dropped and counted (the
/// application's own retransmission recovers them).
const MAX_HELD: usize = 1024;
/// Woken this long after the deadline it slept toward, the node did not
/// run meanwhile (the machine slept, or the process was stopped): far
/// beyond any scheduling delay, and short against the NAT bindings and
/// peer timeouts a sleep outlives.
pub const LATE_WAKE: Duration = Duration::from_secs(2);

/// One move.
#[derive(Debug, Clone)]
pub(super) struct Move {
    pub at: Instant,
    pub cause: String,
    /// From the change to the first packet received after it.
    pub gap: Option<Duration>,
}

/// The recent moves; the newest last.
#[derive(Debug, Default)]
pub(super) struct Moves {
    pub recent: VecDeque<Move>,
    /// The newest move has no gap yet (checked per received packet: one
    /// branch on the data path).
    pub measuring: bool,
    /// Peers whose packets are held: the move's Binding Update is not
    /// acknowledged yet (checked per sent packet: one branch while empty).
    pub holding: BTreeSet<GeId>,
    /// The held packets, protected, in the order the TUN gave them.
    held: Vec<(GeId, Vec<u8>)>,
    /// When the hold ends whatever was proven.
    hold_until: Option<Instant>,
    /// Packets held across moves.
    pub held_total: u64,
    /// Packets not held because the hold was full (dropped).
    pub held_dropped: u64,
    /// Peers' moved messages refused (forged, replayed, naming another GE).
    pub refused: u64,
}

impl NodeCore {
    /// This host's addresses or routes changed (`cause` says how, for the
    /// log and `status`). Then drain [`NodeCore::poll_output`].
    pub fn handle_network_change(&mut self, cause: String, now: Instant) {
        // Holds, translations and paths all move with this node.
        self.installs.raise_global();
        // One move is a burst of changes (the old address and route go,
        // the new ones come, each its own notification): a change soon
        // after another, before any packet arrived, is the same move, and
        // its gap counts from the last of them (the new address in place).
        match self.moves.recent.back_mut() {
            Some(m) if m.gap.is_none() && now.saturating_duration_since(m.at) < BURST => {
                m.at = now;
                for part in cause.split("; ") {
                    if m.cause.len() < MAX_CAUSE && !m.cause.split("; ").any(|c| c == part) {
                        m.cause.push_str("; ");
                        m.cause.push_str(part);
                    }
                }
            }
            _ => {
                if self.moves.recent.len() >= RECENT {
                    self.moves.recent.pop_front();
                }
                self.moves.recent.push_back(Move {
                    at: now,
                    cause,
                    gap: None,
                });
            }
        }
        self.moves.measuring = true;
        // Which local address leads to a peer may have changed: asked
        // again with the next probe (and the translations move with it).
        self.paths.locals.clear();
        self.paths.asked.clear();
        let talking: BTreeSet<GeId> = self.pit.iter().filter_map(|(_, e)| e.peer()).collect();
        self.sync_all_native_activity();
        for (ge, m) in &mut self.paths.machines {
            m.handle_local_change(now);
            if talking.contains(ge) {
                // Every change of the burst sends it again: the first ones
                // often go while the host has no address or route yet.
                m.send_moved(now);
                self.moves.holding.insert(*ge);
            }
        }
        if !self.moves.holding.is_empty() {
            debug!(
                peers = self.moves.holding.len(),
                "packets held until the binding updates are acknowledged"
            );
            let until = now + HOLD;
            self.moves.hold_until = Some(until);
            self.timers.schedule(until, Timer::MoveHoldEnd);
        }
        self.drain_paths(now);
        self.drain(now);
    }

    /// The driver woke at `now`, having slept toward `deadline` (what
    /// [`NodeCore::poll_timeout`] said when it went to sleep). Woken
    /// [`LATE_WAKE`] or more after it, the node did not run meanwhile:
    /// suspended or stopped, for long enough that NAT bindings, the peers'
    /// paths and the carrier's connections may all be gone, and the
    /// network may be another. Then it is a move (its cause says so): every
    /// path unproven until probed again, a Binding Update to every peer
    /// with flows (its ack proves the carrier; the peer drops the NAT
    /// bindings it had for this node and probes again), packets held until
    /// then. True when it was (the driver then tells the carrier).
    pub fn handle_wake(&mut self, deadline: Option<Instant>, now: Instant) -> bool {
        let Some(late) = deadline.and_then(|d| now.checked_duration_since(d)) else {
            return false;
        };
        if late < LATE_WAKE {
            return false;
        }
        info!(
            late_s = late.as_secs_f64(),
            "woke late (suspended or stopped): every path is probed again"
        );
        self.handle_network_change(
            format!(
                "woke {:.1} s late (suspended or stopped)",
                late.as_secs_f64()
            ),
            now,
        );
        true
    }

    /// Holds a protected packet for `ge` while its move is unconfirmed;
    /// false when `ge` is not held (send it now).
    pub(super) fn hold_for_move(&mut self, ge: GeId, frame: &[u8]) -> bool {
        if !self.moves.holding.contains(&ge) {
            return false;
        }
        if self.moves.held.len() < MAX_HELD {
            self.moves.held.push((ge, frame.to_vec()));
            self.moves.held_total += 1;
        } else {
            self.moves.held_dropped += 1;
        }
        true
    }

    /// `ge` acknowledged the Binding Update (it has taken the move in;
    /// releasing on this node's own native answer instead sent packets to
    /// a peer that still refused the new address, note 57): the held
    /// packets go now, in order, on the path chosen for them now.
    pub(super) fn release_held(&mut self, ge: GeId, now: Instant) {
        if !self.moves.holding.remove(&ge) {
            return;
        }
        self.installs.raise(ge);
        let mut mine = Vec::new();
        self.moves.held.retain_mut(|(g, f)| {
            if *g == ge {
                mine.push(std::mem::take(f));
                false
            } else {
                true
            }
        });
        if !mine.is_empty() {
            debug!(peer = %ge, packets = mine.len(), "held packets released");
        }
        for frame in mine {
            let n = frame.len();
            let mut frame = super::paths::with_room(&frame);
            if let Some((start, end)) = self.try_native(ge, &mut frame, n, now) {
                // Translated in place: a raw packet on the wire addresses.
                frame.truncate(end);
                frame.drain(..start);
                self.counters.data_out += 1;
                self.push_output(Output::SendNative(frame));
                continue;
            }
            frame.truncate(n);
            let Some(p) = self.peers.get(ge).filter(|p| !p.target.addrs.is_empty()) else {
                self.counters.no_route += 1;
                continue;
            };
            let target = p.target.clone();
            self.counters.data_out += 1;
            self.push_output(Output::Send {
                target,
                path: CarrierKind::Quic,
                kind: FrameKind::Data,
                payload: frame,
            });
        }
    }

    /// The hold's time is up: whatever is still held goes on the path
    /// chosen now.
    pub(super) fn end_move_hold(&mut self, now: Instant) {
        if self.moves.hold_until.is_some_and(|t| t > now) {
            return; // a later change moved the end
        }
        self.moves.hold_until = None;
        let peers: Vec<GeId> = self.moves.holding.iter().copied().collect();
        for ge in peers {
            debug!(peer = %ge, "binding update unacknowledged: held packets go anyway");
            self.release_held(ge, now);
        }
    }

    /// A packet of a flow arrived (native or over the carrier).
    #[inline]
    pub(super) fn note_received(&mut self, now: Instant) {
        if self.moves.measuring {
            self.moves.measuring = false;
            if let Some(m) = self.moves.recent.back_mut() {
                let gap = now.saturating_duration_since(m.at);
                m.gap = Some(gap);
                info!(cause = %m.cause, gap_ms = gap.as_secs_f64() * 1e3, "first packet after the move");
            }
        }
    }

    /// The recent moves for `status`: (ms since the node's first input,
    /// cause, gap in ms).
    pub(super) fn move_status(&self) -> Vec<crate::status::MoveStatus> {
        let epoch = self.epoch;
        self.moves
            .recent
            .iter()
            .map(|m| crate::status::MoveStatus {
                at_ms: epoch.map_or(0, |e| m.at.saturating_duration_since(e).as_millis() as u64),
                cause: m.cause.clone(),
                gap_ms: m.gap.map(|g| g.as_secs_f64() * 1e3),
            })
            .collect()
    }
}
