//! Spend caps and per-key rate limits held in the database, so they hold across every replica
//! of a fleet (`metis_ports::admission`).
//!
//! Every step is one transaction: the rows of every account of the request's budget (its key
//! and each scope tag: `team:platform`, …) or the bucket row are locked by upserts that return
//! them, the domain's rule (`metis_domain::spend::{check, reserve}`, `TokenBucket`) is applied
//! once in Rust over all of them, and the rows are written back. The rule exists once, in the
//! domain; the database only makes the step atomic across processes.
//!
//! Invariants:
//! - A step locks its accounts in sorted account order, so two steps sharing accounts (two
//!   keys of one team, on two replicas) wait for each other and never deadlock.
//! - A reservation is one row per capped line in `spend_holds`, keyed by (hold id, account),
//!   with a lease ([`HOLD_LEASE`]). An account's `reserved_usd` is the sum of its live holds;
//!   holds whose lease ran out (their process died) are given back inside the next step on
//!   that account, so a killed replica cannot block an account for longer than the lease.
//! - A settlement is applied at most once per hold id: its id goes into `spend_settled` in the
//!   same transaction (kept [`SETTLED_KEEP`], far beyond any retry), and a repeat finds it and
//!   changes nothing. The amount released on each account is that hold's own row there (gone
//!   when the lease expired: then nothing is released twice); the cost is charged to every
//!   account of the budget.
//! - Buckets use the database server's clock, one clock for every replica. A bucket idle for a
//!   minute is full again, so idle buckets are deleted without changing any decision; the
//!   sweep also trims the table to the most recently used `max_buckets` rows (an evicted
//!   bucket comes back full: lenient, never a false deny).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metis_domain::ratelimit::TokenBucket;
use metis_domain::spend::{self, Budget, SpendState, hold_amount};
use metis_domain::time::{Calendar, Timestamp};
use metis_ports::admission::{
    Answer, Balances, Checked, HoldId, KeyRateLimiter, Settlement, SpendAdmission,
    StoreUnavailable, Take,
};
use tokio_postgres::Row;

use crate::pool::{Db, DbError};
use crate::schema::{Component, Step};

/// How long a reservation holds without being settled before it is given back: longer than
/// any call the gateway lets run (the upstream timeout), short enough that a killed replica's
/// holds come back the same hour.
pub const HOLD_LEASE: Duration = Duration::from_secs(30 * 60);

/// How long settled hold ids are remembered (a retry comes within seconds to minutes).
pub const SETTLED_KEEP: Duration = Duration::from_secs(2 * 24 * 3600);

/// A bucket idle this long is full again, so deleting it changes no decision.
const BUCKET_IDLE: Duration = Duration::from_secs(60);

/// Sweep idle buckets once per this many takes (per process).
const SWEEP_EVERY: u64 = 1024;

