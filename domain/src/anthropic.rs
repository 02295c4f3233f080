//! Anthropic Messages (`POST /v1/messages`) <-> canonical IR.
//!
//! Inbound: [`parse_request`] validates a client body into a [`ChatRequest`] (errors name the
//! JSON path) and keeps the raw object for same-shape passthrough ([`passthrough_request`]:
//! unknown fields untouched, only `model` replaced).
//!
//! Outbound to an Anthropic upstream: [`render_request`] (from an OpenAI-shaped client),
//! [`parse_response`] / [`StreamParser`] to read what comes back.
//!
//! Towards an Anthropic client: [`render_response`] / [`StreamRenderer`] for cross-shape
//! answers, [`passthrough_response`] / [`PassthroughStream`] for same-shape ones.
//!
//! Invariants and lossy points (all deliberate):
//! - `cache_control` is kept on system blocks, content blocks and tools, so prompt caching
//!   survives the gateway.
//! - Block types the IR has no model for (`document`, `search_result`, `server_tool_use`, an
//!   image with a `file` source, server tools such as `web_search_20250305`) are kept
//!   verbatim as `Opaque`; they pass through same-shape traffic and are refused, by name, on
//!   the way to an OpenAI upstream.
//! - Rendering for the wire: consecutive same-role messages are merged (OpenAI clients may
//!   send several user turns in a row), `tool_result` blocks come first in a user message (the
//!   API requires them right after the `tool_use` turn), empty text blocks are dropped (the API
//!   rejects them), thinking blocks without a signature are dropped (the API rejects unsigned
//!   thinking), `max_tokens` defaults to 4096 and `temperature` is clamped to Anthropic's
//!   0..=1 range (OpenAI allows up to 2).
//! - Usage: the wire's four counters are the canonical disjoint buckets one to one; a
//!   stream's `message_delta` usage is cumulative and overrides `message_start`'s field by
//!   field.
//! - A stream rendered for a client ends with `message_delta` + `message_stop` after success,
//!   and with `event: error` (never a fake `message_stop`) after a failure.

pub use crate::canonical::ParsedRequest;
use crate::canonical::wire::{Obj, Res, count, error_kind, parse_body};
use crate::canonical::{
    BlockDelta, BlockStart, ChatRequest, ChatResponse, ContentBlock, ImageSource, Message, Opaque,
    Role, Shape, StopReason, StreamEvent, SystemBlock, ToolChoice, ToolDef, ToolResultContent,
    Usage,
};
use crate::error::{GatewayError, invalid};
use crate::sse::{SseFrame, format_frame};
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};

/// `max_tokens` sent upstream when the client (an OpenAI one) did not set any: the Anthropic
/// API requires the field.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// Parse and validate a client's Messages body.
///
/// # Errors
/// `InvalidRequest` naming the offending JSON path (bad JSON, missing `model`, `messages` or
/// `max_tokens`, unknown role, malformed block, …).
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest, GatewayError> {
    let raw = parse_body(body)?;
    let request = request_from_map(&raw)?;
    Ok(ParsedRequest { request, raw })
}

fn request_from_map(map: &Map<String, Value>) -> Res<ChatRequest> {
    let top = Obj::root(map);
    let mut req = ChatRequest {
        model: top.req_str("model")?.to_owned(),
        ..ChatRequest::default()
    };
    let messages = match top.get("messages") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => return Err(invalid("messages must be a non-empty array")),
    };
    req.max_tokens = match top.get("max_tokens").and_then(Value::as_u64) {
        Some(n) if n > 0 => Some(n),
        _ => {
            return Err(invalid(
                "'max_tokens' is required and must be a positive integer",
            ));
        }
    };
    req.system = system_blocks(&top)?;
    for (i, value) in messages.iter().enumerate() {
        let msg = Obj::at(value, format!("messages[{i}]"))?;
        let role = match msg.req_str("role")? {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            // A system message inside `messages` (Claude Code sends one with the beta
            // `mid-conversation-system-…`): forwarded as is to an Anthropic upstream, which
            // decides; hoisted into the system prompt when translated.
            "system" => {
                req.system.extend(mid_conversation_system(&msg)?);
                continue;
            }
            other => {
                return Err(invalid(format!(
                    "{} '{other}' is not supported (expected user, assistant or system)",
                    msg.field("role")
                )));
            }
        };
        let content = match msg.get("content") {
            Some(Value::String(s)) => vec![ContentBlock::Text {
                text: s.clone(),
                cache_control: None,
            }],
            Some(Value::Array(blocks)) => blocks
                .iter()
                .enumerate()
                .map(|(j, b)| block(&Obj::at(b, format!("{}[{j}]", msg.field("content")))?, role))
                .collect::<Res<Vec<_>>>()?,
            _ => {
                return Err(invalid(format!(
                    "{} is required and must be a string or an array of content blocks",
                    msg.field("content")
                )));
            }
        };
        req.messages.push(Message { role, content });
    }
    if let Some(tools) = top.array("tools")? {
        for (i, value) in tools.iter().enumerate() {
            let tool = Obj::at(value, format!("tools[{i}]"))?;
            match tool.str("type")? {
                None | Some("custom") => req.tools.push(tool_def(&tool)?),
                // Server and client-defined tool versions (`web_search_20250305`,
                // `bash_20250124`, …) only make sense to an Anthropic upstream.
                Some(_) => req.other_tools.push(Opaque {
                    shape: Shape::Anthropic,
                    value: value.clone(),
                }),
            }
        }
    }
    if let Some(choice) = top.obj("tool_choice")? {
        req.tool_choice = Some(match choice.req_str("type")? {
            "auto" => ToolChoice::Auto,
            "any" => ToolChoice::Any,
            "none" => ToolChoice::None,
            "tool" => ToolChoice::Tool(choice.req_str("name")?.to_owned()),
            other => {
                return Err(invalid(format!(
                    "tool_choice.type '{other}' is not supported (expected auto, any, tool or none)"
                )));
            }
        });
        req.parallel_tool_calls = choice.bool("disable_parallel_tool_use")?.map(|d| !d);
    }
    req.stop = top.strings("stop_sequences")?;
    req.temperature = top.number("temperature")?;
    req.top_p = top.number("top_p")?;
    req.thinking = top.obj("thinking")?.map(|t| Value::Object(t.map.clone()));
    if let Some(meta) = top.obj("metadata")? {
        req.user = meta.str("user_id")?.map(str::to_owned);
    }
    req.stream = top.bool("stream")?.unwrap_or(false);
    Ok(req)
}

