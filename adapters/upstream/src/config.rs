//! Configuration of an HTTP upstream provider: where it lives, how it authenticates, how long
//! the gateway waits for it and how often a failed call is retried.
//!
//! Invariants:
//! - The API key is never printed: `HttpProviderConfig`'s `Debug` shows `<redacted>` (or
//!   `<empty>`) in its place, and the header built from it is marked sensitive.
//! - Base URLs are accepted with or without a trailing slash; the endpoint path is appended
//!   after trimming it.
//! - Nothing here reads `OPENAI_BASE_URL` / `ANTHROPIC_BASE_URL`. Operators point *clients*
//!   at the gateway with those variables, often in the same environment the gateway runs in;
//!   honouring them here would make the gateway call itself in a loop. Base URLs come only from
//!   the gateway's own configuration (`with_base_url`).

use std::fmt;
use std::time::Duration;

use metis_ports::upstream::{Operation, WireFormat};

/// Default base URL of the Anthropic Messages API (the endpoint is `{base}/v1/messages`).
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// Default base URL of the OpenAI API (the endpoint is `{base}/chat/completions`).
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Default base URL of OpenRouter (OpenAI wire format).
pub const OPENROUTER_BASE_URL: &str = "https://openrouter.ai/api/v1";
/// `anthropic-version` header value sent to Anthropic.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// How long the gateway waits at each stage of an upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (+ TLS) connect. Default 10 s.
    pub connect: Duration,
    /// From sending the request until the response head (status line) arrives. Default 600 s,
    /// because a model may think for minutes before its first byte.
    pub response_head: Duration,
    /// Whole attempt of a non-streaming call: head plus the full body. Default 600 s.
    pub total: Duration,
    /// Longest silence between two chunks of a streaming body; when it fires the stream ends
    /// with an `UpstreamError::Network` item. Default 300 s. Streams have no total deadline.
    pub stream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            response_head: Duration::from_secs(600),
            total: Duration::from_secs(600),
            stream_idle: Duration::from_secs(300),
        }
    }
}

/// When and how long to wait before retrying a failed attempt. Retries happen only before any
/// byte was handed to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (total attempts = 1 + `max_retries`). Default 2.
    pub max_retries: u32,
    /// Backoff before retry `n` (0-based) is `base_backoff * 2^n`, ±25 % jitter. Default 500 ms.
    pub base_backoff: Duration,
    /// Upper bound of the computed backoff. Default 30 s.
    pub max_backoff: Duration,
    /// Longest upstream `Retry-After` the gateway is willing to wait out. A longer one is not
    /// waited for: the error goes back to the caller at once, `Retry-After` included, so the
    /// client can decide. Default 60 s.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    #[must_use]
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }
}

/// Everything an [`HttpProvider`](crate::HttpProvider) needs. Build it with [`anthropic`],
/// [`openai`] or [`openrouter`] and adjust with the `with_*` setters.
///
/// [`anthropic`]: HttpProviderConfig::anthropic
/// [`openai`]: HttpProviderConfig::openai
/// [`openrouter`]: HttpProviderConfig::openrouter
#[derive(Clone)]
pub struct HttpProviderConfig {
    /// Provider name as used in canonical ids and logs (`anthropic`, `openai`, …).
    pub name: String,
    /// Wire format; decides the endpoint path and the auth header.
    pub wire: WireFormat,
    /// Base URL, with or without a trailing slash.
    pub base_url: String,
    /// Upstream credential. Never logged. Empty means "send no auth header" (useful for local
    /// OpenAI-compatible servers such as Ollama or llama.cpp).
    pub api_key: String,
    /// Extra headers sent with every call (after the built-in ones).
    pub extra_headers: Vec<(String, String)>,
    /// Whether an OpenAI-wire upstream also serves the Responses API (`/responses`,
    /// `/responses/input_tokens`), so Responses clients are forwarded natively instead of
    /// being translated to Chat Completions. On for OpenAI's own API; off for other bases
    /// unless configured (`responses_api = true`).
    pub responses_api: bool,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
}

