//! Property tests of the translation layer as a whole:
//! (a) a canonical request rendered to a wire and parsed back is the same request, for the
//!     subset each wire can express (after the normalisations each renderer documents);
//! (b) a canonical event stream rendered for a client, cut into arbitrary network chunks,
//!     re-parsed with `SseParser` + the same wire's `StreamParser`, carries the same text,
//!     tool calls, stop reason and usage;
//! (c) the client-facing SSE bytes parse identically however they are chunked (inside (b)).
//!
//! Each wire (OpenAI Chat Completions, Anthropic Messages, OpenAI Responses) gets all three.

use metis_domain::anthropic;
use metis_domain::canonical::{
    BlockDelta, BlockStart, ChatRequest, ChatResponse, ContentBlock, ImageSource, Message, Role,
    StopReason, StreamAccumulator, StreamEvent, SystemBlock, ToolChoice, ToolDef,
    ToolResultContent, Usage,
};
use metis_domain::openai;
use metis_domain::responses::{self, ResponseContext};
use metis_domain::sse::SseParser;
use metis_domain::tool_ids;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,!?'\"\\\\/{}\n\té✓😀]{1,16}"
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(|n| json!(n)),
        text().prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ]
}

fn object() -> impl Strategy<Value = Value> {
    btree_map("[a-z]{1,5}", leaf(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>()))
}

fn image() -> impl Strategy<Value = ImageSource> {
    prop_oneof![
        ("image/(png|jpeg|gif|webp)", "[A-Za-z0-9+/]{4,12}={0,2}")
            .prop_map(|(media_type, data)| ImageSource::Base64 { media_type, data }),
        "https://[a-z]{1,8}\\.com/[a-z]{1,8}\\.png".prop_map(|url| ImageSource::Url { url }),
    ]
}

fn cache_control() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(Just(json!({"type": "ephemeral"})))
}

fn tools() -> impl Strategy<Value = Vec<ToolDef>> {
    vec(
        (
            "[a-z_]{1,8}",
            prop::option::of(text()),
            btree_map("[a-z]{1,5}", Just(json!({"type": "string"})), 0..3),
            cache_control(),
        )
            .prop_map(|(name, description, props, cache_control)| ToolDef {
                name,
                description,
                input_schema: json!({"type": "object", "properties": props}),
                cache_control,
            }),
        0..3,
    )
}

fn tool_choice() -> impl Strategy<Value = Option<ToolChoice>> {
    prop::option::of(prop_oneof![
        Just(ToolChoice::Auto),
        Just(ToolChoice::Any),
        Just(ToolChoice::None),
        "[a-z_]{1,8}".prop_map(ToolChoice::Tool),
    ])
}

fn fraction(max: u32) -> impl Strategy<Value = Option<f64>> {
    prop::option::of((0..=max).prop_map(|n| f64::from(n) / 100.0))
}

fn text_block(t: String, cache_control: Option<Value>) -> ContentBlock {
    ContentBlock::Text {
        text: t,
        cache_control,
    }
}

/// Conversation turns alternating user/assistant, starting with the user.
fn alternate(pairs: Vec<(Message, Message)>) -> Vec<Message> {
    pairs.into_iter().flat_map(|(u, a)| [u, a]).collect()
}

