//! Chat Completions requests: a client's body into the canonical IR ([`parse_request`]) and
//! a canonical request onto this wire for an OpenAI-compatible upstream ([`render_request`]).

use crate::canonical::ParsedRequest;
use crate::canonical::wire::{
    self, Obj, Parts, Res, arguments_string, foreign, function_fields, function_tool,
    image_from_url, image_url, joined_system, openai_choice, openai_tool_choice, text_block,
};
use crate::canonical::{
    ChatRequest, ContentBlock, ImageSource, Message, Opaque, Role, Shape, SystemBlock, ToolChoice,
    ToolResultContent,
};
use crate::error::{GatewayError, invalid};
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};

/// Parse and validate a client's Chat Completions body.
///
/// # Errors
/// `InvalidRequest` naming the offending JSON path (bad JSON, missing `model`/`messages`,
/// unknown role, tool-call `arguments` that are not a JSON object, …).
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
    // True while the last canonical message was built from `tool` messages: more tool
    // results, and then one user message, join it.
    let mut tool_turn = false;
    for (i, value) in messages.iter().enumerate() {
        let msg = Obj::at(value, format!("messages[{i}]"))?;
        let role = msg.req_str("role")?;
        match role {
            "system" | "developer" => req.system.push(SystemBlock {
                text: system_text(&msg)?,
                cache_control: None,
            }),
            "user" => {
                let content = user_content(&msg)?;
                match req.messages.last_mut() {
                    Some(last) if tool_turn => last.content.extend(content),
                    _ => req.messages.push(Message {
                        role: Role::User,
                        content,
                    }),
                }
                tool_turn = false;
            }
            "assistant" => {
                req.messages.push(Message {
                    role: Role::Assistant,
                    content: assistant_content(&msg)?,
                });
                tool_turn = false;
            }
            "tool" => {
                let block = tool_result(&msg)?;
                match req.messages.last_mut() {
                    Some(last) if tool_turn => last.content.push(block),
                    _ => req.messages.push(Message {
                        role: Role::User,
                        content: vec![block],
                    }),
                }
                tool_turn = true;
            }
            other => {
                return Err(invalid(format!(
                    "{} '{other}' is not supported (expected system, developer, user, assistant or tool)",
                    msg.field("role")
                )));
            }
        }
    }
    if let Some(tools) = top.array("tools")? {
        for (i, value) in tools.iter().enumerate() {
            let tool = Obj::at(value, format!("tools[{i}]"))?;
            match tool.str("type")? {
                None | Some("function") => {
                    req.tools.push(function_tool(&tool.req_obj("function")?)?)
                }
                // Other tool kinds (e.g. `custom`) only make sense to an OpenAI upstream.
                Some(_) => req.other_tools.push(Opaque {
                    shape: Shape::OpenAi,
                    value: value.clone(),
                }),
            }
        }
    }
    req.tool_choice = match top.get("tool_choice") {
        None => None,
        Some(v) => Some(openai_tool_choice(v, "a function", named_tool)?),
    };
    req.max_tokens = match top.positive_int("max_completion_tokens")? {
        Some(n) => Some(n),
        None => top.positive_int("max_tokens")?,
    };
    req.temperature = top.number("temperature")?;
    req.top_p = top.number("top_p")?;
    req.stop = top.strings("stop")?;
    req.stream = top.bool("stream")?.unwrap_or(false);
    if let Some(opts) = top.obj("stream_options")? {
        req.include_usage = opts.bool("include_usage")?.unwrap_or(false);
    }
    req.parallel_tool_calls = top.bool("parallel_tool_calls")?;
    req.user = top.str("user")?.map(str::to_owned);
    Ok(req)
}

/// Text of a system/developer message: a string, or text parts joined with `\n`.
fn system_text(msg: &Obj<'_>) -> Res<String> {
    match msg.get("content") {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let part = Obj::at(part, format!("{}[{j}]", msg.field("content")))?;
                if part.str("type")? != Some("text") {
                    return Err(invalid(format!(
                        "{} must be 'text' in a system message",
                        part.field("type")
                    )));
                }
                texts.push(part.req_str("text")?);
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(invalid(format!(
            "{} must be a string or an array of content parts",
            msg.field("content")
        ))),
    }
}

fn user_content(msg: &Obj<'_>) -> Res<Vec<ContentBlock>> {
    match msg.parts()? {
        Parts::Text(s) => Ok(vec![text_block(s)]),
        Parts::List(list) => list
            .iter()
            .map(|part| match part.req_str("type")? {
                "text" => Ok(text_block(part.req_str("text")?)),
                "image_url" => Ok(ContentBlock::Image {
                    source: image_part(part)?,
                    cache_control: None,
                }),
                _ => Ok(ContentBlock::Other(Opaque {
                    shape: Shape::OpenAi,
                    value: Value::Object(part.map.clone()),
                })),
            })
            .collect(),
    }
}

