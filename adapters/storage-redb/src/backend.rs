//! [`RedbBackend`]: the storage port over redb files (`metis.redb`, `patterns.redb`), the one
//! entry point the application uses; everything else in this crate is reached through it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use metis_domain::audit::BrokenLink;
use metis_domain::backup::{BackupMeta, RestoreSummary};
use metis_domain::keys::KeyRecord;
use metis_domain::patterns::{PATTERN_SCHEMA_VERSION, PatternCaps};
use metis_domain::sessions::SessionRecord;
use metis_domain::time::Timestamp;
use metis_ports::keys::{KeyStore, KeyStoreError, loaded_or_empty};
use metis_ports::patterns::{PatternError, PatternStore};
use metis_ports::storage::{
    CompactReport, MainStore, MainStoreOf, MaintenanceError, Migratable, MigrationPlan,
    PatternFiles, PatternPlace, Progress, PruneCounts, PruneOptions, Schema, ServeOptions,
    StorageBackend, StoreCounts, StoreImport, StoreReader, StoreStatus, WriterLifecycle,
};
use metis_ports::trace::{EventRow, SinkStats, TraceError};
use metis_storage_kit::PatternsOnPool;
use redb::Database;

use crate::db::{Sharing, StoreError, TRACE_SCHEMA_VERSION, describe_open_error, open_shared};
use crate::{
    MAIN_FILE_NAME, RedbKeyStore, RedbOptions, RedbPatternStore, RedbTraceStore, ops, query,
    sessions,
};

/// redb as the storage backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedbBackend;

fn read_err(e: StoreError) -> TraceError {
    TraceError::Backend(Box::new(e))
}

/// An existing main file, shared within the process.
fn existing(path: &Path) -> Result<Arc<Database>, TraceError> {
    if !path.is_file() {
        return Err(TraceError::Unavailable(format!(
            "trace database {} does not exist",
            path.display()
        )));
    }
    open_shared(path, Sharing::default(), false).map_err(|e| crate::trace::trace_error(path, e))
}

