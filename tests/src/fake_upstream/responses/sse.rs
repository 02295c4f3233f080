//! The streamed Responses answer: the real event sequence (`response.created` …
//! `response.completed`) with sequence numbers, and its interrupted endings (`[cut]`,
//! `[stream-error]`, `[garbage]`).

use super::{RESPONSES_STREAM_ERROR_MESSAGE, Reply};
use crate::fake_upstream::convo::{Script, StreamEnd, split_arguments, split_deltas};
use crate::fake_upstream::reply::{Frame, sse_event, sse_response};
use crate::fake_upstream::server::Ctx;
use crate::fake_upstream::{THINKING_TEXT, TOOL_ARGUMENTS};
use bytes::Bytes;
use poem::Response;
use serde_json::{Map, Value, json};

/// Stream events under construction: each gets its `type` and the next `sequence_number`,
/// and goes out as `event: <type>` + `data: <json>`.
struct Events {
    frames: Vec<Frame>,
    seq: u64,
}

impl Events {
    fn push(&mut self, ty: &str, fields: Value) {
        let mut data = Map::new();
        data.insert("type".into(), json!(ty));
        data.insert("sequence_number".into(), json!(self.seq));
        if let Value::Object(f) = fields {
            data.extend(f);
        }
        self.seq += 1;
        self.frames.push(sse_event(ty, &Value::Object(data)));
    }
}

/// The SSE answer: the real event sequence, interrupted after two deltas by `[cut]`,
/// `[stream-error]` or `[garbage]`.
pub(super) fn stream(ctx: &Ctx, script: &Script, reply: &Reply<'_>) -> Response {
    let mut ev = Events {
        frames: Vec::new(),
        seq: 0,
    };
    let start = reply.object("in_progress", Vec::new(), Value::Null);
    ev.push("response.created", json!({"response": start}));
    ev.push("response.in_progress", json!({"response": start}));
    let mut output_index = 0u64;
    let mut deltas_sent = 0usize;
    if script.thinking {
        let item_id = &reply.rs_id;
        ev.push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": reply.reasoning_item(false)}),
        );
        if reply.summary {
            let at = json!({"item_id": item_id, "output_index": output_index, "summary_index": 0});
            ev.push(
                "response.reasoning_summary_part.added",
                merged(&at, json!({"part": {"type": "summary_text", "text": ""}})),
            );
            for piece in split_deltas(THINKING_TEXT) {
                ev.push(
                    "response.reasoning_summary_text.delta",
                    merged(&at, json!({"delta": piece})),
                );
            }
            ev.push(
                "response.reasoning_summary_text.done",
                merged(&at, json!({"text": THINKING_TEXT})),
            );
            ev.push(
                "response.reasoning_summary_part.done",
                merged(
                    &at,
                    json!({"part": {"type": "summary_text", "text": THINKING_TEXT}}),
                ),
            );
        }
        ev.push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": reply.reasoning_item(true)}),
        );
        output_index += 1;
    }
    if script.text.is_some() {
        let at = json!({"item_id": reply.msg_id, "output_index": output_index, "content_index": 0});
        ev.push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": reply.message_item(false)}),
        );
        ev.push(
            "response.content_part.added",
            merged(&at, json!({"part": Reply::text_part("")})),
        );
        for piece in &reply.pieces {
            ev.push(
                "response.output_text.delta",
                merged(&at, json!({"delta": piece, "logprobs": []})),
            );
            deltas_sent += 1;
            if deltas_sent == 1
                && let Some(p) = script.pause
            {
                ev.frames.push(Frame::Pause(p));
            }
            if deltas_sent == 2 && script.end != StreamEnd::Normal {
                return interrupted(ctx, ev, script, reply);
            }
        }
        let text = reply.text();
        ev.push(
            "response.output_text.done",
            merged(&at, json!({"text": text, "logprobs": []})),
        );
        ev.push(
            "response.content_part.done",
            merged(&at, json!({"part": Reply::text_part(&text)})),
        );
        ev.push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": reply.message_item(true)}),
        );
        output_index += 1;
    }
    if let Some(name) = &script.tool {
        let at = json!({"item_id": reply.fc_id, "output_index": output_index});
        ev.push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": reply.call_item(name, false)}),
        );
        for frag in split_arguments(TOOL_ARGUMENTS) {
            ev.push(
                "response.function_call_arguments.delta",
                merged(&at, json!({"delta": frag})),
            );
            deltas_sent += 1;
            if deltas_sent == 2 && script.end != StreamEnd::Normal {
                return interrupted(ctx, ev, script, reply);
            }
        }
        ev.push(
            "response.function_call_arguments.done",
            merged(&at, json!({"name": name, "arguments": TOOL_ARGUMENTS})),
        );
        ev.push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": reply.call_item(name, true)}),
        );
    }
    if script.end != StreamEnd::Normal {
        return interrupted(ctx, ev, script, reply);
    }
    let status = reply.final_status();
    let terminal = if status == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    let done = reply.object(status, reply.output(), reply.usage());
    ev.push(terminal, json!({"response": done}));
    sse_response(ctx, ev.frames, script.wire)
}

/// `base` with the fields of `extra` added.
fn merged(base: &Value, extra: Value) -> Value {
    let mut out = base.clone();
    if let (Some(o), Value::Object(e)) = (out.as_object_mut(), extra) {
        o.extend(e);
    }
    out
}

fn interrupted(ctx: &Ctx, mut ev: Events, script: &Script, reply: &Reply<'_>) -> Response {
    match script.end {
        StreamEnd::Cut => ev.frames.push(Frame::Abort),
        StreamEnd::ProviderError if script.error_as_event => {
            // The live API nests the fields under `error` (the SDK's documented flat shape is
            // not what it sends).
            ev.push(
                "error",
                json!({"error": {"type": "server_error", "code": "server_error",
                                 "message": RESPONSES_STREAM_ERROR_MESSAGE, "param": null}}),
            );
        }
        StreamEnd::ProviderError => {
            let failed = reply.object_with_error(
                "failed",
                Vec::new(),
                Value::Null,
                json!({"code": "server_error", "message": RESPONSES_STREAM_ERROR_MESSAGE}),
            );
            ev.push("response.failed", json!({"response": failed}));
        }
        StreamEnd::Garbage => ev.frames.push(Frame::Data(Bytes::from_static(
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\n\ndata: <<not json>>\n\n",
        ))),
        StreamEnd::Normal => {}
    }
    sse_response(ctx, ev.frames, script.wire)
}
