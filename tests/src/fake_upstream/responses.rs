//! The OpenAI Responses API of the fake upstream: `POST /v1/responses` (sync and SSE) and
//! `POST /v1/responses/input_tokens`.
//!
//! Shapes follow the official SDK's types (openai-python `types/responses`, checked by the SDK
//! test in `tests/python/test_fake_upstream_sdk.py`) and, where the two differ, what the live
//! API sends: the streamed `error` event nests its fields under `error`.
//!
//! The conversation is the stored chain of `previous_response_id` (every answer served with
//! `store` not false is remembered until `/_reset`), then the request's `input` items. The
//! scripting directives come from its last `user` message; when it ends with
//! `function_call_output` items the reply is `tool result: <their outputs>`, as for the other
//! APIs.

use super::convo::{
    Convo, Plan, Script, StreamEnd, estimate_input_tokens, long_deltas, out_tokens, plan,
    split_arguments, split_deltas, status_directive,
};
use super::openai::{
    garbage_response, openai_auth_error, openai_error, openai_status_error, openai_unparsable,
};
use super::reply::{Frame, json_response, sse_event, sse_response, with_header};
use super::server::{Ctx, State, lock, unix_now};
use super::{
    AuthCheck, CACHE_READ_TOKENS, RESPONSES_CONTEXT_LENGTH_MESSAGE, THINKING_TEXT, TOOL_ARGUMENTS,
};
use bytes::Bytes;
use poem::Response;
use poem::http::StatusCode;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

/// `encrypted_content` of the `[think]` reasoning item, sent only when the request's `include`
/// lists `reasoning.encrypted_content` (as the real API does). Opaque, like the real one.
pub const REASONING_ENCRYPTED_CONTENT: &str =
    "gAAAAABoZmFrZS11cHN0cmVhbS1lbmNyeXB0ZWQtcmVhc29uaW5nLWZvci10ZXN0cw==";

/// Message of the `server_error` a `[stream-error]` stream fails with (the real wording).
pub const RESPONSES_STREAM_ERROR_MESSAGE: &str = "An error occurred while processing your request. You can retry your request, or contact us through our help center at help.openai.com if the error persists.";

/// Chat Completions parameters the Responses API does not take: a translating gateway that
/// leaks one gets the real `Unknown parameter` 400.
const CHAT_ONLY_PARAMS: [&str; 7] = [
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "response_format",
    "n",
    "functions",
    "function_call",
];

/// Input item types the real API accepts besides the ones validated here; they pass unchecked.
const OTHER_ITEM_TYPES: [&str; 15] = [
    "item_reference",
    "custom_tool_call",
    "web_search_call",
    "file_search_call",
    "computer_call",
    "computer_call_output",
    "code_interpreter_call",
    "image_generation_call",
    "local_shell_call",
    "local_shell_call_output",
    "mcp_call",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "compaction",
];

/// A 400 in the OpenAI error shape.
pub(super) struct Invalid {
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
}

impl Invalid {
    pub(super) fn new(
        message: impl Into<String>,
        param: Option<String>,
        code: Option<&'static str>,
    ) -> Self {
        Invalid {
            message: message.into(),
            param,
            code,
        }
    }

    pub(super) fn missing(param: String) -> Self {
        Invalid::new(
            format!("Missing required parameter: '{param}'."),
            Some(param),
            Some("missing_required_parameter"),
        )
    }

    pub(super) fn wrong_type(param: String, expected: &str, got: &Value) -> Self {
        Invalid::new(
            format!(
                "Invalid type for '{param}': expected {expected}, but got {} instead.",
                kind_of(got)
            ),
            Some(param),
            Some("invalid_type"),
        )
    }

    pub(super) fn response(self) -> Response {
        openai_error(
            StatusCode::BAD_REQUEST,
            &self.message,
            "invalid_request_error",
            self.param.as_deref(),
            self.code,
        )
    }
}

/// How the real API names a JSON type in its `invalid_type` messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `'a'`, `'a' and 'b'`, `'a', 'b', and 'c'`, as the real messages list values.
fn quoted_list(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
    }
}

pub(super) fn invalid_value(param: String, got: &str, supported: &[&str]) -> Invalid {
    Invalid::new(
        format!(
            "Invalid value: '{got}'. Supported values are: {}.",
            quoted_list(supported)
        ),
        Some(param),
        Some("invalid_value"),
    )
}

