use super::*;
use crate::canonical::{Message, StreamAccumulator, SystemBlock, ToolDef};
use crate::sse::SseFrame;

fn frame(event: &str, data: Value) -> SseFrame {
    SseFrame {
        event: Some(event.to_owned()),
        data: data.to_string(),
    }
}

fn text(t: &str) -> ContentBlock {
    ContentBlock::Text {
        text: t.to_owned(),
        cache_control: None,
    }
}

fn tool_request() -> ChatRequest {
    ChatRequest {
        model: "bedrock:anthropic.claude-haiku-4-5-20251001-v1:0".into(),
        system: vec![SystemBlock {
            text: "be brief".into(),
            cache_control: Some(json!({"type": "ephemeral"})),
        }],
        messages: vec![
            Message {
                role: Role::User,
                content: vec![text("weather?")],
            },
            Message {
                role: Role::Assistant,
                content: vec![
                    text("checking"),
                    ContentBlock::ToolUse {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        input: json!({"city": "Paris"}),
                        cache_control: None,
                    },
                    ContentBlock::ToolUse {
                        id: "call_2".into(),
                        name: "get_weather".into(),
                        input: json!({"city": "Rome"}),
                        cache_control: None,
                    },
                ],
            },
            Message {
                role: Role::User,
                content: vec![
                    text("thanks"),
                    ContentBlock::ToolResult {
                        tool_use_id: "call_1".into(),
                        content: vec![ToolResultContent::Text("sunny".into())],
                        is_error: false,
                        cache_control: None,
                    },
                    ContentBlock::ToolResult {
                        tool_use_id: "call_2".into(),
                        content: vec![ToolResultContent::Text("boom".into())],
                        is_error: true,
                        cache_control: None,
                    },
                ],
            },
        ],
        tools: vec![ToolDef {
            name: "get_weather".into(),
            description: Some("weather by city".into()),
            input_schema: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            cache_control: None,
        }],
        tool_choice: Some(ToolChoice::Tool("get_weather".into())),
        max_tokens: Some(100),
        temperature: Some(1.5),
        top_p: Some(0.9),
        stop: vec!["END".into()],
        ..ChatRequest::default()
    }
}

#[test]
fn request_carries_system_tools_results_and_inference_config() {
    let v = render_request(&tool_request(), "anthropic.claude-haiku-4-5-20251001-v1:0").unwrap();
    assert!(
        v.get("modelId").is_none() && v.get("model").is_none(),
        "{v}"
    );
    assert_eq!(
        v["system"],
        json!([{"text": "be brief"}, {"cachePoint": {"type": "default"}}])
    );
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[1]["role"], "assistant");
    assert_eq!(
        msgs[1]["content"][1],
        json!({"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}})
    );
    // Tool results come first in the user turn, the error one marked as such.
    assert_eq!(msgs[2]["content"][0]["toolResult"]["toolUseId"], "call_1");
    assert!(msgs[2]["content"][0]["toolResult"].get("status").is_none());
    assert_eq!(msgs[2]["content"][1]["toolResult"]["status"], "error");
    assert_eq!(msgs[2]["content"][2], json!({"text": "thanks"}));
    assert_eq!(
        v["inferenceConfig"],
        json!({"maxTokens": 100, "temperature": 1.0, "topP": 0.9, "stopSequences": ["END"]})
    );
    assert_eq!(
        v["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"],
        "object"
    );
    assert_eq!(
        v["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "get_weather"}})
    );
}

#[test]
fn request_merges_same_role_turns_and_defaults_max_tokens() {
    let req = ChatRequest {
        messages: vec![
            Message {
                role: Role::User,
                content: vec![text("a")],
            },
            Message {
                role: Role::User,
                content: vec![text(""), text("b")],
            },
        ],
        thinking: Some(json!({"type": "enabled", "budget_tokens": 1024})),
        ..ChatRequest::default()
    };
    let v = render_request(&req, "m").unwrap();
    assert_eq!(
        v["messages"],
        json!([{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}])
    );
    assert_eq!(v["inferenceConfig"]["maxTokens"], DEFAULT_MAX_TOKENS);
    assert_eq!(
        v["additionalModelRequestFields"]["thinking"]["budget_tokens"],
        1024
    );
    assert!(v.get("toolConfig").is_none());
}

#[test]
fn images_inline_only() {
    let mut req = ChatRequest {
        messages: vec![Message {
            role: Role::User,
            content: vec![ContentBlock::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBORw0KGgo=".into(),
                },
                cache_control: None,
            }],
        }],
        ..ChatRequest::default()
    };
    let v = render_request(&req, "m").unwrap();
    assert_eq!(
        v["messages"][0]["content"][0],
        json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
    );
    req.messages[0].content[0] = ContentBlock::Image {
        source: ImageSource::Url {
            url: "https://example.com/a.png".into(),
        },
        cache_control: None,
    };
    let err = render_request(&req, "m").unwrap_err();
    assert!(
        err.message().contains("messages[0].content[0]") && err.message().contains("image URLs"),
        "{}",
        err.message()
    );
}

