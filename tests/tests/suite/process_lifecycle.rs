//! Shutdown and rolling hand-over of the real `metis` binary (separate processes, SIGTERM via
//! `kill`), against the fake upstream served by this test process:
//!
//! - SIGTERM mid-stream: the stream completes, `/readyz` answers 503 during the drain, new
//!   connections are refused, the process exits 0 soon after the stream ends and the call's
//!   `llm.call_completed` is in the trace DB.
//! - `--reuse-port` hand-over under steady load (sync and streaming, both shapes; plain HTTP
//!   and in-process TLS): gateway B binds the port of gateway A, A gets SIGTERM mid-load and
//!   drains, B serves alone. Zero failed requests, A exits 0, and the trace holds exactly one
//!   `llm.call_completed` per successful request. The numbers are printed for the release
//!   notes.
//!
//! Clients open a fresh connection per request: what is under test is the servers' hand-over
//! (listener, accept queue, drain), not a client pool re-using a connection the old process is
//! closing (an HTTP/1.1 race every client must handle with retries).
//!
//! Needs `target/debug/metis` (`cargo build --workspace --bins`; scripts/test.sh does it).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::certs::TestPki;
use metis_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY};
use metis_tests::gateway::{read_events, reply_text, stream_text};
use metis_tests::process::{GatewayProcess, free_port, issue_key, upstream_args, upstream_env};
use metis_tests::{Combo, FakeUpstream, Shape, parse_sse};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider_env() -> Vec<(String, String)> {
    upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
}

fn data_dir_args(dir: &Path) -> Vec<String> {
    vec!["--data-dir".into(), dir.display().to_string()]
}

fn count_events(db: &Path, ty: &str) -> usize {
    read_events(db)
        .unwrap()
        .iter()
        .filter(|e| e.event_type == ty)
        .count()
}

