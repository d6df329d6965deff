//! The on-path gateway's machine (a GEN/GEA between the two ends).
//!
//! On a DDE in transit it appends its GE id and passes the DDE on to the
//! flow's destination; on the RGI coming back it appends its credential and a
//! signature over the transcript so far and returns it to the previous hop;
//! it checks the initiator's signed MPIT (its own action must fit its mode)
//! and the responder's signed CDN, and installs its entry on the CDN. On
//! the MPIT it also checks that each end's credential covers its end of the
//! flow (the same check both ends make), and passes nothing on if not.
//! Retransmissions in either direction are answered from the cached copies,
//! so a lossy path costs no new signatures.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::action::Action;
use crate::dprp::endpoint::Ctx;
use crate::dprp::initiator::digest;
use crate::dprp::msg::{
    Cdn, CdnStatus, CredentialBytes, Dde, GatewayHop, MAX_HOPS, Message, Mpit, NegotiationId,
    RefuseCode, Rgi,
};
use crate::dprp::natf::natf_option;
use crate::dprp::responder::nak;
use crate::dprp::transcript::{self as tr, Hash};
use crate::dprp::{DPRP_PORT, DprpOption, Established, Position, Timer};
use crate::flow::FlowId;
use crate::ge::{GeId, Mode};
use crate::{Error, Result};

pub(crate) struct Transit {
    pub(crate) flow: FlowId,
    pub(crate) id: NegotiationId,
    index: usize,
    h0: Hash,
    dde_digest: Hash,
    initiator: CredentialBytes,
    initiator_options: Vec<DprpOption>,
    /// NAT-f: the host's LAN address the DDE asks for. The flow's
    /// destination is the initiator's VIN; the responder must cover this.
    natf_lip: Option<IpAddr>,
    prev_hop: SocketAddr,
    /// Where the DDE goes on: the flow's destination, or for an
    /// intercepted DDE where its sender addressed it.
    next_dde_hop: SocketAddr,
    forwarded_dde: Vec<u8>,
    back: Option<Back>,
    forth: Option<Forth>,
    done: Option<Done>,
    /// An authentic MPIT named an end that does not own its address: its
    /// retransmissions are dropped without a second check (or count).
    refused: bool,
    deadline: Instant,
}

/// What the gateway learned from the RGI.
struct Back {
    rgi_digest: Hash,
    rgi_out: Vec<u8>,
    next_hop: SocketAddr,
    c_r: Hash,
    auth_r: Vec<u8>,
    responder: CredentialBytes,
}

/// The CDN the gateway confirmed its entry on.
struct Done {
    digest: Hash,
    cdn: Vec<u8>,
    th_c: Hash,
}

/// What the gateway learned from the MPIT (its tentative entry).
struct Forth {
    mpit_digest: Hash,
    mpit: Vec<u8>,
    th_m: Hash,
    action: Action,
    initiator: GeId,
}

