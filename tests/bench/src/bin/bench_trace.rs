//! `bench-trace`: trace-writer benchmarks.
//!
//! - `bench-trace writer [--events N] [--dir D]`: events/s sustained through the gateway's
//!   own writer (`SqliteTraceStore`: `EventSink::emit` onto its queue, one writer thread,
//!   batched commits, then `flush`), against a raw rusqlite loop inserting the same events
//!   into the same schema in transactions of the same size. The events are the four a
//!   gateway request records (`route.decided`, `llm.call_started`, `llm.call_completed`,
//!   `turn.completed`), built before the clock starts. The producer never lets the queue
//!   overflow (it waits while the queue is nearly full), so the rate is what the writer
//!   sustains, not what it drops. Prints one JSON line (`{"kind":"trace",…}`).
//! - `bench-trace ablation [--dir D] [--per-index | --setup SQL…]`: the raw insert loop again,
//!   with smaller transactions and with index sets (the original gateway's, the current one,
//!   some indexes dropped, none), to show where the writer's time goes (CPU µs per event from
//!   `/proc/self/stat`). `--per-index` drops one index at a time from the original set;
//!   `--setup` runs one variant (the current set after the given statements). Prints one
//!   JSON line per variant.
//! - `bench-trace fill-traffic --db PATH --requests N [--span-days D] [--original-indexes]`:
//!   adds N requests of realistic traffic ([`metis_bench::traffic`]: five events per completed
//!   request, 40 keys, users and teams, sessions, audit events) through the gateway's own
//!   writer, so audit events are chained. `--original-indexes` gives a new file the original
//!   gateway's index set first (the state of a file not yet migrated). Prints progress and one
//!   JSON line.
//! - `bench-trace append --db PATH [--requests N] [--raw] [--cache-kib K]`: N more requests
//!   through the writer (or, with `--raw`, a plain insert loop that leaves the file's indexes
//!   as they are) into an existing file, events built before the clock starts: CPU µs per
//!   event at that file's size and index set.
//! - `bench-trace plans --db PATH`: `EXPLAIN QUERY PLAN` of every statement the product runs
//!   against `events` (`metis_storage_sqlite::plans`), the indexes each uses, whether it
//!   passes the index-backed check, then the wall time of the product's own reads on that
//!   file (spend rebuild, usage, audit export and verify, prune dry run, status, the
//!   runbook's check). One JSON line each.
//! - `bench-trace migrate --db PATH`: the trace migration (`metis trace migrate` without its
//!   safety copy), timed.
//! - `bench-trace stall --db PATH --seconds S`: holds SQLite's write lock on a running
//!   gateway's trace database for S seconds (re-taking it after each short release), so the
//!   gateway's writer cannot commit and its queue fills: the load generator then measures
//!   request latency while the writer is saturated. Prints one JSON line when done.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use metis_bench::traffic::{Mix, Traffic};
use metis_domain::events::{
    CallIdentity, Event, LlmCallCompleted, LlmCallStarted, RouteChainEntry, RouteDecided,
    TurnCompleted, make_event,
};
use metis_ports::trace::EventSink;
use metis_storage_sqlite::{
    EVENT_INDEX_NAMES, RETIRED_EVENT_INDEXES, SqliteTraceStore, TraceReader, WriterOptions, ops,
};
use rusqlite::{Connection, params};
use serde_json::json;

/// Microseconds per `/proc/PID/stat` clock tick (`CLK_TCK` is 100 on Linux x86-64).
const TICK_US: f64 = 10_000.0;

