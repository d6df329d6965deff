//! The few IPv4/TCP/UDP header facts the native I/O layer needs: the
//! 5-tuple of a received packet, and a builder for test and bench packets.
//!
//! Every accessor checks lengths first; no input makes it panic.

use std::net::Ipv4Addr;

use crate::error::{Error, Result};

/// The transport protocol of a native flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// ICMP echo request and reply (IP protocol 1): the echo identifier
    /// stands for both ports, as in fpn-proto's `FlowId`.
    Icmp,
}

impl L4Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
        }
    }

    /// The protocol with this IP protocol number, if it is TCP, UDP or
    /// ICMP.
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            1 => Some(Self::Icmp),
            _ => None,
        }
    }

    /// The nftables name (`tcp`, `udp`, `icmp`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        }
    }

    /// The length of the transport header [`build_packet`] writes.
    pub const fn header_len(self) -> usize {
        match self {
            Self::Tcp => 20,
            Self::Udp | Self::Icmp => 8,
        }
    }
}

/// A flow's 5-tuple as the packet carries it on the wire (underlay
/// addresses). For an inbound native flow `src` is the peer, `dst` this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Transport protocol.
    pub proto: L4Proto,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl FiveTuple {
    /// The 5-tuple of an IPv4 TCP or UDP packet, or of an ICMP echo request
    /// or reply (both "ports" its identifier); `None` for anything else
    /// (other versions, protocols or ICMP types, truncated headers,
    /// non-first fragments).
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let ip = packet.get(..20)?;
        if ip[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let frag_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
        if ihl < 20 || frag_offset != 0 {
            return None;
        }
        let proto = L4Proto::from_number(ip[9])?;
        let (src_port, dst_port) = if proto == L4Proto::Icmp {
            let icmp = packet.get(ihl..ihl + 8)?;
            // Echo reply (0) or request (8), code 0: only those have an id.
            if !matches!(icmp[0], 0 | 8) || icmp[1] != 0 {
                return None;
            }
            let id = u16::from_be_bytes([icmp[4], icmp[5]]);
            (id, id)
        } else {
            let l4 = packet.get(ihl..ihl + 4)?;
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        };
        Some(Self {
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            proto,
            src_port,
            dst_port,
        })
    }

    /// The same flow seen from the other end.
    #[must_use]
    pub const fn reversed(self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    /// The nftables set element, `a . b . udp . p . q` (set `native_flows`),
    /// for ICMP echo `a . b . id` (set `native_echo`): what `nft list`
    /// prints, for tests that read the sets back.
    #[cfg(test)]
    pub(crate) fn nft_element(&self) -> String {
        if self.proto == L4Proto::Icmp {
            return format!("{} . {} . {}", self.src, self.dst, self.src_port);
        }
        format!(
            "{} . {} . {} . {} . {}",
            self.src,
            self.dst,
            self.proto.as_str(),
            self.src_port,
            self.dst_port
        )
    }
}

impl std::fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}:{} -> {}:{}",
            self.proto.as_str(),
            self.src,
            self.src_port,
            self.dst,
            self.dst_port
        )
    }
}

