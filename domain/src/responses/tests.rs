use super::request::request_from_map;
use super::*;
use crate::canonical::wire::{empty_object_schema, text_block};
use crate::canonical::{
    BlockDelta, BlockStart, ChatRequest, ChatResponse, ContentBlock, ImageSource, Message, Opaque,
    Role, Shape, StopReason, StreamAccumulator, StreamEvent, SystemBlock, ToolChoice, ToolDef,
    ToolResultContent, Usage,
};
use crate::error::{ErrorClass, GatewayError};
use crate::sse::{SseFrame, SseParser, format_frame};
use serde_json::{Value, json};

fn parse(v: Value) -> ChatRequest {
    parse_request(v.to_string().as_bytes()).unwrap().request
}

fn err_message(v: Value) -> String {
    match parse_request(v.to_string().as_bytes()) {
        Err(GatewayError::InvalidRequest { message }) => message,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

fn text(t: &str) -> ContentBlock {
    text_block(t)
}

fn user(content: Vec<ContentBlock>) -> Message {
    Message {
        role: Role::User,
        content,
    }
}

fn assistant(content: Vec<ContentBlock>) -> Message {
    Message {
        role: Role::Assistant,
        content,
    }
}

fn tool_use(id: &str, name: &str, input: Value) -> ContentBlock {
    ContentBlock::ToolUse {
        id: id.into(),
        name: name.into(),
        input,
        cache_control: None,
    }
}

fn tool_result(id: &str, content: Vec<ToolResultContent>) -> ContentBlock {
    ContentBlock::ToolResult {
        tool_use_id: id.into(),
        content,
        is_error: false,
        cache_control: None,
    }
}

fn system(t: &str) -> SystemBlock {
    SystemBlock {
        text: t.into(),
        cache_control: None,
    }
}

#[test]
fn string_input_is_one_user_message_and_parameters_are_read() {
    let req = parse(json!({
        "model": "gpt-5", "input": "hi", "instructions": "be brief",
        "max_output_tokens": 300, "temperature": 0.5, "top_p": 0.9, "stream": true,
        "parallel_tool_calls": false, "user": "u1", "store": false,
        "reasoning": {"effort": "high"}, "text": {"verbosity": "low"}
    }));
    assert_eq!(
        req,
        ChatRequest {
            model: "gpt-5".into(),
            system: vec![system("be brief")],
            messages: vec![user(vec![text("hi")])],
            max_tokens: Some(300),
            temperature: Some(0.5),
            top_p: Some(0.9),
            stream: true,
            parallel_tool_calls: Some(false),
            user: Some("u1".into()),
            ..ChatRequest::default()
        }
    );
    let req = parse(json!({"model": "m", "input": [], "safety_identifier": "s1"}));
    assert_eq!(req.user.as_deref(), Some("s1"));
    assert!(req.messages.is_empty());
}

#[test]
fn message_items_with_every_role_and_part_kind() {
    let req = parse(json!({"model": "m", "input": [
        {"role": "developer", "content": "dev rules"},
        {"type": "message", "role": "system", "content": [
            {"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "high"},
            {"type": "input_image", "image_url": "https://x.test/a.png"},
            {"type": "input_image", "file_id": "file-1"},
            {"type": "input_file", "file_id": "file-2"}
        ]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "seen", "annotations": []},
                     {"type": "refusal", "refusal": "no"}]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "next"}
    ]}));
    assert_eq!(req.system, vec![system("dev rules"), system("a\nb")]);
    assert_eq!(
        req.messages,
        vec![
            user(vec![
                text("look"),
                ContentBlock::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "AAAA".into()
                    },
                    cache_control: None
                },
                ContentBlock::Image {
                    source: ImageSource::Url {
                        url: "https://x.test/a.png".into()
                    },
                    cache_control: None
                },
                ContentBlock::Other(opaque(&json!({"type": "input_image", "file_id": "file-1"}))),
                ContentBlock::Other(opaque(&json!({"type": "input_file", "file_id": "file-2"}))),
            ]),
            assistant(vec![text("seen"), text("no")]),
            user(vec![text("next")]),
        ]
    );
}

#[test]
fn calls_and_outputs_group_into_turns() {
    let req = parse(json!({"model": "m", "input": [
        {"role": "user", "content": "weather?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
        {"role": "assistant", "content": "checking"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "w",
         "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "function_call", "call_id": "call_b", "name": "w", "arguments": ""},
        {"type": "function_call_output", "call_id": "call_a", "output": "rain"},
        {"type": "function_call_output", "call_id": "call_b", "output": [
            {"type": "input_text", "text": "sun"},
            {"type": "input_image", "image_url": "https://x.test/s.png"},
            {"type": "input_file", "file_id": "f"}]},
        {"role": "user", "content": "thanks"}
    ]}));
    assert_eq!(
        req.messages,
        vec![
            user(vec![text("weather?")]),
            assistant(vec![
                ContentBlock::Thinking {
                    thinking: String::new(),
                    signature: Some("gAAA".into())
                },
                text("checking"),
                tool_use("call_a", "w", json!({"city": "Oslo"})),
                tool_use("call_b", "w", json!({})),
            ]),
            user(vec![
                tool_result("call_a", vec![ToolResultContent::Text("rain".into())]),
                tool_result(
                    "call_b",
                    vec![
                        ToolResultContent::Text("sun".into()),
                        ToolResultContent::Image(ImageSource::Url {
                            url: "https://x.test/s.png".into()
                        }),
                        ToolResultContent::Other(opaque(
                            &json!({"type": "input_file", "file_id": "f"})
                        )),
                    ]
                ),
                text("thanks"),
            ]),
        ]
    );
}

#[test]
fn reasoning_items_become_thinking_and_redacted_thinking() {
    let req = parse(json!({"model": "m", "input": [
        {"role": "user", "content": "q"},
        {"type": "reasoning", "id": "rs_1", "summary": [
            {"type": "summary_text", "text": "first"}, {"type": "summary_text", "text": "second"}],
         "encrypted_content": "sig"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "raw"}]},
        {"type": "reasoning", "summary": [],
         "encrypted_content": format!("{REDACTED_THINKING_PREFIX}opaque")}
    ]}));
    assert_eq!(
        req.messages[1],
        assistant(vec![
            ContentBlock::Thinking {
                thinking: "first\n\nsecond".into(),
                signature: Some("sig".into())
            },
            ContentBlock::Thinking {
                thinking: "raw".into(),
                signature: None
            },
            ContentBlock::RedactedThinking {
                data: "opaque".into()
            },
        ])
    );
}

