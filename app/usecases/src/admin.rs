//! The admin API use case: key lifecycle (delegated to [`KeyAdmin`]), usage rollups and audit
//! export over the trace store, with spend taken from the spend admission (the in-process
//! ledger, or the store shared by the fleet).
//!
//! Reads see the caller's own writes: usage and audit reads first flush the trace writer, so
//! an audit export right after a revoke shows the revoke (the writer batches events for a few
//! milliseconds before committing them).

use crate::key_admin::KeyView;
use crate::spend::SpendGuard;
use crate::{AdminError, KeyAdmin};
use async_trait::async_trait;
use metis_domain::admin::AdminIdentity;
use metis_domain::audit::AUDIT_TYPES;
use metis_domain::budgets::{BudgetPolicy, ScopeKind, scope_account};
use metis_domain::keys::RotationExpiry;
use metis_domain::model_groups::ModelGroup;
use metis_ports::admin::{
    AdminFailure, AdminService, BudgetSummary, CreatedKey, KeyChanges, KeySummary, NewKey,
    RevokeResult, RotateResult,
};
use metis_ports::keys::KeyStoreError;
use metis_ports::system::Clock;
use metis_ports::trace::{EventRow, EventSink, TraceQuery, UsageGroup, UsageRow};
use std::sync::Arc;

/// Implements [`AdminService`].
pub struct AdminFacade {
    keys: Arc<KeyAdmin>,
    query: Arc<dyn TraceQuery>,
    sink: Arc<dyn EventSink>,
    spend: Arc<SpendGuard>,
    clock: Arc<dyn Clock>,
    /// Checks that a stored route's deployments name live providers.
    router: Arc<crate::routing::Router>,
}

impl AdminFacade {
    #[must_use]
    pub fn new(
        keys: Arc<KeyAdmin>,
        query: Arc<dyn TraceQuery>,
        sink: Arc<dyn EventSink>,
        spend: Arc<SpendGuard>,
        clock: Arc<dyn Clock>,
        router: Arc<crate::routing::Router>,
    ) -> Self {
        AdminFacade {
            keys,
            query,
            sink,
            spend,
            clock,
            router,
        }
    }

    /// Commit every event emitted so far before a read. A writer that cannot commit is
    /// logged, and the read goes on over what is committed.
    async fn settle(&self) {
        if let Err(e) = self.sink.flush().await {
            tracing::warn!(error = %e, "trace writer flush before an admin read failed");
        }
    }

    async fn summary(&self, v: KeyView) -> KeySummary {
        let spend = self
            .spend
            .balance(v.record.account(), self.clock.now_us())
            .await;
        KeySummary {
            record: v.record,
            effective_status: v.effective_status,
            spend_day_usd: spend.day_usd,
            spend_week_usd: spend.week_usd,
            spend_month_usd: spend.month_usd,
        }
    }

    async fn budget_summary(&self, budget: BudgetPolicy) -> BudgetSummary {
        let spend = self
            .spend
            .balance(
                &scope_account(budget.scope, &budget.id),
                self.clock.now_us(),
            )
            .await;
        BudgetSummary {
            budget,
            spend_day_usd: spend.day_usd,
            spend_week_usd: spend.week_usd,
            spend_month_usd: spend.month_usd,
        }
    }
}

fn failure(e: AdminError) -> AdminFailure {
    match e {
        AdminError::Invalid(m) => AdminFailure::Invalid(m),
        AdminError::NotFound(id) => AdminFailure::NotFound(format!("key '{id}' not found")),
        AdminError::Missing(m) => AdminFailure::NotFound(m),
        AdminError::Conflict(m) => AdminFailure::Conflict(m),
        AdminError::Store(KeyStoreError::ReadOnly { location, message }) => {
            AdminFailure::ReadOnly(format!(
                "keystore {location} is read-only ({message}); issue keys where it is writable, or run the gateway with --keystore store"
            ))
        }
        AdminError::Store(e) => AdminFailure::Unavailable(e.to_string()),
    }
}

fn check_window(since_us: i64, until_us: i64) -> Result<(), AdminFailure> {
    if since_us >= until_us {
        return Err(AdminFailure::Invalid(
            "the window is empty: 'since' must be before 'until'".to_owned(),
        ));
    }
    Ok(())
}

#[async_trait]
impl AdminService for AdminFacade {
    async fn create_key(
        &self,
        new: NewKey,
        by: &AdminIdentity,
    ) -> Result<CreatedKey, AdminFailure> {
        if !new.workspace.starts_with('/') {
            return Err(AdminFailure::Invalid(
                "workspace must be an absolute path".to_owned(),
            ));
        }
        let issued = self.keys.issue_as(&new, Some(by)).await.map_err(failure)?;
        let view = KeyView {
            record: issued.record,
            effective_status: "active",
            display_status: "active",
        };
        Ok(CreatedKey {
            key: self.summary(view).await,
            token: issued.token,
        })
    }

    async fn list_keys(&self) -> Result<Vec<KeySummary>, AdminFailure> {
        let keys = self.keys.list().await.map_err(failure)?;
        let mut out = Vec::with_capacity(keys.len());
        for v in keys {
            out.push(self.summary(v).await);
        }
        Ok(out)
    }

