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
//! - `POST /openai/deployments/{deployment}/chat/completions?api-version=V` and
//!   `…/embeddings` — Azure OpenAI (`api-key` or Entra ID bearer), and
//!   `POST /{tenant}/oauth2/v2.0/token` — a fake Entra ID (module `azure`).
//! - Google (module `gemini`): the Gemini API (`/v1beta/models/{m}:generateContent`,
//!   `:streamGenerateContent?alt=sse`, `x-goog-api-key` = [`DEFAULT_GEMINI_KEY`]), Vertex AI
//!   Gemini and Claude (`/v1/projects/…/publishers/{google|anthropic}/models/{m}:…`, bearer
//!   tokens minted by the fake's `POST /token`, which verifies the RS256 assertion of the
//!   test service account, [`google_service_account_json`]); `GET /_google/credentials` is
//!   that key file.
//! - `POST /model/{id}/converse`, `/model/{id}/converse-stream` — Amazon Bedrock Converse,
//!   SigV4 verified, binary event stream (module `bedrock`); `POST /_sts/` — STS
//!   `AssumeRoleWithWebIdentity` for the web-identity credential flow.
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

use poem::Server;
use poem::listener::TcpAcceptor;
use serde::Serialize;
use serde_json::Value;
use server::{FakeEndpoint, State, seed};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod anthropic;
mod azure;
mod bedrock;
mod convo;
mod directives;
mod extras;
mod gemini;
mod openai;
mod reply;
mod responses;
mod server;

pub use anthropic::model_accepts_system_messages;
pub use azure::{
    AZURE_AD_TOKEN, AZURE_API_KEY, AZURE_BAD_KEY_MESSAGE, AZURE_BAD_TOKEN_MESSAGE, ENTRA_CLIENT_ID,
    ENTRA_CLIENT_SECRET, ENTRA_SCOPE, ENTRA_TENANT_ID, ENTRA_TOKEN_LIFETIME_SECS,
};
pub use bedrock::{
    BEDROCK_ACCESS_KEY_ID, BEDROCK_SECRET_ACCESS_KEY, INVALID_SIGNATURE_MESSAGE, STS_ACCESS_KEY_ID,
    STS_SECRET_ACCESS_KEY, STS_SESSION_TOKEN, WEB_IDENTITY_TOKEN, encode_message,
};
pub use convo::{estimate_input_tokens, out_tokens};
pub use directives::Directives;
pub use extras::{
    ANTHROPIC_MODELS, EMBEDDING_DIMENSIONS, OPENAI_MODELS, embedding_dimensions, embedding_vector,
    token_embedding_vector,
};
pub use gemini::{
    DEFAULT_GEMINI_KEY, TEST_GOOGLE_PROJECT, TEST_SERVICE_ACCOUNT_EMAIL,
    google_service_account_json, google_wrong_key_json,
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
    /// Azure OpenAI deployment paths (`api-key` or an Entra ID bearer token).
    Azure,
    /// Gemini API, Vertex AI (Gemini and Claude) and the OAuth token endpoint.
    Google,
    /// Amazon Bedrock (SigV4-signed Converse) and its STS.
    Bedrock,
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
    /// Gemini `:generateContent` / `:streamGenerateContent` (Gemini API or Vertex AI).
    GenerateContent,
    /// Claude on Vertex `:rawPredict` / `:streamRawPredict`.
    RawPredict,
    /// The OAuth token endpoint (`POST /token`).
    Token,
    /// Bedrock `POST /model/{id}/converse`.
    Converse,
    /// Bedrock `POST /model/{id}/converse-stream`.
    ConverseStream,
    /// STS `AssumeRoleWithWebIdentity` (`POST /_sts/`).
    AssumeRoleWithWebIdentity,
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
            gemini_key: DEFAULT_GEMINI_KEY.to_owned(),
            google_tokens: Mutex::new(HashSet::new()),
            records: Mutex::new(Vec::new()),
            fail_once_seen: Mutex::new(HashSet::new()),
            stored_responses: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            ids: AtomicU64::new(seed()),
            forced_status: Mutex::new(None),
            azure: azure::AzureState::default(),
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

    /// Answer every model call with `status` and the provider's real error body (`None`:
    /// back to normal), whatever the request's directives say: one upstream's outage.
    pub fn fail_all(&self, status: Option<u16>) {
        *server::lock(&self.state.forced_status) = status;
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

    /// `http://127.0.0.1:PORT/_sts` — the STS endpoint for Bedrock web-identity credentials.
    #[must_use]
    pub fn sts_endpoint(&self) -> String {
        format!("http://{}/_sts", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1` — the OpenAI base URL (the SDK appends `/chat/completions`).
    #[must_use]
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// How many Entra ID token requests (`POST /{tenant}/oauth2/v2.0/token`) arrived.
    #[must_use]
    pub fn azure_token_requests(&self) -> u64 {
        self.state.azure.token_requests()
    }

    /// The test service account's JSON key file, whose `token_uri` is this fake's `/token`.
    #[must_use]
    pub fn google_credentials_json(&self) -> String {
        google_service_account_json(&format!("{}/token", self.base_url()))
    }

    /// Forget every access token the fake token endpoint minted (as if they were revoked):
    /// Vertex paths then answer 401 `UNAUTHENTICATED` until a new token is exchanged.
    pub fn forget_google_tokens(&self) {
        server::lock(&self.state.google_tokens).clear();
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
