//! Key lifecycle: issue, list, revoke, rotate, and the sweep that turns lapsed rotation
//! grace periods into recorded revocations. Used by the CLI and the admin API alike.
//!
//! Invariants:
//! - Tokens are `gw_` + 192 CSPRNG bits, independent of the `gk_<ULID>` id; only the
//!   SHA-256 is stored and the plaintext is returned exactly once.
//! - Every change is one atomic `KeyStore::update` (no lost update between concurrent
//!   admins) and is audited after it is stored (`gateway.key_issued`, `key_revoked`,
//!   `key_rotated`, each with the `source` of this admin: CLI, admin API or the gateway).
//! - In a gateway (with a [`KeySync`]), a change is in force in this process before the call
//!   returns: the key ring is reloaded from the keystore first. Its events are claimed with
//!   the sync, so the gateway never records them a second time as observed changes.
//! - Rotation refuses keys that are not active now (revoked or past their grace end), so it
//!   can never revive a lapsed key. The successor inherits scope, caps, rpm, identity tags
//!   and the spend account of its predecessor; its expiry follows an explicit
//!   [`RotationExpiry`] (default: the predecessor's `expires_at`, so rotation never extends a
//!   key's life unless asked to).

use crate::keys::KeySync;
use metis_domain::admin::AdminIdentity;
use metis_domain::events::{KeyIssued, KeyRevoked, KeyRotated, Payload, make_event};
use metis_domain::keys::{
    ADMIN_REVOKE, CUSTOMER_TIERS, GRACE_EXPIRED, Inactive, KeyChange, KeyRecord, KeyStatus,
    RotationExpiry, hash_token, resolve_expiry, token_from_random, validate_cap, validate_tag,
};
use metis_domain::time::{Timestamp, format_iso, parse_iso};
use metis_ports::keys::{KeyStore, KeyStoreError};
use metis_ports::system::{Clock, IdSource};
use metis_ports::trace::EventSink;
use std::sync::{Arc, Mutex};

/// What to issue (the admin port's `NewKey`; `workspace` must already be absolute — the CLI
/// resolves it).
pub type IssueRequest = metis_ports::admin::NewKey;

/// A newly issued key and its plaintext token (shown once).
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub record: KeyRecord,
    pub token: String,
}

/// Result of a revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub key_id: String,
    pub revoked_at: String,
    /// The key was already revoked (nothing changed, nothing audited).
    pub already: bool,
}

/// Result of a rotation.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub old_key_id: String,
    pub successor: IssuedKey,
    pub grace_period_until: String,
}

/// Errors of key administration; messages name the field or the key.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("key '{0}' not found in keystore")]
    NotFound(String),
    /// Something other than a key is missing (a budget, a model group); the message names it.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] KeyStoreError),
}

/// A key as listed (never secrets).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyView {
    pub record: KeyRecord,
    /// `active`, `revoked` (revoked, or past its grace end) or `expired` (past its own
    /// `expires_at`) at listing time.
    pub effective_status: &'static str,
    /// `active`, `revoked`, or `expired` (active on disk but past its grace end or its
    /// `expires_at`).
    pub display_status: &'static str,
}

/// The key administration use case.
pub struct KeyAdmin {
    pub(crate) store: Arc<dyn KeyStore>,
    sink: Arc<dyn EventSink>,
    pub(crate) clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    /// `source` of the events this admin records (`metis_domain::events::key_sources`).
    pub(crate) source: &'static str,
    /// In a gateway: the key ring to bring up to date after each change.
    sync: Option<Arc<KeySync>>,
}