#[derive(Debug, Parser)]
#[command(name = "bench-trace", about = "Trace-writer benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Gateway writer vs raw rusqlite inserts.
    Writer {
        /// Events per measurement (a multiple of 4: one request's worth each).
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Directory for the scratch databases (default: a fresh temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Raw inserts by transaction size and index set.
    Ablation {
        /// Directory for the scratch databases (default: a fresh temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Instead: drop one index at a time from the original set (1,024-row transactions).
        #[arg(long)]
        per_index: bool,
        /// Instead: one variant, the current set after these statements (repeatable), e.g.
        /// `--setup "DROP INDEX idx_events_audit_seq"` (1,024-row transactions).
        #[arg(long)]
        setup: Vec<String>,
    },
    /// Add the trace of past requests of one key to a trace database (for the spend-quota run).
    Fill {
        #[arg(long)]
        db: PathBuf,
        /// Requests to add (4 events each; at most 2,500,000).
        #[arg(long, default_value_t = 250_000)]
        requests: usize,
        /// The key the requests are attributed to (`gateway_key_id`).
        #[arg(long)]
        key_id: String,
        /// Spread the requests evenly over this many days before now (0: all in the last
        /// few seconds, so that they count as today's spend).
        #[arg(long, default_value_t = 0.0)]
        span_days: f64,
    },
    /// Add realistic gateway traffic through the gateway's writer.
    FillTraffic {
        #[arg(long)]
        db: PathBuf,
        /// Requests to add (about 5 events each; at most 2,500,000).
        #[arg(long, default_value_t = 2_000_000)]
        requests: u64,
        /// Spread over this many days, ending now.
        #[arg(long, default_value_t = 30.0)]
        span_days: f64,
        /// Distinct gateway keys.
        #[arg(long, default_value_t = 40)]
        keys: u32,
        /// Give a new file the original gateway's index set before filling it.
        #[arg(long)]
        original_indexes: bool,
    },
    /// Writer cost per event on an existing file.
    Append {
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value_t = 40_000)]
        requests: u64,
        /// Insert with the raw loop (1,024 rows per transaction) instead of the gateway's
        /// writer: the file's indexes are used as they are (the writer's open ensures its own).
        #[arg(long)]
        raw: bool,
        /// SQLite page cache in KiB (default: the writer's `page_cache_kib` through the
        /// store, SQLite's 2,000 with `--raw`).
        #[arg(long)]
        cache_kib: Option<u32>,
    },
    /// Query plans and timings of the product's statements on an existing file.
    Plans {
        #[arg(long)]
        db: PathBuf,
    },
    /// Time the trace migration of an existing file.
    Migrate {
        #[arg(long)]
        db: PathBuf,
    },
    /// Hold the write lock of an existing trace database.
    Stall {
        #[arg(long)]
        db: PathBuf,
        /// Seconds to keep the lock (at most 120).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Each hold lasts this long before a 1 ms release.
        #[arg(long, default_value_t = 250)]
        hold_ms: u64,
    },
}

/// The events of `requests` gateway requests, as the gateway builds them.
fn request_events(requests: usize) -> Vec<Event> {
    request_events_for(
        requests,
        "gk_01JBENCHKEY0000000000000000",
        1_750_000_000_000_000,
        100,
    )
}

