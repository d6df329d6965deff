//! The GE credential: a compact, CA-signed statement "GE info X holds node key K".
//!
//! The GMS issues one to every GE next to its X.509 certificate (which QUIC's
//! mTLS uses); both carry the same Ed25519 node key and are signed by the same
//! CA key. DPRP carries the credential per hop because it is a fifth of the
//! size of the certificate and needs no X.509 parser on the packet path.
//!
//! A credential also says which addresses the GE may speak for
//! ([`Credential::covers`]): its overlay address, and for a gateway (GEN, GEA)
//! the prefixes of the hosts it protects (a GES: its host's own real
//! addresses, single hosts only). DPRP checks both ends of a flow
//! against it, so a member cannot negotiate a flow under an address it does
//! not own.
//!
//! Binary form (all integers big-endian):
//!
//! ```text
//! version u8 (1 | 2) | serial u64 | not_before u64 | not_after u64 |
//! node_key [32] | GE info (see GeInfo::encode) |
//! [version 2 only: n u8 (1..=16) | n x prefix (see Prefix::encode)] |
//! ca_signature [64]
//! ```
//!
//! Version 1 is a credential without prefixes; version 2 one with at least
//! one (a gateway's). A credential is encoded as version 1 whenever it names
//! no prefix, so every credential a GMS issued before prefixes existed, and
//! every GES credential, keeps its exact bytes and still verifies; a node
//! that only knows version 1 refuses a gateway's version 2 cleanly
//! (`UnsupportedVersion`). The prefixes are strictly ascending and canonical
//! (host bits zero, no `/0`); a GES credential names none or only single
//! hosts (its real addresses).
//!
//! The CA signs `"fpn v1 credential\0"` followed by every byte before the
//! signature (the version byte included, so one version cannot pass for the
//! other). A decoded credential is an [`UnverifiedCredential`] until
//! [`UnverifiedCredential::verify`] checks signature and validity period.

use std::net::{IpAddr, Ipv6Addr};

use crate::error::PrefixError;
use crate::ge::GeInfo;
use crate::keys::{self, NodeKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::overlay6::Overlay6;
use crate::prefix::{self, Prefix};
use crate::wire::{Reader, Writer};
use crate::{Error, Result};

/// The format without prefixes.
const VERSION_PLAIN: u8 = 1;
/// The format with a gateway's prefixes.
const VERSION_PREFIXES: u8 = 2;
const CONTEXT: &[u8] = b"fpn v1 credential\0";
/// The most prefixes one gateway credential may name.
pub const MAX_PREFIXES: usize = 16;
/// Upper bound of an encoded credential (name, group and prefix lists at their limits).
pub const MAX_LEN: usize = 1
    + 8 * 3
    + 32
    + (4 + 1 + 1 + 4 + 1 + 63 + 1 + 64 * 4)
    + (1 + MAX_PREFIXES * prefix::MAX_ENCODED_LEN)
    + 64;

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
    /// The prefixes this GE may speak for besides its overlay address: the
    /// hosts a gateway protects, or a GES's own real addresses (single
    /// hosts). Canonical, strictly ascending, at most [`MAX_PREFIXES`].
    pub prefixes: Vec<Prefix>,
    /// The GE's IPv6 overlay address: not on the wire, derived from the
    /// overlay address and the CA key it verified under ([`Overlay6`]);
    /// unspecified inside an [`UnverifiedCredential`].
    pub overlay6: Ipv6Addr,
    signature: [u8; SIGNATURE_LEN],
}

/// A credential decoded from untrusted bytes, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedCredential(Credential);

impl Credential {
    /// Issues a credential: the GMS signs `info` and `node_key` with its CA
    /// key. It names no prefix: the GE speaks for its overlay address only.
    pub fn issue(
        ca: &NodeKey,
        serial: u64,
        info: GeInfo,
        node_key: [u8; PUBLIC_KEY_LEN],
        not_before: u64,
        not_after: u64,
    ) -> Result<Self> {
        Self::issue_with_prefixes(
            ca,
            serial,
            info,
            Vec::new(),
            node_key,
            not_before,
            not_after,
        )
    }

