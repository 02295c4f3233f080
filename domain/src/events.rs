//! The trace event envelope and the payloads the gateway emits.
//!
//! Invariants:
//! - No prompt text, completion text or secret is ever part of a payload: only model ids,
//!   counts, costs, hashes, ids and error classes.
//! - Payload field order is the declaration order below (the JSON is what `sqlite3` users and
//!   audit exports see, so it is kept stable).

use crate::admin::AdminIdentity;
use crate::keys::KeyRecord;
use serde::Serialize;

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    User,
    Agent,
    System,
}

impl Actor {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::User => "user",
            Actor::Agent => "agent",
            Actor::System => "system",
        }
    }
}

/// Privacy tier of an event (ordered from most to least private).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitivity {
    Private,
    UserControlled,
    Pseudonymous,
    Aggregatable,
}

impl Sensitivity {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Sensitivity::Private => "private",
            Sensitivity::UserControlled => "user_controlled",
            Sensitivity::Pseudonymous => "pseudonymous",
            Sensitivity::Aggregatable => "aggregatable",
        }
    }
}

/// One stored trace event (the `events` table row).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// ULID; sort order is emit order.
    pub id: String,
    /// Unix microseconds, UTC.
    pub timestamp_us: i64,
    pub session_id: String,
    pub turn_id: Option<String>,
    pub parent_event_id: Option<String>,
    /// `domain.verb`, e.g. `llm.call_completed`.
    pub event_type: &'static str,
    pub actor: Actor,
    pub sensitivity: Sensitivity,
    /// Compact JSON.
    pub payload_json: String,
}

/// Event type names.
pub mod types {
    pub const ROUTE_DECIDED: &str = "route.decided";
    pub const LLM_CALL_STARTED: &str = "llm.call_started";
    pub const LLM_CALL_COMPLETED: &str = "llm.call_completed";
    pub const LLM_CALL_FAILED: &str = "llm.call_failed";
    pub const TURN_COMPLETED: &str = "turn.completed";
    pub const GATEWAY_AUTH_FAILED: &str = "gateway.auth_failed";
    pub const GATEWAY_KEY_ISSUED: &str = "gateway.key_issued";
    pub const GATEWAY_KEY_REVOKED: &str = "gateway.key_revoked";
    pub const GATEWAY_KEY_ROTATED: &str = "gateway.key_rotated";
    pub const GATEWAY_KEY_EXPIRED: &str = "gateway.key_expired";
    pub const GATEWAY_KEY_UPDATED: &str = "gateway.key_updated";
    pub const GATEWAY_QUOTA_EXCEEDED: &str = "gateway.quota_exceeded";
    pub const QUOTA_ALERT: &str = "quota.alert";
    /// A budget alert reached a webhook endpoint (`metis_domain::alerts`).
    pub const QUOTA_ALERT_DELIVERED: &str = "quota.alert_delivered";
    /// A budget alert did not reach a webhook endpoint: given up, rejected or dropped.
    pub const QUOTA_ALERT_UNDELIVERED: &str = "quota.alert_undelivered";
    pub const GATEWAY_RATE_LIMITED: &str = "gateway.rate_limited";
    pub const GATEWAY_KEY_LEAK_SUSPECTED: &str = "gateway.key_leak_suspected";
    pub const GATEWAY_BUDGET_SET: &str = "gateway.budget_set";
    pub const GATEWAY_BUDGET_DELETED: &str = "gateway.budget_deleted";
    pub const GATEWAY_MODEL_GROUP_SET: &str = "gateway.model_group_set";
    pub const GATEWAY_MODEL_GROUP_DELETED: &str = "gateway.model_group_deleted";
    pub const GATEWAY_ROUTE_SET: &str = "gateway.route_set";
    pub const GATEWAY_ROUTE_DELETED: &str = "gateway.route_deleted";
}

