//! The few IPv4/IPv6/TCP/UDP header facts the native I/O layer needs: the
//! 5-tuple of a received packet, and a builder for test and bench packets.
//!
//! IPv6 packets are read without extension headers only (the next header
//! of the fixed header is the transport's): the node's own native packets
//! never carry any, and the ring's filter and the table leave the others
//! to the kernel.
//!
//! Every accessor checks lengths first; no input makes it panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};

/// The length of an IPv6 header (no extension headers).
pub const IPV6_HEADER_LEN: usize = 40;

/// The transport protocol of a native flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// ICMP echo request and reply (IP protocol 1, IPv4 only): the echo
    /// identifier stands for both ports, as in fpn-proto's `FlowId`.
    Icmp,
    /// ICMPv6 echo request (128) and reply (129) (IP protocol 58, IPv6
    /// only): the identifier stands for both ports, as for [`Icmp`](Self::Icmp).
    Icmpv6,
}

impl L4Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
            Self::Icmpv6 => 58,
        }
    }

    /// The protocol with this IP protocol number, if it is TCP, UDP, ICMP
    /// or ICMPv6 (of either family: see [`fits`](Self::fits)).
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            1 => Some(Self::Icmp),
            58 => Some(Self::Icmpv6),
            _ => None,
        }
    }

    /// The nftables name (`tcp`, `udp`, `icmp`, `icmpv6`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Icmpv6 => "icmpv6",
        }
    }

    /// Whether this is an echo protocol (ICMP or ICMPv6): the identifier
    /// stands for both ports, and the flow lives in an echo set.
    pub const fn is_echo(self) -> bool {
        matches!(self, Self::Icmp | Self::Icmpv6)
    }

    /// Whether a flow of this protocol can have addresses of this family
    /// (`ipv6`): TCP and UDP either, ICMP IPv4 only, ICMPv6 IPv6 only.
    pub const fn fits(self, ipv6: bool) -> bool {
        match self {
            Self::Tcp | Self::Udp => true,
            Self::Icmp => !ipv6,
            Self::Icmpv6 => ipv6,
        }
    }

    /// The length of the transport header [`build_packet`] writes.
    pub const fn header_len(self) -> usize {
        match self {
            Self::Tcp => 20,
            Self::Udp | Self::Icmp | Self::Icmpv6 => 8,
        }
    }
}