    /// Issues a credential that also names the prefixes a gateway protects.
    /// They are sorted and deduplicated here; each must be canonical
    /// ([`Prefix::network`]), at most [`MAX_PREFIXES`], and only a gateway
    /// kind may name a subnet; a GES only single hosts, its own real
    /// addresses ([`PrefixError::NotAGateway`]).
    pub fn issue_with_prefixes(
        ca: &NodeKey,
        serial: u64,
        info: GeInfo,
        mut prefixes: Vec<Prefix>,
        node_key: [u8; PUBLIC_KEY_LEN],
        not_before: u64,
        not_after: u64,
    ) -> Result<Self> {
        prefixes.sort_unstable();
        prefixes.dedup();
        let overlay6 = Overlay6::of_ca(&ca.public()).address(info.overlay);
        let mut c = Self {
            serial,
            not_before,
            not_after,
            node_key,
            info,
            prefixes,
            overlay6,
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

    /// True when this GE may speak for `addr`: its overlay address (IPv4 or
    /// IPv6), or an address inside a prefix the credential names. A flow's
    /// end must be covered by the credential of the GE that stands for it.
    pub fn covers(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) if a == self.info.overlay => true,
            IpAddr::V6(a) if a == self.overlay6 && !a.is_unspecified() => true,
            _ => self.prefixes.iter().any(|p| p.contains(addr)),
        }
    }

    fn to_be_signed(&self) -> Result<Vec<u8>> {
        check_prefixes(&self.info, &self.prefixes)?;
        let mut out = Vec::with_capacity(CONTEXT.len() + 160);
        out.extend_from_slice(CONTEXT);
        let mut w = Writer::new(&mut out);
        // Version 1 when there is nothing of version 2 to say: old
        // credentials keep their bytes and old nodes read GES credentials.
        let version = if self.prefixes.is_empty() {
            VERSION_PLAIN
        } else {
            VERSION_PREFIXES
        };
        w.u8(version);
        w.u64(self.serial);
        w.u64(self.not_before);
        w.u64(self.not_after);
        w.bytes(&self.node_key);
        self.info.encode(&mut w)?;
        if version == VERSION_PREFIXES {
            w.u8(self.prefixes.len() as u8);
            for p in &self.prefixes {
                p.encode(&mut w);
            }
        }
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
        if version != VERSION_PLAIN && version != VERSION_PREFIXES {
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
        let mut prefixes = Vec::new();
        if version == VERSION_PREFIXES {
            let n = usize::from(r.u8("prefix count")?);
            // Version 2 with no prefix would be a second encoding of a
            // version 1 credential.
            if n == 0 {
                return Err(Error::invalid(
                    "prefix count",
                    "zero in a version 2 credential",
                ));
            }
            if n > MAX_PREFIXES {
                return Err(PrefixError::TooMany {
                    len: n,
                    max: MAX_PREFIXES,
                }
                .into());
            }
            for _ in 0..n {
                prefixes.push(Prefix::decode(r)?);
            }
            check_prefixes(&info, &prefixes)?;
        }
        let signature = r.array("credential signature")?;
        Ok(Self(Credential {
            serial,
            not_before,
            not_after,
            node_key,
            info,
            prefixes,
            overlay6: Ipv6Addr::UNSPECIFIED,
            signature,
        }))
    }

    /// The binary form again (canonical: the bytes it was decoded from).
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.0.encode()
    }

    /// The GE id it claims, for lookups before verification (e.g. a cache).
    pub fn claimed_ge(&self) -> crate::ge::GeId {
        self.0.info.id
    }

    /// Checks the CA signature and the validity period at `now` (unix seconds).
    pub fn verify(self, ca_public: &[u8; PUBLIC_KEY_LEN], now: u64) -> Result<Credential> {
        let mut c = self.0;
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
        c.overlay6 = Overlay6::of_ca(ca_public).address(c.info.overlay);
        Ok(c)
    }
}

