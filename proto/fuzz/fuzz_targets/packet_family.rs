//! Changing an arbitrary packet's IP family never panics; what converts
//! (TCP, UDP, ICMP echo)
//! to IPv4 and back is the packet it started as, with valid checksums on
//! the way (the receiver's `v4_to_v6` meets whatever the wire brings).
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use fpn_proto::packet::Packet;
use fpn_proto::packet::family::{HEADER_DELTA, v4_to_v6, v6_to_v4};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The last byte says how much room to leave after the packet.
    let Some((&room, bytes)) = data.split_last() else {
        return;
    };
    let len = bytes.len();
    let mut buf = bytes.to_vec();
    buf.resize(len + usize::from(room % 48), 0);
    let s6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x6440, 1);
    let d6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x6440, 2);

    // Arbitrary bytes as the wire's IPv4 packet.
    let mut wire = buf.clone();
    if let Ok(n) = v4_to_v6(&mut wire, len, s6, d6) {
        assert_eq!(n, len + HEADER_DELTA);
        let _ = Packet::parse(&wire[..n]).map(|p| p.flow_id());
    }

    // Arbitrary bytes as a sealed IPv6 packet: only a checked one with a
    // valid transport checksum is what the node converts.
    let Ok(mut p) = Packet::parse(&mut buf[..len]) else {
        return;
    };
    p.fill_l4_checksum();
    drop(p);
    let orig = buf[..len].to_vec();
    let (s4, d4) = (Ipv4Addr::new(198, 18, 2, 2), Ipv4Addr::new(198, 18, 3, 2));
    let Ok(start) = v6_to_v4(&mut buf, len, s4, d4) else {
        assert_eq!(&buf[..len], &orig[..], "a refused packet was changed");
        return;
    };
    let n4 = len - start;
    {
        let p4 = Packet::parse(&buf[start..len]).expect("the IPv4 packet parses");
        assert!(p4.ip_checksum_ok() && p4.l4_checksum_ok(), "bad IPv4 checksums");
    }
    // Back, with the overlay addresses the original had.
    let (src, dst) = match Packet::parse(&orig[..]).map(|p| (p.src(), p.dst())) {
        Ok((std::net::IpAddr::V6(s), std::net::IpAddr::V6(d))) => (s, d),
        _ => panic!("v6_to_v4 took a packet that is not IPv6"),
    };
    buf.copy_within(start..len, 0);
    let n = v4_to_v6(&mut buf, n4, src, dst).expect("the way back");
    assert_eq!(n, len);
    let back = Packet::parse(&buf[..n]).expect("the IPv6 packet parses");
    assert!(back.l4_checksum_ok(), "bad IPv6 checksum after the round trip");
    // The same packet but for the flow label (it does not cross) and the
    // checksum's spelling (0x0000 and 0xffff are the same sum).
    let mut want = orig;
    want[1] &= 0xf0;
    want[2] = 0;
    want[3] = 0;
    // TCP's, UDP's or ICMPv6 echo's checksum field.
    let at = 40 + match want[6] {
        6 => 16,
        17 => 6,
        _ => 2,
    };
    let mut got = buf[..n].to_vec();
    for v in [&mut want, &mut got] {
        v[at] = 0;
        v[at + 1] = 0;
    }
    assert_eq!(got, want, "the round trip changed the packet");
});
