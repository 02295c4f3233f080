//! Read helpers over a trace database, for tests and the CLI.
//!
//! Invariants:
//! - A [`TraceReader`] owns its own read-only connection: it never creates, stamps or writes
//!   the file, and under WAL it never blocks the writer.
//! - Results are ordered by `id` (ULID order is emit order).
//! - These calls are synchronous; from async code run them in `spawn_blocking`.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use gw_ports::trace::TraceError;
use rusqlite::{Connection, Row, params};

use crate::schema::{backend, open_error, open_read_only, read_user_version};

/// One row of `events`, as stored (type, actor and sensitivity as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: String,
    pub timestamp_us: i64,
    pub session_id: String,
    pub turn_id: Option<String>,
    pub parent_event_id: Option<String>,
    pub event_type: String,
    pub actor: String,
    pub sensitivity: String,
    pub payload_json: String,
}

const COLUMNS: &str = "id, timestamp_us, session_id, turn_id, parent_event_id, type, actor, \
                       sensitivity, payload_json";

fn row_to_event(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: r.get(0)?,
        timestamp_us: r.get(1)?,
        session_id: r.get(2)?,
        turn_id: r.get(3)?,
        parent_event_id: r.get(4)?,
        event_type: r.get(5)?,
        actor: r.get(6)?,
        sensitivity: r.get(7)?,
        payload_json: r.get(8)?,
    })
}

/// `COUNT(*)` is never negative; clamp rather than fail if SQLite ever said otherwise.
fn count_column(r: &Row<'_>) -> rusqlite::Result<u64> {
    let n: i64 = r.get(0)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// `PRAGMA user_version` of the database at `path`, read without modifying the file.
///
/// # Errors
/// `Unavailable` when the file is missing or is not a SQLite database.
pub fn schema_version(path: &Path) -> Result<i64, TraceError> {
    let conn = open_read_only(path, Duration::from_secs(5))?;
    read_user_version(&conn).map_err(|e| open_error(path, e))
}

/// A read-only view of a trace database.
pub struct TraceReader {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for TraceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceReader").finish_non_exhaustive()
    }
}

impl TraceReader {
    /// Open an existing trace database read-only.
    ///
    /// # Errors
    /// `Unavailable` when the file is missing or is not a SQLite database.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        Self::open_with_timeout(path, Duration::from_secs(5))
    }

    pub(crate) fn open_with_timeout(path: &Path, busy: Duration) -> Result<Self, TraceError> {
        let conn = open_read_only(path, busy)?;
        // Touch the schema now so a non-database file is reported at open, not at first use.
        read_user_version(&conn).map_err(|e| open_error(path, e))?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, TraceError> {
        // A panic while holding the lock cannot leave a read-only connection inconsistent.
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&conn).map_err(backend)
    }

    fn query_events(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<StoredEvent>, TraceError> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt.query_map(params, row_to_event)?;
            rows.collect()
        })
    }

    /// `PRAGMA user_version`.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn schema_version(&self) -> Result<i64, TraceError> {
        self.with_conn(read_user_version)
    }

    /// Number of stored events.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn count_all(&self) -> Result<u64, TraceError> {
        self.with_conn(|c| c.query_row("SELECT COUNT(*) FROM events", [], count_column))
    }

    /// Number of stored events of type `ty`.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn count_by_type(&self, ty: &str) -> Result<u64, TraceError> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM events WHERE type = ?1",
                params![ty],
                count_column,
            )
        })
    }

    /// Events of one turn, ordered by id.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn events_for_turn(&self, turn_id: &str) -> Result<Vec<StoredEvent>, TraceError> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE turn_id = ?1 ORDER BY id");
        self.query_events(&sql, params![turn_id])
    }

    /// Events of one type, ordered by id.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn events_of_type(&self, ty: &str) -> Result<Vec<StoredEvent>, TraceError> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE type = ?1 ORDER BY id");
        self.query_events(&sql, params![ty])
    }

    /// Events of one session with an id after `since_id` (if given), ordered by id, at most
    /// `limit` of them (if given).
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn events_for_session(
        &self,
        session_id: &str,
        since_id: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<StoredEvent>, TraceError> {
        // A negative LIMIT means "no limit" in SQLite.
        let limit = limit.map_or(-1, i64::from);
        let since = since_id.unwrap_or("");
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE session_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
        );
        self.query_events(&sql, params![session_id, since, limit])
    }
}
