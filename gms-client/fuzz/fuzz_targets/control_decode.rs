//! The node<->GMS control protocol: arbitrary bytes as a frame (header, then
//! a body of the header's type, decoded as a client and as a server
//! message) never panic; whatever decodes re-encodes to a frame that
//! decodes again to the same bytes (the codec is its own inverse).
#![no_main]

use fpn_gms_client::wire::{ClientMsg, HEADER_LEN, ServerMsg, parse_header};
use libfuzzer_sys::fuzz_target;

fn header(frame: &[u8]) -> (u8, usize) {
    let h: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header length");
    parse_header(&h).expect("an encoded frame has a valid header")
}

fuzz_target!(|data: &[u8]| {
    // A SHUTDOWN close reason comes from the GMS as bytes too.
    if let Some(spread) = fpn_gms_client::wire::shutdown_spread(data) {
        assert!(spread.as_millis() <= u128::from(fpn_gms_client::wire::MAX_RECONNECT_SPREAD_MS));
    }
    let Some((h, body)) = data.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let _ = parse_header(h);
    let ty = h[1];
    if let Ok(m) = ClientMsg::decode(ty, body) {
        let f = m.encode().expect("a decoded client message re-encodes");
        let (ty2, len) = header(&f);
        assert_eq!(len, f.len() - HEADER_LEN);
        let again = ClientMsg::decode(ty2, &f[HEADER_LEN..]).expect("re-decodes");
        assert_eq!(again.encode().expect("re-encodes"), f);
    }
    if let Ok(m) = ServerMsg::decode(ty, body) {
        let f = m.encode().expect("a decoded server message re-encodes");
        let (ty2, len) = header(&f);
        assert_eq!(len, f.len() - HEADER_LEN);
        let again = ServerMsg::decode(ty2, &f[HEADER_LEN..]).expect("re-decodes");
        assert_eq!(again.encode().expect("re-encodes"), f);
    }
});
