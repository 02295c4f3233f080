//! The storage backend port: everything the application needs from one storage engine, so
//! that choosing SQLite, redb (or a later engine) happens in exactly one place and every
//! command and the gateway speak only to this port.
//!
//! A backend is a factory. It opens its main store for serving ([`MainStore`]: the event
//! sink, spend and usage queries, and the session store riding the same writer), opens it
//! read-only ([`StoreReader`]) or as a copy destination ([`StoreImport`]), gives the key
//! store kept in the main store, the per-workspace pattern stores ([`PatternFiles`] for their
//! offline side), and the maintenance operations (backup, restore, status, retention,
//! compaction, schema migrations).
//!
//! A server engine (PostgreSQL) is bound to its database when it is built: it ignores the
//! `db`/`path` arguments of the main store's methods (the app passes the data-dir path a file
//! engine would use) and recognizes no file; `backup`/`restore` still name files.
//!
//! Contract (every backend):
//! - Nothing here changes a store that was written by a newer binary: every operation refuses
//!   it (`TooNew`), untouched.
//! - Maintenance and transfer calls are blocking (file and engine I/O); callers run them off
//!   the async runtime. Serving ports ([`MainStore`], [`KeyStore`], [`PatternStore`]) are
//!   async as everywhere else.
//! - Events are copied as stored: an imported audit event keeps its payload byte-for-byte, so
//!   the destination's audit chain verifies with the same length.
//! - Audit events are never deleted by retention.
//! - A failed backup, restore or import leaves no partial file under the destination name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use metis_domain::audit::BrokenLink;
use metis_domain::backup::{BackupMeta, RestoreSummary};
use metis_domain::events::Event;
use metis_domain::keys::KeyRecord;
use metis_domain::patterns::{PatternCaps, PatternRecord};
use metis_domain::sessions::SessionRecord;
use metis_domain::spend::SpendState;
use metis_domain::time::Timestamp;

use crate::admission::{KeyRateLimiter, SpendAdmission};

use crate::keys::{KeyStore, KeyStoreError};
use crate::patterns::{
    FingerprintRow, OutcomeRow, PatternError, PatternStats, PatternStore, RecordOutcome,
};
use crate::sessions::SessionStore;
use crate::trace::{
    EventRow, EventSink, KeySpend, SinkStats, TraceError, TraceQuery, UsageGroup, UsageRow,
};

/// Progress callback: `(done, total)` in the operation's unit (bytes or rows).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// A progress callback that ignores its arguments.
pub fn no_progress(_done: u64, _total: u64) {}

/// Why a maintenance operation did not complete. Nothing was changed for `Refused` and
/// `TooNew`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaintenanceError {
    /// A precondition failed (the message says which and what to do).
    Refused(String),
    /// The file was written by a newer binary.
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// An I/O or engine failure.
    Failed(String),
}

impl std::fmt::Display for MaintenanceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaintenanceError::Refused(m) | MaintenanceError::Failed(m) => f.write_str(m),
            MaintenanceError::TooNew {
                path,
                found,
                supported,
            } => write!(
                f,
                "{} has schema version {found}, newer than this binary supports ({supported}); \
                 use a newer metis (this one never downgrades a file)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for MaintenanceError {}

/// The state of a main store (`metis trace status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    pub path: PathBuf,
    pub schema_version: i64,
    /// The schema version this binary writes.
    pub supported_version: i64,
    pub events: u64,
    pub oldest_event_us: Option<i64>,
    pub newest_event_us: Option<i64>,
    /// Events with `timestamp_us > now - 5 min` (the runbook's liveness check).
    pub events_last_5_min: u64,
    pub audit_events: u64,
    pub sessions: u64,
    pub file_bytes: u64,
    /// Bytes of not-yet-checkpointed log (0 for engines without one).
    pub wal_bytes: u64,
}

/// Retention counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneCounts {
    pub rows_eligible: u64,
    pub rows_audit_exempt: u64,
    pub rows_deleted: u64,
    /// Oldest event that stays (after the prune, or that would stay for a dry run).
    pub oldest_kept_us: Option<i64>,
}

/// How a prune deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneOptions {
    /// Rows per transaction (default [`metis_domain::retention::PRUNE_BATCH_ROWS`]).
    pub batch_rows: u32,
    /// Pause between batches, so a live writer gets the lock (default 5 ms).
    pub pause: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            batch_rows: metis_domain::retention::PRUNE_BATCH_ROWS,
            pause: Duration::from_millis(5),
        }
    }
}