/// The type of an input item: its `type`, or `message` for the `{role, content}` shorthand.
fn item_type(item: &Value) -> Option<&str> {
    item.get("type")
        .and_then(Value::as_str)
        .or_else(|| item.get("role").map(|_| "message"))
}

/// Validate a Responses request like the real API and resolve its conversation: the stored
/// items of `previous_response_id`, then this request's `input` items.
fn conversation(state: &State, body: &Value, for_count: bool) -> Result<Vec<Value>, Invalid> {
    let Some(obj) = body.as_object() else {
        return Err(Invalid::new(
            "Invalid type for request body: expected an object",
            None,
            None,
        ));
    };
    match obj.get("model") {
        Some(Value::String(_)) => {}
        None | Some(Value::Null) if for_count => {}
        None | Some(Value::Null) => return Err(Invalid::missing("model".to_owned())),
        Some(other) => return Err(Invalid::wrong_type("model".to_owned(), "a string", other)),
    }
    if let Some(p) = CHAT_ONLY_PARAMS.iter().find(|p| obj.contains_key(**p)) {
        return Err(Invalid::new(
            format!("Unknown parameter: '{p}'."),
            Some((*p).to_owned()),
            Some("unknown_parameter"),
        ));
    }
    if let Some(n) = obj.get("max_output_tokens").and_then(Value::as_i64)
        && n < 16
    {
        return Err(Invalid::new(
            format!(
                "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got {n} instead."
            ),
            Some("max_output_tokens".to_owned()),
            Some("integer_below_min_value"),
        ));
    }
    validate_tools(obj.get("tools"))?;
    let mut items = match obj.get("previous_response_id") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(id)) => {
            lock(&state.stored_responses)
                .get(id)
                .cloned()
                .ok_or_else(|| {
                    Invalid::new(
                        format!("Previous response with id '{id}' not found."),
                        Some("previous_response_id".to_owned()),
                        Some("previous_response_not_found"),
                    )
                })?
        }
        Some(other) => {
            return Err(Invalid::wrong_type(
                "previous_response_id".to_owned(),
                "a string",
                other,
            ));
        }
    };
    let history_len = items.len();
    match obj.get("input") {
        None | Some(Value::Null) => {
            let has_context = ["previous_response_id", "conversation", "prompt"]
                .iter()
                .any(|k| obj.get(*k).is_some_and(|v| !v.is_null()));
            if !for_count && !has_context {
                return Err(Invalid::missing("input".to_owned()));
            }
        }
        Some(Value::String(text)) => items.push(json!({"role": "user", "content": text})),
        Some(Value::Array(input)) => items.extend(input.iter().cloned()),
        Some(other) => {
            return Err(Invalid::wrong_type(
                "input".to_owned(),
                "one of a string or array of input items",
                other,
            ));
        }
    }
    validate_items(&items, history_len)?;
    Ok(items)
}

fn validate_tools(tools: Option<&Value>) -> Result<(), Invalid> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(t)) => t,
        Some(other) => return Err(Invalid::wrong_type("tools".to_owned(), "an array", other)),
    };
    for (i, tool) in tools.iter().enumerate() {
        let Some(ty) = tool.get("type").and_then(Value::as_str) else {
            return Err(Invalid::missing(format!("tools[{i}].type")));
        };
        // The Chat Completions shape nests the function under `function`; the Responses API
        // wants `name` (and `parameters`) on the tool itself.
        if ty == "function" && !tool.get("name").is_some_and(Value::is_string) {
            return Err(Invalid::missing(format!("tools[{i}].name")));
        }
    }
    Ok(())
}

