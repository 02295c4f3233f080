//! What a request presents, read from its headers: the gateway key for the inbound shape,
//! trace context, session ids and the headers forwarded upstream.

use metis_domain::canonical::Shape;
use metis_domain::forwarding;
use metis_ports::gateway::InboundMeta;
use poem::Request;
use poem::http::header;

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
        Shape::OpenAi | Shape::Responses => bearer(req),
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

pub(super) fn meta(req: &Request, shape: Shape) -> InboundMeta {
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
        agent_session: AGENT_SESSION_HEADERS.iter().find_map(|h| {
            req.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }),
        forward_headers: req
            .headers()
            .iter()
            .filter(|(name, _)| forwarding::forwards(shape, name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
        query: req.uri().query().map(str::to_owned),
        no_fallback: req
            .headers()
            .get("x-metis-fallback")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let v = v.trim();
                ["off", "false", "0", "none"]
                    .iter()
                    .any(|o| v.eq_ignore_ascii_case(o))
            }),
    }
}

/// Coding agents' own session headers, read (in this order) when `x-metis-session-id` is
/// absent: Claude Code sends `X-Claude-Code-Session-Id` on every request, the Codex CLI
/// `session-id` (also as `thread-id`; `session_id` in releases before 0.171).
const AGENT_SESSION_HEADERS: [&str; 3] = ["x-claude-code-session-id", "session-id", "session_id"];

/// The shape a `GET /v1/models` caller speaks: Anthropic when it authenticates with
/// `x-api-key` or names an `anthropic-version`, as the Anthropic SDKs do.
pub(super) fn models_shape(req: &Request) -> Shape {
    if req.headers().contains_key("x-api-key") || req.headers().contains_key("anthropic-version") {
        Shape::Anthropic
    } else {
        Shape::OpenAi
    }
}
