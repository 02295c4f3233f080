use super::*;
use crate::canonical::{
    BlockDelta, BlockStart, ChatRequest, ChatResponse, ContentBlock, ImageSource, Message, Opaque,
    Role, Shape, StopReason, StreamAccumulator, StreamEvent, SystemBlock, ToolChoice, ToolDef,
    ToolResultContent, Usage,
};
use crate::error::GatewayError;
use crate::sse::{SseFrame, SseParser};
use serde_json::{Value, json};

fn parse(v: Value) -> Result<ChatRequest, GatewayError> {
    parse_request(v.to_string().as_bytes()).map(|p| p.request)
}

fn err_message(v: Value) -> String {
    match parse(v) {
        Err(GatewayError::InvalidRequest { message }) => message,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

fn text(t: &str) -> ContentBlock {
    ContentBlock::Text {
        text: t.into(),
        cache_control: None,
    }
}

fn user(content: Value) -> Value {
    json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": content}]})
}

#[test]
fn errors_name_the_offending_field() {
    assert_eq!(
        err_message(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
        "'max_tokens' is required and must be a positive integer"
    );
    assert_eq!(
        err_message(
            json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]})
        ),
        "'max_tokens' is required and must be a positive integer"
    );
    assert_eq!(
        err_message(json!({"model": "m", "max_tokens": 5, "messages": []})),
        "messages must be a non-empty array"
    );
    assert!(
        err_message(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]})
        )
        .starts_with("messages[0].role 'tool' is not supported")
    );
    // A system message among the messages is hoisted into the canonical system prompt
    // (and forwarded untouched on same-shape traffic, where `raw` is what travels).
    let parsed = parse_request(
        json!({"model": "m", "max_tokens": 5, "system": "first", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "mid", "cache_control": {"type": "ephemeral"}}]},
        ]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(parsed.request.messages.len(), 1);
    let texts: Vec<&str> = parsed
        .request
        .system
        .iter()
        .map(|b| b.text.as_str())
        .collect();
    assert_eq!(texts, ["first", "mid"]);
    assert!(parsed.request.system[1].cache_control.is_some());
    assert_eq!(parsed.raw["messages"][1]["role"], "system");
    assert!(
        err_message(json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": [{"type": "image"}]}]}))
            .contains("not supported in a system message")
    );
    assert_eq!(
        err_message(user(
            json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}])
        )),
        "messages[0].content[0].source.data is required and must be a string"
    );
    assert_eq!(
        err_message(user(
            json!([{"type": "tool_use", "id": "t", "name": "f", "input": {}}])
        )),
        "messages[0].content[0]: tool_use blocks are only allowed in assistant messages"
    );
    assert_eq!(
        err_message(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]}]})
        ),
        "messages[0].content[0].input is required and must be an object"
    );
    assert_eq!(
        err_message(user(json!([{"type": "tool_result", "content": "x"}]))),
        "messages[0].content[0].tool_use_id is required and must be a string"
    );
    assert_eq!(
        err_message(
            json!({"model": "m", "max_tokens": 5, "system": [{"type": "image"}],
            "messages": [{"role": "user", "content": "x"}]})
        ),
        "system[0].type must be 'text'"
    );
    assert_eq!(
        err_message(
            json!({"model": "m", "max_tokens": 5, "tools": [{"input_schema": {}}],
            "messages": [{"role": "user", "content": "x"}]})
        ),
        "tools[0].name is required and must be a string"
    );
}

