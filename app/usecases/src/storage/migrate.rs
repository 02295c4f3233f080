//! `metis trace|sessions|patterns migrate`: bring a versioned file to this binary's schema,
//! taking a safety copy next to it first.

use std::path::{Path, PathBuf};

use metis_domain::time::{Timestamp, format_iso};
use metis_ports::storage::{Migratable, MigrationPlan, Progress};

use super::StorageError;

/// What a migration did (or would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationOutcome {
    /// The plan (after a real run: what was applied, with the version found before).
    pub plan: MigrationPlan,
    /// The safety copy taken (or, on a dry run, the one that would be taken); `None` when
    /// there was nothing to apply.
    pub backup: Option<PathBuf>,
    pub dry_run: bool,
}

/// Where a migration's safety copy goes: next to the file, named with the UTC time
/// (`<name>.pre-migrate-20260515T142210Z.db`).
#[must_use]
pub fn backup_path(file: &Path, now: Timestamp) -> PathBuf {
    let stamp: String = format_iso(now)
        .chars()
        .take(19)
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let name = file
        .file_name()
        .map_or_else(|| "metis.db".into(), |n| n.to_string_lossy().into_owned());
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    dir.join(format!("{name}.pre-migrate-{stamp}Z.db"))
}

/// Plan; on a dry run stop there; otherwise, when there is anything to do, copy the file
/// next to itself and apply every step in one transaction. No migration runs without its
/// safety copy.
///
/// # Errors
/// The plan's, the copy's or the migration's error.
pub fn migrate(
    target: &dyn Migratable,
    dry_run: bool,
    now: Timestamp,
    progress: Progress<'_>,
) -> Result<MigrationOutcome, StorageError> {
    let planned = target.plan()?;
    let backup = backup_path(target.path(), now);
    if dry_run || planned.is_noop() {
        return Ok(MigrationOutcome {
            backup: (!planned.is_noop()).then_some(backup),
            plan: planned,
            dry_run,
        });
    }
    target.backup(&backup, progress).map_err(|e| {
        StorageError::Refused(format!(
            "the backup before the migration of {} failed; nothing was migrated: {e}",
            target.path().display()
        ))
    })?;
    let applied = target.apply()?;
    Ok(MigrationOutcome {
        plan: MigrationPlan {
            current: planned.current,
            ..applied
        },
        backup: Some(backup),
        dry_run,
    })
}
