//! The node core: a sans-IO state machine that owns the DPRP [`Endpoint`],
//! the [`Pit`] (with each flow's PCCOM cipher state), the one
//! [`PeerTable`] and the flow tables around the PIT.
//!
//! Inputs, each with `now` last: [`NodeCore::handle_tun_packet`] (a packet
//! this host sent), [`NodeCore::handle_carrier_frame`] (a frame from a peer),
//! [`NodeCore::handle_command`] (keys, revocations, directory records),
//! [`NodeCore::handle_send_error`] (the carrier could not send a frame) and
//! [`NodeCore::handle_timeout`]. The data path comes back at once as a
//! [`DataOut`] borrowing the caller's buffer; everything else is queued as
//! [`Output`] values: after each input, drain [`NodeCore::poll_output`] and
//! sleep until [`NodeCore::poll_timeout`]. `status` and `ping` are pure
//! queries ([`NodeCore::snapshot`], [`NodeCore::flow_info`]).
//!
//! ```text
//! TUN -> Pit(Local) -> Forward: DataOut::Send to the flow's peer
//!                   -> Unknown: Endpoint::handle_packet (held, DDE sent)
//! carrier Control   -> Endpoint::handle_datagram
//! carrier Data      -> Pit(Remote) -> DataOut::Tun
//! Endpoint events   -> Established: Pit insert if the peer owns the address;
//!                      Release: Output::Send; Failed: ICMP as Output::Tun
//! ```
//!
//! DPRP addresses: a DDE goes to `flow.dst:7717`, an overlay address, which
//! the core maps to the GE owning it (peer table); answers go back to the
//! underlay address a message came from, which the core maps to the GE
//! the carrier authenticated. So DPRP never needs to know about carriers.
//!
//! What the core never does: read a clock, touch a socket, the TUN, a
//! channel or a task, or allocate on the data path of an established flow
//! (only the first packet of a new flow is copied: DPRP holds it).

mod explain;
mod flows;
mod install_table;
mod installs;
mod keys;
mod moves;
pub mod natf;
mod negotiation;
mod output;
mod parked;
mod paths;
mod peers;
mod real;
mod silence;
pub mod sim;
mod snapshot;
mod steering;
mod timers;
mod transit;
mod vin6;
pub mod worker;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod worker_tests;

#[cfg(test)]
mod ipv6_tests;
#[cfg(test)]
mod moves_tests;
#[cfg(test)]
mod nat_tests;
#[cfg(test)]
mod natf_tests;
#[cfg(test)]
mod native_tests;
#[cfg(test)]
mod real_tests;
#[cfg(test)]
mod transit_tests;

#[cfg(test)]
mod evict_tests;
#[cfg(test)]
mod explain_tests;
#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod flood_tests;
#[cfg(test)]
mod silence_tests;
#[cfg(test)]
mod vin6_tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use fpn_proto::overlay6::Overlay6;
use std::time::{Duration, Instant};

use fpn_proto::dprp::Endpoint;
use fpn_proto::flow::FlowId;
use fpn_proto::ge::{GeId, GroupId};
use fpn_proto::keys::{GroupKey, KeyVersion};
use fpn_proto::packet::Packet;
use fpn_proto::path::PathConfig;
use fpn_proto::pccom::TRAILER_LEN;
use fpn_proto::pit::{Disposition, Origin, Pit};
use fpn_proto::xlat::XlatTable;
use tracing::{debug, info, trace, warn};

use crate::carrier::{CarrierKind, FrameKind};
use crate::icmp::Unreachable;

use flows::Flows;
use snapshot::Counters;
use timers::{AGE_SLICE, Timers};

pub use installs::{
    Install, InstallAction, InstallKey, InstallKinds, PeerActivity, WorkerCounters, WorkerReport,
};
pub use keys::KeyChange;
pub use negotiation::in_net;
pub use output::{Command, DataOut, Output, SendError};
pub use paths::{Families, PROBE_PORT, udp_packet, udp_v4, udp_v6};
pub use peers::{OwnerChange, PathState, Peer, PeerTable};
pub use snapshot::Snapshot;
pub use steering::NATIVE_READY_TIMEOUT;
pub use timers::Timer;

