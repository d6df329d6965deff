//! The responder's machine: answers a DDE with an RGI, checks the MPIT
//! against the decision rules, derives the traffic keys, confirms with a CDN.
//!
//! States: `AwaitMpit` (a duplicate DDE gets the same RGI again, no new
//! crypto) -> `Confirmed` (a duplicate MPIT gets the same CDN again), kept
//! until the linger time. The responder never retransmits on its own: the
//! initiator drives retries. The X25519 agreement waits for an authentic
//! MPIT, so a flood of DDEs costs one key generation each, not two.

use std::net::SocketAddr;
use std::time::Instant;

use x25519_dalek::{PublicKey, StaticSecret};

use crate::action::Action;
use crate::credential::Credential;
use crate::dprp::endpoint::Ctx;
use crate::dprp::epoch::EpochSeed;
use crate::dprp::initiator::{digest, mpit_extra};
use crate::dprp::msg::{
    Cdn, CdnStatus, Claim, Dde, Message, Mpit, Nak, NegotiationId, RefuseCode, ResponderPart, Rgi,
};
use crate::dprp::natf::NatfMapping;
use crate::dprp::transcript::{self as tr, Hash, PairKey};
use crate::dprp::{DprpOption, Established, Position, Timer, effective};
use crate::flow::FlowId;
use crate::ge::{GeId, GeInfo, GroupId, Mode};
use crate::keys::{self, EpochSecret, FlowKeys, KeyVersion, Role};
use crate::{Error, Result};

pub(crate) struct Responder {
    pub(crate) flow: FlowId,
    id: NegotiationId,
    initiator: GeId,
    initiator_mode: Mode,
    initiator_share: [u8; 32],
    initiator_options: Vec<DprpOption>,
    initiator_serial: u64,
    /// The initiator's verified credential, kept for a pair epoch
    /// (direct paths only; see `super::epoch`).
    initiator_credential: Option<Credential>,
    /// The ephemeral secret, until the authentic MPIT used it.
    eph: Option<StaticSecret>,
    dde_digest: Hash,
    echo: Vec<GeId>,
    chosen: Option<Claim>,
    own_mode: Mode,
    c_r: Hash,
    auth_r: Vec<u8>,
    pair: PairKey,
    rgi: Vec<u8>,
    /// NAT-f: the mapping this gateway granted (its port is reserved).
    natf: Option<NatfMapping>,
    state: State,
    deadline: Instant,
}

/// What a gateway grants a NAT-f DDE before it answers: the mapping (with
/// the port already reserved) and the host's groups, which replace the
/// gateway's own in the decision (the DDE asks for the host, not for the
/// gateway).
pub(crate) struct NatfGrant {
    pub(crate) mapping: NatfMapping,
    /// The host's groups this gateway holds a key for.
    pub(crate) groups: Vec<GroupId>,
}

enum State {
    AwaitMpit,
    Confirmed { mpit_digest: Hash, cdn: Vec<u8> },
}

/// The claims this GE makes: each group of its credential it holds a current key for.
pub(crate) fn own_claims(ctx: &Ctx<'_>) -> Vec<Claim> {
    ctx.own()
        .info
        .groups
        .iter()
        .filter_map(|g| {
            ctx.keys
                .current(*g)
                .map(|version| Claim { group: *g, version })
        })
        .collect()
}

/// Builds a signed NAK for the DDE whose core hashes to `h0`.
pub(crate) fn nak(
    ctx: &Ctx<'_>,
    id: NegotiationId,
    h0: &Hash,
    code: RefuseCode,
) -> Result<Vec<u8>> {
    let mut nak = Nak {
        id,
        code,
        credential: ctx.own_bytes.clone(),
        signature: [0; 64],
    };
    let tbs = [tr::NAK_SIG, &h0[..], &nak.core()?].concat();
    nak.signature = ctx.cfg.node_key.sign(&tbs);
    Message::Nak(nak).encode()
}