/// Bytes before and after a compaction (file plus log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl CompactReport {
    #[must_use]
    pub fn reclaimed(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

/// A schema migration: where the file is, where it goes, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationPlan {
    pub path: PathBuf,
    pub current: i64,
    pub target: i64,
    pub steps: Vec<String>,
}

impl MigrationPlan {
    #[must_use]
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty()
    }
}

/// The versioned schemas of a main store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// The events (trace) tables.
    Trace,
    /// The sessions tables.
    Sessions,
}

/// One file with a versioned schema that `metis … migrate` brings to this binary's version.
///
/// Contract: `plan` MUST NOT change the file; `apply` MUST apply every planned step in one
/// transaction and be idempotent (a second plan has no steps); neither ever lowers a version.
pub trait Migratable: Send + Sync {
    /// The file.
    fn path(&self) -> &Path;

    /// The steps that would bring the file to this binary's version.
    ///
    /// # Errors
    /// `Refused` when the file is missing; `TooNew`; `Failed` on engine errors.
    fn plan(&self) -> Result<MigrationPlan, MaintenanceError>;

    /// Apply the plan; returns what was applied.
    ///
    /// # Errors
    /// As `plan`; on error nothing was applied.
    fn apply(&self) -> Result<MigrationPlan, MaintenanceError>;

    /// A consistent copy of the file at `dest` (the safety copy taken before `apply`).
    ///
    /// # Errors
    /// `Refused` when `dest` exists; `Failed` on I/O errors (no partial file is left).
    fn backup(&self, dest: &Path, progress: Progress<'_>) -> Result<(), MaintenanceError>;
}

/// How the serving process opens its main store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// The gateway itself (not a CLI command): hold whatever lock tells `metis restore`
    /// that a server is using the file.
    pub gateway: bool,
    /// Longest time an accepted event may wait before its batch is committed.
    pub commit_deadline: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            gateway: false,
            commit_deadline: crate::queue::DEFAULT_COMMIT_DEADLINE,
        }
    }
}

/// The opened main store of a backend: the trace sink and queries, and the session store
/// sharing its writer.
#[async_trait]
pub trait MainStore: EventSink + TraceQuery {
    /// The session store riding this store's writer.
    fn sessions(&self) -> Arc<dyn SessionStore>;

    /// Stop accepting events, drain the queue and stop the writer. MUST be idempotent; later
    /// `emit`s are counted as failed. Returns the final counters.
    async fn shutdown(&self) -> SinkStats;

    /// Blocking form of [`shutdown`](Self::shutdown), for commands that run off the runtime.
    fn close(&self) -> SinkStats;
}

/// The writer lifecycle of an adapter's trace store, from which [`MainStoreOf`] assembles a
/// [`MainStore`].
#[async_trait]
pub trait WriterLifecycle: Send + Sync {
    /// As [`MainStore::shutdown`].
    async fn shutdown(&self) -> SinkStats;

    /// As [`MainStore::close`].
    fn close(&self) -> SinkStats;

    /// The store's main file (its size is reported in `/metrics`).
    fn file(&self) -> &Path;
}

/// A [`MainStore`] assembled from an adapter's trace store and the session store sharing its
/// writer: the delegation every backend would otherwise write again.
pub struct MainStoreOf<T> {
    trace: T,
    sessions: Arc<dyn SessionStore>,
}

impl<T> MainStoreOf<T> {
    pub fn new(trace: T, sessions: Arc<dyn SessionStore>) -> Self {
        Self { trace, sessions }
    }
}

#[async_trait]
impl<T: EventSink + TraceQuery + WriterLifecycle> EventSink for MainStoreOf<T> {
    fn emit(&self, event: Event) {
        self.trace.emit(event);
    }

    async fn flush(&self) -> Result<(), TraceError> {
        self.trace.flush().await
    }

    fn stats(&self) -> SinkStats {
        self.trace.stats()
    }

    fn is_writable(&self) -> bool {
        self.trace.is_writable()
    }

    fn is_shared(&self) -> bool {
        self.trace.is_shared()
    }

    fn wal_bytes(&self) -> u64 {
        self.trace.wal_bytes()
    }

    fn db_bytes(&self) -> u64 {
        std::fs::metadata(self.trace.file()).map_or(0, |m| m.len())
    }
}

