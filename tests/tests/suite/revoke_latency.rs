//! Revocation latency: the time from a revoke (admin API, `metis gateway revoke-key` on the
//! JSON keystore, and on `--keystore store`) to the first 401 `key_revoked` from a running
//! gateway. The spec bound is 2 s; the measured times are printed for the release notes.
//!
//! The CLI cases need `target/debug/metis` (`cargo build --workspace --bins`).
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use gw_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY};
use gw_tests::process::{GatewayProcess, issue_key, metis, upstream_args, upstream_env};
use gw_tests::{Combo, FakeUpstream, GatewayOptions, TestGateway};
use std::time::{Duration, Instant};

const ADMIN: &str = "revoke-latency-admin-token-42";
const BOUND: Duration = Duration::from_secs(2);

/// Poll `url` with `token` every 10 ms until a 401 `key_revoked` (bounded); the time since
/// `since`.
async fn first_revoked(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    since: Instant,
) -> Duration {
    loop {
        let r = client
            .post(url)
            .bearer_auth(token)
            .json(&Combo::OPENAI_TO_OPENAI.body("still valid?", false))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if status == 401 {
            assert!(body.contains("key_revoked"), "{body}");
            return since.elapsed();
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "the revoked key is still accepted after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_a_running_gateway_within_two_seconds() {
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec!["--admin-token".into(), ADMIN.into()],
        extra_keys: vec![gw_tests::KeySpec {
            name: "cli-revoked".into(),
            ..gw_tests::KeySpec::default()
        }],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let url = gw.url("/v1/chat/completions");
    let client = gw.client().clone();

    // Admin API.
    let r = client
        .post(&url)
        .bearer_auth(&gw.key.token)
        .json(&Combo::OPENAI_TO_OPENAI.body("warm", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let start = Instant::now();
    let r = client
        .post(gw.url(&format!("/admin/v1/keys/{}/revoke", gw.key.key_id)))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stored = start.elapsed();
    let api = first_revoked(&client, &url, &gw.key.token, start).await;

    // The CLI against the JSON keystore (a separate process, like an operator's shell).
    let cli_key = gw.key_named("cli-revoked").clone();
    let data_dir = gw.data_dir.path().display().to_string();
    let id = cli_key.key_id.clone();
    let start = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        metis(&["gateway", "revoke-key", &id, "--data-dir", &data_dir]).unwrap()
    })
    .await
    .unwrap();
    let cli_ran = start.elapsed();
    assert_eq!(out.code(), 0, "{}", out.describe());
    let cli = first_revoked(&client, &url, &cli_key.token, start).await;

    eprintln!(
        "revoke latency: admin API {api:?} (revoke call returned after {stored:?}); \
         CLI revoke-key, JSON keystore {cli:?} (the command itself took {cli_ran:?})"
    );
    assert!(api <= BOUND, "admin API revoke took {api:?} (> 2 s)");
    assert!(cli <= BOUND, "CLI revoke took {cli:?} (> 2 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_with_the_store_keystore_reaches_a_running_gateway_within_two_seconds() {
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = vec![
        "--data-dir".to_owned(),
        dir.path().display().to_string(),
        "--keystore".to_owned(),
        "store".to_owned(),
    ];
    let (id, token) = issue_key(&storage, "db-key", &[]).unwrap();
    let mut args = vec![
        "--port".to_owned(),
        "0".to_owned(),
        "--keystore".to_owned(),
        "store".to_owned(),
    ];
    args.extend(upstream_args(&upstream.base_url(), dir.path()));
    let mut gw = GatewayProcess::spawn_async(
        args,
        upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY),
    )
    .await
    .unwrap();
    assert!(gw.boot.line.contains("keystore="), "{}", gw.boot.line);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = gw.url_of("/v1/chat/completions");
    let r = client
        .post(&url)
        .bearer_auth(&token)
        .json(&Combo::OPENAI_TO_ANTHROPIC.body("warm", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a key in the store serves");

    let start = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let mut a = vec!["gateway".to_owned(), "revoke-key".to_owned(), id];
        a.extend(storage);
        metis(&a).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.code(), 0, "{}", out.describe());
    let took = first_revoked(&client, &url, &token, start).await;
    eprintln!("revoke latency: CLI revoke-key, --keystore store {took:?}");
    assert!(took <= BOUND, "store keystore revoke took {took:?} (> 2 s)");
    let status = gw.stop(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());
}
