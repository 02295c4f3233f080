//! `metis audit export` and `metis audit verify`: the audit log out of the trace database.
//!
//! Invariants:
//! - Both commands open the database read-only (`StoreReader`): they never create, stamp or
//!   modify it, and under WAL they never block a running gateway.
//! - `export` selects audit events with `since <= timestamp < until`, ordered by id, and is
//!   byte-identical for the same database and explicit window. It never overwrites: the
//!   output is written to a temp file in the destination's directory, fsynced, then linked
//!   into place only if the destination still does not exist; on any failure no partial file
//!   is left behind.
//! - `verify` walks the chain in `audit_seq` order (`metis_domain::audit::verify`) and names the
//!   first broken link.
//! - Exit codes: 0 ok; 1 runtime error (`error: …` on stderr) or a broken chain; 2 usage error
//!   (bad flags via clap, an empty window, an unknown `--type`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use metis_domain::audit::BrokenLink;
use metis_domain::time::{format_iso, parse_iso};
use metis_ports::storage::{StorageBackend, StoreReader};
use metis_ports::system::Clock;
use metis_ports::trace::EventRow;
pub use metis_usecases::storage::audit::{
    CSV_HEADER, TypeSelection, csv_field, csv_line, jsonl_line, resolve_window, select_types,
};

use crate::cli::{DatabaseArgs, StorageArgs};
use crate::paths::Paths;
use crate::system::SystemClock;

/// `metis audit …`
#[derive(Debug, Args)]
pub struct AuditCmd {
    #[command(subcommand)]
    pub action: AuditAction,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Write audit events in `[since, until)` (default: the last 7 days), ordered by id, to a
    /// new file. Refuses to overwrite; the same window always gives the same bytes.
    Export(ExportArgs),
    /// Check the audit hash chain and report the first broken link (exit 1 when broken).
    Verify(VerifyArgs),
}

/// Output format of `metis audit export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One compact JSON envelope per line.
    Jsonl,
    /// RFC 4180 CSV with a header row and `\n` line ends.
    Csv,
}

impl ExportFormat {
    fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
        }
    }
}

/// The trace database to read (`--db-path`, else `<data-dir>/metis.db`).
#[derive(Debug, Clone, Args, Default)]
pub struct AuditDbArgs {
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

impl AuditDbArgs {
    /// The database file.
    ///
    /// # Errors
    /// When neither flag is given and `HOME` is unset.
    pub fn db(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.db_path {
            return Ok(p.clone());
        }
        let paths = Paths::resolve(&StorageArgs {
            data_dir: self.data_dir.clone(),
            db_path: None,
            keystore: None,
            store: self.store,
            database: self.database.clone(),
        })?;
        Ok(paths.db)
    }

    /// The database file and its backend: the server engine `--store` names, else the
    /// engine the file is ([`crate::store::for_existing`]).
    ///
    /// # Errors
    /// As [`db`](Self::db); a server engine without its database settings.
    pub fn store(&self) -> anyhow::Result<(PathBuf, Arc<dyn StorageBackend>)> {
        let db = self.db()?;
        let backend = crate::store::for_existing(&db, self.store, &self.database)?;
        Ok((db, backend))
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Destination file; must not exist (parent directories are created).
    pub out: PathBuf,
    /// Window start, inclusive: RFC 3339 with an offset (`2026-05-01T00:00:00Z`). Default:
    /// 7 days before now.
    #[arg(long, value_parser = parse_iso)]
    pub since: Option<i64>,
    /// Window end, exclusive: RFC 3339 with an offset. Default: now.
    #[arg(long, value_parser = parse_iso)]
    pub until: Option<i64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: ExportFormat,
    /// Only this audit event type (repeatable). Default: every audit type.
    #[arg(long = "type", visible_alias = "event-type", value_name = "TYPE")]
    pub types: Vec<String>,
    #[command(flatten)]
    pub db: AuditDbArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub db: AuditDbArgs,
}

/// Why a command failed: usage errors exit 2, everything else 1.
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Runtime(e.into())
    }
}

/// What `export` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub destination: PathBuf,
    pub format: ExportFormat,
    pub events: u64,
    pub since_us: i64,
    pub until_us: i64,
    pub bytes: u64,
}

impl ExportSummary {
    /// The summary block printed on success.
    ///
    /// # Errors
    /// Write errors.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "audit export complete")?;
        writeln!(out, "  destination:  {}", self.destination.display())?;
        writeln!(out, "  format:       {}", self.format.as_str())?;
        writeln!(out, "  events:       {}", self.events)?;
        writeln!(out, "  window start: {}", format_iso(self.since_us))?;
        writeln!(out, "  window end:   {}", format_iso(self.until_us))?;
        writeln!(out, "  bytes:        {}", self.bytes)
    }
}

/// Removes the temp file unless it was published.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn already_exists(out: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "audit export destination already exists: {} (choose a new file; exports never overwrite)",
        out.display()
    )
}

