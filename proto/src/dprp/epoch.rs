//! Pair epochs: new flows between two end GEs without a negotiation
//! (docs/PROTOCOL.md, "Fast open"; docs/DESIGN-NOTES.md, note 64).
//!
//! A full negotiation between two end GEs with no gateway between them
//! that protects its flow leaves both ends with an [`EpochSecret`] besides
//! the flow's keys. For as long as the epoch lives, either end opens a new
//! flow towards the other by sending a FOP (epoch id, the flow's index
//! among its own openings, the flow, a MAC under the epoch) and the flow's
//! first packets at once; both ends derive the flow's keys from the secret,
//! the opener's GE id, the index and the flow. The receiving end checks
//! everything a negotiation would (the opener owns the flow's source, this
//! GE owns its destination, the peer is not revoked, the group key version
//! is still held) and answers with a FOK.
//!
//! What ends an epoch: its lifetime; a new key version or the loss of the
//! group at this GE; a revocation of the peer; a new credential of this GE;
//! a NAK from a gateway on the path or from the peer that lost it.

use std::collections::BTreeMap;
use std::time::Instant;

use ring::hmac;

use crate::credential::Credential;
use crate::dprp::msg::{Evict, Fok, Fop};
use crate::dprp::transcript as tr;
use crate::flow::FlowId;
use crate::ge::{GeId, GroupId};
use crate::keys::{EPOCH_ID_LEN, EpochSecret, FlowKeys, KeyVersion, MAC_LEN, Role};
use crate::pccom::ReplayWindow;
use crate::wire::Writer;
use crate::{Error, Result};

/// A pair epoch's id on the wire.
pub type EpochId = [u8; EPOCH_ID_LEN];

/// The most flows one end opens on one epoch; a new negotiation (and
/// epoch) follows.
pub const MAX_OPENINGS: u32 = 1 << 20;

/// An epoch opens no flow this close to its end: the other end took it a
/// moment later (at the MPIT, this end at the CDN) and may end it first.
const OPEN_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How far a FOP's age may be from the receiver's own age of the epoch:
/// a round trip, retransmissions (1.75 s in all) and clock skew between
/// two monotonic clocks over one epoch's life.
const FOP_FRESHNESS_MS: u32 = 3_000;

/// How many FOK answers an epoch keeps to answer retransmitted FOPs.
const ANSWERS_KEPT: usize = 256;

/// A renewal negotiation that left no new epoch (refused, lost) is tried
/// again after this long, while the epoch is still in its last stretch.
const RENEW_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long before an epoch of `lifetime` ends this end renews it (note
/// 70): a tenth of its life, and at least twice the stretch at its end in
/// which it opens nothing, so the window is never empty.
fn renew_ahead(lifetime: std::time::Duration) -> std::time::Duration {
    (lifetime / 10).max(2 * OPEN_MARGIN)
}

/// What a finished negotiation hands to the epoch table: the secret and
/// what the flows opened on it inherit.
#[derive(Clone)]
pub(crate) struct EpochSeed {
    pub(crate) secret: EpochSecret,
    /// The other end's verified credential (its serial is checked against
    /// revocations, its coverage against each flow).
    pub(crate) peer: Credential,
    pub(crate) group: GroupId,
    pub(crate) version: KeyVersion,
    /// Both ends take FOPs with the first packet inside (option kind 5).
    pub(crate) first: bool,
}

impl std::fmt::Debug for EpochSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochSeed")
            .field("peer", &self.peer.info.id)
            .field("group", &self.group)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// How a flow was opened on an epoch (in [`super::Established`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastOpen {
    /// The epoch.
    pub epoch: EpochId,
    /// The opener's index of the flow.
    pub index: u32,
    /// The GE that opened it.
    pub opener: GeId,
}

