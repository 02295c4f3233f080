//! The storage writer thread both storage adapters run: the one loop that takes events and
//! session turns off the [`queue`](crate::queue), groups them into batches, commits each batch
//! through the backend's [`BatchStore`], answers flushes, keeps the counters, honours the
//! commit deadline and recovers from I/O errors. A backend supplies only "write this batch in
//! one transaction" (and a probe, and, if its handle latches I/O errors, close and reopen).
//!
//! Invariants:
//! - Messages are handled in queue order, so a flush marker is answered only after everything
//!   queued before it was committed (or counted as failed).
//! - Group commit: the thread blocks for the first message, lingers (sleeps, not parked on the
//!   queue, so senders do not wake it per event) for `linger` cut to what the commit deadline
//!   leaves, then takes up to `max_batch` rows without blocking and writes them in one
//!   transaction. No linger for a control marker (flush, shutdown stay prompt) nor for a
//!   backlog that already fills a batch (lingering then would cap the writer at `max_batch`
//!   rows per linger and overflow the queue).
//! - Every event taken off the queue ends up in exactly one of `written` or `failed`; every
//!   turn in `sessions_recorded`, `sessions_conflicts` or `sessions_failed`.
//! - A failed transaction is retried `retry_attempts` times in all (pauses from
//!   `retry_backoff`, doubling), then its rows are counted as failed and logged; the thread
//!   keeps running, so the gateway keeps serving.
//! - Commit deadline ([`CommitDeadline`]): every commit's queue-to-commit lag is accounted in
//!   the counters (`/metrics`), misses included.
//! - After a failed batch the store is not writable (`/readyz` 503) until a commit succeeds.
//!   While idle in that state the writer probes ([`BatchStore::probe`]) on the shared recovery
//!   back-off (50 ms doubling to 5 s), so readiness comes back once the disk has room again
//!   even when no traffic arrives (a load balancer sends none to a 503).
//! - A backend whose handle refuses everything after an I/O error
//!   ([`BatchStore::needs_reopen`], redb) is closed at once and reopened on the same back-off;
//!   batches that arrive meanwhile get their attempts (reopening when the back-off allows) and
//!   are then counted as failed, as on a full disk.
//!
//! The sending side (queueing, flush markers, counters, shutdown) is [`WriterHandle`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use metis_domain::audit::{AuditChain, ChainTail, Link, Linking};
use metis_domain::events::Event;
use metis_domain::sessions::SessionTurn;

use crate::queue::{Backoff, CommitDeadline, Counters, QueueReceiver, retry_delay};

mod handle;
pub use handle::{CLOSED, STOPPED, WriterHandle};

/// Answers one flush: `Ok` when nothing failed since the previous flush was answered.
pub type FlushReply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// What travels on a writer queue.
pub enum Msg {
    Event(Event),
    /// Upsert a session for one completed turn.
    Session(SessionTurn),
    /// Answer once everything queued before this marker is committed.
    Flush(FlushReply),
    /// Drain the queue, commit, and exit.
    Shutdown,
}

impl Msg {
    /// A flush marker answered through `reply` (a dropped reply means the writer stopped).
    pub fn flush(reply: impl FnOnce(Result<(), String>) + Send + 'static) -> Self {
        Msg::Flush(Box::new(reply))
    }
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Event(e) => f.debug_tuple("Event").field(&e.id).finish(),
            Msg::Session(t) => f.debug_tuple("Session").field(&t.session_id).finish(),
            Msg::Flush(_) => f.write_str("Flush"),
            Msg::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Rows (events and turns) per transaction at most.
    pub max_batch: usize,
    /// Attempts per batch, the first included (at least 1).
    pub retry_attempts: u32,
    /// Pause before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// How long to let a batch grow after its first row (SQLite's linger, redb's commit
    /// delay), never past the commit deadline.
    pub linger: Duration,
    /// Commit no later than this after the oldest row of a batch was queued.
    pub commit_deadline: Duration,
}

