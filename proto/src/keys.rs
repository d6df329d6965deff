//! Key material and the derivations built on it.
//!
//! - [`GroupKey`]: a group's 256-bit key with its [`KeyVersion`]; zeroized on
//!   drop, never printed.
//! - [`NodeKey`]: a GE's Ed25519 signing key (the key of its certificate).
//! - [`TrafficKey`]/[`FlowKeys`]: per-flow, per-direction AEAD keys.
//! - HKDF-SHA256 derivations with fixed, versioned labels.
//!
//! Every derivation label starts with `fpn v1 ` so keys of one purpose can
//! never be mistaken for keys of another.

use std::fmt;

use ring::{hkdf, hmac, signature};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{Error, Result};

/// Length of group keys and traffic keys, in bytes.
pub const KEY_LEN: usize = 32;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a MAC (HMAC-SHA256, untruncated).
pub const MAC_LEN: usize = 32;

/// Version of a group key. Incremented by the GMS on every rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyVersion(pub u32);

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A group key: 256 secret bits.
///
/// Zeroized on drop. `Debug` prints no key bytes. Compare with
/// [`GroupKey::ct_eq`] (constant time), never by exposing the bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct GroupKey([u8; KEY_LEN]);

impl GroupKey {
    /// Wraps key bytes (from the GMS's random source or from the key store).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads a key from a slice, which must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| Error::InvalidKey("a group key is 32 bytes"))?;
        Ok(Self(arr))
    }

    /// The raw bytes, for the key store and the GMS push only.
    ///
    /// Named loudly so every use stands out in review.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &GroupKey) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The key that proves possession of this group key: HMAC-SHA256 keyed with
    /// HKDF(GK, "fpn v1 group proof"). The group key itself never signs or
    /// leaves the GE.
    pub fn proof_key(&self) -> hmac::Key {
        let bytes = expand(&self.0, &[], b"fpn v1 group proof");
        hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref())
    }

    /// A short public fingerprint of the key (first 8 bytes of
    /// HKDF(GK, "fpn v1 key id")), for logs and for spotting two nodes that
    /// disagree about a version. Reveals nothing usable about the key.
    pub fn fingerprint(&self) -> [u8; 8] {
        let bytes = expand(&self.0, &[], b"fpn v1 key id");
        let mut out = [0u8; 8];
        out.copy_from_slice(&bytes[..8]);
        out
    }
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GroupKey(<redacted>)")
    }
}

/// Computes a group proof: HMAC over `transcript` under the group's proof key.
pub fn group_proof(gk: &GroupKey, transcript: &[u8]) -> [u8; MAC_LEN] {
    let tag = hmac::sign(&gk.proof_key(), transcript);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Verifies a group proof in constant time.
pub fn verify_group_proof(gk: &GroupKey, transcript: &[u8], proof: &[u8]) -> Result<()> {
    hmac::verify(&gk.proof_key(), transcript, proof).map_err(|_| Error::BadMac("group proof"))
}

/// Which end of a negotiation a GE played. Decides which derived key sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sent the DDE.
    Initiator,
    /// Answered with RGI.
    Responder,
}

/// One direction's AEAD key of one flow. Zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TrafficKey([u8; KEY_LEN]);

impl TrafficKey {
    /// Wraps key bytes (tests and benchmarks; real keys come from [`derive_flow_keys`]).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes, for building the AEAD only.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for TrafficKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrafficKey(<redacted>)")
    }
}

/// The two traffic keys of a flow, seen from one end.
#[derive(Debug, Clone)]
pub struct FlowKeys {
    /// Key for packets this GE sends.
    pub tx: TrafficKey,
    /// Key for packets this GE receives.
    pub rx: TrafficKey,
}

/// Derives a flow's traffic keys.
///
/// `PRK = HKDF-Extract(salt = transcript_hash, IKM = GK || X25519 shared secret)`;
/// the initiator-to-responder key expands with `"fpn v1 traffic i2r"`, the other
/// with `"fpn v1 traffic r2i"`. The group key makes only members able to derive
/// them; the ephemeral shares make them unique per negotiation and keep
/// recorded traffic sealed after a group key is stolen; the transcript binds
/// them to everything both ends saw.
pub fn derive_flow_keys(
    gk: &GroupKey,
    dh_shared: &[u8; 32],
    transcript_hash: &[u8; 32],
    role: Role,
) -> FlowKeys {
    let prk = negotiation_prk(gk, dh_shared, transcript_hash);
    let i2r = TrafficKey(expand_prk(&prk, b"fpn v1 traffic i2r"));
    let r2i = TrafficKey(expand_prk(&prk, b"fpn v1 traffic r2i"));
    match role {
        Role::Initiator => FlowKeys { tx: i2r, rx: r2i },
        Role::Responder => FlowKeys { tx: r2i, rx: i2r },
    }
}

