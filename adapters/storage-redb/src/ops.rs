//! Operations on a main redb file: hot backup (a consistent read snapshot copied into a new
//! file), checked restore, status, batched retention, compaction, and bulk import/export for
//! `metis migrate-store`.
//!
//! Invariants:
//! - Backup reads one snapshot (a read transaction: the gateway keeps writing) and copies
//!   every table into a fresh redb file under a temp name in the destination directory; the
//!   file is published with a no-clobber link only when complete, with its metadata block in
//!   `<dest>.meta`. The block has the SQLite backup's fields and format.
//! - Restore leaves the target byte-identical (never even opens it) until every check on the
//!   backup passed: source present, target absent or `--force`, source version equal to the
//!   binary's, `.meta` version and checksum matching, and the copy made beside the target
//!   opening writable, passing redb's integrity check and reading whole (`verify_backup`).
//!   Only then is the target checked for another process holding it, and the verified copy
//!   renamed over it.
//! - Prune deletes non-audit events older than the cutoff in bounded batches, one short
//!   write transaction each, removing each row's index entries with it.
//! - Import writes rows as given (payloads untouched, so an imported audit chain stays
//!   verifiable) in batches, skipping ids already present.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gw_domain::audit::AUDIT_TYPES;
pub use gw_domain::backup::{BackupMeta, RestoreSummary};
use gw_domain::backup::{MetaFields, parse_meta};
use gw_domain::sessions::SessionRecord;
pub use gw_ports::storage::{CompactReport, MaintenanceError, Progress, PruneCounts, StoreStatus};
use gw_ports::trace::EventRow;
use redb::{
    Builder, ConcurrencyMode, Database, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle,
};
use sha2::{Digest, Sha256};

use crate::db::{
    AUDIT_CHAIN, EV_BY_KEY, EV_BY_SESSION, EV_BY_TEAM, EV_BY_TIME, EV_BY_TURN, EV_BY_TYPE_TIME,
    EV_BY_USER, EVENTS, KEYS, META, SESSIONS, SESSIONS_BY_PARENT, SESSIONS_BY_UPDATED, Sharing,
    StoreError, TRACE_SCHEMA_VERSION, describe_open_error, open_shared, read_version,
};
use crate::query;
use crate::rows::{EventTables, RowRef};
use crate::sessions::SessionTables;

fn failed(path: &Path, what: &str) -> impl Fn(StoreError) -> MaintenanceError {
    let shown = path.display().to_string();
    let what = what.to_owned();
    move |e| MaintenanceError::Failed(format!("{what} {shown}: {e}"))
}

fn io_err(path: &Path, what: &str) -> impl Fn(io::Error) -> MaintenanceError {
    let shown = path.display().to_string();
    let what = what.to_owned();
    move |e| MaintenanceError::Failed(format!("{what} {shown}: {e}"))
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

/// Open an existing main file (shared within the process), mapping a newer file to `TooNew`.
fn open_existing(path: &Path) -> Result<Arc<Database>, MaintenanceError> {
    require_file(path, "redb database")?;
    open_shared(path, Sharing::default(), false).map_err(|e| match e {
        StoreError::TooNew { found, supported } => MaintenanceError::TooNew {
            path: path.to_path_buf(),
            found,
            supported,
        },
        other => MaintenanceError::Failed(describe_open_error(path, &other)),
    })
}

/// `<path><suffix>`.
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

/// Removes a temp file unless disarmed.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
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

/// Copy one table of the snapshot `from` into the write transaction `to` (when it exists).
fn copy_table<K, V>(
    from: &ReadTransaction,
    to: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
    on_row: &mut dyn FnMut(),
) -> crate::db::Result<()>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let src = match from.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut dst = to.open_table(def)?;
    for item in src.iter()? {
        let (k, v) = item?;
        dst.insert(k.value(), v.value())?;
        on_row();
    }
    Ok(())
}

