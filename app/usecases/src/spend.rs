//! Spend caps: per-account spend in the current UTC day and month, kept incrementally (rebuilt
//! from the trace at start, never a table scan per request), plus reservations for calls in
//! flight.
//!
//! Invariants:
//! - A request is admitted only while `spent + reserved < cap` for every cap of its key, and
//!   admission reserves the request's estimated worst-case cost atomically with that check.
//!   So N concurrent requests overshoot a cap by at most one request's worth.
//! - Every reservation is settled exactly once: on completion or failure with the actual cost
//!   (partial usage of cancelled or failed streams included), or released on drop.
//! - A rotated successor charges its predecessor's account (`KeyRecord::account`), so rotation
//!   never resets spend.

use metis_domain::keys::KeyRecord;
use metis_domain::time::{Timestamp, day_start, month_start};
use metis_ports::trace::KeySpend;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
struct Account {
    day_start: Timestamp,
    day_usd: f64,
    month_start: Timestamp,
    month_usd: f64,
    reserved_usd: f64,
    /// (scope, severity, window start) alerts already raised.
    alerted: Vec<(&'static str, &'static str, Timestamp)>,
}

impl Account {
    fn roll(&mut self, now: Timestamp) {
        let d = day_start(now);
        if d > self.day_start {
            self.day_start = d;
            self.day_usd = 0.0;
        }
        let m = month_start(now);
        if m > self.month_start {
            self.month_start = m;
            self.month_usd = 0.0;
        }
        let (ds, ms) = (self.day_start, self.month_start);
        self.alerted.retain(|(scope, _, w)| {
            if *scope == "key_daily" {
                *w == ds
            } else {
                *w == ms
            }
        });
    }
}

/// The caps of a key, parsed (once per key, when the key ring is built).
pub use metis_domain::keys::Caps;

/// A cap that is reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    pub scope: &'static str,
    pub limit_usd: f64,
    pub current_usd: f64,
}

/// A soft alert to raise (80 % warning, 95 % critical), once per window and level.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub scope: &'static str,
    pub severity: &'static str,
    pub limit_usd: f64,
    pub current_usd: f64,
    pub ratio: f64,
}

