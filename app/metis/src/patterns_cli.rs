//! `metis patterns rebuild|stats|migrate`: the per-workspace pattern projection.
//!
//! Invariants:
//! - `rebuild` reads the workspace's `pattern.recorded` events from the trace database
//!   (read-only), in id order, and replaces the projection with them applied in that order, in
//!   one transaction, each stamped with its event's timestamp: the same events always give the
//!   same store, equal to the one the gateway built live.
//! - The store is `<workspace>/.metis/patterns.db`, or `<patterns-dir>/<hash>/patterns.db`
//!   with `--patterns-dir` (the layout the gateway uses with the same flag).
//! - `migrate` backs the store file up next to itself before applying anything.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use gw_domain::patterns::{PATTERN_RECORDED, PatternRecord, PatternRecorded};
use gw_domain::time::format_iso;
use gw_ports::patterns::PatternStats;
use gw_ports::system::Clock;
use gw_storage_sqlite::TraceReader;
use gw_storage_sqlite::patterns::{
    PatternLocation, SqlitePatternStore, apply_patterns_migration, plan_patterns_migration,
};

use crate::storage_cli::{DbArgs, Progress, migrate_flow, run_blocking};
use crate::system::SystemClock;

/// `metis patterns …`
#[derive(Debug, Args)]
pub struct PatternsCmd {
    #[command(subcommand)]
    pub action: PatternsAction,
}

#[derive(Debug, Subcommand)]
pub enum PatternsAction {
    /// Rebuild the workspace's projection from the trace's `pattern.recorded` events.
    Rebuild(RebuildArgs),
    /// Show the workspace's projection: sizes and per-model totals.
    Stats(StoreArgs),
    /// Bring the workspace's store to this binary's schema (a backup is taken first).
    Migrate(PatternsMigrateArgs),
}

/// Which store.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The workspace (the key's workspace path; relative paths are made absolute).
    #[arg(long)]
    pub workspace: PathBuf,
    /// Keep stores under this directory (one per workspace hash) instead of
    /// `<workspace>/.metis/`.
    #[arg(long, env = "METIS_GATEWAY_PATTERNS_DIR")]
    pub patterns_dir: Option<PathBuf>,
}

impl StoreArgs {
    fn workspace(&self) -> anyhow::Result<String> {
        crate::keys_cli::absolute(&self.workspace)
    }