/// Requests using only what the OpenAI wire can express: no cache control, no thinking,
/// tool results with one text, at most one assistant text placed before its tool calls.
fn openai_request() -> impl Strategy<Value = ChatRequest> {
    let tool_result =
        ("call_[a-zA-Z0-9]{1,8}", text()).prop_map(|(id, t)| ContentBlock::ToolResult {
            tool_use_id: id,
            content: vec![ToolResultContent::Text(t)],
            is_error: false,
            cache_control: None,
        });
    let user_block = prop_oneof![
        text().prop_map(|t| text_block(t, None)),
        image().prop_map(|source| ContentBlock::Image {
            source,
            cache_control: None
        }),
    ];
    let user = (vec(tool_result, 0..3), vec(user_block, 0..3))
        .prop_filter("a user turn has content", |(r, o)| {
            !r.is_empty() || !o.is_empty()
        })
        .prop_map(|(mut results, mut rest)| {
            results.append(&mut rest);
            Message {
                role: Role::User,
                content: results,
            }
        });
    let tool_use =
        ("call_[a-zA-Z0-9]{1,8}", "[a-z_]{1,8}", object()).prop_map(|(id, name, input)| {
            ContentBlock::ToolUse {
                id,
                name,
                input,
                cache_control: None,
            }
        });
    let assistant = (prop::option::of(text()), vec(tool_use, 0..3)).prop_map(|(t, calls)| {
        let mut content: Vec<ContentBlock> = t.map(|t| text_block(t, None)).into_iter().collect();
        content.extend(calls);
        Message {
            role: Role::Assistant,
            content,
        }
    });
    (
        (
            "[a-z0-9-]{1,12}",
            vec(text(), 0..3),
            vec((user, assistant), 1..4),
            tools(),
            tool_choice(),
            prop::option::of(1..100_000u64),
        ),
        (
            fraction(200),
            fraction(100),
            vec(text(), 0..3),
            any::<bool>(),
            prop::option::of(any::<bool>()),
            prop::option::of("[a-z0-9]{1,8}"),
        ),
    )
        .prop_map(
            |(
                (model, system, turns, tools, tool_choice, max_tokens),
                (temperature, top_p, stop, stream, parallel_tool_calls, user),
            )| {
                let tools = tools
                    .into_iter()
                    .map(|t| ToolDef {
                        cache_control: None,
                        ..t
                    })
                    .collect();
                ChatRequest {
                    model,
                    system: system
                        .into_iter()
                        .map(|text| SystemBlock {
                            text,
                            cache_control: None,
                        })
                        .collect(),
                    messages: alternate(turns),
                    tools,
                    tool_choice,
                    max_tokens,
                    temperature,
                    top_p,
                    stop,
                    stream,
                    include_usage: stream,
                    thinking: None,
                    parallel_tool_calls,
                    user,
                    other_tools: Vec::new(),
                }
            },
        )
}

/// Requests using what the Anthropic wire expresses natively: cache control, signed
/// thinking, redacted thinking, images in tool results, `is_error`.
fn anthropic_request() -> impl Strategy<Value = ChatRequest> {
    let result_content = vec(
        prop_oneof![
            text().prop_map(ToolResultContent::Text),
            image().prop_map(ToolResultContent::Image),
        ],
        0..3,
    );
    let tool_result = (
        "toolu_[a-zA-Z0-9]{1,8}",
        result_content,
        any::<bool>(),
        cache_control(),
    )
        .prop_map(
            |(tool_use_id, content, is_error, cache_control)| ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
                cache_control,
            },
        );
    let user_block = prop_oneof![
        (text(), cache_control()).prop_map(|(t, cc)| text_block(t, cc)),
        (image(), cache_control()).prop_map(|(source, cache_control)| ContentBlock::Image {
            source,
            cache_control
        }),
    ];
    let user = (vec(tool_result, 0..3), vec(user_block, 0..3))
        .prop_filter("a user turn has content", |(r, o)| {
            !r.is_empty() || !o.is_empty()
        })
        .prop_map(|(mut results, mut rest)| {
            results.append(&mut rest);
            Message {
                role: Role::User,
                content: results,
            }
        });
    let assistant_block = prop_oneof![
        (text(), cache_control()).prop_map(|(t, cc)| text_block(t, cc)),
        (text(), "[A-Za-z0-9]{1,10}").prop_map(|(thinking, sig)| ContentBlock::Thinking {
            thinking,
            signature: Some(sig)
        }),
        "[A-Za-z0-9]{1,10}".prop_map(|data| ContentBlock::RedactedThinking { data }),
        (
            "toolu_[a-zA-Z0-9]{1,8}",
            "[a-z_]{1,8}",
            object(),
            cache_control()
        )
            .prop_map(|(id, name, input, cache_control)| ContentBlock::ToolUse {
                id,
                name,
                input,
                cache_control
            }),
    ];
    let assistant = vec(assistant_block, 1..4).prop_map(|content| Message {
        role: Role::Assistant,
        content,
    });
    (
        (
            "[a-z0-9-]{1,12}",
            vec((text(), cache_control()), 0..3),
            vec((user, assistant), 1..4),
            tools(),
            tool_choice(),
            1..100_000u64,
        ),
        (
            fraction(100),
            fraction(100),
            vec(text(), 0..3),
            any::<bool>(),
            prop::option::of(any::<bool>()),
            prop::option::of("[a-z0-9]{1,8}"),
            prop::option::of(1024..4096u32),
        ),
    )
        .prop_map(
            |(
                (model, system, turns, tools, tool_choice, max_tokens),
                (temperature, top_p, stop, stream, parallel_tool_calls, user, budget),
            )| ChatRequest {
                model,
                system: system
                    .into_iter()
                    .map(|(text, cache_control)| SystemBlock {
                        text,
                        cache_control,
                    })
                    .collect(),
                messages: alternate(turns),
                tools,
                tool_choice,
                max_tokens: Some(max_tokens),
                temperature,
                top_p,
                stop,
                stream,
                include_usage: false,
                thinking: budget.map(|b| json!({"type": "enabled", "budget_tokens": b})),
                parallel_tool_calls,
                user,
                other_tools: Vec::new(),
            },
        )
}

