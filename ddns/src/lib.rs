//! fpn-ddns: the authoritative DNS server of an fpn network's zone.
//!
//! What it does:
//! - serves one zone (e.g. `home.fpn.`) over UDP and TCP: SOA, NS, A, AAAA,
//!   TXT, a few other plain types, and **LIP** ([`lip`], RR type 65300: the
//!   private address of a host behind a NAT). Answers to A/AAAA queries
//!   carry the name's LIP records in the additional section;
//! - accepts RFC 2136 dynamic updates signed with TSIG (HMAC-SHA256/384/512),
//!   each key limited to subtrees of the zone ([`keys::KeyPolicy`]);
//!   unsigned, unknown-key and badly signed updates are refused and logged;
//! - keeps the zone in sled: every accepted change is flushed to disk before
//!   it is answered or served, with concurrent updates sharing one flush
//!   (group commit, [`commit`]);
//! - transfers the zone (AXFR, and IXFR from a journal of recent changes)
//!   to TSIG keys allowed to, and sends NOTIFY to secondaries on change.
//!
//! What it never does: recursion, forwarding, DNSSEC signing, CNAME/DNAME
//! or wildcard processing (such records are refused in updates).
//!
//! Embedding (the GMS runs the DDNS in-process):
//!
//! ```no_run
//! # async fn demo() -> Result<(), fpn_ddns::Error> {
//! use fpn_ddns::{Ddns, DdnsConfig, Sockets};
//! let ddns = Ddns::open(DdnsConfig::new("home.fpn.".parse().unwrap(), "/var/lib/fpn/ddns"))?;
//! let server = ddns.serve(Sockets::bind("0.0.0.0:53".parse().unwrap(), 2)?)?;
//! let serial = ddns
//!     .set_ge_records("laptop", Some("198.18.0.9".parse().unwrap()), None, &[])
//!     .await?; // durable and served when this returns
//! ddns.remove_ge("laptop").await?;
//! server.shutdown().await;
//! ddns.close();
//! # Ok(()) }
//! ```
//!
//! [`Ddns::set_ge_records`] replaces a name's A, AAAA and LIP records,
//! [`Ddns::remove_ge`] deletes the name, [`Ddns::set_rrset`] sets any
//! served type; none needs TSIG (the caller is the process itself).
//!
//! Layout: [`wire`] and [`answer`] are the request path (a fast path for
//! plain queries on pre-encoded answers, hickory-proto for the rest);
//! [`zone`] is the synchronous zone with RFC 2136 logic; [`tsig`] and
//! [`keys`] authenticate; [`store`] persists; [`server`] owns sockets and
//! threads.

pub mod answer;
pub mod commit;
pub mod config;
pub mod error;
pub mod keys;
pub mod lip;
pub mod notify;
pub mod server;
pub mod store;
pub mod tsig;
pub mod wire;
pub mod xfr;
pub mod zone;

/// The DNS types of the API (names, record data), re-exported so users
/// need no version-matched dependency of their own.
pub use hickory_proto;

pub use config::{DdnsConfig, FileConfig, NotifyTarget, SoaConfig};
pub use error::Error;
pub use keys::{Algorithm, KeyPolicy, KeyRing, TsigKey};
pub use server::{Ddns, DdnsStats, Server, Sockets};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
