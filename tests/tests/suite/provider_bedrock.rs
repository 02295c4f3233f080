//! Amazon Bedrock through the real gateway: a `[providers.bedrock]` section pointed at the fake
//! Bedrock (which verifies SigV4 and speaks the binary event stream), driven by OpenAI and
//! Anthropic clients, sync and stream, with tools, usage and cost, error mapping, bad
//! signatures and web-identity (STS) credentials.
#![expect(
    clippy::expect_used,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::fake_upstream::{
    Api, AuthCheck, BEDROCK_ACCESS_KEY_ID, BEDROCK_SECRET_ACCESS_KEY, CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS, STS_ACCESS_KEY_ID, TOOL_ARGUMENTS, WEB_IDENTITY_TOKEN,
};
use metis_tests::gateway::{
    chat_body, error_type, reply_text, stop_reason, stream_text, tool_call_of, weather_tools,
};
use metis_tests::{GatewayOptions, RecordedRequest, Shape, TestGateway};
use serde_json::{Value, json};

const MODEL: &str = "bedrock:anthropic.claude-haiku-4-5-20251001-v1:0";
const UPSTREAM_PATH: &str = "/v1/model/anthropic.claude-haiku-4-5-20251001-v1%3A0/converse";
const SHAPES: [Shape; 2] = [Shape::OpenAi, Shape::Anthropic];

fn static_config(secret: &str) -> String {
    format!(
        r#"
[providers.bedrock]
region = "us-east-1"
base_url = "{{fake_openai_url}}"
access_key_id = "{BEDROCK_ACCESS_KEY_ID}"
secret_access_key = "{secret}"
"#
    )
}

async fn gateway_with(config: String, extra_args: &[&str]) -> TestGateway {
    TestGateway::spawn_with(GatewayOptions {
        config_toml: Some(config),
        extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
        ..GatewayOptions::default()
    })
    .await
    .expect("gateway starts")
}

async fn gateway() -> TestGateway {
    gateway_with(static_config(BEDROCK_SECRET_ACCESS_KEY), &[]).await
}

