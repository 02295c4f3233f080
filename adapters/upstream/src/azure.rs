//! `AzureProvider`: Azure OpenAI deployments over the OpenAI Chat Completions wire.
//!
//! Calls go to `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=V`
//! (and `/embeddings`); the deployment is the request's upstream model id, percent-encoded as
//! one path segment. Azure ignores the `model` field of the body.
//!
//! Credentials, never logged (their headers are marked sensitive):
//! - `api-key: KEY`;
//! - an Entra ID bearer token given as is (`Authorization: Bearer …`), e.g. one minted by the
//!   platform for the process;
//! - the Entra ID client-credentials flow: the token is fetched from
//!   `{authority}/{tenant}/oauth2/v2.0/token` before the call, cached until five minutes
//!   before it expires (or half its lifetime, for short-lived ones), and refreshed under a lock
//!   so concurrent requests share one exchange. A failed refresh keeps using the current
//!   token while it is valid (retrying the exchange every 10 s). A 401 from Azure drops the
//!   cached token, so a token revoked early is replaced on the next request. A token that cannot be obtained
//!   fails the call as a network error naming the token endpoint's answer (never the secret).

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use metis_ports::upstream::{
    Operation, Provider, UpstreamError, UpstreamReply, UpstreamRequest, WireFormat,
};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::config::{ConfigError, RetryPolicy, Timeouts};
use crate::transport::{Transport, describe, secret_header};

/// The `api-version` used when none is configured (the GA version with tools, streaming usage
/// and structured outputs).
pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";
/// Where Entra ID tokens come from unless configured otherwise (public cloud).
pub const ENTRA_DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The scope an Azure OpenAI token is requested for.
pub const AZURE_COGNITIVE_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// A cached token is replaced this long before it expires, so no call carries a token that
/// expires in flight.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Longest wait for the token endpoint.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed refresh while the current token is still valid, the next attempt waits this
/// long, so an Entra outage neither stalls every request behind the exchange nor floods it.
const REFRESH_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Token error bodies are read up to this many bytes.
const TOKEN_ERROR_LIMIT: usize = 4096;

/// How the gateway authenticates to Azure OpenAI.
#[derive(Clone)]
pub enum AzureAuth {
    /// `api-key: KEY`.
    ApiKey(String),
    /// A ready Entra ID access token, sent as `Authorization: Bearer`.
    EntraToken(String),
    /// The Entra ID client-credentials flow.
    ClientCredentials(ClientCredentials),
}

impl fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureAuth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            AzureAuth::EntraToken(_) => f.write_str("EntraToken(<redacted>)"),
            AzureAuth::ClientCredentials(c) => c.fmt(f),
        }
    }
}

/// An app registration's client credentials.
#[derive(Clone)]
pub struct ClientCredentials {
    /// `https://login.microsoftonline.com` (or a sovereign cloud's authority).
    pub authority_url: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// Default [`AZURE_COGNITIVE_SCOPE`].
    pub scope: String,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("authority_url", &self.authority_url)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .finish()
    }
}

/// Everything an [`AzureProvider`] needs.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    /// Provider name (the canonical-id prefix: `azure:my-deployment`).
    pub name: String,
    /// The resource endpoint, `https://RES.openai.azure.com` (trailing slash optional).
    pub endpoint: String,
    pub api_version: String,
    pub auth: AzureAuth,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
}

