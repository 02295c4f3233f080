//! Logging and distributed tracing setup (the only place that knows OpenTelemetry).
//!
//! - Logs: `tracing` to stderr, human-readable on a TTY and JSON otherwise (`--log-format`),
//!   level from `RUST_LOG` (default `info`).
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are exported over OTLP/HTTP
//!   (protobuf) with the W3C trace-context propagator; otherwise no exporter exists at all.
//!   Incoming `traceparent` headers parent the request span (see [`request_span`]), and the
//!   gateway's own span context is propagated to upstreams ([`OtelTraceContext`]).

use crate::cli::LogFormat;
use gw_ports::system::TraceContext;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
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

/// Keeps the tracer provider alive; `shutdown` flushes pending spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    #[must_use]
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flush and stop the exporter (blocking work runs off the async workers).
    pub async fn shutdown(self) {
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
        return Ok(Telemetry { provider: None });
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
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
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
    })
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