/// Check every input item (those from index `first_new` on; the stored history was checked
/// when it was sent) and the pairing of function calls with their outputs over the whole
/// conversation.
fn validate_items(items: &[Value], first_new: usize) -> Result<(), Invalid> {
    // Call ids in the order the calls appear, so the first unanswered one is named.
    let mut calls: Vec<&str> = Vec::new();
    let mut answered: HashSet<&str> = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let at = i.saturating_sub(first_new);
        if i >= first_new {
            validate_item(item, at)?;
        }
        let call_id = item.get("call_id").and_then(Value::as_str).unwrap_or("");
        match item_type(item) {
            Some("function_call" | "custom_tool_call") => {
                calls.push(call_id);
            }
            Some("function_call_output" | "custom_tool_call_output") => {
                if !calls.contains(&call_id) {
                    return Err(Invalid::new(
                        format!(
                            "No tool call found for function call output with call_id {call_id}."
                        ),
                        Some("input".to_owned()),
                        None,
                    ));
                }
                answered.insert(call_id);
            }
            _ => {}
        }
    }
    if let Some(call_id) = calls.iter().find(|c| !answered.contains(*c)) {
        return Err(Invalid::new(
            format!("No tool output found for function call {call_id}."),
            Some("input".to_owned()),
            None,
        ));
    }
    Ok(())
}

fn validate_item(item: &Value, i: usize) -> Result<(), Invalid> {
    if !item.is_object() {
        return Err(Invalid::wrong_type(
            format!("input[{i}]"),
            "an object",
            item,
        ));
    }
    let string_field = |field: &str| -> Result<(), Invalid> {
        match item.get(field) {
            Some(Value::String(_)) => Ok(()),
            None | Some(Value::Null) => Err(Invalid::missing(format!("input[{i}].{field}"))),
            Some(other) => Err(Invalid::wrong_type(
                format!("input[{i}].{field}"),
                "a string",
                other,
            )),
        }
    };
    match item_type(item) {
        None => Err(Invalid::missing(format!("input[{i}].type"))),
        Some("message") => validate_message(item, i),
        Some("function_call") => {
            string_field("call_id")?;
            string_field("name")?;
            string_field("arguments")
        }
        Some("function_call_output") => {
            string_field("call_id")?;
            match item.get("output") {
                Some(Value::String(_) | Value::Array(_)) => Ok(()),
                None | Some(Value::Null) => Err(Invalid::missing(format!("input[{i}].output"))),
                Some(other) => Err(Invalid::wrong_type(
                    format!("input[{i}].output"),
                    "one of a string or array of input content",
                    other,
                )),
            }
        }
        Some("reasoning") => match item.get("summary") {
            Some(Value::Array(_)) => Ok(()),
            None | Some(Value::Null) => Err(Invalid::missing(format!("input[{i}].summary"))),
            Some(other) => Err(Invalid::wrong_type(
                format!("input[{i}].summary"),
                "an array",
                other,
            )),
        },
        Some(t) if OTHER_ITEM_TYPES.contains(&t) || t == "custom_tool_call_output" => Ok(()),
        Some(other) => {
            let mut supported = vec![
                "message",
                "function_call",
                "function_call_output",
                "reasoning",
                "custom_tool_call_output",
            ];
            supported.extend(OTHER_ITEM_TYPES);
            Err(invalid_value(format!("input[{i}].type"), other, &supported))
        }
    }
}

fn validate_message(item: &Value, i: usize) -> Result<(), Invalid> {
    const ROLES: [&str; 4] = ["assistant", "system", "developer", "user"];
    const INPUT_PARTS: [&str; 4] = ["input_text", "input_image", "input_file", "input_audio"];
    const OUTPUT_PARTS: [&str; 2] = ["output_text", "refusal"];
    let role = match item.get("role") {
        Some(Value::String(r)) => r.as_str(),
        None | Some(Value::Null) => return Err(Invalid::missing(format!("input[{i}].role"))),
        Some(other) => {
            return Err(Invalid::wrong_type(
                format!("input[{i}].role"),
                "a string",
                other,
            ));
        }
    };
    if !ROLES.contains(&role) {
        return Err(invalid_value(format!("input[{i}].role"), role, &ROLES));
    }
    let parts = match item.get("content") {
        Some(Value::String(_)) => return Ok(()),
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => return Err(Invalid::missing(format!("input[{i}].content"))),
        Some(other) => {
            return Err(Invalid::wrong_type(
                format!("input[{i}].content"),
                "one of a string or array of input content",
                other,
            ));
        }
    };
    let allowed: &[&str] = if role == "assistant" {
        &OUTPUT_PARTS
    } else {
        &INPUT_PARTS
    };
    for (j, part) in parts.iter().enumerate() {
        let param = format!("input[{i}].content[{j}]");
        let Some(ty) = part.get("type").and_then(Value::as_str) else {
            return Err(Invalid::missing(format!("{param}.type")));
        };
        if !allowed.contains(&ty) {
            return Err(invalid_value(param, ty, allowed));
        }
        if matches!(ty, "input_text" | "output_text")
            && !part.get("text").is_some_and(Value::is_string)
        {
            return Err(Invalid::missing(format!("{param}.text")));
        }
    }
    Ok(())
}

