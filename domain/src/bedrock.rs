//! Amazon Bedrock Converse (`POST /model/{id}/converse` and `/converse-stream`) <-> canonical IR,
//! for a Bedrock upstream only (no client speaks this wire).
//!
//! - [`render_request`]: the body carries no model (it is in the URL). System blocks become
//!   `system[].text`; text, base64 images, tool calls (`toolUse`), tool results (`toolResult`)
//!   and signed thinking (`reasoningContent`) become content blocks; `max_tokens`,
//!   `temperature`, `top_p` and stop sequences go to `inferenceConfig`; tools and tool choice
//!   to `toolConfig`. Anthropic `cache_control` marks become a `cachePoint` block after the
//!   marked block, which is how Converse asks for prompt caching. Anthropic `thinking`
//!   settings go to `additionalModelRequestFields.thinking` (Claude on Bedrock reads them
//!   there).
//! - Refused by name (never guessed): image URLs (Converse takes inline bytes or S3 only),
//!   blocks and tools the IR keeps opaque.
//! - `parallel_tool_calls: false` has no Converse field and is not sent (the model may still
//!   call several tools in one turn; every call and result is carried either way).
//! - `tool_choice: none` has no Converse equivalent: the tools are left out, unless the
//!   conversation already holds tool calls (Converse then requires `toolConfig`), in which
//!   case they are sent without a choice.
//! - [`parse_response`] / [`StreamParser`]: usage counters are disjoint as in the IR
//!   (`inputTokens` is the uncached input; `cacheReadInputTokens`, `cacheWriteInputTokens`).
//!   The stream arrives as SSE re-framed by the adapter from the binary event stream: one
//!   frame per event, named by its `:event-type` (`messageStart`, `contentBlockStart`,
//!   `contentBlockDelta`, `contentBlockStop`, `messageStop`, `metadata`), or by its
//!   `:exception-type` (`throttlingException`, …), which ends the stream as an error. Text
//!   blocks have no `contentBlockStart` on this wire: the first delta of a new index opens one.
//!   `metadata` (usage) follows `messageStop`, so the canonical `Finish` is emitted after it.

use crate::canonical::wire::{Res, count, str_of};
use crate::canonical::{
    BlockDelta, BlockStart, ChatRequest, ChatResponse, ContentBlock, ImageSource, Role, StopReason,
    StreamEvent, ToolChoice, ToolResultContent, Usage,
};
use crate::error::{ErrorClass, GatewayError, invalid};
use crate::sse::SseFrame;
use serde_json::{Map, Value, json};