#[test]
fn custom_tools_and_their_calls() {
    let body = json!({"model": "m",
    "tools": [
        {"type": "custom", "name": "apply_patch", "description": "Edit files.",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: \"x\""}},
        {"type": "custom", "name": "note"},
        {"type": "function", "name": "f", "description": "d", "strict": true,
         "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}},
        {"type": "function", "name": "g"}
    ],
    "input": [
        {"role": "user", "content": "fix it"},
        {"type": "custom_tool_call", "call_id": "call_p", "name": "apply_patch",
         "input": "*** Begin Patch"},
        {"type": "custom_tool_call_output", "call_id": "call_p", "output": "done"}
    ]});
    let parsed = parse_request(body.to_string().as_bytes()).unwrap();
    let req = &parsed.request;
    assert_eq!(
        req.tools[0],
        ToolDef {
            name: "apply_patch".into(),
            description: Some(
                "Edit files.\n\nThe `input` string must follow this lark grammar:\nstart: \"x\""
                    .into()
            ),
            input_schema: custom_input_schema(),
            cache_control: None,
        }
    );
    assert_eq!(req.tools[1].description, None);
    assert_eq!(
        req.tools[2].input_schema,
        json!({"type": "object", "properties": {"a": {"type": "string"}}})
    );
    assert_eq!(req.tools[3].input_schema, empty_object_schema());
    assert_eq!(
        req.messages[1],
        assistant(vec![tool_use(
            "call_p",
            "apply_patch",
            json!({"input": "*** Begin Patch"})
        )])
    );
    assert_eq!(
        req.messages[2],
        user(vec![tool_result(
            "call_p",
            vec![ToolResultContent::Text("done".into())]
        )])
    );
    let ctx = ResponseContext::from_request(req, &parsed.raw);
    assert!(ctx.is_custom_tool("apply_patch") && ctx.is_custom_tool("note"));
    assert!(!ctx.is_custom_tool("f"));
}

#[test]
fn hosted_tools_and_unknown_items_stay_opaque_and_other_wires_refuse_them() {
    let req = parse(json!({"model": "m",
    "tools": [{"type": "web_search"}, {"type": "local_shell"}],
    "previous_response_id": "resp_prev",
    "input": [
        {"type": "item_reference", "id": "msg_old"},
        {"type": "local_shell_call", "call_id": "call_s", "action": {"type": "exec"}},
        {"type": "function_call_output", "call_id": "call_s", "output": "ok"},
        {"role": "user", "content": "go"}
    ]}));
    assert_eq!(
        req.other_tools,
        vec![
            opaque(&json!({"type": "web_search"})),
            opaque(&json!({"type": "local_shell"}))
        ]
    );
    assert_eq!(
        req.messages[0].content[..2],
        [
            ContentBlock::Other(opaque(&json!({"type": "item_reference", "id": "msg_old"}))),
            ContentBlock::Other(opaque(
                &json!({"type": "local_shell_call", "call_id": "call_s", "action": {"type": "exec"}})
            )),
        ]
    );
    // Another wire's renderer names what it cannot send.
    let mut no_tools = req.clone();
    no_tools.other_tools.clear();
    let e = crate::anthropic::render_request(&no_tools, "claude").unwrap_err();
    assert_eq!(
        e.message(),
        "content block type 'item_reference' cannot be sent to an Anthropic upstream"
    );
    let e = crate::openai::render_request(&no_tools, "gpt").unwrap_err();
    assert_eq!(
        e.message(),
        "content block type 'item_reference' cannot be sent to an OpenAI-compatible upstream"
    );
    let tools = parse(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}));
    let e = crate::anthropic::render_request(&tools, "claude").unwrap_err();
    assert_eq!(
        e.message(),
        "tool type 'web_search' cannot be sent to an Anthropic upstream"
    );
    let e = crate::openai::render_request(&tools, "gpt").unwrap_err();
    assert_eq!(
        e.message(),
        "tool type 'web_search' cannot be sent to an OpenAI-compatible upstream"
    );
    // A Responses-only part inside a message is refused the same way.
    let file = parse(json!({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_file", "file_url": "https://x.test/a.pdf"}]}]}));
    let e = crate::anthropic::render_request(&file, "claude").unwrap_err();
    assert_eq!(
        e.message(),
        "content block type 'input_file' cannot be sent to an Anthropic upstream"
    );
}

#[test]
fn tool_choice_forms() {
    let choice =
        |c: Value| parse(json!({"model": "m", "input": "x", "tool_choice": c})).tool_choice;
    assert_eq!(choice(json!("auto")), Some(ToolChoice::Auto));
    assert_eq!(choice(json!("none")), Some(ToolChoice::None));
    assert_eq!(choice(json!("required")), Some(ToolChoice::Any));
    assert_eq!(
        choice(json!({"type": "function", "name": "f"})),
        Some(ToolChoice::Tool("f".into()))
    );
    assert_eq!(
        choice(json!({"type": "custom", "name": "apply_patch"})),
        Some(ToolChoice::Tool("apply_patch".into()))
    );
    assert_eq!(
        choice(json!({"type": "allowed_tools", "mode": "required", "tools": []})),
        Some(ToolChoice::Any)
    );
    assert_eq!(choice(json!({"type": "web_search"})), Some(ToolChoice::Any));
    assert_eq!(
        err_message(json!({"model": "m", "input": "x", "tool_choice": "always"})),
        "tool_choice 'always' is not supported (expected auto, none, required or a tool object)"
    );
    assert_eq!(
        err_message(json!({"model": "m", "input": "x", "tool_choice": {"type": "function"}})),
        "tool_choice.name is required and must be a string"
    );
}

#[test]
fn bad_input_is_a_400_naming_the_field_and_item() {
    let with = |input: Value| err_message(json!({"model": "m", "input": input}));
    assert_eq!(
        err_message(json!({"input": "x"})),
        "model is required and must be a string"
    );
    assert_eq!(
        with(json!(7)),
        "input must be a string or an array of input items"
    );
    assert_eq!(with(json!(["hi"])), "input[0] must be an object");
    assert_eq!(
        with(json!([{"content": "hi"}])),
        "input[0].role is required and must be a string"
    );
    assert_eq!(
        with(json!([{"type": "message", "role": "user"}])),
        "input[0].content is required and must be a string or an array of content parts"
    );
    assert_eq!(
        with(json!([{"role": "user", "content": 5}])),
        "input[0].content must be a string or an array of content parts"
    );
    assert_eq!(
        with(json!([{"role": "tool", "content": "x"}])),
        "input[0].role 'tool' is not supported (expected user, assistant, system or developer)"
    );
    assert_eq!(
        with(json!([{"role": "user", "content": [{"type": "input_text"}]}])),
        "input[0].content[0].text is required and must be a string"
    );
    assert_eq!(
        with(json!([{"role": "user", "content": [{"text": "x"}]}])),
        "input[0].content[0].type is required and must be a string"
    );
    assert_eq!(
        with(
            json!([{"role": "developer", "content": [{"type": "input_image", "image_url": "u"}]}])
        ),
        "input[0].content[0].type must be 'input_text' in a developer message"
    );
    assert_eq!(
        with(
            json!([{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png,AAA"}]}])
        ),
        "input[0].content[0].image_url must be a base64 data URL"
    );
    assert_eq!(
        with(json!([{"type": "function_call", "name": "f", "arguments": "{}"}])),
        "input[0].call_id is required and must be a string"
    );
    assert_eq!(
        with(json!([{"type": "function_call", "call_id": "c", "arguments": "{}"}])),
        "input[0].name is required and must be a string"
    );
    let msg = with(json!([{"role": "user", "content": "x"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{bad"}]));
    assert!(
        msg.starts_with("input[1].arguments is not valid JSON: "),
        "{msg}"
    );
    assert_eq!(
        with(json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}])),
        "input[0].arguments must encode a JSON object"
    );
    // An object is accepted too (leniently), so the error must not claim only text is.
    assert_eq!(
        with(json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": 5}])),
        "input[0].arguments must be a JSON string or an object"
    );
    assert_eq!(
        with(json!([{"type": "custom_tool_call", "call_id": "c", "name": "p"}])),
        "input[0].input is required and must be a string"
    );
    assert_eq!(
        with(json!([{"type": "function_call_output", "output": "x"}])),
        "input[0].call_id is required and must be a string"
    );
    assert_eq!(
        with(json!([{"role": "user", "content": "x"},
            {"type": "function_call_output", "call_id": "call_9", "output": "x"}])),
        "input[1] is a function_call_output for call_id 'call_9', but no earlier item in \
         input has that call_id (send the whole conversation, or previous_response_id)"
    );
    // A call later in the input does not count.
    assert!(
        with(
            json!([{"type": "custom_tool_call_output", "call_id": "c", "output": "x"},
            {"type": "custom_tool_call", "call_id": "c", "name": "p", "input": ""}])
        )
        .starts_with("input[0] is a custom_tool_call_output for call_id 'c'")
    );
    assert_eq!(
        with(
            json!([{"type": "function_call", "call_id": "c", "name": "f"},
            {"type": "function_call_output", "call_id": "c", "output": 3}])
        ),
        "input[1].output must be a string or an array of content parts"
    );
    assert_eq!(
        err_message(json!({"model": "m", "input": "x", "tools": [{"type": "function"}]})),
        "tools[0].name is required and must be a string"
    );
    assert_eq!(
        err_message(json!({"model": "m", "input": "x", "max_output_tokens": 0})),
        "max_output_tokens must be a positive integer"
    );
    assert_eq!(
        err_message(json!({"model": "m", "input": "x", "instructions": ["x"]})),
        "instructions must be a string"
    );
    assert_eq!(
        parse_request(b"[1]").unwrap_err().message(),
        "request body must be a JSON object"
    );
}

#[test]
fn outputs_may_answer_a_stored_response_when_continuing_one() {
    let req = parse(
        json!({"model": "m", "previous_response_id": "resp_1", "input": [
        {"type": "function_call_output", "call_id": "call_old", "output": "42"}]}),
    );
    assert_eq!(
        req.messages,
        vec![user(vec![tool_result(
            "call_old",
            vec![ToolResultContent::Text("42".into())]
        )])]
    );
}

#[test]
fn passthrough_request_replaces_only_the_model() {
    let parsed = parse_request(
        br#"{"model":"alias","input":[{"type":"item_reference","id":"x"}],"include":["reasoning.encrypted_content"],"prompt_cache_key":"k"}"#,
    )
    .unwrap();
    assert_eq!(
        passthrough_request(parsed.raw, "gpt-5").to_string(),
        r#"{"model":"gpt-5","input":[{"type":"item_reference","id":"x"}],"include":["reasoning.encrypted_content"],"prompt_cache_key":"k"}"#
    );
}

fn anthropic_shaped_request() -> ChatRequest {
    ChatRequest {
        model: "claude-x".into(),
        system: vec![system("one"), system(""), system("two")],
        messages: vec![
            user(vec![
                text("hi"),
                ContentBlock::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "QUJD".into(),
                    },
                    cache_control: None,
                },
            ]),
            assistant(vec![
                ContentBlock::Thinking {
                    thinking: "hmm".into(),
                    signature: Some("sig".into()),
                },
                ContentBlock::Thinking {
                    thinking: "unsigned".into(),
                    signature: None,
                },
                ContentBlock::RedactedThinking { data: "r".into() },
                text("calling"),
                tool_use("toolu_1", "f", json!({"a": 1})),
            ]),
            user(vec![
                tool_result("toolu_1", vec![ToolResultContent::Text("res".into())]),
                text("more"),
            ]),
        ],
        tools: vec![ToolDef {
            name: "f".into(),
            description: Some("d".into()),
            input_schema: json!({"type": "object"}),
            cache_control: None,
        }],
        tool_choice: Some(ToolChoice::Tool("f".into())),
        max_tokens: Some(100),
        temperature: Some(0.2),
        stream: true,
        parallel_tool_calls: Some(true),
        user: Some("u".into()),
        ..ChatRequest::default()
    }
}

#[test]
fn render_request_builds_the_responses_wire() {
    let out = render_request(&anthropic_shaped_request(), "gpt-5").unwrap();
    assert_eq!(
        out,
        json!({
            "model": "gpt-5",
            "instructions": "one\n\ntwo",
            "input": [
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "hi"},
                    {"type": "input_image", "image_url": "data:image/png;base64,QUJD", "detail": "auto"}]},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}],
                 "encrypted_content": "sig"},
                {"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": "calling", "annotations": []}]},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "res"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "more"}]}
            ],
            "tools": [{"type": "function", "name": "f", "description": "d",
                       "parameters": {"type": "object"}, "strict": false}],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": true,
            "max_output_tokens": 100,
            "temperature": 0.2,
            "stream": true,
            "store": false,
            "user": "u"
        })
    );
}

