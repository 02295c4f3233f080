//! `GoogleProvider`: Gemini on the Gemini API (`x-goog-api-key`), Gemini on Vertex AI and
//! Claude on Vertex AI (both with a service account's bearer token).
//!
//! Endpoints (the model id is percent-encoded into the path; Vertex Claude ids carry `@`):
//! - Gemini API: `{base}/v1beta/models/{model}:generateContent`, streams
//!   `:streamGenerateContent?alt=sse`.
//! - Vertex Gemini: `{base}/v1/projects/{p}/locations/{l}/publishers/google/models/{model}`
//!   + the same two methods.
//! - Vertex Claude: `…/publishers/anthropic/models/{model}:rawPredict`, streams
//!   `:streamRawPredict`. The body is the Anthropic Messages body without `model` (it is in
//!   the URL) and with `"anthropic_version": "vertex-2023-10-16"`; the answer is the
//!   Messages answer, SSE included, so the Anthropic parsers read it.
//!
//! Invariants:
//! - The API key and tokens are sensitive headers and never logged. The token is fetched
//!   (or taken from the shared cache) once per `send`, before the retry loop; a token that
//!   cannot be obtained fails the call as a network error naming the exchange step; a token
//!   Vertex answers 401 to is dropped from the cache (the next call exchanges a new one).
//! - Gemini answers an invalid API key with HTTP 400 `API_KEY_INVALID`; that answer is
//!   reported as 401 so the gateway classifies it as an authentication failure, not as a
//!   bad request from the client.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use metis_ports::upstream::{
    Operation, Provider, UpstreamError, UpstreamReply, UpstreamRequest, WireFormat,
};
use reqwest::header::{self, HeaderMap, HeaderValue};

use crate::config::{ConfigError, RetryPolicy, Timeouts};
use crate::google_auth::{CLOUD_PLATFORM_SCOPE, ServiceAccount, TokenSource};
use crate::transport::{Transport, secret_header};

/// Default base URL of the Gemini API.
pub const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// `anthropic_version` Claude on Vertex requires in the body.
pub const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// The default Vertex AI base URL of a location (`global` has no regional prefix).
#[must_use]
pub fn vertex_base_url(location: &str) -> String {
    if location == "global" {
        "https://aiplatform.googleapis.com".to_owned()
    } else {
        format!("https://{location}-aiplatform.googleapis.com")
    }
}

/// Which Google service, and its credential.
pub enum GoogleAuth {
    /// Gemini API key, sent as `x-goog-api-key`.
    ApiKey(String),
    /// A Vertex AI project, location and service account.
    Vertex {
        project: String,
        location: String,
        account: ServiceAccount,
    },
}

impl fmt::Debug for GoogleAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GoogleAuth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            GoogleAuth::Vertex {
                project,
                location,
                account,
            } => f
                .debug_struct("Vertex")
                .field("project", project)
                .field("location", location)
                .field("account", account)
                .finish(),
        }
    }
}

/// Everything a [`GoogleProvider`] needs.
#[derive(Debug)]
pub struct GoogleProviderConfig {
    /// Provider name (canonical-id prefix and logs).
    pub name: String,
    /// `GeminiGenerateContent` (Gemini API or Vertex Gemini) or `AnthropicMessages` (Claude on
    /// Vertex, which needs `GoogleAuth::Vertex`).
    pub wire: WireFormat,
    pub auth: GoogleAuth,
    /// Base URL without a trailing path (`https://generativelanguage.googleapis.com`,
    /// `https://us-east5-aiplatform.googleapis.com`).
    pub base_url: String,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
}

enum Credential {
    ApiKey(HeaderValue),
    Token(TokenSource),
}

/// A Google upstream; see the module docs.
pub struct GoogleProvider {
    name: String,
    wire: WireFormat,
    /// Everything up to `/models/` (exclusive of the model id).
    models_url: String,
    credential: Credential,
    transport: Transport,
}

