//! Receive mechanism (a): NFQUEUE through the nfq crate, on a thread of its
//! own. The `inet` table queues IPv4 and IPv6 packets alike (on a kernel
//! without nft's `queue`, an iptables and an ip6tables rule queue the
//! marked ones), and this thread reads both the same way. Each queued
//! packet of a registered flow (or DPRP) is copied into the
//! batch and dropped (verdict DROP): the kernel's stack never sees it. A
//! packet with a registered flow's destination and ports from another
//! source (the table's `native_ports` rule queues those too, up to a rate)
//! is copied for the core to count and given back (ACCEPT): to the host it
//! is ordinary traffic.
//!
//! nfq's `Queue` exposes no file descriptor, so the thread cannot sleep in
//! poll(2) with a wake-up for shutdown; it reads non-blocking and, when the
//! queue is empty, sleeps with a backoff of 20 us doubling up to 1 ms. That
//! costs up to 1 ms of latency after an idle spell and about a thousand
//! wake-ups a second when idle.

use std::time::Duration;

use super::{FiveTuple, L4Proto, Outbox, Shared};
use crate::error::{Error, Result};

/// Binds queue `queue`: fail-open off (a full queue drops, it never lets
/// packets through to the stack), `len` packets deep, whole packets copied.
pub(crate) fn open(queue: u16, len: u32) -> Result<nfq::Queue> {
    let sock = |what| move |source| Error::NativeSocket { what, source };
    let before = netfilter_sockets();
    let mut q = nfq::Queue::open().map_err(sock("open the NFQUEUE netlink socket"))?;
    // nfq keeps its socket private, and the default receive buffer (about
    // 140 packets of 1400 bytes) overflows whenever the thread is scheduled
    // late. Find the socket it just opened (the one new NETLINK_NETFILTER
    // socket of this process) and give it room.
    let after = netfilter_sockets();
    if let [fd] = after
        .iter()
        .filter(|fd| !before.contains(fd))
        .collect::<Vec<_>>()[..]
    {
        let size: libc::c_int = RCVBUF;
        // SAFETY: setsockopt with a valid int on a socket of this process.
        unsafe {
            libc::setsockopt(
                *fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    q.bind(queue).map_err(sock("bind the NFQUEUE queue"))?;
    q.set_fail_open(queue, false)
        .map_err(sock("turn NFQUEUE fail-open off"))?;
    q.set_queue_max_len(queue, len)
        .map_err(sock("set the NFQUEUE length"))?;
    q.set_nonblocking(true);
    Ok(q)
}

/// The thread: until stopped or the driver is gone.
pub(crate) fn run(mut q: nfq::Queue, queue: u16, shared: &Shared, mut out: Outbox) {
    let mut idle = Duration::from_micros(20);
    'outer: while !shared.stopped() {
        match q.recv() {
            Ok(mut msg) => {
                idle = Duration::from_micros(20);
                let (ours, copy) = classify(msg.get_payload(), shared);
                let ok = !copy || out.push(shared, msg.get_payload());
                msg.set_verdict(if ours {
                    nfq::Verdict::Drop
                } else {
                    nfq::Verdict::Accept
                });
                if q.verdict(msg).is_err() {
                    shared
                        .counters
                        .errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if !ok {
                    break 'outer;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !out.flush(shared) {
                    break;
                }
                std::thread::sleep(idle);
                idle = (idle * 2).min(Duration::from_millis(1));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                shared
                    .counters
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(error = %e, "NFQUEUE receive error");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let _ = out.flush(shared);
    let _ = q.unbind(queue);
}

/// (taken from the kernel, copied to the core) for a queued packet: a
/// registered flow's or DPRP's is both; another source's with a flow's
/// ports is only copied (the kernel keeps it).
fn classify(pkt: &[u8], shared: &Shared) -> (bool, bool) {
    let Some(ft) = FiveTuple::parse(pkt) else {
        return (true, false);
    };
    if ft.proto == L4Proto::Udp && Some(ft.dst_port) == shared.dprp_port {
        return (true, true);
    }
    let flows = shared.flows.read().unwrap_or_else(|e| e.into_inner());
    if flows.contains(&ft) {
        (true, true)
    } else if flows.same_ports(&ft) {
        (false, true)
    } else {
        // Queued by the exact rule while being removed: it was the node's
        // (the kernel would answer it with a RST), so it stays dropped.
        (true, false)
    }
}

/// The NFQUEUE socket's receive buffer.
const RCVBUF: libc::c_int = 16 << 20;

/// The descriptors of this process that are NETLINK_NETFILTER sockets.
fn netfilter_sockets() -> Vec<libc::c_int> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::c_int>().ok())
        .filter(|&fd| {
            let opt = |name| {
                let mut v: libc::c_int = -1;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: getsockopt into a valid int; fails harmlessly on
                // descriptors that are not sockets.
                let rc = unsafe {
                    libc::getsockopt(fd, libc::SOL_SOCKET, name, (&raw mut v).cast(), &mut len)
                };
                (rc == 0).then_some(v)
            };
            opt(libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
                && opt(libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
        })
        .collect()
}
