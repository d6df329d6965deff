//! NAT-f (GSRA) inside DPRP: the tables a remote node and a gateway keep,
//! and the gateway's pool of reserved ports.
//!
//! A remote node R reaches a host H behind gateway G by a VIN, a virtual
//! address local to R. The flow `{R:s -> VIN:d}` is negotiated with G as
//! the destination end, its DDE carrying `NatF { lip, reserved_port: 0 }`.
//! G decides with H's groups (H is closed), reserves a port `t` on its
//! public address and answers `NatF { lip, reserved_port: t }` inside its
//! RGI's authenticated core. docs/PROTOCOL.md, "NAT-f", is the
//! specification.
//!
//! Reservation lifetime: a port is reserved when G answers a DDE and
//! belongs to that negotiation; a negotiation that fails or times out (the
//! machine is forgotten without an entry) frees it here; once the entry is
//! installed it belongs to the node, which frees it with
//! [`Endpoint::release_natf_port`](super::Endpoint::release_natf_port) when
//! it removes the flow's mapping.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use crate::credential::Credential;
use crate::dprp::config::Keyring;
use crate::dprp::msg::{Claim, NegotiationId, RefuseCode};
use crate::dprp::{DprpOption, effective};
use crate::ge::{GeId, GroupId};
use crate::{Error, Result};

/// A host a gateway fronts for NAT-f: its LAN address and its groups (the
/// GMS registered it, e.g. `fpn-gms host add nas --via gw --lan ... --group 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontedHost {
    /// The host's LAN (private) address; the gateway's credential must cover it.
    pub lip: IpAddr,
    /// The groups whose members may reach it. The host is closed: a remote
    /// sharing none of them is refused.
    pub groups: Vec<GroupId>,
}

/// A VIN a remote node handed to an application for a host behind a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vin {
    /// The virtual address (the flow's destination at this node).
    pub vin: IpAddr,
    /// The gateway GE in front of the host: the only GE that may answer.
    pub gateway: GeId,
    /// The host's LAN address behind the gateway.
    pub lip: IpAddr,
}

/// A NAT-f flow's mapping, as both ends agreed on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatfMapping {
    /// The host's LAN address.
    pub lip: IpAddr,
    /// The port the gateway reserved on its public address for the flow.
    pub reserved_port: u16,
}

/// The one NAT-f option of a message, if any; more than one is an error
/// (which of them would count is not obvious, so none does).
pub(crate) fn natf_option(options: &[DprpOption]) -> Result<Option<NatfMapping>> {
    let mut found = options.iter().filter_map(|o| match o {
        DprpOption::NatF { lip, reserved_port } => Some(NatfMapping {
            lip: *lip,
            reserved_port: *reserved_port,
        }),
        _ => None,
    });
    let first = found.next();
    if found.next().is_some() {
        return Err(Error::invalid("NAT-f option", "more than one"));
    }
    Ok(first)
}

/// The groups a gateway (`own`) may decide a NAT-f flow to a host in
/// `host` with: the host's groups it is certified in and holds a key for,
/// when at least one of them is among the initiator's claims. The host is
/// closed, so otherwise a refusal: `KeyUnavailable` when both credentials
/// name a host group but a key is missing on one end (as for any flow),
/// else `NotInHostGroup`.
pub(crate) fn host_groups(
    host: &[GroupId],
    own: &Credential,
    keys: &Keyring,
    initiator: &Credential,
    claims: &[Claim],
) -> std::result::Result<Vec<GroupId>, RefuseCode> {
    let held: Vec<GroupId> = host
        .iter()
        .copied()
        .filter(|g| own.info.groups.contains(g) && keys.current(*g).is_some())
        .collect();
    let theirs = effective(&initiator.info, claims);
    if held.iter().any(|g| theirs.groups.contains(g)) {
        return Ok(held);
    }
    let certified = host
        .iter()
        .any(|g| own.info.groups.contains(g) && initiator.info.groups.contains(g));
    Err(if certified {
        RefuseCode::KeyUnavailable
    } else {
        RefuseCode::NotInHostGroup
    })
}

