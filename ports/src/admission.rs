//! The admission ports: spend caps ([`SpendAdmission`]) and per-key rate limits
//! ([`KeyRateLimiter`]), the two request guards that must hold across every replica of a fleet
//! when their state lives in a shared store, and that live in the process otherwise.
//!
//! The rules are not here: spend arithmetic is `metis_domain::spend` (a [`SpendState`] per
//! account) and the bucket rule is `metis_domain::ratelimit::TokenBucket`. An implementation
//! holds that state and applies those functions to it atomically (one lock, or one database
//! transaction: `SELECT … FOR UPDATE`, apply, `UPDATE`).
//!
//! Why not `async_trait`: every method answers an [`Answer`], which is either ready at once
//! (the in-process implementations: no boxed future, no task, nothing allocated on the
//! request path) or a boxed `'static` future (a store across the network). The traits stay
//! object-safe (`Arc<dyn SpendAdmission>`), and a settlement made where nothing can be awaited
//! (a dropped stream) runs inline when ready, or is spawned otherwise.
//!
//! Per-IP limits are not a port: they protect the process itself, so each process keeps its
//! own (`metis_usecases::Limiter`).

use futures_util::future::BoxFuture;
use metis_domain::spend::{Alert, Budget, Exceeded, SpendState};
use metis_domain::time::{Calendar, Timestamp};
use std::sync::Arc;

/// The answer of an admission step: ready now, or to be awaited.
pub enum Answer<T> {
    /// Computed in the call (in-process state).
    Now(T),
    /// Needs a round trip; the future owns what it needs (`'static`), so it can be spawned.
    Later(BoxFuture<'static, T>),
}

impl<T> Answer<T> {
    /// Wait for the answer (no wait, and nothing allocated, for [`Answer::Now`]).
    pub async fn get(self) -> T {
        match self {
            Answer::Now(v) => v,
            Answer::Later(f) => f.await,
        }
    }
}

impl<T> std::fmt::Debug for Answer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Answer::Now(_) => "Answer::Now(..)",
            Answer::Later(_) => "Answer::Later(..)",
        })
    }
}

/// A store of admission state could not answer (unreachable, timed out, failed). Whether the
/// step took effect is unknown: see the idempotence clause of [`SpendAdmission::settle`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{store} unavailable: {message}")]
pub struct StoreUnavailable {
    /// The store, for messages (`spend store`, `rate-limit store`); never a secret.
    pub store: &'static str,
    pub message: String,
}

/// Identifies one reservation across its settlement and every retry of it. Unique across the
/// processes of a fleet (the caller mints it: a per-process random prefix and a counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HoldId(pub u128);

/// Accounts as a store holds them after a step: what a caller keeps as its last known
/// balances. The in-process ledger returns none (it is the balances), so its answers allocate
/// nothing.
pub type Balances = Vec<(Arc<str>, SpendState)>;

/// The outcome of a check or a reservation, and the budget's accounts as they stand after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Admitted with the alerts now due (each raised once per window and level across every
    /// user of the store), or refused at a cap (with the alerts the refusal raised).
    pub verdict: Result<Vec<Alert>, Exceeded>,
    /// The lines' accounts after the step (a shared store; empty for the in-process ledger).
    pub balances: Balances,
}

/// The end of one reservation: what it held on each capped line of its budget is released,
/// and the actual cost is charged to every line.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub id: HoldId,
    /// The budget the reservation was made on (the same lines, even if the key ring changed
    /// since).
    pub budget: Budget,
    /// What the reservation held on each capped line (0 for a request nothing was reserved
    /// for: a budget without caps, or an admission decided while the store was unavailable).
    /// A store that records holds itself (per hold id and account) releases its own record.
    pub reserved_usd: f64,
    /// The actual cost (0 releases the reservation).
    pub cost_usd: f64,
    /// When the cost was incurred: it is charged to the windows containing `at` that are
    /// still current (`SpendState::settle`).
    pub at: Timestamp,
    /// The windows' calendar.
    pub calendar: Calendar,
}

