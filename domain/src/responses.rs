//! OpenAI Responses (`POST /v1/responses`) <-> canonical IR.
//!
//! Inbound: [`parse_request`] validates a client body into a [`ChatRequest`] (errors name the
//! JSON path and the item index) and keeps the raw object; same-shape traffic goes out through
//! [`passthrough_request`] (unknown fields and items untouched, only `model` replaced).
//!
//! Outbound to a Responses upstream: [`render_request`] (from a client of another shape),
//! [`parse_response`] / [`StreamParser`] to read what comes back.
//!
//! Towards a Responses client: [`render_response`] / [`StreamRenderer`] for cross-shape
//! answers (with the request parameters the API echoes, see [`ResponseContext`]),
//! [`passthrough_response`] / [`PassthroughStream`] for same-shape ones.
//!
//! Invariants and lossy points (all deliberate):
//! - `instructions` and every `system`/`developer` message are hoisted into
//!   `ChatRequest::system`, wherever the messages appear; rendering puts all system text into
//!   `instructions` (`\n\n`-joined).
//! - Items are flat on this wire, messages in the IR: assistant-side items (assistant
//!   messages, `function_call`, `custom_tool_call`, `reasoning`) that follow each other form
//!   one assistant message; `function_call_output` items form one user message, which a user
//!   message right after them joins (as tool messages do on Chat Completions).
//! - `reasoning` items are canonical `Thinking`: the summary texts (`\n\n`-joined; the
//!   `reasoning_text` content when there is no summary) and `encrypted_content` as the
//!   signature. Back on this wire a `Thinking` block is one `summary_text` plus the signature as
//!   `encrypted_content`, so an Anthropic thinking block survives a Responses client's round
//!   trip. Anthropic `redacted_thinking` travels as a reasoning item whose `encrypted_content`
//!   is [`REDACTED_THINKING_PREFIX`] + its data, and comes back as `RedactedThinking`.
//! - `custom` (freeform) tools are canonical tools taking `{"input": string}`; their grammar,
//!   if any, is appended to the description so a model without grammar support still sees it.
//!   [`ResponseContext`] remembers which names were custom, so a call of one is rendered back
//!   as a `custom_tool_call` whose `input` is that string.
//! - What the IR has no model for is kept verbatim as `Opaque` of shape `Responses`: hosted
//!   tools (`web_search`, `file_search`, `local_shell`, `mcp`, …), `input_file` parts, images
//!   given by `file_id`, `item_reference` and every other item type. Same-shape passthrough
//!   forwards them; the other wires' renderers refuse them by name.
//! - This wire has no `stop`, no `is_error` on tool outputs and no cache-write counter:
//!   [`render_request`] refuses stop sequences (400), tool errors lose their flag, and usage
//!   reports `input_tokens` as all input (uncached + cache reads + cache writes) with
//!   `cached_tokens` = cache reads; parsing takes `cached_tokens` back out of `input_tokens`.
//! - A stream rendered for a client always ends with `response.completed` (or
//!   `response.incomplete`) after success, and with `response.failed` + `error` after a
//!   failure, never a fake completion. Every event carries a `sequence_number` from 0.
//!
//! [`ChatRequest`]: crate::canonical::ChatRequest

mod passthrough;
mod request;
mod response;
mod stream_parse;
mod stream_render;
#[cfg(test)]
mod tests;

pub use crate::canonical::ParsedRequest;
pub use passthrough::{PassthroughStream, passthrough_request, passthrough_response};
pub use request::{parse_request, prepare_for_translation, render_request};
pub use response::{ResponseContext, input_tokens_body, parse_response, render_response};
pub use stream_parse::StreamParser;
pub use stream_render::StreamRenderer;

use crate::canonical::wire::arguments_string;
use crate::canonical::{ContentBlock, Opaque, Shape};
use serde_json::{Map, Value, json};

/// Marks the `encrypted_content` of a reasoning item that carries an Anthropic
/// `redacted_thinking` block (the rest is its `data`). Only the gateway reads it: clients treat
/// `encrypted_content` as opaque and send it back unchanged.
pub const REDACTED_THINKING_PREFIX: &str = "metis-redacted-thinking:";

// Shapes shared by the request, response and stream modules.

/// The input schema a `custom` (freeform) tool gets in the IR: its one string argument.
fn custom_input_schema() -> Value {
    json!({"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]})
}

fn opaque(value: &Value) -> Opaque {
    Opaque {
        shape: Shape::Responses,
        value: value.clone(),
    }
}

/// Whether an opaque Responses object is a content part (it goes inside a message's
/// `content`) rather than an input item of its own. Every part type of this wire starts with
/// `input_` (`input_file`, `input_audio`, …); no item type does.
fn is_part(o: &Opaque) -> bool {
    o.kind().starts_with("input_")
}

/// Texts of the `summary_text` parts of a reasoning item, else of its `reasoning_text`
/// content, `\n\n`-joined.
fn reasoning_text(summary: Option<&[Value]>, content: Option<&[Value]>) -> String {
    let texts = |parts: Option<&[Value]>| -> Vec<String> {
        parts
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    };
    let summary = texts(summary);
    if summary.is_empty() {
        texts(content).join("\n\n")
    } else {
        summary.join("\n\n")
    }
}

/// A canonical thinking block from a reasoning item's text and `encrypted_content`.
fn thinking_block(text: String, encrypted: Option<&str>) -> ContentBlock {
    match encrypted.and_then(|e| e.strip_prefix(REDACTED_THINKING_PREFIX)) {
        Some(data) => ContentBlock::RedactedThinking {
            data: data.to_owned(),
        },
        None => ContentBlock::Thinking {
            thinking: text,
            signature: encrypted.map(str::to_owned),
        },
    }
}

/// The string argument of a custom tool call: `input.input` when it is a string, else the
/// whole input as JSON text (a model that ignored the schema still gets its call through).
fn custom_input(input: &Value) -> String {
    match input {
        Value::Object(m) => match m.get("input") {
            Some(Value::String(s)) => s.clone(),
            _ => input.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// The ids of a response's output items: `<prefix>_<id>_<output index>`.
fn item_id(prefix: &str, id: &str, output_index: usize) -> String {
    format!("{prefix}_{id}_{output_index}")
}

fn message_item(id: &str, texts: &[String], status: &str) -> Value {
    let content: Vec<Value> = texts.iter().map(|t| output_text_part(t)).collect();
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn reasoning_item(id: Option<&str>, text: &str, encrypted: Option<&str>) -> Value {
    let mut item = Map::new();
    if let Some(id) = id {
        item.insert("id".into(), json!(id));
    }
    item.insert("type".into(), json!("reasoning"));
    let summary: Vec<Value> = if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "summary_text", "text": text})]
    };
    item.insert("summary".into(), Value::Array(summary));
    if let Some(e) = encrypted {
        item.insert("encrypted_content".into(), json!(e));
    }
    Value::Object(item)
}

fn call_item(
    id: &str,
    custom: bool,
    call_id: &str,
    name: &str,
    input: &Value,
    status: &str,
) -> Value {
    if custom {
        json!({"id": id, "type": "custom_tool_call", "status": status, "call_id": call_id,
               "name": name, "input": custom_input(input)})
    } else {
        json!({"id": id, "type": "function_call", "status": status,
               "arguments": arguments_string(input), "call_id": call_id, "name": name})
    }
}
