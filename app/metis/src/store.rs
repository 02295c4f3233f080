//! The storage backend choice (`--store sqlite|redb`, `METIS_GATEWAY_STORE`): the one place
//! that names a storage adapter. Everything else in the binary speaks to the
//! [`StorageBackend`] port.
//!
//! Invariants:
//! - SQLite is the default; `redb` keeps the main store in `<data-dir>/metis.redb` (or
//!   `--db-path`) and pattern stores in `<workspace>/.metis/patterns.redb`.
//! - A command that reads an existing store uses the engine the file is (by its content),
//!   else the one named by `--store`, else SQLite ([`for_existing`]); pattern commands pick
//!   the engine whose store of the workspace exists, first match in [`StoreKind`] order.
//! - Keys follow `--keystore` (a JSON file, or `store` = the main store of the chosen
//!   backend); sessions and spend follow `--store`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::ValueEnum;
use metis_ports::storage::{MainStore, ServeOptions, StorageBackend};

use crate::paths::Paths;

/// The storage engines this binary carries, in the order they are tried when a file's
/// engine is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum StoreKind {
    /// SQLite (`metis.db`, `patterns.db`): the default.
    #[default]
    Sqlite,
    /// redb (`metis.redb`, `patterns.redb`).
    Redb,
}

impl StoreKind {
    /// The adapter behind this engine: the single selection point.
    #[must_use]
    pub fn backend(self) -> Arc<dyn StorageBackend> {
        match self {
            StoreKind::Sqlite => Arc::new(metis_storage_sqlite::SqliteBackend),
            StoreKind::Redb => Arc::new(metis_storage_redb::RedbBackend),
        }
    }

    /// `sqlite` or `redb`.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.backend().name()
    }

    /// The main store's file name in the data directory.
    #[must_use]
    pub fn main_file(self) -> &'static str {
        self.backend().main_file()
    }
}

/// The first engine (in declaration order) for which `probe` holds.
fn detect(probe: impl Fn(&dyn StorageBackend) -> bool) -> Option<StoreKind> {
    StoreKind::value_variants()
        .iter()
        .copied()
        .find(|k| probe(k.backend().as_ref()))
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend of an existing main store file: the engine the file is, else `flag`, else
/// SQLite.
#[must_use]
pub fn for_existing(db: &Path, flag: Option<StoreKind>) -> Arc<dyn StorageBackend> {
    detect(|b| b.recognizes(db))
        .or(flag)
        .unwrap_or_default()
        .backend()
}

/// The backend whose pattern store of `workspace` exists (under `place`), else SQLite.
#[must_use]
pub fn for_patterns(
    workspace: &str,
    place: &metis_ports::storage::PatternPlace,
) -> Arc<dyn StorageBackend> {
    detect(|b| b.pattern_files(place).path(workspace).exists())
        .unwrap_or_default()
        .backend()
}

/// Open (creating when missing) the main store at `paths.db` with the backend `paths.store`.
/// `gateway` = the serving process (SQLite: hold the shared writer lock so `metis restore`
/// refuses to replace the file under it).
///
/// # Errors
/// A file from a newer binary, or one that cannot be opened or created.
pub async fn open_main(
    paths: &Paths,
    gateway: bool,
    commit_deadline: std::time::Duration,
) -> anyhow::Result<Arc<dyn MainStore>> {
    let db = paths.db.clone();
    let backend = paths.store.backend();
    let options = ServeOptions {
        gateway,
        commit_deadline,
    };
    tokio::task::spawn_blocking(move || backend.open_main(&db, options))
        .await
        .context("trace store task failed")?
        .with_context(|| format!("cannot open trace store {}", paths.db.display()))
}
