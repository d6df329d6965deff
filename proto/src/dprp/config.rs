//! Configuration of a DPRP [`Endpoint`](super::Endpoint): identity, what the
//! GE protects, timers, limits, and the group keyring.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::credential::Credential;
use crate::dprp::budget::Rate;
use crate::ge::GroupId;
use crate::keys::{GroupKey, KeyVersion, NodeKey, PUBLIC_KEY_LEN};
pub use crate::prefix::Prefix;

/// The default [`Config::natf_ports`].
pub const DEFAULT_NATF_PORTS: RangeInclusive<u16> = 47000..=47999;

/// Everything an endpoint needs that does not change per negotiation.
#[derive(Debug)]
pub struct Config {
    /// This GE's node key (its credential names the public half).
    pub node_key: NodeKey,
    /// This GE's credential, issued by the GMS CA.
    pub credential: Credential,
    /// The GMS CA's Ed25519 public key; every peer credential must verify under it.
    pub ca_public: [u8; PUBLIC_KEY_LEN],
    /// The addresses this GE is the end GE for: its own address (GES), or the
    /// subnet of terminals behind it (GEN/GEA). A DDE to one of them is
    /// answered; a gateway passes every other DDE on.
    pub protected: Vec<Prefix>,
    /// Retransmission and expiry timers.
    pub timing: Timing,
    /// Table and queue bounds.
    pub limits: Limits,
    /// NAT-f (gateways only): the ports on this GE's public address it
    /// reserves for remote nodes' flows to the hosts it fronts, one per
    /// flow and transport protocol. Its size bounds the NAT-f flows this
    /// gateway carries at once.
    pub natf_ports: RangeInclusive<u16>,
    /// Fast open (docs/PROTOCOL.md): keep a pair epoch from each direct
    /// negotiation with a peer and open new flows to that peer on it
    /// without a negotiation. Off: every flow is negotiated, and a peer's
    /// FOP is answered with a NAK (unknown epoch).
    pub fast_open: bool,
    /// With fast open: offer and take FOPs that carry their flow's first
    /// packet (option kind 5, docs/PROTOCOL.md "The first packet in its
    /// FOP"); a pair puts first packets into FOPs only where both ends do.
    /// Off: this end behaves like a node before it (for comparisons).
    pub fast_first: bool,
    /// Unit tests only: a gateway that ignores NAT-f options (it answers a
    /// NAT-f DDE as an ordinary end, without a mapping), to test what the
    /// remote node checks.
    #[cfg(test)]
    pub(crate) natf_ignored: bool,
    /// Unit tests only: the ends skip the ownership checks, to play two
    /// colluding ends and test what the gateways between them check.
    #[cfg(test)]
    pub(crate) lax_ownership: bool,
}

impl Config {
    /// A configuration with default timing and limits.
    pub fn new(
        node_key: NodeKey,
        credential: Credential,
        ca_public: [u8; PUBLIC_KEY_LEN],
        protected: Vec<Prefix>,
    ) -> Self {
        Self {
            node_key,
            credential,
            ca_public,
            protected,
            timing: Timing::default(),
            limits: Limits::default(),
            natf_ports: DEFAULT_NATF_PORTS,
            fast_open: false,
            fast_first: true,
            #[cfg(test)]
            natf_ignored: false,
            #[cfg(test)]
            lax_ownership: false,
        }
    }

    /// True when an end GE checks that the other end owns its address
    /// (always, outside this crate's unit tests).
    pub(crate) fn checks_ownership(&self) -> bool {
        #[cfg(test)]
        if self.lax_ownership {
            return false;
        }
        true
    }

    /// True when this GE answers NAT-f DDEs (a gateway; always, outside
    /// this crate's unit tests that play one that does not).
    pub(crate) fn serves_natf(&self) -> bool {
        #[cfg(test)]
        if self.natf_ignored {
            return false;
        }
        self.credential.info.kind.is_gateway()
    }
}

