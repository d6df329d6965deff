//! The TUN workers (design note 67, step c): one thread per queue of a
//! multi-queue TUN reads the host's packets, and each runs a [`Worker`]
//! that seals an installed flow's packets where they were read and sends
//! them itself: native ones in one `sendmmsg` per read batch from its own
//! raw socket, QUIC ones through the carrier. What no install covers (a
//! flow's first packets, a move's hold, a trial, DPRP's own port) is copied
//! to the driver as it was read ([`TunMisses`]), and the core decides.
//!
//! The kernel spreads flows over the queues by their hash and, with the
//! TUN's automatic steering, sends a flow's packets to the queue that last
//! wrote its other direction; every TUN worker therefore gets every
//! outbound install.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fpn_proto::ge::GeId;
use tokio::sync::mpsc;
use tracing::{debug, trace, warn};

use super::workers::{INSTALL_QUEUE, REPORT_EVERY, Reporter, SWEEP_EVERY};
use crate::carrier::{Carrier, FrameKind};
use crate::clock::Clock;
use crate::core::worker::{Worker, WorkerOut};
use crate::core::{Install, SendError, WorkerReport};
use crate::native::{RawSender, TxBatch, send_here};
use crate::tun::{BlockingTunReader, SegmentBuffers};

/// Batches of misses on their way to the driver; a worker whose batches
/// all wait drops further misses (counted): DPRP and TCP send again.
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
    /// The packets.
    pub packets: TxBatch,
    /// Sends the carrier refused: peer, why, and the protected frame.
    pub failures: Vec<(GeId, SendError, Vec<u8>)>,
}

impl std::fmt::Debug for TunMisses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunMisses")
            .field("worker", &self.worker)
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
}

/// The driver's side of the TUN workers.
pub struct TunWorkers {
    installs: Vec<SyncSender<Install>>,
    spare: Vec<Sender<TxBatch>>,
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
    /// Starts one worker thread per queue reader, reporting to `reports`.
    pub fn start(
        queues: Vec<BlockingTunReader>,
        parts: &TunWorkerParts,
        reports: &mpsc::Sender<WorkerReport>,
    ) -> crate::error::Result<Self> {
        let (miss_tx, misses) = mpsc::channel(MISS_QUEUE);
        let stats = Arc::new(Stats::default());
        let mut hub = Self {
            installs: Vec::new(),
            spare: Vec::new(),
            misses,
            stats: stats.clone(),
            dropped: 0,
            threads: Vec::new(),
        };
        for (index, reader) in queues.into_iter().enumerate() {
            let native = if parts.native {
                Some(RawSender::open()?)
            } else {
                None
            };
            let (tx, installs) = std::sync::mpsc::sync_channel(INSTALL_QUEUE);
            let (spare_tx, spare) = std::sync::mpsc::channel();
            let w = TunWorker {
                index,
                worker: Worker::default(),
                reader,
                arena: SegmentBuffers::new(crate::driver::TUN_SLOTS, parts.slot, parts.room),
                installs,
                reporter: Reporter::new(reports.clone()),
                misses: miss_tx.clone(),
                spare,
                pending: TxBatch::default(),
                failures: Vec::new(),
                carrier: parts.carrier.clone(),
                native: native.map(|s| (s, TxBatch::default())),
                clock: parts.clock,
                stats: stats.clone(),
                last_sweep: None,
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
            hub.threads.push(thread);
        }
        Ok(hub)
    }

    /// Hands an outbound install to every worker.
    pub fn install(&mut self, install: Install) {
        let n = self.installs.len();
        for (k, tx) in self.installs.iter().enumerate() {
            let i = if k + 1 == n {
                // The last one takes it without a clone.
                return self.send(k, install);
            } else {
                install.clone()
            };
            match tx.try_send(i) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => self.dropped += 1,
            }
        }
    }

    fn send(&mut self, k: usize, install: Install) {
        if let Some(tx) = self.installs.get(k) {
            match tx.try_send(install) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => self.dropped += 1,
            }
        }
    }

    /// Gives a miss batch back to its worker, emptied.
    pub fn recycle(&self, mut m: TunMisses) {
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
    installs: Receiver<Install>,
    reporter: Reporter,
    misses: mpsc::Sender<TunMisses>,
    spare: Receiver<TxBatch>,
    /// Misses of this read batch.
    pending: TxBatch,
    failures: Vec<(GeId, SendError, Vec<u8>)>,
    carrier: Arc<dyn Carrier>,
    native: Option<(RawSender, TxBatch)>,
    clock: Clock,
    stats: Arc<Stats>,
    last_sweep: Option<Instant>,
}

