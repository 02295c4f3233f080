//! Same-shape traffic (Anthropic client, Anthropic upstream): the client's body with only
//! `model` replaced, the upstream's answer with only `model` replaced, and its stream
//! forwarded event by event.

use super::response::response_from_value;
use crate::canonical::wire::{self, error_frames, event_type};
use crate::canonical::{ChatResponse, Shape};
use crate::error::GatewayError;
use crate::sse::{SseFrame, format_frame};
use serde_json::{Map, Value};

/// The client's body for an Anthropic upstream: every field as the client wrote it, only
/// `model` replaced.
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

/// Forwards an Anthropic upstream's stream to an Anthropic client: `message_start`'s
/// `message.model` is replaced by the client's string; every other event is forwarded with
/// its data exactly as received.
///
/// Upstream `error` events are not forwarded (their text may echo the prompt): the caller's
/// [`StreamParser`] reports them and the caller answers with [`PassthroughStream::error`].
///
/// [`StreamParser`]: super::StreamParser
#[derive(Debug)]
pub struct PassthroughStream {
    model: String,
    done: bool,
}

impl PassthroughStream {
    /// `_client_wants_usage` exists for symmetry with the OpenAI passthrough: Anthropic
    /// streams always carry usage.
    #[must_use]
    pub fn new(client_model: &str, _client_wants_usage: bool) -> Self {
        PassthroughStream {
            model: client_model.to_owned(),
            done: false,
        }
    }

    /// The frame to forward for `frame`, or `None` to drop it.
    pub fn rewrite(&mut self, frame: &SseFrame) -> Option<String> {
        if self.done || frame.data.trim().is_empty() {
            return None;
        }
        let verbatim = || Some(format_frame(frame.event.as_deref(), &frame.data));
        // Only `message_start` (model echo) and `error` (never forwarded) need the JSON; the
        // named event line says which one this is without parsing the data.
        if let Some(ev) = frame.event.as_deref()
            && ev != "message_start"
            && ev != "error"
        {
            return verbatim();
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&frame.data) else {
            return verbatim();
        };
        match event_type(&v, frame) {
            "error" => None,
            "message_start" => {
                if let Some(msg) = v.get_mut("message").and_then(Value::as_object_mut) {
                    msg.insert("model".into(), Value::String(self.model.clone()));
                }
                Some(format_frame(frame.event.as_deref(), &v.to_string()))
            }
            _ => verbatim(),
        }
    }

    /// The final frame when the stream fails mid-way (see [`StreamRenderer::error`]).
    ///
    /// [`StreamRenderer::error`]: super::StreamRenderer::error
    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        error_frames(&mut self.done, err, Shape::Anthropic, Some("error"))
    }
}
