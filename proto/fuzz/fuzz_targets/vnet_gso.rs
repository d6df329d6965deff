//! A virtio_net_hdr plus packet from a TUN, arbitrary bytes: parsing the
//! header and segmenting never panic, and every segment written parses again
//! as a packet with a valid transport checksum; offering the segments to
//! the coalescer never panics, and what it merges splits back into them.
#![no_main]

use fpn_proto::packet::Packet;
use fpn_proto::packet::gro::{Offer, TcpCoalescer};
use fpn_proto::packet::gso::{SegmentBuffers, Segments};
use fpn_proto::packet::vnet::{VNET_HDR_LEN, VnetRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(hdr) = VnetRepr::parse_bytes(data) else {
        return;
    };
    let packet = &data[VNET_HDR_LEN..];
    let Ok(segs) = Segments::new(&hdr, packet) else {
        return;
    };
    let mut bufs = SegmentBuffers::new(64, segs.max_segment_len().min(4096), 24);
    if segs.write_all(&mut bufs).is_err() {
        return;
    }
    if segs.is_gso() {
        for seg in bufs.iter() {
            let p = Packet::parse(seg).expect("a segment parses");
            assert!(p.l4_checksum_ok(), "segment checksum");
            assert!(p.ip_checksum_ok(), "segment IP checksum");
        }
    }
    // Coalescing: arbitrary packets (the raw input too) never panic; a run
    // of segments that merged completely splits back into the same bytes.
    let mut co = TcpCoalescer::new();
    let _ = co.offer(packet);
    co.clear();
    let all = bufs.iter().all(|seg| co.offer(seg) == Offer::Absorbed);
    if all && let Some((h, sup)) = co.pending() {
        let again = Segments::new(&h, sup).expect("a merged packet splits");
        let mut out = SegmentBuffers::new(64, again.max_segment_len(), 0);
        again.write_all(&mut out).expect("fits");
        assert!(out.iter().eq(bufs.iter()), "merge then split is the identity");
    }
});
