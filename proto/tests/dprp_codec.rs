//! The DPRP codec: every message round-trips, every truncation and every
//! corruption is a typed error (or decodes to a different message that
//! re-encodes to exactly the corrupted bytes: the encoding is canonical), and
//! arbitrary bytes never panic.

use std::net::IpAddr;

use fpn_proto::Error;
use fpn_proto::dprp::msg::{
    self, Cdn, CdnStatus, Claim, CredentialBytes, Dde, HopDecision, MAX_HOPS, MAX_MESSAGE_LEN,
    Mpit, RefuseCode,
};
use fpn_proto::dprp::option::MAX_OPTIONS;
use fpn_proto::dprp::{DprpOption, Message, MessageType, NegotiationId, Prefix};
use fpn_proto::flow::{FlowId, protocol};
use fpn_proto::ge::{GeId, GeKind, GroupId, Mode};
use fpn_proto::keys::KeyVersion;
use fpn_proto::sim::{GeSpec, LinkConfig, Sim};
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Real messages of every type, taken off the simulated wire: a direct
/// negotiation with options, one through a gateway (RGI hops, signed MPIT
/// and CDN), a dropped flow and a refused (NAK) one.
fn samples() -> Vec<Vec<u8>> {
    let mut sim = Sim::new(31, LinkConfig::default());
    let gw = sim.add_ge(GeSpec::gateway(
        10,
        "gw",
        GeKind::Gen,
        Mode::Closed,
        &[7],
        "198.18.0.10",
        Prefix::host(ip("10.0.0.100")),
    ));
    let inner = sim.add_ge(GeSpec::host(11, "inner", Mode::Open, &[1, 2], "10.0.0.2").behind(gw));
    let a = sim.add_ge(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"));
    let b = sim.add_ge(GeSpec::host(2, "b", Mode::Closed, &[1, 2], "198.18.0.2"));
    sim.add_ge(GeSpec::host(3, "c", Mode::Closed, &[5], "198.18.0.3"));
    let flow = FlowId {
        src: ip("198.18.0.1"),
        dst: ip("198.18.0.2"),
        protocol: protocol::TCP,
        src_port: 40000,
        dst_port: 22,
    };
    let opts = vec![
        DprpOption::BindingUpdate {
            old: "198.18.0.1:4000".parse().unwrap(),
            new: "[2001:db8::1]:4000".parse().unwrap(),
        },
        DprpOption::NatF {
            lip: ip("192.168.1.10"),
            reserved_port: 40001,
        },
        DprpOption::Unknown {
            kind: 99,
            value: vec![1, 2, 3],
        },
    ];
    let now = sim.now();
    sim.endpoint(a).initiate(flow, opts, now).unwrap();
    sim.send_udp(inner, ip("198.18.0.2"), 1, 2, b"x");
    sim.send_udp(a, ip("198.18.0.3"), 3, 4, b"dropped");
    sim.endpoint(b).revoke_ge(GeId(1));
    sim.send_udp(a, ip("198.18.0.2"), 5, 6, b"refused");
    sim.drive();
    let mut out: Vec<Vec<u8>> = sim.wire().iter().map(|s| s.payload.clone()).collect();
    // Fast open's messages, built by hand (their tags are random bytes to
    // the codec).
    let fop = msg::Fop {
        id: NegotiationId(0x0102_0304_0506_0708),
        epoch: [9; 8],
        index: 77,
        age_ms: 1234,
        flow,
        tag: [5; 32],
        first: None,
    };
    // And one carrying its flow's first packet (opaque to the codec).
    let with_first = msg::Fop {
        id: NegotiationId(4),
        index: 78,
        first: Some(msg::FirstPacket {
            steered: true,
            packet: vec![0x45, 0, 0, 28, 1, 2, 3],
        }),
        ..fop.clone()
    };
    for f in [fop, with_first] {
        out.push(Message::Fop(f).encode().unwrap());
    }
    out.push(
        Message::Fok(msg::Fok {
            id: NegotiationId(1),
            epoch: [9; 8],
            index: 77,
            tag: [6; 32],
        })
        .encode()
        .unwrap(),
    );
    // An eviction notice with an IPv4 and an IPv6 flow.
    let v6 = fpn_proto::flow::FlowId {
        src: "2001:db8::1".parse().unwrap(),
        dst: "2001:db8::2".parse().unwrap(),
        ..flow
    };
    out.push(
        Message::Evict(msg::Evict {
            id: NegotiationId(2),
            epoch: [9; 8],
            flows: vec![
                msg::EvictedFlow {
                    opening: NegotiationId(0x1122_3344_5566_7788),
                    flow,
                },
                msg::EvictedFlow {
                    opening: NegotiationId(3),
                    flow: v6,
                },
            ],
            tag: [7; 32],
        })
        .encode()
        .unwrap(),
    );
    for t in [
        MessageType::Dde,
        MessageType::Rgi,
        MessageType::Mpit,
        MessageType::Cdn,
        MessageType::Nak,
    ] {
        assert!(
            out.iter().any(|m| msg::peek(m).unwrap().0 == t),
            "no {t:?} sample"
        );
    }
    out
}

#[test]
fn every_message_round_trips() {
    for bytes in samples() {
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.encode().unwrap(), bytes, "{m:?}");
        assert_eq!(Message::decode(&m.encode().unwrap()).unwrap(), m);
        assert_eq!(msg::peek(&bytes).unwrap(), (m.kind(), m.id()));
    }
}

