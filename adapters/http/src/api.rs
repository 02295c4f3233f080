//! Routes: provider endpoints, models, health and readiness, the OpenAPI document, and the
//! catch-all that turns every framework error into a JSON envelope.

use crate::admin::{AdminApi, AdminToken};
use crate::reply::{AllowTable, ErrorCode, ModelsReply, RawReply, error_response, json_response};
use async_trait_free::NoService;
use bytes::Bytes;
use futures_util::StreamExt;
use gw_domain::canonical::Shape;
use gw_domain::error::GatewayError;
use gw_domain::forwarding;
use gw_domain::models::Page;
use gw_ports::admin::{AdminFailure, AdminService};
use gw_ports::gateway::{Admission, GatewayService, InboundMeta, ModelsQuery, Reply};
use poem::error::{MethodNotAllowedError, NotFoundError, ReadBodyError};
use poem::http::{StatusCode, header};
use poem::{Body, Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{Object, OpenApi, OpenApiService};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A way for the provider handlers to learn that the client went away before the answer
/// was ready (the composition root inserts it into request extensions; without it, a
/// disconnected client is noticed only when the response is written).
#[derive(Clone)]
pub struct ClientGone(Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>);

impl ClientGone {
    pub fn new(
        f: impl Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        ClientGone(Arc::new(f))
    }

    fn wait(&self) -> futures_util::future::BoxFuture<'static, ()> {
        (self.0)()
    }
}

/// HTTP-level settings.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Request bodies above this many bytes get 413.
    pub max_body_bytes: usize,
    /// Server URL written into the OpenAPI document.
    pub public_url: String,
    /// An SSE comment is sent when a stream has been silent this long, so idle-timeout
    /// proxies between the client and the gateway keep the connection open.
    pub sse_keepalive: Duration,
    /// Reading a request body may take at most this long (slow senders get 408).
    pub body_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_body_bytes: 10 * 1024 * 1024,
            public_url: "http://127.0.0.1:8422".to_owned(),
            sse_keepalive: Duration::from_secs(15),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// Version of the HTTP API described by the OpenAPI document (not the crate version, so a
/// release bump is not document drift).
pub const API_VERSION: &str = "1.0";

struct Api {
    svc: Arc<dyn GatewayService>,
    opts: HttpOptions,
    started: Instant,
}

/// `GET /healthz` body.
#[derive(Object)]
struct Health {
    /// Always `ok` while the process serves.
    status: String,
    /// Seconds since the HTTP server was built.
    uptime_seconds: f64,
}

/// `GET /readyz` body.
#[derive(Object)]
struct Readiness {
    /// `ready` or `not_ready`.
    status: String,
    /// Why the gateway is not ready (absent when ready).
    #[oai(skip_serializing_if_is_none)]
    reason: Option<String>,
}

#[derive(poem_openapi::ApiResponse)]
enum UpgradeAnswer {
    /// The WebSocket transport is not served: use HTTP `POST /v1/responses` (OpenAI error
    /// envelope, code `websocket_not_supported`).
    #[oai(status = 426)]
    UpgradeRequired(Json<serde_json::Value>),
}

