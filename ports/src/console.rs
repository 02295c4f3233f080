//! The operator console's read port: what the console (and `curl`) read from `/admin/v1`
//! besides keys — this replica's live counters, usage as time series, the audit chain's
//! status and export, and agent sessions. All of it is read-only (`viewer` level).

use crate::admin::AdminFailure;
use crate::trace::{TraceError, UsageGroup};
use async_trait::async_trait;
use metis_domain::audit::BrokenLink;
use metis_domain::sessions::{SessionNode, SessionRecord};

/// Counters of one rolling window (the last hour or day) of this process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowStats {
    /// Requests answered on provider routes (`/v1/…` calls that reach a model).
    pub requests: u64,
    /// Of those, answered with a status >= 500.
    pub errors: u64,
    /// Upstream calls that failed (including streams that failed after their first byte,
    /// which were answered 200).
    pub upstream_failures: u64,
    /// Latency percentiles of the provider-route answers (time to the response head), from
    /// log-scale buckets; `None` without requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// One provider's recent health as this process saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderHealth {
    pub provider: String,
    /// Upstream calls in the health window.
    pub calls: u64,
    /// Of those, failed on the provider's side (client hang-ups and refused requests are not
    /// the provider's failures).
    pub failures: u64,
    pub last_success_us: Option<i64>,
    pub last_failure_us: Option<i64>,
    /// Error class of the last failure (`network`, `server_error`, `rate_limit`, …).
    pub last_error: Option<String>,
    /// `healthy`, `degraded` (some failures), `down` (only failures) or `idle` (no calls).
    pub status: &'static str,
}

/// `GET /admin/v1/overview`.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    pub generated_at_us: i64,
    pub uptime_seconds: u64,
    pub hour: WindowStats,
    pub day: WindowStats,
    /// How far back provider health looks (seconds).
    pub health_window_seconds: u64,
    pub providers: Vec<ProviderHealth>,
}

/// A route of this process and its deployments (`GET /admin/v1/routes`).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStatus {
    pub alias: String,
    /// `config` (the config file) or `admin` (set through the admin API).
    pub source: &'static str,
    /// Requests answered by another deployment than the first one tried.
    pub fallbacks: u64,
    /// In configuration order.
    pub deployments: Vec<crate::metrics::DeploymentStatus>,
}

/// The width of a usage series bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesBucket {
    Hour,
    Day,
}

impl SeriesBucket {
    /// Bucket width in microseconds (buckets start at UTC hour / day boundaries).
    #[must_use]
    pub fn width_us(self) -> i64 {
        match self {
            SeriesBucket::Hour => 3_600_000_000,
            SeriesBucket::Day => 86_400_000_000,
        }
    }
}

/// At most this many buckets per series request (31 days of hours).
pub const MAX_SERIES_BUCKETS: i64 = 744;

/// A usage series request.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesQuery {
    pub since_us: i64,
    pub until_us: i64,
    pub bucket: SeriesBucket,
    pub group: UsageGroup,
    pub filter: Option<(UsageGroup, String)>,
}

/// One bucket of a series.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SeriesPoint {
    pub start_us: i64,
    pub cost_usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub calls: u64,
    pub failed_calls: u64,
}

/// One group's series: a point for every bucket of the window, zeros included.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub group: Option<String>,
    pub points: Vec<SeriesPoint>,
}

/// The usage series of a window aligned to bucket boundaries.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSeries {
    /// The window after alignment: `since` down, `until` up to a bucket boundary.
    pub since_us: i64,
    pub until_us: i64,
    pub series: Vec<Series>,
}

/// The audit chain's state (the same check as `metis audit verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStatus {
    /// Linked audit events checked (up to the first broken link).
    pub events_checked: u64,
    /// The first broken link, `None` when the chain is intact.
    pub broken: Option<BrokenLink>,
    /// Audit events written before the chain existed (the chain cannot vouch for them).
    pub unchained: u64,
    pub checked_at_us: i64,
}

/// Export format of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFormat {
    Jsonl,
    Csv,
}

/// An audit export: the same bytes `metis audit export` writes for the same window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditExport {
    pub since_us: i64,
    pub until_us: i64,
    pub events: u64,
    pub body: String,
}

/// Reads for the operator console.
#[async_trait]
pub trait OpsService: Send + Sync {
    /// This process's live counters.
    fn overview(&self) -> Overview;
    /// This process's routes with their deployments' settings and live health.
    fn routes(&self) -> Vec<RouteStatus>;
    /// # Errors
    /// `Invalid` (empty window, more than [`MAX_SERIES_BUCKETS`] buckets), `Unavailable`.
    async fn usage_series(&self, q: SeriesQuery) -> Result<UsageSeries, AdminFailure>;
    /// # Errors
    /// `Unavailable` when the store cannot be read.
    async fn verify_audit(&self) -> Result<ChainStatus, AdminFailure>;
    /// Audit events in `[since, until)` (defaults as `metis audit export`: the last 7 days),
    /// of `types` (empty: every audit type; non-audit types are ignored).
    ///
    /// # Errors
    /// `Invalid` (window, unknown type), `Unavailable`.
    async fn export_audit(
        &self,
        since_us: Option<i64>,
        until_us: Option<i64>,
        types: &[String],
        format: AuditFormat,
    ) -> Result<AuditExport, AdminFailure>;
    /// Sessions, most recently updated first.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn sessions(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, AdminFailure>;
    /// One session and its workers as a tree.
    ///
    /// # Errors
    /// `Invalid` (malformed id), `NotFound`, `Unavailable`.
    async fn session_tree(&self, id: &str) -> Result<SessionNode, AdminFailure>;
    /// Current time (µs), for default windows.
    fn now_us(&self) -> i64;
}

/// The chain check over the running gateway's own store (a driven port: the composition root
/// opens a reader of the store it serves from and runs the check off the request threads).
#[async_trait]
pub trait AuditChainReader: Send + Sync {
    /// `(chain, unchained)`: the number of intact links or the first broken one, and the
    /// audit events without a link.
    ///
    /// # Errors
    /// The store cannot be read.
    async fn verify_chain(&self) -> Result<(Result<u64, BrokenLink>, u64), TraceError>;
}