/// Verifies the credential of a DDE this GE is the end GE for, and that it
/// covers the flow's source: the initiator is the end GE in front of the
/// source (the GES itself, or the gateway whose prefix holds the terminal),
/// so the source must be its overlay address or lie in a prefix its
/// credential names. Gateways between the ends add only their ids to a DDE
/// and speak for no end, so nothing else can vouch for the source.
///
/// A genuine credential that fails (expired, revoked, or not covering the
/// source) gets a signed NAK so the initiator fails fast; a forged one gets
/// no answer at all.
pub(crate) fn check_initiator(
    ctx: &mut Ctx<'_>,
    from: SocketAddr,
    dde: &Dde,
) -> Result<Credential> {
    let refuse = |ctx: &mut Ctx<'_>, code| -> Result<()> {
        let h0 = tr::dde_hash(&dde.core()?);
        let bytes = nak(ctx, dde.id, &h0, code)?;
        ctx.send(from, bytes);
        Ok(())
    };
    let initiator = match ctx.verify(&dde.credential) {
        Ok(c) => c,
        Err(
            e @ (Error::CredentialExpired { .. }
            | Error::Revoked(_)
            | Error::CredentialStale { .. }),
        ) => {
            refuse(ctx, RefuseCode::CredentialRejected)?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if ctx.cfg.checks_ownership() && !initiator.covers(dde.flow.src) {
        // Addresses at DEBUG only; no key material is involved.
        tracing::debug!(
            id = %dde.id,
            initiator = %initiator.info.id,
            src = %dde.flow.src,
            "DDE refused: the flow's source is not the initiator's"
        );
        refuse(ctx, RefuseCode::NotOwner)?;
        return Err(Error::NotOwner {
            ge: initiator.info.id.0,
            addr: dde.flow.src,
        });
    }
    Ok(initiator)
}

/// The options of a DDE without the cookie echo.
pub(crate) fn without_cookie(mut options: Vec<DprpOption>) -> Vec<DprpOption> {
    options.retain(|o| !matches!(o, DprpOption::Cookie(_)));
    options
}

impl Responder {
    /// Answers a new DDE (already decoded; `raw` is the datagram) with an
    /// RGI. `initiator` is the DDE's credential as [`check_initiator`]
    /// verified it; `natf` what this gateway granted a NAT-f DDE.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        ctx: &mut Ctx<'_>,
        from: SocketAddr,
        dde: Dde,
        initiator: Credential,
        raw: &[u8],
        secret: &[u8; 32],
        natf: Option<NatfGrant>,
        now: Instant,
    ) -> Result<Self> {
        let h0 = tr::dde_hash(&dde.core()?);
        // A pair epoch when both ends want one, on a direct path, not for
        // NAT-f (each of its flows needs a port reservation): answered in
        // the RGI core, so the initiator keeps one only if this end does.
        let fast = ctx.cfg.fast_open
            && dde.options.contains(&DprpOption::FastOpen)
            && dde.hops.is_empty()
            && natf.is_none();
        let own = ctx.own();
        if initiator.info.id == own.info.id || dde.hops.contains(&own.info.id) {
            return Err(Error::invalid("DDE", "loops back to this GE"));
        }
        let mut claims = own_claims(ctx);
        // NAT-f: the flow is to the host, so the gateway claims only the
        // host's groups, and the initiator decides with those (the lowest
        // group both hold is then one the host is in).
        if let Some(g) = &natf {
            claims.retain(|c| g.groups.contains(&c.group));
        }
        let theirs = effective(&initiator.info, &dde.claims);
        let mine: GeInfo = effective(&own.info, &claims);
        let chosen = theirs.lowest_shared_group(&mine).map(|group| {
            let current = ctx.keys.current(group).expect("claimed groups have a key");
            let offered = dde
                .claims
                .iter()
                .find(|c| c.group == group)
                .map_or(current, |c| c.version);
            // The newest version both hold: the initiator's if this GE still
            // has it and it is not newer than ours, else ours.
            let version = if offered <= current && ctx.keys.get(group, offered).is_some() {
                offered
            } else {
                current
            };
            Claim { group, version }
        });
        // Both credentials name a group, so the flow must be protected; if
        // one end lacks the key the claims share nothing and the rules would
        // let two open members talk in the clear. Refuse instead (a signed
        // NAK: the initiator fails at once, its application gets ICMP).
        if chosen.is_none()
            && let Some(group) = initiator.info.lowest_shared_group(&own.info)
        {
            tracing::debug!(id = %dde.id, initiator = %initiator.info.id, %group, "DDE refused: a shared group without a key on one end");
            let bytes = nak(ctx, dde.id, &h0, RefuseCode::KeyUnavailable)?;
            ctx.send(from, bytes);
            return Err(Error::GroupKeyMissing { group: group.0 });
        }
        let eph = StaticSecret::from(*secret);
        let mut rgi = Rgi {
            id: dde.id,
            echo: dde.hops.clone(),
            responder: ResponderPart {
                credential: ctx.own_bytes.clone(),
                share: PublicKey::from(&eph).to_bytes(),
                claims,
                chosen,
                // Inside the RGI core: the responder's transcript hash, so
                // the pair-key tag and the group proof cover the mapping.
                options: natf
                    .iter()
                    .map(|g| DprpOption::NatF {
                        lip: g.mapping.lip,
                        reserved_port: g.mapping.reserved_port,
                    })
                    .chain(fast.then_some(DprpOption::FastOpen))
                    .chain(
                        (fast
                            && ctx.cfg.fast_first
                            && dde.options.contains(&DprpOption::FastFirst))
                        .then_some(DprpOption::FastFirst),
                    )
                    .collect(),
            },
            proof: chosen.map(|_| [0; 32]),
            tag: [0; 32],
            hops: Vec::new(),
        };
        let c_r = tr::responder_hash(&h0, &rgi.core()?);
        if let Some(c) = chosen {
            let gk = ctx
                .keys
                .get(c.group, c.version)
                .expect("chosen from held keys");
            rgi.proof = Some(keys::group_proof(gk, &c_r));
        }
        let proof = rgi.proof.map(|p| p.to_vec()).unwrap_or_default();
        let pair = ctx.peers.pair_key(&ctx.cfg.node_key, &initiator.node_key)?;
        rgi.tag = pair.tag(tr::RGI_TAG, &c_r, &proof);
        let auth_r = [&proof[..], &rgi.tag[..]].concat();
        let bytes = Message::Rgi(rgi).encode()?;
        ctx.send(from, bytes.clone());
        tracing::debug!(id = %dde.id, initiator = %initiator.info.id, ?chosen, "RGI sent");
        Ok(Self {
            flow: dde.flow,
            id: dde.id,
            initiator: initiator.info.id,
            initiator_mode: initiator.info.mode,
            initiator_share: dde.share,
            // The cookie was for this GE's admission, not for the flow.
            initiator_options: without_cookie(dde.options),
            initiator_serial: initiator.serial,
            initiator_credential: fast.then(|| initiator.clone()),
            eph: Some(eph),
            dde_digest: digest(raw),
            echo: dde.hops,
            chosen,
            own_mode: ctx.own().info.mode,
            c_r,
            auth_r,
            pair,
            rgi: bytes,
            natf: natf.map(|g| g.mapping),
            state: State::AwaitMpit,
            deadline: now + ctx.cfg.timing.negotiation_timeout,
        })
    }

    /// The next instant this machine must be woken at.
    pub(crate) fn next_timeout(&self) -> Option<(Instant, Timer)> {
        Some(match self.state {
            State::AwaitMpit => (self.deadline, Timer::Deadline),
            State::Confirmed { .. } => (self.deadline, Timer::Linger),
        })
    }

    /// True while the ephemeral secret is held (tests of its erasure).
    #[cfg(test)]
    pub(crate) fn holds_ephemeral(&self) -> bool {
        self.eph.is_some()
    }

    /// True once the machine can be forgotten.
    pub(crate) fn is_finished(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// The same negotiation id in another DDE. The same bytes (a
    /// retransmission) get the same RGI again: `Ok(true)`. Other bytes while
    /// no MPIT has authenticated the negotiation: `Ok(false)`, the caller
    /// starts over with the new DDE (the first one may have been mangled on
    /// the way; a DDE carries no authenticator of its own).
    pub(crate) fn handle_dde_again(
        &self,
        ctx: &mut Ctx<'_>,
        from: SocketAddr,
        raw: &[u8],
    ) -> Result<bool> {
        if digest(raw) == self.dde_digest {
            ctx.send(from, self.rgi.clone());
            return Ok(true);
        }
        match self.state {
            State::AwaitMpit => Ok(false),
            State::Confirmed { .. } => Err(Error::UnexpectedMessage(
                "a different DDE for a confirmed negotiation",
            )),
        }
    }

    /// The initiator's MPIT. Returns the entry when this GE confirms it.
    pub(crate) fn handle_mpit(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: SocketAddr,
        mpit: Mpit,
        raw: &[u8],
        now: Instant,
    ) -> Result<Option<Established>> {
        let mpit_digest = digest(raw);
        if let State::Confirmed {
            mpit_digest: d,
            cdn,
        } = &self.state
        {
            if *d != mpit_digest {
                return Err(Error::UnexpectedMessage("a second, different MPIT"));
            }
            ctx.send(from, cdn.clone());
            return Ok(None);
        }
        let core = mpit.core()?;
        let th_m = tr::mpit_hash(&self.c_r, &self.auth_r, &core);
        let extra = mpit_extra(&mpit);
        self.pair
            .verify(tr::MPIT_TAG, &th_m, &extra, &mpit.tag, "MPIT tag")?;
        // Authentic: answer with a CDN either way. The ephemeral is used
        // here for the last time and wiped when this call returns.
        let eph = self.eph.take();
        let verdict = self.check(ctx, &mpit, &th_m, eph.as_ref());
        let status = match &verdict {
            Ok(_) => CdnStatus::Confirmed,
            Err(code) => CdnStatus::Refused(*code),
        };
        let mut cdn = Cdn {
            id: self.id,
            status,
            options: Vec::new(),
            tag: [0; 32],
            signature: None,
        };
        let th_c = tr::cdn_hash(&th_m, &cdn.core()?);
        if !self.echo.is_empty() {
            let tbs = tr::to_be_signed(tr::CDN_SIG, &th_c);
            cdn.signature = Some(ctx.cfg.node_key.sign(&tbs));
        }
        let extra: Vec<u8> = cdn.signature.iter().flatten().copied().collect();
        cdn.tag = self.pair.tag(tr::CDN_TAG, &th_c, &extra);
        let bytes = Message::Cdn(cdn).encode()?;
        ctx.send(from, bytes.clone());
        self.state = State::Confirmed {
            mpit_digest,
            cdn: bytes,
        };
        self.deadline = now + ctx.cfg.timing.linger;
        match verdict {
            Ok((action, key_version, keys, epoch)) => {
                tracing::debug!(id = %self.id, %action, "confirmed");
                let epoch = epoch.and_then(|secret| {
                    let c = self.chosen?;
                    Some(Box::new(EpochSeed {
                        secret,
                        peer: self.initiator_credential.take()?,
                        group: c.group,
                        version: c.version,
                        // What the RGI answered (kind 5 only when fast).
                        first: ctx.cfg.fast_first
                            && self.initiator_options.contains(&DprpOption::FastFirst),
                    }))
                });
                Ok(Some(Established {
                    negotiation: self.id,
                    flow: self.flow,
                    position: Position::Responder,
                    action,
                    peer: self.initiator,
                    key_version,
                    keys,
                    peer_options: std::mem::take(&mut self.initiator_options),
                    peer_serial: Some(self.initiator_serial),
                    natf: self.natf,
                    started: None,
                    fast: None,
                    first: None,
                    epoch,
                }))
            }
            Err(code) => {
                tracing::debug!(id = %self.id, ?code, "MPIT refused");
                Ok(None)
            }
        }
    }

    /// Checks an authentic MPIT against the rules; on success gives this GE's
    /// action, key version and traffic keys.
    #[allow(clippy::type_complexity)]
    fn check(
        &self,
        ctx: &Ctx<'_>,
        mpit: &Mpit,
        th_m: &Hash,
        eph: Option<&StaticSecret>,
    ) -> Result<
        (
            Action,
            Option<KeyVersion>,
            Option<FlowKeys>,
            Option<EpochSecret>,
        ),
        RefuseCode,
    > {
        let own_id = ctx.own().info.id;
        let ids = mpit.decisions.iter().map(|d| d.ge);
        let expected = std::iter::once(self.initiator)
            .chain(self.echo.iter().copied())
            .chain(std::iter::once(own_id));
        // Gateways can only check a signature, so one must be there iff they are.
        if !ids.eq(expected) || mpit.signature.is_some() == self.echo.is_empty() {
            return Err(RefuseCode::DecisionMismatch);
        }
        let last = mpit.decisions.len() - 1;
        match self.chosen {
            Some(c) => {
                let rules_hold = mpit.decisions.iter().enumerate().all(|(i, d)| {
                    if i == 0 || i == last {
                        d.action == Action::Protect(c.group) && d.key_version == Some(c.version)
                    } else {
                        d.action == Action::Relay
                    }
                });
                if !rules_hold {
                    return Err(RefuseCode::DecisionMismatch);
                }
                let gk = ctx
                    .keys
                    .get(c.group, c.version)
                    .ok_or(RefuseCode::KeyUnavailable)?;
                let proof = mpit.proof.ok_or(RefuseCode::BadProof)?;
                keys::verify_group_proof(gk, th_m, &proof).map_err(|_| RefuseCode::BadProof)?;
                let shared = eph
                    .ok_or(RefuseCode::KeyUnavailable)?
                    .diffie_hellman(&PublicKey::from(self.initiator_share));
                if !shared.was_contributory() {
                    return Err(RefuseCode::BadProof);
                }
                let k = keys::derive_flow_keys(gk, shared.as_bytes(), th_m, Role::Responder);
                // A pair epoch only where no gateway is between the ends
                // (a gateway must see each flow) and not for NAT-f (each
                // flow needs its own port reservation).
                let epoch = (self.initiator_credential.is_some()
                    && self.echo.is_empty()
                    && self.natf.is_none())
                .then(|| EpochSecret::derive(gk, shared.as_bytes(), th_m));
                Ok((Action::Protect(c.group), Some(c.version), Some(k), epoch))
            }
            None => {
                // Without a shared group each end's action follows its own mode;
                // the gateways' modes are the initiator's to judge (it holds
                // their signed credentials), and no GE is asked to protect.
                let by_mode = |m: Mode| match m {
                    Mode::Open => Action::Pass,
                    Mode::Closed => Action::Drop,
                };
                let ok = mpit.decisions[0].action == by_mode(self.initiator_mode)
                    && mpit.decisions[last].action == by_mode(self.own_mode)
                    && mpit.proof.is_none()
                    && mpit.decisions.iter().all(|d| {
                        !matches!(d.action, Action::Protect(_)) && d.action != Action::Relay
                    });
                if !ok {
                    return Err(RefuseCode::DecisionMismatch);
                }
                Ok((by_mode(self.own_mode), None, None, None))
            }
        }
    }
}
