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

    #[test]
    fn short_and_long_paths_are_refused() {
        let a = ge(1, GeKind::Ges, Mode::Open, &[1]);
        assert!(decide(&[]).is_err());
        assert!(decide(&[&a]).is_err());
        assert!(decide(&[&a; MAX_PATH_LEN + 1]).is_err());
        assert!(decide(&[&a; MAX_PATH_LEN]).is_ok());
    }
}
