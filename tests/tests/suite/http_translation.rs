//! Happy paths through the real server, for every client shape x upstream shape: sync and SSE
//! text, tool calls (with the id mapping visible upstream), thinking, usage buckets, system
//! prompts, images, and same-shape pass-through of fields the gateway does not understand.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::fake_upstream::{
    AuthCheck, CACHE_READ_TOKENS, SYSTEM_FINGERPRINT, THINKING_SIGNATURE, THINKING_TEXT,
    TOOL_ARGUMENTS,
};
use metis_tests::gateway::{reply_text, stop_reason, stream_text, tool_call_of, weather_tools};
use metis_tests::{Combo, Shape, SseEvent, TestGateway, for_each_combo};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU32, Ordering};

fn nonce() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "n{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn gateway() -> TestGateway {
    TestGateway::spawn().await.expect("gateway starts")
}

fn is_anthropic_tool_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

for_each_combo!(
    sync_text,
    sse_text,
    tool_call_round_trip,
    streamed_tool_call,
    cache_usage_buckets,
    system_prompt_is_translated,
    upstream_sees_only_provider_credentials,
    fragmented_crlf_upstream_frames_are_reassembled,
    token_limit_stop_reason_is_mapped,
);

async fn sync_text(combo: Combo) {
    let gw = gateway().await;
    let n = nonce();
    let r = gw
        .post(combo.client, &combo.body(&format!("hello {n}"), false))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.content_type().starts_with("application/json"),
        "{}",
        r.content_type()
    );
    let v = r.json();
    assert_eq!(reply_text(combo.client, &v), format!("echo: hello {n}"));
    assert_eq!(
        v["model"],
        combo.model(),
        "the client's model string is echoed"
    );
    match combo.client {
        Shape::OpenAi => {
            assert_eq!(v["object"], "chat.completion");
            assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
            assert_eq!(v["choices"][0]["message"]["role"], "assistant");
            assert_eq!(stop_reason(combo.client, &v), "stop");
            let u = &v["usage"];
            assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
            assert!(u["completion_tokens"].as_u64().unwrap() > 0);
            assert_eq!(
                u["total_tokens"].as_u64(),
                Some(
                    u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
                )
            );
        }
        Shape::Anthropic => {
            assert_eq!(v["type"], "message");
            assert_eq!(v["role"], "assistant");
            assert!(v["id"].as_str().unwrap().starts_with("msg_"));
            assert_eq!(stop_reason(combo.client, &v), "end_turn");
            assert!(v["stop_sequence"].is_null());
            assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
            assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
        }
    }
    let reqs = gw.upstream.requests();
    assert_eq!(reqs.len(), 1, "exactly one upstream call");
    assert_eq!(reqs[0].path, combo.upstream_path());
    assert_eq!(reqs[0].body["model"], combo.upstream_model());
    if combo.upstream == Shape::Anthropic {
        assert!(reqs[0].header("anthropic-version").is_some());
        assert!(reqs[0].body["max_tokens"].as_u64().unwrap() > 0);
    }
}

fn assert_openai_stream(events: &[SseEvent], model: &str) {
    assert_eq!(
        events.last().map(|e| e.data.as_str()),
        Some("[DONE]"),
        "ends with [DONE]"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| {
            e.json()
                .unwrap_or_else(|| panic!("chunk is not JSON: {}", e.data))
        })
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        chunks.iter().all(|c| c["model"] == model),
        "model echoed on every chunk"
    );
    let ids: std::collections::BTreeSet<&str> =
        chunks.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one id on every chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
}

