//! Operations on a trace database file: hot backup, checked restore, versioned migrations of
//! the trace and sessions schemas, batched retention, vacuum and status.
//!
//! Invariants:
//! - Backup reads through a read-only connection (`VACUUM INTO`, one read transaction: a
//!   consistent snapshot while the gateway keeps writing) into a temp name in the destination
//!   directory, fsyncs it, then publishes it with a no-clobber link; on any failure the temp
//!   file is removed, so a partial backup never exists under the destination name.
//! - The metadata block is a pure function of the published file and the two paths, so the
//!   same file always gives the same block; the block is also written to `<dest>.meta`.
//! - Restore leaves the target and its `-wal`/`-shm` byte-identical until every check passed
//!   (source present and clean, target absent or `--force`, schema version equal to the
//!   binary's, `.meta` version matching, no gateway holding the writer lock, then on a copy in
//!   the target directory: checksum matching, the copy opening and passing `PRAGMA
//!   quick_check`, an `events` table); only then does it fold the old WAL, remove the
//!   target's stale `-wal`/`-shm` and rename the verified copy over it.
//! - Migrations compute their steps from the file's shape, apply them all in one `BEGIN
//!   IMMEDIATE` transaction, and are idempotent (a second run has no steps). Versions are never
//!   lowered, and a file from a newer binary is refused by every operation here.
//! - Prune deletes in bounded batches, one short transaction each, with a pause between, so a
//!   live writer waits for at most one batch; audit events are never deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use gw_domain::backup::{BackupMeta, MetaFields, RestoreSummary, parse_meta};
use gw_domain::retention::sorted_audit_types;
use gw_domain::time::{Timestamp, format_iso};
pub use gw_ports::storage::{
    CompactReport, MaintenanceError, MigrationPlan, Progress, PruneCounts, PruneOptions,
    StoreStatus, no_progress,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};

use crate::lock::{LockError, WriterLock, lock_path};
use crate::schema::{
    EVENT_INDEX_NAMES, Pragmas, SCHEMA_SQL, TRACE_SCHEMA_VERSION, apply_pragmas, open_read_only,
    read_user_version,
};
use crate::sessions::{
    SESSIONS_SCHEMA_VERSION, migrate_sessions, sessions_schema_level, sessions_steps,
};

fn sqlite_err(path: &Path, what: &str) -> impl Fn(rusqlite::Error) -> MaintenanceError {
    let shown = path.display().to_string();
    let what = what.to_owned();
    move |e| MaintenanceError::Failed(format!("{what} {shown}: {e}"))
}

fn io_err(path: &Path, what: &str) -> impl Fn(io::Error) -> MaintenanceError {
    let shown = path.display().to_string();
    let what = what.to_owned();
    move |e| MaintenanceError::Failed(format!("{what} {shown}: {e}"))
}

fn check_version(path: &Path, found: i64) -> Result<(), MaintenanceError> {
    if found > TRACE_SCHEMA_VERSION {
        return Err(MaintenanceError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: TRACE_SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn require_file(path: &Path, what: &str) -> Result<(), MaintenanceError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(MaintenanceError::Refused(format!(
            "{what} {} is not a file",
            path.display()
        ))),
        Err(_) => Err(MaintenanceError::Refused(format!(
            "{what} {} does not exist",
            path.display()
        ))),
    }
}

/// `<path><suffix>` (e.g. `-wal`, `.meta`).
#[must_use]
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_name(dir: &Path, target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map_or_else(|| "metis".into(), |n| n.to_string_lossy().into_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dir.join(format!(".{name}.{tag}.{}.{nanos}.tmp", std::process::id()))
}

/// Removes a temp file (and its SQLite side files) unless disarmed.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            remove_with_side_files(&self.path);
        }
    }
}

