//! The server configuration: `gms.toml` in the data directory.
//!
//! `fpn-gms init` writes it; the operator may edit it while the server is
//! stopped. Every field has a default except the zone.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::as_str;
use crate::schedule::{HumanDuration, Schedule};
use crate::{Error, Result};

/// File name of the configuration inside the data directory.
pub const CONFIG_FILE: &str = "gms.toml";
/// Default lifetime of node credentials, seconds (24 h).
pub const DEFAULT_CREDENTIAL_LIFETIME: u64 = 86_400;
/// Shortest credential lifetime accepted: renewal runs at about half of it,
/// and a shorter one would have nodes renewing faster than a session
/// reconnects after a GMS restart.
pub const MIN_CREDENTIAL_LIFETIME: u64 = 10;

/// Default QUIC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4433";

/// The files of a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Names the data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `gms.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// Fails with [`Error::NotInitialized`] unless `fpn-gms init` created
    /// this directory (its `gms.toml` is there), so a wrong or missing
    /// `--data` is named as such rather than as the first file that fails
    /// to open.
    pub fn check_initialized(&self) -> Result<()> {
        match std::fs::metadata(self.config()) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotInitialized {
                data: self.root.clone(),
                reason: if self.root.is_dir() {
                    format!("no {CONFIG_FILE} in it")
                } else {
                    "no such directory".into()
                },
            }),
            Err(source) => Err(Error::Io {
                what: "reading",
                path: self.config(),
                source,
            }),
        }
    }

    /// The sled database directory.
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }

    /// The store-encryption key (32 bytes, 0600) that seals the secret
    /// values of [`DataDir::db`]; back it up with the store, apart from it.
    pub fn store_key(&self) -> PathBuf {
        self.root.join("store.key")
    }

    /// The CA private key (PKCS#8 DER, 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    /// The CA certificate (DER).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    /// The QUIC server's private key (PKCS#8 DER, 0600).
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }

    /// The QUIC server's certificate (DER), signed by the CA.
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.crt")
    }

    /// The DDNS zone database (sled) of the in-process DNS.
    pub fn dns_db(&self) -> PathBuf {
        self.root.join("dns")
    }

    /// The admin unix socket (0600).
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }

    /// The web admin's users: `NAME:ARGON2-PHC` lines (0600).
    pub fn web_users(&self) -> PathBuf {
        self.root.join("web-users")
    }
}

/// The contents of `gms.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The DNS zone of the network, e.g. `home.fpn.`.
    pub zone: String,
    /// Where the QUIC server listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `host:port` that nodes use to reach the GMS (goes into tokens). When
    /// unset, the listen address is used; it must then not be a wildcard.
    #[serde(default)]
    pub public_addr: Option<String>,
    /// The range overlay addresses are assigned from.
    #[serde(default, with = "as_str")]
    pub overlay_range: OverlayRange,
    /// When all groups rotate on their own.
    #[serde(default, with = "as_str")]
    pub rotation_schedule: Schedule,
    /// How long the previous key version stays valid after a rotation.
    #[serde(default = "default_grace", with = "as_str")]
    pub grace: HumanDuration,
    /// Lifetime of a node's certificate (mTLS) and credential (DPRP), both
    /// issued together at enrollment and at each renewal. Nodes renew at
    /// about half of it over their GMS session, so a node cut off from the
    /// GMS (e.g. a revoked laptop that blocks the GMS) is refused by its
    /// peers at most this long after its last renewal.
    #[serde(default = "default_lifetime", with = "as_str")]
    pub credential_lifetime: HumanDuration,
    /// How long after its certificate expired a node may still open a GMS
    /// session (to renew) if it was not revoked; beyond that it must enroll
    /// again. Peers never accept the expired credential meanwhile.
    #[serde(default = "default_reconnect_grace", with = "as_str")]
    pub expired_reconnect_grace: HumanDuration,
    /// Obsolete (certificates used to live this many days and were never
    /// renewed): accepted so old files load, and ignored.
    #[serde(default, skip_serializing)]
    pub cert_validity_days: Option<u32>,
    /// Lifetime of an enrollment token when `token create` names none.
    #[serde(default = "default_token_ttl", with = "as_str")]
    pub token_ttl: HumanDuration,
    /// The DDNS that `serve` runs in-process.
    #[serde(default)]
    pub dns: DnsSettings,
    /// The relay that `serve` runs in-process, or where a standalone one is.
    #[serde(default)]
    pub relay: RelaySettings,
    /// The web admin (HTTPS) that `serve` runs when `listen` is set.
    #[serde(default, skip_serializing_if = "WebSettings::is_off")]
    pub web: WebSettings,
    /// The log filter of `serve` (e.g. `info`, `fpn_gms=debug`; default
    /// `info`). `RUST_LOG`, when set, wins over it for the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// `/metrics` for Prometheus (off by default).
    #[serde(default, skip_serializing_if = "MetricsSettings::is_off")]
    pub metrics: MetricsSettings,
}

