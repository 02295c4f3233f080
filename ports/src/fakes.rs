//! In-memory fakes of every storage port (feature `fakes`), for use-case unit tests and as the
//! third backend of the storage contract suite (`gw-tests`, `tests/tests/suite/storage_contract.rs`).
//!
//! Invariants:
//! - Each fake honours every documented clause of its port, exactly as the SQLite and redb
//!   adapters do (the contract suite runs the same test functions against all three): the
//!   audit chain is assigned when events are "written", key edits are validated before they
//!   are applied, session turns are applied in the order they were recorded, pattern caps
//!   evict in the same order.
//! - A fake's data lives in a shared state (the "file"); [`InMemoryTraceStore::reopen`] and its
//!   siblings give a new handle on the same state, so persistence and "newer file refused"
//!   clauses can be exercised without a disk. A state whose schema version was raised past
//!   the supported one (`set_schema_version`) is refused on reopen with `TooNew`.
//! - No disk I/O, except that [`InMemoryPatternStore`] checks that a workspace is a writable
//!   directory (the port says such a workspace is `Skipped`).
//! - Locks are never held across an `.await` and never poisoned into a panic: a poisoned lock
//!   is recovered (the state is plain data, always consistent between statements).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use gw_domain::audit::{AUDIT_TYPES, AuditChain, ChainTail, Linking};
use gw_domain::events::Event;
use gw_domain::events::types::{LLM_CALL_COMPLETED, LLM_CALL_FAILED};
use gw_domain::keys::KeyRecord;
use gw_domain::patterns::{PATTERN_SCHEMA_VERSION, PatternCaps, PatternRecord, mean_add};
use gw_domain::sessions::{SessionId, SessionRecord, SessionTurn};
use serde_json::Value;
use std::convert::Infallible;

use crate::keys::{KeyEdit, KeyStore, KeyStoreError};
use crate::patterns::{
    ModelTotals, OutcomeRow, PatternError, PatternStats, PatternStore, RecordOutcome, RecordResult,
};
use crate::sessions::{SessionError, SessionStats, SessionStore};
use crate::trace::{
    EventRow, EventSink, KeySpend, SinkStats, TraceError, TraceQuery, UsageGroup, UsageRow,
};

/// The trace schema version the fakes claim to support (the SQLite/redb value).
pub const FAKE_TRACE_SCHEMA_VERSION: i64 = 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Trace
// ---------------------------------------------------------------------------------------------

/// The shared "file" of an [`InMemoryTraceStore`].
#[derive(Debug, Default)]
struct TraceFile {
    schema_version: i64,
    /// Committed rows by id (ULID order = emit order).
    rows: BTreeMap<String, EventRow>,
    /// Tail of the audit chain (`None`: no audit event written yet).
    chain: Option<ChainTail>,
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

    /// Write the queued events, in order (audit events get the next chain link).
    fn write_pending(&self, sink: &mut SinkState) {
        if sink.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut sink.pending);
        let n = batch.len() as u64;
        let mut file = lock(&self.file);
        for e in batch {
            if file.rows.contains_key(&e.id) {
                // A duplicate id is rejected on its own (like a primary-key violation).
                sink.stats.failed += 1;
                continue;
            }
            // The same linking rule as the adapters' writers; the "store" never refuses a
            // row past the id check, so every link is stored.
            let tail = file.chain.clone();
            let mut chain = AuditChain::new();
            let Ok(linking) = chain.link(&e, || Ok::<_, Infallible>(tail.unwrap_or_default()));
            let payload = match linking {
                Linking::Linked(link) => {
                    chain.stored(&link);
                    file.chain = chain.tail().cloned();
                    link.payload_json
                }
                Linking::NotAudit | Linking::Unlinkable => e.payload_json.clone(),
            };
            file.rows.insert(
                e.id.clone(),
                EventRow {
                    id: e.id,
                    timestamp_us: e.timestamp_us,
                    session_id: e.session_id,
                    turn_id: e.turn_id,
                    parent_event_id: e.parent_event_id,
                    event_type: e.event_type.to_owned(),
                    actor: e.actor.as_str().to_owned(),
                    sensitivity: e.sensitivity.as_str().to_owned(),
                    payload_json: payload,
                },
            );
            sink.stats.written += 1;
        }
        sink.stats.queued = sink.stats.queued.saturating_sub(n);
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

/// The reference semantics of the `TraceQuery` rollups over stored rows (what the SQL of the
/// SQLite adapter computes): payload fields are read leniently, never failing a rollup.
pub mod rollup {
    use super::{
        AUDIT_TYPES, BTreeMap, EventRow, KeySpend, LLM_CALL_COMPLETED, LLM_CALL_FAILED, UsageGroup,
        UsageRow, Value,
    };