fn remove_with_side_files(path: &Path) {
    let _ = fs::remove_file(path);
    for s in ["-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(with_suffix(path, s));
    }
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn sha256_file(path: &Path) -> Result<String, MaintenanceError> {
    let mut f = File::open(path).map_err(io_err(path, "cannot read"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path, "cannot read"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// `COUNT(*)`, `MIN`, `MAX` of `events.timestamp_us` (zero and none for a database without
/// an `events` table, e.g. a pattern store backed up before its migration).
fn event_span(conn: &Connection) -> rusqlite::Result<(u64, Option<i64>, Option<i64>)> {
    let has_events: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get(0),
    )?;
    if has_events == 0 {
        return Ok((0, None, None));
    }
    conn.query_row(
        "SELECT COUNT(*), MIN(timestamp_us), MAX(timestamp_us) FROM events",
        [],
        |r| {
            let n: i64 = r.get(0)?;
            Ok((u64::try_from(n).unwrap_or(0), r.get(1)?, r.get(2)?))
        },
    )
}

/// Publish `tmp` at `dest` without ever replacing an existing file (a hard link fails when
/// `dest` exists), then drop the temp name.
fn publish_no_clobber(tmp: &Path, dest: &Path) -> Result<(), MaintenanceError> {
    match fs::hard_link(tmp, dest) {
        Ok(()) => {
            let _ = fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(MaintenanceError::Refused(format!(
                "backup destination {} already exists (backups never overwrite)",
                dest.display()
            )))
        }
        Err(_) => {
            // No hard links on this filesystem: check, then rename (a narrow race remains).
            if fs::symlink_metadata(dest).is_ok() {
                return Err(MaintenanceError::Refused(format!(
                    "backup destination {} already exists (backups never overwrite)",
                    dest.display()
                )));
            }
            fs::rename(tmp, dest).map_err(io_err(dest, "cannot publish"))
        }
    }
}

fn write_synced(path: &Path, text: &str) -> Result<(), MaintenanceError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path, "cannot create"))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(path, "cannot write"))
}

/// The bytes `VACUUM INTO` is expected to write (used pages of the source).
fn estimated_size(conn: &Connection) -> u64 {
    let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
    let used = q("PRAGMA page_count") - q("PRAGMA freelist_count");
    u64::try_from(used.max(0) * q("PRAGMA page_size")).unwrap_or(0)
}

/// Hot backup of the trace database `src` into the new file `dest` (see the module docs).
///
/// # Errors
/// `Refused` when `src` is missing or `dest` (or `<dest>.meta`) exists; `TooNew` when `src`
/// comes from a newer binary; `Failed` on I/O or SQLite errors (no file is left behind).
pub fn backup(
    src: &Path,
    dest: &Path,
    progress: Progress<'_>,
) -> Result<BackupMeta, MaintenanceError> {
    require_file(src, "source database")?;
    let meta_path = with_suffix(dest, ".meta");
    for p in [dest, meta_path.as_path()] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(MaintenanceError::Refused(format!(
                "backup destination {} already exists (backups never overwrite; choose a new name)",
                p.display()
            )));
        }
    }
    let conn = open_read_only(src, Duration::from_secs(30))
        .map_err(|e| MaintenanceError::Failed(e.to_string()))?;
    let found = read_user_version(&conn).map_err(sqlite_err(src, "cannot read"))?;
    check_version(src, found)?;

    let dir = parent_dir(dest);
    fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create directory"))?;
    let dir = dir.canonicalize().map_err(io_err(&dir, "cannot resolve"))?;
    let tmp = TempFile::new(temp_name(&dir, dest, "backup"));
    let tmp_meta = TempFile::new(temp_name(&dir, &meta_path, "meta"));

    let total = estimated_size(&conn);
    let done = AtomicBool::new(false);
    let vacuum = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                let n = fs::metadata(&tmp.path).map_or(0, |m| m.len());
                progress(n.min(total), total);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let quoted = tmp.path.to_string_lossy().replace('\'', "''");
        let r = conn.execute_batch(&format!("VACUUM INTO '{quoted}'"));
        done.store(true, Ordering::Release);
        r
    });
    vacuum.map_err(sqlite_err(src, "backup (VACUUM INTO) of"))?;
    drop(conn);
    File::open(&tmp.path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp.path, "cannot sync"))?;
    let bytes = fs::metadata(&tmp.path)
        .map_err(io_err(&tmp.path, "cannot stat"))?
        .len();
    progress(bytes, bytes.max(total));

    let (schema_version, events, oldest, newest) = {
        let c = open_read_only(&tmp.path, Duration::from_secs(5))
            .map_err(|e| MaintenanceError::Failed(e.to_string()))?;
        let v = read_user_version(&c).map_err(sqlite_err(&tmp.path, "cannot read"))?;
        let (n, lo, hi) =
            event_span(&c).map_err(sqlite_err(&tmp.path, "cannot count events in"))?;
        (v, n, lo, hi)
    };
    let meta = BackupMeta {
        source: src.to_path_buf(),
        destination: dest.to_path_buf(),
        bytes,
        schema_version,
        events,
        oldest_event_us: oldest,
        newest_event_us: newest,
        sha256: sha256_file(&tmp.path)?,
    };
    write_synced(&tmp_meta.path, &meta.block())?;
    publish_no_clobber(&tmp.path, dest)?;
    let mut tmp = tmp;
    tmp.armed = false;
    if let Err(e) = publish_no_clobber(&tmp_meta.path, &meta_path) {
        // Keep the pair consistent: no backup without its metadata.
        let _ = fs::remove_file(dest);
        return Err(e);
    }
    let mut tmp_meta = tmp_meta;
    tmp_meta.armed = false;
    fsync_dir(&dir);
    Ok(meta)
}

