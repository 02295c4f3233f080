//! [`RedbKeyStore`]: the `KeyStore` port over the main redb file (`--keystore store` with
//! `--store redb`).
//!
//! Invariants:
//! - Keys live in `gateway_keys` (position -> the full `KeyRecord` JSON, unknown fields
//!   kept); the store "exists" once `meta.keys_generation` is set by the first write.
//! - Every write is one redb write transaction (read, check, write, bump the generation):
//!   redb allows one writer at a time, across processes too, so no update is lost and readers
//!   see the old set or the new one.
//! - `update` validates every resulting record and the absence of duplicate ids or hashes
//!   before writing; nothing is written on any error.
//! - Budgets and model groups live in `meta.key_policies` (the `Policies` JSON), written by
//!   the same kind of transaction and bumping the same generation.
//! - `version` is `<store_id>:<generation>` (a random id minted with the store, so a replaced
//!   file is told apart).
//! - Reads never create the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use metis_domain::budgets::Policies;
use metis_domain::keys::{KeyRecord, validate_key_set};
use metis_ports::keys::{KeyEdit, KeyStoreError, PolicyEdit};
use metis_storage_kit::keys::{
    Edited, apply_edit, apply_policy_edit, parse_policies, policies_json, read_only_file,
    record_to_insert,
};
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use crate::db::{
    KEYS, META, META_KEY_POLICIES, META_KEYS_GENERATION, META_STORE_ID, Sharing, StoreError,
    describe_open_error, open_shared, random_id,
};

/// Gateway keys in the redb file at a path. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedbKeyStore {
    path: PathBuf,
    sharing: Sharing,
}

