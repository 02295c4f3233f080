//! The admin endpoints the operator console reads (all read-only, `viewer` level): this
//! replica's live overview, usage as time series, the audit chain's status and export, and
//! agent sessions with their worker trees. Same bearer as the rest of `/admin/v1`.

use crate::admin::{AdminAuth, AdminError, AdminTag, one_filter};
use metis_domain::admin::Role;
use metis_domain::sessions::{SessionNode, SessionRecord};
use metis_domain::time::{format_iso, parse_iso};
use metis_ports::admin::AdminFailure;
use metis_ports::console::{
    AuditFormat, OpsService, ProviderHealth, SeriesBucket, SeriesQuery, WindowStats,
};
use metis_ports::trace::UsageGroup;
use poem::IntoResponse;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object, OpenApi};
use std::sync::Arc;

/// The console's read endpoints.
pub struct AdminReadApi {
    pub svc: Arc<dyn OpsService>,
}

type ReadResult<T> = Result<Json<T>, AdminError>;

/// One rolling window of this process's provider-route traffic.
#[derive(Object)]
pub struct OverviewWindow {
    /// Requests answered on provider routes (`POST /v1/chat/completions`, `/v1/messages`,
    /// `/v1/responses`, `/v1/embeddings`).
    requests: u64,
    /// Of those, answered with a status >= 500.
    errors: u64,
    /// Upstream calls that failed, including streams that failed after their first byte
    /// (answered 200) and calls the client abandoned.
    upstream_failures: u64,
    /// Median time to the response head (ms; log-scale buckets, at most 19 % high); null
    /// without requests.
    #[oai(nullable)]
    p50_ms: Option<f64>,
    /// 99th percentile, as `p50_ms`.
    #[oai(nullable)]
    p99_ms: Option<f64>,
    /// Uncached input tokens (as `/admin/v1/usage`).
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

impl From<WindowStats> for OverviewWindow {
    fn from(w: WindowStats) -> Self {
        OverviewWindow {
            requests: w.requests,
            errors: w.errors,
            upstream_failures: w.upstream_failures,
            p50_ms: w.p50_ms,
            p99_ms: w.p99_ms,
            input_tokens: w.input_tokens,
            output_tokens: w.output_tokens,
            cost_usd: w.cost_usd,
        }
    }
}

#[derive(Object)]
pub struct OverviewWindows {
    /// The last 60 minutes (the current minute included).
    hour: OverviewWindow,
    /// The last 1440 minutes.
    day: OverviewWindow,
}

/// A configured provider's health over the last `health_window_seconds`.
#[derive(Object)]
pub struct ProviderStatus {
    provider: String,
    /// Upstream calls in the health window.
    calls: u64,
    /// Calls that failed on the provider's side (auth, rate limit, network, server error).
    failures: u64,
    #[oai(nullable)]
    last_success_at: Option<String>,
    #[oai(nullable)]
    last_failure_at: Option<String>,
    /// Error class of the last failure.
    #[oai(nullable)]
    last_error: Option<String>,
    /// `healthy`, `degraded` (some failures), `down` (every call failed) or `idle` (no calls).
    #[oai(validator(pattern = "^(healthy|degraded|down|idle)$"))]
    status: String,
}

impl From<ProviderHealth> for ProviderStatus {
    fn from(p: ProviderHealth) -> Self {
        ProviderStatus {
            provider: p.provider,
            calls: p.calls,
            failures: p.failures,
            last_success_at: p.last_success_us.map(format_iso),
            last_failure_at: p.last_failure_us.map(format_iso),
            last_error: p.last_error,
            status: p.status.to_owned(),
        }
    }
}

/// `GET /admin/v1/overview`.
#[derive(Object)]
pub struct OverviewReport {
    generated_at: String,
    /// Seconds since this process started.
    uptime_seconds: u64,
    /// Always `this_process`: the counters are this replica's own (each replica of a fleet
    /// answers for itself; spend across the fleet is in `/admin/v1/usage`).
    replica_scope: String,
    windows: OverviewWindows,
    /// How far back provider health looks.
    health_window_seconds: u64,
    providers: Vec<ProviderStatus>,
}

/// One deployment of a route: its settings and this replica's view of its health.
#[derive(Object)]
pub struct DeploymentReport {
    name: String,
    provider: String,
    /// The model id sent upstream.
    model: String,
    weight: u32,
    priority: u32,
    #[oai(nullable)]
    rpm: Option<u32>,
    #[oai(nullable)]
    tpm: Option<u32>,
    /// `closed`, `half_open` (a probe may go or is in flight) or `open` (ejected).
    circuit: String,
    consecutive_failures: u32,
    /// While open: milliseconds until a probe is let through.
    #[oai(nullable)]
    probe_in_ms: Option<u64>,
    outstanding_requests: u32,
    /// Latency to the answer head, exponentially weighted.
    latency_ewma_ms: f64,
    answered: u64,
    failures: u64,
    skipped: u64,
    ejections: u64,
}

/// A route: a model alias served by deployments.
#[derive(Object)]
pub struct RouteReport {
    alias: String,
    /// `config` (the config file) or `admin` (stored through `PUT /admin/v1/routes/{alias}`).
    source: String,
    /// Requests answered by another deployment than the first one tried.
    fallbacks: u64,
    deployments: Vec<DeploymentReport>,
}

/// `GET /admin/v1/routes`.
#[derive(Object)]
pub struct RoutesReport {
    /// Always `this_process`: health is each replica's own.
    replica_scope: String,
    routes: Vec<RouteReport>,
}

/// One bucket of a usage series.
#[derive(Object)]
pub struct UsagePoint {
    /// Bucket start (UTC hour or day boundary).
    start: String,
    cost_usd: f64,
    input_tokens: u64,
    output_tokens: u64,
    calls: u64,
    failed_calls: u64,
}

#[derive(Object)]
pub struct UsageSeriesObject {
    /// The group value (null for calls without it, e.g. keys without a team).
    #[oai(nullable)]
    group: Option<String>,
    /// One point per bucket of the window, zeros included.
    points: Vec<UsagePoint>,
}

/// `GET /admin/v1/usage/series`.
#[derive(Object)]
pub struct UsageSeriesReport {
    /// Window start, aligned down to a bucket boundary.
    since: String,
    /// Window end (exclusive), aligned up to a bucket boundary.
    until: String,
    /// `hour` or `day`.
    bucket: String,
    /// `key`, `user`, `team` or `model`.
    group_by: String,
    /// Biggest spenders first.
    series: Vec<UsageSeriesObject>,
}

/// Where the chain first breaks.
#[derive(Object)]
pub struct ChainBreak {
    /// Id of the first audit event that does not link.
    event_id: String,
    expected_seq: u64,
    problem: String,
}

/// `GET /admin/v1/audit/verify`: the result `metis audit verify` prints.
#[derive(Object)]
pub struct ChainReport {
    /// True when every linked audit event carries the next sequence number and its
    /// predecessor's hash.
    ok: bool,
    /// Linked events checked (up to the first break).
    events_checked: u64,
    /// Audit events written before the chain existed (the chain cannot vouch for them).
    unchained_events: u64,
    checked_at: String,
    /// Null when `ok`.
    #[oai(nullable)]
    first_break: Option<ChainBreak>,
}

/// A session (the fields of `metis sessions list --format json`).
#[derive(Object)]
pub struct SessionObject {
    id: String,
    workspace_path: String,
    #[oai(nullable)]
    active_model: Option<String>,
    turn_count: u64,
    /// Cost of this session's own turns (USD), workers not included.
    cost_so_far_usd: f64,
    /// Set when the session was started as a worker of another (a sub-agent).
    is_worker: bool,
    #[oai(nullable)]
    parent_session_id: Option<String>,
    #[oai(nullable)]
    parent_tool_use_id: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<SessionRecord> for SessionObject {
    fn from(s: SessionRecord) -> Self {
        SessionObject {
            created_at: format_iso(s.created_at_us),
            updated_at: format_iso(s.updated_at_us),
            id: s.id,
            workspace_path: s.workspace_path,
            active_model: s.active_model,
            turn_count: s.turn_count,
            cost_so_far_usd: s.cost_so_far_usd,
            is_worker: s.is_worker,
            parent_session_id: s.parent_session_id,
            parent_tool_use_id: s.parent_tool_use_id,
        }
    }
}

#[derive(Object)]
pub struct SessionList {
    /// Most recently updated first.
    sessions: Vec<SessionObject>,
}

/// A session and its workers (`metis sessions show`).
#[derive(Object)]
pub struct SessionTree {
    /// The session's fields.
    #[oai(flatten)]
    session: SessionObject,
    /// Own cost plus every descendant's.
    subtree_cost_usd: f64,
    /// Sessions in this subtree, this one included.
    subtree_sessions: u64,
    /// Workers, oldest first.
    children: Vec<SessionTree>,
}

impl From<SessionNode> for SessionTree {
    fn from(n: SessionNode) -> Self {
        SessionTree {
            session: SessionObject::from(n.session),
            subtree_cost_usd: n.subtree_cost_usd,
            subtree_sessions: n.subtree_sessions,
            children: n.children.into_iter().map(SessionTree::from).collect(),
        }
    }
}

/// `GET /admin/v1/audit/export` success: the export file as an attachment, or an error.
pub enum ExportResponse {
    File {
        format: AuditFormat,
        filename: String,
        body: String,
    },
    Error(AdminError),
}

const NDJSON: &str = "application/x-ndjson";
const CSV: &str = "text/csv; charset=utf-8";

impl IntoResponse for ExportResponse {
    fn into_response(self) -> poem::Response {
        match self {
            ExportResponse::File {
                format,
                filename,
                body,
            } => poem::Response::builder()
                .content_type(match format {
                    AuditFormat::Jsonl => NDJSON,
                    AuditFormat::Csv => CSV,
                })
                .header(
                    "content-disposition",
                    format!("attachment; filename=\"{filename}\""),
                )
                .body(body),
            ExportResponse::Error(e) => e.into_response(),
        }
    }
}

impl ApiResponse for ExportResponse {
    fn meta() -> MetaResponses {
        let text = || String::schema_ref();
        let mut responses = vec![MetaResponse {
            description: "The export: one JSON envelope per line (`jsonl`) or RFC 4180 CSV with a header row (`csv`), the same bytes `metis audit export` writes for the window.",
            status: Some(200),
            status_range: None,
            content: vec![
                MetaMediaType {
                    content_type: NDJSON,
                    schema: text(),
                },
                MetaMediaType {
                    content_type: CSV,
                    schema: text(),
                },
            ],
            headers: vec![MetaHeader {
                name: "Content-Disposition".to_owned(),
                description: Some("`attachment; filename=\"metis-audit-….jsonl|csv\"`".to_owned()),
                required: true,
                deprecated: false,
                schema: text(),
            }],
        }];
        responses.extend(AdminError::meta().responses);
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        AdminError::register(registry);
    }
}

fn parse_bound(field: &str, v: Option<&str>) -> Result<Option<i64>, AdminError> {
    v.map(|raw| parse_iso(raw).map_err(|e| AdminFailure::Invalid(format!("{field}: {e}")).into()))
        .transpose()
}

fn group_of(raw: &str) -> Result<UsageGroup, AdminError> {
    match raw {
        "key" => Ok(UsageGroup::Key),
        "user" => Ok(UsageGroup::User),
        "team" => Ok(UsageGroup::Team),
        "model" => Ok(UsageGroup::Model),
        other => Err(AdminFailure::Invalid(format!(
            "group_by must be one of key, user, team, model; got '{other}'"
        ))
        .into()),
    }
}

/// A compact UTC stamp for file names (`20260507T120000Z`).
fn file_stamp(us: i64) -> String {
    format_iso(us)
        .chars()
        .take(19)
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        + "Z"
}

#[OpenApi(prefix_path = "/admin/v1", tag = "AdminTag::Admin")]
impl AdminReadApi {
    /// This replica's live counters over the last hour and day (provider routes: requests,
    /// errors, latency percentiles, tokens, cost) and each configured provider's health over
    /// the last 5 minutes. Counted in memory since the process started; not shared by
    /// replicas. Role: viewer.
    #[oai(path = "/overview", method = "get", operation_id = "getOverview")]
    async fn overview(&self, auth: AdminAuth) -> ReadResult<OverviewReport> {
        auth.require(Role::Viewer)?;
        let o = self.svc.overview();
        Ok(Json(OverviewReport {
            generated_at: format_iso(o.generated_at_us),
            uptime_seconds: o.uptime_seconds,
            replica_scope: "this_process".to_owned(),
            windows: OverviewWindows {
                hour: o.hour.into(),
                day: o.day.into(),
            },
            health_window_seconds: o.health_window_seconds,
            providers: o.providers.into_iter().map(ProviderStatus::from).collect(),
        }))
    }

