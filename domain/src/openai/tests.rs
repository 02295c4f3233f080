use super::*;
use crate::canonical::wire::text_block;
use crate::canonical::{
    BlockDelta, BlockStart, ChatRequest, ChatResponse, ContentBlock, ImageSource, Message, Opaque,
    Role, Shape, StopReason, StreamEvent, SystemBlock, ToolChoice, ToolDef, ToolResultContent,
    Usage,
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
    text_block(t)
}

#[test]
fn errors_name_the_offending_field() {
    assert!(
        parse_request(b"{nope")
            .unwrap_err()
            .message()
            .starts_with("invalid JSON body: ")
    );
    assert_eq!(
        parse_request(b"[1]").unwrap_err().message(),
        "request body must be a JSON object"
    );
    assert_eq!(
        err_message(json!({"model": "m", "messages": []})),
        "messages must be a non-empty array"
    );
    assert_eq!(
        err_message(json!({"messages": [{"role": "user", "content": "hi"}]})),
        "model is required and must be a string"
    );
    let msg = err_message(json!({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{bad"}}
        ]}
    ]}));
    assert!(
        msg.starts_with("messages[1].tool_calls[0].function.arguments is not valid JSON: "),
        "{msg}"
    );
    assert_eq!(
        err_message(json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}
        ]})),
        "messages[0].tool_calls[0].function.name is required and must be a string"
    );
    assert_eq!(
        err_message(json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}
        ]})),
        "messages[0].tool_calls[0].function.arguments must encode a JSON object"
    );
    assert!(
        err_message(json!({"model": "m", "messages": [{"role": "function", "content": "x"}]}))
            .starts_with("messages[0].role 'function' is not supported")
    );
    assert_eq!(
        err_message(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})),
        "messages[0].tool_call_id is required and must be a string"
    );
    assert_eq!(
        err_message(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "stream": true, "stream_options": "yes"})
        ),
        "stream_options must be an object"
    );
    assert_eq!(
        err_message(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"parameters": {}}}]})
        ),
        "tools[0].function.name is required and must be a string"
    );
    assert_eq!(
        err_message(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 0})
        ),
        "max_completion_tokens must be a positive integer"
    );
    assert_eq!(
        err_message(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "stop": ["a", 3]})
        ),
        "stop[1] must be a string"
    );
}

#[test]
fn system_and_developer_messages_are_hoisted_in_order() {
    let req = parse(json!({"model": "m", "messages": [
        {"role": "system", "content": "one"},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "three"}]},
    ]}))
    .unwrap();
    let system: Vec<&str> = req.system.iter().map(|b| b.text.as_str()).collect();
    assert_eq!(system, ["one", "two\nthree"]);
    assert_eq!(req.messages.len(), 1);
}

#[test]
fn tool_messages_merge_into_one_user_turn_with_the_following_user_message() {
    let req = parse(json!({"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Oslo\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "w", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "rain"},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "sun"}]},
        {"role": "user", "content": "thanks"},
    ]}))
    .unwrap();
    assert_eq!(req.messages.len(), 3);
    assert_eq!(
        req.messages[1].content,
        vec![
            ContentBlock::ToolUse {
                id: "call_a".into(),
                name: "w".into(),
                input: json!({"city": "Oslo"}),
                cache_control: None
            },
            ContentBlock::ToolUse {
                id: "call_b".into(),
                name: "w".into(),
                input: json!({}),
                cache_control: None
            },
        ]
    );
    let tr = |id: &str, t: &str| ContentBlock::ToolResult {
        tool_use_id: id.into(),
        content: vec![ToolResultContent::Text(t.into())],
        is_error: false,
        cache_control: None,
    };
    assert_eq!(req.messages[2].role, Role::User);
    assert_eq!(
        req.messages[2].content,
        vec![tr("call_a", "rain"), tr("call_b", "sun"), text("thanks")]
    );
}

#[test]
fn image_urls_become_base64_or_url_sources() {
    let req = parse(json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]}))
    .unwrap();
    let images: Vec<&ImageSource> = req.messages[0]
        .content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::Image { source, .. } => Some(source),
            _ => None,
        })
        .collect();
    assert_eq!(
        images,
        [
            &ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "iVBORw0K".into()
            },
            &ImageSource::Url {
                url: "https://example.com/cat.jpg".into()
            },
        ]
    );
    let bad = err_message(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}]}]}),
    );
    assert_eq!(
        bad,
        "messages[0].content[0].image_url.url must be a base64 data URL"
    );
}