/// The events of `requests` requests of key `key_id`, the first at `base_us`, `step_us` apart.
fn request_events_for(requests: usize, key_id: &str, base_us: i64, step_us: i64) -> Vec<Event> {
    let mut ids = ulid::Generator::new();
    let mut next_id = move || {
        ids.generate()
            .unwrap_or_else(|_| ulid::Ulid::generate())
            .to_string()
    };
    let mut out = Vec::with_capacity(requests * 4);
    for i in 0..requests {
        let now = base_us + i64::try_from(i).unwrap_or(0) * step_us;
        let session = format!("gw_{}", next_id());
        let turn = format!("gt_{}", next_id());
        let identity = CallIdentity {
            gateway_key_id: Some(key_id.to_owned()),
            inbound_shape: Some("openai"),
            user_id: Some("bench".into()),
            team_id: Some("perf".into()),
            parent_session_id: None,
        };
        let route = RouteDecided {
            chosen_model: "openai:gpt-5".into(),
            winner_index: 0,
            elapsed_ms: 0.004,
            chain: vec![RouteChainEntry {
                policy: "client_model",
                verdict: "chose",
                reason: "model requested by the client".into(),
                candidate_model: Some("openai:gpt-5".into()),
                deployment: None,
            }],
            requested_model: "gpt-5".into(),
        };
        let route_id = next_id();
        out.push(make_event(
            route_id.clone(),
            now,
            &session,
            Some(&turn),
            None,
            &route,
        ));
        let started = LlmCallStarted {
            model: "openai:gpt-5".into(),
            provider: "openai".into(),
            estimated_input_tokens: 12,
            request_id: next_id(),
            is_worker: false,
            stream: false,
        };
        let started_id = next_id();
        out.push(make_event(
            started_id.clone(),
            now + 5,
            &session,
            Some(&turn),
            Some(&route_id),
            &started,
        ));
        let done = LlmCallCompleted {
            model: "openai:gpt-5".into(),
            provider: "openai".into(),
            input_tokens: 12,
            output_tokens: 64,
            cached_input_tokens: 0,
            cache_creation_input_tokens: 0,
            cost_usd: 0.000_655,
            pricing_version: "2026-01".into(),
            latency_ms: 1,
            stop_reason: "end_turn".into(),
            produced_tool_calls: 0,
            produced_thinking_blocks: 0,
            retry_count: 0,
            identity: identity.clone(),
        };
        let done_id = next_id();
        out.push(make_event(
            done_id.clone(),
            now + 50,
            &session,
            Some(&turn),
            Some(&started_id),
            &done,
        ));
        let turn_done = TurnCompleted {
            stop_reason: "end_turn".into(),
            llm_call_count: 1,
            tool_call_count: 0,
            total_input_tokens: 12,
            total_output_tokens: 64,
            total_cost_usd: 0.000_655,
            wall_time_seconds: 0.001,
            identity,
        };
        out.push(make_event(
            next_id(),
            now + 51,
            &session,
            Some(&turn),
            Some(&done_id),
            &turn_done,
        ));
    }
    out
}

/// Events through `SqliteTraceStore` until `flush` confirms them.
fn gateway_writer(path: &Path, events: Vec<Event>) -> anyhow::Result<serde_json::Value> {
    let opts = WriterOptions::default();
    let store = SqliteTraceStore::open(path, opts).context("open the trace store")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let n = events.len() as u64;
    // Leave headroom so concurrent emits in a real gateway would not overflow either.
    let high_water = (opts.queue_capacity as u64).saturating_sub(opts.max_batch as u64 * 2);
    let started = Instant::now();
    let mut waits = 0_u64;
    for e in events {
        while store.stats().queued >= high_water {
            waits += 1;
            std::thread::sleep(Duration::from_micros(50));
        }
        store.emit(e);
    }
    rt.block_on(store.flush()).context("flush")?;
    let secs = started.elapsed().as_secs_f64();
    let s = rt.block_on(store.shutdown());
    Ok(json!({
        "events": n,
        "seconds": secs,
        "events_per_s": s.written as f64 / secs,
        "written": s.written,
        "overflowed": s.overflowed,
        "failed": s.failed,
        "lost": s.overflowed + s.failed,
        "producer_waits": waits,
        "queue_capacity": opts.queue_capacity,
        "max_batch": opts.max_batch,
    }))
}

/// The same events inserted by a plain loop: one prepared statement, `max_batch` rows per
/// `BEGIN IMMEDIATE` transaction, same PRAGMAs as the gateway's writer connection.
fn raw_rusqlite(path: &Path, events: &[Event], batch: usize) -> anyhow::Result<serde_json::Value> {
    raw_rusqlite_with(path, events, batch, &[])
}

