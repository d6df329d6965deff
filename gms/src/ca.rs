//! The GMS's certificate authority.
//!
//! One Ed25519 key signs three kinds of documents: the QUIC server
//! certificate of the GMS, each GE's X.509 certificate (for mTLS) and each
//! GE's compact [`Credential`] (for DPRP). See docs/GMS.md for what a GE
//! certificate holds:
//!
//! - subject CN: the GE name; SAN DNS `<name>.<zone>`; SAN URI `urn:fpn:ge:<id>`;
//! - serial: the GMS serial (shared counter with credentials);
//! - EKU client and server auth (node-to-node QUIC uses both roles).
//!
//! The server never parses certificates it issued: it knows a peer by the
//! SHA-256 fingerprint of its certificate, recorded at issue time.

use fpn_proto::credential::Credential;
use fpn_proto::ge::GeInfo;
use fpn_proto::keys::NodeKey;
use fpn_proto::prefix::Prefix;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SanType, SerialNumber,
};
use zeroize::Zeroizing;

use crate::config::DataDir;
pub use fpn_gms_client::ca::{SERVER_NAME, fingerprint, generate_node_key};

use crate::{Error, Result, fsutil};

/// Sets a certificate time: midnight UTC of the day holding `unix`.
/// Day granularity is all X.509 validity here needs; not-before is issued a
/// day early so a node whose clock lags still accepts it.
macro_rules! set_date {
    ($field:expr, $unix:expr) => {{
        let (y, m, d) = civil_from_unix($unix);
        $field = rcgen::date_time_ymd(y, m, d);
    }};
}

/// Sets a certificate time to the second: node certificates live hours (or,
/// in tests, seconds), so day granularity would expire them at issue.
/// (`OffsetDateTime + std::time::Duration` spares a direct `time` dependency.)
macro_rules! set_time {
    ($field:expr, $unix:expr) => {{
        $field = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs($unix);
    }};
}

/// Common name of the CA certificate.
pub const CA_COMMON_NAME: &str = "fpn GMS CA";
/// Validity of the CA and the server certificate, in days.
const CA_VALIDITY_DAYS: u64 = 20 * 365;

/// The CA: its key and certificate.
pub struct Ca {
    key: KeyPair,
    key_der: Zeroizing<Vec<u8>>,
    signer: NodeKey,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &hex::encode(self.fingerprint()))
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key given as its 32 raw bytes (what a node sends at enrollment).
struct RawEd25519<'a>(&'a [u8; 32]);

impl rcgen::PublicKeyData for RawEd25519<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ED25519
    }
}

