//! fpn-gms-client: the node side of the GMS protocol.
//!
//! Everything a node needs to talk to its GMS, and nothing of the server:
//!
//! - [`enroll`]: spends a one-time [`token`], pins the GMS's CA from it,
//!   generates the node key and returns the [`Identity`] the GMS issued.
//! - [`Session`]: the long-lived mutual-TLS QUIC session with reconnect; it
//!   delivers group keys, GE info, revocations and directory changes as
//!   [`Event`]s and keeps the on-disk [`KeyCache`].
//! - [`wire`]/[`framing`]: the node<->GMS control protocol, both directions
//!   (the GMS decodes with the same code).
//! - [`tls`]: the client TLS/QUIC configurations and the shared socket helper;
//!   [`ca`]: certificate fingerprints and node key generation.
//! - [`fsutil`]: atomic 0600 writes for the state directory.
//! - [`sd_notify`]: systemd readiness (`Type=notify`), for both daemons.
//!
//! ```no_run
//! # async fn f(token: &str, dir: &std::path::Path) -> fpn_gms_client::Result<()> {
//! use fpn_gms_client::{self as client, Session, SessionConfig};
//! let endpoint = client::endpoint("0.0.0.0:0".parse().unwrap())?;
//! let id = client::enroll(token, &endpoint).await?;   // once
//! id.save(dir)?;
//! let id = client::Identity::load(dir)?;               // every start
//! let mut s = Session::start(id, endpoint, SessionConfig::with_cache(dir.join("keys")))?;
//! while let Some(ev) = s.next_event().await { /* keys, info, revocations ... */ }
//! # Ok(()) }
//! ```
//!
//! Many sessions may share one [`quinn::Endpoint`] (one UDP socket), which
//! is how the fan-out benchmark runs thousands of them.
//!
//! What it never does: issue certificates, credentials or keys for anyone
//! but the node itself (no CA, no rcgen), store anything but the node's own
//! state files, serve the control protocol, or log key bytes, token secrets
//! or the node's private key. It links neither sled nor the DNS server.

/// The software version a node reports in its session hello (the
/// workspace's version: fpn-node and this crate are built together).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod ca;
mod cache;
pub mod error;
pub mod framing;
pub mod fsutil;
pub mod metrics;
pub mod renewal;
pub mod sd_notify;
mod session;
pub mod task;
pub mod tls;
pub mod token;
pub mod wire;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fpn_proto::credential::{Credential, UnverifiedCredential};
use fpn_proto::keys::NodeKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use cache::{CachedKey, KeyCache};
pub use session::{DirectorySync, Event, NodeState, Session, SessionConfig};

pub use error::Error;

use crate::ca::{SERVER_NAME, fingerprint, generate_node_key};
use crate::framing::{read_frame, write_frame};
use crate::token::Token;
use crate::wire::{ClientMsg, EnrollRequest, ServerMsg, close, enroll_transcript};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `N` bytes from the operating system's CSPRNG.
pub fn random<const N: usize>() -> Result<[u8; N]> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| Error::Random)?;
    Ok(out)
}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4
/// address it stands for. A QUIC endpoint bound to `[::]` serves both
/// families and reports IPv4 peers mapped; everything that compares,
/// reports or publishes addresses (the directory, DNS records, NAT
/// candidates) wants one spelling per address.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The current time, unix seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long enrollment may take end to end.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(15);

/// A client endpoint bound to `bind` (e.g. `0.0.0.0:0`).
pub fn endpoint(bind: SocketAddr) -> Result<quinn::Endpoint> {
    tls::endpoint(bind, None)
}

/// A client endpoint on an ephemeral port that reaches both families
/// (`[::]:0`, IPv4 peers mapped), or IPv4 only on a host without IPv6
/// sockets: for a GMS whose address may be of either family.
pub fn endpoint_any() -> Result<quinn::Endpoint> {
    match endpoint(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))) {
        Err(Error::Net(e)) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            endpoint(SocketAddr::from(([0, 0, 0, 0], 0)))
        }
        r => r,
    }
}