fn system_blocks(top: &Obj<'_>) -> Res<Vec<SystemBlock>> {
    match top.get("system") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![SystemBlock {
            text: s.clone(),
            cache_control: None,
        }]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let b = Obj::at(v, format!("system[{i}]"))?;
                if b.str("type")? != Some("text") {
                    return Err(invalid(format!("{} must be 'text'", b.field("type"))));
                }
                Ok(SystemBlock {
                    text: b.req_str("text")?.to_owned(),
                    cache_control: b.get("cache_control").cloned(),
                })
            })
            .collect(),
        Some(_) => Err(invalid(
            "system must be a string or an array of text blocks",
        )),
    }
}

fn opaque(b: &Obj<'_>) -> Opaque {
    Opaque {
        shape: Shape::Anthropic,
        value: Value::Object(b.map.clone()),
    }
}

/// The text of a `system`-role message: a string, or text blocks (their `cache_control`
/// kept).
fn mid_conversation_system(msg: &Obj<'_>) -> Res<Vec<SystemBlock>> {
    match msg.get("content") {
        Some(Value::String(s)) => Ok(vec![SystemBlock {
            text: s.clone(),
            cache_control: None,
        }]),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let b = Obj::at(b, format!("{}[{j}]", msg.field("content")))?;
                match b.req_str("type")? {
                    "text" => Ok(SystemBlock {
                        text: b.req_str("text")?.to_owned(),
                        cache_control: b.get("cache_control").cloned(),
                    }),
                    other => Err(invalid(format!(
                        "{} '{other}' is not supported in a system message (expected text)",
                        b.field("type")
                    ))),
                }
            })
            .collect(),
        _ => Err(invalid(format!(
            "{} is required and must be a string or an array of text blocks",
            msg.field("content")
        ))),
    }
}

fn block(b: &Obj<'_>, role: Role) -> Res<ContentBlock> {
    let cache_control = b.get("cache_control").cloned();
    let ty = b.req_str("type")?;
    Ok(match ty {
        "text" => ContentBlock::Text {
            text: b.req_str("text")?.to_owned(),
            cache_control,
        },
        "image" => match image_source(b)? {
            Some(source) => ContentBlock::Image {
                source,
                cache_control,
            },
            None => ContentBlock::Other(opaque(b)),
        },
        "tool_use" => {
            if role == Role::User {
                return Err(invalid(format!(
                    "{}: tool_use blocks are only allowed in assistant messages",
                    b.path
                )));
            }
            let input = match b.get("input") {
                Some(v @ Value::Object(_)) => v.clone(),
                _ => {
                    return Err(invalid(format!(
                        "{} is required and must be an object",
                        b.field("input")
                    )));
                }
            };
            ContentBlock::ToolUse {
                id: b.req_str("id")?.to_owned(),
                name: b.req_str("name")?.to_owned(),
                input,
                cache_control,
            }
        }
        "tool_result" => {
            if role == Role::Assistant {
                return Err(invalid(format!(
                    "{}: tool_result blocks are only allowed in user messages",
                    b.path
                )));
            }
            ContentBlock::ToolResult {
                tool_use_id: b.req_str("tool_use_id")?.to_owned(),
                content: tool_result_content(b)?,
                is_error: b.bool("is_error")?.unwrap_or(false),
                cache_control,
            }
        }
        "thinking" => ContentBlock::Thinking {
            thinking: b.req_str("thinking")?.to_owned(),
            signature: b.str("signature")?.map(str::to_owned),
        },
        "redacted_thinking" => ContentBlock::RedactedThinking {
            data: b.req_str("data")?.to_owned(),
        },
        _ => ContentBlock::Other(opaque(b)),
    })
}

