//! In-place views over IP packets: IPv4/IPv6 carrying TCP, UDP, ICMP/ICMPv6.
//!
//! [`Packet::parse`] checks every length once (IP header, IPv4 options, the
//! IPv6 extension-header chain, the transport header) and records where the
//! parts are. After that no accessor can panic, whatever the bytes were. A
//! malformed buffer is a typed [`Error`]: short, bad IHL, lengths that
//! disagree, truncated options, over-long extension-header chains, fragments
//! ([`Error::Fragment`]: a non-first fragment has no transport header, and a
//! first fragment's checksum covers bytes we do not have).
//!
//! The buffer may be longer than the packet: bytes after the IP length are
//! room that [`Packet::set_payload_len`] can grow into (PCCOM appends its
//! trailer there). Rewrites ([`Packet::set_src`], [`Packet::set_src_port`],
//! [`Packet::clamp_mss`], ...) update the IPv4 header checksum and the
//! transport checksum incrementally (RFC 1624); [`Packet::fill_l4_checksum`]
//! recomputes the transport checksum from scratch.
//!
//! Flow ids: TCP and UDP use their ports; ICMP echo request/reply use the echo
//! identifier as both ports (as NATs do); other ICMP messages get ports 0/0, so
//! they form one flow per address pair.

pub mod checksum;
pub mod family;
pub mod gro;
pub mod gso;
mod ip;
mod l4;
mod tcp;
pub mod vnet;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ip::{IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, IpVersion, MAX_IPV6_EXTENSION_HEADERS};
pub use l4::{ICMP_HEADER_LEN, IcmpHeader, UDP_HEADER_LEN, UdpHeader, icmp_type};
pub use tcp::{TCP_MIN_HEADER_LEN, TcpHeader, flags as tcp_flags};

use crate::flow::{FlowId, protocol};
use crate::{Error, Result};
use checksum::Sum;
use ip::Layout;

/// The lowest MSS that [`Packet::clamp_mss`] and PCCOM will write.
pub const MIN_MSS: u16 = 64;