/// Write `rows` to `out` in `format` via a temp file; fails if `out` exists.
fn write_export(
    out: &Path,
    format: ExportFormat,
    rows: &[EventRow],
    progress: bool,
) -> anyhow::Result<u64> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let name = out
        .file_name()
        .map_or_else(|| "audit".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let mut guard = TempGuard {
        path: tmp.clone(),
        armed: true,
    };
    let mut w = BufWriter::new(file);
    let write_err = |e: io::Error| anyhow::anyhow!("cannot write {}: {e}", tmp.display());
    if format == ExportFormat::Csv {
        writeln!(w, "{CSV_HEADER}").map_err(write_err)?;
    }
    let total = rows.len();
    for (i, e) in rows.iter().enumerate() {
        let line = match format {
            ExportFormat::Jsonl => jsonl_line(e),
            ExportFormat::Csv => csv_line(e),
        }
        .with_context(|| format!("cannot render event {}", e.id))?;
        w.write_all(line.as_bytes()).map_err(write_err)?;
        w.write_all(b"\n").map_err(write_err)?;
        if progress && (i + 1) % 1000 == 0 {
            eprint!("\r  exporting: {}/{total} events", i + 1);
        }
    }
    if progress && total >= 1000 {
        eprintln!("\r  exporting: {total}/{total} events");
    }
    let file = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
    file.sync_all().map_err(write_err)?;
    let bytes = file.metadata().map_err(write_err)?.len();
    drop(file);

    // Publish without ever replacing an existing file: a hard link fails if `out` exists.
    match fs::hard_link(&tmp, out) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(already_exists(out)),
        Err(_) => {
            // A filesystem without hard links: check, then rename (a small race remains).
            if fs::symlink_metadata(out).is_ok() {
                return Err(already_exists(out));
            }
            fs::rename(&tmp, out)
                .with_context(|| format!("cannot move the export into {}", out.display()))?;
            guard.armed = false;
        }
    }
    drop(guard); // removes the temp name (the data stays reachable through `out`)
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(bytes)
}

/// Export audit events from the main store at `db` of `backend`.
///
/// # Errors
/// `Runtime` when the destination exists, the database is missing or unreadable, or the file
/// cannot be written.
pub fn export(
    (db, backend): (&Path, &dyn StorageBackend),
    out: &Path,
    format: ExportFormat,
    window: (i64, i64),
    types: &TypeSelection,
    progress: bool,
) -> Result<ExportSummary, Failure> {
    if fs::symlink_metadata(out).is_ok() {
        return Err(already_exists(out).into());
    }
    let (since_us, until_us) = window;
    let reader = open_reader(db, backend)?;
    let rows = if types.requested && types.audit.is_empty() {
        Vec::new()
    } else {
        reader
            .audit_events(since_us, until_us, &types.audit)
            .context("cannot read audit events")?
    };
    let bytes = write_export(out, format, &rows, progress)?;
    Ok(ExportSummary {
        destination: out.to_path_buf(),
        format,
        events: rows.len() as u64,
        since_us,
        until_us,
        bytes,
    })
}

/// Verify the audit chain of the main store at `db` of `backend`. `Ok(Ok(n))`: intact, `n`
/// chained events; `Ok(Err(link))`: the first broken link. Also returns the number of audit
/// events that carry no chain link (older rows).
///
/// # Errors
/// The database is missing or unreadable.
pub fn verify(
    db: &Path,
    backend: &dyn StorageBackend,
) -> anyhow::Result<(Result<u64, BrokenLink>, u64)> {
    let report = metis_usecases::storage::audit::verify(open_reader(db, backend)?.as_ref())?;
    Ok((report.chain, report.unchained))
}

/// The main store read-only.
fn open_reader(db: &Path, backend: &dyn StorageBackend) -> anyhow::Result<Box<dyn StoreReader>> {
    backend
        .open_reader(db)
        .context("cannot open the trace database")
}

/// The broken-chain line `verify` prints.
#[must_use]
pub fn broken_line(b: &BrokenLink) -> String {
    format!(
        "audit chain broken at event {} (seq {}): {}",
        b.id, b.expected_seq, b.problem
    )
}

fn run_export(args: ExportArgs) -> Result<(), Failure> {
    let now = SystemClock.now_us();
    let window = resolve_window(args.since, args.until, now).map_err(Failure::Usage)?;
    let types = select_types(&args.types).map_err(Failure::Usage)?;
    if !types.ignored.is_empty() {
        eprintln!(
            "warning: ignoring non-audit event type(s): {}",
            types.ignored.join(", ")
        );
    }
    let (db, backend) = args.db.store()?;
    let progress = io::stderr().is_terminal();
    let summary = export(
        (&db, backend.as_ref()),
        &args.out,
        args.format,
        window,
        &types,
        progress,
    )?;
    summary.write_to(&mut io::stdout().lock())?;
    Ok(())
}

/// Returns whether the chain is intact.
fn run_verify(args: &VerifyArgs) -> Result<bool, Failure> {
    let (db, backend) = args.db.store()?;
    let (result, unchained) = verify(&db, backend.as_ref())?;
    let mut out = io::stdout().lock();
    let ok = match result {
        Ok(n) => {
            writeln!(out, "audit chain ok: {n} events")?;
            true
        }
        Err(b) => {
            writeln!(out, "{}", broken_line(&b))?;
            false
        }
    };
    if unchained > 0 {
        eprintln!(
            "warning: {unchained} audit events carry no chain link (written before the chain \
             existed); the chain does not cover them"
        );
    }
    Ok(ok)
}

/// Run `metis audit …` and map the outcome to the exit code (printing `error: …` itself).
pub async fn run(cmd: AuditCmd) -> ExitCode {
    let outcome = tokio::task::spawn_blocking(move || match cmd.action {
        AuditAction::Export(args) => run_export(args).map(|()| true),
        AuditAction::Verify(args) => run_verify(&args),
    })
    .await
    .unwrap_or_else(|e| Err(Failure::Runtime(anyhow::anyhow!("audit task failed: {e}"))));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
