//! `metis backup`, `metis restore` and `metis trace prune|vacuum|status|migrate`: operations
//! on the main store, through the storage port (the backend does the work, the use cases in
//! `metis_usecases::storage` hold the rules; this module parses, reports and maps outcomes to
//! exit codes).
//!
//! Invariants:
//! - Output blocks are deterministic: fixed labels and order, one `key: value` per line.
//! - Long operations (backup, restore, migrate, prune) draw a progress bar on stderr only when
//!   stderr is a terminal; otherwise they print nothing but the final block.
//! - Exit codes: 0 ok; 1 runtime error or refusal (`error: <command> failed: …` on stderr);
//!   2 usage error (clap).
//! - `trace prune` emits `trace.swept` through the normal trace writer, so the audit chain
//!   records it; a dry run only counts.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use metis_domain::retention::{DEFAULT_RETENTION_DAYS, thousands};
use metis_domain::time::{Timestamp, format_iso};
use metis_ports::storage::{
    Migratable, MigrationPlan, PruneCounts, PruneOptions, Schema, StorageBackend, StoreStatus,
};
use metis_ports::system::Clock;
use metis_usecases::storage::migrate::{MigrationOutcome, migrate};
use metis_usecases::storage::retention;

use crate::cli::{DatabaseArgs, StorageArgs};
use crate::paths::Paths;
use crate::system::{SystemClock, UlidIds};

/// The trace database (`--db-path`, else `<data-dir>/metis.db`).
#[derive(Debug, Clone, Args, Default)]
pub struct DbArgs {
    /// Data directory (default `~/.metis`); the trace DB is `<data-dir>/metis.db`.
    #[arg(long, env = "METIS_GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// SQLite trace database (default `<data-dir>/metis.db`).
    #[arg(long, env = "METIS_GATEWAY_DB_PATH")]
    pub db_path: Option<PathBuf>,
    /// Storage backend: `sqlite` (`metis.db`, the default), `redb` (`metis.redb`) or
    /// `postgres` (the database of `--database-url`).
    #[arg(long, env = "METIS_GATEWAY_STORE", value_enum)]
    pub store: Option<crate::store::StoreKind>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

impl DbArgs {
    /// The database file.
    ///
    /// # Errors
    /// When neither flag is given and `HOME` is unset.
    pub fn db(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.db_path {
            return Ok(p.clone());
        }
        Ok(Paths::resolve(&StorageArgs {
            data_dir: self.data_dir.clone(),
            db_path: None,
            keystore: None,
            store: self.store,
            database: self.database.clone(),
        })?
        .db)
    }

    /// The database file and its backend ([`crate::store::for_existing`]).
    ///
    /// # Errors
    /// As [`db`](Self::db); a server engine without its database settings.
    pub fn store(&self) -> anyhow::Result<(PathBuf, Arc<dyn StorageBackend>)> {
        let db = self.db()?;
        let backend = crate::store::for_existing(&db, self.store, &self.database)?;
        Ok((db, backend))
    }
}

/// `metis backup <dest>`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The new backup file (must not exist; its directory is created). The metadata block is
    /// also written to `<dest>.meta`.
    pub dest: PathBuf,
    #[command(flatten)]
    pub db: DbArgs,
}

/// `metis restore <src>`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A backup made by `metis backup` (checked against `<src>.meta` when present).
    pub src: PathBuf,
    /// Replace the target database when it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

/// `metis trace …`
#[derive(Debug, Args)]
pub struct TraceCmd {
    #[command(subcommand)]
    pub action: TraceAction,
}

#[derive(Debug, Subcommand)]
pub enum TraceAction {
    /// Delete non-audit events older than the cutoff, in small batches (the gateway keeps
    /// writing), and record a `trace.swept` audit event.
    Prune(PruneArgs),
    /// Compact the database file (blocks writers while it runs) and report the bytes reclaimed.
    Vacuum(DbOnly),
    /// Schema version, event counts, newest event, events in the last 5 minutes, WAL size.
    Status(DbOnly),
    /// Bring the trace schema to this binary's version (a backup is taken first).
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Keep this many days of events.
    #[arg(long, default_value_t = DEFAULT_RETENTION_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,
    /// Count what would be deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct DbOnly {
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Print the current and target version and every step; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for `label`, counting bytes (`bytes = true`) or rows.
    #[must_use]
    pub fn new(label: &str, bytes: bool) -> Self {
        if !io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let template = if bytes {
            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
        } else {
            "{msg:>10} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {eta})"
        };
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar: Some(bar) }
    }

    /// Update to `(done, total)`.
    pub fn update(&self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done.min(total));
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Run a blocking command body off the runtime and turn its outcome into an exit code,
/// printing `error: <what> failed: …` on failure.
pub async fn run_blocking(
    what: &'static str,
    body: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> ExitCode {
    let outcome = tokio::task::spawn_blocking(body)
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("task failed: {e}")));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {what} failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `metis backup`.
pub async fn backup_cmd(args: BackupArgs) -> ExitCode {
    run_blocking("backup", move || {
        let (db, backend) = args.db.store()?;
        let bar = Progress::new("backup", true);
        let r = backend.backup(&db, &args.dest, &|d, t| bar.update(d, t));
        bar.finish();
        print(&r?.block())
    })
    .await
}

