//! Tests of the fake upstream itself: its frames must be what the real providers send, or the
//! gateway tests built on it prove nothing.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::fake_upstream::{
    ANTHROPIC_MODELS, Api, AuthCheck, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, Directives,
    EMBEDDING_DIMENSIONS, FakeUpstream, OPENAI_MODELS, Provider, REASONING_ENCRYPTED_CONTENT,
    RESPONSES_CONTEXT_LENGTH_MESSAGE, RESPONSES_STREAM_ERROR_MESSAGE, StreamOutcome,
    THINKING_SIGNATURE, THINKING_TEXT, TOOL_ARGUMENTS, embedding_dimensions, embedding_vector,
    estimate_input_tokens, model_accepts_system_messages, out_tokens, token_embedding_vector,
};
use metis_tests::{SseEvent, parse_sse};
use serde_json::{Value, json};
use std::time::Duration;

const AK: &str = "test-anthropic-key";
const OK: &str = "test-openai-key";

async fn fake() -> FakeUpstream {
    FakeUpstream::start(AK, OK).await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn anthropic_body(text: &str, stream: bool) -> Value {
    json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    })
}

fn openai_body(text: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-5",
        "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
    })
}

async fn post_anthropic(f: &FakeUpstream, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", f.base_url()))
        .header("x-api-key", AK)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn post_openai(f: &FakeUpstream, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", f.openai_base_url()))
        .bearer_auth(OK)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Check an Anthropic event stream is well-formed: every data is JSON whose `type` equals the
/// event name, blocks open/close in order, and it ends with `message_stop`.
fn assert_anthropic_sequence(events: &[SseEvent]) {
    assert_eq!(
        events.first().unwrap().event.as_deref(),
        Some("message_start")
    );
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("message_stop")
    );
    let mut open: Option<u64> = None;
    let mut next_index = 0;
    for e in events {
        let data = e.json().unwrap_or_else(|| panic!("not JSON: {}", e.data));
        assert_eq!(data["type"].as_str(), e.event.as_deref(), "{data}");
        match e.event.as_deref().unwrap() {
            "content_block_start" => {
                assert!(open.is_none());
                assert_eq!(data["index"], next_index);
                open = data["index"].as_u64();
            }
            "content_block_delta" => assert_eq!(data["index"].as_u64(), open),
            "content_block_stop" => {
                assert_eq!(data["index"].as_u64(), open);
                open = None;
                next_index += 1;
            }
            "message_delta" => {
                assert!(open.is_none());
                assert!(data["delta"]["stop_reason"].is_string());
                assert!(data["usage"]["output_tokens"].is_u64());
            }
            _ => {}
        }
    }
}

#[test]
fn directives_parse_every_token() {
    let d = Directives::parse(
        "hi [tool:get_weather] [think][status:429] [fail-once:503] [slow:20] [cache] [bogus] [cut]",
    );
    assert_eq!(d.tool.as_deref(), Some("get_weather"));
    assert!(d.think && d.cache && d.cut);
    assert_eq!(d.status, Some(429));
    assert_eq!(d.fail_once, Some(503));
    assert_eq!(d.slow_ms, Some(20));
    assert_eq!(Directives::parse("plain text"), Directives::default());
}

#[tokio::test]
async fn anthropic_sync_message_has_the_real_fields() {
    let f = fake().await;
    let resp = post_anthropic(&f, &anthropic_body("hello there [cache]", false)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("request-id"));
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("msg_01"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-haiku-4-5");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["content"][0]["text"], "echo: hello there [cache]");
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["stop_sequence"].is_null());
    assert_eq!(v["usage"]["cache_read_input_tokens"], CACHE_READ_TOKENS);
    assert_eq!(
        v["usage"]["cache_creation_input_tokens"],
        CACHE_WRITE_TOKENS
    );
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    let reqs = f.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].auth, AuthCheck::Matched);
    assert_eq!(reqs[0].header("x-api-key"), Some("<matched>"));
    assert_eq!(reqs[0].body["max_tokens"], 256);
}

#[tokio::test]
async fn anthropic_rejects_bad_credentials_and_missing_version() {
    let f = fake().await;
    let c = client();
    let url = format!("{}/v1/messages", f.base_url());
    let body = anthropic_body("hi", false);
    let r = c
        .post(&url)
        .header("x-api-key", "wrong")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    let r = c
        .post(&url)
        .header("x-api-key", AK)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anthropic-version")
    );
    let reqs = f.requests();
    assert_eq!(reqs[0].auth, AuthCheck::Mismatched);
    assert_eq!(reqs[0].header("x-api-key"), Some("<mismatched>"));
    assert!(
        !serde_json::to_string(&reqs).unwrap().contains("wrong"),
        "credentials must never be recorded"
    );
}

#[tokio::test]
async fn anthropic_validates_required_fields_and_tool_pairing() {
    let f = fake().await;
    let r = post_anthropic(
        &f,
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    let orphan = json!({
        "model": "m", "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_A", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_B", "content": "r"}]},
        ]
    });
    let r = post_anthropic(&f, &orphan).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("tool_use"),
        "{v}"
    );
    let system_role = json!({"model": "m", "max_tokens": 10,
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]});
    assert_eq!(post_anthropic(&f, &system_role).await.status(), 400);
}

