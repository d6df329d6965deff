//! The PIT (Process Information Table): flow id -> what this GE does with the
//! flow's packets, and for protected flows the cipher state.
//!
//! **Keys and lookups.** An entry is keyed by the [`FlowId`] of the flow's
//! first packet as this GE saw it (source = the side that started the flow,
//! which is the side that sent the DDE). Packets of the reply direction carry
//! the reversed five-tuple; [`Pit::lookup`] and [`Pit::handle_packet`] try the
//! id as given, then reversed, and report which matched as a [`Direction`].
//! So the caller always passes the packet's own [`FlowId`]
//! ([`crate::packet::Packet::flow_id`]), inbound or outbound. Inserting a flow
//! replaces an entry stored under either orientation, so a renegotiation
//! started by the other end replaces the old entry cleanly.
//!
//! **What to call.** The DPRP machine calls [`Pit::insert`] (tentative on
//! MPIT, then [`Pit::confirm`] on CDN, or directly active); the packet path
//! calls [`Pit::handle_packet`] for every packet and acts on the
//! [`Disposition`]; the key store calls [`Pit::on_key_rotation`] and
//! [`Pit::on_key_erased`]; a timer calls [`Pit::expire_some`]
//! (at [`Pit::next_expiry`]). After each of these and after an insert,
//! drain [`Pit::poll_event`]: it names the flows to renegotiate and those
//! evicted to make room.
//!
//! **Rekeying.** When an entry with traffic keys is replaced by one with new
//! keys, the old receive state stays for [`PitConfig::rekey_grace`] so
//! packets already in flight under the old keys still open. The packet's
//! counter picks which key to try first (new keys count from zero, old ones
//! are usually far along); when that one refuses it, the other is tried on
//! the original bytes, because a busy flow's new counters soon reach the old
//! ones. Each key keeps its own replay window, so no packet opens twice.
//!
//! **Ageing** costs nothing per packet (a packet only stores when it
//! passed): entries wait in a wheel of one-second slots (`ageing.rs`) and
//! each is looked at once per idle period; a run takes a budget, so many
//! flows ageing out together are removed in slices.
//!
//! Sans-IO: time is an argument. The table is a `HashMap` (keyed hashing:
//! flow ids come from the network); everything it returns in bulk is sorted,
//! so outputs do not depend on hash order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::action::Action;
use crate::flow::{FastMap, FlowId};
use crate::ge::{GeId, GroupId};
use crate::keys::{FlowKeys, KeyVersion};
use crate::pccom::{CryptoState, FlowCrypto, Limits, PacketAead, RingAesGcm, SharedCrypto};
use crate::{Error, Result};

mod ageing;
pub use ageing::SLOT as AGE_SLOT;
use ageing::Wheel;

/// An entry idle this long may be evicted when the table is full and a new
/// flow needs its place (the least recently used first): a flow quiet for
/// a second under that pressure is negotiated again when it speaks.
pub const EVICT_IDLE: Duration = Duration::from_secs(1);
/// Most up-to-date filings of entries that may go looked at for a victim
/// per insert into a full table; up-to-date filings of any entry, four
/// times as many (those of entries removed or used since have their own
/// bound, [`EVICT_STALE`]).
const EVICT_SCAN: usize = 256;
/// Filings taken from the wheel at a time while looking for a victim: of
/// the first that hold one, the idlest goes. Looking further would find an
/// entry idle a little longer at a cost per insert that grows with it
/// (taking all 256 at once made an insert into a full table 16-23 us
/// against 0.9-2.1 us, `pit_packet` bench, docs/BENCHMARKS.md).
const EVICT_CHUNK: usize = 8;
/// Most filings of entries removed, replaced or used since they were
/// filed that an insert into a full table sets right on its way to a
/// victim (dropped, or filed again where they belong). Each is set right
/// once, so this bounds one insert's pause, not the work.
const EVICT_STALE: usize = 16 * EVICT_SCAN;

/// The largest IP packet (plus its PCCOM trailer) the grace path may copy.
const MAX_PACKET: usize = u16::MAX as usize + crate::pccom::TRAILER_LEN;

/// PIT limits and timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PitConfig {
    /// The most entries. [`Pit::insert`] of a new flow into a full table
    /// evicts the least recently used entry idle for [`EVICT_IDLE`] or
    /// longer ([`PitEvent::Evicted`]), from the new flow's own peer when
    /// that peer holds its fair share of the table or more, and fails
    /// with [`Error::PitFull`] when none may go.
    pub max_entries: usize,
    /// An entry unused for this long ages out (one that only data-path
    /// workers use: when the deadline comes after its last packet, whose
    /// time the workers give to the millisecond; a use without a time
    /// counts when the deadline comes, so one to two of these).
    pub idle_timeout: Duration,
    /// How long a replaced entry's receive keys still open packets.
    pub rekey_grace: Duration,
    /// Packet limits of every flow's cipher state.
    pub limits: Limits,
}

