//! `MockProvider`: the in-process **test double** behind the canonical model `mock:echo`.
//! It is used by the quickstart, the benchmarks and the tests so the gateway can run end to end
//! without credentials or network. It is never a real model and must be labelled as a mock
//! wherever it is listed.
//!
//! Behaviour (deterministic: the same request body always yields the same bytes):
//! - Speaks the OpenAI Chat Completions wire format. The request body is parsed as one; a body
//!   that is not a JSON object with a `messages` array gets a 400 OpenAI error envelope.
//! - Reply text: `mock reply: ` followed by the text of the last `user` message, cut to 512
//!   characters on a character boundary. Text of a message = its string `content`, or its
//!   `text` parts joined by `\n`.
//! - Tool call: when the request has a non-empty `tools` array and the last message is a user
//!   message whose text starts with `/tool`, the reply calls the first tool with arguments
//!   `{}` (id `call_mock_<number of messages>`, `finish_reason: "tool_calls"`).
//! - Failure on demand: `MockSettings::fail_status`, or a last user message `/fail <status>`
//!   (400..=599), answers that status with an OpenAI-style error body (429 adds
//!   `Retry-After: 1`).
//! - Usage is counted, not invented: `prompt_tokens` = ceil(characters of all message text / 4),
//!   at least 1; `completion_tokens` = whitespace-separated words of the reply (a tool call
//!   counts ceil(characters of name + arguments / 4)).
//! - Streaming emits real `chat.completion.chunk` SSE frames: a role delta, one content delta
//!   per word (each carrying its leading whitespace, so the deltas concatenate to exactly the
//!   sync text), a final delta with `finish_reason`, a usage chunk (`choices: []`) when
//!   `stream_options.include_usage` is true, then `data: [DONE]`.
//! - `created` is the answer time (unix seconds), as the real API stamps it; everything else in
//!   an answer is a function of the request body alone.
//! - Embeddings (`Operation::Embeddings`, the OpenAI `/embeddings` shape): one unit-length
//!   vector per input string (`dimensions`, default 16), derived from a hash of the string, so
//!   equal inputs embed equally; `prompt_tokens` = ceil(characters / 4) summed over the inputs.
//!   `encoding_format: "base64"` returns little-endian f32 bytes in base64, as the real API.
//! - `latency_ms` delays the response head; `tokens_per_second` paces the deltas. With both
//!   unset it never sleeps, so benchmarks measure the gateway, not the mock.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use metis_ports::upstream::{
    Operation, Provider, UpstreamBody, UpstreamError, UpstreamReply, UpstreamRequest, WireFormat,
};
use serde_json::{Value, json};

/// Provider name of the mock (its only model is `mock:echo`).
pub const MOCK_PROVIDER: &str = "mock";
/// Longest echoed user text, in characters.
const ECHO_LIMIT_CHARS: usize = 512;

/// Knobs of the mock provider. The default answers at once, unpaced, without failures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MockSettings {
    /// Delay before the response head, in milliseconds.
    pub latency_ms: u64,
    /// Pace of streamed deltas (one word is one token). `None` or a non-positive value means
    /// as fast as possible.
    pub tokens_per_second: Option<f64>,
    /// Answer every call with this HTTP status (400..=599) and an OpenAI-style error body.
    pub fail_status: Option<u16>,
}

/// The deterministic in-process test double (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct MockProvider {
    settings: MockSettings,
}

impl MockProvider {
    #[must_use]
    pub fn new(settings: MockSettings) -> Self {
        Self { settings }
    }

    #[must_use]
    pub fn settings(&self) -> MockSettings {
        self.settings
    }

    fn pace(&self) -> Option<Duration> {
        match self.settings.tokens_per_second {
            Some(r) if r.is_finite() && r > 0.0 => Duration::try_from_secs_f64(1.0 / r).ok(),
            _ => None,
        }
    }
}

#[async_trait]
impl Provider for MockProvider {
    fn name(&self) -> &str {
        MOCK_PROVIDER
    }

