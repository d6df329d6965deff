//! UDP and ICMP/ICMPv6 header views.

use super::ip::need;
use crate::{Error, Result};

/// Length of the UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// Length of the ICMP/ICMPv6 header (type, code, checksum, four bytes of
/// rest-of-header: the echo identifier and sequence number for echo messages).
pub const ICMP_HEADER_LEN: usize = 8;

/// ICMP echo message types.
pub mod icmp_type {
    /// ICMPv4 Echo Reply.
    pub const ECHO_REPLY_V4: u8 = 0;
    /// ICMPv4 Echo Request.
    pub const ECHO_REQUEST_V4: u8 = 8;
    /// ICMPv6 Echo Request.
    pub const ECHO_REQUEST_V6: u8 = 128;
    /// ICMPv6 Echo Reply.
    pub const ECHO_REPLY_V6: u8 = 129;
}

/// Checks a UDP header at the start of `dgram`, which runs to the end of the
/// IP packet. The UDP length must equal that span: a shorter UDP length would
/// leave bytes PCCOM could neither encrypt nor drop safely.
#[inline]
pub(crate) fn check_udp(dgram: &[u8]) -> Result<usize> {
    need(dgram, UDP_HEADER_LEN, "UDP header")?;
    let len = usize::from(u16::from_be_bytes([dgram[4], dgram[5]]));
    if len != dgram.len() {
        return Err(Error::MalformedPacket(
            "UDP length differs from the IP payload length",
        ));
    }
    Ok(UDP_HEADER_LEN)
}

/// Checks an ICMP/ICMPv6 header at the start of `msg`.
#[inline]
pub(crate) fn check_icmp(msg: &[u8]) -> Result<usize> {
    need(msg, ICMP_HEADER_LEN, "ICMP header")?;
    Ok(ICMP_HEADER_LEN)
}

/// A checked UDP header. Accessors never panic.
#[derive(Clone, Copy)]
pub struct UdpHeader<'a>(pub(crate) &'a [u8]);

impl UdpHeader<'_> {
    /// Source port.
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.0[2], self.0[3]])
    }

    /// The length field (header + payload).
    pub fn length(&self) -> u16 {
        u16::from_be_bytes([self.0[4], self.0[5]])
    }

    /// Checksum field (0 over IPv4 means "not computed").
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.0[6], self.0[7]])
    }
}

impl std::fmt::Debug for UdpHeader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpHeader")
            .field("src_port", &self.src_port())
            .field("dst_port", &self.dst_port())
            .field("length", &self.length())
            .finish()
    }
}

/// A checked ICMP or ICMPv6 header. Accessors never panic.
#[derive(Clone, Copy)]
pub struct IcmpHeader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) v6: bool,
}

impl IcmpHeader<'_> {
    /// Message type.
    pub fn icmp_type(&self) -> u8 {
        self.bytes[0]
    }

    /// Message code.
    pub fn code(&self) -> u8 {
        self.bytes[1]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }

    /// True for echo request and echo reply (of the packet's ICMP version).
    pub fn is_echo(&self) -> bool {
        is_echo(self.icmp_type(), self.v6)
    }

    /// The echo identifier (the flow's "port"), for echo messages.
    pub fn echo_id(&self) -> Option<u16> {
        self.is_echo()
            .then(|| u16::from_be_bytes([self.bytes[4], self.bytes[5]]))
    }

    /// The echo sequence number, for echo messages.
    pub fn echo_seq(&self) -> Option<u16> {
        self.is_echo()
            .then(|| u16::from_be_bytes([self.bytes[6], self.bytes[7]]))
    }

    /// Bytes 4-7, the "rest of header": echo identifier and sequence, the
    /// next-hop MTU of a "packet too big", a parameter-problem pointer.
    pub fn rest_of_header(&self) -> [u8; 4] {
        [self.bytes[4], self.bytes[5], self.bytes[6], self.bytes[7]]
    }
}

impl std::fmt::Debug for IcmpHeader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcmpHeader")
            .field("v6", &self.v6)
            .field("type", &self.icmp_type())
            .field("code", &self.code())
            .finish()
    }
}

pub(crate) fn is_echo(icmp_type: u8, v6: bool) -> bool {
    use icmp_type::*;
    if v6 {
        matches!(icmp_type, ECHO_REQUEST_V6 | ECHO_REPLY_V6)
    } else {
        matches!(icmp_type, ECHO_REQUEST_V4 | ECHO_REPLY_V4)
    }
}
