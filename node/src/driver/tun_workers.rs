//! The TUN workers (design note 67, step c): one thread per queue of a
//! multi-queue TUN reads the host's packets, and each runs a [`Worker`]
//! that seals an installed flow's packets where they were read and sends
//! them itself: native ones from where they were sealed (no copy) in one
//! `sendmmsg` per read batch from its own raw socket, QUIC ones through
//! the carrier. What no install covers (a
//! flow's first packets, a move's hold, a trial, DPRP's own port) is copied
//! to the driver as it was read ([`TunMisses`]), and the core decides.
//!
//! The kernel spreads flows over the queues by their hash and, with the
//! TUN's automatic steering, sends a flow's packets to the queue that last
//! wrote its other direction; every TUN worker therefore gets every
//! outbound install.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fpn_proto::ge::GeId;
use fpn_proto::packet::Packet;
use tokio::sync::mpsc;
use tracing::{debug, trace, warn};

use super::fence::Fence;
use super::workers::{INSTALL_QUEUE, REPORT_EVERY, Reporter, SWEEP_STEP_GAP};
use crate::carrier::{Carrier, FrameKind};
use crate::clock::Clock;
use crate::core::worker::{Worker, WorkerOut};
use crate::core::{Install, InstallKey, SendError};
use crate::native::{RawSender, SEND_BATCH, TxBatch};
use crate::tun::{BlockingTunReader, SegmentBuffers};

/// Batches of misses on their way to the driver, from all workers
/// together; while they all wait a worker drops further misses (counted):
/// DPRP and TCP send again.
const MISS_QUEUE: usize = 64;
/// How long an idle worker sleeps in `poll(2)` before it looks at its
/// installs (a new one also waits for the next packet) and stops when
/// the driver is gone.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Packets no install covered, copied as read, for the driver's core; and
/// the QUIC sends that failed (the core turns a too-large one into ICMP).
pub struct TunMisses {
    /// The worker they came from (the batch goes back to it).
    pub worker: usize,
    /// The batch's number (per worker, from 1): the driver says when it
    /// has sent it ([`TunWorkers::recycle`]), which releases installs
    /// waiting behind it (`fence.rs`).
    pub seq: u64,
    /// The worker stopped (its reason): its queue is no longer read.
    pub stopped: Option<String>,
    /// The packets.
    pub packets: TxBatch,
    /// Sends the carrier refused: peer, why, and the protected frame.
    pub failures: Vec<(GeId, SendError, Vec<u8>)>,
}

impl std::fmt::Debug for TunMisses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunMisses")
            .field("worker", &self.worker)
            .field("seq", &self.seq)
            .field("stopped", &self.stopped)
            .field("packets", &self.packets.len())
            .field("failures", &self.failures.len())
            .finish()
    }
}

/// What the TUN workers counted, for `status`.
#[derive(Debug, Default)]
struct Stats {
    reads: AtomicU64,
    gso_reads: AtomicU64,
    read_drops: AtomicU64,
    packets: AtomicU64,
    misses: AtomicU64,
    misses_dropped: AtomicU64,
    native_refused: AtomicU64,
    held: AtomicU64,
    installs_refused: AtomicU64,
    table_sweeps: AtomicU64,
}

/// What a TUN worker needs besides its queue.
#[derive(Clone)]
pub struct TunWorkerParts {
    /// The QUIC carrier (frames of installs on the QUIC path).
    pub carrier: Arc<dyn Carrier>,
    /// Open a raw sender each (the node has the native carrier).
    pub native: bool,
    /// The clock.
    pub clock: Clock,
    /// A TUN packet's slot in the read arena (the MTU's packet) and the
    /// room behind it (trailer, family change).
    pub slot: usize,
    /// See `slot`.
    pub room: usize,
    /// Most installs a worker holds ([`Worker::capacity_for`] the flow
    /// table's size).
    pub install_capacity: usize,
}

