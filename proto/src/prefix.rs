//! Address prefixes (`addr/len`, IPv4 or IPv6): what a gateway protects.
//!
//! One type serves two uses. A DPRP [`Config`](crate::dprp::Config) lists the
//! prefixes an endpoint answers for ([`Prefix::new`], lenient: host bits are
//! ignored by [`Prefix::contains`]). A credential names the prefixes the CA
//! lets a gateway speak for; those must be canonical ([`Prefix::network`]:
//! host bits zero, not `/0`) so each signed statement has one encoding.
//!
//! Binary form inside a credential: `family u8 (4 | 6) | len u8 | address [4 | 16]`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::PrefixError;
use crate::wire::{Reader, Writer};
use crate::{Error, Result};

/// The longest encoded prefix (an IPv6 one).
pub const MAX_ENCODED_LEN: usize = 1 + 1 + 16;

/// An address prefix (`addr/len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix; `len` must not exceed the address width. Host bits may be
    /// set (they are ignored by [`Prefix::contains`]); see [`Prefix::network`]
    /// for the strict form credentials carry.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        if len > width(addr) {
            return Err(Error::invalid("prefix length", "longer than the address"));
        }
        Ok(Self { addr, len })
    }

    /// A canonical network prefix, as a credential may name it: `len` within
    /// the address width, not 0 (a gateway that speaks for every address
    /// would undo the binding), and no bit set below the length.
    pub fn network(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        if len > width(addr) {
            return Err(PrefixError::TooLong { len });
        }
        if len == 0 {
            return Err(PrefixError::Everything);
        }
        let p = Self { addr, len };
        if bits(addr) & !p.mask() != 0 {
            return Err(PrefixError::HostBits);
        }
        Ok(p)
    }

    /// The prefix holding exactly one address.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            len: width(addr),
        }
    }

    /// True when the prefix holds exactly one address.
    pub fn is_host(&self) -> bool {
        self.len == width(self.addr)
    }

    /// The address part.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True when `ip` lies in the prefix (same family, same leading bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let mask = self.mask();
        bits(self.addr) & mask == bits(ip) & mask
    }

    /// True when the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// Appends the binary form.
    pub fn encode(&self, w: &mut Writer<'_>) {
        match self.addr {
            IpAddr::V4(a) => {
                w.u8(4);
                w.u8(self.len);
                w.bytes(&a.octets());
            }
            IpAddr::V6(a) => {
                w.u8(6);
                w.u8(self.len);
                w.bytes(&a.octets());
            }
        }
    }

    /// Reads the binary form and checks it is canonical ([`Prefix::network`]).
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let family = r.u8("prefix family")?;
        let len = r.u8("prefix length")?;
        let addr = match family {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>("prefix address")?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>("prefix address")?)),
            other => return Err(PrefixError::Family(other).into()),
        };
        Ok(Self::network(addr, len)?)
    }

    /// Left-aligned mask over the 128-bit form of [`bits`].
    fn mask(&self) -> u128 {
        // IPv4 lives in the top 32 bits, so one shift serves both families.
        match self.len {
            0 => 0,
            n => u128::MAX << (128 - u32::from(n)),
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses `ADDRESS/LENGTH` strictly ([`Prefix::network`]): what an
    /// administrator gives the GMS for a gateway.
    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let (a, l) = s.split_once('/').ok_or(PrefixError::Syntax)?;
        let addr: IpAddr = a.parse().map_err(|_| PrefixError::Syntax)?;
        // Digits only: "+24" or " 24" are not a length an operator meant.
        if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PrefixError::Syntax);
        }
        let len: u8 = l.parse().map_err(|_| PrefixError::Syntax)?;
        Self::network(addr, len)
    }
}

/// Checks a list a credential is to carry: at most `max`, each canonical,
/// strictly ascending (sorted, no duplicates), so the signed bytes are unambiguous.
pub fn validate_list(prefixes: &[Prefix], max: usize) -> Result<(), PrefixError> {
    if prefixes.len() > max {
        return Err(PrefixError::TooMany {
            len: prefixes.len(),
            max,
        });
    }
    for p in prefixes {
        Prefix::network(p.addr, p.len)?;
    }
    if prefixes.windows(2).any(|w| w[0] >= w[1]) {
        return Err(PrefixError::NotAscending);
    }
    Ok(())
}

