//! A peer that announces a large frame and sends little costs what it sent:
//! the body buffer grows with the bytes that arrive (the GMS reads frames
//! from unauthenticated enrollment streams). Measured with a global
//! allocator that records the largest single allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use fpn_gms_client::framing::{read_frame, read_frame_limited};
use fpn_gms_client::wire::{MAX_BODY, MAX_ENROLL_BODY};
use tokio::io::AsyncWriteExt;

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

#[test]
fn an_announced_frame_costs_only_the_bytes_that_arrive() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        // The largest legal announcement, then 100 bytes and the end.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let len = (MAX_BODY as u32).to_be_bytes();
        a.write_all(&[1, 2, len[0], len[1], len[2], len[3]])
            .await
            .unwrap();
        a.write_all(&[0u8; 100]).await.unwrap();
        drop(a);
        LARGEST.store(0, Ordering::Relaxed);
        WATCHING.with(|w| w.set(true));
        let r = read_frame(&mut b).await;
        WATCHING.with(|w| w.set(false));
        assert!(r.is_err(), "a truncated frame is refused");
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            largest < 16 * 1024,
            "reading 100 bytes of a {MAX_BODY}-byte announcement allocated {largest} bytes at once"
        );

        // The enrollment bound: a larger announcement is refused at the header.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let len = (MAX_ENROLL_BODY as u32 + 1).to_be_bytes();
        a.write_all(&[1, 1, len[0], len[1], len[2], len[3]])
            .await
            .unwrap();
        assert!(read_frame_limited(&mut b, MAX_ENROLL_BODY).await.is_err());
    });
}
