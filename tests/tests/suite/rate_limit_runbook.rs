//! Rate limiting as the operator runbook exercises it ("flip to public exposure": 70 requests
//! with one key within a second give ~60 200s then 429s), the 429 envelopes of both shapes,
//! whose address the per-IP bucket uses (`X-Forwarded-For` only from a trusted proxy, walked
//! right to left), that only provider endpoints are limited, and the key-leak signal.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::gateway::{Reply, chat_body, error_type};
use metis_tests::{Combo, GatewayOptions, KeySpec, Shape, TestGateway};
use reqwest::Method;
use std::time::Instant;

async fn spawn(args: &[&str], extra_keys: Vec<KeySpec>) -> TestGateway {
    TestGateway::spawn_with(GatewayOptions {
        extra_args: args.iter().map(|s| (*s).to_owned()).collect(),
        extra_keys,
        ..GatewayOptions::default()
    })
    .await
    .unwrap()
}

/// One OpenAI-shape call with the default key, optionally with an `X-Forwarded-For` header.
async fn call_from(gw: &TestGateway, token: &str, xff: Option<&str>) -> Reply {
    let mut req = gw
        .client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&Combo::OPENAI_TO_OPENAI.body("ping", false));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Reply {
        status,
        headers,
        text,
        body_error: None,
    }
}

fn retry_after(r: &Reply) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("a Retry-After header: {:?}", r.headers))
        .parse()
        .unwrap()
}