    /// The payload field a group reads.
    #[must_use]
    pub fn group_field(g: UsageGroup) -> &'static str {
        match g {
            UsageGroup::Key => "gateway_key_id",
            UsageGroup::User => "user_id",
            UsageGroup::Team => "team_id",
            UsageGroup::Model => "model",
        }
    }

    /// A payload field as group text: strings as they are, numbers and booleans as text,
    /// `None` for a missing or null field (SQL `json_extract` coerced to text).
    #[must_use]
    pub fn text_of(payload: &Value, field: &str) -> Option<String> {
        match payload.get(field)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(if *b { "1".into() } else { "0".into() }),
            other => Some(other.to_string()),
        }
    }

    /// A payload field as a number (numeric strings parsed, anything else 0).
    #[must_use]
    pub fn number_of(payload: &Value, field: &str) -> f64 {
        match payload.get(field) {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(0.0),
            _ => 0.0,
        }
    }

    fn count_of(payload: &Value, field: &str) -> u64 {
        match payload.get(field) {
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f > 0.0).map(|f| f as u64))
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether `event_type` is a call event (the spend and usage sources).
    #[must_use]
    pub fn is_call(event_type: &str) -> bool {
        event_type == LLM_CALL_COMPLETED || event_type == LLM_CALL_FAILED
    }

    fn parse(row: &EventRow) -> Value {
        serde_json::from_str(&row.payload_json).unwrap_or(Value::Null)
    }

    /// Spend per key (ordered by key) over call events; `rows` may include anything.
    pub fn spend_by_key<'a>(
        rows: impl IntoIterator<Item = &'a EventRow>,
        day_start_us: i64,
        month_start_us: i64,
    ) -> Vec<KeySpend> {
        let from = day_start_us.min(month_start_us);
        let mut by_key: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for row in rows {
            if !is_call(&row.event_type) || row.timestamp_us < from {
                continue;
            }
            let p = parse(row);
            let Some(key) = text_of(&p, "gateway_key_id") else {
                continue;
            };
            let cost = number_of(&p, "cost_usd");
            let e = by_key.entry(key).or_insert((0.0, 0.0));
            if row.timestamp_us >= day_start_us {
                e.0 += cost;
            }
            if row.timestamp_us >= month_start_us {
                e.1 += cost;
            }
        }
        by_key
            .into_iter()
            .map(|(gateway_key_id, (day_usd, month_usd))| KeySpend {
                gateway_key_id,
                day_usd,
                month_usd,
            })
            .collect()
    }

    /// Usage rollup over call events in `[since, until)`; sorted by cost descending, then
    /// group (`None` last).
    pub fn usage<'a>(
        rows: impl IntoIterator<Item = &'a EventRow>,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, &str)>,
    ) -> Vec<UsageRow> {
        let mut groups: BTreeMap<Option<String>, UsageRow> = BTreeMap::new();
        for row in rows {
            if !is_call(&row.event_type)
                || row.timestamp_us < since_us
                || row.timestamp_us >= until_us
            {
                continue;
            }
            let p = parse(row);
            if let Some((f, value)) = filter {
                // `json_extract(..) = ?` matches only a JSON string equal to the value.
                if p.get(group_field(f)).and_then(Value::as_str) != Some(value) {
                    continue;
                }
            }
            let g = text_of(&p, group_field(group));
            let r = groups.entry(g.clone()).or_insert_with(|| UsageRow {
                group: g,
                cost_usd: 0.0,
                input_tokens: 0,
                output_tokens: 0,
                cached_input_tokens: 0,
                cache_creation_input_tokens: 0,
                calls: 0,
                failed_calls: 0,
            });
            r.cost_usd += number_of(&p, "cost_usd");
            r.input_tokens += count_of(&p, "input_tokens");
            r.output_tokens += count_of(&p, "output_tokens");
            r.cached_input_tokens += count_of(&p, "cached_input_tokens");
            r.cache_creation_input_tokens += count_of(&p, "cache_creation_input_tokens");
            if row.event_type == LLM_CALL_COMPLETED {
                r.calls += 1;
            } else {
                r.failed_calls += 1;
            }
        }
        let mut out: Vec<UsageRow> = groups.into_values().collect();
        out.sort_by(|a, b| {
            b.cost_usd
                .total_cmp(&a.cost_usd)
                .then_with(|| a.group.is_none().cmp(&b.group.is_none()))
                .then_with(|| a.group.cmp(&b.group))
        });
        out
    }

    /// The audit types to read: all when `requested` is empty, else the requested ones that
    /// are audit types.
    #[must_use]
    pub fn audit_types_for(requested: &[String]) -> Vec<&'static str> {
        AUDIT_TYPES
            .iter()
            .copied()
            .filter(|t| requested.is_empty() || requested.iter().any(|r| r == t))
            .collect()
    }
}