impl Transit {
    /// Takes a DDE in transit: appends this GE and passes it on, to `to`
    /// if it was intercepted on its way there, else to the flow's
    /// destination.
    pub(crate) fn start(
        ctx: &mut Ctx<'_>,
        from: SocketAddr,
        to: Option<SocketAddr>,
        dde: Dde,
        raw: &[u8],
        now: Instant,
    ) -> Result<Self> {
        let me = ctx.own().info.id;
        if dde.hops.contains(&me) {
            return Err(Error::invalid(
                "DDE hops",
                "loop: this gateway is already on the path",
            ));
        }
        let h0 = tr::dde_hash(&dde.core()?);
        if dde.hops.len() >= MAX_HOPS {
            let bytes = nak(ctx, dde.id, &h0, RefuseCode::HopLimit)?;
            ctx.send(from, bytes);
            return Err(Error::TooLarge {
                what: "DDE hops",
                len: dde.hops.len() + 1,
                max: MAX_HOPS,
            });
        }
        let index = dde.hops.len();
        let (id, flow, initiator, initiator_options) = (
            dde.id,
            dde.flow,
            dde.credential.clone(),
            crate::dprp::responder::without_cookie(dde.options.clone()),
        );
        let natf_lip = natf_option(&dde.options)?.map(|m| m.lip);
        // A NAT-f DDE travels to its gateway, not to the flow's (virtual)
        // destination; any DDE goes on where its sender sent it.
        let next_dde_hop = match (to, natf_lip) {
            (Some(to), _) => to,
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "DDE",
                    "NAT-f: neither for this gateway nor intercepted on its way",
                ));
            }
            (None, None) => SocketAddr::new(flow.dst, DPRP_PORT),
        };
        let mut fwd = dde;
        fwd.hops.push(me);
        let bytes = Message::Dde(fwd).encode()?;
        ctx.send(next_dde_hop, bytes.clone());
        tracing::debug!(%id, %flow, index, "DDE passed on");
        Ok(Self {
            flow,
            id,
            index,
            h0,
            dde_digest: digest(raw),
            initiator,
            initiator_options,
            natf_lip,
            prev_hop: from,
            next_dde_hop,
            forwarded_dde: bytes,
            back: None,
            forth: None,
            done: None,
            refused: false,
            deadline: now + ctx.cfg.timing.negotiation_timeout,
        })
    }

    /// The next instant this machine must be woken at.
    pub(crate) fn next_timeout(&self) -> Option<(Instant, Timer)> {
        let timer = if self.done.is_some() {
            Timer::Linger
        } else {
            Timer::Deadline
        };
        Some((self.deadline, timer))
    }

    /// True once the machine can be forgotten.
    pub(crate) fn is_finished(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// The same negotiation id in another DDE: `Ok(true)` when it was the
    /// same DDE (passed on again), `Ok(false)` when the caller should start
    /// over with it (nothing authenticated the first one yet).
    pub(crate) fn handle_dde_again(&self, ctx: &mut Ctx<'_>, raw: &[u8]) -> Result<bool> {
        if digest(raw) == self.dde_digest {
            ctx.send(self.next_dde_hop, self.forwarded_dde.clone());
            return Ok(true);
        }
        if self.forth.is_some() {
            return Err(Error::UnexpectedMessage(
                "a different DDE for an authenticated negotiation",
            ));
        }
        Ok(false)
    }

    /// The RGI on its way back: append this gateway's hop.
    pub(crate) fn handle_rgi(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: SocketAddr,
        mut rgi: Rgi,
        raw: &[u8],
    ) -> Result<()> {
        let rgi_digest = digest(raw);
        if let Some(b) = &self.back {
            if b.rgi_digest == rgi_digest {
                ctx.send(self.prev_hop, b.rgi_out.clone());
                return Ok(());
            }
            // A different RGI: take it while no MPIT has authenticated the
            // first (which may have been mangled on the way).
            if self.forth.is_some() {
                return Err(Error::UnexpectedMessage("a second, different RGI"));
            }
        }
        let me = ctx.own().info.id;
        if rgi.echo.get(self.index) != Some(&me)
            || rgi.hops.len() + self.index + 1 != rgi.echo.len()
        {
            return Err(Error::invalid(
                "RGI",
                "path does not place this gateway where the DDE did",
            ));
        }
        let c_r = tr::responder_hash(&self.h0, &rgi.core()?);
        let proof = rgi.proof.map(|p| p.to_vec()).unwrap_or_default();
        let auth_r = [&proof[..], &rgi.tag[..]].concat();
        let (mut prev, mut prev_auth) = (c_r, auth_r.clone());
        for hop in &rgi.hops {
            prev = tr::hop_hash(&prev, &prev_auth, hop.credential.as_bytes());
            prev_auth = hop.signature.to_vec();
        }
        let mine = tr::hop_hash(&prev, &prev_auth, ctx.own_bytes.as_bytes());
        let signature = ctx.cfg.node_key.sign(&tr::to_be_signed(tr::HOP_SIG, &mine));
        let responder = rgi.responder.credential.clone();
        rgi.hops.push(GatewayHop {
            credential: ctx.own_bytes.clone(),
            signature,
        });
        let out = Message::Rgi(rgi).encode()?;
        ctx.send(self.prev_hop, out.clone());
        self.back = Some(Back {
            rgi_digest,
            rgi_out: out,
            next_hop: from,
            c_r,
            auth_r,
            responder,
        });
        Ok(())
    }

    /// The initiator's MPIT: check its signature and this GE's action, pass it on.
    pub(crate) fn handle_mpit(&mut self, ctx: &mut Ctx<'_>, mpit: Mpit, raw: &[u8]) -> Result<()> {
        let Some(back) = &self.back else {
            return Err(Error::UnexpectedMessage("MPIT before the RGI"));
        };
        if self.refused {
            return Err(Error::UnexpectedMessage("MPIT of a refused flow"));
        }
        let mpit_digest = digest(raw);
        if let Some(f) = &self.forth
            && f.mpit_digest == mpit_digest
        {
            ctx.send(back.next_hop, f.mpit.clone());
            return Ok(());
        }
        let core = mpit.core()?;
        let th_m = tr::mpit_hash(&back.c_r, &back.auth_r, &core);
        if self.forth.as_ref().is_some_and(|f| f.th_m != th_m) {
            return Err(Error::UnexpectedMessage("a second, different MPIT"));
        }
        let initiator = ctx.verify(&self.initiator)?;
        let sig = mpit.signature.ok_or(Error::invalid(
            "MPIT signature",
            "missing with gateways on the path",
        ))?;
        initiator.verify_node_signature(&tr::to_be_signed(tr::MPIT_SIG, &th_m), &sig, "MPIT")?;
        // Both ends checked each other's ownership; a gateway checks it again
        // on the authentic decision, so two colluding ends that forge a flow
        // between them get no entry (and no relay) here either.
        let responder = ctx.verify(&back.responder)?;
        // NAT-f: the destination is the initiator's VIN, nobody's address
        // (this gateway cannot tell it from another): the responder must
        // own either it or the host the DDE asked for.
        let owns_host = self.natf_lip.is_some_and(|lip| responder.covers(lip));
        let ends = [
            (&initiator, self.flow.src, false),
            (&responder, self.flow.dst, owns_host),
        ];
        for (ge, addr, owns_host) in ends {
            if !owns_host && !ge.covers(addr) {
                tracing::debug!(id = %self.id, ge = %ge.info.id, %addr, "MPIT refused: an end does not own its address");
                self.refused = true;
                return Err(Error::NotOwner {
                    ge: ge.info.id.0,
                    addr,
                });
            }
        }
        let me = ctx.own();
        let entry = mpit
            .decisions
            .get(1 + self.index)
            .filter(|d| d.ge == me.info.id)
            .ok_or(Error::invalid(
                "MPIT",
                "does not name this gateway at its place",
            ))?;
        match (entry.action, me.info.mode) {
            (Action::Protect(_), _) => {
                return Err(Error::invalid("MPIT action", "a gateway never protects"));
            }
            (Action::Pass, Mode::Closed) => {
                return Err(Error::invalid(
                    "MPIT action",
                    "plain traffic through a closed GE",
                ));
            }
            _ => {}
        }
        ctx.send(back.next_hop, raw.to_vec());
        // A second copy of the same signed decision may differ in its tag or
        // proof (which only the responder can check, e.g. one was mangled on
        // the way): pass on and keep the latest.
        self.forth = Some(Forth {
            mpit_digest,
            mpit: raw.to_vec(),
            th_m,
            action: entry.action,
            initiator: initiator.info.id,
        });
        Ok(())
    }

    /// The responder's CDN: check its signature, install the entry, pass it back.
    pub(crate) fn handle_cdn(
        &mut self,
        ctx: &mut Ctx<'_>,
        cdn: Cdn,
        raw: &[u8],
        now: Instant,
    ) -> Result<Option<Established>> {
        let (Some(back), Some(forth)) = (&self.back, &self.forth) else {
            return Err(Error::UnexpectedMessage("CDN before the MPIT"));
        };
        let cdn_digest = digest(raw);
        if let Some(d) = &self.done
            && d.digest == cdn_digest
        {
            ctx.send(self.prev_hop, d.cdn.clone());
            return Ok(None);
        }
        let th_c = tr::cdn_hash(&forth.th_m, &cdn.core()?);
        if self.done.as_ref().is_some_and(|d| d.th_c != th_c) {
            return Err(Error::UnexpectedMessage("a second, different CDN"));
        }
        let responder = ctx.verify(&back.responder)?;
        let sig = cdn.signature.ok_or(Error::invalid(
            "CDN signature",
            "missing with gateways on the path",
        ))?;
        responder.verify_node_signature(&tr::to_be_signed(tr::CDN_SIG, &th_c), &sig, "CDN")?;
        ctx.send(self.prev_hop, raw.to_vec());
        // Another copy of the same signed confirmation (its tag, which only
        // the initiator can check, differs): passed on above, nothing new.
        let again = self.done.is_some();
        self.done = Some(Done {
            digest: cdn_digest,
            cdn: raw.to_vec(),
            th_c,
        });
        if again {
            return Ok(None);
        }
        self.deadline = now + ctx.cfg.timing.linger;
        Ok(match cdn.status {
            CdnStatus::Confirmed => Some(Established {
                negotiation: self.id,
                flow: self.flow,
                position: Position::Gateway,
                action: forth.action,
                peer: forth.initiator,
                key_version: None,
                keys: None,
                peer_options: std::mem::take(&mut self.initiator_options),
                peer_serial: None,
                natf: None,
                started: None,
                fast: None,
                first: None,
                epoch: None,
            }),
            CdnStatus::Refused(code) => {
                tracing::debug!(id = %self.id, ?code, "negotiation refused by the responder");
                None
            }
        })
    }

    /// A NAK from further on: pass it back toward the initiator (which checks it).
    pub(crate) fn handle_nak(&self, ctx: &mut Ctx<'_>, raw: &[u8]) {
        ctx.send(self.prev_hop, raw.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use crate::Error;
    use crate::dprp::{Config, Event, Prefix};
    use crate::flow::{FlowId, protocol};
    use crate::ge::{GeKind, Mode};
    use crate::sim::{GeSpec, LinkConfig, Sim};

    #[test]
    fn a_gateway_refuses_a_flow_two_colluding_ends_forged() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let victim = ip("100.64.0.3");
        let mut sim = Sim::new(9, LinkConfig::default());
        let gw = sim.add_ge(GeSpec::gateway(
            10,
            "gw",
            GeKind::Gen,
            Mode::Closed,
            &[1],
            "198.18.0.10",
            "10.0.0.100/32".parse().unwrap(),
        ));
        // Both ends skip their checks: the forger claims the victim's
        // address, its accomplice behind the gateway accepts it.
        let forger = sim.add_ge_with(
            GeSpec::host(1, "mallory", Mode::Open, &[1], "100.64.0.1"),
            |c: &mut Config| {
                c.protected.push(Prefix::host(victim));
                c.lax_ownership = true;
            },
        );
        let accomplice = sim.add_ge_with(
            GeSpec::host(2, "trudy", Mode::Open, &[1], "10.0.0.2").behind(gw),
            |c: &mut Config| c.lax_ownership = true,
        );
        let _ = sim.add_ge(GeSpec::host(3, "victim", Mode::Open, &[1], "100.64.0.3"));
        let flow = FlowId {
            src: victim,
            dst: ip("10.0.0.2"),
            protocol: protocol::UDP,
            src_port: 1,
            dst_port: 2,
        };
        sim.send_packet(forger, flow, b"forged".to_vec());
        sim.drive();
        let installed = |sim: &Sim, n| {
            sim.events(n)
                .iter()
                .any(|(_, e)| matches!(e, Event::Established(_)))
        };
        assert!(!installed(&sim, gw), "the gateway relays a forged flow");
        assert!(!installed(&sim, accomplice));
        assert_eq!(sim.endpoint(gw).stats().not_owner, 1);
        assert!(sim.errors(gw).iter().any(|(_, e)| matches!(
            e,
            Error::NotOwner { ge: 1, addr } if *addr == victim
        )));
    }
}
