//! fpn's relay: forwards end-to-end protected carrier frames between two
//! authenticated nodes that cannot reach each other directly (both behind
//! NATs that defeat hole punching), and never holds a key that decrypts them.
//!
//! - [`forward`]: the sans-IO forwarding table (registrations, per-node
//!   token bucket, counters). No sockets, no clock.
//! - [`server`]: the QUIC shell around it (mTLS with the network's CA, the
//!   node's GE id from its certificate), run inside `fpn-gms serve` or by
//!   the standalone `fpn-relay` binary.
//! - [`client`]: the node's side, one connection to the relay the GMS named.
//! - [`wire`]: `dst | frame` / `src | frame` (docs/PROTOCOL.md "Relay").
//!
//! What the relay never does: look into a frame past its 4-byte header,
//! log frame bytes, or accept a node whose certificate does not chain to
//! the network's CA. What it cannot do: read or forge traffic. A frame is
//! a DPRP message (signed by its sender) or a PCCOM packet (AES-GCM under a
//! per-flow key from an X25519 exchange the relay never sees), so a relay
//! can drop, delay or misdirect frames, nothing more.

pub mod client;
pub mod error;
pub mod forward;
pub mod server;
pub mod tls;
pub mod wire;

pub use client::{ClientCounters, LinkState, Received, RelayClient};
pub use error::{Error, Result};
pub use forward::{Counters, DropReason, Forwarder, RateLimit, Verdict};
pub use server::{Admission, CaOnly, DEFAULT_PORT, Relay, RelayConfig};
pub use tls::{ALPN, NodeCert, SERVER_NAME};
