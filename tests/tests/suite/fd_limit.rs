//! The descriptor limit of the real `metis` binary (separate processes):
//!
//! - started under `ulimit -n 256` (soft and hard, so the gateway cannot raise it), the
//!   gateway lowers its connection cap with a boot WARN naming the cap, serves that many
//!   connections and answers the ones beyond it with an immediate 503 JSON body (before the
//!   fix, accepts failed with EMFILE at ~230 connections and the rest hung with no answer);
//! - a limit lowered under a running gateway (`prlimit --pid`), so that `accept` itself fails:
//!   the failures are counted in `metis_accept_errors_total` and waiting clients are answered
//!   503 from the spare descriptor instead of hanging (before: a hot accept loop, no answer,
//!   no log line).
//!
//! Needs `target/debug/metis` and util-linux `prlimit`.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::process::GatewayProcess;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn gateway_args(dir: &std::path::Path) -> Vec<String> {
    [
        "--port",
        "0",
        "--data-dir",
        &dir.display().to_string(),
        "--max-connections",
        "1000",
        // Held connections stay silent for the whole test.
        "--header-timeout",
        "120s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Send one request on `conn` and read the answer (the answer's head and body, lower-cased
/// head). Reads until the body announced by `content-length` is complete.
fn exchange(conn: &mut TcpStream, request: &str) -> (String, String) {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!(
                "no complete answer within 10 s ({e}); got {:?}",
                String::from_utf8_lossy(&raw)
            ),
        };
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if n == 0 || len.is_some_and(|l| body.len() >= l) {
                return (head, body.to_owned());
            }
        } else if n == 0 {
            panic!("connection closed without an answer: {text:?}");
        }
    }
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
const METRICS: &str = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

fn assert_503_json(what: &str, head: &str, body: &str) {
    assert!(head.starts_with("http/1.1 503 "), "{what}: {head}");
    assert!(
        head.contains("content-type: application/json"),
        "{what}: {head}"
    );
    assert!(head.contains("retry-after: 1"), "{what}: {head}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "too_many_connections", "{what}: {v}");
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn a_low_descriptor_limit_lowers_the_cap_and_excess_connections_get_503() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::spawn_with_nofile(256, &gateway_args(dir.path()), &[]).unwrap();
    let stderr = gw.stderr();
    let warn = stderr
        .lines()
        .find(|l| l.contains("connection cap lowered to"))
        .unwrap_or_else(|| panic!("a boot WARN names the lowered cap:\n{stderr}"));
    assert!(warn.contains("WARN"), "{warn}");
    assert!(warn.contains("file descriptor limit 256"), "{warn}");
    let cap: usize = warn
        .split("connection cap lowered to ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("cap in {warn}"));
    assert!((20..256).contains(&cap), "{cap}");

    let addr = ("127.0.0.1", gw.boot.port);
    // Fill the cap with silent connections (each holds one slot), then make sure the
    // gateway has accepted every one of them before going over.
    let mut held: Vec<TcpStream> = (0..cap)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // Beyond the cap: an immediate 503 JSON answer, not a hang.
    for i in 0..10 {
        let mut extra = TcpStream::connect(addr).unwrap();
        let (head, body) = exchange(&mut extra, HEALTHZ);
        assert_503_json(&format!("connection {} over the cap", i + 1), &head, &body);
    }
    // Connections within the cap are served.
    let (head, _) = exchange(&mut held[0], HEALTHZ);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    let (_, metrics) = exchange(&mut held[1], METRICS);
    assert_eq!(metric(&metrics, "metis_connection_limit "), cap as f64);
    assert!(metric(&metrics, "metis_refused_total{reason=\"connection_cap\"} ") >= 10.0);
    // One descriptor per client connection, well under the limit.
    let open = std::fs::read_dir(format!("/proc/{}/fd", gw.pid))
        .map(Iterator::count)
        .unwrap_or(0);
    assert!(open < 256, "{open} descriptors open for {cap} connections");
    held.clear();
}

#[test]
fn running_out_of_descriptors_answers_503_and_counts_accept_failures() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProcess::spawn(&gateway_args(dir.path()), &[]).unwrap();
    let addr = ("127.0.0.1", gw.boot.port);
    // A connection opened before the limit drops, to read the metrics afterwards.
    let mut observer = TcpStream::connect(addr).unwrap();
    let (head, _) = exchange(&mut observer, HEALTHZ);
    assert!(head.starts_with("http/1.1 200 "), "{head}");

    // Leave the process only a few free descriptors (soft limit only: raising a hard limit
    // back needs privileges): the cap (1000) no longer protects it, so `accept` itself fails
    // with EMFILE.
    let open = std::fs::read_dir(format!("/proc/{}/fd", gw.pid))
        .unwrap()
        .count() as u64;
    let limit = open + 3;
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", gw.pid))
        .arg(format!("--nofile={limit}:"))
        .output()
        .expect("util-linux prlimit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        let mut c = TcpStream::connect(addr).unwrap();
        let (head, body) = exchange(&mut c, HEALTHZ);
        if head.starts_with("http/1.1 200 ") {
            held.push(c);
        } else {
            assert_503_json("out of descriptors", &head, &body);
            refused += 1;
        }
    }
    assert!(
        refused >= 6,
        "{refused} of 12 refused with {limit} descriptors"
    );

    let (_, metrics) = exchange(&mut observer, METRICS);
    assert!(metric(&metrics, "metis_accept_errors_total{kind=\"fd_limit\"} ") >= 1.0);
    assert!(metric(&metrics, "metis_refused_total{reason=\"fd_limit\"} ") >= 1.0);
    let stderr = gw.stderr();
    assert!(stderr.contains("cannot accept a connection"), "{stderr}");

    // Descriptors back: the gateway accepts normally again.
    held.clear();
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", gw.pid))
        .arg("--nofile=4096:")
        .output()
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(200));
    let mut fresh = TcpStream::connect(addr).unwrap();
    let (head, _) = exchange(&mut fresh, HEALTHZ);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    gw.stop_blocking(Duration::from_secs(30)).unwrap();
}
