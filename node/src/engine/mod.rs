//! The packet engine: one task that owns the DPRP [`Endpoint`], the [`Pit`]
//! (with each flow's PCCOM cipher state) and the per-peer carrier choice.
//!
//! Inputs: packets read from the TUN (this host's traffic), frames from the
//! carrier (DPRP messages and packets from peers), commands from the daemon
//! (keys, revocations, directory updates, status) and two timers (DPRP's
//! next deadline, a one-second tick for PIT ageing). Outputs: packets
//! written into the TUN and frames given to the carrier.
//!
//! ```text
//! TUN -> Pit(Local) -> Forward: carrier Data to the flow's peer
//!                   -> Unknown: Endpoint::handle_packet (held, DDE sent)
//! carrier Control   -> Endpoint::handle_datagram
//! carrier Data      -> Pit(Remote) -> TUN
//! Endpoint events   -> Established: Pit insert; Release: held packets out;
//!                      Failed: ICMP unreachable into the TUN at once
//! ```
//!
//! DPRP addresses: a DDE goes to `flow.dst:7717`, an overlay address, which
//! the engine maps to the GE owning it (directory); answers go back to the
//! underlay address a message came from, which the engine maps to the GE
//! the carrier authenticated. So DPRP never needs to know about carriers.
//!
//! The hot path reuses two packet buffers and allocates nothing per packet;
//! only the first packet of a new flow is copied (DPRP holds it).

mod keys;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fpn_proto::dprp::{self, DropCause, Endpoint, FailReason, Verdict};
use fpn_proto::flow::FlowId;
use fpn_proto::ge::{GeId, GroupId};
use fpn_proto::keys::{GroupKey, KeyVersion};
use fpn_proto::packet::Packet;
use fpn_proto::pccom::TRAILER_LEN;
use fpn_proto::pit::{Disposition, NewEntry, Origin, Pit, PitEvent, RenegotiateReason};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, trace, warn};

use crate::carrier::{Carrier, CarrierKind, FrameKind, Inbound, PeerTarget};
use crate::directory::PeerRecord;
use crate::icmp::{self, Unreachable};
use crate::status::{FlowStatus, PeerStatus, action_name, proto_name};

pub use keys::KeyChange;

/// Packets handled per wake-up from one source before the others get a turn.
const BATCH: usize = 64;
/// Most DPRP messages waiting for a peer's directory answer, per address.
const PENDING_PER_PEER: usize = 8;
/// Most addresses with DPRP messages waiting for the directory.
const PENDING_PEERS: usize = 256;
/// Most flows whose first packet is kept to quote in an ICMP error.
const MAX_QUOTES: usize = 4096;
/// Most underlay addresses remembered as belonging to a GE.
const MAX_FROM: usize = 4096;
/// Most refused flows remembered for `status`.
const MAX_REFUSED: usize = 1024;
/// Most flows waiting to be renegotiated.
const MAX_RENEGOTIATE: usize = 65_536;
/// Pause before a flow is renegotiated after a key rotation (the other
/// end's GMS push may arrive a little later than ours).
const RENEGOTIATE_DELAY: Duration = Duration::from_millis(1500);
/// Pause before a failed renegotiation is tried again.
const RENEGOTIATE_RETRY: Duration = Duration::from_secs(5);
/// Least time between two negotiations started for packets of an unknown flow.
const HEAL_GAP: Duration = Duration::from_secs(2);
/// Most unknown flows remembered for that.
const MAX_HEALING: usize = 1024;
/// How long a refused flow stays in `status`.
const REFUSED_SHOWN: Duration = Duration::from_secs(60);

/// What the daemon tells the engine.
#[derive(Debug)]
pub enum Command {
    /// A group's valid keys, newest first (empty: the node left the group).
    Keys {
        /// The group.
        group: GroupId,
        /// Versions and keys, newest first.
        keys: Vec<(KeyVersion, GroupKey)>,
    },
    /// Credential serials of `ge` were revoked: its flows end now.
    Revoked {
        /// The GE.
        ge: GeId,
        /// The serials.
        serials: Vec<u64>,
    },
    /// The GE is gone from the directory (revoked or removed): refuse it.
    PeerGone(GeId),
    /// A peer's directory record (new or updated).
    Peer(PeerRecord),
    /// The engine's state for `status`.
    Snapshot(oneshot::Sender<Snapshot>),
    /// The action and carrier of a flow (for `ping`).
    FlowInfo(FlowId, oneshot::Sender<Option<(String, String)>>),
    /// Erase every key and stop forwarding (this node was revoked).
    EraseKeys,
}

/// The engine's part of `status`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Peers.
    pub peers: Vec<PeerStatus>,
    /// Flows.
    pub flows: Vec<FlowStatus>,
    /// Counters.
    pub counters: BTreeMap<String, u64>,
}

