//! The initiator's machine: sends the DDE, checks the RGI, decides, sends the
//! MPIT, and finishes on the CDN.
//!
//! States: `AwaitRgi` (DDE retransmitted with backoff) -> `AwaitCdn` (MPIT
//! retransmitted) -> `Done` (kept until the linger time to absorb duplicates).
//! When the decision drops the flow the machine reports the failure at once
//! (the application fails fast) and goes to `Closing`, where it still sends
//! the signed MPIT so the GEs on the path learn the decision.
//!
//! Unauthenticated garbage (a bad tag or signature) is returned as an error
//! and changes nothing: the genuine answer may still come. An authenticated
//! answer that fails a check (a forged group proof, a key version this GE
//! lacks) ends the negotiation with `FailReason::Rejected`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::digest;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::action::Action;
use crate::credential::Credential;
use crate::decision::decide_ends;
use crate::dprp::cookie;
use crate::dprp::endpoint::Ctx;
use crate::dprp::epoch::EpochSeed;
use crate::dprp::msg::{
    Cdn, CdnStatus, Claim, Cookie, Dde, HopDecision, Message, Mpit, Nak, NegotiationId, Rgi,
};
use crate::dprp::natf::{NatfMapping, Vin, natf_option};
use crate::dprp::transcript::{self as tr, Hash, PairKey};
use crate::dprp::{DPRP_PORT, DprpOption, Established, FailReason, Position, Timer};
use crate::flow::FlowId;
use crate::ge::{GeId, GeInfo, GroupId};
use crate::keys::{self, EpochSecret, Role};
use crate::{Error, Result};

/// What a machine reports to its endpoint (at most once per negotiation).
#[derive(Debug)]
pub(crate) enum Outcome {
    Established(Established),
    Failed(FailReason),
}

/// The inputs of a new negotiation.
pub(crate) struct Start {
    pub(crate) id: NegotiationId,
    pub(crate) flow: FlowId,
    pub(crate) options: Vec<DprpOption>,
    /// Wiped when the start is dropped; only the `StaticSecret` (zeroized
    /// on drop) keeps it.
    pub(crate) secret: zeroize::Zeroizing<[u8; 32]>,
    pub(crate) nonce: [u8; 16],
    pub(crate) claims: Vec<Claim>,
    pub(crate) expected_peer: Option<GeId>,
    /// NAT-f: the flow's destination is this VIN (`expected_peer` is its gateway).
    pub(crate) natf: Option<Vin>,
}

pub(crate) struct Initiator {
    pub(crate) flow: FlowId,
    id: NegotiationId,
    expected_peer: Option<GeId>,
    natf: Option<Vin>,
    /// The ephemeral secret, until the authentic RGI used it: taken (and
    /// zeroized on drop) then, not kept through the linger time.
    eph: Option<StaticSecret>,
    h0: Hash,
    claims: Vec<Claim>,
    dde: Vec<u8>,
    dst: SocketAddr,
    state: State,
    rto: Duration,
    retransmit_at: Option<Instant>,
    deadline: Instant,
    reported: bool,
    /// When the DDE went out (the negotiation's duration starts here).
    started: Instant,
}

enum State {
    AwaitRgi,
    AwaitCdn(Box<Pending>),
    Closing(Box<Pending>),
    Done,
}

/// What the initiator keeps between its MPIT and the CDN.
struct Pending {
    rgi_digest: Hash,
    mpit: Vec<u8>,
    next_hop: SocketAddr,
    pair: PairKey,
    th_m: Hash,
    responder: GeId,
    entry: Established,
}

/// What the MPIT tag covers after the transcript hash: proof and signature, if present.
pub(crate) fn mpit_extra(m: &Mpit) -> Vec<u8> {
    let mut v = Vec::with_capacity(96);
    v.extend(m.proof.iter().flatten());
    v.extend(m.signature.iter().flatten());
    v
}

