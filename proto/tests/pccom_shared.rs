//! A flow's cipher state shared with data-path workers (note 67): threads
//! sealing with one state never repeat a counter; the PIT retires it at
//! once when the entry goes (removal, renegotiation, erased key, ageing,
//! the table dropped); what workers carry keeps the entry alive and counts
//! in its stats.

mod packet_util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fpn_proto::Error;
use fpn_proto::ge::{GeId, GroupId};
use fpn_proto::keys::KeyVersion;
use fpn_proto::pccom::{
    COUNTER_LEN, CryptoState, FlowCrypto, Limits, SharedCrypto, TAG_LEN, TRAILER_LEN,
};
use fpn_proto::pit::{Disposition, NewEntry, Origin, Pit, PitConfig, PitEvent, RenegotiateReason};
use packet_util::*;

const G1: GroupId = GroupId(1);
const V1: KeyVersion = KeyVersion(1);
const V2: KeyVersion = KeyVersion(2);

/// The counter in a protected packet's trailer.
fn counter_of(protected: &[u8]) -> u64 {
    let at = protected.len() - TAG_LEN - COUNTER_LEN;
    u64::from_be_bytes(protected[at..at + COUNTER_LEN].try_into().unwrap())
}

fn seal(c: &SharedCrypto, plain: &[u8]) -> Result<Vec<u8>, Error> {
    let (mut buf, len) = with_room(plain, TRAILER_LEN);
    let (n, _) = c.seal(&mut buf, len)?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn threads_sealing_with_one_state_never_repeat_a_counter() {
    let (ka, kb) = flow_keys(7);
    let shared = Arc::new(SharedCrypto::new(FlowCrypto::new(&ka)));
    let plain = ipv4_udp(64);
    let per_thread = 500;
    let sealed: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let shared = shared.clone();
                let plain = plain.clone();
                s.spawn(move || {
                    (0..per_thread)
                        .map(|_| seal(&shared, &plain).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut counters: Vec<u64> = sealed.iter().map(|p| counter_of(p)).collect();
    counters.sort_unstable();
    assert_eq!(counters, (0..4 * per_thread).collect::<Vec<u64>>());
    assert_eq!(shared.packets_sent(), 4 * per_thread);
    // And every one opens at the peer (in counter order: the window is
    // narrower than the threads' interleaving may be).
    let mut by_counter = sealed;
    by_counter.sort_by_key(|p| counter_of(p));
    let mut rx = FlowCrypto::new(&kb);
    for mut p in by_counter {
        let n = rx.unprotect(&mut p).unwrap();
        assert_eq!(&p[..n], &plain[..]);
    }
    let w = shared.worker_counts();
    assert_eq!(
        (w.packets_out, w.bytes_out),
        (2000, 2000 * plain.len() as u64)
    );
}

#[test]
fn a_removed_entry_stops_its_workers_at_once() {
    let t0 = Instant::now();
    let (ka, kb) = flow_keys(8);
    let plain = ipv4_udp(64);
    let f = flow_of(&plain);
    let mut pit = Pit::new(PitConfig::default());
    pit.insert(f, NewEntry::protect(G1, V1, GeId(2), ka), t0)
        .unwrap();
    let worker = pit.lookup(&f).unwrap().1.share_crypto().unwrap();
    let w = seal(&worker, &plain).unwrap();
    let mut peer = FlowCrypto::new(&kb);
    let mut copy = w.clone();
    assert!(peer.unprotect(&mut copy).is_ok(), "the worker's seal opens");

    pit.remove(&f);
    assert_eq!(worker.state(), CryptoState::Retired);
    assert_eq!(seal(&worker, &plain), Err(Error::CryptoRetired));
    let mut again = w.clone();
    assert_eq!(worker.open(&mut again), Err(Error::CryptoRetired));
}

#[test]
fn a_renegotiated_entry_keeps_old_keys_for_the_pit_only() {
    let t0 = Instant::now();
    let cfg = PitConfig {
        rekey_grace: Duration::from_secs(10),
        ..PitConfig::default()
    };
    let (ka, kb) = flow_keys(9);
    let plain = ipv4_udp(64);
    let f = flow_of(&plain);
    let mut a = Pit::new(cfg);
    let mut b = Pit::new(cfg);
    a.insert(f, NewEntry::protect(G1, V1, GeId(2), ka), t0)
        .unwrap();
    b.insert(f, NewEntry::protect(G1, V1, GeId(1), kb), t0)
        .unwrap();
    let a_worker = a.lookup(&f).unwrap().1.share_crypto().unwrap();
    let b_worker = b.lookup(&f).unwrap().1.share_crypto().unwrap();
    let late = seal(&a_worker, &plain).unwrap();

    let (ka2, kb2) = flow_keys(10);
    a.insert(f, NewEntry::protect(G1, V2, GeId(2), ka2), t0)
        .unwrap();
    b.insert(f, NewEntry::protect(G1, V2, GeId(1), kb2), t0)
        .unwrap();
    // The old state seals no more, and workers do not open with it...
    assert_eq!(a_worker.state(), CryptoState::Previous);
    assert_eq!(seal(&a_worker, &plain), Err(Error::CryptoRetired));
    let mut copy = late.clone();
    assert_eq!(b_worker.open(&mut copy), Err(Error::CryptoRetired));
    // ...and during the grace the new entry is not handed to workers: a
    // packet under the old keys needs the PIT, which tries both.
    assert!(b.lookup(&f).unwrap().1.share_crypto().is_none());
    // A worker that only seals may have it: the PIT seals with it too.
    let sealer = b.lookup(&f).unwrap().1.share_crypto_to_seal().unwrap();
    assert_eq!(sealer.state(), CryptoState::Current);
    assert!(seal(&sealer, &plain).is_ok());
    let (mut buf, _) = with_room(&late, 0);
    let len = late.len();
    let d = b.handle_packet(
        &f,
        Origin::Remote,
        &mut buf,
        len,
        t0 + Duration::from_secs(1),
    );
    assert_eq!(d, Ok(Disposition::Forward { len: plain.len() }));

    // After the grace: the old state is retired, the new one shared.
    b.expire(t0 + Duration::from_secs(10));
    assert_eq!(b_worker.state(), CryptoState::Retired);
    assert!(b.lookup(&f).unwrap().1.share_crypto().is_some());
}

#[test]
fn erased_keys_and_a_dropped_table_retire_what_workers_hold() {
    let t0 = Instant::now();
    let (ka, _) = flow_keys(11);
    let plain = ipv4_udp(64);
    let f = flow_of(&plain);
    let mut pit = Pit::new(PitConfig::default());
    pit.insert(f, NewEntry::protect(G1, V1, GeId(2), ka.clone()), t0)
        .unwrap();
    let w1 = pit.lookup(&f).unwrap().1.share_crypto().unwrap();
    assert_eq!(pit.on_key_erased(G1, V1), vec![f]);
    assert_eq!(seal(&w1, &plain), Err(Error::CryptoRetired));

    pit.insert(f, NewEntry::protect(G1, V2, GeId(2), ka), t0)
        .unwrap();
    let w2 = pit.lookup(&f).unwrap().1.share_crypto().unwrap();
    assert!(seal(&w2, &plain).is_ok());
    drop(pit);
    assert_eq!(seal(&w2, &plain), Err(Error::CryptoRetired));
}

#[test]
fn what_workers_carry_keeps_the_entry_alive_and_counts_in_its_stats() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(60);
    let cfg = PitConfig {
        idle_timeout: idle,
        ..PitConfig::default()
    };
    let (ka, _) = flow_keys(12);
    let plain = ipv4_udp(64);
    let f = flow_of(&plain);
    let mut pit = Pit::new(cfg);
    pit.insert(f, NewEntry::protect(G1, V1, GeId(2), ka), t0)
        .unwrap();
    let worker = pit.lookup(&f).unwrap().1.share_crypto().unwrap();
    for _ in 0..3 {
        seal(&worker, &plain).unwrap();
    }
    let stats = pit.lookup(&f).unwrap().1.stats();
    assert_eq!(stats.packets_local, 3);
    assert_eq!(stats.bytes_local, 3 * plain.len() as u64);
    assert_eq!(pit.peer_totals()[&GeId(2)].packets_local, 3);

    // Used by the worker only (the PIT saw nothing since t0): kept at its
    // deadline, which counts as its last use; aged out one idle period
    // after that, not before.
    assert!(pit.expire(t0 + idle + Duration::from_secs(1)).is_empty());
    assert!(worker.is_current());
    assert!(pit.expire(t0 + 2 * idle).is_empty());
    let gone = pit.expire(t0 + 2 * idle + Duration::from_secs(2));
    assert_eq!(gone, vec![f]);
    assert_eq!(worker.state(), CryptoState::Retired);
    // The gone flow's packets stay in the peer's totals.
    assert_eq!(pit.peer_totals()[&GeId(2)].packets_local, 3);
}

#[test]
fn a_worker_learns_when_the_flow_is_due_for_a_rekey_and_the_pit_starts_it() {
    let t0 = Instant::now();
    let cfg = PitConfig {
        limits: Limits {
            rekey_after: 3,
            reject_after: 5,
        },
        ..PitConfig::default()
    };
    let (ka, _) = flow_keys(13);
    let plain = ipv4_udp(64);
    let f = flow_of(&plain);
    let mut pit = Pit::new(cfg);
    pit.insert(f, NewEntry::protect(G1, V1, GeId(2), ka), t0)
        .unwrap();
    let worker = pit.lookup(&f).unwrap().1.share_crypto().unwrap();
    let dues: Vec<bool> = (0..3)
        .map(|_| {
            let (mut buf, len) = with_room(&plain, TRAILER_LEN);
            worker.seal(&mut buf, len).unwrap().1
        })
        .collect();
    assert_eq!(dues, [false, false, true]);
    assert!(pit.poll_event().is_none(), "the PIT has not seen a packet");
    // The worker gives the next packet to the core: its PIT asks for the
    // renegotiation.
    let (mut buf, len) = with_room(&plain, TRAILER_LEN);
    assert!(
        pit.handle_packet(&f, Origin::Local, &mut buf, len, t0)
            .is_ok()
    );
    assert_eq!(
        pit.poll_event(),
        Some(PitEvent::Renegotiate {
            flow: f,
            reason: RenegotiateReason::PacketLimit
        })
    );
    let (mut buf, len) = with_room(&plain, TRAILER_LEN);
    assert!(worker.seal(&mut buf, len).is_ok(), "the fifth packet");
    let (mut buf, len) = with_room(&plain, TRAILER_LEN);
    assert_eq!(worker.seal(&mut buf, len), Err(Error::CounterExhausted));
}

#[test]
fn once_the_pit_removes_the_entry_no_racing_worker_seals_again() {
    let t0 = Instant::now();
    let (ka, _) = flow_keys(14);
    let plain = ipv4_udp(64);
    let f = flow_of(&plain);
    let mut pit = Pit::new(PitConfig::default());
    pit.insert(f, NewEntry::protect(G1, V1, GeId(2), ka), t0)
        .unwrap();
    let shared = pit.lookup(&f).unwrap().1.share_crypto().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (sent_at_removal, sealed) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (shared, plain, stop) = (shared.clone(), plain.clone(), &stop);
                s.spawn(move || {
                    let mut counters = Vec::new();
                    // Bounded: the main thread removes the entry at once.
                    for _ in 0..1_000_000 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        match seal(&shared, &plain) {
                            Ok(p) => counters.push(counter_of(&p)),
                            Err(e) => {
                                assert_eq!(e, Error::CryptoRetired);
                            }
                        }
                    }
                    counters
                })
            })
            .collect();
        while shared.packets_sent() < 100 {
            std::thread::yield_now();
        }
        pit.remove(&f);
        let at_removal = shared.packets_sent();
        // The workers keep trying for a while after the removal.
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sealed: Vec<u64> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (at_removal, sealed)
    });
    assert_eq!(
        shared.packets_sent(),
        sent_at_removal,
        "nothing sealed after"
    );
    assert_eq!(sealed.len() as u64, sent_at_removal);
    assert!(sealed.iter().all(|&c| c < sent_at_removal));
}