/// The rules a credential's prefix list obeys (issuing and decoding alike).
fn check_prefixes(info: &GeInfo, prefixes: &[Prefix]) -> Result<(), PrefixError> {
    // A GES may name its host's own real addresses (single hosts), so it
    // can protect them in place on the real-address plane; a subnet is
    // what a gateway stands in front of.
    if !info.kind.is_gateway() && prefixes.iter().any(|p| !p.is_host()) {
        return Err(PrefixError::NotAGateway);
    }
    prefix::validate_list(prefixes, MAX_PREFIXES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ge::{GeId, GeKind, GroupId, Mode};
    use crate::prefix::Prefix;
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

    fn gateway() -> (NodeKey, Credential) {
        let ca = NodeKey::from_seed(&[1; 32]);
        let node = NodeKey::from_seed(&[2; 32]);
        let mut i = info();
        i.kind = GeKind::Gen;
        let prefixes = vec![
            "fd00:1::/48".parse().unwrap(),
            "192.168.1.0/24".parse().unwrap(),
        ];
        let c = Credential::issue_with_prefixes(&ca, 43, i, prefixes, node.public(), 1000, 2000)
            .unwrap();
        (ca, c)
    }

    /// The bytes of a version 2 credential up to (not including) the prefix count.
    fn v2_head(c: &Credential) -> Vec<u8> {
        let bytes = c.encode().unwrap();
        let tail = 1 + c.prefixes.len() * 6 + 12 + 64; // count, one v4 and one v6 prefix, signature
        bytes[..bytes.len() - tail].to_vec()
    }

    #[test]
    fn gateway_prefixes_round_trip_sorted_and_covered() {
        let (ca, c) = gateway();
        // Sorted at issue: IPv4 before IPv6.
        assert_eq!(c.prefixes[0].to_string(), "192.168.1.0/24");
        let bytes = c.encode().unwrap();
        assert_eq!(bytes[0], 2);
        assert!(bytes.len() <= MAX_LEN);
        let v = UnverifiedCredential::decode(&bytes)
            .unwrap()
            .verify(&ca.public(), 1500)
            .unwrap();
        assert_eq!(v, c);
        assert!(v.covers("100.64.0.3".parse().unwrap()));
        assert!(v.covers("192.168.1.10".parse().unwrap()));
        assert!(v.covers("fd00:1::99".parse().unwrap()));
        assert!(!v.covers("192.168.2.10".parse().unwrap()));
        assert!(!v.covers("100.64.0.4".parse().unwrap()));
        assert!(!v.covers("203.0.113.5".parse().unwrap()));
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let ok = UnverifiedCredential::decode(&b).and_then(|u| u.verify(&ca.public(), 1500));
            assert!(ok.is_err(), "bit {i} flipped and still verified");
        }
        for len in 0..bytes.len() {
            assert!(UnverifiedCredential::decode(&bytes[..len]).is_err());
        }
        let u = UnverifiedCredential::decode(&bytes).unwrap();
        assert_eq!(u.encode().unwrap(), bytes);
    }

    #[test]
    fn every_decodable_mutation_has_one_encoding() {
        // The fuzz target's property, on stable: every byte of a gateway
        // credential set to a handful of values; whatever decodes re-encodes
        // to the same bytes.
        let (_, c) = gateway();
        let bytes = c.encode().unwrap();
        let mut decoded = 0;
        for i in 0..bytes.len() {
            for v in [0u8, 1, 2, 4, 6, 0x10, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                if let Ok(u) = UnverifiedCredential::decode(&b) {
                    assert_eq!(u.encode().unwrap(), b, "byte {i} = {v}");
                    decoded += 1;
                }
            }
        }
        assert!(decoded > bytes.len());
    }

    #[test]
    fn a_credential_without_prefixes_is_version_1_and_covers_its_overlay_only() {
        let (_, c) = issued();
        let bytes = c.encode().unwrap();
        assert_eq!(bytes[0], 1);
        // The version 1 layout, byte for byte: nothing between GE info and signature.
        let mut info_bytes = Vec::new();
        info().encode(&mut Writer::new(&mut info_bytes)).unwrap();
        assert_eq!(bytes.len(), 1 + 24 + 32 + info_bytes.len() + 64);
        assert!(c.covers("100.64.0.3".parse().unwrap()));
        assert!(!c.covers("100.64.0.4".parse().unwrap()));
        assert!(!c.covers("::1".parse().unwrap()));
    }

    #[test]
    fn a_verified_credential_covers_the_ipv6_overlay_address_of_its_network_only() {
        let ca = NodeKey::from_seed(&[1; 32]);
        let c = Credential::issue(&ca, 7, info(), [9; 32], 1000, 2000).unwrap();
        let net = Overlay6::of_ca(&ca.public());
        let mine = net.address(info().overlay);
        assert_eq!(c.overlay6, mine);
        assert!(c.covers(IpAddr::V6(mine)));
        // Another GE's address in the same network, the same IPv4 address
        // under another CA's prefix.
        assert!(!c.covers(IpAddr::V6(net.address("100.64.0.4".parse().unwrap()))));
        let other = Overlay6::of_ca(&[2; 32]).address(info().overlay);
        assert!(!c.covers(IpAddr::V6(other)));
        // Decoded and not yet verified: nothing IPv6; verified: the same.
        let u = UnverifiedCredential::decode(&c.encode().unwrap()).unwrap();
        assert!(!u.0.covers(IpAddr::V6(mine)));
        assert!(!u.0.covers(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        let v = u.verify(&ca.public(), 1500).unwrap();
        assert_eq!(v, c);
        assert!(v.covers(IpAddr::V6(mine)));
    }

    #[test]
    fn prefixes_are_refused_at_issue_when_malformed_or_not_a_gateway() {
        let ca = NodeKey::from_seed(&[1; 32]);
        let issue = |kind, prefixes: Vec<Prefix>| {
            let mut i = info();
            i.kind = kind;
            Credential::issue_with_prefixes(&ca, 1, i, prefixes, [7; 32], 0, 1)
        };
        let lan: Prefix = "192.168.1.0/24".parse().unwrap();
        assert_eq!(
            issue(GeKind::Ges, vec![lan]).unwrap_err(),
            Error::Prefix(PrefixError::NotAGateway)
        );
        assert!(issue(GeKind::Gea, vec![lan]).is_ok());
        // A GES names its own real address (the real-address plane).
        let real = Prefix::host("198.18.2.2".parse().unwrap());
        assert!(issue(GeKind::Ges, vec![real]).is_ok());
        let lax = Prefix::new("192.168.1.1".parse().unwrap(), 24).unwrap();
        assert_eq!(
            issue(GeKind::Gen, vec![lax]).unwrap_err(),
            Error::Prefix(PrefixError::HostBits)
        );
        let all = Prefix::new("0.0.0.0".parse().unwrap(), 0).unwrap();
        assert_eq!(
            issue(GeKind::Gen, vec![all]).unwrap_err(),
            Error::Prefix(PrefixError::Everything)
        );
        let many: Vec<Prefix> = (0..=MAX_PREFIXES as u8)
            .map(|i| format!("10.{i}.0.0/16").parse().unwrap())
            .collect();
        assert_eq!(
            issue(GeKind::Gen, many).unwrap_err(),
            Error::Prefix(PrefixError::TooMany {
                len: MAX_PREFIXES + 1,
                max: MAX_PREFIXES
            })
        );
        // Duplicates are folded, not refused.
        assert_eq!(issue(GeKind::Gen, vec![lan, lan]).unwrap().prefixes, [lan]);
    }

    #[test]
    fn malformed_prefix_lists_are_refused_at_decode() {
        let (_, c) = gateway();
        let head = v2_head(&c);
        let decode = |body: &[u8]| {
            let mut b = head.clone();
            b.extend_from_slice(body);
            b.extend_from_slice(&[0; 64]);
            UnverifiedCredential::decode(&b)
        };
        let v4 = [4, 24, 192, 168, 1, 0];
        let v4b = [4, 8, 10, 0, 0, 0];
        assert!(decode(&[&[2u8][..], &v4b, &v4].concat()).is_ok());
        assert!(matches!(
            decode(&[0]),
            Err(Error::InvalidField {
                field: "prefix count",
                ..
            })
        ));
        assert_eq!(
            decode(&[&[2u8][..], &v4, &v4b].concat()).unwrap_err(),
            Error::Prefix(PrefixError::NotAscending)
        );
        assert_eq!(
            decode(&[&[2u8][..], &v4, &v4].concat()).unwrap_err(),
            Error::Prefix(PrefixError::NotAscending)
        );
        assert_eq!(
            decode(&[17]).unwrap_err(),
            Error::Prefix(PrefixError::TooMany { len: 17, max: 16 })
        );
        assert_eq!(
            decode(&[1, 4, 24, 192, 168, 1, 1]).unwrap_err(),
            Error::Prefix(PrefixError::HostBits)
        );
        assert_eq!(
            decode(&[1, 9, 24, 192, 168, 1, 0]).unwrap_err(),
            Error::Prefix(PrefixError::Family(9))
        );
        assert_eq!(
            decode(&[1, 4, 0, 0, 0, 0, 0]).unwrap_err(),
            Error::Prefix(PrefixError::Everything)
        );
        // A GES in a version 2 credential: kind code is byte 1+24+32+4.
        let mut ges = head.clone();
        ges[1 + 24 + 32 + 4] = GeKind::Ges.code();
        ges.extend_from_slice(&[1, 4, 24, 192, 168, 1, 0]);
        ges.extend_from_slice(&[0; 64]);
        assert_eq!(
            UnverifiedCredential::decode(&ges).unwrap_err(),
            Error::Prefix(PrefixError::NotAGateway)
        );
        // A version this code does not know.
        let mut v3 = c.encode().unwrap();
        v3[0] = 3;
        assert!(matches!(
            UnverifiedCredential::decode(&v3),
            Err(Error::UnsupportedVersion { version: 3, .. })
        ));
    }
}
