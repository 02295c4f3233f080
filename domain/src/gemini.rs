//! Google Gemini `generateContent` / `streamGenerateContent` (the Gemini API and Gemini on
//! Vertex AI speak the same JSON) <-> canonical IR, for upstream use only: no client speaks
//! this wire to the gateway.
//!
//! [`render_request`] writes a canonical request as a `GenerateContentRequest` (the model is
//! in the URL, not the body); [`parse_response`] and [`StreamParser`] read what comes back
//! (a stream is SSE with one `GenerateContentResponse` chunk per `data:` line and no
//! terminal sentinel: the chunk carrying `finishReason` is the clean end).
//!
//! Invariants and lossy points (all deliberate):
//! - Roles: canonical user -> `user`, assistant -> `model`; consecutive same-role turns are
//!   merged (Gemini wants alternating turns); turns left without parts are dropped (the API
//!   rejects empty `parts`). The system prompt goes to `systemInstruction` (`\n\n`-joined).
//! - Tool calls: Gemini's `functionCall` has no id on most models. A call in an answer gets
//!   a minted id, `call_` + 16 hex digits of a hash of (position, name, arguments), so the
//!   same answer always yields the same ids and ids of different turns practically never
//!   collide. An `id` the upstream does send is kept. Going back out, a `tool_result` is
//!   rendered as a `functionResponse` carrying the NAME of the call with that id (the latest
//!   earlier call with it), and the results of one turn are ordered like the calls of the
//!   turn before, which is how Gemini pairs them (by name and order).
//! - A tool result's text becomes `response`: the JSON object itself when the text is one,
//!   else `{"result": text}` (`{"error": text}` for an error result); images inside a tool
//!   result are refused (the wire has no place for them).
//! - Tool schemas go out as `parametersJsonSchema` (full JSON Schema), so schemas with
//!   `additionalProperties`, `$ref`, … need no rewriting.
//! - Thinking: an Anthropic-style `thinking: {"type":"enabled","budget_tokens":N}` becomes
//!   `thinkingConfig {thinkingBudget: N, includeThoughts: true}`; answer parts with
//!   `thought: true` become thinking blocks (Gemini signs them with `thoughtSignature`, kept
//!   as the block's signature). Thinking blocks in a request are not sent back (Gemini does
//!   not take thought text as input).
//! - A `thoughtSignature` Gemini puts on a `functionCall` part is not carried back on the
//!   next turn (the canonical tool call has no place for it; Gemini 2.5 accepts calls
//!   without it).
//! - Images: base64 ones become `inlineData`; URL ones `fileData` with the media type taken
//!   from the file extension (an unknown extension is refused, naming the URL's field).
//! - Usage: `promptTokenCount` includes `cachedContentTokenCount`, so uncached input =
//!   prompt - cached (clamped at 0) and cache read = cached. Output = `candidatesTokenCount`
//!   + `thoughtsTokenCount` (thoughts are billed as output). Gemini reports no cache writes.
//! - `finishReason`: `STOP` -> end turn (tool use when the answer calls a function),
//!   `MAX_TOKENS` -> max tokens, the safety family (`SAFETY`, `RECITATION`, `BLOCKLIST`,
//!   `PROHIBITED_CONTENT`, `SPII`, `IMAGE_SAFETY`, …) -> refusal, anything else -> end turn.
//!   A prompt blocked outright (`promptFeedback.blockReason`, no candidate) is a refusal.
//!   Gemini does not say which stop sequence matched, so `stop_sequence` is never set.

use crate::canonical::{
    BlockDelta, BlockStart, ChatRequest, ChatResponse, ContentBlock, ImageSource, Message, Role,
    StopReason, StreamEvent, ToolChoice, ToolResultContent, Usage,
};
use crate::error::{GatewayError, invalid};
use crate::sse::SseFrame;
use serde_json::{Map, Value, json};