/// Entries a worker carried long ago are as idle as any other when a full
/// table must make room (design note 79). When a worker's use only said
/// "used since", the eviction's bounded scan took each such entry as used
/// just then, filed it again, and refused the new flow once more of them
/// than its bound came first.
#[test]
fn a_full_table_evicts_entries_a_worker_used_long_ago() {
    let t0 = Instant::now();
    let n = 5000;
    let mut pit = Pit::new(PitConfig {
        max_entries: n,
        ..PitConfig::default()
    });
    let (ka, _) = flow_keys(9);
    let plain = ipv4_udp(64);
    let base = flow_of(&plain);
    for i in 0..n {
        let f = fpn_proto::flow::FlowId {
            src_port: 1000 + i as u16,
            ..base
        };
        pit.insert(f, NewEntry::protect(G1, V1, GeId(2), ka.clone()), t0)
            .unwrap();
        let worker = pit.lookup(&f).unwrap().1.share_crypto().unwrap();
        let (mut buf, len) = with_room(&plain, TRAILER_LEN);
        worker.seal_at(&mut buf, len, t0).unwrap();
    }
    let later = t0 + Duration::from_secs(10);
    let f = fpn_proto::flow::FlowId {
        src_port: 9,
        ..base
    };
    pit.insert(f, NewEntry::protect(G1, V1, GeId(2), ka), later)
        .expect("a full table of flows idle for 10 s makes room");
    assert_eq!(pit.len(), n);
}

