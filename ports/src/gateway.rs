//! The driving port: what the HTTP adapter asks of the gateway core.
//!
//! A provider request is handled in two phases so that authentication (and, later, quota)
//! happens before the body is read: `admit` sees only headers; `handle` gets the body.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use metis_domain::canonical::Shape;
use metis_domain::error::GatewayError;
use metis_domain::keys::KeyRecord;
use metis_domain::spend::Budget;
use std::net::IpAddr;
use std::sync::Arc;

/// What the HTTP adapter knows before reading the body.
#[derive(Debug, Clone)]
pub struct InboundMeta {
    pub shape: Shape,
    /// The presented token (already extracted by the per-shape header rules), if any.
    pub token: Option<String>,
    /// The client address as seen on the socket.
    pub peer_ip: Option<IpAddr>,
    /// The raw `X-Forwarded-For` header, believed only when `peer_ip` is a trusted proxy.
    pub forwarded_for: Option<String>,
    /// The W3C `traceparent` header, propagated upstream.
    pub traceparent: Option<String>,
    /// Raw `x-metis-session-id`, `x-metis-parent-session-id`, `x-metis-parent-tool-use-id`
    /// and `x-metis-worker` headers (validated by the core; bad values are a 400).
    pub session_headers: [Option<String>; 4],
    /// A coding agent's own session id (`X-Claude-Code-Session-Id`, Codex's `session_id`),
    /// used as the session when `x-metis-session-id` is absent. Ignored when malformed: the
    /// header is not ours to refuse.
    pub agent_session: Option<String>,
    /// Client headers forwarded on same-shape traffic (filtered by
    /// `metis_domain::forwarding::forwards`).
    pub forward_headers: Vec<(String, String)>,
    /// The request's query string, without `?`.
    pub query: Option<String>,
    /// `x-metis-fallback: off`: try one deployment of a route only (no fallback to others).
    pub no_fallback: bool,
}

/// An authenticated request, ready for its body.
#[derive(Debug, Clone)]
pub struct Admission {
    pub shape: Shape,
    pub key: Arc<KeyRecord>,
    /// The key's spend account and caps, built when the key ring was built.
    pub budget: Budget,
    /// The key's token limits (key, user, team buckets), built with the key ring; `None` for a
    /// key without any (most keys).
    pub tpm: Option<Arc<[metis_domain::ratelimit::TpmLine]>>,
    /// When the request arrived (unix µs).
    pub received_at_us: i64,
    /// The W3C `traceparent` the client sent, if any.
    pub traceparent: Option<String>,
    /// The client-named session the request belongs to (`None` = its own synthetic session).
    pub session: Option<metis_domain::sessions::SessionLink>,
    /// Client headers forwarded on same-shape traffic.
    pub forward_headers: Vec<(String, String)>,
    /// The request's query string, forwarded on same-shape traffic.
    pub query: Option<String>,
    /// The client asked for no fallback (`x-metis-fallback: off`).
    pub no_fallback: bool,
}

/// How a token count was obtained (the `x-metis-token-count` response header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountMethod {
    /// The upstream counted (Anthropic `count_tokens`, OpenAI `input_tokens`).
    Exact,
    /// The gateway's own tokenizer for the model family (exact up to message framing).
    Tokenizer,
    /// Characters / 4: no upstream count and no tokenizer for the model.
    Estimate,
}

impl CountMethod {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CountMethod::Exact => "exact",
            CountMethod::Tokenizer => "tokenizer",
            CountMethod::Estimate => "estimate",
        }
    }
}

/// A token count answer.
#[derive(Debug, Clone)]
pub struct TokenCount {
    /// The JSON body in the inbound shape.
    pub body: Bytes,
    pub method: CountMethod,
}

/// Which models `GET /v1/models[/{id}]` asks for.
#[derive(Debug, Clone, Default)]
pub struct ModelsQuery {
    /// One model (`/v1/models/{id}`), or the list.
    pub id: Option<String>,
    /// Anthropic-shape pagination of the list.
    pub page: metis_domain::models::Page,
}

/// A successful answer.
pub enum Reply {
    /// A complete JSON body (status 200).
    Json(Bytes),
    /// SSE frames (status 200, `text/event-stream`). Errors after the first byte are
    /// rendered as error frames inside the stream. Dropping the stream cancels the upstream.
    Stream(BoxStream<'static, Bytes>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Json(b) => f.debug_tuple("Json").field(&b.len()).finish(),
            Reply::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// The gateway core as seen by the HTTP adapter.
#[async_trait]
pub trait GatewayService: Send + Sync {
    /// Authenticate a request from its headers.
    ///
    /// # Errors
    /// `InvalidApiKey` or `KeyRevoked` (each also recorded as `gateway.auth_failed`).
    async fn admit(&self, meta: InboundMeta) -> Result<Admission, GatewayError>;

    /// Handle a provider request body.
    ///
    /// # Errors
    /// Any `GatewayError`, to be rendered in `admission.shape`.
    async fn handle(&self, admission: Admission, body: Bytes) -> Result<Reply, GatewayError>;

    /// `GET /v1/models[/{id}]` for this key, in `admission.shape` (OpenAI list or model
    /// object; Anthropic paged list or model object).
    ///
    /// # Errors
    /// `NotFound` for an id the key cannot use; `InvalidRequest` for bad pagination.
    fn models(&self, admission: &Admission, query: &ModelsQuery) -> Result<Bytes, GatewayError>;

    /// Count the input tokens of a request body in `admission.shape` (Anthropic
    /// `count_tokens`, OpenAI Responses `input_tokens`). Never charged.
    ///
    /// # Errors
    /// Any `GatewayError`, to be rendered in `admission.shape`.
    async fn count_tokens(
        &self,
        admission: Admission,
        body: Bytes,
    ) -> Result<TokenCount, GatewayError>;

    /// `POST /v1/embeddings` (OpenAI shape): priced, capped and traced like a call.
    ///
    /// # Errors
    /// Any `GatewayError`, to be rendered in the OpenAI shape.
    async fn embeddings(&self, admission: Admission, body: Bytes) -> Result<Bytes, GatewayError>;

    /// `Ok` when the gateway is ready for traffic; otherwise why not.
    ///
    /// `Ok(None)` when ready; `Ok(Some(reason))` when serving degraded (a store every replica
    /// shares is unreachable: requests are still served, events wait in the queue).
    ///
    /// # Errors
    /// A short reason (draining, a store of this process not writable).
    fn readiness(&self) -> Result<Option<String>, String>;

    /// Enter drain mode: readiness turns false at once.
    fn begin_drain(&self);

    /// `/metrics`: every series in the Prometheus text format.
    fn metrics_text(&self) -> String;

    /// Record one finished HTTP request (the HTTP adapter calls this for every response).
    fn record_http(&self, route: &str, method: &str, status: u16, shape: &str, seconds: f64);
}