/// The `[metrics]` section (docs/GMS.md "Metrics").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Where `/metrics` is served over HTTP (TCP), e.g. `127.0.0.1:9478`;
    /// `None` (the default): no listener. Unauthenticated: loopback or a
    /// private address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

impl MetricsSettings {
    /// True when no listener is configured.
    pub fn is_off(&self) -> bool {
        self.listen.is_none()
    }
}

/// The `[relay]` section: the relay nodes fall back to when they cannot
/// reach each other directly (docs/GMS.md "Relay").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySettings {
    /// Run the relay inside `fpn-gms serve` (default true).
    pub enabled: bool,
    /// UDP address it listens on. Default: the QUIC listen IP, port 7720.
    pub listen: Option<SocketAddr>,
    /// `host:port` nodes are told to use. Default: the host of the GMS's
    /// `public_addr` with the relay's port. With `enabled = false`, the
    /// address of a standalone `fpn-relay` (unset: nodes get no relay).
    pub public_addr: Option<String>,
    /// Sustained rate per node through the relay, Mbit/s (default 50).
    pub rate_mbit: u64,
    /// Burst per node, KiB (default 1024).
    pub burst_kib: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            public_addr: None,
            rate_mbit: 50,
            burst_kib: 1024,
        }
    }
}

impl RelaySettings {
    /// Where the in-process relay listens for a GMS configured to listen
    /// on `quic`: its IP and port 7720, or any free port when the GMS's
    /// own port is 0 (tests running many servers at once).
    pub fn listen_addr(&self, quic: SocketAddr) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            let port = if quic.port() == 0 {
                0
            } else {
                fpn_relay::DEFAULT_PORT
            };
            SocketAddr::new(quic.ip(), port)
        })
    }

    /// The rate limit per node.
    pub fn rate(&self) -> fpn_relay::RateLimit {
        fpn_relay::RateLimit {
            bytes_per_sec: self.rate_mbit.saturating_mul(1_000_000) / 8,
            burst: self.burst_kib.saturating_mul(1024),
        }
    }

    /// What nodes are told: `public_addr`, else (relay in-process) the
    /// host of the GMS's own address (`gms`, `host:port`) with the port
    /// the relay listens on.
    pub fn advertised(&self, gms: Option<&str>, relay_port: Option<u16>) -> Option<String> {
        if let Some(a) = &self.public_addr {
            return Some(a.clone());
        }
        let (host, _) = gms?.rsplit_once(':')?;
        Some(format!("{host}:{}", relay_port?))
    }
}

/// The `[web]` section: the web admin inside `fpn-gms serve` (docs/ADMIN.md).
/// Off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    /// HTTPS address, e.g. `127.0.0.1:8443`. None: no web admin.
    pub listen: Option<SocketAddr>,
    /// A certificate chain (PEM) to present instead of one from the GMS's
    /// CA, relative to the data directory; needs `key`.
    pub cert: Option<PathBuf>,
    /// The private key (PEM, PKCS#8 or SEC1/RSA) of `cert`.
    pub key: Option<PathBuf>,
    /// Names and addresses the CA-issued certificate is valid for (when no
    /// `cert` is given). Default: `localhost`, the host of `public_addr`
    /// and the IP of `listen` unless it is a wildcard.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

impl WebSettings {
    fn is_off(&self) -> bool {
        *self == Self::default()
    }
}

