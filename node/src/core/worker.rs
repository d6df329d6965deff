//! A data-path worker (design note 67): a table of the core's
//! [`Install`]s, and the packets it carries with them without the core.
//! Sans-IO like the core: the driver gives it packets and carries out what
//! comes back; [`WorkerOut::Core`] hands the packet, untouched, to the
//! core. Every install is checked at each packet (its cipher state is
//! current, its epochs did not move, the flow is not due for a rekey), so
//! the core never has to reach into a worker's table.

use std::time::{Duration, Instant};

use fpn_proto::Error as ProtoError;
use fpn_proto::ge::GeId;
use fpn_proto::packet::Packet;

use super::install_table::InstallTable;
use super::installs::{Install, InstallAction, InstallKey, WorkerReport};
use crate::carrier::PeerTarget;

/// What became of a packet a worker was given.
pub enum WorkerOut<'a> {
    /// Send this wire packet (a prefix of the caller's buffer) on the
    /// native path.
    Native(&'a [u8]),
    /// Send this frame (a prefix of the caller's buffer) on the QUIC
    /// carrier to `target`.
    Quic {
        /// The peer and the addresses the carrier may dial.
        target: &'a PeerTarget,
        /// The protected packet.
        frame: &'a [u8],
    },
    /// Write this packet (a prefix of the caller's buffer) into the TUN.
    Tun(&'a [u8]),
    /// Dropped (counted in the report): a forgery, a replay, damage.
    Dropped,
    /// No install covers it: give the packet, untouched, to the core.
    Core,
}

impl std::fmt::Debug for WorkerOut<'_> {
    // Never packet bytes: lengths only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Native(p) => f.debug_struct("Native").field("len", &p.len()).finish(),
            Self::Quic { target, frame } => f
                .debug_struct("Quic")
                .field("peer", &target.ge)
                .field("len", &frame.len())
                .finish(),
            Self::Tun(p) => f.debug_struct("Tun").field("len", &p.len()).finish(),
            Self::Dropped => f.write_str("Dropped"),
            Self::Core => f.write_str("Core"),
        }
    }
}

/// Most installs one worker holds by default: [`Worker::capacity_for`]
/// the default table of 65 536 flows.
pub const MAX_INSTALLS: usize = 65_536 + 65_536 / 4;

/// A full table is swept (every install looked at) at most once per this
/// share of its capacity in installs: a sweep costs a look at each install
/// (a cache miss each), so at most this many per install, amortized
/// (design note 80).
const SWEEP_SPREAD: usize = 16;

/// How often a pass of the periodic sweep starts ([`Worker::periodic_sweep`]).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One data-path worker's installs and what it carried since its last
/// report.
pub struct Worker {
    table: InstallTable,
    report: WorkerReport,
    carried: u64,
    capacity: usize,
    /// Installs offered since the last sweep of a full table.
    since_full_sweep: usize,
    full_sweeps: u64,
    refused: u64,
    /// A pass of the periodic sweep is under way.
    pass: bool,
    /// When the last pass started.
    last_pass: Option<Instant>,
}

impl Default for Worker {
    fn default() -> Self {
        Self::with_capacity(MAX_INSTALLS)
    }
}

