//! Receive mechanism (b): AF_PACKET sockets with a TPACKET_V2 mmap ring
//! each, one per IP version.
//!
//! TPACKET_V2, not V3 (docs/DESIGN-NOTES.md, "Native receive latency"): V3
//! hands packets over a block at a time, so a lone packet waited for its
//! block's timeout (1 ms, measured 0.6 ms median per hop); V2 hands over
//! every frame as the kernel fills it and wakes the thread then, and the
//! thread still reads a busy ring without a system call per packet.
//!
//! Two rings, each with its own socket and thread: one bound to `ETH_P_IP`,
//! one to `ETH_P_IPV6` ([`Family`]). Each tap sees every packet of its
//! family the host receives, before netfilter; a classic-BPF filter in the
//! kernel (super::ring_filter) narrows it to TCP, UDP and ICMP/ICMPv6 echo
//! towards the node's addresses of that family, and the thread keeps the
//! packets of registered flows (and DPRP probes). The node's table drops
//! those same packets in prerouting, so the copy here is the only one.
//! IPv6 packets with extension headers are left to the kernel (the filter
//! reads the fixed header's next header only, as the table). The IPv6 ring
//! is open also while the node has no IPv6 address (its filter then takes
//! nothing), since addresses change at run time.
//!
//! Why not one socket bound to `ETH_P_ALL` for both families: such a tap
//! (in `ptype_all`) sees a packet once per device it passes (a bridge port
//! and then the bridge, a bond slave and the bond, a VLAN's lower device
//! and the VLAN, a macvlan's lower device), so on a host whose underlay
//! address sits on a bridge, bond or VLAN every native packet, probe and
//! DPRP message would be copied twice (the second refused by PCCOM as a
//! replay, after costing the work twice), and every packet sent too where
//! `PACKET_IGNORE_OUTGOING` is missing. A tap bound to one protocol (in
//! `ptype_base`) gets a received packet once, on the device it ends on,
//! and never an outgoing one (the option is set anyway, harmless).
//!
//! Caveat (open, as before IPv6): with br_netfilter loaded and
//! `bridge-nf-call-iptables` (or `-ip6tables`) on, the table's prerouting
//! drop runs at the bridge port, before the packet reaches the bridge
//! device, so a protocol-bound tap never sees a native packet to an
//! address on a bridge (an `ETH_P_ALL` tap saw it on the port first).
//! Probes are taken the same way and go unanswered, so such a node's
//! peers stay on QUIC (docs/NODE.md, known limits).
//!
//! Caveat: a tap sees packets after GRO. On a NIC with GRO on, consecutive
//! TCP-shaped native packets of one flow can arrive here merged into one
//! large packet (NFQUEUE segments them again before queueing). Such a packet
//! does not fit a ring frame: it is counted ([`super::RxStats::truncated`])
//! and dropped, never handed over cut short.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::packet::{FiveTuple, L4Proto};
use super::ring_filter::family_filter;
use super::{Outbox, Shared};
use crate::error::{Error, Result};

const SOL_PACKET: libc::c_int = 263;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TPACKET_V2: libc::c_int = 1;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
/// The kernel allocates the ring in blocks of this size (frames never
/// straddle one; 1 MiB / 2 KiB leaves no gap, so frame i is at i * 2 KiB).
const BLOCK_SIZE: u32 = 1 << 20;
/// One packet per frame: a 32-byte header, the link-layer address and a
/// 1500-byte IP packet fit.
const FRAME_SIZE: u32 = 2048;
/// Dense traffic: since the thread last began to wait (in poll or in a
/// nap), at least [`DENSE_MIN`] packets came in, at this many thousand a
/// second or more. Then the thread naps [`NAP`] instead of asking the
/// kernel to wake it per packet (a wakeup per few packets tripled the
/// receive CPU per packet at 80 kpps; docs/DESIGN-NOTES.md, note 27). A
/// bulk transfer's 150-250 kpps nap; a connection storm's 20-60 kpps,
/// 1-3 packets per wakeup, are woken for: each nap would cost them up to
/// [`NAP`] of latency at each end (note 72).
pub(crate) const DENSE_KPPS: u32 = 100;
/// Fewer packets than this since the last wait never count as dense.
const DENSE_MIN: usize = 6;
/// [`super::RingDense::Gap`]: the ring, just emptied, had its next packet
/// within this long.
const DENSE_GAP: std::time::Duration = std::time::Duration::from_micros(200);
/// How long the thread naps while traffic is dense: the most a packet then
/// waits in the ring (sparse traffic never waits: it is woken for).
const NAP: std::time::Duration = std::time::Duration::from_micros(500);