/// Spend caps: per-account spend in the current day, week and month, plus the reservations of
/// calls in flight, for every line of a request's [`Budget`] (its key and its scopes).
///
/// Contract (`metis_tests::contract::admission` proves each clause but the last, which needs
/// a process to die and so belongs to a shared store's own tests):
/// - [`reserve`](Self::reserve) MUST check every cap of every line and hold the estimate on
///   every capped line in one atomic step with respect to every other caller of the same store
///   (all replicas of a fleet): concurrent reservations overshoot any cap of any line by at
///   most one request's worth.
/// - A refused reservation MUST hold nothing on any line.
/// - A settlement MUST release exactly what its reservation held on each line and charge the
///   cost to every line (capped or not), at most once per [`HoldId`]: repeating one whose
///   first attempt was applied (its answer was lost) changes nothing. A settlement the store
///   holds no reservation for charges its cost all the same.
/// - Windows and alerts follow `metis_domain::spend` exactly, with the calendar passed in.
/// - A store shared by processes MUST give back, after a lease it documents, the reservations
///   of a process that stopped without settling them (the in-process ledger dies with them).
pub trait SpendAdmission: Send + Sync {
    /// Whether the balances live outside this process (a store shared by replicas). Only such
    /// a store can be unavailable; the caller then applies its outage policy
    /// (`--spend-outage`). `false`: every answer is [`Answer::Now`] and never an error.
    fn shared(&self) -> bool;

    /// The check before a request's body is read: refused when a line's settled spend plus
    /// reservations reach a cap. Raises due alerts; reserves nothing.
    fn check(
        &self,
        budget: &Budget,
        calendar: Calendar,
        now: Timestamp,
    ) -> Answer<Result<Checked, StoreUnavailable>>;

    /// Check and hold `estimate_usd` (the call's worst-case cost) on every capped line under
    /// `id` in one atomic step.
    fn reserve(
        &self,
        id: HoldId,
        budget: &Budget,
        estimate_usd: f64,
        calendar: Calendar,
        now: Timestamp,
    ) -> Answer<Result<Checked, StoreUnavailable>>;

    /// Replace a reservation by the actual cost. Returns the lines' accounts after it (none
    /// from the in-process ledger).
    fn settle(&self, settlement: &Settlement) -> Answer<Result<Balances, StoreUnavailable>>;

    /// An account's current spend, windows rolled to `now` (an unknown account has none).
    fn balance(
        &self,
        account: &str,
        calendar: Calendar,
        now: Timestamp,
    ) -> Answer<Result<SpendState, StoreUnavailable>>;
}

/// A per-key rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Allowed,
    /// The bucket is empty: retry after this many seconds (at least 1).
    Denied {
        retry_after_secs: u64,
    },
}

/// Per-key rate limits: one token bucket per presented token (capacity `rpm`, refill
/// `rpm / 60` per second, `metis_domain::ratelimit::TokenBucket`).
///
/// Contract (`metis_tests::contract::admission` proves the first clause and per-token
/// buckets; each implementation proves its own bound, as `metis_domain::ratelimit` does for
/// the in-process LRU):
/// - [`try_take`](Self::try_take) MUST refill and take in one atomic step with respect to every
///   other caller of the same store, so a fleet admits at most `rpm` (+ one per replica, for
///   clock and lease effects) requests of a key per minute.
/// - The buckets MUST stay bounded in number whatever the number of distinct tokens (evict the
///   least recently used; an evicted bucket comes back full: eviction is lenient, never a
///   false deny).
/// - Time is the implementation's own clock (the in-process buckets: a monotonic clock; a
///   shared store: one clock for every replica, such as the database server's), so it is not
///   a parameter.
pub trait KeyRateLimiter: Send + Sync {
    /// Whether the buckets live outside this process (see [`SpendAdmission::shared`]).
    fn shared(&self) -> bool;

    /// Take one token from `bucket` (the SHA-256 hex of the presented token) at `rpm`,
    /// creating the bucket full when absent.
    fn try_take(&self, bucket: &str, rpm: u32) -> Answer<Result<Take, StoreUnavailable>>;
}
