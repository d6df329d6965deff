//! The native carrier's I/O layer: protected packets as the plain IPv4 or
//! IPv6 packets they are, out through raw sockets and in by stealing them
//! from the kernel's own TCP/UDP stack.
//!
//! Both families go the same way: a flow's five-tuple is IPv4 or IPv6
//! ([`FiveTuple`] over `IpAddr`, both addresses of one family), and every
//! piece below handles both (IPv6 packets without extension headers).
//!
//! [`NativeIo`] owns three things:
//! - a [`RawSender`]: whole IPv4 and IPv6 packets (underlay addresses, the
//!   flow's protocol and ports, valid L4 checksum) out, many per `sendmmsg`;
//! - the node's nftables table `inet fpn_<tun>` with the sets of native
//!   flows (IPv4 and IPv6): a packet whose 5-tuple is in a set (and a DPRP
//!   packet, UDP to port 7717 of a local address) never reaches the kernel's
//!   sockets, so the kernel sends no RST and no ICMP port unreachable, and
//!   the host's own servers on the same ports keep serving everybody else;
//! - a receive thread (two with the packet ring: one per IP version) that
//!   copies those packets out and hands them to the driver in batches
//!   ([`NativeRx`], usable from tokio or blocking code).
//!
//! The driver owns the `NativeIo` (sending takes `&mut self`; more senders
//! for more workers are [`RawSender::open`]), takes the [`NativeRx`] once,
//! and hands a [`FlowControl`] (from [`NativeIo::flows`]) to a blocking task
//! that adds and removes flows as the core decides.
//!
//! Two receive mechanisms ([`RxMechanism`]): NFQUEUE (the rule queues the
//! packet; the thread copies it and gives the verdict DROP) and
//! AF_PACKET TPACKET_V2 rings, two: one bound to `ETH_P_IP`, one to
//! `ETH_P_IPV6`, each with its own thread (a classic-BPF filter narrows
//! each tap to TCP/UDP/ICMP(v6) towards the node's addresses of its family,
//! except UDP to the node's own sockets' ports,
//! [`NativeConfig::skip_udp_ports`]; the threads keep only registered
//! flows, and the rule drops the packet in prerouting after the tap has
//! copied it). Protocol-bound, not one `ETH_P_ALL` tap for both: that one
//! would see a packet once per device it passes, twice on a host whose
//! address is on a bridge, bond or VLAN (super::rx_ring says more). With
//! both mechanisms, a copy of a packet with a registered flow's ports from
//! another source goes to the core as well, which counts and drops it,
//! while the kernel keeps the packet as the host's own
//! (NFQUEUE: a `native_ports` rule queues it, up to 1000 a second, and the
//! thread gives it back with ACCEPT). docs/DESIGN-NOTES.md note 15
//! compares them (and note 27 the ring versions); the default is
//! the ring.
//!
//! What this module never does: look into payloads, decide which flows are
//! native (the node core does, through [`NativeIo::add_flow`]), translate
//! addresses, or touch tables other than its own.
//!
//! ```no_run
//! # fn main() -> fpn_node::error::Result<()> {
//! use fpn_node::native::{FiveTuple, L4Proto, NativeConfig, NativeIo, RxMechanism};
//! let local = "198.18.0.2".parse().unwrap();
//! let mut io = NativeIo::open(NativeConfig::new("fpn0", vec![local], RxMechanism::default()))?;
//! let mut rx = io.take_receiver().expect("first call");
//! // The core decided that this flow goes native (as received: peer -> us).
//! let flow = FiveTuple {
//!     src: "198.18.0.1".parse().unwrap(), dst: local,
//!     proto: L4Proto::Tcp, src_port: 40000, dst_port: 443,
//! };
//! io.add_flow(flow)?; // a kernel round trip: from a blocking task, not the packet path
//! let packets: Vec<Vec<u8>> = Vec::new(); // PCCOM packets, underlay addresses
//! let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
//! io.send_batch(&refs)?;
//! if let Some(batch) = rx.blocking_recv() {     // or rx.recv().await in tokio
//!     for packet in batch.iter() { let _ = packet; /* open with PCCOM */ }
//!     rx.recycle(batch);
//! }
//! io.remove_flow(flow)?;
//! io.close() // or drop: the table is deleted
//! # }
//! ```
//!
//! The table outlives a killed process. [`NativeIo::open`] replaces a stale
//! one of the same name, [`NativeIo::close`] and `Drop` delete it, and
//! [`cleanup`] deletes it by name (for `fpn-node down` after a crash).

