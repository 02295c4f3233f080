//! OpenTelemetry export, end to end: the real `metis` binary with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a local OTLP/HTTP receiver, a request carrying a
//! W3C `traceparent`, and the fake upstream recording what the gateway propagated; and the
//! GenAI semantic-convention metrics arriving at the same receiver.
//!
//! Needs the binaries built (`cargo build --workspace --bins`, as `scripts/test.sh` does).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support functions outside #[test] bodies"
)]

use metis_tests::FakeUpstream;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::metrics::v1::metric::Data as MetricData;
use opentelemetry_proto::tonic::trace::v1::Span;
use poem::web::Data;
use poem::{EndpointExt, Route, handler, post};
use prost::Message;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Spans = Arc<Mutex<Vec<Span>>>;
type Metrics = Arc<Mutex<Vec<Metric>>>;

#[handler]
async fn receive(body: poem::Body, Data(spans): Data<&Spans>) -> &'static str {
    let bytes = body.into_bytes().await.unwrap_or_default();
    if let Ok(req) = ExportTraceServiceRequest::decode(bytes.as_ref()) {
        let mut all = spans.lock().unwrap();
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                all.extend(ss.spans);
            }
        }
    }
    ""
}

#[handler]
async fn receive_metrics(body: poem::Body, Data(metrics): Data<&Metrics>) -> &'static str {
    let bytes = body.into_bytes().await.unwrap_or_default();
    if let Ok(req) = ExportMetricsServiceRequest::decode(bytes.as_ref()) {
        let mut all = metrics.lock().unwrap();
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                all.extend(sm.metrics);
            }
        }
    }
    ""
}

async fn start_receiver() -> (String, Spans, Metrics) {
    let spans: Spans = Arc::default();
    let metrics: Metrics = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Route::new()
        .at("/v1/traces", post(receive))
        .at("/v1/metrics", post(receive_metrics))
        .data(spans.clone())
        .data(metrics.clone());
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    (format!("http://{addr}"), spans, metrics)
}

fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        },
        PathBuf::from,
    );
    target.join("debug").join(name)
}

struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_carry_gen_ai_attributes_and_the_trace_propagates_upstream() {
    let metis = binary("metis");
    assert!(
        metis.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        metis.display()
    );
    let (otlp, spans, _) = start_receiver().await;
    let upstream = FakeUpstream::start("fake-anthropic-key", "fake-openai-key")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let issued = Command::new(&metis)
        .args([
            "gateway",
            "issue-key",
            "--name",
            "otel",
            "--workspace",
            "/w",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(issued.status.success(), "{issued:?}");
    let stdout = String::from_utf8_lossy(&issued.stdout);
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .unwrap()
        .trim()
        .to_owned();

    let mut child = Command::new(&metis)
        .args(["gateway", "--port", "0", "--log-format", "text"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--anthropic-base-url")
        .arg(upstream.base_url())
        .env("ANTHROPIC_API_KEY", "fake-anthropic-key")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENROUTER_API_KEY")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut child = Killer(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let port: String = rest
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let _ = tx.send(port);
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(20)).expect("boot line");

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("http://127.0.0.1:{port}/v1/messages"))
        .header("x-api-key", &token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({
            "model": "haiku",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hello otel"}]
        }))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The upstream received a traceparent in the client's trace, naming a gateway span.
    let recorded = upstream.requests();
    let propagated = recorded
        .last()
        .and_then(|r| r.headers.get("traceparent").cloned())
        .expect("traceparent sent upstream");
    assert!(propagated.contains(trace_id), "{propagated}");
    assert!(
        !propagated.contains("00f067aa0ba902b7"),
        "a new span id, not the client's"
    );

    // Stop gracefully so the batch exporter flushes.
    let pid = child.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..100 {
        if child.0.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let spans = spans.lock().unwrap().clone();
    let chat = spans
        .iter()
        .find(|s| attr(s, "gen_ai.operation.name").is_some())
        .unwrap_or_else(|| {
            panic!(
                "no gen_ai span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        hex(&chat.trace_id),
        trace_id,
        "the client's trace continues"
    );
    let text = |k: &str| match attr(chat, k) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    let int = |k: &str| match attr(chat, k) {
        Some(AnyValue::IntValue(i)) => *i,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(text("gen_ai.system"), "anthropic");
    assert_eq!(text("gen_ai.request.model"), "claude-haiku-4-5");
    assert_eq!(text("gen_ai.response.model"), "claude-haiku-4-5");
    assert!(int("gen_ai.usage.input_tokens") > 0);
    assert!(int("gen_ai.usage.output_tokens") > 0);
    assert!(text("metis.gateway_key_id").starts_with("gk_"));
    let upstream_span = spans
        .iter()
        .find(|s| s.parent_span_id == chat.span_id)
        .expect("a child span for the upstream call");
    assert_eq!(
        hex(&upstream_span.span_id),
        propagated.split('-').nth(2).unwrap_or(""),
        "the upstream call carries the upstream span's id"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Issue a key with `metis gateway issue-key` into `data`; returns the token.
fn issue_key(metis: &std::path::Path, data: &std::path::Path) -> String {
    let issued = Command::new(metis)
        .args([
            "gateway",
            "issue-key",
            "--name",
            "otel",
            "--workspace",
            "/w",
        ])
        .args(["--user", "alice", "--team", "platform"])
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(issued.status.success(), "{issued:?}");
    String::from_utf8_lossy(&issued.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Start the gateway binary against `upstream`, exporting to `otlp`; returns it and its port.
fn spawn_gateway(
    metis: &std::path::Path,
    data: &std::path::Path,
    upstream: &FakeUpstream,
    otlp: &str,
) -> (Killer, String) {
    let mut child = Command::new(metis)
        .args(["gateway", "--port", "0", "--log-format", "text"])
        .arg("--data-dir")
        .arg(data)
        .arg("--anthropic-base-url")
        .arg(upstream.base_url())
        .args(["--upstream-retries", "0"])
        .env("ANTHROPIC_API_KEY", "fake-anthropic-key")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENROUTER_API_KEY")
        .env_remove("OTEL_METRICS_EXPORTER")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Killer(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let port: String = rest
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let _ = tx.send(port);
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(20)).expect("boot line");
    (child, port)
}

/// Every (attribute key -> string form of its value) of every data point of `name`.
fn points(metrics: &[Metric], name: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    metrics
        .iter()
        .filter(|m| m.name == name)
        .flat_map(|m| match &m.data {
            Some(MetricData::Histogram(h)) => h
                .data_points
                .iter()
                .filter(|p| p.count > 0)
                .map(|p| {
                    p.attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(AnyValue::StringValue(s)) => s.clone(),
                                Some(AnyValue::IntValue(i)) => i.to_string(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect()
                })
                .collect::<Vec<_>>(),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_ai_metrics_reach_the_otlp_receiver_with_semantic_convention_attributes() {
    let metis = binary("metis");
    assert!(
        metis.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        metis.display()
    );
    let (otlp, _, metrics) = start_receiver().await;
    let upstream = FakeUpstream::start("fake-anthropic-key", "fake-openai-key")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = issue_key(&metis, &data);
    let (mut child, port) = spawn_gateway(&metis, &data, &upstream, &otlp);

    let client = reqwest::Client::new();
    let send = |text: &str, stream: bool| {
        client
            .post(format!("http://127.0.0.1:{port}/v1/messages"))
            .header("x-api-key", &token)
            .json(&serde_json::json!({
                "model": "haiku",
                "max_tokens": 64,
                "stream": stream,
                "messages": [{"role": "user", "content": text}]
            }))
            .timeout(Duration::from_secs(20))
            .send()
    };
    let ok = send("hello metrics", false).await.unwrap();
    assert_eq!(ok.status(), 200);
    let streamed = send("hello stream", true).await.unwrap();
    assert_eq!(streamed.status(), 200);
    let _ = streamed.text().await.unwrap();
    let failed = send("fail please [status:500]", false).await.unwrap();
    assert_eq!(failed.status().as_u16() / 100, 5, "an upstream failure");

    // Stop gracefully: the meter provider exports once more at shutdown.
    let pid = child.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..100 {
        if child.0.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = metrics.lock().unwrap().clone();
    let names: std::collections::BTreeSet<&str> = metrics.iter().map(|m| m.name.as_str()).collect();

    let units: std::collections::BTreeMap<&str, &str> = metrics
        .iter()
        .map(|m| (m.name.as_str(), m.unit.as_str()))
        .collect();
    for (name, unit) in [
        ("gen_ai.client.token.usage", "{token}"),
        ("gen_ai.client.operation.duration", "s"),
        ("gen_ai.server.request.duration", "s"),
        ("gen_ai.server.time_to_first_token", "s"),
        ("http.server.request.duration", "s"),
    ] {
        assert_eq!(units.get(name), Some(&unit), "{name} among {names:?}");
    }

    let gen_ai = |p: &std::collections::BTreeMap<String, String>| {
        p.get("gen_ai.operation.name").map(String::as_str) == Some("chat")
            && p.get("gen_ai.provider.name").map(String::as_str) == Some("anthropic")
            && p.get("gen_ai.system").map(String::as_str) == Some("anthropic")
            && p.get("gen_ai.request.model").map(String::as_str) == Some("claude-haiku-4-5")
    };
    let tokens = points(&metrics, "gen_ai.client.token.usage");
    for kind in ["input", "output"] {
        assert!(
            tokens.iter().any(|p| gen_ai(p)
                && p.get("gen_ai.token.type").map(String::as_str) == Some(kind)
                && p.get("gen_ai.response.model").map(String::as_str) == Some("claude-haiku-4-5")),
            "token usage of type {kind}: {tokens:?}"
        );
    }
    let durations = points(&metrics, "gen_ai.client.operation.duration");
    assert!(
        durations
            .iter()
            .any(|p| gen_ai(p) && !p.contains_key("error.type")),
        "a successful operation: {durations:?}"
    );
    assert!(
        durations
            .iter()
            .any(|p| gen_ai(p) && p.get("error.type").map(String::as_str) == Some("server_error")),
        "the failed operation names its error class: {durations:?}"
    );
    assert!(
        points(&metrics, "gen_ai.server.request.duration")
            .iter()
            .any(gen_ai)
    );
    assert!(
        points(&metrics, "gen_ai.server.time_to_first_token")
            .iter()
            .any(gen_ai),
        "the stream's first token"
    );
    let http = points(&metrics, "http.server.request.duration");
    assert!(
        http.iter().any(
            |p| p.get("http.route").map(String::as_str) == Some("/v1/messages")
                && p.get("http.request.method").map(String::as_str) == Some("POST")
                && p.get("http.response.status_code").map(String::as_str) == Some("200")
        ),
        "{http:?}"
    );
    // No key, user or team attribute: the OTLP series stay bounded by providers and models.
    for m in &metrics {
        for p in points(&metrics, &m.name) {
            for (k, v) in &p {
                assert!(
                    !v.starts_with("gk_") && v != "alice" && v != "platform",
                    "{} carries {k}={v}",
                    m.name
                );
            }
        }
    }
}
