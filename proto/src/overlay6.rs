//! The overlay's IPv6 addresses: one ULA /48 per network (RFC 4193), and
//! in it one address per GE that embeds the GE's IPv4 overlay address.
//!
//! The network's prefix is `fd` followed by 40 bits of SHA-256 over the
//! GMS CA's public key (design note 59). The CA key is drawn at random when
//! `fpn-gms init` makes the CA and never changes, so the prefix is a
//! pseudo-random global ID as RFC 4193 wants, stable for the network's life,
//! and every node computes the same one from the key it already trusts: no
//! message, no state and no credential field carries it.
//!
//! A GE's address is `prefix:0000:0000:0000:<IPv4 overlay>` (subnet 0, the
//! IPv4 address as the last 32 bits). The mapping is one-to-one, so a GE
//! owns its IPv6 address exactly when it owns the IPv4 one: a credential
//! covers both ([`crate::credential::Credential::covers`]), and the node's
//! peer table stays keyed by the IPv4 address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::keys::PUBLIC_KEY_LEN;

/// Prefix length of a network's ULA.
pub const PREFIX_LEN: u8 = 48;

/// Domain separation for the prefix's hash.
const CONTEXT: &[u8] = b"fpn overlay6 v1";

/// A network's IPv6 overlay prefix (a ULA /48).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Overlay6 {
    prefix: [u8; 6],
}

impl Overlay6 {
    /// The prefix of the network whose CA has public key `ca_public`.
    pub fn of_ca(ca_public: &[u8; PUBLIC_KEY_LEN]) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(CONTEXT);
        ctx.update(ca_public);
        let d = ctx.finish();
        let mut prefix = [0u8; 6];
        prefix[0] = 0xfd;
        prefix[1..].copy_from_slice(&d.as_ref()[..5]);
        Self { prefix }
    }

    /// The network address (`fdxx:xxxx:xxxx::`).
    pub fn network(&self) -> Ipv6Addr {
        let mut o = [0u8; 16];
        o[..6].copy_from_slice(&self.prefix);
        Ipv6Addr::from(o)
    }

    /// The IPv6 overlay address of the GE whose IPv4 overlay address is `v4`.
    pub fn address(&self, v4: Ipv4Addr) -> Ipv6Addr {
        let mut o = [0u8; 16];
        o[..6].copy_from_slice(&self.prefix);
        o[12..].copy_from_slice(&v4.octets());
        Ipv6Addr::from(o)
    }

    /// The IPv4 overlay address embedded in `v6`, when `v6` is a GE address
    /// of this network (the prefix, subnet 0, bits 64-95 zero).
    pub fn v4_of(&self, v6: Ipv6Addr) -> Option<Ipv4Addr> {
        let o = v6.octets();
        if o[..6] != self.prefix || o[6..12].iter().any(|&b| b != 0) {
            return None;
        }
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    }

    /// `ip` itself when IPv4; the embedded IPv4 overlay address when it is a
    /// GE address of this network; `None` otherwise (another IPv6 address).
    pub fn as_v4(&self, ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => self.v4_of(a),
        }
    }

    /// True when `ip` lies in this network's /48.
    pub fn contains(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V6(a) if a.octets()[..6] == self.prefix)
    }
}

impl fmt::Display for Overlay6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{PREFIX_LEN}", self.network())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_a_ula_that_depends_on_the_ca_key() {
        let a = Overlay6::of_ca(&[1; 32]);
        let b = Overlay6::of_ca(&[2; 32]);
        assert_ne!(a, b);
        assert_eq!(a, Overlay6::of_ca(&[1; 32]));
        for p in [a, b] {
            assert_eq!(p.network().octets()[0], 0xfd);
            // RFC 4193: fc00::/7 with L = 1.
            assert!(p.to_string().starts_with("fd"), "{p}");
            assert!(p.to_string().ends_with("::/48"), "{p}");
        }
    }

    #[test]
    fn a_ge_address_maps_back_to_its_ipv4_overlay_address_and_nothing_else_does() {
        let p = Overlay6::of_ca(&[7; 32]);
        let v4 = Ipv4Addr::new(100, 64, 0, 2);
        let v6 = p.address(v4);
        assert_eq!(p.v4_of(v6), Some(v4));
        assert_eq!(p.as_v4(IpAddr::V6(v6)), Some(v4));
        assert_eq!(p.as_v4(IpAddr::V4(v4)), Some(v4));
        assert!(p.contains(IpAddr::V6(v6)));
        // Another subnet of the /48, another network, a non-overlay address.
        let mut o = v6.octets();
        o[7] = 1;
        assert_eq!(p.v4_of(Ipv6Addr::from(o)), None);
        assert!(p.contains(IpAddr::V6(Ipv6Addr::from(o))));
        let q = Overlay6::of_ca(&[8; 32]);
        assert_eq!(q.v4_of(v6), None);
        assert!(!q.contains(IpAddr::V6(v6)));
        assert_eq!(p.v4_of("2001:db8::1".parse().unwrap()), None);
        assert_eq!(p.as_v4("::1".parse().unwrap()), None);
    }
}