/// Send the request and check it completely: 200, the whole echo, and for streams the
/// terminal frame of the shape (`[DONE]` / `message_stop`) with no error frame.
async fn one_call(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    combo: Combo,
    text: &str,
    stream: bool,
) -> Result<(), String> {
    let req = client
        .post(format!("{base}{}", combo.client.gateway_path()))
        .json(&combo.body(text, stream));
    let req = match combo.client {
        Shape::OpenAi => req.bearer_auth(token),
        Shape::Anthropic => req
            .header("x-api-key", token)
            .header("anthropic-version", "2023-06-01"),
    };
    let resp = req.send().await.map_err(|e| format!("send: {e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("body ({status}): {e:?}"))?;
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    let want = format!("echo: {text}");
    if stream {
        let events = parse_sse(&body);
        let terminal_ok = match combo.client {
            Shape::OpenAi => events.last().is_some_and(|e| e.data == "[DONE]"),
            Shape::Anthropic => events
                .last()
                .is_some_and(|e| e.event.as_deref() == Some("message_stop")),
        };
        let error_frame = events.iter().any(|e| {
            e.event.as_deref() == Some("error")
                || e.json().is_some_and(|v: Value| v.get("error").is_some())
        });
        if !terminal_ok || error_frame {
            return Err(format!("incomplete stream: {body}"));
        }
        let got = stream_text(combo.client, &events);
        if got != want {
            return Err(format!("stream text {got:?} != {want:?}"));
        }
    } else {
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("json: {e}: {body}"))?;
        let got = reply_text(combo.client, &v);
        if got != want {
            return Err(format!("reply text {got:?} != {want:?}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SIGTERM mid-stream
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_drains_reports_not_ready_and_flushes() {
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, token) = issue_key(&data_dir_args(dir.path()), "drain", &[]).unwrap();
    let mut args = vec!["--port".to_owned(), "0".to_owned()];
    args.extend(upstream_args(&upstream.base_url(), dir.path()));
    args.extend(["--shutdown-grace".to_owned(), "15s".to_owned()]);
    let mut gw = GatewayProcess::spawn_async(args, provider_env())
        .await
        .unwrap();
    let port = gw.boot.port;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // A stream of ~1.5 s (six deltas 250 ms apart), read until its first frame.
    let text = "[drip:250] one two three four five six seven eight nine ten";
    let combo = Combo::OPENAI_TO_ANTHROPIC;
    let mut resp = client
        .post(gw.url_of("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&combo.body(text, true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("a first frame")
        .unwrap()
        .expect("a first frame");
    body.push_str(&String::from_utf8_lossy(&first));

    // A connection accepted before the signal, holding an unfinished readiness probe.
    let mut probe = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    probe
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;

    gw.sigterm().unwrap();
    let signalled = Instant::now();

    // For a short window the gateway still answers, but every response says
    // `Connection: close`, so keep-alive clients move to another process instead of racing
    // the close of an idle pooled connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut late = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    late.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), late.read_to_end(&mut raw))
        .await
        .expect("the connection is closed after its one answer")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(raw.starts_with("http/1.1 200"), "{raw:?}");
    assert!(raw.contains("connection: close"), "{raw:?}");

    // Then the listener closes (readiness has been 503 since the signal): new connections
    // are refused while the process drains.
    let refused_after = loop {
        let fresh = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await;
        if matches!(fresh, Ok(Err(_))) {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "a draining gateway stops accepting connections (still accepting 3 s after SIGTERM: {fresh:?})"
        );
        drop(fresh);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused_after < Duration::from_secs(2),
        "the listener closed {refused_after:?} after SIGTERM (expected after the 1 s close window)"
    );

    // The probe finishes its request during the drain: 503.
    probe.write_all(b"\r\n").await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), probe.read_to_end(&mut raw)).await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        raw.starts_with("HTTP/1.1 503"),
        "/readyz answers 503 while draining: {raw:?}"
    );
    assert!(raw.contains("draining"), "{raw:?}");

    // The stream runs to its end.
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the stream keeps flowing during the drain")
        .expect("the drained stream is not cut")
    {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let stream_done = Instant::now();
    let events = parse_sse(&body);
    assert_eq!(
        events.last().map(|e| e.data.as_str()),
        Some("[DONE]"),
        "{body}"
    );
    assert_eq!(stream_text(Shape::OpenAi, &events), format!("echo: {text}"));
    assert!(
        stream_done.duration_since(signalled) >= Duration::from_millis(500),
        "the stream was still in flight when the signal came"
    );

    let status = gw.wait_exit(Duration::from_secs(20)).await.unwrap();
    let exited = Instant::now();
    assert_eq!(
        status.code(),
        Some(0),
        "exit 0 after the drain: {}",
        gw.stderr()
    );
    assert!(
        exited.duration_since(stream_done) < Duration::from_secs(3),
        "the process exits once in-flight work is done, not at the end of the 15 s grace \
         (exited {:?} after the stream ended)",
        exited.duration_since(stream_done)
    );
    let db = dir.path().join("metis.db");
    assert_eq!(
        count_events(&db, "llm.call_completed"),
        1,
        "the drained call's event was flushed before exit"
    );
    assert_eq!(count_events(&db, "turn.completed"), 1);
}

// ---------------------------------------------------------------------------------------------
// --reuse-port hand-over under load
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    ok_streams: AtomicU64,
    /// Successful requests sent after gateway A had exited (B alone served them).
    ok_after_a: AtomicU64,
    failures: Mutex<Vec<String>>,
}

const COMBOS: [Combo; 4] = [
    Combo::OPENAI_TO_OPENAI,
    Combo::ANTHROPIC_TO_ANTHROPIC,
    Combo::OPENAI_TO_ANTHROPIC,
    Combo::ANTHROPIC_TO_OPENAI,
];

async fn load_client(
    id: usize,
    base: String,
    token: String,
    stop: Arc<AtomicBool>,
    a_gone: Arc<AtomicBool>,
    tally: Arc<Tally>,
    ca_pem: Option<String>,
) {
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30));
    if let Some(pem) = ca_pem {
        builder = builder.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()]);
    }
    let client = builder.build().unwrap();
    let mut i = 0usize;
    while !stop.load(Ordering::Acquire) {
        let combo = COMBOS[(id + i) % COMBOS.len()];
        let stream = (id + i) % 2 == 1;
        let text = if stream {
            format!("[drip:40] c{id} r{i} alpha beta gamma delta epsilon zeta")
        } else {
            format!("[slow:25] c{id} r{i}")
        };
        let after_a = a_gone.load(Ordering::Acquire);
        tally.sent.fetch_add(1, Ordering::Relaxed);
        match one_call(&client, &base, &token, combo, &text, stream).await {
            Ok(()) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if stream {
                    tally.ok_streams.fetch_add(1, Ordering::Relaxed);
                }
                if after_a {
                    tally.ok_after_a.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => tally.failures.lock().unwrap().push(format!(
                "client {id} request {i} ({combo:?}, stream={stream}): {e}"
            )),
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_hand_over_under_load_loses_nothing() {
    hand_over(false, false).await;
}

/// The same hand-over with in-process TLS: B's first connections (queued before its accept
/// loop runs) must complete their handshakes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_hand_over_with_tls_loses_nothing() {
    hand_over(true, false).await;
}

/// The same hand-over on the redb backend: A and B share one `metis.redb` (its multi-process
/// writer mode), and every request's event is in it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_hand_over_on_redb_loses_nothing() {
    hand_over(false, true).await;
}

async fn hand_over(tls: bool, redb: bool) {
    let label = match (tls, redb) {
        (true, _) => "hand-over (TLS)",
        (false, true) => "hand-over (redb)",
        (false, false) => "hand-over",
    };
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut storage = data_dir_args(dir.path());
    if redb {
        storage.extend(["--store".to_owned(), "redb".to_owned()]);
    }
    let (_, token) = issue_key(&storage, "rolling", &[]).unwrap();
    let port = free_port().unwrap();
    // A and B share the data dir (trace DB and keystore), as two pods on one volume would
    // during a surge: the gateway's DB lock is shared, so B starts beside A.
    let mut args = vec![
        "--host".to_owned(),
        "127.0.0.1".to_owned(),
        "--port".to_owned(),
        port.to_string(),
        "--reuse-port".to_owned(),
        "--shutdown-grace".to_owned(),
        "15s".to_owned(),
    ];
    args.extend(upstream_args(&upstream.base_url(), dir.path()));
    if redb {
        args.extend(["--store".to_owned(), "redb".to_owned()]);
    }
    let mut ca_pem = None;
    if tls {
        let pki = TestPki::generate().unwrap();
        let files = pki.write_to(dir.path()).unwrap();
        args.extend([
            "--tls-cert".to_owned(),
            files.leaf_cert.display().to_string(),
            "--tls-key".to_owned(),
            files.leaf_key.display().to_string(),
        ]);
        ca_pem = Some(pki.ca_cert_pem);
    }

    let mut a = GatewayProcess::spawn_async(args.clone(), provider_env())
        .await
        .unwrap();
    assert_eq!(a.boot.port, port);
    let scheme = if tls { "https" } else { "http" };
    assert_eq!(a.boot.scheme, scheme, "{}", a.boot.line);
    let base = format!("{scheme}://127.0.0.1:{port}");

    let stop = Arc::new(AtomicBool::new(false));
    let a_gone = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..8)
        .map(|id| {
            tokio::spawn(load_client(
                id,
                base.clone(),
                token.clone(),
                Arc::clone(&stop),
                Arc::clone(&a_gone),
                Arc::clone(&tally),
                ca_pem.clone(),
            ))
        })
        .collect();
    let started = Instant::now();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut b = GatewayProcess::spawn_async(args, provider_env())
        .await
        .unwrap();
    assert_eq!(b.boot.port, port, "B binds the same port beside A");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_term = tally.ok.load(Ordering::Relaxed);
    a.sigterm().unwrap();
    let a_status = a.wait_exit(Duration::from_secs(25)).await.unwrap();
    a_gone.store(true, Ordering::Release);
    let drain_took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Release);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(40), c)
            .await
            .expect("load clients finish")
            .unwrap();
    }
    let b_status = b.stop(Duration::from_secs(25)).await.unwrap();

    let events = if redb {
        metis_tests::gateway::read_redb_events(&dir.path().join("metis.redb")).unwrap()
    } else {
        read_events(&dir.path().join("metis.db")).unwrap()
    };
    let count = |ty: &str| events.iter().filter(|e| e.event_type == ty).count();
    let completed = count("llm.call_completed");
    let failed_events = count("llm.call_failed");
    let sent = tally.sent.load(Ordering::Relaxed);
    let ok = tally.ok.load(Ordering::Relaxed);
    let failures = tally.failures.lock().unwrap().clone();
    eprintln!(
        "{label}: requests sent={sent} ok={ok} (streams {}) failed={} \
         llm.call_completed events={completed} llm.call_failed events={failed_events}; \
         ok before SIGTERM to A={before_term}, ok after A exited (B alone)={}; \
         A exited {a_status} at {drain_took:?}, B exited {b_status}",
        tally.ok_streams.load(Ordering::Relaxed),
        failures.len(),
        tally.ok_after_a.load(Ordering::Relaxed),
    );
    assert!(
        failures.is_empty(),
        "zero failed requests across the hand-over; {} failed, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        a_status.code(),
        Some(0),
        "A exits 0 after draining: {}",
        a.stderr()
    );
    assert_eq!(b_status.code(), Some(0), "B exits 0: {}", b.stderr());
    assert!(sent >= 50, "steady load ({sent} requests)");
    assert!(
        tally.ok_after_a.load(Ordering::Relaxed) > 0,
        "B served alone after A exited"
    );
    assert_eq!(
        completed as u64, ok,
        "exactly one llm.call_completed per successful request (none lost, none doubled)"
    );
    assert_eq!(failed_events, 0);
}
