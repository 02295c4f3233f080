//! The admission contract: one `pub async fn` per clause of `metis_ports::admission`
//! (`SpendAdmission`, `KeyRateLimiter`), run by `tests/tests/suite/admission_contract.rs`
//! against the in-process implementations (`metis_usecases::{SpendLedger, KeyBuckets}`) and
//! the shared-store fakes (`metis_ports::fakes`). A store shared by replicas (PostgreSQL)
//! adds a fixture here and runs the same list, plus the `shared_*` clauses.
//!
//! A backend hands out handles on one store: two handles are two replicas on one database
//! (the in-process implementations hand out the same object: one process).

use std::sync::Arc;

use metis_domain::budgets::ScopeKind;
use metis_domain::spend::{Budget, BudgetLine, Caps, KEY_DAILY, SpendState};
use metis_domain::time::{Calendar, Timestamp};
use metis_ports::admission::{
    Answer, Checked, HoldId, KeyRateLimiter, Settlement, SpendAdmission, Take,
};
use metis_ports::fakes::{FakeKeyLimiter, FakeSpendStore};
use metis_usecases::{KeyBuckets, SpendLedger};

/// Handles on one spend store.
pub trait SpendBackend: Send + Sync {
    fn handle(&self) -> Arc<dyn SpendAdmission>;
}

/// Handles on one set of per-key buckets.
pub trait LimitBackend: Send + Sync {
    fn handle(&self) -> Arc<dyn KeyRateLimiter>;
}

struct Same<T: ?Sized>(Arc<T>);

impl SpendBackend for Same<SpendLedger> {
    fn handle(&self) -> Arc<dyn SpendAdmission> {
        Arc::clone(&self.0) as Arc<dyn SpendAdmission>
    }
}

impl SpendBackend for FakeSpendStore {
    fn handle(&self) -> Arc<dyn SpendAdmission> {
        Arc::new(self.clone())
    }
}

impl LimitBackend for Same<KeyBuckets> {
    fn handle(&self) -> Arc<dyn KeyRateLimiter> {
        Arc::clone(&self.0) as Arc<dyn KeyRateLimiter>
    }
}

impl LimitBackend for FakeKeyLimiter {
    fn handle(&self) -> Arc<dyn KeyRateLimiter> {
        Arc::new(self.clone())
    }
}

/// The in-process spend ledger of a single node.
#[must_use]
pub fn in_process_spend() -> Box<dyn SpendBackend> {
    Box::new(Same(Arc::new(SpendLedger::default())))
}

/// The shared spend store fake.
#[must_use]
pub fn fake_spend() -> Box<dyn SpendBackend> {
    Box::new(FakeSpendStore::new())
}

/// The in-process per-key buckets of a single node.
#[must_use]
pub fn in_process_limits() -> Box<dyn LimitBackend> {
    Box::new(Same(Arc::new(KeyBuckets::new(10_000))))
}

/// Handles on one PostgreSQL database (a fresh scratch database per case): each handle is a
/// separate pool, as each replica of a fleet has its own.
struct Postgres {
    scratch: metis_storage_postgres::ScratchDatabase,
}

/// A fixture step that must work for any case to run.
fn setup<T>(what: &str, r: Result<T, metis_storage_postgres::DbError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            #[expect(clippy::panic, reason = "fixture setup failure aborts the test")]
            {
                panic!("PostgreSQL admission contract: {what}: {e}")
            }
        }
    }
}

impl Postgres {
    fn new() -> Self {
        let scratch = setup(
            "a scratch database",
            metis_storage_postgres::ScratchDatabase::from_env(),
        );
        let db = Postgres::pool(&scratch);
        let migrated = db.block_on({
            let db = db.clone();
            async move { metis_storage_postgres::admission::migrate(&db).await }
        });
        setup("migrating the admission tables", migrated);
        Postgres { scratch }
    }

