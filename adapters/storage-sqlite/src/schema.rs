//! The trace database schema, its connection settings and its version stamp.
//!
//! Invariants:
//! - The `events` DDL is the original gateway's (`reference/storage.md` §2), so operator SQL
//!   from the runbook works unchanged. Every statement is `IF NOT EXISTS` / `IF EXISTS`:
//!   applying the schema is additive and idempotent, and index changes never bump the version
//!   (an older binary opening the file recreates the indexes it knows; nothing else differs).
//! - The index set is the original's minus five indexes no statement of the product or the
//!   runbook reads ([`RETIRED_EVENT_INDEXES`]), plus this port's audit-chain index. Every
//!   index costs the trace writer a B-tree insert (and, on a large file, dirty pages) per
//!   event. `plans.rs` lists every statement the product runs and the tests check each stays
//!   index-backed on this set and on the original one.
//! - Opening a file never walks a large index: a file that still has retired indexes drops
//!   them on open only when it is small ([`START_SWITCH_MAX_ROWS`]); a larger one keeps them
//!   (every query works either way) until `metis trace migrate`.
//! - `PRAGMA user_version` is read before anything touches the file. A value above
//!   [`TRACE_SCHEMA_VERSION`] is refused without modifying the file; a lower value (0 means
//!   unstamped or new) is raised to [`TRACE_SCHEMA_VERSION`]; the value is never lowered.
//! - Every connection that writes runs the same PRAGMA sequence, in this order:
//!   `journal_mode=WAL`, `synchronous=NORMAL`, `wal_autocheckpoint`, `busy_timeout`, then
//!   `foreign_keys=OFF` (the declared FK to `sessions` is documentation only, as upstream).

use std::path::Path;
use std::time::Duration;

use metis_ports::trace::TraceError;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

/// The trace schema version this binary reads and writes (`PRAGMA user_version`).
pub const TRACE_SCHEMA_VERSION: i64 = 1;

/// Names of the indexes on `events` this binary maintains, in creation order: six of the
/// original gateway's ten, and the audit-chain index this port added (additive, so it did
/// not bump the version).
pub const EVENT_INDEX_NAMES: [&str; 6] = [
    "idx_events_session_id",
    "idx_events_type_timestamp",
    "idx_events_turn_id_id",
    "idx_events_timestamp_us",
    "idx_events_eval_subject_kind",
    "idx_events_audit_seq",
];

/// An index of the original schema that this binary drops (by `metis trace migrate`, or when
/// a small file is opened), with its original DDL and why nothing needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetiredIndex {
    pub name: &'static str,
    /// The original `CREATE INDEX` (an older binary recreates it on open; tests and
    /// benchmarks build original-shaped files with it).
    pub sql: &'static str,
    pub reason: &'static str,
}

/// The original indexes this binary no longer maintains. On a file that has them, SQLite's
/// planner chose none of them for any statement the product or the runbook runs (BENCHMARKS.md,
/// "Trace indexes at 10 million events"), so every plan is the same without them.
pub const RETIRED_EVENT_INDEXES: [RetiredIndex; 5] = [
    RetiredIndex {
        name: "idx_events_turn",
        sql: "CREATE INDEX IF NOT EXISTS idx_events_turn ON events(turn_id)",
        reason: "a prefix of idx_events_turn_id_id, which serves every lookup by turn",
    },
    RetiredIndex {
        name: "idx_events_parent",
        sql: "CREATE INDEX IF NOT EXISTS idx_events_parent ON events(parent_event_id)",
        reason: "no statement looks events up by parent_event_id",
    },
    RetiredIndex {
        name: "idx_events_gateway_key_id",
        sql: "CREATE INDEX IF NOT EXISTS idx_events_gateway_key_id \
              ON events(json_extract(payload_json, '$.gateway_key_id')) \
              WHERE json_extract(payload_json, '$.gateway_key_id') IS NOT NULL",
        reason: "unused: usage filtered by key is bounded by idx_events_type_timestamp",
    },
    RetiredIndex {
        name: "idx_events_user_id",
        sql: "CREATE INDEX IF NOT EXISTS idx_events_user_id \
              ON events(json_extract(payload_json, '$.user_id')) \
              WHERE json_extract(payload_json, '$.user_id') IS NOT NULL",
        reason: "unused: usage filtered by user is bounded by idx_events_type_timestamp",
    },
    RetiredIndex {
        name: "idx_events_team_id",
        sql: "CREATE INDEX IF NOT EXISTS idx_events_team_id \
              ON events(json_extract(payload_json, '$.team_id')) \
              WHERE json_extract(payload_json, '$.team_id') IS NOT NULL",
        reason: "unused: usage filtered by team is bounded by idx_events_type_timestamp",
    },
];

