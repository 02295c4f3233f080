//! The storage backend choice (`--store sqlite|redb|postgres`, `METIS_GATEWAY_STORE`): the one
//! place that names a storage adapter. Everything else in the binary speaks to the
//! [`StorageBackend`] port.
//!
//! Invariants:
//! - SQLite is the default; `redb` keeps the main store in `<data-dir>/metis.redb` (or
//!   `--db-path`) and pattern stores in `<workspace>/.metis/patterns.redb`; `postgres` keeps
//!   the main store in the database of `--database-url` (a server engine: bound to its
//!   database, no file; `--db-path` is ignored).
//! - A command that reads an existing store uses the server engine `--store` names; else the
//!   engine the file is (by its content), else the one named by `--store`, else SQLite
//!   ([`for_existing`]); pattern commands pick the file engine whose store of the workspace
//!   exists, first match in [`StoreKind`] order.
//! - One PostgreSQL backend (one pool) per database and settings per process: the gateway's
//!   main store, key store and pattern stores share it.
//! - Keys follow `--keystore` (a JSON file, or `store` = the main store of the chosen
//!   backend); sessions and spend follow `--store`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use anyhow::Context;
use clap::ValueEnum;
use metis_ports::storage::{MainStore, ServeOptions, StorageBackend};

use crate::cli::DatabaseArgs;
use crate::paths::Paths;

/// The storage engines this binary carries, in the order they are tried when a file's
/// engine is detected (server engines own no file and are never detected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum StoreKind {
    /// SQLite (`metis.db`, `patterns.db`): the default.
    #[default]
    Sqlite,
    /// redb (`metis.redb`, `patterns.redb`).
    Redb,
    /// PostgreSQL: the database of `--database-url`, shared by a fleet of gateways.
    Postgres,
}

impl StoreKind {
    /// The adapter behind this engine: the single selection point. A server engine is bound
    /// to the database of `database` (one backend per database per process).
    ///
    /// # Errors
    /// `postgres` without `--database-url`, or with a URL or settings that do not parse.
    pub fn backend(self, database: &DatabaseArgs) -> anyhow::Result<Arc<dyn StorageBackend>> {
        match self.file_backend() {
            Some(b) => Ok(b),
            None => postgres(database),
        }
    }

    /// The adapter of a file engine (`None` for a server engine).
    fn file_backend(self) -> Option<Arc<dyn StorageBackend>> {
        match self {
            StoreKind::Sqlite => Some(Arc::new(metis_storage_sqlite::SqliteBackend)),
            StoreKind::Redb => Some(Arc::new(metis_storage_redb::RedbBackend)),
            StoreKind::Postgres => None,
        }
    }

    /// Whether the engine is a database server (bound to `--database-url`, no file).
    #[must_use]
    pub fn is_server(self) -> bool {
        self.file_backend().is_none()
    }

    /// `sqlite`, `redb` or `postgres`.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.file_backend().map_or("postgres", |b| b.name())
    }

    /// The main store's file name in the data directory (a server engine's is a label,
    /// never created).
    #[must_use]
    pub fn main_file(self) -> &'static str {
        self.file_backend().map_or(
            metis_storage_postgres::PostgresBackend::MAIN_FILE_LABEL,
            |b| b.main_file(),
        )
    }
}

