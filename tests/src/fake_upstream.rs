//! A fake LLM provider that speaks the real Anthropic (Messages, count tokens, models) and
//! OpenAI (Chat Completions, Responses, input tokens, embeddings, models) wire formats, for
//! black-box tests of the gateway.
//!
//! What it serves (on `127.0.0.1` only). OpenAI paths also answer without the `/v1` prefix, for
//! base URLs configured without it.
//! - `POST /v1/messages` — Anthropic. Requires the configured key on `x-api-key`, or as
//!   `Authorization: Bearer` when there is no `x-api-key` (as the pinned `anthropic` SDK and
//!   Claude Code send it), else a real `authentication_error` 401; and an `anthropic-version`
//!   header, else a real 400. The query string is ignored (Claude Code posts `?beta=true`).
//! - `POST /v1/messages/count_tokens` — Anthropic: `{"input_tokens": N}`, N =
//!   [`estimate_input_tokens`] of the body. Same credentials, headers and validation as
//!   messages, without `max_tokens`.
//! - `POST /v1/chat/completions` — OpenAI. Requires `Authorization: Bearer <configured key>`
//!   (else a real `invalid_api_key` 401).
//! - `POST /v1/responses` — the OpenAI Responses API, sync and SSE (module `responses`); keeps
//!   the conversations it answered with `store` not false, so `previous_response_id` works.
//! - `POST /v1/responses/input_tokens` — `{"object": "response.input_tokens", "input_tokens": N}`,
//!   N = [`estimate_input_tokens`].
//! - `POST /v1/embeddings` — deterministic unit vectors ([`embedding_vector`]), float or
//!   base64 (little-endian f32), `dimensions` honoured.
//! - `GET /v1/models`, `GET /v1/models/{id}` — the Anthropic list/retrieve shapes
//!   ([`ANTHROPIC_MODELS`]) when called with `anthropic-version` or `x-api-key`, else the
//!   OpenAI ones ([`OPENAI_MODELS`]).
//! - `GET /_requests` — every recorded provider request as a JSON array of
//!   [`RecordedRequest`]; `POST /_reset` clears the record, the `[fail-once]` memory and the
//!   stored Responses conversations. These two are for out-of-process (Python) tests.
//!
//! Behaviour is scripted by directives found in the text of the **last user message**, so a test
//! can drive it through any client or SDK (see [`Directives`]). Without directives the reply is
//! `echo: <that text>`. When the conversation ends with tool results (Anthropic `tool_result`
//! blocks, OpenAI `tool` messages, Responses `function_call_output` items), the reply is
//! `tool result: <their text>` and directives are not re-applied (so tool loops terminate).
//! The count-tokens and embeddings endpoints honour only `[status:CODE]` and `[slow:MS]`.
//!
//! A `system` message inside Anthropic `messages` (Claude Code sends one with the beta token
//! `mid-conversation-system-2026-04-07`): Anthropic documents "mid-conversation system
//! messages" as available on Claude Opus 4.8 with no beta header required, and a 400 for the
//! same request on models without the feature. The fake mirrors that: it gates by model (see
//! [`model_accepts_system_messages`]), not by the beta token, and applies the documented
//! placement rules (not first; right after a `user` message; last or followed by `assistant`;
//! text only). On older models it answers the historical 400 (`Unexpected role "system"`).
//!
//! Invariants the tests rely on:
//! - Every request that reaches a provider path is recorded before it is answered, including
//!   rejected ones, with its query string and every header (so tests can assert that
//!   `anthropic-beta`, `anthropic-version`, `openai-beta`, … reached the upstream); credential
//!   header values are never recorded, only whether they matched.
//! - Streams follow the providers' real event sequences; only the `[garbage]`, `[cut]` and
//!   `[stream-error]` directives break them, on purpose.
//! - Request validation mirrors the real APIs where a translating gateway is most likely to be
//!   wrong: required fields, roles, and the pairing of tool calls with tool results.
//! - Upstream errors carry the real, distinctive messages (e.g. [`ANTHROPIC_TOO_LONG_MESSAGE`]
//!   for `[too-long]`), so a test can check a body reaches the client unchanged.

