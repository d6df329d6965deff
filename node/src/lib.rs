//! fpn-node: the node daemon, a thin I/O shell around fpn-proto's machines.
//!
//! It owns the TUN device, the sockets, the GMS session and the clock; the
//! protocol logic (PCCOM, DPRP, PIT, decision rules) lives in fpn-proto.

pub mod carrier;
pub mod dns;
pub mod error;