/// [`raw_rusqlite`] after running `setup` (index changes) on the new file.
fn raw_rusqlite_with(
    path: &Path,
    events: &[Event],
    batch: usize,
    setup: &[String],
) -> anyhow::Result<serde_json::Value> {
    // Create the file with the gateway's exact schema and indexes, then close the store.
    SqliteTraceStore::open(path, WriterOptions::default())
        .context("create the schema")?
        .close();
    let mut conn = Connection::open(path)?;
    for sql in setup {
        conn.execute_batch(sql)?;
    }
    raw_insert(&mut conn, events, batch, None)
}

/// The raw insert loop on an open connection (gateway PRAGMAs; `cache_kib` sets SQLite's
/// page cache, default 2 MB).
fn raw_insert(
    conn: &mut Connection,
    events: &[Event],
    batch: usize,
    cache_kib: Option<u32>,
) -> anyhow::Result<serde_json::Value> {
    let cpu0 = metis_bench::procfs::cpu_ticks(std::process::id()).unwrap_or(0);
    let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let _pages: i64 = conn.query_row("PRAGMA wal_autocheckpoint=8192", [], |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    if let Some(k) = cache_kib {
        conn.execute_batch(&format!("PRAGMA cache_size=-{k}"))?;
    }
    let started = Instant::now();
    let mut written = 0_u64;
    for chunk in events.chunks(batch.max(1)) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (id, timestamp_us, session_id, turn_id, parent_event_id, \
                 type, actor, sensitivity, payload_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for e in chunk {
                written += stmt.execute(params![
                    e.id,
                    e.timestamp_us,
                    e.session_id,
                    e.turn_id,
                    e.parent_event_id,
                    e.event_type,
                    e.actor.as_str(),
                    e.sensitivity.as_str(),
                    e.payload_json,
                ])? as u64;
            }
        }
        tx.commit()?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = metis_bench::procfs::cpu_ticks(std::process::id())
        .unwrap_or(0)
        .saturating_sub(cpu0);
    Ok(json!({
        "events": events.len(),
        "seconds": secs,
        "events_per_s": written as f64 / secs,
        "cpu_us_per_event": cpu as f64 * TICK_US / written.max(1) as f64,
        "written": written,
        "lost": 0,
    }))
}

fn remove_db(p: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
    }
}

fn drop_sql(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| format!("DROP INDEX IF EXISTS {n}"))
        .collect()
}

/// Statements that turn a new file's index set into the original gateway's (its ten indexes
/// plus the audit-chain index this port always had).
fn original_set_sql() -> Vec<String> {
    RETIRED_EVENT_INDEXES
        .iter()
        .map(|r| r.sql.to_owned())
        .collect()
}

fn scratch_dir(dir: Option<PathBuf>) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    Ok(match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            (None, d)
        }
        None => {
            let tmp = tempfile::tempdir()?;
            let p = tmp.path().to_path_buf();
            (Some(tmp), p)
        }
    })
}

