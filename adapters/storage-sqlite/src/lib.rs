//! `metis-storage-sqlite`: the SQLite adapters over `metis.db`: the trace store (`events`, with
//! the audit chain and the read-side `TraceQuery`) and the main-store keystore
//! (`gateway_keys`, `--keystore store`).
//!
//! Invariants:
//! - Table, PRAGMAs and `PRAGMA user_version` match the original gateway (`reference/storage.md`
//!   §2); the index set is the original's minus what no query needs ([`RETIRED_EVENT_INDEXES`],
//!   evidence in BENCHMARKS.md), and `PRAGMA user_version` only ever moves up; a file from a newer binary is refused
//!   untouched ([`TRACE_SCHEMA_VERSION`]).
//! - Request paths never wait on disk: [`SqliteTraceStore`] queues events for one writer thread
//!   that group-commits them; overflow and write failures are counted and logged.
//! - Bulk copies between backends (`metis migrate-store`) go through [`transfer`], so the
//!   app needs no SQL of its own.
//! - Depends only on `metis-ports`, `metis-domain` and `metis-storage-kit` (the plumbing shared with
//!   the redb adapter).

mod backend;
mod keystore;
mod lock;
pub mod ops;
pub mod patterns;
pub mod plans;
mod query;
mod reader;
mod schema;
mod sessions;
mod store;
pub mod transfer;
mod writer;

pub use backend::SqliteBackend;
pub use keystore::SqliteKeyStore;
pub use lock::{LockError, WriterLock, lock_path};
pub use reader::{StoredEvent, TraceReader, schema_version};
pub use schema::{
    EVENT_INDEX_NAMES, RETIRED_EVENT_INDEXES, RetiredIndex, START_SWITCH_MAX_ROWS,
    TRACE_SCHEMA_VERSION,
};
pub use sessions::{
    SESSIONS_SCHEMA_VERSION, SessionReader, SessionStep, SqliteSessionStore, migrate_sessions,
    sessions_schema_level, sessions_steps,
};
pub use store::{SqliteTraceStore, WriterOptions};
