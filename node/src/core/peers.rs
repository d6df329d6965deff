//! The one peer table the node routes by: per peer GE its name, overlay
//! address, carrier target, the underlay addresses it was seen at and its
//! current path. DPRP's directory is derived from it
//! ([`PeerTable::directory`]), and so are `status`'s peers and `ping`'s name
//! resolution.
//!
//! Entries come from the directory ([`PeerTable::upsert`], fed by the GMS
//! task) and from authenticated carrier frames ([`PeerTable::learn_from`]:
//! a GE that sent us something can be answered even before the directory
//! named it).

use std::collections::BTreeMap;

use fpn_proto::flow::FastMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use fpn_proto::dprp::Prefix;
use fpn_proto::ge::GeId;

use crate::carrier::{CarrierKind, PeerTarget};
use crate::directory::PeerRecord;

/// Most underlay from-addresses remembered in the index.
const MAX_FROM: usize = 4096;
/// Most from-addresses remembered per peer.
const SEEN_PER_PEER: usize = 4;
/// Most peers (a bound on what the directory can make the core store).
const MAX_PEERS: usize = crate::directory::MAX_PEERS;

/// How frames reach one peer: set from the peer's path machine
/// (`fpn_proto::path::PathMachine`, kept by the core) after each of its
/// events. QUIC until the machine says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathState {
    /// The path data frames to this peer take now.
    pub current: CarrierKind,
    /// The machine's status (`native`, `quic (native probe failed 3x)`);
    /// `None` while the peer has no machine (no certified key known).
    pub status: Option<fpn_proto::path::PathStatus>,
}

impl Default for PathState {
    fn default() -> Self {
        Self {
            current: CarrierKind::Quic,
            status: None,
        }
    }
}

impl PathState {
    /// The text `status` and `ping` show.
    pub fn text(&self) -> String {
        match self.status {
            Some(s) => s.to_string(),
            None => self.current.as_str().to_owned(),
        }
    }
}

/// One peer GE.
#[derive(Debug, Clone)]
pub struct Peer {
    /// GE id.
    pub ge: GeId,
    /// GE name ("" when only its id is known, from a carrier frame).
    pub name: String,
    /// Overlay address from the directory.
    pub overlay: Option<Ipv4Addr>,
    /// Where the carrier dials it: the directory's addresses, or the first
    /// address it was seen at when the directory has none.
    pub target: PeerTarget,
    /// Underlay addresses authenticated frames came from, newest first.
    pub seen_from: Vec<SocketAddr>,
    /// The current path.
    pub path: PathState,
    /// True once a flow with it was installed (shown in `status` then).
    pub had_flow: bool,
    /// Its certified node key (from the directory), for the probe key.
    pub key: Option<[u8; 32]>,
    /// Its certified GE info (from the directory's credential), for
    /// `fpn-node why`; `None` until a directory answer carried it.
    pub info: Option<fpn_proto::ge::GeInfo>,
    /// The prefixes its credential names besides the overlay address
    /// (a gateway's LANs, a GES's real addresses): the real-address plane.
    pub prefixes: Vec<Prefix>,
}

/// What an update changed in who owns which address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerChange {
    /// The peer's previous overlay address, when it moved.
    pub old_overlay: Option<Ipv4Addr>,
    /// The GE that owned the new overlay address before, when another one.
    pub previous_owner: Option<GeId>,
    /// True when DPRP's directory must be rebuilt.
    pub directory_changed: bool,
}

/// The peers, with indexes by overlay address and by underlay from-address.
#[derive(Debug, Default)]
pub struct PeerTable {
    by_ge: BTreeMap<GeId, Peer>,
    by_overlay: FastMap<Ipv4Addr, GeId>,
    by_from: FastMap<SocketAddr, GeId>,
}