/// The transport header of a checked packet.
#[derive(Debug, Clone, Copy)]
pub enum Transport<'a> {
    /// TCP.
    Tcp(TcpHeader<'a>),
    /// UDP.
    Udp(UdpHeader<'a>),
    /// ICMP (over IPv4) or ICMPv6 (over IPv6).
    Icmp(IcmpHeader<'a>),
}

/// A checked IP packet in a buffer of type `T` (`&[u8]`, `&mut [u8]`, `Vec<u8>`, ...).
pub struct Packet<T> {
    buf: T,
    layout: Layout,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the packet at the start of `buf`. The packet ends where its IP
    /// header says; any bytes after that are spare room.
    #[inline(always)]
    pub fn parse(buf: T) -> Result<Self> {
        let len = buf.as_ref().len();
        Self::parse_prefix(buf, len)
    }

    /// Like [`Packet::parse`], but only the first `len` bytes of `buf` hold
    /// data (for instance the bytes a read returned); the rest is room.
    #[inline(always)]
    pub fn parse_prefix(buf: T, len: usize) -> Result<Self> {
        let bytes = buf.as_ref();
        let data = bytes.get(..len).ok_or(Error::BufferTooSmall {
            needed: len,
            capacity: bytes.len(),
        })?;
        let layout = check(data)?;
        Ok(Self { buf, layout })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buf
    }

    /// The whole buffer, room included.
    pub fn buffer(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The packet bytes (IP header to IP length).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes()[..self.layout.end]
    }

    fn bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// IP version.
    pub fn version(&self) -> IpVersion {
        self.layout.version
    }

    /// Transport protocol number ([`protocol`]).
    pub fn protocol(&self) -> u8 {
        self.layout.protocol
    }

    /// Length of the packet (the IP length fields), without spare room.
    pub fn len(&self) -> usize {
        self.layout.end
    }

    /// Never true: a checked packet has at least an IP header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes of the buffer after the packet, available to grow into.
    pub fn room(&self) -> usize {
        self.bytes().len() - self.layout.end
    }

    /// Length of the IP header including IPv4 options or IPv6 extension headers.
    pub fn ip_header_len(&self) -> usize {
        self.layout.l4
    }

    /// Offset of the transport payload from the start of the packet.
    pub fn payload_offset(&self) -> usize {
        self.layout.payload
    }

    /// Source address.
    pub fn src(&self) -> IpAddr {
        let b = self.bytes();
        match self.layout.version {
            IpVersion::V4 => IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])),
            IpVersion::V6 => IpAddr::V6(Ipv6Addr::from(array16(&b[8..24]))),
        }
    }

    /// Destination address.
    pub fn dst(&self) -> IpAddr {
        let b = self.bytes();
        match self.layout.version {
            IpVersion::V4 => IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19])),
            IpVersion::V6 => IpAddr::V6(Ipv6Addr::from(array16(&b[24..40]))),
        }
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn hop_limit(&self) -> u8 {
        match self.layout.version {
            IpVersion::V4 => self.bytes()[8],
            IpVersion::V6 => self.bytes()[7],
        }
    }

    /// DSCP and ECN bits (IPv4 TOS byte, IPv6 traffic class).
    pub fn traffic_class(&self) -> u8 {
        let b = self.bytes();
        match self.layout.version {
            IpVersion::V4 => b[1],
            IpVersion::V6 => (b[0] << 4) | (b[1] >> 4),
        }
    }

    /// True when the IPv4 header checksum is right (always true for IPv6,
    /// which has none).
    pub fn ip_checksum_ok(&self) -> bool {
        match self.layout.version {
            IpVersion::V4 => Sum::new().add_bytes(&self.bytes()[..self.layout.l4]).fold() == 0xffff,
            IpVersion::V6 => true,
        }
    }

    /// The transport header (with TCP options).
    pub fn l4_header(&self) -> &[u8] {
        &self.bytes()[self.layout.l4..self.layout.payload]
    }

    /// The transport payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes()[self.layout.payload..self.layout.end]
    }

    /// A typed view of the transport header.
    pub fn transport(&self) -> Transport<'_> {
        let h = self.l4_header();
        match self.layout.protocol {
            protocol::TCP => Transport::Tcp(TcpHeader(h)),
            protocol::UDP => Transport::Udp(UdpHeader(h)),
            _ => Transport::Icmp(IcmpHeader {
                bytes: h,
                v6: self.layout.version == IpVersion::V6,
            }),
        }
    }

    /// The flow this packet belongs to, in the direction it travels.
    pub fn flow_id(&self) -> FlowId {
        let (src_port, dst_port) = match self.transport() {
            Transport::Tcp(t) => (t.src_port(), t.dst_port()),
            Transport::Udp(u) => (u.src_port(), u.dst_port()),
            Transport::Icmp(i) => {
                let id = i.echo_id().unwrap_or(0);
                (id, id)
            }
        };
        FlowId {
            src: self.src(),
            dst: self.dst(),
            protocol: self.layout.protocol,
            src_port,
            dst_port,
        }
    }

    /// The transport checksum field as it is in the packet.
    pub fn l4_checksum(&self) -> u16 {
        let at = self.layout.l4 + checksum_offset(self.layout.protocol);
        u16::from_be_bytes([self.bytes()[at], self.bytes()[at + 1]])
    }

    /// Computes the transport checksum from scratch (the value
    /// [`Packet::fill_l4_checksum`] writes).
    #[inline]
    pub fn compute_l4_checksum(&self) -> u16 {
        let l4 = &self.bytes()[self.layout.l4..self.layout.end];
        let at = checksum_offset(self.layout.protocol);
        // Sum around the checksum field rather than subtracting it afterwards:
        // an all-zero ICMPv4 message sums to exactly zero, and only the exact
        // sum tells that its checksum must be 0xffff (0x0000 would not verify).
        let sum = self
            .pseudo_header_sum()
            .add_bytes(&l4[..at])
            .add_bytes(&l4[at + 2..]);
        let c = sum.finish();
        // UDP sends a computed zero as all ones: zero means "no checksum".
        if c == 0 && self.layout.protocol == protocol::UDP {
            0xffff
        } else {
            c
        }
    }

    /// True when the transport checksum verifies. A zero UDP checksum over
    /// IPv4 means "not computed" and is accepted.
    pub fn l4_checksum_ok(&self) -> bool {
        let stored = self.l4_checksum();
        if stored == 0 && self.layout.protocol == protocol::UDP {
            return self.layout.version == IpVersion::V4;
        }
        let l4 = &self.bytes()[self.layout.l4..self.layout.end];
        self.pseudo_header_sum().add_bytes(l4).fold() == 0xffff
    }

    /// The pseudo-header part of the transport checksum (none for ICMPv4).
    fn pseudo_header_sum(&self) -> Sum {
        let b = self.bytes();
        let l4_len = (self.layout.end - self.layout.l4) as u32;
        match (self.layout.version, self.layout.protocol) {
            (IpVersion::V4, protocol::ICMP) => Sum::new(),
            (IpVersion::V4, p) => Sum::new()
                .add_bytes(&b[12..20])
                .add_u16(u16::from(p))
                .add_u32(l4_len),
            (IpVersion::V6, p) => Sum::new()
                .add_bytes(&b[8..40])
                .add_u32(l4_len)
                .add_u16(u16::from(p)),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    /// The transport payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.layout.payload, self.layout.end);
        &mut self.bytes_mut()[start..end]
    }

    /// Rewrites the source address, updating the checksums. The address
    /// family must match the packet's.
    pub fn set_src(&mut self, addr: IpAddr) -> Result<()> {
        let at = match self.layout.version {
            IpVersion::V4 => 12,
            IpVersion::V6 => 8,
        };
        self.set_addr(at, addr)
    }

    /// Rewrites the destination address, updating the checksums.
    pub fn set_dst(&mut self, addr: IpAddr) -> Result<()> {
        let at = match self.layout.version {
            IpVersion::V4 => 16,
            IpVersion::V6 => 24,
        };
        self.set_addr(at, addr)
    }

    fn set_addr(&mut self, at: usize, addr: IpAddr) -> Result<()> {
        let v4;
        let v6;
        let new: &[u8] = match (self.layout.version, addr) {
            (IpVersion::V4, IpAddr::V4(a)) => {
                v4 = a.octets();
                &v4
            }
            (IpVersion::V6, IpAddr::V6(a)) => {
                v6 = a.octets();
                &v6
            }
            _ => {
                return Err(Error::invalid(
                    "address",
                    "family differs from the packet's",
                ));
            }
        };
        let mut old = [0u8; 16];
        let old = &mut old[..new.len()];
        old.copy_from_slice(&self.bytes()[at..at + new.len()]);
        if self.layout.version == IpVersion::V4 {
            let c = checksum::update_bytes(self.read_u16(10), old, new);
            self.write_u16(10, c);
        }
        // ICMPv4 has no pseudo-header; every other transport checksum covers
        // the addresses.
        if !(self.layout.version == IpVersion::V4 && self.layout.protocol == protocol::ICMP) {
            self.update_l4_checksum(|c| checksum::update_bytes(c, old, new));
        }
        self.bytes_mut()[at..at + new.len()].copy_from_slice(new);
        Ok(())
    }

    /// Rewrites the source port (ICMP echo: the identifier), updating the checksum.
    pub fn set_src_port(&mut self, port: u16) -> Result<()> {
        self.set_port(0, port)
    }

    /// Rewrites the destination port (ICMP echo: the identifier), updating the checksum.
    pub fn set_dst_port(&mut self, port: u16) -> Result<()> {
        self.set_port(2, port)
    }

    fn set_port(&mut self, tcp_udp_at: usize, port: u16) -> Result<()> {
        let at = match self.transport() {
            Transport::Tcp(_) | Transport::Udp(_) => self.layout.l4 + tcp_udp_at,
            Transport::Icmp(i) if i.is_echo() => self.layout.l4 + 4,
            Transport::Icmp(_) => {
                return Err(Error::invalid(
                    "port",
                    "ICMP message without an echo identifier",
                ));
            }
        };
        let old = self.read_u16(at);
        self.update_l4_checksum(|c| checksum::update_u16(c, old, port));
        self.write_u16(at, port);
        Ok(())
    }

    /// Recomputes and writes the transport checksum.
    #[inline]
    pub fn fill_l4_checksum(&mut self) {
        let c = self.compute_l4_checksum();
        let at = self.layout.l4 + checksum_offset(self.layout.protocol);
        self.write_u16(at, c);
    }

    /// Lowers the MSS option of a SYN or SYN-ACK to at most `max` (never below
    /// [`MIN_MSS`]), updating the checksum. Returns the previous value when it
    /// changed. Non-TCP packets, segments without SYN and SYNs without an MSS
    /// option are left alone (`Ok(None)`); malformed options are an error and
    /// leave the packet unchanged.
    pub fn clamp_mss(&mut self, max: u16) -> Result<Option<u16>> {
        self.rewrite_mss(|mss| mss.min(max))
    }

    /// Lowers the MSS option of a SYN/SYN-ACK by `by` bytes (never below
    /// [`MIN_MSS`]), as [`Packet::clamp_mss`] does. PCCOM uses it so the peer's
    /// segments plus the trailer still fit the path MTU.
    pub fn reduce_mss(&mut self, by: u16) -> Result<Option<u16>> {
        self.rewrite_mss(|mss| mss.saturating_sub(by))
    }

    fn rewrite_mss(&mut self, f: impl FnOnce(u16) -> u16) -> Result<Option<u16>> {
        let Transport::Tcp(t) = self.transport() else {
            return Ok(None);
        };
        if !t.is_syn() {
            return Ok(None);
        }
        let Some(rel) = tcp::find_mss(t.options())? else {
            return Ok(None);
        };
        let at = self.layout.l4 + TCP_MIN_HEADER_LEN + rel;
        let old = self.read_u16(at);
        let new = f(old).max(MIN_MSS).min(old);
        if new == old {
            return Ok(None);
        }
        // The MSS value may sit at an odd offset within the header (after a
        // single NOP); the incremental update must then see it byte-swapped.
        let (o, n) = if (at - self.layout.l4).is_multiple_of(2) {
            (old, new)
        } else {
            (old.swap_bytes(), new.swap_bytes())
        };
        self.update_l4_checksum(|c| checksum::update_u16(c, o, n));
        self.write_u16(at, new);
        Ok(Some(old))
    }

    /// Sets the transport payload length to `len`, within the buffer's room,
    /// and fixes the length fields: IPv4 total length and header checksum,
    /// IPv6 payload length, UDP length. The transport checksum is not updated:
    /// call [`Packet::fill_l4_checksum`] once the payload is final.
    #[inline]
    pub fn set_payload_len(&mut self, len: usize) -> Result<()> {
        let end = self.layout.payload + len;
        let capacity = self.bytes().len();
        if end > capacity {
            return Err(Error::BufferTooSmall {
                needed: end,
                capacity,
            });
        }
        let ip_len = match self.layout.version {
            IpVersion::V4 => end,
            IpVersion::V6 => end - IPV6_HEADER_LEN,
        };
        let ip_len = u16::try_from(ip_len).map_err(|_| Error::TooLarge {
            what: "IP packet",
            len: ip_len,
            max: usize::from(u16::MAX),
        })?;
        match self.layout.version {
            IpVersion::V4 => {
                let old = self.read_u16(2);
                let c = checksum::update_u16(self.read_u16(10), old, ip_len);
                self.write_u16(10, c);
                self.write_u16(2, ip_len);
            }
            IpVersion::V6 => self.write_u16(4, ip_len),
        }
        if self.layout.protocol == protocol::UDP {
            // Fits: the UDP datagram is shorter than the IP length just checked.
            let udp_len = (end - self.layout.l4) as u16;
            self.write_u16(self.layout.l4 + 4, udp_len);
        }
        self.layout.end = end;
        Ok(())
    }

    /// Applies `f` to the transport checksum field. A UDP checksum of zero
    /// over IPv4 ("not computed") stays zero. A result of zero is written as
    /// all ones for UDP (zero means "none") and for ICMPv4: without a
    /// pseudo-header an ICMPv4 message can sum to exactly zero, and then only
    /// 0xffff verifies (0xffff is valid whenever 0 is, RFC 1624 §3).
    fn update_l4_checksum(&mut self, f: impl FnOnce(u16) -> u16) {
        let at = self.layout.l4 + checksum_offset(self.layout.protocol);
        let old = self.read_u16(at);
        let v4 = self.layout.version == IpVersion::V4;
        let udp = self.layout.protocol == protocol::UDP;
        if udp && old == 0 && v4 {
            return;
        }
        let new = f(old);
        let icmp4 = v4 && self.layout.protocol == protocol::ICMP;
        self.write_u16(
            at,
            if (udp || icmp4) && new == 0 {
                0xffff
            } else {
                new
            },
        );
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    fn read_u16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bytes()[at], self.bytes()[at + 1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn write_u16(&mut self, at: usize, v: u16) {
        self.bytes_mut()[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

impl<T: AsRef<[u8]>> fmt::Debug for Packet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lengths and the flow only: payload bytes never reach a log.
        f.debug_struct("Packet")
            .field("flow", &self.flow_id())
            .field("len", &self.len())
            .field("payload_len", &self.payload().len())
            .finish()
    }
}

/// Checks IP and transport headers of `data` (exactly the valid bytes).
#[inline(always)]
fn check(data: &[u8]) -> Result<Layout> {
    let (version, protocol, l4, end) = ip::parse_ip(data)?;
    let seg = &data[l4..end];
    let hdr = match protocol {
        protocol::TCP => tcp::check(seg)?,
        protocol::UDP => l4::check_udp(seg)?,
        _ => l4::check_icmp(seg)?,
    };
    Ok(Layout {
        version,
        protocol,
        l4,
        payload: l4 + hdr,
        end,
    })
}

/// Offset of the checksum field within the transport header.
fn checksum_offset(proto: u8) -> usize {
    match proto {
        protocol::TCP => 16,
        protocol::UDP => 6,
        _ => 2,
    }
}

fn array16(b: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(b);
    out
}
