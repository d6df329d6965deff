//! The DPRP transcript hashes and the authenticators computed over them.
//!
//! Every hash is SHA-256 over a label and length-prefixed items, chained so
//! that each authenticator covers everything before it:
//!
//! ```text
//! H0  = H("fpn v1 dprp dde"  | DDE core)                  initiator, gateways, responder
//! C_R = H("fpn v1 dprp rgi"  | H0 | RGI core)             RGI core = header, echo, responder part
//! C_k = H("fpn v1 dprp hop"  | C_{k-1} | A_{k-1} | credential_k)   gateway k (k = 1.. from the responder)
//! T_M = H("fpn v1 dprp mpit" | C_R | A_R | MPIT core)     traffic keys use T_M
//! T_C = H("fpn v1 dprp cdn"  | T_M | CDN core)
//! ```
//!
//! `A_R` is the responder's proof and tag, `A_k` gateway k's signature. A
//! message's authenticators are not hashed into the next step (T_C does not
//! cover the MPIT's tag): what a hash binds is the authenticated content, so
//! a copy whose authenticator was mangled on the way cannot split the
//! transcript of the GEs that saw it from the others'. The ends MAC with
//! a [`PairKey`]; gateways, and ends talking to gateways, sign with their
//! node keys (labels below), because a gateway cannot check a pairwise MAC.

use ring::{digest, hkdf, hmac};

use crate::keys::{MAC_LEN, NodeKey, PUBLIC_KEY_LEN};
use crate::{Error, Result};

/// A 32-byte transcript hash.
pub type Hash = [u8; 32];

/// Label of the responder's pairwise tag (RGI).
pub const RGI_TAG: &[u8] = b"fpn v1 dprp rgi tag\0";
/// Label of the initiator's pairwise tag (MPIT).
pub const MPIT_TAG: &[u8] = b"fpn v1 dprp mpit tag\0";
/// Label of the responder's pairwise tag (CDN).
pub const CDN_TAG: &[u8] = b"fpn v1 dprp cdn tag\0";
/// Signature context of a gateway's RGI hop.
pub const HOP_SIG: &[u8] = b"fpn v1 dprp hop sig\0";
/// Signature context of the initiator's MPIT (when gateways are on the path).
pub const MPIT_SIG: &[u8] = b"fpn v1 dprp mpit sig\0";
/// Signature context of the responder's CDN (when gateways are on the path).
pub const CDN_SIG: &[u8] = b"fpn v1 dprp cdn sig\0";
/// Signature context of a NAK.
pub const NAK_SIG: &[u8] = b"fpn v1 dprp nak sig\0";
/// Label of a FOP's tag under its pair epoch's auth key.
pub const FOP_TAG: &[u8] = b"fpn v1 dprp fop tag\0";
/// Label of a FOK's tag under its pair epoch's auth key.
pub const FOK_TAG: &[u8] = b"fpn v1 dprp fok tag\0";
/// Label of an EVICT's tag under its pair epoch's auth key.
pub const EVICT_TAG: &[u8] = b"fpn v1 dprp evict tag\0";

fn hash(label: &[u8], items: &[&[u8]]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(label);
    for item in items {
        // Length prefixes keep item boundaries unambiguous.
        ctx.update(&(item.len() as u32).to_be_bytes());
        ctx.update(item);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `H0`: the hash of the DDE core.
pub fn dde_hash(dde_core: &[u8]) -> Hash {
    hash(b"fpn v1 dprp dde\0", &[dde_core])
}

/// `C_R`: what the responder's proof and tag cover.
pub fn responder_hash(h0: &Hash, rgi_core: &[u8]) -> Hash {
    hash(b"fpn v1 dprp rgi\0", &[h0, rgi_core])
}

/// `C_k`: what gateway k signs.
pub fn hop_hash(prev: &Hash, prev_auth: &[u8], credential: &[u8]) -> Hash {
    hash(b"fpn v1 dprp hop\0", &[prev, prev_auth, credential])
}

/// `T_M`: what the MPIT's authenticators cover; the traffic keys' transcript.
pub fn mpit_hash(c_r: &Hash, responder_auth: &[u8], mpit_core: &[u8]) -> Hash {
    hash(b"fpn v1 dprp mpit\0", &[c_r, responder_auth, mpit_core])
}

/// `H_F`: the hash of a FOP core, what a NAK refusing the FOP signs
/// (in place of a DDE's `H0`).
pub fn fop_hash(fop_core: &[u8]) -> Hash {
    hash(b"fpn v1 dprp fop\0", &[fop_core])
}

/// `T_C`: what the CDN's authenticators cover.
pub fn cdn_hash(t_m: &Hash, cdn_core: &[u8]) -> Hash {
    hash(b"fpn v1 dprp cdn\0", &[t_m, cdn_core])
}

/// The message a node signature covers: a context label and a transcript hash.
pub fn to_be_signed(context: &[u8], th: &Hash) -> Vec<u8> {
    [context, th].concat()
}

/// The MAC key two end GEs share: HKDF over the X25519 agreement of their
/// certified node keys, bound to both public keys. Only the two GEs can
/// compute it, so a tag under it authenticates the other end exactly like a
/// signature would, for a fraction of the CPU (see docs/DESIGN-NOTES.md).
#[derive(Clone)]
pub struct PairKey(hmac::Key);

/// The label [`PairKey::probe_key`] signs.
const PROBE_KEY_LABEL: &[u8] = b"fpn v1 path probe key";

impl std::fmt::Debug for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairKey(<redacted>)")
    }
}

