//! The one error type of fpn-ddns.
//!
//! Errors of the API and of start-up (configuration, key files, storage).
//! Problems with a DNS message are not errors of this type: they become a
//! response code ([`Rcode`](crate::wire::Rcode)) sent back to the client.

use std::path::PathBuf;

/// Everything that can fail in fpn-ddns outside the answer to a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket or file operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The sled database failed.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record could not be decoded (the database is damaged or from
    /// an incompatible version).
    #[error("corrupt stored zone data: {0}")]
    Corrupt(String),
    /// The data directory holds another zone than the one configured.
    #[error("data directory holds zone {stored}, not the configured {configured}")]
    ZoneMismatch {
        /// The zone found in the database.
        stored: String,
        /// The zone in the configuration.
        configured: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A TSIG key file could not be read or parsed.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A zone file could not be imported.
    #[error("zone file {path}: {reason}")]
    ZoneFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A domain name is malformed or outside the zone.
    #[error("invalid name {name:?}: {reason}")]
    Name {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Records given through the API were refused by the zone's rules.
    #[error("records refused: {0}")]
    Refused(&'static str),
    /// A commit failed (storage error); the change was not applied.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The server or its commit thread has shut down.
    #[error("the DDNS server has shut down")]
    Closed,
    /// A codec from fpn-proto failed.
    #[error(transparent)]
    Proto(#[from] fpn_proto::Error),
    /// hickory-proto failed to encode or decode.
    #[error("DNS codec error: {0}")]
    Dns(String),
}

impl From<hickory_proto::ProtoError> for Error {
    fn from(e: hickory_proto::ProtoError) -> Self {
        Self::Dns(e.to_string())
    }
}

impl From<hickory_proto::serialize::binary::DecodeError> for Error {
    fn from(e: hickory_proto::serialize::binary::DecodeError) -> Self {
        Self::Dns(e.to_string())
    }
}