#[repr(C)]
struct TpacketReq {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
}

#[repr(C)]
#[derive(Default)]
struct TpacketStats {
    tp_packets: u32,
    tp_drops: u32,
}

// Offsets in struct tpacket2_hdr, from linux/if_packet.h.
const PKT_STATUS: usize = 0;
const PKT_LEN: usize = 4;
const PKT_SNAPLEN: usize = 8;
const PKT_NET: usize = 14;
/// Where the frame's `sockaddr_ll` keeps the interface index: after the
/// 32-byte `tpacket2_hdr` (TPACKET_ALIGN(32) = 32), 4 bytes into it.
const PKT_IFINDEX: usize = 32 + 4;

/// The IP version a ring takes: its socket is bound to that ethertype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// `ETH_P_IP`.
    V4,
    /// `ETH_P_IPV6`.
    V6,
}

impl Family {
    /// Both, one ring each.
    pub(crate) const BOTH: [Self; 2] = [Self::V4, Self::V6];

    fn ethertype(self) -> u16 {
        match self {
            Self::V4 => libc::ETH_P_IP as u16,
            Self::V6 => libc::ETH_P_IPV6 as u16,
        }
    }

    /// The name of the ring's receive thread.
    pub(crate) fn thread_name(self) -> &'static str {
        match self {
            Self::V4 => "fpn-native-ring",
            Self::V6 => "fpn-native-ring6",
        }
    }
}

/// The BPF program of the ring of `family`: its addresses of `local`
/// (none: nothing is taken) and `skip_udp`.
pub(crate) fn program(
    family: Family,
    local: &[IpAddr],
    skip_udp: &[u16],
) -> Result<Vec<libc::sock_filter>> {
    family_filter(family == Family::V6, local, skip_udp)
}

/// The socket and its mapped ring.
pub(crate) struct Ring {
    family: Family,
    fd: OwnedFd,
    map: *mut u8,
    blocks: usize,
    frames: usize,
    wake: OwnedFd,
    /// Packets on this interface (the node's TUN) are never taken: what
    /// the node wrote there itself (`ignored`).
    skip_ifindex: Option<u32>,
    /// When the thread naps.
    dense: super::RingDense,
}

// SAFETY: the mapping belongs to this struct alone and is only touched by
// the thread that owns it.
unsafe impl Send for Ring {}

impl Ring {
    /// Packets that come in on interface `name` (the node's TUN) are
    /// skipped: on the real-address plane the packets the node opens and
    /// writes there keep a registered flow's five-tuple, and a copy would
    /// only cost a PCCOM attempt that fails. Unknown names change nothing.
    pub(crate) fn skip_interface(&mut self, name: &str) {
        let Ok(c) = std::ffi::CString::new(name) else {
            return;
        };
        // SAFETY: a valid NUL-terminated string; the call only reads it.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        self.skip_ifindex = (idx != 0).then_some(idx);
    }

    /// When the thread naps instead of waiting in poll.
    pub(crate) fn set_dense(&mut self, dense: super::RingDense) {
        self.dense = dense;
    }

    /// The family this ring takes.
    pub(crate) fn family(&self) -> Family {
        self.family
    }