impl TunWorker {
    fn run(mut self) {
        debug!(worker = self.index, "TUN worker started");
        loop {
            if !self.take_installs() {
                break;
            }
            let wait = if self.worker.has_report() {
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
                }
                Err(e) => {
                    warn!(worker = self.index, error = %e, "TUN read failed; this worker stops");
                    break;
                }
            }
            let now = self.clock.now();
            self.take_installs();
            for i in 0..self.arena.len() {
                let (slot, len) = self.arena.slot_mut(i);
                Self::packet(
                    &mut self.worker,
                    slot,
                    len,
                    now,
                    &mut self.pending,
                    &mut self.native,
                    &*self.carrier,
                    &mut self.failures,
                    &self.stats,
                );
                if self.pending.is_full() {
                    self.hand_misses();
                }
            }
            self.arena.clear();
            self.flush_native();
            self.hand_misses();
            self.reporter.report(&mut self.worker, now, false);
            if self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
            {
                self.last_sweep = Some(now);
                self.worker.sweep();
            }
        }
        self.flush_native();
        self.hand_misses();
        let now = self.clock.now();
        self.reporter.report(&mut self.worker, now, true);
        debug!(
            worker = self.index,
            installs = self.worker.len(),
            "TUN worker stopped"
        );
    }

    /// Takes the installs that wait; false when the driver is gone.
    fn take_installs(&mut self) -> bool {
        loop {
            match self.installs.try_recv() {
                Ok(i) => {
                    if !self.worker.install(i) {
                        trace!("worker table full: the flow stays with the driver until a sweep");
                    }
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// One packet of the read batch (the parts borrowed apart from the
    /// arena that holds it).
    #[allow(clippy::too_many_arguments)]
    fn packet(
        worker: &mut Worker,
        slot: &mut [u8],
        len: usize,
        now: Instant,
        pending: &mut TxBatch,
        native: &mut Option<(RawSender, TxBatch)>,
        carrier: &dyn Carrier,
        failures: &mut Vec<(GeId, SendError, Vec<u8>)>,
        stats: &Stats,
    ) {
        match worker.handle_tun_packet(slot, len, now) {
            WorkerOut::Native(p) => match native.as_mut() {
                Some((sender, batch)) => {
                    if batch.is_full() {
                        let refused = send_here(batch, sender);
                        stats
                            .native_refused
                            .fetch_add(refused as u64, Ordering::Relaxed);
                    }
                    batch.push(p);
                }
                None => {
                    stats.native_refused.fetch_add(1, Ordering::Relaxed);
                }
            },
            WorkerOut::Quic { target, frame } => {
                if let Err(e) = carrier.send(target, FrameKind::Data, frame) {
                    failures.push((target.ge, SendError::from(&e), frame.to_vec()));
                }
            }
            WorkerOut::Core => {
                // Untouched by the worker: as read from the TUN.
                stats.misses.fetch_add(1, Ordering::Relaxed);
                pending.push(&slot[..len]);
            }
            WorkerOut::Tun(_) | WorkerOut::Dropped => {}
        }
    }

    fn flush_native(&mut self) {
        if let Some((sender, batch)) = self.native.as_mut()
            && !batch.is_empty()
        {
            let refused = send_here(batch, sender);
            self.stats
                .native_refused
                .fetch_add(refused as u64, Ordering::Relaxed);
        }
    }

    /// Sends this batch's misses (and failed sends) to the driver.
    fn hand_misses(&mut self) {
        if self.pending.is_empty() && self.failures.is_empty() {
            return;
        }
        let next = self.spare.try_recv().unwrap_or_default();
        let m = TunMisses {
            worker: self.index,
            packets: std::mem::replace(&mut self.pending, next),
            failures: std::mem::take(&mut self.failures),
        };
        match self.misses.try_send(m) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                self.stats
                    .misses_dropped
                    .fetch_add(m.packets.len() as u64, Ordering::Relaxed);
                trace!(
                    packets = m.packets.len(),
                    "the driver is behind: misses dropped"
                );
                self.pending = m.packets;
                self.pending.clear();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