#[test]
fn scalar_fields_are_read() {
    let req = parse(json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 50, "max_completion_tokens": 70, "temperature": 0.5, "top_p": 0.9,
        "stop": "END", "stream": true, "stream_options": {"include_usage": true},
        "parallel_tool_calls": false, "user": "u1", "tool_choice": "required",
        "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "custom", "custom": {"name": "g"}}]}))
    .unwrap();
    assert_eq!(req.max_tokens, Some(70));
    assert_eq!(req.temperature, Some(0.5));
    assert_eq!(req.top_p, Some(0.9));
    assert_eq!(req.stop, ["END"]);
    assert!(req.stream && req.include_usage);
    assert_eq!(req.parallel_tool_calls, Some(false));
    assert_eq!(req.user.as_deref(), Some("u1"));
    assert_eq!(req.tool_choice, Some(ToolChoice::Any));
    assert_eq!(
        req.tools[0].input_schema,
        json!({"type": "object", "properties": {}})
    );
    assert_eq!(req.other_tools.len(), 1);
    assert_eq!(req.other_tools[0].kind(), "custom");
}

#[test]
fn passthrough_request_keeps_every_field_and_forces_usage() {
    let body = br#"{"model":"alias","messages":[{"role":"user","content":"x","name":"n"}],"stream":true,"stream_options":{"foo":1},"vendor_x":{"big":123456789012345678901234567890,"f":1.10}}"#;
    let parsed = parse_request(body).unwrap();
    let out = passthrough_request(parsed.raw, "gpt-5");
    assert_eq!(
        out.to_string(),
        r#"{"model":"gpt-5","messages":[{"role":"user","content":"x","name":"n"}],"stream":true,"stream_options":{"foo":1,"include_usage":true},"vendor_x":{"big":123456789012345678901234567890,"f":1.10}}"#
    );
    let sync =
        parse_request(br#"{"model":"a","messages":[{"role":"user","content":"x"}]}"#).unwrap();
    assert_eq!(
        passthrough_request(sync.raw, "b"),
        json!({"model": "b", "messages": [{"role": "user", "content": "x"}]})
    );
}

fn anthropic_shaped_request() -> ChatRequest {
    ChatRequest {
        model: "claude".into(),
        system: vec![
            SystemBlock {
                text: "be brief".into(),
                cache_control: Some(json!({"type": "ephemeral"})),
            },
            SystemBlock {
                text: "be kind".into(),
                cache_control: None,
            },
        ],
        messages: vec![
            Message {
                role: Role::User,
                content: vec![text("hi")],
            },
            Message {
                role: Role::Assistant,
                content: vec![
                    ContentBlock::Thinking {
                        thinking: "hmm".into(),
                        signature: Some("sig".into()),
                    },
                    text("calling"),
                    ContentBlock::ToolUse {
                        id: "toolu_01A".into(),
                        name: "shot".into(),
                        input: json!({"x": 1}),
                        cache_control: None,
                    },
                ],
            },
            Message {
                role: Role::User,
                content: vec![
                    ContentBlock::ToolResult {
                        tool_use_id: "toolu_01A".into(),
                        content: vec![
                            ToolResultContent::Text("done".into()),
                            ToolResultContent::Image(ImageSource::Base64 {
                                media_type: "image/png".into(),
                                data: "AAAA".into(),
                            }),
                        ],
                        is_error: false,
                        cache_control: None,
                    },
                    text("what now?"),
                ],
            },
        ],
        tools: vec![ToolDef {
            name: "shot".into(),
            description: Some("screenshot".into()),
            input_schema: json!({"type": "object"}),
            cache_control: Some(json!({"type": "ephemeral"})),
        }],
        tool_choice: Some(ToolChoice::Tool("shot".into())),
        max_tokens: Some(100),
        stream: true,
        parallel_tool_calls: Some(false),
        stop: vec!["STOP".into()],
        ..ChatRequest::default()
    }
}

#[test]
fn render_request_builds_the_openai_wire() {
    let out = render_request(&anthropic_shaped_request(), "gpt-5").unwrap();
    assert_eq!(
        out,
        json!({
            "model": "gpt-5",
            "messages": [
                {"role": "system", "content": "be brief\n\nbe kind"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "calling", "tool_calls": [
                    {"id": "call_01A", "type": "function", "function": {"name": "shot", "arguments": "{\"x\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_01A", "content": "done"},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "what now?"},
                ]},
            ],
            "tools": [{"type": "function", "function": {"name": "shot", "description": "screenshot", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "shot"}},
            "parallel_tool_calls": false,
            "max_completion_tokens": 100,
            "stop": ["STOP"],
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
}

#[test]
fn render_request_refuses_blocks_it_cannot_express() {
    let mut req = anthropic_shaped_request();
    req.messages[0].content.push(ContentBlock::Other(Opaque {
        shape: Shape::Anthropic,
        value: json!({"type": "document", "source": {}}),
    }));
    assert_eq!(
        render_request(&req, "m").unwrap_err().message(),
        "content block type 'document' cannot be sent to an OpenAI-compatible upstream"
    );
    let mut req = anthropic_shaped_request();
    req.other_tools.push(Opaque {
        shape: Shape::Anthropic,
        value: json!({"type": "web_search_20250305", "name": "web_search"}),
    });
    assert!(
        render_request(&req, "m")
            .unwrap_err()
            .message()
            .contains("'web_search_20250305'")
    );
}

#[test]
fn parse_response_splits_cached_tokens_and_keeps_bad_arguments_raw() {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-5",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "ok", "reasoning_content": "think",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{oops"}},
            ]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
            "prompt_tokens_details": {"cached_tokens": 30}},
    });
    let r = parse_response(body.to_string().as_bytes()).unwrap();
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 70,
            output_tokens: 7,
            cache_read_tokens: 30,
            cache_write_tokens: 0
        }
    );
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(r.tool_call_count(), 2);
    assert_eq!(r.thinking_block_count(), 1);
    assert!(
        matches!(&r.content[3], ContentBlock::ToolUse { input, .. } if *input == json!("{oops"))
    );
    // The raw text goes back to an OpenAI client unchanged.
    let out = render_response(&r, "alias", "X", 0);
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][1]["function"]["arguments"],
        "{oops"
    );
    let clamped = parse_response(
        br#"{"choices":[],"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":9}}}"#,
    )
    .unwrap();
    assert_eq!(clamped.usage.input_tokens, 0);
    assert!(
        parse_response(br#"{"error":{"type":"server_error","message":"secret prompt"}}"#)
            .unwrap_err()
            .ends_with("server_error")
    );
}