/// An existing file with at most this many rows (by `MAX(rowid)`, which over-counts after a
/// prune, so the guess errs towards leaving the file alone) drops its retired indexes when
/// it is opened; a larger one keeps them until `metis trace migrate`. Dropping an index reads
/// all of its pages (the five hold ≈ 65 MB per million events): measured 0.95 s for 10
/// million events with the file in the OS cache, so at this bound start waits ≈ 0.1 s (a
/// cold disk reads ≈ 65 MB).
pub const START_SWITCH_MAX_ROWS: i64 = 1_000_000;

/// The `events` table and the indexes this binary maintains. The foreign key is declared but
/// not enforced (`foreign_keys` stays OFF): a gateway-only database has no `sessions` table.
///
/// `idx_events_audit_seq` is this port's addition: it serves the audit chain (the writer reads
/// the chain's tail, `metis audit verify` walks it in sequence order). Only audit rows carry
/// `audit_seq`, so the partial index stays as small as the audit log.
const SCHEMA_SQL: &str = "\
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    timestamp_us INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    turn_id TEXT,
    parent_event_id TEXT,
    type TEXT NOT NULL,
    actor TEXT NOT NULL,
    sensitivity TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    FOREIGN KEY (session_id) REFERENCES sessions(id)
);
CREATE INDEX IF NOT EXISTS idx_events_session_id ON events(session_id, id);
CREATE INDEX IF NOT EXISTS idx_events_type_timestamp ON events(type, timestamp_us);
CREATE INDEX IF NOT EXISTS idx_events_turn_id_id ON events(turn_id, id);
CREATE INDEX IF NOT EXISTS idx_events_timestamp_us ON events(timestamp_us);
CREATE INDEX IF NOT EXISTS idx_events_eval_subject_kind
    ON events(json_extract(payload_json, '$.subject_kind'), timestamp_us)
    WHERE type = 'eval.completed';
CREATE INDEX IF NOT EXISTS idx_events_audit_seq
    ON events(json_extract(payload_json, '$.audit_seq'))
    WHERE json_extract(payload_json, '$.audit_seq') IS NOT NULL;
";

/// The retired indexes a file still has (reads `sqlite_master` only).
pub(crate) fn retired_present(conn: &Connection) -> rusqlite::Result<Vec<RetiredIndex>> {
    let present: Vec<String> = {
        let mut stmt = conn.prepare_cached(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'",
        )?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    Ok(RETIRED_EVENT_INDEXES
        .iter()
        .copied()
        .filter(|r| present.iter().any(|p| p == r.name))
        .collect())
}

/// Drop the retired indexes. Reads every page of each: run inside the caller's transaction,
/// on a small file or from `metis trace migrate`.
pub(crate) fn drop_retired(conn: &Connection) -> rusqlite::Result<()> {
    for r in RETIRED_EVENT_INDEXES {
        conn.execute_batch(&format!("DROP INDEX IF EXISTS {}", r.name))?;
    }
    Ok(())
}

/// The table and exactly this binary's index set, as `metis trace migrate` leaves a file.
pub(crate) fn apply_full_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA_SQL)?;
    drop_retired(conn)
}

/// What opening did about retired indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexSwitch {
    /// None present.
    Current,
    /// A small file had some; they were dropped (`rows` by `MAX(rowid)`).
    Dropped { rows: i64 },
    /// A larger file keeps them until `metis trace migrate`.
    Deferred {
        rows: i64,
        retired: Vec<&'static str>,
    },
}

