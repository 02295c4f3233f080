//! Streams still running when the shutdown grace ends (the real `metis` binary, SIGTERM,
//! `--shutdown-grace 2s`, `[long]` streams of ~10 s from the fake upstream): each gets a final
//! error frame in its client's shape and a complete HTTP response — OpenAI a last
//! `data: {"error":…}` and no `[DONE]`, Anthropic `event: error` and no `message_stop` — where
//! before the connection was simply cut mid-stream. The process still exits 0 and the calls
//! are recorded as failed, not completed.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY};
use metis_tests::gateway::read_events;
use metis_tests::process::{GatewayProcess, issue_key, upstream_args, upstream_env};
use metis_tests::{Combo, FakeUpstream, Shape, parse_sse};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn start_stream(
    client: &reqwest::Client,
    gw: &GatewayProcess,
    token: &str,
    combo: Combo,
) -> reqwest::Response {
    let req = client
        .post(gw.url_of(combo.client.gateway_path()))
        .json(&combo.body("[long] a stream longer than the grace", true));
    let req = match combo.client {
        Shape::OpenAi => req.bearer_auth(token),
        Shape::Anthropic => req
            .header("x-api-key", token)
            .header("anthropic-version", "2023-06-01"),
    };
    let mut resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Wait for the first frame: the stream is under way.
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("a first frame")
        .unwrap();
    assert!(first.is_some());
    resp
}

/// Read the rest of a stream; the body must end cleanly (no transport error).
async fn finish(mut resp: reqwest::Response) -> String {
    let mut text = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            Ok(Ok(None)) => return text,
            Ok(Err(e)) => panic!("the stream was cut without a final frame ({e}); got:\n{text}"),
            Err(_) => panic!("the stream did not end within 20 s; got:\n{text}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_at_the_end_of_the_grace_get_a_final_error_frame_in_both_shapes() {
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = vec!["--data-dir".to_owned(), dir.path().display().to_string()];
    let (_, token) = issue_key(&data, "grace", &[]).unwrap();
    let mut args = vec!["--port".to_owned(), "0".to_owned()];
    args.extend(upstream_args(&upstream.base_url(), dir.path()));
    args.extend(["--shutdown-grace".to_owned(), "2s".to_owned()]);
    let mut gw = GatewayProcess::spawn_async(
        args,
        upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY),
    )
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    let openai = start_stream(&client, &gw, &token, Combo::OPENAI_TO_ANTHROPIC).await;
    let anthropic = start_stream(&client, &gw, &token, Combo::ANTHROPIC_TO_OPENAI).await;
    gw.sigterm().unwrap();
    let signalled = Instant::now();
    let (openai, anthropic) = tokio::join!(finish(openai), finish(anthropic));
    let took = signalled.elapsed();
    // Cut at the end of the grace (1 s close window + 2 s grace), not at the stream's end (~10 s).
    assert!(
        took < Duration::from_secs(8),
        "streams ended after {took:?}"
    );

    let events = parse_sse(&openai);
    let last = events
        .last()
        .unwrap_or_else(|| panic!("no events:\n{openai}"));
    let v: Value = last
        .json()
        .unwrap_or_else(|| panic!("last frame is JSON:\n{openai}"));
    assert_eq!(v["error"]["type"], "api_error", "{openai}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{v}"
    );
    assert!(!events.iter().any(|e| e.data == "[DONE]"), "{openai}");

    let events = parse_sse(&anthropic);
    let last = events
        .last()
        .unwrap_or_else(|| panic!("no events:\n{anthropic}"));
    assert_eq!(last.event.as_deref(), Some("error"), "{anthropic}");
    let v: Value = last.json().unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "overloaded_error", "{v}");
    assert!(
        !events
            .iter()
            .any(|e| e.event.as_deref() == Some("message_stop")),
        "{anthropic}"
    );

    let status = gw.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", gw.stderr());
    assert!(
        gw.stderr().contains("open streams get a final error frame"),
        "{}",
        gw.stderr()
    );
    // Neither call is recorded as completed.
    let db = dir.path().join("metis.db");
    let events = read_events(&db).unwrap();
    let completed = events
        .iter()
        .filter(|e| e.event_type == "llm.call_completed")
        .count();
    let failed = events
        .iter()
        .filter(|e| e.event_type == "llm.call_failed")
        .count();
    assert_eq!((completed, failed), (0, 2), "{events:?}");
}