/// One pair epoch at one end.
pub(crate) struct PairEpoch {
    pub(crate) id: EpochId,
    pub(crate) peer: Credential,
    pub(crate) group: GroupId,
    pub(crate) version: KeyVersion,
    secret: EpochSecret,
    auth: hmac::Key,
    pub(crate) expires: Instant,
    /// When this end took the epoch (the FOP's age is counted from it).
    created: Instant,
    /// The index of this GE's next opening.
    next_index: u32,
    /// The peer's openings seen (an index opens one flow, once).
    seen: ReplayWindow,
    /// FOKs sent, by index, with their flow: a retransmitted FOP gets the
    /// same answer.
    answered: BTreeMap<u32, (FlowId, Vec<u8>)>,
    /// When this end last negotiated a flow to renew the epoch.
    renewal_asked: Option<Instant>,
    /// False when a credential's end cut the epoch short (see
    /// [`PairEpoch::cut_short`]).
    renewable: bool,
    /// The peer takes FOPs with their first packet inside (it answered
    /// option kind 5; an older node does not).
    pub(crate) first: bool,
}

impl PairEpoch {
    fn new(seed: EpochSeed, created: Instant, expires: Instant) -> Self {
        Self {
            id: seed.secret.id(),
            auth: seed.secret.auth_key(),
            secret: seed.secret,
            peer: seed.peer,
            group: seed.group,
            version: seed.version,
            expires,
            created,
            next_index: 0,
            seen: ReplayWindow::new(),
            answered: BTreeMap::new(),
            renewal_asked: None,
            renewable: true,
            first: seed.first,
        }
    }

    /// The epoch ends when a credential does (this end's or the peer's),
    /// before its lifetime: a renewal would end at the same moment (and
    /// its epoch, shorter still, would ask for the next at once), so none
    /// is tried. The flows after its end are negotiated, under the
    /// renewed credential if there is one.
    pub(crate) fn cut_short(&mut self) {
        self.renewable = false;
    }

    /// Whether the next flow this end opens on the epoch should be
    /// negotiated instead, to leave the pair a new epoch before this one
    /// ends (in its last tenth, see [`renew_ahead`]; at most once per
    /// [`RENEW_RETRY`]).
    /// Without it every flow opened between the epoch's end and the next
    /// negotiation's is negotiated, and the peer's evictions in that gap
    /// go untold.
    pub(crate) fn renewal_due(&mut self, now: Instant) -> bool {
        let ahead = renew_ahead(self.expires.saturating_duration_since(self.created));
        if !self.renewable
            || self.expires > now + ahead
            || self
                .renewal_asked
                .is_some_and(|t| now.saturating_duration_since(t) < RENEW_RETRY)
        {
            return false;
        }
        self.renewal_asked = Some(now);
        true
    }

    pub(crate) fn peer_ge(&self) -> GeId {
        self.peer.info.id
    }

