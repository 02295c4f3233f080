//! `metis-telemetry`: a small Prometheus registry implementing the `Metrics` port, rendered in
//! the text exposition format at `/metrics`.
//!
//! Invariants:
//! - Labels carry route templates, shapes, providers, model ids, key ids (not secrets: tokens
//!   are random and independent of ids), users, teams, reasons and buckets — never tokens or
//!   prompt text.
//! - Key ids, users and teams become label values only within the series budget
//!   ([`SeriesBudget`], module `budget`): the scrape stays bounded whatever the number of keys.
//! - Series are kept in sorted maps so the output is deterministic and diffable.
//! - Recording takes one short mutex per family (no allocation when the series exists).

mod alerts;
mod budget;
mod exposition;
mod process;
mod render;
mod series;
#[cfg(test)]
mod tests;

pub use budget::{NONE, OTHER, SeriesBudget};

use budget::SpendBook;
use exposition::{counter, gauge, write_commit_lag, write_family, write_hist};
use metis_domain::canonical::Usage;
use metis_ports::metrics::{Attribution, CallLabels, Metrics, QuotaRatio, ScrapeGauges};
use series::{Family, HistFamily, add, lock, observe};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The registry.
#[derive(Debug)]
pub struct Prometheus {
    http_requests: Mutex<Family>,
    http_latency: Mutex<HistFamily>,
    upstream_calls: Mutex<Family>,
    upstream_latency: Mutex<HistFamily>,
    auth_failures: Mutex<Family>,
    rate_limit: Mutex<Family>,
    token_counts: Mutex<Family>,
    inflight: AtomicI64,
    streams: AtomicI64,
    // Observability additions (issue 18): budgeted spend, retries, time to first token,
    // cap events, leak signals, certificate expiry.
    budget: SeriesBudget,
    spend: Mutex<SpendBook>,
    quota_ratios: Mutex<Vec<QuotaRatio>>,
    quota_events: Mutex<Family>,
    /// Decisions taken while a shared admission store did not answer (fleet stores).
    admission_outage: Mutex<Family>,
    upstream_retries: Mutex<Family>,
    first_token: Mutex<HistFamily>,
    key_leaks: AtomicU64,
    /// `notAfter` of the in-process TLS certificate (unix seconds); `i64::MIN` = no TLS.
    tls_not_after: AtomicI64,
    accept_errors: Mutex<Family>,
    refused: Mutex<Family>,
    connections: AtomicI64,
    connection_limit: AtomicI64,
    inflight_body_bytes: AtomicI64,
    /// Budget alerts and their webhook deliveries (the `AlertMetrics` port).
    alerts: alerts::AlertSeries,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus::new(SeriesBudget::default())
    }
}

impl Prometheus {
    /// A registry rendering per-key, per-user and per-team series within `budget`.
    #[must_use]
    pub fn new(budget: SeriesBudget) -> Self {
        Prometheus {
            http_requests: Mutex::default(),
            http_latency: Mutex::default(),
            upstream_calls: Mutex::default(),
            upstream_latency: Mutex::default(),
            auth_failures: Mutex::default(),
            rate_limit: Mutex::default(),
            token_counts: Mutex::default(),
            inflight: AtomicI64::default(),
            streams: AtomicI64::default(),
            spend: Mutex::new(SpendBook::new(&budget)),
            budget,
            quota_ratios: Mutex::default(),
            quota_events: Mutex::default(),
            admission_outage: Mutex::default(),
            upstream_retries: Mutex::default(),
            first_token: Mutex::default(),
            key_leaks: AtomicU64::default(),
            tls_not_after: AtomicI64::new(i64::MIN),
            accept_errors: Mutex::default(),
            refused: Mutex::default(),
            connections: AtomicI64::default(),
            connection_limit: AtomicI64::default(),
            inflight_body_bytes: AtomicI64::default(),
            alerts: alerts::AlertSeries::default(),
        }
    }

    /// Report the in-process TLS certificate's expiry (`notAfter`, unix seconds). The
    /// certificate is read once at start, so this is set once.
    pub fn set_tls_not_after(&self, unix_seconds: i64) {
        self.tls_not_after.store(unix_seconds, Ordering::Relaxed);
    }
}

#[expect(clippy::cast_precision_loss, reason = "token counters")]
fn token_array(u: &Usage) -> [f64; 4] {
    [
        u.input_tokens as f64,
        u.output_tokens as f64,
        u.cache_read_tokens as f64,
        u.cache_write_tokens as f64,
    ]
}

