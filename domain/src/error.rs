//! Every error the gateway can answer a client with, and how each renders per inbound shape.
//!
//! Invariant: every error response is a JSON envelope in the inbound shape — OpenAI
//! `{"error":{"message","type","code"}}` (Chat Completions and Responses alike, as the real
//! API) or Anthropic `{"type":"error","error":{"type","message"}}`.
//! Upstream error text reaches a client only on same-shape traffic, where the client speaks
//! the upstream's own API and recovers by matching its wording ("prompt is too long"):
//! [`GatewayError::UpstreamRelayed`] carries that body unchanged. It is never logged or traced
//! ([`GatewayError::message`] names the provider and the status only). Translated traffic gets
//! an envelope naming the provider, the status and the upstream error type.

use crate::canonical::Shape;
use serde_json::{Map, Value, json};

/// Classification of an upstream failure (stored as `error_class` in `llm.call_failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Auth,
    RateLimit,
    ContextOverflow,
    InvalidRequest,
    Network,
    ServerError,
    Cancelled,
    Other,
}

impl ErrorClass {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Auth => "auth",
            ErrorClass::RateLimit => "rate_limit",
            ErrorClass::ContextOverflow => "context_overflow",
            ErrorClass::InvalidRequest => "invalid_request",
            ErrorClass::Network => "network",
            ErrorClass::ServerError => "server_error",
            ErrorClass::Cancelled => "cancelled",
            ErrorClass::Other => "other",
        }
    }

    /// Whether a failure of this class may be retried before the first byte reached the client.
    #[must_use]
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimit | ErrorClass::ServerError | ErrorClass::Network
        )
    }

    /// Classify an upstream HTTP error from its status and (optional) error body.
    ///
    /// Status decides first (401/403 auth, 408 network, 413 context overflow, 429 rate limit,
    /// 5xx server error, other 4xx invalid request); the provider's own error `type`/`code`
    /// refines it (Anthropic `overloaded_error` is a rate limit, OpenAI
    /// `context_length_exceeded` is a context overflow, …).
    #[must_use]
    pub fn classify_upstream(status: u16, body: &[u8]) -> ErrorClass {
        let by_status = match status {
            401 | 403 => ErrorClass::Auth,
            408 => ErrorClass::Network,
            413 => ErrorClass::ContextOverflow,
            429 | 529 => ErrorClass::RateLimit,
            500..=599 => ErrorClass::ServerError,
            400..=499 => ErrorClass::InvalidRequest,
            _ => ErrorClass::Other,
        };
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return by_status;
        };
        let err = v.get("error").unwrap_or(&Value::Null);
        let ty = err.get("type").and_then(Value::as_str).unwrap_or("");
        let code = err.get("code").and_then(Value::as_str).unwrap_or("");
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        match (ty, code) {
            ("overloaded_error" | "rate_limit_error", _) | (_, "rate_limit_exceeded") => {
                ErrorClass::RateLimit
            }
            ("authentication_error" | "permission_error", _) | (_, "invalid_api_key") => {
                ErrorClass::Auth
            }
            (_, "context_length_exceeded") => ErrorClass::ContextOverflow,
            ("invalid_request_error", _)
                if msg.contains("context")
                    || msg.contains("tokens exceeds")
                    || msg.contains("too large")
                    || msg.contains("too long") =>
            {
                ErrorClass::ContextOverflow
            }
            ("api_error" | "server_error", _) => ErrorClass::ServerError,
            _ => by_status,
        }
    }
}

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    /// The request body or a header is malformed; the message names the field.
    InvalidRequest {
        message: String,
    },
    /// No model matches; lists what is available.
    ModelNotFound {
        model: String,
        reason: String,
        available: Vec<String>,
    },
    /// The key may not use this model.
    ModelNotAllowed {
        model: String,
        key_id: String,
        /// The budget scope whose allow-list refused (`team 'platform'`); `None` = the key's
        /// own list.
        scope: Option<String>,
    },
    /// Missing or unknown gateway key.
    InvalidApiKey,
    /// The key was revoked, or its rotation grace period lapsed.
    KeyRevoked {
        key_id: String,
        revoked_at: Option<String>,
    },
    /// The key's own expiry (`expires_at`) has passed.
    KeyExpired {
        key_id: String,
        expires_at: String,
    },
    /// The upstream provider failed.
    Upstream {
        class: ErrorClass,
        provider: String,
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// An upstream error answered to a client of the same shape as the upstream wrote it
    /// (status and JSON body), `Retry-After` included.
    UpstreamRelayed {
        class: ErrorClass,
        provider: String,
        status: u16,
        body: Value,
        retry_after_secs: Option<u64>,
    },
    /// The client took too long to send its request body.
    RequestTimeout {
        seconds: u64,
    },
    /// A spend cap of the key or of one of its scopes (user, team, customer, org) is reached.
    QuotaExceeded {
        /// The cap's name (`metis_domain::budgets::cap_name`): `key_daily`, `team_monthly`, …
        scope: &'static str,
        limit_usd: String,
        current_usd: String,
    },
    /// A gateway rate limit (per key or per client IP) denied the request.
    RateLimited {
        /// `per_key` or `per_ip`.
        scope: &'static str,
        rpm: u32,
        retry_after_secs: u64,
    },
    /// A token-per-minute limit (of the key, its user or its team) cannot cover the request's
    /// estimate.
    TokenRateLimited {
        /// `key_tpm`, `user_tpm` or `team_tpm`.
        scope: &'static str,
        tpm: u32,
        retry_after_secs: u64,
    },
    /// Body above the configured limit.
    PayloadTooLarge {
        limit_bytes: u64,
    },
    NotFound {
        path: String,
    },
    MethodNotAllowed {
        method: String,
        path: String,
    },
    /// The gateway is shutting down or saturated.
    Unavailable {
        message: String,
    },
    /// The spend store shared by the fleet did not answer, so a capped key's caps cannot be
    /// checked, and `--spend-outage fail-closed` refuses rather than risk passing a cap.
    SpendStoreUnavailable {
        key_id: String,
    },
    /// A bug or an unexpected backend failure; details are logged, not returned.
    Internal,
}