/// Most DPRP messages waiting for a peer's directory answer, per address.
const PENDING_PER_PEER: usize = 8;
/// Most addresses with DPRP messages waiting for the directory.
const PENDING_PEERS: usize = 256;
/// Most outputs queued; beyond it new ones are dropped (counted), so a
/// driver that stops draining cannot make the core grow without bound.
const MAX_OUTPUTS: usize = 16_384;
/// DPRP's deadline is recomputed at most this often (it scans every
/// negotiation); DPRP timers are retransmissions of hundreds of
/// milliseconds and more, so running one this much late changes nothing.
const DPRP_REFRESH: Duration = Duration::from_millis(10);

/// Fixed settings of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's overlay address.
    pub overlay: Ipv4Addr,
    /// TUN MTU (sizes the packet buffers).
    pub mtu: u16,
    /// The overlay range (destinations in it are asked of the directory).
    pub overlay_net: (Ipv4Addr, u8),
    /// Path selection settings of every peer (`carrier` in the config is
    /// its `force`).
    pub path: PathConfig,
    /// Wall-clock seconds at the first input (starts the path machines'
    /// probe sequence numbers, so a restarted node's probes are fresh).
    pub unix_start: u64,
    /// How long the GMS may be away before credentials older than its loss
    /// are refused (`max_gms_silence_secs`); `None`: never.
    pub max_gms_silence: Option<Duration>,
    /// Where the VINs of hosts behind gateways come from (routed into the
    /// TUN): [`natf::DEFAULT_VIN_RANGE`] unless configured.
    pub vin_range: (Ipv4Addr, u8),
    /// The network's IPv6 overlay prefix (from the CA key, design note 59):
    /// this node's IPv6 overlay address and every peer's are in it.
    pub net6: Overlay6,
}

impl CoreConfig {
    /// This node's IPv6 overlay address.
    pub fn overlay6(&self) -> Ipv6Addr {
        self.net6.address(self.overlay)
    }
}

/// The node's packet and flow state machine. See the module docs.
pub struct NodeCore {
    cfg: CoreConfig,
    dprp: Endpoint,
    pit: Pit,
    peers: PeerTable,
    flows: Flows,
    timers: Timers,
    pending: HashMap<Ipv4Addr, Vec<Vec<u8>>>,
    outputs: VecDeque<Output>,
    peers_changed: bool,
    versions: BTreeMap<GroupId, Vec<KeyVersion>>,
    /// Overlay addresses of GEs that left the directory (for `why`; bounded).
    gone: BTreeMap<Ipv4Addr, GeId>,
    scratch: Vec<u8>,
    icmp_buf: Vec<u8>,
    counters: Counters,
    erased: bool,
    dprp_touched: bool,
    /// Held data packets were queued as outputs since the driver last
    /// asked ([`NodeCore::take_released`]).
    released: bool,
    dprp_deadline: Option<Instant>,
    /// When DPRP's deadline was last recomputed (see [`DPRP_REFRESH`]).
    dprp_refreshed: Option<Instant>,
    reject_logged: Option<Instant>,
    /// When a flow the full PIT had no room for was last logged (at most
    /// once a second).
    full_logged: Option<Instant>,
    xlat: XlatTable,
    paths: paths::Paths,
    steering: steering::Steering,
    epoch: Option<Instant>,
    silence: silence::GmsSilence,
    natf: natf::Natf,
    /// Prefixes besides the overlay address this node speaks for (its
    /// credential's): the real-address plane (real.rs).
    real: Vec<fpn_proto::dprp::Prefix>,
    /// Flows negotiated through this gateway (transit.rs).
    transit: transit::Transit,
    /// This node's recent moves (moves.rs).
    moves: moves::Moves,
    /// Flows to VINs that are IPv6 at the TUN (vin6.rs).
    vin6: vin6::Vin6,
    /// Packets waiting for their flow's FOP (parked.rs).
    parked: parked::Parked,
    /// What data-path workers may repeat (installs.rs).
    installs: installs::Installs,
}

/// [`NodeCore::buffer_len`] of a core for TUN MTU `mtu`, before there is
/// one (the TUN workers size their arenas with it).
pub fn buffer_len_for(mtu: u16) -> usize {
    (usize::from(mtu) + TRAILER_LEN + 64).max(2048)
}

