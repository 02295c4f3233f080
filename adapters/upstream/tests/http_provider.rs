//! `HttpProvider` against a scripted local HTTP server on `127.0.0.1:0`: headers, paths,
//! retries, `Retry-After`, timeouts, streaming and cancellation. Every test is bounded to a
//! few seconds; retry backoffs are shrunk to milliseconds.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use metis_ports::upstream::{
    Provider, UpstreamBody, UpstreamError, UpstreamReply, UpstreamRequest, WireFormat,
};
use metis_upstream::{HttpProvider, HttpProviderConfig, RetryPolicy};
use poem::http::{HeaderMap, StatusCode};
use poem::listener::{Acceptor, TcpAcceptor};
use poem::{Body, Request, Response, Server};
use tokio::sync::mpsc;

/// What the server answers to the next request.
enum Script {
    Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    },
    /// 200 `text/event-stream` whose body chunks come from the channel; `dropped` turns true
    /// when the server drops the body (the connection went away).
    Stream {
        chunks: mpsc::UnboundedReceiver<Bytes>,
        dropped: Arc<AtomicBool>,
    },
    /// Wait this long before answering 200 `{}`.
    Slow(Duration),
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

struct State {
    script: Mutex<VecDeque<Script>>,
    seen: Mutex<Vec<Seen>>,
    hits: AtomicUsize,
}

struct TestServer {
    base: String,
    state: Arc<State>,
}

impl TestServer {
    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn serve(script: Vec<Script>) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
    let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
    let state = Arc::new(State {
        script: Mutex::new(script.into()),
        seen: Mutex::new(Vec::new()),
        hits: AtomicUsize::new(0),
    });
    let st = state.clone();
    let endpoint = poem::endpoint::make(move |mut req: Request| {
        let st = st.clone();
        async move { answer(&st, &mut req).await }
    });
    tokio::spawn(Server::new_with_acceptor(acceptor).run(endpoint));
    TestServer {
        base: format!("http://{addr}"),
        state,
    }
}

async fn answer(st: &State, req: &mut Request) -> Response {
    st.hits.fetch_add(1, Ordering::SeqCst);
    let body = req.take_body().into_bytes().await.unwrap_or_default();
    st.seen.lock().unwrap().push(Seen {
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        headers: req.headers().clone(),
        body,
    });
    let next = st.script.lock().unwrap().pop_front();
    match next {
        None => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body("script exhausted"),
        Some(Script::Reply {
            status,
            headers,
            body,
        }) => {
            let mut b = Response::builder().status(StatusCode::from_u16(status).unwrap());
            for (n, v) in headers {
                b = b.header(n, v);
            }
            b.body(body)
        }
        Some(Script::Slow(d)) => {
            tokio::time::sleep(d).await;
            Response::builder().body("{}")
        }
        Some(Script::Stream { chunks, dropped }) => {
            let guard = DropFlag(dropped);
            let s = futures_util::stream::unfold((chunks, guard), |(mut rx, g)| async move {
                let b = rx.recv().await?;
                Some((Ok::<_, std::io::Error>(b), (rx, g)))
            });
            Response::builder()
                .content_type("text/event-stream")
                .body(Body::from_bytes_stream(s))
        }
    }
}

fn reply(status: u16, body: &str) -> Script {
    Script::Reply {
        status,
        headers: Vec::new(),
        body: Bytes::from(body.to_owned()),
    }
}

fn reply_with(status: u16, header: (&'static str, &str), body: &str) -> Script {
    Script::Reply {
        status,
        headers: vec![(header.0, header.1.to_owned())],
        body: Bytes::from(body.to_owned()),
    }
}

fn stream_script() -> (Script, mpsc::UnboundedSender<Bytes>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicBool::new(false));
    (
        Script::Stream {
            chunks: rx,
            dropped: dropped.clone(),
        },
        tx,
        dropped,
    )
}

/// Fast retries so tests stay short.
fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        base_backoff: Duration::from_millis(10),
        ..RetryPolicy::default()
    }
}

fn openai(server: &TestServer) -> HttpProvider {
    HttpProvider::new(
        HttpProviderConfig::openai("sk-test-openai-123")
            .with_base_url(format!("{}/v1", server.base))
            .with_retry(fast_retry()),
    )
    .unwrap()
}