/// What enrollment gives a node; saved in its state directory.
#[derive(Clone)]
pub struct Identity {
    /// `host:port` of the GMS.
    pub gms_addr: String,
    /// The network's zone.
    pub zone: String,
    /// The CA's Ed25519 key (verifies credentials).
    pub ca_public: [u8; 32],
    /// The CA certificate, DER.
    pub ca_cert: Vec<u8>,
    /// The node's certificate, DER.
    pub cert: Vec<u8>,
    /// The node's current credential (binary form).
    pub credential: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("gms_addr", &self.gms_addr)
            .field("zone", &self.zone)
            .field("cert", &hex::encode(&fingerprint(&self.cert)[..8]))
            .finish_non_exhaustive()
    }
}

/// `identity.json`: the non-secret part of an [`Identity`].
#[derive(Serialize, Deserialize)]
struct IdentityFile {
    gms_addr: String,
    zone: String,
    ca_public: String,
}

impl Identity {
    /// An identity from its parts, as enrollment would give it (for tools
    /// and tests that issue certificates with `fpn_gms::ca::Ca` directly).
    /// `key` is the node's PKCS#8 private key; it must parse.
    pub fn from_parts(
        gms_addr: String,
        zone: String,
        ca_public: [u8; 32],
        ca_cert: Vec<u8>,
        cert: Vec<u8>,
        credential: Vec<u8>,
        key: Zeroizing<Vec<u8>>,
    ) -> Result<Self> {
        let id = Self {
            gms_addr,
            zone,
            ca_public,
            ca_cert,
            cert,
            credential,
            key,
        };
        id.node_key()?;
        Ok(id)
    }

    /// The node's signing key (the key its certificate and credential name).
    pub fn node_key(&self) -> Result<NodeKey> {
        Ok(NodeKey::from_pkcs8(&self.key)?)
    }

    /// The node's private key, PKCS#8 DER (for its own TLS configurations).
    pub fn key_pkcs8(&self) -> &Zeroizing<Vec<u8>> {
        &self.key
    }

    /// The node's credential, verified with the CA key at `now`.
    pub fn verified_credential(&self, now: u64) -> Result<Credential> {
        Ok(UnverifiedCredential::decode(&self.credential)?.verify(&self.ca_public, now)?)
    }

    /// Writes the identity into `dir` (created 0700): `node.key`,
    /// `node.crt` and `credential` (0600), `ca.crt`, `identity.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fsutil::create_private_dir(dir)?;
        fsutil::write_atomic(&dir.join("node.key"), &self.key, 0o600)?;
        self.save_renewal(dir)?;
        fsutil::write_atomic(&dir.join("ca.crt"), &self.ca_cert, 0o644)?;
        let meta = IdentityFile {
            gms_addr: self.gms_addr.clone(),
            zone: self.zone.clone(),
            ca_public: hex::encode(self.ca_public),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Config(e.to_string()))?;
        fsutil::write_atomic(&dir.join("identity.json"), &json, 0o644)
    }

    /// Writes what a renewal changes, `node.crt` and `credential` (0600),
    /// each replaced atomically. A crash between the two leaves a new
    /// certificate with the old credential (or the reverse): both still
    /// valid, since a renewal revokes nothing, and the next session start
    /// brings the current credential anyway.
    pub fn save_renewal(&self, dir: &Path) -> Result<()> {
        fsutil::write_atomic(&dir.join("credential"), &self.credential, 0o600)?;
        fsutil::write_atomic(&dir.join("node.crt"), &self.cert, 0o600)
    }

    /// Reads an identity written by [`Identity::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let meta: IdentityFile = serde_json::from_slice(&fsutil::read(&dir.join("identity.json"))?)
            .map_err(|e| Error::Config(format!("identity.json: {e}")))?;
        let ca_public = hex::decode(&meta.ca_public)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| Error::Config("identity.json: bad ca_public".into()))?;
        let id = Self {
            gms_addr: meta.gms_addr,
            zone: meta.zone,
            ca_public,
            ca_cert: fsutil::read(&dir.join("ca.crt"))?,
            cert: fsutil::read(&dir.join("node.crt"))?,
            credential: fsutil::read(&dir.join("credential"))?,
            key: Zeroizing::new(fsutil::read(&dir.join("node.key"))?),
        };
        id.node_key()?;
        Ok(id)
    }
}

