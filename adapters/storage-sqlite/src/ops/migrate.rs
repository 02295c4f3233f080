//! Versioned migrations of the trace and sessions schemas of a trace database, and where a
//! migration's automatic backup goes.

use std::path::{Path, PathBuf};

use metis_domain::time::{Timestamp, format_iso};
use metis_ports::storage::{MaintenanceError, MigrationPlan};
use metis_storage_kit::parent_dir;
use rusqlite::{Connection, TransactionBehavior};

use super::{check_version, open_existing_ro, open_existing_rw, sqlite_err};
use crate::schema::{
    EVENT_INDEX_NAMES, TRACE_SCHEMA_VERSION, apply_full_schema, read_user_version, retired_present,
};
use crate::sessions::{
    SESSIONS_SCHEMA_VERSION, migrate_sessions, sessions_schema_level, sessions_steps,
};

/// The steps that bring a file to this binary's trace schema: the table, missing indexes,
/// retired indexes to drop (with why), the version stamp. Index changes keep the version: an
/// older binary reads the file as before (and recreates the indexes it knows on open).
fn trace_steps(conn: &Connection, current: i64) -> rusqlite::Result<Vec<String>> {
    let mut steps = Vec::new();
    let names: Vec<String> = {
        let mut stmt = conn.prepare("SELECT type || ':' || name FROM sqlite_master")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    if !names.iter().any(|n| n == "table:events") {
        steps.push("create table events".to_owned());
    }
    // Drops first: `apply_full_schema` drops before it builds, so freed pages are reused.
    for r in retired_present(conn)? {
        steps.push(format!("drop index {} ({})", r.name, r.reason));
    }
    for idx in EVENT_INDEX_NAMES {
        if !names.iter().any(|n| n == &format!("index:{idx}")) {
            steps.push(format!("create index {idx}"));
        }
    }
    if current < TRACE_SCHEMA_VERSION {
        steps.push(format!(
            "set PRAGMA user_version {current} -> {TRACE_SCHEMA_VERSION}"
        ));
    }
    Ok(steps)
}

/// The trace migration of `db`, without changing it.
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on SQLite errors.
pub fn plan_trace_migration(db: &Path) -> Result<MigrationPlan, MaintenanceError> {
    let (conn, current) = open_existing_ro(db)?;
    let steps = trace_steps(&conn, current).map_err(sqlite_err(db, "cannot inspect"))?;
    Ok(MigrationPlan {
        path: db.to_path_buf(),
        current,
        target: TRACE_SCHEMA_VERSION,
        steps,
    })
}

/// Apply the trace migration of `db` in one transaction. Returns the steps applied (none when
/// already current).
///
/// # Errors
/// As [`plan_trace_migration`].
pub fn apply_trace_migration(db: &Path) -> Result<MigrationPlan, MaintenanceError> {
    let mut conn = open_existing_rw(db)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(db, "cannot lock"))?;
    let current = read_user_version(&tx).map_err(sqlite_err(db, "cannot read"))?;
    check_version(db, current)?;
    let steps = trace_steps(&tx, current).map_err(sqlite_err(db, "cannot inspect"))?;
    if !steps.is_empty() {
        apply_full_schema(&tx).map_err(sqlite_err(db, "cannot migrate"))?;
        if current < TRACE_SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", TRACE_SCHEMA_VERSION)
                .map_err(sqlite_err(db, "cannot stamp"))?;
        }
    }
    tx.commit().map_err(sqlite_err(db, "cannot commit"))?;
    Ok(MigrationPlan {
        path: db.to_path_buf(),
        current,
        target: TRACE_SCHEMA_VERSION,
        steps,
    })
}

/// The sessions migration of `db`, without changing it.
///
/// # Errors
/// As [`plan_trace_migration`].
pub fn plan_sessions_migration(db: &Path) -> Result<MigrationPlan, MaintenanceError> {
    let (conn, _) = open_existing_ro(db)?;
    let current = sessions_schema_level(&conn).map_err(sqlite_err(db, "cannot inspect"))?;
    let steps = sessions_steps(&conn).map_err(sqlite_err(db, "cannot inspect"))?;
    Ok(MigrationPlan {
        path: db.to_path_buf(),
        current,
        target: SESSIONS_SCHEMA_VERSION,
        steps: steps.iter().map(ToString::to_string).collect(),
    })
}

/// Apply the sessions migration of `db` in one transaction, keeping every row.
///
/// # Errors
/// As [`plan_trace_migration`].
pub fn apply_sessions_migration(db: &Path) -> Result<MigrationPlan, MaintenanceError> {
    let mut conn = open_existing_rw(db)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(db, "cannot lock"))?;
    check_version(
        db,
        read_user_version(&tx).map_err(sqlite_err(db, "cannot read"))?,
    )?;
    let current = sessions_schema_level(&tx).map_err(sqlite_err(db, "cannot inspect"))?;
    let steps = migrate_sessions(&tx).map_err(sqlite_err(db, "cannot migrate"))?;
    tx.commit().map_err(sqlite_err(db, "cannot commit"))?;
    Ok(MigrationPlan {
        path: db.to_path_buf(),
        current,
        target: SESSIONS_SCHEMA_VERSION,
        steps: steps.iter().map(ToString::to_string).collect(),
    })
}

/// Where a migration's automatic backup goes: next to the file, named with the UTC time
/// (`<name>.pre-migrate-20260515T142210Z.db`).
#[must_use]
pub fn migration_backup_path(db: &Path, now: Timestamp) -> PathBuf {
    let iso = format_iso(now);
    let stamp: String = iso
        .chars()
        .take(19)
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let name = db
        .file_name()
        .map_or_else(|| "metis.db".into(), |n| n.to_string_lossy().into_owned());
    parent_dir(db).join(format!("{name}.pre-migrate-{stamp}Z.db"))
}
