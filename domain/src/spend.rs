//! Spend-cap arithmetic (SPEC §3.2 step 3): one spend account's spend in the current UTC day
//! and month, the reservations of its calls in flight, and the soft alerts.
//!
//! Every spend admission (the in-process ledger, a database shared by replicas) holds one
//! [`SpendState`] per account and changes it only through the functions here, so the rule
//! exists once: a database implementation reads the row (`SELECT … FOR UPDATE`), applies the
//! same function, and writes it back in one transaction.
//!
//! Invariants:
//! - A request is admitted only while `spent + reserved < cap` for every cap of its account,
//!   and [`SpendState::reserve`] adds its worst-case cost to `reserved` in the same step as the
//!   check. So N concurrent requests overshoot a cap by at most one request's worth.
//! - Windows are UTC: the day and month roll over on the first operation after midnight (UTC)
//!   or after the first of the month, and only forward (a late or replayed settlement never
//!   moves a window back).
//! - Alerts (80 % warning, 95 % critical, on settled spend) are raised at most once per window
//!   and level: the raised levels are part of the state, so a store shared by replicas raises
//!   each of them once for the whole fleet. A refused request raises none.

use crate::keys::KeyRecord;
use crate::time::{Timestamp, day_start, month_start};
use std::sync::Arc;

pub use crate::keys::Caps;

/// The scope of the daily cap (in events, metrics and refusals).
pub const KEY_DAILY: &str = "key_daily";
/// The scope of the monthly cap.
pub const KEY_MONTHLY: &str = "key_monthly";

/// Bits of [`SpendState::alerted`]: the levels raised in the current day and month windows.
pub const ALERTED_DAY_WARNING: u8 = 1;
pub const ALERTED_DAY_CRITICAL: u8 = 2;
pub const ALERTED_MONTH_WARNING: u8 = 4;
pub const ALERTED_MONTH_CRITICAL: u8 = 8;
const ALERTED_DAY: u8 = ALERTED_DAY_WARNING | ALERTED_DAY_CRITICAL;
const ALERTED_MONTH: u8 = ALERTED_MONTH_WARNING | ALERTED_MONTH_CRITICAL;

/// Settled spend over a cap at which the warning alert is raised.
pub const WARNING_RATIO: f64 = 0.80;
/// Settled spend over a cap at which the critical alert is raised.
pub const CRITICAL_RATIO: f64 = 0.95;

/// What a request is charged to: its spend account (the key itself, or the key a rotated
/// successor inherits its spend from) and the caps on that account. Built once per key, when
/// the key ring is built, so the request path clones an `Arc` instead of a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub account: Arc<str>,
    pub caps: Caps,
}

impl Budget {
    /// The budget of `key`.
    #[must_use]
    pub fn of(key: &KeyRecord) -> Budget {
        Budget {
            account: Arc::from(key.account()),
            caps: Caps::of(key),
        }
    }
}

/// A cap that is reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    /// [`KEY_DAILY`] or [`KEY_MONTHLY`].
    pub scope: &'static str,
    pub limit_usd: f64,
    /// Settled spend in the window (reservations not included).
    pub current_usd: f64,
}

/// A soft alert to raise.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub scope: &'static str,
    /// `warning` (80 %) or `critical` (95 %).
    pub severity: &'static str,
    pub limit_usd: f64,
    pub current_usd: f64,
    pub ratio: f64,
}

/// One spend account: settled spend in the current UTC day and month, reservations held by
/// calls in flight, and the alert levels already raised in the current windows. Plain data
/// (a database row: every field is a column).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SpendState {
    /// Start of the current UTC day (µs).
    pub day_start: Timestamp,
    pub day_usd: f64,
    /// Start of the current UTC month (µs).
    pub month_start: Timestamp,
    pub month_usd: f64,
    /// Worst-case cost of the calls in flight.
    pub reserved_usd: f64,
    /// `ALERTED_*` bits raised in the current windows.
    pub alerted: u8,
}

/// The amount a reservation holds for an estimate: the estimate when it is a positive finite
/// number, else nothing.
#[must_use]
pub fn hold_amount(estimate_usd: f64) -> f64 {
    if estimate_usd.is_finite() && estimate_usd > 0.0 {
        estimate_usd
    } else {
        0.0
    }
}

impl SpendState {
    /// An account with no spend, its windows those of `now`.
    #[must_use]
    pub fn new(now: Timestamp) -> SpendState {
        SpendState {
            day_start: day_start(now),
            month_start: month_start(now),
            ..SpendState::default()
        }
    }