/// Resolves `host:port`: the first address this host has a route to
/// ([`pick_routable`]), so a name with A and AAAA records works from an
/// IPv4-only and from an IPv6-only network alike.
pub async fn resolve(addr: &str) -> Result<SocketAddr> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| Error::Config(format!("resolving {addr}: {e}")))?
        .collect();
    pick_routable(&all).ok_or_else(|| Error::Config(format!("{addr} resolves to no address")))
}

/// The first of `addrs` the kernel has a route to (a UDP `connect`, which
/// sends nothing, asks it), else the first one: the resolver's order
/// (IPv6 first for a name with both) would pick an address of a family
/// the host cannot reach.
pub fn pick_routable(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    let routable = |a: &SocketAddr| {
        let any: SocketAddr = if a.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        };
        std::net::UdpSocket::bind(any)
            .and_then(|s| s.connect(a))
            .is_ok()
    };
    addrs
        .iter()
        .copied()
        .find(routable)
        .or_else(|| addrs.first().copied())
}

/// Verifies a credential that the GMS itself just sent over an
/// authenticated channel. The CA signature must hold. Its validity period is
/// the GMS's business: when the node's clock puts "now" outside it, the
/// credential is still taken (with a warning), since refusing it would only
/// lock out a node with a wrong clock (after burning its token).
pub fn verify_from_gms(bytes: &[u8], ca_public: &[u8; 32]) -> Result<Credential> {
    let u = UnverifiedCredential::decode(bytes)?;
    match u.clone().verify(ca_public, crate::now_unix()) {
        // verify() checks the signature before the validity period, so
        // this error means the signature is good.
        Err(fpn_proto::Error::CredentialExpired {
            not_before,
            not_after,
            now,
            ..
        }) => {
            if now > not_after {
                // Short-lived credentials run out while a node is away from
                // its GMS; the session renews it (peers refuse it meanwhile).
                tracing::info!(
                    expired_secs = now - not_after,
                    "this node's credential has expired; the GMS session renews it"
                );
            } else {
                tracing::warn!(
                    "the credential from the GMS is not yet valid by this node's clock; check the clock"
                );
            }
            Ok(u.verify(ca_public, not_before)?)
        }
        r => Ok(r?),
    }
}

/// Enrolls with `token`: generates the node key, pins the CA from the token,
/// proves the token and the key, and returns the certificate, credential and
/// CA the GMS issued. The token is spent whether or not the caller saves the result.
pub async fn enroll(token: &str, endpoint: &quinn::Endpoint) -> Result<Identity> {
    tokio::time::timeout(ENROLL_TIMEOUT, enroll_inner(token, endpoint))
        .await
        .map_err(|_| Error::Timeout("enrollment"))?
}