#[derive(poem_openapi::ApiResponse)]
enum ReadyResponse {
    /// Stores writable, keys loaded, not draining.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Draining or a store is unavailable.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

/// Extract `Authorization: Bearer <token>` (scheme case-insensitive, token trimmed).
fn bearer(req: &Request) -> Option<String> {
    let raw = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = raw.trim().split_once(char::is_whitespace)?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// Extract `x-api-key`, trimmed and non-empty.
fn x_api_key(req: &Request) -> Option<String> {
    let raw = req.headers().get("x-api-key")?.to_str().ok()?.trim();
    (!raw.is_empty()).then(|| raw.to_owned())
}

/// The token presented for `shape`: OpenAI reads Bearer only; Anthropic reads `x-api-key`
/// first, then Bearer.
fn presented_token(req: &Request, shape: Shape) -> Option<String> {
    match shape {
        Shape::OpenAi | Shape::Responses => bearer(req),
        Shape::Anthropic => x_api_key(req).or_else(|| bearer(req)),
    }
}

/// Whether `v` looks like a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); anything
/// else is not propagated.
fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    matches!(parts.as_slice(), [ver, trace, span, flags]
        if hex(ver, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2))
}

fn meta(req: &Request, shape: Shape) -> InboundMeta {
    InboundMeta {
        shape,
        token: presented_token(req, shape),
        peer_ip: req
            .remote_addr()
            .as_socket_addr()
            .map(std::net::SocketAddr::ip),
        forwarded_for: req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        session_headers: [
            "x-metis-session-id",
            "x-metis-parent-session-id",
            "x-metis-parent-tool-use-id",
            "x-metis-worker",
        ]
        .map(|h| {
            req.headers()
                .get(h)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        }),
        traceparent: req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_traceparent(v))
            .map(str::to_owned),
        agent_session: AGENT_SESSION_HEADERS.iter().find_map(|h| {
            req.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }),
        forward_headers: req
            .headers()
            .iter()
            .filter(|(name, _)| forwarding::forwards(shape, name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
        query: req.uri().query().map(str::to_owned),
    }
}

/// Coding agents' own session headers, read (in this order) when `x-metis-session-id` is
/// absent: Claude Code sends `X-Claude-Code-Session-Id` on every request, the Codex CLI
/// `session-id` (also as `thread-id`; `session_id` in releases before 0.171).
const AGENT_SESSION_HEADERS: [&str; 3] = ["x-claude-code-session-id", "session-id", "session_id"];

/// The shape a `GET /v1/models` caller speaks: Anthropic when it authenticates with
/// `x-api-key` or names an `anthropic-version`, as the Anthropic SDKs do.
fn models_shape(req: &Request) -> Shape {
    if req.headers().contains_key("x-api-key") || req.headers().contains_key("anthropic-version") {
        Shape::Anthropic
    } else {
        Shape::OpenAi
    }
}

impl Api {
    /// Authenticate (before the body is read), then read the body within the size and time
    /// limits and the in-flight memory budget. An `Err` is the finished error response.
    async fn admit_and_read(
        &self,
        shape: Shape,
        req: &Request,
        body: Body,
    ) -> Result<(Admission, Bytes), Response> {
        let admission = self
            .svc
            .admit(meta(req, shape))
            .await
            .map_err(|e| error_response(&e, shape))?;
        let limit = self.opts.max_body_bytes;
        let too_large = GatewayError::PayloadTooLarge {
            limit_bytes: limit as u64,
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(error_response(&too_large, shape));
        }
        let read = tokio::time::timeout(self.opts.body_timeout, body.into_bytes_limit(limit)).await;
        match read {
            Err(_) => {
                let err = GatewayError::RequestTimeout {
                    seconds: self.opts.body_timeout.as_secs(),
                };
                Err(error_response(&err, shape))
            }
            Ok(Ok(b)) => {
                // The parse estimate of this body must fit the in-flight request budget.
                crate::inflight::charge_parsed(req, &b).map_err(|refused| *refused)?;
                Ok((admission, b))
            }
            Ok(Err(ReadBodyError::PayloadTooLarge)) => Err(error_response(&too_large, shape)),
            Ok(Err(e)) => {
                let err = gw_domain::error::invalid(format!("could not read request body: {e}"));
                Err(error_response(&err, shape))
            }
        }
    }

    async fn provider(&self, shape: Shape, req: &Request, body: Body) -> RawReply {
        let (admission, bytes) = match self.admit_and_read(shape, req, body).await {
            Ok(x) => x,
            Err(resp) => return RawReply(resp),
        };
        let handled = match req.extensions().get::<ClientGone>() {
            Some(gone) => {
                let gone = gone.wait();
                tokio::select! {
                    r = self.svc.handle(admission, bytes) => r,
                    () = gone => {
                        // Dropping the handler future cancels the upstream call and records
                        // it as cancelled; nobody is left to read this answer.
                        return RawReply(
                            Response::builder()
                                .status(StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST))
                                .finish(),
                        );
                    }
                }
            }
            None => self.svc.handle(admission, bytes).await,
        };
        match handled {
            Ok(Reply::Json(b)) => RawReply(json_response(StatusCode::OK, b)),
            Ok(Reply::Stream(s)) => {
                RawReply(sse_response(with_keepalive(s, self.opts.sse_keepalive)))
            }
            Err(e) => RawReply(error_response(&e, shape)),
        }
    }
}

impl Api {
    async fn count(&self, shape: Shape, req: &Request, body: Body) -> RawReply {
        let (admission, bytes) = match self.admit_and_read(shape, req, body).await {
            Ok(x) => x,
            Err(resp) => return RawReply(resp),
        };
        match self.svc.count_tokens(admission, bytes).await {
            Ok(count) => {
                let mut resp = json_response(StatusCode::OK, count.body);
                resp.headers_mut().insert(
                    "x-metis-token-count",
                    poem::http::HeaderValue::from_static(count.method.as_str()),
                );
                RawReply(resp)
            }
            Err(e) => RawReply(error_response(&e, shape)),
        }
    }