/// The `[dns]` section: the zone's DNS server inside `fpn-gms serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// Run the DDNS in-process (default true).
    pub enabled: bool,
    /// Addresses to answer on, UDP and TCP. Empty: the QUIC listen IP, port 53.
    pub listen: Vec<SocketAddr>,
    /// An fpn-ddns TOML file (TSIG keys with scopes, NOTIFY targets, SOA),
    /// relative to the data directory. Its `zone`, `listen` and `data` are
    /// ignored: the GMS sets those.
    pub config: Option<PathBuf>,
    /// UDP worker threads (default 2).
    pub udp_threads: Option<usize>,
    /// The zone's name server as a parent zone names it (the apex `NS`):
    /// a name inside the zone, relative (`ns1`) or absolute, published with
    /// glue from `ns_addrs`; or an absolute name outside it
    /// (`vps.example.org.`), published without glue. Default: the host name
    /// of `public_addr` when it is a name, else `ns1` (see
    /// [`Config::nameserver`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_name: Option<String>,
    /// The glue addresses (A/AAAA) of an in-zone `ns_name`. Default: the IP
    /// of `public_addr`, else of `listen` when it is not a wildcard.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ns_addrs: Vec<IpAddr>,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: Vec::new(),
            config: None,
            udp_threads: None,
            ns_name: None,
            ns_addrs: Vec::new(),
        }
    }
}

/// The zone's name server as published at the apex: its `NS` target and
/// the glue records that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nameserver {
    /// Absolute, lower case, with the trailing dot.
    pub name: String,
    /// Whether `name` is inside the zone (then `glue` is not empty).
    pub in_zone: bool,
    /// A/AAAA records published at `name` (only for an in-zone name).
    pub glue: Vec<IpAddr>,
}

impl DnsSettings {
    /// Where the DNS answers for a GMS listening on `quic`. A QUIC socket
    /// on `[::]` serves both families, so the DNS then answers on
    /// `0.0.0.0:53` and `[::]:53` (its sockets are of one family each).
    pub fn listen_addrs(&self, quic: SocketAddr) -> Vec<SocketAddr> {
        if !self.listen.is_empty() {
            return self.listen.clone();
        }
        if quic.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
            return vec![
                SocketAddr::from(([0, 0, 0, 0], 53)),
                SocketAddr::new(quic.ip(), 53),
            ];
        }
        vec![SocketAddr::new(quic.ip(), 53)]
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 4433)))
}
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(DEFAULT_CREDENTIAL_LIFETIME))
}
fn default_reconnect_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 86_400))
}
fn default_token_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

impl Config {
    /// A configuration with defaults for `zone`.
    pub fn new(zone: &str) -> Result<Self> {
        let c = Self {
            zone: normalize_zone(zone)?,
            listen: default_listen(),
            public_addr: None,
            overlay_range: OverlayRange::default(),
            rotation_schedule: Schedule::default(),
            grace: default_grace(),
            credential_lifetime: default_lifetime(),
            expired_reconnect_grace: default_reconnect_grace(),
            cert_validity_days: None,
            token_ttl: default_token_ttl(),
            dns: DnsSettings::default(),
            log: None,
            relay: RelaySettings::default(),
            metrics: MetricsSettings::default(),
            web: WebSettings::default(),
        };
        Ok(c)
    }

