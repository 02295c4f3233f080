//! The pattern projections of every workspace on PostgreSQL: the tables of the SQLite pattern
//! store, shared by all workspaces and keyed by a `workspace` column (`schema.rs`). [`files`]
//! is the blocking side ([`PatternFiles`]), [`store`] the async port the gateway records into.
//!
//! Invariants:
//! - The rules are the domain's (`metis_domain::patterns`): `record` and `record_many` run
//!   `apply_record` on the rows of one transaction (`rows.rs`), which first locks the
//!   workspace's row. Every replica recording into a workspace takes that lock, so their
//!   records apply one transaction at a time: totals are exact and the caps hold across the
//!   fleet. Records of other workspaces do not wait.
//! - `replace_all` replays the records through the same rules on the domain's in-memory rows
//!   (`MemoryRows`, the reference store) and writes the result in one transaction under the
//!   lock, as arrays: readers see the old projection or the new one, and a rebuild of many
//!   records costs a few round trips instead of several per record. The embedding cache stays.
//! - A workspace's store exists once something was recorded, rebuilt or imported into it
//!   (its row in `pattern_workspaces`); before, `stats` is `None` and the reads are empty.
//! - No workspace directory is needed on the gateway's host (the projection is not a file):
//!   any workspace name is stored, except one PostgreSQL cannot key (empty, or with a NUL
//!   character), which is skipped with one WARN.
//! - The tables are created and migrated on first use, under the component's advisory lock
//!   (`crate::schema`); a schema from a newer, incompatible binary is refused untouched
//!   (`TooNew`). A store handle checks once and remembers (a newer replica may only add to a
//!   schema older ones are still using, see `crate::schema`).
//! - Blocking calls run where blocking is allowed (`sql.rs`); the async port runs them on
//!   tokio's blocking pool (`metis_storage_kit::PatternsOnPool`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use deadpool_postgres::Object;
use metis_domain::patterns::{
    FingerprintIdTaken, MemoryRows, PatternCaps, PatternRecord, apply_record, replay,
};
use metis_ports::patterns::{
    FingerprintRow, OutcomeRow, PatternError, PatternStats, PatternStore, RecordOutcome,
};
use metis_ports::storage::{Migratable, PatternDump, PatternFiles, Progress};
use metis_storage_kit::PatternsOnPool;
use tokio_postgres::IsolationLevel;

use crate::pool::{Db, DbError};
use crate::schema::{self as versions, SchemaError};

mod bulk;
mod migration;
mod rows;
mod schema;
mod sql;
#[cfg(test)]
mod tests;

use bulk::OutcomeInsert;
use rows::{PgRows, RowsError};
pub(crate) use schema::COMPONENT;
use sql::{off_runtime, wait};

/// The pattern stores of every workspace in the database behind `db`, blocking (the
/// `StorageBackend::pattern_files` of PostgreSQL). Records use the default caps.
#[must_use]
pub fn files(db: Db) -> Box<dyn PatternFiles> {
    Box::new(PgPatterns::new(db, PatternCaps::default()))
}

/// The pattern stores of every workspace in the database behind `db`, for the gateway (the
/// `StorageBackend::pattern_store` of PostgreSQL).
#[must_use]
pub fn store(db: Db, caps: PatternCaps) -> Arc<dyn PatternStore> {
    Arc::new(PatternsOnPool::new(PgPatterns::new(db, caps)))
}

/// Most distinct skipped workspaces remembered for the one-WARN rule.
const MAX_SKIPPED_REMEMBERED: usize = 1_024;

/// The pattern tables of one database.
struct PgPatterns {
    db: Db,
    caps: PatternCaps,
    /// The tables exist and are not too new (checked once per handle).
    ready: AtomicBool,
    /// Workspaces already warned about.
    skipped: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for PgPatterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPatterns")
            .field("db", &self.db)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

/// A driver error with the server's own message (the driver's `Display` says "db error").
pub(crate) fn sql_text(e: &tokio_postgres::Error) -> String {
    struct Text<'a>(&'a tokio_postgres::Error);
    impl std::fmt::Display for Text<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            rows::fmt_sql_error(self.0, f)
        }
    }
    Text(e).to_string()
}