/// `PRAGMA user_version` read from the file header (offset 60), without opening the file
/// with SQLite (which could create side files next to it).
///
/// # Errors
/// `Refused` when the file is not a SQLite database.
pub fn header_user_version(path: &Path) -> Result<i64, MaintenanceError> {
    let mut head = [0u8; 100];
    let mut f = File::open(path).map_err(io_err(path, "cannot read"))?;
    let not_db =
        || MaintenanceError::Refused(format!("{} is not a SQLite database", path.display()));
    f.read_exact(&mut head).map_err(|_| not_db())?;
    if &head[..16] != b"SQLite format 3\0" {
        return Err(not_db());
    }
    Ok(i64::from(i32::from_be_bytes([
        head[60], head[61], head[62], head[63],
    ])))
}

/// Copy `src` to `dst` (new file), hashing as it goes; fsyncs `dst`.
fn copy_hashing(
    src: &Path,
    dst: &Path,
    progress: Progress<'_>,
) -> Result<(u64, String), MaintenanceError> {
    let mut input = File::open(src).map_err(io_err(src, "cannot read"))?;
    let total = input.metadata().map_err(io_err(src, "cannot stat"))?.len();
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io_err(dst, "cannot create"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io_err(src, "cannot read"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io_err(dst, "cannot write"))?;
        done += n as u64;
        progress(done, total);
    }
    out.sync_all().map_err(io_err(dst, "cannot sync"))?;
    Ok((done, hex::encode(h.finalize())))
}