fn ablation(dir: Option<PathBuf>, per_index: bool, setup: Vec<String>) -> anyhow::Result<()> {
    let (_tmp, dir) = scratch_dir(dir)?;
    let original = original_set_sql();
    let json_identity = [
        "idx_events_gateway_key_id",
        "idx_events_user_id",
        "idx_events_team_id",
        "idx_events_eval_subject_kind",
    ];
    let mut original_without_json = original.clone();
    original_without_json.extend(drop_sql(&json_identity));
    let mut current_without_audit = Vec::new();
    current_without_audit.extend(drop_sql(&["idx_events_audit_seq"]));
    let mut without_any = original.clone();
    without_any.extend(drop_sql(&EVENT_INDEX_NAMES));
    without_any.extend(drop_sql(&RETIRED_EVENT_INDEXES.map(|r| r.name)));
    let db = dir.join("trace-bench-ablation.db");
    let mut variants: Vec<(String, Vec<String>, Vec<usize>)> = vec![
        (
            "original index set (10 + audit_seq)".into(),
            original.clone(),
            vec![1024, 64, 4],
        ),
        (
            "original set without its 4 json_extract identity/eval indexes".into(),
            original_without_json,
            vec![1024, 64, 4],
        ),
        (
            format!("current index set ({})", EVENT_INDEX_NAMES.len()),
            Vec::new(),
            vec![1024, 64, 4],
        ),
        (
            "current set without idx_events_audit_seq".into(),
            current_without_audit,
            vec![1024],
        ),
        (
            "without any secondary index".into(),
            without_any,
            vec![1024, 64, 4],
        ),
    ];
    if per_index {
        let mut names: Vec<&str> = RETIRED_EVENT_INDEXES.iter().map(|r| r.name).collect();
        names.extend(EVENT_INDEX_NAMES);
        variants = names
            .into_iter()
            .map(|n| {
                let mut setup = original.clone();
                setup.extend(drop_sql(&[n]));
                (format!("original set without {n}"), setup, vec![1024])
            })
            .collect();
        variants.insert(
            0,
            (
                "original index set (10 + audit_seq)".into(),
                original,
                vec![1024],
            ),
        );
    }
    if !setup.is_empty() {
        variants = vec![(
            format!("current set, then: {}", setup.join("; ")),
            setup,
            vec![1024],
        )];
    }
    for (schema, setup, batches) in variants {
        for batch in batches {
            let requests = if batch >= 64 { 25_000 } else { 5_000 };
            let events = request_events(requests);
            remove_db(&db);
            let r = raw_rusqlite_with(&db, &events, batch, &setup)?;
            println!(
                "{}",
                json!({"kind": "trace_ablation", "schema": schema, "rows_per_tx": batch, "result": r})
            );
        }
    }
    remove_db(&db);
    Ok(())
}

fn writer(events: usize, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let requests = events.div_ceil(4).max(1);
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let gw_db = dir.join("trace-bench-writer.db");
    let raw_db = dir.join("trace-bench-raw.db");
    for p in [&gw_db, &raw_db] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
        }
    }
    let raw = {
        let evs = request_events(requests);
        raw_rusqlite(&raw_db, &evs, WriterOptions::default().max_batch)?
    };
    let gw = gateway_writer(&gw_db, request_events(requests))?;
    let line = json!({
        "kind": "trace",
        "gateway_writer": gw,
        "raw_rusqlite": raw,
        "note": format!(
            "{} events ({} requests × 4 events: route.decided, llm.call_started, llm.call_completed, \
             turn.completed) into the gateway's schema ({} indexes on events) on the local disk; WAL, synchronous=NORMAL; events built before timing; both write \
             {} rows per transaction.",
            requests * 4, requests, EVENT_INDEX_NAMES.len(), WriterOptions::default().max_batch
        ),
    });
    println!("{line}");
    for p in [&gw_db, &raw_db] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
        }
    }
    Ok(())
}

fn fill(db: &Path, requests: usize, key_id: &str, span_days: f64) -> anyhow::Result<()> {
    let now_us = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros(),
    )?;
    // The last request ends one second ago. With `span_days` 0 they are 4 µs apart, so all of
    // them fall within the current UTC day unless the run starts seconds before midnight.
    let n = i64::try_from(requests.max(1))?;
    let step_us = ((span_days * 86_400e6) as i64 / n).max(4);
    let span = n * step_us;
    let events = request_events_for(requests, key_id, now_us - 1_000_000 - span, step_us);
    let r = raw_rusqlite(db, &events, WriterOptions::default().max_batch)?;
    println!(
        "{}",
        json!({"kind": "fill", "requests": requests, "key_id": key_id, "result": r})
    );
    Ok(())
}

/// Emit `events` through `store`, never letting its queue overflow, then flush.
fn emit_all(
    store: &SqliteTraceStore,
    rt: &tokio::runtime::Runtime,
    events: Vec<Event>,
) -> anyhow::Result<()> {
    let opts = WriterOptions::default();
    let high_water = (opts.queue_capacity as u64).saturating_sub(opts.max_batch as u64 * 2);
    for e in events {
        while store.stats().queued >= high_water {
            std::thread::sleep(Duration::from_micros(200));
        }
        store.emit(e);
    }
    rt.block_on(store.flush()).context("flush")?;
    Ok(())
}

