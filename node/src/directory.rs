//! The node's view of the GMS directory: which GE owns which overlay
//! address, its name and where its carrier listens. Filled from the GMS
//! (listing + per-name queries) and kept on disk (`peers.json`, 0600), so
//! flows to known peers still start while the GMS is down.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use fpn_gms_client::wire::DirectoryEntry;
use fpn_proto::credential::UnverifiedCredential;
use fpn_proto::ge::{GeId, GeInfo, GeKind, GroupId, Mode};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most peers kept (a bound on what the GMS can make the node store).
pub const MAX_PEERS: usize = 65_536;

/// One peer GE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// GE name (a label of the zone).
    pub name: String,
    /// GE id.
    pub ge: u32,
    /// Overlay address.
    pub overlay: Ipv4Addr,
    /// Carrier addresses (candidates), local ones first (empty until the GE
    /// was queried).
    pub addrs: Vec<SocketAddr>,
    /// Which of `addrs` is its reflexive address: where the GMS sees its
    /// carrier socket (the public side of its NAT). `None` when the GMS
    /// sees it at an address it reported itself (no NAT).
    #[serde(default)]
    pub reflexive: Option<SocketAddr>,
    /// Unix time the addresses were learned (0: never).
    pub fetched: u64,
    /// The peer's certified node key (from its verified credential; `None`
    /// in a listing). The path machine's probe key is derived from it.
    #[serde(default)]
    pub key: Option<[u8; 32]>,
    /// The peer's certified kind, mode and groups (from its verified
    /// credential; `None` in a listing and in caches written before it was
    /// kept). `fpn-node why` reads the decision rules' inputs from it.
    #[serde(default)]
    pub info: Option<PeerInfo>,
}

/// What the decision rules need of a peer's certified GE info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// GE kind code (GES, GEN, GEA; `GeKind::code`).
    pub kind: u8,
    /// Mode code (OP, CL; `Mode::code`).
    pub mode: u8,
    /// Group numbers, ascending.
    pub groups: Vec<u32>,
    /// The prefixes its credential names besides its overlay address (a
    /// gateway's protected LANs, a GES's real addresses), as text
    /// (`ADDRESS/LENGTH`); the real-address plane routes them to it.
    #[serde(default)]
    pub prefixes: Vec<String>,
}

impl PeerInfo {
    /// The part of `info` the rules read.
    pub fn of(info: &GeInfo) -> Self {
        Self {
            kind: info.kind.code(),
            mode: info.mode.code(),
            groups: info.groups.iter().map(|g| g.0).collect(),
            prefixes: Vec::new(),
        }
    }

    /// The same with the prefixes a credential names.
    pub fn with_prefixes(mut self, prefixes: &[fpn_proto::dprp::Prefix]) -> Self {
        self.prefixes = prefixes.iter().map(ToString::to_string).collect();
        self
    }

    /// The prefixes that parse (a cache written by a newer version may
    /// hold one this one does not read: skipped).
    pub fn parsed_prefixes(&self) -> Vec<fpn_proto::dprp::Prefix> {
        self.prefixes
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The GE info of peer `ge` named `name` at `overlay`; `None` when a
    /// code is unknown (a cache from a newer version).
    pub fn to_info(&self, ge: GeId, name: &str, overlay: Ipv4Addr) -> Option<GeInfo> {
        Some(GeInfo {
            id: ge,
            name: name.to_owned(),
            kind: GeKind::from_code(self.kind).ok()?,
            mode: Mode::from_code(self.mode).ok()?,
            groups: self.groups.iter().map(|g| GroupId(*g)).collect(),
            overlay,
        })
    }
}

impl PeerRecord {
    /// The GE id.
    pub fn ge(&self) -> GeId {
        GeId(self.ge)
    }