fn db_text(e: &DbError) -> String {
    match e {
        DbError::Query(q) => sql_text(q),
        other => other.to_string(),
    }
}

/// Why PostgreSQL cannot key this workspace (`None`: it can).
fn unusable(workspace: &str) -> Option<String> {
    if workspace.is_empty() {
        Some("an empty workspace name has no pattern store".to_owned())
    } else if workspace.contains('\0') {
        Some(format!(
            "workspace {workspace:?} contains a NUL character, which PostgreSQL text cannot hold"
        ))
    } else {
        None
    }
}

impl PgPatterns {
    fn new(db: Db, caps: PatternCaps) -> Self {
        Self {
            db,
            caps,
            ready: AtomicBool::new(false),
            skipped: Mutex::new(HashSet::new()),
        }
    }

    /// Where a workspace's store is, for messages: the database (password redacted) and the
    /// workspace.
    fn location(&self, workspace: &str) -> String {
        format!(
            "{} (pattern tables, workspace {workspace})",
            self.db.config().redacted()
        )
    }

    fn unavailable(&self, workspace: &str, message: impl std::fmt::Display) -> PatternError {
        PatternError::Unavailable {
            location: self.location(workspace),
            message: message.to_string(),
        }
    }

    fn rows_error(&self, workspace: &str) -> impl Fn(RowsError) -> PatternError + '_ {
        let ws = workspace.to_owned();
        move |e| self.unavailable(&ws, e)
    }

    fn sql_error(&self, workspace: &str) -> impl Fn(tokio_postgres::Error) -> PatternError + '_ {
        let ws = workspace.to_owned();
        move |e| self.unavailable(&ws, sql_text(&e))
    }

    /// The skip reason for `workspace`, logged once.
    fn skip(&self, workspace: &str) -> Option<String> {
        let reason = unusable(workspace)?;
        let mut seen = self.skipped.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() < MAX_SKIPPED_REMEMBERED && seen.insert(workspace.to_owned()) {
            tracing::warn!(workspace = %workspace.escape_debug(), %reason, "pattern store skipped");
        }
        Some(reason)
    }

    fn connection(&self, workspace: &str) -> Result<Object, PatternError> {
        let db = self.db.clone();
        self.db
            .block_on(async move { db.get().await })
            .map_err(|e| self.unavailable(workspace, db_text(&e)))
    }

    /// Make sure the tables exist at this binary's version (`create`), or say whether they
    /// exist at all (`!create`: reads never create them). A newer, incompatible schema is
    /// `TooNew`.
    fn ensure(&self, workspace: &str, create: bool) -> Result<bool, PatternError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(true);
        }
        let mut conn = self.connection(workspace)?;
        let schema_error = |e: SchemaError| match e {
            SchemaError::TooNew { found, known, .. } => PatternError::TooNew {
                location: self.location(workspace),
                found: i64::from(found),
                supported: i64::from(known),
            },
            SchemaError::Query(q) => self.unavailable(workspace, sql_text(&q)),
        };
        off_runtime(|| {
            let found = wait(versions::current(&conn, &COMPONENT)).map_err(schema_error)?;
            if found.version == 0 && !create {
                return Ok(false);
            }
            let applied = wait(versions::migrate(&mut conn, &COMPONENT)).map_err(schema_error)?;
            if !applied.is_empty() {
                tracing::info!(
                    database = %self.db.config().redacted(),
                    steps = %applied.join("; "),
                    "migrated the pattern tables"
                );
            }
            self.ready.store(true, Ordering::Release);
            Ok(true)
        })
    }

    /// Run `apply` on the rows of `workspace` in one transaction holding its lock.
    fn write<T>(
        &self,
        workspace: &str,
        apply: impl FnOnce(&mut PgRows<'_, '_>) -> Result<T, RowsError>,
    ) -> Result<T, PatternError> {
        self.ensure(workspace, true)?;
        let mut conn = self.connection(workspace)?;
        off_runtime(|| {
            let tx = wait(conn.transaction())?;
            let out = apply(&mut PgRows::lock(&tx, workspace)?)?;
            wait(tx.commit())?;
            Ok(out)
        })
        .map_err(self.rows_error(workspace))
    }

    /// Run `read` in one read-only snapshot of the tables; `None` when they do not exist.
    fn read<T>(
        &self,
        workspace: &str,
        read: impl FnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, tokio_postgres::Error>,
    ) -> Result<Option<T>, PatternError> {
        if !self.ensure(workspace, false)? {
            return Ok(None);
        }
        let mut conn = self.connection(workspace)?;
        off_runtime(|| {
            let tx = wait(
                conn.build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start(),
            )?;
            let out = read(&tx)?;
            wait(tx.commit())?;
            Ok(Some(out))
        })
        .map_err(self.sql_error(workspace))
    }

    /// Replace the rows of `workspace` with `fingerprints` and `outcomes`, in one transaction
    /// holding its lock; `only_if_empty` refuses (nothing changed) when it holds any row.
    fn put_all(
        &self,
        workspace: &str,
        fingerprints: &[FingerprintRow],
        outcomes: &[OutcomeInsert],
        only_if_empty: bool,
    ) -> Result<(), PatternError> {
        self.ensure(workspace, true)?;
        let mut conn = self.connection(workspace)?;
        let not_empty = off_runtime(|| {
            let tx = wait(conn.transaction())?;
            rows::lock_workspace(&tx, workspace)?;
            if only_if_empty && bulk::has_rows(&tx, workspace)? {
                return Ok(true);
            }
            bulk::clear(&tx, workspace)?;
            bulk::insert_fingerprints(&tx, workspace, fingerprints)?;
            bulk::insert_outcomes(&tx, workspace, outcomes)?;
            wait(tx.commit())?;
            Ok(false)
        })
        .map_err(self.sql_error(workspace))?;
        if not_empty {
            return Err(self.unavailable(
                workspace,
                "the pattern store already holds rows; nothing was imported",
            ));
        }
        Ok(())
    }
}

