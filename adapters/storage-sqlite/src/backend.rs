//! [`SqliteBackend`]: the storage port over SQLite files (`metis.db`, `patterns.db`), the
//! one entry point the application uses; everything else in this crate is reached through it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use metis_domain::audit::BrokenLink;
use metis_domain::backup::{BackupMeta, RestoreSummary};
use metis_domain::keys::KeyRecord;
use metis_domain::patterns::PatternCaps;
use metis_domain::sessions::SessionRecord;
use metis_domain::time::Timestamp;
use metis_ports::keys::{KeyStore, KeyStoreError, loaded_or_empty};
use metis_ports::patterns::PatternStore;
use metis_ports::storage::{
    CompactReport, MainStore, MainStoreOf, MaintenanceError, Migratable, MigrationPlan,
    PatternFiles, PatternPlace, Progress, PruneCounts, PruneOptions, Schema, ServeOptions,
    StorageBackend, StoreCounts, StoreImport, StoreReader, StoreStatus, WriterLifecycle,
};
use metis_ports::trace::{EventRow, SinkStats, TraceError};
use metis_storage_kit::PatternsOnPool;

use crate::patterns::SqlitePatternStore;
use crate::transfer::{self, MainStoreImport};
use crate::{SessionReader, SqliteKeyStore, SqliteTraceStore, TraceReader, WriterOptions, ops};

/// SQLite as the storage backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteBackend;

fn read_err(e: impl std::fmt::Display) -> TraceError {
    TraceError::Unavailable(e.to_string())
}

