//! What data-path workers may repeat (design note 67, step b). When the
//! core has handled a packet whose outcome was a plain one (sealed and
//! sent on one path with one translation, or opened and written to the
//! TUN) and no transitional state touched it, it hands out an [`Install`]:
//! a [`Worker`](super::worker::Worker) repeats that outcome for the flow's
//! next packets on its own. One install comes before any packet: an
//! opener's inbound native install, made at its fast open
//! (`NodeCore::offer_first_inbound`, design note 79), whose first packet
//! the worker reports. The core never tells a worker to forget one;
//! each install is checked at every packet instead:
//! - the flow's cipher state refuses once the PIT retires it (removal,
//!   renegotiation, revocation, ageing, erased keys: fpn-proto's
//!   `SharedCrypto`);
//! - everything per peer the outcome depends on (its path and trial, its
//!   addresses, a NAT's rewriting, a move's hold, the flow's translation)
//!   is covered by the peer's epoch, which the core raises when any of it
//!   changes, and what is node-wide (commands, a move, the underlay) by
//!   one global epoch.
//!
//! A worker whose install fails either check gives the packet, untouched,
//! to the core, which decides again. New flows raise no epoch, so a storm
//! of them does not flush the workers.
//!
//! What workers carried comes back as a [`WorkerReport`]
//! ([`NodeCore::handle_worker_report`]): counters, the last packet
//! received (the move gap), flows whose send counter reached the rekey
//! limit and first packets opened with an install made before them. The per-peer native activity the path machines count is shared
//! instead ([`PeerActivity`]): a machine's data check compares the peer's
//! count in a probe answer with what was sent before the probe, so the
//! core reads it at once where a machine looks, never a report late.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use fpn_proto::flow::FlowId;
use fpn_proto::ge::GeId;
use fpn_proto::pccom::SharedCrypto;
use fpn_proto::xlat::Translation;

use crate::carrier::{CarrierKind, PeerTarget};

use super::NodeCore;

/// Most installs queued for the driver; beyond it new ones are dropped
/// (counted): the flow's next packet through the core offers it again.
const MAX_QUEUED: usize = 4096;

/// The key a worker looks a packet up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstallKey {
    /// A packet from the TUN, by its five-tuple.
    Tun(FlowId),
    /// A native packet, by its wire five-tuple as received.
    Native(FlowId),
    /// A data frame from the carrier: the peer the carrier authenticated
    /// and the packet's five-tuple.
    Carrier(GeId, FlowId),
}

/// What a worker does with a packet of an installed flow.
#[derive(Debug, Clone)]
pub enum InstallAction {
    /// Seal, rewrite by the translation, send on the native path.
    SendNative(Translation),
    /// Seal and send on the QUIC carrier to the target.
    SendQuic(PeerTarget),
    /// Rewrite back by the translation, open, write to the TUN.
    FromNative(Translation),
    /// Open and write to the TUN.
    FromCarrier,
}

/// The epochs an install was made in.
#[derive(Clone)]
pub(crate) struct EpochStamp {
    peer: Arc<AtomicU64>,
    peer_at: u64,
    global: Arc<AtomicU64>,
    global_at: u64,
}

impl EpochStamp {
    /// Nothing the install depends on changed since it was made.
    pub(crate) fn is_current(&self) -> bool {
        self.global.load(Ordering::Acquire) == self.global_at
            && self.peer.load(Ordering::Acquire) == self.peer_at
    }
}

/// One flow's steady outcome in one direction, for a worker to repeat.
#[derive(Clone)]
pub struct Install {
    /// The key its packets are looked up by.
    pub key: InstallKey,
    /// The flow's PIT key (for a rekey report).
    pub(crate) pit_key: FlowId,
    /// The peer the flow was negotiated with.
    pub peer: GeId,
    /// What to do with the packet.
    pub action: InstallAction,
    pub(crate) crypto: Arc<SharedCrypto>,
    pub(crate) stamp: EpochStamp,
    /// The peer's native activity, counted by the worker.
    pub(crate) activity: Arc<PeerActivity>,
    /// Made before the flow's first inbound packet (an opener's fast open,
    /// design note 79): the worker reports that packet
    /// ([`WorkerReport::heard`]), so the core learns what it would have
    /// learnt from it.
    pub(crate) announce: bool,
    /// The flow's opening (its PIT entry's), reported with that packet:
    /// the core takes the report only for the same entry, not a later
    /// flow of the same five-tuple.
    pub(crate) opening: Option<u64>,
}

