//! The batched raw sender: whole IPv4 packets out of an `AF_INET`,
//! `SOCK_RAW`, `IPPROTO_RAW` socket (IP_HDRINCL implied) and whole IPv6
//! packets out of an `AF_INET6`, `SOCK_RAW`, `IPPROTO_RAW` socket
//! (IPV6_HDRINCL implied), many per `sendmmsg(2)`.
//!
//! What the kernel does with such a packet: for IPv4 it fills the IP header
//! checksum and the total length, and an IP id of 0 is replaced; for IPv6
//! it fills nothing (the payload length is the caller's). Everything else
//! (addresses, TTL or hop limit, DF, the L4 header and checksum) goes out
//! as written, so the L4 checksum is the caller's. The packet passes the
//! `output` and `postrouting` hooks like any local packet (conntrack would
//! track it; the node's table marks native flows `notrack`), is routed by
//! its destination address, and an IPv4 packet is fragmented if larger than
//! the route's MTU and DF is clear (EMSGSIZE if DF is set; an IPv6 packet
//! larger than the MTU is always EMSGSIZE).
//!
//! A host without IPv6 (the `AF_INET6` socket cannot be opened) still
//! sends IPv4; its IPv6 packets are refused with [`Error::NativeNoIpv6`].

use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::packet::IPV6_HEADER_LEN;
use crate::error::{Error, Result};

/// Packets per `sendmmsg` call.
pub const SEND_BATCH: usize = 64;

/// A raw IPv4 and IPv6 sender. Its scratch arrays are allocated once;
/// sending allocates nothing.
pub struct RawSender {
    sock4: Socket,
    /// `None` on a host without IPv6.
    sock6: Option<Socket>,
    addrs4: Box<[libc::sockaddr_in; SEND_BATCH]>,
    addrs6: Box<[libc::sockaddr_in6; SEND_BATCH]>,
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
            .field("fd4", &self.sock4.as_raw_fd())
            .field("fd6", &self.sock6.as_ref().map(AsRawFd::as_raw_fd))
            .finish()
    }
}