fn width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// The address left-aligned in 128 bits.
fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
        IpAddr::V6(v) => u128::from(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_match_by_family_and_mask() {
        let p = Prefix::new("192.168.1.0".parse().unwrap(), 24).unwrap();
        assert!(p.contains("192.168.1.77".parse().unwrap()));
        assert!(!p.contains("192.168.2.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let h = Prefix::host("fd00::5".parse().unwrap());
        assert!(h.contains("fd00::5".parse().unwrap()));
        assert!(!h.contains("fd00::6".parse().unwrap()));
        assert!(Prefix::new("10.0.0.0".parse().unwrap(), 33).is_err());
        let all = Prefix::new("0.0.0.0".parse().unwrap(), 0).unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn strict_parse_refuses_each_malformed_case() {
        assert_eq!(p("192.168.1.0/24").to_string(), "192.168.1.0/24");
        assert_eq!(p("fd00:1::/48").to_string(), "fd00:1::/48");
        assert_eq!(p("10.0.0.7/32"), Prefix::host("10.0.0.7".parse().unwrap()));
        let bad = |s: &str| s.parse::<Prefix>().unwrap_err();
        assert_eq!(bad("192.168.1.0"), PrefixError::Syntax);
        assert_eq!(bad("192.168.1.0/"), PrefixError::Syntax);
        assert_eq!(bad("192.168.1.0/+24"), PrefixError::Syntax);
        assert_eq!(bad("nas/24"), PrefixError::Syntax);
        assert_eq!(bad("192.168.1.0/33"), PrefixError::TooLong { len: 33 });
        assert_eq!(bad("fd00::/129"), PrefixError::TooLong { len: 129 });
        assert_eq!(bad("0.0.0.0/0"), PrefixError::Everything);
        assert_eq!(bad("::/0"), PrefixError::Everything);
        assert_eq!(bad("192.168.1.1/24"), PrefixError::HostBits);
        assert_eq!(bad("fd00::1/64"), PrefixError::HostBits);
    }

    #[test]
    fn binary_round_trip_and_refusals() {
        for s in ["192.168.1.0/24", "fd00:1::/48", "10.0.0.7/32"] {
            let mut v = Vec::new();
            p(s).encode(&mut Writer::new(&mut v));
            assert!(v.len() <= MAX_ENCODED_LEN);
            let mut r = Reader::new(&v);
            assert_eq!(Prefix::decode(&mut r).unwrap(), p(s));
            r.finish("prefix").unwrap();
            for len in 0..v.len() {
                assert!(Prefix::decode(&mut Reader::new(&v[..len])).is_err());
            }
        }
        let dec = |b: &[u8]| Prefix::decode(&mut Reader::new(b)).unwrap_err();
        assert_eq!(dec(&[5, 8, 10, 0, 0, 0]), PrefixError::Family(5).into());
        assert_eq!(dec(&[4, 0, 0, 0, 0, 0]), PrefixError::Everything.into());
        assert_eq!(dec(&[4, 8, 10, 0, 0, 1]), PrefixError::HostBits.into());
        assert_eq!(
            dec(&[4, 40, 10, 0, 0, 0]),
            PrefixError::TooLong { len: 40 }.into()
        );
    }

    #[test]
    fn lists_are_bounded_and_ascending() {
        let a = p("10.0.0.0/8");
        let b = p("192.168.1.0/24");
        assert!(validate_list(&[a, b], 16).is_ok());
        assert_eq!(validate_list(&[b, a], 16), Err(PrefixError::NotAscending));
        assert_eq!(validate_list(&[a, a], 16), Err(PrefixError::NotAscending));
        assert_eq!(
            validate_list(&[a, b], 1),
            Err(PrefixError::TooMany { len: 2, max: 1 })
        );
        let lax = Prefix::new("10.0.0.1".parse().unwrap(), 8).unwrap();
        assert_eq!(validate_list(&[lax], 16), Err(PrefixError::HostBits));
        assert!(a.overlaps(&p("10.1.0.0/16")) && !a.overlaps(&b));
    }
}
