//! Operations on a trace database file: hot backup, checked restore, versioned migrations of
//! the trace and sessions schemas, batched retention, vacuum and status. The engine-free
//! order of backup, restore, prune and status lives in `metis-storage-kit`; this module supplies
//! the SQLite steps.
//!
//! Invariants:
//! - Backup reads through a read-only connection (`VACUUM INTO`, one read transaction: a
//!   consistent snapshot while the gateway keeps writing) into a temp name in the destination
//!   directory, fsyncs it, then publishes it with a no-clobber link; on any failure the temp
//!   file is removed, so a partial backup never exists under the destination name.
//! - The metadata block is a pure function of the published file and the two paths, so the
//!   same file always gives the same block; the block is also written to `<dest>.meta`.
//! - Restore leaves the target and its `-wal`/`-shm` byte-identical until every check passed
//!   (source present and clean, target absent or `--force`, schema version equal to the
//!   binary's, `.meta` version matching, no gateway holding the writer lock, then on a copy in
//!   the target directory: checksum matching, the copy opening and passing `PRAGMA
//!   quick_check`, an `events` table); only then does it fold the old WAL, remove the
//!   target's stale `-wal`/`-shm` and rename the verified copy over it.
//! - Migrations compute their steps from the file's shape, apply them all in one `BEGIN
//!   IMMEDIATE` transaction, and are idempotent (a second run has no steps). Versions are never
//!   lowered, and a file from a newer binary is refused by every operation here.
//! - Prune deletes in bounded batches, one short transaction each, with a pause between, so a
//!   live writer waits for at most one batch; audit events are never deleted.

use std::path::Path;
use std::time::Duration;

pub use metis_domain::backup::{BackupMeta, MetaFields, RestoreSummary, parse_meta};
pub use metis_ports::storage::{
    CompactReport, MaintenanceError, MigrationPlan, Progress, PruneCounts, PruneOptions,
    StoreStatus, no_progress,
};
use metis_storage_kit::require_file;
pub use metis_storage_kit::with_suffix;
use rusqlite::{Connection, OpenFlags};

use crate::schema::{
    Pragmas, TRACE_SCHEMA_VERSION, apply_pragmas, open_read_only, read_user_version,
};

mod backup;
mod migrate;
pub(crate) mod retention;

pub(crate) use backup::Sqlite;
pub use backup::header_user_version;
pub use migrate::{
    apply_sessions_migration, apply_trace_migration, migration_backup_path,
    plan_sessions_migration, plan_trace_migration,
};
pub use retention::{prune, prune_dry_run, status, vacuum};

fn sqlite_err(path: &Path, what: &str) -> impl Fn(rusqlite::Error) -> MaintenanceError {
    let shown = path.display().to_string();
    let what = what.to_owned();
    move |e| MaintenanceError::Failed(format!("{what} {shown}: {e}"))
}

fn check_version(path: &Path, found: i64) -> Result<(), MaintenanceError> {
    if found > TRACE_SCHEMA_VERSION {
        return Err(MaintenanceError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: TRACE_SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// The backup metadata block's counts (one statement: one snapshot).
pub(crate) const EVENT_SPAN_SQL: &str =
    "SELECT COUNT(*), MIN(timestamp_us), MAX(timestamp_us) FROM events";

/// `COUNT(*)`, `MIN`, `MAX` of `events.timestamp_us` (zero and none for a database without
/// an `events` table, e.g. a pattern store backed up before its migration).
fn event_span(conn: &Connection) -> rusqlite::Result<(u64, Option<i64>, Option<i64>)> {
    let has_events: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get(0),
    )?;
    if has_events == 0 {
        return Ok((0, None, None));
    }
    conn.query_row(EVENT_SPAN_SQL, [], |r| {
        let n: i64 = r.get(0)?;
        Ok((u64::try_from(n).unwrap_or(0), r.get(1)?, r.get(2)?))
    })
}

fn open_existing_rw(path: &Path) -> Result<Connection, MaintenanceError> {
    require_file(path, "database")?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path, "cannot open"))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(sqlite_err(path, "cannot configure"))?;
    let found = read_user_version(&conn).map_err(sqlite_err(path, "cannot read"))?;
    check_version(path, found)?;
    apply_pragmas(
        &conn,
        Pragmas {
            wal_autocheckpoint_pages: 8192,
            busy_timeout: Duration::from_secs(30),
        },
    )
    .map_err(sqlite_err(path, "cannot configure"))?;
    Ok(conn)
}

fn open_existing_ro(path: &Path) -> Result<(Connection, i64), MaintenanceError> {
    require_file(path, "database")?;
    let conn = open_read_only(path, Duration::from_secs(5))
        .map_err(|e| MaintenanceError::Failed(e.to_string()))?;
    let found = read_user_version(&conn).map_err(sqlite_err(path, "cannot read"))?;
    check_version(path, found)?;
    Ok((conn, found))
}
