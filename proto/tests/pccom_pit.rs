//! The PIT: lookups in both directions, the packet path through PCCOM,
//! tentative entries, capacity, idle aging, renegotiation after key rotation
//! or at the packet limit, erased key versions, and rekeying with in-flight
//! packets.

mod packet_util;

use std::time::{Duration, Instant};

use fpn_proto::Error;
use fpn_proto::action::Action;
use fpn_proto::flow::FlowId;
use fpn_proto::ge::{GeId, GroupId};
use fpn_proto::keys::KeyVersion;
use fpn_proto::packet::Packet;
use fpn_proto::pccom::{Limits, TRAILER_LEN};
use fpn_proto::pit::{
    Direction, Disposition, EntryState, NewEntry, Origin, Pit, PitConfig, PitEvent,
    RenegotiateReason,
};
use packet_util::*;

const G1: GroupId = GroupId(1);
const G2: GroupId = GroupId(2);
const V1: KeyVersion = KeyVersion(1);
const V2: KeyVersion = KeyVersion(2);

/// A flow id with the given source port (distinct flows for table tests).
fn flow(port: u16) -> FlowId {
    FlowId {
        src: V4_SRC.into(),
        dst: V4_DST.into(),
        protocol: 17,
        src_port: port,
        dst_port: 53,
    }
}

/// Runs one packet through `pit`; returns the disposition and the resulting bytes.
fn run(
    pit: &mut Pit,
    origin: Origin,
    pkt: &[u8],
    now: Instant,
) -> (Result<Disposition, Error>, Vec<u8>) {
    let (mut buf, len) = with_room(pkt, TRAILER_LEN);
    let f = flow_of(pkt);
    let d = pit.handle_packet(&f, origin, &mut buf, len, now);
    if let Ok(Disposition::Forward { len }) = d {
        buf.truncate(len);
    }
    (d, buf)
}

/// GE `a` (initiator of the flow of `ipv4_udp`) and GE `b`, with a protected entry each.
fn protected_pair(config: PitConfig, now: Instant) -> (Pit, Pit, FlowId) {
    let (ka, kb) = flow_keys(9);
    let f = flow_of(&ipv4_udp(1));
    let mut a = Pit::new(config);
    let mut b = Pit::new(config);
    a.insert(f, NewEntry::protect(G1, V1, GeId(2), ka), now)
        .unwrap();
    b.insert(f, NewEntry::protect(G1, V1, GeId(1), kb), now)
        .unwrap();
    (a, b, f)
}

#[test]
fn lookups_match_both_directions() {
    let now = Instant::now();
    let mut pit = Pit::new(PitConfig::default());
    let f = flow(1000);
    pit.insert(f, NewEntry::pass().with_peer(GeId(4)), now)
        .unwrap();
    let (dir, e) = pit.lookup(&f).unwrap();
    assert_eq!(
        (dir, e.action(), e.peer()),
        (Direction::Forward, Action::Pass, Some(GeId(4)))
    );
    assert_eq!(pit.lookup(&f.reversed()).unwrap().0, Direction::Reverse);
    assert!(pit.lookup(&flow(1001)).is_none());
    let mut buf = ipv4_udp(5);
    let len = buf.len();
    assert_eq!(
        pit.handle_packet(&flow(1001), Origin::Local, &mut buf, len, now),
        Ok(Disposition::Unknown)
    );
    // Removing by the reversed id finds it too.
    assert!(pit.remove(&f.reversed()).is_some());
    assert!(pit.is_empty());
}

#[test]
fn a_protected_flow_crosses_between_two_pits() {
    let now = Instant::now();
    let (mut a, mut b, f) = protected_pair(PitConfig::default(), now);
    let plain = ipv4_udp(200);
    let (d, wire) = run(&mut a, Origin::Local, &plain, now);
    assert_eq!(
        d,
        Ok(Disposition::Forward {
            len: plain.len() + TRAILER_LEN
        })
    );
    assert_valid(&wire);
    let (d, back) = run(&mut b, Origin::Remote, &wire, now);
    assert_eq!(d, Ok(Disposition::Forward { len: plain.len() }));
    assert_eq!(back, plain);

    // The reply: b protects, a unprotects; both find the entry reversed.
    let mut reply = plain.clone();
    {
        let mut p = Packet::parse(&mut reply[..]).unwrap();
        p.set_src(V4_DST.into()).unwrap();
        p.set_dst(V4_SRC.into()).unwrap();
        p.set_src_port(53).unwrap();
        p.set_dst_port(40000).unwrap();
    }
    assert_eq!(flow_of(&reply), f.reversed());
    let (_, wire) = run(&mut b, Origin::Local, &reply, now);
    let (d, back) = run(&mut a, Origin::Remote, &wire, now);
    assert_eq!(d, Ok(Disposition::Forward { len: reply.len() }));
    assert_eq!(back, reply);

    let s = a.lookup(&f).unwrap().1.stats();
    assert_eq!((s.packets_local, s.packets_remote), (1, 1));
    assert_eq!(s.bytes_local, plain.len() as u64);

    // A replay is refused, counted, and reported.
    let (_, w) = run(&mut a, Origin::Local, &plain, now);
    assert!(run(&mut b, Origin::Remote, &w, now).0.is_ok());
    let (d, _) = run(&mut b, Origin::Remote, &w, now);
    assert!(matches!(d, Err(Error::Replay { .. })));
    assert_eq!(b.lookup(&f).unwrap().1.stats().rejected, 1);
}