impl fmt::Debug for GoogleProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoogleProvider")
            .field("name", &self.name)
            .field("wire", &self.wire)
            .field("models_url", &self.models_url)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl GoogleProvider {
    /// Build the provider and its connection pool.
    ///
    /// # Errors
    /// A base URL that is not http(s), an API key that cannot be a header, Claude without
    /// Vertex credentials, or a TLS client that cannot be initialised.
    pub fn new(config: GoogleProviderConfig) -> Result<Self, ConfigError> {
        let base = config.base_url.trim_end_matches('/').to_owned();
        let bad_base = |reason: &str| ConfigError::BaseUrl {
            provider: config.name.clone(),
            url: config.base_url.clone(),
            reason: reason.to_owned(),
        };
        let parsed = reqwest::Url::parse(&base).map_err(|e| bad_base(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad_base("scheme must be http or https"));
        }
        let (models_url, credential) = match (config.auth, config.wire) {
            (GoogleAuth::ApiKey(key), WireFormat::GeminiGenerateContent) => {
                let v = secret_header(&key).ok_or_else(|| ConfigError::Header {
                    provider: config.name.clone(),
                    name: "x-goog-api-key".to_owned(),
                })?;
                (format!("{base}/v1beta/models/"), Credential::ApiKey(v))
            }
            (
                GoogleAuth::Vertex {
                    project,
                    location,
                    account,
                },
                wire,
            ) => {
                let publisher = if wire == WireFormat::AnthropicMessages {
                    "anthropic"
                } else {
                    "google"
                };
                (
                    format!(
                        "{base}/v1/projects/{}/locations/{}/publishers/{publisher}/models/",
                        encode(&project),
                        encode(&location)
                    ),
                    Credential::Token(TokenSource::new(account, CLOUD_PLATFORM_SCOPE)),
                )
            }
            (GoogleAuth::ApiKey(_), _) => {
                return Err(bad_base(
                    "Claude is served on Vertex AI only (a service account, not an API key)",
                ));
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let transport = Transport::new(&config.name, config.timeouts, config.retry, headers)?;
        Ok(Self {
            name: config.name,
            wire: config.wire,
            models_url,
            credential,
            transport,
        })
    }

    /// The URL of a call to `model`.
    fn url(&self, model: &str, stream: bool) -> Result<reqwest::Url, String> {
        let method = match (self.wire, stream) {
            (WireFormat::AnthropicMessages, false) => ":rawPredict",
            (WireFormat::AnthropicMessages, true) => ":streamRawPredict",
            (_, false) => ":generateContent",
            (_, true) => ":streamGenerateContent?alt=sse",
        };
        let url = format!("{}{}{method}", self.models_url, encode(model));
        reqwest::Url::parse(&url).map_err(|e| format!("bad upstream URL for the model: {e}"))
    }

    fn status_error(&self, status: u16, body: &'static [u8]) -> UpstreamError {
        UpstreamError::Status {
            provider: self.name.clone(),
            status,
            body: Bytes::from_static(body),
            retry_after_secs: None,
            retries: 0,
        }
    }
}

/// Percent-encode a path segment (RFC 3986 unreserved characters stay).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Messages body as Claude on Vertex takes it: no `model`, `anthropic_version` set.
fn vertex_anthropic_body(body: &[u8]) -> Result<Bytes, String> {
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not JSON: {e}"))?;
    let Some(obj) = v.as_object_mut() else {
        return Err("request body is not a JSON object".to_owned());
    };
    obj.remove("model");
    obj.insert(
        "anthropic_version".to_owned(),
        serde_json::Value::String(VERTEX_ANTHROPIC_VERSION.to_owned()),
    );
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| format!("request body: {e}"))
}

#[async_trait]
impl Provider for GoogleProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn wire(&self) -> WireFormat {
        self.wire
    }

    fn supports(&self, wire: WireFormat, op: Operation) -> bool {
        wire == self.wire && op == Operation::Generate
    }

    async fn send(&self, mut request: UpstreamRequest) -> Result<UpstreamReply, UpstreamError> {
        if !self.supports(request.wire, request.op) {
            return Err(self.status_error(
                404,
                br#"{"error":{"code":404,"status":"NOT_FOUND","message":"operation not served by this upstream"}}"#,
            ));
        }
        let network = |message: String| UpstreamError::Network {
            provider: self.name.clone(),
            message,
            retries: 0,
        };
        let url = self.url(&request.model, request.stream).map_err(network)?;
        if self.wire == WireFormat::AnthropicMessages {
            request.body = vertex_anthropic_body(&request.body).map_err(|m| {
                network(format!("cannot prepare the Claude on Vertex request: {m}"))
            })?;
            // Same-shape Anthropic traffic forwards `?beta=true` and the like: Vertex's
            // rawPredict takes no query string, and `anthropic-version` is in the body.
            request.query = None;
            request
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("anthropic-version"));
        }
        let mut token = None;
        let auth = match &self.credential {
            Credential::ApiKey(v) => ("x-goog-api-key", v.clone()),
            Credential::Token(source) => {
                let t = source
                    .token(self.transport.client())
                    .await
                    .map_err(network)?;
                let v = secret_header(&format!("Bearer {t}")).ok_or_else(|| {
                    network("the access token cannot be sent as a header".to_owned())
                })?;
                token = Some(t);
                ("authorization", v)
            }
        };
        let result = self
            .transport
            .send(&request, || {
                Ok(self
                    .transport
                    .post(url.clone(), &request, request.body.clone())
                    .header(auth.0, auth.1.clone()))
            })
            .await;
        if let (
            Err(UpstreamError::Status { status: 401, .. }),
            Some(t),
            Credential::Token(source),
        ) = (&result, &token, &self.credential)
        {
            source.invalidate(t).await;
        }
        match result {
            Err(UpstreamError::Status {
                provider,
                status: 400,
                body,
                retry_after_secs,
                retries,
            }) if is_invalid_api_key(&body) => Err(UpstreamError::Status {
                provider,
                status: 401,
                body,
                retry_after_secs,
                retries,
            }),
            other => other,
        }
    }
}

