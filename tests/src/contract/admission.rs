//! The admission contract: one `pub async fn` per clause of `metis_ports::admission`
//! (`SpendAdmission`, `KeyRateLimiter`), run by `tests/tests/suite/admission_contract.rs`
//! against the in-process implementations (`metis_usecases::{SpendLedger, KeyBuckets}`) and
//! the shared-store fakes (`metis_ports::fakes`). A store shared by replicas (PostgreSQL)
//! adds a fixture here and runs the same list, plus the `shared_*` clauses.
//!
//! A backend hands out handles on one store: two handles are two replicas on one database
//! (the in-process implementations hand out the same object: one process).

use std::sync::Arc;

use metis_domain::spend::{Budget, Caps, KEY_DAILY, SpendState};
use metis_domain::time::Timestamp;
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

fn budget(account: &str, daily: Option<f64>) -> Budget {
    Budget {
        account: Arc::from(account),
        caps: Caps {
            daily_usd: daily,
            monthly_usd: None,
        },
    }
}

#[expect(clippy::panic, reason = "a contract failure fails the test")]
async fn ok<T>(a: Answer<Result<T, metis_ports::admission::StoreUnavailable>>) -> T {
    match a.get().await {
        Ok(v) => v,
        Err(e) => panic!("the store did not answer: {e}"),
    }
}

fn settlement(id: u128, account: &str, reserved: f64, cost: f64, at: Timestamp) -> Settlement {
    Settlement {
        id: HoldId(id),
        account: Arc::from(account),
        reserved_usd: reserved,
        cost_usd: cost,
        at,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
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
                ok(store.reserve(HoldId(i), &budget("acct", Some(1.0)), 0.3, NOW)).await;
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
    let s = ok(b.handle().balance("acct", NOW)).await;
    assert!(close(s.reserved_usd, 1.2), "{s:?}");
}

/// A refused reservation holds nothing; a check holds nothing.
pub async fn a_refused_reservation_and_a_check_hold_nothing(b: &dyn SpendBackend) {
    let store = b.handle();
    let capped = budget("acct", Some(1.0));
    let first = ok(store.reserve(HoldId(1), &capped, 1.0, NOW)).await;
    assert!(first.verdict.is_ok());
    let refused = ok(store.reserve(HoldId(2), &capped, 0.5, NOW)).await;
    let exceeded = refused.verdict.as_ref().err().map(|e| e.scope);
    assert_eq!(exceeded, Some(KEY_DAILY));
    assert!(close(refused.balance.reserved_usd, 1.0), "{refused:?}");
    let checked = ok(store.check(&capped, NOW)).await;
    assert!(checked.verdict.is_err());
    let s = ok(store.balance("acct", NOW)).await;
    assert!(close(s.reserved_usd, 1.0), "{s:?}");
}

/// A settlement replaces its reservation by the actual cost; one the store holds no
/// reservation for (`reserved_usd` 0) charges its cost all the same.
pub async fn a_settlement_replaces_the_reservation_by_the_cost(b: &dyn SpendBackend) {
    let store = b.handle();
    let c = ok(store.reserve(HoldId(1), &budget("acct", Some(5.0)), 0.5, NOW)).await;
    assert!(c.verdict.is_ok());
    let after = ok(store.settle(&settlement(1, "acct", 0.5, 0.2, NOW))).await;
    assert!(
        close(after.day_usd, 0.2) && close(after.month_usd, 0.2) && after.reserved_usd == 0.0,
        "{after:?}"
    );
    let after = ok(store.settle(&settlement(2, "acct", 0.0, 0.3, NOW))).await;
    assert!(close(after.day_usd, 0.5), "{after:?}");
    let other = ok(store.settle(&settlement(3, "never-reserved", 0.0, 0.7, NOW))).await;
    assert!(close(other.day_usd, 0.7), "{other:?}");
}

/// Windows are UTC and follow `SpendState`: the day rolls at midnight, the month keeps its
/// spend; a settlement replayed after its day charges only the month.
pub async fn windows_roll_over_in_utc_as_the_domain_says(b: &dyn SpendBackend) {
    let store = b.handle();
    let _ = ok(store.settle(&settlement(1, "acct", 0.0, 2.0, NOW))).await;
    let tomorrow = ok(store.balance("acct", NOW + DAY)).await;
    let mut expected = SpendState::new(NOW);
    expected.settle(0.0, 2.0, NOW);
    expected.roll(NOW + DAY);
    assert_eq!(
        (tomorrow.day_usd, tomorrow.month_usd),
        (expected.day_usd, expected.month_usd)
    );
    let c = ok(store.check(&budget("acct", Some(1.0)), NOW + DAY)).await;
    assert!(c.verdict.is_ok(), "yesterday's spend does not count today");
    let late = ok(store.settle(&settlement(2, "acct", 0.0, 0.5, NOW))).await;
    assert!(
        late.day_usd == 0.0 && close(late.month_usd, 2.5),
        "{late:?}"
    );
    let unknown = ok(store.balance("nobody", NOW)).await;
    assert_eq!(unknown, SpendState::new(NOW));
}

/// Alerts are raised once per window and level, whichever handle asks.
pub async fn alerts_are_raised_once_per_window_across_handles(b: &dyn SpendBackend) {
    let (one, two) = (b.handle(), b.handle());
    let capped = budget("acct", Some(1.0));
    let _ = ok(one.settle(&settlement(1, "acct", 0.0, 0.85, NOW))).await;
    let first = ok(one.check(&capped, NOW)).await;
    let alerts = first.verdict.unwrap_or_default();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts.first().map(|a| a.severity), Some("warning"));
    let again = ok(two.check(&capped, NOW)).await;
    assert_eq!(again.verdict.map(|a| a.len()), Ok(0), "raised once");
    let next_day = ok(two.check(&capped, NOW + DAY)).await;
    assert_eq!(
        next_day.verdict.map(|a| a.len()),
        Ok(0),
        "new day, no spend"
    );
}

/// A store shared by processes applies a settlement at most once per hold id: repeating one
/// whose first attempt was applied (its answer was lost) changes nothing.
pub async fn shared_a_repeated_settlement_changes_nothing(b: &dyn SpendBackend) {
    let (one, two) = (b.handle(), b.handle());
    assert!(one.shared(), "this clause is for stores shared by replicas");
    let c = ok(one.reserve(HoldId(7), &budget("acct", Some(5.0)), 1.0, NOW)).await;
    assert!(c.verdict.is_ok());
    let s = settlement(7, "acct", 1.0, 0.4, NOW);
    let _ = ok(one.settle(&s)).await;
    let again = ok(two.settle(&s)).await;
    assert!(
        close(again.day_usd, 0.4) && again.reserved_usd == 0.0,
        "charged and released once: {again:?}"
    );
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