#[test]
fn render_response_counts_cached_tokens_in_prompt_tokens_and_maps_ids() {
    let resp = ChatResponse {
        id: Some("msg_up".into()),
        model: Some("claude-x".into()),
        content: vec![
            ContentBlock::Thinking {
                thinking: "t".into(),
                signature: Some("s".into()),
            },
            text("Hello"),
            text(" world"),
            ContentBlock::ToolUse {
                id: "toolu_9".into(),
                name: "f".into(),
                input: json!({"q": "x"}),
                cache_control: None,
            },
        ],
        stop_reason: StopReason::ToolUse,
        stop_sequence: None,
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 20,
            cache_write_tokens: 3,
        },
    };
    assert_eq!(
        render_response(&resp, "my-model", "01ABC", 1_700_000_000),
        json!({
            "id": "chatcmpl-01ABC", "object": "chat.completion", "created": 1_700_000_000,
            "model": "my-model",
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "Hello world", "refusal": null,
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"x\"}"}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 33, "completion_tokens": 5, "total_tokens": 38,
                "prompt_tokens_details": {"cached_tokens": 20}},
        })
    );
    let empty = ChatResponse {
        content: vec![],
        stop_reason: StopReason::MaxTokens,
        ..resp
    };
    let out = render_response(&empty, "m", "1", 0);
    assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(out["choices"][0]["finish_reason"], "length");
    assert!(out["choices"][0]["message"].get("tool_calls").is_none());
}

#[test]
fn passthrough_response_replaces_only_the_model() {
    let body = br#"{"id":"x","model":"gpt-5-2025","system_fingerprint":"fp","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
    let (v, parsed) = passthrough_response(body, "alias").unwrap();
    assert_eq!(
        v.to_string(),
        String::from_utf8_lossy(body).replace("gpt-5-2025", "alias")
    );
    assert_eq!(parsed.usage.input_tokens, 3);
    assert_eq!(parsed.content, vec![text("hi")]);
}