/// The `n`th of many distinct UDP flows between two fixed addresses.
#[cfg(test)]
pub(crate) fn flow_for_test(n: u32) -> FlowId {
    FlowId {
        src: std::net::Ipv4Addr::new(198, 18, 0, 2).into(),
        dst: std::net::Ipv4Addr::new(198, 18, 0, 1).into(),
        protocol: 17,
        src_port: (n % 60_000) as u16 + 1024,
        dst_port: (n / 60_000) as u16 + 1,
    }
}

#[cfg(test)]
impl Install {
    /// An install of `flow`'s inbound packets (by wire five-tuple) with a
    /// peer epoch of its own: raising the returned counter makes it stale.
    pub(crate) fn inbound_for_test(flow: FlowId) -> (Self, Arc<AtomicU64>) {
        use fpn_proto::keys::{FlowKeys, TrafficKey};
        use fpn_proto::pccom::FlowCrypto;
        let keys = FlowKeys {
            tx: TrafficKey::from_bytes([1; 32]),
            rx: TrafficKey::from_bytes([2; 32]),
        };
        let peer = Arc::new(AtomicU64::new(0));
        let install = Self {
            key: InstallKey::Native(flow),
            pit_key: flow,
            peer: GeId(2),
            action: InstallAction::FromCarrier,
            crypto: Arc::new(SharedCrypto::new(FlowCrypto::new(&keys))),
            stamp: EpochStamp {
                peer: peer.clone(),
                peer_at: 0,
                global: Arc::new(AtomicU64::new(0)),
                global_at: 0,
            },
            activity: Arc::new(PeerActivity::new(Instant::now())),
            announce: false,
            opening: None,
        };
        (install, peer)
    }
}

impl std::fmt::Debug for Install {
    // Never the cipher state.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Install")
            .field("key", &self.key)
            .field("peer", &self.peer)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

/// Which installs the driver's workers take (the core makes no others:
/// an install nobody takes would cost every packet of its flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InstallKinds {
    /// Outbound, by TUN five-tuple.
    pub tun: bool,
    /// Inbound native, by wire five-tuple.
    pub native: bool,
    /// Inbound QUIC, by peer and five-tuple.
    pub carrier: bool,
}

impl InstallKinds {
    /// Every kind.
    pub const ALL: Self = Self {
        tun: true,
        native: true,
        carrier: true,
    };

    fn wants(&self, key: &InstallKey) -> bool {
        match key {
            InstallKey::Tun(_) => self.tun,
            InstallKey::Native(_) => self.native,
            InstallKey::Carrier(..) => self.carrier,
        }
    }
}

/// What workers carried natively for one peer, shared with the core,
/// which hands it to the peer's path machine where the machine looks
/// (`NodeCore::sync_native_activity`).
#[derive(Debug)]
pub struct PeerActivity {
    /// The instant the stamps count from.
    base: Instant,
    sent: AtomicU64,
    /// Nanoseconds after `base`, plus one (0: never).
    last_sent: AtomicU64,
    received: AtomicU64,
    last_received: AtomicU64,
}

impl PeerActivity {
    fn new(base: Instant) -> Self {
        Self {
            base,
            sent: AtomicU64::new(0),
            last_sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_received: AtomicU64::new(0),
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.base).as_nanos() as u64).saturating_add(1)
    }

    fn instant(&self, stamp: u64) -> Option<Instant> {
        stamp
            .checked_sub(1)
            .map(|n| self.base + std::time::Duration::from_nanos(n))
    }

    /// A native packet to the peer left at `now`.
    pub(crate) fn note_sent(&self, now: Instant) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.last_sent.fetch_max(self.stamp(now), Ordering::Relaxed);
    }

    /// An authenticated native packet of the peer came in at `now`.
    pub(crate) fn note_received(&self, now: Instant) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_received
            .fetch_max(self.stamp(now), Ordering::Relaxed);
    }
}

