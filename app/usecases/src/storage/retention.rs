//! `metis trace prune`: delete non-audit events older than the retention window and record
//! the sweep as a `trace.swept` audit event through the store's own writer (so the audit
//! chain links it like any other).

use std::path::Path;

use metis_domain::events::make_event;
use metis_domain::retention::{SYSTEM_SESSION, TraceSwept, cutoff_us};
use metis_domain::time::{Timestamp, format_iso};
use metis_ports::storage::{Progress, PruneCounts, PruneOptions, ServeOptions, StorageBackend};
use metis_ports::system::{Clock, IdSource};

use super::{StorageError, require_store};

/// What a prune did (or, for a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    pub cutoff: Timestamp,
    pub counts: PruneCounts,
}

/// Count what a prune keeping `days` days would delete; change nothing.
///
/// # Errors
/// A missing or newer store, or an engine error.
pub fn prune_dry_run(
    backend: &dyn StorageBackend,
    db: &Path,
    days: u32,
    now: Timestamp,
) -> Result<PruneReport, StorageError> {
    require_store(backend, db)?;
    let cutoff = cutoff_us(now, days);
    let counts = backend.prune_dry_run(db, cutoff)?;
    Ok(PruneReport { cutoff, counts })
}

/// Delete non-audit events older than `days` days before `now`, in batches, then store a
/// `trace.swept` event. The writer is opened first, so a newer file is refused before
/// anything is deleted.
///
/// # Errors
/// A missing or newer store, an engine error, or the sweep event not being stored (the
/// deleted rows stay deleted; the message says how many).
pub fn prune(
    backend: &dyn StorageBackend,
    db: &Path,
    days: u32,
    now: Timestamp,
    (clock, ids): (&dyn Clock, &dyn IdSource),
    options: PruneOptions,
    progress: Progress<'_>,
) -> Result<PruneReport, StorageError> {
    require_store(backend, db)?;
    let cutoff = cutoff_us(now, days);
    let store = backend
        .open_main(db, ServeOptions::default())
        .map_err(|source| StorageError::Open {
            path: db.to_path_buf(),
            source,
        })?;
    let counts = backend.prune(db, cutoff, options, progress)?;
    let swept_at = clock.now_us().max(now);
    let payload = TraceSwept {
        rows_deleted: counts.rows_deleted,
        rows_audit_exempt: counts.rows_audit_exempt,
        cutoff_timestamp: format_iso(cutoff),
        oldest_kept_timestamp: counts.oldest_kept_us.map(format_iso),
        dry_run: false,
        swept_at: format_iso(swept_at),
    };
    store.emit(make_event(
        ids.ulid(),
        swept_at,
        SYSTEM_SESSION,
        None,
        None,
        &payload,
    ));
    let stats = store.close();
    if stats.written < 1 || stats.failed > 0 || stats.overflowed > 0 {
        return Err(StorageError::Refused(format!(
            "{} rows were deleted but the trace.swept audit event could not be written",
            counts.rows_deleted
        )));
    }
    Ok(PruneReport { cutoff, counts })
}