/// Render a canonical request as a Gemini `GenerateContentRequest` body. `_upstream_model`
/// is not part of the body: the adapter puts it in the URL.
///
/// # Errors
/// `InvalidRequest` naming what the wire cannot carry (a block or tool type the IR keeps
/// opaque, an image inside a tool result, a URL image of unknown type, a tool result whose
/// call is not in the conversation).
pub fn render_request(req: &ChatRequest, _upstream_model: &str) -> Result<Value, GatewayError> {
    let mut out = Map::new();
    let system: Vec<&str> = req
        .system
        .iter()
        .map(|b| b.text.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    if !system.is_empty() {
        out.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    if let Some(other) = req.other_tools.first() {
        return Err(invalid(format!(
            "tool type '{}' cannot be sent to a Gemini upstream",
            other.kind()
        )));
    }
    let mut contents: Vec<(Role, Vec<Value>)> = Vec::new();
    for (i, msg) in req.messages.iter().enumerate() {
        let parts = render_parts(req, i, msg)?;
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((role, existing)) if *role == msg.role => existing.extend(parts),
            _ => contents.push((msg.role, parts)),
        }
    }
    let contents: Vec<Value> = contents
        .into_iter()
        .map(|(role, parts)| {
            let role = match role {
                Role::User => "user",
                Role::Assistant => "model",
            };
            json!({"role": role, "parts": parts})
        })
        .collect();
    out.insert("contents".into(), Value::Array(contents));

    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), Value::String(t.name.clone()));
                if let Some(d) = &t.description {
                    f.insert("description".into(), Value::String(d.clone()));
                }
                f.insert("parametersJsonSchema".into(), t.input_schema.clone());
                Value::Object(f)
            })
            .collect();
        out.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        if let Some(choice) = &req.tool_choice {
            let config = match choice {
                ToolChoice::Auto => json!({"mode": "AUTO"}),
                ToolChoice::Any => json!({"mode": "ANY"}),
                ToolChoice::None => json!({"mode": "NONE"}),
                ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            };
            out.insert(
                "toolConfig".into(),
                json!({"functionCallingConfig": config}),
            );
        }
    }

    let mut gen_config = Map::new();
    if let Some(n) = req.max_tokens {
        gen_config.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        gen_config.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        gen_config.insert("topP".into(), json!(p));
    }
    if !req.stop.is_empty() {
        gen_config.insert("stopSequences".into(), json!(req.stop));
    }
    if let Some(budget) = thinking_budget(req.thinking.as_ref()) {
        gen_config.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": budget, "includeThoughts": true}),
        );
    }
    if !gen_config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen_config));
    }
    Ok(Value::Object(out))
}

/// The thinking budget of an Anthropic-style `thinking` object that enables thinking.
fn thinking_budget(thinking: Option<&Value>) -> Option<u64> {
    let t = thinking?;
    if t.get("type").and_then(Value::as_str) != Some("enabled") {
        return None;
    }
    t.get("budget_tokens").and_then(Value::as_u64)
}

