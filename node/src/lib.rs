//! fpn-node: the node daemon, a thin I/O shell around a sans-IO node core.
//!
//! [`core::NodeCore`] holds the node's packet and flow state (fpn-proto's
//! DPRP endpoint and PIT, the one peer table, deadlines) and never does I/O
//! or reads a clock; [`driver`] feeds it from the TUN, the carrier and the
//! daemon's channels, with the time of [`clock::Clock`]. The daemon owns the
//! TUN device, the sockets and the GMS session; the protocol logic (PCCOM,
//! DPRP, PIT, decision rules) lives in fpn-proto.
//! docs/NODE.md tells how to run it.

pub mod carrier;
pub mod clock;
pub mod config;
pub mod control;
pub mod core;
pub mod daemon;
pub mod directory;
pub mod dns;
pub mod driver;
pub mod error;
pub mod gms;
pub mod heap;
pub mod icmp;
pub mod metrics;
pub mod native;
pub mod native_link;
pub mod netwatch;
pub mod portmap;
pub mod real_plane;
pub mod stage;
pub mod state;
pub mod status;
pub mod tun;
