//! The admin API under `/admin/v1`: keys (issue, list, get, revoke, rotate), budgets and
//! model groups (list, put, delete), usage rollups and audit export. Protected by the static admin token or an OIDC JWT (see `admin_auth`);
//! each route states its least role. When neither is configured the whole prefix answers 404
//! (see `api::routes`), so an unconfigured gateway exposes nothing.

// Re-exported so handlers elsewhere (e.g. `admin_read`) keep naming `crate::admin::AdminAuth`.
pub(crate) use crate::admin_auth::AdminAuth;
use metis_domain::admin::Role;
use metis_domain::budgets::{BudgetPolicy, ScopeKind};
use metis_domain::model_groups::ModelGroup;
use metis_domain::time::{format_iso, parse_duration_secs as parse_grace, parse_iso};
use metis_ports::admin::{
    AdminFailure, AdminService, BudgetSummary, Change, KeyChanges, KeySummary, NewKey,
};
use metis_ports::trace::{EventRow, UsageGroup, UsageRow};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi};
use std::sync::Arc;

/// Error body of the admin API (OpenAI-style envelope).
#[derive(Object)]
pub struct ErrorBody {
    /// What went wrong; names the field for validation errors.
    message: String,
    /// Error category.
    #[oai(rename = "type")]
    kind: String,
    /// Machine-readable code (null for a plain validation error).
    #[oai(nullable)]
    code: Option<String>,
}

/// `{"error": {...}}`.
#[derive(Object)]
pub struct ErrorEnvelope {
    error: ErrorBody,
}

pub(crate) fn envelope(kind: &str, code: &str, message: String) -> Json<ErrorEnvelope> {
    Json(ErrorEnvelope {
        error: ErrorBody {
            message,
            kind: kind.to_owned(),
            code: Some(code.to_owned()),
        },
    })
}

/// Admin API errors.
#[derive(ApiResponse)]
pub enum AdminError {
    /// Invalid input; the message names the field.
    #[oai(status = 400)]
    BadRequest(Json<ErrorEnvelope>),
    /// Missing or invalid credential; the message says what failed (invalid admin token,
    /// expired, wrong audience, bad signature, unknown key, …).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorEnvelope>),
    /// The identity's role is too low for the operation (the message names the role needed),
    /// or the token's claims grant no role.
    #[oai(status = 403)]
    Forbidden(Json<ErrorEnvelope>),
    /// No such key, budget or model group.
    #[oai(status = 404)]
    NotFound(Json<ErrorEnvelope>),
    /// The key's state forbids the operation, or the keystore is read-only.
    #[oai(status = 409)]
    Conflict(Json<ErrorEnvelope>),
    /// Too many failed admin authentications from this client address.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ErrorEnvelope>,
        /// Seconds until the address may try again.
        #[oai(header = "Retry-After")]
        u64,
    ),
    /// A store is unavailable, or the OIDC issuer cannot be reached to check a JWT.
    #[oai(status = 503)]
    Unavailable(Json<ErrorEnvelope>),
}

impl AdminError {
    pub(crate) fn forbidden(message: String) -> Self {
        AdminError::Forbidden(envelope("permission_error", "insufficient_role", message))
    }
}

impl From<AdminFailure> for AdminError {
    fn from(f: AdminFailure) -> Self {
        match f {
            AdminFailure::Invalid(m) => {
                AdminError::BadRequest(envelope("invalid_request_error", "invalid_request", m))
            }
            AdminFailure::NotFound(m) => {
                AdminError::NotFound(envelope("invalid_request_error", "not_found", m))
            }
            AdminFailure::Conflict(m) => {
                AdminError::Conflict(envelope("invalid_request_error", "conflict", m))
            }
            AdminFailure::ReadOnly(m) => {
                AdminError::Conflict(envelope("invalid_request_error", "keystore_read_only", m))
            }
            AdminFailure::Unavailable(m) => {
                AdminError::Unavailable(envelope("api_error", "unavailable", m))
            }
        }
    }
}

