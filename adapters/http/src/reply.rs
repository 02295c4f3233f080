//! Raw HTTP replies that still describe themselves in the OpenAPI document.
//!
//! Provider endpoints answer either a JSON body or an SSE stream on the same 200 status, and
//! forward bytes untouched, which poem-openapi's typed payloads cannot express. `RawReply`
//! wraps a finished `poem::Response` and implements `ApiResponse` by hand so the document
//! lists both media types under one 200 plus every error status with its envelope.

use bytes::Bytes;
use metis_domain::canonical::Shape;
use metis_domain::error::GatewayError;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{Body, IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::registry::{
    MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry,
};

/// A finished response (JSON or SSE) produced by the provider endpoints.
pub struct RawReply(pub Response);

impl IntoResponse for RawReply {
    fn into_response(self) -> Response {
        self.0
    }
}

fn any_schema() -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema::ANY))
}

fn json_media() -> MetaMediaType {
    MetaMediaType {
        content_type: "application/json",
        schema: any_schema(),
    }
}

/// A documented JSON answer with `status`.
fn json_answer(status: u16, description: &'static str) -> MetaResponse {
    MetaResponse {
        description,
        status: Some(status),
        status_range: None,
        content: vec![json_media()],
        headers: vec![],
    }
}

impl ApiResponse for RawReply {
    fn meta() -> MetaResponses {
        let error = json_answer;
        MetaResponses {
            responses: vec![
                MetaResponse {
                    description: "The completion: a JSON body, or an SSE stream when the request \
                                  sets `stream: true`.",
                    status: Some(200),
                    status_range: None,
                    content: vec![
                        json_media(),
                        MetaMediaType {
                            content_type: "text/event-stream",
                            schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new("string"))),
                        },
                    ],
                    headers: vec![],
                },
                error(
                    400,
                    "Malformed request (the message names the field) or unknown model.",
                ),
                error(401, "Missing, invalid or revoked gateway key."),
                error(403, "The key may not use the requested model."),
                error(
                    408,
                    "The request body was not received within the body timeout.",
                ),
                error(413, "Request body above the configured limit."),
                MetaResponse {
                    description: "Gateway rate limit (per key or per IP), spend cap reached \
                                  (`quota_exceeded`), or upstream rate limit; `Retry-After` tells \
                                  when to retry.",
                    status: Some(429),
                    status_range: None,
                    content: vec![json_media()],
                    headers: vec![MetaHeader {
                        name: "Retry-After".to_owned(),
                        description: Some("Seconds to wait before retrying.".to_owned()),
                        required: false,
                        deprecated: false,
                        schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new("integer"))),
                    }],
                },
                error(500, "Internal error (details are logged, not returned)."),
                error(502, "The upstream provider could not be reached."),
                error(
                    503,
                    "The upstream provider failed, the gateway is draining, or the spend store \
                     shared by the fleet is unavailable for a key with spend caps \
                     (`spend_store_unavailable`, `--spend-outage fail-closed`; `Retry-After` \
                     tells when to retry).",
                ),
            ],
        }
    }

    fn register(_registry: &mut Registry) {}
}

/// A finished `GET /v1/models[/{id}]` answer (a JSON body in the caller's shape).
pub struct ModelsReply(pub Response);

impl IntoResponse for ModelsReply {
    fn into_response(self) -> Response {
        self.0
    }
}

impl ApiResponse for ModelsReply {
    fn meta() -> MetaResponses {
        let answer = json_answer;
        MetaResponses {
            responses: vec![
                answer(
                    200,
                    "The models the key may use (a list), or one of them, in the caller's shape.",
                ),
                answer(400, "Bad pagination (`limit`, `after_id`, `before_id`)."),
                answer(401, "Missing, invalid or revoked gateway key."),
                answer(404, "No model with that id that this key may use."),
                answer(
                    429,
                    "Gateway rate limit or spend cap reached; `Retry-After` tells when to retry.",
                ),
                answer(500, "Internal error (details are logged, not returned)."),
                answer(
                    503,
                    "The gateway is draining or saturated, or the spend store shared by the \
                     fleet is unavailable for a key with spend caps (`spend_store_unavailable`).",
                ),
            ],
        }
    }

