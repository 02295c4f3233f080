//! The conversation seen independently of the provider shape, and the script planned from
//! it: what to answer (text, tool call, thinking, error), how to stream it and when to stop.

use super::directives::Directives;
use super::server::Ctx;
use super::{Api, LONG_STREAM_DELTA_MS, LONG_STREAM_DELTAS, THINKING_TEXT};
use serde_json::Value;
use std::time::Duration;

/// What the fake needs to know about a request to script its answer.
pub(super) struct Convo {
    pub(super) model: String,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    /// Text of the last user message (text parts only).
    pub(super) last_user_text: String,
    /// Text of the tool results the conversation ends with, if it ends with any.
    pub(super) trailing_tool_results: Option<String>,
    /// Rough input-token estimate (serialized size / 4).
    pub(super) input_tokens: u64,
}

fn text_of_content(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The uncached input tokens the fake reports for a request body it received: the serialized
/// size of its `messages`, `system`, `input` and `instructions` fields / 4, at least 1. (Only
/// the body counts: a Responses-API `previous_response_id` adds nothing.) The count-tokens
/// endpoints answer exactly this number.
#[must_use]
pub fn estimate_input_tokens(body: &Value) -> u64 {
    let size = ["messages", "system", "input", "instructions"]
        .iter()
        .map(|k| body.get(*k).map_or(0, |v| v.to_string().len()))
        .sum::<usize>();
    u64::try_from(size / 4).unwrap_or(u64::MAX).max(1)
}

pub(super) fn anthropic_convo(body: &Value) -> Convo {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let last_user_text = messages
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| text_of_content(m.get("content").unwrap_or(&Value::Null)))
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    // A mid-conversation system message may follow the tool results; look past it.
    let last_turn = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) != Some("system"));
    let trailing_tool_results = last_turn.and_then(|m| {
        let blocks = m.get("content")?.as_array()?;
        let results: Vec<String> = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .map(|b| text_of_content(b.get("content").unwrap_or(&Value::Null)))
            .collect();
        (!results.is_empty()).then(|| results.join("; "))
    });
    Convo {
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        stream: body.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: true,
        last_user_text,
        trailing_tool_results,
        input_tokens: estimate_input_tokens(body),
    }
}

pub(super) fn openai_convo(body: &Value) -> Convo {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let last_user_text = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| text_of_content(m.get("content").unwrap_or(&Value::Null)))
        .unwrap_or_default();
    let trailing: Vec<String> = messages
        .iter()
        .rev()
        .take_while(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
        .map(|m| text_of_content(m.get("content").unwrap_or(&Value::Null)))
        .collect();
    let trailing_tool_results = (!trailing.is_empty()).then(|| {
        let mut t = trailing;
        t.reverse();
        t.join("; ")
    });
    Convo {
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        stream: body.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true),
        last_user_text,
        trailing_tool_results,
        input_tokens: estimate_input_tokens(body),
    }
}

/// The scripted answer, independent of the provider shape.
pub(super) struct Script {
    pub(super) thinking: bool,
    pub(super) text: Option<String>,
    pub(super) tool: Option<String>,
    /// Extra text deltas (for `[long]`).
    pub(super) long: bool,
    /// Stopped by the token limit.
    pub(super) truncated: bool,
    /// One silence after the first text delta.
    pub(super) pause: Option<Duration>,
    pub(super) end: StreamEnd,
    /// `[stream-error:event]`: the Responses API ends with an `error` event.
    pub(super) error_as_event: bool,
    pub(super) wire: Wire,
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) cache: bool,
}

