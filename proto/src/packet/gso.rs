//! Segmentation of GSO super-packets read from an offloading TUN.
//!
//! With `TUNSETOFFLOAD` (TSO4/TSO6/USO) the kernel hands the TUN one TCP or
//! UDP "packet" of up to 64 KB plus a [`VnetRepr`] saying how to cut it:
//! `gso_size` payload bytes per segment. [`Segments`] does the cutting the
//! NIC would have done, one segment at a time into a buffer the caller owns:
//!
//! - IPv4: total length per segment, the identification incremented per
//!   segment (as Linux's TSO does), a fresh header checksum;
//! - IPv6: payload length per segment;
//! - TCP: the sequence number advanced by the bytes before the segment, FIN
//!   and PSH only on the last segment, CWR only on the first;
//! - UDP (`UDP_L4`): each datagram its own UDP length;
//! - a full transport checksum per segment (the super-packet's checksum
//!   field holds only a partial sum and is not trusted).
//!
//! An ordinary packet ([`GsoKind::None`]) comes out as one segment, with its
//! checksum completed when the header says `NEEDS_CSUM`.
//!
//! The super-packet is checked once in [`Segments::new`] with
//! [`Packet::parse`] (the same checks as every other packet) plus the
//! agreement between header and packet; a header that does not fit its
//! packet is a typed [`Error`], never a panic. Nothing here allocates;
//! [`SegmentBuffers`] is an arena the caller allocates once.

use super::vnet::{GsoKind, VnetRepr, complete_checksum};
use super::{IpVersion, Packet, checksum::Sum, tcp_flags};
use crate::flow::protocol;
use crate::{Error, Result};

/// The segments of one (super-)packet, written one by one into caller buffers.
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    packet: &'a [u8],
    hdr: VnetRepr,
    /// GSO shape; `None` for an ordinary packet (one segment, copied).
    shape: Option<Shape>,
    count: usize,
    next: usize,
}

/// Where the parts of a checked GSO super-packet are.
#[derive(Debug, Clone, Copy)]
struct Shape {
    version: IpVersion,
    tcp: bool,
    /// Offset of the transport header (= IP header length).
    l4: usize,
    /// Offset of the payload (IP + transport headers).
    headers: usize,
    /// Payload bytes per segment.
    mss: usize,
    /// The first segment's TCP sequence number.
    seq: u32,
}

