//! Complete (non-streamed) Responses answers: the request fields a response object echoes
//! ([`ResponseContext`]), a canonical answer rendered for a Responses client
//! ([`render_response`]) and an upstream's body parsed into the canonical IR
//! ([`parse_response`]), plus the item and usage shapes the stream modules share.

use super::{
    REDACTED_THINKING_PREFIX, call_item, item_id, message_item, opaque, reasoning_item,
    reasoning_text, thinking_block,
};
use crate::canonical::wire::{self, count, openai_answer, str_of, text_block, tool_input};
use crate::canonical::{ChatRequest, ChatResponse, ContentBlock, Shape, StopReason, Usage};
use crate::tool_ids::ToolIdMap;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

/// The request parameters a response object repeats (with the API's defaults where the
/// client sent nothing), and which tool names were `custom` tools.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseContext {
    /// Response-object fields taken from the request, in the order the API writes them.
    echo: Map<String, Value>,
    custom_tools: HashSet<String>,
}

impl Default for ResponseContext {
    fn default() -> Self {
        Self::from_request(&ChatRequest::default(), &Map::new())
    }
}

impl ResponseContext {
    /// What to echo for this request. `raw` is the client's object, `req` its parse.
    #[must_use]
    pub fn from_request(req: &ChatRequest, raw: &Map<String, Value>) -> Self {
        let given = |key: &str| raw.get(key).filter(|v| !v.is_null()).cloned();
        let or = |key: &str, default: Value| given(key).unwrap_or(default);
        let mut echo = Map::new();
        echo.insert("instructions".into(), or("instructions", Value::Null));
        echo.insert(
            "max_output_tokens".into(),
            req.max_tokens.map_or(Value::Null, |n| json!(n)),
        );
        echo.insert(
            "parallel_tool_calls".into(),
            Value::Bool(req.parallel_tool_calls.unwrap_or(true)),
        );
        echo.insert(
            "previous_response_id".into(),
            or("previous_response_id", Value::Null),
        );
        echo.insert(
            "reasoning".into(),
            or("reasoning", json!({"effort": null, "summary": null})),
        );
        echo.insert("store".into(), or("store", Value::Bool(true)));
        echo.insert("temperature".into(), json!(req.temperature.unwrap_or(1.0)));
        echo.insert(
            "text".into(),
            or("text", json!({"format": {"type": "text"}})),
        );
        echo.insert("tool_choice".into(), or("tool_choice", json!("auto")));
        echo.insert("tools".into(), or("tools", json!([])));
        echo.insert("top_p".into(), json!(req.top_p.unwrap_or(1.0)));
        echo.insert("truncation".into(), or("truncation", json!("disabled")));
        echo.insert("user".into(), or("user", Value::Null));
        echo.insert("metadata".into(), or("metadata", json!({})));
        let custom_tools = raw
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| t.get("type").and_then(Value::as_str) == Some("custom"))
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
        ResponseContext { echo, custom_tools }
    }

    /// Whether `name` was declared as a `custom` (freeform) tool.
    #[must_use]
    pub fn is_custom_tool(&self, name: &str) -> bool {
        self.custom_tools.contains(name)
    }

    fn get(&self, key: &str) -> Value {
        self.echo.get(key).cloned().unwrap_or(Value::Null)
    }
}

pub(super) fn usage_json(u: &Usage) -> Value {
    let input = u.total_input();
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + u.output_tokens,
    })
}

/// Canonical (disjoint) usage from a Responses `usage` object: cached tokens are taken out
/// of `input_tokens` (clamped at 0).
pub(super) fn usage_from(u: &Value) -> Usage {
    let details = u.get("input_tokens_details").unwrap_or(&Value::Null);
    let cached = count(details, "cached_tokens");
    Usage {
        input_tokens: count(u, "input_tokens").saturating_sub(cached),
        output_tokens: count(u, "output_tokens"),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
    }
}

/// `status` and `incomplete_details.reason` of a response that stopped for `stop`.
pub(super) fn terminal(stop: StopReason) -> (&'static str, Option<&'static str>) {
    match stop {
        StopReason::MaxTokens => ("incomplete", Some("max_output_tokens")),
        StopReason::Refusal => ("incomplete", Some("content_filter")),
        StopReason::EndTurn
        | StopReason::StopSequence
        | StopReason::ToolUse
        | StopReason::PauseTurn => ("completed", None),
    }
}

pub(super) fn stop_from(status: Option<&str>, reason: Option<&str>, saw_tool: bool) -> StopReason {
    match (status, reason) {
        (Some("incomplete"), Some("content_filter")) => StopReason::Refusal,
        (Some("incomplete"), _) => StopReason::MaxTokens,
        _ if saw_tool => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

/// The response object (`object: "response"`) around `output`.
pub(super) struct Head<'a> {
    pub(super) id: &'a str,
    pub(super) created: i64,
    pub(super) model: &'a str,
    pub(super) ctx: &'a ResponseContext,
}

impl Head<'_> {
    pub(super) fn object(
        &self,
        status: &str,
        incomplete: Option<&str>,
        error: Value,
        output: Vec<Value>,
        usage: Option<&Usage>,
    ) -> Value {
        let ctx = self.ctx;
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("object".into(), json!("response"));
        o.insert("created_at".into(), json!(self.created));
        o.insert("status".into(), json!(status));
        o.insert("background".into(), json!(false));
        o.insert("error".into(), error);
        o.insert(
            "incomplete_details".into(),
            incomplete.map_or(Value::Null, |r| json!({ "reason": r })),
        );
        o.insert("instructions".into(), ctx.get("instructions"));
        o.insert("max_output_tokens".into(), ctx.get("max_output_tokens"));
        o.insert("model".into(), json!(self.model));
        o.insert("output".into(), Value::Array(output));
        for key in [
            "parallel_tool_calls",
            "previous_response_id",
            "reasoning",
            "store",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_p",
            "truncation",
        ] {
            o.insert(key.into(), ctx.get(key));
        }
        o.insert("usage".into(), usage.map_or(Value::Null, usage_json));
        o.insert("user".into(), ctx.get("user"));
        o.insert("metadata".into(), ctx.get("metadata"));
        Value::Object(o)
    }
}

