//! The storage backend choice (`--store sqlite|redb`, `METIS_GATEWAY_STORE`): opening the
//! right adapters for every storage port, the redb variants of the storage commands, and
//! `metis migrate-store` (copying everything between the two backends).
//!
//! Invariants:
//! - SQLite is the default; `redb` keeps the main store in `<data-dir>/metis.redb` (or
//!   `--db-path`) and pattern stores in `<workspace>/.metis/patterns.redb`.
//! - Callers get ports (`Arc<dyn …>`) or [`MainStore`], never an adapter type, so the rest of
//!   the composition root is the same for both backends.
//! - Keys follow `--keystore` (a JSON file, or `store` = the main store of the chosen
//!   backend); sessions and spend follow `--store`.
//! - `migrate-store` refuses a destination that holds anything, copies events with their
//!   payloads byte-for-byte (so the audit chain verifies on the destination), sessions, keys
//!   and every workspace pattern store it is given, and verifies the counts.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use async_trait::async_trait;
use clap::ValueEnum;
use gw_domain::events::Event;
use gw_domain::patterns::PatternCaps;
use gw_ports::keys::KeyStore;
use gw_ports::patterns::PatternStore;
use gw_ports::sessions::SessionStore;
use gw_ports::trace::{
    EventRow, EventSink, KeySpend, SinkStats, TraceError, TraceQuery, UsageGroup, UsageRow,
};
use gw_storage_redb::{
    RedbKeyStore, RedbOptions, RedbPatternLocation, RedbPatternStore, RedbTraceStore,
};
use gw_storage_sqlite::patterns::{PatternLocation, SqlitePatternStore};
use gw_storage_sqlite::{SqliteKeyStore, SqliteTraceStore, WriterOptions};

use crate::paths::Paths;

pub mod migrate;

pub use migrate::{MigrateStoreArgs, migrate_store, migrate_store_cmd};

/// The storage backend of the main store (trace, sessions, keys in `--keystore store`) and
/// of the pattern stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum StoreKind {
    /// SQLite (`metis.db`, `patterns.db`): the default.
    #[default]
    Sqlite,
    /// redb (`metis.redb`, `patterns.redb`).
    Redb,
}