impl PatternFiles for PgPatterns {
    fn path(&self, workspace: &str) -> PathBuf {
        // Not a file: shown in messages and reports only (it never `exists()` on disk).
        PathBuf::from(self.location(workspace))
    }

    fn record(
        &self,
        workspace: &str,
        record: &PatternRecord,
    ) -> Result<RecordOutcome, PatternError> {
        if let Some(reason) = self.skip(workspace) {
            return Ok(RecordOutcome::Skipped { reason });
        }
        self.write(workspace, |rows| apply_record(rows, record, &self.caps))
            .map(RecordOutcome::Recorded)
    }

    fn record_many(&self, workspace: &str, records: &[PatternRecord]) -> Result<u64, PatternError> {
        if self.skip(workspace).is_some() {
            return Ok(0);
        }
        self.write(workspace, |rows| {
            for r in records {
                apply_record(rows, r, &self.caps)?;
            }
            Ok(records.len() as u64)
        })
    }

    fn stats(&self, workspace: &str) -> Result<Option<PatternStats>, PatternError> {
        let read = self.read(workspace, |tx| {
            if !bulk::exists(tx, workspace)? {
                return Ok(None);
            }
            let version = bulk::schema_version(tx, COMPONENT.name)?;
            let s = bulk::summary(tx, workspace)?;
            Ok(Some((version, s)))
        })?;
        let Some(Some((version, s))) = read else {
            return Ok(None);
        };
        Ok(Some(PatternStats {
            location: self.location(workspace),
            schema_version: i64::from(version),
            fingerprints: s.fingerprints,
            outcomes: s.outcomes,
            samples: s.models.iter().map(|m| m.samples).sum(),
            embedding_cache_rows: s.embedding_cache_rows,
            models: s.models,
            oldest_update_us: s.oldest_update_us,
            newest_update_us: s.newest_update_us,
        }))
    }

