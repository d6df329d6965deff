//! Arbitrary bytes as a path probe or answer never panic. Whatever passes the
//! structural check re-encodes canonically (the same bytes up to the tag),
//! and the bytes, then the same fields re-signed with the machine's key (so
//! the fuzzer reaches past the tag check), go twice into a `PathMachine`
//! (replays must be refused), followed by its timers.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fpn_proto::ge::GeId;
use fpn_proto::path::probe::{MAX_LEN, TAG_LEN};
use fpn_proto::path::{PathConfig, PathMachine, ProbeKey, ProbeKind, ProbeRepr, ProbeView};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [3; 32];

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let peer: SocketAddr = "198.18.0.2:7717".parse().unwrap();
    let from: SocketAddr = "198.18.0.9:40000".parse().unwrap();
    let mut m = PathMachine::new(
        PathConfig::default(),
        GeId(1),
        GeId(2),
        &KEY,
        vec![peer],
        1_800_000_000,
        now,
    );
    let _ = m.handle_datagram(data, from, now);
    let Ok(view) = ProbeView::new_checked(data) else {
        return;
    };
    let repr = ProbeRepr::parse_unauthenticated(&view);
    assert_eq!(repr.buffer_len(), data.len());
    let key = ProbeKey::new(&KEY);
    let mut buf = [0u8; MAX_LEN];
    let n = repr.emit(&key, &mut buf).expect("a parsed repr emits");
    assert_eq!(&buf[..n - TAG_LEN], &data[..data.len() - TAG_LEN], "not canonical");
    // Signed under the right key: must verify and give the same fields.
    let signed = ProbeView::new_checked(&buf[..n]).expect("emitted bytes parse");
    assert_eq!(ProbeRepr::parse(&signed, &key).expect("own tag verifies"), repr);
    let first = m.handle_datagram(&buf[..n], from, now);
    let again = m.handle_datagram(&buf[..n], from, now);
    if first.is_ok() && repr.kind == ProbeKind::Probe {
        assert!(again.is_err(), "replayed probe accepted");
    }
    while m.poll_transmit().is_some() {}
    while m.poll_event().is_some() {}
    m.handle_timeout(now + Duration::from_secs(2));
    m.handle_timeout(now + Duration::from_secs(60));
    let _ = m.status().to_string();
});
