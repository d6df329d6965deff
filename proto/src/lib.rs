//! fpn-proto: the wire formats and protocol state machines of fpn.
//!
//! Everything here is sans-IO: no sockets, no files, no tasks, no clock and no
//! randomness source. Time is passed in as an argument (`now`), randomness as a
//! seed, packets as caller-owned buffers. The node, the GMS and the tests drive
//! the same code; the [`sim`] module drives it on a simulated network.
//!
//! What lives here:
//! - [`ge`]: GE identity and policy types (GE id, kind, mode, groups, GE info).
//! - [`keys`]: group keys, key versions, node signing keys and the HKDF
//!   derivations every other part uses.
//! - [`credential`]: the compact, CA-signed GE credential carried in DPRP.
//! - [`flow`]: the flow identifier (CID).
//! - [`action`]: what a GE does with a flow (protect, relay, pass, drop).
//! - [`decision`]: the decision rules, a pure function from a flow's path to
//!   each GE's action.
//! - [`dprp`]: the per-flow negotiation (DDE, RGI, MPIT, CDN): codec and
//!   sans-IO state machines, one [`dprp::Endpoint`] per GE.
//! - [`sim`]: an in-memory network of GEs with a virtual clock, loss,
//!   duplication and reordering, driving the real DPRP machines.
//! - [`wire`]: bounds-checked reader/writer helpers for the binary codecs.
//! - [`packet`]: checked in-place views over IPv4/IPv6 TCP, UDP and ICMP
//!   packets: header access, rewrites with checksum updates, MSS clamping.
//! - [`pccom`]: PCCOM packet protection (AES-256-GCM over the L4 payload,
//!   counter + tag trailer, replay window) and its AEAD backends.
//! - [`path`]: per-peer path selection (native or QUIC): the authenticated
//!   probe format and the sans-IO machine that probes, watches and switches.
//! - [`overlay6`]: the network's IPv6 overlay prefix (a ULA /48 from the CA
//!   key) and each GE's IPv6 overlay address in it.
//! - [`prefix`]: address prefixes (what a gateway protects, what a credential names).
//! - [`pit`]: the Process Information Table: flow -> action, keys, cipher
//!   state, counters; aging and renegotiation after key rotation.
//! - [`xlat`]: the translation table (overlay <-> wire addresses and ports
//!   per flow) shared by the native carrier, Mobile PPC and NAT-f.

pub mod action;
pub mod credential;
pub mod decision;
pub mod dprp;
pub mod error;
pub mod flow;
pub mod ge;
pub mod keys;
pub mod overlay6;
pub mod packet;
pub mod path;
pub mod pccom;
pub mod pit;
pub mod prefix;
pub mod sim;
pub mod wire;
pub mod xlat;

pub use error::Error;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
