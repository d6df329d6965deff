//! The 10-byte `virtio_net_hdr` that a TUN opened with `IFF_VNET_HDR` puts
//! in front of every packet it reads and expects in front of every packet
//! written to it (`include/uapi/linux/virtio_net.h`).
//!
//! The header tells whether the packet is a GSO super-packet (one TCP or UDP
//! "packet" of up to 64 KB that the kernel did not segment, because the TUN
//! said it could: `TUNSETOFFLOAD`) and whether its transport checksum is
//! still to be completed (`NEEDS_CSUM`). [`VnetHeader`] is the borrowed view
//! (one length check, then no accessor panics); [`VnetRepr`] the validated
//! form with `parse`/`emit`. Segmentation lives in [`super::gso`].
//!
//! Byte order: a legacy TUN (no `TUNSETVNETLE`/`TUNSETVNETBE`) uses the
//! host's byte order for the 16-bit fields, so this module does too.

use crate::{Error, Result};

/// Length of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// Bits of the header's `flags` byte.
pub mod vnet_flags {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` to the
    /// end is still to be computed and stored at `csum_start + csum_offset`
    /// (the field holds the pseudo-header sum). Linux's CHECKSUM_PARTIAL.
    pub const NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
    pub const DATA_VALID: u8 = 2;
    /// `VIRTIO_NET_HDR_F_RSC_INFO`: receive-segment-coalescing info (never from a TUN).
    pub const RSC_INFO: u8 = 4;
}

/// Raw values of the header's `gso_type` byte.
pub mod gso_type {
    /// `VIRTIO_NET_HDR_GSO_NONE`: an ordinary packet.
    pub const NONE: u8 = 0;
    /// `VIRTIO_NET_HDR_GSO_TCPV4`: TCP over IPv4 to be segmented (TSO).
    pub const TCPV4: u8 = 1;
    /// `VIRTIO_NET_HDR_GSO_UDP`: UDP fragmentation offload (UFO), obsolete.
    pub const UDP: u8 = 3;
    /// `VIRTIO_NET_HDR_GSO_TCPV6`: TCP over IPv6 to be segmented (TSO).
    pub const TCPV6: u8 = 4;
    /// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP datagrams to be split (USO, `UDP_SEGMENT`).
    pub const UDP_L4: u8 = 5;
    /// `VIRTIO_NET_HDR_GSO_ECN`: OR-ed into a TCP type when CWR is set.
    pub const ECN: u8 = 0x80;
}

/// What kind of GSO super-packet follows the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoKind {
    /// An ordinary packet: nothing to segment.
    None,
    /// TCP over IPv4, to be cut into segments of `gso_size` payload bytes.
    TcpV4,
    /// TCP over IPv6, to be cut into segments of `gso_size` payload bytes.
    TcpV6,
    /// UDP (either IP version), to be cut into datagrams of `gso_size` payload bytes.
    UdpL4,
}

/// A borrowed `virtio_net_hdr` at the start of a buffer, length checked once.
#[derive(Debug, Clone, Copy)]
pub struct VnetHeader<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> VnetHeader<T> {
    /// Wraps `buf`, which must hold at least [`VNET_HDR_LEN`] bytes; the
    /// header is its first ten, the packet follows.
    pub fn new_checked(buf: T) -> Result<Self> {
        let len = buf.as_ref().len();
        if len < VNET_HDR_LEN {
            return Err(Error::Truncated {
                what: "virtio_net_hdr",
                needed: VNET_HDR_LEN,
                available: len,
            });
        }
        Ok(Self { buf })
    }

    fn field16(&self, at: usize) -> u16 {
        let b = self.buf.as_ref();
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    /// The `flags` byte ([`vnet_flags`]).
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[0]
    }

    /// The `gso_type` byte ([`gso_type`]), ECN bit included.
    pub fn gso_type(&self) -> u8 {
        self.buf.as_ref()[1]
    }

    /// `hdr_len`: the length of the IP and transport headers (a hint: Linux
    /// sometimes reports the whole first segment, so [`super::gso`] does not
    /// rely on it).
    pub fn hdr_len(&self) -> u16 {
        self.field16(2)
    }

    /// `gso_size`: payload bytes per segment.
    pub fn gso_size(&self) -> u16 {
        self.field16(4)
    }

    /// `csum_start`: where the checksummed region starts (the transport header).
    pub fn csum_start(&self) -> u16 {
        self.field16(6)
    }

    /// `csum_offset`: where, from `csum_start`, the checksum goes.
    pub fn csum_offset(&self) -> u16 {
        self.field16(8)
    }

    /// The bytes after the header: the packet.
    pub fn packet(&self) -> &[u8] {
        &self.buf.as_ref()[VNET_HDR_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VnetHeader<T> {
    fn set_field16(&mut self, at: usize, v: u16) {
        self.buf.as_mut()[at..at + 2].copy_from_slice(&v.to_ne_bytes());
    }
}

/// A validated `virtio_net_hdr`.
///
/// Parsing checks the header on its own (known flags and GSO type, a
/// non-zero `gso_size` for GSO, `NEEDS_CSUM` with a checksum offset that a
/// TCP or UDP header can have); whether it fits the packet that follows is
/// checked where the packet is used ([`super::gso::Segments::new`],
/// [`complete_checksum`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VnetRepr {
    /// `NEEDS_CSUM`: the transport checksum is partial.
    pub needs_csum: bool,
    /// `DATA_VALID`: the checksum is known good.
    pub data_valid: bool,
    /// The GSO kind.
    pub gso: GsoKind,
    /// The ECN bit of `gso_type` (TCP only).
    pub ecn: bool,
    /// `hdr_len` as given (a hint, see [`VnetHeader::hdr_len`]).
    pub hdr_len: u16,
    /// Payload bytes per segment; 0 when `gso` is [`GsoKind::None`].
    pub gso_size: u16,
    /// Start of the checksummed region (meaningful with `needs_csum`).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start` (meaningful with `needs_csum`).
    pub csum_offset: u16,
}