    fn wire(&self) -> WireFormat {
        WireFormat::OpenAiChat
    }

    fn supports(&self, wire: WireFormat, op: Operation) -> bool {
        wire == WireFormat::OpenAiChat && matches!(op, Operation::Generate | Operation::Embeddings)
    }

    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamReply, UpstreamError> {
        if self.settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.settings.latency_ms)).await;
        }
        if !self.supports(request.wire, request.op) {
            return Err(status_error(404, "mock provider: operation not served"));
        }
        if request.op == Operation::Embeddings {
            return match embeddings(&request.body) {
                Ok(body) => Ok(UpstreamReply {
                    body: UpstreamBody::Full(body),
                    retries: 0,
                }),
                Err(message) => Err(status_error(400, &message)),
            };
        }
        let plan = match Plan::from_body(&request.body) {
            Ok(plan) => plan,
            Err(message) => return Err(status_error(400, &message)),
        };
        if let Some(status) = self.settings.fail_status.or(plan.fail_status)
            && (400..=599).contains(&status)
        {
            return Err(status_error(
                status,
                &format!("mock provider: simulated HTTP {status}"),
            ));
        }
        tracing::debug!(
            provider = MOCK_PROVIDER,
            request_id = %request.request_id,
            stream = request.stream,
            "mock call"
        );
        let body = if request.stream {
            UpstreamBody::Stream(plan.into_stream(self.pace()))
        } else {
            UpstreamBody::Full(plan.into_json())
        };
        Ok(UpstreamReply { body, retries: 0 })
    }
}

/// What the mock will answer, computed from the request.
struct Plan {
    id: String,
    created: u64,
    model: String,
    reply: Reply,
    prompt_tokens: u64,
    include_usage: bool,
    fail_status: Option<u16>,
}

enum Reply {
    Text(String),
    Tool { id: String, name: String },
}

const TOOL_ARGUMENTS: &str = "{}";

