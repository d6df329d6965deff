//! The driver's side of the native carrier: what the node core's native
//! outputs turn into on a real host.
//!
//! - [`NativeLink`]: the raw sender of the driver. Native data packets of
//!   one wake-up are copied into a reused batch and leave in one
//!   `sendmmsg` ([`NativeLink::flush`]); probes leave at once.
//! - [`FlowCtl`]: the [`NativeIo`] (its nftables table and receive thread)
//!   lives on a thread of its own that applies the core's
//!   `NativeFlowAdded`/`NativeFlowRemoved` in batches: an `nft` transaction
//!   takes milliseconds and must never stall the packet path. Closing it
//!   deletes the table.
//! - [`local_address_toward`]: the answer to `Output::FindLocalAddress`,
//!   from the kernel's route lookup (a connected UDP socket's source).
//!
//! What this module never does: decide which flows or peers go native (the
//! core does), or look into packets.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::thread::JoinHandle;

use fpn_proto::flow::FlowId;
use fpn_proto::path::Unavailable;
use tracing::{debug, warn};

use crate::error::Result;
use crate::native::{
    FiveTuple, L4Proto, NativeConfig, NativeIo, NativeRx, RawSender, RingDense, RxMechanism,
    TxBatch, send_here,
};
use crate::stage::Stage;

/// Most native packets batched before a send.
pub const MAX_BATCH: usize = crate::native::SEND_BATCH;

/// A change of the native steering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowOp {
    /// Steer this inbound five-tuple to the node.
    Add(FiveTuple),
    /// Give it back to the kernel's stack.
    Remove(FiveTuple),
    /// The node's underlay addresses (both families) are now these (the
    /// ring's filter and the table's address sets follow).
    SetLocal(Vec<IpAddr>),
}

/// Inbound wire flows whose steering is in place, from the table's thread
/// to the driver (the core's `handle_native_flows_ready`).
pub type ReadyRx = tokio::sync::mpsc::UnboundedReceiver<Vec<FlowId>>;

/// Opens the native carrier for the node whose TUN is `tun` and whose
/// underlay addresses (either family) are `local`: the raw sender (with a send thread of
/// its own when `send_thread`), the table (a stale one left by a killed
/// node is replaced) and the receive threads (with `taps`, one each; they
/// nap while traffic is `ring_dense`). `Err` says why native cannot
/// work here; the node then stays on QUIC.
pub fn open(
    tun: &str,
    local: Vec<IpAddr>,
    skip_udp_ports: Vec<u16>,
    send_thread: bool,
    taps: Vec<Box<dyn crate::native::RxTap>>,
    ring_dense: RingDense,
) -> std::result::Result<(NativeLink, NativeRx, FlowCtl, ReadyRx), (Unavailable, crate::error::Error)>
{
    let sender = RawSender::open().map_err(|e| (Unavailable::NoRawSocket, e))?;
    let link = if send_thread {
        let second = RawSender::open().map_err(|e| (Unavailable::NoRawSocket, e))?;
        match NativeLink::with_send_thread(sender, second) {
            Ok(l) => l,
            Err(e) => return Err((Unavailable::NoRawSocket, e)),
        }
    } else {
        NativeLink::new(sender)
    };
    let mut cfg = NativeConfig::new(tun, local, RxMechanism::default());
    cfg.skip_udp_ports = skip_udp_ports;
    cfg.ring_dense = ring_dense;
    let mut io =
        NativeIo::open_with_taps(cfg, taps).map_err(|e| (Unavailable::NoInterception, e))?;
    let rx = io
        .take_receiver()
        .expect("the receiver of a fresh NativeIo is there");
    let (ready_tx, ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctl = FlowCtl::start(io, ready_tx).map_err(|e| (Unavailable::NoInterception, e))?;
    Ok((link, rx, ctl, ready_rx))
}

/// Batches this small leave from the driver itself when the send thread
/// is idle: waking the thread costs a lone packet more than the send.
const SEND_HERE_MAX: usize = 4;

/// The raw sender with its batch, and the send thread the batches go to.
pub struct NativeLink {
    /// Probes leave from here at once, and batches too when there is no
    /// send thread.
    sender: RawSender,
    batch: TxBatch,
    tx: Option<Stage<TxBatch>>,
}

impl std::fmt::Debug for NativeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeLink")
            .field("queued", &self.batch.len())
            .field("send_thread", &self.tx.is_some())
            .finish_non_exhaustive()
    }
}