impl Default for PitConfig {
    fn default() -> Self {
        Self {
            max_entries: 65_536,
            idle_timeout: Duration::from_secs(300),
            rekey_grace: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

/// Where a packet comes from, relative to this GE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// From a host this GE protects (its own stack, or a terminal behind a
    /// gateway): protected flows are protected.
    Local,
    /// From the network: protected flows are unprotected.
    Remote,
}

/// Which orientation of an entry's key a packet's flow id matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The packet travels like the flow's first packet.
    Forward,
    /// The packet travels the other way (a reply).
    Reverse,
}

/// Whether an entry may carry packets yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryState {
    /// Created from MPIT, waiting for CDN: hold the flow's packets.
    Tentative,
    /// Final: apply the action.
    Active,
}

/// What the packet path does with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// No entry: hold the packet and start a negotiation.
    Unknown,
    /// The entry is tentative: hold the packet.
    Hold,
    /// Send the first `len` bytes of the buffer on (protected, unprotected or
    /// unchanged, as the action says).
    Forward {
        /// Length of the packet now in the buffer.
        len: usize,
    },
    /// Policy drop.
    Drop,
}

/// Why a flow must be negotiated again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RenegotiateReason {
    /// Its group key was rotated to a newer version.
    KeyRotation,
    /// Its send counter reached the rekey limit.
    PacketLimit,
}

/// Something the owner of the PIT must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PitEvent {
    /// Run DPRP again for this flow; the current entry keeps working until
    /// the new one replaces it (or its key version is erased).
    Renegotiate {
        /// The flow, as keyed in the PIT.
        flow: FlowId,
        /// Why.
        reason: RenegotiateReason,
    },
    /// The entry was removed to make room for a new flow in a full table
    /// (it had been idle for at least [`EVICT_IDLE`]): what belongs to the
    /// flow elsewhere goes too. Its next packet negotiates it again.
    Evicted {
        /// The flow, as keyed in the PIT.
        flow: FlowId,
        /// The entry's peer, if it named one.
        peer: Option<GeId>,
        /// The opening that installed the entry ([`NewEntry::with_opening`]):
        /// the peer is told, so it drops the same entry and no other.
        opening: Option<u64>,
    },
}

/// Packet and byte counters of one entry (bytes are plain packet lengths).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets forwarded that came from the local side.
    pub packets_local: u64,
    /// Bytes of those packets.
    pub bytes_local: u64,
    /// Packets forwarded that came from the network.
    pub packets_remote: u64,
    /// Bytes of those packets.
    pub bytes_remote: u64,
    /// Packets refused: failed authentication, replays, malformed, policy drops.
    pub rejected: u64,
}

impl FlowStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &FlowStats) {
        self.packets_local += other.packets_local;
        self.bytes_local += other.bytes_local;
        self.packets_remote += other.packets_remote;
        self.bytes_remote += other.bytes_remote;
        self.rejected += other.rejected;
    }
}

/// The description of an entry to insert; see the constructors.
#[derive(Debug)]
pub struct NewEntry {
    action: Action,
    peer: Option<GeId>,
    key_version: Option<KeyVersion>,
    keys: Option<FlowKeys>,
    tentative: bool,
    opening: Option<u64>,
}

impl NewEntry {
    /// An entry from the parts a negotiation reports (for instance the fields
    /// of `dprp::Established`). Traffic keys and a key version go with
    /// [`Action::Protect`] and only with it; anything else is
    /// [`Error::InvalidField`].
    pub fn from_parts(
        action: Action,
        peer: GeId,
        key_version: Option<KeyVersion>,
        keys: Option<FlowKeys>,
    ) -> Result<Self> {
        match (action, key_version, keys) {
            (Action::Protect(group), Some(version), Some(keys)) => {
                Ok(Self::protect(group, version, peer, keys))
            }
            (Action::Protect(_), _, _) => Err(Error::invalid(
                "PIT entry",
                "a protect entry needs traffic keys and a key version",
            )),
            (action, None, None) => Ok(Self::plain(action).with_peer(peer)),
            _ => Err(Error::invalid(
                "PIT entry",
                "only a protect entry carries traffic keys",
            )),
        }
    }

    /// Protect the flow in `group` with key `version`, talking to `peer`,
    /// under the traffic keys the negotiation derived.
    pub fn protect(group: GroupId, version: KeyVersion, peer: GeId, keys: FlowKeys) -> Self {
        Self {
            action: Action::Protect(group),
            peer: Some(peer),
            key_version: Some(version),
            keys: Some(keys),
            tentative: false,
            opening: None,
        }
    }

    /// Forward a protected flow between two other GEs without decrypting it.
    pub fn relay() -> Self {
        Self::plain(Action::Relay)
    }

    /// Forward a plain flow unchanged.
    pub fn pass() -> Self {
        Self::plain(Action::Pass)
    }

    /// Drop the flow.
    pub fn drop_flow() -> Self {
        Self::plain(Action::Drop)
    }

