//! The flow identifier (CID): the five-tuple a PIT entry is keyed by.
//!
//! For ICMP echo, the echo identifier stands in for both ports, so a ping
//! session is one flow like a UDP exchange.

use std::fmt;
use std::net::IpAddr;

use crate::wire::{Reader, Writer};
use crate::{Error, Result};

/// IP protocol numbers fpn handles.
pub mod protocol {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// The hasher of the tables looked up for every packet (flows, PIT,
/// translations): foldhash, seeded at random per process and table. std's
/// SipHash cost 4.7 % of a native transfer's samples (design note 31);
/// foldhash is several times faster on a five-tuple (`cargo bench -p
/// fpn-proto --bench flow_maps`) and still keyed, so flows an attacker
/// picks do not collide on purpose.
pub type FastHasher = foldhash::fast::RandomState;
/// A hash map with [`FastHasher`]; make one with `FastMap::default()`.
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHasher>;
/// A hash set with [`FastHasher`]; make one with `FastSet::default()`.
pub type FastSet<K> = std::collections::HashSet<K, FastHasher>;

/// A flow's five-tuple, in the direction the packet travels.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol number.
    pub protocol: u8,
    /// Source port (ICMP: echo identifier).
    pub src_port: u16,
    /// Destination port (ICMP: echo identifier).
    pub dst_port: u16,
}

impl FlowId {
    /// The same flow seen from the other end.
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            protocol: self.protocol,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    /// Appends the binary form:
    /// `protocol u8 | src (family + addr) | src_port u16 | dst (family + addr) | dst_port u16`.
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u8(self.protocol);
        w.ip_addr(self.src);
        w.u16(self.src_port);
        w.ip_addr(self.dst);
        w.u16(self.dst_port);
    }

    /// Reads the binary form written by [`FlowId::encode`].
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let protocol = r.u8("flow protocol")?;
        let src = r.ip_addr("flow source")?;
        let src_port = r.u16("flow source port")?;
        let dst = r.ip_addr("flow destination")?;
        let dst_port = r.u16("flow destination port")?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(Error::invalid(
                "flow",
                "source and destination families differ",
            ));
        }
        Ok(Self {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
        })
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            protocol::TCP => "tcp",
            protocol::UDP => "udp",
            protocol::ICMP => "icmp",
            protocol::ICMPV6 => "icmpv6",
            _ => "ip",
        };
        let (s, d) = (
            std::net::SocketAddr::new(self.src, self.src_port),
            std::net::SocketAddr::new(self.dst, self.dst_port),
        );
        write!(f, "{proto} {s} -> {d}")
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reverse() {
        let f = FlowId {
            src: "100.64.0.1".parse().unwrap(),
            dst: "100.64.0.2".parse().unwrap(),
            protocol: protocol::TCP,
            src_port: 40000,
            dst_port: 22,
        };
        let mut v = Vec::new();
        f.encode(&mut Writer::new(&mut v));
        let mut r = Reader::new(&v);
        assert_eq!(FlowId::decode(&mut r).unwrap(), f);
        assert_eq!(f.reversed().reversed(), f);
        assert_eq!(f.to_string(), "tcp 100.64.0.1:40000 -> 100.64.0.2:22");
    }

    #[test]
    fn mixed_families_are_refused() {
        let mut v = Vec::new();
        let mut w = Writer::new(&mut v);
        w.u8(protocol::UDP);
        w.ip_addr("10.0.0.1".parse().unwrap());
        w.u16(1);
        w.ip_addr("fd00::1".parse().unwrap());
        w.u16(2);
        assert!(FlowId::decode(&mut Reader::new(&v)).is_err());
    }
}
