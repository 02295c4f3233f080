//! [`PgKeyStore`]: the `KeyStore` port over `gateway_keys` (`--keystore store` with
//! `--store postgres`), shared by every replica.
//!
//! Invariants:
//! - One row per key (`key_id` primary key, `secret_hash` unique and lowercase, `record_json`
//!   the full `KeyRecord` JSON with unknown fields, `position` the insertion order). The store
//!   exists once `gateway_keys_meta` holds its row (the first write creates it); `load`
//!   returns every key in order, or an error: a half-valid key set is never served.
//! - Every write is one transaction that first locks the meta row (`FOR UPDATE`): writers in
//!   every replica and CLI process take turns, so no update is lost, and a reader sees the
//!   old set or the new one. The write bumps `generation`.
//! - `version` is `<store_id>:<generation>`, one primary-key read: cheap enough for every
//!   replica to poll each second, so an issue or revoke made anywhere is served everywhere
//!   within the poll interval. `store_id` is random per store, so a replaced database is
//!   told apart.
//! - `update` validates every resulting record and the absence of duplicate ids or hashes
//!   before writing, and rewrites only the rows that changed.
//! - Budgets and model groups live in `gateway_policies` (one row: the `Policies` JSON); a
//!   policy write locks the same meta row and bumps the same generation, so every replica
//!   reloads them with the keys.
//! - A database that refuses writes (a standby, a read-only role) answers writes with
//!   `ReadOnly` and still serves `load`. Reads never create tables.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Object};
use metis_domain::budgets::Policies;
use metis_domain::keys::KeyRecord;
use metis_ports::keys::{KeyEdit, KeyStore, KeyStoreError, PolicyEdit};
use metis_storage_kit::keys::{
    Edited, StoredKey, apply_edit, apply_policy_edit, parse_key_rows, parse_policies,
    policies_json, record_to_insert,
};

use crate::errors::key_err;
use crate::pool::{Db, DbError};
use crate::schema::{self, SchemaError};
use crate::tables::KEYS;

/// Gateway keys in a PostgreSQL database. Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct PgKeyStore {
    db: Db,
    /// The key tables were checked (and created when missing) by this handle.
    schema_ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for PgKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKeyStore")
            .field("database", &self.db.config().redacted())
            .finish_non_exhaustive()
    }
}

/// What a key transaction ended with: the port's answer, or a database error to map.
type Outcome<T> = Result<Result<T, KeyStoreError>, DbError>;

impl PgKeyStore {
    #[must_use]
    pub fn new(db: Db) -> Self {
        Self {
            db,
            schema_ready: Arc::new(AtomicBool::new(false)),
        }
    }

    fn location(&self) -> String {
        format!("store:{}", self.db.config().redacted())
    }

    fn flatten<T>(&self, op: &str, r: Outcome<T>) -> Result<T, KeyStoreError> {
        r.unwrap_or_else(|e| Err(key_err(&self.location(), op, &e)))
    }

    /// Create the key tables when missing (once per handle); refuse a newer schema.
    async fn ensure_schema(db: &Db, ready: &AtomicBool, location: &str) -> Outcome<()> {
        if ready.load(Ordering::Acquire) {
            return Ok(Ok(()));
        }
        let mut c = db.get().await?;
        // Only migrate when something is pending: a read-only database with current tables
        // must still answer with `ReadOnly` for the write, not fail here.
        let pending = match schema::plan(&c, &KEYS).await {
            Ok(steps) => !steps.is_empty(),
            Err(SchemaError::Query(e)) => return Err(e.into()),
            Err(too_new) => return Ok(Err(corrupt(location, too_new.to_string()))),
        };
        if pending {
            match schema::migrate(&mut c, &KEYS).await {
                Ok(_) => {}
                Err(SchemaError::Query(e)) => return Err(e.into()),
                Err(too_new) => return Ok(Err(corrupt(location, too_new.to_string()))),
            }
        }
        ready.store(true, Ordering::Release);
        Ok(Ok(()))
    }
}

fn corrupt(location: &str, message: String) -> KeyStoreError {
    KeyStoreError::Corrupt {
        location: location.to_owned(),
        message,
    }
}

