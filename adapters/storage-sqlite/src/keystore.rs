//! [`SqliteKeyStore`]: the `KeyStore` port over the main SQLite database (`--keystore store`).
//!
//! Keys live in `metis.db` beside the trace, so the admin API can write them where the JSON
//! file is a read-only mount (a Kubernetes Secret).
//!
//! Invariants:
//! - One row per key in `gateway_keys` (`key_id` PRIMARY KEY, `secret_hash` UNIQUE and
//!   lowercase, `record_json` = the full `KeyRecord` JSON including unknown fields, `position`
//!   = insertion order). `load` returns every key in `position` order, or an error: a
//!   half-valid key set is never served.
//! - Every write (`insert`, `update`) is one `BEGIN IMMEDIATE` transaction: read, check,
//!   write, bump `gateway_keys_meta.generation`, commit. SQLite's write lock serialises
//!   writers across connections and processes, so no update is lost; a reader sees the old set
//!   or the new one.
//! - `update` validates every resulting record and the absence of duplicate ids or hashes
//!   before writing, and writes only the difference: an untouched key's stored JSON stays
//!   byte-identical.
//! - Budgets and model groups live in `gateway_policies` (one row: the `Policies` JSON); a
//!   policy write is the same kind of transaction and bumps the same generation, so the key
//!   reload brings them too.
//! - `version` is `<store_id>:<generation>`: the generation changes with every write, and the
//!   random `store_id` (minted with the table) tells a restored or replaced database apart.
//! - Opening follows the trace database's rules: a file stamped by a newer binary is refused
//!   untouched, `user_version` is raised to the current version (with the `events` schema) but
//!   never lowered, and `foreign_keys` is OFF. Reads never create the file or the tables.
//! - Everything runs on tokio's blocking pool (`metis_storage_kit::key_store_on_blocking_pool!`);
//!   `*_blocking` variants exist for code without a runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use metis_domain::budgets::Policies;
use metis_domain::keys::KeyRecord;
use metis_ports::keys::{KeyEdit, KeyStoreError, PolicyEdit};
use metis_storage_kit::keys::{
    Edited, StoredKey, apply_edit, apply_policy_edit, parse_key_rows, parse_policies,
    policies_json, read_only_file, record_to_insert,
};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::schema::{
    Pragmas, TRACE_SCHEMA_VERSION, apply_pragmas, check_not_too_new, ensure_schema,
    log_index_switch, read_user_version,
};

/// The key tables. Additive and idempotent like the trace schema (no version bump).
const KEYS_SCHEMA_SQL: &str = "\
CREATE TABLE IF NOT EXISTS gateway_keys (
    key_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    record_json TEXT NOT NULL,
    position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_gateway_keys_position ON gateway_keys(position);
CREATE TABLE IF NOT EXISTS gateway_keys_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL,
    store_id TEXT NOT NULL
);
INSERT OR IGNORE INTO gateway_keys_meta (id, generation, store_id)
    VALUES (1, 0, lower(hex(randomblob(8))));
CREATE TABLE IF NOT EXISTS gateway_policies (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    policies_json TEXT NOT NULL
);
";

const BUMP_SQL: &str = "UPDATE gateway_keys_meta SET generation = generation + 1 WHERE id = 1";

const READ_ONLY_HINT: &str = "the key store cannot be written (a read-only file or mount, or \
     missing permissions); make the database writable or manage keys where it is";

/// The connection of one store handle, opened on first use.
#[derive(Default)]
struct Slot {
    conn: Option<Connection>,
    /// Write PRAGMAs applied and the schema ensured on `conn`.
    writable: bool,
}

/// Gateway keys in the `gateway_keys` table of the SQLite database at a path.
///
/// Cheap to clone (clones share one connection). Separate instances on the same file are
/// safe: they serialise on SQLite's write lock.
#[derive(Clone)]
pub struct SqliteKeyStore {
    path: PathBuf,
    busy_timeout: Duration,
    slot: Arc<Mutex<Slot>>,
}

