//! The trace event sink: where every gateway event goes.

use async_trait::async_trait;
use gw_domain::events::Event;

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
}
