//! OpenTelemetry export, end to end: the real `metis` binary with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a local OTLP/HTTP receiver, a request carrying a
//! W3C `traceparent`, and the fake upstream recording what the gateway propagated.
//!
//! Needs the binaries built (`cargo build --workspace --bins`, as `scripts/test.sh` does).

#![expect(
    clippy::unwrap_used,
    reason = "test support functions outside #[test] bodies"
)]

use gw_tests::FakeUpstream;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
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

async fn start_receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Route::new()
        .at("/v1/traces", post(receive))
        .data(spans.clone());
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    (format!("http://{addr}"), spans)
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
    let (otlp, spans) = start_receiver().await;
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
