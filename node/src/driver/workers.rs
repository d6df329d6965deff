//! Data-path workers on threads (design note 67, step c): the native
//! receive threads each run a [`Worker`] as their [`RxTap`], so a packet of
//! an installed flow is opened where the ring took it in and written to
//! the TUN from there, without crossing to the driver (one thread hand-off
//! and one wake-up fewer per packet); the TUN workers
//! ([`super::tun_workers`]) do the same for the other direction. The
//! driver hands the core's installs to the workers and takes their
//! reports through the [`WorkerHub`].

use std::sync::atomic::{AtomicBool, Ordering};
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
/// A worker hands its counters over at most this often while packets flow
/// (at once for a rekey or a first packet heard): `status` reads them, and
/// each hand-over takes a lock.
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
    /// Reports that wake nobody (design note 84).
    quiet: Arc<QuietReports>,
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
            quiet: Arc::default(),
            tun_counters: Vec::new(),
            tun: None,
            dropped: 0,
        }
    }

    /// Where workers send their reports (`None` once started).
    pub fn report_sender(&self) -> Option<mpsc::Sender<WorkerReport>> {
        self.report_tx.clone()
    }

    /// The workers' reports that woke nobody since the last call, merged:
    /// the driver takes them at every wake-up, before what woke it (a
    /// flow's next packet from the TUN then finds the core knowing what
    /// the workers saw of it).
    pub fn take_quiet(&self) -> Option<WorkerReport> {
        self.quiet.take()
    }

    /// Where workers put the reports that wake nobody.
    pub(super) fn quiet_reports(&self) -> Arc<QuietReports> {
        self.quiet.clone()
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
                reporter: Reporter::new(report_tx.clone(), self.quiet.clone()),
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

/// The workers' reports that need no wake-up of the driver: merged here,
/// taken by the driver at its next wake-up, whatever woke it
/// ([`WorkerHub::take_quiet`]). Each report sent on the channel woke the
/// driver: at a node carrying lone packets, after nearly every packet it
/// carried (design note 84 counts one `epoll_wait` and one eventfd `write`
/// per warm UDP echo at each node). Counters are read only through
/// `status` and `/metrics` (queries, which wake the driver); what the core
/// learns from a heard first packet matters only for its next decision
/// about that flow, which comes with a wake-up of its own (the flow's next
/// packet from the TUN). A flow at its rekey limit still goes on the
/// channel: its sender must not go past the limit.
#[derive(Debug, Default)]
pub(super) struct QuietReports {
    /// Something waits in `report` (a look without the lock at each
    /// wake-up).
    waiting: AtomicBool,
    report: Mutex<WorkerReport>,
}

impl QuietReports {
    /// Adds `report` to what waits.
    pub(super) fn put(&self, report: WorkerReport) {
        if report.is_empty() {
            return;
        }
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        r.merge(report);
        self.waiting.store(true, Ordering::Release);
    }

    /// What waits, if anything.
    fn take(&self) -> Option<WorkerReport> {
        if !self.waiting.load(Ordering::Acquire) {
            return None;
        }
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.store(false, Ordering::Relaxed);
        let r = std::mem::take(&mut *r);
        (!r.is_empty()).then_some(r)
    }
}

/// A worker's reports to the driver: an urgent one at once on the channel
/// (which wakes the driver), the others quietly ([`QuietReports`]) at most
/// every [`REPORT_EVERY`] while packets flow, or when the caller says.
pub(super) struct Reporter {
    tx: mpsc::Sender<WorkerReport>,
    quiet: Arc<QuietReports>,
    last: Option<Instant>,
}

impl Reporter {
    pub(super) fn new(tx: mpsc::Sender<WorkerReport>, quiet: Arc<QuietReports>) -> Self {
        Self {
            tx,
            quiet,
            last: None,
        }
    }

    /// Hands `worker`'s heard first packets over at once, quietly.
    pub(super) fn hand_over_heard(&self, worker: &mut Worker) {
        self.quiet.put(worker.take_heard());
    }

    /// Hands `worker`'s report over: an urgent one on the channel when the
    /// driver has room for it (otherwise it keeps growing in the worker),
    /// the others quietly when due (or `force`). True when one was handed
    /// over.
    pub(super) fn report(&mut self, worker: &mut Worker, now: Instant, force: bool) -> bool {
        if worker.report_urgent() {
            let Ok(permit) = self.tx.try_reserve() else {
                return false;
            };
            permit.send(worker.take_report());
            self.last = Some(now);
            return true;
        }
        let due = force
            || self
                .last
                .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY);
        if !due || !worker.has_report() {
            return false;
        }
        self.quiet.put(worker.take_report());
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

    /// Hands the report over when one is due, and then publishes the TUN
    /// and table counters for `status`.
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
                if self.worker.has_heard() {
                    // Before the write: the core then knows the flow was
                    // heard before the application can answer (its answer
                    // reaches the driver after the driver took this). The
                    // counters stay for the report after the write, which
                    // publishes the write's counts too.
                    self.reporter.hand_over_heard(&mut self.worker);
                }
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use fpn_proto::flow::FlowId;

    use super::*;

    fn wire() -> FlowId {
        FlowId {
            src: Ipv4Addr::new(198, 18, 0, 2).into(),
            dst: Ipv4Addr::new(198, 18, 0, 1).into(),
            protocol: 17,
            src_port: 7000,
            dst_port: 40_000,
        }
    }

    /// A hub, a worker's reporter to it, and the worker.
    fn reporting() -> (WorkerHub, Reporter, Worker) {
        let hub = WorkerHub::new();
        let reporter = Reporter::new(
            hub.report_sender().expect("not started"),
            hub.quiet_reports(),
        );
        (hub, reporter, Worker::with_capacity(16))
    }

    /// A worker's reports, a first packet heard among them, go to the
    /// driver without a send on the channel (each send woke the driver,
    /// design note 84); the driver takes them, merged, at its next
    /// wake-up, once.
    #[test]
    fn reports_wait_for_the_driver_without_waking_it() {
        let (mut hub, mut reporter, mut w) = reporting();
        assert!(hub.take_quiet().is_none());
        w.heard_for_test(wire(), Some(7));
        assert!(!w.report_urgent(), "a heard first packet is not urgent");
        let t0 = Instant::now();
        assert!(reporter.report(&mut w, t0, true));
        assert!(!w.has_report());
        // A second one, within the same 5 ms: only when the caller says.
        w.heard_for_test(wire(), Some(8));
        assert!(!reporter.report(&mut w, t0, false));
        assert!(reporter.report(&mut w, t0 + REPORT_EVERY, false));
        assert!(hub.reports.try_recv().is_err(), "nothing on the channel");
        let r = hub.take_quiet().expect("waiting for the driver");
        assert_eq!(r.heard, vec![(wire(), Some(7)), (wire(), Some(8))]);
        assert!(hub.take_quiet().is_none(), "taken once");
    }

    /// A flow at its rekey limit still goes on the channel at once: its
    /// sender must not go past the limit.
    #[test]
    fn a_rekey_goes_on_the_channel() {
        let (mut hub, mut reporter, mut w) = reporting();
        w.rekey_for_test(wire());
        assert!(w.report_urgent());
        assert!(reporter.report(&mut w, Instant::now(), false));
        let r = hub.reports.try_recv().expect("on the channel");
        assert_eq!(r.rekeys, vec![wire()]);
        assert!(hub.take_quiet().is_none());
    }

    /// Reports merged are as one: counters summed, the latest receive
    /// time, the lists in order.
    #[test]
    fn merged_reports_are_as_one() {
        let t0 = Instant::now();
        let mut a = WorkerReport::default();
        a.counters.native_in = 2;
        a.counters.tun_write_drops = 1;
        a.received = Some(t0 + REPORT_EVERY);
        a.heard.push((wire(), Some(1)));
        let mut b = WorkerReport::default();
        b.counters.native_in = 3;
        b.counters.seal_errors = 4;
        b.received = Some(t0);
        b.rekeys.push(wire());
        b.heard.push((wire(), Some(2)));
        let mut m = WorkerReport::default();
        m.merge(a);
        m.merge(b);
        m.merge(WorkerReport::default());
        assert_eq!(m.counters.native_in, 5);
        assert_eq!(m.counters.tun_write_drops, 1);
        assert_eq!(m.counters.seal_errors, 4);
        assert_eq!(m.received, Some(t0 + REPORT_EVERY));
        assert_eq!(m.rekeys, vec![wire()]);
        assert_eq!(m.heard, vec![(wire(), Some(1)), (wire(), Some(2))]);
    }

    /// A heard first packet goes over alone, before its TUN write: the
    /// counters wait for the report after the write, which publishes the
    /// write's counts with them (handing everything over before the write
    /// left `status` one write behind until the next report).
    #[test]
    fn a_heard_first_packet_goes_over_alone() {
        let (hub, reporter, mut w) = reporting();
        w.heard_for_test(wire(), Some(3));
        w.count_tun_write_drop();
        reporter.hand_over_heard(&mut w);
        assert!(!w.has_heard());
        assert!(w.has_report(), "the counters stay");
        let r = hub.take_quiet().expect("handed over");
        assert_eq!(r.heard, vec![(wire(), Some(3))]);
        assert_eq!(r.counters, crate::core::WorkerCounters::default());
    }
}
