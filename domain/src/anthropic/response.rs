//! Complete (non-streamed) Messages answers: an upstream's body into the canonical IR
//! ([`parse_response`]) and a canonical answer for an Anthropic client ([`render_response`]),
//! plus the usage fields the stream parser reads the same way.

use super::request::input_object;
use crate::canonical::wire::{self, count, error_kind, str_of};
use crate::canonical::{ChatResponse, ContentBlock, Opaque, Shape, StopReason, Usage};
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};

pub(super) fn usage_from(u: &Value) -> Usage {
    Usage {
        input_tokens: count(u, "input_tokens"),
        output_tokens: count(u, "output_tokens"),
        cache_read_tokens: count(u, "cache_read_input_tokens"),
        cache_write_tokens: count(u, "cache_creation_input_tokens"),
    }
}

/// `base` with every counter that `u` carries replaced (stream usage is cumulative, and
/// `message_delta` may carry only `output_tokens`).
pub(super) fn merge_usage(mut base: Usage, u: &Value) -> Usage {
    let get = |k: &str| u.get(k).and_then(Value::as_u64);
    if let Some(n) = get("input_tokens") {
        base.input_tokens = n;
    }
    if let Some(n) = get("output_tokens") {
        base.output_tokens = n;
    }
    if let Some(n) = get("cache_read_input_tokens") {
        base.cache_read_tokens = n;
    }
    if let Some(n) = get("cache_creation_input_tokens") {
        base.cache_write_tokens = n;
    }
    base
}

/// Parse a complete upstream answer.
///
/// # Errors
/// A short description when the body is not a JSON object or is an error envelope (the
/// message carries the upstream error type only, never its text).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    wire::parse_response(body, response_from_value)
}

pub(super) fn response_from_value(v: &Value) -> Result<ChatResponse, String> {
    let Some(obj) = v.as_object() else {
        return Err("upstream response is not a JSON object".to_owned());
    };
    if obj.get("type").and_then(Value::as_str) == Some("error") {
        let err = obj.get("error").unwrap_or(&Value::Null);
        return Err(format!("upstream returned an error: {}", error_kind(err)));
    }
    let mut content = Vec::new();
    for b in obj
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(match b.get("type").and_then(Value::as_str) {
            Some("text") => ContentBlock::Text {
                text: str_of(b, "text"),
                cache_control: None,
            },
            Some("tool_use") => ContentBlock::ToolUse {
                id: str_of(b, "id"),
                name: str_of(b, "name"),
                input: b
                    .get("input")
                    .filter(|i| i.is_object())
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Map::new())),
                cache_control: None,
            },
            Some("thinking") => ContentBlock::Thinking {
                thinking: str_of(b, "thinking"),
                signature: b
                    .get("signature")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
            Some("redacted_thinking") => ContentBlock::RedactedThinking {
                data: str_of(b, "data"),
            },
            _ => ContentBlock::Other(Opaque {
                shape: Shape::Anthropic,
                value: b.clone(),
            }),
        });
    }
    Ok(ChatResponse {
        id: obj.get("id").and_then(Value::as_str).map(str::to_owned),
        model: obj.get("model").and_then(Value::as_str).map(str::to_owned),
        content,
        stop_reason: obj
            .get("stop_reason")
            .and_then(Value::as_str)
            .map_or(StopReason::EndTurn, StopReason::from_anthropic),
        stop_sequence: obj
            .get("stop_sequence")
            .and_then(Value::as_str)
            .map(str::to_owned),
        usage: obj.get("usage").map(usage_from).unwrap_or_default(),
    })
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    })
}

/// Render a canonical answer (from an OpenAI-compatible upstream) for an Anthropic client.
/// Tool ids become `toolu_…`; thinking from a reasoning model carries an empty signature
/// (there is none to give, and it is dropped again if sent back to a different upstream).
#[must_use]
pub fn render_response(resp: &ChatResponse, client_model: &str, id: &str, _created: i64) -> Value {
    let mut ids = ToolIdMap::new(Shape::Anthropic);
    let mut content = Vec::new();
    for b in &resp.content {
        match b {
            ContentBlock::Text { text, .. } => content.push(json!({"type": "text", "text": text})),
            ContentBlock::ToolUse {
                id, name, input, ..
            } => content.push(json!({
                "type": "tool_use",
                "id": ids.map(id),
                "name": name,
                "input": input_object(input),
            })),
            ContentBlock::Thinking {
                thinking,
                signature,
            } => content.push(json!({
                "type": "thinking",
                "thinking": thinking,
                "signature": signature.clone().unwrap_or_default(),
            })),
            ContentBlock::RedactedThinking { data } => {
                content.push(json!({"type": "redacted_thinking", "data": data}));
            }
            ContentBlock::Other(o) if o.shape == Shape::Anthropic => content.push(o.value.clone()),
            _ => {}
        }
    }
    json!({
        "id": format!("msg_{id}"),
        "type": "message",
        "role": "assistant",
        "model": client_model,
        "content": content,
        "stop_reason": resp.stop_reason.as_anthropic(),
        "stop_sequence": resp.stop_sequence,
        "usage": usage_json(&resp.usage),
    })
}
