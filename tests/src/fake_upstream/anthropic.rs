//! The Anthropic Messages wire: request validation (roles, system messages, tool pairing),
//! credential and header preflight, real error envelopes, and sync and streamed answers.

use super::convo::{
    Convo, Plan, Script, StreamEnd, anthropic_convo, long_deltas, plan, split_arguments,
    split_deltas,
};
use super::openai::garbage_response;
use super::reply::{Frame, json_response, sse_event, sse_response, with_header};
use super::server::Ctx;
use super::{
    ANTHROPIC_TOO_LONG_MESSAGE, AuthCheck, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS,
    THINKING_SIGNATURE, THINKING_TEXT, TOOL_ARGUMENTS,
};
use bytes::Bytes;
use poem::http::StatusCode;
use poem::{Request, Response};
use serde_json::{Value, json};
use std::collections::HashSet;

pub(super) fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

pub(super) fn anthropic_error_message(status: u16) -> &'static str {
    match status {
        401 => "invalid x-api-key",
        403 => "Your API key does not have permission to use the specified resource.",
        404 => "The requested resource could not be found.",
        413 => "Request exceeds the maximum allowed number of bytes.",
        429 => "Number of request tokens has exceeded your per-minute rate limit",
        529 => "Overloaded",
        500..=599 => "Internal server error",
        _ => "Invalid request",
    }
}

pub(super) fn anthropic_error(ctx: &Ctx, status: u16, ty: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let request_id = format!("req_011C{}", ctx.state.rand_id(20));
    let body = json!({
        "type": "error",
        "error": {"type": ty, "message": message},
        "request_id": request_id,
    });
    let mut resp = with_header(json_response(code, &body), "request-id", &request_id);
    if status == 429 || status == 529 {
        resp = with_header(resp, "retry-after", "1");
    }
    resp
}

/// Validate a Messages request the way the real API does, where a gateway is likely to err.
fn validate_anthropic(body: &Value) -> Result<(), String> {
    validate_anthropic_body(body, true)
}

/// Whether `model` accepts a `system` message inside `messages` (a "mid-conversation system
/// message"). Anthropic documents the feature for Claude Opus 4.8 with no beta header, and
/// a 400 for the same request on models that lack it; so the fake gates it by model, not by
/// the `mid-conversation-system-2026-04-07` beta token Claude Code sends alongside. The models
/// released before Opus 4.8 reject it; any other id is taken as a newer model that accepts it.
#[must_use]
pub fn model_accepts_system_messages(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    if let Some(rest) = m.strip_prefix("claude-opus-4") {
        // `claude-opus-4-8`, `claude-opus-4-8-2026…` accept; `claude-opus-4`,
        // `claude-opus-4-20250514`, `claude-opus-4-1-…` up to `-4-7` do not.
        let minor = rest
            .strip_prefix('-')
            .and_then(|r| r.split('-').next())
            .and_then(|v| v.parse::<u32>().ok());
        return minor.is_some_and(|n| (8..100).contains(&n));
    }
    const OLDER: [&str; 6] = [
        "claude-instant",
        "claude-1",
        "claude-2",
        "claude-3",
        "claude-sonnet-4",
        "claude-haiku-4",
    ];
    !OLDER.iter().any(|p| m.starts_with(p))
}

