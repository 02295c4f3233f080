//! `metis patterns rebuild`: the per-workspace pattern projection replayed from the trace's
//! `pattern.recorded` events, in id order, each stamped with its event's time, so the same
//! events always give the same store (equal to the one the gateway built live).

use std::path::PathBuf;

use metis_domain::patterns::{PATTERN_RECORDED, PatternRecord, PatternRecorded};
use metis_ports::patterns::PatternStats;
use metis_ports::storage::{PatternFiles, Progress, StoreReader};

use super::StorageError;

/// What a rebuild read and wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    pub workspace: String,
    pub store: PathBuf,
    pub events: u64,
    pub applied: u64,
    /// Events whose payload could not be read (skipped, not fatal).
    pub skipped: u64,
    pub stats: Option<PatternStats>,
}

/// The observations of `workspace` in the trace, in event order, and how many events could
/// not be read.
///
/// # Errors
/// The trace cannot be read.
pub fn records_from_trace(
    reader: &dyn StoreReader,
    workspace: &str,
) -> Result<(Vec<PatternRecord>, u64, u64), StorageError> {
    let events = reader
        .events_of_type(PATTERN_RECORDED)
        .map_err(StorageError::trace("cannot read pattern.recorded events"))?;
    // Select by the payload's `workspace_path` alone, so a damaged event of this workspace
    // is counted as skipped rather than silently ignored.
    let ours = |payload: &str| {
        serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| {
                v.get("workspace_path")
                    .and_then(serde_json::Value::as_str)
                    .map(|w| w == workspace)
            })
            .unwrap_or(false)
    };
    let mut records = Vec::new();
    let mut read = 0u64;
    let mut skipped = 0u64;
    for e in events.iter().filter(|e| ours(&e.payload_json)) {
        read += 1;
        match PatternRecorded::parse(&e.payload_json).and_then(|p| p.to_record(e.timestamp_us)) {
            Ok(r) => records.push(r),
            Err(msg) => {
                if skipped == 0 {
                    tracing::warn!(event_id = %e.id, "skipping unreadable pattern.recorded event: {msg}");
                }
                skipped += 1;
            }
        }
    }
    Ok((records, read, skipped))
}

/// Replace the projection of `workspace` in `files` with the trace's observations.
///
/// # Errors
/// The trace cannot be read or the store cannot be written (the old projection is kept).
pub fn rebuild(
    reader: &dyn StoreReader,
    files: &dyn PatternFiles,
    workspace: &str,
    progress: Progress<'_>,
) -> Result<RebuildReport, StorageError> {
    let (records, events, skipped) = records_from_trace(reader, workspace)?;
    let applied = files.replace_all(workspace, &records, progress)?;
    Ok(RebuildReport {
        workspace: workspace.to_owned(),
        store: files.path(workspace),
        events,
        applied,
        skipped,
        stats: files.stats(workspace)?,
    })
}
