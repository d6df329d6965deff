//! Rotation schedules and the duration syntax of the config and CLI.
//!
//! A schedule is `daily@HH:MM` (local time of the GMS; the default is
//! `daily@03:00`), `every:DURATION` (e.g. `every:6h`, also used by tests and
//! benchmarks) or `off`. Durations are an integer and a unit: `s`, `m`, `h`,
//! `d` (`90s`, `10m`, `1h`, `7d`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::Error;

/// When groups rotate on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Once a day at this local time.
    Daily {
        /// Hour, 0-23.
        hour: u8,
        /// Minute, 0-59.
        minute: u8,
    },
    /// At a fixed interval from the server's start.
    Every(Duration),
    /// Never on a schedule (still at once on leave/revoke and on demand).
    Off,
}

impl Default for Schedule {
    fn default() -> Self {
        Self::Daily { hour: 3, minute: 0 }
    }
}

impl Schedule {
    /// The first scheduled time strictly after `now` (unix seconds), or `None` when off.
    pub fn next_after(&self, now: u64) -> Option<u64> {
        self.next_after_with(now, local_offset)
    }

    /// [`Schedule::next_after`] with the local UTC offset (seconds east of
    /// UTC at a given unix time) supplied, so it can be tested for any zone.
    pub fn next_after_with(&self, now: u64, offset_at: impl Fn(i64) -> i64) -> Option<u64> {
        match *self {
            Self::Off => None,
            Self::Every(d) => Some(now.saturating_add(d.as_secs().max(1))),
            Self::Daily { hour, minute } => {
                let now_i = i64::try_from(now).ok()?;
                let off = offset_at(now_i);
                let local = now_i + off;
                let mut target = local.div_euclid(86_400) * 86_400
                    + i64::from(hour) * 3600
                    + i64::from(minute) * 60;
                if target <= local {
                    target += 86_400;
                }
                let mut t = target - off;
                // Across a DST change the offset at the target differs from
                // the offset now; the wall-clock time is what the operator set.
                let off_then = offset_at(t);
                if off_then != off {
                    t = target - off_then;
                }
                if t <= now_i {
                    t += 86_400;
                }
                u64::try_from(t).ok()
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Daily { hour, minute } => write!(f, "daily@{hour:02}:{minute:02}"),
            Self::Every(d) => write!(f, "every:{}", format_duration(*d)),
            Self::Off => f.write_str("off"),
        }
    }
}

impl FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::Config(format!(
                "rotation schedule {s:?}: expected daily@HH:MM, every:DURATION or off"
            ))
        };
        if s == "off" {
            return Ok(Self::Off);
        }
        if let Some(t) = s.strip_prefix("daily@") {
            let (h, m) = t.split_once(':').ok_or_else(bad)?;
            let hour: u8 = h.parse().map_err(|_| bad())?;
            let minute: u8 = m.parse().map_err(|_| bad())?;
            if hour > 23 || minute > 59 || h.len() > 2 || m.len() != 2 {
                return Err(bad());
            }
            return Ok(Self::Daily { hour, minute });
        }
        if let Some(d) = s.strip_prefix("every:") {
            let d = parse_duration(d)?;
            if d.is_zero() {
                return Err(bad());
            }
            return Ok(Self::Every(d));
        }
        Err(bad())
    }
}

/// Parses `90s`, `10m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, Error> {
    let bad = || {
        Error::Config(format!(
            "duration {s:?}: expected a number and s, m, h or d"
        ))
    };
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).map(Duration::from_secs).ok_or_else(bad)
}

/// Formats a duration in the largest unit that divides it exactly.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A duration that serializes as `10m` in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl FromStr for HumanDuration {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        parse_duration(s).map(Self)
    }
}

/// Seconds east of UTC in the GMS's local time zone at `unix`.
fn local_offset(unix: i64) -> i64 {
    let t = unix as libc::time_t;
    // SAFETY: `tm` is a plain C struct for which all-zero is a valid value;
    // localtime_r writes only into it and reads only `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() { 0 } else { tm.tm_gmtoff }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2024-01-10 12:00:00 UTC
    const NOON: u64 = 1_704_888_000;

    #[test]
    fn daily_at_three_in_utc_and_in_other_zones() {
        let s = Schedule::default();
        // UTC: next 03:00 is tomorrow, 15 hours after noon.
        assert_eq!(s.next_after_with(NOON, |_| 0), Some(NOON + 15 * 3600));
        // UTC+2: it is 14:00 local; 03:00 local is 13 hours later.
        assert_eq!(s.next_after_with(NOON, |_| 7200), Some(NOON + 13 * 3600));
        // UTC-5: it is 07:00 local; 03:00 local is 20 hours later.
        assert_eq!(s.next_after_with(NOON, |_| -18_000), Some(NOON + 20 * 3600));
        // Exactly at 03:00 the next one is a day later, never now.
        let at3 = NOON + 15 * 3600;
        assert_eq!(s.next_after_with(at3, |_| 0), Some(at3 + 86_400));
    }

    #[test]
    fn daily_follows_the_wall_clock_across_a_dst_change() {
        let s = Schedule::default();
        // Offset is +1h now and +2h from 6 hours on (a spring-forward).
        let change = NOON as i64 + 6 * 3600;
        let off = move |t: i64| if t < change { 3600 } else { 7200 };
        // Now 13:00 local (+1). 03:00 local tomorrow at +2 is 01:00 UTC.
        assert_eq!(s.next_after_with(NOON, off), Some(NOON + 13 * 3600));
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["daily@03:00", "daily@23:59", "every:30s", "every:6h", "off"] {
            assert_eq!(s.parse::<Schedule>().unwrap().to_string(), s);
        }
        for bad in [
            "daily@24:00",
            "daily@3",
            "daily@03:60",
            "every:0s",
            "hourly",
            "every:5x",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
        assert_eq!(
            Schedule::Every(Duration::from_secs(5)).next_after(100),
            Some(105)
        );
        assert_eq!(Schedule::Off.next_after(100), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("1h").unwrap().as_secs(), 3600);
        assert_eq!(parse_duration("7").unwrap().as_secs(), 7);
        for bad in ["", "h", "1y", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
    }
}