impl fmt::Debug for HttpProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.api_key.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        };
        f.debug_struct("HttpProviderConfig")
            .field("name", &self.name)
            .field("wire", &self.wire)
            .field("base_url", &self.base_url)
            .field("api_key", &key)
            .field("extra_headers", &self.extra_headers)
            .field("responses_api", &self.responses_api)
            .field("timeouts", &self.timeouts)
            .field("retry", &self.retry)
            .finish()
    }
}

impl HttpProviderConfig {
    fn new(name: &str, wire: WireFormat, base_url: &str, api_key: String) -> Self {
        Self {
            name: name.to_owned(),
            wire,
            base_url: base_url.to_owned(),
            api_key,
            extra_headers: Vec::new(),
            responses_api: false,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
        }
    }

    /// Anthropic Messages API: `POST {base}/v1/messages` with `x-api-key` and
    /// `anthropic-version: 2023-06-01`; base defaults to `https://api.anthropic.com`.
    #[must_use]
    pub fn anthropic(api_key: impl Into<String>) -> Self {
        Self::new(
            "anthropic",
            WireFormat::AnthropicMessages,
            ANTHROPIC_BASE_URL,
            api_key.into(),
        )
    }

    /// OpenAI Chat Completions: `POST {base}/chat/completions` with `Authorization: Bearer`;
    /// base defaults to `https://api.openai.com/v1`. Point `with_base_url` at vLLM, Ollama,
    /// llama.cpp, LM Studio or any other OpenAI-compatible server.
    #[must_use]
    pub fn openai(api_key: impl Into<String>) -> Self {
        let mut c = Self::new(
            "openai",
            WireFormat::OpenAiChat,
            OPENAI_BASE_URL,
            api_key.into(),
        );
        c.responses_api = true;
        c
    }

    /// OpenRouter: OpenAI wire format at `https://openrouter.ai/api/v1`, plus the attribution
    /// headers `HTTP-Referer: https://metis.local` and `X-Title: metis-gateway`.
    #[must_use]
    pub fn openrouter(api_key: impl Into<String>) -> Self {
        let mut c = Self::new(
            "openrouter",
            WireFormat::OpenAiChat,
            OPENROUTER_BASE_URL,
            api_key.into(),
        );
        c.extra_headers = vec![
            ("HTTP-Referer".to_owned(), "https://metis.local".to_owned()),
            ("X-Title".to_owned(), "metis-gateway".to_owned()),
        ];
        c
    }

    /// Rename the provider (e.g. `ollama` for an OpenAI-compatible local server).
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Replace the base URL (trailing slash optional).
    #[must_use]
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// Say whether the upstream serves the Responses API natively.
    #[must_use]
    pub fn with_responses_api(mut self, on: bool) -> Self {
        self.responses_api = on && self.wire == WireFormat::OpenAiChat;
        self
    }

    /// Add a header sent with every call.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_headers.push((name.into(), value.into()));
        self
    }

    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    #[must_use]
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.timeouts.connect = d;
        self
    }

    #[must_use]
    pub fn with_response_head_timeout(mut self, d: Duration) -> Self {
        self.timeouts.response_head = d;
        self
    }

    #[must_use]
    pub fn with_total_timeout(mut self, d: Duration) -> Self {
        self.timeouts.total = d;
        self
    }

    #[must_use]
    pub fn with_stream_idle_timeout(mut self, d: Duration) -> Self {
        self.timeouts.stream_idle = d;
        self
    }

    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    #[must_use]
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.retry.max_retries = max_retries;
        self
    }

    /// The full endpoint URL of model calls in the provider's own wire format.
    #[must_use]
    pub fn endpoint(&self) -> String {
        self.endpoint_for(self.wire, Operation::Generate)
            .unwrap_or_default()
    }

    /// The endpoint URL of `op` in `wire`, or `None` when this upstream does not serve it
    /// (the table is in [`Operation`]'s docs).
    #[must_use]
    pub fn endpoint_for(&self, wire: WireFormat, op: Operation) -> Option<String> {
        let path = match (self.wire, wire, op) {
            (WireFormat::AnthropicMessages, WireFormat::AnthropicMessages, Operation::Generate) => {
                "/v1/messages"
            }
            (
                WireFormat::AnthropicMessages,
                WireFormat::AnthropicMessages,
                Operation::CountTokens,
            ) => "/v1/messages/count_tokens",
            (WireFormat::OpenAiChat, WireFormat::OpenAiChat, Operation::Generate) => {
                "/chat/completions"
            }
            (WireFormat::OpenAiChat, WireFormat::OpenAiChat, Operation::Embeddings) => {
                "/embeddings"
            }
            (WireFormat::OpenAiChat, WireFormat::OpenAiResponses, Operation::Generate)
                if self.responses_api =>
            {
                "/responses"
            }
            (WireFormat::OpenAiChat, WireFormat::OpenAiResponses, Operation::CountTokens)
                if self.responses_api =>
            {
                "/responses/input_tokens"
            }
            _ => return None,
        };
        Some(format!("{}{path}", self.base_url.trim_end_matches('/')))
    }
}

