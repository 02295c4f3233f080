//! Google providers through the real gateway: kind `gemini` (Gemini API, `x-goog-api-key`),
//! `vertex` (Gemini on Vertex AI) and `vertex-anthropic` (Claude on Vertex AI), both with a
//! service account whose RS256 assertion the fake token endpoint verifies. Each kind in both
//! client shapes, sync and stream, with a tool round trip, usage and cost, upstream errors
//! mapped to the client status, and credential failures.
//!
//! The Google fake is a second `FakeUpstream` started before the gateway, so its URL (and a
//! key file whose `token_uri` points at it) can go into the gateway's config file.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::fake_upstream::{
    Api, AuthCheck, DEFAULT_GEMINI_KEY, FakeUpstream, RecordedRequest, TOOL_ARGUMENTS,
    google_wrong_key_json,
};
use metis_tests::gateway::{
    GatewayOptions, chat_body, reply_text, stop_reason, stream_text, tool_call_of, weather_tools,
};
use metis_tests::{Shape, TestGateway};
use serde_json::{Value, json};

const GEMINI_MODEL: &str = "gemini:gemini-2.5-flash";
const VERTEX_MODEL: &str = "vertex:gemini-2.5-pro";
const CLAUDE_MODEL: &str = "vertex-anthropic:claude-haiku-4-5@20251001";
const SHAPES: [Shape; 2] = [Shape::OpenAi, Shape::Anthropic];

/// A gateway whose `gemini`, `vertex` and `vertex-anthropic` providers point at `google`.
/// `bad_gemini_key` / `bad_service_account` give it credentials the fake refuses.
async fn gateway(
    google: &FakeUpstream,
    bad_gemini_key: bool,
    bad_service_account: bool,
) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_uri = format!("{}/token", google.base_url());
    let creds = dir.path().join("service-account.json");
    let json = if bad_service_account {
        google_wrong_key_json(&token_uri)
    } else {
        google.google_credentials_json()
    };
    std::fs::write(&creds, json).unwrap();
    let key = if bad_gemini_key {
        "not-the-gemini-key"
    } else {
        DEFAULT_GEMINI_KEY
    };
    let base = google.base_url();
    let config = format!(
        r#"
[providers.gemini]
api_key = "{key}"
base_url = "{base}"

[providers.vertex]
credentials_file = "{creds}"
location = "us-central1"
base_url = "{base}"

[providers.vertex-anthropic]
credentials_file = "{creds}"
project = "claude-project"
location = "us-east5"
base_url = "{base}"
"#,
        creds = creds.display()
    );
    let gw = TestGateway::spawn_with(GatewayOptions {
        config_toml: Some(config),
        extra_args: vec!["--upstream-retries".into(), "0".into()],
        ..GatewayOptions::default()
    })
    .await
    .expect("gateway starts");
    (gw, dir)
}

async fn google() -> FakeUpstream {
    FakeUpstream::start("unused-anthropic-key", "unused-openai-key")
        .await
        .expect("fake starts")
}

fn model_calls(google: &FakeUpstream) -> Vec<RecordedRequest> {
    google
        .requests()
        .into_iter()
        .filter(|r| r.api != Api::Token)
        .collect()
}

/// Sync and streamed text for `model` in both shapes; returns the model calls the fake saw.
async fn text_both_shapes(gw: &TestGateway, google: &FakeUpstream, model: &str) {
    for shape in SHAPES {
        for stream in [false, true] {
            let text = format!("hello {model} {shape:?} {stream}");
            let r = gw
                .post(shape, &chat_body(shape, model, &text, stream))
                .await;
            assert_eq!(
                r.status, 200,
                "{model} {shape:?} stream={stream}: {}",
                r.text
            );
            let got = if stream {
                stream_text(shape, &r.events())
            } else {
                reply_text(shape, &r.json())
            };
            assert_eq!(got, format!("echo: {text}"), "{model} {shape:?} {stream}");
        }
    }
    let calls = model_calls(google);
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls.iter().all(|c| c.auth == AuthCheck::Matched));
}

#[tokio::test]
async fn gemini_api_key_both_shapes_sync_and_stream() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, false, false).await;
    text_both_shapes(&gw, &google, GEMINI_MODEL).await;
    let calls = model_calls(&google);
    assert_eq!(
        calls[0].path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        calls[1].path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(calls[1].query.as_deref(), Some("alt=sse"));
    assert_eq!(calls[0].header("x-goog-api-key"), Some("<matched>"));
    assert!(calls[0].body.get("model").is_none());
    assert!(calls[0].body["contents"].is_array());
}