/// Whether a Google 400 says the API key is invalid (`reason: API_KEY_INVALID`).
fn is_invalid_api_key(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    v.pointer("/error/details")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .any(|d| d.get("reason").and_then(serde_json::Value::as_str) == Some("API_KEY_INVALID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_percent_encoded_and_claude_bodies_rewritten() {
        assert_eq!(
            encode("claude-haiku-4-5@20251001"),
            "claude-haiku-4-5%4020251001"
        );
        assert_eq!(encode("gemini-2.5-flash"), "gemini-2.5-flash");
        let body = vertex_anthropic_body(br#"{"model":"m","max_tokens":5}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v.get("model").is_none());
        assert_eq!(v["anthropic_version"], VERTEX_ANTHROPIC_VERSION);
        assert_eq!(v["max_tokens"], 5);
    }

    #[test]
    fn invalid_api_key_is_recognised_only_by_its_reason() {
        assert!(is_invalid_api_key(
            br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#
        ));
        assert!(!is_invalid_api_key(
            br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"bad"}}"#
        ));
    }

    #[test]
    fn urls_per_kind() {
        let p = GoogleProvider::new(GoogleProviderConfig {
            name: "gemini".into(),
            wire: WireFormat::GeminiGenerateContent,
            auth: GoogleAuth::ApiKey("k".into()),
            base_url: "http://127.0.0.1:9/".into(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::none(),
        })
        .unwrap();
        assert_eq!(
            p.url("gemini-2.5-flash", true).unwrap().as_str(),
            "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert!(!format!("{p:?}").contains("\"k\""));
        assert_eq!(
            vertex_base_url("us-east5"),
            "https://us-east5-aiplatform.googleapis.com"
        );
    }
}