/// Who recorded a key lifecycle event (`source` of `gateway.key_issued`, `key_revoked`,
/// `key_rotated`). Events written before the field existed have none.
pub mod key_sources {
    /// `metis gateway issue-key | revoke-key | rotate-key | list-keys`.
    pub const CLI: &str = "cli";
    /// The admin API (`/admin/v1/keys…`) of a running gateway.
    pub const ADMIN_API: &str = "admin_api";
    /// The gateway itself: the quickstart key on first start, and the periodic sweep that
    /// writes lapsed rotation grace periods into the keystore.
    pub const GATEWAY: &str = "gateway";
    /// A change the gateway found in its keystore that no event in its own store recorded:
    /// made by a CLI writing into another database (a laptop, then a Kubernetes Secret), by
    /// hand, or a grace period that lapsed in a read-only keystore.
    pub const KEYSTORE_OBSERVED: &str = "keystore_observed";
}

/// A payload type knows its event type, actor and sensitivity.
pub trait Payload: Serialize {
    const TYPE: &'static str;
    const ACTOR: Actor;
    const SENSITIVITY: Sensitivity;
}

/// One entry of `route.decided.chain`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteChainEntry {
    /// `client_model` (the model named a catalog model) or `deployment` (one deployment of a
    /// route, in the order tried).
    pub policy: &'static str,
    /// `chose`, `rejected`; for deployments `chose` (it answered), `failed` or `skipped`.
    pub verdict: &'static str,
    pub reason: String,
    pub candidate_model: Option<String>,
    /// The deployment's name (route entries only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteDecided {
    pub chosen_model: String,
    pub winner_index: i64,
    pub elapsed_ms: f64,
    pub chain: Vec<RouteChainEntry>,
    pub requested_model: String,
}

impl Payload for RouteDecided {
    const TYPE: &'static str = types::ROUTE_DECIDED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LlmCallStarted {
    pub model: String,
    pub provider: String,
    pub estimated_input_tokens: u64,
    pub request_id: String,
    pub is_worker: bool,
    pub stream: bool,
}

impl Payload for LlmCallStarted {
    const TYPE: &'static str = types::LLM_CALL_STARTED;
    const ACTOR: Actor = Actor::Agent;
    const SENSITIVITY: Sensitivity = Sensitivity::Private;
}

/// Identity fields every gateway LLM event carries.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct CallIdentity {
    pub gateway_key_id: Option<String>,
    pub inbound_shape: Option<&'static str>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// The delegating session, for worker sessions (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_session_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LlmCallCompleted {
    pub model: String,
    pub provider: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cost_usd: f64,
    pub pricing_version: String,
    pub latency_ms: u64,
    pub stop_reason: String,
    pub produced_tool_calls: u64,
    pub produced_thinking_blocks: u64,
    pub retry_count: u32,
    #[serde(flatten)]
    pub identity: CallIdentity,
}

