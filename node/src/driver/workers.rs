//! Data-path workers on threads (design note 67, step c): the native
//! receive threads each run a [`Worker`] as their [`RxTap`], so a packet of
//! an installed flow is opened where the ring took it in and written to
//! the TUN from there, without crossing to the driver (one thread hand-off
//! and one wake-up fewer per packet); the TUN workers
//! ([`super::tun_workers`]) do the same for the other direction. The
//! driver hands the core's installs to the workers and takes their
//! reports through the [`WorkerHub`].

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, trace};

use crate::clock::Clock;
use crate::core::worker::{Worker, WorkerOut};
use crate::core::{Install, InstallKey, WorkerReport};
use crate::native::RxTap;
use crate::tun::Offloads;

use super::TunWriter;
use super::tun_out::TunOut;

/// Installs waiting for one worker; beyond it they are dropped (counted):
/// the flow's next packet through the core makes it again.
pub(super) const INSTALL_QUEUE: usize = 4096;
/// Reports waiting for the driver; a worker keeps adding to its own while
/// the queue is full.
const REPORT_QUEUE: usize = 64;
/// A worker reports at most this often while packets flow (sooner for a
/// rekey or a first packet): the path machines' timers are hundreds of
/// milliseconds.
pub(super) const REPORT_EVERY: Duration = Duration::from_millis(5);
/// Packets between two looks at the clock for the report.
const REPORT_CHECK_PACKETS: u32 = 256;
/// How soon an idle worker's thread comes back for the next step of a
/// sweep's pass ([`Worker::periodic_sweep`]).
pub(super) const SWEEP_STEP_GAP: Duration = Duration::from_millis(1);
/// The receive threads, one per family of the underlay (IPv4's first):
/// the native carrier's packet ring has both.
pub const RING_WORKERS: usize = 2;

/// The driver's side of the workers.
pub struct WorkerHub {
    /// To the receive threads' workers, in the threads' order.
    installs: Vec<SyncSender<Install>>,
    /// Reports from every worker.
    pub reports: mpsc::Receiver<WorkerReport>,
    /// Kept while workers are being made ([`WorkerHub::started`] drops
    /// it, so the channel closes when every worker stopped).
    report_tx: Option<mpsc::Sender<WorkerReport>>,
    /// What the workers' TUN writes counted, for `status`.
    tun_counters: Vec<Arc<Mutex<std::collections::BTreeMap<String, u64>>>>,
    /// The TUN workers (reading the TUN's queues), when they run.
    pub tun: Option<super::tun_workers::TunWorkers>,
    dropped: u64,
}

impl std::fmt::Debug for WorkerHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHub")
            .field("workers", &self.installs.len())
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl Default for WorkerHub {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerHub {
    /// A hub without workers yet.
    pub fn new() -> Self {
        let (report_tx, reports) = mpsc::channel(REPORT_QUEUE);
        Self {
            installs: Vec::new(),
            reports,
            report_tx: Some(report_tx),
            tun_counters: Vec::new(),
            tun: None,
            dropped: 0,
        }
    }

    /// Where workers send their reports (`None` once started).
    pub fn report_sender(&self) -> Option<mpsc::Sender<WorkerReport>> {
        self.report_tx.clone()
    }

    /// Every worker is made: the report channel closes when they all stop.
    pub fn started(&mut self) {
        self.report_tx = None;
    }

    /// Which installs the workers take.
    pub fn kinds(&self) -> crate::core::InstallKinds {
        crate::core::InstallKinds {
            native: !self.installs.is_empty(),
            tun: self.tun.is_some(),
            ..Default::default()
        }
    }

    /// Hands an install to the worker that takes it: an inbound native one
    /// to the receive thread of its wire's family (the only one its packets
    /// reach), an outbound one to every TUN worker (the kernel picks the
    /// queue a flow's packets come from, and may move it).
    pub fn install(&mut self, install: Install) {
        let wire = match install.key {
            InstallKey::Native(wire) => wire,
            InstallKey::Tun(_) => {
                if let Some(t) = self.tun.as_mut() {
                    t.install(install);
                }
                return;
            }
            InstallKey::Carrier(..) => return,
        };
        let ring = usize::from(!wire.dst.is_ipv4());
        let Some(tx) = self.installs.get(ring) else {
            return;
        };
        offered(tx.try_send(install), &mut self.dropped);
    }

    /// The workers' TUN counters, added to the driver's for `status`
    /// (`worker_` in front of each name).
    pub fn add_counters(&self, c: &mut std::collections::BTreeMap<String, u64>) {
        for shared in &self.tun_counters {
            let m = shared.lock().unwrap_or_else(|e| e.into_inner());
            for k in [
                "tun_writes",
                "tun_gso_writes",
                "tun_coalesced_segments",
                "table_sweeps",
                "installs_refused",
            ] {
                if let Some(v) = m.get(k) {
                    *c.entry(format!("worker_{k}")).or_default() += v;
                }
            }
        }
        *c.entry("worker_installs_dropped".to_owned()).or_default() += self.dropped;
        if let Some(t) = &self.tun {
            t.add_counters(c);
        }
    }

    /// Makes the workers of the native receive threads ([`RING_WORKERS`],
    /// in the threads' order) writing to `tun`.
    /// Each holds at most `install_capacity` installs
    /// ([`Worker::capacity_for`] the flow table's size).
    pub fn ring_workers(
        &mut self,
        tun: &Arc<dyn TunWriter>,
        offloads: Offloads,
        coalesce: bool,
        clock: Clock,
        install_capacity: usize,
    ) -> Vec<Box<dyn RxTap>> {
        let Some(report_tx) = self.report_sender() else {
            return Vec::new();
        };
        let mut taps: Vec<Box<dyn RxTap>> = Vec::with_capacity(RING_WORKERS);
        for _ in 0..RING_WORKERS {
            let (tx, rx) = std::sync::mpsc::sync_channel(INSTALL_QUEUE);
            let counters = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
            self.installs.push(tx);
            self.tun_counters.push(counters.clone());
            taps.push(Box::new(RingWorker {
                worker: Worker::with_capacity(install_capacity),
                installs: rx,
                reporter: Reporter::new(report_tx.clone()),
                tun: TunOut::new(tun.clone(), offloads, coalesce),
                clock,
                since_check: 0,
                counters,
                published: (0, 0),
            }));
        }
        taps
    }

    /// The receive threads are gone (their taps were dropped without a
    /// native carrier): no native installs.
    pub fn drop_ring_workers(&mut self) {
        self.installs.clear();
        self.tun_counters.clear();
    }
}

/// Counts an install a worker's full queue refused (one whose thread
/// stopped is not counted: nobody would have used it).
pub(super) fn offered<T>(r: Result<(), TrySendError<T>>, dropped: &mut u64) {
    if matches!(r, Err(TrySendError::Full(_))) {
        *dropped += 1;
    }
}

/// A worker's reports to the driver: at most every [`REPORT_EVERY`] while
/// packets flow, at once when urgent.
pub(super) struct Reporter {
    tx: mpsc::Sender<WorkerReport>,
    last: Option<Instant>,
}

impl Reporter {
    pub(super) fn new(tx: mpsc::Sender<WorkerReport>) -> Self {
        Self { tx, last: None }
    }

    /// Sends `worker`'s report when one is due (or urgent, or `force`) and
    /// the driver has room for it; otherwise it keeps growing there. True
    /// when one was sent.
    pub(super) fn report(&mut self, worker: &mut Worker, now: Instant, force: bool) -> bool {
        let due = force
            || worker.report_urgent()
            || self
                .last
                .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY);
        if !due {
            return false;
        }
        let Ok(permit) = self.tx.try_reserve() else {
            return false;
        };
        let r = worker.take_report();
        if r.is_empty() {
            return false;
        }
        permit.send(r);
        self.last = Some(now);
        true
    }
}

