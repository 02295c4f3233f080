//! OpenAI Responses (`POST /v1/responses`) <-> canonical IR.
//!
//! Inbound: [`parse_request`] validates a client body into a [`ChatRequest`] (errors name the
//! JSON path and the item index) and keeps the raw object; same-shape traffic goes out through
//! [`passthrough_request`] (unknown fields and items untouched, only `model` replaced).
//!
//! Outbound to a Responses upstream: [`render_request`] (from a client of another shape),
//! [`parse_response`] / [`StreamParser`] to read what comes back.
//!
//! Towards a Responses client: [`render_response`] / [`StreamRenderer`] for cross-shape
//! answers (with the request parameters the API echoes, see [`ResponseContext`]),
//! [`passthrough_response`] / [`PassthroughStream`] for same-shape ones.
//!
//! Invariants and lossy points (all deliberate):
//! - `instructions` and every `system`/`developer` message are hoisted into
//!   `ChatRequest::system`, wherever the messages appear; rendering puts all system text into
//!   `instructions` (`\n\n`-joined).
//! - Items are flat on this wire, messages in the IR: assistant-side items (assistant
//!   messages, `function_call`, `custom_tool_call`, `reasoning`) that follow each other form
//!   one assistant message; `function_call_output` items form one user message, which a user
//!   message right after them joins (as tool messages do on Chat Completions).
//! - `reasoning` items are canonical `Thinking`: the summary texts (`\n\n`-joined; the
//!   `reasoning_text` content when there is no summary) and `encrypted_content` as the
//!   signature. Back on this wire a `Thinking` block is one `summary_text` plus the signature as
//!   `encrypted_content`, so an Anthropic thinking block survives a Responses client's round
//!   trip. Anthropic `redacted_thinking` travels as a reasoning item whose `encrypted_content`
//!   is [`REDACTED_THINKING_PREFIX`] + its data, and comes back as `RedactedThinking`.
//! - `custom` (freeform) tools are canonical tools taking `{"input": string}`; their grammar,
//!   if any, is appended to the description so a model without grammar support still sees it.
//!   [`ResponseContext`] remembers which names were custom, so a call of one is rendered back
//!   as a `custom_tool_call` whose `input` is that string.
//! - What the IR has no model for is kept verbatim as `Opaque` of shape `Responses`: hosted
//!   tools (`web_search`, `file_search`, `local_shell`, `mcp`, …), `input_file` parts, images
//!   given by `file_id`, `item_reference` and every other item type. Same-shape passthrough
//!   forwards them; the other wires' renderers refuse them by name.
//! - This wire has no `stop`, no `is_error` on tool outputs and no cache-write counter:
//!   [`render_request`] refuses stop sequences (400), tool errors lose their flag, and usage
//!   reports `input_tokens` as all input (uncached + cache reads + cache writes) with
//!   `cached_tokens` = cache reads; parsing takes `cached_tokens` back out of `input_tokens`.
//! - A stream rendered for a client always ends with `response.completed` (or
//!   `response.incomplete`) after success, and with `response.failed` + `error` after a
//!   failure, never a fake completion. Every event carries a `sequence_number` from 0.

pub use crate::canonical::ParsedRequest;
use crate::canonical::wire::{Obj, Res, count, error_kind, image_from_url, image_url, parse_body};
use crate::canonical::{
    BlockDelta, BlockStart, ChatRequest, ChatResponse, ContentBlock, Message, Opaque, Role, Shape,
    StopReason, StreamEvent, SystemBlock, ToolChoice, ToolDef, ToolResultContent, Usage,
    parse_tool_input,
};
use crate::error::{ErrorClass, GatewayError, invalid};
use crate::sse::{SseFrame, format_frame};
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

/// Marks the `encrypted_content` of a reasoning item that carries an Anthropic
/// `redacted_thinking` block (the rest is its `data`). Only the gateway reads it: clients treat
/// `encrypted_content` as opaque and send it back unchanged.
pub const REDACTED_THINKING_PREFIX: &str = "metis-redacted-thinking:";

