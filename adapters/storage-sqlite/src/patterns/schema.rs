//! The schema of a SQLite pattern store and its migrations: the DDL of the original's v2
//! store, the steps an older file needs (computed from its shape), and opening a store, which
//! migrates it in one transaction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metis_domain::patterns::PATTERN_SCHEMA_VERSION;
use metis_ports::patterns::PatternError;
use metis_ports::storage::{MaintenanceError, MigrationPlan};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, config::DbConfig,
    params,
};

use super::unavailable;

const FINGERPRINTS_SQL: &str = "CREATE TABLE IF NOT EXISTS fingerprints (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'structural',
    structural_json TEXT NOT NULL,
    structural_sig TEXT NOT NULL,
    embedding_blob BLOB,
    embedding_provider TEXT,
    embedding_dim INTEGER,
    created_at_us INTEGER NOT NULL DEFAULT 0,
    UNIQUE (structural_sig, embedding_provider)
)";

const OUTCOMES_SQL: &str = "CREATE TABLE IF NOT EXISTS outcomes (
    fingerprint_id TEXT NOT NULL,
    primary_model TEXT NOT NULL,
    sample_size INTEGER NOT NULL DEFAULT 0,
    success_score_mean REAL NOT NULL DEFAULT 0,
    success_score_count INTEGER NOT NULL DEFAULT 0,
    sum_cost_usd_micros INTEGER NOT NULL DEFAULT 0,
    sum_latency_ms REAL NOT NULL DEFAULT 0,
    pricing_version_last TEXT NOT NULL DEFAULT 'v0',
    last_updated_at_us INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (fingerprint_id, primary_model),
    FOREIGN KEY (fingerprint_id) REFERENCES fingerprints(id) ON DELETE CASCADE
)";

const OTHER_TABLES: [(&str, &str); 3] = [
    (
        "outcome_score_history",
        "CREATE TABLE IF NOT EXISTS outcome_score_history (
    turn_id TEXT PRIMARY KEY,
    fingerprint_id TEXT NOT NULL,
    primary_model TEXT NOT NULL,
    eval_id_applied TEXT NOT NULL,
    score REAL NOT NULL,
    confidence REAL NOT NULL,
    applied_at_us INTEGER NOT NULL,
    FOREIGN KEY (fingerprint_id) REFERENCES fingerprints(id) ON DELETE CASCADE
)",
    ),
    (
        "store_meta",
        "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    (
        "embedding_cache",
        "CREATE TABLE IF NOT EXISTS embedding_cache (
    text_sha256 TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    embedding_blob BLOB NOT NULL,
    embedding_dim INTEGER NOT NULL,
    created_at_us INTEGER NOT NULL,
    last_used_at_us INTEGER NOT NULL,
    use_count INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (text_sha256, provider_id)
)",
    ),
];

const INDEXES: [(&str, &str); 6] = [
    (
        "idx_fp_created",
        "CREATE INDEX IF NOT EXISTS idx_fp_created ON fingerprints(created_at_us)",
    ),
    (
        "idx_fp_struct_sig",
        "CREATE INDEX IF NOT EXISTS idx_fp_struct_sig ON fingerprints(structural_sig)",
    ),
    (
        "idx_outcomes_updated",
        "CREATE INDEX IF NOT EXISTS idx_outcomes_updated ON outcomes(last_updated_at_us)",
    ),
    (
        "idx_score_history_outcome",
        "CREATE INDEX IF NOT EXISTS idx_score_history_outcome \
         ON outcome_score_history(fingerprint_id, primary_model)",
    ),
    (
        "idx_embcache_last_used",
        "CREATE INDEX IF NOT EXISTS idx_embcache_last_used ON embedding_cache(last_used_at_us)",
    ),
    (
        "idx_embcache_created",
        "CREATE INDEX IF NOT EXISTS idx_embcache_created ON embedding_cache(created_at_us)",
    ),
];

