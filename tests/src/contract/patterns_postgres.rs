//! PostgreSQL's pattern tables as a [`PatternBackend`]: the stores built directly by
//! `metis_storage_postgres::patterns::{files, store}` on a fresh scratch database (the server
//! of `METIS_TEST_DATABASE_URL`; `scripts/pg-server.sh start` runs one). The pattern clauses
//! run on it before (and independently of) a whole PostgreSQL backend fixture.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use metis_domain::patterns::PatternCaps;
use metis_ports::patterns::PatternStore;
use metis_ports::storage::PatternFiles;
use metis_storage_postgres::{Db, DbError, ScratchDatabase};

use super::PatternBackend;

/// The pattern stores of one scratch database (dropped with the fixture).
pub struct PostgresPatterns {
    db: Db,
    dir: tempfile::TempDir,
    // Dropped last: the database goes once every pool on it is gone.
    _scratch: ScratchDatabase,
}

impl PostgresPatterns {
    /// A fresh database and temp directory.
    ///
    /// # Errors
    /// `METIS_TEST_DATABASE_URL` is unset (the message says how to start a server) or the
    /// server refuses.
    pub fn new() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let scratch = ScratchDatabase::from_env()?;
        Ok(Self {
            db: Db::new(scratch.config().clone())?,
            dir: tempfile::tempdir()?,
            _scratch: scratch,
        })
    }

    /// Another connection pool on the same database (as another replica has).
    ///
    /// # Errors
    /// As [`Db::new`].
    pub fn replica(&self) -> Result<Db, DbError> {
        Db::new(self.db.config().clone())
    }

    /// The blocking pattern stores (`StorageBackend::pattern_files` on PostgreSQL).
    #[must_use]
    pub fn files(&self) -> Box<dyn PatternFiles> {
        metis_storage_postgres::patterns::files(self.db.clone())
    }
}

/// A fixture, or a failed test saying why (no silent skip without a server).
pub async fn postgres_patterns() -> Box<PostgresPatterns> {
    match tokio::task::spawn_blocking(PostgresPatterns::new).await {
        Ok(Ok(p)) => Box::new(p),
        Ok(Err(e)) => {
            #[expect(clippy::panic, reason = "fixture setup failure fails the test")]
            {
                panic!("cannot create a PostgreSQL scratch database: {e}")
            }
        }
        Err(e) => {
            #[expect(clippy::panic, reason = "fixture setup failure fails the test")]
            {
                panic!("fixture task failed: {e}")
            }
        }
    }
}

#[async_trait]
impl PatternBackend for PostgresPatterns {
    fn patterns(&self, caps: PatternCaps) -> Arc<dyn PatternStore> {
        metis_storage_postgres::patterns::store(self.db.clone(), caps)
    }

    /// The schema is one for every workspace: the `patterns` component is stamped (as a
    /// newer binary would leave it, not compatible with this one).
    async fn stamp_pattern_version(&self, _workspace: &str, version: i64) {
        let pool = self.db.clone();
        let version = i32::try_from(version).unwrap_or(i32::MAX);
        let stamped = self.db.block_on(async move {
            pool.get()
                .await?
                .execute(
                    "UPDATE metis_schema SET version = $1, compatible_from = $1 \
                     WHERE component = 'patterns'",
                    &[&version],
                )
                .await?;
            Ok(())
        });
        if let Err(e) = stamped {
            #[expect(clippy::panic, reason = "fixture failure fails the test")]
            {
                panic!("cannot stamp the patterns schema: {e}")
            }
        }
    }

    fn workspace(&self, name: &str) -> String {
        let ws = self.dir.path().join("workspaces").join(name);
        let _ = std::fs::create_dir_all(&ws);
        ws.display().to_string()
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The projection is not in the workspace, so any name is stored but one PostgreSQL
    /// cannot key.
    fn unusable_workspace(&self) -> String {
        String::new()
    }
}
