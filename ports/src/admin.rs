//! The admin driving port: what the admin HTTP API (`/admin/v1/…`) asks of the core. The CLI
//! uses the same use cases directly.

use crate::trace::{EventRow, UsageGroup, UsageRow};
use async_trait::async_trait;
use metis_domain::admin::AdminIdentity;
use metis_domain::budgets::{BudgetPolicy, ScopeKind};
use metis_domain::keys::{KeyRecord, RotationExpiry};
use metis_domain::model_groups::ModelGroup;

/// A key as the admin API shows it (never its hash or token).
#[derive(Debug, Clone, PartialEq)]
pub struct KeySummary {
    pub record: KeyRecord,
    /// `active`, `revoked` (revoked, or past its grace end) or `expired` (past `expires_at`).
    pub effective_status: &'static str,
    /// Spend of the key's account in the current day, week and budget month (USD).
    pub spend_day_usd: f64,
    pub spend_week_usd: f64,
    pub spend_month_usd: f64,
}

/// A budget as the admin API shows it: the stored policy and its scope's current spend.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSummary {
    pub budget: BudgetPolicy,
    /// Spend of the scope's account (`team:platform`) in the current day, week and budget
    /// month (USD).
    pub spend_day_usd: f64,
    pub spend_week_usd: f64,
    pub spend_month_usd: f64,
}

/// Fields of a new key (validated by the use case; errors name the field).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewKey {
    pub name: String,
    pub workspace: String,
    pub allowed_models: Vec<String>,
    pub daily_cap_usd: Option<String>,
    pub monthly_cap_usd: Option<String>,
    pub rpm: Option<u32>,
    pub user: Option<String>,
    pub team: Option<String>,
    pub customer_tier: Option<String>,
    /// Customer tag (a budget scope).
    pub customer: Option<String>,
    /// Organisation tag (a budget scope).
    pub org: Option<String>,
    /// Weekly USD cap of the key (decimal string).
    pub weekly_cap_usd: Option<String>,
    /// Tokens per minute of the key (input + output).
    pub tpm: Option<u32>,
    /// Alert levels (percent of each cap); `None` = 80, 95, 100.
    pub alert_at: Option<Vec<u8>>,
    /// A duration (`30d`, `12h`, …): the key expires that long after it is issued.
    pub expires_in: Option<String>,
    /// An RFC 3339 instant in the future; at most one of `expires_in` / `expires_at`.
    pub expires_at: Option<String>,
}

/// A change to one setting of a key: keep it (`Keep`, the default), remove it, or set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Change<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<T> Change<T> {
    /// Apply to a stored optional setting.
    pub fn apply(self, field: &mut Option<T>) {
        match self {
            Change::Keep => {}
            Change::Clear => *field = None,
            Change::Set(v) => *field = Some(v),
        }
    }
}

/// The settings of an existing key to change (`metis gateway update-key`, `PATCH
/// /admin/v1/keys/{id}`); validated by the use case like an issue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges {
    pub allowed_models: Change<Vec<String>>,
    pub daily_cap_usd: Change<String>,
    pub weekly_cap_usd: Change<String>,
    pub monthly_cap_usd: Change<String>,
    pub rpm: Change<u32>,
    pub tpm: Change<u32>,
    pub alert_at: Change<Vec<u8>>,
    pub user: Change<String>,
    pub team: Change<String>,
    pub customer: Change<String>,
    pub org: Change<String>,
}

/// A created key: its summary and the token, shown once.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub key: KeySummary,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeResult {
    pub key_id: String,
    pub revoked_at: String,
    pub already_revoked: bool,
}

