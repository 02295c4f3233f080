//! The PostgreSQL side of the trace writer thread (`metis_ports::writer` runs the loop:
//! batching, linger, commit deadline, flushes, counters). The thread holds one pooled
//! connection and writes each batch in one transaction.
//!
//! Invariants:
//! - A batch is one transaction: every event in one multi-row `INSERT … SELECT FROM unnest(…)`
//!   (one round trip whatever the batch size, one prepared statement), the session turns as
//!   pipelined upserts, one commit.
//! - Audit events are chained inside that transaction (`metis_ports::writer::insert_events`).
//!   The chain's tail is read after taking the transaction-scoped advisory lock
//!   [`AUDIT_CHAIN_LOCK`]: writers in every replica and CLI process take turns at the tail
//!   from the read to their commit, so the chain never forks (the unique index on
//!   `audit_seq` would refuse a fork anyway). Batches without audit events never take it.
//! - An event whose id is already stored, or that the server refuses on its own (bad data, a
//!   constraint), is counted as failed without failing its batch: the `INSERT` skips stored
//!   ids (`ON CONFLICT DO NOTHING`); when it did not store every row, or the server refused
//!   it, the batch is redone row by row, each row under a savepoint.
//! - Nothing is committed twice: each transaction notes its id (`txid_current()`); when the
//!   connection drops during `COMMIT` (the outcome unknown), the retry first asks the server
//!   (`txid_status`) and counts the batch as written if it committed.
//! - An unreachable database is waited out, not counted as lost: the batch is retried with
//!   back-off (50 ms doubling to 5 s, one WARN per 10 s) while the queue in front of the
//!   writer fills (bounded; what does not fit is counted as overflowed), and `is_writable`
//!   is false meanwhile (`/readyz`). Once a shutdown has begun, an outage is waited out for
//!   [`CLOSE_GRACE`] at most; then the remaining events are counted as failed, so a stop
//!   never hangs on a dead database.
//! - Any other failure is retried [`ATTEMPTS`] times in all (50 ms, then 100 ms), then its
//!   rows are counted as failed and the writer carries on.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Transaction};
use futures_util::future::join_all;
use metis_domain::audit::{ChainTail, ChainedRow, Link, is_audit_type};
use metis_domain::events::Event;
use metis_domain::sessions::{SessionId, SessionTurn};
use metis_ports::queue::{Backoff, LogLimiter, retry_delay};
use metis_ports::writer::{
    BatchOutcome, BatchStore, EventRows, RowOutcome, TurnOutcome, apply_turns, insert_events,
};
use tokio_postgres::types::ToSql;

use crate::errors::{is_connection, is_row_error, text};
use crate::pool::{Db, DbError};
use crate::tables::AUDIT_CHAIN_LOCK;

/// Attempts per batch for failures other than an unreachable database.
pub(crate) const ATTEMPTS: u32 = 3;

/// How long a shutdown waits for an unreachable database before counting what is left as
/// failed.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The insert of a whole batch: one row per array element.
pub(crate) const INSERT_SQL: &str = "INSERT INTO events (id, timestamp_us, session_id, turn_id, \
    parent_event_id, type, actor, sensitivity, payload_json, audit_seq) \
    SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
    $7::text[], $8::text[], $9::text[], $10::int8[]) \
    ON CONFLICT (id) DO NOTHING";

/// The chained row with the highest sequence number (served by `idx_events_audit_seq`).
pub(crate) const CHAIN_TAIL_SQL: &str = "SELECT id, timestamp_us, session_id, type, payload_json, \
    audit_seq FROM events WHERE audit_seq IS NOT NULL ORDER BY audit_seq DESC LIMIT 1";

