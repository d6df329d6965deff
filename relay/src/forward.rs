//! The relay's forwarding decisions, sans-IO: who is connected, whether a
//! frame may go, and the counters. The server shell ([`crate::server`])
//! owns the connections and asks this table what to do with each frame;
//! time comes in as an argument.
//!
//! What it never does: read a frame's contents. It sees a source (from the
//! sender's certificate), a destination (from the frame's header) and a
//! length.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fpn_proto::ge::GeId;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Per-node rate limit: a token bucket in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate a node may send through the relay, bytes per second.
    pub bytes_per_sec: u64,
    /// Bytes a node may send at once above the rate (the bucket's size).
    pub burst: u64,
}

impl Default for RateLimit {
    /// 50 Mbit/s sustained with a 1 MiB burst: a relay on a small VPS
    /// carries several such nodes, and a relayed flow (a fallback) still
    /// moves a file or a video call at a useful speed.
    fn default() -> Self {
        Self {
            bytes_per_sec: 50_000_000 / 8,
            burst: 1 << 20,
        }
    }
}

impl RateLimit {
    /// Checks the settings.
    pub fn check(&self) -> Result<()> {
        if self.bytes_per_sec == 0 {
            return Err(Error::Config {
                setting: "rate",
                reason: "must be above zero",
            });
        }
        // A full-size frame must fit the bucket, or it could never pass.
        if self.burst < 2048 {
            return Err(Error::Config {
                setting: "burst",
                reason: "must be at least 2048 bytes",
            });
        }
        Ok(())
    }
}

/// A token bucket in bytes.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: &RateLimit, now: Instant) -> Self {
        Self {
            tokens: limit.burst as f64,
            at: now,
        }
    }

    /// Takes `n` bytes if there are enough tokens.
    fn take(&mut self, limit: &RateLimit, n: usize, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + dt * limit.bytes_per_sec as f64).min(limit.burst as f64);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// Why a frame was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than the header.
    Malformed,
    /// The destination has no connection to this relay.
    NoDestination,
    /// The sender is over its rate.
    RateLimited,
    /// Addressed to the sender itself.
    ToSelf,
    /// The sender's connection is not (or no longer) the one registered
    /// for its GE: replaced by a newer one, or revoked.
    NotRegistered,
    /// The frame does not fit the destination's connection.
    TooLarge,
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it, header rewritten to the source, on connection `conn` of `dst`.
    Forward {
        /// The destination GE.
        dst: GeId,
        /// Its connection (the shell's handle).
        conn: u64,
    },
    /// Drop it (counted).
    Drop(DropReason),
}

/// The relay's counters (`fpn-gms status`, `fpn-relay` logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Frames forwarded.
    pub frames_relayed: u64,
    /// Frame bytes forwarded (carrier frames, headers not counted).
    pub bytes_relayed: u64,
    /// Dropped: shorter than the header.
    pub drop_malformed: u64,
    /// Dropped: the destination is not connected.
    pub drop_no_destination: u64,
    /// Dropped: the sender was over its rate.
    pub drop_rate_limited: u64,
    /// Dropped: addressed to the sender.
    pub drop_to_self: u64,
    /// Dropped: the sender's connection is not its registered one.
    pub drop_not_registered: u64,
    /// Dropped: too large for the destination's connection.
    pub drop_too_large: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections refused (revoked GE or certificate) or cut.
    pub refused: u64,
    /// Nodes connected now.
    pub nodes: u64,
}

#[derive(Debug)]
struct Node {
    conn: u64,
    bucket: Bucket,
}

/// The forwarding table: one registered connection per GE.
#[derive(Debug)]
pub struct Forwarder {
    limit: RateLimit,
    nodes: BTreeMap<GeId, Node>,
    refused: BTreeSet<GeId>,
    counters: Counters,
}