mod natf_table;
mod nft;
mod nftnl;
pub mod packet;
mod ring_filter;
mod rx_nfq;
mod rx_ring;
mod send;
mod tx_batch;

use fpn_proto::flow::{FastMap, FastSet};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

pub use natf_table::{NatfTable, TRANSIT_MARK, cleanup as natf_cleanup};
pub use nft::{FLOW_SET, FLOW_SET6};
pub use packet::{FiveTuple, L4Proto};
pub use send::{RawSender, SEND_BATCH};
pub use tx_batch::{TxBatch, send_here};

/// DPRP's UDP port: DDE probes to it, towards a local address, are taken
/// like native packets.
pub const DPRP_PORT: u16 = 7717;

/// How the receive threads take packets from the kernel. The default is
/// [`PacketRing`](Self::PacketRing) (docs/DESIGN-NOTES.md note 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RxMechanism {
    /// An nftables `queue` rule on the set (no `bypass`: with nobody
    /// listening the packets are dropped, never passed to the stack); the
    /// thread copies each packet and gives the verdict DROP.
    Nfqueue {
        /// The queue number (unique per node on the host).
        queue: u16,
    },
    /// Two AF_PACKET TPACKET_V2 rings, bound to `ETH_P_IP` and
    /// `ETH_P_IPV6`, each with a BPF filter (TCP/UDP/echo towards the local
    /// addresses of its family) and a thread, and an nftables `drop` rule
    /// on the sets.
    #[default]
    PacketRing,
}

/// Everything [`NativeIo::open`] needs.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    /// The nftables table (family `inet`); see [`table_name`].
    pub table: String,
    /// The node's TUN device: packets it writes there are never taken
    /// (on the real-address plane an opened packet keeps its wire
    /// five-tuple, which the set holds); `None` when there is none.
    pub tun: Option<String>,
    /// This node's underlay addresses, of either family: native packets
    /// and DPRP probes arrive addressed to them. The packet ring needs at
    /// least one.
    pub local_addrs: Vec<IpAddr>,
    /// The receive mechanism.
    pub mechanism: RxMechanism,
    /// DPRP's port, or `None` to leave DPRP to an ordinary socket.
    pub dprp_port: Option<u16>,
    /// Most packets in one [`RxBatch`].
    pub max_batch: usize,
    /// Batches waiting for the driver before the thread stops reading
    /// (then the kernel's queue or ring absorbs, then drops).
    pub channel_batches: usize,
    /// NFQUEUE: the kernel queue's length in packets.
    pub queue_len: u32,
    /// PacketRing: each ring's size in MiB (1 MiB blocks; there are two,
    /// IPv4 and IPv6).
    pub ring_mib: u32,
    /// PacketRing: UDP destination ports the tap never copies (at most 16):
    /// the node's own QUIC carrier and GMS client sockets, whose datagrams
    /// are never a native flow's (the node holds those ports on every
    /// address) and would otherwise cost the ring a copy each.
    pub skip_udp_ports: Vec<u16>,
    /// PacketRing: when the receive thread naps instead of being woken per
    /// packet.
    pub ring_dense: RingDense,
}

/// PacketRing: when traffic counts as dense, so that the receive thread
/// naps between looks at the ring instead of asking the kernel to wake it
/// per packet (docs/DESIGN-NOTES.md notes 27 and 72).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingDense {
    /// Since the thread last began to wait (in poll or in a nap), at
    /// least 6 packets came in, at this many thousand a second or more: a
    /// wake-up per packet would cost more CPU than the nap costs latency.
    /// `Kpps(0)`: any 6 packets since the last wait.
    Kpps(u32),
    /// Never: woken per packet, whatever the rate (more receive CPU per
    /// packet under bulk traffic; for comparisons).
    Never,
    /// The packet after an emptied ring came within 200 us (before note
    /// 72: a connection storm, a packet every 50 us or so, napped too).
    Gap,
}

impl Default for RingDense {
    fn default() -> Self {
        Self::Kpps(rx_ring::DENSE_KPPS)
    }
}

impl NativeConfig {
    /// The defaults for the node whose TUN device is `tun`.
    pub fn new(tun: &str, local_addrs: Vec<IpAddr>, mechanism: RxMechanism) -> Self {
        Self {
            table: table_name(tun),
            tun: Some(tun.to_owned()),
            local_addrs,
            mechanism,
            dprp_port: Some(DPRP_PORT),
            max_batch: 64,
            channel_batches: 256,
            queue_len: 4096,
            ring_mib: 16,
            skip_udp_ports: Vec::new(),
            ring_dense: RingDense::default(),
        }
    }
}