/// Fixed settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's overlay address.
    pub overlay: Ipv4Addr,
    /// TUN MTU (sizes the packet buffers).
    pub mtu: u16,
    /// The overlay range (destinations in it are asked of the directory).
    pub overlay_net: (Ipv4Addr, u8),
}

/// Engine counters (exported in `status`).
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    tun_in: u64,
    tun_out: u64,
    tun_write_drops: u64,
    tun_malformed: u64,
    data_out: u64,
    data_in: u64,
    data_in_no_flow: u64,
    data_in_wrong_peer: u64,
    data_in_rejected: u64,
    control_in: u64,
    control_out: u64,
    control_errors: u64,
    send_errors: u64,
    no_route: u64,
    held: u64,
    refused_flows: u64,
    icmp_sent: u64,
    policy_drops: u64,
    pending_drops: u64,
    dprp_errors: u64,
    revoked_flows: u64,
    too_big: u64,
    wrong_owner: u64,
}

/// Where the engine writes packets for this host: the TUN device. A trait
/// so the dispatch logic can be unit-tested without one.
pub trait TunWriter: Send + Sync {
    /// Writes one IP packet; never waits.
    fn write_packet(&self, packet: &[u8]) -> std::io::Result<usize>;
}

impl TunWriter for tun::AsyncDevice {
    fn write_packet(&self, packet: &[u8]) -> std::io::Result<usize> {
        // A direct write on the non-blocking descriptor: a TUN write hands
        // the packet to the kernel stack and does not wait. The async
        // wrapper is not used here: its cached write readiness would make
        // it refuse packets the kernel takes.
        std::ops::Deref::deref(self).send(packet)
    }
}

/// The per-peer choice of carrier. Only QUIC exists now; the native
/// carrier (a later issue) will add probing and switch `current` per peer.
#[derive(Debug, Clone, Copy)]
struct CarrierChoice {
    current: CarrierKind,
}

/// The engine state. Drive it with [`run`].
pub struct Engine {
    cfg: EngineConfig,
    dprp: Endpoint,
    pit: Pit,
    carrier: Arc<dyn Carrier>,
    tun: Arc<dyn TunWriter>,
    dir_requests: mpsc::Sender<Ipv4Addr>,
    peers: HashMap<Ipv4Addr, PeerRecord>,
    targets: HashMap<GeId, PeerTarget>,
    names: HashMap<GeId, String>,
    from: HashMap<SocketAddr, GeId>,
    choice: HashMap<GeId, CarrierChoice>,
    pending: HashMap<Ipv4Addr, Vec<Vec<u8>>>,
    quotes: HashMap<FlowId, Vec<u8>>,
    refused: HashMap<FlowId, (Option<GeId>, Instant)>,
    renegotiate: VecDeque<(Instant, FlowId)>,
    renegotiating: HashSet<FlowId>,
    healing: HashMap<FlowId, Instant>,
    reject_logged: Option<Instant>,
    versions: BTreeMap<GroupId, Vec<KeyVersion>>,
    net_buf: Vec<u8>,
    icmp_buf: Vec<u8>,
    counters: Counters,
    erased: bool,
    dprp_dirty: bool,
}

impl Engine {
    /// An engine around its machines and I/O handles. `dir_requests`
    /// receives overlay addresses whose owner the engine needs.
    pub fn new(
        cfg: EngineConfig,
        dprp: Endpoint,
        pit: Pit,
        carrier: Arc<dyn Carrier>,
        tun: Arc<dyn TunWriter>,
        dir_requests: mpsc::Sender<Ipv4Addr>,
    ) -> Self {
        let buf = usize::from(cfg.mtu) + TRAILER_LEN + 64;
        Self {
            cfg,
            dprp,
            pit,
            carrier,
            tun,
            dir_requests,
            peers: HashMap::new(),
            targets: HashMap::new(),
            names: HashMap::new(),
            from: HashMap::new(),
            choice: HashMap::new(),
            pending: HashMap::new(),
            quotes: HashMap::new(),
            refused: HashMap::new(),
            renegotiate: VecDeque::new(),
            renegotiating: HashSet::new(),
            healing: HashMap::new(),
            reject_logged: None,
            versions: BTreeMap::new(),
            net_buf: vec![0; buf.max(2048)],
            icmp_buf: vec![0; 256],
            counters: Counters::default(),
            erased: false,
            dprp_dirty: true,
        }
    }

    /// Size of a buffer that holds any TUN packet plus the PCCOM trailer.
    pub fn buffer_len(&self) -> usize {
        self.net_buf.len()
    }

