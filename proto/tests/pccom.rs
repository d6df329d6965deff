//! PCCOM: round trips, tamper detection, NAT tolerance, replay window, MSS
//! clamping and limits. Protected packets are validated by etherparse, an
//! implementation independent of fpn-proto's parser and checksum code.

mod packet_util;

use fpn_proto::Error;
use fpn_proto::keys::{FlowKeys, GroupKey, Role, derive_flow_keys};
use fpn_proto::packet::Packet;
use fpn_proto::pccom::{
    FlowCrypto, Limits, PacketAead, REPLAY_WINDOW, RingAesGcm, RustCryptoAesGcm, TRAILER_LEN,
};
use packet_util::*;
use proptest::prelude::*;

fn keys() -> (FlowKeys, FlowKeys) {
    let gk = GroupKey::from_bytes([7; 32]);
    (
        derive_flow_keys(&gk, &[1; 32], &[2; 32], Role::Initiator),
        derive_flow_keys(&gk, &[1; 32], &[2; 32], Role::Responder),
    )
}

/// Initiator and responder cipher states of one flow.
fn pair() -> (FlowCrypto, FlowCrypto) {
    let (i, r) = keys();
    (FlowCrypto::new(&i), FlowCrypto::new(&r))
}

/// Protects `pkt` with `c`; returns the protected packet (exact length).
fn protect(c: &mut FlowCrypto<impl PacketAead>, pkt: &[u8]) -> Vec<u8> {
    let (mut buf, len) = with_room(pkt, TRAILER_LEN);
    let n = c.protect(&mut buf, len).expect("protect");
    assert_eq!(n, len + TRAILER_LEN);
    buf.truncate(n);
    buf
}

fn kinds(len: usize) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("ipv4-tcp", ipv4_tcp(len)),
        ("ipv4-udp", ipv4_udp(len)),
        ("ipv6-tcp", ipv6_tcp(len)),
        ("ipv6-udp", ipv6_udp(len)),
        ("ipv4-icmp", ipv4_ping(0x77, 3, len)),
        ("ipv6-icmp", ipv6_ping(0x77, 3, len)),
    ]
}

#[test]
fn round_trip_for_ipv4_and_ipv6_tcp_udp_icmp() {
    let (mut a, mut b) = pair();
    for len in [0, 1, 15, 100, 1400, 8900] {
        for (name, plain) in kinds(len) {
            let wire = protect(&mut a, &plain);
            // An ordinary valid packet: lengths and checksums verified by etherparse.
            let wire_payload = assert_valid(&wire);
            assert_eq!(wire_payload.len(), len + TRAILER_LEN, "{name}");
            if len >= 16 {
                assert_ne!(&wire_payload[..len], &payload(len)[..], "{name}: encrypted");
            }
            let p = Packet::parse(&wire[..]).unwrap();
            let q = Packet::parse(&plain[..]).unwrap();
            assert_eq!(p.flow_id(), q.flow_id(), "{name}: headers kept");
            assert_eq!(p.l4_header().len(), q.l4_header().len());

            let mut back = wire.clone();
            let n = b
                .unprotect(&mut back)
                .unwrap_or_else(|e| panic!("{name}/{len}: {e}"));
            assert_eq!(&back[..n], &plain[..], "{name}/{len}: restored exactly");
            assert_valid(&back[..n]);

            // And the other direction.
            let wire = protect(&mut b, &plain);
            let mut back = wire.clone();
            let n = a.unprotect(&mut back).unwrap();
            assert_eq!(&back[..n], &plain[..]);
        }
    }
}

#[test]
fn an_all_zero_icmp_message_round_trips_with_a_valid_checksum() {
    // Found by the pccom_unprotect fuzzer: the restored all-zero message needs
    // checksum 0xffff, which only an exact sum yields.
    let (mut a, mut b) = pair();
    let mut plain = Vec::new();
    etherparse::PacketBuilder::ipv4(V4_SRC, V4_DST, 64)
        .icmpv4_echo_reply(0, 0)
        .write(&mut plain, &[0; 14])
        .unwrap();
    let mut w = protect(&mut a, &plain);
    let n = b.unprotect(&mut w).unwrap();
    assert_eq!(&w[..n], &plain[..]);
    assert_valid(&w[..n]);
}

#[test]
fn both_backends_interoperate() {
    let (i, r) = keys();
    let mut ring_tx = FlowCrypto::<RingAesGcm>::with_backend(&i);
    let mut rc_rx = FlowCrypto::<RustCryptoAesGcm>::with_backend(&r);
    let mut rc_tx = FlowCrypto::<RustCryptoAesGcm>::with_backend(&r);
    let mut ring_rx = FlowCrypto::<RingAesGcm>::with_backend(&i);
    for (_, plain) in kinds(333) {
        let mut w = protect(&mut ring_tx, &plain);
        let n = rc_rx.unprotect(&mut w).unwrap();
        assert_eq!(&w[..n], &plain[..]);
        let mut w = protect(&mut rc_tx, &plain);
        let n = ring_rx.unprotect(&mut w).unwrap();
        assert_eq!(&w[..n], &plain[..]);
    }
}

