//! The sending side of a storage writer, shared by both storage adapters: it starts the
//! writer thread ([`run`](super::run)) over a backend's [`BatchStore`], queues events and
//! session turns for it, sends flush markers, reports the counters and shuts the thread down.
//! A backend supplies only its `BatchStore`; the async waits (a flush's reply, a shutdown off
//! the async workers) are the runtime's business and live in `metis-storage-kit`.
//!
//! Invariants:
//! - `emit` and `record_turn` never block and never touch the disk: they `try_send` onto the
//!   bounded queue. A row that does not fit is counted (`overflowed` for events,
//!   `sessions_failed` for turns) and reported by a WARN line at most once per second (with
//!   the running count); nothing is dropped silently.
//! - Every emitted event is counted exactly once in `accepted`, `overflowed` or `failed`
//!   (`failed` also covers emits after close or after the writer died, logged at most once
//!   per second).
//! - A flush marker is a control message: queued even when the queue is full of events.
//! - Shutdown stops accepting, drains the queue, commits and joins the writer thread. It is
//!   idempotent and concurrent shutdowns serialise on the thread slot.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use metis_domain::events::Event;
use metis_domain::sessions::SessionTurn;

use super::{BatchStore, Msg, WriterConfig, run};
use crate::queue::{Counters, LogLimiter, QueueSender, bounded};
use crate::sessions::{SessionError, SessionStats};
use crate::trace::{SinkStats, TraceError};

/// Why a flush or a row was refused after close.
pub const CLOSED: &str = "the trace store is closed";
/// Why a flush or a row was refused when the writer thread is gone.
pub const STOPPED: &str = "the trace writer has stopped";

