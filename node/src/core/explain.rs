//! `fpn-node why`: which decision rule applies to a flow from this node
//! and why, answered from the core's state without sending anything. The
//! rule itself comes from `fpn_proto::decision::explain`, which runs
//! `decide_ends`, the function DPRP's initiator decides every flow with,
//! so the explanation and the data path cannot disagree.

use std::collections::BTreeSet;

use fpn_proto::decision::{self, Rule};
use fpn_proto::dprp::{FailReason, RefuseCode};
use fpn_proto::flow::FlowId;
use fpn_proto::ge::{GeId, GeInfo, GroupId, Mode};

use super::NodeCore;
use crate::status::{WhyGe, WhyReport, action_name, proto_name};

/// Most revoked or departed GEs remembered for `why`.
pub(super) const MAX_GONE: usize = 4096;

impl NodeCore {
    /// The rule for `flow` (from this node's overlay address to a
    /// destination; a port of 0 means any) and what the core knows about
    /// it. `lookup` is true when the peer's directory entry should be
    /// fetched first (unknown owner, or its credential not fetched yet):
    /// the caller may ask the GMS and ask again.
    pub fn explain(&self, flow: &FlowId) -> (WhyReport, bool) {
        let own_info = &self.dprp.credential().info;
        let own_keys = self.held_groups();
        let mut r = WhyReport {
            target: flow.dst.to_string(),
            address: flow.dst.to_string(),
            proto: proto_name(flow.protocol),
            port: flow.dst_port,
            own: WhyGe {
                keys: Some(own_keys.iter().map(|g| g.0).collect()),
                ..ge_view(own_info)
            },
            ..WhyReport::default()
        };
        self.live_state(flow, &mut r);
        // A GE's IPv6 overlay address is its IPv4 one for everything below
        // (note 59); other IPv6 addresses are not the overlay's.
        let Some(dst) = self.cfg.net6.as_v4(flow.dst) else {
            let text = format!(
                "{} is outside the overlay's IPv6 range {}: fpn does not route it; the host's own routes carry it, unprotected",
                flow.dst, self.cfg.net6
            );
            set(&mut r, &Rule::NotOverlay, text);
            return (r, false);
        };
        if dst == self.cfg.overlay {
            let text = format!(
                "{dst} is this node's own overlay address: the flow stays on this host and nothing is negotiated"
            );
            set(&mut r, &Rule::SelfFlow, text);
            return (r, false);
        }
        let (net, len) = self.cfg.overlay_net;
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        if u32::from(dst) & mask != u32::from(net) & mask {
            let text = format!(
                "{dst} is outside the overlay range {net}/{len}: fpn does not route it; the host's own routes carry it, unprotected"
            );
            set(&mut r, &Rule::NotOverlay, text);
            return (r, false);
        }
        let Some(ge) = self.peers.owner(dst) else {
            if let Some(gone) = self.gone.get(&dst) {
                let text = format!(
                    "{dst} belonged to GE {}, which was revoked or removed from the GMS: every flow to it is refused",
                    gone.0
                );
                r.peer = Some(WhyGe {
                    ge: gone.0,
                    ..WhyGe::default()
                });
                set(&mut r, &Rule::Revoked, text);
                return (r, false);
            }
            let text = format!(
                "no GE in the directory owns {dst}: a flow to it is refused until the GMS names one"
            );
            set(&mut r, &Rule::UnknownPeer, text);
            return (r, true);
        };
        let peer = self.peers.get(ge);
        let name = peer.map(|p| p.name.clone()).unwrap_or_default();
        r.peer = Some(WhyGe {
            name: name.clone(),
            ge: ge.0,
            ..WhyGe::default()
        });
        let Some(info) = peer.and_then(|p| p.info.as_ref()) else {
            r.rule = "peer-info-unknown".into();
            r.action = "unknown".into();
            r.reason = format!(
                "{} owns {dst}, but its credential (mode, groups) has not been fetched from the GMS yet",
                self.ge_label(ge)
            );
            return (r, true);
        };
        r.peer = Some(ge_view(info));
        let rule = decision::explain(own_info, &own_keys, info);
        let me = describe(own_info);
        let them = format!("{} ({})", self.ge_label(ge), describe(info));
        let text = match &rule {
            Rule::SharedGroup { group } => {
                r.group = Some(group.0);
                format!(
                    "this node ({me}) and {them} share group {group}, and this node holds its key: the flow is encrypted with the lowest shared group's key"
                )
            }
            Rule::BothOpen => format!(
                "this node ({me}) and {them} share no group, and both are open: the flow passes in plain (a closed gateway on the path would still drop it)"
            ),
            Rule::ClosedDrops { at, by } => {
                r.dropped_by = Some(by.0);
                if *at == 0 {
                    format!(
                        "this node ({me}) is closed and shares no group with {them}: it drops the flow"
                    )
                } else {
                    format!(
                        "{them} is closed and shares no group with this node ({me}): it drops the flow, and this node is told at once"
                    )
                }
            }
            Rule::KeyMissing { group } => format!(
                "this node ({me}) and {them} are both in group {group}, but this node holds no key for it: refused rather than sent in plain (no downgrade); the key comes with the GMS session"
            ),
            other => format!("{other:?}"),
        };
        set(&mut r, &rule, text);
        (r, false)
    }

