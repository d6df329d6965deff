//! The hot path allocates nothing per packet: protect, unprotect and the PIT
//! packet path run under a counting global allocator.

mod alloc_util;
use alloc_util::allocations;

mod packet_util;

use std::time::Instant;

use fpn_proto::ge::{GeId, GroupId};
use fpn_proto::keys::{GroupKey, KeyVersion, Role, derive_flow_keys};
use fpn_proto::packet::Packet;
use fpn_proto::pccom::{FlowCrypto, RustCryptoAesGcm, TRAILER_LEN};
use fpn_proto::pit::{Disposition, NewEntry, Origin, Pit, PitConfig};
use packet_util::*;

#[test]
fn protect_unprotect_and_the_pit_path_do_not_allocate() {
    let gk = GroupKey::from_bytes([4; 32]);
    let ki = derive_flow_keys(&gk, &[5; 32], &[6; 32], Role::Initiator);
    let kr = derive_flow_keys(&gk, &[5; 32], &[6; 32], Role::Responder);
    let packets = [
        ipv4_udp(1400),
        ipv6_tcp(1400),
        tcp_syn(true, 1440, false),
        ipv4_ping(1, 2, 56),
    ];
    let mut bufs: Vec<(Vec<u8>, usize)> =
        packets.iter().map(|p| with_room(p, TRAILER_LEN)).collect();

    // The canary: the counter sees allocations at all.
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))) > 0);

    let mut a = FlowCrypto::new(&ki);
    let mut b = FlowCrypto::new(&kr);
    let mut a2 = FlowCrypto::<RustCryptoAesGcm>::with_backend(&ki);
    let mut b2 = FlowCrypto::<RustCryptoAesGcm>::with_backend(&kr);
    let n = allocations(|| {
        for _ in 0..200 {
            for (buf, len) in bufs.iter_mut() {
                let m = a.protect(buf, *len).unwrap();
                let k = b.unprotect(&mut buf[..m]).unwrap();
                let m = a2.protect(buf, k).unwrap();
                *len = b2.unprotect(&mut buf[..m]).unwrap();
            }
        }
    });
    assert_eq!(n, 0, "FlowCrypto allocated");

    let now = Instant::now();
    let mut pa = Pit::new(PitConfig::default());
    let mut pb = Pit::new(PitConfig::default());
    for p in &packets {
        let f = Packet::parse(&p[..]).unwrap().flow_id();
        pa.insert(
            f,
            NewEntry::protect(GroupId(1), KeyVersion(1), GeId(2), ki.clone()),
            now,
        )
        .unwrap();
        pb.insert(
            f,
            NewEntry::protect(GroupId(1), KeyVersion(1), GeId(1), kr.clone()),
            now,
        )
        .unwrap();
    }
    let n = allocations(|| {
        for _ in 0..200 {
            for (buf, len) in bufs.iter_mut() {
                let f = Packet::parse(&buf[..*len]).unwrap().flow_id();
                let Ok(Disposition::Forward { len: m }) =
                    pa.handle_packet(&f, Origin::Local, buf, *len, now)
                else {
                    panic!("protect")
                };
                let Ok(Disposition::Forward { len: k }) =
                    pb.handle_packet(&f, Origin::Remote, buf, m, now)
                else {
                    panic!("unprotect")
                };
                *len = k;
            }
        }
    });
    assert_eq!(n, 0, "the PIT packet path allocated");

    // Rekeyed: during the grace the receiver may try both keys (the new
    // counters pass the old ones' 200 here), still without allocating.
    let ki2 = derive_flow_keys(&gk, &[7; 32], &[6; 32], Role::Initiator);
    let kr2 = derive_flow_keys(&gk, &[7; 32], &[6; 32], Role::Responder);
    for p in &packets {
        let f = Packet::parse(&p[..]).unwrap().flow_id();
        let a = NewEntry::protect(GroupId(1), KeyVersion(2), GeId(2), ki2.clone());
        pa.insert(f, a, now).unwrap();
        let b = NewEntry::protect(GroupId(1), KeyVersion(2), GeId(1), kr2.clone());
        pb.insert(f, b, now).unwrap();
    }
    let n = allocations(|| {
        for _ in 0..400 {
            for (buf, len) in bufs.iter_mut() {
                let f = Packet::parse(&buf[..*len]).unwrap().flow_id();
                let Ok(Disposition::Forward { len: m }) =
                    pa.handle_packet(&f, Origin::Local, buf, *len, now)
                else {
                    panic!("protect")
                };
                let Ok(Disposition::Forward { len: k }) =
                    pb.handle_packet(&f, Origin::Remote, buf, m, now)
                else {
                    panic!("unprotect after the rekey")
                };
                *len = k;
            }
        }
    });
    assert_eq!(n, 0, "the PIT packet path allocated during a rekey grace");
}