/// The placement and content rules of a mid-conversation system message at `messages[i]`.
fn validate_system_message(messages: &[Value], i: usize) -> Result<(), String> {
    let role_at = |k: usize| {
        messages
            .get(k)
            .and_then(|m| m.get("role"))
            .and_then(Value::as_str)
    };
    if i == 0 {
        return Err(
            "messages.0.role: a \"system\" message cannot be the first message; put instructions that apply from the start in the top-level `system` parameter".to_owned(),
        );
    }
    let after_user = role_at(i - 1) == Some("user");
    let after_server_tool = role_at(i - 1) == Some("assistant")
        && messages
            .get(i - 1)
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
            .and_then(|b| b.last())
            .and_then(|b| b.get("type"))
            .and_then(Value::as_str)
            == Some("server_tool_use");
    if !after_user && !after_server_tool {
        return Err(format!(
            "messages.{i}: a \"system\" message must immediately follow a \"user\" message (or an \"assistant\" message ending in a server tool use)"
        ));
    }
    if let Some(next) = role_at(i + 1)
        && next != "assistant"
    {
        return Err(format!(
            "messages.{i}: a \"system\" message must be the last message or be followed by an \"assistant\" message"
        ));
    }
    match messages.get(i).and_then(|m| m.get("content")) {
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(blocks)) => {
            for (j, b) in blocks.iter().enumerate() {
                if b.get("type").and_then(Value::as_str) != Some("text")
                    || !b.get("text").is_some_and(Value::is_string)
                {
                    return Err(format!(
                        "messages.{i}.content.{j}: a \"system\" message accepts only text blocks"
                    ));
                }
            }
            Ok(())
        }
        _ => Err(format!("messages.{i}.content: Field required")),
    }
}

/// Validate a Messages (or, without `max_tokens`, a count-tokens) request body.
pub(super) fn validate_anthropic_body(
    body: &Value,
    require_max_tokens: bool,
) -> Result<(), String> {
    let Some(obj) = body.as_object() else {
        return Err("Input should be an object".to_owned());
    };
    match obj.get("model") {
        None => return Err("model: Field required".to_owned()),
        Some(v) if !v.is_string() => return Err("model: Input should be a valid string".to_owned()),
        _ => {}
    }
    match obj.get("max_tokens") {
        None if require_max_tokens => return Err("max_tokens: Field required".to_owned()),
        None => {}
        Some(v) if v.as_u64().is_none_or(|n| n == 0) => {
            return Err("max_tokens: Input should be a valid positive integer".to_owned());
        }
        _ => {}
    }
    let Some(messages) = obj.get("messages") else {
        return Err("messages: Field required".to_owned());
    };
    let Some(messages) = messages.as_array() else {
        return Err("messages: Input should be a valid list".to_owned());
    };
    if messages.is_empty() {
        return Err("messages: at least one message is required".to_owned());
    }
    if let Some(system) = obj.get("system")
        && !system.is_string()
        && !system.as_array().is_some_and(|blocks| {
            blocks
                .iter()
                .all(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        })
    {
        return Err("system: Input should be a valid string or a list of text blocks".to_owned());
    }
    let model = obj.get("model").and_then(Value::as_str).unwrap_or_default();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if role == "system" && model_accepts_system_messages(model) {
            validate_system_message(messages, i)?;
            continue;
        }
        if role == "system" {
            return Err(format!(
                "messages.{i}.role: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role."
            ));
        }
        if role != "user" && role != "assistant" {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        let content = m.get("content");
        let ok = content.is_some_and(|c| c.is_string() || c.is_array());
        if !ok {
            return Err(format!("messages.{i}.content: Field required"));
        }
        for (j, b) in content
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let ty = b.get("type").and_then(Value::as_str).unwrap_or_default();
            match ty {
                "text" if !b.get("text").is_some_and(Value::is_string) => {
                    return Err(format!("messages.{i}.content.{j}.text: Field required"));
                }
                "tool_use" => {
                    let id_ok = b.get("id").and_then(Value::as_str).is_some_and(|id| {
                        !id.is_empty()
                            && id
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    });
                    if !id_ok {
                        return Err(format!(
                            "messages.{i}.content.{j}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'"
                        ));
                    }
                    if !b.get("input").is_some_and(Value::is_object) {
                        return Err(format!(
                            "messages.{i}.content.{j}.tool_use.input: Input should be a valid dictionary"
                        ));
                    }
                }
                "tool_result" if role != "user" => {
                    return Err(format!(
                        "messages.{i}.content.{j}: tool_result blocks are only allowed in user messages"
                    ));
                }
                "" => return Err(format!("messages.{i}.content.{j}.type: Field required")),
                _ => {}
            }
        }
    }
    validate_anthropic_tool_pairing(messages)
}

