//! GE identity and policy: ids, kinds, modes, groups and the GE info record.
//!
//! [`GeInfo`] is what the GMS holds per GE and what DPRP carries per hop. Its
//! binary form (see [`GeInfo::encode`]) is part of the credential and of the
//! DPRP messages, documented in docs/PROTOCOL.md.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::wire::{Reader, Writer};
use crate::{Error, Result};

/// The longest GE name: one DNS label.
pub const MAX_NAME_LEN: usize = 63;
/// The most groups one GE may be a member of.
pub const MAX_GROUPS: usize = 64;

/// A GE's numeric identity, assigned by the GMS and carried in its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GeId(pub u32);

impl fmt::Display for GeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ge{}", self.0)
    }
}

/// A group number. Lower numbers win when two GEs share several groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a GE protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GeKind {
    /// A GE on a host, protecting that host.
    Ges,
    /// A GE on a gateway, protecting the terminals of a subnet behind it.
    Gen,
    /// A gateway with one host behind it (an adapter in front of a server).
    Gea,
}

impl GeKind {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Ges => 1,
            Self::Gen => 2,
            Self::Gea => 3,
        }
    }

    /// Parses the wire code.
    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            1 => Ok(Self::Ges),
            2 => Ok(Self::Gen),
            3 => Ok(Self::Gea),
            _ => Err(Error::invalid(
                "GE kind",
                "must be 1 (GES), 2 (GEN) or 3 (GEA)",
            )),
        }
    }

    /// True for the kinds that stand in front of plain hosts.
    pub const fn is_gateway(self) -> bool {
        matches!(self, Self::Gen | Self::Gea)
    }
}

impl fmt::Display for GeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ges => "ges",
            Self::Gen => "gen",
            Self::Gea => "gea",
        })
    }
}

impl FromStr for GeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ges" => Ok(Self::Ges),
            "gen" => Ok(Self::Gen),
            "gea" => Ok(Self::Gea),
            _ => Err(Error::invalid("GE kind", "must be ges, gen or gea")),
        }
    }
}

/// Whether a GE talks in plain to GEs outside its groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// OP: plain traffic with non-members is allowed.
    Open,
    /// CL: only traffic protected with a shared group key passes.
    Closed,
}

impl Mode {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Open => 1,
            Self::Closed => 2,
        }
    }

    /// Parses the wire code.
    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            1 => Ok(Self::Open),
            2 => Ok(Self::Closed),
            _ => Err(Error::invalid("mode", "must be 1 (OP) or 2 (CL)")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "op",
            Self::Closed => "cl",
        })
    }
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "op" | "open" => Ok(Self::Open),
            "cl" | "closed" => Ok(Self::Closed),
            _ => Err(Error::invalid("mode", "must be op or cl")),
        }
    }
}

/// Checks that `name` is usable as a GE name: one lower-case DNS label.
pub fn validate_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LEN {
        return Err(Error::invalid("GE name", "must be 1 to 63 characters"));
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        return Err(Error::invalid(
            "GE name",
            "may hold only a-z, 0-9 and '-' (one DNS label)",
        ));
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err(Error::invalid("GE name", "may not start or end with '-'"));
    }
    Ok(())
}

/// What the GMS holds per GE, and what a GE states about itself in DPRP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GeInfo {
    /// Numeric identity.
    pub id: GeId,
    /// DNS label under the network's zone.
    pub name: String,
    /// GES, GEN or GEA.
    pub kind: GeKind,
    /// OP or CL.
    pub mode: Mode,
    /// Group memberships, ordered (lowest first).
    pub groups: BTreeSet<GroupId>,
    /// The stable overlay address the GMS assigned.
    pub overlay: Ipv4Addr,
}