/// Requests using what the Responses wire expresses: signed thinking (reasoning items), text
/// and images, tool results (text or parts) answering the previous turn's calls — the API
/// refuses outputs without an earlier call — no stop sequences, no cache control.
fn responses_request() -> impl Strategy<Value = ChatRequest> {
    let tool_use =
        ("call_[a-zA-Z0-9]{1,8}", "[a-z_]{1,8}", object()).prop_map(|(id, name, input)| {
            ContentBlock::ToolUse {
                id,
                name,
                input,
                cache_control: None,
            }
        });
    let assistant = (
        prop::option::of((text(), "[A-Za-z0-9+/=]{1,12}")),
        prop::option::of(text()),
        vec(tool_use, 0..3),
    )
        .prop_filter("an assistant turn has content", |(th, t, calls)| {
            th.is_some() || t.is_some() || !calls.is_empty()
        })
        .prop_map(|(thinking, t, calls)| {
            let mut content: Vec<ContentBlock> = thinking
                .map(|(thinking, sig)| ContentBlock::Thinking {
                    thinking,
                    signature: Some(sig),
                })
                .into_iter()
                .collect();
            content.extend(t.map(|t| text_block(t, None)));
            content.extend(calls);
            Message {
                role: Role::Assistant,
                content,
            }
        });
    let user_block = prop_oneof![
        text().prop_map(|t| text_block(t, None)),
        image().prop_map(|source| ContentBlock::Image {
            source,
            cache_control: None
        }),
    ];
    let result_content = vec(
        prop_oneof![
            text().prop_map(ToolResultContent::Text),
            image().prop_map(ToolResultContent::Image),
        ],
        1..3,
    );
    let turn = (vec(user_block, 1..3), vec(result_content, 3), assistant);
    (
        (
            "[a-z0-9-]{1,12}",
            vec(text(), 0..3),
            vec(turn, 1..4),
            tools(),
            tool_choice(),
            prop::option::of(1..100_000u64),
        ),
        (
            fraction(200),
            fraction(100),
            any::<bool>(),
            prop::option::of(any::<bool>()),
            prop::option::of("[a-z0-9]{1,8}"),
        ),
    )
        .prop_map(
            |(
                (model, system, turns, tools, tool_choice, max_tokens),
                (temperature, top_p, stream, parallel_tool_calls, user),
            )| {
                let mut messages: Vec<Message> = Vec::new();
                for (blocks, results, assistant) in turns {
                    // This user turn answers every call of the previous assistant turn.
                    let calls: Vec<String> = messages
                        .last()
                        .into_iter()
                        .flat_map(|m| &m.content)
                        .filter_map(|b| match b {
                            ContentBlock::ToolUse { id, .. } => Some(id.clone()),
                            _ => None,
                        })
                        .collect();
                    let mut content: Vec<ContentBlock> = calls
                        .into_iter()
                        .zip(results)
                        .map(|(tool_use_id, content)| ContentBlock::ToolResult {
                            tool_use_id,
                            content,
                            is_error: false,
                            cache_control: None,
                        })
                        .collect();
                    content.extend(blocks);
                    messages.push(Message {
                        role: Role::User,
                        content,
                    });
                    messages.push(assistant);
                }
                ChatRequest {
                    model,
                    system: system
                        .into_iter()
                        .map(|text| SystemBlock {
                            text,
                            cache_control: None,
                        })
                        .collect(),
                    messages,
                    tools: tools
                        .into_iter()
                        .map(|t| ToolDef {
                            cache_control: None,
                            ..t
                        })
                        .collect(),
                    tool_choice,
                    max_tokens,
                    temperature,
                    top_p,
                    stop: Vec::new(),
                    stream,
                    include_usage: false,
                    thinking: None,
                    parallel_tool_calls,
                    user,
                    other_tools: Vec::new(),
                }
            },
        )
}