/// Retransmission and expiry timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// First retransmission of a DDE or MPIT without an answer.
    pub initial_rto: Duration,
    /// The backoff doubles up to this.
    pub max_rto: Duration,
    /// A negotiation that has not finished by then fails with `Timeout`.
    pub negotiation_timeout: Duration,
    /// How long a finished negotiation is kept to answer retransmissions.
    /// Keep it at least `negotiation_timeout`, so the other ends' retries
    /// always find it.
    pub linger: Duration,
    /// How long a failed flow stays a negative entry (its packets are dropped at once).
    pub negative_ttl: Duration,
    /// How long a pair epoch opens flows (fast open); its secret is wiped
    /// then. The window of forward secrecy of the flows opened on it.
    pub epoch_lifetime: Duration,
    /// A FOP without a FOK is sent again after `initial_rto`, doubling,
    /// this many times; then the flow is negotiated.
    pub fast_open_retries: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            initial_rto: Duration::from_millis(250),
            max_rto: Duration::from_secs(1),
            negotiation_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(10),
            epoch_lifetime: Duration::from_secs(300),
            fast_open_retries: 2,
        }
    }
}

/// Table and queue bounds, and the rates peers may make this GE work at.
/// Every table an outsider can fill has a bound.
///
/// A DDE that starts a new negotiation meets, in this order and before any
/// signature or X25519 work: the budget of its source address
/// ([`Self::dde_per_source`]), under load a valid cookie
/// ([`Self::cookie_threshold`]), the negative credential cache, the budget of
/// the GE its credential claims ([`Self::dde_per_ge`]), and the responder
/// capacity ([`Self::max_responding`], [`Self::max_negotiations`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Negotiations of all kinds at once: a peer's DDE is refused once the
    /// total reaches it. It also caps this GE's own negotiations, but those
    /// never count peers' ones ([`Self::max_initiated`]), so a flood of DDEs
    /// cannot stop this GE from starting its flows.
    pub max_negotiations: usize,
    /// Negotiations this GE started (initiator) at once.
    pub max_initiated: usize,
    /// Negotiations peers started (responder and gateway) at once.
    pub max_responding: usize,
    /// New negotiations one underlay source address may start here (DDEs,
    /// as responder or gateway). A gateway's address carries the DDEs of
    /// every GE behind it, so this is set above [`Self::dde_per_ge`].
    pub dde_per_source: Rate,
    /// New negotiations one claimed GE id (from the DDE's credential,
    /// before it is verified) may start here.
    pub dde_per_ge: Rate,
    /// New negotiations this GE may start towards one destination GE (or
    /// one destination address the directory does not name): bounds what
    /// first packets and re-negotiations of one peer's flows can start.
    pub initiate_per_destination: Rate,
    /// Flows one peer GE may fast-open here (FOPs accepted on its pair
    /// epochs): each costs an HKDF, a FOK and a PIT entry, no signature
    /// (about 15 us of CPU at this end, fpn-node's `flow_scale` bench), so
    /// the default lets one peer open 10 000 a second (a web service's
    /// connection storm) for about 15 % of a core.
    pub fast_open_per_ge: Rate,
    /// Signed NAKs this GE sends in answer to FOPs (unknown epoch, or as a
    /// gateway on the path), over all sources: a FOP is unauthenticated
    /// and its source spoofable, so the signatures have a global budget
    /// besides [`Self::dde_per_source`].
    pub fop_naks: Rate,
    /// Token buckets kept per budget (sources, GE ids, destinations); the
    /// oldest is forgotten first.
    pub budget_entries: usize,
    /// Credentials remembered as failed verification (by a hash of their
    /// bytes), so a repeated one costs a lookup, not an Ed25519 check.
    pub bad_credentials: usize,
    /// How long a failed credential is remembered. Zero disables the cache.
    pub bad_credential_ttl: Duration,
    /// Peers' negotiations at which this GE, as end GE, answers a direct DDE
    /// (no gateway hops) with a stateless COOKIE unless it echoes a valid
    /// one: from here on a DDE costs no signature or X25519 work before its
    /// initiator proved it receives at its source address. Keep it below
    /// [`Self::max_responding`]; `usize::MAX` disables cookies.
    pub cookie_threshold: usize,
    /// Packets held per flow while its negotiation runs.
    pub hold_per_flow: usize,
    /// Bytes held over all flows.
    pub hold_total_bytes: usize,
    /// Verified peer credentials and pair keys kept.
    pub peer_cache: usize,
    /// Negative entries kept.
    pub max_negative: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_negotiations: 4096,
            max_initiated: 1024,
            max_responding: 3072,
            dde_per_source: Rate {
                per_second: 100,
                burst: 200,
            },
            dde_per_ge: Rate {
                per_second: 50,
                burst: 100,
            },
            initiate_per_destination: Rate {
                per_second: 100,
                burst: 200,
            },
            fast_open_per_ge: Rate {
                per_second: 10_000,
                burst: 20_000,
            },
            fop_naks: Rate {
                per_second: 100,
                burst: 200,
            },
            budget_entries: 4096,
            bad_credentials: 4096,
            bad_credential_ttl: Duration::from_secs(60),
            cookie_threshold: 1536,
            hold_per_flow: 32,
            hold_total_bytes: 4 << 20,
            peer_cache: 1024,
            max_negative: 4096,
        }
    }
}