    /// True when the addresses are older than `ttl` seconds at `now`.
    pub fn is_stale(&self, now: u64, ttl: u64) -> bool {
        self.addrs.is_empty() || now.saturating_sub(self.fetched) >= ttl
    }
}

/// Builds a peer record from a directory answer: the credential must verify
/// under the network's CA (so the GMS channel alone cannot make the node
/// route an address to another GE); the carrier addresses are the
/// candidates of [`carrier_addrs`].
pub fn record_from_entry(
    entry: &DirectoryEntry,
    ca_public: &[u8; 32],
    now: u64,
) -> Result<PeerRecord> {
    let cred = UnverifiedCredential::decode(&entry.credential)
        .and_then(|u| u.verify(ca_public, now))
        .map_err(Error::Proto)?;
    let (addrs, reflexive) = carrier_addrs(&entry.reported, entry.seen);
    Ok(PeerRecord {
        name: cred.info.name.clone(),
        ge: cred.info.id.0,
        overlay: cred.info.overlay,
        addrs,
        reflexive,
        fetched: now,
        key: Some(cred.node_key),
        info: Some(PeerInfo::of(&cred.info).with_prefixes(&cred.prefixes)),
    })
}

/// A peer's carrier candidates: the local addresses it reported, then its
/// reflexive address, the address the GMS sees its session come from. The
/// session runs on the carrier's own socket, so that address, port
/// included, is the NAT's mapping of the carrier socket (note 34). Returns
/// the addresses and, separately, the reflexive one when it is not one of
/// the reported ones (a host with a public address has no NAT).
pub fn carrier_addrs(
    reported: &[SocketAddr],
    seen: Option<SocketAddr>,
) -> (Vec<SocketAddr>, Option<SocketAddr>) {
    let mut addrs: Vec<SocketAddr> = reported.iter().copied().take(8).collect();
    let reflexive = seen.filter(|s| !addrs.contains(s));
    addrs.extend(reflexive);
    (addrs, reflexive)
}

/// Peers by name, with lookups by overlay address and GE id.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    by_name: BTreeMap<String, PeerRecord>,
}

impl Directory {
    /// Inserts or updates a peer. A listing (no addresses) keeps the
    /// addresses already known for the same GE. Returns the stored record.
    pub fn upsert(&mut self, mut rec: PeerRecord) -> Option<&PeerRecord> {
        if let Some(old) = self.by_name.get(&rec.name)
            && old.ge == rec.ge
            && rec.addrs.is_empty()
        {
            rec.addrs = old.addrs.clone();
            rec.reflexive = old.reflexive;
            rec.fetched = old.fetched;
        }
        if let Some(old) = self.by_name.get(&rec.name)
            && old.ge == rec.ge
            && rec.key.is_none()
        {
            rec.key = old.key;
            rec.info.clone_from(&old.info);
        }
        // An overlay address belongs to one GE: a newer record wins.
        self.by_name
            .retain(|n, r| n == &rec.name || r.overlay != rec.overlay);
        if self.by_name.len() >= MAX_PEERS && !self.by_name.contains_key(&rec.name) {
            return None;
        }
        let name = rec.name.clone();
        self.by_name.insert(name.clone(), rec);
        self.by_name.get(&name)
    }

    /// Forgets a peer.
    pub fn remove(&mut self, name: &str) -> Option<PeerRecord> {
        self.by_name.remove(name)
    }

    /// Keeps only the names in `names` (after a full listing).
    pub fn retain_names(&mut self, names: &std::collections::BTreeSet<String>) -> Vec<PeerRecord> {
        let gone: Vec<PeerRecord> = self
            .by_name
            .values()
            .filter(|r| !names.contains(&r.name))
            .cloned()
            .collect();
        self.by_name.retain(|n, _| names.contains(n));
        gone
    }

    /// The peer named `name`.
    pub fn by_name(&self, name: &str) -> Option<&PeerRecord> {
        self.by_name.get(name)
    }

    /// The peer owning overlay address `ip`.
    pub fn by_overlay(&self, ip: Ipv4Addr) -> Option<&PeerRecord> {
        self.by_name.values().find(|r| r.overlay == ip)
    }

    /// The peer with GE id `ge`.
    pub fn by_ge(&self, ge: GeId) -> Option<&PeerRecord> {
        self.by_name.values().find(|r| r.ge == ge.0)
    }

