//! The writer thread: the only code that writes events and session turns to a redb file.
//!
//! Invariants:
//! - Messages are handled in queue order; a flush marker is answered only after everything
//!   queued before it was committed (or counted as failed).
//! - Group commit: the thread blocks for the first message, takes up to `max_batch` more
//!   (waiting at most `commit_delay` after the first for the queue to refill, because every
//!   redb commit is durable and costs fsyncs), and writes them in one redb write
//!   transaction: every event row with its index entries and chain link, and every session
//!   turn with its index entries. A flush marker ends the wait at once.
//! - Every event taken off the queue ends up in exactly one of `written` or `failed`. An event
//!   whose id is already stored is rejected on its own; a failed transaction is retried with
//!   bounded backoff and then counted as failed, and the thread keeps running.
//! - Audit events are chained inside the transaction, from the tail stored in `meta`; only a
//!   written row advances the tail.
//! - Commit deadline (`gw_ports::queue::CommitDeadline`): the commit delay is cut so a batch
//!   commits no later than the deadline after its oldest row was queued; every commit's lag
//!   is accounted in the counters (`/metrics`).
//! - Recovery from I/O errors (a full disk, a failing device): redb latches an I/O error in
//!   the handle and refuses everything after it until the database is closed and reopened.
//!   On such an error the writer closes the handle (`DbSlot::close`) and reopens the file on
//!   the shared recovery back-off (50 ms doubling to 5 s). Rows taken off the queue meanwhile
//!   are treated as the SQLite writer treats them on a full disk: each batch gets its
//!   attempts (reopening when the back-off allows), then is counted as failed; the queue and
//!   its overflow counting are unchanged. While idle and not writable the writer keeps
//!   reopening and probing on the back-off, so `/readyz` recovers without traffic.

use gw_ports::queue::{Backoff, CommitDeadline, QueueReceiver, retry_delay};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use gw_domain::audit::{ChainedRow, chain_payload, is_audit_type, row_hash};
use gw_domain::events::Event;
use gw_domain::sessions::SessionTurn;
use redb::Database;
use tokio::sync::oneshot;

use crate::db::{DbSlot, META, Result, StoreError, needs_reopen};
use crate::rows::{EventTables, RowRef};
use crate::sessions::SessionTables;

/// What travels on the writer queue.
pub(crate) enum Msg {
    Event(Event),
    Session(SessionTurn),
    Flush(oneshot::Sender<std::result::Result<(), String>>),
    Shutdown,
}

pub(crate) use gw_ports::queue::{Counters, LogLimiter};

#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    pub max_batch: usize,
    /// How long a batch may wait for more rows before its commit.
    pub commit_delay: Duration,
    pub retry_attempts: u32,
    pub retry_backoff: Duration,
    /// Commit no later than this after the oldest row of a batch was queued.
    pub commit_deadline: Duration,
}

struct AliveGuard(Arc<Counters>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.writer_alive.store(false, Ordering::Release);
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    rejected_events: u64,
    sessions_applied: u64,
    sessions_conflicts: u64,
}

struct Writer {
    db: Arc<DbSlot>,
    counters: Arc<Counters>,
    cfg: WriterConfig,
    batch: Vec<Event>,
    sessions: Vec<SessionTurn>,
    waiters: Vec<oneshot::Sender<std::result::Result<(), String>>>,
    failed_since_flush: u64,
    /// When the oldest event or turn of the current batch was queued.
    oldest: Option<Instant>,
    deadline: CommitDeadline,
    /// Pauses between reopen attempts and recovery probes.
    recovery: Backoff,
    /// No reopen before this instant (set from `recovery` after each failed attempt).
    next_reopen: Instant,
}

