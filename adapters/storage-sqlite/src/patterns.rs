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
//! - `record` is one `BEGIN IMMEDIATE` transaction: fingerprint lookup by (signature, NULL
//!   provider) with explicit `IS NULL` (SQLite's UNIQUE lets NULLs repeat), outcome upsert,
//!   then the caps (age trim; above the hard cap, eviction down to the soft cap; orphaned
//!   fingerprints removed). Updates are order-independent where they can be
//!   (`last_updated_at_us = max`, `created_at_us` of the first record), so a rebuild from the
//!   trace equals the live store.
//! - A workspace that is not an existing, writable directory is skipped with one WARN per
//!   workspace; nothing is created outside `<workspace>/.metis` (or the patterns directory).
//! - Blocking work runs on tokio's blocking pool; one connection per store file, behind a
//!   mutex.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use gw_domain::patterns::{
    PATTERN_SCHEMA_VERSION, PatternCaps, PatternRecord, mean_add, workspace_hash,
};
use gw_ports::patterns::{
    ModelTotals, OutcomeRow, PatternError, PatternStats, PatternStore, RecordOutcome, RecordResult,
};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use crate::ops::{MaintenanceError, MigrationPlan};

/// The file name of a pattern store.
pub const PATTERNS_FILE: &str = "patterns.db";

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

/// Where a workspace's store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternLocation {
    /// `<workspace>/.metis/patterns.db` (the workspace must be an existing directory).
    InWorkspace,
    /// `<dir>/<first 16 hex of the workspace hash>/patterns.db`.
    Dir(PathBuf),
}

impl PatternLocation {
    /// The store file of `workspace`.
    #[must_use]
    pub fn db_path(&self, workspace: &str) -> PathBuf {
        match self {
            PatternLocation::InWorkspace => Path::new(workspace).join(".metis").join(PATTERNS_FILE),
            PatternLocation::Dir(d) => d.join(&workspace_hash(workspace)[..16]).join(PATTERNS_FILE),
        }
    }

