//! Logging and distributed tracing setup (the only place that knows OpenTelemetry).
//!
//! - Logs: `tracing` to stderr, human-readable on a TTY and JSON otherwise (`--log-format`),
//!   level from `RUST_LOG` (default `info`).
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are exported over OTLP/HTTP
//!   (protobuf) with the W3C trace-context propagator; otherwise no exporter exists at all.
//!   Incoming `traceparent` headers parent the request span (see [`request_span`]), and the
//!   gateway's own span context is propagated to upstreams ([`OtelTraceContext`]).
//! - Metrics: with the same endpoint (unless `OTEL_METRICS_EXPORTER=none`), the GenAI
//!   semantic-convention metrics ([`OtelMetrics`]) are exported over OTLP/HTTP every
//!   `OTEL_METRIC_EXPORT_INTERVAL` ms (default 60 s) and at shutdown, beside the Prometheus
//!   registry ([`MetricsTee`]). They carry no key, user or team attribute: their series are
//!   bounded by providers × models × outcomes.

use crate::cli::LogFormat;
use metis_domain::canonical::Usage;
use metis_ports::metrics::{Attribution, CallLabels, Metrics, QuotaRatio, ScrapeGauges};
use metis_ports::system::TraceContext;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Set once by [`init`] when an exporter is installed.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans (set by [`init`]).
#[must_use]
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Acquire)
}

/// Set once by [`init`] when metrics are exported over OTLP.
static METER_PROVIDER: OnceLock<SdkMeterProvider> = OnceLock::new();

/// Keeps the tracer and meter providers alive; `shutdown` flushes pending spans and metrics.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    #[must_use]
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flush and stop the exporters (blocking work runs off the async workers).
    pub async fn shutdown(self) {
        if let Some(m) = self.meters {
            let _ = tokio::task::spawn_blocking(move || m.shutdown()).await;
        }
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

/// Install the global subscriber (and the OTLP exporter when configured).
///
/// # Errors
/// An invalid OTLP endpoint or exporter setup failure.
pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty());
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
        return Ok(Telemetry {
            provider: None,
            meters: None,
        });
    };
    let traces_url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces_url)
        .with_timeout(std::time::Duration::from_secs(3))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot set up the OTLP exporter for {endpoint}: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "metis-gateway".into());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.clone())
        .build();
    let metrics_off =
        std::env::var("OTEL_METRICS_EXPORTER").is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    let meters = if metrics_off {
        None
    } else {
        let metrics_url = format!("{}/v1/metrics", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(metrics_url)
            .with_timeout(std::time::Duration::from_secs(3))
            .build()
            .map_err(|e| {
                anyhow::anyhow!("cannot set up the OTLP metrics exporter for {endpoint}: {e}")
            })?;
        // The periodic reader honours OTEL_METRIC_EXPORT_INTERVAL (ms, default 60 s) and
        // exports once more at shutdown.
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build();
        let meters = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        let _ = METER_PROVIDER.set(meters.clone());
        Some(meters)
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("metis-gateway");
    // Exporter internals log at debug; keep their retries out of the gateway's log.
    let otel_filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::TRACE)
        .with_target("opentelemetry_sdk", tracing::Level::WARN)
        .with_target("opentelemetry_otlp", tracing::Level::WARN)
        .with_target("opentelemetry_http", tracing::Level::WARN);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(otel_filter),
        )
        .init();
    EXPORTING.store(true, std::sync::atomic::Ordering::Release);
    Ok(Telemetry {
        provider: Some(provider),
        meters,
    })
}

/// The OTLP metrics instruments, when [`init`] set up a metrics exporter.
#[must_use]
pub fn otel_metrics() -> Option<OtelMetrics> {
    METER_PROVIDER.get().map(OtelMetrics::new)
}

/// Histogram boundaries advised by the GenAI semantic conventions.
const TOKEN_BOUNDARIES: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
const DURATION_BOUNDARIES: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
const TTFT_BOUNDARIES: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// The stable HTTP semantic conventions' advice for `http.server.request.duration`.
const HTTP_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The OpenTelemetry GenAI (and HTTP server) metrics, fed through the `Metrics` port:
/// - `gen_ai.client.token.usage` (`{token}`; `gen_ai.token.type` input / output),
/// - `gen_ai.client.operation.duration` (s; `error.type` on failures),
/// - `gen_ai.server.request.duration` (s; request routed to last byte, streams included),
/// - `gen_ai.server.time_to_first_token` (s; streams),
/// - `http.server.request.duration` (s; every route, streams to the response head).
///
/// The GenAI ones carry `gen_ai.operation.name`, `gen_ai.provider.name` (and the older
/// `gen_ai.system`, which the spans use), `gen_ai.request.model` and, on success,
/// `gen_ai.response.model`. Both GenAI durations are measured from the moment the gateway
/// routed the call; its own work before the upstream send is sub-millisecond, so they
/// differ only in name (client view of the upstream, server view of the gateway).
pub struct OtelMetrics {
    token_usage: Histogram<u64>,
    operation_duration: Histogram<f64>,
    server_duration: Histogram<f64>,
    first_token: Histogram<f64>,
    http_duration: Histogram<f64>,
}

