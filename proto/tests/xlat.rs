//! The translation table on real packets: a protected packet translated at
//! the sender (overlay -> wire) and at the receiver (wire -> overlay) is the
//! packet the application sent, with valid checksums at every step (checked
//! by etherparse, not by our own checksum code), and PCCOM opens it after
//! both rewrites; what is on the wire carries the underlay addresses and the
//! application's own ports.

mod packet_util;

use std::net::IpAddr;
use std::time::Instant;

use fpn_proto::flow::FlowId;
use fpn_proto::ge::{GeId, GroupId};
use fpn_proto::keys::{GroupKey, KeyVersion, Role, derive_flow_keys};
use fpn_proto::packet::Packet;
use fpn_proto::pccom::TRAILER_LEN;
use fpn_proto::pit::{Disposition, NewEntry, Origin, Pit, PitConfig};
use fpn_proto::xlat::{Translation, XlatTable};
use packet_util::*;
use proptest::prelude::*;

/// The overlay addresses the packets of packet_util carry are V4_SRC/V4_DST;
/// these are the two nodes' underlay addresses.
const A_WIRE: [u8; 4] = [198, 19, 7, 1];
const B_WIRE: [u8; 4] = [198, 19, 9, 2];

fn flow_of(pkt: &[u8]) -> FlowId {
    Packet::parse(pkt).unwrap().flow_id()
}

/// Sender table at a, receiver table at b, for the overlay flow of `pkt`.
fn tables(pkt: &[u8]) -> (XlatTable, XlatTable) {
    let f = flow_of(pkt);
    let (a_wire, b_wire) = (IpAddr::from(A_WIRE), IpAddr::from(B_WIRE));
    let mut a = XlatTable::default();
    a.insert(Translation::addresses(f, a_wire, b_wire, GeId(2)))
        .unwrap();
    // b's outbound overlay flow is the reverse of a's.
    let mut b = XlatTable::default();
    b.insert(Translation::addresses(
        f.reversed(),
        b_wire,
        a_wire,
        GeId(1),
    ))
    .unwrap();
    (a, b)
}

fn through(pkt: &[u8]) {
    let original = pkt.to_vec();
    let (a, b) = tables(pkt);
    let mut buf = pkt.to_vec();
    let mut p = Packet::parse(&mut buf[..]).unwrap();
    let used = a
        .translate_outbound(&mut p)
        .unwrap()
        .expect("a has an entry");
    assert_eq!(used.peer, GeId(2));
    let on_wire = p.as_bytes().to_vec();
    assert_valid(&on_wire);
    let w = flow_of(&on_wire);
    assert_eq!(w.src, IpAddr::from(A_WIRE));
    assert_eq!(w.dst, IpAddr::from(B_WIRE));
    let o = flow_of(&original);
    assert_eq!(
        (w.src_port, w.dst_port, w.protocol),
        (o.src_port, o.dst_port, o.protocol)
    );
    let mut p = Packet::parse(&mut buf[..]).unwrap();
    let used = b
        .translate_inbound(&mut p)
        .unwrap()
        .expect("b has an entry");
    assert_eq!(used.peer, GeId(1));
    assert_eq!(buf, original, "the receiver sees the sender's packet");
}

#[test]
fn udp_tcp_and_ping_cross_the_wire_translated_and_come_back_unchanged() {
    through(&ipv4_udp(100));
    through(&ipv4_tcp(1200));
    through(&ipv4_ping(0x4242, 3, 56));
    through(&tcp_syn(false, 1460, false));
}

#[test]
fn a_packet_without_an_entry_is_left_alone() {
    let pkt = ipv4_udp(10);
    let (a, _) = tables(&pkt);
    let other = ipv4_tcp(10);
    let mut buf = other.clone();
    let mut p = Packet::parse(&mut buf[..]).unwrap();
    assert!(a.translate_outbound(&mut p).unwrap().is_none());
    // Inbound: the overlay tuple itself is not a wire tuple a knows.
    let mut p = Packet::parse(&mut buf[..]).unwrap();
    assert!(a.translate_inbound(&mut p).unwrap().is_none());
    assert_eq!(buf, other);
}

#[test]
fn pccom_opens_a_packet_translated_at_both_ends() {
    let now = Instant::now();
    let pkt = ipv4_tcp(900);
    let f = flow_of(&pkt);
    let gk = GroupKey::from_bytes([4; 32]);
    let ka = derive_flow_keys(&gk, &[1; 32], &[2; 32], Role::Initiator);
    let kb = derive_flow_keys(&gk, &[1; 32], &[2; 32], Role::Responder);
    let mut pa = Pit::new(PitConfig::default());
    let mut pb = Pit::new(PitConfig::default());
    pa.insert(
        f,
        NewEntry::protect(GroupId(1), KeyVersion(1), GeId(2), ka),
        now,
    )
    .unwrap();
    pb.insert(
        f,
        NewEntry::protect(GroupId(1), KeyVersion(1), GeId(1), kb),
        now,
    )
    .unwrap();
    let (xa, xb) = tables(&pkt);

    let (mut buf, len) = with_room(&pkt, TRAILER_LEN);
    let Ok(Disposition::Forward { len }) = pa.handle_packet(&f, Origin::Local, &mut buf, len, now)
    else {
        panic!("a protects")
    };
    buf.truncate(len);
    let mut p = Packet::parse(&mut buf[..]).unwrap();
    xa.translate_outbound(&mut p).unwrap().unwrap();
    assert_valid(&buf);
    // In transit: the wire tuple, and no plaintext.
    assert_eq!(flow_of(&buf).dst, IpAddr::from(B_WIRE));
    let plain = &pkt[40..];
    assert!(!buf.windows(16).any(|w| w == &plain[..16]));

    let mut p = Packet::parse(&mut buf[..]).unwrap();
    xb.translate_inbound(&mut p).unwrap().unwrap();
    let n = buf.len();
    let Ok(Disposition::Forward { len }) = pb.handle_packet(&f, Origin::Remote, &mut buf, n, now)
    else {
        panic!("b opens the translated packet")
    };
    assert_eq!(&buf[..len], &pkt[..]);
}

proptest! {
    /// Any ports and addresses: translated out and back in, the packet is
    /// bit for bit what the application sent and every intermediate form
    /// is a valid packet.
    #[test]
    fn round_trip_any_tuple(
        sp in any::<u16>(), dp in any::<u16>(),
        aw in any::<[u8; 4]>(), bw in any::<[u8; 4]>(),
        len in 0usize..1400, tcp in any::<bool>(),
    ) {
        let mut pkt = if tcp { ipv4_tcp(len) } else { ipv4_udp(len) };
        {
            let mut p = Packet::parse(&mut pkt[..]).unwrap();
            p.set_src_port(sp).unwrap();
            p.set_dst_port(dp).unwrap();
        }
        let f = flow_of(&pkt);
        prop_assume!(aw != bw);
        let mut a = XlatTable::default();
        a.insert(Translation::addresses(f, aw.into(), bw.into(), GeId(2))).unwrap();
        let mut b = XlatTable::default();
        b.insert(Translation::addresses(f.reversed(), bw.into(), aw.into(), GeId(1))).unwrap();
        let mut buf = pkt.clone();
        let mut p = Packet::parse(&mut buf[..]).unwrap();
        a.translate_outbound(&mut p).unwrap().unwrap();
        assert_valid(&buf);
        let mut p = Packet::parse(&mut buf[..]).unwrap();
        b.translate_inbound(&mut p).unwrap().unwrap();
        prop_assert_eq!(buf, pkt);
    }
}
