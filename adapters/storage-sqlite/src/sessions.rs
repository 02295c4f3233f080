//! The `sessions` table of `metis.db`: its DDL, the forward migration of older files, and
//! [`SqliteSessionStore`] (the `SessionStore` port).
//!
//! Invariants:
//! - DDL as the original (`reference/storage.md` §6) plus one additive index
//!   (`idx_sessions_updated`, for `sessions list`). `messages` is not created: the gateway
//!   never stores message content.
//! - Migration of a pre-delegation table: `PRAGMA table_info` finds the missing delegation
//!   columns, `ALTER TABLE ADD COLUMN` adds them, and only then is the partial index
//!   `idx_sessions_parent` created (it names a column an old table lacks). Every row is kept.
//!   The caller runs it inside its write transaction (the trace store's open, `sessions
//!   migrate`), so a failure leaves the file as it was.
//! - The sessions schema has no version marker of its own (the file's `user_version` belongs
//!   to the trace and covers it); [`sessions_schema_level`] derives one from the table's shape.
//! - Writes go through the trace store's writer thread (see `writer.rs`): `record_turn` only
//!   queues. Reads use the store's own read-only connection on tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metis_domain::sessions::{SessionId, SessionRecord, SessionTurn};
use metis_ports::sessions::SessionError;
use metis_ports::writer::WriterHandle;
use rusqlite::{CachedStatement, Connection, ErrorCode, Row, params};

use crate::schema::{open_error, open_read_only};
use crate::store::Inner;

/// The shape level this binary creates: 1 = the original table without delegation columns,
/// 2 = with `parent_session_id`, `parent_tool_use_id`, `is_worker` and `idx_sessions_parent`.
pub const SESSIONS_SCHEMA_VERSION: i64 = 2;

const CREATE_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    workspace_path TEXT NOT NULL,
    active_model TEXT,
    routing_policy_json TEXT,
    cost_so_far_usd REAL NOT NULL DEFAULT 0,
    turn_count INTEGER NOT NULL DEFAULT 0,
    schema_version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    parent_session_id TEXT,
    parent_tool_use_id TEXT,
    is_worker INTEGER NOT NULL DEFAULT 0
)";

/// The delegation columns a pre-delegation table lacks, with their declarations.
const DELEGATION_COLUMNS: [(&str, &str); 3] = [
    ("parent_session_id", "TEXT"),
    ("parent_tool_use_id", "TEXT"),
    ("is_worker", "INTEGER NOT NULL DEFAULT 0"),
];

/// Indexes created after the columns exist.
const INDEXES: [(&str, &str); 2] = [
    (
        "idx_sessions_parent",
        "CREATE INDEX IF NOT EXISTS idx_sessions_parent ON sessions(parent_session_id) \
         WHERE parent_session_id IS NOT NULL",
    ),
    (
        "idx_sessions_updated",
        "CREATE INDEX IF NOT EXISTS idx_sessions_updated ON sessions(updated_at)",
    ),
];

/// Upsert of one completed turn (see the `SessionStore` contract). No row changes when the
/// session exists in another workspace.
pub(crate) const UPSERT_SQL: &str = "INSERT INTO sessions (id, workspace_path, active_model, \
    routing_policy_json, cost_so_far_usd, turn_count, schema_version, created_at, updated_at, \
    parent_session_id, parent_tool_use_id, is_worker) \
    VALUES (?1, ?2, ?3, NULL, ?4, 1, 1, ?5, ?5, ?6, ?7, ?8) \
    ON CONFLICT(id) DO UPDATE SET \
    active_model = COALESCE(excluded.active_model, sessions.active_model), \
    cost_so_far_usd = sessions.cost_so_far_usd + excluded.cost_so_far_usd, \
    turn_count = sessions.turn_count + 1, \
    updated_at = MAX(sessions.updated_at, excluded.updated_at), \
    parent_session_id = COALESCE(sessions.parent_session_id, excluded.parent_session_id), \
    parent_tool_use_id = COALESCE(sessions.parent_tool_use_id, excluded.parent_tool_use_id), \
    is_worker = MAX(sessions.is_worker, excluded.is_worker) \
    WHERE sessions.workspace_path = excluded.workspace_path";

pub(crate) fn execute_upsert(
    stmt: &mut CachedStatement<'_>,
    t: &SessionTurn,
) -> rusqlite::Result<usize> {
    stmt.execute(params![
        t.session_id.as_str(),
        t.workspace_path,
        t.active_model,
        t.cost_usd,
        t.at_us,
        t.parent_session_id.as_ref().map(SessionId::as_str),
        t.parent_tool_use_id,
        i64::from(t.is_worker),
    ])
}

