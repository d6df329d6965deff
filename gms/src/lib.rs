//! fpn-gms: the Group Management Server of fpn.
//!
//! The GMS defines GEs (name, kind, mode, groups, overlay address) and
//! groups, runs a small Ed25519 CA, enrolls nodes with one-time tokens, owns
//! and rotates the group keys, and pushes keys, GE info, revocations and
//! directory changes to every connected node over QUIC with mutual TLS.
//!
//! - [`core`]: all request handling, sans-IO (time is an argument; outputs are values).
//! - [`server`]: the tokio shell: QUIC endpoint, admin unix socket, timers.
//! - [`store`]: the storage trait and its sled backend.
//! - [`ca`]: the CA that issues certificates and credentials (rcgen).
//! - [`admin`]: the admin protocol (JSON lines) and its views.
//! - [`web`]: the web admin (HTTPS, off by default) over the same core.
//!
//! The node side (enrollment, sessions, key cache) and the node<->GMS
//! control protocol are the crate `fpn_gms_client`, which nodes link
//! without this server; it is re-exported here under the old paths
//! ([`client`], [`wire`], [`framing`], [`token`], [`fsutil`]).
//!
//! What it never does: log or print key bytes or token secrets, accept a
//! client certificate that was revoked or superseded, or acknowledge an admin
//! change before it is on disk.

pub mod admin;
pub mod ca;
pub mod config;
pub mod core;
pub mod dns;
pub mod error;
pub mod model;
pub mod schedule;
pub mod server;
pub mod store;
pub mod tls;
pub mod web;

pub use error::Error;
pub use fpn_gms_client as client;
use fpn_gms_client::task;
pub use fpn_gms_client::{framing, fsutil, now_unix, random, token, wire};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