/// Replace the trace database `dest` with the backup `src` (see the module docs for the
/// checks, in order).
///
/// # Errors
/// `Refused` for every failed check (nothing changed); `Failed` on I/O or SQLite errors (the
/// target is unchanged unless the final rename happened).
pub fn restore(
    src: &Path,
    dest: &Path,
    force: bool,
    progress: Progress<'_>,
) -> Result<RestoreSummary, MaintenanceError> {
    require_file(src, "backup")?;
    for s in ["-wal", "-shm"] {
        let side = with_suffix(src, s);
        if side.exists() {
            return Err(MaintenanceError::Refused(format!(
                "{} exists: {} is a live database, not a clean backup; take one with \
                 `metis backup` (or stop its writer so SQLite removes the file)",
                side.display(),
                src.display()
            )));
        }
    }
    if dest.exists() && !force {
        return Err(MaintenanceError::Refused(format!(
            "restore target {} exists; pass --force to replace it",
            dest.display()
        )));
    }
    let version = header_user_version(src)?;
    if version != TRACE_SCHEMA_VERSION {
        return Err(MaintenanceError::Refused(format!(
            "backup {} has schema version {version} but this binary uses schema version \
             {TRACE_SCHEMA_VERSION}; restore it with a metis binary of schema version {version} \
             (there is no in-place migration of a backup)",
            src.display()
        )));
    }
    let meta_path = with_suffix(src, ".meta");
    let meta = match fs::read_to_string(&meta_path) {
        Ok(text) => Some(parse_meta(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&meta_path, "cannot read")(e)),
    };
    if let Some(m) = &meta {
        match m.schema_version.as_deref() {
            Some(v) if v == version.to_string() => {}
            Some(v) => {
                return Err(MaintenanceError::Refused(format!(
                    "{} says schema version {v} but the backup file has schema version \
                     {version} (this binary: {TRACE_SCHEMA_VERSION}); the metadata does not \
                     belong to this file",
                    meta_path.display()
                )));
            }
            None => {
                return Err(MaintenanceError::Refused(format!(
                    "{} has no `schema version:` line",
                    meta_path.display()
                )));
            }
        }
    }

    let dir = parent_dir(dest);
    fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create directory"))?;
    // The lock is taken last among the checks and held until the rename: a gateway starting
    // meanwhile is refused instead of opening a half-replaced file.
    let _lock = WriterLock::exclusive(dest).map_err(|e| match e {
        LockError::Held { .. } => MaintenanceError::Refused(format!(
            "a running gateway holds {} (lock {}); stop the writer first, then restore",
            dest.display(),
            lock_path(dest).display()
        )),
        LockError::Io { .. } => MaintenanceError::Failed(e.to_string()),
    })?;

    let tmp = TempFile::new(temp_name(&dir, dest, "restore"));
    let (bytes, sha) = copy_hashing(src, &tmp.path, progress)?;
    if let Some(expected) = meta.as_ref().and_then(|m| m.sha256.as_deref())
        && expected != sha
    {
        return Err(MaintenanceError::Refused(format!(
            "checksum mismatch: {} records sha256 {expected} but {} has {sha}; the backup is \
             damaged or was modified",
            meta_path.display(),
            src.display()
        )));
    }
    // Proven on the private copy before the target is touched: it opens, passes SQLite's
    // structural check (every page of every table and index read), and is a trace database.
    let damaged = |e: rusqlite::Error| {
        MaintenanceError::Refused(format!(
            "backup {} is damaged (truncated or corrupt; nothing was changed): {e}",
            src.display()
        ))
    };
    let events = {
        let c = Connection::open_with_flags(
            &tmp.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(damaged)?;
        let check: String = c
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(damaged)?;
        if check != "ok" {
            return Err(MaintenanceError::Refused(format!(
                "backup {} is damaged: it fails SQLite's integrity check (nothing was changed): \
                 {check}",
                src.display()
            )));
        }
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .map_err(|e| {
                MaintenanceError::Refused(format!(
                    "backup {} is not a trace database (cannot count events: {e})",
                    src.display()
                ))
            })?;
        u64::try_from(n).unwrap_or(0)
    };
    for s in ["-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(with_suffix(&tmp.path, s));
    }

    if dest.exists() {
        // Fold the old file's WAL into it first, so even a crash right after the WAL is
        // removed loses nothing of the old database (best effort: it is being replaced).
        if let Ok(old) = Connection::open_with_flags(dest, OpenFlags::SQLITE_OPEN_READ_WRITE) {
            let _ = old.busy_timeout(Duration::from_secs(1));
            let _ = old.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }
    // Stale side files must go before the new file appears: SQLite would otherwise replay the
    // old WAL onto the restored database.
    for s in ["-wal", "-shm", "-journal"] {
        let side = with_suffix(dest, s);
        match fs::remove_file(&side) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&side, "cannot remove stale")(e)),
        }
    }
    fs::rename(&tmp.path, dest).map_err(io_err(dest, "cannot replace"))?;
    let mut tmp = tmp;
    tmp.armed = false;
    fsync_dir(&dir);
    Ok(RestoreSummary {
        source: src.to_path_buf(),
        destination: dest.to_path_buf(),
        bytes,
        schema_version: version,
        events,
    })
}