fn now_us() -> anyhow::Result<i64> {
    Ok(i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros(),
    )?)
}

fn file_mb(p: &Path) -> f64 {
    let len = |s: &str| std::fs::metadata(format!("{}{s}", p.display())).map_or(0, |m| m.len());
    (len("") + len("-wal")) as f64 / 1e6
}

fn fill_traffic(
    db: &Path,
    requests: u64,
    span_days: f64,
    keys: u32,
    original_indexes: bool,
) -> anyhow::Result<()> {
    let store = SqliteTraceStore::open(db, WriterOptions::default()).context("open the store")?;
    if original_indexes {
        // From a second connection: the writer's statements re-prepare on the schema change.
        let conn = Connection::open(db)?;
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
        anyhow::ensure!(
            n == 0,
            "--original-indexes needs a new file ({n} events found)"
        );
        for sql in original_set_sql() {
            conn.execute_batch(&sql)?;
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let n = requests.max(1);
    let span_us = (span_days * 86_400e6) as i64;
    let step_us = (span_us / i64::try_from(n)?).max(10);
    let mut traffic = Traffic::new(Mix {
        keys,
        start_us: now_us()? - 10_000_000 - span_us,
        step_us,
    });
    let started = Instant::now();
    let cpu0 = metis_bench::procfs::cpu_ticks(std::process::id()).unwrap_or(0);
    let mut done = 0_u64;
    let mut events = 0_u64;
    let chunk = 20_000_u64;
    while done < n {
        let take = chunk.min(n - done);
        let mut evs = Vec::with_capacity(usize::try_from(take)? * 6);
        traffic.requests(take, &mut evs);
        events += evs.len() as u64;
        emit_all(&store, &rt, evs)?;
        done += take;
        if done.is_multiple_of(200_000) || done == n {
            eprintln!(
                "{done} requests, {events} events, {:.0} s, {:.0} MB",
                started.elapsed().as_secs_f64(),
                file_mb(db)
            );
        }
    }
    let cpu = metis_bench::procfs::cpu_ticks(std::process::id())
        .unwrap_or(0)
        .saturating_sub(cpu0);
    let stats = rt.block_on(store.shutdown());
    println!(
        "{}",
        json!({
            "kind": "fill_traffic", "requests": n, "events": events,
            "written": stats.written, "lost": stats.overflowed + stats.failed,
            "seconds": started.elapsed().as_secs_f64(),
            "cpu_us_per_event": cpu as f64 * TICK_US / events.max(1) as f64,
            "mb": file_mb(db), "original_indexes": original_indexes,
        })
    );
    Ok(())
}

fn append(db: &Path, requests: u64, cache_kib: Option<u32>) -> anyhow::Result<()> {
    anyhow::ensure!(db.exists(), "{} does not exist", db.display());
    let mut opts = WriterOptions::default();
    if let Some(k) = cache_kib {
        opts.page_cache_kib = k;
    }
    let store = SqliteTraceStore::open(db, opts).context("open the store")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut traffic = Traffic::new(Mix {
        keys: 40,
        start_us: now_us()? - 1_000_000,
        step_us: 10,
    });
    let mut evs = Vec::new();
    traffic.requests(requests, &mut evs);
    let n = evs.len() as u64;
    let indexes = {
        let conn = Connection::open(db)?;
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        stmt.query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?
    };
    let cpu0 = metis_bench::procfs::cpu_ticks(std::process::id()).unwrap_or(0);
    let started = Instant::now();
    emit_all(&store, &rt, evs)?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = metis_bench::procfs::cpu_ticks(std::process::id())
        .unwrap_or(0)
        .saturating_sub(cpu0);
    let stats = rt.block_on(store.shutdown());
    println!(
        "{}",
        json!({
            "kind": "append", "events": n, "seconds": secs, "cache_kib": opts.page_cache_kib,
            "events_per_s": n as f64 / secs,
            "cpu_us_per_event": cpu as f64 * TICK_US / n.max(1) as f64,
            "lost": stats.overflowed + stats.failed, "indexes": indexes, "mb": file_mb(db),
        })
    );
    Ok(())
}

fn append_raw(db: &Path, requests: u64, cache_kib: Option<u32>) -> anyhow::Result<()> {
    anyhow::ensure!(db.exists(), "{} does not exist", db.display());
    let mut traffic = Traffic::new(Mix {
        keys: 40,
        start_us: now_us()? - 1_000_000,
        step_us: 10,
    });
    let mut evs = Vec::new();
    traffic.requests(requests, &mut evs);
    let mut conn = Connection::open(db)?;
    let r = raw_insert(
        &mut conn,
        &evs,
        WriterOptions::default().max_batch,
        cache_kib,
    )?;
    println!(
        "{}",
        json!({"kind": "append_raw", "cache_kib": cache_kib, "result": r})
    );
    Ok(())
}

/// Wall time of one read, printed as a JSON line.
fn timed<T>(
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
    size: impl Fn(&T) -> usize,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let out = f()?;
    println!(
        "{}",
        json!({"kind": "timing", "name": name, "seconds": t.elapsed().as_secs_f64(), "rows": size(&out)})
    );
    Ok(())
}

fn plans(db: &Path) -> anyhow::Result<()> {
    use metis_ports::trace::UsageGroup;
    use metis_storage_sqlite::plans::{check_plan, explain, indexes_used, product_queries};
    anyhow::ensure!(db.exists(), "{} does not exist", db.display());
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    for q in product_queries() {
        let lines = explain(&conn, &q.sql)?;
        let check = check_plan(&q, &lines);
        println!(
            "{}",
            json!({
                "kind": "plan", "name": q.name, "used_by": q.used_by,
                "indexes": indexes_used(&lines), "plan": lines,
                "index_backed": check.is_ok(), "problem": check.err(),
            })
        );
    }
    let now = now_us()?;
    const DAY: i64 = 86_400_000_000;
    let reader = TraceReader::open(db)?;
    timed(
        "spend by key (day and month windows)",
        || Ok(reader.spend_by_key(now - DAY, now - 30 * DAY)?),
        Vec::len,
    )?;
    timed(
        "usage by key, last 30 days",
        || Ok(reader.usage(now - 30 * DAY, now, UsageGroup::Key, None)?),
        Vec::len,
    )?;
    timed(
        "usage by model, last day",
        || Ok(reader.usage(now - DAY, now, UsageGroup::Model, None)?),
        Vec::len,
    )?;
    for (f, v) in [
        (UsageGroup::Key, "gk_01JKEY000000000000000007"),
        (UsageGroup::User, "user-7"),
        (UsageGroup::Team, "team-3"),
    ] {
        timed(
            &format!("usage by model, {f:?} = {v}, last 30 days"),
            || Ok(reader.usage(now - 30 * DAY, now, UsageGroup::Model, Some((f, v)))?),
            Vec::len,
        )?;
    }
    timed(
        "audit export, all types, last 30 days",
        || Ok(reader.audit_events(now - 30 * DAY, now, &[])?),
        Vec::len,
    )?;
    timed(
        "audit verify (chain walk)",
        || Ok(reader.verify_audit_chain()?),
        |r| usize::try_from(r.clone().unwrap_or(0)).unwrap_or(0),
    )?;
    timed(
        "audit verify (unchained count)",
        || Ok(reader.count_unchained_audit_events()?),
        |n| usize::try_from(*n).unwrap_or(0),
    )?;
    timed(
        "count of pattern.recorded",
        || Ok(reader.count_by_type("pattern.recorded")?),
        |n| usize::try_from(*n).unwrap_or(0),
    )?;
    timed(
        "events of a client session",
        || Ok(reader.events_for_session("ws-7-100", None, None)?),
        Vec::len,
    )?;
    let turn: Option<String> = conn.query_row(
        "SELECT turn_id FROM events WHERE rowid = (SELECT MAX(rowid) / 2 FROM events)",
        [],
        |r| r.get(0),
    )?;
    timed(
        "events of a turn",
        || Ok(reader.events_for_turn(turn.as_deref().unwrap_or(""))?),
        Vec::len,
    )?;
    timed(
        "migrate-store page (1,000 events from the middle)",
        || {
            let mid: String = conn.query_row(
                "SELECT id FROM events WHERE rowid = (SELECT MAX(rowid) / 2 FROM events)",
                [],
                |r| r.get(0),
            )?;
            Ok(metis_storage_sqlite::transfer::events_page(
                &reader,
                Some(&mid),
                1000,
            )?)
        },
        Vec::len,
    )?;
    timed(
        "trace status (backup metadata counts, events after, audit count)",
        || Ok(ops::status(db, now)?),
        |_| 0,
    )?;
    timed(
        "prune dry run, 15 days",
        || Ok(ops::prune_dry_run(db, now - 15 * DAY)?),
        |c| usize::try_from(c.rows_eligible).unwrap_or(0),
    )?;
    timed(
        "runbook: events in the last 5 minutes",
        || {
            Ok(conn.query_row(
                metis_storage_sqlite::plans::RUNBOOK_RECENT_EVENTS_SQL,
                [],
                |r| r.get::<_, i64>(0),
            )?)
        },
        |n| usize::try_from(*n).unwrap_or(0),
    )?;
    Ok(())
}

fn migrate(db: &Path) -> anyhow::Result<()> {
    let plan = ops::plan_trace_migration(db)?;
    let mb = file_mb(db);
    let t = Instant::now();
    let done = ops::apply_trace_migration(db)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "kind": "migrate", "seconds": secs, "steps": done.steps, "planned": plan.steps,
            "mb_before": mb, "mb_after": file_mb(db),
        })
    );
    Ok(())
}

