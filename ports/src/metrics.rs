//! The metrics port: what the core and the HTTP adapter count. The exporter (Prometheus
//! text at `/metrics`) is an adapter; no secret or token ever becomes a label.

use crate::trace::CommitLagStats;
use gw_domain::canonical::Usage;

/// Values read at scrape time (the exporter has no other way to know them).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScrapeGauges {
    pub trace_queue_depth: u64,
    pub trace_events_written: u64,
    pub trace_events_overflowed: u64,
    pub trace_events_failed: u64,
    pub keys_active: u64,
    pub keys_revoked: u64,
    pub wal_bytes: u64,
    /// The trace writer's queue-to-commit lag against its commit deadline.
    pub trace_commit_lag: CommitLagStats,
}

/// Counters, gauges and histograms. Every method MUST be cheap and non-blocking (it is on
/// the request path).
pub trait Metrics: Send + Sync {
    /// One HTTP request finished. `route` is the matched route template, never a raw path.
    fn http_request(&self, route: &str, method: &str, status: u16, shape: &str, seconds: f64);
    /// One upstream call finished; `outcome` is `ok` or an error class.
    fn upstream_call(&self, provider: &str, model: &str, outcome: &str, seconds: f64);
    /// Tokens and cost attributed to a key.
    fn usage(&self, key_id: &str, model: &str, usage: &Usage, cost_usd: f64);
    fn auth_failure(&self, reason: &str);
    /// A rate-limit decision for `bucket` (`per_key` / `per_ip`).
    fn rate_limit(&self, bucket: &str, allowed: bool);
    /// Spend over cap for a key's scope (`key_daily` / `key_monthly`).
    fn quota_ratio(&self, key_id: &str, scope: &str, ratio: f64);
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