/// Most native translations for a PIT of `max_flows` entries. One per
/// flow, and room beyond: a full PIT evicts for each new flow, and the
/// evicted flow's translation goes when the round's PIT events are drained
/// (after its DPRP events, `drain_pit`), while the new flow's translation
/// is made during them. A bound equal to the PIT's refused the new one
/// (TableFull) at every eviction, and its peer, which made its own, sent
/// answers this end dropped: a lost flow per eviction in a storm.
fn translation_bound(max_flows: usize) -> usize {
    max_flows.saturating_mul(2)
}

impl NodeCore {
    /// A core around its DPRP endpoint and PIT.
    pub fn new(cfg: CoreConfig, dprp: Endpoint, pit: Pit) -> Self {
        let cfg_vin_range = cfg.vin_range;
        let buf = buffer_len_for(cfg.mtu);
        let translations = translation_bound(pit.config().max_entries);
        let mut core = Self {
            cfg,
            dprp,
            pit,
            peers: PeerTable::default(),
            flows: Flows::default(),
            timers: Timers::default(),
            pending: HashMap::new(),
            outputs: VecDeque::with_capacity(64),
            peers_changed: false,
            versions: BTreeMap::new(),
            gone: BTreeMap::new(),
            scratch: vec![0; buf],
            icmp_buf: vec![0; 256],
            counters: Counters::default(),
            erased: false,
            dprp_touched: true,
            released: false,
            dprp_deadline: None,
            dprp_refreshed: None,
            reject_logged: None,
            full_logged: None,
            xlat: XlatTable::new(translations),
            paths: paths::Paths::default(),
            steering: steering::Steering::default(),
            epoch: None,
            silence: silence::GmsSilence::default(),
            natf: natf::Natf::new(cfg_vin_range),
            real: Vec::new(),
            transit: transit::Transit::default(),
            moves: moves::Moves::default(),
            vin6: vin6::Vin6::default(),
            parked: parked::Parked::default(),
            installs: installs::Installs::default(),
        };
        core.refresh_dprp_deadline(None);
        core
    }

    /// Size of a buffer that holds any TUN packet plus the PCCOM trailer:
    /// give the hot-path inputs buffers at least this long.
    pub fn buffer_len(&self) -> usize {
        self.scratch.len()
    }

