//! [`Endpoint`]: all DPRP negotiations of one GE, the packets held for them,
//! and the negative entries of flows whose negotiation failed.
//!
//! After every `handle_*` call, drain [`Endpoint::poll_transmit`] and
//! [`Endpoint::poll_event`], then wake the endpoint at
//! [`Endpoint::poll_timeout`] with [`Endpoint::handle_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::credential::Credential;
use crate::dprp::Position;
use crate::dprp::budget::Buckets;
use crate::dprp::config::{Config, Keyring, Prefix};
use crate::dprp::cookie::{self, CookieJar};
use crate::dprp::entropy::{Entropy, Rng};
use crate::dprp::gateway::Transit;
use crate::dprp::initiator::{Initiator, Outcome, Start};
use crate::dprp::msg::{Cookie, CredentialBytes, Dde, Message, NegotiationId, RefuseCode};
use crate::dprp::natf::{FrontedHost, NatfMapping, PortPool, Vin, host_groups, natf_option};
use crate::dprp::peers::{CacheStats, Peers};
use crate::dprp::responder::{NatfGrant, Responder, check_initiator, nak, own_claims};
use crate::dprp::transcript as tr;
use crate::dprp::{DprpOption, Event, FailReason, Timer, Transmit};
use crate::flow::{FastMap, FlowId};
use crate::ge::{GeId, GroupId};
use crate::keys::{GroupKey, KeyVersion};
use crate::{Error, Result};

mod evict;
mod fast;

use crate::dprp::epoch::Epochs;

/// Pair epochs kept per peer: the newest, which new flows open on, and the
/// one before, for FOPs still on the way.
const EPOCHS_PER_PEER: usize = 2;
use fast::FastOpener;

/// What happened to a packet given to [`Endpoint::handle_packet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Held until the flow's negotiation ends (then released or dropped).
    Held,
    /// Dropped at once.
    Dropped(DropCause),
    /// Both ends of the flow are behind this GE: no negotiation is needed.
    Local,
}

/// Why a packet was dropped without being held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropCause {
    /// The flow failed recently (a negative entry) for this reason.
    Negative(FailReason),
    /// The flow's hold queue, or the hold budget of all flows, is full.
    QueueFull,
    /// The table of this GE's own negotiations is full
    /// ([`Limits::max_initiated`](crate::dprp::Limits::max_initiated)).
    Busy,
    /// The budget of negotiations towards the flow's destination is spent
    /// ([`Limits::initiate_per_destination`](crate::dprp::Limits::initiate_per_destination)).
    RateLimited,
}

/// Counters, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Negotiations this GE started.
    pub started: u64,
    /// Entries installed (any position).
    pub established: u64,
    /// Negotiations whose peer was revoked while they ran: not installed.
    pub revoked_at_completion: u64,
    /// Negotiations this GE started that failed.
    pub failed: u64,
    /// Packets dropped because a hold queue was full.
    pub hold_overflow: u64,
    /// Packets dropped because of a negative entry.
    pub negative_drops: u64,
    /// Packets or DDEs dropped because the negotiation table was full
    /// (`initiator_busy + responder_busy`).
    pub busy_drops: u64,
    /// Negotiations this GE did not start because its own (initiator)
    /// capacity was full.
    pub initiator_busy: u64,
    /// DDEs refused because the capacity for peers' negotiations
    /// (responder and gateway) was full.
    pub responder_busy: u64,
    /// DDEs dropped because their source address or claimed GE had spent
    /// its budget, before any signature or X25519 work.
    pub rate_limited: u64,
    /// Negotiations this GE did not start because the budget for their
    /// destination was spent.
    pub initiate_rate_limited: u64,
    /// Credentials refused from the negative cache (failed verification
    /// recently), each without a signature check.
    pub credential_cache_refusals: u64,
    /// CA signature checks of peer credentials (Ed25519 verifications).
    pub credential_verifications: u64,
    /// COOKIEs sent: direct DDEs answered statelessly under load.
    pub cookies_sent: u64,
    /// DDEs whose echoed cookie was wrong or stale (answered with a fresh one).
    pub cookie_refusals: u64,
    /// DDEs admitted under load because they echoed a valid cookie (their
    /// source address answered).
    pub cookies_accepted: u64,
    /// Held packets dropped when their negotiation failed.
    pub failed_drops: u64,
    /// Negotiations this GE refused because a GE spoke for an address its
    /// credential does not cover: DDEs whose source is not the initiator's
    /// (as responder), RGIs from a GE that does not own the destination (as
    /// initiator), MPITs for such a flow (as gateway).
    pub not_owner: u64,
    /// NAT-f DDEs this gateway refused with a signed NAK (unknown host, no
    /// shared host group, no free port).
    pub natf_refused: u64,
    /// Authentic RGIs to this GE's NAT-f DDEs whose mapping was unusable
    /// (no NAT-f option, another host, port 0, an unprotected flow).
    pub natf_bad_answers: u64,
    /// Authentic NAKs dropped because their signer is neither the GE the
    /// negotiation was addressed to nor one whose credential covers the
    /// destination.
    pub stranger_naks: u64,
    /// Flows this GE opened on a pair epoch, without a negotiation.
    pub fast_opened: u64,
    /// Of those, confirmed by the other end (FOK).
    pub fast_confirmed: u64,
    /// Of those, refused or unconfirmed: negotiated instead.
    pub fast_fallbacks: u64,
    /// Peers' fast-opened flows this GE installed.
    pub fast_accepted: u64,
    /// FOPs this GE sent with their flow's first packet inside.
    pub fast_first_sent: u64,
    /// Of the peers' FOPs installed here, those with the first packet inside.
    pub fast_first_received: u64,
    /// FOPs this GE sent again, marked steered, once it steered the flow
    /// (the first went before that: note 75).
    pub fast_steered_sent: u64,
    /// Peers' FOPs that came again marked steered, for a flow installed
    /// here ([`Event::FastSteered`]): notices, and the marked
    /// retransmissions of a node before note 75.
    pub fast_steered_received: u64,
    /// FOKs for fast opens confirmed already (the answer to a notice or a
    /// retransmission), taken silently.
    pub fast_fok_repeats: u64,
    /// FOPs naming a pair epoch this GE does not hold.
    pub fast_unknown_epoch: u64,
    /// FOPs this gateway stopped on their way (the flow must be negotiated
    /// with it on the path).
    pub fast_refused_in_transit: u64,
    /// Flows negotiated instead of fast-opened to renew a pair epoch in
    /// its last stretch (note 70).
    pub epoch_renewals: u64,
    /// Flows listed in the eviction notices (EVICT) this GE sent.
    pub evict_sent: u64,
    /// Flows listed in authentic eviction notices from peers.
    pub evict_received: u64,
    /// Eviction notices naming a pair epoch this GE does not hold (ignored).
    pub evict_unknown_epoch: u64,
    /// Credential and pair-key cache counters.
    pub cache: CacheStats,
    /// [`Stats::failed`] by reason.
    pub failed_by: FailCounts,
    /// How long the negotiations this GE started took, from the DDE to the
    /// installed entry.
    pub durations: DurationHistogram,
}

/// Failed negotiations by [`FailReason`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FailCounts {
    /// No valid answer in time.
    pub timeout: u64,
    /// The decision rules drop the flow (a closed GE, no shared group).
    pub dropped: u64,
    /// A GE on the path refused (authenticated NAK or CDN).
    pub refused: u64,
    /// An authentic answer failed a check here.
    pub rejected: u64,
}

