//! What a node knows of the GMS's certificate authority: the name the GMS
//! server certificate carries, how certificates are named (SHA-256 of the
//! DER), and the node's own key generation.
//!
//! Issuing certificates and credentials is the GMS's job (`fpn_gms::ca`);
//! nothing here signs for anyone but the node itself.

use fpn_proto::keys::NodeKey;
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The name in the GMS server certificate; clients always connect with it,
/// whatever address they dial (the CA is pinned, the name is not a locator).
pub const SERVER_NAME: &str = "fpn-gms";

/// SHA-256 of a certificate's DER: how the GMS and tokens name certificates.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A node's freshly generated Ed25519 key pair: `(PKCS#8 DER, raw public key)`.
pub fn generate_node_key() -> Result<(Zeroizing<Vec<u8>>, [u8; 32])> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| Error::Random)?;
    let der = Zeroizing::new(doc.as_ref().to_vec());
    let public = NodeKey::from_pkcs8(&der)?.public();
    Ok((der, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keys_are_fresh_and_their_public_half_matches() {
        let (a, pa) = generate_node_key().unwrap();
        let (b, pb) = generate_node_key().unwrap();
        assert_ne!(pa, pb);
        assert_ne!(a.as_slice(), b.as_slice());
        let key = NodeKey::from_pkcs8(&a).unwrap();
        assert_eq!(key.public(), pa);
        // rustls (TLS client auth with the node certificate) takes the same DER.
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(a.to_vec().into());
        assert!(rustls::crypto::ring::sign::any_supported_type(&der).is_ok());
    }

    #[test]
    fn fingerprint_is_sha256() {
        assert_eq!(
            hex::encode(fingerprint(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