/// The input schema a `custom` (freeform) tool gets in the IR: its one string argument.
fn custom_input_schema() -> Value {
    json!({"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]})
}

/// The schema a function tool without `parameters` accepts: any object.
fn empty_object_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

fn text_block(text: &str) -> ContentBlock {
    ContentBlock::Text {
        text: text.to_owned(),
        cache_control: None,
    }
}

fn opaque(value: &Value) -> Opaque {
    Opaque {
        shape: Shape::Responses,
        value: value.clone(),
    }
}

/// Whether an opaque Responses object is a content part (it goes inside a message's
/// `content`) rather than an input item of its own. Every part type of this wire starts with
/// `input_` (`input_file`, `input_audio`, …); no item type does.
fn is_part(o: &Opaque) -> bool {
    o.kind().starts_with("input_")
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// Parse and validate a client's Responses body.
///
/// # Errors
/// `InvalidRequest` naming the offending JSON path (bad JSON, missing `model`, `input` that is
/// neither a string nor an array, an item that is not an object, a message without `role` or
/// `content`, a `function_call` without `call_id`/`name` or with `arguments` that are not a
/// JSON object, a `function_call_output` without `call_id` or — when there is no
/// `previous_response_id` — whose `call_id` matches no earlier call in `input`, …).
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest, GatewayError> {
    let raw = parse_body(body)?;
    let request = request_from_map(&raw)?;
    Ok(ParsedRequest { request, raw })
}

/// Builds canonical messages from the flat item list; see the module docs for the grouping.
#[derive(Default)]
struct Conversation {
    system: Vec<SystemBlock>,
    messages: Vec<Message>,
    /// The last message was built from tool outputs: more outputs, then one user message,
    /// join it.
    tool_turn: bool,
    /// `call_id`s of every call seen so far (function, custom or opaque such as
    /// `local_shell_call`), for the orphan-output check.
    call_ids: HashSet<String>,
}

impl Conversation {
    fn user(&mut self, blocks: Vec<ContentBlock>) {
        if blocks.is_empty() {
            return;
        }
        match self.messages.last_mut() {
            Some(last) if self.tool_turn && last.role == Role::User => last.content.extend(blocks),
            _ => self.messages.push(Message {
                role: Role::User,
                content: blocks,
            }),
        }
        self.tool_turn = false;
    }

    fn assistant(&mut self, blocks: Vec<ContentBlock>) {
        if blocks.is_empty() {
            return;
        }
        match self.messages.last_mut() {
            Some(last) if last.role == Role::Assistant => last.content.extend(blocks),
            _ => self.messages.push(Message {
                role: Role::Assistant,
                content: blocks,
            }),
        }
        self.tool_turn = false;
    }

    fn tool_result(&mut self, block: ContentBlock) {
        match self.messages.last_mut() {
            Some(last) if self.tool_turn && last.role == Role::User => last.content.push(block),
            _ => self.messages.push(Message {
                role: Role::User,
                content: vec![block],
            }),
        }
        self.tool_turn = true;
    }

    /// An item the IR has no model for: kept in the current message (or a new user one), so
    /// it stays in order and a renderer for another wire refuses it by name.
    fn opaque_item(&mut self, item: &Value) {
        let block = ContentBlock::Other(opaque(item));
        match self.messages.last_mut() {
            Some(last) => last.content.push(block),
            None => self.messages.push(Message {
                role: Role::User,
                content: vec![block],
            }),
        }
    }
}

fn request_from_map(map: &Map<String, Value>) -> Res<ChatRequest> {
    let top = Obj::root(map);
    let mut req = ChatRequest {
        model: top.req_str("model")?.to_owned(),
        ..ChatRequest::default()
    };
    let mut conv = Conversation::default();
    if let Some(instructions) = top.str("instructions")?.filter(|s| !s.is_empty()) {
        conv.system.push(SystemBlock {
            text: instructions.to_owned(),
            cache_control: None,
        });
    }
    // With `previous_response_id` the calls a tool output answers may live in the stored
    // response, so an output without an earlier call in `input` is legitimate.
    let continues = top.str("previous_response_id")?.is_some();
    match top.get("input") {
        None => {}
        Some(Value::String(s)) => conv.user(vec![text_block(s)]),
        Some(Value::Array(items)) => {
            for (i, value) in items.iter().enumerate() {
                input_item(&mut conv, value, i, continues)?;
            }
        }
        Some(_) => {
            return Err(invalid("input must be a string or an array of input items"));
        }
    }
    req.system = conv.system;
    req.messages = conv.messages;

    if let Some(tools) = top.array("tools")? {
        for (i, value) in tools.iter().enumerate() {
            let tool = Obj::at(value, format!("tools[{i}]"))?;
            match tool.str("type")? {
                Some("function") => req.tools.push(function_tool(&tool)?),
                Some("custom") => req.tools.push(custom_tool(&tool)?),
                // Hosted tools (`web_search`, `file_search`, `local_shell`, `mcp`, …) only mean
                // something to a Responses upstream.
                _ => req.other_tools.push(opaque(value)),
            }
        }
    }
    req.tool_choice = top.get("tool_choice").map(tool_choice).transpose()?;
    req.max_tokens = top.positive_int("max_output_tokens")?;
    req.temperature = top.number("temperature")?;
    req.top_p = top.number("top_p")?;
    req.stream = top.bool("stream")?.unwrap_or(false);
    req.parallel_tool_calls = top.bool("parallel_tool_calls")?;
    // `safety_identifier` is the API's newer name for the end-user id.
    req.user = match top.str("user")? {
        Some(u) => Some(u.to_owned()),
        None => top.str("safety_identifier")?.map(str::to_owned),
    };
    Ok(req)
}

fn input_item(conv: &mut Conversation, value: &Value, i: usize, continues: bool) -> Res<()> {
    let item = Obj::at(value, format!("input[{i}]"))?;
    match item.str("type")? {
        None | Some("message") => parse_message(conv, &item),
        Some("function_call") => {
            let call_id = item.req_str("call_id")?;
            let name = item.req_str("name")?;
            let input = arguments(&item)?;
            conv.call_ids.insert(call_id.to_owned());
            conv.assistant(vec![ContentBlock::ToolUse {
                id: call_id.to_owned(),
                name: name.to_owned(),
                input,
                cache_control: None,
            }]);
            Ok(())
        }
        Some("custom_tool_call") => {
            let call_id = item.req_str("call_id")?;
            let name = item.req_str("name")?;
            let input = item.req_str("input")?;
            conv.call_ids.insert(call_id.to_owned());
            conv.assistant(vec![ContentBlock::ToolUse {
                id: call_id.to_owned(),
                name: name.to_owned(),
                input: json!({ "input": input }),
                cache_control: None,
            }]);
            Ok(())
        }
        Some(kind @ ("function_call_output" | "custom_tool_call_output")) => {
            let call_id = item.req_str("call_id")?;
            if !continues && !conv.call_ids.contains(call_id) {
                return Err(invalid(format!(
                    "input[{i}] is a {kind} for call_id '{call_id}', but no earlier item in \
                     input has that call_id (send the whole conversation, or \
                     previous_response_id)"
                )));
            }
            let content = tool_output(&item)?;
            conv.tool_result(ContentBlock::ToolResult {
                tool_use_id: call_id.to_owned(),
                content,
                is_error: false,
                cache_control: None,
            });
            Ok(())
        }
        Some("reasoning") => {
            conv.assistant(vec![reasoning_block(&item)?]);
            Ok(())
        }
        Some(_) => {
            // `item_reference`, `local_shell_call`, `web_search_call`, … Their outputs answer
            // them by `call_id` like function calls.
            if let Some(call_id) = item.get("call_id").and_then(Value::as_str) {
                conv.call_ids.insert(call_id.to_owned());
            }
            conv.opaque_item(value);
            Ok(())
        }
    }
}

/// The `arguments` of a `function_call` item: a JSON object, given as text (or, leniently,
/// as an object).
fn arguments(item: &Obj<'_>) -> Res<Value> {
    match item.get("arguments") {
        None => Ok(Value::Object(Map::new())),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Value::Object(Map::new())),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(invalid(format!(
                "{} must encode a JSON object",
                item.field("arguments")
            ))),
            Err(e) => Err(invalid(format!(
                "{} is not valid JSON: {e}",
                item.field("arguments")
            ))),
        },
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(invalid(format!(
            "{} must be a JSON string",
            item.field("arguments")
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
        None => Err(invalid(format!(
            "{} is required and must be a string or an array of content parts",
            msg.field("content")
        ))),
    }
}

fn parse_message(conv: &mut Conversation, msg: &Obj<'_>) -> Res<()> {
    let role = msg.req_str("role")?;
    match role {
        "system" | "developer" => {
            let text = match parts(msg)? {
                Parts::Text(s) => s.to_owned(),
                Parts::List(list) => {
                    let mut texts = Vec::with_capacity(list.len());
                    for part in &list {
                        if part.str("type")? != Some("input_text") {
                            return Err(invalid(format!(
                                "{} must be 'input_text' in a {role} message",
                                part.field("type")
                            )));
                        }
                        texts.push(part.req_str("text")?);
                    }
                    texts.join("\n")
                }
            };
            conv.system.push(SystemBlock {
                text,
                cache_control: None,
            });
            Ok(())
        }
        "user" => {
            let blocks = match parts(msg)? {
                Parts::Text(s) => vec![text_block(s)],
                Parts::List(list) => list.iter().map(user_part).collect::<Res<Vec<_>>>()?,
            };
            conv.user(blocks);
            Ok(())
        }
        "assistant" => {
            let blocks = match parts(msg)? {
                // An empty string is how clients say "no text" next to tool calls.
                Parts::Text("") => Vec::new(),
                Parts::Text(s) => vec![text_block(s)],
                Parts::List(list) => list
                    .iter()
                    .map(|part| match part.req_str("type")? {
                        "output_text" | "input_text" => Ok(text_block(part.req_str("text")?)),
                        "refusal" => Ok(text_block(part.req_str("refusal")?)),
                        _ => Ok(ContentBlock::Other(opaque(&Value::Object(
                            part.map.clone(),
                        )))),
                    })
                    .collect::<Res<Vec<_>>>()?,
            };
            conv.assistant(blocks);
            Ok(())
        }
        other => Err(invalid(format!(
            "{} '{other}' is not supported (expected user, assistant, system or developer)",
            msg.field("role")
        ))),
    }
}

/// One part of a user message (or of a tool output given as parts).
fn user_part(part: &Obj<'_>) -> Res<ContentBlock> {
    match part.req_str("type")? {
        "input_text" => Ok(text_block(part.req_str("text")?)),
        "input_image" => match part.str("image_url")? {
            Some(url) => Ok(ContentBlock::Image {
                source: image_from_url(url, &part.field("image_url"))?,
                cache_control: None,
            }),
            // An uploaded file (`file_id`) only means something to the OpenAI API.
            None => Ok(ContentBlock::Other(opaque(&Value::Object(
                part.map.clone(),
            )))),
        },
        _ => Ok(ContentBlock::Other(opaque(&Value::Object(
            part.map.clone(),
        )))),
    }
}

fn tool_output(item: &Obj<'_>) -> Res<Vec<ToolResultContent>> {
    match item.get("output") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![ToolResultContent::Text(s.clone())]),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let part = Obj::at(p, format!("{}[{j}]", item.field("output")))?;
                Ok(match user_part(&part)? {
                    ContentBlock::Text { text, .. } => ToolResultContent::Text(text),
                    ContentBlock::Image { source, .. } => ToolResultContent::Image(source),
                    _ => ToolResultContent::Other(opaque(p)),
                })
            })
            .collect(),
        Some(_) => Err(invalid(format!(
            "{} must be a string or an array of content parts",
            item.field("output")
        ))),
    }
}

/// Texts of the `summary_text` parts of a reasoning item, else of its `reasoning_text`
/// content, `\n\n`-joined.
fn reasoning_text(summary: Option<&[Value]>, content: Option<&[Value]>) -> String {
    let texts = |parts: Option<&[Value]>| -> Vec<String> {
        parts
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    };
    let summary = texts(summary);
    if summary.is_empty() {
        texts(content).join("\n\n")
    } else {
        summary.join("\n\n")
    }
}

/// A canonical thinking block from a reasoning item's text and `encrypted_content`.
fn thinking_block(text: String, encrypted: Option<&str>) -> ContentBlock {
    match encrypted.and_then(|e| e.strip_prefix(REDACTED_THINKING_PREFIX)) {
        Some(data) => ContentBlock::RedactedThinking {
            data: data.to_owned(),
        },
        None => ContentBlock::Thinking {
            thinking: text,
            signature: encrypted.map(str::to_owned),
        },
    }
}

fn reasoning_block(item: &Obj<'_>) -> Res<ContentBlock> {
    let text = reasoning_text(item.array("summary")?, item.array("content")?);
    Ok(thinking_block(text, item.str("encrypted_content")?))
}

fn function_tool(tool: &Obj<'_>) -> Res<ToolDef> {
    let input_schema = match tool.obj("parameters")? {
        Some(p) => Value::Object(p.map.clone()),
        None => empty_object_schema(),
    };
    Ok(ToolDef {
        name: tool.req_str("name")?.to_owned(),
        description: tool.str("description")?.map(str::to_owned),
        input_schema,
        cache_control: None,
    })
}

