//! Streams towards an OpenAI client: canonical events into Chat Completions chunks.

use super::response::usage_json;
use crate::canonical::wire::error_frames;
use crate::canonical::{BlockDelta, BlockStart, Shape, StopReason, StreamEvent, Usage};
use crate::error::GatewayError;
use crate::sse::format_frame;
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};

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
        error_frames(&mut self.done, err, Shape::OpenAi, None)
    }
}
