//! The trace event sink: where every gateway event goes.

use async_trait::async_trait;
use metis_domain::events::Event;

/// Upper bounds (milliseconds) of the commit-lag histogram buckets; a last `+Inf` bucket is
/// implied.
pub const COMMIT_LAG_BUCKETS_MS: [u64; 11] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000];

/// How long events waited between being queued and being committed, measured by the writer
/// per committed batch on its oldest event. This is the window of acknowledged events a
/// SIGKILL (or power loss) can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitLagStats {
    /// The configured commit deadline (microseconds; 0 = none reported).
    pub deadline_us: u64,
    /// Batches per bucket of [`COMMIT_LAG_BUCKETS_MS`] (not cumulative); the last entry
    /// counts the batches above the largest bound.
    pub buckets: [u64; COMMIT_LAG_BUCKETS_MS.len() + 1],
    /// Committed batches observed.
    pub count: u64,
    /// Sum of the observed lags (microseconds).
    pub sum_us: u64,
    /// The largest lag observed since the store was opened (microseconds).
    pub max_us: u64,
    /// Batches committed later than the deadline.
    pub deadline_misses: u64,
}

/// Counters of a sink, for `/metrics` and the shutdown report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkStats {
    /// Events accepted into the queue.
    pub accepted: u64,
    /// Events durably written.
    pub written: u64,
    /// Events refused because the queue was full (counted and logged, never silent).
    pub overflowed: u64,
    /// Events the writer failed to store (disk full, I/O error), after retrying.
    pub failed: u64,
    /// Current queue depth.
    pub queued: u64,
    /// Queue-to-commit lag of committed batches against the commit deadline.
    pub commit_lag: CommitLagStats,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The store file is newer than this binary.
    #[error(
        "trace store schema version {found} is newer than this binary supports ({supported}); upgrade metis"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("trace store unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// A non-blocking, batching event sink.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Queue an event. MUST NOT block on disk. When the queue is full the event MUST be
    /// counted in `overflowed` and reported in the log, and the caller continues.
    fn emit(&self, event: Event);

    /// Wait until every event emitted before this call is durably written.
    ///
    /// # Errors
    /// `Unavailable` when the writer has stopped.
    async fn flush(&self) -> Result<(), TraceError>;

    /// Current counters.
    fn stats(&self) -> SinkStats;

    /// Whether the store accepts writes (for `/readyz`).
    fn is_writable(&self) -> bool;

    /// Whether every replica of the fleet writes to this same store (a database server). Its
    /// outage is then the fleet's, not this process's: taking this replica out of rotation
    /// would move its traffic nowhere better, so `/readyz` reports it without failing.
    fn is_shared(&self) -> bool {
        false
    }

    /// Bytes of not-yet-checkpointed log (SQLite `-wal`), for `/metrics`; 0 for engines
    /// without one.
    fn wal_bytes(&self) -> u64;

    /// Size of the store's main file in bytes, for `/metrics`. The default (0, "unknown")
    /// is for sinks without a file of their own (fakes, wrappers that do not know it).
    fn db_bytes(&self) -> u64 {
        0
    }
}

/// One stored event row as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: String,
    pub timestamp_us: i64,
    pub session_id: String,
    pub turn_id: Option<String>,
    pub parent_event_id: Option<String>,
    pub event_type: String,
    pub actor: String,
    pub sensitivity: String,
    pub payload_json: String,
}

/// Spend, usage groups and usage rows (defined with the roll-up rules that produce them).
pub use metis_domain::usage::{KeySpend, UsageGroup, UsageRow};

/// Read-side queries over the trace store.
#[async_trait]
pub trait TraceQuery: Send + Sync {
    /// Per-key spend in the day and month windows starting at the given instants (both
    /// half-open up to now), one row per user and team tag the calls recorded, ordered by key,
    /// user, team (absent first). MUST be served by an index, not a table scan.
    ///
    /// # Errors
    /// Store unavailable.
    async fn spend_by_key(
        &self,
        day_start_us: i64,
        month_start_us: i64,
    ) -> Result<Vec<KeySpend>, TraceError>;

    /// Cost and tokens of `llm.call_completed`/`llm.call_failed` in `[since, until)`, grouped,
    /// optionally filtered to one key/user/team/model value; sorted by cost descending.
    ///
    /// # Errors
    /// Store unavailable.
    async fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, TraceError>;

    /// Audit events in `[since, until)`, optionally of the given types only, ordered by id.
    ///
    /// # Errors
    /// Store unavailable.
    async fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<EventRow>, TraceError>;
}