impl StoreKind {
    /// `sqlite` or `redb`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Redb => "redb",
        }
    }

    /// The main store's file name in the data directory.
    #[must_use]
    pub fn main_file(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "metis.db",
            StoreKind::Redb => gw_storage_redb::MAIN_FILE_NAME,
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The opened main store of either backend: the trace sink and queries, and the session
/// store riding its writer.
pub enum MainStore {
    Sqlite {
        trace: Arc<SqliteTraceStore>,
        sessions: Arc<gw_storage_sqlite::SqliteSessionStore>,
    },
    Redb {
        trace: Arc<RedbTraceStore>,
        sessions: Arc<gw_storage_redb::RedbSessionStore>,
    },
}

impl std::fmt::Debug for MainStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainStore")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl MainStore {
    /// Open (creating when missing) the main store at `paths.db` with the backend
    /// `paths.store`. `gateway` = the serving process (SQLite: hold the shared writer lock so
    /// `metis restore` refuses to replace the file under it).
    ///
    /// # Errors
    /// A file from a newer binary, or one that cannot be opened or created.
    pub async fn open(paths: &Paths, gateway: bool) -> anyhow::Result<Arc<MainStore>> {
        Self::open_with(paths, gateway, gw_ports::queue::DEFAULT_COMMIT_DEADLINE).await
    }

    /// [`open`](Self::open) with the writer's commit deadline (`--trace-commit-deadline`).
    ///
    /// # Errors
    /// As `open`.
    pub async fn open_with(
        paths: &Paths,
        gateway: bool,
        commit_deadline: std::time::Duration,
    ) -> anyhow::Result<Arc<MainStore>> {
        let db = paths.db.clone();
        let kind = paths.store;
        let store = tokio::task::spawn_blocking(move || -> Result<MainStore, TraceError> {
            match kind {
                StoreKind::Sqlite => {
                    let opts = WriterOptions {
                        hold_writer_lock: gateway,
                        commit_deadline,
                        ..WriterOptions::default()
                    };
                    let trace = Arc::new(SqliteTraceStore::open(&db, opts)?);
                    let sessions = Arc::new(trace.session_store()?);
                    Ok(MainStore::Sqlite { trace, sessions })
                }
                StoreKind::Redb => {
                    let opts = RedbOptions {
                        commit_deadline,
                        ..RedbOptions::default()
                    };
                    let trace = Arc::new(RedbTraceStore::open(&db, opts)?);
                    let sessions = Arc::new(trace.session_store());
                    Ok(MainStore::Redb { trace, sessions })
                }
            }
        })
        .await
        .context("trace store task failed")?
        .with_context(|| format!("cannot open trace store {}", paths.db.display()))?;
        Ok(Arc::new(store))
    }

    /// The backend.
    #[must_use]
    pub fn kind(&self) -> StoreKind {
        match self {
            MainStore::Sqlite { .. } => StoreKind::Sqlite,
            MainStore::Redb { .. } => StoreKind::Redb,
        }
    }

    /// The session store sharing this store's writer.
    #[must_use]
    pub fn sessions(&self) -> Arc<dyn SessionStore> {
        match self {
            MainStore::Sqlite { sessions, .. } => sessions.clone(),
            MainStore::Redb { sessions, .. } => sessions.clone(),
        }
    }

    /// Stop the writer after draining its queue. Idempotent.
    pub async fn shutdown(&self) -> SinkStats {
        match self {
            MainStore::Sqlite { trace, .. } => trace.shutdown().await,
            MainStore::Redb { trace, .. } => trace.shutdown().await,
        }
    }

    fn sink(&self) -> &dyn EventSink {
        match self {
            MainStore::Sqlite { trace, .. } => trace.as_ref(),
            MainStore::Redb { trace, .. } => trace.as_ref(),
        }
    }

    fn query(&self) -> &dyn TraceQuery {
        match self {
            MainStore::Sqlite { trace, .. } => trace.as_ref(),
            MainStore::Redb { trace, .. } => trace.as_ref(),
        }
    }
}

#[async_trait]
impl EventSink for MainStore {
    fn emit(&self, event: Event) {
        self.sink().emit(event);
    }

    async fn flush(&self) -> Result<(), TraceError> {
        self.sink().flush().await
    }

    fn stats(&self) -> SinkStats {
        self.sink().stats()
    }

    fn is_writable(&self) -> bool {
        self.sink().is_writable()
    }

    fn wal_bytes(&self) -> u64 {
        self.sink().wal_bytes()
    }

    fn db_bytes(&self) -> u64 {
        let path = match self {
            MainStore::Sqlite { trace, .. } => trace.path(),
            MainStore::Redb { trace, .. } => trace.path(),
        };
        std::fs::metadata(path).map_or(0, |m| m.len())
    }
}

#[async_trait]
impl TraceQuery for MainStore {
    async fn spend_by_key(
        &self,
        day_start_us: i64,
        month_start_us: i64,
    ) -> Result<Vec<KeySpend>, TraceError> {
        self.query()
            .spend_by_key(day_start_us, month_start_us)
            .await
    }

    async fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, TraceError> {
        self.query().usage(since_us, until_us, group, filter).await
    }

    async fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<EventRow>, TraceError> {
        self.query().audit_events(since_us, until_us, types).await
    }
}

/// The key store in the main store of `kind` at `db` (`--keystore store`).
#[must_use]
pub fn main_key_store(kind: StoreKind, db: &Path) -> Arc<dyn KeyStore> {
    match kind {
        StoreKind::Sqlite => Arc::new(SqliteKeyStore::new(db)),
        StoreKind::Redb => Arc::new(RedbKeyStore::new(db)),
    }
}

