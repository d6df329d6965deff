//! Linux: `/dev/net/tun` opened by hand (the `tun` crate has neither an
//! offload API nor working multi-queue), configured with ioctls.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use fpn_proto::packet::gso::{SegmentBuffers, Segments};
use fpn_proto::packet::vnet::{VNET_HDR_LEN, VnetRepr};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::{debug, trace};

use super::{MAX_READ, Offloads, ReadStats, TunConfig};
use crate::error::{Error, Result};

const TUNSETIFF: u64 = 0x4004_54ca;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_VNET_HDR: i16 = 0x4000;

/// `struct ifreq`: the name, then a 24-byte union of which each ioctl here
/// uses a prefix (flags as i16, MTU/index as i32, a `sockaddr_in`).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut r = Self {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
}

/// An open TUN device: one file descriptor per queue.
#[derive(Debug)]
pub struct Tun {
    name: Arc<str>,
    offloads: Offloads,
    ifindex: u32,
    fds: Vec<OwnedFd>,
}

impl Tun {
    /// Creates (or attaches to) the TUN `cfg.name` with `IFF_VNET_HDR` and
    /// `cfg.queues` queues, turns on as many of `cfg.offloads` as the kernel
    /// accepts (all, else without USO, else checksum only, else none), sets
    /// the address and MTU and brings it up. Needs CAP_NET_ADMIN. The
    /// interface goes away when every queue is closed.
    pub fn open(cfg: &TunConfig) -> Result<Self> {
        let name = cfg.name.as_str();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(Error::TunConfig {
                setting: "name",
                reason: "1 to 15 bytes, no '/'",
            });
        }
        if cfg.queues == 0 || cfg.queues > 256 {
            return Err(Error::TunConfig {
                setting: "queues",
                reason: "1 to 256",
            });
        }
        let io_err = |op: &'static str| {
            let source = io::Error::last_os_error();
            Error::TunIo {
                name: name.to_owned(),
                op,
                source,
            }
        };
        let mut flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
        if cfg.queues > 1 {
            flags |= IFF_MULTI_QUEUE;
        }
        let mut fds = Vec::with_capacity(cfg.queues);
        for _ in 0..cfg.queues {
            // SAFETY: a plain open(2) of a NUL-terminated path.
            let fd = unsafe {
                libc::open(
                    c"/dev/net/tun".as_ptr(),
                    libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io_err("open /dev/net/tun"));
            }
            // SAFETY: `fd` was just opened and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut req = IfReq::new(name);
            req.data[..2].copy_from_slice(&flags.to_ne_bytes());
            ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req).map_err(|_| io_err("TUNSETIFF"))?;
            fds.push(fd);
        }
        let offloads = set_offloads(&fds, cfg.offloads).map_err(|_| io_err("TUNSETOFFLOAD"))?;
        let ifindex = configure(name, cfg).map_err(|(op, source)| Error::TunIo {
            name: name.to_owned(),
            op,
            source,
        })?;
        debug!(%offloads, queues = cfg.queues, ifindex, "TUN open");
        Ok(Self {
            name: name.into(),
            offloads,
            ifindex,
            fds,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offloads the kernel granted.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The number of queues.
    pub fn queues(&self) -> usize {
        self.fds.len()
    }

    /// The queues, not yet tied to a runtime: move each to the thread (and
    /// runtime) that will drive it, then [`TunQueue::register`] it there.
    /// This is how each queue gets a core of its own.
    pub fn into_queue_fds(self) -> Vec<TunQueue> {
        let name = self.name;
        self.fds
            .into_iter()
            .map(|fd| TunQueue {
                fd,
                name: name.clone(),
            })
            .collect()
    }

    /// A reader and a writer per queue, all registered with the current
    /// tokio runtime (a multi-thread runtime spreads them over its workers).
    pub fn into_queues(self) -> Result<Vec<(TunReader, TunWriter)>> {
        self.into_queue_fds()
            .into_iter()
            .map(TunQueue::register)
            .collect()
    }
}

/// One queue of a TUN, not yet registered with a runtime.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
    name: Arc<str>,
}

