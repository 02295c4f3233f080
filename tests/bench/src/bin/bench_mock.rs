//! `bench-mock`: a fast fake LLM upstream for benchmarks (hyper, HTTP/1.1, keep-alive).
//!
//! Speaks OpenAI Chat Completions (`POST …/chat/completions`) and Anthropic Messages
//! (`POST …/messages`), sync and SSE (`"stream": true`), with a fixed completion whose size
//! and stream chunking are set on the command line. Any key is accepted. `GET /health`
//! answers `ok`.
//!
//! Invariants:
//! - Every accepted socket has `TCP_NODELAY`, and hyper flattens the head and body into one
//!   buffer (`writev(false)`), so a sync response leaves in a single write: no Nagle /
//!   delayed-ACK stalls on keep-alive connections.
//! - Responses are rendered once at start-up; per request the mock only reads the body,
//!   looks for `"stream": true` / `"include_usage": true`, and copies bytes.
//! - With `--chunk-delay-ms 0` (the default) a stream is sent as one chunked frame; with a
//!   delay, one SSE event per frame with the delay between events.
//!
//! Usage: `bench-mock [--port N] [--latency-ms F] [--chunks N] [--words-per-chunk N]
//! [--chunk-delay-ms N] [--threads N]`. Binds 127.0.0.1 and prints exactly one stdout line,
//! `bench-mock listening on http://127.0.0.1:PORT`, once it accepts connections.

use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metis_bench::mockdata::{Bodies, Content, wants_stream, wants_usage};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "bench-mock",
    about = "Fast fake OpenAI/Anthropic upstream for benchmarks"
)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Delay before the response head, in milliseconds (tokio timer: 1 ms resolution).
    #[arg(long, default_value_t = 0.0)]
    latency_ms: f64,
    /// Content deltas per stream.
    #[arg(long, default_value_t = 16)]
    chunks: usize,
    /// Words per content delta (sync responses carry chunks × words).
    #[arg(long, default_value_t = 4)]
    words_per_chunk: usize,
    /// Delay between SSE events, in milliseconds; 0 sends the whole stream at once.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Runtime worker threads (1 = a single-threaded runtime, best when pinned to one core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

struct State {
    bodies: Bodies,
    /// Each stream joined into one buffer, for `--chunk-delay-ms 0`.
    openai_sse_joined: Bytes,
    openai_sse_usage_joined: Bytes,
    anthropic_sse_joined: Bytes,
    latency: Option<Duration>,
    gap: Option<Duration>,
}

fn join(frames: &[Bytes]) -> Bytes {
    Bytes::from(frames.concat())
}

/// A response body: one buffer, or SSE events paced by a timer.
enum MockBody {
    Full(Option<Bytes>),
    Paced {
        frames: Vec<Bytes>,
        next: usize,
        gap: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Paced {
                frames,
                next,
                gap,
                sleep,
            } => {
                if *next >= frames.len() {
                    return Poll::Ready(None);
                }
                if *next > 0 {
                    let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*gap)));
                    if s.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *sleep = None;
                }
                let f = frames[*next].clone();
                *next += 1;
                Poll::Ready(Some(Ok(Frame::data(f))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            MockBody::Paced { frames, next, .. } => *next >= frames.len(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Paced { .. } => SizeHint::default(),
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<MockBody> {
    let mut r = Response::new(MockBody::Full(Some(Bytes::from_static(text.as_bytes()))));
    *r.status_mut() = status;
    r
}

fn json(body: &Bytes) -> Response<MockBody> {
    let mut r = Response::new(MockBody::Full(Some(body.clone())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// An SSE response. Without a gap the joined stream goes out as one chunk of a chunked body
/// (the size is deliberately not announced, as a real streaming server would not).
fn sse(state: &State, frames: &[Bytes], joined: &Bytes) -> Response<MockBody> {
    let body = match state.gap {
        None => MockBody::Paced {
            frames: vec![joined.clone()],
            next: 0,
            gap: Duration::ZERO,
            sleep: None,
        },
        Some(gap) => MockBody::Paced {
            frames: frames.to_vec(),
            next: 0,
            gap,
            sleep: None,
        },
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<MockBody>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if method == Method::GET && (path == "/health" || path == "/") {
        return Ok(plain(StatusCode::OK, "ok"));
    }
    let openai = path.ends_with("/chat/completions");
    let anthropic = path.ends_with("/messages");
    if method != Method::POST || !(openai || anthropic) {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(plain(StatusCode::BAD_REQUEST, "unreadable body")),
    };
    if let Some(d) = state.latency {
        tokio::time::sleep(d).await;
    }
    let stream = wants_stream(&body);
    let b = &state.bodies;
    let resp = match (openai, stream) {
        (true, false) => json(&b.openai_json),
        (true, true) if wants_usage(&body) => {
            sse(&state, &b.openai_sse_usage, &state.openai_sse_usage_joined)
        }
        (true, true) => sse(&state, &b.openai_sse, &state.openai_sse_joined),
        (false, false) => json(&b.anthropic_json),
        (false, true) => sse(&state, &b.anthropic_sse, &state.anthropic_sse_joined),
    };
    Ok(resp)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let bodies = Bodies::new(Content {
        chunks: args.chunks,
        words_per_chunk: args.words_per_chunk,
    });
    let state = Arc::new(State {
        openai_sse_joined: join(&bodies.openai_sse),
        openai_sse_usage_joined: join(&bodies.openai_sse_usage),
        anthropic_sse_joined: join(&bodies.anthropic_sse),
        bodies,
        latency: (args.latency_ms > 0.0).then(|| Duration::from_secs_f64(args.latency_ms / 1000.0)),
        gap: (args.chunk_delay_ms > 0).then(|| Duration::from_millis(args.chunk_delay_ms)),
    });
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .await
        .context("bind 127.0.0.1")?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "bench-mock listening on http://{addr}")?;
        out.flush()?;
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("bench-mock: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, Arc::clone(&state)));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .writev(false)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(serve(args))
}