    fn location(&self) -> PatternLocation {
        match &self.patterns_dir {
            Some(d) => PatternLocation::Dir(d.clone()),
            None => PatternLocation::InWorkspace,
        }
    }
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct PatternsMigrateArgs {
    /// The workspace (default: the current directory).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Keep stores under this directory instead of `<workspace>/.metis/`.
    #[arg(long, env = "METIS_GATEWAY_PATTERNS_DIR")]
    pub patterns_dir: Option<PathBuf>,
    /// Print the current and target version and every step; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a rebuild read and wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    pub workspace: String,
    pub store: PathBuf,
    pub events: u64,
    pub applied: u64,
    pub skipped: u64,
    pub stats: Option<PatternStats>,
}

impl RebuildReport {
    #[must_use]
    pub fn block(&self) -> String {
        let (fps, outs) = self
            .stats
            .as_ref()
            .map_or((0, 0), |s| (s.fingerprints, s.outcomes));
        let mut out = String::from("patterns rebuild complete\n");
        for (k, v) in [
            ("workspace:", self.workspace.clone()),
            ("store:", self.store.display().to_string()),
            ("events read:", self.events.to_string()),
            ("records applied:", self.applied.to_string()),
            ("events skipped:", self.skipped.to_string()),
            ("fingerprints:", fps.to_string()),
            ("outcomes:", outs.to_string()),
        ] {
            out.push_str(&format!("  {k:<17}{v}\n"));
        }
        out
    }
}

/// The observations of `workspace` in the trace at `db`, in event order. Returns the records
/// and how many events could not be read (damaged payloads are skipped, not fatal).
///
/// # Errors
/// The trace cannot be opened or read.
pub fn records_from_trace(db: &Path, workspace: &str) -> anyhow::Result<(Vec<PatternRecord>, u64)> {
    let reader = TraceReader::open(db).context("cannot open the trace database")?;
    let events = reader
        .events_of_type_with_field(PATTERN_RECORDED, "workspace_path", workspace)
        .context("cannot read pattern.recorded events")?;
    let mut records = Vec::with_capacity(events.len());
    let mut skipped = 0u64;
    for e in &events {
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
    Ok((records, skipped))
}

/// Rebuild the projection of `workspace` from the trace at `db`.
///
/// # Errors
/// The trace cannot be read or the store cannot be written.
pub fn rebuild(
    db: &Path,
    workspace: &str,
    location: PatternLocation,
) -> anyhow::Result<RebuildReport> {
    let (records, skipped) = records_from_trace(db, workspace)?;
    let events = records.len() as u64 + skipped;
    let store = SqlitePatternStore::new(location, gw_domain::patterns::PatternCaps::default());
    let bar = Progress::new("rebuild", false);
    let applied = store.replace_all_blocking(workspace, &records, &|d, t| bar.update(d, t));
    bar.finish();
    let applied = applied?;
    Ok(RebuildReport {
        workspace: workspace.to_owned(),
        store: store.db_path(workspace),
        events,
        applied,
        skipped,
        stats: store.stats_blocking(workspace)?,
    })
}

/// The `patterns stats` block.
#[must_use]
pub fn stats_block(workspace: &str, s: &PatternStats) -> String {
    let iso = |t: Option<i64>| t.map_or_else(|| "\u{2014}".to_owned(), format_iso);
    let mut out = String::from("patterns stats\n");
    for (k, v) in [
        ("workspace:", workspace.to_owned()),
        ("store:", s.location.clone()),
        ("schema version:", s.schema_version.to_string()),
        ("fingerprints:", s.fingerprints.to_string()),
        ("outcomes:", s.outcomes.to_string()),
        ("samples:", s.samples.to_string()),
        ("embedding cache:", s.embedding_cache_rows.to_string()),
        ("oldest update:", iso(s.oldest_update_us)),
        ("newest update:", iso(s.newest_update_us)),
    ] {
        out.push_str(&format!("  {k:<17}{v}\n"));
    }
    out.push_str("  models:\n");
    let width = s
        .models
        .iter()
        .map(|m| m.model.len())
        .max()
        .unwrap_or(5)
        .max(5);
    out.push_str(&format!(
        "    {:<width$}  {:>8}  {:>14}  {:>14}\n",
        "MODEL", "SAMPLES", "AVG_COST_USD", "AVG_LATENCY_MS"
    ));
    for m in &s.models {
        let n = m.samples.max(1) as f64;
        out.push_str(&format!(
            "    {:<width$}  {:>8}  {:>14.6}  {:>14.1}\n",
            m.model,
            m.samples,
            m.sum_cost_usd_micros as f64 / 1e6 / n,
            m.sum_latency_ms / n
        ));
    }
    out
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `metis patterns …`
pub async fn run(cmd: PatternsCmd) -> ExitCode {
    match cmd.action {
        PatternsAction::Rebuild(args) => {
            run_blocking("patterns rebuild", move || {
                let ws = args.store.workspace()?;
                let db = args.db.db()?;
                if gw_storage_redb::is_redb_file(&db) {
                    let dir = args.store.patterns_dir.as_deref();
                    return print(&crate::store::redb_patterns_rebuild(&db, &ws, dir)?.block());
                }
                let report = rebuild(&db, &ws, args.store.location())?;
                print(&report.block())
            })
            .await
        }
        PatternsAction::Stats(args) => {
            run_blocking("patterns stats", move || {
                let ws = args.workspace()?;
                if let Some(stats) =
                    crate::store::redb_pattern_stats(&ws, args.patterns_dir.as_deref())?
                {
                    return print(&stats_block(&ws, &stats));
                }
                let store = SqlitePatternStore::new(args.location(), Default::default());
                let Some(stats) = store.stats_blocking(&ws)? else {
                    anyhow::bail!(
                        "no pattern store for workspace {ws} (expected {})",
                        store.db_path(&ws).display()
                    );
                };
                print(&stats_block(&ws, &stats))
            })
            .await
        }
        PatternsAction::Migrate(args) => {
            run_blocking("patterns migrate", move || {
                let ws = match &args.workspace {
                    Some(w) => crate::keys_cli::absolute(w)?,
                    None => std::env::current_dir()
                        .context("no current directory; pass --workspace")?
                        .display()
                        .to_string(),
                };
                if let Some(text) = crate::store::redb_patterns_migrate(
                    &ws,
                    args.patterns_dir.as_deref(),
                    args.dry_run,
                )? {
                    return print(&text);
                }
                let location = match &args.patterns_dir {
                    Some(d) => PatternLocation::Dir(d.clone()),
                    None => PatternLocation::InWorkspace,
                };
                let path =
                    SqlitePatternStore::new(location, gw_domain::patterns::PatternCaps::default())
                        .db_path(&ws);
                let text = migrate_flow(
                    "patterns",
                    &path,
                    args.dry_run,
                    SystemClock.now_us(),
                    plan_patterns_migration,
                    apply_patterns_migration,
                )?;
                print(&text)
            })
            .await
        }
    }
}