/// The `Retry-After` of a refusal for an unavailable spend store: the gateway retries the
/// store about this often, so a client retrying sooner would only be refused again.
pub const SPEND_STORE_RETRY_AFTER_SECS: u64 = 1;

/// A rendered error: status, JSON body and an optional `Retry-After` value.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedError {
    pub status: u16,
    pub body: Value,
    pub retry_after_secs: Option<u64>,
}

impl GatewayError {
    /// HTTP status of this error.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidRequest { .. } | GatewayError::ModelNotFound { .. } => 400,
            GatewayError::ModelNotAllowed { .. } => 403,
            GatewayError::InvalidApiKey
            | GatewayError::KeyRevoked { .. }
            | GatewayError::KeyExpired { .. } => 401,
            GatewayError::Upstream { class, .. } => match class {
                ErrorClass::Auth => 401,
                ErrorClass::RateLimit => 429,
                ErrorClass::ContextOverflow | ErrorClass::InvalidRequest => 400,
                ErrorClass::Network => 502,
                ErrorClass::ServerError => 503,
                ErrorClass::Cancelled => 499,
                ErrorClass::Other => 500,
            },
            GatewayError::UpstreamRelayed { status, .. } => *status,
            GatewayError::RateLimited { .. }
            | GatewayError::TokenRateLimited { .. }
            | GatewayError::QuotaExceeded { .. } => 429,
            GatewayError::RequestTimeout { .. } => 408,
            GatewayError::PayloadTooLarge { .. } => 413,
            GatewayError::NotFound { .. } => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::Unavailable { .. } | GatewayError::SpendStoreUnavailable { .. } => 503,
            GatewayError::Internal => 500,
        }
    }

    /// Human-readable message (never contains secrets or prompt text).
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            GatewayError::InvalidRequest { message } => message.clone(),
            GatewayError::ModelNotFound {
                model,
                reason,
                available,
            } => format!(
                "model '{model}' is not available: {reason}; available models: {}",
                if available.is_empty() {
                    "(none)".to_owned()
                } else {
                    available.join(", ")
                }
            ),
            GatewayError::ModelNotAllowed {
                model,
                key_id,
                scope: None,
            } => {
                format!("gateway key {key_id} is not allowed to use model '{model}'")
            }
            GatewayError::ModelNotAllowed {
                model,
                key_id,
                scope: Some(scope),
            } => {
                format!("model '{model}' is not allowed for {scope} (gateway key {key_id})")
            }
            GatewayError::InvalidApiKey => "invalid or missing API key".to_owned(),
            GatewayError::KeyRevoked { key_id, .. } => {
                format!("gateway key {key_id} has been revoked")
            }
            GatewayError::KeyExpired { key_id, expires_at } => {
                format!("gateway key {key_id} expired at {expires_at}")
            }
            GatewayError::Upstream { message, .. } => message.clone(),
            GatewayError::UpstreamRelayed {
                provider, status, ..
            } => format!("upstream {provider} returned HTTP {status} (body relayed to the client)"),
            GatewayError::RequestTimeout { seconds } => {
                format!("the request body was not received within {seconds}s")
            }
            GatewayError::QuotaExceeded {
                scope,
                limit_usd,
                current_usd,
            } => format!("{scope} cap of ${limit_usd} hit (${current_usd} spent)"),
            GatewayError::RateLimited {
                scope,
                rpm,
                retry_after_secs,
            } => {
                let who = if *scope == "per_ip" {
                    "per-ip"
                } else {
                    "per-key"
                };
                format!("{who} rate limit exceeded ({rpm} rpm); retry in {retry_after_secs}s")
            }
            GatewayError::TokenRateLimited {
                scope,
                tpm,
                retry_after_secs,
            } => format!(
                "{scope} token limit exceeded ({tpm} tokens per minute); retry in {retry_after_secs}s"
            ),
            GatewayError::PayloadTooLarge { limit_bytes } => {
                format!("request body exceeds the limit of {limit_bytes} bytes")
            }
            GatewayError::NotFound { path } => format!("no route for path '{path}'"),
            GatewayError::MethodNotAllowed { method, path } => {
                format!("method {method} is not allowed on '{path}'")
            }
            GatewayError::Unavailable { message } => message.clone(),
            GatewayError::SpendStoreUnavailable { key_id } => format!(
                "spend store unavailable: the spend caps of gateway key {key_id} cannot be checked, so the request is refused (--spend-outage fail-closed); retry shortly"
            ),
            GatewayError::Internal => "internal server error".to_owned(),
        }
    }

    /// A short, stable label for logs and metrics (the OpenAI `code` where there is one, else
    /// the error type); never carries request or upstream text.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::QuotaExceeded { .. } => "quota_exceeded",
            GatewayError::KeyRevoked { .. } => "key_revoked",
            GatewayError::KeyExpired { .. } => "key_expired",
            GatewayError::UpstreamRelayed { .. } => "upstream_error_relayed",
            _ => {
                let (ty, code, _) = self.kinds();
                code.unwrap_or(ty)
            }
        }
    }

    /// Render the error envelope for `shape`.
    #[must_use]
    pub fn render(&self, shape: Shape) -> RenderedError {
        let status = self.status();
        let message = self.message();
        let mut retry_after_secs = None;
        let body = match self {
            GatewayError::UpstreamRelayed {
                body,
                retry_after_secs: r,
                ..
            } => {
                retry_after_secs = *r;
                body.clone()
            }
            GatewayError::QuotaExceeded {
                scope,
                limit_usd,
                current_usd,
            } => {
                let inner = json!({
                    "code": "quota_exceeded",
                    "identity": "key",
                    "scope": scope,
                    "limit_usd": limit_usd,
                    "current_usd": current_usd,
                    "message": message,
                    "type": "rate_limit_error",
                });
                match shape {
                    Shape::OpenAi | Shape::Responses => json!({ "error": inner }),
                    Shape::Anthropic => json!({ "type": "error", "error": inner }),
                }
            }
            GatewayError::RateLimited {
                scope,
                retry_after_secs: secs,
                ..
            } => {
                retry_after_secs = Some(*secs);
                match shape {
                    Shape::OpenAi | Shape::Responses => json!({"error": {
                        "code": "rate_limit_exceeded",
                        "type": "rate_limit_error",
                        "message": message,
                        "scope": scope,
                        "retry_after_seconds": secs,
                    }}),
                    Shape::Anthropic => json!({
                        "type": "error",
                        "error": { "type": "rate_limit_error", "message": message },
                    }),
                }
            }
            GatewayError::TokenRateLimited {
                scope,
                tpm,
                retry_after_secs: secs,
            } => {
                retry_after_secs = Some(*secs);
                // Same fields in both shapes: the scope and limit tell the client which limit
                // to wait for (both SDKs keep unknown error fields).
                let inner = json!({
                    "code": "rate_limit_exceeded",
                    "type": "rate_limit_error",
                    "message": message,
                    "scope": scope,
                    "tpm": tpm,
                    "retry_after_seconds": secs,
                });
                match shape {
                    Shape::OpenAi | Shape::Responses => json!({ "error": inner }),
                    Shape::Anthropic => json!({ "type": "error", "error": inner }),
                }
            }
            GatewayError::KeyRevoked { key_id, revoked_at } => {
                // Same body for both shapes except `type`, as the original; it carries the key
                // id so operators can correlate with `list-keys`.
                let ty = match shape {
                    Shape::OpenAi | Shape::Responses => "invalid_request_error",
                    Shape::Anthropic => "authentication_error",
                };
                let inner = json!({
                    "code": "key_revoked",
                    "key_id": key_id,
                    "revoked_at": revoked_at,
                    "message": message,
                    "type": ty,
                });
                match shape {
                    Shape::OpenAi | Shape::Responses => json!({ "error": inner }),
                    Shape::Anthropic => json!({ "type": "error", "error": inner }),
                }
            }
            GatewayError::KeyExpired { key_id, expires_at } => {
                // The shape of `key_revoked`, with its own code, so clients and dashboards can
                // tell "ask for a new key" from "this key was withdrawn".
                let ty = match shape {
                    Shape::OpenAi | Shape::Responses => "invalid_request_error",
                    Shape::Anthropic => "authentication_error",
                };
                let inner = json!({
                    "code": "key_expired",
                    "key_id": key_id,
                    "expires_at": expires_at,
                    "message": message,
                    "type": ty,
                });
                match shape {
                    Shape::OpenAi | Shape::Responses => json!({ "error": inner }),
                    Shape::Anthropic => json!({ "type": "error", "error": inner }),
                }
            }
            _ => {
                let (openai_type, openai_code, anthropic_type) = self.kinds();
                // A 503 (every deployment of a route ejected, or an upstream's own 503) says
                // when to come back as well as a 429 does.
                if let GatewayError::Upstream {
                    class: ErrorClass::RateLimit | ErrorClass::ServerError,
                    retry_after_secs: r,
                    ..
                } = self
                {
                    retry_after_secs = *r;
                }
                if let GatewayError::SpendStoreUnavailable { .. } = self {
                    retry_after_secs = Some(SPEND_STORE_RETRY_AFTER_SECS);
                }
                match shape {
                    Shape::OpenAi | Shape::Responses => {
                        let mut inner = Map::new();
                        inner.insert("message".into(), Value::String(message));
                        inner.insert("type".into(), Value::String(openai_type.into()));
                        inner.insert(
                            "code".into(),
                            openai_code.map_or(Value::Null, |c| Value::String(c.into())),
                        );
                        if let GatewayError::ModelNotFound { available, .. } = self {
                            inner.insert("available_models".into(), json!(available));
                        }
                        json!({ "error": inner })
                    }
                    Shape::Anthropic => json!({
                        "type": "error",
                        "error": { "type": anthropic_type, "message": message },
                    }),
                }
            }
        };
        RenderedError {
            status,
            body,
            retry_after_secs,
        }
    }

    /// (OpenAI `type`, OpenAI `code`, Anthropic `type`).
    fn kinds(&self) -> (&'static str, Option<&'static str>, &'static str) {
        match self {
            GatewayError::InvalidRequest { .. } => {
                ("invalid_request_error", None, "invalid_request_error")
            }
            GatewayError::ModelNotFound { .. } => (
                "invalid_request_error",
                Some("model_not_found"),
                "not_found_error",
            ),
            GatewayError::ModelNotAllowed { .. } => (
                "invalid_request_error",
                Some("model_not_allowed"),
                "permission_error",
            ),
            GatewayError::InvalidApiKey
            | GatewayError::KeyRevoked { .. }
            | GatewayError::KeyExpired { .. } => (
                "invalid_request_error",
                Some("invalid_api_key"),
                "authentication_error",
            ),
            GatewayError::Upstream { class, .. } | GatewayError::UpstreamRelayed { class, .. } => {
                match class {
                    ErrorClass::Auth => (
                        "invalid_request_error",
                        Some("upstream_auth_failed"),
                        "authentication_error",
                    ),
                    ErrorClass::RateLimit => (
                        "rate_limit_error",
                        Some("rate_limit_exceeded"),
                        "rate_limit_error",
                    ),
                    ErrorClass::ContextOverflow => (
                        "invalid_request_error",
                        Some("context_length_exceeded"),
                        "invalid_request_error",
                    ),
                    ErrorClass::InvalidRequest => {
                        ("invalid_request_error", None, "invalid_request_error")
                    }
                    ErrorClass::Network => ("api_error", Some("upstream_unreachable"), "api_error"),
                    ErrorClass::ServerError => {
                        ("api_error", Some("upstream_error"), "overloaded_error")
                    }
                    ErrorClass::Cancelled | ErrorClass::Other => ("api_error", None, "api_error"),
                }
            }
            GatewayError::RequestTimeout { .. } => (
                "invalid_request_error",
                Some("request_timeout"),
                "invalid_request_error",
            ),
            GatewayError::RateLimited { .. }
            | GatewayError::TokenRateLimited { .. }
            | GatewayError::QuotaExceeded { .. } => (
                "rate_limit_error",
                Some("rate_limit_exceeded"),
                "rate_limit_error",
            ),
            GatewayError::PayloadTooLarge { .. } => (
                "invalid_request_error",
                Some("request_too_large"),
                "request_too_large",
            ),
            GatewayError::NotFound { .. } => (
                "invalid_request_error",
                Some("not_found"),
                "not_found_error",
            ),
            GatewayError::MethodNotAllowed { .. } => (
                "invalid_request_error",
                Some("method_not_allowed"),
                "invalid_request_error",
            ),
            GatewayError::Unavailable { .. } => {
                ("api_error", Some("unavailable"), "overloaded_error")
            }
            GatewayError::SpendStoreUnavailable { .. } => {
                ("api_error", Some("spend_store_unavailable"), "api_error")
            }
            GatewayError::Internal => ("api_error", Some("internal_error"), "api_error"),
        }
    }
}