    fn pool(scratch: &metis_storage_postgres::ScratchDatabase) -> metis_storage_postgres::Db {
        setup(
            "a pool",
            metis_storage_postgres::Db::new(scratch.config().clone()),
        )
    }
}

impl SpendBackend for Postgres {
    fn handle(&self) -> Arc<dyn SpendAdmission> {
        Arc::new(metis_storage_postgres::admission::PgSpendAdmission::new(
            Postgres::pool(&self.scratch),
        ))
    }
}

impl LimitBackend for Postgres {
    fn handle(&self) -> Arc<dyn KeyRateLimiter> {
        Arc::new(metis_storage_postgres::admission::PgKeyRateLimiter::new(
            Postgres::pool(&self.scratch),
            100_000,
        ))
    }
}

/// The PostgreSQL spend store (`METIS_TEST_DATABASE_URL`).
#[must_use]
pub fn postgres_spend() -> Box<dyn SpendBackend> {
    Box::new(Postgres::new())
}

/// The PostgreSQL per-key buckets (`METIS_TEST_DATABASE_URL`).
#[must_use]
pub fn postgres_limits() -> Box<dyn LimitBackend> {
    Box::new(Postgres::new())
}

/// The shared per-key limiter fake.
#[must_use]
pub fn fake_limits() -> Box<dyn LimitBackend> {
    Box::new(FakeKeyLimiter::new(10_000))
}

/// 2026-09-21T14:13:20Z.
const NOW: Timestamp = 1_790_000_000_000_000;
const DAY: Timestamp = 86_400_000_000;
const CAL: Calendar = Calendar::CALENDAR_MONTH;

fn caps(daily: Option<f64>, monthly: Option<f64>) -> Caps {
    Caps {
        daily_usd: daily,
        monthly_usd: monthly,
        ..Caps::default()
    }
}

fn budget(account: &str, daily: Option<f64>) -> Budget {
    Budget::key_only(account, caps(daily, None))
}

/// A key of team `t`: its own line (capped daily when `key_daily`), a user line (uncapped)
/// and the team line capped at `team_monthly`.
fn team_key(key: &str, key_daily: Option<f64>, team_monthly: f64) -> Budget {
    let line = |kind, account: &str, caps| BudgetLine {
        kind,
        account: Arc::from(account),
        caps,
    };
    Budget {
        lines: Arc::new([
            line(ScopeKind::Key, key, caps(key_daily, None)),
            line(ScopeKind::User, &format!("user:{key}"), Caps::default()),
            line(ScopeKind::Team, "team:t", caps(None, Some(team_monthly))),
        ]),
    }
}

#[expect(clippy::panic, reason = "a contract failure fails the test")]
async fn ok<T>(a: Answer<Result<T, metis_ports::admission::StoreUnavailable>>) -> T {
    match a.get().await {
        Ok(v) => v,
        Err(e) => panic!("the store did not answer: {e}"),
    }
}