/// Copy every table of the snapshot `snap` into the new file `dest`.
fn copy_snapshot(
    snap: &ReadTransaction,
    dest: &Path,
    progress: Progress<'_>,
) -> crate::db::Result<()> {
    let total = snap.open_table(EVENTS)?.len()?;
    let db = Database::create(dest)?;
    let tx = db.begin_write()?;
    {
        let mut done = 0u64;
        let mut tick = || {
            done += 1;
            if done.is_multiple_of(4096) {
                progress(done.min(total), total);
            }
        };
        let mut quiet = || {};
        copy_table(snap, &tx, META, &mut quiet)?;
        copy_table(snap, &tx, EVENTS, &mut tick)?;
        copy_table(snap, &tx, EV_BY_SESSION, &mut quiet)?;
        copy_table(snap, &tx, EV_BY_TURN, &mut quiet)?;
        copy_table(snap, &tx, EV_BY_TYPE_TIME, &mut quiet)?;
        copy_table(snap, &tx, EV_BY_TIME, &mut quiet)?;
        copy_table(snap, &tx, EV_BY_KEY, &mut quiet)?;
        copy_table(snap, &tx, EV_BY_USER, &mut quiet)?;
        copy_table(snap, &tx, EV_BY_TEAM, &mut quiet)?;
        copy_table(snap, &tx, AUDIT_CHAIN, &mut quiet)?;
        copy_table(snap, &tx, SESSIONS, &mut quiet)?;
        copy_table(snap, &tx, SESSIONS_BY_PARENT, &mut quiet)?;
        copy_table(snap, &tx, SESSIONS_BY_UPDATED, &mut quiet)?;
        copy_table(snap, &tx, KEYS, &mut quiet)?;
    }
    tx.commit()?;
    drop(db);
    progress(total, total);
    Ok(())
}

/// Version, event count and time span of a closed redb file (read-only open).
fn describe_file(path: &Path) -> crate::db::Result<(i64, u64, Option<i64>, Option<i64>)> {
    let db = Builder::new()
        .set_concurrency_mode(ConcurrencyMode::MultiWriter)
        .open_read_only(path)?;
    let version = read_version(&db)?.unwrap_or(0);
    let tx = db.begin_read()?;
    let events = match tx.open_table(EVENTS) {
        Ok(t) => t.len()?,
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    let (oldest, newest) = match tx.open_table(EV_BY_TIME) {
        Ok(t) => (
            t.first()?.map(|(k, _)| k.value().0),
            t.last()?.map(|(k, _)| k.value().0),
        ),
        Err(_) => (None, None),
    };
    Ok((version, events, oldest, newest))
}

/// Hot backup of the main redb file `src` into the new file `dest` (see the module docs).
///
/// # Errors
/// `Refused` when `src` is missing or `dest` (or `<dest>.meta`) exists; `TooNew` when `src`
/// comes from a newer binary; `Failed` otherwise (no file is left behind).
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
    let db = open_existing(src)?;
    let dir = parent_dir(dest);
    fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create directory"))?;
    let dir = dir.canonicalize().map_err(io_err(&dir, "cannot resolve"))?;
    let tmp = TempFile {
        path: temp_name(&dir, dest, "backup"),
        armed: true,
    };
    let tmp_meta = TempFile {
        path: temp_name(&dir, &meta_path, "meta"),
        armed: true,
    };
    {
        let snap = db
            .begin_read()
            .map_err(|e| failed(src, "cannot read")(e.into()))?;
        copy_snapshot(&snap, &tmp.path, progress).map_err(failed(src, "backup of"))?;
    }
    drop(db);
    File::open(&tmp.path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp.path, "cannot sync"))?;
    let bytes = fs::metadata(&tmp.path)
        .map_err(io_err(&tmp.path, "cannot stat"))?
        .len();
    let (schema_version, events, oldest, newest) =
        describe_file(&tmp.path).map_err(failed(&tmp.path, "cannot read"))?;
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
        let _ = fs::remove_file(dest);
        return Err(e);
    }
    let mut tmp_meta = tmp_meta;
    tmp_meta.armed = false;
    fsync_dir(&dir);
    Ok(meta)
}

