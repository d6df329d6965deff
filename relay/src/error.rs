//! The relay's one error type.

use std::net::SocketAddr;

/// What went wrong in the relay or its client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A relay frame shorter than its header.
    #[error("relay frame of {len} bytes is shorter than its {min}-byte header")]
    Truncated {
        /// Its length.
        len: usize,
        /// The header's length.
        min: usize,
    },
    /// A setting is out of range.
    #[error("relay setting {setting}: {reason}")]
    Config {
        /// The setting.
        setting: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Certificates or keys could not be used.
    #[error("relay TLS: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A frame for the relay was dropped (no connection, queue full,
    /// too large); counted in [`crate::client::ClientCounters`].
    #[error("relay frame dropped: {0}")]
    Dropped(&'static str),
    /// A frame does not fit the relay connection's datagrams; `max` is
    /// the largest carrier frame that does.
    #[error("relay frame of {size} bytes does not fit (at most {max})")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The largest that fits now.
        max: usize,
    },
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Self {
        Self::Tls(e.to_string())
    }
}

/// `Result` with the relay's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