/// A pair epoch's secret (docs/PROTOCOL.md, "Fast open"): derived next to
/// the traffic keys of a negotiation between two end GEs with no gateway
/// between them, from the same group key, ephemeral X25519 secret and
/// transcript, under its own label. New flows between the pair derive their
/// traffic keys from it without a negotiation ([`EpochSecret::flow_keys`]).
/// Zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct EpochSecret([u8; KEY_LEN]);

/// Length of a pair epoch's id on the wire.
pub const EPOCH_ID_LEN: usize = 8;

impl EpochSecret {
    /// Derives the epoch secret of a negotiation:
    /// `HKDF-Expand(PRK, "fpn v1 pair epoch")` with the PRK of
    /// [`derive_flow_keys`].
    pub fn derive(gk: &GroupKey, dh_shared: &[u8; 32], transcript_hash: &[u8; 32]) -> Self {
        let prk = negotiation_prk(gk, dh_shared, transcript_hash);
        Self(expand_prk(&prk, b"fpn v1 pair epoch"))
    }

    /// Wraps secret bytes (tests only; real ones come from [`EpochSecret::derive`]).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The epoch's public name: the first bytes of
    /// `HMAC(secret, "fpn v1 epoch id")`. It names the epoch on the wire
    /// and tells nothing about the secret.
    pub fn id(&self) -> [u8; EPOCH_ID_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&key, b"fpn v1 epoch id");
        let mut out = [0u8; EPOCH_ID_LEN];
        out.copy_from_slice(&tag.as_ref()[..EPOCH_ID_LEN]);
        out
    }

    /// The MAC key of the epoch's FOP and FOK messages.
    pub fn auth_key(&self) -> hmac::Key {
        let k = expand(&self.0, b"fpn v1 epoch", b"fpn v1 epoch auth");
        hmac::Key::new(hmac::HMAC_SHA256, &k[..])
    }

    /// The traffic keys of the flow that GE `opener` opens as its
    /// `index`-th flow of this epoch: `HKDF(salt = "fpn v1 fast flow",
    /// IKM = secret)`, expanded with `"fpn v1 fast i2r"` or `"... r2i"`,
    /// the opener's GE id, the index and the flow id (`flow`, the
    /// encoded CID of the flow's first packet). One (opener, index) names
    /// one flow: the receiving end refuses an index it has seen, so no key
    /// serves two flows and no counter repeats under a key.
    pub fn flow_keys(&self, opener: u32, index: u32, flow: &[u8], role: Role) -> FlowKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"fpn v1 fast flow").extract(&self.0);
        let (o, i) = (opener.to_be_bytes(), index.to_be_bytes());
        let one = |label: &[u8]| {
            let mut out = [0u8; KEY_LEN];
            prk.expand(&[label, &o, &i, flow], Len(KEY_LEN))
                .and_then(|okm| okm.fill(&mut out))
                .expect("32-byte HKDF output is always within the limit");
            TrafficKey(out)
        };
        let (i2r, r2i) = (one(b"fpn v1 fast i2r"), one(b"fpn v1 fast r2i"));
        match role {
            Role::Initiator => FlowKeys { tx: i2r, rx: r2i },
            Role::Responder => FlowKeys { tx: r2i, rx: i2r },
        }
    }
}

impl fmt::Debug for EpochSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EpochSecret(<redacted>)")
    }
}

/// Derives a 32-byte handshake key (for MACs over later DPRP messages) from the
/// same inputs as the traffic keys, under its own label.
pub fn derive_handshake_key(
    gk: &GroupKey,
    dh_shared: &[u8; 32],
    transcript_hash: &[u8; 32],
) -> hmac::Key {
    let prk = negotiation_prk(gk, dh_shared, transcript_hash);
    let k = Zeroizing::new(expand_prk(&prk, b"fpn v1 handshake"));
    hmac::Key::new(hmac::HMAC_SHA256, k.as_ref())
}

