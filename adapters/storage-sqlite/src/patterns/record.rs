//! Row access of the pattern rules ([`metis_domain::patterns::PatternRows`]) over one SQLite
//! `BEGIN IMMEDIATE` transaction. The rules themselves (lookup, roll-up, caps) are the
//! domain's; this is only SQL.
//!
//! Invariants:
//! - The fingerprint lookup is by (signature, NULL provider) with an explicit `IS NULL`
//!   (SQLite's UNIQUE lets NULLs repeat), oldest first, then id.
//! - The number of outcome rows is read once per transaction and then kept up to date here
//!   (a `COUNT(*)` per observation would scan the table every time).

use std::fmt;

use metis_domain::patterns::{FingerprintIdTaken, OutcomeTotals, PatternRecord, PatternRows};
use metis_domain::time::Timestamp;
use rusqlite::{OptionalExtension, Transaction, params};

/// Why applying an observation failed.
#[derive(Debug)]
pub(super) enum RowsError {
    Sql(rusqlite::Error),
    Taken(FingerprintIdTaken),
}

impl fmt::Display for RowsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowsError::Sql(e) => e.fmt(f),
            RowsError::Taken(e) => e.fmt(f),
        }
    }
}

impl From<rusqlite::Error> for RowsError {
    fn from(e: rusqlite::Error) -> Self {
        RowsError::Sql(e)
    }
}

