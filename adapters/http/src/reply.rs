//! Raw HTTP replies that still describe themselves in the OpenAPI document.
//!
//! Provider endpoints answer either a JSON body or an SSE stream on the same 200 status, and
//! forward bytes untouched, which poem-openapi's typed payloads cannot express. `RawReply`
//! wraps a finished `poem::Response` and implements `ApiResponse` by hand so the document
//! lists both media types under one 200 plus every error status with its envelope.

use bytes::Bytes;
use gw_domain::canonical::Shape;
use gw_domain::error::GatewayError;
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

impl ApiResponse for RawReply {
    fn meta() -> MetaResponses {
        let error = |status: u16, description: &'static str| MetaResponse {
            description,
            status: Some(status),
            status_range: None,
            content: vec![json_media()],
            headers: vec![],
        };
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
                    "The upstream provider failed, or the gateway is draining.",
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