    async fn model_reply(&self, req: &Request, query: &ModelsQuery) -> ModelsReply {
        let shape = models_shape(req);
        let answer = match self.svc.admit(meta(req, shape)).await {
            Ok(adm) => self.svc.models(&adm, query),
            Err(e) => Err(e),
        };
        match answer {
            Ok(body) => ModelsReply(json_response(StatusCode::OK, body)),
            Err(e) => ModelsReply(error_response(&e, shape)),
        }
    }
}

/// Interleave `: keep-alive` comments into a stream whenever it is silent for `every`.
/// (Only the wait is cancelled on timeout: the stream keeps its own in-progress state.)
fn with_keepalive(
    stream: futures_util::stream::BoxStream<'static, Bytes>,
    every: Duration,
) -> futures_util::stream::BoxStream<'static, Bytes> {
    futures_util::stream::unfold(stream, move |mut s| async move {
        match tokio::time::timeout(every, s.next()).await {
            Ok(Some(b)) => Some((b, s)),
            Ok(None) => None,
            Err(_) => Some((Bytes::from_static(b": keep-alive\n\n"), s)),
        }
    })
    .boxed()
}

fn sse_response(stream: futures_util::stream::BoxStream<'static, Bytes>) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .content_type("text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_bytes_stream(
            stream.map(Ok::<Bytes, std::io::Error>),
        ))
}

