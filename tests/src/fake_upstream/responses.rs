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

mod sse;
mod validate;

use super::convo::{
    Plan, Script, estimate_input_tokens, long_deltas, out_tokens, plan, split_deltas,
    status_directive,
};
use super::openai::{
    garbage_response, openai_auth_error, openai_error, openai_status_error, openai_unparsable,
};
use super::reply::{json_response, with_header};
use super::server::{Ctx, lock, unix_now};
use super::{
    AuthCheck, CACHE_READ_TOKENS, RESPONSES_CONTEXT_LENGTH_MESSAGE, THINKING_TEXT, TOOL_ARGUMENTS,
};
use poem::Response;
use poem::http::StatusCode;
use serde_json::{Map, Value, json};
use sse::stream;
pub(super) use validate::{Invalid, invalid_value};
use validate::{conversation, convo_of};

/// `encrypted_content` of the `[think]` reasoning item, sent only when the request's `include`
/// lists `reasoning.encrypted_content` (as the real API does). Opaque, like the real one.
pub const REASONING_ENCRYPTED_CONTENT: &str =
    "gAAAAABoZmFrZS11cHN0cmVhbS1lbmNyeXB0ZWQtcmVhc29uaW5nLWZvci10ZXN0cw==";

/// Message of the `server_error` a `[stream-error]` stream fails with (the real wording).
pub const RESPONSES_STREAM_ERROR_MESSAGE: &str = "An error occurred while processing your request. You can retry your request, or contact us through our help center at help.openai.com if the error persists.";

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