/// The status counters a worker keeps for what it carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Packets taken from the TUN.
    pub tun_in: u64,
    /// Frames sent (either path).
    pub data_out: u64,
    /// Of those, native packets, and their wire bytes.
    pub native_out: u64,
    /// Wire bytes of the native packets sent.
    pub native_bytes_out: u64,
    /// Carrier data frames taken in.
    pub data_in: u64,
    /// Native packets taken in, and their plain bytes.
    pub native_in: u64,
    /// Plain bytes of the native packets taken in.
    pub native_bytes_in: u64,
    /// Packets written to the TUN.
    pub tun_out: u64,
    /// Native packets of installed flows that failed to open (forged,
    /// damaged): dropped.
    pub native_in_rejected: u64,
    /// Native packets of installed flows the replay window refused.
    pub native_in_replayed: u64,
    /// Carrier frames of installed flows that failed to open.
    pub data_in_rejected: u64,
    /// Carrier frames of installed flows the replay window refused.
    pub data_in_replayed: u64,
    /// Packets of installed flows that failed to seal.
    pub seal_errors: u64,
    /// Packets the TUN refused (dropped rather than stalling every flow).
    pub tun_write_drops: u64,
}

/// What a worker carried since its last report, for
/// [`NodeCore::handle_worker_report`].
#[derive(Debug, Default)]
pub struct WorkerReport {
    /// Status counters.
    pub counters: WorkerCounters,
    /// When the last data packet was received (either path; of merged
    /// reports, the latest).
    pub received: Option<Instant>,
    /// PIT keys whose send counter reached the rekey limit.
    pub rekeys: Vec<FlowId>,
    /// Wire five-tuples (as received) whose first native packet a worker
    /// opened with an install made before it ([`Install::announce`]), with
    /// the install's opening.
    pub heard: Vec<(FlowId, Option<u64>)>,
}

impl std::ops::AddAssign for WorkerCounters {
    fn add_assign(&mut self, o: Self) {
        // Every field named: a new one must be added here too.
        let Self {
            tun_in,
            data_out,
            native_out,
            native_bytes_out,
            data_in,
            native_in,
            native_bytes_in,
            tun_out,
            native_in_rejected,
            native_in_replayed,
            data_in_rejected,
            data_in_replayed,
            seal_errors,
            tun_write_drops,
        } = o;
        self.tun_in += tun_in;
        self.data_out += data_out;
        self.native_out += native_out;
        self.native_bytes_out += native_bytes_out;
        self.data_in += data_in;
        self.native_in += native_in;
        self.native_bytes_in += native_bytes_in;
        self.tun_out += tun_out;
        self.native_in_rejected += native_in_rejected;
        self.native_in_replayed += native_in_replayed;
        self.data_in_rejected += data_in_rejected;
        self.data_in_replayed += data_in_replayed;
        self.seal_errors += seal_errors;
        self.tun_write_drops += tun_write_drops;
    }
}

impl WorkerReport {
    /// Adds a later report to this one, as if both were one.
    pub fn merge(&mut self, later: Self) {
        if self.is_empty() {
            // Keeps the later one's vectors (no allocation).
            *self = later;
            return;
        }
        let Self {
            counters,
            received,
            mut rekeys,
            mut heard,
        } = later;
        self.counters += counters;
        self.received = self.received.max(received);
        self.rekeys.append(&mut rekeys);
        self.heard.append(&mut heard);
    }

    /// Nothing to report.
    pub fn is_empty(&self) -> bool {
        self.counters == WorkerCounters::default()
            && self.received.is_none()
            && self.rekeys.is_empty()
            && self.heard.is_empty()
    }
}

/// What of a peer's state an install depends on: a change raises the
/// peer's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct PeerSignature {
    pub(super) path: Option<CarrierKind>,
    pub(super) trial: bool,
    pub(super) native_addr: Option<SocketAddr>,
    pub(super) behind_nat: bool,
    pub(super) echo_rewritten: bool,
}

