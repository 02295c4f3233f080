//! The SIGKILL loss window, measured (not a pass/fail test: `#[ignore]`, run by hand for the
//! README's figures):
//!
//! ```sh
//! cargo build --release -p metis
//! METIS_BIN=target/release/metis KILL_WINDOW_DEADLINES=60s,50ms,10ms \
//!   cargo nextest run -p metis-tests --test suite kill_window --run-ignored only --no-capture
//! ```
//!
//! For each backend and `--trace-commit-deadline`: a gateway (the real binary) under eight
//! clients sending sync requests, each with its own `x-metis-session-id`, is SIGKILLed
//! after 1.5 s. A request the client saw answered 200 before the kill whose
//! `llm.call_completed` is not in the store afterwards was acknowledged and lost; the window
//! is the longest time between such an answer and the kill. `60s` reproduces the writer
//! before the deadline existed (nothing cut the linger or commit delay).
#![expect(clippy::unwrap_used, reason = "measurement harness")]

use metis_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY};
use metis_tests::process::{GatewayProcess, issue_key, send_signal, upstream_args, upstream_env};
use metis_tests::{Combo, FakeUpstream};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn stored_sessions(store: &str, db: &Path) -> HashSet<String> {
    match store {
        "redb" => {
            let h =
                metis_storage_redb::open_shared(db, metis_storage_redb::Sharing::default(), false)
                    .unwrap();
            metis_storage_redb::query::events_of_type(&h, "llm.call_completed")
                .unwrap()
                .into_iter()
                .map(|e| e.session_id)
                .collect()
        }
        _ => metis_tests::gateway::read_events(db)
            .unwrap()
            .into_iter()
            .filter(|e| e.event_type == "llm.call_completed")
            .map(|e| e.session_id)
            .collect(),
    }
}

struct Round {
    acked: usize,
    lost: usize,
    window_ms: f64,
    /// The writer's own view just before the kill: largest commit lag (ms), deadline misses,
    /// committed batches.
    lag_max_ms: f64,
    misses: u64,
    batches: u64,
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn one_round(store: &str, deadline: &str, round: usize) -> Round {
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut storage = vec!["--data-dir".to_owned(), dir.path().display().to_string()];
    storage.extend(["--store".to_owned(), store.to_owned()]);
    let (_, token) = issue_key(&storage, "kill", &[]).unwrap();
    let mut args = vec!["--port".to_owned(), "0".to_owned()];
    args.extend(upstream_args(&upstream.base_url(), dir.path()));
    args.extend([
        "--store".to_owned(),
        store.to_owned(),
        "--trace-commit-deadline".to_owned(),
        deadline.to_owned(),
    ]);
    let mut gw = GatewayProcess::spawn_async(
        args,
        upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY),
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..8 {
        let (stop, acks, token) = (Arc::clone(&stop), Arc::clone(&acks), token.clone());
        let url = gw.url_of("/v1/chat/completions");
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                let sid = format!("kw_{round}_{c}_{i}");
                i += 1;
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("x-metis-session-id", &sid)
                    .json(&Combo::OPENAI_TO_OPENAI.body("kill window", false))
                    .send()
                    .await;
                if let Ok(resp) = r
                    && resp.status() == 200
                    && resp.bytes().await.is_ok()
                {
                    acks.lock().unwrap().push((sid, Instant::now()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = reqwest::get(gw.url_of("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // `kill` runs as a child process: the instant after it returns is after the kill, so
    // every answer seen before it was given by the live gateway (the window is overstated
    // by at most the spawn of `kill`, about a millisecond).
    send_signal(gw.pid, "KILL").unwrap();
    let killed = Instant::now();
    stop.store(true, Ordering::Release);
    for c in clients {
        let _ = c.await;
    }
    let _ = gw.wait_exit(Duration::from_secs(10)).await;
    let db = dir.path().join(if store == "redb" {
        "metis.redb"
    } else {
        "metis.db"
    });
    let stored = stored_sessions(store, &db);
    let acks = acks.lock().unwrap();
    let acked: Vec<_> = acks.iter().filter(|(_, at)| *at <= killed).collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(sid, _)| !stored.contains(sid))
        .collect();
    let window_ms = lost
        .iter()
        .map(|(_, at)| (killed - *at).as_secs_f64() * 1e3)
        .fold(0.0, f64::max);
    Round {
        acked: acked.len(),
        lost: lost.len(),
        window_ms,
        lag_max_ms: metric(&metrics, "metis_trace_commit_lag_max_seconds") * 1e3,
        misses: metric(&metrics, "metis_trace_commit_deadline_misses_total") as u64,
        batches: metric(&metrics, "metis_trace_commit_lag_seconds_count") as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand with METIS_BIN pointing at a release build"]
async fn sigkill_loss_window() {
    let deadlines = std::env::var("KILL_WINDOW_DEADLINES").unwrap_or_else(|_| "50ms".into());
    let rounds: usize = std::env::var("KILL_WINDOW_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for store in ["sqlite", "redb"] {
        for deadline in deadlines.split(',') {
            let mut windows = Vec::new();
            let (mut acked, mut lost, mut misses, mut batches) = (0, 0, 0, 0);
            let mut lag_max = 0.0f64;
            for round in 0..rounds {
                let r = one_round(store, deadline, round).await;
                windows.push(r.window_ms);
                acked += r.acked;
                lost += r.lost;
                misses += r.misses;
                batches += r.batches;
                lag_max = lag_max.max(r.lag_max_ms);
            }
            windows.sort_by(f64::total_cmp);
            eprintln!(
                "{store} --trace-commit-deadline {deadline}: {rounds} kills, {acked} acknowledged, \
                 {lost} lost; window per kill (ms) {:?}; writer: {batches} commits, {misses} past \
                 the deadline, largest lag {lag_max:.1} ms",
                windows
                    .iter()
                    .map(|w| format!("{w:.1}"))
                    .collect::<Vec<_>>()
            );
        }
    }
}