    /// Move the windows forward to those of `now`: a new day (month) starts with no spend and
    /// no alert raised. A `now` in an earlier window changes nothing.
    pub fn roll(&mut self, now: Timestamp) {
        let d = day_start(now);
        if d > self.day_start {
            self.day_start = d;
            self.day_usd = 0.0;
            self.alerted &= !ALERTED_DAY;
        }
        let m = month_start(now);
        if m > self.month_start {
            self.month_start = m;
            self.month_usd = 0.0;
            self.alerted &= !ALERTED_MONTH;
        }
    }

    /// The check before a request's body is read: refused when settled spend plus
    /// reservations reach a cap; otherwise the alerts due now (each marked raised).
    ///
    /// # Errors
    /// The first cap reached (daily, then monthly); nothing is marked then.
    pub fn check(&mut self, caps: Caps, now: Timestamp) -> Result<Vec<Alert>, Exceeded> {
        self.roll(now);
        if caps.is_empty() {
            return Ok(Vec::new());
        }
        let windows = [
            (KEY_DAILY, caps.daily_usd, self.day_usd, ALERTED_DAY_WARNING),
            (
                KEY_MONTHLY,
                caps.monthly_usd,
                self.month_usd,
                ALERTED_MONTH_WARNING,
            ),
        ];
        for (scope, cap, spent, _) in windows {
            if let Some(cap) = cap
                && spent + self.reserved_usd >= cap
            {
                return Err(Exceeded {
                    scope,
                    limit_usd: cap,
                    current_usd: spent,
                });
            }
        }
        let mut alerts = Vec::new();
        for (scope, cap, spent, warning_bit) in windows {
            let Some(cap) = cap else { continue };
            // Alerts follow settled spend, not worst-case reservations.
            let ratio = spent / cap;
            let (severity, bit) = if ratio >= CRITICAL_RATIO {
                ("critical", warning_bit << 1)
            } else if ratio >= WARNING_RATIO {
                ("warning", warning_bit)
            } else {
                continue;
            };
            if self.alerted & bit == 0 {
                self.alerted |= bit;
                alerts.push(Alert {
                    scope,
                    severity,
                    limit_usd: cap,
                    current_usd: spent,
                    ratio,
                });
            }
        }
        Ok(alerts)
    }

    /// [`check`](Self::check), then hold [`hold_amount`]`(estimate_usd)` for the call in the
    /// same step. An account without caps is never refused.
    ///
    /// # Errors
    /// The first cap reached; nothing is reserved then.
    pub fn reserve(
        &mut self,
        caps: Caps,
        estimate_usd: f64,
        now: Timestamp,
    ) -> Result<Vec<Alert>, Exceeded> {
        let alerts = self.check(caps, now)?;
        self.reserved_usd += hold_amount(estimate_usd);
        Ok(alerts)
    }

    /// Replace a reservation of `reserved_usd` by the call's actual cost, incurred at `at`.
    /// The cost is charged to the windows that contain `at` and are still current: a
    /// settlement replayed after its day (or month) ended adds nothing to the new one.
    pub fn settle(&mut self, reserved_usd: f64, cost_usd: f64, at: Timestamp) {
        self.roll(at);
        self.release(reserved_usd);
        if cost_usd > 0.0 {
            if day_start(at) == self.day_start {
                self.day_usd += cost_usd;
            }
            if month_start(at) == self.month_start {
                self.month_usd += cost_usd;
            }
        }
    }