/// Replace the main redb file `dest` with the backup `src` (checks in the module docs'
/// order).
///
/// # Errors
/// `Refused` for every failed check (nothing changed); `Failed` on I/O or redb errors.
pub fn restore(
    src: &Path,
    dest: &Path,
    force: bool,
    progress: Progress<'_>,
) -> Result<RestoreSummary, MaintenanceError> {
    require_file(src, "backup")?;
    if dest.exists() && !force {
        return Err(MaintenanceError::Refused(format!(
            "restore target {} exists; pass --force to replace it",
            dest.display()
        )));
    }
    let (version, _, _, _) = describe_file(src).map_err(|e| {
        MaintenanceError::Refused(format!(
            "{} is not a readable redb backup: {e}",
            src.display()
        ))
    })?;
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
    if let Some(MetaFields {
        schema_version: v, ..
    }) = &meta
    {
        match v.as_deref() {
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
    // Everything about the backup is proven on a private copy before the target is touched
    // (not even opened): the checksum, then that the copy opens and reads whole.
    let tmp = TempFile {
        path: temp_name(&dir, dest, "restore"),
        armed: true,
    };
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
    // redb panics on some damaged pages (an invalid page type byte) instead of returning an
    // error; that is a refusal like any other damage.
    let verified = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        verify_backup(&tmp.path).map_err(|e| e.to_string())
    }))
    .unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("redb panicked");
        Err(format!("redb cannot read it: {why}"))
    });
    let events = verified.map_err(|e| {
        MaintenanceError::Refused(format!(
            "backup {} is damaged or not a metis redb database (nothing was changed): {e}",
            src.display()
        ))
    })?;
    // The lock check comes last: an exclusive open succeeds only when no other process has
    // the file open (a gateway shares it), and it may write the file's header, which is
    // acceptable only once the file is certain to be replaced. It is held until the rename.
    let _exclusive = if dest.exists() {
        let mut b = Builder::new();
        b.set_concurrency_mode(ConcurrencyMode::ExclusiveWriter);
        match b.open(dest) {
            Ok(db) => Some(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(MaintenanceError::Refused(format!(
                    "a running gateway (or another metis process) has {} open; stop the writer \
                     first, then restore",
                    dest.display()
                )));
            }
            // A damaged target is being replaced anyway.
            Err(_) => None,
        }
    } else {
        None
    };
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

/// Read every entry of one table (decoding keys and values), when it exists; returns the
/// number of entries.
fn read_table<K, V>(tx: &ReadTransaction, def: TableDefinition<K, V>) -> crate::db::Result<u64>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let t = match tx.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut n = 0u64;
    for item in t.iter()? {
        let (k, v) = item?;
        let _ = (k.value(), v.value());
        n += 1;
    }
    Ok(n)
}

/// Prove a restored copy is a usable main file before it replaces anything: it opens the way
/// the gateway opens it (writable), passes redb's integrity check (page checksums and the
/// allocator state), has this binary's schema, and every table reads whole, with the event
/// indexes agreeing with the events. Returns the number of events.
fn verify_backup(path: &Path) -> crate::db::Result<u64> {
    let mut db = Builder::new()
        .set_concurrency_mode(ConcurrencyMode::ExclusiveWriter)
        .open(path)?;
    if !db.check_integrity()? {
        return Err(StoreError::Other(
            "redb's integrity check failed (the file needed repair: truncated or damaged)".into(),
        ));
    }
    match read_version(&db)? {
        Some(TRACE_SCHEMA_VERSION) => {}
        other => {
            return Err(StoreError::Other(format!(
                "schema version {} (this binary: {TRACE_SCHEMA_VERSION})",
                other.map_or_else(|| "missing".to_owned(), |v| v.to_string())
            )));
        }
    }
    let tx = db.begin_read()?;
    if let Err(redb::TableError::TableDoesNotExist(_)) = tx.open_table(EVENTS) {
        return Err(StoreError::Other("it has no events table".into()));
    }
    read_table(&tx, META)?;
    let events = read_table(&tx, EVENTS)?;
    let by_time = read_table(&tx, EV_BY_TIME)?;
    let by_session = read_table(&tx, EV_BY_SESSION)?;
    read_table(&tx, EV_BY_TURN)?;
    read_table(&tx, EV_BY_TYPE_TIME)?;
    read_table(&tx, EV_BY_KEY)?;
    read_table(&tx, EV_BY_USER)?;
    read_table(&tx, EV_BY_TEAM)?;
    read_table(&tx, AUDIT_CHAIN)?;
    read_table(&tx, SESSIONS)?;
    read_table(&tx, SESSIONS_BY_PARENT)?;
    read_table(&tx, SESSIONS_BY_UPDATED)?;
    read_table(&tx, KEYS)?;
    if by_time != events || by_session != events {
        return Err(StoreError::Other(format!(
            "its indexes disagree with its {events} events (by time {by_time}, by session {by_session})"
        )));
    }
    Ok(events)
}

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