impl StorageBackend for RedbBackend {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn main_file(&self) -> &'static str {
        MAIN_FILE_NAME
    }

    fn recognizes(&self, path: &Path) -> bool {
        crate::db::is_redb_file(path)
    }

    fn open_main(
        &self,
        path: &Path,
        options: ServeOptions,
    ) -> Result<Arc<dyn MainStore>, TraceError> {
        let opts = RedbOptions {
            commit_deadline: options.commit_deadline,
            ..RedbOptions::default()
        };
        let trace = RedbTraceStore::open(path, opts)?;
        let sessions = Arc::new(trace.session_store());
        Ok(Arc::new(MainStoreOf::new(trace, sessions)))
    }

    fn key_store(&self, path: &Path) -> Arc<dyn KeyStore> {
        Arc::new(RedbKeyStore::new(path))
    }

    fn pattern_store(&self, place: &PatternPlace, caps: PatternCaps) -> Arc<dyn PatternStore> {
        Arc::new(PatternsOnPool::new(RedbPatternStore::new(
            place.clone(),
            caps,
        )))
    }

    fn pattern_files(&self, place: &PatternPlace) -> Box<dyn PatternFiles> {
        Box::new(RedbPatternStore::new(place.clone(), PatternCaps::default()))
    }

    fn open_reader(&self, path: &Path) -> Result<Box<dyn StoreReader>, TraceError> {
        Ok(Box::new(RedbReader {
            db: existing(path)?,
            keys: RedbKeyStore::new(path),
        }))
    }

    fn create_import(&self, path: &Path) -> Result<Box<dyn StoreImport>, TraceError> {
        let db = open_shared(path, Sharing::default(), true).map_err(|e| {
            TraceError::Unavailable(format!("cannot create {}: {}", path.display(), e))
        })?;
        Ok(Box::new(RedbImport {
            db,
            keys: RedbKeyStore::new(path),
        }))
    }

    fn backup(
        &self,
        db: &Path,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<BackupMeta, MaintenanceError> {
        metis_storage_kit::backup(&ops::Redb, db, dest, progress)
    }

    fn restore(
        &self,
        src: &Path,
        db: &Path,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<RestoreSummary, MaintenanceError> {
        metis_storage_kit::restore(&ops::Redb, src, db, force, progress)
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
        ops::prune(db, cutoff, options.batch_rows, options.pause, progress)
    }

    fn compact(&self, db: &Path) -> Result<CompactReport, MaintenanceError> {
        ops::compact(db)
    }

    fn migration(&self, db: &Path, _schema: Schema) -> Box<dyn Migratable> {
        // One version marker covers every table of the main file.
        Box::new(RedbMainMigration {
            path: db.to_path_buf(),
        })
    }
}

#[async_trait]
impl WriterLifecycle for RedbTraceStore {
    async fn shutdown(&self) -> SinkStats {
        RedbTraceStore::shutdown(self).await
    }

    fn close(&self) -> SinkStats {
        RedbTraceStore::close(self)
    }

    fn file(&self) -> &Path {
        self.path()
    }
}

/// The main redb file as a migration target: its schema is created whole with its version,
/// so the only possible step is stamping an unstamped file.
struct RedbMainMigration {
    path: PathBuf,
}

impl Migratable for RedbMainMigration {
    fn path(&self) -> &Path {
        &self.path
    }

    fn plan(&self) -> Result<MigrationPlan, MaintenanceError> {
        if !self.path.is_file() {
            return Err(MaintenanceError::Refused(format!(
                "trace database {} does not exist",
                self.path.display()
            )));
        }
        let current = crate::db::schema_version(&self.path)
            .map_err(MaintenanceError::Failed)?
            .unwrap_or(0);
        if current > TRACE_SCHEMA_VERSION {
            return Err(MaintenanceError::TooNew {
                path: self.path.clone(),
                found: current,
                supported: TRACE_SCHEMA_VERSION,
            });
        }
        let steps = if current < TRACE_SCHEMA_VERSION {
            vec![format!(
                "set meta.schema_version {current} -> {TRACE_SCHEMA_VERSION}"
            )]
        } else {
            Vec::new()
        };
        Ok(MigrationPlan {
            path: self.path.clone(),
            current,
            target: TRACE_SCHEMA_VERSION,
            steps,
        })
    }

    fn apply(&self) -> Result<MigrationPlan, MaintenanceError> {
        let plan = self.plan()?;
        // Opening stamps the version and creates every table in one transaction.
        drop(
            open_shared(&self.path, Sharing::default(), false)
                .map_err(|e| MaintenanceError::Failed(describe_open_error(&self.path, &e)))?,
        );
        Ok(plan)
    }

    fn backup(&self, dest: &Path, progress: Progress<'_>) -> Result<(), MaintenanceError> {
        metis_storage_kit::backup(&ops::Redb, &self.path, dest, progress).map(drop)
    }
}

/// An existing main file, read through the process's shared handle.
struct RedbReader {
    db: Arc<Database>,
    keys: RedbKeyStore,
}

impl StoreReader for RedbReader {
    fn counts(&self) -> Result<StoreCounts, TraceError> {
        let (events, sessions, keys) = ops::counts(&self.db).map_err(read_err)?;
        Ok(StoreCounts {
            events,
            sessions,
            keys,
        })
    }

    fn events_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<EventRow>, TraceError> {
        query::events_page(&self.db, after, limit).map_err(read_err)
    }

    fn events_of_type(&self, event_type: &str) -> Result<Vec<EventRow>, TraceError> {
        query::events_of_type(&self.db, event_type).map_err(read_err)
    }

    fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<EventRow>, TraceError> {
        query::audit_events(&self.db, since_us, until_us, types).map_err(read_err)
    }

    fn verify_audit_chain(&self) -> Result<Result<u64, BrokenLink>, TraceError> {
        query::verify_audit_chain(&self.db).map_err(read_err)
    }

    fn count_unchained_audit(&self) -> Result<u64, TraceError> {
        query::count_unchained_audit(&self.db).map_err(read_err)
    }

    fn session(&self, id: &str) -> Result<Option<SessionRecord>, TraceError> {
        sessions::read::get(&self.db, id).map_err(read_err)
    }

    fn sessions(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, TraceError> {
        sessions::read::list(&self.db, workspace, limit).map_err(read_err)
    }

    fn session_children(&self, parent: &str) -> Result<Vec<SessionRecord>, TraceError> {
        sessions::read::children(&self.db, parent).map_err(read_err)
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        loaded_or_empty(self.keys.load_blocking())
    }

    fn policies(&self) -> Result<metis_domain::budgets::Policies, KeyStoreError> {
        self.keys.load_policies_blocking()
    }
}

/// A new main file being filled by a copy.
struct RedbImport {
    db: Arc<Database>,
    keys: RedbKeyStore,
}

impl StoreImport for RedbImport {
    fn insert_events(&mut self, rows: &[EventRow]) -> Result<u64, TraceError> {
        ops::import_events(&self.db, rows).map_err(read_err)
    }

    fn insert_sessions(&mut self, rows: &[SessionRecord]) -> Result<u64, TraceError> {
        ops::import_sessions(&self.db, rows).map_err(read_err)
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

/// A workspace's redb pattern store as a migration target: its schema is created whole with
/// its version when opened (an older store is stamped then, a newer one refused), so a plan
/// never has steps and no safety copy is ever needed.
pub(crate) struct RedbPatternMigration {
    pub(crate) store: RedbPatternStore,
    pub(crate) workspace: String,
    pub(crate) path: PathBuf,
}

impl RedbPatternMigration {
    fn opened(&self) -> Result<MigrationPlan, MaintenanceError> {
        if !self.path.is_file() {
            return Err(MaintenanceError::Refused(format!(
                "pattern store {} does not exist",
                self.path.display()
            )));
        }
        let stats = self.store.stats(&self.workspace).map_err(|e| match e {
            PatternError::TooNew {
                found, supported, ..
            } => MaintenanceError::TooNew {
                path: self.path.clone(),
                found,
                supported,
            },
            other => MaintenanceError::Failed(other.to_string()),
        })?;
        Ok(MigrationPlan {
            path: self.path.clone(),
            current: stats.map_or(0, |s| s.schema_version),
            target: PATTERN_SCHEMA_VERSION,
            steps: Vec::new(),
        })
    }
}

impl Migratable for RedbPatternMigration {
    fn path(&self) -> &Path {
        &self.path
    }

    fn plan(&self) -> Result<MigrationPlan, MaintenanceError> {
        self.opened()
    }

    fn apply(&self) -> Result<MigrationPlan, MaintenanceError> {
        self.opened()
    }

    fn backup(&self, _dest: &Path, _progress: Progress<'_>) -> Result<(), MaintenanceError> {
        Err(MaintenanceError::Refused(format!(
            "{} has no migration steps (redb pattern stores are created whole with their \
             version), so there is nothing to back up before one",
            self.path.display()
        )))
    }
}
