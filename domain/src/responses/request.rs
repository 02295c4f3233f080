//! Responses requests: a client's body into the canonical IR ([`parse_request`]), its
//! preparation for an upstream without the Responses API ([`prepare_for_translation`]), and
//! a canonical request onto this wire for a Responses upstream ([`render_request`]).

use super::{
    custom_input_schema, is_part, opaque, output_text_part, reasoning_item, reasoning_text,
    thinking_block,
};
use crate::canonical::ParsedRequest;
use crate::canonical::wire::{
    self, Obj, Parts, Res, arguments_string, empty_object_schema, foreign, function_fields,
    function_tool, image_from_url, image_url, joined_system, openai_choice, openai_tool_choice,
    text_block,
};
use crate::canonical::{
    ChatRequest, ContentBlock, Message, Role, Shape, SystemBlock, ToolChoice, ToolDef,
    ToolResultContent,
};
use crate::error::{GatewayError, invalid};
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

/// Parse and validate a client's Responses body.
///
/// # Errors
/// `InvalidRequest` naming the offending JSON path (bad JSON, missing `model`, `input` that is
/// neither a string nor an array, an item that is not an object, a message without `role` or
/// `content`, a `function_call` without `call_id`/`name` or with `arguments` that are not a
/// JSON object, a `function_call_output` without `call_id` or — when there is no
/// `previous_response_id` — whose `call_id` matches no earlier call in `input`, …).
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest, GatewayError> {
    wire::parse_request(body, request_from_map)
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

pub(super) fn request_from_map(map: &Map<String, Value>) -> Res<ChatRequest> {
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
    req.tool_choice = top
        .get("tool_choice")
        .map(|v| openai_tool_choice(v, "a tool object", tool_choice_object))
        .transpose()?;
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
            let input = item.call_arguments()?;
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

/// The content parts of a message, which this wire requires (Chat Completions does not).
fn parts<'a>(msg: &Obj<'a>) -> Res<Parts<'a>> {
    if msg.get("content").is_none() {
        return Err(invalid(format!(
            "{} is required and must be a string or an array of content parts",
            msg.field("content")
        )));
    }
    msg.parts()
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

fn reasoning_block(item: &Obj<'_>) -> Res<ContentBlock> {
    let text = reasoning_text(item.array("summary")?, item.array("content")?);
    Ok(thinking_block(text, item.str("encrypted_content")?))
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

/// A `tool_choice` object: a function or custom tool by name, an allowed subset, or a hosted
/// tool.
fn tool_choice_object(obj: &Obj<'_>) -> Res<ToolChoice> {
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
                    .unwrap_or_else(empty_object_schema),
                cache_control: None,
            });
        }
    }
    req.tools.extend(flattened);
    Ok(dropped)
}

fn image_part(source: &crate::canonical::ImageSource) -> Value {
    json!({"type": "input_image", "image_url": image_url(source), "detail": "auto"})
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
    if let Some(system) = joined_system(req) {
        out.insert("instructions".into(), Value::String(system));
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
            tool.extend(function_fields(t));
            // The API defaults to strict schemas, which reject most schemas written for other
            // wires (every property required, no additional properties).
            tool.insert("strict".into(), Value::Bool(false));
            Value::Object(tool)
        })
        .collect();
    for other in &req.other_tools {
        tools.push(foreign(other, Shape::Responses, "tool")?);
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = &req.tool_choice {
            let choice = openai_choice(choice, |name| json!({"type": "function", "name": name}));
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
                            ToolResultContent::Other(o) => {
                                foreign(o, Shape::Responses, "tool result block")
                            }
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
            let v = foreign(o, Shape::Responses, "content block")?;
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
