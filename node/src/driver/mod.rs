//! The tokio driver of the [`NodeCore`]: owns the TUN, the carrier and the
//! channels, feeds the core its inputs with the time of a [`Clock`] that
//! counts through suspend, carries out every [`Output`], and sleeps until
//! the core's next deadline.
//!
//! Per wake-up it handles at most [`BATCH`] packets from one source (from
//! the TUN: one arena of [`TUN_SLOTS`] segments, read with the kernel's
//! offloads and cut to the MSS) before the others get a turn, then checks the core's deadline against the clock
//! (not only the sleep future: a timer may be due after a long batch, or
//! after the machine slept), as quinn's `drive_timer` does.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fpn_proto::dprp::msg::MAX_MESSAGE_LEN;
use fpn_proto::flow::FlowId;
use fpn_proto::ge::GeId;
use fpn_proto::overlay6::Overlay6;
use fpn_proto::packet::vnet::VnetRepr;
use fpn_proto::pccom::TRAILER_LEN;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn};

use crate::carrier::{Carrier, CarrierKind, FrameKind, Inbound};
use crate::clock::Clock;
use crate::core::{Command, DataOut, NodeCore, Output, SendError, Snapshot};
use crate::dns::{NameTable, Target};
use crate::native::{NativeRx, RxBatch};
use crate::native_link::{
    FlowOp, LocalAddrs, NativeLink, ReadyRx, five_tuple, local_address_toward,
};
use crate::tun::{Offloads, SegmentBuffers, TunReader};

mod fence;
mod tun_out;
mod tun_workers;
mod workers;
use tun_out::TunOut;
pub use tun_workers::{SpreadWriter, TunMisses, TunWorkerParts, TunWorkers};
pub use workers::WorkerHub;

/// Packets handled per wake-up from one source before the others get a turn.
pub const BATCH: usize = 64;

/// Questions the daemon asks the core (answered from the core's state by
/// its pure query methods).
#[derive(Debug)]
pub enum Query {
    /// The core's state for `status`.
    Snapshot(oneshot::Sender<Snapshot>),
    /// The action and path of a flow (for `ping`).
    FlowInfo(FlowId, oneshot::Sender<Option<(String, String)>>),
    /// The carrier and path status of the peer owning an overlay address.
    PeerPath(Ipv4Addr, oneshot::Sender<Option<(String, String)>>),
    /// The overlay address of the peer named so (for `ping`).
    Resolve(String, oneshot::Sender<Option<Ipv4Addr>>),
    /// The peers with at least one live flow (the GMS task follows their
    /// directory entries while they have one).
    LivePeers(oneshot::Sender<Vec<GeId>>),
    /// The decision rule for a flow (for `why`), and whether the peer's
    /// directory entry is missing (then, with `ask` true, it is asked for).
    Explain {
        /// The flow.
        flow: FlowId,
        /// Ask the GMS for a missing directory entry.
        ask: bool,
        /// The answer.
        tx: oneshot::Sender<(crate::status::WhyReport, bool)>,
    },
}

/// Slots of the arena the TUN is read into: one 64 KB super-packet cut to
/// the MSS is at most ~48 segments, so two of them, or 128 plain packets,
/// per wake-up.
pub const TUN_SLOTS: usize = 128;

/// An arena slot's packet capacity and the room behind it, for a core
/// whose [`NodeCore::buffer_len`] is `buffer_len`: every packet read from
/// the TUN has room for the PCCOM trailer (sealed in place) and for the 20
/// bytes an IPv4 packet grows by on an IPv6 wire. The driver and the TUN
/// workers size their arenas with it.
pub fn tun_slot(buffer_len: usize) -> (usize, usize) {
    (
        buffer_len - TRAILER_LEN,
        TRAILER_LEN + fpn_proto::packet::family::HEADER_DELTA,
    )
}

/// Where the driver writes packets for this host: the TUN device. A trait
/// so the driver can be tested without one.
pub trait TunWriter: Send + Sync {
    /// Writes one IP packet with complete checksums; never waits.
    fn write_packet(&self, packet: &[u8]) -> std::io::Result<usize>;

    /// Writes a TCP super-packet of coalesced segments behind its virtio
    /// header `hdr` (the kernel segments or delivers it whole); never
    /// waits. Only called when the driver was told the device takes them.
    fn write_gso(&self, hdr: &VnetRepr, packet: &[u8]) -> std::io::Result<usize>;
}

impl TunWriter for crate::tun::TunWriter {
    fn write_packet(&self, packet: &[u8]) -> std::io::Result<usize> {
        self.try_write(packet)
    }

    fn write_gso(&self, hdr: &VnetRepr, packet: &[u8]) -> std::io::Result<usize> {
        self.try_write_gso(hdr, packet)
    }
}

/// The TUN device as the driver gets it.
pub struct TunParts {
    /// The read half of the queue the driver reads (`None`: the TUN
    /// workers read every queue and hand the driver what they miss).
    pub reader: Option<TunReader>,
    /// The write half.
    pub writer: Arc<dyn TunWriter>,
    /// The offloads the kernel granted. With TSO the reads are cut to the
    /// MSS here (the device has a virtio header either way).
    pub offloads: Offloads,
    /// Coalesce in-order TCP segments into super-packets on write (only
    /// taken with TSO granted: a kernel that hands them out takes them).
    pub coalesce: bool,
    /// Write through a thread of its own (the TUN write stage), so the
    /// host's receive path runs on another core than the driver.
    pub write_stage: bool,
}

