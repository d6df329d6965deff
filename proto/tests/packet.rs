//! Packet views: parsing, flow ids, rewrites with checksum updates, MSS
//! clamping, and a typed error for every malformed buffer. Checksums are
//! verified by etherparse, independently of fpn-proto's own routine.

mod packet_util;

use std::net::IpAddr;

use fpn_proto::Error;
use fpn_proto::flow::protocol;
use fpn_proto::packet::{IpVersion, MIN_MSS, Packet, Transport};
use packet_util::*;
use proptest::prelude::*;

fn all_kinds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("ipv4-udp", ipv4_udp(100)),
        ("ipv6-udp", ipv6_udp(100)),
        ("ipv4-tcp", ipv4_tcp(100)),
        ("ipv6-tcp", ipv6_tcp(100)),
        ("ipv4-icmp", ipv4_ping(0x4242, 7, 100)),
        ("ipv6-icmp", ipv6_ping(0x4242, 7, 100)),
    ]
}

#[test]
fn parses_every_supported_kind_and_extracts_the_flow() {
    for (name, pkt) in all_kinds() {
        let p = Packet::parse(&pkt[..]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.len(), pkt.len(), "{name}");
        assert_eq!(p.payload(), &payload(100)[..], "{name}");
        assert!(p.l4_checksum_ok(), "{name}");
        assert!(p.ip_checksum_ok(), "{name}");
        assert_eq!(p.compute_l4_checksum(), p.l4_checksum(), "{name}");
        assert_eq!(p.hop_limit(), 64, "{name}");
        let f = p.flow_id();
        let v6 = name.starts_with("ipv6");
        assert_eq!(p.version(), if v6 { IpVersion::V6 } else { IpVersion::V4 });
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (v6_src().into(), v6_dst().into())
        } else {
            (V4_SRC.into(), V4_DST.into())
        };
        assert_eq!((f.src, f.dst), (src, dst), "{name}");
        match p.transport() {
            Transport::Udp(u) => {
                assert_eq!((f.src_port, f.dst_port), (40000, 53));
                assert_eq!(usize::from(u.length()), 108);
                assert_eq!(f.protocol, protocol::UDP);
            }
            Transport::Tcp(t) => {
                assert_eq!((f.src_port, f.dst_port), (40000, 22));
                assert_eq!((t.seq(), t.ack()), (0x1234_5678, 0x0abc_def0));
                assert_eq!(f.protocol, protocol::TCP);
            }
            Transport::Icmp(i) => {
                // The echo identifier stands in for both ports.
                assert_eq!((f.src_port, f.dst_port), (0x4242, 0x4242));
                assert_eq!(i.echo_seq(), Some(7));
                let want = if v6 { protocol::ICMPV6 } else { protocol::ICMP };
                assert_eq!(f.protocol, want);
            }
        }
    }
}

#[test]
fn non_echo_icmp_has_no_ports() {
    let mut pkt = ipv4_ping(9, 1, 8);
    pkt[20] = 3; // destination unreachable
    pkt[21] = 1;
    pkt[24..28].copy_from_slice(&[0; 4]); // unused for this type
    let mut p = Packet::parse(&mut pkt[..]).unwrap();
    p.fill_l4_checksum();
    assert_eq!((p.flow_id().src_port, p.flow_id().dst_port), (0, 0));
    assert!(matches!(p.set_src_port(5), Err(Error::InvalidField { .. })));
    assert_valid(&pkt);
}