impl RawSender {
    /// Opens the raw sockets (needs CAP_NET_RAW) in the calling thread's
    /// network namespace. A host without IPv6 gets an IPv4-only sender.
    pub fn open() -> Result<Self> {
        let sock4 = open_raw(Domain::IPV4).map_err(|source| Error::NativeSocket {
            what: "open raw IPv4 socket",
            source,
        })?;
        let sock6 = match open_raw(Domain::IPV6) {
            Ok(s) => Some(s),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                tracing::debug!("no IPv6 on this host: the raw sender sends IPv4 only");
                None
            }
            Err(source) => {
                return Err(Error::NativeSocket {
                    what: "open raw IPv6 socket",
                    source,
                });
            }
        };
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zeroed = || unsafe { std::mem::zeroed() };
        Ok(Self {
            sock4,
            sock6,
            addrs4: Box::new([zeroed(); SEND_BATCH]),
            // SAFETY: as above.
            addrs6: Box::new([unsafe { std::mem::zeroed() }; SEND_BATCH]),
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

    /// Makes the sockets non-blocking: a send the kernel cannot take at
    /// once is refused (`EAGAIN`) instead of waiting (the TUN workers,
    /// whose stop must never wait for the underlay).
    pub fn set_nonblocking(&self) -> Result<()> {
        for s in std::iter::once(&self.sock4).chain(self.sock6.as_ref()) {
            s.set_nonblocking(true)
                .map_err(|source| Error::NativeSocket {
                    what: "make raw socket non-blocking",
                    source,
                })?;
        }
        Ok(())
    }

    /// Whether IPv6 packets can be sent (the host has IPv6).
    pub fn has_ipv6(&self) -> bool {
        self.sock6.is_some()
    }

    /// [`RawSender::send_batch`] for a data path that counts, not stops:
    /// returns how many of `packets` were refused (all of them when the
    /// batch was refused as a whole; that error is logged at debug).
    pub fn send_counting(&mut self, packets: &[&[u8]]) -> usize {
        match self.send_batch(packets) {
            Ok(sent) => packets.len().saturating_sub(sent),
            Err(e) => {
                tracing::debug!(error = %e, packets = packets.len(), "native batch: nothing sent");
                packets.len()
            }
        }
    }

    /// Sends every packet of `packets` (whole IPv4 or IPv6 packets, header
    /// included, the families and destinations in any order, each run of
    /// one family [`SEND_BATCH`] per system call) and returns how many
    /// were sent. A packet the kernel refuses (EMSGSIZE: an IPv6 packet
    /// over the route's MTU, or an IPv4 one with DF; no route; a netfilter
    /// drop) is skipped and the packets after it are still sent, so
    /// `packets.len()` minus the count is how many were refused. On a host
    /// without IPv6 every IPv6 packet counts as refused
    /// ([`Error::NativeNoIpv6`]).
    ///
    /// `Err` only when nothing was sent of a non-empty batch: the batch
    /// was refused as a whole before any system call (a packet that is not
    /// IPv4 or IPv6 with a full header and a length the header agrees with:
    /// nothing is sent, the error says which check failed), or the kernel
    /// refused every packet (the first refusal's error). Refusals in a
    /// batch of which some packets went out are logged (debug), not
    /// returned.
    pub fn send_batch(&mut self, packets: &[&[u8]]) -> Result<usize> {
        for p in packets {
            check(p)?;
        }
        let mut sent = 0;
        let mut refused = 0;
        let mut first_err = None;
        let mut rest = packets;
        while let Some(first) = rest.first() {
            let v6 = is_v6(first);
            let run = rest.iter().take_while(|p| is_v6(p) == v6).count();
            let (this, next) = rest.split_at(run);
            rest = next;
            if v6 && self.sock6.is_none() {
                refused += run;
                first_err.get_or_insert(Error::NativeNoIpv6);
                continue;
            }
            for chunk in this.chunks(SEND_BATCH) {
                let mut off = 0;
                while off < chunk.len() {
                    // sendmmsg stops early only at a packet the kernel
                    // refused; sending from there reports that packet's
                    // error, and the next call starts after it.
                    match self.send_chunk(&chunk[off..], v6) {
                        Ok(n) if n > 0 => {
                            sent += n;
                            off += n;
                        }
                        // None of a non-empty chunk sent and no error
                        // (never seen): skipped like a refusal, so the
                        // loop always moves on.
                        Ok(_) => {
                            refused += 1;
                            off += 1;
                        }
                        Err(e) => {
                            refused += 1;
                            off += 1;
                            first_err.get_or_insert(e);
                        }
                    }
                }
            }
        }
        match first_err {
            Some(e) if sent == 0 => Err(e),
            Some(e) => {
                tracing::debug!(error = %e, refused, sent, "native packets refused");
                Ok(sent)
            }
            None => Ok(sent),
        }
    }

    /// One `sendmmsg` of `chunk` (at most [`SEND_BATCH`] packets, all of
    /// one family: IPv6 when `v6`).
    fn send_chunk(&mut self, chunk: &[&[u8]], v6: bool) -> Result<usize> {
        let fd = if v6 {
            self.sock6.as_ref().ok_or(Error::NativeNoIpv6)?.as_raw_fd()
        } else {
            self.sock4.as_raw_fd()
        };
        let n = chunk.len();
        for (i, p) in chunk.iter().enumerate() {
            let h = &mut self.msgs[i].msg_hdr;
            if v6 {
                let dst: [u8; 16] = p[24..40].try_into().unwrap_or_default();
                // SAFETY: all-zero is a valid sockaddr_in6; the fields the
                // kernel reads are set below (port 0: the header's protocol).
                let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_addr = libc::in6_addr { s6_addr: dst };
                self.addrs6[i] = sin6;
                h.msg_name = (&raw mut self.addrs6[i]).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            } else {
                self.addrs4[i] = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes([p[16], p[17], p[18], p[19]]),
                    },
                    sin_zero: [0; 8],
                };
                h.msg_name = (&raw mut self.addrs4[i]).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            self.iovs[i] = libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            };
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        loop {
            // SAFETY: msgs[..n] point at addrs4/addrs6/iovs of this struct
            // and at the caller's packets, all alive for this call; the
            // kernel only reads them (and writes msg_len).
            let rc = unsafe { libc::sendmmsg(fd, self.msgs.as_mut_ptr(), n as libc::c_uint, 0) };
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

/// A marked `SOCK_RAW`, `IPPROTO_RAW` socket of `domain` with a deep send
/// buffer.
fn open_raw(domain: Domain) -> std::io::Result<Socket> {
    let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    // A deep send buffer lets one sendmmsg hand over a whole batch.
    let _ = sock.set_send_buffer_size(4 << 20);
    // Past the real-address plane's routes into the TUN (real_plane.rs).
    crate::real_plane::mark(&sock);
    Ok(sock)
}

/// Whether a packet [`check`] accepted is IPv6.
fn is_v6(p: &[u8]) -> bool {
    p.first().is_some_and(|b| b >> 4 == 6)
}

/// A packet the raw sockets can send: IPv4 or IPv6, a full header, a
/// length the header agrees with.
fn check(p: &[u8]) -> Result<()> {
    let bad = |reason| Err(Error::NativePacket { reason });
    match p.first().map(|b| b >> 4) {
        Some(4) => {
            if p.len() < 20 {
                return bad("IPv4 packet shorter than its header");
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
        Some(6) => {
            if p.len() < IPV6_HEADER_LEN {
                return bad("IPv6 packet shorter than its header");
            }
            if usize::from(u16::from_be_bytes([p[4], p[5]])) + IPV6_HEADER_LEN != p.len() {
                return bad("IPv6 payload length + 40 differs from the buffer length");
            }
            Ok(())
        }
        _ => bad("not an IPv4 or IPv6 packet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::packet::build_packet;
    use crate::native::{FiveTuple, L4Proto};

    fn packet(src: &str, dst: &str, len: usize) -> Vec<u8> {
        let f = FiveTuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: L4Proto::Udp,
            src_port: 1,
            dst_port: 2,
        };
        let mut b = vec![0u8; len];
        build_packet(&mut b, f, len, 0, 0).unwrap();
        b
    }

    #[test]
    fn the_check_takes_both_families_with_a_consistent_length_only() {
        let v4 = packet("198.18.0.1", "198.18.0.2", 100);
        let v6 = packet("fd00:18::1", "fd00:18::2", 100);
        assert!(check(&v4).is_ok());
        assert!(check(&v6).is_ok());
        assert!(is_v6(&v6) && !is_v6(&v4));
        // One byte more or less than the header says.
        assert!(check(&v6[..99]).is_err());
        let mut long = v6.clone();
        long.push(0);
        assert!(check(&long).is_err());
        assert!(check(&v6[..39]).is_err());
        let mut bad = v6.clone();
        bad[0] = 0x50;
        assert!(check(&bad).is_err());
        assert!(check(&[]).is_err());
        assert!(check(&v4[..99]).is_err());
    }
}