#[test]
fn tool_choice_none_drops_tools_unless_history_has_tool_blocks() {
    let mut req = tool_request();
    req.tool_choice = Some(ToolChoice::None);
    let v = render_request(&req, "m").unwrap();
    assert!(v["toolConfig"].get("toolChoice").is_none());
    assert!(v["toolConfig"]["tools"].is_array());
    req.messages.truncate(1);
    let v = render_request(&req, "m").unwrap();
    assert!(v.get("toolConfig").is_none(), "{v}");
}

#[test]
fn response_with_text_tool_calls_thinking_and_usage() {
    let body = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}},
            {"text": "calling"},
            {"toolUse": {"toolUseId": "tooluse_a", "name": "get_weather", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "tooluse_b", "name": "get_weather", "input": {"city": "Rome"}}}
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 12, "outputTokens": 34, "totalTokens": 46,
                  "cacheReadInputTokens": 5, "cacheWriteInputTokens": 6},
        "metrics": {"latencyMs": 100}
    });
    let r = parse_response(body.to_string().as_bytes()).unwrap();
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(r.tool_call_count(), 2);
    assert_eq!(r.thinking_block_count(), 1);
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 12,
            output_tokens: 34,
            cache_read_tokens: 5,
            cache_write_tokens: 6
        }
    );
    assert!(matches!(&r.content[2], ContentBlock::ToolUse { id, .. } if id == "tooluse_a"));
}

#[test]
fn stop_reasons_map() {
    for (wire, want) in [
        ("end_turn", StopReason::EndTurn),
        ("max_tokens", StopReason::MaxTokens),
        ("stop_sequence", StopReason::StopSequence),
        ("tool_use", StopReason::ToolUse),
        ("guardrail_intervened", StopReason::Refusal),
        ("content_filtered", StopReason::Refusal),
    ] {
        let body = json!({"output": {"message": {"content": []}}, "stopReason": wire});
        assert_eq!(
            parse_response(body.to_string().as_bytes())
                .unwrap()
                .stop_reason,
            want,
            "{wire}"
        );
    }
    assert!(
        parse_response(br#"{"message":"x"}"#)
            .unwrap_err()
            .contains("no output.message")
    );
}

fn stream_frames() -> Vec<SseFrame> {
    vec![
        frame("messageStart", json!({"role": "assistant", "p": "abc"})),
        frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
        ),
        frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "lo"}}),
        ),
        frame("contentBlockStop", json!({"contentBlockIndex": 0})),
        frame(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_x", "name": "get_weather"}}}),
        ),
        frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}}),
        ),
        frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
        ),
        frame("contentBlockStop", json!({"contentBlockIndex": 1})),
        frame("messageStop", json!({"stopReason": "tool_use"})),
        frame(
            "metadata",
            json!({"usage": {"inputTokens": 10, "outputTokens": 20, "totalTokens": 30, "cacheReadInputTokens": 3}, "metrics": {"latencyMs": 5}}),
        ),
    ]
}

