//! The trace fake: an `EventSink` and `TraceQuery` over an in-memory "file" of rows.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use metis_domain::audit::{ChainTail, Link, audit_types_for};
use metis_domain::events::Event;
use metis_domain::usage::{SpendRollup, UsageRollup};

use super::lock;
use crate::trace::{
    EventRow, EventSink, KeySpend, SinkStats, TraceError, TraceQuery, UsageGroup, UsageRow,
};
use crate::writer::{EventRows, RowOutcome, insert_events};

/// The trace schema version the fakes claim to support (the SQLite/redb value).
pub const FAKE_TRACE_SCHEMA_VERSION: i64 = 1;

/// The shared "file" of an [`InMemoryTraceStore`].
#[derive(Debug, Default)]
struct TraceFile {
    schema_version: i64,
    /// Committed rows by id (ULID order = emit order).
    rows: BTreeMap<String, EventRow>,
    /// Tail of the audit chain (genesis until the first audit event is written).
    chain: ChainTail,
}

#[derive(Debug, Default)]
struct SinkState {
    /// Events accepted but not yet written (only in queued mode).
    pending: Vec<Event>,
    stats: SinkStats,
    closed: bool,
}

/// An in-memory `EventSink` + `TraceQuery`.
///
/// Two modes: [`new`](Self::new) writes every accepted event at once (an infinitely fast
/// writer; the queue never fills); [`with_queue_capacity`](Self::with_queue_capacity) keeps
/// accepted events queued until `flush` (a writer that only runs on flush), so a full queue
/// and its overflow counting can be observed deterministically.
#[derive(Debug, Clone)]
pub struct InMemoryTraceStore {
    file: Arc<Mutex<TraceFile>>,
    sink: Arc<Mutex<SinkState>>,
    /// `None` = write immediately.
    capacity: Option<usize>,
}

impl Default for InMemoryTraceStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryTraceStore {
    /// A store that writes each event as it is emitted.
    #[must_use]
    pub fn new() -> Self {
        Self {
            file: Arc::new(Mutex::new(TraceFile {
                schema_version: FAKE_TRACE_SCHEMA_VERSION,
                ..TraceFile::default()
            })),
            sink: Arc::new(Mutex::new(SinkState::default())),
            capacity: None,
        }
    }

    /// A store whose queue holds at most `capacity` events until `flush`.
    #[must_use]
    pub fn with_queue_capacity(capacity: usize) -> Self {
        Self {
            capacity: Some(capacity.max(1)),
            ..Self::new()
        }
    }

    /// A new handle (own queue and counters) on the same data, like reopening the file.
    ///
    /// # Errors
    /// `TooNew` when the data's schema version is newer than [`FAKE_TRACE_SCHEMA_VERSION`].
    pub fn reopen(&self) -> Result<Self, TraceError> {
        self.reopen_with(self.capacity)
    }

    /// As [`reopen`](Self::reopen), choosing the queue mode of the new handle (`None` = write
    /// each event at once).
    ///
    /// # Errors
    /// `TooNew` when the data's schema version is newer than [`FAKE_TRACE_SCHEMA_VERSION`].
    pub fn reopen_with(&self, capacity: Option<usize>) -> Result<Self, TraceError> {
        let found = lock(&self.file).schema_version;
        if found > FAKE_TRACE_SCHEMA_VERSION {
            return Err(TraceError::TooNew {
                found,
                supported: FAKE_TRACE_SCHEMA_VERSION,
            });
        }
        Ok(Self {
            file: Arc::clone(&self.file),
            sink: Arc::new(Mutex::new(SinkState::default())),
            capacity: capacity.map(|c| c.max(1)),
        })
    }

    /// Stamp the data with `version` (tests: simulate a file from a newer binary).
    pub fn set_schema_version(&self, version: i64) {
        lock(&self.file).schema_version = version;
    }

    /// The data's schema version (never lowered by this fake).
    #[must_use]
    pub fn schema_version(&self) -> i64 {
        lock(&self.file).schema_version
    }

    /// Stop accepting events and write what is queued (like the adapters' shutdown).
    /// Idempotent. Returns the final counters.
    pub fn close(&self) -> SinkStats {
        let mut sink = lock(&self.sink);
        sink.closed = true;
        self.write_pending(&mut sink);
        sink.stats
    }