#[async_trait]
impl<T: EventSink + TraceQuery + WriterLifecycle> TraceQuery for MainStoreOf<T> {
    async fn spend_by_key(
        &self,
        day_start_us: i64,
        month_start_us: i64,
    ) -> Result<Vec<KeySpend>, TraceError> {
        self.trace.spend_by_key(day_start_us, month_start_us).await
    }

    async fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, TraceError> {
        self.trace.usage(since_us, until_us, group, filter).await
    }

    async fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<EventRow>, TraceError> {
        self.trace.audit_events(since_us, until_us, types).await
    }
}

#[async_trait]
impl<T: EventSink + TraceQuery + WriterLifecycle> MainStore for MainStoreOf<T> {
    fn sessions(&self) -> Arc<dyn SessionStore> {
        self.sessions.clone()
    }

    async fn shutdown(&self) -> SinkStats {
        self.trace.shutdown().await
    }

    fn close(&self) -> SinkStats {
        self.trace.close()
    }
}

/// Counts of a main store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreCounts {
    pub events: u64,
    pub sessions: u64,
    pub keys: u64,
}

/// A read-only view of an existing main store file. It MUST NOT create, stamp or change the
/// stored data, and MUST NOT block a gateway writing it.
pub trait StoreReader: Send + Sync {
    /// Events, sessions and keys stored.
    ///
    /// # Errors
    /// `Backend`/`Unavailable` when the store cannot be read.
    fn counts(&self) -> Result<StoreCounts, TraceError>;

    /// Up to `limit` events with an id greater than `after`, ordered by id, as stored.
    ///
    /// # Errors
    /// As `counts`.
    fn events_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<EventRow>, TraceError>;

    /// Every event of one type, ordered by id.
    ///
    /// # Errors
    /// As `counts`.
    fn events_of_type(&self, event_type: &str) -> Result<Vec<EventRow>, TraceError>;

    /// Audit events in `[since, until)` (`types` empty = every audit type), ordered by id.
    ///
    /// # Errors
    /// As `counts`.
    fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<EventRow>, TraceError>;

    /// Walk the audit chain in sequence order through [`metis_domain::audit::verify`]:
    /// `Ok(n)` chained events all intact, or the first broken link (a chained event that is
    /// no longer stored is a broken link).
    ///
    /// # Errors
    /// As `counts`.
    fn verify_audit_chain(&self) -> Result<Result<u64, BrokenLink>, TraceError>;

    /// Audit-type events without a chain link (written before the chain existed).
    ///
    /// # Errors
    /// As `counts`.
    fn count_unchained_audit(&self) -> Result<u64, TraceError>;

    /// One session.
    ///
    /// # Errors
    /// As `counts`.
    fn session(&self, id: &str) -> Result<Option<SessionRecord>, TraceError>;

    /// Sessions, most recently updated first (then id), optionally of one workspace, at most
    /// `limit`.
    ///
    /// # Errors
    /// As `counts`.
    fn sessions(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, TraceError>;

    /// Direct children of `parent`, oldest first (then id).
    ///
    /// # Errors
    /// As `counts`.
    fn session_children(&self, parent: &str) -> Result<Vec<SessionRecord>, TraceError>;

    /// Every stored key, in insertion order (empty when the store holds none).
    ///
    /// # Errors
    /// `Corrupt`/`Io` when the keys cannot be read.
    fn keys(&self) -> Result<Vec<KeyRecord>, KeyStoreError>;

    /// The budgets and model groups stored with the keys (none when the store holds none).
    ///
    /// # Errors
    /// `Corrupt`/`Io` when they cannot be read.
    fn policies(&self) -> Result<metis_domain::budgets::Policies, KeyStoreError>;
}

/// A new main store being filled by `metis migrate-store`. Created with its schema and
/// version stamp; rows are inserted as given.
pub trait StoreImport: Send {
    /// Insert events as stored (ids, timestamps, payloads byte-for-byte, audit links kept),
    /// in one transaction. Returns how many were inserted.
    ///
    /// # Errors
    /// `Backend` on a duplicate id or an engine error; nothing of this call is kept.
    fn insert_events(&mut self, rows: &[EventRow]) -> Result<u64, TraceError>;

    /// Insert session rows as stored (no recomputation), in one transaction.
    ///
    /// # Errors
    /// As `insert_events`.
    fn insert_sessions(&mut self, rows: &[SessionRecord]) -> Result<u64, TraceError>;

    /// Insert key records as stored.
    ///
    /// # Errors
    /// `Duplicate` on an existing id or hash; `Io` on engine errors.
    fn insert_keys(&mut self, keys: &[KeyRecord]) -> Result<u64, KeyStoreError>;