#[tokio::test]
async fn vertex_service_account_both_shapes_sync_and_stream_with_one_token_exchange() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, false, false).await;
    text_both_shapes(&gw, &google, VERTEX_MODEL).await;
    let calls = model_calls(&google);
    assert_eq!(
        calls[0].path,
        "/v1/projects/metis-test-project/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
        "the project comes from the key file when the section names none"
    );
    assert_eq!(calls[0].header("authorization"), Some("<matched>"));
    let tokens: Vec<_> = google
        .requests()
        .into_iter()
        .filter(|r| r.api == Api::Token)
        .collect();
    assert_eq!(tokens.len(), 1, "the token is cached across calls");
    assert_eq!(
        tokens[0].body,
        Value::Null,
        "the assertion is never recorded"
    );
}

#[tokio::test]
async fn claude_on_vertex_both_shapes_sync_and_stream() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, false, false).await;
    text_both_shapes(&gw, &google, CLAUDE_MODEL).await;
    let calls = model_calls(&google);
    assert_eq!(
        calls[0].path,
        "/v1/projects/claude-project/locations/us-east5/publishers/anthropic/models/claude-haiku-4-5%4020251001:rawPredict"
    );
    assert!(calls[1].path.ends_with(":streamRawPredict"));
    for c in &calls {
        assert_eq!(c.body["anthropic_version"], "vertex-2023-10-16");
        assert!(c.body.get("model").is_none(), "the model is in the URL");
    }
}

/// A tool call, then the tool result turn, in `shape` through `model`.
async fn tool_round_trip(gw: &TestGateway, google: &FakeUpstream, model: &str, shape: Shape) {
    google.reset();
    let question = format!("[tool:get_weather] weather in Paris? {model}");
    let mut body = chat_body(shape, model, &question, false);
    body["tools"] = weather_tools(shape);
    let r = gw.post(shape, &body).await;
    assert_eq!(r.status, 200, "{model} {shape:?}: {}", r.text);
    let first = r.json();
    let expected_stop = match shape {
        Shape::OpenAi => "tool_calls",
        Shape::Anthropic => "tool_use",
    };
    assert_eq!(
        stop_reason(shape, &first),
        expected_stop,
        "{model} {shape:?}"
    );
    let (id, name, args) = tool_call_of(shape, &first);
    assert_eq!(name, "get_weather");
    assert_eq!(args, serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap());
    assert!(!id.is_empty());

    let result_text = "18C and sunny";
    body["messages"] = match shape {
        Shape::OpenAi => json!([
            {"role": "user", "content": question},
            first["choices"][0]["message"].clone(),
            {"role": "tool", "tool_call_id": id, "content": result_text},
        ]),
        Shape::Anthropic => json!([
            {"role": "user", "content": question},
            {"role": "assistant", "content": first["content"].clone()},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": result_text}]},
        ]),
    };
    let r = gw.post(shape, &body).await;
    assert_eq!(r.status, 200, "{model} {shape:?}: {}", r.text);
    assert_eq!(
        reply_text(shape, &r.json()),
        format!("tool result: {result_text}"),
        "{model} {shape:?}"
    );
    let calls = model_calls(google);
    assert_eq!(calls.len(), 2);
    if model != CLAUDE_MODEL {
        let first_up = &calls[0].body;
        assert_eq!(
            first_up["tools"][0]["functionDeclarations"][0]["name"],
            "get_weather"
        );
        let contents = calls[1].body["contents"].as_array().unwrap();
        let last = &contents[contents.len() - 1];
        assert_eq!(last["role"], "user");
        assert_eq!(last["parts"][0]["functionResponse"]["name"], "get_weather");
        assert_eq!(
            last["parts"][0]["functionResponse"]["response"],
            json!({"result": result_text})
        );
    }

    // Streamed: the call arrives as the client shape's tool-call frames.
    let mut body = chat_body(shape, model, &question, true);
    body["tools"] = weather_tools(shape);
    let r = gw.post(shape, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains("get_weather"),
        "{model} {shape:?}: {}",
        r.text
    );
    assert!(r.text.contains(r#"city"#), "{}", r.text);
}

#[tokio::test]
async fn tools_round_trip_for_every_kind_and_shape() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, false, false).await;
    for model in [GEMINI_MODEL, VERTEX_MODEL, CLAUDE_MODEL] {
        for shape in SHAPES {
            tool_round_trip(&gw, &google, model, shape).await;
        }
    }
}