#[test]
fn tentative_entries_hold_until_confirmed() {
    let now = Instant::now();
    let (ka, _) = flow_keys(1);
    let mut pit = Pit::new(PitConfig::default());
    let plain = ipv4_udp(10);
    let f = flow_of(&plain);
    pit.insert(f, NewEntry::protect(G1, V1, GeId(2), ka).tentative(), now)
        .unwrap();
    assert_eq!(pit.lookup(&f).unwrap().1.state(), EntryState::Tentative);
    let (d, out) = run(&mut pit, Origin::Local, &plain, now);
    assert_eq!(d, Ok(Disposition::Hold));
    assert_eq!(
        &out[..plain.len()],
        &plain[..],
        "held packets are untouched"
    );
    assert!(pit.confirm(&f.reversed()));
    assert!(!pit.confirm(&flow(1)));
    let (d, _) = run(&mut pit, Origin::Local, &plain, now);
    assert_eq!(
        d,
        Ok(Disposition::Forward {
            len: plain.len() + TRAILER_LEN
        })
    );
}

#[test]
fn drop_pass_and_relay_do_what_they_say() {
    let now = Instant::now();
    let plain = ipv4_tcp(30);
    let f = flow_of(&plain);
    for (entry, want) in [
        (NewEntry::drop_flow(), Disposition::Drop),
        (NewEntry::pass(), Disposition::Forward { len: plain.len() }),
        (NewEntry::relay(), Disposition::Forward { len: plain.len() }),
    ] {
        let mut pit = Pit::new(PitConfig::default());
        pit.insert(f, entry, now).unwrap();
        for origin in [Origin::Local, Origin::Remote] {
            let (d, out) = run(&mut pit, origin, &plain, now);
            assert_eq!(d, Ok(want));
            assert_eq!(&out[..plain.len()], &plain[..], "unchanged");
        }
    }
}

#[test]
fn entries_from_negotiation_parts_must_be_consistent() {
    let now = Instant::now();
    let (k, _) = flow_keys(3);
    let mut pit = Pit::new(PitConfig::default());
    let e = NewEntry::from_parts(Action::Protect(G1), GeId(5), Some(V2), Some(k.clone())).unwrap();
    pit.insert(flow(1), e, now).unwrap();
    let (_, got) = pit.lookup(&flow(1)).unwrap();
    assert_eq!(
        (got.action(), got.peer(), got.key_version()),
        (Action::Protect(G1), Some(GeId(5)), Some(V2))
    );
    assert!(got.crypto().is_some());
    let e = NewEntry::from_parts(Action::Relay, GeId(6), None, None).unwrap();
    pit.insert(flow(2), e, now).unwrap();
    assert!(pit.lookup(&flow(2)).unwrap().1.crypto().is_none());
    for bad in [
        NewEntry::from_parts(Action::Protect(G1), GeId(5), None, Some(k.clone())),
        NewEntry::from_parts(Action::Protect(G1), GeId(5), Some(V1), None),
        NewEntry::from_parts(Action::Pass, GeId(5), None, Some(k.clone())),
        NewEntry::from_parts(Action::Drop, GeId(5), Some(V1), None),
    ] {
        assert!(matches!(bad, Err(Error::InvalidField { .. })));
    }
}

