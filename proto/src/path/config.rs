//! The timers and thresholds of a [`super::PathMachine`].

use std::time::Duration;

/// Which carrier to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Force {
    /// Native when probes show it works, QUIC otherwise.
    #[default]
    Auto,
    /// Always native (probes still run and report failures).
    Native,
    /// Always QUIC; never probes.
    Quic,
}

/// Timers and thresholds of a [`PathMachine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathConfig {
    /// A probe without an answer after this long is lost.
    pub probe_timeout: Duration,
    /// Consecutive lost rounds (or failed data checks) that fail native.
    pub fail_after: u32,
    /// The longest a dead native path may go unnoticed while data is sent
    /// natively; sets [`PathConfig::active_interval`].
    pub detect_budget: Duration,
    /// Probe interval on an idle native path (holds NAT bindings).
    pub keepalive_interval: Duration,
    /// First delay before retrying native after a fallback.
    pub retry_initial: Duration,
    /// The longest delay between native retries.
    pub retry_max: Duration,
    /// Native held this long resets the retry delay to `retry_initial`.
    pub stable_after: Duration,
    /// Native packets sent since the peer's last delivery, none of them
    /// taken in, that make an answer a failed data check.
    pub min_data_packets: u64,
    /// Force one carrier.
    pub force: Force,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            probe_timeout: Duration::from_secs(1),
            fail_after: 3,
            detect_budget: Duration::from_millis(2500),
            keepalive_interval: Duration::from_secs(15),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(25),
            stable_after: Duration::from_secs(60),
            min_data_packets: 4,
            force: Force::Auto,
        }
    }
}

impl PathConfig {
    /// The probe interval while data flows natively or after a loss:
    /// `(detect_budget - probe_timeout) / fail_after`, at least 50 ms. The
    /// last good probe can go out just before the path dies, so detection
    /// takes at most `fail_after` intervals plus one timeout.
    pub fn active_interval(&self) -> Duration {
        let spare = self.detect_budget.saturating_sub(self.probe_timeout);
        (spare / self.fail_after.max(1)).max(Duration::from_millis(50))
    }
}
