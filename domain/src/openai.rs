//! OpenAI Chat Completions (`POST /v1/chat/completions`) <-> canonical IR.
//!
//! Inbound: [`parse_request`] validates a client body into a [`ChatRequest`] (errors name the
//! JSON path) and keeps the raw object; same-shape traffic then goes out through
//! [`passthrough_request`] (unknown fields untouched, only `model` replaced) while
//! cross-shape traffic goes through the other wire's `render_request`.
//!
//! Outbound to an OpenAI-compatible upstream: [`render_request`] (from an Anthropic-shaped
//! client), [`parse_response`] / [`StreamParser`] to read what comes back.
//!
//! Towards an OpenAI client: [`render_response`] / [`StreamRenderer`] for cross-shape answers,
//! [`passthrough_response`] / [`PassthroughStream`] for same-shape ones.
//!
//! Invariants and lossy points (all deliberate):
//! - System and developer messages are hoisted into `ChatRequest::system`, wherever they
//!   appear; rendering puts all system text into one leading system message (`\n\n`-joined).
//! - `tool` messages become `ToolResult` blocks of a user message; consecutive tool messages
//!   share one user message and a user message right after them is merged into it.
//! - Assistant text is one string on this wire: several canonical text blocks are
//!   concatenated without a separator (Anthropic splits text at citations, and a streaming
//!   client concatenates deltas the same way). Thinking blocks have no place here and are
//!   dropped, in requests and responses alike.
//! - Tool results carry text only: their text parts are joined with `\n`, `is_error` is
//!   dropped, and images inside a tool result move to the user message that follows the tool
//!   messages (there is no other place for them).
//! - Usage: canonical buckets are disjoint, so `prompt_tokens` is rendered as
//!   input + cache read + cache write, and parsed back as input = `prompt_tokens` -
//!   `cached_tokens` (clamped at 0).
//! - A stream rendered for a client always ends with `[DONE]` after success, and never after
//!   a failure (then the last frame is `{"error":{…}}`), so a client cannot mistake a broken
//!   stream for a complete one.

pub use crate::canonical::ParsedRequest;
use crate::canonical::wire::{Obj, Res, count, error_kind, parse_body};
use crate::canonical::{
    BlockDelta, BlockStart, ChatRequest, ChatResponse, ContentBlock, ImageSource, Message, Opaque,
    Role, Shape, StopReason, StreamEvent, SystemBlock, ToolChoice, ToolDef, ToolResultContent,
    Usage, parse_tool_input,
};
use crate::error::{GatewayError, invalid};
use crate::sse::{SseFrame, format_frame};
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// Parse and validate a client's Chat Completions body.
///
/// # Errors
/// `InvalidRequest` naming the offending JSON path (bad JSON, missing `model`/`messages`,
/// unknown role, tool-call `arguments` that are not a JSON object, …).
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
                None | Some("function") => req.tools.push(tool_def(&tool)?),
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
        Some(v) => Some(tool_choice(v)?),
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

/// The content parts of a message, each with its path; a string is one text part.
enum Parts<'a> {
    Text(&'a str),
    List(Vec<Obj<'a>>),
}

fn parts<'a>(msg: &Obj<'a>) -> Res<Parts<'a>> {
    match msg.get("content") {
        None => Ok(Parts::List(Vec::new())),
        Some(Value::String(s)) => Ok(Parts::Text(s)),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(j, p)| Obj::at(p, format!("{}[{j}]", msg.field("content"))))
            .collect::<Res<Vec<_>>>()
            .map(Parts::List),
        Some(_) => Err(invalid(format!(
            "{} must be a string or an array of content parts",
            msg.field("content")
        ))),
    }
}

fn text_block(text: &str) -> ContentBlock {
    ContentBlock::Text {
        text: text.to_owned(),
        cache_control: None,
    }
}

fn user_content(msg: &Obj<'_>) -> Res<Vec<ContentBlock>> {
    match parts(msg)? {
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

/// A `data:<media type>;base64,<data>` URL becomes inline base64; anything else is a URL.
fn image_from_url(url: &str, path: &str) -> Res<ImageSource> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(ImageSource::Url {
            url: url.to_owned(),
        });
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(invalid(format!("{path} is not a valid data URL")));
    };
    let Some(media_type) = meta.strip_suffix(";base64") else {
        return Err(invalid(format!("{path} must be a base64 data URL")));
    };
    Ok(ImageSource::Base64 {
        media_type: media_type.to_owned(),
        data: data.to_owned(),
    })
}