/// The parts of message `i` of `req`.
fn render_parts(req: &ChatRequest, i: usize, msg: &Message) -> Result<Vec<Value>, GatewayError> {
    let mut parts = Vec::new();
    let mut results = Vec::new();
    for (j, block) in msg.content.iter().enumerate() {
        let path = format!("messages[{i}].content[{j}]");
        match block {
            ContentBlock::Text { text, .. } => {
                if !text.is_empty() {
                    parts.push(json!({"text": text}));
                }
            }
            ContentBlock::Image { source, .. } => parts.push(image_part(source, &path)?),
            ContentBlock::ToolUse {
                id, name, input, ..
            } => {
                let mut call = Map::new();
                call.insert("name".into(), Value::String(name.clone()));
                let args = match input {
                    Value::Object(_) => input.clone(),
                    Value::String(s) => match serde_json::from_str::<Value>(s) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => Value::Object(Map::new()),
                    },
                    _ => Value::Object(Map::new()),
                };
                call.insert("args".into(), args);
                // Ids the gateway minted are not sent: Gemini never saw them.
                if !id.is_empty() && !is_minted(id) {
                    call.insert("id".into(), Value::String(id.clone()));
                }
                parts.push(json!({"functionCall": call}));
            }
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
                ..
            } => {
                let Some((name, order)) = call_of(req, i, tool_use_id) else {
                    return Err(invalid(format!(
                        "{path}: tool result '{tool_use_id}' answers no earlier tool call (Gemini pairs results with calls by name)"
                    )));
                };
                let mut text = Vec::new();
                for c in content {
                    match c {
                        ToolResultContent::Text(t) => text.push(t.as_str()),
                        ToolResultContent::Image(_) => {
                            return Err(invalid(format!(
                                "{path}: an image inside a tool result cannot be sent to a Gemini upstream"
                            )));
                        }
                        ToolResultContent::Other(o) => {
                            return Err(invalid(format!(
                                "{path}: tool result content type '{}' cannot be sent to a Gemini upstream",
                                o.kind()
                            )));
                        }
                    }
                }
                let text = text.join("\n");
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) if !is_error => v,
                    _ if *is_error => json!({ "error": text }),
                    _ => json!({ "result": text }),
                };
                let mut fr = Map::new();
                fr.insert("name".into(), Value::String(name));
                fr.insert("response".into(), response);
                if !is_minted(tool_use_id) {
                    fr.insert("id".into(), Value::String(tool_use_id.clone()));
                }
                results.push((order, json!({"functionResponse": fr})));
            }
            // Gemini takes no thought text as input.
            ContentBlock::Thinking { .. } | ContentBlock::RedactedThinking { .. } => {}
            ContentBlock::Other(o) => {
                return Err(invalid(format!(
                    "{path}: content block type '{}' cannot be sent to a Gemini upstream",
                    o.kind()
                )));
            }
        }
    }
    // Results first, in the order of their calls: Gemini pairs them by name and position.
    results.sort_by_key(|(order, _)| *order);
    let mut all: Vec<Value> = results.into_iter().map(|(_, v)| v).collect();
    all.extend(parts);
    Ok(all)
}

/// The name of the call `id` answers (the latest one before message `before`) and its
/// position among the calls of its turn.
fn call_of(req: &ChatRequest, before: usize, id: &str) -> Option<(String, usize)> {
    req.messages[..before].iter().rev().find_map(|m| {
        m.content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::ToolUse { id, name, .. } => Some((id, name)),
                _ => None,
            })
            .enumerate()
            .find(|(_, (call_id, _))| {
                call_id.as_str() == id || strip_prefix(call_id) == strip_prefix(id)
            })
            .map(|(pos, (_, name))| (name.clone(), pos))
    })
}

/// The id without its wire prefix: an Anthropic client sends back `toolu_X` for the
/// `call_X` the gateway minted (see `tool_ids`).
fn strip_prefix(id: &str) -> &str {
    id.strip_prefix("toolu_")
        .or_else(|| id.strip_prefix("call_"))
        .unwrap_or(id)
}

/// Whether `id` has the shape of an id this module minted (`call_`/`toolu_` + 16 hex).
fn is_minted(id: &str) -> bool {
    let rest = strip_prefix(id);
    rest.len() == MINTED_HEX + 2
        && rest.starts_with("gm")
        && rest[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

const MINTED_HEX: usize = 16;

/// A stable id for the `position`-th call of an answer: FNV-1a over position, name and
/// arguments.
fn mint_id(position: usize, name: &str, args: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in position
        .to_le_bytes()
        .iter()
        .chain(name.as_bytes())
        .chain(&[0u8])
        .chain(args.to_string().as_bytes())
    {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("call_gm{h:016x}")
}

fn image_part(source: &ImageSource, path: &str) -> Result<Value, GatewayError> {
    match source {
        ImageSource::Base64 { media_type, data } => Ok(json!({
            "inlineData": {"mimeType": media_type, "data": data}
        })),
        ImageSource::Url { url } => {
            let ext = url
                .split(['?', '#'])
                .next()
                .and_then(|p| p.rsplit_once('.'))
                .map(|(_, e)| e.to_ascii_lowercase());
            let mime = match ext.as_deref() {
                Some("png") => "image/png",
                Some("jpg" | "jpeg") => "image/jpeg",
                Some("webp") => "image/webp",
                Some("gif") => "image/gif",
                Some("heic") => "image/heic",
                _ => {
                    return Err(invalid(format!(
                        "{path}: the image URL's type cannot be told from its extension (png, jpg, jpeg, webp, gif, heic); send it as base64 to a Gemini upstream"
                    )));
                }
            };
            Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}}))
        }
    }
}