/// A freeform tool as a function of one string. A grammar-constrained format is spelled out
/// in the description: only OpenAI models enforce it, others must be told.
fn custom_tool(tool: &Obj<'_>) -> Res<ToolDef> {
    let name = tool.req_str("name")?.to_owned();
    let mut description = tool.str("description")?.map(str::to_owned);
    let format = tool.obj("format")?;
    if let Some(format) = format.filter(|f| f.map.get("type") == Some(&json!("grammar"))) {
        let syntax = format.str("syntax")?.unwrap_or("formal");
        let definition = format.str("definition")?.unwrap_or_default();
        let rule = format!("The `input` string must follow this {syntax} grammar:\n{definition}");
        description = Some(match description {
            Some(d) if !d.is_empty() => format!("{d}\n\n{rule}"),
            _ => rule,
        });
    }
    Ok(ToolDef {
        name,
        description,
        input_schema: custom_input_schema(),
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
                "tool_choice '{s}' is not supported (expected auto, none, required or a tool object)"
            ))),
        },
        Value::Object(map) => {
            let obj = Obj {
                map,
                path: "tool_choice".to_owned(),
            };
            match obj.req_str("type")? {
                "function" | "custom" => Ok(ToolChoice::Tool(obj.req_str("name")?.to_owned())),
                // The allowed subset is not expressible in the IR; its mode is.
                "allowed_tools" => Ok(match obj.str("mode")? {
                    Some("required") => ToolChoice::Any,
                    _ => ToolChoice::Auto,
                }),
                // A hosted tool (`web_search`, `mcp`, …) must be called: that tool is in
                // `other_tools`, which only a Responses upstream accepts anyway.
                _ => Ok(ToolChoice::Any),
            }
        }
        _ => Err(invalid("tool_choice must be a string or an object")),
    }
}

/// Prepare a parsed Responses request for an upstream without the Responses API (it is
/// translated through the canonical IR). Returns how many hosted tools were dropped.
///
/// - The gateway is stateless (the trace never stores content), so a `previous_response_id`
///   that cannot be forwarded natively is a 400 asking for the full input — never a silent
///   loss of the conversation's history.
/// - `namespace` tools (Codex's `multi_agent_v1`) group function tools: their functions are
///   offered to the model as plain function tools.
/// - Tools hosted by OpenAI (`web_search`, `image_generation`, `file_search`, …) run only on
///   OpenAI's servers; another provider cannot run them, so they are dropped (Codex declares
///   `web_search` on every request) and the model answers with the tools it has.
///
/// # Errors
/// `InvalidRequest` for `previous_response_id`, or a malformed namespace member.
pub fn prepare_for_translation(
    req: &mut ChatRequest,
    raw: &Map<String, Value>,
    provider: &str,
) -> Result<usize, GatewayError> {
    if raw
        .get("previous_response_id")
        .is_some_and(|v| !v.is_null())
    {
        return Err(invalid(format!(
            "'previous_response_id' cannot be served: the model's provider '{provider}' has no \
             Responses API and the gateway stores no conversation content; send the full \
             conversation as 'input' (with \"store\": false)"
        )));
    }
    let mut dropped = 0;
    let mut flattened = Vec::new();
    for tool in std::mem::take(&mut req.other_tools) {
        if tool.shape != Shape::Responses {
            req.other_tools.push(tool);
            continue;
        }
        if tool.kind() != "namespace" {
            dropped += 1;
            continue;
        }
        let members = tool.value.get("tools").and_then(Value::as_array);
        for (k, member) in members.into_iter().flatten().enumerate() {
            if member.get("type").and_then(Value::as_str) != Some("function") {
                dropped += 1;
                continue;
            }
            let name = member
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| invalid(format!("namespace tool member {k} needs a 'name'")))?;
            flattened.push(ToolDef {
                name: name.to_owned(),
                description: member
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                input_schema: member
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                cache_control: None,
            });
        }
    }
    req.tools.extend(flattened);
    Ok(dropped)
}

/// The client's body for a Responses upstream: every field as the client wrote it, `model`
/// replaced.
#[must_use]
pub fn passthrough_request(mut raw: Map<String, Value>, upstream_model: &str) -> Value {
    raw.insert("model".to_owned(), Value::String(upstream_model.to_owned()));
    Value::Object(raw)
}

/// An opaque object is only expressible on the wire it came from.
fn foreign(o: &Opaque, what: &str) -> Res<Value> {
    if o.shape == Shape::Responses {
        Ok(o.value.clone())
    } else {
        Err(invalid(format!(
            "{what} type '{}' cannot be sent to an OpenAI Responses upstream",
            o.kind()
        )))
    }
}

