//! The backends of the contract suite: SQLite (`metis-storage-sqlite`), redb
//! (`metis-storage-redb`), PostgreSQL (`metis-storage-postgres`, a scratch database per case)
//! and the in-memory fakes (`metis_ports::fakes`), and the JSON key file
//! (`metis-keystore-file`, key store clauses only), each in a fresh temp directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use futures_util::FutureExt;
use metis_domain::patterns::PatternCaps;
use metis_ports::fakes::{
    InMemoryKeyStore, InMemoryPatternStore, InMemorySessionStore, InMemoryTraceStore,
};
use metis_ports::keys::KeyStore;
use metis_ports::patterns::PatternStore;
use metis_ports::sessions::SessionStore;
use metis_ports::trace::{EventSink, TraceError, TraceQuery};

use super::{Backend, KeyBackend, Opened};

fn tempdir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            // No temp directory means no test can run; say why once, loudly.
            #[expect(clippy::panic, reason = "fixture setup failure aborts the test")]
            {
                panic!("cannot create a temp dir: {e}")
            }
        }
    }
}

fn make_workspace(root: &Path, name: &str) -> String {
    let ws = root.join("workspaces").join(name);
    let _ = std::fs::create_dir_all(&ws);
    ws.display().to_string()
}

/// Clear (or restore) every write permission bit of `path`.
fn chmod_read_only(path: &Path, read_only: bool) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = if read_only { 0o444 } else { 0o644 };
        let mut p = m.permissions();
        p.set_mode(mode);
        let _ = std::fs::set_permissions(path, p);
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------------

/// SQLite: `metis.db` (trace, sessions, keys) and `<workspace>/.metis/patterns.db`.
pub struct SqliteBackend {
    dir: tempfile::TempDir,
}

impl SqliteBackend {
    fn db(&self) -> PathBuf {
        self.dir.path().join("metis.db")
    }
}

/// A fresh SQLite backend.
pub async fn sqlite() -> Box<dyn Backend> {
    Box::new(SqliteBackend { dir: tempdir() })
}

#[async_trait]
impl KeyBackend for SqliteBackend {
    fn keys(&self) -> Arc<dyn KeyStore> {
        Arc::new(metis_storage_sqlite::SqliteKeyStore::new(self.db()))
    }

    async fn set_keys_read_only(&self, read_only: bool) {
        chmod_read_only(&self.db(), read_only);
    }

    async fn corrupt_first_key(&self) {
        let db = self.db();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(c) = rusqlite::Connection::open(&db) {
                let _ = c.execute(
                    "UPDATE gateway_keys SET record_json = json_set(record_json, '$.secret_hash', 'not-hex') \
                     WHERE position = (SELECT MIN(position) FROM gateway_keys)",
                    [],
                );
            }
        })
        .await;
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn open(&self, queue_capacity: Option<usize>) -> Result<Opened, TraceError> {
        let db = self.db();
        let store = tokio::task::spawn_blocking(move || {
            let mut opts = metis_storage_sqlite::WriterOptions::default();
            if let Some(c) = queue_capacity {
                opts.queue_capacity = c;
            }
            metis_storage_sqlite::SqliteTraceStore::open(&db, opts)
        })
        .await
        .map_err(|e| TraceError::Unavailable(e.to_string()))??;
        let store = Arc::new(store);
        let sessions: Arc<dyn SessionStore> = Arc::new(store.session_store()?);
        let sink: Arc<dyn EventSink> = store.clone();
        let query: Arc<dyn TraceQuery> = store.clone();
        Ok(Opened::new(sink, query, sessions, move || {
            async move {
                store.shutdown().await;
            }
            .boxed()
        }))
    }

    async fn trace_version(&self) -> Option<i64> {
        let db = self.db();
        if !db.exists() {
            return None;
        }
        tokio::task::spawn_blocking(move || metis_storage_sqlite::schema_version(&db).ok())
            .await
            .ok()
            .flatten()
    }

    async fn stamp_trace_version(&self, version: i64) {
        let db = self.db();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(c) = rusqlite::Connection::open(&db) {
                let _ = c.pragma_update(None, "user_version", version);
            }
        })
        .await;
    }

    fn patterns(&self, caps: PatternCaps) -> Arc<dyn PatternStore> {
        metis_ports::storage::StorageBackend::pattern_store(
            &metis_storage_sqlite::SqliteBackend,
            &metis_ports::storage::PatternPlace::InWorkspace,
            caps,
        )
    }

    async fn stamp_pattern_version(&self, workspace: &str, version: i64) {
        let path = metis_storage_sqlite::patterns::SqlitePatternStore::new(
            metis_ports::storage::PatternPlace::InWorkspace,
            PatternCaps::default(),
        )
        .db_path(workspace);
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(c) = rusqlite::Connection::open(&path) {
                let _ = c.execute(
                    "UPDATE store_meta SET value = ?1 WHERE key = 'schema_version'",
                    [version.to_string()],
                );
            }
        })
        .await;
    }

    fn workspace(&self, name: &str) -> String {
        make_workspace(self.dir.path(), name)
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn storage(&self) -> Option<(Arc<dyn metis_ports::storage::StorageBackend>, PathBuf)> {
        Some((Arc::new(metis_storage_sqlite::SqliteBackend), self.db()))
    }

    fn crash_target(&self) -> Option<(&'static str, PathBuf)> {
        Some(("sqlite", self.db()))
    }
}