    /// Check that the store's directory can be used, creating `.metis` (or the hash directory)
    /// when missing. `Err(reason)` means "skip this workspace".
    fn prepare(&self, workspace: &str) -> Result<PathBuf, String> {
        let path = self.db_path(workspace);
        if *self == PatternLocation::InWorkspace {
            let ws = Path::new(workspace);
            if !ws.is_absolute() {
                return Err(format!("workspace {workspace} is not an absolute path"));
            }
            if !ws.is_dir() {
                return Err(format!(
                    "workspace {workspace} is not a directory on this host"
                ));
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let probe = dir.join(format!(".write-probe.{}", std::process::id()));
            std::fs::write(&probe, b"")
                .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
            let _ = std::fs::remove_file(&probe);
        }
        Ok(path)
    }
}

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

pub(crate) fn unavailable(path: &Path, e: impl std::fmt::Display) -> PatternError {
    PatternError::Unavailable {
        location: path.display().to_string(),
        message: e.to_string(),
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
    let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")
}

/// Open (creating when missing) and migrate the store at `path`; the connection comes back
/// with `foreign_keys` ON.
fn open_store(path: &Path) -> Result<Connection, PatternError> {
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

fn count(tx: &Connection, sql: &str) -> rusqlite::Result<u64> {
    tx.query_row(sql, [], |r| r.get::<_, i64>(0))
        .map(|n| u64::try_from(n).unwrap_or(0))
}

/// Rows in `outcomes`, read once per transaction and then kept up to date by
/// [`apply_record`] (a `COUNT(*)` per observation would scan the table every time).
fn outcome_rows(tx: &Transaction<'_>) -> rusqlite::Result<u64> {
    count(tx, "SELECT COUNT(*) FROM outcomes")
}

/// Apply one observation inside `tx` (see the module invariants). `outcomes` is the current
/// number of outcome rows (from [`outcome_rows`]); it is updated for inserts and evictions.
fn apply_record(
    tx: &Transaction<'_>,
    r: &PatternRecord,
    caps: &PatternCaps,
    outcomes: &mut u64,
) -> rusqlite::Result<RecordResult> {
    let found: Option<String> = tx
        .prepare_cached(
            "SELECT id FROM fingerprints WHERE structural_sig = ?1 AND embedding_provider IS NULL \
             ORDER BY created_at_us, id LIMIT 1",
        )?
        .query_row(params![r.structural_sig], |row| row.get(0))
        .optional()?;
    let (fp_id, was_new) = match found {
        Some(id) => {
            // The first record defines the row; a replay of older events keeps the minimum.
            tx.prepare_cached(
                "UPDATE fingerprints SET created_at_us = ?2 WHERE id = ?1 AND created_at_us > ?2",
            )?
            .execute(params![id, r.at_us])?;
            (id, false)
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO fingerprints (id, kind, structural_json, structural_sig, \
                 embedding_blob, embedding_provider, embedding_dim, created_at_us) \
                 VALUES (?1, ?2, ?3, ?4, NULL, NULL, NULL, ?5)",
            )?
            .execute(params![
                r.fingerprint_id,
                r.kind,
                r.structural_json,
                r.structural_sig,
                r.at_us
            ])?;
            (r.fingerprint_id.clone(), true)
        }
    };
    let before: Option<(i64, f64, i64, i64)> = tx
        .prepare_cached(
            "SELECT sample_size, success_score_mean, success_score_count, last_updated_at_us \
             FROM outcomes WHERE fingerprint_id = ?1 AND primary_model = ?2",
        )?
        .query_row(params![fp_id, r.primary_model], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    let sample_before = before.map_or(0, |b| u64::try_from(b.0).unwrap_or(0));
    match before {
        Some((_, mean, n, last)) => {
            let (mean, n) = match r.success_score {
                Some(s) => (mean_add(mean, u64::try_from(n).unwrap_or(0), s), n + 1),
                None => (mean, n),
            };
            let pricing_newer = r.at_us >= last;
            tx.prepare_cached(
                "UPDATE outcomes SET sample_size = sample_size + 1, success_score_mean = ?3, \
                 success_score_count = ?4, sum_cost_usd_micros = sum_cost_usd_micros + ?5, \
                 sum_latency_ms = sum_latency_ms + ?6, \
                 pricing_version_last = CASE WHEN ?8 THEN ?7 ELSE pricing_version_last END, \
                 last_updated_at_us = MAX(last_updated_at_us, ?9) \
                 WHERE fingerprint_id = ?1 AND primary_model = ?2",
            )?
            .execute(params![
                fp_id,
                r.primary_model,
                mean,
                n,
                r.cost_usd_micros,
                r.latency_ms,
                r.pricing_version,
                pricing_newer,
                r.at_us
            ])?;
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO outcomes (fingerprint_id, primary_model, sample_size, \
                 success_score_mean, success_score_count, sum_cost_usd_micros, sum_latency_ms, \
                 pricing_version_last, last_updated_at_us) VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                fp_id,
                r.primary_model,
                r.success_score.unwrap_or(0.0),
                i64::from(r.success_score.is_some()),
                r.cost_usd_micros,
                r.latency_ms,
                r.pricing_version,
                r.at_us
            ])?;
            *outcomes += 1;
        }
    }
    let (over_soft, evicted) = enforce_caps(tx, caps, r.at_us, outcomes)?;
    Ok(RecordResult {
        fingerprint_id: fp_id,
        primary_model: r.primary_model.clone(),
        sample_size_before: sample_before,
        sample_size_after: sample_before + 1,
        was_new_fingerprint: was_new,
        over_soft_cap: over_soft,
        rows_auto_evicted: evicted,
    })
}

/// The caps, at time `now`, with `outcomes` rows present (updated for what is evicted).
/// Returns (over the soft cap, outcome rows evicted).
fn enforce_caps(
    tx: &Transaction<'_>,
    caps: &PatternCaps,
    now: i64,
    outcomes: &mut u64,
) -> rusqlite::Result<(bool, u64)> {
    let n = *outcomes;
    if n <= caps.soft_outcomes {
        return Ok((false, 0));
    }
    let mut evicted = tx
        .prepare_cached("DELETE FROM outcomes WHERE last_updated_at_us < ?1")?
        .execute(params![caps.age_cutoff(now)])? as u64;
    if n > caps.hard_outcomes {
        let left = n - evicted;
        if left > caps.soft_outcomes {
            let excess = i64::try_from(left - caps.soft_outcomes).unwrap_or(i64::MAX);
            evicted += tx
                .prepare_cached(
                    "DELETE FROM outcomes WHERE rowid IN (SELECT rowid FROM outcomes \
                     ORDER BY last_updated_at_us ASC, sample_size ASC, fingerprint_id, primary_model \
                     LIMIT ?1)",
                )?
                .execute(params![excess])? as u64;
        }
    }
    if evicted > 0 {
        tx.prepare_cached(
            "DELETE FROM fingerprints WHERE id NOT IN (SELECT DISTINCT fingerprint_id FROM outcomes)",
        )?
        .execute([])?;
    }
    *outcomes = n - evicted;
    Ok((n - evicted > caps.soft_outcomes, evicted))
}

type Shared = Arc<Mutex<Connection>>;

/// The SQLite pattern stores of every workspace (cheap to clone; clones share connections).
#[derive(Clone)]
pub struct SqlitePatternStore {
    inner: Arc<State>,
}

struct State {
    location: PatternLocation,
    caps: PatternCaps,
    conns: Mutex<HashMap<PathBuf, Shared>>,
    skipped: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for SqlitePatternStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlitePatternStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

/// Most store files kept open at once (beyond it the cache is emptied and refilled).
const MAX_OPEN_STORES: usize = 64;

impl SqlitePatternStore {
    #[must_use]
    pub fn new(location: PatternLocation, caps: PatternCaps) -> Self {
        Self {
            inner: Arc::new(State {
                location,
                caps,
                conns: Mutex::new(HashMap::new()),
                skipped: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The store file of `workspace`.
    #[must_use]
    pub fn db_path(&self, workspace: &str) -> PathBuf {
        self.inner.location.db_path(workspace)
    }

    fn connection(&self, path: &Path) -> Result<Shared, PatternError> {
        let mut conns = self
            .inner
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = conns.get(path) {
            return Ok(Arc::clone(c));
        }
        if conns.len() >= MAX_OPEN_STORES {
            conns.clear();
        }
        let c = Arc::new(Mutex::new(open_store(path)?));
        conns.insert(path.to_path_buf(), Arc::clone(&c));
        Ok(c)
    }

    /// Resolve and open the writable store of `workspace`, or the reason to skip it (logged
    /// once per workspace).
    fn writable(&self, workspace: &str) -> Result<Result<Shared, String>, PatternError> {
        // An open store was checked when it was opened; only new ones are probed.
        let path = self.db_path(workspace);
        if let Some(c) = self
            .inner
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&path)
        {
            return Ok(Ok(Arc::clone(c)));
        }
        match self.inner.location.prepare(workspace) {
            Ok(path) => Ok(Ok(self.connection(&path)?)),
            Err(reason) => {
                let first = self
                    .inner
                    .skipped
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(workspace.to_owned());
                if first {
                    tracing::warn!(workspace, reason = %reason, "pattern store skipped for this workspace");
                }
                Ok(Err(reason))
            }
        }
    }

    /// Record without a runtime.
    ///
    /// # Errors
    /// As `PatternStore::record`.
    pub fn record_blocking(
        &self,
        workspace: &str,
        r: &PatternRecord,
    ) -> Result<RecordOutcome, PatternError> {
        let conn = match self.writable(workspace)? {
            Ok(c) => c,
            Err(reason) => return Ok(RecordOutcome::Skipped { reason }),
        };
        let path = self.db_path(workspace);
        let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| unavailable(&path, e))?;
        let res = outcome_rows(&tx)
            .and_then(|mut n| apply_record(&tx, r, &self.inner.caps, &mut n))
            .map_err(|e| unavailable(&path, e))?;
        tx.commit().map_err(|e| unavailable(&path, e))?;
        Ok(RecordOutcome::Recorded(res))
    }

    /// Record several observations in one transaction (0 when the workspace is skipped).
    ///
    /// # Errors
    /// As `PatternStore::record_many`; on error nothing of this batch is applied.
    pub fn record_many_blocking(
        &self,
        workspace: &str,
        records: &[PatternRecord],
    ) -> Result<u64, PatternError> {
        let conn = match self.writable(workspace)? {
            Ok(c) => c,
            Err(_) => return Ok(0),
        };
        let path = self.db_path(workspace);
        let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| unavailable(&path, e))?;
        let mut n = outcome_rows(&tx).map_err(|e| unavailable(&path, e))?;
        for r in records {
            apply_record(&tx, r, &self.inner.caps, &mut n).map_err(|e| unavailable(&path, e))?;
        }
        tx.commit().map_err(|e| unavailable(&path, e))?;
        Ok(records.len() as u64)
    }

    /// Replace without a runtime.
    ///
    /// # Errors
    /// As `PatternStore::replace_all`.
    pub fn replace_all_blocking(
        &self,
        workspace: &str,
        records: &[PatternRecord],
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<u64, PatternError> {
        let path = self.db_path(workspace);
        let conn = match self.writable(workspace)? {
            Ok(c) => c,
            Err(reason) => return Err(unavailable(&path, reason)),
        };
        let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| unavailable(&path, e))?;
        tx.execute_batch(
            "DELETE FROM outcome_score_history; DELETE FROM outcomes; DELETE FROM fingerprints;",
        )
        .map_err(|e| unavailable(&path, e))?;
        let total = records.len() as u64;
        let mut n = 0;
        for (i, r) in records.iter().enumerate() {
            apply_record(&tx, r, &self.inner.caps, &mut n).map_err(|e| unavailable(&path, e))?;
            if i % 1000 == 999 {
                progress(i as u64 + 1, total);
            }
        }
        tx.commit().map_err(|e| unavailable(&path, e))?;
        progress(total, total);
        Ok(total)
    }

    /// Open an existing store for reading (migrating it when it is older). `None` when the
    /// file does not exist.
    fn existing(&self, workspace: &str) -> Result<Option<(PathBuf, Shared)>, PatternError> {
        let path = self.db_path(workspace);
        if !path.is_file() {
            return Ok(None);
        }
        Ok(Some((path.clone(), self.connection(&path)?)))
    }

    /// Stats without a runtime.
    ///
    /// # Errors
    /// As `PatternStore::stats`.
    pub fn stats_blocking(&self, workspace: &str) -> Result<Option<PatternStats>, PatternError> {
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

    /// Outcomes without a runtime.
    ///
    /// # Errors
    /// As `PatternStore::outcomes`.
    pub fn outcomes_blocking(&self, workspace: &str) -> Result<Vec<OutcomeRow>, PatternError> {
        let Some((path, conn)) = self.existing(workspace)? else {
            return Ok(Vec::new());
        };
        let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        read_outcomes(&conn).map_err(|e| unavailable(&path, e))
    }

    /// Forget the cached connection of `workspace` (tests; after an outside change).
    pub fn forget(&self, workspace: &str) {
        let path = self.db_path(workspace);
        self.inner
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&path);
    }
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PatternError> + Send + 'static,
) -> Result<T, PatternError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(PatternError::Unavailable {
            location: "pattern store".into(),
            message: format!("task failed: {e}"),
        })
    })
}

#[async_trait]
impl PatternStore for SqlitePatternStore {
    async fn record(
        &self,
        workspace: &str,
        record: PatternRecord,
    ) -> Result<RecordOutcome, PatternError> {
        let me = self.clone();
        let ws = workspace.to_owned();
        blocking(move || me.record_blocking(&ws, &record)).await
    }

    async fn record_many(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> Result<u64, PatternError> {
        let me = self.clone();
        let ws = workspace.to_owned();
        blocking(move || me.record_many_blocking(&ws, &records)).await
    }

    async fn replace_all(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> Result<u64, PatternError> {
        let me = self.clone();
        let ws = workspace.to_owned();
        blocking(move || me.replace_all_blocking(&ws, &records, &|_, _| {})).await
    }

    async fn stats(&self, workspace: &str) -> Result<Option<PatternStats>, PatternError> {
        let me = self.clone();
        let ws = workspace.to_owned();
        blocking(move || me.stats_blocking(&ws)).await
    }

    async fn outcomes(&self, workspace: &str) -> Result<Vec<OutcomeRow>, PatternError> {
        let me = self.clone();
        let ws = workspace.to_owned();
        blocking(move || me.outcomes_blocking(&ws)).await
    }
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