/// Why an [`HttpProvider`](crate::HttpProvider) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The base URL is not an absolute `http`/`https` URL.
    #[error("invalid base URL '{url}' for provider {provider}: {reason}")]
    BaseUrl {
        provider: String,
        url: String,
        reason: String,
    },
    /// A header name or value cannot be sent (the value is not shown; it may be a secret).
    #[error("invalid header '{name}' for provider {provider}")]
    Header { provider: String, name: String },
    /// The HTTP client could not be initialised (e.g. TLS setup).
    #[error("cannot build HTTP client for provider {provider}: {reason}")]
    Client { provider: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ignores_a_trailing_slash() {
        let a = HttpProviderConfig::openai("k").with_base_url("http://h:1/v1");
        let b = HttpProviderConfig::openai("k").with_base_url("http://h:1/v1/");
        assert_eq!(a.endpoint(), "http://h:1/v1/chat/completions");
        assert_eq!(a.endpoint(), b.endpoint());
        let c = HttpProviderConfig::anthropic("k").with_base_url("http://h:1/");
        assert_eq!(c.endpoint(), "http://h:1/v1/messages");
    }

    #[test]
    fn defaults_point_at_the_real_apis() {
        assert_eq!(
            HttpProviderConfig::anthropic("k").endpoint(),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            HttpProviderConfig::openai("k").endpoint(),
            "https://api.openai.com/v1/chat/completions"
        );
        let or = HttpProviderConfig::openrouter("k");
        assert_eq!(
            or.endpoint(),
            "https://openrouter.ai/api/v1/chat/completions"
        );
        assert_eq!(or.wire, WireFormat::OpenAiChat);
        assert!(
            or.extra_headers
                .iter()
                .any(|(n, v)| n == "X-Title" && v == "metis-gateway")
        );
    }

    #[test]
    fn endpoints_per_operation() {
        let o = HttpProviderConfig::openai("k").with_base_url("http://h:1/v1");
        assert_eq!(
            o.endpoint_for(WireFormat::OpenAiResponses, Operation::Generate)
                .as_deref(),
            Some("http://h:1/v1/responses")
        );
        assert_eq!(
            o.endpoint_for(WireFormat::OpenAiResponses, Operation::CountTokens)
                .as_deref(),
            Some("http://h:1/v1/responses/input_tokens")
        );
        assert_eq!(
            o.endpoint_for(WireFormat::OpenAiChat, Operation::Embeddings)
                .as_deref(),
            Some("http://h:1/v1/embeddings")
        );
        let vllm = o.with_responses_api(false);
        assert_eq!(
            vllm.endpoint_for(WireFormat::OpenAiResponses, Operation::Generate),
            None
        );
        let a = HttpProviderConfig::anthropic("k").with_base_url("http://h:1");
        assert_eq!(
            a.endpoint_for(WireFormat::AnthropicMessages, Operation::CountTokens)
                .as_deref(),
            Some("http://h:1/v1/messages/count_tokens")
        );
        assert_eq!(
            a.endpoint_for(WireFormat::AnthropicMessages, Operation::Embeddings),
            None
        );
        assert!(!HttpProviderConfig::openrouter("k").responses_api);
    }

    #[test]
    fn debug_redacts_the_api_key() {
        let c = HttpProviderConfig::anthropic("sk-ant-very-secret-123");
        let s = format!("{c:?}");
        assert!(!s.contains("very-secret"), "{s}");
        assert!(s.contains("<redacted>"));
        assert!(format!("{:?}", HttpProviderConfig::openai("")).contains("<empty>"));
    }
}