    /// Every written row, in id order.
    #[must_use]
    pub fn rows(&self) -> Vec<EventRow> {
        lock(&self.file).rows.values().cloned().collect()
    }

    /// Write the queued events in one "transaction", in order, chaining audit events exactly
    /// as the adapters' writers do (`insert_events`).
    fn write_pending(&self, sink: &mut SinkState) {
        if sink.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut sink.pending);
        let n = batch.len() as u64;
        let mut file = lock(&self.file);
        let Ok(rejected) = insert_events(&mut *file, &batch);
        sink.stats.written += n - rejected;
        sink.stats.failed += rejected;
        sink.stats.queued = sink.stats.queued.saturating_sub(n);
    }
}

/// The fake's rows as the shared writer code sees them: the tail is kept, not re-read from
/// rows, and nothing but a duplicate id is ever refused.
impl EventRows for TraceFile {
    type Error = Infallible;

    fn chain_tail(&mut self) -> Result<ChainTail, Infallible> {
        Ok(self.chain.clone())
    }

    fn insert(
        &mut self,
        e: &Event,
        payload_json: &str,
        link: Option<&Link>,
    ) -> Result<RowOutcome, Infallible> {
        if self.rows.contains_key(&e.id) {
            // Like a primary-key violation: this row alone is refused.
            return Ok(RowOutcome::Rejected(format!("duplicate event id {}", e.id)));
        }
        if let Some(l) = link {
            self.chain = ChainTail {
                seq: l.seq,
                hash: l.hash.clone(),
            };
        }
        self.rows.insert(
            e.id.clone(),
            EventRow {
                id: e.id.clone(),
                timestamp_us: e.timestamp_us,
                session_id: e.session_id.clone(),
                turn_id: e.turn_id.clone(),
                parent_event_id: e.parent_event_id.clone(),
                event_type: e.event_type.to_owned(),
                actor: e.actor.as_str().to_owned(),
                sensitivity: e.sensitivity.as_str().to_owned(),
                payload_json: payload_json.to_owned(),
            },
        );
        Ok(RowOutcome::Stored)
    }
}

#[async_trait]
impl EventSink for InMemoryTraceStore {
    fn emit(&self, event: Event) {
        let mut sink = lock(&self.sink);
        if sink.closed {
            sink.stats.failed += 1;
            return;
        }
        if let Some(cap) = self.capacity
            && sink.pending.len() >= cap
        {
            sink.stats.overflowed += 1;
            return;
        }
        sink.stats.accepted += 1;
        sink.stats.queued += 1;
        sink.pending.push(event);
        if self.capacity.is_none() {
            self.write_pending(&mut sink);
        }
    }

    async fn flush(&self) -> Result<(), TraceError> {
        let mut sink = lock(&self.sink);
        if sink.closed {
            return Err(TraceError::Unavailable("the trace store is closed".into()));
        }
        self.write_pending(&mut sink);
        Ok(())
    }

    fn stats(&self) -> SinkStats {
        lock(&self.sink).stats
    }

    fn is_writable(&self) -> bool {
        !lock(&self.sink).closed
    }

    fn wal_bytes(&self) -> u64 {
        0
    }
}

#[async_trait]
impl TraceQuery for InMemoryTraceStore {
    async fn spend_by_key(
        &self,
        day_start_us: i64,
        month_start_us: i64,
    ) -> Result<Vec<KeySpend>, TraceError> {
        let mut spend = SpendRollup::new(day_start_us, month_start_us);
        for r in lock(&self.file).rows.values() {
            spend.add(r.timestamp_us, &r.event_type, &r.payload_json);
        }
        Ok(spend.finish())
    }

    async fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, TraceError> {
        let filter = filter.as_ref().map(|(g, v)| (*g, v.as_str()));
        let mut usage = UsageRollup::new(since_us, until_us, group, filter);
        for r in lock(&self.file).rows.values() {
            usage.add(r.timestamp_us, &r.event_type, &r.payload_json);
        }
        Ok(usage.finish())
    }

    async fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<EventRow>, TraceError> {
        let wanted = audit_types_for(types);
        let file = lock(&self.file);
        Ok(file
            .rows
            .values()
            .filter(|r| {
                wanted.contains(&r.event_type.as_str())
                    && r.timestamp_us >= since_us
                    && r.timestamp_us < until_us
            })
            .cloned()
            .collect())
    }
}
