//! Budgets, model groups and stored routes: set, list and delete them in the key store, for
//! the CLI (`metis gateway budget …`, `metis gateway model-group …`) and the admin API alike
//! (routes: the admin API only).
//!
//! Invariants:
//! - Every change is one atomic `KeyStore::update_policies` (no lost update between
//!   concurrent admins; the result is validated before it is written) and is audited after it
//!   is stored (`gateway.budget_set`, `budget_deleted`, `model_group_set`,
//!   `model_group_deleted`, with the `source` of this admin and, through the admin API, the
//!   admin's identity). Setting something to what it already is writes and audits nothing.
//! - A budget's allow-list may only name groups that exist when it is set (a 400 naming the
//!   group), checked against the groups inside the same edit. Deleting a group that keys or
//!   budgets name is allowed: their `group:NAME` entry then allows nothing, never more.
//! - In a gateway the key ring is reloaded before the call returns, so the change is in
//!   force in this process when the admin API answers; other processes pick it up with the
//!   next key reload (the store's change token moved).

use crate::key_admin::{AdminError, KeyAdmin};
use metis_domain::admin::AdminIdentity;
use metis_domain::budgets::{BudgetPolicy, Policies, ScopeKind};
use metis_domain::events::{
    BudgetDeleted, BudgetSet, ModelGroupDeleted, ModelGroupSet, RouteDeleted, RouteSet,
};
use metis_domain::model_groups::{ModelGroup, ModelGroups};
use metis_domain::routing::{Deployment, StoredRoute};
use metis_domain::time::format_iso;
use metis_ports::keys::KeyStoreError;
use std::sync::{Arc, Mutex};

/// What a policy edit found and did, carried out of the edit closure.
#[derive(Debug)]
struct Outcome<T> {
    /// The value before the edit (`None` = there was none).
    before: Option<T>,
    /// The value after it (`None` = deleted).
    after: Option<T>,
}

impl<T> Default for Outcome<T> {
    fn default() -> Self {
        Outcome {
            before: None,
            after: None,
        }
    }
}

fn take<T>(slot: &Arc<Mutex<Outcome<T>>>) -> Outcome<T> {
    match slot.lock() {
        Ok(mut g) => std::mem::take(&mut *g),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    }
}

fn put<T>(slot: &Arc<Mutex<Outcome<T>>>, before: Option<T>, after: Option<T>) {
    if let Ok(mut g) = slot.lock() {
        *g = Outcome { before, after };
    }
}

/// An edit refused by its own check (an unknown group) is the caller's input; everything
/// else is the store's (the input itself is validated before the edit runs).
fn store_err(e: KeyStoreError) -> AdminError {
    match e {
        KeyStoreError::Rejected { message } => AdminError::Invalid(message),
        other => AdminError::Store(other),
    }
}

/// The `group:NAME` entries of `allow` naming no group in `groups`, as a message.
fn unknown_groups(what: &str, allow: &[String], groups: &[ModelGroup]) -> Result<(), String> {
    let index = ModelGroups::new(groups.iter().cloned());
    let unknown = index.unknown_in(allow);
    if unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{what}: unknown model group{} {} (create {} with `metis gateway model-group set` first)",
        if unknown.len() == 1 { "" } else { "s" },
        unknown
            .iter()
            .map(|g| format!("'group:{g}'"))
            .collect::<Vec<_>>()
            .join(", "),
        if unknown.len() == 1 { "it" } else { "them" },
    ))
}

impl KeyAdmin {
    /// The stored budgets and model groups.
    ///
    /// # Errors
    /// `Store` when the key store cannot be read.
    pub async fn policies(&self) -> Result<Policies, AdminError> {
        Ok(self.store.load_policies().await?)
    }

    /// Check that every `group:NAME` entry of a key's allow-list names an existing group.
    ///
    /// # Errors
    /// `Invalid` naming the unknown groups; `Store` when the policies cannot be read.
    pub async fn check_key_groups(&self, allow: &[String]) -> Result<(), AdminError> {
        if !allow
            .iter()
            .any(|m| metis_domain::model_groups::group_ref(m).is_some())
        {
            return Ok(());
        }
        let policies = self.policies().await?;
        // Named as the caller knows the field: the CLI flag or the admin API's field.
        let field = if self.source == metis_domain::events::key_sources::ADMIN_API {
            "allowed_models"
        } else {
            "--allow-model"
        };
        unknown_groups(field, allow, &policies.model_groups).map_err(AdminError::Invalid)
    }

