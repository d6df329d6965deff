//! DNS over UDP: one blocking thread per socket, answering datagrams in
//! batches.
//!
//! On Linux a batch is one `recvmmsg` (up to [`BATCH`] datagrams, waiting
//! for the first only) and one `sendmmsg`, and the zone's read lock is
//! taken once per batch: under load the per-query cost is the answer
//! itself, not the system calls. Elsewhere the same loop runs one datagram
//! at a time through std.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use tracing::{debug, warn};

use super::Shared;
use crate::answer::{self, Ctx, Outcome, update_response};
use crate::commit::{Job, Msg, ReplyTo};
use crate::wire::Rcode;

/// Datagrams per batch.
pub const BATCH: usize = 32;
/// Largest request accepted over UDP; longer ones are dropped (a client
/// with more to say uses TCP).
pub const MAX_REQUEST: usize = 4096;
/// How often a blocked worker looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);

/// Starts the worker thread of one socket.
pub fn spawn(
    index: usize,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    jobs: SyncSender<Msg>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    socket.set_read_timeout(Some(STOP_POLL))?;
    std::thread::Builder::new()
        .name(format!("fpn-ddns-udp{index}"))
        .spawn(move || worker(&socket, &shared, &jobs, &stop))
}

fn worker(socket: &Arc<UdpSocket>, shared: &Shared, jobs: &SyncSender<Msg>, stop: &AtomicBool) {
    let mut batch = batch::Batch::new();
    while !stop.load(Ordering::Relaxed) {
        let n = match batch.recv(socket) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                warn!(error = %e, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        super::Counters::add(&shared.counters.requests_udp, n as u64);
        {
            let zone = shared.zone.read().unwrap_or_else(|e| e.into_inner());
            let ctx = Ctx {
                zone: &zone,
                keys: &shared.keys,
                now: crate::unix_now(),
                tcp: false,
            };
            for i in 0..n {
                let (msg, out) = batch.slot(i);
                let respond = match answer::handle(&ctx, msg, out) {
                    Outcome::Reply => true,
                    Outcome::Drop | Outcome::Transfer(_) => false,
                    Outcome::Update(pending) => {
                        let Some(peer) = batch.peer(i) else { continue };
                        // The commit thread answers from this socket later;
                        // a full queue is answered at once.
                        let fallback = update_response(&pending, Rcode::SERVFAIL, ctx.now);
                        let job = Job::Update {
                            pending,
                            reply: ReplyTo::Udp {
                                socket: socket.clone(),
                                peer,
                            },
                        };
                        match jobs.try_send(Msg::Job(job)) {
                            Ok(()) => false,
                            Err(_) => {
                                debug!("update queue full");
                                let (_, out) = batch.slot(i);
                                *out = fallback;
                                true
                            }
                        }
                    }
                };
                batch.set_respond(i, respond);
            }
        }
        batch.send(socket);
    }
}

#[cfg(target_os = "linux")]
mod batch {
    //! `recvmmsg`/`sendmmsg` batches.

    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
    use std::os::fd::AsRawFd;

    use super::{BATCH, MAX_REQUEST};

    pub struct Batch {
        bufs: Vec<u8>,
        lens: [usize; BATCH],
        addrs: Box<[libc::sockaddr_storage; BATCH]>,
        addr_lens: [libc::socklen_t; BATCH],
        outs: Vec<Vec<u8>>,
        respond: [bool; BATCH],
        n: usize,
    }

    impl Batch {
        pub fn new() -> Self {
            Self {
                bufs: vec![0; BATCH * MAX_REQUEST],
                lens: [0; BATCH],
                // SAFETY: sockaddr_storage is plain old data; all zeroes is a
                // valid (AF_UNSPEC) value.
                addrs: Box::new(unsafe { zeroed() }),
                addr_lens: [0; BATCH],
                outs: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
                respond: [false; BATCH],
                n: 0,
            }
        }

        /// Receives up to BATCH datagrams, blocking for the first only.
        pub fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
            self.n = 0;
            // SAFETY: iovec and mmsghdr are plain old data; zeroes are valid.
            let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            for (i, (iov, hdr)) in iovs.iter_mut().zip(hdrs.iter_mut()).enumerate() {
                iov.iov_base = self.bufs[i * MAX_REQUEST..].as_mut_ptr().cast();
                iov.iov_len = MAX_REQUEST;
                hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                hdr.msg_hdr.msg_iov = iov;
                hdr.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: every header points into `self.bufs` / `self.addrs`,
            // which outlive the call and are not otherwise borrowed; the
            // lengths match the buffers.
            let r = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = (r as usize).min(BATCH);
            for (i, hdr) in hdrs.iter().enumerate().take(n) {
                // A datagram longer than our buffer is dropped (length 0).
                let truncated = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                self.lens[i] = if truncated {
                    0
                } else {
                    (hdr.msg_len as usize).min(MAX_REQUEST)
                };
                self.addr_lens[i] = hdr.msg_hdr.msg_namelen;
                self.respond[i] = false;
            }
            self.n = n;
            Ok(n)
        }

        /// The request and the response buffer of slot `i`.
        pub fn slot(&mut self, i: usize) -> (&[u8], &mut Vec<u8>) {
            let start = i * MAX_REQUEST;
            (&self.bufs[start..start + self.lens[i]], &mut self.outs[i])
        }

        pub fn set_respond(&mut self, i: usize, respond: bool) {
            self.respond[i] = respond && !self.outs[i].is_empty();
        }

        /// The sender of slot `i`.
        pub fn peer(&self, i: usize) -> Option<SocketAddr> {
            let ss = &self.addrs[i];
            match i32::from(ss.ss_family) {
                libc::AF_INET => {
                    // SAFETY: the kernel wrote a sockaddr_in for AF_INET, and
                    // sockaddr_storage is large and aligned enough for it.
                    let sin = unsafe {
                        &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                    };
                    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    Some(SocketAddr::V4(SocketAddrV4::new(
                        ip,
                        u16::from_be(sin.sin_port),
                    )))
                }
                libc::AF_INET6 => {
                    // SAFETY: as above, for sockaddr_in6.
                    let sin6 = unsafe {
                        &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                    };
                    let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    let port = u16::from_be(sin6.sin6_port);
                    Some(SocketAddr::V6(SocketAddrV6::new(
                        ip,
                        port,
                        sin6.sin6_flowinfo,
                        sin6.sin6_scope_id,
                    )))
                }
                _ => None,
            }
        }

        /// Sends the responses of the batch to their senders.
        pub fn send(&mut self, socket: &UdpSocket) {
            // SAFETY: plain old data, as in `recv`.
            let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            let mut count = 0;
            for i in 0..self.n {
                if !self.respond[i] {
                    continue;
                }
                iovs[count].iov_base = self.outs[i].as_mut_ptr().cast();
                iovs[count].iov_len = self.outs[i].len();
                let hdr = &mut hdrs[count].msg_hdr;
                hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = self.addr_lens[i];
                hdr.msg_iov = &mut iovs[count];
                hdr.msg_iovlen = 1;
                count += 1;
            }
            let mut done = 0;
            while done < count {
                // SAFETY: headers `done..count` point into `self.outs` and
                // `self.addrs`, alive and unborrowed for the call.
                let r = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        hdrs[done..].as_mut_ptr(),
                        (count - done) as libc::c_uint,
                        0,
                    )
                };
                if r <= 0 {
                    // The first of the rest failed (e.g. a filtered
                    // destination): skip it, send the others.
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        tracing::trace!(error = %e, "UDP send failed");
                        done += 1;
                    }
                } else {
                    done += r as usize;
                }
            }
            self.n = 0;
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod batch {
    //! One datagram at a time through std.

    use std::net::{SocketAddr, UdpSocket};

    use super::MAX_REQUEST;

    pub struct Batch {
        buf: Vec<u8>,
        len: usize,
        peer: Option<SocketAddr>,
        out: Vec<u8>,
        respond: bool,
    }

    impl Batch {
        pub fn new() -> Self {
            Self {
                buf: vec![0; MAX_REQUEST],
                len: 0,
                peer: None,
                out: Vec::new(),
                respond: false,
            }
        }

        pub fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
            let (len, peer) = socket.recv_from(&mut self.buf)?;
            self.len = len;
            self.peer = Some(peer);
            self.respond = false;
            Ok(1)
        }

        pub fn slot(&mut self, _i: usize) -> (&[u8], &mut Vec<u8>) {
            (&self.buf[..self.len], &mut self.out)
        }

        pub fn set_respond(&mut self, _i: usize, respond: bool) {
            self.respond = respond && !self.out.is_empty();
        }

        pub fn peer(&self, _i: usize) -> Option<SocketAddr> {
            self.peer
        }

        pub fn send(&mut self, socket: &UdpSocket) {
            if let (true, Some(peer)) = (self.respond, self.peer) {
                let _ = socket.send_to(&self.out, peer);
            }
        }
    }
}