/// A worker on a native receive thread.
struct RingWorker {
    worker: Worker,
    installs: Receiver<Install>,
    reporter: Reporter,
    tun: TunOut,
    clock: Clock,
    since_check: u32,
    counters: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    /// The table counts last put into `counters`.
    published: (u64, u64),
}

impl RingWorker {
    fn take_installs(&mut self) {
        while let Ok(i) = self.installs.try_recv() {
            if !self.worker.install(i) {
                trace!("worker table full: the flow stays with the driver until a sweep");
            }
        }
    }

    /// Sends the report when one is due, with the TUN and table counters
    /// for `status`.
    fn report(&mut self, now: Instant, force: bool) {
        if self.reporter.report(&mut self.worker, now, force) {
            let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            self.tun.add_counters(&mut c);
            self.add_table_counts(&mut c);
        }
    }

    /// The table's counts, kept current also when nothing is carried (a
    /// worker whose installs are all refused reports nothing else).
    fn add_table_counts(&self, c: &mut std::collections::BTreeMap<String, u64>) {
        let (sweeps, refused) = self.worker.table_counts();
        c.insert("table_sweeps".to_owned(), sweeps);
        c.insert("installs_refused".to_owned(), refused);
    }
}

impl RxTap for RingWorker {
    fn packet(&mut self, buf: &mut [u8], len: usize) -> bool {
        self.take_installs();
        if self.worker.is_empty() {
            return false;
        }
        let now = self.clock.now();
        let taken = match self.worker.handle_native_packet(buf, len, now) {
            WorkerOut::Tun(p) => {
                if !self.tun.write(p) {
                    self.worker.count_tun_write_drop();
                    trace!("TUN write refused on a receive thread");
                }
                true
            }
            WorkerOut::Core => false,
            WorkerOut::Native(_) | WorkerOut::Quic { .. } | WorkerOut::Dropped => true,
        };
        self.since_check += 1;
        if self.since_check >= REPORT_CHECK_PACKETS || self.worker.report_urgent() {
            self.since_check = 0;
            self.tun.flush();
            self.report(now, false);
        }
        taken
    }

    fn wake_within(&self) -> Option<Duration> {
        // A sweep's pass is under way: its next step soon, also when no
        // packet comes. A report waits: the thread comes back for it
        // within this (status and the core's counters stay current).
        if self.worker.sweeping() {
            return Some(SWEEP_STEP_GAP);
        }
        self.worker.has_report().then_some(REPORT_EVERY)
    }

    fn idle(&mut self) {
        if !self.tun.flush() {
            self.worker.count_tun_write_drop();
        }
        self.take_installs();
        self.since_check = 0;
        let now = self.clock.now();
        self.report(now, false);
        if self.worker.table_counts() != self.published {
            self.published = self.worker.table_counts();
            let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            self.add_table_counts(&mut c);
        }
        self.worker.periodic_sweep(now);
    }
}

impl Drop for RingWorker {
    fn drop(&mut self) {
        self.tun.flush();
        let now = self.clock.now();
        self.report(now, true);
        debug!(
            installs = self.worker.len(),
            "receive-thread worker stopped"
        );
    }
}
