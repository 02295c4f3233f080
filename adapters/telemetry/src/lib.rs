//! `gw-telemetry`: a small Prometheus registry implementing the `Metrics` port, rendered in
//! the text exposition format at `/metrics`.
//!
//! Invariants:
//! - Labels carry route templates, shapes, providers, model ids, key ids (not secrets: tokens
//!   are random and independent of ids), reasons and buckets — never tokens or prompt text.
//! - Series are kept in sorted maps so the output is deterministic and diffable.
//! - Recording takes one short mutex per family (no allocation when the series exists).

use gw_domain::canonical::Usage;
use gw_ports::metrics::{Metrics, ScrapeGauges};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// Latency buckets in seconds (gateway overhead is sub-millisecond; upstream calls take
/// seconds).
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Family {
    series: BTreeMap<Labels, f64>,
}

#[derive(Debug, Clone, Default)]
struct Hist {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct HistFamily {
    series: BTreeMap<Labels, Hist>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The registry.
#[derive(Debug, Default)]
pub struct Prometheus {
    http_requests: Mutex<Family>,
    http_latency: Mutex<HistFamily>,
    upstream_calls: Mutex<Family>,
    upstream_latency: Mutex<HistFamily>,
    tokens: Mutex<Family>,
    cost: Mutex<Family>,
    auth_failures: Mutex<Family>,
    rate_limit: Mutex<Family>,
    quota_ratio: Mutex<Family>,
    token_counts: Mutex<Family>,
    inflight: AtomicI64,
    streams: AtomicI64,
    accept_errors: Mutex<Family>,
    refused: Mutex<Family>,
    connections: AtomicI64,
    connection_limit: AtomicI64,
    inflight_body_bytes: AtomicI64,
}

fn add(f: &Mutex<Family>, labels: Labels, v: f64) {
    *lock(f).series.entry(labels).or_insert(0.0) += v;
}

fn set(f: &Mutex<Family>, labels: Labels, v: f64) {
    lock(f).series.insert(labels, v);
}

fn observe(f: &Mutex<HistFamily>, labels: Labels, v: f64) {
    let mut g = lock(f);
    let h = g.series.entry(labels).or_default();
    for (i, b) in BUCKETS.iter().enumerate() {
        if v <= *b
            && let Some(c) = h.counts.get_mut(i)
        {
            *c += 1;
        }
    }
    h.sum += v;
    h.count += 1;
}

/// Escape a label value per the exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(labels: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn write_family(out: &mut String, name: &str, kind: &str, help: &str, f: &Mutex<Family>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in &lock(f).series {
        let _ = writeln!(out, "{name}{} {v}", label_text(labels, None));
    }
}

