//! Changing a TCP, UDP or ICMP echo packet's IP family in place (the
//! stateless part of RFC 7915, SIIT): how an IPv6 overlay packet crosses an
//! IPv4 underlay on the native path and comes back, and how an IPv6 flow
//! to a host behind a gateway (a VIN) becomes the IPv4 flow the gateway
//! serves (docs/DESIGN-NOTES.md notes 59 and 60).
//!
//! The transport header and payload (PCCOM's ciphertext and trailer) stay
//! byte for byte; only the IP header is replaced, and the transport
//! checksum is updated for the other pseudo-header. PCCOM binds neither
//! the addresses nor the IP version (docs/PROTOCOL.md, "Associated data"),
//! so a packet sealed as IPv6 opens after two translations.
//!
//! An ICMP echo request or reply (ICMPv6 128/129, ICMP 8/0) crosses with
//! its type changed and its checksum computed afresh (ICMPv6's covers a
//! pseudo-header, ICMP's does not); it is a few dozen bytes, so the
//! full sum costs nothing that matters. Other ICMP messages do not cross.
//!
//! What does not cross: IPv6 extension headers and IPv4 options (the
//! packet is refused: the caller sends it another way), the flow label,
//! the IPv4 identification (the IPv4 packet has DF set and ID 0, as
//! RFC 6864 allows for atomic datagrams). Traffic class and TOS, hop limit
//! and TTL map one to one.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum::{Sum, checksum, update_bytes};
use crate::flow::protocol;
use crate::{Error, Result};

/// How much shorter the IPv4 header is than the IPv6 one.
pub const HEADER_DELTA: usize = 20;

/// Whether an IP header of `ip_header` bytes (of an IPv4 packet when
/// `v4`, else IPv6) is plain enough to change family: IPv4 without
/// options, IPv6 without extension headers ([`v4_to_v6`], [`v6_to_v4`]).
pub fn plain_header(v4: bool, ip_header: usize) -> bool {
    ip_header
        == if v4 {
            20
        } else {
            crate::packet::IPV6_HEADER_LEN
        }
}

/// Offset of the transport checksum in a TCP or UDP header.
fn checksum_at(proto: u8) -> Option<usize> {
    match proto {
        protocol::TCP => Some(16),
        protocol::UDP => Some(6),
        _ => None,
    }
}

/// The ICMP echo types: (ICMPv6, ICMP) for request and reply.
const ECHO_TYPES: [(u8, u8); 2] = [(128, 8), (129, 0)];

/// Rewrites the IPv6 TCP, UDP or ICMPv6 echo packet in `buf[..len]` (no
/// extension header) as the IPv4 packet `src -> dst` in
/// `buf[HEADER_DELTA..len]` and returns that range's start. A TCP or UDP
/// packet must carry a valid transport checksum.
pub fn v6_to_v4(buf: &mut [u8], len: usize, src: Ipv4Addr, dst: Ipv4Addr) -> Result<usize> {
    const WHAT: &str = "IPv6 packet for IPv4";
    if len > buf.len() || len < 40 + 8 || buf[0] >> 4 != 6 {
        return Err(Error::invalid(WHAT, "not a whole IPv6 packet"));
    }
    let payload_len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    if 40 + payload_len != len || len - HEADER_DELTA > usize::from(u16::MAX) {
        return Err(Error::invalid(WHAT, "length does not match the header"));
    }
    let mut new = [0u8; 8];
    new[..4].copy_from_slice(&src.octets());
    new[4..].copy_from_slice(&dst.octets());
    let mut proto = buf[6];
    if proto == protocol::ICMPV6 {
        let t = ECHO_TYPES
            .iter()
            .find(|(v6, _)| *v6 == buf[40])
            .filter(|_| buf[41] == 0)
            .ok_or(Error::invalid(WHAT, "an ICMPv6 message other than echo"))?;
        proto = protocol::ICMP;
        buf[40] = t.1;
        buf[42..44].copy_from_slice(&[0, 0]);
        let c = checksum(&buf[40..len]);
        buf[42..44].copy_from_slice(&c.to_be_bytes());
    } else {
        let at = checksum_at(proto).ok_or(Error::invalid(WHAT, "neither TCP, UDP nor echo"))?;
        let mut old = [0u8; 32];
        old.copy_from_slice(&buf[8..40]);
        // The pseudo-headers differ only in the addresses: length and
        // protocol sum to the same (RFC 8200 8.1 as 32-bit words, RFC
        // 793/768 as 16-bit).
        let c = u16::from_be_bytes([buf[40 + at], buf[40 + at + 1]]);
        let mut c = update_bytes_unequal(c, &old, &new);
        if c == 0 && proto == protocol::UDP {
            c = 0xffff;
        }
        buf[40 + at..40 + at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let (tc, hop) = (((buf[0] & 0x0f) << 4) | (buf[1] >> 4), buf[7]);
    let h = &mut buf[HEADER_DELTA..40];
    let total = (len - HEADER_DELTA) as u16;
    h[0] = 0x45;
    h[1] = tc;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&[0, 0]);
    h[6..8].copy_from_slice(&[0x40, 0]);
    h[8] = hop;
    h[9] = proto;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..20].copy_from_slice(&new);
    let ip = checksum(h);
    h[10..12].copy_from_slice(&ip.to_be_bytes());
    Ok(HEADER_DELTA)
}