#[test]
fn render_request_refuses_what_the_wire_cannot_carry() {
    let mut req = anthropic_shaped_request();
    req.stop = vec!["END".into()];
    assert!(
        render_request(&req, "m")
            .unwrap_err()
            .message()
            .starts_with("stop sequences cannot be sent to an OpenAI Responses upstream")
    );
    let mut req = anthropic_shaped_request();
    req.messages[0].content.push(ContentBlock::Other(Opaque {
        shape: Shape::Anthropic,
        value: json!({"type": "document"}),
    }));
    assert_eq!(
        render_request(&req, "m").unwrap_err().message(),
        "content block type 'document' cannot be sent to an OpenAI Responses upstream"
    );
    let mut req = anthropic_shaped_request();
    req.other_tools.push(Opaque {
        shape: Shape::OpenAi,
        value: json!({"type": "custom", "custom": {"name": "x"}}),
    });
    assert_eq!(
        render_request(&req, "m").unwrap_err().message(),
        "tool type 'custom' cannot be sent to an OpenAI Responses upstream"
    );
    // Its own opaque items and parts go back where they were.
    let req = parse(
        json!({"model": "m", "tools": [{"type": "web_search"}], "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "a"},
                                     {"type": "input_file", "file_id": "f"}]},
        {"type": "item_reference", "id": "x"}]}),
    );
    let out = render_request(&req, "m").unwrap();
    assert_eq!(
        out["input"],
        json!([{"type": "message", "role": "user", "content": [
                   {"type": "input_text", "text": "a"}, {"type": "input_file", "file_id": "f"}]},
               {"type": "item_reference", "id": "x"}])
    );
    assert_eq!(out["tools"], json!([{"type": "web_search"}]));
}

