//! Same-shape traffic (Responses client, Responses upstream): the client's body with only
//! `model` replaced, the upstream's answer with only `model` replaced, and its stream
//! forwarded event by event.

use super::response::response_from_value;
use super::stream_render::{event, failure, failure_frames};
use crate::canonical::ChatResponse;
use crate::canonical::wire::{self, event_type};
use crate::error::GatewayError;
use crate::sse::{SseFrame, format_frame};
use serde_json::{Map, Value, json};

/// The client's body for a Responses upstream: every field as the client wrote it, `model`
/// replaced.
#[must_use]
pub fn passthrough_request(mut raw: Map<String, Value>, upstream_model: &str) -> Value {
    raw.insert("model".to_owned(), Value::String(upstream_model.to_owned()));
    Value::Object(raw)
}

/// A same-shape answer: the upstream JSON with only `model` replaced by the client's string,
/// plus its canonical parse for accounting.
///
/// # Errors
/// As [`parse_response`].
///
/// [`parse_response`]: super::parse_response
pub fn passthrough_response(
    body: &[u8],
    client_model: &str,
) -> Result<(Value, ChatResponse), String> {
    wire::passthrough_response(body, client_model, response_from_value)
}

/// Forwards a Responses upstream's stream to a Responses client: every event as the upstream
/// sent it, except that a `response` object's `model` is replaced by the client's string.
///
/// Upstream `response.failed` and `error` events are not forwarded (their text may echo the
/// prompt): the caller's [`StreamParser`] reports them and the caller answers with
/// [`PassthroughStream::error`], which continues the upstream's response id and sequence
/// numbers.
///
/// [`StreamParser`]: super::StreamParser
#[derive(Debug)]
pub struct PassthroughStream {
    model: String,
    id: Option<String>,
    created_at: Value,
    next_seq: u64,
    forwarded: bool,
    done: bool,
}

impl PassthroughStream {
    #[must_use]
    pub fn new(client_model: &str) -> Self {
        PassthroughStream {
            model: client_model.to_owned(),
            id: None,
            created_at: Value::Null,
            next_seq: 0,
            forwarded: false,
            done: false,
        }
    }

    /// The frame to forward for `frame`, or `None` to drop it.
    pub fn rewrite(&mut self, frame: &SseFrame) -> Option<String> {
        if self.done {
            return None;
        }
        let data = frame.data.trim();
        if data.is_empty() {
            return None;
        }
        let event = frame.event.as_deref();
        let Ok(mut v) = serde_json::from_str::<Value>(data) else {
            self.forwarded = true;
            return Some(format_frame(event, &frame.data));
        };
        if matches!(event_type(&v, frame), "response.failed" | "error") {
            return None;
        }
        if let Some(n) = v.get("sequence_number").and_then(Value::as_u64) {
            self.next_seq = self.next_seq.max(n + 1);
        }
        self.forwarded = true;
        let Some(response) = v.get_mut("response").and_then(Value::as_object_mut) else {
            // Most events carry no response object: forward their bytes untouched.
            return Some(format_frame(event, &frame.data));
        };
        if self.id.is_none() {
            self.id = response
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            self.created_at = response.get("created_at").cloned().unwrap_or(Value::Null);
        }
        if response.contains_key("model") {
            response.insert("model".into(), Value::String(self.model.clone()));
        }
        Some(format_frame(event, &v.to_string()))
    }

    /// The final frames when the stream fails mid-way (see [`StreamRenderer::error`]); a
    /// `response.created` comes first if nothing was forwarded yet.
    ///
    /// [`StreamRenderer::error`]: super::StreamRenderer::error
    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let (code, _, message) = failure(err);
        let id = self.id.clone().unwrap_or_else(|| "resp_failed".to_owned());
        let object = |status: &str, error: Value| {
            json!({"id": id, "object": "response", "created_at": self.created_at,
                   "status": status, "error": error, "incomplete_details": null,
                   "model": self.model, "output": [], "usage": null})
        };
        let mut seq = self.next_seq;
        let mut out = Vec::new();
        if !self.forwarded {
            let created = object("in_progress", Value::Null);
            out.push(event(
                &mut seq,
                "response.created",
                json!({ "response": created }),
            ));
        }
        let failed = object("failed", json!({"code": code, "message": message}));
        out.extend(failure_frames(&mut seq, failed, err));
        self.next_seq = seq;
        out
    }
}