impl Worker {
    /// A worker that holds at most `capacity` installs
    /// ([`Worker::capacity_for`]).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            table: InstallTable::for_capacity(capacity),
            report: WorkerReport::default(),
            carried: 0,
            // A table of none would sweep and refuse every install.
            capacity: capacity.max(1),
            since_full_sweep: 0,
            full_sweeps: 0,
            refused: 0,
            pass: false,
            last_pass: None,
        }
    }

    /// The capacity for a node of `max_flows` flows: a worker holds one
    /// install per flow and kind, and those of flows that ended until a
    /// sweep. A quarter more than the flows, so that a full table holds
    /// at least that many stale installs for its sweep to clear: a table
    /// exactly as large as the flow table filled in a storm with live
    /// installs, each flow pushed out of the flow table left one stale
    /// install, and every new install swept the whole table to find it
    /// (design note 80).
    pub fn capacity_for(max_flows: usize) -> usize {
        max_flows.saturating_add(max_flows / 4)
    }

    /// Takes an install from the core (replacing one of the same key);
    /// false when the table is full: then the flow's packets go through
    /// the core. A full table is swept, at most once per
    /// 1/[`SWEEP_SPREAD`] of its capacity in installs; in between a new
    /// key is refused.
    pub fn install(&mut self, install: Install) -> bool {
        self.since_full_sweep = self.since_full_sweep.saturating_add(1);
        if self.table.len() >= self.capacity && !self.table.contains_key(&install.key) {
            if self.since_full_sweep < self.capacity / SWEEP_SPREAD {
                self.refused += 1;
                return false;
            }
            self.since_full_sweep = 0;
            self.full_sweeps += 1;
            self.sweep();
            if self.table.len() >= self.capacity {
                self.refused += 1;
                return false;
            }
        }
        self.table.insert(install.key, install);
        true
    }

    /// Sweeps of a full table, and installs refused for a full table.
    pub fn table_counts(&self) -> (u64, u64) {
        (self.full_sweeps, self.refused)
    }

    /// Drops every install whose flow ended or whose epochs moved, at once:
    /// their cipher states (key material) go with the last reference. A
    /// full table does so; the threads run [`Worker::periodic_sweep`]. It
    /// counts as the running pass (else a full table swept more often than
    /// a pass takes would restart the pass for ever).
    pub fn sweep(&mut self) {
        self.table.retain(usable_now);
        self.pass = false;
    }

    /// The sweep the worker's thread runs whenever it has a moment: a pass
    /// starts at most every [`SWEEP_EVERY`], and each call of a running
    /// pass drops the installs whose flow ended or whose epochs moved in
    /// the next piece of the table ([`Worker::sweep_step`]). Spread so,
    /// neither a look at 100 000 live installs nor the freeing of the
    /// cipher states of many flows that ended at once comes in one pause
    /// of the thread that carries packets. True when a pass started at
    /// this call.
    pub fn periodic_sweep(&mut self, now: Instant) -> bool {
        let start = !self.pass
            && self
                .last_pass
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
        if start {
            self.last_pass = Some(now);
            self.pass = true;
        }
        if self.pass {
            self.pass = !self.sweep_step();
        }
        start
    }

    /// Whether a pass of the periodic sweep is under way (its thread should
    /// come back for the next step soon).
    pub fn sweeping(&self) -> bool {
        self.pass
    }

    /// One step of a pass: drops the stale installs among the next
    /// `STEP_LOOKS` (2 048) or a few more (whole shards of the table, design note
    /// 83). True when the pass is through (it looked at every install).
    pub fn sweep_step(&mut self) -> bool {
        self.table.retain_step(usable_now)
    }

    /// Installs held (stale ones until replaced or swept).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// No install held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Packets this worker took (every outcome but [`WorkerOut::Core`]).
    pub fn carried(&self) -> u64 {
        self.carried
    }

    /// What was carried since the last call, for
    /// [`NodeCore::handle_worker_report`](super::NodeCore::handle_worker_report).
    pub fn take_report(&mut self) -> WorkerReport {
        std::mem::take(&mut self.report)
    }

    /// The TUN refused a packet this worker opened (counted in the report).
    pub fn count_tun_write_drop(&mut self) {
        self.report.counters.tun_write_drops += 1;
    }

    /// Whether anything was carried since the last report.
    pub fn has_report(&self) -> bool {
        !self.report.is_empty()
    }

    /// Whether a report is waiting that the core must see at once (a flow
    /// at its rekey limit: its sender must not go past the limit).
    pub fn report_urgent(&self) -> bool {
        !self.report.rekeys.is_empty()
    }

    /// Whether first packets were opened with installs made before them
    /// ([`WorkerReport::heard`]): the core must see them before its next
    /// decision about those flows, not at once (design note 84).
    pub fn has_heard(&self) -> bool {
        !self.report.heard.is_empty()
    }

    /// What [`Worker::has_heard`] says, alone in a report; the rest (the
    /// counters) stays for the next report.
    pub fn take_heard(&mut self) -> WorkerReport {
        WorkerReport {
            heard: std::mem::take(&mut self.report.heard),
            ..WorkerReport::default()
        }
    }

    /// As if a first packet of `wire` had been opened with an install of
    /// `opening` made before it.
    #[cfg(test)]
    pub(crate) fn heard_for_test(&mut self, wire: fpn_proto::flow::FlowId, opening: Option<u64>) {
        self.report.heard.push((wire, opening));
    }

    /// As if `flow` had reached its rekey limit here.
    #[cfg(test)]
    pub(crate) fn rekey_for_test(&mut self, flow: fpn_proto::flow::FlowId) {
        self.report.rekeys.push(flow);
    }

    /// A packet from the TUN: `buf[..len]` holds it, the rest of `buf` is
    /// room for the trailer (as for the core's
    /// [`handle_tun_packet`](super::NodeCore::handle_tun_packet)).
    pub fn handle_tun_packet<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        len: usize,
        now: Instant,
    ) -> WorkerOut<'a> {
        let out = tun_packet(&self.table, &mut self.report, buf, len, now);
        counted(&mut self.carried, out)
    }

    /// A native packet addressed to this node (as the core's
    /// [`handle_native_packet`](super::NodeCore::handle_native_packet)
    /// takes it): `buf[..len]` holds it; an IPv6 flow on an IPv4 wire needs
    /// 20 bytes of room behind it.
    pub fn handle_native_packet<'b>(
        &mut self,
        buf: &'b mut [u8],
        len: usize,
        now: Instant,
    ) -> WorkerOut<'b> {
        let out = native_packet(&mut self.table, &mut self.report, buf, len, now);
        counted(&mut self.carried, out)
    }

    /// A data frame from the carrier, from `peer` (authenticated by it):
    /// `buf[..len]` holds it.
    pub fn handle_carrier_data<'a>(
        &'a mut self,
        peer: GeId,
        buf: &'a mut [u8],
        len: usize,
        now: Instant,
    ) -> WorkerOut<'a> {
        let out = carrier_data(&self.table, &mut self.report, peer, buf, len, now);
        counted(&mut self.carried, out)
    }
}