/// Byte ranges of the ciphertext + trailer of a protected packet.
fn protected_region(wire: &[u8]) -> std::ops::Range<usize> {
    let p = Packet::parse(wire).unwrap();
    p.payload_offset()..p.len()
}

#[test]
fn flipping_any_bit_of_ciphertext_or_trailer_fails() {
    for (name, plain) in [("ipv4-tcp", ipv4_tcp(40)), ("ipv6-udp", ipv6_udp(33))] {
        let (mut a, mut b) = pair();
        let wire = protect(&mut a, &plain);
        for i in protected_region(&wire) {
            for bit in 0..8 {
                let mut w = wire.clone();
                w[i] ^= 1 << bit;
                assert_eq!(
                    b.unprotect(&mut w),
                    Err(Error::PacketAuth),
                    "{name}: byte {i} bit {bit}"
                );
            }
        }
        // None of the forgeries moved or marked the window: the real one passes.
        let mut w = wire.clone();
        b.unprotect(&mut w).unwrap();
    }
}

#[test]
fn flipping_a_covered_header_field_fails() {
    let (mut a, mut b) = pair();
    // TCP flags SYN, FIN, RST, ACK (byte 13 of the TCP header).
    let wire = protect(&mut a, &ipv4_tcp(20));
    for flag in [0x01u8, 0x02, 0x04, 0x10] {
        let mut w = wire.clone();
        w[20 + 13] ^= flag;
        assert_eq!(
            b.unprotect(&mut w),
            Err(Error::PacketAuth),
            "flag {flag:#x}"
        );
    }
    // ICMP type, code and echo sequence number.
    for (v6, plain) in [(false, ipv4_ping(5, 6, 20)), (true, ipv6_ping(5, 6, 20))] {
        let wire = protect(&mut a, &plain);
        let l4 = if v6 { 40 } else { 20 };
        // Echo request <-> echo reply, a code, each bit of the sequence number.
        let flips: Vec<(usize, u8)> = [(l4, if v6 { 1 } else { 8 }), (l4 + 1, 1)]
            .into_iter()
            .chain((0..16).map(|b| (l4 + 6 + b / 8, 1u8 << (b % 8))))
            .collect();
        for (at, x) in flips {
            let mut w = wire.clone();
            w[at] ^= x;
            assert_eq!(
                b.unprotect(&mut w),
                Err(Error::PacketAuth),
                "v6 {v6} at {at}"
            );
        }
    }
    // TCP URG, and the urgent pointer of a segment with URG set (a forged
    // URG would make the receiver pull a byte out of the stream).
    let mut w = wire.clone();
    w[20 + 13] ^= 0x20;
    assert_eq!(b.unprotect(&mut w), Err(Error::PacketAuth), "URG set");
    let mut urgent = ipv4_tcp(20);
    urgent[20 + 13] |= 0x20;
    urgent[20 + 18..20 + 20].copy_from_slice(&[0, 5]);
    let uw = protect(&mut a, &urgent);
    for (at, x) in [(20 + 13, 0x20), (20 + 18, 1), (20 + 19, 1)] {
        let mut w = uw.clone();
        w[at] ^= x;
        assert_eq!(
            b.unprotect(&mut w),
            Err(Error::PacketAuth),
            "urgent segment, byte {at}"
        );
    }
    // ICMP bytes 4-7 of a non-echo message: the MTU of a "fragmentation
    // needed" (type 3 code 4), which would shrink the receiver's path MTU.
    let mut ptb = ipv4_ping(5, 6, 20);
    ptb[20] = 3;
    ptb[21] = 4;
    ptb[20 + 6..20 + 8].copy_from_slice(&1400u16.to_be_bytes());
    let pw = protect(&mut a, &ptb);
    for at in 20 + 4..20 + 8 {
        let mut w = pw.clone();
        w[at] ^= 0x01;
        assert_eq!(
            b.unprotect(&mut w),
            Err(Error::PacketAuth),
            "ICMP too-big byte {at}"
        );
    }
    // The transport protocol: a UDP packet relabelled as TCP does not parse as
    // the same thing and never authenticates.
    let wire = protect(&mut a, &ipv4_udp(60));
    let mut w = wire.clone();
    w[9] = 6;
    assert!(b.unprotect(&mut w).is_err());
}

