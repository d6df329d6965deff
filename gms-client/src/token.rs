//! One-time enrollment tokens.
//!
//! A token is the text `fpn1:` followed by base64url (no padding) of:
//!
//! ```text
//! version u8 (=1) | gms address: len u8 + UTF-8 "host:port" |
//! CA fingerprint [32] (SHA-256 of the CA certificate DER) |
//! token id [16] | secret [32]
//! ```
//!
//! The node dials the address, accepts only a server whose chain ends in the
//! pinned CA, and sends id and secret over that channel. The GMS stores the id
//! with SHA-256 of the secret (never the secret), the GE it enrolls, its
//! expiry and whether it was used; it compares hashes in constant time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use fpn_proto::wire::{Reader, Writer};

use crate::{Error, Result};

const PREFIX: &str = "fpn1:";
const VERSION: u8 = 1;
/// Longest GMS address a token carries.
pub const MAX_ADDR_LEN: usize = 255;

/// A parsed enrollment token.
#[derive(Clone)]
pub struct Token {
    /// `host:port` of the GMS.
    pub gms_addr: String,
    /// SHA-256 of the CA certificate the GMS must present.
    pub ca_fingerprint: [u8; 32],
    /// Public id of the token (the store's key).
    pub id: [u8; 16],
    /// The secret that proves the token.
    pub secret: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("gms_addr", &self.gms_addr)
            .field("id", &hex::encode(self.id))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Token {
    /// A new token with a random id and secret.
    pub fn generate(gms_addr: &str, ca_fingerprint: [u8; 32]) -> Result<Self> {
        if gms_addr.is_empty() || gms_addr.len() > MAX_ADDR_LEN {
            return Err(Error::TokenFormat("GMS address must be 1 to 255 bytes"));
        }
        Ok(Self {
            gms_addr: gms_addr.to_owned(),
            ca_fingerprint,
            id: crate::random()?,
            secret: Zeroizing::new(crate::random()?),
        })
    }

    /// The token text.
    pub fn encode(&self) -> String {
        let mut v = Zeroizing::new(Vec::with_capacity(1 + 1 + self.gms_addr.len() + 80));
        let mut w = Writer::new(&mut v);
        w.u8(VERSION);
        // The length was checked when the token was made or parsed.
        let _ = w.short_bytes(self.gms_addr.as_bytes(), MAX_ADDR_LEN, "GMS address");
        w.bytes(&self.ca_fingerprint);
        w.bytes(&self.id);
        w.bytes(self.secret.as_ref());
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(v.as_slice()))
    }

    /// Parses token text (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<Self> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(Error::TokenFormat("it does not start with fpn1:"))?;
        if body.len() > 1024 {
            return Err(Error::TokenFormat("it is too long"));
        }
        let raw = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(body)
                .map_err(|_| Error::TokenFormat("it is not base64url"))?,
        );
        let bad = |_| Error::TokenFormat("it is truncated or malformed");
        let mut r = Reader::new(&raw);
        if r.u8("version").map_err(bad)? != VERSION {
            return Err(Error::TokenFormat("unsupported token version"));
        }
        let addr = r.short_bytes(MAX_ADDR_LEN, "address").map_err(bad)?;
        let gms_addr = std::str::from_utf8(addr)
            .map_err(|_| Error::TokenFormat("the GMS address is not UTF-8"))?
            .to_owned();
        if gms_addr.is_empty() {
            return Err(Error::TokenFormat("the GMS address is empty"));
        }
        let ca_fingerprint = r.array("fingerprint").map_err(bad)?;
        let id = r.array("id").map_err(bad)?;
        let secret = Zeroizing::new(r.array("secret").map_err(bad)?);
        r.finish("token")
            .map_err(|_| Error::TokenFormat("it has trailing bytes"))?;
        Ok(Self {
            gms_addr,
            ca_fingerprint,
            id,
            secret,
        })
    }

    /// SHA-256 of the secret: what the store keeps.
    pub fn secret_hash(&self) -> [u8; 32] {
        hash_secret(&self.secret)
    }
}

/// SHA-256 of a token secret.
pub fn hash_secret(secret: &[u8; 32]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// True when `secret` hashes to `stored_hash_hex`; the comparison is constant time.
pub fn secret_matches(secret: &[u8; 32], stored_hash_hex: &str) -> bool {
    let Ok(stored) = hex::decode(stored_hash_hex) else {
        return false;
    };
    hash_secret(secret).ct_eq(stored.as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_debug_hides_the_secret() {
        let t = Token::generate("198.18.0.1:4433", [3; 32]).unwrap();
        let text = t.encode();
        assert!(text.starts_with("fpn1:"));
        let back = Token::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(back.gms_addr, t.gms_addr);
        assert_eq!(back.ca_fingerprint, t.ca_fingerprint);
        assert_eq!(back.id, t.id);
        assert_eq!(*back.secret, *t.secret);
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&hex::encode(*t.secret)), "{dbg}");
        assert!(secret_matches(&t.secret, &hex::encode(t.secret_hash())));
        assert!(!secret_matches(&[0; 32], &hex::encode(t.secret_hash())));
        assert!(!secret_matches(&t.secret, "not hex"));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let text = Token::generate("gms.example:4433", [3; 32])
            .unwrap()
            .encode();
        assert!(Token::parse("fpn2:abc").is_err());
        assert!(Token::parse("fpn1:!!!").is_err());
        assert!(Token::parse(&text[..text.len() - 4]).is_err());
        assert!(Token::parse(&format!("{text}AAAA")).is_err());
        assert!(Token::parse(&format!("fpn1:{}", "A".repeat(5000))).is_err());
        assert!(Token::generate("", [0; 32]).is_err());
    }
}