impl StorageBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn main_file(&self) -> &'static str {
        "metis.db"
    }

    fn recognizes(&self, path: &Path) -> bool {
        ops::header_user_version(path).is_ok()
    }

    fn open_main(
        &self,
        path: &Path,
        options: ServeOptions,
    ) -> Result<Arc<dyn MainStore>, TraceError> {
        let opts = WriterOptions {
            hold_writer_lock: options.gateway,
            commit_deadline: options.commit_deadline,
            ..WriterOptions::default()
        };
        let trace = SqliteTraceStore::open(path, opts)?;
        let sessions = Arc::new(trace.session_store()?);
        Ok(Arc::new(MainStoreOf::new(trace, sessions)))
    }

    fn key_store(&self, path: &Path) -> Arc<dyn KeyStore> {
        Arc::new(SqliteKeyStore::new(path))
    }

    fn pattern_store(&self, place: &PatternPlace, caps: PatternCaps) -> Arc<dyn PatternStore> {
        Arc::new(PatternsOnPool::new(SqlitePatternStore::new(
            place.clone(),
            caps,
        )))
    }

    fn pattern_files(&self, place: &PatternPlace) -> Box<dyn PatternFiles> {
        Box::new(SqlitePatternStore::new(
            place.clone(),
            PatternCaps::default(),
        ))
    }

    fn open_reader(&self, path: &Path) -> Result<Box<dyn StoreReader>, TraceError> {
        if !path.is_file() {
            return Err(TraceError::Unavailable(format!(
                "trace database {} does not exist",
                path.display()
            )));
        }
        Ok(Box::new(SqliteReader {
            trace: TraceReader::open(path)?,
            sessions: SessionReader::open(path).map_err(read_err)?,
            keys: SqliteKeyStore::new(path),
        }))
    }

    fn create_import(&self, path: &Path) -> Result<Box<dyn StoreImport>, TraceError> {
        Ok(Box::new(SqliteImport {
            conn: MainStoreImport::create(path)?,
            keys: SqliteKeyStore::new(path),
        }))
    }

    fn backup(
        &self,
        db: &Path,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<BackupMeta, MaintenanceError> {
        metis_storage_kit::backup(&ops::Sqlite, db, dest, progress)
    }

    fn restore(
        &self,
        src: &Path,
        db: &Path,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<RestoreSummary, MaintenanceError> {
        metis_storage_kit::restore(&ops::Sqlite, src, db, force, progress)
    }

    fn status(&self, db: &Path, now: Timestamp) -> Result<StoreStatus, MaintenanceError> {
        ops::status(db, now)
    }

    fn prune_dry_run(&self, db: &Path, cutoff: Timestamp) -> Result<PruneCounts, MaintenanceError> {
        ops::prune_dry_run(db, cutoff)
    }

    fn prune(
        &self,
        db: &Path,
        cutoff: Timestamp,
        options: PruneOptions,
        progress: Progress<'_>,
    ) -> Result<PruneCounts, MaintenanceError> {
        ops::prune(db, cutoff, options, progress)
    }

    fn compact(&self, db: &Path) -> Result<CompactReport, MaintenanceError> {
        ops::vacuum(db)
    }

    fn migration(&self, db: &Path, schema: Schema) -> Box<dyn Migratable> {
        let (plan, apply): (MigrationFn, MigrationFn) = match schema {
            Schema::Trace => (ops::plan_trace_migration, ops::apply_trace_migration),
            Schema::Sessions => (ops::plan_sessions_migration, ops::apply_sessions_migration),
        };
        Box::new(SqliteMigration {
            path: db.to_path_buf(),
            plan,
            apply,
        })
    }
}

pub(crate) type MigrationFn = fn(&Path) -> Result<MigrationPlan, MaintenanceError>;

/// A SQLite file with a versioned schema (the main store's trace or sessions tables, or a
/// pattern store); its safety copy is an ordinary `VACUUM INTO` backup.
pub(crate) struct SqliteMigration {
    pub(crate) path: PathBuf,
    pub(crate) plan: MigrationFn,
    pub(crate) apply: MigrationFn,
}

impl Migratable for SqliteMigration {
    fn path(&self) -> &Path {
        &self.path
    }

    fn plan(&self) -> Result<MigrationPlan, MaintenanceError> {
        (self.plan)(&self.path)
    }

    fn apply(&self) -> Result<MigrationPlan, MaintenanceError> {
        (self.apply)(&self.path)
    }

    fn backup(&self, dest: &Path, progress: Progress<'_>) -> Result<(), MaintenanceError> {
        metis_storage_kit::backup(&ops::Sqlite, &self.path, dest, progress).map(drop)
    }
}

#[async_trait]
impl WriterLifecycle for SqliteTraceStore {
    async fn shutdown(&self) -> SinkStats {
        SqliteTraceStore::shutdown(self).await
    }

    fn close(&self) -> SinkStats {
        SqliteTraceStore::close(self)
    }

    fn file(&self) -> &Path {
        self.path()
    }
}

/// Read-only connections to an existing main store.
struct SqliteReader {
    trace: TraceReader,
    sessions: SessionReader,
    keys: SqliteKeyStore,
}

impl StoreReader for SqliteReader {
    fn counts(&self) -> Result<StoreCounts, TraceError> {
        Ok(StoreCounts {
            events: self.trace.count_all()?,
            sessions: self.sessions.count().map_err(read_err)?,
            keys: loaded_or_empty(self.keys.load_blocking())
                .map_err(read_err)?
                .len() as u64,
        })
    }

    fn events_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<EventRow>, TraceError> {
        transfer::events_page(&self.trace, after, limit)
    }

    fn events_of_type(&self, event_type: &str) -> Result<Vec<EventRow>, TraceError> {
        let rows = self.trace.events_of_type(event_type)?;
        Ok(rows.into_iter().map(EventRow::from).collect())
    }

    fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<EventRow>, TraceError> {
        let rows = self.trace.audit_events(since_us, until_us, types)?;
        Ok(rows.into_iter().map(EventRow::from).collect())
    }

    fn verify_audit_chain(&self) -> Result<Result<u64, BrokenLink>, TraceError> {
        self.trace.verify_audit_chain()
    }

    fn count_unchained_audit(&self) -> Result<u64, TraceError> {
        self.trace.count_unchained_audit_events()
    }

    fn session(&self, id: &str) -> Result<Option<SessionRecord>, TraceError> {
        self.sessions.get(id).map_err(read_err)
    }

    fn sessions(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, TraceError> {
        self.sessions.list(workspace, limit).map_err(read_err)
    }

    fn session_children(&self, parent: &str) -> Result<Vec<SessionRecord>, TraceError> {
        self.sessions.children(parent).map_err(read_err)
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        loaded_or_empty(self.keys.load_blocking())
    }

    fn policies(&self) -> Result<metis_domain::budgets::Policies, KeyStoreError> {
        self.keys.load_policies_blocking()
    }
}

/// A new main store being filled by a copy.
struct SqliteImport {
    conn: MainStoreImport,
    keys: SqliteKeyStore,
}

impl StoreImport for SqliteImport {
    fn insert_events(&mut self, rows: &[EventRow]) -> Result<u64, TraceError> {
        self.conn.insert_events(rows)
    }

    fn insert_sessions(&mut self, rows: &[SessionRecord]) -> Result<u64, TraceError> {
        self.conn.insert_sessions(rows)
    }

    fn insert_keys(&mut self, keys: &[KeyRecord]) -> Result<u64, KeyStoreError> {
        for k in keys {
            self.keys.insert_blocking(k.clone())?;
        }
        Ok(keys.len() as u64)
    }

    fn insert_policies(
        &mut self,
        policies: &metis_domain::budgets::Policies,
    ) -> Result<(), KeyStoreError> {
        let copy = policies.clone();
        self.keys
            .update_policies_blocking(Box::new(move |p| {
                *p = copy;
                Ok(())
            }))
            .map(drop)
    }
}
