//! The Responses API over a WebSocket, as the Codex CLI speaks it (`GET /v1/responses` with
//! `Upgrade: websocket`, `supports_websockets = true` in its provider block).
//!
//! Protocol (observed from Codex 0.171 and its source): the client sends one JSON text frame
//! per request, `{"type": "response.create", …the fields of a Responses request…}`; the server
//! answers with the request's stream events, one JSON text frame each (the `data` of the SSE
//! events), ending with `response.completed`. Two things differ from HTTP:
//!
//! - **Warm-up**: a first `response.create` with `"generate": false` asks for no model call;
//!   it is answered at once with an empty `response.created` + `response.completed`.
//! - **Incremental input**: later requests name the previous response of the *same socket*
//!   (`previous_response_id`, even with `store: false`) and carry only the new items; the
//!   full input is the previous input, plus the output items of the previous response, plus
//!   the new items.
//!
//! The gateway stays stateless across connections: [`SocketConversation`] keeps the last
//! input and output of one socket, in memory, for as long as the socket lives, and rebuilds the
//! full request that is then served like any `POST /v1/responses`. A `previous_response_id`
//! that is not the socket's last response is an error frame (nothing is stored to find it).

use serde_json::{Map, Value, json};

/// One connection's conversation so far.
#[derive(Debug, Default, Clone)]
pub struct SocketConversation {
    /// The full input of the last request.
    input: Vec<Value>,
    /// The output items of the last response (from `response.output_item.done`).
    output: Vec<Value>,
    /// The id of the last response that completed.
    last_id: Option<String>,
    /// The id of the response in progress (from `response.created`).
    pending_id: Option<String>,
}

/// What to do with a client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum SocketRequest {
    /// Answer with these events and call no model (a warm-up).
    Answer(Vec<Value>),
    /// Serve this full Responses request (streamed, no `previous_response_id`).
    Generate(Map<String, Value>),
    /// A frame that asks for nothing (`response.processed`, unknown types): ignore it.
    Ignore,
}

impl SocketConversation {
    /// Turn a client text frame into a request. `warmup_id` and `created` stamp a warm-up's
    /// response.
    ///
    /// # Errors
    /// A message for the client when the frame is not a JSON object, its input is malformed,
    /// or it continues a response this socket did not serve last.
    pub fn request(
        &mut self,
        frame: &str,
        warmup_id: &str,
        created: i64,
    ) -> Result<SocketRequest, String> {
        let mut body = match serde_json::from_str::<Value>(frame) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err("a frame must be a JSON object".to_owned()),
            Err(e) => return Err(format!("a frame must be JSON: {e}")),
        };
        match body.remove("type") {
            Some(Value::String(t)) if t == "response.create" => {}
            _ => return Ok(SocketRequest::Ignore),
        }
        let new_items = match body.remove("input") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
            Some(_) => return Err("'input' must be a string or an array of items".to_owned()),
        };
        let mut input = match body.remove("previous_response_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(prev)) if self.last_id.as_deref() == Some(prev.as_str()) => {
                let mut full = std::mem::take(&mut self.input);
                full.append(&mut self.output);
                full
            }
            Some(prev) => {
                return Err(format!(
                    "previous_response_id {prev} is not the last response on this connection; \
                     the gateway keeps no other conversation state: send the full input"
                ));
            }
        };
        input.extend(new_items);
        self.input.clone_from(&input);
        self.output.clear();
        self.pending_id = None;
        if body.remove("generate") == Some(Value::Bool(false)) {
            let id = format!("resp_{warmup_id}");
            self.last_id = Some(id.clone());
            let model = body.get("model").cloned().unwrap_or(Value::Null);
            let response = |status: &str| {
                json!({
                    "id": id, "object": "response", "created_at": created, "status": status,
                    "model": model, "output": [], "error": null, "incomplete_details": null,
                    "usage": {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": 0},
                })
            };
            return Ok(SocketRequest::Answer(vec![
                json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress")}),
                json!({"type": "response.completed", "sequence_number": 1, "response": response("completed")}),
            ]));
        }
        body.insert("input".to_owned(), Value::Array(input));
        body.insert("stream".to_owned(), Value::Bool(true));
        Ok(SocketRequest::Generate(body))
    }

    /// Follow a server event, so the next request can continue this response.
    pub fn observe(&mut self, event: &Value) {
        let id = || {
            event
                .pointer("/response/id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match event.get("type").and_then(Value::as_str) {
            Some("response.created") => self.pending_id = id(),
            Some("response.output_item.done") => {
                if let Some(item) = event.get("item") {
                    self.output.push(item.clone());
                }
            }
            Some("response.completed" | "response.incomplete") => {
                self.last_id = id().or_else(|| self.pending_id.take());
            }
            _ => {}
        }
    }
}

