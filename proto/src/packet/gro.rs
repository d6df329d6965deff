//! TCP coalescing (GRO) for the write side of an offloading TUN: in-order
//! segments of one flow become one super-packet and one `write`, which the
//! kernel takes as a GSO packet (one trip through its stack instead of one
//! per segment).
//!
//! [`TcpCoalescer`] merges *consecutive* packets of a batch, the common case
//! of a bulk flow; it keeps one pending super-packet in a 64 KB buffer it
//! owns (allocated once). A packet joins it when, as Linux's own GRO
//! requires (`tcp_gro_receive`, and wireguard-go's `tcpPacketsCanCoalesce`):
//! same addresses and ports; IPv4 without options (TOS, TTL and DF equal) or
//! IPv6 without extension headers (traffic class and hop limit equal); the
//! same acknowledgement number, window, TCP header length and option bytes
//! (timestamps included); only ACK and PSH set; a sequence number that
//! continues the super-packet; a payload no larger than the first one's,
//! after no shorter one and no PSH; a valid checksum (the super-packet's
//! checksum is recomputed by the kernel, so a bad one would be laundered);
//! and a total under 64 KB. PSH of the last segment is kept.
//!
//! The super-packet carries the IP length of the whole, the IPv4 header
//! checksum recomputed, and in the TCP checksum field the pseudo-header sum
//! that a partial checksum (`NEEDS_CSUM`) needs; [`TcpCoalescer::pending`]
//! returns it with its [`VnetRepr`]. A lone packet is returned as it came,
//! with [`VnetRepr::NONE`].

use super::vnet::{GsoKind, VnetRepr};
use super::{IpVersion, Packet, checksum::Sum, tcp_flags};
use crate::flow::protocol;

/// The largest super-packet (IP lengths are 16 bits).
const MAX_SUPER: usize = 65_535;

/// What [`TcpCoalescer::offer`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The packet was copied into the pending super-packet (or started a
    /// new one when none was pending).
    Absorbed,
    /// The packet does not continue the pending super-packet, or cannot be
    /// coalesced at all. Write out [`TcpCoalescer::pending`], call
    /// [`TcpCoalescer::clear`], then offer the packet again: if it is
    /// refused once more, write it on its own.
    Rejected,
}

/// Coalesces consecutive TCP segments of one flow into a super-packet.
pub struct TcpCoalescer {
    buf: Box<[u8]>,
    len: usize,
    state: Option<State>,
}

/// The pending super-packet's shape.
#[derive(Debug, Clone, Copy)]
struct State {
    version: IpVersion,
    /// Transport header offset (the IP header length).
    l4: usize,
    /// Payload offset (IP + TCP headers).
    headers: usize,
    /// The first segment's payload length: the segment size.
    mss: usize,
    next_seq: u32,
    segments: usize,
    /// A segment shorter than `mss` was added: nothing may follow.
    short: bool,
    psh: bool,
}

impl std::fmt::Debug for TcpCoalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpCoalescer")
            .field("len", &self.len)
            .field("state", &self.state)
            .finish()
    }
}

impl Default for TcpCoalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl TcpCoalescer {
    /// An empty coalescer with its 64 KB buffer.
    pub fn new() -> Self {
        Self {
            buf: vec![0; MAX_SUPER].into_boxed_slice(),
            len: 0,
            state: None,
        }
    }