    /// All peers, by name.
    pub fn iter(&self) -> impl Iterator<Item = &PeerRecord> {
        self.by_name.values()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Reads `peers.json`; a missing file is an empty directory.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(Error::Io {
                    what: format!("reading {}", path.display()),
                    source,
                });
            }
        };
        let list: Vec<PeerRecord> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let mut d = Self::default();
        for r in list.into_iter().take(MAX_PEERS) {
            d.upsert(r);
        }
        Ok(d)
    }

    /// Writes `peers.json` atomically (0600).
    pub fn save(&self, path: &Path) -> Result<()> {
        let list: Vec<&PeerRecord> = self.by_name.values().collect();
        let json = serde_json::to_vec_pretty(&list).map_err(|e| Error::Config(e.to_string()))?;
        fpn_gms_client::fsutil::write_atomic(path, &json, 0o600).map_err(Error::Gms)
    }
}

/// Where the directory cache of a state directory lives.
pub fn cache_path(state: &Path) -> PathBuf {
    state.join("peers.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, ge: u32, last: u8, addrs: &[&str]) -> PeerRecord {
        PeerRecord {
            name: name.into(),
            ge,
            overlay: Ipv4Addr::new(100, 64, 0, last),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            reflexive: None,
            fetched: 100,
            key: None,
            info: None,
        }
    }

    #[test]
    fn carrier_addresses_put_reported_first_and_add_the_reflexive_one_as_seen() {
        let r: Vec<SocketAddr> = vec!["10.0.0.2:7718".parse().unwrap()];
        // The GMS saw the carrier socket through a NAT that changed the
        // port: the reflexive candidate keeps the port the NAT chose.
        let seen: SocketAddr = "198.18.0.9:40000".parse().unwrap();
        assert_eq!(
            carrier_addrs(&r, Some(seen)),
            (vec![r[0], seen], Some(seen))
        );
        assert_eq!(carrier_addrs(&[], Some(seen)), (vec![seen], Some(seen)));
        // Seen at a reported address: no NAT, no reflexive candidate.
        assert_eq!(carrier_addrs(&r, Some(r[0])), (r.clone(), None));
        assert_eq!(carrier_addrs(&[], None), (vec![], None));
    }

    #[test]
    fn lookups_listing_updates_and_the_disk_cache() {
        let mut d = Directory::default();
        d.upsert(rec("a", 1, 1, &["198.18.0.1:7718"]));
        d.upsert(rec("b", 2, 2, &[]));
        // A listing without addresses keeps the known ones.
        d.upsert(PeerRecord {
            fetched: 0,
            info: None,
            key: None,
            ..rec("a", 1, 1, &[])
        });
        assert_eq!(d.by_name("a").unwrap().addrs.len(), 1);
        assert_eq!(
            d.by_overlay(Ipv4Addr::new(100, 64, 0, 2)).unwrap().name,
            "b"
        );
        assert_eq!(d.by_ge(GeId(1)).unwrap().name, "a");
        assert!(d.by_name("b").unwrap().is_stale(100, 300));
        assert!(!d.by_name("a").unwrap().is_stale(200, 300));
        assert!(d.by_name("a").unwrap().is_stale(400, 300));
        // An overlay address moves to the newest owner.
        d.upsert(rec("c", 3, 2, &[]));
        assert!(d.by_name("b").is_none());
        let dir = tempfile::tempdir().unwrap();
        let p = cache_path(dir.path());
        d.save(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = Directory::load(&p).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            d.iter().collect::<Vec<_>>()
        );
        let gone = d.retain_names(&["a".to_string()].into_iter().collect());
        assert_eq!(gone.len(), 1);
        assert_eq!(d.len(), 1);
        assert!(
            Directory::load(&dir.path().join("none"))
                .unwrap()
                .is_empty()
        );
        std::fs::write(&p, b"{broken").unwrap();
        assert!(Directory::load(&p).is_err());
    }
}