fn validate_request(req: &IssueRequest) -> Result<(), AdminError> {
    let bad = |m: String| Err(AdminError::Invalid(m));
    if req.name.trim().is_empty() {
        return bad("--name must be non-empty".into());
    }
    if req.workspace.trim().is_empty() {
        return bad("--workspace must be non-empty".into());
    }
    if req.allowed_models.iter().any(|m| m.trim().is_empty()) {
        return bad("--allow-model must be non-empty".into());
    }
    for (field, cap) in [
        ("--daily-cap-usd", &req.daily_cap_usd),
        ("--monthly-cap-usd", &req.monthly_cap_usd),
    ] {
        if let Some(c) = cap {
            validate_cap(field, c).map_err(AdminError::Invalid)?;
        }
    }
    if let Some(c) = &req.weekly_cap_usd {
        validate_cap("--weekly-cap-usd", c).map_err(AdminError::Invalid)?;
    }
    if req.rpm == Some(0) {
        return bad("--rpm must be > 0".into());
    }
    if req.tpm == Some(0) {
        return bad("--tpm must be > 0".into());
    }
    if let Some(levels) = &req.alert_at {
        metis_domain::budgets::validate_alert_levels("--alert-at", levels)
            .map_err(AdminError::Invalid)?;
    }
    for (field, tag) in [
        ("--user", &req.user),
        ("--team", &req.team),
        ("--customer", &req.customer),
        ("--org", &req.org),
    ] {
        if let Some(t) = tag {
            validate_tag(field, t).map_err(AdminError::Invalid)?;
        }
    }
    if let Some(t) = &req.customer_tier
        && !CUSTOMER_TIERS.contains(&t.as_str())
    {
        return bad(format!(
            "--customer-tier must be one of trial, paid, internal, got '{t}'"
        ));
    }
    Ok(())
}

/// Plain decimal text of a validated cap: as typed, except exponent forms (`1e3` → `1000`),
/// as the original stored it.
fn normalise_cap(raw: &Option<String>) -> Option<String> {
    raw.as_ref().map(|r| {
        let t = r.trim();
        if t.contains(['e', 'E']) {
            t.parse::<f64>()
                .map_or_else(|_| t.to_owned(), |v| format!("{v}"))
        } else {
            t.to_owned()
        }
    })
}

impl KeyAdmin {
    #[must_use]
    pub fn new(
        store: Arc<dyn KeyStore>,
        sink: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdSource>,
        source: &'static str,
    ) -> Self {
        KeyAdmin {
            store,
            sink,
            clock,
            ids,
            source,
            sync: None,
        }
    }

    /// Put every change in force in `sync`'s key ring before returning, and claim its events
    /// there (a gateway's admin: the admin API, the quickstart key, the grace sweep).
    #[must_use]
    pub fn with_sync(mut self, sync: Arc<KeySync>) -> Self {
        self.sync = Some(sync);
        self
    }