    async fn get_key(&self, key_id: &str) -> Result<KeySummary, AdminFailure> {
        let v = self.keys.get(key_id).await.map_err(failure)?;
        Ok(self.summary(v).await)
    }

    async fn revoke_key(
        &self,
        key_id: &str,
        by: &AdminIdentity,
    ) -> Result<RevokeResult, AdminFailure> {
        let r = self
            .keys
            .revoke_as(key_id, Some(by))
            .await
            .map_err(failure)?;
        Ok(RevokeResult {
            key_id: r.key_id,
            revoked_at: r.revoked_at,
            already_revoked: r.already,
        })
    }

    async fn rotate_key(
        &self,
        key_id: &str,
        grace_secs: u64,
        expiry: RotationExpiry,
        by: &AdminIdentity,
    ) -> Result<RotateResult, AdminFailure> {
        let r = self
            .keys
            .rotate_as(key_id, grace_secs, expiry, Some(by))
            .await
            .map_err(failure)?;
        let view = KeyView {
            record: r.successor.record,
            effective_status: "active",
            display_status: "active",
        };
        Ok(RotateResult {
            old_key_id: r.old_key_id,
            new_key: self.summary(view).await,
            new_token: r.successor.token,
            grace_period_until: r.grace_period_until,
        })
    }

    async fn update_key(
        &self,
        key_id: &str,
        changes: KeyChanges,
        by: &AdminIdentity,
    ) -> Result<KeySummary, AdminFailure> {
        let v = self
            .keys
            .update_key(key_id, changes, Some(by))
            .await
            .map_err(failure)?;
        Ok(self.summary(v).await)
    }

    async fn list_budgets(&self) -> Result<Vec<BudgetSummary>, AdminFailure> {
        let policies = self.keys.policies().await.map_err(failure)?;
        let mut out = Vec::with_capacity(policies.budgets.len());
        for b in policies.budgets {
            out.push(self.budget_summary(b).await);
        }
        Ok(out)
    }

    async fn put_budget(
        &self,
        budget: BudgetPolicy,
        by: &AdminIdentity,
    ) -> Result<BudgetSummary, AdminFailure> {
        let stored = self
            .keys
            .set_budget(budget, Some(by))
            .await
            .map_err(failure)?;
        Ok(self.budget_summary(stored).await)
    }

    async fn delete_budget(
        &self,
        scope: ScopeKind,
        id: &str,
        by: &AdminIdentity,
    ) -> Result<BudgetPolicy, AdminFailure> {
        self.keys
            .delete_budget(scope, id, Some(by))
            .await
            .map_err(failure)
    }

    async fn list_model_groups(&self) -> Result<Vec<ModelGroup>, AdminFailure> {
        Ok(self.keys.policies().await.map_err(failure)?.model_groups)
    }

    async fn put_model_group(
        &self,
        name: &str,
        models: Vec<String>,
        by: &AdminIdentity,
    ) -> Result<ModelGroup, AdminFailure> {
        self.keys
            .set_model_group(name, models, Some(by))
            .await
            .map_err(failure)
    }

    async fn delete_model_group(
        &self,
        name: &str,
        by: &AdminIdentity,
    ) -> Result<ModelGroup, AdminFailure> {
        self.keys
            .delete_model_group(name, Some(by))
            .await
            .map_err(failure)
    }

    async fn put_route(
        &self,
        alias: &str,
        deployments: Vec<metis_domain::routing::Deployment>,
        by: &AdminIdentity,
    ) -> Result<metis_domain::routing::StoredRoute, AdminFailure> {
        if let Some((d, p)) = self.router.missing_provider(&deployments) {
            return Err(AdminFailure::Invalid(format!(
                "deployment '{d}' names provider '{p}', which this gateway does not have (live providers: {})",
                self.router.provider_names().join(", ")
            )));
        }
        self.keys
            .set_route(alias, deployments, Some(by))
            .await
            .map_err(failure)
    }

    async fn delete_route(
        &self,
        alias: &str,
        by: &AdminIdentity,
    ) -> Result<metis_domain::routing::StoredRoute, AdminFailure> {
        self.keys
            .delete_route(alias, Some(by))
            .await
            .map_err(failure)
    }

    async fn usage(
        &self,
        since_us: i64,
        until_us: i64,
        group: UsageGroup,
        filter: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, AdminFailure> {
        check_window(since_us, until_us)?;
        self.settle().await;
        self.query
            .usage(since_us, until_us, group, filter)
            .await
            .map_err(|e| AdminFailure::Unavailable(e.to_string()))
    }

    async fn audit(
        &self,
        since_us: i64,
        until_us: i64,
        types: Vec<String>,
    ) -> Result<Vec<EventRow>, AdminFailure> {
        check_window(since_us, until_us)?;
        if let Some(bad) = types.iter().find(|t| !AUDIT_TYPES.contains(&t.as_str())) {
            return Err(AdminFailure::Invalid(format!(
                "'{bad}' is not an audit event type (one of: {})",
                AUDIT_TYPES.join(", ")
            )));
        }
        self.settle().await;
        self.query
            .audit_events(since_us, until_us, &types)
            .await
            .map_err(|e| AdminFailure::Unavailable(e.to_string()))
    }

    fn now_us(&self) -> i64 {
        self.clock.now_us()
    }
}