/// Complete answers: text, signed and unsigned thinking, redacted thinking, function calls
/// and calls of the custom tool `apply_patch` (whose input is one string).
fn response() -> impl Strategy<Value = ChatResponse> {
    let block = prop_oneof![
        text().prop_map(|t| text_block(t, None)),
        (text(), prop::option::of("[A-Za-z0-9]{1,12}")).prop_map(|(thinking, signature)| {
            ContentBlock::Thinking {
                thinking,
                signature,
            }
        }),
        "[A-Za-z0-9]{1,12}".prop_map(|data| ContentBlock::RedactedThinking { data }),
        ("toolu_[a-zA-Z0-9]{1,8}", "[a-z_]{1,8}", object()).prop_map(|(id, name, input)| {
            ContentBlock::ToolUse {
                id,
                name,
                input,
                cache_control: None,
            }
        }),
        ("toolu_[a-zA-Z0-9]{1,8}", text()).prop_map(|(id, patch)| ContentBlock::ToolUse {
            id,
            name: "apply_patch".into(),
            input: json!({ "input": patch }),
            cache_control: None,
        }),
    ];
    (vec(block, 0..6), stop_reason(), usage()).prop_map(|(content, stop_reason, usage)| {
        ChatResponse {
            id: None,
            model: None,
            content,
            stop_reason,
            stop_sequence: None,
            usage,
        }
    })
}

// ---------------------------------------------------------------------------------------
// Normalisations each renderer documents
// ---------------------------------------------------------------------------------------

/// Tool choice and parallelism only travel with tools (both APIs reject them otherwise).
fn without_orphan_tool_settings(r: &mut ChatRequest) {
    if r.tools.is_empty() && r.other_tools.is_empty() {
        r.tool_choice = None;
        r.parallel_tool_calls = None;
    }
}

