//! The node's view of the GMS directory: which GE owns which overlay
//! address, its name and where its carrier listens. Filled from the GMS
//! (listing + per-name queries) and kept on disk (`peers.json`, 0600), so
//! flows to known peers still start while the GMS is down. The same file
//! keeps the hosts behind gateways ([`HostRecord`]), so a node restarted
//! while the GMS is down still knows which gateway answers for which name.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use fpn_gms_client::wire::{DirectoryEntry, HostEntry, MAX_HOSTS};
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

/// A host behind a gateway: a machine on the gateway's LAN that runs no fpn
/// software, reached by name through gateway GE `via` (NAT-f), which
/// negotiates for it with its own credential and group keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host's name (a label of the zone, like a GE's).
    pub name: String,
    /// The gateway's GE id.
    pub via: u32,
    /// The gateway's name.
    pub via_name: String,
    /// The host's addresses on the gateway's LAN.
    pub lan: Vec<IpAddr>,
    /// Groups whose members may reach it, ascending.
    pub groups: Vec<u32>,
}

/// The core's view of the directory's hosts.
pub fn core_hosts(hosts: &[HostRecord]) -> Vec<crate::core::natf::Host> {
    hosts
        .iter()
        .map(|h| crate::core::natf::Host {
            name: h.name.clone(),
            via: fpn_proto::ge::GeId(h.via),
            lan: h.lan.clone(),
            groups: h
                .groups
                .iter()
                .map(|g| fpn_proto::ge::GroupId(*g))
                .collect(),
        })
        .collect()
}

impl HostRecord {
    /// The record of a directory entry from the GMS.
    pub fn of(e: &HostEntry) -> Self {
        let mut groups: Vec<u32> = e.groups.iter().map(|g| g.0).collect();
        groups.sort_unstable();
        groups.dedup();
        Self {
            name: e.name.clone(),
            via: e.via.0,
            via_name: e.via_name.clone(),
            lan: e.lan.clone(),
            groups,
        }
    }

    /// The gateway's GE id.
    pub fn via(&self) -> GeId {
        GeId(self.via)
    }
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
    /// Hosts behind gateways, sorted by name (so [`Directory::hosts`] is a
    /// slice and [`Directory::host`] a binary search).
    hosts: Vec<HostRecord>,
}

/// `peers.json`: the peers and the hosts behind gateways. Caches written
/// before hosts existed are a bare list of peers, and still load.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CacheFile {
    Full {
        peers: Vec<PeerRecord>,
        #[serde(default)]
        hosts: Vec<HostRecord>,
    },
    PeersOnly(Vec<PeerRecord>),
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

    /// The hosts behind gateways the GMS last listed, sorted by name.
    pub fn hosts(&self) -> &[HostRecord] {
        &self.hosts
    }

    /// The host behind a gateway named `name` (a label, without the zone).
    pub fn host(&self, name: &str) -> Option<&HostRecord> {
        self.hosts
            .binary_search_by(|h| h.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.hosts[i])
    }

    /// Replaces every host with `list` (the GMS's full list at session
    /// start), keeping at most [`MAX_HOSTS`]. Returns true when anything changed.
    pub fn set_hosts(&mut self, list: impl IntoIterator<Item = HostRecord>) -> bool {
        let mut hosts: Vec<HostRecord> = list.into_iter().collect();
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        hosts.dedup_by(|a, b| a.name == b.name);
        hosts.truncate(MAX_HOSTS);
        let changed = hosts != self.hosts;
        self.hosts = hosts;
        changed
    }

    /// Inserts or replaces one host (a change pushed by the GMS). Returns
    /// false when the list is full and `h` is new.
    pub fn upsert_host(&mut self, h: HostRecord) -> bool {
        match self.hosts.binary_search_by(|x| x.name.cmp(&h.name)) {
            Ok(i) => self.hosts[i] = h,
            Err(_) if self.hosts.len() >= MAX_HOSTS => return false,
            Err(i) => self.hosts.insert(i, h),
        }
        true
    }

    /// Forgets host `name`; returns it if it was known.
    pub fn remove_host(&mut self, name: &str) -> Option<HostRecord> {
        let i = self
            .hosts
            .binary_search_by(|h| h.name.as_str().cmp(name))
            .ok()?;
        Some(self.hosts.remove(i))
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
        let file: CacheFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let (list, hosts) = match file {
            CacheFile::Full { peers, hosts } => (peers, hosts),
            CacheFile::PeersOnly(peers) => (peers, Vec::new()),
        };
        let mut d = Self::default();
        for r in list.into_iter().take(MAX_PEERS) {
            d.upsert(r);
        }
        d.set_hosts(hosts);
        Ok(d)
    }

    /// Writes `peers.json` atomically (0600).
    pub fn save(&self, path: &Path) -> Result<()> {
        #[derive(Serialize)]
        struct Out<'a> {
            peers: Vec<&'a PeerRecord>,
            hosts: &'a [HostRecord],
        }
        let out = Out {
            peers: self.by_name.values().collect(),
            hosts: &self.hosts,
        };
        let json = serde_json::to_vec_pretty(&out).map_err(|e| Error::Config(e.to_string()))?;
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

    fn host(name: &str, lan: &str) -> HostRecord {
        HostRecord {
            name: name.into(),
            via: 3,
            via_name: "gw".into(),
            lan: vec![lan.parse().unwrap()],
            groups: vec![1],
        }
    }

    #[test]
    fn hosts_behind_gateways_are_kept_found_by_name_and_cached_on_disk() {
        let mut d = Directory::default();
        d.upsert(rec("gw", 3, 3, &["198.18.0.3:7718"]));
        assert!(d.set_hosts([host("printer", "192.168.1.20"), host("nas", "192.168.1.10")]));
        assert!(!d.set_hosts([host("nas", "192.168.1.10"), host("printer", "192.168.1.20")]));
        assert_eq!(
            d.hosts()
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>(),
            ["nas", "printer"]
        );
        assert_eq!(d.host("nas").unwrap().via(), GeId(3));
        assert!(d.host("gw").is_none(), "a GE is not a host");
        // Pushed changes.
        assert!(d.upsert_host(host("nas", "192.168.1.11")));
        assert_eq!(d.host("nas").unwrap().lan[0].to_string(), "192.168.1.11");
        assert!(d.upsert_host(host("cam", "192.168.1.30")));
        assert_eq!(d.remove_host("printer").unwrap().name, "printer");
        assert!(d.remove_host("printer").is_none());
        assert_eq!(d.hosts().len(), 2);
        // peers.json keeps them: a node restarted while the GMS is down knows them.
        let dir = tempfile::tempdir().unwrap();
        let p = cache_path(dir.path());
        d.save(&p).unwrap();
        let back = Directory::load(&p).unwrap();
        assert_eq!(back.hosts(), d.hosts());
        assert_eq!(back.by_name("gw").unwrap().ge, 3);
        // A cache written before hosts existed (a bare list) still loads.
        let old = serde_json::to_vec(&vec![rec("gw", 3, 3, &[])]).unwrap();
        std::fs::write(&p, old).unwrap();
        let back = Directory::load(&p).unwrap();
        assert_eq!(back.len(), 1);
        assert!(back.hosts().is_empty());
        // The list is bounded.
        let mut d = Directory::default();
        d.set_hosts((0..MAX_HOSTS + 5).map(|i| host(&format!("h{i:04}"), "10.0.0.1")));
        assert_eq!(d.hosts().len(), MAX_HOSTS);
        assert!(!d.upsert_host(host("zzz", "10.0.0.1")));
    }
}