    /// The epoch's age at `now`, in milliseconds (a FOP carries it).
    pub(crate) fn age_ms(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.created).as_millis()).unwrap_or(u32::MAX)
    }

    /// Whether a FOP of age `age_ms` (the opener's clock) is fresh here:
    /// the two ends took the epoch a round trip apart and count alike.
    pub(crate) fn is_fresh(&self, age_ms: u32, now: Instant) -> bool {
        self.age_ms(now).abs_diff(age_ms) <= FOP_FRESHNESS_MS
    }

    /// Takes the next index for a flow this GE (`own`) opens, with the
    /// flow's keys from this GE's view. `None` once the epoch is used up.
    pub(crate) fn open(&mut self, own: GeId, flow: &FlowId) -> Option<(u32, FlowKeys)> {
        if self.next_index >= MAX_OPENINGS {
            return None;
        }
        let index = self.next_index;
        self.next_index += 1;
        Some((index, self.keys(own, index, flow, Role::Initiator)))
    }

    /// The keys of the peer's opening `index` of `flow`, from this GE's view.
    pub(crate) fn accept_keys(&self, index: u32, flow: &FlowId) -> FlowKeys {
        self.keys(self.peer_ge(), index, flow, Role::Responder)
    }

    fn keys(&self, opener: GeId, index: u32, flow: &FlowId, role: Role) -> FlowKeys {
        let mut cid = Vec::with_capacity(40);
        flow.encode(&mut Writer::new(&mut cid));
        self.secret.flow_keys(opener.0, index, &cid, role)
    }

    /// The tag of a FOP that `opener` sends.
    pub(crate) fn fop_tag(&self, opener: GeId, fop: &Fop) -> [u8; MAC_LEN] {
        self.tag(tr::FOP_TAG, opener, &fop.core())
    }

    /// The tag of a FOK answering `opener`'s FOP.
    pub(crate) fn fok_tag(&self, opener: GeId, fok: &Fok) -> [u8; MAC_LEN] {
        self.tag(tr::FOK_TAG, opener, &fok.core())
    }

    /// The tag of an EVICT that `sender` (this GE) sends.
    pub(crate) fn evict_tag(&self, sender: GeId, evict: &Evict) -> Result<[u8; MAC_LEN]> {
        Ok(self.tag(tr::EVICT_TAG, sender, &evict.core()?))
    }

    /// Checks an EVICT's tag (the peer sent it), in constant time.
    pub(crate) fn verify_evict(&self, evict: &Evict) -> Result<()> {
        self.verify(
            tr::EVICT_TAG,
            self.peer_ge(),
            &evict.core()?,
            &evict.tag,
            "EVICT tag",
        )
    }

    /// Checks a FOP's tag (the peer opened it), in constant time.
    pub(crate) fn verify_fop(&self, fop: &Fop) -> Result<()> {
        self.verify(
            tr::FOP_TAG,
            self.peer_ge(),
            &fop.core(),
            &fop.tag,
            "FOP tag",
        )
    }

    /// Checks a FOK's tag (answering this GE's, `own`'s, FOP).
    pub(crate) fn verify_fok(&self, own: GeId, fok: &Fok) -> Result<()> {
        self.verify(tr::FOK_TAG, own, &fok.core(), &fok.tag, "FOK tag")
    }

    fn tag(&self, label: &[u8], opener: GeId, core: &[u8]) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.auth);
        ctx.update(label);
        ctx.update(&opener.0.to_be_bytes());
        ctx.update(core);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn verify(
        &self,
        label: &[u8],
        opener: GeId,
        core: &[u8],
        tag: &[u8],
        what: &'static str,
    ) -> Result<()> {
        let msg = [label, &opener.0.to_be_bytes(), core].concat();
        hmac::verify(&self.auth, &msg, tag).map_err(|_| Error::BadMac(what))
    }

    /// The FOK already sent for the peer's opening `index` of `flow`, if
    /// this is a retransmission; [`Error::Replay`] if the index opened
    /// another flow or fell out of the window.
    pub(crate) fn answered(&self, index: u32, flow: &FlowId) -> Result<Option<&[u8]>> {
        match self.seen.check(u64::from(index)) {
            Ok(()) => Ok(None),
            Err(e) => match self.answered.get(&index) {
                Some((f, fok)) if f == flow => Ok(Some(fok)),
                _ => Err(e),
            },
        }
    }

    /// Records the peer's opening `index` as installed, and its answer.
    pub(crate) fn mark(&mut self, index: u32, flow: FlowId, fok: Vec<u8>) {
        self.seen.update(u64::from(index));
        if self.answered.len() >= ANSWERS_KEPT {
            self.answered.pop_first();
        }
        self.answered.insert(index, (flow, fok));
    }
}

/// The epochs of one GE, by id and by peer.
#[derive(Default)]
pub(crate) struct Epochs {
    by_id: BTreeMap<EpochId, PairEpoch>,
    /// Each peer's newest epoch: the one this GE opens flows on.
    newest: BTreeMap<GeId, EpochId>,
}

impl Epochs {
    /// Adds the epoch of a finished negotiation, the peer's newest. The
    /// peer's older epochs stay until they expire (FOPs on them may still
    /// be on the way), but at most `per_peer` in all.
    pub(crate) fn insert(
        &mut self,
        seed: EpochSeed,
        now: Instant,
        expires: Instant,
        per_peer: usize,
    ) {
        let e = PairEpoch::new(seed, now, expires);
        let (id, peer) = (e.id, e.peer_ge());
        self.by_id.insert(id, e);
        self.newest.insert(peer, id);
        let mut of_peer: Vec<(Instant, EpochId)> = self
            .by_id
            .values()
            .filter(|e| e.peer_ge() == peer)
            .map(|e| (e.expires, e.id))
            .collect();
        if of_peer.len() > per_peer.max(1) {
            of_peer.sort();
            for (_, old) in &of_peer[..of_peer.len() - per_peer.max(1)] {
                if *old != id {
                    self.by_id.remove(old);
                }
            }
        }
    }

