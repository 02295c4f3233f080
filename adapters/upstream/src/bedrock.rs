//! `BedrockProvider`: Amazon Bedrock's Converse API (`POST {base}/model/{id}/converse` and
//! `/converse-stream`), SigV4-signed.
//!
//! Invariants:
//! - Every attempt is signed afresh (its own `x-amz-date`), inside the transport's per-attempt
//!   closure, so a retry after a back-off never carries a stale signature. Credentials are
//!   obtained before the first attempt (web-identity ones are cached, see `credentials`); one
//!   that cannot be obtained fails the call as a network error naming the step.
//! - The model id is percent-encoded into the path (`anthropic.claude-…-v1:0` has a `:`); the
//!   signature covers that encoded path, encoded once more, as AWS requires.
//! - Streams: the binary event stream is decoded (both CRC32s checked) and handed on as SSE
//!   frames named by event type, which `metis_domain::bedrock::StreamParser` reads.
//! - Errors: Bedrock answers `{"message": …}` with the type in `x-amzn-ErrorType`, and each
//!   type has its own status (`ThrottlingException` 429, `AccessDeniedException` 403, …).
//!   The body is re-written as `{"message", "error": {"type"}}`, the type taken from a
//!   `__type` field when present and from the status otherwise, so logs and client errors
//!   name it.
//! - The secret key, session token and signature are never logged nor shown in `Debug`.

mod credentials;
mod eventstream;
mod sigv4;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use metis_ports::upstream::{
    Operation, Provider, UpstreamBody, UpstreamError, UpstreamReply, UpstreamRequest, WireFormat,
};
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use time::OffsetDateTime;

pub use credentials::CredentialSource;

use crate::config::{ConfigError, RetryPolicy, Timeouts};
use crate::transport::{Transport, secret_header};
use credentials::CredentialProvider;
use eventstream::{Decoder, Message};
use sigv4::{SignInput, uri_encode};

/// The SigV4 service name of the Bedrock runtime.
const SERVICE: &str = "bedrock";

/// Everything a [`BedrockProvider`] needs.
#[derive(Debug, Clone)]
pub struct BedrockConfig {
    /// Provider name (canonical-id prefix, e.g. `bedrock`).
    pub name: String,
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Runtime base URL; `None` means `https://bedrock-runtime.{region}.amazonaws.com`.
    pub base_url: Option<String>,
    pub credentials: CredentialSource,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
}

impl BedrockConfig {
    /// The runtime base URL in use.
    #[must_use]
    pub fn endpoint(&self) -> String {
        self.base_url
            .clone()
            .unwrap_or_else(|| format!("https://bedrock-runtime.{}.amazonaws.com", self.region))
    }
}

/// The Bedrock provider. Cheap to share behind an `Arc`.
pub struct BedrockProvider {
    name: String,
    region: String,
    base: reqwest::Url,
    credentials: CredentialProvider,
    transport: Transport,
}

impl fmt::Debug for BedrockProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockProvider")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("base", &self.base.as_str())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl BedrockProvider {
    /// Build the provider and its connection pool.
    ///
    /// # Errors
    /// `ConfigError` when the base URL is not an absolute http(s) URL or the TLS client cannot
    /// be initialised.
    pub fn new(config: BedrockConfig) -> Result<Self, ConfigError> {
        let endpoint = config.endpoint();
        let bad = |reason: String| ConfigError::BaseUrl {
            provider: config.name.clone(),
            url: endpoint.clone(),
            reason,
        };
        let base = reqwest::Url::parse(&endpoint).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(bad("scheme must be http or https, with a host".to_owned()));
        }
        if config.region.is_empty() {
            return Err(bad("no AWS region configured".to_owned()));
        }
        let transport = Transport::new(
            &config.name,
            config.timeouts,
            config.retry,
            HeaderMap::new(),
        )?;
        Ok(Self {
            name: config.name,
            region: config.region,
            base,
            credentials: CredentialProvider::new(config.credentials),
            transport,
        })
    }

    /// The URL of a call to `model`.
    fn url(&self, model: &str, stream: bool) -> Result<reqwest::Url, String> {
        let action = if stream {
            "converse-stream"
        } else {
            "converse"
        };
        let url = format!(
            "{}/model/{}/{action}",
            self.base.as_str().trim_end_matches('/'),
            uri_encode(model, true)
        );
        reqwest::Url::parse(&url).map_err(|e| format!("bad model URL: {e}"))
    }
}

