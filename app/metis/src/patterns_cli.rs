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

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use metis_domain::time::format_iso;
use metis_ports::patterns::PatternStats;
use metis_ports::storage::PatternPlace;
use metis_usecases::storage::projection::{RebuildReport, rebuild};

use crate::storage_cli::{DbArgs, Progress, migrate_text, print, run_blocking};

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

    fn place(&self) -> PatternPlace {
        PatternPlace::from_dir(self.patterns_dir.clone())
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

/// The block `patterns rebuild` prints.
#[must_use]
pub fn rebuild_block(r: &RebuildReport) -> String {
    let (fps, outs) = r
        .stats
        .as_ref()
        .map_or((0, 0), |s| (s.fingerprints, s.outcomes));
    let mut out = String::from("patterns rebuild complete\n");
    for (k, v) in [
        ("workspace:", r.workspace.clone()),
        ("store:", r.store.display().to_string()),
        ("events read:", r.events.to_string()),
        ("records applied:", r.applied.to_string()),
        ("events skipped:", r.skipped.to_string()),
        ("fingerprints:", fps.to_string()),
        ("outcomes:", outs.to_string()),
    ] {
        out.push_str(&format!("  {k:<17}{v}\n"));
    }
    out
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

/// `metis patterns …`
pub async fn run(cmd: PatternsCmd) -> ExitCode {
    match cmd.action {
        PatternsAction::Rebuild(args) => {
            run_blocking("patterns rebuild", move || {
                let ws = args.store.workspace()?;
                let (db, backend) = args.db.store()?;
                let reader = backend
                    .open_reader(&db)
                    .context("cannot open the trace database")?;
                let files = backend.pattern_files(&args.store.place());
                let bar = Progress::new("rebuild", false);
                let r = rebuild(reader.as_ref(), files.as_ref(), &ws, &|d, t| {
                    bar.update(d, t);
                });
                bar.finish();
                print(&rebuild_block(&r?))
            })
            .await
        }
        PatternsAction::Stats(args) => {
            run_blocking("patterns stats", move || {
                let ws = args.workspace()?;
                let place = args.place();
                let files = crate::store::for_patterns(&ws, &place).pattern_files(&place);
                let Some(stats) = files.stats(&ws)? else {
                    anyhow::bail!(
                        "no pattern store for workspace {ws} (expected {})",
                        files.path(&ws).display()
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
                let place = PatternPlace::from_dir(args.patterns_dir.clone());
                let files = crate::store::for_patterns(&ws, &place).pattern_files(&place);
                print(&migrate_text(
                    "patterns",
                    files.migration(&ws).as_ref(),
                    args.dry_run,
                )?)
            })
            .await
        }
    }
}