impl Payload for LlmCallCompleted {
    const TYPE: &'static str = types::LLM_CALL_COMPLETED;
    const ACTOR: Actor = Actor::Agent;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LlmCallFailed {
    pub model: String,
    pub provider: String,
    pub error_class: &'static str,
    /// Status and provider error type only; never upstream free text.
    pub error_message_redacted: String,
    pub retry_count: u32,
    pub latency_ms: u64,
    /// Usage consumed before the failure (streams cut mid-way, cancelled requests).
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cost_usd: f64,
    pub pricing_version: String,
    /// True when the usage above is the gateway's estimate (the call died before the
    /// upstream reported usage), false when it is the upstream's own count.
    pub usage_estimated: bool,
    #[serde(flatten)]
    pub identity: CallIdentity,
}

impl Payload for LlmCallFailed {
    const TYPE: &'static str = types::LLM_CALL_FAILED;
    const ACTOR: Actor = Actor::Agent;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TurnCompleted {
    pub stop_reason: String,
    pub llm_call_count: u64,
    pub tool_call_count: u64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub total_cost_usd: f64,
    pub wall_time_seconds: f64,
    #[serde(flatten)]
    pub identity: CallIdentity,
}

impl Payload for TurnCompleted {
    const TYPE: &'static str = types::TURN_COMPLETED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuthFailed {
    /// `missing_token`, `invalid_token`, `key_revoked`, `key_expired`, or `aggregated` for a summary of
    /// failures beyond the per-second sampling budget.
    pub reason: &'static str,
    pub inbound_shape: &'static str,
    /// First 8 hex chars of the SHA-256 of the presented token.
    pub token_hash_prefix: Option<String>,
    pub gateway_key_id: Option<String>,
    /// Failures folded into this event (0 for an individual failure).
    pub suppressed: u64,
}

impl Payload for AuthFailed {
    const TYPE: &'static str = types::GATEWAY_AUTH_FAILED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyIssued {
    pub gateway_key_id: String,
    pub name: String,
    pub workspace_path: String,
    pub issued_at: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub allowed_models: Option<Vec<String>>,
    pub daily_cap_usd: Option<String>,
    pub monthly_cap_usd: Option<String>,
    pub customer_tier: Option<String>,
    /// Budget scope tags and the key's own weekly cap, token limit and alert levels; each
    /// absent (not null) when unset, so payloads of keys without them stay byte-identical.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weekly_cap_usd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_at: Option<Vec<u8>>,
    /// When the key stops authenticating; absent (not null) for keys without expiry, so their
    /// payloads are byte-identical to the ones before key expiry existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Who recorded the change: one of [`key_sources`].
    pub source: &'static str,
    /// The admin who made the change through the admin API (`{sub, email, role, method}`);
    /// absent, not null, for changes without one (CLI, the gateway's own sweep), so those
    /// payloads are byte-identical to the ones before admin identities existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminIdentity>,
}

impl KeyIssued {
    /// The issue of `record`, as recorded by `source`.
    #[must_use]
    pub fn of(record: &KeyRecord, source: &'static str) -> Self {
        KeyIssued {
            gateway_key_id: record.key_id.clone(),
            name: record.display_name().to_owned(),
            workspace_path: record.workspace_path.clone(),
            issued_at: record.created_at.clone().unwrap_or_default(),
            user_id: record.user_id.clone(),
            team_id: record.team_id.clone(),
            allowed_models: record.allowed_models.clone(),
            daily_cap_usd: record.daily_cap_usd.clone(),
            monthly_cap_usd: record.monthly_cap_usd.clone(),
            customer_tier: record.customer_tier.clone(),
            customer_id: record.customer_id.clone(),
            org_id: record.org_id.clone(),
            weekly_cap_usd: record.weekly_cap_usd.clone(),
            tpm: record.tpm,
            alert_at: record.alert_at.clone(),
            expires_at: record.expires_at.clone(),
            source,
            admin: None,
        }
    }
}

impl Payload for KeyIssued {
    const TYPE: &'static str = types::GATEWAY_KEY_ISSUED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// Settings of a key were changed (`update-key`, `PATCH /admin/v1/keys/{id}`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyUpdated {
    pub gateway_key_id: String,
    /// Each changed field of the stored record: `{"team_id": {"from": null, "to": "eng"}}`.
    pub changes: serde_json::Map<String, serde_json::Value>,
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminIdentity>,
}

impl KeyUpdated {
    /// The fields that differ between two versions of a key record, as stored.
    #[must_use]
    pub fn diff(
        before: &KeyRecord,
        after: &KeyRecord,
    ) -> serde_json::Map<String, serde_json::Value> {
        let as_map = |r: &KeyRecord| match serde_json::to_value(r) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (old, new) = (as_map(before), as_map(after));
        let mut fields: Vec<&String> = old.keys().chain(new.keys()).collect();
        fields.sort();
        fields.dedup();
        let mut out = serde_json::Map::new();
        for f in fields {
            let (from, to) = (old.get(f), new.get(f));
            if from != to {
                out.insert(
                    f.clone(),
                    serde_json::json!({
                        "from": from.cloned().unwrap_or(serde_json::Value::Null),
                        "to": to.cloned().unwrap_or(serde_json::Value::Null),
                    }),
                );
            }
        }
        out
    }
}

impl Payload for KeyUpdated {
    const TYPE: &'static str = types::GATEWAY_KEY_UPDATED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// A budget of a user, team, customer or organisation was created or replaced.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BudgetSet {
    /// The budget as stored (scope, id, caps, tpm, alert levels, allow-list, `updated_at`).
    pub budget: crate::budgets::BudgetPolicy,
    /// The budget it replaced; absent when the scope had none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<crate::budgets::BudgetPolicy>,
    /// Who recorded the change: [`key_sources::CLI`] or [`key_sources::ADMIN_API`].
    pub source: &'static str,
    /// The admin who made the change through the admin API; absent for the CLI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminIdentity>,
}

impl Payload for BudgetSet {
    const TYPE: &'static str = types::GATEWAY_BUDGET_SET;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// A budget was deleted (the scope's keys are limited by their own caps only).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BudgetDeleted {
    /// The budget as it was.
    pub budget: crate::budgets::BudgetPolicy,
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminIdentity>,
}

impl Payload for BudgetDeleted {
    const TYPE: &'static str = types::GATEWAY_BUDGET_DELETED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// A model group was created or its members replaced.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelGroupSet {
    pub name: String,
    pub models: Vec<String>,
    /// The members before; absent when the group is new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_models: Option<Vec<String>>,
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminIdentity>,
}

impl Payload for ModelGroupSet {
    const TYPE: &'static str = types::GATEWAY_MODEL_GROUP_SET;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// A model group was deleted: `group:NAME` entries now allow nothing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelGroupDeleted {
    pub name: String,
    /// Its members when deleted.
    pub models: Vec<String>,
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminIdentity>,
}

impl Payload for ModelGroupDeleted {
    const TYPE: &'static str = types::GATEWAY_MODEL_GROUP_DELETED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// A route was set through the admin API (created, or its deployments replaced).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteSet {
    pub alias: String,
    pub deployments: Vec<crate::routing::Deployment>,
    /// The stored deployments before; absent when the route was not stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<Vec<crate::routing::Deployment>>,
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminIdentity>,
}

impl Payload for RouteSet {
    const TYPE: &'static str = types::GATEWAY_ROUTE_SET;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// A stored route was deleted (a config-file route of the alias applies again, if any).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteDeleted {
    pub alias: String,
    /// Its deployments when deleted.
    pub deployments: Vec<crate::routing::Deployment>,
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminIdentity>,
}

impl Payload for RouteDeleted {
    const TYPE: &'static str = types::GATEWAY_ROUTE_DELETED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyRevoked {
    pub gateway_key_id: String,
    pub revoked_at: String,
    /// `admin_revoke` or `grace_period_expired`.
    pub reason: &'static str,
    /// Who recorded the change: one of [`key_sources`].
    pub source: &'static str,
    /// The admin who made the change through the admin API (`{sub, email, role, method}`);
    /// absent, not null, for changes without one (CLI, the gateway's own sweep), so those
    /// payloads are byte-identical to the ones before admin identities existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminIdentity>,
}

impl Payload for KeyRevoked {
    const TYPE: &'static str = types::GATEWAY_KEY_REVOKED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// A key's own expiry (`expires_at`) passed: recorded once per store by the gateway that
/// notices it (requests with the key are refused from `expires_at` on either way).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyExpired {
    pub gateway_key_id: String,
    pub expires_at: String,
    pub workspace_path: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// Who recorded the change: one of [`key_sources`] (`gateway`).
    pub source: &'static str,
}

impl Payload for KeyExpired {
    const TYPE: &'static str = types::GATEWAY_KEY_EXPIRED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyRotated {
    pub old_gateway_key_id: String,
    pub new_gateway_key_id: String,
    pub grace_period_until: String,
    pub workspace_path: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// Who recorded the change: one of [`key_sources`].
    pub source: &'static str,
    /// The admin who made the change through the admin API (`{sub, email, role, method}`);
    /// absent, not null, for changes without one (CLI, the gateway's own sweep), so those
    /// payloads are byte-identical to the ones before admin identities existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminIdentity>,
}

impl Payload for KeyRotated {
    const TYPE: &'static str = types::GATEWAY_KEY_ROTATED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// A request refused because a spend cap is reached.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuotaExceeded {
    /// The cap's name: `key_daily`, `team_monthly`, … (`metis_domain::budgets::cap_name`).
    pub scope: &'static str,
    pub current_usd: String,
    pub limit_usd: String,
    pub inbound_shape: &'static str,
    pub gateway_key_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// Refusals folded into this event since the previous one for this key (sampled).
    pub suppressed: u64,
}

impl Payload for QuotaExceeded {
    const TYPE: &'static str = types::GATEWAY_QUOTA_EXCEEDED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// Settled spend crossed an alert level of a cap (default 80 % `warning`, 95 % `critical`,
/// 100 % `exhausted`); once per window and level. `scope` is the cap's name (`team_monthly`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuotaAlert {
    pub scope: &'static str,
    pub severity: &'static str,
    pub current_usd: String,
    pub limit_usd: String,
    pub percentage: f64,
    pub gateway_key_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// The level crossed (percent of the cap). Events written before levels were
    /// configurable lack it (80 % was `warning`, 95 % `critical`).
    pub level_percent: u8,
    /// The spend account the cap is measured on (`team:platform`, or the key's account).
    pub account: String,
}

impl Payload for QuotaAlert {
    const TYPE: &'static str = types::QUOTA_ALERT;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// A sampled record of rate-limit denials (at most one event per second; `suppressed` counts
/// the denials folded into it since the previous event).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RateLimited {
    /// `per_key`, `per_ip`, or a token limit: `key_tpm`, `user_tpm`, `team_tpm`.
    pub scope: &'static str,
    /// The request limit (absent for a token limit).
    #[serde(skip_serializing_if = "is_zero")]
    pub rpm: u32,
    /// The token limit (token-limit denials only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    pub retry_after_seconds: u64,
    pub inbound_shape: &'static str,
    /// First 8 hex chars of the token hash (per-key denials).
    pub token_hash_prefix: Option<String>,
    pub client_ip: Option<String>,
    pub suppressed: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Payload for RateLimited {
    const TYPE: &'static str = types::GATEWAY_RATE_LIMITED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// A key was used from more distinct client IPs than expected within the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyLeakSuspected {
    pub gateway_key_id: String,
    pub distinct_ips: usize,
    pub window_seconds: i64,
    pub threshold: usize,
}

impl Payload for KeyLeakSuspected {
    const TYPE: &'static str = types::GATEWAY_KEY_LEAK_SUSPECTED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// Build an [`Event`] from a typed payload.
///
/// Serialising these payloads cannot fail (plain structs of strings and numbers); a failure
/// would be a programming error, so it degrades to an empty object rather than panicking.
#[must_use]
pub fn make_event<P: Payload>(
    id: String,
    timestamp_us: i64,
    session_id: &str,
    turn_id: Option<&str>,
    parent_event_id: Option<&str>,
    payload: &P,
) -> Event {
    Event {
        id,
        timestamp_us,
        session_id: session_id.to_owned(),
        turn_id: turn_id.map(str::to_owned),
        parent_event_id: parent_event_id.map(str::to_owned),
        event_type: P::TYPE,
        actor: P::ACTOR,
        sensitivity: P::SENSITIVITY,
        payload_json: serde_json::to_string(payload).unwrap_or_else(|_| "{}".to_owned()),
    }
}

#[cfg(test)]
mod admin_field_tests {
    use super::*;
    use crate::admin::{AdminIdentity, AuthMethod, Role};

    fn revoked(admin: Option<AdminIdentity>) -> String {
        serde_json::to_string(&KeyRevoked {
            gateway_key_id: "gk_1".to_owned(),
            revoked_at: "2026-12-07T00:00:00Z".to_owned(),
            reason: "admin_revoke",
            source: "cli",
            admin,
        })
        .unwrap()
    }

    #[test]
    fn the_admin_object_is_absent_without_an_admin_and_complete_with_one() {
        // Byte-identical to the payload written before admin identities existed.
        assert_eq!(
            revoked(None),
            r#"{"gateway_key_id":"gk_1","revoked_at":"2026-12-07T00:00:00Z","reason":"admin_revoke","source":"cli"}"#
        );
        let by = AdminIdentity {
            sub: "user-1".to_owned(),
            email: Some("u@example.test".to_owned()),
            role: Role::Operator,
            method: AuthMethod::Oidc,
        };
        assert!(revoked(Some(by)).ends_with(
            r#""source":"cli","admin":{"sub":"user-1","email":"u@example.test","role":"operator","method":"oidc"}}"#
        ));
    }
}
