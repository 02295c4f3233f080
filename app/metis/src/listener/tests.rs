use super::cap::PermitIo;
use super::observer::{is_connection_error, is_fd_limit};
use super::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

fn observer() -> Arc<Observer> {
    Observer::new(Arc::new(metis_telemetry::Prometheus::default()))
}

fn guarded(
    io: tokio::io::DuplexStream,
    header_ms: u64,
    idle_ms: u64,
) -> PermitIo<tokio::io::DuplexStream> {
    let sem = Arc::new(Semaphore::new(1));
    let permit = sem.try_acquire_owned().unwrap();
    PermitIo::new(
        io,
        permit,
        Timeouts {
            header: Duration::from_millis(header_ms),
            idle: Duration::from_millis(idle_ms),
        },
        observer(),
    )
}

#[tokio::test]
async fn an_incomplete_head_times_out() {
    let (mut client, server) = tokio::io::duplex(1024);
    let mut g = guarded(server, 100, 100);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = g.read(&mut buf).await.unwrap();
    assert!(n > 0);
    let err = g.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
}

#[tokio::test]
async fn a_slow_upstream_is_not_cut_but_an_idle_keepalive_is() {
    let (mut client, server) = tokio::io::duplex(1024);
    let mut g = guarded(server, 100, 100);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(g.read(&mut buf).await.unwrap() > 0);
    // Handling takes longer than both timeouts: no timer runs while nothing is written.
    tokio::time::sleep(Duration::from_millis(250)).await;
    g.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = g.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(90));
}

/// hyper's empty answer to a head it cannot parse leaves the connection as JSON, even when
/// the socket takes it a few bytes at a time.
#[tokio::test]
async fn hyper_rejections_leave_as_json_envelopes() {
    let (client, server) = tokio::io::duplex(16);
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let mut g = guarded(server, 5000, 5000);
    let head: &[u8] = b"POST /v1/messages HTTP/1.1\r\nX: \x01\r\n\r\n";
    let sender = tokio::spawn(async move { client_tx.write_all(head).await.unwrap() });
    let mut buf = [0u8; 64];
    let mut seen = 0;
    while seen < head.len() {
        seen += g.read(&mut buf).await.unwrap();
    }
    sender.await.unwrap();
    let hyper_answer: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
    let writer = tokio::spawn(async move {
        let n = g.write(hyper_answer).await.unwrap();
        assert_eq!(n, hyper_answer.len(), "reported as written whole");
        g.shutdown().await.unwrap();
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client_rx.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    let text = String::from_utf8(answer).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["type"], "error", "Anthropic shape for /v1/messages: {v}");
}

#[test]
fn accept_errors_are_classified() {
    assert!(is_fd_limit(&std::io::Error::from_raw_os_error(24)));
    assert!(is_fd_limit(&std::io::Error::from_raw_os_error(23)));
    assert!(!is_fd_limit(&std::io::Error::from(
        std::io::ErrorKind::ConnectionAborted
    )));
    assert!(is_connection_error(&std::io::Error::from(
        std::io::ErrorKind::ConnectionAborted
    )));
    assert!(!is_connection_error(&std::io::Error::from_raw_os_error(24)));
}

#[tokio::test]
async fn http2_connections_are_exempt() {
    let (mut client, server) = tokio::io::duplex(1024);
    let mut g = guarded(server, 50, 50);
    client
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(g.read(&mut buf).await.unwrap() > 0);
    let r = tokio::time::timeout(Duration::from_millis(200), g.read(&mut buf)).await;
    assert!(r.is_err(), "no guard timeout on h2");
}

/// A connection still in the accept queue when the main acceptor is dropped (what poem
/// does at shutdown) is served by the rescue server instead of being reset, and the rescue
/// server then stops by itself.
#[tokio::test]
async fn queued_connections_are_rescued_when_the_listener_closes() {
    let listener = bind("127.0.0.1", 0, true).unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(Connections::default());
    let timeouts = Timeouts {
        header: Duration::from_secs(5),
        idle: Duration::from_secs(5),
    };
    let caps = Caps {
        max_connections: 16,
        rejecting: 4,
    };
    let stacks = stack(listener, &connections, None, caps, timeouts, &observer()).unwrap();

    // The kernel completes these handshakes; nobody has called accept yet.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        clients.push(c);
    }
    drop(stacks.main);

    let ep = poem::Route::new().at("/ping", poem::get(poem::endpoint::make_sync(|_| "pong")));
    let state = Arc::clone(&stacks.rescue_state);
    let server = tokio::spawn(
        poem::Server::new_with_acceptor(stacks.rescue).run_with_graceful_shutdown(
            ep,
            async move { state.finished(Duration::from_secs(5)).await },
            Some(Duration::ZERO),
        ),
    );
    for mut c in clients {
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("pong"), "{answer}");
    }
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the rescue server stops once the hand-off is over")
        .unwrap()
        .unwrap();
    // The port is closed now: nothing is left listening to reset later arrivals.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
