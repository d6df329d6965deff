//! GSO segmentation of TUN super-packets, checked by etherparse: every
//! segment is a valid packet, the payloads add up to the original, TCP
//! sequence numbers are contiguous, flags and IPv4 identifications are what
//! Linux's own segmentation produces; malformed headers are typed errors.

mod packet_util;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};
use fpn_proto::Error;
use fpn_proto::packet::gso::{SegmentBuffers, Segments};
use fpn_proto::packet::vnet::{GsoKind, VNET_HDR_LEN, VnetRepr, complete_checksum};
use packet_util::{V4_DST, V4_SRC, assert_valid, payload, v6_dst, v6_src};
use proptest::prelude::*;

/// A TSO/USO super-packet as Linux hands it to an offloading TUN: full IP
/// lengths, TCP with timestamps, the transport checksum field only partial
/// (here garbage: it must not be trusted). Returns the packet and its header.
fn super_packet(v6: bool, tcp: bool, len: usize, mss: u16, flags: u8) -> (Vec<u8>, VnetRepr) {
    let b = if v6 {
        PacketBuilder::ipv6(v6_src(), v6_dst(), 64)
    } else {
        PacketBuilder::ip(etherparse::IpHeaders::Ipv4(
            {
                let mut h =
                    etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, V4_SRC, V4_DST)
                        .unwrap();
                h.identification = 0xfff0; // wraps while segmenting
                h.dont_fragment = true;
                h
            },
            Default::default(),
        ))
    };
    let mut out = Vec::new();
    let data = payload(len);
    if tcp {
        let mut t = b
            .tcp(40000, 22, 0xffff_f000, 64240)
            .options(&[
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(7, 9),
            ])
            .unwrap()
            .ack(77);
        if flags & 1 != 0 {
            t = t.fin();
        }
        if flags & 8 != 0 {
            t = t.psh();
        }
        if flags & 0x80 != 0 {
            t = t.cwr();
        }
        t.write(&mut out, &data).unwrap();
    } else {
        b.udp(40000, 4789).write(&mut out, &data).unwrap();
    }
    let l4 = if v6 { 40 } else { 20 };
    let off = if tcp { 16 } else { 6 };
    out[l4 + off] ^= 0x5a; // a partial sum, not a checksum
    let hdr_len = l4 + if tcp { 32 } else { 8 };
    let gso = match (tcp, v6) {
        (true, false) => GsoKind::TcpV4,
        (true, true) => GsoKind::TcpV6,
        (false, _) => GsoKind::UdpL4,
    };
    let hdr = VnetRepr {
        needs_csum: true,
        data_valid: false,
        gso,
        ecn: false,
        hdr_len: hdr_len as u16,
        gso_size: mss,
        csum_start: l4 as u16,
        csum_offset: off as u16,
    };
    (out, hdr)
}

/// Splits and checks everything the module promises; returns the segment count.
fn split_and_check(pkt: &[u8], hdr: &VnetRepr) -> usize {
    let segs = Segments::new(hdr, pkt).expect("a valid super-packet");
    let mut bufs = SegmentBuffers::new(segs.count(), segs.max_segment_len(), 24);
    let n = segs.write_all(&mut bufs).expect("fits");
    assert_eq!(n, bufs.len());
    let orig = SlicedPacket::from_ip(pkt).unwrap();
    let (orig_payload, orig_tcp) = match &orig.transport {
        Some(TransportSlice::Tcp(t)) => (t.payload().to_vec(), Some(t.to_header())),
        Some(TransportSlice::Udp(u)) => (u.payload().to_vec(), None),
        _ => unreachable!(),
    };
    let orig_id = match &orig.net {
        Some(NetSlice::Ipv4(ip)) => Some(ip.header().identification()),
        _ => None,
    };
    let mut joined = Vec::new();
    let mut next_seq = orig_tcp.as_ref().map(|t| t.sequence_number);
    for (i, seg) in bufs.iter().enumerate() {
        let p = assert_valid(seg);
        assert!(p.len() <= usize::from(hdr.gso_size), "segment {i} over mss");
        if i + 1 < n {
            assert_eq!(p.len(), usize::from(hdr.gso_size), "only the last is short");
        }
        let s = SlicedPacket::from_ip(seg).unwrap();
        if let Some(id) = orig_id {
            let Some(NetSlice::Ipv4(ip)) = &s.net else {
                panic!()
            };
            assert_eq!(ip.header().identification(), id.wrapping_add(i as u16));
        }
        if let (Some(TransportSlice::Tcp(t)), Some(o)) = (&s.transport, &orig_tcp) {
            assert_eq!(Some(t.sequence_number()), next_seq, "contiguous seq");
            next_seq = Some(t.sequence_number().wrapping_add(p.len() as u32));
            let last = i + 1 == n;
            assert_eq!(t.fin(), o.fin && last, "FIN only on the last");
            assert_eq!(t.psh(), o.psh && last, "PSH only on the last");
            assert_eq!(t.cwr(), o.cwr && i == 0, "CWR only on the first");
            assert_eq!(t.ack(), o.ack);
            assert_eq!(t.options(), &o.options[..], "options copied");
        }
        joined.extend_from_slice(&p);
    }
    assert_eq!(joined, orig_payload, "payloads concatenate to the original");
    n
}