impl PeerTable {
    /// Inserts or updates a peer from a directory record. An overlay
    /// address belongs to one GE: the newer record takes it over.
    pub fn upsert(&mut self, rec: &PeerRecord) -> OwnerChange {
        let ge = rec.ge();
        let mut change = OwnerChange::default();
        if !self.by_ge.contains_key(&ge) && self.by_ge.len() >= MAX_PEERS {
            return change;
        }
        if let Some(owner) = self.by_overlay.get(&rec.overlay).copied()
            && owner != ge
        {
            change.previous_owner = Some(owner);
            if let Some(p) = self.by_ge.get_mut(&owner) {
                p.overlay = None;
            }
        }
        let peer = self.by_ge.entry(ge).or_insert_with(|| Peer {
            ge,
            name: String::new(),
            overlay: None,
            target: PeerTarget {
                ge,
                addrs: Vec::new(),
                reflexive: None,
            },
            seen_from: Vec::new(),
            path: PathState::default(),
            had_flow: false,
            key: None,
            info: None,
            prefixes: Vec::new(),
        });
        if peer.overlay != Some(rec.overlay) {
            change.directory_changed = true;
            if let Some(old) = peer.overlay {
                change.old_overlay = Some(old);
                self.by_overlay.remove(&old);
            }
        }
        peer.overlay = Some(rec.overlay);
        peer.name.clone_from(&rec.name);
        if rec.key.is_some() {
            peer.key = rec.key;
        }
        if let Some(info) = &rec.info {
            peer.info = info.to_info(ge, &rec.name, rec.overlay);
            let prefixes = info.parsed_prefixes();
            if prefixes != peer.prefixes {
                change.directory_changed = true;
                peer.prefixes = prefixes;
            }
        }
        if !rec.addrs.is_empty() {
            peer.target.addrs.clone_from(&rec.addrs);
            peer.target.reflexive = rec.reflexive;
        }
        self.by_overlay.insert(rec.overlay, ge);
        change
    }

    /// Forgets a peer; true when it was known.
    pub fn remove(&mut self, ge: GeId) -> Option<Peer> {
        let peer = self.by_ge.remove(&ge)?;
        if let Some(o) = peer.overlay {
            self.by_overlay.remove(&o);
        }
        self.by_from.retain(|_, g| *g != ge);
        Some(peer)
    }

    /// An authenticated frame of `ge` came from `from`: answers to DPRP
    /// messages from that address go to `ge`, and a GE the directory has not
    /// named yet can be dialed back there.
    pub fn learn_from(&mut self, ge: GeId, from: SocketAddr) {
        if self.by_from.get(&from) != Some(&ge) {
            if self.by_from.len() >= MAX_FROM {
                // A bound, not a cache policy: the index refills from the
                // next frames, which all name their GE.
                self.by_from.clear();
            }
            self.by_from.insert(from, ge);
        }
        if !self.by_ge.contains_key(&ge) && self.by_ge.len() >= MAX_PEERS {
            return;
        }
        let peer = self.by_ge.entry(ge).or_insert_with(|| Peer {
            ge,
            name: String::new(),
            overlay: None,
            target: PeerTarget {
                ge,
                reflexive: None,
                addrs: vec![from],
            },
            seen_from: Vec::new(),
            path: PathState::default(),
            had_flow: false,
            key: None,
            info: None,
            prefixes: Vec::new(),
        });
        if peer.seen_from.first() != Some(&from) {
            peer.seen_from.retain(|a| *a != from);
            peer.seen_from.insert(0, from);
            peer.seen_from.truncate(SEEN_PER_PEER);
        }
        if peer.target.addrs.is_empty() {
            peer.target.addrs.push(from);
        }
    }

    /// The GE that owns overlay address `ip`.
    pub fn owner(&self, ip: Ipv4Addr) -> Option<GeId> {
        if let Some(ge) = self.by_overlay.get(&ip) {
            return Some(*ge);
        }
        // The real-address plane: the longest prefix a peer's credential
        // names (a GES's own address, a gateway's LAN). Peers with
        // prefixes are few (the gateways and real-address GESs of a site),
        // and this runs per new flow, not per packet.
        let ip = IpAddr::V4(ip);
        self.by_ge
            .values()
            .flat_map(|p| p.prefixes.iter().map(move |x| (x, p.ge)))
            .filter(|(x, _)| x.contains(ip))
            .max_by_key(|(x, _)| x.prefix_len())
            .map(|(_, ge)| ge)
    }

