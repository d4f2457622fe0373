//! Quiet hours in the person's own timezone: when a send falls inside the window, it waits
//! for the window's end, in local wall-clock time, DST included (chrono-tz's IANA data).
//! Pure.

use chrono::{Duration, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use throughline_model::Millis;

/// A daily window, `start` to `end` local time; it crosses midnight when `start > end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

pub fn parse_time(text: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(text.trim(), "%H:%M")
        .map_err(|_| format!("{text:?} is no time of day: use HH:MM, e.g. 21:00"))
}

pub fn parse_tz(name: &str) -> Option<Tz> {
    name.trim().parse::<Tz>().ok()
}

impl Window {
    /// The first instant at or after `now` outside the window, in `tz`.
    pub fn next_allowed(&self, now: Millis, tz: Tz) -> Millis {
        if self.start == self.end {
            return now;
        }
        let Some(utc) = Utc.timestamp_millis_opt(now).single() else {
            return now;
        };
        let local = utc.with_timezone(&tz);
        let t = local.time();
        let date = local.date_naive();
        let inside = if self.start < self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        };
        if !inside {
            return now;
        }
        // The window ends today, or tomorrow when it crossed midnight and we are before it.
        let end_date = if self.start > self.end && t >= self.start {
            date.succ_opt().unwrap_or(date)
        } else {
            date
        };
        first_instant_at_or_after(tz, end_date, self.end).max(now)
    }

    pub fn contains(&self, now: Millis, tz: Tz) -> bool {
        self.next_allowed(now, tz) > now
    }
}

/// The UTC instant of local `date time` in `tz`; in a DST gap (the clock jumps over that
/// time) the first instant after the gap; when the time happens twice, the first.
fn first_instant_at_or_after(tz: Tz, date: NaiveDate, time: NaiveTime) -> Millis {
    let mut naive = date.and_time(time);
    for _ in 0..(4 * 60) {
        match tz.from_local_datetime(&naive) {
            chrono::LocalResult::Single(dt) => return dt.timestamp_millis(),
            chrono::LocalResult::Ambiguous(a, _) => return a.timestamp_millis(),
            chrono::LocalResult::None => {
                // Inside a gap: step a minute forward, to the minute.
                naive = (naive + Duration::minutes(1))
                    .with_second(0)
                    .unwrap_or(naive);
            }
        }
    }
    Utc.from_utc_datetime(&date.and_time(time))
        .timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    fn iso(m: Millis) -> String {
        Utc.timestamp_millis_opt(m)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    #[test]
    fn the_window_opens_at_local_time_across_zones_and_dst() {
        let w = Window {
            start: parse_time("21:00").unwrap(),
            end: parse_time("08:00").unwrap(),
        };
        let ny: Tz = "America/New_York".parse().unwrap();
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        // 03:00 UTC is 22:00 in New York (EST, UTC-5): wait for 08:00 EST = 13:00 UTC.
        assert_eq!(
            iso(w.next_allowed(ms("2026-01-15T03:00:00Z"), ny)),
            "2026-01-15T13:00:00Z"
        );
        // ... and 12:00 in Tokyo: send now.
        assert_eq!(
            w.next_allowed(ms("2026-01-15T03:00:00Z"), tokyo),
            ms("2026-01-15T03:00:00Z")
        );
        // US DST starts 2026-03-08 at 02:00 EST: the night before, 08:00 EDT is 12:00 UTC.
        assert_eq!(
            iso(w.next_allowed(ms("2026-03-08T04:00:00Z"), ny)),
            "2026-03-08T12:00:00Z"
        );
        // It ends 2026-11-01: 08:00 EST is 13:00 UTC again.
        assert_eq!(
            iso(w.next_allowed(ms("2026-11-01T04:00:00Z"), ny)),
            "2026-11-01T13:00:00Z"
        );
        // A window ending inside the gap (02:30 does not exist that night) opens at 03:00 EDT.
        let gap = Window {
            start: parse_time("01:00").unwrap(),
            end: parse_time("02:30").unwrap(),
        };
        assert_eq!(
            iso(gap.next_allowed(ms("2026-03-08T06:30:00Z"), ny)),
            "2026-03-08T07:00:00Z"
        );
        // Outside the window nothing waits; a same-day window works too.
        let lunch = Window {
            start: parse_time("12:00").unwrap(),
            end: parse_time("13:00").unwrap(),
        };
        assert_eq!(
            iso(lunch.next_allowed(ms("2026-01-15T12:30:00Z"), Tz::UTC)),
            "2026-01-15T13:00:00Z"
        );
        assert!(!lunch.contains(ms("2026-01-15T13:00:00Z"), Tz::UTC));
    }
}
