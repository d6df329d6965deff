//! The one error type of fpn-gms-client.
//!
//! Variants say what failed and never carry key material, token secrets or
//! payload bytes, so an error can always be logged or shown to an operator.

use std::path::PathBuf;

/// Everything that can fail in fpn-gms-client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("reading", "creating", ...).
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A network or socket operation failed (no single file involved).
    #[error("{0}")]
    Net(#[from] std::io::Error),
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// The `/metrics` endpoint could not listen on its configured address
    /// (`[metrics] listen`): in use, not an address of this host, no right
    /// to bind it.
    #[error("metrics listen = \"{addr}\": cannot listen there: {source}")]
    MetricsBind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A configuration value or a state file (`identity.json`) is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A certificate or key could not be created or parsed.
    #[error("certificate: {0}")]
    Cert(String),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A protocol codec or credential check in fpn-proto failed.
    #[error("{0}")]
    Proto(#[from] fpn_proto::Error),
    /// A control-protocol frame or message is malformed.
    #[error("protocol: {0}")]
    Protocol(String),
    /// An enrollment token could not be parsed.
    #[error("invalid enrollment token: {0}")]
    TokenFormat(&'static str),
    /// The GMS refused the request; `code` is a [`crate::wire::RefusalCode`] value.
    #[error("refused by the GMS: {reason}")]
    Refused {
        /// Machine-readable refusal code.
        code: u16,
        /// The GMS's explanation.
        reason: String,
    },
    /// The QUIC connection could not be established.
    #[error("connecting to the GMS: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer closed or reset a stream, or a stream write failed.
    #[error("stream: {0}")]
    Stream(String),
    /// An operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The session was ended for good (revoked, removed, refused): do not retry.
    #[error("session ended: {0}")]
    Terminated(String),
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

impl From<quinn::WriteError> for Error {
    fn from(e: quinn::WriteError) -> Self {
        Self::Stream(e.to_string())
    }
}

impl From<quinn::ReadExactError> for Error {
    fn from(e: quinn::ReadExactError) -> Self {
        Self::Stream(e.to_string())
    }
}

impl From<quinn::ClosedStream> for Error {
    fn from(e: quinn::ClosedStream) -> Self {
        Self::Stream(e.to_string())
    }
}
