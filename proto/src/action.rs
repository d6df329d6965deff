//! What a GE does with the packets of one flow: the outcome of the decision
//! rules, stored in the PIT.

use std::fmt;

use crate::ge::GroupId;

/// A GE's action for one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// This GE is an end of the flow: it encrypts what it sends and decrypts
    /// what it receives, under traffic keys derived from this group's key.
    Protect(GroupId),
    /// This GE is on the path between two protecting ends: it forwards the
    /// protected packets without decrypting them.
    Relay,
    /// Plain traffic: forward unchanged.
    Pass,
    /// Refused by this GE's policy: drop, and tell the initiator.
    Drop,
}

impl Action {
    /// The wire code (used in MPIT and in status output).
    pub const fn code(self) -> u8 {
        match self {
            Self::Protect(_) => 1,
            Self::Relay => 2,
            Self::Pass => 3,
            Self::Drop => 4,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protect(g) => write!(f, "protect(group {g})"),
            Self::Relay => f.write_str("relay"),
            Self::Pass => f.write_str("pass"),
            Self::Drop => f.write_str("drop"),
        }
    }
}
