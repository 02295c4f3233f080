//! [`SqliteTraceStore`]: the `EventSink` port over SQLite, with a batching writer thread.
//!
//! Invariants:
//! - The sending side is the shared [`WriterHandle`] (`metis_ports::writer`): `emit` never
//!   blocks, every event is counted once, `flush` resolves after every earlier event was
//!   committed. Shutdown (explicit or on drop) drains the queue and joins the writer thread;
//!   it is idempotent.
//! - The `TraceQuery` side reads through the store's own read-only connection on tokio's
//!   blocking pool; it sees committed events only (the writer may still hold queued ones).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use metis_ports::trace::{
    EventRow, KeySpend, SinkStats, TraceError, TraceQuery, UsageGroup, UsageRow,
};
use metis_ports::writer::{WriterConfig, WriterHandle};

use crate::lock::{LockError, WriterLock, lock_path};
use crate::reader::{StoredEvent, TraceReader};
use crate::schema::{Pragmas, open_error, open_for_writing};
use crate::sessions::{SessionReader, SqliteSessionStore};
use crate::writer::SqliteBatches;

pub use metis_ports::queue::DEFAULT_COMMIT_DEADLINE;

/// Tuning of the trace store. `Default` gives the production values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Bounded queue between `emit` and the writer thread (default 65 536, minimum 1).
    pub queue_capacity: usize,
    /// Most events committed in one transaction (default 1024, minimum 1).
    pub max_batch: usize,
    /// `PRAGMA wal_autocheckpoint`, in pages (default 8192, about 32 MB).
    pub wal_autocheckpoint_pages: u32,
    /// `PRAGMA busy_timeout` (default 5 s).
    pub busy_timeout: Duration,
    /// Attempts per batch before it is counted as failed (default 3, minimum 1).
    pub retry_attempts: u32,
    /// Pause before the first retry; doubled for each further one (default 50 ms).
    pub retry_backoff: Duration,
    /// After the first event of a batch, let the batch grow this long before committing
    /// (default 10 ms): fewer, larger transactions and fewer writer wake-ups, at the cost of
    /// events becoming durable up to this much later. Skipped when the backlog already
    /// fills a batch. Zero disables it. Never longer than `commit_deadline` allows.
    pub linger: Duration,
    /// Commit deadline (default 50 ms): a batch commits no later than this after its oldest
    /// event was queued, bounding the acknowledged events a SIGKILL can lose. Measured and
    /// reported in `SinkStats::commit_lag` (misses are counted, e.g. on a starved CPU).
    pub commit_deadline: Duration,
    /// SQLite page cache of the writer's connection, in KiB (default 8,192; SQLite's own
    /// default is 2,000). On a large file each batch touches pages of every index; with
    /// 2 MB they are evicted between batches and read back (and dirty ones spilled to the WAL
    /// mid-transaction). Measured at 10 million events: 13.3 → 10.3 µs CPU per event; 16 MiB
    /// or more gained nothing further. Memory is taken only as the file grows.
    pub page_cache_kib: u32,
    /// Hold the shared writer lock on `<db>.lock` for the store's lifetime (default false).
    /// The gateway sets it so `metis restore` refuses to replace the file under it; CLI
    /// commands leave it off.
    pub hold_writer_lock: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            max_batch: 1024,
            wal_autocheckpoint_pages: 8192,
            busy_timeout: Duration::from_secs(5),
            retry_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            linger: Duration::from_millis(10),
            commit_deadline: DEFAULT_COMMIT_DEADLINE,
            page_cache_kib: 8192,
            hold_writer_lock: false,
        }
    }
}

impl WriterOptions {
    /// The connection settings of a writing connection opened with these options.
    pub(crate) fn pragmas(&self) -> Pragmas {
        Pragmas {
            wal_autocheckpoint_pages: self.wal_autocheckpoint_pages,
            busy_timeout: self.busy_timeout,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) writer: Arc<WriterHandle>,
    /// The gateway's shared writer lock (see `lock.rs`), released when the store and its
    /// session stores are dropped.
    _lock: Option<WriterLock>,
}

/// The SQLite trace store (`events` table of `metis.db`).
///
/// Share it as `Arc<SqliteTraceStore>` / `Arc<dyn EventSink>`. Call [`shutdown`] at exit;
/// dropping the last handle does the same, blocking the dropping thread while it drains.
///
/// [`shutdown`]: SqliteTraceStore::shutdown
pub struct SqliteTraceStore {
    inner: Arc<Inner>,
    reader: Arc<TraceReader>,
}

/// Create the parent directories of the trace database at `path` (none for a bare name).
pub(crate) fn create_parent_dir(path: &Path) -> Result<(), TraceError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            TraceError::Unavailable(format!(
                "cannot create directory {} for the trace database: {e}",
                parent.display()
            ))
        })?;
    }
    Ok(())
}