/// Read the status of `path`.
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on redb errors.
pub fn status(path: &Path, now: i64) -> Result<StoreStatus, MaintenanceError> {
    let db = open_existing(path)?;
    let err = failed(path, "cannot read");
    let version = read_version(db.as_ref()).map_err(&err)?.unwrap_or(0);
    let (events, oldest, newest) = query::event_span(&db).map_err(&err)?;
    let tx = db.begin_read().map_err(|e| err(e.into()))?;
    let by_time = tx.open_table(EV_BY_TIME).map_err(|e| err(e.into()))?;
    let mut recent = 0u64;
    for item in by_time
        .range((now - 300 * 1_000_000 + 1, "")..)
        .map_err(|e| err(e.into()))?
    {
        item.map_err(|e| err(e.into()))?;
        recent += 1;
    }
    let mut audit = 0u64;
    for ty in AUDIT_TYPES {
        audit += query::count_by_type(&db, ty).map_err(&err)?;
    }
    let sessions = crate::sessions::read::count(&db).map_err(&err)?;
    Ok(StoreStatus {
        path: path.to_path_buf(),
        schema_version: version,
        supported_version: TRACE_SCHEMA_VERSION,
        events,
        oldest_event_us: oldest,
        newest_event_us: newest,
        events_last_5_min: recent,
        audit_events: audit,
        sessions,
        file_bytes: fs::metadata(path).map_or(0, |m| m.len()),
        wal_bytes: 0,
    })
}

/// Ids older than `cutoff` split into (prunable, audit-exempt count), from `events_by_time`.
fn older_than(db: &Database, cutoff: i64) -> crate::db::Result<(Vec<(i64, String)>, u64)> {
    let tx = db.begin_read()?;
    let by_time = tx.open_table(EV_BY_TIME)?;
    let events = tx.open_table(EVENTS)?;
    let mut prunable = Vec::new();
    let mut exempt = 0u64;
    for item in by_time.range(..(cutoff, ""))? {
        let (k, _) = item?;
        let (ts, id) = k.value();
        let Some(v) = events.get(id)? else { continue };
        let ty = v.value().4;
        if AUDIT_TYPES.contains(&ty) {
            exempt += 1;
        } else {
            prunable.push((ts, id.to_owned()));
        }
    }
    Ok((prunable, exempt))
}

/// The oldest event left (after a prune).
fn oldest_kept(db: &Database) -> crate::db::Result<Option<i64>> {
    let tx = db.begin_read()?;
    let by_time = tx.open_table(EV_BY_TIME)?;
    Ok(by_time.first()?.map(|(k, _)| k.value().0))
}

/// Count what a prune at `cutoff` would delete (a dry run).
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on redb errors.
pub fn prune_dry_run(path: &Path, cutoff: i64) -> Result<PruneCounts, MaintenanceError> {
    let db = open_existing(path)?;
    let (prunable, exempt) = older_than(&db, cutoff).map_err(failed(path, "cannot count"))?;
    // What stays: the oldest audit row before the cutoff, or the first row at/after it.
    let kept = kept_after(&db, &prunable).map_err(failed(path, "cannot read"))?;
    Ok(PruneCounts {
        rows_eligible: prunable.len() as u64,
        rows_audit_exempt: exempt,
        rows_deleted: 0,
        oldest_kept_us: kept,
    })
}

/// The oldest timestamp that is not in `prunable`.
fn kept_after(db: &Database, prunable: &[(i64, String)]) -> crate::db::Result<Option<i64>> {
    let gone: std::collections::HashSet<&str> =
        prunable.iter().map(|(_, id)| id.as_str()).collect();
    let tx = db.begin_read()?;
    let by_time = tx.open_table(EV_BY_TIME)?;
    for item in by_time.iter()? {
        let (k, _) = item?;
        let (ts, id) = k.value();
        if !gone.contains(id) {
            return Ok(Some(ts));
        }
    }
    Ok(None)
}