#[test]
fn address_and_port_rewrites_keep_checksums_valid() {
    for (name, mut pkt) in all_kinds() {
        let is_v6 = name.starts_with("ipv6");
        let (new_src, new_dst): (IpAddr, IpAddr) = if is_v6 {
            (v6("2001:db8::77").into(), v6("fd00:ffff::1").into())
        } else {
            ([198, 19, 255, 254].into(), [10, 1, 2, 3].into())
        };
        let mut p = Packet::parse(&mut pkt[..]).unwrap();
        p.set_src(new_src).unwrap();
        p.set_dst(new_dst).unwrap();
        p.set_src_port(61000).unwrap();
        p.set_dst_port(8443).unwrap();
        let f = p.flow_id();
        assert_eq!((f.src, f.dst), (new_src, new_dst), "{name}");
        if f.protocol == protocol::ICMP || f.protocol == protocol::ICMPV6 {
            // Both "ports" are the one echo identifier: the last write wins.
            assert_eq!((f.src_port, f.dst_port), (8443, 8443), "{name}");
        } else {
            assert_eq!((f.src_port, f.dst_port), (61000, 8443), "{name}");
        }
        assert!(p.l4_checksum_ok(), "{name}");
        assert_eq!(assert_valid(&pkt), payload(100), "{name}");
        // The other family is refused and changes nothing.
        let mut p = Packet::parse(&mut pkt[..]).unwrap();
        let other: IpAddr = if is_v6 {
            V4_SRC.into()
        } else {
            v6_src().into()
        };
        assert!(matches!(p.set_src(other), Err(Error::InvalidField { .. })));
        assert_valid(&pkt);
    }
}

#[test]
fn an_all_zero_icmp_message_gets_checksum_ffff() {
    // Found by the packet_parse fuzzer: an ICMPv4 message whose bytes are all
    // zero sums to exactly 0, so its checksum must be 0xffff; 0x0000 would
    // not verify (there is no pseudo-header to make the sum non-zero).
    for len in [0, 11, 64] {
        let mut pkt = Vec::new();
        etherparse::PacketBuilder::ipv4(V4_SRC, V4_DST, 64)
            .icmpv4_echo_reply(0, 0)
            .write(&mut pkt, &vec![0; len])
            .unwrap();
        let mut p = Packet::parse(&mut pkt[..]).unwrap();
        p.fill_l4_checksum();
        assert_eq!(p.l4_checksum(), 0xffff, "len {len}");
        assert!(p.l4_checksum_ok());
        assert_valid(&pkt);
    }
    // The same message reached by an incremental update (identifier 7 -> 0).
    let mut pkt = Vec::new();
    etherparse::PacketBuilder::ipv4(V4_SRC, V4_DST, 64)
        .icmpv4_echo_reply(7, 0)
        .write(&mut pkt, &[0; 8])
        .unwrap();
    let mut p = Packet::parse(&mut pkt[..]).unwrap();
    p.set_src_port(0).unwrap();
    assert_eq!(p.l4_checksum(), 0xffff);
    assert!(p.l4_checksum_ok());
    assert_valid(&pkt);
}

#[test]
fn zero_udp_checksum_over_ipv4_stays_zero_on_rewrite() {
    let mut pkt = ipv4_udp(10);
    pkt[26..28].copy_from_slice(&[0, 0]);
    let mut p = Packet::parse(&mut pkt[..]).unwrap();
    assert!(p.l4_checksum_ok(), "zero means not computed");
    p.set_src([198, 18, 9, 9].into()).unwrap();
    p.set_dst_port(99).unwrap();
    assert_eq!(p.l4_checksum(), 0);
    assert!(p.ip_checksum_ok());
    // Over IPv6 a zero UDP checksum is invalid.
    let mut pkt = ipv6_udp(10);
    pkt[46..48].copy_from_slice(&[0, 0]);
    assert!(!Packet::parse(&pkt[..]).unwrap().l4_checksum_ok());
}

#[test]
fn full_checksum_recomputation_matches_etherparse() {
    for (name, mut pkt) in all_kinds() {
        let mut p = Packet::parse(&mut pkt[..]).unwrap();
        let good = p.l4_checksum();
        p.payload_mut()[3] ^= 0x40;
        assert!(!p.l4_checksum_ok(), "{name}: corruption must show");
        p.fill_l4_checksum();
        assert_ne!(p.l4_checksum(), good, "{name}");
        assert_valid(&pkt);
    }
    // Odd payload lengths pad with a zero byte.
    for len in [0, 1, 3, 63, 1401] {
        let mut pkt = ipv6_tcp(len);
        let mut p = Packet::parse(&mut pkt[..]).unwrap();
        p.payload_mut().iter_mut().for_each(|b| *b = !*b);
        p.fill_l4_checksum();
        assert_valid(&pkt);
    }
}