impl Metrics for Prometheus {
    fn http_request(&self, route: &str, method: &str, status: u16, shape: &str, seconds: f64) {
        let labels = vec![
            ("route", route.to_owned()),
            ("method", method.to_owned()),
            ("status", status.to_string()),
            ("shape", shape.to_owned()),
        ];
        add(&self.http_requests, labels, 1.0);
        let hl = vec![("route", route.to_owned()), ("shape", shape.to_owned())];
        observe(&self.http_latency, hl, seconds);
    }

    fn upstream_call(&self, call: &CallLabels<'_>, outcome: &str, seconds: f64) {
        let labels = vec![
            ("provider", call.provider.to_owned()),
            ("model", call.model.to_owned()),
            ("status", outcome.to_owned()),
        ];
        add(&self.upstream_calls, labels, 1.0);
        let hl = vec![
            ("provider", call.provider.to_owned()),
            ("model", call.model.to_owned()),
        ];
        observe(&self.upstream_latency, hl, seconds);
    }

    fn upstream_retries(&self, call: &CallLabels<'_>, retries: u32) {
        let labels = vec![
            ("provider", call.provider.to_owned()),
            ("model", call.model.to_owned()),
        ];
        add(&self.upstream_retries, labels, f64::from(retries));
    }

    fn first_token(&self, call: &CallLabels<'_>, seconds: f64) {
        let labels = vec![
            ("provider", call.provider.to_owned()),
            ("model", call.model.to_owned()),
        ];
        observe(&self.first_token, labels, seconds);
    }

    fn usage(&self, call: &CallLabels<'_>, who: &Attribution<'_>, usage: &Usage, cost_usd: f64) {
        lock(&self.spend).record(who, call.model, &token_array(usage), cost_usd);
    }

    fn auth_failure(&self, reason: &str) {
        add(
            &self.auth_failures,
            vec![("reason", reason.to_owned())],
            1.0,
        );
    }

    fn rate_limit(&self, bucket: &str, allowed: bool) {
        let decision = if allowed { "allow" } else { "deny" };
        add(
            &self.rate_limit,
            vec![
                ("bucket", bucket.to_owned()),
                ("decision", decision.to_owned()),
            ],
            1.0,
        );
    }

    fn quota_ratios(&self, ratios: &[QuotaRatio]) {
        *lock(&self.quota_ratios) = ratios.to_vec();
    }

    fn quota_event(&self, scope: &str, event: &str) {
        let labels = vec![("scope", scope.to_owned()), ("event", event.to_owned())];
        add(&self.quota_events, labels, 1.0);
    }

    fn key_leak_suspected(&self) {
        self.key_leaks.fetch_add(1, Ordering::Relaxed);
    }

    fn admission_outage(&self, step: &str, decision: &str) {
        let labels = vec![("step", step.to_owned()), ("decision", decision.to_owned())];
        add(&self.admission_outage, labels, 1.0);
    }

    fn inflight(&self, delta: i64) {
        self.inflight.fetch_add(delta, Ordering::Relaxed);
    }

    fn streams(&self, delta: i64) {
        self.streams.fetch_add(delta, Ordering::Relaxed);
    }

    fn token_count(&self, method: &str) {
        add(&self.token_counts, vec![("method", method.to_owned())], 1.0);
    }

    fn accept_error(&self, kind: &str) {
        add(&self.accept_errors, vec![("kind", kind.to_owned())], 1.0);
    }

    fn refused(&self, reason: &str) {
        add(&self.refused, vec![("reason", reason.to_owned())], 1.0);
    }

    fn connections(&self, delta: i64) {
        self.connections.fetch_add(delta, Ordering::Relaxed);
    }

