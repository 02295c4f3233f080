//! The OpenAI Chat Completions wire: request validation, real error envelopes, and sync
//! and streamed answers (chunks, tool-call deltas, usage, `[DONE]`).

use super::convo::{
    Convo, Plan, Script, StreamEnd, long_deltas, openai_convo, plan, split_arguments, split_deltas,
};
use super::reply::{Frame, json_response, sse_data, sse_response, with_header};
use super::server::{Ctx, unix_now};
use super::{
    AuthCheck, CACHE_READ_TOKENS, OPENAI_CONTEXT_LENGTH_MESSAGE, SYSTEM_FINGERPRINT, TOOL_ARGUMENTS,
};
use bytes::Bytes;
use poem::Response;
use poem::http::StatusCode;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

pub(super) fn openai_error(
    status: StatusCode,
    message: &str,
    ty: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = json!({
        "error": {"message": message, "type": ty, "param": param, "code": code}
    });
    json_response(status, &body)
}

pub(super) fn openai_status_error(ctx: &Ctx, status: u16, model: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match status {
        401 => openai_error(
            code,
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ),
        403 => openai_error(
            code,
            "You are not allowed to sample from this model",
            "invalid_request_error",
            None,
            None,
        ),
        404 => openai_error(
            code,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        ),
        429 => openai_error(
            code,
            &format!(
                "Rate limit reached for {model} on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 1s."
            ),
            "requests",
            None,
            Some("rate_limit_exceeded"),
        ),
        500 => openai_error(
            code,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        503 | 529 => openai_error(
            code,
            "The server is overloaded or not ready yet.",
            "server_error",
            None,
            None,
        ),
        s if (500..=599).contains(&s) => {
            openai_error(code, "Bad gateway.", "server_error", None, None)
        }
        _ => openai_error(
            code,
            "Invalid request.",
            "invalid_request_error",
            None,
            None,
        ),
    };
    resp = with_header(
        resp,
        "x-request-id",
        &format!("req_{}", ctx.state.rand_id(32)),
    );
    if status == 429 || status == 529 {
        resp = with_header(resp, "retry-after", "1");
    }
    resp
}

fn validate_openai(
    body: &Value,
) -> Result<(), (String, Option<&'static str>, Option<&'static str>)> {
    let Some(obj) = body.as_object() else {
        return Err((
            "Invalid type for request body: expected an object".to_owned(),
            None,
            None,
        ));
    };
    if !obj.get("model").is_some_and(Value::is_string) {
        return Err((
            "you must provide a model parameter".to_owned(),
            Some("model"),
            Some("missing_required_parameter"),
        ));
    }
    let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
        return Err((
            "Missing required parameter: 'messages'.".to_owned(),
            Some("messages"),
            Some("missing_required_parameter"),
        ));
    };
    if messages.is_empty() {
        return Err((
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.".to_owned(),
            Some("messages"),
            Some("empty_array"),
        ));
    }
    if let Some(opts) = obj.get("stream_options")
        && !opts.is_null()
        && obj.get("stream").and_then(Value::as_bool) != Some(true)
    {
        return Err((
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.".to_owned(),
            Some("stream_options"),
            Some("invalid_value"),
        ));
    }
    let mut pending: Vec<String> = Vec::new();
    let mut open_calls: HashSet<String> = HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if !matches!(
            role,
            "system" | "developer" | "user" | "assistant" | "tool" | "function"
        ) {
            return Err((
                format!(
                    "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
                ),
                Some("messages.role"),
                Some("invalid_value"),
            ));
        }
        if role != "tool" && !pending.is_empty() {
            return Err((
                format!(
                    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                    pending.join(", ")
                ),
                Some("messages"),
                None,
            ));
        }
        match role {
            "assistant" => {
                open_calls.clear();
                for tc in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = tc.get("id").and_then(Value::as_str).unwrap_or_default();
                    let args = tc.get("function").and_then(|f| f.get("arguments"));
                    if !args.is_some_and(Value::is_string) {
                        return Err((
                            format!(
                                "Invalid type for 'messages[{i}].tool_calls[].function.arguments': expected a string."
                            ),
                            Some("messages"),
                            Some("invalid_type"),
                        ));
                    }
                    pending.push(id.to_owned());
                    open_calls.insert(id.to_owned());
                }
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !open_calls.contains(id) {
                    return Err((
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.".to_owned(),
                        Some("messages.[].role"),
                        None,
                    ));
                }
                pending.retain(|p| p != id);
            }
            _ => {
                open_calls.clear();
                if !m
                    .get("content")
                    .is_some_and(|c| c.is_string() || c.is_array())
                {
                    return Err((
                        format!("Missing required parameter: 'messages[{i}].content'."),
                        Some("messages"),
                        Some("missing_required_parameter"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The real 401 for a missing or wrong Bearer key, or `None` when it matched.
pub(super) fn openai_auth_error(ctx: &Ctx, auth: AuthCheck) -> Option<Response> {
    match auth {
        AuthCheck::Matched => None,
        AuthCheck::Missing => Some(openai_error(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
            None,
        )),
        AuthCheck::Mismatched => Some(openai_status_error(ctx, 401, "")),
    }
}

/// The real 400 for a body that is not JSON.
pub(super) fn openai_unparsable() -> Response {
    openai_error(
        StatusCode::BAD_REQUEST,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)",
        "invalid_request_error",
        None,
        None,
    )
}

/// The 200-with-HTML answer of `[garbage]` on a non-streamed request.
pub(super) fn garbage_response() -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json")
        .body("<html><body>upstream proxy error</body></html>")
}

pub(super) async fn openai(ctx: &Ctx, auth: AuthCheck, body: Option<Value>) -> Response {
    if let Some(resp) = openai_auth_error(ctx, auth) {
        return resp;
    }
    let Some(body) = body else {
        return openai_unparsable();
    };
    if let Err((msg, param, code)) = validate_openai(&body) {
        return openai_error(
            StatusCode::BAD_REQUEST,
            &msg,
            "invalid_request_error",
            param,
            code,
        );
    }
    let convo = openai_convo(&body);
    match plan(ctx, &convo).await {
        Plan::Error(code) => openai_status_error(ctx, code, &convo.model),
        Plan::Overflow => openai_error(
            StatusCode::BAD_REQUEST,
            OPENAI_CONTEXT_LENGTH_MESSAGE,
            "invalid_request_error",
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        Plan::Garbage => garbage_response(),
        Plan::Reply(script) => {
            let id = format!("chatcmpl-{}", ctx.state.rand_id(29));
            let call_id = format!("call_{}", ctx.state.rand_id(24));
            if convo.stream {
                openai_stream(ctx, &convo, &script, &id, &call_id)
            } else {
                openai_completion(&convo, &script, &id, &call_id)
            }
        }
    }
}

fn openai_usage(script: &Script) -> Value {
    let cached = if script.cache { CACHE_READ_TOKENS } else { 0 };
    let prompt = script.input_tokens + cached;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": script.output_tokens,
        "total_tokens": prompt + script.output_tokens,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn openai_finish_reason(script: &Script) -> &'static str {
    if script.tool.is_some() {
        "tool_calls"
    } else if script.truncated {
        "length"
    } else {
        "stop"
    }
}

fn openai_completion(convo: &Convo, script: &Script, id: &str, call_id: &str) -> Response {
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let text = script.text.as_ref().map(|t| {
        let mut t = t.clone();
        if script.long {
            t.push_str(&long_deltas().concat());
        }
        t
    });
    message.insert("content".into(), text.map_or(Value::Null, Value::String));
    message.insert("refusal".into(), Value::Null);
    message.insert("annotations".into(), json!([]));
    if let Some(name) = &script.tool {
        message.insert(
            "tool_calls".into(),
            json!([{"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": TOOL_ARGUMENTS}}]),
        );
    }
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": convo.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": openai_finish_reason(script),
        }],
        "usage": openai_usage(script),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    });
    json_response(StatusCode::OK, &body)
}

