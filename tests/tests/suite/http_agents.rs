//! What coding agents and the newer SDK surfaces need from the gateway (issue 11), through the
//! real server and the fake upstream:
//! - `POST /v1/responses` forwarded natively, translated to Chat Completions and to Anthropic,
//!   sync and SSE with tool calls (the upstream request's shape, the client's event sequence,
//!   ids and usage); the stateless 400 for `previous_response_id`; Codex's tool list;
//! - bad Responses input: a clear 400 (413 when oversized) in the OpenAI envelope, recorded as
//!   nothing but what it is;
//! - same-shape fidelity: provider headers and query string forwarded (credentials never),
//!   upstream error bodies relayed unchanged (and kept out of the trace), Anthropic `system`
//!   messages passed through;
//! - token counting, embeddings, `/v1/models` in both shapes, agent session headers, the 426
//!   for Codex's WebSocket, and the visibility of refused requests (`x-request-id`, one INFO
//!   log line, the bounded unmatched-route metric label).
//!
//! One gateway configuration serves every direction, as in the client tests: `gpt-5` goes to
//! the fake's OpenAI side, which serves the Responses API (`responses_api = true`);
//! `openrouter:gpt-5` goes to the same fake as a Chat-Completions-only upstream; `haiku` goes
//! to its Anthropic side.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::fake_upstream::{
    ANTHROPIC_TOO_LONG_MESSAGE, Api, AuthCheck, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS,
    DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY, OPENAI_CONTEXT_LENGTH_MESSAGE,
    RESPONSES_CONTEXT_LENGTH_MESSAGE, RESPONSES_STREAM_ERROR_MESSAGE, RecordedRequest,
    THINKING_SIGNATURE, THINKING_TEXT, TOOL_ARGUMENTS, estimate_input_tokens,
};
use metis_tests::gateway::{
    EventRow, UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY, error_message, error_type, send,
};
use metis_tests::process::{GatewayProcess, issue_key, upstream_args, upstream_env};
use metis_tests::{FakeUpstream, GatewayOptions, KeySpec, Reply, Shape, SseEvent, TestGateway};
use reqwest::RequestBuilder;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// The gateway, its routes, and request builders
// ---------------------------------------------------------------------------------------------

/// Price of the embeddings model in the test config (USD per million input tokens): high
/// enough that one call costs a visible amount.
const EMBEDDING_PRICE_PER_MTOK: f64 = 20.0;
const EMBEDDING_MODEL: &str = "openai:text-embedding-3-small";

fn agent_config() -> String {
    // `openrouter:gpt-5` has no built-in price; priced here so every route's cost is visible.
    format!(
        "[providers.openai]\nresponses_api = true\n\n\
         [providers.openrouter]\napi_key = \"{UPSTREAM_OPENAI_KEY}\"\nbase_url = \"{{fake_openai_url}}\"\n\n\
         [prices.\"openrouter:gpt-5\"]\ninput_per_mtok = 1.25\noutput_per_mtok = 10.0\n\n\
         [prices.\"{EMBEDDING_MODEL}\"]\ninput_per_mtok = {EMBEDDING_PRICE_PER_MTOK}\noutput_per_mtok = 0.0\n"
    )
}

async fn gateway() -> TestGateway {
    gateway_with(GatewayOptions::default()).await
}

async fn gateway_with(opts: GatewayOptions) -> TestGateway {
    TestGateway::spawn_with(GatewayOptions {
        config_toml: Some(agent_config()),
        ..opts
    })
    .await
    .expect("gateway starts")
}

fn nonce() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "n{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where a Responses request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// Forwarded as is to an upstream serving the Responses API.
    Native,
    /// Translated to Chat Completions.
    Chat,
    /// Translated to Anthropic Messages.
    Anthropic,
}

impl Upstream {
    /// The model a client names to reach this upstream.
    fn model(self) -> &'static str {
        match self {
            Upstream::Native => "gpt-5",
            Upstream::Chat => "openrouter:gpt-5",
            Upstream::Anthropic => "haiku",
        }
    }

    /// The operation the fake records for a model call.
    fn api(self) -> Api {
        match self {
            Upstream::Native => Api::Responses,
            Upstream::Chat => Api::ChatCompletions,
            Upstream::Anthropic => Api::Messages,
        }
    }
}

/// One `#[tokio::test]` per [`Upstream`], each calling `async fn $scenario(up: Upstream)`.
macro_rules! for_each_upstream {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            use super::Upstream;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn native() {
                super::$scenario(Upstream::Native).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn translated_to_chat() {
                super::$scenario(Upstream::Chat).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn translated_to_anthropic() {
                super::$scenario(Upstream::Anthropic).await;
            }
        }
    )+};
}

/// A `POST` to `path` (query string allowed) authenticated as an OpenAI SDK does.
fn openai_post(gw: &TestGateway, path: &str) -> RequestBuilder {
    gw.client().post(gw.url(path)).bearer_auth(&gw.key.token)
}

/// A `POST` to `path` authenticated as the Anthropic SDK does.
fn anthropic_post(gw: &TestGateway, path: &str) -> RequestBuilder {
    gw.client()
        .post(gw.url(path))
        .header("x-api-key", &gw.key.token)
        .header("anthropic-version", "2023-06-01")
}

async fn responses(gw: &TestGateway, body: &Value) -> Reply {
    send(openai_post(gw, "/v1/responses").json(body)).await
}

fn weather_tool() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}})
}

/// A Responses request with instructions, the weather tool and an output limit.
fn responses_body(model: &str, input: Value, stream: bool) -> Value {
    json!({
        "model": model,
        "input": input,
        "instructions": "Answer briefly.",
        "tools": [weather_tool()],
        "max_output_tokens": 256,
        "stream": stream,
        "store": false,
    })
}

fn anthropic_body(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 128,
           "messages": [{"role": "user", "content": text}]})
}

fn chat_body(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The only recorded upstream request (fails when there is not exactly one).
fn only_request(gw: &TestGateway) -> RecordedRequest {
    let reqs = gw.upstream.requests();
    assert_eq!(reqs.len(), 1, "one upstream request: {reqs:#?}");
    reqs.into_iter().next().unwrap()
}

/// The most recent recorded upstream request.
fn last_request(gw: &TestGateway) -> RecordedRequest {
    gw.upstream.requests().pop().expect("an upstream request")
}

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The trace events of one type, after stopping the gateway (the writer batches).
async fn stopped_events(gw: &mut TestGateway) -> Vec<EventRow> {
    gw.stop().await.expect("gateway stops");
    gw.events().expect("trace readable")
}

fn of_type<'a>(events: &'a [EventRow], ty: &str) -> Vec<&'a EventRow> {
    events.iter().filter(|e| e.event_type == ty).collect()
}

/// A 400/404/413/… in the OpenAI envelope (`invalid_request_error` unless told otherwise);
/// returns the message.
fn assert_openai_error(r: &Reply, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.text);
    assert!(
        r.content_type().starts_with("application/json"),
        "{}",
        r.content_type()
    );
    let v = r.json();
    assert!(
        error_type(Shape::OpenAi, &v).is_some(),
        "an OpenAI error envelope: {}",
        r.text
    );
    let message = error_message(&v);
    assert!(!message.is_empty(), "{}", r.text);
    message
}

// ---------------------------------------------------------------------------------------------
// Reading Responses answers
// ---------------------------------------------------------------------------------------------

/// The output items of `ty` in a response object.
fn items_of<'a>(response: &'a Value, ty: &str) -> Vec<&'a Value> {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["type"] == ty)
        .collect()
}

/// The text of a response's message items.
fn output_text(response: &Value) -> String {
    items_of(response, "message")
        .into_iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter_map(|p| p["text"].as_str())
        .collect()
}

fn assert_usage(response: &Value) {
    let u = &response["usage"];
    let input = u["input_tokens"].as_u64().unwrap_or(0);
    let output = u["output_tokens"].as_u64().unwrap_or(0);
    assert!(input > 0 && output > 0, "usage: {u}");
    assert_eq!(u["total_tokens"].as_u64(), Some(input + output), "{u}");
    assert!(u["input_tokens_details"]["cached_tokens"].is_u64(), "{u}");
    assert!(
        u["output_tokens_details"]["reasoning_tokens"].is_u64(),
        "{u}"
    );
}

/// The weather call of a response, checked: `fc_` item id, `call_` call id, the scripted
/// arguments.
fn weather_call(response: &Value) -> Value {
    let calls = items_of(response, "function_call");
    assert_eq!(calls.len(), 1, "one function call: {response}");
    let call = calls[0].clone();
    assert_eq!(call["name"], "get_weather");
    assert_eq!(
        parse_json(call["arguments"].as_str().unwrap()),
        parse_json(TOOL_ARGUMENTS)
    );
    assert!(call["id"].as_str().unwrap().starts_with("fc_"), "{call}");
    assert!(
        call["call_id"].as_str().unwrap().starts_with("call_"),
        "{call}"
    );
    call
}

