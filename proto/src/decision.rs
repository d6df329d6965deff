//! The decision rules: which [`Action`] each GE on a flow's path takes.
//!
//! A pure function over the ordered path of GE infos, from the initiator's end
//! GE to the responder's end GE (the GES of a host, or the GEN/GEA in front of
//! a terminal), with the gateways between them in path order. It never looks
//! at keys, addresses or time, so every GE on the path that knows the same
//! infos computes the same answer; DPRP uses that to let the responder refuse
//! an MPIT whose decision does not follow the rules (no downgrade to plain).
//!
//! The rules (ARCHITECTURE.md, "Decision rules"):
//! 1. If the two ends share a group: the ends protect the flow with the lowest
//!    shared group; every gateway between them relays without decrypting.
//! 2. Otherwise, if every GE on the path is OP: plain, everybody passes.
//! 3. Otherwise the first CL GE on the path drops the flow.
//!
//! For rule 3 this module gives every CL GE on the path `Drop` and every OP GE
//! `Pass`: the flow dies at the first CL GE ([`Decision::dropped_at`]), and no
//! CL GE is ever told to pass plain traffic, whichever direction it comes from.
//!
//! Callers pass *effective* infos for the ends: the groups a GE is certified
//! for and also holds a key for (see `dprp`), so a GE is never asked to
//! protect with a key it does not have.

use std::collections::BTreeSet;

use crate::action::Action;
use crate::ge::{GeId, GeInfo, GroupId, Mode};
use crate::{Error, Result};

/// The longest path the rules accept: two ends and up to eight gateways.
pub const MAX_PATH_LEN: usize = 10;

/// The outcome for one flow: one action per GE, in path order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The action of each GE, in the order of the path given to [`decide`].
    pub actions: Vec<Action>,
    /// The shared group the ends protect with (rule 1), if any.
    pub group: Option<GroupId>,
    /// The index of the GE where the flow is dropped (rule 3), if it is.
    pub dropped_at: Option<usize>,
}

impl Decision {
    /// True when the ends protect the flow (rule 1).
    pub fn is_protected(&self) -> bool {
        self.group.is_some()
    }

    /// The GE id where the flow is dropped, looked up in the same path.
    pub fn dropped_by(&self, path: &[&GeInfo]) -> Option<GeId> {
        self.dropped_at.and_then(|i| path.get(i)).map(|ge| ge.id)
    }
}

