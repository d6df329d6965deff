//! The order of a flow's packets across the hand-over from the driver to a
//! TUN worker. A worker hands what no install covers to the driver in
//! numbered batches; when the install for such a flow arrives, packets of
//! it may still wait in a batch the driver has not sent yet, and sending
//! the flow's next packets at once would overtake them (TCP takes that as
//! loss). So an install waits until the driver has sent every batch that
//! held its flow, and the flow's packets read meanwhile wait here, in
//! order, to be sealed with it. Sans-IO and generic over the install, so it
//! is tested on its own.

use std::collections::VecDeque;

use fpn_proto::flow::{FastMap, FlowId};

/// Packets a worker holds for flows whose install waits; beyond it the
/// flow's packets go to the driver again (the fence moves with them).
pub const MAX_HELD: usize = 256;

/// Per worker: the batch each recently missed flow was last handed in,
/// the installs that wait for their flow's batches, and the packets held
/// for them.
#[derive(Debug)]
pub struct Fence<I> {
    /// Flow → number of the last batch one of its packets went in.
    recent: FastMap<FlowId, u64>,
    /// Flow → its install and the batch it waits for.
    waiting: FastMap<FlowId, (I, u64)>,
    /// Held packets in the order they were read.
    held: VecDeque<(FlowId, Vec<u8>)>,
    /// Buffers of released packets, for the next ones.
    spare: Vec<Vec<u8>>,
    /// Batches that never reached the driver (its queue was full), as
    /// runs of consecutive numbers (first, last), in order: each counts
    /// as sent once every batch before it is. Runs, so a driver that
    /// stays behind adds one entry, not one per batch.
    lost: VecDeque<(u64, u64)>,
    /// The last batch known sent, lost ones included.
    settled: u64,
}

impl<I> Default for Fence<I> {
    fn default() -> Self {
        Self {
            recent: FastMap::default(),
            waiting: FastMap::default(),
            held: VecDeque::new(),
            spare: Vec::new(),
            lost: VecDeque::new(),
            settled: 0,
        }
    }
}

impl<I> Fence<I> {
    /// A packet of `flow` goes to the driver in batch `batch`.
    pub fn missed(&mut self, flow: FlowId, batch: u64) {
        self.recent.insert(flow, batch);
        if let Some((_, fence)) = self.waiting.get_mut(&flow) {
            *fence = batch;
        }
    }

    /// Batch `batch` was dropped before the driver saw it. Nothing will
    /// report it sent, so without this an install waiting for it (and the
    /// packets held for that install) would wait for the next batch the
    /// driver sends, which a short flow may never cause.
    pub fn lost(&mut self, batch: u64) {
        match self.lost.back_mut() {
            Some((_, last)) if *last + 1 == batch => *last = batch,
            _ => self.lost.push_back((batch, batch)),
        }
    }

    /// The last batch sent, given `sent`, the last one the driver
    /// reported: a lost batch counts once every batch before it is sent.
    /// Pass the result as `done` to the other calls.
    pub fn settle(&mut self, sent: u64) -> u64 {
        let mut done = self.settled.max(sent);
        while let Some(&(first, last)) = self.lost.front() {
            if first > done + 1 {
                break;
            }
            done = done.max(last);
            self.lost.pop_front();
        }
        self.settled = done;
        done
    }

    /// An install for `flow` arrived; `done` is the last batch the driver
    /// has sent. Returns it when it may be used now, else keeps it until
    /// [`Fence::release`] gives it back.
    pub fn offer(&mut self, flow: FlowId, install: I, done: u64) -> Option<I> {
        match self.recent.get(&flow) {
            Some(&batch) if batch > done => {
                self.waiting.insert(flow, (install, batch));
                None
            }
            _ => {
                // A newer install replaces one that waits.
                self.waiting.remove(&flow);
                Some(install)
            }
        }
    }

    /// Whether packets of `flow` must wait here.
    pub fn is_waiting(&self, flow: &FlowId) -> bool {
        !self.waiting.is_empty() && self.waiting.contains_key(flow)
    }

    /// Whether any install waits (the caller then checks each packet).
    pub fn any_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Holds a copy of `packet` of a waiting flow; false when the hold is
    /// full (the caller hands it to the driver after [`Fence::drain_flow`]).
    pub fn hold(&mut self, flow: FlowId, packet: &[u8], room: usize) -> bool {
        if self.held.len() >= MAX_HELD {
            return false;
        }
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.reserve(packet.len() + room);
        b.extend_from_slice(packet);
        self.held.push_back((flow, b));
        true
    }