// ---------------------------------------------------------------------------------------------
// redb
// ---------------------------------------------------------------------------------------------

/// redb: `metis.redb` (trace, sessions, keys) and `<workspace>/.metis/patterns.redb`.
pub struct RedbBackend {
    dir: tempfile::TempDir,
}

impl RedbBackend {
    fn db(&self) -> PathBuf {
        self.dir.path().join(metis_storage_redb::MAIN_FILE_NAME)
    }
}

/// A fresh redb backend.
pub async fn redb() -> Box<dyn Backend> {
    Box::new(RedbBackend { dir: tempdir() })
}

#[async_trait]
impl KeyBackend for RedbBackend {
    fn keys(&self) -> Arc<dyn KeyStore> {
        Arc::new(metis_storage_redb::RedbKeyStore::new(self.db()))
    }

    async fn set_keys_read_only(&self, read_only: bool) {
        chmod_read_only(&self.db(), read_only);
    }

    async fn corrupt_first_key(&self) {
        let db = self.db();
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(keys) = metis_storage_redb::RedbKeyStore::new(&db).load_blocking() else {
                return;
            };
            let Some(mut first) = keys.into_iter().next() else {
                return;
            };
            first.secret_hash = "not-hex".into();
            if let Ok(json) = serde_json::to_string(&first) {
                let _ = metis_storage_redb::overwrite_first_key_json(&db, &json);
            }
        })
        .await;
    }
}