    /// Give back a reservation without charging anything (a call that never reached the
    /// upstream). The windows do not move.
    pub fn release(&mut self, reserved_usd: f64) {
        self.reserved_usd = (self.reserved_usd - hold_amount(reserved_usd)).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-09-21T14:13:20Z.
    const NOW: Timestamp = 1_790_000_000_000_000;
    const DAY: Timestamp = 86_400_000_000;

    fn daily(d: f64) -> Caps {
        Caps {
            daily_usd: Some(d),
            monthly_usd: None,
        }
    }

    #[test]
    fn reservations_bound_concurrent_overshoot_to_one_request() {
        let mut s = SpendState::new(NOW);
        let admitted = (0..100)
            .filter(|_| s.reserve(daily(1.0), 0.3, NOW).is_ok())
            .count();
        assert_eq!(admitted, 4); // 0, 0.3, 0.6, 0.9 < 1.0
        for _ in 0..admitted {
            s.settle(0.3, 0.3, NOW);
        }
        assert!((s.day_usd - 1.2).abs() < 1e-9 && s.reserved_usd == 0.0);
        assert_eq!(
            s.check(daily(1.0), NOW).unwrap_err().scope,
            KEY_DAILY,
            "at the cap: refused"
        );
    }

    #[test]
    fn an_account_without_caps_is_never_refused() {
        let mut s = SpendState::new(NOW);
        for _ in 0..10 {
            s.reserve(Caps::default(), 1e6, NOW).unwrap();
        }
        assert!((s.reserved_usd - 1e7).abs() < 1e-3);
    }

    #[test]
    fn alerts_fire_once_per_level_and_window() {
        let mut s = SpendState::new(NOW);
        s.settle(0.0, 0.85, NOW);
        let alerts = s.check(daily(1.0), NOW).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].scope, alerts[0].severity),
            (KEY_DAILY, "warning")
        );
        assert!(s.check(daily(1.0), NOW).unwrap().is_empty(), "once");
        s.settle(0.0, 0.12, NOW);
        let alerts = s.check(daily(1.0), NOW).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, "critical");
        assert!(s.check(daily(1.0), NOW).unwrap().is_empty(), "once");
        // Next day: spend and alert marks start over.
        s.roll(NOW + DAY);
        assert_eq!((s.day_usd, s.alerted), (0.0, 0));
    }

    #[test]
    fn a_refusal_marks_no_alert() {
        // Daily at 85 %, monthly at its cap: refused on the monthly cap, and the daily
        // warning stays due for when the request can be admitted.
        let caps = Caps {
            daily_usd: Some(1.0),
            monthly_usd: Some(2.0),
        };
        let mut s = SpendState::new(NOW);
        s.settle(0.0, 0.85, NOW);
        s.month_usd = 2.0;
        assert_eq!(s.check(caps, NOW).unwrap_err().scope, KEY_MONTHLY);
        assert_eq!(s.alerted, 0);
        let raised = s.check(daily(1.0), NOW).unwrap();
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].severity, "warning");
    }

    #[test]
    fn windows_roll_over_in_utc_and_never_back() {
        let mut s = SpendState::new(NOW);
        s.settle(0.0, 2.0, NOW);
        s.roll(NOW - DAY);
        assert_eq!(s.day_usd, 2.0, "an earlier time moves nothing");
        s.roll(NOW + DAY);
        assert_eq!((s.day_usd, s.month_usd), (0.0, 2.0), "same month");
        s.roll(NOW + 40 * DAY);
        assert_eq!((s.day_usd, s.month_usd), (0.0, 0.0));
    }

    #[test]
    fn a_settlement_replayed_after_its_day_charges_only_the_windows_still_current() {
        let mut s = SpendState::new(NOW);
        s.reserve(daily(10.0), 1.0, NOW).unwrap();
        s.roll(NOW + DAY);
        s.settle(1.0, 0.5, NOW);
        assert_eq!(s.reserved_usd, 0.0);
        assert_eq!(s.day_usd, 0.0, "yesterday's cost is not today's");
        assert_eq!(s.month_usd, 0.5, "same month");
    }

    #[test]
    fn release_never_goes_below_zero_and_ignores_bad_amounts() {
        let mut s = SpendState::new(NOW);
        s.reserve(daily(1.0), 0.2, NOW).unwrap();
        s.release(f64::NAN);
        assert!((s.reserved_usd - 0.2).abs() < 1e-12);
        s.release(5.0);
        assert_eq!(s.reserved_usd, 0.0);
        assert_eq!(hold_amount(-1.0), 0.0);
        assert_eq!(hold_amount(f64::INFINITY), 0.0);
    }

    proptest! {
        /// Whatever the order of reservations, settlements and releases, settled spend plus
        /// reservations never pass a cap by more than one request's worth.
        #[test]
        fn spend_never_passes_a_cap_by_more_than_one_request(
            cap in 0.01f64..10.0,
            ops in proptest::collection::vec((0.0f64..2.0, 0.0f64..1.0, any::<bool>()), 1..200),
        ) {
            let mut s = SpendState::new(NOW);
            let mut held: Vec<f64> = Vec::new();
            let mut largest = 0.0f64;
            for (estimate, fraction, settle_one) in ops {
                if s.reserve(daily(cap), estimate, NOW).is_ok() {
                    held.push(estimate);
                    largest = largest.max(estimate);
                }
                if settle_one && let Some(r) = held.pop() {
                    // The actual cost is at most the reservation (the estimate is worst-case).
                    s.settle(r, r * fraction, NOW);
                }
                prop_assert!(s.day_usd + s.reserved_usd < cap + largest + 1e-9);
            }
        }
    }
}
