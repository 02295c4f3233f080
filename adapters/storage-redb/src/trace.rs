//! [`RedbTraceStore`]: the `EventSink` and `TraceQuery` ports over the main redb file, with
//! the batching writer thread of `writer.rs`.
//!
//! Invariants (as the SQLite store):
//! - `emit` never blocks and never touches the disk; a full queue is counted in `overflowed`
//!   and logged at most once per second; every emitted event is counted exactly once.
//! - `flush` resolves after every earlier event was committed; shutdown (explicit or on drop)
//!   drains the queue and joins the writer; it is idempotent.
//! - Queries run on tokio's blocking pool, each in one read transaction; they see committed
//!   events only. They take the current handle of the shared [`DbSlot`]: while the writer
//!   reopens the file after an I/O error they fail with `Unavailable` instead of using a
//!   handle redb has latched as broken.

use gw_ports::queue::{QueueSender, bounded};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use gw_domain::events::Event;
use gw_ports::trace::{
    EventRow, EventSink, KeySpend, SinkStats, TraceError, TraceQuery, UsageGroup, UsageRow,
};
use redb::Database;
use tokio::sync::oneshot;

use crate::db::{DbSlot, Sharing, StoreError, blocking, describe_open_error, open_shared};
use crate::query;
use crate::sessions::RedbSessionStore;
use crate::writer::{self, Counters, LogLimiter, Msg, RedbBatches, WriterConfig};

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
            commit_deadline: gw_ports::queue::DEFAULT_COMMIT_DEADLINE,
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
    path: PathBuf,
    pub(crate) db: Arc<DbSlot>,
    pub(crate) sender: QueueSender<Msg>,
    pub(crate) counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) overflow_log: LogLimiter,
    dropped_log: LogLimiter,
}

/// The redb trace store (events, with sessions on the same writer).
///
/// Share it as `Arc<RedbTraceStore>`; call [`shutdown`](Self::shutdown) at exit (dropping the
/// last handle does the same, blocking while it drains).
pub struct RedbTraceStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedbTraceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbTraceStore")
            .field("path", &self.inner.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
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
        let (sender, rx) = bounded(opts.queue_capacity);
        let counters = Arc::new(Counters::default());
        counters.writer_alive.store(true, Ordering::Release);
        counters.last_batch_ok.store(true, Ordering::Release);
        let cfg = WriterConfig {
            max_batch: opts.max_batch.max(1),
            linger: opts.commit_delay,
            retry_attempts: opts.retry_attempts.max(1),
            retry_backoff: opts.retry_backoff,
            commit_deadline: opts.commit_deadline,
        };
        let thread_db = Arc::clone(&db);
        let thread_counters = Arc::clone(&counters);
        let handle = std::thread::Builder::new()
            .name("metis-redb-writer".into())
            .spawn(move || writer::run(RedbBatches(thread_db), &rx, thread_counters, cfg))
            .map_err(|e| {
                TraceError::Unavailable(format!("cannot start the trace writer thread: {e}"))
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                db,
                sender,
                counters,
                thread: Mutex::new(Some(handle)),
                overflow_log: LogLimiter::new(Duration::from_secs(1)),
                dropped_log: LogLimiter::new(Duration::from_secs(1)),
            }),
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
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
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || inner.shutdown_blocking()).await {
            Ok(stats) => stats,
            Err(_) => self.inner.shutdown_blocking(),
        }
    }

    /// Blocking shutdown, consuming the store.
    pub fn close(self) -> SinkStats {
        self.inner.shutdown_blocking()
    }

    /// [`close`](Self::close) through a shared reference (the storage port's `close`).
    pub fn close_blocking(&self) -> SinkStats {
        self.inner.shutdown_blocking()
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
        match blocking(move || f(&db)).await {
            Ok(r) => r.map_err(backend),
            Err(e) => Err(TraceError::Unavailable(format!(
                "trace query task failed: {e}"
            ))),
        }
    }
}

impl Inner {
    fn stats(&self) -> SinkStats {
        self.counters.stats()
    }

    fn count_unqueueable(&self, why: &'static str) {
        let total = self.counters.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if self.dropped_log.allow() {
            tracing::error!(path = %self.path.display(), failed_total = total, "trace event not stored: {why}");
        }
    }

    fn shutdown_blocking(&self) -> SinkStats {
        self.counters.closed.store(true, Ordering::Release);
        let mut slot = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = slot.take() {
            let _ = self.sender.send(Msg::Shutdown);
            if handle.join().is_err() {
                tracing::error!(path = %self.path.display(), "redb trace writer thread panicked");
            }
            let stats = self.stats();
            if stats.overflowed > 0 || stats.failed > 0 {
                tracing::warn!(
                    path = %self.path.display(),
                    accepted = stats.accepted,
                    written = stats.written,
                    overflowed = stats.overflowed,
                    failed = stats.failed,
                    "trace store closed; some events were not stored"
                );
            } else {
                tracing::info!(path = %self.path.display(), written = stats.written, "trace store closed; queue drained");
            }
        }
        self.stats()
    }
}

impl Drop for RedbTraceStore {
    fn drop(&mut self) {
        // Session stores share `inner`; the writer stops when the trace store goes.
        self.inner.shutdown_blocking();
    }
}

#[async_trait]
impl EventSink for RedbTraceStore {
    fn emit(&self, event: Event) {
        let inner = &*self.inner;
        let c = &inner.counters;
        if c.closed.load(Ordering::Acquire) {
            inner.count_unqueueable("the trace store is closed");
            return;
        }
        c.queued.fetch_add(1, Ordering::Relaxed);
        match inner.sender.try_send(Msg::Event(event)) {
            Ok(()) => {
                c.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                c.queued.fetch_sub(1, Ordering::Relaxed);
                let total = c.overflowed.fetch_add(1, Ordering::Relaxed) + 1;
                if inner.overflow_log.allow() {
                    tracing::warn!(
                        path = %inner.path.display(),
                        overflowed_total = total,
                        capacity = inner.sender.capacity(),
                        "trace queue full; event counted as overflowed and not stored"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                c.queued.fetch_sub(1, Ordering::Relaxed);
                inner.count_unqueueable("the trace writer has stopped");
            }
        }
    }

    async fn flush(&self) -> Result<(), TraceError> {
        let inner = &self.inner;
        if inner.counters.closed.load(Ordering::Acquire) {
            return Err(TraceError::Unavailable("the trace store is closed".into()));
        }
        let (tx, rx) = oneshot::channel();
        let stopped = || TraceError::Unavailable("the trace writer has stopped".into());
        // A control marker: queued even when the queue is full of events (never blocks).
        if inner
            .sender
            .send(Msg::flush(move |r| {
                // The flusher may have given up waiting; nothing to do then.
                let _ = tx.send(r);
            }))
            .is_err()
        {
            return Err(stopped());
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(TraceError::Unavailable(message)),
            Err(_) => Err(stopped()),
        }
    }

    fn stats(&self) -> SinkStats {
        self.inner.stats()
    }

    fn is_writable(&self) -> bool {
        self.inner.counters.is_writable()
    }

    fn wal_bytes(&self) -> u64 {
        // redb has no separate log file: commits go to the main file.
        0
    }
}

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