/// Upsert of one completed turn (the `SessionStore` contract, as SQLite's upsert). No row
/// changes when the session exists in another workspace.
pub(crate) const UPSERT_TURN_SQL: &str = "INSERT INTO sessions AS s (id, workspace_path, \
    active_model, cost_so_far_usd, turn_count, schema_version, created_at, updated_at, \
    parent_session_id, parent_tool_use_id, is_worker) \
    VALUES ($1, $2, $3, $4, 1, 1, $5, $5, $6, $7, $8) \
    ON CONFLICT (id) DO UPDATE SET \
    active_model = COALESCE(EXCLUDED.active_model, s.active_model), \
    cost_so_far_usd = s.cost_so_far_usd + EXCLUDED.cost_so_far_usd, \
    turn_count = s.turn_count + 1, \
    updated_at = GREATEST(s.updated_at, EXCLUDED.updated_at), \
    parent_session_id = COALESCE(s.parent_session_id, EXCLUDED.parent_session_id), \
    parent_tool_use_id = COALESCE(s.parent_tool_use_id, EXCLUDED.parent_tool_use_id), \
    is_worker = s.is_worker OR EXCLUDED.is_worker \
    WHERE s.workspace_path = EXCLUDED.workspace_path";

/// What the writer thread shares with the store's handles.
#[derive(Debug)]
pub(crate) struct WriterState {
    /// A shutdown has begun: an outage is waited out for [`CLOSE_GRACE`] at most.
    pub(crate) closing: AtomicBool,
    /// False while the writer waits for an unreachable database.
    pub(crate) reachable: AtomicBool,
}

impl Default for WriterState {
    fn default() -> Self {
        Self {
            closing: AtomicBool::new(false),
            reachable: AtomicBool::new(true),
        }
    }
}

/// A batch error, shown without the driver's nesting.
#[derive(Debug)]
pub(crate) struct WriteError(pub(crate) DbError);

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&text(&self.0))
    }
}

/// A transaction whose `COMMIT` got no answer: its id, its server process and what it did.
#[derive(Debug, Clone, Copy)]
struct InDoubt {
    xid: i64,
    pid: i32,
    outcome: BatchOutcome,
}

/// The writer thread's connection, as the shared writer loop drives it.
pub(crate) struct PgBatches {
    db: Db,
    conn: Option<Object>,
    state: Arc<WriterState>,
    backoff: Backoff,
    outage_log: LogLimiter,
    /// A shutdown gave up on an unreachable database: nothing more is attempted.
    abandoned: bool,
}

impl PgBatches {
    pub(crate) fn new(db: Db, state: Arc<WriterState>) -> Self {
        Self {
            db,
            conn: None,
            state,
            backoff: Backoff::store_recovery(),
            outage_log: LogLimiter::new(Duration::from_secs(10)),
            abandoned: false,
        }
    }

    /// The connection, opened when missing.
    fn connection(&mut self) -> Result<&mut Object, DbError> {
        if self.conn.is_none() {
            let db = self.db.clone();
            let conn = self.db.block_here(async move { db.get().await })??;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| DbError::Stopped("no connection".into()))
    }

    /// Forget a connection that failed: it leaves the pool instead of going back to it.
    fn discard_connection(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(Object::take(conn));
        }
    }

    /// Sleep `pause`, waking early when a shutdown begins.
    fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        while Instant::now() < until && !self.state.closing.load(Ordering::Acquire) {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
    }

    /// One attempt: settle a transaction left in doubt, then the batch.
    fn attempt(
        &mut self,
        events: &[Event],
        turns: &[SessionTurn],
        in_doubt: &mut Option<InDoubt>,
    ) -> Result<BatchOutcome, DbError> {
        let db = self.db.clone();
        let conn = self.connection()?;
        if let Some(d) = *in_doubt {
            if settle(&db, conn, d)? {
                tracing::info!(
                    xid = d.xid,
                    "trace batch whose commit got no answer was committed; not writing it again"
                );
                return Ok(d.outcome);
            }
            *in_doubt = None;
        }
        match write_fast(&db, conn, events, turns, in_doubt) {
            Ok(Some(out)) => Ok(out),
            Ok(None) => write_row_by_row(&db, conn, events, turns, in_doubt),
            Err(e) if is_row_error(&e) => write_row_by_row(&db, conn, events, turns, in_doubt),
            Err(e) => Err(e),
        }
    }
}