#[test]
fn a_full_table_refuses_new_flows_but_allows_replacement() {
    let now = Instant::now();
    let mut pit = Pit::new(PitConfig {
        max_entries: 2,
        ..PitConfig::default()
    });
    pit.insert(flow(1), NewEntry::pass(), now).unwrap();
    pit.insert(flow(2), NewEntry::pass(), now).unwrap();
    assert_eq!(
        pit.insert(flow(3), NewEntry::pass(), now),
        Err(Error::PitFull { capacity: 2 })
    );
    // Replacing, in either orientation, is not a new flow.
    pit.insert(flow(2).reversed(), NewEntry::drop_flow(), now)
        .unwrap();
    assert_eq!(pit.len(), 2);
    assert_eq!(pit.lookup(&flow(2)).unwrap().1.action(), Action::Drop);
    assert_eq!(pit.lookup(&flow(2)).unwrap().0, Direction::Reverse);
}

#[test]
fn idle_entries_age_out_and_failures_do_not_refresh_them() {
    let t0 = Instant::now();
    let cfg = PitConfig {
        idle_timeout: Duration::from_secs(300),
        ..PitConfig::default()
    };
    let (mut a, mut b, f) = protected_pair(cfg, t0);
    for p in [5, 7, 6] {
        b.insert(flow(p), NewEntry::pass(), t0).unwrap();
    }
    let plain = ipv4_udp(10);
    // One good packet at t0+100 refreshes b's entry for f.
    let (_, wire) = run(&mut a, Origin::Local, &plain, t0 + Duration::from_secs(100));
    let (d, _) = run(&mut b, Origin::Remote, &wire, t0 + Duration::from_secs(100));
    assert!(d.is_ok());
    // A forged one at t0+350 does not.
    let mut forged = wire.clone();
    let n = forged.len();
    forged[n - 1] ^= 1;
    forged[n - TRAILER_LEN + 7] ^= 0x40; // a fresh counter, so it is not just a replay
    let (d, _) = run(
        &mut b,
        Origin::Remote,
        &forged,
        t0 + Duration::from_secs(350),
    );
    assert_eq!(d, Err(Error::PacketAuth));

    assert_eq!(b.next_expiry(), Some(t0 + Duration::from_secs(300)));
    assert!(b.expire(t0 + Duration::from_secs(299)).is_empty());
    // The three idle pass entries go, sorted; f stays until t0+400.
    assert_eq!(
        b.expire(t0 + Duration::from_secs(300)),
        vec![flow(5), flow(6), flow(7)]
    );
    assert_eq!(b.next_expiry(), Some(t0 + Duration::from_secs(400)));
    assert!(b.expire(t0 + Duration::from_secs(399)).is_empty());
    assert_eq!(b.expire(t0 + Duration::from_secs(400)), vec![f]);
    assert!(b.is_empty());
    assert_eq!(b.next_expiry(), None);
}

#[test]
fn key_rotation_queues_renegotiation_and_erasure_drops_entries() {
    let now = Instant::now();
    let mut pit = Pit::new(PitConfig::default());
    let (k, _) = flow_keys(2);
    pit.insert(flow(1), NewEntry::protect(G1, V1, GeId(7), k.clone()), now)
        .unwrap();
    pit.insert(flow(2), NewEntry::protect(G1, V2, GeId(7), k.clone()), now)
        .unwrap();
    pit.insert(flow(3), NewEntry::protect(G2, V1, GeId(8), k.clone()), now)
        .unwrap();
    pit.insert(flow(4), NewEntry::protect(G1, V1, GeId(9), k), now)
        .unwrap();
    pit.insert(flow(5), NewEntry::pass(), now).unwrap();

    assert_eq!(pit.on_key_rotation(G1, V2), 2);
    let reneg = |flow| PitEvent::Renegotiate {
        flow,
        reason: RenegotiateReason::KeyRotation,
    };
    assert_eq!(pit.poll_event(), Some(reneg(flow(1))));
    assert_eq!(pit.poll_event(), Some(reneg(flow(4))));
    assert_eq!(pit.poll_event(), None);
    assert_eq!(
        pit.lookup(&flow(1)).unwrap().1.renegotiate(),
        Some(RenegotiateReason::KeyRotation)
    );
    assert_eq!(pit.lookup(&flow(2)).unwrap().1.renegotiate(), None);
    // Told twice, asks once.
    assert_eq!(pit.on_key_rotation(G1, V2), 0);
    assert_eq!(pit.poll_event(), None);

    // Marked entries keep working until their version is erased.
    let plain = {
        let mut p = ipv4_udp(10);
        Packet::parse(&mut p[..]).unwrap().set_src_port(1).unwrap();
        p
    };
    let (d, _) = run(&mut pit, Origin::Local, &plain, now);
    assert_eq!(
        d,
        Ok(Disposition::Forward {
            len: plain.len() + TRAILER_LEN
        })
    );

    assert_eq!(pit.on_key_erased(G1, V1), vec![flow(1), flow(4)]);
    assert!(pit.lookup(&flow(1)).is_none());
    assert!(pit.lookup(&flow(2)).is_some() && pit.lookup(&flow(3)).is_some());
    assert_eq!(pit.len(), 3);
}