impl Forwarder {
    /// An empty table with this per-node limit.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            nodes: BTreeMap::new(),
            refused: BTreeSet::new(),
            counters: Counters::default(),
        }
    }

    /// A connection of `ge` (handle `conn`) came up. Returns the handle of
    /// the connection it replaces (the shell closes it), or `Err(())` when
    /// the GE is refused (the shell closes this one).
    #[allow(clippy::result_unit_err)]
    pub fn handle_connect(&mut self, ge: GeId, conn: u64, now: Instant) -> Result<Option<u64>, ()> {
        if self.refused.contains(&ge) {
            self.counters.refused += 1;
            return Err(());
        }
        self.counters.connections += 1;
        let old = self.nodes.insert(
            ge,
            Node {
                conn,
                bucket: Bucket::new(&self.limit, now),
            },
        );
        self.counters.nodes = self.nodes.len() as u64;
        Ok(old.map(|n| n.conn).filter(|&c| c != conn))
    }

    /// Connection `conn` of `ge` ended (a replaced one is ignored).
    pub fn handle_disconnect(&mut self, ge: GeId, conn: u64) {
        if self.nodes.get(&ge).is_some_and(|n| n.conn == conn) {
            self.nodes.remove(&ge);
        }
        self.counters.nodes = self.nodes.len() as u64;
    }

    /// `ge` is revoked or removed: refused from now on. Returns its
    /// connection, which the shell closes at once.
    pub fn handle_revoked(&mut self, ge: GeId) -> Option<u64> {
        self.refused.insert(ge);
        let old = self.nodes.remove(&ge).map(|n| n.conn);
        if old.is_some() {
            self.counters.refused += 1;
        }
        self.counters.nodes = self.nodes.len() as u64;
        old
    }

    /// `ge`'s connection is to be closed, without refusing the GE later
    /// (its certificate was superseded, say: a new one is admitted again).
    /// Returns the connection to close.
    pub fn handle_cut(&mut self, ge: GeId) -> Option<u64> {
        let old = self.nodes.remove(&ge).map(|n| n.conn);
        if old.is_some() {
            self.counters.refused += 1;
        }
        self.counters.nodes = self.nodes.len() as u64;
        old
    }

    /// A frame of `len` bytes (header included) from `src` on its
    /// connection `conn`, whose header names `dst` (`None`: shorter than
    /// the header).
    pub fn handle_frame(
        &mut self,
        src: GeId,
        conn: u64,
        dst: Option<GeId>,
        len: usize,
        now: Instant,
    ) -> Verdict {
        let verdict = self.decide(src, conn, dst, len, now);
        match verdict {
            Verdict::Forward { .. } => {
                self.counters.frames_relayed += 1;
                self.counters.bytes_relayed += len.saturating_sub(crate::wire::HEADER_LEN) as u64;
            }
            Verdict::Drop(r) => self.count_drop(r),
        }
        verdict
    }

    /// Counts a drop the shell found after the verdict (the destination's
    /// connection refused the frame as too large).
    pub fn count_drop(&mut self, r: DropReason) {
        let c = &mut self.counters;
        let n = match r {
            DropReason::Malformed => &mut c.drop_malformed,
            DropReason::NoDestination => &mut c.drop_no_destination,
            DropReason::RateLimited => &mut c.drop_rate_limited,
            DropReason::ToSelf => &mut c.drop_to_self,
            DropReason::NotRegistered => &mut c.drop_not_registered,
            DropReason::TooLarge => &mut c.drop_too_large,
        };
        *n += 1;
    }

    fn decide(
        &mut self,
        src: GeId,
        conn: u64,
        dst: Option<GeId>,
        len: usize,
        now: Instant,
    ) -> Verdict {
        let Some(dst) = dst else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let limit = self.limit;
        let Some(s) = self.nodes.get_mut(&src).filter(|n| n.conn == conn) else {
            return Verdict::Drop(DropReason::NotRegistered);
        };
        if dst == src {
            return Verdict::Drop(DropReason::ToSelf);
        }
        // The sender pays for what it sends, also for frames then dropped
        // for want of a destination: probing for connected GEs costs rate.
        if !s.bucket.take(&limit, len, now) {
            return Verdict::Drop(DropReason::RateLimited);
        }
        match self.nodes.get(&dst) {
            Some(d) => Verdict::Forward { dst, conn: d.conn },
            None => Verdict::Drop(DropReason::NoDestination),
        }
    }

    /// Counts a connection the shell refused before registering it (its
    /// certificate is revoked or unknown to the GMS).
    pub fn count_refused(&mut self) {
        self.counters.refused += 1;
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The GEs connected now, by GE id.
    pub fn nodes(&self) -> Vec<GeId> {
        self.nodes.keys().copied().collect()
    }

    /// How long until a node that used its whole burst may send `len`
    /// bytes again (for tests and docs).
    pub fn refill_time(&self, len: usize) -> Duration {
        Duration::from_secs_f64(len as f64 / self.limit.bytes_per_sec as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: GeId = GeId(1);
    const B: GeId = GeId(2);

    fn table(now: Instant) -> Forwarder {
        let mut f = Forwarder::new(RateLimit {
            bytes_per_sec: 10_000,
            burst: 4_000,
        });
        assert_eq!(f.handle_connect(A, 10, now), Ok(None));
        assert_eq!(f.handle_connect(B, 20, now), Ok(None));
        f
    }

    #[test]
    fn frames_go_to_the_destinations_connection_and_are_counted() {
        let now = Instant::now();
        let mut f = table(now);
        assert_eq!(
            f.handle_frame(A, 10, Some(B), 104, now),
            Verdict::Forward { dst: B, conn: 20 }
        );
        assert_eq!(
            f.handle_frame(B, 20, Some(A), 54, now),
            Verdict::Forward { dst: A, conn: 10 }
        );
        let c = f.counters();
        assert_eq!((c.frames_relayed, c.bytes_relayed, c.nodes), (2, 150, 2));
    }

    #[test]
    fn unknown_destinations_self_and_short_frames_are_dropped_and_counted() {
        let now = Instant::now();
        let mut f = table(now);
        let drop = |r| Verdict::Drop(r);
        assert_eq!(
            f.handle_frame(A, 10, Some(GeId(9)), 100, now),
            drop(DropReason::NoDestination)
        );
        assert_eq!(
            f.handle_frame(A, 10, Some(A), 100, now),
            drop(DropReason::ToSelf)
        );
        assert_eq!(
            f.handle_frame(A, 10, None, 2, now),
            drop(DropReason::Malformed)
        );
        // A connection that is not A's registered one may not send in A's name.
        assert_eq!(
            f.handle_frame(A, 11, Some(B), 100, now),
            drop(DropReason::NotRegistered)
        );
        let c = f.counters();
        assert_eq!(c.frames_relayed, 0);
        assert_eq!(
            (
                c.drop_no_destination,
                c.drop_to_self,
                c.drop_malformed,
                c.drop_not_registered
            ),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn the_rate_limit_holds_each_node_to_its_burst_and_rate() {
        let now = Instant::now();
        let mut f = table(now);
        // The burst (4000 bytes) passes, then A is held...
        for _ in 0..4 {
            assert!(matches!(
                f.handle_frame(A, 10, Some(B), 1000, now),
                Verdict::Forward { .. }
            ));
        }
        assert_eq!(
            f.handle_frame(A, 10, Some(B), 1000, now),
            Verdict::Drop(DropReason::RateLimited)
        );
        // ... while B, with its own bucket, still sends.
        assert!(matches!(
            f.handle_frame(B, 20, Some(A), 1000, now),
            Verdict::Forward { .. }
        ));
        // After 0.1 s at 10 kB/s A has 1000 bytes again, not more.
        let later = now + f.refill_time(1000);
        assert!(matches!(
            f.handle_frame(A, 10, Some(B), 1000, later),
            Verdict::Forward { .. }
        ));
        assert_eq!(
            f.handle_frame(A, 10, Some(B), 1000, later),
            Verdict::Drop(DropReason::RateLimited)
        );
        // Over 10 s of virtual time at most burst + 10 s x rate passes.
        let mut passed = 0u64;
        for i in 0..10_000u32 {
            let t = later + Duration::from_millis(u64::from(i));
            if let Verdict::Forward { .. } = f.handle_frame(A, 10, Some(B), 500, t) {
                passed += 500;
            }
        }
        assert!(
            (95_000..=104_000).contains(&passed),
            "{passed} bytes passed in 10 s at 10 kB/s"
        );
        assert!(f.counters().drop_rate_limited > 0);
    }

    #[test]
    fn a_new_connection_replaces_the_old_and_a_revoked_ge_is_cut_and_refused() {
        let now = Instant::now();
        let mut f = table(now);
        // A reconnects (restart): the old connection is closed by the shell.
        assert_eq!(f.handle_connect(A, 11, now), Ok(Some(10)));
        assert_eq!(
            f.handle_frame(B, 20, Some(A), 100, now),
            Verdict::Forward { dst: A, conn: 11 }
        );
        // The old connection's end does not unregister the new one.
        f.handle_disconnect(A, 10);
        assert_eq!(f.nodes(), vec![A, B]);
        // Revocation: cut at once, refused afterwards, frames to it dropped.
        assert_eq!(f.handle_revoked(A), Some(11));
        assert_eq!(f.handle_connect(A, 12, now), Err(()));
        assert_eq!(
            f.handle_frame(B, 20, Some(A), 100, now),
            Verdict::Drop(DropReason::NoDestination)
        );
        assert_eq!(
            f.handle_frame(A, 11, Some(B), 100, now),
            Verdict::Drop(DropReason::NotRegistered)
        );
        assert_eq!(f.counters().refused, 2);
        // A cut (superseded certificate) closes without refusing for good.
        assert_eq!(f.handle_cut(B), Some(20));
        assert_eq!(f.handle_connect(B, 21, now), Ok(None));
        assert_eq!(f.handle_cut(GeId(9)), None);
        f.handle_disconnect(B, 21);
        assert!(f.nodes().is_empty());
        assert_eq!(f.counters().nodes, 0);
    }
}