/// The source of an `image` block; `None` for source kinds the IR has no model for (`file`).
fn image_source(b: &Obj<'_>) -> Res<Option<ImageSource>> {
    let source = b.req_obj("source")?;
    Ok(match source.req_str("type")? {
        "base64" => Some(ImageSource::Base64 {
            media_type: source.req_str("media_type")?.to_owned(),
            data: source.req_str("data")?.to_owned(),
        }),
        "url" => Some(ImageSource::Url {
            url: source.req_str("url")?.to_owned(),
        }),
        _ => None,
    })
}

fn tool_result_content(b: &Obj<'_>) -> Res<Vec<ToolResultContent>> {
    match b.get("content") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![ToolResultContent::Text(s.clone())]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let inner = Obj::at(v, format!("{}[{k}]", b.field("content")))?;
                Ok(match inner.req_str("type")? {
                    "text" => ToolResultContent::Text(inner.req_str("text")?.to_owned()),
                    "image" => match image_source(&inner)? {
                        Some(src) => ToolResultContent::Image(src),
                        None => ToolResultContent::Other(opaque(&inner)),
                    },
                    _ => ToolResultContent::Other(opaque(&inner)),
                })
            })
            .collect(),
        Some(_) => Err(invalid(format!(
            "{} must be a string or an array of content blocks",
            b.field("content")
        ))),
    }
}

fn tool_def(tool: &Obj<'_>) -> Res<ToolDef> {
    let input_schema = match tool.obj("input_schema")? {
        Some(s) => Value::Object(s.map.clone()),
        None => json!({"type": "object", "properties": {}}),
    };
    Ok(ToolDef {
        name: tool.req_str("name")?.to_owned(),
        description: tool.str("description")?.map(str::to_owned),
        input_schema,
        cache_control: tool.get("cache_control").cloned(),
    })
}

/// The client's body for an Anthropic upstream: every field as the client wrote it, only
/// `model` replaced.
#[must_use]
pub fn passthrough_request(mut raw: Map<String, Value>, upstream_model: &str) -> Value {
    raw.insert("model".to_owned(), Value::String(upstream_model.to_owned()));
    Value::Object(raw)
}

/// Insert `cache_control` when present.
fn with_cache_control(mut v: Map<String, Value>, cc: Option<&Value>) -> Value {
    if let Some(cc) = cc {
        v.insert("cache_control".into(), cc.clone());
    }
    Value::Object(v)
}