    /// A packet this host sent into the TUN: `buf[..len]` holds it, the
    /// rest of `buf` is room for the trailer.
    pub fn handle_tun_packet(&mut self, buf: &mut [u8], len: usize, now: Instant) {
        self.counters.tun_in += 1;
        if self.erased {
            return;
        }
        let Ok(pkt) = Packet::parse(&buf[..len]) else {
            self.counters.tun_malformed += 1;
            return;
        };
        let flow = pkt.flow_id();
        if flow.src != IpAddr::V4(self.cfg.overlay) {
            // IPv6 router solicitations and other stray traffic of the
            // interface itself: nothing of ours.
            trace!(%flow, "TUN packet not from the overlay address");
            return;
        }
        match self.pit.handle_packet(&flow, Origin::Local, buf, len, now) {
            Ok(Disposition::Forward { len: n }) => {
                let peer = self.pit.lookup(&flow).and_then(|(_, e)| e.peer());
                match peer {
                    Some(ge) => self.send_frame(ge, FrameKind::Data, &buf[..n]),
                    None => self.counters.no_route += 1,
                }
            }
            Ok(Disposition::Unknown | Disposition::Hold) => {
                self.negotiate(flow, &buf[..len], now);
            }
            Ok(Disposition::Drop) => {
                self.counters.policy_drops += 1;
                self.write_unreachable(&buf[..len], Unreachable::Prohibited);
            }
            Err(e) => {
                self.counters.dprp_errors += 1;
                trace!(%flow, error = %e, "outbound packet refused");
            }
        }
        self.drain(now);
    }

    /// Frames from the carrier.
    pub fn handle_inbound(&mut self, frame: &Inbound, now: Instant) {
        match frame.kind {
            FrameKind::Control => {
                self.counters.control_in += 1;
                self.learn_from(frame.peer, frame.from);
                let _span = tracing::debug_span!("peer", ge = %frame.peer).entered();
                if let Err(e) = self.dprp.handle_datagram(frame.from, &frame.payload, now) {
                    self.counters.control_errors += 1;
                    debug!(error = %e, "DPRP message refused");
                }
                self.dprp_dirty = true;
                self.drain(now);
            }
            FrameKind::Data => self.handle_data(frame, now),
        }
    }

    fn handle_data(&mut self, frame: &Inbound, now: Instant) {
        self.counters.data_in += 1;
        if self.erased {
            return;
        }
        let len = frame.payload.len();
        let Some(dst) = self.net_buf.get_mut(..len) else {
            self.counters.data_in_rejected += 1;
            return;
        };
        dst.copy_from_slice(&frame.payload);
        let Ok(pkt) = Packet::parse(&self.net_buf[..len]) else {
            self.counters.data_in_rejected += 1;
            return;
        };
        let flow = pkt.flow_id();
        // A packet is only taken from the GE the flow was negotiated with:
        // another authenticated peer cannot inject into someone else's flow.
        match self.pit.lookup(&flow).map(|(_, e)| e.peer()) {
            None => {
                self.counters.data_in_no_flow += 1;
                self.heal(flow, frame.peer, now);
                self.drain(now);
                return;
            }
            Some(p) if p != Some(frame.peer) => {
                self.counters.data_in_wrong_peer += 1;
                return;
            }
            Some(_) => {}
        }
        let buf = &mut self.net_buf;
        match self.pit.handle_packet(&flow, Origin::Remote, buf, len, now) {
            Ok(Disposition::Forward { len: n }) => {
                Self::write_tun(&self.tun, &mut self.counters, &buf[..n]);
            }
            Ok(_) => self.counters.policy_drops += 1,
            Err(e) => {
                self.counters.data_in_rejected += 1;
                // At most one line a second: a flood must not flood the log.
                if self
                    .reject_logged
                    .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
                {
                    self.reject_logged = Some(now);
                    debug!(%flow, peer = %frame.peer, error = %e, rejected = self.counters.data_in_rejected, "inbound packet refused");
                }
            }
        }
        self.drain_pit(now);
    }

