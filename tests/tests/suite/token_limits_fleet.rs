//! A key's token limit across two `metis gateway` processes on one PostgreSQL database
//! (`--store postgres --keystore store`): the bucket is one row for the fleet, so a burst of
//! calls spread over both replicas is admitted up to the limit once, not once per replica.
//! Measured and printed: calls admitted, tokens estimated, the bound. The calls' settlements
//! (actual usage far below the estimate) then give the tokens back fleet-wide.
//!
//! Needs `METIS_TEST_DATABASE_URL` (scripts/pg-server.sh) and `target/debug/metis`.

use metis_storage_postgres::ScratchDatabase;
use metis_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY, FakeUpstream};
use metis_tests::process::{GatewayProcess, issue_key, upstream_args, upstream_env};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const TPM: u32 = 6000;
/// Output tokens each call asks for; its estimate is this plus a few input tokens.
const MAX_OUT: u64 = 900;
const CALLS: usize = 20;

fn storage(database: &ScratchDatabase) -> Vec<String> {
    [
        "--store",
        "postgres",
        "--database-url",
        database.url(),
        "--keystore",
        "store",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_tpm_holds_across_two_replicas() {
    let database = ScratchDatabase::from_env().unwrap();
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let mut dirs = Vec::new();
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--port".to_owned(), "0".to_owned()];
        args.extend(upstream_args(&upstream.base_url(), dir.path()));
        args.extend(storage(&database));
        let gw = GatewayProcess::spawn_async(
            args,
            upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY),
        )
        .await
        .unwrap();
        dirs.push(dir);
        gateways.push(gw);
    }
    let st = storage(&database);
    // Issued after both replicas started: the key (and its tpm) reaches them with the key
    // reload, within 2 s by design; a probe would spend tokens.
    let tpm = TPM.to_string();
    let (_key_id, token) = tokio::task::spawn_blocking(move || {
        issue_key(&st, "tpm-fleet", &["--tpm", tpm.as_str()]).unwrap()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let start = Instant::now();
    let mut calls = Vec::new();
    for i in 0..CALLS {
        // Every call stays in flight for 3 s, so refunds cannot make room during the burst.
        let req = client
            .post(gateways[i % 2].url_of("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "gpt-5", "max_completion_tokens": MAX_OUT,
                          "messages": [{"role": "user", "content": format!("[slow:3000] r{i}")}]}));
        calls.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (
                status,
                retry_after,
                r.json::<Value>().await.unwrap_or_default(),
            )
        }));
    }
    let mut admitted = 0u64;
    let mut refused = 0u64;
    for c in calls {
        let (status, retry_after, body) = c.await.unwrap();
        match status {
            200 => admitted += 1,
            429 => {
                assert_eq!(body["error"]["scope"], "key_tpm", "{body}");
                assert_eq!(body["error"]["tpm"], TPM, "{body}");
                assert!(retry_after.is_some());
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // Refill over the burst's admission phase (bounded by the whole elapsed time).
    let elapsed = start.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let bound = ((f64::from(TPM) + elapsed * f64::from(TPM) / 60.0) / MAX_OUT as f64).floor();
    eprintln!(
        "fleet tpm: limit {TPM}/min, {CALLS} calls of ~{MAX_OUT} tokens over 2 replicas: \
         admitted {admitted}, refused {refused} in {elapsed:.1} s (bound {bound})"
    );
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let admitted_f = admitted as f64;
    assert!(admitted_f <= bound, "admitted {admitted} > {bound}");
    // One bucket per replica would admit 6 on each.
    assert!(admitted >= 6, "the bucket admits its capacity ({admitted})");
    assert!(admitted < 12);
    // Each call used a few dozen tokens of its ~900: the settlements (run in the background
    // against the database) give the rest back, so five more calls fit at once. Without them
    // the bucket would hold ~1 000 (what the burst left plus a few seconds of refill).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut again = Vec::new();
    for i in 0..5 {
        let req = client
            .post(gateways[i % 2].url_of("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "gpt-5", "max_completion_tokens": MAX_OUT,
                          "messages": [{"role": "user", "content": format!("again {i}")}]}));
        again.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }));
    }
    for a in again {
        let (status, body) = a.await.unwrap();
        assert_eq!(status, 200, "settled refunds made room: {body}");
    }
    for gw in &mut gateways {
        let _ = gw.stop(Duration::from_secs(15)).await;
    }
    drop(dirs);
}