impl From<FingerprintIdTaken> for RowsError {
    fn from(e: FingerprintIdTaken) -> Self {
        RowsError::Taken(e)
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The oldest structural fingerprint with a signature.
const FINGERPRINT_BY_SIG_SQL: &str = "SELECT id, created_at_us FROM fingerprints \
    WHERE structural_sig = ?1 AND embedding_provider IS NULL \
    ORDER BY created_at_us, id LIMIT 1";

/// The totals of one (fingerprint, model) outcome.
const OUTCOME_SQL: &str = "SELECT sample_size, success_score_mean, success_score_count, \
    sum_cost_usd_micros, sum_latency_ms, pricing_version_last, last_updated_at_us \
    FROM outcomes WHERE fingerprint_id = ?1 AND primary_model = ?2";

/// The rows of one pattern store inside one write transaction.
pub(super) struct SqlRows<'a, 'c> {
    tx: &'a Transaction<'c>,
    outcomes: u64,
}

impl<'a, 'c> SqlRows<'a, 'c> {
    pub(super) fn new(tx: &'a Transaction<'c>) -> rusqlite::Result<Self> {
        let n: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM outcomes")?
            .query_row([], |r| r.get(0))?;
        Ok(Self {
            tx,
            outcomes: count(n),
        })
    }
}

impl PatternRows for SqlRows<'_, '_> {
    type Error = RowsError;

    fn fingerprint_by_sig(&mut self, sig: &str) -> Result<Option<(String, Timestamp)>, RowsError> {
        Ok(self
            .tx
            .prepare_cached(FINGERPRINT_BY_SIG_SQL)?
            .query_row(params![sig], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?)
    }

    fn fingerprint_exists(&mut self, id: &str) -> Result<bool, RowsError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM fingerprints WHERE id = ?1")?
            .exists(params![id])?)
    }

    fn insert_fingerprint(&mut self, r: &PatternRecord) -> Result<(), RowsError> {
        self.tx
            .prepare_cached(
                "INSERT INTO fingerprints (id, kind, structural_json, structural_sig, \
                 embedding_blob, embedding_provider, embedding_dim, created_at_us) \
                 VALUES (?1, ?2, ?3, ?4, NULL, NULL, NULL, ?5)",
            )?
            .execute(params![
                r.fingerprint_id,
                r.kind,
                r.structural_json,
                r.structural_sig,
                r.at_us
            ])?;
        Ok(())
    }

    fn set_fingerprint_created(
        &mut self,
        id: &str,
        _old: Timestamp,
        at: Timestamp,
    ) -> Result<(), RowsError> {
        self.tx
            .prepare_cached("UPDATE fingerprints SET created_at_us = ?2 WHERE id = ?1")?
            .execute(params![id, at])?;
        Ok(())
    }

    fn outcome(&mut self, fp: &str, model: &str) -> Result<Option<OutcomeTotals>, RowsError> {
        Ok(self
            .tx
            .prepare_cached(OUTCOME_SQL)?
            .query_row(params![fp, model], |row| {
                Ok(OutcomeTotals {
                    sample_size: count(row.get(0)?),
                    success_score_mean: row.get(1)?,
                    success_score_count: count(row.get(2)?),
                    sum_cost_usd_micros: row.get(3)?,
                    sum_latency_ms: row.get(4)?,
                    pricing_version_last: row.get(5)?,
                    last_updated_at_us: row.get(6)?,
                })
            })
            .optional()?)
    }

    fn put_outcome(
        &mut self,
        fp: &str,
        model: &str,
        new: &OutcomeTotals,
        old: Option<&OutcomeTotals>,
    ) -> Result<(), RowsError> {
        let sql = if old.is_some() {
            "UPDATE outcomes SET sample_size = ?3, success_score_mean = ?4, \
             success_score_count = ?5, sum_cost_usd_micros = ?6, sum_latency_ms = ?7, \
             pricing_version_last = ?8, last_updated_at_us = ?9 \
             WHERE fingerprint_id = ?1 AND primary_model = ?2"
        } else {
            "INSERT INTO outcomes (fingerprint_id, primary_model, sample_size, \
             success_score_mean, success_score_count, sum_cost_usd_micros, sum_latency_ms, \
             pricing_version_last, last_updated_at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        };
        self.tx.prepare_cached(sql)?.execute(params![
            fp,
            model,
            sql_int(new.sample_size),
            new.success_score_mean,
            sql_int(new.success_score_count),
            new.sum_cost_usd_micros,
            new.sum_latency_ms,
            new.pricing_version_last,
            new.last_updated_at_us
        ])?;
        if old.is_none() {
            self.outcomes += 1;
        }
        Ok(())
    }

    fn outcome_count(&mut self) -> Result<u64, RowsError> {
        Ok(self.outcomes)
    }

    fn remove_outcomes_before(&mut self, cutoff: Timestamp) -> Result<u64, RowsError> {
        let n = self
            .tx
            .prepare_cached("DELETE FROM outcomes WHERE last_updated_at_us < ?1")?
            .execute(params![cutoff])? as u64;
        self.outcomes = self.outcomes.saturating_sub(n);
        Ok(n)
    }

    fn remove_first_outcomes(&mut self, n: u64) -> Result<u64, RowsError> {
        let gone = self
            .tx
            .prepare_cached(
                "DELETE FROM outcomes WHERE rowid IN (SELECT rowid FROM outcomes \
                 ORDER BY last_updated_at_us ASC, sample_size ASC, fingerprint_id, primary_model \
                 LIMIT ?1)",
            )?
            .execute(params![sql_int(n)])? as u64;
        self.outcomes = self.outcomes.saturating_sub(gone);
        Ok(gone)
    }

    fn remove_orphan_fingerprints(&mut self) -> Result<(), RowsError> {
        self.tx
            .prepare_cached(
                "DELETE FROM fingerprints \
                 WHERE id NOT IN (SELECT DISTINCT fingerprint_id FROM outcomes)",
            )?
            .execute([])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// A cached lookup must be reused as prepared, not parsed and planned again on every
    /// call (the pattern drain runs it once per observed turn).
    #[test]
    fn cached_lookups_are_not_prepared_again() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut conn = super::super::schema::open_store(&dir.path().join("patterns.db"))?;
        let tx = conn.transaction()?;
        let mut rows = SqlRows::new(&tx)?;
        for sig in ["sig-a", "sig-b", "sig-c"] {
            assert_eq!(
                rows.fingerprint_by_sig(sig).map_err(|e| e.to_string())?,
                None
            );
            assert!(
                rows.outcome("fp", sig)
                    .map_err(|e| e.to_string())?
                    .is_none()
            );
        }
        for sql in [FINGERPRINT_BY_SIG_SQL, OUTCOME_SQL] {
            let stmt = tx.prepare_cached(sql)?;
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "{sql}");
        }
        Ok(())
    }
}