fn mixed_response() -> ChatResponse {
    ChatResponse {
        id: Some("msg_up".into()),
        model: Some("claude-x".into()),
        content: vec![
            ContentBlock::Thinking {
                thinking: "t".into(),
                signature: Some("s".into()),
            },
            text("Hello"),
            text(" world"),
            tool_use("toolu_9", "f", json!({"q": "x"})),
            tool_use(
                "toolu_8",
                "apply_patch",
                json!({"input": "*** Begin Patch"}),
            ),
        ],
        stop_reason: StopReason::ToolUse,
        stop_sequence: None,
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 20,
            cache_write_tokens: 3,
        },
    }
}

fn ctx_with(raw: Value) -> ResponseContext {
    let map = raw.as_object().cloned().unwrap();
    let req = request_from_map(&map).unwrap();
    ResponseContext::from_request(&req, &map)
}

#[test]
fn render_response_is_a_full_response_object() {
    let ctx = ctx_with(
        json!({"model": "m", "input": "x", "instructions": "be nice",
        "tools": [{"type": "custom", "name": "apply_patch"}], "max_output_tokens": 500,
        "store": false, "metadata": {"k": "v"}}),
    );
    assert_eq!(
        render_response(&mixed_response(), "alias", "01ABC", 1_700_000_000, &ctx),
        json!({
            "id": "resp_01ABC", "object": "response", "created_at": 1_700_000_000,
            "status": "completed", "background": false, "error": null,
            "incomplete_details": null, "instructions": "be nice", "max_output_tokens": 500,
            "model": "alias",
            "output": [
                {"id": "rs_01ABC_0", "type": "reasoning",
                 "summary": [{"type": "summary_text", "text": "t"}], "encrypted_content": "s"},
                {"id": "msg_01ABC_1", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Hello", "annotations": []},
                             {"type": "output_text", "text": " world", "annotations": []}]},
                {"id": "fc_01ABC_2", "type": "function_call", "status": "completed",
                 "arguments": "{\"q\":\"x\"}", "call_id": "call_9", "name": "f"},
                {"id": "ctc_01ABC_3", "type": "custom_tool_call", "status": "completed",
                 "call_id": "call_8", "name": "apply_patch", "input": "*** Begin Patch"}
            ],
            "parallel_tool_calls": true, "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null}, "store": false,
            "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
            "tools": [{"type": "custom", "name": "apply_patch"}], "top_p": 1.0,
            "truncation": "disabled",
            "usage": {"input_tokens": 33, "input_tokens_details": {"cached_tokens": 20},
                      "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 38},
            "user": null, "metadata": {"k": "v"}
        })
    );
}

#[test]
fn render_response_marks_truncated_and_filtered_answers_incomplete() {
    let ctx = ResponseContext::default();
    let mut resp = mixed_response();
    resp.content = vec![text("cut")];
    resp.stop_reason = StopReason::MaxTokens;
    let out = render_response(&resp, "m", "1", 0, &ctx);
    assert_eq!(out["status"], "incomplete");
    assert_eq!(
        out["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    resp.stop_reason = StopReason::Refusal;
    let out = render_response(&resp, "m", "1", 0, &ctx);
    assert_eq!(
        out["incomplete_details"],
        json!({"reason": "content_filter"})
    );
    resp.content = vec![ContentBlock::RedactedThinking { data: "d".into() }];
    resp.stop_reason = StopReason::EndTurn;
    let out = render_response(&resp, "m", "1", 0, &ctx);
    assert_eq!(out["status"], "completed");
    assert_eq!(
        out["output"][0]["encrypted_content"],
        format!("{REDACTED_THINKING_PREFIX}d")
    );
}

#[test]
fn parse_response_reads_a_native_response() {
    let body = json!({
        "id": "resp_up", "object": "response", "status": "completed", "model": "gpt-5-2025",
        "error": null, "incomplete_details": null,
        "output": [
            {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}],
             "encrypted_content": "gAAAA"},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Hi", "annotations": []}]},
            {"id": "ws_1", "type": "web_search_call", "status": "completed"},
            {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f",
             "arguments": "{\"a\":1}", "status": "completed"},
            {"id": "ctc_1", "type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch",
             "input": "patch"}
        ],
        "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 60},
                  "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 4},
                  "total_tokens": 107}
    });
    let r = parse_response(body.to_string().as_bytes()).unwrap();
    assert_eq!(r.id.as_deref(), Some("resp_up"));
    assert_eq!(r.model.as_deref(), Some("gpt-5-2025"));
    assert_eq!(
        r.content,
        vec![
            ContentBlock::Thinking {
                thinking: "plan".into(),
                signature: Some("gAAAA".into())
            },
            text("Hi"),
            ContentBlock::Other(opaque(
                &json!({"id": "ws_1", "type": "web_search_call", "status": "completed"})
            )),
            tool_use("call_1", "f", json!({"a": 1})),
            tool_use("call_2", "apply_patch", json!({"input": "patch"})),
        ]
    );
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 40,
            output_tokens: 7,
            cache_read_tokens: 60,
            cache_write_tokens: 0
        }
    );
    let cut = parse_response(
        br#"{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"output":[]}"#,
    )
    .unwrap();
    assert_eq!(cut.stop_reason, StopReason::MaxTokens);
    let failed = parse_response(
        br#"{"status":"failed","error":{"code":"server_error","message":"the prompt ..."},"output":[]}"#,
    )
    .unwrap_err();
    assert_eq!(failed, "upstream returned an error: server_error");
    let envelope = parse_response(
        br#"{"error":{"type":"invalid_request_error","code":"context_length_exceeded","message":"secret"}}"#,
    )
    .unwrap_err();
    assert_eq!(
        envelope,
        "upstream returned an error: invalid_request_error/context_length_exceeded"
    );
}

#[test]
fn passthrough_response_replaces_only_the_model() {
    let body = br#"{"id":"resp_x","object":"response","model":"gpt-5-2025","output":[{"type":"message","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":3,"output_tokens":1},"x_vendor":1}"#;
    let (v, parsed) = passthrough_response(body, "alias").unwrap();
    assert_eq!(
        v.to_string(),
        String::from_utf8_lossy(body).replace("gpt-5-2025", "alias")
    );
    assert_eq!(parsed.content, vec![text("hi")]);
    assert_eq!(parsed.usage.input_tokens, 3);
}

#[test]
fn input_tokens_body_is_the_api_object() {
    assert_eq!(
        input_tokens_body(42),
        json!({"object": "response.input_tokens", "input_tokens": 42})
    );
}

// --- streams ---------------------------------------------------------------------

fn start(input: u64) -> StreamEvent {
    StreamEvent::Start {
        id: None,
        model: None,
        usage: Usage {
            input_tokens: input,
            ..Usage::default()
        },
    }
}