    /// Opens the tap of `family` (`ring_mib` MiB of ring): socket, filter,
    /// ring, then bind (so no packet arrives before the filter is in
    /// place).
    pub(crate) fn open(
        family: Family,
        local: &[IpAddr],
        skip_udp: &[u16],
        ring_mib: u32,
    ) -> Result<Self> {
        let err = |what| move |source| Error::NativeSocket { what, source };
        let prog = program(family, local, skip_udp)?;
        let blocks = ring_mib.clamp(1, 1024);
        // Protocol 0: nothing arrives before the bind below.
        // SAFETY: plain socket(2); the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0) };
        if raw < 0 {
            return Err(err("open the AF_PACKET socket")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(&fd, SOL_PACKET, PACKET_VERSION, &TPACKET_V2)
            .map_err(err("select TPACKET_V2"))?;
        // Outgoing packets (our own raw sends) are of no interest; a
        // protocol-bound tap never sees them anyway, so this only matters
        // should the bind ever take every protocol again.
        let _ = setsockopt(&fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &1i32);
        attach(&fd, &prog)?;
        let frames = BLOCK_SIZE / FRAME_SIZE * blocks;
        let req = TpacketReq {
            tp_block_size: BLOCK_SIZE,
            tp_block_nr: blocks,
            tp_frame_size: FRAME_SIZE,
            tp_frame_nr: frames,
        };
        setsockopt(&fd, SOL_PACKET, PACKET_RX_RING, &req).map_err(err("set up the RX ring"))?;
        let len = BLOCK_SIZE as usize * blocks as usize;
        // SAFETY: maps the ring the kernel just allocated for this socket.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED,
                fd.as_raw_fd(),
                0,
            )
        };
        let map = if map == libc::MAP_FAILED {
            // MAP_LOCKED can fail under RLIMIT_MEMLOCK; the ring works unlocked.
            // SAFETY: as above.
            let m = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if m == libc::MAP_FAILED {
                return Err(err("map the RX ring")(std::io::Error::last_os_error()));
            }
            m
        } else {
            map
        };
        // SAFETY: a zeroed sockaddr_ll is valid; the fields are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        // One protocol, never ETH_P_ALL: a packet once, on its final
        // device (see the module's documentation).
        sll.sll_protocol = family.ethertype().to_be();
        sll.sll_ifindex = 0;
        // SAFETY: sll is a valid sockaddr_ll of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err("bind the AF_PACKET socket")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: an eventfd for shutdown; checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(err("create an eventfd")(std::io::Error::last_os_error()));
        }
        let ring = Self {
            family,
            fd,
            map: map.cast(),
            blocks: blocks as usize,
            frames: frames as usize,
            // SAFETY: efd is a fresh descriptor we own.
            wake: unsafe { OwnedFd::from_raw_fd(efd) },
            skip_ifindex: None,
            dense: super::RingDense::default(),
        };
        Ok(ring)
    }

    /// A second descriptor of the socket, to change its filter later
    /// ([`attach`] a [`program`]) while the thread owns the ring.
    pub(crate) fn socket(&self) -> Result<OwnedFd> {
        self.fd.try_clone().map_err(|source| Error::NativeSocket {
            what: "duplicate the AF_PACKET socket",
            source,
        })
    }

    /// A descriptor whose write wakes the thread ([`wake`]).
    pub(crate) fn waker(&self) -> Result<OwnedFd> {
        self.wake.try_clone().map_err(|source| Error::NativeSocket {
            what: "duplicate the eventfd",
            source,
        })
    }

    /// The thread: until stopped or the driver is gone. Frames are taken
    /// in ring order while the kernel has filled them; only when the next
    /// one is still the kernel's is the batch handed over and the thread
    /// waits: in poll, woken by the kernel with the next packet, while
    /// traffic is sparse; a fixed nap while it is dense (see
    /// [`super::RingDense`] and [`DENSE_KPPS`]).
    /// A tap ([`super::RxTap`]) sees each wanted packet first, in its frame.
    pub(crate) fn run(
        self,
        shared: &Shared,
        mut out: Outbox,
        mut tap: Option<Box<dyn super::RxTap>>,
    ) {
        let mut idx = 0;
        let mut dense = false;
        // Packets that came in since the thread last began to wait, and
        // when that was.
        let mut taken = 0usize;
        let mut waited = std::time::Instant::now();
        while !shared.stopped() {
            let frame = self.frame(idx);
            // SAFETY: frame points at a frame header inside the mapping.
            let status = unsafe { read_u32(frame, PKT_STATUS) };
            if status & TP_STATUS_USER == 0 {
                if let Some(t) = tap.as_mut() {
                    t.idle();
                }
                if !out.flush(shared) {
                    break;
                }
                self.count_drops(shared);
                let within = || tap.as_ref().and_then(|t| t.wake_within());
                match self.dense {
                    super::RingDense::Never => self.poll(within()),
                    super::RingDense::Kpps(kpps) => {
                        let n = std::mem::take(&mut taken);
                        let now = std::time::Instant::now();
                        let since = now.saturating_duration_since(waited);
                        waited = now;
                        if dense_at(n, since, kpps) {
                            std::thread::sleep(NAP);
                        } else {
                            self.poll(within());
                        }
                    }
                    super::RingDense::Gap => {
                        if dense {
                            std::thread::sleep(NAP);
                            // Nothing came during a whole nap: sparse again.
                            // SAFETY: as above.
                            dense = unsafe { read_u32(frame, PKT_STATUS) } & TP_STATUS_USER != 0;
                        } else {
                            let t = std::time::Instant::now();
                            self.poll(within());
                            dense = t.elapsed() < DENSE_GAP;
                        }
                    }
                }
                continue;
            }
            taken = taken.saturating_add(1);
            std::sync::atomic::fence(Ordering::Acquire);
            // SAFETY: the kernel handed this frame to us (TP_STATUS_USER);
            // the header lies at its start.
            let (len, snap, net, ifindex) = unsafe {
                (
                    read_u32(frame, PKT_LEN) as usize,
                    read_u32(frame, PKT_SNAPLEN) as usize,
                    usize::from(read_u16(frame, PKT_NET)),
                    read_u32(frame, PKT_IFINDEX),
                )
            };
            let mut alive = true;
            if self.skip_ifindex == Some(ifindex) {
                shared.counters.ignored.fetch_add(1, Ordering::Relaxed);
            } else if snap < len {
                // Longer than a frame (GRO-merged): a cut packet would be
                // garbage to the core, so it is dropped and counted.
                shared.counters.truncated.fetch_add(1, Ordering::Relaxed);
            } else if net + snap <= FRAME_SIZE as usize {
                // SAFETY: the range from the packet to the frame's end lies
                // inside the frame (checked above), which is ours until its
                // status goes back to the kernel.
                let rest = unsafe {
                    std::slice::from_raw_parts_mut(frame.add(net), FRAME_SIZE as usize - net)
                };
                // The lock is taken per packet, never across a push that
                // may wait for the driver (which may be adding a flow at
                // that moment).
                if wanted(&rest[..snap], shared) {
                    if !tap.as_mut().is_some_and(|t| t.packet(rest, snap)) {
                        alive = out.push(shared, &rest[..snap]);
                    }
                } else {
                    shared.counters.ignored.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::sync::atomic::fence(Ordering::Release);
            // SAFETY: gives the frame back to the kernel.
            unsafe { write_u32(frame, PKT_STATUS, TP_STATUS_KERNEL) };
            idx = (idx + 1) % self.frames;
            if !alive {
                break;
            }
        }
        let _ = out.flush(shared);
        self.count_drops(shared);
    }

    fn frame(&self, idx: usize) -> *mut u8 {
        // SAFETY: idx < frames and frames * FRAME_SIZE is the mapping's
        // length, so the offset is inside it.
        unsafe { self.map.add(idx * FRAME_SIZE as usize) }
    }

    /// Waits for the kernel's next packet, a wake-up, or `within` (at most
    /// 200 ms).
    fn poll(&self, within: Option<std::time::Duration>) {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = within.map_or(200, |d| d.as_millis().clamp(1, 200) as libc::c_int);
        // SAFETY: fds is a valid array of two pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    }

    fn count_drops(&self, shared: &Shared) {
        let mut st = TpacketStats::default();
        let mut len = std::mem::size_of::<TpacketStats>() as libc::socklen_t;
        // SAFETY: st is a valid tpacket_stats buffer of len bytes. The
        // kernel resets its counters on each read, so they add up here.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                SOL_PACKET,
                PACKET_STATISTICS,
                (&raw mut st).cast(),
                &mut len,
            )
        };
        if rc == 0 && st.tp_drops > 0 {
            shared
                .counters
                .ring_drops
                .fetch_add(u64::from(st.tp_drops), Ordering::Relaxed);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in open.
        unsafe { libc::munmap(self.map.cast(), BLOCK_SIZE as usize * self.blocks) };
    }
}

/// Sets or replaces the socket's BPF filter (atomically, in the kernel).
pub(crate) fn attach(fd: &OwnedFd, prog: &[libc::sock_filter]) -> Result<()> {
    let fprog = libc::sock_fprog {
        // filter() keeps the program under BPF_MAXINSNS.
        len: u16::try_from(prog.len()).unwrap_or(u16::MAX),
        filter: prog.as_ptr().cast_mut(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog).map_err(|source| {
        Error::NativeSocket {
            what: "attach the BPF filter",
            source,
        }
    })
}

/// Whether `n` packets since the last wait began, `since` ago, are dense
/// traffic at `kpps` thousand packets a second ([`super::RingDense::Kpps`]).
fn dense_at(n: usize, since: std::time::Duration, kpps: u32) -> bool {
    // n / us packets per microsecond, against kpps / 1000.
    let us = since.as_micros().max(1);
    n >= DENSE_MIN && n as u128 * 1000 >= u128::from(kpps) * us
}

/// Wakes the thread blocked in poll.
pub(crate) fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// Whether the tap keeps this packet: a registered flow or a DPRP probe.
fn wanted(pkt: &[u8], shared: &Shared) -> bool {
    let Some(ft) = FiveTuple::parse(pkt) else {
        return false;
    };
    if ft.proto == L4Proto::Udp && Some(ft.dst_port) == shared.dprp_port {
        return true;
    }
    let flows = shared.flows.read().unwrap_or_else(|e| e.into_inner());
    // A flow's ports from another source: the kernel keeps the packet (it
    // is not in the nft set), and the core sees a copy only to count it.
    flows.contains(&ft) || flows.same_ports(&ft)
}

fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
) -> std::io::Result<()> {
    // SAFETY: v is a valid T of size_of::<T>() bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// # Safety
/// `base + off .. +4` must lie inside the mapping.
unsafe fn read_u32(base: *const u8, off: usize) -> u32 {
    // SAFETY: by the caller; volatile because the kernel writes the ring.
    unsafe { std::ptr::read_volatile(base.add(off).cast::<u32>()) }
}

/// # Safety
/// `base + off .. +2` must lie inside the mapping.
unsafe fn read_u16(base: *const u8, off: usize) -> u16 {
    // SAFETY: by the caller.
    unsafe { std::ptr::read_volatile(base.add(off).cast::<u16>()) }
}

/// # Safety
/// `base + off .. +4` must lie inside the mapping.
unsafe fn write_u32(base: *mut u8, off: usize, v: u32) {
    // SAFETY: by the caller.
    unsafe { std::ptr::write_volatile(base.add(off).cast::<u32>(), v) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bulk_transfer_naps_and_a_connection_storm_is_woken_for() {
        let us = Duration::from_micros;
        // Bulk: woken per packet, 7-10 packets per wakeup at 150-250 kpps;
        // a nap of 500 us at 200 kpps gathers about 100.
        assert!(dense_at(8, us(50), DENSE_KPPS));
        assert!(dense_at(100, NAP + us(20), DENSE_KPPS));
        // A storm: a packet every 30-60 us, 1-3 per wakeup. The rule of
        // note 27 napped here (its next packet came within 200 us).
        assert!(!dense_at(3, us(120), DENSE_KPPS));
        assert!(!dense_at(2, us(30), DENSE_KPPS));
        // A storm that fills a nap with a handful is below the rate.
        assert!(!dense_at(20, NAP + us(20), DENSE_KPPS));
        // A burst too short to say anything, however fast.
        assert!(!dense_at(DENSE_MIN - 1, us(1), DENSE_KPPS));
        // A nap that found nothing ends dense traffic.
        assert!(!dense_at(0, NAP, DENSE_KPPS));
        // The rate is the knob: at 10 kpps the storm naps too.
        assert!(dense_at(20, NAP + us(20), 10));
        // A zero-length wait is no division by zero.
        assert!(dense_at(DENSE_MIN, Duration::ZERO, DENSE_KPPS));
    }
}