/// The node's table name for its TUN device: `fpn_` and the name with every
/// character other than a letter, digit or `_` replaced by `_`.
pub fn table_name(tun: &str) -> String {
    let mut s = String::from("fpn_");
    s.extend(tun.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    s
}

/// Deletes the node's table `table` (and, for the compat NFQUEUE path, its
/// iptables rule) in the calling thread's network namespace, if a crashed
/// node left it. Returns whether there was one.
pub fn cleanup(table: &str) -> Result<bool> {
    nft::delete(table)
}

/// Takes packets on a receive thread itself, before they are batched for
/// the driver: a data-path worker that opens what it has installs for and
/// writes it to the TUN (design note 67), so those packets never cross to
/// the driver.
pub trait RxTap: Send {
    /// A packet the ring took in: `buf[..len]`, in the ring's frame, with
    /// the rest of the frame behind it (the tap may rewrite it in place and
    /// grow it into that room). True when the tap took it; false hands it,
    /// untouched, to the driver.
    fn packet(&mut self, buf: &mut [u8], len: usize) -> bool;

    /// The ring has nothing more for now (the thread is about to wait):
    /// write out what is gathered.
    fn idle(&mut self);

    /// How long the thread may wait for the next packet before calling
    /// [`RxTap::idle`] again (`None`: as long as it likes), e.g. to hand
    /// over what it has not reported yet.
    fn wake_within(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Received packets, in one buffer.
#[derive(Default)]
pub struct RxBatch {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl std::fmt::Debug for RxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBatch")
            .field("packets", &self.ends.len())
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl RxBatch {
    /// The number of packets.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no packet.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The packets (whole IPv4 or IPv6 packets, header included), in
    /// arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter()).map(|(a, &b)| &self.data[a..b])
    }

    fn push(&mut self, packet: &[u8]) {
        self.data.extend_from_slice(packet);
        self.ends.push(self.data.len());
    }

    fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }
}

/// The driver's end of the receive threads.
#[derive(Debug)]
pub struct NativeRx {
    rx: tokio::sync::mpsc::Receiver<RxBatch>,
    pool: std::sync::mpsc::SyncSender<RxBatch>,
}

impl NativeRx {
    /// The next batch; `None` once the receive threads have stopped.
    pub async fn recv(&mut self) -> Option<RxBatch> {
        self.rx.recv().await
    }

    /// The next batch, blocking (not inside an async runtime).
    pub fn blocking_recv(&mut self) -> Option<RxBatch> {
        self.rx.blocking_recv()
    }

    /// The next batch if one waits (or `Err` says why not).
    pub fn try_recv(&mut self) -> Result<RxBatch, tokio::sync::mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }

    /// Gives a batch's buffers back to the threads, so steady-state receiving
    /// allocates nothing. Optional.
    pub fn recycle(&self, batch: RxBatch) {
        let _ = self.pool.try_send(batch);
    }

    /// Hands each packet of `first` and of the batches that already wait
    /// behind it to `f`, `count` batches at most (the rest waits for the
    /// next call), and gives every batch back ([`NativeRx::recycle`]).
    pub fn drain(&mut self, first: RxBatch, count: usize, mut f: impl FnMut(&[u8])) {
        // `first` is handled whatever `count` says.
        let count = count.max(1);
        let mut next = Some(first);
        for i in 1..=count {
            let Some(b) = next.take() else { break };
            for p in b.iter() {
                f(p);
            }
            self.recycle(b);
            if i < count {
                next = self.try_recv().ok();
            }
        }
    }
}

/// Counters of the receive threads (the two rings' added up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Packets handed to the driver.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Batches handed to the driver.
    pub batches: u64,
    /// PacketRing: packets the BPF filter let through that belong to no
    /// registered flow (the host's own traffic, copied for nothing).
    pub ignored: u64,
    /// PacketRing: packets the kernel dropped because the ring was full.
    pub ring_drops: u64,
    /// PacketRing: packets longer than a ring frame (2 KiB, e.g. merged by
    /// GRO on the underlay device), dropped.
    pub truncated: u64,
    /// Receive errors the thread survived.
    pub errors: u64,
}

/// Changes the set of native flows of one [`NativeIo`]; cheap to clone,
/// usable from any thread. Every call is one nftables transaction, sent as
/// one netlink batch (a blocking round trip to the kernel, well under a
/// millisecond): call it from a blocking thread, never on the packet path,
/// and batch.
#[derive(Debug, Clone)]
pub struct FlowControl {
    table: Arc<nft::Table>,
    shared: Arc<Shared>,
}

