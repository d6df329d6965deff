//! The node's TUN device with the kernel's offloads: `IFF_VNET_HDR`,
//! TSO/USO (`TUNSETOFFLOAD`) and multi-queue (`IFF_MULTI_QUEUE`).
//!
//! With offloads on, the kernel hands the TUN TCP and UDP super-packets of
//! up to 64 KB instead of MTU-sized packets: one read (and one trip through
//! the network stack) for up to ~45 segments. [`TunReader::read_batch`] cuts
//! them to the flow's MSS with fpn-proto's sans-IO
//! [`fpn_proto::packet::gso::Segments`] into a [`SegmentBuffers`] arena the
//! caller allocates once, with tail room per packet for the PCCOM trailer.
//! With several queues the kernel spreads flows over them (by flow hash), so
//! each queue can have a core of its own: [`Tun::into_queue_fds`] hands out
//! the queues unregistered, and [`TunQueue::register`] ties one to the
//! runtime of the thread that will drive it.
//!
//! Writes carry a virtio header too: [`TunWriter::write`] prepends an empty
//! one (the packet's checksums must be complete), [`TunWriter::write_gso`]
//! a given one (for a coalesced super-packet).
//!
//! This module never touches the engine: it moves packets between the
//! kernel and caller-owned buffers, nothing else.

#[cfg(target_os = "linux")]
mod linux;

#[cfg(target_os = "linux")]
pub use linux::{BlockingTunReader, Tun, TunQueue, TunReader, TunWriter};

pub use fpn_proto::packet::gso::SegmentBuffers;

use std::net::{Ipv4Addr, Ipv6Addr};

/// Largest read from an offloading TUN: the largest IP packet (an IPv6
/// header plus a 65 535-byte payload) plus its virtio header.
pub const MAX_READ: usize = 40 + 65_535 + fpn_proto::packet::vnet::VNET_HDR_LEN;

/// How to create the TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// IPv4 address and prefix length to put on the interface, if any.
    pub address: Option<(Ipv4Addr, u8)>,
    /// IPv6 address and prefix length to put on the interface, if any
    /// (then IPv6 is on, whatever `disable_ipv6` says, without duplicate
    /// address detection, router solicitations or a link-local address:
    /// a TUN has no neighbours).
    pub address6: Option<(Ipv6Addr, u8)>,
    /// MTU of the interface.
    pub mtu: u16,
    /// Number of queues (file descriptors); more than one sets `IFF_MULTI_QUEUE`.
    pub queues: usize,
    /// The offloads to ask for; the kernel may grant fewer ([`Tun::offloads`]).
    pub offloads: Offloads,
    /// Turn IPv6 off on the interface (no router solicitations or MLD
    /// reports appear in the TUN).
    pub disable_ipv6: bool,
}

impl TunConfig {
    /// One queue, every offload, IPv6 off, no address.
    pub fn new(name: &str, mtu: u16) -> Self {
        Self {
            name: name.to_owned(),
            address: None,
            address6: None,
            mtu,
            queues: 1,
            offloads: Offloads::ALL,
            disable_ipv6: true,
        }
    }
}

/// A set of TUN offloads (`TUN_F_*` bits of `TUNSETOFFLOAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Offloads(u32);

impl Offloads {
    /// `TUN_F_CSUM`: the kernel may hand over packets with partial checksums.
    pub const CSUM: Self = Self(0x01);
    /// `TUN_F_TSO4`: TCP over IPv4 super-packets.
    pub const TSO4: Self = Self(0x02);
    /// `TUN_F_TSO6`: TCP over IPv6 super-packets.
    pub const TSO6: Self = Self(0x04);
    /// `TUN_F_TSO_ECN`: TSO also for flows with CWR set.
    pub const TSO_ECN: Self = Self(0x08);
    /// `TUN_F_USO4`: UDP over IPv4 super-packets (Linux 6.2+).
    pub const USO4: Self = Self(0x20);
    /// `TUN_F_USO6`: UDP over IPv6 super-packets (Linux 6.2+).
    pub const USO6: Self = Self(0x40);
    /// No offload: the kernel segments and checksums everything itself.
    pub const NONE: Self = Self(0);
    /// Checksum, TSO (with ECN) and USO.
    pub const ALL: Self = Self(0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40);
    /// Checksum and TSO, what kernels before 6.2 accept.
    pub const TSO: Self = Self(0x01 | 0x02 | 0x04 | 0x08);

    /// The raw `TUN_F_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// True when every offload of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The offloads in both sets.
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// True when no offload is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Offloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Self::CSUM, "csum"),
            (Self::TSO4, "tso4"),
            (Self::TSO6, "tso6"),
            (Self::TSO_ECN, "tso_ecn"),
            (Self::USO4, "uso4"),
            (Self::USO6, "uso6"),
        ];
        let mut first = true;
        for (o, n) in names {
            if self.contains(o) {
                f.write_str(if first { "" } else { "," })?;
                f.write_str(n)?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// What one [`TunReader::read_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Reads from the device (each one packet or super-packet).
    pub reads: usize,
    /// Reads that were GSO super-packets (TSO or USO).
    pub gso_reads: usize,
    /// Packets added to the arena (segments included).
    pub packets: usize,
    /// Reads dropped because their virtio header or packet was malformed.
    pub dropped: usize,
    /// The error of the last dropped read.
    pub last_error: Option<fpn_proto::Error>,
}
