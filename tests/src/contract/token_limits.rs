//! The token-limit contract: one `pub async fn` per clause of
//! `metis_ports::token_limits::TokenRateLimiter`, run by
//! `tests/tests/suite/token_limits_contract.rs` against the in-process buckets
//! (`metis_usecases::TokenBuckets`) and PostgreSQL (`metis_storage_postgres::token_limits`).
//!
//! A backend hands out handles on one store: two handles are two replicas on one database
//! (the in-process buckets hand out the same object: one process).

use std::sync::Arc;

use metis_domain::budgets::ScopeKind;
use metis_domain::ratelimit::TpmLine;
use metis_ports::admission::Answer;
use metis_ports::token_limits::{TokenRateLimiter, TokenTake};
use metis_usecases::TokenBuckets;

/// Handles on one set of token buckets.
pub trait TokenBackend: Send + Sync {
    fn handle(&self) -> Arc<dyn TokenRateLimiter>;
}

struct Same(Arc<TokenBuckets>);

impl TokenBackend for Same {
    fn handle(&self) -> Arc<dyn TokenRateLimiter> {
        Arc::clone(&self.0) as Arc<dyn TokenRateLimiter>
    }
}

/// The in-process token buckets of a single node.
#[must_use]
pub fn in_process_tokens() -> Box<dyn TokenBackend> {
    Box::new(Same(Arc::new(TokenBuckets::new(10_000))))
}

/// Handles on one PostgreSQL database (a fresh scratch database per case): each handle is a
/// separate pool, as each replica of a fleet has its own.
struct Postgres {
    scratch: metis_storage_postgres::ScratchDatabase,
}

fn setup<T>(what: &str, r: Result<T, metis_storage_postgres::DbError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            #[expect(clippy::panic, reason = "fixture setup failure aborts the test")]
            {
                panic!("PostgreSQL token-limit contract: {what}: {e}")
            }
        }
    }
}

impl Postgres {
    fn pool(scratch: &metis_storage_postgres::ScratchDatabase) -> metis_storage_postgres::Db {
        setup(
            "a pool",
            metis_storage_postgres::Db::new(scratch.config().clone()),
        )
    }
}

impl TokenBackend for Postgres {
    fn handle(&self) -> Arc<dyn TokenRateLimiter> {
        Arc::new(metis_storage_postgres::token_limits::PgTokenLimiter::new(
            Postgres::pool(&self.scratch),
            100_000,
        ))
    }
}

/// The PostgreSQL token buckets (`METIS_TEST_DATABASE_URL`).
#[must_use]
pub fn postgres_tokens() -> Box<dyn TokenBackend> {
    let scratch = setup(
        "a scratch database",
        metis_storage_postgres::ScratchDatabase::from_env(),
    );
    let db = Postgres::pool(&scratch);
    let migrated = db.block_on({
        let db = db.clone();
        async move { metis_storage_postgres::token_limits::migrate(&db).await }
    });
    setup("migrating the token-limit table", migrated);
    Box::new(Postgres { scratch })
}

fn line(scope: ScopeKind, bucket: &str, tpm: u32) -> TpmLine {
    TpmLine {
        scope,
        bucket: bucket.to_owned(),
        tpm,
    }
}

async fn ok<T>(a: Answer<Result<T, metis_ports::admission::StoreUnavailable>>) -> T {
    match a.get().await {
        Ok(v) => v,
        Err(e) => {
            #[expect(clippy::panic, reason = "a contract step must answer")]
            {
                panic!("token-limit store did not answer: {e}")
            }
        }
    }
}

fn denied(t: TokenTake) -> (usize, u64) {
    match t {
        TokenTake::Denied {
            line,
            retry_after_secs,
        } => (line, retry_after_secs),
        TokenTake::Allowed => (usize::MAX, 0),
    }
}