impl FlowControl {
    /// Starts taking the packets of `flow` (as received: `src` the peer,
    /// `dst` this node; IPv4 or IPv6) away from the kernel's stack.
    pub fn add_flow(&self, flow: FiveTuple) -> Result<()> {
        self.add_flows(&[flow])
    }

    /// [`add_flow`](Self::add_flow) for many flows in one transaction.
    pub fn add_flows(&self, flows: &[FiveTuple]) -> Result<()> {
        self.change_flows(flows, &[])
    }

    /// Gives the packets of `flow` back to the kernel's stack. Removing an
    /// unknown flow is not an error.
    pub fn remove_flow(&self, flow: FiveTuple) -> Result<()> {
        self.remove_flows(&[flow])
    }

    /// [`remove_flow`](Self::remove_flow) for many flows in one transaction.
    pub fn remove_flows(&self, flows: &[FiveTuple]) -> Result<()> {
        self.change_flows(&[], flows)
    }

    /// Removes `remove` and adds `add` in one transaction (one netlink
    /// batch: microseconds for a few flows, about 1 ms for 1000; docs/
    /// BENCHMARKS.md, "Steering over netlink"). A flow in both lists is
    /// added. Each flow goes to the set of its family. On an error nothing
    /// changed in the kernel; the flows of `add` stay accepted by the
    /// receive thread (harmless: the kernel does not steer them). A flow
    /// with addresses of two families (or ICMP over IPv6, ICMPv6 over IPv4)
    /// is refused ([`Error::NativeFlow`]) before anything changes.
    pub fn change_flows(&self, add: &[FiveTuple], remove: &[FiveTuple]) -> Result<()> {
        if self.shared.stopped() {
            return Err(Error::NativeClosed);
        }
        if !add.iter().chain(remove).all(FiveTuple::is_valid) {
            return Err(Error::NativeFlow {
                reason: "addresses of two families, or a protocol of the other family",
            });
        }
        let remove: Vec<FiveTuple> = remove
            .iter()
            .filter(|f| !add.contains(f))
            .copied()
            .collect();
        // The thread accepts new flows first: once the kernel drops them
        // they must already be wanted.
        let gone = {
            let mut set = self.shared.flows.write().unwrap_or_else(|e| e.into_inner());
            for f in add {
                set.insert(*f);
            }
            set.ports_gone(&remove)
        };
        let r = self.table.change_flows(add, &remove, &gone);
        // The kernel stops steering first, then the thread stops wanting
        // them: a late packet is never given back to the kernel's stack.
        let mut set = self.shared.flows.write().unwrap_or_else(|e| e.into_inner());
        for f in &remove {
            set.remove(f);
        }
        r
    }
}

/// The native carrier's I/O: the raw sender, the node's table and the
/// receive threads. Dropping it deletes the table.
#[derive(Debug)]
pub struct NativeIo {
    table: Option<Arc<nft::Table>>,
    sender: RawSender,
    rx: Option<NativeRx>,
    shared: Arc<Shared>,
    worker: Option<Worker>,
    /// Whether the table has the `local_addrs` set (opened with addresses).
    has_local: bool,
    /// The ports the ring's filter skips.
    skip_udp_ports: Vec<u16>,
}

/// The receive threads: one (NFQUEUE) or one per ring.
#[derive(Debug, Default)]
struct Worker {
    threads: Vec<JoinHandle<()>>,
    /// PacketRing: the rings (IPv4, IPv6), whether or not their threads
    /// have started.
    rings: Vec<RingHandle>,
}

/// What the driver side keeps of a ring its thread owns.
#[derive(Debug)]
struct RingHandle {
    family: rx_ring::Family,
    /// Wakes the thread blocked in poll(2).
    wake: std::os::fd::OwnedFd,
    /// The AF_PACKET socket, for filter changes.
    socket: std::os::fd::OwnedFd,
}