    /// The epoch to open a flow to `peer` on, if a live one exists.
    pub(crate) fn for_opening(&mut self, peer: GeId, now: Instant) -> Option<&mut PairEpoch> {
        let id = self.newest.get(&peer)?;
        self.by_id
            .get_mut(id)
            .filter(|e| e.expires > now + OPEN_MARGIN)
    }

    /// The newest live epoch with `peer` (an eviction notice goes on it).
    pub(crate) fn newest(&self, peer: GeId, now: Instant) -> Option<&PairEpoch> {
        self.newest
            .get(&peer)
            .and_then(|id| self.by_id.get(id))
            .filter(|e| e.expires > now)
    }

    /// Whether any live epoch is with `peer`.
    pub(crate) fn has_peer(&self, peer: GeId, now: Instant) -> bool {
        // The newest lives longest: one lookup, not a scan per packet.
        self.newest
            .get(&peer)
            .and_then(|id| self.by_id.get(id))
            .is_some_and(|e| e.expires > now)
    }

    /// The epoch named `id`, if live.
    pub(crate) fn get_mut(&mut self, id: &EpochId, now: Instant) -> Option<&mut PairEpoch> {
        self.by_id.get_mut(id).filter(|e| e.expires > now)
    }

    /// Ends every epoch `f` selects; returns how many.
    pub(crate) fn end(&mut self, mut f: impl FnMut(&PairEpoch) -> bool) -> usize {
        let before = self.by_id.len();
        self.by_id.retain(|_, e| !f(e));
        let by_id = &self.by_id;
        self.newest.retain(|_, id| by_id.contains_key(id));
        before - self.by_id.len()
    }