/// The text of a message's `content` (a string, or its text parts joined by newlines).
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| {
                matches!(
                    p.get("type").and_then(Value::as_str),
                    Some("input_text" | "output_text" | "text")
                )
            })
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn convo_of(body: &Value, items: &[Value]) -> Convo {
    let last_user_text = items
        .iter()
        .rev()
        .find(|it| {
            item_type(it) == Some("message")
                && it.get("role").and_then(Value::as_str) == Some("user")
        })
        .map(|it| text_of(it.get("content")))
        .unwrap_or_default();
    let mut trailing: Vec<String> = items
        .iter()
        .rev()
        .take_while(|it| {
            matches!(
                item_type(it),
                Some("function_call_output" | "custom_tool_call_output")
            )
        })
        .map(|it| text_of(it.get("output")))
        .collect();
    trailing.reverse();
    Convo {
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        stream: body.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: true,
        last_user_text,
        trailing_tool_results: (!trailing.is_empty()).then(|| trailing.join("; ")),
        input_tokens: estimate_input_tokens(body),
    }
}

/// `POST /v1/responses`.
pub(super) async fn create(ctx: &Ctx, auth: AuthCheck, body: Option<Value>) -> Response {
    if let Some(resp) = openai_auth_error(ctx, auth) {
        return resp;
    }
    let Some(body) = body else {
        return openai_unparsable();
    };
    let items = match conversation(&ctx.state, &body, false) {
        Ok(items) => items,
        Err(invalid) => return invalid.response(),
    };
    let convo = convo_of(&body, &items);
    let resp = match plan(ctx, &convo).await {
        Plan::Error(code) => openai_status_error(ctx, code, &convo.model),
        Plan::Overflow => openai_error(
            StatusCode::BAD_REQUEST,
            RESPONSES_CONTEXT_LENGTH_MESSAGE,
            "invalid_request_error",
            Some("input"),
            Some("context_length_exceeded"),
        ),
        Plan::Garbage => garbage_response(),
        Plan::Reply(script) => {
            let reply = Reply::new(ctx, &body, &script);
            if body.get("store").and_then(Value::as_bool) != Some(false) {
                let mut stored = items;
                stored.extend(reply.output());
                lock(&ctx.state.stored_responses).insert(reply.id.clone(), stored);
            }
            if convo.stream {
                stream(ctx, &script, &reply)
            } else {
                let object = reply.object(reply.final_status(), reply.output(), reply.usage());
                json_response(StatusCode::OK, &object)
            }
        }
    };
    with_header(
        resp,
        "x-request-id",
        &format!("req_{}", ctx.state.rand_hex(32)),
    )
}

/// `POST /v1/responses/input_tokens`: `{"object": "response.input_tokens", "input_tokens": N}`
/// with N = [`estimate_input_tokens`] of the body. Validated like `POST /v1/responses` (except
/// that `model` and `input` may be absent); honours `[status:CODE]` and `[slow:MS]`.
pub(super) async fn input_tokens(ctx: &Ctx, auth: AuthCheck, body: Option<Value>) -> Response {
    if let Some(resp) = openai_auth_error(ctx, auth) {
        return resp;
    }
    let Some(body) = body else {
        return openai_unparsable();
    };
    let items = match conversation(&ctx.state, &body, true) {
        Ok(items) => items,
        Err(invalid) => return invalid.response(),
    };
    let convo = convo_of(&body, &items);
    if convo.trailing_tool_results.is_none()
        && let Some(code) = status_directive(&convo.last_user_text).await
    {
        return openai_status_error(ctx, code, &convo.model);
    }
    json_response(
        StatusCode::OK,
        &json!({"object": "response.input_tokens", "input_tokens": estimate_input_tokens(&body)}),
    )
}

