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

/// Microseconds per UTC day.
const DAY_US: i64 = MICROS_PER_SEC * 86_400;

/// Start (inclusive) of the ISO week (Monday 00:00 UTC) containing `ts`.
#[must_use]
pub fn week_start(ts: Timestamp) -> Timestamp {
    let days = ts.div_euclid(DAY_US);
    // 1970-01-01 was a Thursday: Monday-based weekday = (days + 3) mod 7.
    (days - (days + 3).rem_euclid(7)) * DAY_US
}

/// The gateway-wide spend calendar: budget months start on day [`Calendar::month_start_day`]
/// (1..=28, so every month has it) at 00:00 UTC. Every replica of a fleet must use the same
/// value (`--budget-month-start-day`): the windows of a shared account are computed by
/// whichever replica touches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Calendar {
    month_start_day: u8,
}

impl Default for Calendar {
    /// The calendar month (day 1).
    fn default() -> Self {
        Calendar::CALENDAR_MONTH
    }
}

impl Calendar {
    /// Months are calendar months (they start on the 1st).
    pub const CALENDAR_MONTH: Calendar = Calendar { month_start_day: 1 };

    /// A calendar whose months start on `day`.
    ///
    /// # Errors
    /// `day` is not in 1..=28.
    pub fn new(day: u8) -> Result<Calendar, String> {
        if (1..=28).contains(&day) {
            Ok(Calendar {
                month_start_day: day,
            })
        } else {
            Err(format!(
                "the budget month start day must be in 1..=28 (every month has it), got {day}"
            ))
        }
    }

    #[must_use]
    pub fn month_start_day(self) -> u8 {
        self.month_start_day
    }

    /// Start (inclusive) of the budget month containing `ts`: the latest day
    /// `month_start_day`, 00:00 UTC, at or before `ts`.
    #[must_use]
    pub fn month_start(self, ts: Timestamp) -> Timestamp {
        let nanos = i128::from(ts) * 1000;
        let Ok(dt) = OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
            return day_start(ts);
        };
        let date = dt.date();
        let (mut year, mut month) = (date.year(), date.month());
        if date.day() < self.month_start_day {
            if month == time::Month::January {
                year -= 1;
            }
            month = month.previous();
        }
        let Ok(start) = time::Date::from_calendar_date(year, month, self.month_start_day) else {
            return month_start(ts);
        };
        let start = start.midnight().assume_utc();
        i64::try_from(start.unix_timestamp_nanos() / 1000).unwrap_or(ts)
    }
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
    #[test]
    fn weeks_start_on_monday_utc() {
        // 2026-03-17 is a Tuesday; its week starts Monday 2026-03-16.
        let ts = parse_iso("2026-03-17T15:04:05Z").unwrap();
        assert_eq!(format_iso(week_start(ts)), "2026-03-16T00:00:00+00:00");
        let monday = parse_iso("2026-03-16T00:00:00Z").unwrap();
        assert_eq!(week_start(monday), monday);
        let sunday = parse_iso("2026-03-22T23:59:59Z").unwrap();
        assert_eq!(week_start(sunday), monday);
        // Before the epoch too (1969-12-31 is a Wednesday; its Monday is 12-29).
        let before = parse_iso("1969-12-31T12:00:00Z").unwrap();
        assert_eq!(format_iso(week_start(before)), "1969-12-29T00:00:00+00:00");
    }

    #[test]
    fn budget_months_start_on_the_configured_day() {
        let cal = Calendar::new(15).unwrap();
        let mid = parse_iso("2026-03-17T15:04:05Z").unwrap();
        assert_eq!(
            format_iso(cal.month_start(mid)),
            "2026-03-15T00:00:00+00:00"
        );
        let early = parse_iso("2026-03-14T23:59:59Z").unwrap();
        assert_eq!(
            format_iso(cal.month_start(early)),
            "2026-02-15T00:00:00+00:00"
        );
        let january = parse_iso("2026-01-02T00:00:00Z").unwrap();
        assert_eq!(
            format_iso(cal.month_start(january)),
            "2025-12-15T00:00:00+00:00"
        );
        assert_eq!(Calendar::default().month_start(mid), month_start(mid));
        assert!(Calendar::new(0).is_err());
        assert!(Calendar::new(29).unwrap_err().contains("1..=28"));
    }
}