/// What the driver runs on.
pub struct Driver {
    /// The core.
    pub core: NodeCore,
    /// The clock (counts through suspend).
    pub clock: Clock,
    /// The carrier frames go out on.
    pub carrier: Arc<dyn Carrier>,
    /// The TUN device.
    pub tun: TunParts,
    /// Commands from the daemon and the GMS task; the driver stops when
    /// every sender is gone.
    pub commands: mpsc::Receiver<Command>,
    /// Queries from the control socket.
    pub queries: mpsc::Receiver<Query>,
    /// Frames from the carrier.
    pub inbound: mpsc::Receiver<Inbound>,
    /// Overlay addresses whose owner the core needs (to the GMS task).
    pub dir_requests: mpsc::Sender<Ipv4Addr>,
    /// The DNS stub's names, published from the core's peer table, with
    /// this node's own name and address, and the network's IPv6 overlay
    /// prefix when the TUN has IPv6 (then names get AAAA answers too).
    pub names: Option<(NameTable, String, Ipv4Addr, Option<Overlay6>)>,
    /// The native carrier, when it could be opened.
    pub native: Option<NativeParts>,
    /// Why native cannot work on this node (told to the core at start).
    pub native_unavailable: Option<fpn_proto::path::Unavailable>,
    /// The TUN's name, for the NAT-f gateway table (`None`: this node
    /// never makes one, as in tests without nftables).
    pub natf_tun: Option<String>,
    /// The real-address plane's steering, when this node speaks for real
    /// addresses (`crate::real_plane`).
    pub real_plane: Option<crate::real_plane::RealPlane>,
    /// A gateway whose real-address plane runs: it joins the negotiations
    /// of other GEs' flows that cross it (`core/transit.rs`).
    pub on_path: bool,
    /// The network watcher and what the driver does with its changes.
    pub moves: Option<MoveWatch>,
    /// The data-path workers (on the native receive threads, on the TUN's
    /// queues), when any run (the core then makes their installs).
    pub workers: Option<WorkerHub>,
}

/// What the driver needs to follow this host's moves (issue 12).
#[derive(Debug)]
pub struct MoveWatch {
    /// The watcher thread (stops when dropped with the driver).
    pub watch: crate::netwatch::NetWatch,
    /// Its changes.
    pub changes: tokio::sync::mpsc::UnboundedReceiver<Vec<crate::netwatch::NetChange>>,
    /// The TUN's name (its addresses are not the host's).
    pub tun: String,
    /// The carrier's port (reported with each address).
    pub port: u16,
    /// The addresses reported last.
    pub reported: Vec<std::net::SocketAddr>,
    /// To the GMS task: the new addresses to report.
    pub gms: mpsc::Sender<Vec<std::net::SocketAddr>>,
}

async fn recv_moves(m: &mut Option<MoveWatch>) -> Option<Vec<crate::netwatch::NetChange>> {
    match m {
        Some(m) => m.changes.recv().await,
        None => std::future::pending().await,
    }
}

/// The driver's parts of the native carrier (see [`crate::native_link`]).
#[derive(Debug)]
pub struct NativeParts {
    /// The raw sender.
    pub link: NativeLink,
    /// Packets the receive thread took in.
    pub rx: NativeRx,
    /// Changes of the nft set, to the thread that owns the table.
    pub flow_ops: std::sync::mpsc::Sender<Vec<FlowOp>>,
    /// Inbound flows whose steering the table's thread put in place.
    pub ready: ReadyRx,
    /// The underlay addresses the receive path takes packets to.
    pub local: LocalAddrs,
    /// The TUN's name (left out when the host's addresses are read again).
    pub tun: String,
}

/// What the workers sent the driver.
enum FromWorkers {
    Report(Option<crate::core::WorkerReport>),
    Misses(Option<TunMisses>),
}

async fn recv_workers(w: &mut Option<WorkerHub>) -> FromWorkers {
    let Some(w) = w else {
        return std::future::pending().await;
    };
    match w.tun.as_mut() {
        Some(t) => tokio::select! {
            r = w.reports.recv() => FromWorkers::Report(r),
            m = t.misses.recv() => FromWorkers::Misses(m),
        },
        None => FromWorkers::Report(w.reports.recv().await),
    }
}

async fn read_tun(
    r: &mut Option<TunReader>,
    arena: &mut SegmentBuffers,
) -> crate::error::Result<crate::tun::ReadStats> {
    match r {
        Some(r) => r.read_batch(arena).await,
        None => std::future::pending().await,
    }
}