/// Applies the decision rules to `path` (initiator end first, responder end last).
///
/// Fails when the path has fewer than two GEs or more than [`MAX_PATH_LEN`].
pub fn decide(path: &[&GeInfo]) -> Result<Decision> {
    if path.len() < 2 {
        return Err(Error::invalid("path", "needs two end GEs"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(Error::TooLarge {
            what: "path",
            len: path.len(),
            max: MAX_PATH_LEN,
        });
    }
    let (first, last) = (path[0], path[path.len() - 1]);
    if let Some(group) = first.lowest_shared_group(last) {
        let actions = (0..path.len())
            .map(|i| {
                if i == 0 || i == path.len() - 1 {
                    Action::Protect(group)
                } else {
                    Action::Relay
                }
            })
            .collect();
        return Ok(Decision {
            actions,
            group: Some(group),
            dropped_at: None,
        });
    }
    let actions = path
        .iter()
        .map(|ge| match ge.mode {
            Mode::Open => Action::Pass,
            Mode::Closed => Action::Drop,
        })
        .collect();
    let dropped_at = path.iter().position(|ge| ge.mode == Mode::Closed);
    Ok(Decision {
        actions,
        group: None,
        dropped_at,
    })
}

/// The decision for a flow between the end GEs `initiator` and
/// `responder` (their certified infos), with `gateways` between them in
/// path order from the initiator, given the groups each end holds a key
/// for. The rules of [`decide`] run over the ends' *effective* infos (the
/// certified groups it holds a key for), then the no-downgrade rule: ends
/// whose credentials name a common group must protect the flow, so when
/// the keys they hold share none (one lacks the key) the flow gets no
/// plain fallback but [`Error::GroupKeyMissing`].
///
/// DPRP's initiator decides every flow it starts with this function, and
/// `fpn-node why` predicts a flow with it (assuming the peer holds the
/// keys of its groups), so the explanation and the data path cannot
/// disagree about the rules.
pub fn decide_ends(
    initiator: &GeInfo,
    initiator_keys: &BTreeSet<GroupId>,
    gateways: &[&GeInfo],
    responder: &GeInfo,
    responder_keys: &BTreeSet<GroupId>,
) -> Result<Decision> {
    let own = effective(initiator, initiator_keys);
    let theirs = effective(responder, responder_keys);
    let mut path: Vec<&GeInfo> = Vec::with_capacity(gateways.len() + 2);
    path.push(&own);
    path.extend_from_slice(gateways);
    path.push(&theirs);
    let decision = decide(&path)?;
    if decision.group.is_none()
        && let Some(group) = initiator.lowest_shared_group(responder)
    {
        return Err(Error::GroupKeyMissing { group: group.0 });
    }
    Ok(decision)
}

/// `info` restricted to the groups in `keys`.
fn effective(info: &GeInfo, keys: &BTreeSet<GroupId>) -> GeInfo {
    let mut out = info.clone();
    out.groups.retain(|g| keys.contains(g));
    out
}

/// Which row of the decision table a flow from this GE falls in: what
/// `fpn-node why` prints. Built by [`explain`] from the same
/// [`decide_ends`] the data path runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The destination is this GE's own address: nothing is negotiated.
    SelfFlow,
    /// The destination is outside the overlay range: fpn does not touch it.
    NotOverlay,
    /// No GE in the directory owns the destination address.
    UnknownPeer,
    /// The peer's credential was revoked (or it left the directory).
    Revoked,
    /// Rule 1: the ends share `group` and hold its key: encrypted.
    SharedGroup {
        /// The lowest shared group (the one the flow is protected with).
        group: GroupId,
    },
    /// Rule 2: no shared group and every GE on the path is open: plain.
    BothOpen,
    /// Rule 3: no shared group and the GE at path index `at` (0: this
    /// GE, the last: the peer) is closed: it drops the flow.
    ClosedDrops {
        /// Index on the path of the first closed GE.
        at: usize,
        /// Its id.
        by: GeId,
    },
    /// The credentials share `group` but this end holds no key for it:
    /// refused rather than sent in plain (no downgrade).
    KeyMissing {
        /// The lowest group both credentials name.
        group: GroupId,
    },
}

impl Rule {
    /// The action this GE takes: "local", "bypass", "encrypt", "plain" or "refuse".
    pub fn action(&self) -> &'static str {
        match self {
            Self::SelfFlow => "local",
            Self::NotOverlay => "bypass",
            Self::SharedGroup { .. } => "encrypt",
            Self::BothOpen => "plain",
            Self::UnknownPeer
            | Self::Revoked
            | Self::ClosedDrops { .. }
            | Self::KeyMissing { .. } => "refuse",
        }
    }

    /// A stable name for scripts ("shared-group", "closed-drops", ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::SelfFlow => "self",
            Self::NotOverlay => "not-overlay",
            Self::UnknownPeer => "unknown-peer",
            Self::Revoked => "revoked",
            Self::SharedGroup { .. } => "shared-group",
            Self::BothOpen => "both-open",
            Self::ClosedDrops { .. } => "closed-drops",
            Self::KeyMissing { .. } => "key-missing",
        }
    }
}

