//! The writer thread: the only owner of the write connection.
//!
//! Invariants:
//! - Messages are handled in queue order, so a flush marker is answered only after every event
//!   queued before it has been committed (or counted as failed).
//! - Events are written in group commits: the thread blocks for the first message, takes up to
//!   `max_batch` more without blocking, and inserts them in one `BEGIN IMMEDIATE` transaction
//!   with one cached prepared statement.
//! - Every event taken off the queue ends up in exactly one of `written` or `failed`.
//! - A batch that fails for a transient reason (busy, locked, disk full, I/O) is retried with
//!   bounded backoff, then counted as failed and logged; the thread keeps running, so the
//!   gateway keeps serving and later batches are attempted normally.
//! - A single event the database rejects on its own (constraint violation, too big) is
//!   counted as failed without failing the rest of its batch.
//! - Audit events are chained inside the batch's write transaction: the chain's tail (highest
//!   `audit_seq`) is read after `BEGIN IMMEDIATE` holds the database's write lock, so writers
//!   in other processes (the gateway, CLI admin commands) extend one chain without forking it.
//!   Only a successfully inserted row advances the tail; a retried batch re-reads it.
//! - Session turns (`SqliteSessionStore::record_turn`) travel on the same queue and are
//!   upserted in the same transaction as the events around them: one writer per file (no
//!   `SQLITE_BUSY` between our own writers), group commit for both, and a session's cost
//!   commits together with the turn's events. They are counted in their own counters.
//! - Commit deadline (`gw_ports::queue::CommitDeadline`): the linger is cut so a batch
//!   commits no later than the deadline after its oldest event was queued; every commit's
//!   lag is accounted in the counters (`/metrics`), misses included.
//! - After a failed batch the store is not writable (`/readyz` 503) until a commit succeeds.
//!   While idle in that state the writer probes with a one-row write transaction on the
//!   shared recovery back-off (50 ms doubling to 5 s), so readiness comes back once the disk
//!   has room again even when no traffic arrives (a load balancer sends none to a 503).

use gw_ports::queue::{Backoff, CommitDeadline, QueueReceiver, retry_delay};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use gw_domain::audit::{ChainedRow, GENESIS_HASH, chain_payload, is_audit_type, row_hash};
use gw_domain::events::Event;
use gw_domain::sessions::SessionTurn;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::schema::INSERT_SQL;

/// What travels on the writer queue.
pub(crate) enum Msg {
    Event(Event),
    /// Upsert a session for one completed turn.
    Session(SessionTurn),
    /// Answer once everything queued before this marker is committed.
    Flush(oneshot::Sender<Result<(), String>>),
    /// Drain the queue, commit, and exit.
    Shutdown,
}

pub(crate) use gw_ports::queue::{Counters, LogLimiter};

/// Writer settings (copied from `WriterOptions`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    pub max_batch: usize,
    pub retry_attempts: u32,
    pub retry_backoff: Duration,
    /// How long to let a batch grow after its first event (see `collect`).
    pub linger: Duration,
    /// Commit no later than this after the oldest event of a batch was queued.
    pub commit_deadline: Duration,
}

/// Marks the writer dead however the thread ends (including a panic unwinding through it).
struct AliveGuard(Arc<Counters>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.writer_alive.store(false, Ordering::Release);
    }
}

struct Writer {
    conn: Connection,
    counters: Arc<Counters>,
    cfg: WriterConfig,
    batch: Vec<Event>,
    sessions: Vec<SessionTurn>,
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// Events counted as failed since the last flush was answered.
    failed_since_flush: u64,
    /// When the oldest event or turn of the current batch was queued.
    oldest: Option<Instant>,
    deadline: CommitDeadline,
    /// Pauses between recovery probes while the store is not writable.
    recovery: Backoff,
}

