//! fpn-gms: the Group Management Server of fpn, and the client library nodes use.
//!
//! The GMS defines GEs (name, kind, mode, groups, overlay address) and
//! groups, runs a small Ed25519 CA, enrolls nodes with one-time tokens, owns
//! and rotates the group keys, and pushes keys, GE info, revocations and
//! directory changes to every connected node over QUIC with mutual TLS.
//!
//! - [`core`]: all request handling, sans-IO (time is an argument; outputs are values).
//! - [`server`]: the tokio shell: QUIC endpoint, admin unix socket, timers.
//! - [`client`]: enrollment, sessions with reconnect, the on-disk key cache.
//! - [`store`]: the storage trait and its sled backend.
//! - [`wire`]/[`framing`]: the node<->GMS control protocol.
//! - [`admin`]: the admin protocol (JSON lines) and its views.
//!
//! What it never does: log or print key bytes or token secrets, accept a
//! client certificate that was revoked or superseded, or acknowledge an admin
//! change before it is on disk.

pub mod admin;
pub mod ca;
pub mod client;
pub mod config;
pub mod core;
pub mod dns;
pub mod error;
pub mod framing;
pub mod fsutil;
pub mod model;
pub mod schedule;
pub mod server;
pub mod store;
mod task;
pub mod tls;
pub mod token;
pub mod wire;

pub use error::Error;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `N` bytes from the operating system's CSPRNG.
pub fn random<const N: usize>() -> Result<[u8; N]> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| Error::Store("the system random source failed".into()))?;
    Ok(out)
}

/// The current time, unix seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
