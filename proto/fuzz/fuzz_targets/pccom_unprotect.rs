//! `unprotect` of arbitrary bytes never panics and never authenticates; a
//! packet that parses survives protect + unprotect with its payload intact.
#![no_main]

use fpn_proto::keys::{GroupKey, Role, derive_flow_keys};
use fpn_proto::packet::Packet;
use fpn_proto::pccom::{FlowCrypto, TRAILER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let gk = GroupKey::from_bytes([3; 32]);
    let i = derive_flow_keys(&gk, &[1; 32], &[2; 32], Role::Initiator);
    let r = derive_flow_keys(&gk, &[1; 32], &[2; 32], Role::Responder);
    let mut tx = FlowCrypto::new(&i);
    let mut rx = FlowCrypto::new(&r);

    // Arbitrary bytes as a protected packet: any outcome but success.
    let mut raw = data.to_vec();
    assert!(rx.unprotect(&mut raw).is_err(), "forged packet authenticated");

    // Arbitrary bytes as a plain packet: protect and unprotect round trip.
    let Ok(p) = Packet::parse(data) else { return };
    let (len, plain) = (p.len(), p.payload().to_vec());
    let mut buf = data[..len].to_vec();
    buf.resize(len + TRAILER_LEN, 0);
    let Ok(n) = tx.protect(&mut buf, len) else { return };
    assert_eq!(n, len + TRAILER_LEN);
    {
        let wire = Packet::parse(&buf[..n]).expect("protected packet parses");
        assert!(wire.l4_checksum_ok());
        assert_eq!(wire.ip_checksum_ok(), p.ip_checksum_ok());
    }
    let mut replay = buf[..n].to_vec();
    let m = rx.unprotect(&mut buf[..n]).expect("own packet opens");
    assert_eq!(m, len);
    let back = Packet::parse(&buf[..m]).expect("unprotected packet parses");
    assert_eq!(back.payload(), &plain[..]);
    assert!(back.l4_checksum_ok());
    assert!(rx.unprotect(&mut replay).is_err(), "replay accepted");
});