#[test]
fn stream_produces_canonical_events_with_usage_before_finish() {
    let mut p = StreamParser::new();
    let mut events = Vec::new();
    for f in stream_frames() {
        events.extend(p.push(&f).unwrap());
    }
    assert!(p.ended_cleanly());
    events.extend(p.finish());
    assert!(matches!(events[0], StreamEvent::Start { .. }));
    assert_eq!(
        events[1],
        StreamEvent::BlockStart {
            index: 0,
            block: BlockStart::Text
        }
    );
    assert_eq!(
        events[5],
        StreamEvent::BlockStart {
            index: 1,
            block: BlockStart::ToolUse {
                id: "tooluse_x".into(),
                name: "get_weather".into()
            }
        }
    );
    let n = events.len();
    assert!(
        matches!(events[n - 2], StreamEvent::Usage(u) if u.input_tokens == 10 && u.output_tokens == 20 && u.cache_read_tokens == 3)
    );
    assert_eq!(
        events[n - 1],
        StreamEvent::Finish {
            stop_reason: StopReason::ToolUse,
            stop_sequence: None
        }
    );
    let mut acc = StreamAccumulator::new();
    for e in &events {
        acc.push(e);
    }
    let r = acc.into_response();
    assert!(matches!(&r.content[0], ContentBlock::Text { text, .. } if text == "Hello"));
    assert!(
        matches!(&r.content[1], ContentBlock::ToolUse { input, .. } if *input == json!({"city": "Paris"}))
    );
}

#[test]
fn stream_without_message_stop_is_not_clean_and_still_finishes() {
    let mut p = StreamParser::new();
    for f in &stream_frames()[..3] {
        p.push(f).unwrap();
    }
    assert!(!p.ended_cleanly());
    let tail = p.finish();
    assert_eq!(
        tail,
        vec![
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::Finish {
                stop_reason: StopReason::EndTurn,
                stop_sequence: None
            }
        ]
    );
}

#[test]
fn stream_exception_is_an_error_with_its_class() {
    let mut p = StreamParser::new();
    p.push(&stream_frames()[0]).unwrap();
    let err = p
        .push(&frame(
            "throttlingException",
            json!({"message": "Too many requests, please wait before trying again."}),
        ))
        .unwrap_err();
    assert_eq!(err, "upstream stream error: throttlingException");
    assert!(!err.contains("Too many"), "upstream text must not leak");
    assert_eq!(p.error_class(), Some(ErrorClass::RateLimit));
    assert!(
        p.push(&SseFrame {
            event: Some("contentBlockDelta".into()),
            data: "{not json".into()
        })
        .is_err()
    );
}

#[test]
fn stream_reasoning_deltas_open_a_thinking_block() {
    let mut p = StreamParser::new();
    let mut events = Vec::new();
    for f in [
        frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "think"}}}),
        ),
        frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig"}}}),
        ),
        frame("contentBlockStop", json!({"contentBlockIndex": 0})),
    ] {
        events.extend(p.push(&f).unwrap());
    }
    assert_eq!(
        events[1],
        StreamEvent::BlockStart {
            index: 0,
            block: BlockStart::Thinking
        }
    );
    assert_eq!(
        events[3],
        StreamEvent::Delta {
            index: 0,
            delta: BlockDelta::Signature("sig".into())
        }
    );
}

#[test]
fn a_cache_point_never_opens_the_system_prompt() {
    let req = ChatRequest {
        system: vec![SystemBlock {
            text: String::new(),
            cache_control: Some(json!({"type": "ephemeral"})),
        }],
        messages: vec![Message {
            role: Role::User,
            content: vec![text("hi")],
        }],
        ..ChatRequest::default()
    };
    let v = render_request(&req, "m").unwrap();
    assert!(v.get("system").is_none(), "{v}");
}