/// One store's writer thread and the queue in front of it. Share it (`Arc`) between the
/// trace store and the session stores that ride the same writer.
pub struct WriterHandle {
    /// The store's file, for log lines.
    path: PathBuf,
    /// The backend's name (`sqlite`, `redb`), for log lines.
    store: &'static str,
    sender: QueueSender<Msg>,
    counters: Arc<Counters>,
    /// `Some` until shutdown joined the thread; the lock serialises concurrent shutdowns.
    thread: Mutex<Option<JoinHandle<()>>>,
    overflow_log: LogLimiter,
    dropped_log: LogLimiter,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("store", &self.store)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl WriterHandle {
    /// Start the writer thread `thread_name` over `store` (the store of the file at `path`)
    /// behind a queue of `queue_capacity` messages. `max_batch` and `retry_attempts` are
    /// raised to at least 1.
    ///
    /// # Errors
    /// `Unavailable` when the thread cannot be started.
    pub fn start<S: BatchStore + Send + 'static>(
        store: S,
        path: &Path,
        queue_capacity: usize,
        cfg: WriterConfig,
        thread_name: &str,
    ) -> Result<Self, TraceError> {
        let name = store.name();
        let (sender, rx) = bounded(queue_capacity);
        let counters = Arc::new(Counters::default());
        counters.writer_alive.store(true, Ordering::Release);
        counters.last_batch_ok.store(true, Ordering::Release);
        let cfg = WriterConfig {
            max_batch: cfg.max_batch.max(1),
            retry_attempts: cfg.retry_attempts.max(1),
            ..cfg
        };
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || run(store, &rx, thread_counters, cfg))
            .map_err(|e| {
                TraceError::Unavailable(format!("cannot start the trace writer thread: {e}"))
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            store: name,
            sender,
            counters,
            thread: Mutex::new(Some(thread)),
            overflow_log: LogLimiter::new(Duration::from_secs(1)),
            dropped_log: LogLimiter::new(Duration::from_secs(1)),
        })
    }

    /// The store's file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queue `event` for the writer (the `EventSink::emit` contract: never blocks, every
    /// event counted once).
    pub fn emit(&self, event: Event) {
        let c = &self.counters;
        if c.closed.load(Ordering::Acquire) {
            self.count_unqueueable(CLOSED);
            return;
        }
        // Count as queued before sending so the writer's decrement can never run first.
        c.queued.fetch_add(1, Ordering::Relaxed);
        match self.sender.try_send(Msg::Event(event)) {
            Ok(()) => {
                c.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                c.queued.fetch_sub(1, Ordering::Relaxed);
                let total = c.overflowed.fetch_add(1, Ordering::Relaxed) + 1;
                if self.overflow_log.allow() {
                    tracing::warn!(
                        path = %self.path.display(),
                        overflowed_total = total,
                        capacity = self.sender.capacity(),
                        "trace queue full; event counted as overflowed and not stored"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                c.queued.fetch_sub(1, Ordering::Relaxed);
                self.count_unqueueable(STOPPED);
            }
        }
    }

    /// An event that can no longer be queued (closed store or dead writer).
    fn count_unqueueable(&self, why: &'static str) {
        let total = self.counters.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if self.dropped_log.allow() {
            tracing::error!(
                path = %self.path.display(),
                failed_total = total,
                "trace event not stored: {why}"
            );
        }
    }

    /// Queue one session turn for the writer (the `SessionStore::record_turn` contract).
    ///
    /// # Errors
    /// `Overflow` when the queue is full; `Unavailable` after close or when the writer
    /// stopped. Every refused turn is counted in `sessions_failed`.
    pub fn record_turn(&self, turn: SessionTurn) -> Result<(), SessionError> {
        let c = &self.counters;
        if c.closed.load(Ordering::Acquire) {
            c.sessions_failed.fetch_add(1, Ordering::Relaxed);
            return Err(SessionError::Unavailable(CLOSED.into()));
        }
        match self.sender.try_send(Msg::Session(turn)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                let total = c.sessions_failed.fetch_add(1, Ordering::Relaxed) + 1;
                if self.overflow_log.allow() {
                    tracing::warn!(
                        sessions_failed_total = total,
                        "trace queue full; session turn not recorded"
                    );
                }
                Err(SessionError::Overflow)
            }
            Err(TrySendError::Disconnected(_)) => {
                c.sessions_failed.fetch_add(1, Ordering::Relaxed);
                Err(SessionError::Unavailable(STOPPED.into()))
            }
        }
    }

    /// Queue a flush marker: `reply` is called once everything queued before it was
    /// committed, with `Err` naming how many rows failed since the previous flush. A reply
    /// dropped uncalled means the writer stopped.
    ///
    /// # Errors
    /// [`CLOSED`] after close, [`STOPPED`] when the writer thread is gone (`reply` is then
    /// dropped uncalled).
    pub fn send_flush(
        &self,
        reply: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(), String> {
        if self.counters.closed.load(Ordering::Acquire) {
            return Err(CLOSED.into());
        }
        // A control marker: queued even when the queue is full of events (never blocks).
        self.sender
            .send(Msg::flush(reply))
            .map_err(|_| STOPPED.to_owned())
    }

    /// The event counters (`EventSink::stats`).
    #[must_use]
    pub fn stats(&self) -> SinkStats {
        self.counters.stats()
    }

    /// The session counters (`SessionStore::stats`).
    #[must_use]
    pub fn session_stats(&self) -> SessionStats {
        let c = &self.counters;
        SessionStats {
            recorded: c.sessions_recorded.load(Ordering::Relaxed),
            workspace_conflicts: c.sessions_conflicts.load(Ordering::Relaxed),
            failed: c.sessions_failed.load(Ordering::Relaxed),
        }
    }

    /// Whether the store takes writes (`EventSink::is_writable`, `/readyz`).
    #[must_use]
    pub fn is_writable(&self) -> bool {
        self.counters.is_writable()
    }

    /// Stop accepting rows, drain the queue, commit and join the writer thread (blocking).
    /// Later rows are counted as failed. Idempotent. Returns the final counters.
    pub fn shutdown_blocking(&self) -> SinkStats {
        self.counters.closed.store(true, Ordering::Release);
        let mut slot = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = slot.take() {
            // A control marker, queued whatever the backlog. An error means the writer is
            // already gone, and joining is all that is left.
            let _ = self.sender.send(Msg::Shutdown);
            if handle.join().is_err() {
                tracing::error!(
                    store = self.store,
                    path = %self.path.display(),
                    "trace writer thread panicked"
                );
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
                tracing::info!(
                    path = %self.path.display(),
                    written = stats.written,
                    "trace store closed; queue drained"
                );
            }
        }
        self.stats()
    }
}