/// One step of the sessions migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStep {
    CreateTable,
    AddColumn {
        name: &'static str,
        decl: &'static str,
    },
    CreateIndex {
        name: &'static str,
        sql: &'static str,
    },
}

impl std::fmt::Display for SessionStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionStep::CreateTable => f.write_str("create table sessions"),
            SessionStep::AddColumn { name, decl } => {
                write!(f, "alter table sessions add column {name} {decl}")
            }
            SessionStep::CreateIndex { name, .. } => write!(f, "create index {name}"),
        }
    }
}

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn index_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
        params![name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn columns(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA table_info(sessions)")?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    names.collect()
}

/// The steps that bring the sessions table of `conn` to [`SESSIONS_SCHEMA_VERSION`].
///
/// # Errors
/// SQLite errors.
pub fn sessions_steps(conn: &Connection) -> rusqlite::Result<Vec<SessionStep>> {
    let mut steps = Vec::new();
    if table_exists(conn, "sessions")? {
        let have = columns(conn)?;
        for (name, decl) in DELEGATION_COLUMNS {
            if !have.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                steps.push(SessionStep::AddColumn { name, decl });
            }
        }
    } else {
        steps.push(SessionStep::CreateTable);
    }
    for (name, sql) in INDEXES {
        if !index_exists(conn, name)? {
            steps.push(SessionStep::CreateIndex { name, sql });
        }
    }
    Ok(steps)
}

/// The shape level of the sessions table: 0 = absent, 1 = pre-delegation (some delegation
/// column or `idx_sessions_parent` missing), 2 = current.
///
/// # Errors
/// SQLite errors.
pub fn sessions_schema_level(conn: &Connection) -> rusqlite::Result<i64> {
    if !table_exists(conn, "sessions")? {
        return Ok(0);
    }
    let steps = sessions_steps(conn)?;
    let pre_delegation = steps.iter().any(|s| {
        matches!(s, SessionStep::AddColumn { .. })
            || matches!(s, SessionStep::CreateIndex { name, .. } if *name == "idx_sessions_parent")
    });
    Ok(if pre_delegation { 1 } else { 2 })
}

/// Apply every missing step (the caller holds the write transaction). Returns the steps.
///
/// # Errors
/// SQLite errors.
pub fn migrate_sessions(conn: &Connection) -> rusqlite::Result<Vec<SessionStep>> {
    let steps = sessions_steps(conn)?;
    for step in &steps {
        match step {
            SessionStep::CreateTable => conn.execute_batch(CREATE_TABLE_SQL)?,
            SessionStep::AddColumn { name, decl } => {
                conn.execute_batch(&format!("ALTER TABLE sessions ADD COLUMN {name} {decl}"))?;
            }
            SessionStep::CreateIndex { sql, .. } => conn.execute_batch(sql)?,
        }
    }
    Ok(steps)
}

const SELECT_COLUMNS: &str = "id, workspace_path, active_model, cost_so_far_usd, turn_count, \
    created_at, updated_at, parent_session_id, parent_tool_use_id, is_worker";

fn row_to_session(r: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        workspace_path: r.get(1)?,
        active_model: r.get(2)?,
        cost_so_far_usd: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
        turn_count: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
        created_at_us: r.get(5)?,
        updated_at_us: r.get(6)?,
        parent_session_id: r.get(7)?,
        parent_tool_use_id: r.get(8)?,
        is_worker: r.get::<_, Option<i64>>(9)?.unwrap_or(0) != 0,
    })
}

/// "no such table/column": the file predates the sessions table (or its delegation columns)
/// and was never opened by a writer of this binary; reads then see no sessions.
fn is_missing_schema(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, Some(msg))
        if f.code == ErrorCode::Unknown && (msg.contains("no such table") || msg.contains("no such column")))
}

/// Read-only queries over the sessions table.
pub struct SessionReader {
    conn: Mutex<Connection>,
    /// The select list: a pre-delegation table (never opened by a writer of this binary)
    /// reads with `NULL`/`0` for the missing delegation columns instead of failing.
    columns: String,
}

/// The select list for the table's actual shape.
fn select_list(conn: &Connection) -> rusqlite::Result<String> {
    if !table_exists(conn, "sessions")? {
        return Ok(SELECT_COLUMNS.to_owned());
    }
    let have = columns(conn)?;
    let has = |c: &str| have.iter().any(|h| h.eq_ignore_ascii_case(c));
    let pick = |c: &'static str, missing: &'static str| if has(c) { c } else { missing };
    Ok(format!(
        "id, workspace_path, active_model, cost_so_far_usd, turn_count, created_at, updated_at, \
         {}, {}, {}",
        pick("parent_session_id", "NULL"),
        pick("parent_tool_use_id", "NULL"),
        pick("is_worker", "0"),
    ))
}

