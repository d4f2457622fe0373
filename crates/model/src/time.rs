//! Parsing and printing of the ISO-8601 timestamps the Segment spec carries.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};

use crate::Millis;

/// Parses an ISO-8601 timestamp as the SDKs send them: RFC 3339 with `Z` or an offset,
/// with or without fractional seconds; a timestamp without a zone is taken as UTC (some
/// server-side libraries send naive times), and a bare date as its midnight UTC.
pub fn parse_timestamp(text: &str) -> Option<Millis> {
    let text = text.trim();
    // What SDKs nearly always send, decoded without chrono; anything else goes the long way.
    if let Some(ms) = parse_utc_fast(text.as_bytes()) {
        return Some(ms);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    // Python's isoformat() without a zone, and the space-separated variant.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, fmt) {
            return Some(Utc.from_utc_datetime(&t).timestamp_millis());
        }
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(t.timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(
            Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?)
                .timestamp_millis(),
        );
    }
    None
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` exactly, with every field in range; `None` for
/// anything else (including valid forms it does not cover).
fn parse_utc_fast(b: &[u8]) -> Option<Millis> {
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        b[range].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let sep = |i: usize, c: u8| b[i] == c;
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let millis = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            let mut ms = 0;
            for i in 0..3 {
                let c = fraction.get(i).copied().unwrap_or(b'0');
                if !c.is_ascii_digit() {
                    return None;
                }
                ms = ms * 10 + i64::from(c - b'0');
            }
            if !fraction.iter().all(u8::is_ascii_digit) {
                return None;
            }
            ms
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    // Days from the civil calendar (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Formats milliseconds as RFC 3339 UTC with millisecond precision, as Segment does.
pub fn format_ms(ms: Millis) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shapes_sdks_send() {
        let z = parse_timestamp("2024-03-01T12:00:00.250Z").unwrap();
        assert_eq!(parse_timestamp("2024-03-01T13:00:00.250+01:00"), Some(z));
        assert_eq!(parse_timestamp("2024-03-01T12:00:00.250"), Some(z));
        assert_eq!(parse_timestamp("2024-03-01T12:00:00.250000+00:00"), Some(z));
        assert_eq!(parse_timestamp("2024-03-01 12:00:00.250+00:00"), Some(z));
        assert_eq!(format_ms(z), "2024-03-01T12:00:00.250Z");
        assert!(parse_timestamp("yesterday").is_none());
        assert!(parse_timestamp("2024-13-01T00:00:00Z").is_none());
    }

    /// The fast path gives chrono's answer wherever it answers at all.
    #[test]
    fn the_fast_path_agrees_with_chrono() {
        let mut cases = vec![
            "2024-02-29T23:59:59.999Z".to_string(),
            "2023-02-29T00:00:00Z".to_string(),
            "1969-12-31T23:59:59.5Z".to_string(),
            "0000-01-01T00:00:00Z".to_string(),
            "9999-12-31T23:59:59.123456789Z".to_string(),
            "2000-02-29T12:00:00.1Z".to_string(),
            "1900-02-29T12:00:00Z".to_string(),
            "2024-04-31T00:00:00Z".to_string(),
            "2024-01-01T24:00:00Z".to_string(),
            "2024-01-01T00:60:00Z".to_string(),
            "2024-01-01T00:00:60Z".to_string(),
            "2024-01-01T00:00:00.Z".to_string(),
            "2024-01-01T00:00:00.1234567890Z".to_string(),
            "2024-01-01t00:00:00Z".to_string(),
            "2024-01-01T00:00:00z".to_string(),
            "2024-1-01T00:00:00Z".to_string(),
            "+2024-01-01T00:00:00Z".to_string(),
        ];
        // Every day of a leap and a common year, at a few times of day.
        for (y, leap) in [(2024, true), (2025, false)] {
            let days = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            for (m, &n) in days.iter().enumerate() {
                for d in 1..=n + 1 {
                    cases.push(format!("{y}-{:02}-{d:02}T13:07:59.042Z", m + 1));
                }
            }
        }
        let mut fast_answers = 0;
        for case in &cases {
            let chrono = DateTime::parse_from_rfc3339(case)
                .ok()
                .map(|t| t.timestamp_millis());
            if let Some(fast) = parse_utc_fast(case.as_bytes()) {
                assert_eq!(Some(fast), chrono, "{case}");
                fast_answers += 1;
            }
            if let Some(c) = chrono {
                assert_eq!(parse_timestamp(case), Some(c), "{case}");
            }
        }
        // The generated days (less the 24 that do not exist) and the first seven cases
        // that chrono accepts take the fast path.
        assert!(fast_answers >= 2 * 365 + 1 + 5, "{fast_answers}");
    }
}