impl<'a> Segments<'a> {
    /// Checks `packet` (the bytes after the virtio header, exactly the
    /// packet) against `hdr` and prepares to cut it.
    ///
    /// Errors: the packet does not parse; the GSO type does not match the IP
    /// version or the transport protocol; `csum_start`/`csum_offset` do not
    /// point at the transport checksum; there is no payload to segment.
    pub fn new(hdr: &VnetRepr, packet: &'a [u8]) -> Result<Self> {
        if hdr.gso == GsoKind::None {
            if hdr.needs_csum {
                let at = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset);
                if at + 2 > packet.len() {
                    return Err(Error::invalid(
                        "virtio_net_hdr csum_start",
                        "checksum field beyond the packet",
                    ));
                }
            }
            return Ok(Self {
                packet,
                hdr: *hdr,
                shape: None,
                count: 1,
                next: 0,
            });
        }
        let p = Packet::parse(packet)?;
        let (version, proto) = (p.version(), p.protocol());
        let tcp = match (hdr.gso, version, proto) {
            (GsoKind::TcpV4, IpVersion::V4, protocol::TCP)
            | (GsoKind::TcpV6, IpVersion::V6, protocol::TCP) => true,
            (GsoKind::UdpL4, _, protocol::UDP) => false,
            _ => {
                return Err(Error::invalid(
                    "virtio_net_hdr gso_type",
                    "does not match the packet's IP version or protocol",
                ));
            }
        };
        let l4 = p.ip_header_len();
        let csum_offset = if tcp { 16 } else { 6 };
        if usize::from(hdr.csum_start) != l4 || hdr.csum_offset != csum_offset {
            return Err(Error::invalid(
                "virtio_net_hdr csum_start",
                "does not point at the transport checksum",
            ));
        }
        let headers = p.payload_offset();
        let payload = p.len() - headers;
        if payload == 0 {
            return Err(Error::invalid(
                "virtio_net_hdr gso_type",
                "GSO packet without payload",
            ));
        }
        let mss = usize::from(hdr.gso_size);
        let seq = if tcp {
            u32::from_be_bytes([
                packet[l4 + 4],
                packet[l4 + 5],
                packet[l4 + 6],
                packet[l4 + 7],
            ])
        } else {
            0
        };
        Ok(Self {
            packet: &packet[..p.len()],
            hdr: *hdr,
            shape: Some(Shape {
                version,
                tcp,
                l4,
                headers,
                mss,
                seq,
            }),
            count: payload.div_ceil(mss),
            next: 0,
        })
    }

    /// The number of segments (1 for an ordinary packet).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The length of the longest segment: what each output buffer must hold.
    pub fn max_segment_len(&self) -> usize {
        match self.shape {
            None => self.packet.len(),
            Some(s) => s.headers + s.mss.min(self.packet.len() - s.headers),
        }
    }

    /// True for a GSO super-packet, false for an ordinary packet.
    pub fn is_gso(&self) -> bool {
        self.shape.is_some()
    }

    /// Writes segment `i` (< [`Segments::count`]) at the start of `out` and
    /// returns its length. `out` may be longer: the rest is room (for the
    /// PCCOM trailer, for instance).
    pub fn write_segment(&self, i: usize, out: &mut [u8]) -> Result<usize> {
        if i >= self.count {
            return Err(Error::invalid("segment index", "past the last segment"));
        }
        let Some(s) = self.shape else {
            let (n, capacity) = (self.packet.len(), out.len());
            let dst = out.get_mut(..n).ok_or(Error::BufferTooSmall {
                needed: n,
                capacity,
            })?;
            dst.copy_from_slice(self.packet);
            complete_checksum(&self.hdr, dst)?;
            return Ok(n);
        };
        let start = s.headers + i * s.mss;
        let end = (start + s.mss).min(self.packet.len());
        let last = end == self.packet.len();
        let total = s.headers + (end - start);
        let capacity = out.len();
        let out = out.get_mut(..total).ok_or(Error::BufferTooSmall {
            needed: total,
            capacity,
        })?;
        out[..s.headers].copy_from_slice(&self.packet[..s.headers]);
        out[s.headers..].copy_from_slice(&self.packet[start..end]);

        // Every length below is at most the super-packet's, which fit 16 bits.
        let (src, dst) = match s.version {
            IpVersion::V4 => {
                out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                let id = u16::from_be_bytes([out[4], out[5]]).wrapping_add(i as u16);
                out[4..6].copy_from_slice(&id.to_be_bytes());
                out[10..12].fill(0);
                let c = Sum::new().add_bytes(&out[..s.l4]).finish();
                out[10..12].copy_from_slice(&c.to_be_bytes());
                (12..16, 16..20)
            }
            IpVersion::V6 => {
                out[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
                (8..24, 24..40)
            }
        };
        let l4 = s.l4;
        let l4_len = total - l4;
        let proto = if s.tcp {
            let seq = s.seq.wrapping_add((i * s.mss) as u32);
            out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            let mut flags = out[l4 + 13];
            if !last {
                flags &= !(tcp_flags::FIN | tcp_flags::PSH);
            }
            if i > 0 {
                flags &= !tcp_flags::CWR;
            }
            out[l4 + 13] = flags;
            protocol::TCP
        } else {
            out[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            protocol::UDP
        };
        let at = l4 + if s.tcp { 16 } else { 6 };
        out[at..at + 2].fill(0);
        let mut c = Sum::new()
            .add_bytes(&out[src])
            .add_bytes(&out[dst])
            .add_u16(u16::from(proto))
            .add_u16(l4_len as u16)
            .add_bytes(&out[l4..])
            .finish();
        if c == 0 && !s.tcp {
            c = 0xffff; // UDP: zero means "no checksum".
        }
        out[at..at + 2].copy_from_slice(&c.to_be_bytes());
        Ok(total)
    }

    /// Writes the next segment into `out`; `None` once all are written.
    pub fn write_next(&mut self, out: &mut [u8]) -> Option<Result<usize>> {
        if self.next >= self.count {
            return None;
        }
        let r = self.write_segment(self.next, out);
        self.next += 1;
        Some(r)
    }

    /// Appends every segment to `bufs`, one per slot. Checks up front that
    /// they all fit (slot count and slot length), so on error `bufs` is
    /// unchanged. Returns the number of segments added.
    pub fn write_all(&self, bufs: &mut SegmentBuffers) -> Result<usize> {
        let free = bufs.capacity() - bufs.len();
        if self.count > free {
            return Err(Error::TooLarge {
                what: "segment count",
                len: self.count,
                max: free,
            });
        }
        let need = self.max_segment_len();
        if need > bufs.packet_capacity() {
            return Err(Error::BufferTooSmall {
                needed: need,
                capacity: bufs.packet_capacity(),
            });
        }
        for i in 0..self.count {
            bufs.push_with(|slot| self.write_segment(i, slot))?;
        }
        Ok(self.count)
    }
}

/// A fixed arena of packet slots, allocated once and reused for every batch.
///
/// Each slot holds one packet of up to `packet_capacity` bytes followed by
/// `tail_room` spare bytes, so a packet can grow in place (PCCOM appends its
/// 24-byte trailer there) without a copy.
pub struct SegmentBuffers {
    buf: Box<[u8]>,
    lens: Box<[usize]>,
    slot_len: usize,
    tail_room: usize,
    used: usize,
}

impl std::fmt::Debug for SegmentBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentBuffers")
            .field("slots", &self.lens.len())
            .field("slot_len", &self.slot_len)
            .field("used", &self.used)
            .finish()
    }
}