fn blocks_of<'a>(m: &'a Value, ty: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    m.get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |b| b.get("type").and_then(Value::as_str) == Some(ty))
}

fn validate_anthropic_tool_pairing(messages: &[Value]) -> Result<(), String> {
    for (i, m) in messages.iter().enumerate() {
        let uses: Vec<&str> = blocks_of(m, "tool_use")
            .filter_map(|b| b.get("id").and_then(Value::as_str))
            .collect();
        if !uses.is_empty()
            && let Some(next) = messages.get(i + 1)
        {
            let answered: HashSet<&str> = blocks_of(next, "tool_result")
                .filter_map(|b| b.get("tool_use_id").and_then(Value::as_str))
                .collect();
            let missing: Vec<&str> = uses
                .iter()
                .copied()
                .filter(|id| !answered.contains(id))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                    missing.join(", ")
                ));
            }
        }
        let prev_uses: HashSet<&str> = if i == 0 {
            HashSet::new()
        } else {
            messages
                .get(i - 1)
                .map(|p| {
                    blocks_of(p, "tool_use")
                        .filter_map(|b| b.get("id").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (j, r) in m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if r.get("type").and_then(Value::as_str) != Some("tool_result") {
                continue;
            }
            let id = r.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
            if !prev_uses.contains(id) {
                return Err(format!(
                    "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                ));
            }
        }
    }
    Ok(())
}

/// The real 401 (credentials) or 400 (no `anthropic-version`) every Anthropic endpoint
/// answers before looking at the body, or `None` when the request passes.
pub(super) fn anthropic_preflight(ctx: &Ctx, req: &Request, auth: AuthCheck) -> Option<Response> {
    match auth {
        AuthCheck::Matched => {}
        AuthCheck::Missing => {
            return Some(anthropic_error(
                ctx,
                401,
                "authentication_error",
                "x-api-key header is required",
            ));
        }
        AuthCheck::Mismatched => {
            return Some(anthropic_error(
                ctx,
                401,
                "authentication_error",
                "invalid x-api-key",
            ));
        }
    }
    if !req.headers().contains_key("anthropic-version") {
        return Some(anthropic_error(
            ctx,
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    None
}

/// The real 400 for a body that is not JSON.
pub(super) fn anthropic_unparsable(ctx: &Ctx) -> Response {
    anthropic_error(
        ctx,
        400,
        "invalid_request_error",
        "There was an error parsing the body",
    )
}

pub(super) async fn anthropic(
    ctx: &Ctx,
    req: &Request,
    auth: AuthCheck,
    body: Option<Value>,
) -> Response {
    if let Some(resp) = anthropic_preflight(ctx, req, auth) {
        return resp;
    }
    let Some(body) = body else {
        return anthropic_unparsable(ctx);
    };
    if let Err(msg) = validate_anthropic(&body) {
        return anthropic_error(ctx, 400, "invalid_request_error", &msg);
    }
    let convo = anthropic_convo(&body);
    match plan(ctx, &convo).await {
        Plan::Error(code) => anthropic_error(
            ctx,
            code,
            anthropic_error_type(code),
            anthropic_error_message(code),
        ),
        Plan::Overflow => anthropic_error(
            ctx,
            400,
            "invalid_request_error",
            ANTHROPIC_TOO_LONG_MESSAGE,
        ),
        Plan::Garbage => garbage_response(),
        Plan::Reply(script) => {
            let msg_id = format!("msg_01{}", ctx.state.rand_id(22));
            let tool_id = format!("toolu_01{}", ctx.state.rand_id(22));
            if convo.stream {
                anthropic_stream(ctx, &convo, &script, &msg_id, &tool_id)
            } else {
                let body = anthropic_message(&convo, &script, &msg_id, &tool_id);
                with_header(
                    json_response(StatusCode::OK, &body),
                    "request-id",
                    &format!("req_011C{}", ctx.state.rand_id(20)),
                )
            }
        }
    }
}

fn anthropic_usage(script: &Script, output_tokens: u64) -> Value {
    let (read, write) = if script.cache {
        (CACHE_READ_TOKENS, CACHE_WRITE_TOKENS)
    } else {
        (0, 0)
    };
    json!({
        "input_tokens": script.input_tokens,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

fn anthropic_stop_reason(script: &Script) -> &'static str {
    if script.tool.is_some() {
        "tool_use"
    } else if script.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn anthropic_message(convo: &Convo, script: &Script, msg_id: &str, tool_id: &str) -> Value {
    let mut content = Vec::new();
    if script.thinking {
        content.push(json!({
            "type": "thinking",
            "thinking": THINKING_TEXT,
            "signature": THINKING_SIGNATURE,
        }));
    }
    if let Some(text) = &script.text {
        let mut t = text.clone();
        if script.long {
            t.push_str(&long_deltas().concat());
        }
        content.push(json!({"type": "text", "text": t}));
    }
    if let Some(name) = &script.tool {
        let input: Value = serde_json::from_str(TOOL_ARGUMENTS).unwrap_or(Value::Null);
        content.push(json!({"type": "tool_use", "id": tool_id, "name": name, "input": input}));
    }
    json!({
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": convo.model,
        "content": content,
        "stop_reason": anthropic_stop_reason(script),
        "stop_sequence": null,
        "usage": anthropic_usage(script, script.output_tokens),
    })
}

fn anthropic_stream(
    ctx: &Ctx,
    convo: &Convo,
    script: &Script,
    msg_id: &str,
    tool_id: &str,
) -> Response {
    let mut frames = Vec::new();
    frames.push(sse_event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": convo.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": anthropic_usage(script, 1),
            }
        }),
    ));
    frames.push(sse_event("ping", &json!({"type": "ping"})));
    let mut index = 0u64;
    let mut deltas_sent = 0usize;
    let interrupt = |frames: &mut Vec<Frame>, end: StreamEnd| {
        match end {
        StreamEnd::Cut => frames.push(Frame::Abort),
        StreamEnd::ProviderError => frames.push(sse_event(
            "error",
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        )),
        StreamEnd::Garbage => {
            frames.push(Frame::Data(Bytes::from_static(
                b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_de\n\ndata: <<not json>>\n\n",
            )));
        }
        StreamEnd::Normal => {}
    }
    };
    if script.thinking {
        frames.push(sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ));
        for piece in split_deltas(THINKING_TEXT) {
            frames.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "thinking_delta", "thinking": piece}}),
            ));
        }
        frames.push(sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": THINKING_SIGNATURE}}),
        ));
        frames.push(sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    if let Some(text) = &script.text {
        frames.push(sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "text", "text": ""}}),
        ));
        let mut pieces = split_deltas(text);
        if script.long {
            pieces.extend(long_deltas());
        }
        for piece in pieces {
            frames.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": piece}}),
            ));
            deltas_sent += 1;
            if deltas_sent == 1
                && let Some(p) = script.pause
            {
                frames.push(Frame::Pause(p));
            }
            if deltas_sent == 2 && script.end != StreamEnd::Normal {
                interrupt(&mut frames, script.end);
                return sse_response(ctx, frames, script.wire);
            }
        }
        frames.push(sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    if let Some(name) = &script.tool {
        frames.push(sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}}}),
        ));
        let mut fragments = vec![String::new()];
        fragments.extend(split_arguments(TOOL_ARGUMENTS));
        for frag in fragments {
            frames.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": frag}}),
            ));
            deltas_sent += 1;
            if deltas_sent == 2 && script.end != StreamEnd::Normal {
                interrupt(&mut frames, script.end);
                return sse_response(ctx, frames, script.wire);
            }
        }
        frames.push(sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }
    if script.end != StreamEnd::Normal {
        // Fewer than two deltas: interrupt before the terminal frames anyway.
        interrupt(&mut frames, script.end);
        return sse_response(ctx, frames, script.wire);
    }
    frames.push(sse_event(
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": anthropic_stop_reason(script), "stop_sequence": null},
                "usage": anthropic_usage(script, script.output_tokens)}),
    ));
    frames.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    sse_response(ctx, frames, script.wire)
}
