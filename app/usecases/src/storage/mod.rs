//! Storage use cases: what the operator commands do to a store (retention, schema
//! migrations, audit reads, session trees, projection rebuilds, copying between backends),
//! written once against the [`StorageBackend`](metis_ports::storage::StorageBackend) port, so
//! every backend gets the same rules and the CLI only parses arguments and prints.
//!
//! Every function here is blocking (file and engine I/O behind the port): run it off the
//! async runtime.

pub mod audit;
pub mod migrate;
pub mod projection;
pub mod retention;
pub mod sessions;
pub mod transfer;

use std::path::{Path, PathBuf};

use metis_ports::keys::KeyStoreError;
use metis_ports::patterns::PatternError;
use metis_ports::storage::{MaintenanceError, StorageBackend};
use metis_ports::trace::TraceError;

/// Why a storage command did not complete; the message names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A precondition failed; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Maintenance(#[from] MaintenanceError),
    /// The main store could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: TraceError },
    /// Reading or writing the main store failed.
    #[error("{what}: {source}")]
    Trace {
        what: &'static str,
        source: TraceError,
    },
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    #[error(transparent)]
    Patterns(#[from] PatternError),
}

impl StorageError {
    /// A `Trace` error saying what was being done.
    pub(crate) fn trace(what: &'static str) -> impl FnOnce(TraceError) -> StorageError {
        move |source| StorageError::Trace { what, source }
    }
}

/// Refuse a main store that does not exist (every command but the ones that create it).
///
/// # Errors
/// `Refused` naming the file (or the database).
pub fn require_store(backend: &dyn StorageBackend, db: &Path) -> Result<(), StorageError> {
    if backend.main_exists(db) {
        Ok(())
    } else {
        Err(StorageError::Refused(format!(
            "trace database {} does not exist",
            db.display()
        )))
    }
}

#[cfg(test)]
mod tests;
