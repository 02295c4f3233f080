//! Routes: provider endpoints, models, health and readiness, the OpenAPI document, and the
//! catch-all that turns every framework error into a JSON envelope.

use crate::admin::{AdminApi, AdminToken};
use crate::reply::{AllowTable, RawReply, error_response, json_response};
use async_trait_free::NoService;
use bytes::Bytes;
use futures_util::StreamExt;
use gw_domain::canonical::Shape;
use gw_domain::error::GatewayError;
use gw_ports::admin::{AdminFailure, AdminService};
use gw_ports::gateway::{GatewayService, InboundMeta, Reply};
use poem::error::{MethodNotAllowedError, NotFoundError, ReadBodyError};
use poem::http::{StatusCode, header};
use poem::{Body, Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{Object, OpenApi, OpenApiService};
use serde_json::json;
use std::sync::Arc;
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
        Shape::OpenAi => bearer(req),
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
    }
}

impl Api {
    async fn provider(&self, shape: Shape, req: &Request, body: Body) -> RawReply {
        let admission = match self.svc.admit(meta(req, shape)).await {
            Ok(a) => a,
            Err(e) => return RawReply(error_response(&e, shape)),
        };
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
            return RawReply(error_response(&too_large, shape));
        }
        let read = tokio::time::timeout(self.opts.body_timeout, body.into_bytes_limit(limit)).await;
        let bytes = match read {
            Err(_) => {
                let err = GatewayError::RequestTimeout {
                    seconds: self.opts.body_timeout.as_secs(),
                };
                return RawReply(error_response(&err, shape));
            }
            Ok(Ok(b)) => b,
            Ok(Err(ReadBodyError::PayloadTooLarge)) => {
                return RawReply(error_response(&too_large, shape));
            }
            Ok(Err(e)) => {
                let err = gw_domain::error::invalid(format!("could not read request body: {e}"));
                return RawReply(error_response(&err, shape));
            }
        };
        // The parse estimate of this body must fit the in-flight request budget.
        if let Err(refused) = crate::inflight::charge_parsed(req, &bytes) {
            return RawReply(*refused);
        }
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

    /// List the models the calling key may use (OpenAI list shape).
    #[oai(path = "/v1/models", method = "get", operation_id = "listModels")]
    async fn models(&self, req: &Request) -> RawReply {
        let shape = if req.headers().contains_key("x-api-key") {
            Shape::Anthropic
        } else {
            Shape::OpenAi
        };
        match self.svc.admit(meta(req, shape)).await {
            Ok(adm) => RawReply(json_response(StatusCode::OK, self.svc.list_models(&adm))),
            Err(e) => RawReply(error_response(&e, shape)),
        }
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
            let allow = Arc::clone(&allow);
            async move {
                let started = Instant::now();
                let path = req.uri().path().to_owned();
                let method = req.method().to_string();
                let (route, shape) = route_template(&path);
                let admin_path = path.starts_with("/admin/") || path == "/admin";
                let resp = match (&token, admin_path) {
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
                recorder.record_http(
                    route,
                    &method,
                    resp.status().as_u16(),
                    shape,
                    started.elapsed().as_secs_f64(),
                );
                Ok(resp)
            }
        })
}

/// The route template and inbound shape of a path, for metric labels (bounded cardinality:
/// ids and unknown paths never become labels).
fn route_template(path: &str) -> (&'static str, &'static str) {
    match path {
        "/v1/chat/completions" => ("/v1/chat/completions", "openai"),
        "/v1/messages" => ("/v1/messages", "anthropic"),
        "/v1/models" => ("/v1/models", "openai"),
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
    let body = |required: &[&str], doc: &str| {
        let mut properties = json!({
            "model": {"type": "string", "minLength": 1, "description": "Alias, canonical id (`provider:name`) or model name."},
            "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "stream": {"type": "boolean"}
        });
        if required.contains(&"max_tokens") {
            properties["max_tokens"] = json!({"type": "integer", "minimum": 1});
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
    let ops: [(&str, &str, serde_json::Value, serde_json::Value, &str); 3] = [
        (
            "/v1/chat/completions",
            "post",
            json!([{"GatewayBearer": []}]),
            body(
                &["model", "messages"],
                "An OpenAI Chat Completions request; unknown fields are forwarded to OpenAI-compatible upstreams.",
            ),
            "OpenAiError",
        ),
        (
            "/v1/messages",
            "post",
            json!([{"GatewayApiKey": []}, {"GatewayBearer": []}]),
            body(
                &["model", "messages", "max_tokens"],
                "An Anthropic Messages request; unknown fields are forwarded to Anthropic upstreams.",
            ),
            "AnthropicError",
        ),
        (
            "/v1/models",
            "get",
            json!([{"GatewayBearer": []}, {"GatewayApiKey": []}]),
            serde_json::Value::Null,
            "OpenAiError",
        ),
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
    use gw_ports::gateway::Admission;
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
        fn list_models(&self, _a: &Admission) -> Bytes {
            empty_model_list()
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
