//! Azure OpenAI and the OpenAI-compatible presets (Mistral, Groq, DeepSeek, Together,
//! Fireworks) through the real gateway to the fake upstream: both inbound shapes (and
//! Responses clients, translated), sync and stream, tools, usage and cost, upstream 429/500,
//! bad credentials; Entra ID bearer tokens (static, and the client-credentials flow against
//! the fake token endpoint, cached); registration from the environment alone (gateway
//! process); and the fake's own Azure and Entra protocol.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::fake_upstream::{
    AZURE_AD_TOKEN, AZURE_API_KEY, AZURE_BAD_KEY_MESSAGE, AuthCheck, ENTRA_CLIENT_ID,
    ENTRA_CLIENT_SECRET, ENTRA_TENANT_ID, FakeUpstream, RecordedRequest, TOOL_ARGUMENTS,
};
use metis_tests::gateway::{
    GatewayOptions, chat_body, error_message, error_type, reply_text, send, stop_reason,
    stream_text, weather_tools,
};
use metis_tests::process::{GatewayProcess, issue_key};
use metis_tests::{Shape, SseEvent, TestGateway};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU32, Ordering};

/// The key the presets present to the fake's OpenAI paths.
const PRESET_KEY: &str = "fake-preset-key";
/// The Azure deployment the tests call: named after its model, so the built-in price applies.
const DEPLOYMENT: &str = "gpt-4o-mini";
const SHAPES: [Shape; 2] = [Shape::OpenAi, Shape::Anthropic];
/// Each preset and a model of it with a built-in price.
const PRESETS: [(&str, &str); 5] = [
    ("mistral", "mistral-small-latest"),
    ("groq", "llama-3.3-70b-versatile"),
    ("deepseek", "deepseek-chat"),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    (
        "fireworks",
        "accounts/fireworks/models/llama-v3p3-70b-instruct",
    ),
];

fn nonce() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "az{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A gateway whose `azure` provider (and `azure-bad`, with a wrong key) and every preset
/// point at `fake`.
async fn gateway(fake: &FakeUpstream, extra_args: &[&str]) -> TestGateway {
    let base = fake.base_url();
    let mut toml = format!(
        "[providers.azure]\nbase_url = \"{base}\"\napi_key = \"{AZURE_API_KEY}\"\n\
         api_version = \"2024-10-21\"\n\n\
         [providers.azure-bad]\nkind = \"azure\"\nbase_url = \"{base}\"\napi_key = \"not-the-azure-key\"\n\n"
    );
    for (name, _) in PRESETS {
        toml.push_str(&format!(
            "[providers.{name}]\nbase_url = \"{base}/v1\"\napi_key = \"{PRESET_KEY}\"\n\n"
        ));
    }
    TestGateway::spawn_with(GatewayOptions {
        config_toml: Some(toml),
        extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
        ..GatewayOptions::default()
    })
    .await
    .expect("gateway starts")
}

async fn fake() -> FakeUpstream {
    FakeUpstream::start("unused-anthropic-key", PRESET_KEY)
        .await
        .expect("fake starts")
}

fn azure_model() -> String {
    format!("azure:{DEPLOYMENT}")
}

fn with_tools(shape: Shape, model: &str, text: &str, stream: bool) -> Value {
    let mut body = chat_body(shape, model, text, stream);
    body["tools"] = weather_tools(shape);
    body
}

/// The single recorded request whose body mentions `marker`.
fn request_with(fake: &FakeUpstream, marker: &str) -> RecordedRequest {
    let found: Vec<RecordedRequest> = fake
        .requests()
        .into_iter()
        .filter(|r| r.body.to_string().contains(marker))
        .collect();
    assert_eq!(found.len(), 1, "one upstream request carries {marker}");
    found.into_iter().next().unwrap()
}

