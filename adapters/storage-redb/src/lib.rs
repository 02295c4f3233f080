//! `metis-storage-redb`: the redb adapters of every storage port, the alternate backend chosen
//! with `--store redb`.
//!
//! Files: `metis.redb` (trace events with their secondary indexes, the audit chain, sessions,
//! keys for `--keystore store`) beside `metis.db` in the data directory, and
//! `<workspace>/.metis/patterns.redb` per workspace.
//!
//! Invariants:
//! - Same behaviour as the SQLite adapters, proven by the storage contract suite
//!   (`metis-tests`, `tests/tests/suite/storage_contract.rs`), which runs unchanged against both and the
//!   in-memory fakes.
//! - A version marker in a metadata table (`meta.schema_version`, `store_meta.schema_version`)
//!   is never lowered, and a file from a newer binary is refused untouched.
//! - Every write and its secondary index entries happen in one redb write transaction; the
//!   request path never waits on disk (events and session turns go through a batching writer
//!   thread); all blocking work runs off the async runtime.
//! - Depends only on `metis-ports`, `metis-domain` and `metis-storage-kit` (plus redb and serde).

mod backend;
mod db;
mod keys;
pub mod ops;
pub mod patterns;
pub mod query;
mod rows;
pub mod sessions;
mod trace;
mod writer;

pub use backend::RedbBackend;
pub use db::{
    Sharing, StoreError, TRACE_SCHEMA_VERSION, is_redb_file, open_shared, schema_version,
    stamp_schema_version,
};
pub use keys::{RedbKeyStore, overwrite_first_key_json};
pub use patterns::RedbPatternStore;
pub use rows::RowRef;
pub use sessions::RedbSessionStore;
pub use trace::{RedbOptions, RedbTraceStore};

/// The redb database handle the operations take (re-exported so callers need no direct redb
/// dependency).
pub use redb::Database;

/// The file name of the main redb store in the data directory.
pub const MAIN_FILE_NAME: &str = "metis.redb";