impl Ca {
    /// Creates a new CA valid from yesterday for 20 years.
    pub fn generate(now: u64) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let mut params = ca_params();
        set_date!(params.not_before, now.saturating_sub(86_400));
        set_date!(params.not_after, now + CA_VALIDITY_DAYS * 86_400);
        let cert = params.self_signed(&key)?;
        let key_der = Zeroizing::new(key.serialize_der());
        let signer = NodeKey::from_pkcs8(&key_der)?;
        Ok(Self {
            key,
            key_der,
            signer,
            cert_der: cert.der().to_vec(),
        })
    }

    /// Writes `ca.key` (0600, never overwritten) and `ca.crt`.
    pub fn save(&self, dir: &DataDir) -> Result<()> {
        fsutil::write_new(&dir.ca_key(), &self.key_der, 0o600)?;
        Ok(fsutil::write_new(&dir.ca_cert(), &self.cert_der, 0o644)?)
    }

    /// Loads the CA of a data directory.
    pub fn load(dir: &DataDir) -> Result<Self> {
        let key_der = Zeroizing::new(fsutil::read(&dir.ca_key())?);
        let cert_der = fsutil::read(&dir.ca_cert())?;
        let key = KeyPair::try_from(key_der.as_slice())
            .map_err(|e| Error::Cert(format!("{}: {e}", dir.ca_key().display())))?;
        let signer = NodeKey::from_pkcs8(&key_der)?;
        Ok(Self {
            key,
            key_der,
            signer,
            cert_der,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate: what enrollment tokens pin.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert_der)
    }

    /// The CA's Ed25519 public key: what verifies credentials.
    pub fn public_key(&self) -> [u8; 32] {
        self.signer.public()
    }

    /// Issues the GMS's QUIC server certificate: `(cert DER, key PKCS#8 DER)`.
    pub fn issue_server_cert(&self, now: u64) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let mut p = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        p.distinguished_name = dn(SERVER_NAME);
        set_date!(p.not_before, now.saturating_sub(86_400));
        set_date!(p.not_after, now + CA_VALIDITY_DAYS * 86_400);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let params = ca_params();
        let cert = p.signed_by(&key, &Issuer::from_params(&params, &self.key))?;
        Ok((cert.der().to_vec(), Zeroizing::new(key.serialize_der())))
    }

    /// Issues the web admin's HTTPS certificate for `names` (DNS names or IP
    /// addresses): `(cert DER, key PKCS#8 DER)`. Its key is ECDSA P-256,
    /// not Ed25519 like the other certificates, because browsers (Chromium,
    /// Firefox) offer no Ed25519 signature scheme in TLS; the chain is still
    /// signed by the (Ed25519) CA, which a browser does not verify either,
    /// so operators accept it once or configure their own `[web] cert`.
    pub fn issue_web_cert(
        &self,
        names: &[String],
        now: u64,
    ) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::new(names.to_vec())?;
        p.distinguished_name = dn(names.first().map_or("fpn-gms web admin", |n| n.as_str()));
        set_date!(p.not_before, now.saturating_sub(86_400));
        // A year: it is issued again at each start anyway.
        set_date!(p.not_after, now + 365 * 86_400);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let params = ca_params();
        let cert = p.signed_by(&key, &Issuer::from_params(&params, &self.key))?;
        Ok((cert.der().to_vec(), Zeroizing::new(key.serialize_der())))
    }

    /// Issues a relay's QUIC server certificate (SAN `fpn-relay`, the name
    /// nodes check): `(cert DER, key PKCS#8 DER)`. The relay in `fpn-gms
    /// serve` gets a fresh one at each start; `fpn-gms relay-cert` writes
    /// one for a standalone relay. It cannot act as a node (no GE id) nor
    /// as the GMS (another name).
    pub fn issue_relay_cert(&self, now: u64) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
        let name = fpn_relay::SERVER_NAME;
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let mut p = CertificateParams::new(vec![name.to_owned()])?;
        p.distinguished_name = dn(name);
        set_date!(p.not_before, now.saturating_sub(86_400));
        set_date!(p.not_after, now + CA_VALIDITY_DAYS * 86_400);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let params = ca_params();
        let cert = p.signed_by(&key, &Issuer::from_params(&params, &self.key))?;
        Ok((cert.der().to_vec(), Zeroizing::new(key.serialize_der())))
    }

    /// Issues a GE's X.509 certificate for `node_key`.
    pub fn issue_node_cert(&self, req: &NodeCertRequest<'_>) -> Result<Vec<u8>> {
        let dns = format!("{}.{}", req.name, req.zone.trim_end_matches('.'));
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![
            SanType::DnsName(dns.try_into()?),
            SanType::URI(format!("urn:fpn:ge:{}", req.ge_id).try_into()?),
        ];
        p.distinguished_name = dn(req.name);
        p.serial_number = Some(SerialNumber::from(req.serial));
        set_time!(p.not_before, req.not_before);
        set_time!(p.not_after, req.not_after);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let params = ca_params();
        let cert = p.signed_by(
            &RawEd25519(req.node_key),
            &Issuer::from_params(&params, &self.key),
        )?;
        Ok(cert.der().to_vec())
    }

    /// Issues a GE's compact credential (same node key, same CA key),
    /// naming no prefix: the GE speaks for its overlay address only.
    pub fn issue_credential(
        &self,
        serial: u64,
        info: GeInfo,
        node_key: [u8; 32],
        not_before: u64,
        not_after: u64,
    ) -> Result<Credential> {
        self.issue_credential_with_prefixes(
            serial,
            info,
            Vec::new(),
            node_key,
            not_before,
            not_after,
        )
    }

    /// Issues a GE's compact credential naming `prefixes`, the hosts a
    /// gateway protects, so the GE may speak for them in DPRP.
    pub fn issue_credential_with_prefixes(
        &self,
        serial: u64,
        info: GeInfo,
        prefixes: Vec<Prefix>,
        node_key: [u8; 32],
        not_before: u64,
        not_after: u64,
    ) -> Result<Credential> {
        Ok(Credential::issue_with_prefixes(
            &self.signer,
            serial,
            info,
            prefixes,
            node_key,
            not_before,
            not_after,
        )?)
    }
}

