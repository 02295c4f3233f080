//! The main redb file (`metis.redb`): its tables, the version marker, opening (one shared
//! `Database` per file per process) and the error type.
//!
//! Invariants:
//! - Every table is created in the same write transaction that stamps the version, so a file
//!   either has the complete schema or none of it.
//! - `meta.schema_version` is read before anything writes the file: a value above
//!   [`TRACE_SCHEMA_VERSION`] is refused (read-only open, nothing written); a lower or missing
//!   value is raised; the value is never lowered.
//! - A process holds at most one `Database` per file ([`open_shared`]): the trace store, its
//!   sessions and the key store of one file share it (redb refuses a second open of a file
//!   in the same process).
//! - Files are opened in redb's multi-writer mode by default, so a CLI admin command can write
//!   (keys, audit events) while the gateway runs, as with SQLite.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use redb::{
    Builder, ConcurrencyMode, Database, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, WriteTransaction,
};

/// The trace schema version this binary reads and writes (`meta.schema_version`), the same
/// number as the SQLite trace database's `user_version`.
pub const TRACE_SCHEMA_VERSION: i64 = 1;

/// Key/value metadata: `schema_version`, the audit chain tail, the key store's generation.
pub(crate) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// One event row: (`timestamp_us`, `session_id`, `turn_id`, `parent_event_id`, `type`,
/// `actor`, `sensitivity`, `payload_json`), keyed by the event id.
pub(crate) type EventTuple<'a> = (
    i64,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
);
pub(crate) type EventValue = EventTuple<'static>;
pub(crate) const EVENTS: TableDefinition<&str, EventValue> = TableDefinition::new("events");
/// (`session_id`, id): replay of one session in id order.
pub(crate) const EV_BY_SESSION: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("events_by_session");
/// (`turn_id`, id): the events of one turn.
pub(crate) const EV_BY_TURN: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("events_by_turn");
/// (type, `timestamp_us`, id): spend, usage and audit windows.
pub(crate) const EV_BY_TYPE_TIME: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("events_by_type_time");
/// (`timestamp_us`, id): retention sweeps and the oldest/newest event.
pub(crate) const EV_BY_TIME: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("events_by_time");
/// (payload `gateway_key_id`, `timestamp_us`, id).
pub(crate) const EV_BY_KEY: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("events_by_key");
/// (payload `user_id`, `timestamp_us`, id).
pub(crate) const EV_BY_USER: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("events_by_user");
/// (payload `team_id`, `timestamp_us`, id).
pub(crate) const EV_BY_TEAM: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("events_by_team");
/// `audit_seq` -> event id: the audit chain in sequence order.
pub(crate) const AUDIT_CHAIN: TableDefinition<u64, &str> = TableDefinition::new("audit_chain");

/// One session: (`workspace_path`, `active_model`, `cost_so_far_usd`, `turn_count`,
/// `created_at`, `updated_at`, `parent_session_id`, `parent_tool_use_id`, `is_worker`).
pub(crate) type SessionTuple<'a> = (
    &'a str,
    Option<&'a str>,
    f64,
    u64,
    i64,
    i64,
    Option<&'a str>,
    Option<&'a str>,
    bool,
);
pub(crate) type SessionValue = SessionTuple<'static>;
pub(crate) const SESSIONS: TableDefinition<&str, SessionValue> = TableDefinition::new("sessions");
/// (`parent_session_id`, `created_at`, id): children, oldest first.
pub(crate) const SESSIONS_BY_PARENT: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("sessions_by_parent");
/// (`updated_at`, id): `sessions list`, most recent first.
pub(crate) const SESSIONS_BY_UPDATED: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("sessions_by_updated");

/// Gateway keys: position -> the full `KeyRecord` JSON.
pub(crate) const KEYS: TableDefinition<u64, &str> = TableDefinition::new("gateway_keys");

pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";
pub(crate) const META_AUDIT_SEQ: &str = "audit_tail_seq";
pub(crate) const META_AUDIT_HASH: &str = "audit_tail_hash";
pub(crate) const META_KEYS_GENERATION: &str = "keys_generation";
pub(crate) const META_STORE_ID: &str = "store_id";
/// The key store's budgets and model groups (the `Policies` JSON), beside the keys.
pub(crate) const META_KEY_POLICIES: &str = "key_policies";