    /// Ends the expired epochs.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.end(|e| e.expires <= now);
    }

    /// The next expiry.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.by_id.values().map(|e| e.expires).min()
    }

    /// Live epochs (for occupancy).
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dprp::NegotiationId;
    use crate::flow::protocol;
    use crate::ge::{GeInfo, GeKind, Mode};
    use crate::keys::NodeKey;
    use std::time::Duration;

    fn credential(id: u32) -> Credential {
        let ca = NodeKey::from_seed(&[9; 32]);
        let node = NodeKey::from_seed(&[id as u8; 32]);
        let info = GeInfo {
            id: GeId(id),
            name: format!("ge{id}"),
            kind: GeKind::Ges,
            mode: Mode::Open,
            groups: [GroupId(1)].into(),
            overlay: std::net::Ipv4Addr::new(100, 64, 0, id as u8),
        };
        Credential::issue(&ca, 1, info, node.public(), 0, u64::MAX / 2).unwrap()
    }

    fn seed(secret: u8, peer: u32) -> EpochSeed {
        EpochSeed {
            secret: EpochSecret::from_bytes([secret; 32]),
            peer: credential(peer),
            group: GroupId(1),
            version: KeyVersion(1),
            first: true,
        }
    }

    fn flow(port: u16) -> FlowId {
        FlowId {
            src: [100, 64, 0, 1].into(),
            dst: [100, 64, 0, 2].into(),
            protocol: protocol::UDP,
            src_port: port,
            dst_port: 53,
        }
    }

    #[test]
    fn both_ends_derive_the_same_keys_and_each_flow_its_own() {
        // GE 1 and GE 2 hold the same secret, each naming the other as peer.
        let mut at1 = PairEpoch::new(seed(7, 2), Instant::now(), Instant::now());
        let at2 = PairEpoch::new(seed(7, 1), Instant::now(), Instant::now());
        assert_eq!(at1.id, at2.id);
        let (i, k1) = at1.open(GeId(1), &flow(1000)).unwrap();
        let k2 = at2.accept_keys(i, &flow(1000));
        assert_eq!(k1.tx.expose_secret(), k2.rx.expose_secret());
        assert_eq!(k1.rx.expose_secret(), k2.tx.expose_secret());
        assert_ne!(k1.tx.expose_secret(), k1.rx.expose_secret());
        // The next index, another flow, or another secret: other keys.
        let (j, k3) = at1.open(GeId(1), &flow(1000)).unwrap();
        assert_eq!(j, i + 1);
        assert_ne!(k1.tx.expose_secret(), k3.tx.expose_secret());
        let k4 = at2.accept_keys(i, &flow(1001));
        assert_ne!(k2.rx.expose_secret(), k4.rx.expose_secret());
        let other = PairEpoch::new(seed(8, 1), Instant::now(), Instant::now());
        assert_ne!(other.id, at2.id);
        assert_ne!(
            other.accept_keys(i, &flow(1000)).rx.expose_secret(),
            k2.rx.expose_secret()
        );
    }

    #[test]
    fn tags_bind_the_opener_and_the_message() {
        let at1 = PairEpoch::new(seed(7, 2), Instant::now(), Instant::now());
        let at2 = PairEpoch::new(seed(7, 1), Instant::now(), Instant::now());
        let mut fop = Fop {
            id: NegotiationId(5),
            epoch: at1.id,
            index: 0,
            age_ms: 0,
            flow: flow(1000),
            tag: [0; MAC_LEN],
            first: None,
        };
        fop.tag = at1.fop_tag(GeId(1), &fop);
        at2.verify_fop(&fop).unwrap();
        // Reflected to its opener: GE 1 takes it as GE 2's and refuses it.
        assert_eq!(at1.verify_fop(&fop), Err(Error::BadMac("FOP tag")));
        let mut changed = fop.clone();
        changed.flow.src_port += 1;
        assert!(at2.verify_fop(&changed).is_err());
        let mut fok = Fok {
            id: fop.id,
            epoch: fop.epoch,
            index: 0,
            tag: [0; MAC_LEN],
        };
        fok.tag = at2.fok_tag(GeId(1), &fok);
        at1.verify_fok(GeId(1), &fok).unwrap();
        fok.index = 1;
        assert!(at1.verify_fok(GeId(1), &fok).is_err());
    }

    #[test]
    fn an_index_opens_one_flow_once() {
        let mut at2 = PairEpoch::new(seed(7, 1), Instant::now(), Instant::now());
        assert_eq!(at2.answered(3, &flow(1)).unwrap(), None);
        at2.mark(3, flow(1), vec![1, 2, 3]);
        // A retransmitted FOP gets the same answer; another flow on the
        // same index is a replay.
        assert_eq!(at2.answered(3, &flow(1)).unwrap(), Some(&[1u8, 2, 3][..]));
        assert!(matches!(
            at2.answered(3, &flow(2)),
            Err(Error::Replay { counter: 3 })
        ));
        assert_eq!(at2.answered(2, &flow(2)).unwrap(), None);
    }

    #[test]
    fn a_peer_keeps_a_bounded_number_of_epochs_and_opens_on_the_newest() {
        let now = Instant::now();
        let mut t = Epochs::default();
        t.insert(seed(1, 2), now, now + Duration::from_secs(10), 2);
        t.insert(seed(2, 2), now, now + Duration::from_secs(20), 2);
        t.insert(seed(3, 2), now, now + Duration::from_secs(30), 2);
        assert_eq!(t.len(), 2);
        let newest = EpochSecret::from_bytes([3; 32]).id();
        assert_eq!(t.for_opening(GeId(2), now).unwrap().id, newest);
        assert!(
            t.get_mut(&EpochSecret::from_bytes([1; 32]).id(), now)
                .is_none()
        );
        assert!(
            t.for_opening(GeId(2), now + Duration::from_secs(30))
                .is_none()
        );
        assert_eq!(t.next_expiry(), Some(now + Duration::from_secs(20)));
        t.expire(now + Duration::from_secs(25));
        assert_eq!(t.len(), 1);
        assert_eq!(t.end(|e| e.peer_ge() == GeId(2)), 1);
        assert!(t.for_opening(GeId(2), now).is_none());
    }

    #[test]
    fn the_secret_never_prints() {
        let s = seed(7, 2);
        let text = format!("{s:?} {:?}", s.secret);
        assert!(!text.contains("7, 7"), "{text}");
    }
}
