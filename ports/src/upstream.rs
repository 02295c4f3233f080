//! Upstream LLM providers. A provider moves bytes in its own wire format; the use case
//! renders requests and parses responses (pure functions in `metis-domain`).

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

/// The wire format of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// OpenAI Chat Completions (OpenAI, OpenRouter, vLLM, Ollama, llama.cpp, the mock).
    OpenAiChat,
    /// OpenAI Responses (`/responses`), served natively by OpenAI and some compatible servers.
    OpenAiResponses,
    /// Anthropic Messages.
    AnthropicMessages,
    /// Google Gemini `generateContent` / `streamGenerateContent` (Gemini API, Vertex AI).
    /// No client speaks it: traffic to it is always translated.
    GeminiGenerateContent,
    /// Amazon Bedrock Converse / ConverseStream (model id in the URL, SigV4-signed; the
    /// adapter re-frames the binary event stream as SSE).
    BedrockConverse,
}

/// What a call asks of the provider. Together with the [`WireFormat`] it picks the endpoint:
///
/// | wire | `Generate` | `CountTokens` | `Embeddings` |
/// |---|---|---|---|
/// | `AnthropicMessages` | `/v1/messages` | `/v1/messages/count_tokens` | — |
/// | `OpenAiChat` | `/chat/completions` | — | `/embeddings` |
/// | `OpenAiResponses` | `/responses` | `/responses/input_tokens` | — |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A model call (sync or streamed).
    Generate,
    /// Count the input tokens of a request without generating (never billed).
    CountTokens,
    /// Embed the input.
    Embeddings,
}

/// One upstream call.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// The wire format `body` is written in; the provider MUST support it for `op`.
    pub wire: WireFormat,
    pub op: Operation,
    /// The request body, JSON in `wire`.
    pub body: Bytes,
    /// Whether `body` asks for an SSE stream.
    pub stream: bool,
    /// Request id for logs (never sent upstream as a secret).
    pub request_id: String,
    /// W3C `traceparent` to send upstream (the gateway's call span when tracing is on,
    /// otherwise the client's own header).
    pub traceparent: Option<String>,
    /// Client headers to forward (same-shape traffic only; already filtered: no credentials,
    /// no hop-by-hop headers). They override the provider's defaults of the same name, e.g. a
    /// client's `anthropic-version`.
    pub headers: Vec<(String, String)>,
    /// The client's query string (without `?`), forwarded on same-shape traffic
    /// (`/v1/messages?beta=true`).
    pub query: Option<String>,
    /// The upstream model id (also inside `body` for wires that carry it there). Providers
    /// that put the model in the URL (Azure deployments, Bedrock, Gemini, Vertex) take it from
    /// here.
    pub model: String,
    /// Retries the provider may make before answering (`None`: its own policy). The router
    /// sets `Some(0)` when another deployment is left to fall back to, so a 429 storm moves
    /// to the next deployment at once instead of backing off on the failing one.
    pub max_retries: Option<u32>,
    /// When the whole request must have its answer head by: the provider neither waits past
    /// it nor starts a retry that cannot finish before it (`None`: its own timeouts only).
    pub deadline: Option<std::time::Instant>,
}

impl UpstreamRequest {
    /// A generate call in `wire` with no forwarded headers.
    #[must_use]
    pub fn generate(wire: WireFormat, body: Bytes, stream: bool, request_id: String) -> Self {
        UpstreamRequest {
            wire,
            op: Operation::Generate,
            body,
            stream,
            request_id,
            traceparent: None,
            headers: Vec::new(),
            query: None,
            model: String::new(),
            max_retries: None,
            deadline: None,
        }
    }
}

/// A successful (2xx) upstream answer.
pub struct UpstreamReply {
    pub body: UpstreamBody,
    /// How many retries happened before this answer.
    pub retries: u32,
}

impl std::fmt::Debug for UpstreamReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamReply")
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// The body of a successful answer.
pub enum UpstreamBody {
    /// A complete JSON body.
    Full(Bytes),
    /// Raw SSE bytes as they arrive. Dropping the stream MUST cancel the upstream call
    /// (close the connection) promptly.
    Stream(BoxStream<'static, Result<Bytes, UpstreamError>>),
}

/// An upstream failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The provider answered with a non-2xx status (after retries, if retryable).
    #[error("{provider} returned HTTP {status}")]
    Status {
        provider: String,
        status: u16,
        body: Bytes,
        retry_after_secs: Option<u64>,
        retries: u32,
    },
    /// Connecting, sending or reading failed, or a timeout fired.
    #[error("{provider} unreachable: {message}")]
    Network {
        provider: String,
        message: String,
        retries: u32,
    },
}

impl UpstreamError {
    /// Retries that happened before this failure.
    #[must_use]
    pub fn retries(&self) -> u32 {
        match self {
            UpstreamError::Status { retries, .. } | UpstreamError::Network { retries, .. } => {
                *retries
            }
        }
    }
}

/// An LLM provider.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Provider name as used in canonical ids (`anthropic`, `openai`, `openrouter`, `mock`).
    fn name(&self) -> &str;

    /// The wire format of its model calls: what cross-shape traffic is translated into.
    fn wire(&self) -> WireFormat;

    /// Whether the provider serves `op` in `wire` (e.g. an OpenAI upstream with the Responses
    /// API serves `(OpenAiResponses, Generate)` natively). `(self.wire(), Generate)` is always
    /// served.
    fn supports(&self, wire: WireFormat, op: Operation) -> bool {
        wire == self.wire() && op == Operation::Generate
    }

    /// Send one call. MUST return only after the response head (status) arrived, so the
    /// caller can still turn a failure into a proper error response. Retries of 429, 5xx and
    /// network failures (backoff with jitter, honouring `Retry-After`) happen here, and only
    /// before any byte is returned. Credentials are added here and MUST never be logged.
    ///
    /// # Errors
    /// `Status` for non-2xx answers, `Network` for transport failures and timeouts.
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamReply, UpstreamError>;
}