#[test]
fn every_truncation_is_a_typed_error() {
    for bytes in samples() {
        let original = Message::decode(&bytes).unwrap();
        for len in 0..bytes.len() {
            // A FOP cut right after its tag is a FOP without a first
            // packet, as an older node sends it (the field is optional).
            if let (Ok(Message::Fop(cut)), Message::Fop(full)) =
                (Message::decode(&bytes[..len]), &original)
            {
                let mut plain = full.clone();
                plain.first = None;
                assert!(full.first.is_some() && cut == plain, "len {len}");
                continue;
            }
            let e = Message::decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Truncated { .. } | Error::InvalidField { .. } | Error::TooLarge { .. }
                ),
                "len {len}: {e:?}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        // Behind a FOP's tag a byte starts a first packet, cut short.
        let e = Message::decode(&longer).unwrap_err();
        assert!(
            matches!(e, Error::TrailingBytes { .. })
                || (original.kind() == MessageType::Fop && matches!(e, Error::Truncated { .. })),
            "{e:?}"
        );
    }
}

#[test]
fn every_corruption_is_an_error_or_another_canonical_message() {
    for bytes in samples() {
        let original = Message::decode(&bytes).unwrap();
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= mask;
                if let Ok(m) = Message::decode(&b) {
                    assert_ne!(
                        m, original,
                        "byte {i} ^ {mask:#x} decoded to the same message"
                    );
                    assert_eq!(m.encode().unwrap(), b, "byte {i}: not canonical");
                }
            }
        }
    }
}

#[test]
fn header_checks_are_typed() {
    let dde = samples().into_iter().next().unwrap();
    let mut v = dde.clone();
    v[0] = 2;
    assert_eq!(
        Message::decode(&v),
        Err(Error::UnsupportedVersion {
            what: "DPRP",
            version: 2
        })
    );
    v = dde.clone();
    v[1] = 10;
    assert_eq!(Message::decode(&v), Err(Error::UnknownMessage(10)));
    assert!(matches!(
        Message::decode(&vec![1; MAX_MESSAGE_LEN + 1]),
        Err(Error::TooLarge { .. })
    ));
    assert!(msg::peek(&[1, 1]).is_err());
}

fn dde_with(hops: usize, options: usize, claims: Vec<Claim>) -> Dde {
    let sim = Sim::new(1, LinkConfig::default());
    let info = fpn_proto::ge::GeInfo {
        id: GeId(1),
        name: "a".into(),
        kind: GeKind::Ges,
        mode: Mode::Open,
        groups: [GroupId(1)].into(),
        overlay: "100.64.0.1".parse().unwrap(),
    };
    let cred = sim.issue(info, &fpn_proto::keys::NodeKey::from_seed(&[1; 32]));
    Dde {
        id: NegotiationId(0x0102_0304_0506_0708),
        flow: FlowId {
            src: ip("198.18.0.1"),
            dst: ip("198.18.0.2"),
            protocol: protocol::UDP,
            src_port: 1,
            dst_port: 2,
        },
        nonce: [7; 16],
        share: [9; 32],
        credential: CredentialBytes::from_credential(&cred).unwrap(),
        claims,
        options: (0..options)
            .map(|i| DprpOption::NatF {
                lip: ip("10.0.0.1"),
                reserved_port: i as u16,
            })
            .collect(),
        hops: (0..hops as u32).map(GeId).collect(),
    }
}

#[test]
fn limits_hold_on_both_sides() {
    let ok = Message::Dde(dde_with(MAX_HOPS, MAX_OPTIONS, vec![]))
        .encode()
        .unwrap();
    Message::decode(&ok).unwrap();
    // Too many hops or options: the encoder refuses, and so does the decoder.
    for m in [
        dde_with(MAX_HOPS + 1, 0, vec![]),
        dde_with(0, MAX_OPTIONS + 1, vec![]),
    ] {
        assert!(matches!(
            Message::Dde(m).encode(),
            Err(Error::TooLarge { .. })
        ));
    }
    let mut v = Message::Dde(dde_with(MAX_HOPS, 0, vec![]))
        .encode()
        .unwrap();
    let hop_count = v.len() - 1 - 4 * MAX_HOPS;
    v[hop_count] = MAX_HOPS as u8 + 1;
    v.extend_from_slice(&[0, 0, 0, 99]);
    assert!(matches!(
        Message::decode(&v),
        Err(Error::TooLarge {
            what: "DDE hops",
            ..
        })
    ));
    // Claims must be strictly ascending, on both sides.
    let claim = |g| Claim {
        group: GroupId(g),
        version: KeyVersion(1),
    };
    let unordered = Message::Dde(dde_with(0, 0, vec![claim(2), claim(1)]));
    assert!(unordered.encode().is_err());
    let good = Message::Dde(dde_with(0, 0, vec![claim(1), claim(2)]))
        .encode()
        .unwrap();
    let mut bad = good.clone();
    // Swap the two claims' group numbers (each claim is group u32, version u32).
    let at = good.len() - 1 - 1 - 16;
    bad[at + 3] = 2;
    bad[at + 11] = 1;
    assert_eq!(
        Message::decode(&bad),
        Err(Error::invalid(
            "claims",
            "groups must be strictly ascending"
        ))
    );
}