/// `HKDF-Extract(salt = transcript hash, IKM = GK || X25519 shared secret)`:
/// what a negotiation's traffic keys, handshake key and pair epoch expand
/// from, each under its own label.
fn negotiation_prk(gk: &GroupKey, dh_shared: &[u8; 32], transcript_hash: &[u8; 32]) -> hkdf::Prk {
    let mut ikm = Zeroizing::new([0u8; 2 * KEY_LEN]);
    ikm[..KEY_LEN].copy_from_slice(&gk.0);
    ikm[KEY_LEN..].copy_from_slice(dh_shared);
    hkdf::Salt::new(hkdf::HKDF_SHA256, transcript_hash).extract(ikm.as_ref())
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(ikm: &[u8], salt: &[u8], label: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    Zeroizing::new(expand_prk(&prk, label))
}

fn expand_prk(prk: &hkdf::Prk, label: &[u8]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    // Expanding 32 bytes from SHA-256 cannot exceed HKDF's 255 * 32 limit.
    prk.expand(&[label], Len(KEY_LEN))
        .and_then(|okm| okm.fill(&mut out))
        .expect("32-byte HKDF output is always within the limit");
    out
}

/// A GE's Ed25519 signing key (the key its certificate and credential name).
///
/// It also holds the same secret scalar as an X25519 static key (the
/// birational map of RFC 7748 / libsodium's `ed25519_sk_to_curve25519`), so
/// two GEs that know each other's certified node keys share a static secret
/// ([`NodeKey::static_agreement`]) without a second certificate.
pub struct NodeKey {
    pair: signature::Ed25519KeyPair,
    dh: x25519_dalek::StaticSecret,
}

impl NodeKey {
    /// Loads a key from PKCS#8 (v1 or v2) DER, as rcgen writes it.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let pair = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| Error::InvalidKey("not an Ed25519 PKCS#8 key"))?;
        let seed = Zeroizing::new(
            pkcs8_ed25519_seed(der).ok_or(Error::InvalidKey("unexpected Ed25519 PKCS#8 layout"))?,
        );
        let key = Self::from_seed(&seed);
        // The seed was cut out of the DER by position: prove it is the key ring parsed.
        if key.public() != Self::public_of(&pair) {
            return Err(Error::InvalidKey(
                "PKCS#8 seed does not match its public key",
            ));
        }
        Ok(key)
    }

    /// Derives a key from a 32-byte seed (tests, the simulation and benchmarks).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .expect("any 32 bytes are an Ed25519 seed");
        let scalar = secret_scalar(seed);
        scrub_stack();
        let dh = x25519_dalek::StaticSecret::from(*scalar);
        Self { pair, dh }
    }

    /// X25519 between this node's key and another GE's Ed25519 node key (from
    /// its verified credential). Both sides get the same 32 bytes; nobody
    /// without one of the two secret keys can compute them.
    pub fn static_agreement(&self, peer: &[u8; PUBLIC_KEY_LEN]) -> Result<Zeroizing<[u8; 32]>> {
        let point = curve25519_dalek::edwards::CompressedEdwardsY(*peer)
            .decompress()
            .ok_or(Error::InvalidKey("node key is not a curve point"))?;
        let peer = x25519_dalek::PublicKey::from(point.to_montgomery().to_bytes());
        let shared = self.dh.diffie_hellman(&peer);
        if !shared.was_contributory() {
            return Err(Error::InvalidKey("node key of low order"));
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }

    fn public_of(pair: &signature::Ed25519KeyPair) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(signature::KeyPair::public_key(pair).as_ref());
        out
    }

    /// The public half.
    pub fn public(&self) -> [u8; PUBLIC_KEY_LEN] {
        Self::public_of(&self.pair)
    }

    /// Signs `msg` (Ed25519 is deterministic: no randomness needed).
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &HexShort(&self.public()))
            .finish()
    }
}

/// RFC 8032: the secret scalar is the (clamped) first half of SHA-512(seed);
/// X25519 clamps the same way, so this is the node key's scalar. ring's
/// `Digest` (the whole 64-byte hash: scalar and signing prefix) cannot be
/// wiped (no `Zeroize`, private fields), so it lives only in this frame,
/// which [`scrub_stack`] overwrites once the call has returned.
#[inline(never)]
fn secret_scalar(seed: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let h = ring::digest::digest(&ring::digest::SHA512, seed);
    let mut scalar = Zeroizing::new([0u8; 32]);
    scalar.copy_from_slice(&h.as_ref()[..32]);
    scalar
}

/// Overwrites the stack just below the caller's frame, where the frame of
/// the [`secret_scalar`] call it follows lay. Best effort (the compiler
/// decides frame sizes); 4 KiB covers that frame many times over.
#[inline(never)]
fn scrub_stack() {
    let mut buf = [0xa5u8; 4096];
    zeroize::Zeroize::zeroize(&mut buf[..]);
    std::hint::black_box(&buf);
}