impl NativeLink {
    /// A link that sends its batches itself, on the caller's thread.
    pub fn new(sender: RawSender) -> Self {
        Self {
            sender,
            batch: TxBatch::default(),
            tx: None,
        }
    }

    /// A link whose batches go to a send thread around a second raw socket
    /// (`thread_sender`, opened in the same namespace): the driver seals
    /// the next batch while the thread hands the last one to the kernel.
    pub fn with_send_thread(sender: RawSender, thread_sender: RawSender) -> Result<Self> {
        let mut thread_sender = thread_sender;
        let mut tx = Stage::start("fpn-native-tx", move |b: &mut TxBatch| {
            send_here(b, &mut thread_sender) as u64
        })?;
        let batch = tx.empty_batch().unwrap_or_default();
        Ok(Self {
            sender,
            batch,
            tx: Some(tx),
        })
    }

    /// Whether batches go to a send thread.
    pub fn has_send_thread(&self) -> bool {
        self.tx.is_some()
    }

    /// Batches the send thread has sent (`None` without one).
    pub fn thread_batches(&self) -> Option<u64> {
        self.tx.as_ref().map(Stage::batches_done)
    }

    /// Queues a native packet (copied into a reused buffer: no allocation
    /// once the buffers grew to the MTU); sends the batch when it is full.
    pub fn queue(&mut self, packet: &[u8]) {
        if self.batch.is_full() {
            self.flush();
        }
        self.batch.push(packet);
    }

    /// Sends a packet now (probes).
    pub fn send_now(&mut self, packet: &[u8]) {
        if let Err(e) = self.sender.send_batch(&[packet]) {
            debug!(error = %e, "native probe not sent");
        }
    }

    /// Sends what is queued (hands it to the send thread, if there is
    /// one). Returns how many packets the kernel refused: of this batch
    /// when sent here, of earlier batches when the thread sent them.
    pub fn flush(&mut self) -> usize {
        if self.batch.is_empty() {
            return 0;
        }
        let Some(tx) = self.tx.as_mut() else {
            return send_here(&mut self.batch, &mut self.sender);
        };
        let refused = usize::try_from(tx.take_refused()).unwrap_or(usize::MAX);
        if self.batch.len() <= SEND_HERE_MAX && tx.is_idle() {
            // A lone packet (a ping, an ACK) would wait for the thread to
            // wake; with nothing queued there it cannot overtake anything.
            return refused + send_here(&mut self.batch, &mut self.sender);
        }
        let Some(next) = tx.empty_batch() else {
            warn!("the native send thread stopped; sending from the driver");
            self.tx = None;
            return refused + send_here(&mut self.batch, &mut self.sender);
        };
        let full = std::mem::replace(&mut self.batch, next);
        match tx.send(full) {
            Ok(()) => refused,
            Err(mut back) => {
                warn!("the native send thread stopped; sending from the driver");
                self.tx = None;
                refused + send_here(&mut back, &mut self.sender)
            }
        }
    }
}

/// The thread that owns the [`NativeIo`] and applies [`FlowOp`]s.
#[derive(Debug)]
pub struct FlowCtl {
    ops: Option<mpsc::Sender<Vec<FlowOp>>>,
    thread: Option<JoinHandle<()>>,
    table: String,
}

