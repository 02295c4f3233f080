//! The in-process spend admission: one [`SpendState`] per account in a map behind one short
//! mutex, rebuilt from the trace at start and kept incrementally afterwards (never a table
//! scan per request). Single-node stores use it as the spend store; a shared store's guard
//! uses one as its last known balances.
//!
//! Invariants:
//! - Every change is a `metis_domain::spend` function applied under the lock, so each step is
//!   atomic and the rule is the domain's.
//! - Answers are always [`Answer::Now`] and never an error (`shared()` is false).
//! - The request path allocates nothing for an account seen before: accounts are keyed by the
//!   `Arc<str>` of the key's [`Budget`], looked up by `&str`.

use metis_domain::keys::KeyRecord;
use metis_domain::spend::{Alert, Budget, Caps, Exceeded, SpendState};
use metis_domain::time::{Timestamp, day_start, month_start};
use metis_ports::admission::{
    Answer, Checked, HoldId, Settlement, SpendAdmission, StoreUnavailable,
};
use metis_ports::trace::KeySpend;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Spend of every account, in this process.
#[derive(Debug, Default)]
pub struct SpendLedger {
    accounts: Mutex<HashMap<Arc<str>, SpendState>>,
}

impl SpendLedger {
    /// Seed the ledger from per-key spend read from the trace, folding keys into their
    /// accounts (a rotated successor charges its predecessor's).
    #[must_use]
    pub fn rebuild(spend: &[KeySpend], keys: &[KeyRecord], now: Timestamp) -> Self {
        let account_of: HashMap<&str, &str> = keys
            .iter()
            .map(|k| (k.key_id.as_str(), k.account()))
            .collect();
        let mut accounts: HashMap<Arc<str>, SpendState> = HashMap::new();
        for s in spend {
            let account = account_of
                .get(s.gateway_key_id.as_str())
                .copied()
                .unwrap_or(s.gateway_key_id.as_str());
            let a = accounts
                .entry(Arc::from(account))
                .or_insert_with(|| SpendState {
                    day_start: day_start(now),
                    month_start: month_start(now),
                    ..SpendState::default()
                });
            a.day_usd += s.day_usd;
            a.month_usd += s.month_usd;
        }
        SpendLedger {
            accounts: Mutex::new(accounts),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, SpendState>> {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Apply `f` to `account` (created with no spend at `now` when absent) under the lock.
    fn with<R>(
        &self,
        account: &Arc<str>,
        now: Timestamp,
        f: impl FnOnce(&mut SpendState) -> R,
    ) -> R {
        let mut map = self.lock();
        if let Some(a) = map.get_mut(&**account) {
            return f(a);
        }
        f(map
            .entry(Arc::clone(account))
            .or_insert_with(|| SpendState::new(now)))
    }

    /// [`SpendState::check`] on the account.
    ///
    /// # Errors
    /// The first cap reached.
    pub fn check_now(&self, budget: &Budget, now: Timestamp) -> Result<Vec<Alert>, Exceeded> {
        self.with(&budget.account, now, |a| a.check(budget.caps, now))
    }

    /// [`SpendState::reserve`] on the account.
    ///
    /// # Errors
    /// The first cap reached (nothing is held then).
    pub fn reserve_now(
        &self,
        account: &Arc<str>,
        caps: Caps,
        estimate_usd: f64,
        now: Timestamp,
    ) -> Result<Vec<Alert>, Exceeded> {
        self.with(account, now, |a| a.reserve(caps, estimate_usd, now))
    }

    /// [`SpendState::settle`] on the account; the account after it.
    pub fn settle_now(
        &self,
        account: &Arc<str>,
        reserved_usd: f64,
        cost_usd: f64,
        at: Timestamp,
    ) -> SpendState {
        self.with(account, at, |a| {
            a.settle(reserved_usd, cost_usd, at);
            *a
        })
    }

    /// Replace what is known of `account` (a shared store's answer, kept as the last known
    /// balance).
    pub fn put(&self, account: &Arc<str>, state: SpendState) {
        let mut map = self.lock();
        if let Some(a) = map.get_mut(&**account) {
            *a = state;
        } else {
            map.insert(Arc::clone(account), state);
        }
    }

    /// Every account with its windows rolled to `now` (what a shared store is seeded with).
    #[must_use]
    pub fn accounts(&self, now: Timestamp) -> Vec<(Arc<str>, SpendState)> {
        self.lock()
            .iter_mut()
            .map(|(k, a)| {
                a.roll(now);
                (Arc::clone(k), *a)
            })
            .collect()
    }

    /// An account's spend with its windows rolled to `now` (no spend when unknown).
    #[must_use]
    pub fn snapshot(&self, account: &str, now: Timestamp) -> SpendState {
        match self.lock().get_mut(account) {
            Some(a) => {
                a.roll(now);
                *a
            }
            None => SpendState::new(now),
        }
    }
}

impl SpendAdmission for SpendLedger {
    fn shared(&self) -> bool {
        false
    }

    fn check(&self, budget: &Budget, now: Timestamp) -> Answer<Result<Checked, StoreUnavailable>> {
        Answer::Now(Ok(self.with(&budget.account, now, |a| Checked {
            verdict: a.check(budget.caps, now),
            balance: *a,
        })))
    }

    fn reserve(
        &self,
        _id: HoldId,
        budget: &Budget,
        estimate_usd: f64,
        now: Timestamp,
    ) -> Answer<Result<Checked, StoreUnavailable>> {
        Answer::Now(Ok(self.with(&budget.account, now, |a| Checked {
            verdict: a.reserve(budget.caps, estimate_usd, now),
            balance: *a,
        })))
    }

    /// A settlement is never repeated here: the in-process ledger always answers, and only a
    /// settlement whose answer failed is repeated (the idempotence clause is for shared stores).
    fn settle(&self, s: &Settlement) -> Answer<Result<SpendState, StoreUnavailable>> {
        Answer::Now(Ok(self.settle_now(
            &s.account,
            s.reserved_usd,
            s.cost_usd,
            s.at,
        )))
    }

    fn balance(
        &self,
        account: &str,
        now: Timestamp,
    ) -> Answer<Result<SpendState, StoreUnavailable>> {
        Answer::Now(Ok(self.snapshot(account, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = 1_790_000_000_000_000;

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
        let s = l.snapshot("gk_old", NOW);
        assert_eq!((s.day_usd, s.month_usd, s.reserved_usd), (0.75, 2.25, 0.0));
    }

    #[test]
    fn answers_are_immediate_and_apply_the_domain_rule() {
        let l = SpendLedger::default();
        let budget = Budget {
            account: Arc::from("a"),
            caps: Caps {
                daily_usd: Some(1.0),
                monthly_usd: None,
            },
        };
        let Answer::Now(Ok(c)) = l.reserve(HoldId(0), &budget, 0.6, NOW) else {
            panic!("the in-process ledger answers at once");
        };
        assert!(c.verdict.is_ok() && (c.balance.reserved_usd - 0.6).abs() < 1e-12);
        let Answer::Now(Ok(c)) = l.reserve(HoldId(1), &budget, 0.6, NOW) else {
            panic!("the in-process ledger answers at once");
        };
        assert!(c.verdict.is_ok(), "0.6 < 1.0: admitted");
        let Answer::Now(Ok(c)) = l.check(&budget, NOW) else {
            panic!("the in-process ledger answers at once");
        };
        assert_eq!(c.verdict.unwrap_err().scope, "key_daily");
    }
}