/// A take is all or none: a refusal by one bucket takes nothing from the others, and names
/// the bucket with the longest wait, whose `Retry-After` is at least 1.
pub async fn a_take_is_all_or_none_and_names_the_refusing_bucket(b: &dyn TokenBackend) {
    let l = b.handle();
    let key = line(ScopeKind::Key, "tpm:key:a", 6000);
    let team = line(ScopeKind::Team, "tpm:team:t", 600);
    assert_eq!(
        ok(l.take(std::slice::from_ref(&team), 550)).await,
        TokenTake::Allowed
    );
    // The team bucket holds ~50: 300 needs ~25 s at 10 tokens per second.
    let (which, wait) = denied(ok(l.take(&[key.clone(), team.clone()], 300)).await);
    assert_eq!(which, 1, "the team line refused");
    assert!((24..=25).contains(&wait), "retry after {wait}s");
    // The key bucket lost nothing: the whole 6000 is still there.
    assert_eq!(ok(l.take(&[key], 6000)).await, TokenTake::Allowed);
}

/// An estimate above the capacity is admitted on a full bucket and drives it below zero.
pub async fn an_estimate_above_the_capacity_passes_once_on_a_full_bucket(b: &dyn TokenBackend) {
    let l = b.handle();
    let key = line(ScopeKind::Key, "tpm:key:big", 60);
    assert_eq!(
        ok(l.take(std::slice::from_ref(&key), 600)).await,
        TokenTake::Allowed
    );
    // -540 tokens at 1 per second: one token needs ~541 s.
    let (_, wait) = denied(ok(l.take(&[key], 1)).await);
    assert!((540..=541).contains(&wait), "retry after {wait}s");
}

/// Settlement refunds (never beyond the capacity) or charges (below zero) the difference.
pub async fn settlement_refunds_and_charges_the_difference(b: &dyn TokenBackend) {
    let l = b.handle();
    let key = line(ScopeKind::Key, "tpm:key:s", 1000);
    let lines = [key];
    assert_eq!(ok(l.take(&lines, 1000)).await, TokenTake::Allowed);
    // Actual usage 200 of the 1000 taken: 800 back.
    ok(l.adjust(&lines, -800)).await;
    assert_eq!(ok(l.take(&lines, 790)).await, TokenTake::Allowed);
    // A refund larger than what was taken fills the bucket, no more.
    ok(l.adjust(&lines, -100_000)).await;
    assert_eq!(ok(l.take(&lines, 1000)).await, TokenTake::Allowed);
    let (_, wait) = denied(ok(l.take(&lines, 1001)).await);
    assert!(wait >= 1);
    // Usage above the estimate: 500 more charged, the bucket is ~500 below zero.
    ok(l.adjust(&lines, 500)).await;
    let (_, wait) = denied(ok(l.take(&lines, 1)).await);
    assert!((29..=31).contains(&wait), "retry after {wait}s");
}

/// The buckets are one across handles (replicas): concurrent takes never admit more than
/// the capacity allows.
pub async fn a_bucket_is_one_across_handles(b: &dyn TokenBackend) {
    let handles = [b.handle(), b.handle()];
    let team = line(ScopeKind::Team, "tpm:team:shared", 60_000);
    let mut tasks = Vec::new();
    for i in 0..40usize {
        let l = Arc::clone(&handles[i % 2]);
        // Each request has its own key bucket and shares the team's.
        let lines = vec![
            line(ScopeKind::Key, &format!("tpm:key:{i}"), 100_000),
            team.clone(),
        ];
        tasks.push(tokio::spawn(async move { ok(l.take(&lines, 5_000)).await }));
    }
    let mut admitted = 0;
    for t in tasks {
        if matches!(t.await, Ok(TokenTake::Allowed)) {
            admitted += 1;
        }
    }
    // 60 000 / 5 000 = 12, plus at most one more from refill during the test (1000 per
    // second: a 5 000-token request needs 5 s of it).
    assert!((12..=13).contains(&admitted), "admitted {admitted}");
}
