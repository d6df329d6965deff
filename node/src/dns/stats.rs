//! Counters of the DNS stub, for the daemon's `status`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters, shared by the stub's tasks; clones share the same counts.
#[derive(Clone, Debug, Default)]
pub struct DnsStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    answered: AtomicU64,
    forwarded: AtomicU64,
    failed: AtomicU64,
    malformed: AtomicU64,
    upstream_tcp: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStatsSnapshot {
    /// Queries answered from the name table (names in the zone), including
    /// NXDOMAIN and NODATA answers.
    pub answered: u64,
    /// Queries forwarded to an upstream resolver that answered.
    pub forwarded: u64,
    /// Queries for other names that got SERVFAIL: no upstream answered in
    /// time, or too many queries were in flight.
    pub failed: u64,
    /// Requests refused as malformed (FORMERR) or dropped.
    pub malformed: u64,
    /// Upstream exchanges over TCP (truncated UDP answers, TCP clients).
    pub upstream_tcp: u64,
}

impl DnsStats {
    /// The counts now.
    pub fn snapshot(&self) -> DnsStatsSnapshot {
        let c = &self.inner;
        DnsStatsSnapshot {
            answered: c.answered.load(Relaxed),
            forwarded: c.forwarded.load(Relaxed),
            failed: c.failed.load(Relaxed),
            malformed: c.malformed.load(Relaxed),
            upstream_tcp: c.upstream_tcp.load(Relaxed),
        }
    }

    pub(crate) fn answered(&self) {
        self.inner.answered.fetch_add(1, Relaxed);
    }

    pub(crate) fn forwarded(&self) {
        self.inner.forwarded.fetch_add(1, Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.inner.failed.fetch_add(1, Relaxed);
    }

    pub(crate) fn malformed(&self) {
        self.inner.malformed.fetch_add(1, Relaxed);
    }

    pub(crate) fn upstream_tcp(&self) {
        self.inner.upstream_tcp.fetch_add(1, Relaxed);
    }
}

impl fmt::Display for DnsStatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "answered {}, forwarded {}, failed {}, malformed {}, upstream over TCP {}",
            self.answered, self.forwarded, self.failed, self.malformed, self.upstream_tcp
        )
    }
}