/// `metis restore`.
pub async fn restore_cmd(args: RestoreArgs) -> ExitCode {
    run_blocking("restore", move || {
        let db = args.db.db()?;
        // The backup's own engine decides (a missing or foreign file: the flag's).
        let backend = crate::store::for_existing(&args.src, args.db.store, &args.db.database)?;
        let bar = Progress::new("restore", true);
        // An engine may panic on a damaged page; restore turns that into a refusal naming the
        // damage, so the default hook's "thread panicked" lines would only confuse the
        // operator. This one-shot command runs nothing else meanwhile, and a panic that is not
        // caught still reaches the error line through the task's result.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = backend.restore(&args.src, &db, args.force, &|d, t| bar.update(d, t));
        std::panic::set_hook(hook);
        bar.finish();
        print(&r?.block())
    })
    .await
}

/// The `trace prune` block (`reference/storage.md` §4).
#[must_use]
pub fn prune_block(
    db: &Path,
    days: u32,
    cutoff: Timestamp,
    c: &PruneCounts,
    dry_run: bool,
) -> String {
    let oldest = c
        .oldest_kept_us
        .map_or_else(|| "\u{2014}".to_owned(), format_iso);
    let mut out = format!("trace prune complete (dry_run={dry_run})\n");
    for (k, v) in [
        ("db_path:", db.display().to_string()),
        ("cutoff:", format!("{} ({days} days)", format_iso(cutoff))),
        ("rows_eligible:", c.rows_eligible.to_string()),
        ("rows_audit_exempt:", c.rows_audit_exempt.to_string()),
        ("rows_deleted:", c.rows_deleted.to_string()),
        ("oldest_kept_timestamp:", oldest),
    ] {
        out.push_str(&format!("  {k:<23}{v}\n"));
    }
    out
}

fn prune_cmd_body(args: PruneArgs) -> anyhow::Result<()> {
    let (db, backend) = args.db.store()?;
    let now = SystemClock.now_us();
    let report = if args.dry_run {
        retention::prune_dry_run(backend.as_ref(), &db, args.days, now)?
    } else {
        let bar = Progress::new("prune", false);
        let r = retention::prune(
            backend.as_ref(),
            &db,
            args.days,
            now,
            (&SystemClock, &UlidIds::default()),
            PruneOptions::default(),
            &|d, t| bar.update(d, t),
        );
        bar.finish();
        r?
    };
    print(&prune_block(
        &db,
        args.days,
        report.cutoff,
        &report.counts,
        args.dry_run,
    ))
}

/// The `trace status` block.
#[must_use]
pub fn status_block(s: &StoreStatus) -> String {
    let iso = |t: Option<i64>| t.map_or_else(|| "\u{2014}".to_owned(), format_iso);
    let mut out = String::from("trace status\n");
    for (k, v) in [
        ("db_path:", s.path.display().to_string()),
        (
            "schema version:",
            format!(
                "{} (this binary: {})",
                s.schema_version, s.supported_version
            ),
        ),
        ("events:", s.events.to_string()),
        ("oldest event:", iso(s.oldest_event_us)),
        ("newest event:", iso(s.newest_event_us)),
        ("events last 5 min:", s.events_last_5_min.to_string()),
        ("audit events:", s.audit_events.to_string()),
        ("sessions:", s.sessions.to_string()),
        ("file bytes:", s.file_bytes.to_string()),
        ("wal bytes:", s.wal_bytes.to_string()),
    ] {
        out.push_str(&format!("  {k:<19}{v}\n"));
    }
    out
}

