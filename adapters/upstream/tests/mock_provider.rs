//! `MockProvider`: its sync and streaming answers are valid OpenAI Chat Completions frames,
//! deterministic, and their usage numbers follow the documented counting rules.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use metis_ports::upstream::{Provider, UpstreamBody, UpstreamError, UpstreamRequest, WireFormat};
use metis_upstream::{MockProvider, MockSettings};
use serde_json::{Value, json};

fn req(body: &Value, stream: bool) -> UpstreamRequest {
    UpstreamRequest::generate(
        WireFormat::OpenAiChat,
        Bytes::from(body.to_string()),
        stream,
        "req_mock".to_owned(),
    )
}

async fn sync_json(p: &MockProvider, body: &Value) -> Value {
    match p.send(req(body, false)).await.unwrap().body {
        UpstreamBody::Full(b) => serde_json::from_slice(&b).unwrap(),
        UpstreamBody::Stream(_) => panic!("expected a full body"),
    }
}

/// The raw SSE text and the parsed `data:` payloads (`None` for `[DONE]`).
async fn stream_frames(p: &MockProvider, body: &Value) -> (String, Vec<Option<Value>>) {
    let UpstreamBody::Stream(mut s) = p.send(req(body, true)).await.unwrap().body else {
        panic!("expected a stream")
    };
    let mut raw = String::new();
    while let Some(chunk) = s.next().await {
        raw.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let frames = raw
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            let data = f
                .strip_prefix("data: ")
                .expect("every frame is a data line");
            (data != "[DONE]").then(|| serde_json::from_str(data).unwrap())
        })
        .collect();
    (raw, frames)
}

fn chat(text: &str) -> Value {
    json!({
        "model": "echo",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": text},
        ],
    })
}

#[tokio::test]
async fn sync_answer_is_a_chat_completion_with_counted_usage() {
    let p = MockProvider::default();
    assert_eq!(p.name(), "mock");
    assert_eq!(p.wire(), WireFormat::OpenAiChat);
    let v = sync_json(&p, &chat("hello   world")).await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "echo");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "mock reply: hello   world");
    assert_eq!(choice["finish_reason"], "stop");
    // "be brief" (8) + "hello   world" (13) = 21 chars -> ceil(21 / 4) = 6.
    assert_eq!(v["usage"]["prompt_tokens"], 6);
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 10);
}

/// Drop `created` (the answer time, the one field that is not a function of the request).
fn without_created(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        let created = o.remove("created").and_then(|c| c.as_u64()).unwrap_or(0);
        assert!(
            created > 1_700_000_000,
            "created is a real unix time: {created}"
        );
    }
    v
}

#[tokio::test]
async fn answers_are_deterministic_but_for_their_timestamp() {
    let p = MockProvider::default();
    let a = without_created(sync_json(&p, &chat("same")).await);
    let b = without_created(sync_json(&p, &chat("same")).await);
    assert_eq!(a, b);
    let (_, fa) = stream_frames(&p, &chat("same")).await;
    let (_, fb) = stream_frames(&p, &chat("same")).await;
    let strip = |f: Vec<Option<Value>>| -> Vec<Option<Value>> {
        f.into_iter().map(|v| v.map(without_created)).collect()
    };
    assert_eq!(strip(fa), strip(fb));
}

#[tokio::test]
async fn stream_sends_one_delta_per_word_then_usage_and_done() {
    let p = MockProvider::default();
    let mut body = chat("one two  three");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (_, frames) = stream_frames(&p, &body).await;
    assert_eq!(frames.last(), Some(&None), "ends with [DONE]");
    let chunks: Vec<&Value> = frames.iter().flatten().collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "echo");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let deltas: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(deltas.concat(), "mock reply: one two  three");
    assert_eq!(deltas.len(), 5);
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .copied()
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    // "be brief" (8) + "one two  three" (14) = 22 -> 6.
    assert_eq!(usage["usage"]["prompt_tokens"], 6);
    // Sync and stream agree.
    let v = sync_json(&p, &chat("one two  three")).await;
    assert_eq!(v["usage"], usage["usage"]);
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk() {
    let p = MockProvider::default();
    let (_, frames) = stream_frames(&p, &chat("hi")).await;
    assert!(frames.iter().flatten().all(|c| c.get("usage").is_none()));
    assert!(
        frames
            .iter()
            .flatten()
            .all(|c| c["choices"].as_array().unwrap().len() == 1)
    );
}

#[tokio::test]
async fn tool_request_calls_the_first_tool() {
    let p = MockProvider::default();
    let body = json!({
        "model": "echo",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "/tool please"}]}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
            {"type": "function", "function": {"name": "other", "parameters": {}}},
        ],
        "stream_options": {"include_usage": true},
    });
    let v = sync_json(&p, &body).await;
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_mock_1");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{}");
    // "get_weather" + "{}" = 13 chars -> 4.
    assert_eq!(v["usage"]["completion_tokens"], 4);

    let (_, frames) = stream_frames(&p, &body).await;
    let chunks: Vec<&Value> = frames.iter().flatten().collect();
    let start = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].is_string())
        .unwrap();
    assert_eq!(
        start["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );

    // Without tools the same text is just echoed.
    let v = sync_json(&p, &chat("/tool please")).await;
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "mock reply: /tool please"
    );
}

#[tokio::test]
async fn echo_is_cut_at_512_characters_on_a_char_boundary() {
    let p = MockProvider::default();
    let text = "é".repeat(700);
    let v = sync_json(&p, &chat(&text)).await;
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        content.strip_prefix("mock reply: ").unwrap(),
        "é".repeat(512)
    );
    // Prompt counting uses the full text: 8 + 700 = 708 -> 177.
    assert_eq!(v["usage"]["prompt_tokens"], 177);
}

#[tokio::test]
async fn prompt_tokens_are_at_least_one() {
    let p = MockProvider::default();
    let v = sync_json(&p, &json!({"messages": [{"role": "user", "content": ""}]})).await;
    assert_eq!(v["usage"]["prompt_tokens"], 1);
    assert_eq!(v["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn configured_and_requested_failures_are_http_errors() {
    let failing = MockProvider::new(MockSettings {
        fail_status: Some(503),
        ..MockSettings::default()
    });
    let err = failing.send(req(&chat("x"), false)).await.unwrap_err();
    let UpstreamError::Status { status, body, .. } = err else {
        panic!("unexpected {err:?}")
    };
    assert_eq!(status, 503);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "server_error");

    let err = MockProvider::default()
        .send(req(&chat("/fail 429"), true))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Status {
                status: 429,
                retry_after_secs: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_body_that_is_not_a_chat_request_is_a_400() {
    let p = MockProvider::default();
    let bad = UpstreamRequest::generate(
        WireFormat::OpenAiChat,
        Bytes::from_static(b"{nope"),
        false,
        "r".into(),
    );
    assert!(matches!(
        p.send(bad).await,
        Err(UpstreamError::Status { status: 400, .. })
    ));
    let err = p
        .send(req(&json!({"model": "echo"}), false))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Status { status: 400, .. }));
}

#[tokio::test]
async fn latency_and_pacing_are_applied() {
    let p = MockProvider::new(MockSettings {
        latency_ms: 100,
        tokens_per_second: Some(100.0),
        fail_status: None,
    });
    let started = Instant::now();
    // 4 words at 100/s = 40 ms of pacing on top of 100 ms latency.
    let (_, frames) = stream_frames(&p, &chat("a b")).await;
    assert!(frames.len() >= 4);
    assert!(
        started.elapsed() >= Duration::from_millis(130),
        "{:?}",
        started.elapsed()
    );
}