/// OpenAI: one `\n\n`-joined system message; streams always ask for usage.
fn openai_normal(mut r: ChatRequest) -> ChatRequest {
    let system: Vec<&str> = r
        .system
        .iter()
        .map(|b| b.text.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    r.system = if system.is_empty() {
        Vec::new()
    } else {
        vec![SystemBlock {
            text: system.join("\n\n"),
            cache_control: None,
        }]
    };
    without_orphan_tool_settings(&mut r);
    r.include_usage = r.stream;
    r
}

/// Anthropic: parallelism is a `tool_choice` flag, so it needs a choice to ride on (`auto`
/// when only `parallel_tool_calls: false` was set) and does not exist for `none`.
fn anthropic_normal(mut r: ChatRequest) -> ChatRequest {
    without_orphan_tool_settings(&mut r);
    if r.tool_choice.is_none() {
        match r.parallel_tool_calls {
            Some(false) => r.tool_choice = Some(ToolChoice::Auto),
            Some(true) => r.parallel_tool_calls = None,
            None => {}
        }
    }
    if r.tool_choice == Some(ToolChoice::None) {
        r.parallel_tool_calls = None;
    }
    r
}

/// Responses: all system text is `instructions` (`\n\n`-joined), as on OpenAI.
fn responses_normal(r: ChatRequest) -> ChatRequest {
    let mut r = openai_normal(r);
    r.include_usage = false;
    r
}

/// What the Responses wire keeps of a stop reason: `incomplete` for max tokens and refusals,
/// else `completed`, read back as a tool-use stop when the answer calls tools.
fn responses_stop(r: &ChatResponse) -> StopReason {
    match r.stop_reason {
        StopReason::MaxTokens => StopReason::MaxTokens,
        StopReason::Refusal => StopReason::Refusal,
        _ if r.tool_call_count() > 0 => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

/// The content a Responses client sees: tool ids in the `call_` form.
fn with_openai_ids(content: &[ContentBlock]) -> Vec<ContentBlock> {
    content
        .iter()
        .map(|b| match b {
            ContentBlock::ToolUse {
                id,
                name,
                input,
                cache_control,
            } => ContentBlock::ToolUse {
                id: tool_ids::to_openai(id),
                name: name.clone(),
                input: input.clone(),
                cache_control: cache_control.clone(),
            },
            other => other.clone(),
        })
        .collect()
}

fn custom_patch_context() -> ResponseContext {
    let mut raw = Map::new();
    raw.insert(
        "tools".into(),
        json!([{"type": "custom", "name": "apply_patch"}]),
    );
    ResponseContext::from_request(&ChatRequest::default(), &raw)
}

// ---------------------------------------------------------------------------------------
// Stream generators and helpers
// ---------------------------------------------------------------------------------------

/// Cut `s` at char boundaries chosen by `cuts`.
fn split(s: &str, cuts: &[Index]) -> Vec<String> {
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
    let mut points: Vec<usize> = cuts.iter().map(|c| bounds[c.index(bounds.len())]).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points {
        out.push(s[prev..p].to_owned());
        prev = p;
    }
    out.push(s[prev..].to_owned());
    out
}

#[derive(Debug, Clone)]
enum GenBlock {
    Text(Vec<String>),
    Thinking(Vec<String>, Option<String>),
    Redacted(String),
    Tool {
        id: String,
        name: String,
        input: Value,
        cuts: Vec<Index>,
    },
}

fn usage() -> impl Strategy<Value = Usage> {
    (0..5000u64, 0..5000u64, 0..5000u64, 0..5000u64).prop_map(|(i, o, r, w)| Usage {
        input_tokens: i,
        output_tokens: o,
        cache_read_tokens: r,
        cache_write_tokens: w,
    })
}

fn stop_reason() -> impl Strategy<Value = StopReason> {
    prop_oneof![
        Just(StopReason::EndTurn),
        Just(StopReason::MaxTokens),
        Just(StopReason::StopSequence),
        Just(StopReason::ToolUse),
        Just(StopReason::Refusal),
        Just(StopReason::PauseTurn),
    ]
}

/// A canonical event sequence upholding the `StreamEvent` invariants.
fn events() -> impl Strategy<Value = Vec<StreamEvent>> {
    let block = prop_oneof![
        vec(text(), 0..4).prop_map(GenBlock::Text),
        (vec(text(), 0..3), prop::option::of("[A-Za-z0-9]{1,12}"))
            .prop_map(|(t, s)| GenBlock::Thinking(t, s)),
        "[A-Za-z0-9]{1,12}".prop_map(GenBlock::Redacted),
        (
            "toolu_[a-zA-Z0-9]{1,8}",
            "[a-z_]{1,8}",
            object(),
            vec(any::<Index>(), 0..4)
        )
            .prop_map(|(id, name, input, cuts)| GenBlock::Tool {
                id,
                name,
                input,
                cuts
            }),
    ];
    (
        usage(),
        vec(block, 0..5),
        prop::option::of(usage()),
        stop_reason(),
        prop::option::of(text()),
    )
        .prop_map(|(start, blocks, extra, stop_reason, stop_sequence)| {
            let mut ev = vec![StreamEvent::Start {
                id: None,
                model: None,
                usage: start,
            }];
            for (index, b) in blocks.into_iter().enumerate() {
                let (start, deltas) = match b {
                    GenBlock::Text(parts) => (
                        BlockStart::Text,
                        parts.into_iter().map(BlockDelta::Text).collect::<Vec<_>>(),
                    ),
                    GenBlock::Thinking(parts, sig) => (
                        BlockStart::Thinking,
                        parts
                            .into_iter()
                            .map(BlockDelta::Thinking)
                            .chain(sig.map(BlockDelta::Signature))
                            .collect(),
                    ),
                    GenBlock::Redacted(data) => (BlockStart::RedactedThinking { data }, vec![]),
                    GenBlock::Tool {
                        id,
                        name,
                        input,
                        cuts,
                    } => (
                        BlockStart::ToolUse { id, name },
                        split(&input.to_string(), &cuts)
                            .into_iter()
                            .map(BlockDelta::ToolInputJson)
                            .collect(),
                    ),
                };
                ev.push(StreamEvent::BlockStart {
                    index,
                    block: start,
                });
                ev.extend(
                    deltas
                        .into_iter()
                        .map(|delta| StreamEvent::Delta { index, delta }),
                );
                ev.push(StreamEvent::BlockStop { index });
            }
            if let Some(extra) = extra {
                // Cumulative: never below what `Start` reported.
                ev.push(StreamEvent::Usage(start.max(extra)));
            }
            ev.push(StreamEvent::Finish {
                stop_reason,
                stop_sequence,
            });
            ev
        })
}

fn accumulate<'a>(events: impl IntoIterator<Item = &'a StreamEvent>) -> ChatResponse {
    let mut acc = StreamAccumulator::new();
    for e in events {
        acc.push(e);
    }
    acc.into_response()
}

/// Feed `bytes` to an `SseParser` in chunks cut at `cuts` (anywhere, even inside a UTF-8
/// sequence) and run every frame through `push`.
fn reparse<E>(
    bytes: &[u8],
    cuts: &[Index],
    mut push: impl FnMut(&metis_domain::sse::SseFrame) -> Result<Vec<StreamEvent>, E>,
) -> Result<Vec<StreamEvent>, E> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points.into_iter().chain([bytes.len()]) {
        for frame in parser.push(&bytes[prev..p]) {
            out.extend(push(&frame)?);
        }
        prev = p;
    }
    if let Some(frame) = parser.finish() {
        out.extend(push(&frame)?);
    }
    Ok(out)
}

fn all_text(r: &ChatResponse) -> String {
    r.content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn tool_calls(r: &ChatResponse) -> Vec<(String, String, Value)> {
    r.content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolUse {
                id, name, input, ..
            } => Some((id.clone(), name.clone(), input.clone())),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn openai_render_then_parse_is_identity_on_its_subset(req in openai_request()) {
        let wire = openai::render_request(&req, &req.model).unwrap();
        let parsed = openai::parse_request(wire.to_string().as_bytes()).unwrap();
        prop_assert_eq!(openai_normal(parsed.request), openai_normal(req));
    }

    #[test]
    fn anthropic_render_then_parse_is_identity_on_its_subset(req in anthropic_request()) {
        let wire = anthropic::render_request(&req, &req.model).unwrap();
        let parsed = anthropic::parse_request(wire.to_string().as_bytes()).unwrap();
        prop_assert_eq!(anthropic_normal(parsed.request), anthropic_normal(req));
    }

    #[test]
    fn openai_stream_render_then_parse_keeps_text_tools_stop_and_usage(
        events in events(),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let mut renderer = openai::StreamRenderer::new("01ID", "alias", true, 7);
        let mut bytes = String::new();
        for e in &events {
            bytes.extend(renderer.event(e));
        }
        bytes.extend(renderer.end());
        let mut parser = openai::StreamParser::new();
        let parsed = reparse(bytes.as_bytes(), &cuts, |f| parser.push(f)).unwrap();
        prop_assert!(parser.ended_cleanly());
        let (want, got) = (accumulate(&events), accumulate(&parsed));

        prop_assert_eq!(all_text(&got), all_text(&want));
        let want_tools: Vec<_> = tool_calls(&want)
            .into_iter()
            .map(|(id, name, input)| (tool_ids::to_openai(&id), name, input))
            .collect();
        prop_assert_eq!(tool_calls(&got), want_tools);
        prop_assert_eq!(got.thinking_block_count(), 0, "the OpenAI wire carries no thinking");
        prop_assert_eq!(got.stop_reason.as_openai(), want.stop_reason.as_openai());
        // `prompt_tokens` folds cache writes into uncached input; reads stay separate.
        let (w, g) = (want.usage, got.usage);
        prop_assert_eq!(g.output_tokens, w.output_tokens);
        prop_assert_eq!(g.cache_read_tokens, w.cache_read_tokens);
        prop_assert_eq!(g.total_input(), w.total_input());
    }

    #[test]
    fn anthropic_stream_render_then_parse_keeps_everything(
        events in events(),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let mut renderer = anthropic::StreamRenderer::new("01ID", "alias", false, 0);
        let mut bytes = String::new();
        for e in &events {
            bytes.extend(renderer.event(e));
        }
        bytes.extend(renderer.end());
        let mut parser = anthropic::StreamParser::new();
        let parsed = reparse(bytes.as_bytes(), &cuts, |f| parser.push(f)).unwrap();
        prop_assert!(parser.ended_cleanly());
        let (want, got) = (accumulate(&events), accumulate(&parsed));
        prop_assert_eq!(got.content, want.content);
        prop_assert_eq!(got.stop_reason, want.stop_reason);
        prop_assert_eq!(got.stop_sequence, want.stop_sequence);
        prop_assert_eq!(got.usage, want.usage);
    }

    #[test]
    fn cross_shape_streams_keep_tool_ids_the_client_can_send_back(
        events in events(),
    ) {
        // Anthropic upstream -> OpenAI client: ids the client will send back next turn map
        // to the ids the Anthropic upstream issued.
        let mut renderer = openai::StreamRenderer::new("1", "m", false, 0);
        let mut bytes = String::new();
        for e in &events {
            bytes.extend(renderer.event(e));
        }
        bytes.extend(renderer.end());
        let mut parser = openai::StreamParser::new();
        let parsed = reparse(bytes.as_bytes(), &[], |f| parser.push(f)).unwrap();
        let upstream_ids: Vec<String> = tool_calls(&accumulate(&events)).into_iter().map(|t| t.0).collect();
        let back: Vec<String> = tool_calls(&accumulate(&parsed))
            .into_iter()
            .map(|t| tool_ids::to_anthropic(&t.0))
            .collect();
        prop_assert_eq!(back, upstream_ids);
    }

    #[test]
    fn responses_render_then_parse_is_identity_on_its_subset(req in responses_request()) {
        let wire = responses::render_request(&req, &req.model).unwrap();
        let parsed = responses::parse_request(wire.to_string().as_bytes()).unwrap();
        prop_assert_eq!(responses_normal(parsed.request), responses_normal(req));
    }

    #[test]
    fn responses_response_render_then_parse_keeps_content_usage_and_stop(resp in response()) {
        let out = responses::render_response(&resp, "alias", "01ID", 7, &custom_patch_context());
        let got = responses::parse_response(out.to_string().as_bytes()).unwrap();
        prop_assert_eq!(&got.content, &with_openai_ids(&resp.content));
        prop_assert_eq!(got.stop_reason, responses_stop(&resp));
        // `input_tokens` folds cache writes into uncached input; reads stay separate.
        let (w, g) = (resp.usage, got.usage);
        prop_assert_eq!(g.output_tokens, w.output_tokens);
        prop_assert_eq!(g.cache_read_tokens, w.cache_read_tokens);
        prop_assert_eq!(g.total_input(), w.total_input());
    }

    #[test]
    fn responses_stream_render_then_parse_keeps_content_stop_and_usage(
        events in events(),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let mut renderer =
            responses::StreamRenderer::new("01ID", "alias", 7, ResponseContext::default());
        let mut bytes = String::new();
        for e in &events {
            bytes.extend(renderer.event(e));
        }
        bytes.extend(renderer.end());
        let mut parser = responses::StreamParser::new();
        let parsed = reparse(bytes.as_bytes(), &cuts, |f| parser.push(f)).unwrap();
        prop_assert!(parser.ended_cleanly());
        let (want, got) = (accumulate(&events), accumulate(&parsed));
        prop_assert_eq!(&got.content, &with_openai_ids(&want.content));
        prop_assert_eq!(got.stop_reason, responses_stop(&want));
        let (w, g) = (want.usage, got.usage);
        prop_assert_eq!(g.output_tokens, w.output_tokens);
        prop_assert_eq!(g.cache_read_tokens, w.cache_read_tokens);
        prop_assert_eq!(g.total_input(), w.total_input());
    }
}