impl Worker {
    /// Wakes and joins every thread; `shared.stop` is set first.
    fn join(self) {
        for r in &self.rings {
            rx_ring::wake(&r.wake);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl NativeIo {
    /// Opens the raw sender and the receiver, then replaces any table named
    /// `cfg.table` (left by a killed node) with a fresh, empty one, and
    /// starts the receive threads. Everything lives in the calling thread's
    /// network namespace. Needs CAP_NET_ADMIN and CAP_NET_RAW, and the `nft`
    /// binary.
    pub fn open(cfg: NativeConfig) -> Result<Self> {
        Self::open_with_taps(cfg, Vec::new())
    }

    /// [`NativeIo::open`] with a tap per receive thread of the packet ring
    /// (IPv4's first, then IPv6's; missing ones: none). NFQUEUE takes no
    /// taps (its verdicts stay with its thread).
    pub fn open_with_taps(cfg: NativeConfig, taps: Vec<Box<dyn RxTap>>) -> Result<Self> {
        if cfg.max_batch == 0 || cfg.channel_batches == 0 {
            return Err(Error::NativeConfig {
                setting: "max_batch/channel_batches",
                reason: "must be at least 1",
            });
        }
        let sender = RawSender::open()?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            flows: RwLock::new(FlowSet::default()),
            dprp_port: cfg.dprp_port,
            counters: Counters::default(),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(cfg.channel_batches);
        let (pool_tx, pool_rx) = std::sync::mpsc::sync_channel(cfg.channel_batches);
        let outbox = Outbox {
            tx,
            pool: Arc::new(Mutex::new(pool_rx)),
            cur: RxBatch::default(),
            max_batch: cfg.max_batch,
        };
        // The receiver exists before the rule that feeds it, so no packet
        // is queued to nobody or dropped unseen.
        let (table, worker) = match cfg.mechanism {
            RxMechanism::Nfqueue { queue } => {
                let q = rx_nfq::open(queue, cfg.queue_len)?;
                let table = nft::Table::create(
                    nft::Netns::current()?,
                    &cfg.table,
                    &cfg.local_addrs,
                    cfg.dprp_port,
                    cfg.tun.as_deref(),
                    nft::RxVerdict::Queue(queue),
                )?;
                let sh = shared.clone();
                let thread =
                    match spawn("fpn-native-nfq", move || rx_nfq::run(q, queue, &sh, outbox)) {
                        Ok(t) => t,
                        Err(e) => {
                            let _ = table.delete();
                            return Err(e);
                        }
                    };
                (
                    table,
                    Worker {
                        threads: vec![thread],
                        rings: Vec::new(),
                    },
                )
            }
            RxMechanism::PacketRing => {
                if cfg.local_addrs.is_empty() {
                    return Err(Error::NativeConfig {
                        setting: "local_addrs",
                        reason: "the packet ring needs at least one local address",
                    });
                }
                // Both rings, also without an IPv6 address (its filter then
                // takes nothing until set_local_addrs brings one).
                let mut rings = Vec::with_capacity(2);
                let mut worker = Worker::default();
                for family in rx_ring::Family::BOTH {
                    let mut ring = rx_ring::Ring::open(
                        family,
                        &cfg.local_addrs,
                        &cfg.skip_udp_ports,
                        cfg.ring_mib,
                    )?;
                    if let Some(tun) = &cfg.tun {
                        ring.skip_interface(tun);
                    }
                    ring.set_dense(cfg.ring_dense);
                    worker.rings.push(RingHandle {
                        family,
                        wake: ring.waker()?,
                        socket: ring.socket()?,
                    });
                    rings.push(ring);
                }
                let table = nft::Table::create(
                    nft::Netns::current()?,
                    &cfg.table,
                    &cfg.local_addrs,
                    cfg.dprp_port,
                    cfg.tun.as_deref(),
                    nft::RxVerdict::Drop,
                )?;
                // One outbox per thread, into the same channel.
                let outboxes = [outbox.sibling(), outbox];
                let mut taps = taps.into_iter();
                for (ring, out) in rings.into_iter().zip(outboxes) {
                    let sh = shared.clone();
                    let name = ring.family().thread_name();
                    let tap = taps.next();
                    match spawn(name, move || ring.run(&sh, out, tap)) {
                        Ok(t) => worker.threads.push(t),
                        Err(e) => {
                            shared.stop.store(true, Ordering::Release);
                            worker.join();
                            let _ = table.delete();
                            return Err(e);
                        }
                    }
                }
                (table, worker)
            }
        };
        tracing::debug!(table = table.name(), ?cfg.mechanism, "native I/O open");
        Ok(Self {
            table: Some(Arc::new(table)),
            sender,
            rx: Some(NativeRx { rx, pool: pool_tx }),
            shared,
            worker: Some(worker),
            has_local: !cfg.local_addrs.is_empty(),
            skip_udp_ports: cfg.skip_udp_ports,
        })
    }

    /// The receiving end, once (`None` after the first call).
    pub fn take_receiver(&mut self) -> Option<NativeRx> {
        self.rx.take()
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        self.table.as_ref().map_or("", |t| t.name())
    }

    /// A handle that changes the flow set, for another thread or task
    /// (the driver sends on `&mut self` while a blocking task adds flows).
    pub fn flows(&self) -> Result<FlowControl> {
        Ok(FlowControl {
            table: self.table.clone().ok_or(Error::NativeClosed)?,
            shared: self.shared.clone(),
        })
    }

    /// [`FlowControl::add_flow`] through this I/O.
    pub fn add_flow(&self, flow: FiveTuple) -> Result<()> {
        self.flows()?.add_flows(&[flow])
    }

    /// [`FlowControl::add_flows`] through this I/O.
    pub fn add_flows(&self, flows: &[FiveTuple]) -> Result<()> {
        self.flows()?.add_flows(flows)
    }

    /// [`FlowControl::remove_flow`] through this I/O.
    pub fn remove_flow(&self, flow: FiveTuple) -> Result<()> {
        self.flows()?.remove_flows(&[flow])
    }

    /// [`FlowControl::remove_flows`] through this I/O.
    pub fn remove_flows(&self, flows: &[FiveTuple]) -> Result<()> {
        self.flows()?.remove_flows(flows)
    }

    /// [`FlowControl::change_flows`] through this I/O.
    pub fn change_flows(&self, add: &[FiveTuple], remove: &[FiveTuple]) -> Result<()> {
        self.flows()?.change_flows(add, remove)
    }

    /// The node's underlay addresses changed (Mobile PPC): native packets
    /// and DPRP probes now arrive for `local` (either family). Replaces the
    /// rings' BPF filters (each with `local`'s addresses of its family;
    /// neither if either cannot take them) and the table's address sets;
    /// registered flows are kept (the core re-registers the ones whose
    /// addresses changed).
    pub fn set_local_addrs(&self, local: &[IpAddr]) -> Result<()> {
        let table = self.table.as_ref().ok_or(Error::NativeClosed)?;
        if let Some(w) = &self.worker
            && !w.rings.is_empty()
        {
            if local.is_empty() {
                return Err(Error::NativeConfig {
                    setting: "local_addrs",
                    reason: "the packet ring needs at least one local address",
                });
            }
            let progs = w
                .rings
                .iter()
                .map(|r| rx_ring::program(r.family, local, &self.skip_udp_ports))
                .collect::<Result<Vec<_>>>()?;
            for (r, prog) in w.rings.iter().zip(&progs) {
                rx_ring::attach(&r.socket, prog)?;
            }
        }
        if self.has_local {
            table.set_local(local)?;
        }
        Ok(())
    }

    /// Sends whole IPv4 and IPv6 packets; see [`RawSender::send_batch`].
    pub fn send_batch(&mut self, packets: &[&[u8]]) -> Result<usize> {
        self.sender.send_batch(packets)
    }

    /// The receive threads' counters.
    pub fn stats(&self) -> RxStats {
        self.shared.counters.snapshot()
    }

    /// Deletes the table (the kernel's stack gets every flow back), then
    /// stops the receive threads.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        // Flow handles refuse from here on.
        self.shared.stop.store(true, Ordering::Release);
        let r = match self.table.take() {
            Some(t) => t.delete().map(|_| ()),
            None => Ok(()),
        };
        if let Some(w) = self.worker.take() {
            w.join();
        }
        r
    }
}

impl Drop for NativeIo {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "native I/O: cannot delete the node's table");
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|source| Error::NativeSocket {
            what: "spawn the receive thread",
            source,
        })
}