    /// Store the budgets and model groups as given (the destination holds none).
    ///
    /// # Errors
    /// `Corrupt` when they fail validation; `Io` on engine errors.
    fn insert_policies(
        &mut self,
        policies: &metis_domain::budgets::Policies,
    ) -> Result<(), KeyStoreError>;
}

/// Where a backend keeps the per-workspace pattern stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternPlace {
    /// `<workspace>/.metis/<file>`.
    InWorkspace,
    /// `<dir>/<hash of the workspace path>/<file>` (read-only workspaces, containers).
    Dir(PathBuf),
}

impl PatternPlace {
    /// `Dir` under `--patterns-dir` when given, else `InWorkspace`.
    #[must_use]
    pub fn from_dir(dir: Option<PathBuf>) -> Self {
        dir.map_or(Self::InWorkspace, Self::Dir)
    }
}

/// The rows of one pattern store, for copying between backends: fingerprints without their
/// embeddings (by id) and every outcome (by fingerprint, then model).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatternDump {
    pub fingerprints: Vec<FingerprintRow>,
    pub outcomes: Vec<OutcomeRow>,
}

/// A backend's per-workspace pattern stores, blocking: the rules of [`PatternStore`] (which
/// serves them to the async gateway, e.g. through the storage kit's blocking-pool wrapper),
/// plus the offline operations (rebuild, copy, migrate).
pub trait PatternFiles: Send + Sync {
    /// The store file of `workspace`.
    fn path(&self, workspace: &str) -> PathBuf;

    /// As [`PatternStore::record`].
    ///
    /// # Errors
    /// As [`PatternStore::record`].
    fn record(
        &self,
        workspace: &str,
        record: &PatternRecord,
    ) -> Result<RecordOutcome, PatternError>;

    /// As [`PatternStore::record_many`], in one transaction (0 when the workspace is skipped).
    ///
    /// # Errors
    /// As [`PatternStore::record`]; on error nothing of this batch is applied.
    fn record_many(&self, workspace: &str, records: &[PatternRecord]) -> Result<u64, PatternError>;

    /// Summary of the store (`None` when it does not exist).
    ///
    /// # Errors
    /// `TooNew`, `Unavailable` or `Backend`.
    fn stats(&self, workspace: &str) -> Result<Option<PatternStats>, PatternError>;

    /// As [`PatternStore::outcomes`].
    ///
    /// # Errors
    /// As `stats`.
    fn outcomes(&self, workspace: &str) -> Result<Vec<OutcomeRow>, PatternError>;

    /// Replace the projection with `records` applied in order, in one transaction (the
    /// embedding cache is kept). Returns how many were applied.
    ///
    /// # Errors
    /// As `stats`; on error the previous projection is kept.
    fn replace_all(
        &self,
        workspace: &str,
        records: &[PatternRecord],
        progress: Progress<'_>,
    ) -> Result<u64, PatternError>;

    /// Every row (empty when the store does not exist).
    ///
    /// # Errors
    /// As `stats`.
    fn export(&self, workspace: &str) -> Result<PatternDump, PatternError>;

    /// Create the store (with its schema) when missing and insert `dump` as given, in one
    /// transaction. The store MUST hold no outcome before.
    ///
    /// # Errors
    /// As `stats`; a duplicate row; nothing of this call is kept.
    fn import(&self, workspace: &str, dump: &PatternDump) -> Result<(), PatternError>;

    /// The store of `workspace` as a migration target.
    fn migration(&self, workspace: &str) -> Box<dyn Migratable>;
}

/// The admission guards of a store that several gateways share (`--store postgres`): spend
/// caps and per-key rate limits held in the store, so they hold across the fleet.
#[derive(Clone)]
pub struct FleetAdmission {
    pub spend: Arc<dyn SpendAdmission>,
    pub per_key: Arc<dyn KeyRateLimiter>,
    /// Token-per-minute buckets (key, user, team).
    pub tokens: Arc<dyn crate::token_limits::TokenRateLimiter>,
}

impl std::fmt::Debug for FleetAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetAdmission")
    }
}

/// One storage engine (see the module contract).
pub trait StorageBackend: Send + Sync + std::fmt::Debug {
    /// The engine's name (`sqlite`, `redb`), as the `--store` flag spells it.
    fn name(&self) -> &'static str;

    /// The main store's file name in the data directory.
    fn main_file(&self) -> &'static str;

