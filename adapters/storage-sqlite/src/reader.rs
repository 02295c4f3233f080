//! Read helpers over a trace database, for tests and the CLI.
//!
//! Invariants:
//! - A [`TraceReader`] owns its own read-only connection: it never creates, stamps or writes
//!   the file, and under WAL it never blocks the writer.
//! - Results are ordered by `id` (ULID order is emit order).
//! - These calls are synchronous; from async code run them in `spawn_blocking` (the
//!   `TraceQuery` implementation of `SqliteTraceStore` does).

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metis_domain::audit::BrokenLink;
use metis_ports::trace::{EventRow, KeySpend, TraceError, UsageGroup, UsageRow};
use rusqlite::{Connection, Row, params};

use crate::query::{self, COLUMNS, row_to_event};
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

impl From<StoredEvent> for EventRow {
    fn from(e: StoredEvent) -> Self {
        EventRow {
            id: e.id,
            timestamp_us: e.timestamp_us,
            session_id: e.session_id,
            turn_id: e.turn_id,
            parent_event_id: e.parent_event_id,
            event_type: e.event_type,
            actor: e.actor,
            sensitivity: e.sensitivity,
            payload_json: e.payload_json,
        }
    }
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

/// Every stored event (migrate-store's counts).
pub(crate) const COUNT_ALL_SQL: &str = "SELECT COUNT(*) FROM events";

pub(crate) const COUNT_BY_TYPE_SQL: &str = "SELECT COUNT(*) FROM events WHERE type = ?1";

pub(crate) fn events_for_turn_sql() -> String {
    format!("SELECT {COLUMNS} FROM events WHERE turn_id = ?1 ORDER BY id")
}

/// Every event of one type (`metis patterns rebuild` reads `pattern.recorded` this way).
pub(crate) fn events_of_type_sql() -> String {
    format!("SELECT {COLUMNS} FROM events WHERE type = ?1 ORDER BY id")
}

pub(crate) fn events_of_type_with_field_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM events WHERE type = ?1 \
         AND json_extract(payload_json, '$.' || ?2) = ?3 ORDER BY id"
    )
}

pub(crate) fn events_for_session_sql() -> String {
    format!("SELECT {COLUMNS} FROM events WHERE session_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3")
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
        // Usage rollups have one statement per (group, filter) pair; keep them all prepared.
        conn.set_prepared_statement_cache_capacity(64);
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

    pub(crate) fn query_events(
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
        self.with_conn(|c| c.query_row(COUNT_ALL_SQL, [], count_column))
    }

    /// Number of stored events of type `ty`.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn count_by_type(&self, ty: &str) -> Result<u64, TraceError> {
        self.with_conn(|c| c.query_row(COUNT_BY_TYPE_SQL, params![ty], count_column))
    }

    /// Events of one turn, ordered by id.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn events_for_turn(&self, turn_id: &str) -> Result<Vec<StoredEvent>, TraceError> {
        self.query_events(&events_for_turn_sql(), params![turn_id])
    }

    /// Events of one type, ordered by id.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn events_of_type(&self, ty: &str) -> Result<Vec<StoredEvent>, TraceError> {
        self.query_events(&events_of_type_sql(), params![ty])
    }

    /// Events of one type whose payload has `field` (a top-level key) equal to `value`,
    /// ordered by id (narrowed by `idx_events_type_timestamp`, then filtered).
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn events_of_type_with_field(
        &self,
        ty: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<StoredEvent>, TraceError> {
        self.query_events(&events_of_type_with_field_sql(), params![ty, field, value])
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
        self.query_events(&events_for_session_sql(), params![session_id, since, limit])
    }

    /// Per-key spend since `day_start_us` and since `month_start_us` (calls completed or
    /// failed; keys without spend are absent), ordered by key id.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn spend_by_key(
        &self,
        day_start_us: i64,
        month_start_us: i64,
    ) -> Result<Vec<KeySpend>, TraceError> {
        self.with_conn(|c| query::spend_by_key(c, day_start_us, month_start_us))
    }

    /// Cost, tokens and call counts in `[since_us, until_us)`, grouped, optionally filtered
    /// to one value of a field; sorted by cost descending (then group, `None` last).
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, &str)>,
    ) -> Result<Vec<UsageRow>, TraceError> {
        self.with_conn(|c| query::usage(c, since_us, until_us, group, filter))
    }

    /// Audit events in `[since_us, until_us)`, ordered by id. `types` empty means every audit
    /// type; otherwise only the listed types that are audit types (others are ignored, so a
    /// list without any audit type returns nothing).
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<StoredEvent>, TraceError> {
        self.with_conn(|c| query::audit_events(c, since_us, until_us, types))
    }

    /// Walk the audit chain in `audit_seq` order and verify every link
    /// ([`metis_domain::audit::verify`]). `Ok(Ok(n))`: `n` chained events, all intact;
    /// `Ok(Err(link))`: the first broken link. Loads the chained rows into memory.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn verify_audit_chain(&self) -> Result<Result<u64, BrokenLink>, TraceError> {
        self.with_conn(query::verify_audit_chain)
    }

    /// Number of audit-type events without a chain link (written by a binary that predates
    /// the chain); the chain cannot vouch for them.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn count_unchained_audit_events(&self) -> Result<u64, TraceError> {
        self.with_conn(query::count_unchained_audit)
    }
}