#[test]
fn nat_and_middlebox_rewrites_do_not_break_authentication() {
    let (mut a, mut b) = pair();
    for (name, plain) in kinds(64) {
        let mut w = protect(&mut a, &plain);
        let (v4, proto) = {
            // What a NAT does: addresses and port (or echo identifier).
            let mut p = Packet::parse(&mut w[..]).unwrap();
            let (v4, proto) = (matches!(p.src(), std::net::IpAddr::V4(_)), p.protocol());
            if v4 {
                p.set_src([203, 0, 113, 9].into()).unwrap();
                p.set_dst([10, 0, 0, 9].into()).unwrap();
            } else {
                p.set_src(v6("2001:db8:1::9").into()).unwrap();
                p.set_dst(v6("fd00:9::9").into()).unwrap();
            }
            p.set_src_port(33333).unwrap(); // ICMP: the echo identifier
            (v4, proto)
        };
        {
            if v4 {
                w[1] = 0xb8; // DSCP EF, as a router might remark
                w[4..6].copy_from_slice(&[0xab, 0xcd]); // IPv4 ID
                w[8] -= 3; // TTL
                // ...and fixes the header checksum, as every router does.
                w[10..12].copy_from_slice(&[0, 0]);
                let c = fpn_proto::packet::checksum::checksum(&w[..20]);
                w[10..12].copy_from_slice(&c.to_be_bytes());
            } else {
                w[7] -= 3; // hop limit
                w[1] |= 0x0f; // flow label
            }
            if proto == 6 {
                let l4 = if v4 { 20 } else { 40 };
                // Sequence number randomisation, window and PSH/ECE/CWR changes.
                w[l4 + 4] ^= 0x5a;
                w[l4 + 11] ^= 0x33;
                w[l4 + 13] ^= 0x08 | 0x40 | 0x80;
                w[l4 + 14] ^= 0xff;
            }
        }
        let n = b
            .unprotect(&mut w)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let p = Packet::parse(&w[..n]).unwrap();
        assert_eq!(p.payload(), &payload(64)[..], "{name}");
        // The restored packet is valid with the rewritten headers.
        assert_valid(&w[..n]);
    }
}

#[test]
fn a_reflected_packet_fails() {
    // A packet sent by one end, turned around to that same end, must not open:
    // each direction has its own key.
    let (mut a, _) = pair();
    let mut w = protect(&mut a, &ipv4_udp(50));
    assert_eq!(a.unprotect(&mut w), Err(Error::PacketAuth));
}

#[test]
fn a_replayed_packet_fails() {
    let (mut a, mut b) = pair();
    let wire = protect(&mut a, &ipv6_tcp(10));
    let mut w = wire.clone();
    b.unprotect(&mut w).unwrap();
    let mut w = wire.clone();
    assert_eq!(b.unprotect(&mut w), Err(Error::Replay { counter: 0 }));
}

#[test]
fn reordering_inside_the_window_passes_and_stale_packets_fail() {
    let (mut a, mut b) = pair();
    let total = REPLAY_WINDOW as usize + 500;
    let wires: Vec<Vec<u8>> = (0..total).map(|_| protect(&mut a, &ipv4_udp(8))).collect();
    // Deliver the newest first, then everything older still inside the window,
    // newest to oldest (the worst reordering the window accepts).
    let newest = total - 1;
    let mut order = vec![newest];
    order.extend((newest + 1 - REPLAY_WINDOW as usize..newest).rev());
    for &i in &order {
        let mut w = wires[i].clone();
        b.unprotect(&mut w)
            .unwrap_or_else(|e| panic!("counter {i}: {e}"));
    }
    // One below the window is too old; everything delivered is a replay.
    let too_old = newest - REPLAY_WINDOW as usize;
    let mut w = wires[too_old].clone();
    assert_eq!(
        b.unprotect(&mut w),
        Err(Error::Replay {
            counter: too_old as u64
        })
    );
    for &i in order.iter().step_by(97) {
        let mut w = wires[i].clone();
        assert!(matches!(b.unprotect(&mut w), Err(Error::Replay { .. })));
    }
}

#[test]
fn forged_counters_do_not_move_the_window() {
    let (mut a, mut b) = pair();
    let first = protect(&mut a, &ipv4_udp(30));
    // A forgery claiming a counter far ahead fails authentication...
    let mut forged = first.clone();
    let at = forged.len() - TRAILER_LEN;
    forged[at..at + 8].copy_from_slice(&1_000_000u64.to_be_bytes());
    assert_eq!(b.unprotect(&mut forged), Err(Error::PacketAuth));
    // ...and counter 0 is still inside the window afterwards.
    let mut w = first.clone();
    b.unprotect(&mut w).unwrap();
    assert_eq!(b.replay_window().highest(), Some(0));
}