impl std::fmt::Debug for SessionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionReader").finish_non_exhaustive()
    }
}

impl SessionReader {
    /// Open an existing database read-only (never creates or migrates it).
    ///
    /// # Errors
    /// `Unavailable` when the file is missing or not a database; `TooNew` when a newer binary
    /// stamped it.
    pub fn open(path: &Path) -> Result<Self, SessionError> {
        let conn = open_read_only(path, Duration::from_secs(5))
            .map_err(|e| SessionError::Unavailable(e.to_string()))?;
        let found = crate::schema::read_user_version(&conn)
            .map_err(|e| SessionError::Unavailable(open_error(path, e).to_string()))?;
        if found > crate::schema::TRACE_SCHEMA_VERSION {
            return Err(SessionError::TooNew {
                found,
                supported: crate::schema::TRACE_SCHEMA_VERSION,
            });
        }
        let columns = select_list(&conn).map_err(|e| SessionError::Backend(Box::new(e)))?;
        Ok(Self {
            conn: Mutex::new(conn),
            columns,
        })
    }

    fn query(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<SessionRecord>, SessionError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let run = || -> rusqlite::Result<Vec<SessionRecord>> {
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params, row_to_session)?;
            rows.collect()
        };
        match run() {
            Ok(v) => Ok(v),
            Err(e) if is_missing_schema(&e) => Ok(Vec::new()),
            Err(e) => Err(SessionError::Backend(Box::new(e))),
        }
    }

    /// One session.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn get(&self, id: &str) -> Result<Option<SessionRecord>, SessionError> {
        let sql = format!("SELECT {} FROM sessions WHERE id = ?1", self.columns);
        Ok(self.query(&sql, params![id])?.into_iter().next())
    }

    /// Most recently updated first (then id), optionally of one workspace.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn list(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, SessionError> {
        match workspace {
            Some(w) => {
                let sql = format!(
                    "SELECT {} FROM sessions WHERE workspace_path = ?1 \
                     ORDER BY updated_at DESC, id LIMIT ?2",
                    self.columns
                );
                self.query(&sql, params![w, i64::from(limit)])
            }
            None => {
                let sql = format!(
                    "SELECT {} FROM sessions ORDER BY updated_at DESC, id LIMIT ?1",
                    self.columns
                );
                self.query(&sql, params![i64::from(limit)])
            }
        }
    }

    /// Direct children, oldest first (then id); served by `idx_sessions_parent`.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn children(&self, parent: &str) -> Result<Vec<SessionRecord>, SessionError> {
        if !self.columns.contains("parent_session_id,") {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} FROM sessions WHERE parent_session_id = ?1 \
             ORDER BY created_at, id",
            self.columns
        );
        self.query(&sql, params![parent])
    }

    /// Number of sessions (0 when the table does not exist).
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn count(&self) -> Result<u64, SessionError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        match conn.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get::<_, i64>(0)) {
            Ok(n) => Ok(u64::try_from(n).unwrap_or(0)),
            Err(e) if is_missing_schema(&e) => Ok(0),
            Err(e) => Err(SessionError::Backend(Box::new(e))),
        }
    }

    /// The schema level of the table (see [`sessions_schema_level`]).
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn schema_level(&self) -> Result<i64, SessionError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        sessions_schema_level(&conn).map_err(|e| SessionError::Backend(Box::new(e)))
    }
}

/// The `SessionStore` port over `metis.db`, sharing the trace store's writer thread.
/// Obtain one with `SqliteTraceStore::session_store`.
#[derive(Clone)]
pub struct SqliteSessionStore {
    pub(crate) inner: Arc<Inner>,
    pub(crate) reader: Arc<SessionReader>,
}

impl SqliteSessionStore {
    /// The read side (blocking calls).
    #[must_use]
    pub fn reader(&self) -> &SessionReader {
        &self.reader
    }

    /// The trace store's writer, which applies the turns.
    fn writer(&self) -> &WriterHandle {
        &self.inner.writer
    }

    /// The reads of `SessionStore`, run on the blocking pool (infallible here; the shape
    /// `session_store_on_writer!` expects).
    fn reads(&self) -> Result<Arc<SessionReader>, SessionError> {
        Ok(Arc::clone(&self.reader))
    }
}

metis_storage_kit::session_store_on_writer!(SqliteSessionStore);