fn assert_azure_call(rec: &RecordedRequest, path_tail: &str) {
    assert_eq!(
        rec.path,
        format!("/openai/deployments/{DEPLOYMENT}/{path_tail}")
    );
    assert_eq!(rec.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(rec.auth, AuthCheck::Matched);
    assert_eq!(rec.header("api-key"), Some("<matched>"));
    assert_eq!(
        rec.header("authorization"),
        None,
        "the gateway key never reaches Azure"
    );
}

/// The tool call of a streamed reply: (name, concatenated arguments).
fn streamed_tool_call(shape: Shape, events: &[SseEvent]) -> (String, String) {
    let mut name = String::new();
    let mut args = String::new();
    for d in events.iter().filter_map(SseEvent::json) {
        match shape {
            Shape::OpenAi => {
                let tc = &d["choices"][0]["delta"]["tool_calls"][0];
                if let Some(n) = tc["function"]["name"].as_str() {
                    name.push_str(n);
                }
                if let Some(a) = tc["function"]["arguments"].as_str() {
                    args.push_str(a);
                }
            }
            Shape::Anthropic => {
                if d["type"] == "content_block_start" && d["content_block"]["type"] == "tool_use" {
                    name.push_str(d["content_block"]["name"].as_str().unwrap_or_default());
                }
                if d["delta"]["type"] == "input_json_delta" {
                    args.push_str(d["delta"]["partial_json"].as_str().unwrap_or_default());
                }
            }
        }
    }
    (name, args)
}

/// The id of the tool call in a sync reply.
fn tool_call_id(shape: Shape, v: &Value) -> String {
    match shape {
        Shape::OpenAi => v["choices"][0]["message"]["tool_calls"][0]["id"].clone(),
        Shape::Anthropic => v["content"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "tool_use")
            .unwrap()["id"]
            .clone(),
    }
    .as_str()
    .expect("a tool call id")
    .to_owned()
}

/// The conversation continued with the tool's result.
fn tool_result_turn(shape: Shape, model: &str, first: &str, id: &str, result: &str) -> Value {
    let mut body = with_tools(shape, model, first, false);
    let args: Value = serde_json::from_str(TOOL_ARGUMENTS).unwrap();
    let turns = match shape {
        Shape::OpenAi => json!([
            {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
                "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}]},
            {"role": "tool", "tool_call_id": id, "content": result},
        ]),
        Shape::Anthropic => json!([
            {"role": "assistant", "content": [{"type": "tool_use", "id": id,
                "name": "get_weather", "input": args}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id,
                "content": result}]},
        ]),
    };
    let messages = body["messages"].as_array_mut().unwrap();
    messages.extend(turns.as_array().unwrap().iter().cloned());
    body
}

/// Text, sync and streamed, in both shapes; and the tool loop (a call, then its result),
/// sync and streamed, against `model`.
async fn text_and_tools(gw: &TestGateway, model: &str) -> Vec<String> {
    let mut markers = Vec::new();
    for shape in SHAPES {
        let n = nonce();
        let r = gw
            .post(
                shape,
                &chat_body(shape, model, &format!("hello {n}"), false),
            )
            .await;
        assert_eq!(r.status, 200, "{model} {shape:?}: {}", r.text);
        assert_eq!(reply_text(shape, &r.json()), format!("echo: hello {n}"));
        markers.push(n);

        let n = nonce();
        let r = gw
            .post(
                shape,
                &chat_body(shape, model, &format!("stream {n}"), true),
            )
            .await;
        assert_eq!(r.status, 200, "{model} {shape:?}: {}", r.text);
        assert!(r.content_type().starts_with("text/event-stream"));
        assert_eq!(
            stream_text(shape, &r.events()),
            format!("echo: stream {n}"),
            "{model} {shape:?}: {}",
            r.text
        );
        markers.push(n);

        let n = nonce();
        let first = format!("[tool:get_weather] weather {n}");
        let r = gw
            .post(shape, &with_tools(shape, model, &first, false))
            .await;
        assert_eq!(r.status, 200, "{model} {shape:?}: {}", r.text);
        let v = r.json();
        let expected_stop = match shape {
            Shape::OpenAi => "tool_calls",
            Shape::Anthropic => "tool_use",
        };
        assert_eq!(stop_reason(shape, &v), expected_stop);
        let id = tool_call_id(shape, &v);
        let r = gw
            .post(shape, &tool_result_turn(shape, model, &first, &id, "sunny"))
            .await;
        assert_eq!(r.status, 200, "{model} {shape:?}: {}", r.text);
        assert_eq!(reply_text(shape, &r.json()), "tool result: sunny");
        markers.push(n);

        let n = nonce();
        let r = gw
            .post(
                shape,
                &with_tools(shape, model, &format!("[tool:get_weather] s {n}"), true),
            )
            .await;
        assert_eq!(r.status, 200, "{model} {shape:?}: {}", r.text);
        assert_eq!(
            streamed_tool_call(shape, &r.events()),
            ("get_weather".to_owned(), TOOL_ARGUMENTS.to_owned()),
            "{model} {shape:?}: {}",
            r.text
        );
        markers.push(n);
    }
    markers
}

/// Every completed call of `provider` is priced (cost > 0) and counted tokens.
fn assert_priced(gw: &TestGateway, provider: &str, at_least: usize) {
    let completed: Vec<_> = gw
        .events_of("llm.call_completed")
        .unwrap()
        .into_iter()
        .filter(|e| e.payload["provider"] == provider)
        .collect();
    assert!(
        completed.len() >= at_least,
        "{provider}: {} completed calls",
        completed.len()
    );
    for e in &completed {
        assert!(
            e.payload["cost_usd"].as_f64().unwrap() > 0.0,
            "{provider}: {}",
            e.payload
        );
        assert!(e.payload["input_tokens"].as_u64().unwrap() > 0);
        assert!(e.payload["output_tokens"].as_u64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_both_shapes_sync_stream_and_tools_with_cost() {
    let fake = fake().await;
    let mut gw = gateway(&fake, &[]).await;
    let markers = text_and_tools(&gw, &azure_model()).await;
    // Text calls and first tool turns reach the deployment URL with api-key auth only.
    for n in &markers {
        let recs: Vec<RecordedRequest> = fake
            .requests()
            .into_iter()
            .filter(|r| r.body.to_string().contains(n.as_str()))
            .collect();
        assert!(!recs.is_empty(), "{n} reached Azure");
        for rec in &recs {
            assert_azure_call(rec, "chat/completions");
        }
    }
    // Streams ask for usage, so a streamed call is priced like a sync one.
    let streamed = request_with(&fake, &format!("stream {}", markers[1]));
    assert_eq!(streamed.body["stream"], true);
    gw.stop().await.unwrap();
    // 2 shapes x (text, stream, tool call, tool result, streamed tool call).
    assert_priced(&gw, "azure", 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_embeddings_use_the_deployment_url() {
    let fake = fake().await;
    let gw = gateway(&fake, &[]).await;
    let n = nonce();
    let r = send(
        gw.client()
            .post(gw.url("/v1/embeddings"))
            .bearer_auth(&gw.key.token)
            .json(&json!({"model": "azure:text-embedding-3-small", "input": format!("embed {n}")})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        !r.json()["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let rec = request_with(&fake, &n);
    assert_eq!(
        rec.path,
        "/openai/deployments/text-embedding-3-small/embeddings"
    );
    assert_eq!(rec.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(rec.auth, AuthCheck::Matched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_upstream_429_and_500_reach_the_client_as_such() {
    let fake = fake().await;
    let gw = gateway(&fake, &["--upstream-retries", "0"]).await;
    let model = azure_model();
    for shape in SHAPES {
        let r = gw
            .post(shape, &chat_body(shape, &model, "[status:429] busy", false))
            .await;
        assert_eq!(r.status, 429, "{shape:?}: {}", r.text);
        let v = r.json();
        match shape {
            // Same shape: Azure's own body, with its quota message.
            Shape::OpenAi => assert!(
                error_message(&v).contains("have exceeded token rate limit"),
                "{}",
                r.text
            ),
            Shape::Anthropic => assert_eq!(
                error_type(shape, &v).as_deref(),
                Some("rate_limit_error"),
                "{}",
                r.text
            ),
        }
        for stream in [false, true] {
            let r = gw
                .post(
                    shape,
                    &chat_body(shape, &model, "[status:500] broken", stream),
                )
                .await;
            assert!(r.status >= 500, "{shape:?}: {} {}", r.status, r.text);
            assert!(error_type(shape, &r.json()).is_some(), "{}", r.text);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_bad_api_key_is_an_auth_error_without_the_key() {
    let fake = fake().await;
    let gw = gateway(&fake, &[]).await;
    for shape in SHAPES {
        for stream in [false, true] {
            let r = gw
                .post(
                    shape,
                    &chat_body(shape, "azure-bad:gpt-4o-mini", "who am i", stream),
                )
                .await;
            assert_eq!(r.status, 401, "{shape:?}: {}", r.text);
            assert!(!r.text.contains("not-the-azure-key"), "{}", r.text);
            let v = r.json();
            match shape {
                Shape::OpenAi => assert_eq!(error_message(&v), AZURE_BAD_KEY_MESSAGE),
                Shape::Anthropic => assert_eq!(
                    error_type(shape, &v).as_deref(),
                    Some("authentication_error"),
                    "{}",
                    r.text
                ),
            }
        }
    }
    let recs = fake.requests();
    assert!(!recs.is_empty());
    assert!(recs.iter().all(|r| r.auth == AuthCheck::Mismatched));
    assert!(
        recs.iter()
            .all(|r| r.header("api-key") == Some("<mismatched>"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_both_shapes_sync_stream_and_tools_with_cost() {
    let fake = fake().await;
    let mut gw = gateway(&fake, &[]).await;
    for (name, model) in PRESETS {
        let canonical = format!("{name}:{model}");
        let markers = text_and_tools(&gw, &canonical).await;
        let rec = request_with(&fake, &markers[0]);
        assert_eq!(rec.path, "/v1/chat/completions", "{name}");
        assert_eq!(rec.body["model"], model, "{name}: the upstream model id");
        assert_eq!(rec.auth, AuthCheck::Matched, "{name}");
    }
    gw.stop().await.unwrap();
    for (name, _) in PRESETS {
        assert_priced(&gw, name, 10);
    }
}

// ---------------------------------------------------------------------------------------------
// Entra ID and registration from the environment (the gateway binary, with its own env)
// ---------------------------------------------------------------------------------------------

/// A gateway process with `config` (if any) and `env`, and a key for it.
async fn process_gateway(
    dir: &std::path::Path,
    config: Option<&str>,
    env: &[(&str, &str)],
) -> (GatewayProcess, String) {
    let storage = vec!["--data-dir".to_owned(), dir.display().to_string()];
    let (_, token) = issue_key(&storage, "azure-test", &[]).unwrap();
    let mut args = vec!["--port".to_owned(), "0".to_owned()];
    args.extend(storage);
    // No Anthropic/OpenAI credentials: only what the test configures is live.
    args.extend(["--upstream-retries".to_owned(), "0".to_owned()]);
    if let Some(text) = config {
        let path = dir.join("azure-config.toml");
        std::fs::write(&path, text).unwrap();
        args.push("--config".to_owned());
        args.push(path.display().to_string());
    }
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let gw = GatewayProcess::spawn_async(args, env).await.unwrap();
    (gw, token)
}

async fn call(gw: &GatewayProcess, token: &str, shape: Shape, body: &Value) -> metis_tests::Reply {
    send(
        reqwest::Client::new()
            .post(gw.url_of(shape.gateway_path()))
            .bearer_auth(token)
            .header("anthropic-version", "2023-06-01")
            .json(body),
    )
    .await
}

fn client_credentials_config(fake: &FakeUpstream, secret_env: &str) -> String {
    format!(
        "[providers.azure]\nbase_url = \"{base}\"\ntenant_id = \"{ENTRA_TENANT_ID}\"\n\
         client_id = \"{ENTRA_CLIENT_ID}\"\nclient_secret_env = \"{secret_env}\"\n\
         authority_url = \"{base}\"\n",
        base = fake.base_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_entra_client_credentials_token_is_fetched_once_and_reused() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let config = client_credentials_config(&fake, "METIS_TEST_AZURE_SECRET");
    let (mut gw, token) = process_gateway(
        dir.path(),
        Some(&config),
        &[("METIS_TEST_AZURE_SECRET", ENTRA_CLIENT_SECRET)],
    )
    .await;
    let model = azure_model();
    for (shape, stream) in [
        (Shape::OpenAi, false),
        (Shape::Anthropic, true),
        (Shape::Anthropic, false),
        (Shape::OpenAi, true),
    ] {
        let n = nonce();
        let r = call(
            &gw,
            &token,
            shape,
            &chat_body(shape, &model, &format!("hi {n}"), stream),
        )
        .await;
        assert_eq!(r.status, 200, "{shape:?} {stream}: {}", r.text);
        let rec = request_with(&fake, &n);
        assert_eq!(rec.auth, AuthCheck::Matched);
        assert_eq!(rec.header("authorization"), Some("<matched>"));
        assert_eq!(rec.header("api-key"), None);
    }
    assert_eq!(
        fake.azure_token_requests(),
        1,
        "one token serves every call until it is due for refresh"
    );
    let stderr = gw.stderr();
    assert!(
        !stderr.contains(ENTRA_CLIENT_SECRET),
        "the secret is never logged"
    );
    gw.stop(std::time::Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_entra_bad_client_secret_fails_naming_the_token_error() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let config = client_credentials_config(&fake, "METIS_TEST_AZURE_SECRET");
    let (mut gw, token) = process_gateway(
        dir.path(),
        Some(&config),
        &[("METIS_TEST_AZURE_SECRET", "wrong~secret~value")],
    )
    .await;
    for shape in SHAPES {
        let r = call(
            &gw,
            &token,
            shape,
            &chat_body(shape, &azure_model(), "x", false),
        )
        .await;
        assert!(r.status >= 500, "{shape:?}: {} {}", r.status, r.text);
        assert!(!r.text.contains("wrong~secret~value"));
    }
    assert!(
        fake.requests().is_empty(),
        "no call reached Azure without a token"
    );
    assert!(fake.azure_token_requests() >= 1);
    let stderr = gw.stderr();
    assert!(
        stderr.contains("AADSTS7000215"),
        "the token endpoint's error is logged: {stderr}"
    );
    assert!(
        !stderr.contains("wrong~secret~value"),
        "the secret is never logged"
    );
    gw.stop(std::time::Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_and_a_preset_register_from_the_environment_alone() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let base = fake.base_url();
    // Groq's key comes from GROQ_API_KEY; the section only moves its base URL to the fake.
    let config = format!("[providers.groq]\nbase_url = \"{base}/v1\"\n");
    let (mut gw, token) = process_gateway(
        dir.path(),
        Some(&config),
        &[
            ("AZURE_OPENAI_ENDPOINT", base.as_str()),
            ("AZURE_OPENAI_AD_TOKEN", AZURE_AD_TOKEN),
            ("GROQ_API_KEY", PRESET_KEY),
        ],
    )
    .await;
    for shape in SHAPES {
        let n = nonce();
        let r = call(
            &gw,
            &token,
            shape,
            &chat_body(shape, &azure_model(), &format!("env {n}"), true),
        )
        .await;
        assert_eq!(r.status, 200, "{shape:?}: {}", r.text);
        assert_eq!(stream_text(shape, &r.events()), format!("echo: env {n}"));
        let rec = request_with(&fake, &n);
        assert_eq!(rec.query.as_deref(), Some("api-version=2024-10-21"));
        assert_eq!(rec.header("authorization"), Some("<matched>"));

        let n = nonce();
        let r = call(
            &gw,
            &token,
            shape,
            &chat_body(
                shape,
                "groq:llama-3.3-70b-versatile",
                &format!("groq {n}"),
                false,
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{shape:?}: {}", r.text);
        assert_eq!(request_with(&fake, &n).auth, AuthCheck::Matched);
    }
    assert_eq!(
        fake.azure_token_requests(),
        0,
        "a static token needs no exchange"
    );
    gw.stop(std::time::Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_serves_responses_clients_through_chat_completions() {
    let fake = fake().await;
    let gw = gateway(&fake, &[]).await;
    let n = nonce();
    let r = send(
        gw.client()
            .post(gw.url("/v1/responses"))
            .bearer_auth(&gw.key.token)
            .json(&json!({"model": azure_model(), "input": format!("resp {n}")})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let text: String = r.json()["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|m| m["content"].as_array().unwrap().clone())
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, format!("echo: resp {n}"));
    assert_azure_call(&request_with(&fake, &n), "chat/completions");
}

/// The fake itself speaks Azure's protocol: the Azure-only stream chunk, `api-version`,
/// credential checks with Azure's messages, and Entra's token errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_speaks_azure_and_entra() {
    let fake = fake().await;
    let client = reqwest::Client::new();
    let url = |q: &str| {
        format!(
            "{}/openai/deployments/{DEPLOYMENT}/chat/completions{q}",
            fake.base_url()
        )
    };
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true});
    let r = send(
        client
            .post(url("?api-version=2024-10-21"))
            .header("api-key", AZURE_API_KEY)
            .json(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let first = r.events()[0].json().unwrap();
    assert_eq!(first["choices"], json!([]), "{first}");
    assert!(first["prompt_filter_results"].is_array(), "{first}");
    assert_eq!(stream_text(Shape::OpenAi, &r.events()), "echo: hi");

    let r = send(
        client
            .post(url(""))
            .header("api-key", AZURE_API_KEY)
            .json(&body),
    )
    .await;
    assert_eq!(r.status, 404, "no api-version: {}", r.text);
    let r = send(
        client
            .post(url("?api-version=2024-10-21"))
            .bearer_auth("forged")
            .json(&body),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(error_message(&r.json()).starts_with("Unauthorized. Access token is missing"));

    let token_url = |tenant: &str| format!("{}/{tenant}/oauth2/v2.0/token", fake.base_url());
    let form = |secret: &str, scope: &str| {
        format!(
            "grant_type=client_credentials&client_id={ENTRA_CLIENT_ID}&client_secret={secret}&scope={scope}"
        )
    };
    let scope = "https%3A%2F%2Fcognitiveservices.azure.com%2F.default";
    for (tenant, body, status, error) in [
        (ENTRA_TENANT_ID, form("nope", scope), 401, "invalid_client"),
        (
            "other-tenant",
            form(ENTRA_CLIENT_SECRET, scope),
            400,
            "invalid_tenant",
        ),
        (
            ENTRA_TENANT_ID,
            form(ENTRA_CLIENT_SECRET, "openid"),
            400,
            "invalid_scope",
        ),
    ] {
        let r = send(
            client
                .post(token_url(tenant))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await;
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.json()["error"], error);
    }
    let r = send(
        client
            .post(token_url(ENTRA_TENANT_ID))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(ENTRA_CLIENT_SECRET, scope)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let r = send(
        client
            .post(url("?api-version=2024-10-21"))
            .bearer_auth(&token)
            .json(&body),
    )
    .await;
    assert_eq!(r.status, 200, "a minted token is accepted: {}", r.text);
    assert_eq!(fake.azure_token_requests(), 4);
}