/// What the driver side and the receive thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    stop: AtomicBool,
    /// The registered flows (PacketRing filters on them).
    flows: RwLock<FlowSet>,
    dprp_port: Option<u16>,
    counters: Counters,
}

impl Shared {
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// The registered flows, and how many of them share each (destination,
/// protocol, destination port) whatever the source address and port: such
/// a packet from another source is not the flow's until the core's NAT
/// binding authenticates it (the kernel keeps it), and the core counts it
/// otherwise (`native_in_wrong_source`), so the ring hands it over too.
#[derive(Debug, Default)]
pub(crate) struct FlowSet {
    exact: FastSet<FiveTuple>,
    ports: FastMap<FiveTuple, u32>,
}

impl FlowSet {
    fn insert(&mut self, f: FiveTuple) {
        if self.exact.insert(f) {
            *self.ports.entry(any_source(f)).or_default() += 1;
        }
    }

    fn remove(&mut self, f: &FiveTuple) {
        if self.exact.remove(f)
            && let Some(n) = self.ports.get_mut(&any_source(*f))
        {
            *n -= 1;
            if *n == 0 {
                self.ports.remove(&any_source(*f));
            }
        }
    }

    /// Of `flows` (about to be removed), those whose destination,
    /// protocol and ports no other registered flow shares then (each
    /// once).
    pub(crate) fn ports_gone(&self, flows: &[FiveTuple]) -> Vec<FiveTuple> {
        let mut left: HashMap<FiveTuple, u32> = HashMap::new();
        let mut gone = Vec::new();
        for f in flows.iter().filter(|f| self.exact.contains(f)) {
            let key = any_source(*f);
            let n = left
                .entry(key)
                .or_insert_with(|| self.ports.get(&key).copied().unwrap_or(0));
            if *n > 0 {
                *n -= 1;
                if *n == 0 {
                    gone.push(*f);
                }
            }
        }
        gone
    }