type AdminResult<T> = Result<Json<T>, AdminError>;

/// A gateway key (never its hash or token).
#[derive(Object)]
pub struct KeyObject {
    key_id: String,
    name: String,
    workspace_path: String,
    /// Stored status: `active` or `revoked`.
    status: String,
    /// `revoked` when revoked or past the rotation grace end; `expired` when past
    /// `expires_at`.
    effective_status: String,
    /// Models the key may use; null = every model.
    #[oai(nullable)]
    allowed_models: Option<Vec<String>>,
    /// Null when the key has no daily cap.
    #[oai(nullable)]
    daily_cap_usd: Option<String>,
    /// Null when the key has no monthly cap.
    #[oai(nullable)]
    monthly_cap_usd: Option<String>,
    /// Null when the key has no own requests-per-minute limit.
    #[oai(nullable)]
    rpm: Option<u32>,
    #[oai(nullable)]
    user_id: Option<String>,
    #[oai(nullable)]
    team_id: Option<String>,
    #[oai(nullable)]
    customer_tier: Option<String>,
    /// Customer tag (a budget scope).
    #[oai(nullable)]
    customer_id: Option<String>,
    /// Organisation tag (a budget scope).
    #[oai(nullable)]
    org_id: Option<String>,
    /// Null when the key has no weekly cap.
    #[oai(nullable)]
    weekly_cap_usd: Option<String>,
    /// Null when the key has no own tokens-per-minute limit.
    #[oai(nullable)]
    tpm: Option<u32>,
    /// Alert levels in percent of the key's caps; null = 80, 95, 100.
    #[oai(nullable)]
    alert_at: Option<Vec<u8>>,
    #[oai(nullable)]
    created_at: Option<String>,
    /// Null while the key is active.
    #[oai(nullable)]
    revoked_at: Option<String>,
    /// End of the rotation grace period (null unless the key was rotated).
    #[oai(nullable)]
    grace_period_until: Option<String>,
    /// When the key stops authenticating (null = never): valid strictly before this instant.
    #[oai(nullable)]
    expires_at: Option<String>,
    /// Spend of the key's account (shared with rotated predecessors) in the current UTC day.
    spend_day_usd: f64,
    /// Spend of the key's account in the current week (from Monday 00:00 UTC).
    spend_week_usd: f64,
    /// Spend of the key's account in the current budget month (`--budget-month-start-day`).
    spend_month_usd: f64,
}

impl From<KeySummary> for KeyObject {
    fn from(k: KeySummary) -> Self {
        let r = k.record;
        KeyObject {
            name: r.display_name().to_owned(),
            status: match r.status {
                metis_domain::keys::KeyStatus::Active => "active".to_owned(),
                metis_domain::keys::KeyStatus::Revoked => "revoked".to_owned(),
            },
            effective_status: k.effective_status.to_owned(),
            key_id: r.key_id,
            workspace_path: r.workspace_path,
            allowed_models: r.allowed_models,
            daily_cap_usd: r.daily_cap_usd,
            monthly_cap_usd: r.monthly_cap_usd,
            rpm: r.rpm,
            user_id: r.user_id,
            team_id: r.team_id,
            customer_tier: r.customer_tier,
            customer_id: r.customer_id,
            org_id: r.org_id,
            weekly_cap_usd: r.weekly_cap_usd,
            tpm: r.tpm,
            alert_at: r.alert_at,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
            grace_period_until: r.grace_period_until,
            expires_at: r.expires_at,
            spend_day_usd: k.spend_day_usd,
            spend_week_usd: k.spend_week_usd,
            spend_month_usd: k.spend_month_usd,
        }
    }
}

mod bodies;
use bodies::{CreateKeyBody, Text, UpdateKeyBody, rotation_expiry, text};