    /// Reads and checks `gms.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            DataDir::new(dir).check_initialized()?;
        }
        let text = std::fs::read_to_string(path).map_err(Error::io("reading", path))?;
        let mut c: Config = toml::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "{}: {}",
                path.display(),
                fpn_gms_client::toml_error(&text, &e)
            ))
        })?;
        c.zone = normalize_zone(&c.zone)?;
        c.check()?;
        if c.cert_validity_days.is_some() {
            tracing::warn!(
                "gms.toml: cert_validity_days is obsolete and ignored; see credential_lifetime"
            );
        }
        Ok(c)
    }

    /// The keys a SIGHUP applies to a running server (docs/GMS.md
    /// "Reload"): the log filter, and the key settings the core reads at
    /// each use (a new grace applies from the next rotation, a new token
    /// lifetime to the next token, a new schedule from now on).
    pub const RELOADABLE: [&'static str; 4] = ["log", "grace", "token_ttl", "rotation_schedule"];

    /// The keys that differ between `self` (in force) and `new` but only
    /// take effect after a restart: they are bound into sockets, the CA,
    /// the store or the DNS server at start-up.
    pub fn restart_keys_changed(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut diff = |name: &'static str, same: bool| {
            if !same {
                out.push(name);
            }
        };
        diff("zone", self.zone == new.zone);
        diff("listen", self.listen == new.listen);
        diff("public_addr", self.public_addr == new.public_addr);
        diff("overlay_range", self.overlay_range == new.overlay_range);
        diff(
            "credential_lifetime",
            self.credential_lifetime == new.credential_lifetime,
        );
        diff(
            "expired_reconnect_grace",
            self.expired_reconnect_grace == new.expired_reconnect_grace,
        );
        diff("dns", self.dns == new.dns);
        diff("relay", self.relay == new.relay);
        diff("metrics", self.metrics == new.metrics);
        diff("web", self.web == new.web);
        out
    }

    /// The log filter in force: `log`, or `info`.
    pub fn log_filter(&self) -> &str {
        self.log.as_deref().unwrap_or("info")
    }

    /// Checks values that the types alone do not bound.
    pub fn check(&self) -> Result<()> {
        if let Some(log) = &self.log {
            tracing_subscriber::EnvFilter::try_new(log)
                .map_err(|e| Error::Config(format!("log = {log:?}: {e}")))?;
        }
        if self.relay.enabled {
            self.relay
                .rate()
                .check()
                .map_err(|e| Error::Config(format!("[relay]: {e}")))?;
        }
        if self.credential_lifetime.0.as_secs() < MIN_CREDENTIAL_LIFETIME {
            return Err(Error::Config(format!(
                "credential_lifetime must be at least {MIN_CREDENTIAL_LIFETIME}s"
            )));
        }
        self.nameserver()?;
        if self.web.cert.is_some() != self.web.key.is_some() {
            return Err(Error::Config(
                "[web]: set both cert and key, or neither (a certificate from the GMS's CA)".into(),
            ));
        }
        Ok(())
    }

    /// The name server the zone publishes (`NS` at the apex, with glue for
    /// an in-zone name), so a parent zone can delegate to this GMS.
    ///
    /// From `[dns] ns_name`/`ns_addrs` when set, else derived from
    /// `public_addr` (its host name, out of zone and without glue; or
    /// `ns1.<zone>` with its IP as glue), else from a non-wildcard `listen`.
    /// `Ok(None)` when nothing says where the GMS is (a data directory from
    /// before these settings, listening on a wildcard with no public
    /// address): the zone then keeps the NS it has. An explicit setting that
    /// cannot work (an in-zone name without an address, glue for a name
    /// outside the zone) is an error.
    pub fn nameserver(&self) -> Result<Option<Nameserver>> {
        let dns = &self.dns;
        let (public_ip, public_name) = match self.public_addr.as_deref().map(split_host) {
            Some(Ok(host)) => match host.parse::<IpAddr>() {
                Ok(ip) => (Some(ip), None),
                Err(_) => (None, Some(host.to_ascii_lowercase())),
            },
            Some(Err(e)) => return Err(e),
            None => (None, None),
        };
        let known_ip = public_ip.or((!self.listen.ip().is_unspecified()).then(|| self.listen.ip()));
        let name = match (&dns.ns_name, &public_name) {
            (Some(n), _) => absolute_name(n, &self.zone)?,
            (None, Some(h)) => absolute_name(&format!("{h}."), &self.zone)?,
            (None, None) => format!("ns1.{}", self.zone),
        };
        let in_zone = name == self.zone || name.ends_with(&format!(".{}", self.zone));
        if !in_zone {
            if !dns.ns_addrs.is_empty() {
                return Err(Error::Config(format!(
                    "[dns] ns_addrs: the name server {name} is outside the zone {}, so the zone \
                     cannot hold its addresses; publish them in {name}'s own zone and remove ns_addrs",
                    self.zone
                )));
            }
            return Ok(Some(Nameserver {
                name,
                in_zone,
                glue: Vec::new(),
            }));
        }
        let glue: Vec<IpAddr> = if dns.ns_addrs.is_empty() {
            known_ip.into_iter().collect()
        } else {
            dns.ns_addrs.clone()
        };
        if glue.is_empty() {
            if dns.ns_name.is_some() || public_name.is_some() {
                return Err(Error::Config(format!(
                    "the name server {name} is inside the zone {} and needs an address (glue) \
                     for a parent to delegate to it: set [dns] ns_addrs = [\"IP\"] in gms.toml \
                     (fpn-gms init --ns-addr IP), or name a server outside the zone",
                    self.zone
                )));
            }
            return Ok(None);
        }
        Ok(Some(Nameserver {
            name,
            in_zone,
            glue,
        }))
    }

    /// Lifetime of node certificates and credentials, seconds.
    pub fn credential_lifetime_secs(&self) -> u64 {
        self.credential_lifetime.0.as_secs()
    }

    /// How long after expiry an unrevoked node may still reconnect, seconds.
    pub fn expired_reconnect_grace_secs(&self) -> u64 {
        self.expired_reconnect_grace.0.as_secs()
    }

    /// The file's text.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Config(e.to_string()))
    }

    /// The zone without its trailing dot, for certificate names.
    pub fn zone_name(&self) -> &str {
        self.zone.trim_end_matches('.')
    }
}