/// Writes an IPv4 packet of `total_len` bytes for `flow` into `buf`: a
/// 20-byte IP header (checksum left 0: the kernel fills it for IP_HDRINCL
/// sockets), a UDP header or a 20-byte TCP header (ACK|PSH, sequence number
/// `seq`), a payload that starts with `seq` (big endian, 8 bytes) followed by
/// `fill` bytes, and a valid L4 checksum. Returns `total_len`.
///
/// This is what the core's PCCOM packets look like on the wire; tests and the
/// bench use it to make traffic.
pub fn build_packet(
    buf: &mut [u8],
    flow: FiveTuple,
    total_len: usize,
    seq: u64,
    fill: u8,
) -> Result<usize> {
    if flow.proto == L4Proto::Icmp {
        return Err(Error::NativePacket {
            reason: "test packets are TCP or UDP",
        });
    }
    let l4_len = flow.proto.header_len();
    let min = 20 + l4_len + 8;
    if total_len < min || total_len > usize::from(u16::MAX) || buf.len() < total_len {
        return Err(Error::NativePacket {
            reason: "packet length out of range or buffer too small",
        });
    }
    let pkt = &mut buf[..total_len];
    pkt.fill(fill);
    let len16 = u16::try_from(total_len).unwrap_or(u16::MAX);
    // IPv4 header.
    pkt[0] = 0x45;
    pkt[1] = 0;
    pkt[2..4].copy_from_slice(&len16.to_be_bytes());
    pkt[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    pkt[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    pkt[8] = 64;
    pkt[9] = flow.proto.number();
    pkt[10..12].fill(0);
    pkt[12..16].copy_from_slice(&flow.src.octets());
    pkt[16..20].copy_from_slice(&flow.dst.octets());
    // Transport header.
    let l4 = &mut pkt[20..];
    l4[0..2].copy_from_slice(&flow.src_port.to_be_bytes());
    l4[2..4].copy_from_slice(&flow.dst_port.to_be_bytes());
    match flow.proto {
        L4Proto::Udp | L4Proto::Icmp => {
            let ulen = len16 - 20;
            l4[4..6].copy_from_slice(&ulen.to_be_bytes());
            l4[6..8].fill(0);
        }
        L4Proto::Tcp => {
            l4[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
            l4[8..12].copy_from_slice(&1u32.to_be_bytes());
            l4[12] = 5 << 4;
            l4[13] = 0x18; // ACK | PSH
            l4[14..16].copy_from_slice(&65535u16.to_be_bytes());
            l4[16..20].fill(0);
        }
    }
    l4[l4_len..l4_len + 8].copy_from_slice(&seq.to_be_bytes());
    let csum = l4_checksum(flow, l4);
    let at = match flow.proto {
        L4Proto::Udp | L4Proto::Icmp => 6,
        L4Proto::Tcp => 16,
    };
    // A UDP checksum of 0 means "none"; 0xffff is the same sum.
    let csum = if flow.proto == L4Proto::Udp && csum == 0 {
        0xffff
    } else {
        csum
    };
    l4[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(total_len)
}

/// The payload of a packet [`build_packet`] made starts with its sequence
/// number; this reads it back (`None` if the packet is not one of those).
pub fn packet_seq(packet: &[u8]) -> Option<u64> {
    let flow = FiveTuple::parse(packet)?;
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let at = ihl + flow.proto.header_len();
    let b = packet.get(at..at + 8)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Whether the L4 checksum of an IPv4 TCP/UDP packet is valid.
pub fn l4_checksum_ok(packet: &[u8]) -> bool {
    let Some(flow) = FiveTuple::parse(packet) else {
        return false;
    };
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let Some(l4) = packet.get(ihl..total) else {
        return false;
    };
    l4_checksum(flow, l4) == 0
}

/// The Internet checksum over the pseudo-header and `l4` (with its checksum
/// field as it is: 0 when computing, the stored value when verifying).
fn l4_checksum(flow: FiveTuple, l4: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    // ICMP's checksum has no pseudo-header.
    if flow.proto != L4Proto::Icmp {
        for a in [flow.src.octets(), flow.dst.octets()] {
            sum += u64::from(u16::from_be_bytes([a[0], a[1]]));
            sum += u64::from(u16::from_be_bytes([a[2], a[3]]));
        }
        sum += u64::from(flow.proto.number());
        sum += l4.len() as u64;
    }
    let mut chunks = l4.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(proto: L4Proto) -> FiveTuple {
        FiveTuple {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
            proto,
            src_port: 40000,
            dst_port: 443,
        }
    }

    #[test]
    fn icmp_echoes_parse_with_their_id_as_both_ports_and_other_icmp_does_not() {
        let mut p = [0u8; 36];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&36u16.to_be_bytes());
        p[9] = 1;
        p[12..16].copy_from_slice(&[198, 18, 0, 1]);
        p[16..20].copy_from_slice(&[198, 18, 0, 2]);
        p[24..26].copy_from_slice(&0x1234u16.to_be_bytes());
        for ty in [8, 0] {
            p[20] = ty;
            let f = FiveTuple::parse(&p).unwrap();
            assert_eq!(
                (f.proto, f.src_port, f.dst_port),
                (L4Proto::Icmp, 0x1234, 0x1234)
            );
            assert_eq!(f.nft_element(), "198.18.0.1 . 198.18.0.2 . 4660");
        }
        p[20] = 3; // destination unreachable: no id, not a flow
        assert_eq!(FiveTuple::parse(&p), None);
        p[20] = 8;
        p[21] = 1; // echo with a code: not an echo
        assert_eq!(FiveTuple::parse(&p), None);
        assert_eq!(FiveTuple::parse(&p[..27]), None, "cut short");
        let mut buf = [0u8; 100];
        assert!(build_packet(&mut buf, flow(L4Proto::Icmp), 60, 0, 0).is_err());
    }

    #[test]
    fn built_packets_parse_back_with_valid_checksums() {
        for proto in [L4Proto::Udp, L4Proto::Tcp] {
            let mut buf = [0u8; 1500];
            let n = build_packet(&mut buf, flow(proto), 1400, 77, 0xab).unwrap();
            assert_eq!(n, 1400);
            assert_eq!(FiveTuple::parse(&buf[..n]), Some(flow(proto)));
            assert_eq!(packet_seq(&buf[..n]), Some(77));
            assert!(l4_checksum_ok(&buf[..n]));
            buf[100] ^= 1;
            assert!(!l4_checksum_ok(&buf[..n]));
        }
    }

    #[test]
    fn parse_never_panics_on_short_or_foreign_input() {
        let mut buf = [0u8; 1500];
        let n = build_packet(&mut buf, flow(L4Proto::Udp), 100, 1, 0).unwrap();
        for len in 0..n {
            let _ = FiveTuple::parse(&buf[..len]);
            let _ = packet_seq(&buf[..len]);
            let _ = l4_checksum_ok(&buf[..len]);
        }
        assert_eq!(FiveTuple::parse(&buf[..23]), None);
        buf[9] = 1; // ICMP
        assert_eq!(FiveTuple::parse(&buf[..n]), None);
        buf[9] = 17;
        buf[0] = 0x65;
        assert_eq!(FiveTuple::parse(&buf[..n]), None);
    }

    #[test]
    fn too_small_buffers_are_refused() {
        let mut buf = [0u8; 100];
        assert!(build_packet(&mut buf, flow(L4Proto::Tcp), 200, 0, 0).is_err());
        assert!(build_packet(&mut buf, flow(L4Proto::Tcp), 40, 0, 0).is_err());
    }
}