use bytes::Bytes;
use poem::http::{HeaderValue, StatusCode, header};
use poem::listener::TcpAcceptor;
use poem::{Body, Endpoint, Request, Response, Server};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod extras;
mod responses;

pub use extras::{
    ANTHROPIC_MODELS, EMBEDDING_DIMENSIONS, OPENAI_MODELS, embedding_dimensions, embedding_vector,
    token_embedding_vector,
};
pub use responses::{REASONING_ENCRYPTED_CONTENT, RESPONSES_STREAM_ERROR_MESSAGE};

/// Key the binary expects on `x-api-key` unless told otherwise.
pub const DEFAULT_ANTHROPIC_KEY: &str = "fake-anthropic-key";
/// Key the binary expects as a Bearer token unless told otherwise.
pub const DEFAULT_OPENAI_KEY: &str = "fake-openai-key";
/// Arguments of every scripted tool call.
pub const TOOL_ARGUMENTS: &str = r#"{"city":"Paris"}"#;
/// Thinking text of the `[think]` block.
pub const THINKING_TEXT: &str = "The user wants an echo. I will echo their words back.";
/// Signature of the `[think]` block (opaque base64, as the real API sends).
pub const THINKING_SIGNATURE: &str = "EqQBCkYIBRgCKkBmYWtlLXNpZ25hdHVyZS1mb3ItdGVzdHM=";
/// Cache-read input tokens reported under `[cache]`.
pub const CACHE_READ_TOKENS: u64 = 1024;
/// Cache-write input tokens reported under `[cache]` (Anthropic only; OpenAI has no such bucket).
pub const CACHE_WRITE_TOKENS: u64 = 256;
/// `system_fingerprint` of OpenAI responses (a field a same-shape gateway must pass through).
pub const SYSTEM_FINGERPRINT: &str = "fp_fake_upstream";
/// Number of text deltas a `[long]` stream sends.
pub const LONG_STREAM_DELTAS: usize = 200;
/// Pause between the deltas of a `[long]` stream.
pub const LONG_STREAM_DELTA_MS: u64 = 50;
/// Message of the Anthropic 400 for `[overflow]` / `[too-long]` (the real wording).
pub const ANTHROPIC_TOO_LONG_MESSAGE: &str = "prompt is too long: 215000 tokens > 200000 maximum";
/// Message of the Chat Completions 400 for `[overflow]` / `[too-long]` (the real wording).
pub const OPENAI_CONTEXT_LENGTH_MESSAGE: &str = "This model's maximum context length is 128000 tokens. However, your messages resulted in 215000 tokens. Please reduce the length of the messages.";
/// Message of the Responses API 400 for `[overflow]` / `[too-long]` (the real wording).
pub const RESPONSES_CONTEXT_LENGTH_MESSAGE: &str =
    "Your input exceeds the context window of this model. Please adjust your input and try again.";

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// Whether the credential header of a recorded request matched the configured key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthCheck {
    Matched,
    Mismatched,
    Missing,
}

/// How a streamed response ended, from the fake's side of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamOutcome {
    /// Every frame was handed to the connection.
    Completed,
    /// The fake dropped the connection on purpose (`[cut]`).
    Cut,
    /// The client went away before the stream ended (the body was dropped unfinished).
    ClientDropped,
}

/// Which provider's credentials and wire shape a request was served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Anthropic,
    #[serde(rename = "openai")]
    OpenAi,
}

