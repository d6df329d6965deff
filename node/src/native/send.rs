//! The batched raw sender: whole IPv4 packets out of an `AF_INET`,
//! `SOCK_RAW`, `IPPROTO_RAW` socket (IP_HDRINCL implied), many per
//! `sendmmsg(2)`.
//!
//! What the kernel does with such a packet: it fills the IP header checksum
//! and the total length, and an IP id of 0 is replaced; everything else
//! (addresses, TTL, DF, the L4 header and checksum) goes out as written, so
//! the L4 checksum is the caller's. The packet passes the `output` and
//! `postrouting` hooks like any local packet (conntrack would track it; the
//! node's table marks native flows `notrack`), is routed by its destination
//! address, and is fragmented if larger than the route's MTU and DF is clear
//! (EMSGSIZE if DF is set).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};

/// Packets per `sendmmsg` call.
pub const SEND_BATCH: usize = 64;

/// A raw IPv4 sender. Its scratch arrays are allocated once; sending
/// allocates nothing.
pub struct RawSender {
    sock: Socket,
    addrs: Box<[libc::sockaddr_in; SEND_BATCH]>,
    iovs: Box<[libc::iovec; SEND_BATCH]>,
    msgs: Box<[libc::mmsghdr; SEND_BATCH]>,
}

// SAFETY: the raw pointers inside the scratch arrays are rewritten before
// each use and only point into the arrays themselves or the caller's buffers
// for the duration of one call.
unsafe impl Send for RawSender {}

impl std::fmt::Debug for RawSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSender")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

impl RawSender {
    /// Opens the raw socket (needs CAP_NET_RAW) in the calling thread's
    /// network namespace.
    pub fn open() -> Result<Self> {
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|source| Error::NativeSocket {
            what: "open raw IPv4 socket",
            source,
        })?;
        // A deep send buffer lets one sendmmsg hand over a whole batch.
        let _ = sock.set_send_buffer_size(4 << 20);
        // Past the real-address plane's routes into the TUN (real_plane.rs).
        crate::real_plane::mark(&sock);
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zeroed = || unsafe { std::mem::zeroed() };
        Ok(Self {
            sock,
            addrs: Box::new([zeroed(); SEND_BATCH]),
            iovs: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; SEND_BATCH],
            ),
            // SAFETY: as above.
            msgs: Box::new(unsafe { std::mem::zeroed() }),
        })
    }

    /// Sends every packet of `packets` (whole IPv4 packets, header
    /// included), [`SEND_BATCH`] per system call, and returns how many were
    /// sent: all of them, unless the kernel refused one (then the count
    /// before it, or the error if it was the first).
    ///
    /// The batch is checked first: if any packet is not IPv4 with a full
    /// header, nothing is sent and the error says so.
    pub fn send_batch(&mut self, packets: &[&[u8]]) -> Result<usize> {
        for p in packets {
            check(p)?;
        }
        let mut sent = 0;
        for chunk in packets.chunks(SEND_BATCH) {
            let mut off = 0;
            while off < chunk.len() {
                // sendmmsg stops early only at a packet the kernel refused;
                // sending from there reports that packet's error.
                match self.send_chunk(&chunk[off..]) {
                    Ok(0) => return Ok(sent),
                    Ok(n) => {
                        sent += n;
                        off += n;
                    }
                    Err(e) if sent == 0 => return Err(e),
                    Err(_) => return Ok(sent),
                }
            }
        }
        Ok(sent)
    }

    fn send_chunk(&mut self, chunk: &[&[u8]]) -> Result<usize> {
        let n = chunk.len();
        for (i, p) in chunk.iter().enumerate() {
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            self.addrs[i] = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            self.iovs[i] = libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        loop {
            // SAFETY: msgs[..n] point at addrs/iovs of this struct and at the
            // caller's packets, all alive for this call; the kernel only
            // reads them (and writes msg_len).
            let rc = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    self.msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    0,
                )
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::NativeSocket {
                what: "sendmmsg",
                source: err,
            });
        }
    }
}

/// A packet the raw socket can send: IPv4, a full header, a length the
/// header agrees with.
fn check(p: &[u8]) -> Result<()> {
    let bad = |reason| Err(Error::NativePacket { reason });
    if p.len() < 20 || p[0] >> 4 != 4 {
        return bad("not an IPv4 packet");
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return bad("IPv4 header length out of range");
    }
    if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
        return bad("IPv4 total length differs from the buffer length");
    }
    Ok(())
}