    fn plain(action: Action) -> Self {
        Self {
            action,
            peer: None,
            key_version: None,
            keys: None,
            tentative: false,
            opening: None,
        }
    }

    /// Names the peer GE (for relay/pass/drop entries, informational).
    pub fn with_peer(mut self, peer: GeId) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Names the negotiation or fast open that installed the entry (its
    /// id, the same at both ends): an eviction reports it
    /// ([`PitEvent::Evicted`]), and a peer's eviction notice must match it.
    pub fn with_opening(mut self, opening: u64) -> Self {
        self.opening = Some(opening);
        self
    }

    /// Inserts the entry as tentative (MPIT seen, CDN pending).
    pub fn tentative(mut self) -> Self {
        self.tentative = true;
        self
    }
}

/// Receive state kept for a while after its entry was replaced.
struct Previous<A: PacketAead> {
    crypto: Arc<SharedCrypto<A>>,
    group: GroupId,
    version: KeyVersion,
    until: Instant,
}

/// One PIT entry.
pub struct PitEntry<A: PacketAead = RingAesGcm> {
    action: Action,
    peer: Option<GeId>,
    key_version: Option<KeyVersion>,
    /// Shared with the node's data-path workers (note 67).
    crypto: Option<Arc<SharedCrypto<A>>>,
    /// Boxed: it exists only for a rekey's grace, and inline it would
    /// double every entry's size.
    previous: Option<Box<Previous<A>>>,
    state: EntryState,
    renegotiate: Option<RenegotiateReason>,
    created: Instant,
    last_used: Instant,
    stats: FlowStats,
    /// The ticket of this entry's current filing in the ageing wheel.
    ticket: u64,
    /// See [`NewEntry::with_opening`].
    opening: Option<u64>,
}

impl<A: PacketAead> PitEntry<A> {
    /// The action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The peer GE, if known.
    pub fn peer(&self) -> Option<GeId> {
        self.peer
    }

    /// The negotiation or fast open that installed the entry, if named
    /// ([`NewEntry::with_opening`]).
    pub fn opening(&self) -> Option<u64> {
        self.opening
    }

    /// The group key version the traffic keys came from (protected flows).
    pub fn key_version(&self) -> Option<KeyVersion> {
        self.key_version
    }

    /// Tentative or active.
    pub fn state(&self) -> EntryState {
        self.state
    }

    /// Set once the flow must be renegotiated (it keeps working meanwhile).
    pub fn renegotiate(&self) -> Option<RenegotiateReason> {
        self.renegotiate
    }

    /// When the entry was inserted.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// When a packet last passed (or the entry was inserted).
    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// Counters: the packets the PIT handled and those workers carried
    /// with the flow's shared cipher state.
    pub fn stats(&self) -> FlowStats {
        let mut s = self.stats;
        if let Some(c) = &self.crypto {
            let w = c.worker_counts();
            s.packets_local += w.packets_out;
            s.bytes_local += w.bytes_out;
            s.packets_remote += w.packets_in;
            s.bytes_remote += w.bytes_in;
            s.rejected += w.rejected;
        }
        s
    }

    /// The cipher state (protected flows).
    pub fn crypto(&self) -> Option<&SharedCrypto<A>> {
        self.crypto.as_deref()
    }

    /// The cipher state for a data-path worker: a protected, active entry
    /// outside a rekey's grace (a packet under the old keys then needs the
    /// PIT, which tries both) and not due for a renegotiation (the PIT
    /// must see the flow's packets to start it). Its `seal` and `open`
    /// refuse by themselves once the PIT retires it.
    pub fn share_crypto(&self) -> Option<Arc<SharedCrypto<A>>> {
        if self.state != EntryState::Active || self.previous.is_some() || self.renegotiate.is_some()
        {
            return None;
        }
        self.crypto
            .clone()
            .filter(|c| c.is_current() && !c.rekey_due())
    }

    /// The cipher state for a worker that only seals (outbound): as
    /// [`PitEntry::share_crypto`], but also during a rekey's grace, when
    /// the PIT itself seals with the new state and only opening needs the
    /// old one.
    pub fn share_crypto_to_seal(&self) -> Option<Arc<SharedCrypto<A>>> {
        if self.state != EntryState::Active || self.renegotiate.is_some() {
            return None;
        }
        self.crypto
            .clone()
            .filter(|c| c.is_current() && !c.rekey_due())
    }

    /// Retires the cipher states (the entry is gone): nothing seals or
    /// opens with them from now on, workers included.
    fn retire_crypto(&self) {
        if let Some(c) = &self.crypto {
            c.set_state(CryptoState::Retired);
        }
        if let Some(p) = &self.previous {
            p.crypto.set_state(CryptoState::Retired);
        }
    }

