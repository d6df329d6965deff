//! Who may talk to this node over QUIC: mutual TLS with the GMS-issued
//! certificates, plus the revocations the GMS pushed.
//!
//! Both ends present their node certificate (Ed25519, issued by the
//! network's CA; see gms/src/ca.rs) and verify the other's chain to that CA.
//! The peer's GE id comes from the certificate's SAN URI `urn:fpn:ge:<id>`
//! and its serial from the certificate serial. A peer is refused during the
//! handshake when its serial or GE was revoked, when it is this node's own
//! GE, and (on outgoing connections) when it is not the GE we meant to reach.
//! The DNS name in the certificate is not used: peers are found by address
//! and named by GE id.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use fpn_proto::ge::GeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls::{SignatureScheme, client::verify_server_cert_signed_by_trust_anchor};

use crate::error::{Error, Result};

/// The name clients put in their ClientHello. Peers are verified by GE id,
/// so this is a constant that says nothing about the peer.
pub(crate) const SERVER_NAME: &str = "fpn-node";
/// The server name of a connection a node opens after it moved: the peer
/// replaces its own connection with it at once (the verifier reads
/// identities from certificates, never names, so this only signals).
pub(crate) const SERVER_NAME_MOVED: &str = "moved.fpn-node";

/// What a verified certificate says about its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCert {
    /// The GE id from `urn:fpn:ge:<id>`.
    pub ge: GeId,
    /// The certificate serial.
    pub serial: u64,
}