async fn recv_ready(rx: &mut Option<ReadyRx>) -> Option<Vec<FlowId>> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_native(rx: &mut Option<NativeRx>) -> Option<RxBatch> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    /// Runs until the command channel closes.
    pub async fn run(self) {
        let Driver {
            core,
            clock,
            carrier,
            tun,
            mut commands,
            mut queries,
            mut inbound,
            dir_requests,
            names,
            native,
            native_unavailable,
            natf_tun,
            on_path,
            real_plane,
            moves,
            workers,
        } = self;
        let (link, mut native_rx, flow_ops, mut ready_rx, local) = match native {
            Some(n) => (
                Some(n.link),
                Some(n.rx),
                Some(n.flow_ops),
                Some(n.ready),
                Some((n.local, n.tun)),
            ),
            None => (None, None, None, None, None),
        };
        let TunParts {
            reader: mut tun_reader,
            writer: tun_writer,
            offloads,
            coalesce,
            write_stage,
        } = tun;
        let mut shell = Shell {
            core,
            clock,
            carrier,
            tun: TunOut::new(tun_writer, offloads, coalesce),
            dir_requests,
            names,
            native: link,
            flow_ops,
            pending_ops: Vec::new(),
            local,
            natf: NatfGateway::new(natf_tun, on_path),
            real_plane,
            moves,
            workers,
        };
        if write_stage && let Err(e) = shell.tun.start_stage() {
            warn!(error = %e, "TUN writes stay on the driver");
        }
        debug!(write_stage = shell.tun.has_stage(), "TUN write side");
        if let Some(why) = native_unavailable {
            let now = shell.clock.now();
            shell.core.handle_native_unavailable(why, now);
        }
        if let Some((known, _)) = &shell.local {
            // Each peer's native candidates are of a family the host has
            // (note 63).
            let families = crate::core::Families::of(known.known());
            let now = shell.clock.now();
            shell.core.handle_underlay_families(families, now);
        }
        // What the TUN gives is read into this arena, allocated once, every
        // packet with room behind it for the PCCOM trailer (sealed in place)
        // and for the 20 bytes an IPv4 packet grows by on an IPv6 wire.
        let (slot, room) = tun_slot(shell.core.buffer_len());
        let mut arena = SegmentBuffers::new(TUN_SLOTS, slot, room);
        // Frames from peers land here: packets, and DPRP messages, which
        // may be longer than any packet.
        let mut rbuf = vec![0u8; shell.core.buffer_len().max(MAX_MESSAGE_LEN)];
        let mut frames: Vec<Inbound> = Vec::with_capacity(BATCH);
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        let mut inbound_open = true;
        let mut queries_open = true;
        let mut tun_ok = true;
        loop {
            // The core's deadlines are on the suspend-counting clock; the
            // tokio timer is not, so sleep for the difference.
            let deadline = shell.core.poll_timeout().map(|(t, _)| t);
            let at = match deadline {
                Some(t) => {
                    tokio::time::Instant::now() + t.saturating_duration_since(shell.clock.now())
                }
                None => far(),
            };
            sleep.as_mut().reset(at);
            enum Wake {
                Cmd(Option<Command>),
                Query(Option<Query>),
                Tun(crate::error::Result<crate::tun::ReadStats>),
                Frames(usize),
                Native(Option<RxBatch>),
                Ready(Option<Vec<FlowId>>),
                Moved(Option<Vec<crate::netwatch::NetChange>>),
                Report(Option<crate::core::WorkerReport>),
                Misses(Option<TunMisses>),
                Timer,
            }
            let wake = tokio::select! {
                c = commands.recv() => Wake::Cmd(c),
                q = queries.recv(), if queries_open => Wake::Query(q),
                r = read_tun(&mut tun_reader, &mut arena), if tun_ok => Wake::Tun(r),
                n = inbound.recv_many(&mut frames, BATCH), if inbound_open => Wake::Frames(n),
                b = recv_native(&mut native_rx) => Wake::Native(b),
                r = recv_ready(&mut ready_rx) => Wake::Ready(r),
                m = recv_moves(&mut shell.moves) => Wake::Moved(m),
                w = recv_workers(&mut shell.workers) => match w {
                    FromWorkers::Report(r) => Wake::Report(r),
                    FromWorkers::Misses(m) => Wake::Misses(m),
                },
                () = &mut sleep => Wake::Timer,
            };
            let now = shell.clock.now();
            if shell.core.handle_wake(deadline, now) && crate::netwatch::has_default_route() {
                // The connections may have died with the peers' idle
                // timeouts: opened again as after a move.
                let ips: Vec<std::net::IpAddr> = shell
                    .moves
                    .as_ref()
                    .map(|m| m.reported.iter().map(|a| a.ip()).collect())
                    .unwrap_or_default();
                shell.carrier.network_changed(&ips);
            }
            // What the workers reported since the last wake-up, without
            // waking the driver: before what woke it (a flow's next
            // packet, say, after its first was heard).
            if let Some(r) = shell.workers.as_ref().and_then(WorkerHub::take_quiet) {
                shell.core.handle_worker_report(r, now);
            }
            match wake {
                Wake::Cmd(None) => break,
                Wake::Cmd(Some(c)) => shell.core.handle_command(c, now),
                Wake::Query(None) => queries_open = false,
                Wake::Query(Some(q)) => shell.answer(q),
                Wake::Tun(Ok(stats)) => shell.tun.count_reads(&stats),
                Wake::Tun(Err(e)) => {
                    warn!(error = %e, "TUN read failed; no more local packets");
                    tun_ok = false;
                }
                Wake::Frames(0) => inbound_open = false,
                Wake::Frames(_) => {
                    for f in frames.drain(..) {
                        shell.frame(&f, &mut rbuf, now);
                    }
                }
                Wake::Native(None) => {
                    warn!(
                        "the native receive thread stopped; native packets are no longer taken in"
                    );
                    native_rx = None;
                    // Its workers went with it: no native installs.
                    if let Some(w) = shell.workers.as_mut() {
                        w.drop_ring_workers();
                        shell.core.enable_installs(w.kinds());
                    }
                }
                Wake::Native(Some(batch)) => {
                    // This batch and up to four more that already wait;
                    // the rest gets its turn after the other sources.
                    if let Some(rx) = native_rx.as_mut() {
                        rx.drain(batch, 5, |p| shell.native_packet(p, &mut rbuf, now));
                    }
                }
                Wake::Ready(Some(flows)) => shell.core.handle_native_flows_ready(&flows, now),
                Wake::Ready(None) => ready_rx = None,
                Wake::Moved(Some(changes)) => shell.network_changed(changes, now),
                Wake::Moved(None) => shell.moves = None,
                Wake::Report(Some(r)) => shell.core.handle_worker_report(r, now),
                Wake::Report(None) => {
                    // Every worker is gone: nobody takes installs.
                    shell.workers = None;
                    shell
                        .core
                        .enable_installs(crate::core::InstallKinds::default());
                    while shell.core.poll_install().is_some() {}
                }
                Wake::Misses(Some(m)) => {
                    if let Some(why) = &m.stopped {
                        // Its queue is no longer read: the flows the kernel
                        // steers there would be lost. The node stops (a
                        // service manager starts it again).
                        tracing::error!(worker = m.worker, reason = %why, "a TUN worker stopped: the node stops");
                        break;
                    }
                    shell.misses(m, &mut rbuf, now);
                }
                Wake::Misses(None) => {
                    warn!("the TUN workers stopped; no more local packets");
                    if let Some(w) = shell.workers.as_mut() {
                        w.tun = None;
                        shell.core.enable_installs(w.kinds());
                    }
                }
                Wake::Timer => {}
            }
            // The TUN's packets of this wake-up; also those a read_batch
            // that lost the select had already cut into the arena.
            if !arena.is_empty() {
                // What this wake-up released (answers held for a steered
                // notice, say) leaves before the TUN's newer packets of
                // the same flows.
                shell.drain_outputs();
                // Sent just now: the batch's packets need no flush for them.
                let _ = shell.core.take_released();
                shell.tun_batch(&mut arena, now);
            }
            shell.flush_native();
            shell.drive_timer();
            shell.drain_outputs();
            if let Some(w) = shell.workers.as_mut() {
                while let Some(i) = shell.core.poll_install() {
                    w.install(i);
                }
            }
        }
        shell.natf.close();
    }
}