/// The thread body. Returns after a shutdown marker, or when every sender is gone.
pub(crate) fn run(
    db: Arc<DbSlot>,
    rx: QueueReceiver<Msg>,
    counters: Arc<Counters>,
    cfg: WriterConfig,
) {
    let _alive = AliveGuard(Arc::clone(&counters));
    counters.commit_lag.deadline_us.store(
        u64::try_from(cfg.commit_deadline.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    let mut w = Writer {
        db,
        counters,
        batch: Vec::with_capacity(cfg.max_batch),
        sessions: Vec::new(),
        deadline: CommitDeadline::new(cfg.commit_deadline),
        cfg,
        waiters: Vec::new(),
        failed_since_flush: 0,
        oldest: None,
        recovery: Backoff::store_recovery(),
        next_reopen: Instant::now(),
    };
    loop {
        let next = if w.counters.last_batch_ok.load(Ordering::Acquire) {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            let wait = w.next_reopen.saturating_duration_since(Instant::now());
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
        let stop = w.collect(&rx, first);
        w.commit_batch();
        if stop {
            w.drain(&rx);
            w.answer_waiters();
            break;
        }
        w.answer_waiters();
    }
}

impl Writer {
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

    /// The current handle, reopening the file when it was closed after an I/O error and the
    /// back-off allows another attempt.
    fn handle(&mut self) -> Result<Arc<Database>> {
        if let Ok(db) = self.db.get() {
            return Ok(db);
        }
        let now = Instant::now();
        if now < self.next_reopen {
            return Err(StoreError::Other(format!(
                "the redb database is closed after an I/O error; next reopen attempt in {} ms",
                self.next_reopen.duration_since(now).as_millis()
            )));
        }
        match self.db.reopen() {
            Ok(db) => {
                tracing::info!("redb database reopened after an I/O error");
                Ok(db)
            }
            Err(e) => {
                self.next_reopen = Instant::now() + self.recovery.next_delay();
                Err(e)
            }
        }
    }

    /// After an error that latched the handle: close it and schedule the reopen.
    fn close_after(&mut self, e: &StoreError) {
        if needs_reopen(e) && self.db.is_open() {
            self.db.close();
            self.next_reopen = Instant::now() + self.recovery.next_delay();
            tracing::warn!(
                error = %e,
                "redb I/O error: database closed; reopening with back-off (50 ms doubling to 5 s)"
            );
        }
    }

    /// Not writable and idle: reopen if needed, then commit a probe (`probe_write`). Success
    /// makes the store writable again.
    fn probe(&mut self) {
        let r = self.handle().and_then(|db| probe_write(&db));
        match r {
            Ok(()) => {
                self.recovery.reset();
                self.counters.last_batch_ok.store(true, Ordering::Release);
                tracing::info!("redb trace store writable again (recovery probe committed)");
            }
            Err(e) => {
                tracing::debug!(error = %e, "redb recovery probe failed");
                self.close_after(&e);
                if self.db.is_open() {
                    self.next_reopen = Instant::now() + self.recovery.next_delay();
                }
            }
        }
    }

    /// Take `first`, then more without blocking; when the queue runs dry, wait up to
    /// `commit_delay` (counted from `first`, and never past the commit deadline of the
    /// oldest row) for more, so one durable commit covers them. Stops at a control marker
    /// (a flush is answered without waiting). Returns whether shutdown was requested.
    fn collect(&mut self, rx: &QueueReceiver<Msg>, first: Msg) -> bool {
        let start = Instant::now();
        let mut deadline = start + self.cfg.commit_delay;
        if matches!(first, Msg::Event(_) | Msg::Session(_)) {
            self.note_queued(rx);
            if let Some(oldest) = self.oldest {
                deadline = start
                    + self
                        .deadline
                        .wait_budget(oldest, start, self.cfg.commit_delay);
            }
        }
        let mut next = Some(first);
        loop {
            while let Some(msg) = next {
                if matches!(msg, Msg::Event(_) | Msg::Session(_)) {
                    self.note_queued(rx);
                }
                match msg {
                    Msg::Event(e) => self.batch.push(e),
                    Msg::Session(t) => self.sessions.push(t),
                    Msg::Flush(tx) => {
                        self.waiters.push(tx);
                        return false;
                    }
                    Msg::Shutdown => return true,
                }
                if self.full() {
                    return false;
                }
                next = rx.try_recv().ok();
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(m) => next = Some(m),
                Err(_) => return false,
            }
        }
    }

    /// After shutdown: commit whatever raced with the close, until the queue is empty.
    fn drain(&mut self, rx: &QueueReceiver<Msg>) {
        loop {
            loop {
                match rx.try_recv() {
                    Ok(Msg::Event(e)) => {
                        self.note_queued(rx);
                        self.batch.push(e);
                    }
                    Ok(Msg::Session(t)) => {
                        self.note_queued(rx);
                        self.sessions.push(t);
                    }
                    Ok(Msg::Flush(tx)) => self.waiters.push(tx),
                    Ok(Msg::Shutdown) => {}
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
                if self.full() {
                    break;
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
        for tx in self.waiters.drain(..) {
            let _ = tx.send(result.clone());
        }
    }

    fn commit_batch(&mut self) {
        if self.batch.is_empty() && self.sessions.is_empty() {
            return;
        }
        let n = self.batch.len() as u64;
        let m = self.sessions.len() as u64;
        let attempts = self.cfg.retry_attempts.max(1);
        let mut attempt = 1;
        let outcome = loop {
            let started = Instant::now();
            let r = self
                .handle()
                .and_then(|db| write_batch(&db, &self.batch, &self.sessions));
            if let Err(e) = &r {
                self.close_after(e);
            }
            match r {
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
                        error = %e,
                        batch = n,
                        attempt,
                        attempts,
                        "redb trace batch write failed; retrying"
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
                c.last_batch_ok.store(true, Ordering::Release);
                self.recovery.reset();
            }
            Err(e) => {
                let total = c.failed.fetch_add(n, Ordering::Relaxed) + n;
                c.sessions_failed.fetch_add(m, Ordering::Relaxed);
                self.failed_since_flush += n + m;
                c.last_batch_ok.store(false, Ordering::Release);
                tracing::error!(
                    error = %e,
                    batch = n,
                    attempts,
                    failed_total = total,
                    "redb trace batch could not be written; events lost (the gateway keeps serving)"
                );
            }
        }
        c.queued.fetch_sub(n, Ordering::Relaxed);
        self.batch.clear();
        self.sessions.clear();
        self.oldest = None;
    }
}

/// The recovery probe's scratch entry in `meta` (written, then removed).
const PROBE_KEY: &str = "writer_probe";
/// What the probe writes: about a batch of events' worth of fresh pages. A probe that only
/// rewrote a few existing pages would succeed on a disk that is still full (redb writes
/// them in place) and turn `/readyz` green while every real batch still fails.
const PROBE_BYTES: usize = 256 * 1024;

/// Commit `PROBE_BYTES` into `meta`, then remove them (two durable commits; at most one probe
/// per back-off step).
fn probe_write(db: &Database) -> Result<()> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        meta.insert(PROBE_KEY, "x".repeat(PROBE_BYTES).as_str())?;
    }
    tx.commit()?;
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        meta.remove(PROBE_KEY)?;
    }
    tx.commit()?;
    Ok(())
}

/// One write transaction for the whole batch.
fn write_batch(db: &Database, batch: &[Event], turns: &[SessionTurn]) -> Result<Tally> {
    let tx = db.begin_write()?;
    let mut tally = Tally::default();
    {
        let mut t = EventTables::open(&tx)?;
        let mut tail: Option<(u64, String)> = None;
        for e in batch {
            if t.contains(&e.id)? {
                if tally.rejected_events == 0 {
                    tracing::error!(
                        event_id = %e.id,
                        event_type = e.event_type,
                        "trace event rejected: an event with this id is already stored (first of this batch)"
                    );
                }
                tally.rejected_events += 1;
                continue;
            }
            let mut chained = None;
            if is_audit_type(e.event_type) {
                let (seq, prev) = match &tail {
                    Some(t) => t.clone(),
                    None => t.chain_tail()?,
                };
                chained = chain_payload(&e.payload_json, seq + 1, &prev);
                if chained.is_none() {
                    tracing::error!(
                        event_id = %e.id,
                        event_type = e.event_type,
                        "audit event payload is not a JSON object; stored without a chain link"
                    );
                }
                if let Some(p) = &chained {
                    let hash = row_hash(&ChainedRow {
                        id: &e.id,
                        timestamp_us: e.timestamp_us,
                        session_id: &e.session_id,
                        event_type: e.event_type,
                        payload_json: p,
                    });
                    tail = Some((seq + 1, hash));
                }
            }
            // Inserting a chained row advances the stored tail (see `EventTables::insert`).
            t.insert(&RowRef {
                id: &e.id,
                timestamp_us: e.timestamp_us,
                session_id: &e.session_id,
                turn_id: e.turn_id.as_deref(),
                parent_event_id: e.parent_event_id.as_deref(),
                event_type: e.event_type,
                actor: e.actor.as_str(),
                sensitivity: e.sensitivity.as_str(),
                payload_json: chained.as_deref().unwrap_or(&e.payload_json),
            })?;
        }
    }
    if !turns.is_empty() {
        let mut s = SessionTables::open(&tx)?;
        for turn in turns {
            if s.apply(turn)? {
                tally.sessions_applied += 1;
            } else {
                if tally.sessions_conflicts == 0 {
                    tracing::warn!(
                        session_id = %turn.session_id,
                        workspace = %turn.workspace_path,
                        "session turn ignored: the session belongs to another workspace"
                    );
                }
                tally.sessions_conflicts += 1;
            }
        }
    }
    tx.commit()?;
    Ok(tally)
}