/// Ensure the table and indexes on open, inside the caller's write transaction (as before),
/// and drop retired indexes when that is quick.
pub(crate) fn ensure_schema(conn: &Connection) -> rusqlite::Result<IndexSwitch> {
    conn.execute_batch(SCHEMA_SQL)?;
    let retired = retired_present(conn)?;
    if retired.is_empty() {
        return Ok(IndexSwitch::Current);
    }
    // O(log n): the rowid B-tree's last key. Zero for an empty table.
    let rows: i64 = conn.query_row("SELECT COALESCE(MAX(rowid), 0) FROM events", [], |r| {
        r.get(0)
    })?;
    if rows > START_SWITCH_MAX_ROWS {
        return Ok(IndexSwitch::Deferred {
            rows,
            retired: retired.iter().map(|r| r.name).collect(),
        });
    }
    drop_retired(conn)?;
    Ok(IndexSwitch::Dropped { rows })
}

/// Log what [`ensure_schema`] did (once per open).
pub(crate) fn log_index_switch(path: &Path, switch: &IndexSwitch) {
    match switch {
        IndexSwitch::Current => {}
        IndexSwitch::Dropped { rows } => tracing::info!(
            path = %path.display(),
            rows,
            "dropped the trace indexes no query uses (retired by this version)"
        ),
        IndexSwitch::Deferred { rows, retired } => tracing::warn!(
            path = %path.display(),
            rows,
            retired = %retired.join(","),
            "trace database still has indexes no query uses; each costs the trace writer time \
             per event. Run `metis trace migrate` in a quiet moment to drop them (it holds the \
             write lock meanwhile: about 0.1 s per million events when the file is in the OS \
             cache, longer from a cold disk)"
        ),
    }
}

/// `<verb> INTO events (<every column>) VALUES (?1, …, ?9)`: the column list is written once
/// for the writer's insert and the copy's insert.
macro_rules! insert_events_sql {
    ($verb:literal) => {
        concat!(
            $verb,
            " INTO events \
    (id, timestamp_us, session_id, turn_id, parent_event_id, type, actor, sensitivity, payload_json) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        )
    };
}

/// The one statement the writer uses (prepared once, cached on the connection).
pub(crate) const INSERT_SQL: &str = insert_events_sql!("INSERT");

/// [`INSERT_SQL`] skipping ids already stored (`migrate-store` copies; see `transfer.rs`).
pub(crate) const INSERT_OR_IGNORE_SQL: &str = insert_events_sql!("INSERT OR IGNORE");

/// Connection settings applied on every open of a writing connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pragmas {
    pub wal_autocheckpoint_pages: u32,
    pub busy_timeout: Duration,
}

/// Wrap a rusqlite error as a backend error.
pub(crate) fn backend(e: rusqlite::Error) -> TraceError {
    TraceError::Backend(Box::new(e))
}

/// Map an error seen while opening or inspecting `path` to a message an operator can act on.
pub(crate) fn open_error(path: &Path, e: rusqlite::Error) -> TraceError {
    let shown = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => TraceError::Unavailable(format!(
            "{shown} is not a SQLite database (wrong --db-path, or the file is damaged): {e}"
        )),
        Some(ErrorCode::CannotOpen) => {
            TraceError::Unavailable(format!("cannot open trace database {shown}: {e}"))
        }
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            TraceError::Unavailable(format!("trace database {shown} is not writable: {e}"))
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => TraceError::Unavailable(
            format!("trace database {shown} is locked by another process: {e}"),
        ),
        _ => TraceError::Unavailable(format!("trace database {shown}: {e}")),
    }
}

