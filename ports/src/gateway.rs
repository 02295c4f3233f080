//! The driving port: what the HTTP adapter asks of the gateway core.
//!
//! A provider request is handled in two phases so that authentication (and, later, quota)
//! happens before the body is read: `admit` sees only headers; `handle` gets the body.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use gw_domain::canonical::Shape;
use gw_domain::error::GatewayError;
use gw_domain::keys::KeyRecord;
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
}

/// An authenticated request, ready for its body.
#[derive(Debug, Clone)]
pub struct Admission {
    pub shape: Shape,
    pub key: Arc<KeyRecord>,
    /// When the request arrived (unix µs).
    pub received_at_us: i64,
    /// The W3C `traceparent` the client sent, if any.
    pub traceparent: Option<String>,
    /// The client-named session the request belongs to (`None` = its own synthetic session).
    pub session: Option<gw_domain::sessions::SessionLink>,
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

    /// `GET /v1/models` for this key: OpenAI list shape.
    fn list_models(&self, admission: &Admission) -> Bytes;

    /// `Ok` when the gateway is ready for traffic; otherwise why not.
    ///
    /// # Errors
    /// A short reason (draining, store not writable, keys not loaded).
    fn readiness(&self) -> Result<(), String>;

    /// Enter drain mode: readiness turns false at once.
    fn begin_drain(&self);

    /// `/metrics`: every series in the Prometheus text format.
    fn metrics_text(&self) -> String;

    /// Record one finished HTTP request (the HTTP adapter calls this for every response).
    fn record_http(&self, route: &str, method: &str, status: u16, shape: &str, seconds: f64);
}