fn converse_requests(gw: &TestGateway) -> Vec<RecordedRequest> {
    gw.upstream
        .requests()
        .into_iter()
        .filter(|r| matches!(r.api, Api::Converse | Api::ConverseStream))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_text_in_both_shapes_is_signed_and_translated() {
    let gw = gateway().await;
    for shape in SHAPES {
        let r = gw
            .post(shape, &chat_body(shape, MODEL, "hello bedrock", false))
            .await;
        assert_eq!(r.status, 200, "{shape:?}: {}", r.text);
        let v = r.json();
        assert_eq!(reply_text(shape, &v), "echo: hello bedrock", "{shape:?}");
        assert_eq!(v["model"], MODEL, "the client's model string is echoed");
    }
    let reqs = converse_requests(&gw);
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.path, UPSTREAM_PATH, "model id percent-encoded in the URL");
        assert_eq!(r.auth, AuthCheck::Matched, "SigV4 verified by the fake");
        assert_eq!(r.header("authorization"), Some("<matched>"));
        assert!(r.body.get("model").is_none() && r.body.get("stream").is_none());
        assert_eq!(r.body["messages"][0]["content"][0]["text"], "hello bedrock");
        assert!(r.body["inferenceConfig"]["maxTokens"].as_u64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_both_shapes_decode_the_event_stream() {
    let gw = gateway().await;
    for shape in SHAPES {
        // `[split]`: the binary frames arrive in 7-byte pieces.
        for text in ["stream one two three four", "[split] split five six seven"] {
            let r = gw.post(shape, &chat_body(shape, MODEL, text, true)).await;
            assert_eq!(r.status, 200, "{shape:?}: {}", r.text);
            assert!(r.content_type().starts_with("text/event-stream"));
            assert_eq!(
                stream_text(shape, &r.events()),
                format!("echo: {text}"),
                "{shape:?}"
            );
        }
    }
    let reqs = converse_requests(&gw);
    assert_eq!(reqs.len(), 4);
    assert!(
        reqs.iter()
            .all(|r| r.api == Api::ConverseStream && r.auth == AuthCheck::Matched)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_then_tool_result_in_both_shapes() {
    let gw = gateway().await;
    for shape in SHAPES {
        let question = "[tool:get_weather] weather in Paris?";
        let mut body = chat_body(shape, MODEL, question, false);
        body["tools"] = weather_tools(shape);
        let r = gw.post(shape, &body).await;
        assert_eq!(r.status, 200, "{shape:?}: {}", r.text);
        let first = r.json();
        let expected_stop = match shape {
            Shape::OpenAi => "tool_calls",
            Shape::Anthropic => "tool_use",
        };
        assert_eq!(stop_reason(shape, &first), expected_stop);
        let (id, name, args) = tool_call_of(shape, &first);
        assert_eq!(name, "get_weather");
        assert_eq!(args, serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap());
        body["messages"] = match shape {
            Shape::OpenAi => json!([
                {"role": "user", "content": question},
                first["choices"][0]["message"].clone(),
                {"role": "tool", "tool_call_id": id, "content": "sunny"},
            ]),
            Shape::Anthropic => json!([
                {"role": "user", "content": question},
                {"role": "assistant", "content": first["content"].clone()},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "sunny"}]},
            ]),
        };
        let r = gw.post(shape, &body).await;
        assert_eq!(r.status, 200, "{shape:?}: {}", r.text);
        assert_eq!(reply_text(shape, &r.json()), "tool result: sunny");
        // The fake refuses a toolResult whose id no preceding toolUse has, and tool blocks
        // without toolConfig, as Bedrock does: reaching here means the ids paired up.
        let up = converse_requests(&gw).pop().unwrap();
        assert_eq!(
            up.body["toolConfig"]["tools"][0]["toolSpec"]["name"],
            "get_weather"
        );
        let msgs = up.body["messages"].as_array().unwrap();
        let call = &msgs[1]["content"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b.get("toolUse").is_some())
            .unwrap()["toolUse"];
        assert_eq!(
            msgs[2]["content"][0]["toolResult"]["toolUseId"],
            call["toolUseId"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_tool_call_in_both_shapes() {
    let gw = gateway().await;
    for shape in SHAPES {
        let mut body = chat_body(shape, MODEL, "[tool:get_weather] stream it", true);
        body["tools"] = weather_tools(shape);
        let r = gw.post(shape, &body).await;
        assert_eq!(r.status, 200, "{shape:?}: {}", r.text);
        let events = r.events();
        let (name, args): (String, String) = match shape {
            Shape::OpenAi => {
                let mut name = String::new();
                let mut args = String::new();
                for e in &events {
                    let Some(v) = e.json() else { continue };
                    let call = &v["choices"][0]["delta"]["tool_calls"][0];
                    if let Some(n) = call["function"]["name"].as_str() {
                        name.push_str(n);
                    }
                    if let Some(a) = call["function"]["arguments"].as_str() {
                        args.push_str(a);
                    }
                }
                (name, args)
            }
            Shape::Anthropic => {
                let mut name = String::new();
                let mut args = String::new();
                for e in &events {
                    let Some(v) = e.json() else { continue };
                    if v["type"] == "content_block_start"
                        && v["content_block"]["type"] == "tool_use"
                    {
                        name = v["content_block"]["name"].as_str().unwrap().to_owned();
                    }
                    if v["delta"]["type"] == "input_json_delta" {
                        args.push_str(v["delta"]["partial_json"].as_str().unwrap());
                    }
                }
                (name, args)
            }
        };
        assert_eq!(name, "get_weather", "{shape:?}: {}", r.text);
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap()
        );
        let stop_seen = events.iter().filter_map(|e| e.json()).any(|v| {
            v["choices"][0]["finish_reason"] == "tool_calls"
                || v["delta"]["stop_reason"] == "tool_use"
        });
        assert!(stop_seen, "{shape:?}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_cost_are_recorded_with_the_bedrock_price() {
    let mut gw = gateway().await;
    let r = gw
        .post(
            Shape::Anthropic,
            &chat_body(Shape::Anthropic, MODEL, "[cache] count me", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let usage = &r.json()["usage"];
    assert_eq!(usage["cache_read_input_tokens"], CACHE_READ_TOKENS);
    assert_eq!(usage["cache_creation_input_tokens"], CACHE_WRITE_TOKENS);
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, MODEL, "[cache] stream me", true),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    gw.stop().await.unwrap();
    let completed = gw.events_of("llm.call_completed").unwrap();
    assert_eq!(completed.len(), 2);
    for e in &completed {
        let p = &e.payload;
        assert_eq!(p["provider"], "bedrock", "{p}");
        assert!(p["input_tokens"].as_u64().unwrap() > 0, "{p}");
        assert!(p["output_tokens"].as_u64().unwrap() > 0, "{p}");
        assert_eq!(p["cached_input_tokens"], CACHE_READ_TOKENS, "{p}");
        assert_eq!(p["cache_creation_input_tokens"], CACHE_WRITE_TOKENS, "{p}");
        // Haiku 4.5 on Bedrock: $1 / $5 / $0.10 / $1.25 per million tokens.
        let input = p["input_tokens"].as_f64().unwrap();
        let output = p["output_tokens"].as_f64().unwrap();
        let expected = (input * 1.0
            + output * 5.0
            + CACHE_READ_TOKENS as f64 * 0.1
            + CACHE_WRITE_TOKENS as f64 * 1.25)
            / 1e6;
        let cost = p["cost_usd"].as_f64().unwrap();
        assert!(
            cost > 0.0 && (cost - expected).abs() < 1e-9,
            "{cost} vs {expected}: {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_map_to_client_statuses() {
    let gw = gateway_with(
        static_config(BEDROCK_SECRET_ACCESS_KEY),
        &["--upstream-retries", "0"],
    )
    .await;
    for shape in SHAPES {
        let r = gw
            .post(
                shape,
                &chat_body(shape, MODEL, "[status:429] slow down", false),
            )
            .await;
        assert_eq!(r.status, 429, "{shape:?}: {}", r.text);
        let v = r.json();
        let expected = match shape {
            Shape::OpenAi => "rate_limit_error",
            Shape::Anthropic => "rate_limit_error",
        };
        assert_eq!(
            error_type(shape, &v).as_deref(),
            Some(expected),
            "{}",
            r.text
        );
        assert!(r.text.contains("ThrottlingException"), "{}", r.text);
        let r = gw
            .post(shape, &chat_body(shape, MODEL, "[status:500] broken", true))
            .await;
        assert_eq!(r.status, 503, "{shape:?}: {}", r.text);
        assert!(r.text.contains("InternalServerException"), "{}", r.text);
    }
    assert_eq!(converse_requests(&gw).len(), 4, "no retries were allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_signed_again_and_succeeds() {
    let gw = gateway().await;
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, MODEL, "[fail-once:503] again", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let reqs = converse_requests(&gw);
    assert_eq!(reqs.len(), 2, "one 503, then the retry");
    assert!(reqs.iter().all(|r| r.auth == AuthCheck::Matched));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_an_auth_error() {
    let gw = gateway_with(static_config("not-the-secret"), &[]).await;
    for shape in SHAPES {
        let r = gw
            .post(shape, &chat_body(shape, MODEL, "hello", false))
            .await;
        assert_eq!(r.status, 401, "{shape:?}: {}", r.text);
        // Bedrock names the failure (InvalidSignatureException) only in a header the shared
        // transport does not pass on; the 403 status is what classifies it.
        assert!(r.text.contains("HTTP 403"), "{}", r.text);
        assert!(
            r.text.contains("upstream_auth_failed") || r.text.contains("authentication_error"),
            "{}",
            r.text
        );
        assert!(!r.text.contains("not-the-secret"));
    }
    let reqs = converse_requests(&gw);
    assert_eq!(reqs.len(), 2, "an auth error is not retried");
    assert!(reqs.iter().all(|r| r.auth == AuthCheck::Mismatched));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_credentials_come_from_sts_and_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{WEB_IDENTITY_TOKEN}\n")).unwrap();
    let config = format!(
        r#"
[providers.bedrock]
region = "us-east-1"
base_url = "{{fake_openai_url}}"
role_arn = "arn:aws:iam::123456789012:role/bedrock"
web_identity_token_file = "{}"
sts_endpoint = "{{fake_openai_url}}/_sts"
"#,
        token_file.display()
    );
    let gw = gateway_with(config, &[]).await;
    for shape in SHAPES {
        for stream in [false, true] {
            let r = gw
                .post(shape, &chat_body(shape, MODEL, "via irsa", stream))
                .await;
            assert_eq!(r.status, 200, "{shape:?}: {}", r.text);
        }
    }
    let reqs = gw.upstream.requests();
    let sts: Vec<_> = reqs
        .iter()
        .filter(|r| r.api == Api::AssumeRoleWithWebIdentity)
        .collect();
    assert_eq!(
        sts.len(),
        1,
        "credentials are cached until shortly before expiry"
    );
    let calls = converse_requests(&gw);
    assert_eq!(calls.len(), 4);
    for c in &calls {
        assert_eq!(c.auth, AuthCheck::Matched);
        assert_eq!(c.header("x-amz-security-token"), Some("<present>"));
    }
    assert!(!STS_ACCESS_KEY_ID.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_web_identity_token_names_sts() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "expired-token").unwrap();
    let config = format!(
        r#"
[providers.bedrock]
region = "us-east-1"
base_url = "{{fake_openai_url}}"
role_arn = "arn:aws:iam::123456789012:role/bedrock"
web_identity_token_file = "{}"
sts_endpoint = "{{fake_openai_url}}/_sts"
"#,
        token_file.display()
    );
    let gw = gateway_with(config, &["--upstream-retries", "0"]).await;
    let r = gw
        .post(Shape::OpenAi, &chat_body(Shape::OpenAi, MODEL, "hi", false))
        .await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert!(r.text.contains("InvalidIdentityToken"), "{}", r.text);
    assert!(!r.text.contains("expired-token"));
    assert!(converse_requests(&gw).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mid_stream_exception_ends_the_stream_with_an_error() {
    let mut gw = gateway().await;
    let r = gw
        .post(
            Shape::Anthropic,
            &chat_body(
                Shape::Anthropic,
                MODEL,
                "[stream-error] one two three four",
                true,
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = r.events();
    assert_eq!(
        events.last().and_then(|e| e.event.as_deref()),
        Some("error"),
        "{}",
        r.text
    );
    assert!(
        !events
            .iter()
            .any(|e| e.event.as_deref() == Some("message_stop")),
        "no fake clean end: {}",
        r.text
    );
    gw.stop().await.unwrap();
    let failed = gw.events_of("llm.call_failed").unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].payload["error_class"], "server_error",
        "{}",
        failed[0].payload
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_prompt_is_a_context_overflow() {
    let mut gw = gateway().await;
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, MODEL, "[overflow] a very long prompt", false),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("ValidationException"), "{}", r.text);
    gw.stop().await.unwrap();
    let failed = gw.events_of("llm.call_failed").unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].payload["error_class"], "context_overflow",
        "{}",
        failed[0].payload
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_event_stream_frame_ends_the_stream_with_an_error() {
    let mut gw = gateway().await;
    // `[garbage]`: after two deltas the fake sends bytes whose prelude CRC does not match.
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, MODEL, "[garbage] one two three four", true),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.events()
            .iter()
            .filter_map(|e| e.json())
            .any(|v| v.get("error").is_some()),
        "the stream ends with an error chunk: {}",
        r.text
    );
    assert!(!r.text.contains("[DONE]"), "no clean end: {}", r.text);
    gw.stop().await.unwrap();
    let failed = gw.events_of("llm.call_failed").unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].payload["error_class"], "network",
        "{}",
        failed[0].payload
    );
}
