//! A deterministic simulation of several [`NodeCore`]s with real DPRP
//! endpoints, PITs, PCCOM and CA-signed credentials, on a simulated
//! network, next to fpn-proto's simulator ([`fpn_proto::sim`]), whose
//! [`LinkConfig`] and deterministic node keys it reuses.
//!
//! The network carries each core's frames (the [`DataOut::Send`] of the
//! data path and the [`Output::Send`] of everything else) to the node whose
//! underlay address and GE the frame's [`PeerTarget`] names, with the link's
//! latency, jitter, loss, duplication and reordering drawn from one seeded
//! generator. A node can move to another underlay address
//! ([`CoreSim::move_node`]); frames to the old one are then lost until the
//! directory tells its peers ([`CoreSim::announce`]). Directory lookups the
//! cores ask for are answered after [`CoreSim::directory_delay`] when
//! [`CoreSim::directory_answers`] is on (the GMS task's part).
//!
//! Time is virtual: [`CoreSim::drive`] jumps to the next frame arrival or
//! core deadline while anything is in flight; [`CoreSim::run_for`] runs
//! every deadline up to a point. No clock is read after [`CoreSim::new`].
//! Each node runs in its own tracing span (`node{name=..}`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fpn_proto::credential::Credential;
use fpn_proto::dprp::{Config, Endpoint, Entropy, Prefix};
use fpn_proto::flow::FlowId;
use fpn_proto::ge::{GeId, GeInfo, GeKind, GroupId, Mode};
use fpn_proto::keys::{GroupKey, KeyVersion, NodeKey};
use fpn_proto::packet::Packet;
use fpn_proto::path::PathConfig;
use fpn_proto::pit::{Pit, PitConfig};
pub use fpn_proto::sim::LinkConfig;
use fpn_proto::sim::{START_UNIX, node_key};

use super::worker::{Worker, WorkerOut};
use super::{Command, CoreConfig, DataOut, NodeCore, Output, Timer};
use crate::carrier::{CarrierKind, FrameKind, PeerTarget};
use crate::directory::PeerRecord;

/// How long the simulated directory takes to answer a lookup, by default.
pub const DIRECTORY_DELAY: Duration = Duration::from_millis(20);
/// [`CoreSim::drive`] keeps running DPRP deadlines this close (retransmissions).
const DPRP_HORIZON: Duration = Duration::from_secs(2);
/// The most steps one drive takes before giving up.
const MAX_STEPS: usize = 200_000;
/// Most data frames kept in [`CoreSim::wire`].
const WIRE_LOG_LIMIT: usize = 100_000;
/// The carrier port every node listens on.
const PORT: u16 = 7718;
/// How long a simulated node's "nft" takes to steer a new inbound flow to
/// it (the lab's `nft` transactions take 2-16 ms).
pub const STEER_DELAY: Duration = Duration::from_millis(5);

/// The TUN MTU of every node.
pub const MTU: u16 = 1380;

/// One simulated node.
pub struct SimNode {
    /// Its core.
    pub core: NodeCore,
    /// Its data-path worker ([`CoreSim::workers`]): packets go to it first,
    /// and to the core when it has no install for them.
    pub worker: Option<Worker>,
    /// GE id.
    pub ge: GeId,
    /// Name.
    pub name: String,
    /// Overlay address.
    pub overlay: Ipv4Addr,
    /// Current underlay address.
    pub underlay: SocketAddr,
    /// Packets written into its TUN, in order.
    pub tun: Vec<Vec<u8>>,
    /// Overlay addresses it asked the directory about, in order.
    pub lookups: Vec<Ipv4Addr>,
    /// How often it said its peer table changed ([`Output::PeersChanged`]).
    pub peers_changed: u64,
    /// Inbound wire five-tuples it asked to intercept (the nft set).
    pub intercepted: std::collections::BTreeSet<FlowId>,
    /// Inbound wire five-tuples asked for and not yet in place.
    pub steering: std::collections::BTreeSet<FlowId>,
    /// How long its "nft" takes to put a flow's steering in place (and
    /// confirm it to the core); [`STEER_DELAY`] by default.
    pub steer_delay: Duration,
    /// NAT-f pairs this node (as a gateway) DNATs: (remote, VIN) -> host.
    pub natf_pairs: std::collections::BTreeMap<(Ipv4Addr, Ipv4Addr), std::net::IpAddr>,
    /// The LAN addresses this node (as a gateway) fronts, as last told.
    pub natf_fronted: Vec<std::net::IpAddr>,
    /// A NAT in front of it, for its native packets ([`SimNat`]).
    pub nat: Option<SimNat>,
    /// The gateway node its native packets cross, both ways (a GE in the
    /// gateway's LAN): the gateway's kernel routes DDEs into its TUN and
    /// drops the flows in its transit drop set; the rest passes.
    pub via: Option<usize>,
    /// Flows this node (a gateway) drops on the path ([`Output::TransitDrop`]).
    pub transit_drops: std::collections::BTreeSet<FlowId>,
    /// Native packets this node (a gateway) dropped on the path.
    pub transit_dropped: u64,
    /// Suspended (the machine asleep, or the process stopped) until the
    /// first, with the core's deadline when it went to sleep: frames to
    /// it are lost and its timers wait ([`CoreSim::suspend`]).
    pub asleep: Option<(Instant, Option<Instant>)>,
    spec: (Mode, Vec<u32>),
    /// Kind and credential prefixes (the real-address plane; a plain GES
    /// names none).
    real: (GeKind, Vec<Prefix>),
    span: tracing::Span,
}

