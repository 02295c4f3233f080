//! [`RedbTraceStore`]: the `EventSink` and `TraceQuery` ports over the main redb file, with
//! the batching writer thread of `writer.rs`.
//!
//! Invariants (as the SQLite store):
//! - The sending side is the shared [`WriterHandle`] (`metis_ports::writer`): `emit` never
//!   blocks, every event is counted once, `flush` resolves after every earlier event was
//!   committed. Shutdown (explicit or on drop) drains the queue and joins the writer; it is
//!   idempotent.
//! - Queries run on tokio's blocking pool, each in one read transaction; they see committed
//!   events only. They take the current handle of the shared [`DbSlot`]: while the writer
//!   reopens the file after an I/O error they fail with `Unavailable` instead of using a
//!   handle redb has latched as broken.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use metis_ports::trace::{
    EventRow, KeySpend, SinkStats, TraceError, TraceQuery, UsageGroup, UsageRow,
};
use metis_ports::writer::{WriterConfig, WriterHandle};
use redb::Database;

use crate::db::{DbSlot, Sharing, StoreError, describe_open_error, open_shared};
use crate::query;
use crate::sessions::RedbSessionStore;
use crate::writer::RedbBatches;

/// Tuning of the redb trace store. `Default` gives the production values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedbOptions {
    /// Bounded queue between `emit` and the writer thread (default 65 536, minimum 1).
    pub queue_capacity: usize,
    /// Most events and turns committed in one transaction (default 4096, minimum 1). Larger
    /// than SQLite's 1024: every redb commit is durable (fsync), so the writer amortises it
    /// over more rows (measured: 1024 -> ~48k events/s, 4096 -> ~80k events/s on 2 cores).
    pub max_batch: usize,
    /// How long the writer waits after the first queued row for more before it commits
    /// (default 2 ms; 0 = commit whatever is queued at once). A flush never waits for it.
    pub commit_delay: Duration,
    /// Attempts per batch before it is counted as failed (default 3, minimum 1).
    pub retry_attempts: u32,
    /// Pause before the first retry; doubled for each further one (default 50 ms).
    pub retry_backoff: Duration,
    /// Commit deadline (default 50 ms): the commit delay is cut so a batch commits no later
    /// than this after its oldest event was queued (see the SQLite store's option of the
    /// same name).
    pub commit_deadline: Duration,
    /// How the file is shared with other processes (default: multi-process writers).
    pub sharing: Sharing,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            max_batch: 4096,
            commit_delay: Duration::from_millis(2),
            retry_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            commit_deadline: metis_ports::queue::DEFAULT_COMMIT_DEADLINE,
            sharing: Sharing::default(),
        }
    }
}

/// Convert an open error to the port's error.
pub(crate) fn trace_error(path: &Path, e: StoreError) -> TraceError {
    match e {
        StoreError::TooNew { found, supported } => TraceError::TooNew { found, supported },
        other => TraceError::Unavailable(describe_open_error(path, &other)),
    }
}

fn backend(e: StoreError) -> TraceError {
    TraceError::Backend(Box::new(e))
}

pub(crate) struct Inner {
    pub(crate) writer: Arc<WriterHandle>,
    pub(crate) db: Arc<DbSlot>,
}

/// The redb trace store (events, with sessions on the same writer).
///
/// Share it as `Arc<RedbTraceStore>`; call [`shutdown`](Self::shutdown) at exit (dropping the
/// last handle does the same, blocking while it drains).
pub struct RedbTraceStore {
    inner: Arc<Inner>,
}

impl RedbTraceStore {
    /// Open (creating when missing, with parent directories) the redb file at `path`, check
    /// and stamp its version, and start the writer thread. Blocking.
    ///
    /// # Errors
    /// `TooNew` for a file from a newer binary (left untouched); `Unavailable` when the file
    /// cannot be created or opened, or the thread cannot start.
    pub fn open(path: &Path, opts: RedbOptions) -> Result<Self, TraceError> {
        let db = open_shared(path, opts.sharing, true).map_err(|e| trace_error(path, e))?;
        let db = Arc::new(DbSlot::new(path, opts.sharing, db));
        let cfg = WriterConfig {
            max_batch: opts.max_batch,
            linger: opts.commit_delay,
            retry_attempts: opts.retry_attempts,
            retry_backoff: opts.retry_backoff,
            commit_deadline: opts.commit_deadline,
        };
        let writer = WriterHandle::start(
            RedbBatches(Arc::clone(&db)),
            path,
            opts.queue_capacity,
            cfg,
            "metis-redb-writer",
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Arc::new(writer),
                db,
            }),
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.inner.writer.path()
    }

    /// The writer thread's handle (shared with this store's session stores).
    fn writer(&self) -> &WriterHandle {
        &self.inner.writer
    }

    /// The current database handle (for CLI reads and operations in this process).
    ///
    /// # Errors
    /// While the writer reopens the file after an I/O error.
    pub fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.inner.db.get()
    }

    /// The `SessionStore` over this file; its turns ride this store's writer.
    #[must_use]
    pub fn session_store(&self) -> RedbSessionStore {
        RedbSessionStore {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Stop accepting events, drain, commit and join the writer. Idempotent.
    pub async fn shutdown(&self) -> SinkStats {
        metis_storage_kit::shutdown(&self.inner.writer).await
    }

    /// Blocking shutdown, for code without a runtime.
    pub fn close(&self) -> SinkStats {
        self.inner.writer.shutdown_blocking()
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> crate::db::Result<T> + Send + 'static,
    ) -> Result<T, TraceError> {
        let db = self
            .inner
            .db
            .get()
            .map_err(|e| TraceError::Unavailable(e.to_string()))?;
        match metis_storage_kit::blocking(move || f(&db)).await {
            Ok(r) => r.map_err(backend),
            Err(e) => Err(TraceError::Unavailable(format!(
                "trace query task failed: {e}"
            ))),
        }
    }
}

metis_storage_kit::event_sink_on_writer!(
    RedbTraceStore,
    wal_bytes = |_| {
        // redb has no separate log file: commits go to the main file.
        0
    }
);

#[async_trait]
impl TraceQuery for RedbTraceStore {
    async fn spend_by_key(
        &self,
        day_start_us: i64,
        month_start_us: i64,
    ) -> Result<Vec<KeySpend>, TraceError> {
        self.read(move |db| query::spend_by_key(db, day_start_us, month_start_us))
            .await
    }

    async fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, TraceError> {
        self.read(move |db| {
            query::usage(
                db,
                since_us,
                until_us,
                group,
                filter.as_ref().map(|(g, v)| (*g, v.as_str())),
            )
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
        self.read(move |db| query::audit_events(db, since_us, until_us, &types))
            .await
    }
}