#[test]
fn the_packet_limit_queues_one_renegotiation_then_sending_stops() {
    let now = Instant::now();
    let cfg = PitConfig {
        limits: Limits {
            rekey_after: 3,
            reject_after: 5,
        },
        ..PitConfig::default()
    };
    let (mut a, _, f) = protected_pair(cfg, now);
    let plain = ipv4_udp(10);
    for i in 0..5 {
        let (d, _) = run(&mut a, Origin::Local, &plain, now);
        assert!(d.is_ok(), "packet {i}");
        let ev = a.poll_event();
        if i == 2 {
            assert_eq!(
                ev,
                Some(PitEvent::Renegotiate {
                    flow: f,
                    reason: RenegotiateReason::PacketLimit
                })
            );
        } else {
            assert_eq!(ev, None, "packet {i}");
        }
    }
    let (d, _) = run(&mut a, Origin::Local, &plain, now);
    assert_eq!(d, Err(Error::CounterExhausted));
}

#[test]
fn in_flight_packets_under_replaced_keys_open_during_the_grace_period() {
    let t0 = Instant::now();
    let cfg = PitConfig {
        rekey_grace: Duration::from_secs(10),
        ..PitConfig::default()
    };
    let (mut a, mut b, f) = protected_pair(cfg, t0);
    let plain = ipv4_udp(40);
    for _ in 0..20 {
        let (_, w) = run(&mut a, Origin::Local, &plain, t0);
        assert!(run(&mut b, Origin::Remote, &w, t0).0.is_ok());
    }
    // Two packets leave under the old keys but arrive after the rekey.
    let late: Vec<Vec<u8>> = (0..2)
        .map(|_| run(&mut a, Origin::Local, &plain, t0).1)
        .collect();

    // Renegotiated (by b this time: b keys the flow the other way round).
    let (ka, kb) = flow_keys(10);
    a.insert(f, NewEntry::protect(G1, V2, GeId(2), ka), t0)
        .unwrap();
    b.insert(f.reversed(), NewEntry::protect(G1, V2, GeId(1), kb), t0)
        .unwrap();
    assert_eq!(b.len(), 1);
    let (_, w) = run(&mut a, Origin::Local, &plain, t0);
    assert_eq!(
        run(&mut b, Origin::Remote, &w, t0).1,
        plain,
        "new keys work"
    );

    let t1 = t0 + Duration::from_secs(1);
    let (d, out) = run(&mut b, Origin::Remote, &late[0], t1);
    assert_eq!(d, Ok(Disposition::Forward { len: plain.len() }));
    assert_eq!(out, plain);
    // After the grace period the old keys are gone.
    assert_eq!(b.next_expiry(), Some(t0 + Duration::from_secs(10)));
    b.expire(t0 + Duration::from_secs(10));
    let (d, _) = run(
        &mut b,
        Origin::Remote,
        &late[1],
        t0 + Duration::from_secs(11),
    );
    assert_eq!(d, Err(Error::PacketAuth));
}