/// Counts `out` in `carried` unless it goes to the core.
fn counted<'a>(carried: &mut u64, out: WorkerOut<'a>) -> WorkerOut<'a> {
    *carried += u64::from(!matches!(out, WorkerOut::Core));
    out
}

/// Whether install `i` still holds: its flow's cipher state is current and
/// its epochs did not move (a sweep keeps it).
fn usable_now(i: &Install) -> bool {
    i.stamp.is_current() && i.crypto.is_current()
}

/// The install for `key` if it still holds. A stale one stays until the
/// core's next install for the key replaces it or a sweep
/// ([`Worker::periodic_sweep`], [`Worker::sweep`]) drops it (one lookup
/// per packet).
fn usable<'t>(table: &'t InstallTable, key: &InstallKey) -> Option<&'t Install> {
    let i = table.get(key)?;
    let (epochs, crypto, rekey) = (
        i.stamp.is_current(),
        i.crypto.is_current(),
        i.crypto.rekey_due(),
    );
    if epochs && crypto && !rekey {
        return Some(i);
    }
    tracing::trace!(
        ?key,
        epochs,
        crypto,
        rekey,
        "install stale: the core decides"
    );
    None
}

/// [`Worker::handle_tun_packet`] on the worker's parts.
fn tun_packet<'a>(
    table: &'a InstallTable,
    report: &mut WorkerReport,
    buf: &'a mut [u8],
    len: usize,
    now: Instant,
) -> WorkerOut<'a> {
    let Some(Ok(pkt)) = buf.get(..len).map(Packet::parse) else {
        return WorkerOut::Core;
    };
    let (key, ip_header) = (InstallKey::Tun(pkt.flow_id()), pkt.ip_header_len());
    let Some(i) = usable(table, &key) else {
        return WorkerOut::Core;
    };
    let r = report;
    // A change of family takes a plain header (no IPv4 options, no IPv6
    // extension headers), and an IPv4 flow on an IPv6 wire grows by 20
    // bytes behind the trailer (note 63). Otherwise the core takes it,
    // untouched (it sends such a packet on QUIC).
    if let InstallAction::SendNative(t) = &i.action
        && t.overlay.src.is_ipv4() != t.wire.src.is_ipv4()
    {
        let v4 = t.overlay.src.is_ipv4();
        let plain = fpn_proto::packet::family::plain_header(v4, ip_header);
        let room = !v4
            || buf.len()
                >= len + fpn_proto::pccom::TRAILER_LEN + fpn_proto::packet::family::HEADER_DELTA;
        if !plain || !room {
            return WorkerOut::Core;
        }
    }
    let n = match i.crypto.seal_at(buf, len, now) {
        Ok((n, due)) => {
            if due {
                r.rekeys.push(i.pit_key);
            }
            n
        }
        // Retired between the check and the seal: the buffer is
        // untouched, the core decides.
        Err(ProtoError::CryptoRetired) => return WorkerOut::Core,
        Err(_) => {
            r.counters.tun_in += 1;
            r.counters.seal_errors += 1;
            return WorkerOut::Dropped;
        }
    };
    r.counters.tun_in += 1;
    match &i.action {
        InstallAction::SendNative(t) => {
            let Some((start, end)) = super::paths::to_wire(buf, n, t) else {
                r.counters.seal_errors += 1;
                return WorkerOut::Dropped;
            };
            r.counters.data_out += 1;
            r.counters.native_out += 1;
            r.counters.native_bytes_out += (end - start) as u64;
            i.activity.note_sent(now);
            WorkerOut::Native(&buf[start..end])
        }
        InstallAction::SendQuic(target) => {
            r.counters.data_out += 1;
            WorkerOut::Quic {
                target,
                frame: &buf[..n],
            }
        }
        InstallAction::FromNative(_) | InstallAction::FromCarrier => WorkerOut::Core,
    }
}