mod policies;
use policies::{
    BudgetBody, BudgetList, BudgetObject, ModelGroupBody, ModelGroupList, ModelGroupObject,
    RouteBody, StoredRouteObject, scope_of,
};

/// A created key with its token (shown only in this response).
#[derive(Object)]
pub struct CreatedKeyObject {
    key_id: String,
    /// The bearer token; only its SHA-256 is stored.
    token: String,
    key: KeyObject,
}

#[derive(Object)]
pub struct KeyList {
    keys: Vec<KeyObject>,
}

#[derive(Object)]
pub struct RevokeObject {
    key_id: String,
    revoked_at: String,
    /// True when the key was already revoked (nothing changed).
    already_revoked: bool,
}

#[derive(Object)]
pub struct RotateBody {
    /// How long the old key keeps working: seconds or `30m`, `24h`, `7d`, `2w` (default 24h;
    /// more than zero).
    #[oai(nullable, validator(pattern = r"^\s*0*[1-9][0-9]{0,4}[smhdw]?\s*$"))]
    grace_period: Option<Text>,
    /// The successor's expiry: `keep` (default) expires it when the old key expires (never,
    /// if the old key never does); `reset` gives it `expires_in` from now, or no expiry
    /// without `expires_in`.
    #[oai(nullable, validator(pattern = "^(keep|reset)$"))]
    expiry: Option<Text>,
    /// With `expiry: "reset"` only: the successor expires this long after the rotation.
    #[oai(nullable, validator(pattern = r"^\s*0*[1-9][0-9]{0,4}[smhdw]?\s*$"))]
    expires_in: Option<Text>,
}

#[derive(Object)]
pub struct RotateObject {
    old_key_id: String,
    new_key_id: String,
    /// The successor's bearer token (shown only here).
    new_token: String,
    grace_period_until: String,
    key: KeyObject,
}

#[derive(Object)]
pub struct UsageRowObject {
    /// The group value (null for calls without it, e.g. keys without a team).
    #[oai(nullable)]
    group: Option<String>,
    cost_usd: f64,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cache_creation_input_tokens: u64,
    calls: u64,
    failed_calls: u64,
}

impl From<UsageRow> for UsageRowObject {
    fn from(r: UsageRow) -> Self {
        UsageRowObject {
            group: r.group,
            cost_usd: r.cost_usd,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cache_creation_input_tokens: r.cache_creation_input_tokens,
            calls: r.calls,
            failed_calls: r.failed_calls,
        }
    }
}

#[derive(Object)]
pub struct UsageReport {
    /// Window start (inclusive), ISO-8601 UTC.
    since: String,
    /// Window end (exclusive).
    until: String,
    /// `key`, `user`, `team` or `model`.
    group_by: String,
    rows: Vec<UsageRowObject>,
}

/// One audit event, in the same envelope as `metis audit export` JSONL lines.
#[derive(Object)]
pub struct AuditEvent {
    id: String,
    timestamp: String,
    session_id: String,
    #[oai(nullable)]
    turn_id: Option<String>,
    #[oai(nullable)]
    parent_event_id: Option<String>,
    #[oai(rename = "type")]
    event_type: String,
    actor: String,
    sensitivity: String,
    payload: serde_json::Value,
}

impl From<EventRow> for AuditEvent {
    fn from(e: EventRow) -> Self {
        AuditEvent {
            timestamp: format_iso(e.timestamp_us),
            payload: serde_json::from_str(&e.payload_json).unwrap_or(serde_json::Value::Null),
            id: e.id,
            session_id: e.session_id,
            turn_id: e.turn_id,
            parent_event_id: e.parent_event_id,
            event_type: e.event_type,
            actor: e.actor,
            sensitivity: e.sensitivity,
        }
    }
}

#[derive(Object)]
pub struct AuditReport {
    since: String,
    until: String,
    events: Vec<AuditEvent>,
}