/// Any failure of a redb operation, with its context.
#[derive(Debug)]
pub enum StoreError {
    /// The file's version marker is newer than this binary.
    TooNew { found: i64, supported: i64 },
    /// redb reported an error.
    Redb(redb::Error),
    /// Anything else (I/O around the database, bad stored data), with a message.
    Other(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::TooNew { found, supported } => write!(
                f,
                "schema version {found} is newer than this binary supports ({supported}); upgrade metis"
            ),
            StoreError::Redb(e) => write!(f, "{e}"),
            StoreError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StoreError {}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError
);

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// How a file is shared between processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// Any number of processes may write (one transaction at a time): the gateway and CLI
    /// admin commands together, as with SQLite. The default.
    #[default]
    MultiProcess,
    /// One process owns the file (faster commits; other processes cannot open it meanwhile).
    Exclusive,
}

impl Sharing {
    fn mode(self) -> ConcurrencyMode {
        match self {
            Sharing::MultiProcess => ConcurrencyMode::MultiWriter,
            Sharing::Exclusive => ConcurrencyMode::ExclusiveWriter,
        }
    }
}

static OPEN: LazyLock<Mutex<HashMap<PathBuf, Weak<Database>>>> = LazyLock::new(Mutex::default);

/// The registry key of `path`: canonical parent directory + file name.
fn registry_key(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent.canonicalize().unwrap_or(parent);
    match path.file_name() {
        Some(name) => parent.join(name),
        None => parent,
    }
}

/// Describe an open failure so an operator can act on it.
pub(crate) fn describe_open_error(path: &Path, e: &StoreError) -> String {
    let shown = path.display();
    match e {
        StoreError::Redb(redb::Error::DatabaseAlreadyOpen) => format!(
            "{shown} is open in another process that does not share it (a gateway started with \
             exclusive redb access?); stop it or use its admin API"
        ),
        StoreError::Redb(redb::Error::UpgradeRequired(v)) => {
            format!("{shown} is in redb file format {v}, which this binary cannot read")
        }
        StoreError::Redb(redb::Error::Io(io))
            if io.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            format!("redb database {shown} is not writable: {io}")
        }
        StoreError::Redb(e) => format!(
            "cannot open redb database {shown} (not a redb file, wrong --db-path, or damaged): {e}"
        ),
        other => format!("redb database {shown}: {other}"),
    }
}

/// Read `meta.schema_version` in a read transaction (`None`: never stamped).
pub(crate) fn read_version_tx(tx: &ReadTransaction) -> Result<Option<i64>> {
    let meta = match tx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = meta.get(META_SCHEMA_VERSION)?;
    Ok(v.and_then(|g| g.value().trim().parse::<i64>().ok()))
}

/// Read `meta.schema_version` of an open database (`None`: never stamped).
pub(crate) fn read_version(db: &impl ReadableDatabase) -> Result<Option<i64>> {
    read_version_tx(&db.begin_read()?)
}

/// What kind of file a registered open is for: how to read its version marker, which
/// version this binary writes, and how to create its schema.
pub(crate) struct FileKind {
    pub read_version: fn(&ReadTransaction) -> Result<Option<i64>>,
    pub supported: i64,
    /// Create the tables and raise the marker (refusing a newer one) inside the transaction.
    pub init: fn(&WriteTransaction) -> Result<()>,
    /// redb's page cache for this file. redb's own default is 1 GiB per open database, which
    /// a busy gateway fills with its trace (measured: 1.4 GB resident after a million events);
    /// the cache only speeds up reads of hot pages, and writes go to the file either way.
    pub cache_bytes: usize,
}

/// The page cache of a file opened briefly (version checks, stamps).
const BRIEF_CACHE_BYTES: usize = 4 << 20;

/// The main file (`metis.redb`).
pub(crate) const MAIN_FILE: FileKind = FileKind {
    read_version: read_version_tx,
    supported: TRACE_SCHEMA_VERSION,
    init: ensure_schema,
    cache_bytes: 64 << 20,
};