/// The NAT-f gateway's kernel side: the table made at the first mapping
/// (a node with no hosts behind it never has one), deleted on exit.
struct NatfGateway {
    tun: Option<String>,
    /// A gateway on the path between other GEs: the table exists from the
    /// start (it marks their DDEs and drops what this gateway refuses).
    on_path: bool,
    table: Option<crate::native::NatfTable>,
    /// The table could not be made: said once, then every mapping is skipped.
    failed: bool,
}

impl NatfGateway {
    fn new(tun: Option<String>, on_path: bool) -> Self {
        let mut g = Self {
            tun,
            on_path,
            table: None,
            failed: false,
        };
        if on_path {
            g.ensure_table();
        }
        g
    }

    /// On the path: forwarded packets of `flow` dropped (or no longer).
    fn transit_drop(&mut self, flow: &FlowId, drop: bool) {
        self.ensure_table();
        let (Some(t), Some(f)) = (self.table.as_mut(), five_tuple(flow)) else {
            return;
        };
        match t.transit_drop(&f, drop) {
            Ok(()) => debug!(%flow, drop, "transit drop set"),
            Err(e) => {
                warn!(%flow, drop, error = %e, "transit drop not set: the ends' refusal still stands")
            }
        }
    }

    /// Makes the table if there is none (once: a failure is said once).
    fn ensure_table(&mut self) {
        if self.table.is_some() || self.failed {
            return;
        }
        let Some(tun) = &self.tun else { return };
        match crate::native::NatfTable::create(tun) {
            Ok(t) => {
                tracing::info!(
                    table = t.name(),
                    "NAT-f gateway table made: hosts behind this node are reachable through negotiated mappings"
                );
                // Read in the node's namespace: a gateway that does not
                // forward delivers nothing to its hosts.
                if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                    .is_ok_and(|v| v.trim() == "0")
                {
                    warn!(
                        "net.ipv4.ip_forward is 0: hosts behind this gateway get nothing until it is 1 (sysctl -w net.ipv4.ip_forward=1)"
                    );
                }
                self.table = Some(t);
            }
            Err(e) => {
                self.failed = true;
                warn!(error = %e, "NAT-f gateway table not made: hosts behind this node are unreachable");
            }
        }
    }

    /// The hosts this node fronts changed: the table exists while there
    /// are any, and keeps their LAN addresses (reachable only through a
    /// negotiated pair).
    fn fronted(&mut self, lips: &[std::net::IpAddr]) {
        if lips.is_empty() && !self.on_path {
            self.close();
            return;
        }
        self.ensure_table();
        if let Some(t) = self.table.as_mut() {
            match t.set_hosts(lips) {
                Ok(()) => debug!(hosts = lips.len(), "NAT-f hosts in the gateway table"),
                Err(e) => warn!(error = %e, "NAT-f hosts not set in the gateway table"),
            }
        }
    }

