//! Messages requests: a client's body into the canonical IR ([`parse_request`]) and a
//! canonical request onto this wire for an Anthropic upstream ([`render_request`]).

use super::DEFAULT_MAX_TOKENS;
use crate::canonical::ParsedRequest;
use crate::canonical::wire::{self, Obj, Res, empty_object_schema, foreign, text_block};
use crate::canonical::{
    ChatRequest, ContentBlock, ImageSource, Message, Opaque, Role, Shape, SystemBlock, ToolChoice,
    ToolDef, ToolResultContent,
};
use crate::error::{GatewayError, invalid};
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};

/// Parse and validate a client's Messages body.
///
/// # Errors
/// `InvalidRequest` naming the offending JSON path (bad JSON, missing `model`, `messages` or
/// `max_tokens`, unknown role, malformed block, …).
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest, GatewayError> {
    wire::parse_request(body, request_from_map)
}

fn request_from_map(map: &Map<String, Value>) -> Res<ChatRequest> {
    let top = Obj::root(map);
    let mut req = ChatRequest {
        model: top.req_str("model")?.to_owned(),
        ..ChatRequest::default()
    };
    let messages = top.non_empty_array("messages")?;
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
            Some(Value::String(s)) => vec![text_block(s)],
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
        None => empty_object_schema(),
    };
    Ok(ToolDef {
        name: tool.req_str("name")?.to_owned(),
        description: tool.str("description")?.map(str::to_owned),
        input_schema,
        cache_control: tool.get("cache_control").cloned(),
    })
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

/// A tool input for this wire: an object, or `{}` for raw argument text an OpenAI upstream
/// produced that is not a JSON object (see `ContentBlock::ToolUse`).
pub(super) fn input_object(input: &Value) -> Value {
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
        tools.push(foreign(other, Shape::Anthropic, "tool")?);
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
                            ToolResultContent::Other(o) => {
                                foreign(o, Shape::Anthropic, "tool result block")
                            }
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
        ContentBlock::Other(o) => foreign(o, Shape::Anthropic, "content block")?,
    }))
}
