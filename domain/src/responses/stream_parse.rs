//! Streams from a Responses upstream: SSE events into canonical events.

use super::response::{blocks_from_item, stop_from, usage_from};
use super::{REDACTED_THINKING_PREFIX, reasoning_text};
use crate::canonical::wire::arguments_string;
use crate::canonical::wire::{error_kind, event_json, event_type, str_of};
use crate::canonical::{BlockDelta, BlockStart, ContentBlock, StopReason, StreamEvent, Usage};
use crate::error::ErrorClass;
use crate::sse::SseFrame;
use serde_json::{Value, json};

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
        if self.finished {
            return Ok(out);
        }
        let Some(v) = event_json(frame)? else {
            return Ok(out);
        };
        let ty = event_type(&v, frame);
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
                match item.get("type").and_then(Value::as_str) {
                    Some(t @ ("function_call" | "custom_tool_call")) => {
                        let custom = t == "custom_tool_call";
                        self.saw_tool = true;
                        let start = BlockStart::ToolUse {
                            id: str_of(item, "call_id"),
                            name: str_of(item, "name"),
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