#[test]
fn mss_is_clamped_on_syn_and_syn_ack() {
    for ipv6 in [false, true] {
        for syn_ack in [false, true] {
            let mut pkt = tcp_syn(ipv6, 1460, syn_ack);
            let mut p = Packet::parse(&mut pkt[..]).unwrap();
            assert_eq!(p.clamp_mss(1400).unwrap(), Some(1460));
            assert_eq!(p.clamp_mss(1400).unwrap(), None, "already at the limit");
            assert_eq!(p.clamp_mss(9000).unwrap(), None, "never raised");
            assert_eq!(mss_of(&pkt), Some(1400));
            assert_valid(&pkt);
            let mut p = Packet::parse(&mut pkt[..]).unwrap();
            assert_eq!(p.reduce_mss(24).unwrap(), Some(1400));
            assert_eq!(mss_of(&pkt), Some(1376));
            assert_valid(&pkt);
        }
    }
}

#[test]
fn mss_clamp_handles_an_odd_offset_and_the_floor() {
    // NOP, then MSS at an odd offset of the TCP header, then padding.
    let mut pkt = tcp_syn_raw_options(&[1, 2, 4, 0x05, 0xb4, 0, 0, 0]);
    let mut p = Packet::parse(&mut pkt[..]).unwrap();
    assert_eq!(p.clamp_mss(1300).unwrap(), Some(1460));
    assert_eq!(mss_of(&pkt), Some(1300));
    assert_valid(&pkt);
    let mut p = Packet::parse(&mut pkt[..]).unwrap();
    assert_eq!(p.clamp_mss(1).unwrap(), Some(1300));
    assert_eq!(mss_of(&pkt), Some(MIN_MSS));
    assert_valid(&pkt);
}

#[test]
fn mss_clamp_leaves_other_segments_alone() {
    let mut data = ipv4_tcp(10);
    assert_eq!(
        Packet::parse(&mut data[..])
            .unwrap()
            .clamp_mss(100)
            .unwrap(),
        None
    );
    let mut udp = ipv4_udp(10);
    assert_eq!(
        Packet::parse(&mut udp[..]).unwrap().clamp_mss(100).unwrap(),
        None
    );
    let mut no_mss = tcp_syn_raw_options(&[1, 1, 1, 0]);
    let before = no_mss.clone();
    assert_eq!(
        Packet::parse(&mut no_mss[..])
            .unwrap()
            .clamp_mss(100)
            .unwrap(),
        None
    );
    assert_eq!(no_mss, before);
}

#[test]
fn garbage_tcp_options_are_an_error_and_change_nothing() {
    for opts in [
        &[2u8, 4, 5, 0xb4, 8, 0, 0, 0][..], // option with length 0
        &[1, 1, 1, 2],                      // MSS cut off by the header end
        &[2, 3, 5, 0],                      // MSS with length 3
        &[3, 3, 7, 8, 10, 2, 0, 0],         // timestamp running past the end
    ] {
        let mut pkt = tcp_syn_raw_options(opts);
        let before = pkt.clone();
        let mut p = Packet::parse(&mut pkt[..]).unwrap();
        assert!(
            matches!(p.clamp_mss(100), Err(Error::MalformedPacket(_))),
            "{opts:?}"
        );
        assert_eq!(pkt, before);
    }
}

#[test]
fn payload_length_changes_fix_the_length_fields() {
    for (name, pkt) in all_kinds() {
        let (mut buf, len) = with_room(&pkt, 50);
        let mut p = Packet::parse_prefix(&mut buf[..], len).unwrap();
        assert_eq!(p.room(), 50);
        assert!(matches!(
            p.set_payload_len(151),
            Err(Error::BufferTooSmall { .. })
        ));
        p.set_payload_len(150).unwrap();
        p.fill_l4_checksum();
        assert_eq!(p.len(), pkt.len() + 50, "{name}");
        assert_valid(&buf);
        let mut p = Packet::parse(&mut buf[..]).unwrap();
        p.set_payload_len(100).unwrap();
        p.fill_l4_checksum();
        assert_eq!(assert_valid(&buf[..len]), payload(100), "{name}");
    }
}

#[test]
fn trailing_bytes_after_the_ip_length_are_room() {
    let mut pkt = ipv4_udp(10);
    let len = pkt.len();
    pkt.extend_from_slice(&[0xee; 6]); // Ethernet-style padding
    let p = Packet::parse(&pkt[..]).unwrap();
    assert_eq!((p.len(), p.room()), (len, 6));
    assert!(matches!(
        Packet::parse_prefix(&pkt[..], pkt.len() + 1),
        Err(Error::BufferTooSmall { .. })
    ));
}