/// Read `PRAGMA user_version`. This is also the first real read of the file, so it is where a
/// non-SQLite file is detected.
pub(crate) fn read_user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Refuse a file stamped by a newer binary.
pub(crate) fn check_not_too_new(found: i64) -> Result<(), TraceError> {
    if found > TRACE_SCHEMA_VERSION {
        return Err(TraceError::TooNew {
            found,
            supported: TRACE_SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Apply the PRAGMA sequence. Returns the journal mode SQLite actually chose (it can refuse
/// WAL, e.g. on a filesystem without shared memory).
pub(crate) fn apply_pragmas(conn: &Connection, p: Pragmas) -> rusqlite::Result<String> {
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // `wal_autocheckpoint` answers with the new value; read it so the statement completes.
    let _pages: i64 = conn.query_row(
        &format!("PRAGMA wal_autocheckpoint={}", p.wal_autocheckpoint_pages),
        [],
        |r| r.get(0),
    )?;
    conn.busy_timeout(p.busy_timeout)?;
    // The original never enforced the declared foreign key (a gateway-only file has no
    // `sessions` table). The bundled SQLite is compiled with foreign keys ON by default, so
    // turn them off explicitly or every insert fails with "no such table: main.sessions".
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(mode)
}

/// Open (creating when missing) the database at `path` for writing: version check, PRAGMAs,
/// schema, version stamp. The returned connection is ready for the writer.
pub(crate) fn open_for_writing(path: &Path, p: Pragmas) -> Result<Connection, TraceError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    // Wait for a concurrent opener rather than failing the version read.
    conn.busy_timeout(p.busy_timeout)
        .map_err(|e| open_error(path, e))?;
    let found = read_user_version(&conn).map_err(|e| open_error(path, e))?;
    check_not_too_new(found)?;

    let mode = apply_pragmas(&conn, p).map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            path = %path.display(),
            journal_mode = %mode,
            "SQLite refused WAL mode for the trace database; writes will block readers"
        );
    }

    // DDL and the stamp in one transaction: a crash leaves either the old file or the new one.
    // `BEGIN IMMEDIATE` takes the write lock up front (waiting up to `busy_timeout`), and the
    // version is re-read under it so a newer binary that stamped the file between our first
    // read and now is still respected.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| open_error(path, e))?;
    let found = read_user_version(&tx).map_err(|e| open_error(path, e))?;
    check_not_too_new(found)?;
    let switch = ensure_schema(&tx).map_err(|e| open_error(path, e))?;
    let steps = crate::sessions::migrate_sessions(&tx).map_err(|e| open_error(path, e))?;
    if steps
        .iter()
        .any(|s| matches!(s, crate::sessions::SessionStep::AddColumn { .. }))
    {
        tracing::info!(
            path = %path.display(),
            steps = %steps.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            "migrated a pre-delegation sessions table"
        );
    }
    if found < TRACE_SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", TRACE_SCHEMA_VERSION)
            .map_err(|e| open_error(path, e))?;
    }
    tx.commit().map_err(|e| open_error(path, e))?;
    log_index_switch(path, &switch);
    if found < TRACE_SCHEMA_VERSION {
        tracing::info!(
            path = %path.display(),
            from = found,
            to = TRACE_SCHEMA_VERSION,
            "stamped trace database schema version"
        );
    }
    Ok(conn)
}

/// Open an existing database read-only (never creates, never modifies it).
pub(crate) fn open_read_only(
    path: &Path,
    busy_timeout: Duration,
) -> Result<Connection, TraceError> {
    if !path.exists() {
        return Err(TraceError::Unavailable(format!(
            "trace database {} does not exist",
            path.display()
        )));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| open_error(path, e))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap_or(-1)
    }

    #[test]
    fn the_writer_connection_carries_the_documented_pragmas() {
        let Ok(dir) = tempfile::tempdir() else {
            return;
        };
        let p = Pragmas {
            wal_autocheckpoint_pages: 8192,
            busy_timeout: Duration::from_millis(5000),
        };
        let conn = open_for_writing(&dir.path().join("t.db"), p);
        assert!(conn.is_ok());
        let Ok(conn) = conn else { return };
        // synchronous: 1 = NORMAL.
        assert_eq!(pragma(&conn, "synchronous"), 1);
        assert_eq!(pragma(&conn, "wal_autocheckpoint"), 8192);
        assert_eq!(pragma(&conn, "busy_timeout"), 5000);
        assert_eq!(pragma(&conn, "foreign_keys"), 0);
        assert_eq!(pragma(&conn, "user_version"), TRACE_SCHEMA_VERSION);
    }
}
