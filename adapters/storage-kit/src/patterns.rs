//! [`PatternsOnPool`]: the async `PatternStore` port over a backend's blocking pattern
//! stores ([`PatternFiles`]), each call on tokio's blocking pool. Written once here, so a
//! backend implements only the blocking side.

use std::sync::Arc;

use async_trait::async_trait;
use metis_domain::patterns::PatternRecord;
use metis_ports::patterns::{OutcomeRow, PatternError, PatternStats, PatternStore, RecordOutcome};
use metis_ports::storage::{PatternFiles, no_progress};

/// A backend's pattern stores served to the async gateway.
pub struct PatternsOnPool<T>(Arc<T>);

impl<T> PatternsOnPool<T> {
    pub fn new(files: T) -> Self {
        Self(Arc::new(files))
    }
}

impl<T> std::fmt::Debug for PatternsOnPool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatternsOnPool").finish_non_exhaustive()
    }
}

impl<T: PatternFiles + 'static> PatternsOnPool<T> {
    /// Run `f` with the stores on the blocking pool.
    async fn run<R: Send + 'static>(
        &self,
        workspace: &str,
        f: impl FnOnce(&T, &str) -> Result<R, PatternError> + Send + 'static,
    ) -> Result<R, PatternError> {
        let files = Arc::clone(&self.0);
        let ws = workspace.to_owned();
        crate::blocking(move || f(&files, &ws))
            .await
            .unwrap_or_else(|e| {
                Err(PatternError::Unavailable {
                    location: "pattern store".into(),
                    message: format!("task failed: {e}"),
                })
            })
    }
}

#[async_trait]
impl<T: PatternFiles + 'static> PatternStore for PatternsOnPool<T> {
    async fn record(
        &self,
        workspace: &str,
        record: PatternRecord,
    ) -> Result<RecordOutcome, PatternError> {
        self.run(workspace, move |f, ws| f.record(ws, &record))
            .await
    }

    async fn record_many(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> Result<u64, PatternError> {
        self.run(workspace, move |f, ws| f.record_many(ws, &records))
            .await
    }

    async fn replace_all(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> Result<u64, PatternError> {
        self.run(workspace, move |f, ws| {
            f.replace_all(ws, &records, &no_progress)
        })
        .await
    }

    async fn stats(&self, workspace: &str) -> Result<Option<PatternStats>, PatternError> {
        self.run(workspace, |f, ws| f.stats(ws)).await
    }

    async fn outcomes(&self, workspace: &str) -> Result<Vec<OutcomeRow>, PatternError> {
        self.run(workspace, |f, ws| f.outcomes(ws)).await
    }
}