/// What one committed batch did, beyond the rows it wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events the store refused one by one (duplicate id, constraint); the rest committed.
    pub rejected_events: u64,
    pub sessions_applied: u64,
    /// Turns refused because the session belongs to another workspace.
    pub sessions_conflicts: u64,
    /// Turns the store refused one by one.
    pub sessions_rejected: u64,
}

/// A backend's side of the writer: one transaction per batch.
pub trait BatchStore {
    type Error: fmt::Display;

    /// Name in log lines (`store` field): `sqlite`, `redb`.
    fn name(&self) -> &'static str;

    /// Write `events` and `turns` in one transaction (commit included). Chain audit events
    /// with [`insert_events`] and apply turns with [`apply_turns`], so every backend links and
    /// counts the same way.
    ///
    /// # Errors
    /// Whatever failed the transaction as a whole; nothing of the batch is committed then.
    fn write_batch(
        &mut self,
        events: &[Event],
        turns: &[SessionTurn],
    ) -> Result<BatchOutcome, Self::Error>;

    /// Commit a small write transaction that proves the store accepts commits again (it must
    /// need fresh space: a probe that fits on a full disk would report a false recovery).
    ///
    /// # Errors
    /// The write's error.
    fn probe(&mut self) -> Result<(), Self::Error>;

    /// Whether `e` left the handle unusable until it is reopened (redb latches I/O errors).
    fn needs_reopen(&self, _e: &Self::Error) -> bool {
        false
    }

    /// Drop the handle (after an error [`needs_reopen`](Self::needs_reopen) accepted).
    fn close(&mut self) {}

    /// Open the store again after [`close`](Self::close).
    ///
    /// # Errors
    /// The open's error (the disk still full, the old handle still in use, …).
    fn reopen(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// What a backend did with one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Stored,
    /// Refused on its own (the reason for the log); the transaction goes on.
    Rejected(String),
}

/// The event rows of one open write transaction, as a backend exposes them to
/// [`insert_events`].
pub trait EventRows {
    type Error;

    /// The audit chain's tail as stored (called once per transaction, at its first audit
    /// event).
    ///
    /// # Errors
    /// The read's error (fails the transaction).
    fn chain_tail(&mut self) -> Result<ChainTail, Self::Error>;

    /// Insert `event` with `payload_json` (its own, or its chained version; `link` is the
    /// chain link it carries, for a backend that stores the tail).
    ///
    /// # Errors
    /// An error that fails the whole transaction.
    fn insert(
        &mut self,
        event: &Event,
        payload_json: &str,
        link: Option<&Link>,
    ) -> Result<RowOutcome, Self::Error>;
}

/// Insert `events` in order, linking audit events onto the chain ([`AuditChain`]); returns
/// how many rows were refused one by one.
///
/// # Errors
/// The first error that fails the transaction.
pub fn insert_events<R: EventRows>(rows: &mut R, events: &[Event]) -> Result<u64, R::Error> {
    let mut chain = AuditChain::new();
    let mut rejected = 0_u64;
    for e in events {
        let link = match chain.link(e, || rows.chain_tail())? {
            Linking::NotAudit => None,
            Linking::Unlinkable => {
                // Payloads are built from typed structs, so this is a programming error.
                // Storing the event unchained keeps the record; `metis audit verify` reports
                // unchained rows.
                tracing::error!(
                    event_id = %e.id,
                    event_type = e.event_type,
                    "audit event payload is not a JSON object; stored without a chain link"
                );
                None
            }
            Linking::Linked(l) => Some(l),
        };
        let payload = link
            .as_ref()
            .map_or(e.payload_json.as_str(), |l| &l.payload_json);
        match rows.insert(e, payload, link.as_ref())? {
            RowOutcome::Stored => {
                if let Some(l) = &link {
                    chain.stored(l);
                }
            }
            RowOutcome::Rejected(reason) => {
                // One line per batch (the first offender), not one per row.
                if rejected == 0 {
                    tracing::error!(
                        error = %reason,
                        event_id = %e.id,
                        event_type = e.event_type,
                        "trace event rejected by the store (first of this batch)"
                    );
                }
                rejected += 1;
            }
        }
    }
    Ok(rejected)
}

/// What a backend did with one session turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnOutcome {
    Applied,
    /// The session belongs to another workspace: the turn is ignored.
    Conflict,
    /// Refused on its own (the reason for the log); the transaction goes on.
    Rejected(String),
}

