//! Trace retention: the cutoff arithmetic and the `trace.swept` audit event.
//!
//! Invariants:
//! - One global cutoff per database: events with `timestamp_us < cutoff` are eligible, except
//!   audit types ([`crate::audit::AUDIT_TYPES`]), which are kept forever.
//! - `trace.swept` is emitted only by a prune that deleted (not by a dry run), with
//!   `session_id = "system"`, so the chain records every deletion of history.

use serde::Serialize;

use crate::events::{Actor, Payload, Sensitivity};
use crate::time::{MICROS_PER_SEC, Timestamp};

/// The `trace.swept` event type.
pub const TRACE_SWEPT: &str = "trace.swept";

/// Default retention in days (`metis trace prune` without `--days`).
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

/// Rows deleted per transaction by a prune: small enough that the gateway's writer waits at
/// most one short batch for the write lock.
pub const PRUNE_BATCH_ROWS: u32 = 5_000;

/// The sentinel session of system events.
pub const SYSTEM_SESSION: &str = "system";

/// The cutoff of a `days`-day retention at `now` (events strictly older are eligible).
#[must_use]
pub fn cutoff_us(now: Timestamp, days: u32) -> Timestamp {
    now.saturating_sub(i64::from(days) * 86_400 * MICROS_PER_SEC)
}

/// The audit types in sorted order (the `NOT IN (…)` list of the prune statements).
#[must_use]
pub fn sorted_audit_types() -> Vec<&'static str> {
    let mut v = crate::audit::AUDIT_TYPES.to_vec();
    v.sort_unstable();
    v
}

/// Payload of `trace.swept` (an audit type). Timestamps are ISO-8601 UTC.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceSwept {
    pub rows_deleted: u64,
    pub rows_audit_exempt: u64,
    pub cutoff_timestamp: String,
    pub oldest_kept_timestamp: Option<String>,
    pub dry_run: bool,
    pub swept_at: String,
}

impl Payload for TraceSwept {
    const TYPE: &'static str = TRACE_SWEPT;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// Format an integer with `,` thousands separators (`1234567` -> `1,234,567`).
#[must_use]
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_whole_days_before_now() {
        assert_eq!(
            cutoff_us(100 * 86_400 * MICROS_PER_SEC, 90),
            10 * 86_400 * MICROS_PER_SEC
        );
        assert_eq!(cutoff_us(i64::MIN, 1), i64::MIN);
    }

    #[test]
    fn audit_types_are_sorted_and_include_the_sweep() {
        let v = sorted_audit_types();
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
        assert!(v.contains(&TRACE_SWEPT));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
