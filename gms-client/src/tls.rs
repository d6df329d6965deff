//! rustls and quinn configurations of GMS clients, and the QUIC socket helper.
//!
//! - An enrolling node has only the CA fingerprint from its token: its
//!   verifier finds the CA certificate in the chain the server sent, checks
//!   its SHA-256 against the pin, and verifies the server certificate
//!   against that CA.
//! - An enrolled node trusts exactly its CA and presents its certificate.
//!
//! The GMS's server configuration (`fpn_gms::tls`) shares [`ALPN`],
//! [`IDLE_TIMEOUT`] and [`endpoint`] with these.
//!
//! Every config is built with the ring provider explicitly (see
//! DEPENDENCIES.md: the process-default provider panics with two in the tree).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::ca::{SERVER_NAME, fingerprint};
use crate::{Error, Result};

/// ALPN of the control protocol.
pub const ALPN: &[u8] = b"fpn-gms/1";
/// ALPN of the control protocol with the hosts directory
/// ([`crate::wire::ServerMsg::Hosts`], [`crate::wire::ServerMsg::HostChanged`]).
/// A node offers it before [`ALPN`]; a GMS that knows it chooses it, one
/// that does not chooses [`ALPN`], so either side may be the older one and
/// neither ever sees a message it does not know.
pub const ALPN_V2: &[u8] = b"fpn-gms/2";

/// ALPN of the control protocol with the directory on demand: a listing
/// ([`crate::wire::ClientMsg::DirectoryPage`]) subscribes the node to
/// nothing, it follows only the GEs it asks about and may stop following
/// them ([`crate::wire::ClientMsg::DirectoryForget`]), and it learns
/// whether the listing changed from a digest
/// ([`crate::wire::ClientMsg::DirectoryDigest`]) rather than listing it
/// again (design note 66). Includes everything of [`ALPN_V2`]; offered
/// first, chosen only by a GMS that knows it.
pub const ALPN_V3: &[u8] = b"fpn-gms/3";

/// The ALPN the handshake of `conn` chose.
fn negotiated(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
}

/// True when the handshake of `conn` chose [`ALPN_V2`] or a later version
/// (the session knows the hosts directory).
pub fn negotiated_v2(conn: &quinn::Connection) -> bool {
    negotiated(conn).is_some_and(|p| p == ALPN_V2 || p == ALPN_V3)
}

/// True when the handshake of `conn` chose [`ALPN_V3`] (the directory on demand).
pub fn negotiated_v3(conn: &quinn::Connection) -> bool {
    negotiated(conn).is_some_and(|p| p == ALPN_V3)
}
/// A session with no traffic at all for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Nodes send keep-alives this often, well inside the idle timeout and common NAT timeouts.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The ring crypto provider every fpn TLS configuration is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding exactly the CA certificate `ca_der`.
pub fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| Error::Cert(format!("CA certificate: {e}")))?;
    Ok(Arc::new(roots))
}

/// Client transport settings: keep-alives every `keep_alive`, and give up on
/// a silent GMS after three of them (the server allows [`IDLE_TIMEOUT`]).
fn transport(keep_alive: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let idle = (keep_alive * 3).clamp(Duration::from_secs(1), IDLE_TIMEOUT);
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.keep_alive_interval(Some(keep_alive));
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t
}

/// The client configuration for enrollment: no client certificate, CA pinned by fingerprint.
pub fn enroll_client_config(ca_fingerprint: [u8; 32]) -> Result<quinn::ClientConfig> {
    let prov = provider();
    let verifier = Arc::new(PinnedCa {
        pin: ca_fingerprint,
        provider: prov.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(prov)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    client_config(tls, KEEP_ALIVE)
}

/// The client configuration of an enrolled node: its CA as the only root,
/// its certificate, keep-alives every `keep_alive`.
pub fn session_client_config(
    ca_der: &[u8],
    cert_der: &[u8],
    key_der: &Zeroizing<Vec<u8>>,
    keep_alive: Duration,
) -> Result<quinn::ClientConfig> {
    let prov = provider();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let mut tls = rustls::ClientConfig::builder_with_provider(prov)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_der)?)
        .with_client_auth_cert(vec![CertificateDer::from(cert_der.to_vec())], key)?;
    tls.alpn_protocols = vec![ALPN_V3.to_vec(), ALPN_V2.to_vec(), ALPN.to_vec()];
    client_config(tls, keep_alive)
}

fn client_config(tls: rustls::ClientConfig, keep_alive: Duration) -> Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Cert(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(Arc::new(transport(keep_alive)));
    Ok(cc)
}

/// Socket buffer size asked for on QUIC sockets. A rotation sends one
/// packet to every node at once (and gets an ACK back from each): with the
/// kernel's default 208 KiB receive buffer, thousands of nodes overflow it,
/// the drops become QUIC retransmissions and the fan-out tail grows by
/// seconds. The kernel caps this at `net.core.rmem_max`/`wmem_max`.
pub const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// A QUIC endpoint on a UDP socket bound to `bind` with large buffers;
/// a server when `server` is given.
pub fn endpoint(bind: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint> {
    endpoint_with_config(bind, server, quinn::EndpointConfig::default())
}

/// [`endpoint`] for a server whose stateless-reset key survives its
/// restarts: derived from `secret` (the GMS's server key), so a restarted
/// GMS answers a packet of a connection its previous process had with a
/// stateless reset the node can verify, and the node reconnects at once
/// instead of waiting for its idle timeout (RFC 9000, 10.3: a static key).
pub fn server_endpoint(
    bind: SocketAddr,
    server: quinn::ServerConfig,
    secret: &[u8],
) -> Result<quinn::Endpoint> {
    let derive = |label: &[u8]| {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(label);
        ctx.update(secret);
        ctx.finish()
    };
    let reset = derive(b"fpn-gms stateless reset key v1");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref());
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    // The connection ids carry a check value keyed per endpoint; a fresh key
    // in each process would make the restarted GMS drop the old sessions'
    // packets as invalid before it could reset them.
    let cid = derive(b"fpn-gms connection id key v1");
    let cid_key = u64::from_be_bytes(cid.as_ref()[..8].try_into().unwrap_or_default());
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    endpoint_with_config(bind, Some(server), config)
}

fn endpoint_with_config(
    bind: SocketAddr,
    server: Option<quinn::ServerConfig>,
    config: quinn::EndpointConfig,
) -> Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        // Accept IPv4-mapped peers too when bound to [::].
        let _ = sock.set_only_v6(false);
    }
    // Best effort: a smaller buffer still works, only with more loss under bursts.
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    sock.bind(&bind.into())?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| Error::Config("a QUIC endpoint needs a tokio runtime".into()))?;
    Ok(quinn::Endpoint::new(config, server, sock.into(), runtime)?)
}

/// The name clients put in their ClientHello and check in the server certificate.
pub fn server_name() -> &'static str {
    SERVER_NAME
}

/// Accepts a server whose chain carries the pinned CA and whose certificate that CA signed.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| bool::from(fingerprint(c).ct_eq(&self.pin)))
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not match the fingerprint in the enrollment token".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA certificate: {e}")))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
