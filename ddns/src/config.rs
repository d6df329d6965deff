//! Configuration: [`DdnsConfig`] for the library, and the TOML file the
//! binary reads (`fpn-ddns serve --config FILE`).
//!
//! The file names key files in BIND format and says per key which subtrees
//! it may update and whether it may transfer the zone:
//!
//! ```toml
//! zone = "home.fpn."
//! data = "/var/lib/fpn-ddns"
//! listen = ["0.0.0.0:53"]
//!
//! [[key]]
//! file = "router1.key"          # relative to this file
//! update = ["router1"]          # relative to the zone; "@" is the whole zone
//!
//! [[key]]
//! file = "xfer.key"
//! transfer = true
//!
//! [[notify]]
//! address = "198.18.0.2:53"
//! key = "xfer-key"              # optional: sign the NOTIFY
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hickory_proto::rr::Name;
use serde::Deserialize;

use crate::Error;
use crate::keys::{KeyPolicy, KeyRing, TsigKey, read_key_file};

/// SOA parameters of a new zone (ignored once the zone exists: the stored
/// SOA wins, and can be changed by UPDATE).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SoaConfig {
    /// Primary server name (default `ns1.<zone>`).
    pub mname: Option<String>,
    /// Responsible mailbox as a name (default `hostmaster.<zone>`).
    pub rname: Option<String>,
    /// Secondary refresh interval, seconds.
    pub refresh: i32,
    /// Secondary retry interval, seconds.
    pub retry: i32,
    /// Secondary expiry, seconds.
    pub expire: i32,
    /// Negative-caching TTL, seconds.
    pub minimum: u32,
    /// TTL of the SOA and NS records.
    pub ttl: u32,
}

impl Default for SoaConfig {
    fn default() -> Self {
        Self {
            mname: None,
            rname: None,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum: 60,
            ttl: 3600,
        }
    }
}

/// A secondary server to send NOTIFY to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    /// Its address.
    pub address: SocketAddr,
    /// Key to sign the NOTIFY with, if any.
    pub key: Option<Name>,
}

/// Everything the library needs to run a zone.
#[derive(Debug, Clone)]
pub struct DdnsConfig {
    /// The zone, e.g. `home.fpn.`.
    pub origin: Name,
    /// Directory of the sled database.
    pub data_dir: PathBuf,
    /// TSIG keys with their permissions.
    pub keys: KeyRing,
    /// Secondaries to notify on every change.
    pub notify: Vec<NotifyTarget>,
    /// SOA of a new zone.
    pub soa: SoaConfig,
    /// NS names of a new zone (default `ns1.<zone>`).
    pub ns: Vec<Name>,
    /// TTL of the records the embedding API writes.
    pub ge_ttl: u32,
    /// A zone file to seed a new (empty) database from.
    pub zone_file: Option<PathBuf>,
}

impl DdnsConfig {
    /// Defaults for `origin`, stored in `data_dir`, no keys.
    pub fn new(origin: Name, data_dir: impl Into<PathBuf>) -> Self {
        let mut origin = origin.to_lowercase();
        origin.set_fqdn(true);
        Self {
            origin,
            data_dir: data_dir.into(),
            keys: KeyRing::default(),
            notify: Vec::new(),
            soa: SoaConfig::default(),
            ns: Vec::new(),
            ge_ttl: 60,
            zone_file: None,
        }
    }

    /// Adds every key of a BIND key file with `policy`.
    pub fn add_key_file(&mut self, path: &Path, policy: &KeyPolicy) -> Result<(), Error> {
        for entry in read_key_file(path)? {
            self.keys.insert(TsigKey::new(
                entry.name,
                entry.algorithm,
                entry.secret.to_vec(),
                policy.clone(),
            ));
        }
        Ok(())
    }
}

/// The TOML configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The zone.
    pub zone: Option<String>,
    /// Addresses to serve on (UDP and TCP).
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Data directory (relative to the file).
    pub data: Option<PathBuf>,
    /// UDP worker threads per address (default: number of CPUs).
    pub udp_threads: Option<usize>,
    /// TTL of records written through the embedding API.
    pub ge_ttl: Option<u32>,
    /// NS names of a new zone.
    #[serde(default)]
    pub ns: Vec<String>,
    /// Zone file to seed a new database from (relative to the file).
    pub zone_file: Option<PathBuf>,
    /// SOA of a new zone.
    #[serde(default)]
    pub soa: SoaConfig,
    /// TSIG keys.
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyConfig>,
    /// Secondaries to notify.
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
}

