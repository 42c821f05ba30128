//! Time as a port: every deadline, lease and grace period reads an injected
//! [`Clock`], so tests advance a [`ManualClock`] instead of sleeping.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_millis() as i64))
    }
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64)
    }

    /// An RFC 3339 time with any offset (`2026-11-29T10:12:00.123-08:00`,
    /// `...Z`, with or without a fraction), as milliseconds since the epoch.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let (main, offset_min) = match s.rfind(['+', '-']) {
            Some(i) if i > 18 => {
                let (m, o) = s.split_at(i);
                let sign = if o.starts_with('-') { -1 } else { 1 };
                let (h, mm) = o[1..].split_once(':')?;
                (
                    m,
                    sign * (h.parse::<i64>().ok()? * 60 + mm.parse::<i64>().ok()?),
                )
            }
            _ => (s.trim_end_matches(['Z', 'z']), 0),
        };
        let (date, time) = main.split_once('T')?;
        let mut d = date.split('-').map(|x| x.parse::<i64>());
        let (y, mo, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
        let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
        let mut t = hms.split(':').map(|x| x.parse::<i64>());
        let (h, mi, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let ms: i64 = format!("{:0<3}", frac.get(..3).unwrap_or(frac))
            .parse()
            .ok()?;
        // Days from civil (Howard Hinnant's algorithm).
        let y2 = if mo <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
        Some(Timestamp(secs * 1000 + ms))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

/// Where handlers get the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_millis() as i64)
    }
}

/// A clock that moves only when told to; clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start.0)))
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// Formats an age the way a status table shows it: `42s`, `5m`, `3h`, `2d`.
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_with_offsets_read_as_utc_milliseconds() {
        let utc = Timestamp::parse_rfc3339("2026-11-29T10:12:00.123Z").unwrap();
        let pst = Timestamp::parse_rfc3339("2026-11-29T02:12:00.123-08:00").unwrap();
        assert_eq!(utc, pst);
        // 2026-11-29T10:12:00Z = 1795947120 s since the epoch (Python agrees).
        assert_eq!(utc.0, 1_795_947_120_123);
        // Cloud Logging writes nanoseconds.
        let nanos = Timestamp::parse_rfc3339("2026-11-29T10:12:00.123456789Z").unwrap();
        assert_eq!(nanos, utc);
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
        // Not a panic: a fraction that is not digits (bytes, not chars).
        assert!(Timestamp::parse_rfc3339("2026-11-29T10:12:00.\u{e9}\u{e9}1Z").is_none());
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-29T10:12:00.123z"),
            Some(utc)
        );
    }
}