/// The version marker of the file at `path`, read without writing it (`Ok(None)`: no
/// marker).
///
/// # Errors
/// When the file cannot be opened read-only (missing, not redb, in use exclusively).
pub fn schema_version(path: &Path) -> std::result::Result<Option<i64>, String> {
    if let Some(db) = live(path) {
        return read_version(db.as_ref()).map_err(|e| describe_open_error(path, &e));
    }
    let ro = Builder::new()
        .set_concurrency_mode(ConcurrencyMode::MultiWriter)
        .open_read_only(path);
    match ro {
        Ok(db) => read_version(&db).map_err(|e| describe_open_error(path, &e)),
        // A file left by a crashed writer must be repaired before anything can be read; the
        // repair (what any writer does on open) keeps every committed transaction.
        Err(redb::DatabaseError::RepairAborted) => {
            let db = open_raw(path, Sharing::default(), false)
                .map_err(|e| describe_open_error(path, &e))?;
            read_version(&db).map_err(|e| describe_open_error(path, &e))
        }
        Err(e) => Err(describe_open_error(path, &StoreError::from(e))),
    }
}

pub(crate) fn live(path: &Path) -> Option<Arc<Database>> {
    let key = registry_key(path);
    OPEN.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
        .and_then(Weak::upgrade)
}

/// Create every table of the main file (idempotent) and raise the version marker inside
/// `tx`. Refuses a newer marker.
pub(crate) fn ensure_schema(tx: &WriteTransaction) -> Result<()> {
    let mut meta = tx.open_table(META)?;
    let found = meta
        .get(META_SCHEMA_VERSION)?
        .and_then(|g| g.value().trim().parse::<i64>().ok());
    if let Some(found) = found
        && found > TRACE_SCHEMA_VERSION
    {
        return Err(StoreError::TooNew {
            found,
            supported: TRACE_SCHEMA_VERSION,
        });
    }
    if found.is_none_or(|f| f < TRACE_SCHEMA_VERSION) {
        meta.insert(
            META_SCHEMA_VERSION,
            TRACE_SCHEMA_VERSION.to_string().as_str(),
        )?;
    }
    drop(meta);
    tx.open_table(EVENTS)?;
    tx.open_table(EV_BY_SESSION)?;
    tx.open_table(EV_BY_TURN)?;
    tx.open_table(EV_BY_TYPE_TIME)?;
    tx.open_table(EV_BY_TIME)?;
    tx.open_table(EV_BY_KEY)?;
    tx.open_table(EV_BY_USER)?;
    tx.open_table(EV_BY_TEAM)?;
    tx.open_table(AUDIT_CHAIN)?;
    tx.open_table(SESSIONS)?;
    tx.open_table(SESSIONS_BY_PARENT)?;
    tx.open_table(SESSIONS_BY_UPDATED)?;
    Ok(())
}

fn open_raw(path: &Path, sharing: Sharing, create: bool) -> Result<Database> {
    open_raw_waiting(
        path,
        sharing,
        create,
        Duration::from_secs(5),
        BRIEF_CACHE_BYTES,
    )
}

/// Open, waiting at most `wait` for a handle of this process that is being dropped.
fn open_raw_waiting(
    path: &Path,
    sharing: Sharing,
    create: bool,
    wait: Duration,
    cache_bytes: usize,
) -> Result<Database> {
    let mut builder = Builder::new();
    builder
        .set_concurrency_mode(sharing.mode())
        .set_cache_size(cache_bytes);
    let deadline = Instant::now() + wait;
    loop {
        let r = if create {
            builder.create(path)
        } else {
            builder.open(path)
        };
        match r {
            // A handle of this process that is being dropped still holds the file: wait.
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map_err(StoreError::from),
        }
    }
}

/// Open the main file at `path` (creating it and its directory when `create`), check and
/// stamp its version, and share the handle within this process.
///
/// Blocking.
///
/// # Errors
/// `TooNew` for a file from a newer binary (left untouched); `Other` when the file is
/// missing and `create` is false; redb errors otherwise.
pub fn open_shared(path: &Path, sharing: Sharing, create: bool) -> Result<Arc<Database>> {
    open_registered(path, sharing, create, &MAIN_FILE)
}

/// Open a file of `kind` (see [`open_shared`]), sharing one handle per file in this process.
pub(crate) fn open_registered(
    path: &Path,
    sharing: Sharing,
    create: bool,
    kind: &FileKind,
) -> Result<Arc<Database>> {
    open_registered_waiting(path, sharing, create, kind, Duration::from_secs(5))
}