    /// Create or replace the budget of `budget.scope`/`budget.id` (every field as given;
    /// `updated_at` is set now). Returns the stored budget.
    ///
    /// # Errors
    /// `Invalid` naming the field (a key scope, bad caps or levels, an unknown group, a budget
    /// that sets nothing); `Store` when the key store refuses (read-only, corrupt).
    pub async fn set_budget(
        &self,
        mut budget: BudgetPolicy,
        by: Option<&AdminIdentity>,
    ) -> Result<BudgetPolicy, AdminError> {
        if budget.daily_usd.is_none()
            && budget.weekly_usd.is_none()
            && budget.monthly_usd.is_none()
            && budget.tpm.is_none()
            && budget.allowed_models.is_none()
        {
            return Err(AdminError::Invalid(format!(
                "budget {} sets nothing: give a daily, weekly or monthly cap, a tpm limit or allowed models",
                budget.label()
            )));
        }
        let now = self.clock.now_us();
        budget.updated_at = Some(format_iso(now));
        budget.validate().map_err(AdminError::Invalid)?;
        let slot: Arc<Mutex<Outcome<BudgetPolicy>>> = Arc::new(Mutex::new(Outcome::default()));
        let out = Arc::clone(&slot);
        let wanted = budget.clone();
        self.store
            .update_policies(Box::new(move |p| {
                if let Some(allow) = &wanted.allowed_models {
                    unknown_groups(
                        &format!("budget {}: allowed_models", wanted.label()),
                        allow,
                        &p.model_groups,
                    )?;
                }
                let existing = p
                    .budgets
                    .iter()
                    .position(|b| b.scope == wanted.scope && b.id == wanted.id);
                let before = existing.map(|i| p.budgets[i].clone());
                // Unchanged but for the time stamp: keep the stored one, so nothing is written.
                let restamped = before.as_ref().map(|prev| BudgetPolicy {
                    updated_at: prev.updated_at.clone(),
                    ..wanted.clone()
                });
                if before.is_some() && restamped == before {
                    put(&out, before.clone(), before);
                    return Ok(());
                }
                match existing {
                    Some(i) => p.budgets[i] = wanted.clone(),
                    None => p.budgets.push(wanted.clone()),
                }
                put(&out, before, Some(wanted));
                Ok(())
            }))
            .await
            .map_err(store_err)?;
        let Outcome { before, after } = take(&slot);
        let stored = after.unwrap_or(budget);
        if before.as_ref() != Some(&stored) {
            self.record(
                now,
                &BudgetSet {
                    budget: stored.clone(),
                    previous: before,
                    source: self.source,
                    admin: by.cloned(),
                },
            );
            self.refresh().await;
        }
        Ok(stored)
    }

    /// Remove the entry `pick` takes out of the stored policies, under the store's lock.
    ///
    /// # Errors
    /// `Missing(missing)` when `pick` finds nothing (nothing is written); the store's errors.
    async fn remove<T: Send + 'static>(
        &self,
        pick: impl FnOnce(&mut Policies) -> Option<T> + Send + 'static,
        missing: String,
    ) -> Result<T, AdminError> {
        let slot: Arc<Mutex<Outcome<T>>> = Arc::new(Mutex::new(Outcome::default()));
        let out = Arc::clone(&slot);
        let refusal = missing.clone();
        self.store
            .update_policies(Box::new(move |p| {
                let removed = pick(p).ok_or(refusal)?;
                put(&out, Some(removed), None);
                Ok(())
            }))
            .await
            .map_err(|e| match e {
                KeyStoreError::Rejected { message } => AdminError::Missing(message),
                other => store_err(other),
            })?;
        take(&slot).before.ok_or(AdminError::Missing(missing))
    }

    /// Delete the budget of a scope. Returns it as it was.
    ///
    /// # Errors
    /// `Missing` when the scope has no budget; `Store`.
    pub async fn delete_budget(
        &self,
        scope: ScopeKind,
        id: &str,
        by: Option<&AdminIdentity>,
    ) -> Result<BudgetPolicy, AdminError> {
        let now = self.clock.now_us();
        let wanted = id.to_owned();
        let removed = self
            .remove(
                move |p| {
                    let i = p
                        .budgets
                        .iter()
                        .position(|b| b.scope == scope && b.id == wanted)?;
                    Some(p.budgets.remove(i))
                },
                format!("no budget for {} '{id}'", scope.as_str()),
            )
            .await?;
        self.record(
            now,
            &BudgetDeleted {
                budget: removed.clone(),
                source: self.source,
                admin: by.cloned(),
            },
        );
        self.refresh().await;
        Ok(removed)
    }

    /// Create a model group or replace its members. Returns the stored group.
    ///
    /// # Errors
    /// `Invalid` naming the problem (name, blank or nested members); `Store`.
    pub async fn set_model_group(
        &self,
        name: &str,
        models: Vec<String>,
        by: Option<&AdminIdentity>,
    ) -> Result<ModelGroup, AdminError> {
        let group = ModelGroup {
            name: name.to_owned(),
            models: models.into_iter().map(|m| m.trim().to_owned()).collect(),
        };
        group.validate().map_err(AdminError::Invalid)?;
        let now = self.clock.now_us();
        let slot: Arc<Mutex<Outcome<ModelGroup>>> = Arc::new(Mutex::new(Outcome::default()));
        let out = Arc::clone(&slot);
        let wanted = group.clone();
        self.store
            .update_policies(Box::new(move |p| {
                let existing = p.model_groups.iter().position(|g| g.name == wanted.name);
                let before = existing.map(|i| p.model_groups[i].clone());
                match existing {
                    Some(i) => p.model_groups[i] = wanted.clone(),
                    None => p.model_groups.push(wanted.clone()),
                }
                put(&out, before, Some(wanted));
                Ok(())
            }))
            .await
            .map_err(store_err)?;
        let Outcome { before, .. } = take(&slot);
        if before.as_ref() != Some(&group) {
            self.record(
                now,
                &ModelGroupSet {
                    name: group.name.clone(),
                    models: group.models.clone(),
                    previous_models: before.map(|g| g.models),
                    source: self.source,
                    admin: by.cloned(),
                },
            );
            self.refresh().await;
        }
        Ok(group)
    }

    /// Delete a model group. Returns it as it was.
    ///
    /// # Errors
    /// `Missing` when there is no such group; `Store`.
    pub async fn delete_model_group(
        &self,
        name: &str,
        by: Option<&AdminIdentity>,
    ) -> Result<ModelGroup, AdminError> {
        let now = self.clock.now_us();
        let wanted = name.to_owned();
        let removed = self
            .remove(
                move |p| {
                    let i = p.model_groups.iter().position(|g| g.name == wanted)?;
                    Some(p.model_groups.remove(i))
                },
                format!("no model group '{name}'"),
            )
            .await?;
        self.record(
            now,
            &ModelGroupDeleted {
                name: removed.name.clone(),
                models: removed.models.clone(),
                source: self.source,
                admin: by.cloned(),
            },
        );
        self.refresh().await;
        Ok(removed)
    }
}