/// Rewrites the IPv4 TCP, UDP or ICMP echo packet in `buf[..len]` (no
/// options) as the IPv6 packet `src -> dst`, `HEADER_DELTA` bytes longer,
/// in place, and returns its length. `buf` must have the room.
pub fn v4_to_v6(buf: &mut [u8], len: usize, src: Ipv6Addr, dst: Ipv6Addr) -> Result<usize> {
    const WHAT: &str = "IPv4 packet for IPv6";
    if len > buf.len() || len < 20 + 8 || buf[0] != 0x45 {
        return Err(Error::invalid(
            WHAT,
            "not a whole IPv4 packet without options",
        ));
    }
    if len + HEADER_DELTA > buf.len() {
        return Err(Error::invalid(WHAT, "no room for the IPv6 header"));
    }
    let total = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    // A fragment has no whole transport header to carry over.
    let fragment = u16::from_be_bytes([buf[6], buf[7]]) & 0x3fff != 0;
    if total != len || fragment {
        return Err(Error::invalid(WHAT, "length or fragment offset"));
    }
    let mut proto = buf[9];
    let echo = if proto == protocol::ICMP {
        let t = ECHO_TYPES
            .iter()
            .find(|(_, v4)| *v4 == buf[20])
            .filter(|_| buf[21] == 0)
            .ok_or(Error::invalid(WHAT, "an ICMP message other than echo"))?;
        Some(t.0)
    } else {
        None
    };
    let at = match echo {
        Some(_) => 0,
        None => checksum_at(proto).ok_or(Error::invalid(WHAT, "neither TCP, UDP nor echo"))?,
    };
    let (tos, ttl) = (buf[1], buf[8]);
    let mut old = [0u8; 8];
    old.copy_from_slice(&buf[12..20]);
    let mut new = [0u8; 32];
    new[..16].copy_from_slice(&src.octets());
    new[16..].copy_from_slice(&dst.octets());
    buf.copy_within(20..len, 40);
    let l4_len = len - 20;
    let l4 = &mut buf[40..40 + l4_len];
    if let Some(t) = echo {
        proto = protocol::ICMPV6;
        l4[0] = t;
        l4[2..4].copy_from_slice(&[0, 0]);
        let c = Sum::new()
            .add_bytes(&new)
            .add_u32(l4_len as u32)
            .add_u16(u16::from(proto))
            .add_bytes(l4)
            .finish();
        l4[2..4].copy_from_slice(&c.to_be_bytes());
    } else {
        let c = u16::from_be_bytes([l4[at], l4[at + 1]]);
        let c = if c == 0 && proto == protocol::UDP {
            // No checksum over IPv4; IPv6 requires one (RFC 8200 8.1).
            l4[at..at + 2].copy_from_slice(&[0, 0]);
            let sum = Sum::new()
                .add_bytes(&new)
                .add_u32(l4_len as u32)
                .add_u16(u16::from(proto))
                .add_bytes(l4)
                .finish();
            if sum == 0 { 0xffff } else { sum }
        } else {
            let c = update_bytes_unequal(c, &old, &new);
            if c == 0 && proto == protocol::UDP {
                0xffff
            } else {
                c
            }
        };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let h = &mut buf[..40];
    h[0] = 0x60 | (tos >> 4);
    h[1] = tos << 4;
    h[2..4].copy_from_slice(&[0, 0]);
    h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    h[6] = proto;
    h[7] = ttl;
    h[8..40].copy_from_slice(&new);
    Ok(len + HEADER_DELTA)
}

/// [`update_bytes`] for runs of different lengths (16 address bytes
/// replaced by 4, and back).
fn update_bytes_unequal(check: u16, old: &[u8], new: &[u8]) -> u16 {
    let removed = Sum::new().add_bytes(old).fold();
    let added = Sum::new().add_bytes(new).fold();
    update_bytes(check, &removed.to_be_bytes(), &added.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Packet;

    fn v6(proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let b = etherparse::PacketBuilder::ipv6(
            "fd00::6440:1".parse::<Ipv6Addr>().unwrap().octets(),
            "fd00::6440:2".parse::<Ipv6Addr>().unwrap().octets(),
            61,
        );
        if proto == protocol::TCP {
            b.tcp(4000, 5001, 77, 1000)
                .ack(5)
                .write(&mut out, payload)
                .unwrap();
        } else {
            b.udp(4000, 5001).write(&mut out, payload).unwrap();
        }
        out[0] = 0x6b; // traffic class 0xb8 (EF)
        out[1] = 0x80 | (out[1] & 0x0f);
        out
    }

    #[test]
    fn tcp_and_udp_cross_to_ipv4_and_back_unchanged() {
        for proto in [protocol::TCP, protocol::UDP] {
            let orig = v6(proto, b"sealed payload and its trailer");
            let mut buf = orig.clone();
            buf.resize(orig.len() + 64, 0);
            let (s4, d4) = (Ipv4Addr::new(198, 18, 2, 2), Ipv4Addr::new(198, 18, 3, 2));
            let start = v6_to_v4(&mut buf, orig.len(), s4, d4).unwrap();
            let len4 = orig.len() - HEADER_DELTA;
            {
                let p = Packet::parse(&buf[start..start + len4]).unwrap();
                assert!(p.ip_checksum_ok());
                assert!(p.l4_checksum_ok(), "proto {proto}");
                let f = p.flow_id();
                assert_eq!((f.src, f.dst), (s4.into(), d4.into()));
                assert_eq!((f.src_port, f.dst_port, f.protocol), (4000, 5001, proto));
                assert_eq!(p.hop_limit(), 61);
                assert_eq!(p.traffic_class(), 0xb8);
                assert_eq!(p.payload(), b"sealed payload and its trailer");
                assert_eq!(buf[start + 6], 0x40, "DF");
            }
            // The receiver gets it at the start of its buffer.
            buf.copy_within(start..start + len4, 0);
            let (s6, d6) = (
                "fd00::6440:1".parse().unwrap(),
                "fd00::6440:2".parse().unwrap(),
            );
            let n = v4_to_v6(&mut buf, len4, s6, d6).unwrap();
            assert_eq!(&buf[..n], &orig[..], "proto {proto}");
        }
    }

    #[test]
    fn an_echo_request_and_reply_cross_with_their_types_and_sums() {
        for (request, t6, t4) in [(true, 128, 8), (false, 129, 0)] {
            let mut orig = Vec::new();
            let b = etherparse::PacketBuilder::ipv6(
                "fd00::6440:1".parse::<Ipv6Addr>().unwrap().octets(),
                "fd00::647f:9".parse::<Ipv6Addr>().unwrap().octets(),
                64,
            );
            let b = if request {
                b.icmpv6_echo_request(0x1234, 7)
            } else {
                b.icmpv6_echo_reply(0x1234, 7)
            };
            b.write(&mut orig, b"ping payload").unwrap();
            assert_eq!(orig[40], t6);
            let mut buf = orig.clone();
            buf.resize(orig.len() + 20, 0);
            let (s4, d4) = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 127, 0, 9));
            let start = v6_to_v4(&mut buf, orig.len(), s4, d4).unwrap();
            let len4 = orig.len() - HEADER_DELTA;
            {
                let p = Packet::parse(&buf[start..start + len4]).unwrap();
                assert!(p.ip_checksum_ok());
                let f = p.flow_id();
                assert_eq!(
                    (f.src, f.dst, f.protocol),
                    (s4.into(), d4.into(), protocol::ICMP)
                );
                assert_eq!(buf[start + 20], t4);
                assert_eq!(checksum(&buf[start + 20..start + len4]), 0, "ICMP sum");
                assert_eq!(&buf[start + 24..start + 28], &[0x12, 0x34, 0, 7]);
            }
            buf.copy_within(start..start + len4, 0);
            let n = v4_to_v6(
                &mut buf,
                len4,
                "fd00::6440:1".parse().unwrap(),
                "fd00::647f:9".parse().unwrap(),
            )
            .unwrap();
            assert_eq!(&buf[..n], &orig[..], "request {request}");
        }
        // Other ICMP messages stay where they are.
        let mut unreachable = vec![0u8; 48];
        unreachable[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 8, protocol::ICMPV6, 64]);
        unreachable[40] = 1;
        let copy = unreachable.clone();
        assert!(
            v6_to_v4(
                &mut unreachable,
                48,
                [1, 1, 1, 1].into(),
                [2, 2, 2, 2].into()
            )
            .is_err()
        );
        assert_eq!(unreachable, copy);
    }

    #[test]
    fn a_udp_packet_without_checksum_gets_one_in_ipv6() {
        let orig = v6(protocol::UDP, b"x");
        let mut buf = orig.clone();
        buf.resize(128, 0);
        let start = v6_to_v4(
            &mut buf,
            orig.len(),
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
        )
        .unwrap();
        let len4 = orig.len() - HEADER_DELTA;
        buf.copy_within(start..start + len4, 0);
        buf[26..28].copy_from_slice(&[0, 0]);
        let n = v4_to_v6(
            &mut buf,
            len4,
            "fd00::6440:1".parse().unwrap(),
            "fd00::6440:2".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(&buf[..n], &orig[..]);
    }

    proptest::proptest! {
        /// The fuzz target's property (fuzz/fuzz_targets/packet_family.rs)
        /// on generated packets: any TCP, UDP or echo packet crosses and comes
        /// back the same but for the flow label; arbitrary wire bytes never
        /// panic the receiver.
        #[test]
        fn any_packet_round_trips_and_any_bytes_are_safe(
            kind in 0u8..3,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..1400),
            tc in proptest::num::u8::ANY,
            hop in proptest::num::u8::ANY,
            ports in (proptest::num::u16::ANY, proptest::num::u16::ANY),
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
        ) {
            let mut orig = Vec::new();
            let b = etherparse::PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], hop);
            match kind {
                0 => b.tcp(ports.0, ports.1, 9, 512).write(&mut orig, &payload).unwrap(),
                1 => b.udp(ports.0, ports.1).write(&mut orig, &payload).unwrap(),
                _ => b.icmpv6_echo_request(ports.0, ports.1).write(&mut orig, &payload).unwrap(),
            }
            orig[0] = 0x60 | (tc >> 4);
            orig[1] = (tc << 4) | (orig[1] & 0x0f);
            let len = orig.len();
            let mut buf = orig.clone();
            buf.resize(len + 20, 0);
            let start = v6_to_v4(&mut buf, len, [10, 0, 0, 1].into(), [10, 0, 0, 2].into()).unwrap();
            {
                let p = Packet::parse(&buf[start..len]).unwrap();
                let l4_ok = if kind == 2 { checksum(&buf[start + 20..len]) == 0 } else { p.l4_checksum_ok() };
                proptest::prop_assert!(p.ip_checksum_ok() && l4_ok);
            }
            buf.copy_within(start..len, 0);
            let n = v4_to_v6(&mut buf, len - start, [0xfd; 16].into(), [0xfe; 16].into()).unwrap();
            let back = Packet::parse(&buf[..n]).unwrap();
            proptest::prop_assert!(back.l4_checksum_ok());
            let at = 40 + [16, 6, 2][usize::from(kind)];
            let (mut got, mut want) = (buf[..n].to_vec(), orig.clone());
            for v in [&mut got, &mut want] {
                v[at] = 0;
                v[at + 1] = 0;
            }
            proptest::prop_assert_eq!(got, want);
            let mut wire = junk.clone();
            wire.resize(junk.len() + 20, 0);
            let _ = v4_to_v6(&mut wire, junk.len(), [0xfd; 16].into(), [0xfe; 16].into());
            let mut w6 = junk.clone();
            let _ = v6_to_v4(&mut w6, junk.len(), [1, 1, 1, 1].into(), [2, 2, 2, 2].into());
        }
    }

    #[test]
    fn what_cannot_cross_is_refused_and_left_alone() {
        // An extension header, ICMPv6, a short buffer, a length mismatch.
        let mut ext = v6(protocol::UDP, b"x");
        ext[6] = 0; // hop-by-hop options
        let mut icmp = v6(protocol::UDP, b"x");
        icmp[6] = protocol::ICMPV6;
        let mut wrong_len = v6(protocol::TCP, b"x");
        wrong_len[5] ^= 1;
        for p in [ext, icmp, wrong_len] {
            let mut b = p.clone();
            assert!(v6_to_v4(&mut b, p.len(), [1, 1, 1, 1].into(), [2, 2, 2, 2].into()).is_err());
            assert_eq!(b, p);
        }
        assert!(
            v6_to_v4(
                &mut [0x60; 30],
                30,
                [1, 1, 1, 1].into(),
                [2, 2, 2, 2].into()
            )
            .is_err()
        );
        // IPv4 with options, a fragment, no room.
        let orig = v6(protocol::TCP, b"abc");
        let mut buf = orig.clone();
        let start = v6_to_v4(
            &mut buf,
            orig.len(),
            [1, 1, 1, 1].into(),
            [2, 2, 2, 2].into(),
        )
        .unwrap();
        let v4 = buf[start..].to_vec();
        let s6: Ipv6Addr = "fd00::1".parse().unwrap();
        let mut no_room = v4.clone();
        assert!(v4_to_v6(&mut no_room, v4.len(), s6, s6).is_err());
        let mut frag = v4.clone();
        frag[7] = 1;
        frag.resize(v4.len() + 20, 0);
        assert!(v4_to_v6(&mut frag, v4.len(), s6, s6).is_err());
        let mut opts = v4.clone();
        opts[0] = 0x46;
        opts.resize(v4.len() + 20, 0);
        assert!(v4_to_v6(&mut opts, v4.len(), s6, s6).is_err());
    }
}
