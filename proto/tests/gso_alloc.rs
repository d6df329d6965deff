//! Segmentation and coalescing allocate nothing per packet: a 64 KB
//! super-packet is cut into a reused arena, and its segments merged back,
//! under a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use etherparse::PacketBuilder;
use fpn_proto::packet::gro::{Offer, TcpCoalescer};
use fpn_proto::packet::gso::{SegmentBuffers, Segments};
use fpn_proto::packet::vnet::{GsoKind, VnetRepr};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

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
