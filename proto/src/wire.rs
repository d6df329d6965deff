//! Bounds-checked helpers for the binary codecs.
//!
//! [`Reader`] never panics: every read checks the remaining length once and
//! returns [`Error::Truncated`] naming the field it wanted. All integers are
//! big-endian (network order). [`Writer`] appends to a caller-owned `Vec`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Error, Result};

/// A cursor over untrusted bytes.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl std::fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("len", &self.buf.len())
            .field("pos", &self.pos)
            .finish()
    }
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The whole input, consumed or not (for transcript hashing).
    pub fn input(&self) -> &'a [u8] {
        self.buf
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(Error::Truncated {
                what,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Reads a byte string prefixed by a one-byte length, refusing more than `max`.
    pub fn short_bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8]> {
        let len = usize::from(self.u8(what)?);
        if len > max {
            return Err(Error::TooLarge { what, len, max });
        }
        self.bytes(len, what)
    }

    /// Reads a byte string prefixed by a two-byte length, refusing more than `max`.
    pub fn long_bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8]> {
        let len = usize::from(self.u16(what)?);
        if len > max {
            return Err(Error::TooLarge { what, len, max });
        }
        self.bytes(len, what)
    }

    /// Reads an IP address encoded as a family byte (4 or 6) and the address bytes.
    pub fn ip_addr(&mut self, what: &'static str) -> Result<IpAddr> {
        match self.u8(what)? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>(what)?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>(what)?))),
            _ => Err(Error::invalid(what, "address family must be 4 or 6")),
        }
    }

    /// Fails with [`Error::TrailingBytes`] unless everything was consumed.
    pub fn finish(&self, what: &'static str) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(Error::TrailingBytes { what, extra }),
        }
    }
}

/// Appends encoded fields to a caller-owned buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// Appends to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    /// Bytes written to the underlying buffer in total.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// True when the underlying buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }

    /// Appends a big-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }

    /// Appends a one-byte length and the bytes. Fails when `b` exceeds `max` (at most 255).
    pub fn short_bytes(&mut self, b: &[u8], max: usize, what: &'static str) -> Result<()> {
        let max = max.min(usize::from(u8::MAX));
        if b.len() > max {
            return Err(Error::TooLarge {
                what,
                len: b.len(),
                max,
            });
        }
        self.u8(b.len() as u8);
        self.bytes(b);
        Ok(())
    }

    /// Appends a two-byte length and the bytes. Fails when `b` exceeds `max` (at most 65535).
    pub fn long_bytes(&mut self, b: &[u8], max: usize, what: &'static str) -> Result<()> {
        let max = max.min(usize::from(u16::MAX));
        if b.len() > max {
            return Err(Error::TooLarge {
                what,
                len: b.len(),
                max,
            });
        }
        self.u16(b.len() as u16);
        self.bytes(b);
        Ok(())
    }

    /// Appends an IP address as a family byte (4 or 6) and the address bytes.
    pub fn ip_addr(&mut self, addr: IpAddr) {
        match addr {
            IpAddr::V4(a) => {
                self.u8(4);
                self.bytes(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.bytes(&a.octets());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_names_the_field() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16("a").unwrap(), 0x0102);
        assert_eq!(
            r.u16("b"),
            Err(Error::Truncated {
                what: "b",
                needed: 2,
                available: 1
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.remaining(), 1);
    }

    #[test]
    fn ip_addresses_round_trip() {
        for a in ["198.18.0.1", "fd00::1"] {
            let addr: IpAddr = a.parse().unwrap();
            let mut v = Vec::new();
            Writer::new(&mut v).ip_addr(addr);
            let mut r = Reader::new(&v);
            assert_eq!(r.ip_addr("addr").unwrap(), addr);
            r.finish("addr").unwrap();
        }
        assert!(Reader::new(&[5, 0, 0, 0, 0]).ip_addr("addr").is_err());
    }

    #[test]
    fn length_prefixed_limits_hold() {
        let mut v = Vec::new();
        assert!(Writer::new(&mut v).short_bytes(&[0; 10], 4, "x").is_err());
        let mut r = Reader::new(&[10, 0, 0]);
        assert!(matches!(
            r.short_bytes(4, "x"),
            Err(Error::TooLarge { len: 10, .. })
        ));
    }
}