fn write_hist(out: &mut String, name: &str, help: &str, f: &Mutex<HistFamily>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, h) in &lock(f).series {
        for (i, b) in BUCKETS.iter().enumerate() {
            let le = b.to_string();
            let c = h.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{name}_bucket{} {c}",
                label_text(labels, Some(("le", &le)))
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            label_text(labels, Some(("le", "+Inf"))),
            h.count
        );
        let _ = writeln!(out, "{name}_sum{} {}", label_text(labels, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", label_text(labels, None), h.count);
    }
}

/// The trace writer's commit lag: how long the oldest event of each committed batch waited
/// (the window of acknowledged events a SIGKILL can lose), against the commit deadline.
fn write_commit_lag(out: &mut String, l: &gw_ports::trace::CommitLagStats) {
    use gw_ports::trace::COMMIT_LAG_BUCKETS_MS;
    let secs = |us: u64| us as f64 / 1e6;
    let name = "metis_trace_commit_lag_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Queue-to-commit lag of the oldest event of each committed trace batch.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0u64;
    for (i, ms) in COMMIT_LAG_BUCKETS_MS.iter().enumerate() {
        cumulative += l.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *ms as f64 / 1e3
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", l.count);
    let _ = writeln!(out, "{name}_sum {}", secs(l.sum_us));
    let _ = writeln!(out, "{name}_count {}", l.count);
    gauge(
        out,
        "metis_trace_commit_lag_max_seconds",
        "Largest queue-to-commit lag of a trace batch since start.",
        secs(l.max_us),
    );
    gauge(
        out,
        "metis_trace_commit_deadline_seconds",
        "The trace writer's commit deadline (--trace-commit-deadline).",
        secs(l.deadline_us),
    );
    let _ = writeln!(
        out,
        "# HELP metis_trace_commit_deadline_misses_total Trace batches committed later than the deadline.\n# TYPE metis_trace_commit_deadline_misses_total counter\nmetis_trace_commit_deadline_misses_total {}",
        l.deadline_misses
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
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

    fn upstream_call(&self, provider: &str, model: &str, outcome: &str, seconds: f64) {
        let labels = vec![
            ("provider", provider.to_owned()),
            ("model", model.to_owned()),
            ("status", outcome.to_owned()),
        ];
        add(&self.upstream_calls, labels, 1.0);
        let hl = vec![
            ("provider", provider.to_owned()),
            ("model", model.to_owned()),
        ];
        observe(&self.upstream_latency, hl, seconds);
    }

    fn usage(&self, key_id: &str, model: &str, usage: &Usage, cost_usd: f64) {
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ] {
            if n > 0 {
                #[expect(clippy::cast_precision_loss, reason = "token counters")]
                let v = n as f64;
                add(
                    &self.tokens,
                    vec![
                        ("gateway_key_id", key_id.to_owned()),
                        ("model", model.to_owned()),
                        ("kind", kind.to_owned()),
                    ],
                    v,
                );
            }
        }
        add(
            &self.cost,
            vec![
                ("gateway_key_id", key_id.to_owned()),
                ("model", model.to_owned()),
            ],
            cost_usd,
        );
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

    fn quota_ratio(&self, key_id: &str, scope: &str, ratio: f64) {
        set(
            &self.quota_ratio,
            vec![
                ("gateway_key_id", key_id.to_owned()),
                ("scope", scope.to_owned()),
            ],
            ratio,
        );
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
            "metis_tokens_total",
            "counter",
            "Tokens by gateway key, model and bucket (input, output, cache_read, cache_write).",
            &self.tokens,
        );
        write_family(
            &mut out,
            "metis_cost_usd_total",
            "counter",
            "Cost in USD by gateway key and model.",
            &self.cost,
        );
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
        write_family(
            &mut out,
            "metis_quota_used_ratio",
            "gauge",
            "Spend over cap by gateway key and scope, as of the key's last request.",
            &self.quota_ratio,
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
        gauge(
            &mut out,
            "metis_trace_events_written_total",
            "Events durably written by the trace writer.",
            g.trace_events_written,
        );
        gauge(
            &mut out,
            "metis_trace_events_overflowed_total",
            "Events refused because the trace queue was full.",
            g.trace_events_overflowed,
        );
        gauge(
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let p = Prometheus::default();
        p.http_request("/v1/messages", "POST", 200, "anthropic", 0.0007);
        p.auth_failure("invalid_token");
        p.rate_limit("per_key", false);
        let mut lag = gw_ports::trace::CommitLagStats {
            deadline_us: 50_000,
            count: 3,
            sum_us: 70_000,
            max_us: 60_000,
            deadline_misses: 1,
            ..Default::default()
        };
        lag.buckets[2] = 2;
        lag.buckets[6] = 1;
        let text = p.render(&ScrapeGauges {
            keys_active: 3,
            trace_commit_lag: lag,
            ..ScrapeGauges::default()
        });
        assert!(
            text.contains("metis_trace_commit_lag_seconds_bucket{le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("metis_trace_commit_lag_seconds_bucket{le=\"0.05\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("metis_trace_commit_lag_seconds_bucket{le=\"0.1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("metis_trace_commit_lag_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("metis_trace_commit_lag_seconds_count 3\n"),
            "{text}"
        );
        assert!(
            text.contains("metis_trace_commit_lag_max_seconds 0.06\n"),
            "{text}"
        );
        assert!(
            text.contains("metis_trace_commit_deadline_seconds 0.05\n"),
            "{text}"
        );
        assert!(
            text.contains("metis_trace_commit_deadline_misses_total 1\n"),
            "{text}"
        );
        assert!(text.contains("metis_http_requests_total{route=\"/v1/messages\",method=\"POST\",status=\"200\",shape=\"anthropic\"} 1"));
        assert!(text.contains("metis_http_request_duration_seconds_bucket{route=\"/v1/messages\",shape=\"anthropic\",le=\"0.001\"} 1"));
        assert!(text.contains("metis_http_request_duration_seconds_bucket{route=\"/v1/messages\",shape=\"anthropic\",le=\"0.0005\"} 0"));
        assert!(text.contains("metis_gateway_auth_failures_total{reason=\"invalid_token\"} 1"));
        assert!(
            text.contains(
                "metis_ratelimit_decisions_total{bucket=\"per_key\",decision=\"deny\"} 1"
            )
        );
        assert!(text.contains("metis_gateway_keys_active 3"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
