//! Row access of the pattern rules ([`metis_domain::patterns::PatternRows`]) for one
//! workspace inside one PostgreSQL transaction. The rules themselves (lookup, roll-up, caps)
//! are the domain's; this is only SQL.
//!
//! Invariants:
//! - [`PgRows::lock`] is the first statement of every write: it creates the workspace's row
//!   when missing and locks it (`FOR UPDATE`) until the transaction ends. Every writer of the
//!   workspace, in this process or another replica, takes the same lock first, so they apply
//!   their records one transaction at a time: each reads the rows the previous one committed
//!   (READ COMMITTED takes a new snapshot per statement), no roll-up is lost, and the caps
//!   count every outcome. Other workspaces are not blocked.
//! - The number of outcome rows is read once, under the lock, and then kept up to date here.
//! - Every statement names the workspace; nothing here reads or writes another one's rows.

use std::fmt;

use deadpool_postgres::Transaction;
use metis_domain::patterns::{FingerprintIdTaken, OutcomeTotals, PatternRecord, PatternRows};
use metis_domain::time::Timestamp;

use super::sql::{bigint, col, execute, query_one, query_opt, unsigned};

/// Why applying an observation failed.
#[derive(Debug)]
pub(super) enum RowsError {
    Sql(tokio_postgres::Error),
    Taken(FingerprintIdTaken),
}

impl fmt::Display for RowsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowsError::Sql(e) => fmt_sql_error(e, f),
            RowsError::Taken(e) => e.fmt(f),
        }
    }
}

/// A driver error with the server's message (the driver's own `Display` says only "db error").
pub(super) fn fmt_sql_error(e: &tokio_postgres::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match e.as_db_error() {
        Some(db) => write!(f, "{}: {}", db.severity(), db.message()),
        None => fmt::Display::fmt(e, f),
    }
}

impl From<tokio_postgres::Error> for RowsError {
    fn from(e: tokio_postgres::Error) -> Self {
        RowsError::Sql(e)
    }
}

impl From<FingerprintIdTaken> for RowsError {
    fn from(e: FingerprintIdTaken) -> Self {
        RowsError::Taken(e)
    }
}

const CREATE_WORKSPACE_SQL: &str =
    "INSERT INTO pattern_workspaces (workspace) VALUES ($1) ON CONFLICT (workspace) DO NOTHING";

const LOCK_WORKSPACE_SQL: &str = "SELECT 1 FROM pattern_workspaces WHERE workspace = $1 FOR UPDATE";

const COUNT_OUTCOMES_SQL: &str = "SELECT count(*) FROM pattern_outcomes WHERE workspace = $1";

/// The oldest structural fingerprint with a signature.
const FINGERPRINT_BY_SIG_SQL: &str = "SELECT id, created_at_us FROM pattern_fingerprints \
    WHERE workspace = $1 AND structural_sig = $2 AND embedding_provider IS NULL \
    ORDER BY created_at_us, id LIMIT 1";

const FINGERPRINT_EXISTS_SQL: &str =
    "SELECT 1 FROM pattern_fingerprints WHERE workspace = $1 AND id = $2";

const INSERT_FINGERPRINT_SQL: &str = "INSERT INTO pattern_fingerprints \
    (workspace, id, kind, structural_json, structural_sig, created_at_us) \
    VALUES ($1, $2, $3, $4, $5, $6)";

const SET_CREATED_SQL: &str =
    "UPDATE pattern_fingerprints SET created_at_us = $3 WHERE workspace = $1 AND id = $2";

const OUTCOME_SQL: &str = "SELECT sample_size, success_score_mean, success_score_count, \
    sum_cost_usd_micros, sum_latency_ms, pricing_version_last, last_updated_at_us \
    FROM pattern_outcomes WHERE workspace = $1 AND fingerprint_id = $2 AND primary_model = $3";

const UPDATE_OUTCOME_SQL: &str = "UPDATE pattern_outcomes SET sample_size = $4, \
    success_score_mean = $5, success_score_count = $6, sum_cost_usd_micros = $7, \
    sum_latency_ms = $8, pricing_version_last = $9, last_updated_at_us = $10 \
    WHERE workspace = $1 AND fingerprint_id = $2 AND primary_model = $3";

const INSERT_OUTCOME_SQL: &str = "INSERT INTO pattern_outcomes (workspace, fingerprint_id, \
    primary_model, sample_size, success_score_mean, success_score_count, sum_cost_usd_micros, \
    sum_latency_ms, pricing_version_last, last_updated_at_us) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

const REMOVE_BEFORE_SQL: &str =
    "DELETE FROM pattern_outcomes WHERE workspace = $1 AND last_updated_at_us < $2";

/// The first `$2` outcomes in the domain's eviction order (byte order on the "C" keys).
const REMOVE_FIRST_SQL: &str = "DELETE FROM pattern_outcomes o USING ( \
    SELECT fingerprint_id, primary_model FROM pattern_outcomes WHERE workspace = $1 \
    ORDER BY last_updated_at_us, sample_size, fingerprint_id, primary_model LIMIT $2) first \
    WHERE o.workspace = $1 AND o.fingerprint_id = first.fingerprint_id \
    AND o.primary_model = first.primary_model";