fn assistant_content(msg: &Obj<'_>) -> Res<Vec<ContentBlock>> {
    let mut content = Vec::new();
    match parts(msg)? {
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
            let input = match function.get("arguments") {
                None => Value::Object(Map::new()),
                Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
                Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                    Ok(v @ Value::Object(_)) => v,
                    Ok(_) => {
                        return Err(invalid(format!(
                            "{} must encode a JSON object",
                            function.field("arguments")
                        )));
                    }
                    Err(e) => {
                        return Err(invalid(format!(
                            "{} is not valid JSON: {e}",
                            function.field("arguments")
                        )));
                    }
                },
                Some(v @ Value::Object(_)) => v.clone(),
                Some(_) => {
                    return Err(invalid(format!(
                        "{} must be a JSON string or an object",
                        function.field("arguments")
                    )));
                }
            };
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
    let content = match parts(msg)? {
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

/// The schema a tool without `parameters` accepts: any object.
fn empty_object_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

fn tool_def(tool: &Obj<'_>) -> Res<ToolDef> {
    let function = tool.req_obj("function")?;
    let input_schema = match function.obj("parameters")? {
        Some(p) => Value::Object(p.map.clone()),
        None => empty_object_schema(),
    };
    Ok(ToolDef {
        name: function.req_str("name")?.to_owned(),
        description: function.str("description")?.map(str::to_owned),
        input_schema,
        cache_control: None,
    })
}

fn tool_choice(v: &Value) -> Res<ToolChoice> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Any),
            _ => Err(invalid(format!(
                "tool_choice '{s}' is not supported (expected auto, none, required or a function)"
            ))),
        },
        Value::Object(map) => {
            let obj = Obj {
                map,
                path: "tool_choice".to_owned(),
            };
            if obj.str("type")? != Some("function") {
                return Err(invalid("tool_choice.type must be 'function'"));
            }
            let function = obj.req_obj("function")?;
            Ok(ToolChoice::Tool(function.req_str("name")?.to_owned()))
        }
        _ => Err(invalid("tool_choice must be a string or an object")),
    }
}