    /// Where the keys live.
    #[must_use]
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Record `change` unless the gateway this admin runs in already recorded it (e.g. a
    /// grace lapse it observed in a read-only keystore before a sweep could write it).
    fn audit<P: Payload>(&self, change: &KeyChange, at: Timestamp, payload: &P) {
        if let Some(sync) = &self.sync
            && !sync.claim(change)
        {
            return;
        }
        self.sink.emit(make_event(
            self.ids.ulid(),
            at,
            "system",
            None,
            None,
            payload,
        ));
    }

    fn mint(&self, req: &IssueRequest, now: Timestamp, expires_at: Option<String>) -> IssuedKey {
        let token = token_from_random(&self.ids.secret_bytes());
        let record = KeyRecord {
            key_id: format!("gk_{}", self.ids.ulid()),
            secret_hash: hash_token(&token),
            name: Some(req.name.trim().to_owned()),
            workspace_path: req.workspace.clone(),
            created_at: Some(format_iso(now)),
            allowed_models: (!req.allowed_models.is_empty()).then(|| req.allowed_models.clone()),
            daily_cap_usd: normalise_cap(&req.daily_cap_usd),
            monthly_cap_usd: normalise_cap(&req.monthly_cap_usd),
            rpm: req.rpm,
            user_id: req.user.clone(),
            team_id: req.team.clone(),
            customer_tier: req.customer_tier.clone(),
            status: KeyStatus::Active,
            revoked_at: None,
            grace_period_until: None,
            expires_at,
            spend_account: None,
            customer_id: req.customer.clone(),
            org_id: req.org.clone(),
            weekly_cap_usd: normalise_cap(&req.weekly_cap_usd),
            tpm: req.tpm,
            alert_at: req.alert_at.clone(),
            extra: serde_json::Map::new(),
        };
        IssuedKey { record, token }
    }

    fn audit_issued(&self, at: Timestamp, record: &KeyRecord, by: Option<&AdminIdentity>) {
        let change = KeyChange::Issued {
            key_id: record.key_id.clone(),
        };
        let event = KeyIssued {
            admin: by.cloned(),
            ..KeyIssued::of(record, self.source)
        };
        self.audit(&change, at, &event);
    }

    /// Record a policy change (budgets, model groups): no key change to claim.
    pub(crate) fn record<P: Payload>(&self, at: Timestamp, payload: &P) {
        self.sink.emit(make_event(
            self.ids.ulid(),
            at,
            "system",
            None,
            None,
            payload,
        ));
    }

    /// Put the stored set in force in the gateway's key ring (no-op outside a gateway). A
    /// reload failure is logged: the change is stored, and the watcher retries, since the
    /// keystore's change token moved.
    pub(crate) async fn refresh(&self) {
        if let Some(sync) = &self.sync
            && let Err(e) = sync.reload().await
        {
            tracing::warn!(error = %e, "key change stored, but reloading the key set failed; the keystore watcher retries");
        }
    }

    /// Issue a key.
    ///
    /// # Errors
    /// `Invalid` naming the field; `Store` when the keystore refuses (read-only, corrupt).
    pub async fn issue(&self, req: &IssueRequest) -> Result<IssuedKey, AdminError> {
        self.issue_as(req, None).await
    }

    /// Issue a key on behalf of an authenticated admin, recorded in the audit event.
    ///
    /// # Errors
    /// As [`KeyAdmin::issue`].
    pub async fn issue_as(
        &self,
        req: &IssueRequest,
        by: Option<&AdminIdentity>,
    ) -> Result<IssuedKey, AdminError> {
        validate_request(req)?;
        self.check_key_groups(&req.allowed_models).await?;
        self.sweep().await;
        let now = self.clock.now_us();
        let expires_at = resolve_expiry(
            req.expires_in.as_deref(),
            req.expires_at.as_deref(),
            now,
            "--expires-in",
            "--expires-at",
        )
        .map_err(AdminError::Invalid)?;
        let issued = self.mint(req, now, expires_at);
        self.store.insert(issued.record.clone()).await?;
        self.audit_issued(now, &issued.record, by);
        self.refresh().await;
        Ok(issued)
    }

    /// Every key with its effective status, in keystore order.
    ///
    /// # Errors
    /// `Store` when the keystore cannot be read (a missing keystore lists as empty).
    pub async fn list(&self) -> Result<Vec<KeyView>, AdminError> {
        self.sweep().await;
        let keys = match self.store.load().await {
            Ok(k) => k,
            Err(KeyStoreError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let now = self.clock.now_us();
        Ok(keys
            .into_iter()
            .map(|record| {
                let (effective_status, display_status) = match record.check_active(now) {
                    Ok(()) => ("active", "active"),
                    Err(Inactive::Revoked { .. }) => ("revoked", "revoked"),
                    Err(Inactive::GraceLapsed { .. }) => ("revoked", "expired"),
                    Err(Inactive::Expired { .. }) => ("expired", "expired"),
                };
                KeyView {
                    record,
                    effective_status,
                    display_status,
                }
            })
            .collect())
    }

    /// One key.
    ///
    /// # Errors
    /// `NotFound`, or `Store`.
    pub async fn get(&self, key_id: &str) -> Result<KeyView, AdminError> {
        self.list()
            .await?
            .into_iter()
            .find(|k| k.record.key_id == key_id)
            .ok_or_else(|| AdminError::NotFound(key_id.to_owned()))
    }

    /// Revoke a key now. Idempotent: an already revoked key reports its original time.
    ///
    /// # Errors
    /// `NotFound`, or `Store` (e.g. read-only keystore).
    pub async fn revoke(&self, key_id: &str) -> Result<Revoked, AdminError> {
        self.revoke_as(key_id, None).await
    }

    /// Revoke a key on behalf of an authenticated admin, recorded in the audit event.
    ///
    /// # Errors
    /// As [`KeyAdmin::revoke`].
    pub async fn revoke_as(
        &self,
        key_id: &str,
        by: Option<&AdminIdentity>,
    ) -> Result<Revoked, AdminError> {
        self.sweep().await;
        let now = self.clock.now_us();
        let now_iso = format_iso(now);
        let id = key_id.to_owned();
        let outcome: Arc<Mutex<Option<Revoked>>> = Arc::new(Mutex::new(None));
        let out = Arc::clone(&outcome);
        self.store
            .update(Box::new(move |keys| {
                let Some(k) = keys.iter_mut().find(|k| k.key_id == id) else {
                    return Err(format!("key '{id}' not found in keystore"));
                };
                let result = if k.status == KeyStatus::Revoked {
                    Revoked {
                        key_id: id.clone(),
                        revoked_at: k.revoked_at.clone().unwrap_or_default(),
                        already: true,
                    }
                } else {
                    k.status = KeyStatus::Revoked;
                    k.revoked_at = Some(now_iso.clone());
                    k.grace_period_until = None;
                    Revoked {
                        key_id: id.clone(),
                        revoked_at: now_iso.clone(),
                        already: false,
                    }
                };
                if let Ok(mut slot) = out.lock() {
                    *slot = Some(result);
                }
                Ok(())
            }))
            .await
            .map_err(|e| map_missing(e, key_id))?;
        let result = take(&outcome).ok_or_else(|| AdminError::NotFound(key_id.to_owned()))?;
        if !result.already {
            let change = KeyChange::Revoked {
                key_id: result.key_id.clone(),
            };
            self.audit(
                &change,
                now,
                &KeyRevoked {
                    gateway_key_id: result.key_id.clone(),
                    revoked_at: result.revoked_at.clone(),
                    reason: ADMIN_REVOKE,
                    source: self.source,
                    admin: by.cloned(),
                },
            );
        }
        // Also for a key already revoked in the keystore: the ring may not have caught up
        // with a revoke made elsewhere, and the answer promises the key is refused.
        self.refresh().await;
        Ok(result)
    }

    /// Rotate: mint a successor with the predecessor's scope, caps, rpm, identity and spend
    /// account, and the expiry `expiry` gives it; the predecessor stays valid until
    /// `now + grace_secs` (or its own expiry, whichever comes first).
    ///
    /// # Errors
    /// `Invalid` for a zero grace or a bad expiry; `Conflict` when the key is revoked, lapsed
    /// or expired; `NotFound`; `Store`.
    pub async fn rotate(
        &self,
        key_id: &str,
        grace_secs: u64,
        expiry: RotationExpiry,
    ) -> Result<Rotated, AdminError> {
        self.rotate_as(key_id, grace_secs, expiry, None).await
    }

    /// Rotate a key on behalf of an authenticated admin, recorded in the audit events (the
    /// rotation and the successor's issue).
    ///
    /// # Errors
    /// As [`KeyAdmin::rotate`].
    pub async fn rotate_as(
        &self,
        key_id: &str,
        grace_secs: u64,
        expiry: RotationExpiry,
        by: Option<&AdminIdentity>,
    ) -> Result<Rotated, AdminError> {
        if grace_secs == 0 {
            return Err(AdminError::Invalid(
                "--grace-period must be > 0 (use revoke-key for immediate cutoff)".into(),
            ));
        }
        self.sweep().await;
        let now = self.clock.now_us();
        let grace_us = i64::try_from(grace_secs)
            .ok()
            .and_then(|s| s.checked_mul(1_000_000))
            .ok_or_else(|| AdminError::Invalid("--grace-period is too large".into()))?;
        let grace_until = format_iso(now.saturating_add(grace_us));
        // Mint outside the edit (randomness and ids come from ports); the edit fills in the
        // inherited fields from the predecessor as stored at that moment.
        if let RotationExpiry::ExpiresIn(secs) = expiry {
            metis_domain::keys::expiry_after(now, secs)
                .map_err(|e| AdminError::Invalid(format!("--expires-in: {e}")))?;
        }
        let fresh = self.mint(&IssueRequest::default(), now, None);
        let id = key_id.to_owned();
        let slot: Arc<Mutex<Option<KeyRecord>>> = Arc::new(Mutex::new(None));
        let out = Arc::clone(&slot);
        let successor_template = fresh.record.clone();
        let until = grace_until.clone();
        self.store
            .update(Box::new(move |keys| {
                let Some(old) = keys.iter_mut().find(|k| k.key_id == id) else {
                    return Err(format!("key '{id}' not found in keystore"));
                };
                match old.check_active(now) {
                    Ok(()) => {}
                    Err(Inactive::Revoked { .. }) => {
                        return Err(format!("key '{id}' is revoked; only active keys can be rotated"));
                    }
                    Err(Inactive::GraceLapsed { at }) => {
                        return Err(format!(
                            "key '{id}' expired at {at} (its rotation grace period lapsed); only active keys can be rotated"
                        ));
                    }
                    Err(Inactive::Expired { at }) => {
                        return Err(format!(
                            "key '{id}' expired at {at} (its expires_at passed); only active keys can be rotated"
                        ));
                    }
                }
                old.grace_period_until = Some(until.clone());
                let mut succ = successor_template;
                succ.name = old.name.clone();
                succ.workspace_path = old.workspace_path.clone();
                succ.allowed_models = old.allowed_models.clone();
                succ.daily_cap_usd = old.daily_cap_usd.clone();
                succ.monthly_cap_usd = old.monthly_cap_usd.clone();
                succ.rpm = old.rpm;
                succ.user_id = old.user_id.clone();
                succ.team_id = old.team_id.clone();
                succ.customer_tier = old.customer_tier.clone();
                succ.customer_id = old.customer_id.clone();
                succ.org_id = old.org_id.clone();
                succ.weekly_cap_usd = old.weekly_cap_usd.clone();
                succ.tpm = old.tpm;
                succ.alert_at = old.alert_at.clone();
                succ.spend_account = Some(old.account().to_owned());
                succ.expires_at = expiry.successor_expiry(old, now)?;
                succ.set_rotated_from(&id);
                if let Ok(mut s) = out.lock() {
                    *s = Some(succ.clone());
                }
                keys.push(succ);
                Ok(())
            }))
            .await
            .map_err(|e| match e {
                KeyStoreError::Rejected { message } if message.contains("not found") => {
                    AdminError::NotFound(key_id.to_owned())
                }
                KeyStoreError::Rejected { message } => AdminError::Conflict(message),
                other => AdminError::Store(other),
            })?;
        let successor = take(&slot).ok_or_else(|| AdminError::NotFound(key_id.to_owned()))?;
        let change = KeyChange::Rotated {
            old_key_id: key_id.to_owned(),
            new_key_id: successor.key_id.clone(),
        };
        self.audit(
            &change,
            now,
            &KeyRotated {
                old_gateway_key_id: key_id.to_owned(),
                new_gateway_key_id: successor.key_id.clone(),
                grace_period_until: grace_until.clone(),
                workspace_path: successor.workspace_path.clone(),
                user_id: successor.user_id.clone(),
                team_id: successor.team_id.clone(),
                source: self.source,
                admin: by.cloned(),
            },
        );
        self.audit_issued(now, &successor, by);
        self.refresh().await;
        Ok(Rotated {
            old_key_id: key_id.to_owned(),
            successor: IssuedKey {
                record: successor,
                token: fresh.token,
            },
            grace_period_until: grace_until,
        })
    }

    /// Record lapsed rotation grace periods as revocations (`reason: grace_period_expired`,
    /// `revoked_at` = the grace end). Runs after every admin operation and periodically in
    /// the gateway. Best effort: a read-only keystore is left as it is (the gateway still
    /// refuses lapsed keys at request time).
    pub async fn sweep(&self) -> Vec<String> {
        let now = self.clock.now_us();
        let slot: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::clone(&slot);
        let needs = match self.store.load().await {
            Ok(keys) => keys.iter().any(|k| {
                matches!(k.check_active(now), Err(Inactive::GraceLapsed { .. }))
                    && k.status == KeyStatus::Active
            }),
            Err(_) => false,
        };
        if !needs {
            return Vec::new();
        }
        let result = self
            .store
            .update(Box::new(move |keys| {
                let mut lapsed = Vec::new();
                for k in keys.iter_mut() {
                    if k.status != KeyStatus::Active {
                        continue;
                    }
                    let Some(end) = k
                        .grace_period_until
                        .as_deref()
                        .and_then(|g| parse_iso(g).ok())
                    else {
                        continue;
                    };
                    if now >= end {
                        k.status = KeyStatus::Revoked;
                        k.revoked_at = Some(format_iso(end));
                        lapsed.push((k.key_id.clone(), format_iso(end)));
                    }
                }
                if let Ok(mut s) = out.lock() {
                    *s = lapsed;
                }
                Ok(())
            }))
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "grace sweep skipped");
            return Vec::new();
        }
        let lapsed = match slot.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for (key_id, at) in &lapsed {
            let change = KeyChange::Revoked {
                key_id: key_id.clone(),
            };
            self.audit(
                &change,
                now,
                &KeyRevoked {
                    gateway_key_id: key_id.clone(),
                    revoked_at: at.clone(),
                    reason: GRACE_EXPIRED,
                    source: self.source,
                    admin: None,
                },
            );
        }
        if !lapsed.is_empty() {
            self.refresh().await;
        }
        lapsed.into_iter().map(|(k, _)| k).collect()
    }
}

fn take<T>(slot: &Arc<Mutex<Option<T>>>) -> Option<T> {
    match slot.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    }
}

