//! This node moved (issue 12, Mobile PPC): its addresses or routes changed.
//! The driver's network watcher (`crate::netwatch`) says so the moment the
//! kernel applies the change; the core then treats every path as unproven
//! (QUIC until the probes from the new address answer), forgets its source
//! addresses toward the peers (asked again, so translations move to the
//! new one), and measures the move's gap: from the change to the first
//! packet of any flow received after it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::info;

use super::NodeCore;

/// Moves kept for `status`.
const RECENT: usize = 16;
/// Changes this close to the previous one (with no packet in between) are
/// one move.
const BURST: Duration = Duration::from_millis(500);
/// A move's cause grows with the changes of its burst up to about this.
const MAX_CAUSE: usize = 240;

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
}

impl NodeCore {
    /// This host's addresses or routes changed (`cause` says how, for the
    /// log and `status`). Then drain [`NodeCore::poll_output`].
    pub fn handle_network_change(&mut self, cause: String, now: Instant) {
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
        for m in self.paths.machines.values_mut() {
            m.handle_local_change(now);
        }
        self.drain_paths(now);
        self.drain(now);
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