fn not_found(location: &str) -> KeyStoreError {
    KeyStoreError::NotFound {
        location: location.to_owned(),
    }
}

/// Whether the key tables exist, and the schema is one this binary reads.
async fn readable(c: &Object, location: &str) -> Outcome<bool> {
    match schema::current(c, &KEYS).await {
        Ok(stamp) if stamp.version == 0 => Ok(Ok(false)),
        Ok(stamp) => match schema::check_usable(&KEYS, stamp) {
            Ok(()) => Ok(Ok(true)),
            Err(e) => Ok(Err(corrupt(location, e.to_string()))),
        },
        Err(SchemaError::Query(e)) => Err(e.into()),
        Err(e) => Ok(Err(corrupt(location, e.to_string()))),
    }
}

async fn read_rows(c: &impl GenericClient) -> Result<Vec<StoredKey>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT key_id, secret_hash, record_json FROM gateway_keys ORDER BY position, key_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredKey {
            key_id: r.get(0),
            secret_hash: r.get(1),
            record_json: r.get(2),
        })
        .collect())
}

fn to_json(r: &KeyRecord) -> Result<String, String> {
    serde_json::to_string(r).map_err(|e| format!("cannot serialise key {}: {e}", r.key_id))
}

/// Make the table hold `after` (in order) given that it holds `before`: delete removed and
/// changed rows first (so a hash moving between keys never trips the unique index), insert
/// changed and new rows, renumber rows that moved. Untouched rows are not rewritten.
async fn write_diff(
    tx: &deadpool_postgres::Transaction<'_>,
    before: &[KeyRecord],
    after: &[KeyRecord],
) -> Result<Result<(), String>, tokio_postgres::Error> {
    let old: HashMap<&str, (usize, &KeyRecord)> = before
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key_id.as_str(), (i, r)))
        .collect();
    let new: HashMap<&str, &KeyRecord> = after.iter().map(|r| (r.key_id.as_str(), r)).collect();
    for r in before {
        if new.get(r.key_id.as_str()) != Some(&r) {
            tx.execute("DELETE FROM gateway_keys WHERE key_id = $1", &[&r.key_id])
                .await?;
        }
    }
    for (i, r) in after.iter().enumerate() {
        let position = i64::try_from(i).unwrap_or(i64::MAX);
        match old.get(r.key_id.as_str()) {
            Some((j, prev)) if *prev == r => {
                if *j != i {
                    tx.execute(
                        "UPDATE gateway_keys SET position = $2 WHERE key_id = $1",
                        &[&r.key_id, &position],
                    )
                    .await?;
                }
            }
            _ => {
                let json = match to_json(r) {
                    Ok(j) => j,
                    Err(m) => return Ok(Err(m)),
                };
                tx.execute(
                    "INSERT INTO gateway_keys (key_id, secret_hash, record_json, position) \
                     VALUES ($1, $2, $3, $4)",
                    &[&r.key_id, &r.secret_hash, &json, &position],
                )
                .await?;
            }
        }
    }
    Ok(Ok(()))
}