#[async_trait]
impl Backend for RedbBackend {
    fn kind(&self) -> &'static str {
        "redb"
    }

    async fn open(&self, queue_capacity: Option<usize>) -> Result<Opened, TraceError> {
        let db = self.db();
        let store = tokio::task::spawn_blocking(move || {
            let mut opts = metis_storage_redb::RedbOptions::default();
            if let Some(c) = queue_capacity {
                opts.queue_capacity = c;
            }
            metis_storage_redb::RedbTraceStore::open(&db, opts)
        })
        .await
        .map_err(|e| TraceError::Unavailable(e.to_string()))??;
        let store = Arc::new(store);
        let sessions: Arc<dyn SessionStore> = Arc::new(store.session_store());
        let sink: Arc<dyn EventSink> = store.clone();
        let query: Arc<dyn TraceQuery> = store.clone();
        Ok(Opened::new(sink, query, sessions, move || {
            async move {
                store.shutdown().await;
            }
            .boxed()
        }))
    }

    async fn trace_version(&self) -> Option<i64> {
        let db = self.db();
        if !db.exists() {
            return None;
        }
        tokio::task::spawn_blocking(move || metis_storage_redb::schema_version(&db).ok().flatten())
            .await
            .ok()
            .flatten()
    }

    async fn stamp_trace_version(&self, version: i64) {
        let db = self.db();
        let _ = tokio::task::spawn_blocking(move || {
            metis_storage_redb::stamp_schema_version(&db, version)
        })
        .await;
    }

    fn patterns(&self, caps: PatternCaps) -> Arc<dyn PatternStore> {
        metis_ports::storage::StorageBackend::pattern_store(
            &metis_storage_redb::RedbBackend,
            &metis_ports::storage::PatternPlace::InWorkspace,
            caps,
        )
    }

    async fn stamp_pattern_version(&self, workspace: &str, version: i64) {
        let path = metis_storage_redb::RedbPatternStore::new(
            metis_ports::storage::PatternPlace::InWorkspace,
            PatternCaps::default(),
        )
        .db_path(workspace);
        let _ = tokio::task::spawn_blocking(move || {
            metis_storage_redb::patterns::stamp_pattern_version(&path, version)
        })
        .await;
    }

    fn workspace(&self, name: &str) -> String {
        make_workspace(self.dir.path(), name)
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn storage(&self) -> Option<(Arc<dyn metis_ports::storage::StorageBackend>, PathBuf)> {
        Some((Arc::new(metis_storage_redb::RedbBackend), self.db()))
    }

    fn crash_target(&self) -> Option<(&'static str, PathBuf)> {
        Some(("redb", self.db()))
    }
}

// ---------------------------------------------------------------------------------------------
// Fakes
// ---------------------------------------------------------------------------------------------

/// The in-memory fakes; the "files" are their shared states.
pub struct FakeBackend {
    dir: tempfile::TempDir,
    trace: Mutex<Option<InMemoryTraceStore>>,
    sessions: InMemorySessionStore,
    keys: InMemoryKeyStore,
    patterns: InMemoryPatternStore,
}

/// A fresh fake backend.
pub async fn fake() -> Box<dyn Backend> {
    Box::new(FakeBackend {
        dir: tempdir(),
        trace: Mutex::new(None),
        sessions: InMemorySessionStore::new(),
        keys: InMemoryKeyStore::new(),
        patterns: InMemoryPatternStore::new(PatternCaps::default()),
    })
}

#[async_trait]
impl KeyBackend for FakeBackend {
    fn keys(&self) -> Arc<dyn KeyStore> {
        Arc::new(self.keys.clone())
    }

    async fn set_keys_read_only(&self, read_only: bool) {
        self.keys.set_read_only(read_only);
    }

    async fn corrupt_first_key(&self) {
        let mut keys = self.keys.load().await.unwrap_or_default();
        if let Some(first) = keys.first_mut() {
            first.secret_hash = "not-hex".into();
        }
        self.keys.put_raw(keys);
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn open(&self, queue_capacity: Option<usize>) -> Result<Opened, TraceError> {
        let trace = {
            let mut slot = self.trace.lock().unwrap_or_else(PoisonError::into_inner);
            let base = slot.get_or_insert_with(InMemoryTraceStore::new);
            base.reopen_with(queue_capacity)?
        };
        let sessions = self.sessions.reopen_with(queue_capacity);
        let (t, s) = (trace.clone(), sessions.clone());
        Ok(Opened::new(
            Arc::new(trace.clone()),
            Arc::new(trace),
            Arc::new(sessions),
            move || {
                async move {
                    t.close();
                    s.close();
                }
                .boxed()
            },
        ))
    }

    async fn trace_version(&self) -> Option<i64> {
        self.trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(InMemoryTraceStore::schema_version)
    }

    async fn stamp_trace_version(&self, version: i64) {
        if let Some(t) = self
            .trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            t.set_schema_version(version);
        }
    }