impl TunQueue {
    /// A second descriptor of the same queue (`dup`): reads and writes on
    /// either reach the same queue. The driver writes through one while a
    /// worker thread reads the other.
    pub fn try_clone(&self) -> Result<Self> {
        let fd = self.fd.try_clone().map_err(|e| Error::TunIo {
            name: self.name.to_string(),
            op: "dup",
            source: e,
        })?;
        Ok(Self {
            fd,
            name: self.name.clone(),
        })
    }

    /// The queue's reader for a thread of its own, without a runtime: it
    /// waits in `poll(2)` (see [`BlockingTunReader::read_batch`]).
    pub fn into_blocking(self) -> BlockingTunReader {
        BlockingTunReader {
            fd: self.fd,
            name: self.name,
            seg: Segmenter::new(),
        }
    }

    /// Registers the queue with the current tokio runtime for writing
    /// only: a TUN worker reads this queue through another descriptor, and
    /// read readiness here would wake the runtime at every packet for
    /// nothing.
    pub fn register_writer(self) -> Result<TunWriter> {
        let name = self.name;
        // SAFETY: as in `register`: the OwnedFd stays open, on the same
        // file, until the AsyncFd that owns it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(self.fd, Interest::WRITABLE) }.map_err(
            |e| Error::TunIo {
                name: name.to_string(),
                op: "register with tokio",
                source: e.into_parts().1,
            },
        )?;
        Ok(TunWriter {
            fd: Arc::new(fd),
            name,
        })
    }

    /// Registers the queue with the current tokio runtime and splits it
    /// into its reader (which owns a 64 KB scratch buffer for one
    /// super-packet) and writer.
    pub fn register(self) -> Result<(TunReader, TunWriter)> {
        let name = self.name;
        // SAFETY: an OwnedFd keeps its descriptor open, and refers to the
        // same file, until it is dropped, which happens only when the
        // AsyncFd that owns it is dropped (tokio's I/O-safety condition).
        let fd = unsafe { AsyncFd::register(self.fd) }.map_err(|e| Error::TunIo {
            name: name.to_string(),
            op: "register with tokio",
            source: e.into_parts().1,
        })?;
        let fd = Arc::new(fd);
        Ok((
            TunReader {
                fd: fd.clone(),
                name: name.clone(),
                seg: Segmenter::new(),
            },
            TunWriter { fd, name },
        ))
    }
}

/// The read half of one TUN queue.
pub struct TunReader {
    fd: Arc<AsyncFd<OwnedFd>>,
    name: Arc<str>,
    seg: Segmenter,
}

/// The scratch buffer one read lands in, and the read whose segments did
/// not fit the last batch (both readers cut reads the same way).
struct Segmenter {
    scratch: Box<[u8]>,
    /// Length of a read in `scratch` whose segments did not fit the last batch.
    pending: Option<usize>,
}

impl Segmenter {
    fn new() -> Self {
        Self {
            scratch: vec![0; MAX_READ].into_boxed_slice(),
            pending: None,
        }
    }

    /// Puts the waiting read into `out`; false when it still does not fit.
    fn resume(&mut self, out: &mut SegmentBuffers, stats: &mut ReadStats) -> bool {
        match self.pending.take() {
            Some(n) if !self.take(n, out, stats) => {
                self.pending = Some(n);
                false
            }
            _ => true,
        }
    }

    /// Segments the read of `n` bytes in scratch into `out`. False when it
    /// must wait for room (then it is kept for [`Segmenter::resume`]).
    fn take(&mut self, n: usize, out: &mut SegmentBuffers, stats: &mut ReadStats) -> bool {
        let buf = &self.scratch[..n];
        let segs = VnetRepr::parse_bytes(buf).and_then(|h| Segments::new(&h, &buf[VNET_HDR_LEN..]));
        let r = match segs {
            Ok(s) if s.count() > out.capacity() - out.len() && !out.is_empty() => {
                self.pending = Some(n);
                return false;
            }
            Ok(s) => {
                stats.gso_reads += usize::from(s.is_gso());
                s.write_all(out)
            }
            Err(e) => Err(e),
        };
        match r {
            Ok(k) => stats.packets += k,
            Err(e) => {
                trace!(error = %e, "dropped a TUN read");
                stats.dropped += 1;
                stats.last_error = Some(e);
            }
        }
        true
    }
}