/// Reads the GE id and serial of a certificate (the same reading the relay
/// admits nodes by).
pub(crate) fn parse_cert(der: &CertificateDer<'_>) -> Result<PeerCert, &'static str> {
    fpn_relay::tls::parse_node_cert(der.as_ref()).map(|c| PeerCert {
        ge: c.ge,
        serial: c.serial,
    })
}

#[derive(Debug, Default)]
struct Revoked {
    serials: HashSet<u64>,
    ges: HashSet<GeId>,
}

/// The trust shared by every verifier of one carrier: the CA, this node's
/// own GE id and the revocations.
#[derive(Debug)]
pub(crate) struct Trust {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    local: GeId,
    revoked: RwLock<Revoked>,
}

impl Trust {
    /// Records a revoked GE.
    pub(crate) fn revoke_ge(&self, ge: GeId) {
        self.write().ges.insert(ge);
    }

    /// Records revoked serials.
    pub(crate) fn revoke_serials(&self, serials: &[u64]) {
        self.write().serials.extend(serials.iter().copied());
    }

    /// True if `peer` may not talk to this node.
    pub(crate) fn is_refused(&self, peer: &PeerCert) -> bool {
        self.refused_ge(peer.ge) || self.read().serials.contains(&peer.serial)
    }

    /// True if nothing may be sent to `ge`.
    pub(crate) fn refused_ge(&self, ge: GeId) -> bool {
        ge == self.local || self.read().ges.contains(&ge)
    }

    /// Checks a certificate whose chain is already verified; returns its holder.
    fn admit(&self, end_entity: &CertificateDer<'_>) -> Result<PeerCert, rustls::Error> {
        let peer = parse_cert(end_entity).map_err(|reason| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(Error::CarrierTls(reason.into())),
            )))
        })?;
        if self.is_refused(&peer) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(peer)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Revoked> {
        // A poisoned lock only means a panic elsewhere; the sets stay valid.
        self.revoked.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Revoked> {
        self.revoked.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The node's TLS material, and the QUIC configurations built from it.
pub(crate) struct Tls {
    trust: Arc<Trust>,
    /// This node's certificate: short-lived, replaced by each renewal
    /// (connections made before keep the one they were opened with).
    chain: RwLock<Vec<CertificateDer<'static>>>,
    key: PrivateKeyDer<'static>,
    alpn: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("local", &self.trust.local)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Takes the node's identity; fails if its certificate carries no GE id.
    pub(crate) fn new(id: &fpn_gms_client::Identity, alpn: &[u8]) -> Result<Self> {
        let cert = CertificateDer::from(id.cert.clone());
        let local = parse_cert(&cert)
            .map_err(|r| Error::CarrierTls(format!("own certificate: {r}")))?
            .ge;
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(id.ca_cert.clone()))
            .map_err(|e| Error::CarrierTls(format!("CA certificate: {e}")))?;
        Ok(Self {
            trust: Arc::new(Trust {
                roots: Arc::new(roots),
                provider: Arc::new(rustls::crypto::ring::default_provider()),
                local,
                revoked: RwLock::default(),
            }),
            chain: RwLock::new(vec![cert]),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_pkcs8().to_vec())),
            alpn: alpn.to_vec(),
        })
    }

    /// Presents `der` (a renewed certificate of this node) from now on. It
    /// must name this node's GE; the key is the same.
    pub(crate) fn set_cert(&self, der: &[u8]) -> Result<()> {
        let cert = CertificateDer::from(der.to_vec());
        let ge = parse_cert(&cert)
            .map_err(|r| Error::CarrierTls(format!("renewed certificate: {r}")))?
            .ge;
        if ge != self.trust.local {
            return Err(Error::CarrierTls(format!(
                "renewed certificate names GE {ge}, not this node's {}",
                self.trust.local
            )));
        }
        *self.chain.write().unwrap_or_else(|e| e.into_inner()) = vec![cert];
        Ok(())
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This node's GE id (from its own certificate).
    pub(crate) fn local(&self) -> GeId {
        self.trust.local
    }

    /// The shared trust (revocations).
    pub(crate) fn trust(&self) -> &Arc<Trust> {
        &self.trust
    }

    /// The server side: a client certificate chained to the CA is required.
    pub(crate) fn server_crypto(&self) -> Result<Arc<QuicServerConfig>> {
        let inner = WebPkiClientVerifier::builder_with_provider(
            self.trust.roots.clone(),
            self.trust.provider.clone(),
        )
        .build()
        .map_err(|e| Error::CarrierTls(format!("client verifier: {e}")))?;
        let verifier = Arc::new(ClientVerifier {
            trust: self.trust.clone(),
            inner,
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(self.trust.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain(), self.key.clone_key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![self.alpn.clone()];
        let crypto =
            QuicServerConfig::try_from(tls).map_err(|e| Error::CarrierTls(e.to_string()))?;
        Ok(Arc::new(crypto))
    }

    /// The client side of a connection meant for `expected`: the server
    /// must present a certificate of exactly that GE.
    pub(crate) fn client_crypto(&self, expected: GeId) -> Result<Arc<QuicClientConfig>> {
        let verifier = Arc::new(ServerVerifier {
            trust: self.trust.clone(),
            expected,
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(self.trust.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain(), self.key.clone_key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![self.alpn.clone()];
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| Error::CarrierTls(e.to_string()))?;
        Ok(Arc::new(crypto))
    }
}

fn tls_err(e: rustls::Error) -> Error {
    Error::CarrierTls(e.to_string())
}

/// Verifies a server: chain to the CA (the DNS name is ignored), then the
/// revocations and the expected GE id.
#[derive(Debug)]
struct ServerVerifier {
    trust: Arc<Trust>,
    expected: GeId,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.trust.roots,
            intermediates,
            now,
            self.trust.provider.signature_verification_algorithms.all,
        )?;
        let peer = self.trust.admit(end_entity)?;
        if peer.ge != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.trust.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.trust.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies a client: rustls's WebPKI verifier for the chain, then the revocations.
#[derive(Debug)]
struct ClientVerifier {
    trust: Arc<Trust>,
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.trust.admit(end_entity)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The holder of the certificate a connection's peer presented (already
/// verified during the handshake).
pub(crate) fn peer_of(conn: &quinn::Connection) -> Option<PeerCert> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    parse_cert(chain.first()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_certificate() {
        for bytes in [&[][..], &[0x30, 0x03, 1, 2, 3], &[0xff; 64]] {
            assert!(parse_cert(&CertificateDer::from(bytes.to_vec())).is_err());
        }
    }
}