    /// True when no packet is pending.
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
    }

    /// Number of segments in the pending packet.
    pub fn segments(&self) -> usize {
        self.state.map_or(0, |s| s.segments)
    }

    /// Drops the pending packet (after writing it).
    pub fn clear(&mut self) {
        self.state = None;
        self.len = 0;
    }

    /// Offers the next packet of a batch (a whole IP packet).
    pub fn offer(&mut self, pkt: &[u8]) -> Offer {
        let Some(seg) = candidate(pkt) else {
            return Offer::Rejected;
        };
        let Some(st) = self.state else {
            self.buf[..pkt.len()].copy_from_slice(pkt);
            self.len = pkt.len();
            self.state = Some(State {
                version: seg.version,
                l4: seg.l4,
                headers: seg.headers,
                mss: pkt.len() - seg.headers,
                next_seq: seg.seq.wrapping_add((pkt.len() - seg.headers) as u32),
                segments: 1,
                short: false,
                psh: seg.psh,
            });
            return Offer::Absorbed;
        };
        let payload = pkt.len() - seg.headers;
        let head = &self.buf[..self.len];
        let fits = seg.version == st.version
            && seg.l4 == st.l4
            && seg.headers == st.headers
            && !st.psh
            && !st.short
            && seg.seq == st.next_seq
            && payload <= st.mss
            && self.len + payload <= MAX_SUPER
            && same_ip(st.version, head, pkt)
            && same_tcp(st.l4, st.headers, head, pkt);
        if !fits {
            return Offer::Rejected;
        }
        self.buf[self.len..self.len + payload].copy_from_slice(&pkt[seg.headers..]);
        self.len += payload;
        let st = self.state.as_mut().expect("checked above");
        st.next_seq = st.next_seq.wrapping_add(payload as u32);
        st.segments += 1;
        st.short = payload < st.mss;
        if seg.psh {
            st.psh = true;
            self.buf[st.l4 + 13] |= tcp_flags::PSH;
        }
        Offer::Absorbed
    }

    /// The pending packet and the virtio header to write in front of it;
    /// `None` when nothing is pending. A single segment comes back as it
    /// was offered, with [`VnetRepr::NONE`].
    pub fn pending(&mut self) -> Option<(VnetRepr, &[u8])> {
        let st = self.state?;
        if st.segments == 1 {
            return Some((VnetRepr::NONE, &self.buf[..self.len]));
        }
        let total = self.len;
        let b = &mut self.buf[..total];
        let (src, dst, gso) = match st.version {
            IpVersion::V4 => {
                b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                b[10..12].fill(0);
                let c = Sum::new().add_bytes(&b[..st.l4]).finish();
                b[10..12].copy_from_slice(&c.to_be_bytes());
                (12..16, 16..20, GsoKind::TcpV4)
            }
            IpVersion::V6 => {
                b[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
                (8..24, 24..40, GsoKind::TcpV6)
            }
        };
        // A partial checksum: the folded pseudo-header sum, not complemented.
        let pseudo = Sum::new()
            .add_bytes(&b[src])
            .add_bytes(&b[dst])
            .add_u16(u16::from(protocol::TCP))
            .add_u16((total - st.l4) as u16)
            .fold();
        b[st.l4 + 16..st.l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetRepr {
            needs_csum: true,
            data_valid: false,
            gso,
            ecn: false,
            hdr_len: st.headers as u16,
            gso_size: st.mss as u16,
            csum_start: st.l4 as u16,
            csum_offset: 16,
        };
        Some((hdr, &self.buf[..total]))
    }
}

/// What matters of a packet that may be coalesced.
struct Candidate {
    version: IpVersion,
    l4: usize,
    headers: usize,
    seq: u32,
    psh: bool,
}

/// A TCP segment with payload, plain headers, only ACK (and PSH), and a
/// valid checksum; `None` otherwise.
fn candidate(pkt: &[u8]) -> Option<Candidate> {
    // An IPv6 packet can be 40 bytes longer than the largest super-packet.
    if pkt.len() > MAX_SUPER {
        return None;
    }
    let p = Packet::parse(pkt).ok()?;
    if p.protocol() != protocol::TCP || p.len() != pkt.len() || p.payload().is_empty() {
        return None;
    }
    let l4 = p.ip_header_len();
    let plain_ip = match p.version() {
        IpVersion::V4 => l4 == 20,
        IpVersion::V6 => l4 == 40,
    };
    let flags = pkt[l4 + 13];
    if !plain_ip || flags & !tcp_flags::PSH != tcp_flags::ACK || !p.l4_checksum_ok() {
        return None;
    }
    Some(Candidate {
        version: p.version(),
        l4,
        headers: p.payload_offset(),
        seq: u32::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5], pkt[l4 + 6], pkt[l4 + 7]]),
        psh: flags & tcp_flags::PSH != 0,
    })
}

/// The IP header fields that must agree (lengths, IDs and checksums may not).
fn same_ip(v: IpVersion, a: &[u8], b: &[u8]) -> bool {
    match v {
        // TOS; DF and reserved bits; TTL, protocol; addresses.
        IpVersion::V4 => {
            a[1] == b[1] && a[6] >> 5 == b[6] >> 5 && a[8..10] == b[8..10] && a[12..20] == b[12..20]
        }
        // Version, traffic class, flow label; next header, hop limit; addresses.
        IpVersion::V6 => a[..4] == b[..4] && a[6..40] == b[6..40],
    }
}

/// Ports, ack, data offset, window, urgent pointer and options agree; the
/// flags may differ in PSH only.
fn same_tcp(l4: usize, headers: usize, a: &[u8], b: &[u8]) -> bool {
    a[l4..l4 + 4] == b[l4..l4 + 4]
        && a[l4 + 8..l4 + 13] == b[l4 + 8..l4 + 13]
        && (a[l4 + 13] ^ b[l4 + 13]) & !tcp_flags::PSH == 0
        && a[l4 + 14..l4 + 16] == b[l4 + 14..l4 + 16]
        && a[l4 + 18..headers] == b[l4 + 18..headers]
}
