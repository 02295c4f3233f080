//! The storage contract suite: one `pub async fn` per documented clause of each storage port
//! (`EventSink`, `TraceQuery`, `KeyStore`, `SessionStore`, `PatternStore`), written once and
//! run against every backend (SQLite, redb and the in-memory fakes) by
//! `tests/tests/suite/storage_contract.rs`. The admission ports have their own list
//! ([`admission`], `tests/tests/suite/admission_contract.rs`).
//!
//! Invariants:
//! - A contract function sees a backend only through [`Backend`] (the `KeyStore` clauses
//!   through [`KeyBackend`], so a key-store-only backend runs them too; the `PatternStore`
//!   clauses through [`PatternBackend`], which PostgreSQL's pattern tables implement on their
//!   own in `patterns_postgres`, run by `tests/tests/suite/patterns_postgres.rs`): the ports
//!   themselves plus a few backend-specific hooks (stamp a newer schema version, read the
//!   version marker, the crash writer). Nothing in a contract function names an adapter.
//! - Each test gets a fresh backend (its own temp directory), so tests run in parallel.
//! - Each function's doc comment is the clause it proves, quoted or paraphrased from the port.

pub mod admission;
pub mod crash;
pub mod fixtures;
pub mod keys;
pub mod maintenance;
pub mod patterns;
pub mod patterns_postgres;
pub mod sessions;
pub mod token_limits;
pub mod trace;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use metis_domain::patterns::PatternCaps;
use metis_ports::keys::KeyStore;
use metis_ports::patterns::PatternStore;
use metis_ports::sessions::SessionStore;
use metis_ports::trace::{EventSink, TraceError, TraceQuery};

pub use crash::*;
pub use keys::*;
pub use maintenance::*;
pub use patterns::*;
pub use sessions::*;
pub use trace::*;

/// An opened main store: the trace sink and queries, and the session store that shares its
/// writer (as both adapters do).
pub struct Opened {
    pub sink: Arc<dyn EventSink>,
    pub query: Arc<dyn TraceQuery>,
    pub sessions: Arc<dyn SessionStore>,
    close: Option<Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").finish_non_exhaustive()
    }
}

impl Opened {
    /// Bundle the handles with the function that shuts the writer down.
    pub fn new(
        sink: Arc<dyn EventSink>,
        query: Arc<dyn TraceQuery>,
        sessions: Arc<dyn SessionStore>,
        close: impl FnOnce() -> BoxFuture<'static, ()> + Send + 'static,
    ) -> Self {
        Self {
            sink,
            query,
            sessions,
            close: Some(Box::new(close)),
        }
    }

    /// Stop the writer (draining its queue) and release the store, like a clean exit.
    pub async fn close(mut self) {
        if let Some(close) = self.close.take() {
            close().await;
        }
    }
}

/// A key store under test, with its own temp directory: what the `KeyStore` clauses need.
/// Every [`Backend`] is one (its keys live in the main store); a key-store-only backend (the
/// JSON `FileKeyStore`) is only this.
#[async_trait]
pub trait KeyBackend: Send + Sync {
    /// A new handle on the stored keys (each call: another handle, same data).
    fn keys(&self) -> Arc<dyn KeyStore>;

    /// Damage the stored key set (which must hold at least one key): the first record no
    /// longer validates because its `secret_hash` is not 64 hex digits.
    async fn corrupt_first_key(&self);

    /// Make the key store impossible to write (a read-only file, as a mounted Secret), or
    /// writable again.
    async fn set_keys_read_only(&self, read_only: bool);
}

/// A storage backend under test, with its own temp directory: every storage port.
#[async_trait]
pub trait Backend: KeyBackend {
    /// `sqlite`, `redb` or `fake`.
    fn kind(&self) -> &'static str;

    /// Open the main store (creating it on first use). `queue_capacity` bounds the writer
    /// queue (`None` = the production default). A previous handle must be closed first.
    async fn open(&self, queue_capacity: Option<usize>) -> Result<Opened, TraceError>;

    /// The version marker of the main store (`None` when it does not exist). Store closed.
    async fn trace_version(&self) -> Option<i64>;

    /// Stamp the (closed) main store as written by a binary with schema version `version`.
    async fn stamp_trace_version(&self, version: i64);

    /// A new pattern store (fresh handle, same data) with the given caps.
    fn patterns(&self, caps: PatternCaps) -> Arc<dyn PatternStore>;

    /// Stamp the pattern store of `workspace` (which must exist, no handle open) with
    /// `version`.
    async fn stamp_pattern_version(&self, workspace: &str, version: i64);

    /// A fresh, writable workspace directory (absolute path).
    fn workspace(&self, name: &str) -> String;

    /// The data directory (temp dir) of this backend.
    fn dir(&self) -> PathBuf;

    /// The backend as the storage port, and its main store file (`None` for the in-memory
    /// fakes, which have no files to back up, restore or copy).
    fn storage(&self) -> Option<(Arc<dyn metis_ports::storage::StorageBackend>, PathBuf)>;

    /// How to run the crash writer in a child process: `(backend name, store path)`, or
    /// `None` for a backend without a file (the fake simulates the crash in-process).
    fn crash_target(&self) -> Option<(&'static str, PathBuf)>;
}