impl VnetRepr {
    /// The header of an ordinary packet that needs nothing: what to write in
    /// front of a packet whose checksums are complete.
    pub const NONE: Self = Self {
        needs_csum: false,
        data_valid: false,
        gso: GsoKind::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Validates a header view.
    pub fn parse<T: AsRef<[u8]>>(h: &VnetHeader<T>) -> Result<Self> {
        let flags = h.flags();
        if flags & !(vnet_flags::NEEDS_CSUM | vnet_flags::DATA_VALID) != 0 {
            return Err(Error::invalid("virtio_net_hdr flags", "unknown flag bits"));
        }
        let raw = h.gso_type();
        let ecn = raw & gso_type::ECN != 0;
        let gso = match raw & !gso_type::ECN {
            gso_type::NONE => GsoKind::None,
            gso_type::TCPV4 => GsoKind::TcpV4,
            gso_type::TCPV6 => GsoKind::TcpV6,
            gso_type::UDP_L4 => GsoKind::UdpL4,
            gso_type::UDP => {
                return Err(Error::invalid(
                    "virtio_net_hdr gso_type",
                    "UFO (IP fragmentation of UDP) is not supported",
                ));
            }
            _ => return Err(Error::invalid("virtio_net_hdr gso_type", "unknown type")),
        };
        if ecn && !matches!(gso, GsoKind::TcpV4 | GsoKind::TcpV6) {
            return Err(Error::invalid(
                "virtio_net_hdr gso_type",
                "ECN bit without TCP",
            ));
        }
        let repr = Self {
            needs_csum: flags & vnet_flags::NEEDS_CSUM != 0,
            data_valid: flags & vnet_flags::DATA_VALID != 0,
            gso,
            ecn,
            hdr_len: h.hdr_len(),
            gso_size: h.gso_size(),
            csum_start: h.csum_start(),
            csum_offset: h.csum_offset(),
        };
        if gso != GsoKind::None {
            if repr.gso_size == 0 {
                return Err(Error::invalid("virtio_net_hdr gso_size", "zero with GSO"));
            }
            if !repr.needs_csum {
                // Linux always hands GSO packets over as CHECKSUM_PARTIAL.
                return Err(Error::invalid(
                    "virtio_net_hdr flags",
                    "GSO without NEEDS_CSUM",
                ));
            }
        }
        if repr.needs_csum && !matches!(repr.csum_offset, 6 | 16) {
            // 6: UDP, 16: TCP. Other offsets (ICMP, SCTP) never come with offloads we enable.
            return Err(Error::invalid(
                "virtio_net_hdr csum_offset",
                "not a TCP or UDP checksum field",
            ));
        }
        Ok(repr)
    }

    /// Parses the header at the start of `buf` (header and packet).
    pub fn parse_bytes(buf: &[u8]) -> Result<Self> {
        Self::parse(&VnetHeader::new_checked(buf)?)
    }

    /// The encoded length: [`VNET_HDR_LEN`].
    pub const fn buffer_len(&self) -> usize {
        VNET_HDR_LEN
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `h`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut VnetHeader<T>) {
        let mut flags = 0;
        if self.needs_csum {
            flags |= vnet_flags::NEEDS_CSUM;
        }
        if self.data_valid {
            flags |= vnet_flags::DATA_VALID;
        }
        let mut ty = match self.gso {
            GsoKind::None => gso_type::NONE,
            GsoKind::TcpV4 => gso_type::TCPV4,
            GsoKind::TcpV6 => gso_type::TCPV6,
            GsoKind::UdpL4 => gso_type::UDP_L4,
        };
        if self.ecn {
            ty |= gso_type::ECN;
        }
        let b = h.buf.as_mut();
        b[0] = flags;
        b[1] = ty;
        h.set_field16(2, self.hdr_len);
        h.set_field16(4, self.gso_size);
        h.set_field16(6, self.csum_start);
        h.set_field16(8, self.csum_offset);
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `buf`.
    pub fn emit_bytes(&self, buf: &mut [u8]) -> Result<()> {
        let capacity = buf.len();
        let mut h = VnetHeader::new_checked(buf).map_err(|_| Error::BufferTooSmall {
            needed: VNET_HDR_LEN,
            capacity,
        })?;
        self.emit(&mut h);
        Ok(())
    }
}

/// Completes a partial (`NEEDS_CSUM`) transport checksum of an ordinary
/// packet in place: sums from `csum_start` to the end of `packet`, adding the
/// pseudo-header sum the kernel left in the checksum field, and stores the
/// result. A header without `NEEDS_CSUM` leaves the packet as it is.
///
/// `packet` is exactly the packet (the bytes after the virtio header). GSO
/// packets are not completed here: [`super::gso::Segments`] computes each
/// segment's checksum from scratch.
pub fn complete_checksum(hdr: &VnetRepr, packet: &mut [u8]) -> Result<()> {
    if !hdr.needs_csum {
        return Ok(());
    }
    if hdr.gso != GsoKind::None {
        return Err(Error::invalid(
            "virtio_net_hdr gso_type",
            "a GSO packet is completed per segment",
        ));
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > packet.len() {
        return Err(Error::invalid(
            "virtio_net_hdr csum_start",
            "checksum field beyond the packet",
        ));
    }
    // The field holds the (uncomplemented) pseudo-header sum: summing the
    // region with it in place adds it in exactly once.
    let sum = super::checksum::Sum::new().add_bytes(&packet[start..]);
    let mut c = sum.finish();
    if c == 0 && hdr.csum_offset == 6 {
        c = 0xffff; // UDP: zero means "no checksum".
    }
    packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(flags: u8, ty: u8, hdr_len: u16, gso: u16, start: u16, off: u16) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0] = flags;
        b[1] = ty;
        b[2..4].copy_from_slice(&hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&gso.to_ne_bytes());
        b[6..8].copy_from_slice(&start.to_ne_bytes());
        b[8..10].copy_from_slice(&off.to_ne_bytes());
        b
    }

    #[test]
    fn vnet_roundtrip() {
        let b = raw(1, gso_type::TCPV4 | gso_type::ECN, 52, 1448, 20, 16);
        let r = VnetRepr::parse_bytes(&b).unwrap();
        assert_eq!(r.gso, GsoKind::TcpV4);
        assert!(r.ecn && r.needs_csum && !r.data_valid);
        assert_eq!(
            (r.hdr_len, r.gso_size, r.csum_start, r.csum_offset),
            (52, 1448, 20, 16)
        );
        let mut out = [0xaau8; 10];
        r.emit_bytes(&mut out).unwrap();
        assert_eq!(out, b);
        let mut none = [0xaau8; 10];
        VnetRepr::NONE.emit_bytes(&mut none).unwrap();
        assert_eq!(none, [0; 10]);
    }

    #[test]
    fn vnet_malformed_is_typed_error() {
        assert!(matches!(
            VnetRepr::parse_bytes(&[0; 9]),
            Err(Error::Truncated { needed: 10, .. })
        ));
        let bad = [
            raw(8, 0, 0, 0, 0, 0),                          // unknown flag
            raw(1, gso_type::TCPV4, 40, 0, 20, 16),         // gso_size 0
            raw(0, gso_type::TCPV4, 40, 1000, 20, 16),      // GSO without NEEDS_CSUM
            raw(1, gso_type::UDP, 28, 1000, 20, 6),         // UFO
            raw(1, 2, 28, 1000, 20, 6),                     // unknown type
            raw(1, gso_type::UDP_L4 | 0x80, 28, 10, 20, 6), // ECN on UDP
            raw(1, 0, 0, 0, 20, 2),                         // ICMP-like csum offset
        ];
        for b in bad {
            assert!(
                matches!(VnetRepr::parse_bytes(&b), Err(Error::InvalidField { .. })),
                "{b:?}"
            );
        }
    }

    #[test]
    fn vnet_complete_checksum_rejects_field_outside() {
        let r = VnetRepr {
            needs_csum: true,
            csum_start: 20,
            csum_offset: 16,
            ..VnetRepr::NONE
        };
        let mut p = [0u8; 30];
        assert!(complete_checksum(&r, &mut p).is_err());
    }
}
