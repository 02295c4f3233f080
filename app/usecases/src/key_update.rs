//! Changing the settings of an existing key (`metis gateway update-key`, `PATCH
//! /admin/v1/keys/{id}`): allow-list, caps, limits, alert levels and scope tags.
//!
//! Invariants:
//! - One atomic `KeyStore::update`; the edited record is validated whole (as a loaded key is)
//!   and a `group:NAME` the key would name must exist. Nothing else of the key changes: its
//!   id, token, workspace, status and spend account stay, so spend history is kept.
//! - Revoked (or grace-lapsed, or expired) keys are refused: a change would be invisible.
//! - A change that changes nothing writes and audits nothing; otherwise one
//!   `gateway.key_updated` event names each changed field with its old and new value.

use crate::key_admin::{AdminError, KeyAdmin, KeyView};
use metis_domain::admin::AdminIdentity;
use metis_domain::events::KeyUpdated;
use metis_domain::keys::{Inactive, KeyRecord};
use metis_ports::admin::KeyChanges;
use metis_ports::keys::KeyStoreError;
use std::sync::{Arc, Mutex};

fn apply(k: &mut KeyRecord, c: KeyChanges) {
    let models = match c.allowed_models {
        // An empty list means every model, as at issue.
        metis_ports::admin::Change::Set(m) if m.is_empty() => metis_ports::admin::Change::Clear,
        other => other,
    };
    models.apply(&mut k.allowed_models);
    c.daily_cap_usd.apply(&mut k.daily_cap_usd);
    c.weekly_cap_usd.apply(&mut k.weekly_cap_usd);
    c.monthly_cap_usd.apply(&mut k.monthly_cap_usd);
    c.rpm.apply(&mut k.rpm);
    c.tpm.apply(&mut k.tpm);
    c.alert_at.apply(&mut k.alert_at);
    c.user.apply(&mut k.user_id);
    c.team.apply(&mut k.team_id);
    c.customer.apply(&mut k.customer_id);
    c.org.apply(&mut k.org_id);
}

impl KeyAdmin {
    /// Change settings of an active key; returns the key as stored.
    ///
    /// # Errors
    /// `Invalid` naming the field or the unknown group; `NotFound`; `Conflict` for a key
    /// that is not active; `Store`.
    pub async fn update_key(
        &self,
        key_id: &str,
        changes: KeyChanges,
        by: Option<&AdminIdentity>,
    ) -> Result<KeyView, AdminError> {
        if let metis_ports::admin::Change::Set(models) = &changes.allowed_models {
            if models.iter().any(|m| m.trim().is_empty()) {
                return Err(AdminError::Invalid(
                    "allowed_models: a model is blank".to_owned(),
                ));
            }
            self.check_key_groups(models).await?;
        }
        let now = self.clock.now_us();
        let id = key_id.to_owned();
        let slot: Arc<Mutex<Option<(KeyRecord, KeyRecord)>>> = Arc::new(Mutex::new(None));
        let out = Arc::clone(&slot);
        self.store
            .update(Box::new(move |keys| {
                let Some(k) = keys.iter_mut().find(|k| k.key_id == id) else {
                    return Err(format!("key '{id}' not found in keystore"));
                };
                if let Err(why) = k.check_active(now) {
                    let what = match why {
                        Inactive::Revoked { .. } | Inactive::GraceLapsed { .. } => "revoked",
                        Inactive::Expired { .. } => "expired",
                    };
                    return Err(format!(
                        "conflict: key '{id}' is {what}; only active keys can be updated"
                    ));
                }
                let before = k.clone();
                apply(k, changes);
                for c in [
                    &mut k.daily_cap_usd,
                    &mut k.weekly_cap_usd,
                    &mut k.monthly_cap_usd,
                ] {
                    *c = c.as_ref().map(|v| v.trim().to_owned());
                }
                k.validate()?;
                if let Ok(mut s) = out.lock() {
                    *s = Some((before, k.clone()));
                }
                Ok(())
            }))
            .await
            .map_err(|e| match e {
                KeyStoreError::Rejected { message } if message.contains("not found") => {
                    AdminError::NotFound(key_id.to_owned())
                }
                KeyStoreError::Rejected { message } => match message.strip_prefix("conflict: ") {
                    Some(m) => AdminError::Conflict(m.to_owned()),
                    None => AdminError::Invalid(message),
                },
                other => AdminError::Store(other),
            })?;
        let taken = match slot.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        let (before, after) = taken.ok_or_else(|| AdminError::NotFound(key_id.to_owned()))?;
        let changes = KeyUpdated::diff(&before, &after);
        if !changes.is_empty() {
            self.record(
                now,
                &KeyUpdated {
                    gateway_key_id: after.key_id.clone(),
                    changes,
                    source: self.source,
                    admin: by.cloned(),
                },
            );
            self.refresh().await;
        }
        Ok(KeyView {
            record: after,
            effective_status: "active",
            display_status: "active",
        })
    }
}
