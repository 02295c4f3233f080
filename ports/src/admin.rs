//! The admin driving port: what the admin HTTP API (`/admin/v1/…`) asks of the core. The CLI
//! uses the same use cases directly.

use crate::trace::{EventRow, UsageGroup, UsageRow};
use async_trait::async_trait;
use metis_domain::admin::AdminIdentity;
use metis_domain::keys::{KeyRecord, RotationExpiry};

/// A key as the admin API shows it (never its hash or token).
#[derive(Debug, Clone, PartialEq)]
pub struct KeySummary {
    pub record: KeyRecord,
    /// `active`, `revoked` (revoked, or past its grace end) or `expired` (past `expires_at`).
    pub effective_status: &'static str,
    /// Spend of the key's account in the current UTC day and month (USD).
    pub spend_day_usd: f64,
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
    /// A duration (`30d`, `12h`, …): the key expires that long after it is issued.
    pub expires_in: Option<String>,
    /// An RFC 3339 instant in the future; at most one of `expires_in` / `expires_at`.
    pub expires_at: Option<String>,
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
    /// Current time (µs), for default windows.
    fn now_us(&self) -> i64;
}