fn block(index: usize, block: BlockStart, deltas: Vec<BlockDelta>) -> Vec<StreamEvent> {
    let mut ev = vec![StreamEvent::BlockStart { index, block }];
    ev.extend(
        deltas
            .into_iter()
            .map(|delta| StreamEvent::Delta { index, delta }),
    );
    ev.push(StreamEvent::BlockStop { index });
    ev
}

fn texts(index: usize, parts: &[&str]) -> Vec<StreamEvent> {
    block(
        index,
        BlockStart::Text,
        parts
            .iter()
            .map(|p| BlockDelta::Text((*p).into()))
            .collect(),
    )
}

fn call(index: usize, id: &str, name: &str, json: &[&str]) -> Vec<StreamEvent> {
    block(
        index,
        BlockStart::ToolUse {
            id: id.into(),
            name: name.into(),
        },
        json.iter()
            .map(|p| BlockDelta::ToolInputJson((*p).into()))
            .collect(),
    )
}

fn finish(stop_reason: StopReason, usage: Usage) -> Vec<StreamEvent> {
    vec![
        StreamEvent::Usage(usage),
        StreamEvent::Finish {
            stop_reason,
            stop_sequence: None,
        },
    ]
}

fn usage(i: u64, o: u64, r: u64) -> Usage {
    Usage {
        input_tokens: i,
        output_tokens: o,
        cache_read_tokens: r,
        cache_write_tokens: 0,
    }
}

fn render(events: &[StreamEvent], ctx: ResponseContext) -> Vec<String> {
    let mut r = StreamRenderer::new("01X", "alias", 42, ctx);
    let mut out: Vec<String> = events.iter().flat_map(|e| r.event(e)).collect();
    out.extend(r.end());
    out
}

/// The data of every frame, checking the frame invariants on the way: the `event:` name
/// is the data's `type` and `sequence_number`s count up from 0.
fn datas(frames: &[String]) -> Vec<Value> {
    let mut sse = SseParser::new();
    let parsed: Vec<SseFrame> = frames.iter().flat_map(|f| sse.push(f.as_bytes())).collect();
    assert_eq!(parsed.len(), frames.len(), "one SSE frame per string");
    parsed
        .iter()
        .enumerate()
        .map(|(n, f)| {
            let v: Value = serde_json::from_str(&f.data).unwrap();
            assert_eq!(f.event.as_deref(), v["type"].as_str(), "{v}");
            assert_eq!(v["sequence_number"], json!(n), "{v}");
            v
        })
        .collect()
}

fn types(frames: &[String]) -> Vec<String> {
    datas(frames)
        .iter()
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect()
}

const HEAD: [&str; 2] = ["response.created", "response.in_progress"];
const TEXT_PART: [&str; 5] = [
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
];

fn seq(parts: &[&[&str]]) -> Vec<String> {
    parts.concat().into_iter().map(str::to_owned).collect()
}

#[test]
fn stream_of_text_has_the_api_event_sequence() {
    let events = [
        vec![start(9)],
        texts(0, &["Hel", "lo"]),
        finish(StopReason::EndTurn, usage(9, 2, 1)),
    ]
    .concat();
    let frames = render(&events, ResponseContext::default());
    assert_eq!(
        types(&frames),
        seq(&[
            &HEAD,
            &["response.output_item.added"],
            &TEXT_PART,
            &["response.output_item.done", "response.completed"],
        ])
    );
    let d = datas(&frames);
    assert_eq!(d[0]["response"]["status"], "in_progress");
    assert_eq!(d[0]["response"]["output"], json!([]));
    assert_eq!(d[0]["response"]["id"], "resp_01X");
    assert_eq!(d[0]["response"]["model"], "alias");
    assert_eq!(
        d[2],
        json!({"type": "response.output_item.added", "output_index": 0,
               "item": {"id": "msg_01X_0", "type": "message", "status": "in_progress",
                        "role": "assistant", "content": []},
               "sequence_number": 2})
    );
    assert_eq!(
        d[4],
        json!({"type": "response.output_text.delta", "item_id": "msg_01X_0",
               "output_index": 0, "content_index": 0, "delta": "Hel", "logprobs": [],
               "sequence_number": 4})
    );
    assert_eq!(d[6]["text"], "Hello");
    assert_eq!(d[7]["part"], output_text_part("Hello"));
    assert_eq!(d[8]["item"]["status"], "completed");
    let done = &d[9]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"], json!([d[8]["item"]]));
    assert_eq!(done["usage"]["input_tokens"], 10);
    assert_eq!(done["usage"]["input_tokens_details"]["cached_tokens"], 1);
    assert_eq!(done["usage"]["total_tokens"], 12);
}

#[test]
fn stream_of_a_function_call() {
    let events = [
        vec![start(5)],
        call(0, "toolu_1", "f", &["{\"a\"", ":1}"]),
        finish(StopReason::ToolUse, usage(5, 3, 0)),
    ]
    .concat();
    let frames = render(&events, ResponseContext::default());
    assert_eq!(
        types(&frames),
        seq(&[
            &HEAD,
            &[
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ],
        ])
    );
    let d = datas(&frames);
    assert_eq!(
        d[2]["item"],
        json!({"id": "fc_01X_0", "type": "function_call", "status": "in_progress",
               "arguments": "", "call_id": "call_1", "name": "f"})
    );
    assert_eq!(d[5]["arguments"], "{\"a\":1}");
    assert_eq!(d[5]["name"], "f");
    assert_eq!(d[6]["item"]["arguments"], "{\"a\":1}");
    assert_eq!(d[6]["item"]["status"], "completed");
}