/// Check the frame discipline of a Responses stream and return each frame's data: every frame
/// is named after its `type`, `sequence_number`s count from 0, it opens with
/// `response.created` + `response.in_progress` and its last response event is `terminal`
/// (`response.completed`, `response.incomplete`, `response.failed`; only an `error` event may
/// follow, and no `[DONE]`: the Responses API has none). One response id throughout.
fn responses_frames(events: &[SseEvent], terminal: &str) -> Vec<Value> {
    let frames: Vec<Value> = events
        .iter()
        .map(|e| {
            let d = e
                .json()
                .unwrap_or_else(|| panic!("frame data is not JSON: {:?}", e.data));
            assert_eq!(
                e.event.as_deref(),
                d["type"].as_str(),
                "the event name is the data's type: {d}"
            );
            d
        })
        .collect();
    let types: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert!(types.len() >= 4, "{types:?}");
    assert_eq!(&types[..2], ["response.created", "response.in_progress"]);
    let last_response = types
        .iter()
        .rposition(|t| frames_end(t))
        .expect("a terminal response event");
    assert_eq!(types[last_response], terminal, "{types:?}");
    assert!(
        types[last_response + 1..].iter().all(|t| *t == "error"),
        "only an error event may follow: {types:?}"
    );
    for t in [
        "response.completed",
        "response.incomplete",
        "response.failed",
    ] {
        let n = types.iter().filter(|x| **x == t).count();
        assert_eq!(n, usize::from(t == terminal), "{t} in {types:?}");
    }
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["sequence_number"].as_u64(), Some(i as u64), "{f}");
    }
    let id = frames[0]["response"]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!(frames[last_response]["response"]["id"], id.as_str());
    frames
}

/// Whether a response event type ends a response.
fn frames_end(ty: &str) -> bool {
    matches!(
        ty,
        "response.completed" | "response.incomplete" | "response.failed"
    )
}

/// The response object of a stream's terminal event.
fn terminal_response(frames: &[Value]) -> &Value {
    let last = frames
        .iter()
        .rev()
        .find(|f| f["type"].as_str().is_some_and(frames_end))
        .expect("a terminal event");
    &last["response"]
}

fn frames_of<'a>(frames: &'a [Value], ty: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == ty).collect()
}

// ---------------------------------------------------------------------------------------------
// POST /v1/responses in each direction
// ---------------------------------------------------------------------------------------------

for_each_upstream!(
    sync_tool_call_round_trip,
    streamed_tool_call,
    streamed_text,
    previous_response_id_is_forwarded_or_refused,
    codex_tools_are_flattened_or_forwarded,
    cached_usage_adds_up_in_the_answer_and_the_trace,
    token_limit_makes_the_response_incomplete,
    upstream_failure_mid_stream_ends_with_response_failed,
);

/// The request the fake received has the shape of its API, carrying the client's
/// instructions, tool, output limit and text.
fn assert_translated_request(up: Upstream, rec: &RecordedRequest, sent: &Value) {
    assert_eq!(rec.api, up.api(), "{rec:#?}");
    assert_eq!(rec.auth, AuthCheck::Matched);
    let b = &rec.body;
    match up {
        Upstream::Native => {
            let mut expected = sent.clone();
            expected["model"] = json!("gpt-5");
            assert_eq!(b, &expected, "forwarded unchanged but for the model");
        }
        Upstream::Chat => {
            assert_eq!(b["model"], "gpt-5");
            assert!(
                b.get("input").is_none() && b.get("instructions").is_none(),
                "{b}"
            );
            let messages = b["messages"].as_array().unwrap();
            assert_eq!(messages[0]["role"], "system");
            assert!(
                messages[0]["content"]
                    .to_string()
                    .contains("Answer briefly."),
                "{b}"
            );
            assert_eq!(messages[1]["role"], "user");
            assert_eq!(b["tools"][0]["type"], "function");
            assert_eq!(b["tools"][0]["function"]["name"], "get_weather");
            assert_eq!(
                b["tools"][0]["function"]["parameters"],
                weather_tool()["parameters"]
            );
            let limit = b
                .get("max_completion_tokens")
                .or_else(|| b.get("max_tokens"));
            assert_eq!(limit, Some(&json!(256)), "{b}");
        }
        Upstream::Anthropic => {
            assert_eq!(b["model"], "claude-haiku-4-5");
            assert!(
                b.get("input").is_none() && b.get("instructions").is_none(),
                "{b}"
            );
            assert!(b["system"].to_string().contains("Answer briefly."), "{b}");
            assert_eq!(b["messages"][0]["role"], "user");
            assert_eq!(b["tools"][0]["name"], "get_weather");
            assert_eq!(b["tools"][0]["input_schema"], weather_tool()["parameters"]);
            assert_eq!(b["max_tokens"], 256);
        }
    }
}

/// The ids pairing a tool call with its result in a translated second turn.
fn call_and_result_ids(up: Upstream, body: &Value) -> (String, String) {
    let messages = body["messages"].as_array().unwrap();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match up {
        Upstream::Chat => {
            let call = messages
                .iter()
                .find(|m| m["role"] == "assistant")
                .expect("an assistant message");
            let result = messages
                .iter()
                .find(|m| m["role"] == "tool")
                .expect("a tool message");
            (s(&call["tool_calls"][0]["id"]), s(&result["tool_call_id"]))
        }
        Upstream::Anthropic => {
            let blocks: Vec<&Value> = messages
                .iter()
                .flat_map(|m| m["content"].as_array().into_iter().flatten())
                .collect();
            let call = blocks.iter().find(|b| b["type"] == "tool_use").unwrap();
            let result = blocks.iter().find(|b| b["type"] == "tool_result").unwrap();
            (s(&call["id"]), s(&result["tool_use_id"]))
        }
        Upstream::Native => panic!("no translation on the native route"),
    }
}

