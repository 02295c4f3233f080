//! `gw-telemetry`: a small Prometheus registry implementing the `Metrics` port, rendered in
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

mod budget;
mod process;

pub use budget::{NONE, OTHER, SeriesBudget};

use budget::{KINDS, SpendBook, Totals};
use gw_domain::canonical::Usage;
use gw_ports::metrics::{Attribution, CallLabels, Metrics, QuotaRatio, ScrapeGauges};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
            upstream_retries: Mutex::default(),
            first_token: Mutex::default(),
            key_leaks: AtomicU64::default(),
            tls_not_after: AtomicI64::new(i64::MIN),
            accept_errors: Mutex::default(),
            refused: Mutex::default(),
            connections: AtomicI64::default(),
            connection_limit: AtomicI64::default(),
            inflight_body_bytes: AtomicI64::default(),
        }
    }

    /// Report the in-process TLS certificate's expiry (`notAfter`, unix seconds). The
    /// certificate is read once at start, so this is set once.
    pub fn set_tls_not_after(&self, unix_seconds: i64) {
        self.tls_not_after.store(unix_seconds, Ordering::Relaxed);
    }
}

fn add(f: &Mutex<Family>, labels: Labels, v: f64) {
    *lock(f).series.entry(labels).or_insert(0.0) += v;
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

fn counter(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line; label values are escaped.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], v: f64) {
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    let _ = writeln!(out, "{name}{{{}}} {v}", parts.join(","));
}

