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
//! - `verify` walks the chain in `audit_seq` order (`gw_domain::audit::verify`) and names the
//!   first broken link.
//! - Exit codes: 0 ok; 1 runtime error (`error: …` on stderr) or a broken chain; 2 usage error
//!   (bad flags via clap, an empty window, an unknown `--type`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use gw_domain::audit::{AUDIT_TYPES, BrokenLink, is_audit_type};
use gw_domain::time::{MICROS_PER_SEC, format_iso, parse_iso};
use gw_ports::storage::StoreReader;
use gw_ports::system::Clock;
use gw_ports::trace::EventRow;
use serde_json::{Map, Value};

use crate::cli::StorageArgs;
use crate::paths::Paths;
use crate::system::SystemClock;

/// Default export window: the last 7 days.
const DEFAULT_WINDOW_US: i64 = 7 * 86_400 * MICROS_PER_SEC;

/// Known event types that are not audit types: accepted by `--type` with a warning and
/// dropped (they are never part of the audit log). Includes the original gateway's catalogue
/// so operators' existing scripts get a warning rather than a usage error.
const KNOWN_NON_AUDIT_TYPES: &[&str] = &[
    "route.decided",
    "llm.call_started",
    "llm.call_completed",
    "llm.call_failed",
    "turn.started",
    "turn.completed",
    "turn.cancelled",
    "session.created",
    "session.resumed",
    "session.ended",
    "pattern.recorded",
    "pattern.matched",
    "tool.called",
    "tool.completed",
    "tool.failed",
    "tool.input_invalid",
    "tool.confirmation_requested",
    "tool.confirmation_resolved",
    "routing.provider_unavailable",
    "routing.provider_recovered",
    "skill.loaded",
    "skill.created",
    "memory.updated",
    "eval.started",
    "eval.completed",
    "eval.failed",
    "delegate.started",
    "delegate.completed",
    "delegate.failed",
    "analytics.user_exported",
    "analytics.user_forgotten",
    "bus.subscriber_registered",
    "bus.subscriber_unregistered",
    "bus.gap_detected",
    "billing.customer_created",
    "billing.subscription_created",
    "billing.subscription_updated",
    "billing.subscription_canceled",
    "billing.invoice_paid",
    "billing.invoice_payment_failed",
];

/// The CSV header (stable column order).
pub const CSV_HEADER: &str =
    "id,timestamp,session_id,turn_id,parent_event_id,type,actor,sensitivity,payload_json";

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
    /// Storage backend: `sqlite` (`metis.db`, the default) or `redb` (`metis.redb`).
    #[arg(long, env = "METIS_GATEWAY_STORE", value_enum)]
    pub store: Option<crate::store::StoreKind>,
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
        })?;
        Ok(paths.db)
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

/// The export window `[since, until)` from the flags: `until` defaults to `now`, `since` to
/// 7 days before `now`.
///
/// # Errors
/// A usage message when the window is empty (`since >= until`).
pub fn resolve_window(
    since: Option<i64>,
    until: Option<i64>,
    now: i64,
) -> Result<(i64, i64), String> {
    let until_us = until.unwrap_or(now);
    let since_us = since.unwrap_or_else(|| now.saturating_sub(DEFAULT_WINDOW_US));
    if since_us >= until_us {
        let from = if since.is_some() {
            "--since"
        } else {
            "the default --since (7 days ago)"
        };
        let to = if until.is_some() {
            "--until"
        } else {
            "the default --until (now)"
        };
        return Err(format!(
            "empty window: {from} {} is not before {to} {}",
            format_iso(since_us),
            format_iso(until_us)
        ));
    }
    Ok((since_us, until_us))
}

/// The types to export, from `--type` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSelection {
    /// Audit types to read (deduplicated, in the order given). Empty with `requested` false:
    /// every audit type.
    pub audit: Vec<String>,
    /// Known types that are not audit types (warned about and dropped).
    pub ignored: Vec<String>,
    /// Whether any `--type` was given (then an empty `audit` means "export nothing").
    pub requested: bool,
}