#[test]
fn stream_of_text_and_two_calls() {
    let events = [
        vec![start(5)],
        texts(0, &["a", "b"]),
        call(1, "call_x", "f", &["{}"]),
        call(2, "call_y", "g", &[]),
        finish(StopReason::ToolUse, usage(5, 3, 0)),
    ]
    .concat();
    let frames = render(&events, ResponseContext::default());
    let call_events = [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ];
    assert_eq!(
        types(&frames),
        seq(&[
            &HEAD,
            &["response.output_item.added"],
            &TEXT_PART,
            &["response.output_item.done"],
            &call_events,
            &call_events,
            &["response.completed"],
        ])
    );
    let d = datas(&frames);
    let last = &d[d.len() - 1]["response"];
    let ids: Vec<&str> = last["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["msg_01X_0", "fc_01X_1", "fc_01X_2"]);
    // A call whose input never streamed is `{}`.
    assert_eq!(last["output"][2]["arguments"], "{}");
    assert_eq!(d[d.len() - 4]["delta"], "{}");
}

#[test]
fn stream_of_reasoning_then_text() {
    let events = [
        vec![start(5)],
        block(
            0,
            BlockStart::Thinking,
            vec![
                BlockDelta::Thinking("let me ".into()),
                BlockDelta::Thinking("think".into()),
                BlockDelta::Signature("sig".into()),
            ],
        ),
        texts(1, &["x", "y"]),
        finish(StopReason::EndTurn, usage(5, 3, 0)),
    ]
    .concat();
    let frames = render(&events, ResponseContext::default());
    assert_eq!(
        types(&frames),
        seq(&[
            &HEAD,
            &[
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
            ],
            &TEXT_PART,
            &["response.output_item.done", "response.completed"],
        ])
    );
    let d = datas(&frames);
    assert_eq!(
        d[8]["item"],
        json!({"id": "rs_01X_0", "type": "reasoning",
               "summary": [{"type": "summary_text", "text": "let me think"}],
               "encrypted_content": "sig"})
    );
    assert_eq!(d[9]["item"]["id"], "msg_01X_1");
}

#[test]
fn stream_cut_by_max_tokens_ends_incomplete() {
    let events = [
        vec![start(5)],
        texts(0, &["a", "b"]),
        finish(StopReason::MaxTokens, usage(5, 3, 0)),
    ]
    .concat();
    let frames = render(&events, ResponseContext::default());
    let t = types(&frames);
    assert_eq!(t.last().map(String::as_str), Some("response.incomplete"));
    assert!(!t.iter().any(|t| t == "response.completed"));
    let d = datas(&frames);
    let last = &d[d.len() - 1]["response"];
    assert_eq!(last["status"], "incomplete");
    assert_eq!(
        last["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
}

#[test]
fn stream_failure_ends_with_response_failed_and_an_error_event() {
    let mut r = StreamRenderer::new("01X", "alias", 42, ResponseContext::default());
    let mut frames: Vec<String> = [vec![start(5)], texts(0, &["a", "b"])]
        .concat()
        .iter()
        .flat_map(|e| r.event(e))
        .collect();
    // A second text block is open when the upstream fails.
    frames.extend(r.event(&StreamEvent::BlockStart {
        index: 1,
        block: BlockStart::Text,
    }));
    frames.extend(r.error(&GatewayError::Upstream {
        class: ErrorClass::ContextOverflow,
        provider: "anthropic".into(),
        message: "anthropic failed mid-stream: invalid_request_error".into(),
        retry_after_secs: None,
    }));
    assert!(r.end().is_empty(), "nothing after a failure");
    assert!(r.error(&GatewayError::Internal).is_empty());
    assert_eq!(
        types(&frames),
        seq(&[
            &HEAD,
            &["response.output_item.added"],
            &TEXT_PART,
            &["response.content_part.added", "response.failed", "error"],
        ])
    );
    let d = datas(&frames);
    let failed = &d[d.len() - 2]["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["id"], "resp_01X");
    assert_eq!(
        failed["error"],
        json!({"code": "context_length_exceeded",
               "message": "anthropic failed mid-stream: invalid_request_error"})
    );
    assert_eq!(failed["output"], json!([]));
    let error = &d[d.len() - 1];
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["code"], "context_length_exceeded");
    // Before anything was sent, the stream still opens properly.
    let mut r = StreamRenderer::new("2", "m", 0, ResponseContext::default());
    let frames = r.error(&GatewayError::Internal);
    assert_eq!(types(&frames), seq(&[&HEAD, &["response.failed", "error"]]));
    assert_eq!(
        datas(&frames)[2]["response"]["error"]["code"],
        "internal_error"
    );
}

#[test]
fn custom_tool_calls_stream_as_custom_items() {
    let ctx = ctx_with(json!({"model": "m", "input": "x",
        "tools": [{"type": "custom", "name": "apply_patch"}]}));
    let events = [
        vec![start(1)],
        call(
            0,
            "call_p",
            "apply_patch",
            &["{\"input\":", "\"*** Begin\\n\"}"],
        ),
        finish(StopReason::ToolUse, usage(1, 1, 0)),
    ]
    .concat();
    let frames = render(&events, ctx);
    assert_eq!(
        types(&frames),
        seq(&[
            &HEAD,
            &[
                "response.output_item.added",
                "response.custom_tool_call_input.delta",
                "response.custom_tool_call_input.done",
                "response.output_item.done",
                "response.completed",
            ],
        ])
    );
    let d = datas(&frames);
    assert_eq!(d[3]["delta"], "*** Begin\n");
    assert_eq!(
        d[5]["item"],
        json!({"id": "ctc_01X_0", "type": "custom_tool_call", "status": "completed",
               "call_id": "call_p", "name": "apply_patch", "input": "*** Begin\n"})
    );
    // And back to canonical, whole.
    let mut p = StreamParser::new();
    let mut sse = SseParser::new();
    let mut acc = StreamAccumulator::new();
    for f in frames.iter().flat_map(|f| sse.push(f.as_bytes())) {
        for e in p.push(&f).unwrap() {
            acc.push(&e);
        }
    }
    assert_eq!(
        acc.into_response().content,
        vec![tool_use(
            "call_p",
            "apply_patch",
            json!({"input": "*** Begin\n"})
        )]
    );
}

fn upstream(events: &[Value]) -> Vec<SseFrame> {
    events
        .iter()
        .map(|e| SseFrame {
            event: e["type"].as_str().map(str::to_owned),
            data: e.to_string(),
        })
        .collect()
}

fn run_parser(frames: &[SseFrame]) -> (Vec<StreamEvent>, StreamParser) {
    let mut p = StreamParser::new();
    let mut out = Vec::new();
    for f in frames {
        out.extend(p.push(f).unwrap());
    }
    out.extend(p.finish());
    (out, p)
}

/// A stream as the real API sends it (abridged objects).
fn native_stream() -> Vec<Value> {
    let resp = |status: &str| {
        json!({"id": "resp_up", "object": "response",
        "status": status, "model": "gpt-5-2025", "output": [], "usage": null})
    };
    vec![
        json!({"type": "response.created", "sequence_number": 0, "response": resp("in_progress")}),
        json!({"type": "response.in_progress", "sequence_number": 1, "response": resp("in_progress")}),
        json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
               "item": {"id": "rs_1", "type": "reasoning", "summary": []}}),
        json!({"type": "response.reasoning_summary_part.added", "sequence_number": 3,
               "item_id": "rs_1", "output_index": 0, "summary_index": 0,
               "part": {"type": "summary_text", "text": ""}}),
        json!({"type": "response.reasoning_summary_text.delta", "sequence_number": 4,
               "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": "a"}),
        json!({"type": "response.reasoning_summary_part.added", "sequence_number": 5,
               "item_id": "rs_1", "output_index": 0, "summary_index": 1,
               "part": {"type": "summary_text", "text": ""}}),
        json!({"type": "response.reasoning_summary_text.delta", "sequence_number": 6,
               "item_id": "rs_1", "output_index": 0, "summary_index": 1, "delta": "b"}),
        json!({"type": "response.output_item.done", "sequence_number": 7, "output_index": 0,
               "item": {"id": "rs_1", "type": "reasoning", "encrypted_content": "gAAAA",
                        "summary": [{"type": "summary_text", "text": "a"},
                                    {"type": "summary_text", "text": "b"}]}}),
        json!({"type": "response.output_item.added", "sequence_number": 8, "output_index": 1,
               "item": {"id": "msg_1", "type": "message", "status": "in_progress",
                        "role": "assistant", "content": []}}),
        json!({"type": "response.content_part.added", "sequence_number": 9, "item_id": "msg_1",
               "output_index": 1, "content_index": 0,
               "part": {"type": "output_text", "text": "", "annotations": []}}),
        json!({"type": "response.output_text.delta", "sequence_number": 10, "item_id": "msg_1",
               "output_index": 1, "content_index": 0, "delta": "Hi"}),
        json!({"type": "response.output_text.done", "sequence_number": 11, "item_id": "msg_1",
               "output_index": 1, "content_index": 0, "text": "Hi"}),
        json!({"type": "response.content_part.done", "sequence_number": 12, "item_id": "msg_1",
               "output_index": 1, "content_index": 0,
               "part": {"type": "output_text", "text": "Hi", "annotations": []}}),
        json!({"type": "response.output_item.done", "sequence_number": 13, "output_index": 1,
               "item": {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}}),
        json!({"type": "response.output_item.added", "sequence_number": 14, "output_index": 2,
               "item": {"id": "ws_1", "type": "web_search_call", "status": "in_progress"}}),
        json!({"type": "response.output_item.done", "sequence_number": 15, "output_index": 2,
               "item": {"id": "ws_1", "type": "web_search_call", "status": "completed"}}),
        json!({"type": "response.output_item.added", "sequence_number": 16, "output_index": 3,
               "item": {"id": "fc_1", "type": "function_call", "status": "in_progress",
                        "arguments": "", "call_id": "call_1", "name": "f"}}),
        json!({"type": "response.function_call_arguments.delta", "sequence_number": 17,
               "item_id": "fc_1", "output_index": 3, "delta": "{\"a\""}),
        json!({"type": "response.function_call_arguments.delta", "sequence_number": 18,
               "item_id": "fc_1", "output_index": 3, "delta": ":1}"}),
        json!({"type": "response.function_call_arguments.done", "sequence_number": 19,
               "item_id": "fc_1", "output_index": 3, "arguments": "{\"a\":1}"}),
        json!({"type": "response.output_item.done", "sequence_number": 20, "output_index": 3,
               "item": {"id": "fc_1", "type": "function_call", "status": "completed",
                        "arguments": "{\"a\":1}", "call_id": "call_1", "name": "f"}}),
        json!({"type": "response.completed", "sequence_number": 21, "response": {
            "id": "resp_up", "status": "completed", "model": "gpt-5-2025", "output": [],
            "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 30},
                      "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 5},
                      "total_tokens": 109}}}),
    ]
}

