//! Gateway features beyond one request/response, through the real server: `/v1/models`, rate
//! limiting, live key revocation, request-field translation (stop sequences, temperature,
//! `tool_choice`, parallel tool results), unbuffered streaming, graceful drain of in-flight
//! streams, concurrency, and the documentation/metrics endpoints.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::gateway::{chat_body, error_type, reply_text, stream_text};
use metis_tests::{Combo, GatewayOptions, KeySpec, Shape, TestGateway, for_each_combo, parse_sse};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn gateway() -> TestGateway {
    TestGateway::spawn().await.expect("gateway starts")
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|x| (x - b).abs() < 1e-6)
}

// ---------------------------------------------------------------------------------------------
// /v1/models
// ---------------------------------------------------------------------------------------------

fn model_ids(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_endpoint_lists_what_the_key_may_use() {
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_keys: vec![KeySpec {
            name: "haiku-only".into(),
            allowed_models: vec!["haiku".into()],
            ..KeySpec::default()
        }],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let r = gw
        .client()
        .get(gw.url("/v1/models"))
        .bearer_auth(&gw.key.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list", "{v}");
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["object"] == "model"),
        "{v}"
    );
    let ids = model_ids(&v);
    assert!(ids.iter().any(|m| m.contains("haiku")), "{ids:?}");
    assert!(ids.iter().any(|m| m.contains("gpt-5")), "{ids:?}");
    assert!(
        !ids.iter().any(|m| m.starts_with("openrouter")),
        "no provider without credentials: {ids:?}"
    );

    let r = gw
        .client()
        .get(gw.url("/v1/models"))
        .bearer_auth(&gw.key_named("haiku-only").token)
        .send()
        .await
        .unwrap();
    let ids = model_ids(&r.json().await.unwrap());
    assert!(ids.iter().any(|m| m.contains("haiku")), "{ids:?}");
    assert!(
        !ids.iter().any(|m| m.contains("gpt-5")),
        "only allowed models are listed: {ids:?}"
    );

    let r = gw.request(Method::GET, "/v1/models").await;
    assert_eq!(r.status, 401, "{}", r.text);
}