/// What goes into a GE certificate.
#[derive(Debug, Clone, Copy)]
pub struct NodeCertRequest<'a> {
    /// The node's Ed25519 public key.
    pub node_key: &'a [u8; 32],
    /// GE id.
    pub ge_id: u32,
    /// GE name.
    pub name: &'a str,
    /// Zone (with or without the trailing dot).
    pub zone: &'a str,
    /// Certificate serial.
    pub serial: u64,
    /// Start of validity, unix seconds.
    pub not_before: u64,
    /// End of validity, unix seconds.
    pub not_after: u64,
}

/// The CA's parameters. The issuer of every certificate is rebuilt from
/// these (rcgen cannot read back a certificate without x509-parser), so they
/// are fixed: the distinguished name must match the stored CA certificate.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(CA_COMMON_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d.push(DnType::OrganizationName, "fpn");
    d
}

/// The proleptic Gregorian date (year, month, day) of a unix time
/// (H. Hinnant's `civil_from_days`).
pub(crate) fn civil_from_unix(unix: u64) -> (i32, u8, u8) {
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpn_proto::credential::UnverifiedCredential;
    use fpn_proto::ge::{GeId, GeKind, Mode};

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29));
        assert_eq!(civil_from_unix(1_704_888_000), (2024, 1, 10));
    }

    #[test]
    fn issues_certificates_and_credentials_under_one_key() {
        let now = 1_704_888_000;
        let ca = Ca::generate(now).unwrap();
        let (_der, public) = generate_node_key().unwrap();
        let cert = ca
            .issue_node_cert(&NodeCertRequest {
                node_key: &public,
                ge_id: 4,
                name: "laptop",
                zone: "home.fpn.",
                serial: 9,
                not_before: now,
                not_after: now + 86_400,
            })
            .unwrap();
        // The raw public key appears in the certificate's SubjectPublicKeyInfo.
        assert!(cert.windows(32).any(|w| w == public));
        assert_ne!(fingerprint(&cert), ca.fingerprint());
        let info = GeInfo {
            id: GeId(4),
            name: "laptop".into(),
            kind: GeKind::Ges,
            mode: Mode::Open,
            groups: Default::default(),
            overlay: std::net::Ipv4Addr::new(100, 64, 0, 4),
        };
        let cred = ca
            .issue_credential(10, info, public, now, now + 10)
            .unwrap();
        UnverifiedCredential::decode(&cred.encode().unwrap())
            .unwrap()
            .verify(&ca.public_key(), now + 1)
            .unwrap();
    }

    #[test]
    fn saved_ca_loads_with_the_same_identity_and_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path());
        let ca = Ca::generate(1_704_888_000).unwrap();
        ca.save(&dd).unwrap();
        assert_eq!(fsutil::mode_of(&dd.ca_key()).unwrap(), 0o600);
        let back = Ca::load(&dd).unwrap();
        assert_eq!(back.fingerprint(), ca.fingerprint());
        assert_eq!(back.public_key(), ca.public_key());
        // Never overwritten.
        assert!(ca.save(&dd).is_err());
    }
}
