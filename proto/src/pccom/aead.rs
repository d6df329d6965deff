//! The AEAD behind PCCOM: one small trait and its two AES-256-GCM backends.
//!
//! [`RingAesGcm`] (ring, assembly AES-NI/VAES/CLMUL or ARMv8 code) is the
//! default: 2.6x faster than [`RustCryptoAesGcm`] (RustCrypto `aes-gcm` on the
//! `aes` crate, runtime AES-NI detection) at 1400 bytes on the project's
//! machine; docs/BENCHMARKS.md has the numbers. Both are kept so the benchmark can
//! compare them in one run and so a platform where ring is unavailable has a
//! pure-Rust fallback.
//!
//! Key hygiene: `RustCryptoAesGcm` zeroizes its key schedule on drop (the
//! `zeroize` feature of aes-gcm). ring does not zeroize its expanded keys; the
//! [`crate::keys::TrafficKey`] they came from is zeroized.

use std::fmt;

use aes_gcm::aead::array::Array;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

use crate::keys::TrafficKey;
use crate::{Error, Result};

/// Length of the GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM authentication tag.
pub const TAG_LEN: usize = 16;

/// AES-256-GCM with detached tags, sealing and opening in place.
///
/// Implementations must be usable from several threads (`Send + Sync`); the
/// nonce discipline (never two seals with one nonce under one key) is the
/// caller's, which [`super::FlowCrypto`] keeps with a per-direction counter.
pub trait PacketAead: Sized + Send + Sync {
    /// Short backend name, for benchmarks and logs.
    const NAME: &'static str;

    /// Expands a traffic key.
    fn new(key: &TrafficKey) -> Self;

    /// Encrypts `data` in place and writes the tag to `tag` (straight into
    /// the packet's trailer: no copy through the return value).
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<()>;

    /// Verifies `tag` and decrypts `data` in place. On failure returns
    /// [`Error::PacketAuth`]; `data` is then unspecified and must be dropped.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()>;
}

/// AES-256-GCM from ring (the default backend).
pub struct RingAesGcm(LessSafeKey);

impl PacketAead for RingAesGcm {
    const NAME: &'static str = "ring";

    fn new(key: &TrafficKey) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose_secret())
            .expect("a TrafficKey is 32 bytes, the AES-256 key length");
        Self(LessSafeKey::new(unbound))
    }

    #[inline]
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<()> {
        let t = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), data)
            .map_err(|_| too_large(data.len()))?;
        tag.copy_from_slice(t.as_ref());
        Ok(())
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                Tag::from(*tag),
                data,
                0..,
            )
            .map(|_| ())
            .map_err(|_| Error::PacketAuth)
    }
}

/// AES-256-GCM from RustCrypto (`aes-gcm` over `aes`).
pub struct RustCryptoAesGcm(Aes256Gcm);

impl PacketAead for RustCryptoAesGcm {
    const NAME: &'static str = "rustcrypto";

    fn new(key: &TrafficKey) -> Self {
        Self(Aes256Gcm::new(&Array::from(*key.expose_secret())))
    }

    #[inline]
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<()> {
        let len = data.len();
        let t = self
            .0
            .encrypt_inout_detached(&Array::from(*nonce), aad, data.into())
            .map_err(|_| too_large(len))?;
        tag.copy_from_slice(&t);
        Ok(())
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        self.0
            .decrypt_inout_detached(&Array::from(*nonce), aad, data.into(), &Array::from(*tag))
            .map_err(|_| Error::PacketAuth)
    }
}

impl fmt::Debug for RingAesGcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RingAesGcm(<key redacted>)")
    }
}

impl fmt::Debug for RustCryptoAesGcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RustCryptoAesGcm(<key redacted>)")
    }
}

fn too_large(len: usize) -> Error {
    Error::TooLarge {
        what: "AEAD input",
        len,
        max: 1 << 36,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NIST GCM test vector (gcmEncryptExtIV256.rsp, Count = 0 of the
    /// Keylen = 256, IVlen = 96, PTlen = 128, AADlen = 128 section).
    #[test]
    fn both_backends_match_a_known_answer() {
        let key = hex::decode("92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b")
            .unwrap();
        let nonce: [u8; 12] = hex::decode("ac93a1a6145299bde902f21a")
            .unwrap()
            .try_into()
            .unwrap();
        let pt = hex::decode("2d71bcfa914e4ac045b2aa60955fad24").unwrap();
        let aad = hex::decode("1e0889016f67601c8ebea4943bc23ad6").unwrap();
        let ct = hex::decode("8995ae2e6df3dbf96fac7b7137bae67f").unwrap();
        let tag = hex::decode("eca5aa77d51d4a0a14d9c51e1da474ab").unwrap();
        let key = TrafficKey::from_bytes(key.try_into().unwrap());
        check::<RingAesGcm>(&key, &nonce, &aad, &pt, &ct, &tag);
        check::<RustCryptoAesGcm>(&key, &nonce, &aad, &pt, &ct, &tag);
    }

    fn check<A: PacketAead>(
        key: &TrafficKey,
        nonce: &[u8; 12],
        aad: &[u8],
        pt: &[u8],
        ct: &[u8],
        tag: &[u8],
    ) {
        let a = A::new(key);
        let mut buf = pt.to_vec();
        let mut t = [0u8; TAG_LEN];
        a.seal_in_place(nonce, aad, &mut buf, &mut t).unwrap();
        assert_eq!(buf, ct, "{}", A::NAME);
        assert_eq!(&t[..], tag, "{}", A::NAME);
        a.open_in_place(nonce, aad, &mut buf, &t).unwrap();
        assert_eq!(buf, pt, "{}", A::NAME);
        let mut bad = t;
        bad[0] ^= 1;
        let mut buf = ct.to_vec();
        assert_eq!(
            a.open_in_place(nonce, aad, &mut buf, &bad),
            Err(Error::PacketAuth)
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let k = TrafficKey::from_bytes([0x5a; 32]);
        assert!(!format!("{:?}", RingAesGcm::new(&k)).contains("5a"));
        assert!(!format!("{:?}", RustCryptoAesGcm::new(&k)).contains("5a"));
    }
}