/// One scripted answer, with every id it needs fixed up front so the streamed and final
/// shapes agree.
struct Reply<'a> {
    body: &'a Value,
    script: &'a Script,
    id: String,
    created_at: u64,
    msg_id: String,
    fc_id: String,
    rs_id: String,
    call_id: String,
    /// The text deltas of the message (their concatenation is its text).
    pieces: Vec<String>,
    /// Summary text of the reasoning item, when `reasoning.summary` was asked for.
    summary: bool,
    /// `encrypted_content` of the reasoning item, when `include` asked for it.
    encrypted: bool,
}

impl<'a> Reply<'a> {
    fn new(ctx: &Ctx, body: &'a Value, script: &'a Script) -> Self {
        let mut pieces = script.text.as_deref().map(split_deltas).unwrap_or_default();
        if script.text.is_some() && script.long {
            pieces.extend(long_deltas());
        }
        let reasoning = body.get("reasoning");
        Reply {
            body,
            script,
            id: format!("resp_{}", ctx.state.rand_hex(48)),
            created_at: unix_now(),
            msg_id: format!("msg_{}", ctx.state.rand_hex(48)),
            fc_id: format!("fc_{}", ctx.state.rand_hex(48)),
            rs_id: format!("rs_{}", ctx.state.rand_hex(48)),
            call_id: format!("call_{}", ctx.state.rand_id(24)),
            pieces,
            summary: reasoning
                .and_then(|r| r.get("summary").or_else(|| r.get("generate_summary")))
                .is_some_and(Value::is_string),
            encrypted: body
                .get("include")
                .and_then(Value::as_array)
                .is_some_and(|inc| {
                    inc.iter()
                        .any(|v| v.as_str() == Some("reasoning.encrypted_content"))
                }),
        }
    }

    fn text(&self) -> String {
        self.pieces.concat()
    }