    /// DPRP's timer fired (or the tick): retransmissions, deadlines, ageing.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.dprp.handle_timeout(now);
        self.dprp_dirty = true;
        self.drain(now);
    }

    /// The once-a-second housekeeping: PIT ageing and table bounds.
    pub fn handle_tick(&mut self, now: Instant) {
        for flow in self.pit.expire(now) {
            debug!(%flow, "flow aged out");
        }
        if self.from.len() > MAX_FROM {
            self.from.clear();
        }
        self.refused
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < REFUSED_SHOWN);
        self.healing
            .retain(|_, t| now.saturating_duration_since(*t) < HEAL_GAP);
        self.due_renegotiations(now);
        self.drain(now);
    }

    /// When DPRP wants [`Engine::handle_timeout`] next (recomputed only
    /// after DPRP was touched).
    pub fn next_timeout(&mut self) -> Option<Option<Instant>> {
        if !self.dprp_dirty {
            return None;
        }
        self.dprp_dirty = false;
        Some(self.dprp.poll_timeout().map(|(t, _)| t))
    }

    /// A command from the daemon.
    pub fn handle_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Keys { group, keys } => self.set_keys(group, keys),
            Command::Revoked { ge, serials } => {
                for s in &serials {
                    self.dprp.revoke_serial(*s);
                }
                let n = self.drop_flows_of(ge);
                info!(%ge, flows = n, "peer credential revoked: its flows are dropped");
            }
            Command::PeerGone(ge) => {
                self.dprp.revoke_ge(ge);
                let n = self.drop_flows_of(ge);
                self.targets.remove(&ge);
                self.peers.retain(|_, r| r.ge() != ge);
                info!(%ge, flows = n, "peer left the directory: refused from now on");
            }
            Command::Peer(rec) => self.set_peer(rec),
            Command::Snapshot(tx) => {
                let _ = tx.send(self.snapshot());
            }
            Command::FlowInfo(flow, tx) => {
                if self.refused.contains_key(&flow) {
                    let _ = tx.send(Some(("refuse".into(), String::new())));
                    return;
                }
                let info = self.pit.lookup(&flow).map(|(_, e)| {
                    let carrier = e
                        .peer()
                        .map(|p| self.carrier_name(p).to_owned())
                        .unwrap_or_default();
                    (action_name(e.action()).to_owned(), carrier)
                });
                let _ = tx.send(info);
            }
            Command::EraseKeys => {
                let groups: Vec<GroupId> = self.versions.keys().copied().collect();
                for g in groups {
                    self.set_keys(g, Vec::new());
                }
                let flows: Vec<FlowId> = self.pit.iter().map(|(f, _)| *f).collect();
                for f in flows {
                    self.pit.remove(&f);
                }
                self.erased = true;
            }
        }
        self.dprp_dirty = true;
        self.drain(now);
    }

    fn set_keys(&mut self, group: GroupId, keys: Vec<(KeyVersion, GroupKey)>) {
        let old = self.versions.remove(&group).unwrap_or_default();
        let new: Vec<KeyVersion> = keys.iter().map(|(v, _)| *v).collect();
        let change = KeyChange::between(&old, &new);
        if new.is_empty() {
            self.dprp.remove_group(group);
        } else {
            for (v, k) in keys.into_iter().rev() {
                self.dprp.set_group_key(group, v, k);
            }
            if new.len() == 1 {
                self.dprp.retire_previous_key(group);
            }
            self.versions.insert(group, new.clone());
        }
        if let Some(v) = change.rotated_to {
            let n = self.pit.on_key_rotation(group, v);
            info!(%group, version = v.0, flows = n, "group key rotated: renegotiating its flows");
        }
        if let Some(v) = change.erased_up_to {
            let gone = self.pit.on_key_erased(group, v);
            debug!(%group, version = v.0, flows = gone.len(), "group key versions erased");
        }
        debug!(%group, versions = ?new.iter().map(|v| v.0).collect::<Vec<_>>(), "group keys");
    }

    fn set_peer(&mut self, rec: PeerRecord) {
        let ge = rec.ge();
        self.names.insert(ge, rec.name.clone());
        if !rec.addrs.is_empty() {
            self.targets.insert(
                ge,
                PeerTarget {
                    ge,
                    addrs: rec.addrs.clone(),
                },
            );
        }
        let overlay = rec.overlay;
        self.peers.retain(|ip, r| *ip == overlay || r.ge != rec.ge);
        self.peers.insert(overlay, rec);
        let entries: Vec<(dprp::Prefix, GeId)> = self
            .peers
            .values()
            .map(|r| (dprp::Prefix::host(IpAddr::V4(r.overlay)), r.ge()))
            .collect();
        self.dprp.set_directory(entries);
        if let Some(waiting) = self.pending.remove(&overlay) {
            for msg in waiting {
                self.send_frame(ge, FrameKind::Control, &msg);
            }
        }
    }

    fn drop_flows_of(&mut self, ge: GeId) -> usize {
        let flows: Vec<FlowId> = self
            .pit
            .iter()
            .filter(|(_, e)| e.peer() == Some(ge))
            .map(|(f, _)| *f)
            .collect();
        for f in &flows {
            self.pit.remove(f);
        }
        self.counters.revoked_flows += flows.len() as u64;
        flows.len()
    }

    fn learn_from(&mut self, ge: GeId, from: SocketAddr) {
        self.from.insert(from, ge);
        self.targets.entry(ge).or_insert_with(|| PeerTarget {
            ge,
            addrs: vec![from],
        });
    }

    fn negotiate(&mut self, flow: FlowId, packet: &[u8], now: Instant) {
        let _span = tracing::debug_span!("flow", %flow).entered();
        self.dprp_dirty = true;
        match self.dprp.handle_packet(flow, packet.to_vec(), now) {
            Ok(Verdict::Held) => {
                self.counters.held += 1;
                if self.quotes.len() < MAX_QUOTES {
                    self.quotes
                        .entry(flow)
                        .or_insert_with(|| packet[..packet.len().min(icmp::QUOTE_LEN)].to_vec());
                }
            }
            Ok(Verdict::Dropped(DropCause::Negative(reason))) => {
                self.write_unreachable(packet, unreachable_for(&reason));
            }
            Ok(Verdict::Dropped(cause)) => {
                self.counters.policy_drops += 1;
                trace!(?cause, "packet dropped by DPRP");
            }
            Ok(Verdict::Local) => {}
            Err(e) => {
                self.counters.dprp_errors += 1;
                debug!(error = %e, "cannot negotiate");
            }
        }
    }

    /// Drains DPRP's and the PIT's outputs.
    fn drain(&mut self, now: Instant) {
        // Bounded: each round only handles what the previous one produced.
        for _ in 0..16 {
            let mut progress = false;
            while let Some(t) = self.dprp.poll_transmit() {
                progress = true;
                self.route_transmit(t);
            }
            while let Some(ev) = self.dprp.poll_event() {
                progress = true;
                self.on_dprp_event(ev, now);
            }
            progress |= self.drain_pit(now);
            if !progress {
                break;
            }
        }
    }

    fn drain_pit(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(PitEvent::Renegotiate { flow, reason }) = self.pit.poll_event() {
            any = true;
            let own = IpAddr::V4(self.cfg.overlay);
            // One end renegotiates, never both: two crossing negotiations
            // could leave each end with the other's keys. After a rotation it
            // is the end that started the flow, a moment later, so the
            // other end has received the new key version too.
            match reason {
                RenegotiateReason::KeyRotation if flow.src != own => {
                    debug!(%flow, "key rotated: the flow's initiator renegotiates");
                }
                RenegotiateReason::KeyRotation => {
                    let at = now + RENEGOTIATE_DELAY;
                    if self.renegotiate.len() < MAX_RENEGOTIATE {
                        self.renegotiate.push_back((at, flow));
                    }
                }
                RenegotiateReason::PacketLimit => self.start_renegotiation(flow, now),
            }
        }
        any
    }

    fn start_renegotiation(&mut self, flow: FlowId, now: Instant) {
        let own = IpAddr::V4(self.cfg.overlay);
        let oriented = if flow.src == own {
            flow
        } else {
            flow.reversed()
        };
        if self.pit.lookup(&flow).is_none() {
            return;
        }
        debug!(%flow, "renegotiating");
        self.renegotiating.insert(oriented);
        if let Err(e) = self.dprp.initiate(oriented, Vec::new(), now) {
            self.renegotiating.remove(&oriented);
            debug!(%flow, error = %e, "renegotiation not started");
        }
        self.dprp_dirty = true;
    }

    /// A peer sends packets of a flow this node has no entry for (this
    /// node restarted, or aged the flow out while the peer kept it): start
    /// a negotiation for it from this side, which replaces the peer's stale
    /// entry. Only for flows to this node from the address the sending GE
    /// owns, and at most once per [`HEAL_GAP`] per flow.
    fn heal(&mut self, flow: FlowId, from: GeId, now: Instant) {
        let own = IpAddr::V4(self.cfg.overlay);
        let IpAddr::V4(src) = flow.src else { return };
        if flow.dst != own || self.peers.get(&src).is_none_or(|r| r.ge() != from) {
            return;
        }
        let oriented = flow.reversed();
        if self
            .healing
            .get(&oriented)
            .is_some_and(|t| now.saturating_duration_since(*t) < HEAL_GAP)
        {
            return;
        }
        if self.healing.len() >= MAX_HEALING {
            self.healing
                .retain(|_, t| now.saturating_duration_since(*t) < HEAL_GAP);
            if self.healing.len() >= MAX_HEALING {
                return;
            }
        }
        self.healing.insert(oriented, now);
        debug!(%flow, peer = %from, "packets for an unknown flow: negotiating it again");
        if let Err(e) = self.dprp.initiate(oriented, Vec::new(), now) {
            debug!(%flow, error = %e, "no negotiation for the unknown flow");
        }
        self.dprp_dirty = true;
    }

    fn due_renegotiations(&mut self, now: Instant) {
        while self.renegotiate.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, flow)) = self.renegotiate.pop_front() {
                self.start_renegotiation(flow, now);
            }
        }
    }

    fn on_dprp_event(&mut self, ev: dprp::Event, now: Instant) {
        match ev {
            dprp::Event::Established(e) => {
                let _span = tracing::debug_span!("flow", flow = %e.flow).entered();
                self.quotes.remove(&e.flow);
                self.refused.remove(&e.flow);
                self.renegotiating.remove(&e.flow);
                let action = e.action;
                // DPRP proves who the peer is, not that it owns the flow's
                // remote address: check that against the directory, so one
                // member cannot negotiate flows in another member's name.
                let own = IpAddr::V4(self.cfg.overlay);
                let remote = if e.flow.src == own {
                    e.flow.dst
                } else {
                    e.flow.src
                };
                if let IpAddr::V4(r) = remote {
                    match self.peers.get(&r) {
                        Some(owner) if owner.ge() != e.peer => {
                            warn!(peer = %e.peer, owner = owner.ge, "a peer negotiated a flow for an address it does not own; refused");
                            self.counters.wrong_owner += 1;
                            return;
                        }
                        Some(_) => {}
                        None => {
                            let _ = self.dir_requests.try_send(r);
                        }
                    }
                }
                let entry = NewEntry::from_parts(e.action, e.peer, e.key_version, e.keys);
                match entry.and_then(|n| self.pit.insert(e.flow, n, now)) {
                    Ok(()) => {
                        self.choice.entry(e.peer).or_insert(CarrierChoice {
                            current: self.carrier.kind(),
                        });
                        debug!(peer = %e.peer, action = action_name(action), position = ?e.position, "flow established");
                    }
                    Err(err) => warn!(error = %err, "cannot install the flow"),
                }
            }
            dprp::Event::Release { flow, packets } => {
                let room = self.net_buf.len();
                for p in packets {
                    if p.len() + TRAILER_LEN > room {
                        continue;
                    }
                    let mut buf = std::mem::take(&mut self.net_buf);
                    buf[..p.len()].copy_from_slice(&p);
                    match self
                        .pit
                        .handle_packet(&flow, Origin::Local, &mut buf, p.len(), now)
                    {
                        Ok(Disposition::Forward { len }) => {
                            if let Some(ge) = self.pit.lookup(&flow).and_then(|(_, e)| e.peer()) {
                                self.send_frame(ge, FrameKind::Data, &buf[..len]);
                            }
                        }
                        Ok(Disposition::Drop) => {
                            self.write_unreachable(&p, Unreachable::Prohibited);
                        }
                        _ => self.counters.policy_drops += 1,
                    }
                    self.net_buf = buf;
                }
            }
            dprp::Event::Failed {
                flow,
                reason,
                dropped_packets,
            } => {
                if self.healing.contains_key(&flow) && self.pit.lookup(&flow).is_none() {
                    debug!(%flow, %reason, "re-negotiating an unknown flow failed");
                    return;
                }
                if self.renegotiating.remove(&flow) && self.pit.lookup(&flow).is_some() {
                    // The flow keeps its current entry (its key version is
                    // still valid); try again later.
                    info!(%flow, %reason, "renegotiation failed; the flow keeps its keys for now");
                    if self.renegotiate.len() < MAX_RENEGOTIATE {
                        self.renegotiate.push_back((now + RENEGOTIATE_RETRY, flow));
                    }
                    return;
                }
                self.counters.refused_flows += 1;
                info!(%flow, %reason, dropped_packets, "flow refused");
                if self.refused.len() < MAX_REFUSED {
                    let by = match &reason {
                        FailReason::Dropped { by } | FailReason::Refused { by, .. } => Some(*by),
                        _ => None,
                    };
                    self.refused.insert(flow, (by, now));
                }
                if let Some(q) = self.quotes.remove(&flow) {
                    self.write_unreachable(&q, unreachable_for(&reason));
                }
            }
        }
    }

    fn route_transmit(&mut self, t: dprp::Transmit) {
        self.counters.control_out += 1;
        // Answers go back to whoever sent the message (a GE the carrier authenticated).
        if let Some(ge) = self.from.get(&t.dst).copied() {
            self.send_frame(ge, FrameKind::Control, &t.payload);
            return;
        }
        let IpAddr::V4(ip) = t.dst.ip() else {
            self.counters.no_route += 1;
            return;
        };
        if let Some(rec) = self.peers.get(&ip) {
            let ge = rec.ge();
            if self.targets.contains_key(&ge) {
                self.send_frame(ge, FrameKind::Control, &t.payload);
                return;
            }
        }
        if !in_net(ip, self.cfg.overlay_net) {
            self.counters.no_route += 1;
            return;
        }
        // Unknown owner or no address yet: ask the directory, keep the
        // message for its answer (DPRP retransmits anyway).
        if self.pending.len() >= PENDING_PEERS && !self.pending.contains_key(&ip) {
            self.counters.pending_drops += 1;
            return;
        }
        let q = self.pending.entry(ip).or_default();
        if q.len() < PENDING_PER_PEER {
            q.push(t.payload);
        } else {
            self.counters.pending_drops += 1;
        }
        let _ = self.dir_requests.try_send(ip);
    }

    fn send_frame(&mut self, ge: GeId, kind: FrameKind, payload: &[u8]) {
        let Some(target) = self.targets.get(&ge) else {
            self.counters.no_route += 1;
            return;
        };
        match self.carrier.send(target, kind, payload) {
            Ok(()) => {
                if kind == FrameKind::Data {
                    self.counters.data_out += 1;
                }
            }
            Err(crate::error::Error::CarrierTooLarge { max, .. }) if kind == FrameKind::Data => {
                // Path-MTU feedback to the sender (TCP lowers its segment
                // size); the header quoted is the plain one, PCCOM leaves it.
                self.counters.too_big += 1;
                let mtu = max
                    .saturating_sub(TRAILER_LEN)
                    .clamp(576, usize::from(u16::MAX)) as u16;
                if let Some(n) =
                    icmp::unreachable(payload, Unreachable::TooBig(mtu), &mut self.icmp_buf)
                {
                    self.counters.icmp_sent += 1;
                    Self::write_tun(&self.tun, &mut self.counters, &self.icmp_buf[..n]);
                }
            }
            Err(e) => {
                self.counters.send_errors += 1;
                trace!(%ge, error = %e, "carrier send");
            }
        }
    }

    fn write_unreachable(&mut self, packet: &[u8], why: Unreachable) {
        if let Some(n) = icmp::unreachable(packet, why, &mut self.icmp_buf) {
            self.counters.icmp_sent += 1;
            Self::write_tun(&self.tun, &mut self.counters, &self.icmp_buf[..n]);
        }
    }

    fn write_tun(tun: &Arc<dyn TunWriter>, counters: &mut Counters, packet: &[u8]) {
        // Should the kernel ever refuse (EAGAIN), the packet is dropped
        // (counted) rather than stalling every flow.
        match tun.write_packet(packet) {
            Ok(_) => counters.tun_out += 1,
            Err(e) => {
                counters.tun_write_drops += 1;
                trace!(error = %e, "TUN write");
            }
        }
    }

    fn carrier_name(&self, ge: GeId) -> &'static str {
        match self
            .choice
            .get(&ge)
            .map_or(self.carrier.kind(), |c| c.current)
        {
            CarrierKind::Quic => "quic",
            CarrierKind::Native => "native",
        }
    }

    fn snapshot(&self) -> Snapshot {
        let stats = self.carrier.peers();
        let mut ges: Vec<GeId> = self
            .targets
            .keys()
            .chain(self.choice.keys())
            .copied()
            .collect();
        ges.sort();
        ges.dedup();
        let peers = ges
            .into_iter()
            .map(|ge| {
                let st = stats.iter().find(|s| s.ge == ge);
                let overlay = self
                    .peers
                    .values()
                    .find(|r| r.ge() == ge)
                    .map(|r| r.overlay);
                PeerStatus {
                    name: self.names.get(&ge).cloned().unwrap_or_default(),
                    ge: ge.0,
                    overlay: overlay.map(|o| o.to_string()),
                    carrier: self.carrier_name(ge).into(),
                    addr: st
                        .and_then(|s| s.addr)
                        .or_else(|| self.targets.get(&ge).and_then(|t| t.addrs.first().copied()))
                        .map(|a| a.to_string()),
                    rtt_ms: st.and_then(|s| s.rtt).map(|d| d.as_secs_f64() * 1e3),
                }
            })
            .collect();
        let mut flows: Vec<FlowStatus> = self
            .pit
            .iter()
            .map(|(f, e)| {
                let s = e.stats();
                // Counters are kept per origin: local = sent to the peer.
                FlowStatus {
                    proto: proto_name(f.protocol),
                    src: f.src.to_string(),
                    dst: f.dst.to_string(),
                    sport: f.src_port,
                    dport: f.dst_port,
                    action: action_name(e.action()).into(),
                    carrier: e
                        .peer()
                        .map(|p| self.carrier_name(p).to_owned())
                        .unwrap_or_default(),
                    peer: e.peer().map(|p| p.0),
                    key_version: e.key_version().map(|v| v.0),
                    packets_out: s.packets_local,
                    packets_in: s.packets_remote,
                    bytes_out: s.bytes_local,
                    bytes_in: s.bytes_remote,
                }
            })
            .collect();
        flows.extend(self.refused.iter().map(|(f, (by, _))| FlowStatus {
            proto: proto_name(f.protocol),
            src: f.src.to_string(),
            dst: f.dst.to_string(),
            sport: f.src_port,
            dport: f.dst_port,
            action: "refuse".into(),
            carrier: String::new(),
            peer: by.map(|g| g.0),
            ..FlowStatus::default()
        }));
        flows.sort_by(|a, b| {
            (&a.src, &a.dst, a.sport, a.dport).cmp(&(&b.src, &b.dst, b.sport, b.dport))
        });
        let c = self.counters;
        let d = self.dprp.stats();
        let mut counters = BTreeMap::new();
        for (k, v) in [
            ("tun_in", c.tun_in),
            ("tun_out", c.tun_out),
            ("tun_write_drops", c.tun_write_drops),
            ("tun_malformed", c.tun_malformed),
            ("data_out", c.data_out),
            ("data_in", c.data_in),
            ("data_in_no_flow", c.data_in_no_flow),
            ("data_in_wrong_peer", c.data_in_wrong_peer),
            ("data_in_rejected", c.data_in_rejected),
            ("control_in", c.control_in),
            ("control_out", c.control_out),
            ("control_errors", c.control_errors),
            ("send_errors", c.send_errors),
            ("no_route", c.no_route),
            ("held", c.held),
            ("refused_flows", c.refused_flows),
            ("icmp_sent", c.icmp_sent),
            ("policy_drops", c.policy_drops),
            ("pending_drops", c.pending_drops),
            ("dprp_errors", c.dprp_errors),
            ("revoked_flows", c.revoked_flows),
            ("too_big", c.too_big),
            ("wrong_owner", c.wrong_owner),
            ("dprp_started", d.started),
            ("dprp_established", d.established),
            ("dprp_failed", d.failed),
            ("dprp_negative_drops", d.negative_drops),
            ("dprp_hold_overflow", d.hold_overflow),
            ("pit_entries", self.pit.len() as u64),
            ("negotiations", self.dprp.negotiations() as u64),
        ] {
            counters.insert(k.to_owned(), v);
        }
        Snapshot {
            peers,
            flows,
            counters,
        }
    }
}

