//! Per-peer path selection: which carrier a peer's packets take.
//!
//! Native (raw IP packets, PCCOM trailer only) is preferred; QUIC carries
//! the same packets when native does not get through. [`probe`] is the wire
//! format of the authenticated probe and its answer (UDP, port 7717, next to
//! DPRP); [`PathMachine`] is the sans-IO state machine of one peer that sends
//! probes, watches answers and native data, and decides. Switching never
//! touches a flow: PCCOM packets are the same bytes on either carrier, so
//! the node only changes where it hands them.

pub mod machine;
pub mod probe;

#[cfg(test)]
mod tests;

pub use machine::{
    Force, MAX_CANDIDATES, PathConfig, PathEvent, PathKind, PathMachine, PathStats, PathStatus,
    Reason, Timer, Transmit, Unavailable,
};
pub use probe::{ProbeKey, ProbeKind, ProbeRepr, ProbeView, is_probe};