impl RedbKeyStore {
    /// A store in the redb file at `path` (normally `metis.redb`). Nothing is opened until
    /// first use; the first write creates the file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            sharing: Sharing::default(),
        }
    }

    /// The sharing mode used when this store opens the file first in this process.
    #[must_use]
    pub fn with_sharing(mut self, sharing: Sharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn location(&self) -> String {
        format!("store:{}", self.path.display())
    }

    fn err(&self, op: &str, e: &StoreError) -> KeyStoreError {
        match e {
            StoreError::TooNew { .. } => KeyStoreError::Corrupt {
                location: self.location(),
                message: e.to_string(),
            },
            _ => KeyStoreError::Io {
                location: self.location(),
                message: format!("{op}: {}", describe_open_error(&self.path, e)),
            },
        }
    }

    fn corrupt(&self, message: String) -> KeyStoreError {
        KeyStoreError::Corrupt {
            location: self.location(),
            message,
        }
    }

    fn not_found(&self) -> KeyStoreError {
        KeyStoreError::NotFound {
            location: self.location(),
        }
    }

    /// The database, or `None` when the file does not exist (reads never create it).
    fn existing(&self) -> Result<Option<Arc<Database>>, KeyStoreError> {
        if !self.path.exists() {
            return Ok(None);
        }
        open_shared(&self.path, self.sharing, false)
            .map(Some)
            .map_err(|e| self.err("cannot open the database", &e))
    }

    fn writable(&self) -> Result<Arc<Database>, KeyStoreError> {
        if let Some(why) = read_only_file(&self.path) {
            return Err(KeyStoreError::ReadOnly {
                location: self.location(),
                message: format!("{why}; make it writable or manage keys where it is"),
            });
        }
        open_shared(&self.path, self.sharing, true).map_err(|e| match e {
            StoreError::Redb(redb::Error::Io(io))
                if io.kind() == std::io::ErrorKind::PermissionDenied
                    || io.kind() == std::io::ErrorKind::ReadOnlyFilesystem =>
            {
                KeyStoreError::ReadOnly {
                    location: self.location(),
                    message: io.to_string(),
                }
            }
            other => self.err("cannot open the database", &other),
        })
    }

    /// Every stored record in position order, or `None` when the key store does not exist.
    fn read_all(
        &self,
        meta: &impl ReadableTable<&'static str, &'static str>,
        keys: &impl ReadableTable<u64, &'static str>,
    ) -> Result<Option<Vec<KeyRecord>>, KeyStoreError> {
        let op = "cannot read the keys";
        let exists = meta
            .get(META_KEYS_GENERATION)
            .map_err(|e| self.err(op, &e.into()))?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let mut out = Vec::new();
        for item in keys.iter().map_err(|e| self.err(op, &e.into()))? {
            let (pos, json) = item.map_err(|e| self.err(op, &e.into()))?;
            let label = format!("gateway_keys row {}", pos.value());
            let mut record: KeyRecord = serde_json::from_str(json.value())
                .map_err(|e| self.corrupt(format!("{label}: not a valid key record: {e}")))?;
            record.secret_hash.make_ascii_lowercase();
            record
                .validate()
                .map_err(|e| self.corrupt(format!("{label}: {e}")))?;
            out.push(record);
        }
        validate_key_set(&out).map_err(|m| self.corrupt(m))?;
        Ok(Some(out))
    }

    /// Replace the stored set with `records` and bump the generation, inside `tx`.
    fn write_all(&self, tx: &WriteTransaction, records: &[KeyRecord]) -> Result<(), KeyStoreError> {
        let op = "cannot store the keys";
        let mut keys = tx.open_table(KEYS).map_err(|e| self.err(op, &e.into()))?;
        keys.retain(|_, _| false)
            .map_err(|e| self.err(op, &e.into()))?;
        for (i, r) in records.iter().enumerate() {
            let json = serde_json::to_string(r).map_err(|e| KeyStoreError::Io {
                location: self.location(),
                message: format!("cannot serialise key {}: {e}", r.key_id),
            })?;
            keys.insert(i as u64, json.as_str())
                .map_err(|e| self.err(op, &e.into()))?;
        }
        drop(keys);
        self.bump(tx)
    }

    /// Bump the generation (and mint the store id on the first write), inside `tx`.
    fn bump(&self, tx: &WriteTransaction) -> Result<(), KeyStoreError> {
        let op = "cannot store the keys";
        let mut meta = tx.open_table(META).map_err(|e| self.err(op, &e.into()))?;
        let generation = meta
            .get(META_KEYS_GENERATION)
            .map_err(|e| self.err(op, &e.into()))?
            .and_then(|g| g.value().parse::<u64>().ok())
            .unwrap_or(0);
        meta.insert(META_KEYS_GENERATION, (generation + 1).to_string().as_str())
            .map_err(|e| self.err(op, &e.into()))?;
        let has_id = meta
            .get(META_STORE_ID)
            .map_err(|e| self.err(op, &e.into()))?
            .is_some();
        if !has_id {
            meta.insert(META_STORE_ID, random_id().as_str())
                .map_err(|e| self.err(op, &e.into()))?;
        }
        Ok(())
    }

    /// Blocking form of [`KeyStore::load`](metis_ports::keys::KeyStore::load).
    ///
    /// # Errors
    /// As the port.
    pub fn load_blocking(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let Some(db) = self.existing()? else {
            return Err(self.not_found());
        };
        let op = "cannot read the keys";
        let tx = db.begin_read().map_err(|e| self.err(op, &e.into()))?;
        let meta = tx.open_table(META).map_err(|e| self.err(op, &e.into()))?;
        let keys = match tx.open_table(KEYS) {
            Ok(k) => k,
            Err(redb::TableError::TableDoesNotExist(_)) => return Err(self.not_found()),
            Err(e) => return Err(self.err(op, &e.into())),
        };
        self.read_all(&meta, &keys)?.ok_or_else(|| self.not_found())
    }

    /// Blocking form of [`KeyStore::insert`](metis_ports::keys::KeyStore::insert).
    ///
    /// # Errors
    /// As the port (`Corrupt` for an invalid record).
    pub fn insert_blocking(&self, record: KeyRecord) -> Result<(), KeyStoreError> {
        let record = record_to_insert(record, &self.location())?;
        let db = self.writable()?;
        let op = "cannot store the key";
        let tx = db.begin_write().map_err(|e| self.err(op, &e.into()))?;
        let mut records = {
            let meta = tx.open_table(META).map_err(|e| self.err(op, &e.into()))?;
            let keys = tx.open_table(KEYS).map_err(|e| self.err(op, &e.into()))?;
            self.read_all(&meta, &keys)?.unwrap_or_default()
        };
        if let Some(taken) = records
            .iter()
            .find(|k| k.key_id == record.key_id)
            .or_else(|| records.iter().find(|k| k.secret_hash == record.secret_hash))
        {
            return Err(KeyStoreError::Duplicate {
                key_id: taken.key_id.clone(),
            });
        }
        let key_id = record.key_id.clone();
        records.push(record);
        self.write_all(&tx, &records)?;
        tx.commit().map_err(|e| self.err(op, &e.into()))?;
        tracing::info!(keystore = %self.location(), key_id = %key_id, "key stored");
        Ok(())
    }

    /// Blocking form of [`KeyStore::update`](metis_ports::keys::KeyStore::update).
    ///
    /// # Errors
    /// As the port; nothing is written on any error.
    pub fn update_blocking(&self, edit: KeyEdit) -> Result<Vec<KeyRecord>, KeyStoreError> {
        if self.existing()?.is_none() {
            return Err(self.not_found());
        }
        let db = self.writable()?;
        let op = "cannot update the keys";
        let tx = db.begin_write().map_err(|e| self.err(op, &e.into()))?;
        let before = {
            let meta = tx.open_table(META).map_err(|e| self.err(op, &e.into()))?;
            let keys = tx.open_table(KEYS).map_err(|e| self.err(op, &e.into()))?;
            self.read_all(&meta, &keys)?
        };
        let Some(before) = before else {
            return Err(self.not_found());
        };
        let records = match apply_edit(&before, edit, &self.location())? {
            Edited::Unchanged(records) => return Ok(records),
            Edited::Changed(records) => records,
        };
        self.write_all(&tx, &records)?;
        tx.commit().map_err(|e| self.err(op, &e.into()))?;
        tracing::info!(keystore = %self.location(), keys = records.len(), "keystore updated");
        Ok(records)
    }

    /// Blocking form of [`KeyStore::load_policies`](metis_ports::keys::KeyStore::load_policies).
    ///
    /// # Errors
    /// As the port.
    pub fn load_policies_blocking(&self) -> Result<Policies, KeyStoreError> {
        let Some(db) = self.existing()? else {
            return Ok(Policies::default());
        };
        let op = "cannot read the policies";
        let tx = db.begin_read().map_err(|e| self.err(op, &e.into()))?;
        let meta = match tx.open_table(META) {
            Ok(m) => m,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Policies::default()),
            Err(e) => return Err(self.err(op, &e.into())),
        };
        let json = meta
            .get(META_KEY_POLICIES)
            .map_err(|e| self.err(op, &e.into()))?
            .map(|v| v.value().to_owned());
        parse_policies(json.as_deref()).map_err(|m| self.corrupt(m))
    }

    /// Blocking form of [`KeyStore::update_policies`](metis_ports::keys::KeyStore::update_policies).
    ///
    /// # Errors
    /// As the port; nothing is written on any error.
    pub fn update_policies_blocking(&self, edit: PolicyEdit) -> Result<Policies, KeyStoreError> {
        let db = self.writable()?;
        let op = "cannot update the policies";
        let tx = db.begin_write().map_err(|e| self.err(op, &e.into()))?;
        let before = {
            let meta = tx.open_table(META).map_err(|e| self.err(op, &e.into()))?;
            let json = meta
                .get(META_KEY_POLICIES)
                .map_err(|e| self.err(op, &e.into()))?
                .map(|v| v.value().to_owned());
            parse_policies(json.as_deref()).map_err(|m| self.corrupt(m))?
        };
        let Some(after) = apply_policy_edit(&before, edit, &self.location())? else {
            return Ok(before);
        };
        let json = policies_json(&after, &self.location())?;
        {
            // The key table is created with the first write, so the store exists afterwards.
            tx.open_table(KEYS).map_err(|e| self.err(op, &e.into()))?;
            let mut meta = tx.open_table(META).map_err(|e| self.err(op, &e.into()))?;
            meta.insert(META_KEY_POLICIES, json.as_str())
                .map_err(|e| self.err(op, &e.into()))?;
        }
        self.bump(&tx)?;
        tx.commit().map_err(|e| self.err(op, &e.into()))?;
        tracing::info!(
            keystore = %self.location(),
            budgets = after.budgets.len(),
            model_groups = after.model_groups.len(),
            "policies updated"
        );
        Ok(after)
    }

    /// Blocking form of [`KeyStore::version`](metis_ports::keys::KeyStore::version).
    #[must_use]
    pub fn version_blocking(&self) -> Option<String> {
        let db = self.existing().ok()??;
        let tx = db.begin_read().ok()?;
        let meta = tx.open_table(META).ok()?;
        let generation = meta.get(META_KEYS_GENERATION).ok()??.value().to_owned();
        let id = meta
            .get(META_STORE_ID)
            .ok()
            .flatten()
            .map(|g| g.value().to_owned())
            .unwrap_or_default();
        Some(format!("{id}:{generation}"))
    }
}

metis_storage_kit::key_store_on_blocking_pool!(RedbKeyStore);

/// Overwrite the first stored key record with `json` as is (tests: a damaged key store).
/// The file must not be open in another process.
///
/// # Errors
/// redb errors, or no key stored.
#[doc(hidden)]
pub fn overwrite_first_key_json(path: &Path, json: &str) -> Result<(), String> {
    let db = open_shared(path, Sharing::default(), false).map_err(|e| e.to_string())?;
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut keys = tx.open_table(KEYS).map_err(|e| e.to_string())?;
        let first = keys
            .first()
            .map_err(|e| e.to_string())?
            .map(|(k, _)| k.value())
            .ok_or_else(|| "no key stored".to_owned())?;
        keys.insert(first, json).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}
