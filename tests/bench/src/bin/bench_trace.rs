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
//! - `bench-trace ablation [--dir D]`: the raw insert loop again, with smaller transactions
//!   and with the JSON or all secondary indexes dropped, to show where the writer's time
//!   goes (CPU µs per event from `/proc/self/stat`). Prints one JSON line per variant.
//! - `bench-trace stall --db PATH --seconds S`: holds SQLite's write lock on a running
//!   gateway's trace database for S seconds (re-taking it after each short release), so the
//!   gateway's writer cannot commit and its queue fills: the load generator then measures
//!   request latency while the writer is saturated. Prints one JSON line when done.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use metis_domain::events::{
    CallIdentity, Event, LlmCallCompleted, LlmCallStarted, RouteChainEntry, RouteDecided,
    TurnCompleted, make_event,
};
use metis_ports::trace::EventSink;
use metis_storage_sqlite::{SqliteTraceStore, WriterOptions};
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

/// [`raw_rusqlite`] after dropping the named indexes.
fn raw_rusqlite_with(
    path: &Path,
    events: &[Event],
    batch: usize,
    drop_indexes: &[&str],
) -> anyhow::Result<serde_json::Value> {
    // Create the file with the gateway's exact schema and indexes, then close the store.
    SqliteTraceStore::open(path, WriterOptions::default())
        .context("create the schema")?
        .close();
    let mut conn = Connection::open(path)?;
    for name in drop_indexes {
        conn.execute_batch(&format!("DROP INDEX IF EXISTS {name}"))?;
    }
    let cpu0 = metis_bench::procfs::cpu_ticks(std::process::id()).unwrap_or(0);
    let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let _pages: i64 = conn.query_row("PRAGMA wal_autocheckpoint=8192", [], |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
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

fn ablation(dir: Option<PathBuf>) -> anyhow::Result<()> {
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
    let json_indexes = [
        "idx_events_gateway_key_id",
        "idx_events_user_id",
        "idx_events_team_id",
        "idx_events_eval_subject_kind",
    ];
    let all_indexes = metis_storage_sqlite::EVENT_INDEX_NAMES;
    let variants: [(&str, &[&str]); 3] = [
        ("gateway schema (10 indexes)", &[]),
        ("without the 4 json_extract indexes", &json_indexes),
        ("without any secondary index", &all_indexes),
    ];
    let db = dir.join("trace-bench-ablation.db");
    for (schema, drops) in variants {
        for batch in [1024_usize, 64, 4] {
            let requests = if batch >= 64 { 25_000 } else { 5_000 };
            let events = request_events(requests);
            remove_db(&db);
            let r = raw_rusqlite_with(&db, &events, batch, drops)?;
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
             turn.completed) into the gateway's schema (10 indexes, 4 of them on json_extract) on \
             the local disk; WAL, synchronous=NORMAL; events built before timing; both write \
             {} rows per transaction.",
            requests * 4, requests, WriterOptions::default().max_batch
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
        Command::Ablation { dir } => ablation(dir),
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