#[tokio::test]
async fn usage_and_cost_are_recorded_with_google_prices() {
    let google = google().await;
    let (mut gw, _dir) = gateway(&google, false, false).await;
    for model in [GEMINI_MODEL, VERTEX_MODEL, CLAUDE_MODEL] {
        let r = gw
            .post(
                Shape::OpenAi,
                &chat_body(Shape::OpenAi, model, "price me [cache]", false),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let usage = &r.json()["usage"];
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
        assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    }
    gw.stop().await.unwrap();
    let completed = gw.events_of("llm.call_completed").unwrap();
    assert_eq!(completed.len(), 3);
    for e in &completed {
        let cost = e.payload["cost_usd"].as_f64().unwrap_or(0.0);
        assert!(cost > 0.0, "priced: {}", e.payload_json);
    }
}

#[tokio::test]
async fn upstream_429_and_500_map_to_client_statuses_for_every_kind() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, false, false).await;
    for model in [GEMINI_MODEL, VERTEX_MODEL, CLAUDE_MODEL] {
        for shape in SHAPES {
            for (directive, want) in [("[status:429]", 429), ("[status:500]", 503)] {
                let r = gw
                    .post(shape, &chat_body(shape, model, directive, false))
                    .await;
                // Same-shape Claude on Vertex relays the upstream status itself (500);
                // translated traffic gets the gateway's class status (503 for a 5xx).
                let relayed = model == CLAUDE_MODEL && shape == Shape::Anthropic;
                let want = if relayed && want == 503 { 500 } else { want };
                assert_eq!(r.status, want, "{model} {shape:?} {directive}: {}", r.text);
            }
        }
    }
}

#[tokio::test]
async fn a_wrong_gemini_key_is_an_auth_error() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, true, false).await;
    for shape in SHAPES {
        let r = gw
            .post(shape, &chat_body(shape, GEMINI_MODEL, "hi", false))
            .await;
        assert_eq!(r.status, 401, "{shape:?}: {}", r.text);
        assert!(!r.text.contains("not-the-gemini-key"), "{}", r.text);
    }
    let calls = model_calls(&google);
    assert!(calls.iter().all(|c| c.auth == AuthCheck::Mismatched));
}

#[tokio::test]
async fn a_service_account_key_the_token_endpoint_refuses_fails_naming_the_exchange() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, false, true).await;
    for model in [VERTEX_MODEL, CLAUDE_MODEL] {
        let r = gw
            .post(Shape::OpenAi, &chat_body(Shape::OpenAi, model, "hi", false))
            .await;
        assert_eq!(r.status, 502, "{model}: {}", r.text);
        assert!(
            r.text
                .contains("token exchange refused: HTTP 400 (invalid_grant)"),
            "{model}: {}",
            r.text
        );
    }
    assert!(
        model_calls(&google).is_empty(),
        "no model call without a token"
    );
    assert!(
        !google.requests().is_empty(),
        "the token endpoint was asked"
    );
}

#[tokio::test]
async fn a_revoked_vertex_token_is_refused_then_replaced_by_a_fresh_exchange() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, false, false).await;
    let body = chat_body(Shape::OpenAi, VERTEX_MODEL, "first", false);
    assert_eq!(gw.post(Shape::OpenAi, &body).await.status, 200);
    google.forget_google_tokens();
    let r = gw.post(Shape::OpenAi, &body).await;
    assert_eq!(
        r.status, 401,
        "a token the fake did not mint is refused: {}",
        r.text
    );
    let r = gw.post(Shape::OpenAi, &body).await;
    assert_eq!(r.status, 200, "the refused token was dropped: {}", r.text);
    let exchanges = google
        .requests()
        .iter()
        .filter(|r| r.api == Api::Token)
        .count();
    assert_eq!(exchanges, 2);
}

#[tokio::test]
async fn concurrent_first_calls_share_one_token_exchange() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, false, false).await;
    let body = chat_body(Shape::OpenAi, VERTEX_MODEL, "together", false);
    let calls = (0..8).map(|_| gw.post(Shape::OpenAi, &body));
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let exchanges = google
        .requests()
        .iter()
        .filter(|r| r.api == Api::Token)
        .count();
    assert_eq!(exchanges, 1, "one refresh for the whole burst");
}

#[tokio::test]
async fn gemini_thought_parts_reach_an_anthropic_client_and_responses_clients_are_served() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, false, false).await;
    let r = gw
        .post(
            Shape::Anthropic,
            &chat_body(Shape::Anthropic, GEMINI_MODEL, "[think] ponder", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["content"][0]["type"], "thinking", "{v}");
    assert_eq!(v["content"][1]["text"], "echo: [think] ponder");

    let r = send_json(
        &gw,
        "/v1/responses",
        &json!({"model": GEMINI_MODEL, "input": "via responses"}),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert!(r.1.contains("echo: via responses"), "{}", r.1);
}

async fn send_json(gw: &TestGateway, path: &str, body: &Value) -> (u16, String) {
    let r = gw
        .client()
        .post(gw.url(path))
        .bearer_auth(&gw.key.token)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_gemini_stream_cut_before_its_finish_reason_ends_in_an_error_frame() {
    let google = google().await;
    let (gw, _dir) = gateway(&google, false, false).await;
    for shape in SHAPES {
        let r = gw
            .post(
                shape,
                &chat_body(shape, GEMINI_MODEL, "one two three four [cut]", true),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let events = r.events();
        let last = events.last().expect("frames");
        assert!(
            last.data.contains("error"),
            "{shape:?}: no fake clean end: {}",
            r.text
        );
        assert!(
            !r.text.contains("[DONE]") && !r.text.contains("message_stop"),
            "{}",
            r.text
        );
    }
}