    /// Every prefix peers' credentials name, with its GE (the routes the
    /// real-address plane steers into the node).
    pub fn real_prefixes(&self) -> Vec<(Prefix, GeId)> {
        self.by_ge
            .values()
            .flat_map(|p| p.prefixes.iter().map(move |x| (*x, p.ge)))
            .collect()
    }

    /// The GE an underlay address was last seen for.
    pub fn by_from(&self, from: SocketAddr) -> Option<GeId> {
        self.by_from.get(&from).copied()
    }

    /// A peer.
    pub fn get(&self, ge: GeId) -> Option<&Peer> {
        self.by_ge.get(&ge)
    }

    /// A peer, to update its path or flags.
    pub fn get_mut(&mut self, ge: GeId) -> Option<&mut Peer> {
        self.by_ge.get_mut(&ge)
    }

    /// Where to send frames for `ge`, when it can be dialed at all.
    pub fn target(&self, ge: GeId) -> Option<&PeerTarget> {
        self.by_ge
            .get(&ge)
            .map(|p| &p.target)
            .filter(|t| !t.addrs.is_empty())
    }

    /// The peer named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Peer> {
        self.by_ge.values().find(|p| p.name == name)
    }

    /// All peers, by GE id.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.by_ge.values()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.by_ge.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_ge.is_empty()
    }

    /// DPRP's directory: each peer's overlay address as a host prefix.
    pub fn directory(&self) -> Vec<(Prefix, GeId)> {
        self.by_ge
            .values()
            .filter_map(|p| p.overlay.map(|o| (Prefix::host(IpAddr::V4(o)), p.ge)))
            .chain(self.real_prefixes())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, ge: u32, last: u8, addrs: &[&str]) -> PeerRecord {
        PeerRecord {
            name: name.into(),
            ge,
            reflexive: None,
            overlay: Ipv4Addr::new(100, 64, 0, last),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            fetched: 1,
            key: None,
            info: None,
        }
    }

    #[test]
    fn indexes_follow_updates_moves_and_removals() {
        let mut t = PeerTable::default();
        let ip = |l| Ipv4Addr::new(100, 64, 0, l);
        let c = t.upsert(&rec("a", 1, 1, &["198.18.0.1:7718"]));
        assert!(c.directory_changed);
        assert_eq!(t.owner(ip(1)), Some(GeId(1)));
        // A listing without addresses keeps the known ones.
        let c = t.upsert(&rec("a", 1, 1, &[]));
        assert_eq!(c, OwnerChange::default());
        assert_eq!(t.target(GeId(1)).unwrap().addrs.len(), 1);
        // Another GE takes the address over.
        let c = t.upsert(&rec("b", 2, 1, &[]));
        assert_eq!(c.previous_owner, Some(GeId(1)));
        assert_eq!(t.owner(ip(1)), Some(GeId(2)));
        assert_eq!(t.get(GeId(1)).unwrap().overlay, None);
        assert!(t.target(GeId(2)).is_none());
        // A GE moves to another address.
        let c = t.upsert(&rec("b", 2, 7, &[]));
        assert_eq!(c.old_overlay, Some(ip(1)));
        assert_eq!(t.owner(ip(1)), None);
        assert_eq!(t.directory().len(), 1);
        // Seen-from addresses: newest first, and a target for the unnamed.
        let from: SocketAddr = "198.18.0.9:7718".parse().unwrap();
        t.learn_from(GeId(9), from);
        assert_eq!(t.by_from(from), Some(GeId(9)));
        assert_eq!(t.target(GeId(9)).unwrap().addrs, vec![from]);
        let moved: SocketAddr = "198.18.1.9:7718".parse().unwrap();
        t.learn_from(GeId(9), moved);
        assert_eq!(t.get(GeId(9)).unwrap().seen_from, vec![moved, from]);
        assert!(t.remove(GeId(9)).is_some());
        assert_eq!(t.by_from(moved), None);
        assert_eq!(t.by_name("b").unwrap().ge, GeId(2));
    }
}
