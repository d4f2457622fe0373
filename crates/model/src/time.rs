//! Parsing and printing of the ISO-8601 timestamps the Segment spec carries.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};

use crate::Millis;

/// Parses an ISO-8601 timestamp as the SDKs send them: RFC 3339 with `Z` or an offset,
/// with or without fractional seconds; a timestamp without a zone is taken as UTC (some
/// server-side libraries send naive times), and a bare date as its midnight UTC.
pub fn parse_timestamp(text: &str) -> Option<Millis> {
    let text = text.trim();
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
}
