//! DPRP under flood: the budgets, the separate capacities and the negative
//! credential cache of an [`Endpoint`] (docs/PROTOCOL.md, "Refusals before
//! any public-key work"). Floods are injected straight into the victim's
//! endpoint with `handle_datagram`, in virtual time; honest traffic runs on
//! the simulated network.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fpn_proto::Error;
use fpn_proto::dprp::msg::{COOKIE_LEN, Cookie, CredentialBytes};
use fpn_proto::dprp::{
    Config, DPRP_PORT, DprpOption, DropCause, Endpoint, Entropy, Limits, Message, MessageType,
    NegotiationId, Prefix, Rate, Verdict,
};
use fpn_proto::flow::{FlowId, protocol};
use fpn_proto::ge::Mode;
use fpn_proto::sim::{self, GeSpec, LinkConfig, NodeId, START_UNIX, Sim};
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn udp(src: IpAddr, dst: IpAddr, sport: u16) -> FlowId {
    FlowId {
        src,
        dst,
        protocol: protocol::UDP,
        src_port: sport,
        dst_port: 9,
    }
}

/// An enrolled GE outside the simulated network (a valid credential from
/// the simulation's CA): its one DDE to `victim` is the template of a flood.
fn flood_template(sim: &Sim, id: u32, addr: &str, victim: IpAddr) -> Vec<u8> {
    // In a group of its own: its template holds no group key, and a member
    // of the victim's group without the key would be refused outright
    // (no downgrade to plain), before the work these tests measure.
    let spec = GeSpec::host(id, "mallory", Mode::Open, &[7], addr);
    let key = sim::node_key(id);
    let credential = sim.issue(Sim::info_of(&spec), &key);
    let cfg = Config::new(
        key,
        credential,
        sim.ca_public(),
        vec![Prefix::host(ip(addr))],
    );
    let mut m = Endpoint::new(cfg, Entropy::Seeded([id as u8; 32]), START_UNIX, sim.now()).unwrap();
    m.initiate(udp(ip(addr), victim, 1), vec![], sim.now())
        .unwrap();
    m.poll_transmit().unwrap().payload
}

/// The template with another negotiation id (and, if given, another credential).
fn variant(template: &[u8], id: u64, credential: Option<&CredentialBytes>) -> Vec<u8> {
    let Message::Dde(mut dde) = Message::decode(template).unwrap() else {
        panic!("a DDE")
    };
    dde.id = NegotiationId(id);
    if let Some(c) = credential {
        dde.credential = c.clone();
    }
    Message::Dde(dde).encode().unwrap()
}

/// The template's credential with its CA signature broken (last byte flipped).
fn forged_credential(template: &[u8]) -> CredentialBytes {
    let Message::Dde(dde) = Message::decode(template).unwrap() else {
        panic!("a DDE")
    };
    let mut bytes = dde.credential.as_bytes().to_vec();
    *bytes.last_mut().unwrap() ^= 1;
    CredentialBytes::new(bytes).unwrap()
}

/// Feeds `dde` to `node` from `from` at `now`, dropping what it answers
/// (the flooder's address is not on the simulated network).
fn inject(
    sim: &mut Sim,
    node: NodeId,
    from: SocketAddr,
    dde: &[u8],
    now: Instant,
) -> Result<(), Error> {
    let ep = sim.endpoint(node);
    let r = ep.handle_datagram(from, dde, now);
    while ep.poll_transmit().is_some() {}
    r
}

fn mallory_addr() -> SocketAddr {
    SocketAddr::new(ip("198.18.0.66"), DPRP_PORT)
}