    /// DNATs the pair (the table is made with the first fronted host, or
    /// here). Synchronous (one netlink round trip): the flow's CDN is
    /// queued behind this, so the remote's first packet finds the element
    /// in place.
    fn map(&mut self, remote: Ipv4Addr, vin: Ipv4Addr, lip: std::net::IpAddr) {
        self.ensure_table();
        if let Some(t) = self.table.as_mut() {
            match t.map(remote, vin, lip) {
                Ok(()) => debug!(%remote, %vin, %lip, "NAT-f pair mapped"),
                Err(e) => warn!(%remote, %vin, %lip, error = %e, "NAT-f pair not mapped"),
            }
        }
    }

    fn unmap(&mut self, remote: Ipv4Addr, vin: Ipv4Addr) {
        if let Some(t) = self.table.as_mut() {
            match t.unmap(remote, vin) {
                Ok(()) => debug!(%remote, %vin, "NAT-f pair unmapped"),
                Err(e) => debug!(%remote, %vin, error = %e, "NAT-f pair not unmapped"),
            }
        }
    }

    fn close(&mut self) {
        if let Some(t) = self.table.take() {
            let name = t.name().to_owned();
            match t.delete() {
                Ok(_) => debug!(table = %name, "NAT-f gateway table deleted"),
                Err(e) => warn!(table = %name, error = %e, "NAT-f gateway table not deleted"),
            }
        }
    }
}

/// What the driver does between waits, without the receivers: feeds the
/// core and carries out its outputs (testable without a TUN or tokio).
struct Shell {
    core: NodeCore,
    clock: Clock,
    carrier: Arc<dyn Carrier>,
    tun: TunOut,
    dir_requests: mpsc::Sender<Ipv4Addr>,
    names: Option<(NameTable, String, Ipv4Addr, Option<Overlay6>)>,
    native: Option<NativeLink>,
    flow_ops: Option<std::sync::mpsc::Sender<Vec<FlowOp>>>,
    pending_ops: Vec<FlowOp>,
    /// The receive path's local addresses and the TUN's name.
    local: Option<(LocalAddrs, String)>,
    /// The NAT-f gateway table.
    natf: NatfGateway,
    /// The real-address plane's steering (told the peers' prefixes).
    real_plane: Option<crate::real_plane::RealPlane>,
    /// The network watcher's side (issue 12).
    moves: Option<MoveWatch>,
    /// The data-path workers (design note 67).
    workers: Option<WorkerHub>,
}