#[test]
fn cache_control_is_kept_on_system_blocks_and_tools() {
    let cc = json!({"type": "ephemeral"});
    let req = parse(json!({
        "model": "m", "max_tokens": 10,
        "system": [{"type": "text", "text": "stable", "cache_control": cc}, {"type": "text", "text": "volatile"}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "doc", "cache_control": cc},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}, "cache_control": cc},
        ]}],
        "tools": [{"name": "f", "cache_control": cc}],
    }))
    .unwrap();
    assert_eq!(req.system[0].cache_control, Some(cc.clone()));
    assert_eq!(req.system[1].cache_control, None);
    assert_eq!(
        req.messages[0].content,
        vec![
            ContentBlock::Text {
                text: "doc".into(),
                cache_control: Some(cc.clone())
            },
            ContentBlock::Image {
                source: ImageSource::Url {
                    url: "https://x/y.png".into()
                },
                cache_control: Some(cc.clone())
            },
        ]
    );
    assert_eq!(req.tools[0].cache_control, Some(cc.clone()));
    assert_eq!(
        req.tools[0].input_schema,
        json!({"type": "object", "properties": {}})
    );
    // And they survive rendering back to this wire.
    let out = render_request(&req, "claude").unwrap();
    assert_eq!(out["system"][0]["cache_control"], cc);
    assert_eq!(out["messages"][0]["content"][1]["cache_control"], cc);
    assert_eq!(out["tools"][0]["cache_control"], cc);
}

#[test]
fn blocks_and_fields_are_read() {
    let req = parse(json!({
        "model": "m", "max_tokens": 10, "system": "sys",
        "messages": [
            {"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "d"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "redacted_thinking", "data": "r"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true,
                "content": [{"type": "text", "text": "bad"}, {"type": "search_result", "title": "x"}]}]},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "stop_sequences": ["Z"], "temperature": 0.2, "top_p": 0.5, "top_k": 3,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "u"}, "stream": true,
    }))
    .unwrap();
    assert_eq!(req.system[0].text, "sys");
    assert!(
        matches!(&req.messages[0].content[0], ContentBlock::Other(o) if o.kind() == "document")
    );
    assert_eq!(req.messages[1].content.len(), 3);
    assert!(matches!(
        &req.messages[2].content[0],
        ContentBlock::ToolResult { is_error: true, content, .. }
            if content.len() == 2 && matches!(&content[1], ToolResultContent::Other(o) if o.kind() == "search_result")
    ));
    assert_eq!(req.tool_choice, Some(ToolChoice::Any));
    assert_eq!(req.parallel_tool_calls, Some(false));
    assert_eq!(req.other_tools[0].kind(), "web_search_20250305");
    assert_eq!(req.stop, ["Z"]);
    assert_eq!(
        req.thinking,
        Some(json!({"type": "enabled", "budget_tokens": 1024}))
    );
    assert_eq!(req.user.as_deref(), Some("u"));
    assert!(req.stream && !req.include_usage);
    // The document block cannot go to an OpenAI upstream, and the error says why.
    assert_eq!(
        crate::openai::render_request(&req, "gpt")
            .unwrap_err()
            .message(),
        "content block type 'document' cannot be sent to an OpenAI-compatible upstream"
    );
}

#[test]
fn passthrough_request_keeps_unknown_fields() {
    let body = br#"{"model":"sonnet","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"x","citations":[]}]}],"context_management":{"edits":[]},"top_k":3}"#;
    let parsed = parse_request(body).unwrap();
    assert_eq!(
        passthrough_request(parsed.raw, "claude-sonnet-4-6").to_string(),
        String::from_utf8_lossy(body).replace("sonnet", "claude-sonnet-4-6")
    );
}