    /// The groups this node holds a current key for: the claims DPRP makes.
    fn held_groups(&self) -> BTreeSet<GroupId> {
        self.versions
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(g, _)| *g)
            .collect()
    }

    /// The live PIT entry and the recent refusal of flows like `flow`.
    fn live_state(&self, flow: &FlowId, r: &mut WhyReport) {
        let like = |f: &FlowId| {
            f.dst == flow.dst
                && f.protocol == flow.protocol
                && (flow.dst_port == 0 || f.dst_port == flow.dst_port)
        };
        r.current = self
            .pit
            .iter()
            .find(|(f, _)| like(f))
            .map(|(_, e)| action_name(e.action()).to_owned());
        r.refused = self
            .flows
            .refused()
            .find(|(f, _, _)| like(f))
            .map(|(_, _, why)| why.to_owned());
    }

    /// "nas (GE 3)", or "GE 3" when its name is not known.
    pub(super) fn ge_label(&self, ge: GeId) -> String {
        if ge == self.dprp.ge() {
            return "this node".into();
        }
        match self.peers.get(ge).map(|p| p.name.as_str()) {
            Some(n) if !n.is_empty() => format!("{n} (GE {})", ge.0),
            _ => format!("GE {}", ge.0),
        }
    }

    /// Why a negotiation failed, in words, for `status` and `why`.
    pub(super) fn refusal_text(&self, reason: &FailReason) -> String {
        match reason {
            FailReason::Timeout => {
                "no answer from the peer before the negotiation timed out".into()
            }
            FailReason::Dropped { by } if *by == self.dprp.ge() => {
                "this node is closed and shares no group with the peer (decision rule 3)".into()
            }
            FailReason::Dropped { by } => format!(
                "{} is closed and shares no group with this node (decision rule 3)",
                self.ge_label(*by)
            ),
            FailReason::Refused { by, code } => {
                let why = match code {
                    RefuseCode::CredentialRejected => {
                        "this node's credential is expired or revoked"
                    }
                    RefuseCode::DecisionMismatch => "the decision does not follow the rules",
                    RefuseCode::KeyUnavailable => {
                        "a shared group without its key on one end (no downgrade to plain)"
                    }
                    RefuseCode::BadProof => "the group proof did not verify",
                    RefuseCode::HopLimit => "the path is too long or loops",
                    RefuseCode::NotOwner => "the flow's source is not this node's",
                    RefuseCode::UnknownHost => "the gateway fronts no such host",
                    RefuseCode::NotInHostGroup => "this node shares no group with the host",
                    RefuseCode::NoPort => "the gateway has no free NAT-f port",
                    RefuseCode::GatewayOnPath => {
                        "a gateway on the path asks for a negotiation (fast open refused)"
                    }
                    RefuseCode::UnknownEpoch => {
                        "the peer no longer holds the pair epoch (fast open refused)"
                    }
                };
                format!("refused by {}: {why}", self.ge_label(*by))
            }
            FailReason::Rejected(e) => format!("the peer's answer failed a check here: {e}"),
        }
    }
}

fn set(r: &mut WhyReport, rule: &Rule, reason: String) {
    r.rule = rule.name().into();
    r.action = rule.action().into();
    r.reason = reason;
}

fn ge_view(info: &GeInfo) -> WhyGe {
    WhyGe {
        name: info.name.clone(),
        ge: info.id.0,
        mode: mode_name(info.mode).into(),
        groups: info.groups.iter().map(|g| g.0).collect(),
        keys: None,
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Open => "open",
        Mode::Closed => "closed",
    }
}

/// "closed, groups 1 2" / "open, no group".
fn describe(info: &GeInfo) -> String {
    let groups: Vec<String> = info.groups.iter().map(|g| g.0.to_string()).collect();
    if groups.is_empty() {
        format!("{}, no group", mode_name(info.mode))
    } else {
        format!("{}, groups {}", mode_name(info.mode), groups.join(" "))
    }
}

/// Bounded insert: the lowest entry goes when full (any bound will do:
/// this only feeds explanations).
pub(super) fn remember<K: Ord, V>(map: &mut std::collections::BTreeMap<K, V>, k: K, v: V) {
    if map.len() >= MAX_GONE && !map.contains_key(&k) {
        map.pop_first();
    }
    map.insert(k, v);
}