impl AzureConfig {
    /// A provider named `azure` at `endpoint` with the default API version, timeouts and retries.
    #[must_use]
    pub fn new(endpoint: impl Into<String>, auth: AzureAuth) -> Self {
        Self {
            name: "azure".to_owned(),
            endpoint: endpoint.into(),
            api_version: AZURE_DEFAULT_API_VERSION.to_owned(),
            auth,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// A cached bearer header, when to replace it and when it stops working.
struct CachedToken {
    header: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Fetches and caches client-credentials tokens.
struct TokenSource {
    url: reqwest::Url,
    form: String,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

enum Auth {
    /// Sent as a default header of the client.
    Static,
    /// Boxed: the token source is large and lives once per provider.
    Entra(Box<TokenSource>),
}

/// An Azure OpenAI resource. Cheap to share behind an `Arc`.
pub struct AzureProvider {
    name: String,
    endpoint: reqwest::Url,
    api_version: String,
    auth: Auth,
    transport: Transport,
}

impl fmt::Debug for AzureProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = self.endpoint.clone();
        let _ = url.set_password(None);
        let _ = url.set_username("");
        f.debug_struct("AzureProvider")
            .field("name", &self.name)
            .field("endpoint", &url.as_str())
            .field("api_version", &self.api_version)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

fn base_url_error(name: &str, url: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BaseUrl {
        provider: name.to_owned(),
        url: url.to_owned(),
        reason: reason.into(),
    }
}

fn parse_http_url(name: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| base_url_error(name, url, e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(base_url_error(name, url, "scheme must be http or https"));
    }
    Ok(parsed)
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

impl AzureProvider {
    /// Build the provider and its connection pool.
    ///
    /// # Errors
    /// `ConfigError` when the endpoint or authority is not an absolute http(s) URL, a
    /// credential cannot be a header, or the TLS client cannot be initialised.
    pub fn new(config: AzureConfig) -> Result<Self, ConfigError> {
        let name = config.name.clone();
        let endpoint = parse_http_url(&name, &config.endpoint)?;
        if endpoint.cannot_be_a_base() {
            return Err(base_url_error(&name, &config.endpoint, "not a base URL"));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let bad = |h: &str| ConfigError::Header {
            provider: name.clone(),
            name: h.to_owned(),
        };
        let auth = match &config.auth {
            AzureAuth::ApiKey(key) => {
                let v = secret_header(key).ok_or_else(|| bad("api-key"))?;
                headers.insert(HeaderName::from_static("api-key"), v);
                Auth::Static
            }
            AzureAuth::EntraToken(token) => {
                let v = secret_header(&format!("Bearer {token}"))
                    .ok_or_else(|| bad("authorization"))?;
                headers.insert(header::AUTHORIZATION, v);
                Auth::Static
            }
            AzureAuth::ClientCredentials(c) => {
                let mut url = parse_http_url(&name, &c.authority_url)?;
                url.path_segments_mut()
                    .map_err(|()| base_url_error(&name, &c.authority_url, "not a base URL"))?
                    .pop_if_empty()
                    .extend([c.tenant_id.as_str(), "oauth2", "v2.0", "token"]);
                let form = form_encode(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", &c.client_id),
                    ("client_secret", &c.client_secret),
                    ("scope", &c.scope),
                ]);
                Auth::Entra(Box::new(TokenSource {
                    url,
                    form,
                    cached: tokio::sync::Mutex::new(None),
                }))
            }
        };
        let transport = Transport::new(&name, config.timeouts, config.retry, headers)?;
        Ok(Self {
            name,
            endpoint,
            api_version: config.api_version,
            auth,
            transport,
        })
    }

    /// The URL of `op` on `deployment`, or `None` for an operation Azure does not serve here.
    fn url_for(&self, deployment: &str, op: Operation) -> Option<reqwest::Url> {
        let tail: &[&str] = match op {
            Operation::Generate => &["chat", "completions"],
            Operation::Embeddings => &["embeddings"],
            Operation::CountTokens => return None,
        };
        let mut url = self.endpoint.clone();
        {
            let mut segments = url.path_segments_mut().ok()?;
            segments
                .pop_if_empty()
                .extend(["openai", "deployments", deployment])
                .extend(tail);
        }
        url.set_query(None);
        url.query_pairs_mut()
            .append_pair("api-version", &self.api_version);
        Some(url)
    }

    /// The `Authorization` header of a client-credentials call: the cached token, or a fresh
    /// one when it is missing or due for refresh.
    async fn bearer(&self, source: &TokenSource) -> Result<HeaderValue, String> {
        let mut cached = source.cached.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.header.clone());
        }
        match self.fetch_token(source).await {
            Ok(fresh) => {
                let header = fresh.header.clone();
                *cached = Some(fresh);
                Ok(header)
            }
            // A failed refresh is not an outage while the current token still works.
            Err(message) => match cached.as_mut() {
                Some(t) if Instant::now() < t.expires_at => {
                    tracing::warn!(
                        provider = %self.name,
                        error = %message,
                        "Entra ID token refresh failed; the current token is used until it expires"
                    );
                    t.refresh_at = (Instant::now() + REFRESH_RETRY_AFTER).min(t.expires_at);
                    Ok(t.header.clone())
                }
                _ => Err(message),
            },
        }
    }

    async fn fetch_token(&self, source: &TokenSource) -> Result<CachedToken, String> {
        let what = format!("Entra ID token request to {}", source.url);
        let call = self
            .transport
            .client()
            .post(source.url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(source.form.clone())
            .send();
        let response = match tokio::time::timeout(TOKEN_TIMEOUT, call).await {
            Err(_) => return Err(format!("{what}: no answer within 30s")),
            Ok(Err(e)) => return Err(format!("{what}: {}", describe(&e))),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let body = match tokio::time::timeout(TOKEN_TIMEOUT, response.bytes()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(format!("{what}: reading the answer: {}", describe(&e))),
            Err(_) => return Err(format!("{what}: answer body stalled")),
        };
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            // Entra's error body names the problem (`invalid_client`, `AADSTS7000215: Invalid
            // client secret provided…`) and never echoes the secret.
            let error = json.get("error").and_then(Value::as_str).unwrap_or("");
            let description = json
                .get("error_description")
                .and_then(Value::as_str)
                .map_or_else(
                    || String::from_utf8_lossy(&body[..body.len().min(TOKEN_ERROR_LIMIT)]).into(),
                    |d| d.lines().next().unwrap_or(d).to_owned(),
                );
            return Err(format!(
                "{what} failed with HTTP {}: {error} {description}",
                status.as_u16()
            )
            .trim_end()
            .to_owned());
        }
        let Some(token) = json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        else {
            return Err(format!("{what}: the answer has no access_token"));
        };
        // `expires_in` is a number (sometimes a string, from older endpoints).
        let expires_in = json
            .get("expires_in")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(0);
        let lifetime = Duration::from_secs(expires_in);
        let margin = TOKEN_REFRESH_MARGIN.min(lifetime / 2);
        let header = secret_header(&format!("Bearer {token}"))
            .ok_or_else(|| format!("{what}: the access_token cannot be a header"))?;
        tracing::debug!(
            provider = %self.name,
            expires_in,
            "fetched an Entra ID token"
        );
        let now = Instant::now();
        Ok(CachedToken {
            header,
            refresh_at: now + lifetime.saturating_sub(margin),
            expires_at: now + lifetime,
        })
    }

    fn not_served(&self, message: &'static str) -> UpstreamError {
        UpstreamError::Status {
            provider: self.name.clone(),
            status: 404,
            body: Bytes::from(
                serde_json::json!({"error": {"code": "404", "message": message}}).to_string(),
            ),
            retry_after_secs: None,
            retries: 0,
        }
    }
}

#[async_trait]
impl Provider for AzureProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn wire(&self) -> WireFormat {
        WireFormat::OpenAiChat
    }

    fn supports(&self, wire: WireFormat, op: Operation) -> bool {
        wire == WireFormat::OpenAiChat && matches!(op, Operation::Generate | Operation::Embeddings)
    }

    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamReply, UpstreamError> {
        if request.wire != WireFormat::OpenAiChat {
            return Err(self.not_served("operation not served by this upstream"));
        }
        if request.model.is_empty() {
            return Err(self.not_served("no deployment name in the request"));
        }
        let Some(url) = self.url_for(&request.model, request.op) else {
            return Err(self.not_served("operation not served by this upstream"));
        };
        let bearer = match &self.auth {
            Auth::Static => None,
            Auth::Entra(source) => match self.bearer(source).await {
                Ok(h) => Some(h),
                Err(message) => {
                    tracing::warn!(provider = %self.name, error = %message, "no Entra ID token");
                    return Err(UpstreamError::Network {
                        provider: self.name.clone(),
                        message,
                        retries: 0,
                    });
                }
            },
        };
        let result = self
            .transport
            .send(&request, || {
                let builder = self
                    .transport
                    .post(url.clone(), &request, request.body.clone());
                Ok(match &bearer {
                    Some(h) => builder.header(header::AUTHORIZATION, h.clone()),
                    None => builder,
                })
            })
            .await;
        if let (Auth::Entra(source), Err(UpstreamError::Status { status: 401, .. })) =
            (&self.auth, &result)
        {
            // The token was refused (revoked, or the clock is off): fetch a new one next time.
            *source.cached.lock().await = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(endpoint: &str, auth: AzureAuth) -> AzureProvider {
        let mut c = AzureConfig::new(endpoint, auth);
        c.api_version = "2024-10-21".to_owned();
        AzureProvider::new(c).expect("valid config")
    }

    #[test]
    fn deployment_urls_carry_the_api_version_and_encode_the_deployment() {
        let p = provider(
            "https://res.openai.azure.com/",
            AzureAuth::ApiKey("k".into()),
        );
        assert_eq!(
            p.url_for("gpt-4o", Operation::Generate).map(String::from),
            Some(
                "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
                    .to_owned()
            )
        );
        assert_eq!(
            p.url_for("a b/c", Operation::Embeddings).map(String::from),
            Some(
                "https://res.openai.azure.com/openai/deployments/a%20b%2Fc/embeddings?api-version=2024-10-21"
                    .to_owned()
            )
        );
        assert!(p.url_for("gpt-4o", Operation::CountTokens).is_none());
        assert!(p.supports(WireFormat::OpenAiChat, Operation::Embeddings));
        assert!(!p.supports(WireFormat::OpenAiResponses, Operation::Generate));
    }

    #[test]
    fn an_endpoint_with_a_path_keeps_it() {
        let p = provider("http://127.0.0.1:9/proxy", AzureAuth::ApiKey("k".into()));
        assert_eq!(
            p.url_for("d", Operation::Generate).map(String::from),
            Some(
                "http://127.0.0.1:9/proxy/openai/deployments/d/chat/completions?api-version=2024-10-21"
                    .to_owned()
            )
        );
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for url in ["res.openai.azure.com", "ftp://x/", "mailto:a@b"] {
            let c = AzureConfig::new(url, AzureAuth::ApiKey("k".into()));
            assert!(AzureProvider::new(c).is_err(), "{url}");
        }
    }

    #[test]
    fn debug_output_never_shows_credentials() {
        let auths = [
            AzureAuth::ApiKey("key-very-secret".into()),
            AzureAuth::EntraToken("tok-very-secret".into()),
            AzureAuth::ClientCredentials(ClientCredentials {
                authority_url: ENTRA_DEFAULT_AUTHORITY.into(),
                tenant_id: "t".into(),
                client_id: "c".into(),
                client_secret: "sec-very-secret".into(),
                scope: AZURE_COGNITIVE_SCOPE.into(),
            }),
        ];
        for auth in auths {
            let c = AzureConfig::new("https://r.openai.azure.com", auth);
            let s = format!("{c:?} {:?}", AzureProvider::new(c.clone()).expect("valid"));
            assert!(!s.contains("very-secret"), "{s}");
        }
    }

    #[test]
    fn the_token_form_is_url_encoded() {
        let f = form_encode(&[
            ("client_secret", "a&b=c d+"),
            ("scope", AZURE_COGNITIVE_SCOPE),
        ]);
        assert_eq!(
            f,
            "client_secret=a%26b%3Dc+d%2B&scope=https%3A%2F%2Fcognitiveservices.azure.com%2F.default"
        );
    }
}
