//! Same-shape traffic (OpenAI client, OpenAI-compatible upstream): the client's body with
//! only `model` replaced, the upstream's answer with only `model` replaced, and its stream
//! forwarded chunk by chunk.

use super::response::response_from_value;
use crate::canonical::wire::{self, error_frames};
use crate::canonical::{ChatResponse, Shape};
use crate::error::GatewayError;
use crate::sse::{SseFrame, format_frame};
use serde_json::{Map, Value, json};

/// The client's body for an OpenAI-compatible upstream: every field as the client wrote it,
/// `model` replaced, and `stream_options.include_usage` forced on for streams (the gateway
/// needs usage to bill; [`PassthroughStream`] hides the extra chunk from clients that did not
/// ask for it).
#[must_use]
pub fn passthrough_request(mut raw: Map<String, Value>, upstream_model: &str) -> Value {
    raw.insert("model".to_owned(), Value::String(upstream_model.to_owned()));
    if raw.get("stream").and_then(Value::as_bool) == Some(true) {
        match raw.get_mut("stream_options") {
            Some(Value::Object(opts)) => {
                opts.insert("include_usage".to_owned(), Value::Bool(true));
            }
            _ => {
                raw.insert("stream_options".to_owned(), json!({"include_usage": true}));
            }
        }
    }
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

/// Forwards an OpenAI-compatible upstream's stream to an OpenAI client: each chunk with only
/// `model` replaced; everything else as the upstream sent it.
///
/// Because [`passthrough_request`] forces `include_usage`, a client that did not ask for usage
/// gets the usage-only chunk (`choices: []`) removed and the `"usage": null` fields stripped,
/// so it sees what it would have seen without the gateway. Upstream error chunks are not
/// forwarded (their text may echo the prompt): the caller's [`StreamParser`] reports them and
/// the caller answers with [`PassthroughStream::error`].
///
/// [`StreamParser`]: super::StreamParser
#[derive(Debug)]
pub struct PassthroughStream {
    model: String,
    client_wants_usage: bool,
    done: bool,
}

impl PassthroughStream {
    #[must_use]
    pub fn new(client_model: &str, client_wants_usage: bool) -> Self {
        PassthroughStream {
            model: client_model.to_owned(),
            client_wants_usage,
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
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            // `[DONE]` and anything else that is not JSON goes through verbatim.
            return Some(format_frame(frame.event.as_deref(), &frame.data));
        };
        self.rewrite_json(frame.event.as_deref(), v)
    }

    /// [`PassthroughStream::rewrite`] for a frame whose data the caller already parsed.
    pub fn rewrite_json(&mut self, event: Option<&str>, mut v: Value) -> Option<String> {
        if self.done {
            return None;
        }
        let obj = v.as_object_mut()?;
        if obj.get("error").is_some_and(|e| !e.is_null()) {
            return None;
        }
        if !self.client_wants_usage {
            let no_choices = obj
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty);
            if no_choices && obj.get("usage").is_some_and(Value::is_object) {
                return None;
            }
            if obj.get("usage").is_some_and(Value::is_null) {
                obj.remove("usage");
            }
        }
        if obj.contains_key("model") {
            obj.insert("model".into(), Value::String(self.model.clone()));
        }
        Some(format_frame(event, &v.to_string()))
    }

    /// The final frame when the stream fails mid-way (see [`StreamRenderer::error`]).
    ///
    /// [`StreamRenderer::error`]: super::StreamRenderer::error
    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        error_frames(&mut self.done, err, Shape::OpenAi, None)
    }
}