    /// Whether `path` is an existing main store of this engine (by its content, not its
    /// name).
    fn recognizes(&self, path: &Path) -> bool;

    /// Whether the main store at `path` exists (a server engine: whether its database holds
    /// one). The default is for file engines: `path` is a file.
    fn main_exists(&self, path: &Path) -> bool {
        path.is_file()
    }

    /// Open (creating when missing) the main store for serving. Blocking.
    ///
    /// # Errors
    /// `TooNew` for a file from a newer binary; `Unavailable`/`Backend` when it cannot be
    /// opened or created.
    fn open_main(
        &self,
        path: &Path,
        options: ServeOptions,
    ) -> Result<Arc<dyn MainStore>, TraceError>;

    /// The key store kept in the main store at `path` (`--keystore store`).
    fn key_store(&self, path: &Path) -> Arc<dyn KeyStore>;

    /// The per-workspace pattern stores, for serving.
    fn pattern_store(&self, place: &PatternPlace, caps: PatternCaps) -> Arc<dyn PatternStore>;

    /// The per-workspace pattern stores, offline.
    fn pattern_files(&self, place: &PatternPlace) -> Box<dyn PatternFiles>;

    /// Open an existing main store read-only.
    ///
    /// # Errors
    /// `Unavailable` when the file is missing or cannot be opened; `TooNew`.
    fn open_reader(&self, path: &Path) -> Result<Box<dyn StoreReader>, TraceError>;

    /// Create a new main store at `path` (schema and version stamp) to copy into. An existing
    /// empty store is accepted.
    ///
    /// # Errors
    /// `Unavailable`/`Backend` when it cannot be created or opened; `TooNew`.
    fn create_import(&self, path: &Path) -> Result<Box<dyn StoreImport>, TraceError>;

    /// Hot backup of the main store `db` into the new file `dest` (and `<dest>.meta`): a
    /// consistent snapshot while a gateway keeps writing; never overwrites.
    ///
    /// # Errors
    /// `Refused` when `db` is missing or `dest` exists; `TooNew`; `Failed`.
    fn backup(
        &self,
        db: &Path,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<BackupMeta, MaintenanceError>;

    /// Replace the main store `db` with the backup `src`, after every check passed on a copy
    /// (checksum, schema version, engine integrity); `db` stays untouched until then.
    ///
    /// # Errors
    /// `Refused` for a failed check (nothing changed); `Failed` on I/O or engine errors.
    fn restore(
        &self,
        src: &Path,
        db: &Path,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<RestoreSummary, MaintenanceError>;

    /// The state of the main store `db` (read-only).
    ///
    /// # Errors
    /// `Refused` when missing; `TooNew`; `Failed`.
    fn status(&self, db: &Path, now: Timestamp) -> Result<StoreStatus, MaintenanceError>;

    /// What a prune with `cutoff` would delete (read-only).
    ///
    /// # Errors
    /// As `status`.
    fn prune_dry_run(&self, db: &Path, cutoff: Timestamp) -> Result<PruneCounts, MaintenanceError>;

    /// Delete non-audit events older than `cutoff` in bounded batches (one short transaction
    /// each, a pause between), so a live writer waits for at most one batch.
    ///
    /// # Errors
    /// As `status`; batches committed before an error stay deleted.
    fn prune(
        &self,
        db: &Path,
        cutoff: Timestamp,
        options: PruneOptions,
        progress: Progress<'_>,
    ) -> Result<PruneCounts, MaintenanceError>;

    /// Compact the file and report the bytes reclaimed.
    ///
    /// # Errors
    /// As `status`; `Refused` when the engine needs the file to itself and it is in use.
    fn compact(&self, db: &Path) -> Result<CompactReport, MaintenanceError>;

    /// One schema of the main store `db` as a migration target.
    fn migration(&self, db: &Path, schema: Schema) -> Box<dyn Migratable>;

    /// The admission guards kept in the store, for an engine that several gateway processes
    /// share; `None` (the file engines: one process owns the file) keeps them in the process.
    /// `seed` holds the balances read from the trace at start: the store takes those of the
    /// accounts it has never seen (the first start on it) and keeps its own for the others.
    /// Blocking.
    ///
    /// # Errors
    /// `Unavailable` when the store cannot be reached; `TooNew`.
    fn fleet_admission(
        &self,
        seed: &[(Arc<str>, SpendState)],
        max_buckets: usize,
    ) -> Result<Option<FleetAdmission>, TraceError> {
        let _ = (seed, max_buckets);
        Ok(None)
    }
}