fn assert_openai_429(r: &Reply, scope: &str) {
    assert_eq!(r.status, 429, "{}", r.text);
    let secs = retry_after(r);
    assert!(secs >= 1, "Retry-After >= 1");
    let v = r.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(v["error"]["scope"], scope, "{v}");
    assert_eq!(
        v["error"]["retry_after_seconds"].as_u64(),
        Some(secs),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_flood_of_70_requests_gives_about_60_then_429s() {
    let mut gw = spawn(&["--rate-limit"], Vec::new()).await;
    // The runbook's loop: sequential requests with one key, model haiku, OpenAI shape.
    let body = chat_body(Shape::OpenAi, "haiku", "ping", false);
    let start = Instant::now();
    let mut replies = Vec::new();
    for _ in 0..70 {
        replies.push(gw.post(Shape::OpenAi, &body).await);
    }
    let took = start.elapsed();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    eprintln!(
        "runbook flood: 70 requests in {took:?}: {ok} x 200, {} x 429",
        70 - ok
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "only 200 and 429: {statuses:?}"
    );
    assert!(
        statuses[..60].iter().all(|s| *s == 200),
        "the first 60 (the bucket's capacity at 60 rpm) pass: {statuses:?}"
    );
    // One token refills per second, so a slow machine may see one extra 200 per second.
    let refill = usize::try_from(took.as_secs()).unwrap() + 1;
    assert!(
        ok <= 60 + refill,
        "about 60 pass, then 429s ({ok} passed in {took:?}): {statuses:?}"
    );
    assert_eq!(statuses[69], 429, "the flood ends in 429s: {statuses:?}");
    let first_429 = replies.iter().find(|r| r.status == 429).unwrap();
    assert_openai_429(first_429, "per_key");
    let msg = first_429.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("60 rpm"), "{msg}");

    // The Anthropic shape of the same refusal.
    let r = gw
        .post(
            Shape::Anthropic,
            &Combo::ANTHROPIC_TO_ANTHROPIC.body("ping", false),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(retry_after(&r) >= 1);
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(
        error_type(Shape::Anthropic, &v).as_deref(),
        Some("rate_limit_error"),
        "{v}"
    );
    assert!(v["error"]["message"].is_string(), "{v}");

    assert_eq!(
        gw.upstream.requests().len(),
        ok,
        "refused requests never reach the upstream"
    );
    gw.stop().await.unwrap();
    // Denials are sampled into the audit trail (at most one event per second).
    let limited = gw.events_of("gateway.rate_limited").unwrap();
    let secs = usize::try_from(start.elapsed().as_secs()).unwrap();
    assert!(
        !limited.is_empty() && limited.len() <= secs + 2,
        "{} gateway.rate_limited events for {} denials",
        limited.len(),
        70 - ok + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let gw = spawn(
        &[
            "--rate-limit",
            "--rate-limit-per-key-rpm",
            "1000",
            "--rate-limit-per-ip-rpm",
            "3",
        ],
        Vec::new(),
    )
    .await;
    let token = gw.key.token.clone();
    for i in 1..=3 {
        let r = call_from(&gw, &token, Some(&format!("198.51.100.{i}"))).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // A new forwarded address does not buy a new bucket: the socket peer's bucket is empty.
    let r = call_from(&gw, &token, Some("198.51.100.77")).await;
    assert_openai_429(&r, "per_ip");
    let r = call_from(&gw, &token, None).await;
    assert_openai_429(&r, "per_ip");

    // Only provider endpoints are limited.
    for _ in 0..3 {
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            let r = gw.request(Method::GET, path).await;
            assert_eq!(r.status, 200, "{path} is never rate limited: {}", r.text);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_s_forwarded_client_gets_its_own_bucket() {
    let gw = spawn(
        &[
            "--rate-limit",
            "--rate-limit-per-key-rpm",
            "1000",
            "--rate-limit-per-ip-rpm",
            "2",
            "--trusted-proxy",
            "127.0.0.1",
        ],
        Vec::new(),
    )
    .await;
    let token = gw.key.token.clone();
    let client_a = "10.0.0.1";
    for _ in 0..2 {
        assert_eq!(call_from(&gw, &token, Some(client_a)).await.status, 200);
    }
    assert_openai_429(&call_from(&gw, &token, Some(client_a)).await, "per_ip");
    // Another client behind the same proxy has its own bucket.
    for _ in 0..2 {
        let r = call_from(&gw, &token, Some("10.0.0.2")).await;
        assert_eq!(
            r.status, 200,
            "a second forwarded client is not limited: {}",
            r.text
        );
    }
    // The right-most untrusted entry is the client: a spoofed left part changes nothing.
    let r = call_from(&gw, &token, Some(&format!("203.0.113.9, {client_a}"))).await;
    assert_openai_429(&r, "per_ip");
    // Trusted hops on the right are skipped.
    let r = call_from(&gw, &token, Some("10.0.0.3, 127.0.0.1")).await;
    assert_eq!(r.status, 200, "10.0.0.3 behind two proxies: {}", r.text);
    let r = call_from(&gw, &token, Some("10.0.0.3 , 127.0.0.1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_openai_429(
        &call_from(&gw, &token, Some("10.0.0.3,127.0.0.1")).await,
        "per_ip",
    );
    // The proxy's own requests (no header) use the proxy's bucket.
    assert_eq!(call_from(&gw, &token, None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_used_from_more_than_ten_addresses_is_flagged_once() {
    let mut gw = spawn(
        &["--trusted-proxy", "127.0.0.1"],
        vec![KeySpec {
            name: "ten".into(),
            ..KeySpec::default()
        }],
    )
    .await;
    let leaky = gw.key.clone();
    let ten = gw.key_named("ten").clone();
    // Ten addresses is the threshold, not a leak.
    for i in 1..=10 {
        let r = call_from(&gw, &ten.token, Some(&format!("192.0.2.{i}"))).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Eleven and more is; the signal is raised once per key per hour.
    for i in 1..=16 {
        let r = call_from(&gw, &leaky.token, Some(&format!("198.18.0.{i}"))).await;
        assert_eq!(r.status, 200, "the leak signal never blocks: {}", r.text);
    }
    // Repeats from known addresses add nothing.
    for i in 1..=3 {
        call_from(&gw, &leaky.token, Some(&format!("198.18.0.{i}"))).await;
    }
    gw.stop().await.unwrap();
    let leaks = gw.events_of("gateway.key_leak_suspected").unwrap();
    assert_eq!(
        leaks.len(),
        1,
        "one signal for the leaky key, none for the key at the threshold: {:?}",
        leaks.iter().map(|e| &e.payload).collect::<Vec<_>>()
    );
    let p = &leaks[0].payload;
    assert_eq!(p["gateway_key_id"], leaky.key_id.as_str(), "{p}");
    assert!(p["distinct_ips"].as_u64().unwrap_or(0) > 10, "{p}");
    assert!(
        !leaks[0].payload_json.contains(&leaky.token),
        "no secret in the event"
    );
}
