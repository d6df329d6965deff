//! Data-path workers on threads (design note 67, step c): the native
//! receive threads each run a [`Worker`] as their [`RxTap`], so a packet of
//! an installed flow is opened where the ring took it in and written to
//! the TUN from there, without crossing to the driver (one thread hand-off
//! and one wake-up fewer per packet). The driver hands the core's installs
//! to every worker and takes their reports.

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
const INSTALL_QUEUE: usize = 4096;
/// Reports waiting for the driver; a worker keeps adding to its own while
/// the queue is full.
const REPORT_QUEUE: usize = 64;
/// A worker reports at most this often while packets flow (sooner for a
/// rekey): the path machines' timers are hundreds of milliseconds.
const REPORT_EVERY: Duration = Duration::from_millis(5);
/// Packets between two looks at the clock for the report.
const REPORT_CHECK_PACKETS: u32 = 256;
/// How often a worker drops the installs of flows that ended.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The receive threads, one per family of the underlay (IPv4's first):
/// the native carrier's packet ring has both.
pub const RING_WORKERS: usize = 2;

/// The driver's side of the workers.
pub struct WorkerHub {
    installs: Vec<SyncSender<Install>>,
    /// Reports from every worker.
    pub reports: mpsc::Receiver<WorkerReport>,
    /// What the workers' TUN writes counted, for `status`.
    tun_counters: Vec<Arc<Mutex<std::collections::BTreeMap<String, u64>>>>,
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

impl WorkerHub {
    /// Hands an install to the worker that takes it: an inbound native one
    /// to the receive thread of its wire's family (the only one its packets
    /// reach).
    pub fn install(&mut self, install: Install) {
        let InstallKey::Native(wire) = install.key else {
            return;
        };
        let ring = usize::from(!wire.dst.is_ipv4());
        let Some(tx) = self.installs.get(ring) else {
            return;
        };
        match tx.try_send(install) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped += 1,
            // The thread stopped (the native receive path closed).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// The workers' TUN counters, added to the driver's for `status`
    /// (`worker_` in front of each name).
    pub fn add_counters(&self, c: &mut std::collections::BTreeMap<String, u64>) {
        for shared in &self.tun_counters {
            let m = shared.lock().unwrap_or_else(|e| e.into_inner());
            for k in ["tun_writes", "tun_gso_writes", "tun_coalesced_segments"] {
                if let Some(v) = m.get(k) {
                    *c.entry(format!("worker_{k}")).or_default() += v;
                }
            }
        }
        *c.entry("worker_installs_dropped".to_owned()).or_default() += self.dropped;
    }
}

/// Makes the workers of the native receive threads ([`RING_WORKERS`], in
/// the threads' order) writing to `tun`, and the driver's hub for them.
pub fn ring_workers(
    tun: Arc<dyn TunWriter>,
    offloads: Offloads,
    coalesce: bool,
    clock: Clock,
) -> (Vec<Box<dyn RxTap>>, WorkerHub) {
    let (report_tx, reports) = mpsc::channel(REPORT_QUEUE);
    let mut taps: Vec<Box<dyn RxTap>> = Vec::with_capacity(RING_WORKERS);
    let mut installs = Vec::with_capacity(RING_WORKERS);
    let mut tun_counters = Vec::with_capacity(RING_WORKERS);
    for _ in 0..RING_WORKERS {
        let (tx, rx) = std::sync::mpsc::sync_channel(INSTALL_QUEUE);
        let counters = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        installs.push(tx);
        tun_counters.push(counters.clone());
        taps.push(Box::new(RingWorker {
            worker: Worker::default(),
            installs: rx,
            reports: report_tx.clone(),
            tun: TunOut::new(tun.clone(), offloads, coalesce),
            clock,
            since_check: 0,
            last_report: None,
            last_sweep: None,
            counters,
        }));
    }
    (
        taps,
        WorkerHub {
            installs,
            reports,
            tun_counters,
            dropped: 0,
        },
    )
}

/// A worker on a native receive thread.
struct RingWorker {
    worker: Worker,
    installs: Receiver<Install>,
    reports: mpsc::Sender<WorkerReport>,
    tun: TunOut,
    clock: Clock,
    since_check: u32,
    last_report: Option<Instant>,
    last_sweep: Option<Instant>,
    counters: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
}

impl RingWorker {
    fn take_installs(&mut self) {
        while let Ok(i) = self.installs.try_recv() {
            if !self.worker.install(i) {
                trace!("worker table full: the flow stays with the driver until a sweep");
            }
        }
    }

    /// Sends the report when one is due (or urgent) and the driver has
    /// room for it; otherwise it keeps growing here.
    fn report(&mut self, now: Instant, force: bool) {
        let due = force
            || self.worker.report_urgent()
            || self
                .last_report
                .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY);
        if !due {
            return;
        }
        let Ok(permit) = self.reports.try_reserve() else {
            return;
        };
        let r = self.worker.take_report();
        if r.is_empty() {
            return;
        }
        permit.send(r);
        self.last_report = Some(now);
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        self.tun.add_counters(&mut c);
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
        // A report waits: the thread comes back for it within this, also
        // when no packet follows (status and the core's counters stay
        // current).
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
        if self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            self.last_sweep = Some(now);
            self.worker.sweep();
        }
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