impl FailCounts {
    fn count(&mut self, reason: &FailReason) {
        let c = match reason {
            FailReason::Timeout => &mut self.timeout,
            FailReason::Dropped { .. } => &mut self.dropped,
            FailReason::Refused { .. } => &mut self.refused,
            FailReason::Rejected(_) => &mut self.rejected,
        };
        *c += 1;
    }
}

/// Upper bounds, in microseconds, of the [`DurationHistogram`] buckets:
/// from a LAN round trip to the negotiation timeout's order.
pub const DURATION_BUCKETS_US: [u64; 12] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

/// A fixed-bucket histogram of durations (no allocation; one per endpoint).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DurationHistogram {
    /// Observations per bucket of [`DURATION_BUCKETS_US`] (each bucket
    /// alone, not cumulative); those above the last bound are only in `count`.
    pub buckets: [u64; DURATION_BUCKETS_US.len()],
    /// All observations.
    pub count: u64,
    /// Their sum, microseconds.
    pub sum_us: u64,
}

impl DurationHistogram {
    /// Adds one observation.
    pub fn observe(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = DURATION_BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }
}

/// How full the endpoint's bounded tables are, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    /// Negotiations this GE started, in progress or lingering.
    pub initiated: usize,
    /// Peers' negotiations (responder and gateway), in progress or lingering.
    pub responding: usize,
    /// Token buckets of DDE sources.
    pub source_buckets: usize,
    /// Token buckets of claimed GE ids.
    pub ge_buckets: usize,
    /// Token buckets of destinations this GE negotiates with.
    pub destination_buckets: usize,
    /// Credentials remembered as failed.
    pub bad_credentials: usize,
    /// NAT-f ports reserved (running negotiations and installed flows).
    pub natf_ports: usize,
    /// Pair epochs held (fast open).
    pub epochs: usize,
}

/// The key of an initiator budget: the GE the directory names for the
/// destination, else the destination address itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Destination {
    Ge(GeId),
    Addr(IpAddr),
}

/// Everything a machine may touch besides itself.
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) own_bytes: &'a CredentialBytes,
    pub(crate) keys: &'a Keyring,
    pub(crate) peers: &'a mut Peers,
    pub(crate) unix_now: u64,
    pub(crate) out: &'a mut VecDeque<Transmit>,
}

impl Ctx<'_> {
    pub(crate) fn send(&mut self, dst: SocketAddr, payload: Vec<u8>) {
        self.out.push_back(Transmit { dst, payload });
    }

    pub(crate) fn own(&self) -> &Credential {
        &self.cfg.credential
    }

    /// Verifies a peer credential (cached) against the CA, validity and revocations.
    pub(crate) fn verify(&mut self, bytes: &CredentialBytes) -> Result<Credential> {
        self.peers.verify(bytes, &self.cfg.ca_public, self.unix_now)
    }
}

enum Machine {
    Initiator(Box<Initiator>),
    Responder(Box<Responder>),
    Transit(Box<Transit>),
    /// A flow this GE fast-opened, until its FOK.
    Fast(Box<FastOpener>),
}

impl Machine {
    fn next_timeout(&self) -> Option<(Instant, Timer)> {
        match self {
            Self::Initiator(m) => m.next_timeout(),
            Self::Responder(m) => m.next_timeout(),
            Self::Transit(m) => m.next_timeout(),
            Self::Fast(m) => m.next_timeout(),
        }
    }

    /// The flow a negotiation or fast open is for (a transit machine only
    /// passes one by).
    fn own_flow(&self) -> Option<FlowId> {
        match self {
            Self::Initiator(m) => Some(m.flow),
            Self::Responder(m) => Some(m.flow),
            Self::Fast(m) => Some(m.flow),
            Self::Transit(_) => None,
        }
    }

    fn is_finished(&self, now: Instant) -> bool {
        match self {
            Self::Initiator(m) => m.is_finished(now),
            Self::Responder(m) => m.is_finished(now),
            Self::Transit(m) => m.is_finished(now),
            // Removed at its FOK or its fallback.
            Self::Fast(_) => false,
        }
    }
}