#[test]
fn gso_tcp4_64k() {
    let (p, h) = super_packet(false, true, 65_000 - 52, 1448, 0x80 | 8 | 1);
    assert_eq!(split_and_check(&p, &h), 45);
}

#[test]
fn gso_tcp6_exact_multiple() {
    let (p, h) = super_packet(true, true, 1428 * 10, 1428, 8);
    assert_eq!(split_and_check(&p, &h), 10);
}

#[test]
fn gso_udp4_and_udp6() {
    let (p, h) = super_packet(false, false, 4000, 1000, 0);
    assert_eq!(split_and_check(&p, &h), 4);
    let (p, h) = super_packet(true, false, 4001, 1000, 0);
    assert_eq!(split_and_check(&p, &h), 5);
}

#[test]
fn gso_one_segment_when_mss_exceeds_payload() {
    let (p, h) = super_packet(false, true, 100, 1448, 1);
    assert_eq!(split_and_check(&p, &h), 1);
}

#[test]
fn gso_tail_room_left_for_trailer() {
    let (p, h) = super_packet(false, true, 3000, 1000, 0);
    let segs = Segments::new(&h, &p).unwrap();
    let mut bufs = SegmentBuffers::new(8, 1052, 24);
    segs.write_all(&mut bufs).unwrap();
    let (slot, len) = bufs.slot_mut(0);
    assert_eq!((slot.len(), len), (1076, 1052));
    // A slot too small for a segment is refused before anything is written.
    let mut small = SegmentBuffers::new(8, 1051, 24);
    assert!(matches!(
        segs.write_all(&mut small),
        Err(Error::BufferTooSmall { needed: 1052, .. })
    ));
    assert!(small.is_empty());
    let mut few = SegmentBuffers::new(2, 1052, 24);
    assert!(matches!(few_err(&segs, &mut few), Error::TooLarge { .. }));
}

fn few_err(segs: &Segments<'_>, bufs: &mut SegmentBuffers) -> Error {
    segs.write_all(bufs).unwrap_err()
}

