//! The core's own timers, kept by deadline: the core asks for the earliest
//! one instead of scanning its tables on a periodic tick.
//!
//! DPRP keeps its own timers; [`NodeCore::poll_timeout`] takes the earlier
//! of DPRP's deadline and the first one here.
//!
//! [`NodeCore::poll_timeout`]: super::NodeCore::poll_timeout

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fpn_proto::flow::FlowId;

/// Least time between two PIT ageing runs: a flow may outlive its idle
/// timeout by this much, and a busy PIT is not scanned more often.
pub const PIT_AGE_GRANULARITY: Duration = Duration::from_secs(1);

/// Most PIT entries one ageing run looks at (and so most flows it ends):
/// a slice of native flows takes about a millisecond (bench `flow_scale`),
/// and the rest waits for the next call.
pub const AGE_SLICE: usize = 256;

/// What a deadline is for (named in traces, like quinn's `Timer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// DPRP's next retransmission, deadline or expiry.
    Dprp,
    /// Age out idle PIT entries and old receive states.
    PitAgeing,
    /// Start the renegotiation of a flow (after a key rotation, or to retry).
    Renegotiate(FlowId),
    /// Stop listing a refused flow in `status`.
    ForgetRefused(FlowId),
    /// Allow another healing negotiation for an unknown flow.
    ForgetHealing(FlowId),
    /// A path machine's probe, probe timeout or retry (kept by the
    /// machines; [`NodeCore::poll_timeout`] names the earliest).
    ///
    /// [`NodeCore::poll_timeout`]: super::NodeCore::poll_timeout
    Path,
    /// A responder's CDN or an initiator's first packets of this overlay
    /// flow waited long enough for the native steering: complete on QUIC.
    NativeReady(FlowId),
    /// A responder's answers of this overlay flow waited long enough for
    /// the opener's steered notice: they go over QUIC.
    NoticeWait(FlowId),
    /// The GMS has been away for the configured bound: refuse credentials
    /// older than its loss.
    GmsSilence,
    /// A flow negotiated through this gateway is listed (and, dropped,
    /// enforced) until then (transit.rs).
    TransitExpiry(FlowId),
    /// Packets held across a move go out now whatever was proven.
    MoveHoldEnd,
    /// Packets of this unknown flow waited long enough for a FOP
    /// (parked.rs): dropped, and the flow healed.
    Parked(FlowId),
}

/// Deadlines in order. The PIT's ageing deadline is kept once (the earliest
/// wins); the per-flow ones are bounded by the tables they belong to.
#[derive(Debug, Default)]
pub struct Timers {
    queue: BTreeSet<(Instant, Timer)>,
    pit_ageing: Option<Instant>,
}

impl Timers {
    /// Schedules `timer` at `at`. A second [`Timer::PitAgeing`] only moves
    /// the existing one earlier.
    pub fn schedule(&mut self, at: Instant, timer: Timer) {
        if timer == Timer::PitAgeing {
            match self.pit_ageing {
                Some(t) if t <= at => return,
                Some(t) => {
                    self.queue.remove(&(t, Timer::PitAgeing));
                }
                None => {}
            }
            self.pit_ageing = Some(at);
        }
        self.queue.insert((at, timer));
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<(Instant, Timer)> {
        self.queue.first().copied()
    }

    /// Takes the earliest timer due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let (at, _) = self.queue.first()?;
        if *at > now {
            return None;
        }
        let (_, timer) = self.queue.pop_first()?;
        if timer == Timer::PitAgeing {
            self.pit_ageing = None;
        }
        Some(timer)
    }

    /// Number of pending deadlines.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is scheduled.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_out_in_order_and_pit_ageing_is_kept_once() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Timers::default();
        t.schedule(t0 + s(5), Timer::PitAgeing);
        t.schedule(t0 + s(9), Timer::PitAgeing);
        t.schedule(t0 + s(3), Timer::Dprp);
        assert_eq!(t.len(), 2);
        t.schedule(t0 + s(2), Timer::PitAgeing);
        assert_eq!(t.len(), 2);
        assert_eq!(t.next(), Some((t0 + s(2), Timer::PitAgeing)));
        assert_eq!(t.pop_due(t0 + s(1)), None);
        assert_eq!(t.pop_due(t0 + s(4)), Some(Timer::PitAgeing));
        assert_eq!(t.pit_ageing, None);
        assert_eq!(t.pop_due(t0 + s(4)), Some(Timer::Dprp));
        assert_eq!(t.pop_due(t0 + s(4)), None);
        assert!(t.is_empty());
    }
}
