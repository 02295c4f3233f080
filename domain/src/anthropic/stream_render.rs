//! Streams towards an Anthropic client: canonical events into Messages stream events.

use crate::canonical::wire::error_frames;
use crate::canonical::{BlockDelta, BlockStart, Shape, StopReason, StreamEvent, Usage};
use crate::error::GatewayError;
use crate::sse::format_frame;
use crate::tool_ids::ToolIdMap;
use serde_json::{Value, json};

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
                "usage": stream_usage(&self.usage),
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
        out.push(event_frame(&json!({
            "type": "message_delta",
            "delta": {"stop_reason": reason.as_anthropic(), "stop_sequence": self.stop_sequence},
            "usage": stream_usage(&self.usage),
        })));
        out.push(event_frame(&json!({"type": "message_stop"})));
        out
    }

    /// The final frame of a stream that failed after the first byte: `event: error`, never a
    /// `message_stop`, so the client cannot mistake it for a complete answer.
    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        error_frames(&mut self.done, err, Shape::Anthropic, Some("error"))
    }
}

/// The cumulative usage of `message_start` and `message_delta`, in the API's field order.
fn stream_usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "output_tokens": u.output_tokens,
    })
}
