//! The one error type of fpn-gms.
//!
//! Variants say what failed and never carry key material, token secrets or
//! payload bytes, so an error can always be logged or shown to an operator.

use std::path::PathBuf;

/// Everything that can fail in fpn-gms.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or socket operation failed.
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
    /// The in-process DNS failed.
    #[error("dns: {0}")]
    Dns(#[from] fpn_ddns::Error),
    /// The embedded database failed.
    #[error("store: {0}")]
    Store(String),
    /// A sync of the store failed: changes since the last good sync may be
    /// lost, and the server refuses further changes until it is restarted.
    #[error(
        "the store could not be synced to disk ({0}); changes since the last sync may be lost: \
         no change is accepted until fpn-gms is restarted"
    )]
    NotDurable(String),
    /// The store was written by a newer fpn-gms.
    #[error(
        "the store in this data directory has schema version {found}, but this fpn-gms supports \
         up to {supported}; it was written by a newer fpn-gms: run that version or upgrade"
    )]
    SchemaTooNew {
        /// Version found in the store.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// The store holds sealed values but its key file is not there: the
    /// store cannot be read without it, and a new key would not open it.
    #[error(
        "the store holds sealed values but its key file {path} is missing: restore it from the \
         backup taken with the store (a new key cannot open it); nothing was changed"
    )]
    StoreKeyMissing {
        /// Where the key file should be.
        path: PathBuf,
    },
    /// The store key file exists but does not open this store.
    #[error(
        "the store key {path} does not open this store (a key from another data directory or \
         another backup?); nothing was changed"
    )]
    StoreKeyWrong {
        /// The key file.
        path: PathBuf,
    },
    /// The store key file is readable by others than its owner.
    #[error(
        "the store key {path} has mode {mode:o}; it must be readable by its owner only \
         (chmod 600 {path})"
    )]
    StoreKeyMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The store key file cannot be read or is not a key.
    #[error("the store key {path} cannot be used: {reason}")]
    StoreKeyUnreadable {
        /// The key file.
        path: PathBuf,
        /// What is wrong (an OS error, or the length).
        reason: String,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in {tree}: {reason}")]
    Corrupt {
        /// The tree holding the record.
        tree: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The configuration file or a command-line value is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A certificate could not be created or parsed.
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
    /// An admin request was refused (unknown name, duplicate, ...). The text is for the operator.
    #[error("{0}")]
    Admin(String),
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
    /// The admin socket is not there: the server is not running.
    #[error(
        "no fpn-gms server answers on {path} ({source}); start it with `fpn-gms serve --data {}`",
        data.display()
    )]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// The data directory (for the command that fixes it).
        data: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// The admin socket exists but this user may not open it.
    #[error(
        "permission denied on {path}: the admin socket belongs to the user that runs `fpn-gms serve`; run this command as that user (e.g. with sudo)"
    )]
    AdminDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// The data directory was never created by `fpn-gms init` (or a wrong
    /// `--data` was given).
    #[error(
        "{} is not an fpn-gms data directory ({reason}); create one with `fpn-gms init --data {} --zone ZONE --public-addr HOST:4433`, or give the --data DIR (or FPN_GMS_DATA) it was created with",
        data.display(),
        data.display()
    )]
    NotInitialized {
        /// The directory given.
        data: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// `init` on a directory that already holds a GMS.
    #[error(
        "{} is already initialized; run it with `fpn-gms serve --data {}`, or give another --data to create a new one",
        data.display(),
        data.display()
    )]
    AlreadyInitialized {
        /// The directory given.
        data: PathBuf,
    },
    /// `serve` while another server runs on the same data directory.
    #[error(
        "another fpn-gms serve already runs on {} (its admin socket answers); stop it first, or ask it with `fpn-gms status --data {}`",
        data.display(),
        data.display()
    )]
    AlreadyServing {
        /// The data directory.
        data: PathBuf,
    },
    /// A web admin user name or password that cannot be used.
    #[error("web admin user: {0}")]
    WebUser(String),
    /// The web admin cannot start (certificate, key, address).
    #[error("web admin: {0}")]
    Web(String),
    /// The session was ended for good (revoked, removed, refused): do not retry.
    #[error("session ended: {0}")]
    Terminated(String),
    /// The `/metrics` endpoint could not listen on `[metrics] listen`.
    #[error("metrics listen = \"{addr}\": cannot listen there: {source}")]
    MetricsBind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The GMS client library failed in a way with no counterpart above.
    #[error("{0}")]
    Client(fpn_gms_client::Error),
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }

    /// Builds an [`Error::Admin`].
    pub fn admin(msg: impl Into<String>) -> Self {
        Self::Admin(msg.into())
    }
}

/// The variants both crates share map one to one, so a caller matching on
/// [`Error::Protocol`] (say) sees the same variant whether the failure came
/// from the shared wire code or from the GMS's own.
impl From<fpn_gms_client::Error> for Error {
    fn from(e: fpn_gms_client::Error) -> Self {
        use fpn_gms_client::Error as C;
        match e {
            C::Io { what, path, source } => Self::Io { what, path, source },
            C::Net(e) => Self::Net(e),
            C::Config(s) => Self::Config(s),
            C::Cert(s) => Self::Cert(s),
            C::Tls(e) => Self::Tls(e),
            C::Proto(e) => Self::Proto(e),
            C::Protocol(s) => Self::Protocol(s),
            C::TokenFormat(s) => Self::TokenFormat(s),
            C::Refused { code, reason } => Self::Refused { code, reason },
            C::Connect(e) => Self::Connect(e),
            C::Connection(e) => Self::Connection(e),
            C::Stream(s) => Self::Stream(s),
            C::Timeout(s) => Self::Timeout(s),
            C::Terminated(s) => Self::Terminated(s),
            C::MetricsBind { addr, source } => Self::MetricsBind { addr, source },
            other => Self::Client(other),
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Self::Store(e.to_string())
    }
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Self::Cert(e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_keep_their_variant_in_the_gms() {
        // The server closes a connection with a protocol error code only for
        // `Protocol`/`Proto`: a malformed frame from the shared wire code must
        // still be one after `?`.
        let e: Error = fpn_gms_client::Error::Protocol("bad frame".into()).into();
        assert!(
            matches!(e, Error::Protocol(ref s) if s == "bad frame"),
            "{e:?}"
        );
        let e: Error = fpn_gms_client::Error::Timeout("hello").into();
        assert!(matches!(e, Error::Timeout("hello")), "{e:?}");
        let e: Error = fpn_gms_client::Error::Refused {
            code: 2,
            reason: "used".into(),
        }
        .into();
        assert!(matches!(e, Error::Refused { code: 2, .. }), "{e:?}");
        let e: Error = fpn_gms_client::Error::Random.into();
        assert!(
            matches!(e, Error::Client(fpn_gms_client::Error::Random)),
            "{e:?}"
        );
    }
}