impl OtelMetrics {
    /// Instruments on `provider`'s `metis-gateway` meter.
    #[must_use]
    pub fn new(provider: &SdkMeterProvider) -> Self {
        let meter = provider.meter("metis-gateway");
        OtelMetrics {
            token_usage: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used.")
                .with_boundaries(TOKEN_BOUNDARIES.to_vec())
                .build(),
            operation_duration: meter
                .f64_histogram("gen_ai.client.operation.duration")
                .with_unit("s")
                .with_description("GenAI operation duration.")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            server_duration: meter
                .f64_histogram("gen_ai.server.request.duration")
                .with_unit("s")
                .with_description("Generative AI server request duration such as time-to-last byte or last output token.")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            first_token: meter
                .f64_histogram("gen_ai.server.time_to_first_token")
                .with_unit("s")
                .with_description("Time to generate first token for successful responses.")
                .with_boundaries(TTFT_BOUNDARIES.to_vec())
                .build(),
            http_duration: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Duration of HTTP server requests.")
                .with_boundaries(HTTP_BOUNDARIES.to_vec())
                .build(),
        }
    }
}

/// The GenAI attributes of a call.
fn gen_ai_attributes(call: &CallLabels<'_>, ok: bool) -> Vec<KeyValue> {
    let name = call
        .model
        .split_once(':')
        .map_or(call.model, |(_, m)| m)
        .to_owned();
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", call.operation.to_owned()),
        KeyValue::new("gen_ai.provider.name", call.provider.to_owned()),
        KeyValue::new("gen_ai.system", call.provider.to_owned()),
        KeyValue::new("gen_ai.request.model", name.clone()),
    ];
    if ok {
        attrs.push(KeyValue::new("gen_ai.response.model", name));
    }
    attrs
}

