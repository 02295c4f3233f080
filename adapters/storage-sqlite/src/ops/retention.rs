//! Retention (batched prune of non-audit events), vacuum and status of a trace database. The
//! batching and the status assembly are `metis_storage_kit`'s; this is the SQL.

use std::path::Path;

use metis_domain::retention::sorted_audit_types;
use metis_domain::time::Timestamp;
use metis_ports::storage::{
    CompactReport, MaintenanceError, Progress, PruneCounts, PruneOptions, StoreStatus,
};
use metis_storage_kit::{Batch, StatusSource, file_len, prune_in_batches, with_suffix};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{event_span, open_existing_ro, open_existing_rw, sqlite_err};
use crate::schema::TRACE_SCHEMA_VERSION;

fn audit_list_sql() -> String {
    sorted_audit_types()
        .iter()
        .map(|t| format!("'{}'", t.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows a prune at `?1` deletes (non-audit, older than the cutoff).
pub(crate) fn prunable_sql() -> String {
    format!(
        "SELECT COUNT(*) FROM events WHERE timestamp_us < ?1 AND type NOT IN ({})",
        audit_list_sql()
    )
}

/// Audit rows older than `?1` (kept).
pub(crate) fn exempt_sql() -> String {
    format!(
        "SELECT COUNT(*) FROM events WHERE timestamp_us < ?1 AND type IN ({})",
        audit_list_sql()
    )
}

/// The oldest row at or after the cutoff `?1`.
pub(crate) const OLDEST_NEWER_SQL: &str =
    "SELECT MIN(timestamp_us) FROM events WHERE timestamp_us >= ?1";

/// The oldest audit row before the cutoff `?1` (audit rows outlive a prune).
pub(crate) fn oldest_audit_sql() -> String {
    format!(
        "SELECT MIN(timestamp_us) FROM events WHERE timestamp_us < ?1 AND type IN ({})",
        audit_list_sql()
    )
}

/// One prune batch: at most `?2` prunable rows older than `?1`.
pub(crate) fn prune_batch_sql() -> String {
    format!(
        "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events \
         WHERE timestamp_us < ?1 AND type NOT IN ({}) LIMIT ?2)",
        audit_list_sql()
    )
}

/// `trace status`: events newer than `?1` (the runbook's "events in the last 5 minutes").
pub(crate) const EVENTS_AFTER_SQL: &str = "SELECT COUNT(*) FROM events WHERE timestamp_us > ?1";

/// `trace status`: audit rows.
pub(crate) fn audit_count_sql() -> String {
    format!(
        "SELECT COUNT(*) FROM events WHERE type IN ({})",
        audit_list_sql()
    )
}

fn count_prunable(conn: &Connection, cutoff: i64) -> rusqlite::Result<(u64, u64)> {
    let q = |sql: &str| -> rusqlite::Result<u64> {
        conn.query_row(sql, params![cutoff], |r| r.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
    };
    Ok((q(&prunable_sql())?, q(&exempt_sql())?))
}

fn oldest_kept(conn: &Connection, cutoff: i64) -> rusqlite::Result<Option<i64>> {
    let newer: Option<i64> = conn.query_row(OLDEST_NEWER_SQL, params![cutoff], |r| r.get(0))?;
    let audit: Option<i64> = conn.query_row(&oldest_audit_sql(), params![cutoff], |r| r.get(0))?;
    Ok(match (newer, audit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// Count what a prune at `cutoff` would delete, read-only (a dry run).
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on SQLite errors.
pub fn prune_dry_run(db: &Path, cutoff: i64) -> Result<PruneCounts, MaintenanceError> {
    let (conn, _) = open_existing_ro(db)?;
    let (eligible, exempt) =
        count_prunable(&conn, cutoff).map_err(sqlite_err(db, "cannot count"))?;
    Ok(PruneCounts {
        rows_eligible: eligible,
        rows_audit_exempt: exempt,
        rows_deleted: 0,
        oldest_kept_us: oldest_kept(&conn, cutoff).map_err(sqlite_err(db, "cannot read"))?,
    })
}

/// Delete non-audit events older than `cutoff` in batches of `opts.batch_rows`, one
/// transaction each. `progress` gets `(deleted, eligible)`.
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on SQLite errors (batches already
/// committed stay deleted; rerunning continues).
pub fn prune(
    db: &Path,
    cutoff: i64,
    opts: PruneOptions,
    progress: Progress<'_>,
) -> Result<PruneCounts, MaintenanceError> {
    let mut conn = open_existing_rw(db)?;
    let (eligible, exempt) =
        count_prunable(&conn, cutoff).map_err(sqlite_err(db, "cannot count"))?;
    let sql = prune_batch_sql();
    let delete = |limit: u32| {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite_err(db, "cannot lock"))?;
        let n = tx
            .execute(&sql, params![cutoff, limit])
            .map_err(sqlite_err(db, "cannot delete from"))?;
        tx.commit().map_err(sqlite_err(db, "cannot commit"))?;
        Ok(Batch {
            deleted: n as u64,
            more: n as u64 >= u64::from(limit),
        })
    };
    let mut counts = prune_in_batches(eligible, exempt, opts, progress, delete)?;
    counts.oldest_kept_us = oldest_kept(&conn, cutoff).map_err(sqlite_err(db, "cannot read"))?;
    Ok(counts)
}

/// Size of the database file plus its WAL.
fn db_bytes(db: &Path) -> u64 {
    file_len(db) + file_len(&with_suffix(db, "-wal"))
}

/// `VACUUM` the database, then truncate its WAL. Blocks writers while it runs.
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on SQLite errors.
pub fn vacuum(db: &Path) -> Result<CompactReport, MaintenanceError> {
    let conn = open_existing_rw(db)?;
    let bytes_before = db_bytes(db);
    conn.execute_batch("VACUUM")
        .map_err(sqlite_err(db, "cannot vacuum"))?;
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(CompactReport {
        bytes_before,
        bytes_after: db_bytes(db),
    })
}

/// The status reads of an open trace database.
struct Status {
    conn: Connection,
    version: i64,
}

impl StatusSource for Status {
    type Error = rusqlite::Error;

    fn schema_version(&self) -> rusqlite::Result<i64> {
        Ok(self.version)
    }

    fn event_span(&self) -> rusqlite::Result<(u64, Option<i64>, Option<i64>)> {
        event_span(&self.conn)
    }

    fn events_after(&self, after_us: Timestamp) -> rusqlite::Result<u64> {
        let n: i64 = self
            .conn
            .query_row(EVENTS_AFTER_SQL, params![after_us], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn audit_events(&self) -> rusqlite::Result<u64> {
        let n: i64 = self.conn.query_row(&audit_count_sql(), [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn sessions(&self) -> rusqlite::Result<u64> {
        // A database from before the sessions table counts none.
        let n: Option<i64> = self
            .conn
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
            .optional()
            .unwrap_or(None);
        Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }
}

/// Read the status of `db` (read-only).
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on SQLite errors.
pub fn status(db: &Path, now: Timestamp) -> Result<StoreStatus, MaintenanceError> {
    let (conn, version) = open_existing_ro(db)?;
    metis_storage_kit::status(
        &Status { conn, version },
        db,
        TRACE_SCHEMA_VERSION,
        now,
        Some("-wal"),
    )
    .map_err(sqlite_err(db, "cannot read"))
}