/// The rule for a direct flow from `own` to `peer` (certified infos), given
/// the groups this GE holds a key for. The peer is assumed to hold the
/// keys of its own groups (only its RGI would say otherwise, and asking
/// would send something). Gateways on the way are not known before DPRP
/// runs, so none are assumed; a closed gateway in between would drop a
/// flow this calls plain.
pub fn explain(own: &GeInfo, own_keys: &BTreeSet<GroupId>, peer: &GeInfo) -> Rule {
    match decide_ends(own, own_keys, &[], peer, &peer.groups) {
        Ok(d) => match (d.group, d.dropped_at) {
            (Some(group), _) => Rule::SharedGroup { group },
            (None, Some(at)) => Rule::ClosedDrops {
                at,
                by: if at == 0 { own.id } else { peer.id },
            },
            (None, None) => Rule::BothOpen,
        },
        Err(Error::GroupKeyMissing { group }) => Rule::KeyMissing {
            group: GroupId(group),
        },
        // Two ends never make a path `decide` refuses.
        Err(_) => Rule::UnknownPeer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ge::GeKind;
    use std::net::Ipv4Addr;

    fn ge(id: u32, kind: GeKind, mode: Mode, groups: &[u32]) -> GeInfo {
        GeInfo {
            id: GeId(id),
            name: format!("ge{id}"),
            kind,
            mode,
            groups: groups.iter().map(|g| GroupId(*g)).collect(),
            overlay: Ipv4Addr::new(100, 64, 0, id as u8),
        }
    }

    #[test]
    fn gateways_relay_between_protecting_ends_even_when_closed() {
        let a = ge(1, GeKind::Ges, Mode::Open, &[4, 2]);
        let g = ge(2, GeKind::Gen, Mode::Closed, &[9]);
        let b = ge(3, GeKind::Ges, Mode::Closed, &[2, 4]);
        let d = decide(&[&a, &g, &b]).unwrap();
        assert_eq!(
            d.actions,
            [
                Action::Protect(GroupId(2)),
                Action::Relay,
                Action::Protect(GroupId(2))
            ]
        );
        assert_eq!(d.dropped_at, None);
    }

    #[test]
    fn first_closed_ge_drops_and_open_ones_pass() {
        let a = ge(1, GeKind::Ges, Mode::Open, &[1]);
        let g = ge(2, GeKind::Gen, Mode::Closed, &[]);
        let b = ge(3, GeKind::Gea, Mode::Closed, &[2]);
        let path = [&a, &g, &b];
        let d = decide(&path).unwrap();
        assert_eq!(d.actions, [Action::Pass, Action::Drop, Action::Drop]);
        assert_eq!(d.dropped_by(&path), Some(GeId(2)));
    }

    fn keys(groups: &[u32]) -> BTreeSet<GroupId> {
        groups.iter().map(|g| GroupId(*g)).collect()
    }

    /// The GMS paper's decision table, one row each, from the initiator.
    #[test]
    fn explain_gives_each_row_of_the_decision_table() {
        let op1 = ge(1, GeKind::Ges, Mode::Open, &[1]);
        let op2 = ge(2, GeKind::Ges, Mode::Open, &[2]);
        let op12 = ge(3, GeKind::Ges, Mode::Open, &[1, 2]);
        let cl2 = ge(4, GeKind::Gea, Mode::Closed, &[2]);
        let cl12 = ge(5, GeKind::Gen, Mode::Closed, &[1, 2]);
        let cl3 = ge(6, GeKind::Ges, Mode::Closed, &[3]);
        // OP-OP, no shared group: plain.
        assert_eq!(explain(&op1, &keys(&[1]), &op2), Rule::BothOpen);
        // OP-OP sharing: encrypted with the lowest shared group.
        assert_eq!(
            explain(&op12, &keys(&[1, 2]), &cl12),
            Rule::SharedGroup { group: GroupId(1) }
        );
        // OP-CL, no shared group: the closed peer drops.
        assert_eq!(
            explain(&op1, &keys(&[1]), &cl2),
            Rule::ClosedDrops { at: 1, by: GeId(4) }
        );
        // CL-OP: this GE drops.
        assert_eq!(
            explain(&cl2, &keys(&[2]), &op1),
            Rule::ClosedDrops { at: 0, by: GeId(4) }
        );
        // CL-CL with a common group: encrypted; without: dropped here.
        assert_eq!(
            explain(&cl2, &keys(&[2]), &cl12),
            Rule::SharedGroup { group: GroupId(2) }
        );
        assert_eq!(
            explain(&cl2, &keys(&[2]), &cl3),
            Rule::ClosedDrops { at: 0, by: GeId(4) }
        );
        // No key for the shared group: refused, never plain (both are open).
        assert_eq!(
            explain(&op12, &keys(&[2]), &op1),
            Rule::KeyMissing { group: GroupId(1) }
        );
        assert_eq!(Rule::KeyMissing { group: GroupId(1) }.action(), "refuse");
        assert_eq!(Rule::BothOpen.action(), "plain");
    }

    #[test]
    fn decide_ends_uses_only_groups_with_keys_and_never_downgrades() {
        let a = ge(1, GeKind::Ges, Mode::Open, &[1, 2]);
        let b = ge(2, GeKind::Ges, Mode::Open, &[1, 2]);
        // a lacks group 1's key: group 2 protects the flow.
        let d = decide_ends(&a, &keys(&[2]), &[], &b, &keys(&[1, 2])).unwrap();
        assert_eq!(d.group, Some(GroupId(2)));
        // Neither key shared: refused, not plain.
        assert!(matches!(
            decide_ends(&a, &keys(&[2]), &[], &b, &keys(&[1])),
            Err(Error::GroupKeyMissing { group: 1 })
        ));
    }

    #[test]
    fn short_and_long_paths_are_refused() {
        let a = ge(1, GeKind::Ges, Mode::Open, &[1]);
        assert!(decide(&[]).is_err());
        assert!(decide(&[&a]).is_err());
        assert!(decide(&[&a; MAX_PATH_LEN + 1]).is_err());
        assert!(decide(&[&a; MAX_PATH_LEN]).is_ok());
    }
}