/// A data frame seen on the wire.
#[derive(Clone)]
pub struct WireFrame {
    /// Sending node.
    pub from: usize,
    /// True for a raw IP packet on the native path (else a QUIC frame).
    pub native: bool,
    /// The frame.
    pub payload: Vec<u8>,
}

/// A NAT in front of one node, on its native path only (QUIC frames are
/// addressed by the carrier and not simulated at this level): it keeps the
/// node's address as its outside address and rewrites TCP/UDP source
/// ports, as a host or router NAT does on a port clash or a NAT with random
/// ports does always. Mappings are endpoint-independent (one outside port
/// per inside protocol and port); inbound packets need a mapping, and with
/// `address_dependent_filtering` a remote address the mapping has sent to.
/// ICMP echoes are mapped by their identifier like a port (rewritten only
/// with `random_ports`, as Linux's `masquerade random-fully` does); other
/// ICMP passes unchanged.
#[derive(Debug, Default, Clone)]
pub struct SimNat {
    /// Outside ports drawn at random (else the inside port is kept).
    pub random_ports: bool,
    /// Inbound only from remote addresses the mapping has sent to.
    pub address_dependent_filtering: bool,
    /// Inbound packets dropped (no mapping, or filtered).
    pub dropped: u64,
    /// Mappings made.
    pub mappings: u64,
    out: BTreeMap<(u8, u16), u16>,
    back: BTreeMap<(u8, u16), u16>,
    contacted: std::collections::BTreeSet<(u8, u16, IpAddr)>,
}

impl SimNat {
    /// A NAT with no mappings yet.
    pub fn new(random_ports: bool, address_dependent_filtering: bool) -> Self {
        Self {
            random_ports,
            address_dependent_filtering,
            ..Self::default()
        }
    }

    /// The NAT forgets every mapping (they timed out while the host
    /// slept, or the NAT restarted): the next packets get new ports.
    pub fn forget_mappings(&mut self) {
        self.out.clear();
        self.back.clear();
        self.contacted.clear();
    }

    fn outbound(&mut self, packet: &mut [u8], dice: &mut Dice) {
        let Ok(mut p) = Packet::parse(&mut packet[..]) else {
            return;
        };
        let f = p.flow_id();
        if !mapped(&f) {
            return;
        }
        let key = (f.protocol, f.src_port);
        let outside = match self.out.get(&key) {
            Some(o) => *o,
            None => {
                let mut o = f.src_port;
                if self.random_ports {
                    loop {
                        o = 20_000 + (dice.next_u64() % 40_000) as u16;
                        if o != f.src_port && !self.back.contains_key(&(f.protocol, o)) {
                            break;
                        }
                    }
                }
                self.out.insert(key, o);
                self.back.insert((f.protocol, o), f.src_port);
                self.mappings += 1;
                o
            }
        };
        self.contacted.insert((f.protocol, outside, f.dst));
        if outside != f.src_port {
            let _ = p.set_src_port(outside);
        }
    }

    /// False when the packet is dropped.
    fn inbound(&mut self, packet: &mut [u8]) -> bool {
        let Ok(mut p) = Packet::parse(&mut packet[..]) else {
            return false;
        };
        let f = p.flow_id();
        if !mapped(&f) {
            return true;
        }
        let Some(inside) = self.back.get(&(f.protocol, f.dst_port)).copied() else {
            return false;
        };
        if self.address_dependent_filtering
            && !self.contacted.contains(&(f.protocol, f.dst_port, f.src))
        {
            return false;
        }
        if inside != f.dst_port {
            let _ = p.set_dst_port(inside);
        }
        true
    }
}

/// What a [`SimNat`] maps: TCP, UDP, and ICMP echoes (by identifier).
fn mapped(f: &FlowId) -> bool {
    match f.protocol {
        6 | 17 => true,
        fpn_proto::flow::protocol::ICMP => f.src_port != 0,
        _ => false,
    }
}

/// Frame counters of the network.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the network.
    pub sent: u64,
    /// Frames delivered.
    pub delivered: u64,
    /// Frames lost by the link.
    pub lost: u64,
    /// Extra copies made by the link.
    pub duplicated: u64,
    /// Frames whose target address had no node of that GE (moved away).
    pub undeliverable: u64,
}

enum Event {
    Frame {
        to: usize,
        addr: SocketAddr,
        from_ge: GeId,
        from: SocketAddr,
        kind: FrameKind,
        payload: Vec<u8>,
    },
    DirectoryAnswer {
        to: usize,
        ip: Ipv4Addr,
    },
    Native {
        packet: Vec<u8>,
    },
    /// The node's "nft" change for an inbound flow took effect.
    Steered {
        to: usize,
        flow: FlowId,
    },
    /// A suspended node runs again.
    Wake {
        to: usize,
    },
}