fn open_registered_waiting(
    path: &Path,
    sharing: Sharing,
    create: bool,
    kind: &FileKind,
    wait: Duration,
) -> Result<Arc<Database>> {
    let key = registry_key(path);
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(db) = open.get(&key).and_then(Weak::upgrade) {
        return Ok(db);
    }
    open.retain(|_, w| w.strong_count() > 0);
    if path.exists() {
        // Check the marker through a read-only open first, so a newer file is refused without
        // a single byte written. A file that needs repair (after a crash) cannot be opened
        // read-only; the writable open below repairs it and checks the marker itself.
        let ro = Builder::new()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .open_read_only(path);
        if let Ok(ro) = ro {
            let found = (kind.read_version)(&ro.begin_read()?)?;
            drop(ro);
            if let Some(found) = found
                && found > kind.supported
            {
                return Err(StoreError::TooNew {
                    found,
                    supported: kind.supported,
                });
            }
        }
    } else if !create {
        return Err(StoreError::Other(format!(
            "redb database {} does not exist",
            path.display()
        )));
    } else if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Other(format!("cannot create directory {}: {e}", parent.display()))
        })?;
    }
    let db = open_raw_waiting(path, sharing, create, wait, kind.cache_bytes)?;
    let tx = db.begin_write()?;
    (kind.init)(&tx)?;
    tx.commit()?;
    let db = Arc::new(db);
    open.insert(key, Arc::downgrade(&db));
    Ok(db)
}

/// Whether `e` leaves the handle unusable: after an I/O error redb refuses every later
/// operation on that handle ("Previous I/O error occurred. Please close and re-open the
/// database."), so the only way back is a new handle.
pub(crate) fn needs_reopen(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Redb(
            redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed
        )
    )
}

/// The main file's handle as a trace store, its session store and its writer share it. The
/// writer replaces it after an I/O error (see [`needs_reopen`]); everyone else takes the
/// current one per operation.
///
/// Invariants:
/// - `close` takes the handle out of the slot and out of the process registry, so no new
///   user gets the broken handle; the `Database` itself closes when its last in-flight
///   reader lets go.
/// - `reopen` never waits for those readers: an attempt that finds the old handle still
///   alive fails and is retried on the writer's back-off.
pub(crate) struct DbSlot {
    path: PathBuf,
    sharing: Sharing,
    handle: RwLock<Option<Arc<Database>>>,
}

impl DbSlot {
    pub(crate) fn new(path: &Path, sharing: Sharing, db: Arc<Database>) -> Self {
        Self {
            path: path.to_path_buf(),
            sharing,
            handle: RwLock::new(Some(db)),
        }
    }

    /// The current handle.
    ///
    /// # Errors
    /// `Other` while the file is closed after an I/O error and not yet reopened.
    pub(crate) fn get(&self) -> Result<Arc<Database>> {
        self.handle
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                StoreError::Other(format!(
                    "redb database {} is closed after an I/O error; the trace writer is reopening it",
                    self.path.display()
                ))
            })
    }

    /// Drop the handle after an I/O error (see the type's invariants).
    pub(crate) fn close(&self) {
        let old = self
            .handle
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            let key = registry_key(&self.path);
            let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
            if open
                .get(&key)
                .and_then(Weak::upgrade)
                .is_some_and(|registered| Arc::ptr_eq(&registered, &old))
            {
                open.remove(&key);
            }
        }
    }

    /// Open the file again (or take the handle another user of the file opened meanwhile)
    /// and put it in the slot.
    ///
    /// # Errors
    /// The open's error (the disk still full, the old handle still in use, …).
    pub(crate) fn reopen(&self) -> Result<Arc<Database>> {
        let db =
            open_registered_waiting(&self.path, self.sharing, false, &MAIN_FILE, Duration::ZERO)?;
        *self.handle.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&db));
        Ok(db)
    }
}

/// A random-enough 64-bit id (per-process random hasher seed mixed with the time).
pub(crate) fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Set the main file's version marker to `version` (tests and tooling: simulate a file from
/// another binary). The file must not be open in this process.
///
/// # Errors
/// redb errors.
pub fn stamp_schema_version(path: &Path, version: i64) -> std::result::Result<(), String> {
    let db = open_raw(path, Sharing::default(), false).map_err(|e| e.to_string())?;
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut meta = tx.open_table(META).map_err(|e| e.to_string())?;
        meta.insert(META_SCHEMA_VERSION, version.to_string().as_str())
            .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Whether the file at `path` is a redb database (by its magic number), without opening it.
#[must_use]
pub fn is_redb_file(path: &Path) -> bool {
    use std::io::Read;
    const MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
    let mut head = [0u8; 9];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == MAGIC)
}