/// The pattern stores of `kind`, under `dir` (one directory per workspace hash) or in each
/// workspace's `.metis/`.
#[must_use]
pub fn pattern_store(
    kind: StoreKind,
    dir: Option<&Path>,
    caps: PatternCaps,
) -> Arc<dyn PatternStore> {
    match kind {
        StoreKind::Sqlite => Arc::new(SqlitePatternStore::new(
            dir.map_or(PatternLocation::InWorkspace, |d| {
                PatternLocation::Dir(d.to_path_buf())
            }),
            caps,
        )),
        StoreKind::Redb => Arc::new(RedbPatternStore::new(
            dir.map_or(RedbPatternLocation::InWorkspace, |d| {
                RedbPatternLocation::Dir(d.to_path_buf())
            }),
            caps,
        )),
    }
}

pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `metis backup` on redb: a consistent snapshot copied into a new file, with the SQLite
/// backup's metadata block.
///
/// # Errors
/// The backup's refusal or failure.
pub fn redb_backup(db: &Path, dest: &Path) -> anyhow::Result<()> {
    let bar = crate::storage_cli::Progress::new("backup", false);
    let r = gw_storage_redb::ops::backup(db, dest, &|d, t| bar.update(d, t));
    bar.finish();
    print(&r?.block())
}

/// `metis restore` on redb: the same checks and refusals as SQLite.
///
/// # Errors
/// The restore's refusal or failure.
pub fn redb_restore(src: &Path, db: &Path, force: bool) -> anyhow::Result<()> {
    let bar = crate::storage_cli::Progress::new("restore", true);
    // redb panics on some damaged pages; the restore turns that into a refusal naming the
    // damage, so the default hook's "thread panicked" lines would only confuse the operator
    // (this one-shot command runs nothing else meanwhile; a panic anywhere else still
    // reaches the error line through the task's result).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = gw_storage_redb::ops::restore(src, db, force, &|d, t| bar.update(d, t));
    std::panic::set_hook(hook);
    bar.finish();
    print(&r?.block())
}

/// `metis trace status` on redb (the SQLite block).
///
/// # Errors
/// A missing or newer file.
pub fn redb_status(db: &Path, now: i64) -> anyhow::Result<()> {
    print(&crate::storage_cli::status_block(
        &gw_storage_redb::ops::status(db, now)?,
    ))
}

/// `metis trace vacuum` on redb: compaction (needs the file to itself).
///
/// # Errors
/// A missing, newer or busy file.
pub fn redb_vacuum(db: &Path) -> anyhow::Result<()> {
    let r = gw_storage_redb::ops::compact(db)?;
    print(&format!(
        "trace vacuum complete\n  {:<17}{}\n  {:<17}{}\n",
        "db_path:",
        db.display(),
        "bytes_reclaimed:",
        gw_domain::retention::thousands(r.reclaimed())
    ))
}