/// [`Worker::handle_native_packet`] on the worker's parts.
fn native_packet<'a>(
    table: &mut InstallTable,
    report: &mut WorkerReport,
    buf: &'a mut [u8],
    len: usize,
    now: Instant,
) -> WorkerOut<'a> {
    let Some(Ok(pkt)) = buf.get(..len).map(Packet::parse) else {
        return WorkerOut::Core;
    };
    let wire = pkt.flow_id();
    let key = InstallKey::Native(wire);
    let Some(i) = usable(table, &key) else {
        return WorkerOut::Core;
    };
    let InstallAction::FromNative(t) = &i.action else {
        return WorkerOut::Core;
    };
    let r = report;
    // An IPv6 flow on an IPv4 wire grows by 20 bytes here (note 59): without
    // the room the core takes it, untouched.
    if wire.src.is_ipv4() != t.overlay.src.is_ipv4()
        && buf.len() < len + fpn_proto::packet::family::HEADER_DELTA
    {
        return WorkerOut::Core;
    }
    let Some(len) = super::paths::from_wire(buf, len, &wire, t) else {
        r.counters.native_in_rejected += 1;
        return WorkerOut::Dropped;
    };
    match i.crypto.open_at(&mut buf[..len], now) {
        Ok(n) => {
            i.activity.note_received(now);
            r.received = Some(now);
            r.counters.native_in += 1;
            r.counters.native_bytes_in += n as u64;
            r.counters.tun_out += 1;
            if i.announce {
                // Once: the core learns of the flow's first packet.
                r.heard.push((wire, i.opening));
                if let Some(i) = table.get_mut(&key) {
                    i.announce = false;
                }
            }
            WorkerOut::Tun(&buf[..n])
        }
        Err(ProtoError::Replay { .. }) => {
            // As the core does: a duplicate still got through the
            // native path, which is what the peer's data check asks.
            i.activity.note_received(now);
            r.counters.native_in_replayed += 1;
            WorkerOut::Dropped
        }
        // Forged or damaged, or retired between the check and the open
        // with the packet rewritten already (lost, as if in flight during
        // the removal or rekey).
        Err(_) => {
            r.counters.native_in_rejected += 1;
            WorkerOut::Dropped
        }
    }
}