/// Spend of every account.
#[derive(Debug, Default)]
pub struct SpendLedger {
    accounts: Mutex<HashMap<String, Account>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl SpendLedger {
    /// Seed the ledger from per-key spend read from the trace, folding keys into their
    /// accounts.
    #[must_use]
    pub fn rebuild(spend: &[KeySpend], keys: &[KeyRecord], now: Timestamp) -> Self {
        let account_of: HashMap<&str, &str> = keys
            .iter()
            .map(|k| (k.key_id.as_str(), k.account()))
            .collect();
        let mut accounts: HashMap<String, Account> = HashMap::new();
        for s in spend {
            let account = account_of
                .get(s.gateway_key_id.as_str())
                .copied()
                .unwrap_or(s.gateway_key_id.as_str());
            let a = accounts
                .entry(account.to_owned())
                .or_insert_with(|| Account {
                    day_start: day_start(now),
                    month_start: month_start(now),
                    ..Account::default()
                });
            a.day_usd += s.day_usd;
            a.month_usd += s.month_usd;
        }
        SpendLedger {
            accounts: Mutex::new(accounts),
        }
    }

    fn check_locked(a: &mut Account, caps: Caps) -> Result<Vec<Alert>, Exceeded> {
        let mut alerts = Vec::new();
        for (scope, cap, spent, window) in [
            ("key_daily", caps.daily_usd, a.day_usd, a.day_start),
            ("key_monthly", caps.monthly_usd, a.month_usd, a.month_start),
        ] {
            let Some(cap) = cap else { continue };
            let current = spent + a.reserved_usd;
            if current >= cap {
                return Err(Exceeded {
                    scope,
                    limit_usd: cap,
                    current_usd: spent,
                });
            }
            // Alerts follow settled spend, not worst-case reservations.
            let ratio = spent / cap;
            let severity = if ratio >= 0.95 {
                "critical"
            } else if ratio >= 0.80 {
                "warning"
            } else {
                continue;
            };
            if !a.alerted.contains(&(scope, severity, window)) {
                a.alerted.push((scope, severity, window));
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

    /// The pre-body check: refuse when spent plus in-flight reservations reach a cap.
    ///
    /// # Errors
    /// The first cap (daily, then monthly) that is reached.
    pub fn check(&self, account: &str, caps: Caps, now: Timestamp) -> Result<Vec<Alert>, Exceeded> {
        if caps.is_empty() {
            return Ok(Vec::new());
        }
        let mut map = lock(&self.accounts);
        let a = map.entry(account.to_owned()).or_default();
        a.roll(now);
        Self::check_locked(a, caps)
    }

    /// Check and reserve `estimate_usd` atomically.
    ///
    /// # Errors
    /// The first cap reached (nothing is reserved then).
    pub fn reserve(
        self: &Arc<Self>,
        account: &str,
        caps: Caps,
        estimate_usd: f64,
        now: Timestamp,
    ) -> Result<(Reservation, Vec<Alert>), Exceeded> {
        let mut map = lock(&self.accounts);
        let a = map.entry(account.to_owned()).or_default();
        a.roll(now);
        let alerts = if caps.is_empty() {
            Vec::new()
        } else {
            Self::check_locked(a, caps)?
        };
        let amount = estimate_usd.max(0.0);
        a.reserved_usd += amount;
        Ok((
            Reservation {
                ledger: Arc::clone(self),
                account: account.to_owned(),
                amount,
                settled: false,
            },
            alerts,
        ))
    }

    fn settle(&self, account: &str, reserved: f64, cost: f64, now: Timestamp) {
        let mut map = lock(&self.accounts);
        let a = map.entry(account.to_owned()).or_default();
        a.roll(now);
        a.reserved_usd = (a.reserved_usd - reserved).max(0.0);
        if cost > 0.0 {
            a.day_usd += cost;
            a.month_usd += cost;
        }
    }

    /// Current (day, month, reserved) spend of an account, for the admin API and tests.
    #[must_use]
    pub fn snapshot(&self, account: &str, now: Timestamp) -> (f64, f64, f64) {
        let mut map = lock(&self.accounts);
        match map.get_mut(account) {
            Some(a) => {
                a.roll(now);
                (a.day_usd, a.month_usd, a.reserved_usd)
            }
            None => (0.0, 0.0, 0.0),
        }
    }
}

/// An in-flight request's hold on its account's budget.
#[derive(Debug)]
pub struct Reservation {
    ledger: Arc<SpendLedger>,
    account: String,
    amount: f64,
    settled: bool,
}

impl Reservation {
    /// Replace the reservation by the actual cost.
    pub fn settle(&mut self, cost_usd: f64, now: Timestamp) {
        if !self.settled {
            self.settled = true;
            self.ledger
                .settle(&self.account, self.amount, cost_usd, now);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            self.ledger.settle(&self.account, self.amount, 0.0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = 1_790_000_000_000_000;

    fn caps(d: f64) -> Caps {
        Caps {
            daily_usd: Some(d),
            monthly_usd: None,
        }
    }

    #[test]
    fn reservations_bound_concurrent_overshoot_to_one_request() {
        let l = Arc::new(SpendLedger::default());
        let mut held = Vec::new();
        let mut admitted = 0;
        for _ in 0..100 {
            if let Ok((r, _)) = l.reserve("a", caps(1.0), 0.3, NOW) {
                held.push(r);
                admitted += 1;
            }
        }
        assert_eq!(admitted, 4); // 0, 0.3, 0.6, 0.9 < 1.0
        for mut r in held {
            r.settle(0.3, NOW);
        }
        let (day, _, reserved) = l.snapshot("a", NOW);
        assert!(day <= 1.0 + 0.3 + 1e-9 && reserved == 0.0);
        assert!(l.check("a", caps(1.0), NOW).is_err());
    }

    #[test]
    fn dropping_a_reservation_releases_it_without_charge() {
        let l = Arc::new(SpendLedger::default());
        drop(l.reserve("a", caps(1.0), 0.9, NOW).unwrap());
        assert_eq!(l.snapshot("a", NOW), (0.0, 0.0, 0.0));
    }

    #[test]
    fn alerts_fire_once_per_level_and_window() {
        let l = Arc::new(SpendLedger::default());
        let (mut r, _) = l.reserve("a", caps(1.0), 0.0, NOW).unwrap();
        r.settle(0.85, NOW);
        let alerts = l.check("a", caps(1.0), NOW).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, "warning");
        assert!(l.check("a", caps(1.0), NOW).unwrap().is_empty());
        let next_day = NOW + 86_400_000_000;
        assert_eq!(l.snapshot("a", next_day).0, 0.0);
    }

    #[test]
    fn rebuild_folds_rotated_keys_into_their_account() {
        let mut k1: KeyRecord =
            serde_json::from_str(r#"{"key_id":"gk_old","secret_hash":"00","workspace_path":"/w"}"#)
                .unwrap();
        let mut k2 = k1.clone();
        k2.key_id = "gk_new".into();
        k2.spend_account = Some("gk_old".into());
        k1.spend_account = None;
        let spend = [
            KeySpend {
                gateway_key_id: "gk_old".into(),
                day_usd: 0.5,
                month_usd: 2.0,
            },
            KeySpend {
                gateway_key_id: "gk_new".into(),
                day_usd: 0.25,
                month_usd: 0.25,
            },
        ];
        let l = SpendLedger::rebuild(&spend, &[k1, k2], NOW);
        assert_eq!(l.snapshot("gk_old", NOW), (0.75, 2.25, 0.0));
    }
}