/// `metis trace prune` on redb: batched deletion, then `trace.swept` through the writer.
///
/// # Errors
/// A missing or newer file, redb errors, or the sweep event not being stored.
pub fn redb_prune(db: &Path, days: u32, dry_run: bool, now: i64) -> anyhow::Result<()> {
    use gw_domain::retention::{SYSTEM_SESSION, TraceSwept, cutoff_us};
    use gw_domain::time::format_iso;
    use gw_ports::system::{Clock, IdSource};
    if !db.is_file() {
        bail!("trace database {} does not exist", db.display());
    }
    let cutoff = cutoff_us(now, days);
    let to_sqlite = |c: gw_storage_redb::ops::PruneCounts| gw_storage_sqlite::ops::PruneCounts {
        rows_eligible: c.rows_eligible,
        rows_audit_exempt: c.rows_audit_exempt,
        rows_deleted: c.rows_deleted,
        oldest_kept_us: c.oldest_kept_us,
    };
    if dry_run {
        let c = gw_storage_redb::ops::prune_dry_run(db, cutoff)?;
        return print(&crate::storage_cli::prune_block(
            db,
            days,
            cutoff,
            &to_sqlite(c),
            true,
        ));
    }
    // Open the writer first: it refuses a newer file before anything is deleted.
    let store = RedbTraceStore::open(db, RedbOptions::default())
        .with_context(|| format!("cannot open {}", db.display()))?;
    let bar = crate::storage_cli::Progress::new("prune", false);
    let r = gw_storage_redb::ops::prune(
        db,
        cutoff,
        gw_domain::retention::PRUNE_BATCH_ROWS,
        std::time::Duration::from_millis(5),
        &|d, t| bar.update(d, t),
    );
    bar.finish();
    let counts = r?;
    let swept_at = crate::system::SystemClock.now_us().max(now);
    let payload = TraceSwept {
        rows_deleted: counts.rows_deleted,
        rows_audit_exempt: counts.rows_audit_exempt,
        cutoff_timestamp: format_iso(cutoff),
        oldest_kept_timestamp: counts.oldest_kept_us.map(format_iso),
        dry_run: false,
        swept_at: format_iso(swept_at),
    };
    let ids = crate::system::UlidIds::default();
    store.emit(gw_domain::events::make_event(
        ids.ulid(),
        swept_at,
        SYSTEM_SESSION,
        None,
        None,
        &payload,
    ));
    let stats = store.close();
    if stats.written < 1 || stats.failed > 0 || stats.overflowed > 0 {
        bail!(
            "{} rows were deleted but the trace.swept audit event could not be written",
            counts.rows_deleted
        );
    }
    print(&crate::storage_cli::prune_block(
        db,
        days,
        cutoff,
        &to_sqlite(counts),
        false,
    ))
}

/// `metis trace migrate` on redb (see [`redb_migrate_as`]).
///
/// # Errors
/// A missing or newer file.
pub fn redb_migrate(db: &Path, dry_run: bool) -> anyhow::Result<()> {
    redb_migrate_as("trace", db, dry_run)
}