/// The core's side: epochs, signatures and the queue of installs.
#[derive(Default)]
pub(super) struct Installs {
    /// Installs are made (a driver with workers asked for them).
    pub(super) enabled: bool,
    /// Of these kinds.
    pub(super) kinds: InstallKinds,
    global: Arc<AtomicU64>,
    peers: HashMap<GeId, (Arc<AtomicU64>, PeerSignature)>,
    queue: VecDeque<Install>,
    /// Installs handed out.
    pub(super) issued: u64,
    /// Installs dropped because the queue was full.
    pub(super) dropped: u64,
    /// The translation of the native packet being handled, when its
    /// outcome may be installed once the TUN side is known.
    pub(super) native_candidate: Option<Translation>,
    /// Per peer: what workers carried natively, and the counts the path
    /// machine was given so far (sent, received).
    activity: HashMap<GeId, (Arc<PeerActivity>, u64, u64)>,
    /// Where the activity stamps count from (the first install's time).
    base: Option<Instant>,
}

impl Installs {
    /// The candidate the native packet just handled left (cleared).
    pub(super) fn take_native_candidate(&mut self) -> Option<Translation> {
        self.native_candidate.take()
    }

    /// Something node-wide changed: every install is stale.
    pub(super) fn raise_global(&self) {
        if self.enabled {
            self.global.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Something of `ge` changed: its installs are stale.
    pub(super) fn raise(&self, ge: GeId) {
        if let Some((e, _)) = self.peers.get(&ge) {
            e.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// `ge` is gone: its installs are stale, and its entries go.
    pub(super) fn forget(&mut self, ge: GeId) {
        if let Some((e, _)) = self.peers.remove(&ge) {
            e.fetch_add(1, Ordering::AcqRel);
        }
        self.activity.remove(&ge);
    }

    /// Raises `ge`'s epoch when its signature changed.
    pub(super) fn check(&mut self, ge: GeId, sig: PeerSignature) {
        if let Some((e, old)) = self.peers.get_mut(&ge)
            && *old != sig
        {
            *old = sig;
            e.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn stamp(&mut self, ge: GeId, sig: PeerSignature) -> EpochStamp {
        // A change no check saw yet makes the installs before it stale.
        self.check(ge, sig);
        let (peer, _) = self
            .peers
            .entry(ge)
            .or_insert_with(|| (Arc::new(AtomicU64::new(0)), sig));
        EpochStamp {
            peer_at: peer.load(Ordering::Acquire),
            peer: peer.clone(),
            global_at: self.global.load(Ordering::Acquire),
            global: self.global.clone(),
        }
    }

    fn push(&mut self, install: Install) {
        if self.queue.len() >= MAX_QUEUED {
            self.dropped += 1;
            return;
        }
        self.issued += 1;
        self.queue.push_back(install);
    }
}

impl NodeCore {
    /// Makes the core hand out installs of `kinds`
    /// ([`NodeCore::poll_install`]): a driver with data-path workers turns
    /// this on for what its workers take.
    pub fn enable_installs(&mut self, kinds: InstallKinds) {
        self.installs.enabled = kinds != InstallKinds::default();
        self.installs.kinds = kinds;
    }

    /// The next install for the workers.
    pub fn poll_install(&mut self) -> Option<Install> {
        self.installs.queue.pop_front()
    }

    /// What workers carried since their last report: counted as if the
    /// core had carried it, the path machines told, and renegotiations
    /// started for flows at their rekey limit. Then drain
    /// [`NodeCore::poll_output`].
    pub fn handle_worker_report(&mut self, report: WorkerReport, now: Instant) {
        let c = &report.counters;
        let k = &mut self.counters;
        k.tun_in += c.tun_in;
        k.data_out += c.data_out;
        k.native_out += c.native_out;
        k.native_bytes_out += c.native_bytes_out;
        k.data_in += c.data_in;
        k.native_in += c.native_in;
        k.native_bytes_in += c.native_bytes_in;
        k.tun_out += c.tun_out;
        k.native_in_rejected += c.native_in_rejected;
        k.native_in_replayed += c.native_in_replayed;
        k.data_in_rejected += c.data_in_rejected;
        k.data_in_replayed += c.data_in_replayed;
        k.dprp_errors += c.seal_errors;
        k.tun_write_drops += c.tun_write_drops;
        if let Some(at) = report.received {
            // A report can come after a move with a packet from before it:
            // that is not the first packet after the move.
            if self.moves.recent.back().is_none_or(|m| at >= m.at) {
                self.note_received(at);
            }
        }
        for (wire, opening) in &report.heard {
            // What the flow's first native packet tells when the core opens
            // it (`native_data`): the peer steers the flow, and a reply
            // came in through its NAT, if any. Only of the entry the
            // install was made for (the flow may have ended and its ports
            // opened again since).
            if let Some(t) = self.xlat.by_inbound_wire(wire).copied()
                && self
                    .pit
                    .lookup(&t.overlay)
                    .is_some_and(|(_, e)| e.opening() == *opening)
            {
                self.heard_natively(&t.overlay);
            }
        }
        let mut rekeyed = false;
        for flow in &report.rekeys {
            rekeyed |= self.pit.note_rekey_due(flow);
        }
        if rekeyed {
            self.drain(now);
        }
    }

    /// Gives `ge`'s path machine what workers carried natively since the
    /// last call: before anything the machine does with its counts (a
    /// probe sent or answered, a timer).
    pub(super) fn sync_native_activity(&mut self, ge: GeId) {
        let Some((a, sent_seen, received_seen)) = self.installs.activity.get_mut(&ge) else {
            return;
        };
        let sent = a.sent.load(Ordering::Relaxed);
        let received = a.received.load(Ordering::Relaxed);
        if sent == *sent_seen && received == *received_seen {
            return;
        }
        let (ds, dr) = (sent - *sent_seen, received - *received_seen);
        (*sent_seen, *received_seen) = (sent, received);
        let last_sent = a.instant(a.last_sent.load(Ordering::Relaxed));
        let last_received = a.instant(a.last_received.load(Ordering::Relaxed));
        if let Some(m) = self.paths.machines.get_mut(&ge) {
            m.handle_native_data(ds, last_sent, dr, last_received);
        }
        self.merge_path_deadline(ge);
    }

    /// [`NodeCore::sync_native_activity`] for every peer a worker counts
    /// for: before a change that every machine sees.
    pub(super) fn sync_all_native_activity(&mut self) {
        let peers: Vec<GeId> = self.installs.activity.keys().copied().collect();
        for ge in peers {
            self.sync_native_activity(ge);
        }
    }

    /// The signature of `ge` now.
    pub(super) fn peer_signature(&self, ge: GeId) -> PeerSignature {
        let m = self.paths.machines.get(&ge);
        PeerSignature {
            path: self.peers.get(ge).map(|p| p.path.current),
            trial: m.is_some_and(|m| m.in_trial()),
            native_addr: m.and_then(|m| m.native_addr()),
            behind_nat: self.behind_nat(ge),
            echo_rewritten: self.echo_ids_rewritten(ge),
        }
    }

    /// Raises `ge`'s epoch if its signature changed (after its path
    /// machine ran).
    pub(super) fn check_installs(&mut self, ge: GeId) {
        if self.installs.enabled {
            let sig = self.peer_signature(ge);
            self.installs.check(ge, sig);
        }
    }

    /// A TUN packet of `flow` (its five-tuple at the TUN) left for `ge` on
    /// `path` (`on_wire`: a native packet reached the wire): hands out an
    /// install when that is the flow's
    /// steady outcome. Native: the packet reached the wire (either family:
    /// the worker changes it as the core did). QUIC: the
    /// peer's path is QUIC and no trial sends copies (a flow that takes
    /// QUIC while its peer is native waits for something: a NAT's first
    /// packet, the steering gate, a translation).
    pub(super) fn offer_outbound(
        &mut self,
        flow: &FlowId,
        ge: GeId,
        path: CarrierKind,
        on_wire: bool,
        now: Instant,
    ) {
        // UDP to the DPRP port may carry a DDE a gateway must see (transit.rs).
        if !self.installs.kinds.tun || (flow.protocol == 17 && flow.dst_port == super::PROBE_PORT) {
            return;
        }
        let Some(peer) = self.peers.get(ge).filter(|p| !p.target.addrs.is_empty()) else {
            return;
        };
        let action = match path {
            CarrierKind::Native if on_wire => match self.xlat.get(flow) {
                Some(t) => InstallAction::SendNative(*t),
                None => return,
            },
            CarrierKind::Quic
                if peer.path.current == CarrierKind::Quic
                    && !self.paths.machines.get(&ge).is_some_and(|m| m.in_trial()) =>
            {
                InstallAction::SendQuic(peer.target.clone())
            }
            _ => return,
        };
        self.offer(InstallKey::Tun(*flow), flow, ge, action, now);
    }

    /// A packet of PIT flow `flow` (either orientation) with `ge` had the
    /// steady outcome `action`: hands out an install for `key` when the
    /// workers take that kind and the flow's cipher state may be shared.
    pub(super) fn offer(
        &mut self,
        key: InstallKey,
        flow: &FlowId,
        ge: GeId,
        action: InstallAction,
        now: Instant,
    ) {
        self.offer_with(key, flow, ge, action, false, now);
    }

    /// The opener of fast-opened PIT flow `flow` with `ge` (design note
    /// 79): the flow's inbound native install, made now rather than after
    /// the core opened the peer's first packet, so the receive ring's
    /// worker opens the answer to the first packet itself instead of
    /// handing it to the driver (a thread wake-up on a new flow's critical
    /// path). The worker reports that packet ([`WorkerReport::heard`]).
    /// Only for a translation whose packets reach the TUN as they are (an
    /// IPv6 VIN's change family there: `vin6_for_tun`).
    pub(super) fn offer_first_inbound(&mut self, flow: &FlowId, ge: GeId, now: Instant) {
        if !self.installs.kinds.native || !self.peer_native(ge) {
            return;
        }
        let Some(t) = self.xlat.get(&self.overlay_view(flow)).copied() else {
            return;
        };
        // Fast open never opens a flow to a VIN (its flows are negotiated
        // with the gateway); kept so that this stays true if that changes.
        let to_vin = match t.overlay.dst {
            std::net::IpAddr::V4(d) => self.natf.in_range(d),
            std::net::IpAddr::V6(_) => false,
        };
        if to_vin {
            return;
        }
        let key = InstallKey::Native(t.wire.reversed());
        let action = InstallAction::FromNative(t);
        self.offer_with(key, &t.overlay.reversed(), ge, action, true, now);
    }

    fn offer_with(
        &mut self,
        key: InstallKey,
        flow: &FlowId,
        ge: GeId,
        action: InstallAction,
        announce: bool,
        now: Instant,
    ) {
        if !self.installs.kinds.wants(&key) {
            return;
        }
        let Some((dir, entry)) = self.pit.lookup(flow) else {
            tracing::trace!(?key, "no install: no PIT entry");
            return;
        };
        if entry.peer() != Some(ge) {
            tracing::trace!(?key, "no install: another peer's flow");
            return;
        }
        // Sealing needs only the current state, also during a rekey's
        // grace; opening then needs the PIT, which tries the old one too.
        let crypto = match key {
            InstallKey::Tun(_) => entry.share_crypto_to_seal(),
            InstallKey::Native(_) | InstallKey::Carrier(..) => entry.share_crypto(),
        };
        let Some(crypto) = crypto else {
            tracing::trace!(
                ?key,
                "no install: the flow's cipher state is not to share now"
            );
            return;
        };
        let opening = entry.opening();
        let pit_key = match dir {
            fpn_proto::pit::Direction::Forward => *flow,
            fpn_proto::pit::Direction::Reverse => flow.reversed(),
        };
        let sig = self.peer_signature(ge);
        let stamp = self.installs.stamp(ge, sig);
        let base = *self.installs.base.get_or_insert(now);
        let activity = self
            .installs
            .activity
            .entry(ge)
            .or_insert_with(|| (Arc::new(PeerActivity::new(base)), 0, 0))
            .0
            .clone();
        tracing::trace!(?key, "install");
        self.installs.push(Install {
            key,
            pit_key,
            peer: ge,
            action,
            crypto,
            stamp,
            activity,
            announce,
            opening,
        });
    }
}