#[OpenApi]
impl Api {
    /// Create a chat completion (OpenAI Chat Completions shape).
    ///
    /// Authenticate with `Authorization: Bearer <gateway key>`. The body is an OpenAI Chat
    /// Completions request; with `stream: true` the answer is an SSE stream of
    /// `chat.completion.chunk` frames ending in `data: [DONE]`.
    #[oai(
        path = "/v1/chat/completions",
        method = "post",
        operation_id = "createChatCompletion"
    )]
    async fn chat_completions(&self, req: &Request, body: Body) -> RawReply {
        self.provider(Shape::OpenAi, req, body).await
    }

    /// Create a message (Anthropic Messages shape).
    ///
    /// Authenticate with `x-api-key: <gateway key>` (or `Authorization: Bearer`). The body is
    /// an Anthropic Messages request; with `stream: true` the answer is an SSE stream of native
    /// `event:` frames.
    #[oai(path = "/v1/messages", method = "post", operation_id = "createMessage")]
    async fn messages(&self, req: &Request, body: Body) -> RawReply {
        self.provider(Shape::Anthropic, req, body).await
    }

    /// Create a model response (OpenAI Responses shape).
    ///
    /// Authenticate with `Authorization: Bearer <gateway key>`. Forwarded natively to an
    /// upstream that serves the Responses API; translated through the gateway's canonical
    /// form to Chat Completions or Anthropic upstreams (stateless: `previous_response_id` is
    /// refused there with a 400 asking for the full input). With `stream: true` the answer
    /// is the Responses SSE event sequence (`response.created` … `response.completed`).
    #[oai(
        path = "/v1/responses",
        method = "post",
        operation_id = "createResponse"
    )]
    async fn responses(&self, req: &Request, body: Body) -> RawReply {
        self.provider(Shape::Responses, req, body).await
    }

    /// The Responses API over a WebSocket (Codex's transport with `supports_websockets =
    /// true`): with `Upgrade: websocket` and a gateway key (`Authorization: Bearer`), the
    /// connection switches protocols (101); each `{"type":"response.create",…}` text frame is
    /// served like a streamed `POST /v1/responses`, one event per frame, with Codex's
    /// warm-up (`generate: false`) and incremental input (`previous_response_id` of the
    /// socket's last response). Without the upgrade header the answer is 426.
    #[oai(
        path = "/v1/responses",
        method = "get",
        operation_id = "responsesWebSocket"
    )]
    async fn responses_websocket(&self) -> UpgradeAnswer {
        UpgradeAnswer::UpgradeRequired(Json(json!({"error": {
            "message": "the WebSocket transport of the Responses API is not served by this gateway; use HTTP POST /v1/responses",
            "type": "invalid_request_error",
            "code": "websocket_not_supported",
        }})))
    }

    /// Count the input tokens of a Responses request (OpenAI `input_tokens` shape).
    ///
    /// Exact when the upstream counts (OpenAI's own endpoint, or Anthropic's `count_tokens`
    /// for Claude models), else the gateway's tokenizer (OpenAI model families) or an
    /// estimate; the `x-metis-token-count` header says which. Never charged.
    #[oai(
        path = "/v1/responses/input_tokens",
        method = "post",
        operation_id = "countResponseInputTokens"
    )]
    async fn input_tokens(&self, req: &Request, body: Body) -> RawReply {
        self.count(Shape::Responses, req, body).await
    }

    /// Count the input tokens of a Messages request (Anthropic `count_tokens` shape).
    ///
    /// Exact when the model's upstream can count (forwarded to Anthropic's own endpoint),
    /// otherwise the gateway's tokenizer or a characters/4 estimate; the
    /// `x-metis-token-count` response header says which (`exact`, `tokenizer`, `estimate`).
    /// Never charged.
    #[oai(
        path = "/v1/messages/count_tokens",
        method = "post",
        operation_id = "countMessageTokens"
    )]
    async fn count_tokens(&self, req: &Request, body: Body) -> RawReply {
        self.count(Shape::Anthropic, req, body).await
    }

    /// Create embeddings (OpenAI shape), for models served by an OpenAI-compatible upstream.
    ///
    /// Priced on the upstream's `usage.prompt_tokens`, capped and traced like a model call.
    #[oai(
        path = "/v1/embeddings",
        method = "post",
        operation_id = "createEmbeddings"
    )]
    async fn embeddings(&self, req: &Request, body: Body) -> RawReply {
        let (admission, bytes) = match self.admit_and_read(Shape::OpenAi, req, body).await {
            Ok(x) => x,
            Err(resp) => return RawReply(resp),
        };
        match self.svc.embeddings(admission, bytes).await {
            Ok(b) => RawReply(json_response(StatusCode::OK, b)),
            Err(e) => RawReply(error_response(&e, Shape::OpenAi)),
        }
    }

    /// List the models the calling key may use, in the caller's shape: the Anthropic list
    /// (`type`, `display_name`, `created_at`, paged with `limit`/`after_id`/`before_id`,
    /// `has_more`, `first_id`, `last_id`) when called with `x-api-key` or
    /// `anthropic-version`, else the OpenAI list (`object: "list"`).
    #[oai(path = "/v1/models", method = "get", operation_id = "listModels")]
    async fn models(
        &self,
        req: &Request,
        limit: Query<Option<usize>>,
        after_id: Query<Option<String>>,
        before_id: Query<Option<String>>,
    ) -> ModelsReply {
        let query = ModelsQuery {
            id: None,
            page: Page {
                limit: limit.0,
                after_id: after_id.0,
                before_id: before_id.0,
            },
        };
        self.model_reply(req, &query).await
    }

    /// One model the calling key may use, in the caller's shape (as `listModels`). Ids that
    /// contain `/` are sent percent-encoded (`%2F`).
    #[oai(
        path = "/v1/models/:model_id",
        method = "get",
        operation_id = "getModel"
    )]
    async fn model(&self, req: &Request, model_id: Path<String>) -> ModelsReply {
        let query = ModelsQuery {
            id: Some(model_id.0),
            page: Page::default(),
        };
        self.model_reply(req, &query).await
    }

    /// Prometheus metrics (text exposition format). No secrets or tokens appear in labels.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self) -> PlainText<String> {
        PlainText(self.svc.metrics_text())
    }

    /// Liveness: 200 while the process serves.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> Json<Health> {
        Json(Health {
            status: "ok".to_owned(),
            uptime_seconds: (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        })
    }

    /// Readiness: 200 only when stores are writable, keys are loaded and the gateway is not
    /// draining; 503 otherwise.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self) -> ReadyResponse {
        match self.svc.readiness() {
            Ok(()) => ReadyResponse::Ready(Json(Readiness {
                status: "ready".to_owned(),
                reason: None,
            })),
            Err(reason) => ReadyResponse::NotReady(Json(Readiness {
                status: "not_ready".to_owned(),
                reason: Some(reason),
            })),
        }
    }
}

fn service(
    svc: Arc<dyn GatewayService>,
    admin: Arc<dyn AdminService>,
    opts: HttpOptions,
) -> OpenApiService<(Api, AdminApi), ()> {
    let url = opts.public_url.clone();
    OpenApiService::new(
        (
            Api {
                svc,
                opts,
                started: Instant::now(),
            },
            AdminApi { svc: admin },
        ),
        "Metis gateway",
        API_VERSION,
    )
    .description(
        "OpenAI- and Anthropic-compatible LLM gateway: provider endpoints authenticated with \
         gateway keys, health and readiness probes, and the admin API for key lifecycle, usage \
         and audit export.",
    )
    .server(url)
}