    /// Every route (a model alias served by one or more deployments) with each deployment's
    /// settings, circuit state, outstanding requests, latency EWMA and attempt counters as
    /// this replica sees them. Role: viewer.
    #[oai(path = "/routes", method = "get", operation_id = "listRoutes")]
    async fn routes(&self, auth: AdminAuth) -> ReadResult<RoutesReport> {
        auth.require(Role::Viewer)?;
        let routes = self
            .svc
            .routes()
            .into_iter()
            .map(|r| RouteReport {
                alias: r.alias,
                source: r.source.to_owned(),
                fallbacks: r.fallbacks,
                deployments: r
                    .deployments
                    .into_iter()
                    .map(|d| DeploymentReport {
                        name: d.deployment,
                        provider: d.provider,
                        model: d.model,
                        weight: d.weight,
                        priority: d.priority,
                        rpm: d.rpm,
                        tpm: d.tpm,
                        circuit: ["closed", "half_open", "open"][usize::from(d.circuit.min(2))]
                            .to_owned(),
                        consecutive_failures: d.consecutive_failures,
                        probe_in_ms: d.probe_in_ms,
                        outstanding_requests: d.outstanding,
                        latency_ewma_ms: d.latency_ewma_seconds * 1000.0,
                        answered: d.answered,
                        failures: d.failed,
                        skipped: d.skipped,
                        ejections: d.ejections,
                    })
                    .collect(),
            })
            .collect();
        Ok(Json(RoutesReport {
            replica_scope: "this_process".to_owned(),
            routes,
        }))
    }

