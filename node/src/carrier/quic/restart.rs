//! What must survive a restart of the node so that peers notice it at once.
//!
//! A node that crashes sends no CONNECTION_CLOSE; its peers keep sending
//! into the old connection. When the node comes back on the same port,
//! quinn answers those packets with a stateless reset, but the peer only
//! accepts a reset whose token matches the one the old process handed out,
//! and quinn only answers packets whose connection id passes its generator's
//! check. Both secrets are random per process by default; here both are
//! derived from the node's private key, so the restarted process's resets
//! are valid for its predecessor's connections.

use std::sync::Arc;

use quinn_proto::{ConnectionIdGenerator, HashedConnectionIdGenerator};
use ring::{hkdf, hmac};

/// Domain separation: these keys are used for nothing else.
const SALT: &[u8] = b"fpn carrier restart keys v1";
const RESET_INFO: &[u8] = b"stateless reset";
const CID_INFO: &[u8] = b"connection id check";

/// Bytes of output for a `u64` key.
struct U64Len;

impl hkdf::KeyType for U64Len {
    fn len(&self) -> usize {
        8
    }
}

/// The endpoint configuration whose stateless-reset key and connection-id
/// check key derive from `key_pkcs8` (the node's private key, PKCS#8 DER).
pub(super) fn endpoint_config(key_pkcs8: &[u8]) -> quinn::EndpointConfig {
    let Some((reset, cid_key)) = keys(key_pkcs8) else {
        // Unreachable: HKDF-SHA256 expands to these lengths without fail.
        // Random keys still work, only not across a restart.
        return quinn::EndpointConfig::default();
    };
    let mut cfg = quinn::EndpointConfig::new(Arc::new(reset));
    cfg.cid_generator(move || {
        Box::new(HashedConnectionIdGenerator::from_key(cid_key)) as Box<dyn ConnectionIdGenerator>
    });
    cfg
}

/// The stateless-reset key and the connection-id check key.
fn keys(key_pkcs8: &[u8]) -> Option<(hmac::Key, u64)> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(key_pkcs8);
    let reset = hmac::Key::from(prk.expand(&[RESET_INFO], hmac::HMAC_SHA256).ok()?);
    let mut cid_key = [0u8; 8];
    prk.expand(&[CID_INFO], U64Len)
        .ok()?
        .fill(&mut cid_key)
        .ok()?;
    Some((reset, u64::from_le_bytes(cid_key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid_gen(key: &[u8]) -> HashedConnectionIdGenerator {
        HashedConnectionIdGenerator::from_key(keys(key).unwrap().1)
    }

    fn tag(key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&keys(key).unwrap().0, data).as_ref().to_vec()
    }

    #[test]
    fn the_same_key_accepts_its_predecessors_connection_ids_and_resets() {
        let a = b"node key one".as_slice();
        let b = b"node key two".as_slice();
        let first = cid_gen(a).generate_cid();
        assert!(cid_gen(a).validate(&first).is_ok());
        // Another node's ids fail the check (40 bits of tag).
        assert!(cid_gen(b).validate(&first).is_err());
        assert_eq!(tag(a, &first), tag(a, &first));
        assert_ne!(tag(a, &first), tag(b, &first));
    }
}