fn openai_shaped_request() -> ChatRequest {
    ChatRequest {
        model: "gpt".into(),
        system: vec![SystemBlock {
            text: "sys".into(),
            cache_control: None,
        }],
        messages: vec![
            Message {
                role: Role::User,
                content: vec![text("one")],
            },
            Message {
                role: Role::User,
                content: vec![text("two"), text("")],
            },
            Message {
                role: Role::Assistant,
                content: vec![
                    ContentBlock::Thinking {
                        thinking: "unsigned".into(),
                        signature: None,
                    },
                    ContentBlock::Thinking {
                        thinking: "signed".into(),
                        signature: Some("sig".into()),
                    },
                    ContentBlock::ToolUse {
                        id: "call_abc".into(),
                        name: "f".into(),
                        input: json!({"k": "v"}),
                        cache_control: None,
                    },
                    ContentBlock::ToolUse {
                        id: "weird.id".into(),
                        name: "f".into(),
                        input: json!({}),
                        cache_control: None,
                    },
                ],
            },
            Message {
                role: Role::User,
                content: vec![
                    ContentBlock::ToolResult {
                        tool_use_id: "call_abc".into(),
                        content: vec![ToolResultContent::Text("r1".into())],
                        is_error: false,
                        cache_control: None,
                    },
                    ContentBlock::ToolResult {
                        tool_use_id: "weird.id".into(),
                        content: vec![],
                        is_error: true,
                        cache_control: None,
                    },
                ],
            },
            Message {
                role: Role::User,
                content: vec![
                    ContentBlock::Image {
                        source: ImageSource::Base64 {
                            media_type: "image/jpeg".into(),
                            data: "QUJD".into(),
                        },
                        cache_control: None,
                    },
                    ContentBlock::ToolResult {
                        tool_use_id: "call_late".into(),
                        content: vec![ToolResultContent::Text("r3".into())],
                        is_error: false,
                        cache_control: None,
                    },
                ],
            },
        ],
        tools: vec![ToolDef {
            name: "f".into(),
            description: None,
            input_schema: json!({"type": "object", "properties": {}}),
            cache_control: None,
        }],
        tool_choice: None,
        parallel_tool_calls: Some(false),
        temperature: Some(1.5),
        stop: vec!["END".into()],
        user: Some("u".into()),
        stream: true,
        include_usage: true,
        ..ChatRequest::default()
    }
}

#[test]
fn render_request_builds_the_anthropic_wire() {
    let out = render_request(&openai_shaped_request(), "claude-haiku-4-5").unwrap();
    assert_eq!(
        out,
        json!({
            "model": "claude-haiku-4-5",
            "max_tokens": 4096,
            "system": [{"type": "text", "text": "sys"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "signed", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_abc", "name": "f", "input": {"k": "v"}},
                    {"type": "tool_use", "id": "toolu_weird_id", "name": "f", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_abc", "content": "r1"},
                    {"type": "tool_result", "tool_use_id": "toolu_weird_id", "is_error": true},
                    {"type": "tool_result", "tool_use_id": "toolu_late", "content": "r3"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
                ]},
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"],
            "temperature": 1.0,
            "metadata": {"user_id": "u"},
            "stream": true,
        })
    );
}

#[test]
fn render_request_refuses_openai_only_content() {
    let mut req = openai_shaped_request();
    req.messages[0].content.push(ContentBlock::Other(Opaque {
        shape: Shape::OpenAi,
        value: json!({"type": "input_audio", "input_audio": {}}),
    }));
    assert_eq!(
        render_request(&req, "c").unwrap_err().message(),
        "content block type 'input_audio' cannot be sent to an Anthropic upstream"
    );
}

#[test]
fn responses_parse_and_render_with_disjoint_usage() {
    let body = json!({
        "id": "msg_up", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "text", "text": "hi", "citations": null},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 5, "output_tokens": 6, "cache_read_input_tokens": 7, "cache_creation_input_tokens": 8},
    });
    let r = parse_response(body.to_string().as_bytes()).unwrap();
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 5,
            output_tokens: 6,
            cache_read_tokens: 7,
            cache_write_tokens: 8
        }
    );
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(r.content.len(), 3);
    // Towards an OpenAI client, prompt_tokens includes both cache buckets.
    let o = crate::openai::render_response(&r, "alias", "1", 0);
    assert_eq!(o["usage"]["prompt_tokens"], 20);
    assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 7);
    assert_eq!(o["choices"][0]["message"]["tool_calls"][0]["id"], "call_1");

    // An OpenAI upstream's answer rendered for an Anthropic client.
    let from_openai = ChatResponse {
        id: None,
        model: None,
        content: vec![
            ContentBlock::Thinking {
                thinking: "r".into(),
                signature: None,
            },
            text("ok"),
            ContentBlock::ToolUse {
                id: "call_xyz".into(),
                name: "f".into(),
                input: json!("{not json"),
                cache_control: None,
            },
        ],
        stop_reason: StopReason::ToolUse,
        stop_sequence: None,
        usage: Usage {
            input_tokens: 70,
            output_tokens: 2,
            cache_read_tokens: 30,
            cache_write_tokens: 0,
        },
    };
    assert_eq!(
        render_response(&from_openai, "alias", "01Z", 0),
        json!({
            "id": "msg_01Z", "type": "message", "role": "assistant", "model": "alias",
            "content": [
                {"type": "thinking", "thinking": "r", "signature": ""},
                {"type": "text", "text": "ok"},
                {"type": "tool_use", "id": "toolu_xyz", "name": "f", "input": {}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 70, "output_tokens": 2, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 0},
        })
    );
    assert_eq!(
        parse_response(br#"{"type":"error","error":{"type":"overloaded_error","message":"m"}}"#)
            .unwrap_err(),
        "upstream returned an error: overloaded_error"
    );
}

#[test]
fn passthrough_response_replaces_only_the_model() {
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-6","content":[{"type":"text","text":"hi","citations":null}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":2,"service_tier":"standard"},"container":null}"#;
    let (v, parsed) = passthrough_response(body, "sonnet").unwrap();
    assert_eq!(
        v.to_string(),
        String::from_utf8_lossy(body).replace("claude-sonnet-4-6", "sonnet")
    );
    assert_eq!(parsed.usage.output_tokens, 2);
}

