//! Tests of the fake upstream itself: its frames must be what the real providers send, or the
//! gateway tests built on it prove nothing.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use gw_tests::fake_upstream::{
    AuthCheck, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, Directives, FakeUpstream, StreamOutcome,
    THINKING_SIGNATURE, TOOL_ARGUMENTS,
};
use gw_tests::{SseEvent, parse_sse};
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