    /// `completed`, or `incomplete` when the reply hit the token limit (`[length]`).
    fn final_status(&self) -> &'static str {
        if self.script.truncated && self.script.tool.is_none() {
            "incomplete"
        } else {
            "completed"
        }
    }

    fn reasoning_item(&self, done: bool) -> Value {
        let summary = if done && self.summary {
            json!([{"type": "summary_text", "text": THINKING_TEXT}])
        } else {
            json!([])
        };
        let mut item = json!({"id": self.rs_id, "type": "reasoning", "summary": summary});
        if done
            && self.encrypted
            && let Some(obj) = item.as_object_mut()
        {
            obj.insert(
                "encrypted_content".into(),
                json!(REASONING_ENCRYPTED_CONTENT),
            );
        }
        item
    }

    fn text_part(text: &str) -> Value {
        json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
    }

    fn message_item(&self, done: bool) -> Value {
        let (status, content) = if done {
            (self.final_status(), json!([Self::text_part(&self.text())]))
        } else {
            ("in_progress", json!([]))
        };
        json!({"id": self.msg_id, "type": "message", "status": status,
               "content": content, "role": "assistant"})
    }

    fn call_item(&self, name: &str, done: bool) -> Value {
        let (status, args) = if done {
            ("completed", TOOL_ARGUMENTS)
        } else {
            ("in_progress", "")
        };
        json!({"id": self.fc_id, "type": "function_call", "status": status,
               "arguments": args, "call_id": self.call_id, "name": name})
    }

    /// The final output items, in order.
    fn output(&self) -> Vec<Value> {
        let mut out = Vec::new();
        if self.script.thinking {
            out.push(self.reasoning_item(true));
        }
        if self.script.text.is_some() {
            out.push(self.message_item(true));
        }
        if let Some(name) = &self.script.tool {
            out.push(self.call_item(name, true));
        }
        out
    }

    fn usage(&self) -> Value {
        let cached = if self.script.cache {
            CACHE_READ_TOKENS
        } else {
            0
        };
        let input = self.script.input_tokens + cached;
        let reasoning = if self.script.thinking {
            out_tokens(THINKING_TEXT)
        } else {
            0
        };
        json!({
            "input_tokens": input,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": self.script.output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input + self.script.output_tokens,
        })
    }

    /// A request field echoed back, or the API's default when the request did not set it.
    fn echo(&self, key: &str, default: Value) -> Value {
        self.body
            .get(key)
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(default)
    }

    /// The response object with this status, output and usage, echoing the request fields
    /// the real API echoes.
    fn object(&self, status: &str, output: Vec<Value>, usage: Value) -> Value {
        self.object_with_error(status, output, usage, Value::Null)
    }

    fn object_with_error(
        &self,
        status: &str,
        output: Vec<Value>,
        usage: Value,
        error: Value,
    ) -> Value {
        let reasoning = self.body.get("reasoning");
        let reasoning_field = |k: &str| {
            reasoning
                .and_then(|r| r.get(k))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let incomplete = if status == "incomplete" {
            json!({"reason": "max_output_tokens"})
        } else {
            Value::Null
        };
        let completed_at = if status == "completed" {
            json!(unix_now())
        } else {
            Value::Null
        };
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("object".into(), json!("response"));
        o.insert("created_at".into(), json!(self.created_at));
        o.insert("status".into(), json!(status));
        o.insert("background".into(), json!(false));
        o.insert("completed_at".into(), completed_at);
        o.insert("error".into(), error);
        o.insert("incomplete_details".into(), incomplete);
        o.insert(
            "instructions".into(),
            self.echo("instructions", Value::Null),
        );
        o.insert(
            "max_output_tokens".into(),
            self.echo("max_output_tokens", Value::Null),
        );
        o.insert(
            "max_tool_calls".into(),
            self.echo("max_tool_calls", Value::Null),
        );
        o.insert("model".into(), self.echo("model", json!("")));
        o.insert("output".into(), Value::Array(output));
        o.insert(
            "parallel_tool_calls".into(),
            self.echo("parallel_tool_calls", json!(true)),
        );
        o.insert(
            "previous_response_id".into(),
            self.echo("previous_response_id", Value::Null),
        );
        o.insert(
            "prompt_cache_key".into(),
            self.echo("prompt_cache_key", Value::Null),
        );
        o.insert(
            "reasoning".into(),
            json!({"effort": reasoning_field("effort"), "summary": reasoning_field("summary")}),
        );
        o.insert(
            "safety_identifier".into(),
            self.echo("safety_identifier", Value::Null),
        );
        o.insert("service_tier".into(), json!("default"));
        o.insert("store".into(), self.echo("store", json!(true)));
        o.insert("temperature".into(), self.echo("temperature", json!(1.0)));
        o.insert(
            "text".into(),
            self.echo(
                "text",
                json!({"format": {"type": "text"}, "verbosity": "medium"}),
            ),
        );
        o.insert(
            "tool_choice".into(),
            self.echo("tool_choice", json!("auto")),
        );
        o.insert("tools".into(), self.echo("tools", json!([])));
        o.insert("top_logprobs".into(), self.echo("top_logprobs", json!(0)));
        o.insert("top_p".into(), self.echo("top_p", json!(1.0)));
        o.insert(
            "truncation".into(),
            self.echo("truncation", json!("disabled")),
        );
        o.insert("usage".into(), usage);
        o.insert("user".into(), self.echo("user", Value::Null));
        o.insert("metadata".into(), self.echo("metadata", json!({})));
        Value::Object(o)
    }
}

/// Stream events under construction: each gets its `type` and the next `sequence_number`,
/// and goes out as `event: <type>` + `data: <json>`.
struct Events {
    frames: Vec<Frame>,
    seq: u64,
}

impl Events {
    fn push(&mut self, ty: &str, fields: Value) {
        let mut data = Map::new();
        data.insert("type".into(), json!(ty));
        data.insert("sequence_number".into(), json!(self.seq));
        if let Value::Object(f) = fields {
            data.extend(f);
        }
        self.seq += 1;
        self.frames.push(sse_event(ty, &Value::Object(data)));
    }
}