    fn patterns(&self, caps: PatternCaps) -> Arc<dyn PatternStore> {
        Arc::new(self.patterns.with_caps(caps))
    }

    async fn stamp_pattern_version(&self, workspace: &str, version: i64) {
        self.patterns.set_schema_version(workspace, version);
    }

    fn workspace(&self, name: &str) -> String {
        make_workspace(self.dir.path(), name)
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn storage(&self) -> Option<(Arc<dyn metis_ports::storage::StorageBackend>, PathBuf)> {
        None
    }

    fn crash_target(&self) -> Option<(&'static str, PathBuf)> {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// JSON key file
// ---------------------------------------------------------------------------------------------

/// The default key store, `metis-keystore-file`: `<dir>/gateway/keys.json` (a subdirectory, so
/// the first insert also creates the directory, as on a fresh host). A key store only.
pub struct FileKeyBackend {
    dir: tempfile::TempDir,
}

impl FileKeyBackend {
    fn file(&self) -> PathBuf {
        self.dir.path().join("gateway").join("keys.json")
    }
}

/// A fresh JSON key file backend.
pub async fn file_keystore() -> Box<dyn KeyBackend> {
    Box::new(FileKeyBackend { dir: tempdir() })
}

#[async_trait]
impl KeyBackend for FileKeyBackend {
    fn keys(&self) -> Arc<dyn KeyStore> {
        Arc::new(metis_keystore_file::FileKeyStore::new(self.file()))
    }

    async fn set_keys_read_only(&self, read_only: bool) {
        chmod_read_only(&self.file(), read_only);
    }

    async fn corrupt_first_key(&self) {
        let file = self.file();
        let Ok(text) = std::fs::read_to_string(&file) else {
            return;
        };
        let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&text) else {
            return;
        };
        if let Some(first) = doc.pointer_mut("/keys/0/secret_hash") {
            *first = serde_json::Value::from("not-hex");
        }
        let _ = std::fs::write(&file, doc.to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// PostgreSQL (`metis-storage-postgres`): a fresh database per case on the server of
/// `METIS_TEST_DATABASE_URL`, dropped with the fixture. Its pattern stores are not in this
/// build, so the pattern clauses do not run on it.
pub struct PostgresBackend {
    dir: tempfile::TempDir,
    backend: Arc<metis_storage_postgres::PostgresBackend>,
    // Dropped last: the database goes once every handle above is gone.
    scratch: metis_storage_postgres::ScratchDatabase,
}

/// A fresh PostgreSQL backend. Without `METIS_TEST_DATABASE_URL` the case fails with the
/// message saying how to start a server (never a silent skip).
pub async fn postgres() -> Box<dyn Backend> {
    let scratch = match tokio::task::spawn_blocking(
        metis_storage_postgres::ScratchDatabase::from_env,
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            #[expect(clippy::panic, reason = "fixture setup failure fails the case")]
            {
                panic!("{e}")
            }
        }
        Err(e) => {
            #[expect(clippy::panic, reason = "fixture setup failure fails the case")]
            {
                panic!("cannot create the scratch database: {e}")
            }
        }
    };
    let backend = match metis_storage_postgres::PostgresBackend::new(scratch.config().clone()) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            #[expect(clippy::panic, reason = "fixture setup failure fails the case")]
            {
                panic!("cannot build the PostgreSQL backend: {e}")
            }
        }
    };
    Box::new(PostgresBackend {
        dir: tempdir(),
        backend,
        scratch,
    })
}

impl PostgresBackend {
    /// Run one statement on the scratch database (fixture hooks).
    async fn sql(&self, sql: String) {
        let db = self.backend.db().clone();
        let pool = db.clone();
        let _ = tokio::task::spawn_blocking(move || {
            db.block_on(async move {
                pool.get().await?.batch_execute(&sql).await?;
                Ok(())
            })
        })
        .await;
    }
}

#[async_trait]
impl KeyBackend for PostgresBackend {
    fn keys(&self) -> Arc<dyn KeyStore> {
        // A new pool per handle, as another process would have: a database switched to
        // read-only applies to new sessions.
        match metis_storage_postgres::Db::new(self.scratch.config().clone()) {
            Ok(db) => Arc::new(metis_storage_postgres::PgKeyStore::new(db)),
            Err(_) => Arc::new(metis_storage_postgres::PgKeyStore::new(
                self.backend.db().clone(),
            )),
        }
    }

    async fn set_keys_read_only(&self, read_only: bool) {
        // A standby or a read-only role, as the gateway meets it.
        self.sql(format!(
            "ALTER DATABASE {} SET default_transaction_read_only = {}",
            self.scratch.name(),
            if read_only { "on" } else { "off" }
        ))
        .await;
    }

    async fn corrupt_first_key(&self) {
        self.sql(
            "UPDATE gateway_keys SET record_json = jsonb_set(record_json::jsonb, \
             '{secret_hash}', '\"not-hex\"')::text \
             WHERE position = (SELECT min(position) FROM gateway_keys)"
                .to_owned(),
        )
        .await;
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn open(&self, queue_capacity: Option<usize>) -> Result<Opened, TraceError> {
        let mut opts = metis_storage_postgres::PgWriterOptions::default();
        if let Some(c) = queue_capacity {
            opts.queue_capacity = c;
        }
        let backend = (*self.backend).clone().with_writer_options(opts);
        let path = self.dir.path().join("metis.postgres");
        let store = tokio::task::spawn_blocking(move || {
            metis_ports::storage::StorageBackend::open_main(
                &backend,
                &path,
                metis_ports::storage::ServeOptions::default(),
            )
        })
        .await
        .map_err(|e| TraceError::Unavailable(e.to_string()))??;
        let sessions = store.sessions();
        let sink: Arc<dyn EventSink> = store.clone();
        let query: Arc<dyn TraceQuery> = store.clone();
        Ok(Opened::new(sink, query, sessions, move || {
            async move {
                store.shutdown().await;
            }
            .boxed()
        }))
    }

    async fn trace_version(&self) -> Option<i64> {
        let db = self.backend.db().clone();
        let pool = db.clone();
        tokio::task::spawn_blocking(move || {
            db.block_on(async move {
                let c = pool.get().await?;
                let v = c
                    .query_opt(
                        "SELECT version FROM metis_schema WHERE component = 'trace'",
                        &[],
                    )
                    .await
                    .ok()
                    .flatten()
                    .map(|r| i64::from(r.get::<_, i32>(0)));
                Ok(v)
            })
            .ok()
            .flatten()
        })
        .await
        .ok()
        .flatten()
    }

    async fn stamp_trace_version(&self, version: i64) {
        // A newer binary that this one cannot run on: its oldest compatible version is its own.
        self.sql(format!(
            "UPDATE metis_schema SET version = {version}, compatible_from = {version} \
             WHERE component = 'trace'"
        ))
        .await;
    }

    fn patterns(&self, caps: PatternCaps) -> Arc<dyn PatternStore> {
        metis_ports::storage::StorageBackend::pattern_store(
            self.backend.as_ref(),
            &metis_ports::storage::PatternPlace::InWorkspace,
            caps,
        )
    }

    async fn stamp_pattern_version(&self, _workspace: &str, _version: i64) {
        // The pattern clauses do not run on this backend (its pattern stores are not in
        // this build).
    }

    fn workspace(&self, name: &str) -> String {
        make_workspace(self.dir.path(), name)
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn storage(&self) -> Option<(Arc<dyn metis_ports::storage::StorageBackend>, PathBuf)> {
        let backend: Arc<dyn metis_ports::storage::StorageBackend> = self.backend.clone();
        Some((backend, self.dir.path().join("metis.postgres")))
    }

    fn crash_target(&self) -> Option<(&'static str, PathBuf)> {
        // The crash writer builds its URL from METIS_TEST_DATABASE_URL and this name.
        Some(("postgres", PathBuf::from(self.scratch.name())))
    }
}
