//! Streams from an Anthropic upstream: SSE events into canonical events.

use super::response::{merge_usage, usage_from};
use crate::canonical::wire::{error_kind, event_json, event_type, str_of};
use crate::canonical::{BlockDelta, BlockStart, StopReason, StreamEvent, Usage};
use crate::sse::SseFrame;
use serde_json::Value;

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
        if self.finished {
            return Ok(out);
        }
        let Some(v) = event_json(frame)? else {
            return Ok(out);
        };
        match event_type(&v, frame) {
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