    /// The peer table (read-only: changes come in as [`Command::Peer`]).
    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    /// A packet this host sent into the TUN: `buf[..len]` holds it, the rest
    /// of `buf` is room for the PCCOM trailer. Then drain
    /// [`NodeCore::poll_output`].
    pub fn handle_tun_packet<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        len: usize,
        now: Instant,
    ) -> DataOut<'a> {
        self.counters.tun_in += 1;
        if self.erased || len > buf.len() {
            return DataOut::Nothing;
        }
        match self.vin6_to_v4(buf, len) {
            None => self.tun_packet(buf, len, false, now),
            Some(Ok(start)) => self.tun_packet(&mut buf[start..], len - start, true, now),
            Some(Err(())) => DataOut::Nothing,
        }
    }

    /// [`Self::handle_tun_packet`] of an IPv4 or IPv6 packet, `from6`: an
    /// IPv4 one that the TUN gave as IPv6 (to a VIN, vin6.rs).
    fn tun_packet<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        len: usize,
        from6: bool,
        now: Instant,
    ) -> DataOut<'a> {
        let Ok(pkt) = Packet::parse(&buf[..len]) else {
            self.counters.tun_malformed += 1;
            return DataOut::Nothing;
        };
        let flow = pkt.flow_id();
        if !from6 && self.clashes_with_vin6(&flow) {
            self.counters.policy_drops += 1;
            trace!(%flow, "IPv4 packet of a flow that is IPv6 at the TUN: dropped");
            return DataOut::Nothing;
        }
        if self.is_transit_dde(&flow, pkt.payload()) {
            let payload = pkt.payload().to_vec();
            self.handle_transit_dde(&flow, &payload, now);
            return DataOut::Nothing;
        }
        if !self.is_own(flow.src) && !self.natf.is_gateway_reply(&flow) {
            // IPv6 router solicitations and other stray traffic of the
            // interface itself: nothing of ours.
            trace!(%flow, "TUN packet not from the overlay address");
            return DataOut::Nothing;
        }
        if self.queue_behind_waiting(&flow, &buf[..len])
            || self.hold_for_notice(&flow, &buf[..len], now)
        {
            return DataOut::Nothing;
        }
        let mut send = None;
        match self.pit.handle_packet(&flow, Origin::Local, buf, len, now) {
            Ok(Disposition::Forward { len: n }) => {
                match self.pit.lookup(&flow).and_then(|(_, e)| e.peer()) {
                    Some(ge) => send = Some((ge, n)),
                    None => self.counters.no_route += 1,
                }
            }
            Ok(Disposition::Unknown | Disposition::Hold) => {
                self.negotiate(flow, &buf[..len], now);
            }
            Ok(Disposition::Drop) => {
                self.counters.policy_drops += 1;
                self.queue_unreachable(&buf[..len], Unreachable::Prohibited);
            }
            Err(e) => {
                self.counters.dprp_errors += 1;
                trace!(%flow, error = %e, "outbound packet refused");
            }
        }
        self.drain(now);
        if let Some((_, n)) = send
            && self.plain_on_wire(&flow)
        {
            // Rare (plain flows), so the copy does not matter.
            self.push_output(Output::SendNative(buf[..n].to_vec()));
            return DataOut::Nothing;
        }
        if let Some((ge, n)) = send
            && !self.moves.holding.is_empty()
            && self.hold_for_move(ge, &buf[..n])
        {
            return DataOut::Nothing;
        }
        let mut range = None;
        let path = match send {
            Some((ge, n)) => match self.try_native(ge, buf, n, now) {
                Some(r) => {
                    range = Some(r);
                    CarrierKind::Native
                }
                None => {
                    self.send_trial_copy(ge, &buf[..n], now);
                    CarrierKind::Quic
                }
            },
            None => CarrierKind::Quic,
        };
        if self.installs.kinds.tun
            && !from6
            && let Some((ge, _)) = send
        {
            self.offer_outbound(&flow, ge, path, range.is_some(), now);
        }
        let buf: &'a [u8] = buf;
        match send {
            Some((ge, n)) => {
                let (start, end) = range.unwrap_or((0, n));
                self.data_to(ge, path, &buf[start..end])
            }
            None => DataOut::Nothing,
        }
    }

    /// A frame from peer `peer` (authenticated by the carrier), received
    /// from underlay address `from`: `buf[..len]` holds it (for a packet,
    /// `buf` needs no room beyond it; a DPRP message may be up to
    /// `fpn_proto::dprp::msg::MAX_MESSAGE_LEN` long). A data frame is
    /// unprotected in place. Then drain [`NodeCore::poll_output`].
    pub fn handle_carrier_frame<'a>(
        &'a mut self,
        peer: GeId,
        from: SocketAddr,
        kind: FrameKind,
        buf: &'a mut [u8],
        len: usize,
        now: Instant,
    ) -> DataOut<'a> {
        if len > buf.len() {
            match kind {
                FrameKind::Control => self.counters.control_errors += 1,
                FrameKind::Data => self.counters.data_in_rejected += 1,
            }
            return DataOut::Nothing;
        }
        match kind {
            FrameKind::Control => {
                self.counters.control_in += 1;
                let _span = tracing::debug_span!("peer", ge = %peer).entered();
                if fpn_proto::path::is_probe(&buf[..len]) {
                    self.handle_carrier_path_message(peer, from, &buf[..len], now);
                    return DataOut::Nothing;
                }
                if !dde_sent_by(peer, &buf[..len]) {
                    // Checked before anything else, the peer's address
                    // included: a DDE that names another GE than the one
                    // the carrier authenticated would spend that GE's
                    // budgets here (and cost a verification) in its name.
                    self.counters.dde_wrong_peer += 1;
                    debug!("DDE refused: its credential or last hop is not the carrier's peer");
                    return DataOut::Nothing;
                }
                self.peers.learn_from(peer, from);
                if let Err(e) = self.dprp.handle_datagram(from, &buf[..len], now) {
                    self.counters.control_errors += 1;
                    debug!(error = %e, "DPRP message refused");
                }
                self.dprp_touched = true;
                self.drain(now);
                DataOut::Nothing
            }
            FrameKind::Data => {
                let opened = self.handle_data(peer, buf, len, now);
                let n = opened.and_then(|n| self.vin6_for_tun(buf, n));
                if self.installs.kinds.carrier
                    && let Some(n) = n
                    && opened == Some(n)
                    && let Ok(p) = Packet::parse(&buf[..n])
                {
                    // Opened and for the TUN as it is: the flow's steady
                    // outcome (a VIN6 flow changes family at the TUN).
                    let flow = p.flow_id();
                    self.offer(
                        installs::InstallKey::Carrier(peer, flow),
                        &flow,
                        peer,
                        installs::InstallAction::FromCarrier,
                        now,
                    );
                }
                self.drain(now);
                let buf: &'a [u8] = buf;
                match n {
                    Some(n) => {
                        self.note_received(now);
                        self.counters.tun_out += 1;
                        DataOut::Tun(&buf[..n])
                    }
                    None => DataOut::Nothing,
                }
            }
        }
    }

    /// The carrier did not send `frame` (of `kind`, to `peer`): a data
    /// frame too large for the path is answered with ICMP "fragmentation
    /// needed" into the TUN (the header quoted is the plain one: PCCOM
    /// leaves it as it is).
    pub fn handle_send_error(
        &mut self,
        peer: GeId,
        kind: FrameKind,
        frame: &[u8],
        error: SendError,
        _now: Instant,
    ) {
        match error {
            SendError::TooLarge { max } if kind == FrameKind::Data => {
                self.counters.too_big += 1;
                let mtu = max
                    .saturating_sub(TRAILER_LEN)
                    .clamp(576, usize::from(u16::MAX)) as u16;
                self.queue_unreachable(frame, Unreachable::TooBig(mtu));
            }
            _ => {
                self.counters.send_errors += 1;
                trace!(%peer, ?kind, ?error, "carrier send");
            }
        }
    }

    /// The TUN refused a packet the core handed out (counted; the packet is
    /// dropped rather than stalling every flow).
    pub fn handle_tun_write_error(&mut self) {
        self.counters.tun_write_drops += 1;
    }

    /// A command from the daemon. Then drain [`NodeCore::poll_output`].
    pub fn handle_command(&mut self, cmd: Command, now: Instant) {
        // A peer's record concerns that peer's installs only (set_peer
        // raises them), the GMS session's state none; every other command
        // may change any flow's outcome.
        let global = !matches!(cmd, Command::Peer(_) | Command::Gms { .. });
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
                self.installs.forget(ge);
                self.dprp.revoke_ge(ge);
                let n = self.drop_flows_of(ge);
                self.remove_machine(ge);
                // Revoked or removed: `why` says so for its old address.
                if let Some(o) = self.peers.get(ge).and_then(|p| p.overlay) {
                    explain::remember(&mut self.gone, o, ge);
                }
                if self.peers.remove(ge).is_some() {
                    self.dprp.set_directory(self.peers.directory());
                    self.peers_changed = true;
                }
                info!(%ge, flows = n, "peer left the directory: refused from now on");
            }
            Command::Peer(rec) => self.set_peer(&rec, now),
            Command::Hosts(hosts) => self.set_hosts(&hosts),
            Command::RevocationList(serials) => {
                let mut flows = 0;
                for s in serials {
                    if let Some(ge) = self.dprp.ge_of_serial(s) {
                        flows += self.drop_flows_of(ge);
                    }
                    self.dprp.revoke_serial(s);
                }
                if flows > 0 {
                    info!(
                        flows,
                        "revocations made while away: their flows are dropped"
                    );
                }
            }
            Command::Gms { connected, unix } => self.gms_state(connected, unix, now),
            Command::Credential(c) => {
                let serial = c.serial;
                // Checked again by DPRP (CA signature, key, GE id): a bad
                // one leaves the old credential in use.
                if let Err(e) = self.dprp.set_credential(*c) {
                    warn!(serial, error = %e, "new own credential refused; keeping the old one");
                }
            }
            Command::EraseKeys => {
                let groups: Vec<GroupId> = self.versions.keys().copied().collect();
                for g in groups {
                    self.set_keys(g, Vec::new());
                }
                let flows: Vec<FlowId> = self.pit.iter().map(|(f, _)| *f).collect();
                for f in flows {
                    self.pit.remove(&f);
                    self.flow_ended(&f);
                }
                self.erased = true;
            }
        }
        // Commands are rare and change what packets' outcomes depend on
        // (hosts, credentials, keys, revocations): workers ask again.
        if global {
            self.installs.raise_global();
        }
        self.dprp_touched = true;
        self.drain(now);
    }

    /// Deadlines that passed at `now`: DPRP's, PIT ageing, renegotiations,
    /// and the bounds of the flow tables. Then drain [`NodeCore::poll_output`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.dprp_deadline.is_some_and(|t| t <= now) {
            self.dprp.handle_timeout(now);
            self.dprp_touched = true;
            // DPRP's own timers ran (a scan anyway): look at its next
            // deadline now, never leave a passed one in place.
            self.dprp_refreshed = None;
        }
        let mut ageing_left = false;
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Dprp => {}
                Timer::PitAgeing => {
                    let (gone, more) = self.pit.expire_some(now, AGE_SLICE);
                    for flow in gone {
                        debug!(%flow, "flow aged out");
                        self.flow_ended(&flow);
                    }
                    if more {
                        ageing_left = true;
                    } else {
                        self.schedule_pit_ageing(now);
                    }
                }
                Timer::Renegotiate(flow) => {
                    self.flows.renegotiation_due(&flow);
                    self.start_renegotiation(flow, now);
                }
                Timer::ForgetRefused(flow) => self.flows.forget_refused(&flow, now),
                Timer::ForgetHealing(flow) => self.flows.forget_healing(&flow),
                Timer::Path => {}
                Timer::NativeReady(flow) => self.steering_timeout(flow, now),
                Timer::NoticeWait(flow) => self.notice_wait_ended(&flow, now),
                Timer::GmsSilence => self.gms_silence_reached(now),
                Timer::TransitExpiry(flow) => self.transit_expired(flow, now),
                Timer::MoveHoldEnd => self.end_move_hold(now),
                Timer::Parked(flow) => self.parking_expired(flow, now),
            }
        }
        if ageing_left {
            // The next slice on the next call: the driver serves packets
            // in between, so many flows ageing together make no pause.
            self.timers.schedule(now, Timer::PitAgeing);
        }
        self.handle_path_timeout(now);
        self.drain(now);
    }

    /// Whether held data packets (answers that waited for a steered
    /// notice, first packets that waited for the steering) were queued as
    /// outputs since the last call. The driver then carries out the
    /// outputs before its next TUN packet, so that the flows' later
    /// packets, which leave at once, do not overtake them.
    pub fn take_released(&mut self) -> bool {
        std::mem::take(&mut self.released)
    }

    /// The next output to act on.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(o) = self.outputs.pop_front() {
            return Some(o);
        }
        if std::mem::take(&mut self.peers_changed) {
            return Some(Output::PeersChanged);
        }
        None
    }

    /// When to call [`NodeCore::handle_timeout`] next, and for which timer.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let dprp = self.dprp_deadline.map(|t| (t, Timer::Dprp));
        let path = self.paths.deadline.map(|t| (t, Timer::Path));
        [dprp, self.timers.next(), path].into_iter().flatten().min()
    }

    /// The core's fixed settings.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// The PIT (for tests and benchmarks that look at entries).
    pub fn pit(&self) -> &Pit {
        &self.pit
    }

    fn data_to<'a>(&'a mut self, ge: GeId, path: CarrierKind, frame: &'a [u8]) -> DataOut<'a> {
        match self.peers.get(ge).filter(|p| !p.target.addrs.is_empty()) {
            Some(p) => {
                self.counters.data_out += 1;
                DataOut::Send {
                    target: &p.target,
                    path,
                    frame,
                }
            }
            None => {
                self.counters.no_route += 1;
                DataOut::Nothing
            }
        }
    }

    /// An inbound data frame: `Some(n)` when `buf[..n]` is for the TUN.
    fn handle_data(
        &mut self,
        peer: GeId,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<usize> {
        self.counters.data_in += 1;
        if self.erased {
            return None;
        }
        let Ok(pkt) = Packet::parse(&buf[..len]) else {
            self.counters.data_in_rejected += 1;
            return None;
        };
        let flow = pkt.flow_id();
        // A packet is only taken from the GE the flow was negotiated with:
        // another authenticated peer cannot inject into someone else's flow.
        match self.pit.lookup(&flow).map(|(_, e)| e.peer()) {
            None => {
                self.counters.data_in_no_flow += 1;
                if !self.park(flow, peer, &buf[..len], now) {
                    self.heal(flow, peer, now);
                }
                return None;
            }
            Some(p) if p != Some(peer) => {
                self.counters.data_in_wrong_peer += 1;
                return None;
            }
            Some(_) => {}
        }
        match self.pit.handle_packet(&flow, Origin::Remote, buf, len, now) {
            Ok(Disposition::Forward { len: n }) => Some(n),
            Ok(_) => {
                self.counters.policy_drops += 1;
                None
            }
            // A duplicate: the native twin of a trial copy got here first
            // (or a replay, which the window cannot tell from one).
            Err(fpn_proto::Error::Replay { .. }) => {
                self.counters.data_in_replayed += 1;
                None
            }
            Err(e) => {
                self.counters.data_in_rejected += 1;
                // At most one line a second: a flood must not flood the log.
                if self
                    .reject_logged
                    .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
                {
                    self.reject_logged = Some(now);
                    debug!(%flow, %peer, error = %e, rejected = self.counters.data_in_rejected, "inbound packet refused");
                }
                None
            }
        }
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
            for f in &gone {
                self.flow_ended(f);
            }
            debug!(%group, version = v.0, flows = gone.len(), "group key versions erased");
        }
        debug!(%group, versions = ?new.iter().map(|v| v.0).collect::<Vec<_>>(), "group keys");
    }

    fn set_peer(&mut self, rec: &crate::directory::PeerRecord, now: Instant) {
        let ge = rec.ge();
        let change = self.peers.upsert(rec);
        // Its addresses, key or names may have changed: its installs (and
        // those of the GE that held its overlay address) are made again.
        self.installs.raise(ge);
        if let Some(old) = change.previous_owner {
            self.installs.raise(old);
        }
        // An address handed to a GE again is no longer a departed one.
        self.gone.remove(&rec.overlay);
        self.update_machine(ge, now);
        self.peers_changed = true;
        if change.directory_changed || change.previous_owner.is_some() {
            self.dprp.set_directory(self.peers.directory());
        }
        if change.old_overlay.is_some() || change.previous_owner.is_some() {
            self.unbind_flows();
        }
        if let Some(waiting) = self.pending.remove(&rec.overlay) {
            for msg in waiting {
                self.send_control(ge, msg);
            }
        }
        // Flows refused while this address had no known owner: negotiate
        // them from this side now (healing), instead of waiting for the
        // other end's next packet.
        for (flow, peer) in self.flows.owner_known(rec.overlay) {
            if peer == ge {
                self.heal(flow, peer, now);
            }
        }
    }

    /// Removes every flow whose remote address is no longer owned (per the
    /// peer table) by the GE it was negotiated with: an address that moved
    /// to another GE must not keep carrying the old owner's traffic.
    fn unbind_flows(&mut self) -> usize {
        let stale: Vec<FlowId> = self
            .pit
            .iter()
            .filter(|(f, e)| {
                let remote = if self.is_own(f.src) { f.dst } else { f.src };
                let owner = self.cfg.net6.as_v4(remote).and_then(|r| self.owner_of(r));
                e.peer().is_some() && owner != e.peer()
            })
            .map(|(f, _)| *f)
            .collect();
        for f in &stale {
            self.pit.remove(f);
            self.flow_ended(f);
            info!(flow = %f, "the flow's remote address changed owner: flow removed");
        }
        self.counters.flows_unbound += stale.len() as u64;
        stale.len()
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
            self.flow_ended(f);
        }
        self.counters.revoked_flows += flows.len() as u64;
        flows.len()
    }
}

/// True unless `datagram` is a DDE whose sender is not `peer`: over the
/// carrier, whoever passed a DDE on is known (mTLS), and that is the
/// initiator (its credential) when the DDE has no gateway hops, else the
/// last gateway (each appends its id). Anything else, or bytes that do not
/// decode, is left to DPRP, which refuses it with its own error.
fn dde_sent_by(peer: GeId, datagram: &[u8]) -> bool {
    use fpn_proto::dprp::{Message, MessageType, msg};
    if !matches!(msg::peek(datagram), Ok((MessageType::Dde, _))) {
        return true;
    }
    let Ok(Message::Dde(dde)) = Message::decode(datagram) else {
        return true;
    };
    match dde.hops.last() {
        Some(hop) => *hop == peer,
        None => dde.credential.parse().is_ok_and(|c| c.claimed_ge() == peer),
    }
}
