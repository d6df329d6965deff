//! The node's clock: a [`std::time::Instant`] that keeps counting while the
//! machine sleeps.
//!
//! `Instant::now()` is `CLOCK_MONOTONIC` on Linux, which stops during
//! suspend: after a laptop wakes, a PIT entry idle for the whole night would
//! look a few seconds old and DPRP deadlines would fire hours late. fpn-proto's
//! machines take `std::time::Instant`, so [`Clock::now`] returns one, shifted
//! by the time `CLOCK_BOOTTIME` (which includes suspend) advanced since the
//! clock was made: `base_instant + (boottime_now - boottime_base)`.
//!
//! Only the driver reads it; the node core and proto's machines are handed
//! `now` with every input.

use std::time::{Duration, Instant};

/// A clock that counts through suspend. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_instant: Instant,
    base_boot: Duration,
}

impl Clock {
    /// A clock anchored at the current time.
    pub fn new() -> Self {
        // Read the two clocks back to back: the offset between them is what
        // the clock keeps, so the pair should be as close as possible.
        let base_boot = boottime();
        let base_instant = Instant::now();
        Self {
            base_instant,
            base_boot,
        }
    }

    /// The current time, suspend included since [`Clock::new`].
    pub fn now(&self) -> Instant {
        self.base_instant + boottime().saturating_sub(self.base_boot)
    }

    /// How far this clock has run ahead of `Instant::now()` (the time spent
    /// suspended since the clock was made, plus read-out jitter).
    pub fn suspended(&self) -> Duration {
        self.now().saturating_duration_since(Instant::now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// `CLOCK_BOOTTIME`: monotonic, and counting while the system is suspended.
fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on
    // every Linux since 2.6.39. Should the call ever fail, `ts` stays zero
    // and the clock stands still rather than going backwards.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_monotonic() {
        let c = Clock::new();
        let mut last = c.now();
        for _ in 0..10_000 {
            let t = c.now();
            assert!(t >= last);
            last = t;
        }
    }

    #[test]
    fn without_suspend_it_agrees_with_instant() {
        let c = Clock::new();
        std::thread::sleep(Duration::from_millis(20));
        let (before, t, after) = (Instant::now(), c.now(), Instant::now());
        // No suspend happened in a test run: the clocks advance together,
        // give or take the time to read them.
        let slack = Duration::from_millis(5);
        assert!(t + slack >= before, "{t:?} behind {before:?}");
        assert!(t <= after + slack, "{t:?} ahead of {after:?}");
        assert!(c.suspended() < slack);
        assert!(c.now().duration_since(c.base_instant) >= Duration::from_millis(20));
    }

    #[test]
    fn boottime_advances() {
        let a = boottime();
        std::thread::sleep(Duration::from_millis(2));
        assert!(boottime() > a);
        assert!(a > Duration::ZERO);
    }
}
