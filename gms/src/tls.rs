//! rustls and quinn configurations of the GMS server.
//!
//! The server presents `server.crt` (SAN `fpn-gms`) followed by the CA
//! certificate, and asks for a client certificate without requiring one: a
//! connection without one may only enroll; one with a certificate must chain
//! to the CA (rustls checks that) and is then admitted by fingerprint
//! ([`crate::core::Core::authorize`]), which refuses revoked and superseded
//! certificates.
//!
//! Node certificates are short-lived and renewed over the session. A node
//! that was offline past its certificate's expiry may still connect (to
//! renew) for `expired_reconnect_grace`: [`RenewingClientVerifier`] checks
//! the chain and signature as of the certificate's own expiry, and
//! `authorize` decides by the certificate's record (not revoked, not
//! superseded, grace not over).
//!
//! The client side (enrollment with a pinned CA, enrolled sessions) and the
//! shared socket helper live in [`fpn_gms_client::tls`], re-exported here.

use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::UnixTime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use zeroize::Zeroizing;

pub use fpn_gms_client::tls::{
    ALPN, ALPN_V2, ALPN_V3, IDLE_TIMEOUT, KEEP_ALIVE, UDP_BUFFER, endpoint, enroll_client_config,
    provider, roots, server_name, session_client_config,
};

use crate::ca::fingerprint;
use crate::{Error, Result};

/// The QUIC server configuration of the GMS.
pub fn server_config(
    ca_der: &[u8],
    cert_der: &[u8],
    key_der: &Zeroizing<Vec<u8>>,
    expired_grace_secs: u64,
) -> Result<quinn::ServerConfig> {
    // Preferred first: a node that offers the directory on demand (or the
    // hosts directory) gets it.
    server_config_with_alpn(
        ca_der,
        cert_der,
        key_der,
        expired_grace_secs,
        vec![ALPN_V3.to_vec(), ALPN_V2.to_vec(), ALPN.to_vec()],
    )
}

/// [`server_config`] with the ALPN list `alpn` (a test plays an older GMS
/// with `ALPN` alone).
fn server_config_with_alpn(
    ca_der: &[u8],
    cert_der: &[u8],
    key_der: &Zeroizing<Vec<u8>>,
    expired_grace_secs: u64,
    alpn: Vec<Vec<u8>>,
) -> Result<quinn::ServerConfig> {
    let prov = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, prov.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Cert(format!("client verifier: {e}")))?;
    let verifier = Arc::new(RenewingClientVerifier {
        inner,
        grace: expired_grace_secs,
    });
    let chain = vec![
        CertificateDer::from(cert_der.to_vec()),
        CertificateDer::from(ca_der.to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let mut tls = rustls::ServerConfig::builder_with_provider(prov)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = alpn;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::Cert(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(Arc::new(transport()));
    Ok(sc)
}

/// The WebPKI client verifier, except that a certificate expired less than
/// `grace` seconds ago is verified as of its expiry: an unrevoked node back
/// from a long absence may open a session and renew. Revocation and the
/// exact bound are [`crate::core::Core::authorize`]'s (by fingerprint).
#[derive(Debug)]
pub struct RenewingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    grace: u64,
}

impl ClientCertVerifier for RenewingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                time,
                not_after,
            })) if time.as_secs().saturating_sub(not_after.as_secs()) <= self.grace => {
                // Everything but the clock is checked again, at the last
                // second the certificate was valid.
                self.inner
                    .verify_client_cert(end_entity, intermediates, not_after)
            }
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// SHA-256 of the certificate the peer of `conn` presented, if any.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.first().map(|c| fingerprint(c))
}

/// Server transport settings.
fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    // One stream per connection is all the protocol uses (enrollment or
    // session); a second gives room to refuse a misbehaving client cleanly.
    t.max_concurrent_bidi_streams(2u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Small windows: control messages are small, and memory per node counts.
    t.stream_receive_window((256u32 * 1024 + 1024).into());
    t.receive_window((512u32 * 1024).into());
    t.send_window(512 * 1024);
    t.datagram_receive_buffer_size(None);
    t
}

#[cfg(test)]
mod alpn_tests {
    use super::*;
    use crate::ca::{Ca, NodeCertRequest};
    use fpn_gms_client::tls::{negotiated_v2, negotiated_v3};

    /// The version each side saw chosen: 1, 2 or 3.
    fn version(c: &quinn::Connection) -> u8 {
        match (negotiated_v2(c), negotiated_v3(c)) {
            (_, true) => 3,
            (true, false) => 2,
            (false, false) => 1,
        }
    }

    /// Connects `client` to a server with `server` and returns the
    /// version each side saw chosen (client, server).
    async fn handshake(server: quinn::ServerConfig, client: quinn::ClientConfig) -> (u8, u8) {
        let srv = endpoint("127.0.0.1:0".parse().unwrap(), Some(server)).unwrap();
        let addr = srv.local_addr().unwrap();
        let cli = endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let accept = tokio::spawn(async move {
            let c = srv.accept().await.unwrap().await.unwrap();
            version(&c)
        });
        let c = cli
            .connect_with(client, addr, server_name())
            .unwrap()
            .await
            .unwrap();
        let v = version(&c);
        (v, accept.await.unwrap())
    }

    /// Both sides agree on `fpn-gms/3` (or `/2`) only when both know it: a
    /// node older than hosts (it offers `fpn-gms/1` alone) and a GMS older
    /// than hosts (it knows `fpn-gms/1` alone) each still connect, on `/1`;
    /// a GMS older than the directory on demand serves a new node on `/2`.
    #[tokio::test]
    async fn the_newest_version_both_sides_know_is_chosen() {
        let now = crate::now_unix();
        let ca = Ca::generate(now).unwrap();
        let (cert, key) = ca.issue_server_cert(now).unwrap();
        let (node_key, public) = fpn_gms_client::ca::generate_node_key().unwrap();
        let node_cert = ca
            .issue_node_cert(&NodeCertRequest {
                node_key: &public,
                ge_id: 1,
                name: "laptop",
                zone: "t.fpn",
                serial: 7,
                not_before: now - 60,
                not_after: now + 3600,
            })
            .unwrap();
        let new_node = || {
            session_client_config(
                ca.cert_der(),
                &node_cert,
                &node_key,
                std::time::Duration::from_secs(1),
            )
            .unwrap()
        };
        // An older node: its ALPN list was `fpn-gms/1` alone, as the
        // enrollment client's still is.
        let old_node = || enroll_client_config(ca.fingerprint()).unwrap();
        let new_gms = || server_config(ca.cert_der(), &cert, &key, 0).unwrap();
        let old_gms =
            || server_config_with_alpn(ca.cert_der(), &cert, &key, 0, vec![ALPN.to_vec()]).unwrap();
        let v2_gms = || {
            let alpn = vec![ALPN_V2.to_vec(), ALPN.to_vec()];
            server_config_with_alpn(ca.cert_der(), &cert, &key, 0, alpn).unwrap()
        };
        assert_eq!(handshake(new_gms(), new_node()).await, (3, 3));
        assert_eq!(handshake(v2_gms(), new_node()).await, (2, 2));
        assert_eq!(handshake(new_gms(), old_node()).await, (1, 1));
        assert_eq!(handshake(old_gms(), new_node()).await, (1, 1));
    }
}