impl Plan {
    fn from_body(body: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| format!("request body is not valid JSON: {e}"))?;
        let messages = v
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| "'messages' must be an array".to_owned())?;
        let model = v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("echo")
            .to_owned();
        let include_usage = v
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);

        let mut chars = 0usize;
        let mut last_user: Option<String> = None;
        for m in messages {
            let text = m.get("content").map(content_text).unwrap_or_default();
            chars += text.chars().count();
            if m.get("role").and_then(Value::as_str) == Some("user") {
                last_user = Some(text);
            }
        }
        let last_is_user = messages
            .last()
            .and_then(|m| m.get("role"))
            .and_then(Value::as_str)
            == Some("user");
        let user_text = last_user.unwrap_or_default();

        let first_tool = v
            .get("tools")
            .and_then(Value::as_array)
            .and_then(|t| t.first())
            .and_then(|t| t.pointer("/function/name"))
            .and_then(Value::as_str);
        let reply = match first_tool {
            Some(name) if last_is_user && user_text.starts_with("/tool") => Reply::Tool {
                id: format!("call_mock_{}", messages.len()),
                name: name.to_owned(),
            },
            _ => Reply::Text(format!(
                "mock reply: {}",
                truncate_chars(&user_text, ECHO_LIMIT_CHARS)
            )),
        };
        let fail_status = if last_is_user {
            user_text
                .strip_prefix("/fail ")
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse::<u16>().ok())
        } else {
            None
        };
        Ok(Self {
            id: format!("chatcmpl-mock-{:016x}", fnv1a(body)),
            created: unix_now(),
            model,
            reply,
            prompt_tokens: (chars.div_ceil(4) as u64).max(1),
            include_usage,
            fail_status,
        })
    }

    fn completion_tokens(&self) -> u64 {
        match &self.reply {
            Reply::Text(text) => text.split_whitespace().count() as u64,
            Reply::Tool { name, .. } => {
                ((name.chars().count() + TOOL_ARGUMENTS.len()).div_ceil(4) as u64).max(1)
            }
        }
    }

    fn usage(&self) -> Value {
        let completion = self.completion_tokens();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    fn finish_reason(&self) -> &'static str {
        match self.reply {
            Reply::Text(_) => "stop",
            Reply::Tool { .. } => "tool_calls",
        }
    }

    /// A `chat.completion` body.
    fn into_json(self) -> Bytes {
        let message = match &self.reply {
            Reply::Text(text) => json!({ "role": "assistant", "content": text, "refusal": null }),
            Reply::Tool { id, name } => json!({
                "role": "assistant",
                "content": null,
                "refusal": null,
                "tool_calls": [{
                    "id": id,
                    "type": "function",
                    "function": { "name": name, "arguments": TOOL_ARGUMENTS },
                }],
            }),
        };
        let body = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": self.finish_reason(),
            }],
            "usage": self.usage(),
        });
        Bytes::from(body.to_string())
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if self.include_usage
            && let Some(obj) = c.as_object_mut()
        {
            // Real OpenAI sends `usage: null` on every chunk but the last when usage is asked for.
            obj.insert("usage".to_owned(), Value::Null);
        }
        c
    }

    /// SSE frames; the flag says whether the frame is a paced delta.
    fn frames(&self) -> Vec<(Bytes, bool)> {
        let mut out = Vec::new();
        match &self.reply {
            Reply::Text(text) => {
                out.push((
                    sse(&self.chunk(json!({"role": "assistant", "content": ""}), None)),
                    false,
                ));
                for word in split_words(text) {
                    out.push((sse(&self.chunk(json!({ "content": word }), None)), true));
                }
            }
            Reply::Tool { id, name } => {
                out.push((
                    sse(&self.chunk(json!({"role": "assistant", "content": null}), None)),
                    false,
                ));
                out.push((
                    sse(&self.chunk(
                        json!({"tool_calls": [{
                            "index": 0,
                            "id": id,
                            "type": "function",
                            "function": { "name": name, "arguments": "" },
                        }]}),
                        None,
                    )),
                    true,
                ));
                out.push((
                    sse(&self.chunk(
                        json!({"tool_calls": [{
                            "index": 0,
                            "function": { "arguments": TOOL_ARGUMENTS },
                        }]}),
                        None,
                    )),
                    true,
                ));
            }
        }
        out.push((
            sse(&self.chunk(json!({}), Some(self.finish_reason()))),
            false,
        ));
        if self.include_usage {
            let usage = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage(),
            });
            out.push((sse(&usage), false));
        }
        out.push((Bytes::from_static(b"data: [DONE]\n\n"), false));
        out
    }

    fn into_stream(
        self,
        pace: Option<Duration>,
    ) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
        let frames = self.frames();
        match pace {
            None => stream::iter(frames.into_iter().map(|(b, _)| Ok(b))).boxed(),
            Some(interval) => stream::iter(frames)
                .then(move |(bytes, paced)| async move {
                    if paced {
                        tokio::time::sleep(interval).await;
                    }
                    Ok(bytes)
                })
                .boxed(),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Default vector length of mock embeddings.
const EMBEDDING_DIMENSIONS: usize = 16;

/// An OpenAI `/embeddings` answer for `body` (see the module docs).
fn embeddings(body: &[u8]) -> Result<Bytes, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    let inputs: Vec<String> = match v.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                // Token arrays embed by their JSON text.
                Value::Array(_) => Ok(i.to_string()),
                _ => Err("'input' items must be strings or token arrays".to_owned()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("'input' must be a string or a non-empty array".to_owned()),
    };
    let dims = match v.get("dimensions") {
        None | Some(Value::Null) => EMBEDDING_DIMENSIONS,
        Some(d) => d
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| (1..=4096).contains(d))
            .ok_or_else(|| "'dimensions' must be an integer from 1 to 4096".to_owned())?,
    };
    let base64 = v.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            tokens += (text.chars().count().div_ceil(4) as u64).max(1);
            let vector = unit_vector(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64_encode(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let model = v.get("model").and_then(Value::as_str).unwrap_or("echo");
    let out = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok(Bytes::from(out.to_string()))
}

/// A deterministic unit-length vector of `dims` components derived from `text`.
fn unit_vector(text: &str, dims: usize) -> Vec<f32> {
    let seed = fnv1a(text.as_bytes());
    let raw: Vec<f64> = (0..dims as u64)
        .map(|i| {
            let h = fnv1a(&(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
            // Map to [-1, 1).
            (h >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    raw.iter().map(|x| (x / norm) as f32).collect()
}

/// Standard base64 with padding.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// An OpenAI-style error answer with the given status.
fn status_error(status: u16, message: &str) -> UpstreamError {
    let (ty, code) = match status {
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        401 | 403 => ("invalid_request_error", Some("invalid_api_key")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    let body = json!({ "error": { "message": message, "type": ty, "param": null, "code": code } });
    UpstreamError::Status {
        provider: MOCK_PROVIDER.to_owned(),
        status,
        body: Bytes::from(body.to_string()),
        retry_after_secs: (status == 429).then_some(1),
        retries: 0,
    }
}

/// Text of a message `content`: a string, or the `text` parts of an array joined by `\n`.
fn content_text(content: &Value) -> String {
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

/// The first `limit` characters of `s` (never splits a UTF-8 sequence).
fn truncate_chars(s: &str, limit: usize) -> &str {
    match s.char_indices().nth(limit) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Split `text` into one piece per whitespace-separated word; each piece carries the
/// whitespace before its word (the last also the trailing whitespace), so the pieces
/// concatenate back to `text`.
fn split_words(text: &str) -> Vec<&str> {
    let mut ends = Vec::new();
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                ends.push(i);
            }
            in_word = false;
        } else {
            in_word = true;
        }
    }
    if in_word {
        ends.push(text.len());
    }
    let Some(_) = ends.pop() else {
        return if text.is_empty() {
            Vec::new()
        } else {
            vec![text]
        };
    };
    let mut pieces = Vec::with_capacity(ends.len() + 1);
    let mut start = 0;
    for end in ends {
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces.push(&text[start..]);
    pieces
}

/// FNV-1a, 64 bit: a stable, dependency-free fingerprint for deterministic ids.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_concatenate_back_to_the_text() {
        for text in ["mock reply: hi", "a  b\n c ", "mock reply: ", "x", "  lead"] {
            let pieces = split_words(text);
            assert_eq!(pieces.concat(), text);
            assert_eq!(pieces.len(), text.split_whitespace().count(), "{text:?}");
        }
        assert!(split_words("").is_empty());
    }

    #[test]
    fn embeddings_are_unit_vectors_and_stable() {
        let a = unit_vector("hello", 16);
        assert_eq!(a, unit_vector("hello", 16));
        assert_ne!(a, unit_vector("hellp", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        let out: Value =
            serde_json::from_slice(&embeddings(br#"{"input":["a","bb"],"dimensions":4}"#).unwrap())
                .unwrap();
        assert_eq!(out["data"][1]["index"], 1);
        assert_eq!(out["data"][0]["embedding"].as_array().unwrap().len(), 4);
        assert_eq!(out["usage"]["prompt_tokens"], 2);
        assert!(embeddings(br#"{"input":[]}"#).is_err());
    }

    #[test]
    fn truncation_is_utf8_safe() {
        let s = "é".repeat(600);
        let t = truncate_chars(&s, 512);
        assert_eq!(t.chars().count(), 512);
        assert_eq!(truncate_chars("abc", 512), "abc");
    }

    #[test]
    fn content_text_reads_strings_and_text_parts() {
        assert_eq!(content_text(&json!("hi")), "hi");
        let parts = json!([{"type":"text","text":"a"},{"type":"image_url","image_url":{}},{"type":"text","text":"b"}]);
        assert_eq!(content_text(&parts), "a\nb");
        assert_eq!(content_text(&Value::Null), "");
    }
}