pub(crate) fn digest(bytes: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

impl Initiator {
    /// Builds and sends the DDE.
    pub(crate) fn start(ctx: &mut Ctx<'_>, s: Start, now: Instant) -> Result<Self> {
        let eph = StaticSecret::from(*s.secret);
        let mut options = s.options;
        if let Some(v) = &s.natf {
            // The one NAT-f request is this VIN's; a caller's own is replaced.
            options.retain(|o| !matches!(o, DprpOption::NatF { .. }));
            options.push(DprpOption::NatF {
                lip: v.lip,
                reserved_port: 0,
            });
        }
        // Offer a pair epoch (inside H0): kept only if the responder
        // accepts in its RGI, so a peer without fast open never gets FOPs.
        if ctx.cfg.fast_open && s.natf.is_none() && !options.contains(&DprpOption::FastOpen) {
            options.push(DprpOption::FastOpen);
            // And FOPs with their first packet inside (note 71).
            if ctx.cfg.fast_first {
                options.push(DprpOption::FastFirst);
            }
        }
        let dde = Dde {
            id: s.id,
            flow: s.flow,
            nonce: s.nonce,
            share: PublicKey::from(&eph).to_bytes(),
            credential: ctx.own_bytes.clone(),
            claims: s.claims.clone(),
            options,
            hops: Vec::new(),
        };
        let h0 = tr::dde_hash(&dde.core()?);
        let bytes = Message::Dde(dde).encode()?;
        // A NAT-f DDE is addressed to the VIN too: the node sends what is
        // addressed to one of its VINs to the VIN's gateway, as it sends
        // what is addressed to an overlay address to the GE that owns it.
        let dst = SocketAddr::new(s.flow.dst, DPRP_PORT);
        ctx.send(dst, bytes.clone());
        let t = ctx.cfg.timing;
        Ok(Self {
            flow: s.flow,
            id: s.id,
            expected_peer: s.expected_peer,
            natf: s.natf,
            eph: Some(eph),
            h0,
            claims: s.claims,
            dde: bytes,
            dst,
            state: State::AwaitRgi,
            rto: t.initial_rto,
            retransmit_at: Some(now + t.initial_rto),
            deadline: now + t.negotiation_timeout,
            reported: false,
            started: now,
        })
    }

    /// The next instant this machine must be woken at.
    pub(crate) fn next_timeout(&self) -> Option<(Instant, Timer)> {
        match (&self.state, self.retransmit_at) {
            (State::Done, _) => Some((self.deadline, Timer::Linger)),
            (_, Some(r)) if r < self.deadline => Some((r, Timer::Retransmit)),
            _ => Some((self.deadline, Timer::Deadline)),
        }
    }

    /// True while the ephemeral secret is held (tests of its erasure).
    #[cfg(test)]
    pub(crate) fn holds_ephemeral(&self) -> bool {
        self.eph.is_some()
    }

    /// True once the machine can be forgotten.
    pub(crate) fn is_finished(&self, now: Instant) -> bool {
        matches!(self.state, State::Done) && now >= self.deadline
    }

    /// Retransmits, or fails the negotiation at its deadline.
    pub(crate) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>, now: Instant) -> Option<Outcome> {
        if matches!(self.state, State::Done) {
            return None;
        }
        if now >= self.deadline {
            tracing::debug!(id = %self.id, flow = %self.flow, "negotiation timed out");
            self.state = State::Done;
            return self.report(Outcome::Failed(FailReason::Timeout));
        }
        if self.retransmit_at.is_some_and(|r| now >= r) {
            let (dst, bytes) = match &self.state {
                State::AwaitRgi => (self.dst, self.dde.clone()),
                State::AwaitCdn(p) | State::Closing(p) => (p.next_hop, p.mpit.clone()),
                State::Done => unreachable!("handled above"),
            };
            tracing::trace!(id = %self.id, rto = ?self.rto, "retransmit");
            ctx.send(dst, bytes);
            self.rto = (self.rto * 2).min(ctx.cfg.timing.max_rto);
            self.retransmit_at = Some(now + self.rto);
        }
        None
    }

    fn report(&mut self, o: Outcome) -> Option<Outcome> {
        if std::mem::replace(&mut self.reported, true) {
            None
        } else {
            Some(o)
        }
    }

    fn finish(&mut self, ctx: &Ctx<'_>, now: Instant) {
        self.state = State::Done;
        self.retransmit_at = None;
        self.deadline = now + ctx.cfg.timing.linger;
    }

    /// A COOKIE from a loaded responder: the DDE goes again at once, with
    /// the cookie as an option (so the transcript covers it). Only while no
    /// RGI came, and only if the binder shows the sender saw the DDE.
    pub(crate) fn handle_cookie(&mut self, ctx: &mut Ctx<'_>, c: Cookie) -> Result<()> {
        if !matches!(self.state, State::AwaitRgi) {
            return Err(Error::UnexpectedMessage("COOKIE after the RGI"));
        }
        let Message::Dde(mut dde) = Message::decode(&self.dde)? else {
            unreachable!("the initiator keeps its DDE");
        };
        if !cookie::same(&cookie::binder(&dde.nonce, c.id, &c.cookie), &c.binder) {
            return Err(Error::BadMac("COOKIE binder"));
        }
        dde.options.retain(|o| !matches!(o, DprpOption::Cookie(_)));
        dde.options.push(DprpOption::Cookie(c.cookie));
        let h0 = tr::dde_hash(&dde.core()?);
        let bytes = Message::Dde(dde).encode()?;
        (self.h0, self.dde) = (h0, bytes);
        tracing::debug!(id = %self.id, "COOKIE: DDE sent again with it");
        ctx.send(self.dst, self.dde.clone());
        Ok(())
    }

    /// An RGI from `from`, the next GE toward the responder.
    pub(crate) fn handle_rgi(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: SocketAddr,
        rgi: Rgi,
        raw: &[u8],
        now: Instant,
    ) -> Result<Option<Outcome>> {
        let rgi_digest = digest(raw);
        match &self.state {
            State::AwaitRgi => {}
            State::AwaitCdn(p) | State::Closing(p) if p.rgi_digest == rgi_digest => {
                return Ok(None);
            }
            State::Done => return Ok(None),
            _ => return Err(Error::UnexpectedMessage("a second, different RGI")),
        }
        // Cheap structural checks first, then signatures and MACs.
        if rgi.hops.len() != rgi.echo.len() {
            return Err(Error::invalid(
                "RGI hops",
                "do not match the echoed DDE path",
            ));
        }
        let responder = ctx.verify(&rgi.responder.credential)?;
        if responder.info.id == ctx.own().info.id {
            return Err(Error::invalid("RGI responder", "is this GE"));
        }
        let mut gateways = Vec::with_capacity(rgi.hops.len());
        for (i, hop) in rgi.hops.iter().enumerate() {
            let c = ctx.verify(&hop.credential)?;
            if c.info.id != rgi.echo[rgi.echo.len() - 1 - i] {
                return Err(Error::invalid("RGI hop", "GE differs from the DDE path"));
            }
            gateways.push(c);
        }
        let c_r = tr::responder_hash(&self.h0, &rgi.core()?);
        let proof = rgi.proof.map(|p| p.to_vec()).unwrap_or_default();
        let pair = ctx.peers.pair_key(&ctx.cfg.node_key, &responder.node_key)?;
        pair.verify(tr::RGI_TAG, &c_r, &proof, &rgi.tag, "RGI tag")?;
        let auth_r = [&proof[..], &rgi.tag[..]].concat();
        let (mut prev, mut prev_auth) = (c_r, auth_r.clone());
        for (hop, c) in rgi.hops.iter().zip(&gateways) {
            let h = tr::hop_hash(&prev, &prev_auth, hop.credential.as_bytes());
            c.verify_node_signature(
                &tr::to_be_signed(tr::HOP_SIG, &h),
                &hop.signature,
                "RGI hop",
            )?;
            (prev, prev_auth) = (h, hop.signature.to_vec());
        }
        // The RGI is authentic: from here a failed check ends the negotiation.
        let checked = Checked {
            rgi: &rgi,
            responder: &responder,
            gateways: &gateways,
            c_r,
            auth_r,
            pair,
            from,
            rgi_digest,
        };
        // From here the negotiation ends whatever the outcome: the
        // ephemeral is used at most once more, then wiped.
        let eph = self.eph.take();
        match self.conclude(ctx, checked, eph, now) {
            Ok(o) => Ok(o),
            Err(e) => {
                tracing::debug!(id = %self.id, error = %e, "authentic RGI rejected");
                self.finish(ctx, now);
                Ok(self.report(Outcome::Failed(FailReason::Rejected(e))))
            }
        }
    }

    fn conclude(
        &mut self,
        ctx: &mut Ctx<'_>,
        c: Checked<'_>,
        eph: Option<StaticSecret>,
        now: Instant,
    ) -> Result<Option<Outcome>> {
        // The answering end GE must own the destination: its overlay address
        // or a prefix its credential names. Otherwise any member on the path
        // could answer for an address and take the flow. A VIN is nobody's
        // address: for NAT-f the VIN's gateway answers, for the host's LAN
        // address (checked below, with the expected peer).
        let owned = match &self.natf {
            Some(v) => v.lip,
            None => self.flow.dst,
        };
        if ctx.cfg.checks_ownership() && !c.responder.covers(owned) {
            return Err(Error::NotOwner {
                ge: c.responder.info.id.0,
                addr: owned,
            });
        }
        if let Some(expected) = self.expected_peer
            && expected != c.responder.info.id
        {
            return Err(Error::UnexpectedPeer {
                expected: expected.0,
                found: c.responder.info.id.0,
            });
        }
        // The rules with the no-downgrade check (the responder's NAKs
        // first): credentials that share a group mean a protected flow or
        // none. `fpn-node why` predicts flows with the same function.
        let own_keys: BTreeSet<GroupId> = self.claims.iter().map(|c| c.group).collect();
        let their_keys: BTreeSet<GroupId> =
            c.rgi.responder.claims.iter().map(|c| c.group).collect();
        let gateways: Vec<&GeInfo> = c.gateways.iter().rev().map(|g| &g.info).collect();
        let path: Vec<GeId> = std::iter::once(ctx.own().info.id)
            .chain(gateways.iter().map(|g| g.id))
            .chain(std::iter::once(c.responder.info.id))
            .collect();
        let decision = decide_ends(
            &ctx.own().info,
            &own_keys,
            &gateways,
            &c.responder.info,
            &their_keys,
        )?;
        let chosen = c.rgi.responder.chosen;
        if decision.group != chosen.map(|x| x.group) {
            return Err(Error::invalid(
                "RGI chosen group",
                "is not the lowest shared group",
            ));
        }
        let natf = match &self.natf {
            Some(v) => Some(check_natf_answer(v, c.rgi, chosen.is_some())?),
            None => None,
        };
        let mut secret = None;
        if let (Some(ch), Some(proof)) = (chosen, c.rgi.proof) {
            let gk = ctx
                .keys
                .get(ch.group, ch.version)
                .ok_or(Error::UnknownKeyVersion {
                    group: ch.group.0,
                    version: ch.version.0,
                })?;
            keys::verify_group_proof(gk, &c.c_r, &proof)?;
            let shared = eph
                .as_ref()
                .ok_or(Error::UnexpectedMessage("the ephemeral is already used"))?
                .diffie_hellman(&PublicKey::from(c.rgi.responder.share));
            if !shared.was_contributory() {
                return Err(Error::InvalidKey("ephemeral share of low order"));
            }
            secret = Some((gk, shared, ch.version, ch.group));
        }
        let decisions = path
            .iter()
            .zip(&decision.actions)
            .map(|(ge, a)| HopDecision {
                ge: *ge,
                action: *a,
                key_version: matches!(a, Action::Protect(_))
                    .then(|| chosen.map(|x| x.version))
                    .flatten(),
            })
            .collect();
        let mut mpit = Mpit {
            id: self.id,
            decisions,
            options: Vec::new(),
            tag: [0; 32],
            proof: None,
            signature: None,
        };
        let core = mpit.core()?;
        let th_m = tr::mpit_hash(&c.c_r, &c.auth_r, &core);
        mpit.proof = secret.as_ref().map(|(gk, ..)| keys::group_proof(gk, &th_m));
        if !c.gateways.is_empty() {
            let tbs = tr::to_be_signed(tr::MPIT_SIG, &th_m);
            mpit.signature = Some(ctx.cfg.node_key.sign(&tbs));
        }
        // The tag covers the proof and signature too: a mangled proof must
        // look like garbage (ignored), not like the initiator's own failure.
        mpit.tag = c.pair.tag(tr::MPIT_TAG, &th_m, &mpit_extra(&mpit));
        let bytes = Message::Mpit(mpit).encode()?;
        let (key_version, flow_keys, epoch) = match secret {
            Some((gk, shared, v, group)) => (
                Some(v),
                Some(keys::derive_flow_keys(
                    gk,
                    shared.as_bytes(),
                    &th_m,
                    Role::Initiator,
                )),
                // A pair epoch only where no gateway is between the ends
                // and not for NAT-f (see `super::epoch`).
                (ctx.cfg.fast_open
                    && c.gateways.is_empty()
                    && natf.is_none()
                    && c.rgi.responder.options.contains(&DprpOption::FastOpen))
                .then(|| {
                    Box::new(EpochSeed {
                        secret: EpochSecret::derive(gk, shared.as_bytes(), &th_m),
                        peer: c.responder.clone(),
                        group,
                        version: v,
                        first: ctx.cfg.fast_first
                            && c.rgi.responder.options.contains(&DprpOption::FastFirst),
                    })
                }),
            ),
            None => (None, None, None),
        };
        ctx.send(c.from, bytes.clone());
        self.rto = ctx.cfg.timing.initial_rto;
        self.retransmit_at = Some(now + self.rto);
        let pending = Box::new(Pending {
            rgi_digest: c.rgi_digest,
            mpit: bytes,
            next_hop: c.from,
            pair: c.pair,
            th_m,
            responder: c.responder.info.id,
            entry: Established {
                negotiation: self.id,
                flow: self.flow,
                position: Position::Initiator,
                action: decision.actions[0],
                peer: c.responder.info.id,
                key_version,
                keys: flow_keys,
                peer_options: c.rgi.responder.options.clone(),
                peer_serial: Some(c.responder.serial),
                natf,
                started: Some(self.started),
                fast: None,
                first: None,
                epoch,
            },
        });
        tracing::debug!(id = %self.id, actions = ?decision.actions, "decided, MPIT sent");
        if let Some(by) = decision.dropped_at.and_then(|i| path.get(i).copied()) {
            self.state = State::Closing(pending);
            return Ok(self.report(Outcome::Failed(FailReason::Dropped { by })));
        }
        self.state = State::AwaitCdn(pending);
        Ok(None)
    }

    /// The responder's CDN.
    pub(crate) fn handle_cdn(
        &mut self,
        ctx: &mut Ctx<'_>,
        cdn: Cdn,
        now: Instant,
    ) -> Result<Option<Outcome>> {
        let p = match &self.state {
            State::AwaitCdn(p) | State::Closing(p) => p,
            State::Done => return Ok(None),
            State::AwaitRgi => return Err(Error::UnexpectedMessage("CDN before the RGI")),
        };
        let th_c = tr::cdn_hash(&p.th_m, &cdn.core()?);
        let extra: Vec<u8> = cdn.signature.iter().flatten().copied().collect();
        p.pair
            .verify(tr::CDN_TAG, &th_c, &extra, &cdn.tag, "CDN tag")?;
        let closing = matches!(self.state, State::Closing(_));
        let (State::AwaitCdn(p) | State::Closing(p)) =
            std::mem::replace(&mut self.state, State::Done)
        else {
            unreachable!("matched above")
        };
        self.finish(ctx, now);
        if closing {
            return Ok(None);
        }
        Ok(match cdn.status {
            CdnStatus::Confirmed => {
                tracing::debug!(id = %self.id, action = %p.entry.action, "established");
                self.report(Outcome::Established(p.entry))
            }
            CdnStatus::Refused(code) => self.report(Outcome::Failed(FailReason::Refused {
                by: p.responder,
                code,
            })),
        })
    }

    /// A signed refusal. Only the GE this negotiation is addressed to may
    /// refuse it: the one the directory names for the destination, or one
    /// whose credential covers the destination (the end GE, or a gateway
    /// standing for it). A DDE travels in the clear, so any CA-valid GE that
    /// sees one can sign a NAK over its hash; from anyone else the NAK is
    /// dropped like garbage, and the genuine answer may still come. The
    /// price: a transit gateway's HOP_LIMIT refusal now ends in a timeout.
    pub(crate) fn handle_nak(
        &mut self,
        ctx: &mut Ctx<'_>,
        nak: Nak,
        now: Instant,
    ) -> Result<Option<Outcome>> {
        if !matches!(self.state, State::AwaitRgi) {
            return Err(Error::UnexpectedMessage("NAK after the RGI"));
        }
        let refuser: Credential = ctx.verify(&nak.credential)?;
        let tbs = [tr::NAK_SIG, &self.h0[..], &nak.core()?].concat();
        refuser.verify_node_signature(&tbs, &nak.signature, "NAK")?;
        let addressed = self.expected_peer == Some(refuser.info.id);
        // A VIN is nobody's address: only the VIN's gateway may refuse.
        if !addressed && (self.natf.is_some() || !refuser.covers(self.flow.dst)) {
            tracing::debug!(id = %self.id, refuser = %refuser.info.id, "NAK from a GE that does not speak for the destination: dropped");
            return Err(Error::NakFromStranger(refuser.info.id.0));
        }
        self.finish(ctx, now);
        Ok(self.report(Outcome::Failed(FailReason::Refused {
            by: refuser.info.id,
            code: nak.code,
        })))
    }
}

/// The gateway's mapping from its authentic RGI to a NAT-f DDE: exactly one
/// NAT-f option, for the host this VIN stands for, with a port, on a
/// protected flow (the host is closed: a NAT-f flow is never plain).
fn check_natf_answer(v: &Vin, rgi: &Rgi, protected: bool) -> Result<NatfMapping> {
    let m = natf_option(&rgi.responder.options)
        .map_err(|_| Error::BadNatfAnswer("more than one NAT-f option"))?
        .ok_or(Error::BadNatfAnswer("no NAT-f option"))?;
    if m.lip != v.lip {
        return Err(Error::BadNatfAnswer("a mapping for another host"));
    }
    if m.reserved_port == 0 {
        return Err(Error::BadNatfAnswer("no reserved port"));
    }
    if !protected {
        return Err(Error::BadNatfAnswer("no group chosen"));
    }
    Ok(m)
}

/// An RGI whose authenticators verified, with what the checks produced.
struct Checked<'a> {
    rgi: &'a Rgi,
    responder: &'a Credential,
    gateways: &'a [Credential],
    c_r: Hash,
    auth_r: Vec<u8>,
    pair: PairKey,
    from: SocketAddr,
    rgi_digest: Hash,
}