/// The time a worker gives is the one ageing sees: taken once, to the
/// millisecond; a use without a time counts as "now" for the taker.
#[test]
fn a_workers_use_is_taken_with_its_time() {
    let (ka, _) = flow_keys(10);
    let shared = SharedCrypto::new(FlowCrypto::new(&ka));
    assert_eq!(shared.take_used_at(), None);
    let t0 = Instant::now();
    let plain = ipv4_udp(64);
    for dt in [0, 5, 3] {
        let (mut buf, len) = with_room(&plain, TRAILER_LEN);
        shared
            .seal_at(&mut buf, len, t0 + Duration::from_millis(dt))
            .unwrap();
    }
    assert_eq!(
        shared.take_used_at(),
        Some(Some(t0 + Duration::from_millis(5)))
    );
    assert_eq!(shared.take_used_at(), None, "taken once");
    let (mut buf, len) = with_room(&plain, TRAILER_LEN);
    shared.seal(&mut buf, len).unwrap();
    assert_eq!(shared.take_used_at(), Some(None));
    // An untimed use is "now": it wins over a timed one either way round.
    let t1 = t0 + Duration::from_millis(7);
    for untimed_first in [false, true] {
        for untimed in [untimed_first, !untimed_first] {
            let (mut buf, len) = with_room(&plain, TRAILER_LEN);
            if untimed {
                shared.seal(&mut buf, len).unwrap();
            } else {
                shared.seal_at(&mut buf, len, t1).unwrap();
            }
        }
        assert_eq!(
            shared.take_used_at(),
            Some(None),
            "untimed first: {untimed_first}"
        );
    }
}