/// Parse a complete `generateContent` answer.
///
/// # Errors
/// A short description when the body is not JSON, not an object, or an error envelope (the
/// message names the error's `status` only, never its text).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("upstream response is not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err("upstream response is not a JSON object".to_owned());
    }
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(format!("upstream returned an error: {}", error_status(err)));
    }
    let mut content = Vec::new();
    let mut calls = 0usize;
    let candidate = v.get("candidates").and_then(|c| c.get(0));
    for part in parts_of(candidate) {
        if let Some(call) = part.get("functionCall") {
            let (id, name, args) = function_call(call, calls);
            calls += 1;
            content.push(ContentBlock::ToolUse {
                id,
                name,
                input: args,
                cache_control: None,
            });
        } else if let Some(text) = part.get("text").and_then(Value::as_str) {
            if is_thought(part) {
                let signature = part
                    .get("thoughtSignature")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                match content.last_mut() {
                    Some(ContentBlock::Thinking { thinking, .. }) => thinking.push_str(text),
                    _ => content.push(ContentBlock::Thinking {
                        thinking: text.to_owned(),
                        signature,
                    }),
                }
            } else {
                match content.last_mut() {
                    Some(ContentBlock::Text { text: t, .. }) => t.push_str(text),
                    _ => content.push(ContentBlock::Text {
                        text: text.to_owned(),
                        cache_control: None,
                    }),
                }
            }
        }
    }
    let stop_reason = match candidate {
        None if v.pointer("/promptFeedback/blockReason").is_some() => StopReason::Refusal,
        _ => stop_reason(
            candidate
                .and_then(|c| c.get("finishReason"))
                .and_then(Value::as_str),
            calls > 0,
        ),
    };
    Ok(ChatResponse {
        id: v
            .get("responseId")
            .and_then(Value::as_str)
            .map(str::to_owned),
        model: v
            .get("modelVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        content,
        stop_reason,
        stop_sequence: None,
        usage: v.get("usageMetadata").map(usage_from).unwrap_or_default(),
    })
}

