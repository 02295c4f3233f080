//! Fakes of the admission ports that behave like a store shared by replicas: every answer is
//! [`Answer::Later`] (a boxed future, as a database client's), clones share one state (two
//! handles are two replicas on one database), and the store can be switched to failing, or
//! to applying a step and then losing its answer (a timeout after commit). The arithmetic is
//! `metis_domain`'s, as in every implementation.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metis_domain::ratelimit::BucketMap;
use metis_domain::spend::{self, Budget, MAX_LINES, SpendState};
use metis_domain::time::{Calendar, Timestamp};

use super::lock;
use crate::admission::{
    Answer, Balances, Checked, HoldId, KeyRateLimiter, Settlement, SpendAdmission,
    StoreUnavailable, Take,
};

/// How the fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FakeOutage {
    /// Answers every call.
    #[default]
    Up,
    /// Applies nothing and answers `StoreUnavailable` (the database is unreachable).
    Down,
    /// Applies the step, then answers `StoreUnavailable` (the commit happened, the answer was
    /// lost): a caller that repeats it must not be charged twice.
    AnswersLost,
}

#[derive(Debug, Default)]
struct SpendTables {
    accounts: HashMap<String, SpendState>,
    /// Settlements applied, by hold (the idempotence record a database keeps).
    settled: HashSet<HoldId>,
}

#[derive(Debug, Default)]
struct Shared<T> {
    tables: Mutex<T>,
    outage: Mutex<FakeOutage>,
    calls: AtomicU64,
}

/// A [`SpendAdmission`] shared by its clones, answering like a database.
#[derive(Debug, Clone, Default)]
pub struct FakeSpendStore {
    shared: Arc<Shared<SpendTables>>,
}

fn unavailable(store: &'static str) -> StoreUnavailable {
    StoreUnavailable {
        store,
        message: "the fake store is switched off".to_owned(),
    }
}

impl FakeSpendStore {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Switch how the store answers from now on.
    pub fn set_outage(&self, outage: FakeOutage) {
        *lock(&self.shared.outage) = outage;
    }

    /// Calls received so far (every method).
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// The account as stored, windows as last written (`None`: never written).
    #[must_use]
    pub fn stored(&self, account: &str) -> Option<SpendState> {
        lock(&self.shared.tables).accounts.get(account).copied()
    }

    /// Store `state` for `account` (tests: spend made by other replicas).
    pub fn put(&self, account: &str, state: SpendState) {
        lock(&self.shared.tables)
            .accounts
            .insert(account.to_owned(), state);
    }

    /// Run `step` on the tables as one atomic step, answering per the outage switch.
    fn step<T: Send + 'static>(
        &self,
        step: impl FnOnce(&mut SpendTables) -> T + Send + 'static,
    ) -> Answer<Result<T, StoreUnavailable>> {
        let shared = Arc::clone(&self.shared);
        Answer::Later(Box::pin(async move {
            shared.calls.fetch_add(1, Ordering::SeqCst);
            let outage = *lock(&shared.outage);
            if outage == FakeOutage::Down {
                return Err(unavailable("spend store"));
            }
            let out = step(&mut lock(&shared.tables));
            match outage {
                FakeOutage::AnswersLost => Err(unavailable("spend store")),
                _ => Ok(out),
            }
        }))
    }
}

/// Apply `f` to the states of `budget`'s lines (created with no spend at `now` when absent)
/// and write them back: one atomic step under the tables' lock. Returns `f`'s result and the
/// lines' accounts after it.
fn lines<T>(
    t: &mut SpendTables,
    budget: &Budget,
    cal: Calendar,
    now: Timestamp,
    f: impl FnOnce(&mut [SpendState]) -> T,
) -> (T, Balances) {
    let n = budget.lines.len().min(MAX_LINES);
    let mut states = [SpendState::default(); MAX_LINES];
    for (s, l) in states.iter_mut().zip(budget.lines.iter()) {
        *s = t
            .accounts
            .get(&*l.account)
            .copied()
            .unwrap_or_else(|| SpendState::new(now, cal));
    }
    let out = f(&mut states[..n]);
    let mut balances = Vec::with_capacity(n);
    for (s, l) in states.iter().zip(budget.lines.iter()) {
        t.accounts.insert(l.account.to_string(), *s);
        balances.push((Arc::clone(&l.account), *s));
    }
    (out, balances)
}