/// Rewrites an IPv6 UDP packet to carry `exts` (kind, header bytes) between
/// the fixed header and UDP.
fn ipv6_with_extensions(exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let base = ipv6_udp(16);
    let mut out = base[..40].to_vec();
    let mut kinds: Vec<u8> = exts.iter().map(|(k, _)| *k).collect();
    kinds.push(protocol::UDP);
    out[6] = kinds[0];
    for (i, (_, body)) in exts.iter().enumerate() {
        let mut h = body.clone();
        h[0] = kinds[i + 1];
        out.extend_from_slice(&h);
    }
    out.extend_from_slice(&base[40..]);
    let pl = (out.len() - 40) as u16;
    out[4..6].copy_from_slice(&pl.to_be_bytes());
    out
}

fn opts_header() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0] // PadN filling 8 bytes
}

fn fragment_header(offset: u16, more: bool) -> Vec<u8> {
    let v = (offset << 3) | u16::from(more);
    let mut h = vec![0, 0];
    h.extend_from_slice(&v.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x12, 0x34]);
    h
}

#[test]
fn ipv6_extension_headers_are_walked_and_bounded() {
    const HOP: u8 = 0;
    const DEST: u8 = 60;
    const ROUTING: u8 = 43;
    const FRAG: u8 = 44;
    let ok = ipv6_with_extensions(&[
        (HOP, opts_header()),
        (ROUTING, opts_header()),
        (DEST, opts_header()),
        (FRAG, fragment_header(0, false)), // atomic fragment: a whole datagram
    ]);
    let p = Packet::parse(&ok[..]).unwrap();
    assert_eq!(p.ip_header_len(), 40 + 32);
    assert_eq!(p.flow_id().dst_port, 53);
    assert!(p.l4_checksum_ok());
    assert_valid(&ok);

    let eight: Vec<_> = (0..8).map(|_| (DEST, opts_header())).collect();
    Packet::parse(&ipv6_with_extensions(&eight)[..]).unwrap();
    let nine: Vec<_> = (0..9).map(|_| (DEST, opts_header())).collect();
    assert!(matches!(
        Packet::parse(&ipv6_with_extensions(&nine)[..]),
        Err(Error::TooLarge { .. })
    ));
    let late_hop = ipv6_with_extensions(&[(DEST, opts_header()), (HOP, opts_header())]);
    assert!(matches!(
        Packet::parse(&late_hop[..]),
        Err(Error::MalformedPacket(_))
    ));
    let mut long = ipv6_with_extensions(&[(DEST, opts_header())]);
    long[41] = 200; // header claims 1608 bytes
    assert!(matches!(
        Packet::parse(&long[..]),
        Err(Error::Truncated { .. })
    ));
    let first = ipv6_with_extensions(&[(FRAG, fragment_header(0, true))]);
    assert_eq!(
        Packet::parse(&first[..]).unwrap_err(),
        Error::Fragment { first: true }
    );
    let later = ipv6_with_extensions(&[(FRAG, fragment_header(185, false))]);
    assert_eq!(
        Packet::parse(&later[..]).unwrap_err(),
        Error::Fragment { first: false }
    );
    for unsupported in [50u8, 51, 59, 135] {
        let mut p = ipv6_udp(4);
        p[6] = unsupported;
        assert_eq!(
            Packet::parse(&p[..]).unwrap_err(),
            Error::UnsupportedProtocol(unsupported)
        );
    }
}

