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

use metis_domain::budgets::{ScopeKind, scope_account, tags_of};
use metis_domain::keys::KeyRecord;
use metis_domain::spend::{self, Alert, Budget, Exceeded, MAX_LINES, SpendState};
use metis_domain::time::{Calendar, Timestamp};
use metis_ports::admission::{
    Answer, Balances, Checked, HoldId, Settlement, SpendAdmission, StoreUnavailable,
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
    /// Seed the ledger from per-key spend read from the trace: `spend` holds each key's spend
    /// in the current day and month, `weekly` each key's spend in the current week (in its
    /// `day_usd`: it is `spend_by_key(week_start, week_start)`). Keys fold into their accounts
    /// (a rotated successor charges its predecessor's); each row's spend is also added to the
    /// user and team its calls recorded (`user:ann`, `team:platform`) and to the customer and
    /// org the key carries now (calls do not record those).
    #[must_use]
    pub fn rebuild(
        spend: &[KeySpend],
        weekly: &[KeySpend],
        keys: &[KeyRecord],
        calendar: Calendar,
        now: Timestamp,
    ) -> Self {
        let by_id: HashMap<&str, &KeyRecord> =
            keys.iter().map(|k| (k.key_id.as_str(), k)).collect();
        let mut accounts: HashMap<Arc<str>, SpendState> = HashMap::new();
        let mut add = |s: &KeySpend, day: f64, week: f64, month: f64| {
            let key = by_id.get(s.gateway_key_id.as_str());
            let own = key
                .map_or(s.gateway_key_id.as_str(), |k| k.account())
                .to_owned();
            // The user and team each call recorded (a key moved to another team leaves its
            // earlier spend with the team it was in); customer and org, which calls do not
            // record, from the key's tags now.
            let recorded = [
                (ScopeKind::User, s.user_id.as_deref()),
                (ScopeKind::Team, s.team_id.as_deref()),
            ];
            let current = key.into_iter().flat_map(|k| {
                tags_of(k).filter(|(kind, _)| !matches!(kind, ScopeKind::User | ScopeKind::Team))
            });
            let scopes = recorded
                .into_iter()
                .filter_map(|(kind, id)| id.map(|id| (kind, id)))
                .chain(current)
                .map(|(kind, id)| scope_account(kind, id));
            for account in std::iter::once(own).chain(scopes) {
                let a = accounts
                    .entry(Arc::from(account))
                    .or_insert_with(|| SpendState::new(now, calendar));
                a.day_usd += day;
                a.week_usd += week;
                a.month_usd += month;
            }
        };
        for s in spend {
            add(s, s.day_usd, 0.0, s.month_usd);
        }
        for s in weekly {
            add(s, 0.0, s.day_usd, 0.0);
        }
        SpendLedger {
            accounts: Mutex::new(accounts),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, SpendState>> {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Apply `f` to the states of `budget`'s lines (created with no spend at `now` when
    /// absent) under the lock, and write them back: one atomic step over every line.
    fn with<R>(
        &self,
        budget: &Budget,
        calendar: Calendar,
        now: Timestamp,
        f: impl FnOnce(&mut [SpendState]) -> R,
    ) -> R {
        let n = budget.lines.len().min(MAX_LINES);
        let mut states = [SpendState::default(); MAX_LINES];
        let mut map = self.lock();
        for (s, l) in states.iter_mut().zip(budget.lines.iter()) {
            *s = match map.get(&*l.account) {
                Some(a) => *a,
                None => SpendState::new(now, calendar),
            };
        }
        let out = f(&mut states[..n]);
        for (s, l) in states.iter().zip(budget.lines.iter()) {
            if let Some(a) = map.get_mut(&*l.account) {
                *a = *s;
            } else {
                map.insert(Arc::clone(&l.account), *s);
            }
        }
        out
    }

    /// `metis_domain::spend::check` on the budget's lines.
    ///
    /// # Errors
    /// The first cap reached.
    pub fn check_now(
        &self,
        budget: &Budget,
        calendar: Calendar,
        now: Timestamp,
    ) -> Result<Vec<Alert>, Exceeded> {
        self.with(budget, calendar, now, |s| {
            spend::check(&budget.lines, s, calendar, now)
        })
    }

    /// `metis_domain::spend::reserve` on the budget's lines.
    ///
    /// # Errors
    /// The first cap reached (nothing is held then).
    pub fn reserve_now(
        &self,
        budget: &Budget,
        estimate_usd: f64,
        calendar: Calendar,
        now: Timestamp,
    ) -> Result<Vec<Alert>, Exceeded> {
        self.with(budget, calendar, now, |s| {
            spend::reserve(&budget.lines, s, estimate_usd, calendar, now)
        })
    }

    /// `metis_domain::spend::settle` on the budget's lines.
    pub fn settle_now(
        &self,
        budget: &Budget,
        reserved_usd: f64,
        cost_usd: f64,
        calendar: Calendar,
        at: Timestamp,
    ) {
        self.with(budget, calendar, at, |s| {
            spend::settle(&budget.lines, s, reserved_usd, cost_usd, calendar, at);
        });
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
    pub fn accounts(&self, calendar: Calendar, now: Timestamp) -> Vec<(Arc<str>, SpendState)> {
        self.lock()
            .iter_mut()
            .map(|(k, a)| {
                a.roll(now, calendar);
                (Arc::clone(k), *a)
            })
            .collect()
    }

    /// An account's spend with its windows rolled to `now` (no spend when unknown).
    #[must_use]
    pub fn snapshot(&self, account: &str, calendar: Calendar, now: Timestamp) -> SpendState {
        match self.lock().get_mut(account) {
            Some(a) => {
                a.roll(now, calendar);
                *a
            }
            None => SpendState::new(now, calendar),
        }
    }
}

impl SpendAdmission for SpendLedger {
    fn shared(&self) -> bool {
        false
    }

    fn check(
        &self,
        budget: &Budget,
        calendar: Calendar,
        now: Timestamp,
    ) -> Answer<Result<Checked, StoreUnavailable>> {
        Answer::Now(Ok(Checked {
            verdict: self.check_now(budget, calendar, now),
            balances: Balances::new(),
        }))
    }

    fn reserve(
        &self,
        _id: HoldId,
        budget: &Budget,
        estimate_usd: f64,
        calendar: Calendar,
        now: Timestamp,
    ) -> Answer<Result<Checked, StoreUnavailable>> {
        Answer::Now(Ok(Checked {
            verdict: self.reserve_now(budget, estimate_usd, calendar, now),
            balances: Balances::new(),
        }))
    }

    /// A settlement is never repeated here: the in-process ledger always answers, and only a
    /// settlement whose answer failed is repeated (the idempotence clause is for shared stores).
    fn settle(&self, s: &Settlement) -> Answer<Result<Balances, StoreUnavailable>> {
        self.settle_now(&s.budget, s.reserved_usd, s.cost_usd, s.calendar, s.at);
        Answer::Now(Ok(Balances::new()))
    }

    fn balance(
        &self,
        account: &str,
        calendar: Calendar,
        now: Timestamp,
    ) -> Answer<Result<SpendState, StoreUnavailable>> {
        Answer::Now(Ok(self.snapshot(account, calendar, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metis_domain::spend::Caps;

    const NOW: Timestamp = 1_790_000_000_000_000;
    const CAL: Calendar = Calendar::CALENDAR_MONTH;

    fn key(json: &str) -> KeyRecord {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rebuild_folds_rotated_keys_into_their_account_and_tags_into_their_scopes() {
        let k1 =
            key(r#"{"key_id":"gk_old","secret_hash":"00","workspace_path":"/w","team_id":"t"}"#);
        let mut k2 = k1.clone();
        k2.key_id = "gk_new".into();
        k2.secret_hash = "01".into();
        k2.spend_account = Some("gk_old".into());
        k2.user_id = Some("ann".into());
        let row = |id: &str, user: Option<&str>, day: f64, month: f64| KeySpend {
            gateway_key_id: id.into(),
            user_id: user.map(Into::into),
            team_id: Some("t".into()),
            day_usd: day,
            month_usd: month,
        };
        let spend = [
            row("gk_old", None, 0.5, 2.0),
            row("gk_new", Some("ann"), 0.25, 0.25),
        ];
        let weekly = [row("gk_old", None, 1.0, 0.0)];
        let l = SpendLedger::rebuild(&spend, &weekly, &[k1, k2], CAL, NOW);
        let s = l.snapshot("gk_old", CAL, NOW);
        assert_eq!(
            (s.day_usd, s.week_usd, s.month_usd, s.reserved_usd),
            (0.75, 1.0, 2.25, 0.0)
        );
        let team = l.snapshot("team:t", CAL, NOW);
        assert_eq!(
            (team.day_usd, team.week_usd, team.month_usd),
            (0.75, 1.0, 2.25)
        );
        let user = l.snapshot("user:ann", CAL, NOW);
        assert_eq!(
            (user.day_usd, user.month_usd),
            (0.25, 0.25),
            "only gk_new is ann's"
        );
    }

    /// A key moved from team `platform` to team `data` (and given an org) after it spent:
    /// the spend stays with the team the calls recorded, so a restart does not hand it to the
    /// new team nor free the old one's budget; the org, which calls do not record, follows the
    /// key's tag now.
    #[test]
    fn rebuild_charges_the_team_the_calls_recorded_not_the_keys_team_now() {
        let k = key(
            r#"{"key_id":"gk_a","secret_hash":"00","workspace_path":"/w","team_id":"data","org_id":"acme"}"#,
        );
        let spend = [
            KeySpend {
                gateway_key_id: "gk_a".into(),
                user_id: None,
                team_id: Some("platform".into()),
                day_usd: 0.5,
                month_usd: 0.5,
            },
            KeySpend {
                gateway_key_id: "gk_a".into(),
                user_id: None,
                team_id: Some("data".into()),
                day_usd: 0.25,
                month_usd: 0.25,
            },
        ];
        let l = SpendLedger::rebuild(&spend, &[], &[k], CAL, NOW);
        let day = |account: &str| l.snapshot(account, CAL, NOW).day_usd;
        assert_eq!(day("gk_a"), 0.75);
        assert_eq!(day("team:platform"), 0.5);
        assert_eq!(day("team:data"), 0.25);
        assert_eq!(day("org:acme"), 0.75);
    }

    #[test]
    fn answers_are_immediate_and_apply_the_domain_rule_on_every_line() {
        let l = SpendLedger::default();
        let k = key(r#"{"key_id":"a","secret_hash":"00","workspace_path":"/w","team_id":"t"}"#);
        let mut policies = metis_domain::budgets::Policies::default();
        policies.budgets.push(
            serde_json::from_value(serde_json::json!({"scope":"team","id":"t","daily_usd":"1"}))
                .unwrap(),
        );
        let budget = Budget::for_key(&k, &metis_domain::budgets::PolicyIndex::new(&policies));
        assert_eq!(budget.lines[0].caps, Caps::default());
        let Answer::Now(Ok(c)) = l.reserve(HoldId(0), &budget, 0.6, CAL, NOW) else {
            panic!("the in-process ledger answers at once");
        };
        assert!(c.verdict.is_ok() && c.balances.is_empty());
        assert!((l.snapshot("team:t", CAL, NOW).reserved_usd - 0.6).abs() < 1e-12);
        assert_eq!(l.snapshot("a", CAL, NOW).reserved_usd, 0.0, "uncapped line");
        let Answer::Now(Ok(c)) = l.reserve(HoldId(1), &budget, 0.6, CAL, NOW) else {
            panic!("the in-process ledger answers at once");
        };
        assert!(c.verdict.is_ok(), "0.6 < 1.0: admitted");
        let Answer::Now(Ok(c)) = l.check(&budget, CAL, NOW) else {
            panic!("the in-process ledger answers at once");
        };
        assert_eq!(c.verdict.unwrap_err().scope, "team_daily");
    }
}