const REMOVE_ORPHANS_SQL: &str = "DELETE FROM pattern_fingerprints f WHERE f.workspace = $1 \
    AND NOT EXISTS (SELECT 1 FROM pattern_outcomes o \
    WHERE o.workspace = f.workspace AND o.fingerprint_id = f.id)";

/// Create (when missing) and lock the row of `workspace` until the transaction ends.
pub(super) fn lock_workspace(
    tx: &Transaction<'_>,
    workspace: &str,
) -> Result<(), tokio_postgres::Error> {
    execute(tx, CREATE_WORKSPACE_SQL, &[&workspace])?;
    query_one(tx, LOCK_WORKSPACE_SQL, &[&workspace])?;
    Ok(())
}

/// The rows of one workspace inside one write transaction holding its lock.
pub(super) struct PgRows<'t, 'c> {
    tx: &'t Transaction<'c>,
    workspace: &'t str,
    outcomes: u64,
}

impl<'t, 'c> PgRows<'t, 'c> {
    /// Create (when missing) and lock the workspace's row, then count its outcomes.
    pub(super) fn lock(
        tx: &'t Transaction<'c>,
        workspace: &'t str,
    ) -> Result<Self, tokio_postgres::Error> {
        lock_workspace(tx, workspace)?;
        let n: i64 = col(&query_one(tx, COUNT_OUTCOMES_SQL, &[&workspace])?, 0)?;
        Ok(Self {
            tx,
            workspace,
            outcomes: unsigned(n),
        })
    }
}

impl PatternRows for PgRows<'_, '_> {
    type Error = RowsError;

    fn fingerprint_by_sig(&mut self, sig: &str) -> Result<Option<(String, Timestamp)>, RowsError> {
        let row = query_opt(self.tx, FINGERPRINT_BY_SIG_SQL, &[&self.workspace, &sig])?;
        Ok(match row {
            Some(r) => Some((col(&r, 0)?, col(&r, 1)?)),
            None => None,
        })
    }

    fn fingerprint_exists(&mut self, id: &str) -> Result<bool, RowsError> {
        Ok(query_opt(self.tx, FINGERPRINT_EXISTS_SQL, &[&self.workspace, &id])?.is_some())
    }

    fn insert_fingerprint(&mut self, r: &PatternRecord) -> Result<(), RowsError> {
        execute(
            self.tx,
            INSERT_FINGERPRINT_SQL,
            &[
                &self.workspace,
                &r.fingerprint_id,
                &r.kind,
                &r.structural_json,
                &r.structural_sig,
                &r.at_us,
            ],
        )?;
        Ok(())
    }

    fn set_fingerprint_created(
        &mut self,
        id: &str,
        _old: Timestamp,
        at: Timestamp,
    ) -> Result<(), RowsError> {
        execute(self.tx, SET_CREATED_SQL, &[&self.workspace, &id, &at])?;
        Ok(())
    }

    fn outcome(&mut self, fp: &str, model: &str) -> Result<Option<OutcomeTotals>, RowsError> {
        let Some(r) = query_opt(self.tx, OUTCOME_SQL, &[&self.workspace, &fp, &model])? else {
            return Ok(None);
        };
        Ok(Some(OutcomeTotals {
            sample_size: unsigned(col(&r, 0)?),
            success_score_mean: col(&r, 1)?,
            success_score_count: unsigned(col(&r, 2)?),
            sum_cost_usd_micros: col(&r, 3)?,
            sum_latency_ms: col(&r, 4)?,
            pricing_version_last: col(&r, 5)?,
            last_updated_at_us: col(&r, 6)?,
        }))
    }

    fn put_outcome(
        &mut self,
        fp: &str,
        model: &str,
        new: &OutcomeTotals,
        old: Option<&OutcomeTotals>,
    ) -> Result<(), RowsError> {
        let sql = if old.is_some() {
            UPDATE_OUTCOME_SQL
        } else {
            INSERT_OUTCOME_SQL
        };
        execute(
            self.tx,
            sql,
            &[
                &self.workspace,
                &fp,
                &model,
                &bigint(new.sample_size),
                &new.success_score_mean,
                &bigint(new.success_score_count),
                &new.sum_cost_usd_micros,
                &new.sum_latency_ms,
                &new.pricing_version_last,
                &new.last_updated_at_us,
            ],
        )?;
        if old.is_none() {
            self.outcomes += 1;
        }
        Ok(())
    }

    fn outcome_count(&mut self) -> Result<u64, RowsError> {
        Ok(self.outcomes)
    }

    fn remove_outcomes_before(&mut self, cutoff: Timestamp) -> Result<u64, RowsError> {
        let n = execute(self.tx, REMOVE_BEFORE_SQL, &[&self.workspace, &cutoff])?;
        self.outcomes = self.outcomes.saturating_sub(n);
        Ok(n)
    }

    fn remove_first_outcomes(&mut self, n: u64) -> Result<u64, RowsError> {
        let gone = execute(self.tx, REMOVE_FIRST_SQL, &[&self.workspace, &bigint(n)])?;
        self.outcomes = self.outcomes.saturating_sub(gone);
        Ok(gone)
    }

    fn remove_orphan_fingerprints(&mut self) -> Result<(), RowsError> {
        execute(self.tx, REMOVE_ORPHANS_SQL, &[&self.workspace])?;
        Ok(())
    }
}