/// The `arguments` string of a call: the input as compact JSON, or the upstream's raw text
/// when it was not a JSON object (see `ContentBlock::ToolUse`).
fn arguments_string(input: &Value) -> String {
    match input {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

/// The string argument of a custom tool call: `input.input` when it is a string, else the
/// whole input as JSON text (a model that ignored the schema still gets its call through).
fn custom_input(input: &Value) -> String {
    match input {
        Value::Object(m) => match m.get("input") {
            Some(Value::String(s)) => s.clone(),
            _ => input.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn image_part(source: &crate::canonical::ImageSource) -> Value {
    json!({"type": "input_image", "image_url": image_url(source), "detail": "auto"})
}

fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// Collects the input items of a rendered request, keeping message parts together until an
/// item of another kind interrupts them.
struct Items {
    items: Vec<Value>,
    role: &'static str,
    parts: Vec<Value>,
}

impl Items {
    fn part(&mut self, role: &'static str, part: Value) {
        if self.role != role {
            self.flush();
            self.role = role;
        }
        self.parts.push(part);
    }

    fn item(&mut self, item: Value) {
        self.flush();
        self.items.push(item);
    }

    fn flush(&mut self) {
        if !self.parts.is_empty() {
            let content = std::mem::take(&mut self.parts);
            self.items
                .push(json!({"type": "message", "role": self.role, "content": content}));
        }
    }
}

/// Render a canonical request (from a client of another shape) for a Responses upstream.
/// Tool ids are mapped to the `call_` form (see `tool_ids`); the request asks the upstream
/// not to store anything (`store: false`), as the gateway is stateless.
///
/// # Errors
/// `InvalidRequest` when the request holds something this wire cannot express (an Anthropic
/// `document` block, a server tool, stop sequences, …), naming it.
pub fn render_request(req: &ChatRequest, upstream_model: &str) -> Result<Value, GatewayError> {
    if !req.stop.is_empty() {
        return Err(invalid(
            "stop sequences cannot be sent to an OpenAI Responses upstream (the API has no `stop`)",
        ));
    }
    let mut ids = ToolIdMap::new(Shape::Responses);
    let mut out = Map::new();
    out.insert("model".into(), Value::String(upstream_model.to_owned()));
    let system: Vec<&str> = req
        .system
        .iter()
        .map(|b| b.text.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    if !system.is_empty() {
        out.insert("instructions".into(), Value::String(system.join("\n\n")));
    }
    let mut items = Items {
        items: Vec::new(),
        role: "user",
        parts: Vec::new(),
    };
    for msg in &req.messages {
        for block in &msg.content {
            render_block(block, msg.role, &mut ids, &mut items)?;
        }
        items.flush();
    }
    out.insert("input".into(), Value::Array(items.items));

    let mut tools: Vec<Value> = req
        .tools
        .iter()
        .map(|t| {
            let mut tool = Map::new();
            tool.insert("type".into(), json!("function"));
            tool.insert("name".into(), Value::String(t.name.clone()));
            if let Some(d) = &t.description {
                tool.insert("description".into(), Value::String(d.clone()));
            }
            tool.insert("parameters".into(), t.input_schema.clone());
            // The API defaults to strict schemas, which reject most schemas written for other
            // wires (every property required, no additional properties).
            tool.insert("strict".into(), Value::Bool(false));
            Value::Object(tool)
        })
        .collect();
    for other in &req.other_tools {
        tools.push(foreign(other, "tool")?);
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = &req.tool_choice {
            let choice = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::Any => json!("required"),
                ToolChoice::None => json!("none"),
                ToolChoice::Tool(name) => json!({"type": "function", "name": name}),
            };
            out.insert("tool_choice".into(), choice);
        }
        if let Some(p) = req.parallel_tool_calls {
            out.insert("parallel_tool_calls".into(), Value::Bool(p));
        }
    }
    if let Some(n) = req.max_tokens {
        out.insert("max_output_tokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        out.insert("top_p".into(), json!(p));
    }
    if req.stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    out.insert("store".into(), Value::Bool(false));
    if let Some(u) = &req.user {
        out.insert("user".into(), Value::String(u.clone()));
    }
    Ok(Value::Object(out))
}

fn render_block(b: &ContentBlock, role: Role, ids: &mut ToolIdMap, items: &mut Items) -> Res<()> {
    let user = role == Role::User;
    match b {
        ContentBlock::Text { text, .. } if user => {
            items.part("user", json!({"type": "input_text", "text": text}));
        }
        ContentBlock::Text { text, .. } => items.part("assistant", output_text_part(text)),
        ContentBlock::Image { source, .. } if user => items.part("user", image_part(source)),
        ContentBlock::ToolResult {
            tool_use_id,
            content,
            ..
        } if user => {
            let output = match content.as_slice() {
                [] => Value::String(String::new()),
                [ToolResultContent::Text(t)] => Value::String(t.clone()),
                many => Value::Array(
                    many.iter()
                        .map(|c| match c {
                            ToolResultContent::Text(t) => {
                                Ok(json!({"type": "input_text", "text": t}))
                            }
                            ToolResultContent::Image(src) => Ok(image_part(src)),
                            ToolResultContent::Other(o) => foreign(o, "tool result block"),
                        })
                        .collect::<Res<Vec<_>>>()?,
                ),
            };
            items.item(json!({
                "type": "function_call_output",
                "call_id": ids.map(tool_use_id),
                "output": output,
            }));
        }
        ContentBlock::ToolUse {
            id, name, input, ..
        } if !user => items.item(json!({
            "type": "function_call",
            "call_id": ids.map(id),
            "name": name,
            "arguments": arguments_string(input),
        })),
        // Only signed thinking can go back: without `encrypted_content` a stateless request
        // has nothing the API could resolve. Redacted thinking is Anthropic's alone.
        ContentBlock::Thinking {
            thinking,
            signature: Some(sig),
        } if !user && !sig.is_empty() => items.item(reasoning_item(None, thinking, Some(sig))),
        ContentBlock::Thinking { .. } | ContentBlock::RedactedThinking { .. } => {}
        ContentBlock::Other(o) => {
            let v = foreign(o, "content block")?;
            if is_part(o) {
                items.part(if user { "user" } else { "assistant" }, v);
            } else {
                items.item(v);
            }
        }
        ContentBlock::ToolUse { .. } => {
            return Err(invalid(
                "tool_use blocks are only allowed in assistant messages",
            ));
        }
        ContentBlock::Image { .. } | ContentBlock::ToolResult { .. } => {
            return Err(invalid(
                "assistant messages cannot carry images or tool results on the Responses wire",
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// What a response object echoes
// ---------------------------------------------------------------------------------------

/// The request parameters a response object repeats (with the API's defaults where the
/// client sent nothing), and which tool names were `custom` tools.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseContext {
    /// Response-object fields taken from the request, in the order the API writes them.
    echo: Map<String, Value>,
    custom_tools: HashSet<String>,
}

impl Default for ResponseContext {
    fn default() -> Self {
        Self::from_request(&ChatRequest::default(), &Map::new())
    }
}

impl ResponseContext {
    /// What to echo for this request. `raw` is the client's object, `req` its parse.
    #[must_use]
    pub fn from_request(req: &ChatRequest, raw: &Map<String, Value>) -> Self {
        let given = |key: &str| raw.get(key).filter(|v| !v.is_null()).cloned();
        let or = |key: &str, default: Value| given(key).unwrap_or(default);
        let mut echo = Map::new();
        echo.insert("instructions".into(), or("instructions", Value::Null));
        echo.insert(
            "max_output_tokens".into(),
            req.max_tokens.map_or(Value::Null, |n| json!(n)),
        );
        echo.insert(
            "parallel_tool_calls".into(),
            Value::Bool(req.parallel_tool_calls.unwrap_or(true)),
        );
        echo.insert(
            "previous_response_id".into(),
            or("previous_response_id", Value::Null),
        );
        echo.insert(
            "reasoning".into(),
            or("reasoning", json!({"effort": null, "summary": null})),
        );
        echo.insert("store".into(), or("store", Value::Bool(true)));
        echo.insert("temperature".into(), json!(req.temperature.unwrap_or(1.0)));
        echo.insert(
            "text".into(),
            or("text", json!({"format": {"type": "text"}})),
        );
        echo.insert("tool_choice".into(), or("tool_choice", json!("auto")));
        echo.insert("tools".into(), or("tools", json!([])));
        echo.insert("top_p".into(), json!(req.top_p.unwrap_or(1.0)));
        echo.insert("truncation".into(), or("truncation", json!("disabled")));
        echo.insert("user".into(), or("user", Value::Null));
        echo.insert("metadata".into(), or("metadata", json!({})));
        let custom_tools = raw
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| t.get("type").and_then(Value::as_str) == Some("custom"))
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
        ResponseContext { echo, custom_tools }
    }

    /// Whether `name` was declared as a `custom` (freeform) tool.
    #[must_use]
    pub fn is_custom_tool(&self, name: &str) -> bool {
        self.custom_tools.contains(name)
    }

    fn get(&self, key: &str) -> Value {
        self.echo.get(key).cloned().unwrap_or(Value::Null)
    }
}

// ---------------------------------------------------------------------------------------
// Complete responses
// ---------------------------------------------------------------------------------------

fn usage_json(u: &Usage) -> Value {
    let input = u.total_input();
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + u.output_tokens,
    })
}

/// Canonical (disjoint) usage from a Responses `usage` object: cached tokens are taken out
/// of `input_tokens` (clamped at 0).
fn usage_from(u: &Value) -> Usage {
    let details = u.get("input_tokens_details").unwrap_or(&Value::Null);
    let cached = count(details, "cached_tokens");
    Usage {
        input_tokens: count(u, "input_tokens").saturating_sub(cached),
        output_tokens: count(u, "output_tokens"),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
    }
}

/// `status` and `incomplete_details.reason` of a response that stopped for `stop`.
fn terminal(stop: StopReason) -> (&'static str, Option<&'static str>) {
    match stop {
        StopReason::MaxTokens => ("incomplete", Some("max_output_tokens")),
        StopReason::Refusal => ("incomplete", Some("content_filter")),
        StopReason::EndTurn
        | StopReason::StopSequence
        | StopReason::ToolUse
        | StopReason::PauseTurn => ("completed", None),
    }
}

fn stop_from(status: Option<&str>, reason: Option<&str>, saw_tool: bool) -> StopReason {
    match (status, reason) {
        (Some("incomplete"), Some("content_filter")) => StopReason::Refusal,
        (Some("incomplete"), _) => StopReason::MaxTokens,
        _ if saw_tool => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

/// The ids of a response's output items: `<prefix>_<id>_<output index>`.
fn item_id(prefix: &str, id: &str, output_index: usize) -> String {
    format!("{prefix}_{id}_{output_index}")
}

fn message_item(id: &str, texts: &[String], status: &str) -> Value {
    let content: Vec<Value> = texts.iter().map(|t| output_text_part(t)).collect();
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn reasoning_item(id: Option<&str>, text: &str, encrypted: Option<&str>) -> Value {
    let mut item = Map::new();
    if let Some(id) = id {
        item.insert("id".into(), json!(id));
    }
    item.insert("type".into(), json!("reasoning"));
    let summary: Vec<Value> = if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "summary_text", "text": text})]
    };
    item.insert("summary".into(), Value::Array(summary));
    if let Some(e) = encrypted {
        item.insert("encrypted_content".into(), json!(e));
    }
    Value::Object(item)
}

fn call_item(
    id: &str,
    custom: bool,
    call_id: &str,
    name: &str,
    input: &Value,
    status: &str,
) -> Value {
    if custom {
        json!({"id": id, "type": "custom_tool_call", "status": status, "call_id": call_id,
               "name": name, "input": custom_input(input)})
    } else {
        json!({"id": id, "type": "function_call", "status": status,
               "arguments": arguments_string(input), "call_id": call_id, "name": name})
    }
}

/// The response object (`object: "response"`) around `output`.
struct Head<'a> {
    id: &'a str,
    created: i64,
    model: &'a str,
    ctx: &'a ResponseContext,
}

impl Head<'_> {
    fn object(
        &self,
        status: &str,
        incomplete: Option<&str>,
        error: Value,
        output: Vec<Value>,
        usage: Option<&Usage>,
    ) -> Value {
        let ctx = self.ctx;
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("object".into(), json!("response"));
        o.insert("created_at".into(), json!(self.created));
        o.insert("status".into(), json!(status));
        o.insert("background".into(), json!(false));
        o.insert("error".into(), error);
        o.insert(
            "incomplete_details".into(),
            incomplete.map_or(Value::Null, |r| json!({ "reason": r })),
        );
        o.insert("instructions".into(), ctx.get("instructions"));
        o.insert("max_output_tokens".into(), ctx.get("max_output_tokens"));
        o.insert("model".into(), json!(self.model));
        o.insert("output".into(), Value::Array(output));
        for key in [
            "parallel_tool_calls",
            "previous_response_id",
            "reasoning",
            "store",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_p",
            "truncation",
        ] {
            o.insert(key.into(), ctx.get(key));
        }
        o.insert("usage".into(), usage.map_or(Value::Null, usage_json));
        o.insert("user".into(), ctx.get("user"));
        o.insert("metadata".into(), ctx.get("metadata"));
        Value::Object(o)
    }
}

/// Render a canonical answer (from an upstream of another shape) as a Responses object for
/// a client. `id` is a bare unique id: the response is `resp_<id>`, its items
/// `msg_/rs_/fc_/ctc_<id>_<output index>`; tool ids become `call_…`.
#[must_use]
pub fn render_response(
    resp: &ChatResponse,
    client_model: &str,
    id: &str,
    created: i64,
    ctx: &ResponseContext,
) -> Value {
    let mut ids = ToolIdMap::new(Shape::Responses);
    let mut output: Vec<Value> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    let flush = |texts: &mut Vec<String>, output: &mut Vec<Value>| {
        if !texts.is_empty() {
            let item_id = item_id("msg", id, output.len());
            output.push(message_item(&item_id, texts, "completed"));
            texts.clear();
        }
    };
    for block in &resp.content {
        match block {
            ContentBlock::Text { text, .. } => {
                texts.push(text.clone());
                continue;
            }
            ContentBlock::Image { .. } | ContentBlock::ToolResult { .. } => continue,
            _ => flush(&mut texts, &mut output),
        }
        let n = output.len();
        match block {
            ContentBlock::Thinking {
                thinking,
                signature,
            } => output.push(reasoning_item(
                Some(&item_id("rs", id, n)),
                thinking,
                signature.as_deref(),
            )),
            ContentBlock::RedactedThinking { data } => output.push(reasoning_item(
                Some(&item_id("rs", id, n)),
                "",
                Some(&format!("{REDACTED_THINKING_PREFIX}{data}")),
            )),
            ContentBlock::ToolUse {
                id: call,
                name,
                input,
                ..
            } => {
                let custom = ctx.is_custom_tool(name);
                let item = item_id(if custom { "ctc" } else { "fc" }, id, n);
                output.push(call_item(
                    &item,
                    custom,
                    &ids.map(call),
                    name,
                    input,
                    "completed",
                ));
            }
            // Server-tool blocks of another wire have no place in this one.
            ContentBlock::Other(o) if o.shape == Shape::Responses => output.push(o.value.clone()),
            _ => {}
        }
    }
    flush(&mut texts, &mut output);
    let (status, incomplete) = terminal(resp.stop_reason);
    let head = Head {
        id: &format!("resp_{id}"),
        created,
        model: client_model,
        ctx,
    };
    head.object(status, incomplete, Value::Null, output, Some(&resp.usage))
}

/// The canonical blocks of one output item (`None` for an item type the IR keeps opaque).
fn blocks_from_item(item: &Value) -> Vec<ContentBlock> {
    let str_of = |key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match item.get("type").and_then(Value::as_str) {
        Some("message") => item
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                p.get("text")
                    .or_else(|| p.get("refusal"))
                    .and_then(Value::as_str)
                    .map(text_block)
            })
            .collect(),
        Some("function_call") => vec![ContentBlock::ToolUse {
            id: str_of("call_id"),
            name: str_of("name"),
            input: match item.get("arguments") {
                Some(Value::String(s)) => parse_tool_input(s),
                Some(v @ Value::Object(_)) => v.clone(),
                _ => Value::Object(Map::new()),
            },
            cache_control: None,
        }],
        Some("custom_tool_call") => vec![ContentBlock::ToolUse {
            id: str_of("call_id"),
            name: str_of("name"),
            input: json!({ "input": str_of("input") }),
            cache_control: None,
        }],
        Some("reasoning") => {
            let arr = |key: &str| item.get(key).and_then(Value::as_array).map(Vec::as_slice);
            vec![thinking_block(
                reasoning_text(arr("summary"), arr("content")),
                item.get("encrypted_content").and_then(Value::as_str),
            )]
        }
        // Hosted-tool calls (`web_search_call`, …) are kept for accounting and same-shape
        // rendering.
        _ => vec![ContentBlock::Other(opaque(item))],
    }
}

/// Parse a complete Responses answer from an upstream.
///
/// # Errors
/// A short description when the body is not a JSON object, is an error envelope or a failed
/// response (the message carries the upstream error type/code only, never its text).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("upstream response is not valid JSON: {e}"))?;
    response_from_value(&v)
}

fn response_from_value(v: &Value) -> Result<ChatResponse, String> {
    let Some(obj) = v.as_object() else {
        return Err("upstream response is not a JSON object".to_owned());
    };
    // An error envelope, or a response object with `status: failed` and its `error`.
    if let Some(err) = obj.get("error").filter(|e| !e.is_null()) {
        return Err(format!("upstream returned an error: {}", error_kind(err)));
    }
    let content: Vec<ContentBlock> = obj
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(blocks_from_item)
        .collect();
    let saw_tool = content
        .iter()
        .any(|b| matches!(b, ContentBlock::ToolUse { .. }));
    let status = obj.get("status").and_then(Value::as_str);
    let reason = obj
        .get("incomplete_details")
        .and_then(|d| d.get("reason"))
        .and_then(Value::as_str);
    Ok(ChatResponse {
        id: obj.get("id").and_then(Value::as_str).map(str::to_owned),
        model: obj.get("model").and_then(Value::as_str).map(str::to_owned),
        content,
        stop_reason: stop_from(status, reason, saw_tool),
        stop_sequence: None,
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

/// Body of `POST /v1/responses/input_tokens`.
#[must_use]
pub fn input_tokens_body(n: u64) -> Value {
    json!({"object": "response.input_tokens", "input_tokens": n})
}

// ---------------------------------------------------------------------------------------
// Failures, as clients read them
// ---------------------------------------------------------------------------------------

/// `(code, type, message)` of a gateway error for a Responses client: the OpenAI envelope's
/// `code` (its `type` when it has none), so clients branch on the codes they know
/// (`context_length_exceeded`, `rate_limit_exceeded`, …).
fn failure(err: &GatewayError) -> (String, String, String) {
    let body = err.render(Shape::Responses).body;
    let e = &body["error"];
    let ty = e["type"].as_str().unwrap_or("api_error").to_owned();
    let code = e["code"].as_str().map_or_else(|| ty.clone(), str::to_owned);
    (code, ty, err.message())
}

/// The two frames that end a failed stream.
///
/// `response.failed` is the API's terminal event: Codex maps its `error.code` to its own
/// errors (`context_length_exceeded` starts a compaction, other codes are retried) and the
/// openai-agents SDK treats it as the end of the turn. The SDK stream iterators of
/// openai-python and openai-node only *raise* on an `error` event (Node on the event name,
/// Python when its data has an `error` member), so an `error` event follows, carrying the
/// documented `code`/`message`/`param` plus that `error` object.
fn failure_frames(seq: &mut u64, response: Value, err: &GatewayError) -> Vec<String> {
    let (code, ty, message) = failure(err);
    let failed = event(seq, "response.failed", json!({ "response": response }));
    let error = event(
        seq,
        "error",
        json!({
            "code": code,
            "message": message,
            "param": null,
            "error": {"type": ty, "code": code, "message": message, "param": null},
        }),
    );
    vec![failed, error]
}

/// One SSE frame: `event: <ty>` and data `{"type": ty, …fields, "sequence_number": n}`.
fn event(seq: &mut u64, ty: &str, fields: Value) -> String {
    let mut m = Map::new();
    m.insert("type".into(), json!(ty));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    m.insert("sequence_number".into(), json!(*seq));
    *seq += 1;
    format_frame(Some(ty), &Value::Object(m).to_string())
}

// ---------------------------------------------------------------------------------------
// Streams: canonical -> Responses client
// ---------------------------------------------------------------------------------------

/// The output item being streamed.
#[derive(Debug)]
enum OpenItem {
    /// An assistant message; consecutive text blocks are its content parts.
    Message {
        item_id: String,
        parts: Vec<String>,
        part_open: bool,
    },
    Reasoning {
        item_id: String,
        text: String,
        part_open: bool,
        signature: Option<String>,
        redacted: Option<String>,
    },
    Call {
        item_id: String,
        custom: bool,
        call_id: String,
        name: String,
        json: String,
    },
}

/// Renders canonical events as a Responses event stream for a client.
///
/// Event sequence, as the real API: `response.created`, `response.in_progress`, then per
/// output item `response.output_item.added`, its content events and
/// `response.output_item.done` (with the full item), and on [`StreamRenderer::end`]
/// `response.completed` (or `response.incomplete`) with the full response object and usage.
/// Text: `response.content_part.added` → `response.output_text.delta`… →
/// `response.output_text.done` → `response.content_part.done` (consecutive text blocks are
/// parts of one message item). Function calls: `response.function_call_arguments.delta`… →
/// `.done`. Custom tool calls: one `response.custom_tool_call_input.delta` with the whole
/// input (the canonical stream carries it as JSON text, decodable only once complete) →
/// `.done`. Reasoning: `response.reasoning_summary_part.added` →
/// `response.reasoning_summary_text.delta`… → `.done` → `response.reasoning_summary_part.done`
/// (the signature arrives as `encrypted_content` on the done item).
#[derive(Debug)]
pub struct StreamRenderer {
    base: String,
    id: String,
    model: String,
    created: i64,
    ctx: ResponseContext,
    seq: u64,
    started: bool,
    done: bool,
    output: Vec<Value>,
    open: Option<OpenItem>,
    saw_tool: bool,
    usage: Usage,
    stop_reason: Option<StopReason>,
    ids: ToolIdMap,
}

impl StreamRenderer {
    #[must_use]
    pub fn new(id: &str, client_model: &str, created: i64, ctx: ResponseContext) -> Self {
        StreamRenderer {
            base: id.to_owned(),
            id: format!("resp_{id}"),
            model: client_model.to_owned(),
            created,
            ctx,
            seq: 0,
            started: false,
            done: false,
            output: Vec::new(),
            open: None,
            saw_tool: false,
            usage: Usage::default(),
            stop_reason: None,
            ids: ToolIdMap::new(Shape::Responses),
        }
    }

    fn head(&self) -> Head<'_> {
        Head {
            id: &self.id,
            created: self.created,
            model: &self.model,
            ctx: &self.ctx,
        }
    }

    fn emit(&mut self, out: &mut Vec<String>, ty: &str, fields: Value) {
        out.push(event(&mut self.seq, ty, fields));
    }

    fn ensure_started(&mut self, out: &mut Vec<String>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self
            .head()
            .object("in_progress", None, Value::Null, Vec::new(), None);
        self.emit(out, "response.created", json!({ "response": response }));
        let response = self
            .head()
            .object("in_progress", None, Value::Null, Vec::new(), None);
        self.emit(out, "response.in_progress", json!({ "response": response }));
    }

    fn output_index(&self) -> usize {
        self.output.len()
    }

    fn open_item(&mut self, out: &mut Vec<String>, open: OpenItem, item: Value) {
        self.close_item(out);
        let output_index = self.output_index();
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": output_index, "item": item}),
        );
        self.open = Some(open);
    }

    /// Open a text part, in the open message item or a new one.
    fn open_text(&mut self, out: &mut Vec<String>) {
        if !matches!(self.open, Some(OpenItem::Message { .. })) {
            let item_id = item_id("msg", &self.base, self.output_index());
            let item = message_item(&item_id, &[], "in_progress");
            self.open_item(
                out,
                OpenItem::Message {
                    item_id,
                    parts: Vec::new(),
                    part_open: false,
                },
                item,
            );
        }
        self.close_part(out);
        let output_index = self.output_index();
        if let Some(OpenItem::Message {
            item_id,
            parts,
            part_open,
        }) = &mut self.open
        {
            let fields = json!({
                "item_id": item_id,
                "output_index": output_index,
                "content_index": parts.len(),
                "part": output_text_part(""),
            });
            parts.push(String::new());
            *part_open = true;
            out.push(event(&mut self.seq, "response.content_part.added", fields));
        }
    }

    /// Close the open text part or reasoning summary part, if any.
    fn close_part(&mut self, out: &mut Vec<String>) {
        let output_index = self.output_index();
        match &mut self.open {
            Some(OpenItem::Message {
                item_id,
                parts,
                part_open,
            }) if *part_open => {
                *part_open = false;
                let index = parts.len().saturating_sub(1);
                let text = parts.last().cloned().unwrap_or_default();
                let base = json!({"item_id": item_id, "output_index": output_index,
                                  "content_index": index});
                let mut done = base.clone();
                done["text"] = json!(text);
                done["logprobs"] = json!([]);
                let mut part = base;
                part["part"] = output_text_part(&text);
                out.push(event(&mut self.seq, "response.output_text.done", done));
                out.push(event(&mut self.seq, "response.content_part.done", part));
            }
            Some(OpenItem::Reasoning {
                item_id,
                text,
                part_open,
                ..
            }) if *part_open => {
                *part_open = false;
                let base = json!({"item_id": item_id, "output_index": output_index,
                                  "summary_index": 0});
                let mut done = base.clone();
                done["text"] = json!(text);
                let mut part = base;
                part["part"] = json!({"type": "summary_text", "text": text});
                out.push(event(
                    &mut self.seq,
                    "response.reasoning_summary_text.done",
                    done,
                ));
                out.push(event(
                    &mut self.seq,
                    "response.reasoning_summary_part.done",
                    part,
                ));
            }
            _ => {}
        }
    }

    /// Finish the open output item: its closing events and `response.output_item.done`.
    fn close_item(&mut self, out: &mut Vec<String>) {
        self.close_part(out);
        let Some(open) = self.open.take() else {
            return;
        };
        let output_index = self.output_index();
        let item = match open {
            OpenItem::Message { item_id, parts, .. } => message_item(&item_id, &parts, "completed"),
            OpenItem::Reasoning {
                item_id,
                text,
                signature,
                redacted,
                ..
            } => match redacted {
                Some(data) => reasoning_item(
                    Some(&item_id),
                    "",
                    Some(&format!("{REDACTED_THINKING_PREFIX}{data}")),
                ),
                None => reasoning_item(Some(&item_id), &text, signature.as_deref()),
            },
            OpenItem::Call {
                item_id,
                custom,
                call_id,
                name,
                json,
            } => {
                let ids = json!({"item_id": item_id, "output_index": output_index});
                let input = if custom {
                    let input = parse_tool_input(&json);
                    let text = custom_input(&input);
                    let mut delta = ids.clone();
                    delta["delta"] = json!(text);
                    let mut done = ids;
                    done["input"] = json!(text);
                    self.emit(out, "response.custom_tool_call_input.delta", delta);
                    self.emit(out, "response.custom_tool_call_input.done", done);
                    input
                } else {
                    // A call whose input never streamed is `{}`: clients parse the text.
                    let text = if json.trim().is_empty() {
                        let mut delta = ids.clone();
                        delta["delta"] = json!("{}");
                        self.emit(out, "response.function_call_arguments.delta", delta);
                        "{}".to_owned()
                    } else {
                        json
                    };
                    let mut done = ids;
                    done["name"] = json!(name);
                    done["arguments"] = json!(text);
                    self.emit(out, "response.function_call_arguments.done", done);
                    parse_tool_input(&text)
                };
                call_item(&item_id, custom, &call_id, &name, &input, "completed")
            }
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": output_index, "item": item.clone()}),
        );
        self.output.push(item);
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
                if !matches!(block, BlockStart::Text) {
                    self.close_item(&mut out);
                }
                let index = self.output_index();
                match block {
                    BlockStart::Text => self.open_text(&mut out),
                    BlockStart::Thinking | BlockStart::RedactedThinking { .. } => {
                        let redacted = match block {
                            BlockStart::RedactedThinking { data } => Some(data.clone()),
                            _ => None,
                        };
                        let item_id = item_id("rs", &self.base, index);
                        // The redacted data is known up front: parsers learn the block kind
                        // from the added item.
                        let enc = redacted
                            .as_ref()
                            .map(|d| format!("{REDACTED_THINKING_PREFIX}{d}"));
                        let item = reasoning_item(Some(&item_id), "", enc.as_deref());
                        self.open_item(
                            &mut out,
                            OpenItem::Reasoning {
                                item_id,
                                text: String::new(),
                                part_open: false,
                                signature: None,
                                redacted,
                            },
                            item,
                        );
                    }
                    BlockStart::ToolUse { id, name } => {
                        self.saw_tool = true;
                        let custom = self.ctx.is_custom_tool(name);
                        let item_id = item_id(if custom { "ctc" } else { "fc" }, &self.base, index);
                        let call_id = self.ids.map(id);
                        let empty = if custom {
                            json!({"input": ""})
                        } else {
                            json!("")
                        };
                        let item =
                            call_item(&item_id, custom, &call_id, name, &empty, "in_progress");
                        self.open_item(
                            &mut out,
                            OpenItem::Call {
                                item_id,
                                custom,
                                call_id,
                                name: name.clone(),
                                json: String::new(),
                            },
                            item,
                        );
                    }
                }
            }
            StreamEvent::Delta { delta, .. } => self.delta(delta, &mut out),
            StreamEvent::BlockStop { .. } => match self.open {
                // Text parts close; their message stays open for the next text block.
                Some(OpenItem::Message { .. }) => self.close_part(&mut out),
                _ => self.close_item(&mut out),
            },
            StreamEvent::Usage(u) => self.usage = self.usage.max(*u),
            StreamEvent::Finish { stop_reason, .. } => {
                self.ensure_started(&mut out);
                self.stop_reason = Some(*stop_reason);
                self.close_item(&mut out);
            }
        }
        out
    }

    fn delta(&mut self, delta: &BlockDelta, out: &mut Vec<String>) {
        let output_index = self.output_index();
        match (&mut self.open, delta) {
            (
                Some(OpenItem::Message {
                    item_id,
                    parts,
                    part_open: true,
                }),
                BlockDelta::Text(t),
            ) if !t.is_empty() => {
                if let Some(last) = parts.last_mut() {
                    last.push_str(t);
                }
                let fields = json!({"item_id": item_id, "output_index": output_index,
                    "content_index": parts.len().saturating_sub(1), "delta": t, "logprobs": []});
                out.push(event(&mut self.seq, "response.output_text.delta", fields));
            }
            (
                Some(OpenItem::Reasoning {
                    item_id,
                    text,
                    part_open,
                    redacted: None,
                    ..
                }),
                BlockDelta::Thinking(t),
            ) if !t.is_empty() => {
                if !*part_open {
                    *part_open = true;
                    let fields = json!({"item_id": item_id, "output_index": output_index,
                        "summary_index": 0, "part": {"type": "summary_text", "text": ""}});
                    out.push(event(
                        &mut self.seq,
                        "response.reasoning_summary_part.added",
                        fields,
                    ));
                }
                text.push_str(t);
                let fields = json!({"item_id": item_id, "output_index": output_index,
                    "summary_index": 0, "delta": t});
                out.push(event(
                    &mut self.seq,
                    "response.reasoning_summary_text.delta",
                    fields,
                ));
            }
            (Some(OpenItem::Reasoning { signature, .. }), BlockDelta::Signature(s)) => {
                signature.get_or_insert_with(String::new).push_str(s);
            }
            (
                Some(OpenItem::Call {
                    item_id,
                    custom,
                    json,
                    ..
                }),
                BlockDelta::ToolInputJson(j),
            ) if !j.is_empty() => {
                json.push_str(j);
                if !*custom {
                    let fields =
                        json!({"item_id": item_id, "output_index": output_index, "delta": j});
                    out.push(event(
                        &mut self.seq,
                        "response.function_call_arguments.delta",
                        fields,
                    ));
                }
            }
            _ => {}
        }
    }

    /// Frames after the upstream ended successfully: the open item's closing events and
    /// `response.completed` (or `response.incomplete`) with the whole response and usage.
    pub fn end(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        self.ensure_started(&mut out);
        self.close_item(&mut out);
        self.done = true;
        let stop = self.stop_reason.unwrap_or(if self.saw_tool {
            StopReason::ToolUse
        } else {
            StopReason::EndTurn
        });
        let (status, incomplete) = terminal(stop);
        let response = self.head().object(
            status,
            incomplete,
            Value::Null,
            self.output.clone(),
            Some(&self.usage),
        );
        let ty = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(&mut out, ty, json!({ "response": response }));
        out
    }

    /// The frames of a stream that failed after the first byte: `response.failed` (with the
    /// items completed so far) and an `error` event; never a completion. See
    /// [`failure_frames`] for why both.
    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        self.ensure_started(&mut out);
        self.done = true;
        let (code, _, message) = failure(err);
        let response = self.head().object(
            "failed",
            None,
            json!({"code": code, "message": message}),
            self.output.clone(),
            None,
        );
        out.extend(failure_frames(&mut self.seq, response, err));
        out
    }
}

