//! fpn-node: the node daemon, a thin I/O shell around fpn-proto's machines.
//!
//! It owns the TUN device, the sockets, the GMS session and the clock; the
//! protocol logic (PCCOM, DPRP, PIT, decision rules) lives in fpn-proto.
//! docs/NODE.md tells how to run it.

pub mod carrier;
pub mod config;
pub mod control;
pub mod daemon;
pub mod directory;
pub mod dns;
pub mod engine;
pub mod error;
pub mod gms;
pub mod icmp;
pub mod state;
pub mod status;
pub mod tun;