async fn sync_tool_call_round_trip(up: Upstream) {
    let mut gw = gateway().await;
    let question = json!("[tool:get_weather] weather in Paris?");
    let sent = responses_body(up.model(), question.clone(), false);
    let r = responses(&gw, &sent).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type().starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "response", "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["model"], up.model(), "the client's model is echoed");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"), "{v}");
    assert!(v["created_at"].as_i64().unwrap() > 0, "{v}");
    assert_usage(&v);
    let call = weather_call(&v);
    assert_translated_request(up, &only_request(&gw), &sent);

    // The second turn sends the call back with its output (stateless, as Codex does).
    let input = json!([
        {"role": "user", "content": question},
        call,
        {"type": "function_call_output", "call_id": call["call_id"], "output": "18C and sunny"},
    ]);
    let r = responses(&gw, &responses_body(up.model(), input, false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(output_text(&v), "tool result: 18C and sunny", "{v}");
    assert_eq!(v["status"], "completed");
    let second = last_request(&gw);
    assert_eq!(second.api, up.api());
    if up != Upstream::Native {
        let (call_id, result_id) = call_and_result_ids(up, &second.body);
        assert!(!call_id.is_empty(), "{}", second.body);
        assert_eq!(call_id, result_id, "the pairing survives translation");
    }

    let events = stopped_events(&mut gw).await;
    let completed = of_type(&events, "llm.call_completed");
    assert_eq!(completed.len(), 2);
    for e in &completed {
        assert_eq!(
            e.payload["inbound_shape"], "responses",
            "{}",
            e.payload_json
        );
        assert!(e.payload["output_tokens"].as_u64().unwrap() > 0);
    }
    assert_eq!(completed[0].payload["produced_tool_calls"], 1);
}

async fn streamed_tool_call(up: Upstream) {
    let mut gw = gateway().await;
    let sent = responses_body(up.model(), json!("[tool:get_weather] weather?"), true);
    let r = responses(&gw, &sent).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.content_type().starts_with("text/event-stream"),
        "{}",
        r.content_type()
    );
    assert!(r.body_error.is_none(), "{:?}", r.body_error);
    let frames = responses_frames(&r.events(), "response.completed");

    let added = frames_of(&frames, "response.output_item.added");
    let added: Vec<&Value> = added
        .into_iter()
        .filter(|f| f["item"]["type"] == "function_call")
        .collect();
    assert_eq!(added.len(), 1, "one call opened: {frames:#?}");
    let item_id = added[0]["item"]["id"].as_str().unwrap().to_owned();
    let call_id = added[0]["item"]["call_id"].as_str().unwrap().to_owned();
    assert_eq!(added[0]["item"]["name"], "get_weather");
    assert!(call_id.starts_with("call_"), "{call_id}");

    let deltas: String = frames_of(&frames, "response.function_call_arguments.delta")
        .into_iter()
        .inspect(|f| assert_eq!(f["item_id"], item_id.as_str(), "{f}"))
        .filter_map(|f| f["delta"].as_str())
        .collect();
    assert_eq!(parse_json(&deltas), parse_json(TOOL_ARGUMENTS));
    let done = frames_of(&frames, "response.function_call_arguments.done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["item_id"], item_id.as_str());
    assert_eq!(
        parse_json(done[0]["arguments"].as_str().unwrap()),
        parse_json(TOOL_ARGUMENTS)
    );
    let item_done: Vec<&Value> = frames_of(&frames, "response.output_item.done")
        .into_iter()
        .filter(|f| f["item"]["type"] == "function_call")
        .collect();
    assert_eq!(item_done.len(), 1);
    assert_eq!(item_done[0]["item"]["call_id"], call_id.as_str());
    assert_eq!(item_done[0]["item"]["id"], item_id.as_str());

    let completed = terminal_response(&frames);
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["model"], up.model());
    assert_usage(completed);
    let call = weather_call(completed);
    assert_eq!(call["call_id"], call_id.as_str());

    let rec = only_request(&gw);
    assert_eq!(rec.api, up.api());
    assert_eq!(rec.body["stream"], true);
    let events = stopped_events(&mut gw).await;
    let completed = of_type(&events, "llm.call_completed");
    assert_eq!(completed.len(), 1, "the stream is recorded once it ends");
    assert_eq!(completed[0].payload["produced_tool_calls"], 1);
    assert!(completed[0].payload["output_tokens"].as_u64().unwrap() > 0);
    assert!(completed[0].payload["cost_usd"].as_f64().unwrap() > 0.0);
}

async fn streamed_text(up: Upstream) {
    let gw = gateway().await;
    let n = nonce();
    let r = responses(
        &gw,
        // Upstream frames cut into 7-byte pieces with CRLF line ends: reassembled first.
        &responses_body(
            up.model(),
            json!(format!("[split] [crlf] stream {n}")),
            true,
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let frames = responses_frames(&r.events(), "response.completed");
    let types: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    let first_delta = types
        .iter()
        .position(|t| *t == "response.output_text.delta")
        .expect("text deltas");
    let part_added = types
        .iter()
        .position(|t| *t == "response.content_part.added")
        .expect("a content part");
    assert!(part_added < first_delta, "{types:?}");
    let text: String = frames_of(&frames, "response.output_text.delta")
        .into_iter()
        .filter_map(|f| f["delta"].as_str())
        .collect();
    assert_eq!(text, format!("echo: [split] [crlf] stream {n}"));
    let done = frames_of(&frames, "response.output_text.done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["text"], text.as_str());
    let completed = terminal_response(&frames);
    assert_eq!(output_text(completed), text);
    assert_usage(completed);
}

async fn previous_response_id_is_forwarded_or_refused(up: Upstream) {
    let mut gw = gateway().await;
    if up == Upstream::Native {
        // A Responses upstream keeps the conversation: the id reaches it and works.
        let mut first = responses_body(up.model(), json!("remember 42"), false);
        first["store"] = json!(true);
        let r = responses(&gw, &first).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let id = r.json()["id"].as_str().unwrap().to_owned();
        let mut next = responses_body(up.model(), json!("and now?"), false);
        next["previous_response_id"] = json!(id);
        let r = responses(&gw, &next).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(output_text(&r.json()), "echo: and now?");
        assert_eq!(last_request(&gw).body["previous_response_id"], id.as_str());
        return;
    }
    let mut body = responses_body(up.model(), json!("and now?"), false);
    body["previous_response_id"] = json!("resp_0123456789abcdef");
    let r = responses(&gw, &body).await;
    let message = assert_openai_error(&r, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(message.contains("previous_response_id"), "{message}");
    assert!(message.contains("send the full conversation"), "{message}");
    assert!(gw.upstream.requests().is_empty(), "nothing went upstream");
    let events = stopped_events(&mut gw).await;
    assert!(
        of_type(&events, "llm.call_started").is_empty(),
        "no call was started: {events:#?}"
    );
}

async fn codex_tools_are_flattened_or_forwarded(up: Upstream) {
    let gw = gateway().await;
    let tools = json!([
        {"type": "web_search"},
        {"type": "namespace", "name": "multi_agent_v1", "description": "Agents",
         "tools": [{"type": "function", "name": "spawn_agent", "description": "Start an agent",
                    "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]},
        weather_tool(),
    ]);
    let mut body = responses_body(up.model(), json!("[tool:spawn_agent] go"), false);
    body["tools"] = tools.clone();
    let r = responses(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let calls = items_of(&r.json(), "function_call")
        .into_iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect::<Vec<_>>();
    assert_eq!(calls, ["spawn_agent"], "{}", r.text);
    let rec = only_request(&gw);
    let upstream_tools = rec.body["tools"].as_array().unwrap();
    let names: BTreeSet<&str> = upstream_tools
        .iter()
        .filter_map(|t| t["name"].as_str().or(t["function"]["name"].as_str()))
        .collect();
    match up {
        Upstream::Native => assert_eq!(rec.body["tools"], tools, "forwarded unchanged"),
        Upstream::Chat | Upstream::Anthropic => {
            assert_eq!(
                names,
                BTreeSet::from(["get_weather", "spawn_agent"]),
                "the namespace is flattened, the hosted tool dropped: {}",
                rec.body["tools"]
            );
            assert_eq!(upstream_tools.len(), 2);
        }
    }
}

async fn cached_usage_adds_up_in_the_answer_and_the_trace(up: Upstream) {
    let mut gw = gateway().await;
    let r = responses(&gw, &responses_body(up.model(), json!("[cache] hi"), false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let usage = r.json()["usage"].clone();
    assert_eq!(
        usage["input_tokens_details"]["cached_tokens"], CACHE_READ_TOKENS,
        "{usage}"
    );
    let events = stopped_events(&mut gw).await;
    let completed = of_type(&events, "llm.call_completed");
    let p = &completed[0].payload;
    assert_eq!(p["cached_input_tokens"], CACHE_READ_TOKENS, "{p}");
    if up == Upstream::Anthropic {
        assert_eq!(p["cache_creation_input_tokens"], CACHE_WRITE_TOKENS, "{p}");
    }
    // The Responses `input_tokens` is all input; the trace keeps the buckets disjoint.
    let count = |k: &str| p[k].as_u64().unwrap();
    assert_eq!(
        usage["input_tokens"].as_u64().unwrap(),
        count("input_tokens") + count("cached_input_tokens") + count("cache_creation_input_tokens"),
        "{usage} vs {p}"
    );
    assert_eq!(
        usage["output_tokens"].as_u64(),
        Some(count("output_tokens"))
    );
}

async fn token_limit_makes_the_response_incomplete(up: Upstream) {
    let gw = gateway().await;
    let r = responses(
        &gw,
        &responses_body(up.model(), json!("[length] go on"), false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["status"], "incomplete", "{v}");
    assert_eq!(
        v["incomplete_details"]["reason"], "max_output_tokens",
        "{v}"
    );
    let r = responses(
        &gw,
        &responses_body(up.model(), json!("[length] go on"), true),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let frames = responses_frames(&r.events(), "response.incomplete");
    let last = terminal_response(&frames);
    assert_eq!(last["status"], "incomplete");
    assert_eq!(last["incomplete_details"]["reason"], "max_output_tokens");
}

async fn upstream_failure_mid_stream_ends_with_response_failed(up: Upstream) {
    let mut gw = gateway().await;
    let r = responses(
        &gw,
        &responses_body(up.model(), json!("[stream-error] hi"), true),
    )
    .await;
    assert_eq!(
        r.status, 200,
        "the failure came after the first byte: {}",
        r.text
    );
    let frames = responses_frames(&r.events(), "response.failed");
    let failed = terminal_response(&frames);
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"]["code"].is_string(), "{failed}");
    assert!(
        !frames_of(&frames, "response.output_text.delta").is_empty(),
        "the text before the failure was relayed"
    );
    if up != Upstream::Native {
        // The gateway's own failure frames: `response.failed`, then an `error` event.
        assert_eq!(frames.last().unwrap()["type"], "error", "{frames:#?}");
    }
    let events = stopped_events(&mut gw).await;
    assert_eq!(of_type(&events, "llm.call_failed").len(), 1);
    assert!(of_type(&events, "llm.call_completed").is_empty());
    for e in &events {
        assert!(
            !e.payload_json.contains(RESPONSES_STREAM_ERROR_MESSAGE),
            "{}",
            e.payload_json
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_thinking_round_trips_through_a_responses_client() {
    let gw = gateway().await;
    let r = responses(&gw, &responses_body("haiku", json!("[think] hi"), false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let reasoning = items_of(&v, "reasoning");
    assert_eq!(reasoning.len(), 1, "{v}");
    let reasoning = reasoning[0].clone();
    assert_eq!(reasoning["summary"][0]["text"], THINKING_TEXT);
    assert_eq!(reasoning["encrypted_content"], THINKING_SIGNATURE);
    let message = items_of(&v, "message")[0].clone();
    // Codex sends the reasoning item back with the next turn: Anthropic gets its signed block.
    let input = json!([
        {"role": "user", "content": "[think] hi"},
        reasoning,
        message,
        {"role": "user", "content": "and then?"},
    ]);
    let r = responses(&gw, &responses_body("haiku", input, false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rec = last_request(&gw);
    let assistant = &rec.body["messages"][1];
    assert_eq!(assistant["role"], "assistant", "{}", rec.body);
    assert_eq!(
        assistant["content"][0],
        json!({"type": "thinking", "thinking": THINKING_TEXT, "signature": THINKING_SIGNATURE}),
        "{}",
        rec.body
    );
    assert_eq!(assistant["content"][1]["type"], "text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_choice_is_translated_from_responses() {
    let gw = gateway().await;
    let named = json!({"type": "function", "name": "get_weather"});
    for (choice, to_chat, to_anthropic) in [
        (json!("required"), json!("required"), json!({"type": "any"})),
        (
            named,
            json!({"type": "function", "function": {"name": "get_weather"}}),
            json!({"type": "tool", "name": "get_weather"}),
        ),
    ] {
        for (up, expected) in [
            (Upstream::Chat, to_chat),
            (Upstream::Anthropic, to_anthropic),
        ] {
            let mut body = responses_body(up.model(), json!("[tool:get_weather] go"), false);
            body["tool_choice"] = choice.clone();
            let r = responses(&gw, &body).await;
            assert_eq!(r.status, 200, "{up:?} {choice}: {}", r.text);
            assert_eq!(r.json()["tool_choice"], choice, "echoed as sent");
            assert_eq!(last_request(&gw).body["tool_choice"], expected, "{up:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bad Responses input
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_input_gets_a_400_naming_the_problem() {
    let mut gw = gateway().await;
    let call = |extra: Value| {
        let mut item = json!({"type": "function_call", "name": "get_weather"});
        for (k, v) in extra.as_object().unwrap() {
            item[k] = v.clone();
        }
        item
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"model": "gpt-5", "input": 42}),
            "input must be a string or an array",
        ),
        (json!({"input": "hi"}), "model"),
        (
            json!({"model": "haiku", "input": ["a bare string"]}),
            "input[0]",
        ),
        (
            json!({"model": "haiku", "input": [{"type": "message", "role": "user"}]}),
            "input[0].content",
        ),
        (
            json!({"model": "gpt-5", "input": [{"role": "tool", "content": "x"}]}),
            "'tool' is not supported",
        ),
        (
            json!({"model": "gpt-5", "input": [call(json!({"arguments": "{}"}))]}),
            "call_id",
        ),
        (
            json!({"model": "haiku", "input": [call(json!({"call_id": "call_1", "arguments": "{not json"}))]}),
            "arguments",
        ),
        (
            json!({"model": "gpt-5", "input": [
                {"role": "user", "content": "hi"},
                {"type": "function_call_output", "call_id": "call_nowhere", "output": "18C"}]}),
            "no earlier item in input has that call_id",
        ),
        (
            json!({"model": "openrouter:gpt-5", "input": "hi", "tools": [{"type": "function"}]}),
            "tools[0]",
        ),
        (
            json!({"model": "gpt-5", "input": "hi", "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "gpt-5", "input": "hi", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
    ];
    for (body, fragment) in &cases {
        let r = responses(&gw, body).await;
        let message = assert_openai_error(&r, 400);
        assert_eq!(r.json()["error"]["type"], "invalid_request_error", "{body}");
        assert!(
            message.contains(fragment),
            "{body}: the message names {fragment:?}: {message}"
        );
    }
    let r = send(
        openai_post(&gw, "/v1/responses")
            .header("content-type", "application/json")
            .body("{\"model\": \"gpt-5\", \"input\": "),
    )
    .await;
    assert_openai_error(&r, 400);
    assert!(gw.upstream.requests().is_empty(), "nothing went upstream");
    let events = stopped_events(&mut gw).await;
    for ty in ["llm.call_started", "llm.call_completed", "llm.call_failed"] {
        assert!(of_type(&events, ty).is_empty(), "no {ty} for a parse error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_a_translated_upstream_cannot_take_are_refused_by_name() {
    let mut gw = gateway().await;
    let reference = json!([
        {"type": "item_reference", "id": "msg_0123"},
        {"role": "user", "content": "go on"},
    ]);
    let file = json!([{"role": "user", "content": [
        {"type": "input_file", "file_id": "file-abc123"},
        {"type": "input_text", "text": "summarise it"},
    ]}]);
    for (input, kind) in [(&reference, "item_reference"), (&file, "input_file")] {
        for up in [Upstream::Chat, Upstream::Anthropic] {
            let r = responses(&gw, &json!({"model": up.model(), "input": input})).await;
            let message = assert_openai_error(&r, 400);
            assert!(message.contains(kind), "{up:?}: {message}");
        }
    }
    assert!(gw.upstream.requests().is_empty());
    // A Responses upstream takes them as they are.
    let r = responses(&gw, &json!({"model": "gpt-5", "input": reference})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(only_request(&gw).body["input"], reference);
    let events = stopped_events(&mut gw).await;
    assert_eq!(
        of_type(&events, "llm.call_started").len(),
        1,
        "only the forwarded request started a call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_responses_bodies_get_a_413() {
    const LIMIT: usize = 64 * 1024;
    let mut gw = gateway_with(GatewayOptions {
        extra_args: vec!["--max-body-bytes".into(), LIMIT.to_string()],
        ..GatewayOptions::default()
    })
    .await;
    let big = responses_body("gpt-5", json!("a".repeat(LIMIT + 1)), false);
    let r = responses(&gw, &big).await;
    assert_openai_error(&r, 413);
    // Without a content-length (chunked), the limit holds while reading.
    let bytes = serde_json::to_vec(&big).unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let r = send(
        openai_post(&gw, "/v1/responses")
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            ))),
    )
    .await;
    assert_openai_error(&r, 413);
    // Under the limit is served.
    let r = responses(&gw, &responses_body("gpt-5", json!("small"), false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        gw.upstream.requests().len(),
        1,
        "only the small body went up"
    );
    let events = stopped_events(&mut gw).await;
    assert_eq!(of_type(&events, "llm.call_started").len(), 1);
}

/// Codex's WebSocket transport: one socket, a warm-up answered without a model call, then
/// incremental requests (`previous_response_id` + new items) that the gateway rebuilds into
/// full, stateless requests for the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_over_a_websocket_rebuild_incremental_input() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let gw = gateway().await;
    // Without the upgrade header: 426 in the OpenAI envelope.
    let r = send(
        gw.client()
            .get(gw.url("/v1/responses"))
            .bearer_auth(&gw.key.token),
    )
    .await;
    assert_openai_error(&r, 426);
    // A wrong key is refused before the switch, as plain HTTP.
    let ws_url = gw.url("/v1/responses").replacen("http://", "ws://", 1);
    let mut bad = ws_url.as_str().into_client_request().unwrap();
    bad.headers_mut()
        .insert("authorization", "Bearer gw_nope".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(bad).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");

    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", gw.key.token).parse().unwrap(),
    );
    req.headers_mut()
        .insert("session-id", "codex-ws-session-1".parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(response.status(), 101);

    async fn until_done(
        socket: &mut (
                 impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin
             ),
    ) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("an event within 10 s")
                .expect("socket open")
                .expect("frame");
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            let ty = v["type"].as_str().unwrap_or_default().to_owned();
            events.push(v);
            if matches!(
                ty.as_str(),
                "response.completed" | "response.failed" | "error"
            ) {
                return events;
            }
        }
    }
    let frame = |v: Value| Message::Text(v.to_string().into());

    let developer = json!({"role": "developer", "content": "Answer briefly."});
    socket
        .send(frame(
            json!({"type": "response.create", "model": "gpt-5", "input": [developer],
            "tools": [weather_tool()], "generate": false, "store": false}),
        ))
        .await
        .unwrap();
    let warm = until_done(&mut socket).await;
    assert_eq!(warm.last().unwrap()["type"], "response.completed");
    let warm_id = warm.last().unwrap()["response"]["id"].clone();
    assert!(
        gw.upstream.requests().is_empty(),
        "a warm-up calls no model"
    );

    let user = json!({"role": "user", "content": "[tool:get_weather] weather in Paris?"});
    socket
        .send(frame(
            json!({"type": "response.create", "model": "gpt-5", "input": [user],
            "previous_response_id": warm_id, "tools": [weather_tool()], "store": false}),
        ))
        .await
        .unwrap();
    let first = until_done(&mut socket).await;
    let done = first.last().unwrap();
    assert_eq!(done["type"], "response.completed", "{first:?}");
    let call = first
        .iter()
        .find(|e| e["type"] == "response.output_item.done" && e["item"]["type"] == "function_call")
        .map(|e| e["item"].clone())
        .expect("a function call item");
    let upstream_first = last_request(&gw);
    assert_eq!(upstream_first.body["input"], json!([developer, user]));
    assert!(upstream_first.body.get("previous_response_id").is_none());

    // Only the tool output travels on the socket; the upstream gets the whole conversation.
    let output =
        json!({"type": "function_call_output", "call_id": call["call_id"], "output": "18C"});
    socket
        .send(frame(json!({"type": "response.create", "model": "gpt-5", "input": [output],
            "previous_response_id": done["response"]["id"], "tools": [weather_tool()], "store": false})))
        .await
        .unwrap();
    let second = until_done(&mut socket).await;
    assert_eq!(
        second.last().unwrap()["type"],
        "response.completed",
        "{second:?}"
    );
    let upstream_second = last_request(&gw);
    let items = upstream_second.body["input"].as_array().unwrap();
    assert_eq!(items.first(), Some(&developer));
    assert_eq!(items.last(), Some(&output));
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "function_call" && i["call_id"] == call["call_id"])
    );
    assert_eq!(gw.upstream.requests().len(), 2);

    // A continuation of a response this socket did not serve: an error frame, socket open.
    socket
        .send(frame(
            json!({"type": "response.create", "model": "gpt-5", "input": [],
            "previous_response_id": "resp_unknown"}),
        ))
        .await
        .unwrap();
    let refused = until_done(&mut socket).await;
    let err = refused.last().unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["status"], 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send the full input"),
        "{err}"
    );
    socket.close(None).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Same-shape fidelity: headers, errors, system messages
// ---------------------------------------------------------------------------------------------

const BETAS: &str = "context-management-2025-06-27,made-up-beta-2099-01-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_headers_and_query_reach_a_same_shape_upstream_credentials_never() {
    let gw = gateway().await;
    // Claude Code: betas, `?beta=true`, and its key also as a Bearer token. The client's
    // `anthropic-version` (not the gateway's default) is the one the upstream sees.
    let r = send(
        gw.client()
            .post(gw.url("/v1/messages?beta=true"))
            .header("x-api-key", &gw.key.token)
            .header("anthropic-version", "2099-01-01")
            .bearer_auth(&gw.key.token)
            .header("anthropic-beta", BETAS)
            .header("openai-beta", "assistants=v2")
            .header("cookie", "sid=client-cookie")
            .header("api-key", "client-api-key")
            .json(&anthropic_body("haiku", "hi")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rec = last_request(&gw);
    assert_eq!(rec.api, Api::Messages);
    assert_eq!(
        rec.anthropic_betas(),
        ["context-management-2025-06-27", "made-up-beta-2099-01-01"],
        "unknown betas too"
    );
    assert_eq!(rec.header("anthropic-version"), Some("2099-01-01"));
    assert_eq!(rec.query.as_deref(), Some("beta=true"));
    assert_eq!(
        rec.header("x-api-key"),
        Some("<matched>"),
        "the gateway's key"
    );
    for h in ["authorization", "cookie", "api-key", "openai-beta"] {
        assert_eq!(
            rec.header(h),
            None,
            "{h} is not forwarded: {:?}",
            rec.headers
        );
    }

    // OpenAI SDK on Chat Completions, and on the native Responses route.
    let openai_headers = |req: RequestBuilder| {
        req.header("OpenAI-Beta", "assistants=v2")
            .header("openai-organization", "org-client")
            .header("openai-project", "proj-client")
            .header("anthropic-beta", BETAS)
            .header("x-api-key", &gw.key.token)
            .header("cookie", "sid=client-cookie")
    };
    for (path, body, api) in [
        (
            "/v1/chat/completions?trace=1",
            chat_body("gpt-5", "hi"),
            Api::ChatCompletions,
        ),
        (
            "/v1/responses?trace=1",
            json!({"model": "gpt-5", "input": "hi"}),
            Api::Responses,
        ),
    ] {
        let r = send(openai_headers(openai_post(&gw, path)).json(&body)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let rec = last_request(&gw);
        assert_eq!(rec.api, api);
        assert_eq!(rec.header("openai-beta"), Some("assistants=v2"), "{path}");
        assert_eq!(rec.query.as_deref(), Some("trace=1"), "{path}");
        assert_eq!(rec.header("authorization"), Some("<matched>"), "{path}");
        for h in [
            "openai-organization",
            "openai-project",
            "anthropic-beta",
            "x-api-key",
            "cookie",
        ] {
            assert_eq!(rec.header(h), None, "{path}: {h} is not forwarded");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_traffic_forwards_no_provider_headers() {
    let gw = gateway().await;
    let with_headers = |req: RequestBuilder| {
        req.header("anthropic-beta", BETAS)
            .header("openai-beta", "assistants=v2")
    };
    let cases: [(RequestBuilder, Value, Api); 4] = [
        (
            openai_post(&gw, "/v1/chat/completions?beta=true"),
            chat_body("haiku", "hi"),
            Api::Messages,
        ),
        (
            anthropic_post(&gw, "/v1/messages?beta=true"),
            anthropic_body("gpt-5", "hi"),
            Api::ChatCompletions,
        ),
        (
            openai_post(&gw, "/v1/responses?beta=true"),
            json!({"model": "openrouter:gpt-5", "input": "hi"}),
            Api::ChatCompletions,
        ),
        (
            openai_post(&gw, "/v1/responses?beta=true"),
            json!({"model": "haiku", "input": "hi"}),
            Api::Messages,
        ),
    ];
    for (req, body, api) in cases {
        let r = send(with_headers(req).json(&body)).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text);
        let rec = last_request(&gw);
        assert_eq!(rec.api, api, "{body}");
        assert_eq!(rec.auth, AuthCheck::Matched);
        assert!(
            rec.anthropic_betas().is_empty(),
            "{body}: {:?}",
            rec.headers
        );
        assert_eq!(rec.header("openai-beta"), None, "{body}");
        assert_eq!(rec.query, None, "{body}: the query string stays");
        if api == Api::Messages {
            assert!(
                rec.header("anthropic-version").is_some(),
                "the gateway's own"
            );
        }
        if body.get("messages").is_some() && api == Api::Messages {
            // Chat completions answers carry a real `created`.
            assert!(r.json()["created"].as_i64().unwrap() > 0, "{}", r.text);
        }
    }
}

/// The same request sent straight to the fake, as the gateway would have sent it: the body
/// the client must see when the gateway relays an upstream error unchanged.
async fn direct_from_fake(fake: &FakeUpstream, path: &str, shape: Shape, body: &Value) -> Reply {
    let client = reqwest::Client::new();
    let req = client.post(format!("{}{path}", fake.base_url()));
    let req = match shape {
        Shape::Anthropic => req
            .header("x-api-key", UPSTREAM_ANTHROPIC_KEY)
            .header("anthropic-version", "2023-06-01"),
        Shape::OpenAi => req.bearer_auth(UPSTREAM_OPENAI_KEY),
    };
    send(req.json(body)).await
}

/// A JSON reply without the upstream's per-request id (the only field in which two answers
/// to the same request differ).
fn without_request_id(r: &Reply) -> Value {
    let mut v = r.json();
    v.as_object_mut().unwrap().remove("request_id");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_shape_upstream_errors_reach_the_client_unchanged() {
    let mut gw = gateway().await;
    let text = "[too-long] a very long prompt";
    let mut streamed = anthropic_body("haiku", text);
    streamed["stream"] = json!(true);
    let cases = [
        (
            "/v1/messages",
            Shape::Anthropic,
            anthropic_body("haiku", text),
            "claude-haiku-4-5",
            ANTHROPIC_TOO_LONG_MESSAGE,
        ),
        (
            "/v1/messages",
            Shape::Anthropic,
            streamed,
            "claude-haiku-4-5",
            ANTHROPIC_TOO_LONG_MESSAGE,
        ),
        (
            "/v1/chat/completions",
            Shape::OpenAi,
            chat_body("gpt-5", text),
            "gpt-5",
            OPENAI_CONTEXT_LENGTH_MESSAGE,
        ),
        (
            "/v1/responses",
            Shape::OpenAi,
            json!({"model": "gpt-5", "input": text}),
            "gpt-5",
            RESPONSES_CONTEXT_LENGTH_MESSAGE,
        ),
    ];
    let mut expected = Vec::new();
    for (path, shape, body, upstream_model, message) in &cases {
        let req = match shape {
            Shape::Anthropic => anthropic_post(&gw, path),
            Shape::OpenAi => openai_post(&gw, path),
        };
        let r = send(req.json(body)).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert_eq!(error_message(&r.json()), *message, "{path}: {}", r.text);
        let mut direct_body = body.clone();
        direct_body["model"] = json!(upstream_model);
        expected.push((r, *path, *shape, direct_body));
    }
    // Cross-shape clients get the gateway's envelope, without the upstream's words.
    for (path, body) in [
        ("/v1/chat/completions", chat_body("haiku", text)),
        ("/v1/responses", json!({"model": "haiku", "input": text})),
        (
            "/v1/responses",
            json!({"model": "openrouter:gpt-5", "input": text}),
        ),
    ] {
        let r = send(openai_post(&gw, path).json(&body)).await;
        let message = assert_openai_error(&r, 400);
        assert_eq!(
            r.json()["error"]["code"],
            "context_length_exceeded",
            "{}",
            r.text
        );
        for upstream_words in [ANTHROPIC_TOO_LONG_MESSAGE, OPENAI_CONTEXT_LENGTH_MESSAGE] {
            assert!(!message.contains(upstream_words), "{message}");
        }
    }
    // Byte for byte what the upstream answered (same status, same JSON).
    for (reply, path, shape, body) in &expected {
        let direct = direct_from_fake(&gw.upstream, path, *shape, body).await;
        assert_eq!(reply.status, direct.status, "{path}");
        assert_eq!(
            without_request_id(reply),
            without_request_id(&direct),
            "{path}"
        );
    }
    let events = stopped_events(&mut gw).await;
    assert_eq!(of_type(&events, "llm.call_failed").len(), 7);
    for e in &events {
        for words in [
            "prompt is too long",
            "maximum context length",
            "exceeds the context window",
        ] {
            assert!(
                !e.payload_json.contains(words),
                "upstream error text in the trace: {}",
                e.payload_json
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_system_messages_pass_through_or_are_hoisted() {
    let gw = gateway().await;
    let messages = json!([
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
        {"role": "system", "content": "From now on answer in French."},
    ]);
    let body = |model: &str| {
        json!({"model": model, "max_tokens": 128, "system": "You are terse.",
               "messages": messages})
    };
    // A model that takes mid-conversation system messages gets them as sent.
    let r =
        send(anthropic_post(&gw, "/v1/messages").json(&body("anthropic:claude-opus-4-8"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rec = last_request(&gw);
    assert_eq!(rec.body["messages"], messages);
    assert_eq!(rec.body["system"], "You are terse.");
    // An older one answers with its own 400, which the client sees as is: the gateway does
    // not validate what the upstream validates.
    let r = send(anthropic_post(&gw, "/v1/messages").json(&body("haiku"))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        error_message(&r.json()).contains("Unexpected role \"system\""),
        "{}",
        r.text
    );
    assert_eq!(last_request(&gw).body["messages"], messages);
    // Translated, it joins the system prompt.
    let r = send(anthropic_post(&gw, "/v1/messages").json(&body("gpt-5"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rec = last_request(&gw);
    assert_eq!(rec.api, Api::ChatCompletions);
    let sent = rec.body["messages"].as_array().unwrap();
    let roles: Vec<&str> = sent.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "user"],
        "{}",
        rec.body
    );
    let system = sent[0]["content"].to_string();
    assert!(
        system.contains("You are terse.") && system.contains("From now on answer in French."),
        "{system}"
    );
}

// ---------------------------------------------------------------------------------------------
// Token counting
// ---------------------------------------------------------------------------------------------

fn count_method(r: &Reply) -> &str {
    r.header("x-metis-token-count").unwrap_or("<none>")
}

fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

async fn metrics(gw: &TestGateway) -> String {
    let r = gw.request(reqwest::Method::GET, "/metrics").await;
    assert_eq!(r.status, 200);
    r.text
}

/// The call events a token count must never produce (it is never charged).
fn assert_no_calls(events: &[EventRow]) {
    for ty in [
        "route.decided",
        "llm.call_started",
        "llm.call_completed",
        "llm.call_failed",
    ] {
        assert!(of_type(events, ty).is_empty(), "a count records no {ty}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_counts_are_exact_where_the_upstream_counts() {
    let mut gw = gateway().await;
    // Anthropic count_tokens for a Claude model: forwarded as sent, with its betas.
    let body = json!({"model": "haiku", "system": "Be brief.",
                      "messages": [{"role": "user", "content": "How many tokens is this?"}]});
    let r = send(
        anthropic_post(&gw, "/v1/messages/count_tokens?beta=true")
            .header("anthropic-beta", "token-counting-2024-11-01")
            .json(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(count_method(&r), "exact");
    let rec = last_request(&gw);
    assert_eq!(rec.api, Api::CountTokens);
    assert_eq!(rec.body["messages"], body["messages"]);
    assert_eq!(rec.body["model"], "claude-haiku-4-5");
    assert_eq!(rec.anthropic_betas(), ["token-counting-2024-11-01"]);
    assert_eq!(rec.query.as_deref(), Some("beta=true"));
    assert_eq!(
        r.json(),
        json!({"input_tokens": estimate_input_tokens(&body)})
    );

    // Responses input_tokens for a Responses upstream: forwarded as sent.
    let body = json!({"model": "gpt-5", "instructions": "Be brief.", "input": "How many?"});
    let r = send(openai_post(&gw, "/v1/responses/input_tokens").json(&body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(count_method(&r), "exact");
    assert_eq!(last_request(&gw).api, Api::ResponsesInputTokens);
    assert_eq!(
        r.json(),
        json!({"object": "response.input_tokens", "input_tokens": estimate_input_tokens(&body)})
    );

    // Each translated to the other's counting endpoint: the count of what the upstream read.
    let cases = [
        (
            openai_post(&gw, "/v1/responses/input_tokens"),
            json!({"model": "haiku", "instructions": "Be brief.", "input": "How many?",
                   "max_output_tokens": 100, "stream": false}),
            Api::CountTokens,
        ),
        (
            anthropic_post(&gw, "/v1/messages/count_tokens"),
            json!({"model": "gpt-5", "system": "Be brief.",
                   "messages": [{"role": "user", "content": "How many?"}]}),
            Api::ResponsesInputTokens,
        ),
    ];
    for (req, body, api) in cases {
        let r = send(req.json(&body)).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text);
        assert_eq!(count_method(&r), "exact");
        let rec = last_request(&gw);
        assert_eq!(rec.api, api);
        assert_eq!(rec.auth, AuthCheck::Matched);
        if api == Api::CountTokens {
            for refused in ["max_tokens", "stream", "max_output_tokens", "input"] {
                assert!(rec.body.get(refused).is_none(), "{refused}: {}", rec.body);
            }
        }
        assert_eq!(
            r.json()["input_tokens"].as_u64(),
            Some(estimate_input_tokens(&rec.body)),
            "{}",
            rec.body
        );
    }
    let m = metrics(&gw).await;
    assert_eq!(
        metric_value(&m, "metis_token_counts_total{method=\"exact\"}"),
        Some(4.0),
        "{m}"
    );
    // Counting needs a key like any call.
    let r = send(
        gw.client()
            .post(gw.url("/v1/messages/count_tokens"))
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "haiku", "messages": []})),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(
        error_type(Shape::Anthropic, &r.json()).as_deref(),
        Some("authentication_error")
    );
    let events = stopped_events(&mut gw).await;
    assert_no_calls(&events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_count_errors_are_relayed_on_same_shape_only() {
    let gw = gateway().await;
    let body =
        json!({"model": "haiku", "messages": [{"role": "user", "content": "[status:400] x"}]});
    let r = send(anthropic_post(&gw, "/v1/messages/count_tokens").json(&body)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let mut direct_body = body.clone();
    direct_body["model"] = json!("claude-haiku-4-5");
    let direct = direct_from_fake(
        &gw.upstream,
        "/v1/messages/count_tokens",
        Shape::Anthropic,
        &direct_body,
    )
    .await;
    assert_eq!(direct.status, 400);
    assert_eq!(without_request_id(&r), without_request_id(&direct));
    // Translated, the client gets the gateway's envelope in its own shape.
    let r = send(
        openai_post(&gw, "/v1/responses/input_tokens")
            .json(&json!({"model": "haiku", "input": "[status:400] x"})),
    )
    .await;
    let message = assert_openai_error(&r, 400);
    assert!(
        message.contains("anthropic"),
        "names the provider: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_counts_fall_back_to_the_tokenizer_then_an_estimate() {
    let mut gw = gateway().await;
    // `openrouter:gpt-5` has no counting endpoint; o200k knows GPT-5: "hello world" is 2
    // tokens, +3 for the message and +3 reply priming.
    let r = send(
        anthropic_post(&gw, "/v1/messages/count_tokens").json(&json!({
            "model": "openrouter:gpt-5",
            "messages": [{"role": "user", "content": "hello world"}]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(count_method(&r), "tokenizer");
    assert_eq!(r.json(), json!({"input_tokens": 8}));
    let r = send(
        openai_post(&gw, "/v1/responses/input_tokens")
            .json(&json!({"model": "openrouter:gpt-5", "input": "hello world"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(count_method(&r), "tokenizer");
    assert_eq!(
        r.json(),
        json!({"object": "response.input_tokens", "input_tokens": 8})
    );
    // A model no tokenizer knows: characters / 4.
    let r = send(openai_post(&gw, "/v1/responses/input_tokens").json(&json!({
        "model": "openrouter:meta-llama/llama-3.1-8b", "input": "abcd".repeat(10)})))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(count_method(&r), "estimate");
    assert_eq!(r.json()["input_tokens"], 10);
    assert!(gw.upstream.requests().is_empty(), "nothing went upstream");
    let m = metrics(&gw).await;
    assert_eq!(
        metric_value(&m, "metis_token_counts_total{method=\"tokenizer\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric_value(&m, "metis_token_counts_total{method=\"estimate\"}"),
        Some(1.0)
    );
    let events = stopped_events(&mut gw).await;
    assert_no_calls(&events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_endpoints_share_the_keys_rate_limit() {
    let gw = gateway_with(GatewayOptions {
        extra_args: vec![
            "--rate-limit".into(),
            "--rate-limit-per-key-rpm".into(),
            "3".into(),
        ],
        ..GatewayOptions::default()
    })
    .await;
    let count = json!({"model": "haiku", "messages": [{"role": "user", "content": "hi"}]});
    for (req, body) in [
        (
            openai_post(&gw, "/v1/responses"),
            json!({"model": "gpt-5", "input": "hi"}),
        ),
        (
            anthropic_post(&gw, "/v1/messages/count_tokens"),
            count.clone(),
        ),
        (openai_post(&gw, "/v1/embeddings"), embeddings_body()),
    ] {
        let r = send(req.json(&body)).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text);
    }
    let r = send(
        openai_post(&gw, "/v1/responses/input_tokens")
            .json(&json!({"model": "gpt-5", "input": "hi"})),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(
        r.json()["error"]["code"],
        "rate_limit_exceeded",
        "{}",
        r.text
    );
    assert!(r.header("retry-after").is_some());
    let r = send(anthropic_post(&gw, "/v1/messages/count_tokens").json(&count)).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(
        error_type(Shape::Anthropic, &r.json()).as_deref(),
        Some("rate_limit_error")
    );
    assert_eq!(
        gw.upstream.requests().len(),
        3,
        "limited requests stay here"
    );
}

// ---------------------------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------------------------

fn embeddings_body() -> Value {
    json!({"model": EMBEDDING_MODEL, "input": ["hello world", "second text"],
           "dimensions": 8, "encoding_format": "float", "user": "u-1"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_forwarded_priced_and_traced() {
    let mut gw = gateway().await;
    let r = send(openai_post(&gw, "/v1/embeddings").json(&embeddings_body())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], EMBEDDING_MODEL, "the client's model is echoed");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(
            d["embedding"].as_array().unwrap().len(),
            8,
            "dimensions honoured"
        );
    }
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);
    let rec = only_request(&gw);
    assert_eq!(rec.api, Api::Embeddings);
    assert_eq!(rec.body["model"], "text-embedding-3-small");
    for field in ["input", "dimensions", "encoding_format", "user"] {
        assert_eq!(
            rec.body[field],
            embeddings_body()[field],
            "{field} forwarded"
        );
    }
    let events = stopped_events(&mut gw).await;
    let started = of_type(&events, "llm.call_started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].payload["model"], EMBEDDING_MODEL);
    let completed = of_type(&events, "llm.call_completed");
    assert_eq!(completed.len(), 1);
    let p = &completed[0].payload;
    assert_eq!(p["inbound_shape"], "openai");
    assert_eq!(p["input_tokens"].as_u64(), Some(prompt_tokens));
    assert_eq!(p["output_tokens"], 0);
    let cost = p["cost_usd"].as_f64().unwrap();
    let expected = prompt_tokens as f64 * EMBEDDING_PRICE_PER_MTOK / 1e6;
    assert!(
        cost > 0.0 && (cost - expected).abs() < 1e-9,
        "{cost} vs {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_refused_cleanly_when_they_cannot_be_served() {
    let mut gw = gateway_with(GatewayOptions {
        extra_keys: vec![KeySpec {
            name: "tiny-cap".into(),
            daily_cap_usd: Some("0.00001".into()),
            ..KeySpec::default()
        }],
        ..GatewayOptions::default()
    })
    .await;
    let mut body = embeddings_body();
    body["model"] = json!("haiku");
    let r = send(openai_post(&gw, "/v1/embeddings").json(&body)).await;
    let message = assert_openai_error(&r, 400);
    assert!(
        message.contains("serves no embeddings endpoint"),
        "{message}"
    );
    let mut body = embeddings_body();
    body["input"] = json!(5);
    let r = send(openai_post(&gw, "/v1/embeddings").json(&body)).await;
    let message = assert_openai_error(&r, 400);
    assert!(message.contains("'input'"), "{message}");
    assert!(gw.upstream.requests().is_empty(), "nothing went upstream");
    // Embeddings spend counts against the key's cap: once spent, the key is refused.
    let capped = || {
        gw.client()
            .post(gw.url("/v1/embeddings"))
            .bearer_auth(&gw.key_named("tiny-cap").token)
            .json(&embeddings_body())
    };
    let r = send(capped()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = send(capped()).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "quota_exceeded", "{}", r.text);
    assert_eq!(
        gw.upstream.requests().len(),
        1,
        "the refused call went nowhere"
    );
    let events = stopped_events(&mut gw).await;
    assert_eq!(of_type(&events, "llm.call_started").len(), 1);
    assert_eq!(of_type(&events, "gateway.quota_exceeded").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_embeddings_are_deterministic_and_traced() {
    let mut gw = gateway_with(GatewayOptions {
        extra_args: vec!["--enable-mock-provider".into()],
        ..GatewayOptions::default()
    })
    .await;
    let embed = |input: &str| {
        send(openai_post(&gw, "/v1/embeddings").json(&json!({"model": "mock", "input": input})))
    };
    let vector = |r: &Reply| r.json()["data"][0]["embedding"].clone();
    let a = embed("same text").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(
        vector(&a).as_array().is_some_and(|v| !v.is_empty()),
        "{}",
        a.text
    );
    let again = embed("same text").await;
    let other = embed("other text").await;
    assert_eq!(vector(&a), vector(&again), "deterministic");
    assert_ne!(vector(&a), vector(&other));
    assert!(gw.upstream.requests().is_empty(), "served in process");
    let events = stopped_events(&mut gw).await;
    let completed = of_type(&events, "llm.call_completed");
    assert_eq!(completed.len(), 3);
    assert!(completed.iter().all(|e| e.payload["provider"] == "mock"));
}

// ---------------------------------------------------------------------------------------------
// /v1/models in the caller's shape
// ---------------------------------------------------------------------------------------------

async fn get_models(gw: &TestGateway, path: &str, anthropic: bool) -> Reply {
    let req = gw.client().get(gw.url(path));
    let req = if anthropic {
        req.header("x-api-key", &gw.key.token)
            .header("anthropic-version", "2023-06-01")
    } else {
        req.bearer_auth(&gw.key.token)
    };
    send(req).await
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s.ends_with('Z')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_in_the_callers_shape_and_paged() {
    let gw = gateway().await;
    let r = get_models(&gw, "/v1/models", false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let openai = r.json();
    assert_eq!(openai["object"], "list");
    for m in openai["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model", "{m}");
        assert!(m["created"].as_i64().unwrap() > 0, "a real date: {m}");
    }
    let all = ids(&openai);
    assert!(all.len() > 6, "{all:?}");
    for id in ["haiku", "gpt-5", "anthropic:claude-haiku-4-5"] {
        assert!(all.iter().any(|m| m == id), "{id} in {all:?}");
    }

    let r = get_models(&gw, "/v1/models?limit=1000", true).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let anthropic = r.json();
    assert!(anthropic.get("object").is_none(), "{anthropic}");
    assert_eq!(ids(&anthropic), all, "the same models in both shapes");
    assert_eq!(anthropic["has_more"], false);
    assert_eq!(anthropic["first_id"], all[0].as_str());
    assert_eq!(anthropic["last_id"], all[all.len() - 1].as_str());
    for m in anthropic["data"].as_array().unwrap() {
        assert_eq!(m["type"], "model", "{m}");
        assert!(!m["display_name"].as_str().unwrap().is_empty(), "{m}");
        assert!(is_rfc3339_utc(m["created_at"].as_str().unwrap()), "{m}");
    }
    // `anthropic-version` alone (with a Bearer key) also selects the Anthropic shape.
    let r = send(
        gw.client()
            .get(gw.url("/v1/models?limit=2"))
            .bearer_auth(&gw.key.token)
            .header("anthropic-version", "2023-06-01"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["has_more"], true, "{}", r.text);

    // Walking the pages forward visits every model once; before_id walks back.
    let mut walked = Vec::new();
    let mut path = "/v1/models?limit=3".to_owned();
    loop {
        let page = get_models(&gw, &path, true).await.json();
        let page_ids = ids(&page);
        assert!(page_ids.len() <= 3 && !page_ids.is_empty(), "{page}");
        assert_eq!(page["first_id"], page_ids[0].as_str());
        assert_eq!(page["last_id"], page_ids[page_ids.len() - 1].as_str());
        walked.extend(page_ids);
        if page["has_more"] == false {
            break;
        }
        path = format!(
            "/v1/models?limit=3&after_id={}",
            page["last_id"].as_str().unwrap()
        );
        assert!(walked.len() < 1000, "paging terminates");
    }
    assert_eq!(walked, all);
    let back = get_models(
        &gw,
        &format!("/v1/models?limit=3&before_id={}", all[6]),
        true,
    )
    .await
    .json();
    assert_eq!(ids(&back), all[3..6]);
    assert_eq!(back["has_more"], true);

    for (path, named) in [
        ("/v1/models?limit=0", "limit"),
        ("/v1/models?after_id=no-such-model", "after_id"),
    ] {
        let r = get_models(&gw, path, true).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert_eq!(
            error_type(Shape::Anthropic, &r.json()).as_deref(),
            Some("invalid_request_error")
        );
        assert!(error_message(&r.json()).contains(named), "{}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_model_is_retrieved_in_either_shape() {
    let gw = gateway_with(GatewayOptions {
        extra_keys: vec![KeySpec {
            name: "haiku-only".into(),
            allowed_models: vec!["haiku".into()],
            ..KeySpec::default()
        }],
        ..GatewayOptions::default()
    })
    .await;
    let r = get_models(&gw, "/v1/models/haiku", false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["id"], "haiku");
    assert_eq!(v["object"], "model");
    assert_eq!(
        v["created"], 1_760_486_400,
        "Claude Haiku 4.5's release date"
    );
    assert_eq!(v["owned_by"], "anthropic");
    let r = get_models(&gw, "/v1/models/anthropic:claude-haiku-4-5", true).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json(),
        json!({"type": "model", "id": "anthropic:claude-haiku-4-5",
               "display_name": "Claude Haiku 4.5", "created_at": "2025-10-15T00:00:00Z"})
    );
    let r = get_models(&gw, "/v1/models/no-such-model", false).await;
    assert_openai_error(&r, 404);
    let r = get_models(&gw, "/v1/models/no-such-model", true).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        error_type(Shape::Anthropic, &r.json()).as_deref(),
        Some("not_found_error"),
        "{}",
        r.text
    );
    // A model the key may not use does not exist for it.
    let r = send(
        gw.client()
            .get(gw.url("/v1/models/gpt-5"))
            .bearer_auth(&gw.key_named("haiku-only").token),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(
        gw.upstream.requests().is_empty(),
        "models are answered locally"
    );
}

// ---------------------------------------------------------------------------------------------
// Agent sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_session_headers_make_each_run_a_session() {
    let mut gw = gateway().await;
    let n = nonce();
    let claude = format!("cc-{n}-5f0c1e2a");
    let codex = format!("019a8c1e-{n}");
    let explicit = format!("explicit-{n}");
    let overridden = format!("overridden-{n}");
    for _ in 0..2 {
        let r = send(
            anthropic_post(&gw, "/v1/messages?beta=true")
                .header("X-Claude-Code-Session-Id", &claude)
                .json(&anthropic_body("haiku", "hi")),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = send(
            openai_post(&gw, "/v1/responses")
                .header("session-id", &codex)
                .json(&json!({"model": "gpt-5", "input": "hi", "store": false})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Ours wins over the agent's; an agent id that is not a valid session id is ignored.
    let r = send(
        anthropic_post(&gw, "/v1/messages")
            .header("x-metis-session-id", &explicit)
            .header("X-Claude-Code-Session-Id", &overridden)
            .json(&anthropic_body("haiku", "hi")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = send(
        anthropic_post(&gw, "/v1/messages")
            .header("X-Claude-Code-Session-Id", "not a valid id!")
            .json(&anthropic_body("haiku", "hi")),
    )
    .await;
    assert_eq!(
        r.status, 200,
        "an unusable agent id does not fail the request: {}",
        r.text
    );

    let events = stopped_events(&mut gw).await;
    let sessions = metis::store::for_existing(&gw.db_path, Some(gw.store), &gw.database)
        .unwrap()
        .open_reader(&gw.db_path)
        .unwrap();
    for (id, turns) in [(&claude, 2), (&codex, 2), (&explicit, 1)] {
        let s = sessions
            .session(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{id} stored"));
        assert_eq!(s.turn_count, turns, "{id}: {s:?}");
        assert!(s.cost_so_far_usd > 0.0, "{id}: {s:?}");
        let calls = of_type(&events, "llm.call_completed")
            .into_iter()
            .filter(|e| e.session_id == **id)
            .count();
        assert_eq!(calls, turns as usize, "{id}");
    }
    assert!(sessions.session(&overridden).unwrap().is_none());
    let listed = metis::sessions_cli::list_text(&sessions.sessions(None, 100).unwrap());
    assert!(
        listed.contains(&claude) && listed.contains(&codex),
        "{listed}"
    );
}

// ---------------------------------------------------------------------------------------------
// Visibility of refused requests
// ---------------------------------------------------------------------------------------------

/// The `route` labels of `metis_http_requests_total` that start with `unmatched:`.
fn unmatched_labels(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("metis_http_requests_total{"))
        .filter_map(|l| l.split("route=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .filter(|route| route.starts_with("unmatched:"))
        .map(str::to_owned)
        .collect()
}

/// A letters-only path segment for `i` (digits would be folded into `{id}`).
fn letters(mut i: usize) -> String {
    let mut s = String::new();
    loop {
        s.push(char::from(b'a' + (i % 26) as u8));
        i /= 26;
        if i == 0 {
            return s;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_counted_by_a_bounded_path_label() {
    let gw = gateway().await;
    let r = send(openai_post(&gw, "/v1/completions").json(&json!({"model": "gpt-5"}))).await;
    assert_openai_error(&r, 404);
    let r = send(gw.client().get(gw.url("/v1/files/file-AbC123xyz/content"))).await;
    assert_eq!(r.status, 404);
    let labels = unmatched_labels(&metrics(&gw).await);
    assert!(
        labels.contains("unmatched:/v1/completions"),
        "the missing route is named: {labels:?}"
    );
    assert!(
        labels.contains("unmatched:/v1/files/{id}"),
        "ids are folded: {labels:?}"
    );
    for i in 0..40 {
        let r = send(gw.client().post(gw.url(&format!("/probe/{}", letters(i))))).await;
        assert_eq!(r.status, 404);
    }
    let labels = unmatched_labels(&metrics(&gw).await);
    assert!(labels.len() <= 33, "bounded: {} labels", labels.len());
    assert!(labels.contains("unmatched:other"), "{labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id() {
    let gw = gateway().await;
    let r = send(
        openai_post(&gw, "/v1/responses")
            .header("x-request-id", "client-req-42")
            .json(&json!({"model": "gpt-5", "input": "hi"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-request-id"), Some("client-req-42"));
    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        let r = send(gw.client().post(gw.url("/v1/responses")).json(&json!({}))).await;
        assert_eq!(r.status, 401);
        let id = r.header("x-request-id").expect("an id on errors too");
        assert_eq!(id.len(), 26, "a ULID: {id}");
        seen.insert(id.to_owned());
    }
    assert_eq!(seen.len(), 2, "fresh per request");
}

/// The gateway's JSON log lines for one request id that report an error answer.
fn error_lines(stderr: &str, request_id: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "request answered with an error")
        .filter(|v| v["fields"]["request_id"] == request_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_log_one_info_line_each() {
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = vec!["--data-dir".to_owned(), dir.path().display().to_string()];
    let (_, token) = tokio::task::spawn_blocking(move || issue_key(&storage, "logs", &[]))
        .await
        .unwrap()
        .unwrap();
    let mut args = vec![
        "--port".to_owned(),
        "0".to_owned(),
        "--log-format".to_owned(),
        "json".to_owned(),
    ];
    args.extend(upstream_args(&upstream.base_url(), dir.path()));
    let mut gw = GatewayProcess::spawn_async(
        args,
        upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY),
    )
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let secret_text = format!("secret-body-text-{}", nonce());
    let cases: [(&str, &str, Value, bool, u16); 4] = [
        (
            "log-404",
            "/v1/completions",
            json!({"prompt": secret_text}),
            true,
            404,
        ),
        (
            "log-401",
            "/v1/responses",
            json!({"input": secret_text}),
            false,
            401,
        ),
        (
            "log-400",
            "/v1/responses",
            json!({"model": "haiku", "input": secret_text, "previous_response_id": "resp_1"}),
            true,
            400,
        ),
        (
            "log-200",
            "/v1/responses",
            json!({"model": "haiku", "input": secret_text}),
            true,
            200,
        ),
    ];
    for (id, path, body, authed, status) in &cases {
        let mut req = client
            .post(gw.url_of(path))
            .header("x-request-id", *id)
            .json(body);
        if *authed {
            req = req.bearer_auth(&token);
        }
        let r = send(req).await;
        assert_eq!(r.status, *status, "{id}: {}", r.text);
        assert_eq!(r.header("x-request-id"), Some(*id));
    }
    gw.stop(Duration::from_secs(20)).await.unwrap();
    let stderr = gw.stderr();
    for (id, path, _, _, status) in &cases {
        let lines = error_lines(&stderr, id);
        if *status < 400 {
            assert!(lines.is_empty(), "{id}: {lines:?}");
            continue;
        }
        assert_eq!(lines.len(), 1, "{id}: one line\n{stderr}");
        let line = &lines[0];
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["fields"]["status"], *status, "{line}");
        assert!(
            line["fields"]["code"]
                .as_str()
                .is_some_and(|c| !c.is_empty() && c != "-"),
            "{line}"
        );
        let route = line["fields"]["route"].as_str().unwrap();
        if *path == "/v1/completions" {
            assert_eq!(route, "unmatched:/v1/completions");
        } else {
            assert_eq!(route, *path);
        }
    }
    assert!(!stderr.contains(&secret_text), "no request body in the log");
    assert!(!stderr.contains(&token), "no key in the log");
}
