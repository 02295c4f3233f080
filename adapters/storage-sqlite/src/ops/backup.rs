//! The SQLite steps of backup (`VACUUM INTO` from a read-only connection) and restore (header
//! version, writer lock, `PRAGMA quick_check` on the copy, WAL folding before the rename). The
//! order of the checks is `metis_storage_kit::{backup, restore}`'s.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metis_ports::storage::{MaintenanceError, Progress};
use metis_storage_kit::{
    BackupEngine, Claim, FileFacts, RestoreEngine, SIDE_FILES, io_err, remove_side_files,
    with_suffix,
};
use rusqlite::{Connection, OpenFlags};

use super::{check_version, event_span, sqlite_err};
use crate::lock::{LockError, WriterLock, lock_path};
use crate::schema::{TRACE_SCHEMA_VERSION, open_read_only, read_user_version};

/// The bytes `VACUUM INTO` is expected to write (used pages of the source).
fn estimated_size(conn: &Connection) -> u64 {
    let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
    let used = q("PRAGMA page_count") - q("PRAGMA freelist_count");
    u64::try_from(used.max(0) * q("PRAGMA page_size")).unwrap_or(0)
}

pub(crate) struct Sqlite;

impl BackupEngine for Sqlite {
    type Source = Connection;

    fn open_source(&self, src: &Path) -> Result<Connection, MaintenanceError> {
        let conn = open_read_only(src, Duration::from_secs(30))
            .map_err(|e| MaintenanceError::Failed(e.to_string()))?;
        let found = read_user_version(&conn).map_err(sqlite_err(src, "cannot read"))?;
        check_version(src, found)?;
        Ok(conn)
    }

    fn snapshot(
        &self,
        conn: Connection,
        src: &Path,
        tmp: &Path,
        progress: Progress<'_>,
    ) -> Result<(), MaintenanceError> {
        let total = estimated_size(&conn);
        let done = AtomicBool::new(false);
        let vacuum = std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Acquire) {
                    let n = fs::metadata(tmp).map_or(0, |m| m.len());
                    progress(n.min(total), total);
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let quoted = tmp.to_string_lossy().replace('\'', "''");
            let r = conn.execute_batch(&format!("VACUUM INTO '{quoted}'"));
            done.store(true, Ordering::Release);
            r
        });
        vacuum.map_err(sqlite_err(src, "backup (VACUUM INTO) of"))?;
        drop(conn);
        let bytes = fs::metadata(tmp).map_err(io_err(tmp, "cannot stat"))?.len();
        progress(bytes, bytes.max(total));
        Ok(())
    }

    fn describe(&self, path: &Path) -> Result<FileFacts, MaintenanceError> {
        let c = open_read_only(path, Duration::from_secs(5))
            .map_err(|e| MaintenanceError::Failed(e.to_string()))?;
        let schema_version = read_user_version(&c).map_err(sqlite_err(path, "cannot read"))?;
        let (events, oldest, newest) =
            event_span(&c).map_err(sqlite_err(path, "cannot count events in"))?;
        Ok(FileFacts {
            schema_version,
            events,
            oldest_event_us: oldest,
            newest_event_us: newest,
        })
    }
}

impl RestoreEngine for Sqlite {
    fn supported(&self) -> i64 {
        TRACE_SCHEMA_VERSION
    }

    fn check_source(&self, src: &Path) -> Result<(), MaintenanceError> {
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
        Ok(())
    }

    fn version_of(&self, src: &Path) -> Result<i64, MaintenanceError> {
        header_user_version(src)
    }

    /// The lock is taken last among the checks and held until the rename: a gateway starting
    /// meanwhile is refused instead of opening a half-replaced file.
    fn claim_before_copy(&self, dest: &Path) -> Result<Option<Claim>, MaintenanceError> {
        let lock = WriterLock::exclusive(dest).map_err(|e| match e {
            LockError::Held { .. } => MaintenanceError::Refused(format!(
                "a running gateway holds {} (lock {}); stop the writer first, then restore",
                dest.display(),
                lock_path(dest).display()
            )),
            LockError::Io { .. } => MaintenanceError::Failed(e.to_string()),
        })?;
        Ok(Some(Box::new(lock)))
    }

    /// Proven on the private copy before the target is touched: it opens, passes SQLite's
    /// structural check (every page of every table and index read), and is a trace database.
    fn verify_copy(&self, src: &Path, copy: &Path) -> Result<u64, MaintenanceError> {
        let damaged = |e: rusqlite::Error| {
            MaintenanceError::Refused(format!(
                "backup {} is damaged (truncated or corrupt; nothing was changed): {e}",
                src.display()
            ))
        };
        let events = {
            let c = Connection::open_with_flags(
                copy,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(damaged)?;
            let check: String = c
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(damaged)?;
            if check != "ok" {
                return Err(MaintenanceError::Refused(format!(
                    "backup {} is damaged: it fails SQLite's integrity check (nothing was \
                     changed): {check}",
                    src.display()
                )));
            }
            let n: i64 = c
                .query_row(crate::reader::COUNT_ALL_SQL, [], |r| r.get(0))
                .map_err(|e| {
                    MaintenanceError::Refused(format!(
                        "backup {} is not a trace database (cannot count events: {e})",
                        src.display()
                    ))
                })?;
            u64::try_from(n).unwrap_or(0)
        };
        remove_side_files(copy);
        Ok(events)
    }

    fn before_replace(&self, dest: &Path) -> Result<Option<Claim>, MaintenanceError> {
        if dest.exists() {
            // Fold the old file's WAL into it first, so even a crash right after the WAL is
            // removed loses nothing of the old database (best effort: it is being replaced).
            if let Ok(old) = Connection::open_with_flags(dest, OpenFlags::SQLITE_OPEN_READ_WRITE) {
                let _ = old.busy_timeout(Duration::from_secs(1));
                let _ = old.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
        }
        // Stale side files must go before the new file appears: SQLite would otherwise replay
        // the old WAL onto the restored database.
        for s in SIDE_FILES {
            let side = with_suffix(dest, s);
            match fs::remove_file(&side) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&side, "cannot remove stale")(e)),
            }
        }
        Ok(None)
    }
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