/// The thread body. Returns when a shutdown marker was handled or every sender is gone.
pub(crate) fn run(
    conn: Connection,
    rx: QueueReceiver<Msg>,
    counters: Arc<Counters>,
    cfg: WriterConfig,
) {
    let _alive = AliveGuard(Arc::clone(&counters));
    counters.commit_lag.deadline_us.store(
        u64::try_from(cfg.commit_deadline.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    let mut w = Writer::new(conn, counters, cfg);
    loop {
        let next = if w.counters.last_batch_ok.load(Ordering::Acquire) {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(w.recovery.next_delay())
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
            w.drain_for_shutdown(&rx);
            w.answer_waiters();
            break;
        }
        w.answer_waiters();
    }
    let c = &w.counters;
    tracing::debug!(
        written = c.written.load(Ordering::Relaxed),
        failed = c.failed.load(Ordering::Relaxed),
        "trace writer stopped"
    );
}

impl Writer {
    fn new(conn: Connection, counters: Arc<Counters>, cfg: WriterConfig) -> Self {
        Writer {
            conn,
            counters,
            batch: Vec::with_capacity(cfg.max_batch),
            sessions: Vec::new(),
            deadline: CommitDeadline::new(cfg.commit_deadline),
            cfg,
            waiters: Vec::new(),
            failed_since_flush: 0,
            oldest: None,
            recovery: Backoff::store_recovery(),
        }
    }

    /// Remember when the first event or turn of the batch was queued (`rx` just handed it
    /// out).
    fn note_queued(&mut self, rx: &QueueReceiver<Msg>) {
        if self.oldest.is_none() {
            self.oldest = rx.queued_at();
        }
    }

    /// The store is not writable: try a one-row write transaction (the version marker
    /// rewritten with its own value). Success makes the store writable again.
    fn probe(&mut self) {
        let r = (|| -> rusqlite::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            tx.execute_batch(&format!("PRAGMA user_version = {v}"))?;
            tx.commit()
        })();
        match r {
            Ok(()) => {
                self.recovery.reset();
                self.counters.last_batch_ok.store(true, Ordering::Release);
                tracing::info!("trace store writable again (recovery probe committed)");
            }
            Err(e) => tracing::debug!(error = %e, "trace store recovery probe failed"),
        }
    }

    /// Take `first` and then up to `max_batch` events without blocking. Stops early at a
    /// control marker so a flush is answered promptly. Returns whether shutdown was requested.
    fn collect(&mut self, rx: &QueueReceiver<Msg>, first: Msg) -> bool {
        // Group commit: an event alone would cost a whole transaction (every touched page of
        // the table and its indexes rewritten into the WAL) and wake this thread once per
        // event. Sleeping briefly after the first event (not parked on the channel, so
        // senders do not wake us) lets concurrent requests join the same transaction. Control
        // markers skip the wait so flushes and shutdown stay prompt, and so does a backlog
        // that already fills a batch: waiting then would only cap the writer's throughput
        // at `max_batch` per `linger` and let the queue overflow.
        // The linger never pushes the commit past the deadline of the oldest event.
        let backlog = rx.len() + 1;
        if matches!(first, Msg::Event(_) | Msg::Session(_)) && backlog < self.cfg.max_batch {
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
            if self.batch.len() + self.sessions.len() >= self.cfg.max_batch {
                return false;
            }
            next = rx.try_recv().ok();
        }
        false
    }

    /// After a shutdown marker: commit whatever is still queued (events that raced with the
    /// close), in batches, until the queue is empty.
    fn drain_for_shutdown(&mut self, rx: &QueueReceiver<Msg>) {
        loop {
            loop {
                match rx.try_recv() {
                    Ok(Msg::Event(e)) => {
                        self.note_queued(rx);
                        self.batch.push(e);
                        if self.batch.len() + self.sessions.len() >= self.cfg.max_batch {
                            break;
                        }
                    }
                    Ok(Msg::Session(t)) => {
                        self.note_queued(rx);
                        self.sessions.push(t);
                        if self.batch.len() + self.sessions.len() >= self.cfg.max_batch {
                            break;
                        }
                    }
                    Ok(Msg::Flush(tx)) => self.waiters.push(tx),
                    Ok(Msg::Shutdown) => {}
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
                "{} trace events could not be written since the previous flush (see the error log)",
                self.failed_since_flush
            ))
        };
        self.failed_since_flush = 0;
        for tx in self.waiters.drain(..) {
            // The flusher may have given up waiting; nothing to do then.
            let _ = tx.send(result.clone());
        }
    }

    /// Insert the current batch, retrying transient failures, and account for every event.
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
            match insert_batch(&mut self.conn, &self.batch, &self.sessions) {
                Ok(rejected) => {
                    let done = Instant::now();
                    self.deadline.observe_commit(done - started);
                    if let Some(oldest) = self.oldest {
                        self.counters
                            .record_commit(oldest, done, self.deadline.deadline());
                    }
                    break Ok(rejected);
                }
                Err(e) if attempt < attempts => {
                    let delay = retry_delay(self.cfg.retry_backoff, attempt);
                    tracing::warn!(
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
            Ok((rejected, s)) => {
                c.written.fetch_add(n - rejected, Ordering::Relaxed);
                if rejected > 0 {
                    c.failed.fetch_add(rejected, Ordering::Relaxed);
                    self.failed_since_flush += rejected;
                }
                c.sessions_recorded.fetch_add(s.applied, Ordering::Relaxed);
                c.sessions_conflicts
                    .fetch_add(s.conflicts, Ordering::Relaxed);
                if s.rejected > 0 {
                    c.sessions_failed.fetch_add(s.rejected, Ordering::Relaxed);
                    self.failed_since_flush += s.rejected;
                }
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
                    "trace batch could not be written; events lost (the gateway keeps serving)"
                );
            }
        }
        c.queued.fetch_sub(n, Ordering::Relaxed);
        self.batch.clear();
        self.sessions.clear();
        self.oldest = None;
    }
}

/// An error that concerns one row only; the rest of the batch can still be committed.
fn is_row_error(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch)
    )
}

