//! JSON bodies for the requests hyper rejects before the application sees them.
//!
//! hyper answers a request head it cannot parse by itself, with an empty body: `400` (bad
//! request line, a control character in a header, bad version), `414` (URI above 65,534
//! bytes) and `431` (more than 100 headers, or a head above ~400 KiB). None of these limits
//! can be handed to the application (hyper never builds a request from such a head), so the
//! connection wrapper in [`crate::listener`] recognises hyper's automatic answer on its way
//! out and writes a JSON envelope instead, in the shape the request line implies
//! (`/v1/messages` → Anthropic, anything else → OpenAI), keeping the README's promise that
//! every error is a JSON envelope.
//!
//! The answer is recognised by what only hyper writes: the first bytes of a response on a
//! connection whose current request never reached the application, status 400/414/431,
//! `content-length: 0` and no body. The application never sends an empty 4xx (every error it
//! produces carries an envelope), so nothing the application writes is ever rewritten.

use metis_domain::canonical::Shape;
use serde_json::json;

/// How many bytes of a request head are kept to tell which API shape it was meant for
/// (`POST /v1/messages` and a little more).
pub const HEAD_PREFIX: usize = 32;

/// A rewritten rejection: the full response to write, and its status (for metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// `openai` or `anthropic` (the metric label).
    pub shape: &'static str,
    pub bytes: Vec<u8>,
}

/// If `out` is hyper's automatic answer to an unparsable request head, the JSON answer that
/// replaces it; `head_start` holds the first bytes the client sent for this request.
#[must_use]
pub fn rewrite(out: &[u8], head_start: &[u8]) -> Option<Rejection> {
    let status_line = out
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| out.strip_prefix(b"HTTP/1.0 "))?;
    let status = match status_line.get(..4)? {
        b"400 " => 400,
        b"414 " => 414,
        b"431 " => 431,
        _ => return None,
    };
    // The whole answer is the head: nothing follows the blank line.
    let end = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != out.len() {
        return None;
    }
    let head = String::from_utf8_lossy(out.get(..end + 2)?).to_ascii_lowercase();
    if !head.contains("\r\ncontent-length: 0\r\n") || head.contains("\r\ncontent-type:") {
        return None;
    }
    let shape = shape_of(head_start);
    let (reason, code, message) = match status {
        414 => (
            "URI Too Long",
            "uri_too_long",
            "the request URI is too long (at most 65534 bytes)",
        ),
        431 => (
            "Request Header Fields Too Large",
            "request_header_fields_too_large",
            "the request head is too large (at most 100 header fields and about 400 KiB)",
        ),
        _ => (
            "Bad Request",
            "malformed_request",
            "malformed HTTP request: the request line or a header field is invalid (for example a control character in a header value)",
        ),
    };
    let body = match shape {
        Shape::OpenAi | Shape::Responses => json!({"error": {
            "message": message,
            "type": "invalid_request_error",
            "code": code,
        }}),
        Shape::Anthropic => json!({
            "type": "error",
            "error": {"type": "invalid_request_error", "message": message},
        }),
    }
    .to_string();
    let mut bytes = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    let shape = shape.as_str();
    Some(Rejection {
        status,
        shape,
        bytes,
    })
}

/// The API shape a request head was meant for, from its request line.
fn shape_of(head_start: &[u8]) -> Shape {
    let mut parts = head_start.split(|b| *b == b' ');
    let _method = parts.next();
    match parts.next() {
        Some(path) if path.starts_with(b"/v1/messages") => Shape::Anthropic,
        _ => Shape::OpenAi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 05:12:13 GMT\r\n\r\n";

    fn body(r: &Rejection) -> serde_json::Value {
        let text = String::from_utf8_lossy(&r.bytes).into_owned();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn hyper_answers_become_envelopes_in_the_request_shape() {
        let r = rewrite(HYPER_431, b"GET /healthz HTTP/1.1\r\n").unwrap();
        assert_eq!(r.status, 431);
        assert!(r.bytes.starts_with(b"HTTP/1.1 431 "));
        assert_eq!(body(&r)["error"]["code"], "request_header_fields_too_large");
        let r = rewrite(HYPER_431, b"POST /v1/messages HTTP/1.1\r\n").unwrap();
        assert_eq!(body(&r)["type"], "error");
        assert_eq!(body(&r)["error"]["type"], "invalid_request_error");
        let text = String::from_utf8_lossy(&r.bytes).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", rest.len())));
    }

    #[test]
    fn application_answers_are_left_alone() {
        // An application 400 always has a body.
        let app = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(rewrite(app, b"POST /v1/chat/completions").is_none());
        // Head and body in one write, or an empty answer with another status.
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", b"GET /").is_none());
        assert!(rewrite(b"HTTP/1.1 100 Continue\r\n\r\n", b"POST /").is_none());
        // An incomplete head is not guessed at.
        assert!(
            rewrite(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
                b"GET /"
            )
            .is_none()
        );
    }
}