/// `metis trace|sessions migrate` on redb: the schema is created whole with its version, so
/// the only possible step is stamping an unstamped file; a newer file is refused.
///
/// # Errors
/// A missing or newer file.
pub fn redb_migrate_as(what: &str, db: &Path, dry_run: bool) -> anyhow::Result<()> {
    if !db.is_file() {
        bail!("trace database {} does not exist", db.display());
    }
    let current = gw_storage_redb::schema_version(db)
        .map_err(anyhow::Error::msg)?
        .unwrap_or(0);
    if current > gw_storage_redb::TRACE_SCHEMA_VERSION {
        bail!(
            "{} has schema version {current}, newer than this binary supports ({}); use a newer metis (this one never downgrades a file)",
            db.display(),
            gw_storage_redb::TRACE_SCHEMA_VERSION
        );
    }
    let mut steps = Vec::new();
    if current < gw_storage_redb::TRACE_SCHEMA_VERSION {
        steps.push(format!(
            "set meta.schema_version {current} -> {}",
            gw_storage_redb::TRACE_SCHEMA_VERSION
        ));
        if !dry_run {
            // Opening stamps the version and creates every table in one transaction.
            drop(
                gw_storage_redb::open_shared(db, gw_storage_redb::Sharing::default(), false)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
        }
    }
    let plan = gw_storage_sqlite::ops::MigrationPlan {
        path: db.to_path_buf(),
        current,
        target: gw_storage_redb::TRACE_SCHEMA_VERSION,
        steps,
    };
    print(&crate::storage_cli::migrate_block(
        what, &plan, dry_run, None,
    ))
}

// ---------------------------------------------------------------------------------------------
// Reads of a main store file of either backend (audit and sessions commands)
// ---------------------------------------------------------------------------------------------

fn redb_file(db: &Path) -> anyhow::Result<Arc<gw_storage_redb::Database>> {
    if !db.is_file() {
        bail!("trace database {} does not exist", db.display());
    }
    gw_storage_redb::open_shared(db, gw_storage_redb::Sharing::default(), false)
        .map_err(|e| anyhow::anyhow!("cannot open the trace database {}: {e}", db.display()))
}

fn stored(r: EventRow) -> gw_storage_sqlite::StoredEvent {
    gw_storage_sqlite::StoredEvent {
        id: r.id,
        timestamp_us: r.timestamp_us,
        session_id: r.session_id,
        turn_id: r.turn_id,
        parent_event_id: r.parent_event_id,
        event_type: r.event_type,
        actor: r.actor,
        sensitivity: r.sensitivity,
        payload_json: r.payload_json,
    }
}

/// Audit events of the redb file `db` in `[since, until)` (`types` empty = every audit
/// type), ordered by id, as the audit export renders them.
///
/// # Errors
/// A missing or unreadable file.
pub fn redb_audit_events(
    db: &Path,
    since_us: i64,
    until_us: i64,
    types: &[String],
) -> anyhow::Result<Vec<gw_storage_sqlite::StoredEvent>> {
    let handle = redb_file(db)?;
    let rows = gw_storage_redb::query::audit_events(&handle, since_us, until_us, types)
        .context("cannot read audit events")?;
    Ok(rows.into_iter().map(stored).collect())
}

/// Verify the audit chain of the redb file `db`: the result and the number of unchained
/// audit events (as `audit_cli::verify`).
///
/// # Errors
/// A missing or unreadable file.
pub fn redb_verify(db: &Path) -> anyhow::Result<(Result<u64, gw_domain::audit::BrokenLink>, u64)> {
    let handle = redb_file(db)?;
    let result = gw_storage_redb::query::verify_audit_chain(&handle)
        .context("cannot read the audit chain")?;
    let unchained = gw_storage_redb::query::count_unchained_audit(&handle)
        .context("cannot count audit events")?;
    Ok((result, unchained))
}

/// The `pattern.recorded` events of `workspace` in the redb file `db`, in id order.
///
/// # Errors
/// A missing or unreadable file.
pub fn redb_pattern_events(
    db: &Path,
    workspace: &str,
) -> anyhow::Result<Vec<gw_storage_sqlite::StoredEvent>> {
    let handle = redb_file(db)?;
    let rows =
        gw_storage_redb::query::events_of_type(&handle, gw_domain::patterns::PATTERN_RECORDED)
            .context("cannot read pattern.recorded events")?;
    Ok(rows
        .into_iter()
        .filter(|r| {
            serde_json::from_str::<serde_json::Value>(&r.payload_json)
                .ok()
                .and_then(|v| {
                    v.get("workspace_path")
                        .and_then(serde_json::Value::as_str)
                        .map(|w| w == workspace)
                })
                .unwrap_or(false)
        })
        .map(stored)
        .collect())
}

/// Session reads over a main store file of either backend (detected from the file).
pub enum SessionsReader {
    Sqlite(gw_storage_sqlite::SessionReader),
    Redb(Arc<gw_storage_redb::Database>),
}

impl std::fmt::Debug for SessionsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsReader").finish_non_exhaustive()
    }
}

impl SessionsReader {
    /// Open `db` read-only: a redb file through the redb adapter, anything else as SQLite.
    ///
    /// # Errors
    /// A missing, unreadable or newer file.
    pub fn open(db: &Path) -> anyhow::Result<Self> {
        if gw_storage_redb::is_redb_file(db) {
            return Ok(Self::Redb(redb_file(db)?));
        }
        Ok(Self::Sqlite(gw_storage_sqlite::SessionReader::open(db)?))
    }

    /// One session.
    ///
    /// # Errors
    /// Read errors.
    pub fn get(&self, id: &str) -> anyhow::Result<Option<gw_domain::sessions::SessionRecord>> {
        Ok(match self {
            Self::Sqlite(r) => r.get(id)?,
            Self::Redb(db) => gw_storage_redb::sessions::read::get(db, id)?,
        })
    }

