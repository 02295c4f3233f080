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

use gw_ports::queue::QueueReceiver;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

use gw_domain::audit::{ChainedRow, chain_payload, is_audit_type, row_hash};
use gw_domain::events::Event;
use gw_domain::sessions::SessionTurn;
use redb::Database;
use tokio::sync::oneshot;

use crate::db::Result;
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
    db: Arc<Database>,
    counters: Arc<Counters>,
    cfg: WriterConfig,
    batch: Vec<Event>,
    sessions: Vec<SessionTurn>,
    waiters: Vec<oneshot::Sender<std::result::Result<(), String>>>,
    failed_since_flush: u64,
}

/// The thread body. Returns after a shutdown marker, or when every sender is gone.
pub(crate) fn run(
    db: Arc<Database>,
    rx: QueueReceiver<Msg>,
    counters: Arc<Counters>,
    cfg: WriterConfig,
) {
    let _alive = AliveGuard(Arc::clone(&counters));
    let mut w = Writer {
        db,
        counters,
        batch: Vec::with_capacity(cfg.max_batch),
        sessions: Vec::new(),
        cfg,
        waiters: Vec::new(),
        failed_since_flush: 0,
    };
    while let Ok(first) = rx.recv() {
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

    /// Take `first`, then more without blocking; when the queue runs dry, wait up to
    /// `commit_delay` (counted from `first`) for more, so one durable commit covers them.
    /// Stops at a control marker (a flush is answered without waiting). Returns whether
    /// shutdown was requested.
    fn collect(&mut self, rx: &QueueReceiver<Msg>, first: Msg) -> bool {
        let deadline = Instant::now() + self.cfg.commit_delay;
        let mut next = Some(first);
        loop {
            while let Some(msg) = next {
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
                    Ok(Msg::Event(e)) => self.batch.push(e),
                    Ok(Msg::Session(t)) => self.sessions.push(t),
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
            match write_batch(&self.db, &self.batch, &self.sessions) {
                Ok(t) => break Ok(t),
                Err(e) if attempt < attempts => {
                    let delay = self
                        .cfg
                        .retry_backoff
                        .saturating_mul(1 << (attempt - 1).min(6));
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
    }
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