/// The admin endpoints.
pub struct AdminApi {
    pub svc: Arc<dyn AdminService>,
}

const SEVEN_DAYS_US: i64 = 7 * 86_400 * 1_000_000;

impl AdminApi {
    /// A half-open window from optional RFC 3339 bounds (default: the last 7 days).
    fn window(&self, since: Option<&str>, until: Option<&str>) -> Result<(i64, i64), AdminError> {
        let parse = |field: &str, v: Option<&str>| -> Result<Option<i64>, AdminError> {
            v.map(|raw| {
                parse_iso(raw).map_err(|e| AdminFailure::Invalid(format!("{field}: {e}")).into())
            })
            .transpose()
        };
        let until_us = parse("until", until)?.unwrap_or_else(|| self.svc.now_us());
        let since_us = parse("since", since)?.unwrap_or(until_us - SEVEN_DAYS_US);
        Ok((since_us, until_us))
    }
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

/// The one key/user/team/model value a usage query may be filtered to (the query parameters
/// in that order); more than one is a 400.
pub(crate) fn one_filter(
    [key, user, team, model]: [Option<String>; 4],
) -> Result<Option<(UsageGroup, String)>, AdminError> {
    let mut given = [
        (UsageGroup::Key, key),
        (UsageGroup::User, user),
        (UsageGroup::Team, team),
        (UsageGroup::Model, model),
    ]
    .into_iter()
    .filter_map(|(g, v)| v.map(|v| (g, v)));
    let first = given.next();
    if given.next().is_some() {
        return Err(AdminFailure::Invalid(
            "at most one of key, user, team, model may filter usage".to_owned(),
        )
        .into());
    }
    Ok(first)
}

#[OpenApi(prefix_path = "/admin/v1", tag = "AdminTag::Admin")]
impl AdminApi {
    /// Issue a key. The token is returned once; only its SHA-256 is stored. Role: operator.
    #[oai(path = "/keys", method = "post", operation_id = "createKey")]
    async fn create_key(
        &self,
        auth: AdminAuth,
        body: Json<CreateKeyBody>,
    ) -> Result<CreatedResponse, AdminError> {
        let by = auth.require(Role::Operator)?;
        let b = body.0;
        // Resolved here so a bad value is a 400 naming the API field, not the CLI flag.
        let expires_at = metis_domain::keys::resolve_expiry(
            text(b.expires_in).as_deref(),
            text(b.expires_at).as_deref(),
            self.svc.now_us(),
            "expires_in",
            "expires_at",
        )
        .map_err(|m| AdminError::from(AdminFailure::Invalid(m)))?;
        let created = self
            .svc
            .create_key(
                NewKey {
                    name: b.name.0,
                    workspace: b.workspace.0,
                    allowed_models: b.allowed_models.into_iter().map(|m| m.0).collect(),
                    daily_cap_usd: text(b.daily_cap_usd),
                    monthly_cap_usd: text(b.monthly_cap_usd),
                    rpm: b.rpm,
                    user: text(b.user),
                    team: text(b.team),
                    customer_tier: text(b.customer_tier),
                    customer: text(b.customer),
                    org: text(b.org),
                    weekly_cap_usd: text(b.weekly_cap_usd),
                    tpm: b.tpm,
                    alert_at: b.alert_at,
                    expires_in: None,
                    expires_at,
                },
                by,
            )
            .await?;
        Ok(CreatedResponse::Created(Json(CreatedKeyObject {
            key_id: created.key.record.key_id.clone(),
            token: created.token,
            key: created.key.into(),
        })))
    }

    /// List keys with status, effective status and current spend. Role: viewer.
    #[oai(path = "/keys", method = "get", operation_id = "listKeys")]
    async fn list_keys(&self, auth: AdminAuth) -> AdminResult<KeyList> {
        auth.require(Role::Viewer)?;
        let keys = self.svc.list_keys().await?;
        Ok(Json(KeyList {
            keys: keys.into_iter().map(KeyObject::from).collect(),
        }))
    }

