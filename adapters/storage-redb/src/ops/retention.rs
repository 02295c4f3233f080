//! Status, batched retention and compaction of a main redb file. The batching and the status
//! assembly are `metis_storage_kit`'s; this is the redb reading and deleting.

use std::fs;
use std::path::Path;
use std::time::Duration;

use metis_domain::audit::AUDIT_TYPES;
use metis_ports::storage::{
    CompactReport, MaintenanceError, Progress, PruneCounts, PruneOptions, StoreStatus,
};
use metis_storage_kit::{Batch, StatusSource, prune_in_batches, require_file};
use redb::{Builder, ConcurrencyMode, Database, ReadableDatabase, ReadableTable};

use super::{failed, open_existing};
use crate::db::{EV_BY_TIME, EVENTS, StoreError, TRACE_SCHEMA_VERSION, read_version};
use crate::query;
use crate::rows::EventTables;

/// The status reads of an open main file.
struct Status<'a>(&'a Database);

impl StatusSource for Status<'_> {
    type Error = StoreError;

    fn schema_version(&self) -> crate::db::Result<i64> {
        Ok(read_version(self.0)?.unwrap_or(0))
    }

    fn event_span(&self) -> crate::db::Result<(u64, Option<i64>, Option<i64>)> {
        query::event_span(self.0)
    }

    fn events_after(&self, after_us: i64) -> crate::db::Result<u64> {
        let tx = self.0.begin_read()?;
        let by_time = tx.open_table(EV_BY_TIME)?;
        let mut recent = 0u64;
        for item in by_time.range((after_us + 1, "")..)? {
            item?;
            recent += 1;
        }
        Ok(recent)
    }

    fn audit_events(&self) -> crate::db::Result<u64> {
        let mut audit = 0u64;
        for ty in AUDIT_TYPES {
            audit += query::count_by_type(self.0, ty)?;
        }
        Ok(audit)
    }

    fn sessions(&self) -> crate::db::Result<u64> {
        crate::sessions::read::count(self.0)
    }
}

/// Read the status of `path`.
///
/// # Errors
/// `Refused` when the file is missing; `TooNew`; `Failed` on redb errors.
pub fn status(path: &Path, now: i64) -> Result<StoreStatus, MaintenanceError> {
    let db = open_existing(path)?;
    metis_storage_kit::status(&Status(&db), path, TRACE_SCHEMA_VERSION, now, None)
        .map_err(failed(path, "cannot read"))
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
    let mut left = prunable.as_slice();
    let delete = |limit: u32| {
        let (chunk, rest) = left.split_at(left.len().min(limit as usize));
        left = rest;
        if chunk.is_empty() {
            // Nothing was eligible: no write transaction at all.
            return Ok(Batch {
                deleted: 0,
                more: false,
            });
        }
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
        Ok(Batch {
            deleted: run().map_err(failed(path, "cannot delete from"))?,
            more: !left.is_empty(),
        })
    };
    let opts = PruneOptions { batch_rows, pause };
    let mut counts = prune_in_batches(prunable.len() as u64, exempt, opts, progress, delete)?;
    counts.oldest_kept_us = oldest_kept(&db).map_err(failed(path, "cannot read"))?;
    Ok(counts)
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
