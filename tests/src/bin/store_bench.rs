//! `store-bench`: SQLite vs redb, measured the same way on the same machine in one run.
//!
//! - `store-bench writer [--events N]`: events/s through each backend's own trace writer
//!   (`EventSink::emit` onto the bounded queue, one writer thread, batched commits, then
//!   `flush`). The events are the four a gateway request records, built before the clock
//!   starts; the producer waits while the queue is nearly full, so the rate is what the
//!   writer sustains, not what it drops. Backends: `sqlite`, `redb` (multi-process writers,
//!   the default) and `redb-exclusive`.
//! - `store-bench requests [--requests N] [--concurrency C]`: requests/s through the real
//!   gateway (in-process, fake upstream, `--store sqlite` then `--store redb`), sync OpenAI
//!   chat completions, with every trace event written.
//!
//! Prints one line per measurement and the redb/SQLite ratios. On a shared 2-core machine
//! absolute numbers move between runs; compare the ratios of one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use metis::store::StoreKind;
use metis_domain::events::{Actor, Event, Sensitivity};
use metis_ports::trace::EventSink;
use metis_tests::gateway::{Combo, GatewayOptions, TestGateway};
use serde_json::json;

/// CPU time (user + system) of this process, in seconds, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    (tick(11) + tick(12)) / 100.0
}

fn request_events(n_requests: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n_requests * 4);
    for r in 0..n_requests {
        let ts = 1_700_000_000_000_000 + r as i64 * 1_000;
        let turn = format!("turn_{r:010}");
        let mk = |i: usize, ty: &'static str, payload: serde_json::Value| Event {
            id: format!("01BENCH{:019}", r * 4 + i),
            timestamp_us: ts + i as i64,
            session_id: format!("gw_{r:020}"),
            turn_id: Some(turn.clone()),
            parent_event_id: None,
            event_type: ty,
            actor: Actor::System,
            sensitivity: Sensitivity::Pseudonymous,
            payload_json: payload.to_string(),
        };
        let key = format!("gk_{:04}", r % 50);
        out.push(mk(
            0,
            "route.decided",
            json!({"chosen_model": "anthropic:claude-haiku-4-5", "winner_index": 0, "elapsed_ms": 0.1,
                   "chain": [{"policy": "explicit", "verdict": "chosen", "reason": "requested", "candidate_model": null}],
                   "requested_model": "haiku"}),
        ));
        out.push(mk(
            1,
            "llm.call_started",
            json!({"model": "anthropic:claude-haiku-4-5", "provider": "anthropic", "estimated_input_tokens": 120,
                   "request_id": format!("req_{r}"), "is_worker": false, "stream": false}),
        ));
        out.push(mk(
            2,
            "llm.call_completed",
            json!({"model": "anthropic:claude-haiku-4-5", "provider": "anthropic", "input_tokens": 120,
                   "output_tokens": 40, "cached_input_tokens": 0, "cache_creation_input_tokens": 0,
                   "cost_usd": 0.00032, "pricing_version": "2026-01", "latency_ms": 180,
                   "stop_reason": "end_turn", "gateway_key_id": key, "inbound_shape": "openai",
                   "user_id": "alice", "team_id": "core"}),
        ));
        out.push(mk(
            3,
            "turn.completed",
            json!({"gateway_key_id": key, "inbound_shape": "openai", "user_id": "alice",
                   "team_id": "core", "llm_call_count": 1, "total_cost_usd": 0.00032}),
        ));
    }
    out
}

/// Drops the last handle of a store (its shutdown drains and joins the writer).
type Closer = Box<dyn FnOnce() + Send>;

struct Measured {
    name: &'static str,
    per_sec: f64,
    cpu_us_per_item: f64,
}

fn open_sink(name: &str, dir: &std::path::Path) -> anyhow::Result<(Arc<dyn EventSink>, Closer)> {
    match name {
        "sqlite" => {
            let s = Arc::new(metis_storage_sqlite::SqliteTraceStore::open(
                &dir.join("metis.db"),
                metis_storage_sqlite::WriterOptions::default(),
            )?);
            let c = Arc::clone(&s);
            Ok((s, Box::new(move || drop(c))))
        }
        "redb" | "redb-exclusive" => {
            let sharing = if name == "redb" {
                metis_storage_redb::Sharing::MultiProcess
            } else {
                metis_storage_redb::Sharing::Exclusive
            };
            let s = Arc::new(metis_storage_redb::RedbTraceStore::open(
                &dir.join("metis.redb"),
                metis_storage_redb::RedbOptions {
                    sharing,
                    max_batch: std::env::var("STORE_BENCH_REDB_BATCH")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(metis_storage_redb::RedbOptions::default().max_batch),
                    ..metis_storage_redb::RedbOptions::default()
                },
            )?);
            let c = Arc::clone(&s);
            Ok((s, Box::new(move || drop(c))))
        }
        other => bail!("unknown backend {other}"),
    }
}