fn trace_steps(conn: &Connection, current: i64) -> rusqlite::Result<Vec<String>> {
    let mut steps = Vec::new();
    let names: Vec<String> = {
        let mut stmt = conn.prepare("SELECT type || ':' || name FROM sqlite_master")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    if !names.iter().any(|n| n == "table:events") {
        steps.push("create table events".to_owned());
    }
    for idx in EVENT_INDEX_NAMES {
        if !names.iter().any(|n| n == &format!("index:{idx}")) {
            steps.push(format!("create index {idx}"));
        }
    }
    if current < TRACE_SCHEMA_VERSION {
        steps.push(format!(
            "set PRAGMA user_version {current} -> {TRACE_SCHEMA_VERSION}"
        ));
    }
    Ok(steps)
}

fn open_existing_rw(path: &Path) -> Result<Connection, MaintenanceError> {
    require_file(path, "database")?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path, "cannot open"))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(sqlite_err(path, "cannot configure"))?;
    let found = read_user_version(&conn).map_err(sqlite_err(path, "cannot read"))?;
    check_version(path, found)?;
    apply_pragmas(
        &conn,
        Pragmas {
            wal_autocheckpoint_pages: 8192,
            busy_timeout: Duration::from_secs(30),
        },
    )
    .map_err(sqlite_err(path, "cannot configure"))?;
    Ok(conn)
}

fn open_existing_ro(path: &Path) -> Result<(Connection, i64), MaintenanceError> {
    require_file(path, "database")?;
    let conn = open_read_only(path, Duration::from_secs(5))
        .map_err(|e| MaintenanceError::Failed(e.to_string()))?;
    let found = read_user_version(&conn).map_err(sqlite_err(path, "cannot read"))?;
    check_version(path, found)?;
    Ok((conn, found))
}

/// The trace migration of `db`, without changing it.
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on SQLite errors.
pub fn plan_trace_migration(db: &Path) -> Result<MigrationPlan, MaintenanceError> {
    let (conn, current) = open_existing_ro(db)?;
    let steps = trace_steps(&conn, current).map_err(sqlite_err(db, "cannot inspect"))?;
    Ok(MigrationPlan {
        path: db.to_path_buf(),
        current,
        target: TRACE_SCHEMA_VERSION,
        steps,
    })
}

/// Apply the trace migration of `db` in one transaction. Returns the steps applied (none when
/// already current).
///
/// # Errors
/// As [`plan_trace_migration`].
pub fn apply_trace_migration(db: &Path) -> Result<MigrationPlan, MaintenanceError> {
    let mut conn = open_existing_rw(db)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(db, "cannot lock"))?;
    let current = read_user_version(&tx).map_err(sqlite_err(db, "cannot read"))?;
    check_version(db, current)?;
    let steps = trace_steps(&tx, current).map_err(sqlite_err(db, "cannot inspect"))?;
    if !steps.is_empty() {
        tx.execute_batch(SCHEMA_SQL)
            .map_err(sqlite_err(db, "cannot migrate"))?;
        if current < TRACE_SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", TRACE_SCHEMA_VERSION)
                .map_err(sqlite_err(db, "cannot stamp"))?;
        }
    }
    tx.commit().map_err(sqlite_err(db, "cannot commit"))?;
    Ok(MigrationPlan {
        path: db.to_path_buf(),
        current,
        target: TRACE_SCHEMA_VERSION,
        steps,
    })
}