impl PairKey {
    /// Derives the key between `node` and the GE whose node key is `peer`.
    pub fn derive(node: &NodeKey, peer: &[u8; PUBLIC_KEY_LEN]) -> Result<Self> {
        let shared = node.static_agreement(peer)?;
        let me = node.public();
        // Both ends must feed the public keys in the same order.
        let (lo, hi) = if me <= *peer {
            (&me, peer)
        } else {
            (peer, &me)
        };
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"fpn v1 dprp pair").extract(&shared[..]);
        let info = [&lo[..], &hi[..]];
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            .map_err(|_| Error::InvalidKey("pair key expansion"))?;
        Ok(Self(hmac::Key::from(okm)))
    }

    /// The path-probe key of this GE pair (`path::PathMachine::new`):
    /// `HMAC(pair key, "fpn v1 path probe key")`. Both ends get the same
    /// bytes; no DPRP tag is ever computed over that label, so the probe key
    /// and the DPRP tags stay independent.
    pub fn probe_key(&self) -> zeroize::Zeroizing<[u8; 32]> {
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        out.copy_from_slice(hmac::sign(&self.0, PROBE_KEY_LABEL).as_ref());
        out
    }

    /// The tag over `label | th | extra`.
    pub fn tag(&self, label: &[u8], th: &Hash, extra: &[u8]) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(label);
        ctx.update(th);
        ctx.update(extra);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Verifies a tag made by [`PairKey::tag`] in constant time.
    pub fn verify(
        &self,
        label: &[u8],
        th: &Hash,
        extra: &[u8],
        tag: &[u8],
        what: &'static str,
    ) -> Result<()> {
        let msg = [label, &th[..], extra].concat();
        hmac::verify(&self.0, &msg, tag).map_err(|_| Error::BadMac(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_keys_agree_and_bind_identities() {
        let a = NodeKey::from_seed(&[1; 32]);
        let b = NodeKey::from_seed(&[2; 32]);
        let c = NodeKey::from_seed(&[3; 32]);
        let ab = PairKey::derive(&a, &b.public()).unwrap();
        let ba = PairKey::derive(&b, &a.public()).unwrap();
        let ca = PairKey::derive(&c, &a.public()).unwrap();
        let th = [7; 32];
        let tag = ab.tag(RGI_TAG, &th, b"x");
        ba.verify(RGI_TAG, &th, b"x", &tag, "t").unwrap();
        assert!(ca.verify(RGI_TAG, &th, b"x", &tag, "t").is_err());
        assert!(ba.verify(MPIT_TAG, &th, b"x", &tag, "t").is_err());
        assert!(format!("{ab:?}").contains("redacted"));
        assert_eq!(*ab.probe_key(), *ba.probe_key());
        assert_ne!(*ab.probe_key(), *ca.probe_key());
        assert_ne!(
            ab.probe_key()[..],
            ab.tag(PROBE_KEY_LABEL, &[0; 32], b"")[..]
        );
    }

    #[test]
    fn items_are_length_prefixed() {
        assert_ne!(hash(b"l", &[b"ab", b"c"]), hash(b"l", &[b"a", b"bc"]));
    }
}