    fn register(_registry: &mut Registry) {}
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.into())
}

/// The error code of an error response (`GatewayError::code`), kept in the response's
/// extensions for the access log.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Render a gateway error in `shape`.
pub fn error_response(err: &GatewayError, shape: Shape) -> Response {
    let rendered = err.render(shape);
    let status = StatusCode::from_u16(rendered.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&rendered.body).unwrap_or_default();
    let mut resp = json_response(status, Bytes::from(body));
    if let Some(secs) = rendered.retry_after_secs
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp.extensions_mut().insert(ErrorCode(err.code()));
    resp
}

/// End a streamed (SSE) response with `final_frame` when `cut` resolves first: the frame is
/// sent after the last whole frame so far, then the body ends, so the client reads a complete
/// HTTP response whose last event says why the stream stopped (instead of a bare transport
/// cut). Dropping the inner stream releases what it holds (the upstream call is cancelled and
/// recorded as such). Responses that are not `text/event-stream` are returned unchanged.
pub fn cut_stream_on(
    mut resp: Response,
    cut: impl std::future::Future<Output = ()> + Send + 'static,
    final_frame: Bytes,
) -> Response {
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        return resp;
    }
    use futures_util::StreamExt;
    let inner = resp.take_body().into_bytes_stream().boxed();
    let state = (Some(inner), Box::pin(cut), Some(final_frame));
    let body = futures_util::stream::unfold(state, |(inner, mut cut, frame)| async move {
        let mut stream = inner?;
        tokio::select! {
            biased;
            () = &mut cut => {
                drop(stream);
                frame.map(|f| (Ok(f), (None, cut, None)))
            }
            item = stream.next() => item.map(|chunk| (chunk, (Some(stream), cut, frame))),
        }
    });
    resp.set_body(Body::from_bytes_stream(body));
    resp
}

/// The methods each documented path accepts, read from the OpenAPI document, for the `Allow`
/// header a 405 must carry (RFC 9110 §15.5.6). Built from the document so every endpoint
/// added to it is covered without a second list to keep in step.
#[derive(Debug, Clone, Default)]
pub struct AllowTable {
    /// Path templates split into segments (`{param}` matches any one segment), with their
    /// methods in upper case, comma-separated.
    routes: Vec<(Vec<String>, String)>,
}

impl AllowTable {
    /// Read the `paths` of an OpenAPI document (JSON text); an unreadable document gives an
    /// empty table.
    #[must_use]
    pub fn from_openapi(document: &str) -> Self {
        const METHODS: [&str; 8] = [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ];
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(document) else {
            return AllowTable::default();
        };
        let routes = doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, item)| {
                let mut methods: Vec<String> = METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| m.to_ascii_uppercase())
                    .collect();
                // poem answers HEAD wherever it answers GET.
                if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                    methods.push("HEAD".to_owned());
                }
                (segments(path), methods.join(", "))
            })
            .collect();
        AllowTable { routes }
    }

    /// The `Allow` value for a request path, if the path is documented.
    #[must_use]
    pub fn allowed(&self, path: &str) -> Option<&str> {
        let wanted = segments(path);
        self.routes
            .iter()
            .find(|(template, _)| {
                template.len() == wanted.len()
                    && template
                        .iter()
                        .zip(&wanted)
                        .all(|(t, w)| (t.starts_with('{') && t.ends_with('}')) || t == w)
            })
            .map(|(_, methods)| methods.as_str())
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_the_documented_methods_of_the_matching_template() {
        let doc = r#"{"paths": {
            "/v1/models": {"get": {}},
            "/admin/v1/keys": {"get": {}, "post": {}},
            "/admin/v1/keys/{key_id}/revoke": {"post": {}}
        }}"#;
        let t = AllowTable::from_openapi(doc);
        assert_eq!(t.allowed("/v1/models"), Some("GET, HEAD"));
        assert_eq!(t.allowed("/admin/v1/keys"), Some("GET, POST, HEAD"));
        assert_eq!(t.allowed("/admin/v1/keys/gk_1/revoke"), Some("POST"));
        assert_eq!(t.allowed("/admin/v1/keys/gk_1/other"), None);
        assert_eq!(t.allowed("/nope"), None);
    }
}