/// The sessions migration of `db`, without changing it.
///
/// # Errors
/// As [`plan_trace_migration`].
pub fn plan_sessions_migration(db: &Path) -> Result<MigrationPlan, MaintenanceError> {
    let (conn, _) = open_existing_ro(db)?;
    let current = sessions_schema_level(&conn).map_err(sqlite_err(db, "cannot inspect"))?;
    let steps = sessions_steps(&conn).map_err(sqlite_err(db, "cannot inspect"))?;
    Ok(MigrationPlan {
        path: db.to_path_buf(),
        current,
        target: SESSIONS_SCHEMA_VERSION,
        steps: steps.iter().map(ToString::to_string).collect(),
    })
}

/// Apply the sessions migration of `db` in one transaction, keeping every row.
///
/// # Errors
/// As [`plan_trace_migration`].
pub fn apply_sessions_migration(db: &Path) -> Result<MigrationPlan, MaintenanceError> {
    let mut conn = open_existing_rw(db)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(db, "cannot lock"))?;
    check_version(
        db,
        read_user_version(&tx).map_err(sqlite_err(db, "cannot read"))?,
    )?;
    let current = sessions_schema_level(&tx).map_err(sqlite_err(db, "cannot inspect"))?;
    let steps = migrate_sessions(&tx).map_err(sqlite_err(db, "cannot migrate"))?;
    tx.commit().map_err(sqlite_err(db, "cannot commit"))?;
    Ok(MigrationPlan {
        path: db.to_path_buf(),
        current,
        target: SESSIONS_SCHEMA_VERSION,
        steps: steps.iter().map(ToString::to_string).collect(),
    })
}

/// Where a migration's automatic backup goes: next to the file, named with the UTC time
/// (`<name>.pre-migrate-20260515T142210Z.db`).
#[must_use]
pub fn migration_backup_path(db: &Path, now: Timestamp) -> PathBuf {
    let iso = format_iso(now);
    let stamp: String = iso
        .chars()
        .take(19)
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let name = db
        .file_name()
        .map_or_else(|| "metis.db".into(), |n| n.to_string_lossy().into_owned());
    parent_dir(db).join(format!("{name}.pre-migrate-{stamp}Z.db"))
}