/// F7: after a rekey the new keys count from zero and soon reach the counters
/// the old keys had used. Picking the receive state by counter alone then
/// sent new-key packets to the old state, which refused them (first as a
/// replay, then as forgeries) for the whole grace period, stalling the flow.
/// Every packet must open, whichever key it was sealed with.
#[test]
fn new_key_packets_open_when_their_counters_reach_the_old_keys_ones() {
    let t0 = Instant::now();
    let (mut a, mut b, f) = protected_pair(PitConfig::default(), t0);
    let plain = ipv4_udp(40);
    // A busy flow: the old keys are far along.
    for _ in 0..300 {
        let (_, w) = run(&mut a, Origin::Local, &plain, t0);
        assert!(run(&mut b, Origin::Remote, &w, t0).0.is_ok());
    }
    let late: Vec<Vec<u8>> = (0..3)
        .map(|_| run(&mut a, Origin::Local, &plain, t0).1)
        .collect();

    let (ka, kb) = flow_keys(10);
    a.insert(f, NewEntry::protect(G1, V2, GeId(2), ka), t0)
        .unwrap();
    b.insert(f, NewEntry::protect(G1, V2, GeId(1), kb), t0)
        .unwrap();
    let t1 = t0 + Duration::from_secs(1);
    // New-key counters run past the old keys' highest (300); late old-key
    // packets arrive in between.
    for i in 0..700 {
        let (_, w) = run(&mut a, Origin::Local, &plain, t1);
        let (d, out) = run(&mut b, Origin::Remote, &w, t1);
        assert_eq!(
            d,
            Ok(Disposition::Forward { len: plain.len() }),
            "new-key packet {i}"
        );
        assert_eq!(out, plain);
        if let Some(old) = [100, 301, 450].iter().position(|&at| at == i) {
            let (d, out) = run(&mut b, Origin::Remote, &late[old], t1);
            assert_eq!(
                d,
                Ok(Disposition::Forward { len: plain.len() }),
                "late packet {old}"
            );
            assert_eq!(out, plain);
        }
    }
    // Replays still fail under either key.
    assert!(run(&mut b, Origin::Remote, &late[0], t1).0.is_err());
    assert_eq!(b.iter().next().unwrap().1.stats().rejected, 1);
}

#[test]
fn per_peer_totals_never_go_back_when_flows_end_or_rekey() {
    let t0 = Instant::now();
    let cfg = PitConfig {
        idle_timeout: Duration::from_secs(300),
        ..PitConfig::default()
    };
    let (mut a, _b, f) = protected_pair(cfg, t0);
    let plain = ipv4_udp(100);
    let len = plain.len() as u64;
    for _ in 0..3 {
        assert!(run(&mut a, Origin::Local, &plain, t0).0.is_ok());
    }
    let peer = a.lookup(&f).and_then(|(_, e)| e.peer()).unwrap();
    let totals = |p: &Pit| p.peer_totals().get(&peer).copied().unwrap_or_default();
    assert_eq!(
        (totals(&a).packets_local, totals(&a).bytes_local),
        (3, 3 * len)
    );
    // A renegotiation replaces the entry (its counts start again): the
    // peer's total keeps what the old one had.
    let (ka, _) = flow_keys(11);
    a.insert(f, NewEntry::protect(G1, V2, peer, ka), t0)
        .unwrap();
    assert!(run(&mut a, Origin::Local, &plain, t0).0.is_ok());
    assert_eq!(totals(&a).packets_local, 4);
    // The flow ages out: the total stays.
    assert_eq!(a.expire(t0 + Duration::from_secs(300)), vec![f]);
    assert!(a.is_empty());
    assert_eq!(
        (totals(&a).packets_local, totals(&a).bytes_local),
        (4, 4 * len)
    );
}

#[test]
fn many_flows_age_out_in_slices_and_packets_do_not_touch_the_wheel() {
    let t0 = Instant::now();
    let mut pit = Pit::new(PitConfig::default());
    let n = 5000u16;
    for p in 0..n {
        pit.insert(flow(p), NewEntry::pass(), t0).unwrap();
    }
    assert_eq!(pit.ageing_filings(), usize::from(n));
    // Every other flow carries packets at t0+100: the wheel does not grow.
    let mut buf = vec![0u8; 64];
    for _ in 0..3 {
        for p in (0..n).step_by(2) {
            let now = t0 + Duration::from_secs(100);
            let d = pit.handle_packet(&flow(p), Origin::Local, &mut buf, 20, now);
            assert_eq!(d, Ok(Disposition::Forward { len: 20 }));
        }
    }
    assert_eq!(pit.ageing_filings(), usize::from(n));

    // At t0+300 the idle half goes, at most 1000 looked at per call.
    let at = t0 + Duration::from_secs(300);
    assert_eq!(pit.next_expiry(), Some(at));
    let mut gone = Vec::new();
    let mut calls = 0;
    loop {
        let (g, more) = pit.expire_some(at, 1000);
        assert!(g.len() <= 1000);
        gone.extend(g);
        calls += 1;
        if !more {
            break;
        }
        assert!(pit.next_expiry().is_some_and(|t| t <= at));
    }
    assert_eq!(calls, 5);
    gone.sort_unstable();
    let mut idle: Vec<FlowId> = (1..n).step_by(2).map(flow).collect();
    idle.sort_unstable();
    assert_eq!(gone, idle);
    // The used half is filed again at its own deadline.
    assert_eq!(pit.len(), usize::from(n / 2));
    assert_eq!(pit.ageing_filings(), usize::from(n / 2));
    assert_eq!(pit.next_expiry(), Some(t0 + Duration::from_secs(400)));
    assert_eq!(pit.expire(t0 + Duration::from_secs(400)).len(), 2500);
    assert!(pit.is_empty());
    assert_eq!(pit.next_expiry(), None);
}

