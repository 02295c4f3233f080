//! The SQLite side of the trace writer thread (`metis_ports::writer` runs the loop: batching,
//! linger, commit deadline, flushes, counters, retries and recovery probes). The thread is the
//! only owner of the write connection.
//!
//! Invariants:
//! - One batch is one `BEGIN IMMEDIATE` transaction with one cached prepared statement.
//! - A single event the database rejects on its own (constraint violation, too big) is
//!   counted as failed without failing the rest of its batch.
//! - Audit events are chained inside the batch's write transaction
//!   (`metis_ports::writer::insert_events`): the chain's tail (highest `audit_seq`) is read after
//!   `BEGIN IMMEDIATE` holds the database's write lock, so writers in other processes (the
//!   gateway, CLI admin commands) extend one chain without forking it.
//! - Session turns (`SqliteSessionStore::record_turn`) travel on the same queue and are
//!   upserted in the same transaction as the events around them: one writer per file (no
//!   `SQLITE_BUSY` between our own writers), group commit for both, and a session's cost
//!   commits together with the turn's events.
//! - The recovery probe is a one-row write transaction (the version marker rewritten with its
//!   own value); SQLite needs no reopen after a full disk.

use metis_domain::audit::{ChainTail, ChainedRow, Link};
use metis_domain::events::Event;
use metis_domain::sessions::SessionTurn;
use metis_ports::writer::{
    BatchOutcome, BatchStore, EventRows, RowOutcome, TurnOutcome, apply_turns, insert_events,
};
use rusqlite::{
    CachedStatement, Connection, ErrorCode, OptionalExtension, TransactionBehavior, params,
};

use crate::schema::INSERT_SQL;

/// The write connection, as the shared writer loop drives it.
pub(crate) struct SqliteBatches(pub(crate) Connection);

impl BatchStore for SqliteBatches {
    type Error = rusqlite::Error;

    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn write_batch(
        &mut self,
        events: &[Event],
        turns: &[SessionTurn],
    ) -> rusqlite::Result<BatchOutcome> {
        insert_batch(&mut self.0, events, turns)
    }

    /// Rewrite the version marker with its own value in a write transaction.
    fn probe(&mut self) -> rusqlite::Result<()> {
        let tx = self
            .0
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        tx.execute_batch(&format!("PRAGMA user_version = {v}"))?;
        tx.commit()
    }
}

/// An error that concerns one row only; the rest of the batch can still be committed.
fn is_row_error(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch)
    )
}

/// The chained audit row with the highest sequence number (served by `idx_events_audit_seq`;
/// a tampered non-integer `audit_seq` is skipped so the chain continues from the real tail).
pub(crate) const CHAIN_TAIL_SQL: &str = "SELECT id, timestamp_us, session_id, type, payload_json, \
    json_extract(payload_json, '$.audit_seq') FROM events \
    WHERE json_extract(payload_json, '$.audit_seq') IS NOT NULL \
    AND json_type(payload_json, '$.audit_seq') = 'integer' \
    ORDER BY json_extract(payload_json, '$.audit_seq') DESC LIMIT 1";

/// The events table inside one write transaction.
struct Rows<'tx> {
    tx: &'tx Connection,
    insert: CachedStatement<'tx>,
}

impl EventRows for Rows<'_> {
    type Error = rusqlite::Error;

    fn chain_tail(&mut self) -> rusqlite::Result<ChainTail> {
        let mut stmt = self.tx.prepare_cached(CHAIN_TAIL_SQL)?;
        let tail = stmt
            .query_row([], |r| {
                let (id, timestamp_us, session_id, event_type, payload_json, seq): (
                    String,
                    i64,
                    String,
                    String,
                    String,
                    i64,
                ) = (
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                );
                let row = ChainedRow {
                    id: &id,
                    timestamp_us,
                    session_id: &session_id,
                    event_type: &event_type,
                    payload_json: &payload_json,
                };
                Ok(ChainTail::of_row(u64::try_from(seq).unwrap_or(0), &row))
            })
            .optional()?;
        Ok(tail.unwrap_or_default())
    }

    fn insert(
        &mut self,
        e: &Event,
        payload_json: &str,
        _link: Option<&Link>,
    ) -> rusqlite::Result<RowOutcome> {
        let res = self.insert.execute(params![
            e.id,
            e.timestamp_us,
            e.session_id,
            e.turn_id,
            e.parent_event_id,
            e.event_type,
            e.actor.as_str(),
            e.sensitivity.as_str(),
            payload_json,
        ]);
        match res {
            Ok(_) => Ok(RowOutcome::Stored),
            Err(err) if is_row_error(&err) => Ok(RowOutcome::Rejected(err.to_string())),
            Err(err) => Err(err),
        }
    }
}

/// Upsert one session turn inside the batch's transaction.
fn upsert_turn(stmt: &mut CachedStatement<'_>, t: &SessionTurn) -> rusqlite::Result<TurnOutcome> {
    match crate::sessions::execute_upsert(stmt, t) {
        Ok(0) => Ok(TurnOutcome::Conflict),
        Ok(_) => Ok(TurnOutcome::Applied),
        Err(err) if is_row_error(&err) => Ok(TurnOutcome::Rejected(err.to_string())),
        Err(err) => Err(err),
    }
}

/// One transaction for the whole batch.
fn insert_batch(
    conn: &mut Connection,
    batch: &[Event],
    turns: &[SessionTurn],
) -> rusqlite::Result<BatchOutcome> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = BatchOutcome::default();
    {
        let mut rows = Rows {
            tx: &tx,
            insert: tx.prepare_cached(INSERT_SQL)?,
        };
        out.rejected_events = insert_events(&mut rows, batch)?;
    }
    if !turns.is_empty() {
        let mut stmt = tx.prepare_cached(crate::sessions::UPSERT_SQL)?;
        apply_turns(turns, &mut out, |t| upsert_turn(&mut stmt, t))?;
    }
    tx.commit()?;
    Ok(out)
}
