//! Operations on a main redb file: hot backup (a consistent read snapshot copied into a new
//! file), checked restore, status, batched retention, compaction, and bulk import/export for
//! `metis migrate-store`. The engine-free order of backup, restore, prune and status lives in
//! `metis-storage-kit`; this module supplies the redb steps.
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

use std::path::Path;
use std::sync::Arc;

pub use metis_domain::backup::{BackupMeta, RestoreSummary};
use metis_domain::sessions::SessionRecord;
pub use metis_ports::storage::{
    CompactReport, MaintenanceError, Progress, PruneCounts, StoreStatus,
};
use metis_ports::trace::EventRow;
use metis_storage_kit::require_file;
pub use metis_storage_kit::with_suffix;
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableHandle};

use crate::db::{EVENTS, KEYS, SESSIONS, Sharing, StoreError, describe_open_error, open_shared};
use crate::rows::{EventTables, RowRef};
use crate::sessions::SessionTables;

mod backup;
mod retention;

pub(crate) use backup::Redb;
pub use retention::{compact, prune, prune_dry_run, status};

fn failed(path: &Path, what: &str) -> impl Fn(StoreError) -> MaintenanceError {
    let shown = path.display().to_string();
    let what = what.to_owned();
    move |e| MaintenanceError::Failed(format!("{what} {shown}: {e}"))
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