/// [`Worker::handle_carrier_data`] on the worker's parts.
fn carrier_data<'a>(
    table: &'a InstallTable,
    report: &mut WorkerReport,
    peer: GeId,
    buf: &'a mut [u8],
    len: usize,
    now: Instant,
) -> WorkerOut<'a> {
    let Some(Ok(pkt)) = buf.get(..len).map(Packet::parse) else {
        return WorkerOut::Core;
    };
    let key = InstallKey::Carrier(peer, pkt.flow_id());
    let Some(i) = usable(table, &key) else {
        return WorkerOut::Core;
    };
    if !matches!(i.action, InstallAction::FromCarrier) {
        return WorkerOut::Core;
    }
    let r = report;
    match i.crypto.open_at(&mut buf[..len], now) {
        Ok(n) => {
            r.counters.data_in += 1;
            r.counters.tun_out += 1;
            r.received = Some(now);
            WorkerOut::Tun(&buf[..n])
        }
        // Untouched: the core may hold the keys that open it.
        Err(ProtoError::CryptoRetired) => WorkerOut::Core,
        Err(ProtoError::Replay { .. }) => {
            r.counters.data_in += 1;
            r.counters.data_in_replayed += 1;
            WorkerOut::Dropped
        }
        Err(_) => {
            r.counters.data_in += 1;
            r.counters.data_in_rejected += 1;
            WorkerOut::Dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::Ordering;

    use super::super::install_table::STEP_LOOKS;
    use super::super::installs::flow_for_test as flow;
    use super::*;

    /// A table full of live installs (more flows than it holds) is not
    /// swept at every install: each sweep looks at every install, so one
    /// per install made a full table's installs quadratic (design note
    /// 80: a storm's receive thread spent 39 % of its node's CPU there).
    #[test]
    fn a_full_table_of_live_installs_is_swept_rarely() {
        let mut w = Worker::with_capacity(1024);
        for n in 0..1024 {
            assert!(w.install(Install::inbound_for_test(flow(n)).0));
        }
        let mut refused = 0;
        for n in 1024..6024 {
            refused += u32::from(!w.install(Install::inbound_for_test(flow(n)).0));
        }
        assert_eq!(refused, 5000, "every install finds the table full");
        let (sweeps, counted) = w.table_counts();
        assert_eq!(counted, 5000);
        assert!(
            sweeps <= 5000 / (1024 / SWEEP_SPREAD as u64) + 1,
            "{sweeps} sweeps of the full table"
        );
    }

    /// Flows come and go as in a storm against a full flow table: each new
    /// flow pushes the oldest out, whose install goes stale. A table of
    /// [`Worker::capacity_for`] the flows takes every new flow's install
    /// and sweeps about once per quarter of the flows.
    #[test]
    fn a_table_a_quarter_larger_than_the_flows_takes_every_new_flow() {
        let max_flows = 1000;
        let mut w = Worker::with_capacity(Worker::capacity_for(max_flows));
        let mut live: VecDeque<std::sync::Arc<std::sync::atomic::AtomicU64>> = VecDeque::new();
        for n in 0..20_000 {
            if live.len() == max_flows
                && let Some(oldest) = live.pop_front()
            {
                oldest.fetch_add(1, Ordering::AcqRel);
            }
            let (i, epoch) = Install::inbound_for_test(flow(n));
            assert!(w.install(i), "flow {n} refused");
            live.push_back(epoch);
        }
        let (sweeps, refused) = w.table_counts();
        assert_eq!(refused, 0);
        assert!(
            sweeps <= 20_000 / (max_flows as u64 / 4) + 1,
            "{sweeps} sweeps of the full table"
        );
        assert!(w.len() <= Worker::capacity_for(max_flows));
    }

    /// Many flows end at once (ageing): the periodic sweep frees their
    /// installs a piece of the table per call, not all in one call (a
    /// receive thread's sweep of 100 000 ended flows took 29 ms, design
    /// note 82), and a pass still gets through them all; the live ones
    /// stay. A call looks at a bounded piece too (note 83).
    #[test]
    fn the_periodic_sweep_frees_what_ended_a_piece_per_call() {
        let mut w = Worker::with_capacity(20_000);
        let mut epochs = Vec::new();
        for n in 0..10_000 {
            let (i, epoch) = Install::inbound_for_test(flow(n));
            assert!(w.install(i));
            epochs.push(epoch);
        }
        let piece = STEP_LOOKS + w.table.largest_shard();
        assert!(piece < 10_000 / 2, "a piece of {piece}");
        // A pass with every flow live keeps them all, in calls that each
        // look at a piece.
        let t0 = Instant::now();
        assert!(w.periodic_sweep(t0));
        let mut calls = 1;
        while w.sweeping() {
            w.periodic_sweep(t0);
            calls += 1;
        }
        assert_eq!(w.len(), 10_000);
        assert!(calls >= 10_000 / piece, "{calls} calls");
        // 8 000 end at once.
        for e in &epochs[..8_000] {
            e.fetch_add(1, Ordering::AcqRel);
        }
        // No pass before a second has gone by.
        assert!(!w.periodic_sweep(t0 + Duration::from_millis(500)));
        assert_eq!(w.len(), 10_000);
        let t1 = t0 + SWEEP_EVERY;
        assert!(w.periodic_sweep(t1));
        let first = 10_000 - w.len();
        assert!(first > 0 && first <= piece, "one call freed {first}");
        let mut calls = 1;
        while w.sweeping() {
            let before = w.len();
            w.periodic_sweep(t1);
            assert!(before - w.len() <= piece);
            calls += 1;
        }
        assert_eq!(w.len(), 2_000);
        assert!(calls >= 8_000 / piece, "{calls} calls");
    }

    /// A full table's whole sweep in the middle of a pass counts as the
    /// pass: full tables swept more often than a pass takes would
    /// otherwise restart it for ever (the threads would wake every
    /// millisecond and never start a new pass).
    #[test]
    fn a_whole_sweep_ends_a_running_pass() {
        let mut w = Worker::with_capacity(20_000);
        for n in 0..10_000 {
            assert!(w.install(Install::inbound_for_test(flow(n)).0));
        }
        let t0 = Instant::now();
        assert!(w.periodic_sweep(t0));
        assert!(w.sweeping(), "10 000 installs take several steps");
        w.sweep();
        assert!(!w.sweeping());
    }
}