fn request(stream: bool) -> UpstreamRequest {
    UpstreamRequest::generate(
        WireFormat::OpenAiChat,
        Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#),
        stream,
        "req_test".to_owned(),
    )
}

fn full(reply: UpstreamReply) -> Bytes {
    match reply.body {
        UpstreamBody::Full(b) => b,
        UpstreamBody::Stream(_) => panic!("expected a full body"),
    }
}

/// Bound every call so a hang fails the test instead of blocking the suite.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test step took longer than 10 s")
}

#[tokio::test]
async fn sync_call_returns_the_body_and_sends_a_bearer_key() {
    let server = serve(vec![reply(200, r#"{"id":"x"}"#)]).await;
    let p = openai(&server);
    let r = bounded(p.send(request(false))).await.unwrap();
    assert_eq!(r.retries, 0);
    assert_eq!(full(r), Bytes::from_static(br#"{"id":"x"}"#));
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].headers["authorization"],
        "Bearer sk-test-openai-123"
    );
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert_eq!(seen[0].body, request(false).body);
}

#[tokio::test]
async fn anthropic_key_travels_in_x_api_key_and_base_url_may_end_with_a_slash() {
    let server = serve(vec![reply(200, "{}")]).await;
    let cfg = HttpProviderConfig::anthropic("sk-ant-secret-456")
        .with_base_url(format!("{}/", server.base));
    assert!(!format!("{cfg:?}").contains("sk-ant-secret-456"));
    let p = HttpProvider::new(cfg).unwrap();
    assert!(!format!("{p:?}").contains("sk-ant-secret-456"));
    let mut req = request(false);
    req.wire = WireFormat::AnthropicMessages;
    bounded(p.send(req)).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].path, "/v1/messages");
    assert_eq!(seen[0].headers["x-api-key"], "sk-ant-secret-456");
    assert_eq!(seen[0].headers["anthropic-version"], "2023-06-01");
    assert!(seen[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn forwarded_headers_override_defaults_and_the_query_travels() {
    let server = serve(vec![reply(200, "{}"), reply(200, "{}")]).await;
    let p = HttpProvider::new(HttpProviderConfig::anthropic("sk-ant").with_base_url(&server.base))
        .unwrap();
    let mut req = request(false);
    req.wire = WireFormat::AnthropicMessages;
    req.headers = vec![
        ("anthropic-version".into(), "2099-01-01".into()),
        ("anthropic-beta".into(), "new-thing-2026-01-01,other".into()),
    ];
    req.query = Some("beta=true".into());
    bounded(p.send(req.clone())).await.unwrap();
    req.op = metis_ports::upstream::Operation::CountTokens;
    req.query = None;
    bounded(p.send(req)).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].path, "/v1/messages");
    assert_eq!(seen[0].query.as_deref(), Some("beta=true"));
    assert_eq!(seen[0].headers["anthropic-version"], "2099-01-01");
    assert_eq!(
        seen[0].headers["anthropic-beta"],
        "new-thing-2026-01-01,other"
    );
    assert_eq!(seen[0].headers["x-api-key"], "sk-ant");
    assert_eq!(seen[1].path, "/v1/messages/count_tokens");
    // An operation the upstream does not serve never leaves the gateway.
    let mut embed = request(false);
    embed.wire = WireFormat::AnthropicMessages;
    embed.op = metis_ports::upstream::Operation::Embeddings;
    assert!(matches!(
        bounded(p.send(embed)).await,
        Err(UpstreamError::Status { status: 404, .. })
    ));
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn openrouter_sends_its_attribution_headers() {
    let server = serve(vec![reply(200, "{}")]).await;
    let p = HttpProvider::new(HttpProviderConfig::openrouter("or-key").with_base_url(&server.base))
        .unwrap();
    bounded(p.send(request(false))).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].path, "/chat/completions");
    assert_eq!(seen[0].headers["authorization"], "Bearer or-key");
    assert_eq!(seen[0].headers["http-referer"], "https://metis.local");
    assert_eq!(seen[0].headers["x-title"], "metis-gateway");
}

#[tokio::test]
async fn stream_bytes_arrive_as_the_server_sends_them() {
    let (script, tx, _dropped) = stream_script();
    let server = serve(vec![script]).await;
    let p = openai(&server);
    let r = bounded(p.send(request(true))).await.unwrap();
    assert_eq!(r.retries, 0);
    let UpstreamBody::Stream(mut s) = r.body else {
        panic!("expected a stream")
    };
    // The second chunk is only sent after the first one was received: proof of no buffering.
    tx.send(Bytes::from_static(b"data: 1\n\n")).unwrap();
    assert_eq!(bounded(s.next()).await.unwrap().unwrap(), "data: 1\n\n");
    tx.send(Bytes::from_static(b"data: 2\n\n")).unwrap();
    assert_eq!(bounded(s.next()).await.unwrap().unwrap(), "data: 2\n\n");
    drop(tx);
    assert!(bounded(s.next()).await.is_none());
    assert_eq!(server.seen()[0].headers["accept"], "text/event-stream");
}

#[tokio::test]
async fn a_503_then_200_is_retried_once() {
    let server = serve(vec![
        reply(503, r#"{"error":{"type":"server_error"}}"#),
        reply(200, "{}"),
    ])
    .await;
    let r = bounded(openai(&server).send(request(false))).await.unwrap();
    assert_eq!(r.retries, 1);
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn a_stream_is_retried_before_its_head_arrives() {
    let (script, tx, _dropped) = stream_script();
    let server = serve(vec![
        reply(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
        ),
        script,
    ])
    .await;
    let r = bounded(openai(&server).send(request(true))).await.unwrap();
    assert_eq!(r.retries, 1);
    drop(tx);
}

#[tokio::test]
async fn retry_after_from_the_upstream_is_honoured() {
    let server = serve(vec![
        reply_with(429, ("retry-after", "1"), "{}"),
        reply(200, "{}"),
    ])
    .await;
    let started = Instant::now();
    let r = bounded(openai(&server).send(request(false))).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.retries, 1);
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_is_returned_at_once() {
    let server = serve(vec![reply_with(
        429,
        ("retry-after", "120"),
        r#"{"error":{}}"#,
    )])
    .await;
    let err = bounded(openai(&server).send(request(false)))
        .await
        .unwrap_err();
    match err {
        UpstreamError::Status {
            status,
            retry_after_secs,
            retries,
            ..
        } => assert_eq!((status, retry_after_secs, retries), (429, Some(120), 0)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn a_400_is_not_retried_and_keeps_its_body() {
    let body = r#"{"error":{"type":"invalid_request_error","message":"bad"}}"#;
    let server = serve(vec![reply(400, body), reply(200, "{}")]).await;
    let err = bounded(openai(&server).send(request(false)))
        .await
        .unwrap_err();
    match err {
        UpstreamError::Status {
            status,
            body: b,
            retries,
            ..
        } => {
            assert_eq!((status, retries), (400, 0));
            assert_eq!(b, body.as_bytes());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn retries_stop_after_the_maximum() {
    let server = serve(vec![
        reply(500, ""),
        reply(502, ""),
        reply(503, ""),
        reply(200, "{}"),
    ])
    .await;
    let err = bounded(openai(&server).send(request(false)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Status {
                status: 503,
                retries: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn error_bodies_are_capped_at_64_kib() {
    let big = "x".repeat(100 * 1024);
    let server = serve(vec![reply(404, &big)]).await;
    let err = bounded(openai(&server).send(request(false)))
        .await
        .unwrap_err();
    let UpstreamError::Status { body, .. } = err else {
        panic!("unexpected {err:?}")
    };
    assert_eq!(body.len(), 64 * 1024);
}

#[tokio::test]
async fn connection_refused_is_a_network_error_after_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let p = HttpProvider::new(
        HttpProviderConfig::openai("k")
            .with_base_url(format!("http://{addr}/v1"))
            .with_retry(fast_retry()),
    )
    .unwrap();
    let err = bounded(p.send(request(false))).await.unwrap_err();
    match &err {
        UpstreamError::Network {
            provider,
            message,
            retries,
        } => {
            assert_eq!((provider.as_str(), *retries), ("openai", 2));
            assert!(message.contains("connect"), "{message}");
            assert!(!message.contains("k\""), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_stream_ends_with_a_network_error() {
    let (script, tx, dropped) = stream_script();
    let server = serve(vec![script]).await;
    let p = HttpProvider::new(
        HttpProviderConfig::openai("k")
            .with_base_url(&server.base)
            .with_stream_idle_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let UpstreamBody::Stream(mut s) = bounded(p.send(request(true))).await.unwrap().body else {
        panic!("expected a stream")
    };
    tx.send(Bytes::from_static(b"data: 1\n\n")).unwrap();
    assert!(bounded(s.next()).await.unwrap().is_ok());
    let started = Instant::now();
    let err = bounded(s.next()).await.unwrap().unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(
        matches!(&err, UpstreamError::Network { message, .. } if message.contains("idle")),
        "{err:?}"
    );
    assert!(bounded(s.next()).await.is_none());
    // The connection was dropped with the error, while the stream itself is still alive.
    feed_until_closed(tx, &dropped).await;
    drop(s);
}

#[tokio::test]
async fn dropping_the_stream_closes_the_upstream_connection() {
    let (script, tx, dropped) = stream_script();
    let server = serve(vec![script]).await;
    let p = openai(&server);
    let UpstreamBody::Stream(mut s) = bounded(p.send(request(true))).await.unwrap().body else {
        panic!("expected a stream")
    };
    tx.send(Bytes::from_static(b"data: 1\n\n")).unwrap();
    assert!(bounded(s.next()).await.unwrap().is_ok());
    drop(s);
    feed_until_closed(tx, &dropped).await;
}

#[tokio::test]
async fn a_missing_response_head_times_out() {
    let server = serve(vec![Script::Slow(Duration::from_secs(3))]).await;
    let p = HttpProvider::new(
        HttpProviderConfig::openai("k")
            .with_base_url(&server.base)
            .with_response_head_timeout(Duration::from_millis(200))
            .with_max_retries(0),
    )
    .unwrap();
    let started = Instant::now();
    let err = bounded(p.send(request(true))).await.unwrap_err();
    assert!(
        matches!(&err, UpstreamError::Network { retries: 0, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_sync_body_that_stalls_hits_the_total_timeout_and_is_retried() {
    let (script, tx, _dropped) = stream_script();
    let server = serve(vec![script, reply(200, "{}")]).await;
    tx.send(Bytes::from_static(b"{\"partial\":")).unwrap();
    let p = HttpProvider::new(
        HttpProviderConfig::openai("k")
            .with_base_url(&server.base)
            .with_total_timeout(Duration::from_millis(300))
            .with_retry(fast_retry()),
    )
    .unwrap();
    let r = bounded(p.send(request(false))).await.unwrap();
    assert_eq!(r.retries, 1);
    assert_eq!(full(r), "{}");
    drop(tx);
}

#[tokio::test]
async fn no_retry_policy_sends_once() {
    let server = serve(vec![reply(503, ""), reply(200, "{}")]).await;
    let p = HttpProvider::new(
        HttpProviderConfig::openai("k")
            .with_base_url(&server.base)
            .with_retry(RetryPolicy::none()),
    )
    .unwrap();
    let err = bounded(p.send(request(false))).await.unwrap_err();
    assert_eq!(err.retries(), 0);
    assert_eq!(server.hits(), 1);
}

#[test]
fn invalid_base_urls_are_rejected() {
    assert!(HttpProvider::new(HttpProviderConfig::openai("k").with_base_url("not a url")).is_err());
    assert!(
        HttpProvider::new(HttpProviderConfig::openai("k").with_base_url("ftp://h/v1")).is_err()
    );
    let err = HttpProvider::new(HttpProviderConfig::openai("bad\nkey")).unwrap_err();
    assert!(!err.to_string().contains("bad"), "{err}");
}

/// Keep the server writing (a server only notices a closed socket when it writes) until it
/// drops the response body, i.e. until the client's connection is gone.
async fn feed_until_closed(tx: mpsc::UnboundedSender<Bytes>, dropped: &AtomicBool) {
    bounded(async {
        while !dropped.load(Ordering::SeqCst) {
            let _ = tx.send(Bytes::from_static(b"data: more\n\n"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
