//! Answer plumbing shared by every wire: JSON responses, SSE frames, the stream driver
//! (delays, cuts, garbage, outcome recording) and the per-wire framing of frames.

use super::StreamOutcome;
use super::convo::Wire;
use super::server::{Ctx, State};
use bytes::Bytes;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{Body, Response};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}

pub(super) enum Frame {
    Data(Bytes),
    /// Silence on the wire for this long.
    Pause(Duration),
    Abort,
}

/// Marks the recorded request's stream outcome; `ClientDropped` unless told otherwise.
struct OutcomeGuard {
    state: Arc<State>,
    seq: u64,
}

impl OutcomeGuard {
    fn finish(&self, outcome: StreamOutcome) {
        self.state.set_outcome(self.seq, outcome);
    }
}

impl Drop for OutcomeGuard {
    fn drop(&mut self) {
        self.state
            .set_outcome(self.seq, StreamOutcome::ClientDropped);
    }
}

struct StreamCtx {
    frames: VecDeque<Frame>,
    drip: Duration,
    first: bool,
    guard: OutcomeGuard,
}

pub(super) fn sse_response(ctx: &Ctx, frames: Vec<Frame>, wire: Wire) -> Response {
    let frames = shape_frames(frames, wire);
    let drip = if wire.split && wire.drip.is_zero() {
        Duration::from_millis(1)
    } else {
        wire.drip
    };
    // hyper finishes a chunked body with its terminal chunk even when the body stream fails, so
    // a `[cut]` stream announces more bytes than it sends: the connection then has to close
    // mid-body, which is what a client sees when a real provider connection drops.
    let cut_length = frames.iter().any(|f| matches!(f, Frame::Abort)).then(|| {
        let sent: usize = frames
            .iter()
            .map(|f| match f {
                Frame::Data(b) => b.len(),
                Frame::Pause(_) | Frame::Abort => 0,
            })
            .sum();
        sent + 4096
    });
    let sctx = StreamCtx {
        frames: frames.into(),
        drip,
        first: true,
        guard: OutcomeGuard {
            state: Arc::clone(&ctx.state),
            seq: ctx.seq,
        },
    };
    let stream = futures_util::stream::unfold(sctx, |mut s| async move {
        loop {
            match s.frames.pop_front() {
                None => {
                    s.guard.finish(StreamOutcome::Completed);
                    return None;
                }
                Some(Frame::Pause(d)) => tokio::time::sleep(d).await,
                Some(Frame::Data(b)) => {
                    if !s.first && !s.drip.is_zero() {
                        tokio::time::sleep(s.drip).await;
                    }
                    s.first = false;
                    return Some((Ok::<Bytes, std::io::Error>(b), s));
                }
                Some(Frame::Abort) => {
                    // Give the client a moment to read what was sent before the connection dies.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    s.guard.finish(StreamOutcome::Cut);
                    s.frames.clear();
                    return Some((
                        Err(std::io::Error::other("fake upstream cut the stream")),
                        s,
                    ));
                }
            }
        }
    });
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .content_type("text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(len) = cut_length {
        builder = builder.header(header::CONTENT_LENGTH, len.to_string());
    }
    builder.body(Body::from_bytes_stream(stream))
}

/// Apply `[crlf]` and `[split]` to the frames.
fn shape_frames(frames: Vec<Frame>, wire: Wire) -> Vec<Frame> {
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        match f {
            Frame::Data(b) => {
                let b = if wire.crlf {
                    let mut v = Vec::with_capacity(b.len() + 8);
                    for &byte in b.iter() {
                        if byte == b'\n' {
                            v.push(b'\r');
                        }
                        v.push(byte);
                    }
                    Bytes::from(v)
                } else {
                    b
                };
                if wire.split {
                    let mut rest = b;
                    while rest.len() > 7 {
                        out.push(Frame::Data(rest.split_to(7)));
                    }
                    out.push(Frame::Data(rest));
                } else {
                    out.push(Frame::Data(b));
                }
            }
            other => out.push(other),
        }
    }
    out
}

pub(super) fn sse_event(name: &str, data: &Value) -> Frame {
    Frame::Data(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
}

pub(super) fn sse_data(data: &str) -> Frame {
    Frame::Data(Bytes::from(format!("data: {data}\n\n")))
}

pub(super) fn with_header(mut resp: Response, name: &'static str, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
    resp
}
