//! Throwaway databases for tests and benchmarks: each [`ScratchDatabase`] is a fresh, empty
//! database on the server named by `METIS_TEST_DATABASE_URL`, dropped (with its sessions
//! closed) when the value is dropped. `scripts/pg-server.sh start` runs such a server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{DEFAULT_POOL_SIZE, DEFAULT_STATEMENT_TIMEOUT, PgConfig};
use crate::pool::{Db, DbError};

/// The variable naming the test server.
pub const TEST_DATABASE_URL: &str = "METIS_TEST_DATABASE_URL";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh database, dropped on drop.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin: Db,
    name: String,
    config: PgConfig,
    url: String,
}

impl ScratchDatabase {
    /// Create a database on the server of `METIS_TEST_DATABASE_URL`.
    ///
    /// # Errors
    /// The variable is unset (the message says how to start a server), or the server refuses.
    pub fn from_env() -> Result<Self, DbError> {
        let url = std::env::var(TEST_DATABASE_URL).map_err(|_| {
            DbError::Unavailable(
                TEST_DATABASE_URL.into(),
                "not set: run `eval \"$(scripts/pg-server.sh start)\"` (a throwaway PostgreSQL \
                 on 127.0.0.1), or point it at a server where you may CREATE DATABASE"
                    .into(),
            )
        })?;
        Self::create(&url)
    }

    /// Create a database on the server of `admin_url` (whose own database is only used to
    /// run `CREATE DATABASE`).
    ///
    /// # Errors
    /// A bad URL, or the server refuses.
    pub fn create(admin_url: &str) -> Result<Self, DbError> {
        let admin_config = PgConfig::new(admin_url, 1, Duration::from_secs(30))
            .map_err(|e| DbError::Unavailable("test server".into(), e.to_string()))?;
        let admin = Db::new(admin_config.clone())?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "metis_t_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let sql = format!("CREATE DATABASE {name}");
        let pool = admin.clone();
        admin.block_on(async move {
            pool.get().await?.batch_execute(&sql).await?;
            Ok(())
        })?;
        let url = crate::config::replace_database(admin_url, admin_config.database(), &name);
        let config = admin_config
            .with_database(&name)
            .with_limits(DEFAULT_POOL_SIZE, DEFAULT_STATEMENT_TIMEOUT);
        Ok(Self {
            admin,
            name,
            config,
            url,
        })
    }

    /// How to reach the new database.
    #[must_use]
    pub fn config(&self) -> &PgConfig {
        &self.config
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL, password included (for a `--database-url` argument; never log it).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let pool = self.admin.clone();
        let dropped = self.admin.block_on(async move {
            pool.get().await?.batch_execute(&sql).await?;
            Ok(())
        });
        if let Err(e) = dropped {
            tracing::warn!(database = %self.name, error = %e, "could not drop scratch database");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_database_is_fresh_configured_and_dropped() -> Result<(), DbError> {
        let scratch = ScratchDatabase::from_env()?;
        let name = scratch.name().to_owned();
        let db = Db::new(scratch.config().clone())?;
        let pool = db.clone();
        let (timeout, current) = db.block_on(async move {
            let c = pool.get().await?;
            let t: String = c.query_one("SHOW statement_timeout", &[]).await?.get(0);
            let d: String = c.query_one("SELECT current_database()", &[]).await?.get(0);
            Ok((t, d))
        })?;
        assert_eq!(timeout, "5s");
        assert_eq!(current, name);
        drop(db);
        let admin = scratch.admin.clone();
        drop(scratch);
        let probe = admin.clone();
        let left: i64 = admin.block_on(async move {
            let c = probe.get().await?;
            Ok(c.query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await?
            .get(0))
        })?;
        assert_eq!(left, 0, "the scratch database is dropped");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_calls_work_inside_a_runtime_and_an_unreachable_server_is_an_error() {
        let Ok(config) = PgConfig::new(
            "postgres://metis@127.0.0.1:9/none?sslmode=disable&connect_timeout=2",
            1,
            Duration::from_secs(2),
        ) else {
            unreachable!("a valid URL")
        };
        let Ok(db) = Db::new(config) else {
            unreachable!("a pool builds without connecting")
        };
        let pool = db.clone();
        let err = db.block_on(async move { pool.get().await.map(|_| ()) });
        let text = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("unavailable"), "{text}");
        assert!(text.contains("127.0.0.1:9"), "{text}");
        assert!(text.contains("refused"), "the cause is named: {text}");
    }
}