/// The DPRP manager of one GE. See the [module docs](crate::dprp).
pub struct Endpoint {
    cfg: Config,
    own_bytes: CredentialBytes,
    keys: Keyring,
    peers: Peers,
    directory: Vec<(Prefix, GeId)>,
    /// NAT-f, gateway side: the hosts this GE fronts, by LAN address.
    fronted: BTreeMap<IpAddr, Vec<GroupId>>,
    /// NAT-f, remote side: this node's VINs.
    vins: BTreeMap<IpAddr, Vin>,
    natf_ports: PortPool,
    clock: (Instant, u64),
    rng: Rng,
    machines: BTreeMap<NegotiationId, Machine>,
    /// `machines` but transit ones, by flow in either direction
    /// ([`flow_key`]): a fast open asks whether its flow is being
    /// negotiated or opened, which a walk of every machine made quadratic
    /// in a burst of new flows.
    by_flow: FastMap<FlowId, Vec<NegotiationId>>,
    /// How many of `machines` are initiators (the rest are peers').
    initiated: usize,
    by_source: Buckets<IpAddr>,
    by_ge: Buckets<GeId>,
    by_destination: Buckets<Destination>,
    /// Fast opens accepted per peer GE.
    fast_by_ge: Buckets<GeId>,
    /// Signed NAKs to FOPs, over all sources (one bucket).
    fop_naks: Buckets<()>,
    /// Drawn on first use, so an endpoint never under load draws nothing.
    cookies: Option<CookieJar>,
    flows: BTreeMap<FlowId, NegotiationId>,
    /// Peers' negotiations that won a simultaneous open, with this GE's own
    /// negotiation they replace once their MPIT authenticates them.
    yielding: BTreeMap<NegotiationId, NegotiationId>,
    held: BTreeMap<FlowId, VecDeque<Vec<u8>>>,
    held_bytes: usize,
    negative: BTreeMap<FlowId, (FailReason, Instant)>,
    /// Pair epochs (fast open).
    epochs: Epochs,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Endpoint {
    /// Creates the endpoint. Ephemeral keys, nonces, negotiation ids and
    /// cookie secrets are drawn from `entropy`: [`Entropy::Os`] in a node
    /// (forward secrecy), [`Entropy::Seeded`] only where runs must repeat.
    /// `unix_now` is the wall-clock time at `now`, for credential validity.
    pub fn new(cfg: Config, entropy: Entropy, unix_now: u64, now: Instant) -> Result<Self> {
        if cfg.credential.node_key != cfg.node_key.public() {
            return Err(Error::InvalidKey("the credential names another node key"));
        }
        let own_bytes = CredentialBytes::from_credential(&cfg.credential)?;
        warn_uncovered(&cfg);
        let l = cfg.limits;
        let peers = Peers::new(l.peer_cache, l.bad_credentials, l.bad_credential_ttl);
        let natf_ports = PortPool::new(cfg.natf_ports.clone());
        Ok(Self {
            cfg,
            own_bytes,
            keys: Keyring::default(),
            peers,
            directory: Vec::new(),
            fronted: BTreeMap::new(),
            vins: BTreeMap::new(),
            natf_ports,
            clock: (now, unix_now),
            rng: Rng::new(entropy),
            machines: BTreeMap::new(),
            by_flow: FastMap::default(),
            initiated: 0,
            by_source: Buckets::new(l.dde_per_source, l.budget_entries),
            by_ge: Buckets::new(l.dde_per_ge, l.budget_entries),
            by_destination: Buckets::new(l.initiate_per_destination, l.budget_entries),
            fast_by_ge: Buckets::new(l.fast_open_per_ge, l.budget_entries),
            fop_naks: Buckets::new(l.fop_naks, 1),
            cookies: None,
            flows: BTreeMap::new(),
            yielding: BTreeMap::new(),
            held: BTreeMap::new(),
            held_bytes: 0,
            negative: BTreeMap::new(),
            epochs: Epochs::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    /// Replaces this GE's own credential (the GMS re-issued it after `ge
    /// set`: new groups, mode or `--protect` prefixes). Negotiations started
    /// from now on carry it; running ones finish with the old one, which
    /// peers still accept until it is revoked or expires. The credential
    /// must be signed by the CA, for this GE and its node key, and keep its
    /// overlay address (the TUN has it: that change needs a restart). Its
    /// validity period is not checked against this node's clock: the GMS
    /// just issued it by its own clock, and the peers judge it by theirs.
    pub fn set_credential(&mut self, credential: Credential) -> Result<()> {
        let bytes = CredentialBytes::from_credential(&credential)?;
        let verified = bytes
            .parse()?
            .verify(&self.cfg.ca_public, credential.not_before)?;
        let old = &self.cfg.credential;
        if verified.node_key != self.cfg.node_key.public() {
            return Err(Error::InvalidKey("the credential names another node key"));
        }
        if verified.info.id != old.info.id || verified.info.overlay != old.info.overlay {
            return Err(Error::invalid(
                "credential",
                "names another GE or overlay address",
            ));
        }
        if verified.serial != old.serial {
            tracing::info!(
                serial = verified.serial,
                groups = ?verified.info.groups,
                mode = ?verified.info.mode,
                "own credential replaced"
            );
        }
        if verified.serial != old.serial {
            // Groups, mode or prefixes may have changed: the peers' epochs
            // were decided with the old credential.
            self.epochs.end(|_| true);
        }
        self.cfg.credential = verified;
        self.own_bytes = bytes;
        warn_uncovered(&self.cfg);
        Ok(())
    }

    /// This GE's current credential.
    pub fn credential(&self) -> &Credential {
        &self.cfg.credential
    }

    /// This GE's id.
    pub fn ge(&self) -> GeId {
        self.cfg.credential.info.id
    }

    /// Adds a group key version (see [`Keyring::insert`]).
    /// A new version ends the group's pair epochs: new flows are negotiated
    /// under it, as the rotation wants (a member that left holds no epoch
    /// secret, but the rules may decide otherwise now).
    pub fn set_group_key(&mut self, group: GroupId, version: KeyVersion, key: GroupKey) {
        self.keys.insert(group, version, key);
        // Only a newer version: the node pushes every version it holds
        // again during a rotation's grace.
        self.epochs.end(|e| e.group == group && e.version < version);
    }

    /// Forgets a group's keys (and ends its pair epochs).
    pub fn remove_group(&mut self, group: GroupId) {
        self.keys.remove(group);
        self.epochs.end(|e| e.group == group);
    }

    /// Forgets a group's previous key version (end of the rotation grace period).
    pub fn retire_previous_key(&mut self, group: GroupId) {
        self.keys.retire_previous(group);
        let keys = &self.keys;
        self.epochs
            .end(|e| e.group == group && keys.get(e.group, e.version).is_none());
    }

    /// Refuses peer credentials valid from before `floor` (unix seconds)
    /// while this node may have missed revocations (it lost the GMS longer
    /// ago than its bound), or stops refusing them (`None`: the GMS is
    /// back). Credentials renewed since keep working.
    pub fn set_credential_floor(&mut self, floor: Option<u64>) {
        self.peers.set_not_before_floor(floor);
        if let Some(f) = floor {
            self.epochs.end(|e| e.peer.not_before < f);
        }
    }

    /// The GE of a cached peer credential with this serial (to find the
    /// flows a revocation ends).
    pub fn ge_of_serial(&self, serial: u64) -> Option<GeId> {
        self.peers.ge_of_serial(serial)
    }

    /// Refuses a GE from now on (its credential is revoked).
    pub fn revoke_ge(&mut self, ge: GeId) {
        self.peers.revoke_ge(ge);
        self.epochs.end(|e| e.peer_ge() == ge);
    }

    /// Refuses a credential serial from now on.
    pub fn revoke_serial(&mut self, serial: u64) {
        self.peers.revoke_serial(serial);
        self.epochs.end(|e| e.peer.serial == serial);
    }

    /// Sets which GE protects which addresses (from the GMS directory). A
    /// negotiation for a destination covered here fails unless that GE answers.
    pub fn set_directory(&mut self, entries: Vec<(Prefix, GeId)>) {
        self.directory = entries;
    }

    /// NAT-f, gateway side: replaces the table of hosts this GE fronts (from
    /// the GMS's host registrations). A NAT-f DDE is answered only for a
    /// host listed here whose address this GE's credential covers, and
    /// decided with the host's groups. Running negotiations and reserved
    /// ports are not touched: the node ends the flows of a host it removes.
    pub fn set_fronted_hosts(&mut self, hosts: Vec<FrontedHost>) {
        self.fronted = hosts
            .into_iter()
            .map(|h| {
                let mut g = h.groups;
                g.sort_unstable();
                g.dedup();
                (h.lip, g)
            })
            .collect();
    }

    /// NAT-f, remote side: replaces this node's VINs. A flow to a VIN is
    /// negotiated with the VIN's gateway as the destination end and asks
    /// it for a mapping to the host; its DPRP messages are addressed to
    /// the VIN (`vin:7717`), which the node sends to the gateway.
    pub fn set_vins(&mut self, vins: Vec<Vin>) {
        self.vins = vins.into_iter().map(|v| (v.vin, v)).collect();
    }

    /// NAT-f, gateway side: frees a port an installed flow held
    /// ([`Established::natf`](crate::dprp::Established::natf)); the node
    /// calls it when it removes the flow's mapping. True if it was reserved.
    /// A negotiation that fails frees its port by itself.
    pub fn release_natf_port(&mut self, protocol: u8, port: u16) -> bool {
        self.natf_ports.release(protocol, port)
    }

    /// The path-probe key shared with the GE whose certified node key is
    /// `peer_node_key` ([`crate::dprp::transcript::PairKey::probe_key`]),
    /// from the pair-key cache DPRP keeps anyway. The node gives it to that
    /// peer's `path::PathMachine`; only the two GEs can compute it.
    pub fn probe_key(
        &mut self,
        peer_node_key: &[u8; crate::keys::PUBLIC_KEY_LEN],
    ) -> Result<zeroize::Zeroizing<[u8; 32]>> {
        let pair = self.peers.pair_key(&self.cfg.node_key, peer_node_key)?;
        Ok(pair.probe_key())
    }

    /// The node key of GE `ge` from the newest verified credential of it
    /// in the credential cache (a peer this endpoint negotiated with), if
    /// any: the node learns a peer's key here when its directory has none.
    pub fn peer_node_key(&self, ge: GeId) -> Option<[u8; crate::keys::PUBLIC_KEY_LEN]> {
        self.peers.node_key_of(ge)
    }

    /// Re-anchors wall-clock time (after an NTP step or a suspend).
    pub fn handle_wall_clock(&mut self, unix_now: u64, now: Instant) {
        self.clock = (now, unix_now);
        // Failures judged on the old clock (expired, not yet valid) may not
        // hold on the new one.
        self.peers.clear_bad();
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            cache: self.peers.stats,
            credential_cache_refusals: self.peers.known_bad_hits,
            credential_verifications: self.peers.verifications,
            ..self.stats
        }
    }

    /// How full the bounded tables are.
    pub fn occupancy(&self) -> Occupancy {
        Occupancy {
            initiated: self.initiated,
            responding: self.machines.len() - self.initiated,
            source_buckets: self.by_source.len(),
            ge_buckets: self.by_ge.len(),
            destination_buckets: self.by_destination.len(),
            bad_credentials: self.peers.bad_len(),
            natf_ports: self.natf_ports.len(),
            epochs: self.epochs.len(),
        }
    }

    /// Whether this GE holds a live pair epoch with `peer` (fast open): a
    /// packet of an unknown flow from it may be a fast-opened flow's whose
    /// FOP is still on the way.
    pub fn holds_epoch_with(&self, peer: GeId, now: Instant) -> bool {
        self.epochs.has_peer(peer, now)
    }

    /// Negotiations in progress or lingering.
    pub fn negotiations(&self) -> usize {
        self.machines.len()
    }

    /// Packets held over all flows.
    pub fn held_packets(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }

    /// The first packet (or a later one) of a flow without a PIT entry: holds
    /// it and starts a negotiation unless one is running.
    pub fn handle_packet(
        &mut self,
        flow: FlowId,
        packet: Vec<u8>,
        now: Instant,
    ) -> Result<Verdict> {
        let _span = tracing::debug_span!("flow", %flow).entered();
        if let Some(cause) = self.check_negative(&flow, now) {
            return Ok(Verdict::Dropped(cause));
        }
        if !self.protects(flow.src) {
            return Err(Error::invalid("flow source", "not protected by this GE"));
        }
        if self.protects(flow.dst) {
            return Ok(Verdict::Local);
        }
        let running = self.flows.contains_key(&flow) || self.flows.contains_key(&flow.reversed());
        if !running {
            if self.cfg.fast_open {
                let copy = packet.clone();
                if let Some(v) = self.try_fast_open(flow, copy, now) {
                    return Ok(v);
                }
            }
            match self.begin(flow, Vec::new(), now) {
                Ok(_) => {}
                Err(Error::TableFull(_)) => return Ok(Verdict::Dropped(DropCause::Busy)),
                Err(Error::RateLimited(_)) => {
                    return Ok(Verdict::Dropped(DropCause::RateLimited));
                }
                Err(e) => return Err(e),
            }
        } else if !self.flows.contains_key(&flow) {
            // The reverse direction is being negotiated: attach to it.
            let id = self.flows[&flow.reversed()];
            self.flows.insert(flow, id);
        }
        Ok(self.hold(flow, packet))
    }

    /// Starts a negotiation without a packet (e.g. to carry a binding update
    /// or NAT-f option). Fails if one is running for the flow.
    pub fn initiate(
        &mut self,
        flow: FlowId,
        options: Vec<DprpOption>,
        now: Instant,
    ) -> Result<NegotiationId> {
        if self.flows.contains_key(&flow) {
            return Err(Error::UnexpectedMessage(
                "a negotiation for this flow is running",
            ));
        }
        if !self.protects(flow.src) {
            return Err(Error::invalid("flow source", "not protected by this GE"));
        }
        if self.protects(flow.dst) {
            return Err(Error::invalid(
                "flow destination",
                "behind this GE: nothing to negotiate",
            ));
        }
        self.negative.remove(&flow);
        self.begin(flow, options, now)
    }

    /// A DDE this gateway intercepted on its forwarding path: a datagram
    /// from `from` to `to` (port 7717), addressed to another GE. It is
    /// taken like [`Endpoint::handle_datagram`] takes a DDE, except that a
    /// NAT-f DDE is never this GE's own (its flow ends at a VIN; the GE it
    /// is addressed to is the end) and goes on to `to`, where its sender
    /// addressed it. Anything but a DDE is refused: only DDEs are
    /// intercepted, the other messages travel hop by hop.
    pub fn handle_transit_datagram(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<()> {
        let msg = Message::decode(datagram)?;
        let _span =
            tracing::debug_span!("dprp", id = %msg.id(), kind = ?msg.kind(), transit = true)
                .entered();
        match msg {
            Message::Dde(dde) => self.on_dde(from, Some(to), dde, datagram, now),
            Message::Fop(fop) => {
                self.on_transit_fop(from, &fop, now);
                Ok(())
            }
            _ => Err(Error::UnexpectedMessage(
                "only DDEs and FOPs are intercepted in transit",
            )),
        }
    }

    /// A DPRP datagram from the underlay address `from`, addressed to this GE.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<()> {
        let msg = Message::decode(datagram)?;
        let id = msg.id();
        let _span = tracing::debug_span!("dprp", %id, kind = ?msg.kind()).entered();
        let unix_now = self.unix_now(now);
        let msg = match msg {
            Message::Dde(dde) => return self.on_dde(from, None, dde, datagram, now),
            Message::Fop(fop) => return self.on_fop(from, fop, now),
            Message::Evict(evict) => return self.on_evict(evict, now),
            // Its fast open's, or a second one for a fast open finished
            // already (taken silently in `on_fok` when authentic).
            Message::Fok(fok) if !self.machines.contains_key(&id) => {
                return self.on_fok(fok, now);
            }
            other => other,
        };
        if let Some(Machine::Fast(_)) = self.machines.get(&id) {
            return match msg {
                Message::Fok(fok) => self.on_fok(fok, now),
                Message::Nak(nak) => self.on_fast_nak(id, nak, now),
                _ => Err(Error::UnexpectedMessage(
                    "message type does not fit a fast open",
                )),
            };
        }
        let Some(machine) = self.machines.get_mut(&id) else {
            return Err(Error::UnknownNegotiation);
        };
        let mut ctx = Ctx {
            cfg: &self.cfg,
            own_bytes: &self.own_bytes,
            keys: &self.keys,
            peers: &mut self.peers,
            unix_now,
            out: &mut self.transmits,
        };
        let outcome = match (machine, msg) {
            (Machine::Initiator(m), Message::Rgi(r)) => {
                m.handle_rgi(&mut ctx, from, r, datagram, now)?
            }
            (Machine::Initiator(m), Message::Cdn(c)) => m.handle_cdn(&mut ctx, c, now)?,
            (Machine::Initiator(m), Message::Nak(n)) => match m.handle_nak(&mut ctx, n, now) {
                Ok(o) => o,
                Err(e) => {
                    if matches!(e, Error::NakFromStranger(_)) {
                        self.stats.stranger_naks += 1;
                    }
                    return Err(e);
                }
            },
            (Machine::Initiator(m), Message::Cookie(c)) => {
                m.handle_cookie(&mut ctx, c)?;
                None
            }
            (Machine::Responder(m), Message::Mpit(p)) => {
                let o = m.handle_mpit(&mut ctx, from, p, datagram, now)?;
                if o.is_some() {
                    self.yield_to(id);
                }
                o.map(Outcome::Established)
            }
            (Machine::Transit(m), Message::Rgi(r)) => {
                m.handle_rgi(&mut ctx, from, r, datagram)?;
                None
            }
            (Machine::Transit(m), Message::Mpit(p)) => {
                if let Err(e) = m.handle_mpit(&mut ctx, p, datagram) {
                    if matches!(e, Error::NotOwner { .. }) {
                        self.stats.not_owner += 1;
                    }
                    return Err(e);
                }
                None
            }
            (Machine::Transit(m), Message::Cdn(c)) => m
                .handle_cdn(&mut ctx, c, datagram, now)?
                .map(Outcome::Established),
            (Machine::Transit(m), Message::Nak(_)) => {
                m.handle_nak(&mut ctx, datagram);
                None
            }
            _ => {
                return Err(Error::UnexpectedMessage(
                    "message type does not fit this GE's part",
                ));
            }
        };
        if let Some(o) = outcome {
            self.apply(id, o, now);
        }
        Ok(())
    }

    /// Wakes the endpoint: retransmissions, deadlines, expiries.
    pub fn handle_timeout(&mut self, now: Instant) {
        let unix_now = self.unix_now(now);
        let due: Vec<NegotiationId> = self
            .machines
            .iter()
            .filter(|(_, m)| m.next_timeout().is_some_and(|(t, _)| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(Machine::Fast(_)) = self.machines.get(&id) {
                self.fast_timeout(id, now);
                continue;
            }
            let mut outcome = None;
            if let Some(Machine::Initiator(m)) = self.machines.get_mut(&id) {
                let mut ctx = Ctx {
                    cfg: &self.cfg,
                    own_bytes: &self.own_bytes,
                    keys: &self.keys,
                    peers: &mut self.peers,
                    unix_now,
                    out: &mut self.transmits,
                };
                outcome = m.handle_timeout(&mut ctx, now);
            }
            if let Some(o) = outcome {
                self.apply(id, o, now);
            }
            if self.machines.get(&id).is_some_and(|m| m.is_finished(now)) {
                self.remove(id, now);
            }
        }
        self.negative.retain(|_, (_, exp)| *exp > now);
        self.epochs.expire(now);
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Endpoint::handle_timeout`] next, and for which timer.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let machines = self.machines.values().filter_map(Machine::next_timeout);
        let negatives = self
            .negative
            .values()
            .map(|(_, t)| (*t, Timer::NegativeExpiry));
        let epochs = self.epochs.next_expiry().map(|t| (t, Timer::EpochExpiry));
        machines.chain(negatives).chain(epochs).min()
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.clock.1 + now.saturating_duration_since(self.clock.0).as_secs()
    }

    /// The GE the directory names for `addr` (the longest prefix).
    fn directory_owner(&self, addr: IpAddr) -> Option<GeId> {
        self.directory
            .iter()
            .filter(|(p, _)| p.contains(addr))
            .max_by_key(|(p, _)| *p)
            .map(|(_, ge)| *ge)
    }

    fn protects(&self, ip: IpAddr) -> bool {
        self.cfg.protected.iter().any(|p| p.contains(ip))
    }

    fn check_negative(&mut self, flow: &FlowId, now: Instant) -> Option<DropCause> {
        match self.negative.get(flow) {
            Some((reason, exp)) if *exp > now => {
                self.stats.negative_drops += 1;
                Some(DropCause::Negative(reason.clone()))
            }
            Some(_) => {
                self.negative.remove(flow);
                None
            }
            None => None,
        }
    }

    fn begin(
        &mut self,
        flow: FlowId,
        options: Vec<DprpOption>,
        now: Instant,
    ) -> Result<NegotiationId> {
        // Only this GE's own negotiations count here: peers' DDEs, however
        // many, cannot stop it from starting its flows.
        let l = &self.cfg.limits;
        if self.initiated >= l.max_initiated.min(l.max_negotiations) {
            self.stats.busy_drops += 1;
            self.stats.initiator_busy += 1;
            return Err(Error::TableFull("initiated negotiations"));
        }
        // A VIN's flow goes to its gateway, whatever the directory says
        // about the VIN's address (nothing, normally).
        let natf = self.vins.get(&flow.dst).copied();
        let expected_peer = match natf {
            Some(v) => Some(v.gateway),
            None => self.directory_owner(flow.dst),
        };
        let dest = expected_peer.map_or(Destination::Addr(flow.dst), Destination::Ge);
        if !self.by_destination.take(dest, now) {
            self.stats.initiate_rate_limited += 1;
            return Err(Error::RateLimited("negotiations to this destination"));
        }
        // Secret, nonce and id in one draw; the buffer is wiped on every
        // path out (the secret lives on only inside the StaticSecret).
        let mut r = zeroize::Zeroizing::new([0u8; 56]);
        let id = loop {
            self.rng.fill(&mut r[..])?;
            let id = NegotiationId(u64::from_be_bytes(r[48..].try_into().expect("8 bytes")));
            if !self.machines.contains_key(&id) {
                break id;
            }
        };
        let mut ctx = Ctx {
            cfg: &self.cfg,
            own_bytes: &self.own_bytes,
            keys: &self.keys,
            peers: &mut self.peers,
            unix_now: self.clock.1 + now.saturating_duration_since(self.clock.0).as_secs(),
            out: &mut self.transmits,
        };
        let start = Start {
            id,
            flow,
            options,
            secret: zeroize::Zeroizing::new(r[..32].try_into().expect("32 bytes")),
            nonce: r[32..48].try_into().expect("16 bytes"),
            claims: own_claims(&ctx),
            expected_peer,
            natf,
        };
        let m = Initiator::start(&mut ctx, start, now)?;
        tracing::debug!(%id, %flow, "negotiation started");
        self.insert_machine(id, Machine::Initiator(Box::new(m)));
        self.flows.insert(flow, id);
        self.stats.started += 1;
        Ok(id)
    }

    fn hold(&mut self, flow: FlowId, packet: Vec<u8>) -> Verdict {
        let q = self.held.entry(flow).or_default();
        if q.len() >= self.cfg.limits.hold_per_flow
            || self.held_bytes + packet.len() > self.cfg.limits.hold_total_bytes
        {
            self.stats.hold_overflow += 1;
            return Verdict::Dropped(DropCause::QueueFull);
        }
        self.held_bytes += packet.len();
        q.push_back(packet);
        Verdict::Held
    }

    fn take_held(&mut self, flow: &FlowId) -> Vec<Vec<u8>> {
        let q: Vec<Vec<u8>> = self.held.remove(flow).map(Vec::from).unwrap_or_default();
        self.held_bytes -= q.iter().map(Vec::len).sum::<usize>();
        q
    }

    /// A DDE from `from`; `to` is where it was addressed when this gateway
    /// intercepted it in transit, `None` when it was addressed to this GE.
    fn on_dde(
        &mut self,
        from: SocketAddr,
        to: Option<SocketAddr>,
        dde: Dde,
        raw: &[u8],
        now: Instant,
    ) -> Result<()> {
        let unix_now = self.unix_now(now);
        let mut ctx = Ctx {
            cfg: &self.cfg,
            own_bytes: &self.own_bytes,
            keys: &self.keys,
            peers: &mut self.peers,
            unix_now,
            out: &mut self.transmits,
        };
        let handled = match self.machines.get(&dde.id) {
            Some(Machine::Responder(m)) => m.handle_dde_again(&mut ctx, from, raw)?,
            Some(Machine::Transit(m)) => m.handle_dde_again(&mut ctx, raw)?,
            Some(Machine::Initiator(_)) => {
                return Err(Error::invalid("DDE", "loops back to its initiator"));
            }
            // Ids are drawn at random: a DDE with a fast open's is a new one.
            Some(Machine::Fast(_)) => {
                return Err(Error::UnexpectedMessage("a DDE with a fast open's id"));
            }
            None => false,
        };
        if handled {
            return Ok(());
        }
        // Unknown, or a different DDE replacing unauthenticated state: a new
        // negotiation. The cheap refusals come first, cheapest first, so a
        // flood is dropped before any signature or X25519 work (and before
        // it can displace the state it would replace).
        if !self.by_source.take(from.ip(), now) {
            self.stats.rate_limited += 1;
            return Err(Error::RateLimited("DDEs from this source"));
        }
        // A NAT-f DDE's flow ends at the remote's VIN, which means nothing
        // here: the gateway it is addressed to is its end (and refuses it
        // unless the host is its own). One intercepted on the way to
        // another gateway is passed on, even if this one fronts a host at
        // the same private address.
        let natf = if self.cfg.serves_natf() && to.is_none() {
            natf_option(&dde.options)?
        } else {
            None
        };
        let is_end = natf.is_some() || self.cfg.protected.iter().any(|p| p.contains(dde.flow.dst));
        if is_end && dde.hops.is_empty() && !self.admit(from, &dde, now)? {
            return Ok(());
        }
        if self.peers.is_known_bad(&dde.credential, unix_now) {
            return Err(Error::KnownBadCredential);
        }
        // The claimed id is unverified, but a forger who claims another GE's
        // id only spends that GE's budget here, never more than its source's.
        let claimed = dde.credential.parse()?.claimed_ge();
        if !self.by_ge.take(claimed, now) {
            self.stats.rate_limited += 1;
            return Err(Error::RateLimited("DDEs from this GE"));
        }
        self.remove_machine(dde.id);
        let l = &self.cfg.limits;
        if self.machines.len() - self.initiated >= l.max_responding
            || self.machines.len() >= l.max_negotiations
        {
            self.stats.busy_drops += 1;
            self.stats.responder_busy += 1;
            return Err(Error::TableFull("responder negotiations"));
        }
        let mut ctx = Ctx {
            cfg: &self.cfg,
            own_bytes: &self.own_bytes,
            keys: &self.keys,
            peers: &mut self.peers,
            unix_now,
            out: &mut self.transmits,
        };
        if !is_end {
            if !ctx.own().info.kind.is_gateway() {
                return Err(Error::invalid("DDE", "destination is not behind this GE"));
            }
            let m = Transit::start(&mut ctx, from, to, dde, raw, now)?;
            self.insert_machine(m.id, Machine::Transit(Box::new(m)));
            return Ok(());
        }
        // The source must be the initiator's before the DDE may touch any
        // state: a forged one must not even cancel this GE's own negotiation
        // in a simultaneous open.
        let initiator = match check_initiator(&mut ctx, from, &dde) {
            Ok(c) => c,
            Err(e) => {
                if matches!(e, Error::NotOwner { .. }) {
                    self.stats.not_owner += 1;
                }
                return Err(e);
            }
        };
        // Simultaneous open: both ends started a negotiation for the same
        // connection. The lower GE id keeps its own; the other answers.
        let mine = [dde.flow, dde.flow.reversed()]
            .into_iter()
            .find_map(|f| self.flows.get(&f).map(|id| (f, *id)))
            .filter(|(_, id)| matches!(self.machines.get(id), Some(Machine::Initiator(_))));
        // The credential is CA-signed but public: anyone can copy it into a
        // DDE, and nothing in a DDE proves the sender holds its node key. So
        // the loser only *answers* here; its own negotiation is given up
        // when the peer's MPIT proves the peer's identity (the pair-key
        // tag), never on the DDE alone.
        let mut yields = None;
        if let Some((_, own_id)) = mine {
            if ctx.own().info.id < initiator.info.id {
                return Err(Error::UnexpectedMessage(
                    "simultaneous open: this GE's negotiation wins",
                ));
            }
            tracing::debug!(id = %own_id, "simultaneous open: the peer's negotiation wins once authenticated");
            yields = Some(own_id);
        }
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        self.rng.fill(&mut secret[..])?;
        let (id, flow) = (dde.id, dde.flow);
        let grant = match natf {
            Some(req) => Some(self.natf_grant(from, &dde, &initiator, req, unix_now)?),
            None => None,
        };
        let mut ctx = Ctx {
            cfg: &self.cfg,
            own_bytes: &self.own_bytes,
            keys: &self.keys,
            peers: &mut self.peers,
            unix_now,
            out: &mut self.transmits,
        };
        let m = match Responder::start(&mut ctx, from, dde, initiator, raw, &secret, grant, now) {
            Ok(m) => m,
            Err(e) => {
                self.natf_ports.release_negotiation(id);
                return Err(e);
            }
        };
        self.insert_machine(id, Machine::Responder(Box::new(m)));
        if let Some(own_id) = yields {
            // The flows stay with this GE's own negotiation until then.
            self.yielding.insert(id, own_id);
            return Ok(());
        }
        for f in [flow, flow.reversed()] {
            if self.held.contains_key(&f) || self.flows.contains_key(&f) {
                self.flows.insert(f, id);
            }
        }
        Ok(())
    }

    fn apply(&mut self, id: NegotiationId, outcome: Outcome, now: Instant) {
        let flows: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, n)| **n == id)
            .map(|(f, _)| *f)
            .collect();
        // A revocation that came while the negotiation ran: the credential
        // was valid when it was checked, not any more (issue 9 #3).
        let outcome = match outcome {
            Outcome::Established(e)
                if e.peer_serial
                    .is_some_and(|s| self.peers.is_revoked(e.peer, s)) =>
            {
                tracing::info!(%id, peer = %e.peer, "peer revoked during the negotiation: not established");
                self.stats.revoked_at_completion += 1;
                Outcome::Failed(FailReason::Rejected(Error::Revoked(e.peer.0)))
            }
            other => other,
        };
        match outcome {
            Outcome::Established(mut e) => {
                self.stats.established += 1;
                // A negotiated entry replaces a fast-opened one: its FOP
                // must not be sent again (the peer would install other keys).
                self.cancel_fast(&e.flow);
                if let Some(seed) = e.epoch.take()
                    // Under the group's current key only: a negotiation that
                    // started before a rotation leaves none.
                    && self.keys.current(seed.group) == Some(seed.version)
                {
                    // Not past either end's credential: expiry refuses
                    // flows as a revocation does.
                    let unix_now = self.unix_now(now);
                    let left = seed
                        .peer
                        .not_after
                        .min(self.cfg.credential.not_after)
                        .saturating_sub(unix_now);
                    let life = self
                        .cfg
                        .timing
                        .epoch_lifetime
                        .min(Duration::from_secs(left));
                    let (id, cut) = (seed.secret.id(), life < self.cfg.timing.epoch_lifetime);
                    self.epochs.insert(*seed, now, now + life, EPOCHS_PER_PEER);
                    if cut && let Some(e) = self.epochs.get_mut(&id, now) {
                        e.cut_short();
                    }
                }
                if e.position == Position::Responder && e.natf.is_some() {
                    // The flow is installed: its port is the node's now.
                    self.natf_ports.confirm(id);
                }
                if let Some(started) = e.started {
                    self.stats
                        .durations
                        .observe(now.saturating_duration_since(started));
                }
                let flow = e.flow;
                self.events.push_back(Event::Established(e));
                for f in [flow, flow.reversed()] {
                    if flows.contains(&f) {
                        self.flows.remove(&f);
                        let packets = self.take_held(&f);
                        if !packets.is_empty() {
                            self.events.push_back(Event::Release { flow: f, packets });
                        }
                    }
                }
            }
            Outcome::Failed(reason) => {
                match reason {
                    FailReason::Rejected(Error::NotOwner { .. }) => self.stats.not_owner += 1,
                    FailReason::Rejected(Error::BadNatfAnswer(_)) => {
                        self.stats.natf_bad_answers += 1;
                    }
                    _ => {}
                }
                self.fail_flows(&flows, reason, now);
            }
        }
    }

    fn fail_flows(&mut self, flows: &[FlowId], reason: FailReason, now: Instant) {
        for f in flows {
            self.flows.remove(f);
            let dropped = self.take_held(f).len();
            self.stats.failed += 1;
            self.stats.failed_by.count(&reason);
            self.stats.failed_drops += dropped as u64;
            tracing::debug!(flow = %f, %reason, dropped, "negotiation failed");
            if self.negative.len() >= self.cfg.limits.max_negative
                && let Some(oldest) = self
                    .negative
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(f, _)| *f)
            {
                self.negative.remove(&oldest);
            }
            self.negative
                .insert(*f, (reason.clone(), now + self.cfg.timing.negative_ttl));
            self.events.push_back(Event::Failed {
                flow: *f,
                reason: reason.clone(),
                dropped_packets: dropped,
            });
        }
    }

    /// NAT-f, gateway side: checks a DDE's mapping request and reserves
    /// its port, or refuses it with a signed NAK (the remote's application
    /// fails at once, with ICMP, instead of waiting for a timeout). The
    /// host must be fronted here and covered by this GE's credential, and
    /// share a group with the initiator's claims that this GE holds a key
    /// for: the host is closed.
    fn natf_grant(
        &mut self,
        from: SocketAddr,
        dde: &Dde,
        initiator: &Credential,
        req: NatfMapping,
        unix_now: u64,
    ) -> Result<NatfGrant> {
        let own = &self.cfg.credential;
        let host = self.fronted.get(&req.lip).filter(|_| own.covers(req.lip));
        let refusal = match host {
            None => Err(RefuseCode::UnknownHost),
            Some(groups) => host_groups(groups, own, &self.keys, initiator, &dde.claims),
        };
        let refusal =
            refusal.and_then(
                |groups| match self.natf_ports.reserve(dde.flow.protocol, dde.id) {
                    Some(port) => Ok(NatfGrant {
                        mapping: NatfMapping {
                            lip: req.lip,
                            reserved_port: port,
                        },
                        groups,
                    }),
                    None => Err(RefuseCode::NoPort),
                },
            );
        match refusal {
            Ok(grant) => {
                tracing::debug!(id = %dde.id, lip = %req.lip, port = grant.mapping.reserved_port, "NAT-f port reserved");
                Ok(grant)
            }
            Err(code) => {
                tracing::debug!(id = %dde.id, initiator = %initiator.info.id, lip = %req.lip, ?code, "NAT-f DDE refused");
                self.stats.natf_refused += 1;
                let mut ctx = Ctx {
                    cfg: &self.cfg,
                    own_bytes: &self.own_bytes,
                    keys: &self.keys,
                    peers: &mut self.peers,
                    unix_now,
                    out: &mut self.transmits,
                };
                let h0 = tr::dde_hash(&dde.core()?);
                let bytes = nak(&ctx, dde.id, &h0, code)?;
                ctx.send(from, bytes);
                Err(Error::NatfRefused(code))
            }
        }
    }

    /// Under load, a direct DDE goes further only with a valid cookie; without
    /// one it is answered with a COOKIE (a MAC, no state) and `Ok(false)`.
    fn admit(&mut self, from: SocketAddr, dde: &Dde, now: Instant) -> Result<bool> {
        if self.machines.len() - self.initiated < self.cfg.limits.cookie_threshold {
            return Ok(true);
        }
        let jar = match &mut self.cookies {
            Some(jar) => jar,
            None => {
                let mut s = zeroize::Zeroizing::new([0u8; 32]);
                self.rng.fill(&mut s[..])?;
                self.cookies.insert(CookieJar::new(*s, now))
            }
        };
        if jar.is_due(now) {
            let mut s = zeroize::Zeroizing::new([0u8; 32]);
            self.rng.fill(&mut s[..])?;
            jar.rotate(*s, now);
        }
        let echoed = dde.options.iter().find_map(|o| match o {
            DprpOption::Cookie(c) => Some(c),
            _ => None,
        });
        match echoed {
            Some(c) if jar.check(from, dde.id, c) => {
                self.stats.cookies_accepted += 1;
                return Ok(true);
            }
            Some(_) => self.stats.cookie_refusals += 1,
            None => {}
        }
        let c = jar.make(from, dde.id);
        let reply = Cookie {
            id: dde.id,
            cookie: c,
            binder: cookie::binder(&dde.nonce, dde.id, &c),
        };
        self.transmits.push_back(Transmit {
            dst: from,
            payload: Message::Cookie(reply).encode()?,
        });
        self.stats.cookies_sent += 1;
        tracing::trace!(id = %dde.id, "under load: COOKIE sent");
        Ok(false)
    }

    /// A simultaneous open this GE lost, now that the peer's negotiation
    /// `id` is authenticated and confirmed: its own negotiation ends and
    /// its flows (and held packets) move to the peer's.
    fn yield_to(&mut self, id: NegotiationId) {
        let Some(own_id) = self.yielding.remove(&id) else {
            return;
        };
        if !matches!(self.machines.get(&own_id), Some(Machine::Initiator(_))) {
            return;
        }
        tracing::debug!(id = %own_id, peer = %id, "simultaneous open: yielded to the peer's negotiation");
        self.remove_machine(own_id);
        for n in self.flows.values_mut() {
            if *n == own_id {
                *n = id;
            }
        }
    }

    /// Adds a machine to the table, keeping the initiator count and the
    /// index by flow.
    fn insert_machine(&mut self, id: NegotiationId, m: Machine) {
        if matches!(m, Machine::Initiator(_) | Machine::Fast(_)) {
            self.initiated += 1;
        }
        if let Some(flow) = m.own_flow() {
            self.by_flow.entry(flow_key(&flow)).or_default().push(id);
        }
        if let Some(old) = self.machines.insert(id, m) {
            self.forget(id, &old);
        }
    }

    /// Removes a machine from the table, keeping the initiator count and
    /// the index by flow.
    fn remove_machine(&mut self, id: NegotiationId) -> Option<Machine> {
        let m = self.machines.remove(&id)?;
        // A NAT-f port its negotiation reserved and no entry took over
        // (failed, timed out, refused, or replaced by another DDE).
        self.natf_ports.release_negotiation(id);
        self.yielding.remove(&id);
        self.forget(id, &m);
        Some(m)
    }

    /// Takes machine `id`, gone from the table or replaced there by
    /// another of the same id (indexed already), out of the counts.
    fn forget(&mut self, id: NegotiationId, m: &Machine) {
        if matches!(m, Machine::Initiator(_) | Machine::Fast(_)) {
            self.initiated -= 1;
        }
        let Some(flow) = m.own_flow() else {
            return;
        };
        let key = flow_key(&flow);
        if let Some(ids) = self.by_flow.get_mut(&key) {
            // The first entry of `id`: a replacing machine's own entry
            // was pushed after it.
            if let Some(at) = ids.iter().position(|i| *i == id) {
                ids.swap_remove(at);
            }
            if ids.is_empty() {
                self.by_flow.remove(&key);
            }
        }
    }

    /// The lowest id among the machines of `flow` or its reverse (not
    /// transit ones) that `pick` takes: what a walk of the table in id
    /// order would find first.
    fn machine_of(&self, flow: &FlowId, pick: impl Fn(&Machine) -> bool) -> Option<NegotiationId> {
        let found = self.by_flow.get(&flow_key(flow)).and_then(|ids| {
            ids.iter()
                .copied()
                .filter(|id| self.machines.get(id).is_some_and(&pick))
                .min()
        });
        // In tests every look-up is checked against the walk it replaced.
        #[cfg(test)]
        {
            let rev = flow.reversed();
            let walk = self.machines.iter().find_map(|(id, m)| {
                let f = m.own_flow()?;
                ((f == *flow || f == rev) && pick(m)).then_some(*id)
            });
            assert_eq!(found, walk, "the index by flow disagrees for {flow}");
        }
        found
    }

    /// Whether the index by flow holds exactly the table's machines.
    #[cfg(test)]
    pub(crate) fn flow_index_matches(&self) -> bool {
        let mut want: Vec<(FlowId, NegotiationId)> = self
            .machines
            .iter()
            .filter_map(|(id, m)| m.own_flow().map(|f| (flow_key(&f), *id)))
            .collect();
        let mut have: Vec<(FlowId, NegotiationId)> = self
            .by_flow
            .iter()
            .flat_map(|(f, ids)| ids.iter().map(|id| (*f, *id)))
            .collect();
        want.sort_unstable();
        have.sort_unstable();
        want == have && self.by_flow.values().all(|v| !v.is_empty())
    }

    fn remove(&mut self, id: NegotiationId, now: Instant) {
        self.remove_machine(id);
        // Flows still attached to a finished negotiation never got an entry
        // (e.g. a responder whose MPIT never came): their packets are dropped.
        let orphans: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, n)| **n == id)
            .map(|(f, _)| *f)
            .collect();
        if !orphans.is_empty() {
            self.fail_flows(&orphans, FailReason::Timeout, now);
        }
    }
}

/// The peers judge this GE's flows by its credential, not by its
/// configuration: say so once, rather than have every flow from an
/// uncovered address refused with no hint why.
fn warn_uncovered(cfg: &Config) {
    for p in &cfg.protected {
        let overlay = Prefix::host(IpAddr::V4(cfg.credential.info.overlay));
        let overlay6 = Prefix::host(IpAddr::V6(cfg.credential.overlay6));
        let covered = *p == overlay
            || *p == overlay6
            || cfg
                .credential
                .prefixes
                .iter()
                .any(|q| q.contains(p.addr()) && q.prefix_len() <= p.prefix_len());
        if !covered {
            tracing::warn!(prefix = %p, "protected prefix not named in this GE's credential: peers will refuse its flows");
        }
    }
}

#[cfg(test)]
impl Endpoint {
    /// How many machines still hold an ephemeral secret.
    fn ephemerals_held(&self) -> usize {
        self.machines
            .values()
            .filter(|m| match m {
                Machine::Initiator(i) => i.holds_ephemeral(),
                Machine::Responder(r) => r.holds_ephemeral(),
                Machine::Transit(_) | Machine::Fast(_) => false,
            })
            .count()
    }
}

/// A flow and its reverse under one key: the lower of the two.
fn flow_key(flow: &FlowId) -> FlowId {
    let rev = flow.reversed();
    if rev < *flow { rev } else { *flow }
}

#[cfg(test)]
mod tests {
    use crate::ge::Mode;
    use crate::sim::{GeSpec, LinkConfig, Sim};

    #[test]
    fn ephemerals_are_wiped_when_used_not_at_the_end_of_the_linger_time() {
        let mut sim = Sim::new(7, LinkConfig::default());
        let a = sim.add_ge(GeSpec::host(1, "a", Mode::Open, &[1], "100.64.0.1"));
        let b = sim.add_ge(GeSpec::host(2, "b", Mode::Open, &[1], "100.64.0.2"));
        sim.send_udp(a, "100.64.0.2".parse().unwrap(), 4000, 22, b"x");
        assert_eq!(sim.endpoint(a).ephemerals_held(), 1, "the DDE's secret");
        sim.run_for(std::time::Duration::from_millis(500));
        assert!(sim.established(a).is_some() && sim.established(b).is_some());
        // Both machines linger (to answer retransmissions) without their
        // ephemerals: a memory dump now finds no secret of this exchange.
        assert_eq!(sim.endpoint(a).negotiations(), 1);
        assert_eq!(sim.endpoint(b).negotiations(), 1);
        assert_eq!(sim.endpoint(a).ephemerals_held(), 0);
        assert_eq!(sim.endpoint(b).ephemerals_held(), 0);
    }

    /// The index by flow follows the machine table through negotiations
    /// from both ends at once (simultaneous opens), fast opens (running,
    /// lost and sent again, confirmed), lingering machines (found from
    /// either direction of their flow) and their expiry; every look-up in
    /// it is also checked against the walk it replaced (`machine_of`).
    #[test]
    fn the_index_by_flow_matches_the_machines_throughout() {
        use crate::dprp::config::Prefix;
        use crate::ge::GeId;
        use std::time::Duration;
        let mut sim = Sim::new(11, LinkConfig::default());
        let fast = |c: &mut crate::dprp::Config| c.fast_open = true;
        let a = sim.add_ge_with(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"), fast);
        let b = sim.add_ge_with(GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"), fast);
        let (ia, ib) = ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        let dir = vec![(Prefix::host(ia), GeId(1)), (Prefix::host(ib), GeId(2))];
        sim.endpoint(a).set_directory(dir.clone());
        sim.endpoint(b).set_directory(dir);
        let check = |sim: &mut Sim, when: &str| {
            for n in [a, b] {
                assert!(sim.endpoint(n).flow_index_matches(), "{when}: node {n:?}");
            }
        };
        // A negotiation makes the pair's epoch; both ends open one flow at
        // once (crossing DDEs).
        sim.send_udp(a, ib, 4000, 53, b"first");
        sim.send_udp(b, ia, 53, 4000, b"crossing");
        check(&mut sim, "crossing opens");
        sim.run_for(Duration::from_millis(20));
        check(&mut sim, "during");
        sim.run_for(Duration::from_secs(1));
        check(&mut sim, "settled");
        // A burst of fast opens, some of them lost once (retransmitted).
        let mut lost = 0;
        sim.set_tamper(move |_, p| {
            if lost < 3
                && let Ok(crate::dprp::msg::Message::Fop(_)) = crate::dprp::msg::Message::decode(p)
            {
                lost += 1;
                p.clear();
            }
        });
        for port in 5000..5040 {
            sim.send_udp(a, ib, port, 53, b"burst");
        }
        assert!(sim.endpoint(a).negotiations() >= 40, "fast opens running");
        check(&mut sim, "burst sent");
        for _ in 0..50 {
            sim.run_for(Duration::from_millis(10));
            check(&mut sim, "burst settling");
        }
        // The negotiated flow's machines linger: a fast open of it now is
        // refused (it is negotiated again) rather than raced.
        let flow = crate::flow::FlowId {
            src: ia,
            dst: ib,
            protocol: crate::flow::protocol::UDP,
            src_port: 4000,
            dst_port: 53,
        };
        let e = sim.endpoint(a);
        assert!(e.negotiation_of(&flow).is_some());
        assert!(e.negotiation_of(&flow.reversed()).is_some());
        assert!(e.fast_open_of(&flow).is_none());
        // The lost FOPs went again and every fast open was confirmed.
        let st = e.stats();
        assert!(st.fast_confirmed >= 40, "{st:?}");
        assert_eq!(st.fast_fallbacks, 0, "{st:?}");
        // Everything ends: the index empties with the table.
        sim.run_for(Duration::from_secs(120));
        check(&mut sim, "expired");
        for n in [a, b] {
            assert_eq!(sim.endpoint(n).negotiations(), 0);
            assert!(sim.endpoint(n).by_flow.is_empty());
        }
    }
}
