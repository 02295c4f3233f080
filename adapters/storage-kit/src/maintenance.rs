//! The frames of retention and status, once for every engine: the engine counts and deletes,
//! the frame paces the batches, reports progress and assembles the answer.
//!
//! Invariants:
//! - A prune deletes in batches of at most `batch_rows`, each its own short transaction, and
//!   pauses between batches so a live writer waits for at most one; progress is
//!   `(deleted, max(eligible, deleted))`.
//! - "Recent" in a status means the last five minutes: timestamps strictly after `now - 300 s`.

use std::path::Path;

use metis_domain::time::{MICROS_PER_SEC, Timestamp};
use metis_ports::storage::{Progress, PruneCounts, PruneOptions, StoreStatus};

use crate::files::{file_len, with_suffix};

/// What one prune batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Rows this batch deleted.
    pub deleted: u64,
    /// Whether another batch may find rows.
    pub more: bool,
}

/// Run a prune: `delete(limit)` deletes up to `limit` eligible rows in one transaction. The
/// counts come back without `oldest_kept_us`, which the engine reads once the batches are done.
///
/// # Errors
/// The first error of `delete` (committed batches stay deleted).
pub fn prune_in_batches<E>(
    eligible: u64,
    exempt: u64,
    opts: PruneOptions,
    progress: Progress<'_>,
    mut delete: impl FnMut(u32) -> Result<Batch, E>,
) -> Result<PruneCounts, E> {
    let limit = opts.batch_rows.max(1);
    let mut deleted = 0u64;
    progress(0, eligible);
    loop {
        let batch = delete(limit)?;
        deleted += batch.deleted;
        progress(deleted, eligible.max(deleted));
        if !batch.more {
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
        oldest_kept_us: None,
    })
}

/// Length of the "recent events" window of a status.
pub const RECENT_WINDOW_US: Timestamp = 300 * MICROS_PER_SEC;

/// The reads a status needs from an open store.
pub trait StatusSource {
    type Error;

    /// The stored schema version.
    ///
    /// # Errors
    /// Engine errors.
    fn schema_version(&self) -> Result<i64, Self::Error>;

    /// Number of events, oldest and newest timestamp.
    ///
    /// # Errors
    /// Engine errors.
    fn event_span(&self) -> Result<(u64, Option<Timestamp>, Option<Timestamp>), Self::Error>;

    /// Events with a timestamp strictly after `after_us`.
    ///
    /// # Errors
    /// Engine errors.
    fn events_after(&self, after_us: Timestamp) -> Result<u64, Self::Error>;

    /// Events of an audit type.
    ///
    /// # Errors
    /// Engine errors.
    fn audit_events(&self) -> Result<u64, Self::Error>;

    /// Stored sessions (0 when the store has none yet).
    ///
    /// # Errors
    /// Engine errors.
    fn sessions(&self) -> Result<u64, Self::Error>;
}

/// The status of the store at `path`; `wal_suffix` names its write-ahead log beside it, if
/// the engine keeps one.
///
/// # Errors
/// The source's errors.
pub fn status<S: StatusSource>(
    source: &S,
    path: &Path,
    supported: i64,
    now: Timestamp,
    wal_suffix: Option<&str>,
) -> Result<StoreStatus, S::Error> {
    let schema_version = source.schema_version()?;
    let (events, oldest, newest) = source.event_span()?;
    Ok(StoreStatus {
        path: path.to_path_buf(),
        schema_version,
        supported_version: supported,
        events,
        oldest_event_us: oldest,
        newest_event_us: newest,
        events_last_5_min: source.events_after(now - RECENT_WINDOW_US)?,
        audit_events: source.audit_events()?,
        sessions: source.sessions()?,
        file_bytes: file_len(path),
        wal_bytes: wal_suffix.map_or(0, |s| file_len(&with_suffix(path, s))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[test]
    fn a_prune_runs_batches_until_one_says_no_more() {
        let calls = Mutex::new(Vec::new());
        let mut left = 5u64;
        let opts = PruneOptions {
            batch_rows: 2,
            pause: Duration::ZERO,
        };
        let counts = prune_in_batches(
            5,
            1,
            opts,
            &|d, t| calls.lock().unwrap().push((d, t)),
            |limit| -> Result<Batch, ()> {
                let n = left.min(u64::from(limit));
                left -= n;
                Ok(Batch {
                    deleted: n,
                    more: n == u64::from(limit),
                })
            },
        )
        .unwrap();
        assert_eq!(counts.rows_deleted, 5);
        assert_eq!(counts.rows_audit_exempt, 1);
        assert_eq!(*calls.lock().unwrap(), vec![(0, 5), (2, 5), (4, 5), (5, 5)]);
    }
}
