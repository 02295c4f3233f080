//! [`PostgresBackend`]: the storage port over one PostgreSQL database, the entry point the
//! application uses (`--store postgres`); everything else in this crate is reached through it.
//!
//! Invariants:
//! - The backend is bound to its database when it is built ([`PostgresBackend::new`]); the
//!   port's `db: &Path` arguments (the data-dir path a file engine would use) are ignored, and
//!   `recognizes` is false for every path: no file is ever a PostgreSQL store.
//! - Opening the main store (to serve or to fill it) migrates the main store's components
//!   first, once per fleet (advisory lock); readers and maintenance never create anything.
//! - One pool per backend: the writer thread holds one connection of it; readers, key
//!   stores and maintenance share the rest.

use std::path::Path;
use std::sync::Arc;

use metis_domain::backup::{BackupMeta, RestoreSummary};
use metis_domain::patterns::PatternCaps;
use metis_domain::spend::SpendState;
use metis_domain::time::Timestamp;
use metis_ports::keys::KeyStore;
use metis_ports::patterns::PatternStore;
use metis_ports::storage::{
    CompactReport, FleetAdmission, MainStore, MainStoreOf, MaintenanceError, Migratable,
    PatternFiles, PatternPlace, Progress, PruneCounts, PruneOptions, Schema, ServeOptions,
    StorageBackend, StoreImport, StoreReader, StoreStatus,
};
use metis_ports::trace::TraceError;

use crate::config::PgConfig;
use crate::errors::trace_err;
use crate::keys::PgKeyStore;
use crate::maintenance::{self, PgMigration, location};
use crate::pool::{Db, DbError};
use crate::reader::{PgImport, PgReader};
use crate::schema::{self, SchemaError};
use crate::tables::{MAIN_STORE, SESSIONS, TRACE};
use crate::trace::{PgTraceStore, PgWriterOptions};

/// PostgreSQL as the storage backend.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    db: Db,
    writer: PgWriterOptions,
}

impl PostgresBackend {
    /// What `main_file` answers: a label for the data-dir path the app computes, never a
    /// file (the store is the database of the URL).
    pub const MAIN_FILE_LABEL: &'static str = "metis.postgres";

    /// A backend over the database of `config` (no connection is opened yet).
    ///
    /// # Errors
    /// `Tls` when the root certificates cannot be read; `Stopped` when the adapter's runtime
    /// cannot start.
    pub fn new(config: PgConfig) -> Result<Self, DbError> {
        Ok(Self {
            db: Db::new(config)?,
            writer: PgWriterOptions::default(),
        })
    }

    /// The same backend with other writer settings (tests, benchmarks).
    #[must_use]
    pub fn with_writer_options(mut self, writer: PgWriterOptions) -> Self {
        self.writer = writer;
        self
    }

    /// The pool.
    #[must_use]
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Bring every component of the main store to this binary's version (once per fleet).
    fn migrate_main(&self) -> Result<(), TraceError> {
        let pool = self.db.clone();
        let outcome = self
            .db
            .block_on(async move {
                let mut c = pool.get().await?;
                for component in &MAIN_STORE {
                    match schema::migrate(&mut c, component).await {
                        Ok(steps) => {
                            if !steps.is_empty() {
                                tracing::info!(
                                    component = component.name,
                                    version = component.version(),
                                    steps = %steps.join("; "),
                                    "migrated the PostgreSQL schema"
                                );
                            }
                        }
                        Err(SchemaError::Query(e)) => return Err(e.into()),
                        Err(too_new) => return Ok(Err(too_new)),
                    }
                }
                Ok(Ok(()))
            })
            .map_err(trace_err)?;
        outcome.map_err(|e| match e {
            SchemaError::TooNew { found, known, .. } => TraceError::TooNew {
                found: i64::from(found),
                supported: i64::from(known),
            },
            SchemaError::Query(q) => trace_err(q.into()),
        })
    }

    /// Refuse a database without a main store, or with one this binary cannot run on.
    fn require_main(&self) -> Result<(), TraceError> {
        maintenance::require(&self.db, &TRACE)
            .map(drop)
            .map_err(|e| match e {
                MaintenanceError::TooNew {
                    found, supported, ..
                } => TraceError::TooNew { found, supported },
                other => TraceError::Unavailable(other.to_string()),
            })
    }
}