    /// A worker carried a packet since the last look: the entry counts as
    /// used when the worker last used it (to the millisecond), or `now`
    /// for a use without a time. Looked at when the entry's ageing
    /// deadline comes (and by eviction), so a flow that only workers carry
    /// ages out one idle timeout after its last packet.
    fn refresh(&mut self, now: Instant) {
        // A worker's use counts from when it was (design note 79): an
        // entry a worker carried long ago is as idle as any other.
        if let Some(at) = self.crypto.as_ref().and_then(|c| c.take_used_at()) {
            self.last_used = self.last_used.max(at.map_or(now, |t| t.min(now)));
        }
    }

    /// The earliest moment ageing has something to do with this entry: it
    /// goes idle, or its old receive state's grace ends.
    fn deadline(&self, idle: Duration) -> Instant {
        let aged = self.last_used + idle;
        self.previous.as_ref().map_or(aged, |p| p.until.min(aged))
    }

    /// Opens with the current keys or, during the grace, with the replaced
    /// entry's receive state. The counter only says which to try first: the
    /// new keys count from zero and soon reach the counters the old ones had
    /// used, so for a busy flow a counter cannot tell the two apart. If the
    /// first choice refuses the packet, the other one gets the untouched
    /// bytes (kept in `scratch`, which grows once and is reused). Each key
    /// has its own replay window, so no packet opens twice.
    fn unprotect(&mut self, buf: &mut [u8], scratch: &mut Vec<u8>, now: Instant) -> Result<usize> {
        let current = self.crypto.as_deref().ok_or(Error::NotProtected)?;
        let Some(prev) = self.previous.as_ref().filter(|p| now < p.until) else {
            return current.unprotect(buf);
        };
        let previous_first = closer_to_previous(peek_counter(buf), current, &prev.crypto);
        let (first, second) = if previous_first {
            (&*prev.crypto, current)
        } else {
            (current, &*prev.crypto)
        };
        scratch.clear();
        scratch.extend_from_slice(buf);
        match first.unprotect(buf) {
            Ok(n) => Ok(n),
            Err(first_err) => {
                // A failed open may have overwritten the bytes in place.
                buf.copy_from_slice(scratch);
                second.unprotect(buf).map_err(|e| {
                    // Report what the current keys said: that is the state
                    // the packet should have matched.
                    if previous_first { e } else { first_err }
                })
            }
        }
    }
}

impl<A: PacketAead> std::fmt::Debug for PitEntry<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PitEntry")
            .field("action", &self.action)
            .field("peer", &self.peer)
            .field("key_version", &self.key_version)
            .field("state", &self.state)
            .field("renegotiate", &self.renegotiate)
            .field("crypto", &self.crypto)
            .finish_non_exhaustive()
    }
}

/// The table. `A` is the PCCOM backend (ring by default).
pub struct Pit<A: PacketAead = RingAesGcm> {
    config: PitConfig,
    /// Entries boxed: the table's spare capacity then costs a pointer per
    /// slot rather than a whole entry (its keys are over a kilobyte), and
    /// an entry's memory goes back when it does.
    entries: FastMap<FlowId, Box<PitEntry<A>>>,
    events: VecDeque<PitEvent>,
    /// A copy of a packet being opened during a rekey grace, so a second key
    /// can be tried on the original bytes.
    scratch: Vec<u8>,
    /// The counts of entries gone (aged out, removed, replaced by a
    /// renegotiation), per peer, so per-peer totals never go back when a
    /// flow ends ([`Pit::peer_totals`]). One entry per peer GE ever seen,
    /// added to when a flow ends, never on the packet path.
    retired: BTreeMap<GeId, FlowStats>,
    /// Live entries per peer, for eviction's fair share.
    live: FastMap<GeId, usize>,
    /// When to look at which entry for ageing.
    ageing: Wheel,
    /// Filings taken from the wheel by the current ageing run (kept to
    /// reuse its allocation).
    due: Vec<(FlowId, u64)>,
}

impl Pit<RingAesGcm> {
    /// An empty table with the default backend.
    pub fn new(config: PitConfig) -> Self {
        Self::with_backend(config)
    }
}

/// Adds a gone entry's counts to its peer's retired totals and takes it
/// off the peer's live count.
fn retire<A: PacketAead>(
    retired: &mut BTreeMap<GeId, FlowStats>,
    live: &mut FastMap<GeId, usize>,
    e: &PitEntry<A>,
) {
    if let Some(p) = e.peer {
        retired.entry(p).or_default().add(&e.stats());
        if let Some(n) = live.get_mut(&p) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.remove(&p);
            }
        }
    }
}