/// A flow's 5-tuple as the packet carries it on the wire (underlay
/// addresses). For an inbound native flow `src` is the peer, `dst` this
/// node. Both addresses are of one family (see [`is_valid`](Self::is_valid)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol.
    pub proto: L4Proto,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl FiveTuple {
    /// The 5-tuple of an IPv4 or IPv6 TCP or UDP packet, or of an ICMP
    /// (IPv4) or ICMPv6 (IPv6) echo request or reply (both "ports" its
    /// identifier); `None` for anything else (other versions, protocols or
    /// ICMP types, truncated headers, IPv4 non-first fragments, IPv6
    /// extension headers).
    pub fn parse(packet: &[u8]) -> Option<Self> {
        match packet.first()? >> 4 {
            4 => Self::parse_v4(packet),
            6 => Self::parse_v6(packet),
            _ => None,
        }
    }

    fn parse_v4(packet: &[u8]) -> Option<Self> {
        let ip = packet.get(..20)?;
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let frag_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
        if ihl < 20 || frag_offset != 0 {
            return None;
        }
        let proto = L4Proto::from_number(ip[9]).filter(|p| p.fits(false))?;
        let (src_port, dst_port) = ports(proto, packet.get(ihl..)?)?;
        Some(Self {
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]).into(),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]).into(),
            proto,
            src_port,
            dst_port,
        })
    }

    fn parse_v6(packet: &[u8]) -> Option<Self> {
        let ip = packet.get(..IPV6_HEADER_LEN)?;
        let proto = L4Proto::from_number(ip[6]).filter(|p| p.fits(true))?;
        let (src_port, dst_port) = ports(proto, packet.get(IPV6_HEADER_LEN..)?)?;
        let addr = |at: usize| -> Option<IpAddr> {
            let b: [u8; 16] = ip.get(at..at + 16)?.try_into().ok()?;
            Some(Ipv6Addr::from(b).into())
        };
        Some(Self {
            src: addr(8)?,
            dst: addr(24)?,
            proto,
            src_port,
            dst_port,
        })
    }

    /// Whether both addresses are of one family and the protocol fits it:
    /// only such a flow has a set to live in.
    pub fn is_valid(&self) -> bool {
        match (self.src, self.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => self.proto.fits(false),
            (IpAddr::V6(_), IpAddr::V6(_)) => self.proto.fits(true),
            _ => false,
        }
    }

    /// Whether the flow is IPv6 (by its destination).
    pub fn is_ipv6(&self) -> bool {
        self.dst.is_ipv6()
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

    /// The nftables set element, `a . b . udp . p . q` (set `native_flows`
    /// or `native_flows6`), for an echo `a . b . id` (set `native_echo` or
    /// `native_echo6`): what `nft list` prints, for tests that read the
    /// sets back.
    #[cfg(test)]
    pub(crate) fn nft_element(&self) -> String {
        if self.proto.is_echo() {
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

/// The (source, destination) ports of the transport header `l4` starts
/// with; an echo's identifier twice; `None` if cut short or not an echo.
fn ports(proto: L4Proto, l4: &[u8]) -> Option<(u16, u16)> {
    if proto.is_echo() {
        let icmp = l4.get(..8)?;
        // Echo reply and request, code 0: only those have an id.
        let echo = match proto {
            L4Proto::Icmp => [0, 8],
            _ => [129, 128],
        };
        if !echo.contains(&icmp[0]) || icmp[1] != 0 {
            return None;
        }
        let id = u16::from_be_bytes([icmp[4], icmp[5]]);
        return Some((id, id));
    }
    let l4 = l4.get(..4)?;
    Some((
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    ))
}

impl std::fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `[a:b::c]:port` for IPv6, `a.b.c.d:port` for IPv4.
        write!(
            f,
            "{} {} -> {}",
            self.proto.as_str(),
            SocketAddr::new(self.src, self.src_port),
            SocketAddr::new(self.dst, self.dst_port)
        )
    }
}

/// Writes an IPv4 or IPv6 packet (the family of `flow`'s addresses) of
/// `total_len` bytes for `flow` into `buf`: a 20-byte IPv4 header (checksum
/// left 0: the kernel fills it for IP_HDRINCL sockets) or a 40-byte IPv6
/// header (payload length filled in: nobody else does), then a UDP header, a
/// 20-byte TCP header (ACK|PSH, sequence number `seq`) or, for an echo flow,
/// an echo request (the flow's `src_port` as identifier, the low 16 bits of
/// `seq` as sequence number), a payload that starts with `seq` (big endian,
/// 8 bytes) followed by `fill` bytes, and a valid L4 checksum. Returns
/// `total_len`.
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
    if !flow.is_valid() {
        return Err(Error::NativePacket {
            reason: "the flow's addresses or protocol are of two families",
        });
    }
    let ip_len = if flow.is_ipv6() { IPV6_HEADER_LEN } else { 20 };
    let l4_len = flow.proto.header_len();
    let min = ip_len + l4_len + 8;
    // IPv4 counts its header in the 16-bit length, IPv6 does not.
    let max = usize::from(u16::MAX) + if flow.is_ipv6() { ip_len } else { 0 };
    if total_len < min || total_len > max || buf.len() < total_len {
        return Err(Error::NativePacket {
            reason: "packet length out of range or buffer too small",
        });
    }
    let pkt = &mut buf[..total_len];
    pkt.fill(fill);
    let (ip, l4) = pkt.split_at_mut(ip_len);
    let l4_len16 = u16::try_from(l4.len()).unwrap_or(u16::MAX);
    match (flow.src, flow.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let len16 = u16::try_from(total_len).unwrap_or(u16::MAX);
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&len16.to_be_bytes());
            ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
            ip[8] = 64;
            ip[9] = flow.proto.number();
            ip[10..12].fill(0);
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            // Version 6, traffic class and flow label 0.
            ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
            ip[4..6].copy_from_slice(&l4_len16.to_be_bytes());
            ip[6] = flow.proto.number();
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
        }
        _ => unreachable!("is_valid checked the families"),
    }
    match flow.proto {
        L4Proto::Udp => {
            l4[0..2].copy_from_slice(&flow.src_port.to_be_bytes());
            l4[2..4].copy_from_slice(&flow.dst_port.to_be_bytes());
            l4[4..6].copy_from_slice(&l4_len16.to_be_bytes());
            l4[6..8].fill(0);
        }
        L4Proto::Tcp => {
            l4[0..2].copy_from_slice(&flow.src_port.to_be_bytes());
            l4[2..4].copy_from_slice(&flow.dst_port.to_be_bytes());
            l4[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
            l4[8..12].copy_from_slice(&1u32.to_be_bytes());
            l4[12] = 5 << 4;
            l4[13] = 0x18; // ACK | PSH
            l4[14..16].copy_from_slice(&65535u16.to_be_bytes());
            l4[16..20].fill(0);
        }
        L4Proto::Icmp | L4Proto::Icmpv6 => {
            l4[0] = if flow.proto == L4Proto::Icmp { 8 } else { 128 };
            l4[1] = 0;
            l4[2..4].fill(0);
            l4[4..6].copy_from_slice(&flow.src_port.to_be_bytes());
            l4[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
        }
    }
    l4[l4_len..l4_len + 8].copy_from_slice(&seq.to_be_bytes());
    let csum = l4_checksum(flow, l4);
    let at = match flow.proto {
        L4Proto::Udp => 6,
        L4Proto::Tcp => 16,
        L4Proto::Icmp | L4Proto::Icmpv6 => 2,
    };
    // A UDP checksum of 0 means "none" (not allowed over IPv6); 0xffff is
    // the same sum.
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
    let at = ip_header_len(packet)? + flow.proto.header_len();
    let b = packet.get(at..at + 8)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Whether the L4 checksum of an IPv4 or IPv6 TCP/UDP packet (or echo) is
/// valid. The IP header's length field bounds the transport data.
pub fn l4_checksum_ok(packet: &[u8]) -> bool {
    let Some(flow) = FiveTuple::parse(packet) else {
        return false;
    };
    let Some(ihl) = ip_header_len(packet) else {
        return false;
    };
    let end = if flow.is_ipv6() {
        IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([packet[4], packet[5]]))
    } else {
        usize::from(u16::from_be_bytes([packet[2], packet[3]]))
    };
    let Some(l4) = packet.get(ihl..end) else {
        return false;
    };
    l4_checksum(flow, l4) == 0
}

/// The IP header's length of a packet [`FiveTuple::parse`] accepted.
fn ip_header_len(packet: &[u8]) -> Option<usize> {
    match packet.first()? >> 4 {
        4 => Some(usize::from(packet[0] & 0x0f) * 4),
        6 => Some(IPV6_HEADER_LEN),
        _ => None,
    }
}

/// The Internet checksum over the pseudo-header and `l4` (with its checksum
/// field as it is: 0 when computing, the stored value when verifying).
fn l4_checksum(flow: FiveTuple, l4: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    };
    // ICMP's checksum has no pseudo-header; ICMPv6's has (RFC 4443).
    if flow.proto != L4Proto::Icmp {
        for a in [flow.src, flow.dst] {
            match a {
                IpAddr::V4(a) => add(&a.octets()),
                IpAddr::V6(a) => add(&a.octets()),
            }
        }
        // The upper-layer length (16 bits for IPv4, 32 for IPv6: the same
        // one's-complement sum) and the protocol.
        add(&(l4.len() as u32).to_be_bytes());
        add(&[0, flow.proto.number()]);
    }
    add(l4);
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
            src: Ipv4Addr::new(198, 18, 0, 1).into(),
            dst: Ipv4Addr::new(198, 18, 0, 2).into(),
            proto,
            src_port: 40000,
            dst_port: 443,
        }
    }

    fn flow6(proto: L4Proto) -> FiveTuple {
        FiveTuple {
            src: "fd00:18::1".parse().unwrap(),
            dst: "fd00:18::2".parse().unwrap(),
            ..flow(proto)
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
        p[20] = 128; // ICMPv6's echo request type in ICMP: not an echo
        assert_eq!(FiveTuple::parse(&p), None);
        p[20] = 8;
        p[21] = 1; // echo with a code: not an echo
        assert_eq!(FiveTuple::parse(&p), None);
        assert_eq!(FiveTuple::parse(&p[..27]), None, "cut short");
        p[9] = 58; // ICMPv6 over IPv4: not a flow
        p[21] = 0;
        assert_eq!(FiveTuple::parse(&p), None);
    }

    #[test]
    fn icmpv6_echoes_parse_with_their_id_as_both_ports_and_other_icmpv6_does_not() {
        let mut buf = [0u8; 200];
        let echo = FiveTuple {
            src_port: 0x1234,
            dst_port: 0x1234,
            ..flow6(L4Proto::Icmpv6)
        };
        let n = build_packet(&mut buf, echo, 100, 9, 0).unwrap();
        let p = &mut buf[..n];
        assert_eq!(p[40], 128, "an echo request");
        assert_eq!(FiveTuple::parse(p), Some(echo));
        assert!(l4_checksum_ok(p));
        assert_eq!(packet_seq(p), Some(9));
        assert_eq!(echo.nft_element(), "fd00:18::1 . fd00:18::2 . 4660");
        p[40] = 129; // reply
        assert_eq!(FiveTuple::parse(p), Some(echo));
        assert!(!l4_checksum_ok(p), "ICMPv6's sum covers the type");
        for (ty, code) in [(1, 0), (135, 0), (8, 0), (128, 1)] {
            p[40] = ty; // unreachable, neighbour solicitation, ICMP's echo
            p[41] = code;
            assert_eq!(FiveTuple::parse(p), None, "type {ty} code {code}");
        }
        p[40] = 128;
        p[41] = 0;
        p[6] = 1; // ICMP over IPv6: not a flow
        assert_eq!(FiveTuple::parse(p), None);
        // IPv4 ICMP echo packets build too, and the families do not mix.
        let v4 = FiveTuple {
            proto: L4Proto::Icmp,
            ..echo
        };
        assert!(build_packet(&mut buf, v4, 100, 0, 0).is_err());
        let v4 = FiveTuple {
            src_port: 7,
            dst_port: 7,
            ..flow(L4Proto::Icmp)
        };
        let n = build_packet(&mut buf, v4, 60, 3, 0).unwrap();
        assert_eq!(FiveTuple::parse(&buf[..n]), Some(v4));
        assert!(l4_checksum_ok(&buf[..n]));
    }

    #[test]
    fn built_packets_parse_back_with_valid_checksums() {
        for f in [
            flow(L4Proto::Udp),
            flow(L4Proto::Tcp),
            flow6(L4Proto::Udp),
            flow6(L4Proto::Tcp),
        ] {
            let mut buf = [0u8; 1500];
            let n = build_packet(&mut buf, f, 1400, 77, 0xab).unwrap();
            assert_eq!(n, 1400);
            assert_eq!(FiveTuple::parse(&buf[..n]), Some(f));
            assert_eq!(packet_seq(&buf[..n]), Some(77));
            assert!(l4_checksum_ok(&buf[..n]), "{f}");
            buf[100] ^= 1;
            assert!(!l4_checksum_ok(&buf[..n]), "{f}");
        }
    }

    /// An IPv6 UDP packet worked out by hand (RFC 8200 header, the UDP
    /// checksum over RFC 8200's pseudo-header): the builder writes the same
    /// bytes. (tests/native_io.rs has a kernel's UDP socket take them.)
    #[test]
    fn ipv6_udp_matches_a_kernel_packet() {
        let f = FiveTuple {
            src: "fd00:18::1".parse().unwrap(),
            dst: "fd00:18::2".parse().unwrap(),
            proto: L4Proto::Udp,
            src_port: 40000,
            dst_port: 5555,
        };
        let mut buf = [0u8; 56];
        build_packet(&mut buf, f, 56, 0x0102_0304_0506_0708, 0).unwrap();
        // Payload length 16: the UDP header and the 8-byte sequence number.
        let mut want = vec![0x60, 0, 0, 0, 0, 16, 17, 64];
        want.extend_from_slice(&[0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend_from_slice(&[0x9c, 0x40, 0x15, 0xb3, 0, 16]);
        // Checksum by hand: pseudo-header fd00+0018+0001 + fd00+0018+0002
        // + 16 + 17, UDP 9c40+15b3+0010, payload 0102+0304+0506+0708.
        let sum: u32 = [
            0xfd00u32, 0x18, 1, 0xfd00, 0x18, 2, 16, 17, 0x9c40, 0x15b3, 16, 0x0102, 0x0304,
            0x0506, 0x0708,
        ]
        .iter()
        .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        want.extend_from_slice(&(!(folded as u16)).to_be_bytes());
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&buf[..], &want[..]);
        assert_eq!(f.to_string(), "udp [fd00:18::1]:40000 -> [fd00:18::2]:5555");
        assert_eq!(f.reversed().reversed(), f);
        assert_eq!(f.reversed().src, f.dst);
    }

    #[test]
    fn ipv6_with_extension_headers_or_cut_short_is_no_flow() {
        let mut buf = [0u8; 200];
        let n = build_packet(&mut buf, flow6(L4Proto::Tcp), 100, 1, 0).unwrap();
        for len in 0..n {
            let _ = FiveTuple::parse(&buf[..len]);
            let _ = packet_seq(&buf[..len]);
            let _ = l4_checksum_ok(&buf[..len]);
        }
        assert_eq!(FiveTuple::parse(&buf[..43]), None);
        assert!(FiveTuple::parse(&buf[..44]).is_some());
        for nh in [0u8, 43, 44, 60, 59] {
            buf[6] = nh; // hop-by-hop, routing, fragment, dest. options, none
            assert_eq!(FiveTuple::parse(&buf[..n]), None, "next header {nh}");
        }
        buf[6] = 6;
        buf[4..6].copy_from_slice(&200u16.to_be_bytes());
        assert!(!l4_checksum_ok(&buf[..n]), "payload length past the end");
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
        assert!(build_packet(&mut buf, flow6(L4Proto::Udp), 55, 0, 0).is_err());
        assert!(build_packet(&mut buf, flow6(L4Proto::Udp), 56, 0, 0).is_ok());
        let mixed = FiveTuple {
            dst: Ipv4Addr::new(198, 18, 0, 2).into(),
            ..flow6(L4Proto::Udp)
        };
        assert!(!mixed.is_valid());
        assert!(build_packet(&mut buf, mixed, 80, 0, 0).is_err());
    }
}
