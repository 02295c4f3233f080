//! The pattern store: the per-workspace projection of completed turns (fingerprints and the
//! outcome of each model on them).

use async_trait::async_trait;
use metis_domain::patterns::PatternRecord;

#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// The workspace's store was written by a newer binary; it is left untouched.
    #[error(
        "pattern store {location} has schema version {found}, newer than this binary supports ({supported}); upgrade metis"
    )]
    TooNew {
        location: String,
        found: i64,
        supported: i64,
    },
    /// The store cannot be opened or written (not a database, I/O error).
    #[error("pattern store {location}: {message}")]
    Unavailable { location: String, message: String },
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// What one `record` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    Recorded(RecordResult),
    /// The workspace is not a writable directory; nothing was stored (one WARN per workspace
    /// is logged by the adapter).
    Skipped {
        reason: String,
    },
}

/// The effect of one applied observation (defined with the rules that produce it).
pub use metis_domain::patterns::RecordResult;

/// Size and content summary of one workspace's store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatternStats {
    pub location: String,
    pub schema_version: i64,
    pub fingerprints: u64,
    pub outcomes: u64,
    pub samples: u64,
    pub embedding_cache_rows: u64,
    /// Per model: (model, samples, summed cost in micro-USD, summed latency in ms).
    pub models: Vec<ModelTotals>,
    pub oldest_update_us: Option<i64>,
    pub newest_update_us: Option<i64>,
}

/// Totals of one model across a workspace's outcomes.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTotals {
    pub model: String,
    pub samples: u64,
    pub sum_cost_usd_micros: i64,
    pub sum_latency_ms: f64,
}

/// One outcome row, for comparisons (a rebuild against the live store) and exports.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeRow {
    pub fingerprint_id: String,
    pub structural_sig: String,
    pub primary_model: String,
    pub sample_size: u64,
    pub success_score_mean: f64,
    pub success_score_count: u64,
    pub sum_cost_usd_micros: i64,
    pub sum_latency_ms: f64,
    pub pricing_version_last: String,
    pub last_updated_at_us: i64,
}

/// One fingerprint row without an embedding (`kind`, structural JSON and signature, creation
/// time), for copies of a pattern store between backends (`metis migrate-store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerprintRow {
    pub id: String,
    pub kind: String,
    pub structural_json: String,
    pub structural_sig: String,
    pub created_at_us: i64,
}

/// Per-workspace pattern stores.
///
/// Contract:
/// - `record` MUST apply one observation atomically: the fingerprint row is created if no row
///   has the same (`structural_sig`, embedding provider), and the (fingerprint, model) outcome
///   gets `sample_size + 1`, the cost (micro-USD) and latency added, and
///   `last_updated_at_us = max(previous, at)`. With a score, the mean is updated by
///   Welford's rule.
/// - Caps: above the hard cap the store MUST be trimmed of outcomes older than the age limit,
///   then of the least recently updated (then smallest) outcomes down to the soft cap, and
///   orphaned fingerprints removed, in the same transaction as the record; above the soft
///   cap only the age trim runs.
/// - A workspace that is not a writable directory MUST yield `Skipped`, never an error.
/// - Opening an older store MUST migrate it in one transaction and keep every row; a store
///   from a newer binary MUST be refused untouched (`TooNew`).
/// - `replace_all` MUST leave the store equal to applying `records` in order to an empty store
///   (the embedding cache is kept), in one transaction: readers see the old projection or
///   the new one.
/// - Blocking work runs off the async runtime.
#[async_trait]
pub trait PatternStore: Send + Sync {
    /// Apply one observation to the workspace's store (created on first use).
    ///
    /// # Errors
    /// `TooNew`, `Unavailable` or `Backend` when the store cannot be opened or written.
    async fn record(
        &self,
        workspace: &str,
        record: PatternRecord,
    ) -> Result<RecordOutcome, PatternError>;

    /// Apply several observations to one workspace's store, in order. Adapters SHOULD do it
    /// in one transaction (the gateway batches observations under load); the default applies
    /// them one by one. Returns how many were applied (0 when the workspace is skipped).
    ///
    /// # Errors
    /// As `record`; observations before the failing one may have been applied.
    async fn record_many(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> Result<u64, PatternError> {
        let mut applied = 0;
        for r in records {
            if let RecordOutcome::Recorded(_) = self.record(workspace, r).await? {
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// Replace the workspace's projection with `records` applied in order. Returns how many
    /// were applied.
    ///
    /// # Errors
    /// As `record`; on error the previous projection is kept.
    async fn replace_all(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> Result<u64, PatternError>;

    /// Summary of the workspace's store (`None` when it does not exist).
    ///
    /// # Errors
    /// `TooNew`, `Unavailable` or `Backend` when the store cannot be read.
    async fn stats(&self, workspace: &str) -> Result<Option<PatternStats>, PatternError>;

    /// Every outcome row, ordered by fingerprint id then model.
    ///
    /// # Errors
    /// As `stats`.
    async fn outcomes(&self, workspace: &str) -> Result<Vec<OutcomeRow>, PatternError>;
}