/// Tokens by bucket (only buckets that saw tokens, as before) and cost, for one label set.
fn spend_samples(
    out: &mut (String, String),
    names: (&str, &str),
    labels: &[(&str, &str)],
    t: &Totals,
) {
    for (kind, n) in KINDS.iter().zip(t.tokens) {
        if n > 0.0 {
            let mut l = labels.to_vec();
            l.push(("kind", kind));
            sample(&mut out.0, names.0, &l, n);
        }
    }
    sample(&mut out.1, names.1, labels, t.cost);
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

impl Prometheus {
    /// Tokens and cost: by team and model, by user, and per key within the budget.
    fn render_spend(&self, out: &mut String) {
        let book = lock(&self.spend);
        let families = [
            (
                ("metis_tokens_total", "metis_cost_usd_total"),
                "Tokens by team, model and bucket (input, output, cache_read, cache_write); every call, whatever its key.",
                "Cost in USD by team and model; every call, whatever its key.",
            ),
            (
                ("metis_user_tokens_total", "metis_user_cost_usd_total"),
                "Tokens by user and bucket; every call, whatever its key.",
                "Cost in USD by user; every call, whatever its key.",
            ),
            (
                ("metis_key_tokens_total", "metis_key_cost_usd_total"),
                "Tokens by gateway key, model and bucket, for the keys within the series budget (top spenders and --metrics-key).",
                "Cost in USD by gateway key and model, for the keys within the series budget.",
            ),
        ];
        for (i, (names, token_help, cost_help)) in families.iter().enumerate() {
            let mut bufs = (String::new(), String::new());
            match i {
                0 => {
                    for ((team, model), t) in &book.by_team {
                        spend_samples(&mut bufs, *names, &[("team", team), ("model", model)], t);
                    }
                }
                1 => {
                    for (user, t) in &book.by_user {
                        spend_samples(&mut bufs, *names, &[("user", user)], t);
                    }
                }
                _ => {
                    for key in budget::selected_keys(&book.keys, &self.budget) {
                        if let Some(k) = book.keys.get(key) {
                            for (model, t) in &k.by_model {
                                spend_samples(
                                    &mut bufs,
                                    *names,
                                    &[("gateway_key_id", key), ("model", model)],
                                    t,
                                );
                            }
                        }
                    }
                }
            }
            header(out, names.0, "counter", token_help);
            out.push_str(&bufs.0);
            header(out, names.1, "counter", cost_help);
            out.push_str(&bufs.1);
        }
        let name = "metis_metrics_folded_total";
        header(
            out,
            name,
            "counter",
            "Usage records reported under user or team \"_other\" because that label was over its series budget (--metrics-max-users, --metrics-max-teams).",
        );
        #[expect(clippy::cast_precision_loss, reason = "record counters")]
        let folded = [
            ("team", book.folded_teams as f64),
            ("user", book.folded_users as f64),
        ];
        for (label, n) in folded {
            sample(out, name, &[("label", label)], n);
        }
        let name = "metis_metrics_series_budget";
        header(
            out,
            name,
            "gauge",
            "The series budget in force: top_keys and opt_in_keys (keys with per-key series), users and teams (label values before folding into _other).",
        );
        #[expect(clippy::cast_precision_loss, reason = "small configured limits")]
        let limits = [
            ("opt_in_keys", self.budget.keys.len() as f64),
            ("teams", self.budget.max_teams as f64),
            ("top_keys", self.budget.top_keys as f64),
            ("users", self.budget.max_users as f64),
        ];
        for (dimension, n) in limits {
            sample(out, name, &[("dimension", dimension)], n);
        }
    }

    /// Cap ratios within the budget, and the complete count of keys near or over a cap.
    fn render_quota(&self, out: &mut String) {
        let ratios = lock(&self.quota_ratios);
        let name = "metis_quota_used_ratio";
        header(
            out,
            name,
            "gauge",
            "Spend over cap by gateway key and scope (key_daily, key_monthly) as of the scrape, for the keys nearest their caps (series budget) and --metrics-key keys.",
        );
        for r in budget::selected_ratios(&ratios, &self.budget) {
            sample(
                out,
                name,
                &[("gateway_key_id", &r.key_id), ("scope", r.scope)],
                r.ratio,
            );
        }
        let name = "metis_quota_keys";
        header(
            out,
            name,
            "gauge",
            "Keys whose spend is at or over `threshold` of their cap, by scope (every capped key, not only those within the series budget).",
        );
        #[expect(clippy::cast_precision_loss, reason = "key counts")]
        for (scope, threshold, n) in budget::quota_counts(&ratios) {
            sample(
                out,
                name,
                &[("scope", scope), ("threshold", threshold)],
                n as f64,
            );
        }
    }
}

impl Prometheus {
    /// Store, readiness, build, certificate and process state.
    fn render_state(&self, out: &mut String, g: &ScrapeGauges) {
        gauge(
            out,
            "metis_trace_db_bytes",
            "Size of the main store file (trace, sessions, spend).",
            g.db_bytes,
        );
        gauge(
            out,
            "metis_trace_store_writable",
            "1 while the trace store accepts writes; 0 makes /readyz answer 503 (\"trace store is not writable\").",
            u8::from(g.trace_store_writable),
        );
        gauge(
            out,
            "metis_draining",
            "1 once shutdown began (/readyz answers 503 \"draining\").",
            u8::from(g.draining),
        );
        gauge(
            out,
            "metis_ready",
            "1 when /readyz answers 200 (store writable and not draining).",
            u8::from(g.trace_store_writable && !g.draining),
        );
        let name = "metis_build_info";
        header(
            out,
            name,
            "gauge",
            "Always 1; the version label names the running build.",
        );
        sample(out, name, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        let not_after = self.tls_not_after.load(Ordering::Relaxed);
        if not_after != i64::MIN {
            gauge(
                out,
                "metis_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the in-process TLS certificate (--tls-cert), unix seconds. Read at start: roll the process after renewing.",
                not_after,
            );
        }
        process::render(out);
    }
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
            "Spend-cap events by scope and event (alert_80, alert_95: soft alerts once per window; exceeded: a request refused at the cap).",
            &self.quota_events,
        );
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

    const HAIKU: CallLabels<'static> = CallLabels {
        operation: "chat",
        provider: "anthropic",
        model: "anthropic:claude-haiku-4-5",
    };

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        }
    }

    /// Sample lines (not comments) of a family, exactly `name{` or `name `.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .collect()
    }

    #[test]
    fn spend_is_complete_by_team_and_user_and_per_key_only_within_the_budget() {
        let p = Prometheus::new(SeriesBudget {
            top_keys: 2,
            keys: ["gk_optin".to_owned()].into(),
            max_users: 3,
            max_teams: 2,
        });
        // 10 keys, each its own user, in 5 teams; key i spends i cents.
        for i in 0..10u32 {
            let key = format!("gk_{i}");
            let user = format!("user{i}");
            let team = format!("team{}", i % 5);
            let who = Attribution {
                key_id: &key,
                user_id: Some(&user),
                team_id: Some(&team),
            };
            p.usage(&HAIKU, &who, &usage(10, 5), f64::from(i) / 100.0);
        }
        let who = Attribution {
            key_id: "gk_optin",
            user_id: None,
            team_id: None,
        };
        let gpt = CallLabels {
            operation: "chat",
            provider: "openai",
            model: "openai:gpt-5",
        };
        p.usage(&gpt, &who, &usage(1, 1), 0.0);
        let text = p.render(&ScrapeGauges::default());

        // Teams: team0 and team1 admitted, the rest folded; totals stay complete.
        let team_cost = samples(&text, "metis_cost_usd_total");
        assert_eq!(team_cost.len(), 4, "{team_cost:?}"); // team0, team1, _other, none
        assert!(
            text.contains(
                "metis_cost_usd_total{team=\"_other\",model=\"anthropic:claude-haiku-4-5\"} 0.3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "metis_tokens_total{team=\"none\",model=\"openai:gpt-5\",kind=\"input\"} 1"
            )
        );
        let input: f64 = samples(&text, "metis_tokens_total")
            .iter()
            .filter(|l| l.contains("kind=\"input\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            (input - 101.0).abs() < 1e-9,
            "all input tokens kept: {input}"
        );
        // Users: three admitted, seven folded, plus `none`.
        assert_eq!(samples(&text, "metis_user_cost_usd_total").len(), 5);
        assert!(text.contains("metis_user_tokens_total{user=\"_other\",kind=\"input\"} 70"));
        assert!(text.contains("metis_metrics_folded_total{label=\"user\"} 7"));
        assert!(text.contains("metis_metrics_folded_total{label=\"team\"} 6"));
        // Per key: the two biggest spenders and the opt-in key only.
        let keys: Vec<&str> = samples(&text, "metis_key_cost_usd_total");
        assert_eq!(keys.len(), 3, "{keys:?}");
        for k in ["gk_9", "gk_8", "gk_optin"] {
            assert!(
                keys.iter().any(|l| l.contains(&format!("\"{k}\""))),
                "{k}: {keys:?}"
            );
        }
        assert!(text.contains("metis_metrics_series_budget{dimension=\"top_keys\"} 2"));
    }

    #[test]
    fn ten_thousand_keys_render_within_the_budget() {
        let p = Prometheus::default();
        for i in 0..10_000u32 {
            let key = format!("gk_{i:05}");
            let user = format!("user{i}");
            let team = format!("team{}", i % 100);
            let who = Attribution {
                key_id: &key,
                user_id: Some(&user),
                team_id: Some(&team),
            };
            p.usage(&HAIKU, &who, &usage(10, 5), 0.001);
        }
        p.quota_ratios(
            &(0..10_000u32)
                .map(|i| QuotaRatio {
                    key_id: format!("gk_{i:05}"),
                    scope: "key_daily",
                    ratio: f64::from(i) / 10_000.0,
                })
                .collect::<Vec<_>>(),
        );
        let text = p.render(&ScrapeGauges::default());
        let b = SeriesBudget::default();
        // Two token buckets (input, output) plus cost, per admitted label value.
        assert_eq!(
            samples(&text, "metis_user_cost_usd_total").len(),
            b.max_users + 1
        );
        assert_eq!(
            samples(&text, "metis_cost_usd_total").len(),
            b.max_teams + 1
        );
        assert_eq!(samples(&text, "metis_key_cost_usd_total").len(), b.top_keys);
        assert_eq!(
            samples(&text, "metis_key_tokens_total").len(),
            2 * b.top_keys
        );
        let ratios = samples(&text, "metis_quota_used_ratio");
        assert_eq!(ratios.len(), b.top_keys);
        assert!(
            ratios.iter().any(|l| l.contains("gk_09999")),
            "nearest the cap first"
        );
        assert!(text.contains("metis_quota_keys{scope=\"key_daily\",threshold=\"0.8\"} 2000"));
        assert!(text.contains("metis_quota_keys{scope=\"key_daily\",threshold=\"0.95\"} 500"));
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        assert!(series < 1_000, "{series} series for 10,000 keys");
    }

    #[test]
    fn state_retries_first_token_quota_events_and_certificate_expiry_render() {
        let p = Prometheus::default();
        let text = p.render(&ScrapeGauges::default());
        assert!(!text.contains("metis_tls_certificate_expiry_timestamp_seconds"));
        p.set_tls_not_after(1_900_000_000);
        p.upstream_retries(&HAIKU, 2);
        p.first_token(&HAIKU, 0.3);
        p.quota_event("key_daily", "alert_80");
        p.key_leak_suspected();
        let text = p.render(&ScrapeGauges {
            trace_store_writable: true,
            db_bytes: 4096,
            ..ScrapeGauges::default()
        });
        for line in [
            "metis_tls_certificate_expiry_timestamp_seconds 1900000000",
            "metis_upstream_retries_total{provider=\"anthropic\",model=\"anthropic:claude-haiku-4-5\"} 2",
            "metis_time_to_first_token_seconds_bucket{provider=\"anthropic\",model=\"anthropic:claude-haiku-4-5\",le=\"0.5\"} 1",
            "metis_quota_events_total{scope=\"key_daily\",event=\"alert_80\"} 1",
            "metis_gateway_key_leak_suspected_total 1",
            "metis_trace_db_bytes 4096",
            "metis_trace_store_writable 1",
            "metis_ready 1",
            "metis_draining 0",
            "# TYPE metis_trace_events_written_total counter",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        let draining = p.render(&ScrapeGauges {
            trace_store_writable: true,
            draining: true,
            ..ScrapeGauges::default()
        });
        assert!(draining.contains("metis_ready 0"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