/// Apply `turns` in order with `apply`, counting into `out`.
///
/// # Errors
/// The first error that fails the transaction.
pub fn apply_turns<E>(
    turns: &[SessionTurn],
    out: &mut BatchOutcome,
    mut apply: impl FnMut(&SessionTurn) -> Result<TurnOutcome, E>,
) -> Result<(), E> {
    for t in turns {
        match apply(t)? {
            TurnOutcome::Applied => out.sessions_applied += 1,
            TurnOutcome::Conflict => {
                if out.sessions_conflicts == 0 {
                    tracing::warn!(
                        session_id = %t.session_id,
                        workspace = %t.workspace_path,
                        "session turn ignored: the session belongs to another workspace"
                    );
                }
                out.sessions_conflicts += 1;
            }
            TurnOutcome::Rejected(reason) => {
                if out.sessions_rejected == 0 {
                    tracing::error!(
                        error = %reason,
                        session_id = %t.session_id,
                        "session turn rejected by the store (first of this batch)"
                    );
                }
                out.sessions_rejected += 1;
            }
        }
    }
    Ok(())
}

/// Marks the writer dead however the thread ends (including a panic unwinding through it).
struct AliveGuard(Arc<Counters>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.writer_alive.store(false, Ordering::Release);
    }
}

/// Why an attempt failed.
enum Failure<E> {
    Store(E),
    /// Closed after an I/O error; the back-off allows no reopen yet.
    Closed(Duration),
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Store(e) => e.fmt(f),
            Failure::Closed(wait) => write!(
                f,
                "the store is closed after an I/O error; next reopen attempt in {} ms",
                wait.as_millis()
            ),
        }
    }
}

struct Writer<S> {
    store: S,
    counters: Arc<Counters>,
    cfg: WriterConfig,
    batch: Vec<Event>,
    sessions: Vec<SessionTurn>,
    waiters: Vec<FlushReply>,
    /// Rows counted as failed since the last flush was answered.
    failed_since_flush: u64,
    /// When the oldest event or turn of the current batch was queued.
    oldest: Option<Instant>,
    deadline: CommitDeadline,
    /// Pauses between recovery attempts (probes, reopens) while the store is not writable.
    recovery: Backoff,
    /// No probe or reopen before this instant.
    next_recovery: Instant,
    /// The handle was closed after an I/O error and is not reopened yet.
    closed: bool,
}

