//! TLS of relay connections: the relay presents a certificate for the name
//! [`SERVER_NAME`] issued by the network's CA; a node presents its own
//! node certificate (same CA). The node's GE id comes from its
//! certificate's SAN URI `urn:fpn:ge:<id>`, as on node-to-node QUIC.

use std::sync::Arc;

use fpn_proto::ge::GeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{ConnectionIdGenerator, HashedConnectionIdGenerator};
use ring::{hkdf, hmac};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// ALPN of relay connections.
pub const ALPN: &[u8] = b"fpn-relay/1";
/// The DNS name in the relay's certificate, and in the nodes' ClientHello.
pub const SERVER_NAME: &str = "fpn-relay";

/// What a verified node certificate says about its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCert {
    /// The GE id from `urn:fpn:ge:<id>`.
    pub ge: GeId,
    /// The certificate serial (at most 64 bits).
    pub serial: u64,
    /// SHA-256 of the certificate (how the GMS knows certificates).
    pub fingerprint: [u8; 32],
}

/// Reads the GE id, serial and fingerprint of a (verified) certificate.
pub fn parse_node_cert(der: &[u8]) -> Result<NodeCert, &'static str> {
    let cd = CertificateDer::from(der);
    let cert =
        webpki::EndEntityCert::try_from(&cd).map_err(|_| "the certificate cannot be parsed")?;
    let mut ids = cert
        .valid_uri_names()
        .filter_map(|u| u.strip_prefix("urn:fpn:ge:"));
    let id = ids.next().ok_or("the certificate carries no GE id")?;
    if ids.next().is_some() {
        return Err("the certificate carries two GE ids");
    }
    let ge = id
        .parse::<u32>()
        .map_err(|_| "the certificate's GE id is not a number")?;
    let serial = cert.serial();
    let first = serial.iter().position(|&b| b != 0).unwrap_or(serial.len());
    let digits = &serial[first..];
    if digits.len() > 8 {
        return Err("the certificate serial is longer than 64 bits");
    }
    let serial = digits.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    Ok(NodeCert {
        ge: GeId(ge),
        serial,
        fingerprint,
    })
}

/// The node certificate of a connection's peer (the relay's side).
pub fn peer_node_cert(conn: &quinn::Connection) -> Option<NodeCert> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    parse_node_cert(chain.first()?.as_ref()).ok()
}

/// Transport settings of relay connections (both ends). Keep-alives every
/// second and a 5 s idle timeout: a relay that went away is noticed within
/// seconds, so a node reconnects soon after it is back (a restarted relay
/// also resets the old connections at once, see [`endpoint_config`]).
/// An initial MTU of 1452 lets a full carrier frame (TUN MTU 1380 + 24-byte
/// trailer + kind byte) plus the 4-byte header fit the first datagram.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(std::time::Duration::from_secs(5)).ok());
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(64u32.into());
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(1 << 20);
    t.initial_mtu(1452);
    t
}

/// The relay's server configuration: `cert_der` (for [`SERVER_NAME`],
/// signed by the CA) and its key; clients must present a certificate that
/// chains to `ca_der`.
pub fn server_config(
    ca_der: &[u8],
    cert_der: &[u8],
    key_der: &Zeroizing<Vec<u8>>,
) -> Result<quinn::ServerConfig> {
    let prov = fpn_gms_client::tls::provider();
    let roots = fpn_gms_client::tls::roots(ca_der).map_err(|e| Error::Tls(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, prov.clone())
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let chain = vec![
        CertificateDer::from(cert_der.to_vec()),
        CertificateDer::from(ca_der.to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let mut tls = rustls::ServerConfig::builder_with_provider(prov)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(Arc::new(transport()));
    Ok(sc)
}

/// A node's client configuration for the relay: the CA as the only root,
/// the node's certificate and key.
pub fn client_config(
    ca_der: &[u8],
    cert_der: &[u8],
    key_der: &Zeroizing<Vec<u8>>,
) -> Result<quinn::ClientConfig> {
    let prov = fpn_gms_client::tls::provider();
    let roots = fpn_gms_client::tls::roots(ca_der).map_err(|e| Error::Tls(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let mut tls = rustls::ClientConfig::builder_with_provider(prov)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![CertificateDer::from(cert_der.to_vec())], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(Arc::new(transport()));
    Ok(cc)
}

/// Domain separation: these keys are used for nothing else.
const SALT: &[u8] = b"fpn relay restart keys v1";

struct U64Len;

impl hkdf::KeyType for U64Len {
    fn len(&self) -> usize {
        8
    }
}

/// The endpoint configuration whose stateless-reset key and connection-id
/// check key derive from `secret` (a key the relay keeps across restarts).
/// A restarted relay then resets its predecessor's connections at their
/// first packet, so nodes reconnect at once instead of after the idle
/// timeout (the same reasoning as the node carrier's `restart` module).
pub fn endpoint_config(secret: &[u8]) -> quinn::EndpointConfig {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
    let keys = (|| {
        let reset = hmac::Key::from(prk.expand(&[b"stateless reset"], hmac::HMAC_SHA256).ok()?);
        let mut cid = [0u8; 8];
        prk.expand(&[b"connection id check"], U64Len)
            .ok()?
            .fill(&mut cid)
            .ok()?;
        Some((reset, u64::from_le_bytes(cid)))
    })();
    let Some((reset, cid_key)) = keys else {
        // Unreachable (HKDF-SHA256 expands to these lengths); random keys
        // still work, only not across a restart.
        return quinn::EndpointConfig::default();
    };
    let mut cfg = quinn::EndpointConfig::new(Arc::new(reset));
    cfg.cid_generator(move || {
        Box::new(HashedConnectionIdGenerator::from_key(cid_key)) as Box<dyn ConnectionIdGenerator>
    });
    cfg
}
