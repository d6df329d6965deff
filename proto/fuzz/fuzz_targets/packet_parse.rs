//! Parsing arbitrary bytes as an IP packet never panics, and on whatever
//! parses, every accessor and rewrite works and keeps checksums valid.
#![no_main]

use fpn_proto::packet::{Packet, Transport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The last byte says how much room to leave after the packet.
    let Some((&room, bytes)) = data.split_last() else {
        return;
    };
    let len = bytes.len();
    let mut buf = bytes.to_vec();
    buf.resize(len + usize::from(room % 64), 0);
    let Ok(mut p) = Packet::parse_prefix(&mut buf[..], len) else {
        return;
    };
    let _ = (p.flow_id(), p.transport(), p.payload().len(), p.hop_limit());
    let _ = (p.traffic_class(), p.compute_l4_checksum(), p.as_bytes().len());
    if let Transport::Tcp(t) = p.transport() {
        let _ = (t.mss(), t.seq(), t.ack(), t.flags(), t.window());
    }

    // Make both checksums valid, then every rewrite must keep them valid.
    p.fill_l4_checksum();
    assert!(p.l4_checksum_ok(), "fill_l4_checksum left a bad checksum");
    let ip_ok = p.ip_checksum_ok();
    let (src, dst) = (p.src(), p.dst());
    p.set_src(dst).unwrap();
    p.set_dst(src).unwrap();
    // Ports (ICMP: the echo identifier) chosen by the input, zero included.
    let port = u16::from_be_bytes([room, room.rotate_left(3)]);
    let _ = p.set_src_port(port);
    let _ = p.set_dst_port(!port);
    let _ = p.set_dst_port(port);
    let _ = p.clamp_mss(1200);
    let _ = p.reduce_mss(24);
    assert!(p.l4_checksum_ok(), "incremental update broke the L4 checksum");
    assert_eq!(p.ip_checksum_ok(), ip_ok, "address rewrite broke the IP checksum");
    let plen = p.payload().len();
    if p.set_payload_len(plen + p.room()).is_ok() {
        p.fill_l4_checksum();
        assert!(p.l4_checksum_ok());
        assert_eq!(p.ip_checksum_ok(), ip_ok, "length change broke the IP checksum");
        // What was written must parse again as the same flow.
        let n = p.len();
        let f = p.flow_id();
        let again = Packet::parse(&buf[..n]).expect("a grown packet parses");
        assert_eq!(again.flow_id(), f);
    }
});