/// The admission tables.
pub const COMPONENT: Component = Component {
    name: "admission",
    steps: &[
        Step {
            description: "create spend_accounts, spend_holds, spend_settled, rate_buckets",
            sql: "
CREATE TABLE spend_accounts (
    account TEXT PRIMARY KEY,
    day_start BIGINT NOT NULL,
    day_usd DOUBLE PRECISION NOT NULL,
    month_start BIGINT NOT NULL,
    month_usd DOUBLE PRECISION NOT NULL,
    reserved_usd DOUBLE PRECISION NOT NULL,
    alerted SMALLINT NOT NULL
);
CREATE TABLE spend_holds (
    hold_id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    amount_usd DOUBLE PRECISION NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX spend_holds_account_expiry ON spend_holds (account, expires_at);
CREATE TABLE spend_settled (
    hold_id TEXT PRIMARY KEY,
    settled_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX spend_settled_at ON spend_settled (settled_at);
CREATE TABLE rate_buckets (
    bucket TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    last_us BIGINT NOT NULL
);
CREATE INDEX rate_buckets_last_us ON rate_buckets (last_us);
",
        },
        Step {
            description: "budget scopes (issue 20): spend_accounts gains the week window \
                (week_start, week_usd) and alert bits per window and level (alerted INTEGER; \
                the old 80/95 % day and month bits keep their meaning); spend_holds is keyed \
                by (hold_id, account), one hold per capped line. Binaries older than this step \
                cannot write the widened columns, so they are refused on this schema",
            sql: "
ALTER TABLE spend_accounts
    ADD COLUMN week_start BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN week_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    ALTER COLUMN alerted TYPE INTEGER
        USING ((alerted::integer & 3) | (((alerted::integer >> 2) & 3) << 16));
ALTER TABLE spend_holds DROP CONSTRAINT spend_holds_pkey, ADD PRIMARY KEY (hold_id, account);
",
        },
    ],
    compatible_from: 2,
};

const SPEND_STORE: &str = "spend store";
const LIMIT_STORE: &str = "rate-limit store";

/// Lock (creating when absent) the account's row and return it.
const LOCK_ACCOUNT_SQL: &str = "
INSERT INTO spend_accounts AS a
    (account, day_start, day_usd, week_start, week_usd, month_start, month_usd, reserved_usd,
     alerted)
VALUES ($1, $2, 0, $3, 0, $4, 0, 0, 0)
ON CONFLICT (account) DO UPDATE SET account = a.account
RETURNING day_start, day_usd, week_start, week_usd, month_start, month_usd, reserved_usd,
    alerted";

const WRITE_ACCOUNT_SQL: &str = "
UPDATE spend_accounts SET day_start = $2, day_usd = $3, week_start = $4, week_usd = $5,
    month_start = $6, month_usd = $7, reserved_usd = $8, alerted = $9
WHERE account = $1";

const SELECT_ACCOUNT_SQL: &str = "
SELECT day_start, day_usd, week_start, week_usd, month_start, month_usd, reserved_usd, alerted
FROM spend_accounts WHERE account = $1";

/// Expired holds of one account, removed and returned (their amounts go back).
const EXPIRE_HOLDS_SQL: &str = "
DELETE FROM spend_holds WHERE account = $1 AND expires_at < now() RETURNING amount_usd";

fn unavailable(store: &'static str, e: &DbError) -> StoreUnavailable {
    StoreUnavailable {
        store,
        message: e.to_string(),
    }
}

fn state_of(row: &Row) -> SpendState {
    SpendState {
        day_start: row.get(0),
        day_usd: row.get(1),
        week_start: row.get(2),
        week_usd: row.get(3),
        month_start: row.get(4),
        month_usd: row.get(5),
        reserved_usd: row.get(6),
        // The bits are stored as a signed column; the cast keeps every bit.
        alerted: row.get::<_, i32>(7).cast_unsigned(),
    }
}

fn hold_key(id: HoldId) -> String {
    format!("{:032x}", id.0)
}

/// Spend caps in the database.
#[derive(Debug, Clone)]
pub struct PgSpendAdmission {
    db: Db,
}

impl PgSpendAdmission {
    /// Over `db`, whose `admission` component is migrated (see [`migrate`]).
    #[must_use]
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Seed accounts that have no row yet with the spend read from the trace (the first start
    /// after moving a deployment onto PostgreSQL). Existing rows are authoritative and left
    /// alone, so replicas starting together seed each account at most once.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn seed(&self, balances: &[(Arc<str>, SpendState)]) -> Result<u64, StoreUnavailable> {
        let run = async {
            let client = self.db.get().await?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO spend_accounts
                        (account, day_start, day_usd, week_start, week_usd, month_start,
                         month_usd, reserved_usd, alerted)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8) ON CONFLICT (account) DO NOTHING",
                )
                .await?;
            let mut seeded = 0;
            for (account, s) in balances {
                seeded += client
                    .execute(
                        &stmt,
                        &[
                            &&**account,
                            &s.day_start,
                            &s.day_usd,
                            &s.week_start,
                            &s.week_usd,
                            &s.month_start,
                            &s.month_usd,
                            &s.alerted.cast_signed(),
                        ],
                    )
                    .await?;
            }
            Ok::<_, DbError>(seeded)
        };
        run.await.map_err(|e| unavailable(SPEND_STORE, &e))
    }

    /// Lock every account of `budget` (sorted order), give back their expired holds, apply
    /// the domain's check or reservation to their states once, record the hold on every capped
    /// line when admitted, and write them back, all in one transaction.
    async fn locked_step(
        db: Db,
        budget: Budget,
        cal: Calendar,
        now: Timestamp,
        hold: Option<(HoldId, f64)>,
    ) -> Result<Checked, DbError> {
        let mut client = db.get().await?;
        let tx = client.transaction().await?;
        let mut states = lock_lines(&tx, &budget, cal, now, true).await?;
        let verdict = match hold {
            Some((_, amount)) => spend::reserve(&budget.lines, &mut states, amount, cal, now),
            None => spend::check(&budget.lines, &mut states, cal, now),
        };
        if verdict.is_ok()
            && let Some((id, amount)) = hold
            && hold_amount(amount) > 0.0
        {
            let lease = HOLD_LEASE.as_secs_f64();
            let key = hold_key(id);
            for line in budget.lines.iter().filter(|l| !l.caps.is_empty()) {
                tx.execute(
                    "INSERT INTO spend_holds (hold_id, account, amount_usd, expires_at)
                     VALUES ($1, $2, $3, now() + make_interval(secs => $4))
                     ON CONFLICT (hold_id, account) DO NOTHING",
                    &[&key, &&*line.account, &hold_amount(amount), &lease],
                )
                .await?;
            }
        }
        let balances = write_lines(&tx, &budget, &states).await?;
        tx.commit().await?;
        Ok(Checked { verdict, balances })
    }

    async fn settle_once(db: Db, s: Settlement) -> Result<Balances, DbError> {
        let mut client = db.get().await?;
        let tx = client.transaction().await?;
        let mut states = lock_lines(&tx, &s.budget, s.calendar, s.at, false).await?;
        let key = hold_key(s.id);
        let first = tx
            .execute(
                "INSERT INTO spend_settled (hold_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&key],
            )
            .await?;
        if first == 0 {
            // Applied before (its answer was lost): nothing changes.
            let balances = s
                .budget
                .lines
                .iter()
                .zip(&states)
                .map(|(l, st)| (Arc::clone(&l.account), *st))
                .collect();
            tx.commit().await?;
            return Ok(balances);
        }
        // What this hold still holds on each account (its rows; gone where the lease ran out).
        let held: Vec<(String, f64)> = tx
            .query(
                "DELETE FROM spend_holds WHERE hold_id = $1 RETURNING account, amount_usd",
                &[&key],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (line, state) in s.budget.lines.iter().zip(states.iter_mut()) {
            let released = held
                .iter()
                .filter(|(a, _)| **a == *line.account)
                .map(|(_, amount)| *amount)
                .sum::<f64>();
            state.settle(released, s.cost_usd, s.at, s.calendar);
        }
        let balances = write_lines(&tx, &s.budget, &states).await?;
        tx.commit().await?;
        Ok(balances)
    }
}

/// Lock the rows of every account of `budget` in sorted account order (creating absent ones
/// with no spend at `now`), giving back expired holds when `expire`; their states in line
/// order.
async fn lock_lines(
    tx: &deadpool_postgres::Transaction<'_>,
    budget: &Budget,
    cal: Calendar,
    now: Timestamp,
    expire: bool,
) -> Result<Vec<SpendState>, DbError> {
    let fresh = SpendState::new(now, cal);
    let mut order: Vec<usize> = (0..budget.lines.len()).collect();
    order.sort_by(|a, b| budget.lines[*a].account.cmp(&budget.lines[*b].account));
    let mut states = vec![SpendState::default(); budget.lines.len()];
    for i in order {
        let account: &str = &budget.lines[i].account;
        let row = tx
            .query_one(
                LOCK_ACCOUNT_SQL,
                &[
                    &account,
                    &fresh.day_start,
                    &fresh.week_start,
                    &fresh.month_start,
                ],
            )
            .await?;
        let mut state = state_of(&row);
        if expire {
            for expired in tx.query(EXPIRE_HOLDS_SQL, &[&account]).await? {
                state.release(expired.get(0));
            }
        }
        states[i] = state;
    }
    Ok(states)
}

/// Write the lines' states back; the balances to answer.
async fn write_lines(
    tx: &deadpool_postgres::Transaction<'_>,
    budget: &Budget,
    states: &[SpendState],
) -> Result<Balances, DbError> {
    let mut balances = Vec::with_capacity(states.len());
    for (line, st) in budget.lines.iter().zip(states) {
        write_state(tx, &line.account, st).await?;
        balances.push((Arc::clone(&line.account), *st));
    }
    Ok(balances)
}

async fn write_state(
    tx: &deadpool_postgres::Transaction<'_>,
    account: &str,
    s: &SpendState,
) -> Result<(), DbError> {
    tx.execute(
        WRITE_ACCOUNT_SQL,
        &[
            &account,
            &s.day_start,
            &s.day_usd,
            &s.week_start,
            &s.week_usd,
            &s.month_start,
            &s.month_usd,
            &s.reserved_usd,
            &s.alerted.cast_signed(),
        ],
    )
    .await?;
    Ok(())
}

impl SpendAdmission for PgSpendAdmission {
    fn shared(&self) -> bool {
        true
    }

    fn check(
        &self,
        budget: &Budget,
        cal: Calendar,
        now: Timestamp,
    ) -> Answer<Result<Checked, StoreUnavailable>> {
        let (db, budget) = (self.db.clone(), budget.clone());
        Answer::Later(Box::pin(async move {
            Self::locked_step(db, budget, cal, now, None)
                .await
                .map_err(|e| unavailable(SPEND_STORE, &e))
        }))
    }

    fn reserve(
        &self,
        id: HoldId,
        budget: &Budget,
        estimate_usd: f64,
        cal: Calendar,
        now: Timestamp,
    ) -> Answer<Result<Checked, StoreUnavailable>> {
        let (db, budget) = (self.db.clone(), budget.clone());
        Answer::Later(Box::pin(async move {
            Self::locked_step(db, budget, cal, now, Some((id, estimate_usd)))
                .await
                .map_err(|e| unavailable(SPEND_STORE, &e))
        }))
    }

    fn settle(&self, settlement: &Settlement) -> Answer<Result<Balances, StoreUnavailable>> {
        let (db, s) = (self.db.clone(), settlement.clone());
        Answer::Later(Box::pin(async move {
            Self::settle_once(db, s)
                .await
                .map_err(|e| unavailable(SPEND_STORE, &e))
        }))
    }

    fn balance(
        &self,
        account: &str,
        cal: Calendar,
        now: Timestamp,
    ) -> Answer<Result<SpendState, StoreUnavailable>> {
        let (db, account) = (self.db.clone(), account.to_owned());
        Answer::Later(Box::pin(async move {
            let read = async {
                let client = db.get().await?;
                let row = client.query_opt(SELECT_ACCOUNT_SQL, &[&account]).await?;
                let mut state = row.map_or_else(|| SpendState::new(now, cal), |r| state_of(&r));
                state.roll(now, cal);
                Ok::<_, DbError>(state)
            };
            read.await.map_err(|e| unavailable(SPEND_STORE, &e))
        }))
    }
}

/// Per-key token buckets in the database.
#[derive(Debug)]
pub struct PgKeyRateLimiter {
    db: Db,
    max_buckets: i64,
    takes: AtomicU64,
}

impl PgKeyRateLimiter {
    /// Over `db` (its `admission` component migrated), keeping at most `max_buckets` rows.
    #[must_use]
    pub fn new(db: Db, max_buckets: usize) -> Self {
        Self {
            db,
            max_buckets: i64::try_from(max_buckets).unwrap_or(i64::MAX),
            takes: AtomicU64::new(0),
        }
    }

    async fn take(db: Db, bucket: String, rpm: u32) -> Result<Take, DbError> {
        let mut client = db.get().await?;
        let tx = client.transaction().await?;
        // Lock (or create full) the bucket and read the server's clock in the same statement.
        let row = tx
            .query_one(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us)
                 INSERT INTO rate_buckets AS b (bucket, tokens, last_us)
                 SELECT $1, $2, now.us FROM now
                 ON CONFLICT (bucket) DO UPDATE SET bucket = b.bucket
                 RETURNING b.tokens, b.last_us, (SELECT us FROM now)",
                &[&bucket, &f64::from(rpm)],
            )
            .await?;
        let now_us: i64 = row.get(2);
        let mut state = TokenBucket::from_parts(row.get(0), row.get(1));
        let taken = state.try_take(rpm, now_us);
        tx.execute(
            "UPDATE rate_buckets SET tokens = $2, last_us = $3 WHERE bucket = $1",
            &[&bucket, &state.tokens(), &state.last_us().max(now_us)],
        )
        .await?;
        tx.commit().await?;
        Ok(match taken {
            Ok(()) => Take::Allowed,
            Err(retry_after_secs) => Take::Denied { retry_after_secs },
        })
    }

    /// Delete buckets idle for a minute (full again: no decision changes), then trim to the
    /// most recently used `max` rows.
    async fn sweep(db: Db, max: i64) -> Result<u64, DbError> {
        let client = db.get().await?;
        let idle_us = i64::try_from(BUCKET_IDLE.as_micros()).unwrap_or(i64::MAX);
        let idle = client
            .execute(
                "DELETE FROM rate_buckets
                 WHERE last_us < (extract(epoch FROM clock_timestamp()) * 1000000)::bigint - $1",
                &[&idle_us],
            )
            .await?;
        let trimmed = client
            .execute(
                "DELETE FROM rate_buckets WHERE bucket IN (
                     SELECT bucket FROM rate_buckets ORDER BY last_us DESC OFFSET $1)",
                &[&max],
            )
            .await?;
        Ok(idle + trimmed)
    }
}