/// The simulated network of node cores.
pub struct CoreSim {
    /// The nodes, by index.
    pub nodes: Vec<SimNode>,
    /// Network counters.
    pub stats: NetStats,
    /// Frames to GEs that are no node of the simulation (a test playing a
    /// peer by hand takes them from here), up to a limit.
    pub stray: Vec<(GeId, FrameKind, Vec<u8>)>,
    /// When on, directory lookups are answered (default on).
    pub directory_answers: bool,
    /// How long the directory takes to answer ([`DIRECTORY_DELAY`]).
    pub directory_delay: Duration,
    /// When on, native packets (raw IP, probes included) are lost, as behind
    /// a firewall that only lets the QUIC carrier through.
    pub native_blocked: bool,
    /// When on, native data packets are lost but probes (UDP to the probe
    /// port) pass: a firewall that drops only the raw TCP/UDP of flows.
    pub native_data_blocked: bool,
    /// Path settings of nodes made from now on (`force` = the `carrier` key).
    pub path: PathConfig,
    /// Fast open (the `fast_open` key) for nodes made from now on; off by
    /// default, so the scenarios written before it negotiate every flow.
    pub fast_open: bool,
    /// FOPs with the first packet inside (DPRP's `Config::fast_first`)
    /// for nodes made from now on; on by default.
    pub fast_first: bool,
    /// The PIT settings of nodes made from now on.
    pub pit: PitConfig,
    /// When on (the default), data frames are kept for [`CoreSim::wire`]
    /// (up to a limit); a benchmark turns it off so the log does not count
    /// as the nodes' memory.
    pub wire_log: bool,
    /// When on (the default), [`CoreSim::check_invariants`] runs after
    /// every step; it walks every PIT entry, so a benchmark that times
    /// the cores turns it off.
    pub invariants: bool,
    /// Added to every carrier frame's flight (default none): a carrier
    /// slower than the native path, as QUIC is while its connection is
    /// opened again after a move.
    pub carrier_delay: Duration,
    /// Native packets lost to [`CoreSim::native_blocked`] or addressed to
    /// no node.
    pub native_lost: u64,
    /// Nodes made from now on have a data-path worker (design note 67),
    /// whose report the core takes after every packet the worker carried,
    /// so a run with workers must be the same as one without. Off unless
    /// the environment has `FPN_SIM_WORKERS=1`.
    pub workers: bool,
    /// Control frames (DPRP over the carrier) as sent, kept like
    /// [`CoreSim::wire`] while `wire_log` is on: a test replays one.
    pub controls: Vec<WireFrame>,
    ca: NodeKey,
    now: Instant,
    link: LinkConfig,
    dice: Dice,
    queue: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    wire: Vec<WireFrame>,
    buf: Vec<u8>,
}