/// The image of an `image_url` part (`{"url": …}`, or a bare string as some clients send).
fn image_part(part: &Obj<'_>) -> Res<ImageSource> {
    let (url, path) = match part.get("image_url") {
        Some(Value::String(s)) => (s.as_str(), part.field("image_url")),
        Some(Value::Object(_)) => {
            let inner = part.req_obj("image_url")?;
            (inner.req_str("url")?, inner.field("url"))
        }
        _ => {
            return Err(invalid(format!(
                "{} is required and must be an object with a 'url'",
                part.field("image_url")
            )));
        }
    };
    image_from_url(url, &path)
}

fn assistant_content(msg: &Obj<'_>) -> Res<Vec<ContentBlock>> {
    let mut content = Vec::new();
    match msg.parts()? {
        // An empty string is how clients say "no text" next to tool calls.
        Parts::Text("") => {}
        Parts::Text(s) => content.push(text_block(s)),
        Parts::List(list) => {
            for part in list {
                match part.req_str("type")? {
                    "text" => content.push(text_block(part.req_str("text")?)),
                    "refusal" => content.push(text_block(part.req_str("refusal")?)),
                    _ => content.push(ContentBlock::Other(Opaque {
                        shape: Shape::OpenAi,
                        value: Value::Object(part.map.clone()),
                    })),
                }
            }
        }
    }
    if let Some(calls) = msg.array("tool_calls")? {
        for (k, call) in calls.iter().enumerate() {
            let call = Obj::at(call, format!("{}[{k}]", msg.field("tool_calls")))?;
            let id = call.req_str("id")?;
            let function = call.req_obj("function")?;
            let name = function.req_str("name")?;
            let input = function.call_arguments()?;
            content.push(ContentBlock::ToolUse {
                id: id.to_owned(),
                name: name.to_owned(),
                input,
                cache_control: None,
            });
        }
    }
    Ok(content)
}

fn tool_result(msg: &Obj<'_>) -> Res<ContentBlock> {
    let tool_use_id = msg.req_str("tool_call_id")?.to_owned();
    let content = match msg.parts()? {
        Parts::Text(s) => vec![ToolResultContent::Text(s.to_owned())],
        Parts::List(list) => list
            .iter()
            .map(|part| match part.req_str("type")? {
                "text" => Ok(ToolResultContent::Text(part.req_str("text")?.to_owned())),
                "image_url" => Ok(ToolResultContent::Image(image_part(part)?)),
                _ => Ok(ToolResultContent::Other(Opaque {
                    shape: Shape::OpenAi,
                    value: Value::Object(part.map.clone()),
                })),
            })
            .collect::<Res<Vec<_>>>()?,
    };
    Ok(ContentBlock::ToolResult {
        tool_use_id,
        content,
        is_error: false,
        cache_control: None,
    })
}

/// A named tool in `tool_choice`: `{"type": "function", "function": {"name": …}}`.
fn named_tool(obj: &Obj<'_>) -> Res<ToolChoice> {
    if obj.str("type")? != Some("function") {
        return Err(invalid("tool_choice.type must be 'function'"));
    }
    let function = obj.req_obj("function")?;
    Ok(ToolChoice::Tool(function.req_str("name")?.to_owned()))
}