/// The driver's side of the TUN workers.
pub struct TunWorkers {
    installs: Vec<SyncSender<Install>>,
    spare: Vec<Sender<TxBatch>>,
    /// Per worker, the last miss batch the driver has sent.
    done: Vec<Arc<AtomicU64>>,
    /// Misses from every worker.
    pub misses: mpsc::Receiver<TunMisses>,
    stats: Arc<Stats>,
    dropped: u64,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TunWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunWorkers")
            .field("workers", &self.installs.len())
            .finish_non_exhaustive()
    }
}

impl TunWorkers {
    /// Starts one worker thread per queue reader, reporting to `workers`
    /// (before it is started).
    pub fn start(
        queues: Vec<BlockingTunReader>,
        parts: &TunWorkerParts,
        workers: &super::WorkerHub,
    ) -> crate::error::Result<Self> {
        let reports = workers.report_sender().ok_or_else(|| {
            crate::error::Error::Terminated(
                "the workers' reports closed before the TUN workers started".to_owned(),
            )
        })?;
        let (miss_tx, misses) = mpsc::channel(MISS_QUEUE);
        let stats = Arc::new(Stats::default());
        let mut hub = Self {
            installs: Vec::new(),
            spare: Vec::new(),
            done: Vec::new(),
            misses,
            stats: stats.clone(),
            dropped: 0,
            threads: Vec::new(),
        };
        for (index, reader) in queues.into_iter().enumerate() {
            // Never blocking: a stalled underlay refuses (counted) instead
            // of holding the thread, and its stop, up.
            let native = match parts.native.then(RawSender::open).transpose() {
                Ok(s) => s.filter(|s| match s.set_nonblocking() {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(worker = index, error = %e, "raw socket not made non-blocking: native packets go through the driver");
                        false
                    }
                }),
                Err(e) => {
                    warn!(worker = index, error = %e, "no raw socket for the TUN worker: its native packets go through the driver");
                    None
                }
            };
            let done = Arc::new(AtomicU64::new(0));
            let (tx, installs) = std::sync::mpsc::sync_channel(INSTALL_QUEUE);
            let (spare_tx, spare) = std::sync::mpsc::channel();
            let w = TunWorker {
                index,
                worker: Worker::with_capacity(parts.install_capacity),
                reader,
                arena: SegmentBuffers::new(crate::driver::TUN_SLOTS, parts.slot, parts.room),
                room: parts.room,
                fence: Fence::default(),
                seq: 0,
                done: done.clone(),
                installs,
                reporter: Reporter::new(reports.clone(), workers.quiet_reports()),
                misses: miss_tx.clone(),
                spare,
                pending: TxBatch::default(),
                failures: Vec::new(),
                carrier: parts.carrier.clone(),
                native,
                native_out: Vec::with_capacity(crate::driver::TUN_SLOTS),
                clock: parts.clock,
                stats: stats.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("fpn-tun-w{index}"))
                .spawn(move || w.run())
                .map_err(|e| crate::error::Error::Io {
                    what: format!("starting TUN worker thread {index}"),
                    source: e,
                })?;
            hub.installs.push(tx);
            hub.spare.push(spare_tx);
            hub.done.push(done);
            hub.threads.push(thread);
        }
        Ok(hub)
    }

    /// Hands an outbound install to every worker.
    pub fn install(&mut self, install: Install) {
        let Some((last, rest)) = self.installs.split_last() else {
            return;
        };
        for tx in rest {
            super::workers::offered(tx.try_send(install.clone()), &mut self.dropped);
        }
        super::workers::offered(last.try_send(install), &mut self.dropped);
    }

    /// The driver has sent a miss batch's packets (and failures): its
    /// number goes back to the worker (installs waiting behind it may be
    /// used now), the batch too, emptied.
    pub fn recycle(&self, mut m: TunMisses) {
        if let Some(d) = self.done.get(m.worker) {
            d.fetch_max(m.seq, Ordering::Release);
        }
        m.packets.clear();
        if let Some(tx) = self.spare.get(m.worker) {
            let _ = tx.send(m.packets);
        }
    }

    /// The workers' counters, added for `status`.
    pub fn add_counters(&self, c: &mut std::collections::BTreeMap<String, u64>) {
        let s = &self.stats;
        for (k, v) in [
            ("worker_tun_reads", &s.reads),
            ("worker_tun_gso_reads", &s.gso_reads),
            ("worker_tun_read_drops", &s.read_drops),
            ("worker_tun_packets", &s.packets),
            ("worker_tun_misses", &s.misses),
            ("worker_tun_misses_dropped", &s.misses_dropped),
            ("worker_native_refused", &s.native_refused),
            ("worker_tun_held", &s.held),
            ("worker_installs_refused", &s.installs_refused),
            ("worker_table_sweeps", &s.table_sweeps),
        ] {
            *c.entry(k.to_owned()).or_default() += v.load(Ordering::Relaxed);
        }
        *c.entry("worker_installs_dropped".to_owned()).or_default() += self.dropped;
    }
}

