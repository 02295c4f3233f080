//! The bound on request memory in flight (`--max-inflight-request-memory`) through the real
//! server, with large bodies held in flight by a slow fake upstream: a request that does not
//! fit gets an immediate 503 envelope with `Retry-After` (before its body is read, or after,
//! when the body's parse estimate is what does not fit), and the reservation comes back on
//! every path — answer, error, client gone.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::gateway::{chat_body, error_type};
use metis_tests::{GatewayOptions, Shape, TestGateway};
use reqwest::Method;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// 64 MiB of request memory: one 5 MiB body (charged 8 × 5 = 40 MiB) fits, two do not.
async fn gateway() -> TestGateway {
    TestGateway::spawn_with(GatewayOptions {
        extra_args: vec![
            "--max-inflight-request-memory".into(),
            (64 * MIB).to_string(),
        ],
        ..GatewayOptions::default()
    })
    .await
    .unwrap()
}

async fn inflight_bytes(gw: &TestGateway) -> u64 {
    let text = gw.request(Method::GET, "/metrics").await.text;
    text.lines()
        .find_map(|l| l.strip_prefix("metis_inflight_body_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metis_inflight_body_bytes in\n{text}"))
}

async fn wait_inflight(gw: &TestGateway, what: &str, done: impl Fn(u64) -> bool) {
    let start = Instant::now();
    loop {
        let n = inflight_bytes(gw).await;
        if done(n) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: metis_inflight_body_bytes still {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A chat body of about `size` bytes whose upstream answers after `slow_ms`.
fn big_body(shape: Shape, slow_ms: u64, size: usize) -> serde_json::Value {
    let model = match shape {
        Shape::OpenAi => "gpt-5",
        Shape::Anthropic => "haiku",
    };
    let text = format!("[slow:{slow_ms}] {}", "x".repeat(size));
    chat_body(shape, model, &text, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_memory_budget_get_503_and_every_path_returns_it() {
    let gw = gateway().await;
    assert_eq!(inflight_bytes(&gw).await, 0);

    // A: 5 MiB held in flight for 3 s by a slow upstream.
    let a = {
        let (client, url, token) = (
            gw.client().clone(),
            gw.url("/v1/chat/completions"),
            gw.key.token.clone(),
        );
        let body = big_body(Shape::OpenAi, 3000, 5 * MIB);
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    wait_inflight(&gw, "A in flight", |n| n >= (40 * MIB) as u64).await;

    // B does not fit beside A: refused before its body is read, in its own shape.
    let b = gw
        .post(Shape::Anthropic, &big_body(Shape::Anthropic, 0, 5 * MIB))
        .await;
    assert_eq!(b.status, 503, "{}", b.text);
    assert_eq!(b.header("retry-after"), Some("1"));
    assert_eq!(
        error_type(Shape::Anthropic, &b.json()).as_deref(),
        Some("overloaded_error"),
        "{}",
        b.text
    );
    assert!(
        b.text.contains("--max-inflight-request-memory"),
        "{}",
        b.text
    );

    // C is small on the wire but its parse estimate is not: 1.5 MiB of empty objects
    // (~768k objects, ~750 MiB estimated, capped at the whole budget) is refused once read.
    let objects = format!(
        r#"{{"model":"gpt-5","messages":[{{"role":"user","content":"x"}}],"pad":[{}{{}}]}}"#,
        "{},".repeat(768 * 1024)
    );
    let c = gw
        .post_raw(Shape::OpenAi, "application/json", objects.into_bytes())
        .await;
    assert_eq!(c.status, 503, "{}", c.text);

    // A completes; everything it held comes back, and B now fits.
    assert_eq!(a.await.unwrap(), 200);
    wait_inflight(&gw, "after A", |n| n == 0).await;
    let b = gw
        .post(Shape::Anthropic, &big_body(Shape::Anthropic, 0, 5 * MIB))
        .await;
    assert_eq!(b.status, 200, "{}", b.text);

    // Error path: a large body that is not JSON gets its 400, and the reservation is back.
    let bad = gw
        .post_raw(Shape::OpenAi, "application/json", vec![b'['; 2 * MIB])
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    wait_inflight(&gw, "after the 400", |n| n == 0).await;

    // Client gone: a request waiting on a slow upstream is abandoned mid-flight.
    let body = big_body(Shape::OpenAi, 10_000, 5 * MIB);
    let gone = {
        let (client, url, token) = (
            gw.client().clone(),
            gw.url("/v1/chat/completions"),
            gw.key.token.clone(),
        );
        tokio::spawn(async move {
            let _ = client.post(url).bearer_auth(token).json(&body).send().await;
        })
    };
    wait_inflight(&gw, "abandoned request in flight", |n| n > 0).await;
    gone.abort();
    wait_inflight(&gw, "after the client left", |n| n == 0).await;

    let metrics = gw.request(Method::GET, "/metrics").await.text;
    assert!(
        metrics.contains("metis_refused_total{reason=\"body_memory\"} 2"),
        "{metrics}"
    );
}
