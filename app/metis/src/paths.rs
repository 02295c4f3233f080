//! Resolution of store locations from `--data-dir`, `--db-path` and `--keystore`.

use crate::cli::StorageArgs;
use anyhow::Context;
use std::path::PathBuf;

/// Resolved file locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub data_dir: PathBuf,
    /// Main store file: `metis.db` (SQLite), or `metis.redb` with `--store redb`.
    pub db: PathBuf,
    /// JSON keystore.
    pub keystore: PathBuf,
    /// Backend of the main store at `db` (`--store`).
    pub store: crate::store::StoreKind,
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
        })
    }
}
