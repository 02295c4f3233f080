//! `metis migrate-store --from sqlite --to redb` (and back, and to or from `postgres`): copy
//! the main store (events, sessions, keys) and the pattern stores of the given workspaces
//! between backends. The copy and its checks are the use case
//! `metis_usecases::storage::transfer`; this module parses the flags and prints the report.
//!
//! A file side is named by `--from-path`/`--to-path` (default: its file in `--data-dir`); the
//! PostgreSQL side by `--database-url` (one database per command, so `postgres` is on one
//! side only), and a path flag for that side is refused.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use metis_ports::storage::PatternPlace;
use metis_usecases::storage::transfer::{CopyReport, Side, copy_store};

use crate::cli::DatabaseArgs;
use crate::store::StoreKind;

/// `metis migrate-store --from sqlite --to redb` (or back).
#[derive(Debug, Args)]
pub struct MigrateStoreArgs {
    /// The backend to copy from.
    #[arg(long, value_enum)]
    pub from: StoreKind,
    /// The backend to copy to (its store must be empty or absent).
    #[arg(long, value_enum)]
    pub to: StoreKind,
    /// Data directory (default `~/.metis`): `metis.db` and `metis.redb` live there.
    #[arg(long, env = "METIS_GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The source main store file (default `<data-dir>/metis.db` or `metis.redb`).
    #[arg(long)]
    pub from_path: Option<PathBuf>,
    /// The destination main store file (default `<data-dir>/metis.db` or `metis.redb`).
    #[arg(long)]
    pub to_path: Option<PathBuf>,
    /// The database of the `postgres` side (`--database-url`, pool size, statement timeout).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Also copy this workspace's pattern store (repeatable).
    #[arg(long = "workspace")]
    pub workspaces: Vec<PathBuf>,
    /// Pattern stores live under this directory (one per workspace hash) instead of
    /// `<workspace>/.metis/`.
    #[arg(long, env = "METIS_GATEWAY_PATTERNS_DIR")]
    pub patterns_dir: Option<PathBuf>,
}

/// The block `migrate-store` prints.
#[must_use]
pub fn report_block(r: &CopyReport, from: StoreKind, to: StoreKind) -> String {
    let mut out = format!("migrate-store complete ({from} -> {to})\n");
    for (k, v) in [
        ("from:", r.from.display().to_string()),
        ("to:", r.to.display().to_string()),
        ("events:", r.events.to_string()),
        ("audit chain:", format!("{} links verified", r.audit_chain)),
        ("sessions:", r.sessions.to_string()),
        ("keys:", r.keys.to_string()),
        ("pattern stores:", r.pattern_stores.to_string()),
        ("outcomes:", r.outcomes.to_string()),
    ] {
        out.push_str(&format!("  {k:<16}{v}\n"));
    }
    out
}

/// The path of one side: a file engine's (given, else its file in the data directory); a
/// server engine's is its database (the URL, password hidden, as the report shows it).
fn side_path(
    data_dir: &Path,
    given: Option<&PathBuf>,
    kind: StoreKind,
    flag: &str,
    database: &DatabaseArgs,
) -> anyhow::Result<PathBuf> {
    if kind.is_server() {
        if let Some(p) = given {
            anyhow::bail!(
                "{flag} {} names a file, but the {kind} side is the database of --database-url",
                p.display()
            );
        }
        return Ok(PathBuf::from(crate::store::location(
            kind,
            Path::new(""),
            database,
        )));
    }
    Ok(given
        .cloned()
        .unwrap_or_else(|| data_dir.join(kind.main_file())))
}

/// Copy the main store and the given pattern stores from one backend to the other. Blocking.
///
/// # Errors
/// Same backend on both sides, a missing source, a non-empty destination, a copy failure, or
/// counts that differ after the copy.
pub fn migrate_store(
    args: &MigrateStoreArgs,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> anyhow::Result<CopyReport> {
    if args.from == args.to {
        anyhow::bail!("--from and --to are both {}; nothing to migrate", args.from);
    }
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .context("HOME is not set; pass --data-dir (or METIS_GATEWAY_DATA_DIR)")?,
        )
        .join(".metis"),
    };
    let from_path = side_path(
        &data_dir,
        args.from_path.as_ref(),
        args.from,
        "--from-path",
        &args.database,
    )?;
    let to_path = side_path(
        &data_dir,
        args.to_path.as_ref(),
        args.to,
        "--to-path",
        &args.database,
    )?;
    let workspaces = args
        .workspaces
        .iter()
        .map(|w| crate::keys_cli::absolute(w))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let place = PatternPlace::from_dir(args.patterns_dir.clone());
    let (from, to) = (
        args.from.backend(&args.database)?,
        args.to.backend(&args.database)?,
    );
    Ok(copy_store(
        Side {
            backend: from.as_ref(),
            path: &from_path,
        },
        Side {
            backend: to.as_ref(),
            path: &to_path,
        },
        &workspaces,
        &place,
        progress,
    )?)
}

/// `metis migrate-store`.
pub async fn migrate_store_cmd(args: MigrateStoreArgs) -> ExitCode {
    crate::storage_cli::run_blocking("migrate-store", move || {
        let bar = crate::storage_cli::Progress::new("events", false);
        let r = migrate_store(&args, &|d, t| bar.update(d, t));
        bar.finish();
        crate::storage_cli::print(&report_block(&r?, args.from, args.to))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    // The copy itself is proven between every pair of backends by the storage contract suite
    // (`cross_backend` in metis-tests); here only the printed block.
    #[test]
    fn the_report_block_names_both_backends_and_every_count() {
        let r = CopyReport {
            from: PathBuf::from("/d/metis.db"),
            to: PathBuf::from("/d/metis.redb"),
            events: 50,
            audit_chain: 10,
            sessions: 2,
            keys: 1,
            pattern_stores: 1,
            outcomes: 2,
        };
        assert_eq!(
            report_block(&r, StoreKind::Sqlite, StoreKind::Redb),
            "migrate-store complete (sqlite -> redb)\n  from:           /d/metis.db\n  \
             to:             /d/metis.redb\n  events:         50\n  audit chain:    10 links \
             verified\n  sessions:       2\n  keys:           1\n  pattern stores: 1\n  \
             outcomes:       2\n"
        );
    }
}