/// The client's body for an OpenAI-compatible upstream: every field as the client wrote it,
/// `model` replaced, and `stream_options.include_usage` forced on for streams (the gateway
/// needs usage to bill; [`PassthroughStream`] hides the extra chunk from clients that did not
/// ask for it).
#[must_use]
pub fn passthrough_request(mut raw: Map<String, Value>, upstream_model: &str) -> Value {
    raw.insert("model".to_owned(), Value::String(upstream_model.to_owned()));
    if raw.get("stream").and_then(Value::as_bool) == Some(true) {
        match raw.get_mut("stream_options") {
            Some(Value::Object(opts)) => {
                opts.insert("include_usage".to_owned(), Value::Bool(true));
            }
            _ => {
                raw.insert("stream_options".to_owned(), json!({"include_usage": true}));
            }
        }
    }
    Value::Object(raw)
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
    let system: Vec<&str> = req
        .system
        .iter()
        .map(|b| b.text.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system.join("\n\n")}));
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
        .map(|t| {
            let mut function = Map::new();
            function.insert("name".into(), Value::String(t.name.clone()));
            if let Some(d) = &t.description {
                function.insert("description".into(), Value::String(d.clone()));
            }
            function.insert("parameters".into(), t.input_schema.clone());
            json!({"type": "function", "function": function})
        })
        .collect();
    for other in &req.other_tools {
        tools.push(foreign(other, "tool")?);
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        // OpenAI rejects `tool_choice` and `parallel_tool_calls` without `tools`.
        if let Some(choice) = &req.tool_choice {
            let choice = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::Any => json!("required"),
                ToolChoice::None => json!("none"),
                ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
            };
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

/// An opaque object is only expressible on the wire it came from.
fn foreign(o: &Opaque, what: &str) -> Res<Value> {
    if o.shape == Shape::OpenAi {
        Ok(o.value.clone())
    } else {
        Err(invalid(format!(
            "{what} type '{}' cannot be sent to an OpenAI-compatible upstream",
            o.kind()
        )))
    }
}

fn image_url_part(source: &ImageSource) -> Value {
    let url = match source {
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        ImageSource::Url { url } => url.clone(),
    };
    json!({"type": "image_url", "image_url": {"url": url}})
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
                            foreign(o, "tool result block")?;
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
                rest.push(foreign(o, "content block")?);
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

/// The `arguments` string of a tool call: the input as compact JSON, or the upstream's raw
/// text when it was not a JSON object (see `ContentBlock::ToolUse`).
fn arguments_string(input: &Value) -> String {
    match input {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

fn tool_call(id: String, name: &str, input: &Value) -> Value {
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
            ContentBlock::Other(o) => others.push(foreign(o, "content block")?),
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

// ---------------------------------------------------------------------------------------
// Complete responses
// ---------------------------------------------------------------------------------------

/// Usage buckets from an OpenAI `usage` object (disjoint: cached and cache-write tokens are
/// taken out of `prompt_tokens`, clamped at 0).
fn usage_from(u: &Value) -> Usage {
    let details = u.get("prompt_tokens_details").unwrap_or(&Value::Null);
    let cached = count(details, "cached_tokens");
    let written = count(details, "cache_write_tokens");
    Usage {
        input_tokens: count(u, "prompt_tokens")
            .saturating_sub(cached)
            .saturating_sub(written),
        output_tokens: count(u, "completion_tokens"),
        cache_read_tokens: cached,
        cache_write_tokens: written,
    }
}

fn usage_json(u: &Usage) -> Value {
    let prompt = u.total_input();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
    })
}

/// Reasoning text of a message or delta (`reasoning_content` from vLLM/DeepSeek,
/// `reasoning` from OpenRouter and newer vLLM).
fn reasoning(v: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

/// Parse a complete upstream answer.
///
/// # Errors
/// A short description when the body is not a JSON object or is an error envelope (the
/// message carries the upstream error type/code only, never its text).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("upstream response is not valid JSON: {e}"))?;
    response_from_value(&v)
}

fn response_from_value(v: &Value) -> Result<ChatResponse, String> {
    let Some(obj) = v.as_object() else {
        return Err("upstream response is not a JSON object".to_owned());
    };
    if let Some(err) = obj.get("error").filter(|e| !e.is_null()) {
        return Err(format!("upstream returned an error: {}", error_kind(err)));
    }
    let choice = obj
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(r) = reasoning(message) {
        content.push(ContentBlock::Thinking {
            thinking: r.to_owned(),
            signature: None,
        });
    }
    match message.get("content") {
        Some(Value::String(s)) if !s.is_empty() => content.push(text_block(s)),
        Some(Value::Array(parts)) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    content.push(text_block(t));
                }
            }
        }
        _ => {}
    }
    if let Some(r) = message.get("refusal").and_then(Value::as_str) {
        content.push(text_block(r));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let function = call.get("function").unwrap_or(&Value::Null);
            let input = match function.get("arguments") {
                Some(Value::String(s)) => parse_tool_input(s),
                Some(v @ Value::Object(_)) => v.clone(),
                _ => Value::Object(Map::new()),
            };
            content.push(ContentBlock::ToolUse {
                id: str_field(call, "id"),
                name: str_field(function, "name"),
                input,
                cache_control: None,
            });
        }
    }
    Ok(ChatResponse {
        id: obj.get("id").and_then(Value::as_str).map(str::to_owned),
        model: obj.get("model").and_then(Value::as_str).map(str::to_owned),
        content,
        stop_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map_or(StopReason::EndTurn, StopReason::from_openai),
        stop_sequence: None,
        usage: obj.get("usage").map(usage_from).unwrap_or_default(),
    })
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
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

/// Render a canonical answer (from an Anthropic upstream) for an OpenAI client.
/// Text blocks are concatenated; thinking and opaque server-tool blocks are dropped; tool ids
/// become `call_…`.
#[must_use]
pub fn render_response(resp: &ChatResponse, client_model: &str, id: &str, created: i64) -> Value {
    let mut ids = ToolIdMap::new(Shape::OpenAi);
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for block in &resp.content {
        match block {
            ContentBlock::Text { text: t, .. } => text.get_or_insert_with(String::new).push_str(t),
            ContentBlock::ToolUse {
                id, name, input, ..
            } => calls.push(tool_call(ids.map(id), name, input)),
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), text.map_or(Value::Null, Value::String));
    message.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": client_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": resp.stop_reason.as_openai(),
        }],
        "usage": usage_json(&resp.usage),
    })
}