#[test]
fn stream_parser_reads_a_native_stream() {
    let (events, p) = run_parser(&upstream(&native_stream()));
    assert!(p.ended_cleanly());
    use BlockDelta as D;
    use StreamEvent as E;
    let delta = |index, delta| E::Delta { index, delta };
    assert_eq!(
        events,
        vec![
            E::Start {
                id: Some("resp_up".into()),
                model: Some("gpt-5-2025".into()),
                usage: Usage::default()
            },
            E::BlockStart {
                index: 0,
                block: BlockStart::Thinking
            },
            delta(0, D::Thinking("a".into())),
            delta(0, D::Thinking("\n\n".into())),
            delta(0, D::Thinking("b".into())),
            delta(0, D::Signature("gAAAA".into())),
            E::BlockStop { index: 0 },
            E::BlockStart {
                index: 1,
                block: BlockStart::Text
            },
            delta(1, D::Text("Hi".into())),
            E::BlockStop { index: 1 },
            E::BlockStart {
                index: 2,
                block: BlockStart::ToolUse {
                    id: "call_1".into(),
                    name: "f".into()
                }
            },
            delta(2, D::ToolInputJson("{\"a\"".into())),
            delta(2, D::ToolInputJson(":1}".into())),
            E::BlockStop { index: 2 },
            E::Usage(usage(70, 9, 30)),
            E::Finish {
                stop_reason: StopReason::ToolUse,
                stop_sequence: None
            },
        ]
    );
}

#[test]
fn stream_parser_takes_items_delivered_whole() {
    let frames = upstream(&[
        json!({"type": "response.created", "response": {"id": "r"}}),
        json!({"type": "response.output_item.done", "output_index": 0,
               "item": {"type": "message", "content": [{"type": "output_text", "text": "whole"}]}}),
        json!({"type": "response.output_item.added", "output_index": 1,
               "item": {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""}}),
        json!({"type": "response.function_call_arguments.done", "output_index": 1,
               "arguments": "{\"b\":2}"}),
        json!({"type": "response.output_item.done", "output_index": 1,
               "item": {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"b\":2}"}}),
        json!({"type": "response.output_item.added", "output_index": 2,
               "item": {"type": "custom_tool_call", "call_id": "p", "name": "apply_patch", "input": ""}}),
        json!({"type": "response.custom_tool_call_input.delta", "output_index": 2, "delta": "say \"x\""}),
        json!({"type": "response.output_item.done", "output_index": 2,
               "item": {"type": "custom_tool_call", "call_id": "p", "name": "apply_patch",
                        "input": "say \"x\""}}),
        json!({"type": "response.incomplete", "response": {"status": "incomplete",
               "incomplete_details": {"reason": "max_output_tokens"},
               "usage": {"input_tokens": 3, "output_tokens": 4}}}),
    ]);
    let (events, p) = run_parser(&frames);
    assert!(p.ended_cleanly());
    let mut acc = StreamAccumulator::new();
    for e in &events {
        acc.push(e);
    }
    let r = acc.into_response();
    assert_eq!(
        r.content,
        vec![
            text("whole"),
            tool_use("c", "f", json!({"b": 2})),
            tool_use("p", "apply_patch", json!({"input": "say \"x\""})),
        ]
    );
    assert_eq!(r.stop_reason, StopReason::MaxTokens);
    assert_eq!(r.usage, usage(3, 4, 0));
}

#[test]
fn stream_parser_reports_failures_by_code_only() {
    let mut p = StreamParser::new();
    let ok = p
        .push(&upstream(&[json!({"type": "response.created", "response": {"id": "r"}})])[0])
        .unwrap();
    assert_eq!(ok.len(), 1);
    let failed = json!({"type": "response.failed", "response": {"status": "failed",
        "error": {"code": "context_length_exceeded", "message": "your prompt says ..."}}});
    let err = p.push(&upstream(&[failed])[0]).unwrap_err();
    assert_eq!(err, "upstream stream error: context_length_exceeded");
    assert_eq!(p.error_class(), Some(ErrorClass::ContextOverflow));
    assert!(!p.ended_cleanly());
    let mut p = StreamParser::new();
    let error = json!({"type": "error", "code": "rate_limit_exceeded", "message": "slow down ...",
                       "param": null, "sequence_number": 3});
    assert_eq!(
        p.push(&upstream(&[error])[0]).unwrap_err(),
        "upstream stream error: rate_limit_exceeded"
    );
    assert_eq!(p.error_class(), Some(ErrorClass::RateLimit));
    assert!(
        p.push(&SseFrame {
            event: None,
            data: "{nope".into()
        })
        .is_err()
    );
    // A stream that just stops still finishes the canonical stream, uncleanly.
    let mut p = StreamParser::new();
    let mut events = Vec::new();
    for f in upstream(&native_stream()[..11]) {
        events.extend(p.push(&f).unwrap());
    }
    let tail = p.finish();
    assert!(!p.ended_cleanly());
    assert_eq!(
        tail,
        vec![
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::Finish {
                stop_reason: StopReason::EndTurn,
                stop_sequence: None
            }
        ]
    );
    assert!(p.finish().is_empty());
}