impl StorageBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn main_file(&self) -> &'static str {
        Self::MAIN_FILE_LABEL
    }

    fn recognizes(&self, _path: &Path) -> bool {
        false
    }

    fn main_exists(&self, _path: &Path) -> bool {
        self.require_main().is_ok()
    }

    fn open_main(
        &self,
        _path: &Path,
        options: ServeOptions,
    ) -> Result<Arc<dyn MainStore>, TraceError> {
        self.migrate_main()?;
        let opts = PgWriterOptions {
            commit_deadline: options.commit_deadline,
            ..self.writer
        };
        let trace = PgTraceStore::start(&self.db, opts)?;
        let sessions = Arc::new(trace.session_store());
        Ok(Arc::new(MainStoreOf::new(trace, sessions)))
    }

    fn key_store(&self, _path: &Path) -> Arc<dyn KeyStore> {
        Arc::new(PgKeyStore::new(self.db.clone()))
    }

    fn pattern_store(&self, _place: &PatternPlace, caps: PatternCaps) -> Arc<dyn PatternStore> {
        crate::patterns::store(self.db.clone(), caps)
    }

    fn pattern_files(&self, _place: &PatternPlace) -> Box<dyn PatternFiles> {
        crate::patterns::files(self.db.clone())
    }

    fn open_reader(&self, _path: &Path) -> Result<Box<dyn StoreReader>, TraceError> {
        self.require_main()?;
        Ok(Box::new(PgReader {
            db: self.db.clone(),
            keys: PgKeyStore::new(self.db.clone()),
        }))
    }

    fn create_import(&self, _path: &Path) -> Result<Box<dyn StoreImport>, TraceError> {
        self.migrate_main()?;
        Ok(Box::new(PgImport {
            db: self.db.clone(),
            keys: PgKeyStore::new(self.db.clone()),
        }))
    }

    fn backup(
        &self,
        _db: &Path,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<BackupMeta, MaintenanceError> {
        crate::snapshot::backup(&self.db, dest, progress)
    }

    fn restore(
        &self,
        src: &Path,
        _db: &Path,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<RestoreSummary, MaintenanceError> {
        crate::snapshot::restore(&self.db, src, force, progress)
    }

    fn status(&self, _db: &Path, now: Timestamp) -> Result<StoreStatus, MaintenanceError> {
        maintenance::status(&self.db, now)
    }

    fn prune_dry_run(
        &self,
        _db: &Path,
        cutoff: Timestamp,
    ) -> Result<PruneCounts, MaintenanceError> {
        maintenance::prune_dry_run(&self.db, cutoff)
    }

    fn prune(
        &self,
        _db: &Path,
        cutoff: Timestamp,
        options: PruneOptions,
        progress: Progress<'_>,
    ) -> Result<PruneCounts, MaintenanceError> {
        maintenance::prune(&self.db, cutoff, options, progress)
    }

    fn compact(&self, _db: &Path) -> Result<CompactReport, MaintenanceError> {
        maintenance::compact(&self.db)
    }

    fn migration(&self, _db: &Path, schema: Schema) -> Box<dyn Migratable> {
        let component = match schema {
            Schema::Trace => &TRACE,
            Schema::Sessions => &SESSIONS,
        };
        Box::new(PgMigration {
            db: self.db.clone(),
            component,
            location: location(&self.db),
        })
    }

    fn fleet_admission(
        &self,
        seed: &[(Arc<str>, SpendState)],
        max_buckets: usize,
    ) -> Result<Option<FleetAdmission>, TraceError> {
        let (spend, per_key) = crate::admission::guards(&self.db, max_buckets);
        let (db, store, seed) = (self.db.clone(), Arc::clone(&spend), seed.to_vec());
        self.db
            .block_on(async move {
                crate::admission::migrate(&db).await?;
                crate::token_limits::migrate(&db).await?;
                crate::admission::forget_old_settlements(&db).await?;
                store
                    .seed(&seed)
                    .await
                    .map_err(|e| DbError::Unavailable(e.store.to_owned(), e.message))?;
                Ok(())
            })
            .map_err(trace_err)?;
        let tokens = Arc::new(crate::token_limits::PgTokenLimiter::new(
            self.db.clone(),
            max_buckets,
        ));
        Ok(Some(FleetAdmission {
            spend,
            per_key,
            tokens,
        }))
    }
}