fn openai_stream(ctx: &Ctx, convo: &Convo, script: &Script, id: &str, call_id: &str) -> Response {
    let created = unix_now();
    let chunk = |delta: Value, finish: Option<&str>| -> Frame {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": convo.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if convo.include_usage
            && let Some(obj) = c.as_object_mut()
        {
            // The real API puts `"usage": null` on every chunk but the last when asked for usage.
            obj.insert("usage".into(), Value::Null);
        }
        sse_data(&c.to_string())
    };
    let interrupt = |frames: &mut Vec<Frame>, end: StreamEnd| {
        match end {
        StreamEnd::Cut => frames.push(Frame::Abort),
        StreamEnd::ProviderError => frames.push(sse_data(
            &json!({"error": {"message": "The server had an error while processing your request. Sorry about that!",
                              "type": "server_error", "param": null, "code": null}})
            .to_string(),
        )),
        StreamEnd::Garbage => frames.push(Frame::Data(Bytes::from_static(
            b"data: {\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":\n\ndata: <<not json>>\n\n",
        ))),
        StreamEnd::Normal => {}
    }
    };
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    )];
    let mut deltas_sent = 0usize;
    if let Some(text) = &script.text {
        let mut pieces = split_deltas(text);
        if script.long {
            pieces.extend(long_deltas());
        }
        for piece in pieces {
            frames.push(chunk(json!({"content": piece}), None));
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
    }
    if let Some(name) = &script.tool {
        frames.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
        for frag in split_arguments(TOOL_ARGUMENTS) {
            frames.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}),
                None,
            ));
            deltas_sent += 1;
            if deltas_sent == 2 && script.end != StreamEnd::Normal {
                interrupt(&mut frames, script.end);
                return sse_response(ctx, frames, script.wire);
            }
        }
    }
    if script.end != StreamEnd::Normal {
        interrupt(&mut frames, script.end);
        return sse_response(ctx, frames, script.wire);
    }
    frames.push(chunk(json!({}), Some(openai_finish_reason(script))));
    if convo.include_usage {
        let usage_chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": convo.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
            "usage": openai_usage(script),
        });
        frames.push(sse_data(&usage_chunk.to_string()));
    }
    frames.push(sse_data("[DONE]"));
    sse_response(ctx, frames, script.wire)
}
