//! The redb steps of backup (every table of one read snapshot copied into a new file) and
//! restore (redb's integrity check and a whole read of the copy, then an exclusive open of the
//! target). The order of the checks is `metis_storage_kit::{backup, restore}`'s.

use std::path::Path;
use std::sync::Arc;

use metis_ports::storage::{MaintenanceError, Progress};
use metis_storage_kit::{BackupEngine, Claim, FileFacts, RestoreEngine};
use redb::{
    Builder, ConcurrencyMode, Database, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};

use super::{failed, open_existing};
use crate::db::{
    AUDIT_CHAIN, EV_BY_KEY, EV_BY_SESSION, EV_BY_TEAM, EV_BY_TIME, EV_BY_TURN, EV_BY_TYPE_TIME,
    EV_BY_USER, EVENTS, KEYS, META, SESSIONS, SESSIONS_BY_PARENT, SESSIONS_BY_UPDATED, StoreError,
    TRACE_SCHEMA_VERSION, read_version,
};

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

pub(crate) struct Redb;

impl BackupEngine for Redb {
    type Source = Arc<Database>;

    fn open_source(&self, src: &Path) -> Result<Arc<Database>, MaintenanceError> {
        open_existing(src)
    }

    fn snapshot(
        &self,
        db: Arc<Database>,
        src: &Path,
        tmp: &Path,
        progress: Progress<'_>,
    ) -> Result<(), MaintenanceError> {
        let snap = db
            .begin_read()
            .map_err(|e| failed(src, "cannot read")(e.into()))?;
        copy_snapshot(&snap, tmp, progress).map_err(failed(src, "backup of"))
    }

    fn describe(&self, path: &Path) -> Result<FileFacts, MaintenanceError> {
        let (schema_version, events, oldest, newest) =
            describe_file(path).map_err(failed(path, "cannot read"))?;
        Ok(FileFacts {
            schema_version,
            events,
            oldest_event_us: oldest,
            newest_event_us: newest,
        })
    }
}

impl RestoreEngine for Redb {
    fn supported(&self) -> i64 {
        TRACE_SCHEMA_VERSION
    }

    fn version_of(&self, src: &Path) -> Result<i64, MaintenanceError> {
        let (version, _, _, _) = describe_file(src).map_err(|e| {
            MaintenanceError::Refused(format!(
                "{} is not a readable redb backup: {e}",
                src.display()
            ))
        })?;
        Ok(version)
    }

    fn verify_copy(&self, src: &Path, copy: &Path) -> Result<u64, MaintenanceError> {
        // redb panics on some damaged pages (an invalid page type byte) instead of returning
        // an error; that is a refusal like any other damage.
        let verified = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            verify_backup(copy).map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("redb panicked");
            Err(format!("redb cannot read it: {why}"))
        });
        verified.map_err(|e| {
            MaintenanceError::Refused(format!(
                "backup {} is damaged or not a metis redb database (nothing was changed): {e}",
                src.display()
            ))
        })
    }

    /// The lock check comes last: an exclusive open succeeds only when no other process has
    /// the file open (a gateway shares it), and it may write the file's header, which is
    /// acceptable only once the file is certain to be replaced. It is held until the rename.
    fn before_replace(&self, dest: &Path) -> Result<Option<Claim>, MaintenanceError> {
        if !dest.exists() {
            return Ok(None);
        }
        let mut b = Builder::new();
        b.set_concurrency_mode(ConcurrencyMode::ExclusiveWriter);
        match b.open(dest) {
            Ok(db) => Ok(Some(Box::new(db))),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                Err(MaintenanceError::Refused(format!(
                    "a running gateway (or another metis process) has {} open; stop the writer \
                 first, then restore",
                    dest.display()
                )))
            }
            // A damaged target is being replaced anyway.
            Err(_) => Ok(None),
        }
    }
}
