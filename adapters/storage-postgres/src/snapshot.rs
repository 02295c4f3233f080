//! `metis backup` / `metis restore` of a PostgreSQL store: a portable snapshot file.
//!
//! Format (text, one file):
//! 1. `METIS-POSTGRES-SNAPSHOT 1`
//! 2. one JSON line: the component versions (`metis_schema`), the event count and span, and
//!    every table with its columns, in file order;
//! 3. per table: `TABLE <name>`, then its rows in PostgreSQL's `COPY` text format, then `\.`
//!    (a data line is never `\.`: `COPY` escapes every backslash).
//!
//! Invariants:
//! - The snapshot is one `REPEATABLE READ, READ ONLY` transaction: every table as of one
//!   instant while a fleet keeps writing. Payloads travel byte for byte (`COPY` of `text`), so
//!   the audit chain verifies after a restore.
//! - Reservations in flight, settled-hold ids and rate-limit buckets are not in it: they
//!   belong to requests of the moment, and a restore happens with the fleet stopped.
//! - The file is published with its `.meta` block by the storage kit's backup rules (never
//!   overwrites, no partial file, no backup without its metadata).
//! - Restore refuses, with nothing changed: a file that is not such a snapshot, component
//!   versions other than this binary's, a `.meta` that disagrees or a checksum mismatch, and a
//!   database holding events or keys without `--force`. It then loads every table in one
//!   transaction (the tables it holds are emptied first): all of it, or nothing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, pin_mut};
use metis_domain::backup::{BackupMeta, RestoreSummary};
use metis_ports::storage::{MaintenanceError, Progress};
use metis_storage_kit::{FileFacts, check_backup, check_checksum, publish_backup, sha256_file};
use serde::{Deserialize, Serialize};

use crate::maintenance::location;
use crate::pool::{Db, DbError};
use crate::schema::{self, Component};
use crate::tables::{MAIN_STORE, TRACE};

const MAGIC: &str = "METIS-POSTGRES-SNAPSHOT 1";

/// Tables of the moment, left out of a snapshot (see the module docs).
const TRANSIENT: [&str; 5] = [
    "metis_schema",
    "spend_holds",
    "spend_settled",
    "rate_buckets",
    "token_buckets",
];

/// Every component a restore brings to this binary's version before loading.
fn components() -> Vec<&'static Component> {
    let mut all: Vec<&'static Component> = MAIN_STORE.iter().collect();
    all.push(&crate::patterns::COMPONENT);
    all.push(&crate::admission::COMPONENT);
    all.push(&crate::token_limits::COMPONENT);
    all
}

#[derive(Debug, Serialize, Deserialize)]
struct Table {
    name: String,
    columns: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    components: BTreeMap<String, i32>,
    events: u64,
    oldest_event_us: Option<i64>,
    newest_event_us: Option<i64>,
    tables: Vec<Table>,
}

/// Why a load stopped: a refusal (nothing changed, the operator's call) or a database error
/// (the transaction rolled back).
enum LoadError {
    Refused(String),
    Db(DbError),
}

impl From<DbError> for LoadError {
    fn from(e: DbError) -> Self {
        LoadError::Db(e)
    }
}

impl From<tokio_postgres::Error> for LoadError {
    fn from(e: tokio_postgres::Error) -> Self {
        LoadError::Db(e.into())
    }
}

impl From<crate::schema::SchemaError> for LoadError {
    fn from(e: crate::schema::SchemaError) -> Self {
        LoadError::Db(e.into())
    }
}

fn failed(what: &str) -> impl Fn(DbError) -> MaintenanceError + '_ {
    move |e| MaintenanceError::Failed(format!("{what}: {e}"))
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl Fn(std::io::Error) -> DbError + 'a {
    move |e| DbError::Stopped(format!("{what} {}: {e}", path.display()))
}

/// Quote an identifier read from the catalogue.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Write a snapshot of the store into `dest` (and `<dest>.meta`).
pub(crate) fn backup(
    db: &Db,
    dest: &Path,
    progress: Progress<'_>,
) -> Result<BackupMeta, MaintenanceError> {
    crate::maintenance::require(db, &TRACE)?;
    let source = location(db);
    publish_backup(&source, dest, |tmp| {
        let (db2, tmp) = (db.clone(), tmp.to_path_buf());
        let header = db
            .block_on(async move { write_snapshot(&db2, &tmp).await })
            .map_err(failed("cannot write the snapshot"))?;
        progress(1, 1);
        Ok(FileFacts {
            schema_version: i64::from(header.components.get(TRACE.name).copied().unwrap_or(0)),
            events: header.events,
            oldest_event_us: header.oldest_event_us,
            newest_event_us: header.newest_event_us,
        })
    })
}

async fn write_snapshot(db: &Db, path: &Path) -> Result<Header, DbError> {
    let mut client = db.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let components = tx
        .query("SELECT component, version FROM metis_schema", &[])
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1)))
        .collect();
    let span = tx
        .query_one(
            "SELECT count(*), min(timestamp_us), max(timestamp_us) FROM events",
            &[],
        )
        .await?;
    let names: Vec<String> = tx
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
               AND NOT (table_name = ANY($1))
             ORDER BY table_name",
            &[&TRANSIENT.as_slice()],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut tables = Vec::new();
    for name in names {
        let columns = tx
            .query(
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1
                 ORDER BY ordinal_position",
                &[&name],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tables.push(Table { name, columns });
    }
    let header = Header {
        components,
        events: u64::try_from(span.get::<_, i64>(0)).unwrap_or(0),
        oldest_event_us: span.get(1),
        newest_event_us: span.get(2),
        tables,
    };
    let file = File::create(path).map_err(io(path, "cannot create"))?;
    let mut out = BufWriter::new(file);
    let line = serde_json::to_string(&header).map_err(|e| DbError::Stopped(e.to_string()))?;
    writeln!(out, "{MAGIC}\n{line}").map_err(io(path, "cannot write"))?;
    for t in &header.tables {
        writeln!(out, "TABLE {}", t.name).map_err(io(path, "cannot write"))?;
        let copy = format!(
            "COPY {} ({}) TO STDOUT",
            ident(&t.name),
            column_list(&t.columns)
        );
        let stream = tx.copy_out(copy.as_str()).await?;
        pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).map_err(io(path, "cannot write"))?;
        }
        writeln!(out, "\\.").map_err(io(path, "cannot write"))?;
    }
    out.flush().map_err(io(path, "cannot write"))?;
    tx.commit().await?;
    Ok(header)
}

