//! `HttpProvider`: the `Provider` port over HTTPS with reqwest, for Anthropic, OpenAI (and
//! every OpenAI-compatible server) and OpenRouter.
//!
//! Invariants:
//! - One `reqwest::Client` per provider, built once: pooled keep-alive connections
//!   (idle for up to 90 s), `TCP_NODELAY`, a connect timeout, no redirects (a redirected POST
//!   would lose its body or leak credentials to another host) and no client-wide total
//!   timeout, because a stream may legitimately run for many minutes.
//! - `send` returns only after a 2xx response head arrived (streams) or after the full body
//!   was read (non-streaming calls). Every failure before that point is classified and, if
//!   retryable, retried (see `retry`). Nothing is retried once bytes went to the caller.
//! - A returned stream owns the `reqwest::Response` and nothing else holds it, so dropping the
//!   stream drops the connection (HTTP/1.1) or resets the stream (HTTP/2) at once, which is
//!   how a client disconnect cancels the upstream call. A silence longer than the idle
//!   timeout ends the stream with one `UpstreamError::Network` item.
//! - Outbound proxies follow the standard `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`
//!   variables (reqwest's system-proxy support), which egress-restricted deployments need.
//! - Logs carry provider, status, retry number and request id; never the API key (its header
//!   is marked sensitive as well) and never request or response bodies.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use metis_ports::upstream::{
    Operation, Provider, UpstreamBody, UpstreamError, UpstreamReply, UpstreamRequest, WireFormat,
};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{ANTHROPIC_VERSION, ConfigError, HttpProviderConfig, RetryPolicy, Timeouts};
use crate::retry::{self, Decision, Failure};

/// Error bodies are read up to this many bytes (enough for any provider's JSON error).
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Longest time spent reading an error body.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;
/// TCP keep-alive probes keep long, quiet streams alive through NATs and load balancers.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// An upstream LLM provider reached over HTTP. Cheap to share behind an `Arc`.
pub struct HttpProvider {
    name: String,
    wire: WireFormat,
    /// Model calls in `wire`.
    url: reqwest::Url,
    /// Every (wire, operation) this upstream serves, with its URL (`url` among them).
    endpoints: Vec<(WireFormat, Operation, reqwest::Url)>,
    client: reqwest::Client,
    timeouts: Timeouts,
    retry: RetryPolicy,
}