/// The stored policies JSON; `None` when none was written (or the table does not exist yet:
/// a database migrated by an older binary).
async fn read_policies(c: &impl GenericClient) -> Result<Option<String>, tokio_postgres::Error> {
    let exists: bool = c
        .query_one("SELECT to_regclass('gateway_policies') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = c
        .query_opt(
            "SELECT policies_json FROM gateway_policies WHERE id = 1",
            &[],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

const ENSURE_META_SQL: &str = "INSERT INTO gateway_keys_meta (id, generation, store_id) \
     VALUES (1, 0, substr(md5(random()::text || clock_timestamp()::text), 1, 16)) \
     ON CONFLICT (id) DO NOTHING";

const BUMP_SQL: &str = "UPDATE gateway_keys_meta SET generation = generation + 1 WHERE id = 1";

#[async_trait]
impl KeyStore for PgKeyStore {
    fn describe(&self) -> String {
        self.location()
    }

    async fn load(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let (db, location) = (self.db.clone(), self.location());
        let r = self
            .db
            .run(async move {
                let c = db.get().await?;
                match readable(&c, &location).await? {
                    Ok(true) => {}
                    Ok(false) => return Ok(Err(not_found(&location))),
                    Err(e) => return Ok(Err(e)),
                }
                let exists = c
                    .query_opt("SELECT 1 FROM gateway_keys_meta WHERE id = 1", &[])
                    .await?
                    .is_some();
                if !exists {
                    return Ok(Err(not_found(&location)));
                }
                let rows = read_rows(&c).await?;
                Ok(parse_key_rows(rows).map_err(|m| corrupt(&location, m)))
            })
            .await;
        self.flatten("cannot read the keys", r)
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), KeyStoreError> {
        let location = self.location();
        let record = record_to_insert(record, &location)?;
        let json = to_json(&record).map_err(|message| KeyStoreError::Io {
            location: location.clone(),
            message,
        })?;
        let (db, ready) = (self.db.clone(), Arc::clone(&self.schema_ready));
        let r = self
            .db
            .run(async move {
                if let Err(e) = Self::ensure_schema(&db, &ready, &location).await? {
                    return Ok(Err(e));
                }
                let mut c = db.get().await?;
                let tx = c.transaction().await?;
                tx.execute(ENSURE_META_SQL, &[]).await?;
                tx.query_one(
                    "SELECT generation FROM gateway_keys_meta WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .await?;
                let taken = tx
                    .query_opt(
                        "SELECT key_id FROM gateway_keys WHERE key_id = $1 OR secret_hash = $2 \
                         ORDER BY (key_id = $1) DESC LIMIT 1",
                        &[&record.key_id, &record.secret_hash],
                    )
                    .await?;
                if let Some(row) = taken {
                    // Same id, or the existing key holding this hash.
                    return Ok(Err(KeyStoreError::Duplicate { key_id: row.get(0) }));
                }
                tx.execute(
                    "INSERT INTO gateway_keys (key_id, secret_hash, record_json, position) \
                     SELECT $1, $2, $3, COALESCE(MAX(position), -1) + 1 FROM gateway_keys",
                    &[&record.key_id, &record.secret_hash, &json],
                )
                .await?;
                tx.execute(BUMP_SQL, &[]).await?;
                tx.commit().await?;
                tracing::info!(keystore = %location, key_id = %record.key_id, "key stored");
                Ok(Ok(()))
            })
            .await;
        self.flatten("cannot store the key", r)
    }

    async fn update(&self, edit: KeyEdit) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let (db, location) = (self.db.clone(), self.location());
        let r = self
            .db
            .run(async move {
                let mut c = db.get().await?;
                match readable(&c, &location).await? {
                    Ok(true) => {}
                    Ok(false) => return Ok(Err(not_found(&location))),
                    Err(e) => return Ok(Err(e)),
                }
                let tx = c.transaction().await?;
                let locked = tx
                    .query_opt(
                        "SELECT generation FROM gateway_keys_meta WHERE id = 1 FOR UPDATE",
                        &[],
                    )
                    .await?;
                if locked.is_none() {
                    return Ok(Err(not_found(&location)));
                }
                let before = match parse_key_rows(read_rows(&tx).await?) {
                    Ok(b) => b,
                    Err(m) => return Ok(Err(corrupt(&location, m))),
                };
                // Dropping `tx` on an early return rolls back (nothing was written anyway).
                let records = match apply_edit(&before, edit, &location) {
                    Ok(Edited::Unchanged(records)) => return Ok(Ok(records)),
                    Ok(Edited::Changed(records)) => records,
                    Err(e) => return Ok(Err(e)),
                };
                if let Err(message) = write_diff(&tx, &before, &records).await? {
                    return Ok(Err(KeyStoreError::Io { location, message }));
                }
                tx.execute(BUMP_SQL, &[]).await?;
                tx.commit().await?;
                tracing::info!(keystore = %location, keys = records.len(), "keystore updated");
                Ok(Ok(records))
            })
            .await;
        self.flatten("cannot update the keys", r)
    }

    async fn load_policies(&self) -> Result<Policies, KeyStoreError> {
        let (db, location) = (self.db.clone(), self.location());
        let r = self
            .db
            .run(async move {
                let c = db.get().await?;
                match readable(&c, &location).await? {
                    Ok(true) => {}
                    Ok(false) => return Ok(Ok(Policies::default())),
                    Err(e) => return Ok(Err(e)),
                }
                let json = read_policies(&c).await?;
                Ok(parse_policies(json.as_deref()).map_err(|m| corrupt(&location, m)))
            })
            .await;
        self.flatten("cannot read the policies", r)
    }

    async fn update_policies(&self, edit: PolicyEdit) -> Result<Policies, KeyStoreError> {
        let location = self.location();
        let (db, ready) = (self.db.clone(), Arc::clone(&self.schema_ready));
        let r = self
            .db
            .run(async move {
                // A database migrated by a binary without policies gets its table here.
                if let Err(e) = Self::ensure_schema(&db, &ready, &location).await? {
                    return Ok(Err(e));
                }
                let mut c = db.get().await?;
                let tx = c.transaction().await?;
                tx.execute(ENSURE_META_SQL, &[]).await?;
                // The same lock as key writes: policy and key writers take turns.
                tx.query_one(
                    "SELECT generation FROM gateway_keys_meta WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .await?;
                let before = match parse_policies(read_policies(&tx).await?.as_deref()) {
                    Ok(p) => p,
                    Err(m) => return Ok(Err(corrupt(&location, m))),
                };
                let after = match apply_policy_edit(&before, edit, &location) {
                    Ok(Some(after)) => after,
                    Ok(None) => return Ok(Ok(before)),
                    Err(e) => return Ok(Err(e)),
                };
                let json = match policies_json(&after, &location) {
                    Ok(j) => j,
                    Err(e) => return Ok(Err(e)),
                };
                tx.execute(
                    "INSERT INTO gateway_policies (id, policies_json) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET policies_json = EXCLUDED.policies_json",
                    &[&json],
                )
                .await?;
                tx.execute(BUMP_SQL, &[]).await?;
                tx.commit().await?;
                tracing::info!(
                    keystore = %location,
                    budgets = after.budgets.len(),
                    model_groups = after.model_groups.len(),
                    "policies updated"
                );
                Ok(Ok(after))
            })
            .await;
        self.flatten("cannot update the policies", r)
    }

    async fn version(&self) -> Option<String> {
        let db = self.db.clone();
        self.db
            .run(async move {
                let c = db.get().await?;
                let row = c
                    .query_opt(
                        "SELECT store_id || ':' || generation FROM gateway_keys_meta WHERE id = 1",
                        &[],
                    )
                    .await?;
                Ok(row.map(|r| r.get::<_, String>(0)))
            })
            .await
            .ok()
            .flatten()
    }
}

impl PgKeyStore {
    /// Blocking form of `load`, for the port's blocking callers (readers, copies).
    ///
    /// # Errors
    /// As `load`.
    pub fn load_blocking(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let this = self.clone();
        let r = self.db.block_on(async move { Ok(this.load().await) });
        r.unwrap_or_else(|e| Err(key_err(&self.location(), "cannot read the keys", &e)))
    }

    /// Blocking form of `load_policies`.
    ///
    /// # Errors
    /// As `load_policies`.
    pub fn load_policies_blocking(&self) -> Result<Policies, KeyStoreError> {
        let this = self.clone();
        let r = self
            .db
            .block_on(async move { Ok(this.load_policies().await) });
        r.unwrap_or_else(|e| Err(key_err(&self.location(), "cannot read the policies", &e)))
    }

    /// Blocking form of `update_policies`.
    ///
    /// # Errors
    /// As `update_policies`.
    pub fn update_policies_blocking(&self, edit: PolicyEdit) -> Result<Policies, KeyStoreError> {
        let this = self.clone();
        let r = self
            .db
            .block_on(async move { Ok(this.update_policies(edit).await) });
        r.unwrap_or_else(|e| Err(key_err(&self.location(), "cannot update the policies", &e)))
    }

    /// Blocking form of `insert`.
    ///
    /// # Errors
    /// As `insert`.
    pub fn insert_blocking(&self, record: KeyRecord) -> Result<(), KeyStoreError> {
        let this = self.clone();
        let r = self
            .db
            .block_on(async move { Ok(this.insert(record).await) });
        r.unwrap_or_else(|e| Err(key_err(&self.location(), "cannot store the key", &e)))
    }
}