/// Render a canonical request (from an Anthropic-shaped client) for an OpenAI-compatible
/// upstream. Tool ids are mapped to the `call_` form (see `tool_ids`).
///
/// # Errors
/// `InvalidRequest` when the request holds something this wire cannot express (an Anthropic
/// `document` block, a server tool, …), naming its type.
pub fn render_request(req: &ChatRequest, upstream_model: &str) -> Result<Value, GatewayError> {
    let mut ids = ToolIdMap::new(Shape::OpenAi);
    let mut out = Map::new();
    out.insert("model".into(), Value::String(upstream_model.to_owned()));

    let mut messages = Vec::new();
    if let Some(system) = joined_system(req) {
        messages.push(json!({"role": "system", "content": system}));
    }
    for msg in &req.messages {
        match msg.role {
            Role::User => render_user(msg, &mut ids, &mut messages)?,
            Role::Assistant => messages.push(render_assistant(msg, &mut ids)?),
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    let mut tools: Vec<Value> = req
        .tools
        .iter()
        .map(|t| json!({"type": "function", "function": function_fields(t)}))
        .collect();
    for other in &req.other_tools {
        tools.push(foreign(other, Shape::OpenAi, "tool")?);
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        // OpenAI rejects `tool_choice` and `parallel_tool_calls` without `tools`.
        if let Some(choice) = &req.tool_choice {
            let choice = openai_choice(
                choice,
                |name| json!({"type": "function", "function": {"name": name}}),
            );
            out.insert("tool_choice".into(), choice);
        }
        if let Some(p) = req.parallel_tool_calls {
            out.insert("parallel_tool_calls".into(), Value::Bool(p));
        }
    }
    if let Some(n) = req.max_tokens {
        out.insert("max_completion_tokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        out.insert("top_p".into(), json!(p));
    }
    if !req.stop.is_empty() {
        out.insert("stop".into(), json!(req.stop));
    }
    if req.stream {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(u) = &req.user {
        out.insert("user".into(), Value::String(u.clone()));
    }
    Ok(Value::Object(out))
}

fn image_url_part(source: &ImageSource) -> Value {
    json!({"type": "image_url", "image_url": {"url": image_url(source)}})
}

/// A user message: its tool results first, as `tool` messages, then the rest (plus images
/// that were inside tool results) as one user message.
fn render_user(msg: &Message, ids: &mut ToolIdMap, out: &mut Vec<Value>) -> Res<()> {
    let mut rest: Vec<Value> = Vec::new();
    let mut tool_images: Vec<Value> = Vec::new();
    let mut all_text = true;
    for block in &msg.content {
        match block {
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                ..
            } => {
                let mut texts = Vec::new();
                for c in content {
                    match c {
                        ToolResultContent::Text(t) => texts.push(t.as_str()),
                        ToolResultContent::Image(src) => tool_images.push(image_url_part(src)),
                        ToolResultContent::Other(o) => {
                            foreign(o, Shape::OpenAi, "tool result block")?;
                        }
                    }
                }
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": ids.map(tool_use_id),
                    "content": texts.join("\n"),
                }));
            }
            ContentBlock::Text { text, .. } => {
                rest.push(json!({"type": "text", "text": text}));
            }
            ContentBlock::Image { source, .. } => {
                all_text = false;
                rest.push(image_url_part(source));
            }
            ContentBlock::Other(o) => {
                all_text = false;
                rest.push(foreign(o, Shape::OpenAi, "content block")?);
            }
            ContentBlock::ToolUse { .. } => {
                return Err(invalid(
                    "tool_use blocks are only allowed in assistant messages",
                ));
            }
            ContentBlock::Thinking { .. } | ContentBlock::RedactedThinking { .. } => {}
        }
    }
    let had_tool_results = msg
        .content
        .iter()
        .any(|b| matches!(b, ContentBlock::ToolResult { .. }));
    if !tool_images.is_empty() {
        all_text = false;
        tool_images.append(&mut rest);
        rest = tool_images;
    }
    if rest.is_empty() {
        if !had_tool_results {
            out.push(json!({"role": "user", "content": ""}));
        }
        return Ok(());
    }
    let content = match rest.as_slice() {
        [only] if all_text => only.get("text").cloned().unwrap_or(Value::Null),
        _ => Value::Array(rest),
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

pub(super) fn tool_call(id: String, name: &str, input: &Value) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": arguments_string(input)},
    })
}

fn render_assistant(msg: &Message, ids: &mut ToolIdMap) -> Res<Value> {
    let mut text = String::new();
    let mut has_text = false;
    let mut others = Vec::new();
    let mut calls = Vec::new();
    for block in &msg.content {
        match block {
            ContentBlock::Text { text: t, .. } => {
                has_text = true;
                text.push_str(t);
            }
            ContentBlock::ToolUse {
                id, name, input, ..
            } => calls.push(tool_call(ids.map(id), name, input)),
            ContentBlock::Other(o) => others.push(foreign(o, Shape::OpenAi, "content block")?),
            ContentBlock::Thinking { .. } | ContentBlock::RedactedThinking { .. } => {}
            ContentBlock::Image { .. } | ContentBlock::ToolResult { .. } => {
                return Err(invalid(
                    "assistant messages cannot carry images or tool results on the OpenAI wire",
                ));
            }
        }
    }
    let content = if !others.is_empty() {
        let mut parts = Vec::new();
        if has_text {
            parts.push(json!({"type": "text", "text": text}));
        }
        parts.append(&mut others);
        Value::Array(parts)
    } else if has_text {
        Value::String(text)
    } else if !calls.is_empty() {
        Value::Null
    } else {
        Value::String(String::new())
    };
    let mut out = Map::new();
    out.insert("role".into(), json!("assistant"));
    out.insert("content".into(), content);
    if !calls.is_empty() {
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(out))
}