impl Drop for TunWorkers {
    fn drop(&mut self) {
        // The threads see their install channel close within IDLE_WAIT;
        // joined so the TUN's queues are closed when the driver is gone.
        self.installs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TUN worker thread's state.
struct TunWorker {
    index: usize,
    worker: Worker,
    reader: BlockingTunReader,
    arena: SegmentBuffers,
    /// Room behind a packet for sealing and a change of family.
    room: usize,
    /// Installs waiting for the driver to send their flows' misses.
    fence: Fence<Install>,
    /// Miss batches handed to the driver so far (the one being filled is
    /// `seq + 1`).
    seq: u64,
    /// The last batch the driver has sent.
    done: Arc<AtomicU64>,
    installs: Receiver<Install>,
    reporter: Reporter,
    misses: mpsc::Sender<TunMisses>,
    spare: Receiver<TxBatch>,
    /// Misses of this read batch.
    pending: TxBatch,
    failures: Vec<(GeId, SendError, Vec<u8>)>,
    carrier: Arc<dyn Carrier>,
    native: Option<RawSender>,
    /// This read batch's native packets: arena slot and where in it.
    native_out: Vec<(usize, usize, usize)>,
    clock: Clock,
    stats: Arc<Stats>,
}

impl TunWorker {
    /// Takes an install; a full table leaves the flow with the driver.
    /// Counted per worker: each holds every outbound install.
    fn take(&mut self, install: Install) {
        let (sweeps, _) = self.worker.table_counts();
        if !self.worker.install(install) {
            self.stats.installs_refused.fetch_add(1, Ordering::Relaxed);
            trace!("worker table full: the flow stays with the driver until a sweep");
        }
        let swept = self.worker.table_counts().0 - sweeps;
        if swept > 0 {
            self.stats.table_sweeps.fetch_add(swept, Ordering::Relaxed);
        }
    }

    fn run(mut self) {
        debug!(worker = self.index, "TUN worker started");
        let mut stopped = None;
        loop {
            if !self.take_installs() {
                break;
            }
            let wait = if self.worker.sweeping() {
                // The next step of a sweep's pass soon, also when idle.
                SWEEP_STEP_GAP
            } else if self.worker.has_report() || self.fence.held() > 0 {
                REPORT_EVERY
            } else {
                IDLE_WAIT
            };
            match self.reader.read_batch(&mut self.arena, wait) {
                Ok(st) => {
                    let s = &self.stats;
                    s.reads.fetch_add(st.reads as u64, Ordering::Relaxed);
                    s.gso_reads
                        .fetch_add(st.gso_reads as u64, Ordering::Relaxed);
                    s.read_drops.fetch_add(st.dropped as u64, Ordering::Relaxed);
                    s.packets.fetch_add(st.packets as u64, Ordering::Relaxed);
                    if let Some(e) = st.last_error {
                        debug!(worker = self.index, error = %e, dropped = st.dropped, "TUN reads dropped");
                    }
                }
                Err(e) => {
                    warn!(worker = self.index, error = %e, "TUN read failed; this worker stops");
                    stopped = Some(e.to_string());
                    break;
                }
            }
            let now = self.clock.now();
            self.take_installs();
            // Held packets of flows whose installs may be used now go
            // first: they were read before this batch.
            self.release(now);
            for i in 0..self.arena.len() {
                if self.fence.any_waiting() && self.hold(i) {
                    continue;
                }
                let (slot, len) = self.arena.slot_mut(i);
                let native = Self::packet(
                    &mut self.worker,
                    slot,
                    len,
                    now,
                    (&mut self.pending, &mut self.fence, self.seq + 1),
                    &*self.carrier,
                    &mut self.failures,
                );
                if let Some((start, end)) = native {
                    self.native_out.push((i, start, end));
                }
                self.make_room();
            }
            self.send_native();
            self.arena.clear();
            self.hand_misses();
            self.reporter.report(&mut self.worker, now, false);
            if self.worker.periodic_sweep(now) {
                let done = self.settled();
                self.fence.forget_done(done);
            }
        }
        // What is held goes to the driver, in order.
        while let Some((_, b)) = self.fence.next_any() {
            self.make_room();
            self.pending.push(&b);
        }
        self.hand_misses();
        if let Some(why) = stopped {
            // The driver must know: this queue is no longer read.
            let _ = self.misses.try_send(TunMisses {
                worker: self.index,
                seq: 0,
                stopped: Some(why),
                packets: TxBatch::default(),
                failures: Vec::new(),
            });
        }
        let now = self.clock.now();
        self.reporter.report(&mut self.worker, now, true);
        debug!(
            worker = self.index,
            installs = self.worker.len(),
            "TUN worker stopped"
        );
    }

    /// Holds arena packet `i` when its flow's install waits for the
    /// driver; true when it was taken (held, or handed to the driver
    /// behind the flow's held ones when the hold is full).
    fn hold(&mut self, i: usize) -> bool {
        let p = self.arena.packet(i);
        let Ok(flow) = Packet::parse(p).map(|p| p.flow_id()) else {
            return false;
        };
        if !self.fence.is_waiting(&flow) {
            return false;
        }
        if self.fence.hold(flow, p, self.room) {
            self.stats.held.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        // The hold is full: the flow's packets go to the driver again, in
        // order, and its install waits for that batch.
        for b in self.fence.drain_flow(&flow) {
            self.make_room();
            self.pending.push(&b);
            self.fence.recycle(b);
        }
        self.make_room();
        self.pending.push(self.arena.packet(i));
        self.fence.missed(flow, self.seq + 1);
        true
    }

    /// Uses the installs whose flows' misses the driver has sent, then
    /// sends their held packets with them, in the order read.
    fn release(&mut self, now: Instant) {
        if !self.fence.any_waiting() && self.fence.held() == 0 {
            return;
        }
        let done = self.settled();
        for (_, i) in self.fence.release(done) {
            self.take(i);
        }
        while let Some((flow, mut b)) = self.fence.next_released() {
            let len = b.len();
            b.resize(len + self.room, 0);
            let native = Self::packet(
                &mut self.worker,
                &mut b,
                len,
                now,
                (&mut self.pending, &mut self.fence, self.seq + 1),
                &*self.carrier,
                &mut self.failures,
            );
            if let (Some((start, end)), Some(sender)) = (native, self.native.as_mut()) {
                let refused = sender.send_counting(&[&b[start..end]]);
                self.stats
                    .native_refused
                    .fetch_add(refused as u64, Ordering::Relaxed);
            }
            self.make_room();
            trace!(%flow, "held packet released");
            b.clear();
            self.fence.recycle(b);
        }
    }

    /// Takes the installs that wait; false when the driver is gone.
    fn take_installs(&mut self) -> bool {
        loop {
            match self.installs.try_recv() {
                Ok(i) => {
                    // An outbound install waits while its flow's misses
                    // may still be on their way to the wire (`fence.rs`).
                    let i = match i.key {
                        InstallKey::Tun(flow) => {
                            let done = self.settled();
                            match self.fence.offer(flow, i, done) {
                                Some(i) => i,
                                None => continue,
                            }
                        }
                        _ => i,
                    };
                    self.take(i);
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// One packet (the parts borrowed apart from the arena that holds it;
    /// a miss goes into `pending`, batch `batch`, noted in the fence).
    /// Returns where in `slot` a native packet to send lies.
    fn packet(
        worker: &mut Worker,
        slot: &mut [u8],
        len: usize,
        now: Instant,
        (pending, fence, batch): (&mut TxBatch, &mut Fence<Install>, u64),
        carrier: &dyn Carrier,
        failures: &mut Vec<(GeId, SendError, Vec<u8>)>,
    ) -> Option<(usize, usize)> {
        let base = slot.as_ptr().addr();
        match worker.handle_tun_packet(slot, len, now) {
            WorkerOut::Native(p) => {
                let start = p.as_ptr().addr() - base;
                return Some((start, start + p.len()));
            }
            WorkerOut::Quic { target, frame } => {
                if let Err(e) = carrier.send(target, FrameKind::Data, frame) {
                    failures.push((target.ge, SendError::from(&e), frame.to_vec()));
                }
            }
            WorkerOut::Core => {
                // Untouched by the worker: as read from the TUN.
                let p = &slot[..len];
                if let Ok(flow) = Packet::parse(p).map(|p| p.flow_id()) {
                    fence.missed(flow, batch);
                }
                pending.push(p);
            }
            WorkerOut::Tun(_) | WorkerOut::Dropped => {}
        }
        None
    }

    /// Sends this read batch's native packets from the arena, where they
    /// were sealed, `SEND_BATCH` per `sendmmsg`.
    fn send_native(&mut self) {
        let Some(sender) = self.native.as_mut() else {
            // No raw socket (the core makes no native installs then).
            let n = self.native_out.len() as u64;
            self.native_out.clear();
            self.stats.native_refused.fetch_add(n, Ordering::Relaxed);
            return;
        };
        let mut refs: [&[u8]; SEND_BATCH] = [&[]; SEND_BATCH];
        for chunk in self.native_out.chunks(SEND_BATCH) {
            for (r, &(i, start, end)) in refs.iter_mut().zip(chunk) {
                *r = &self.arena.slot(i)[start..end];
            }
            let refused = sender.send_counting(&refs[..chunk.len()]);
            self.stats
                .native_refused
                .fetch_add(refused as u64, Ordering::Relaxed);
        }
        self.native_out.clear();
    }

    /// The misses batches the driver has sent, as the fence counts them
    /// (lost batches included once every batch before them is sent).
    fn settled(&mut self) -> u64 {
        self.fence.settle(self.done.load(Ordering::Acquire))
    }

    /// Hands the misses to the driver when the batch is full, so the
    /// next one fits.
    fn make_room(&mut self) {
        if self.pending.is_full() {
            self.hand_misses();
        }
    }

    /// Sends this batch's misses (and failed sends) to the driver.
    fn hand_misses(&mut self) {
        if self.pending.is_empty() && self.failures.is_empty() {
            return;
        }
        // Numbered whether or not it reaches the driver: the fence only
        // ever waits for numbers the driver can reach or pass.
        self.seq += 1;
        let n = self.pending.len() as u64;
        self.stats.misses.fetch_add(n, Ordering::Relaxed);
        let Ok(permit) = self.misses.try_reserve() else {
            // The driver is behind (or gone): dropped, counted.
            let lost = n + self.failures.len() as u64;
            self.stats.misses_dropped.fetch_add(lost, Ordering::Relaxed);
            trace!(packets = n, "the driver is behind: misses dropped");
            self.fence.lost(self.seq);
            self.pending.clear();
            self.failures.clear();
            return;
        };
        let next = self.spare.try_recv().unwrap_or_default();
        permit.send(TunMisses {
            worker: self.index,
            seq: self.seq,
            stopped: None,
            packets: std::mem::replace(&mut self.pending, next),
            failures: std::mem::take(&mut self.failures),
        });
    }
}

/// Writes each packet into the TUN queue of its flow (one of `queues`,
/// by a hash of its addresses, protocol and ports). The kernel's automatic
/// steering then hands the flow's outbound packets to the same queue's
/// reader, so the TUN workers share the flows instead of every flow with
/// inbound traffic landing on the queue the receive threads write to.
#[derive(Debug)]
pub struct SpreadWriter {
    queues: Vec<crate::tun::TunWriter>,
}

impl SpreadWriter {
    /// A writer over `queues` (at least one).
    pub fn new(queues: Vec<crate::tun::TunWriter>) -> Option<Self> {
        (!queues.is_empty()).then_some(Self { queues })
    }

    fn pick(&self, packet: &[u8]) -> &crate::tun::TunWriter {
        let k = flow_hash(packet) as usize % self.queues.len();
        &self.queues[k]
    }
}

impl super::TunWriter for SpreadWriter {
    fn write_packet(&self, packet: &[u8]) -> std::io::Result<usize> {
        self.pick(packet).try_write(packet)
    }

    fn write_gso(
        &self,
        hdr: &fpn_proto::packet::vnet::VnetRepr,
        packet: &[u8],
    ) -> std::io::Result<usize> {
        self.pick(packet).try_write_gso(hdr, packet)
    }
}

/// A hash of an IP packet's flow that is the same for both directions
/// (addresses and ports in sorted order), from its headers only; 0 for
/// what is not IPv4 or IPv6. Not keyed: it only spreads this host's own
/// flows over its queues.
pub fn flow_hash(p: &[u8]) -> u32 {
    let (proto, src, dst, l4) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            (p[9], &p[12..16], &p[16..20], ihl)
        }
        Some(6) if p.len() >= 40 => (p[6], &p[8..24], &p[24..40], 40),
        _ => return 0,
    };
    let ports = match proto {
        6 | 17 if p.len() >= l4 + 4 => {
            let (a, b) = (&p[l4..l4 + 2], &p[l4 + 2..l4 + 4]);
            if a <= b { [a, b] } else { [b, a] }
        }
        _ => [&[][..], &[][..]],
    };
    let (lo, hi) = if src <= dst { (src, dst) } else { (dst, src) };
    // FNV-1a over the sorted parts.
    let mut h: u32 = 0x811c_9dc5;
    for part in [lo, hi, ports[0], ports[1], &[proto][..]] {
        for &b in part {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::flow_hash;
    use crate::core::sim::udp_packet;
    use std::net::Ipv4Addr;

    #[test]
    fn a_flow_hashes_the_same_both_ways_and_flows_spread() {
        let (a, b) = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2));
        let there = flow_hash(&udp_packet(a, b, 4000, 5000, b"x"));
        let back = flow_hash(&udp_packet(b, a, 5000, 4000, b"y"));
        assert_eq!(there, back);
        // Sixteen flows of one pair over two queues: both get some.
        let on_one = (0..16)
            .filter(|k| flow_hash(&udp_packet(a, b, 4000 + k, 5000, b"z")) % 2 == 1)
            .count();
        assert!((3..=13).contains(&on_one), "{on_one} of 16 on queue 1");
        assert_eq!(flow_hash(&[0x45]), 0);
        assert_eq!(flow_hash(&[]), 0);
    }
}
