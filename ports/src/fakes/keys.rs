//! The key store fake: one key set in memory, validated and written as the file stores do.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use metis_domain::budgets::Policies;
use metis_domain::keys::{KeyRecord, validate_key_set};

use super::lock;
use crate::keys::{KeyEdit, KeyStore, KeyStoreError, PolicyEdit};

#[derive(Debug, Default)]
struct KeyFile {
    /// `None` until the first insert (the store does not exist yet).
    keys: Option<Vec<KeyRecord>>,
    policies: Policies,
    generation: u64,
    read_only: bool,
}

/// An in-memory `KeyStore`. Clones share the same keys (like two handles on one file).
#[derive(Debug, Clone, Default)]
pub struct InMemoryKeyStore {
    file: Arc<Mutex<KeyFile>>,
}

const FAKE_KEYS_LOCATION: &str = "memory:keys";

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

    async fn load_policies(&self) -> Result<Policies, KeyStoreError> {
        let f = lock(&self.file);
        f.policies.validate().map_err(Self::corrupt)?;
        Ok(f.policies.clone())
    }

    async fn update_policies(&self, edit: PolicyEdit) -> Result<Policies, KeyStoreError> {
        let mut f = lock(&self.file);
        let before = f.policies.clone();
        before.validate().map_err(Self::corrupt)?;
        let mut after = before.clone();
        edit(&mut after).map_err(|message| KeyStoreError::Rejected { message })?;
        if after == before {
            return Ok(after);
        }
        if f.read_only {
            return Err(Self::read_only_error());
        }
        after
            .validate()
            .map_err(|m| Self::corrupt(format!("refusing to store invalid policies: {m}")))?;
        f.policies = after.clone();
        f.keys.get_or_insert_with(Vec::new);
        f.generation += 1;
        Ok(after)
    }
}
