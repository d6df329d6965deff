//! TCP header view and option walk (RFC 9293 §3.1).

use super::ip::need;
use crate::{Error, Result};

/// Length of a TCP header without options.
pub const TCP_MIN_HEADER_LEN: usize = 20;

/// TCP flag bits (the low byte of the flags field).
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

/// Checks a TCP header at the start of `seg` (header + payload) and returns its length.
#[inline]
pub(crate) fn check(seg: &[u8]) -> Result<usize> {
    need(seg, TCP_MIN_HEADER_LEN, "TCP header")?;
    let len = usize::from(seg[12] >> 4) * 4;
    if len < TCP_MIN_HEADER_LEN {
        return Err(Error::MalformedPacket("TCP data offset below 5"));
    }
    need(seg, len, "TCP options")?;
    Ok(len)
}

/// A checked TCP header (options included). Accessors never panic.
#[derive(Clone, Copy)]
pub struct TcpHeader<'a>(pub(crate) &'a [u8]);

impl<'a> TcpHeader<'a> {
    /// Source port.
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.0[2], self.0[3]])
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes([self.0[4], self.0[5], self.0[6], self.0[7]])
    }

    /// Acknowledgment number.
    pub fn ack(&self) -> u32 {
        u32::from_be_bytes([self.0[8], self.0[9], self.0[10], self.0[11]])
    }

    /// Header length in bytes (data offset * 4).
    pub fn header_len(&self) -> usize {
        self.0.len()
    }

    /// The flag byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.0[13]
    }

    /// True for SYN and SYN-ACK segments.
    pub fn is_syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    /// Receive window (unscaled).
    pub fn window(&self) -> u16 {
        u16::from_be_bytes([self.0[14], self.0[15]])
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.0[16], self.0[17]])
    }

    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        u16::from_be_bytes([self.0[18], self.0[19]])
    }

    /// The option bytes.
    pub fn options(&self) -> &'a [u8] {
        &self.0[TCP_MIN_HEADER_LEN..]
    }

    /// The MSS option's value, if present. Malformed options are an error.
    pub fn mss(&self) -> Result<Option<u16>> {
        let opts = self.options();
        Ok(find_mss(opts)?.map(|at| u16::from_be_bytes([opts[at], opts[at + 1]])))
    }
}

impl std::fmt::Debug for TcpHeader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpHeader")
            .field("src_port", &self.src_port())
            .field("dst_port", &self.dst_port())
            .field("flags", &format_args!("{:#04x}", self.flags()))
            .field("header_len", &self.header_len())
            .finish()
    }
}

/// Walks the options and returns the offset (within `opts`) of the MSS
/// option's 2-byte value. A truncated option, a length below 2 or an MSS
/// option whose length is not 4 is [`Error::MalformedPacket`]: we refuse to
/// guess where a garbled option list ends.
pub(crate) fn find_mss(opts: &[u8]) -> Result<Option<usize>> {
    let mut at = 0;
    let mut found = None;
    // Each step advances by at least one byte, so this ends within 40 steps.
    while at < opts.len() {
        match opts[at] {
            OPT_END => break,
            OPT_NOP => at += 1,
            kind => {
                let len = usize::from(
                    *opts
                        .get(at + 1)
                        .ok_or(Error::MalformedPacket("TCP option truncated"))?,
                );
                if len < 2 || at + len > opts.len() {
                    return Err(Error::MalformedPacket("TCP option length"));
                }
                if kind == OPT_MSS {
                    if len != 4 {
                        return Err(Error::MalformedPacket("TCP MSS option length"));
                    }
                    if found.is_some() {
                        return Err(Error::MalformedPacket("TCP MSS option repeated"));
                    }
                    found = Some(at + 2);
                }
                at += len;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_walk_finds_mss_and_refuses_garbage() {
        assert_eq!(find_mss(&[]).unwrap(), None);
        assert_eq!(find_mss(&[1, 1, 2, 4, 5, 0xb4]).unwrap(), Some(4));
        // After End of Option List the rest is padding and not read.
        assert_eq!(find_mss(&[0, 2, 9]).unwrap(), None);
        // Window scale, SACK permitted, then MSS.
        assert_eq!(find_mss(&[3, 3, 7, 4, 2, 2, 4, 5, 0xb4]).unwrap(), Some(7));
        for bad in [
            &[2u8][..],                // kind without length
            &[2, 4, 5],                // MSS cut short
            &[2, 3, 5],                // MSS with length 3
            &[8, 1],                   // length below 2
            &[8, 0, 0, 0],             // length 0 (would loop forever if trusted)
            &[3, 9, 1, 1],             // length past the end
            &[2, 4, 1, 1, 2, 4, 1, 1], // MSS twice
        ] {
            assert!(
                matches!(find_mss(bad), Err(Error::MalformedPacket(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn header_check_rejects_bad_offsets() {
        let mut h = [0u8; 24];
        h[12] = 4 << 4;
        assert!(matches!(check(&h), Err(Error::MalformedPacket(_))));
        h[12] = 6 << 4;
        assert_eq!(check(&h).unwrap(), 24);
        h[12] = 7 << 4;
        assert!(matches!(check(&h), Err(Error::Truncated { .. })));
        assert!(matches!(check(&h[..19]), Err(Error::Truncated { .. })));
    }
}