impl CoreSim {
    /// An empty network; `seed` drives every random choice.
    pub fn new(seed: u64, link: LinkConfig) -> Self {
        let mut dice = Dice(seed);
        let ca = NodeKey::from_seed(&dice.bytes32());
        Self {
            nodes: Vec::new(),
            stats: NetStats::default(),
            stray: Vec::new(),
            directory_answers: true,
            directory_delay: DIRECTORY_DELAY,
            native_blocked: false,
            native_data_blocked: false,
            // The scenarios of sim_tests.rs are about DPRP, the PIT and the
            // QUIC carrier: QUIC unless a test asks for path selection.
            path: PathConfig {
                force: fpn_proto::path::Force::Quic,
                ..PathConfig::default()
            },
            native_lost: 0,
            // FPN_SIM_WORKERS=1 runs every scenario with workers
            // (scripts/test.sh does, once more).
            workers: std::env::var_os("FPN_SIM_WORKERS").is_some_and(|v| v == "1"),
            fast_open: false,
            fast_first: true,
            pit: PitConfig::default(),
            wire_log: true,
            invariants: true,
            carrier_delay: Duration::ZERO,
            ca,
            // The only clock read: an arbitrary origin for virtual time.
            now: Instant::now(),
            link,
            dice,
            queue: BTreeMap::new(),
            seq: 0,
            controls: Vec::new(),
            wire: Vec::new(),
            buf: vec![0; fpn_proto::dprp::msg::MAX_MESSAGE_LEN],
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Changes the link model from now on.
    pub fn set_link(&mut self, link: LinkConfig) {
        self.link = link;
    }

    /// Data frames sent so far (up to a limit).
    pub fn wire(&self) -> &[WireFrame] {
        &self.wire
    }

    /// Adds node `id` (overlay 100.64.0.id, underlay 198.18.0.id) with
    /// version 1 of each group's key. It knows no peer yet.
    pub fn add_node(&mut self, id: u32, mode: Mode, groups: &[u32]) -> usize {
        self.add_ge(id, GeKind::Ges, mode, groups, Vec::new())
    }

    /// Adds node `id` as [`CoreSim::add_node`] does, of `kind`, whose
    /// credential names `prefixes` (the real-address plane: a GES's real
    /// address, a gateway's LAN); its core speaks for them.
    pub fn add_ge(
        &mut self,
        id: u32,
        kind: GeKind,
        mode: Mode,
        groups: &[u32],
        prefixes: Vec<Prefix>,
    ) -> usize {
        let name = format!("n{id}");
        let node = SimNode {
            core: self.make_core(id, kind, mode, groups, &prefixes),
            worker: self.worker(),
            ge: GeId(id),
            overlay: overlay_of(id),
            underlay: SocketAddr::from(([198, 18, 0, id as u8], PORT)),
            tun: Vec::new(),
            lookups: Vec::new(),
            peers_changed: 0,
            intercepted: std::collections::BTreeSet::new(),
            steering: std::collections::BTreeSet::new(),
            steer_delay: STEER_DELAY,
            natf_pairs: std::collections::BTreeMap::new(),
            natf_fronted: Vec::new(),
            nat: None,
            via: None,
            transit_drops: std::collections::BTreeSet::new(),
            transit_dropped: 0,
            asleep: None,
            spec: (mode, groups.to_vec()),
            real: (kind, prefixes),
            span: tracing::info_span!("node", name = %name),
            name,
        };
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        for g in groups {
            self.command(
                i,
                Command::Keys {
                    group: GroupId(*g),
                    keys: vec![(KeyVersion(1), group_key(*g, 1))],
                },
            );
        }
        i
    }

    /// Adds gateway node `id` (a GEN) whose credential protects `lan`.
    pub fn add_gateway(&mut self, id: u32, mode: Mode, groups: &[u32], lan: Prefix) -> usize {
        self.add_ge(id, GeKind::Gen, mode, groups, vec![lan])
    }

    /// The node restarts: a fresh core with the same identity, no flows,
    /// no peers (introduce them again).
    pub fn restart(&mut self, i: usize) {
        let (mode, groups) = self.nodes[i].spec.clone();
        let (kind, prefixes) = self.nodes[i].real.clone();
        let id = self.nodes[i].ge.0;
        self.nodes[i].core = self.make_core(id, kind, mode, &groups, &prefixes);
        self.nodes[i].worker = self.worker();
        for g in groups {
            self.command(
                i,
                Command::Keys {
                    group: GroupId(g),
                    keys: vec![(KeyVersion(1), group_key(g, 1))],
                },
            );
        }
    }

    /// The directory record of node `i` as the GMS would give it.
    pub fn record(&self, i: usize) -> PeerRecord {
        let n = &self.nodes[i];
        PeerRecord {
            name: n.name.clone(),
            ge: n.ge.0,
            overlay: n.overlay,
            addrs: vec![n.underlay],
            reflexive: None,
            fetched: START_UNIX,
            key: Some(node_key(n.ge.0).public()),
            info: Some(
                crate::directory::PeerInfo {
                    kind: n.real.0.code(),
                    mode: n.spec.0.code(),
                    groups: n.spec.1.clone(),
                    prefixes: Vec::new(),
                }
                .with_prefixes(&n.real.1),
            ),
        }
    }

    /// Tells node `to` where node `about` is.
    pub fn introduce(&mut self, to: usize, about: usize) {
        let rec = self.record(about);
        self.command(to, Command::Peer(rec));
    }

    /// Tells every node about every other one.
    pub fn introduce_all(&mut self) {
        for to in 0..self.nodes.len() {
            for about in 0..self.nodes.len() {
                if to != about {
                    self.introduce(to, about);
                }
            }
        }
    }

    /// The directory pushes node `i`'s record to every other node.
    pub fn announce(&mut self, i: usize) {
        for to in 0..self.nodes.len() {
            if to != i {
                self.introduce(to, i);
            }
        }
    }

    /// Node `i` moves to another underlay address (frames in flight to the
    /// old one are lost; its peers still dial the old one until told).
    pub fn move_node(&mut self, i: usize, addr: SocketAddr) {
        self.nodes[i].underlay = addr;
    }

    /// Node `i`'s driver reports its underlay's address families.
    pub fn underlay_families(&mut self, i: usize, families: super::Families) {
        let now = self.now;
        self.nodes[i].core.handle_underlay_families(families, now);
        self.flush(i);
    }

    /// A command for node `i`.
    pub fn command(&mut self, i: usize, cmd: Command) {
        let now = self.now;
        let span = self.nodes[i].span.clone();
        let _e = span.enter();
        self.nodes[i].core.handle_command(cmd, now);
        self.flush(i);
        if self.invariants {
            self.check_invariants();
        }
    }

    /// Node `i`'s host sends a UDP packet to node `to`.
    pub fn send_udp(&mut self, i: usize, to: usize, sport: u16, dport: u16, payload: &[u8]) {
        let p = udp_packet(
            self.nodes[i].overlay,
            self.nodes[to].overlay,
            sport,
            dport,
            payload,
        );
        self.send_packet(i, &p);
    }

    /// Node `i`'s host sends `packet` into its TUN.
    pub fn send_packet(&mut self, i: usize, packet: &[u8]) {
        let now = self.now;
        let mut buf = std::mem::take(&mut self.buf);
        buf[..packet.len()].copy_from_slice(packet);
        let span = self.nodes[i].span.clone();
        let _e = span.enter();
        let node = &mut self.nodes[i];
        let by_worker = match node.worker.as_mut() {
            Some(w) => match w.handle_tun_packet(&mut buf, packet.len(), now) {
                WorkerOut::Native(p) => Some(Some((None, p.to_vec(), CarrierKind::Native))),
                WorkerOut::Quic { target, frame } => Some(Some((
                    Some(target.clone()),
                    frame.to_vec(),
                    CarrierKind::Quic,
                ))),
                WorkerOut::Tun(p) => {
                    node.tun.push(p.to_vec());
                    Some(None)
                }
                WorkerOut::Dropped => Some(None),
                WorkerOut::Core => None,
            },
            None => None,
        };
        let worked = by_worker.is_some();
        let sent = match by_worker {
            Some(sent) => sent,
            None => match node.core.handle_tun_packet(&mut buf, packet.len(), now) {
                DataOut::Send {
                    target,
                    frame,
                    path,
                } => Some((Some(target.clone()), frame.to_vec(), path)),
                DataOut::Tun(p) => {
                    node.tun.push(p.to_vec());
                    None
                }
                DataOut::Nothing => None,
            },
        };
        self.buf = buf;
        match sent {
            Some((_, frame, CarrierKind::Native)) => {
                self.log_wire(i, true, &frame);
                self.transmit_native(i, frame);
            }
            // The core never names the relay (the carrier chooses it).
            Some((Some(target), frame, CarrierKind::Quic | CarrierKind::Relay)) => {
                self.transmit(i, &target, FrameKind::Data, frame);
            }
            Some((None, _, _)) | None => {}
        }
        if worked {
            self.worker_report(i);
        }
        self.flush(i);
    }

    /// The core takes what node `i`'s worker carried (after each packet:
    /// the same as if the core had carried it).
    fn worker_report(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        if let Some(w) = node.worker.as_mut() {
            let report = w.take_report();
            if !report.is_empty() {
                node.core.handle_worker_report(report, now);
            }
        }
    }

    /// Hands node `i` a frame as if the carrier received it from `from_ge`
    /// at `from` (a forged or replayed frame).
    pub fn inject(
        &mut self,
        i: usize,
        from_ge: GeId,
        from: SocketAddr,
        kind: FrameKind,
        payload: &[u8],
    ) {
        self.deliver(i, from_ge, from, kind, payload);
    }

    /// Hands node `i` a raw packet as if its native receive path took it in
    /// (a forged, replayed or stray packet).
    pub fn inject_native(&mut self, i: usize, packet: &[u8]) {
        self.deliver_native(i, packet);
    }

    /// Node `i`'s host puts a raw packet on the network itself, past its
    /// core (a GE that ignores DPRP's answer).
    pub fn send_raw(&mut self, i: usize, packet: Vec<u8>) {
        self.transmit_native(i, packet);
    }

    /// Node `i`'s host says its network changed (the driver's watcher).
    pub fn network_change(&mut self, i: usize, cause: &str) {
        let now = self.now;
        let span = self.nodes[i].span.clone();
        let _e = span.enter();
        self.nodes[i]
            .core
            .handle_network_change(cause.to_owned(), now);
        self.flush(i);
    }

    /// Node `i` stops running for `d` (the machine suspended, or the
    /// process stopped): what arrives meanwhile is lost, its timers wait,
    /// and it wakes at `now + d` late for its deadline, as its driver
    /// would ([`NodeCore::handle_wake`]).
    pub fn suspend(&mut self, i: usize, d: Duration) {
        let until = self.now + d;
        self.nodes[i].asleep = Some((until, self.nodes[i].core.poll_timeout().map(|(t, _)| t)));
        self.seq += 1;
        self.queue.insert((until, self.seq), Event::Wake { to: i });
    }

    /// A counter of node `i`.
    pub fn counter(&self, i: usize, name: &str) -> u64 {
        self.nodes[i]
            .core
            .counters()
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Runs while frames or directory answers are in flight, or a node has
    /// a DPRP deadline (retransmission) close ahead; later deadlines (PIT
    /// ageing, renegotiations, expiries) wait for [`CoreSim::run_for`].
    pub fn drive(&mut self) {
        for _ in 0..MAX_STEPS {
            let next_event = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = self
                .nodes
                .iter()
                .filter(|n| n.asleep.is_none())
                .filter_map(|n| n.core.poll_timeout())
                .filter(|(t, timer)| *timer == Timer::Dprp && *t <= self.now + DPRP_HORIZON)
                .map(|(t, _)| t)
                .min();
            let Some(at) = [next_event, next_timer].into_iter().flatten().min() else {
                return;
            };
            self.step(at);
        }
        panic!("the simulation did not settle in {MAX_STEPS} steps");
    }

    /// Runs every frame and deadline up to `now + d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..MAX_STEPS {
            let next_event = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = self
                .nodes
                .iter()
                .filter(|n| n.asleep.is_none())
                .filter_map(|n| n.core.poll_timeout())
                .map(|(t, _)| t)
                .min();
            match [next_event, next_timer].into_iter().flatten().min() {
                Some(at) if at <= end => self.step(at),
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("the simulation did not reach its end in {MAX_STEPS} steps");
    }

    fn step(&mut self, at: Instant) {
        self.now = self.now.max(at);
        let now = self.now;
        let due: Vec<(Instant, u64)> = self
            .queue
            .range(..=(now, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            match self.queue.remove(&k) {
                Some(Event::Frame {
                    to,
                    addr,
                    from_ge,
                    from,
                    kind,
                    payload,
                }) => {
                    if self.nodes[to].underlay != addr || self.nodes[to].asleep.is_some() {
                        self.stats.undeliverable += 1;
                        continue;
                    }
                    self.stats.delivered += 1;
                    self.deliver(to, from_ge, from, kind, &payload);
                }
                Some(Event::Native { packet }) => self.route_native(packet),
                Some(Event::Steered { to, flow }) if self.nodes[to].steering.remove(&flow) => {
                    self.nodes[to].intercepted.insert(flow);
                    let span = self.nodes[to].span.clone();
                    let _e = span.enter();
                    self.nodes[to].core.handle_native_flows_ready(&[flow], now);
                    self.flush(to);
                }
                Some(Event::Steered { .. }) => {}
                Some(Event::Wake { to }) => {
                    let Some((_, deadline)) = self.nodes[to].asleep.take() else {
                        continue;
                    };
                    let span = self.nodes[to].span.clone();
                    let _e = span.enter();
                    // What the driver does on every wake-up.
                    self.nodes[to].core.handle_wake(deadline, now);
                    self.flush(to);
                }
                Some(Event::DirectoryAnswer { to, ip }) => {
                    if let Some(owner) = self.nodes.iter().position(|n| n.overlay == ip) {
                        self.introduce(to, owner);
                    }
                }
                None => {}
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].asleep.is_none()
                && self.nodes[i]
                    .core
                    .poll_timeout()
                    .is_some_and(|(t, _)| t <= now)
            {
                let span = self.nodes[i].span.clone();
                let _e = span.enter();
                self.nodes[i].core.handle_timeout(now);
                self.flush(i);
            }
        }
        if self.invariants {
            self.check_invariants();
        }
    }

    /// What must hold after every step, on every node: each PIT entry's
    /// peer owns the flow's remote address in the node's peer table
    /// (identity binding), and no deadline is left in the past.
    ///
    /// # Panics
    ///
    /// When one does not hold (this is a test harness).
    pub fn check_invariants(&self) {
        for n in &self.nodes {
            for (flow, entry) in n.core.pit().iter() {
                let remote = if n.core.is_own(flow.src) {
                    flow.dst
                } else {
                    flow.src
                };
                let Some(r) = n.core.config().net6.as_v4(remote) else {
                    panic!(
                        "{}: a flow {flow} to an IPv6 address outside the overlay",
                        n.name
                    );
                };
                assert_eq!(
                    n.core.owner_of(r),
                    entry.peer(),
                    "{}: flow {flow} is bound to a GE that does not own {r}",
                    n.name
                );
            }
            if let Some((t, timer)) = n.core.poll_timeout()
                && n.asleep.is_none()
            {
                assert!(t > self.now, "{}: {timer:?} overdue", n.name);
            }
        }
    }

    /// A digest of every data frame sent so far (to compare two runs).
    pub fn wire_digest(&self) -> u64 {
        // FNV-1a: stable across runs and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in &self.wire {
            for b in (f.from as u64).to_le_bytes().iter().chain(&f.payload) {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    fn deliver(
        &mut self,
        i: usize,
        from_ge: GeId,
        from: SocketAddr,
        kind: FrameKind,
        payload: &[u8],
    ) {
        let now = self.now;
        let mut buf = std::mem::take(&mut self.buf);
        buf[..payload.len()].copy_from_slice(payload);
        let span = self.nodes[i].span.clone();
        let _e = span.enter();
        let node = &mut self.nodes[i];
        let mut worked = false;
        if kind == FrameKind::Data
            && let Some(w) = node.worker.as_mut()
        {
            let out = w.handle_carrier_data(from_ge, &mut buf, payload.len(), now);
            worked = took_inbound(&mut node.tun, out);
        }
        if !worked
            && let DataOut::Tun(p) =
                node.core
                    .handle_carrier_frame(from_ge, from, kind, &mut buf, payload.len(), now)
        {
            node.tun.push(p.to_vec());
        }
        self.buf = buf;
        if worked {
            self.worker_report(i);
        }
        self.flush(i);
    }

    /// Carries out everything node `i` queued.
    fn flush(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(w) = node.worker.as_mut() {
            while let Some(install) = node.core.poll_install() {
                w.install(install);
            }
        }
        while let Some(o) = self.nodes[i].core.poll_output() {
            match o {
                Output::Send {
                    target,
                    kind,
                    payload,
                    ..
                } => self.transmit(i, &target, kind, payload),
                Output::Tun(p) => self.nodes[i].tun.push(p),
                Output::DirectoryLookup(ip) => {
                    self.nodes[i].lookups.push(ip);
                    if self.directory_answers {
                        let at = self.now + self.directory_delay;
                        self.seq += 1;
                        self.queue
                            .insert((at, self.seq), Event::DirectoryAnswer { to: i, ip });
                    }
                }
                Output::PeersChanged => self.nodes[i].peers_changed += 1,
                Output::SendNative(p) => {
                    self.log_wire(i, true, &p);
                    self.transmit_native(i, p);
                }
                Output::FindLocalAddress(remote) => {
                    // One underlay interface per node: the source is its address.
                    let local = self.nodes[i].underlay.ip();
                    let now = self.now;
                    self.nodes[i].core.handle_local_address(remote, local, now);
                }
                Output::NativeFlowAdded(w) => {
                    // In place (and confirmed) after the node's delay, as
                    // the driver's nft thread does.
                    if self.nodes[i].steering.insert(w) {
                        let at = self.now + self.nodes[i].steer_delay;
                        self.seq += 1;
                        self.queue
                            .insert((at, self.seq), Event::Steered { to: i, flow: w });
                    }
                }
                Output::NativeFlowRemoved(w) => {
                    self.nodes[i].steering.remove(&w);
                    self.nodes[i].intercepted.remove(&w);
                }
                Output::NatfMapped { remote, vin, lip } => {
                    self.nodes[i].natf_pairs.insert((remote, vin), lip);
                }
                Output::NatfFronted(lips) => self.nodes[i].natf_fronted = lips,
                Output::NatfUnmapped { remote, vin } => {
                    self.nodes[i].natf_pairs.remove(&(remote, vin));
                }
                Output::TransitDrop { flow, drop } => {
                    if drop {
                        self.nodes[i].transit_drops.insert(flow);
                    } else {
                        self.nodes[i].transit_drops.remove(&flow);
                    }
                }
            }
        }
    }

    fn log_wire(&mut self, from: usize, native: bool, payload: &[u8]) {
        if self.wire_log && self.wire.len() < WIRE_LOG_LIMIT {
            self.wire.push(WireFrame {
                from,
                native,
                payload: payload.to_vec(),
            });
        }
    }

    /// Puts a raw IP packet on the network, toward the node whose underlay
    /// address is its destination.
    fn transmit_native(&mut self, from: usize, mut packet: Vec<u8>) {
        self.stats.sent += 1;
        if let Some(mut nat) = self.nodes[from].nat.take() {
            nat.outbound(&mut packet, &mut self.dice);
            self.nodes[from].nat = Some(nat);
        }
        if self.native_blocked {
            self.native_lost += 1;
            return;
        }
        let delays = self.dice.hop(&self.link);
        if delays.is_empty() {
            self.stats.lost += 1;
        }
        for d in delays {
            self.seq += 1;
            self.queue.insert(
                (self.now + d, self.seq),
                Event::Native {
                    packet: packet.clone(),
                },
            );
        }
    }

    /// A native packet arrives at its destination's node, if it is still
    /// there and would be intercepted (UDP to the probe port, or a five-tuple
    /// of its nft set).
    fn route_native(&mut self, mut packet: Vec<u8>) {
        if self.native_blocked {
            self.native_lost += 1;
            return;
        }
        let Ok(p) = Packet::parse(&packet[..]) else {
            self.native_lost += 1;
            return;
        };
        let flow = p.flow_id();
        let Some(to) = self.nodes.iter().position(|n| n.underlay.ip() == flow.dst) else {
            self.native_lost += 1;
            return;
        };
        if self.nodes[to].asleep.is_some() {
            self.native_lost += 1;
            return;
        }
        if let Some(nat) = self.nodes[to].nat.as_mut()
            && !nat.inbound(&mut packet)
        {
            nat.dropped += 1;
            self.native_lost += 1;
            return;
        }
        let Ok(p) = Packet::parse(&packet[..]) else {
            self.native_lost += 1;
            return;
        };
        let flow = p.flow_id();
        if self.crosses_gateway(to, &flow, &packet) {
            return;
        }
        let probe = flow.protocol == 17 && flow.dst_port == super::PROBE_PORT;
        if !probe && self.native_data_blocked {
            self.native_lost += 1;
            return;
        }
        // The ring hands over a copy of a packet whose local side is a
        // steered flow's, whatever its source address and port (the NAT
        // binding step needs it); the host's kernel is not simulated.
        let local_side = |f: &FlowId| (f.dst, f.protocol, f.dst_port);
        if !probe
            && !self.nodes[to].intercepted.contains(&flow)
            && !self.nodes[to]
                .intercepted
                .iter()
                .any(|f| local_side(f) == local_side(&flow))
        {
            self.native_lost += 1;
            return;
        }
        self.stats.delivered += 1;
        self.deliver_native(to, &packet);
    }

    /// The gateways a native packet from `flow.src` to node `to` crosses
    /// (the sender's `via`, then the receiver's): true when one took it,
    /// into its TUN (a DDE, as its kernel's transit rule does) or dropped
    /// it (its transit drop set).
    fn crosses_gateway(&mut self, to: usize, flow: &FlowId, packet: &[u8]) -> bool {
        let from = self.nodes.iter().position(|n| n.underlay.ip() == flow.src);
        let path = [from.and_then(|f| self.nodes[f].via), self.nodes[to].via];
        for g in path.into_iter().flatten() {
            if Some(g) == from || g == to {
                continue;
            }
            let dde = flow.protocol == 17
                && flow.dst_port == super::PROBE_PORT
                && Packet::parse(packet).is_ok_and(|p| {
                    matches!(
                        fpn_proto::dprp::msg::peek(p.payload()),
                        Ok((t, _)) if t.intercepted_in_transit()
                    )
                });
            if dde {
                self.send_packet(g, packet);
                return true;
            }
            let n = &mut self.nodes[g];
            if n.transit_drops.contains(flow) || n.transit_drops.contains(&flow.reversed()) {
                n.transit_dropped += 1;
                self.native_lost += 1;
                return true;
            }
        }
        false
    }

    /// A node's data-path worker, when nodes have them: its table as
    /// large as the daemon makes it for the PIT's size.
    fn worker(&self) -> Option<Worker> {
        self.workers
            .then(|| Worker::with_capacity(Worker::capacity_for(self.pit.max_entries)))
    }

    fn deliver_native(&mut self, i: usize, packet: &[u8]) {
        let now = self.now;
        let mut buf = std::mem::take(&mut self.buf);
        buf[..packet.len()].copy_from_slice(packet);
        let span = self.nodes[i].span.clone();
        let _e = span.enter();
        let node = &mut self.nodes[i];
        let mut worked = false;
        if let Some(w) = node.worker.as_mut() {
            let out = w.handle_native_packet(&mut buf, packet.len(), now);
            worked = took_inbound(&mut node.tun, out);
        }
        if !worked
            && let DataOut::Tun(p) = node.core.handle_native_packet(&mut buf, packet.len(), now)
        {
            node.tun.push(p.to_vec());
        }
        self.buf = buf;
        if worked {
            self.worker_report(i);
        }
        self.flush(i);
    }

    fn transmit(&mut self, from: usize, target: &PeerTarget, kind: FrameKind, payload: Vec<u8>) {
        self.stats.sent += 1;
        if kind == FrameKind::Data {
            self.log_wire(from, false, &payload);
        } else if self.wire_log && self.controls.len() < WIRE_LOG_LIMIT {
            self.controls.push(WireFrame {
                from,
                native: false,
                payload: payload.clone(),
            });
        }
        // The carrier dials the target's addresses in order and only
        // accepts the GE it names (certificates).
        let Some((to, addr)) = target.addrs.iter().find_map(|a| {
            self.nodes
                .iter()
                .position(|n| n.ge == target.ge && n.underlay == *a)
                .map(|i| (i, *a))
        }) else {
            self.stats.undeliverable += 1;
            if !self.nodes.iter().any(|n| n.ge == target.ge) && self.stray.len() < WIRE_LOG_LIMIT {
                self.stray.push((target.ge, kind, payload));
            }
            return;
        };
        let delays = self.dice.hop(&self.link);
        if delays.is_empty() {
            self.stats.lost += 1;
        }
        self.stats.duplicated += delays.len().saturating_sub(1) as u64;
        let (from_ge, from_addr) = (self.nodes[from].ge, self.nodes[from].underlay);
        for d in delays {
            self.seq += 1;
            self.queue.insert(
                (self.now + d + self.carrier_delay, self.seq),
                Event::Frame {
                    to,
                    addr,
                    from_ge,
                    from: from_addr,
                    kind,
                    payload: payload.clone(),
                },
            );
        }
    }

    /// A credential from the simulation's CA (a year around the start),
    /// for a peer a test plays by hand.
    pub fn issue(&self, info: GeInfo, node_key: &NodeKey) -> Credential {
        let year = 365 * 24 * 3600;
        Credential::issue(
            &self.ca,
            u64::from(info.id.0),
            info,
            node_key.public(),
            START_UNIX - year,
            START_UNIX + year,
        )
        .expect("valid GE info")
    }

    /// The CA's public key.
    pub fn ca_public(&self) -> [u8; 32] {
        self.ca.public()
    }

    fn make_core(
        &mut self,
        id: u32,
        kind: GeKind,
        mode: Mode,
        groups: &[u32],
        prefixes: &[Prefix],
    ) -> NodeCore {
        let key = node_key(id);
        let overlay = overlay_of(id);
        let info = GeInfo {
            id: GeId(id),
            name: format!("n{id}"),
            kind,
            mode,
            groups: groups.iter().map(|g| GroupId(*g)).collect(),
            overlay,
        };
        let year = 365 * 24 * 3600;
        let cred = Credential::issue_with_prefixes(
            &self.ca,
            u64::from(id),
            info,
            prefixes.to_vec(),
            key.public(),
            START_UNIX - year,
            START_UNIX + year,
        )
        .expect("valid GE info");
        let overlay6 = cred.overlay6;
        let mut protected = vec![
            Prefix::host(IpAddr::V4(overlay)),
            Prefix::host(IpAddr::V6(overlay6)),
        ];
        protected.extend_from_slice(prefixes);
        let mut cfg = Config::new(key, cred, self.ca.public(), protected);
        cfg.fast_open = self.fast_open;
        cfg.fast_first = self.fast_first;
        let dprp = Endpoint::new(
            cfg,
            Entropy::Seeded(self.dice.bytes32()),
            START_UNIX,
            self.now,
        )
        .expect("a valid endpoint");
        let mut core = NodeCore::new(
            CoreConfig {
                overlay,
                mtu: MTU,
                overlay_net: (Ipv4Addr::new(100, 64, 0, 0), 10),
                path: self.path.clone(),
                unix_start: START_UNIX,
                max_gms_silence: Some(std::time::Duration::from_secs(3600)),
                vin_range: super::natf::DEFAULT_VIN_RANGE,
                net6: fpn_proto::overlay6::Overlay6::of_ca(&self.ca.public()),
            },
            dprp,
            Pit::new(self.pit),
        );
        core.set_real_prefixes(prefixes.to_vec());
        if self.workers {
            core.enable_installs(super::InstallKinds::ALL);
        }
        core
    }
}

/// What a worker did with an inbound packet: true when it took it (a
/// packet for the TUN goes into `tun`), false when the core must.
fn took_inbound(tun: &mut Vec<Vec<u8>>, out: WorkerOut<'_>) -> bool {
    match out {
        WorkerOut::Tun(p) => {
            tun.push(p.to_vec());
            true
        }
        WorkerOut::Core => false,
        WorkerOut::Native(_) | WorkerOut::Quic { .. } | WorkerOut::Dropped => true,
    }
}

/// Node `id`'s overlay address.
pub fn overlay_of(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, id as u8)
}

/// Version `v` of group `g`'s key, as every member gets it.
pub fn group_key(g: u32, v: u32) -> GroupKey {
    let mut k = [g as u8; 32];
    k[31] = v as u8;
    GroupKey::from_bytes(k)
}

/// An IPv4/UDP packet (checksum 0: PCCOM fills it in).
pub fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    super::udp_v4(src, dst, sport, dport, payload)
}

/// SplitMix64, as in fpn-proto's simulator: small, seeded network dice.
struct Dice(u64);

impl Dice {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }

    /// The delays at which one frame arrives (none if lost).
    fn hop(&mut self, link: &LinkConfig) -> Vec<Duration> {
        if self.chance(link.loss) {
            return Vec::new();
        }
        let copies = if self.chance(link.duplicate) { 2 } else { 1 };
        (0..copies)
            .map(|_| {
                let jitter = match link.jitter.as_nanos() as u64 {
                    0 => 0,
                    j => self.next_u64() % (j + 1),
                };
                let mut d = link.latency + Duration::from_nanos(jitter);
                if self.chance(link.reorder) {
                    d += link.latency * 2 + link.jitter;
                }
                d
            })
            .collect()
    }
}