/// Render a canonical answer (from an upstream of another shape) as a Responses object for
/// a client. `id` is a bare unique id: the response is `resp_<id>`, its items
/// `msg_/rs_/fc_/ctc_<id>_<output index>`; tool ids become `call_…`.
#[must_use]
pub fn render_response(
    resp: &ChatResponse,
    client_model: &str,
    id: &str,
    created: i64,
    ctx: &ResponseContext,
) -> Value {
    let mut ids = ToolIdMap::new(Shape::Responses);
    let mut output: Vec<Value> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    let flush = |texts: &mut Vec<String>, output: &mut Vec<Value>| {
        if !texts.is_empty() {
            let item_id = item_id("msg", id, output.len());
            output.push(message_item(&item_id, texts, "completed"));
            texts.clear();
        }
    };
    for block in &resp.content {
        match block {
            ContentBlock::Text { text, .. } => {
                texts.push(text.clone());
                continue;
            }
            ContentBlock::Image { .. } | ContentBlock::ToolResult { .. } => continue,
            _ => flush(&mut texts, &mut output),
        }
        let n = output.len();
        match block {
            ContentBlock::Thinking {
                thinking,
                signature,
            } => output.push(reasoning_item(
                Some(&item_id("rs", id, n)),
                thinking,
                signature.as_deref(),
            )),
            ContentBlock::RedactedThinking { data } => output.push(reasoning_item(
                Some(&item_id("rs", id, n)),
                "",
                Some(&format!("{REDACTED_THINKING_PREFIX}{data}")),
            )),
            ContentBlock::ToolUse {
                id: call,
                name,
                input,
                ..
            } => {
                let custom = ctx.is_custom_tool(name);
                let item = item_id(if custom { "ctc" } else { "fc" }, id, n);
                output.push(call_item(
                    &item,
                    custom,
                    &ids.map(call),
                    name,
                    input,
                    "completed",
                ));
            }
            // Server-tool blocks of another wire have no place in this one.
            ContentBlock::Other(o) if o.shape == Shape::Responses => output.push(o.value.clone()),
            _ => {}
        }
    }
    flush(&mut texts, &mut output);
    let (status, incomplete) = terminal(resp.stop_reason);
    let head = Head {
        id: &format!("resp_{id}"),
        created,
        model: client_model,
        ctx,
    };
    head.object(status, incomplete, Value::Null, output, Some(&resp.usage))
}

/// The canonical blocks of one output item (`None` for an item type the IR keeps opaque).
pub(super) fn blocks_from_item(item: &Value) -> Vec<ContentBlock> {
    match item.get("type").and_then(Value::as_str) {
        Some("message") => item
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                p.get("text")
                    .or_else(|| p.get("refusal"))
                    .and_then(Value::as_str)
                    .map(text_block)
            })
            .collect(),
        Some("function_call") => vec![ContentBlock::ToolUse {
            id: str_of(item, "call_id"),
            name: str_of(item, "name"),
            input: tool_input(item.get("arguments")),
            cache_control: None,
        }],
        Some("custom_tool_call") => vec![ContentBlock::ToolUse {
            id: str_of(item, "call_id"),
            name: str_of(item, "name"),
            input: json!({ "input": str_of(item, "input") }),
            cache_control: None,
        }],
        Some("reasoning") => {
            let arr = |key: &str| item.get(key).and_then(Value::as_array).map(Vec::as_slice);
            vec![thinking_block(
                reasoning_text(arr("summary"), arr("content")),
                item.get("encrypted_content").and_then(Value::as_str),
            )]
        }
        // Hosted-tool calls (`web_search_call`, …) are kept for accounting and same-shape
        // rendering.
        _ => vec![ContentBlock::Other(opaque(item))],
    }
}

/// Parse a complete Responses answer from an upstream.
///
/// # Errors
/// A short description when the body is not a JSON object, is an error envelope or a failed
/// response (the message carries the upstream error type/code only, never its text).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    wire::parse_response(body, response_from_value)
}

pub(super) fn response_from_value(v: &Value) -> Result<ChatResponse, String> {
    // An error envelope, or a response object with `status: failed` and its `error`.
    let obj = openai_answer(v)?;
    let content: Vec<ContentBlock> = obj
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(blocks_from_item)
        .collect();
    let saw_tool = content
        .iter()
        .any(|b| matches!(b, ContentBlock::ToolUse { .. }));
    let status = obj.get("status").and_then(Value::as_str);
    let reason = obj
        .get("incomplete_details")
        .and_then(|d| d.get("reason"))
        .and_then(Value::as_str);
    Ok(ChatResponse {
        id: obj.get("id").and_then(Value::as_str).map(str::to_owned),
        model: obj.get("model").and_then(Value::as_str).map(str::to_owned),
        content,
        stop_reason: stop_from(status, reason, saw_tool),
        stop_sequence: None,
        usage: obj.get("usage").map(usage_from).unwrap_or_default(),
    })
}

/// Body of `POST /v1/responses/input_tokens`.
#[must_use]
pub fn input_tokens_body(n: u64) -> Value {
    json!({"object": "response.input_tokens", "input_tokens": n})
}