/// The parts of a candidate's content (none when absent).
fn parts_of(candidate: Option<&Value>) -> impl Iterator<Item = &Value> {
    candidate
        .and_then(|c| c.pointer("/content/parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn is_thought(part: &Value) -> bool {
    part.get("thought").and_then(Value::as_bool) == Some(true)
}

/// Id, name and arguments of a `functionCall` that is the `position`-th call of its answer.
fn function_call(call: &Value, position: usize) -> (String, String, Value) {
    let name = call
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let args = call
        .get("args")
        .filter(|a| a.is_object())
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let id = match call.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => mint_id(position, &name, &args),
    };
    (id, name, args)
}

fn stop_reason(finish: Option<&str>, called: bool) -> StopReason {
    match finish {
        Some("MAX_TOKENS") => StopReason::MaxTokens,
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
            | "LANGUAGE",
        ) => StopReason::Refusal,
        _ if called => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

fn usage_from(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cachedContentTokenCount");
    Usage {
        input_tokens: n("promptTokenCount").saturating_sub(cached),
        output_tokens: n("candidatesTokenCount") + n("thoughtsTokenCount"),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
    }
}

/// The `status` (else `code`) of a Google error object, never its message (it may echo
/// the prompt).
fn error_status(err: &Value) -> String {
    match (err.get("status").and_then(Value::as_str), err.get("code")) {
        (Some(s), _) => s.to_owned(),
        (None, Some(c)) => c.to_string(),
        (None, None) => "unknown".to_owned(),
    }
}

/// Which kind of block is open in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
}

/// Turns a `streamGenerateContent?alt=sse` stream into canonical [`StreamEvent`]s.
///
/// Each chunk carries new parts: consecutive text (or thought) parts extend one block, a
/// `functionCall` part is a whole tool block (start, its arguments as one JSON fragment,
/// stop). `usageMetadata` is cumulative. The chunk with `finishReason` is the clean end;
/// [`StreamParser::finish`] then emits `Finish` (after any usage that trails it).
#[derive(Debug, Default)]
pub struct StreamParser {
    started: bool,
    finished: bool,
    ended_cleanly: bool,
    next_index: usize,
    open: Option<(Open, usize)>,
    calls: usize,
    usage: Usage,
    finish_reason: Option<String>,
    blocked: bool,
}

impl StreamParser {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a chunk with `finishReason` (or a blocked prompt) arrived.
    #[must_use]
    pub fn ended_cleanly(&self) -> bool {
        self.ended_cleanly
    }

    /// Consume one frame.
    ///
    /// # Errors
    /// An `error` object in the stream, or a frame that is not JSON; the message names the
    /// error's status only.
    pub fn push(&mut self, frame: &SseFrame) -> Result<Vec<StreamEvent>, String> {
        let mut out = Vec::new();
        let data = frame.data.trim();
        if self.finished || data.is_empty() {
            return Ok(out);
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|_| "upstream sent a malformed stream chunk".to_owned())?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(format!("upstream stream error: {}", error_status(err)));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: v
                    .get("responseId")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                model: v
                    .get("modelVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                usage: Usage::default(),
            });
        }
        let candidate = v.get("candidates").and_then(|c| c.get(0));
        for part in parts_of(candidate) {
            if let Some(call) = part.get("functionCall") {
                self.close(&mut out);
                let (id, name, args) = function_call(call, self.calls);
                self.calls += 1;
                let index = self.next_index;
                self.next_index += 1;
                out.push(StreamEvent::BlockStart {
                    index,
                    block: BlockStart::ToolUse { id, name },
                });
                out.push(StreamEvent::Delta {
                    index,
                    delta: BlockDelta::ToolInputJson(args.to_string()),
                });
                out.push(StreamEvent::BlockStop { index });
            } else if let Some(text) = part.get("text").and_then(Value::as_str) {
                // The last chunk often carries an empty text part next to `finishReason`:
                // it must not open an empty block after a tool call.
                if text.is_empty() && part.get("thoughtSignature").is_none() {
                    continue;
                }
                let (kind, delta) = if is_thought(part) {
                    (Open::Thinking, BlockDelta::Thinking(text.to_owned()))
                } else {
                    (Open::Text, BlockDelta::Text(text.to_owned()))
                };
                let index = self.open_block(kind, &mut out);
                if !text.is_empty() {
                    out.push(StreamEvent::Delta { index, delta });
                }
                if kind == Open::Thinking
                    && let Some(sig) = part.get("thoughtSignature").and_then(Value::as_str)
                {
                    out.push(StreamEvent::Delta {
                        index,
                        delta: BlockDelta::Signature(sig.to_owned()),
                    });
                }
            }
        }
        if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
            self.usage = self.usage.max(usage_from(u));
            out.push(StreamEvent::Usage(self.usage));
        }
        if let Some(r) = candidate
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
        {
            self.finish_reason = Some(r.to_owned());
            self.ended_cleanly = true;
            self.close(&mut out);
        } else if candidate.is_none() && v.pointer("/promptFeedback/blockReason").is_some() {
            self.blocked = true;
            self.ended_cleanly = true;
        }
        Ok(out)
    }

    /// End of the upstream byte stream: close the open block and emit `Finish`.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: None,
                model: None,
                usage: self.usage,
            });
        }
        self.close(&mut out);
        self.finished = true;
        let stop_reason = if self.blocked {
            StopReason::Refusal
        } else {
            stop_reason(self.finish_reason.as_deref(), self.calls > 0)
        };
        out.push(StreamEvent::Finish {
            stop_reason,
            stop_sequence: None,
        });
        out
    }

    /// The index of an open block of `kind`, opening one (and closing another) if needed.
    fn open_block(&mut self, kind: Open, out: &mut Vec<StreamEvent>) -> usize {
        if let Some((k, index)) = self.open
            && k == kind
        {
            return index;
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        out.push(StreamEvent::BlockStart {
            index,
            block: match kind {
                Open::Text => BlockStart::Text,
                Open::Thinking => BlockStart::Thinking,
            },
        });
        index
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((_, index)) = self.open.take() {
            out.push(StreamEvent::BlockStop { index });
        }
    }
}

#[cfg(test)]
mod tests;
