//! Which client headers reach an upstream on same-shape traffic.
//!
//! A gateway is judged by the clients it does not break: SDKs and coding agents opt into
//! features with provider headers (`anthropic-beta` enables the body fields Claude Code sends;
//! `anthropic-version` pins the API contract; `OpenAI-Beta` selects preview behaviour). Those
//! are forwarded unchanged — unknown beta tokens included, the upstream validates them.
//!
//! Invariants:
//! - Only headers in the provider's own namespace are forwarded (`anthropic-*` to Anthropic,
//!   `openai-*` to OpenAI-compatible upstreams), and only when the client speaks the
//!   upstream's shape; translated traffic forwards none (a beta of one API means nothing to
//!   the other).
//! - Credentials never pass (`authorization`, `x-api-key`, `api-key`, cookies), nor headers
//!   that select the billing account of the gateway's own credential (`openai-organization`,
//!   `openai-project`): the upstream account is the operator's choice, not the client's.

use crate::canonical::Shape;

/// Headers never forwarded, whatever the shape (compared lower-case).
const NEVER: [&str; 6] = [
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "openai-organization",
    "openai-project",
];

/// Whether a client header named `name` is forwarded to an upstream that speaks `shape`
/// (the client's own shape). `name` is compared case-insensitively.
#[must_use]
pub fn forwards(shape: Shape, name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    if NEVER.contains(&lower.as_str()) {
        return false;
    }
    let prefix = match shape {
        Shape::Anthropic => "anthropic-",
        Shape::OpenAi | Shape::Responses => "openai-",
    };
    lower.starts_with(prefix) && lower.len() > prefix.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_headers_pass_credentials_do_not() {
        assert!(forwards(Shape::Anthropic, "anthropic-beta"));
        assert!(forwards(Shape::Anthropic, "Anthropic-Version"));
        assert!(!forwards(Shape::Anthropic, "x-api-key"));
        assert!(!forwards(Shape::Anthropic, "openai-beta"));
        assert!(forwards(Shape::OpenAi, "OpenAI-Beta"));
        assert!(!forwards(Shape::OpenAi, "OpenAI-Organization"));
        assert!(!forwards(Shape::OpenAi, "openai-project"));
        assert!(!forwards(Shape::OpenAi, "authorization"));
        assert!(!forwards(Shape::OpenAi, "anthropic-beta"));
        assert!(!forwards(Shape::OpenAi, "openai-"));
        assert!(!forwards(Shape::OpenAi, "x-stainless-lang"));
    }
}
