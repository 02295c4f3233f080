//! The metrics port: what the core and the HTTP adapter count. The exporter (Prometheus
//! text at `/metrics`) is an adapter; no secret or token ever becomes a label.
//!
//! Cardinality: the core hands over key ids, users and teams as they are; bounding how many
//! of them become label values (the series budget) is the exporter's job, because only it
//! knows what it keeps per series.

use crate::trace::CommitLagStats;
use metis_domain::canonical::Usage;

/// Values read at scrape time (the exporter has no other way to know them).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScrapeGauges {
    pub trace_queue_depth: u64,
    pub trace_events_written: u64,
    pub trace_events_overflowed: u64,
    pub trace_events_failed: u64,
    pub keys_active: u64,
    pub keys_revoked: u64,
    pub wal_bytes: u64,
    /// Size of the main store file (trace, sessions, spend), 0 when unknown.
    pub db_bytes: u64,
    /// The trace store accepts writes (the `/readyz` store condition).
    pub trace_store_writable: bool,
    /// Shutdown began: `/readyz` answers 503 and the process is finishing its requests.
    pub draining: bool,
    /// The trace writer's queue-to-commit lag against its commit deadline.
    pub trace_commit_lag: CommitLagStats,
    /// Every route deployment's live state in this process.
    pub deployments: Vec<DeploymentStatus>,
}

/// One route deployment: its settings and live state in this process (`/metrics` and
/// `GET /admin/v1/routes`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentStatus {
    pub route: String,
    pub deployment: String,
    pub provider: String,
    /// The upstream model id.
    pub model: String,
    pub weight: u32,
    pub priority: u32,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    /// 0 closed, 1 half-open, 2 open.
    pub circuit: u8,
    pub consecutive_failures: u32,
    /// While open: when the next probe is allowed (ms from now).
    pub probe_in_ms: Option<u64>,
    pub outstanding: u32,
    /// Latency to the answer head, exponentially weighted (seconds).
    pub latency_ewma_seconds: f64,
    /// Attempts that got an answer head, health failures, and times it was passed over.
    pub answered: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Times its circuit opened.
    pub ejections: u64,
}

/// Which upstream call a measurement belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallLabels<'a> {
    /// The GenAI operation: `chat` or `embeddings`.
    pub operation: &'a str,
    pub provider: &'a str,
    /// The canonical `provider:name` model id.
    pub model: &'a str,
}

/// Who a call's usage is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attribution<'a> {
    pub key_id: &'a str,
    pub user_id: Option<&'a str>,
    pub team_id: Option<&'a str>,
}

/// A key's spend over one of its caps, as of the scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaRatio {
    pub key_id: String,
    /// `key_daily` or `key_monthly`.
    pub scope: &'static str,
    /// Spend / cap (1.0 = at the cap).
    pub ratio: f64,
}

/// Counters, gauges and histograms. Every method MUST be cheap and non-blocking (it is on
/// the request path), except [`Metrics::quota_ratios`] and [`Metrics::render`], which run at
/// scrape time.
pub trait Metrics: Send + Sync {
    /// One HTTP request finished. `route` is the matched route template, never a raw path.
    fn http_request(&self, route: &str, method: &str, status: u16, shape: &str, seconds: f64);
    /// One upstream call finished (streams: when the stream ended), `seconds` after the
    /// request was routed; `outcome` is `ok` or an error class.
    fn upstream_call(&self, call: &CallLabels<'_>, outcome: &str, seconds: f64);
    /// An upstream call needed `retries` extra attempts (called only when `retries > 0`).
    fn upstream_retries(&self, call: &CallLabels<'_>, retries: u32);
    /// The first content token of a stream reached the client, `seconds` after the request
    /// was routed.
    fn first_token(&self, call: &CallLabels<'_>, seconds: f64);
    /// Tokens and cost of one call, attributed to a key and its user and team tags.
    fn usage(&self, call: &CallLabels<'_>, who: &Attribution<'_>, usage: &Usage, cost_usd: f64);
    fn auth_failure(&self, reason: &str);
    /// A rate-limit decision for `bucket` (`per_key` / `per_ip`).
    fn rate_limit(&self, bucket: &str, allowed: bool);
    /// Every capped key's spend over cap, replacing the previous set (called at scrape time,
    /// so a ratio falls back when its UTC window rolls over even if the key is idle).
    fn quota_ratios(&self, ratios: &[QuotaRatio]);
    /// A spend-cap event: `event` is `alert_<level>` (`alert_80`, `alert_95`, `alert_100`: a
    /// budget alert level crossed, once per window) or `exceeded` (a request refused at the
    /// cap); `scope` is the cap's name (`key_daily`, `team_monthly`, …).
    fn quota_event(&self, scope: &str, event: &str);
    /// A key was seen from more client addresses than the leak threshold allows.
    fn key_leak_suspected(&self);
    /// A decision taken because an admission store (spend or rate-limit state shared by
    /// replicas) did not answer. `step` / `decision`: `spend` / `refused` (a capped key under
    /// `--spend-outage fail-closed`) or `admitted` (fail-open, against this process's last
    /// known balance); `spend_settlement` / `deferred` (kept to replay), `replayed` or
    /// `dropped` (the replay backlog was full); `rate_limit` / `local` (decided on this
    /// process's own buckets).
    fn admission_outage(&self, step: &str, decision: &str);
    /// In-flight requests (+1 when admitted, -1 when finished).
    fn inflight(&self, delta: i64);
    /// Open client streams.
    fn streams(&self, delta: i64);
    /// One token-count request answered; `method` is `exact`, `tokenizer` or `estimate`.
    fn token_count(&self, method: &str);
    /// The listener failed to accept a connection: `kind` is `fd_limit` (EMFILE/ENFILE, the
    /// process or system is out of file descriptors) or `other`.
    fn accept_error(&self, kind: &str);
    /// A connection or request refused before any handler ran: `reason` is `connection_cap`
    /// (over the connection cap), `fd_limit` (answered from the spare descriptor while out of
    /// descriptors) or `body_memory` (over the in-flight request body budget).
    fn refused(&self, reason: &str);
    /// Client connections open (+1 accepted, -1 closed).
    fn connections(&self, delta: i64);
    /// The connection cap in force (`--max-connections`, lowered when the descriptor limit
    /// cannot cover it).
    fn connection_limit(&self, limit: u64);
    /// Request body bytes reserved by requests in flight (+ reserved, - released).
    fn inflight_body_bytes(&self, delta: i64);
    /// Render everything in the Prometheus text exposition format.
    fn render(&self, gauges: &ScrapeGauges) -> String;
}