/// Shorthand for an [`GatewayError::InvalidRequest`] naming a field.
#[must_use]
pub fn invalid(message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidRequest {
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_overloaded_is_a_rate_limit() {
        let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#;
        assert_eq!(
            ErrorClass::classify_upstream(529, body),
            ErrorClass::RateLimit
        );
    }

    #[test]
    fn openai_context_length_is_context_overflow() {
        let body = br#"{"error":{"message":"too many","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert_eq!(
            ErrorClass::classify_upstream(400, body),
            ErrorClass::ContextOverflow
        );
    }

    #[test]
    fn garbage_body_falls_back_to_status() {
        assert_eq!(
            ErrorClass::classify_upstream(502, b"<html>"),
            ErrorClass::ServerError
        );
        assert_eq!(ErrorClass::classify_upstream(408, b""), ErrorClass::Network);
    }

    #[test]
    fn invalid_key_envelopes_match_each_api() {
        let o = GatewayError::InvalidApiKey.render(Shape::OpenAi);
        assert_eq!(o.status, 401);
        assert_eq!(o.body["error"]["code"], "invalid_api_key");
        let a = GatewayError::InvalidApiKey.render(Shape::Anthropic);
        assert_eq!(a.body["type"], "error");
        assert_eq!(a.body["error"]["type"], "authentication_error");
    }

    #[test]
    fn token_limit_refusals_name_scope_and_limit_in_both_shapes() {
        let e = GatewayError::TokenRateLimited {
            scope: "team_tpm",
            tpm: 1000,
            retry_after_secs: 7,
        };
        for shape in [Shape::OpenAi, Shape::Responses, Shape::Anthropic] {
            let r = e.render(shape);
            assert_eq!((r.status, r.retry_after_secs), (429, Some(7)));
            let inner = &r.body["error"];
            assert_eq!(inner["code"], "rate_limit_exceeded");
            assert_eq!(inner["type"], "rate_limit_error");
            assert_eq!(inner["scope"], "team_tpm");
            assert_eq!(inner["tpm"], 1000);
            assert_eq!(inner["retry_after_seconds"], 7);
            assert_eq!(
                inner["message"],
                "team_tpm token limit exceeded (1000 tokens per minute); retry in 7s"
            );
        }
        assert_eq!(e.render(Shape::Anthropic).body["type"], "error");
    }

    #[test]
    fn gateway_rate_limit_envelopes_follow_the_spec() {
        let e = GatewayError::RateLimited {
            scope: "per_key",
            rpm: 60,
            retry_after_secs: 3,
        };
        let o = e.render(Shape::OpenAi);
        assert_eq!((o.status, o.retry_after_secs), (429, Some(3)));
        assert_eq!(
            o.body["error"]["message"],
            "per-key rate limit exceeded (60 rpm); retry in 3s"
        );
        assert_eq!(o.body["error"]["scope"], "per_key");
        assert_eq!(o.body["error"]["retry_after_seconds"], 3);
        let a = e.render(Shape::Anthropic);
        assert_eq!(a.body["type"], "error");
        assert_eq!(a.body["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn an_unavailable_spend_store_is_a_503_naming_its_cause_in_both_shapes() {
        let e = GatewayError::SpendStoreUnavailable {
            key_id: "gk_1".into(),
        };
        let o = e.render(Shape::OpenAi);
        assert_eq!((o.status, o.retry_after_secs), (503, Some(1)));
        assert_eq!(o.body["error"]["code"], "spend_store_unavailable");
        assert_eq!(o.body["error"]["type"], "api_error");
        let message = o.body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("spend store unavailable") && message.contains("gk_1"),
            "{message}"
        );
        let a = e.render(Shape::Anthropic);
        assert_eq!((a.status, a.body["type"].as_str()), (503, Some("error")));
        assert_eq!(a.body["error"]["type"], "api_error");
        assert_eq!(a.body["error"]["message"], message);
        assert_eq!(e.code(), "spend_store_unavailable");
    }

    #[test]
    fn upstream_rate_limit_forwards_retry_after() {
        let e = GatewayError::Upstream {
            class: ErrorClass::RateLimit,
            provider: "anthropic".into(),
            message: "anthropic returned 429".into(),
            retry_after_secs: Some(7),
        };
        let r = e.render(Shape::OpenAi);
        assert_eq!((r.status, r.retry_after_secs), (429, Some(7)));
        assert_eq!(r.body["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn responses_clients_get_the_openai_envelope() {
        let errors = [
            invalid("input[2].call_id is required and must be a string"),
            GatewayError::KeyRevoked {
                key_id: "k1".into(),
                revoked_at: None,
            },
            GatewayError::KeyExpired {
                key_id: "k1".into(),
                expires_at: "2026-01-01T00:00:00+00:00".into(),
            },
            GatewayError::RateLimited {
                scope: "per_ip",
                rpm: 5,
                retry_after_secs: 2,
            },
            GatewayError::QuotaExceeded {
                scope: "key_daily",
                limit_usd: "1.00".into(),
                current_usd: "1.20".into(),
            },
        ];
        for e in errors {
            assert_eq!(e.render(Shape::Responses), e.render(Shape::OpenAi), "{e:?}");
            assert!(e.render(Shape::Responses).body.get("type").is_none());
        }
    }

    #[test]
    fn an_expired_key_gets_401_key_expired_in_both_shapes() {
        let e = GatewayError::KeyExpired {
            key_id: "gk_1".into(),
            expires_at: "2026-01-01T00:00:00+00:00".into(),
        };
        assert_eq!(e.code(), "key_expired");
        let o = e.render(Shape::OpenAi);
        assert_eq!(o.status, 401);
        assert_eq!(o.body["error"]["code"], "key_expired");
        assert_eq!(o.body["error"]["type"], "invalid_request_error");
        assert_eq!(o.body["error"]["expires_at"], "2026-01-01T00:00:00+00:00");
        let a = e.render(Shape::Anthropic);
        assert_eq!(a.status, 401);
        assert_eq!(a.body["type"], "error");
        assert_eq!(a.body["error"]["type"], "authentication_error");
        assert_eq!(a.body["error"]["code"], "key_expired");
    }
}
