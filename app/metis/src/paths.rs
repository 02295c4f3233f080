//! Resolution of store locations from `--data-dir`, `--db-path`, `--keystore`, `--store` and
//! the `--database-*` flags.

use crate::cli::{DatabaseArgs, StorageArgs};
use anyhow::Context;
use metis_ports::storage::StorageBackend;
use std::path::PathBuf;
use std::sync::Arc;

/// Resolved file locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub data_dir: PathBuf,
    /// Main store file: `metis.db` (SQLite), or `metis.redb` with `--store redb` (with
    /// `--store postgres` a label the backend ignores: the store is the database).
    pub db: PathBuf,
    /// JSON keystore.
    pub keystore: PathBuf,
    /// Backend of the main store at `db` (`--store`).
    pub store: crate::store::StoreKind,
    /// The database of a server engine (`--database-url`, pool size, statement timeout).
    pub database: DatabaseArgs,
}

impl Paths {
    /// Defaults: `~/.metis`, `<data-dir>/metis.db`, `<data-dir>/gateway/keys.json`.
    ///
    /// # Errors
    /// When no `--data-dir` is given and `HOME` is unset.
    pub fn resolve(args: &StorageArgs) -> anyhow::Result<Paths> {
        let data_dir = match &args.data_dir {
            Some(d) => d.clone(),
            None => {
                let home = std::env::var_os("HOME")
                    .context("HOME is not set; pass --data-dir (or METIS_GATEWAY_DATA_DIR)")?;
                PathBuf::from(home).join(".metis")
            }
        };
        let store = args.store.unwrap_or_default();
        Ok(Paths {
            store,
            db: args
                .db_path
                .clone()
                .unwrap_or_else(|| data_dir.join(store.main_file())),
            keystore: args
                .keystore
                .clone()
                .unwrap_or_else(|| data_dir.join("gateway").join("keys.json")),
            data_dir,
            database: args.database.clone(),
        })
    }

    /// The backend of the main store.
    ///
    /// # Errors
    /// As [`crate::store::StoreKind::backend`].
    pub fn backend(&self) -> anyhow::Result<Arc<dyn StorageBackend>> {
        self.store.backend(&self.database)
    }

    /// Where the main store is, for messages (a database URL has its password hidden).
    #[must_use]
    pub fn location(&self) -> String {
        crate::store::location(self.store, &self.db, &self.database)
    }
}