/// Read the first two lines of `src`, refusing a file that is not a snapshot.
fn read_header(src: &Path) -> Result<(Header, BufReader<File>), MaintenanceError> {
    let file = File::open(src)
        .map_err(|e| MaintenanceError::Refused(format!("cannot open {}: {e}", src.display())))?;
    let mut reader = BufReader::new(file);
    let not_ours = || {
        MaintenanceError::Refused(format!(
            "{} is not a PostgreSQL store snapshot (`metis backup --store postgres`); a SQLite \
             or redb backup is restored with --store sqlite or --store redb",
            src.display()
        ))
    };
    let mut magic = String::new();
    // A binary file's first "line" can be huge: read at most a few bytes of it.
    let _ = reader
        .by_ref()
        .take(64)
        .read_line(&mut magic)
        .map_err(|_| not_ours())?;
    if magic.trim_end() != MAGIC {
        return Err(not_ours());
    }
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|_| not_ours())?;
    let header: Header = serde_json::from_str(&line).map_err(|_| not_ours())?;
    Ok((header, reader))
}

/// Replace the store's contents with the snapshot `src` (checks in the module docs).
pub(crate) fn restore(
    db: &Db,
    src: &Path,
    force: bool,
    progress: Progress<'_>,
) -> Result<RestoreSummary, MaintenanceError> {
    metis_storage_kit::require_file(src, "backup")?;
    let (header, _) = read_header(src)?;
    let version = i64::from(header.components.get(TRACE.name).copied().unwrap_or(0));
    let meta = check_backup(src, version, i64::from(TRACE.version()))?;
    for c in components() {
        let found = header.components.get(c.name).copied().unwrap_or(0);
        if found != c.version() && header.components.contains_key(c.name) {
            return Err(MaintenanceError::Refused(format!(
                "backup {} has {} schema version {found} but this binary uses {}; restore it \
                 with the metis version that wrote it",
                src.display(),
                c.name,
                c.version()
            )));
        }
    }
    let sha = sha256_file(src)?;
    check_checksum(src, meta.as_ref(), &sha)?;
    let bytes = std::fs::metadata(src).map_or(0, |m| m.len());
    let (db2, path) = (db.clone(), src.to_path_buf());
    let loaded = db
        .block_on(async move { Ok(load(&db2, &path, force).await) })
        .map_err(failed("restore"))?
        .map_err(|e| match e {
            LoadError::Refused(m) => MaintenanceError::Refused(m),
            LoadError::Db(e) => {
                MaintenanceError::Failed(format!("restore rolled back, nothing changed: {e}"))
            }
        })?;
    progress(1, 1);
    Ok(RestoreSummary {
        source: src.to_path_buf(),
        destination: location(db),
        bytes,
        schema_version: version,
        events: loaded,
    })
}

/// Migrate every component, then load every table of the snapshot in one transaction.
async fn load(db: &Db, src: &Path, force: bool) -> Result<u64, LoadError> {
    let mut client = db.get().await?;
    for c in components() {
        schema::migrate(&mut client, c).await?;
    }
    let (header, mut reader) = read_header(src).map_err(|e| LoadError::Refused(e.to_string()))?;
    let tx = client.transaction().await?;
    let held: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM gateway_keys)",
            &[],
        )
        .await?
        .get(0);
    if held > 0 && !force {
        return Err(LoadError::Refused(format!(
            "the database {} already holds {held} events and keys; pass --force to \
             replace them (stop every gateway first)",
            db.config().redacted()
        )));
    }
    let names: Vec<String> = header.tables.iter().map(|t| ident(&t.name)).collect();
    if !names.is_empty() {
        tx.batch_execute(&format!("TRUNCATE {}", names.join(", ")))
            .await?;
    }
    for t in &header.tables {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(io(src, "cannot read"))?;
        if line.trim_end() != format!("TABLE {}", t.name) {
            return Err(LoadError::Refused(format!(
                "{} is damaged: expected the rows of table {}",
                src.display(),
                t.name
            )));
        }
        let copy = format!(
            "COPY {} ({}) FROM STDIN",
            ident(&t.name),
            column_list(&t.columns)
        );
        let sink = tx.copy_in(copy.as_str()).await?;
        pin_mut!(sink);
        let mut chunk = Vec::with_capacity(1 << 18);
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(io(src, "cannot read"))?;
            if n == 0 {
                return Err(LoadError::Refused(format!(
                    "{} ends inside table {}",
                    src.display(),
                    t.name
                )));
            }
            if line == "\\.\n" {
                break;
            }
            chunk.extend_from_slice(line.as_bytes());
            if chunk.len() >= 1 << 18 {
                sink.send(Bytes::from(std::mem::take(&mut chunk))).await?;
            }
        }
        if !chunk.is_empty() {
            sink.send(Bytes::from(chunk)).await?;
        }
        sink.finish().await?;
    }
    let events: i64 = tx
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    tx.commit().await?;
    Ok(u64::try_from(events).unwrap_or(0))
}