impl SegmentBuffers {
    /// An arena of `slots` slots, each for a packet of up to
    /// `packet_capacity` bytes plus `tail_room` bytes of room.
    pub fn new(slots: usize, packet_capacity: usize, tail_room: usize) -> Self {
        let slot_len = packet_capacity + tail_room;
        Self {
            buf: vec![0; slots * slot_len].into_boxed_slice(),
            lens: vec![0; slots].into_boxed_slice(),
            slot_len,
            tail_room,
            used: 0,
        }
    }

    /// Forgets all packets (keeps the memory).
    pub fn clear(&mut self) {
        self.used = 0;
    }

    /// Number of packets held.
    pub fn len(&self) -> usize {
        self.used
    }

    /// True when no packet is held.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// The largest packet a slot takes (without its tail room).
    pub fn packet_capacity(&self) -> usize {
        self.slot_len - self.tail_room
    }

    /// Packet `i` (< [`SegmentBuffers::len`]).
    pub fn packet(&self, i: usize) -> &[u8] {
        let s = &self.buf[i * self.slot_len..(i + 1) * self.slot_len];
        &s[..self.lens[i]]
    }

    /// The whole slot of packet `i` (packet, then room): what was written
    /// there in place, e.g. a packet sealed with its trailer.
    pub fn slot(&self, i: usize) -> &[u8] {
        &self.buf[i * self.slot_len..(i + 1) * self.slot_len]
    }

    /// The whole slot of packet `i` (packet, then room) and the packet's
    /// length, to rewrite or grow it in place (e.g. with
    /// [`Packet::parse_prefix`]); record a new length with
    /// [`SegmentBuffers::set_len`].
    pub fn slot_mut(&mut self, i: usize) -> (&mut [u8], usize) {
        let len = self.lens[i];
        (
            &mut self.buf[i * self.slot_len..(i + 1) * self.slot_len],
            len,
        )
    }

    /// Sets the length of packet `i` (at most the slot length).
    pub fn set_len(&mut self, i: usize, len: usize) -> Result<()> {
        if len > self.slot_len {
            return Err(Error::BufferTooSmall {
                needed: len,
                capacity: self.slot_len,
            });
        }
        self.lens[i] = len;
        Ok(())
    }

    /// Appends a packet written by `write` into the next slot's packet area
    /// (`write` returns the length it wrote). On error nothing is added.
    pub fn push_with(&mut self, write: impl FnOnce(&mut [u8]) -> Result<usize>) -> Result<usize> {
        if self.used == self.lens.len() {
            return Err(Error::TooLarge {
                what: "segment count",
                len: self.used + 1,
                max: self.lens.len(),
            });
        }
        let at = self.used * self.slot_len;
        let area = &mut self.buf[at..at + self.slot_len - self.tail_room];
        let n = write(area)?;
        if n > area.len() {
            return Err(Error::BufferTooSmall {
                needed: n,
                capacity: area.len(),
            });
        }
        self.lens[self.used] = n;
        self.used += 1;
        Ok(self.used - 1)
    }

    /// The packets held, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.used).map(|i| self.packet(i))
    }
}