impl FlowCtl {
    fn start(io: NativeIo, ready: tokio::sync::mpsc::UnboundedSender<Vec<FlowId>>) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Vec<FlowOp>>();
        let table = io.table().to_owned();
        let thread = std::thread::Builder::new()
            .name("fpn-native-nft".into())
            .spawn(move || run_flow_ops(io, &rx, &ready))
            .map_err(|source| crate::error::Error::Io {
                what: "starting the native flow thread".into(),
                source,
            })?;
        Ok(Self {
            ops: Some(tx),
            thread: Some(thread),
            table,
        })
    }

    /// A handle the driver sends batches of changes to.
    pub fn sender(&self) -> Option<mpsc::Sender<Vec<FlowOp>>> {
        self.ops.clone()
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Deletes the table (after the changes sent so far) and waits for the
    /// thread. Every sender must be gone for the thread to see the end; the
    /// driver's goes when the driver stops.
    pub fn close(mut self) {
        self.ops = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_flow_ops(
    io: NativeIo,
    rx: &mpsc::Receiver<Vec<FlowOp>>,
    ready: &tokio::sync::mpsc::UnboundedSender<Vec<FlowId>>,
) {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    while let Ok(first) = rx.recv() {
        // Everything waiting goes in one transaction.
        add.clear();
        remove.clear();
        let mut local = None;
        for op in first.into_iter().chain(rx.try_iter().flatten()) {
            match op {
                FlowOp::SetLocal(l) => local = Some(l),
                FlowOp::Add(f) => {
                    remove.retain(|r| *r != f);
                    add.push(f);
                }
                FlowOp::Remove(f) => {
                    add.retain(|a| *a != f);
                    remove.push(f);
                }
            }
        }
        // New addresses first: flows added below may arrive at them.
        if let Some(l) = local {
            match io.set_local_addrs(&l) {
                Ok(()) => debug!(addrs = l.len(), "native local addresses updated"),
                Err(e) => warn!(error = %e, "native local addresses not updated"),
            }
        }
        // Removals and additions together: one netlink batch, all or
        // nothing.
        if !(add.is_empty() && remove.is_empty()) {
            match io.change_flows(&add, &remove) {
                // The core sends a new flow's first packets (and, as its
                // responder, the CDN) natively only after this.
                Ok(()) => {
                    if !add.is_empty() {
                        let _ = ready.send(add.iter().map(wire_flow).collect());
                    }
                }
                Err(e) => {
                    warn!(
                        error = %e,
                        added = add.len(),
                        removed = remove.len(),
                        "native flows not changed in the nft set"
                    );
                }
            }
        }
        debug!(
            added = add.len(),
            removed = remove.len(),
            "native flow set updated"
        );
    }
    let table = io.table().to_owned();
    match io.close() {
        Ok(()) => debug!(%table, "native table deleted"),
        Err(e) => warn!(%table, error = %e, "native table not deleted"),
    }
}

/// The five-tuple the nft sets hold for a core's inbound wire flow: TCP
/// and UDP of either family, ICMP echo over IPv4 and ICMPv6 echo over IPv6
/// (whose id the core keeps as both ports); `None` for anything else (other
/// protocols, addresses of two families, ICMP of the other family).
pub fn five_tuple(w: &FlowId) -> Option<FiveTuple> {
    use fpn_proto::flow::protocol;
    let proto = match w.protocol {
        protocol::TCP => L4Proto::Tcp,
        protocol::UDP => L4Proto::Udp,
        protocol::ICMP => L4Proto::Icmp,
        protocol::ICMPV6 => L4Proto::Icmpv6,
        _ => return None,
    };
    let t = FiveTuple {
        src: w.src,
        dst: w.dst,
        proto,
        src_port: w.src_port,
        dst_port: w.dst_port,
    };
    t.is_valid().then_some(t)
}

/// This node's underlay addresses as the native receive path knows them
/// (the ring's filter and the table's address set take packets to these
/// only). They are read at `up`; an address added later is learnt when the
/// host's routing first picks it as the source toward a peer.
#[derive(Debug, Clone)]
pub struct LocalAddrs {
    known: Vec<IpAddr>,
}

impl LocalAddrs {
    /// The addresses the native carrier was opened with (either family).
    pub fn new(known: Vec<IpAddr>) -> Self {
        Self { known }
    }

    /// The addresses known now.
    pub fn known(&self) -> &[IpAddr] {
        &self.known
    }

    /// The host's addresses are `now` (read again after a network change):
    /// true when that differs from what the receive path knew.
    pub fn replace(&mut self, mut now: Vec<IpAddr>) -> bool {
        now.sort();
        now.dedup();
        let changed = now != self.known;
        self.known = now;
        changed
    }

    /// `local` is the host's source toward a peer (the answer to the
    /// core's `FindLocalAddress`; IPv4 or IPv6). If the receive path does
    /// not know it, the host's addresses are read again (`read`, which need
    /// not list `local`: it is kept either way) and the new set is returned
    /// for a [`FlowOp::SetLocal`]; else `None`.
    pub fn learn(
        &mut self,
        local: IpAddr,
        read: impl FnOnce() -> Vec<IpAddr>,
    ) -> Option<Vec<IpAddr>> {
        if self.known.contains(&local) {
            return None;
        }
        let mut now = read();
        if !now.contains(&local) {
            now.push(local);
        }
        now.sort();
        now.dedup();
        self.known = now.clone();
        Some(now)
    }
}

/// The core's inbound wire flow for a five-tuple of the nft sets (the
/// inverse of [`five_tuple`]).
pub fn wire_flow(t: &FiveTuple) -> FlowId {
    FlowId {
        src: t.src,
        dst: t.dst,
        protocol: t.proto.number(),
        src_port: t.src_port,
        dst_port: t.dst_port,
    }
}

/// The source address the host uses toward `remote` (a connected UDP
/// socket: the kernel's route lookup, nothing sent).
pub fn local_address_toward(remote: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match remote {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let s = UdpSocket::bind(bind).ok()?;
    // Marked as the raw sender is, so the lookup is the route its packets
    // take (past the real-address plane's routes into the TUN).
    crate::real_plane::mark(&s);
    s.connect(SocketAddr::new(remote, crate::core::PROBE_PORT))
        .ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_local_address_rereads_the_hosts_addresses_once() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (a, b, c) = (ip("198.18.0.2"), ip("198.18.7.2"), ip("10.0.0.1"));
        let mut l = LocalAddrs::new(vec![a]);
        assert_eq!(l.learn(a, || panic!("not read")), None);
        assert_eq!(l.learn(b, || vec![a, b, c]), Some(vec![c, a, b]));
        assert_eq!(l.learn(b, || panic!("not read")), None);
        // An address the re-read misses (gone again, or a race) is kept.
        let d = ip("198.18.9.9");
        assert_eq!(l.learn(d, || vec![a]), Some(vec![a, d]));
        // IPv6 is learnt too, with the IPv4 addresses the re-read lists.
        let e = ip("fd00:18::2");
        assert_eq!(l.learn(e, || vec![e, a, d]), Some(vec![a, d, e]));
        assert_eq!(l.known(), [a, d, e]);
        assert_eq!(l.learn(e, || panic!("not read")), None);
        assert!(!l.replace(vec![e, d, a, a]), "the same set");
        assert!(l.replace(vec![e]));
        assert_eq!(l.known(), [e]);
    }

    #[test]
    fn five_tuples_of_ipv4_tcp_udp_and_icmp_echo_only() {
        let f = FlowId {
            src: "198.18.0.1".parse().unwrap(),
            dst: "198.18.0.2".parse().unwrap(),
            protocol: 6,
            src_port: 1,
            dst_port: 2,
        };
        let t = five_tuple(&f).unwrap();
        assert_eq!(wire_flow(&t), f);
        assert_eq!((t.proto, t.src_port, t.dst_port), (L4Proto::Tcp, 1, 2));
        let echo = five_tuple(&FlowId {
            protocol: 1,
            src_port: 7,
            dst_port: 7,
            ..f
        })
        .unwrap();
        assert_eq!((echo.proto, echo.src_port), (L4Proto::Icmp, 7));
        assert!(five_tuple(&FlowId { protocol: 47, ..f }).is_none());
        // ICMPv6 over IPv4 is no flow of the sets.
        assert!(five_tuple(&FlowId { protocol: 58, ..f }).is_none());
        assert_eq!(
            local_address_toward("127.0.0.1".parse().unwrap()),
            Some("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn five_tuples_of_ipv6_tcp_udp_and_icmpv6_echo_only() {
        let f = FlowId {
            src: "fd00:18::1".parse().unwrap(),
            dst: "fd00:18::2".parse().unwrap(),
            protocol: 17,
            src_port: 1,
            dst_port: 2,
        };
        for protocol in [6, 17] {
            let w = FlowId { protocol, ..f };
            let t = five_tuple(&w).unwrap();
            assert_eq!((t.src, t.dst), (f.src, f.dst));
            assert_eq!(wire_flow(&t), w);
        }
        let echo = FlowId {
            protocol: 58,
            src_port: 7,
            dst_port: 7,
            ..f
        };
        let t = five_tuple(&echo).unwrap();
        assert_eq!((t.proto, t.src_port), (L4Proto::Icmpv6, 7));
        assert_eq!(wire_flow(&t), echo);
        // ICMP (v4's) over IPv6, other protocols, mixed families: none.
        assert!(
            five_tuple(&FlowId {
                protocol: 1,
                ..echo
            })
            .is_none()
        );
        assert!(five_tuple(&FlowId { protocol: 47, ..f }).is_none());
        let mixed = FlowId {
            dst: "198.18.0.2".parse().unwrap(),
            ..f
        };
        assert!(five_tuple(&mixed).is_none());
    }
}
