//! Calendar arithmetic and the ISO-8601 text the SDKs send, without a date library.
//!
//! Formatting runs once per generated message (tens of millions in a benchmark), so it is
//! a few integer operations into a fixed buffer; a test pins it to the model crate's
//! chrono-based `format_ms`.

pub(crate) const SECOND_MS: i64 = 1_000;
pub(crate) const MINUTE_MS: i64 = 60 * SECOND_MS;
pub(crate) const HOUR_MS: i64 = 60 * MINUTE_MS;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) const fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number from [`days_from_civil`].
pub(crate) const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

fn put(buf: &mut [u8], mut value: i64, width: usize) {
    for slot in buf[..width].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// `2026-09-03T10:15:02.123Z`: UTC with milliseconds, as analytics.js sends timestamps.
/// Years outside 0..=9999 are out of scope for demo data.
pub(crate) fn iso_ms(ms: i64) -> String {
    let (y, mo, d) = civil_from_days(ms.div_euclid(DAY_MS));
    let rem = ms.rem_euclid(DAY_MS);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    put(&mut b[0..], y, 4);
    put(&mut b[5..], mo as i64, 2);
    put(&mut b[8..], d as i64, 2);
    put(&mut b[11..], rem / HOUR_MS, 2);
    put(&mut b[14..], rem / MINUTE_MS % 60, 2);
    put(&mut b[17..], rem / SECOND_MS % 60, 2);
    put(&mut b[20..], rem % SECOND_MS, 3);
    String::from_utf8(b.to_vec()).expect("ascii")
}

/// `2026-09-03`, the date of a UTC instant.
pub(crate) fn iso_date(ms: i64) -> String {
    let mut s = iso_ms(ms);
    s.truncate(10);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn civil_round_trip_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for d in -800_000..800_000i64 {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn formats_exactly_like_the_model_crate() {
        let mut r = Rng::new(1);
        for _ in 0..20_000 {
            let ms = r.range_i(0, 253_402_300_799_999);
            assert_eq!(iso_ms(ms), throughline_model::format_ms(ms));
        }
        assert_eq!(iso_ms(1_788_430_502_123), "2026-09-03T10:15:02.123Z");
        assert_eq!(iso_date(1_788_430_502_123), "2026-09-03");
    }
}