/// The error frame Codex maps to an HTTP error of `status` (the error object is the OpenAI
/// envelope's `error`).
#[must_use]
pub fn error_frame(status: u16, envelope: &Value) -> Value {
    json!({
        "type": "error",
        "status": status,
        "error": envelope.get("error").cloned().unwrap_or_else(|| envelope.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: Value) -> String {
        v.to_string()
    }

    #[test]
    fn warmup_then_incremental_requests_rebuild_the_full_input() {
        let mut c = SocketConversation::default();
        let dev = json!({"role": "developer", "content": "be careful"});
        let warm = c
            .request(
                &frame(json!({"type": "response.create", "model": "gpt-5", "input": [dev], "generate": false, "tools": []})),
                "W1",
                1_800_000_000,
            )
            .unwrap();
        let SocketRequest::Answer(events) = warm else {
            panic!("a warm-up is answered locally")
        };
        assert_eq!(events[0]["type"], "response.created");
        assert_eq!(events[1]["type"], "response.completed");
        assert_eq!(events[1]["response"]["id"], "resp_W1");

        let user = json!({"role": "user", "content": "list files"});
        let SocketRequest::Generate(body) = c
            .request(
                &frame(json!({"type": "response.create", "model": "gpt-5", "previous_response_id": "resp_W1", "input": [user]})),
                "x",
                0,
            )
            .unwrap()
        else {
            panic!("generate")
        };
        assert_eq!(body["input"], json!([dev, user]));
        assert_eq!(body["stream"], true);
        assert!(!body.contains_key("previous_response_id"));
        assert!(!body.contains_key("type"));

        let call = json!({"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": "{}"});
        c.observe(&json!({"type": "response.created", "response": {"id": "resp_2"}}));
        c.observe(&json!({"type": "response.output_item.done", "item": call}));
        c.observe(&json!({"type": "response.completed", "response": {"id": "resp_2"}}));
        let out = json!({"type": "function_call_output", "call_id": "call_1", "output": "ok"});
        let SocketRequest::Generate(body) = c
            .request(
                &frame(json!({"type": "response.create", "previous_response_id": "resp_2", "input": [out]})),
                "x",
                0,
            )
            .unwrap()
        else {
            panic!("generate")
        };
        assert_eq!(body["input"], json!([dev, user, call, out]));
    }

    #[test]
    fn unknown_continuations_and_bad_frames_are_refused_other_frames_ignored() {
        let mut c = SocketConversation::default();
        let err = c
            .request(
                &frame(json!({"type": "response.create", "previous_response_id": "resp_x", "input": []})),
                "x",
                0,
            )
            .unwrap_err();
        assert!(err.contains("send the full input"), "{err}");
        assert!(c.request("[1]", "x", 0).is_err());
        assert!(c.request("{", "x", 0).is_err());
        assert_eq!(
            c.request(
                &frame(json!({"type": "response.processed", "response_id": "r"})),
                "x",
                0
            )
            .unwrap(),
            SocketRequest::Ignore
        );
        let e = error_frame(
            429,
            &json!({"error": {"type": "rate_limit_error", "message": "m"}}),
        );
        assert_eq!(e["status"], 429);
        assert_eq!(e["error"]["type"], "rate_limit_error");
    }
}
