//! The records the GMS stores, and their encodings.
//!
//! Records are JSON documents (readable with any sled tool when debugging),
//! except group keys, which are a fixed binary layout so key bytes never pass
//! through a text encoder. Keys of the trees are big-endian integers or names,
//! so a tree scan returns records in a stable order.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use fpn_proto::ge::{GeId, GeInfo, GeKind, GroupId, Mode};
use fpn_proto::keys::{GroupKey, KEY_LEN, KeyVersion};
use fpn_proto::prefix::Prefix;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Version of the store layout this build writes and reads. 2: the values
/// of the secret trees are sealed under the store key
/// ([`crate::store::SealedStore`]); a schema-1 store is migrated on open.
pub const SCHEMA_VERSION: u32 = 2;
/// Key of the schema version in [`crate::store::Tree::Meta`].
pub const META_SCHEMA: &[u8] = b"schema";
/// Key of the [`Counters`] in [`crate::store::Tree::Meta`].
pub const META_COUNTERS: &[u8] = b"counters";

/// A GE as the administrator defined it, plus its enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeRecord {
    /// Numeric identity, never reused.
    pub id: u32,
    /// DNS label under the zone.
    pub name: String,
    /// GES, GEN or GEA.
    #[serde(with = "as_str")]
    pub kind: GeKind,
    /// OP or CL.
    #[serde(with = "as_str")]
    pub mode: Mode,
    /// Group numbers.
    pub groups: BTreeSet<u32>,
    /// Assigned overlay address.
    pub overlay: Ipv4Addr,
    /// The prefixes a gateway (GEN, GEA) protects: its credential names
    /// them, so it may speak for the hosts there in DPRP. Empty for a GES.
    /// Records written before this field existed load with none.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "prefix_list")]
    pub protect: Vec<Prefix>,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Set when the GE was revoked; a revoked GE gets no keys and no session.
    pub revoked_at: Option<u64>,
    /// Set once the GE has enrolled.
    pub enrollment: Option<Enrollment>,
}

/// What enrollment gave a GE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The node's Ed25519 public key, hex.
    pub node_key: String,
    /// Serial of its X.509 certificate.
    pub cert_serial: u64,
    /// SHA-256 of the certificate DER, hex.
    pub cert_fingerprint: String,
    /// End of the certificate's validity, unix seconds.
    pub cert_not_after: u64,
    /// Serial of its current credential.
    pub credential_serial: u64,
    /// The current credential, hex of its binary form.
    pub credential: String,
    /// Time of enrollment, unix seconds.
    pub enrolled_at: u64,
    /// End of the current credential's validity when it differs from the
    /// certificate's (a `ge set` re-issued it), unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_not_after: Option<u64>,
    /// Time of the last renewal over the session, unix seconds (`None`:
    /// never renewed since enrollment). Records written before renewal
    /// existed load with none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<u64>,
    /// Earlier certificates and credentials of this enrollment, replaced by
    /// a renewal but not yet expired. They stay valid (a node that crashed
    /// before saving its renewal still holds them), so revoking the GE or
    /// enrolling it again must revoke them too. Pruned at each renewal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierIssue>,
}

/// A certificate or credential that a renewal replaced before it expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierIssue {
    /// Its serial.
    pub serial: u64,
    /// Certificate or credential.
    pub item: RevokedItem,
    /// A certificate's SHA-256 (hex): its session admission record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// End of its validity, unix seconds.
    pub not_after: u64,
}

impl Enrollment {
    /// Every serial of this enrollment still valid at `now` (the current
    /// certificate and credential, and earlier ones not yet expired), with
    /// the certificate fingerprints: what a revocation must name.
    pub fn live_issues(&self, now: u64) -> Vec<EarlierIssue> {
        let mut v = vec![
            EarlierIssue {
                serial: self.cert_serial,
                item: RevokedItem::Certificate,
                fingerprint: Some(self.cert_fingerprint.clone()),
                not_after: self.cert_not_after,
            },
            EarlierIssue {
                serial: self.credential_serial,
                item: RevokedItem::Credential,
                fingerprint: None,
                not_after: self.credential_not_after.unwrap_or(self.cert_not_after),
            },
        ];
        v.extend(self.earlier.iter().filter(|e| e.not_after >= now).cloned());
        v
    }
}

impl GeRecord {
    /// The GE info carried in credentials and pushed to the node.
    pub fn info(&self) -> GeInfo {
        GeInfo {
            id: GeId(self.id),
            name: self.name.clone(),
            kind: self.kind,
            mode: self.mode,
            groups: self.groups.iter().map(|g| GroupId(*g)).collect(),
            overlay: self.overlay,
        }
    }