// ---------------------------------------------------------------------------------------
// Streams: upstream -> canonical
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenKind {
    Text,
    Thinking,
    /// A tool call, keyed by the upstream's `tool_calls[].index`.
    Tool(u64),
}

/// Turns an OpenAI-compatible upstream's SSE chunks into canonical [`StreamEvent`]s.
///
/// Content arrives as one text stream plus tool-call fragments; blocks are cut where the kind
/// changes (reasoning, text, a new tool-call index). Tool calls are expected one after the
/// other, as every known server sends them: an argument fragment for a tool call whose block
/// was already closed cannot be placed without breaking the one-open-block invariant and is
/// dropped.
#[derive(Debug, Default)]
pub struct StreamParser {
    started: bool,
    finished: bool,
    ended_cleanly: bool,
    next_index: usize,
    open: Option<(usize, OpenKind)>,
    /// (key, id) of every tool call seen, in order.
    tools: Vec<(u64, String)>,
    finish_reason: Option<String>,
}

impl StreamParser {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the upstream signalled the end itself (`[DONE]` or a `finish_reason`), as
    /// opposed to a connection that simply stopped.
    #[must_use]
    pub fn ended_cleanly(&self) -> bool {
        self.ended_cleanly
    }

    /// Consume one frame.
    ///
    /// # Errors
    /// An upstream error chunk (`{"error":{…}}`) or a chunk that is not JSON; the message names
    /// the error type/code only.
    pub fn push(&mut self, frame: &SseFrame) -> Result<Vec<StreamEvent>, String> {
        let mut out = Vec::new();
        let data = frame.data.trim();
        if self.finished || data.is_empty() {
            return Ok(out);
        }
        if data == "[DONE]" {
            self.ended_cleanly = true;
            self.end(&mut out);
            return Ok(out);
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|_| "upstream sent a malformed stream chunk".to_owned())?;
        self.push_json(&v)
    }

