//! The per-workspace pattern store (`<workspace>/.metis/patterns.db`, or one directory per
//! workspace hash under `--patterns-dir`): [`SqlitePatternStore`], the `PatternStore` port.
//!
//! Invariants:
//! - DDL as the original's v2 store (`reference/storage.md` §7.1): `fingerprints` with the
//!   nullable `embedding_*` columns and `UNIQUE(structural_sig, embedding_provider)`,
//!   `outcomes` and `outcome_score_history` cascading from `fingerprints`, `store_meta`,
//!   `embedding_cache`. `foreign_keys` is ON for every write (the cascades depend on it).
//! - `store_meta.schema_version` is compared as an INTEGER and only ever raised; a store with a
//!   higher version than [`PATTERN_SCHEMA_VERSION`] is refused untouched.
//! - Opening an older store migrates it in one transaction (the documented v1 -> v2 gap is
//!   closed): missing `embedding_*` columns are added, `fingerprints` is rebuilt with the
//!   two-column UNIQUE, `outcomes` is rebuilt with its `ON DELETE CASCADE`, missing tables and
//!   indexes are created, and the version is raised. Every row is kept.
//! - `record` is one `BEGIN IMMEDIATE` transaction applying the domain's rules
//!   (`metis_domain::patterns::apply_record`: fingerprint lookup, outcome roll-up, caps) through
//!   the SQL row access of `record.rs`.
//! - A workspace that is not an existing, writable directory is skipped with one WARN per
//!   workspace; nothing is created outside `<workspace>/.metis` (or the patterns directory)
//!   (`metis_storage_kit::WorkspaceStores`).
//! - Blocking work runs on tokio's blocking pool; one connection per store file, behind a
//!   mutex.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use metis_domain::patterns::{PatternCaps, PatternRecord, apply_record, replay};
use metis_ports::patterns::{ModelTotals, OutcomeRow, PatternError, PatternStats, RecordOutcome};
pub use metis_ports::storage::PatternPlace;
use metis_ports::storage::{Migratable, PatternDump, PatternFiles, Progress, no_progress};
use metis_storage_kit::WorkspaceStores;
use rusqlite::{Connection, TransactionBehavior};

mod record;
mod schema;

use record::SqlRows;
pub use schema::{apply_patterns_migration, plan_patterns_migration, stored_version};

/// The file name of a pattern store.
pub const PATTERNS_FILE: &str = "patterns.db";

pub(crate) fn unavailable(path: &Path, e: impl std::fmt::Display) -> PatternError {
    PatternError::Unavailable {
        location: path.display().to_string(),
        message: e.to_string(),
    }
}

type Shared = Arc<Mutex<Connection>>;

/// The SQLite pattern stores of every workspace (cheap to clone; clones share connections).
#[derive(Clone)]
pub struct SqlitePatternStore {
    inner: Arc<State>,
}

struct State {
    caps: PatternCaps,
    stores: WorkspaceStores<Shared>,
}

impl std::fmt::Debug for SqlitePatternStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlitePatternStore")
            .field("location", self.inner.stores.place())
            .finish_non_exhaustive()
    }
}

fn open(path: &Path) -> Result<Shared, PatternError> {
    schema::open_store(path).map(|c| Arc::new(Mutex::new(c)))
}

impl SqlitePatternStore {
    #[must_use]
    pub fn new(location: PatternPlace, caps: PatternCaps) -> Self {
        Self {
            inner: Arc::new(State {
                caps,
                stores: WorkspaceStores::new(location, PATTERNS_FILE),
            }),
        }
    }

    /// The store file of `workspace`.
    #[must_use]
    pub fn db_path(&self, workspace: &str) -> PathBuf {
        self.inner.stores.path(workspace)
    }

    /// Resolve and open the writable store of `workspace`, or the reason to skip it (logged
    /// once per workspace).
    fn writable(&self, workspace: &str) -> Result<Result<(PathBuf, Shared), String>, PatternError> {
        self.inner.stores.writable(workspace, open)
    }

    /// Open an existing store for reading (migrating it when it is older). `None` when the
    /// file does not exist.
    fn existing(&self, workspace: &str) -> Result<Option<(PathBuf, Shared)>, PatternError> {
        self.inner.stores.existing(workspace, open)
    }

    /// Forget the cached connection of `workspace` (tests; after an outside change).
    pub fn forget(&self, workspace: &str) {
        self.inner.stores.forget(workspace);
    }
}

impl PatternFiles for SqlitePatternStore {
    fn path(&self, workspace: &str) -> PathBuf {
        self.db_path(workspace)
    }