impl BatchStore for PgBatches {
    type Error = WriteError;

    fn name(&self) -> &'static str {
        "postgres"
    }

    fn write_batch(
        &mut self,
        events: &[Event],
        turns: &[SessionTurn],
    ) -> Result<BatchOutcome, WriteError> {
        if self.abandoned {
            return Err(WriteError(DbError::Stopped(
                "the database stayed unreachable during shutdown; events not written".into(),
            )));
        }
        let mut in_doubt = None;
        let mut failures = 0u32;
        let mut down_since: Option<Instant> = None;
        loop {
            match self.attempt(events, turns, &mut in_doubt) {
                Ok(out) => {
                    if let Some(since) = down_since {
                        tracing::info!(
                            store = "postgres",
                            down_ms =
                                u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                            "PostgreSQL reachable again; the queued trace events are being written"
                        );
                    }
                    self.state.reachable.store(true, Ordering::Release);
                    self.backoff.reset();
                    return Ok(out);
                }
                Err(e) if is_connection(&e) => {
                    self.discard_connection();
                    self.state.reachable.store(false, Ordering::Release);
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if self.state.closing.load(Ordering::Acquire) && since.elapsed() >= CLOSE_GRACE
                    {
                        self.abandoned = true;
                        return Err(WriteError(e));
                    }
                    let wait = self.backoff.next_delay();
                    if self.outage_log.allow() {
                        tracing::warn!(
                            store = "postgres",
                            error = %text(&e),
                            batch = events.len(),
                            retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                            "PostgreSQL unreachable; trace events wait in the queue (bounded, \
                             overflow counted) and the batch is retried"
                        );
                    }
                    self.pause(wait);
                }
                Err(e) => {
                    failures += 1;
                    if failures >= ATTEMPTS {
                        return Err(WriteError(e));
                    }
                    let wait = retry_delay(Duration::from_millis(50), failures);
                    tracing::warn!(
                        store = "postgres",
                        error = %text(&e),
                        batch = events.len(),
                        attempt = failures,
                        attempts = ATTEMPTS,
                        "trace batch write failed; retrying"
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// A one-row write transaction: the trace component's stamp rewritten with its own value.
    fn probe(&mut self) -> Result<(), WriteError> {
        let db = self.db.clone();
        let r = self.connection().and_then(|conn| {
            let tx = block(&db, conn.transaction())?;
            block(
                &db,
                tx.execute(
                    "UPDATE metis_schema SET version = version WHERE component = 'trace'",
                    &[],
                ),
            )?;
            block(&db, tx.commit())
        });
        if let Err(e) = &r
            && is_connection(e)
        {
            self.discard_connection();
        }
        r.map_err(WriteError)
    }
}

/// Run one driver call on the writer thread, bounded on the client side too: a server that
/// vanished without closing the socket would otherwise hold the writer until TCP gives up.
fn block<T>(
    db: &Db,
    work: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    let limit = db.statement_timeout() * 2 + Duration::from_secs(1);
    // The timer is made inside the runtime context `block_here` enters.
    match db.block_here(async move { tokio::time::timeout(limit, work).await })? {
        Ok(r) => r.map_err(DbError::from),
        Err(_) => Err(DbError::Unavailable(
            db.config().redacted().to_owned(),
            format!("no answer within {} ms", limit.as_millis()),
        )),
    }
}

/// Whether the transaction `d` committed. A transaction still running (its connection not
/// yet noticed as gone) is ended first, so the answer is final.
fn settle(db: &Db, conn: &mut Object, d: InDoubt) -> Result<bool, DbError> {
    for _ in 0..40 {
        let status: Option<String> = block(
            db,
            conn.query_one("SELECT txid_status($1)::text", &[&d.xid]),
        )?
        .get(0);
        match status.as_deref() {
            Some("committed") => return Ok(true),
            Some("in progress") => {
                block(
                    db,
                    conn.query_one("SELECT pg_terminate_backend($1)", &[&d.pid]),
                )?;
                std::thread::sleep(Duration::from_millis(50));
            }
            // Aborted, or too old to know (impossible within a retry's seconds).
            _ => return Ok(false),
        }
    }
    Err(DbError::Stopped(format!(
        "transaction {} of a lost connection is still running",
        d.xid
    )))
}

/// Begin a transaction and note its id and server process (for [`settle`]).
async fn begin(conn: &mut Object) -> Result<(Transaction<'_>, i64, i32), tokio_postgres::Error> {
    let tx = conn.transaction().await?;
    let row = tx
        .query_one("SELECT txid_current(), pg_backend_pid()", &[])
        .await?;
    let (xid, pid) = (row.get(0), row.get(1));
    Ok((tx, xid, pid))
}

/// Commit, noting the transaction as in doubt when the connection dropped before the
/// server's answer.
fn commit(
    db: &Db,
    tx: Transaction<'_>,
    xid: i64,
    pid: i32,
    outcome: BatchOutcome,
    in_doubt: &mut Option<InDoubt>,
) -> Result<BatchOutcome, DbError> {
    match block(db, tx.commit()) {
        Ok(()) => Ok(outcome),
        Err(e) => {
            if is_connection(&e) {
                *in_doubt = Some(InDoubt { xid, pid, outcome });
            }
            Err(e)
        }
    }
}

/// Take the chain lock and read the tail, when the batch holds an audit event.
fn chain_tail(
    db: &Db,
    tx: &Transaction<'_>,
    events: &[Event],
) -> Result<Option<ChainTail>, DbError> {
    if !events.iter().any(|e| is_audit_type(e.event_type)) {
        return Ok(None);
    }
    block(
        db,
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_CHAIN_LOCK]),
    )?;
    // A new statement, so a new snapshot: it sees the commit of the writer that held the lock.
    let row = block(db, tx.query_opt(CHAIN_TAIL_SQL, &[]))?;
    Ok(Some(row.map_or_else(ChainTail::genesis, |r| {
        let (id, session_id, ty, payload): (String, String, String, String) =
            (r.get(0), r.get(2), r.get(3), r.get(4));
        let seq: i64 = r.get(5);
        ChainTail::of_row(
            u64::try_from(seq).unwrap_or(0),
            &ChainedRow {
                id: &id,
                timestamp_us: r.get(1),
                session_id: &session_id,
                event_type: &ty,
                payload_json: &payload,
            },
        )
    })))
}

fn tail_not_read() -> DbError {
    DbError::Stopped("audit chain tail requested but not read (a writer bug)".into())
}

/// The rows of a batch as the bulk insert takes them: the payload each event is stored with
/// (its chained version for a linked audit event) and its chain position.
struct Buffered {
    tail: Option<ChainTail>,
    chained: Vec<Option<(String, i64)>>,
}

impl EventRows for Buffered {
    type Error = DbError;

    fn chain_tail(&mut self) -> Result<ChainTail, DbError> {
        self.tail.take().ok_or_else(tail_not_read)
    }

    fn insert(
        &mut self,
        _event: &Event,
        _payload_json: &str,
        link: Option<&Link>,
    ) -> Result<RowOutcome, DbError> {
        self.chained.push(link.map(|l| {
            (
                l.payload_json.clone(),
                i64::try_from(l.seq).unwrap_or(i64::MAX),
            )
        }));
        Ok(RowOutcome::Stored)
    }
}

/// The bulk insert of `events` (each with its stored payload and chain position); returns
/// the rows stored.
fn insert_bulk(
    db: &Db,
    tx: &Transaction<'_>,
    events: &[Event],
    chained: &[Option<(String, i64)>],
) -> Result<u64, DbError> {
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut sessions = Vec::with_capacity(n);
    let mut turn_ids = Vec::with_capacity(n);
    let mut parents = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut actors = Vec::with_capacity(n);
    let mut sens = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    for (i, e) in events.iter().enumerate() {
        let link = chained.get(i).and_then(Option::as_ref);
        ids.push(e.id.as_str());
        ts.push(e.timestamp_us);
        sessions.push(e.session_id.as_str());
        turn_ids.push(e.turn_id.as_deref());
        parents.push(e.parent_event_id.as_deref());
        types.push(e.event_type);
        actors.push(e.actor.as_str());
        sens.push(e.sensitivity.as_str());
        payloads.push(link.map_or(e.payload_json.as_str(), |(p, _)| p.as_str()));
        seqs.push(link.map(|(_, s)| *s));
    }
    let stmt = block(db, tx.prepare_cached(INSERT_SQL))?;
    block(
        db,
        tx.execute(
            &stmt,
            &[
                &ids, &ts, &sessions, &turn_ids, &parents, &types, &actors, &sens, &payloads, &seqs,
            ],
        ),
    )
}

/// The arguments of [`UPSERT_TURN_SQL`], in order.
type TurnParams<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    f64,
    i64,
    Option<&'a str>,
    Option<&'a str>,
    bool,
);

fn turn_params(t: &SessionTurn) -> TurnParams<'_> {
    (
        t.session_id.as_str(),
        t.workspace_path.as_str(),
        t.active_model.as_deref(),
        t.cost_usd,
        t.at_us,
        t.parent_session_id.as_ref().map(SessionId::as_str),
        t.parent_tool_use_id.as_deref(),
        t.is_worker,
    )
}