// ---------------------------------------------------------------------------------------------
// Rate limiting and revocation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_rate_limit_answers_429_in_each_shape() {
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec![
            "--rate-limit".into(),
            "--rate-limit-per-key-rpm".into(),
            "2".into(),
        ],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    for _ in 0..2 {
        let r = gw
            .post(Shape::OpenAi, &Combo::OPENAI_TO_OPENAI.body("ok", false))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = gw
        .post(
            Shape::OpenAi,
            &Combo::OPENAI_TO_OPENAI.body("too many", false),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v = r.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(v["error"]["scope"], "per_key", "{v}");
    assert_eq!(
        v["error"]["retry_after_seconds"].as_u64(),
        Some(retry),
        "{v}"
    );

    let r = gw
        .post(
            Shape::Anthropic,
            &Combo::ANTHROPIC_TO_ANTHROPIC.body("too many", false),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(
        error_type(Shape::Anthropic, &r.json()).as_deref(),
        Some("rate_limit_error"),
        "{}",
        r.text
    );
    assert_eq!(
        gw.upstream.requests().len(),
        2,
        "limited requests never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_stops_working_within_two_seconds() {
    let gw = gateway().await;
    let body = Combo::OPENAI_TO_OPENAI.body("before", false);
    assert_eq!(gw.post(Shape::OpenAi, &body).await.status, 200);
    metis::keys_cli::revoke(&gw.paths(), &gw.key.key_id)
        .await
        .expect("revoke-key works while the gateway runs");
    let revoked_at = Instant::now();
    let mut last = None;
    while revoked_at.elapsed() < Duration::from_secs(3) {
        let r = gw.post(Shape::OpenAi, &body).await;
        if r.status == 401 {
            last = Some((revoked_at.elapsed(), r));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (took, r) = last.expect("the revoked key is refused");
    assert!(
        took <= Duration::from_millis(2500),
        "refused after {took:?} (spec: within 2 s)"
    );
    assert_eq!(r.json()["error"]["code"], "key_revoked", "{}", r.text);
}

// ---------------------------------------------------------------------------------------------
// Request translation details
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_prefixed_model_is_routed_and_echoed() {
    let gw = gateway().await;
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, "anthropic:claude-haiku-4-5", "x", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["model"], "anthropic:claude-haiku-4-5");
    let r = gw
        .post(
            Shape::Anthropic,
            &chat_body(Shape::Anthropic, "openai:gpt-5", "x", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["model"], "openai:gpt-5");
    let reqs = gw.upstream.requests();
    assert_eq!(reqs[0].body["model"], "claude-haiku-4-5");
    assert_eq!(reqs[1].body["model"], "gpt-5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_and_temperature_cross_shapes() {
    let gw = gateway().await;
    let mut body = Combo::OPENAI_TO_ANTHROPIC.body("x", false);
    body["stop"] = json!(["END", "STOP"]);
    body["temperature"] = json!(0.25);
    assert_eq!(gw.post(Shape::OpenAi, &body).await.status, 200);
    let mut body = Combo::ANTHROPIC_TO_OPENAI.body("x", false);
    body["stop_sequences"] = json!(["END"]);
    body["temperature"] = json!(0.5);
    assert_eq!(gw.post(Shape::Anthropic, &body).await.status, 200);
    let reqs = gw.upstream.requests();
    let a = &reqs[0].body;
    assert_eq!(a["stop_sequences"], json!(["END", "STOP"]), "{a}");
    assert!(close(&a["temperature"], 0.25), "{a}");
    let o = &reqs[1].body;
    assert!(
        o["stop"] == json!(["END"]) || o["stop"] == json!("END"),
        "{o}"
    );
    assert!(close(&o["temperature"], 0.5), "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_choice_is_translated_both_ways() {
    let gw = gateway().await;
    let openai_tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {}}}}]);
    let anthropic_tools =
        json!([{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]);
    let cases_from_openai = [
        (json!("required"), json!({"type": "any"})),
        (json!("auto"), json!({"type": "auto"})),
        (
            json!({"type": "function", "function": {"name": "get_weather"}}),
            json!({"type": "tool", "name": "get_weather"}),
        ),
    ];
    for (choice, _) in &cases_from_openai {
        let mut body = Combo::OPENAI_TO_ANTHROPIC.body("x", false);
        body["tools"] = openai_tools.clone();
        body["tool_choice"] = choice.clone();
        let r = gw.post(Shape::OpenAi, &body).await;
        assert_eq!(r.status, 200, "{choice}: {}", r.text);
    }
    let cases_from_anthropic = [
        (json!({"type": "any"}), json!("required")),
        (json!({"type": "auto"}), json!("auto")),
        (
            json!({"type": "tool", "name": "get_weather"}),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ),
    ];
    for (choice, _) in &cases_from_anthropic {
        let mut body = Combo::ANTHROPIC_TO_OPENAI.body("x", false);
        body["tools"] = anthropic_tools.clone();
        body["tool_choice"] = choice.clone();
        let r = gw.post(Shape::Anthropic, &body).await;
        assert_eq!(r.status, 200, "{choice}: {}", r.text);
    }
    let reqs = gw.upstream.requests();
    for (i, (sent, expected)) in cases_from_openai.iter().enumerate() {
        let got = &reqs[i].body["tool_choice"];
        assert_eq!(
            got["type"], expected["type"],
            "OpenAI {sent} -> Anthropic {got}"
        );
        if expected.get("name").is_some() {
            assert_eq!(
                got["name"], expected["name"],
                "OpenAI {sent} -> Anthropic {got}"
            );
        }
    }
    for (i, (sent, expected)) in cases_from_anthropic.iter().enumerate() {
        let got = &reqs[cases_from_openai.len() + i].body["tool_choice"];
        assert_eq!(got, expected, "Anthropic {sent} -> OpenAI {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tool_results_keep_their_pairing_across_shapes() {
    let gw = gateway().await;
    // OpenAI history with two calls answered by two tool messages: Anthropic needs both
    // results in the one user message right after the assistant turn (the fake enforces it).
    let body = json!({"model": "haiku", "messages": [
        {"role": "user", "content": "weather in two cities"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "ra"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rb"},
    ]});
    let r = gw.post(Shape::OpenAi, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(reply_text(Shape::OpenAi, &r.json()), "tool result: ra; rb");
    let up = &gw.upstream.requests()[0].body;
    let msgs = up["messages"].as_array().unwrap();
    assert_eq!(
        msgs.len(),
        3,
        "tool results merged into one user message: {up}"
    );
    let results: Vec<&Value> = msgs[2]["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 2, "{up}");

    // Anthropic results plus text in one user message: OpenAI needs the tool messages first.
    let body = json!({"model": "gpt-5", "max_tokens": 50, "messages": [
        {"role": "user", "content": "weather in two cities"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "ra"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": [{"type": "text", "text": "rb"}]},
            {"type": "text", "text": "and summarise"},
        ]},
    ]});
    let r = gw.post(Shape::Anthropic, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let reqs = gw.upstream.requests();
    let roles: Vec<&str> = reqs[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(
        roles,
        vec!["user", "assistant", "tool", "tool", "user"],
        "{}",
        reqs[1].body
    );
}

// ---------------------------------------------------------------------------------------------
// Streaming behaviour
// ---------------------------------------------------------------------------------------------

for_each_combo!(stream_frames_are_not_buffered);

async fn stream_frames_are_not_buffered(combo: Combo) {
    let gw = gateway().await;
    let mut resp = gw
        .start_stream(
            combo.client,
            &combo.body("[drip:250] a b c d e f g h", true),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let start = Instant::now();
    let mut text = String::new();
    let mut first_delta_at = None;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
        .await
        .expect("stream progresses")
        .expect("stream reads")
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if first_delta_at.is_none()
            && stream_text(combo.client, &parse_sse(&text)).contains("echo:")
        {
            first_delta_at = Some(start.elapsed());
        }
    }
    let total = start.elapsed();
    let first = first_delta_at.expect("a text delta arrived");
    assert!(
        total.saturating_sub(first) >= Duration::from_millis(700),
        "the first delta arrived at {first:?} but the stream ended at {total:?}: frames are buffered"
    );
    assert_eq!(
        stream_text(combo.client, &parse_sse(&text)),
        "echo: [drip:250] a b c d e f g h"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_streams_complete_during_graceful_shutdown() {
    let mut gw = gateway().await;
    let mut resp = gw
        .start_stream(
            Shape::OpenAi,
            &Combo::OPENAI_TO_ANTHROPIC.body("[drip:150] one two three four five six", true),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    let first = resp.chunk().await.unwrap().expect("a first chunk");
    text.push_str(&String::from_utf8_lossy(&first));
    gw.trigger_shutdown();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
        .await
        .expect("stream progresses during the drain")
        .expect("the drained stream is not cut")
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events = parse_sse(&text);
    assert_eq!(
        events.last().map(|e| e.data.as_str()),
        Some("[DONE]"),
        "{text}"
    );
    assert_eq!(
        stream_text(Shape::OpenAi, &events),
        "echo: [drip:150] one two three four five six"
    );
    gw.stop().await.expect("clean exit after the drain");
    let completed = gw.events_of("llm.call_completed").unwrap();
    assert_eq!(
        completed.len(),
        1,
        "the drained call was traced and flushed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_all_served_and_traced() {
    let mut gw = gateway().await;
    let combos = [
        Combo::OPENAI_TO_OPENAI,
        Combo::OPENAI_TO_ANTHROPIC,
        Combo::ANTHROPIC_TO_ANTHROPIC,
        Combo::ANTHROPIC_TO_OPENAI,
    ];
    let mut tasks = Vec::new();
    for i in 0..40usize {
        let combo = combos[i % 4];
        let stream = i % 8 >= 4;
        let text = format!("request {i}");
        let body = combo.body(&text, stream);
        let client = gw.client().clone();
        let url = gw.url(combo.client.gateway_path());
        let token = gw.key.token.clone();
        tasks.push(tokio::spawn(async move {
            let req = client.post(url).json(&body);
            let req = match combo.client {
                Shape::OpenAi => req.bearer_auth(token),
                Shape::Anthropic => req.header("x-api-key", token),
            };
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            let got = if stream {
                stream_text(combo.client, &parse_sse(&body))
            } else {
                reply_text(
                    combo.client,
                    &serde_json::from_str(&body).unwrap_or(Value::Null),
                )
            };
            (status, got, text)
        }));
    }
    for t in tasks {
        let (status, got, text) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("bounded")
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(got, format!("echo: {text}"));
    }
    gw.stop().await.unwrap();
    let completed = gw.events_of("llm.call_completed").unwrap();
    assert_eq!(completed.len(), 40, "every call traced, none lost");
    let sessions: std::collections::BTreeSet<String> =
        completed.iter().map(|e| e.session_id.clone()).collect();
    assert_eq!(sessions.len(), 40, "each request is its own session");
}

// ---------------------------------------------------------------------------------------------
// Documentation and metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_served() {
    let gw = gateway().await;
    let r = gw.request(Method::GET, "/openapi.json").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(v["openapi"].is_string(), "{}", r.text);
    assert!(v["paths"]["/v1/chat/completions"].is_object());
    assert!(v["paths"]["/v1/messages"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_without_secrets() {
    let gw = gateway().await;
    let r = gw
        .post(
            Shape::OpenAi,
            &Combo::OPENAI_TO_OPENAI.body("count me", false),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = gw.request(Method::GET, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.content_type().starts_with("text/plain"),
        "{}",
        r.content_type()
    );
    assert!(r.text.contains("# TYPE"), "Prometheus text: {}", r.text);
    assert!(!r.text.contains(&gw.key.token));
    assert!(!r.text.contains("upstream-openai-key") && !r.text.contains("upstream-anthropic-key"));
}

// ---------------------------------------------------------------------------------------------
// Spend caps and per-key budgets
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_cap_refuses_requests_once_spent() {
    let mut gw = TestGateway::spawn_with(GatewayOptions {
        extra_keys: vec![KeySpec {
            name: "capped".into(),
            daily_cap_usd: Some("0.000001".into()),
            ..KeySpec::default()
        }],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let token = gw.key_named("capped").token.clone();
    let key_id = gw.key_named("capped").key_id.clone();
    let body = Combo::OPENAI_TO_ANTHROPIC.body("spend a little", false);
    let r = gw.post_as(Shape::OpenAi, &token, &body).await;
    assert_eq!(r.status, 200, "under the cap: {}", r.text);
    let r = gw.post_as(Shape::OpenAi, &token, &body).await;
    assert_eq!(r.status, 429, "at or over the cap: {}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    assert_eq!(v["error"]["scope"], "key_daily", "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    let r = gw
        .post_as(
            Shape::Anthropic,
            &token,
            &Combo::ANTHROPIC_TO_ANTHROPIC.body("again", false),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(
        error_type(Shape::Anthropic, &r.json()).as_deref(),
        Some("rate_limit_error"),
        "{}",
        r.text
    );
    // Another key is unaffected.
    assert_eq!(gw.post(Shape::OpenAi, &body).await.status, 200);
    assert_eq!(
        gw.upstream.requests().len(),
        2,
        "refused requests never reach the upstream"
    );
    gw.stop().await.unwrap();
    // Refusals are audited, sampled per key (the rest are counted in `suppressed`).
    let exceeded = gw.events_of("gateway.quota_exceeded").unwrap();
    assert!(!exceeded.is_empty());
    assert_eq!(exceeded[0].payload["gateway_key_id"], key_id.as_str());
    assert_eq!(
        exceeded[0].payload["scope"], "key_daily",
        "{}",
        exceeded[0].payload
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_own_rpm_overrides_the_default_budget() {
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_keys: vec![KeySpec {
            name: "slow-lane".into(),
            rpm: Some(1),
            ..KeySpec::default()
        }],
        extra_args: vec!["--rate-limit".into()],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let token = gw.key_named("slow-lane").token.clone();
    let body = Combo::OPENAI_TO_OPENAI.body("x", false);
    assert_eq!(gw.post_as(Shape::OpenAi, &token, &body).await.status, 200);
    let r = gw.post_as(Shape::OpenAi, &token, &body).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.json()["error"]["scope"], "per_key");
    // The default key still has the default 60 rpm.
    for _ in 0..3 {
        assert_eq!(gw.post(Shape::OpenAi, &body).await.status, 200);
    }
}

/// A long upstream silence mid-stream: the gateway sends SSE comments so proxies and clients
/// do not time the connection out (the gateway's interval is 15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_silences_get_keep_alive_comments() {
    let gw = gateway().await;
    let one = |combo: Combo| {
        let gw = &gw;
        async move {
            let mut resp = gw
                .start_stream(combo.client, &combo.body("[pause:16500] quiet now", true))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let mut text = String::new();
            while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
                .await
                .expect("bounded")
                .unwrap()
            {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            assert!(
                text.lines().any(|l| l.starts_with(':')),
                "{combo:?}: an SSE comment during the 16.5 s silence: {text}"
            );
            assert_eq!(
                stream_text(combo.client, &parse_sse(&text)),
                "echo: [pause:16500] quiet now"
            );
        }
    };
    futures_util::future::join(
        one(Combo::OPENAI_TO_ANTHROPIC),
        one(Combo::ANTHROPIC_TO_OPENAI),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_works_alongside_the_old_one_until_grace_ends() {
    let gw = gateway().await;
    let body = Combo::ANTHROPIC_TO_ANTHROPIC.body("rotate", false);
    let rotated = metis::keys_cli::rotate(
        &gw.paths(),
        &gw.key.key_id,
        2,
        metis_domain::keys::RotationExpiry::Keep,
    )
    .await
    .expect("rotate-key works while the gateway runs");
    let new_token = rotated.successor.token.clone();
    let start = Instant::now();
    // The successor is accepted within 2 s (the gateway polls the keystore every 0.5 s); the
    // old key keeps working during its grace.
    let mut new_ok = false;
    while start.elapsed() < Duration::from_millis(2000) {
        if gw.post_as(Shape::Anthropic, &new_token, &body).await.status == 200 {
            new_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        new_ok,
        "the successor key is accepted within 2 s (not after {:?})",
        start.elapsed()
    );
    if start.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            gw.post(Shape::Anthropic, &body).await.status,
            200,
            "the old key still works during its grace period"
        );
    }
    // After the 2 s grace the old key is refused as revoked.
    tokio::time::sleep(Duration::from_millis(2600).saturating_sub(start.elapsed())).await;
    let r = gw.post(Shape::Anthropic, &body).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "key_revoked", "{}", r.text);
    assert_eq!(
        gw.post_as(Shape::Anthropic, &new_token, &body).await.status,
        200
    );
}

// ---------------------------------------------------------------------------------------------
// Connection-level protection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_an_immediate_503() {
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec!["--max-connections".into(), "2".into()],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    // Two long streams hold both connection slots.
    let body = Combo::OPENAI_TO_OPENAI.body("[long] hold the line", true);
    let mut held = Vec::new();
    for _ in 0..2 {
        // A fresh client per stream so each holds its own connection.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut resp = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.chunk().await.unwrap();
        held.push((client, resp));
    }
    let start = Instant::now();
    let r = reqwest::Client::new()
        .get(gw.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 503, "excess connection is refused with 503"),
        Err(e) => panic!("expected an immediate 503, got a transport error: {e}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "immediately, not after a queue"
    );
    drop(held);
    // Slots free up once the streams end.
    let mut ok = false;
    for _ in 0..40 {
        let r = reqwest::Client::new().get(gw.url("/healthz")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "connections are accepted again after the streams ended");
}

/// Raw request over TCP; returns whatever the server sent before closing (or the timeout).
async fn raw_exchange(gw: &TestGateway, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    sock.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, sock.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_and_bodies_are_cut_off() {
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec![
            "--header-timeout".into(),
            "1s".into(),
            "--body-timeout".into(),
            "1s".into(),
        ],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    // Slow-loris: half a request head, then silence.
    let start = Instant::now();
    let got = raw_exchange(
        &gw,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "an incomplete head is dropped after the header timeout (took {:?}, got {got:?})",
        start.elapsed()
    );
    // A body that never finishes: 408 in the inbound shape.
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":",
        gw.key.token
    );
    let start = Instant::now();
    let got = raw_exchange(&gw, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    let body = got.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(v["type"], "error", "an Anthropic envelope: {got:?}");
    let r = gw
        .post(Shape::OpenAi, &Combo::OPENAI_TO_OPENAI.body("alive", false))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_headers_get_clean_errors() {
    let gw = gateway().await;
    let body = serde_json::to_vec(&Combo::OPENAI_TO_OPENAI.body("x", false)).unwrap();
    // A non-UTF-8 bearer token.
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer ",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(b"\xff\xfe\xfd\r\n\r\n");
    req.extend_from_slice(&body);
    let got = raw_exchange(&gw, &req, Duration::from_secs(5)).await;
    assert!(
        got.starts_with("HTTP/1.1 401") || got.starts_with("HTTP/1.1 400"),
        "{got:?}"
    );
    assert!(got.contains("{\"error\""), "a JSON envelope: {got:?}");
    // An `Authorization` header without a scheme.
    let r = gw
        .client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", &gw.key.token)
        .json(&Combo::OPENAI_TO_OPENAI.body("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A lower-case scheme is fine.
    let r = gw
        .client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("bearer {}", gw.key.token))
        .json(&Combo::OPENAI_TO_OPENAI.body("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An enormous header.
    let r = gw
        .client()
        .get(gw.url("/healthz"))
        .header("x-junk", "a".repeat(64 * 1024))
        .send()
        .await;
    if let Ok(r) = r {
        assert!(
            r.status().is_client_error() || r.status().is_success(),
            "{}",
            r.status()
        );
    }
    let r = gw
        .post(Shape::OpenAi, &Combo::OPENAI_TO_OPENAI.body("alive", false))
        .await;
    assert_eq!(r.status, 200, "still serving");
}
