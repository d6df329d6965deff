//! When a node renews its certificate and credential (sans-IO: plain
//! arithmetic on unix seconds, so tests need no clock).
//!
//! A node renews at about half of what is left of its credential when it
//! receives it, judged by the GMS's clock (`server_time` of the message that
//! carried it), so a node with a wrong clock still renews on time. The
//! 40-60 % jitter keeps a fleet enrolled together (or reconnecting together
//! after a GMS restart) from renewing in lockstep.

use std::time::Duration;

/// Shortest wait before asking again after a failed or refused renewal.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait before asking again after a failed or refused renewal.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// How long to wait before renewing a credential valid until `not_after`,
/// received when the GMS's clock read `server_now`. `jitter` (0..=255)
/// spreads the answer over 40-60 % of the time left; an expired credential
/// (or one about to) is renewed at once.
pub fn renewal_delay(not_after: u64, server_now: u64, jitter: u8) -> Duration {
    let left = not_after.saturating_sub(server_now);
    // 0.4 .. 0.6 of what is left, in milliseconds (no float rounding surprises).
    let permille = 400 + u64::from(jitter) * 200 / 255;
    Duration::from_millis(left.saturating_mul(permille))
}

/// How long to wait before asking again after a renewal failed: an eighth
/// of the time left, within [`RETRY_MIN`]..[`RETRY_MAX`].
pub fn retry_delay(not_after: u64, server_now: u64) -> Duration {
    let left = not_after.saturating_sub(server_now);
    Duration::from_millis(left.saturating_mul(1000) / 8).clamp(RETRY_MIN, RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn renews_at_about_half_the_time_left_with_bounded_jitter() {
        let day = 86_400;
        assert_eq!(
            renewal_delay(NOW + day, NOW, 0),
            Duration::from_secs(day * 4 / 10)
        );
        assert_eq!(
            renewal_delay(NOW + day, NOW, 255),
            Duration::from_secs(day * 6 / 10)
        );
        let mid = renewal_delay(NOW + day, NOW, 128);
        assert!(mid.as_secs().abs_diff(day / 2) < day / 100, "{mid:?}");
        // Every jitter value lands inside 40-60 %, and they differ.
        let all: Vec<Duration> = (0..=255u8)
            .map(|j| renewal_delay(NOW + 20, NOW, j))
            .collect();
        assert!(
            all.iter()
                .all(|d| *d >= Duration::from_secs(8) && *d <= Duration::from_secs(12))
        );
        assert!(all.windows(2).all(|w| w[0] <= w[1]) && all[0] < all[255]);
    }

    #[test]
    fn a_credential_half_used_or_expired_is_renewed_sooner_or_at_once() {
        // Received at 15 s left of 20 s: renew in about 7.5 s, not 10 s.
        assert_eq!(renewal_delay(NOW + 15, NOW, 128).as_millis() / 100, 75);
        // Expired while the node was away: at once.
        assert_eq!(renewal_delay(NOW - 5, NOW, 200), Duration::ZERO);
        assert_eq!(renewal_delay(NOW, NOW, 200), Duration::ZERO);
    }

    #[test]
    fn retries_are_bounded_both_ways() {
        assert_eq!(retry_delay(NOW + 86_400, NOW), RETRY_MAX);
        assert_eq!(retry_delay(NOW + 2, NOW), RETRY_MIN);
        assert_eq!(retry_delay(NOW - 100, NOW), RETRY_MIN);
        assert_eq!(retry_delay(NOW + 80, NOW), Duration::from_secs(10));
    }
}