impl std::fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteKeyStore {
    /// A store in the database at `path` (normally the trace database, `metis.db`). Nothing is
    /// opened or created until first use; the first write creates the file and the tables.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            busy_timeout: Duration::from_secs(5),
            slot: Arc::new(Mutex::new(Slot::default())),
        }
    }

    /// How long a write waits for another writer's lock (default 5 s).
    #[must_use]
    pub fn with_busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
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

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A panic while holding the lock (e.g. inside an edit) rolled its transaction back when
        // the transaction was dropped; the connection itself is still usable.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Map an SQLite error during `op` to the port's error.
    fn sql_error(&self, op: &str, e: &rusqlite::Error) -> KeyStoreError {
        let location = self.location();
        match e.sqlite_error_code() {
            Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => KeyStoreError::ReadOnly {
                location,
                message: format!("{op}: {e}; {READ_ONLY_HINT}"),
            },
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => KeyStoreError::Corrupt {
                location,
                message: format!("{op}: not a readable SQLite database ({e})"),
            },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => KeyStoreError::Io {
                location,
                message: format!(
                    "{op}: the database stayed locked by another writer for {} ms ({e})",
                    self.busy_timeout.as_millis()
                ),
            },
            _ => KeyStoreError::Io {
                location,
                message: format!("{op}: {e}"),
            },
        }
    }

    /// The cached connection, opened when missing. `create` allows creating the file (and
    /// its directory); without it a missing file is `NotFound`.
    fn connection<'a>(
        &self,
        slot: &'a mut Slot,
        create: bool,
    ) -> Result<&'a mut Connection, KeyStoreError> {
        if slot.conn.is_none() {
            slot.writable = false;
            slot.conn = Some(self.open(create)?);
        }
        slot.conn.as_mut().ok_or_else(|| KeyStoreError::Io {
            location: self.location(),
            message: "no connection".into(),
        })
    }

    fn open(&self, create: bool) -> Result<Connection, KeyStoreError> {
        if !create && !self.path.exists() {
            return Err(KeyStoreError::NotFound {
                location: self.location(),
            });
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    let message = format!("cannot create directory {}: {e}", parent.display());
                    if e.kind() == std::io::ErrorKind::PermissionDenied
                        || e.kind() == std::io::ErrorKind::ReadOnlyFilesystem
                    {
                        KeyStoreError::ReadOnly {
                            location: self.location(),
                            message,
                        }
                    } else {
                        KeyStoreError::Io {
                            location: self.location(),
                            message,
                        }
                    }
                })?;
            }
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&self.path, flags)
            .map_err(|e| self.sql_error("cannot open the database", &e))?;
        conn.busy_timeout(self.busy_timeout)
            .map_err(|e| self.sql_error("cannot open the database", &e))?;
        let found = read_user_version(&conn)
            .map_err(|e| self.sql_error("cannot read the schema version", &e))?;
        self.check_version(found)?;
        // As the trace store: the declared foreign key to `sessions` is never enforced.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(|e| self.sql_error("cannot configure the connection", &e))?;
        Ok(conn)
    }

    fn check_version(&self, found: i64) -> Result<(), KeyStoreError> {
        check_not_too_new(found).map_err(|e| KeyStoreError::Corrupt {
            location: self.location(),
            message: e.to_string(),
        })
    }

    /// A database file without any write permission bit is not edited (see
    /// `metis_storage_kit::keys::read_only_file`).
    fn refuse_read_only_file(&self) -> Result<(), KeyStoreError> {
        match read_only_file(&self.path) {
            Some(why) => Err(KeyStoreError::ReadOnly {
                location: self.location(),
                message: format!("{why}; {READ_ONLY_HINT}"),
            }),
            None => Ok(()),
        }
    }

    /// Apply the write PRAGMAs and ensure the schema (trace and keys) and the version stamp,
    /// once per connection. Checks the file's write permission on every call.
    fn make_writable(&self, slot: &mut Slot) -> Result<(), KeyStoreError> {
        self.refuse_read_only_file()?;
        if slot.writable {
            return Ok(());
        }
        let conn = self.connection(slot, true)?;
        apply_pragmas(
            conn,
            Pragmas {
                wal_autocheckpoint_pages: 8192,
                busy_timeout: self.busy_timeout,
            },
        )
        .map_err(|e| self.sql_error("cannot configure the database", &e))?;
        let op = "cannot create the key tables";
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql_error(op, &e))?;
        // Re-read under the write lock: a newer binary may have stamped the file meanwhile.
        let found = read_user_version(&tx).map_err(|e| self.sql_error(op, &e))?;
        self.check_version(found)?;
        let switch = ensure_schema(&tx).map_err(|e| self.sql_error(op, &e))?;
        tx.execute_batch(KEYS_SCHEMA_SQL)
            .map_err(|e| self.sql_error(op, &e))?;
        if found < TRACE_SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", TRACE_SCHEMA_VERSION)
                .map_err(|e| self.sql_error(op, &e))?;
        }
        tx.commit().map_err(|e| self.sql_error(op, &e))?;
        log_index_switch(&self.path, &switch);
        slot.writable = true;
        Ok(())
    }

    /// Run `f` with the connection; an I/O-level failure drops the cached connection so the
    /// next call reopens the file (it may have been replaced, e.g. by `metis restore`).
    fn with_slot<T>(
        &self,
        f: impl FnOnce(&Self, &mut Slot) -> Result<T, KeyStoreError>,
    ) -> Result<T, KeyStoreError> {
        let mut slot = self.lock();
        let result = f(self, &mut slot);
        if matches!(
            result,
            Err(KeyStoreError::Io { .. } | KeyStoreError::Corrupt { .. })
        ) {
            *slot = Slot::default();
        }
        result
    }

    /// Blocking form of [`KeyStore::load`](metis_ports::keys::KeyStore::load).
    ///
    /// # Errors
    /// `NotFound` when the database or the key table does not exist; `Corrupt` naming the
    /// first invalid row (or a database from a newer binary); `Io` otherwise.
    pub fn load_blocking(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        self.with_slot(|s, slot| {
            let conn = s.connection(slot, false)?;
            if !s.has_key_table(conn)? {
                return Err(KeyStoreError::NotFound {
                    location: s.location(),
                });
            }
            let rows = s.read_rows(conn)?;
            parse_key_rows(rows).map_err(|message| KeyStoreError::Corrupt {
                location: s.location(),
                message,
            })
        })
    }

    /// Blocking form of [`KeyStore::insert`](metis_ports::keys::KeyStore::insert).
    ///
    /// # Errors
    /// `Duplicate` on an existing id or hash; `Corrupt` when the record fails validation or the
    /// database is from a newer binary; `ReadOnly` when the database cannot be written; `Io`
    /// otherwise.
    pub fn insert_blocking(&self, record: KeyRecord) -> Result<(), KeyStoreError> {
        let record = record_to_insert(record, &self.location())?;
        let json = serde_json::to_string(&record).map_err(|e| KeyStoreError::Io {
            location: self.location(),
            message: format!("cannot serialise key {}: {e}", record.key_id),
        })?;
        self.with_slot(|s, slot| {
            s.make_writable(slot)?;
            let conn = s.connection(slot, true)?;
            let op = "cannot store the key";
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| s.sql_error(op, &e))?;
            let taken: Option<String> = tx
                .query_row(
                    "SELECT key_id FROM gateway_keys WHERE key_id = ?1 OR secret_hash = ?2 \
                     ORDER BY key_id = ?1 DESC LIMIT 1",
                    params![record.key_id, record.secret_hash],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| s.sql_error(op, &e))?;
            if let Some(key_id) = taken {
                // Same id, or the existing key holding this hash.
                return Err(KeyStoreError::Duplicate { key_id });
            }
            let position: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(position), -1) + 1 FROM gateway_keys",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| s.sql_error(op, &e))?;
            tx.execute(
                "INSERT INTO gateway_keys (key_id, secret_hash, record_json, position) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![record.key_id, record.secret_hash, json, position],
            )
            .map_err(|e| s.sql_error(op, &e))?;
            tx.execute(BUMP_SQL, []).map_err(|e| s.sql_error(op, &e))?;
            tx.commit().map_err(|e| s.sql_error(op, &e))?;
            tracing::info!(keystore = %s.location(), key_id = %record.key_id, "key stored");
            Ok(())
        })
    }

    /// Blocking form of [`KeyStore::update`](metis_ports::keys::KeyStore::update).
    ///
    /// # Errors
    /// `NotFound` when the database or the key table does not exist; `Rejected` when the edit
    /// refused; `Corrupt` when the stored set or the edited set is invalid; `ReadOnly` / `Io`
    /// on write failures. Nothing is written on any error.
    pub fn update_blocking(&self, edit: KeyEdit) -> Result<Vec<KeyRecord>, KeyStoreError> {
        self.with_slot(|s, slot| {
            let conn = s.connection(slot, false)?;
            if !s.has_key_table(conn)? {
                return Err(KeyStoreError::NotFound {
                    location: s.location(),
                });
            }
            s.make_writable(slot)?;
            let conn = s.connection(slot, true)?;
            let op = "cannot update the keys";
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| s.sql_error(op, &e))?;
            let before =
                parse_key_rows(s.read_rows(&tx)?).map_err(|message| KeyStoreError::Corrupt {
                    location: s.location(),
                    message,
                })?;
            // Dropping `tx` on any early return rolls back (nothing was written yet anyway).
            let records = match apply_edit(&before, edit, &s.location())? {
                Edited::Unchanged(records) => return Ok(records),
                Edited::Changed(records) => records,
            };
            write_diff(&tx, &before, &records).map_err(|e| match e {
                DiffError::Sql(e) => s.sql_error(op, &e),
                DiffError::Json(message) => KeyStoreError::Io {
                    location: s.location(),
                    message,
                },
            })?;
            tx.execute(BUMP_SQL, []).map_err(|e| s.sql_error(op, &e))?;
            tx.commit().map_err(|e| s.sql_error(op, &e))?;
            tracing::info!(keystore = %s.location(), keys = records.len(), "keystore updated");
            Ok(records)
        })
    }

    /// Blocking form of [`KeyStore::version`](metis_ports::keys::KeyStore::version): `<store_id>:<generation>`, or `None` when the
    /// database or the key tables do not exist (or cannot be read).
    #[must_use]
    pub fn version_blocking(&self) -> Option<String> {
        self.with_slot(|s, slot| {
            let conn = s.connection(slot, false)?;
            conn.query_row(
                "SELECT store_id, generation FROM gateway_keys_meta WHERE id = 1",
                [],
                |r| {
                    Ok(format!(
                        "{}:{}",
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?
                    ))
                },
            )
            .map_err(|e| s.sql_error("cannot read the key store version", &e))
        })
        .ok()
    }

    /// Blocking form of [`KeyStore::load_policies`](metis_ports::keys::KeyStore::load_policies).
    ///
    /// # Errors
    /// `Corrupt` when the stored policies are invalid; `Io` otherwise.
    pub fn load_policies_blocking(&self) -> Result<Policies, KeyStoreError> {
        self.with_slot(|s, slot| {
            let conn = match s.connection(slot, false) {
                Ok(c) => c,
                Err(KeyStoreError::NotFound { .. }) => return Ok(Policies::default()),
                Err(e) => return Err(e),
            };
            let json = s.read_policies(conn)?;
            parse_policies(json.as_deref()).map_err(|message| KeyStoreError::Corrupt {
                location: s.location(),
                message,
            })
        })
    }

    /// Blocking form of [`KeyStore::update_policies`](metis_ports::keys::KeyStore::update_policies).
    ///
    /// # Errors
    /// As the port; nothing is written on any error.
    pub fn update_policies_blocking(&self, edit: PolicyEdit) -> Result<Policies, KeyStoreError> {
        self.with_slot(|s, slot| {
            s.make_writable(slot)?;
            let conn = s.connection(slot, true)?;
            let op = "cannot update the policies";
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| s.sql_error(op, &e))?;
            let before = parse_policies(s.read_policies(&tx)?.as_deref()).map_err(|message| {
                KeyStoreError::Corrupt {
                    location: s.location(),
                    message,
                }
            })?;
            let Some(after) = apply_policy_edit(&before, edit, &s.location())? else {
                return Ok(before);
            };
            let json = policies_json(&after, &s.location())?;
            tx.execute(
                "INSERT INTO gateway_policies (id, policies_json) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET policies_json = excluded.policies_json",
                params![json],
            )
            .map_err(|e| s.sql_error(op, &e))?;
            tx.execute(BUMP_SQL, []).map_err(|e| s.sql_error(op, &e))?;
            tx.commit().map_err(|e| s.sql_error(op, &e))?;
            tracing::info!(
                keystore = %s.location(),
                budgets = after.budgets.len(),
                model_groups = after.model_groups.len(),
                "policies updated"
            );
            Ok(after)
        })
    }

    /// The stored policies JSON; `None` when none was ever written (or the table predates
    /// this binary's first write).
    fn read_policies(&self, conn: &Connection) -> Result<Option<String>, KeyStoreError> {
        if !self.has_table(conn, "gateway_policies")? {
            return Ok(None);
        }
        conn.query_row(
            "SELECT policies_json FROM gateway_policies WHERE id = 1",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(|e| self.sql_error("cannot read the policies", &e))
    }

    fn has_key_table(&self, conn: &Connection) -> Result<bool, KeyStoreError> {
        self.has_table(conn, "gateway_keys")
    }

    fn has_table(&self, conn: &Connection, name: &str) -> Result<bool, KeyStoreError> {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| self.sql_error("cannot read the schema", &e))
    }

    fn read_rows(&self, conn: &Connection) -> Result<Vec<StoredKey>, KeyStoreError> {
        let op = "cannot read the keys";
        let mut stmt = conn
            .prepare_cached(
                "SELECT key_id, secret_hash, record_json FROM gateway_keys \
                 ORDER BY position, rowid",
            )
            .map_err(|e| self.sql_error(op, &e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredKey {
                    key_id: r.get(0)?,
                    secret_hash: r.get(1)?,
                    record_json: r.get(2)?,
                })
            })
            .map_err(|e| self.sql_error(op, &e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql_error(op, &e))
    }
}