impl fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = self.url.clone();
        // A base URL may carry userinfo; never print it.
        let _ = url.set_password(None);
        let _ = url.set_username("");
        f.debug_struct("HttpProvider")
            .field("name", &self.name)
            .field("wire", &self.wire)
            .field("url", &url.as_str())
            .field("timeouts", &self.timeouts)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl HttpProvider {
    /// Build the provider and its connection pool.
    ///
    /// # Errors
    /// `ConfigError` when the base URL is not an absolute http(s) URL, a header cannot be
    /// encoded, or the TLS client cannot be initialised.
    pub fn new(config: HttpProviderConfig) -> Result<Self, ConfigError> {
        let endpoint = config.endpoint();
        let url = reqwest::Url::parse(&endpoint).map_err(|e| ConfigError::BaseUrl {
            provider: config.name.clone(),
            url: config.base_url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::BaseUrl {
                provider: config.name.clone(),
                url: config.base_url.clone(),
                reason: "scheme must be http or https".to_owned(),
            });
        }
        let mut endpoints = Vec::new();
        for wire in [
            WireFormat::OpenAiChat,
            WireFormat::OpenAiResponses,
            WireFormat::AnthropicMessages,
        ] {
            for op in [
                Operation::Generate,
                Operation::CountTokens,
                Operation::Embeddings,
            ] {
                if let Some(e) = config.endpoint_for(wire, op)
                    && let Ok(u) = reqwest::Url::parse(&e)
                {
                    endpoints.push((wire, op, u));
                }
            }
        }
        let headers = default_headers(&config)?;
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("metis-gateway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.timeouts.connect)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .tcp_nodelay(true)
            .tcp_keepalive(TCP_KEEPALIVE)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::Client {
                provider: config.name.clone(),
                reason: describe(&e),
            })?;
        Ok(Self {
            name: config.name,
            wire: config.wire,
            url,
            endpoints,
            client,
            timeouts: config.timeouts,
            retry: config.retry,
        })
    }

    /// The endpoint every call is POSTed to.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        self.url.as_str()
    }

    fn url_for(&self, wire: WireFormat, op: Operation) -> Option<&reqwest::Url> {
        self.endpoints
            .iter()
            .find(|(w, o, _)| *w == wire && *o == op)
            .map(|(_, _, u)| u)
    }

    /// One attempt: send, await the head, and for non-streaming calls read the whole body.
    async fn attempt(
        &self,
        url: &reqwest::Url,
        request: &UpstreamRequest,
        retries: u32,
    ) -> Result<UpstreamBody, Failure> {
        let accept = if request.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut url = url.clone();
        if let Some(q) = request.query.as_deref().filter(|q| !q.is_empty()) {
            url.set_query(Some(q));
        }
        let mut builder = self.client.post(url).header(header::ACCEPT, accept);
        if let Some(tp) = &request.traceparent {
            builder = builder.header("traceparent", tp.as_str());
        }
        // Forwarded client headers (already filtered by the caller) replace the provider's
        // defaults of the same name; reqwest adds a default only where the request has none.
        for (name, value) in &request.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                builder = builder.header(n, v);
            }
        }
        let call = builder.body(request.body.clone()).send();
        let response = match tokio::time::timeout(self.timeouts.response_head, call).await {
            Err(_) => {
                return Err(Failure::Network {
                    message: format!(
                        "no response head within {}",
                        human(self.timeouts.response_head)
                    ),
                });
            }
            Ok(Err(e)) => {
                return Err(Failure::Network {
                    message: describe(&e),
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        tracing::debug!(
            provider = %self.name,
            request_id = %request.request_id,
            status = status.as_u16(),
            retry = retries,
            "upstream response head"
        );
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
            let body = read_error_body(response, self.timeouts.stream_idle).await;
            return Err(Failure::Status {
                status: status.as_u16(),
                body,
                retry_after,
            });
        }
        if request.stream {
            return Ok(UpstreamBody::Stream(idle_guarded(
                response,
                self.timeouts.stream_idle,
                self.name.clone(),
                retries,
            )));
        }
        match response.bytes().await {
            Ok(body) => Ok(UpstreamBody::Full(body)),
            Err(e) => Err(Failure::Network {
                message: format!("reading response body: {}", describe(&e)),
            }),
        }
    }

    /// One attempt bounded by the right deadline: the head timeout alone for streams (inside
    /// `attempt`), head plus body under the total timeout for non-streaming calls.
    async fn bounded_attempt(
        &self,
        url: &reqwest::Url,
        request: &UpstreamRequest,
        retries: u32,
    ) -> Result<UpstreamBody, Failure> {
        if request.stream {
            return self.attempt(url, request, retries).await;
        }
        match tokio::time::timeout(self.timeouts.total, self.attempt(url, request, retries)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Network {
                message: format!("no complete response within {}", human(self.timeouts.total)),
            }),
        }
    }

    fn make_error(&self, failure: Failure, retries: u32) -> UpstreamError {
        match failure {
            Failure::Status {
                status,
                body,
                retry_after,
            } => UpstreamError::Status {
                provider: self.name.clone(),
                status,
                body,
                retry_after_secs: retry_after.map(retry::retry_after_secs),
                retries,
            },
            Failure::Network { message } => UpstreamError::Network {
                provider: self.name.clone(),
                message,
                retries,
            },
        }
    }
}