fn map_missing(e: KeyStoreError, key_id: &str) -> AdminError {
    match e {
        KeyStoreError::Rejected { .. } | KeyStoreError::NotFound { .. } => {
            AdminError::NotFound(key_id.to_owned())
        }
        other => AdminError::Store(other),
    }
}

/// Parse a grace period: bare seconds or `^\d+[smhdw]$`; empty means 24h.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_grace(raw: &str) -> Result<u64, String> {
    if raw.trim().is_empty() {
        return Ok(24 * 3600);
    }
    metis_domain::time::parse_duration_secs(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods_parse() {
        assert_eq!(parse_grace("24h"), Ok(86_400));
        assert_eq!(parse_grace(""), Ok(86_400));
        assert_eq!(parse_grace("90"), Ok(90));
        assert_eq!(parse_grace("2w"), Ok(1_209_600));
        assert!(parse_grace("soon").is_err());
        assert!(parse_grace("5y").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = IssueRequest {
            name: "n".into(),
            workspace: "/w".into(),
            ..IssueRequest::default()
        };
        r.daily_cap_usd = Some("NaN".into());
        assert!(
            validate_request(&r)
                .unwrap_err()
                .to_string()
                .contains("--daily-cap-usd")
        );
        r.daily_cap_usd = Some("0".into());
        assert!(
            validate_request(&r)
                .unwrap_err()
                .to_string()
                .contains("> 0")
        );
        r.daily_cap_usd = None;
        r.user = Some("Bob".into());
        assert!(
            validate_request(&r)
                .unwrap_err()
                .to_string()
                .contains("--user")
        );
        r.user = None;
        r.customer_tier = Some("gold".into());
        assert!(
            validate_request(&r)
                .unwrap_err()
                .to_string()
                .contains("--customer-tier")
        );
        r.customer_tier = None;
        r.rpm = Some(0);
        assert!(
            validate_request(&r)
                .unwrap_err()
                .to_string()
                .contains("--rpm")
        );
    }

    #[test]
    fn caps_are_stored_as_plain_decimals() {
        assert_eq!(normalise_cap(&Some("1e3".into())), Some("1000".into()));
        assert_eq!(normalise_cap(&Some("1.50".into())), Some("1.50".into()));
    }
}