/// Map framework errors (unknown path, wrong method, extractor failures) to JSON envelopes in
/// the shape the path implies. Responses the handlers built themselves pass through. A 405
/// carries `Allow` with the methods the document lists for the path.
fn json_errors(err: &poem::Error, method: String, path: String, allow: &AllowTable) -> Response {
    if path.starts_with("/admin/") && err.status() == StatusCode::UNAUTHORIZED {
        let body = json!({"error": {
            "message": "invalid or missing admin token (Authorization: Bearer <admin token>)",
            "type": "authentication_error",
            "code": "invalid_admin_token",
        }});
        return json_response(StatusCode::UNAUTHORIZED, body.to_string());
    }
    let shape = if path.starts_with("/v1/messages") {
        Shape::Anthropic
    } else {
        Shape::OpenAi
    };
    let gw = if err.is::<NotFoundError>() {
        GatewayError::NotFound { path }
    } else if err.is::<MethodNotAllowedError>() {
        let mut resp = error_response(
            &GatewayError::MethodNotAllowed {
                method,
                path: path.clone(),
            },
            shape,
        );
        if let Some(v) = allow
            .allowed(&path)
            .and_then(|m| poem::http::HeaderValue::from_str(m).ok())
        {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    } else if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        GatewayError::PayloadTooLarge { limit_bytes: 0 }
    } else if err.status().is_client_error() {
        gw_domain::error::invalid(err.to_string())
    } else {
        tracing::error!(error = %err, %path, "unhandled HTTP error");
        GatewayError::Internal
    };
    error_response(&gw, shape)
}

/// The complete HTTP application. The admin API is served only when `admin` is given (its
/// service and bearer token); otherwise every `/admin/…` path answers 404.
pub fn routes(
    svc: Arc<dyn GatewayService>,
    admin: Option<(Arc<dyn AdminService>, String)>,
    opts: HttpOptions,
) -> impl Endpoint {
    let (admin_svc, token): (Arc<dyn AdminService>, Option<AdminToken>) = match admin {
        Some((a, t)) => (a, Some(AdminToken(Arc::new(t)))),
        None => (Arc::new(NoService), None),
    };
    let recorder = Arc::clone(&svc);
    let unmatched = Arc::new(UnmatchedRoutes::default());
    let api = service(svc, admin_svc, opts);
    let docs = api.swagger_ui();
    let document = openapi_json();
    let allow = Arc::new(AllowTable::from_openapi(&document));
    let spec = poem::endpoint::make_sync(move |_| {
        Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(document.clone())
    });
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .around(move |ep, mut req| {
            let token = token.clone();
            let recorder = Arc::clone(&recorder);
            let unmatched = Arc::clone(&unmatched);
            let allow = Arc::clone(&allow);
            async move {
                let started = Instant::now();
                let path = req.uri().path().to_owned();
                let method = req.method().to_string();
                let request_id = request_id(&req);
                let (route, shape) = match route_template(&path) {
                    ("other", shape) => (unmatched.label(&path), shape),
                    known => known,
                };
                let admin_path = path.starts_with("/admin/") || path == "/admin";
                let websocket = path == "/v1/responses"
                    && req.method() == poem::http::Method::GET
                    && crate::socket::is_upgrade(&req);
                let resp = match (&token, admin_path) {
                    _ if websocket => {
                        let meta = meta(&req, Shape::Responses);
                        crate::socket::upgrade(Arc::clone(&recorder), meta, &req).await
                    }
                    (None, true) => error_response(&GatewayError::NotFound { path }, Shape::OpenAi),
                    (token, _) => {
                        if let (Some(t), true) = (token, admin_path) {
                            req.extensions_mut().insert(t.clone());
                        }
                        match ep.call(req).await {
                            Ok(resp) => resp.into_response(),
                            Err(err) if err.is_from_response() => err.into_response(),
                            Err(err) => json_errors(&err, method.clone(), path, &allow),
                        }
                    }
                };
                let status = resp.status().as_u16();
                recorder.record_http(
                    route,
                    &method,
                    status,
                    shape,
                    started.elapsed().as_secs_f64(),
                );
                if status >= 400 {
                    // One line per refused or failed request, so an operator sees a client
                    // hitting a missing route or a bad key. Never the body or a credential.
                    let code = resp.extensions().get::<ErrorCode>().map_or("-", |c| c.0);
                    tracing::info!(
                        request_id = %request_id,
                        %method,
                        route,
                        status,
                        code,
                        "request answered with an error"
                    );
                }
                let mut resp = resp;
                if let Ok(v) = poem::http::HeaderValue::from_str(&request_id) {
                    resp.headers_mut().insert("x-request-id", v);
                }
                Ok(resp)
            }
        })
}

/// The client's `x-request-id` when it is a plausible id (1–64 visible ASCII characters),
/// else a fresh ULID. Echoed on the response and logged with every error.
fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| ulid::Ulid::generate().to_string(), str::to_owned)
}

/// How many distinct unmatched-path labels `/metrics` keeps before folding the rest into
/// `unmatched:other`.
const UNMATCHED_LABELS: usize = 32;

