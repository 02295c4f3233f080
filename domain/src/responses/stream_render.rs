//! Streams towards a Responses client: canonical events into Responses stream events, and
//! the frames that end a failed stream (shared with the same-shape passthrough).

use super::response::{Head, ResponseContext, terminal};
use super::{
    REDACTED_THINKING_PREFIX, call_item, custom_input, item_id, message_item, output_text_part,
    reasoning_item,
};
use crate::canonical::{
    BlockDelta, BlockStart, Shape, StopReason, StreamEvent, Usage, parse_tool_input,
};
use crate::error::GatewayError;
use crate::sse::format_frame;
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};

/// `(code, type, message)` of a gateway error for a Responses client: the OpenAI envelope's
/// `code` (its `type` when it has none), so clients branch on the codes they know
/// (`context_length_exceeded`, `rate_limit_exceeded`, …).
pub(super) fn failure(err: &GatewayError) -> (String, String, String) {
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
pub(super) fn failure_frames(seq: &mut u64, response: Value, err: &GatewayError) -> Vec<String> {
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
pub(super) fn event(seq: &mut u64, ty: &str, fields: Value) -> String {
    let mut m = Map::new();
    m.insert("type".into(), json!(ty));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    m.insert("sequence_number".into(), json!(*seq));
    *seq += 1;
    format_frame(Some(ty), &Value::Object(m).to_string())
}

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
    /// `failure_frames` for why both.
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