/// `host[:port]` as the client sends it in the `Host` header (the port only when it is not
/// the scheme's default).
fn host_header(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

#[async_trait]
impl Provider for BedrockProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn wire(&self) -> WireFormat {
        WireFormat::BedrockConverse
    }

    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamReply, UpstreamError> {
        let network = |message: String| UpstreamError::Network {
            provider: self.name.clone(),
            message,
            retries: 0,
        };
        if request.wire != WireFormat::BedrockConverse || request.op != Operation::Generate {
            return Err(UpstreamError::Status {
                provider: self.name.clone(),
                status: 404,
                body: Bytes::from_static(
                    br#"{"error":{"type":"not_found_error","message":"operation not served by this upstream"}}"#,
                ),
                retry_after_secs: None,
                retries: 0,
            });
        }
        let url = self.url(&request.model, request.stream).map_err(network)?;
        let creds = self
            .credentials
            .get(self.transport.client())
            .await
            .map_err(network)?;
        let host = host_header(&url);
        let accept = if request.stream {
            "application/vnd.amazon.eventstream"
        } else {
            "application/json"
        };
        let result = self
            .transport
            .send(&request, || {
                let input = SignInput {
                    method: "POST",
                    host: &host,
                    path: url.path(),
                    query: "",
                    content_type: Some("application/json"),
                    body: &request.body,
                    region: &self.region,
                    service: SERVICE,
                    content_sha256_header: true,
                };
                let signed = sigv4::sign(&input, &creds, OffsetDateTime::now_utc());
                let mut builder = self
                    .transport
                    .client()
                    .post(url.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::ACCEPT, accept);
                if let Some(tp) = &request.traceparent {
                    builder = builder.header("traceparent", tp.as_str());
                }
                for (name, value) in signed {
                    let value = if matches!(name, "authorization" | "x-amz-security-token") {
                        secret_header(&value)
                    } else {
                        HeaderValue::from_str(&value).ok()
                    }
                    .ok_or_else(|| {
                        format!("AWS credentials cannot be sent as the {name} header")
                    })?;
                    builder = builder.header(name, value);
                }
                Ok(builder.body(request.body.clone()))
            })
            .await;
        match result {
            Ok(UpstreamReply {
                body: UpstreamBody::Stream(s),
                retries,
            }) => Ok(UpstreamReply {
                body: UpstreamBody::Stream(reframe(s, self.name.clone(), retries)),
                retries,
            }),
            Ok(reply) => Ok(reply),
            Err(UpstreamError::Status {
                provider,
                status,
                body,
                retry_after_secs,
                retries,
            }) => Err(UpstreamError::Status {
                provider,
                status,
                body: error_body(status, &body),
                retry_after_secs,
                retries,
            }),
            Err(e) => Err(e),
        }
    }
}

/// The Bedrock exception type a status stands for (each type has its own status).
fn type_of_status(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// Re-write a Bedrock error body as `{"message", "error": {"type", "message"}}` (see the
/// module docs). A body that is not JSON keeps only the status-derived type.
fn error_body(status: u16, body: &[u8]) -> Bytes {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    // `__type` may be `com.amazon.coral…#ThrottlingException` or `Throttling…:http://…`.
    let ty = v
        .get("__type")
        .and_then(Value::as_str)
        .map(|t| {
            let t = t.rsplit('#').next().unwrap_or(t);
            t.split(':').next().unwrap_or(t)
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| type_of_status(status));
    let mut error = json!({"type": ty, "message": message});
    // Bedrock reports an over-long prompt as a plain ValidationException; the code lets the
    // core classify it as a context overflow (what clients and fallback act on).
    let lower = message.to_ascii_lowercase();
    if ty == "ValidationException"
        && (lower.contains("too long")
            || lower.contains("context length")
            || lower.contains("context window"))
    {
        error["code"] = json!("context_length_exceeded");
    }
    Bytes::from(json!({"message": message, "error": error}).to_string())
}

/// The event stream re-framed as SSE (see the module docs); a corrupt or truncated message
/// ends it with a `Network` item.
fn reframe(
    inner: BoxStream<'static, Result<Bytes, UpstreamError>>,
    provider: String,
    retries: u32,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    stream::unfold(Some((inner, Decoder::default())), move |state| {
        let provider = provider.clone();
        async move {
            let (mut inner, mut decoder) = state?;
            let broken = |message: String| {
                tracing::warn!(provider = %provider, error = %message, "bedrock event stream broken");
                Some((
                    Err(UpstreamError::Network {
                        provider: provider.clone(),
                        message,
                        retries,
                    }),
                    None,
                ))
            };
            loop {
                match inner.next().await {
                    Some(Ok(chunk)) => match decoder.push(&chunk) {
                        Ok(messages) if messages.is_empty() => {}
                        Ok(messages) => {
                            let sse: String = messages.iter().map(Message::to_sse).collect();
                            return Some((Ok(Bytes::from(sse)), Some((inner, decoder))));
                        }
                        Err(message) => return broken(message),
                    },
                    Some(Err(e)) => return Some((Err(e), None)),
                    None if decoder.has_partial() => {
                        return broken("stream ended inside an event-stream message".to_owned());
                    }
                    None => return None,
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_name_the_exception() {
        let b = error_body(429, br#"{"message":"Too many requests"}"#);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "ThrottlingException");
        assert_eq!(v["message"], "Too many requests");
        let b = error_body(
            400,
            br#"{"__type":"com.amazon.bedrock#ValidationException","message":"bad"}"#,
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "ValidationException");
        assert!(v["error"].get("code").is_none());
        let b = error_body(
            400,
            br#"{"message":"Input is too long for requested model."}"#,
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        let v: Value = serde_json::from_slice(&error_body(500, b"<html>")).unwrap();
        assert_eq!(v["error"]["type"], "InternalServerException");
    }

    #[test]
    fn model_ids_are_encoded_into_the_path() {
        let p = BedrockProvider::new(BedrockConfig {
            name: "bedrock".into(),
            region: "us-east-1".into(),
            base_url: None,
            credentials: CredentialSource::Static {
                access_key_id: "AKID".into(),
                secret_access_key: "very-secret".into(),
                session_token: None,
            },
            timeouts: Timeouts::default(),
            retry: RetryPolicy::none(),
        })
        .unwrap();
        let url = p
            .url("us.anthropic.claude-haiku-4-5-20251001-v1:0", true)
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream"
        );
        assert_eq!(host_header(&url), "bedrock-runtime.us-east-1.amazonaws.com");
        let shown = format!("{p:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }
}