#[async_trait]
impl Provider for HttpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn wire(&self) -> WireFormat {
        self.wire
    }

    fn supports(&self, wire: WireFormat, op: Operation) -> bool {
        self.url_for(wire, op).is_some()
    }

    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamReply, UpstreamError> {
        let started = Instant::now();
        let mut retries = 0u32;
        let Some(url) = self.url_for(request.wire, request.op) else {
            // Callers check `supports` first; answering 404 keeps a wiring mistake visible.
            return Err(UpstreamError::Status {
                provider: self.name.clone(),
                status: 404,
                body: Bytes::from_static(
                    br#"{"error":{"type":"not_found_error","message":"operation not served by this upstream"}}"#,
                ),
                retry_after_secs: None,
                retries: 0,
            });
        };
        loop {
            tracing::debug!(
                provider = %self.name,
                request_id = %request.request_id,
                stream = request.stream,
                retry = retries,
                "upstream call"
            );
            let failure = match self.bounded_attempt(url, &request, retries).await {
                Ok(body) => {
                    tracing::debug!(
                        provider = %self.name,
                        request_id = %request.request_id,
                        retries,
                        elapsed_ms = elapsed_ms(started),
                        "upstream call answered"
                    );
                    return Ok(UpstreamReply { body, retries });
                }
                Err(failure) => failure,
            };
            let (status, message) = match &failure {
                Failure::Status { status, .. } => (Some(*status), None),
                Failure::Network { message } => (None, Some(message.as_str())),
            };
            match retry::decide(&self.retry, &failure, retries) {
                Decision::RetryAfter(wait) => {
                    retries += 1;
                    tracing::warn!(
                        provider = %self.name,
                        request_id = %request.request_id,
                        status,
                        error = message,
                        retry = retries,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "upstream call failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                Decision::GiveUp => {
                    tracing::warn!(
                        provider = %self.name,
                        request_id = %request.request_id,
                        status,
                        error = message,
                        retries,
                        elapsed_ms = elapsed_ms(started),
                        "upstream call failed"
                    );
                    return Err(self.make_error(failure, retries));
                }
            }
        }
    }
}

/// Auth, version and extra headers sent on every call.
fn default_headers(config: &HttpProviderConfig) -> Result<HeaderMap, ConfigError> {
    let bad = |name: &str| ConfigError::Header {
        provider: config.name.clone(),
        name: name.to_owned(),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match config.wire {
        WireFormat::AnthropicMessages => {
            headers.insert(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(ANTHROPIC_VERSION),
            );
            if !config.api_key.is_empty() {
                let mut v = HeaderValue::from_str(&config.api_key).map_err(|_| bad("x-api-key"))?;
                v.set_sensitive(true);
                headers.insert(HeaderName::from_static("x-api-key"), v);
            }
        }
        WireFormat::OpenAiChat | WireFormat::OpenAiResponses => {
            if !config.api_key.is_empty() {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", config.api_key))
                    .map_err(|_| bad("authorization"))?;
                v.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, v);
            }
        }
    }
    for (name, value) in &config.extra_headers {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad(name))?;
        let v = HeaderValue::from_str(value).map_err(|_| bad(name))?;
        headers.insert(n, v);
    }
    Ok(headers)
}

/// Read an error body up to `ERROR_BODY_LIMIT` bytes, for at most `min(idle, 30 s)`. A body
/// that breaks or stalls is cut where it stopped: the status is what matters.
async fn read_error_body(mut response: reqwest::Response, idle: Duration) -> Bytes {
    let deadline = tokio::time::Instant::now() + idle.min(ERROR_BODY_TIMEOUT);
    let mut buf = BytesMut::new();
    while buf.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                let room = ERROR_BODY_LIMIT - buf.len();
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(Ok(None) | Err(_)) | Err(_) => break,
        }
    }
    buf.freeze()
}

/// Turn a streaming response into the port's stream, ending it with a `Network` item when
/// the body breaks or stays silent for longer than `idle`. The response lives only inside
/// the stream state, so dropping the stream closes the connection.
fn idle_guarded(
    response: reqwest::Response,
    idle: Duration,
    provider: String,
    retries: u32,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    stream::unfold(Some(response), move |state| {
        let provider = provider.clone();
        async move {
            let mut response = state?;
            let error = match tokio::time::timeout(idle, response.chunk()).await {
                Ok(Ok(Some(chunk))) => return Some((Ok(chunk), Some(response))),
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => format!("stream broke: {}", describe(&e)),
                Err(_) => format!("stream idle for more than {}", human(idle)),
            };
            // Drop the connection now rather than when the caller drops the stream.
            drop(response);
            tracing::warn!(provider = %provider, error = %error, "upstream stream ended early");
            Some((
                Err(UpstreamError::Network {
                    provider,
                    message: error,
                    retries,
                }),
                None,
            ))
        }
    })
    .boxed()
}

/// A reqwest error and its causes, without the URL (it could carry userinfo).
fn describe(e: &reqwest::Error) -> String {
    let mut message = if e.is_connect() {
        "connect failed".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_body() || e.is_decode() {
        "body error".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