impl Shell {
    /// The network watcher saw `changes` (empty: notifications were lost).
    /// The host's addresses are read again; when they or the default route
    /// or a link changed, the node moved: the native receive path takes
    /// the new addresses, the core probes every path again from here, and
    /// the GMS is told (for new peers; those talking follow by themselves).
    fn network_changed(&mut self, changes: Vec<crate::netwatch::NetChange>, now: Instant) {
        use crate::netwatch::NetChange;
        let Some(m) = self.moves.as_mut() else { return };
        let addrs = crate::daemon::addrs::local_addresses(m.port, &m.tun);
        let routing = changes
            .iter()
            .any(|c| matches!(c, NetChange::DefaultRoute { .. } | NetChange::Link { .. }));
        if addrs == m.reported && !routing {
            debug!(?changes, "network change that moves nothing");
            return;
        }
        let cause = if changes.is_empty() {
            "notifications lost; addresses read again".to_owned()
        } else {
            changes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        tracing::info!(%cause, old = ?m.reported, new = ?addrs, "network changed: every path is probed again");
        m.reported = addrs.clone();
        if m.gms.try_send(addrs.clone()).is_err() {
            debug!("the GMS task is busy; the next change or session reports the addresses");
        }
        let ips: Vec<std::net::IpAddr> = addrs.iter().map(|a| a.ip()).collect();
        if let Some((known, _)) = self.local.as_mut()
            && !ips.is_empty()
            && known.replace(ips.clone())
        {
            // The receive path needs at least one address; between two
            // networks it keeps the old ones until the new one comes.
            self.pending_ops.push(FlowOp::SetLocal(ips.clone()));
        }
        if !ips.is_empty() {
            // Kept between two networks, like the receive path's addresses.
            let families = crate::core::Families::of(&ips);
            self.core.handle_underlay_families(families, now);
        }
        if !ips.is_empty() && crate::netwatch::has_default_route() {
            // Between two networks a new connection would go nowhere: the
            // change that brings the route (a burst's last) opens them.
            self.carrier.network_changed(&ips);
        }
        self.core.handle_network_change(cause, now);
    }

    /// A packet the native receive path took in.
    fn native_packet(&mut self, p: &[u8], rbuf: &mut [u8], now: Instant) {
        let Some(dst) = rbuf.get_mut(..p.len()) else {
            return;
        };
        dst.copy_from_slice(p);
        if let DataOut::Tun(t) = self.core.handle_native_packet(rbuf, p.len(), now)
            && !self.tun.write(t)
        {
            self.core.handle_tun_write_error();
        }
    }

    /// What the TUN workers did not carry: each packet as if the driver
    /// had read it, each failed send as if the driver's had failed.
    fn misses(&mut self, m: TunMisses, rbuf: &mut [u8], now: Instant) {
        for p in m.packets.packets() {
            let Some(dst) = rbuf.get_mut(..p.len()) else {
                continue;
            };
            dst.copy_from_slice(p);
            self.tun_packet(rbuf, p.len(), now);
        }
        for (ge, err, frame) in &m.failures {
            self.core
                .handle_send_error(*ge, FrameKind::Data, frame, *err, now);
        }
        // On the wire before the worker may send the flows' next packets
        // itself (the link sends on this thread while TUN workers run).
        self.flush_native();
        if let Some(t) = self.workers.as_ref().and_then(|w| w.tun.as_ref()) {
            t.recycle(m);
        }
    }

    /// Sends the native packets of this wake-up, and hands the nft set
    /// changes to the table's thread.
    fn flush_native(&mut self) {
        self.send_native();
        self.hand_over_steering();
    }

    /// Sends the native packets of this wake-up.
    fn send_native(&mut self) {
        if let Some(link) = self.native.as_mut() {
            let refused = link.flush();
            if refused > 0 {
                trace!(refused, "native packets refused by the kernel");
            }
        }
    }

    /// Hands the nft set changes to the table's thread.
    fn hand_over_steering(&mut self) {
        if !self.pending_ops.is_empty()
            && let Some(ops) = &self.flow_ops
        {
            let _ = ops.send(std::mem::take(&mut self.pending_ops));
        }
    }

    /// Runs the core's timers that are due by the clock.
    fn drive_timer(&mut self) {
        let now = self.clock.now();
        if self.core.poll_timeout().is_some_and(|(t, _)| t <= now) {
            self.core.handle_timeout(now);
        }
    }

    fn answer(&self, q: Query) {
        match q {
            Query::Snapshot(tx) => {
                let mut snap = self.core.snapshot(&self.carrier.peers());
                self.tun.add_counters(&mut snap.counters);
                if let Some(w) = &self.workers {
                    w.add_counters(&mut snap.counters);
                }
                let _ = tx.send(snap);
            }
            Query::FlowInfo(flow, tx) => {
                let mut info = self.core.flow_info(&flow);
                // The core says QUIC; the carrier knows it goes via the relay.
                if let Some((_, path)) = info.as_mut()
                    && path == CarrierKind::Quic.as_str()
                    && let std::net::IpAddr::V4(dst) = flow.dst
                    && self.relayed(dst).is_some()
                {
                    *path = CarrierKind::Relay.as_str().into();
                }
                let _ = tx.send(info);
            }
            Query::PeerPath(ip, tx) => {
                let mut path = self.core.peer_path(ip);
                if let Some((carrier, text)) = path.as_mut()
                    && carrier == CarrierKind::Quic.as_str()
                    && let Some(why) = self.relayed(ip)
                {
                    *carrier = CarrierKind::Relay.as_str().into();
                    *text = format!("relay ({why})");
                }
                let _ = tx.send(path);
            }
            Query::Resolve(name, tx) => {
                let _ = tx.send(self.core.peers().by_name(&name).and_then(|p| p.overlay));
            }
            Query::LivePeers(tx) => {
                let _ = tx.send(self.core.pit().live_peers().collect());
            }
            Query::Explain { flow, ask, tx } => {
                let (report, lookup) = self.core.explain(&flow);
                if lookup
                    && ask
                    && let std::net::IpAddr::V4(dst) = flow.dst
                {
                    // Only the GMS is asked (as a flow's first packet
                    // would); nothing goes to the peer.
                    let _ = self.dir_requests.try_send(dst);
                }
                let _ = tx.send((report, lookup));
            }
        }
    }

    /// Why the owner of overlay address `ip` is relayed, if it is.
    fn relayed(&self, ip: Ipv4Addr) -> Option<String> {
        let ge = self.core.peers().owner(ip)?;
        self.carrier
            .peers()
            .into_iter()
            .find(|s| s.ge == ge && s.carrier == CarrierKind::Relay)
            .map(|s| s.why.unwrap_or_default())
    }

    /// Feeds the core every packet of the arena (each sealed in its own
    /// slot, no copy), then empties it.
    fn tun_batch(&mut self, arena: &mut SegmentBuffers, now: Instant) {
        for i in 0..arena.len() {
            let (slot, len) = arena.slot_mut(i);
            self.tun_packet(slot, len, now);
        }
        arena.clear();
    }

    fn tun_packet(&mut self, buf: &mut [u8], n: usize, now: Instant) {
        let out = self.core.handle_tun_packet(buf, n, now);
        let failed = match out {
            DataOut::Send {
                path: CarrierKind::Native,
                frame,
                ..
            } => {
                if let Some(link) = self.native.as_mut() {
                    link.queue(frame);
                }
                None
            }
            DataOut::Send { target, frame, .. } => self
                .carrier
                .send(target, FrameKind::Data, frame)
                .err()
                .map(|e| (target.ge, frame.len(), SendError::from(&e))),
            // Packets from this host that go back to it: only ICMP errors,
            // which come as outputs. Nothing else is written here.
            DataOut::Tun(p) => {
                self.tun.write(p);
                None
            }
            DataOut::Nothing => None,
        };
        if let Some((ge, len, err)) = failed {
            self.core
                .handle_send_error(ge, FrameKind::Data, &buf[..len], err, now);
        }
        if self.core.take_released() {
            // Held packets of the flow left as outputs: on the wire before
            // the batch's next packets, which leave at once.
            self.flush_native();
            self.drain_outputs();
        }
    }

    fn frame(&mut self, f: &Inbound, rbuf: &mut [u8], now: Instant) {
        let len = f.payload.len();
        // An oversized frame is not copied; the core counts it as rejected.
        if let Some(dst) = rbuf.get_mut(..len) {
            dst.copy_from_slice(&f.payload);
        }
        let out = self
            .core
            .handle_carrier_frame(f.peer, f.from, f.kind, rbuf, len, now);
        if let DataOut::Tun(p) = out
            && !self.tun.write(p)
        {
            self.core.handle_tun_write_error();
        }
    }

    /// Carries out everything the core queued.
    fn drain_outputs(&mut self) {
        let now = self.clock.now();
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Send {
                    target,
                    kind,
                    payload,
                    ..
                } => {
                    if let Err(e) = self.carrier.send(&target, kind, &payload) {
                        self.core.handle_send_error(
                            target.ge,
                            kind,
                            &payload,
                            SendError::from(&e),
                            now,
                        );
                    }
                }
                Output::Tun(p) => {
                    if !self.tun.write(&p) {
                        self.core.handle_tun_write_error();
                    }
                }
                Output::DirectoryLookup(ip) => {
                    // A full channel means the GMS task is busy with lookups:
                    // DPRP retransmits, and the next one asks again.
                    let _ = self.dir_requests.try_send(ip);
                }
                Output::PeersChanged => {
                    self.publish_names();
                    if let Some(rp) = &self.real_plane {
                        let prefixes = self.core.peers().real_prefixes();
                        rp.set_prefixes(prefixes.into_iter().map(|(p, _)| p).collect());
                    }
                }
                Output::SendNative(p) => {
                    if let Some(link) = self.native.as_mut() {
                        link.send_now(&p);
                    }
                }
                Output::FindLocalAddress(remote) => {
                    // Without a native link there is nothing to send from.
                    if self.native.is_some()
                        && let Some(local) = local_address_toward(remote)
                    {
                        // An address added after `up`: the receive path
                        // must take packets to it before peers use it.
                        if let Some((known, tun)) = self.local.as_mut()
                            && let Some(all) =
                                known.learn(local, || crate::daemon::addrs::local_ips(tun))
                        {
                            debug!(%local, "new local address for the native carrier");
                            self.pending_ops.push(FlowOp::SetLocal(all));
                        }
                        self.core.handle_local_address(remote, local, now);
                    }
                }
                Output::NativeFlowAdded(w) => {
                    if let Some(f) = five_tuple(&w) {
                        self.pending_ops.push(FlowOp::Add(f));
                    }
                }
                Output::NativeFlowRemoved(w) => {
                    if let Some(f) = five_tuple(&w) {
                        self.pending_ops.push(FlowOp::Remove(f));
                    }
                }
                Output::NatfMapped { remote, vin, lip } => self.natf.map(remote, vin, lip),
                Output::NatfFronted(lips) => self.natf.fronted(&lips),
                Output::NatfUnmapped { remote, vin } => self.natf.unmap(remote, vin),
                Output::TransitDrop { flow, drop } => self.natf.transit_drop(&flow, drop),
            }
        }
        self.send_native();
        // The coalesced TCP segments of this wake-up go to the kernel now:
        // nothing is held across a wait.
        if !self.tun.flush() {
            self.core.handle_tun_write_error();
        }
        for _ in 0..self.tun.hand_off() {
            self.core.handle_tun_write_error();
        }
        // Last: waking the table's thread costs this thread an IPI to an
        // idle vCPU, which a new flow's first packet, written (or handed
        // to the write stage) just above, no longer waits behind (note 78).
        self.hand_over_steering();
    }

    /// The DNS stub's names: this node and every peer of the peer table.
    fn publish_names(&self) {
        let Some((names, own, overlay, net6)) = &self.names else {
            return;
        };
        let peer = |v4| peer_target(v4, *net6);
        let mut entries: Vec<(String, Target)> = self
            .core
            .peer_names()
            .into_iter()
            .map(|(name, o)| (name, peer(o)))
            .collect();
        // Hosts behind gateways answer with their VINs, and AAAA with the
        // VIN's IPv6 address (core/vin6.rs); a GE's own name wins a clash,
        // which the GMS refuses anyway.
        for (name, vin) in self.core.host_names() {
            if !entries.iter().any(|(n, _)| *n == name) {
                entries.push((name, peer(vin)));
            }
        }
        entries.push((own.clone(), peer(*overlay)));
        if let Err(e) = names.replace_all(entries) {
            warn!(error = %e, "name table not updated");
        }
    }
}