impl KeyAdmin {
    /// Create a stored route (the admin API's) or replace its deployments. Returns it.
    ///
    /// # Errors
    /// `Invalid` naming the problem (alias, an empty list, weights, ceilings, duplicate
    /// names); `Store`.
    pub async fn set_route(
        &self,
        alias: &str,
        deployments: Vec<Deployment>,
        by: Option<&AdminIdentity>,
    ) -> Result<StoredRoute, AdminError> {
        let now = self.clock.now_us();
        let route = StoredRoute {
            alias: alias.trim().to_owned(),
            deployments,
            updated_at: Some(format_iso(now)),
        };
        metis_domain::routing::validate(&route.alias, &route.deployments)
            .map_err(AdminError::Invalid)?;
        let slot: Arc<Mutex<Outcome<StoredRoute>>> = Arc::new(Mutex::new(Outcome::default()));
        let out = Arc::clone(&slot);
        let wanted = route.clone();
        self.store
            .update_policies(Box::new(move |p| {
                let existing = p.routes.iter().position(|r| r.alias == wanted.alias);
                let before = existing.map(|i| p.routes[i].clone());
                // The same deployments: keep the stored route, so nothing is written.
                if let Some(prev) = before
                    .as_ref()
                    .filter(|b| b.deployments == wanted.deployments)
                {
                    put(&out, Some(prev.clone()), Some(prev.clone()));
                    return Ok(());
                }
                match existing {
                    Some(i) => p.routes[i] = wanted.clone(),
                    None => p.routes.push(wanted.clone()),
                }
                put(&out, before, Some(wanted));
                Ok(())
            }))
            .await
            .map_err(store_err)?;
        let Outcome { before, after } = take(&slot);
        let stored = after.unwrap_or(route);
        if before.as_ref() != Some(&stored) {
            self.record(
                now,
                &RouteSet {
                    alias: stored.alias.clone(),
                    deployments: stored.deployments.clone(),
                    previous: before.map(|r| r.deployments),
                    source: self.source,
                    admin: by.cloned(),
                },
            );
            self.refresh().await;
        }
        Ok(stored)
    }

    /// Delete a stored route (a config-file route of the alias applies again). Returns it.
    ///
    /// # Errors
    /// `Missing` when no route of that alias is stored; `Store`.
    pub async fn delete_route(
        &self,
        alias: &str,
        by: Option<&AdminIdentity>,
    ) -> Result<StoredRoute, AdminError> {
        let now = self.clock.now_us();
        let wanted = alias.to_owned();
        let removed = self
            .remove(
                move |p| {
                    let i = p.routes.iter().position(|r| r.alias == wanted)?;
                    Some(p.routes.remove(i))
                },
                format!("no stored route '{alias}' (routes of the config file change with it)"),
            )
            .await?;
        self.record(
            now,
            &RouteDeleted {
                alias: removed.alias.clone(),
                deployments: removed.deployments.clone(),
                source: self.source,
                admin: by.cloned(),
            },
        );
        self.refresh().await;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_groups_are_named() {
        let groups = vec![ModelGroup {
            name: "cheap".into(),
            models: vec!["p:m".into()],
        }];
        let allow = vec![
            "group:cheap".to_owned(),
            "group:frontier".to_owned(),
            "p:x".to_owned(),
        ];
        let err = unknown_groups("--allow-model", &allow, &groups).unwrap_err();
        assert!(err.contains("'group:frontier'"), "{err}");
        assert!(!err.contains("'group:cheap'"), "{err}");
        assert!(unknown_groups("x", &allow[..1], &groups).is_ok());
    }
}
