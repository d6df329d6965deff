//! When PIT entries are looked at for ageing: a wheel of one-second slots.
//!
//! An entry is filed in the slot of the earliest moment it could age out
//! (its last use plus the idle timeout, or the end of an old receive
//! state's grace, whichever comes first). The packet path only stores the
//! entry's `last_used`; when a slot comes due, each entry in it is checked
//! once and either goes or is filed again at its new deadline. So ageing
//! costs one check per entry per idle period whatever the packet rate, and
//! a run can stop after a budget and go on later (no pause when a hundred
//! thousand flows age out in the same second).
//!
//! Deadlines only move later (a packet refreshes `last_used`; an old
//! receive state is only set when an entry is inserted, which files it
//! anew), so a check at the filed slot is never too late. Entries removed
//! by other means leave their item behind: every filing has a ticket and
//! only the entry's current ticket counts. Stale items go when their slot
//! comes, or in a compaction once they outnumber the live ones.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::flow::FlowId;

/// The wheel's resolution: an entry ages out at most this much after its
/// deadline.
pub const SLOT: Duration = Duration::from_secs(1);

/// Items beyond twice the live entries (plus this) make
/// [`Wheel::needs_compaction`] true.
const SLACK: usize = 1024;

/// One filing: the flow (as keyed in the PIT) and its ticket.
pub(super) type Item = (FlowId, u64);

/// Slots of flows to look at, in time order.
#[derive(Debug, Default)]
pub(super) struct Wheel {
    /// Slot 0's instant: when the first filing was made (deadlines are
    /// never earlier than the moment they are filed).
    origin: Option<Instant>,
    /// Each slot's filings in the order filed.
    slots: BTreeMap<u64, VecDeque<Item>>,
    next_ticket: u64,
    items: usize,
}

impl Wheel {
    /// Files `flow`, at `now`, to be looked at no earlier than `at`;
    /// returns the filing's ticket.
    pub(super) fn file(&mut self, flow: FlowId, at: Instant, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        // Rounded up: a flow is never looked at before its deadline.
        let slot = at
            .saturating_duration_since(origin)
            .as_nanos()
            .div_ceil(SLOT.as_nanos());
        let slot = u64::try_from(slot).unwrap_or(u64::MAX);
        self.next_ticket += 1;
        self.slots
            .entry(slot)
            .or_default()
            .push_back((flow, self.next_ticket));
        self.items += 1;
        self.next_ticket
    }

    /// When the first filled slot comes due.
    pub(super) fn next(&self) -> Option<Instant> {
        let origin = self.origin?;
        let (&slot, _) = self.slots.first_key_value()?;
        // SLOT is one second: a slot index counts seconds from the origin.
        origin.checked_add(Duration::from_secs(slot))
    }

    /// Moves up to `budget` items due at `now` into `out`. True when more
    /// due items remain.
    pub(super) fn take_due(&mut self, now: Instant, budget: usize, out: &mut Vec<Item>) -> bool {
        let mut left = budget;
        while self.next().is_some_and(|at| at <= now) {
            if left == 0 {
                return true;
            }
            left -= self.take_first(left, out);
        }
        false
    }

    /// Moves up to `n` items of the first slot into `out` (its first filed
    /// first: for eviction, those are the least recently used of the slot,
    /// and items filed again go behind the rest), due or not, and drops the
    /// slot once empty. Returns how many it moved.
    pub(super) fn take_first(&mut self, n: usize, out: &mut Vec<Item>) -> usize {
        let Some(mut slot) = self.slots.first_entry() else {
            return 0;
        };
        let items = slot.get_mut();
        let k = items.len().min(n);
        out.extend(items.drain(..k));
        self.items -= k;
        if items.is_empty() {
            slot.remove();
        }
        k
    }

    /// Number of items filed (live and stale).
    pub(super) fn len(&self) -> usize {
        self.items
    }

    /// True when stale items outnumber `live` entries by enough that a
    /// [`Wheel::compact`] pays.
    pub(super) fn needs_compaction(&self, live: usize) -> bool {
        self.items > live.saturating_mul(2).saturating_add(SLACK)
    }

    /// Keeps only the items `current` says are an entry's current filing.
    pub(super) fn compact(&mut self, mut current: impl FnMut(&Item) -> bool) {
        self.slots.retain(|_, items| {
            items.retain(&mut current);
            !items.is_empty()
        });
        self.items = self.slots.values().map(VecDeque::len).sum();
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn flow(i: u16) -> FlowId {
        FlowId {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            protocol: 17,
            src_port: i,
            dst_port: 53,
        }
    }

    #[test]
    fn items_come_due_at_their_slot_rounded_up() {
        let t0 = Instant::now();
        let mut w = Wheel::default();
        let a = w.file(flow(1), t0, t0);
        let b = w.file(flow(2), t0 + Duration::from_millis(1500), t0);
        assert_ne!(a, b);
        assert_eq!(w.next(), Some(t0));
        let mut out = Vec::new();
        assert!(!w.take_due(t0, 10, &mut out));
        assert_eq!(out, vec![(flow(1), a)]);
        // 1.5 s files in the 2 s slot: not due at 1.9 s.
        assert_eq!(w.next(), Some(t0 + Duration::from_secs(2)));
        out.clear();
        assert!(!w.take_due(t0 + Duration::from_millis(1900), 10, &mut out));
        assert!(out.is_empty());
        assert!(!w.take_due(t0 + Duration::from_secs(2), 10, &mut out));
        assert_eq!(out, vec![(flow(2), b)]);
        assert_eq!((w.len(), w.next()), (0, None));
    }

    #[test]
    fn a_budget_stops_a_run_and_the_next_one_goes_on() {
        let t0 = Instant::now();
        let mut w = Wheel::default();
        for i in 0..10 {
            w.file(flow(i), t0 + Duration::from_secs(u64::from(i % 2)), t0);
        }
        let mut out = Vec::new();
        let now = t0 + Duration::from_secs(5);
        assert!(w.take_due(now, 4, &mut out));
        assert_eq!(out.len(), 4);
        assert!(w.take_due(now, 4, &mut out));
        assert!(!w.take_due(now, 4, &mut out));
        assert_eq!(out.len(), 10);
        let mut ports: Vec<u16> = out.iter().map(|(f, _)| f.src_port).collect();
        ports.sort_unstable();
        assert_eq!(ports, (0..10).collect::<Vec<_>>());
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn compaction_drops_what_is_not_current() {
        let t0 = Instant::now();
        let mut w = Wheel::default();
        let tickets: Vec<u64> = (0..3000).map(|i| w.file(flow(i), t0, t0)).collect();
        assert!(w.needs_compaction(10));
        assert!(!w.needs_compaction(1000));
        let keep = tickets[7];
        w.compact(|&(_, t)| t == keep);
        assert_eq!(w.len(), 1);
        let mut out = Vec::new();
        w.take_due(t0, 10, &mut out);
        assert_eq!(out, vec![(flow(7), keep)]);
    }
}