/// Bounded metric labels for paths no route serves, so an operator can see *which* missing
/// route clients call (`unmatched:/v1/completions`) without a client being able to grow the
/// label set: at most three segments, id-like segments (see [`is_plain_segment`]) replaced
/// by `{id}`, and at most [`UNMATCHED_LABELS`] distinct labels.
#[derive(Default)]
struct UnmatchedRoutes {
    seen: Mutex<Vec<&'static str>>,
}

/// Whether a path segment is kept as is in an unmatched-route label: a lower-case word
/// (`completions`, `batch_jobs`) or an API version tag (`v1`, `v1beta`: every provider path
/// starts with one, and the label must name the route a client missed). Anything else (ids,
/// numbers, mixed case, more than 24 characters) becomes `{id}`.
fn is_plain_segment(seg: &str) -> bool {
    let word = seg
        .bytes()
        .all(|b| b.is_ascii_lowercase() || matches!(b, b'_' | b'-' | b'.'));
    let version = seg.strip_prefix('v').is_some_and(|rest| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        (1..=2).contains(&digits) && rest[digits..].bytes().all(|b| b.is_ascii_lowercase())
    });
    seg.len() <= 24 && (word || version)
}

impl UnmatchedRoutes {
    fn label(&self, path: &str) -> &'static str {
        let mut shape = String::from("unmatched:");
        for seg in path.split('/').filter(|s| !s.is_empty()).take(3) {
            shape.push('/');
            shape.push_str(if is_plain_segment(seg) { seg } else { "{id}" });
        }
        if shape.len() == "unmatched:".len() {
            shape.push('/');
        }
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(l) = seen.iter().find(|l| **l == shape) {
            return l;
        }
        if seen.len() >= UNMATCHED_LABELS {
            return "unmatched:other";
        }
        // Leaked once per distinct label, at most UNMATCHED_LABELS times per process.
        let label: &'static str = Box::leak(shape.into_boxed_str());
        seen.push(label);
        label
    }
}

/// The route template and inbound shape of a path, for metric labels (bounded cardinality:
/// ids never become labels; unknown paths are labelled by [`UnmatchedRoutes`]).
fn route_template(path: &str) -> (&'static str, &'static str) {
    match path {
        "/v1/chat/completions" => ("/v1/chat/completions", "openai"),
        "/v1/messages" => ("/v1/messages", "anthropic"),
        "/v1/messages/count_tokens" => ("/v1/messages/count_tokens", "anthropic"),
        "/v1/responses" => ("/v1/responses", "responses"),
        "/v1/responses/input_tokens" => ("/v1/responses/input_tokens", "responses"),
        "/v1/embeddings" => ("/v1/embeddings", "openai"),
        "/v1/models" => ("/v1/models", "openai"),
        p if p.starts_with("/v1/models/") => ("/v1/models/{model_id}", "openai"),
        "/healthz" => ("/healthz", "none"),
        "/readyz" => ("/readyz", "none"),
        "/metrics" => ("/metrics", "none"),
        "/openapi.json" => ("/openapi.json", "none"),
        "/admin/v1/keys" => ("/admin/v1/keys", "admin"),
        "/admin/v1/usage" => ("/admin/v1/usage", "admin"),
        "/admin/v1/audit" => ("/admin/v1/audit", "admin"),
        p if p.starts_with("/admin/v1/keys/") && p.ends_with("/revoke") => {
            ("/admin/v1/keys/{key_id}/revoke", "admin")
        }
        p if p.starts_with("/admin/v1/keys/") && p.ends_with("/rotate") => {
            ("/admin/v1/keys/{key_id}/rotate", "admin")
        }
        p if p.starts_with("/admin/v1/keys/") => ("/admin/v1/keys/{key_id}", "admin"),
        p if p.starts_with("/docs") => ("/docs", "none"),
        _ => ("other", "none"),
    }
}

/// The OpenAPI document (JSON) of the HTTP surface, admin API included.
#[must_use]
pub fn openapi_json() -> String {
    let spec = service(
        Arc::new(NoService),
        Arc::new(NoService),
        HttpOptions::default(),
    )
    .spec();
    complete_document(&spec)
}