/// `maxTokens` sent when the client set none: Claude on Bedrock requires a bound, and this
/// matches the Anthropic upstream's default.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Render a canonical request as a Converse body (the model id goes in the URL).
///
/// # Errors
/// `InvalidRequest` naming what Converse cannot carry (an image URL, an opaque block or tool).
pub fn render_request(req: &ChatRequest, _upstream_model: &str) -> Result<Value, GatewayError> {
    let mut body = Map::new();
    let mut system = Vec::new();
    for b in &req.system {
        if !b.text.is_empty() {
            system.push(json!({"text": b.text}));
        }
        // A cache point marks the prefix before it: one with nothing before it is invalid.
        if b.cache_control.is_some() && !system.is_empty() {
            system.push(cache_point());
        }
    }
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let mut messages: Vec<Value> = Vec::new();
    let mut has_tool_blocks = false;
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let mut content = Vec::new();
        let mut results = Vec::new();
        for (j, b) in m.content.iter().enumerate() {
            let path = format!("messages[{i}].content[{j}]");
            has_tool_blocks |= matches!(
                b,
                ContentBlock::ToolUse { .. } | ContentBlock::ToolResult { .. }
            );
            let (block, cache) = render_block(b, &path)?;
            let Some(block) = block else { continue };
            // Tool results go first in a user turn, right after the assistant's calls.
            let target = if block.get("toolResult").is_some() {
                &mut results
            } else {
                &mut content
            };
            target.push(block);
            if cache {
                target.push(cache_point());
            }
        }
        results.extend(content);
        if results.is_empty() {
            continue;
        }
        // Converse requires alternating roles: merge consecutive same-role turns.
        match messages.last_mut() {
            Some(last) if last.get("role").and_then(Value::as_str) == Some(role) => {
                if let Some(Value::Array(c)) = last.get_mut("content") {
                    c.extend(results);
                }
            }
            _ => messages.push(json!({"role": role, "content": results})),
        }
    }
    body.insert("messages".into(), Value::Array(messages));
    let mut inference = Map::new();
    inference.insert(
        "maxTokens".into(),
        json!(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if let Some(t) = req.temperature {
        // Claude accepts 0..=1; OpenAI clients may send up to 2.
        inference.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = req.top_p {
        inference.insert("topP".into(), json!(p));
    }
    if !req.stop.is_empty() {
        inference.insert("stopSequences".into(), json!(req.stop));
    }
    body.insert("inferenceConfig".into(), Value::Object(inference));
    if let Some(o) = req.other_tools.first() {
        return Err(invalid(format!(
            "tool type '{}' cannot be sent to Bedrock Converse",
            o.kind()
        )));
    }
    let choice_none = req.tool_choice == Some(ToolChoice::None);
    if !req.tools.is_empty() && (!choice_none || has_tool_blocks) {
        let mut tools = Vec::new();
        for t in &req.tools {
            let mut spec = Map::new();
            spec.insert("name".into(), json!(t.name));
            if let Some(d) = t.description.as_deref().filter(|d| !d.is_empty()) {
                spec.insert("description".into(), json!(d));
            }
            spec.insert("inputSchema".into(), json!({"json": t.input_schema}));
            tools.push(json!({"toolSpec": spec}));
            if t.cache_control.is_some() {
                tools.push(cache_point());
            }
        }
        let mut config = Map::new();
        config.insert("tools".into(), Value::Array(tools));
        let choice = match &req.tool_choice {
            Some(ToolChoice::Auto) => Some(json!({"auto": {}})),
            Some(ToolChoice::Any) => Some(json!({"any": {}})),
            Some(ToolChoice::Tool(name)) => Some(json!({"tool": {"name": name}})),
            Some(ToolChoice::None) | None => None,
        };
        if let Some(c) = choice {
            config.insert("toolChoice".into(), c);
        }
        body.insert("toolConfig".into(), Value::Object(config));
    }
    let mut extra = Map::new();
    if let Some(thinking) = &req.thinking {
        extra.insert("thinking".into(), thinking.clone());
    }
    if !extra.is_empty() {
        body.insert("additionalModelRequestFields".into(), Value::Object(extra));
    }
    Ok(Value::Object(body))
}

fn cache_point() -> Value {
    json!({"cachePoint": {"type": "default"}})
}

/// One content block on the wire (`None`: dropped, e.g. empty text), and whether a cache
/// point follows it.
fn render_block(b: &ContentBlock, path: &str) -> Res<(Option<Value>, bool)> {
    Ok(match b {
        ContentBlock::Text {
            text,
            cache_control,
        } => (
            (!text.is_empty()).then(|| json!({"text": text})),
            cache_control.is_some(),
        ),
        ContentBlock::Image {
            source,
            cache_control,
        } => (Some(image(source, path)?), cache_control.is_some()),
        ContentBlock::ToolUse {
            id,
            name,
            input,
            cache_control,
        } => {
            let input = if input.is_object() {
                input.clone()
            } else {
                Value::Object(Map::new())
            };
            (
                Some(json!({"toolUse": {"toolUseId": tool_id(id), "name": name, "input": input}})),
                cache_control.is_some(),
            )
        }
        ContentBlock::ToolResult {
            tool_use_id,
            content,
            is_error,
            cache_control,
        } => {
            let mut parts = Vec::new();
            for (k, c) in content.iter().enumerate() {
                parts.push(match c {
                    ToolResultContent::Text(t) => json!({"text": t}),
                    ToolResultContent::Image(s) => image(s, &format!("{path}.content[{k}]"))?,
                    ToolResultContent::Other(o) => {
                        return Err(invalid(format!(
                            "{path}.content[{k}]: tool result block type '{}' cannot be sent to Bedrock Converse",
                            o.kind()
                        )));
                    }
                });
            }
            let mut result = json!({"toolUseId": tool_id(tool_use_id), "content": parts});
            if *is_error {
                result["status"] = json!("error");
            }
            (Some(json!({"toolResult": result})), cache_control.is_some())
        }
        ContentBlock::Thinking {
            thinking,
            signature,
        } => match signature.as_deref().filter(|s| !s.is_empty()) {
            // Claude rejects unsigned thinking sent back; a block from another upstream has
            // no signature and is dropped, as the Anthropic renderer does.
            Some(sig) => (
                Some(
                    json!({"reasoningContent": {"reasoningText": {"text": thinking, "signature": sig}}}),
                ),
                false,
            ),
            None => (None, false),
        },
        ContentBlock::RedactedThinking { data } => (
            Some(json!({"reasoningContent": {"redactedContent": data}})),
            false,
        ),
        ContentBlock::Other(o) => {
            return Err(invalid(format!(
                "{path}: content block type '{}' cannot be sent to Bedrock Converse",
                o.kind()
            )));
        }
    })
}

/// A tool-call id as Converse accepts it (`[a-zA-Z0-9_-]+`): other characters (a Responses
/// client's `fc_…|…` ids, say) become `_`, the same way on the call and on its result.
fn tool_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn image(source: &ImageSource, path: &str) -> Res<Value> {
    match source {
        ImageSource::Base64 { media_type, data } => {
            let format = match media_type.as_str() {
                "image/png" => "png",
                "image/jpeg" | "image/jpg" => "jpeg",
                "image/gif" => "gif",
                "image/webp" => "webp",
                other => {
                    return Err(invalid(format!(
                        "{path}: image type '{other}' cannot be sent to Bedrock Converse (png, jpeg, gif or webp)"
                    )));
                }
            };
            Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
        }
        ImageSource::Url { .. } => Err(invalid(format!(
            "{path}: image URLs cannot be sent to Bedrock Converse; send the image inline (base64 data URL)"
        ))),
    }
}

fn stop_reason(s: &str) -> StopReason {
    match s {
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "tool_use" => StopReason::ToolUse,
        "guardrail_intervened" | "content_filtered" => StopReason::Refusal,
        _ => StopReason::EndTurn,
    }
}

fn usage_from(u: &Value) -> Usage {
    Usage {
        input_tokens: count(u, "inputTokens"),
        output_tokens: count(u, "outputTokens"),
        cache_read_tokens: count(u, "cacheReadInputTokens"),
        cache_write_tokens: count(u, "cacheWriteInputTokens"),
    }
}

/// Parse a complete Converse answer.
///
/// # Errors
/// A short description when the body is not a Converse answer (an error body names its
/// `__type` only, never its text).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| "upstream response is not valid JSON".to_owned())?;
    let Some(obj) = v.as_object() else {
        return Err("upstream response is not a JSON object".to_owned());
    };
    let Some(message) = obj.get("output").and_then(|o| o.get("message")) else {
        let kind = obj
            .get("__type")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        return Err(format!(
            "upstream response has no output.message (error type: {kind})"
        ));
    };
    let mut content = Vec::new();
    for b in message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            content.push(ContentBlock::Text {
                text: t.to_owned(),
                cache_control: None,
            });
        } else if let Some(t) = b.get("toolUse") {
            content.push(ContentBlock::ToolUse {
                id: str_of(t, "toolUseId"),
                name: str_of(t, "name"),
                input: t
                    .get("input")
                    .filter(|i| i.is_object())
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Map::new())),
                cache_control: None,
            });
        } else if let Some(r) = b.get("reasoningContent") {
            if let Some(rt) = r.get("reasoningText") {
                content.push(ContentBlock::Thinking {
                    thinking: str_of(rt, "text"),
                    signature: rt
                        .get("signature")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                });
            } else if let Some(data) = r.get("redactedContent").and_then(Value::as_str) {
                content.push(ContentBlock::RedactedThinking {
                    data: data.to_owned(),
                });
            }
        }
    }
    Ok(ChatResponse {
        id: None,
        model: None,
        content,
        stop_reason: obj
            .get("stopReason")
            .and_then(Value::as_str)
            .map_or(StopReason::EndTurn, stop_reason),
        stop_sequence: obj
            .get("additionalModelResponseFields")
            .and_then(|f| f.get("stop_sequence"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        usage: obj.get("usage").map(usage_from).unwrap_or_default(),
    })
}

/// The error class of a ConverseStream exception type (`throttlingException`, …).
#[must_use]
pub fn exception_class(exception: &str) -> ErrorClass {
    match exception {
        "throttlingException" | "modelNotReadyException" => ErrorClass::RateLimit,
        "validationException" => ErrorClass::InvalidRequest,
        "accessDeniedException" => ErrorClass::Auth,
        "internalServerException" | "serviceUnavailableException" | "modelStreamErrorException" => {
            ErrorClass::ServerError
        }
        _ => ErrorClass::Other,
    }
}

/// Turns ConverseStream events (re-framed as SSE, see the module docs) into canonical
/// [`StreamEvent`]s.
#[derive(Debug, Default)]
pub struct StreamParser {
    started: bool,
    finished: bool,
    ended_cleanly: bool,
    next_index: usize,
    /// (upstream `contentBlockIndex`, canonical index) of the open block.
    open: Option<(u64, usize)>,
    usage: Usage,
    stop_reason: Option<StopReason>,
    error_class: Option<ErrorClass>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    Thinking,
    Tool,
}

impl StreamParser {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the upstream sent `messageStop`, as opposed to a connection that stopped.
    #[must_use]
    pub fn ended_cleanly(&self) -> bool {
        self.ended_cleanly
    }

    /// The class of the exception that ended the stream, if one did.
    #[must_use]
    pub fn error_class(&self) -> Option<ErrorClass> {
        self.error_class
    }

    /// Consume one frame.
    ///
    /// # Errors
    /// An exception frame (named by its type only) or a frame that is not JSON.
    pub fn push(&mut self, frame: &SseFrame) -> Result<Vec<StreamEvent>, String> {
        let mut out = Vec::new();
        if self.finished {
            return Ok(out);
        }
        let name = frame.event.as_deref().unwrap_or_default();
        if name.ends_with("Exception") || name.ends_with("exception") {
            self.error_class = Some(exception_class(name));
            return Err(format!("upstream stream error: {name}"));
        }
        let data = frame.data.trim();
        if data.is_empty() {
            return Ok(out);
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|_| "upstream sent a malformed stream event".to_owned())?;
        let index = v.get("contentBlockIndex").and_then(Value::as_u64);
        match name {
            "messageStart" => self.start(&mut out),
            "contentBlockStart" => {
                let upstream = index.unwrap_or(0);
                let start = v.get("start").unwrap_or(&Value::Null);
                if let Some(t) = start.get("toolUse") {
                    self.open_block(
                        upstream,
                        BlockStart::ToolUse {
                            id: str_of(t, "toolUseId"),
                            name: str_of(t, "name"),
                        },
                        &mut out,
                    );
                }
            }
            "contentBlockDelta" => {
                let upstream = index.unwrap_or(0);
                let d = v.get("delta").unwrap_or(&Value::Null);
                let (kind, delta) = if let Some(t) = d.get("text").and_then(Value::as_str) {
                    (BlockKind::Text, BlockDelta::Text(t.to_owned()))
                } else if let Some(tu) = d.get("toolUse") {
                    (
                        BlockKind::Tool,
                        BlockDelta::ToolInputJson(str_of(tu, "input")),
                    )
                } else if let Some(r) = d.get("reasoningContent") {
                    if let Some(t) = r.get("text").and_then(Value::as_str) {
                        (BlockKind::Thinking, BlockDelta::Thinking(t.to_owned()))
                    } else if let Some(s) = r.get("signature").and_then(Value::as_str) {
                        (BlockKind::Thinking, BlockDelta::Signature(s.to_owned()))
                    } else if let Some(data) = r.get("redactedContent").and_then(Value::as_str) {
                        self.open_block(
                            upstream,
                            BlockStart::RedactedThinking {
                                data: data.to_owned(),
                            },
                            &mut out,
                        );
                        return Ok(out);
                    } else {
                        return Ok(out);
                    }
                } else {
                    return Ok(out);
                };
                if self.open.is_none_or(|(u, _)| u != upstream) {
                    let start = match kind {
                        BlockKind::Text => BlockStart::Text,
                        BlockKind::Thinking => BlockStart::Thinking,
                        // A tool delta without its start: nothing to name the call with.
                        BlockKind::Tool => return Ok(out),
                    };
                    self.open_block(upstream, start, &mut out);
                }
                if let Some((_, index)) = self.open {
                    let empty = match &delta {
                        BlockDelta::Text(s)
                        | BlockDelta::Thinking(s)
                        | BlockDelta::Signature(s)
                        | BlockDelta::ToolInputJson(s) => s.is_empty(),
                    };
                    if !empty {
                        out.push(StreamEvent::Delta { index, delta });
                    }
                }
            }
            "contentBlockStop" if self.open.is_some_and(|(u, _)| Some(u) == index) => {
                self.close(&mut out);
            }
            "messageStop" => {
                self.start(&mut out);
                self.close(&mut out);
                self.ended_cleanly = true;
                self.stop_reason = v.get("stopReason").and_then(Value::as_str).map(stop_reason);
            }
            "metadata" => {
                self.start(&mut out);
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.usage = usage_from(u);
                    out.push(StreamEvent::Usage(self.usage));
                }
                if self.ended_cleanly {
                    self.end(&mut out);
                }
            }
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

    fn start(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: None,
                model: None,
                usage: self.usage,
            });
        }
    }

    fn open_block(&mut self, upstream: u64, start: BlockStart, out: &mut Vec<StreamEvent>) {
        self.start(out);
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((upstream, index));
        out.push(StreamEvent::BlockStart {
            index,
            block: start,
        });
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((_, index)) = self.open.take() {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    fn end(&mut self, out: &mut Vec<StreamEvent>) {
        self.start(out);
        self.close(out);
        self.finished = true;
        out.push(StreamEvent::Finish {
            stop_reason: self.stop_reason.unwrap_or(StopReason::EndTurn),
            stop_sequence: None,
        });
    }
}

#[cfg(test)]
mod tests;
