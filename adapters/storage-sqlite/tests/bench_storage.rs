//! Storage operations benchmark (ignored by default): builds a trace database of 1,000,000
//! events (override with `METIS_BENCH_EVENTS`), then measures `backup` throughput (MB/s),
//! `restore`, and `prune` of the older half (rows/s, batches of 5,000 with a 5 ms pause).
//!
//! Run: `cargo test --release -p metis-storage-sqlite --test bench_storage -- --ignored --nocapture`

use metis_ports::storage::StorageBackend;
use metis_storage_sqlite::SqliteBackend;
use std::time::Instant;

use metis_storage_sqlite::ops::{self, PruneOptions, no_progress};
use metis_storage_sqlite::{SqliteTraceStore, WriterOptions};
use rusqlite::{Connection, params};

const DAY: i64 = 86_400_000_000;
/// 2026-05-01T00:00:00Z
const NOW: i64 = 1_777_593_600_000_000;

#[test]
#[ignore = "benchmark: builds a 1M-event database"]
fn backup_and_prune_throughput_at_one_million_events() {
    let n: i64 = std::env::var("METIS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metis.db");
    // Schema, indexes and PRAGMAs exactly as the gateway creates them.
    SqliteTraceStore::open(&db, WriterOptions::default())
        .unwrap()
        .close();

    let t = Instant::now();
    let mut c = Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA foreign_keys=OFF; PRAGMA synchronous=NORMAL;")
        .unwrap();
    let span = 180 * DAY;
    let chunk = 50_000;
    let mut i = 0i64;
    while i < n {
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO events (id, timestamp_us, session_id, turn_id, parent_event_id, \
                     type, actor, sensitivity, payload_json) VALUES (?1, ?2, ?3, ?4, NULL, ?5, \
                     'agent', 'pseudonymous', ?6)",
                )
                .unwrap();
            for j in i..(i + chunk).min(n) {
                let ts = NOW - span + span / n * j;
                let ty = if j % 100 == 0 {
                    "quota.alert"
                } else {
                    "llm.call_completed"
                };
                let payload = format!(
                    r#"{{"model":"anthropic:claude-haiku-4-5","provider":"anthropic","input_tokens":{},"output_tokens":{},"cached_input_tokens":0,"cache_creation_input_tokens":0,"cost_usd":0.00{},"pricing_version":"builtin-2026-05","latency_ms":{},"stop_reason":"end_turn","gateway_key_id":"gk_{:026}","inbound_shape":"openai","user_id":"user-{}","team_id":"team-{}"}}"#,
                    j % 4000,
                    j % 900,
                    j % 97,
                    j % 3000,
                    j % 50,
                    j % 200,
                    j % 12
                );
                st.execute(params![
                    format!("01BENCH{j:019}"),
                    ts,
                    format!("gw_{:026}", j / 6),
                    format!("turn_{}", j / 6),
                    ty,
                    payload
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        i += chunk;
    }
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    let size = std::fs::metadata(&db).unwrap().len();
    println!(
        "built {n} events in {:.1} s; database {:.1} MB",
        t.elapsed().as_secs_f64(),
        size as f64 / 1e6
    );

    let dest = dir.path().join("snap").join("backup.db");
    let t = Instant::now();
    let meta = SqliteBackend.backup(&db, &dest, &no_progress).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(meta.events, u64::try_from(n).unwrap());
    println!(
        "backup: {:.1} MB in {secs:.2} s = {:.1} MB/s (VACUUM INTO + fsync + sha256 + metadata)",
        meta.bytes as f64 / 1e6,
        meta.bytes as f64 / 1e6 / secs
    );

    let target = dir.path().join("restored.db");
    let t = Instant::now();
    let r = SqliteBackend
        .restore(&dest, &target, false, &no_progress)
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "restore: {:.1} MB in {secs:.2} s = {:.1} MB/s (copy + sha256 + quick_check + count)",
        r.bytes as f64 / 1e6,
        r.bytes as f64 / 1e6 / secs
    );

    let cutoff = NOW - 90 * DAY;
    let t = Instant::now();
    let counts = ops::prune(&db, cutoff, PruneOptions::default(), &no_progress).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "prune --days 90: {} rows deleted ({} audit rows kept) in {secs:.2} s = {:.0} rows/s \
         (batches of 5,000, 5 ms pause)",
        counts.rows_deleted,
        counts.rows_audit_exempt,
        counts.rows_deleted as f64 / secs
    );
    assert!(counts.rows_deleted > 0);
}