/// Add what poem-openapi cannot derive for raw provider endpoints: the gateway-key security
/// schemes, the request body shape, and the per-shape error envelopes.
fn complete_document(spec: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(spec) else {
        return spec.to_owned();
    };
    let schemes = &mut doc["components"]["securitySchemes"];
    schemes["GatewayBearer"] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": "Gateway key: `Authorization: Bearer gw_…`."
    });
    schemes["GatewayApiKey"] = json!({
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "Gateway key in `x-api-key` (Anthropic shape)."
    });
    let schemas = &mut doc["components"]["schemas"];
    schemas["OpenAiError"] = json!({
        "type": "object",
        "description": "OpenAI-shape error envelope.",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "code": {"type": "string", "nullable": true}
        }}}
    });
    schemas["AnthropicError"] = json!({
        "type": "object",
        "description": "Anthropic-shape error envelope.",
        "required": ["type", "error"],
        "properties": {
            "type": {"type": "string", "enum": ["error"]},
            "error": {"type": "object", "required": ["type", "message"], "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"}
            }}
        }
    });
    let body = |required: &[&str], extra: &[&str], doc: &str| {
        let mut properties = serde_json::Map::new();
        properties.insert(
            "model".to_owned(),
            json!({"type": "string", "minLength": 1, "description": "Alias, canonical id (`provider:name`) or model name."}),
        );
        for field in required.iter().chain(extra).filter(|f| **f != "model") {
            let schema = match *field {
                "messages" => json!({"type": "array", "minItems": 1, "items": {"type": "object"}}),
                "stream" => json!({"type": "boolean"}),
                "max_tokens" => json!({"type": "integer", "minimum": 1}),
                "input" => {
                    json!({"description": "A string, or an array (items, strings or token arrays)."})
                }
                _ => json!({}),
            };
            properties.insert((*field).to_owned(), schema);
        }
        json!({
            "required": true,
            "description": doc,
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": required,
                "properties": properties,
                "additionalProperties": true
            }}}
        })
    };
    let bearer = json!([{"GatewayBearer": []}]);
    let either = json!([{"GatewayApiKey": []}, {"GatewayBearer": []}]);
    let none = serde_json::Value::Null;
    let ops: [(&str, &str, serde_json::Value, serde_json::Value, &str); 9] = [
        (
            "/v1/chat/completions",
            "post",
            bearer.clone(),
            body(
                &["model", "messages"],
                &["stream"],
                "An OpenAI Chat Completions request; unknown fields are forwarded to OpenAI-compatible upstreams.",
            ),
            "OpenAiError",
        ),
        (
            "/v1/messages",
            "post",
            either.clone(),
            body(
                &["model", "messages", "max_tokens"],
                &["stream"],
                "An Anthropic Messages request; unknown fields are forwarded to Anthropic upstreams.",
            ),
            "AnthropicError",
        ),
        (
            "/v1/messages/count_tokens",
            "post",
            either.clone(),
            body(
                &["model", "messages"],
                &[],
                "An Anthropic Messages request without `max_tokens`.",
            ),
            "AnthropicError",
        ),
        (
            "/v1/responses",
            "post",
            bearer.clone(),
            body(
                &["model", "input"],
                &["stream"],
                "An OpenAI Responses request; unknown fields are forwarded to upstreams that serve the Responses API.",
            ),
            "OpenAiError",
        ),
        (
            "/v1/responses/input_tokens",
            "post",
            bearer.clone(),
            body(&["model", "input"], &[], "An OpenAI Responses request."),
            "OpenAiError",
        ),
        (
            "/v1/embeddings",
            "post",
            bearer.clone(),
            body(
                &["model", "input"],
                &[],
                "An OpenAI embeddings request; unknown fields (`dimensions`, `encoding_format`, …) are forwarded.",
            ),
            "OpenAiError",
        ),
        (
            "/v1/models",
            "get",
            json!([{"GatewayBearer": []}, {"GatewayApiKey": []}]),
            none.clone(),
            "OpenAiError",
        ),
        (
            "/v1/models/{model_id}",
            "get",
            json!([{"GatewayBearer": []}, {"GatewayApiKey": []}]),
            none.clone(),
            "OpenAiError",
        ),
        ("/v1/responses", "get", json!([]), none, "OpenAiError"),
    ];
    for (path, method, security, request_body, error) in ops {
        let op = &mut doc["paths"][path][method];
        if !op.is_object() {
            continue;
        }
        op["security"] = security;
        if !request_body.is_null() {
            op["requestBody"] = request_body;
        }
        if let Some(responses) = op["responses"].as_object_mut() {
            for (status, r) in responses.iter_mut() {
                if status.starts_with('2') {
                    continue;
                }
                if let Some(media) = r.pointer_mut("/content/application~1json") {
                    media["schema"] = json!({"$ref": format!("#/components/schemas/{error}")});
                }
            }
        }
    }
    // The audit export's `type` filter takes audit event types only (anything else is a 400).
    if let Some(params) = doc
        .pointer_mut("/paths/~1admin~1v1~1audit/get/parameters")
        .and_then(serde_json::Value::as_array_mut)
    {
        for p in params.iter_mut().filter(|p| p["name"] == "type") {
            p["schema"]["items"]["enum"] = json!(gw_domain::audit::AUDIT_TYPES);
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| spec.to_owned())
}