// ---------------------------------------------------------------------------------------
// Streams: Responses upstream -> canonical
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Thinking,
    Redacted,
    Function,
    Custom,
}

/// The canonical block open for the current output item.
#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    index: usize,
    kind: Kind,
    /// Content arrived as deltas (else the `.done` events or the done item supply it).
    streamed: bool,
    /// Reasoning summary parts seen (later parts are joined with `\n\n`).
    summary_parts: u64,
}

/// Turns a Responses upstream's SSE events into canonical [`StreamEvent`]s (for accounting
/// and for clients of other shapes).
///
/// Text content parts, function and custom tool calls and reasoning items become blocks in
/// order; output items the IR cannot stream (`web_search_call`, …) are skipped. Content that
/// a server delivers only whole (in `*.done` events or the done item) is still picked up.
/// Usage and the stop reason come from `response.completed` / `response.incomplete`.
#[derive(Debug, Default)]
pub struct StreamParser {
    started: bool,
    finished: bool,
    ended_cleanly: bool,
    next_index: usize,
    open: Option<OpenBlock>,
    /// Whether the current output item opened any block.
    item_opened: bool,
    saw_tool: bool,
    error_class: Option<ErrorClass>,
}

/// `s` as the inside of a JSON string literal (so fragments can be streamed).
fn json_fragment(s: &str) -> String {
    let quoted = Value::String(s.to_owned()).to_string();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned()
}