impl SqliteTraceStore {
    /// Open (creating when missing, with parent directories) the trace database at `path`,
    /// apply the PRAGMAs and schema, stamp the version, and start the writer thread.
    ///
    /// Blocking: call it from `spawn_blocking` (or before the runtime starts).
    ///
    /// # Errors
    /// `TooNew` when the file was stamped by a newer binary (the file is left untouched);
    /// `Unavailable` when the file is not a SQLite database, cannot be created or opened, or
    /// the writer thread cannot be started.
    pub fn open(path: &Path, opts: WriterOptions) -> Result<Self, TraceError> {
        create_parent_dir(path)?;
        let lock = if opts.hold_writer_lock {
            Some(WriterLock::shared(path).map_err(|e| match e {
                LockError::Held { .. } => TraceError::Unavailable(format!(
                    "{} is being restored (`metis restore` holds {}); start the gateway after it completes",
                    path.display(),
                    lock_path(path).display()
                )),
                LockError::Io { .. } => TraceError::Unavailable(e.to_string()),
            })?)
        } else {
            None
        };
        let conn = open_for_writing(path, opts.pragmas())?;
        // Negative: in KiB rather than pages. Only this connection writes events.
        conn.pragma_update(None, "cache_size", -i64::from(opts.page_cache_kib.max(1)))
            .map_err(|e| open_error(path, e))?;
        let reader = TraceReader::open_with_timeout(path, opts.busy_timeout)?;

        let cfg = WriterConfig {
            max_batch: opts.max_batch,
            retry_attempts: opts.retry_attempts,
            retry_backoff: opts.retry_backoff,
            linger: opts.linger,
            commit_deadline: opts.commit_deadline,
        };
        let writer = WriterHandle::start(
            SqliteBatches(conn),
            path,
            opts.queue_capacity,
            cfg,
            "metis-trace-writer",
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Arc::new(writer),
                _lock: lock,
            }),
            reader: Arc::new(reader),
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

    /// Stop accepting events, drain the queue, commit and join the writer thread. Later
    /// `emit`s are counted as failed. Idempotent. Returns the final counters.
    pub async fn shutdown(&self) -> SinkStats {
        metis_storage_kit::shutdown(&self.inner.writer).await
    }

    /// Blocking form of [`shutdown`](Self::shutdown), for code without a runtime.
    pub fn close(&self) -> SinkStats {
        self.inner.writer.shutdown_blocking()
    }

    /// The `SessionStore` over this database's `sessions` table: it shares this store's
    /// writer thread (turns are upserted in the same group commits as events) and reads
    /// through its own read-only connection.
    ///
    /// # Errors
    /// `Unavailable` when the read connection cannot be opened.
    pub fn session_store(&self) -> Result<SqliteSessionStore, TraceError> {
        let reader =
            SessionReader::open(self.path()).map_err(|e| TraceError::Unavailable(e.to_string()))?;
        Ok(SqliteSessionStore {
            inner: Arc::clone(&self.inner),
            reader: Arc::new(reader),
        })
    }

    /// The read-only view this store keeps (sees only committed events; `flush` first).
    #[must_use]
    pub fn reader(&self) -> &TraceReader {
        &self.reader
    }

    /// Number of stored events of type `ty`. Blocking.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn count_by_type(&self, ty: &str) -> Result<u64, TraceError> {
        self.reader.count_by_type(ty)
    }

    /// Stored events of one turn, ordered by id. Blocking.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn events_for_turn(&self, turn_id: &str) -> Result<Vec<StoredEvent>, TraceError> {
        self.reader.events_for_turn(turn_id)
    }

    /// Stored events of one type, ordered by id. Blocking.
    ///
    /// # Errors
    /// `Backend` on an SQLite error.
    pub fn events_of_type(&self, ty: &str) -> Result<Vec<StoredEvent>, TraceError> {
        self.reader.events_of_type(ty)
    }
}

metis_storage_kit::event_sink_on_writer!(
    SqliteTraceStore,
    wal_bytes = |s| {
        // SQLite's write-ahead log beside the database (`<db>-wal`).
        let mut wal = s.path().as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map_or(0, |m| m.len())
    }
);

impl SqliteTraceStore {
    /// Run a read on the blocking pool with the store's reader.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&TraceReader) -> Result<T, TraceError> + Send + 'static,
    ) -> Result<T, TraceError> {
        let reader = Arc::clone(&self.reader);
        metis_storage_kit::blocking(move || f(&reader))
            .await
            .unwrap_or_else(|e| {
                Err(TraceError::Unavailable(format!(
                    "trace query task failed: {e}"
                )))
            })
    }
}

#[async_trait]
impl TraceQuery for SqliteTraceStore {
    async fn spend_by_key(
        &self,
        day_start_us: i64,
        month_start_us: i64,
    ) -> Result<Vec<KeySpend>, TraceError> {
        self.read(move |r| r.spend_by_key(day_start_us, month_start_us))
            .await
    }

    async fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, TraceError> {
        self.read(move |r| {
            r.usage(
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
        let rows = self
            .read(move |r| r.audit_events(since_us, until_us, &types))
            .await?;
        Ok(rows.into_iter().map(EventRow::from).collect())
    }
}
