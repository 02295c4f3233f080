//! Failure paths through the real server: upstream errors mapped into the client's shape
//! (before the first byte as JSON, after it as a real stream error frame), retries, bad input,
//! auth, limits, and the framework-level routes. After every failure the server keeps serving.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::gateway::{error_message, error_type, reply_text};
use metis_tests::{
    Combo, GatewayOptions, KeySpec, Reply, Shape, SseEvent, TestGateway, for_each_combo,
};
use reqwest::Method;
use serde_json::{Value, json};

async fn gateway() -> TestGateway {
    TestGateway::spawn().await.expect("gateway starts")
}

/// The reply is a JSON error envelope in `shape` with this status.
fn assert_envelope(shape: Shape, r: &Reply, status: u16) -> Value {
    assert_eq!(
        r.status, status,
        "body: {} (transport error: {:?})",
        r.text, r.body_error
    );
    assert!(
        r.content_type().starts_with("application/json"),
        "errors are JSON, got {:?}: {}",
        r.content_type(),
        r.text
    );
    let v = r.json();
    assert!(
        error_type(shape, &v).is_some(),
        "not a {shape:?} error envelope: {}",
        r.text
    );
    assert!(
        !error_message(&v).is_empty(),
        "an error message: {}",
        r.text
    );
    v
}

/// A normal request still succeeds (the server survived whatever came before).
async fn assert_still_serving(gw: &TestGateway, shape: Shape) {
    let model = match shape {
        Shape::OpenAi => "gpt-5",
        Shape::Anthropic => "haiku",
    };
    let r = gw
        .post(
            shape,
            &metis_tests::gateway::chat_body(shape, model, "alive?", false),
        )
        .await;
    assert_eq!(r.status, 200, "the gateway keeps serving: {}", r.text);
    assert_eq!(reply_text(shape, &r.json()), "echo: alive?");
}

// ---------------------------------------------------------------------------------------------
// Upstream errors before the first byte
// ---------------------------------------------------------------------------------------------

for_each_combo!(
    upstream_401_is_an_auth_error,
    upstream_429_forwards_retry_after,
    upstream_500_is_a_server_error,
    upstream_context_overflow_is_a_400,
    upstream_error_before_a_stream_is_json,
    fail_once_503_is_retried,
    mid_stream_provider_error_ends_with_an_error_frame,
    mid_stream_cut_ends_with_an_error_frame,
    garbage_stream_ends_with_an_error_frame,
    garbage_sync_body_is_a_gateway_error,
);

async fn upstream_401_is_an_auth_error(combo: Combo) {
    let gw = gateway().await;
    let r = gw
        .post(combo.client, &combo.body("[status:401] x", false))
        .await;
    let v = assert_envelope(combo.client, &r, 401);
    if combo.client == Shape::Anthropic {
        assert_eq!(
            error_type(combo.client, &v).as_deref(),
            Some("authentication_error")
        );
    }
    assert_eq!(
        gw.upstream.requests().len(),
        1,
        "auth failures are not retried"
    );
    assert_still_serving(&gw, combo.client).await;
}