const EMBEDDING_COLUMNS: [(&str, &str); 3] = [
    ("embedding_blob", "BLOB"),
    ("embedding_provider", "TEXT"),
    ("embedding_dim", "INTEGER"),
];

/// Raise (never lower) the version, comparing integers.
const STAMP_SQL: &str = "INSERT INTO store_meta (key, value) VALUES ('schema_version', ?1) \
    ON CONFLICT(key) DO UPDATE SET value = excluded.value \
    WHERE CAST(store_meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)";

fn exists(conn: &Connection, kind: &str, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = ?1 AND name = ?2",
        params![kind, name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn column_names(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    names.collect()
}

/// Whether `fingerprints` has exactly the two-column UNIQUE (and no one-column UNIQUE on the
/// signature).
fn has_two_column_unique(conn: &Connection) -> rusqlite::Result<bool> {
    let uniques: Vec<String> = {
        let mut stmt = conn.prepare("PRAGMA index_list(fingerprints)")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
        rows.filter_map(|r| match r {
            Ok((name, 1)) => Some(Ok(name)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<rusqlite::Result<_>>()?
    };
    let mut two = false;
    for idx in uniques {
        let mut stmt = conn.prepare(&format!(
            "PRAGMA index_info(\"{}\")",
            idx.replace('"', "\"\"")
        ))?;
        let cols: Vec<String> = stmt
            .query_map([], |r| r.get::<_, Option<String>>(2))?
            .filter_map(|c| c.transpose())
            .collect::<rusqlite::Result<_>>()?;
        match cols.as_slice() {
            [one] if one == "structural_sig" => return Ok(false),
            [a, b] if a == "structural_sig" && b == "embedding_provider" => two = true,
            _ => {}
        }
    }
    Ok(two)
}

/// Whether `outcomes` cascades deletes from `fingerprints`.
fn outcomes_cascade(conn: &Connection) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare("PRAGMA foreign_key_list(outcomes)")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(2)?, r.get::<_, String>(6)?)))?;
    for r in rows {
        let (table, on_delete) = r?;
        if table == "fingerprints" && on_delete.eq_ignore_ascii_case("CASCADE") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The stored version: `store_meta.schema_version` as an integer; without it, 1 when the
/// store has a `fingerprints` table (a v1 file), else 0 (empty).
///
/// # Errors
/// SQLite errors.
pub fn stored_version(conn: &Connection) -> rusqlite::Result<i64> {
    if exists(conn, "table", "store_meta")? {
        let v: Option<String> = conn
            .query_row(
                "SELECT value FROM store_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(v) = v
            && let Ok(n) = v.trim().parse::<i64>()
        {
            return Ok(n);
        }
    }
    Ok(i64::from(exists(conn, "table", "fingerprints")?))
}

/// One migration step of a pattern store.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    AddColumn(&'static str, &'static str),
    RebuildFingerprints,
    RebuildOutcomes,
    CreateTable(&'static str, &'static str),
    CreateIndex(&'static str, &'static str),
    Stamp(i64),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::AddColumn(n, d) => write!(f, "alter table fingerprints add column {n} {d}"),
            Step::RebuildFingerprints => f.write_str(
                "rebuild table fingerprints with UNIQUE(structural_sig, embedding_provider), keeping every row",
            ),
            Step::RebuildOutcomes => f.write_str(
                "rebuild table outcomes with FOREIGN KEY ... ON DELETE CASCADE, keeping every row",
            ),
            Step::CreateTable(n, _) => write!(f, "create table {n}"),
            Step::CreateIndex(n, _) => write!(f, "create index {n}"),
            Step::Stamp(from) => write!(
                f,
                "set store_meta.schema_version {from} -> {PATTERN_SCHEMA_VERSION}"
            ),
        }
    }
}

fn steps(conn: &Connection) -> rusqlite::Result<Vec<Step>> {
    let mut out = Vec::new();
    let version = stored_version(conn)?;
    let have_fp = exists(conn, "table", "fingerprints")?;
    if have_fp {
        let cols = column_names(conn, "fingerprints")?;
        for (n, d) in EMBEDDING_COLUMNS {
            if !cols.iter().any(|c| c == n) {
                out.push(Step::AddColumn(n, d));
            }
        }
        if !has_two_column_unique(conn)? {
            out.push(Step::RebuildFingerprints);
        }
    } else {
        out.push(Step::CreateTable("fingerprints", FINGERPRINTS_SQL));
    }
    if exists(conn, "table", "outcomes")? {
        if !outcomes_cascade(conn)? {
            out.push(Step::RebuildOutcomes);
        }
    } else {
        out.push(Step::CreateTable("outcomes", OUTCOMES_SQL));
    }
    for (n, sql) in OTHER_TABLES {
        if !exists(conn, "table", n)? {
            out.push(Step::CreateTable(n, sql));
        }
    }
    // A rebuilt table loses its indexes; they are recreated below either way.
    let rebuilt_fp = out.contains(&Step::RebuildFingerprints);
    let rebuilt_out = out.contains(&Step::RebuildOutcomes);
    for (n, sql) in INDEXES {
        let dropped = (rebuilt_fp && n.starts_with("idx_fp_"))
            || (rebuilt_out && n.starts_with("idx_outcomes_"));
        if dropped || !exists(conn, "index", n)? {
            out.push(Step::CreateIndex(n, sql));
        }
    }
    if version < PATTERN_SCHEMA_VERSION {
        out.push(Step::Stamp(version));
    }
    Ok(out)
}

/// Recreate `table` with `ddl` (which must create `<table>_new`... written as the final name
/// here, so it is rewritten), copying the columns both shapes share.
fn rebuild(tx: &Transaction<'_>, table: &str, ddl: &str) -> rusqlite::Result<()> {
    let new = format!("{table}_migrating");
    let new_ddl = ddl.replacen(
        &format!("CREATE TABLE IF NOT EXISTS {table} ("),
        &format!("CREATE TABLE {new} ("),
        1,
    );
    tx.execute_batch(&format!("DROP TABLE IF EXISTS {new}"))?;
    tx.execute_batch(&new_ddl)?;
    let old_cols = column_names(tx, table)?;
    let new_cols = column_names(tx, &new)?;
    let shared: Vec<&String> = new_cols.iter().filter(|c| old_cols.contains(c)).collect();
    let list = shared
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    tx.execute_batch(&format!(
        "INSERT INTO {new} ({list}) SELECT {list} FROM {table}; \
         DROP TABLE {table}; \
         ALTER TABLE {new} RENAME TO {table};"
    ))
}

fn apply_steps(tx: &Transaction<'_>, steps: &[Step]) -> rusqlite::Result<()> {
    for s in steps {
        match s {
            Step::AddColumn(n, d) => {
                tx.execute_batch(&format!("ALTER TABLE fingerprints ADD COLUMN {n} {d}"))?;
            }
            Step::RebuildFingerprints => rebuild(tx, "fingerprints", FINGERPRINTS_SQL)?,
            Step::RebuildOutcomes => rebuild(tx, "outcomes", OUTCOMES_SQL)?,
            Step::CreateTable(_, sql) | Step::CreateIndex(_, sql) => tx.execute_batch(sql)?,
            Step::Stamp(_) => {
                tx.execute(STAMP_SQL, params![PATTERN_SCHEMA_VERSION.to_string()])?;
            }
        }
    }
    Ok(())
}

fn too_new(path: &Path, found: i64) -> PatternError {
    PatternError::TooNew {
        location: path.display().to_string(),
        found,
        supported: PATTERN_SCHEMA_VERSION,
    }
}

/// Migrate an open store in one transaction. `foreign_keys` must be OFF (a rebuild drops a
/// referenced table); it is checked with `foreign_key_check` before commit.
fn migrate(conn: &mut Connection, path: &Path) -> Result<Vec<Step>, PatternError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| unavailable(path, e))?;
    let found = stored_version(&tx).map_err(|e| unavailable(path, e))?;
    if found > PATTERN_SCHEMA_VERSION {
        return Err(too_new(path, found));
    }
    let todo = steps(&tx).map_err(|e| unavailable(path, e))?;
    if todo.is_empty() {
        return Ok(todo);
    }
    apply_steps(&tx, &todo).map_err(|e| unavailable(path, format!("migration failed: {e}")))?;
    let orphans: i64 = tx
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap_or(0);
    if orphans > 0 {
        tracing::warn!(
            path = %path.display(),
            rows = orphans,
            "pattern store has rows referencing missing fingerprints; kept as they were"
        );
    }
    tx.commit().map_err(|e| unavailable(path, e))?;
    Ok(todo)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    // Plans must not depend on bound values. Without this SQLite (3.45+) marks a parameter
    // compared with `=` as plan-relevant, and rusqlite's statement cache clears the bindings
    // of every statement it takes back, which expires it: each cached lookup of a turn's
    // observation was parsed and planned again (`sqlite3Reprepare`, about 4% of the
    // process's CPU under load). The pattern tables have no partial index and no ANALYZE
    // statistics, so no plan changes.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")
}