fn frames(data: &[&str]) -> Vec<SseFrame> {
    data.iter()
        .map(|d| SseFrame {
            event: None,
            data: (*d).to_owned(),
        })
        .collect()
}

fn run_parser(data: &[&str]) -> Vec<StreamEvent> {
    let mut p = StreamParser::new();
    let mut out = Vec::new();
    for f in frames(data) {
        out.extend(p.push(&f).unwrap());
    }
    out.extend(p.finish());
    out
}

#[test]
fn stream_parser_builds_blocks_from_chunks() {
    let events = run_parser(&[
        r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"lo"}}]}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","function":{"arguments":"{\"x\""}}]}}]}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        "[DONE]",
    ]);
    use BlockDelta as D;
    use StreamEvent as E;
    let delta = |index, delta| E::Delta { index, delta };
    assert_eq!(
        events,
        vec![
            E::Start {
                id: Some("c1".into()),
                model: Some("gpt".into()),
                usage: Usage::default()
            },
            E::BlockStart {
                index: 0,
                block: BlockStart::Thinking
            },
            delta(0, D::Thinking("hm".into())),
            E::BlockStop { index: 0 },
            E::BlockStart {
                index: 1,
                block: BlockStart::Text
            },
            delta(1, D::Text("Hel".into())),
            delta(1, D::Text("lo".into())),
            E::BlockStop { index: 1 },
            E::BlockStart {
                index: 2,
                block: BlockStart::ToolUse {
                    id: "call_a".into(),
                    name: "f".into()
                }
            },
            delta(2, D::ToolInputJson("{\"x\"".into())),
            delta(2, D::ToolInputJson(":1}".into())),
            E::BlockStop { index: 2 },
            E::BlockStart {
                index: 3,
                block: BlockStart::ToolUse {
                    id: "call_b".into(),
                    name: "g".into()
                }
            },
            delta(3, D::ToolInputJson("{}".into())),
            E::Usage(Usage {
                input_tokens: 8,
                output_tokens: 4,
                cache_read_tokens: 2,
                cache_write_tokens: 0
            }),
            E::BlockStop { index: 3 },
            E::Finish {
                stop_reason: StopReason::ToolUse,
                stop_sequence: None
            },
        ]
    );
}