fn obj(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn source_json(source: &ImageSource) -> Value {
    match source {
        ImageSource::Base64 { media_type, data } => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        ImageSource::Url { url } => json!({"type": "url", "url": url}),
    }
}

/// An opaque object is only expressible on the wire it came from.
fn foreign(o: &Opaque, what: &str) -> Res<Value> {
    if o.shape == Shape::Anthropic {
        Ok(o.value.clone())
    } else {
        Err(invalid(format!(
            "{what} type '{}' cannot be sent to an Anthropic upstream",
            o.kind()
        )))
    }
}

/// A tool input for this wire: an object, or `{}` for raw argument text an OpenAI upstream
/// produced that is not a JSON object (see `ContentBlock::ToolUse`).
fn input_object(input: &Value) -> Value {
    if input.is_object() {
        input.clone()
    } else {
        Value::Object(Map::new())
    }
}

/// Render a canonical request (from an OpenAI-shaped client) for an Anthropic upstream. Tool
/// ids are mapped to the `toolu_` form (see `tool_ids`).
///
/// # Errors
/// `InvalidRequest` when the request holds something this wire cannot express (an OpenAI
/// `input_audio` part, a `custom` tool, …), naming its type.
pub fn render_request(req: &ChatRequest, upstream_model: &str) -> Result<Value, GatewayError> {
    let mut ids = ToolIdMap::new(Shape::Anthropic);
    let mut out = Map::new();
    out.insert("model".into(), Value::String(upstream_model.to_owned()));
    out.insert(
        "max_tokens".into(),
        json!(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    let system: Vec<Value> = req
        .system
        .iter()
        .filter(|b| !b.text.is_empty())
        .map(|b| {
            with_cache_control(
                obj(vec![("type", json!("text")), ("text", json!(b.text))]),
                b.cache_control.as_ref(),
            )
        })
        .collect();
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }

    // (role, tool results, other blocks) per wire message, same-role turns merged.
    let mut merged: Vec<(Role, Vec<Value>, Vec<Value>)> = Vec::new();
    for msg in &req.messages {
        let mut results = Vec::new();
        let mut rest = Vec::new();
        for b in &msg.content {
            let is_result = matches!(b, ContentBlock::ToolResult { .. });
            if let Some(v) = render_block(b, msg.role, &mut ids)? {
                if is_result {
                    results.push(v);
                } else {
                    rest.push(v);
                }
            }
        }
        if results.is_empty() && rest.is_empty() {
            continue;
        }
        match merged.last_mut() {
            Some((role, r, o)) if *role == msg.role => {
                r.append(&mut results);
                o.append(&mut rest);
            }
            _ => merged.push((msg.role, results, rest)),
        }
    }
    let messages: Vec<Value> = merged
        .into_iter()
        .map(|(role, mut content, mut rest)| {
            content.append(&mut rest);
            let role = match role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            json!({"role": role, "content": content})
        })
        .collect();
    out.insert("messages".into(), Value::Array(messages));

    let mut tools: Vec<Value> = req
        .tools
        .iter()
        .map(|t| {
            let mut m = obj(vec![("name", json!(t.name))]);
            if let Some(d) = &t.description {
                m.insert("description".into(), json!(d));
            }
            m.insert("input_schema".into(), t.input_schema.clone());
            with_cache_control(m, t.cache_control.as_ref())
        })
        .collect();
    for other in &req.other_tools {
        tools.push(foreign(other, "tool")?);
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        // The API rejects `tool_choice` without tools; parallelism is a `tool_choice` flag.
        if req.tool_choice.is_some() || req.parallel_tool_calls == Some(false) {
            let choice = req.tool_choice.as_ref().unwrap_or(&ToolChoice::Auto);
            let mut tc = match choice {
                ToolChoice::Auto => obj(vec![("type", json!("auto"))]),
                ToolChoice::Any => obj(vec![("type", json!("any"))]),
                ToolChoice::None => obj(vec![("type", json!("none"))]),
                ToolChoice::Tool(name) => obj(vec![("type", json!("tool")), ("name", json!(name))]),
            };
            if let Some(p) = req.parallel_tool_calls
                && *choice != ToolChoice::None
            {
                tc.insert("disable_parallel_tool_use".into(), Value::Bool(!p));
            }
            out.insert("tool_choice".into(), Value::Object(tc));
        }
    }
    if !req.stop.is_empty() {
        out.insert("stop_sequences".into(), json!(req.stop));
    }
    if let Some(t) = req.temperature {
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = req.top_p {
        out.insert("top_p".into(), json!(p));
    }
    if let Some(t) = &req.thinking {
        out.insert("thinking".into(), t.clone());
    }
    if let Some(u) = &req.user {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    if req.stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(Value::Object(out))
}

/// One block for the wire, or `None` when this wire drops it (empty text, unsigned thinking).
fn render_block(b: &ContentBlock, role: Role, ids: &mut ToolIdMap) -> Res<Option<Value>> {
    Ok(Some(match b {
        ContentBlock::Text { text, .. } if text.is_empty() => return Ok(None),
        ContentBlock::Text {
            text,
            cache_control,
        } => with_cache_control(
            obj(vec![("type", json!("text")), ("text", json!(text))]),
            cache_control.as_ref(),
        ),
        ContentBlock::Image {
            source,
            cache_control,
        } => with_cache_control(
            obj(vec![
                ("type", json!("image")),
                ("source", source_json(source)),
            ]),
            cache_control.as_ref(),
        ),
        ContentBlock::ToolUse {
            id,
            name,
            input,
            cache_control,
        } => {
            if role == Role::User {
                return Err(invalid(
                    "tool_use blocks are only allowed in assistant messages",
                ));
            }
            with_cache_control(
                obj(vec![
                    ("type", json!("tool_use")),
                    ("id", json!(ids.map(id))),
                    ("name", json!(name)),
                    ("input", input_object(input)),
                ]),
                cache_control.as_ref(),
            )
        }
        ContentBlock::ToolResult {
            tool_use_id,
            content,
            is_error,
            cache_control,
        } => {
            if role == Role::Assistant {
                return Err(invalid("tool results are only allowed in user messages"));
            }
            let mut m = obj(vec![
                ("type", json!("tool_result")),
                ("tool_use_id", json!(ids.map(tool_use_id))),
            ]);
            match content.as_slice() {
                [] => {}
                [ToolResultContent::Text(t)] => {
                    m.insert("content".into(), json!(t));
                }
                items => {
                    let blocks = items
                        .iter()
                        .map(|c| match c {
                            ToolResultContent::Text(t) => Ok(json!({"type": "text", "text": t})),
                            ToolResultContent::Image(src) => {
                                Ok(json!({"type": "image", "source": source_json(src)}))
                            }
                            ToolResultContent::Other(o) => foreign(o, "tool result block"),
                        })
                        .collect::<Res<Vec<_>>>()?;
                    m.insert("content".into(), Value::Array(blocks));
                }
            }
            if *is_error {
                m.insert("is_error".into(), Value::Bool(true));
            }
            with_cache_control(m, cache_control.as_ref())
        }
        ContentBlock::Thinking {
            thinking,
            signature: Some(sig),
        } if !sig.is_empty() => json!({"type": "thinking", "thinking": thinking, "signature": sig}),
        ContentBlock::Thinking { .. } => return Ok(None),
        ContentBlock::RedactedThinking { data } => {
            json!({"type": "redacted_thinking", "data": data})
        }
        ContentBlock::Other(o) => foreign(o, "content block")?,
    }))
}

// ---------------------------------------------------------------------------------------
// Complete responses
// ---------------------------------------------------------------------------------------

fn usage_from(u: &Value) -> Usage {
    Usage {
        input_tokens: count(u, "input_tokens"),
        output_tokens: count(u, "output_tokens"),
        cache_read_tokens: count(u, "cache_read_input_tokens"),
        cache_write_tokens: count(u, "cache_creation_input_tokens"),
    }
}

/// `base` with every counter that `u` carries replaced (stream usage is cumulative, and
/// `message_delta` may carry only `output_tokens`).
fn merge_usage(mut base: Usage, u: &Value) -> Usage {
    let get = |k: &str| u.get(k).and_then(Value::as_u64);
    if let Some(n) = get("input_tokens") {
        base.input_tokens = n;
    }
    if let Some(n) = get("output_tokens") {
        base.output_tokens = n;
    }
    if let Some(n) = get("cache_read_input_tokens") {
        base.cache_read_tokens = n;
    }
    if let Some(n) = get("cache_creation_input_tokens") {
        base.cache_write_tokens = n;
    }
    base
}

/// Parse a complete upstream answer.
///
/// # Errors
/// A short description when the body is not a JSON object or is an error envelope (the
/// message carries the upstream error type only, never its text).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("upstream response is not valid JSON: {e}"))?;
    response_from_value(&v)
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn response_from_value(v: &Value) -> Result<ChatResponse, String> {
    let Some(obj) = v.as_object() else {
        return Err("upstream response is not a JSON object".to_owned());
    };
    if obj.get("type").and_then(Value::as_str) == Some("error") {
        let err = obj.get("error").unwrap_or(&Value::Null);
        return Err(format!("upstream returned an error: {}", error_kind(err)));
    }
    let mut content = Vec::new();
    for b in obj
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(match b.get("type").and_then(Value::as_str) {
            Some("text") => ContentBlock::Text {
                text: str_of(b, "text"),
                cache_control: None,
            },
            Some("tool_use") => ContentBlock::ToolUse {
                id: str_of(b, "id"),
                name: str_of(b, "name"),
                input: b
                    .get("input")
                    .filter(|i| i.is_object())
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Map::new())),
                cache_control: None,
            },
            Some("thinking") => ContentBlock::Thinking {
                thinking: str_of(b, "thinking"),
                signature: b
                    .get("signature")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
            Some("redacted_thinking") => ContentBlock::RedactedThinking {
                data: str_of(b, "data"),
            },
            _ => ContentBlock::Other(Opaque {
                shape: Shape::Anthropic,
                value: b.clone(),
            }),
        });
    }
    Ok(ChatResponse {
        id: obj.get("id").and_then(Value::as_str).map(str::to_owned),
        model: obj.get("model").and_then(Value::as_str).map(str::to_owned),
        content,
        stop_reason: obj
            .get("stop_reason")
            .and_then(Value::as_str)
            .map_or(StopReason::EndTurn, StopReason::from_anthropic),
        stop_sequence: obj
            .get("stop_sequence")
            .and_then(Value::as_str)
            .map(str::to_owned),
        usage: obj.get("usage").map(usage_from).unwrap_or_default(),
    })
}

/// A same-shape answer: the upstream JSON with only `model` replaced by the client's string,
/// plus its canonical parse for accounting.
///
/// # Errors
/// As [`parse_response`].
pub fn passthrough_response(
    body: &[u8],
    client_model: &str,
) -> Result<(Value, ChatResponse), String> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("upstream response is not valid JSON: {e}"))?;
    let parsed = response_from_value(&v)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model".into(), Value::String(client_model.to_owned()));
    }
    Ok((v, parsed))
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    })
}

