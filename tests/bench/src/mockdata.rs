//! The bench mock's responses, rendered once at start-up.
//!
//! Every response carries the same text (`chunks × words_per_chunk` words) so sync and
//! streamed runs move the same content, and real usage numbers so a gateway can cost-stamp
//! them. Streams are kept as one `Bytes` per SSE event, so the server can pace them.

use bytes::Bytes;
use serde_json::{Value, json};

/// Shape of the generated completion.
#[derive(Debug, Clone, Copy)]
pub struct Content {
    /// SSE content deltas per stream (at least 1).
    pub chunks: usize,
    /// Words per delta.
    pub words_per_chunk: usize,
}

/// Pre-rendered bodies for one [`Content`].
#[derive(Debug, Clone)]
pub struct Bodies {
    pub openai_json: Bytes,
    /// Without the usage chunk.
    pub openai_sse: Vec<Bytes>,
    /// With the final usage chunk (`stream_options.include_usage`).
    pub openai_sse_usage: Vec<Bytes>,
    pub anthropic_json: Bytes,
    pub anthropic_sse: Vec<Bytes>,
}

const PROMPT_TOKENS: u64 = 12;
const CREATED: u64 = 1_700_000_000;

fn piece(words: usize) -> String {
    let mut s = String::with_capacity(words * 6);
    for _ in 0..words {
        s.push_str(" bench");
    }
    s
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn event(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

impl Bodies {
    #[must_use]
    pub fn new(c: Content) -> Self {
        let chunks = c.chunks.max(1);
        let words = c.words_per_chunk.max(1);
        let delta = piece(words);
        let text: String = delta.repeat(chunks);
        let out_tokens = (chunks * words) as u64;
        let openai_usage = json!({
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": out_tokens,
            "total_tokens": PROMPT_TOKENS + out_tokens,
        });

        let openai_json = json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": "bench-model",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": openai_usage,
            "system_fingerprint": null,
        });

        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": "bench-model",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
        };
        let mut openai_sse = vec![data(&chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ))];
        for _ in 0..chunks {
            openai_sse.push(data(&chunk(json!({"content": delta}), Value::Null)));
        }
        openai_sse.push(data(&chunk(json!({}), json!("stop"))));
        let mut openai_sse_usage = openai_sse.clone();
        openai_sse_usage.push(data(&json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": "bench-model",
            "choices": [],
            "usage": openai_usage,
        })));
        let done = Bytes::from_static(b"data: [DONE]\n\n");
        openai_sse.push(done.clone());
        openai_sse_usage.push(done);

        let anthropic_json = json!({
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": "bench-model",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": out_tokens},
        });
        let mut anthropic_sse = vec![
            event(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": "msg_bench", "type": "message", "role": "assistant",
                    "model": "bench-model", "content": [], "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1},
                }}),
            ),
            event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
            ),
            event("ping", &json!({"type": "ping"})),
        ];
        for _ in 0..chunks {
            anthropic_sse.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": delta}}),
            ));
        }
        anthropic_sse.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        anthropic_sse.push(event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": out_tokens}}),
        ));
        anthropic_sse.push(event("message_stop", &json!({"type": "message_stop"})));

        Self {
            openai_json: Bytes::from(openai_json.to_string()),
            openai_sse,
            openai_sse_usage,
            anthropic_json: Bytes::from(anthropic_json.to_string()),
            anthropic_sse,
        }
    }
}

/// Whether an OpenAI request body asks for the usage chunk
/// (`"stream_options": {"include_usage": true}`), without parsing the whole body.
#[must_use]
pub fn wants_usage(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"include_usage\"";
    let Some(at) = body.windows(KEY.len()).position(|w| w == KEY) else {
        return false;
    };
    body[at + KEY.len()..]
        .iter()
        .find(|c| !c.is_ascii_whitespace() && **c != b':')
        .is_some_and(|c| *c == b't')
}

/// Whether a request body asks for a stream (`"stream": true`), without parsing the body.
#[must_use]
pub fn wants_stream(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"stream\"";
    let mut rest = body;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        rest = &rest[at + KEY.len()..];
        if rest
            .iter()
            .find(|c| !c.is_ascii_whitespace() && **c != b':')
            .is_some_and(|c| *c == b't')
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_json(frames: &[Bytes]) -> Vec<Value> {
        frames
            .iter()
            .filter_map(|f| {
                let s = std::str::from_utf8(f).ok()?;
                let d = s.lines().find_map(|l| l.strip_prefix("data: "))?;
                serde_json::from_str(d).ok()
            })
            .collect()
    }

    #[test]
    fn bodies_are_valid_json_with_usage() {
        let b = Bodies::new(Content {
            chunks: 4,
            words_per_chunk: 2,
        });
        let o: Value = serde_json::from_slice(&b.openai_json).unwrap_or_default();
        assert_eq!(o["usage"]["completion_tokens"], json!(8));
        let a: Value = serde_json::from_slice(&b.anthropic_json).unwrap_or_default();
        assert_eq!(a["usage"]["output_tokens"], json!(8));
        // role + 4 deltas + finish, then [DONE].
        assert_eq!(b.openai_sse.len(), 7);
        assert_eq!(frames_json(&b.openai_sse).len(), 6);
        assert_eq!(frames_json(&b.openai_sse_usage).len(), 7);
        assert_eq!(b.anthropic_sse.len(), 10);
        assert_eq!(frames_json(&b.anthropic_sse).len(), 10);
        assert!(b.anthropic_sse.iter().all(|f| f.ends_with(b"\n\n")));
    }

    #[test]
    fn request_flags() {
        assert!(wants_stream(br#"{"model":"x","stream": true}"#));
        assert!(!wants_stream(br#"{"model":"x","stream":false}"#));
        assert!(!wants_stream(br#"{"model":"x"}"#));
        assert!(wants_stream(
            br#"{"stream_options":{"include_usage":true},"stream":true}"#
        ));
        assert!(wants_usage(
            br#"{"stream_options": {"include_usage" : true}}"#
        ));
        assert!(!wants_usage(
            br#"{"stream_options":{"include_usage":false}}"#
        ));
    }
}
