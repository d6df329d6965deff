//! IPv4 and IPv6 header checks: the one place that decides where the
//! transport header starts and where the packet ends.
//!
//! Everything here returns a typed [`Error`] for a malformed buffer; the
//! offsets it returns are then valid for every accessor in [`super`].

use crate::flow::protocol;
use crate::{Error, Result};

/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// The most IPv6 extension headers walked before a packet is refused. RFC 8200
/// §4.1 recommends at most one of each kind (plus a second Destination
/// Options), which is six; eight leaves room and bounds the work per packet.
pub const MAX_IPV6_EXTENSION_HEADERS: usize = 8;

// IPv6 extension header numbers (RFC 8200 §4).
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DESTINATION_OPTIONS: u8 = 60;

/// The IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Where the parts of a checked packet are. Offsets are from the start of the
/// buffer; `l4 <= payload <= end <= buffer length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub version: IpVersion,
    /// Transport protocol number (TCP, UDP, ICMP or ICMPv6).
    pub protocol: u8,
    /// Start of the transport header (after IPv4 options / IPv6 extension headers).
    pub l4: usize,
    /// Start of the transport payload.
    pub payload: usize,
    /// End of the IP packet (IPv4 total length, 40 + IPv6 payload length).
    pub end: usize,
}

/// Checks the IP header of `buf[..len]` and returns (version, protocol,
/// transport offset, packet end). Fragments and unknown protocols are refused.
#[inline]
pub(crate) fn parse_ip(buf: &[u8]) -> Result<(IpVersion, u8, usize, usize)> {
    let first = *buf.first().ok_or(Error::Truncated {
        what: "IP header",
        needed: 1,
        available: 0,
    })?;
    match first >> 4 {
        4 => parse_v4(buf),
        6 => parse_v6(buf),
        v => Err(Error::IpVersion(v)),
    }
}

#[inline]
fn parse_v4(buf: &[u8]) -> Result<(IpVersion, u8, usize, usize)> {
    need(buf, IPV4_MIN_HEADER_LEN, "IPv4 header")?;
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HEADER_LEN {
        return Err(Error::MalformedPacket("IPv4 header length below 20"));
    }
    need(buf, ihl, "IPv4 options")?;
    let total = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if total < ihl {
        return Err(Error::MalformedPacket(
            "IPv4 total length shorter than the header",
        ));
    }
    need(buf, total, "IPv4 packet")?;
    let frag = u16::from_be_bytes([buf[6], buf[7]]);
    let (more, offset) = (frag & 0x2000 != 0, frag & 0x1fff);
    if offset != 0 || more {
        return Err(Error::Fragment { first: offset == 0 });
    }
    let proto = buf[9];
    match proto {
        protocol::TCP | protocol::UDP | protocol::ICMP => Ok((IpVersion::V4, proto, ihl, total)),
        p => Err(Error::UnsupportedProtocol(p)),
    }
}

#[inline]
fn parse_v6(buf: &[u8]) -> Result<(IpVersion, u8, usize, usize)> {
    need(buf, IPV6_HEADER_LEN, "IPv6 header")?;
    let end = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    need(buf, end, "IPv6 packet")?;
    let mut next = buf[6];
    let mut off = IPV6_HEADER_LEN;
    // The walk is bounded by a count, and every step advances `off` by at least
    // eight bytes, so a crafted chain can neither loop nor run long.
    for index in 0..=MAX_IPV6_EXTENSION_HEADERS {
        match next {
            protocol::TCP | protocol::UDP | protocol::ICMPV6 => {
                return Ok((IpVersion::V6, next, off, end));
            }
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => {
                if next == HOP_BY_HOP && index != 0 {
                    return Err(Error::MalformedPacket(
                        "IPv6 hop-by-hop options not directly after the header",
                    ));
                }
                need(&buf[..end], off + 2, "IPv6 extension header")?;
                let len = (usize::from(buf[off + 1]) + 1) * 8;
                need(&buf[..end], off + len, "IPv6 extension header")?;
                next = buf[off];
                off += len;
            }
            FRAGMENT => {
                need(&buf[..end], off + 8, "IPv6 fragment header")?;
                let frag = u16::from_be_bytes([buf[off + 2], buf[off + 3]]);
                let (offset, more) = (frag >> 3, frag & 1 != 0);
                // An atomic fragment (offset 0, no more fragments) is a whole
                // datagram (RFC 6946): walk past it.
                if offset != 0 || more {
                    return Err(Error::Fragment { first: offset == 0 });
                }
                next = buf[off];
                off += 8;
            }
            p => return Err(Error::UnsupportedProtocol(p)),
        }
    }
    Err(Error::TooLarge {
        what: "IPv6 extension header chain",
        len: MAX_IPV6_EXTENSION_HEADERS + 1,
        max: MAX_IPV6_EXTENSION_HEADERS,
    })
}

/// Fails with [`Error::Truncated`] unless `buf` holds at least `n` bytes.
pub(crate) fn need(buf: &[u8], n: usize, what: &'static str) -> Result<()> {
    if buf.len() < n {
        return Err(Error::Truncated {
            what,
            needed: n,
            available: buf.len(),
        });
    }
    Ok(())
}