/// Render a canonical answer (from an OpenAI-compatible upstream) for an Anthropic client.
/// Tool ids become `toolu_…`; thinking from a reasoning model carries an empty signature
/// (there is none to give, and it is dropped again if sent back to a different upstream).
#[must_use]
pub fn render_response(resp: &ChatResponse, client_model: &str, id: &str, _created: i64) -> Value {
    let mut ids = ToolIdMap::new(Shape::Anthropic);
    let mut content = Vec::new();
    for b in &resp.content {
        match b {
            ContentBlock::Text { text, .. } => content.push(json!({"type": "text", "text": text})),
            ContentBlock::ToolUse {
                id, name, input, ..
            } => content.push(json!({
                "type": "tool_use",
                "id": ids.map(id),
                "name": name,
                "input": input_object(input),
            })),
            ContentBlock::Thinking {
                thinking,
                signature,
            } => content.push(json!({
                "type": "thinking",
                "thinking": thinking,
                "signature": signature.clone().unwrap_or_default(),
            })),
            ContentBlock::RedactedThinking { data } => {
                content.push(json!({"type": "redacted_thinking", "data": data}));
            }
            ContentBlock::Other(o) if o.shape == Shape::Anthropic => content.push(o.value.clone()),
            _ => {}
        }
    }
    json!({
        "id": format!("msg_{id}"),
        "type": "message",
        "role": "assistant",
        "model": client_model,
        "content": content,
        "stop_reason": resp.stop_reason.as_anthropic(),
        "stop_sequence": resp.stop_sequence,
        "usage": usage_json(&resp.usage),
    })
}