impl<A: PacketAead> Pit<A> {
    /// An empty table with backend `A`.
    pub fn with_backend(config: PitConfig) -> Self {
        Self {
            config,
            entries: FastMap::default(),
            events: VecDeque::new(),
            scratch: Vec::new(),
            retired: BTreeMap::new(),
            live: FastMap::default(),
            ageing: Wheel::default(),
            due: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> PitConfig {
        self.config
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Inserts or replaces the entry for `flow` (stored under either
    /// orientation). A new flow into a full table ([`PitConfig::max_entries`])
    /// evicts the least recently used entry idle for [`EVICT_IDLE`] that
    /// its peer's fair share lets go ([`PitEvent::Evicted`]; see
    /// `evict_one`), or fails with [`Error::PitFull`] when none may.
    pub fn insert(&mut self, flow: FlowId, new: NewEntry, now: Instant) -> Result<()> {
        // The NewEntry constructors give keys and a version to protect
        // entries, and only to them.
        let protect = new.keys.is_some();
        let old = self
            .entries
            .remove(&flow)
            .or_else(|| self.entries.remove(&flow.reversed()));
        if let Some(o) = &old {
            // The replaced state seals no more (before its counts are
            // taken, so no worker adds to them after); it opens for the
            // grace below or not at all.
            if let Some(p) = &o.previous {
                p.crypto.set_state(CryptoState::Retired);
            }
            if let Some(c) = &o.crypto {
                c.set_state(if protect {
                    CryptoState::Previous
                } else {
                    CryptoState::Retired
                });
            }
            retire(&mut self.retired, &mut self.live, o);
        }
        if old.is_none()
            && self.entries.len() >= self.config.max_entries
            && !self.evict_one(new.peer, now)
        {
            return Err(Error::PitFull {
                capacity: self.config.max_entries,
            });
        }
        let previous = old.and_then(|o| match (o.action, o.key_version, o.crypto) {
            (Action::Protect(group), Some(version), Some(crypto)) if protect => {
                Some(Box::new(Previous {
                    crypto,
                    group,
                    version,
                    until: now + self.config.rekey_grace,
                }))
            }
            (_, _, crypto) => {
                if let Some(c) = crypto {
                    c.set_state(CryptoState::Retired);
                }
                None
            }
        });
        if previous.is_some() {
            // The packet path copies packets here during the grace; size it
            // now (once) so that path never allocates.
            self.scratch
                .reserve(MAX_PACKET.saturating_sub(self.scratch.len()));
        }
        let mut entry = PitEntry {
            action: new.action,
            peer: new.peer,
            key_version: new.key_version,
            crypto: new.keys.as_ref().map(|k| {
                Arc::new(SharedCrypto::new(
                    FlowCrypto::with_backend(k).with_limits(self.config.limits),
                ))
            }),
            previous,
            state: if new.tentative {
                EntryState::Tentative
            } else {
                EntryState::Active
            },
            renegotiate: None,
            created: now,
            last_used: now,
            stats: FlowStats::default(),
            ticket: 0,
            opening: new.opening,
        };
        entry.ticket = self
            .ageing
            .file(flow, entry.deadline(self.config.idle_timeout), now);
        if let Some(p) = entry.peer {
            *self.live.entry(p).or_default() += 1;
        }
        self.entries.insert(flow, Box::new(entry));
        if self.ageing.needs_compaction(self.entries.len()) {
            // Removed and replaced entries left their filings behind.
            let entries = &self.entries;
            self.ageing
                .compact(|(f, t)| entries.get(f).is_some_and(|e| e.ticket == *t));
        }
        Ok(())
    }

    /// Makes room in a full table for a flow of `peer`: removes the least
    /// recently used entry idle for [`EVICT_IDLE`] or longer among those
    /// that may go, and queues [`PitEvent::Evicted`]. False when none may
    /// go (within [`EVICT_SCAN`] up-to-date filings of entries that may
    /// go, four times as many up-to-date filings in all, and
    /// [`EVICT_STALE`] of entries removed or used since).
    ///
    /// Which may go keeps each peer its fair share (the table over the
    /// peers holding entries): a peer at or over its share makes room only
    /// from its own flows, so a peer opening flows by the thousand recycles
    /// its own and never pushes out the others' idle ones; a peer under its
    /// share takes from peers over theirs (and from entries of no peer),
    /// or the idlest entry of all when the scan finds none of those.
    ///
    /// The wheel's slots are looked at from the earliest. A filing moves
    /// only when it is looked at, so one whose entry was used since sits
    /// too early: it is filed again where it belongs and is no candidate.
    /// The first slot holding an up-to-date idle entry holds the least
    /// recently used ones (to the slot's resolution); of those looked at
    /// ([`EVICT_CHUNK`] at a time, until a chunk holds one that may go)
    /// the idlest goes. Every other filing looked at is filed again at its
    /// deadline.
    fn evict_one(&mut self, peer: Option<GeId>, now: Instant) -> bool {
        let idle = self.config.idle_timeout;
        let peers =
            self.live.len() + usize::from(peer.is_some_and(|p| !self.live.contains_key(&p)));
        // At least one: more peers than entries must not refuse a newcomer.
        let share = (self.config.max_entries / peers.max(1)).max(1);
        let count = |p: &GeId| self.live.get(p).copied().unwrap_or(0);
        let own = peer.filter(|p| count(p) >= share);
        let may_go = |e: &PitEntry<A>| match (own, e.peer) {
            (Some(p), q) => q == Some(p),
            (None, Some(q)) => count(&q) > share,
            (None, None) => true,
        };
        let mut look = std::mem::take(&mut self.due);
        let mut victim: Option<(FlowId, Instant)> = None;
        // A peer under its share takes the idlest entry of all when none
        // that may go is found (entries of peers within their share sit
        // at the front of the wheel): as before shares existed.
        let mut fallback: Option<(FlowId, Instant)> = None;
        let mut current = 0;
        // Filings of removed or replaced entries (dropped for good as they
        // are taken) and of entries used since (filed again where they
        // belong): each is set right once, so they have their own, larger
        // bound. A storm's clients reuse ports, and every flow opened or
        // used again leaves one at the front of the oldest slot.
        let (mut stale, mut moved) = (0, 0);
        while victim.is_none()
            && current < EVICT_SCAN
            && look.len() - stale - moved < 4 * EVICT_SCAN
            && stale + moved < EVICT_STALE
        {
            let Some(at) = self.ageing.next() else {
                break;
            };
            let start = look.len();
            let n = (EVICT_SCAN - current).min(EVICT_CHUNK);
            if self.ageing.take_first(n, &mut look) == 0 {
                break;
            }
            for &(flow, ticket) in &look[start..] {
                let Some(e) = self.entries.get_mut(&flow).filter(|e| e.ticket == ticket) else {
                    stale += 1;
                    continue;
                };
                e.refresh(now);
                let e = &**e;
                if e.deadline(idle) > at {
                    moved += 1;
                    continue; // used since it was filed: filed again below
                }
                // Only entries that may go count against the scan: those
                // that may not are filed again where they were and would
                // otherwise use up every scan.
                let eligible = may_go(e);
                current += usize::from(eligible);
                if now.saturating_duration_since(e.last_used) < EVICT_IDLE {
                    continue;
                }
                let better = |v: Option<(FlowId, Instant)>| v.is_none_or(|(_, t)| e.last_used < t);
                if eligible && better(victim) {
                    victim = Some((flow, e.last_used));
                } else if own.is_none() && better(fallback) {
                    fallback = Some((flow, e.last_used));
                }
            }
        }
        let victim = victim.or(fallback);
        for (flow, ticket) in look.drain(..) {
            if victim.is_some_and(|(v, _)| v == flow) {
                continue;
            }
            if let Some(e) = self.entries.get_mut(&flow).filter(|e| e.ticket == ticket) {
                e.ticket = self.ageing.file(flow, e.deadline(idle), now);
            }
        }
        self.due = look;
        let Some((flow, _)) = victim else {
            return false;
        };
        let (mut peer, mut opening) = (None, None);
        if let Some(e) = self.entries.remove(&flow) {
            e.retire_crypto();
            retire(&mut self.retired, &mut self.live, &e);
            (peer, opening) = (e.peer, e.opening);
        }
        self.events.push_back(PitEvent::Evicted {
            flow,
            peer,
            opening,
        });
        true
    }

    /// Makes a tentative entry active (CDN received). False if there is no
    /// entry for the flow.
    pub fn confirm(&mut self, flow: &FlowId) -> bool {
        match self.lookup_mut(flow) {
            Some((_, e)) => {
                e.state = EntryState::Active;
                true
            }
            None => false,
        }
    }

    /// Removes the entry for `flow` (either orientation). Its cipher states
    /// are retired: the returned entry seals and opens nothing.
    pub fn remove(&mut self, flow: &FlowId) -> Option<PitEntry<A>> {
        let gone = self
            .entries
            .remove(flow)
            .or_else(|| self.entries.remove(&flow.reversed()));
        if let Some(e) = &gone {
            e.retire_crypto();
            retire(&mut self.retired, &mut self.live, e);
        }
        gone.map(|e| *e)
    }

    /// The entry a packet with flow id `flow` belongs to.
    pub fn lookup(&self, flow: &FlowId) -> Option<(Direction, &PitEntry<A>)> {
        if let Some(e) = self.entries.get(flow) {
            return Some((Direction::Forward, &**e));
        }
        self.entries
            .get(&flow.reversed())
            .map(|e| (Direction::Reverse, &**e))
    }

    /// Like [`Pit::lookup`], writable.
    pub fn lookup_mut(&mut self, flow: &FlowId) -> Option<(Direction, &mut PitEntry<A>)> {
        let (dir, key) = if self.entries.contains_key(flow) {
            (Direction::Forward, *flow)
        } else {
            (Direction::Reverse, flow.reversed())
        };
        self.entries.get_mut(&key).map(|e| (dir, &mut **e))
    }

    /// Applies the flow's entry to one packet: `buf[..len]` holds the packet
    /// (the rest is room for the PCCOM trailer), `flow` is its flow id.
    /// Protected flows are protected ([`Origin::Local`]) or unprotected
    /// ([`Origin::Remote`]) in place. Errors (authentication, replay,
    /// malformed packet, counter exhausted) mean: drop the packet; they are
    /// counted and do not refresh the entry.
    pub fn handle_packet(
        &mut self,
        flow: &FlowId,
        origin: Origin,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Result<Disposition> {
        let key = if self.entries.contains_key(flow) {
            *flow
        } else {
            flow.reversed()
        };
        let Some(entry) = self.entries.get_mut(&key) else {
            return Ok(Disposition::Unknown);
        };
        let scratch = &mut self.scratch;
        if entry.state == EntryState::Tentative {
            return Ok(Disposition::Hold);
        }
        let result = match (entry.action, origin) {
            (Action::Drop, _) => {
                entry.stats.rejected += 1;
                return Ok(Disposition::Drop);
            }
            (Action::Pass | Action::Relay, _) => Ok((len, len)),
            (Action::Protect(_), Origin::Local) => match entry.crypto.as_deref() {
                Some(c) => c.protect(buf, len).map(|n| (len, n)),
                None => Err(Error::NotProtected),
            },
            (Action::Protect(_), Origin::Remote) => match buf.get_mut(..len) {
                Some(packet) => entry.unprotect(packet, scratch, now).map(|n| (n, n)),
                None => Err(Error::BufferTooSmall {
                    needed: len,
                    capacity: buf.len(),
                }),
            },
        };
        let (plain_len, out_len) = match result {
            Ok(lens) => lens,
            Err(e) => {
                entry.stats.rejected += 1;
                tracing::trace!(%flow, error = %e, "packet refused");
                return Err(e);
            }
        };
        entry.last_used = now;
        let s = &mut entry.stats;
        match origin {
            Origin::Local => {
                s.packets_local += 1;
                s.bytes_local += plain_len as u64;
            }
            Origin::Remote => {
                s.packets_remote += 1;
                s.bytes_remote += plain_len as u64;
            }
        }
        // Workers seal too: any packet the PIT sees notices the limit.
        let over_limit = entry.crypto.as_ref().is_some_and(|c| c.rekey_due());
        if over_limit && entry.renegotiate.is_none() {
            entry.renegotiate = Some(RenegotiateReason::PacketLimit);
            tracing::debug!(flow = %key, "send counter at rekey limit");
            self.events.push_back(PitEvent::Renegotiate {
                flow: key,
                reason: RenegotiateReason::PacketLimit,
            });
        }
        Ok(Disposition::Forward { len: out_len })
    }

    /// A data-path worker's seal of `flow` (a PIT key) reported the send
    /// counter at its rekey limit: the renegotiation starts as it would
    /// have had the PIT sealed that packet itself. True when it started.
    pub fn note_rekey_due(&mut self, flow: &FlowId) -> bool {
        let Some(entry) = self.entries.get_mut(flow) else {
            return false;
        };
        if entry.renegotiate.is_some() || !entry.crypto.as_ref().is_some_and(|c| c.rekey_due()) {
            return false;
        }
        entry.renegotiate = Some(RenegotiateReason::PacketLimit);
        tracing::debug!(%flow, "send counter at rekey limit (worker)");
        self.events.push_back(PitEvent::Renegotiate {
            flow: *flow,
            reason: RenegotiateReason::PacketLimit,
        });
        true
    }

    /// A new key `version` of `group` arrived: every protected entry of that
    /// group on an older version must be renegotiated. Queues one
    /// [`PitEvent::Renegotiate`] per such entry (in flow order) and returns
    /// how many there were. The entries keep working on the old version.
    pub fn on_key_rotation(&mut self, group: GroupId, version: KeyVersion) -> usize {
        let mut flows: Vec<FlowId> = self
            .entries
            .iter_mut()
            .filter(|(_, e)| {
                e.action == Action::Protect(group)
                    && e.key_version.is_some_and(|v| v < version)
                    && e.renegotiate != Some(RenegotiateReason::KeyRotation)
            })
            .map(|(f, e)| {
                e.renegotiate = Some(RenegotiateReason::KeyRotation);
                *f
            })
            .collect();
        flows.sort_unstable();
        for &flow in &flows {
            self.events.push_back(PitEvent::Renegotiate {
                flow,
                reason: RenegotiateReason::KeyRotation,
            });
        }
        flows.len()
    }

    /// Key `version` of `group` (and every older one) was erased: drops the
    /// entries whose traffic keys came from it, and old receive states kept
    /// from it. Returns the dropped flows, sorted.
    pub fn on_key_erased(&mut self, group: GroupId, version: KeyVersion) -> Vec<FlowId> {
        let mut dropped = Vec::new();
        let (retired, live) = (&mut self.retired, &mut self.live);
        self.entries.retain(|flow, e| {
            if let Some(p) = &e.previous
                && p.group == group
                && p.version <= version
            {
                p.crypto.set_state(CryptoState::Retired);
                e.previous = None;
            }
            let erased =
                e.action == Action::Protect(group) && e.key_version.is_some_and(|v| v <= version);
            if erased {
                dropped.push(*flow);
                e.retire_crypto();
                retire(retired, live, e);
            }
            !erased
        });
        dropped.sort_unstable();
        dropped
    }

    /// Removes every entry idle for [`PitConfig::idle_timeout`] or longer
    /// and forgets old receive states past their grace. Returns the removed
    /// flows, sorted. [`Pit::expire_some`] does the same in slices.
    pub fn expire(&mut self, now: Instant) -> Vec<FlowId> {
        self.expire_some(now, usize::MAX).0
    }

    /// Like [`Pit::expire`], looking at no more than `budget` entries.
    /// Returns the removed flows, sorted, and whether entries due at `now`
    /// are left for another call ([`Pit::next_expiry`] is then `<= now`).
    pub fn expire_some(&mut self, now: Instant, budget: usize) -> (Vec<FlowId>, bool) {
        let budget = budget.max(1);
        let idle = self.config.idle_timeout;
        let mut due = std::mem::take(&mut self.due);
        let more = self.ageing.take_due(now, budget, &mut due);
        let mut gone = Vec::new();
        for (flow, ticket) in due.drain(..) {
            let Some(e) = self.entries.get_mut(&flow).filter(|e| e.ticket == ticket) else {
                continue; // removed or filed again since
            };
            if let Some(p) = e.previous.take_if(|p| now >= p.until) {
                p.crypto.set_state(CryptoState::Retired);
            }
            e.refresh(now);
            if now.saturating_duration_since(e.last_used) < idle {
                e.ticket = self.ageing.file(flow, e.deadline(idle), now);
            } else if let Some(e) = self.entries.remove(&flow) {
                e.retire_crypto();
                retire(&mut self.retired, &mut self.live, &e);
                gone.push(flow);
            }
        }
        self.due = due;
        gone.sort_unstable();
        (gone, more)
    }

    /// Filings in the ageing wheel, live and stale: about the number of
    /// entries. Inserts keep it within twice the entries plus a constant;
    /// removals leave their filings until their slot comes.
    pub fn ageing_filings(&self) -> usize {
        self.ageing.len()
    }

    /// When [`Pit::expire_some`] has entries to look at next: no later than
    /// the next entry ages out (or an old receive state ends), rounded up to
    /// [`AGE_SLOT`]. Costs no scan.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.ageing.next()
    }

    /// The next thing to act on, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PitEvent> {
        self.events.pop_front()
    }

    /// Packets and bytes per peer since the table was made: the entries
    /// gone plus the live ones. Never decreases for a peer (a counter for
    /// metrics). Scans the table: call it per scrape, not per packet.
    pub fn peer_totals(&self) -> BTreeMap<GeId, FlowStats> {
        let mut t = self.retired.clone();
        for e in self.entries.values() {
            if let Some(p) = e.peer {
                t.entry(p).or_default().add(&e.stats());
            }
        }
        t
    }

    /// The peers that hold at least one live entry, in no particular
    /// order (the node follows their directory entries while they do).
    pub fn live_peers(&self) -> impl Iterator<Item = GeId> + '_ {
        self.live.keys().copied()
    }

    /// All entries, in no particular order (sort before showing).
    pub fn iter(&self) -> impl Iterator<Item = (&FlowId, &PitEntry<A>)> {
        self.entries.iter().map(|(f, e)| (f, &**e))
    }
}

impl<A: PacketAead> Drop for Pit<A> {
    fn drop(&mut self) {
        // Workers may still hold the cipher states: a table that is gone
        // (the node stops, or erases its keys) leaves them nothing to use.
        for e in self.entries.values() {
            e.retire_crypto();
        }
    }
}

impl<A: PacketAead> std::fmt::Debug for Pit<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pit")
            .field("entries", &self.entries.len())
            .field("ageing_filings", &self.ageing.len())
            .field("config", &self.config)
            .finish()
    }
}

/// The PCCOM counter of a protected packet, if it parses; used only to pick
/// a key, so any failure simply picks the current one.
fn peek_counter(buf: &[u8]) -> Option<u64> {
    let pkt = crate::packet::Packet::parse(buf).ok()?;
    let p = pkt.payload();
    let at = p.len().checked_sub(crate::pccom::TRAILER_LEN)?;
    let mut c = [0u8; crate::pccom::COUNTER_LEN];
    c.copy_from_slice(p.get(at..at + crate::pccom::COUNTER_LEN)?);
    Some(u64::from_be_bytes(c))
}

/// True when `counter` is nearer the old keys' receive sequence than the new
/// ones'. New keys count from zero, so before they have seen anything their
/// position is 0.
fn closer_to_previous<A: PacketAead>(
    counter: Option<u64>,
    current: &SharedCrypto<A>,
    previous: &SharedCrypto<A>,
) -> bool {
    let Some(c) = counter else { return false };
    let Some(old) = previous.highest_received() else {
        return false;
    };
    let new = current.highest_received().unwrap_or(0);
    old.abs_diff(c) < new.abs_diff(c)
}