    /// Most recently updated first (then id).
    ///
    /// # Errors
    /// Read errors.
    pub fn list(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<gw_domain::sessions::SessionRecord>> {
        Ok(match self {
            Self::Sqlite(r) => r.list(workspace, limit)?,
            Self::Redb(db) => gw_storage_redb::sessions::read::list(db, workspace, limit)?,
        })
    }

    /// Every descendant of `root` (at most `max`).
    ///
    /// # Errors
    /// Read errors.
    pub fn descendants(
        &self,
        root: &str,
        max: usize,
    ) -> anyhow::Result<Vec<gw_domain::sessions::SessionRecord>> {
        Ok(match self {
            Self::Sqlite(r) => r.descendants(root, max)?,
            Self::Redb(db) => gw_storage_redb::sessions::read::descendants(db, root, max)?,
        })
    }
}

/// `metis patterns rebuild --store redb`: the workspace's `pattern.recorded` events of the
/// redb main store replayed into its redb pattern store.
///
/// # Errors
/// The trace cannot be read or the store cannot be written.
pub fn redb_patterns_rebuild(
    db: &Path,
    workspace: &str,
    dir: Option<&Path>,
) -> anyhow::Result<crate::patterns_cli::RebuildReport> {
    use gw_domain::patterns::PatternRecorded;
    let events = redb_pattern_events(db, workspace)?;
    let mut records = Vec::with_capacity(events.len());
    let mut skipped = 0u64;
    for e in &events {
        match PatternRecorded::parse(&e.payload_json).and_then(|p| p.to_record(e.timestamp_us)) {
            Ok(r) => records.push(r),
            Err(msg) => {
                if skipped == 0 {
                    tracing::warn!(event_id = %e.id, "skipping unreadable pattern.recorded event: {msg}");
                }
                skipped += 1;
            }
        }
    }
    let store = RedbPatternStore::new(
        dir.map_or(RedbPatternLocation::InWorkspace, |d| {
            RedbPatternLocation::Dir(d.to_path_buf())
        }),
        PatternCaps::default(),
    );
    let bar = crate::storage_cli::Progress::new("rebuild", false);
    let applied = store.replace_all_blocking(workspace, &records, &|d, t| bar.update(d, t));
    bar.finish();
    Ok(crate::patterns_cli::RebuildReport {
        workspace: workspace.to_owned(),
        store: store.db_path(workspace),
        events: events.len() as u64,
        applied: applied?,
        skipped,
        stats: store.stats_blocking(workspace)?,
    })
}

/// The redb pattern store of `workspace` when it is the one that exists (no SQLite
/// `patterns.db` beside it): its stats, for `metis patterns stats`.
///
/// # Errors
/// An unreadable or newer store.
pub fn redb_pattern_stats(
    workspace: &str,
    dir: Option<&Path>,
) -> anyhow::Result<Option<gw_ports::patterns::PatternStats>> {
    let sqlite = SqlitePatternStore::new(
        dir.map_or(PatternLocation::InWorkspace, |d| {
            PatternLocation::Dir(d.to_path_buf())
        }),
        PatternCaps::default(),
    );
    let redb = RedbPatternStore::new(
        dir.map_or(RedbPatternLocation::InWorkspace, |d| {
            RedbPatternLocation::Dir(d.to_path_buf())
        }),
        PatternCaps::default(),
    );
    if sqlite.db_path(workspace).exists() || !redb.db_path(workspace).exists() {
        return Ok(None);
    }
    Ok(redb.stats_blocking(workspace)?)
}

/// `metis patterns migrate` when the workspace's store is a redb one (no SQLite
/// `patterns.db` beside it): the schema is created whole with its version, so there is no
/// step; a newer store is refused. `None` when the SQLite store is the one to migrate.
///
/// # Errors
/// A newer or unreadable store.
pub fn redb_patterns_migrate(
    workspace: &str,
    dir: Option<&Path>,
    dry_run: bool,
) -> anyhow::Result<Option<String>> {
    let sqlite = SqlitePatternStore::new(
        dir.map_or(PatternLocation::InWorkspace, |d| {
            PatternLocation::Dir(d.to_path_buf())
        }),
        PatternCaps::default(),
    );
    let redb = RedbPatternStore::new(
        dir.map_or(RedbPatternLocation::InWorkspace, |d| {
            RedbPatternLocation::Dir(d.to_path_buf())
        }),
        PatternCaps::default(),
    );
    let path = redb.db_path(workspace);
    if sqlite.db_path(workspace).exists() || !path.exists() {
        return Ok(None);
    }
    // Opening refuses a newer store and stamps an older one.
    let stats = redb.stats_blocking(workspace)?;
    let current = stats.map_or(0, |s| s.schema_version);
    let plan = gw_storage_sqlite::ops::MigrationPlan {
        path,
        current,
        target: gw_domain::patterns::PATTERN_SCHEMA_VERSION,
        steps: Vec::new(),
    };
    Ok(Some(crate::storage_cli::migrate_block(
        "patterns", &plan, dry_run, None,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_domain::events::{Actor, Sensitivity, make_event};
    use gw_domain::patterns::{FingerprintInputs, PatternRecorded, StructuralFeatures};
    use gw_domain::sessions::{SessionId, SessionTurn};

    fn turn(id: &str, parent: Option<&str>, at: i64) -> SessionTurn {
        SessionTurn {
            session_id: SessionId::parse(id).unwrap(),
            workspace_path: "/w".into(),
            active_model: None,
            cost_usd: 1.0,
            at_us: at,
            parent_session_id: parent.map(|p| SessionId::parse(p).unwrap()),
            parent_tool_use_id: None,
            is_worker: parent.is_some(),
        }
    }

    #[test]
    fn the_redb_cli_reads_audit_sessions_and_rebuilds_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let ws_dir = dir.path().join("ws");
        std::fs::create_dir_all(&ws_dir).unwrap();
        let ws = ws_dir.display().to_string();
        let db = dir.path().join("metis.redb");
        let store = RedbTraceStore::open(&db, RedbOptions::default()).unwrap();
        store.emit(Event {
            id: "01JAUDIT".into(),
            timestamp_us: 5,
            session_id: "system".into(),
            turn_id: None,
            parent_event_id: None,
            event_type: "gateway.key_issued",
            actor: Actor::System,
            sensitivity: Sensitivity::Pseudonymous,
            payload_json: r#"{"key_id":"gk_1"}"#.into(),
        });
        let features = StructuralFeatures::compute(&FingerprintInputs {
            user_text: "please debug this",
            workspace_path: &ws,
            ..FingerprintInputs::default()
        });
        for i in 0..3 {
            let p = PatternRecorded::new(features.clone(), &ws, "m1", 0.25, 10.0, None);
            store.emit(make_event(
                format!("01JPAT{i}"),
                100 + i,
                "s",
                None,
                None,
                &p,
            ));
        }
        let sessions = store.session_store();
        sessions.record_turn(turn("root", None, 10)).unwrap();
        sessions.record_turn(turn("kid", Some("root"), 20)).unwrap();
        store.close();

        assert_eq!(
            redb_audit_events(&db, i64::MIN, i64::MAX, &[])
                .unwrap()
                .len(),
            1
        );
        let (chain, unchained) = redb_verify(&db).unwrap();
        assert_eq!((chain, unchained), (Ok(1), 0));

        let reader = SessionsReader::open(&db).unwrap();
        assert!(matches!(reader, SessionsReader::Redb(_)));
        assert_eq!(reader.list(None, 10).unwrap().len(), 2);
        assert_eq!(reader.get("root").unwrap().unwrap().cost_so_far_usd, 1.0);
        let kids = reader.descendants("root", 10).unwrap();
        assert_eq!(kids.len(), 1);
        drop(reader);

        let report = redb_patterns_rebuild(&db, &ws, None).unwrap();
        assert_eq!((report.events, report.applied, report.skipped), (3, 3, 0));
        assert!(report.store.ends_with("patterns.redb"));
        let stats = redb_pattern_stats(&ws, None).unwrap().unwrap();
        assert_eq!((stats.outcomes, stats.samples), (1, 3));
        let text = redb_patterns_migrate(&ws, None, true).unwrap().unwrap();
        assert!(text.contains("none (already at version 2)"), "{text}");
    }
}
