//! The session store: client-named sessions and their delegation tree (`sessions` table).

use async_trait::async_trait;
use metis_domain::sessions::{SessionId, SessionRecord, SessionTurn};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The store's file was written by a newer binary.
    #[error(
        "session store schema version {found} is newer than this binary supports ({supported}); upgrade metis"
    )]
    TooNew { found: i64, supported: i64 },
    /// The turn could not be queued because the writer's queue is full (counted and logged).
    #[error("session store queue is full; the turn was not recorded")]
    Overflow,
    /// The store is closed, its writer stopped, or the database cannot be opened.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// Counters of the session writer, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Turns applied to the table.
    pub recorded: u64,
    /// Turns refused because their session belongs to another workspace.
    pub workspace_conflicts: u64,
    /// Turns lost to a full queue or a failed write.
    pub failed: u64,
}

/// Persistent sessions.
///
/// Contract:
/// - `record_turn` MUST NOT block on disk or wait for other writers: it queues the turn and
///   returns. Once applied, the session exists with `turn_count` incremented by one,
///   `cost_so_far_usd` increased by the turn's cost, `active_model` set to the turn's model
///   (when given), `updated_at` = max(previous, turn time), and `created_at` = the first
///   turn's time.
/// - The parent link (`parent_session_id`, `parent_tool_use_id`) MUST be kept from the first
///   turn that carries one and never overwritten; `is_worker` MUST be sticky.
/// - A turn whose session exists with a different `workspace_path` MUST NOT change that
///   session (sessions never move between workspaces); it is counted in
///   `workspace_conflicts`.
/// - Turns of one store MUST be applied in the order they were recorded.
/// - `flush` MUST resolve only after every turn recorded before it is applied (or counted as
///   failed).
/// - Reads see applied turns only.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Queue one completed turn.
    ///
    /// # Errors
    /// `Overflow` when the queue is full; `Unavailable` when the store is closed. Either way
    /// the request continues; the turn is counted in `failed`.
    fn record_turn(&self, turn: SessionTurn) -> Result<(), SessionError>;

    /// Wait until every turn recorded before this call is applied.
    ///
    /// # Errors
    /// `Unavailable` when the writer has stopped or some turns could not be written.
    async fn flush(&self) -> Result<(), SessionError>;

    /// One session, or `None`.
    ///
    /// # Errors
    /// `Unavailable`/`Backend` when the store cannot be read.
    async fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, SessionError>;

    /// Sessions, most recently updated first (then id), optionally of one workspace only, at
    /// most `limit` of them.
    ///
    /// # Errors
    /// `Unavailable`/`Backend` when the store cannot be read.
    async fn list(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, SessionError>;

    /// Direct children of `parent` (sessions naming it as `parent_session_id`), oldest first
    /// (then id). MUST be served by `idx_sessions_parent`.
    ///
    /// # Errors
    /// `Unavailable`/`Backend` when the store cannot be read.
    async fn children(&self, parent: &SessionId) -> Result<Vec<SessionRecord>, SessionError>;

    /// Current counters.
    fn stats(&self) -> SessionStats;
}
