//! Token-per-minute buckets held in the database, so a key's, user's or team's token limit
//! holds across every replica of a fleet (`metis_ports::token_limits`).
//!
//! Every step is one transaction: the request's bucket rows are locked (created full when
//! absent) one by one in name order — so two requests sharing buckets never lock them in
//! opposite orders and deadlock — together with the database server's clock, the domain's
//! rule (`metis_domain::ratelimit::take_all` / `adjust_all`) is applied in Rust, and the rows
//! are written back. The rule exists once, in the domain; the database only makes the step
//! atomic across processes.
//!
//! Invariants:
//! - Buckets use the database server's clock, one clock for every replica.
//! - A bucket idle for a minute is full again, unless a settlement drove it below zero: idle
//!   full buckets are deleted without changing any decision; the sweep then trims the table
//!   to the most recently used `max_buckets` rows (an evicted bucket comes back full: lenient,
//!   never a false deny).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metis_domain::ratelimit::{TokenBucket, TpmLine, adjust_all, take_all};
use metis_ports::admission::{Answer, StoreUnavailable};
use metis_ports::token_limits::{TokenRateLimiter, TokenTake};

use crate::pool::{Db, DbError};
use crate::schema::{Component, Step};

/// Sweep idle buckets once per this many takes (per process).
const SWEEP_EVERY: u64 = 1024;

/// A bucket idle this long has refilled by its whole capacity.
const BUCKET_IDLE: Duration = Duration::from_secs(60);

const STORE: &str = "token-limit store";

/// The token-limit table.
pub const COMPONENT: Component = Component {
    name: "token_limits",
    steps: &[Step {
        description: "create token_buckets",
        sql: "
CREATE TABLE token_buckets (
    bucket TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    last_us BIGINT NOT NULL
);
CREATE INDEX token_buckets_last_us ON token_buckets (last_us);
",
    }],
    compatible_from: 1,
};

/// Bring the token-limit table to this binary's version.
///
/// # Errors
/// The database is unavailable or newer than this binary.
pub async fn migrate(db: &Db) -> Result<(), DbError> {
    let mut client = db.get().await?;
    crate::schema::migrate(&mut client, &COMPONENT).await?;
    Ok(())
}

/// Token buckets in the database.
#[derive(Debug)]
pub struct PgTokenLimiter {
    db: Db,
    max_buckets: i64,
    takes: AtomicU64,
}

/// What one step does to the locked buckets.
#[derive(Debug, Clone, Copy)]
enum Step2 {
    Take(u64),
    Adjust(i64),
}

impl PgTokenLimiter {
    /// Over `db` (its `token_limits` component migrated), keeping at most `max_buckets` rows.
    #[must_use]
    pub fn new(db: Db, max_buckets: usize) -> Self {
        Self {
            db,
            max_buckets: i64::try_from(max_buckets).unwrap_or(i64::MAX),
            takes: AtomicU64::new(0),
        }
    }