    /// Cost, tokens and calls per hour or day bucket over `[since, until)` (aligned to bucket
    /// boundaries; default: the last 24 hours for `hour`, 30 days for `day`), one series per
    /// key, user, team or model, every bucket present (zeros included). At most 744 buckets.
    /// Role: viewer.
    #[oai(
        path = "/usage/series",
        method = "get",
        operation_id = "getUsageSeries"
    )]
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per query parameter"
    )]
    async fn usage_series(
        &self,
        auth: AdminAuth,
        #[oai(validator(pattern = "^(hour|day)$"))] bucket: Query<Option<String>>,
        #[oai(validator(
            pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-7]):[0-5][0-9])$"
        ))]
        since: Query<Option<String>>,
        #[oai(validator(
            pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-7]):[0-5][0-9])$"
        ))]
        until: Query<Option<String>>,
        #[oai(validator(pattern = "^(key|user|team|model)$"))] group_by: Query<Option<String>>,
        key: Query<Option<String>>,
        user: Query<Option<String>>,
        team: Query<Option<String>>,
        model: Query<Option<String>>,
    ) -> ReadResult<UsageSeriesReport> {
        auth.require(Role::Viewer)?;
        let bucket_name = bucket.0.unwrap_or_else(|| "hour".to_owned());
        let bucket = match bucket_name.as_str() {
            "hour" => SeriesBucket::Hour,
            "day" => SeriesBucket::Day,
            other => {
                return Err(AdminFailure::Invalid(format!(
                    "bucket must be hour or day; got '{other}'"
                ))
                .into());
            }
        };
        let default_span = match bucket {
            SeriesBucket::Hour => 24,
            SeriesBucket::Day => 30,
        } * bucket.width_us();
        let until_us =
            parse_bound("until", until.0.as_deref())?.unwrap_or_else(|| self.svc.now_us());
        let since_us = parse_bound("since", since.0.as_deref())?.unwrap_or(until_us - default_span);
        let group_name = group_by.0.unwrap_or_else(|| "key".to_owned());
        let group = group_of(&group_name)?;
        let filter = one_filter([key.0, user.0, team.0, model.0])?;
        let s = self
            .svc
            .usage_series(SeriesQuery {
                since_us,
                until_us,
                bucket,
                group,
                filter,
            })
            .await?;
        Ok(Json(UsageSeriesReport {
            since: format_iso(s.since_us),
            until: format_iso(s.until_us),
            bucket: bucket_name,
            group_by: group_name,
            series: s
                .series
                .into_iter()
                .map(|x| UsageSeriesObject {
                    group: x.group,
                    points: x
                        .points
                        .into_iter()
                        .map(|p| UsagePoint {
                            start: format_iso(p.start_us),
                            cost_usd: p.cost_usd,
                            input_tokens: p.input_tokens,
                            output_tokens: p.output_tokens,
                            calls: p.calls,
                            failed_calls: p.failed_calls,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    /// Check the audit hash chain of the gateway's store now (the check of `metis audit
    /// verify`): `ok`, how many linked events were checked, and the first broken link.
    /// Role: viewer.
    #[oai(
        path = "/audit/verify",
        method = "get",
        operation_id = "verifyAuditChain"
    )]
    async fn audit_verify(&self, auth: AdminAuth) -> ReadResult<ChainReport> {
        auth.require(Role::Viewer)?;
        let c = self.svc.verify_audit().await?;
        Ok(Json(ChainReport {
            ok: c.broken.is_none(),
            events_checked: c.events_checked,
            unchained_events: c.unchained,
            checked_at: format_iso(c.checked_at_us),
            first_break: c.broken.map(|b| ChainBreak {
                event_id: b.id,
                expected_seq: b.expected_seq,
                problem: b.problem,
            }),
        }))
    }

    /// Download the audit events of `[since, until)` (default: the last 7 days) as JSONL or
    /// CSV: the same lines as `metis audit export`, as an attachment. `type` (repeatable)
    /// keeps only those audit types; known non-audit types are ignored. Role: viewer.
    #[oai(path = "/audit/export", method = "get", operation_id = "downloadAudit")]
    async fn audit_export(
        &self,
        auth: AdminAuth,
        #[oai(validator(pattern = "^(jsonl|csv)$"))] format: Query<Option<String>>,
        #[oai(validator(
            pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-7]):[0-5][0-9])$"
        ))]
        since: Query<Option<String>>,
        #[oai(validator(
            pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-7]):[0-5][0-9])$"
        ))]
        until: Query<Option<String>>,
        #[oai(name = "type")] types: Query<Option<Vec<String>>>,
    ) -> ExportResponse {
        let run = async {
            auth.require(Role::Viewer)?;
            let (format, ext) = match format.0.as_deref().unwrap_or("jsonl") {
                "jsonl" => (AuditFormat::Jsonl, "jsonl"),
                "csv" => (AuditFormat::Csv, "csv"),
                other => {
                    return Err(AdminError::from(AdminFailure::Invalid(format!(
                        "format must be jsonl or csv; got '{other}'"
                    ))));
                }
            };
            let since_us = parse_bound("since", since.0.as_deref())?;
            let until_us = parse_bound("until", until.0.as_deref())?;
            let e = self
                .svc
                .export_audit(since_us, until_us, &types.0.unwrap_or_default(), format)
                .await?;
            Ok(ExportResponse::File {
                format,
                filename: format!(
                    "metis-audit-{}-{}.{ext}",
                    file_stamp(e.since_us),
                    file_stamp(e.until_us)
                ),
                body: e.body,
            })
        };
        run.await.unwrap_or_else(ExportResponse::Error)
    }

    /// Agent sessions, most recently updated first, optionally of one workspace. Role: viewer.
    #[oai(path = "/sessions", method = "get", operation_id = "listSessions")]
    async fn sessions(
        &self,
        auth: AdminAuth,
        workspace: Query<Option<String>>,
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))] limit: Query<Option<u32>>,
    ) -> ReadResult<SessionList> {
        auth.require(Role::Viewer)?;
        let rows = self
            .svc
            .sessions(workspace.0.as_deref(), limit.0.unwrap_or(50))
            .await?;
        Ok(Json(SessionList {
            sessions: rows.into_iter().map(SessionObject::from).collect(),
        }))
    }

    /// One session and its workers as a tree, with each node's own cost and its subtree's.
    /// Role: viewer.
    #[oai(
        path = "/sessions/:session_id",
        method = "get",
        operation_id = "getSessionTree"
    )]
    async fn session_tree(
        &self,
        auth: AdminAuth,
        #[oai(validator(pattern = "^[A-Za-z0-9_.:-]{1,128}$"))] session_id: Path<String>,
    ) -> ReadResult<SessionTree> {
        auth.require(Role::Viewer)?;
        let tree = self.svc.session_tree(&session_id.0).await?;
        Ok(Json(tree.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stamps_are_compact_utc() {
        assert_eq!(file_stamp(1_747_318_930_123_456), "20250515T142210Z");
    }
}