    /// Consume one chunk the caller already parsed (same-shape streams parse each frame once
    /// for both this parser and [`PassthroughStream::rewrite_json`]). `[DONE]` and empty
    /// frames go through [`StreamParser::push`].
    ///
    /// # Errors
    /// As [`StreamParser::push`].
    pub fn push_json(&mut self, v: &Value) -> Result<Vec<StreamEvent>, String> {
        let mut out = Vec::new();
        if self.finished {
            return Ok(out);
        }
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(format!("upstream stream error: {}", error_kind(err)));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: v.get("id").and_then(Value::as_str).map(str::to_owned),
                model: v.get("model").and_then(Value::as_str).map(str::to_owned),
                usage: Usage::default(),
            });
        }
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // Only the first choice is relayed (the gateway never asks for `n` > 1).
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.get("delta") {
                if let Some(r) = reasoning(delta) {
                    self.fragment(
                        OpenKind::Thinking,
                        BlockDelta::Thinking(r.to_owned()),
                        &mut out,
                    );
                }
                for key in ["content", "refusal"] {
                    if let Some(t) = delta
                        .get(key)
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                    {
                        self.fragment(OpenKind::Text, BlockDelta::Text(t.to_owned()), &mut out);
                    }
                }
                if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                    for (pos, call) in calls.iter().enumerate() {
                        self.tool_fragment(call, pos, &mut out);
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(reason.to_owned());
                self.ended_cleanly = true;
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            out.push(StreamEvent::Usage(usage_from(u)));
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

    fn end(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: None,
                model: None,
                usage: Usage::default(),
            });
        }
        self.close(out);
        self.finished = true;
        out.push(StreamEvent::Finish {
            stop_reason: self
                .finish_reason
                .as_deref()
                .map_or(StopReason::EndTurn, StopReason::from_openai),
            stop_sequence: None,
        });
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    fn open_block(
        &mut self,
        kind: OpenKind,
        start: BlockStart,
        out: &mut Vec<StreamEvent>,
    ) -> usize {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        out.push(StreamEvent::BlockStart {
            index,
            block: start,
        });
        index
    }

    /// A text or reasoning fragment: continue the open block of that kind or open a new one.
    fn fragment(&mut self, kind: OpenKind, delta: BlockDelta, out: &mut Vec<StreamEvent>) {
        let index = match self.open {
            Some((index, k)) if k == kind => index,
            _ => {
                let start = if kind == OpenKind::Thinking {
                    BlockStart::Thinking
                } else {
                    BlockStart::Text
                };
                self.open_block(kind, start, out)
            }
        };
        out.push(StreamEvent::Delta { index, delta });
    }

    fn tool_fragment(&mut self, call: &Value, pos: usize, out: &mut Vec<StreamEvent>) {
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let function = call.get("function").unwrap_or(&Value::Null);
        let args = function
            .get("arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        // The upstream's `index` identifies the call; servers that omit it are followed by
        // id (a new id is a new call), else by position in the array.
        let key = match call.get("index").and_then(Value::as_u64) {
            Some(k) => k,
            None => match id {
                Some(id) => match self.tools.iter().find(|(_, known)| known == id) {
                    Some((k, _)) => *k,
                    None => (1 << 32) + self.tools.len() as u64,
                },
                None => match self.open {
                    Some((_, OpenKind::Tool(k))) => k,
                    _ => pos as u64,
                },
            },
        };
        let index = match self.open {
            Some((index, OpenKind::Tool(k))) if k == key => index,
            _ if self.tools.iter().any(|(k, _)| *k == key) => return,
            _ => {
                let id = id.map_or_else(|| format!("call_{}", self.tools.len()), str::to_owned);
                self.tools.push((key, id.clone()));
                let name = function
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                self.open_block(OpenKind::Tool(key), BlockStart::ToolUse { id, name }, out)
            }
        };
        if !args.is_empty() {
            out.push(StreamEvent::Delta {
                index,
                delta: BlockDelta::ToolInputJson(args.to_owned()),
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// Streams: canonical -> OpenAI client
// ---------------------------------------------------------------------------------------

/// Renders canonical events as Chat Completions chunks for an OpenAI client.
///
/// Frame sequence: a first chunk with `delta: {"role":"assistant","content":"","refusal":null}`,
/// content and tool-call chunks, a finish chunk (`delta: {}` + `finish_reason`), then on
/// [`StreamRenderer::end`] the usage chunk (`choices: []`, only if the client asked with
/// `include_usage`) and `data: [DONE]`. As on the real API, chunks carry `"usage": null`
/// when usage was requested. Thinking is not rendered (the wire has no field for it).
#[derive(Debug)]
pub struct StreamRenderer {
    id: String,
    model: String,
    include_usage: bool,
    created: i64,
    started: bool,
    finish_sent: bool,
    done: bool,
    stop_reason: Option<StopReason>,
    usage: Usage,
    tool_count: usize,
    current_tool: Option<usize>,
    ids: ToolIdMap,
}

impl StreamRenderer {
    #[must_use]
    pub fn new(id: &str, client_model: &str, include_usage: bool, created: i64) -> Self {
        StreamRenderer {
            id: format!("chatcmpl-{id}"),
            model: client_model.to_owned(),
            include_usage,
            created,
            started: false,
            finish_sent: false,
            done: false,
            stop_reason: None,
            usage: Usage::default(),
            tool_count: 0,
            current_tool: None,
            ids: ToolIdMap::new(Shape::OpenAi),
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<StopReason>) -> String {
        let mut c = Map::new();
        c.insert("id".into(), Value::String(self.id.clone()));
        c.insert("object".into(), json!("chat.completion.chunk"));
        c.insert("created".into(), json!(self.created));
        c.insert("model".into(), Value::String(self.model.clone()));
        c.insert(
            "choices".into(),
            json!([{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason.map(StopReason::as_openai),
            }]),
        );
        if self.include_usage {
            c.insert("usage".into(), Value::Null);
        }
        format_frame(None, &Value::Object(c).to_string())
    }

    fn ensure_started(&mut self, out: &mut Vec<String>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ));
        }
    }

    fn send_finish(&mut self, out: &mut Vec<String>) {
        if !self.finish_sent {
            self.finish_sent = true;
            let reason = self.stop_reason.unwrap_or(if self.tool_count > 0 {
                StopReason::ToolUse
            } else {
                StopReason::EndTurn
            });
            out.push(self.chunk(json!({}), Some(reason)));
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
            StreamEvent::BlockStart { block, .. } => {
                self.ensure_started(&mut out);
                self.current_tool = None;
                if let BlockStart::ToolUse { id, name } = block {
                    let index = self.tool_count;
                    self.tool_count += 1;
                    self.current_tool = Some(index);
                    let id = self.ids.map(id);
                    out.push(self.chunk(
                        json!({"tool_calls": [{
                            "index": index,
                            "id": id,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }]}),
                        None,
                    ));
                }
            }
            StreamEvent::Delta { delta, .. } => match delta {
                BlockDelta::Text(t) if !t.is_empty() => {
                    self.ensure_started(&mut out);
                    out.push(self.chunk(json!({"content": t}), None));
                }
                BlockDelta::ToolInputJson(j) if !j.is_empty() => {
                    if let Some(index) = self.current_tool {
                        out.push(self.chunk(
                            json!({"tool_calls": [{"index": index, "function": {"arguments": j}}]}),
                            None,
                        ));
                    }
                }
                _ => {}
            },
            StreamEvent::BlockStop { .. } => self.current_tool = None,
            StreamEvent::Usage(u) => self.usage = self.usage.max(*u),
            StreamEvent::Finish { stop_reason, .. } => {
                self.ensure_started(&mut out);
                self.stop_reason = Some(*stop_reason);
                self.send_finish(&mut out);
            }
        }
        out
    }

    /// Frames after the upstream ended successfully: the finish chunk if not sent yet, the
    /// usage chunk when asked for, and `data: [DONE]`.
    pub fn end(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        self.done = true;
        self.ensure_started(&mut out);
        self.send_finish(&mut out);
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_json(&self.usage),
            });
            out.push(format_frame(None, &chunk.to_string()));
        }
        out.push(format_frame(None, "[DONE]"));
        out
    }

    /// The final frame of a stream that failed after the first byte: an error envelope and
    /// no `[DONE]`, so the client cannot mistake it for a complete answer.
    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        vec![error_frame(err)]
    }
}