/// Applies `f` to a copy of `pkt` and returns the parse error.
fn broken(pkt: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Error {
    let mut p = pkt.to_vec();
    f(&mut p);
    Packet::parse(&p[..]).expect_err("must be refused")
}

#[test]
fn every_malformed_buffer_is_a_typed_error() {
    use Error::*;
    let v4 = ipv4_udp(20);
    let tcp = ipv4_tcp(20);
    let v6 = ipv6_udp(20);
    assert!(matches!(
        Packet::parse(&[][..]).unwrap_err(),
        Truncated { .. }
    ));
    assert_eq!(broken(&v4, |p| p[0] = 0x55), IpVersion(5));
    assert!(matches!(broken(&v4, |p| p.truncate(19)), Truncated { .. }));
    assert!(matches!(broken(&v4, |p| p[0] = 0x44), MalformedPacket(_)));
    assert!(matches!(broken(&v4, |p| p[0] = 0x4f), Truncated { .. }));
    assert!(matches!(broken(&v4, |p| p.truncate(40)), Truncated { .. }));
    assert!(matches!(
        broken(&v4, |p| p[2..4].copy_from_slice(&[0, 19])),
        MalformedPacket(_)
    ));
    assert_eq!(broken(&v4, |p| p[6] = 0x20), Fragment { first: true });
    assert_eq!(broken(&v4, |p| p[7] = 0x10), Fragment { first: false });
    assert_eq!(broken(&v4, |p| p[9] = 47), UnsupportedProtocol(47));
    assert_eq!(broken(&v4, |p| p[9] = 58), UnsupportedProtocol(58));
    // UDP: length field disagreeing with the IP length, or too short a datagram.
    assert!(matches!(broken(&v4, |p| p[25] ^= 1), MalformedPacket(_)));
    assert!(matches!(
        broken(&v4, |p| {
            p.truncate(24);
            p[2..4].copy_from_slice(&24u16.to_be_bytes());
        }),
        Truncated { .. }
    ));
    // TCP: data offset below 5 or past the segment.
    assert!(matches!(broken(&tcp, |p| p[32] = 0x40), MalformedPacket(_)));
    assert!(matches!(
        broken(&tcp, |p| {
            p.truncate(44);
            p[2..4].copy_from_slice(&44u16.to_be_bytes());
            p[32] = 0x70;
        }),
        Truncated { .. }
    ));
    // ICMP shorter than its 8-byte header.
    assert!(matches!(
        broken(&ipv4_ping(1, 1, 0), |p| {
            p.truncate(24);
            p[2..4].copy_from_slice(&24u16.to_be_bytes());
        }),
        Truncated { .. }
    ));
    // IPv6: short header, payload length past the buffer, ICMP over IPv6.
    assert!(matches!(broken(&v6, |p| p.truncate(39)), Truncated { .. }));
    assert!(matches!(broken(&v6, |p| p[4] = 1), Truncated { .. }));
    assert_eq!(broken(&v6, |p| p[6] = 1), UnsupportedProtocol(1));
}

fn check_everything<T: AsRef<[u8]> + AsMut<[u8]>>(mut p: Packet<T>) {
    // Every accessor and mutator must be total on a checked packet.
    let _ = (
        p.flow_id(),
        p.transport(),
        p.payload().len(),
        p.l4_header().len(),
    );
    let _ = (
        p.l4_checksum_ok(),
        p.ip_checksum_ok(),
        p.compute_l4_checksum(),
    );
    let _ = (
        p.hop_limit(),
        p.traffic_class(),
        p.room(),
        p.as_bytes().len(),
    );
    if let Transport::Tcp(t) = p.transport() {
        let _ = (t.mss(), t.options().len(), t.window(), t.urgent());
    }
    let _ = p.clamp_mss(536);
    let _ = p.set_src_port(1);
    let _ = p.set_dst_port(2);
    let src = p.src();
    let _ = p.set_dst(src);
    let len = p.payload().len();
    let _ = p.set_payload_len(len + 3);
    let _ = p.set_payload_len(0);
    p.fill_l4_checksum();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(p) = Packet::parse(&mut bytes[..]) {
            check_everything(p);
        }
    }

    #[test]
    fn mutated_valid_packets_never_panic(
        kind in 0usize..6,
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..6),
        cut in any::<u16>(),
        room in 0usize..40,
    ) {
        let mut pkt = all_kinds().swap_remove(kind).1;
        for (at, v) in edits {
            let i = usize::from(at) % pkt.len();
            pkt[i] = v;
        }
        let len = usize::from(cut) % (pkt.len() + 1);
        pkt.truncate(len);
        pkt.resize(len + room, 0);
        if let Ok(p) = Packet::parse_prefix(&mut pkt[..], len) {
            check_everything(p);
        }
    }
}