/// The seed of an RFC 8410 Ed25519 PKCS#8 document (v1 or v2, which ring
/// accepts): `30 L 02 01 0v 30 05 06 03 2b 65 70 04 22 04 20 <seed>`.
fn pkcs8_ed25519_seed(der: &[u8]) -> Option<[u8; 32]> {
    const PREFIX: [u8; 11] = [
        0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    let ok = der.len() >= 48
        && der[0] == 0x30
        && der[1] < 0x80
        && der[2..4] == [0x02, 0x01]
        && der[4] <= 1
        && der[5..16] == PREFIX;
    ok.then(|| der[16..48].try_into().expect("32 bytes"))
}

/// Verifies an Ed25519 signature by `public` over `msg`.
pub fn verify_signature(
    public: &[u8; PUBLIC_KEY_LEN],
    msg: &[u8],
    sig: &[u8],
    what: &'static str,
) -> Result<()> {
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(msg, sig)
        .map_err(|_| Error::BadSignature(what))
}

/// Prints the first bytes of a public value in hex, for `Debug` output.
pub(crate) struct HexShort<'a>(pub &'a [u8]);

impl fmt::Debug for HexShort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().take(8) {
            write!(f, "{b:02x}")?;
        }
        if self.0.len() > 8 {
            f.write_str("..")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes() {
        let gk = GroupKey::from_bytes([0xab; 32]);
        let s = format!("{gk:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
        let tk = TrafficKey::from_bytes([0xcd; 32]);
        assert!(!format!("{tk:?}").contains("cd"));
    }

    #[test]
    fn flow_keys_pair_up_and_differ_by_direction() {
        let gk = GroupKey::from_bytes([1; 32]);
        let i = derive_flow_keys(&gk, &[2; 32], &[3; 32], Role::Initiator);
        let r = derive_flow_keys(&gk, &[2; 32], &[3; 32], Role::Responder);
        assert_eq!(i.tx.expose_secret(), r.rx.expose_secret());
        assert_eq!(i.rx.expose_secret(), r.tx.expose_secret());
        assert_ne!(i.tx.expose_secret(), i.rx.expose_secret());
    }

    #[test]
    fn every_input_changes_the_keys() {
        let base = derive_flow_keys(
            &GroupKey::from_bytes([1; 32]),
            &[2; 32],
            &[3; 32],
            Role::Initiator,
        );
        let other_gk = derive_flow_keys(
            &GroupKey::from_bytes([9; 32]),
            &[2; 32],
            &[3; 32],
            Role::Initiator,
        );
        let other_dh = derive_flow_keys(
            &GroupKey::from_bytes([1; 32]),
            &[9; 32],
            &[3; 32],
            Role::Initiator,
        );
        let other_th = derive_flow_keys(
            &GroupKey::from_bytes([1; 32]),
            &[2; 32],
            &[9; 32],
            Role::Initiator,
        );
        for o in [other_gk, other_dh, other_th] {
            assert_ne!(base.tx.expose_secret(), o.tx.expose_secret());
        }
    }

    #[test]
    fn group_proof_verifies_only_with_the_same_key() {
        let gk = GroupKey::from_bytes([5; 32]);
        let proof = group_proof(&gk, b"transcript");
        verify_group_proof(&gk, b"transcript", &proof).unwrap();
        assert!(verify_group_proof(&GroupKey::from_bytes([6; 32]), b"transcript", &proof).is_err());
        assert!(verify_group_proof(&gk, b"transcripT", &proof).is_err());
        assert!(verify_group_proof(&gk, b"transcript", &proof[..31]).is_err());
    }

    #[test]
    fn signatures_verify_and_bind_the_message() {
        let k = NodeKey::from_seed(&[7; 32]);
        let sig = k.sign(b"hello");
        verify_signature(&k.public(), b"hello", &sig, "test").unwrap();
        assert!(verify_signature(&k.public(), b"hellO", &sig, "test").is_err());
        let other = NodeKey::from_seed(&[8; 32]);
        assert!(verify_signature(&other.public(), b"hello", &sig, "test").is_err());
    }

    #[test]
    fn static_agreement_is_symmetric_and_pkcs8_matches_seed() {
        let rng = ring::rand::SystemRandom::new();
        let doc = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let a = NodeKey::from_pkcs8(doc.as_ref()).unwrap();
        let b = NodeKey::from_seed(&[4; 32]);
        let c = NodeKey::from_seed(&[5; 32]);
        let ab = a.static_agreement(&b.public()).unwrap();
        assert_eq!(*ab, *b.static_agreement(&a.public()).unwrap());
        assert_ne!(*ab, *c.static_agreement(&a.public()).unwrap());
        // The identity point (all zero but y = 1) is of low order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(b.static_agreement(&identity).is_err());
        let mut bad = doc.as_ref().to_vec();
        bad[5] ^= 1;
        assert!(NodeKey::from_pkcs8(&bad).is_err());
    }

    #[test]
    fn constant_time_equality() {
        assert!(GroupKey::from_bytes([1; 32]).ct_eq(&GroupKey::from_bytes([1; 32])));
        assert!(!GroupKey::from_bytes([1; 32]).ct_eq(&GroupKey::from_bytes([2; 32])));
    }
}