    /// True when the GE may hold keys and sessions.
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// A host behind a gateway: a machine on the gateway's LAN that runs no fpn
/// software (a NAS, a printer). Its name shares the zone with the GEs; the
/// DDNS publishes it with the gateway's public address (A/AAAA) and its LAN
/// addresses (LIP), and the nodes learn it from the directory so they can
/// reach it through the gateway (NAT-f).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// DNS label under the zone (no GE and no other host has it).
    pub name: String,
    /// Id of the gateway GE (kind gen or gea) that answers for it. By id,
    /// not name, so a gateway removed and added again under the same name
    /// does not inherit hosts.
    pub via: u32,
    /// Its addresses on the gateway's LAN, each inside one of the
    /// gateway's protected prefixes; at least one.
    pub lan: Vec<IpAddr>,
    /// Groups whose members may reach it: a subset of the gateway's groups
    /// (the gateway negotiates for it with its own group keys).
    pub groups: BTreeSet<u32>,
    /// Creation time, unix seconds.
    pub created_at: u64,
}

/// A group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Group number.
    pub num: u32,
    /// Human name.
    pub name: String,
    /// Creation time, unix seconds.
    pub created_at: u64,
}

/// One version of a group key.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// The version.
    pub version: KeyVersion,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// `None` for the current version; the end of the grace period for the previous one.
    pub expires_at: Option<u64>,
    /// The key.
    pub key: GroupKey,
}

const KEY_RECORD_LEN: usize = 8 + 8 + KEY_LEN;

impl KeyRecord {
    /// The tree key: group then version, both big-endian.
    pub fn tree_key(group: GroupId, version: KeyVersion) -> Vec<u8> {
        let mut k = group.0.to_be_bytes().to_vec();
        k.extend_from_slice(&version.0.to_be_bytes());
        k
    }

    /// Parses a tree key.
    pub fn parse_tree_key(k: &[u8]) -> Result<(GroupId, KeyVersion)> {
        let k: [u8; 8] = k.try_into().map_err(|_| Error::Corrupt {
            tree: "keys",
            reason: "key is not 8 bytes".into(),
        })?;
        Ok((
            GroupId(u32::from_be_bytes([k[0], k[1], k[2], k[3]])),
            KeyVersion(u32::from_be_bytes([k[4], k[5], k[6], k[7]])),
        ))
    }

    /// Binary value: `created_at u64 | expires_at u64 (0 = current) | key [32]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(KEY_RECORD_LEN);
        v.extend_from_slice(&self.created_at.to_be_bytes());
        v.extend_from_slice(&self.expires_at.unwrap_or(0).to_be_bytes());
        v.extend_from_slice(self.key.expose_secret());
        v
    }

    /// Reads the binary value.
    pub fn decode(version: KeyVersion, v: &[u8]) -> Result<Self> {
        if v.len() != KEY_RECORD_LEN {
            return Err(Error::Corrupt {
                tree: "keys",
                reason: format!("value is {} bytes, expected {KEY_RECORD_LEN}", v.len()),
            });
        }
        let created_at = u64::from_be_bytes(v[0..8].try_into().unwrap_or_default());
        let expires = u64::from_be_bytes(v[8..16].try_into().unwrap_or_default());
        Ok(Self {
            version,
            created_at,
            expires_at: (expires != 0).then_some(expires),
            key: GroupKey::from_slice(&v[16..])?,
        })
    }
}

/// State of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    /// The GE's current certificate.
    Active,
    /// Replaced by a re-enrollment.
    Superseded,
    /// Revoked (GE revoked or removed).
    Revoked,
}

/// An issued certificate, keyed by its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// The GE it names.
    pub ge_id: u32,
    /// The GE's name at issue time.
    pub ge_name: String,
    /// Certificate serial.
    pub serial: u64,
    /// Issue time, unix seconds.
    pub issued_at: u64,
    /// End of validity, unix seconds.
    pub not_after: u64,
    /// Whether it may still open sessions.
    pub status: CertStatus,
}

/// An enrollment token; the secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The GE it enrolls.
    pub ge_name: String,
    /// That GE's id (a token dies with its GE even if the name is reused).
    pub ge_id: u32,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// The token is refused from this time on, unix seconds.
    pub expires_at: u64,
    /// Set when the token was used.
    pub used_at: Option<u64>,
}

/// What a revocation entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokedItem {
    /// An X.509 certificate.
    Certificate,
    /// A compact DPRP credential.
    Credential,
}