/// One `[[key]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// BIND key file (relative to the configuration file).
    pub file: PathBuf,
    /// Use only this key of the file (default: every key in it).
    pub name: Option<String>,
    /// Subtrees the key may update: names relative to the zone, or
    /// absolute with a trailing dot; `@` is the whole zone.
    #[serde(default)]
    pub update: Vec<String>,
    /// Whether the key may transfer the zone.
    #[serde(default)]
    pub transfer: bool,
}

/// One `[[notify]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Address of the secondary.
    pub address: SocketAddr,
    /// Name of a configured key to sign the NOTIFY with.
    pub key: Option<String>,
}

impl FileConfig {
    /// Reads and parses a configuration file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Applies the file to `cfg`: keys (with their scopes), notify targets,
    /// SOA, NS and TTL settings. `base` is the directory relative paths
    /// start from.
    pub fn apply(&self, cfg: &mut DdnsConfig, base: &Path) -> Result<(), Error> {
        let origin = cfg.origin.clone();
        for k in &self.keys {
            let update = k
                .update
                .iter()
                .map(|s| resolve_name(s, &origin))
                .collect::<Result<Vec<_>, _>>()?;
            let policy = KeyPolicy {
                update,
                transfer: k.transfer,
            };
            let path = base.join(&k.file);
            let mut found = false;
            for entry in read_key_file(&path)? {
                if let Some(want) = &k.name
                    && resolve_key_name(want)? != entry.name
                {
                    continue;
                }
                found = true;
                cfg.keys.insert(TsigKey::new(
                    entry.name,
                    entry.algorithm,
                    entry.secret.to_vec(),
                    policy.clone(),
                ));
            }
            if !found {
                return Err(Error::Config(format!(
                    "{}: no key named {:?}",
                    path.display(),
                    k.name
                )));
            }
        }
        for n in &self.notify {
            let key = n.key.as_deref().map(resolve_key_name).transpose()?;
            if let Some(k) = &key
                && cfg.keys.get(k).is_none()
            {
                return Err(Error::Config(format!("notify key {k} is not configured")));
            }
            cfg.notify.push(NotifyTarget {
                address: n.address,
                key,
            });
        }
        cfg.soa = self.soa.clone();
        for ns in &self.ns {
            cfg.ns.push(resolve_name(ns, &origin)?);
        }
        if let Some(ttl) = self.ge_ttl {
            cfg.ge_ttl = ttl;
        }
        if let Some(z) = &self.zone_file {
            cfg.zone_file = Some(base.join(z));
        }
        Ok(())
    }
}

/// A name as written in configuration or the API: absolute with a
/// trailing dot, else relative to `origin`; `@` is `origin` itself.
pub fn resolve_name(s: &str, origin: &Name) -> Result<Name, Error> {
    let bad = |reason| Error::Name {
        name: s.to_owned(),
        reason,
    };
    if s == "@" {
        return Ok(origin.clone());
    }
    let name = Name::from_ascii(s).map_err(|_| bad("not a valid domain name"))?;
    let name = if s.ends_with('.') {
        name
    } else {
        name.append_domain(origin)
            .map_err(|_| bad("name too long"))?
    };
    if !origin.zone_of(&name) {
        return Err(bad("outside the zone"));
    }
    Ok(name.to_lowercase())
}

/// A key name (always absolute).
pub fn resolve_key_name(s: &str) -> Result<Name, Error> {
    let mut n = Name::from_ascii(s)
        .map_err(|_| Error::Name {
            name: s.to_owned(),
            reason: "not a valid key name",
        })?
        .to_lowercase();
    n.set_fqdn(true);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_relative_to_the_zone() {
        let origin = Name::from_ascii("home.fpn.").unwrap();
        assert_eq!(resolve_name("@", &origin).unwrap(), origin);
        assert_eq!(
            resolve_name("Router1", &origin).unwrap(),
            Name::from_ascii("router1.home.fpn.").unwrap()
        );
        assert_eq!(
            resolve_name("a.home.fpn.", &origin).unwrap(),
            Name::from_ascii("a.home.fpn.").unwrap()
        );
        assert!(resolve_name("a.other.fpn.", &origin).is_err());
        assert!(resolve_name("bad..name", &origin).is_err());
    }

    #[test]
    fn unknown_fields_are_errors() {
        assert!(toml::from_str::<FileConfig>("zone = \"a.\"\nbogus = 1\n").is_err());
        let f: FileConfig =
            toml::from_str("zone = \"a.\"\n[[key]]\nfile = \"k\"\nupdate = [\"@\"]\n").unwrap();
        assert_eq!(f.keys[0].update, vec!["@".to_string()]);
    }
}