impl GeInfo {
    /// Checks the invariants a decoded or constructed record must hold.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        if self.groups.len() > MAX_GROUPS {
            return Err(Error::TooLarge {
                what: "group list",
                len: self.groups.len(),
                max: MAX_GROUPS,
            });
        }
        Ok(())
    }

    /// True when the two GEs share at least one group.
    pub fn shares_group_with(&self, other: &GeInfo) -> bool {
        self.lowest_shared_group(other).is_some()
    }

    /// The lowest group number both GEs are members of.
    pub fn lowest_shared_group(&self, other: &GeInfo) -> Option<GroupId> {
        self.groups.intersection(&other.groups).next().copied()
    }

    /// Appends the binary form:
    /// `id u32 | kind u8 | mode u8 | overlay [4] | name len u8 + bytes | n u8 | n x group u32`.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        self.validate()?;
        w.u32(self.id.0);
        w.u8(self.kind.code());
        w.u8(self.mode.code());
        w.bytes(&self.overlay.octets());
        w.short_bytes(self.name.as_bytes(), MAX_NAME_LEN, "GE name")?;
        w.u8(self.groups.len() as u8);
        for g in &self.groups {
            w.u32(g.0);
        }
        Ok(())
    }

    /// Reads the binary form written by [`GeInfo::encode`].
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let id = GeId(r.u32("GE id")?);
        let kind = GeKind::from_code(r.u8("GE kind")?)?;
        let mode = Mode::from_code(r.u8("mode")?)?;
        let overlay = Ipv4Addr::from(r.array::<4>("overlay address")?);
        let name = r.short_bytes(MAX_NAME_LEN, "GE name")?;
        let name = std::str::from_utf8(name)
            .map_err(|_| Error::invalid("GE name", "not UTF-8"))?
            .to_owned();
        let n = usize::from(r.u8("group count")?);
        if n > MAX_GROUPS {
            return Err(Error::TooLarge {
                what: "group list",
                len: n,
                max: MAX_GROUPS,
            });
        }
        let mut groups = BTreeSet::new();
        let mut last = None;
        for _ in 0..n {
            let g = GroupId(r.u32("group")?);
            // Strictly ascending: one canonical encoding per record, so the
            // bytes that are signed and MACed are unambiguous.
            if last.is_some_and(|l| g <= l) {
                return Err(Error::invalid("group list", "must be strictly ascending"));
            }
            last = Some(g);
            groups.insert(g);
        }
        let info = Self {
            id,
            name,
            kind,
            mode,
            groups,
            overlay,
        };
        info.validate()?;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GeInfo {
        GeInfo {
            id: GeId(7),
            name: "nas-gw".into(),
            kind: GeKind::Gen,
            mode: Mode::Closed,
            groups: [GroupId(1), GroupId(3)].into(),
            overlay: Ipv4Addr::new(100, 64, 0, 7),
        }
    }

    #[test]
    fn round_trip() {
        let mut v = Vec::new();
        sample().encode(&mut Writer::new(&mut v)).unwrap();
        let mut r = Reader::new(&v);
        assert_eq!(GeInfo::decode(&mut r).unwrap(), sample());
        r.finish("GE info").unwrap();
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut v = Vec::new();
        sample().encode(&mut Writer::new(&mut v)).unwrap();
        for len in 0..v.len() {
            assert!(
                GeInfo::decode(&mut Reader::new(&v[..len])).is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(validate_name("laptop-1").is_ok());
        for bad in ["", "-a", "a-", "Upper", "a.b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unordered_groups_are_refused() {
        let mut v = Vec::new();
        sample().encode(&mut Writer::new(&mut v)).unwrap();
        // Swap the two group numbers at the end.
        let n = v.len();
        v[n - 8..].copy_from_slice(&[0, 0, 0, 3, 0, 0, 0, 1]);
        assert!(GeInfo::decode(&mut Reader::new(&v)).is_err());
    }

    #[test]
    fn lowest_shared_group_wins() {
        let a = sample();
        let mut b = sample();
        b.groups = [GroupId(3), GroupId(1), GroupId(9)].into();
        assert_eq!(a.lowest_shared_group(&b), Some(GroupId(1)));
        b.groups = [GroupId(2)].into();
        assert!(!a.shares_group_with(&b));
    }
}
