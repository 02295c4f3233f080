//! [`PgTraceStore`]: the `EventSink` and `TraceQuery` ports over the `events` table, with the
//! shared batching writer thread, and [`PgSessionStore`], the `SessionStore` port riding the
//! same writer.
//!
//! Invariants:
//! - The sending side is the shared [`WriterHandle`] (`metis_ports::writer`): `emit` never
//!   blocks, every event is counted once, `flush` resolves after every earlier event was
//!   committed. Shutdown (explicit or on drop) drains the queue and joins the writer thread;
//!   it is idempotent, and with the database unreachable it gives up after the writer's
//!   grace instead of hanging.
//! - `is_writable` is false while the writer waits for an unreachable database.
//! - Reads run on the adapter's runtime with a pooled connection and see committed rows of
//!   every replica, not only this process's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use metis_domain::events::Event;
use metis_domain::sessions::{SessionId, SessionRecord, SessionTurn};
use metis_ports::sessions::{SessionError, SessionStats, SessionStore};
use metis_ports::storage::WriterLifecycle;
use metis_ports::trace::{
    EventRow, EventSink, KeySpend, SinkStats, TraceError, TraceQuery, UsageGroup, UsageRow,
};
use metis_ports::writer::{WriterConfig, WriterHandle};

use crate::errors::{session_err, trace_err};
use crate::pool::Db;
use crate::query;
use crate::writer::{PgBatches, WriterState};

/// Tuning of the trace writer. `Default` gives the production values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgWriterOptions {
    /// Bounded queue between `emit` and the writer thread (default 65 536, minimum 1): what
    /// an outage of the database can hold before events overflow.
    pub queue_capacity: usize,
    /// Most events committed in one transaction (default 2048).
    pub max_batch: usize,
    /// After the first event of a batch, let the batch grow this long (default 10 ms), never
    /// past the commit deadline.
    pub linger: Duration,
    /// A batch commits no later than this after its oldest event was queued (default 50 ms).
    pub commit_deadline: Duration,
}

impl Default for PgWriterOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            max_batch: 2048,
            linger: Duration::from_millis(10),
            commit_deadline: metis_ports::queue::DEFAULT_COMMIT_DEADLINE,
        }
    }
}

/// The trace store of a PostgreSQL database. Share it as `Arc`; call
/// [`shutdown`](WriterLifecycle::shutdown) at exit (dropping the last handle does the same,
/// blocking the dropping thread while it drains).
pub struct PgTraceStore {
    writer: Arc<WriterHandle>,
    state: Arc<WriterState>,
    db: Db,
    location: PathBuf,
}

impl std::fmt::Debug for PgTraceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTraceStore")
            .field("database", &self.location)
            .field("stats", &self.writer.stats())
            .finish_non_exhaustive()
    }
}

impl PgTraceStore {
    /// Start the writer thread over `db`, whose schema is already current (the backend's
    /// `open_main` migrates it first).
    ///
    /// # Errors
    /// `Unavailable` when the writer thread cannot be started.
    pub fn start(db: &Db, opts: PgWriterOptions) -> Result<Self, TraceError> {
        let state = Arc::new(WriterState::default());
        let location = PathBuf::from(db.config().redacted());
        let cfg = WriterConfig {
            max_batch: opts.max_batch,
            // The PostgreSQL side retries itself: outages until the database is back, other
            // failures `writer::ATTEMPTS` times.
            retry_attempts: 1,
            retry_backoff: Duration::from_millis(50),
            linger: opts.linger,
            commit_deadline: opts.commit_deadline,
        };
        let writer = WriterHandle::start(
            PgBatches::new(db.clone(), Arc::clone(&state)),
            &location,
            opts.queue_capacity,
            cfg,
            "metis-pg-writer",
        )?;
        Ok(Self {
            writer: Arc::new(writer),
            state,
            db: db.clone(),
            location,
        })
    }

    /// The session store sharing this store's writer.
    #[must_use]
    pub fn session_store(&self) -> PgSessionStore {
        PgSessionStore {
            writer: Arc::clone(&self.writer),
            db: self.db.clone(),
        }
    }

    /// Stop accepting events, drain the queue (an outage is waited out for the writer's
    /// grace at most) and join the writer thread.
    pub async fn shutdown(&self) -> SinkStats {
        self.state.closing.store(true, Ordering::Release);
        metis_storage_kit::shutdown(&self.writer).await
    }