    /// Takes `flow`'s held packets out (in order), to go to the driver
    /// ahead of a packet that found the hold full.
    pub fn drain_flow(&mut self, flow: &FlowId) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.held.retain_mut(|(f, b)| {
            if f == flow {
                out.push(std::mem::take(b));
                false
            } else {
                true
            }
        });
        out
    }

    /// The installs whose batches the driver has sent by `done`, to use
    /// now; then [`Fence::next_released`] gives their held packets.
    pub fn release(&mut self, done: u64) -> Vec<(FlowId, I)> {
        if self.waiting.is_empty() {
            return Vec::new();
        }
        let ready: Vec<FlowId> = self
            .waiting
            .iter()
            .filter(|(_, (_, fence))| *fence <= done)
            .map(|(f, _)| *f)
            .collect();
        let mut out = Vec::with_capacity(ready.len());
        for f in ready {
            if let Some((i, _)) = self.waiting.remove(&f) {
                out.push((f, i));
            }
        }
        out
    }

    /// The next held packet whose flow no longer waits (in the order read),
    /// with its buffer; give the buffer back with [`Fence::recycle`].
    pub fn next_released(&mut self) -> Option<(FlowId, Vec<u8>)> {
        let k = self
            .held
            .iter()
            .position(|(f, _)| !self.waiting.contains_key(f))?;
        self.held.remove(k)
    }

    /// The next held packet whatever its flow (in the order read): what a
    /// stopping worker hands to the driver.
    pub fn next_any(&mut self) -> Option<(FlowId, Vec<u8>)> {
        self.held.pop_front()
    }

    /// A buffer of a released packet, for the next held one.
    pub fn recycle(&mut self, b: Vec<u8>) {
        if self.spare.len() < MAX_HELD {
            self.spare.push(b);
        }
    }

    /// Forgets the flows whose last batch the driver has sent (a flow the
    /// fence does not know gets its install at once).
    pub fn forget_done(&mut self, done: u64) {
        self.recent.retain(|_, b| *b > done);
    }

    /// Packets held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn flow(port: u16) -> FlowId {
        FlowId {
            src: Ipv4Addr::new(100, 64, 0, 1).into(),
            dst: Ipv4Addr::new(100, 64, 0, 2).into(),
            protocol: 6,
            src_port: port,
            dst_port: 80,
        }
    }

    #[test]
    fn a_lost_batch_counts_as_sent_once_every_batch_before_it_is() {
        let mut f: Fence<&str> = Fence::default();
        let a = flow(1);
        // Batches 1 and 2 reach the driver, 3 is lost with a's packet in it.
        f.missed(a, 3);
        f.lost(3);
        let done = f.settle(1);
        assert_eq!(f.offer(a, "a", done), None);
        assert!(f.hold(a, b"a1", 24));
        // Only batch 1 is sent: 3 still waits for 2.
        let done = f.settle(1);
        assert!(f.release(done).is_empty());
        // Batch 2 sent: 3 counts as sent though no later batch follows,
        // and a's install and held packet go.
        let done = f.settle(2);
        assert_eq!(done, 3);
        assert_eq!(f.release(done), vec![(a, "a")]);
        assert_eq!(f.next_released().map(|(g, _)| g), Some(a));
        // The driver's older report does not move it back.
        assert_eq!(f.settle(2), 3);
        // Two lost in a row, after a sent one.
        f.lost(4);
        f.lost(5);
        f.lost(7);
        assert_eq!(f.settle(3), 5);
        assert_eq!(f.settle(6), 7);
        // A driver that stays behind: one run, however many batches.
        for b in 8..10_000 {
            f.lost(b);
        }
        assert_eq!(f.lost.len(), 1);
        assert_eq!(f.settle(7), 9_999);
        assert!(f.lost.is_empty());
    }

    #[test]
    fn an_install_waits_for_the_batches_that_held_its_flow_and_its_packets_keep_their_order() {
        let mut f: Fence<&str> = Fence::default();
        let (a, b) = (flow(1), flow(2));
        f.missed(a, 3);
        f.missed(b, 1);
        // b's last batch is sent: its install is used at once.
        assert_eq!(f.offer(b, "b", 2), Some("b"));
        // a's batch 3 is not: the install waits, a's packets are held.
        assert_eq!(f.offer(a, "a", 2), None);
        assert!(f.is_waiting(&a) && !f.is_waiting(&b));
        assert!(f.hold(a, b"a1", 24));
        assert!(f.hold(a, b"a2", 24));
        assert!(f.release(2).is_empty());
        assert_eq!(f.next_released(), None);
        // Batch 3 sent: the install, then a's packets in order.
        assert_eq!(f.release(3), vec![(a, "a")]);
        let (g1, p1) = f.next_released().unwrap();
        let (g2, p2) = f.next_released().unwrap();
        assert_eq!((g1, &p1[..], g2, &p2[..]), (a, &b"a1"[..], a, &b"a2"[..]));
        assert!(p1.capacity() >= 2 + 24);
        assert_eq!(f.next_released(), None);
        f.forget_done(3);
        // Known to nobody now: the next install is used at once.
        assert_eq!(f.offer(a, "a'", 3), Some("a'"));
    }

    #[test]
    fn a_full_hold_sends_the_flow_to_the_driver_again_and_moves_its_fence() {
        let mut f: Fence<u8> = Fence::default();
        let a = flow(1);
        f.missed(a, 5);
        assert_eq!(f.offer(a, 1, 4), None);
        for _ in 0..MAX_HELD {
            assert!(f.hold(a, b"x", 0));
        }
        assert!(!f.hold(a, b"y", 0));
        // The caller sends the held ones and the new one in batch 6.
        assert_eq!(f.drain_flow(&a).len(), MAX_HELD);
        f.missed(a, 6);
        assert!(f.release(5).is_empty());
        assert_eq!(f.release(6), vec![(a, 1)]);
        assert_eq!(f.held(), 0);
    }
}
