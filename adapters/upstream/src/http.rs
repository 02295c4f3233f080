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

use async_trait::async_trait;
use bytes::Bytes;
use metis_ports::upstream::{
    Operation, Provider, UpstreamError, UpstreamReply, UpstreamRequest, WireFormat,
};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{ANTHROPIC_VERSION, ConfigError, HttpProviderConfig};
use crate::transport::{Transport, secret_header};

/// An upstream LLM provider reached over HTTP. Cheap to share behind an `Arc`.
pub struct HttpProvider {
    name: String,
    wire: WireFormat,
    /// Model calls in `wire`.
    url: reqwest::Url,
    /// Every (wire, operation) this upstream serves, with its URL (`url` among them).
    endpoints: Vec<(WireFormat, Operation, reqwest::Url)>,
    transport: Transport,
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
            .field("transport", &self.transport)
            .finish()
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
        let transport = Transport::new(&config.name, config.timeouts, config.retry, headers)?;
        Ok(Self {
            name: config.name,
            wire: config.wire,
            url,
            endpoints,
            transport,
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
        let mut url = url.clone();
        if let Some(q) = request.query.as_deref().filter(|q| !q.is_empty()) {
            url.set_query(Some(q));
        }
        self.transport
            .send(&request, || {
                Ok(self
                    .transport
                    .post(url.clone(), &request, request.body.clone()))
            })
            .await
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
                let v = secret_header(&config.api_key).ok_or_else(|| bad("x-api-key"))?;
                headers.insert(HeaderName::from_static("x-api-key"), v);
            }
        }
        // Served by `GoogleProvider`, never by this one.
        WireFormat::GeminiGenerateContent => {}
        WireFormat::OpenAiChat | WireFormat::OpenAiResponses => {
            if !config.api_key.is_empty() {
                let v = secret_header(&format!("Bearer {}", config.api_key))
                    .ok_or_else(|| bad("authorization"))?;
                headers.insert(header::AUTHORIZATION, v);
            }
        }
        // Signed per request by `BedrockProvider`; never built through this config.
        WireFormat::BedrockConverse => {}
    }
    for (name, value) in &config.extra_headers {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad(name))?;
        let v = HeaderValue::from_str(value).map_err(|_| bad(name))?;
        headers.insert(n, v);
    }
    Ok(headers)
}