impl std::fmt::Debug for TunReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunReader")
            .field("name", &self.name)
            .field("pending", &self.seg.pending)
            .finish()
    }
}

impl TunReader {
    /// Waits for at least one packet, then reads what is ready without
    /// waiting again, until `out` is full or the queue is empty. Each read
    /// is split into segments of its `gso_size` (or copied as it is, its
    /// checksum completed if partial) and appended to `out`; the caller
    /// clears `out` between batches. Nothing is allocated.
    ///
    /// A read with a malformed virtio header or packet is dropped and
    /// counted in [`ReadStats`]; only an error of the device is an `Err`. A
    /// super-packet with more segments than `out` has room for waits for the
    /// next call; one that can never fit (more segments than `out` has
    /// slots, or segments longer than a slot) is dropped.
    ///
    /// Cancel-safe in the sense that matters: every read is segmented into
    /// `out` before the next await, so when the future is dropped (a
    /// timeout) the packets already read are in `out` (`out.len()` counts
    /// them; only the returned stats are lost).
    pub async fn read_batch(&mut self, out: &mut SegmentBuffers) -> Result<ReadStats> {
        let mut stats = ReadStats::default();
        if !self.seg.resume(out, &mut stats) {
            return Ok(stats);
        }
        // Bounded: each read either fills `out` or is dropped, and drops
        // count against the same budget.
        while stats.reads < out.capacity() && out.len() < out.capacity() {
            let r = {
                let mut guard = self.fd.readable().await.map_err(|e| self.err("poll", e))?;
                let scratch = &mut self.seg.scratch;
                guard.try_io(|fd| sys_read(fd.as_raw_fd(), scratch))
            };
            match r {
                Ok(Ok(n)) => {
                    stats.reads += 1;
                    if !self.seg.take(n, out, &mut stats) {
                        break;
                    }
                }
                Ok(Err(e)) => return Err(self.err("read", e)),
                // Not ready any more (readiness is cleared): return what we have.
                Err(_would_block) if stats.reads > 0 => break,
                Err(_would_block) => {}
            }
        }
        Ok(stats)
    }

    fn err(&self, op: &'static str, source: io::Error) -> Error {
        Error::TunIo {
            name: self.name.to_string(),
            op,
            source,
        }
    }
}

/// The read half of one TUN queue on a thread of its own (a data-path
/// worker): waits in `poll(2)` with a timeout instead of a runtime.
pub struct BlockingTunReader {
    fd: OwnedFd,
    name: Arc<str>,
    seg: Segmenter,
}

impl std::fmt::Debug for BlockingTunReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingTunReader")
            .field("name", &self.name)
            .field("pending", &self.seg.pending)
            .finish()
    }
}

impl BlockingTunReader {
    /// As [`TunReader::read_batch`], but waits at most `wait` for the first
    /// packet (then returns empty stats): the caller's thread has other
    /// work between packets (installs, reports).
    pub fn read_batch(
        &mut self,
        out: &mut SegmentBuffers,
        wait: std::time::Duration,
    ) -> Result<ReadStats> {
        let mut stats = ReadStats::default();
        if !self.seg.resume(out, &mut stats) {
            return Ok(stats);
        }
        let mut waited = false;
        while stats.reads < out.capacity() && out.len() < out.capacity() {
            match sys_read(self.fd.as_raw_fd(), &mut self.seg.scratch) {
                Ok(n) => {
                    stats.reads += 1;
                    if !self.seg.take(n, out, &mut stats) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                    return Err(Error::TunIo {
                        name: self.name.to_string(),
                        op: "read",
                        source: e,
                    });
                }
                // Empty: return what we have, or wait once for the first.
                Err(_) if stats.reads > 0 || waited => break,
                Err(_) => {
                    waited = true;
                    if !poll_readable(self.fd.as_raw_fd(), wait) {
                        break;
                    }
                }
            }
        }
        Ok(stats)
    }
}

/// Waits until `fd` is readable, at most `wait`; false when it is not.
fn poll_readable(fd: RawFd, wait: std::time::Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the call's duration.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    rc > 0 && p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0
}