/// The group keys a GE holds: the current and the previous version of each
/// group (the previous one stays valid through a rotation's grace period).
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    groups: BTreeMap<GroupId, Versions>,
}

#[derive(Debug, Clone)]
struct Versions {
    current: (KeyVersion, GroupKey),
    previous: Option<(KeyVersion, GroupKey)>,
}

impl Keyring {
    /// Adds a key version. A newer version becomes current and the old
    /// current becomes previous; an older one can only fill the previous slot.
    pub fn insert(&mut self, group: GroupId, version: KeyVersion, key: GroupKey) {
        match self.groups.get_mut(&group) {
            None => {
                self.groups.insert(
                    group,
                    Versions {
                        current: (version, key),
                        previous: None,
                    },
                );
            }
            Some(v) if version > v.current.0 => {
                let old = std::mem::replace(&mut v.current, (version, key));
                v.previous = Some(old);
            }
            Some(v) if version == v.current.0 => v.current.1 = key,
            Some(v) => {
                if v.previous.as_ref().is_none_or(|p| version >= p.0) {
                    v.previous = Some((version, key));
                }
            }
        }
    }

    /// Forgets a group (the GE left it).
    pub fn remove(&mut self, group: GroupId) {
        self.groups.remove(&group);
    }

    /// Forgets the previous version of a group (its grace period ended).
    pub fn retire_previous(&mut self, group: GroupId) {
        if let Some(v) = self.groups.get_mut(&group) {
            v.previous = None;
        }
    }

    /// The key of `group` at `version`, if held.
    pub fn get(&self, group: GroupId, version: KeyVersion) -> Option<&GroupKey> {
        let v = self.groups.get(&group)?;
        if v.current.0 == version {
            return Some(&v.current.1);
        }
        v.previous.as_ref().filter(|p| p.0 == version).map(|p| &p.1)
    }

    /// The current version of `group`, if held.
    pub fn current(&self, group: GroupId) -> Option<KeyVersion> {
        self.groups.get(&group).map(|v| v.current.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_keeps_current_and_previous() {
        let mut k = Keyring::default();
        let g = GroupId(1);
        k.insert(g, KeyVersion(1), GroupKey::from_bytes([1; 32]));
        k.insert(g, KeyVersion(2), GroupKey::from_bytes([2; 32]));
        assert_eq!(k.current(g), Some(KeyVersion(2)));
        assert!(k.get(g, KeyVersion(1)).is_some());
        k.insert(g, KeyVersion(3), GroupKey::from_bytes([3; 32]));
        assert!(k.get(g, KeyVersion(1)).is_none());
        assert!(k.get(g, KeyVersion(2)).is_some());
        // An older version than the previous one does not displace it.
        k.insert(g, KeyVersion(1), GroupKey::from_bytes([1; 32]));
        assert!(k.get(g, KeyVersion(2)).is_some());
        k.retire_previous(g);
        assert!(k.get(g, KeyVersion(2)).is_none());
        k.remove(g);
        assert_eq!(k.current(g), None);
    }
}