/// The whole batch in one transaction; `None` when some event was not stored (an id already
/// there): the caller redoes the batch row by row.
fn write_fast(
    db: &Db,
    conn: &mut Object,
    events: &[Event],
    turns: &[SessionTurn],
    in_doubt: &mut Option<InDoubt>,
) -> Result<Option<BatchOutcome>, DbError> {
    let (tx, xid, pid) = block(db, begin(conn))?;
    let mut rows = Buffered {
        tail: chain_tail(db, &tx, events)?,
        chained: Vec::with_capacity(events.len()),
    };
    let mut out = BatchOutcome {
        rejected_events: insert_events(&mut rows, events)?,
        ..BatchOutcome::default()
    };
    if !events.is_empty() {
        let stored = insert_bulk(db, &tx, events, &rows.chained)?;
        if stored != events.len() as u64 {
            block(db, tx.rollback())?;
            return Ok(None);
        }
    }
    if !turns.is_empty() {
        let stmt = block(db, tx.prepare_cached(UPSERT_TURN_SQL))?;
        let params: Vec<_> = turns.iter().map(turn_params).collect();
        let args: Vec<[&(dyn ToSql + Sync); 8]> = params
            .iter()
            .map(|p| -> [&(dyn ToSql + Sync); 8] {
                [&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, &p.6, &p.7]
            })
            .collect();
        // Pipelined: sent back to back, executed in order on the one connection.
        let pipelined = join_all(args.iter().map(|a| tx.execute(&stmt, a)));
        let results = block(db, async { Ok(pipelined.await) })?;
        let mut results = results.into_iter();
        apply_turns(turns, &mut out, |_| match results.next() {
            Some(Ok(0)) => Ok(TurnOutcome::Conflict),
            Some(Ok(_)) => Ok(TurnOutcome::Applied),
            Some(Err(e)) => Err(DbError::from(e)),
            None => Err(DbError::Stopped("missing upsert result".into())),
        })?;
    }
    commit(db, tx, xid, pid, out, in_doubt).map(Some)
}

