//! Token buckets that bound how fast one source may make this GE start work,
//! and the negative credential cache: the cheap refusals a flood meets before
//! any public-key operation.
//!
//! Both tables are bounded and forget their oldest entries first. Forgetting
//! a bucket refills it, so the bound trades precision for memory: a flooder
//! who cycles through more sources than the table holds gets one burst per
//! source, which the responder capacity ([`Limits::max_responding`]) still
//! caps. Time comes in as `now`; nothing here reads a clock.
//!
//! [`Limits::max_responding`]: super::Limits::max_responding

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::Error;

/// A rate and a burst: `burst` events at once, then `per_second` on average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: u32,
    /// Tokens a bucket holds at most (and starts with).
    pub burst: u32,
}

impl Rate {
    /// No limit: every request passes and no bucket is kept.
    pub const UNLIMITED: Self = Self {
        per_second: u32::MAX,
        burst: u32::MAX,
    };

    fn is_unlimited(&self) -> bool {
        *self == Self::UNLIMITED
    }
}

/// One bucket, in thousandths of a token so refills stay exact in integers.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    last: Instant,
}

/// A bounded table of token buckets keyed by `K` (a source address, a GE id).
#[derive(Debug)]
pub(crate) struct Buckets<K> {
    rate: Rate,
    cap: usize,
    map: BTreeMap<K, Bucket>,
    // Keys in insertion order: the oldest is forgotten first when full.
    order: VecDeque<K>,
}

impl<K: Ord + Copy> Buckets<K> {
    pub(crate) fn new(rate: Rate, cap: usize) -> Self {
        Self {
            rate,
            cap: cap.max(1),
            map: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Takes one token for `key`; false when its bucket is empty.
    pub(crate) fn take(&mut self, key: K, now: Instant) -> bool {
        if self.rate.is_unlimited() {
            return true;
        }
        let full = u64::from(self.rate.burst) * 1000;
        if !self.map.contains_key(&key) {
            if self.map.len() >= self.cap
                && let Some(old) = self.order.pop_front()
            {
                self.map.remove(&old);
            }
            self.map.insert(
                key,
                Bucket {
                    milli: full,
                    last: now,
                },
            );
            self.order.push_back(key);
        }
        let b = self.map.get_mut(&key).expect("inserted above");
        // A clock that seems to run backwards refills nothing.
        let elapsed = now.saturating_duration_since(b.last);
        let refill = elapsed.as_nanos() * u128::from(self.rate.per_second) / 1_000_000;
        b.milli = u64::try_from(u128::from(b.milli) + refill)
            .unwrap_or(u64::MAX)
            .min(full);
        b.last = b.last.max(now);
        if b.milli < 1000 {
            return false;
        }
        b.milli -= 1000;
        true
    }

    /// Buckets kept.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Credentials that failed verification, by a hash of their exact bytes.
///
/// Only failures are kept: a credential that verifies is never let through
/// by this table, so revocations and validity checks stay where they were
/// (`Peers::verify`). A failure is a property of the bytes (a bad signature,
/// an undecodable credential) or of time (expired, not yet valid) or of the
/// revocation lists, which only grow; each entry expires after the TTL so a
/// clock step or a CA change costs at most that long.
#[derive(Debug)]
pub(crate) struct BadCredentials {
    ttl_secs: u64,
    cap: usize,
    // Expiry in wall-clock seconds: verification runs on wall-clock time
    // anyway, and the endpoint clears the table when that is re-anchored.
    map: BTreeMap<[u8; 32], (Error, u64)>,
    order: VecDeque<[u8; 32]>,
}

impl BadCredentials {
    pub(crate) fn new(cap: usize, ttl: Duration) -> Self {
        Self {
            ttl_secs: ttl.as_secs(),
            cap,
            map: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The hash the table is keyed by.
    pub(crate) fn key(bytes: &[u8]) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        d.as_ref().try_into().expect("SHA-256 is 32 bytes")
    }

    /// The failure recorded for `key`, if it has not expired.
    pub(crate) fn get(&self, key: &[u8; 32], unix_now: u64) -> Option<&Error> {
        self.map
            .get(key)
            .filter(|(_, exp)| *exp > unix_now)
            .map(|(e, _)| e)
    }

    /// Remembers that the credential hashing to `key` failed with `error`.
    pub(crate) fn insert(&mut self, key: [u8; 32], error: Error, unix_now: u64) {
        if self.cap == 0 || self.ttl_secs == 0 {
            return;
        }
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.cap {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.map.remove(&old);
            }
            self.order.push_back(key);
        }
        self.map
            .insert(key, (error, unix_now.saturating_add(self.ttl_secs)));
    }

    /// Forgets every entry (the wall clock was re-anchored, so time-based
    /// failures may no longer hold).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Entries kept.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_spends_the_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Buckets::new(
            Rate {
                per_second: 10,
                burst: 5,
            },
            4,
        );
        assert!((0..5).all(|_| b.take(1u8, t0)));
        assert!(!b.take(1, t0));
        assert!(!b.take(1, t0 + Duration::from_millis(99)));
        assert!(b.take(1, t0 + Duration::from_millis(100)));
        assert!(!b.take(1, t0 + Duration::from_millis(100)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(1, later)).count(), 5);
    }

    #[test]
    fn bucket_table_stays_bounded() {
        let t0 = Instant::now();
        let mut b = Buckets::new(
            Rate {
                per_second: 1,
                burst: 1,
            },
            3,
        );
        for k in 0u32..100 {
            assert!(b.take(k, t0));
        }
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn bad_credentials_expire_and_stay_bounded() {
        let t0 = 1_800_000_000;
        let mut c = BadCredentials::new(2, Duration::from_secs(60));
        for i in 0u8..5 {
            c.insert(BadCredentials::key(&[i]), Error::Revoked(1), t0);
        }
        assert_eq!(c.len(), 2);
        let k = BadCredentials::key(&[4]);
        assert!(c.get(&k, t0).is_some());
        assert!(c.get(&k, t0 + 60).is_none());
        assert!(c.get(&BadCredentials::key(&[0]), t0).is_none());
    }
}
