//! Request validation for the Responses API, as the real API answers it (the `Invalid`
//! 400 shape, unknown and Chat-only parameters, item and message checks), and the
//! conversation: the stored `previous_response_id` chain followed by the new `input` items.

use crate::fake_upstream::convo::{Convo, estimate_input_tokens};
use crate::fake_upstream::openai::openai_error;
use crate::fake_upstream::server::{State, lock};
use poem::Response;
use poem::http::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;

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
pub(in crate::fake_upstream) struct Invalid {
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
}

impl Invalid {
    pub(in crate::fake_upstream) fn new(
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

    pub(in crate::fake_upstream) fn missing(param: String) -> Self {
        Invalid::new(
            format!("Missing required parameter: '{param}'."),
            Some(param),
            Some("missing_required_parameter"),
        )
    }

    pub(in crate::fake_upstream) fn wrong_type(param: String, expected: &str, got: &Value) -> Self {
        Invalid::new(
            format!(
                "Invalid type for '{param}': expected {expected}, but got {} instead.",
                kind_of(got)
            ),
            Some(param),
            Some("invalid_type"),
        )
    }

    pub(in crate::fake_upstream) fn response(self) -> Response {
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

pub(in crate::fake_upstream) fn invalid_value(
    param: String,
    got: &str,
    supported: &[&str],
) -> Invalid {
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
pub(super) fn conversation(
    state: &State,
    body: &Value,
    for_count: bool,
) -> Result<Vec<Value>, Invalid> {
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

pub(super) fn convo_of(body: &Value, items: &[Value]) -> Convo {
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