async fn enroll_inner(token: &str, endpoint: &quinn::Endpoint) -> Result<Identity> {
    let t = Token::parse(token)?;
    let addr = resolve(&t.gms_addr).await?;
    let (key_der, public) = generate_node_key()?;
    let proof = NodeKey::from_pkcs8(&key_der)?.sign(&enroll_transcript(&t.id, &public));
    let cfg = tls::enroll_client_config(t.ca_fingerprint)?;
    let conn = endpoint.connect_with(cfg, addr, SERVER_NAME)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let req = ClientMsg::Enroll(EnrollRequest {
        token_id: t.id,
        secret: t.secret.clone(),
        node_key: public,
        proof,
    });
    write_frame(&mut send, &req.encode()?).await?;
    send.finish()?;
    let answer = read_frame(&mut recv).await;
    conn.close(close::NORMAL.into(), b"enrolled");
    let (ty, body) = answer?.ok_or_else(|| Error::Protocol("the GMS sent no answer".into()))?;
    match ServerMsg::decode(ty, &body)? {
        ServerMsg::Enrolled(e) => {
            if fingerprint(&e.ca_cert) != t.ca_fingerprint {
                return Err(Error::Protocol(
                    "the GMS sent a CA other than the pinned one".into(),
                ));
            }
            let cred = verify_from_gms(&e.credential, &e.ca_public)?;
            if cred.node_key != public {
                return Err(Error::Protocol("the credential names another key".into()));
            }
            Ok(Identity {
                gms_addr: t.gms_addr.clone(),
                zone: e.zone,
                ca_public: e.ca_public,
                ca_cert: e.ca_cert,
                cert: e.cert,
                credential: e.credential,
                key: key_der,
            })
        }
        ServerMsg::Refused { code, reason } => Err(Error::Refused {
            code: code as u16,
            reason,
        }),
        other => Err(Error::Protocol(format!(
            "unexpected answer to enrollment: {other:?}"
        ))),
    }
}

/// A TOML error on one line (both daemons' configuration files), with the line and column it points at (the
/// toml crate's own text spans several lines, with a drawing of the line).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}", e.message().trim())
        }
        None => e.message().trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpn_proto::ge::{GeId, GeInfo, GeKind, Mode};

    fn info() -> GeInfo {
        GeInfo {
            id: GeId(1),
            name: "a".into(),
            kind: GeKind::Ges,
            mode: Mode::Open,
            groups: Default::default(),
            overlay: std::net::Ipv4Addr::new(100, 64, 0, 1),
        }
    }

    #[test]
    fn a_routable_address_is_picked_before_an_unroutable_one() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        // Loopback is routable everywhere; the first wins among routable.
        assert_eq!(
            pick_routable(&[a("127.0.0.1:1"), a("127.0.0.2:1")]),
            Some(a("127.0.0.1:1"))
        );
        // Nothing routable: the first, as the resolver gave it.
        assert_eq!(pick_routable(&[]), None);
    }

    #[test]
    fn mapped_addresses_become_ipv4_and_others_stay() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            canonical_addr(a("[::ffff:198.18.0.2]:7718")),
            a("198.18.0.2:7718")
        );
        for same in [
            "198.18.0.2:7718",
            "[2001:db8::2]:7718",
            "[::1]:53",
            "[::]:0",
        ] {
            assert_eq!(canonical_addr(a(same)), a(same));
        }
    }

    #[test]
    fn a_credential_from_the_gms_survives_a_skewed_clock_but_not_a_foreign_ca() {
        let now = crate::now_unix();
        // The CA signs credentials with an Ed25519 key like a node's.
        let ca = NodeKey::from_pkcs8(&generate_node_key().unwrap().0).unwrap();
        // Issued by a GMS whose clock is a day ahead of ours.
        let ahead =
            Credential::issue(&ca, 1, info(), [7; 32], now + 86_400, now + 2 * 86_400).unwrap();
        let c = verify_from_gms(&ahead.encode().unwrap(), &ca.public()).unwrap();
        assert_eq!(c.serial, 1);
        let other = NodeKey::from_pkcs8(&generate_node_key().unwrap().0).unwrap();
        assert!(verify_from_gms(&ahead.encode().unwrap(), &other.public()).is_err());
        let mut bytes = ahead.encode().unwrap();
        bytes[10] ^= 1;
        assert!(verify_from_gms(&bytes, &ca.public()).is_err());
    }
}