// ---------------------------------------------------------------------------------------
// Streams: upstream -> canonical
// ---------------------------------------------------------------------------------------

/// Turns an Anthropic upstream's SSE events into canonical [`StreamEvent`]s.
///
/// Block indices are renumbered densely; blocks the IR cannot stream (`server_tool_use`,
/// `web_search_tool_result`, …) are skipped with their deltas, since only a different-shape
/// client consumes these events (same-shape clients get the upstream frames themselves).
#[derive(Debug, Default)]
pub struct StreamParser {
    started: bool,
    finished: bool,
    ended_cleanly: bool,
    next_index: usize,
    /// (upstream index, canonical index) of the open block.
    open: Option<(u64, usize)>,
    usage: Usage,
    stop_reason: Option<StopReason>,
    stop_sequence: Option<String>,
}

impl StreamParser {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the upstream sent `message_stop`, as opposed to a connection that stopped.
    #[must_use]
    pub fn ended_cleanly(&self) -> bool {
        self.ended_cleanly
    }

    /// Consume one frame.
    ///
    /// # Errors
    /// An upstream `error` event, or a frame that is not JSON; the message names the error
    /// type only.
    pub fn push(&mut self, frame: &SseFrame) -> Result<Vec<StreamEvent>, String> {
        let mut out = Vec::new();
        let data = frame.data.trim();
        if self.finished || data.is_empty() {
            return Ok(out);
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|_| "upstream sent a malformed stream event".to_owned())?;
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .or(frame.event.as_deref())
            .unwrap_or("");
        match ty {
            "error" => {
                let err = v.get("error").unwrap_or(&Value::Null);
                return Err(format!("upstream stream error: {}", error_kind(err)));
            }
            "message_start" if !self.started => {
                let msg = v.get("message").unwrap_or(&Value::Null);
                self.usage = msg.get("usage").map(usage_from).unwrap_or_default();
                self.start(
                    msg.get("id").and_then(Value::as_str),
                    msg.get("model").and_then(Value::as_str),
                    &mut out,
                );
            }
            "content_block_start" => {
                self.start(None, None, &mut out);
                self.close(&mut out);
                let upstream = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let cb = v.get("content_block").unwrap_or(&Value::Null);
                let (start, initial) = match cb.get("type").and_then(Value::as_str) {
                    Some("text") => (
                        BlockStart::Text,
                        non_empty(cb, "text").map(BlockDelta::Text),
                    ),
                    Some("thinking") => (
                        BlockStart::Thinking,
                        non_empty(cb, "thinking").map(BlockDelta::Thinking),
                    ),
                    Some("redacted_thinking") => (
                        BlockStart::RedactedThinking {
                            data: str_of(cb, "data"),
                        },
                        None,
                    ),
                    Some("tool_use") => (
                        BlockStart::ToolUse {
                            id: str_of(cb, "id"),
                            name: str_of(cb, "name"),
                        },
                        // The API starts tool blocks with `input: {}` and streams the JSON;
                        // a non-empty initial input is kept as the first fragment.
                        cb.get("input")
                            .and_then(Value::as_object)
                            .filter(|m| !m.is_empty())
                            .map(|m| {
                                BlockDelta::ToolInputJson(Value::Object(m.clone()).to_string())
                            }),
                    ),
                    _ => return Ok(out),
                };
                let index = self.next_index;
                self.next_index += 1;
                self.open = Some((upstream, index));
                out.push(StreamEvent::BlockStart {
                    index,
                    block: start,
                });
                if let Some(delta) = initial {
                    out.push(StreamEvent::Delta { index, delta });
                }
                if let Some(sig) = non_empty(cb, "signature") {
                    out.push(StreamEvent::Delta {
                        index,
                        delta: BlockDelta::Signature(sig),
                    });
                }
            }
            "content_block_delta" => {
                let upstream = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some((open_upstream, index)) = self.open else {
                    return Ok(out);
                };
                if open_upstream != upstream {
                    return Ok(out);
                }
                let d = v.get("delta").unwrap_or(&Value::Null);
                let delta = match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => non_empty(d, "text").map(BlockDelta::Text),
                    Some("thinking_delta") => non_empty(d, "thinking").map(BlockDelta::Thinking),
                    Some("signature_delta") => non_empty(d, "signature").map(BlockDelta::Signature),
                    Some("input_json_delta") => {
                        non_empty(d, "partial_json").map(BlockDelta::ToolInputJson)
                    }
                    _ => None,
                };
                if let Some(delta) = delta {
                    out.push(StreamEvent::Delta { index, delta });
                }
            }
            "content_block_stop" => {
                let upstream = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                if self.open.is_some_and(|(u, _)| u == upstream) {
                    self.close(&mut out);
                }
            }
            "message_delta" => {
                self.start(None, None, &mut out);
                let d = v.get("delta").unwrap_or(&Value::Null);
                if let Some(r) = d.get("stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(StopReason::from_anthropic(r));
                }
                if let Some(s) = d.get("stop_sequence").and_then(Value::as_str) {
                    self.stop_sequence = Some(s.to_owned());
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.usage = merge_usage(self.usage, u);
                    out.push(StreamEvent::Usage(self.usage));
                }
            }
            "message_stop" => {
                self.ended_cleanly = true;
                self.end(&mut out);
            }
            // `ping` and event types added later are not content.
            _ => {}
        }
        Ok(out)
    }

    /// End of the upstream byte stream: close the open block and finish, if not done yet.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if !self.finished {
            self.end(&mut out);
        }
        out
    }

    fn start(&mut self, id: Option<&str>, model: Option<&str>, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: id.map(str::to_owned),
                model: model.map(str::to_owned),
                usage: self.usage,
            });
        }
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((_, index)) = self.open.take() {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    fn end(&mut self, out: &mut Vec<StreamEvent>) {
        self.start(None, None, out);
        self.close(out);
        self.finished = true;
        out.push(StreamEvent::Finish {
            stop_reason: self.stop_reason.unwrap_or(StopReason::EndTurn),
            stop_sequence: self.stop_sequence.clone(),
        });
    }
}