enum DiffError {
    Sql(rusqlite::Error),
    Json(String),
}

impl From<rusqlite::Error> for DiffError {
    fn from(e: rusqlite::Error) -> Self {
        DiffError::Sql(e)
    }
}

/// Make the table hold `after` (in order) given that it holds `before`: delete removed and
/// changed rows first (so a hash moving between keys never trips UNIQUE), then insert changed
/// and new rows, and renumber positions that moved. Untouched rows are not rewritten.
fn write_diff(
    conn: &Connection,
    before: &[KeyRecord],
    after: &[KeyRecord],
) -> Result<(), DiffError> {
    let old: HashMap<&str, (usize, &KeyRecord)> = before
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key_id.as_str(), (i, r)))
        .collect();
    let new: HashMap<&str, &KeyRecord> = after.iter().map(|r| (r.key_id.as_str(), r)).collect();

    let mut delete = conn.prepare_cached("DELETE FROM gateway_keys WHERE key_id = ?1")?;
    for r in before {
        if new.get(r.key_id.as_str()) != Some(&r) {
            delete.execute(params![r.key_id])?;
        }
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO gateway_keys (key_id, secret_hash, record_json, position) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut renumber =
        conn.prepare_cached("UPDATE gateway_keys SET position = ?2 WHERE key_id = ?1")?;
    for (i, r) in after.iter().enumerate() {
        let position = i64::try_from(i).unwrap_or(i64::MAX);
        match old.get(r.key_id.as_str()) {
            Some((j, prev)) if *prev == r => {
                if *j != i {
                    renumber.execute(params![r.key_id, position])?;
                }
            }
            _ => {
                let json = serde_json::to_string(r).map_err(|e| {
                    DiffError::Json(format!("cannot serialise key {}: {e}", r.key_id))
                })?;
                insert.execute(params![r.key_id, r.secret_hash, json, position])?;
            }
        }
    }
    Ok(())
}

metis_storage_kit::key_store_on_blocking_pool!(SqliteKeyStore);