/// The block `migrate` prints. `backup` is the automatic backup taken (or planned).
#[must_use]
pub fn migrate_block(
    what: &str,
    plan: &MigrationPlan,
    dry_run: bool,
    backup: Option<&Path>,
) -> String {
    let mut out = if dry_run {
        format!("{what} migrate (dry run: nothing changed)\n")
    } else {
        format!("{what} migrate complete\n")
    };
    let backup_line = match (backup, dry_run) {
        (Some(p), true) => format!("would be written to {}", p.display()),
        (Some(p), false) => p.display().to_string(),
        (None, _) => "none (nothing to apply)".to_owned(),
    };
    for (k, v) in [
        ("path:", plan.path.display().to_string()),
        ("current version:", plan.current.to_string()),
        ("target version:", plan.target.to_string()),
        ("backup:", backup_line),
    ] {
        out.push_str(&format!("  {k:<17}{v}\n"));
    }
    if plan.steps.is_empty() {
        out.push_str(&format!(
            "  {:<17}none (already at version {})\n",
            "steps:", plan.target
        ));
    } else {
        out.push_str(&format!("  {:<17}{}\n", "steps:", plan.steps.len()));
        for (i, s) in plan.steps.iter().enumerate() {
            out.push_str(&format!("    {}. {s}\n", i + 1));
        }
    }
    out
}

/// Run the migration of `target` (the use case: plan, safety copy, apply) and render its
/// block for `metis <what> migrate`.
///
/// # Errors
/// The plan's, the copy's or the migration's error (no migration without a copy).
pub fn migrate_text(what: &str, target: &dyn Migratable, dry_run: bool) -> anyhow::Result<String> {
    let bar = Progress::new("backup", true);
    let r = migrate(target, dry_run, SystemClock.now_us(), &|d, t| {
        bar.update(d, t);
    });
    bar.finish();
    let MigrationOutcome {
        plan,
        backup,
        dry_run,
    } = r?;
    Ok(migrate_block(what, &plan, dry_run, backup.as_deref()))
}

/// `metis trace …`
pub async fn trace_cmd(cmd: TraceCmd) -> ExitCode {
    match cmd.action {
        TraceAction::Prune(args) => run_blocking("trace prune", move || prune_cmd_body(args)).await,
        TraceAction::Vacuum(args) => {
            run_blocking("trace vacuum", move || {
                let (db, backend) = args.db.store()?;
                let r = backend.compact(&db)?;
                print(&format!(
                    "trace vacuum complete\n  {:<17}{}\n  {:<17}{}\n",
                    "db_path:",
                    db.display(),
                    "bytes_reclaimed:",
                    thousands(r.reclaimed())
                ))
            })
            .await
        }
        TraceAction::Status(args) => {
            run_blocking("trace status", move || {
                let (db, backend) = args.db.store()?;
                print(&status_block(&backend.status(&db, SystemClock.now_us())?))
            })
            .await
        }
        TraceAction::Migrate(args) => {
            run_blocking("trace migrate", move || {
                let (db, backend) = args.db.store()?;
                print(&migrate_text(
                    "trace",
                    backend.migration(&db, Schema::Trace).as_ref(),
                    args.dry_run,
                )?)
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prune_block_has_the_documented_shape() {
        let c = PruneCounts {
            rows_eligible: 10,
            rows_audit_exempt: 2,
            rows_deleted: 10,
            oldest_kept_us: None,
        };
        let text = prune_block(Path::new("/d/metis.db"), 90, 0, &c, false);
        assert_eq!(
            text,
            "trace prune complete (dry_run=false)\n  db_path:               /d/metis.db\n  \
             cutoff:                1970-01-01T00:00:00+00:00 (90 days)\n  rows_eligible:         10\n  \
             rows_audit_exempt:     2\n  rows_deleted:          10\n  oldest_kept_timestamp: \u{2014}\n"
        );
    }

    #[test]
    fn migrate_blocks_list_every_step() {
        let plan = MigrationPlan {
            path: PathBuf::from("/d/metis.db"),
            current: 0,
            target: 1,
            steps: vec![
                "create index a".into(),
                "set PRAGMA user_version 0 -> 1".into(),
            ],
        };
        let text = migrate_block("trace", &plan, true, Some(Path::new("/d/b.db")));
        assert!(text.starts_with("trace migrate (dry run"), "{text}");
        assert!(
            text.contains("    2. set PRAGMA user_version 0 -> 1\n"),
            "{text}"
        );
        assert!(text.contains("would be written to /d/b.db"), "{text}");
        let done = MigrationPlan {
            steps: vec![],
            ..plan
        };
        assert!(migrate_block("trace", &done, false, None).contains("none (already at version 1)"));
    }
}