fn non_empty(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------------------
// Streams: canonical -> Anthropic client
// ---------------------------------------------------------------------------------------

/// Renders canonical events as Messages stream events for an Anthropic client.
///
/// Frame sequence, as the real API: `message_start` (full message skeleton with usage), a
/// `ping`, then per block `content_block_start` / `content_block_delta`… /
/// `content_block_stop`, and on [`StreamRenderer::end`] `message_delta` (stop reason and full
/// cumulative usage) and `message_stop`.
#[derive(Debug)]
pub struct StreamRenderer {
    id: String,
    model: String,
    started: bool,
    done: bool,
    next_index: usize,
    /// (canonical index, client index) of the open block.
    open: Option<(usize, usize)>,
    saw_tool: bool,
    usage: Usage,
    stop_reason: Option<StopReason>,
    stop_sequence: Option<String>,
    ids: ToolIdMap,
}

fn event_frame(data: &Value) -> String {
    let ty = data.get("type").and_then(Value::as_str);
    format_frame(ty, &data.to_string())
}

impl StreamRenderer {
    /// `_include_usage` and `_created` exist for symmetry with the OpenAI renderer: Anthropic
    /// streams always carry usage and have no timestamp.
    #[must_use]
    pub fn new(id: &str, client_model: &str, _include_usage: bool, _created: i64) -> Self {
        StreamRenderer {
            id: format!("msg_{id}"),
            model: client_model.to_owned(),
            started: false,
            done: false,
            next_index: 0,
            open: None,
            saw_tool: false,
            usage: Usage::default(),
            stop_reason: None,
            stop_sequence: None,
            ids: ToolIdMap::new(Shape::Anthropic),
        }
    }

    fn ensure_started(&mut self, out: &mut Vec<String>) {
        if self.started {
            return;
        }
        self.started = true;
        let u = &self.usage;
        out.push(event_frame(&json!({
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": u.input_tokens,
                    "cache_creation_input_tokens": u.cache_write_tokens,
                    "cache_read_input_tokens": u.cache_read_tokens,
                    "output_tokens": u.output_tokens,
                },
            },
        })));
        out.push(event_frame(&json!({"type": "ping"})));
    }

    fn close(&mut self, out: &mut Vec<String>) {
        if let Some((_, client)) = self.open.take() {
            out.push(event_frame(
                &json!({"type": "content_block_stop", "index": client}),
            ));
        }
    }

    /// Frames for one canonical event (possibly none).
    pub fn event(&mut self, ev: &StreamEvent) -> Vec<String> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        match ev {
            StreamEvent::Start { usage, .. } => {
                self.usage = self.usage.max(*usage);
                self.ensure_started(&mut out);
            }
            StreamEvent::BlockStart { index, block } => {
                self.ensure_started(&mut out);
                self.close(&mut out);
                let client = self.next_index;
                self.next_index += 1;
                self.open = Some((*index, client));
                let content_block = match block {
                    BlockStart::Text => json!({"type": "text", "text": ""}),
                    BlockStart::Thinking => {
                        json!({"type": "thinking", "thinking": "", "signature": ""})
                    }
                    BlockStart::RedactedThinking { data } => {
                        json!({"type": "redacted_thinking", "data": data})
                    }
                    BlockStart::ToolUse { id, name } => {
                        self.saw_tool = true;
                        json!({"type": "tool_use", "id": self.ids.map(id), "name": name, "input": {}})
                    }
                };
                out.push(event_frame(&json!({
                    "type": "content_block_start",
                    "index": client,
                    "content_block": content_block,
                })));
            }
            StreamEvent::Delta { index, delta } => {
                let Some((open, client)) = self.open else {
                    return out;
                };
                if open != *index {
                    return out;
                }
                let d = match delta {
                    BlockDelta::Text(t) if !t.is_empty() => {
                        json!({"type": "text_delta", "text": t})
                    }
                    BlockDelta::Thinking(t) if !t.is_empty() => {
                        json!({"type": "thinking_delta", "thinking": t})
                    }
                    BlockDelta::Signature(s) if !s.is_empty() => {
                        json!({"type": "signature_delta", "signature": s})
                    }
                    BlockDelta::ToolInputJson(j) if !j.is_empty() => {
                        json!({"type": "input_json_delta", "partial_json": j})
                    }
                    _ => return out,
                };
                out.push(event_frame(&json!({
                    "type": "content_block_delta",
                    "index": client,
                    "delta": d,
                })));
            }
            StreamEvent::BlockStop { index } => {
                if self.open.is_some_and(|(open, _)| open == *index) {
                    self.close(&mut out);
                }
            }
            StreamEvent::Usage(u) => self.usage = self.usage.max(*u),
            StreamEvent::Finish {
                stop_reason,
                stop_sequence,
            } => {
                self.stop_reason = Some(*stop_reason);
                self.stop_sequence.clone_from(stop_sequence);
            }
        }
        out
    }

    /// Frames after the upstream ended successfully: `message_delta` with the stop reason and
    /// the full usage, then `message_stop`.
    pub fn end(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        self.done = true;
        self.ensure_started(&mut out);
        self.close(&mut out);
        let reason = self.stop_reason.unwrap_or(if self.saw_tool {
            StopReason::ToolUse
        } else {
            StopReason::EndTurn
        });
        let u = &self.usage;
        out.push(event_frame(&json!({
            "type": "message_delta",
            "delta": {"stop_reason": reason.as_anthropic(), "stop_sequence": self.stop_sequence},
            "usage": {
                "input_tokens": u.input_tokens,
                "cache_creation_input_tokens": u.cache_write_tokens,
                "cache_read_input_tokens": u.cache_read_tokens,
                "output_tokens": u.output_tokens,
            },
        })));
        out.push(event_frame(&json!({"type": "message_stop"})));
        out
    }

    /// The final frame of a stream that failed after the first byte: `event: error`, never a
    /// `message_stop`, so the client cannot mistake it for a complete answer.
    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        vec![error_frame(err)]
    }
}