/// Check `--type` values against the catalogue.
///
/// # Errors
/// A usage message naming every unknown type.
pub fn select_types(requested: &[String]) -> Result<TypeSelection, String> {
    let unknown: Vec<&str> = requested
        .iter()
        .map(String::as_str)
        .filter(|t| !is_audit_type(t) && !KNOWN_NON_AUDIT_TYPES.contains(t))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown event type(s): {}; audit types are: {}",
            unknown.join(", "),
            AUDIT_TYPES.join(", ")
        ));
    }
    let mut audit: Vec<String> = Vec::new();
    let mut ignored: Vec<String> = Vec::new();
    for t in requested {
        let list = if is_audit_type(t) {
            &mut audit
        } else {
            &mut ignored
        };
        if !list.contains(t) {
            list.push(t.clone());
        }
    }
    Ok(TypeSelection {
        audit,
        ignored,
        requested: !requested.is_empty(),
    })
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

/// The stored payload as JSON (compact, key order kept); a payload that is not JSON (a
/// damaged row) is exported as a JSON string rather than dropped.
fn payload_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

fn opt(v: Option<&String>) -> Value {
    v.map_or(Value::Null, |s| Value::String(s.clone()))
}

/// One JSONL line (without the newline): keys `id, timestamp, session_id, turn_id,
/// parent_event_id, type, actor, sensitivity, payload`.
///
/// # Errors
/// Serialisation errors (not expected for JSON values).
pub fn jsonl_line(e: &EventRow) -> serde_json::Result<String> {
    let mut obj = Map::new();
    obj.insert("id".into(), Value::String(e.id.clone()));
    obj.insert(
        "timestamp".into(),
        Value::String(format_iso(e.timestamp_us)),
    );
    obj.insert("session_id".into(), Value::String(e.session_id.clone()));
    obj.insert("turn_id".into(), opt(e.turn_id.as_ref()));
    obj.insert("parent_event_id".into(), opt(e.parent_event_id.as_ref()));
    obj.insert("type".into(), Value::String(e.event_type.clone()));
    obj.insert("actor".into(), Value::String(e.actor.clone()));
    obj.insert("sensitivity".into(), Value::String(e.sensitivity.clone()));
    obj.insert("payload".into(), payload_value(&e.payload_json));
    serde_json::to_string(&Value::Object(obj))
}