fn stall(db: &Path, seconds: f64, hold_ms: u64) -> anyhow::Result<()> {
    let seconds = seconds.clamp(0.0, 120.0);
    let conn = Connection::open(db).with_context(|| format!("open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut held = Duration::ZERO;
    let mut holds = 0_u64;
    while Instant::now() < deadline {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let t = Instant::now();
        let left = deadline.saturating_duration_since(t);
        std::thread::sleep(Duration::from_millis(hold_ms).min(left));
        conn.execute_batch("COMMIT")?;
        held += t.elapsed();
        holds += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    let total = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "kind": "stall",
            "seconds": total,
            "lock_held_s": held.as_secs_f64(),
            "lock_held_fraction": held.as_secs_f64() / total.max(1e-9),
            "holds": holds,
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Writer { events, dir } => writer(events, dir),
        Command::Ablation {
            dir,
            per_index,
            setup,
        } => ablation(dir, per_index, setup),
        Command::FillTraffic {
            db,
            requests,
            span_days,
            keys,
            original_indexes,
        } => fill_traffic(
            &db,
            requests.min(2_500_000),
            span_days.clamp(0.0, 3650.0),
            keys.max(1),
            original_indexes,
        ),
        Command::Append {
            db,
            requests,
            raw,
            cache_kib,
        } => {
            let requests = requests.clamp(1, 1_000_000);
            if raw {
                append_raw(&db, requests, cache_kib)
            } else {
                append(&db, requests, cache_kib)
            }
        }
        Command::Plans { db } => plans(&db),
        Command::Migrate { db } => migrate(&db),
        Command::Fill {
            db,
            requests,
            key_id,
            span_days,
        } => fill(
            &db,
            requests.min(2_500_000),
            &key_id,
            span_days.clamp(0.0, 3650.0),
        ),
        Command::Stall {
            db,
            seconds,
            hold_ms,
        } => stall(&db, seconds, hold_ms),
    }
}