/// How stream frames are put on the wire.
#[derive(Clone, Copy, Default)]
pub(super) struct Wire {
    /// Pause between frames.
    pub(super) drip: Duration,
    /// Send frames in 7-byte pieces.
    pub(super) split: bool,
    /// `\r\n` line endings.
    pub(super) crlf: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamEnd {
    Normal,
    Cut,
    ProviderError,
    Garbage,
}

pub(super) enum Plan {
    Error(u16),
    Overflow,
    Garbage,
    Reply(Script),
}

pub(super) async fn plan(ctx: &Ctx, convo: &Convo) -> Plan {
    if let Some(code) = *super::server::lock(&ctx.state.forced_status) {
        return Plan::Error(code);
    }
    if let Some(results) = &convo.trailing_tool_results {
        let text = format!("tool result: {results}");
        let output_tokens = out_tokens(&text);
        return Plan::Reply(Script {
            thinking: false,
            text: Some(text),
            tool: None,
            long: false,
            truncated: false,
            pause: None,
            end: StreamEnd::Normal,
            error_as_event: false,
            wire: Wire::default(),
            input_tokens: convo.input_tokens,
            output_tokens,
            cache: false,
        });
    }
    let d = Directives::parse(&convo.last_user_text);
    if let Some(ms) = d.slow_ms {
        tokio::time::sleep(Duration::from_millis(ms.min(120_000))).await;
    }
    if let Some(code) = d.status {
        return Plan::Error(code);
    }
    if let Some(code) = d.fail_once
        && ctx.state.first_time(&convo.last_user_text)
    {
        return Plan::Error(code);
    }
    if d.overflow {
        return Plan::Overflow;
    }
    if d.garbage && !convo.stream {
        return Plan::Garbage;
    }
    let end = if d.garbage {
        StreamEnd::Garbage
    } else if d.cut {
        StreamEnd::Cut
    } else if d.stream_error {
        StreamEnd::ProviderError
    } else {
        StreamEnd::Normal
    };
    // Chat Completions has no reasoning output; Messages and Responses do.
    let thinking = d.think && matches!(ctx.api, Api::Messages | Api::Responses);
    let text = if d.tool.is_some() {
        None
    } else {
        Some(format!("echo: {}", convo.last_user_text))
    };
    let mut output_tokens = text.as_deref().map_or(0, out_tokens);
    if d.tool.is_some() {
        output_tokens += 12;
    }
    if thinking {
        output_tokens += out_tokens(THINKING_TEXT);
    }
    if d.long {
        output_tokens += u64::try_from(LONG_STREAM_DELTAS).unwrap_or(0) * 2;
    }
    let drip = if d.long {
        Duration::from_millis(LONG_STREAM_DELTA_MS)
    } else {
        Duration::from_millis(d.drip_ms.unwrap_or(0).min(10_000))
    };
    Plan::Reply(Script {
        thinking,
        text,
        tool: d.tool,
        long: d.long,
        truncated: d.length,
        pause: d.pause_ms.map(|ms| Duration::from_millis(ms.min(60_000))),
        end,
        error_as_event: d.stream_error_event,
        wire: Wire {
            drip,
            split: d.split,
            crlf: d.crlf,
        },
        input_tokens: convo.input_tokens,
        output_tokens: output_tokens.max(1),
        cache: d.cache,
    })
}

/// The `[status:CODE]` in `text` (after sleeping its `[slow:MS]`): count-tokens and embeddings
/// requests honour only those two directives, as counting never fails on length or streams.
pub(super) async fn status_directive(text: &str) -> Option<u16> {
    let d = Directives::parse(text);
    if let Some(ms) = d.slow_ms {
        tokio::time::sleep(Duration::from_millis(ms.min(120_000))).await;
    }
    d.status
}

/// The output tokens the fake reports for a text reply (bytes / 4, rounded up, at least 1).
#[must_use]
pub fn out_tokens(text: &str) -> u64 {
    u64::try_from(text.len().div_ceil(4))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Split text into a few deltas (every two words), as a model would stream it.
pub(super) fn split_deltas(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    if words.is_empty() {
        return vec![String::new()];
    }
    words.chunks(2).map(|c| c.concat()).collect()
}

pub(super) fn long_deltas() -> Vec<String> {
    (0..LONG_STREAM_DELTAS)
        .map(|i| format!("tick{i} "))
        .collect()
}

/// Split tool arguments into fragments the way providers stream them.
pub(super) fn split_arguments(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, ch) in args.chars().enumerate() {
        cur.push(ch);
        if i % 6 == 5 {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