/// The last link of the audit chain, as seen inside the current write transaction.
struct ChainTail {
    seq: u64,
    hash: String,
}

/// The chained audit row with the highest sequence number (served by `idx_events_audit_seq`;
/// a tampered non-integer `audit_seq` is skipped so the chain continues from the real tail).
pub(crate) const CHAIN_TAIL_SQL: &str = "SELECT id, timestamp_us, session_id, type, payload_json, \
    json_extract(payload_json, '$.audit_seq') FROM events \
    WHERE json_extract(payload_json, '$.audit_seq') IS NOT NULL \
    AND json_type(payload_json, '$.audit_seq') = 'integer' \
    ORDER BY json_extract(payload_json, '$.audit_seq') DESC LIMIT 1";

fn read_chain_tail(conn: &Connection) -> rusqlite::Result<ChainTail> {
    let mut stmt = conn.prepare_cached(CHAIN_TAIL_SQL)?;
    let tail = stmt
        .query_row([], |r| {
            let id: String = r.get(0)?;
            let timestamp_us: i64 = r.get(1)?;
            let session_id: String = r.get(2)?;
            let event_type: String = r.get(3)?;
            let payload_json: String = r.get(4)?;
            let seq: i64 = r.get(5)?;
            let hash = row_hash(&ChainedRow {
                id: &id,
                timestamp_us,
                session_id: &session_id,
                event_type: &event_type,
                payload_json: &payload_json,
            });
            Ok(ChainTail {
                seq: u64::try_from(seq).unwrap_or(0),
                hash,
            })
        })
        .optional()?;
    Ok(tail.unwrap_or_else(|| ChainTail {
        seq: 0,
        hash: GENESIS_HASH.to_owned(),
    }))
}

/// The payload to store for `e`: audit events get the next chain link (reading the tail on
/// first use in this transaction). Returns the chained payload, or `None` to store the
/// payload as given.
fn chained_payload(
    conn: &Connection,
    tail: &mut Option<ChainTail>,
    e: &Event,
) -> rusqlite::Result<Option<String>> {
    if !is_audit_type(e.event_type) {
        return Ok(None);
    }
    let t = match tail {
        Some(t) => t,
        None => tail.insert(read_chain_tail(conn)?),
    };
    let chained = chain_payload(&e.payload_json, t.seq + 1, &t.hash);
    if chained.is_none() {
        // Payloads are built from typed structs, so this is a programming error. Storing the
        // event unchained keeps the record; `metis audit verify` reports unchained rows.
        tracing::error!(
            event_id = %e.id,
            event_type = e.event_type,
            "audit event payload is not a JSON object; stored without a chain link"
        );
    }
    Ok(chained)
}

/// What happened to the session turns of one batch.
#[derive(Debug, Default, Clone, Copy)]
struct SessionTally {
    applied: u64,
    conflicts: u64,
    rejected: u64,
}

/// Upsert the session turns of a batch inside its transaction.
fn upsert_sessions(tx: &Connection, turns: &[SessionTurn]) -> rusqlite::Result<SessionTally> {
    let mut tally = SessionTally::default();
    if turns.is_empty() {
        return Ok(tally);
    }
    let mut stmt = tx.prepare_cached(crate::sessions::UPSERT_SQL)?;
    for t in turns {
        match crate::sessions::execute_upsert(&mut stmt, t) {
            Ok(0) => {
                if tally.conflicts == 0 {
                    tracing::warn!(
                        session_id = %t.session_id,
                        workspace = %t.workspace_path,
                        "session turn ignored: the session belongs to another workspace"
                    );
                }
                tally.conflicts += 1;
            }
            Ok(_) => tally.applied += 1,
            Err(err) if is_row_error(&err) => {
                if tally.rejected == 0 {
                    tracing::error!(
                        error = %err,
                        session_id = %t.session_id,
                        "session turn rejected by the database (first of this batch)"
                    );
                }
                tally.rejected += 1;
            }
            Err(err) => return Err(err),
        }
    }
    Ok(tally)
}