/// Which provider operation a recorded request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens`.
    CountTokens,
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// OpenAI `POST /v1/responses/input_tokens`.
    ResponsesInputTokens,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models` and `GET /v1/models/{id}`, in the shape of [`RecordedRequest::provider`].
    Models,
}

/// One request the fake received on a provider path.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    /// Arrival order, from 0 (reset by [`FakeUpstream::reset`]).
    pub seq: u64,
    pub method: String,
    /// The path without the query string (`/v1/messages` for `/v1/messages?beta=true`).
    pub path: String,
    /// The raw query string, if any (`beta=true`).
    pub query: Option<String>,
    /// The provider whose credentials and shape this request was served with.
    pub provider: Provider,
    /// The operation the request reached.
    pub api: Api,
    /// Every header the client sent: lower-case names, repeated headers joined with `, `, so
    /// forwarded headers (`anthropic-beta`, `anthropic-version`, `openai-beta`,
    /// `openai-organization`, `openai-project`, `x-stainless-*`, …) can be asserted. Credential
    /// values are never kept: the checked one (`x-api-key` for Anthropic, `authorization` for
    /// OpenAI) becomes `<matched>` or `<mismatched>`; any other credential header
    /// (`authorization`/`x-api-key` of the other provider, `proxy-authorization`, `api-key`,
    /// `x-goog-api-key`, `cookie`) becomes `<present>`.
    pub headers: BTreeMap<String, String>,
    /// Result of the credential check for this path's provider.
    pub auth: AuthCheck,
    /// The parsed JSON body, or `null` if it was not JSON.
    pub body: Value,
    pub body_len: usize,
    /// Set for streamed answers once the stream ends (or is abandoned).
    pub stream_outcome: Option<StreamOutcome>,
}

impl RecordedRequest {
    /// A header value by (case-insensitive) name.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Whether this request went to the Anthropic Messages path.
    #[must_use]
    pub fn is_anthropic(&self) -> bool {
        self.path == "/v1/messages"
    }

    /// Whether this request went to an OpenAI Chat Completions path.
    #[must_use]
    pub fn is_openai(&self) -> bool {
        self.path.ends_with("/chat/completions")
    }

    /// Whether this request went to the OpenAI Responses path (`POST /v1/responses`).
    #[must_use]
    pub fn is_responses(&self) -> bool {
        self.api == Api::Responses
    }

    /// The comma-separated tokens of `anthropic-beta`, in order (empty when absent).
    #[must_use]
    pub fn anthropic_betas(&self) -> Vec<&str> {
        self.header("anthropic-beta")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running fake upstream. Dropping it stops the server.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeUpstream {
    /// Start on `127.0.0.1:0`, expecting these provider keys.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn start(anthropic_key: &str, openai_key: &str) -> anyhow::Result<Self> {
        Self::start_on(0, anthropic_key, openai_key).await
    }

    /// Start on `127.0.0.1:<port>` (0 picks a free port).
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn start_on(
        port: u16,
        anthropic_key: &str,
        openai_key: &str,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let state = Arc::new(State {
            anthropic_key: anthropic_key.to_owned(),
            openai_key: openai_key.to_owned(),
            records: Mutex::new(Vec::new()),
            fail_once_seen: Mutex::new(HashSet::new()),
            stored_responses: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            ids: AtomicU64::new(seed()),
        });
        let (tx, rx) = oneshot::channel::<()>();
        let endpoint = FakeEndpoint {
            state: Arc::clone(&state),
        };
        let task = tokio::spawn(async move {
            let signal = async {
                let _ = rx.await;
            };
            let _ = Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(endpoint, signal, Some(Duration::from_millis(200)))
                .await;
        });
        Ok(FakeUpstream {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` — the Anthropic base URL (the SDK appends `/v1/messages`).
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1` — the OpenAI base URL (the SDK appends `/chat/completions`).
    #[must_use]
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every recorded provider request, in arrival order.
    #[must_use]
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.records().clone()
    }

    /// Recorded requests to one path.
    #[must_use]
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.state
            .records()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Forget recorded requests, `[fail-once]` memory and stored Responses-API conversations.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Wait until at least `n` requests are recorded, or `timeout` passes; returns them.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if reqs.len() >= n || tokio::time::Instant::now() >= deadline {
                return reqs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until every recorded streamed request has an outcome, or `timeout` passes.
    pub async fn wait_for_stream_outcomes(&self, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            let pending = reqs.iter().any(|r| {
                r.stream_outcome.is_none()
                    && r.body.get("stream").and_then(Value::as_bool) == Some(true)
                    && r.auth == AuthCheck::Matched
            });
            if !pending || tokio::time::Instant::now() >= deadline {
                return reqs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop serving and wait for the server task (bounded).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Directives
// ---------------------------------------------------------------------------------------------

/// Scripted behaviour parsed from `[...]` tokens in the last user message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `[tool:NAME]` — call tool NAME with [`TOOL_ARGUMENTS`].
    pub tool: Option<String>,
    /// `[think]` — (Anthropic) a signed thinking block before the text.
    pub think: bool,
    /// `[status:CODE]` — answer CODE with the provider's real error body.
    pub status: Option<u16>,
    /// `[fail-once:CODE]` — answer CODE the first time this exact text is seen.
    pub fail_once: Option<u16>,
    /// `[overflow]` (alias `[too-long]`) — the provider's real context-length 400, whose
    /// message is distinctive ([`ANTHROPIC_TOO_LONG_MESSAGE`], [`OPENAI_CONTEXT_LENGTH_MESSAGE`],
    /// [`RESPONSES_CONTEXT_LENGTH_MESSAGE`]) so a test can see it reach the client unchanged.
    pub overflow: bool,
    /// `[garbage]` — 200 with a non-JSON body, or malformed SSE data.
    pub garbage: bool,
    /// `[cut]` — stream some deltas, then drop the connection.
    pub cut: bool,
    /// `[stream-error]` — stream some deltas, then a provider error frame (Responses API: a
    /// `response.failed` event).
    pub stream_error: bool,
    /// `[stream-error:event]` — as `[stream-error]`, but the Responses API sends an `error`
    /// event (the live API's nested shape) instead of `response.failed`. Same as
    /// `[stream-error]` for the other APIs.
    pub stream_error_event: bool,
    /// `[slow:MS]` — wait before the response head.
    pub slow_ms: Option<u64>,
    /// `[drip:MS]` — wait between stream frames.
    pub drip_ms: Option<u64>,
    /// `[long]` — a stream of [`LONG_STREAM_DELTAS`] deltas, [`LONG_STREAM_DELTA_MS`] apart.
    pub long: bool,
    /// `[cache]` — report cached input tokens in usage.
    pub cache: bool,
    /// `[split]` — send every SSE frame in 7-byte pieces (splitting lines and UTF-8
    /// sequences), so the reader must reassemble them.
    pub split: bool,
    /// `[pause:MS]` — one silence of MS after the first text delta of a stream.
    pub pause_ms: Option<u64>,
    /// `[length]` — the reply stops at the token limit (`max_tokens` / `length`).
    pub length: bool,
    /// `[crlf]` — end SSE lines with `\r\n` (allowed by the SSE spec, used by some servers).
    pub crlf: bool,
}

impl Directives {
    /// Parse every `[...]` token of `text`; unknown tokens are ignored.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut d = Directives::default();
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            let after = &rest[open + 1..];
            let Some(close) = after.find(']') else { break };
            let token = &after[..close];
            rest = &after[close + 1..];
            let (name, arg) = match token.split_once(':') {
                Some((n, a)) => (n.trim(), Some(a.trim())),
                None => (token.trim(), None),
            };
            let num = arg.and_then(|a| a.parse::<u64>().ok());
            match (name, arg) {
                ("tool", Some(a)) if !a.is_empty() => d.tool = Some(a.to_owned()),
                ("think", None) => d.think = true,
                ("status", Some(_)) => d.status = num.and_then(|n| u16::try_from(n).ok()),
                ("fail-once", Some(_)) => d.fail_once = num.and_then(|n| u16::try_from(n).ok()),
                ("overflow" | "too-long", None) => d.overflow = true,
                ("garbage", None) => d.garbage = true,
                ("cut", None) => d.cut = true,
                ("stream-error", None) => d.stream_error = true,
                ("stream-error", Some("event")) => {
                    d.stream_error = true;
                    d.stream_error_event = true;
                }
                ("slow", Some(_)) => d.slow_ms = num,
                ("drip", Some(_)) => d.drip_ms = num,
                ("long", None) => d.long = true,
                ("cache", None) => d.cache = true,
                ("split", None) => d.split = true,
                ("crlf", None) => d.crlf = true,
                ("length", None) => d.length = true,
                ("pause", Some(_)) => d.pause_ms = num,
                _ => {}
            }
        }
        d
    }
}

// ---------------------------------------------------------------------------------------------
// Server state and dispatch
// ---------------------------------------------------------------------------------------------

struct State {
    anthropic_key: String,
    openai_key: String,
    records: Mutex<Vec<RecordedRequest>>,
    fail_once_seen: Mutex<HashSet<String>>,
    /// Conversation items (input and output) of every Responses-API answer served with `store`
    /// not false, by response id, so `previous_response_id` works as against the real API.
    stored_responses: Mutex<HashMap<String, Vec<Value>>>,
    seq: AtomicU64,
    ids: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn records(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        lock(&self.records)
    }

    fn reset(&self) {
        let mut recs = self.records();
        recs.clear();
        self.seq.store(0, Ordering::SeqCst);
        drop(recs);
        lock(&self.fail_once_seen).clear();
        lock(&self.stored_responses).clear();
    }

    fn record(&self, mut rec: RecordedRequest) -> u64 {
        let mut recs = self.records();
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        rec.seq = seq;
        recs.push(rec);
        seq
    }

    fn set_outcome(&self, seq: u64, outcome: StreamOutcome) {
        let mut recs = self.records();
        if let Some(r) = recs.iter_mut().find(|r| r.seq == seq)
            && r.stream_outcome.is_none()
        {
            r.stream_outcome = Some(outcome);
        }
    }

    /// True the first time `text` is seen.
    fn first_time(&self, text: &str) -> bool {
        lock(&self.fail_once_seen).insert(text.to_owned())
    }

    /// A fresh base62 string of `len` characters.
    fn rand_id(&self, len: usize) -> String {
        self.rand_from(
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            len,
        )
    }

    /// A fresh lower-case hex string of `len` characters (the Responses API's id alphabet).
    fn rand_hex(&self, len: usize) -> String {
        self.rand_from(b"0123456789abcdef", len)
    }

    fn rand_from(&self, alphabet: &[u8], len: usize) -> String {
        // Each id starts from a mixed counter value, so consecutive ids share no run of
        // characters; within an id, splitmix64 steps produce the characters.
        let mut x = splitmix64(self.ids.fetch_add(1, Ordering::Relaxed));
        let mut out = String::with_capacity(len);
        for _ in 0..len {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let n = u64::try_from(alphabet.len()).unwrap_or(1);
            let idx = usize::try_from(splitmix64(x) % n).unwrap_or(0);
            out.push(char::from(alphabet[idx]));
        }
        out
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0)
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct FakeEndpoint {
    state: Arc<State>,
}

impl Endpoint for FakeEndpoint {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        Ok(handle(Arc::clone(&self.state), req).await)
    }
}

async fn handle(state: Arc<State>, mut req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // OpenAI paths also answer without the `/v1` prefix, for base URLs configured without it.
    let openai_path = path.strip_prefix("/v1").unwrap_or(&path);
    let (provider, api) = match (method.as_str(), path.as_str(), openai_path) {
        ("GET", "/_requests", _) => {
            let recs = state.records().clone();
            return json_response(StatusCode::OK, &json!(recs));
        }
        ("POST", "/_reset", _) => {
            state.reset();
            return json_response(StatusCode::OK, &json!({"ok": true}));
        }
        ("POST", "/v1/messages", _) => (Provider::Anthropic, Api::Messages),
        ("POST", "/v1/messages/count_tokens", _) => (Provider::Anthropic, Api::CountTokens),
        ("POST", _, "/chat/completions") => (Provider::OpenAi, Api::ChatCompletions),
        ("POST", _, "/responses") => (Provider::OpenAi, Api::Responses),
        ("POST", _, "/responses/input_tokens") => (Provider::OpenAi, Api::ResponsesInputTokens),
        ("POST", _, "/embeddings") => (Provider::OpenAi, Api::Embeddings),
        ("GET", _, p)
            if p == "/models" || p.strip_prefix("/models/").is_some_and(|id| !id.is_empty()) =>
        {
            (models_provider(&req), Api::Models)
        }
        _ => {
            return openai_error(
                StatusCode::NOT_FOUND,
                &format!("Invalid URL ({method} {path})"),
                "invalid_request_error",
                None,
                None,
            );
        }
    };
    let body_bytes = req.take_body().into_bytes().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&body_bytes).ok();
    let auth = check_auth(&state, provider, &req);
    let headers = recorded_headers(&req, provider, auth);
    let seq = state.record(RecordedRequest {
        seq: 0,
        method: method.to_string(),
        path: path.clone(),
        query: req.uri().query().map(str::to_owned),
        provider,
        api,
        headers,
        auth,
        body: parsed.clone().unwrap_or(Value::Null),
        body_len: body_bytes.len(),
        stream_outcome: None,
    });
    let ctx = Ctx { state, seq, api };
    match (api, provider) {
        (Api::Messages, _) => anthropic(&ctx, &req, auth, parsed).await,
        (Api::CountTokens, _) => extras::count_tokens(&ctx, &req, auth, parsed).await,
        (Api::ChatCompletions, _) => openai(&ctx, auth, parsed).await,
        (Api::Responses, _) => responses::create(&ctx, auth, parsed).await,
        (Api::ResponsesInputTokens, _) => responses::input_tokens(&ctx, auth, parsed).await,
        (Api::Embeddings, _) => extras::embeddings(&ctx, auth, parsed).await,
        (Api::Models, Provider::Anthropic) => {
            extras::anthropic_models(&ctx, &req, auth, openai_path)
        }
        (Api::Models, Provider::OpenAi) => extras::openai_models(&ctx, auth, openai_path),
    }
}

struct Ctx {
    state: Arc<State>,
    seq: u64,
    api: Api,
}

/// `GET /v1/models` answers in the Anthropic shape when called with `anthropic-version` or
/// `x-api-key` (Anthropic clients send one or both; OpenAI clients neither), else in the OpenAI
/// shape.
fn models_provider(req: &Request) -> Provider {
    let headers = req.headers();
    if headers.contains_key("anthropic-version") || headers.contains_key("x-api-key") {
        Provider::Anthropic
    } else {
        Provider::OpenAi
    }
}

/// The credential header checked for `provider`: OpenAI reads `Authorization: Bearer`;
/// Anthropic reads `x-api-key`, or `Authorization: Bearer` when there is no `x-api-key` (the
/// pinned `anthropic` SDK sends its API key that way, and Claude Code its auth token).
fn checked_header(provider: Provider, req: &Request) -> &'static str {
    match provider {
        Provider::Anthropic if req.headers().contains_key("x-api-key") => "x-api-key",
        Provider::Anthropic | Provider::OpenAi => "authorization",
    }
}

fn check_auth(state: &State, provider: Provider, req: &Request) -> AuthCheck {
    let presented = if checked_header(provider, req) == "x-api-key" {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    } else {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            })
    };
    let expected = match provider {
        Provider::Anthropic => &state.anthropic_key,
        Provider::OpenAi => &state.openai_key,
    };
    match presented {
        None => AuthCheck::Missing,
        Some(p) if p.is_empty() => AuthCheck::Missing,
        Some(p) if &p == expected => AuthCheck::Matched,
        Some(_) => AuthCheck::Mismatched,
    }
}

/// Headers whose values are credentials and are never recorded.
const CREDENTIAL_HEADERS: [&str; 6] = [
    "x-api-key",
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-goog-api-key",
    "cookie",
];

fn recorded_headers(
    req: &Request,
    provider: Provider,
    auth: AuthCheck,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let name = name.as_str().to_ascii_lowercase();
        let value = if CREDENTIAL_HEADERS.contains(&name.as_str()) {
            // Never record a credential; only whether the one checked for this provider matched.
            let is_checked = name == checked_header(provider, req);
            if is_checked {
                match auth {
                    AuthCheck::Matched => "<matched>".to_owned(),
                    AuthCheck::Mismatched | AuthCheck::Missing => "<mismatched>".to_owned(),
                }
            } else {
                "<present>".to_owned()
            }
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        out.entry(name)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The conversation, seen independently of the provider shape
// ---------------------------------------------------------------------------------------------

/// What the fake needs to know about a request to script its answer.
struct Convo {
    model: String,
    stream: bool,
    include_usage: bool,
    /// Text of the last user message (text parts only).
    last_user_text: String,
    /// Text of the tool results the conversation ends with, if it ends with any.
    trailing_tool_results: Option<String>,
    /// Rough input-token estimate (serialized size / 4).
    input_tokens: u64,
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

fn anthropic_convo(body: &Value) -> Convo {
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

fn openai_convo(body: &Value) -> Convo {
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
struct Script {
    thinking: bool,
    text: Option<String>,
    tool: Option<String>,
    /// Extra text deltas (for `[long]`).
    long: bool,
    /// Stopped by the token limit.
    truncated: bool,
    /// One silence after the first text delta.
    pause: Option<Duration>,
    end: StreamEnd,
    /// `[stream-error:event]`: the Responses API ends with an `error` event.
    error_as_event: bool,
    wire: Wire,
    input_tokens: u64,
    output_tokens: u64,
    cache: bool,
}

/// How stream frames are put on the wire.
#[derive(Clone, Copy, Default)]
struct Wire {
    /// Pause between frames.
    drip: Duration,
    /// Send frames in 7-byte pieces.
    split: bool,
    /// `\r\n` line endings.
    crlf: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    Normal,
    Cut,
    ProviderError,
    Garbage,
}

enum Plan {
    Error(u16),
    Overflow,
    Garbage,
    Reply(Script),
}

async fn plan(ctx: &Ctx, convo: &Convo) -> Plan {
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
async fn status_directive(text: &str) -> Option<u16> {
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
fn split_deltas(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    if words.is_empty() {
        return vec![String::new()];
    }
    words.chunks(2).map(|c| c.concat()).collect()
}

fn long_deltas() -> Vec<String> {
    (0..LONG_STREAM_DELTAS)
        .map(|i| format!("tick{i} "))
        .collect()
}

/// Split tool arguments into fragments the way providers stream them.
fn split_arguments(args: &str) -> Vec<String> {
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

// ---------------------------------------------------------------------------------------------
// Responses and streaming plumbing
// ---------------------------------------------------------------------------------------------

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}

enum Frame {
    Data(Bytes),
    /// Silence on the wire for this long.
    Pause(Duration),
    Abort,
}

/// Marks the recorded request's stream outcome; `ClientDropped` unless told otherwise.
struct OutcomeGuard {
    state: Arc<State>,
    seq: u64,
}

impl OutcomeGuard {
    fn finish(&self, outcome: StreamOutcome) {
        self.state.set_outcome(self.seq, outcome);
    }
}

impl Drop for OutcomeGuard {
    fn drop(&mut self) {
        self.state
            .set_outcome(self.seq, StreamOutcome::ClientDropped);
    }
}

struct StreamCtx {
    frames: VecDeque<Frame>,
    drip: Duration,
    first: bool,
    guard: OutcomeGuard,
}

fn sse_response(ctx: &Ctx, frames: Vec<Frame>, wire: Wire) -> Response {
    let frames = shape_frames(frames, wire);
    let drip = if wire.split && wire.drip.is_zero() {
        Duration::from_millis(1)
    } else {
        wire.drip
    };
    // hyper finishes a chunked body with its terminal chunk even when the body stream fails, so
    // a `[cut]` stream announces more bytes than it sends: the connection then has to close
    // mid-body, which is what a client sees when a real provider connection drops.
    let cut_length = frames.iter().any(|f| matches!(f, Frame::Abort)).then(|| {
        let sent: usize = frames
            .iter()
            .map(|f| match f {
                Frame::Data(b) => b.len(),
                Frame::Pause(_) | Frame::Abort => 0,
            })
            .sum();
        sent + 4096
    });
    let sctx = StreamCtx {
        frames: frames.into(),
        drip,
        first: true,
        guard: OutcomeGuard {
            state: Arc::clone(&ctx.state),
            seq: ctx.seq,
        },
    };
    let stream = futures_util::stream::unfold(sctx, |mut s| async move {
        loop {
            match s.frames.pop_front() {
                None => {
                    s.guard.finish(StreamOutcome::Completed);
                    return None;
                }
                Some(Frame::Pause(d)) => tokio::time::sleep(d).await,
                Some(Frame::Data(b)) => {
                    if !s.first && !s.drip.is_zero() {
                        tokio::time::sleep(s.drip).await;
                    }
                    s.first = false;
                    return Some((Ok::<Bytes, std::io::Error>(b), s));
                }
                Some(Frame::Abort) => {
                    // Give the client a moment to read what was sent before the connection dies.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    s.guard.finish(StreamOutcome::Cut);
                    s.frames.clear();
                    return Some((
                        Err(std::io::Error::other("fake upstream cut the stream")),
                        s,
                    ));
                }
            }
        }
    });
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .content_type("text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(len) = cut_length {
        builder = builder.header(header::CONTENT_LENGTH, len.to_string());
    }
    builder.body(Body::from_bytes_stream(stream))
}

/// Apply `[crlf]` and `[split]` to the frames.
fn shape_frames(frames: Vec<Frame>, wire: Wire) -> Vec<Frame> {
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        match f {
            Frame::Data(b) => {
                let b = if wire.crlf {
                    let mut v = Vec::with_capacity(b.len() + 8);
                    for &byte in b.iter() {
                        if byte == b'\n' {
                            v.push(b'\r');
                        }
                        v.push(byte);
                    }
                    Bytes::from(v)
                } else {
                    b
                };
                if wire.split {
                    let mut rest = b;
                    while rest.len() > 7 {
                        out.push(Frame::Data(rest.split_to(7)));
                    }
                    out.push(Frame::Data(rest));
                } else {
                    out.push(Frame::Data(b));
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn sse_event(name: &str, data: &Value) -> Frame {
    Frame::Data(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
}

fn sse_data(data: &str) -> Frame {
    Frame::Data(Bytes::from(format!("data: {data}\n\n")))
}

fn with_header(mut resp: Response, name: &'static str, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages
// ---------------------------------------------------------------------------------------------

fn anthropic_error_type(status: u16) -> &'static str {
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

fn anthropic_error_message(status: u16) -> &'static str {
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

fn anthropic_error(ctx: &Ctx, status: u16, ty: &str, message: &str) -> Response {
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
fn validate_anthropic_body(body: &Value, require_max_tokens: bool) -> Result<(), String> {
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
fn anthropic_preflight(ctx: &Ctx, req: &Request, auth: AuthCheck) -> Option<Response> {
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
fn anthropic_unparsable(ctx: &Ctx) -> Response {
    anthropic_error(
        ctx,
        400,
        "invalid_request_error",
        "There was an error parsing the body",
    )
}

async fn anthropic(ctx: &Ctx, req: &Request, auth: AuthCheck, body: Option<Value>) -> Response {
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

// ---------------------------------------------------------------------------------------------
// OpenAI Chat Completions
// ---------------------------------------------------------------------------------------------

fn openai_error(
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

fn openai_status_error(ctx: &Ctx, status: u16, model: &str) -> Response {
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
fn openai_auth_error(ctx: &Ctx, auth: AuthCheck) -> Option<Response> {
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
fn openai_unparsable() -> Response {
    openai_error(
        StatusCode::BAD_REQUEST,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)",
        "invalid_request_error",
        None,
        None,
    )
}

/// The 200-with-HTML answer of `[garbage]` on a non-streamed request.
fn garbage_response() -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json")
        .body("<html><body>upstream proxy error</body></html>")
}

async fn openai(ctx: &Ctx, auth: AuthCheck, body: Option<Value>) -> Response {
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

// ---------------------------------------------------------------------------------------------
// SSE parsing helper (used by tests of the fake and of the gateway)
// ---------------------------------------------------------------------------------------------

/// One parsed server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// The data parsed as JSON, if it is JSON.
    #[must_use]
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.data).ok()
    }
}

/// Parse an SSE body into events (comments and empty events are skipped).
#[must_use]
pub fn parse_sse(body: &str) -> Vec<SseEvent> {
    let mut out = Vec::new();
    let normalized = body.replace("\r\n", "\n");
    for block in normalized.split("\n\n") {
        let mut event = None;
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => event = Some(value.to_owned()),
                "data" => data.push(value),
                _ => {}
            }
        }
        if event.is_some() || !data.is_empty() {
            out.push(SseEvent {
                event,
                data: data.join("\n"),
            });
        }
    }
    out
}