/// The SSE answer: the real event sequence, interrupted after two deltas by `[cut]`,
/// `[stream-error]` or `[garbage]`.
fn stream(ctx: &Ctx, script: &Script, reply: &Reply<'_>) -> Response {
    let mut ev = Events {
        frames: Vec::new(),
        seq: 0,
    };
    let start = reply.object("in_progress", Vec::new(), Value::Null);
    ev.push("response.created", json!({"response": start}));
    ev.push("response.in_progress", json!({"response": start}));
    let mut output_index = 0u64;
    let mut deltas_sent = 0usize;
    if script.thinking {
        let item_id = &reply.rs_id;
        ev.push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": reply.reasoning_item(false)}),
        );
        if reply.summary {
            let at = json!({"item_id": item_id, "output_index": output_index, "summary_index": 0});
            ev.push(
                "response.reasoning_summary_part.added",
                merged(&at, json!({"part": {"type": "summary_text", "text": ""}})),
            );
            for piece in split_deltas(THINKING_TEXT) {
                ev.push(
                    "response.reasoning_summary_text.delta",
                    merged(&at, json!({"delta": piece})),
                );
            }
            ev.push(
                "response.reasoning_summary_text.done",
                merged(&at, json!({"text": THINKING_TEXT})),
            );
            ev.push(
                "response.reasoning_summary_part.done",
                merged(
                    &at,
                    json!({"part": {"type": "summary_text", "text": THINKING_TEXT}}),
                ),
            );
        }
        ev.push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": reply.reasoning_item(true)}),
        );
        output_index += 1;
    }
    if script.text.is_some() {
        let at = json!({"item_id": reply.msg_id, "output_index": output_index, "content_index": 0});
        ev.push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": reply.message_item(false)}),
        );
        ev.push(
            "response.content_part.added",
            merged(&at, json!({"part": Reply::text_part("")})),
        );
        for piece in &reply.pieces {
            ev.push(
                "response.output_text.delta",
                merged(&at, json!({"delta": piece, "logprobs": []})),
            );
            deltas_sent += 1;
            if deltas_sent == 1
                && let Some(p) = script.pause
            {
                ev.frames.push(Frame::Pause(p));
            }
            if deltas_sent == 2 && script.end != StreamEnd::Normal {
                return interrupted(ctx, ev, script, reply);
            }
        }
        let text = reply.text();
        ev.push(
            "response.output_text.done",
            merged(&at, json!({"text": text, "logprobs": []})),
        );
        ev.push(
            "response.content_part.done",
            merged(&at, json!({"part": Reply::text_part(&text)})),
        );
        ev.push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": reply.message_item(true)}),
        );
        output_index += 1;
    }
    if let Some(name) = &script.tool {
        let at = json!({"item_id": reply.fc_id, "output_index": output_index});
        ev.push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": reply.call_item(name, false)}),
        );
        for frag in split_arguments(TOOL_ARGUMENTS) {
            ev.push(
                "response.function_call_arguments.delta",
                merged(&at, json!({"delta": frag})),
            );
            deltas_sent += 1;
            if deltas_sent == 2 && script.end != StreamEnd::Normal {
                return interrupted(ctx, ev, script, reply);
            }
        }
        ev.push(
            "response.function_call_arguments.done",
            merged(&at, json!({"name": name, "arguments": TOOL_ARGUMENTS})),
        );
        ev.push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": reply.call_item(name, true)}),
        );
    }
    if script.end != StreamEnd::Normal {
        return interrupted(ctx, ev, script, reply);
    }
    let status = reply.final_status();
    let terminal = if status == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    let done = reply.object(status, reply.output(), reply.usage());
    ev.push(terminal, json!({"response": done}));
    sse_response(ctx, ev.frames, script.wire)
}

/// `base` with the fields of `extra` added.
fn merged(base: &Value, extra: Value) -> Value {
    let mut out = base.clone();
    if let (Some(o), Value::Object(e)) = (out.as_object_mut(), extra) {
        o.extend(e);
    }
    out
}

fn interrupted(ctx: &Ctx, mut ev: Events, script: &Script, reply: &Reply<'_>) -> Response {
    match script.end {
        StreamEnd::Cut => ev.frames.push(Frame::Abort),
        StreamEnd::ProviderError if script.error_as_event => {
            // The live API nests the fields under `error` (the SDK's documented flat shape is
            // not what it sends).
            ev.push(
                "error",
                json!({"error": {"type": "server_error", "code": "server_error",
                                 "message": RESPONSES_STREAM_ERROR_MESSAGE, "param": null}}),
            );
        }
        StreamEnd::ProviderError => {
            let failed = reply.object_with_error(
                "failed",
                Vec::new(),
                Value::Null,
                json!({"code": "server_error", "message": RESPONSES_STREAM_ERROR_MESSAGE}),
            );
            ev.push("response.failed", json!({"response": failed}));
        }
        StreamEnd::Garbage => ev.frames.push(Frame::Data(Bytes::from_static(
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\n\ndata: <<not json>>\n\n",
        ))),
        StreamEnd::Normal => {}
    }
    sse_response(ctx, ev.frames, script.wire)
}
