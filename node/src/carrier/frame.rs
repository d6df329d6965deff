//! The carrier's own framing: one kind byte in front of the frame.
//!
//! ```text
//! datagram or uni stream:  kind u8 (0x01 control, 0x02 data) | frame
//! ```
//!
//! A datagram carries one frame; a control frame too large for a datagram
//! goes on its own unidirectional stream, with the same layout.

use super::FrameKind;

/// Bytes the framing adds in front of a frame.
pub(crate) const OVERHEAD: usize = 1;

/// The largest control frame accepted on a stream: a DPRP message at its
/// maximum length (fpn_proto::dprp::msg::MAX_MESSAGE_LEN) plus the kind byte.
pub(crate) const MAX_STREAM_FRAME: usize = fpn_proto::dprp::msg::MAX_MESSAGE_LEN + OVERHEAD;

const CONTROL: u8 = 0x01;
const DATA: u8 = 0x02;

/// The kind byte of `kind`.
pub(crate) const fn kind_byte(kind: FrameKind) -> u8 {
    match kind {
        FrameKind::Control => CONTROL,
        FrameKind::Data => DATA,
    }
}

/// The kind of a received frame (its payload starts at [`OVERHEAD`]);
/// `None` for an empty frame or an unknown kind.
pub(crate) fn parse(frame: &[u8]) -> Option<FrameKind> {
    match *frame.first()? {
        CONTROL => Some(FrameKind::Control),
        DATA => Some(FrameKind::Data),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_bytes_are_refused() {
        for k in [FrameKind::Control, FrameKind::Data] {
            assert_eq!(parse(&[kind_byte(k), 9, 9]), Some(k));
        }
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0]), None);
        assert_eq!(parse(&[3, 1]), None);
        assert_eq!(parse(&[0xff]), None);
    }
}
