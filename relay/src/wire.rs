//! The relay's framing: a GE id in front of a carrier frame.
//!
//! ```text
//! node -> relay:  dst GE id u32 (big endian) | carrier frame
//! relay -> node:  src GE id u32 (big endian) | carrier frame
//! ```
//!
//! The carrier frame is exactly what the QUIC carrier puts in a datagram
//! (kind byte, then a DPRP message or a PCCOM-protected packet); the relay
//! never looks past the GE id. One frame per QUIC DATAGRAM; a frame too
//! large for a datagram (only DPRP control messages are) goes alone on a
//! unidirectional stream with the same layout. The relay rewrites the
//! four bytes in place: the destination becomes the source, which the
//! relay took from the sender's certificate, never from the frame.

use fpn_proto::ge::GeId;

use crate::error::{Error, Result};

/// Bytes of the header.
pub const HEADER_LEN: usize = 4;

/// The largest relay frame accepted on a stream: a control frame of the
/// QUIC carrier at its maximum (a DPRP message plus the kind byte) and the
/// header.
pub const MAX_STREAM_FRAME: usize = fpn_proto::dprp::msg::MAX_MESSAGE_LEN + 1 + HEADER_LEN;

/// A received relay frame, checked for length once: no accessor panics.
#[derive(Clone, Copy)]
pub struct RelayFrame<'a> {
    buf: &'a [u8],
}

impl<'a> RelayFrame<'a> {
    /// Checks that `buf` holds at least the header.
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated {
                len: buf.len(),
                min: HEADER_LEN,
            });
        }
        Ok(Self { buf })
    }

    /// The GE id of the header (the destination from a node, the source
    /// from the relay).
    pub fn ge(&self) -> GeId {
        GeId(u32::from_be_bytes([
            self.buf[0],
            self.buf[1],
            self.buf[2],
            self.buf[3],
        ]))
    }

    /// The carrier frame behind the header.
    pub fn frame(&self) -> &'a [u8] {
        &self.buf[HEADER_LEN..]
    }
}

impl std::fmt::Debug for RelayFrame<'_> {
    // Never the frame's bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayFrame")
            .field("ge", &self.ge())
            .field("len", &self.frame().len())
            .finish()
    }
}

/// Writes the header for `ge` into `out[..HEADER_LEN]` (the caller leaves
/// room in front of the frame, so nothing is copied).
pub fn write_header(out: &mut [u8], ge: GeId) -> Result<()> {
    let len = out.len();
    let h = out.get_mut(..HEADER_LEN).ok_or(Error::Truncated {
        len,
        min: HEADER_LEN,
    })?;
    h.copy_from_slice(&ge.0.to_be_bytes());
    Ok(())
}

/// A whole relay frame for `ge` and `frame`.
pub fn encode(ge: GeId, frame: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + frame.len());
    v.extend_from_slice(&ge.0.to_be_bytes());
    v.extend_from_slice(frame);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_short_ones_are_refused() {
        let f = encode(GeId(0x0102_0304), &[2, 9, 9]);
        assert_eq!(&f[..4], &[1, 2, 3, 4]);
        let r = RelayFrame::parse(&f).unwrap();
        assert_eq!(r.ge(), GeId(0x0102_0304));
        assert_eq!(r.frame(), &[2, 9, 9]);
        for n in 0..HEADER_LEN {
            assert!(matches!(
                RelayFrame::parse(&f[..n]),
                Err(Error::Truncated { len, .. }) if len == n
            ));
        }
        let empty = RelayFrame::parse(&f[..4]).unwrap();
        assert!(empty.frame().is_empty());
        let mut out = f.clone();
        write_header(&mut out, GeId(7)).unwrap();
        assert_eq!(RelayFrame::parse(&out).unwrap().ge(), GeId(7));
        assert!(write_header(&mut [0u8; 3], GeId(7)).is_err());
    }

    #[test]
    fn debug_shows_the_length_not_the_bytes() {
        let f = encode(GeId(3), &[0xab; 20]);
        let s = format!("{:?}", RelayFrame::parse(&f).unwrap());
        assert!(s.contains("len: 20") && !s.contains("171"), "{s}");
    }
}