impl StreamParser {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the upstream signalled the end itself (`response.completed` or
    /// `response.incomplete`), as opposed to a connection that simply stopped.
    #[must_use]
    pub fn ended_cleanly(&self) -> bool {
        self.ended_cleanly
    }

    /// After [`StreamParser::push`] returned an error: how the upstream classified it (its
    /// error `code`: `context_length_exceeded` is a context overflow, `rate_limit_exceeded` a
    /// rate limit, …), so the failure reaches the client with a code it can act on.
    #[must_use]
    pub fn error_class(&self) -> Option<ErrorClass> {
        self.error_class
    }

    /// Consume one frame.
    ///
    /// # Errors
    /// A `response.failed` or `error` event, or a frame that is not JSON; the message names
    /// the upstream error code/type only, never its text.
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
            .unwrap_or_default();
        match ty {
            "response.created" | "response.in_progress" | "response.queued" => {
                let r = v.get("response").unwrap_or(&Value::Null);
                self.start(
                    r.get("id").and_then(Value::as_str),
                    r.get("model").and_then(Value::as_str),
                    &mut out,
                );
            }
            "response.output_item.added" => {
                self.start(None, None, &mut out);
                self.close(&mut out);
                self.item_opened = false;
                let item = v.get("item").unwrap_or(&Value::Null);
                let str_of = |k: &str| {
                    item.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                match item.get("type").and_then(Value::as_str) {
                    Some(t @ ("function_call" | "custom_tool_call")) => {
                        let custom = t == "custom_tool_call";
                        self.saw_tool = true;
                        let start = BlockStart::ToolUse {
                            id: str_of("call_id"),
                            name: str_of("name"),
                        };
                        let kind = if custom { Kind::Custom } else { Kind::Function };
                        let index = self.open_block(kind, start, &mut out);
                        if custom {
                            self.delta(
                                index,
                                BlockDelta::ToolInputJson("{\"input\":\"".into()),
                                &mut out,
                            );
                        }
                    }
                    Some("reasoning") => {
                        let enc = item.get("encrypted_content").and_then(Value::as_str);
                        match enc.and_then(|e| e.strip_prefix(REDACTED_THINKING_PREFIX)) {
                            Some(data) => {
                                let start = BlockStart::RedactedThinking {
                                    data: data.to_owned(),
                                };
                                self.open_block(Kind::Redacted, start, &mut out);
                            }
                            None => {
                                self.open_block(Kind::Thinking, BlockStart::Thinking, &mut out);
                            }
                        }
                    }
                    // Messages open a block per content part.
                    _ => {}
                }
            }
            "response.content_part.added" => {
                let part = v
                    .get("part")
                    .and_then(|p| p.get("type"))
                    .and_then(Value::as_str);
                if matches!(part, Some("output_text" | "refusal")) {
                    self.open_block(Kind::Text, BlockStart::Text, &mut out);
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(d) = v
                    .get("delta")
                    .and_then(Value::as_str)
                    .filter(|d| !d.is_empty())
                {
                    let index = match self.open {
                        Some(o) if o.kind == Kind::Text => o.index,
                        // Lenient: a server that skipped `content_part.added`.
                        _ => self.open_block(Kind::Text, BlockStart::Text, &mut out),
                    };
                    self.delta(index, BlockDelta::Text(d.to_owned()), &mut out);
                }
            }
            "response.content_part.done" if self.open.is_some_and(|o| o.kind == Kind::Text) => {
                self.close(&mut out);
            }
            "response.function_call_arguments.delta" => {
                self.fragment(Kind::Function, v.get("delta"), false, &mut out);
            }
            "response.function_call_arguments.done" => {
                self.whole(Kind::Function, v.get("arguments"), false, &mut out);
            }
            "response.custom_tool_call_input.delta" => {
                self.fragment(Kind::Custom, v.get("delta"), true, &mut out);
            }
            "response.custom_tool_call_input.done" => {
                self.whole(Kind::Custom, v.get("input"), true, &mut out);
            }
            "response.reasoning_summary_part.added" => {
                if let Some(o) = self.open.as_mut().filter(|o| o.kind == Kind::Thinking) {
                    o.summary_parts += 1;
                    if o.summary_parts > 1 {
                        let index = o.index;
                        self.delta(index, BlockDelta::Thinking("\n\n".into()), &mut out);
                    }
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                self.fragment(Kind::Thinking, v.get("delta"), false, &mut out);
            }
            "response.output_item.done" => {
                let item = v.get("item").unwrap_or(&Value::Null);
                self.item_done(item, &mut out);
            }
            "response.completed" | "response.incomplete" => {
                let r = v.get("response").unwrap_or(&Value::Null);
                self.start(
                    r.get("id").and_then(Value::as_str),
                    r.get("model").and_then(Value::as_str),
                    &mut out,
                );
                self.close(&mut out);
                if let Some(u) = r.get("usage").filter(|u| u.is_object()) {
                    out.push(StreamEvent::Usage(usage_from(u)));
                }
                let reason = r
                    .get("incomplete_details")
                    .and_then(|d| d.get("reason"))
                    .and_then(Value::as_str);
                let status = if ty == "response.incomplete" {
                    Some("incomplete")
                } else {
                    r.get("status").and_then(Value::as_str)
                };
                out.push(StreamEvent::Finish {
                    stop_reason: stop_from(status, reason, self.saw_tool),
                    stop_sequence: None,
                });
                self.finished = true;
                self.ended_cleanly = true;
            }
            "response.failed" | "error" => {
                let err = v
                    .get("response")
                    .and_then(|r| r.get("error"))
                    .or_else(|| v.get("error"))
                    .filter(|e| e.is_object())
                    .cloned()
                    // The documented `error` event has `code` at the top level.
                    .unwrap_or_else(|| json!({"code": v.get("code")}));
                let body = json!({ "error": err }).to_string();
                self.error_class = Some(ErrorClass::classify_upstream(500, body.as_bytes()));
                return Err(format!("upstream stream error: {}", error_kind(&err)));
            }
            _ => {}
        }
        Ok(out)
    }

    /// End of the upstream byte stream: close the open block and finish, if not done yet.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.start(None, None, &mut out);
        self.close(&mut out);
        self.finished = true;
        out.push(StreamEvent::Finish {
            stop_reason: if self.saw_tool {
                StopReason::ToolUse
            } else {
                StopReason::EndTurn
            },
            stop_sequence: None,
        });
        out
    }

    fn start(&mut self, id: Option<&str>, model: Option<&str>, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: id.map(str::to_owned),
                model: model.map(str::to_owned),
                usage: Usage::default(),
            });
        }
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some(o) = self.open.take() {
            if o.kind == Kind::Custom {
                out.push(StreamEvent::Delta {
                    index: o.index,
                    delta: BlockDelta::ToolInputJson("\"}".into()),
                });
            }
            out.push(StreamEvent::BlockStop { index: o.index });
        }
    }

    fn open_block(&mut self, kind: Kind, start: BlockStart, out: &mut Vec<StreamEvent>) -> usize {
        self.start(None, None, out);
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.item_opened = true;
        self.open = Some(OpenBlock {
            index,
            kind,
            streamed: false,
            summary_parts: 0,
        });
        out.push(StreamEvent::BlockStart {
            index,
            block: start,
        });
        index
    }

    fn delta(&mut self, index: usize, delta: BlockDelta, out: &mut Vec<StreamEvent>) {
        out.push(StreamEvent::Delta { index, delta });
    }

    /// A streamed fragment for the open block of `kind` (ignored for any other block).
    fn fragment(
        &mut self,
        kind: Kind,
        delta: Option<&Value>,
        escape: bool,
        out: &mut Vec<StreamEvent>,
    ) {
        let Some(d) = delta.and_then(Value::as_str).filter(|d| !d.is_empty()) else {
            return;
        };
        let Some(o) = self.open.as_mut().filter(|o| o.kind == kind) else {
            return;
        };
        o.streamed = true;
        let index = o.index;
        let delta = match kind {
            Kind::Thinking => BlockDelta::Thinking(d.to_owned()),
            _ if escape => BlockDelta::ToolInputJson(json_fragment(d)),
            _ => BlockDelta::ToolInputJson(d.to_owned()),
        };
        self.delta(index, delta, out);
    }

    /// The whole content of the open block of `kind`, used only if nothing streamed.
    fn whole(
        &mut self,
        kind: Kind,
        text: Option<&Value>,
        escape: bool,
        out: &mut Vec<StreamEvent>,
    ) {
        if self.open.is_some_and(|o| o.kind == kind && !o.streamed) {
            self.fragment(kind, text, escape, out);
        }
    }

    fn item_done(&mut self, item: &Value, out: &mut Vec<StreamEvent>) {
        let ty = item.get("type").and_then(Value::as_str);
        if !self.item_opened {
            // Nothing streamed for this item: take it whole.
            for block in blocks_from_item(item) {
                self.whole_block(block, out);
            }
            return;
        }
        match (ty, self.open) {
            (Some("function_call"), Some(o)) if o.kind == Kind::Function => {
                self.whole(Kind::Function, item.get("arguments"), false, out);
            }
            (Some("custom_tool_call"), Some(o)) if o.kind == Kind::Custom => {
                self.whole(Kind::Custom, item.get("input"), true, out);
            }
            (Some("reasoning"), Some(o)) if o.kind == Kind::Thinking => {
                if !o.streamed {
                    let arr =
                        |key: &str| item.get(key).and_then(Value::as_array).map(Vec::as_slice);
                    let text = reasoning_text(arr("summary"), arr("content"));
                    if !text.is_empty() {
                        self.delta(o.index, BlockDelta::Thinking(text), out);
                    }
                }
                if let Some(sig) = item.get("encrypted_content").and_then(Value::as_str) {
                    self.delta(o.index, BlockDelta::Signature(sig.to_owned()), out);
                }
            }
            _ => {}
        }
        self.close(out);
        self.item_opened = false;
    }

    /// A complete block as events (for items delivered whole). Opaque items are skipped:
    /// the canonical stream has no block for them.
    fn whole_block(&mut self, block: ContentBlock, out: &mut Vec<StreamEvent>) {
        let (kind, start, deltas) = match block {
            ContentBlock::Text { text, .. } => {
                (Kind::Text, BlockStart::Text, vec![BlockDelta::Text(text)])
            }
            ContentBlock::Thinking {
                thinking,
                signature,
            } => {
                let mut d = vec![BlockDelta::Thinking(thinking)];
                d.extend(signature.map(BlockDelta::Signature));
                (Kind::Thinking, BlockStart::Thinking, d)
            }
            ContentBlock::RedactedThinking { data } => (
                Kind::Redacted,
                BlockStart::RedactedThinking { data },
                Vec::new(),
            ),
            ContentBlock::ToolUse {
                id, name, input, ..
            } => {
                self.saw_tool = true;
                (
                    Kind::Function,
                    BlockStart::ToolUse { id, name },
                    vec![BlockDelta::ToolInputJson(arguments_string(&input))],
                )
            }
            _ => return,
        };
        let index = self.open_block(kind, start, out);
        for d in deltas {
            let empty = matches!(&d, BlockDelta::Text(t) | BlockDelta::Thinking(t) if t.is_empty());
            if !empty {
                self.delta(index, d, out);
            }
        }
        self.close(out);
    }
}