async fn upstream_429_forwards_retry_after(combo: Combo) {
    let gw = gateway().await;
    let r = gw
        .post(combo.client, &combo.body("[status:429] x", false))
        .await;
    let v = assert_envelope(combo.client, &r, 429);
    // Translated traffic gets the gateway's envelope; same-shape traffic the upstream's own
    // body (OpenAI's real 429 says `"type": "requests"`; tested word for word in
    // `same_shape_upstream_errors_reach_the_client_unchanged`).
    if combo.client != combo.upstream || combo.client == Shape::Anthropic {
        assert_eq!(
            error_type(combo.client, &v).as_deref(),
            Some("rate_limit_error")
        );
    }
    if combo.client == Shape::OpenAi && combo.client != combo.upstream {
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    }
    assert!(
        r.header("retry-after").is_some(),
        "upstream Retry-After is forwarded"
    );
    assert!(
        gw.upstream.requests().len() >= 2,
        "429 is retried before giving up (saw {})",
        gw.upstream.requests().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_529_overloaded_reaches_anthropic_clients_as_is_and_others_as_a_rate_limit() {
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec!["--upstream-retries".into(), "0".into()],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    // Same shape: the upstream's status and body, which the Anthropic SDKs retry on.
    let combo = Combo::ANTHROPIC_TO_ANTHROPIC;
    let r = gw
        .post(combo.client, &combo.body("[status:529] x", false))
        .await;
    let v = assert_envelope(combo.client, &r, 529);
    assert_eq!(
        error_type(combo.client, &v).as_deref(),
        Some("overloaded_error")
    );
    // Translated: the rate-limit class in the client's own vocabulary.
    let combo = Combo::OPENAI_TO_ANTHROPIC;
    let r = gw
        .post(combo.client, &combo.body("[status:529] x", false))
        .await;
    let v = assert_envelope(combo.client, &r, 429);
    assert_eq!(
        error_type(combo.client, &v).as_deref(),
        Some("rate_limit_error")
    );
    assert!(r.header("retry-after").is_some(), "{combo:?}");
}

async fn upstream_500_is_a_server_error(combo: Combo) {
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec!["--upstream-retries".into(), "0".into()],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let r = gw
        .post(combo.client, &combo.body("[status:500] x", false))
        .await;
    assert!(r.status >= 500, "{} {}", r.status, r.text);
    let v = assert_envelope(combo.client, &r, r.status);
    let ty = error_type(combo.client, &v).unwrap();
    match combo.client {
        Shape::OpenAi => assert!(ty == "api_error" || ty == "server_error", "{ty}"),
        Shape::Anthropic => assert!(ty == "api_error" || ty == "overloaded_error", "{ty}"),
    }
    assert_still_serving(&gw, combo.client).await;
}

async fn upstream_context_overflow_is_a_400(combo: Combo) {
    let gw = gateway().await;
    let r = gw
        .post(combo.client, &combo.body("[overflow] x", false))
        .await;
    let v = assert_envelope(combo.client, &r, 400);
    assert_eq!(
        error_type(combo.client, &v).as_deref(),
        Some("invalid_request_error")
    );
    if combo.client == Shape::OpenAi {
        assert_eq!(v["error"]["code"], "context_length_exceeded");
    }
    assert_eq!(gw.upstream.requests().len(), 1, "a 400 is not retried");
}

async fn upstream_error_before_a_stream_is_json(combo: Combo) {
    let gw = gateway().await;
    let r = gw
        .post(combo.client, &combo.body("[status:401] x", true))
        .await;
    assert_envelope(combo.client, &r, 401);
    assert_still_serving(&gw, combo.client).await;
}

async fn fail_once_503_is_retried(combo: Combo) {
    let gw = gateway().await;
    for stream in [false, true] {
        let text = format!("[fail-once:503] stream={stream}");
        let r = gw.post(combo.client, &combo.body(&text, stream)).await;
        assert_eq!(r.status, 200, "stream={stream}: {}", r.text);
        let got = if stream {
            metis_tests::gateway::stream_text(combo.client, &r.events())
        } else {
            reply_text(combo.client, &r.json())
        };
        assert_eq!(got, format!("echo: {text}"));
    }
    assert_eq!(
        gw.upstream.requests().len(),
        4,
        "one failed attempt and one retry per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_once_429_is_retried_after_retry_after() {
    let gw = gateway().await;
    let start = std::time::Instant::now();
    let r = gw
        .post(
            Shape::OpenAi,
            &Combo::OPENAI_TO_ANTHROPIC.body("[fail-once:429] x", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(gw.upstream.requests().len(), 2);
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(900),
        "the upstream Retry-After (1s) is honoured, took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_provider_key_is_a_clean_auth_error() {
    let gw = TestGateway::spawn_with(GatewayOptions {
        wrong_anthropic_key: true,
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    for shape in [Shape::OpenAi, Shape::Anthropic] {
        let r = gw
            .post(
                shape,
                &metis_tests::gateway::chat_body(shape, "haiku", "x", false),
            )
            .await;
        assert_envelope(shape, &r, 401);
        assert!(
            !r.text.contains("definitely-not-the-key"),
            "provider key never echoed"
        );
    }
    assert_still_serving(&gw, Shape::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_a_gateway_error() {
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec![
            "--upstream-timeout".into(),
            "500ms".into(),
            "--upstream-retries".into(),
            "0".into(),
        ],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let r = gw
        .post(
            Shape::OpenAi,
            &Combo::OPENAI_TO_OPENAI.body("[slow:3000] x", false),
        )
        .await;
    assert!(
        r.status == 502 || r.status == 504,
        "{} {}",
        r.status,
        r.text
    );
    assert_envelope(Shape::OpenAi, &r, r.status);
}

// ---------------------------------------------------------------------------------------------
// Failures after the first byte
// ---------------------------------------------------------------------------------------------

/// A stream that failed after its head: a real error frame in the client's shape, and no sign
/// of a successful end.
fn assert_stream_failed(combo: Combo, r: &Reply) {
    assert_eq!(r.status, 200, "the head was committed: {}", r.text);
    let events = r.events();
    match combo.client {
        Shape::OpenAi => {
            assert!(
                !events.iter().any(|e| e.data == "[DONE]"),
                "no [DONE] after a failure: {}",
                r.text
            );
            let last = events
                .last()
                .expect("some frames")
                .json()
                .expect("last frame is JSON");
            assert!(
                last["error"]["message"].is_string(),
                "final data is an error: {}",
                r.text
            );
            assert!(last["error"]["type"].is_string(), "{}", r.text);
            let finished = events
                .iter()
                .filter_map(SseEvent::json)
                .any(|c| c["choices"][0]["finish_reason"].is_string());
            assert!(!finished, "no fake finish_reason: {}", r.text);
        }
        Shape::Anthropic => {
            let last = events.last().expect("some frames");
            assert_eq!(
                last.event.as_deref(),
                Some("error"),
                "ends with event: error: {}",
                r.text
            );
            let d = last.json().expect("error data is JSON");
            assert_eq!(d["type"], "error");
            assert!(
                d["error"]["type"].is_string() && d["error"]["message"].is_string(),
                "{d}"
            );
            assert!(
                !events
                    .iter()
                    .any(|e| e.event.as_deref() == Some("message_stop")),
                "no message_stop after a failure: {}",
                r.text
            );
        }
    }
}

async fn mid_stream_provider_error_ends_with_an_error_frame(combo: Combo) {
    let gw = gateway().await;
    let r = gw
        .post(
            combo.client,
            &combo.body("one two three four five six [stream-error]", true),
        )
        .await;
    assert_stream_failed(combo, &r);
    let text = metis_tests::gateway::stream_text(combo.client, &r.events());
    assert!(
        text.starts_with("echo: one"),
        "deltas before the failure are delivered: {text:?}"
    );
    assert_eq!(
        gw.upstream.requests().len(),
        1,
        "no retry after the first byte"
    );
    assert_still_serving(&gw, combo.client).await;
}

async fn mid_stream_cut_ends_with_an_error_frame(combo: Combo) {
    let gw = gateway().await;
    let r = gw
        .post(
            combo.client,
            &combo.body("one two three four five six [cut]", true),
        )
        .await;
    assert_stream_failed(combo, &r);
    assert_eq!(
        gw.upstream.requests().len(),
        1,
        "no retry after the first byte"
    );
    assert_still_serving(&gw, combo.client).await;
}

async fn garbage_stream_ends_with_an_error_frame(combo: Combo) {
    let gw = gateway().await;
    let r = gw.post(combo.client, &combo.body("[garbage]", true)).await;
    if r.status == 200 {
        assert_stream_failed(combo, &r);
    } else {
        assert!(r.status >= 500, "{} {}", r.status, r.text);
        assert_envelope(combo.client, &r, r.status);
    }
    assert_still_serving(&gw, combo.client).await;
}

async fn garbage_sync_body_is_a_gateway_error(combo: Combo) {
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec!["--upstream-retries".into(), "0".into()],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let r = gw.post(combo.client, &combo.body("[garbage]", false)).await;
    assert!(r.status >= 500, "{} {}", r.status, r.text);
    assert_envelope(combo.client, &r, r.status);
    assert!(
        !r.text.contains("<html>"),
        "upstream garbage is not forwarded"
    );
    assert_still_serving(&gw, combo.client).await;
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_a_400_naming_the_problem_in_each_shape() {
    let gw = gateway().await;
    for shape in [Shape::OpenAi, Shape::Anthropic] {
        let r = gw
            .post_raw(
                shape,
                "application/json",
                b"{\"model\": \"haiku\", ".to_vec(),
            )
            .await;
        let v = assert_envelope(shape, &r, 400);
        assert_eq!(
            error_type(shape, &v).as_deref(),
            Some("invalid_request_error")
        );
        assert!(
            error_message(&v).to_lowercase().contains("json"),
            "{shape:?}: {v}"
        );

        let r = gw
            .post_raw(shape, "application/json", b"[1, 2]".to_vec())
            .await;
        assert_envelope(shape, &r, 400);

        let mut body = metis_tests::gateway::chat_body(shape, "haiku", "x", false);
        body["messages"] = json!("hello");
        let v = assert_envelope(shape, &gw.post(shape, &body).await, 400);
        assert!(
            error_message(&v).contains("messages"),
            "{shape:?} names the field: {v}"
        );

        let mut body = metis_tests::gateway::chat_body(shape, "haiku", "x", false);
        body["messages"] = json!([{"role": "user", "content": 42}]);
        let v = assert_envelope(shape, &gw.post(shape, &body).await, 400);
        assert!(
            error_message(&v).contains("content"),
            "{shape:?} names the field: {v}"
        );

        let mut body = metis_tests::gateway::chat_body(shape, "haiku", "x", false);
        body.as_object_mut().unwrap().remove("messages");
        let v = assert_envelope(shape, &gw.post(shape, &body).await, 400);
        assert!(
            error_message(&v).contains("messages"),
            "{shape:?} names the field: {v}"
        );

        let mut body = metis_tests::gateway::chat_body(shape, "haiku", "x", false);
        body.as_object_mut().unwrap().remove("model");
        let v = assert_envelope(shape, &gw.post(shape, &body).await, 400);
        assert!(
            error_message(&v).contains("model"),
            "{shape:?} names the field: {v}"
        );

        let mut body = metis_tests::gateway::chat_body(shape, "haiku", "x", false);
        body["stream"] = json!("yes");
        let v = assert_envelope(shape, &gw.post(shape, &body).await, 400);
        assert!(
            error_message(&v).contains("stream"),
            "{shape:?} names the field: {v}"
        );

        let mut body = metis_tests::gateway::chat_body(shape, "haiku", "x", false);
        body["messages"] = json!([{"role": "wizard", "content": "x"}]);
        let v = assert_envelope(shape, &gw.post(shape, &body).await, 400);
        assert!(
            error_message(&v).contains("role"),
            "{shape:?} names the field: {v}"
        );
    }
    let mut body = metis_tests::gateway::chat_body(Shape::Anthropic, "haiku", "x", false);
    body.as_object_mut().unwrap().remove("max_tokens");
    let v = assert_envelope(
        Shape::Anthropic,
        &gw.post(Shape::Anthropic, &body).await,
        400,
    );
    assert!(error_message(&v).contains("max_tokens"), "{v}");

    assert!(
        gw.upstream.requests().is_empty(),
        "bad input never reaches the upstream"
    );
    assert_still_serving(&gw, Shape::OpenAi).await;
    assert_still_serving(&gw, Shape::Anthropic).await;
}

/// The gateway parses no XML (deny.toml's exception for quick-xml's RUSTSEC-2026-0194/0195
/// rests on it): XML bodies built like the advisories' exploits (thousands of attributes or
/// namespace declarations on one tag), sent as `application/xml`, are answered 400 "not
/// JSON" in each shape and never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_bodies_are_rejected_as_invalid_json_not_parsed() {
    let gw = gateway().await;
    let attrs: String = (0..20_000).map(|i| format!(" a{i}=\"x\"")).collect();
    let namespaces: String = (0..20_000)
        .map(|i| format!(" xmlns:n{i}=\"urn:{i}\""))
        .collect();
    for xml in [format!("<r{attrs}/>"), format!("<r{namespaces}/>")] {
        for content_type in ["application/xml", "text/xml"] {
            for shape in [Shape::OpenAi, Shape::Anthropic] {
                let r = gw
                    .post_raw(shape, content_type, xml.clone().into_bytes())
                    .await;
                let v = assert_envelope(shape, &r, 400);
                assert!(
                    error_message(&v).to_lowercase().contains("json"),
                    "{shape:?} {content_type}: {v}"
                );
            }
        }
    }
    assert!(gw.upstream.requests().is_empty());
    assert_still_serving(&gw, Shape::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tool_arguments_json_is_a_400() {
    let gw = gateway().await;
    for model in ["haiku", "gpt-5"] {
        let body = json!({"model": model, "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": Par"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "r"},
        ]});
        let v = assert_envelope(Shape::OpenAi, &gw.post(Shape::OpenAi, &body).await, 400);
        assert!(
            error_message(&v).contains("arguments"),
            "{model}: names the field: {v}"
        );
    }
    assert!(gw.upstream.requests().is_empty());
    assert_still_serving(&gw, Shape::OpenAi).await;
}

/// POST over a raw socket, tolerating a server that answers before reading the whole body
/// (reqwest reports the broken pipe instead of the early response; SDKs built on httpx read
/// it). Returns the status and the body.
async fn raw_post(gw: &TestGateway, shape: Shape, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let auth = match shape {
        Shape::OpenAi => format!("Authorization: Bearer {}", gw.key.token),
        Shape::Anthropic => format!(
            "x-api-key: {}\r\nanthropic-version: 2023-06-01",
            gw.key.token
        ),
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        shape.gateway_path(),
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // The server may stop reading (and reset) once it has decided; that is allowed.
    let _ = sock.write_all(body).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        sock.read_to_end(&mut buf),
    )
    .await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_in_each_shape() {
    let gw = gateway().await;
    let big = "a".repeat(10 * 1024 * 1024 + 1024);
    for shape in [Shape::OpenAi, Shape::Anthropic] {
        let body = metis_tests::gateway::chat_body(shape, "haiku", &big, false);
        let (status, v) = raw_post(&gw, shape, &serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(status, 413, "{v}");
        assert!(error_type(shape, &v).is_some(), "a {shape:?} envelope: {v}");
    }
    // Just under the limit is fine.
    let ok = "a".repeat(9 * 1024 * 1024);
    let body = metis_tests::gateway::chat_body(Shape::OpenAi, "gpt-5", &ok, false);
    let (status, v) = raw_post(&gw, Shape::OpenAi, &serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(status, 200, "{}", error_message(&v));
    assert_eq!(
        gw.upstream.requests().len(),
        1,
        "only the accepted body went upstream"
    );
    assert_still_serving(&gw, Shape::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_is_model_not_found_listing_models() {
    let gw = gateway().await;
    for shape in [Shape::OpenAi, Shape::Anthropic] {
        for stream in [false, true] {
            let body = metis_tests::gateway::chat_body(shape, "gpt-4o-nonexistent", "x", stream);
            let v = assert_envelope(shape, &gw.post(shape, &body).await, 400);
            let msg = error_message(&v);
            assert!(
                msg.contains("haiku") && msg.contains("gpt-5"),
                "lists available models: {msg}"
            );
            if shape == Shape::OpenAi {
                assert_eq!(v["error"]["code"], "model_not_found");
            }
        }
    }
    assert!(gw.upstream.requests().is_empty(), "no silent fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_invalid_keys_get_401_in_each_shape() {
    let gw = gateway().await;
    for shape in [Shape::OpenAi, Shape::Anthropic] {
        let body = metis_tests::gateway::chat_body(shape, "haiku", "x", false);
        let r = gw
            .client()
            .post(gw.url(shape.gateway_path()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        match shape {
            Shape::OpenAi => assert_eq!(v["error"]["code"], "invalid_api_key", "{v}"),
            Shape::Anthropic => {
                assert_eq!(v["type"], "error", "{v}");
                assert_eq!(v["error"]["type"], "authentication_error", "{v}");
            }
        }
        let r = gw
            .post_as(shape, "gw_0000000000000000000000000000", &body)
            .await;
        let v = assert_envelope(shape, &r, 401);
        if shape == Shape::Anthropic {
            assert_eq!(
                error_type(shape, &v).as_deref(),
                Some("authentication_error")
            );
        }
    }
    // `/v1/messages` also takes the key as a Bearer token.
    let r = gw
        .client()
        .post(gw.url("/v1/messages"))
        .bearer_auth(&gw.key.token)
        .json(&metis_tests::gateway::chat_body(
            Shape::Anthropic,
            "haiku",
            "bearer",
            false,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        gw.upstream.requests().len() == 1,
        "only the authenticated call went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_restricted_to_a_model_gets_403_for_others() {
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
    let token = gw.key_named("haiku-only").token.clone();
    for shape in [Shape::OpenAi, Shape::Anthropic] {
        let body = metis_tests::gateway::chat_body(shape, "gpt-5", "x", false);
        let v = assert_envelope(shape, &gw.post_as(shape, &token, &body).await, 403);
        if shape == Shape::Anthropic {
            assert_eq!(error_type(shape, &v).as_deref(), Some("permission_error"));
        }
        // The alias and the canonical id of the allowed model both work.
        for model in ["haiku", "anthropic:claude-haiku-4-5"] {
            let body = metis_tests::gateway::chat_body(shape, model, "allowed", false);
            let r = gw.post_as(shape, &token, &body).await;
            assert_eq!(r.status, 200, "{shape:?} {model}: {}", r.text);
        }
    }
    assert_eq!(
        gw.upstream.requests().len(),
        4,
        "403s never reach the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// Framework routes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let gw = gateway().await;
    let r = gw.request(Method::GET, "/healthz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["status"], "ok");
    let r = gw.request(Method::GET, "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_get_json_envelopes() {
    let gw = gateway().await;
    let r = gw.request(Method::GET, "/v1/nope").await;
    assert_eq!(r.status, 404);
    assert!(
        r.content_type().starts_with("application/json"),
        "{}",
        r.text
    );
    assert!(r.json()["error"]["message"].is_string(), "{}", r.text);

    let r = gw.request(Method::GET, "/v1/chat/completions").await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert!(r.json()["error"]["message"].is_string(), "{}", r.text);
    // RFC 9110: a 405 names the methods the resource supports.
    assert_eq!(r.header("allow"), Some("POST"), "{:?}", r.headers);
    let r = gw.request(Method::TRACE, "/v1/models").await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(r.header("allow"), Some("GET, HEAD"), "{:?}", r.headers);

    let r = gw.request(Method::DELETE, "/v1/messages").await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(r.header("allow"), Some("POST"), "{:?}", r.headers);
    assert_eq!(
        r.json()["type"],
        "error",
        "Anthropic path answers in Anthropic shape: {}",
        r.text
    );

    assert_still_serving(&gw, Shape::OpenAi).await;
}

/// Send `request` on a fresh connection and read the whole answer (the server closes it).
async fn raw_exchange(gw: &TestGateway, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut raw),
    )
    .await
    .expect("the server answers and closes the connection")
    .unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

/// Requests hyper rejects before the application sees them (no request is ever built from
/// such a head) still get a JSON envelope, in the shape their path implies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_rejected_by_the_http_layer_get_json_envelopes() {
    let gw = gateway().await;
    let many_headers: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let long_uri = format!("/v1/chat/completions?q={}", "a".repeat(100 * 1024));
    let cases: Vec<(&str, Vec<u8>, u16, Shape)> = vec![
        (
            "a control character in a header value",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n".to_vec(),
            400,
            Shape::OpenAi,
        ),
        (
            "120 header fields",
            format!("POST /v1/messages HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            Shape::Anthropic,
        ),
        (
            "a 100 KiB URI",
            format!("GET {long_uri} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            414,
            Shape::OpenAi,
        ),
        (
            "a garbage request line",
            b"\x16\x03\x01 nonsense\r\n\r\n".to_vec(),
            400,
            Shape::OpenAi,
        ),
    ];
    for (what, request, status, shape) in cases {
        let answer = raw_exchange(&gw, &request).await;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{what}: no HTTP answer: {answer:?}"));
        let head = head.to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("http/1.1 {status} ")),
            "{what}: {head}"
        );
        assert!(
            head.contains("content-type: application/json"),
            "{what}: {head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{what}: {head}"
        );
        let v: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body:?}"));
        assert!(
            error_type(shape, &v).is_some(),
            "{what}: not a {shape:?} envelope: {v}"
        );
        assert!(!error_message(&v).is_empty(), "{what}: {v}");
    }
    // Counted, and the server keeps serving.
    let metrics = gw.request(Method::GET, "/metrics").await.text;
    assert!(
        metrics.contains(r#"metis_http_requests_total{route="unparsed",method="unknown",status="431",shape="anthropic"} 1"#),
        "{metrics}"
    );
    assert_still_serving(&gw, Shape::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_a_502_in_each_shape() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut gw = TestGateway::spawn_with(GatewayOptions {
        openai_base_url: Some(format!("http://127.0.0.1:{port}/v1")),
        extra_args: vec!["--upstream-retries".into(), "0".into()],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    for shape in [Shape::OpenAi, Shape::Anthropic] {
        for stream in [false, true] {
            let body = metis_tests::gateway::chat_body(shape, "gpt-5", "x", stream);
            let v = assert_envelope(shape, &gw.post(shape, &body).await, 502);
            assert!(
                !error_message(&v).contains(&port.to_string()),
                "no internal address leaked: {v}"
            );
        }
    }
    assert_still_serving(&gw, Shape::Anthropic).await;
    gw.stop().await.unwrap();
    let failed = gw.events_of("llm.call_failed").unwrap();
    assert_eq!(failed.len(), 4);
    assert!(
        failed.iter().all(|e| e.payload["error_class"] == "network"),
        "{:?}",
        failed.iter().map(|e| &e.payload).collect::<Vec<_>>()
    );
}