    /// Blocking form of [`shutdown`](Self::shutdown).
    pub fn close(&self) -> SinkStats {
        self.state.closing.store(true, Ordering::Release);
        self.writer.shutdown_blocking()
    }

    async fn read<T: Send + 'static, F>(
        &self,
        f: impl FnOnce(deadpool_postgres::Object) -> F + Send + 'static,
    ) -> Result<T, TraceError>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        self.db.with_connection(f).await.map_err(trace_err)
    }
}

impl Drop for PgTraceStore {
    fn drop(&mut self) {
        // Session stores share the writer; it stops when the trace store goes.
        self.state.closing.store(true, Ordering::Release);
        self.writer.shutdown_blocking();
    }
}

#[async_trait]
impl EventSink for PgTraceStore {
    fn emit(&self, event: Event) {
        self.writer.emit(event);
    }

    async fn flush(&self) -> Result<(), TraceError> {
        metis_storage_kit::flush(&self.writer)
            .await
            .map_err(TraceError::Unavailable)
    }

    fn stats(&self) -> SinkStats {
        self.writer.stats()
    }

    fn is_writable(&self) -> bool {
        self.writer.is_writable() && self.state.reachable.load(Ordering::Acquire)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn wal_bytes(&self) -> u64 {
        // The server's WAL is the server's business (and shared by every replica).
        0
    }
}

#[async_trait]
impl TraceQuery for PgTraceStore {
    async fn spend_by_key(
        &self,
        day_start_us: i64,
        month_start_us: i64,
    ) -> Result<Vec<KeySpend>, TraceError> {
        self.read(
            move |c| async move { query::spend_by_key(&c, day_start_us, month_start_us).await },
        )
        .await
    }

    async fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, TraceError> {
        self.read(move |c| async move {
            let filter = filter.as_ref().map(|(g, v)| (*g, v.as_str()));
            query::usage(&c, since_us, until_us, group, filter).await
        })
        .await
    }

    async fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<EventRow>, TraceError> {
        let types = types.to_vec();
        self.read(move |c| async move { query::audit_events(&c, since_us, until_us, &types).await })
            .await
    }
}

#[async_trait]
impl WriterLifecycle for PgTraceStore {
    async fn shutdown(&self) -> SinkStats {
        PgTraceStore::shutdown(self).await
    }

    fn close(&self) -> SinkStats {
        PgTraceStore::close(self)
    }

    fn file(&self) -> &Path {
        // No file: the redacted URL names the store in logs and reports.
        &self.location
    }
}

/// The `SessionStore` port over the `sessions` table, sharing the trace store's writer.
#[derive(Clone)]
pub struct PgSessionStore {
    writer: Arc<WriterHandle>,
    db: Db,
}

impl std::fmt::Debug for PgSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSessionStore")
            .field("stats", &self.writer.session_stats())
            .finish_non_exhaustive()
    }
}

impl PgSessionStore {
    async fn read<T: Send + 'static, F>(
        &self,
        f: impl FnOnce(deadpool_postgres::Object) -> F + Send + 'static,
    ) -> Result<T, SessionError>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        self.db.with_connection(f).await.map_err(session_err)
    }
}

#[async_trait]
impl SessionStore for PgSessionStore {
    fn record_turn(&self, turn: SessionTurn) -> Result<(), SessionError> {
        self.writer.record_turn(turn)
    }

    async fn flush(&self) -> Result<(), SessionError> {
        metis_storage_kit::flush(&self.writer)
            .await
            .map_err(SessionError::Unavailable)
    }

    async fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, SessionError> {
        let id = id.as_str().to_owned();
        self.read(move |c| async move { query::session(&c, &id).await })
            .await
    }

    async fn list(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, SessionError> {
        let workspace = workspace.map(str::to_owned);
        self.read(move |c| async move { query::sessions(&c, workspace.as_deref(), limit).await })
            .await
    }

    async fn children(&self, parent: &SessionId) -> Result<Vec<SessionRecord>, SessionError> {
        let parent = parent.as_str().to_owned();
        self.read(move |c| async move { query::session_children(&c, &parent).await })
            .await
    }

    fn stats(&self) -> SessionStats {
        self.writer.session_stats()
    }
}