async fn writer(events: usize) -> anyhow::Result<Vec<Measured>> {
    let batch = request_events(events.div_ceil(4));
    let mut out = Vec::new();
    for name in ["sqlite", "redb", "redb-exclusive"] {
        let dir = tempfile::tempdir()?;
        let (sink, close) = open_sink(name, dir.path())?;
        let evs = batch.clone();
        let n = evs.len();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        for e in evs {
            // Never let the queue overflow: measure what the writer sustains.
            while sink.stats().queued > 60_000 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            sink.emit(e);
        }
        sink.flush().await?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let st = sink.stats();
        if st.written != n as u64 {
            bail!("{name}: wrote {} of {n} events ({st:?})", st.written);
        }
        drop(sink);
        tokio::task::spawn_blocking(close).await?;
        out.push(Measured {
            name,
            per_sec: n as f64 / secs,
            cpu_us_per_item: cpu * 1e6 / n as f64,
        });
        println!(
            "writer  {name:<15} {n:>8} events  {:>10.0} events/s  {:>7.1} CPU µs/event",
            n as f64 / secs,
            cpu * 1e6 / n as f64
        );
    }
    Ok(out)
}

async fn requests(n: usize, concurrency: usize) -> anyhow::Result<Vec<Measured>> {
    let mut out = Vec::new();
    for (name, store) in [("sqlite", StoreKind::Sqlite), ("redb", StoreKind::Redb)] {
        let gw = TestGateway::spawn_with(GatewayOptions {
            store: Some(store),
            ..GatewayOptions::default()
        })
        .await?;
        // Warm up (connections, caches, the first commits).
        let combo = Combo::OPENAI_TO_ANTHROPIC;
        for _ in 0..50 {
            let r = gw.post(combo.client, &combo.body("warm up", false)).await;
            if r.status != 200 {
                bail!("{name}: warm-up request failed: {} {}", r.status, r.text);
            }
        }
        let gw = Arc::new(gw);
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let per_task = n / concurrency;
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let gw = Arc::clone(&gw);
            tasks.push(tokio::spawn(async move {
                let combo = Combo::OPENAI_TO_ANTHROPIC;
                let body = combo.body("benchmark request", false);
                let mut failed = 0u64;
                for _ in 0..per_task {
                    if gw.post(combo.client, &body).await.status != 200 {
                        failed += 1;
                    }
                }
                failed
            }));
        }
        let mut failed = 0;
        for t in tasks {
            failed += t.await?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let done = per_task * concurrency;
        if failed > 0 {
            bail!("{name}: {failed} requests failed");
        }
        let Ok(mut gw) = Arc::try_unwrap(gw) else {
            bail!("gateway still shared");
        };
        gw.stop().await?;
        let stored = gw
            .events()?
            .iter()
            .filter(|e| e.event_type == "llm.call_completed")
            .count();
        if stored < done {
            bail!("{name}: {stored} calls stored for {done} requests");
        }
        out.push(Measured {
            name,
            per_sec: done as f64 / secs,
            cpu_us_per_item: cpu * 1e6 / done as f64,
        });
        println!(
            "request {name:<15} {done:>8} requests {:>10.0} req/s     {:>7.1} CPU µs/request (c={concurrency})",
            done as f64 / secs,
            cpu * 1e6 / done as f64
        );
    }
    Ok(out)
}

fn ratios(what: &str, m: &[Measured]) {
    let Some(base) = m.iter().find(|x| x.name == "sqlite") else {
        return;
    };
    for x in m.iter().filter(|x| x.name != "sqlite") {
        println!(
            "ratio   {what:<8} {:<15} {:.2}x SQLite throughput, {:.2}x SQLite CPU per item",
            x.name,
            x.per_sec / base.per_sec,
            x.cpu_us_per_item / base.cpu_us_per_item
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let what = args.first().map_or("all", String::as_str);
    if what == "writer" || what == "all" {
        let m = writer(arg("--events", 200_000)).await?;
        ratios("writer", &m);
    }
    if what == "requests" || what == "all" {
        let m = requests(arg("--requests", 4_000), arg("--concurrency", 16)).await?;
        ratios("requests", &m);
    }
    Ok(())
}