/// The write half of one TUN queue; clones share the queue.
#[derive(Debug, Clone)]
pub struct TunWriter {
    fd: Arc<AsyncFd<OwnedFd>>,
    name: Arc<str>,
}

impl TunWriter {
    /// Writes one packet whose checksums are complete (an empty virtio
    /// header goes in front, by `writev`: no copy).
    pub async fn write(&self, packet: &[u8]) -> Result<()> {
        self.write_gso(&VnetRepr::NONE, packet).await
    }

    /// Writes a packet with the virtio header `hdr`: a super-packet with
    /// `gso` set and `NEEDS_CSUM` (the kernel segments it where needed), or
    /// a packet with a partial checksum.
    pub async fn write_gso(&self, hdr: &VnetRepr, packet: &[u8]) -> Result<()> {
        let mut h = [0u8; VNET_HDR_LEN];
        hdr.emit_bytes(&mut h)?;
        let total = VNET_HDR_LEN + packet.len();
        let n = self
            .fd
            .async_io(Interest::WRITABLE, |fd| {
                sys_writev(fd.as_raw_fd(), &h, packet)
            })
            .await
            .map_err(|e| self.err("write", e))?;
        if n != total {
            return Err(self.err(
                "write",
                io::Error::new(io::ErrorKind::WriteZero, "short write"),
            ));
        }
        Ok(())
    }

    /// Writes one packet whose checksums are complete, now: a direct
    /// `writev` on the non-blocking descriptor, without waiting for
    /// readiness. A TUN write hands the packet to the kernel's stack and
    /// does not block; tokio's cached write readiness would make the async
    /// path refuse packets the kernel takes. `WouldBlock` means dropped.
    pub fn try_write(&self, packet: &[u8]) -> io::Result<usize> {
        self.try_write_gso(&VnetRepr::NONE, packet)
    }

    /// [`TunWriter::try_write`] with the virtio header `hdr` (a coalesced
    /// super-packet). Returns the packet's length (without the header).
    pub fn try_write_gso(&self, hdr: &VnetRepr, packet: &[u8]) -> io::Result<usize> {
        let mut h = [0u8; VNET_HDR_LEN];
        hdr.emit_bytes(&mut h)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let n = sys_writev(self.fd.as_raw_fd(), &h, packet)?;
        if n != VNET_HDR_LEN + packet.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        Ok(packet.len())
    }

    fn err(&self, op: &'static str, source: io::Error) -> Error {
        Error::TunIo {
            name: self.name.to_string(),
            op,
            source,
        }
    }
}

/// Asks for `want`, then for less while the kernel says EINVAL (older
/// kernels do not know USO). Returns what was granted.
fn set_offloads(fds: &[OwnedFd], want: Offloads) -> io::Result<Offloads> {
    let tries = [
        want,
        want.intersection(Offloads::TSO),
        want.intersection(Offloads::CSUM),
        Offloads::NONE,
    ];
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for o in tries {
        let mut ok = true;
        for fd in fds {
            // SAFETY: TUNSETOFFLOAD takes its argument by value.
            let rc = unsafe {
                libc::ioctl(
                    fd.as_raw_fd(),
                    TUNSETOFFLOAD as _,
                    libc::c_ulong::from(o.bits()),
                )
            };
            if rc < 0 {
                last = io::Error::last_os_error();
                ok = false;
                break;
            }
        }
        if ok {
            return Ok(o);
        }
        if last.raw_os_error() != Some(libc::EINVAL) {
            return Err(last);
        }
    }
    Err(last)
}