/// The PostgreSQL backend of `database`, built once per process.
fn postgres(database: &DatabaseArgs) -> anyhow::Result<Arc<dyn StorageBackend>> {
    static BUILT: OnceLock<Mutex<HashMap<DatabaseArgs, Arc<dyn StorageBackend>>>> = OnceLock::new();
    let Some(url) = database.database_url.as_deref() else {
        anyhow::bail!(
            "--store postgres needs --database-url (or METIS_GATEWAY_DATABASE_URL), e.g. \
             postgres://metis:PASSWORD@db.internal:5432/metis?sslmode=verify-full"
        );
    };
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(b) = built.get(database) {
        return Ok(Arc::clone(b));
    }
    let pool_size = database
        .database_pool_size
        .unwrap_or(metis_storage_postgres::DEFAULT_POOL_SIZE);
    if pool_size < 2 {
        anyhow::bail!(
            "--database-pool-size must be at least 2: the trace writer holds one connection and              reads, keys and spend need another"
        );
    }
    let config = metis_storage_postgres::PgConfig::new(
        url,
        pool_size,
        database
            .database_statement_timeout
            .unwrap_or(metis_storage_postgres::DEFAULT_STATEMENT_TIMEOUT),
    )?;
    let backend: Arc<dyn StorageBackend> = Arc::new(
        metis_storage_postgres::PostgresBackend::new(config).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    built.insert(database.clone(), Arc::clone(&backend));
    Ok(backend)
}

/// Where the main store of `kind` at `db` is, for messages: the file, or (PostgreSQL) the
/// database URL with its password replaced by `***`.
#[must_use]
pub fn location(kind: StoreKind, db: &Path, database: &DatabaseArgs) -> String {
    match (kind.is_server(), database.database_url.as_deref()) {
        (true, Some(url)) => metis_storage_postgres::config::redact(url),
        (true, None) => "(no --database-url)".to_owned(),
        (false, _) => db.display().to_string(),
    }
}

/// The first file engine (in declaration order) for which `probe` holds.
fn detect(probe: impl Fn(&dyn StorageBackend) -> bool) -> Option<StoreKind> {
    StoreKind::value_variants()
        .iter()
        .copied()
        .find(|k| k.file_backend().is_some_and(|b| probe(b.as_ref())))
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend of an existing main store: the server engine `flag` names; else the engine
/// the file at `db` is; else `flag`; else SQLite.
///
/// # Errors
/// As [`StoreKind::backend`].
pub fn for_existing(
    db: &Path,
    flag: Option<StoreKind>,
    database: &DatabaseArgs,
) -> anyhow::Result<Arc<dyn StorageBackend>> {
    if let Some(server) = flag.filter(|k| k.is_server()) {
        return server.backend(database);
    }
    detect(|b| b.recognizes(db))
        .or(flag)
        .unwrap_or_default()
        .backend(database)
}

/// The file engine whose pattern store of `workspace` exists (under `place`), else SQLite.
#[must_use]
pub fn for_patterns(
    workspace: &str,
    place: &metis_ports::storage::PatternPlace,
) -> Arc<dyn StorageBackend> {
    detect(|b| b.pattern_files(place).path(workspace).exists())
        .and_then(StoreKind::file_backend)
        .unwrap_or_else(|| Arc::new(metis_storage_sqlite::SqliteBackend))
}

/// Open (creating when missing) the main store at `paths.db` with the backend `paths.store`.
/// `gateway` = the serving process (SQLite: hold the shared writer lock so `metis restore`
/// refuses to replace the file under it).
///
/// # Errors
/// A store from a newer binary, one that cannot be opened or created, or a server engine
/// without its database settings.
pub async fn open_main(
    paths: &Paths,
    gateway: bool,
    commit_deadline: std::time::Duration,
) -> anyhow::Result<Arc<dyn MainStore>> {
    let db = paths.db.clone();
    let backend = paths.backend()?;
    let options = ServeOptions {
        gateway,
        commit_deadline,
    };
    tokio::task::spawn_blocking(move || backend.open_main(&db, options))
        .await
        .context("trace store task failed")?
        .with_context(|| format!("cannot open trace store {}", paths.location()))
}

/// The audit chain check of `metis audit verify`, run by the gateway over the store it serves
/// from (`GET /admin/v1/audit/verify`): a read-only reader of the same backend (the same
/// file handle for redb, a read-only connection for SQLite, the same database for
/// PostgreSQL), off the request threads because the check reads the whole chain.
pub struct ServedChain {
    pub backend: Arc<dyn StorageBackend>,
    pub db: std::path::PathBuf,
}

#[async_trait::async_trait]
impl metis_ports::console::AuditChainReader for ServedChain {
    async fn verify_chain(
        &self,
    ) -> Result<(Result<u64, metis_domain::audit::BrokenLink>, u64), metis_ports::trace::TraceError>
    {
        let backend = Arc::clone(&self.backend);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let reader = backend.open_reader(&db)?;
            let report = metis_usecases::storage::audit::verify(reader.as_ref())
                .map_err(|e| metis_ports::trace::TraceError::Unavailable(e.to_string()))?;
            Ok((report.chain, report.unchained))
        })
        .await
        .map_err(|e| {
            metis_ports::trace::TraceError::Unavailable(format!("chain check task failed: {e}"))
        })?
    }
}