/// Open (creating when missing) and migrate the store at `path`; the connection comes back
/// with `foreign_keys` ON.
pub(super) fn open_store(path: &Path) -> Result<Connection, PatternError> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| unavailable(path, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| unavailable(path, e))?;
    let found = stored_version(&conn).map_err(|e| unavailable(path, e))?;
    if found > PATTERN_SCHEMA_VERSION {
        return Err(too_new(path, found));
    }
    configure(&conn).map_err(|e| unavailable(path, e))?;
    let done = migrate(&mut conn, path)?;
    if done.iter().any(|s| {
        !matches!(
            s,
            Step::CreateTable(..) | Step::CreateIndex(..) | Step::Stamp(0)
        )
    }) {
        tracing::info!(
            path = %path.display(),
            steps = %done.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            "migrated pattern store"
        );
    }
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(|e| unavailable(path, e))?;
    Ok(conn)
}

fn op_err(e: PatternError) -> MaintenanceError {
    match e {
        PatternError::TooNew {
            location,
            found,
            supported,
        } => MaintenanceError::TooNew {
            path: PathBuf::from(location),
            found,
            supported,
        },
        other => MaintenanceError::Failed(other.to_string()),
    }
}

/// The migration of the pattern store file `path`, without changing it.
///
/// # Errors
/// `Refused` when the file does not exist; `TooNew`; `Failed` on SQLite errors.
pub fn plan_patterns_migration(path: &Path) -> Result<MigrationPlan, MaintenanceError> {
    if !path.is_file() {
        return Err(MaintenanceError::Refused(format!(
            "pattern store {} does not exist",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| MaintenanceError::Failed(format!("cannot open {}: {e}", path.display())))?;
    let current = stored_version(&conn).map_err(|e| MaintenanceError::Failed(e.to_string()))?;
    if current > PATTERN_SCHEMA_VERSION {
        return Err(op_err(too_new(path, current)));
    }
    let todo = steps(&conn).map_err(|e| MaintenanceError::Failed(e.to_string()))?;
    Ok(MigrationPlan {
        path: path.to_path_buf(),
        current,
        target: PATTERN_SCHEMA_VERSION,
        steps: todo.iter().map(ToString::to_string).collect(),
    })
}

/// Apply the migration of the pattern store file `path` in one transaction.
///
/// # Errors
/// As [`plan_patterns_migration`].
pub fn apply_patterns_migration(path: &Path) -> Result<MigrationPlan, MaintenanceError> {
    let plan = plan_patterns_migration(path)?;
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| MaintenanceError::Failed(format!("cannot open {}: {e}", path.display())))?;
    configure(&conn).map_err(|e| MaintenanceError::Failed(e.to_string()))?;
    let done = migrate(&mut conn, path).map_err(op_err)?;
    Ok(MigrationPlan {
        steps: done.iter().map(ToString::to_string).collect(),
        ..plan
    })
}