/// The thread body. Returns when a shutdown marker was handled or every sender is gone.
pub fn run<S: BatchStore>(
    store: S,
    rx: &QueueReceiver<Msg>,
    counters: Arc<Counters>,
    cfg: WriterConfig,
) {
    let _alive = AliveGuard(Arc::clone(&counters));
    counters.commit_lag.deadline_us.store(
        u64::try_from(cfg.commit_deadline.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    let mut w = Writer::new(store, counters, cfg);
    loop {
        let next = if w.counters.last_batch_ok.load(Ordering::Acquire) {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            let wait = w.next_recovery.saturating_duration_since(Instant::now());
            rx.recv_timeout(wait.max(Duration::from_millis(1)))
        };
        let first = match next {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                w.probe();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let stop = w.collect(rx, first);
        w.commit_batch();
        if stop {
            w.drain_for_shutdown(rx);
            w.answer_waiters();
            break;
        }
        w.answer_waiters();
    }
    let c = &w.counters;
    tracing::debug!(
        store = w.store.name(),
        written = c.written.load(Ordering::Relaxed),
        failed = c.failed.load(Ordering::Relaxed),
        "trace writer stopped"
    );
}

fn is_row(msg: &Msg) -> bool {
    matches!(msg, Msg::Event(_) | Msg::Session(_))
}

impl<S: BatchStore> Writer<S> {
    fn new(store: S, counters: Arc<Counters>, cfg: WriterConfig) -> Self {
        Writer {
            store,
            counters,
            batch: Vec::with_capacity(cfg.max_batch),
            sessions: Vec::new(),
            deadline: CommitDeadline::new(cfg.commit_deadline),
            cfg,
            waiters: Vec::new(),
            failed_since_flush: 0,
            oldest: None,
            recovery: Backoff::store_recovery(),
            next_recovery: Instant::now(),
            closed: false,
        }
    }

    fn full(&self) -> bool {
        self.batch.len() + self.sessions.len() >= self.cfg.max_batch
    }

    /// Remember when the first event or turn of the batch was queued (`rx` just handed it
    /// out).
    fn note_queued(&mut self, rx: &QueueReceiver<Msg>) {
        if self.oldest.is_none() {
            self.oldest = rx.queued_at();
        }
    }

    /// Run `op` on the store, reopening it first when it was closed and the back-off allows;
    /// close it when `op` fails with an error that latched the handle.
    fn attempt<T>(
        &mut self,
        op: impl FnOnce(&mut S) -> Result<T, S::Error>,
    ) -> Result<T, Failure<S::Error>> {
        if self.closed {
            let now = Instant::now();
            if now < self.next_recovery {
                return Err(Failure::Closed(self.next_recovery - now));
            }
            if let Err(e) = self.store.reopen() {
                self.next_recovery = Instant::now() + self.recovery.next_delay();
                return Err(Failure::Store(e));
            }
            self.closed = false;
            tracing::info!(
                store = self.store.name(),
                "store reopened after an I/O error"
            );
        }
        let r = op(&mut self.store);
        if let Err(e) = &r
            && self.store.needs_reopen(e)
        {
            self.store.close();
            self.closed = true;
            self.next_recovery = Instant::now() + self.recovery.next_delay();
            tracing::warn!(
                store = self.store.name(),
                error = %e,
                "I/O error: store closed; reopening with back-off (50 ms doubling to 5 s)"
            );
        }
        r.map_err(Failure::Store)
    }

    /// The store is not writable and the queue is idle: reopen if needed and commit a probe.
    /// Success makes the store writable again.
    fn probe(&mut self) {
        match self.attempt(S::probe) {
            Ok(()) => {
                self.recovery.reset();
                self.counters.last_batch_ok.store(true, Ordering::Release);
                tracing::info!(
                    store = self.store.name(),
                    "trace store writable again (recovery probe committed)"
                );
            }
            Err(e) => {
                tracing::debug!(store = self.store.name(), error = %e, "trace store recovery probe failed");
                // A closed store has its next attempt scheduled already (by the close or the
                // failed reopen).
                if !self.closed {
                    self.next_recovery = Instant::now() + self.recovery.next_delay();
                }
            }
        }
    }

    /// Take `first` and then up to `max_batch` rows without blocking. Stops early at a
    /// control marker so a flush is answered promptly. Returns whether shutdown was requested.
    fn collect(&mut self, rx: &QueueReceiver<Msg>, first: Msg) -> bool {
        // Group commit: a row alone would cost a whole transaction (SQLite rewrites every
        // touched page into the WAL, redb fsyncs). Sleeping briefly after the first row (not
        // parked on the channel, so senders do not wake us) lets concurrent requests join the
        // same transaction. The linger never pushes the commit past the oldest row's deadline.
        let backlog = rx.len() + 1;
        if is_row(&first) && backlog < self.cfg.max_batch {
            self.note_queued(rx);
            let linger = self.oldest.map_or(Duration::ZERO, |oldest| {
                self.deadline
                    .wait_budget(oldest, Instant::now(), self.cfg.linger)
            });
            if !linger.is_zero() {
                std::thread::sleep(linger);
            }
        }
        let mut next = Some(first);
        while let Some(msg) = next {
            if self.take(rx, msg) {
                return true;
            }
            if !self.waiters.is_empty() || self.full() {
                return false;
            }
            next = rx.try_recv().ok();
        }
        false
    }

    /// Add `msg` to the batch (or the flush waiters). Returns whether it was a shutdown.
    fn take(&mut self, rx: &QueueReceiver<Msg>, msg: Msg) -> bool {
        if is_row(&msg) {
            self.note_queued(rx);
        }
        match msg {
            Msg::Event(e) => self.batch.push(e),
            Msg::Session(t) => self.sessions.push(t),
            Msg::Flush(reply) => self.waiters.push(reply),
            Msg::Shutdown => return true,
        }
        false
    }

    /// After a shutdown marker: commit whatever is still queued (rows that raced with the
    /// close), in batches, until the queue is empty.
    fn drain_for_shutdown(&mut self, rx: &QueueReceiver<Msg>) {
        loop {
            while !self.full() {
                match rx.try_recv() {
                    Ok(msg) => {
                        self.take(rx, msg);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if self.batch.is_empty() && self.sessions.is_empty() {
                return;
            }
            self.commit_batch();
        }
    }

    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let result = if self.failed_since_flush == 0 {
            Ok(())
        } else {
            Err(format!(
                "{} trace events or session turns could not be written since the previous flush (see the error log)",
                self.failed_since_flush
            ))
        };
        self.failed_since_flush = 0;
        for reply in self.waiters.drain(..) {
            // The flusher may have given up waiting; the reply then goes nowhere.
            reply(result.clone());
        }
    }

    /// Write the current batch, retrying failures, and account for every row.
    fn commit_batch(&mut self) {
        if self.batch.is_empty() && self.sessions.is_empty() {
            return;
        }
        let n = self.batch.len() as u64;
        let m = self.sessions.len() as u64;
        let attempts = self.cfg.retry_attempts.max(1);
        let mut attempt = 1;
        let (batch, sessions) = (
            std::mem::take(&mut self.batch),
            std::mem::take(&mut self.sessions),
        );
        let outcome = loop {
            let started = Instant::now();
            match self.attempt(|s| s.write_batch(&batch, &sessions)) {
                Ok(t) => {
                    let done = Instant::now();
                    self.deadline.observe_commit(done - started);
                    if let Some(oldest) = self.oldest {
                        self.counters
                            .record_commit(oldest, done, self.deadline.deadline());
                    }
                    break Ok(t);
                }
                Err(e) if attempt < attempts => {
                    let delay = retry_delay(self.cfg.retry_backoff, attempt);
                    tracing::warn!(
                        store = self.store.name(),
                        error = %e,
                        batch = n,
                        attempt,
                        attempts,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "trace batch write failed; retrying"
                    );
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                Err(e) => break Err(e),
            }
        };
        let c = &self.counters;
        match outcome {
            Ok(t) => {
                c.written
                    .fetch_add(n - t.rejected_events, Ordering::Relaxed);
                if t.rejected_events > 0 {
                    c.failed.fetch_add(t.rejected_events, Ordering::Relaxed);
                    self.failed_since_flush += t.rejected_events;
                }
                c.sessions_recorded
                    .fetch_add(t.sessions_applied, Ordering::Relaxed);
                c.sessions_conflicts
                    .fetch_add(t.sessions_conflicts, Ordering::Relaxed);
                if t.sessions_rejected > 0 {
                    c.sessions_failed
                        .fetch_add(t.sessions_rejected, Ordering::Relaxed);
                    self.failed_since_flush += t.sessions_rejected;
                }
                c.last_batch_ok.store(true, Ordering::Release);
                self.recovery.reset();
            }
            Err(e) => {
                let total = c.failed.fetch_add(n, Ordering::Relaxed) + n;
                c.sessions_failed.fetch_add(m, Ordering::Relaxed);
                self.failed_since_flush += n + m;
                c.last_batch_ok.store(false, Ordering::Release);
                // The first probe waits its back-off step (unless a close scheduled one).
                let now = Instant::now();
                if self.next_recovery <= now {
                    self.next_recovery = now + self.recovery.next_delay();
                }
                tracing::error!(
                    store = self.store.name(),
                    error = %e,
                    batch = n,
                    attempts,
                    failed_total = total,
                    "trace batch could not be written; events lost (the gateway keeps serving)"
                );
            }
        }
        c.queued.fetch_sub(n, Ordering::Relaxed);
        self.batch = batch;
        self.sessions = sessions;
        self.batch.clear();
        self.sessions.clear();
        self.oldest = None;
    }
}

#[cfg(test)]
mod tests;
