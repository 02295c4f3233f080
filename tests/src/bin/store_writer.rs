//! `store-writer <sqlite|redb|postgres> <path>`: the victim of the crash-consistency contract
//! test.
//!
//! Opens the trace store at `path` (for `postgres`: the database of that name on the server of
//! `METIS_TEST_DATABASE_URL`) with the production writer settings and, until killed (or
//! for at most 60 s), emits one batch of events (`metis_tests::contract::crash_batch`), flushes,
//! and prints `committed <calls> <audits>`: every count printed was durably written.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use metis_ports::trace::EventSink;
use metis_tests::contract::{CRASH_BATCH_COUNTS, crash_batch};

async fn open(backend: &str, path: PathBuf) -> anyhow::Result<Arc<dyn EventSink>> {
    match backend {
        "sqlite" => {
            let store = tokio::task::spawn_blocking(move || {
                metis_storage_sqlite::SqliteTraceStore::open(
                    &path,
                    metis_storage_sqlite::WriterOptions::default(),
                )
            })
            .await??;
            Ok(Arc::new(store))
        }
        "redb" => {
            let store = tokio::task::spawn_blocking(move || {
                metis_storage_redb::RedbTraceStore::open(
                    &path,
                    metis_storage_redb::RedbOptions::default(),
                )
            })
            .await??;
            Ok(Arc::new(store))
        }
        "postgres" => {
            // `path` is the name of a database on the server of METIS_TEST_DATABASE_URL.
            let url = std::env::var(metis_storage_postgres::scratch::TEST_DATABASE_URL)
                .context("METIS_TEST_DATABASE_URL is not set")?;
            let name = path.display().to_string();
            let config = metis_storage_postgres::PgConfig::new(
                &url,
                metis_storage_postgres::DEFAULT_POOL_SIZE,
                metis_storage_postgres::DEFAULT_STATEMENT_TIMEOUT,
            )?
            .with_database(&name);
            let backend = metis_storage_postgres::PostgresBackend::new(config)?;
            let store = tokio::task::spawn_blocking(move || {
                metis_ports::storage::StorageBackend::open_main(
                    &backend,
                    std::path::Path::new("unused"),
                    metis_ports::storage::ServeOptions::default(),
                )
            })
            .await??;
            let sink: Arc<dyn EventSink> = store;
            Ok(sink)
        }
        other => bail!("unknown backend {other}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let backend = args
        .next()
        .context("usage: store-writer <sqlite|redb|postgres> <path>")?;
    let path = PathBuf::from(
        args.next()
            .context("usage: store-writer <sqlite|redb|postgres> <path>")?,
    );
    let sink = open(&backend, path).await?;
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut batch = 0u64;
    while started.elapsed() < Duration::from_secs(60) {
        for e in crash_batch(batch) {
            sink.emit(e);
        }
        sink.flush().await?;
        batch += 1;
        writeln!(
            out,
            "committed {} {}",
            batch * CRASH_BATCH_COUNTS.0,
            batch * CRASH_BATCH_COUNTS.1
        )?;
        out.flush()?;
    }
    Ok(())
}