/// One transaction for the whole batch. Returns how many events were rejected individually,
/// and the session tally.
fn insert_batch(
    conn: &mut Connection,
    batch: &[Event],
    sessions: &[SessionTurn],
) -> rusqlite::Result<(u64, SessionTally)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut rejected = 0_u64;
    let mut tail: Option<ChainTail> = None;
    {
        let mut stmt = tx.prepare_cached(INSERT_SQL)?;
        for e in batch {
            let chained = chained_payload(&tx, &mut tail, e)?;
            let payload = chained.as_deref().unwrap_or(&e.payload_json);
            let res = stmt.execute(params![
                e.id,
                e.timestamp_us,
                e.session_id,
                e.turn_id,
                e.parent_event_id,
                e.event_type,
                e.actor.as_str(),
                e.sensitivity.as_str(),
                payload,
            ]);
            match res {
                Ok(_) => {
                    if let (Some(link), Some(t)) = (&chained, tail.as_mut()) {
                        t.seq += 1;
                        t.hash = row_hash(&ChainedRow {
                            id: &e.id,
                            timestamp_us: e.timestamp_us,
                            session_id: &e.session_id,
                            event_type: e.event_type,
                            payload_json: link,
                        });
                    }
                }
                Err(err) if is_row_error(&err) => {
                    // One line per batch (the first offender), not one per row.
                    if rejected == 0 {
                        tracing::error!(
                            error = %err,
                            event_id = %e.id,
                            event_type = e.event_type,
                            "trace event rejected by the database (first of this batch)"
                        );
                    }
                    rejected += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
    let tally = upsert_sessions(&tx, sessions)?;
    tx.commit()?;
    Ok((rejected, tally))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_domain::events::{Actor, Sensitivity};
    use gw_ports::queue::bounded;

    fn writer(linger: Duration, max_batch: usize) -> Writer {
        let conn = Connection::open_in_memory().unwrap_or_else(|e| unreachable!("{e}"));
        Writer::new(
            conn,
            Arc::new(Counters::default()),
            WriterConfig {
                max_batch,
                retry_attempts: 1,
                retry_backoff: Duration::ZERO,
                linger,
                commit_deadline: Duration::from_secs(7200),
            },
        )
    }

    fn event(i: u32) -> Msg {
        Msg::Event(Event {
            id: format!("01TEST{i:020}"),
            timestamp_us: 1,
            session_id: "s".into(),
            turn_id: None,
            parent_event_id: None,
            event_type: "route.decided",
            actor: Actor::Agent,
            sensitivity: Sensitivity::Pseudonymous,
            payload_json: "{}".into(),
        })
    }

    /// A backlog that already fills a batch is taken at once: lingering then would cap the
    /// writer at `max_batch` events per linger and overflow the queue under load. (With a
    /// one-hour linger this test would hang, not pass, if `collect` slept.)
    #[test]
    fn a_full_backlog_is_collected_without_lingering() {
        let (tx, rx) = bounded(64);
        for i in 0..10 {
            assert!(tx.try_send(event(i)).is_ok());
        }
        let mut w = writer(Duration::from_secs(3600), 4);
        let Ok(first) = rx.recv() else {
            unreachable!("queued above")
        };
        assert!(!w.collect(&rx, first));
        assert_eq!(w.batch.len(), 4);
        assert_eq!(rx.len(), 6);
    }

    /// A control marker is answered without the linger, and collection stops at it.
    #[test]
    fn a_flush_marker_is_not_delayed() {
        let (tx, rx) = bounded(64);
        let (done, _answer) = oneshot::channel();
        assert!(tx.send(Msg::Flush(done)).is_ok());
        assert!(tx.try_send(event(1)).is_ok());
        let mut w = writer(Duration::from_secs(3600), 4);
        let Ok(first) = rx.recv() else {
            unreachable!("queued above")
        };
        assert!(!w.collect(&rx, first));
        assert_eq!((w.waiters.len(), w.batch.len()), (1, 0));
    }

    /// A small backlog lingers, then takes what arrived meanwhile.
    #[test]
    fn a_short_backlog_lingers_then_collects_what_arrived() {
        let (tx, rx) = bounded(64);
        assert!(tx.try_send(event(0)).is_ok());
        let late = std::thread::spawn({
            let tx = tx.clone();
            move || {
                for i in 1..3 {
                    assert!(tx.try_send(event(i)).is_ok());
                }
            }
        });
        let mut w = writer(Duration::from_secs(2), 16);
        let Ok(first) = rx.recv() else {
            unreachable!("queued above")
        };
        assert!(!w.collect(&rx, first));
        assert!(late.join().is_ok());
        assert_eq!(w.batch.len(), 3);
    }
}