/// `/v1/models` body helper used by tests of this crate.
#[must_use]
pub fn empty_model_list() -> Bytes {
    Bytes::from(json!({"object": "list", "data": []}).to_string())
}

mod async_trait_free {
    //! A service that is never served: the OpenAPI document needs API instances, and the
    //! document must not depend on a database. It also stands behind the admin routes when
    //! the admin API is disabled (they answer 404 before reaching it). Every call fails.
    use super::*;
    use gw_ports::admin::{CreatedKey, KeySummary, NewKey, RevokeResult, RotateResult};
    use gw_ports::gateway::TokenCount;
    use gw_ports::trace::{EventRow, UsageGroup, UsageRow};

    pub struct NoService;

    #[async_trait::async_trait]
    impl GatewayService for NoService {
        async fn admit(&self, _meta: InboundMeta) -> Result<Admission, GatewayError> {
            Err(GatewayError::Unavailable {
                message: "document-only service".to_owned(),
            })
        }
        async fn handle(&self, _a: Admission, _b: Bytes) -> Result<Reply, GatewayError> {
            Err(GatewayError::Unavailable {
                message: "document-only service".to_owned(),
            })
        }
        fn models(&self, _a: &Admission, _q: &ModelsQuery) -> Result<Bytes, GatewayError> {
            Ok(empty_model_list())
        }
        async fn count_tokens(&self, _a: Admission, _b: Bytes) -> Result<TokenCount, GatewayError> {
            Err(GatewayError::Unavailable {
                message: "document-only service".to_owned(),
            })
        }
        async fn embeddings(&self, _a: Admission, _b: Bytes) -> Result<Bytes, GatewayError> {
            Err(GatewayError::Unavailable {
                message: "document-only service".to_owned(),
            })
        }
        fn readiness(&self) -> Result<(), String> {
            Err("document-only service".to_owned())
        }
        fn begin_drain(&self) {}
        fn metrics_text(&self) -> String {
            String::new()
        }
        fn record_http(&self, _r: &str, _m: &str, _s: u16, _sh: &str, _t: f64) {}
    }

    fn unavailable() -> AdminFailure {
        AdminFailure::Unavailable("document-only service".to_owned())
    }

    #[async_trait::async_trait]
    impl AdminService for NoService {
        async fn create_key(&self, _n: NewKey) -> Result<CreatedKey, AdminFailure> {
            Err(unavailable())
        }
        async fn list_keys(&self) -> Result<Vec<KeySummary>, AdminFailure> {
            Err(unavailable())
        }
        async fn get_key(&self, _k: &str) -> Result<KeySummary, AdminFailure> {
            Err(unavailable())
        }
        async fn revoke_key(&self, _k: &str) -> Result<RevokeResult, AdminFailure> {
            Err(unavailable())
        }
        async fn rotate_key(&self, _k: &str, _g: u64) -> Result<RotateResult, AdminFailure> {
            Err(unavailable())
        }
        async fn usage(
            &self,
            _s: i64,
            _u: i64,
            _g: UsageGroup,
            _f: Option<(UsageGroup, String)>,
        ) -> Result<Vec<UsageRow>, AdminFailure> {
            Err(unavailable())
        }
        async fn audit(
            &self,
            _s: i64,
            _u: i64,
            _t: Vec<String>,
        ) -> Result<Vec<EventRow>, AdminFailure> {
            Err(unavailable())
        }
        fn now_us(&self) -> i64 {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmatched_labels_keep_routes_and_fold_ids() {
        let routes = UnmatchedRoutes::default();
        assert_eq!(routes.label("/v1/completions"), "unmatched:/v1/completions");
        assert_eq!(
            routes.label("/v1beta/models/gemini-pro"),
            "unmatched:/v1beta/models/gemini-pro"
        );
        assert_eq!(
            routes.label("/v1/files/file-AbC123/content"),
            "unmatched:/v1/files/{id}"
        );
        assert_eq!(
            routes.label("/v1/threads/123"),
            "unmatched:/v1/threads/{id}"
        );
        assert_eq!(routes.label("/v123/x"), "unmatched:/{id}/x");
        assert_eq!(routes.label("/"), "unmatched:/");
        for i in 0..UNMATCHED_LABELS {
            let word: String = [i / 26, i % 26]
                .iter()
                .map(|n| char::from(b'a' + *n as u8))
                .collect();
            let _ = routes.label(&format!("/probe/{word}"));
        }
        assert_eq!(routes.label("/one/more"), "unmatched:other");
        assert_eq!(routes.label("/v1/completions"), "unmatched:/v1/completions");
    }
}