    fn outcomes(&self, workspace: &str) -> Result<Vec<OutcomeRow>, PatternError> {
        Ok(self
            .read(workspace, |tx| bulk::outcomes(tx, workspace))?
            .unwrap_or_default())
    }

    fn replace_all(
        &self,
        workspace: &str,
        records: &[PatternRecord],
        progress: Progress<'_>,
    ) -> Result<u64, PatternError> {
        if let Some(reason) = self.skip(workspace) {
            return Err(self.unavailable(workspace, reason));
        }
        // The rules on the domain's reference rows; each fingerprint keeps the kind and JSON
        // of the record that (last) created it, as a store applying them one by one would.
        let mut mem = MemoryRows::default();
        let mut created: BTreeMap<String, (String, String)> = BTreeMap::new();
        let total = replay(records, progress, |r| {
            if apply_record(&mut mem, r, &self.caps)?.was_new_fingerprint {
                created.insert(
                    r.fingerprint_id.clone(),
                    (r.kind.clone(), r.structural_json.clone()),
                );
            }
            Ok(())
        })
        .map_err(|e: FingerprintIdTaken| self.unavailable(workspace, e))?;
        let mut fingerprints = Vec::with_capacity(mem.fingerprints.len());
        for (id, (sig, created_at_us)) in mem.fingerprints {
            let Some((kind, json)) = created.remove(&id) else {
                return Err(self.unavailable(
                    workspace,
                    format!("rebuild lost the record that created fingerprint {id}"),
                ));
            };
            fingerprints.push(FingerprintRow {
                id,
                kind,
                structural_json: json,
                structural_sig: sig,
                created_at_us,
            });
        }
        let outcomes: Vec<OutcomeInsert> = mem
            .outcomes
            .into_iter()
            .map(|((fp, model), o)| (fp, model, o))
            .collect();
        self.put_all(workspace, &fingerprints, &outcomes, false)?;
        progress(total, total);
        Ok(total)
    }

    fn export(&self, workspace: &str) -> Result<PatternDump, PatternError> {
        let dump = self.read(workspace, |tx| {
            Ok(PatternDump {
                fingerprints: bulk::fingerprints(tx, workspace)?,
                outcomes: bulk::outcomes(tx, workspace)?,
            })
        })?;
        Ok(dump.unwrap_or_default())
    }

    fn import(&self, workspace: &str, dump: &PatternDump) -> Result<(), PatternError> {
        if let Some(reason) = self.skip(workspace) {
            return Err(self.unavailable(workspace, reason));
        }
        let outcomes: Vec<OutcomeInsert> = dump
            .outcomes
            .iter()
            .map(|o| {
                (
                    o.fingerprint_id.clone(),
                    o.primary_model.clone(),
                    metis_domain::patterns::OutcomeTotals {
                        sample_size: o.sample_size,
                        success_score_mean: o.success_score_mean,
                        success_score_count: o.success_score_count,
                        sum_cost_usd_micros: o.sum_cost_usd_micros,
                        sum_latency_ms: o.sum_latency_ms,
                        pricing_version_last: o.pricing_version_last.clone(),
                        last_updated_at_us: o.last_updated_at_us,
                    },
                )
            })
            .collect();
        self.put_all(workspace, &dump.fingerprints, &outcomes, true)
    }

    fn migration(&self, _workspace: &str) -> Box<dyn Migratable> {
        // One schema for every workspace: the component, whichever workspace was named.
        Box::new(migration::PatternMigration {
            db: self.db.clone(),
            path: PathBuf::from(format!("{} (pattern tables)", self.db.config().redacted())),
        })
    }
}