/// Quote a CSV field when it holds a comma, a quote or a line break (RFC 4180; quotes are
/// doubled).
#[must_use]
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One CSV record (without the newline), columns as in [`CSV_HEADER`]; nulls are empty.
///
/// # Errors
/// Serialisation errors (not expected for JSON values).
pub fn csv_line(e: &EventRow) -> serde_json::Result<String> {
    let payload = serde_json::to_string(&payload_value(&e.payload_json))?;
    let fields = [
        e.id.as_str(),
        &format_iso(e.timestamp_us),
        &e.session_id,
        e.turn_id.as_deref().unwrap_or(""),
        e.parent_event_id.as_deref().unwrap_or(""),
        &e.event_type,
        &e.actor,
        &e.sensitivity,
        &payload,
    ];
    Ok(fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(","))
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

/// Export audit events from the database at `db`.
///
/// # Errors
/// `Runtime` when the destination exists, the database is missing or unreadable, or the file
/// cannot be written.
pub fn export(
    db: &Path,
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
    let reader = open_reader(db)?;
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

/// Verify the audit chain of the database at `db`. `Ok(Ok(n))`: intact, `n` chained events;
/// `Ok(Err(link))`: the first broken link. Also returns the number of audit events that
/// carry no chain link (older rows).
///
/// # Errors
/// The database is missing or unreadable.
pub fn verify(db: &Path) -> anyhow::Result<(Result<u64, BrokenLink>, u64)> {
    let report = gw_usecases::storage::audit::verify(open_reader(db)?.as_ref())?;
    Ok((report.chain, report.unchained))
}

/// The store at `db` read-only, through the backend the file is.
fn open_reader(db: &Path) -> anyhow::Result<Box<dyn StoreReader>> {
    crate::store::for_existing(db, None)
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
    let db = args.db.db()?;
    let progress = io::stderr().is_terminal();
    let summary = export(&db, &args.out, args.format, window, &types, progress)?;
    summary.write_to(&mut io::stdout().lock())?;
    Ok(())
}

/// Returns whether the chain is intact.
fn run_verify(args: &VerifyArgs) -> Result<bool, Failure> {
    let db = args.db.db()?;
    let (result, unchained) = verify(&db)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400 * MICROS_PER_SEC;

    #[test]
    fn the_window_defaults_to_the_last_seven_days_and_must_not_be_empty() {
        let now = 100 * DAY;
        assert_eq!(resolve_window(None, None, now), Ok((93 * DAY, now)));
        assert_eq!(
            resolve_window(Some(99 * DAY), None, now),
            Ok((99 * DAY, now))
        );
        assert_eq!(
            resolve_window(None, Some(95 * DAY), now),
            Ok((93 * DAY, 95 * DAY))
        );
        let err = resolve_window(None, Some(90 * DAY), now).unwrap_err();
        assert!(err.contains("default --since"), "{err}");
        let err = resolve_window(Some(5), Some(5), now).unwrap_err();
        assert!(err.contains("empty window"), "{err}");
        assert!(resolve_window(Some(6), Some(5), now).is_err());
    }

    #[test]
    fn types_are_checked_intersected_and_deduplicated() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
        let sel = select_types(&s(&[
            "quota.alert",
            "llm.call_completed",
            "quota.alert",
            "gateway.key_issued",
        ]))
        .unwrap();
        assert_eq!(sel.audit, s(&["quota.alert", "gateway.key_issued"]));
        assert_eq!(sel.ignored, s(&["llm.call_completed"]));
        assert!(sel.requested);
        let err = select_types(&s(&["gateway.key_issed", "nope"])).unwrap_err();
        assert!(err.contains("gateway.key_issed, nope"), "{err}");
        let all = select_types(&[]).unwrap();
        assert!(!all.requested && all.audit.is_empty());
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field(r#"{"k":"v"}"#), r#""{""k"":""v""}""#);
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
    }

    fn row() -> EventRow {
        EventRow {
            id: "01ID".into(),
            timestamp_us: 1_747_318_930_123_456,
            session_id: "system".into(),
            turn_id: None,
            parent_event_id: Some("01PARENT".into()),
            event_type: "gateway.key_issued".into(),
            actor: "system".into(),
            sensitivity: "pseudonymous".into(),
            payload_json: r#"{"name":"a, \"b\"","n":1.50,"audit_seq":1}"#.into(),
        }
    }

    #[test]
    fn a_jsonl_line_has_the_documented_key_order() {
        assert_eq!(
            jsonl_line(&row()).unwrap(),
            r#"{"id":"01ID","timestamp":"2025-05-15T14:22:10.123456+00:00","session_id":"system","turn_id":null,"parent_event_id":"01PARENT","type":"gateway.key_issued","actor":"system","sensitivity":"pseudonymous","payload":{"name":"a, \"b\"","n":1.50,"audit_seq":1}}"#
        );
    }

    #[test]
    fn a_csv_line_quotes_the_payload() {
        assert_eq!(
            csv_line(&row()).unwrap(),
            r#"01ID,2025-05-15T14:22:10.123456+00:00,system,,01PARENT,gateway.key_issued,system,pseudonymous,"{""name"":""a, \""b\"""",""n"":1.50,""audit_seq"":1}""#
        );
    }
}