#[derive(Debug, Clone)]
pub struct RotateResult {
    pub old_key_id: String,
    pub new_key: KeySummary,
    pub new_token: String,
    pub grace_period_until: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminFailure {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the key's state (e.g. rotating a revoked key).
    #[error("{0}")]
    Conflict(String),
    /// The keystore cannot be written (e.g. a read-only mounted Secret).
    #[error("{0}")]
    ReadOnly(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Key administration, usage and audit for the admin API. The methods that change keys take
/// the authenticated admin (`by`), recorded in the change's audit event.
#[async_trait]
pub trait AdminService: Send + Sync {
    /// # Errors
    /// `Invalid`, `ReadOnly`, `Unavailable`.
    async fn create_key(&self, new: NewKey, by: &AdminIdentity)
    -> Result<CreatedKey, AdminFailure>;
    /// # Errors
    /// `Unavailable`.
    async fn list_keys(&self) -> Result<Vec<KeySummary>, AdminFailure>;
    /// # Errors
    /// `NotFound`, `Unavailable`.
    async fn get_key(&self, key_id: &str) -> Result<KeySummary, AdminFailure>;
    /// Idempotent.
    ///
    /// # Errors
    /// `NotFound`, `ReadOnly`, `Unavailable`.
    async fn revoke_key(
        &self,
        key_id: &str,
        by: &AdminIdentity,
    ) -> Result<RevokeResult, AdminFailure>;
    /// # Errors
    /// `Invalid` (grace), `NotFound`, `Conflict` (inactive key), `ReadOnly`, `Unavailable`.
    async fn rotate_key(
        &self,
        key_id: &str,
        grace_secs: u64,
        expiry: RotationExpiry,
        by: &AdminIdentity,
    ) -> Result<RotateResult, AdminFailure>;
    /// # Errors
    /// `Invalid` (window), `Unavailable`.
    async fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, AdminFailure>;
    /// # Errors
    /// `Invalid` (window or type), `Unavailable`.
    async fn audit(
        &self,
        since_us: i64,
        until_us: i64,
        types: Vec<String>,
    ) -> Result<Vec<EventRow>, AdminFailure>;
    /// Change settings of an active key.
    ///
    /// # Errors
    /// `Invalid` (naming the field or the unknown group), `NotFound`, `Conflict` (a revoked
    /// key), `ReadOnly`, `Unavailable`.
    async fn update_key(
        &self,
        key_id: &str,
        changes: KeyChanges,
        by: &AdminIdentity,
    ) -> Result<KeySummary, AdminFailure>;
    /// Every budget with its scope's current spend.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_budgets(&self) -> Result<Vec<BudgetSummary>, AdminFailure>;
    /// Create or replace the budget of `budget.scope`/`budget.id`.
    ///
    /// # Errors
    /// `Invalid` (naming the field or the unknown group), `ReadOnly`, `Unavailable`.
    async fn put_budget(
        &self,
        budget: BudgetPolicy,
        by: &AdminIdentity,
    ) -> Result<BudgetSummary, AdminFailure>;
    /// # Errors
    /// `NotFound`, `ReadOnly`, `Unavailable`.
    async fn delete_budget(
        &self,
        scope: ScopeKind,
        id: &str,
        by: &AdminIdentity,
    ) -> Result<BudgetPolicy, AdminFailure>;
    /// # Errors
    /// `Unavailable`.
    async fn list_model_groups(&self) -> Result<Vec<ModelGroup>, AdminFailure>;
    /// Create a group or replace its members.
    ///
    /// # Errors
    /// `Invalid`, `ReadOnly`, `Unavailable`.
    async fn put_model_group(
        &self,
        name: &str,
        models: Vec<String>,
        by: &AdminIdentity,
    ) -> Result<ModelGroup, AdminFailure>;
    /// # Errors
    /// `NotFound`, `ReadOnly`, `Unavailable`.
    async fn delete_model_group(
        &self,
        name: &str,
        by: &AdminIdentity,
    ) -> Result<ModelGroup, AdminFailure>;
    /// Create a stored route or replace its deployments; each deployment must name a live
    /// provider of this gateway.
    ///
    /// # Errors
    /// `Invalid`, `ReadOnly`, `Unavailable`.
    async fn put_route(
        &self,
        alias: &str,
        deployments: Vec<metis_domain::routing::Deployment>,
        by: &AdminIdentity,
    ) -> Result<metis_domain::routing::StoredRoute, AdminFailure>;
    /// # Errors
    /// `NotFound`, `ReadOnly`, `Unavailable`.
    async fn delete_route(
        &self,
        alias: &str,
        by: &AdminIdentity,
    ) -> Result<metis_domain::routing::StoredRoute, AdminFailure>;
    /// Current time (µs), for default windows.
    fn now_us(&self) -> i64;
}