/// The host of `host:port` (`[v6]:port` too), brackets removed.
fn split_host(addr: &str) -> Result<&str> {
    let bad = || Error::Config(format!("public address {addr:?}: expected host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    Ok(host)
}

/// `name` made absolute: kept when it ends with a dot, else under `zone`;
/// every label checked.
fn absolute_name(name: &str, zone: &str) -> Result<String> {
    let n = name.trim().to_ascii_lowercase();
    let full = if n.ends_with('.') {
        n
    } else {
        format!("{n}.{zone}")
    };
    let body = full.trim_end_matches('.');
    if body.is_empty()
        || full.len() > 254
        || body
            .split('.')
            .any(|l| fpn_proto::ge::validate_name(l).is_err())
    {
        return Err(Error::Config(format!(
            "[dns] ns_name {name:?}: not a host name (like ns1, or vps.example.org. outside the zone)"
        )));
    }
    Ok(full)
}

/// Lower-cases the zone and makes it absolute (trailing dot); checks its labels.
pub fn normalize_zone(zone: &str) -> Result<String> {
    let z = zone.trim().trim_end_matches('.').to_ascii_lowercase();
    if z.is_empty() || z.len() > 200 {
        return Err(Error::Config(format!(
            "zone {zone:?}: must be a DNS name like home.fpn."
        )));
    }
    for label in z.split('.') {
        fpn_proto::ge::validate_name(label).map_err(|_| {
            Error::Config(format!("zone {zone:?}: label {label:?} is not a DNS label"))
        })?;
    }
    Ok(format!("{z}."))
}

/// An IPv4 prefix overlay addresses are taken from, e.g. `100.64.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayRange {
    base: Ipv4Addr,
    prefix: u8,
}

impl Default for OverlayRange {
    fn default() -> Self {
        Self {
            base: Ipv4Addr::new(100, 64, 0, 0),
            prefix: 16,
        }
    }
}

impl OverlayRange {
    /// A range; the prefix must be 8 to 30 and `base` must have no host bits.
    pub fn new(base: Ipv4Addr, prefix: u8) -> Result<Self> {
        if !(8..=30).contains(&prefix) {
            return Err(Error::Config(format!(
                "overlay range prefix /{prefix}: must be between /8 and /30"
            )));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(base) & !mask != 0 {
            return Err(Error::Config(format!(
                "overlay range {base}/{prefix} has host bits set"
            )));
        }
        Ok(Self { base, prefix })
    }

    /// Number of usable host indexes (1..=hosts): network and broadcast excluded.
    pub fn hosts(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The address of host `index` (1-based). `None` outside the range.
    pub fn host(&self, index: u32) -> Option<Ipv4Addr> {
        (index >= 1 && index <= self.hosts()).then(|| Ipv4Addr::from(u32::from(self.base) + index))
    }

    /// The index of `addr`, if it is a host of the range.
    pub fn index_of(&self, addr: Ipv4Addr) -> Option<u32> {
        let i = u32::from(addr).checked_sub(u32::from(self.base))?;
        (i >= 1 && i <= self.hosts()).then_some(i)
    }
}

impl fmt::Display for OverlayRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for OverlayRange {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Config(format!("overlay range {s:?}: expected a.b.c.d/len"));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        Self::new(a.parse().map_err(|_| bad())?, p.parse().map_err(|_| bad())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_toml_with_defaults() {
        let c = Config::new("Home.FPN").unwrap();
        assert_eq!(c.zone, "home.fpn.");
        let back: Config = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back, c);
        let minimal: Config = toml::from_str("zone = \"x.fpn.\"").unwrap();
        assert_eq!(minimal.grace.0, Duration::from_secs(600));
        assert_eq!(minimal.rotation_schedule, Schedule::default());
        assert!(toml::from_str::<Config>("zone = \"x.\"\nbogus = 1").is_err());
    }

    #[test]
    fn metrics_are_off_by_default_and_a_bad_listen_address_is_refused() {
        let c: Config = toml::from_str("zone = \"x.fpn.\"").unwrap();
        assert_eq!(c.metrics.listen, None);
        // Off is not written into a new gms.toml.
        assert!(
            !Config::new("x.fpn")
                .unwrap()
                .to_toml()
                .unwrap()
                .contains("metrics")
        );
        let on: Config =
            toml::from_str("zone = \"x.fpn.\"\n[metrics]\nlisten = \"127.0.0.1:9478\"").unwrap();
        assert_eq!(on.metrics.listen, Some("127.0.0.1:9478".parse().unwrap()));
        let back: Config = toml::from_str(&on.to_toml().unwrap()).unwrap();
        assert_eq!(back, on);
        for bad in [
            "listen = \"localhost\"",
            "listen = \"127.0.0.1\"",
            "port = 9478",
        ] {
            let text = format!("zone = \"x.fpn.\"\n[metrics]\n{bad}");
            assert!(toml::from_str::<Config>(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_example_config_in_configs_gms_is_valid() {
        let text = include_str!("../../configs/gms/gms.toml");
        let c: Config = toml::from_str(text).unwrap();
        assert_eq!(c.zone, "home.fpn.");
        assert_eq!(c.public_addr.as_deref(), Some("198.18.0.10:4433"));
        assert_eq!(c.rotation_schedule, Schedule::default());
        assert_eq!(c.grace.0, Duration::from_secs(600));
        assert_eq!(c.overlay_range, OverlayRange::default());
        assert_eq!(c.relay.listen, Some("0.0.0.0:7720".parse().unwrap()));
        assert_eq!(c.relay.rate(), fpn_relay::RateLimit::default());
        assert_eq!(c.metrics.listen, None, "metrics off in the example");
        c.check().unwrap();
        let ns = c.nameserver().unwrap().unwrap();
        assert_eq!(ns.name, "ns1.home.fpn.");
        assert_eq!(ns.glue, ["198.18.0.10".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn the_nameserver_follows_the_public_address_unless_set() {
        let ns = |text: &str| {
            let mut c: Config = toml::from_str(text).unwrap();
            c.zone = normalize_zone(&c.zone).unwrap();
            c.nameserver()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An IP: ns1.<zone> with it as glue (brackets of IPv6 removed).
        let n = ns("zone = \"h.fpn\"\npublic_addr = \"[2001:db8::1]:4433\"")
            .unwrap()
            .unwrap();
        assert_eq!((n.name.as_str(), n.in_zone), ("ns1.h.fpn.", true));
        assert_eq!(n.glue, [ip("2001:db8::1")]);
        // A host name: that name, outside the zone, no glue.
        let n = ns("zone = \"h.fpn\"\npublic_addr = \"VPS.example.org:4433\"")
            .unwrap()
            .unwrap();
        assert_eq!((n.name.as_str(), n.in_zone), ("vps.example.org.", false));
        assert!(n.glue.is_empty());
        // A host name inside the zone needs its address.
        assert!(ns("zone = \"h.fpn\"\npublic_addr = \"gms.h.fpn:4433\"").is_err());
        let n = ns("zone = \"h.fpn\"\npublic_addr = \"gms.h.fpn:4433\"\n[dns]\nns_addrs = [\"198.18.0.1\"]")
            .unwrap()
            .unwrap();
        assert_eq!(
            (n.name.as_str(), n.glue.as_slice()),
            ("gms.h.fpn.", &[ip("198.18.0.1")][..])
        );
        // The listen address when it is not a wildcard.
        let n = ns("zone = \"h.fpn\"\nlisten = \"198.18.0.2:4433\"")
            .unwrap()
            .unwrap();
        assert_eq!(n.glue, [ip("198.18.0.2")]);
        // Nothing known (an old directory on a wildcard): keep the zone's NS.
        assert_eq!(ns("zone = \"h.fpn\"").unwrap(), None);
        // Explicit settings that cannot work are errors.
        assert!(ns("zone = \"h.fpn\"\n[dns]\nns_name = \"ns1\"").is_err());
        assert!(
            ns("zone = \"h.fpn\"\n[dns]\nns_name = \"a.example.\"\nns_addrs = [\"198.18.0.1\"]")
                .is_err()
        );
        assert!(
            ns("zone = \"h.fpn\"\n[dns]\nns_name = \"bad_label\"\nns_addrs = [\"198.18.0.1\"]")
                .is_err()
        );
    }

    #[test]
    fn the_relay_nodes_are_told_of_follows_the_gms_address_unless_set() {
        let r = RelaySettings::default();
        assert_eq!(
            r.advertised(Some("gms.example.org:4433"), Some(7720))
                .as_deref(),
            Some("gms.example.org:7720")
        );
        assert_eq!(
            r.advertised(Some("[2001:db8::1]:4433"), Some(7721))
                .as_deref(),
            Some("[2001:db8::1]:7721")
        );
        assert_eq!(r.advertised(None, Some(7720)), None);
        let elsewhere = RelaySettings {
            enabled: false,
            public_addr: Some("relay.example.org:7720".into()),
            ..RelaySettings::default()
        };
        assert_eq!(
            elsewhere.advertised(Some("gms:4433"), None).as_deref(),
            Some("relay.example.org:7720")
        );
        let q: SocketAddr = "198.18.1.10:4433".parse().unwrap();
        assert_eq!(r.listen_addr(q), "198.18.1.10:7720".parse().unwrap());
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(r.listen_addr(any), any);
        let mut bad = Config::new("x.fpn").unwrap();
        bad.relay.rate_mbit = 0;
        assert!(bad.check().is_err());
    }

    #[test]
    fn zones_are_checked() {
        for bad in ["", ".", "a..b", "a_b.fpn", "-a.fpn"] {
            assert!(normalize_zone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_dns_answers_on_both_families_when_quic_listens_on_both() {
        let d = DnsSettings::default();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            d.listen_addrs(a("[::]:4433")),
            vec![a("0.0.0.0:53"), a("[::]:53")]
        );
        assert_eq!(
            d.listen_addrs(a("198.18.0.10:4433")),
            vec![a("198.18.0.10:53")]
        );
        assert_eq!(
            d.listen_addrs(a("[2001:db8::1]:4433")),
            vec![a("[2001:db8::1]:53")]
        );
    }

    #[test]
    fn overlay_range_hosts() {
        let r: OverlayRange = "100.64.0.0/30".parse().unwrap();
        assert_eq!(r.hosts(), 2);
        assert_eq!(r.host(0), None);
        assert_eq!(r.host(1), Some(Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(r.host(3), None);
        assert_eq!(r.index_of(Ipv4Addr::new(100, 64, 0, 2)), Some(2));
        assert_eq!(r.index_of(Ipv4Addr::new(100, 64, 0, 3)), None);
        assert!("100.64.0.1/16".parse::<OverlayRange>().is_err());
        assert!("100.64.0.0/31".parse::<OverlayRange>().is_err());
        assert_eq!(r.to_string(), "100.64.0.0/30");
    }
}