/// Who holds a reserved port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The negotiation that reserved it, still running.
    Negotiation(NegotiationId),
    /// An installed flow: the node frees it.
    Flow,
}

/// The gateway's reserved ports, unique per transport protocol.
#[derive(Debug)]
pub(crate) struct PortPool {
    range: RangeInclusive<u16>,
    taken: BTreeMap<(u8, u16), Owner>,
    /// Where the next search starts: a port just freed is handed out again
    /// only after the rest of the range, so a late packet of the old flow
    /// (or a stale conntrack entry) does not meet the new one.
    cursor: u16,
}

impl PortPool {
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        let cursor = *range.start();
        Self {
            range,
            taken: BTreeMap::new(),
            cursor,
        }
    }

    /// Reserves a free port for `protocol` on behalf of negotiation `id`.
    pub(crate) fn reserve(&mut self, protocol: u8, id: NegotiationId) -> Option<u16> {
        let (lo, hi) = (*self.range.start(), *self.range.end());
        if lo > hi {
            return None;
        }
        let size = u32::from(hi - lo) + 1;
        let start = self.cursor.clamp(lo, hi);
        for i in 0..size {
            let port = (u32::from(start - lo) + i) % size + u32::from(lo);
            let port = port as u16;
            if let std::collections::btree_map::Entry::Vacant(e) =
                self.taken.entry((protocol, port))
            {
                e.insert(Owner::Negotiation(id));
                self.cursor = if port == hi { lo } else { port + 1 };
                return Some(port);
            }
        }
        None
    }

    /// The negotiation's entry is installed: the port now belongs to the flow.
    pub(crate) fn confirm(&mut self, id: NegotiationId) {
        for owner in self.taken.values_mut() {
            if *owner == Owner::Negotiation(id) {
                *owner = Owner::Flow;
            }
        }
    }

    /// The negotiation ended without an entry: its port is free again.
    pub(crate) fn release_negotiation(&mut self, id: NegotiationId) {
        self.taken.retain(|_, o| *o != Owner::Negotiation(id));
    }

    /// Frees a port (whoever holds it); true if it was reserved.
    pub(crate) fn release(&mut self, protocol: u8, port: u16) -> bool {
        self.taken.remove(&(protocol, port)).is_some()
    }

    /// Ports reserved now.
    pub(crate) fn len(&self) -> usize {
        self.taken.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_unique_ports_per_protocol_and_rotates() {
        let mut p = PortPool::new(100..=101);
        let (a, b) = (NegotiationId(1), NegotiationId(2));
        assert_eq!(p.reserve(17, a), Some(100));
        assert_eq!(p.reserve(6, a), Some(101), "another protocol, next port");
        assert_eq!(p.reserve(17, b), Some(101));
        assert_eq!(p.reserve(17, b), None, "exhausted");
        p.confirm(a);
        p.release_negotiation(a);
        assert_eq!(p.len(), 3, "a confirmed port is the node's to free");
        p.release_negotiation(b);
        assert_eq!(p.len(), 2);
        assert!(p.release(17, 100));
        assert!(!p.release(17, 100));
        // The cursor moved past 101: the search wraps to the freed 100.
        assert_eq!(p.reserve(17, b), Some(100));
    }

    #[test]
    fn an_empty_range_reserves_nothing() {
        #[allow(clippy::reversed_empty_ranges)]
        let mut p = PortPool::new(10..=9);
        assert_eq!(p.reserve(17, NegotiationId(1)), None);
    }

    #[test]
    fn two_natf_options_are_refused() {
        let o = DprpOption::NatF {
            lip: "192.168.1.10".parse().unwrap(),
            reserved_port: 0,
        };
        assert!(natf_option(&[o.clone(), o]).is_err());
        assert_eq!(natf_option(&[]).unwrap(), None);
    }
}