fn error_frame(err: &GatewayError) -> String {
    format_frame(
        Some("error"),
        &err.render(Shape::Anthropic).body.to_string(),
    )
}

// ---------------------------------------------------------------------------------------
// Streams: same shape
// ---------------------------------------------------------------------------------------

/// Forwards an Anthropic upstream's stream to an Anthropic client: `message_start`'s
/// `message.model` is replaced by the client's string; every other event is forwarded with
/// its data exactly as received.
///
/// Upstream `error` events are not forwarded (their text may echo the prompt): the caller's
/// [`StreamParser`] reports them and the caller answers with [`PassthroughStream::error`].
#[derive(Debug)]
pub struct PassthroughStream {
    model: String,
    done: bool,
}

impl PassthroughStream {
    /// `_client_wants_usage` exists for symmetry with the OpenAI passthrough: Anthropic
    /// streams always carry usage.
    #[must_use]
    pub fn new(client_model: &str, _client_wants_usage: bool) -> Self {
        PassthroughStream {
            model: client_model.to_owned(),
            done: false,
        }
    }

    /// The frame to forward for `frame`, or `None` to drop it.
    pub fn rewrite(&mut self, frame: &SseFrame) -> Option<String> {
        if self.done || frame.data.trim().is_empty() {
            return None;
        }
        let verbatim = || Some(format_frame(frame.event.as_deref(), &frame.data));
        // Only `message_start` (model echo) and `error` (never forwarded) need the JSON; the
        // named event line says which one this is without parsing the data.
        if let Some(ev) = frame.event.as_deref()
            && ev != "message_start"
            && ev != "error"
        {
            return verbatim();
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&frame.data) else {
            return verbatim();
        };
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .or(frame.event.as_deref());
        match ty {
            Some("error") => None,
            Some("message_start") => {
                if let Some(msg) = v.get_mut("message").and_then(Value::as_object_mut) {
                    msg.insert("model".into(), Value::String(self.model.clone()));
                }
                Some(format_frame(frame.event.as_deref(), &v.to_string()))
            }
            _ => verbatim(),
        }
    }

    /// The final frame when the stream fails mid-way (see [`StreamRenderer::error`]).
    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        vec![error_frame(err)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::StreamAccumulator;
    use crate::sse::SseParser;

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
            err_message(json!({"model": "m", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}))
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
            parse_response(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"m"}}"#
            )
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
                data:
                    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
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
            data: r#"{"type":"error","error":{"type":"api_error","message":"echo of prompt"}}"#
                .into(),
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
}