/// The rows of a batch written one by one, each under a savepoint, so a row the server
/// refuses fails alone.
struct OneByOne<'a, 'c> {
    db: &'a Db,
    tx: &'a Transaction<'c>,
    tail: Option<ChainTail>,
    /// Ids stored before this transaction, and ids stored by it.
    taken: HashSet<String>,
}

/// Run `statement` under a savepoint: `Ok(Err(reason))` when the server refused it on its own
/// (rolled back to the savepoint, the transaction goes on).
fn under_savepoint<T>(
    db: &Db,
    tx: &Transaction<'_>,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<Result<T, String>, DbError> {
    block(db, tx.batch_execute("SAVEPOINT metis_row"))?;
    match block(db, statement) {
        Ok(v) => {
            block(db, tx.batch_execute("RELEASE SAVEPOINT metis_row"))?;
            Ok(Ok(v))
        }
        Err(e) if is_row_error(&e) => {
            block(db, tx.batch_execute("ROLLBACK TO SAVEPOINT metis_row"))?;
            Ok(Err(text(&e)))
        }
        Err(e) => Err(e),
    }
}

impl EventRows for OneByOne<'_, '_> {
    type Error = DbError;

    fn chain_tail(&mut self) -> Result<ChainTail, DbError> {
        self.tail.take().ok_or_else(tail_not_read)
    }