    /// Lock `lines`' rows in name order, apply `step`, write back.
    async fn apply(db: Db, lines: Vec<(String, u32)>, step: Step2) -> Result<TokenTake, DbError> {
        let mut client = db.get().await?;
        let tx = client.transaction().await?;
        let mut order: Vec<usize> = (0..lines.len()).collect();
        order.sort_by(|a, b| lines[*a].0.cmp(&lines[*b].0));
        let mut buckets = vec![TokenBucket::full(0, 0); lines.len()];
        let mut now_us = 0i64;
        for i in order {
            let (name, tpm) = &lines[i];
            let row = tx
                .query_one(
                    "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us)
                     INSERT INTO token_buckets AS b (bucket, tokens, last_us)
                     SELECT $1, $2, now.us FROM now
                     ON CONFLICT (bucket) DO UPDATE SET bucket = b.bucket
                     RETURNING b.tokens, b.last_us, (SELECT us FROM now)",
                    &[name, &f64::from(*tpm)],
                )
                .await?;
            // The latest clock reading of the transaction: rows read earlier only refill
            // a few µs more.
            now_us = now_us.max(row.get(2));
            buckets[i] = TokenBucket::from_parts(row.get(0), row.get(1));
        }
        let tpms: Vec<u32> = lines.iter().map(|(_, t)| *t).collect();
        let decision = match step {
            Step2::Take(amount) => match take_all(&mut buckets, &tpms, amount, now_us) {
                Ok(()) => TokenTake::Allowed,
                Err((line, retry_after_secs)) => TokenTake::Denied {
                    line,
                    retry_after_secs,
                },
            },
            Step2::Adjust(delta) => {
                adjust_all(&mut buckets, &tpms, delta, now_us);
                TokenTake::Allowed
            }
        };
        if decision == TokenTake::Allowed {
            for ((name, _), b) in lines.iter().zip(&buckets) {
                tx.execute(
                    "UPDATE token_buckets SET tokens = $2, last_us = $3 WHERE bucket = $1",
                    &[name, &b.tokens(), &b.last_us().max(now_us)],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(decision)
    }

    /// Delete buckets idle for a minute that are not below zero (full again: no decision
    /// changes), then trim to the most recently used `max` rows.
    async fn sweep(db: Db, max: i64) -> Result<u64, DbError> {
        let client = db.get().await?;
        let idle_us = i64::try_from(BUCKET_IDLE.as_micros()).unwrap_or(i64::MAX);
        let idle = client
            .execute(
                "DELETE FROM token_buckets
                 WHERE tokens >= 0
                   AND last_us < (extract(epoch FROM clock_timestamp()) * 1000000)::bigint - $1",
                &[&idle_us],
            )
            .await?;
        let trimmed = client
            .execute(
                "DELETE FROM token_buckets WHERE bucket IN (
                     SELECT bucket FROM token_buckets ORDER BY last_us DESC OFFSET $1)",
                &[&max],
            )
            .await?;
        Ok(idle + trimmed)
    }

    fn owned(lines: &[TpmLine]) -> Vec<(String, u32)> {
        lines.iter().map(|l| (l.bucket.clone(), l.tpm)).collect()
    }
}

fn unavailable(e: &DbError) -> StoreUnavailable {
    StoreUnavailable {
        store: STORE,
        message: e.to_string(),
    }
}

impl TokenRateLimiter for PgTokenLimiter {
    fn shared(&self) -> bool {
        true
    }

    fn take(&self, lines: &[TpmLine], amount: u64) -> Answer<Result<TokenTake, StoreUnavailable>> {
        let (db, lines) = (self.db.clone(), Self::owned(lines));
        let sweep = self
            .takes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY);
        let max = self.max_buckets;
        Answer::Later(Box::pin(async move {
            let taken = Self::apply(db.clone(), lines, Step2::Take(amount)).await;
            if sweep && taken.is_ok() {
                // Housekeeping never decides a request: a failure here is only logged.
                if let Err(e) = Self::sweep(db, max).await {
                    tracing::warn!(error = %e, "could not sweep idle token buckets");
                }
            }
            taken.map_err(|e| unavailable(&e))
        }))
    }

    fn adjust(&self, lines: &[TpmLine], delta: i64) -> Answer<Result<(), StoreUnavailable>> {
        let (db, lines) = (self.db.clone(), Self::owned(lines));
        Answer::Later(Box::pin(async move {
            Self::apply(db, lines, Step2::Adjust(delta))
                .await
                .map(|_| ())
                .map_err(|e| unavailable(&e))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDatabase;
    use metis_domain::budgets::ScopeKind;

    fn setup() -> Result<(ScratchDatabase, Db), DbError> {
        let scratch = ScratchDatabase::from_env()?;
        let db = Db::new(scratch.config().clone())?;
        let m = db.clone();
        db.block_on(async move { migrate(&m).await })?;
        Ok((scratch, db))
    }

    #[test]
    fn idle_full_buckets_are_swept_and_negative_ones_kept() -> Result<(), DbError> {
        let (_scratch, db) = setup()?;
        let limiter = PgTokenLimiter::new(db.clone(), 5);
        let d = db.clone();
        let (swept, left) = db.block_on(async move {
            for i in 0..8 {
                let line = TpmLine {
                    scope: ScopeKind::Key,
                    bucket: format!("tpm:key:{i}"),
                    tpm: 100,
                };
                let amount = if i == 0 { 500 } else { 10 };
                limiter
                    .take(&[line], amount)
                    .get()
                    .await
                    .map_err(|e| DbError::Stopped(e.to_string()))?;
            }
            let client = d.get().await?;
            // Two buckets idle for more than a minute; bucket 0 is still 400 below zero.
            client
                .execute(
                    "UPDATE token_buckets SET last_us = last_us - 120000000
                     WHERE bucket IN ('tpm:key:0', 'tpm:key:1')",
                    &[],
                )
                .await?;
            let swept = PgTokenLimiter::sweep(d.clone(), 5).await?;
            let left: Vec<String> = client
                .query("SELECT bucket FROM token_buckets ORDER BY bucket", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok((swept, left))
        })?;
        // 1 idle and full; then 7 left, trimmed to the newest 5 (bucket 0 is the oldest).
        assert_eq!(swept, 3);
        assert_eq!(left.len(), 5);
        assert!(!left.contains(&"tpm:key:1".to_owned()));
        Ok(())
    }
}
