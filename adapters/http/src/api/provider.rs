//! The steps shared by the provider handlers: admit (before the body is read), read the
//! body within its size, time and memory limits, call the service, and render its answer as
//! JSON or as an SSE stream with keep-alive comments.

use super::inbound::{meta, models_shape};
use super::{Api, ClientGone};
use crate::reply::{ModelsReply, RawReply, error_response, json_response};
use bytes::Bytes;
use futures_util::StreamExt;
use metis_domain::canonical::Shape;
use metis_domain::error::GatewayError;
use metis_ports::gateway::{Admission, ModelsQuery, Reply};
use poem::error::ReadBodyError;
use poem::http::{StatusCode, header};
use poem::{Body, Request, Response};
use std::time::Duration;

impl Api {
    /// Authenticate (before the body is read), then read the body within the size and time
    /// limits and the in-flight memory budget. An `Err` is the finished error response.
    pub(super) async fn admit_and_read(
        &self,
        shape: Shape,
        req: &Request,
        body: Body,
    ) -> Result<(Admission, Bytes), Response> {
        let admission = self
            .svc
            .admit(meta(req, shape))
            .await
            .map_err(|e| error_response(&e, shape))?;
        let limit = self.opts.max_body_bytes;
        let too_large = GatewayError::PayloadTooLarge {
            limit_bytes: limit as u64,
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(error_response(&too_large, shape));
        }
        let read = tokio::time::timeout(self.opts.body_timeout, body.into_bytes_limit(limit)).await;
        match read {
            Err(_) => {
                let err = GatewayError::RequestTimeout {
                    seconds: self.opts.body_timeout.as_secs(),
                };
                Err(error_response(&err, shape))
            }
            Ok(Ok(b)) => {
                // The parse estimate of this body must fit the in-flight request budget.
                crate::inflight::charge_parsed(req, &b).map_err(|refused| *refused)?;
                Ok((admission, b))
            }
            Ok(Err(ReadBodyError::PayloadTooLarge)) => Err(error_response(&too_large, shape)),
            Ok(Err(e)) => {
                let err = metis_domain::error::invalid(format!("could not read request body: {e}"));
                Err(error_response(&err, shape))
            }
        }
    }

    pub(super) async fn provider(&self, shape: Shape, req: &Request, body: Body) -> RawReply {
        let (admission, bytes) = match self.admit_and_read(shape, req, body).await {
            Ok(x) => x,
            Err(resp) => return RawReply(resp),
        };
        let handled = match req.extensions().get::<ClientGone>() {
            Some(gone) => {
                let gone = gone.wait();
                tokio::select! {
                    r = self.svc.handle(admission, bytes) => r,
                    () = gone => {
                        // Dropping the handler future cancels the upstream call and records
                        // it as cancelled; nobody is left to read this answer.
                        return RawReply(
                            Response::builder()
                                .status(StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST))
                                .finish(),
                        );
                    }
                }
            }
            None => self.svc.handle(admission, bytes).await,
        };
        match handled {
            Ok(Reply::Json(b)) => RawReply(json_response(StatusCode::OK, b)),
            Ok(Reply::Stream(s)) => {
                RawReply(sse_response(with_keepalive(s, self.opts.sse_keepalive)))
            }
            Err(e) => RawReply(error_response(&e, shape)),
        }
    }
}

impl Api {
    pub(super) async fn count(&self, shape: Shape, req: &Request, body: Body) -> RawReply {
        let (admission, bytes) = match self.admit_and_read(shape, req, body).await {
            Ok(x) => x,
            Err(resp) => return RawReply(resp),
        };
        match self.svc.count_tokens(admission, bytes).await {
            Ok(count) => {
                let mut resp = json_response(StatusCode::OK, count.body);
                resp.headers_mut().insert(
                    "x-metis-token-count",
                    poem::http::HeaderValue::from_static(count.method.as_str()),
                );
                RawReply(resp)
            }
            Err(e) => RawReply(error_response(&e, shape)),
        }
    }

    pub(super) async fn model_reply(&self, req: &Request, query: &ModelsQuery) -> ModelsReply {
        let shape = models_shape(req);
        let answer = match self.svc.admit(meta(req, shape)).await {
            Ok(adm) => self.svc.models(&adm, query),
            Err(e) => Err(e),
        };
        match answer {
            Ok(body) => ModelsReply(json_response(StatusCode::OK, body)),
            Err(e) => ModelsReply(error_response(&e, shape)),
        }
    }
}

/// Interleave `: keep-alive` comments into a stream whenever it is silent for `every`.
/// (Only the wait is cancelled on timeout: the stream keeps its own in-progress state.)
fn with_keepalive(
    stream: futures_util::stream::BoxStream<'static, Bytes>,
    every: Duration,
) -> futures_util::stream::BoxStream<'static, Bytes> {
    futures_util::stream::unfold(stream, move |mut s| async move {
        match tokio::time::timeout(every, s.next()).await {
            Ok(Some(b)) => Some((b, s)),
            Ok(None) => None,
            Err(_) => Some((Bytes::from_static(b": keep-alive\n\n"), s)),
        }
    })
    .boxed()
}

fn sse_response(stream: futures_util::stream::BoxStream<'static, Bytes>) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .content_type("text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_bytes_stream(
            stream.map(Ok::<Bytes, std::io::Error>),
        ))
}
