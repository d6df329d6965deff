//! Decoding arbitrary bytes as a GE credential never panics, and verifying
//! whatever decodes fails cleanly (no signature of the test CA can be forged).
//! Whatever decodes (version 1, or version 2 with a gateway's prefixes)
//! re-encodes to exactly the input: one encoding per signed statement, so the
//! prefix list's canonical-form checks cannot be bypassed.
#![no_main]

use fpn_proto::credential::UnverifiedCredential;
use fpn_proto::keys::NodeKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = UnverifiedCredential::decode(data) {
        let again = c.encode().expect("a decoded credential encodes");
        assert_eq!(again, data, "one encoding per credential");
        // Verification of garbage must fail cleanly, not panic.
        let ca = NodeKey::from_seed(&[1; 32]);
        let _ = c.verify(&ca.public(), 1);
    }
});
