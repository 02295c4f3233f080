//! The connection pool and the thread it lives on.
//!
//! Invariants:
//! - One pool per backend (`--database-pool-size` connections at most), each connection with
//!   the configured `statement_timeout`; waiting for a connection and opening one are bounded
//!   by the same timeout, so an unreachable server turns into an error, never a hang.
//! - The port's blocking methods (opening stores, CLI maintenance, readers) run their queries
//!   on the adapter's own runtime thread (`metis-pg`) and wait for the answer: they never need
//!   the caller to be inside (or outside) a Tokio runtime. On a multi-threaded runtime worker
//!   the wait is wrapped in `block_in_place`, so other tasks move to another worker.
//! - Dropping the last handle shuts that runtime down in the background: dropping a backend
//!   inside async code never panics.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{PgConfig, TlsMode};

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server is unreachable, refused the login, or the pool timed out.
    #[error("PostgreSQL {0} is unavailable: {1}")]
    Unavailable(String, String),
    /// A statement failed.
    #[error("PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// TLS could not be set up (an unreadable `sslrootcert`, no trusted roots).
    #[error("PostgreSQL TLS: {0}")]
    Tls(String),
    /// The schema is newer than this binary, or could not be migrated.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    /// The adapter's runtime is gone (the process is shutting down).
    #[error("PostgreSQL adapter stopped: {0}")]
    Stopped(String),
}

/// The runtime the pool's connections and blocking calls run on.
struct PgRuntime(Option<tokio::runtime::Runtime>);

impl Drop for PgRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A pool of connections to one database, usable from async and blocking code.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    runtime: Arc<PgRuntime>,
    config: Arc<PgConfig>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("config", &self.config).finish()
    }
}

impl Db {
    /// Build the pool (no connection is opened yet).
    ///
    /// # Errors
    /// `Tls` when the root certificates cannot be read; `Stopped` when the runtime thread
    /// cannot start.
    pub fn new(config: PgConfig) -> Result<Self, DbError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("metis-pg")
            .enable_all()
            .build()
            .map_err(|e| DbError::Stopped(e.to_string()))?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let tls = match config.tls {
            TlsMode::Disable => None,
            TlsMode::Require => Some(client_tls(&config)?),
            // `prefer` on a machine with no trusted roots (and no sslrootcert) stays plain.
            TlsMode::Prefer => match client_tls(&config) {
                Err(DbError::Tls(_)) if config.root_cert.is_none() => None,
                other => Some(other?),
            },
        };
        let manager = match tls {
            None => Manager::from_config(config.pg.clone(), tokio_postgres::NoTls, manager_config),
            Some(tls) => Manager::from_config(
                config.pg.clone(),
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            ),
        };
        let timeout = Some(config.statement_timeout);
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|e| DbError::Stopped(e.to_string()))?;
        Ok(Self {
            pool,
            runtime: Arc::new(PgRuntime(Some(runtime))),
            config: Arc::new(config),
        })
    }

    /// The configuration (its URL redacted in `Debug`).
    #[must_use]
    pub fn config(&self) -> &PgConfig {
        &self.config
    }

    /// A pooled connection.
    ///
    /// # Errors
    /// `Unavailable` when none can be had within the timeout.
    pub async fn get(&self) -> Result<Object, DbError> {
        self.pool.get().await.map_err(|e| {
            DbError::Unavailable(self.config.redacted().to_owned(), pool_error_text(&e))
        })
    }

    /// Run `work` on the adapter's runtime and wait for it (for the port's blocking methods).
    ///
    /// # Errors
    /// `Stopped` when the runtime is shutting down or the task panicked; else `work`'s own.
    pub fn block_on<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: Future<Output = Result<T, DbError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(rt) = self.runtime.0.as_ref() else {
            return Err(DbError::Stopped("runtime already shut down".into()));
        };
        let task = rt.spawn(work);
        let wait = move || futures_executor::block_on(task);
        let joined = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        joined.map_err(|e| DbError::Stopped(e.to_string()))?
    }

    /// Run `work` on the adapter's runtime and await it from any async context (the gateway's
    /// runtime, a test's). Connections opened meanwhile belong to the adapter's runtime, so
    /// they outlive the caller's runtime.
    ///
    /// # Errors
    /// `Stopped` when the runtime is shutting down or the task panicked; else `work`'s own.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: Future<Output = Result<T, DbError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(rt) = self.runtime.0.as_ref() else {
            return Err(DbError::Stopped("runtime already shut down".into()));
        };
        rt.spawn(work)
            .await
            .map_err(|e| DbError::Stopped(e.to_string()))?
    }

    /// Run `f` with a pooled connection on the adapter's runtime (the async readers of the
    /// trace and session stores).
    ///
    /// # Errors
    /// `Unavailable` without a connection; `f`'s own error; `Stopped` as [`run`](Self::run).
    pub async fn with_connection<T, F>(
        &self,
        f: impl FnOnce(Object) -> F + Send + 'static,
    ) -> Result<T, DbError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        self.run(async move {
            let c = db.get().await?;
            f(c).await.map_err(DbError::from)
        })
        .await
    }

    /// Drive `work` on the calling thread inside the adapter's runtime context, so it may
    /// borrow (the trace writer's batches are not copied). Only for plain threads: on a
    /// runtime's thread it refuses instead of panicking.
    ///
    /// # Errors
    /// `Stopped` on a runtime thread or when the runtime is gone.
    pub fn block_here<F: Future>(&self, work: F) -> Result<F::Output, DbError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(DbError::Stopped(
                "block_here called on a runtime thread (use block_on or run)".into(),
            ));
        }
        let Some(rt) = self.runtime.0.as_ref() else {
            return Err(DbError::Stopped("runtime already shut down".into()));
        };
        Ok(rt.handle().block_on(work))
    }

    /// How long a statement may run before the server cancels it.
    #[must_use]
    pub fn statement_timeout(&self) -> Duration {
        self.config.statement_timeout
    }
}

/// The pool's error in one line, without the driver's nested `Debug`.
fn pool_error_text(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Timeout(_) => "timed out waiting for a connection".to_owned(),
        // The driver's text ("error connecting to server") says nothing of why; its source
        // does ("Connection refused", a TLS or authentication failure).
        PoolError::Backend(b) => match std::error::Error::source(b) {
            Some(cause) => format!("{b}: {cause}"),
            None => b.to_string(),
        },
        other => other.to_string(),
    }
}

/// rustls client settings: roots from `sslrootcert` when given, else the system's.
fn client_tls(config: &PgConfig) -> Result<rustls::ClientConfig, DbError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &config.root_cert {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| DbError::Tls(format!("sslrootcert {}: {e}", path.display())))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| DbError::Tls(format!("sslrootcert {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| DbError::Tls(format!("sslrootcert {}: {e}", path.display())))?;
        }
    } else {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A malformed system certificate is skipped, as the OS's own TLS stacks do.
            let _ = roots.add(cert);
        }
    }
    if roots.is_empty() {
        return Err(DbError::Tls(
            "no trusted root certificates (set sslrootcert=<file> in --database-url, or \
             sslmode=disable on a trusted network)"
                .into(),
        ));
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}