fn sse(events: &[Value]) -> Vec<SseFrame> {
    events
        .iter()
        .map(|v| SseFrame {
            event: v["type"].as_str().map(str::to_owned),
            data: v.to_string(),
        })
        .collect()
}

fn upstream_stream() -> Vec<Value> {
    vec![
        json!({"type": "message_start", "message": {"id": "msg_u", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 1}}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "plan"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "SIG"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"q\":1}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Hello"}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}}),
        json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
        json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "2}"}}),
        json!({"type": "content_block_stop", "index": 3}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 30}}),
        json!({"type": "message_stop"}),
    ]
}

#[test]
fn stream_parser_renumbers_blocks_and_merges_usage() {
    let mut p = StreamParser::new();
    let mut events = Vec::new();
    for f in sse(&upstream_stream()) {
        events.extend(p.push(&f).unwrap());
    }
    assert!(p.ended_cleanly());
    assert!(p.finish().is_empty());
    let start_usage = Usage {
        input_tokens: 12,
        output_tokens: 1,
        cache_read_tokens: 4,
        cache_write_tokens: 0,
    };
    assert_eq!(
        events[0],
        StreamEvent::Start {
            id: Some("msg_u".into()),
            model: Some("claude-x".into()),
            usage: start_usage
        }
    );
    assert!(events.contains(&StreamEvent::Usage(Usage {
        output_tokens: 30,
        ..start_usage
    })));
    let starts: Vec<(usize, &BlockStart)> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::BlockStart { index, block } => Some((*index, block)),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 3, "the server tool block is skipped");
    assert_eq!(starts.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2]);
    let mut acc = StreamAccumulator::new();
    events.iter().for_each(|e| acc.push(e));
    let resp = acc.into_response();
    assert_eq!(
        resp.content,
        vec![
            ContentBlock::Thinking {
                thinking: "plan".into(),
                signature: Some("SIG".into())
            },
            text("Hello"),
            ContentBlock::ToolUse {
                id: "toolu_9".into(),
                name: "f".into(),
                input: json!({"a": 2}),
                cache_control: None
            },
        ]
    );
    assert_eq!(resp.stop_reason, StopReason::ToolUse);
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Finish {
            stop_reason: StopReason::ToolUse,
            stop_sequence: None
        })
    );
}

#[test]
fn stream_parser_reports_error_events_by_type_only() {
    let mut p = StreamParser::new();
    let err = p
        .push(&SseFrame {
            event: Some("error".into()),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                .into(),
        })
        .unwrap_err();
    assert_eq!(err, "upstream stream error: overloaded_error");
}

