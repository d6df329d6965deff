//! What the plain-harness benches measure with (included with `#[path]`;
//! not a bench of its own): the calling thread's CPU time, so other load
//! on a shared machine does not inflate a figure, and the load average to
//! report next to it.

use std::time::Duration;

/// CPU time consumed by this thread so far.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID unavailable");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The 1-minute load average, as /proc/loadavg gives it.
#[allow(dead_code)] // not every bench reports it
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// The positive number in environment variable `name`, or `default` when
/// it is unset, not a number or zero (the benches' ROUNDS, ITERS, ...).
#[allow(dead_code)] // not every bench reads one
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}