    /// True for a registered flow's packet.
    pub(crate) fn contains(&self, f: &FiveTuple) -> bool {
        self.exact.contains(f)
    }

    /// True when a registered flow has `f`'s destination, protocol and
    /// ports (from any source).
    pub(crate) fn same_ports(&self, f: &FiveTuple) -> bool {
        self.ports.contains_key(&any_source(*f))
    }
}

/// The local side of `f`: any source address (the unspecified address of
/// `f`'s family) and, but for an echo (whose identifier stands for both
/// ports), any source port. A NAT on the way rewrites both, and the core's
/// NAT binding step (docs/PROTOCOL.md "NAT binding") must see such a packet
/// to recognise the flow.
fn any_source(f: FiveTuple) -> FiveTuple {
    FiveTuple {
        src: if f.src.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        },
        src_port: if f.proto.is_echo() { f.src_port } else { 0 },
        ..f
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    batches: AtomicU64,
    ignored: AtomicU64,
    ring_drops: AtomicU64,
    truncated: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RxStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RxStats {
            packets: l(&self.packets),
            bytes: l(&self.bytes),
            batches: l(&self.batches),
            ignored: l(&self.ignored),
            ring_drops: l(&self.ring_drops),
            truncated: l(&self.truncated),
            errors: l(&self.errors),
        }
    }
}

/// A thread's side of the channel: fills a batch, hands it over when full
/// or when the kernel has nothing more right now.
pub(crate) struct Outbox {
    tx: tokio::sync::mpsc::Sender<RxBatch>,
    /// Recycled batches ([`NativeRx::recycle`]), shared by the threads:
    /// the lock is taken once per batch handed over, never per packet.
    pool: Arc<Mutex<std::sync::mpsc::Receiver<RxBatch>>>,
    cur: RxBatch,
    max_batch: usize,
}