#[test]
fn removed_and_replaced_entries_do_not_grow_the_wheel() {
    let t0 = Instant::now();
    let mut pit = Pit::new(PitConfig::default());
    for round in 0..50u16 {
        for p in 0..1000u16 {
            let f = flow(p);
            pit.insert(f, NewEntry::pass(), t0).unwrap();
            if round % 2 == 0 {
                pit.remove(&f);
            } else {
                // Replaced under the other orientation.
                pit.insert(f.reversed(), NewEntry::relay(), t0).unwrap();
            }
        }
        assert!(
            pit.ageing_filings() <= 2 * pit.len() + 1024,
            "round {round}: {} filings for {} entries",
            pit.ageing_filings(),
            pit.len()
        );
    }
    assert_eq!(pit.len(), 1000);
    assert_eq!(pit.expire(t0 + Duration::from_secs(300)).len(), 1000);
    assert_eq!(pit.ageing_filings(), 0);
}

#[test]
fn a_full_table_evicts_the_least_recently_used_idle_entry_or_refuses() {
    let t0 = Instant::now();
    let mut pit = Pit::new(PitConfig {
        max_entries: 4,
        ..PitConfig::default()
    });
    for p in 0..4 {
        // All with one peer; flow 1 names its opening too: the eviction
        // reports both, for the eviction notice to the peer.
        let e = match p {
            1 => NewEntry::pass().with_peer(GeId(7)).with_opening(0x77),
            _ => NewEntry::pass().with_peer(GeId(7)),
        };
        pit.insert(flow(p), e, t0 + Duration::from_millis(u64::from(p)))
            .unwrap();
    }
    // Nothing idle for a second yet: refused.
    let half = t0 + Duration::from_millis(500);
    assert_eq!(
        pit.insert(flow(9), NewEntry::pass(), half),
        Err(Error::PitFull { capacity: 4 })
    );
    assert_eq!(pit.poll_event(), None);
    // Flow 0 is used; flow 1 is then the least recently used.
    let mut buf = vec![0u8; 64];
    let busy = t0 + Duration::from_millis(1500);
    assert!(
        pit.handle_packet(&flow(0), Origin::Local, &mut buf, 20, busy)
            .is_ok()
    );
    let later = t0 + Duration::from_secs(2);
    pit.insert(flow(9), NewEntry::pass(), later).unwrap();
    assert_eq!(
        pit.poll_event(),
        Some(PitEvent::Evicted {
            flow: flow(1),
            peer: Some(GeId(7)),
            opening: Some(0x77)
        })
    );
    assert_eq!(pit.len(), 4);
    assert!(pit.lookup(&flow(1)).is_none() && pit.lookup(&flow(0)).is_some());
    // A replacement of a live flow needs no room.
    pit.insert(flow(2), NewEntry::relay(), later).unwrap();
    assert_eq!(pit.poll_event(), None);
    // Ageing still finds every entry that stayed.
    assert_eq!(pit.expire(t0 + Duration::from_secs(400)).len(), 4);
    assert!(pit.is_empty());
}

