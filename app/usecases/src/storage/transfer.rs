//! `metis migrate-store`: copy a main store (events, sessions, keys) and the given
//! workspaces' pattern stores from one backend to another, through the port only, so any
//! two backends copy the same way.
//!
//! Invariants:
//! - The destination must be empty (no events, sessions or keys; no outcomes in a pattern
//!   store): nothing is ever merged or overwritten.
//! - Events are copied as stored, in id order, payloads byte-for-byte: audit events keep
//!   their chain links, so the destination's chain verifies with the same length.
//! - Sessions and pattern rows are copied as stored (no recomputation); budgets and model
//!   groups go with the keys and must read back equal.
//! - After the copy the counts are compared (events, sessions, keys, chain links, outcomes);
//!   any difference is an error.

use std::path::{Path, PathBuf};

use metis_ports::storage::{PatternPlace, Progress, StorageBackend, StoreCounts, StoreReader};

use super::StorageError;

/// Rows per copy transaction.
pub const COPY_PAGE: usize = 5_000;

/// One side of a copy: a backend and its main store file.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub backend: &'a dyn StorageBackend,
    pub path: &'a Path,
}

/// What a copy moved (and verified).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub from: PathBuf,
    pub to: PathBuf,
    pub events: u64,
    pub audit_chain: u64,
    pub sessions: u64,
    pub keys: u64,
    pub pattern_stores: u64,
    pub outcomes: u64,
}

fn counts(side: Side<'_>) -> Result<StoreCounts, StorageError> {
    if !side.backend.main_exists(side.path) {
        return Ok(StoreCounts::default());
    }
    side.backend
        .open_reader(side.path)
        .and_then(|r| r.counts())
        .map_err(StorageError::trace("cannot count the store's rows"))
}

fn chain(reader: &dyn StoreReader, path: &Path) -> Result<u64, StorageError> {
    reader
        .verify_audit_chain()
        .map_err(StorageError::trace("cannot read the audit chain"))?
        .map_err(|b| {
            StorageError::Refused(format!(
                "the audit chain of {} is broken at event {} (expected audit_seq {}): {}",
                path.display(),
                b.id,
                b.expected_seq,
                b.problem
            ))
        })
}

/// Copy the main store of `from` into the empty (or absent) store of `to`, then the pattern
/// stores of `workspaces` under `place`; `progress` counts events.
///
/// # Errors
/// A missing source, a non-empty destination, a broken source chain, a copy failure, or
/// counts that differ after the copy.
pub fn copy_store(
    from: Side<'_>,
    to: Side<'_>,
    workspaces: &[String],
    place: &PatternPlace,
    progress: Progress<'_>,
) -> Result<CopyReport, StorageError> {
    if !from.backend.main_exists(from.path) {
        return Err(StorageError::Refused(format!(
            "source store {} does not exist",
            from.path.display()
        )));
    }
    let reader = from
        .backend
        .open_reader(from.path)
        .map_err(StorageError::trace("cannot open the source store"))?;
    let source = reader
        .counts()
        .map_err(StorageError::trace("cannot count the store's rows"))?;
    let dest = counts(to)?;
    if dest != StoreCounts::default() {
        return Err(StorageError::Refused(format!(
            "destination store {} is not empty ({} events, {} sessions, {} keys); migrate-store \
             only fills an empty store (move it aside or choose --to-path)",
            to.path.display(),
            dest.events,
            dest.sessions,
            dest.keys
        )));
    }
    let chain_before = chain(reader.as_ref(), from.path)?;
    copy_main(reader.as_ref(), to, source.events, progress)?;
    let dest_reader = to
        .backend
        .open_reader(to.path)
        .map_err(StorageError::trace("cannot open the destination store"))?;
    let after = dest_reader
        .counts()
        .map_err(StorageError::trace("cannot count the store's rows"))?;
    if after != source {
        return Err(StorageError::Refused(format!(
            "count mismatch after the copy: source has {} events, {} sessions, {} keys; \
             destination has {} events, {} sessions, {} keys",
            source.events, source.sessions, source.keys, after.events, after.sessions, after.keys
        )));
    }
    let policies_before = reader.policies()?;
    let policies_after = dest_reader.policies()?;
    if policies_after != policies_before {
        return Err(StorageError::Refused(format!(
            "budgets and model groups differ after the copy: source has {} budgets and {} groups, \
             destination {} and {}",
            policies_before.budgets.len(),
            policies_before.model_groups.len(),
            policies_after.budgets.len(),
            policies_after.model_groups.len()
        )));
    }
    let chain_after = chain(dest_reader.as_ref(), to.path)?;
    if chain_after != chain_before {
        return Err(StorageError::Refused(format!(
            "the audit chain has {chain_before} links in the source but {chain_after} in the destination"
        )));
    }
    let mut outcomes = 0;
    for ws in workspaces {
        outcomes += copy_patterns(from.backend, to.backend, place, ws)?;
    }
    Ok(CopyReport {
        from: from.path.to_path_buf(),
        to: to.path.to_path_buf(),
        events: source.events,
        audit_chain: chain_after,
        sessions: source.sessions,
        keys: source.keys,
        pattern_stores: workspaces.len() as u64,
        outcomes,
    })
}

fn copy_main(
    src: &dyn StoreReader,
    to: Side<'_>,
    total: u64,
    progress: Progress<'_>,
) -> Result<(), StorageError> {
    let keys = src.keys()?;
    let policies = src.policies()?;
    let mut dst = to
        .backend
        .create_import(to.path)
        .map_err(StorageError::trace("cannot create the destination store"))?;
    let mut after: Option<String> = None;
    let mut done = 0u64;
    loop {
        let page = src
            .events_page(after.as_deref(), COPY_PAGE)
            .map_err(StorageError::trace("cannot read events"))?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        done += dst
            .insert_events(&page)
            .map_err(StorageError::trace("cannot write events"))?;
        progress(done, total);
    }
    let sessions = src
        .sessions(None, u32::MAX)
        .map_err(StorageError::trace("cannot read sessions"))?;
    dst.insert_sessions(&sessions)
        .map_err(StorageError::trace("cannot write sessions"))?;
    dst.insert_keys(&keys)?;
    if policies != metis_domain::budgets::Policies::default() {
        dst.insert_policies(&policies)?;
    }
    Ok(())
}

/// Copy one workspace's pattern store; returns the outcome rows copied.
fn copy_patterns(
    from: &dyn StorageBackend,
    to: &dyn StorageBackend,
    place: &PatternPlace,
    ws: &str,
) -> Result<u64, StorageError> {
    let src = from.pattern_files(place);
    let dst = to.pattern_files(place);
    if dst.stats(ws)?.is_some_and(|s| s.outcomes > 0) {
        return Err(StorageError::Refused(format!(
            "the destination pattern store of {ws} is not empty"
        )));
    }
    let dump = src.export(ws)?;
    dst.import(ws, &dump)?;
    let copied = dst.export(ws)?.outcomes;
    if copied != dump.outcomes {
        return Err(StorageError::Refused(format!(
            "pattern store of {ws}: {} outcomes in the source but {} (or different ones) in the destination",
            dump.outcomes.len(),
            copied.len()
        )));
    }
    Ok(copied.len() as u64)
}