fn settlement(id: u128, budget: Budget, reserved: f64, cost: f64, at: Timestamp) -> Settlement {
    Settlement {
        id: HoldId(id),
        budget,
        reserved_usd: reserved,
        cost_usd: cost,
        at,
        calendar: CAL,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

async fn state(store: &Arc<dyn SpendAdmission>, account: &str, now: Timestamp) -> SpendState {
    ok(store.balance(account, CAL, now)).await
}

/// `reserve` checks every cap and holds the estimate in one atomic step with respect to every
/// other caller of the store: 40 concurrent reservations of 0.30 against a 1.00 cap, through
/// two handles, admit exactly four (0, 0.3, 0.6 and 0.9 are under the cap).
pub async fn concurrent_reservations_overshoot_a_cap_by_at_most_one_request(b: &dyn SpendBackend) {
    let handles = [b.handle(), b.handle()];
    let mut tasks = Vec::new();
    for i in 0..40u128 {
        let store = Arc::clone(&handles[usize::from(i % 2 == 0)]);
        tasks.push(tokio::spawn(async move {
            let c: Checked =
                ok(store.reserve(HoldId(i), &budget("acct", Some(1.0)), 0.3, CAL, NOW)).await;
            c.verdict.is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        if matches!(t.await, Ok(true)) {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 4,
        "admitted {admitted} reservations of 0.30 under a 1.00 cap"
    );
    let s = state(&b.handle(), "acct", NOW).await;
    assert!(close(s.reserved_usd, 1.2), "{s:?}");
}

/// The same across the keys of one team: 40 concurrent reservations of 0.30 by four keys
/// (each with room of its own) through two handles against the team's 1.00 monthly cap admit
/// exactly four, and the hold is on the capped lines only.
pub async fn concurrent_reservations_across_keys_overshoot_a_shared_cap_by_at_most_one_request(
    b: &dyn SpendBackend,
) {
    let handles = [b.handle(), b.handle()];
    let mut tasks = Vec::new();
    for i in 0..40u128 {
        let store = Arc::clone(&handles[usize::from(i % 2 == 0)]);
        tasks.push(tokio::spawn(async move {
            let key = format!("gk_{}", i % 4);
            let c: Checked =
                ok(store.reserve(HoldId(i), &team_key(&key, Some(5.0), 1.0), 0.3, CAL, NOW)).await;
            c.verdict.is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        if matches!(t.await, Ok(true)) {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 4,
        "admitted {admitted} of 0.30 under the team's 1.00"
    );
    let store = b.handle();
    assert!(close(state(&store, "team:t", NOW).await.reserved_usd, 1.2));
    let mut keys_held = 0.0;
    for k in 0..4 {
        keys_held += state(&store, &format!("gk_{k}"), NOW).await.reserved_usd;
        let user = state(&store, &format!("user:gk_{k}"), NOW).await;
        assert_eq!(user.reserved_usd, 0.0, "an uncapped line holds nothing");
    }
    assert!(
        close(keys_held, 1.2),
        "every admitted hold is on its key line too"
    );
}

/// A refused reservation holds nothing, on any line; a check holds nothing.
pub async fn a_refused_reservation_and_a_check_hold_nothing(b: &dyn SpendBackend) {
    let store = b.handle();
    let capped = budget("acct", Some(1.0));
    let first = ok(store.reserve(HoldId(1), &capped, 1.0, CAL, NOW)).await;
    assert!(first.verdict.is_ok());
    let refused = ok(store.reserve(HoldId(2), &capped, 0.5, CAL, NOW)).await;
    let exceeded = refused.verdict.as_ref().err().map(|e| e.scope);
    assert_eq!(exceeded, Some(KEY_DAILY));
    assert!(close(state(&store, "acct", NOW).await.reserved_usd, 1.0));
    let checked = ok(store.check(&capped, CAL, NOW)).await;
    assert!(checked.verdict.is_err());
    assert!(close(state(&store, "acct", NOW).await.reserved_usd, 1.0));
    // The team line is full: a key with room of its own is refused, and its line holds
    // nothing; the refusal names the team's cap and its spend.
    let _ = ok(store.settle(&settlement(3, team_key("gk_x", None, 2.0), 0.0, 2.0, NOW))).await;
    let refused =
        ok(store.reserve(HoldId(4), &team_key("gk_y", Some(9.0), 2.0), 0.5, CAL, NOW)).await;
    match refused.verdict {
        Err(e) => assert_eq!(
            (e.scope, &*e.account, e.limit_usd, e.current_usd),
            ("team_monthly", "team:t", 2.0, 2.0)
        ),
        Ok(_) => refused_at_the_team_cap(),
    }
    assert_eq!(state(&store, "gk_y", NOW).await.reserved_usd, 0.0);
    assert_eq!(state(&store, "team:t", NOW).await.reserved_usd, 0.0);
}

#[expect(clippy::panic, reason = "a contract failure fails the test")]
fn refused_at_the_team_cap() {
    panic!("a reservation was admitted on a team at its cap");
}

/// A settlement replaces its reservation by the cost on every capped line and charges every
/// line; one the store holds no reservation for (`reserved_usd` 0) charges its cost all the
/// same.
pub async fn a_settlement_replaces_the_reservation_by_the_cost(b: &dyn SpendBackend) {
    let store = b.handle();
    let c = ok(store.reserve(HoldId(1), &budget("acct", Some(5.0)), 0.5, CAL, NOW)).await;
    assert!(c.verdict.is_ok());
    let _ = ok(store.settle(&settlement(1, budget("acct", Some(5.0)), 0.5, 0.2, NOW))).await;
    let after = state(&store, "acct", NOW).await;
    assert!(
        close(after.day_usd, 0.2)
            && close(after.week_usd, 0.2)
            && close(after.month_usd, 0.2)
            && after.reserved_usd == 0.0,
        "{after:?}"
    );
    let _ = ok(store.settle(&settlement(2, budget("acct", None), 0.0, 0.3, NOW))).await;
    assert!(close(state(&store, "acct", NOW).await.day_usd, 0.5));
    let _ = ok(store.settle(&settlement(
        3,
        budget("never-reserved", None),
        0.0,
        0.7,
        NOW,
    )))
    .await;
    assert!(close(
        state(&store, "never-reserved", NOW).await.day_usd,
        0.7
    ));
    // Lines: the hold goes from the capped key and team lines; the cost reaches all three.
    let team = team_key("gk_t", Some(5.0), 10.0);
    let c = ok(store.reserve(HoldId(4), &team, 1.0, CAL, NOW)).await;
    assert!(c.verdict.is_ok());
    let _ = ok(store.settle(&settlement(4, team, 1.0, 0.25, NOW))).await;
    for account in ["gk_t", "user:gk_t", "team:t"] {
        let s = state(&store, account, NOW).await;
        assert!(
            close(s.month_usd, 0.25) && s.reserved_usd == 0.0,
            "{account}: {s:?}"
        );
    }
}

/// Windows follow `metis_domain::spend`: the day rolls at midnight UTC, the week on Monday,
/// the month keeps its spend; a settlement replayed after its day charges only the week and
/// month.
pub async fn windows_roll_over_in_utc_as_the_domain_says(b: &dyn SpendBackend) {
    let store = b.handle();
    let _ = ok(store.settle(&settlement(1, budget("acct", None), 0.0, 2.0, NOW))).await;
    let tomorrow = state(&store, "acct", NOW + DAY).await;
    let mut expected = SpendState::new(NOW, CAL);
    expected.settle(0.0, 2.0, NOW, CAL);
    expected.roll(NOW + DAY, CAL);
    assert_eq!(
        (tomorrow.day_usd, tomorrow.week_usd, tomorrow.month_usd),
        (expected.day_usd, expected.week_usd, expected.month_usd)
    );
    let c = ok(store.check(&budget("acct", Some(1.0)), CAL, NOW + DAY)).await;
    assert!(c.verdict.is_ok(), "yesterday's spend does not count today");
    let _ = ok(store.settle(&settlement(2, budget("acct", None), 0.0, 0.5, NOW))).await;
    let late = state(&store, "acct", NOW + DAY).await;
    assert!(
        late.day_usd == 0.0 && close(late.week_usd, 2.5) && close(late.month_usd, 2.5),
        "{late:?}"
    );
    let unknown = state(&store, "nobody", NOW).await;
    assert_eq!(unknown, SpendState::new(NOW, CAL));
}

/// Alerts are raised once per window and level, whichever handle asks; the first request
/// refused at a cap raises the 100 % level.
pub async fn alerts_are_raised_once_per_window_across_handles(b: &dyn SpendBackend) {
    let (one, two) = (b.handle(), b.handle());
    let capped = budget("acct", Some(1.0));
    let _ = ok(one.settle(&settlement(1, budget("acct", None), 0.0, 0.85, NOW))).await;
    let first = ok(one.check(&capped, CAL, NOW)).await;
    let alerts = first.verdict.unwrap_or_default();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts.first().map(|a| a.severity), Some("warning"));
    let again = ok(two.check(&capped, CAL, NOW)).await;
    assert_eq!(again.verdict.map(|a| a.len()), Ok(0), "raised once");
    let _ = ok(two.settle(&settlement(2, budget("acct", None), 0.0, 0.15, NOW))).await;
    let refused = ok(two.check(&capped, CAL, NOW)).await;
    let raised: Vec<_> = refused
        .verdict
        .err()
        .map(|e| e.alerts.iter().map(|a| (a.level, a.severity)).collect())
        .unwrap_or_default();
    assert_eq!(
        raised,
        [(100, "exhausted")],
        "the refusal at the cap raises 100 %"
    );
    let refused_again = ok(one.check(&capped, CAL, NOW)).await;
    assert_eq!(refused_again.verdict.err().map(|e| e.alerts.len()), Some(0));
    let next_day = ok(two.check(&capped, CAL, NOW + DAY)).await;
    assert_eq!(
        next_day.verdict.map(|a| a.len()),
        Ok(0),
        "new day, no spend"
    );
}

/// A store shared by processes applies a settlement at most once per hold id: repeating one
/// whose first attempt was applied (its answer was lost) changes nothing, on any line.
pub async fn shared_a_repeated_settlement_changes_nothing(b: &dyn SpendBackend) {
    let (one, two) = (b.handle(), b.handle());
    assert!(one.shared(), "this clause is for stores shared by replicas");
    let team = team_key("gk_r", Some(5.0), 10.0);
    let c = ok(one.reserve(HoldId(7), &team, 1.0, CAL, NOW)).await;
    assert!(c.verdict.is_ok());
    let s = settlement(7, team, 1.0, 0.4, NOW);
    let _ = ok(one.settle(&s)).await;
    let _ = ok(two.settle(&s)).await;
    for account in ["gk_r", "user:gk_r", "team:t"] {
        let again = state(&two, account, NOW).await;
        assert!(
            close(again.day_usd, 0.4) && again.reserved_usd == 0.0,
            "{account} charged and released once: {again:?}"
        );
    }
}

fn taken(t: Take) -> bool {
    t == Take::Allowed
}

/// A bucket admits `rpm` requests at once, then denies with a `Retry-After` of at least one
/// second and at most the time one token takes.
pub async fn a_bucket_admits_rpm_then_denies_with_retry_after(b: &dyn LimitBackend) {
    let l = b.handle();
    for i in 0..5 {
        assert!(taken(ok(l.try_take("tok", 5)).await), "request {i} of 5");
    }
    match ok(l.try_take("tok", 5)).await {
        Take::Denied { retry_after_secs } => {
            assert!((1..=12).contains(&retry_after_secs), "{retry_after_secs}");
        }
        Take::Allowed => unreachable_allowed(),
    }
}

#[expect(clippy::panic, reason = "a contract failure fails the test")]
fn unreachable_allowed() {
    panic!("a sixth request within the minute was admitted at 5 rpm");
}

/// Refill and take are one atomic step for every caller of the store: 4 rpm through two
/// handles, concurrently, admits 4.
pub async fn a_key_s_bucket_is_one_across_handles(b: &dyn LimitBackend) {
    let handles = [b.handle(), b.handle()];
    let mut tasks = Vec::new();
    for i in 0..20usize {
        let l = Arc::clone(&handles[i % 2]);
        tasks.push(tokio::spawn(async move { ok(l.try_take("tok", 4)).await }));
    }
    let mut admitted = 0;
    for t in tasks {
        if matches!(t.await, Ok(Take::Allowed)) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4);
}

/// Buckets are per token: one key's flood does not deny another.
pub async fn buckets_are_per_token(b: &dyn LimitBackend) {
    let l = b.handle();
    assert!(taken(ok(l.try_take("a", 1)).await));
    assert!(!taken(ok(l.try_take("a", 1)).await));
    assert!(taken(ok(l.try_take("b", 1)).await));
}