fn assert_anthropic_stream(events: &[SseEvent], model: &str) {
    let names: Vec<&str> = events.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(names.len(), events.len(), "every frame names its event");
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    for e in events {
        let d = e
            .json()
            .unwrap_or_else(|| panic!("data is not JSON: {}", e.data));
        assert_eq!(
            d["type"].as_str(),
            e.event.as_deref(),
            "data.type matches the event name"
        );
    }
    let start = events[0].json().unwrap();
    assert_eq!(start["message"]["model"], model);
    assert!(start["message"]["id"].as_str().unwrap().starts_with("msg_"));
    let opens = names
        .iter()
        .filter(|n| **n == "content_block_start")
        .count();
    let closes = names.iter().filter(|n| **n == "content_block_stop").count();
    assert_eq!(opens, closes, "every block is closed");
    let deltas: Vec<Value> = events
        .iter()
        .filter(|e| e.event.as_deref() == Some("message_delta"))
        .map(|e| e.json().unwrap())
        .collect();
    assert_eq!(deltas.len(), 1);
    assert!(deltas[0]["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

async fn sse_text(combo: Combo) {
    let gw = gateway().await;
    let n = nonce();
    let r = gw
        .post(
            combo.client,
            &combo.body(&format!("stream me please {n}"), true),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.content_type().starts_with("text/event-stream"),
        "{}",
        r.content_type()
    );
    assert!(r.body_error.is_none(), "{:?}", r.body_error);
    let events = r.events();
    assert_eq!(
        stream_text(combo.client, &events),
        format!("echo: stream me please {n}")
    );
    match combo.client {
        Shape::OpenAi => {
            assert_openai_stream(&events, combo.model());
            let finishes: Vec<Value> = events
                .iter()
                .filter_map(SseEvent::json)
                .map(|c| c["choices"][0]["finish_reason"].clone())
                .filter(|f| !f.is_null())
                .collect();
            assert_eq!(finishes, vec![json!("stop")]);
            assert!(
                events
                    .iter()
                    .filter_map(SseEvent::json)
                    .all(|c| c.get("usage").is_none_or(Value::is_null)),
                "no usage chunk without stream_options.include_usage"
            );
        }
        Shape::Anthropic => {
            assert_anthropic_stream(&events, combo.model());
            let md = events
                .iter()
                .find(|e| e.event.as_deref() == Some("message_delta"))
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(md["delta"]["stop_reason"], "end_turn");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_stream_usage_chunk_when_asked_from_both_upstreams() {
    let gw = gateway().await;
    for combo in [Combo::OPENAI_TO_OPENAI, Combo::OPENAI_TO_ANTHROPIC] {
        let mut body = combo.body("count my tokens", true);
        body["stream_options"] = json!({"include_usage": true});
        let r = gw.post(Shape::OpenAi, &body).await;
        assert_eq!(r.status, 200, "{combo:?}: {}", r.text);
        let events = r.events();
        assert_openai_stream(&events, combo.model());
        let usage = events[events.len() - 2].json().unwrap();
        assert_eq!(
            usage["choices"],
            json!([]),
            "{combo:?}: the usage chunk has no choices"
        );
        let u = &usage["usage"];
        assert!(u["prompt_tokens"].as_u64().unwrap() > 0, "{combo:?}");
        assert!(u["completion_tokens"].as_u64().unwrap() > 0, "{combo:?}");
    }
}

fn assert_client_tool_id(shape: Shape, id: &str) {
    match shape {
        Shape::OpenAi => assert!(
            id.starts_with("call_"),
            "OpenAI clients see call_ ids, got {id}"
        ),
        Shape::Anthropic => {
            assert!(
                id.starts_with("toolu_"),
                "Anthropic clients see toolu_ ids, got {id}"
            );
            assert!(is_anthropic_tool_id(id), "{id}");
        }
    }
}

async fn tool_call_round_trip(combo: Combo) {
    let gw = gateway().await;
    let n = nonce();
    let question = format!("[tool:get_weather] weather in Paris? {n}");
    let mut body = combo.body(&question, false);
    body["tools"] = weather_tools(combo.client);
    let r = gw.post(combo.client, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let first = r.json();
    let expected_stop = match combo.client {
        Shape::OpenAi => "tool_calls",
        Shape::Anthropic => "tool_use",
    };
    assert_eq!(stop_reason(combo.client, &first), expected_stop);
    let (id, name, args) = tool_call_of(combo.client, &first);
    assert_eq!(name, "get_weather");
    assert_eq!(args, serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap());
    assert_client_tool_id(combo.client, &id);

    // Send the result back, as each SDK would.
    let result_text = format!("18C and sunny {n}");
    let messages = match combo.client {
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
    body["messages"] = messages;
    let r = gw.post(combo.client, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let second = r.json();
    assert_eq!(
        reply_text(combo.client, &second),
        format!("tool result: {result_text}")
    );

    // What the upstream saw: ids in its own format, consistent between call and result.
    let reqs = gw.upstream.requests();
    assert_eq!(reqs.len(), 2);
    let first_up = &reqs[0].body;
    let up = &reqs[1].body;
    match combo.upstream {
        Shape::Anthropic => {
            assert_eq!(first_up["tools"][0]["name"], "get_weather");
            assert!(first_up["tools"][0]["input_schema"].is_object());
            let msgs = up["messages"].as_array().unwrap();
            let use_block = msgs[msgs.len() - 2]["content"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["type"] == "tool_use")
                .unwrap();
            let result_block = msgs[msgs.len() - 1]["content"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["type"] == "tool_result")
                .unwrap();
            let up_id = use_block["id"].as_str().unwrap();
            assert!(
                up_id.starts_with("toolu_"),
                "Anthropic upstream gets toolu_ ids, got {up_id}"
            );
            assert_eq!(result_block["tool_use_id"], use_block["id"]);
            assert_eq!(
                use_block["input"],
                serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap()
            );
        }
        Shape::OpenAi => {
            assert_eq!(first_up["tools"][0]["type"], "function");
            assert_eq!(first_up["tools"][0]["function"]["name"], "get_weather");
            let msgs = up["messages"].as_array().unwrap();
            let call = &msgs[msgs.len() - 2]["tool_calls"][0];
            let tool = &msgs[msgs.len() - 1];
            let up_id = call["id"].as_str().unwrap();
            assert!(
                up_id.starts_with("call_"),
                "OpenAI upstream gets call_ ids, got {up_id}"
            );
            assert_eq!(tool["role"], "tool");
            assert_eq!(tool["tool_call_id"], call["id"]);
            assert!(call["function"]["arguments"].is_string());
        }
    }
    if combo.client == combo.upstream {
        // Same shape: the id the client echoes back is the one the provider minted.
        let provider_id = match combo.upstream {
            Shape::Anthropic => up["messages"][1]["content"][0]["id"].clone(),
            Shape::OpenAi => up["messages"][1]["tool_calls"][0]["id"].clone(),
        };
        assert_eq!(provider_id, json!(id));
    }
}

async fn streamed_tool_call(combo: Combo) {
    let gw = gateway().await;
    let mut body = combo.body("[tool:get_weather] weather?", true);
    body["tools"] = weather_tools(combo.client);
    let r = gw.post(combo.client, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = r.events();
    let datas: Vec<Value> = events.iter().filter_map(SseEvent::json).collect();
    let (id, name, args, stop) = match combo.client {
        Shape::OpenAi => {
            assert_openai_stream(&events, combo.model());
            let mut id = String::new();
            let mut name = String::new();
            let mut args = String::new();
            let mut stop = String::new();
            for d in &datas {
                for tc in d["choices"][0]["delta"]["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    assert_eq!(tc["index"], 0);
                    if let Some(s) = tc["id"].as_str() {
                        id = s.to_owned();
                    }
                    if let Some(s) = tc["function"]["name"].as_str() {
                        name = s.to_owned();
                    }
                    if let Some(s) = tc["function"]["arguments"].as_str() {
                        args.push_str(s);
                    }
                }
                if let Some(s) = d["choices"][0]["finish_reason"].as_str() {
                    stop = s.to_owned();
                }
            }
            (id, name, args, stop)
        }
        Shape::Anthropic => {
            assert_anthropic_stream(&events, combo.model());
            let start = datas
                .iter()
                .find(|d| {
                    d["type"] == "content_block_start" && d["content_block"]["type"] == "tool_use"
                })
                .expect("a tool_use block start");
            let args: String = datas
                .iter()
                .filter(|d| d["delta"]["type"] == "input_json_delta")
                .filter_map(|d| d["delta"]["partial_json"].as_str())
                .collect();
            let stop = datas
                .iter()
                .find(|d| d["type"] == "message_delta")
                .and_then(|d| d["delta"]["stop_reason"].as_str())
                .unwrap_or_default()
                .to_owned();
            (
                start["content_block"]["id"].as_str().unwrap().to_owned(),
                start["content_block"]["name"].as_str().unwrap().to_owned(),
                args,
                stop,
            )
        }
    };
    assert_eq!(name, "get_weather");
    assert_client_tool_id(combo.client, &id);
    assert_eq!(
        serde_json::from_str::<Value>(&args).expect("streamed arguments form JSON"),
        serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap()
    );
    let expected_stop = match combo.client {
        Shape::OpenAi => "tool_calls",
        Shape::Anthropic => "tool_use",
    };
    assert_eq!(stop, expected_stop);
}

async fn cache_usage_buckets(combo: Combo) {
    let gw = gateway().await;
    let r = gw
        .post(combo.client, &combo.body("[cache] cached prompt", false))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let u = &r.json()["usage"];
    match combo.client {
        Shape::OpenAi => {
            // OpenAI renders cached tokens inside prompt_tokens.
            assert_eq!(
                u["prompt_tokens_details"]["cached_tokens"], CACHE_READ_TOKENS,
                "{u}"
            );
            assert!(
                u["prompt_tokens"].as_u64().unwrap() > CACHE_READ_TOKENS,
                "{u}"
            );
        }
        Shape::Anthropic => {
            // Anthropic renders them in their own bucket, outside input_tokens.
            assert_eq!(u["cache_read_input_tokens"], CACHE_READ_TOKENS, "{u}");
            let input = u["input_tokens"].as_u64().unwrap();
            assert!(input > 0 && input < CACHE_READ_TOKENS, "{u}");
        }
    }
}

async fn system_prompt_is_translated(combo: Combo) {
    let gw = gateway().await;
    let mut body = combo.body("hi", false);
    match combo.client {
        Shape::OpenAi => {
            body["messages"] = json!([
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hi"},
            ]);
        }
        Shape::Anthropic => body["system"] = json!("You are terse."),
    }
    let r = gw.post(combo.client, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(reply_text(combo.client, &r.json()), "echo: hi");
    let up = &gw.upstream.requests()[0].body;
    match combo.upstream {
        Shape::Anthropic => {
            assert!(up["system"].to_string().contains("You are terse."), "{up}");
            assert!(
                up["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|m| m["role"] != "system")
            );
        }
        Shape::OpenAi => {
            let first = &up["messages"][0];
            assert!(
                first["role"] == "system" || first["role"] == "developer",
                "{up}"
            );
            assert!(first["content"].to_string().contains("You are terse."));
        }
    }
}

async fn upstream_sees_only_provider_credentials(combo: Combo) {
    let gw = gateway().await;
    let r = gw.post(combo.client, &combo.body("creds", false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let reqs = gw.upstream.requests();
    assert_eq!(
        reqs[0].auth,
        AuthCheck::Matched,
        "the gateway used the provider's key"
    );
    let dump = serde_json::to_string(&reqs).unwrap();
    assert!(
        !dump.contains(&gw.key.token),
        "the gateway token is never forwarded upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_blocks_are_kept_anthropic_to_anthropic() {
    let gw = gateway().await;
    let r = gw
        .post(
            Shape::Anthropic,
            &Combo::ANTHROPIC_TO_ANTHROPIC.body("[think] ponder", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["content"][0]["type"], "thinking");
    assert_eq!(v["content"][0]["thinking"], THINKING_TEXT);
    assert_eq!(v["content"][0]["signature"], THINKING_SIGNATURE);
    assert_eq!(v["content"][1]["text"], "echo: [think] ponder");

    let r = gw
        .post(
            Shape::Anthropic,
            &Combo::ANTHROPIC_TO_ANTHROPIC.body("[think] ponder", true),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = r.events();
    assert_anthropic_stream(&events, "haiku");
    let datas: Vec<Value> = events.iter().filter_map(SseEvent::json).collect();
    let thinking: String = datas
        .iter()
        .filter(|d| d["delta"]["type"] == "thinking_delta")
        .filter_map(|d| d["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thinking, THINKING_TEXT);
    assert!(
        datas.iter().any(|d| d["delta"]["type"] == "signature_delta"
            && d["delta"]["signature"] == THINKING_SIGNATURE),
        "the signature survives streaming"
    );

    // The signed block goes back upstream untouched on the next turn.
    let body = json!({"model": "haiku", "max_tokens": 100, "messages": [
        {"role": "user", "content": "[think] ponder"},
        {"role": "assistant", "content": v["content"].clone()},
        {"role": "user", "content": "next"},
    ]});
    let r = gw.post(Shape::Anthropic, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let reqs = gw.upstream.requests();
    let up = &reqs.last().unwrap().body;
    assert_eq!(up["messages"][1]["content"][0]["type"], "thinking");
    assert_eq!(
        up["messages"][1]["content"][0]["signature"],
        THINKING_SIGNATURE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_is_not_rendered_to_openai_clients() {
    let gw = gateway().await;
    let r = gw
        .post(
            Shape::OpenAi,
            &Combo::OPENAI_TO_ANTHROPIC.body("[think] ponder", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(reply_text(Shape::OpenAi, &r.json()), "echo: [think] ponder");
    let r = gw
        .post(
            Shape::OpenAi,
            &Combo::OPENAI_TO_ANTHROPIC.body("[think] ponder", true),
        )
        .await;
    assert_eq!(
        stream_text(Shape::OpenAi, &r.events()),
        "echo: [think] ponder"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_shape_openai_passes_unknown_fields_both_ways() {
    let gw = gateway().await;
    let mut body = Combo::OPENAI_TO_OPENAI.body("pass", false);
    body["seed"] = json!(7);
    body["vendor_extension"] = json!({"keep": [1, 2, 3]});
    let r = gw.post(Shape::OpenAi, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let up = &gw.upstream.requests()[0].body;
    assert_eq!(up["seed"], 7);
    assert_eq!(up["vendor_extension"], json!({"keep": [1, 2, 3]}));
    let v = r.json();
    assert_eq!(
        v["system_fingerprint"], SYSTEM_FINGERPRINT,
        "unknown response fields pass through"
    );
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"], 0,
        "nested usage details pass through: {v}"
    );
    let mut body = Combo::OPENAI_TO_OPENAI.body("pass", true);
    body["vendor_extension"] = json!({"keep": true});
    let r = gw.post(Shape::OpenAi, &body).await;
    assert_eq!(
        gw.upstream.requests()[1].body["vendor_extension"],
        json!({"keep": true})
    );
    let chunks: Vec<Value> = r.events().iter().filter_map(SseEvent::json).collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["system_fingerprint"] == SYSTEM_FINGERPRINT),
        "unknown chunk fields pass through: {}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_shape_anthropic_passes_unknown_fields_and_cache_control() {
    let gw = gateway().await;
    let body = json!({
        "model": "haiku",
        "max_tokens": 64,
        "metadata": {"user_id": "u-123"},
        "top_k": 5,
        "vendor_extension": {"keep": true},
        "system": [{"type": "text", "text": "stable prefix", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "pass", "cache_control": {"type": "ephemeral"}}
        ]}],
    });
    let r = gw.post(Shape::Anthropic, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json()["usage"]["service_tier"],
        "standard",
        "nested usage fields pass through"
    );
    let up = &gw.upstream.requests()[0].body;
    assert_eq!(up["metadata"], json!({"user_id": "u-123"}));
    assert_eq!(up["top_k"], 5);
    assert_eq!(up["vendor_extension"], json!({"keep": true}));
    assert_eq!(
        up["system"][0]["cache_control"],
        json!({"type": "ephemeral"}),
        "{up}"
    );
    assert_eq!(
        up["messages"][0]["content"][0]["cache_control"],
        json!({"type": "ephemeral"}),
        "{up}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_multipart_and_images_reach_anthropic_as_blocks() {
    let gw = gateway().await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    let body = json!({"model": "haiku", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is"},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}},
        {"type": "text", "text": "this?"},
    ]}]});
    let r = gw.post(Shape::OpenAi, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let up = &gw.upstream.requests()[0].body;
    let blocks = up["messages"][0]["content"]
        .as_array()
        .expect("content blocks");
    let image = blocks
        .iter()
        .find(|b| b["type"] == "image")
        .expect("an image block");
    assert_eq!(image["source"]["type"], "base64");
    assert_eq!(image["source"]["media_type"], "image/png");
    assert_eq!(image["source"]["data"], png);
    let texts: Vec<&str> = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
    assert_eq!(texts, vec!["what is", "this?"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_are_carried_across_shapes() {
    let gw = gateway().await;
    let mut body = Combo::OPENAI_TO_ANTHROPIC.body("limits", false);
    body["max_tokens"] = json!(55);
    assert_eq!(gw.post(Shape::OpenAi, &body).await.status, 200);
    let mut body = Combo::ANTHROPIC_TO_OPENAI.body("limits", false);
    body["max_tokens"] = json!(77);
    assert_eq!(gw.post(Shape::Anthropic, &body).await.status, 200);
    let reqs = gw.upstream.requests();
    assert_eq!(reqs[0].body["max_tokens"], 55);
    let up = &reqs[1].body;
    let carried = up
        .get("max_completion_tokens")
        .or_else(|| up.get("max_tokens"));
    assert_eq!(carried, Some(&json!(77)), "{up}");
}

/// Upstream SSE split into 7-byte pieces (cutting lines and UTF-8 sequences) with CRLF line
/// endings must come out whole and intact.
async fn fragmented_crlf_upstream_frames_are_reassembled(combo: Combo) {
    let gw = gateway().await;
    let text = "[split] [crlf] héllo 世界 🎉 done";
    let r = gw.post(combo.client, &combo.body(text, true)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body_error.is_none(), "{:?}", r.body_error);
    assert_eq!(
        stream_text(combo.client, &r.events()),
        format!("echo: {text}")
    );
    match combo.client {
        Shape::OpenAi => assert_openai_stream(&r.events(), combo.model()),
        Shape::Anthropic => assert_anthropic_stream(&r.events(), combo.model()),
    }
    let mut body = combo.body("[split] [crlf] [tool:get_weather] go", true);
    body["tools"] = weather_tools(combo.client);
    let r = gw.post(combo.client, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("get_weather"), "{}", r.text);
}

async fn token_limit_stop_reason_is_mapped(combo: Combo) {
    let gw = gateway().await;
    let expected = match combo.client {
        Shape::OpenAi => "length",
        Shape::Anthropic => "max_tokens",
    };
    let r = gw
        .post(combo.client, &combo.body("[length] cut short", false))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(stop_reason(combo.client, &r.json()), expected);
    let r = gw
        .post(combo.client, &combo.body("[length] cut short", true))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let datas: Vec<Value> = r.events().iter().filter_map(SseEvent::json).collect();
    let streamed = match combo.client {
        Shape::OpenAi => datas
            .iter()
            .find_map(|d| d["choices"][0]["finish_reason"].as_str()),
        Shape::Anthropic => datas
            .iter()
            .find(|d| d["type"] == "message_delta")
            .and_then(|d| d["delta"]["stop_reason"].as_str()),
    };
    assert_eq!(streamed, Some(expected));
}