// ---------------------------------------------------------------------------------------
// Streams: same shape
// ---------------------------------------------------------------------------------------

/// Forwards a Responses upstream's stream to a Responses client: every event as the upstream
/// sent it, except that a `response` object's `model` is replaced by the client's string.
///
/// Upstream `response.failed` and `error` events are not forwarded (their text may echo the
/// prompt): the caller's [`StreamParser`] reports them and the caller answers with
/// [`PassthroughStream::error`], which continues the upstream's response id and sequence
/// numbers.
#[derive(Debug)]
pub struct PassthroughStream {
    model: String,
    id: Option<String>,
    created_at: Value,
    next_seq: u64,
    forwarded: bool,
    done: bool,
}

impl PassthroughStream {
    #[must_use]
    pub fn new(client_model: &str) -> Self {
        PassthroughStream {
            model: client_model.to_owned(),
            id: None,
            created_at: Value::Null,
            next_seq: 0,
            forwarded: false,
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
        let event = frame.event.as_deref();
        let Ok(mut v) = serde_json::from_str::<Value>(data) else {
            self.forwarded = true;
            return Some(format_frame(event, &frame.data));
        };
        let ty = v.get("type").and_then(Value::as_str).or(event);
        if matches!(ty, Some("response.failed" | "error")) {
            return None;
        }
        if let Some(n) = v.get("sequence_number").and_then(Value::as_u64) {
            self.next_seq = self.next_seq.max(n + 1);
        }
        self.forwarded = true;
        let Some(response) = v.get_mut("response").and_then(Value::as_object_mut) else {
            // Most events carry no response object: forward their bytes untouched.
            return Some(format_frame(event, &frame.data));
        };
        if self.id.is_none() {
            self.id = response
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            self.created_at = response.get("created_at").cloned().unwrap_or(Value::Null);
        }
        if response.contains_key("model") {
            response.insert("model".into(), Value::String(self.model.clone()));
        }
        Some(format_frame(event, &v.to_string()))
    }

    /// The final frames when the stream fails mid-way (see [`StreamRenderer::error`]); a
    /// `response.created` comes first if nothing was forwarded yet.
    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let (code, _, message) = failure(err);
        let id = self.id.clone().unwrap_or_else(|| "resp_failed".to_owned());
        let object = |status: &str, error: Value| {
            json!({"id": id, "object": "response", "created_at": self.created_at,
                   "status": status, "error": error, "incomplete_details": null,
                   "model": self.model, "output": [], "usage": null})
        };
        let mut seq = self.next_seq;
        let mut out = Vec::new();
        if !self.forwarded {
            let created = object("in_progress", Value::Null);
            out.push(event(
                &mut seq,
                "response.created",
                json!({ "response": created }),
            ));
        }
        let failed = object("failed", json!({"code": code, "message": message}));
        out.extend(failure_frames(&mut seq, failed, err));
        self.next_seq = seq;
        out
    }
}

#[cfg(test)]
mod prepare_tests {
    use super::*;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{ImageSource, StreamAccumulator};
    use crate::sse::SseParser;

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
                    ContentBlock::Other(opaque(
                        &json!({"type": "input_image", "file_id": "file-1"})
                    )),
                    ContentBlock::Other(opaque(
                        &json!({"type": "input_file", "file_id": "file-2"})
                    )),
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
            with(
                json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}])
            ),
            "input[0].arguments must encode a JSON object"
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
}