#[test]
fn stream_parser_reports_error_chunks_and_ends_truncated_streams() {
    let mut p = StreamParser::new();
    let ok = p
        .push(&frames(&[r#"{"choices":[{"index":0,"delta":{"content":"a"}}]}"#])[0])
        .unwrap();
    assert_eq!(ok.len(), 3);
    let err = p
        .push(
            &frames(&[
                r#"{"error":{"message":"the prompt was ...","type":"server_error","code":"boom"}}"#,
            ])[0],
        )
        .unwrap_err();
    assert_eq!(err, "upstream stream error: server_error/boom");
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
    assert!(p.finish().is_empty());
}

fn text_stream() -> Vec<StreamEvent> {
    vec![
        StreamEvent::Start {
            id: None,
            model: None,
            usage: Usage {
                input_tokens: 9,
                ..Usage::default()
            },
        },
        StreamEvent::BlockStart {
            index: 0,
            block: BlockStart::Thinking,
        },
        StreamEvent::Delta {
            index: 0,
            delta: BlockDelta::Thinking("secret".into()),
        },
        StreamEvent::BlockStop { index: 0 },
        StreamEvent::BlockStart {
            index: 1,
            block: BlockStart::Text,
        },
        StreamEvent::Delta {
            index: 1,
            delta: BlockDelta::Text("Hi".into()),
        },
        StreamEvent::BlockStop { index: 1 },
        StreamEvent::BlockStart {
            index: 2,
            block: BlockStart::ToolUse {
                id: "toolu_7".into(),
                name: "f".into(),
            },
        },
        StreamEvent::Delta {
            index: 2,
            delta: BlockDelta::ToolInputJson("{}".into()),
        },
        StreamEvent::BlockStop { index: 2 },
        StreamEvent::Usage(Usage {
            input_tokens: 9,
            output_tokens: 3,
            cache_read_tokens: 1,
            cache_write_tokens: 0,
        }),
        StreamEvent::Finish {
            stop_reason: StopReason::ToolUse,
            stop_sequence: None,
        },
    ]
}

#[test]
fn stream_renderer_emits_real_chunk_shapes() {
    let mut r = StreamRenderer::new("01X", "alias", true, 42);
    let mut out: Vec<String> = text_stream().iter().flat_map(|e| r.event(e)).collect();
    out.extend(r.end());
    let head = r#"{"id":"chatcmpl-01X","object":"chat.completion.chunk","created":42,"model":"alias","choices":[{"index":0,"delta":"#;
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {head}{delta},\"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":null}}\n\n"
        )
    };
    assert_eq!(
        out,
        vec![
            chunk(r#"{"role":"assistant","content":"","refusal":null}"#, "null"),
            chunk(r#"{"content":"Hi"}"#, "null"),
            chunk(
                r#"{"tool_calls":[{"index":0,"id":"call_7","type":"function","function":{"name":"f","arguments":""}}]}"#,
                "null"
            ),
            chunk(
                r#"{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}"#,
                "null"
            ),
            chunk("{}", "\"tool_calls\""),
            "data: {\"id\":\"chatcmpl-01X\",\"object\":\"chat.completion.chunk\",\"created\":42,\"model\":\"alias\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":3,\"total_tokens\":13,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\n\n".to_owned(),
            "data: [DONE]\n\n".to_owned(),
        ]
    );
}

#[test]
fn stream_renderer_without_usage_and_on_error() {
    let mut r = StreamRenderer::new("1", "m", false, 0);
    let mut out: Vec<String> = text_stream()[..6].iter().flat_map(|e| r.event(e)).collect();
    assert!(out.iter().all(|f| !f.contains("usage")));
    out = r.error(&GatewayError::Upstream {
        class: crate::error::ErrorClass::ServerError,
        provider: "anthropic".into(),
        message: "anthropic stream failed: overloaded_error".into(),
        retry_after_secs: None,
    });
    assert_eq!(out.len(), 1);
    let v: Value = serde_json::from_str(out[0].strip_prefix("data: ").unwrap().trim()).unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    assert!(r.end().is_empty(), "no [DONE] after an error");
}

#[test]
fn passthrough_stream_rewrites_model_and_hides_forced_usage() {
    let fs = frames(&[
        r#"{"id":"c","object":"chat.completion.chunk","model":"gpt-5-2025","x_vendor":1,"choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}"#,
        r#"{"id":"c","model":"gpt-5-2025","choices":[],"usage":{"prompt_tokens":1}}"#,
        r#"{"error":{"type":"server_error"}}"#,
        "[DONE]",
    ]);
    let mut hidden = PassthroughStream::new("alias", false);
    let out: Vec<Option<String>> = fs.iter().map(|f| hidden.rewrite(f)).collect();
    assert_eq!(
        out,
        vec![
            Some("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"alias\",\"x_vendor\":1,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n".to_owned()),
            None,
            None,
            Some("data: [DONE]\n\n".to_owned()),
        ]
    );
    let mut shown = PassthroughStream::new("alias", true);
    assert_eq!(
        shown.rewrite(&fs[1]).as_deref(),
        Some(
            "data: {\"id\":\"c\",\"model\":\"alias\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"
        )
    );
    assert!(shown.rewrite(&fs[0]).unwrap().contains("\"usage\":null"));
}

#[test]
fn rendered_stream_parses_back() {
    let mut r = StreamRenderer::new("1", "m", true, 0);
    let mut bytes = String::new();
    for e in text_stream() {
        bytes.extend(r.event(&e));
    }
    bytes.extend(r.end());
    let mut sse = SseParser::new();
    let mut p = StreamParser::new();
    let mut acc = crate::canonical::StreamAccumulator::new();
    for f in sse.push(bytes.as_bytes()) {
        for e in p.push(&f).unwrap() {
            acc.push(&e);
        }
    }
    assert!(p.ended_cleanly());
    let resp = acc.into_response();
    assert_eq!(resp.stop_reason, StopReason::ToolUse);
    assert_eq!(
        resp.content,
        vec![
            text("Hi"),
            ContentBlock::ToolUse {
                id: "call_7".into(),
                name: "f".into(),
                input: json!({}),
                cache_control: None
            }
        ]
    );
}