    fn insert(
        &mut self,
        e: &Event,
        payload_json: &str,
        link: Option<&Link>,
    ) -> Result<RowOutcome, DbError> {
        if self.taken.contains(&e.id) {
            return Ok(RowOutcome::Rejected(format!(
                "an event with id {} is already stored",
                e.id
            )));
        }
        let seq = link.map(|l| i64::try_from(l.seq).unwrap_or(i64::MAX));
        let stmt = block(self.db, self.tx.prepare_cached(INSERT_SQL))?;
        let (ids, sessions, types, actors, sens, payloads) = (
            vec![e.id.as_str()],
            vec![e.session_id.as_str()],
            vec![e.event_type],
            vec![e.actor.as_str()],
            vec![e.sensitivity.as_str()],
            vec![payload_json],
        );
        let (ts, turn_ids, parents, seqs) = (
            vec![e.timestamp_us],
            vec![e.turn_id.as_deref()],
            vec![e.parent_event_id.as_deref()],
            vec![seq],
        );
        let stored = under_savepoint(
            self.db,
            self.tx,
            self.tx.execute(
                &stmt,
                &[
                    &ids, &ts, &sessions, &turn_ids, &parents, &types, &actors, &sens, &payloads,
                    &seqs,
                ],
            ),
        )?;
        match stored {
            Ok(1) => {
                self.taken.insert(e.id.clone());
                Ok(RowOutcome::Stored)
            }
            Ok(_) => Ok(RowOutcome::Rejected(format!(
                "an event with id {} is already stored",
                e.id
            ))),
            Err(reason) => Ok(RowOutcome::Rejected(reason)),
        }
    }
}

/// The batch row by row (after the fast path found a stored id or a refused row).
fn write_row_by_row(
    db: &Db,
    conn: &mut Object,
    events: &[Event],
    turns: &[SessionTurn],
    in_doubt: &mut Option<InDoubt>,
) -> Result<BatchOutcome, DbError> {
    let (tx, xid, pid) = block(db, begin(conn))?;
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let taken = block(
        db,
        tx.query("SELECT id FROM events WHERE id = ANY($1)", &[&ids]),
    )?
    .into_iter()
    .map(|r| r.get::<_, String>(0))
    .collect();
    let mut rows = OneByOne {
        db,
        tx: &tx,
        tail: chain_tail(db, &tx, events)?,
        taken,
    };
    let mut out = BatchOutcome {
        rejected_events: insert_events(&mut rows, events)?,
        ..BatchOutcome::default()
    };
    if !turns.is_empty() {
        let stmt = block(db, tx.prepare_cached(UPSERT_TURN_SQL))?;
        apply_turns(turns, &mut out, |t| {
            let p = turn_params(t);
            let r = under_savepoint(
                db,
                &tx,
                tx.execute(&stmt, &[&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, &p.6, &p.7]),
            )?;
            Ok::<_, DbError>(match r {
                Ok(0) => TurnOutcome::Conflict,
                Ok(_) => TurnOutcome::Applied,
                Err(reason) => TurnOutcome::Rejected(reason),
            })
        })?;
    }
    commit(db, tx, xid, pid, out, in_doubt)
}

#[cfg(test)]
mod tests;