/// One peer opening flows by the thousand must not push out another
/// peer's idle flows: a peer at or over its fair share of a full table
/// (the table over the peers holding entries) makes room from its own
/// flows only; a peer under its share takes from those over theirs.
#[test]
fn a_peer_over_its_share_of_a_full_table_evicts_only_its_own_flows() {
    let t0 = Instant::now();
    let mut pit = Pit::new(PitConfig {
        max_entries: 8,
        ..PitConfig::default()
    });
    let (a, b) = (GeId(1), GeId(2));
    let at = |s: u64| t0 + Duration::from_secs(s);
    // b's two flows are the least recently used of the table.
    for p in 0..2 {
        pit.insert(flow(p), NewEntry::pass().with_peer(b), t0)
            .unwrap();
    }
    for p in 10..16 {
        pit.insert(flow(p), NewEntry::pass().with_peer(a), at(10))
            .unwrap();
    }
    // a holds 6 of 8 (its share is 4): its new flow takes its own idlest.
    pit.insert(flow(16), NewEntry::pass().with_peer(a), at(20))
        .unwrap();
    match pit.poll_event() {
        Some(PitEvent::Evicted { flow: f, .. }) => {
            assert!((10..16).contains(&f.src_port), "{f:?}");
        }
        e => panic!("{e:?}"),
    }
    assert!(pit.lookup(&flow(0)).is_some() && pit.lookup(&flow(1)).is_some());
    // Every flow of a in use: a is refused, b's idle flows stay.
    let mut buf = vec![0u8; 64];
    for p in 10..17 {
        let _ = pit.handle_packet(&flow(p), Origin::Local, &mut buf, 20, at(30));
    }
    assert_eq!(
        pit.insert(flow(17), NewEntry::pass().with_peer(a), at(30)),
        Err(Error::PitFull { capacity: 8 })
    );
    assert_eq!(pit.poll_event(), None);
    // b, under its share, takes a's idlest flow (idle for a second now).
    pit.insert(flow(2), NewEntry::pass().with_peer(b), at(32))
        .unwrap();
    match pit.poll_event() {
        Some(PitEvent::Evicted { flow: f, .. }) => {
            assert!((10..17).contains(&f.src_port), "{f:?}");
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(pit.len(), 8);
    // A third peer: the share is now 8/3 = 2, so b (3) is over it too,
    // and its flows from t0 are the idlest of those that may go.
    pit.insert(flow(40), NewEntry::pass().with_peer(GeId(3)), at(40))
        .unwrap();
    match pit.poll_event() {
        Some(PitEvent::Evicted { flow: f, .. }) => assert!(f.src_port < 2, "{f:?}"),
        e => panic!("{e:?}"),
    }
}

/// Entries that may not go do not use up the scan: a peer over its share
/// finds its own idle flows behind 300 older ones of a peer within its
/// share; with more peers than entries a newcomer still gets a place.
#[test]
fn fair_share_eviction_looks_past_entries_that_may_not_go() {
    let t0 = Instant::now();
    let mut pit = Pit::new(PitConfig {
        max_entries: 600,
        ..PitConfig::default()
    });
    let (a, b) = (GeId(1), GeId(2));
    for p in 0..300 {
        pit.insert(flow(p), NewEntry::pass().with_peer(b), t0)
            .unwrap();
    }
    for p in 300..600 {
        pit.insert(
            flow(p),
            NewEntry::pass().with_peer(a),
            t0 + Duration::from_secs(10),
        )
        .unwrap();
    }
    pit.insert(
        flow(600),
        NewEntry::pass().with_peer(a),
        t0 + Duration::from_secs(20),
    )
    .unwrap();
    match pit.poll_event() {
        Some(PitEvent::Evicted { flow: f, .. }) => assert!(f.src_port >= 300, "{f:?}"),
        e => panic!("{e:?}"),
    }

    let mut small = Pit::new(PitConfig {
        max_entries: 16,
        ..PitConfig::default()
    });
    for p in 0..16u16 {
        small
            .insert(
                flow(p),
                NewEntry::pass().with_peer(GeId(u32::from(p) + 1)),
                t0,
            )
            .unwrap();
    }
    // 17 peers share 16 entries: the newcomer takes the idlest.
    small
        .insert(
            flow(99),
            NewEntry::pass().with_peer(GeId(99)),
            t0 + Duration::from_secs(5),
        )
        .unwrap();
    assert!(matches!(small.poll_event(), Some(PitEvent::Evicted { .. })));
}

/// A storm fills the table within a second: eviction looks at a slot's
/// flows from the first opened, so it finds the ones idle for a second
/// instead of refusing behind the slot's newest ones.
#[test]
fn eviction_looks_at_a_slots_oldest_flows_first() {
    let t0 = Instant::now();
    let mut pit = Pit::new(PitConfig {
        max_entries: 600,
        ..PitConfig::default()
    });
    // One new flow every 1.5 ms for 0.9 s.
    let opened = |p: u16| t0 + Duration::from_micros(1500 * u64::from(p));
    for p in 0..600 {
        pit.insert(flow(p), NewEntry::pass(), opened(p)).unwrap();
    }
    // Flow 0 (alone in its slot, the first filing) is in use.
    let now = t0 + Duration::from_millis(1500);
    let mut buf = vec![0u8; 64];
    assert!(
        pit.handle_packet(&flow(0), Origin::Local, &mut buf, 20, now)
            .is_ok()
    );
    // Flows opened before 0.5 s have been idle for a second; the 256
    // opened last have not.
    for k in 0..10 {
        pit.insert(flow(1000 + k), NewEntry::pass(), now).unwrap();
        match pit.poll_event() {
            Some(PitEvent::Evicted { flow: f, .. }) => {
                assert!(
                    (1..=333).contains(&f.src_port),
                    "flow {} went, opened {:?} before",
                    f.src_port,
                    now - opened(f.src_port)
                )
            }
            other => panic!("no eviction: {other:?}"),
        }
    }
}

/// A storm's clients reuse ports: a flow opened again replaces its entry
/// and leaves the old filing behind, and a flow used again (its entry
/// kept) sits too early in the wheel, both at the front of the oldest
/// slot. Neither uses up the walk: the idle flows behind them are found.
#[test]
fn eviction_looks_past_flows_opened_again_or_used_since() {
    // Half a second in, 1 500 are opened again and 1 300 used.
    let (mut pit, t0) = full_table_with_reopened(3000, 1500);
    let again = t0 + Duration::from_millis(500);
    let mut buf = vec![0u8; 64];
    for p in 1500..2800 {
        assert!(
            pit.handle_packet(&flow(p), Origin::Local, &mut buf, 20, again)
                .is_ok()
        );
    }
    let now = t0 + Duration::from_secs(2);
    pit.insert(flow(5000), NewEntry::pass(), now).unwrap();
    assert_evicted_from(&mut pit, 2800);
}

/// A table of `n` flows opened at the returned instant, the first `k` of
/// them opened again half a second later (their first filings left behind).
fn full_table_with_reopened(n: u16, k: u16) -> (Pit, Instant) {
    let t0 = Instant::now();
    let mut pit = Pit::new(PitConfig {
        max_entries: usize::from(n),
        ..PitConfig::default()
    });
    for p in 0..n {
        pit.insert(flow(p), NewEntry::pass(), t0).unwrap();
    }
    for p in 0..k {
        pit.insert(flow(p), NewEntry::pass(), t0 + Duration::from_millis(500))
            .unwrap();
    }
    (pit, t0)
}

/// The next event evicted a flow with source port `min` or above.
fn assert_evicted_from(pit: &mut Pit, min: u16) {
    match pit.poll_event() {
        Some(PitEvent::Evicted { flow: f, .. }) => assert!(f.src_port >= min, "{f:?}"),
        other => panic!("no eviction: {other:?}"),
    }
}

/// One insert sets right at most `EVICT_STALE` (4 096) filings of
/// replaced entries, so its pause is bounded: behind 5 000 of them the
/// first insert is refused, and the next one, those 4 096 gone, finds an
/// idle flow.
#[test]
fn an_insert_drops_a_bounded_number_of_stale_filings_and_the_next_goes_on() {
    let (mut pit, t0) = full_table_with_reopened(6000, 5000);
    let now = t0 + Duration::from_secs(2);
    assert_eq!(
        pit.insert(flow(10_000), NewEntry::pass(), now),
        Err(Error::PitFull { capacity: 6000 })
    );
    pit.insert(flow(10_000), NewEntry::pass(), now).unwrap();
    assert_evicted_from(&mut pit, 5000);
}

#[test]
fn eviction_takes_an_idle_flow_not_a_busy_one_filed_earlier() {
    let t0 = Instant::now();
    let mut pit = Pit::new(PitConfig {
        max_entries: 250,
        ..PitConfig::default()
    });
    // 200 flows from t0, all in use at t0+100 (their filings stay at the
    // t0+300 slot until it comes), and 50 opened at t0+10 and idle since.
    for p in 0..200 {
        pit.insert(flow(p), NewEntry::pass(), t0).unwrap();
    }
    for p in 200..250 {
        pit.insert(flow(p), NewEntry::pass(), t0 + Duration::from_secs(10))
            .unwrap();
    }
    let mut buf = vec![0u8; 64];
    let busy = t0 + Duration::from_secs(100);
    for p in 0..200 {
        assert!(
            pit.handle_packet(&flow(p), Origin::Local, &mut buf, 20, busy)
                .is_ok()
        );
    }
    // At t0+102 every flow has been idle for a second or more; the idlest
    // are the 50.
    let now = t0 + Duration::from_secs(102);
    for k in 0..10 {
        pit.insert(flow(1000 + k), NewEntry::pass(), now).unwrap();
        match pit.poll_event() {
            Some(PitEvent::Evicted { flow: f, .. }) => {
                assert!(f.src_port >= flow(200).src_port, "a busy flow went: {f}")
            }
            other => panic!("no eviction: {other:?}"),
        }
    }
    assert_eq!(pit.len(), 250);
    assert!((0..200).all(|p| pit.lookup(&flow(p)).is_some()));
}