#[test]
fn passthrough_stream_rewrites_the_model_and_keeps_other_bytes() {
    let frames = upstream(&native_stream());
    let mut p = PassthroughStream::new("alias");
    let out: Vec<String> = frames.iter().filter_map(|f| p.rewrite(f)).collect();
    assert_eq!(out.len(), frames.len());
    assert_eq!(
        out[0],
        format_frame(
            Some("response.created"),
            &frames[0].data.replace("gpt-5-2025", "alias")
        )
    );
    assert_eq!(
        out[4],
        format_frame(
            Some("response.reasoning_summary_text.delta"),
            &frames[4].data
        )
    );
    assert!(out.iter().all(|f| !f.contains("gpt-5-2025")));
    // Upstream failures are not forwarded; the gateway's own frames continue the stream.
    let mut p = PassthroughStream::new("alias");
    for f in &frames[..5] {
        p.rewrite(f);
    }
    let failed = upstream(&[json!({"type": "response.failed", "sequence_number": 5,
        "response": {"error": {"code": "server_error", "message": "prompt text"}}})]);
    assert_eq!(p.rewrite(&failed[0]), None);
    let out = p.error(&GatewayError::Upstream {
        class: ErrorClass::ServerError,
        provider: "openai".into(),
        message: "openai failed mid-stream: server_error".into(),
        retry_after_secs: None,
    });
    let mut sse = SseParser::new();
    let d: Vec<Value> = out
        .iter()
        .flat_map(|f| sse.push(f.as_bytes()))
        .map(|f| serde_json::from_str(&f.data).unwrap())
        .collect();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["type"], "response.failed");
    assert_eq!(d[0]["sequence_number"], 5);
    assert_eq!(d[0]["response"]["id"], "resp_up");
    assert_eq!(d[0]["response"]["model"], "alias");
    assert_eq!(d[0]["response"]["error"]["code"], "upstream_error");
    assert_eq!(d[1]["type"], "error");
    assert_eq!(d[1]["sequence_number"], 6);
    assert!(p.error(&GatewayError::Internal).is_empty());
    assert_eq!(p.rewrite(&frames[6]), None, "nothing after the failure");
}

#[test]
fn rendered_stream_parses_back_with_everything() {
    let events = [
        vec![start(9)],
        block(
            0,
            BlockStart::Thinking,
            vec![
                BlockDelta::Thinking("t".into()),
                BlockDelta::Signature("s".into()),
            ],
        ),
        block(1, BlockStart::RedactedThinking { data: "r".into() }, vec![]),
        texts(2, &["a"]),
        texts(3, &["b"]),
        call(4, "toolu_7", "f", &["{\"x\":", "[1]}"]),
        finish(StopReason::ToolUse, usage(9, 3, 2)),
    ]
    .concat();
    let frames = render(&events, ResponseContext::default());
    let mut p = StreamParser::new();
    let mut sse = SseParser::new();
    let mut got = StreamAccumulator::new();
    for f in frames.iter().flat_map(|f| sse.push(f.as_bytes())) {
        for e in p.push(&f).unwrap() {
            got.push(&e);
        }
    }
    assert!(p.ended_cleanly());
    let mut want = StreamAccumulator::new();
    for e in &events {
        want.push(e);
    }
    let (got, mut want) = (got.into_response(), want.into_response());
    if let Some(ContentBlock::ToolUse { id, .. }) = want.content.last_mut() {
        *id = "call_7".into();
    }
    assert_eq!(got.content, want.content);
    assert_eq!(got.stop_reason, StopReason::ToolUse);
    assert_eq!(got.usage, usage(9, 3, 2));
}

#[test]
fn response_context_echoes_the_request_with_api_defaults() {
    let ctx = ResponseContext::default();
    let out = render_response(
        &ChatResponse {
            id: None,
            model: None,
            content: vec![],
            stop_reason: StopReason::EndTurn,
            stop_sequence: None,
            usage: Usage::default(),
        },
        "m",
        "1",
        0,
        &ctx,
    );
    for (key, want) in [
        ("instructions", Value::Null),
        ("max_output_tokens", Value::Null),
        ("parallel_tool_calls", json!(true)),
        ("store", json!(true)),
        ("temperature", json!(1.0)),
        ("top_p", json!(1.0)),
        ("tool_choice", json!("auto")),
        ("tools", json!([])),
        ("truncation", json!("disabled")),
        ("metadata", json!({})),
        ("output", json!([])),
    ] {
        assert_eq!(out[key], want, "{key}");
    }
    let ctx = ctx_with(json!({"model": "m", "input": "x", "temperature": 0.3,
        "tool_choice": "required", "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"format": {"type": "json_object"}}, "truncation": "auto", "user": "u",
        "previous_response_id": "resp_0", "parallel_tool_calls": false}));
    let out = render_response(
        &ChatResponse {
            id: None,
            model: None,
            content: vec![],
            stop_reason: StopReason::EndTurn,
            stop_sequence: None,
            usage: Usage::default(),
        },
        "m",
        "1",
        0,
        &ctx,
    );
    assert_eq!(out["temperature"], json!(0.3));
    assert_eq!(out["tool_choice"], "required");
    assert_eq!(
        out["reasoning"],
        json!({"effort": "low", "summary": "auto"})
    );
    assert_eq!(out["text"], json!({"format": {"type": "json_object"}}));
    assert_eq!(out["truncation"], "auto");
    assert_eq!(out["user"], "u");
    assert_eq!(out["previous_response_id"], "resp_0");
    assert_eq!(out["parallel_tool_calls"], false);
}

#[test]
fn translation_flattens_namespaces_drops_hosted_tools_and_refuses_stored_state() {
    let body = json!({"model": "m", "input": "hi", "tools": [
        {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
        {"type": "namespace", "name": "multi_agent_v1", "tools": [
            {"type": "function", "name": "spawn_agent", "description": "d", "parameters": {"type": "object"}}
        ]},
        {"type": "web_search", "external_web_access": false}
    ]});
    let mut p = parse_request(body.to_string().as_bytes()).unwrap();
    let dropped = prepare_for_translation(&mut p.request, &p.raw, "anthropic").unwrap();
    assert_eq!(dropped, 1);
    let names: Vec<&str> = p.request.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["exec_command", "spawn_agent"]);
    assert!(p.request.other_tools.is_empty());

    let stored = json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"});
    let mut p = parse_request(stored.to_string().as_bytes()).unwrap();
    let err = prepare_for_translation(&mut p.request, &p.raw, "anthropic").unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(
        err.message().contains("send the full conversation"),
        "{}",
        err.message()
    );
}