#[tokio::test]
async fn anthropic_stream_follows_the_real_event_sequence() {
    let f = fake().await;
    let resp = post_anthropic(&f, &anthropic_body("stream me please now", true)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = parse_sse(&resp.text().await.unwrap());
    assert_anthropic_sequence(&events);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(
        &names[..3],
        &["message_start", "ping", "content_block_start"]
    );
    let start = events[0].json().unwrap();
    assert!(start["message"]["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let text: String = events
        .iter()
        .filter_map(SseEvent::json)
        .filter(|d| d["delta"]["type"] == "text_delta")
        .map(|d| d["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "echo: stream me please now");
    let deltas = names
        .iter()
        .filter(|n| **n == "content_block_delta")
        .count();
    assert!(deltas >= 2, "text arrives in several deltas");
    let md = events
        .iter()
        .find(|e| e.event.as_deref() == Some("message_delta"))
        .unwrap();
    assert_eq!(md.json().unwrap()["delta"]["stop_reason"], "end_turn");
    let reqs = f.wait_for_stream_outcomes(Duration::from_secs(5)).await;
    assert_eq!(reqs[0].stream_outcome, Some(StreamOutcome::Completed));
}

#[tokio::test]
async fn anthropic_stream_with_thinking_and_tool_use() {
    let f = fake().await;
    let resp = post_anthropic(&f, &anthropic_body("[think] go", true)).await;
    let events = parse_sse(&resp.text().await.unwrap());
    assert_anthropic_sequence(&events);
    let datas: Vec<Value> = events.iter().filter_map(SseEvent::json).collect();
    assert_eq!(datas[2]["content_block"]["type"], "thinking");
    assert!(datas.iter().any(|d| d["delta"]["type"] == "thinking_delta"));
    assert!(
        datas
            .iter()
            .any(|d| d["delta"]["signature"] == THINKING_SIGNATURE)
    );
    assert!(
        datas
            .iter()
            .any(|d| d["content_block"]["type"] == "text" && d["index"] == 1)
    );

    let resp = post_anthropic(&f, &anthropic_body("[tool:get_weather] weather?", true)).await;
    let events = parse_sse(&resp.text().await.unwrap());
    assert_anthropic_sequence(&events);
    let datas: Vec<Value> = events.iter().filter_map(SseEvent::json).collect();
    let start = datas
        .iter()
        .find(|d| d["type"] == "content_block_start")
        .unwrap();
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert_eq!(start["content_block"]["name"], "get_weather");
    assert!(
        start["content_block"]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_")
    );
    let args: String = datas
        .iter()
        .filter(|d| d["delta"]["type"] == "input_json_delta")
        .map(|d| d["delta"]["partial_json"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args, TOOL_ARGUMENTS);
    let md = datas.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(md["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn anthropic_tool_round_trip_answers_with_the_result() {
    let f = fake().await;
    let first: Value = post_anthropic(&f, &anthropic_body("[tool:get_weather] weather?", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["stop_reason"], "tool_use");
    let tool_use = &first["content"][0];
    assert_eq!(tool_use["input"], json!({"city": "Paris"}));
    let second = json!({
        "model": "claude-haiku-4-5", "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "[tool:get_weather] weather?"},
            {"role": "assistant", "content": first["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "18C sunny"}]},
        ]
    });
    let v: Value = post_anthropic(&f, &second).await.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "tool result: 18C sunny");
    assert_eq!(v["stop_reason"], "end_turn");
}

#[tokio::test]
async fn anthropic_scripted_errors_use_real_bodies() {
    let f = fake().await;
    let r = post_anthropic(&f, &anthropic_body("[status:529]", false)).await;
    assert_eq!(r.status(), 529);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
    let r = post_anthropic(&f, &anthropic_body("[status:429]", true)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "rate_limit_error"
    );
    let r = post_anthropic(&f, &anthropic_body("[overflow]", false)).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt is too long")
    );
    let body = anthropic_body("[fail-once:503] once", false);
    assert_eq!(post_anthropic(&f, &body).await.status(), 503);
    assert_eq!(post_anthropic(&f, &body).await.status(), 200);
    let r = post_anthropic(&f, &anthropic_body("[garbage]", false)).await;
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.is_err());
}

#[tokio::test]
async fn anthropic_stream_failures() {
    let f = fake().await;
    let r = post_anthropic(
        &f,
        &anthropic_body("one two three four five six [stream-error]", true),
    )
    .await;
    let events = parse_sse(&r.text().await.unwrap());
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    assert_eq!(last.json().unwrap()["error"]["type"], "overloaded_error");
    assert!(
        !events
            .iter()
            .any(|e| e.event.as_deref() == Some("message_stop"))
    );

    let r = post_anthropic(
        &f,
        &anthropic_body("one two three four five six [cut]", true),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.text().await.is_err(),
        "a cut stream must fail to read to the end"
    );
    let reqs = f.wait_for_stream_outcomes(Duration::from_secs(5)).await;
    assert_eq!(reqs[1].stream_outcome, Some(StreamOutcome::Cut));

    let r = post_anthropic(&f, &anthropic_body("[garbage]", true)).await;
    let events = parse_sse(&r.text().await.unwrap());
    assert!(events.iter().any(|e| e.json().is_none()));
}

#[tokio::test]
async fn openai_sync_completion_has_the_real_fields() {
    let f = fake().await;
    let r = post_openai(&f, &openai_body("hi there [cache]", false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-5");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "echo: hi there [cache]"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["prompt_tokens_details"]["cached_tokens"],
        CACHE_READ_TOKENS
    );
    assert!(u["prompt_tokens"].as_u64().unwrap() > CACHE_READ_TOKENS);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    // The same path without the `/v1` prefix works too.
    let r = client()
        .post(format!("{}/chat/completions", f.base_url()))
        .bearer_auth(OK)
        .json(&openai_body("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn openai_rejects_bad_credentials() {
    let f = fake().await;
    let r = client()
        .post(format!("{}/chat/completions", f.openai_base_url()))
        .bearer_auth("nope")
        .json(&openai_body("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(
        f.requests()[0].header("authorization"),
        Some("<mismatched>")
    );
}

#[tokio::test]
async fn openai_tool_calls_and_round_trip_validation() {
    let f = fake().await;
    let v: Value = post_openai(&f, &openai_body("[tool:get_weather] weather?", false))
        .await
        .json()
        .await
        .unwrap();
    let msg = &v["choices"][0]["message"];
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert!(msg["content"].is_null());
    let call = &msg["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["arguments"], TOOL_ARGUMENTS);
    let mut follow = openai_body("[tool:get_weather] weather?", false);
    let msgs = follow["messages"].as_array_mut().unwrap();
    msgs.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    msgs.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "18C sunny"}));
    let v: Value = post_openai(&f, &follow).await.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "tool result: 18C sunny"
    );
    // A tool message answering an unknown call id is rejected as the real API does.
    let last = follow["messages"]
        .as_array_mut()
        .unwrap()
        .last_mut()
        .unwrap();
    last["tool_call_id"] = json!("call_unknown");
    assert_eq!(post_openai(&f, &follow).await.status(), 400);
}

#[tokio::test]
async fn openai_stream_with_and_without_usage() {
    let f = fake().await;
    let r = post_openai(&f, &openai_body("alpha beta gamma delta", true)).await;
    let events = parse_sse(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| e.json().unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: alpha beta gamma delta");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    let mut body = openai_body("[tool:lookup] find", true);
    body["stream_options"] = json!({"include_usage": true});
    let events = parse_sse(&post_openai(&f, &body).await.text().await.unwrap());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| e.json().unwrap())
        .collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let start = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].is_string())
        .unwrap();
    assert_eq!(
        start["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "lookup"
    );
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, TOOL_ARGUMENTS);
}

#[tokio::test]
async fn openai_stream_failures() {
    let f = fake().await;
    let r = post_openai(
        &f,
        &openai_body("one two three four five six [stream-error]", true),
    )
    .await;
    let events = parse_sse(&r.text().await.unwrap());
    let last = events.last().unwrap();
    assert_eq!(last.json().unwrap()["error"]["type"], "server_error");
    assert!(!events.iter().any(|e| e.data == "[DONE]"));
    let r = post_openai(&f, &openai_body("one two three four five six [cut]", true)).await;
    assert!(r.text().await.is_err());
    let r = post_openai(&f, &openai_body("[status:429] x", true)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limit_exceeded"
    );
    let r = post_openai(&f, &openai_body("[overflow]", false)).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "context_length_exceeded"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_is_seen_as_dropped() {
    let f = fake().await;
    let mut r = post_anthropic(&f, &anthropic_body("[long] go", true)).await;
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(r);
    let reqs = f.wait_for_stream_outcomes(Duration::from_secs(5)).await;
    assert_eq!(reqs[0].stream_outcome, Some(StreamOutcome::ClientDropped));
}

#[tokio::test]
async fn slow_delays_the_head() {
    let f = fake().await;
    let t = std::time::Instant::now();
    let r = post_openai(&f, &openai_body("[slow:300] x", false)).await;
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn requests_are_served_over_http_and_reset() {
    let f = fake().await;
    post_openai(&f, &openai_body("recorded", false)).await;
    let c = client();
    let list: Value = c
        .get(format!("{}/_requests", f.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["path"], "/v1/chat/completions");
    assert_eq!(list[0]["auth"], "matched");
    assert_eq!(list[0]["body"]["messages"][1]["content"], "recorded");
    let r = c
        .post(format!("{}/_reset", f.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(f.requests().is_empty());
    let r = c
        .get(format!("{}/nope", f.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
}

#[tokio::test]
async fn split_and_crlf_frames_still_parse() {
    let f = fake().await;
    let text = "[split] [crlf] héllo 世界 🎉 done";
    let mut r = post_anthropic(&f, &anthropic_body(text, true)).await;
    let mut pieces = 0;
    let mut bytes = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        pieces += 1;
        bytes.extend_from_slice(&c);
    }
    assert!(pieces > 20, "arrives in many pieces ({pieces})");
    let body = String::from_utf8(bytes).unwrap();
    assert!(body.contains("\r\n\r\n"));
    let events = parse_sse(&body);
    assert_anthropic_sequence(&events);
    let got: String = events
        .iter()
        .filter_map(SseEvent::json)
        .filter(|d| d["delta"]["type"] == "text_delta")
        .map(|d| d["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, format!("echo: {text}"));
}

#[tokio::test]
async fn ids_are_unrelated_between_responses() {
    let f = fake().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let v: Value = post_anthropic(&f, &anthropic_body("[tool:t] x", false))
            .await
            .json()
            .await
            .unwrap();
        ids.push(v["id"].as_str().unwrap()["msg_01".len()..].to_owned());
        ids.push(v["content"][0]["id"].as_str().unwrap()["toolu_01".len()..].to_owned());
    }
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert!(
                !b.contains(&a[4..12]),
                "{a} and {b} share a run of characters"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses API, token counting, embeddings, models, header recording
// ---------------------------------------------------------------------------------------------

async fn post_responses(f: &FakeUpstream, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/responses", f.openai_base_url()))
        .bearer_auth(OK)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn responses_json(f: &FakeUpstream, body: &Value) -> (u16, Value) {
    let r = post_responses(f, body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn weather_tool(name: &str) -> Value {
    json!({"type": "function", "name": name, "description": "weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}})
}

/// Check a Responses event stream is well-formed: every data is JSON whose `type` equals the
/// event name, `sequence_number` counts from 0, items open and close in output order with
/// their parts inside them, and it starts with `response.created`, `response.in_progress`.
fn assert_responses_sequence(events: &[SseEvent]) {
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(&names[..2], &["response.created", "response.in_progress"]);
    let mut open_item: Option<u64> = None;
    let mut next_index = 0;
    let mut open_part = false;
    for (i, e) in events.iter().enumerate() {
        let data = e.json().unwrap_or_else(|| panic!("not JSON: {}", e.data));
        assert_eq!(data["type"].as_str(), e.event.as_deref(), "{data}");
        assert_eq!(data["sequence_number"], i, "{data}");
        let name = e.event.as_deref().unwrap();
        match name {
            "response.output_item.added" => {
                assert!(open_item.is_none(), "{data}");
                assert_eq!(data["output_index"], next_index);
                assert!(data["item"]["id"].is_string());
                open_item = data["output_index"].as_u64();
            }
            "response.output_item.done" => {
                assert!(!open_part);
                assert_eq!(data["output_index"].as_u64(), open_item);
                open_item = None;
                next_index += 1;
            }
            "response.content_part.added" => {
                assert!(!open_part);
                open_part = true;
            }
            "response.content_part.done" => {
                assert!(open_part);
                open_part = false;
            }
            "response.output_text.delta" | "response.output_text.done" => assert!(open_part),
            n if n.starts_with("response.function_call_arguments.")
                || n.starts_with("response.reasoning_summary_") =>
            {
                assert!(open_item.is_some(), "{n} outside an item");
            }
            _ => {}
        }
        if name.starts_with("response.output_text.")
            || name.starts_with("response.content_part.")
            || name.starts_with("response.function_call_arguments.")
        {
            assert_eq!(data["output_index"].as_u64(), open_item, "{data}");
            assert!(data["item_id"].is_string());
        }
    }
}

#[test]
fn directives_parse_aliases_and_flavours() {
    assert!(Directives::parse("[too-long]").overflow);
    let d = Directives::parse("x [stream-error:event]");
    assert!(d.stream_error && d.stream_error_event);
    let d = Directives::parse("x [stream-error]");
    assert!(d.stream_error && !d.stream_error_event);
}

#[tokio::test]
async fn responses_sync_object_has_the_real_fields() {
    let f = fake().await;
    let body = json!({"model": "gpt-5", "input": "hello there [cache]", "instructions": "be brief",
                      "metadata": {"k": "v"}, "max_output_tokens": 100});
    let r = post_responses(&f, &body).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert!(v["created_at"].as_u64().unwrap() > 1_700_000_000);
    assert!(v["error"].is_null() && v["incomplete_details"].is_null());
    // Request fields come back echoed.
    assert_eq!(v["model"], "gpt-5");
    assert_eq!(v["instructions"], "be brief");
    assert_eq!(v["metadata"], json!({"k": "v"}));
    assert_eq!(v["max_output_tokens"], 100);
    assert_eq!(v["store"], true);
    assert_eq!(v["tool_choice"], "auto");
    let out = v["output"].as_array().unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["type"], "message");
    assert_eq!(out[0]["role"], "assistant");
    assert_eq!(out[0]["status"], "completed");
    assert!(out[0]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(out[0]["content"][0]["type"], "output_text");
    assert_eq!(out[0]["content"][0]["text"], "echo: hello there [cache]");
    assert_eq!(out[0]["content"][0]["annotations"], json!([]));
    let u = &v["usage"];
    assert_eq!(
        u["input_tokens_details"]["cached_tokens"],
        CACHE_READ_TOKENS
    );
    assert_eq!(
        u["input_tokens"].as_u64().unwrap(),
        estimate_input_tokens(&body) + CACHE_READ_TOKENS
    );
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap()
    );
    let rec = &f.requests()[0];
    assert_eq!((rec.provider, rec.api), (Provider::OpenAi, Api::Responses));
    assert!(rec.is_responses());
    // Without the `/v1` prefix too.
    let r = client()
        .post(format!("{}/responses", f.base_url()))
        .bearer_auth(OK)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(f.requests()[1].path, "/responses");
}

#[tokio::test]
async fn responses_tool_call_and_reasoning_items() {
    let f = fake().await;
    let body = json!({"model": "gpt-5", "input": "[tool:get_weather] [think] weather?",
                      "tools": [weather_tool("get_weather")]});
    let (status, v) = responses_json(&f, &body).await;
    assert_eq!(status, 200);
    let out = v["output"].as_array().unwrap();
    let kinds: Vec<&str> = out.iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reasoning", "function_call"]);
    // Reasoning content is opt-in, as with the real API: no summary, no encrypted content.
    assert_eq!(out[0]["summary"], json!([]));
    assert!(out[0].get("encrypted_content").is_none());
    assert!(out[0]["id"].as_str().unwrap().starts_with("rs_"));
    let call = &out[1];
    assert!(call["id"].as_str().unwrap().starts_with("fc_"));
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["arguments"], TOOL_ARGUMENTS);
    assert_eq!(call["status"], "completed");
    assert!(
        v["usage"]["output_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let mut asked = body.clone();
    asked["reasoning"] = json!({"effort": "low", "summary": "auto"});
    asked["include"] = json!(["reasoning.encrypted_content"]);
    let (_, v) = responses_json(&f, &asked).await;
    let reasoning = &v["output"][0];
    assert_eq!(reasoning["summary"][0]["type"], "summary_text");
    assert_eq!(reasoning["summary"][0]["text"], THINKING_TEXT);
    assert_eq!(reasoning["encrypted_content"], REASONING_ENCRYPTED_CONTENT);
    assert_eq!(v["reasoning"], json!({"effort": "low", "summary": "auto"}));
}

#[tokio::test]
async fn responses_stream_follows_the_real_event_sequence() {
    let f = fake().await;
    let body = json!({"model": "gpt-5", "input": "stream me please now", "stream": true});
    let r = post_responses(&f, &body).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = parse_sse(&r.text().await.unwrap());
    assert_responses_sequence(&events);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(
        &names[2..4],
        &["response.output_item.added", "response.content_part.added"]
    );
    assert_eq!(
        &names[names.len() - 4..],
        &[
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert!(!events.iter().any(|e| e.data == "[DONE]"));
    let datas: Vec<Value> = events.iter().filter_map(SseEvent::json).collect();
    assert_eq!(datas[0]["response"]["status"], "in_progress");
    assert!(datas[0]["response"]["usage"].is_null());
    let deltas: Vec<&str> = datas
        .iter()
        .filter(|d| d["type"] == "response.output_text.delta")
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert!(deltas.len() >= 2, "text arrives in several deltas");
    assert_eq!(deltas.concat(), "echo: stream me please now");
    let done = &datas.last().unwrap()["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["output"][0]["content"][0]["text"],
        "echo: stream me please now"
    );
    assert_eq!(
        done["usage"]["input_tokens"].as_u64().unwrap(),
        estimate_input_tokens(&body)
    );
    // The final object and the streamed items agree.
    let item_done = datas
        .iter()
        .find(|d| d["type"] == "response.output_item.done")
        .unwrap();
    assert_eq!(item_done["item"], done["output"][0]);
    assert_eq!(datas[0]["response"]["id"], done["id"]);
    let reqs = f.wait_for_stream_outcomes(Duration::from_secs(5)).await;
    assert_eq!(reqs[0].stream_outcome, Some(StreamOutcome::Completed));
}

#[tokio::test]
async fn responses_stream_with_reasoning_summary_and_tool_call() {
    let f = fake().await;
    let body = json!({"model": "gpt-5", "input": "[tool:lookup] [think] find", "stream": true,
                      "tools": [weather_tool("lookup")],
                      "reasoning": {"summary": "auto"}, "include": ["reasoning.encrypted_content"]});
    let events = parse_sse(&post_responses(&f, &body).await.text().await.unwrap());
    assert_responses_sequence(&events);
    let datas: Vec<Value> = events.iter().filter_map(SseEvent::json).collect();
    let summary: String = datas
        .iter()
        .filter(|d| d["type"] == "response.reasoning_summary_text.delta")
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(summary, THINKING_TEXT);
    for ty in [
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.function_call_arguments.done",
    ] {
        assert!(datas.iter().any(|d| d["type"] == ty), "{ty} missing");
    }
    let added = datas
        .iter()
        .filter(|d| d["type"] == "response.output_item.added")
        .collect::<Vec<_>>();
    assert_eq!(added[1]["item"]["type"], "function_call");
    assert_eq!(added[1]["item"]["arguments"], "");
    assert_eq!(added[1]["item"]["status"], "in_progress");
    let args: String = datas
        .iter()
        .filter(|d| d["type"] == "response.function_call_arguments.delta")
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(args, TOOL_ARGUMENTS);
    let done = &datas.last().unwrap()["response"];
    assert_eq!(
        done["output"][0]["encrypted_content"],
        REASONING_ENCRYPTED_CONTENT
    );
    assert_eq!(done["output"][1]["arguments"], TOOL_ARGUMENTS);
    assert_eq!(
        added[1]["item"]["call_id"], done["output"][1]["call_id"],
        "the streamed and final call ids agree"
    );
}

#[tokio::test]
async fn responses_validate_like_the_real_api() {
    let f = fake().await;
    let cases = [
        (
            json!({"model": "gpt-5", "input": [
                {"role": "user", "content": "x"},
                {"type": "function_call_output", "call_id": "call_orphan", "output": "r"}]}),
            "No tool call found for function call output with call_id call_orphan.",
            Some("input"),
        ),
        (
            json!({"model": "gpt-5", "input": [
                {"role": "user", "content": "x"},
                {"type": "function_call", "call_id": "call_open", "name": "f", "arguments": "{}"},
                {"role": "user", "content": "next"}]}),
            "No tool output found for function call call_open.",
            Some("input"),
        ),
        (
            json!({"model": "gpt-5", "input": "x", "previous_response_id": "resp_nope"}),
            "Previous response with id 'resp_nope' not found.",
            Some("previous_response_id"),
        ),
        (
            json!({"model": "gpt-5", "input": "x",
                   "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
            "Missing required parameter: 'tools[0].name'.",
            Some("tools[0].name"),
        ),
        (
            json!({"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}),
            "Unknown parameter: 'messages'.",
            Some("messages"),
        ),
        (
            json!({"model": "gpt-5", "input": [
                {"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]}),
            "Invalid value: 'input_text'. Supported values are: 'output_text' and 'refusal'.",
            Some("input[0].content[0]"),
        ),
        (
            json!({"model": "gpt-5", "input": [
                {"role": "user", "content": "x"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}},
                {"type": "function_call_output", "call_id": "c", "output": "r"}]}),
            "Invalid type for 'input[1].arguments': expected a string, but got an object instead.",
            Some("input[1].arguments"),
        ),
        (
            json!({"model": "gpt-5", "input": "x", "max_output_tokens": 5}),
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 5 instead.",
            Some("max_output_tokens"),
        ),
        (
            json!({"model": "gpt-5"}),
            "Missing required parameter: 'input'.",
            Some("input"),
        ),
        (
            json!({"input": "x"}),
            "Missing required parameter: 'model'.",
            Some("model"),
        ),
    ];
    for (body, message, param) in &cases {
        let (status, v) = responses_json(&f, body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["message"], *message, "{body}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"].as_str(), *param, "{body}");
    }
    assert_eq!(
        f.requests().len(),
        cases.len(),
        "rejected requests are recorded"
    );
    let r = client()
        .post(format!("{}/responses", f.openai_base_url()))
        .bearer_auth("wrong")
        .json(&json!({"model": "gpt-5", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
}

#[tokio::test]
async fn responses_previous_response_id_continues_stored_conversations() {
    let f = fake().await;
    let (_, first) = responses_json(
        &f,
        &json!({"model": "gpt-5", "input": "[tool:get_weather] weather?",
                "tools": [weather_tool("get_weather")]}),
    )
    .await;
    let call_id = first["output"][0]["call_id"].as_str().unwrap().to_owned();
    let follow = json!({"model": "gpt-5", "previous_response_id": first["id"],
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "18C sunny"}]});
    let (status, v) = responses_json(&f, &follow).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "tool result: 18C sunny"
    );
    assert_eq!(v["previous_response_id"], first["id"]);
    // The chain goes on: the second answer was stored too.
    let (status, v2) = responses_json(
        &f,
        &json!({"model": "gpt-5", "previous_response_id": v["id"], "input": "thanks"}),
    )
    .await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["output"][0]["content"][0]["text"], "echo: thanks");
    // A response served with `store: false` cannot be continued.
    let (_, unstored) =
        responses_json(&f, &json!({"model": "gpt-5", "input": "x", "store": false})).await;
    let (status, v) = responses_json(
        &f,
        &json!({"model": "gpt-5", "previous_response_id": unstored["id"], "input": "y"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "previous_response_not_found");
    // `_reset` forgets stored conversations.
    f.reset();
    let (status, _) = responses_json(&f, &follow).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn responses_scripted_failures() {
    let f = fake().await;
    let streamed = |text: &str| json!({"model": "gpt-5", "input": text, "stream": true});
    let events = parse_sse(
        &post_responses(&f, &streamed("one two three four five six [stream-error]"))
            .await
            .text()
            .await
            .unwrap(),
    );
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("response.failed"));
    let failed = last.json().unwrap();
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(failed["response"]["error"]["code"], "server_error");
    assert_eq!(
        failed["response"]["error"]["message"],
        RESPONSES_STREAM_ERROR_MESSAGE
    );
    assert!(
        !events
            .iter()
            .any(|e| e.event.as_deref() == Some("response.completed"))
    );

    let events = parse_sse(
        &post_responses(
            &f,
            &streamed("one two three four five six [stream-error:event]"),
        )
        .await
        .text()
        .await
        .unwrap(),
    );
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    let err = last.json().unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["code"], "server_error");
    assert!(err["sequence_number"].is_u64());

    let r = post_responses(&f, &streamed("one two three four five six [cut]")).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.is_err(), "a cut stream fails to read");
    let reqs = f.wait_for_stream_outcomes(Duration::from_secs(5)).await;
    assert_eq!(reqs[2].stream_outcome, Some(StreamOutcome::Cut));

    let r = post_responses(&f, &streamed("[status:429] x")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limit_exceeded"
    );
    let (status, v) = responses_json(&f, &json!({"model": "gpt-5", "input": "[too-long] x"})).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["message"], RESPONSES_CONTEXT_LENGTH_MESSAGE);
    let r = post_responses(&f, &json!({"model": "gpt-5", "input": "[garbage]"})).await;
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.is_err());
    let events = parse_sse(
        &post_responses(&f, &streamed("[garbage]"))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert!(events.iter().any(|e| e.json().is_none()));
}

#[tokio::test]
async fn responses_length_ends_incomplete() {
    let f = fake().await;
    let (_, v) = responses_json(&f, &json!({"model": "gpt-5", "input": "[length] go"})).await;
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(v["output"][0]["status"], "incomplete");
    let events = parse_sse(
        &post_responses(
            &f,
            &json!({"model": "gpt-5", "input": "[length] go", "stream": true}),
        )
        .await
        .text()
        .await
        .unwrap(),
    );
    assert_responses_sequence(&events);
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("response.incomplete")
    );
}

#[tokio::test]
async fn count_tokens_in_both_shapes() {
    let f = fake().await;
    let c = client();
    let body = json!({"model": "claude-haiku-4-5", "system": "be brief",
                      "messages": [{"role": "user", "content": "count these words"}]});
    let r = c
        .post(format!("{}/v1/messages/count_tokens", f.base_url()))
        .header("x-api-key", AK)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("request-id"));
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"input_tokens": estimate_input_tokens(&body)})
    );
    // Validated like messages (without max_tokens), errors scripted like messages.
    let post_count = |body: Value| {
        c.post(format!("{}/v1/messages/count_tokens", f.base_url()))
            .header("x-api-key", AK)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    let r = post_count(json!({"model": "m", "messages": []}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post_count(
        json!({"model": "m", "messages": [{"role": "user", "content": "[status:529] x"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 529);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "overloaded_error"
    );
    let r = c
        .post(format!("{}/v1/messages/count_tokens", f.base_url()))
        .header("x-api-key", AK)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "anthropic-version is required");
    let recs = f.requests();
    assert_eq!(
        (recs[0].provider, recs[0].api),
        (Provider::Anthropic, Api::CountTokens)
    );

    let body = json!({"model": "gpt-5", "input": "count me", "instructions": "brief"});
    let r = c
        .post(format!("{}/responses/input_tokens", f.openai_base_url()))
        .bearer_auth(OK)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"object": "response.input_tokens", "input_tokens": estimate_input_tokens(&body)})
    );
    let r = c
        .post(format!("{}/responses/input_tokens", f.openai_base_url()))
        .bearer_auth(OK)
        .json(&json!({"model": "gpt-5", "input": [
            {"type": "function_call_output", "call_id": "call_x", "output": "r"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "validated like /v1/responses");
}

/// Decode standard base64 (test helper; the fake encodes, this checks it).
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = u32::try_from(ALPHABET.iter().position(|a| *a == c).unwrap()).unwrap();
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn embeddings_are_deterministic_and_encoded_like_the_real_api() {
    let f = fake().await;
    let embed = |body: Value| {
        client()
            .post(format!("{}/embeddings", f.openai_base_url()))
            .bearer_auth(OK)
            .json(&body)
            .send()
    };
    let r = embed(json!({"model": "text-embedding-3-small", "input": ["alpha", "beta gamma"]}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["data"][1]["object"], "embedding");
    assert_eq!(v["data"][1]["index"], 1);
    let floats: Vec<f32> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats.len(), EMBEDDING_DIMENSIONS);
    assert_eq!(
        floats,
        embedding_vector("alpha", "text-embedding-3-small", None)
    );
    let norm: f32 = floats.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "unit vector ({norm})");
    assert_ne!(v["data"][0]["embedding"], v["data"][1]["embedding"]);
    let tokens = out_tokens("alpha") + out_tokens("beta gamma");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": tokens, "total_tokens": tokens})
    );

    // base64 is the little-endian f32 bytes of the same vector; `dimensions` shortens and
    // renormalises it.
    let v: Value = embed(json!({"model": "text-embedding-3-large", "input": "alpha",
                                "encoding_format": "base64", "dimensions": 256}))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let bytes = base64_decode(v["data"][0]["embedding"].as_str().unwrap());
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        decoded,
        embedding_vector("alpha", "text-embedding-3-large", Some(256))
    );
    assert_eq!(embedding_dimensions("text-embedding-3-large"), 3072);

    // Token-array inputs.
    let v: Value = embed(json!({"model": "text-embedding-3-small", "input": [[1, 2, 3], [4]]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let first: Vec<f32> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        first,
        token_embedding_vector(&[1, 2, 3], "text-embedding-3-small", None)
    );

    // Bad input: the real 400s.
    for (body, needle) in [
        (
            json!({"model": "text-embedding-3-small", "input": ""}),
            "'$.input' is invalid",
        ),
        (
            json!({"model": "text-embedding-3-small", "input": []}),
            "'$.input' is invalid",
        ),
        (
            json!({"model": "text-embedding-3-small"}),
            "Missing required parameter: 'input'",
        ),
        (
            json!({"model": "text-embedding-ada-002", "input": "x", "dimensions": 8}),
            "does not support specifying dimensions",
        ),
        (
            json!({"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"}),
            "Supported values are: 'float' and 'base64'",
        ),
        (
            json!({"model": "text-embedding-3-small", "input": "x", "dimensions": 5000}),
            "integer above maximum value",
        ),
    ] {
        let r = embed(body.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    let r = embed(json!({"model": "text-embedding-3-small", "input": "[status:429] x"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(f.requests().iter().all(|r| r.api == Api::Embeddings));
}

#[tokio::test]
async fn models_answer_in_the_callers_shape() {
    let f = fake().await;
    let c = client();
    let anthropic_get = |path: &str| {
        c.get(format!("{}{path}", f.base_url()))
            .header("x-api-key", AK)
            .header("anthropic-version", "2023-06-01")
            .send()
    };
    let v: Value = anthropic_get("/v1/models")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = ANTHROPIC_MODELS.iter().map(|m| m.0).collect();
    assert_eq!(ids, want);
    assert_eq!(v["data"][0]["type"], "model");
    assert!(v["data"][0]["display_name"].is_string());
    assert!(v["data"][0]["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], want[0]);
    assert_eq!(v["last_id"], want[want.len() - 1]);
    let page: Value = anthropic_get("/v1/models?limit=1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["has_more"], true);
    let next: Value = anthropic_get(&format!("/v1/models?limit=1&after_id={}", want[0]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["first_id"], want[1]);
    let one: Value = anthropic_get("/v1/models/claude-haiku-4-5")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "claude-haiku-4-5-20251001");
    let r = anthropic_get("/v1/models/claude-nope").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "not_found_error"
    );

    let v: Value = c
        .get(format!("{}/models", f.openai_base_url()))
        .bearer_auth(OK)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), OPENAI_MODELS.len());
    assert_eq!(v["data"][0]["object"], "model");
    assert!(v["data"][0]["created"].as_u64().unwrap() > 1_600_000_000);
    assert!(v["data"][0]["owned_by"].is_string());
    let r = c
        .get(format!("{}/models/gpt-5", f.openai_base_url()))
        .bearer_auth(OK)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "gpt-5");
    let r = c
        .get(format!("{}/models/gpt-nope", f.openai_base_url()))
        .bearer_auth(OK)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "model_not_found"
    );
    let r = c
        .get(format!("{}/models", f.openai_base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no credentials: the OpenAI 401");
    let recs = f.requests();
    assert_eq!(recs[0].provider, Provider::Anthropic);
    assert_eq!(recs[0].api, Api::Models);
    assert_eq!(recs[0].query, None);
    assert_eq!(recs[1].query.as_deref(), Some("limit=1"));
    assert_eq!(recs[recs.len() - 1].provider, Provider::OpenAi);
}

#[tokio::test]
async fn recorded_requests_keep_forwarded_headers_and_the_query() {
    let f = fake().await;
    let c = client();
    let r = c
        .post(format!("{}/v1/messages?beta=true", f.base_url()))
        .header("x-api-key", AK)
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,mid-conversation-system-2026-04-07,some-future-beta",
        )
        .header("x-stainless-lang", "js")
        .header("authorization", "Bearer client-gateway-token")
        .header("cookie", "session=secret-cookie")
        .json(&anthropic_body("betas please", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/chat/completions", f.openai_base_url()))
        .bearer_auth(OK)
        .header("openai-beta", "responses=v1")
        .header("openai-organization", "org-123")
        .header("openai-project", "proj_456")
        .header("x-api-key", "stray-secret")
        .json(&openai_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let recs = f.requests();
    let a = &recs[0];
    assert_eq!(a.path, "/v1/messages");
    assert_eq!(a.query.as_deref(), Some("beta=true"));
    assert_eq!(
        a.anthropic_betas(),
        [
            "claude-code-20250219",
            "mid-conversation-system-2026-04-07",
            "some-future-beta"
        ]
    );
    assert_eq!(a.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(a.header("x-stainless-lang"), Some("js"));
    assert_eq!(a.header("x-api-key"), Some("<matched>"));
    assert_eq!(a.header("authorization"), Some("<present>"));
    assert_eq!(a.header("cookie"), Some("<present>"));
    let o = &recs[1];
    assert_eq!(o.header("openai-beta"), Some("responses=v1"));
    assert_eq!(o.header("openai-organization"), Some("org-123"));
    assert_eq!(o.header("openai-project"), Some("proj_456"));
    assert_eq!(o.header("authorization"), Some("<matched>"));
    assert_eq!(o.header("x-api-key"), Some("<present>"));
    let served: Value = c
        .get(format!("{}/_requests", f.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served[0]["provider"], "anthropic");
    assert_eq!(served[0]["api"], "messages");
    assert_eq!(served[0]["query"], "beta=true");
    assert_eq!(served[1]["provider"], "openai");
    assert_eq!(served[1]["api"], "chat_completions");
    let all = served.to_string();
    for secret in [
        AK,
        OK,
        "client-gateway-token",
        "secret-cookie",
        "stray-secret",
    ] {
        assert!(!all.contains(secret), "{secret} was recorded");
    }
    // Anthropic also takes its key as a Bearer token when there is no x-api-key.
    let r = c
        .post(format!("{}/v1/messages", f.base_url()))
        .bearer_auth(AK)
        .header("anthropic-version", "2023-06-01")
        .json(&anthropic_body("bearer", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = &f.requests()[2];
    assert_eq!(rec.auth, AuthCheck::Matched);
    assert_eq!(rec.header("authorization"), Some("<matched>"));
}

#[tokio::test]
async fn anthropic_system_messages_are_gated_by_model_and_placement() {
    let f = fake().await;
    assert!(model_accepts_system_messages("claude-opus-4-8"));
    assert!(!model_accepts_system_messages("claude-opus-4-1-20250805"));
    assert!(!model_accepts_system_messages("claude-opus-4-20250514"));
    assert!(!model_accepts_system_messages("claude-haiku-4-5"));
    let with = |model: &str, messages: Value| json!({"model": model, "max_tokens": 64, "messages": messages});
    let sys = json!({"role": "system", "content": "from now on, French"});
    let ok = with(
        "claude-opus-4-8",
        json!([{"role": "user", "content": "hi there"}, sys]),
    );
    let r = post_anthropic(&f, &ok).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["content"][0]["text"],
        "echo: hi there"
    );
    // Followed by an assistant turn is fine too.
    let mid = with(
        "claude-opus-4-8",
        json!([{"role": "user", "content": "a"}, sys, {"role": "assistant", "content": "b"},
               {"role": "user", "content": "c"}]),
    );
    assert_eq!(post_anthropic(&f, &mid).await.status(), 200);
    // After tool results, the loop still ends with the result.
    let tool_loop = with(
        "claude-opus-4-8",
        json!([
            {"role": "user", "content": "[tool:t] go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}]},
            sys,
        ]),
    );
    let v: Value = post_anthropic(&f, &tool_loop).await.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "tool result: 42");
    for (messages, needle) in [
        (
            json!([sys, {"role": "user", "content": "a"}]),
            "cannot be the first",
        ),
        (
            json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, sys]),
            "must immediately follow",
        ),
        (
            json!([{"role": "user", "content": "a"}, sys, {"role": "user", "content": "c"}]),
            "must be the last message or be followed",
        ),
        (
            json!([{"role": "user", "content": "a"},
                   {"role": "system", "content": [{"type": "image", "source": {}}]}]),
            "only text blocks",
        ),
    ] {
        let r = post_anthropic(&f, &with("claude-opus-4-8", messages.clone())).await;
        assert_eq!(r.status(), 400, "{messages}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{messages}: {v}"
        );
    }
    let r = post_anthropic(
        &f,
        &with(
            "claude-haiku-4-5",
            json!([{"role": "user", "content": "a"}, sys]),
        ),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unexpected role \"system\"")
    );
}