/// Address, MTU, up; returns the interface index.
fn configure(name: &str, cfg: &TunConfig) -> std::result::Result<u32, (&'static str, io::Error)> {
    // SAFETY: a plain socket(2) call.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(("socket", io::Error::last_os_error()));
    }
    // SAFETY: `s` was just opened and is owned by nobody else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let s = s.as_raw_fd();
    let mut req = IfReq::new(name);
    req.data[..4].copy_from_slice(&i32::from(cfg.mtu).to_ne_bytes());
    ioctl(s, libc::SIOCSIFMTU as _, &mut req).map_err(|e| ("SIOCSIFMTU", e))?;
    if let Some((addr, prefix)) = cfg.address {
        if prefix > 32 {
            return Err(("address", io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
        for (op, req_no, a) in [
            ("SIOCSIFADDR", libc::SIOCSIFADDR, addr),
            ("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, mask),
        ] {
            let mut req = IfReq::new(name);
            // struct sockaddr_in: family (host order), port, address.
            req.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            req.data[4..8].copy_from_slice(&a.octets());
            ioctl(s, req_no as _, &mut req).map_err(|e| (op, e))?;
        }
    }
    // Before the link goes up, so that not even the first report goes out.
    if cfg.address6.is_some() {
        // No neighbours on a TUN: no duplicate address detection (the
        // address is usable at once), no router solicitations, no
        // link-local address; IPv6 on even where the host's default is off.
        for (key, value) in [
            ("accept_dad", "0"),
            ("accept_ra", "0"),
            ("router_solicitations", "0"),
            ("addr_gen_mode", "1"),
            ("disable_ipv6", "0"),
        ] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/{key}"), value)
                .map_err(|e| ("IPv6 sysctl", e))?;
        }
    } else if cfg.disable_ipv6 {
        // Best effort: without IPv6 the kernel sends no router solicitations
        // or MLD reports into the TUN. Fails harmlessly where IPv6 is off.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), b"1");
    }
    let mut req = IfReq::new(name);
    ioctl(s, libc::SIOCGIFFLAGS as _, &mut req).map_err(|e| ("SIOCGIFFLAGS", e))?;
    let flags =
        i16::from_ne_bytes([req.data[0], req.data[1]]) | (libc::IFF_UP | libc::IFF_RUNNING) as i16;
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(s, libc::SIOCSIFFLAGS as _, &mut req).map_err(|e| ("SIOCSIFFLAGS", e))?;
    let mut req = IfReq::new(name);
    ioctl(s, libc::SIOCGIFINDEX as _, &mut req).map_err(|e| ("SIOCGIFINDEX", e))?;
    let ifindex = i32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]) as u32;
    if let Some((addr, prefix)) = cfg.address6 {
        add_address6(ifindex, addr, prefix)?;
    }
    Ok(ifindex)
}

/// `struct in6_ifreq` (linux/ipv6.h), what `SIOCSIFADDR` on an `AF_INET6`
/// socket takes.
#[repr(C)]
struct In6IfReq {
    addr: [u8; 16],
    prefixlen: u32,
    ifindex: i32,
}

fn add_address6(
    ifindex: u32,
    addr: Ipv6Addr,
    prefix: u8,
) -> std::result::Result<(), (&'static str, io::Error)> {
    if prefix > 128 {
        return Err(("IPv6 address", io::Error::from_raw_os_error(libc::EINVAL)));
    }
    // SAFETY: a plain socket(2) call.
    let s = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(("IPv6 socket", io::Error::last_os_error()));
    }
    // SAFETY: `s` was just opened and is owned by nobody else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = In6IfReq {
        addr: addr.octets(),
        prefixlen: u32::from(prefix),
        ifindex: ifindex as i32,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one `struct
    // in6_ifreq`, which `In6IfReq` is, valid for the call.
    let rc = unsafe {
        libc::ioctl(
            s.as_raw_fd(),
            libc::SIOCSIFADDR as _,
            std::ptr::from_mut(&mut req),
        )
    };
    if rc < 0 {
        return Err(("SIOCSIFADDR (IPv6)", io::Error::last_os_error()));
    }
    Ok(())
}

fn ioctl(fd: RawFd, req: u64, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: every request used here reads or writes at most a `struct
    // ifreq`, which `IfReq` is (name plus a 24-byte union), and `ifr` is a
    // valid exclusive reference for the call.
    let rc = unsafe { libc::ioctl(fd, req as _, std::ptr::from_mut(ifr)) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sys_read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn sys_writev(fd: RawFd, hdr: &[u8], packet: &[u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr().cast_mut().cast(),
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: packet.as_ptr().cast_mut().cast(),
            iov_len: packet.len(),
        },
    ];
    // SAFETY: both iovecs point at live slices; writev only reads them.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
