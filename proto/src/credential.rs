//! The GE credential: a compact, CA-signed statement "GE info X holds node key K".
//!
//! The GMS issues one to every GE next to its X.509 certificate (which QUIC's
//! mTLS uses); both carry the same Ed25519 node key and are signed by the same
//! CA key. DPRP carries the credential per hop because it is a fifth of the
//! size of the certificate and needs no X.509 parser on the packet path.
//!
//! Binary form (all integers big-endian):
//!
//! ```text
//! version u8 (=1) | serial u64 | not_before u64 | not_after u64 |
//! node_key [32] | GE info (see GeInfo::encode) | ca_signature [64]
//! ```
//!
//! The CA signs `"fpn v1 credential\0"` followed by every byte before the
//! signature. A decoded credential is an [`UnverifiedCredential`] until
//! [`UnverifiedCredential::verify`] checks signature and validity period.

use crate::ge::GeInfo;
use crate::keys::{self, NodeKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::wire::{Reader, Writer};
use crate::{Error, Result};

const VERSION: u8 = 1;
const CONTEXT: &[u8] = b"fpn v1 credential\0";
/// Upper bound of an encoded credential (name and group list at their limits).
pub const MAX_LEN: usize = 1 + 8 * 3 + 32 + (4 + 1 + 1 + 4 + 1 + 63 + 1 + 64 * 4) + 64;

/// A verified credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    /// Serial number, unique per CA; revocations name it.
    pub serial: u64,
    /// Start of validity, unix seconds.
    pub not_before: u64,
    /// End of validity, unix seconds.
    pub not_after: u64,
    /// The GE's Ed25519 public key.
    pub node_key: [u8; PUBLIC_KEY_LEN],
    /// The GE's info as the GMS defined it.
    pub info: GeInfo,
    signature: [u8; SIGNATURE_LEN],
}

/// A credential decoded from untrusted bytes, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedCredential(Credential);

impl Credential {
    /// Issues a credential: the GMS signs `info` and `node_key` with its CA key.
    pub fn issue(
        ca: &NodeKey,
        serial: u64,
        info: GeInfo,
        node_key: [u8; PUBLIC_KEY_LEN],
        not_before: u64,
        not_after: u64,
    ) -> Result<Self> {
        let mut c = Self {
            serial,
            not_before,
            not_after,
            node_key,
            info,
            signature: [0; SIGNATURE_LEN],
        };
        let tbs = c.to_be_signed()?;
        c.signature = ca.sign(&tbs);
        Ok(c)
    }

    /// The binary form.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = self.to_be_signed()?;
        out.drain(..CONTEXT.len());
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Appends the binary form to `w`.
    pub fn encode_into(&self, w: &mut Writer<'_>) -> Result<()> {
        w.bytes(&self.encode()?);
        Ok(())
    }

    fn to_be_signed(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(CONTEXT.len() + 160);
        out.extend_from_slice(CONTEXT);
        let mut w = Writer::new(&mut out);
        w.u8(VERSION);
        w.u64(self.serial);
        w.u64(self.not_before);
        w.u64(self.not_after);
        w.bytes(&self.node_key);
        self.info.encode(&mut w)?;
        Ok(out)
    }

    /// Verifies a signature by this GE's node key.
    pub fn verify_node_signature(&self, msg: &[u8], sig: &[u8], what: &'static str) -> Result<()> {
        keys::verify_signature(&self.node_key, msg, sig, what)
    }
}

impl UnverifiedCredential {
    /// Decodes a whole buffer.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        let c = Self::decode_from(&mut r)?;
        r.finish("credential")?;
        Ok(c)
    }

    /// Decodes from a reader, leaving what follows.
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self> {
        let version = r.u8("credential version")?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                what: "credential",
                version,
            });
        }
        let serial = r.u64("credential serial")?;
        let not_before = r.u64("credential not_before")?;
        let not_after = r.u64("credential not_after")?;
        let node_key = r.array("credential node key")?;
        let info = GeInfo::decode(r)?;
        let signature = r.array("credential signature")?;
        Ok(Self(Credential {
            serial,
            not_before,
            not_after,
            node_key,
            info,
            signature,
        }))
    }

    /// The GE id it claims, for lookups before verification (e.g. a cache).
    pub fn claimed_ge(&self) -> crate::ge::GeId {
        self.0.info.id
    }

    /// Checks the CA signature and the validity period at `now` (unix seconds).
    pub fn verify(self, ca_public: &[u8; PUBLIC_KEY_LEN], now: u64) -> Result<Credential> {
        let c = self.0;
        let tbs = c.to_be_signed()?;
        keys::verify_signature(ca_public, &tbs, &c.signature, "credential")?;
        if now < c.not_before || now > c.not_after {
            return Err(Error::CredentialExpired {
                ge: c.info.id.0,
                now,
                not_before: c.not_before,
                not_after: c.not_after,
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ge::{GeId, GeKind, GroupId, Mode};
    use std::net::Ipv4Addr;

    fn info() -> GeInfo {
        GeInfo {
            id: GeId(3),
            name: "laptop".into(),
            kind: GeKind::Ges,
            mode: Mode::Open,
            groups: [GroupId(1), GroupId(2)].into(),
            overlay: Ipv4Addr::new(100, 64, 0, 3),
        }
    }

    fn issued() -> (NodeKey, Credential) {
        let ca = NodeKey::from_seed(&[1; 32]);
        let node = NodeKey::from_seed(&[2; 32]);
        let c = Credential::issue(&ca, 42, info(), node.public(), 1000, 2000).unwrap();
        (ca, c)
    }

    #[test]
    fn round_trip_and_verify() {
        let (ca, c) = issued();
        let bytes = c.encode().unwrap();
        assert!(bytes.len() <= MAX_LEN);
        let v = UnverifiedCredential::decode(&bytes)
            .unwrap()
            .verify(&ca.public(), 1500)
            .unwrap();
        assert_eq!(v, c);
    }

    #[test]
    fn any_flipped_bit_fails() {
        let (ca, c) = issued();
        let bytes = c.encode().unwrap();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let ok = UnverifiedCredential::decode(&b).and_then(|u| u.verify(&ca.public(), 1500));
            assert!(ok.is_err(), "bit {i} flipped and still verified");
        }
    }

    #[test]
    fn truncations_are_errors() {
        let (_, c) = issued();
        let bytes = c.encode().unwrap();
        for len in 0..bytes.len() {
            assert!(UnverifiedCredential::decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn validity_period_and_foreign_ca() {
        let (ca, c) = issued();
        let bytes = c.encode().unwrap();
        let u = UnverifiedCredential::decode(&bytes).unwrap();
        assert!(matches!(
            u.clone().verify(&ca.public(), 2001),
            Err(Error::CredentialExpired { .. })
        ));
        assert!(matches!(
            u.clone().verify(&ca.public(), 999),
            Err(Error::CredentialExpired { .. })
        ));
        let other = NodeKey::from_seed(&[9; 32]);
        assert_eq!(
            u.verify(&other.public(), 1500),
            Err(Error::BadSignature("credential"))
        );
    }
}