    fn record(&self, workspace: &str, r: &PatternRecord) -> Result<RecordOutcome, PatternError> {
        let (path, conn) = match self.writable(workspace)? {
            Ok(x) => x,
            Err(reason) => return Ok(RecordOutcome::Skipped { reason }),
        };
        let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| unavailable(&path, e))?;
        let res = SqlRows::new(&tx)
            .map_err(Into::into)
            .and_then(|mut rows| apply_record(&mut rows, r, &self.inner.caps))
            .map_err(|e| unavailable(&path, e))?;
        tx.commit().map_err(|e| unavailable(&path, e))?;
        Ok(RecordOutcome::Recorded(res))
    }

    fn record_many(&self, workspace: &str, records: &[PatternRecord]) -> Result<u64, PatternError> {
        let Ok((path, conn)) = self.writable(workspace)? else {
            return Ok(0);
        };
        let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| unavailable(&path, e))?;
        let mut rows = SqlRows::new(&tx).map_err(|e| unavailable(&path, e))?;
        for r in records {
            apply_record(&mut rows, r, &self.inner.caps).map_err(|e| unavailable(&path, e))?;
        }
        tx.commit().map_err(|e| unavailable(&path, e))?;
        Ok(records.len() as u64)
    }

    fn replace_all(
        &self,
        workspace: &str,
        records: &[PatternRecord],
        progress: Progress<'_>,
    ) -> Result<u64, PatternError> {
        let (path, conn) = match self.writable(workspace)? {
            Ok(x) => x,
            Err(reason) => return Err(unavailable(&self.db_path(workspace), reason)),
        };
        let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| unavailable(&path, e))?;
        tx.execute_batch(
            "DELETE FROM outcome_score_history; DELETE FROM outcomes; DELETE FROM fingerprints;",
        )
        .map_err(|e| unavailable(&path, e))?;
        let mut rows = SqlRows::new(&tx).map_err(|e| unavailable(&path, e))?;
        let total = replay(records, progress, |r| {
            apply_record(&mut rows, r, &self.inner.caps).map(drop)
        })
        .map_err(|e| unavailable(&path, e))?;
        tx.commit().map_err(|e| unavailable(&path, e))?;
        progress(total, total);
        Ok(total)
    }

    fn stats(&self, workspace: &str) -> Result<Option<PatternStats>, PatternError> {
        let Some((path, conn)) = self.existing(workspace)? else {
            return Ok(None);
        };
        let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        let read = || -> rusqlite::Result<PatternStats> {
            let mut stmt = conn.prepare(
                "SELECT primary_model, SUM(sample_size), SUM(sum_cost_usd_micros), SUM(sum_latency_ms) \
                 FROM outcomes GROUP BY primary_model ORDER BY SUM(sample_size) DESC, primary_model",
            )?;
            let models = stmt
                .query_map([], |r| {
                    Ok(ModelTotals {
                        model: r.get(0)?,
                        samples: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                        sum_cost_usd_micros: r.get(2)?,
                        sum_latency_ms: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (oldest, newest): (Option<i64>, Option<i64>) = conn.query_row(
                "SELECT MIN(last_updated_at_us), MAX(last_updated_at_us) FROM outcomes",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(PatternStats {
                location: path.display().to_string(),
                schema_version: stored_version(&conn)?,
                fingerprints: count(&conn, "SELECT COUNT(*) FROM fingerprints")?,
                outcomes: count(&conn, "SELECT COUNT(*) FROM outcomes")?,
                samples: models.iter().map(|m| m.samples).sum(),
                embedding_cache_rows: count(&conn, "SELECT COUNT(*) FROM embedding_cache")?,
                models,
                oldest_update_us: oldest,
                newest_update_us: newest,
            })
        };
        read().map(Some).map_err(|e| unavailable(&path, e))
    }

    fn outcomes(&self, workspace: &str) -> Result<Vec<OutcomeRow>, PatternError> {
        let Some((path, conn)) = self.existing(workspace)? else {
            return Ok(Vec::new());
        };
        let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        read_outcomes(&conn).map_err(|e| unavailable(&path, e))
    }

    fn export(&self, workspace: &str) -> Result<PatternDump, PatternError> {
        let (fingerprints, outcomes) = crate::transfer::export_patterns(&self.db_path(workspace))?;
        Ok(PatternDump {
            fingerprints,
            outcomes,
        })
    }

    fn import(&self, workspace: &str, dump: &PatternDump) -> Result<(), PatternError> {
        // Opening through the store creates (or migrates) the file with its schema and
        // version; the rows then go in through a connection of their own.
        self.replace_all(workspace, &[], &no_progress)?;
        self.forget(workspace);
        crate::transfer::import_patterns(
            &self.db_path(workspace),
            &dump.fingerprints,
            &dump.outcomes,
        )
    }

    fn migration(&self, workspace: &str) -> Box<dyn Migratable> {
        Box::new(crate::backend::SqliteMigration {
            path: self.db_path(workspace),
            plan: plan_patterns_migration,
            apply: apply_patterns_migration,
        })
    }
}

fn count(tx: &Connection, sql: &str) -> rusqlite::Result<u64> {
    tx.query_row(sql, [], |r| r.get::<_, i64>(0))
        .map(|n| u64::try_from(n).unwrap_or(0))
}

/// Every outcome with its fingerprint's signature, ordered by (fingerprint, model).
pub(crate) fn read_outcomes(conn: &Connection) -> rusqlite::Result<Vec<OutcomeRow>> {
    let mut stmt = conn.prepare(
        "SELECT o.fingerprint_id, f.structural_sig, o.primary_model, o.sample_size, \
         o.success_score_mean, o.success_score_count, o.sum_cost_usd_micros, \
         o.sum_latency_ms, o.pricing_version_last, o.last_updated_at_us \
         FROM outcomes o JOIN fingerprints f ON f.id = o.fingerprint_id \
         ORDER BY o.fingerprint_id, o.primary_model",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(OutcomeRow {
            fingerprint_id: r.get(0)?,
            structural_sig: r.get(1)?,
            primary_model: r.get(2)?,
            sample_size: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
            success_score_mean: r.get(4)?,
            success_score_count: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
            sum_cost_usd_micros: r.get(6)?,
            sum_latency_ms: r.get(7)?,
            pricing_version_last: r.get(8)?,
            last_updated_at_us: r.get(9)?,
        })
    })?;
    rows.collect()
}
