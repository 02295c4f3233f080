//! Routes: provider endpoints, models, health and readiness, the OpenAPI document, and the
//! catch-all that turns every framework error into a JSON envelope.

mod async_trait_free;
mod document;
mod inbound;
mod labels;
mod provider;

use crate::admin::AdminApi;
use crate::admin_auth::{AdminAccess, AdminAuthConfig};
use crate::admin_read::AdminReadApi;
use crate::console::{Console, ConsoleConfig, is_console_path, security_headers};
use crate::reply::{AllowTable, ErrorCode, ModelsReply, RawReply, error_response, json_response};
use async_trait_free::NoService;
use bytes::Bytes;
pub use document::openapi_json;
use inbound::meta;
use labels::{UnmatchedRoutes, request_id, route_template};
use metis_domain::canonical::Shape;
use metis_domain::error::GatewayError;
use metis_domain::models::Page;
use metis_ports::admin::AdminService;
use metis_ports::console::OpsService;
use metis_ports::gateway::{GatewayService, ModelsQuery};
use poem::error::{MethodNotAllowedError, NotFoundError};
use poem::http::{StatusCode, header};
use poem::{Body, Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::param::{Path, Query};
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
    /// `ready`, `degraded` (200: a store every replica shares is unreachable; requests are
    /// served, events queued) or `not_ready` (503).
    status: String,
    /// Why the gateway is degraded or not ready (absent when ready).
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
    /// Stores writable, keys loaded, not draining; or degraded with the reason.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Draining or a store is unavailable.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
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

    /// Readiness: 200 when stores are writable, keys are loaded and the gateway is not
    /// draining, or when only a store every replica shares is unreachable (`degraded`, with
    /// the reason: moving traffic to another replica would not help); 503 otherwise.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self) -> ReadyResponse {
        match self.svc.readiness() {
            Ok(degraded) => ReadyResponse::Ready(Json(Readiness {
                status: if degraded.is_some() {
                    "degraded"
                } else {
                    "ready"
                }
                .to_owned(),
                reason: degraded,
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
    ops: Arc<dyn OpsService>,
    opts: HttpOptions,
) -> OpenApiService<(Api, AdminApi, AdminReadApi), ()> {
    let url = opts.public_url.clone();
    OpenApiService::new(
        (
            Api {
                svc,
                opts,
                started: Instant::now(),
            },
            AdminApi { svc: admin },
            AdminReadApi { svc: ops },
        ),
        "Metis gateway",
        API_VERSION,
    )
    .description(
        "OpenAI- and Anthropic-compatible LLM gateway: provider endpoints authenticated with \
         gateway keys, health and readiness probes, and the admin API for key lifecycle, usage, \
         audit export, live overview and sessions.",
    )
    .server(url)
}

/// Map framework errors (unknown path, wrong method, extractor failures) to JSON envelopes in
/// the shape the path implies. Responses the handlers built themselves pass through. A 405
/// carries `Allow` with the methods the document lists for the path.
fn json_errors(err: &poem::Error, method: String, path: String, allow: &AllowTable) -> Response {
    if path.starts_with("/admin/") && err.status() == StatusCode::UNAUTHORIZED {
        let body = json!({"error": {
            "message": "missing admin credentials (Authorization: Bearer <admin token or OIDC JWT>)",
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
        metis_domain::error::invalid(err.to_string())
    } else {
        tracing::error!(error = %err, %path, "unhandled HTTP error");
        GatewayError::Internal
    };
    error_response(&gw, shape)
}

/// What the admin API (`/admin/v1`) is served with: the key/usage/audit service, the
/// console's read service, and how admins authenticate (static token and/or OIDC).
#[derive(Clone)]
pub struct AdminServices {
    pub admin: Arc<dyn AdminService>,
    pub ops: Arc<dyn OpsService>,
    pub auth: AdminAuthConfig,
}

/// The complete HTTP application. The admin API is served only when `admin` is given;
/// otherwise every `/admin/…` path answers 404. The operator console (`/ui`) is served when
/// `console` is given and the admin API is, else 404 too.
pub fn routes(
    svc: Arc<dyn GatewayService>,
    admin: Option<AdminServices>,
    console: Option<ConsoleConfig>,
    opts: HttpOptions,
) -> impl Endpoint {
    let (admin_svc, ops_svc, token, console): (Arc<dyn AdminService>, Arc<dyn OpsService>, _, _) =
        match admin {
            Some(a) => {
                let static_token = a.auth.token.clone();
                let access = AdminAccess::new(a.auth);
                // The console shares the admin API's failure limiter (see `Console::new`).
                let console = console
                    .map(|c| Arc::new(Console::new(c, static_token.as_deref(), access.clone())));
                (a.admin, a.ops, Some(access), console)
            }
            None => (Arc::new(NoService), Arc::new(NoService), None, None),
        };
    let recorder = Arc::clone(&svc);
    let unmatched = Arc::new(UnmatchedRoutes::default());
    let api = service(svc, admin_svc, ops_svc, opts);
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
            let console = console.clone();
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
                    _ if is_console_path(&path) => {
                        let mut resp = match &console {
                            Some(c) => c.serve(req).await,
                            None => error_response(&GatewayError::NotFound { path }, Shape::OpenAi),
                        };
                        security_headers(&mut resp);
                        resp
                    }
                    _ if websocket => {
                        let meta = meta(&req, Shape::Responses);
                        crate::socket::upgrade(Arc::clone(&recorder), meta, &req).await
                    }
                    (None, true) => error_response(&GatewayError::NotFound { path }, Shape::OpenAi),
                    (token, _) => {
                        let mut refused = None;
                        if let (Some(t), true) = (token, admin_path) {
                            req.extensions_mut().insert(t.clone());
                            if let Some(c) = &console {
                                refused = c.refuse_admin(&req);
                                req.extensions_mut().insert(Arc::clone(c));
                            }
                        }
                        match refused {
                            Some(resp) => resp,
                            None => match ep.call(req).await {
                                Ok(resp) => resp.into_response(),
                                Err(err) if err.is_from_response() => err.into_response(),
                                Err(err) => json_errors(&err, method.clone(), path, &allow),
                            },
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

/// `/v1/models` body helper used by tests of this crate.
#[must_use]
pub fn empty_model_list() -> Bytes {
    Bytes::from(json!({"object": "list", "data": []}).to_string())
}
