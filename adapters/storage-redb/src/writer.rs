//! The redb side of the trace writer thread (`metis_ports::writer` runs the loop: batching,
//! commit delay, commit deadline, flushes, counters, retries, recovery probes and the reopen
//! back-off). The thread is the only code that writes events and session turns to a redb
//! file.
//!
//! Invariants:
//! - One batch is one redb write transaction: every event row with its index entries and
//!   chain link, and every session turn with its index entries. Every redb commit is durable
//!   (fsyncs), so the commit delay lets a batch grow before it.
//! - An event whose id is already stored is rejected on its own.
//! - Audit events are chained inside the transaction (`metis_ports::writer::insert_events`), from
//!   the tail stored in `meta`; only a written row advances the tail.
//! - Recovery from I/O errors (a full disk, a failing device): redb latches an I/O error in
//!   the handle and refuses everything after it until the database is closed and reopened.
//!   `needs_reopen` tells the writer loop so; it closes the handle (`DbSlot::close`) and
//!   reopens the file on the shared recovery back-off (50 ms doubling to 5 s).

use std::sync::Arc;

use metis_domain::audit::{ChainTail, Link};
use metis_domain::events::Event;
use metis_domain::sessions::SessionTurn;
use metis_ports::writer::{
    BatchOutcome, BatchStore, EventRows, RowOutcome, TurnOutcome, apply_turns, insert_events,
};
use redb::Database;

use crate::db::{DbSlot, META, Result, StoreError, needs_reopen};
use crate::rows::{EventTables, RowRef};
use crate::sessions::SessionTables;

/// The file's handle slot, as the shared writer loop drives it.
pub(crate) struct RedbBatches(pub(crate) Arc<DbSlot>);

impl BatchStore for RedbBatches {
    type Error = StoreError;

    fn name(&self) -> &'static str {
        "redb"
    }

    fn write_batch(&mut self, events: &[Event], turns: &[SessionTurn]) -> Result<BatchOutcome> {
        write_batch(&*self.0.get()?, events, turns)
    }

    fn probe(&mut self) -> Result<()> {
        probe_write(&*self.0.get()?)
    }

    fn needs_reopen(&self, e: &StoreError) -> bool {
        needs_reopen(e)
    }

    fn close(&mut self) {
        self.0.close();
    }

    fn reopen(&mut self) -> Result<()> {
        self.0.reopen()?;
        Ok(())
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

impl EventRows for EventTables<'_> {
    type Error = StoreError;

    fn chain_tail(&mut self) -> Result<ChainTail> {
        EventTables::chain_tail(self)
    }

    fn insert(&mut self, e: &Event, payload_json: &str, link: Option<&Link>) -> Result<RowOutcome> {
        if self.contains(&e.id)? {
            return Ok(RowOutcome::Rejected(
                "an event with this id is already stored".to_owned(),
            ));
        }
        let row = RowRef {
            id: &e.id,
            timestamp_us: e.timestamp_us,
            session_id: &e.session_id,
            turn_id: e.turn_id.as_deref(),
            parent_event_id: e.parent_event_id.as_deref(),
            event_type: e.event_type,
            actor: e.actor.as_str(),
            sensitivity: e.sensitivity.as_str(),
            payload_json,
        };
        EventTables::insert(self, &row, link)?;
        Ok(RowOutcome::Stored)
    }
}

/// One write transaction for the whole batch.
fn write_batch(db: &Database, batch: &[Event], turns: &[SessionTurn]) -> Result<BatchOutcome> {
    let tx = db.begin_write()?;
    let mut out = BatchOutcome::default();
    {
        let mut t = EventTables::open(&tx)?;
        out.rejected_events = insert_events(&mut t, batch)?;
    }
    if !turns.is_empty() {
        let mut s = SessionTables::open(&tx)?;
        apply_turns(turns, &mut out, |turn| {
            Ok::<_, StoreError>(if s.apply(turn)? {
                TurnOutcome::Applied
            } else {
                TurnOutcome::Conflict
            })
        })?;
    }
    tx.commit()?;
    Ok(out)
}
