//! Streams from an OpenAI-compatible upstream: SSE chunks into canonical events.

use super::response::{reasoning, usage_from};
use crate::canonical::wire::error_kind;
use crate::canonical::{BlockDelta, BlockStart, StopReason, StreamEvent, Usage};
use crate::sse::SseFrame;
use serde_json::Value;

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
    ///
    /// [`PassthroughStream::rewrite_json`]: super::PassthroughStream::rewrite_json
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