#[test]
fn gso_none_completes_partial_checksum() {
    for v6 in [false, true] {
        for tcp in [false, true] {
            let (mut p, mut h) = super_packet(v6, tcp, 300, 1000, 8);
            h.gso = GsoKind::None;
            h.gso_size = 0;
            // The kernel leaves the folded pseudo-header sum in the field.
            let l4 = usize::from(h.csum_start);
            let at = l4 + usize::from(h.csum_offset);
            let pseudo = pseudo_sum(&p, v6, if tcp { 6 } else { 17 }, p.len() - l4);
            p[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
            let segs = Segments::new(&h, &p).unwrap();
            assert_eq!(segs.count(), 1);
            let mut out = vec![0; 2000];
            let n = segs.write_segment(0, &mut out).unwrap();
            assert_valid(&out[..n]);
            // The same in place.
            complete_checksum(&h, &mut p).unwrap();
            assert_valid(&p);
        }
    }
}

/// The folded (uncomplemented) pseudo-header sum, computed by hand.
fn pseudo_sum(p: &[u8], v6: bool, proto: u16, l4_len: usize) -> u16 {
    let addrs = if v6 { &p[8..40] } else { &p[12..20] };
    let mut s: u32 = u32::from(proto) + l4_len as u32;
    for w in addrs.chunks(2) {
        s += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn gso_malformed_are_typed_errors() {
    let (p, h) = super_packet(false, true, 3000, 1000, 0);
    // GSO type that does not match the packet.
    for gso in [GsoKind::TcpV6, GsoKind::UdpL4] {
        let bad = VnetRepr { gso, ..h };
        assert!(matches!(
            Segments::new(&bad, &p),
            Err(Error::InvalidField { .. })
        ));
    }
    // csum_start/offset not at the TCP checksum.
    for (start, off) in [(24, 16), (20, 6)] {
        let bad = VnetRepr {
            csum_start: start,
            csum_offset: off,
            ..h
        };
        assert!(matches!(
            Segments::new(&bad, &p),
            Err(Error::InvalidField { .. })
        ));
    }
    // Lengths that do not add up: truncated, and IP length beyond the bytes.
    assert!(Segments::new(&h, &p[..p.len() - 1]).is_err());
    assert!(Segments::new(&h, &p[..30]).is_err());
    // No payload.
    let (e, he) = super_packet(true, true, 0, 1000, 0);
    assert!(matches!(
        Segments::new(&he, &e),
        Err(Error::InvalidField { .. })
    ));
    // NEEDS_CSUM on an ordinary packet with the field outside.
    let none = VnetRepr {
        gso: GsoKind::None,
        gso_size: 0,
        csum_start: 4000,
        ..h
    };
    assert!(matches!(
        Segments::new(&none, &p),
        Err(Error::InvalidField { .. })
    ));
    // Header bytes: gso_size 0.
    let mut raw = [0u8; VNET_HDR_LEN];
    h.emit_bytes(&mut raw).unwrap();
    raw[4..6].fill(0);
    assert!(matches!(
        VnetRepr::parse_bytes(&raw),
        Err(Error::InvalidField { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Any valid TSO/USO super-packet splits into valid segments.
    #[test]
    fn gso_any_super_packet_splits_validly(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        len in 1usize..20_000,
        mss in 1u16..3000,
        flags in prop::sample::select(vec![0u8, 1, 8, 9, 0x80, 0x89]),
    ) {
        prop_assume!(len.div_ceil(usize::from(mss)) <= 512);
        let (p, h) = super_packet(v6, tcp, len, mss, flags);
        split_and_check(&p, &h);
    }

    /// Arbitrary bytes after an arbitrary header never panic.
    #[test]
    fn gso_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut co = TcpCoalescer::new();
        let _ = co.offer(&bytes);
        let _ = co.offer(&bytes);
        let _ = co.pending();
        if let Ok(h) = VnetRepr::parse_bytes(&bytes)
            && let Ok(segs) = Segments::new(&h, &bytes[VNET_HDR_LEN..])
        {
            let mut out = [0u8; 256];
            for i in 0..segs.count() {
                let _ = segs.write_segment(i, &mut out);
            }
        }
    }
}

// ---- coalescing (packet::gro) ----

use fpn_proto::packet::gro::{Offer, TcpCoalescer};

/// The segments of a super-packet, each as its own Vec.
fn segments_of(pkt: &[u8], hdr: &VnetRepr) -> Vec<Vec<u8>> {
    let segs = Segments::new(hdr, pkt).unwrap();
    let mut bufs = SegmentBuffers::new(segs.count(), segs.max_segment_len(), 0);
    segs.write_all(&mut bufs).unwrap();
    bufs.iter().map(<[u8]>::to_vec).collect()
}

/// Coalesces `segs` in order; returns the super-packets written, with headers.
fn coalesce_all(segs: &[Vec<u8>]) -> Vec<(VnetRepr, Vec<u8>)> {
    let mut co = TcpCoalescer::new();
    let mut out = Vec::new();
    for s in segs {
        if co.offer(s) == Offer::Rejected {
            if let Some((h, p)) = co.pending() {
                out.push((h, p.to_vec()));
            }
            co.clear();
            if co.offer(s) == Offer::Rejected {
                out.push((VnetRepr::NONE, s.clone()));
            }
        }
    }
    if let Some((h, p)) = co.pending() {
        out.push((h, p.to_vec()));
    }
    out
}

/// Checks a coalesced super-packet: valid once its partial checksum is
/// completed, and splitting it again gives exactly `expect`.
fn check_super(hdr: &VnetRepr, pkt: &[u8], expect: &[Vec<u8>]) {
    let mut whole = pkt.to_vec();
    let none = VnetRepr {
        gso: GsoKind::None,
        gso_size: 0,
        ..*hdr
    };
    complete_checksum(&none, &mut whole).unwrap();
    assert_valid(&whole);
    assert_eq!(
        segments_of(pkt, hdr),
        expect,
        "re-segmenting gives the segments back"
    );
}

#[test]
fn gro_merges_a_split_super_packet_back() {
    for v6 in [false, true] {
        let (p, h) = super_packet(v6, true, 10_000, 1400, 8);
        let segs = segments_of(&p, &h);
        let out = coalesce_all(&segs);
        assert_eq!(out.len(), 1);
        let (hdr, sup) = &out[0];
        assert_eq!(hdr.gso, if v6 { GsoKind::TcpV6 } else { GsoKind::TcpV4 });
        assert_eq!(hdr.gso_size, 1400);
        check_super(hdr, sup, &segs);
    }
}

#[test]
fn gro_refuses_what_linux_would_not_merge() {
    let (p, h) = super_packet(false, true, 5600, 1400, 0);
    let segs = segments_of(&p, &h);
    // A gap in the sequence.
    let gap = [segs[0].clone(), segs[2].clone()];
    assert_eq!(coalesce_all(&gap).len(), 2);
    // Another flow in between.
    let (q, hq) = super_packet(true, true, 1400, 1400, 0);
    let other = segments_of(&q, &hq);
    let mixed = [segs[0].clone(), other[0].clone(), segs[1].clone()];
    assert_eq!(coalesce_all(&mixed).len(), 3);
    // FIN, SYN and CWR segments stand alone; so does a UDP datagram.
    let (f, hf) = super_packet(false, true, 2800, 1400, 1);
    let fin = segments_of(&f, &hf);
    let out = coalesce_all(&fin);
    assert_eq!(out.len(), 2, "the FIN segment is not merged");
    assert_eq!(out[1].0, VnetRepr::NONE);
    let (u, hu) = super_packet(false, false, 2800, 1400, 0);
    assert_eq!(coalesce_all(&segments_of(&u, &hu)).len(), 2);
    // Nothing follows a PSH or a short segment; a larger one never follows.
    let mut pushed = segs[0].clone();
    pushed[20 + 13] |= 8;
    fpn_proto::packet::Packet::parse(&mut pushed[..])
        .unwrap()
        .fill_l4_checksum();
    assert_eq!(
        coalesce_all(&[pushed, segs[1].clone()]).len(),
        2,
        "PSH ends a group"
    );
    let (s, hs) = super_packet(false, true, 2000, 1000, 0);
    let mut short = segments_of(&s, &hs);
    short.truncate(1); // 1000 bytes, then 1400-byte ones of another super-packet
    let (l, hl) = super_packet(false, true, 2800, 1400, 0);
    let mut long = segments_of(&l, &hl);
    // Re-number the long ones to follow the short one.
    for (i, seg) in long.iter_mut().enumerate() {
        let seq = 0xffff_f000u32.wrapping_add(1000 + 1400 * i as u32);
        seg[24..28].copy_from_slice(&seq.to_be_bytes());
        seg[4..6].copy_from_slice(&short[0][4..6]);
        fpn_proto::packet::Packet::parse(&mut seg[..])
            .unwrap()
            .fill_l4_checksum();
    }
    short.extend(long);
    assert_eq!(
        coalesce_all(&short).len(),
        2,
        "a larger segment never follows a smaller one"
    );
    // A bad checksum is never merged (the kernel would recompute it).
    let mut bad = segs.clone();
    let last = bad[1].len() - 1;
    bad[1][last] ^= 1;
    assert_eq!(coalesce_all(&bad).len(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Segment, coalesce, segment again: the same packets.
    #[test]
    fn gro_roundtrips_through_gso(
        v6 in any::<bool>(),
        len in 1usize..30_000,
        mss in 200u16..3000,
        psh in any::<bool>(),
    ) {
        let (p, h) = super_packet(v6, true, len, mss, if psh { 8 } else { 0 });
        let segs = segments_of(&p, &h);
        let out = coalesce_all(&segs);
        prop_assert_eq!(out.len(), 1);
        let (hdr, sup) = &out[0];
        if segs.len() == 1 {
            prop_assert_eq!(*hdr, VnetRepr::NONE);
            prop_assert_eq!(sup, &segs[0]);
        } else {
            check_super(hdr, sup, &segs);
        }
    }
}

#[test]
fn gro_refuses_an_ipv6_packet_longer_than_a_super_packet() {
    // 40 + 65 535: valid IPv6, but one byte more than any super-packet.
    let mut big = Vec::new();
    PacketBuilder::ipv6(v6_src(), v6_dst(), 64)
        .tcp(1, 2, 3, 4)
        .ack(5)
        .write(&mut big, &vec![1; 65_535 - 20])
        .unwrap();
    assert_eq!(big.len(), 65_575);
    assert_eq!(TcpCoalescer::new().offer(&big), Offer::Rejected);
}