    fn connection_limit(&self, limit: u64) {
        self.connection_limit
            .store(i64::try_from(limit).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    fn inflight_body_bytes(&self, delta: i64) {
        self.inflight_body_bytes.fetch_add(delta, Ordering::Relaxed);
    }

    fn render(&self, g: &ScrapeGauges) -> String {
        let mut out = String::with_capacity(4096);
        write_family(
            &mut out,
            "metis_http_requests_total",
            "counter",
            "HTTP requests by route, method, status and inbound shape.",
            &self.http_requests,
        );
        write_family(
            &mut out,
            "metis_token_counts_total",
            "counter",
            "Token-count requests answered (count_tokens, input_tokens) by method: exact (the upstream counted), tokenizer, estimate.",
            &self.token_counts,
        );
        write_hist(
            &mut out,
            "metis_http_request_duration_seconds",
            "HTTP request latency (to the response head for streams).",
            &self.http_latency,
        );
        write_family(
            &mut out,
            "metis_upstream_calls_total",
            "counter",
            "Upstream calls by provider, model and outcome (ok or error class).",
            &self.upstream_calls,
        );
        write_hist(
            &mut out,
            "metis_upstream_call_duration_seconds",
            "Upstream call latency (whole call, streams included).",
            &self.upstream_latency,
        );
        write_family(
            &mut out,
            "metis_upstream_retries_total",
            "counter",
            "Extra upstream attempts (429, 5xx, network failures retried before the first byte) by provider and model.",
            &self.upstream_retries,
        );
        write_hist(
            &mut out,
            "metis_time_to_first_token_seconds",
            "Streams: time from routing the request to relaying the first content token, by provider and model.",
            &self.first_token,
        );
        self.render_spend(&mut out);
        write_family(
            &mut out,
            "metis_gateway_auth_failures_total",
            "counter",
            "Authentication failures by reason.",
            &self.auth_failures,
        );
        write_family(
            &mut out,
            "metis_ratelimit_decisions_total",
            "counter",
            "Rate-limit decisions by bucket (per_key, per_ip) and decision (allow, deny).",
            &self.rate_limit,
        );
        self.render_quota(&mut out);
        write_family(
            &mut out,
            "metis_quota_events_total",
            "counter",
            "Spend-cap events by cap name and event (alert_<level>, e.g. alert_80, alert_95, alert_100: a budget alert level crossed, once per window; exceeded: a request refused at the cap).",
            &self.quota_events,
        );
        write_family(
            &mut out,
            "metis_admission_outage_decisions_total",
            "counter",
            "Decisions taken while a spend or rate-limit store shared by replicas did not answer, by step and decision: spend/refused (a capped key, --spend-outage fail-closed), spend/local (fail-open: decided on this process's last known balance), spend_settlement/deferred|replayed|dropped (settlements kept for the store, replayed into it, or dropped from a full backlog), rate_limit/local (per-key limit decided on this process's buckets).",
            &self.admission_outage,
        );
        self.alerts.render(&mut out);
        counter(
            &mut out,
            "metis_gateway_key_leak_suspected_total",
            "Keys seen from more client addresses than the leak threshold (gateway.key_leak_suspected events).",
            self.key_leaks.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "metis_inflight_requests",
            "Provider requests being handled.",
            self.inflight.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "metis_open_streams",
            "Client SSE streams open.",
            self.streams.load(Ordering::Relaxed),
        );
        write_family(
            &mut out,
            "metis_accept_errors_total",
            "counter",
            "Failed accepts by kind (fd_limit: out of file descriptors; other).",
            &self.accept_errors,
        );
        write_family(
            &mut out,
            "metis_refused_total",
            "counter",
            "Connections or requests refused with 503 before any handler ran, by reason (connection_cap, fd_limit, body_memory).",
            &self.refused,
        );
        gauge(
            &mut out,
            "metis_open_connections",
            "Client connections open.",
            self.connections.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "metis_connection_limit",
            "Connection cap in force (--max-connections, lowered to fit the file descriptor limit).",
            self.connection_limit.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "metis_inflight_body_bytes",
            "Request body bytes reserved by requests in flight (bounded by --max-inflight-body-bytes).",
            self.inflight_body_bytes.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "metis_trace_queue_depth",
            "Events waiting for the trace writer.",
            g.trace_queue_depth,
        );
        counter(
            &mut out,
            "metis_trace_events_written_total",
            "Events durably written by the trace writer.",
            g.trace_events_written,
        );
        counter(
            &mut out,
            "metis_trace_events_overflowed_total",
            "Events refused because the trace queue was full.",
            g.trace_events_overflowed,
        );
        counter(
            &mut out,
            "metis_trace_events_failed_total",
            "Events the trace writer failed to store.",
            g.trace_events_failed,
        );
        gauge(
            &mut out,
            "metis_gateway_keys_active",
            "Keys that authenticate now.",
            g.keys_active,
        );
        gauge(
            &mut out,
            "metis_gateway_keys_revoked",
            "Keys revoked or past their grace end.",
            g.keys_revoked,
        );
        gauge(
            &mut out,
            "metis_trace_wal_bytes",
            "Size of the trace database's write-ahead log.",
            g.wal_bytes,
        );
        write_commit_lag(&mut out, &g.trace_commit_lag);
        self.render_state(&mut out, g);
        render::render_deployments(&mut out, g);
        out
    }
}