#[test]
fn stream_renderer_emits_real_event_shapes() {
    let events = vec![
        StreamEvent::Start {
            id: None,
            model: None,
            usage: Usage::default(),
        },
        StreamEvent::BlockStart {
            index: 0,
            block: BlockStart::Text,
        },
        StreamEvent::Delta {
            index: 0,
            delta: BlockDelta::Text("Hi".into()),
        },
        StreamEvent::BlockStop { index: 0 },
        StreamEvent::BlockStart {
            index: 1,
            block: BlockStart::ToolUse {
                id: "call_1".into(),
                name: "f".into(),
            },
        },
        StreamEvent::Delta {
            index: 1,
            delta: BlockDelta::ToolInputJson("{}".into()),
        },
        StreamEvent::Usage(Usage {
            input_tokens: 7,
            output_tokens: 2,
            cache_read_tokens: 3,
            cache_write_tokens: 0,
        }),
        StreamEvent::BlockStop { index: 1 },
        StreamEvent::Finish {
            stop_reason: StopReason::ToolUse,
            stop_sequence: None,
        },
    ];
    let mut r = StreamRenderer::new("01M", "alias", false, 0);
    let mut out: Vec<String> = events.iter().flat_map(|e| r.event(e)).collect();
    out.extend(r.end());
    let expected = [
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01M","type":"message","role":"assistant","model":"alias","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0}}}"#,
        r#"event: ping
data: {"type":"ping"}"#,
        r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        r#"event: content_block_stop
data: {"type":"content_block_stop","index":0}"#,
        r#"event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
        r#"event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
        r#"event: content_block_stop
data: {"type":"content_block_stop","index":1}"#,
        r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":7,"cache_creation_input_tokens":0,"cache_read_input_tokens":3,"output_tokens":2}}"#,
        r#"event: message_stop
data: {"type":"message_stop"}"#,
    ];
    let expected: Vec<String> = expected.iter().map(|f| format!("{f}\n\n")).collect();
    assert_eq!(out, expected);
}

#[test]
fn stream_renderer_error_is_an_error_event_and_nothing_follows() {
    let mut r = StreamRenderer::new("1", "m", false, 0);
    r.event(&StreamEvent::Start {
        id: None,
        model: None,
        usage: Usage::default(),
    });
    let out = r.error(&GatewayError::Upstream {
        class: crate::error::ErrorClass::RateLimit,
        provider: "openai".into(),
        message: "openai stream failed".into(),
        retry_after_secs: None,
    });
    assert_eq!(
        out,
        vec![
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"openai stream failed\"}}\n\n"
                .to_owned()
        ]
    );
    assert!(r.end().is_empty());
}

#[test]
fn passthrough_stream_rewrites_only_message_start() {
    let frames = sse(&upstream_stream());
    let mut p = PassthroughStream::new("alias", false);
    let out: Vec<String> = frames.iter().filter_map(|f| p.rewrite(f)).collect();
    assert_eq!(out.len(), frames.len());
    assert!(out[0].contains("\"model\":\"alias\""));
    assert!(out[0].starts_with("event: message_start\ndata: "));
    for (f, o) in frames.iter().zip(&out).skip(1) {
        assert_eq!(
            o,
            &format!(
                "event: {}\ndata: {}\n\n",
                f.event.as_deref().unwrap(),
                f.data
            )
        );
    }
    let err = SseFrame {
        event: Some("error".into()),
        data: r#"{"type":"error","error":{"type":"api_error","message":"echo of prompt"}}"#.into(),
    };
    assert_eq!(p.rewrite(&err), None);
}

#[test]
fn rendered_stream_parses_back_through_sse() {
    let mut up = StreamParser::new();
    let mut events = Vec::new();
    for f in sse(&upstream_stream()) {
        events.extend(up.push(&f).unwrap());
    }
    let mut r = StreamRenderer::new("1", "m", false, 0);
    let mut bytes = String::new();
    for e in &events {
        bytes.extend(r.event(e));
    }
    bytes.extend(r.end());
    let mut parser = SseParser::new();
    let mut again = StreamParser::new();
    let mut acc = StreamAccumulator::new();
    for f in parser.push(bytes.as_bytes()) {
        for e in again.push(&f).unwrap() {
            acc.push(&e);
        }
    }
    let mut first = StreamAccumulator::new();
    events.iter().for_each(|e| first.push(e));
    let (a, b) = (first.into_response(), acc.into_response());
    assert_eq!(a.content, b.content);
    assert_eq!(a.usage, b.usage);
    assert_eq!(a.stop_reason, b.stop_reason);
}