fn error_frame(err: &GatewayError) -> String {
    format_frame(None, &err.render(Shape::OpenAi).body.to_string())
}

// ---------------------------------------------------------------------------------------
// Streams: same shape
// ---------------------------------------------------------------------------------------

/// Forwards an OpenAI-compatible upstream's stream to an OpenAI client: each chunk with only
/// `model` replaced; everything else as the upstream sent it.
///
/// Because [`passthrough_request`] forces `include_usage`, a client that did not ask for usage
/// gets the usage-only chunk (`choices: []`) removed and the `"usage": null` fields stripped,
/// so it sees what it would have seen without the gateway. Upstream error chunks are not
/// forwarded (their text may echo the prompt): the caller's [`StreamParser`] reports them and
/// the caller answers with [`PassthroughStream::error`].
#[derive(Debug)]
pub struct PassthroughStream {
    model: String,
    client_wants_usage: bool,
    done: bool,
}

impl PassthroughStream {
    #[must_use]
    pub fn new(client_model: &str, client_wants_usage: bool) -> Self {
        PassthroughStream {
            model: client_model.to_owned(),
            client_wants_usage,
            done: false,
        }
    }

    /// The frame to forward for `frame`, or `None` to drop it.
    pub fn rewrite(&mut self, frame: &SseFrame) -> Option<String> {
        if self.done {
            return None;
        }
        let data = frame.data.trim();
        if data.is_empty() {
            return None;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            // `[DONE]` and anything else that is not JSON goes through verbatim.
            return Some(format_frame(frame.event.as_deref(), &frame.data));
        };
        self.rewrite_json(frame.event.as_deref(), v)
    }

    /// [`PassthroughStream::rewrite`] for a frame whose data the caller already parsed.
    pub fn rewrite_json(&mut self, event: Option<&str>, mut v: Value) -> Option<String> {
        if self.done {
            return None;
        }
        let obj = v.as_object_mut()?;
        if obj.get("error").is_some_and(|e| !e.is_null()) {
            return None;
        }
        if !self.client_wants_usage {
            let no_choices = obj
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty);
            if no_choices && obj.get("usage").is_some_and(Value::is_object) {
                return None;
            }
            if obj.get("usage").is_some_and(Value::is_null) {
                obj.remove("usage");
            }
        }
        if obj.contains_key("model") {
            obj.insert("model".into(), Value::String(self.model.clone()));
        }
        Some(format_frame(event, &v.to_string()))
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
            .push(&frames(&[r#"{"error":{"message":"the prompt was ...","type":"server_error","code":"boom"}}"#])[0])
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
}