/// A GE's DNS stub entry: its IPv4 overlay address, and its IPv6 one when
/// the overlay has IPv6 here (`net6`).
pub fn peer_target(v4: Ipv4Addr, net6: Option<Overlay6>) -> Target {
    Target::Peer {
        v4,
        v6: net6.map(|n| n.address(v4)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use fpn_proto::ge::{GeId, Mode};

    use super::tun_out::tests::FakeTun;
    use super::*;
    use crate::carrier::{CarrierKind, PeerStats, PeerTarget};
    use crate::core::sim::{CoreSim, LinkConfig, udp_packet};
    use crate::directory::PeerRecord;

    /// A carrier that refuses every frame as too large for `max`, or takes it.
    struct FakeCarrier {
        max: Option<usize>,
        sent: Mutex<Vec<(GeId, FrameKind, usize)>>,
    }

    impl Carrier for FakeCarrier {
        fn kind(&self) -> CarrierKind {
            CarrierKind::Quic
        }
        fn send(
            &self,
            to: &PeerTarget,
            kind: FrameKind,
            payload: &[u8],
        ) -> crate::error::Result<()> {
            if let Some(max) = self.max {
                return Err(crate::error::Error::CarrierTooLarge {
                    peer: to.ge,
                    size: payload.len(),
                    max,
                });
            }
            self.sent.lock().unwrap().push((to.ge, kind, payload.len()));
            Ok(())
        }
        fn peers(&self) -> Vec<PeerStats> {
            Vec::new()
        }
    }

    /// A shell around node 1's core with an established flow 4000 -> 5000
    /// to node 2, and the node 2 overlay address.
    fn shell(
        max: Option<usize>,
    ) -> (
        Shell,
        Arc<FakeTun>,
        mpsc::Receiver<Ipv4Addr>,
        Ipv4Addr,
        Instant,
    ) {
        let mut sim = CoreSim::new(1, LinkConfig::default());
        let a = sim.add_node(1, Mode::Open, &[1]);
        let b = sim.add_node(2, Mode::Open, &[1]);
        sim.introduce_all();
        sim.send_udp(a, b, 4000, 5000, b"x");
        sim.drive();
        let (peer, now) = (sim.nodes[b].overlay, sim.now());
        let node = sim.nodes.swap_remove(a);
        let tun = Arc::new(FakeTun::default());
        let (tx, rx) = mpsc::channel(4);
        let shell = Shell {
            core: node.core,
            clock: Clock::new(),
            carrier: Arc::new(FakeCarrier {
                max,
                sent: Mutex::default(),
            }),
            tun: TunOut::new(tun.clone(), Offloads::NONE, false),
            dir_requests: tx,
            names: Some((NameTable::new(), "n1".into(), node.overlay, None)),
            native: None,
            flow_ops: None,
            pending_ops: Vec::new(),
            local: None,
            natf: NatfGateway::new(None, false),
            moves: None,
            real_plane: None,
            workers: None,
        };
        (shell, tun, rx, peer, now)
    }

    #[test]
    fn a_carrier_too_large_error_becomes_fragmentation_needed_in_the_tun() {
        let (mut shell, tun, _rx, peer, now) = shell(Some(1000));
        let pkt = udp_packet(Ipv4Addr::new(100, 64, 0, 1), peer, 4000, 5000, &[1; 1200]);
        let mut buf = vec![0u8; shell.core.buffer_len()];
        buf[..pkt.len()].copy_from_slice(&pkt);
        shell.tun_packet(&mut buf, pkt.len(), now);
        shell.drain_outputs();
        let written = tun.0.lock().unwrap();
        assert_eq!(written.len(), 1);
        assert_eq!((written[0][20], written[0][21]), (3, 4));
        assert_eq!(
            u16::from_be_bytes([written[0][26], written[0][27]]),
            1000 - 24
        );
    }

    #[test]
    fn queries_names_and_directory_lookups_are_carried_out() {
        let (mut shell, _tun, mut rx, peer, now) = shell(None);
        // Names are published from the core's peer table at its change.
        shell.core.handle_command(
            Command::Peer(PeerRecord {
                name: "n3".into(),
                ge: 3,
                overlay: Ipv4Addr::new(100, 64, 0, 3),
                addrs: vec![SocketAddr::from(([198, 18, 0, 3], 7718))],
                reflexive: None,
                fetched: 1,
                key: None,
                info: None,
            }),
            now,
        );
        shell.drain_outputs();
        let names = &shell.names.as_ref().unwrap().0;
        assert_eq!(
            names.get("n3"),
            Some(Target::peer(Ipv4Addr::new(100, 64, 0, 3)))
        );
        assert_eq!(names.get("n2"), Some(Target::peer(peer)));
        assert_eq!(
            names.get("n1"),
            Some(Target::peer(Ipv4Addr::new(100, 64, 0, 1)))
        );
        // `ping`'s questions.
        let (tx, mut answer) = oneshot::channel();
        shell.answer(Query::Resolve("n2".into(), tx));
        assert_eq!(answer.try_recv().unwrap(), Some(peer));
        let (tx, mut answer) = oneshot::channel();
        let flow = FlowId {
            src: Ipv4Addr::new(100, 64, 0, 1).into(),
            dst: peer.into(),
            protocol: 17,
            src_port: 4000,
            dst_port: 5000,
        };
        shell.answer(Query::FlowInfo(flow, tx));
        assert_eq!(
            answer.try_recv().unwrap(),
            Some(("encrypt".to_owned(), "quic".to_owned()))
        );
        // A packet to an address nobody is known to own: the directory is asked.
        let unknown = Ipv4Addr::new(100, 64, 0, 77);
        let pkt = udp_packet(Ipv4Addr::new(100, 64, 0, 1), unknown, 4000, 5000, b"?");
        let mut buf = vec![0u8; shell.core.buffer_len()];
        buf[..pkt.len()].copy_from_slice(&pkt);
        shell.tun_packet(&mut buf, pkt.len(), now);
        shell.drain_outputs();
        assert_eq!(rx.try_recv().unwrap(), unknown);
    }
}