#[test]
fn inconsistent_fields_are_refused_by_the_encoder() {
    let mpit = |d: Vec<HopDecision>| {
        Message::Mpit(Mpit {
            id: NegotiationId(1),
            decisions: d,
            options: vec![],
            tag: [0; 32],
            proof: None,
            signature: None,
        })
    };
    let hop = |action, key_version| HopDecision {
        ge: GeId(1),
        action,
        key_version,
    };
    use fpn_proto::action::Action::*;
    assert!(mpit(vec![hop(Pass, None)]).encode().is_err(), "one entry");
    assert!(
        mpit(vec![hop(Protect(GroupId(1)), None), hop(Pass, None)])
            .encode()
            .is_err()
    );
    assert!(
        mpit(vec![hop(Pass, Some(KeyVersion(1))), hop(Pass, None)])
            .encode()
            .is_err()
    );
    assert!(
        mpit(vec![hop(Pass, None), hop(Drop, None)])
            .encode()
            .is_ok()
    );
    let cdn = Cdn {
        id: NegotiationId(1),
        status: CdnStatus::Refused(RefuseCode::HopLimit),
        options: vec![],
        tag: [0; 32],
        signature: Some([1; 64]),
    };
    let bytes = Message::Cdn(cdn.clone()).encode().unwrap();
    assert_eq!(Message::decode(&bytes).unwrap(), Message::Cdn(cdn));
    let mut bad_flag = bytes.clone();
    bad_flag[bytes.len() - 65] = 2;
    assert!(Message::decode(&bad_flag).is_err());
    // A FOP's first packet: present means not empty.
    let fop = |first| {
        Message::Fop(msg::Fop {
            id: NegotiationId(1),
            epoch: [9; 8],
            index: 1,
            age_ms: 1,
            flow: FlowId {
                src: "198.18.0.1".parse().unwrap(),
                dst: "198.18.0.2".parse().unwrap(),
                protocol: protocol::UDP,
                src_port: 1,
                dst_port: 2,
            },
            tag: [5; 32],
            first,
        })
    };
    let empty = msg::FirstPacket {
        steered: false,
        packet: vec![],
    };
    assert!(fop(Some(empty)).encode().is_err(), "an empty first packet");
    let plain = fop(None).encode().unwrap();
    // Behind the tag: a zero length, or a flag bit this version does not
    // know, are typed errors.
    for bad in [[0u8, 0, 0, 0x45], [0x02, 0, 1, 0x45]] {
        let mut b = plain.clone();
        b.extend_from_slice(&bad);
        assert!(
            matches!(Message::decode(&b), Err(Error::InvalidField { .. })),
            "{bad:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(m.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(
        kind in 1u8..=5,
        body in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let mut bytes = vec![1, kind, 0, 0, 0, 0, 0, 0, 0, 1];
        bytes.extend(body);
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(m.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn mutated_real_messages_never_panic(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let all = SAMPLES.with(|s| s.clone());
        let mut bytes = all[which.index(all.len())].clone();
        for (at, value, op) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 if i < bytes.len() => bytes[i] = value,
                1 => bytes.insert(i, value),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => {}
            }
        }
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(m.encode().unwrap(), bytes);
        }
    }
}

thread_local! {
    static SAMPLES: Vec<Vec<u8>> = samples();
}

#[test]
fn refusal_codes_round_trip_and_unknown_ones_are_typed_errors() {
    let all = [
        RefuseCode::CredentialRejected,
        RefuseCode::DecisionMismatch,
        RefuseCode::KeyUnavailable,
        RefuseCode::BadProof,
        RefuseCode::HopLimit,
        RefuseCode::NotOwner,
        RefuseCode::UnknownHost,
        RefuseCode::NotInHostGroup,
        RefuseCode::NoPort,
        RefuseCode::GatewayOnPath,
        RefuseCode::UnknownEpoch,
    ];
    for (i, c) in all.into_iter().enumerate() {
        assert_eq!(c.code() as usize, i + 1);
        assert_eq!(RefuseCode::from_code(c.code()).unwrap(), c);
    }
    for bad in [0u8, 12, 255] {
        assert!(matches!(
            RefuseCode::from_code(bad),
            Err(Error::InvalidField { .. })
        ));
    }
}