impl SpendAdmission for FakeSpendStore {
    fn shared(&self) -> bool {
        true
    }

    fn check(
        &self,
        budget: &Budget,
        cal: Calendar,
        now: Timestamp,
    ) -> Answer<Result<Checked, StoreUnavailable>> {
        let budget = budget.clone();
        self.step(move |t| {
            let (verdict, balances) = lines(t, &budget, cal, now, |states| {
                spend::check(&budget.lines, states, cal, now)
            });
            Checked { verdict, balances }
        })
    }

    fn reserve(
        &self,
        _id: HoldId,
        budget: &Budget,
        estimate_usd: f64,
        cal: Calendar,
        now: Timestamp,
    ) -> Answer<Result<Checked, StoreUnavailable>> {
        let budget = budget.clone();
        self.step(move |t| {
            let (verdict, balances) = lines(t, &budget, cal, now, |states| {
                spend::reserve(&budget.lines, states, estimate_usd, cal, now)
            });
            Checked { verdict, balances }
        })
    }

    fn settle(&self, settlement: &Settlement) -> Answer<Result<Balances, StoreUnavailable>> {
        let s = settlement.clone();
        self.step(move |t| {
            let first = t.settled.insert(s.id);
            let ((), balances) = lines(t, &s.budget, s.calendar, s.at, |states| {
                if first {
                    spend::settle(
                        &s.budget.lines,
                        states,
                        s.reserved_usd,
                        s.cost_usd,
                        s.calendar,
                        s.at,
                    );
                }
            });
            balances
        })
    }

    fn balance(
        &self,
        name: &str,
        cal: Calendar,
        now: Timestamp,
    ) -> Answer<Result<SpendState, StoreUnavailable>> {
        let name = name.to_owned();
        self.step(move |t| {
            let mut a = t
                .accounts
                .get(&name)
                .copied()
                .unwrap_or_else(|| SpendState::new(now, cal));
            a.roll(now, cal);
            a
        })
    }
}

/// A [`KeyRateLimiter`] shared by its clones, on a clock the test moves.
#[derive(Debug, Clone)]
pub struct FakeKeyLimiter {
    shared: Arc<Shared<BucketMap<String>>>,
    now_us: Arc<AtomicI64>,
}

impl FakeKeyLimiter {
    /// Buckets for at most `capacity` tokens, the clock at 0.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        FakeKeyLimiter {
            shared: Arc::new(Shared {
                tables: Mutex::new(BucketMap::new(capacity)),
                outage: Mutex::default(),
                calls: AtomicU64::default(),
            }),
            now_us: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Move the store's clock forward.
    pub fn advance(&self, us: i64) {
        self.now_us.fetch_add(us, Ordering::SeqCst);
    }

    /// Switch how the store answers from now on.
    pub fn set_outage(&self, outage: FakeOutage) {
        *lock(&self.shared.outage) = outage;
    }

    /// Calls received so far.
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }
}

impl KeyRateLimiter for FakeKeyLimiter {
    fn shared(&self) -> bool {
        true
    }

    fn try_take(&self, bucket: &str, rpm: u32) -> Answer<Result<Take, StoreUnavailable>> {
        let shared = Arc::clone(&self.shared);
        let now = self.now_us.load(Ordering::SeqCst);
        let bucket = bucket.to_owned();
        Answer::Later(Box::pin(async move {
            shared.calls.fetch_add(1, Ordering::SeqCst);
            let outage = *lock(&shared.outage);
            if outage == FakeOutage::Down {
                return Err(unavailable("rate-limit store"));
            }
            let take = match lock(&shared.tables).try_take_borrowed(bucket.as_str(), rpm, now) {
                Ok(()) => Take::Allowed,
                Err(retry_after_secs) => Take::Denied { retry_after_secs },
            };
            match outage {
                FakeOutage::AnswersLost => Err(unavailable("rate-limit store")),
                _ => Ok(take),
            }
        }))
    }
}