    /// One key. Role: viewer.
    #[oai(path = "/keys/:key_id", method = "get", operation_id = "getKey")]
    async fn get_key(&self, auth: AdminAuth, key_id: Path<String>) -> AdminResult<KeyObject> {
        auth.require(Role::Viewer)?;
        Ok(Json(self.svc.get_key(&key_id.0).await?.into()))
    }

    /// Change settings of an active key (allow-list, caps, limits, alert levels, scope tags):
    /// a field left out is kept, `null` removes it. In force in every running gateway within
    /// 2 seconds; audited as `gateway.key_updated` with each changed field. Revoked or expired
    /// keys cannot be updated (409). Role: operator.
    #[oai(path = "/keys/:key_id", method = "patch", operation_id = "updateKey")]
    async fn update_key(
        &self,
        auth: AdminAuth,
        key_id: Path<String>,
        body: Json<UpdateKeyBody>,
    ) -> AdminResult<KeyObject> {
        let by = auth.require(Role::Operator)?;
        let k = self.svc.update_key(&key_id.0, body.0.changes(), by).await?;
        Ok(Json(k.into()))
    }

    /// Revoke a key now (idempotent). A running gateway refuses it within 2 seconds. Role:
    /// operator.
    #[oai(
        path = "/keys/:key_id/revoke",
        method = "post",
        operation_id = "revokeKey"
    )]
    async fn revoke_key(&self, auth: AdminAuth, key_id: Path<String>) -> AdminResult<RevokeObject> {
        let by = auth.require(Role::Operator)?;
        let r = self.svc.revoke_key(&key_id.0, by).await?;
        Ok(Json(RevokeObject {
            key_id: r.key_id,
            revoked_at: r.revoked_at,
            already_revoked: r.already_revoked,
        }))
    }

    /// Rotate a key: a successor inherits scope, caps, rpm, tags and spend; the old key works
    /// until the grace period ends. Revoked or lapsed keys cannot be rotated (409). Role:
    /// operator.
    #[oai(
        path = "/keys/:key_id/rotate",
        method = "post",
        operation_id = "rotateKey"
    )]
    async fn rotate_key(
        &self,
        auth: AdminAuth,
        key_id: Path<String>,
        body: Json<RotateBody>,
    ) -> AdminResult<RotateObject> {
        let by = auth.require(Role::Operator)?;
        let b = body.0;
        let grace = parse_grace(text(b.grace_period).as_deref().unwrap_or("24h"))
            .map_err(|m| AdminError::from(AdminFailure::Invalid(format!("grace_period: {m}"))))?;
        let expiry = rotation_expiry(text(b.expiry).as_deref(), text(b.expires_in).as_deref())
            .map_err(|m| AdminError::from(AdminFailure::Invalid(m)))?;
        let r = self.svc.rotate_key(&key_id.0, grace, expiry, by).await?;
        Ok(Json(RotateObject {
            old_key_id: r.old_key_id,
            new_key_id: r.new_key.record.key_id.clone(),
            new_token: r.new_token,
            grace_period_until: r.grace_period_until,
            key: r.new_key.into(),
        }))
    }

    /// Every budget of a user, team, customer or organisation, with its scope's spend in the
    /// current day and month. Role: viewer.
    #[oai(path = "/budgets", method = "get", operation_id = "listBudgets")]
    async fn list_budgets(&self, auth: AdminAuth) -> AdminResult<BudgetList> {
        auth.require(Role::Viewer)?;
        let budgets = self.svc.list_budgets().await?;
        Ok(Json(BudgetList {
            budgets: budgets.into_iter().map(BudgetObject::from).collect(),
        }))
    }

    /// Create or replace the budget of a scope (`user`, `team`, `customer`, `org`) and tag
    /// value; every setting as given (one left out is removed). Running gateways apply it
    /// within 2 seconds. An allow-list naming an unknown group is a 400 naming it. Role:
    /// operator.
    #[oai(
        path = "/budgets/:scope/:id",
        method = "put",
        operation_id = "putBudget"
    )]
    async fn put_budget(
        &self,
        auth: AdminAuth,
        #[oai(validator(pattern = "^(user|team|customer|org)$"))] scope: Path<String>,
        #[oai(validator(pattern = "^[a-z0-9_-]{1,200}$"))] id: Path<String>,
        body: Json<BudgetBody>,
    ) -> AdminResult<BudgetObject> {
        let by = auth.require(Role::Operator)?;
        let b = body.0;
        let budget = BudgetPolicy {
            scope: scope_of(&scope.0)?,
            id: id.0,
            daily_usd: text(b.daily_usd),
            weekly_usd: text(b.weekly_usd),
            monthly_usd: text(b.monthly_usd),
            tpm: b.tpm,
            alert_at: b.alert_at,
            allowed_models: b
                .allowed_models
                .filter(|l| !l.is_empty())
                .map(|l| l.into_iter().map(|m| m.0.trim().to_owned()).collect()),
            updated_at: None,
        };
        Ok(Json(self.svc.put_budget(budget, by).await?.into()))
    }

    /// Delete the budget of a scope; answers with the budget as it was. Role: operator.
    #[oai(
        path = "/budgets/:scope/:id",
        method = "delete",
        operation_id = "deleteBudget"
    )]
    async fn delete_budget(
        &self,
        auth: AdminAuth,
        #[oai(validator(pattern = "^(user|team|customer|org)$"))] scope: Path<String>,
        id: Path<String>,
    ) -> AdminResult<BudgetObject> {
        let by = auth.require(Role::Operator)?;
        let removed = self
            .svc
            .delete_budget(scope_of(&scope.0)?, &id.0, by)
            .await?;
        Ok(Json(BudgetObject::of(removed, [0.0; 3])))
    }

    /// Every model group and its members. Role: viewer.
    #[oai(
        path = "/model-groups",
        method = "get",
        operation_id = "listModelGroups"
    )]
    async fn list_model_groups(&self, auth: AdminAuth) -> AdminResult<ModelGroupList> {
        auth.require(Role::Viewer)?;
        let groups = self.svc.list_model_groups().await?;
        Ok(Json(ModelGroupList {
            model_groups: groups.into_iter().map(ModelGroupObject::from).collect(),
        }))
    }

    /// Create a model group or replace its members: every key and budget naming
    /// `group:NAME` may use the new members within 2 seconds. Role: operator.
    #[oai(
        path = "/model-groups/:name",
        method = "put",
        operation_id = "putModelGroup"
    )]
    async fn put_model_group(
        &self,
        auth: AdminAuth,
        #[oai(validator(pattern = "^[a-z0-9_-]{1,64}$"))] name: Path<String>,
        body: Json<ModelGroupBody>,
    ) -> AdminResult<ModelGroupObject> {
        let by = auth.require(Role::Operator)?;
        let models = body.0.models.into_iter().map(|m| m.0).collect();
        Ok(Json(
            self.svc.put_model_group(&name.0, models, by).await?.into(),
        ))
    }

    /// Delete a model group (its `group:NAME` entries then allow nothing); answers with the
    /// group as it was. Role: operator.
    #[oai(
        path = "/model-groups/:name",
        method = "delete",
        operation_id = "deleteModelGroup"
    )]
    async fn delete_model_group(
        &self,
        auth: AdminAuth,
        name: Path<String>,
    ) -> AdminResult<ModelGroupObject> {
        let by = auth.require(Role::Operator)?;
        Ok(Json(self.svc.delete_model_group(&name.0, by).await?.into()))
    }

    /// Store a route (a model alias served by the given deployments), replacing a stored
    /// route of the alias and, while stored, a config-file route of it. It is in force in this
    /// replica when the call returns and in the others with their next key reload. Every
    /// deployment must name a live provider of this gateway. Role: operator.
    #[oai(path = "/routes/:alias", method = "put", operation_id = "putRoute")]
    async fn put_route(
        &self,
        auth: AdminAuth,
        #[oai(validator(pattern = r"^[A-Za-z0-9_.:/@-]{1,128}$"))] alias: Path<String>,
        body: Json<RouteBody>,
    ) -> AdminResult<StoredRouteObject> {
        let by = auth.require(Role::Operator)?;
        let stored = self
            .svc
            .put_route(&alias.0, body.0.deployments(), by)
            .await?;
        Ok(Json(stored.into()))
    }

    /// Delete a stored route (a config-file route of the alias, if any, applies again);
    /// answers with the route as it was. Role: operator.
    #[oai(
        path = "/routes/:alias",
        method = "delete",
        operation_id = "deleteRoute"
    )]
    async fn delete_route(
        &self,
        auth: AdminAuth,
        alias: Path<String>,
    ) -> AdminResult<StoredRouteObject> {
        let by = auth.require(Role::Operator)?;
        Ok(Json(self.svc.delete_route(&alias.0, by).await?.into()))
    }

    /// Cost and tokens over `[since, until)` (default: the last 7 days), grouped by key, user,
    /// team or model, optionally filtered to one value of another dimension. Role: viewer.
    #[oai(path = "/usage", method = "get", operation_id = "getUsage")]
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per query parameter"
    )]
    async fn usage(
        &self,
        auth: AdminAuth,
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
    ) -> AdminResult<UsageReport> {
        auth.require(Role::Viewer)?;
        let (since_us, until_us) = self.window(since.0.as_deref(), until.0.as_deref())?;
        let group_name = group_by.0.unwrap_or_else(|| "key".to_owned());
        let group = group_of(&group_name)?;
        let filter = one_filter([key.0, user.0, team.0, model.0])?;
        let rows = self.svc.usage(since_us, until_us, group, filter).await?;
        Ok(Json(UsageReport {
            since: format_iso(since_us),
            until: format_iso(until_us),
            group_by: group_name,
            rows: rows.into_iter().map(UsageRowObject::from).collect(),
        }))
    }

    /// Audit events in `[since, until)` (default: the last 7 days), ordered by id, optionally
    /// restricted to some audit types (`type` repeated). Role: viewer.
    #[oai(path = "/audit", method = "get", operation_id = "exportAudit")]
    async fn audit(
        &self,
        auth: AdminAuth,
        #[oai(validator(
            pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-7]):[0-5][0-9])$"
        ))]
        since: Query<Option<String>>,
        #[oai(validator(
            pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-7]):[0-5][0-9])$"
        ))]
        until: Query<Option<String>>,
        #[oai(name = "type")] types: Query<Vec<String>>,
    ) -> AdminResult<AuditReport> {
        auth.require(Role::Viewer)?;
        let (since_us, until_us) = self.window(since.0.as_deref(), until.0.as_deref())?;
        let events = self.svc.audit(since_us, until_us, types.0).await?;
        Ok(Json(AuditReport {
            since: format_iso(since_us),
            until: format_iso(until_us),
            events: events.into_iter().map(AuditEvent::from).collect(),
        }))
    }
}

/// `POST /admin/v1/keys` success.
#[derive(ApiResponse)]
pub enum CreatedResponse {
    /// The key was issued.
    #[oai(status = 201)]
    Created(Json<CreatedKeyObject>),
}

#[derive(poem_openapi::Tags)]
pub enum AdminTag {
    /// Key lifecycle, budgets and model groups, usage and audit (admin token or OIDC JWT;
    /// reads need `viewer`, changes `operator`).
    Admin,
}
