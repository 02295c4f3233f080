//! Complete (non-streamed) Chat Completions answers: an upstream's body into the canonical IR
//! ([`parse_response`]) and a canonical answer for an OpenAI client ([`render_response`]), plus
//! the usage and reasoning fields the stream modules read and write the same way.

use super::request::tool_call;
use crate::canonical::wire::{self, count, openai_answer, str_of, text_block, tool_input};
use crate::canonical::{ChatResponse, ContentBlock, Shape, StopReason, Usage};
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};

/// Usage buckets from an OpenAI `usage` object (disjoint: cached and cache-write tokens are
/// taken out of `prompt_tokens`, clamped at 0).
pub(super) fn usage_from(u: &Value) -> Usage {
    let details = u.get("prompt_tokens_details").unwrap_or(&Value::Null);
    let cached = count(details, "cached_tokens");
    let written = count(details, "cache_write_tokens");
    Usage {
        input_tokens: count(u, "prompt_tokens")
            .saturating_sub(cached)
            .saturating_sub(written),
        output_tokens: count(u, "completion_tokens"),
        cache_read_tokens: cached,
        cache_write_tokens: written,
    }
}

pub(super) fn usage_json(u: &Usage) -> Value {
    let prompt = u.total_input();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
    })
}

/// Reasoning text of a message or delta (`reasoning_content` from vLLM/DeepSeek,
/// `reasoning` from OpenRouter and newer vLLM).
pub(super) fn reasoning(v: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

/// Parse a complete upstream answer.
///
/// # Errors
/// A short description when the body is not a JSON object or is an error envelope (the
/// message carries the upstream error type/code only, never its text).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    wire::parse_response(body, response_from_value)
}

pub(super) fn response_from_value(v: &Value) -> Result<ChatResponse, String> {
    let obj = openai_answer(v)?;
    let choice = obj
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(r) = reasoning(message) {
        content.push(ContentBlock::Thinking {
            thinking: r.to_owned(),
            signature: None,
        });
    }
    match message.get("content") {
        Some(Value::String(s)) if !s.is_empty() => content.push(text_block(s)),
        Some(Value::Array(parts)) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    content.push(text_block(t));
                }
            }
        }
        _ => {}
    }
    if let Some(r) = message.get("refusal").and_then(Value::as_str) {
        content.push(text_block(r));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let function = call.get("function").unwrap_or(&Value::Null);
            let input = tool_input(function.get("arguments"));
            content.push(ContentBlock::ToolUse {
                id: str_of(call, "id"),
                name: str_of(function, "name"),
                input,
                cache_control: None,
            });
        }
    }
    Ok(ChatResponse {
        id: obj.get("id").and_then(Value::as_str).map(str::to_owned),
        model: obj.get("model").and_then(Value::as_str).map(str::to_owned),
        content,
        stop_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map_or(StopReason::EndTurn, StopReason::from_openai),
        stop_sequence: None,
        usage: obj.get("usage").map(usage_from).unwrap_or_default(),
    })
}

/// Render a canonical answer (from an Anthropic upstream) for an OpenAI client.
/// Text blocks are concatenated; thinking and opaque server-tool blocks are dropped; tool ids
/// become `call_…`.
#[must_use]
pub fn render_response(resp: &ChatResponse, client_model: &str, id: &str, created: i64) -> Value {
    let mut ids = ToolIdMap::new(Shape::OpenAi);
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for block in &resp.content {
        match block {
            ContentBlock::Text { text: t, .. } => text.get_or_insert_with(String::new).push_str(t),
            ContentBlock::ToolUse {
                id, name, input, ..
            } => calls.push(tool_call(ids.map(id), name, input)),
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), text.map_or(Value::Null, Value::String));
    message.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": client_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": resp.stop_reason.as_openai(),
        }],
        "usage": usage_json(&resp.usage),
    })
}