fn audit_list_sql() -> String {
    sorted_audit_types()
        .iter()
        .map(|t| format!("'{}'", t.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn count_prunable(conn: &Connection, cutoff: i64) -> rusqlite::Result<(u64, u64)> {
    let list = audit_list_sql();
    let q = |sql: &str| -> rusqlite::Result<u64> {
        conn.query_row(sql, params![cutoff], |r| r.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
    };
    let eligible = q(&format!(
        "SELECT COUNT(*) FROM events WHERE timestamp_us < ?1 AND type NOT IN ({list})"
    ))?;
    let exempt = q(&format!(
        "SELECT COUNT(*) FROM events WHERE timestamp_us < ?1 AND type IN ({list})"
    ))?;
    Ok((eligible, exempt))
}

fn oldest_kept(conn: &Connection, cutoff: i64) -> rusqlite::Result<Option<i64>> {
    let list = audit_list_sql();
    let newer: Option<i64> = conn.query_row(
        "SELECT MIN(timestamp_us) FROM events WHERE timestamp_us >= ?1",
        params![cutoff],
        |r| r.get(0),
    )?;
    let audit: Option<i64> = conn.query_row(
        &format!(
            "SELECT MIN(timestamp_us) FROM events WHERE timestamp_us < ?1 AND type IN ({list})"
        ),
        params![cutoff],
        |r| r.get(0),
    )?;
    Ok(match (newer, audit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// Count what a prune at `cutoff` would delete, read-only (a dry run).
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on SQLite errors.
pub fn prune_dry_run(db: &Path, cutoff: i64) -> Result<PruneCounts, MaintenanceError> {
    let (conn, _) = open_existing_ro(db)?;
    let (eligible, exempt) =
        count_prunable(&conn, cutoff).map_err(sqlite_err(db, "cannot count"))?;
    Ok(PruneCounts {
        rows_eligible: eligible,
        rows_audit_exempt: exempt,
        rows_deleted: 0,
        oldest_kept_us: oldest_kept(&conn, cutoff).map_err(sqlite_err(db, "cannot read"))?,
    })
}

/// Delete non-audit events older than `cutoff` in batches of `opts.batch_rows`, one
/// transaction each. `progress` gets `(deleted, eligible)`.
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on SQLite errors (batches already
/// committed stay deleted; rerunning continues).
pub fn prune(
    db: &Path,
    cutoff: i64,
    opts: PruneOptions,
    progress: Progress<'_>,
) -> Result<PruneCounts, MaintenanceError> {
    let mut conn = open_existing_rw(db)?;
    let (eligible, exempt) =
        count_prunable(&conn, cutoff).map_err(sqlite_err(db, "cannot count"))?;
    let sql = format!(
        "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events \
         WHERE timestamp_us < ?1 AND type NOT IN ({}) LIMIT ?2)",
        audit_list_sql()
    );
    let batch = i64::from(opts.batch_rows.max(1));
    let mut deleted = 0u64;
    progress(0, eligible);
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite_err(db, "cannot lock"))?;
        let n = tx
            .execute(&sql, params![cutoff, batch])
            .map_err(sqlite_err(db, "cannot delete from"))?;
        tx.commit().map_err(sqlite_err(db, "cannot commit"))?;
        deleted += n as u64;
        progress(deleted.min(eligible.max(deleted)), eligible.max(deleted));
        if (n as i64) < batch {
            break;
        }
        if !opts.pause.is_zero() {
            std::thread::sleep(opts.pause);
        }
    }
    Ok(PruneCounts {
        rows_eligible: eligible,
        rows_audit_exempt: exempt,
        rows_deleted: deleted,
        oldest_kept_us: oldest_kept(&conn, cutoff).map_err(sqlite_err(db, "cannot read"))?,
    })
}

/// Size of the database file plus its WAL.
fn db_bytes(db: &Path) -> u64 {
    let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    size(db) + size(&with_suffix(db, "-wal"))
}

/// `VACUUM` the database, then truncate its WAL. Blocks writers while it runs.
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on SQLite errors.
pub fn vacuum(db: &Path) -> Result<CompactReport, MaintenanceError> {
    let conn = open_existing_rw(db)?;
    let bytes_before = db_bytes(db);
    conn.execute_batch("VACUUM")
        .map_err(sqlite_err(db, "cannot vacuum"))?;
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(CompactReport {
        bytes_before,
        bytes_after: db_bytes(db),
    })
}

/// Read the status of `db` (read-only).
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on SQLite errors.
pub fn status(db: &Path, now: Timestamp) -> Result<StoreStatus, MaintenanceError> {
    let (conn, version) = open_existing_ro(db)?;
    let err = sqlite_err(db, "cannot read");
    let (events, oldest, newest) = event_span(&conn).map_err(&err)?;
    let recent: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM events WHERE timestamp_us > ?1",
            params![now - 300 * gw_domain::time::MICROS_PER_SEC],
            |r| r.get(0),
        )
        .map_err(&err)?;
    let audit: i64 = conn
        .query_row(
            &format!(
                "SELECT COUNT(*) FROM events WHERE type IN ({})",
                audit_list_sql()
            ),
            [],
            |r| r.get(0),
        )
        .map_err(&err)?;
    let sessions: Option<i64> = conn
        .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
        .optional()
        .unwrap_or(None);
    Ok(StoreStatus {
        path: db.to_path_buf(),
        schema_version: version,
        supported_version: TRACE_SCHEMA_VERSION,
        events,
        oldest_event_us: oldest,
        newest_event_us: newest,
        events_last_5_min: u64::try_from(recent).unwrap_or(0),
        audit_events: u64::try_from(audit).unwrap_or(0),
        sessions: sessions.map_or(0, |n| u64::try_from(n).unwrap_or(0)),
        file_bytes: fs::metadata(db).map_or(0, |m| m.len()),
        wal_bytes: fs::metadata(with_suffix(db, "-wal")).map_or(0, |m| m.len()),
    })
}