/// A revoked serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// The serial.
    pub serial: u64,
    /// Certificate or credential.
    pub item: RevokedItem,
    /// The GE it belonged to.
    pub ge_id: u32,
    /// That GE's name.
    pub ge_name: String,
    /// Why ("revoked", "removed", "superseded", "re-enrolled").
    pub reason: String,
    /// Time of revocation, unix seconds.
    pub at: u64,
    /// The item's own end of validity; after it the entry can be pruned.
    pub not_after: u64,
}

/// Monotonic counters; none of them ever goes back, so ids and serials are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Next GE id.
    pub next_ge_id: u32,
    /// Next certificate or credential serial.
    pub next_serial: u64,
    /// Next overlay host index to try.
    pub next_overlay: u32,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            next_ge_id: 1,
            next_serial: 1,
            next_overlay: 1,
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Time, unix seconds.
    pub at: u64,
    /// What was done, e.g. `ge add laptop kind=ges mode=op groups=1`.
    pub action: String,
    /// Who did it: `cli uid=0` (the admin socket), `web:NAME` (the web
    /// admin), or `gms` (the server itself: schedule, enrollment). Empty in
    /// entries written before this field existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub who: String,
}

/// Encodes a JSON record.
pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

/// Decodes a JSON record from `tree`.
pub fn from_json<T: for<'de> Deserialize<'de>>(tree: &'static str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| Error::Corrupt {
        tree,
        reason: e.to_string(),
    })
}

/// serde through `Display`/`FromStr` (GE kind, mode, ranges, schedules).
pub mod as_str {
    use super::*;

    /// Serializes with `Display`.
    pub fn serialize<T: fmt::Display, S: serde::Serializer>(
        v: &T,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Deserializes with `FromStr`.
    pub fn deserialize<'de, T, D>(d: D) -> std::result::Result<T, D::Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
        D: serde::Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde for a prefix list as strings (`["192.168.1.0/24"]`), parsed strictly.
pub mod prefix_list {
    use super::*;

    /// Serializes each prefix with `Display`.
    pub fn serialize<S: serde::Serializer>(
        v: &[Prefix],
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(ToString::to_string))
    }

    /// Deserializes each prefix with `FromStr`.
    pub fn deserialize<'de, D>(d: D) -> std::result::Result<Vec<Prefix>, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_record_round_trips_and_checks_length() {
        let r = KeyRecord {
            version: KeyVersion(3),
            created_at: 10,
            expires_at: Some(20),
            key: GroupKey::from_bytes([7; 32]),
        };
        let back = KeyRecord::decode(KeyVersion(3), &r.encode()).unwrap();
        assert_eq!(back.expires_at, Some(20));
        assert!(back.key.ct_eq(&r.key));
        assert!(KeyRecord::decode(KeyVersion(3), &r.encode()[..40]).is_err());
        let k = KeyRecord::tree_key(GroupId(2), KeyVersion(5));
        assert_eq!(
            KeyRecord::parse_tree_key(&k).unwrap(),
            (GroupId(2), KeyVersion(5))
        );
    }

    #[test]
    fn ge_record_json_uses_readable_kind_and_mode() {
        let r = GeRecord {
            id: 1,
            name: "a".into(),
            kind: GeKind::Gea,
            mode: Mode::Closed,
            groups: [2, 3].into(),
            overlay: Ipv4Addr::new(100, 64, 0, 1),
            protect: Vec::new(),
            created_at: 0,
            revoked_at: None,
            enrollment: None,
        };
        let j = String::from_utf8(to_json(&r)).unwrap();
        assert!(
            j.contains("\"kind\":\"gea\"") && j.contains("\"mode\":\"cl\""),
            "{j}"
        );
        // No prefix, no field: the record reads as before prefixes existed.
        assert!(!j.contains("protect"), "{j}");
        assert_eq!(from_json::<GeRecord>("ges", j.as_bytes()).unwrap(), r);
        let mut g = r.clone();
        g.protect = vec![
            "192.168.1.0/24".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ];
        let j = String::from_utf8(to_json(&g)).unwrap();
        assert!(
            j.contains("\"protect\":[\"192.168.1.0/24\",\"fd00::/64\"]"),
            "{j}"
        );
        assert_eq!(from_json::<GeRecord>("ges", j.as_bytes()).unwrap(), g);
        // A stored prefix that no longer parses is a corrupt record, not a panic.
        let bad = j.replace("192.168.1.0/24", "192.168.1.1/24");
        assert!(from_json::<GeRecord>("ges", bad.as_bytes()).is_err());
    }
}