fn unreachable_for(reason: &FailReason) -> Unreachable {
    match reason {
        FailReason::Timeout => Unreachable::NoAnswer,
        _ => Unreachable::Prohibited,
    }
}

fn in_net(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Runs the engine until `commands` closes. Reads the TUN and the carrier
/// in batches, wakes DPRP at its deadline and ages the PIT every second.
pub async fn run(
    mut engine: Engine,
    tun: Arc<tun::AsyncDevice>,
    mut commands: mpsc::Receiver<Command>,
    mut inbound: mpsc::Receiver<Inbound>,
) {
    let mut buf = vec![0u8; engine.buffer_len()];
    let mut frames: Vec<Inbound> = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    let mut inbound_open = true;
    let mut tun_ok = true;
    loop {
        if let Some(next) = engine.next_timeout() {
            let at = next.map_or_else(far, tokio::time::Instant::from_std);
            sleep.as_mut().reset(at);
        }
        enum Wake {
            Cmd(Option<Command>),
            Tun(std::io::Result<usize>),
            Frames(usize),
            Timer,
            Tick,
        }
        let wake = tokio::select! {
            c = commands.recv() => Wake::Cmd(c),
            r = tun.recv(&mut buf), if tun_ok => Wake::Tun(r),
            n = inbound.recv_many(&mut frames, BATCH), if inbound_open => Wake::Frames(n),
            () = &mut sleep => Wake::Timer,
            _ = tick.tick() => Wake::Tick,
        };
        let now = Instant::now();
        match wake {
            Wake::Cmd(None) => break,
            Wake::Cmd(Some(c)) => engine.handle_command(c, now),
            Wake::Tun(Ok(n)) => {
                engine.handle_tun_packet(&mut buf, n, now);
                // Drain what is already queued, without waiting.
                for _ in 1..BATCH {
                    match tun.recv(&mut buf).now_or_never() {
                        Some(Ok(n)) => engine.handle_tun_packet(&mut buf, n, now),
                        _ => break,
                    }
                }
            }
            Wake::Tun(Err(e)) => {
                warn!(error = %e, "TUN read failed; no more local packets");
                tun_ok = false;
            }
            Wake::Frames(0) => inbound_open = false,
            Wake::Frames(_) => {
                for f in frames.drain(..) {
                    engine.handle_inbound(&f, now);
                }
            }
            Wake::Timer => {
                engine.handle_timeout(now);
                sleep.as_mut().reset(far());
                engine.dprp_dirty = true;
            }
            Wake::Tick => {
                engine.handle_tick(now);
                engine.handle_timeout(now);
            }
        }
    }
}

#[cfg(test)]
mod dispatch_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_membership() {
        let net = (Ipv4Addr::new(100, 64, 0, 0), 10);
        assert!(in_net(Ipv4Addr::new(100, 127, 1, 1), net));
        assert!(!in_net(Ipv4Addr::new(100, 128, 0, 1), net));
        assert!(in_net(
            Ipv4Addr::new(1, 2, 3, 4),
            (Ipv4Addr::UNSPECIFIED, 0)
        ));
    }

    #[test]
    fn timeouts_answer_host_unreachable_and_policy_answers_prohibited() {
        assert_eq!(unreachable_for(&FailReason::Timeout), Unreachable::NoAnswer);
        assert_eq!(
            unreachable_for(&FailReason::Dropped { by: GeId(3) }),
            Unreachable::Prohibited
        );
    }
}