#[test]
fn mss_is_clamped_on_syn_and_syn_ack() {
    for ipv6 in [false, true] {
        for syn_ack in [false, true] {
            let (mut a, mut b) = pair();
            let syn = tcp_syn(ipv6, 1460, syn_ack);
            let mut w = protect(&mut a, &syn);
            // Lowered by the trailer, on the wire and after unprotect.
            assert_eq!(mss_of(&w), Some(1460 - TRAILER_LEN as u16));
            assert_valid(&w);
            let n = b.unprotect(&mut w).unwrap();
            assert_eq!(mss_of(&w[..n]), Some(1436));
            assert_valid(&w[..n]);
        }
    }
    // Data segments keep their options untouched.
    let (mut a, _) = pair();
    let plain = ipv4_tcp(10);
    let w = protect(&mut a, &plain);
    for i in 0..40 {
        // Only the IP total length, IP checksum and TCP checksum change.
        if !matches!(i, 2 | 3 | 10 | 11 | 36 | 37) {
            assert_eq!(w[i], plain[i], "header byte {i}");
        }
    }
}

#[test]
fn a_syn_with_garbage_options_is_refused() {
    let (mut a, _) = pair();
    let syn = tcp_syn_raw_options(&[2, 4, 5, 0xb4, 8, 0, 0, 0]);
    let (mut buf, len) = with_room(&syn, TRAILER_LEN);
    assert!(matches!(
        a.protect(&mut buf, len),
        Err(Error::MalformedPacket(_))
    ));
}

#[test]
fn a_buffer_without_room_is_refused() {
    let (mut a, _) = pair();
    let plain = ipv4_udp(10);
    let (mut buf, len) = with_room(&plain, TRAILER_LEN - 1);
    assert_eq!(
        a.protect(&mut buf, len),
        Err(Error::BufferTooSmall {
            needed: len + TRAILER_LEN,
            capacity: len + TRAILER_LEN - 1
        })
    );
}

#[test]
fn a_packet_that_cannot_grow_is_refused() {
    let (mut a, _) = pair();
    let plain = ipv4_udp(65535 - 28 - 10);
    let (mut buf, len) = with_room(&plain, TRAILER_LEN);
    assert!(matches!(
        a.protect(&mut buf, len),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn a_payload_shorter_than_the_trailer_is_refused() {
    let (_, mut b) = pair();
    let mut plain = ipv4_udp(TRAILER_LEN - 1);
    assert!(matches!(
        b.unprotect(&mut plain),
        Err(Error::Truncated {
            what: "PCCOM trailer",
            ..
        })
    ));
}

#[test]
fn the_counter_limits_hold() {
    let (i, _) = keys();
    let mut a = FlowCrypto::new(&i).with_limits(Limits {
        rekey_after: 3,
        reject_after: 5,
    });
    let plain = ipv4_udp(5);
    for n in 0..5 {
        assert_eq!(a.should_rekey(), n >= 3, "after {n}");
        protect(&mut a, &plain);
    }
    let (mut buf, len) = with_room(&plain, TRAILER_LEN);
    assert_eq!(a.protect(&mut buf, len), Err(Error::CounterExhausted));
    assert_eq!(a.packets_sent(), 5);
    // Limits can be lowered, never raised past the defaults.
    let d = Limits::default();
    let b = FlowCrypto::new(&i).with_limits(Limits {
        rekey_after: u64::MAX,
        reject_after: u64::MAX,
    });
    assert_eq!(b.limits(), d);
}

#[test]
fn debug_output_shows_no_key_or_payload() {
    let (a, _) = pair();
    let s = format!("{a:?}");
    assert!(s.contains("ring") && s.contains("packets_sent"), "{s}");
    let pkt = ipv4_udp(4);
    let s = format!("{:?}", Packet::parse(&pkt[..]).unwrap());
    assert!(!s.contains("payload: ["), "{s}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn unprotect_never_panics_on_arbitrary_bytes(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..300)
    ) {
        let (_, mut b) = pair();
        let _ = b.unprotect(&mut bytes);
    }

    #[test]
    fn unprotect_never_panics_and_never_opens_mutated_packets(
        kind in 0usize..6,
        len in 0usize..200,
        edits in proptest::collection::vec((any::<u16>(), 1u8..=255), 1..4),
        cut in proptest::option::of(any::<u16>()),
    ) {
        let (mut a, mut b) = pair();
        let plain = kinds(len).swap_remove(kind).1;
        let mut w = protect(&mut a, &plain);
        let region = protected_region(&w);
        let mut net = std::collections::BTreeMap::new();
        for (at, x) in edits {
            *net.entry(usize::from(at) % w.len()).or_insert(0u8) ^= x;
        }
        let mut touched_protected = false;
        for (i, x) in net {
            w[i] ^= x;
            touched_protected |= x != 0 && region.contains(&i);
        }
        if let Some(c) = cut {
            w.truncate(usize::from(c) % (w.len() + 1));
        }
        let r = b.unprotect(&mut w);
        if touched_protected {
            prop_assert!(r.is_err());
        }
    }
}
