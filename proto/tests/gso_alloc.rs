//! Segmentation and coalescing allocate nothing per packet: a 64 KB
//! super-packet is cut into a reused arena, and its segments merged back,
//! under a counting global allocator.

mod alloc_util;
use alloc_util::allocations;

use etherparse::PacketBuilder;
use fpn_proto::packet::gro::{Offer, TcpCoalescer};
use fpn_proto::packet::gso::{SegmentBuffers, Segments};
use fpn_proto::packet::vnet::{GsoKind, VnetRepr};

#[test]
fn gso_and_gro_allocate_nothing_per_packet() {
    let mut pkt = Vec::new();
    PacketBuilder::ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        .tcp(40000, 5201, 1, 65535)
        .ack(1)
        .write(&mut pkt, &vec![0xa5; 65_535 - 40])
        .unwrap();
    let hdr = VnetRepr {
        needs_csum: true,
        gso: GsoKind::TcpV4,
        gso_size: 1376,
        csum_start: 20,
        csum_offset: 16,
        ..VnetRepr::NONE
    };
    let mut bufs = SegmentBuffers::new(64, 1500, 24);
    let mut co = TcpCoalescer::new();
    let n = allocations(|| {
        for _ in 0..10 {
            bufs.clear();
            let segs = Segments::new(&hdr, &pkt).unwrap();
            assert_eq!(segs.write_all(&mut bufs).unwrap(), 48);
            for i in 0..bufs.len() {
                assert_eq!(co.offer(bufs.packet(i)), Offer::Absorbed);
            }
            let (h, p) = co.pending().unwrap();
            assert_eq!((h.gso, p.len()), (GsoKind::TcpV4, pkt.len()));
            co.clear();
        }
    });
    assert_eq!(n, 0, "allocations on the segmentation/coalescing path");
}