impl KeyRateLimiter for PgKeyRateLimiter {
    fn shared(&self) -> bool {
        true
    }

    fn try_take(&self, bucket: &str, rpm: u32) -> Answer<Result<Take, StoreUnavailable>> {
        let (db, bucket) = (self.db.clone(), bucket.to_owned());
        let sweep = self
            .takes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY);
        let max = self.max_buckets;
        Answer::Later(Box::pin(async move {
            let taken = Self::take(db.clone(), bucket, rpm).await;
            if sweep && taken.is_ok() {
                // Housekeeping never decides a request: a failure here is only logged.
                if let Err(e) = Self::sweep(db, max).await {
                    tracing::warn!(error = %e, "could not sweep idle rate-limit buckets");
                }
            }
            taken.map_err(|e| unavailable(LIMIT_STORE, &e))
        }))
    }
}

/// Forget settled hold ids older than [`SETTLED_KEEP`] (run now and then by the serving
/// process; a retry never comes that late).
///
/// # Errors
/// The database is unavailable.
pub async fn forget_old_settlements(db: &Db) -> Result<u64, DbError> {
    let keep = SETTLED_KEEP.as_secs_f64();
    let client = db.get().await?;
    Ok(client
        .execute(
            "DELETE FROM spend_settled WHERE settled_at < now() - make_interval(secs => $1)",
            &[&keep],
        )
        .await?)
}

/// Bring the admission tables to this binary's version.
///
/// # Errors
/// The database is unavailable or newer than this binary.
pub async fn migrate(db: &Db) -> Result<(), DbError> {
    let mut client = db.get().await?;
    crate::schema::migrate(&mut client, &COMPONENT).await?;
    Ok(())
}

/// Both guards over one pool.
#[must_use]
pub fn guards(db: &Db, max_buckets: usize) -> (Arc<PgSpendAdmission>, Arc<PgKeyRateLimiter>) {
    (
        Arc::new(PgSpendAdmission::new(db.clone())),
        Arc::new(PgKeyRateLimiter::new(db.clone(), max_buckets)),
    )
}

#[cfg(test)]
mod tests;