#[test]
fn a_flood_spends_only_its_own_budget_while_the_victim_and_honest_peers_negotiate() {
    let mut sim = Sim::new(1, LinkConfig::default());
    let victim = sim.add_ge(GeSpec::host(2, "victim", Mode::Open, &[1], "198.18.0.2"));
    let honest = sim.add_ge(GeSpec::host(3, "honest", Mode::Open, &[1], "198.18.0.3"));
    let template = flood_template(&sim, 66, "198.18.0.66", sim.addr(victim));
    let limits = Limits::default();
    // 1000 DDEs, one every millisecond: one second of flood.
    let mut refused = 0;
    for i in 0..1000u64 {
        let now = sim.now();
        match inject(
            &mut sim,
            victim,
            mallory_addr(),
            &variant(&template, i, None),
            now,
        ) {
            Ok(()) => {}
            Err(Error::RateLimited(_)) => refused += 1,
            Err(e) => panic!("unexpected refusal {e}"),
        }
        sim.run_for(Duration::from_millis(1));
    }
    // The per-GE budget: its burst plus one second of refill, no more.
    let allowed = u64::from(limits.dde_per_ge.burst + limits.dde_per_ge.per_second) + 1;
    let stats = sim.endpoint(victim).stats();
    let occ = sim.endpoint(victim).occupancy();
    assert!(occ.responding as u64 <= allowed, "{occ:?}");
    assert_eq!(stats.rate_limited, refused);
    assert_eq!(refused + occ.responding as u64, 1000);
    assert_eq!(occ.initiated, 0);
    // Refused DDEs cost no public-key work: the one credential was checked
    // once, the pair key derived once.
    assert_eq!(stats.credential_verifications, 1);
    assert_eq!(stats.cache.pair_misses, 1);
    // The victim still starts its own negotiations, and still answers an
    // honest peer, while the flood's negotiations linger.
    let own = sim.send_udp(victim, sim.addr(honest), 7, 9, b"out");
    let theirs = sim.send_udp(honest, sim.addr(victim), 8, 9, b"in");
    sim.drive();
    let flows = |n| {
        sim.events(n)
            .iter()
            .filter_map(|(_, e)| match e {
                fpn_proto::dprp::Event::Established(e) => Some(e.flow),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(flows(victim).contains(&own) && flows(victim).contains(&theirs));
    assert!(flows(honest).contains(&own) && flows(honest).contains(&theirs));
}

#[test]
fn a_full_responder_table_never_blocks_the_nodes_own_negotiations() {
    let mut sim = Sim::new(2, LinkConfig::default());
    let victim = sim.add_ge_with(
        GeSpec::host(2, "victim", Mode::Open, &[1], "198.18.0.2"),
        |c| {
            c.limits.dde_per_source = Rate::UNLIMITED;
            c.limits.dde_per_ge = Rate::UNLIMITED;
            c.limits.max_negotiations = 64;
            c.limits.max_responding = 64;
            c.limits.max_initiated = 16;
        },
    );
    let honest = sim.add_ge(GeSpec::host(3, "honest", Mode::Open, &[1], "198.18.0.3"));
    let template = flood_template(&sim, 66, "198.18.0.66", sim.addr(victim));
    let now = sim.now();
    let mut busy = 0;
    for i in 0..1000u64 {
        match inject(
            &mut sim,
            victim,
            mallory_addr(),
            &variant(&template, i, None),
            now,
        ) {
            Ok(()) => {}
            Err(Error::TableFull("responder negotiations")) => busy += 1,
            Err(e) => panic!("unexpected refusal {e}"),
        }
    }
    let stats = sim.endpoint(victim).stats();
    assert_eq!(sim.endpoint(victim).occupancy().responding, 64);
    assert_eq!(
        (busy, stats.responder_busy, stats.initiator_busy),
        (936, 936, 0)
    );
    let own = sim.send_udp(victim, sim.addr(honest), 7, 9, b"out");
    assert_eq!(sim.verdicts(victim), [Verdict::Held]);
    sim.drive();
    assert_eq!(sim.established(victim).map(|e| e.flow), Some(own));
}

#[test]
fn a_repeated_bad_credential_costs_one_verification() {
    let mut sim = Sim::new(3, LinkConfig::default());
    let victim = sim.add_ge(GeSpec::host(2, "victim", Mode::Open, &[1], "198.18.0.2"));
    let template = flood_template(&sim, 66, "198.18.0.66", sim.addr(victim));
    let forged = forged_credential(&template);
    let now = sim.now();
    for i in 0..100u64 {
        let r = inject(
            &mut sim,
            victim,
            mallory_addr(),
            &variant(&template, i, Some(&forged)),
            now,
        );
        let expected = if i == 0 {
            matches!(r, Err(Error::BadSignature(_)))
        } else {
            r == Err(Error::KnownBadCredential)
        };
        assert!(expected, "DDE {i}: {r:?}");
    }
    let s = sim.endpoint(victim).stats();
    assert_eq!(
        (s.credential_verifications, s.credential_cache_refusals),
        (1, 99)
    );
    assert_eq!(sim.endpoint(victim).negotiations(), 0);
    // The genuine credential of the same GE is not refused with the forgery.
    inject(
        &mut sim,
        victim,
        mallory_addr(),
        &variant(&template, 1000, None),
        now,
    )
    .unwrap();
    assert_eq!(sim.endpoint(victim).stats().credential_verifications, 2);
    // Remembered for a while only: after the TTL the forgery is checked again.
    let later = now + Limits::default().bad_credential_ttl + Duration::from_secs(1);
    let r = inject(
        &mut sim,
        victim,
        mallory_addr(),
        &variant(&template, 2000, Some(&forged)),
        later,
    );
    assert!(matches!(r, Err(Error::BadSignature(_))), "{r:?}");
    assert_eq!(sim.endpoint(victim).stats().credential_verifications, 3);
}

#[test]
fn a_revocation_is_never_bypassed_by_the_caches() {
    let mut sim = Sim::new(4, LinkConfig::default());
    let victim = sim.add_ge(GeSpec::host(2, "victim", Mode::Open, &[1], "198.18.0.2"));
    let template = flood_template(&sim, 66, "198.18.0.66", sim.addr(victim));
    let now = sim.now();
    inject(
        &mut sim,
        victim,
        mallory_addr(),
        &variant(&template, 1, None),
        now,
    )
    .unwrap();
    sim.endpoint(victim).revoke_ge(fpn_proto::ge::GeId(66));
    let r = inject(
        &mut sim,
        victim,
        mallory_addr(),
        &variant(&template, 2, None),
        now,
    );
    assert_eq!(r, Err(Error::Revoked(66)));
    for i in 3..50u64 {
        let r = inject(
            &mut sim,
            victim,
            mallory_addr(),
            &variant(&template, i, None),
            now,
        );
        assert_eq!(r, Err(Error::KnownBadCredential));
    }
    let s = sim.endpoint(victim).stats();
    assert_eq!(
        (s.credential_verifications, s.credential_cache_refusals),
        (2, 47)
    );
}

#[test]
fn budgets_refill_with_time() {
    let mut sim = Sim::new(5, LinkConfig::default());
    let victim = sim.add_ge_with(
        GeSpec::host(2, "victim", Mode::Open, &[1], "198.18.0.2"),
        |c| {
            c.limits.dde_per_source = Rate::UNLIMITED;
            c.limits.dde_per_ge = Rate {
                per_second: 10,
                burst: 10,
            };
            c.limits.initiate_per_destination = Rate {
                per_second: 2,
                burst: 3,
            };
        },
    );
    let template = flood_template(&sim, 66, "198.18.0.66", sim.addr(victim));
    let t0 = sim.now();
    let mut id = 0;
    let mut accepted = |sim: &mut Sim, at: Instant| {
        (0..20)
            .filter(|_| {
                id += 1;
                inject(
                    sim,
                    victim,
                    mallory_addr(),
                    &variant(&template, id, None),
                    at,
                )
                .is_ok()
            })
            .count()
    };
    assert_eq!(accepted(&mut sim, t0), 10, "the burst");
    assert_eq!(accepted(&mut sim, t0), 0, "spent");
    assert_eq!(
        accepted(&mut sim, t0 + Duration::from_millis(500)),
        5,
        "half a second"
    );
    assert_eq!(
        accepted(&mut sim, t0 + Duration::from_secs(60)),
        10,
        "never above the burst"
    );
    assert_eq!(sim.endpoint(victim).stats().rate_limited, 80 - 25);

    // This GE's own negotiations towards one destination.
    let ep = sim.endpoint(victim);
    let verdicts: Vec<Verdict> = (0..5)
        .map(|p| {
            ep.handle_packet(udp(ip("198.18.0.2"), ip("198.18.0.3"), p), vec![], t0)
                .unwrap()
        })
        .collect();
    let held = verdicts.iter().filter(|v| **v == Verdict::Held).count();
    assert_eq!(held, 3);
    assert!(
        verdicts[3..]
            .iter()
            .all(|v| *v == Verdict::Dropped(DropCause::RateLimited))
    );
    // Another destination has its own budget.
    let other = ep.handle_packet(udp(ip("198.18.0.2"), ip("198.18.0.4"), 1), vec![], t0);
    assert_eq!(other.unwrap(), Verdict::Held);
    let t1 = t0 + Duration::from_secs(1);
    let refilled = (10..14)
        .filter(|p| {
            ep.handle_packet(udp(ip("198.18.0.2"), ip("198.18.0.3"), *p), vec![], t1)
                .unwrap()
                == Verdict::Held
        })
        .count();
    assert_eq!(refilled, 2);
    assert_eq!(ep.stats().initiate_rate_limited, 4);
}

/// One step of a random flood.
#[derive(Debug, Clone)]
enum Step {
    /// A DDE from source `src` (last octet) claiming GE `ge`, genuine or forged.
    Dde {
        src: u8,
        ge: usize,
        id: u64,
        forged: bool,
    },
    /// The victim starts a negotiation to `dst` (last octet).
    Own { dst: u8, port: u16 },
    /// Time passes (milliseconds) and timers fire.
    Wait(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (any::<u8>(), 0usize..6, 0u64..64, any::<bool>())
            .prop_map(|(src, ge, id, forged)| Step::Dde { src, ge, id, forged }),
        2 => (any::<u8>(), any::<u16>()).prop_map(|(dst, port)| Step::Own { dst, port }),
        1 => (0u16..3000).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn bounded_tables_stay_bounded_under_random_floods(
        steps in proptest::collection::vec(step(), 1..150)
    ) {
        let limits = Limits {
            max_negotiations: 12,
            max_initiated: 4,
            max_responding: 10,
            dde_per_source: Rate { per_second: 5, burst: 3 },
            dde_per_ge: Rate { per_second: 5, burst: 4 },
            initiate_per_destination: Rate { per_second: 1, burst: 2 },
            budget_entries: 8,
            bad_credentials: 3,
            ..Limits::default()
        };
        let mut sim = Sim::new(6, LinkConfig::default());
        let victim = sim.add_ge_with(
            GeSpec::host(2, "victim", Mode::Open, &[1], "198.18.0.2"),
            |c| c.limits = limits,
        );
        let templates: Vec<(Vec<u8>, CredentialBytes)> = (0..6u32)
            .map(|k| {
                let t = flood_template(&sim, 100 + k, &format!("198.19.0.{k}"), sim.addr(victim));
                let f = forged_credential(&t);
                (t, f)
            })
            .collect();
        let mut now = sim.now();
        for s in steps {
            match s {
                Step::Dde { src, ge, id, forged } => {
                    let (t, f) = &templates[ge];
                    let dde = variant(t, id, forged.then_some(f));
                    let from = SocketAddr::new(IpAddr::from([203, 0, 113, src]), DPRP_PORT);
                    let _ = inject(&mut sim, victim, from, &dde, now);
                }
                Step::Own { dst, port } => {
                    let ep = sim.endpoint(victim);
                    let _ = ep.handle_packet(udp(ip("198.18.0.2"), IpAddr::from([198, 51, 100, dst]), port), vec![], now);
                }
                Step::Wait(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    sim.endpoint(victim).handle_timeout(now);
                }
            }
            let ep = sim.endpoint(victim);
            while ep.poll_transmit().is_some() {}
            while ep.poll_event().is_some() {}
            let o = ep.occupancy();
            prop_assert!(o.initiated <= limits.max_initiated, "{o:?}");
            prop_assert!(o.responding <= limits.max_responding, "{o:?}");
            prop_assert!(o.initiated + o.responding <= limits.max_negotiations + limits.max_initiated, "{o:?}");
            prop_assert!(o.source_buckets <= limits.budget_entries, "{o:?}");
            prop_assert!(o.ge_buckets <= limits.budget_entries, "{o:?}");
            prop_assert!(o.destination_buckets <= limits.budget_entries, "{o:?}");
            prop_assert!(o.bad_credentials <= limits.bad_credentials, "{o:?}");
            prop_assert_eq!(ep.negotiations(), o.initiated + o.responding);
        }
    }
}

fn wire_types(sim: &Sim) -> Vec<(NodeId, MessageType)> {
    sim.wire()
        .iter()
        .map(|s| (s.from, fpn_proto::dprp::msg::peek(&s.payload).unwrap().0))
        .collect()
}

#[test]
fn under_load_a_direct_dde_needs_a_cookie_before_any_public_key_work() {
    let mut sim = Sim::new(7, LinkConfig::default());
    // Threshold 0: the victim is "under load" from the start.
    let victim = sim.add_ge_with(
        GeSpec::host(2, "victim", Mode::Open, &[1], "198.18.0.2"),
        |c| c.limits.cookie_threshold = 0,
    );
    let honest = sim.add_ge(GeSpec::host(3, "honest", Mode::Open, &[1], "198.18.0.3"));
    // A flood from spoofed sources: each DDE gets a COOKIE and leaves nothing.
    let template = flood_template(&sim, 66, "198.18.0.66", sim.addr(victim));
    let now = sim.now();
    for i in 0..300u64 {
        let from = SocketAddr::new(IpAddr::from([203, 0, 113, (i % 250) as u8]), 4000);
        let ep = sim.endpoint(victim);
        ep.handle_datagram(from, &variant(&template, i, None), now)
            .unwrap();
        let t = ep.poll_transmit().expect("a COOKIE");
        assert_eq!((t.dst, t.payload.len()), (from, 42));
        assert!(matches!(
            Message::decode(&t.payload),
            Ok(Message::Cookie(_))
        ));
    }
    let s = sim.endpoint(victim).stats();
    assert_eq!(s.cookies_sent, 300);
    assert_eq!((s.credential_verifications, s.cache.pair_misses), (0, 0));
    assert_eq!(sim.endpoint(victim).negotiations(), 0);
    // A cookie made for one source is refused from another (answered anew).
    let (a, b) = (
        SocketAddr::new(ip("203.0.113.1"), 4000),
        SocketAddr::new(ip("203.0.113.2"), 4000),
    );
    let ep = sim.endpoint(victim);
    ep.handle_datagram(a, &variant(&template, 999, None), now)
        .unwrap();
    let Ok(Message::Cookie(c)) = Message::decode(&ep.poll_transmit().unwrap().payload) else {
        panic!("a COOKIE")
    };
    let Message::Dde(mut dde) = Message::decode(&variant(&template, 999, None)).unwrap() else {
        panic!("a DDE")
    };
    dde.options.push(DprpOption::Cookie(c.cookie));
    let echoed = Message::Dde(dde).encode().unwrap();
    ep.handle_datagram(b, &echoed, now).unwrap();
    assert!(matches!(
        Message::decode(&ep.poll_transmit().unwrap().payload),
        Ok(Message::Cookie(_))
    ));
    assert_eq!(ep.stats().cookie_refusals, 1);
    assert_eq!(ep.stats().cookies_accepted, 0);
    assert_eq!(ep.negotiations(), 0);
    while ep.poll_transmit().is_some() {}
    // An honest peer echoes the cookie and gets through in one more round trip.
    sim.send_udp(honest, sim.addr(victim), 5, 6, b"x");
    sim.drive();
    assert_eq!(sim.endpoint(victim).stats().cookies_accepted, 1);
    assert!(sim.established(honest).is_some() && sim.established(victim).is_some());
    assert!(
        sim.established(victim).unwrap().peer_options.is_empty(),
        "the cookie is not a flow option"
    );
    assert_eq!(
        wire_types(&sim),
        [
            (honest, MessageType::Dde),
            (victim, MessageType::Cookie),
            (honest, MessageType::Dde),
            (victim, MessageType::Rgi),
            (honest, MessageType::Mpit),
            (victim, MessageType::Cdn)
        ]
    );
}

#[test]
fn below_the_threshold_no_cookie_is_asked() {
    let mut sim = Sim::new(8, LinkConfig::default());
    let victim = sim.add_ge_with(
        GeSpec::host(2, "victim", Mode::Open, &[1], "198.18.0.2"),
        |c| c.limits.cookie_threshold = 2,
    );
    let template = flood_template(&sim, 66, "198.18.0.66", sim.addr(victim));
    let now = sim.now();
    let kinds: Vec<MessageType> = (0..4u64)
        .map(|i| {
            let ep = sim.endpoint(victim);
            ep.handle_datagram(mallory_addr(), &variant(&template, i, None), now)
                .unwrap();
            fpn_proto::dprp::msg::peek(&ep.poll_transmit().unwrap().payload)
                .unwrap()
                .0
        })
        .collect();
    assert_eq!(
        kinds,
        [
            MessageType::Rgi,
            MessageType::Rgi,
            MessageType::Cookie,
            MessageType::Cookie
        ]
    );
}

#[test]
fn the_cookie_message_and_option_are_canonical_and_typed() {
    let m = Message::Cookie(Cookie {
        id: NegotiationId(0x0102_0304_0506_0708),
        cookie: [7; COOKIE_LEN],
        binder: [9; COOKIE_LEN],
    });
    let bytes = m.encode().unwrap();
    assert_eq!(bytes.len(), 10 + 2 * COOKIE_LEN);
    assert_eq!(Message::decode(&bytes).unwrap(), m);
    for n in 0..bytes.len() {
        assert!(Message::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        Message::decode(&long),
        Err(Error::TrailingBytes { .. })
    ));
    // Option kind 3 is the cookie, 16 bytes exactly; kind 3 cannot pose as unknown.
    let sim = Sim::new(9, LinkConfig::default());
    let template = flood_template(&sim, 66, "198.18.0.66", ip("198.18.0.2"));
    let Message::Dde(mut dde) = Message::decode(&template).unwrap() else {
        panic!("a DDE")
    };
    dde.options.push(DprpOption::Cookie([5; COOKIE_LEN]));
    let with = Message::Dde(dde.clone()).encode().unwrap();
    assert_eq!(Message::decode(&with).unwrap(), Message::Dde(dde.clone()));
    dde.options = vec![DprpOption::Unknown {
        kind: 3,
        value: vec![5; COOKIE_LEN],
    }];
    assert!(Message::Dde(dde).encode().is_err());
}