impl Outbox {
    /// Another thread's outbox into the same channel and pool.
    fn sibling(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            pool: self.pool.clone(),
            cur: RxBatch::default(),
            max_batch: self.max_batch,
        }
    }

    /// Adds a packet; hands the batch over when full. False once the driver
    /// is gone or the node stops.
    pub(crate) fn push(&mut self, shared: &Shared, packet: &[u8]) -> bool {
        self.cur.push(packet);
        if self.cur.len() >= self.max_batch {
            return self.flush(shared);
        }
        true
    }

    /// Hands over what is gathered. Waits (bounded by `stop`) while the
    /// driver is behind: the kernel's queue or ring absorbs meanwhile.
    pub(crate) fn flush(&mut self, shared: &Shared) -> bool {
        if self.cur.is_empty() {
            return true;
        }
        let recycled = {
            let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.try_recv()
        };
        let mut next = recycled.unwrap_or_default();
        next.clear();
        let mut batch = std::mem::replace(&mut self.cur, next);
        let (n, bytes) = (batch.len() as u64, batch.data.len() as u64);
        loop {
            match self.tx.try_send(batch) {
                Ok(()) => break,
                Err(tokio::sync::mpsc::error::TrySendError::Full(b)) => {
                    if shared.stopped() {
                        return false;
                    }
                    batch = b;
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        let c = &shared.counters;
        c.packets.fetch_add(n, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_takes_what_waits_up_to_its_count_and_recycles_every_batch() {
        // The driver's loop once dropped the last batch of a drain instead
        // of giving it back: a ring thread then grew a new one from empty.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (pool, recycled) = std::sync::mpsc::sync_channel(16);
        let mut native = NativeRx { rx, pool };
        let batch = |n: u8| {
            let mut b = RxBatch::default();
            b.push(&[n; 3]);
            b
        };
        for n in 1..=6 {
            tx.try_send(batch(n)).unwrap();
        }
        let mut seen = Vec::new();
        native.drain(batch(0), 5, |p| seen.push(p[0]));
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert_eq!(recycled.try_iter().count(), 5);
        // The rest waits for the next drain.
        let first = native.try_recv().unwrap();
        native.drain(first, 5, |p| seen.push(p[0]));
        assert_eq!(seen, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(recycled.try_iter().count(), 2);
    }

    #[test]
    fn table_names_come_from_the_tun_name() {
        assert_eq!(table_name("fpn0"), "fpn_fpn0");
        assert_eq!(table_name("tun-a.1"), "fpn_tun_a_1");
    }

    #[test]
    fn native_io_moves_between_threads() {
        fn is_send<T: Send>() {}
        fn is_send_sync<T: Send + Sync>() {}
        is_send::<NativeIo>();
        is_send_sync::<FlowControl>();
        is_send::<NativeRx>();
        is_send::<RawSender>();
    }

    #[test]
    fn flow_sets_know_a_flows_ports_from_any_source_until_the_last_goes() {
        let f = |src: [u8; 4]| FiveTuple {
            src: Ipv4Addr::from(src).into(),
            dst: Ipv4Addr::new(198, 18, 3, 2).into(),
            proto: L4Proto::Udp,
            src_port: 40000,
            dst_port: 7001,
        };
        let mut set = FlowSet::default();
        set.insert(f([198, 18, 2, 2]));
        set.insert(f([198, 18, 2, 2])); // again: still one flow
        set.insert(f([198, 18, 4, 2]));
        assert!(set.contains(&f([198, 18, 2, 2])));
        assert!(!set.contains(&f([198, 18, 3, 1])));
        assert!(set.same_ports(&f([198, 18, 3, 1])));
        set.remove(&f([198, 18, 2, 2]));
        assert!(set.same_ports(&f([198, 18, 3, 1])), "one flow remains");
        set.remove(&f([198, 18, 4, 2]));
        set.remove(&f([198, 18, 4, 2])); // unknown now: no underflow
        assert!(!set.same_ports(&f([198, 18, 3, 1])));
    }

    #[test]
    fn flow_sets_keep_the_families_apart() {
        let v6 = |src: &str, proto| FiveTuple {
            src: src.parse().unwrap(),
            dst: "fd00:18::2".parse().unwrap(),
            proto,
            src_port: 40000,
            dst_port: 7001,
        };
        let mut set = FlowSet::default();
        set.insert(v6("fd00:18::1", L4Proto::Udp));
        assert!(set.contains(&v6("fd00:18::1", L4Proto::Udp)));
        assert!(set.same_ports(&v6("fd00:18::9", L4Proto::Udp)));
        assert!(!set.same_ports(&v6("fd00:18::9", L4Proto::Tcp)));
        assert_eq!(
            any_source(v6("fd00:18::1", L4Proto::Udp)).src,
            Ipv6Addr::UNSPECIFIED
        );
        // The same ports on the IPv4 side are another flow's.
        let v4 = FiveTuple {
            src: Ipv4Addr::new(198, 18, 0, 1).into(),
            dst: Ipv4Addr::new(198, 18, 0, 2).into(),
            ..v6("fd00:18::1", L4Proto::Udp)
        };
        assert!(!set.same_ports(&v4));
        // An echo's id stays in the local side.
        let echo = |src| FiveTuple {
            src_port: 7,
            dst_port: 7,
            ..v6(src, L4Proto::Icmpv6)
        };
        set.insert(echo("fd00:18::1"));
        assert!(set.same_ports(&echo("fd00:18::5")));
        assert!(!set.same_ports(&FiveTuple {
            src_port: 8,
            dst_port: 8,
            ..echo("fd00:18::5")
        }));
        assert_eq!(
            set.ports_gone(&[echo("fd00:18::1"), v6("fd00:18::1", L4Proto::Udp)]),
            [echo("fd00:18::1"), v6("fd00:18::1", L4Proto::Udp)]
        );
    }

    #[test]
    fn batches_yield_their_packets_in_order() {
        let mut b = RxBatch::default();
        b.push(b"one");
        b.push(b"");
        b.push(b"three");
        let v: Vec<&[u8]> = b.iter().collect();
        assert_eq!(v, [&b"one"[..], b"", b"three"]);
        assert_eq!(b.len(), 3);
        b.clear();
        assert!(b.is_empty());
    }
}