impl Metrics for OtelMetrics {
    fn http_request(&self, route: &str, method: &str, status: u16, _shape: &str, seconds: f64) {
        let mut attrs = vec![
            KeyValue::new("http.request.method", method.to_owned()),
            KeyValue::new("http.route", route.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ];
        if status >= 500 {
            attrs.push(KeyValue::new("error.type", status.to_string()));
        }
        self.http_duration.record(seconds, &attrs);
    }

    fn upstream_call(&self, call: &CallLabels<'_>, outcome: &str, seconds: f64) {
        let ok = outcome == "ok";
        let mut attrs = gen_ai_attributes(call, ok);
        if !ok {
            attrs.push(KeyValue::new("error.type", outcome.to_owned()));
        }
        self.operation_duration.record(seconds, &attrs);
        self.server_duration.record(seconds, &attrs);
    }

    fn upstream_retries(&self, _call: &CallLabels<'_>, _retries: u32) {}

    fn first_token(&self, call: &CallLabels<'_>, seconds: f64) {
        self.first_token
            .record(seconds, &gen_ai_attributes(call, true));
    }

    fn usage(&self, call: &CallLabels<'_>, _who: &Attribution<'_>, usage: &Usage, _cost: f64) {
        let mut attrs = gen_ai_attributes(call, true);
        for (kind, n) in [
            ("input", usage.total_input()),
            ("output", usage.output_tokens),
        ] {
            attrs.push(KeyValue::new("gen_ai.token.type", kind));
            self.token_usage.record(n, &attrs);
            attrs.pop();
        }
    }

    fn auth_failure(&self, _reason: &str) {}
    fn rate_limit(&self, _bucket: &str, _allowed: bool) {}
    fn quota_ratios(&self, _ratios: &[QuotaRatio]) {}
    fn quota_event(&self, _scope: &str, _event: &str) {}
    fn key_leak_suspected(&self) {}
    fn admission_outage(&self, _step: &str, _decision: &str) {}
    fn inflight(&self, _delta: i64) {}
    fn streams(&self, _delta: i64) {}
    fn token_count(&self, _method: &str) {}
    // Listener health has no GenAI or HTTP semantic-convention instrument: Prometheus only.
    fn accept_error(&self, _kind: &str) {}
    fn refused(&self, _reason: &str) {}
    fn connections(&self, _delta: i64) {}
    fn connection_limit(&self, _limit: u64) {}
    fn inflight_body_bytes(&self, _delta: i64) {}

    fn render(&self, _gauges: &ScrapeGauges) -> String {
        String::new()
    }
}

/// The Prometheus registry plus the OTLP instruments: every measurement goes to both (the
/// OTLP side keeps the GenAI and HTTP ones), and `/metrics` renders the Prometheus one.
pub struct MetricsTee {
    pub prometheus: Arc<metis_telemetry::Prometheus>,
    pub otel: OtelMetrics,
}

impl Metrics for MetricsTee {
    fn http_request(&self, route: &str, method: &str, status: u16, shape: &str, seconds: f64) {
        self.prometheus
            .http_request(route, method, status, shape, seconds);
        self.otel
            .http_request(route, method, status, shape, seconds);
    }
    fn upstream_call(&self, call: &CallLabels<'_>, outcome: &str, seconds: f64) {
        self.prometheus.upstream_call(call, outcome, seconds);
        self.otel.upstream_call(call, outcome, seconds);
    }
    fn upstream_retries(&self, call: &CallLabels<'_>, retries: u32) {
        self.prometheus.upstream_retries(call, retries);
        self.otel.upstream_retries(call, retries);
    }
    fn first_token(&self, call: &CallLabels<'_>, seconds: f64) {
        self.prometheus.first_token(call, seconds);
        self.otel.first_token(call, seconds);
    }
    fn usage(&self, call: &CallLabels<'_>, who: &Attribution<'_>, usage: &Usage, cost: f64) {
        self.prometheus.usage(call, who, usage, cost);
        self.otel.usage(call, who, usage, cost);
    }
    fn auth_failure(&self, reason: &str) {
        self.prometheus.auth_failure(reason);
        self.otel.auth_failure(reason);
    }
    fn rate_limit(&self, bucket: &str, allowed: bool) {
        self.prometheus.rate_limit(bucket, allowed);
        self.otel.rate_limit(bucket, allowed);
    }
    fn quota_ratios(&self, ratios: &[QuotaRatio]) {
        self.prometheus.quota_ratios(ratios);
        self.otel.quota_ratios(ratios);
    }
    fn quota_event(&self, scope: &str, event: &str) {
        self.prometheus.quota_event(scope, event);
        self.otel.quota_event(scope, event);
    }
    fn key_leak_suspected(&self) {
        self.prometheus.key_leak_suspected();
        self.otel.key_leak_suspected();
    }
    fn admission_outage(&self, step: &str, decision: &str) {
        self.prometheus.admission_outage(step, decision);
        self.otel.admission_outage(step, decision);
    }
    fn inflight(&self, delta: i64) {
        self.prometheus.inflight(delta);
        self.otel.inflight(delta);
    }
    fn streams(&self, delta: i64) {
        self.prometheus.streams(delta);
        self.otel.streams(delta);
    }
    fn token_count(&self, method: &str) {
        self.prometheus.token_count(method);
        self.otel.token_count(method);
    }
    fn accept_error(&self, kind: &str) {
        self.prometheus.accept_error(kind);
        self.otel.accept_error(kind);
    }
    fn refused(&self, reason: &str) {
        self.prometheus.refused(reason);
        self.otel.refused(reason);
    }
    fn connections(&self, delta: i64) {
        self.prometheus.connections(delta);
        self.otel.connections(delta);
    }
    fn connection_limit(&self, limit: u64) {
        self.prometheus.connection_limit(limit);
        self.otel.connection_limit(limit);
    }
    fn inflight_body_bytes(&self, delta: i64) {
        self.prometheus.inflight_body_bytes(delta);
        self.otel.inflight_body_bytes(delta);
    }
    fn render(&self, gauges: &ScrapeGauges) -> String {
        self.prometheus.render(gauges)
    }
}

/// The server span of one HTTP request, parented by the client's `traceparent` if any.
#[must_use]
pub fn request_span(method: &str, path: &str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {path}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
    );
    if let Some(tp) = traceparent {
        let mut carrier = std::collections::HashMap::new();
        carrier.insert("traceparent".to_owned(), tp.to_owned());
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
    span
}

/// `TraceContext` from the current tracing span's OpenTelemetry context.
#[derive(Debug, Clone, Copy)]
pub struct OtelTraceContext {
    pub exporting: bool,
}

impl TraceContext for OtelTraceContext {
    fn exporting(&self) -> bool {
        self.exporting
    }

    fn current_traceparent(&self) -> Option<String> {
        if !self.exporting {
            return None;
        }
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }
}