/// Delete non-audit events older than `cutoff` in batches of `batch_rows`, one write
/// transaction each, pausing `pause` between batches. `progress` gets `(deleted, eligible)`.
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on redb errors (committed batches
/// stay deleted; rerunning continues).
pub fn prune(
    path: &Path,
    cutoff: i64,
    batch_rows: u32,
    pause: Duration,
    progress: Progress<'_>,
) -> Result<PruneCounts, MaintenanceError> {
    let db = open_existing(path)?;
    let (prunable, exempt) = older_than(&db, cutoff).map_err(failed(path, "cannot count"))?;
    let eligible = prunable.len() as u64;
    let mut deleted = 0u64;
    progress(0, eligible);
    for chunk in prunable.chunks(batch_rows.max(1) as usize) {
        let run = || -> crate::db::Result<u64> {
            let tx = db.begin_write()?;
            let mut n = 0;
            {
                let mut t = EventTables::open(&tx)?;
                for (_, id) in chunk {
                    if t.remove(id)? {
                        n += 1;
                    }
                }
            }
            tx.commit()?;
            Ok(n)
        };
        deleted += run().map_err(failed(path, "cannot delete from"))?;
        progress(deleted, eligible);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    let kept = oldest_kept(&db).map_err(failed(path, "cannot read"))?;
    Ok(PruneCounts {
        rows_eligible: eligible,
        rows_audit_exempt: exempt,
        rows_deleted: deleted,
        oldest_kept_us: kept,
    })
}

/// Compact the file (redb `compact`): needs the file to itself, so it refuses while another
/// process has it open.
///
/// # Errors
/// `Refused` when the file is missing or in use; `TooNew`; `Failed` on redb errors.
pub fn compact(path: &Path) -> Result<CompactReport, MaintenanceError> {
    require_file(path, "redb database")?;
    let version = crate::db::schema_version(path).map_err(MaintenanceError::Failed)?;
    if let Some(found) = version
        && found > TRACE_SCHEMA_VERSION
    {
        return Err(MaintenanceError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: TRACE_SCHEMA_VERSION,
        });
    }
    let bytes_before = fs::metadata(path).map_or(0, |m| m.len());
    let mut b = Builder::new();
    b.set_concurrency_mode(ConcurrencyMode::ExclusiveWriter);
    let mut db = match b.open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(MaintenanceError::Refused(format!(
                "{} is open in another process (a running gateway?); compaction needs the file \
                 to itself: stop the writer first",
                path.display()
            )));
        }
        Err(e) => {
            return Err(MaintenanceError::Failed(format!(
                "cannot open {}: {e}",
                path.display()
            )));
        }
    };
    while db
        .compact()
        .map_err(|e| MaintenanceError::Failed(format!("cannot compact {}: {e}", path.display())))?
    {
    }
    drop(db);
    Ok(CompactReport {
        bytes_before,
        bytes_after: fs::metadata(path).map_or(0, |m| m.len()),
    })
}

/// Write `rows` (as given: payloads untouched, chain links kept) into the main file in one
/// transaction, skipping ids already stored. Returns how many were written.
///
/// # Errors
/// redb errors.
pub fn import_events(db: &Database, rows: &[EventRow]) -> Result<u64, StoreError> {
    let tx = db.begin_write()?;
    let mut n = 0;
    {
        let mut t = EventTables::open(&tx)?;
        for r in rows {
            if t.contains(&r.id)? {
                continue;
            }
            t.insert(
                &RowRef {
                    id: &r.id,
                    timestamp_us: r.timestamp_us,
                    session_id: &r.session_id,
                    turn_id: r.turn_id.as_deref(),
                    parent_event_id: r.parent_event_id.as_deref(),
                    event_type: &r.event_type,
                    actor: &r.actor,
                    sensitivity: &r.sensitivity,
                    payload_json: &r.payload_json,
                },
                None,
            )?;
            n += 1;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Write session rows as given (indexes included) in one transaction.
///
/// # Errors
/// redb errors.
pub fn import_sessions(db: &Database, rows: &[SessionRecord]) -> Result<u64, StoreError> {
    let tx = db.begin_write()?;
    {
        let mut t = SessionTables::open(&tx)?;
        for r in rows {
            let previous = t.get(&r.id)?;
            t.put(r, previous.as_ref())?;
        }
    }
    tx.commit()?;
    Ok(rows.len() as u64)
}

/// Number of events and sessions in the main file, and whether it holds keys (for
/// `migrate-store`'s empty-destination check and count verification).
///
/// # Errors
/// redb errors.
pub fn counts(db: &Database) -> Result<(u64, u64, u64), StoreError> {
    let tx = db.begin_read()?;
    let events = tx.open_table(EVENTS)?.len()?;
    let sessions = tx.open_table(SESSIONS)?.len()?;
    let keys = match tx.open_table(KEYS) {
        Ok(t) => t.len()?,
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok((events, sessions, keys))
}

/// The names of the tables of the main file (for diagnostics).
///
/// # Errors
/// redb errors.
pub fn table_names(db: &Database) -> Result<Vec<String>, StoreError> {
    let tx = db.begin_read()?;
    Ok(tx.list_tables()?.map(|t| t.name().to_owned()).collect())
}