#[async_trait]
impl TraceQuery for InMemoryTraceStore {
    async fn spend_by_key(
        &self,
        day_start_us: i64,
        month_start_us: i64,
    ) -> Result<Vec<KeySpend>, TraceError> {
        let file = lock(&self.file);
        Ok(rollup::spend_by_key(
            file.rows.values(),
            day_start_us,
            month_start_us,
        ))
    }

    async fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, TraceError> {
        let file = lock(&self.file);
        Ok(rollup::usage(
            file.rows.values(),
            since_us,
            until_us,
            group,
            filter.as_ref().map(|(g, v)| (*g, v.as_str())),
        ))
    }

    async fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<EventRow>, TraceError> {
        let wanted = rollup::audit_types_for(types);
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

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct KeyFile {
    /// `None` until the first insert (the store does not exist yet).
    keys: Option<Vec<KeyRecord>>,
    generation: u64,
    read_only: bool,
}

/// An in-memory `KeyStore`. Clones share the same keys (like two handles on one file).
#[derive(Debug, Clone, Default)]
pub struct InMemoryKeyStore {
    file: Arc<Mutex<KeyFile>>,
}

const FAKE_KEYS_LOCATION: &str = "memory:keys";

/// Every record valid, no duplicate id, no duplicate (lowercase) hash.
fn validate_key_set(records: &[KeyRecord]) -> Result<(), String> {
    let mut ids = HashSet::new();
    let mut hashes: HashMap<String, &str> = HashMap::new();
    for r in records {
        r.validate()?;
        if !ids.insert(r.key_id.as_str()) {
            return Err(format!("duplicate key_id '{}'", r.key_id));
        }
        if let Some(first) = hashes.insert(r.secret_hash.to_ascii_lowercase(), &r.key_id) {
            return Err(format!(
                "key '{}' has the same secret_hash as key '{first}'",
                r.key_id
            ));
        }
    }
    Ok(())
}

impl InMemoryKeyStore {
    /// An empty store that does not exist yet (`load` is `NotFound` until the first insert).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `keys` (not validated: tests may seed invalid data on purpose).
    #[must_use]
    pub fn with_keys(keys: Vec<KeyRecord>) -> Self {
        let s = Self::default();
        lock(&s.file).keys = Some(keys);
        s
    }

    /// Make writes fail with `ReadOnly` (a read-only mount).
    pub fn set_read_only(&self, read_only: bool) {
        lock(&self.file).read_only = read_only;
    }

    /// Replace the stored set without validation (tests: simulate a damaged store).
    pub fn put_raw(&self, keys: Vec<KeyRecord>) {
        let mut f = lock(&self.file);
        f.keys = Some(keys);
        f.generation += 1;
    }

    fn read_only_error() -> KeyStoreError {
        KeyStoreError::ReadOnly {
            location: FAKE_KEYS_LOCATION.into(),
            message: "the in-memory key store is set read-only".into(),
        }
    }

    fn corrupt(message: String) -> KeyStoreError {
        KeyStoreError::Corrupt {
            location: FAKE_KEYS_LOCATION.into(),
            message,
        }
    }
}

#[async_trait]
impl KeyStore for InMemoryKeyStore {
    fn describe(&self) -> String {
        FAKE_KEYS_LOCATION.into()
    }

    async fn load(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let f = lock(&self.file);
        let Some(keys) = &f.keys else {
            return Err(KeyStoreError::NotFound {
                location: FAKE_KEYS_LOCATION.into(),
            });
        };
        validate_key_set(keys).map_err(Self::corrupt)?;
        Ok(keys.clone())
    }

    async fn insert(&self, mut record: KeyRecord) -> Result<(), KeyStoreError> {
        record.secret_hash.make_ascii_lowercase();
        record
            .validate()
            .map_err(|m| Self::corrupt(format!("refusing to store an invalid key record: {m}")))?;
        let mut f = lock(&self.file);
        if f.read_only {
            return Err(Self::read_only_error());
        }
        let keys = f.keys.get_or_insert_with(Vec::new);
        if let Some(taken) = keys.iter().find(|k| k.key_id == record.key_id).or_else(|| {
            keys.iter()
                .find(|k| k.secret_hash.eq_ignore_ascii_case(&record.secret_hash))
        }) {
            return Err(KeyStoreError::Duplicate {
                key_id: taken.key_id.clone(),
            });
        }
        keys.push(record);
        f.generation += 1;
        Ok(())
    }

    async fn update(&self, edit: KeyEdit) -> Result<Vec<KeyRecord>, KeyStoreError> {
        // The lock is held across read, edit and write: no lost update.
        let mut f = lock(&self.file);
        let Some(before) = f.keys.clone() else {
            return Err(KeyStoreError::NotFound {
                location: FAKE_KEYS_LOCATION.into(),
            });
        };
        validate_key_set(&before).map_err(Self::corrupt)?;
        let mut records = before.clone();
        edit(&mut records).map_err(|message| KeyStoreError::Rejected { message })?;
        if records == before {
            return Ok(records);
        }
        if f.read_only {
            return Err(Self::read_only_error());
        }
        for r in &mut records {
            r.secret_hash.make_ascii_lowercase();
        }
        validate_key_set(&records)
            .map_err(|m| Self::corrupt(format!("refusing to store an invalid key set: {m}")))?;
        f.keys = Some(records.clone());
        f.generation += 1;
        Ok(records)
    }

    async fn version(&self) -> Option<String> {
        let f = lock(&self.file);
        f.keys.as_ref().map(|_| format!("memory:{}", f.generation))
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct SessionFile {
    sessions: BTreeMap<String, SessionRecord>,
}

#[derive(Debug, Default)]
struct SessionQueue {
    pending: Vec<SessionTurn>,
    stats: SessionStats,
    closed: bool,
}

/// An in-memory `SessionStore`. Like [`InMemoryTraceStore`] it either applies each turn as it
/// is recorded ([`new`](Self::new)) or queues turns until `flush`
/// ([`with_queue_capacity`](Self::with_queue_capacity)).
#[derive(Debug, Clone)]
pub struct InMemorySessionStore {
    file: Arc<Mutex<SessionFile>>,
    queue: Arc<Mutex<SessionQueue>>,
    capacity: Option<usize>,
}

impl Default for InMemorySessionStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Apply one turn to the sessions map (the upsert of the SQLite adapter). Returns `false`
/// when the session belongs to another workspace (nothing changed).
fn apply_turn(sessions: &mut BTreeMap<String, SessionRecord>, t: &SessionTurn) -> bool {
    match sessions.get_mut(t.session_id.as_str()) {
        Some(s) => {
            if s.workspace_path != t.workspace_path {
                return false;
            }
            if t.active_model.is_some() {
                s.active_model.clone_from(&t.active_model);
            }
            s.cost_so_far_usd += t.cost_usd;
            s.turn_count += 1;
            s.updated_at_us = s.updated_at_us.max(t.at_us);
            if s.parent_session_id.is_none() {
                s.parent_session_id = t.parent_session_id.as_ref().map(|p| p.as_str().to_owned());
            }
            if s.parent_tool_use_id.is_none() {
                s.parent_tool_use_id.clone_from(&t.parent_tool_use_id);
            }
            s.is_worker |= t.is_worker;
            true
        }
        None => {
            sessions.insert(
                t.session_id.as_str().to_owned(),
                SessionRecord {
                    id: t.session_id.as_str().to_owned(),
                    workspace_path: t.workspace_path.clone(),
                    active_model: t.active_model.clone(),
                    cost_so_far_usd: t.cost_usd,
                    turn_count: 1,
                    created_at_us: t.at_us,
                    updated_at_us: t.at_us,
                    parent_session_id: t.parent_session_id.as_ref().map(|p| p.as_str().to_owned()),
                    parent_tool_use_id: t.parent_tool_use_id.clone(),
                    is_worker: t.is_worker,
                },
            );
            true
        }
    }
}

impl InMemorySessionStore {
    /// A store that applies each turn as it is recorded.
    #[must_use]
    pub fn new() -> Self {
        Self {
            file: Arc::new(Mutex::new(SessionFile::default())),
            queue: Arc::new(Mutex::new(SessionQueue::default())),
            capacity: None,
        }
    }

    /// A store whose queue holds at most `capacity` turns until `flush`.
    #[must_use]
    pub fn with_queue_capacity(capacity: usize) -> Self {
        Self {
            capacity: Some(capacity.max(1)),
            ..Self::new()
        }
    }

    /// A new handle (own queue and counters) on the same sessions.
    #[must_use]
    pub fn reopen(&self) -> Self {
        self.reopen_with(self.capacity)
    }

    /// As [`reopen`](Self::reopen), choosing the queue mode (`None` = apply at once).
    #[must_use]
    pub fn reopen_with(&self, capacity: Option<usize>) -> Self {
        Self {
            file: Arc::clone(&self.file),
            queue: Arc::new(Mutex::new(SessionQueue::default())),
            capacity: capacity.map(|c| c.max(1)),
        }
    }

    /// Stop accepting turns after applying the queued ones. Idempotent.
    pub fn close(&self) {
        let mut q = lock(&self.queue);
        self.apply_pending(&mut q);
        q.closed = true;
    }

    fn apply_pending(&self, q: &mut SessionQueue) {
        if q.pending.is_empty() {
            return;
        }
        let turns = std::mem::take(&mut q.pending);
        let mut f = lock(&self.file);
        for t in &turns {
            if apply_turn(&mut f.sessions, t) {
                q.stats.recorded += 1;
            } else {
                q.stats.workspace_conflicts += 1;
            }
        }
    }
}

#[async_trait]
impl SessionStore for InMemorySessionStore {
    fn record_turn(&self, turn: SessionTurn) -> Result<(), SessionError> {
        let mut q = lock(&self.queue);
        if q.closed {
            q.stats.failed += 1;
            return Err(SessionError::Unavailable(
                "the session store is closed".into(),
            ));
        }
        if let Some(cap) = self.capacity
            && q.pending.len() >= cap
        {
            q.stats.failed += 1;
            return Err(SessionError::Overflow);
        }
        q.pending.push(turn);
        if self.capacity.is_none() {
            self.apply_pending(&mut q);
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SessionError> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(SessionError::Unavailable(
                "the session store is closed".into(),
            ));
        }
        self.apply_pending(&mut q);
        Ok(())
    }

    async fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, SessionError> {
        Ok(lock(&self.file).sessions.get(id.as_str()).cloned())
    }

    async fn list(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, SessionError> {
        let f = lock(&self.file);
        let mut out: Vec<SessionRecord> = f
            .sessions
            .values()
            .filter(|s| workspace.is_none_or(|w| s.workspace_path == w))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            b.updated_at_us
                .cmp(&a.updated_at_us)
                .then_with(|| a.id.cmp(&b.id))
        });
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn children(&self, parent: &SessionId) -> Result<Vec<SessionRecord>, SessionError> {
        let f = lock(&self.file);
        let mut out: Vec<SessionRecord> = f
            .sessions
            .values()
            .filter(|s| s.parent_session_id.as_deref() == Some(parent.as_str()))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            a.created_at_us
                .cmp(&b.created_at_us)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    fn stats(&self) -> SessionStats {
        lock(&self.queue).stats
    }
}

// ---------------------------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Fingerprint {
    structural_sig: String,
    created_at_us: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    sample_size: u64,
    success_score_mean: f64,
    success_score_count: u64,
    sum_cost_usd_micros: i64,
    sum_latency_ms: f64,
    pricing_version_last: String,
    last_updated_at_us: i64,
}

/// One workspace's projection.
#[derive(Debug, Clone)]
struct Projection {
    schema_version: i64,
    fingerprints: BTreeMap<String, Fingerprint>,
    outcomes: BTreeMap<(String, String), Outcome>,
    embedding_cache_rows: u64,
}

impl Default for Projection {
    fn default() -> Self {
        Self {
            schema_version: PATTERN_SCHEMA_VERSION,
            fingerprints: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            embedding_cache_rows: 0,
        }
    }
}

impl Projection {
    /// Apply one observation (see the `PatternStore` contract).
    fn apply(&mut self, r: &PatternRecord, caps: &PatternCaps) -> Result<RecordResult, String> {
        let found = self
            .fingerprints
            .iter()
            .filter(|(_, f)| f.structural_sig == r.structural_sig)
            .min_by(|a, b| (a.1.created_at_us, a.0).cmp(&(b.1.created_at_us, b.0)))
            .map(|(id, _)| id.clone());
        let (fp_id, was_new) = match found {
            Some(id) => {
                if let Some(f) = self.fingerprints.get_mut(&id) {
                    f.created_at_us = f.created_at_us.min(r.at_us);
                }
                (id, false)
            }
            None => {
                if self.fingerprints.contains_key(&r.fingerprint_id) {
                    return Err(format!(
                        "fingerprint id {} already exists with another signature",
                        r.fingerprint_id
                    ));
                }
                self.fingerprints.insert(
                    r.fingerprint_id.clone(),
                    Fingerprint {
                        structural_sig: r.structural_sig.clone(),
                        created_at_us: r.at_us,
                    },
                );
                (r.fingerprint_id.clone(), true)
            }
        };
        let key = (fp_id.clone(), r.primary_model.clone());
        let sample_before = match self.outcomes.get_mut(&key) {
            Some(o) => {
                let before = o.sample_size;
                if let Some(s) = r.success_score {
                    o.success_score_mean = mean_add(o.success_score_mean, o.success_score_count, s);
                    o.success_score_count += 1;
                }
                o.sample_size += 1;
                o.sum_cost_usd_micros += r.cost_usd_micros;
                o.sum_latency_ms += r.latency_ms;
                if r.at_us >= o.last_updated_at_us {
                    o.pricing_version_last.clone_from(&r.pricing_version);
                }
                o.last_updated_at_us = o.last_updated_at_us.max(r.at_us);
                before
            }
            None => {
                self.outcomes.insert(
                    key,
                    Outcome {
                        sample_size: 1,
                        success_score_mean: r.success_score.unwrap_or(0.0),
                        success_score_count: u64::from(r.success_score.is_some()),
                        sum_cost_usd_micros: r.cost_usd_micros,
                        sum_latency_ms: r.latency_ms,
                        pricing_version_last: r.pricing_version.clone(),
                        last_updated_at_us: r.at_us,
                    },
                );
                0
            }
        };
        let (over_soft_cap, rows_auto_evicted) = self.enforce_caps(caps, r.at_us);
        Ok(RecordResult {
            fingerprint_id: fp_id,
            primary_model: r.primary_model.clone(),
            sample_size_before: sample_before,
            sample_size_after: sample_before + 1,
            was_new_fingerprint: was_new,
            over_soft_cap,
            rows_auto_evicted,
        })
    }

    /// The caps at time `now`: (over the soft cap, outcome rows evicted).
    fn enforce_caps(&mut self, caps: &PatternCaps, now: i64) -> (bool, u64) {
        let n = self.outcomes.len() as u64;
        if n <= caps.soft_outcomes {
            return (false, 0);
        }
        let cutoff = caps.age_cutoff(now);
        let before = self.outcomes.len();
        self.outcomes.retain(|_, o| o.last_updated_at_us >= cutoff);
        let mut evicted = (before - self.outcomes.len()) as u64;
        if n > caps.hard_outcomes {
            let left = n - evicted;
            if left > caps.soft_outcomes {
                let excess = (left - caps.soft_outcomes) as usize;
                let mut order: Vec<(i64, u64, (String, String))> = self
                    .outcomes
                    .iter()
                    .map(|(k, o)| (o.last_updated_at_us, o.sample_size, k.clone()))
                    .collect();
                order.sort();
                for (_, _, k) in order.into_iter().take(excess) {
                    self.outcomes.remove(&k);
                    evicted += 1;
                }
            }
        }
        if evicted > 0 {
            let used: HashSet<&String> = self.outcomes.keys().map(|(f, _)| f).collect();
            let orphans: Vec<String> = self
                .fingerprints
                .keys()
                .filter(|id| !used.contains(id))
                .cloned()
                .collect();
            for id in orphans {
                self.fingerprints.remove(&id);
            }
        }
        (n - evicted > caps.soft_outcomes, evicted)
    }
}

/// An in-memory `PatternStore`: one projection per workspace string. Clones share the data.
#[derive(Debug, Clone, Default)]
pub struct InMemoryPatternStore {
    caps: PatternCaps,
    workspaces: Arc<Mutex<BTreeMap<String, Projection>>>,
}

/// Why `workspace` cannot hold a store (`None` = it can): it must be an absolute path to an
/// existing directory that accepts a new file.
#[must_use]
pub fn unusable_workspace(workspace: &str) -> Option<String> {
    let ws = Path::new(workspace);
    if !ws.is_absolute() {
        return Some(format!("workspace {workspace} is not an absolute path"));
    }
    if !ws.is_dir() {
        return Some(format!(
            "workspace {workspace} is not a directory on this host"
        ));
    }
    let probe = ws.join(format!(".metis-write-probe.{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!("{workspace} is not writable: {e}")),
    }
}

impl InMemoryPatternStore {
    #[must_use]
    pub fn new(caps: PatternCaps) -> Self {
        Self {
            caps,
            workspaces: Arc::default(),
        }
    }

    /// Another handle on the same projections with different caps.
    #[must_use]
    pub fn with_caps(&self, caps: PatternCaps) -> Self {
        Self {
            caps,
            workspaces: Arc::clone(&self.workspaces),
        }
    }

    /// Stamp a workspace's store with `version` (tests: a store from a newer binary).
    pub fn set_schema_version(&self, workspace: &str, version: i64) {
        lock(&self.workspaces)
            .entry(workspace.to_owned())
            .or_default()
            .schema_version = version;
    }

    fn location(workspace: &str) -> String {
        format!("memory:{workspace}")
    }

    fn check_version(workspace: &str, p: &Projection) -> Result<(), PatternError> {
        if p.schema_version > PATTERN_SCHEMA_VERSION {
            return Err(PatternError::TooNew {
                location: Self::location(workspace),
                found: p.schema_version,
                supported: PATTERN_SCHEMA_VERSION,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl PatternStore for InMemoryPatternStore {
    async fn record(
        &self,
        workspace: &str,
        record: PatternRecord,
    ) -> Result<RecordOutcome, PatternError> {
        if let Some(reason) = unusable_workspace(workspace) {
            return Ok(RecordOutcome::Skipped { reason });
        }
        let mut all = lock(&self.workspaces);
        let p = all.entry(workspace.to_owned()).or_default();
        Self::check_version(workspace, p)?;
        // Work on a copy so a failed record changes nothing (one transaction).
        let mut next = p.clone();
        let res = next
            .apply(&record, &self.caps)
            .map_err(|message| PatternError::Unavailable {
                location: Self::location(workspace),
                message,
            })?;
        *p = next;
        Ok(RecordOutcome::Recorded(res))
    }

    async fn record_many(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> Result<u64, PatternError> {
        if unusable_workspace(workspace).is_some() {
            return Ok(0);
        }
        let mut all = lock(&self.workspaces);
        let p = all.entry(workspace.to_owned()).or_default();
        Self::check_version(workspace, p)?;
        // One transaction: all of the batch or none of it.
        let mut next = p.clone();
        for r in &records {
            next.apply(r, &self.caps)
                .map_err(|message| PatternError::Unavailable {
                    location: Self::location(workspace),
                    message,
                })?;
        }
        *p = next;
        Ok(records.len() as u64)
    }

    async fn replace_all(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> Result<u64, PatternError> {
        if let Some(reason) = unusable_workspace(workspace) {
            return Err(PatternError::Unavailable {
                location: Self::location(workspace),
                message: reason,
            });
        }
        let mut all = lock(&self.workspaces);
        let p = all.entry(workspace.to_owned()).or_default();
        Self::check_version(workspace, p)?;
        let mut next = Projection {
            embedding_cache_rows: p.embedding_cache_rows,
            ..Projection::default()
        };
        for r in &records {
            next.apply(r, &self.caps)
                .map_err(|message| PatternError::Unavailable {
                    location: Self::location(workspace),
                    message,
                })?;
        }
        *p = next;
        Ok(records.len() as u64)
    }

    async fn stats(&self, workspace: &str) -> Result<Option<PatternStats>, PatternError> {
        let all = lock(&self.workspaces);
        let Some(p) = all.get(workspace) else {
            return Ok(None);
        };
        Self::check_version(workspace, p)?;
        let mut models: BTreeMap<&str, ModelTotals> = BTreeMap::new();
        for ((_, model), o) in &p.outcomes {
            let m = models.entry(model).or_insert_with(|| ModelTotals {
                model: model.clone(),
                samples: 0,
                sum_cost_usd_micros: 0,
                sum_latency_ms: 0.0,
            });
            m.samples += o.sample_size;
            m.sum_cost_usd_micros += o.sum_cost_usd_micros;
            m.sum_latency_ms += o.sum_latency_ms;
        }
        let mut models: Vec<ModelTotals> = models.into_values().collect();
        models.sort_by(|a, b| {
            b.samples
                .cmp(&a.samples)
                .then_with(|| a.model.cmp(&b.model))
        });
        Ok(Some(PatternStats {
            location: Self::location(workspace),
            schema_version: p.schema_version,
            fingerprints: p.fingerprints.len() as u64,
            outcomes: p.outcomes.len() as u64,
            samples: models.iter().map(|m| m.samples).sum(),
            embedding_cache_rows: p.embedding_cache_rows,
            models,
            oldest_update_us: p.outcomes.values().map(|o| o.last_updated_at_us).min(),
            newest_update_us: p.outcomes.values().map(|o| o.last_updated_at_us).max(),
        }))
    }

    async fn outcomes(&self, workspace: &str) -> Result<Vec<OutcomeRow>, PatternError> {
        let all = lock(&self.workspaces);
        let Some(p) = all.get(workspace) else {
            return Ok(Vec::new());
        };
        Self::check_version(workspace, p)?;
        Ok(p.outcomes
            .iter()
            .filter_map(|((fp, model), o)| {
                let f = p.fingerprints.get(fp)?;
                Some(OutcomeRow {
                    fingerprint_id: fp.clone(),
                    structural_sig: f.structural_sig.clone(),
                    primary_model: model.clone(),
                    sample_size: o.sample_size,
                    success_score_mean: o.success_score_mean,
                    success_score_count: o.success_score_count,
                    sum_cost_usd_micros: o.sum_cost_usd_micros,
                    sum_latency_ms: o.sum_latency_ms,
                    pricing_version_last: o.pricing_version_last.clone(),
                    last_updated_at_us: o.last_updated_at_us,
                })
            })
            .collect())
    }
}
