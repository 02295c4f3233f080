//! Time values: unix microseconds (UTC) and their ISO-8601 form.
//!
//! The domain never reads a clock; callers pass `now` in (see the `Clock` port).

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Unix time in microseconds, UTC.
pub type Timestamp = i64;

/// Microseconds per second.
pub const MICROS_PER_SEC: i64 = 1_000_000;

/// Format as ISO-8601 UTC with a `+00:00` offset and microseconds when non-zero,
/// e.g. `2026-05-15T14:22:10.123456+00:00`.
#[must_use]
pub fn format_iso(ts: Timestamp) -> String {
    let nanos = i128::from(ts) * 1000;
    let Ok(dt) = OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        return ts.to_string();
    };
    let (y, mo, d) = (dt.year(), u8::from(dt.month()), dt.day());
    let (h, mi, s) = (dt.hour(), dt.minute(), dt.second());
    let micros = dt.microsecond();
    if micros == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+00:00")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{micros:06}+00:00")
    }
}

/// Parse an RFC 3339 timestamp that carries an offset (`Z` or `±hh:mm`).
///
/// # Errors
/// A message when the text is not RFC 3339 or has no offset (naive timestamps are refused).
pub fn parse_iso(raw: &str) -> Result<Timestamp, String> {
    let dt = OffsetDateTime::parse(raw.trim(), &Rfc3339)
        .map_err(|e| format!("'{raw}' is not an ISO-8601 timestamp with a timezone ({e})"))?;
    let utc = dt.to_offset(UtcOffset::UTC);
    i64::try_from(utc.unix_timestamp_nanos() / 1000).map_err(|_| format!("'{raw}' is out of range"))
}

/// Start (inclusive) of the UTC day containing `ts`.
#[must_use]
pub fn day_start(ts: Timestamp) -> Timestamp {
    let day = MICROS_PER_SEC * 86_400;
    ts.div_euclid(day) * day
}

/// Parse a duration in whole seconds: bare seconds, or `<n>s`, `<n>m`, `<n>h`, `<n>d`,
/// `<n>w`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration_secs(raw: &str) -> Result<u64, String> {
    let s = raw.trim();
    let err = || {
        format!("could not parse duration '{raw}'; use forms like '30s', '30m', '24h', '7d', '2w'")
    };
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let split = s.len().checked_sub(1).ok_or_else(err)?;
    if !s.is_char_boundary(split) {
        return Err(err());
    }
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// Start (inclusive) of the UTC calendar month containing `ts`.
#[must_use]
pub fn month_start(ts: Timestamp) -> Timestamp {
    let nanos = i128::from(ts) * 1000;
    let Ok(dt) = OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        return day_start(ts);
    };
    let first = dt.date().replace_day(1).unwrap_or(dt.date());
    let start = first.midnight().assume_utc();
    i64::try_from(start.unix_timestamp_nanos() / 1000).unwrap_or(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trip_keeps_microseconds() {
        let ts = 1_747_318_930_123_456;
        let s = format_iso(ts);
        assert_eq!(s, "2025-05-15T14:22:10.123456+00:00");
        assert_eq!(parse_iso(&s), Ok(ts));
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        assert_eq!(
            parse_iso("2026-01-01T02:00:00+02:00"),
            parse_iso("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn windows_start_at_utc_midnight_and_the_first() {
        let ts = parse_iso("2026-03-17T15:04:05.5Z").unwrap();
        assert_eq!(format_iso(day_start(ts)), "2026-03-17T00:00:00+00:00");
        assert_eq!(format_iso(month_start(ts)), "2026-03-01T00:00:00+00:00");
    }

    #[test]
    fn durations_parse_in_seconds() {
        assert_eq!(parse_duration_secs("24h"), Ok(86_400));
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("2w"), Ok(1_209_600));
        assert!(parse_duration_secs("soon").is_err());
        assert!(parse_duration_secs("5y").is_err());
        assert!(parse_duration_secs("").is_err());
        assert!(parse_duration_secs("1é").is_err());
    }

    #[test]
    fn naive_timestamps_are_refused() {
        assert!(parse_iso("2026-01-01T00:00:00").is_err());
    }
}
