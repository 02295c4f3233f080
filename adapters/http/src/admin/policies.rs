//! The admin API's budget, model-group and stored-route objects.

use super::*;
use metis_domain::routing::{Deployment, StoredRoute, deployment_name};

/// A budget of a user, team, customer or organisation, with the scope's current spend.
#[derive(Object)]
pub struct BudgetObject {
    /// `user`, `team`, `customer` or `org`.
    pub(super) scope: String,
    /// The tag value (`platform` for `--team platform`).
    pub(super) id: String,
    /// Null when the scope has no daily cap.
    #[oai(nullable)]
    pub(super) daily_usd: Option<String>,
    #[oai(nullable)]
    pub(super) weekly_usd: Option<String>,
    #[oai(nullable)]
    pub(super) monthly_usd: Option<String>,
    /// Tokens per minute across the scope's keys; null = no limit.
    #[oai(nullable)]
    pub(super) tpm: Option<u32>,
    /// Alert levels in percent; null = 80, 95, 100.
    #[oai(nullable)]
    pub(super) alert_at: Option<Vec<u8>>,
    /// Models (and `group:NAME` entries) every key of the scope is limited to; null = no
    /// limit at this level.
    #[oai(nullable)]
    pub(super) allowed_models: Option<Vec<String>>,
    #[oai(nullable)]
    pub(super) updated_at: Option<String>,
    /// Spend of the scope's account (`team:platform`) in the current UTC day.
    pub(super) spend_day_usd: f64,
    /// Spend of the scope's account in the current week (from Monday 00:00 UTC).
    pub(super) spend_week_usd: f64,
    /// Spend of the scope's account in the current budget month.
    pub(super) spend_month_usd: f64,
}

impl BudgetObject {
    pub(super) fn of(b: BudgetPolicy, spend: [f64; 3]) -> Self {
        let [spend_day_usd, spend_week_usd, spend_month_usd] = spend;
        BudgetObject {
            scope: b.scope.as_str().to_owned(),
            id: b.id,
            daily_usd: b.daily_usd,
            weekly_usd: b.weekly_usd,
            monthly_usd: b.monthly_usd,
            tpm: b.tpm,
            alert_at: b.alert_at,
            allowed_models: b.allowed_models,
            updated_at: b.updated_at,
            spend_day_usd,
            spend_week_usd,
            spend_month_usd,
        }
    }
}

impl From<BudgetSummary> for BudgetObject {
    fn from(s: BudgetSummary) -> Self {
        BudgetObject::of(
            s.budget,
            [s.spend_day_usd, s.spend_week_usd, s.spend_month_usd],
        )
    }
}

#[derive(Object)]
pub struct BudgetList {
    pub(super) budgets: Vec<BudgetObject>,
}

/// A budget's settings (the whole budget: a setting left out is removed).
#[derive(Object)]
pub struct BudgetBody {
    /// Daily USD cap across the scope's keys (decimal string, > 0; UTC day).
    #[oai(
        nullable,
        validator(
            pattern = r"^([0-9]{0,9}[1-9][0-9]{0,9}(\.[0-9]{1,6})?|[0-9]{0,9}\.[0-9]{0,5}[1-9][0-9]{0,5})$"
        )
    )]
    pub(super) daily_usd: Option<Text>,
    /// Weekly USD cap (week from Monday 00:00 UTC).
    #[oai(
        nullable,
        validator(
            pattern = r"^([0-9]{0,9}[1-9][0-9]{0,9}(\.[0-9]{1,6})?|[0-9]{0,9}\.[0-9]{0,5}[1-9][0-9]{0,5})$"
        )
    )]
    pub(super) weekly_usd: Option<Text>,
    /// Monthly USD cap (month from the gateway's `--budget-month-start-day`).
    #[oai(
        nullable,
        validator(
            pattern = r"^([0-9]{0,9}[1-9][0-9]{0,9}(\.[0-9]{1,6})?|[0-9]{0,9}\.[0-9]{0,5}[1-9][0-9]{0,5})$"
        )
    )]
    pub(super) monthly_usd: Option<Text>,
    /// Tokens per minute (input + output) across the scope's keys.
    #[oai(
        nullable,
        validator(minimum(value = "1"), maximum(value = "4294967295"))
    )]
    pub(super) tpm: Option<u32>,
    /// Alert levels in percent of each cap, strictly increasing, 1-100 (default 80, 95,
    /// 100).
    #[oai(nullable)]
    pub(super) alert_at: Option<Vec<u8>>,
    /// Models (ids, aliases, `group:NAME` of an existing group) every key of the scope is
    /// limited to, on top of each key's own list; absent, null or empty = no limit at this
    /// level.
    #[oai(nullable, validator(pattern = r"\S"))]
    pub(super) allowed_models: Option<Vec<Text>>,
}

/// A named set of models.
#[derive(Object)]
pub struct ModelGroupObject {
    pub(super) name: String,
    /// Canonical model ids or aliases.
    pub(super) models: Vec<String>,
}

impl From<ModelGroup> for ModelGroupObject {
    fn from(g: ModelGroup) -> Self {
        ModelGroupObject {
            name: g.name,
            models: g.models,
        }
    }
}

#[derive(Object)]
pub struct ModelGroupList {
    pub(super) model_groups: Vec<ModelGroupObject>,
}

/// A group's members (replacing the old ones).
#[derive(Object)]
pub struct ModelGroupBody {
    /// Canonical model ids or aliases (at least one; no `group:` entries).
    #[oai(validator(min_items = 1, pattern = r"\S"))]
    pub(super) models: Vec<Text>,
}

pub(super) fn scope_of(raw: &str) -> Result<ScopeKind, AdminError> {
    ScopeKind::parse(raw).map_err(|m| AdminFailure::Invalid(m).into())
}

/// One deployment of a stored route.
#[derive(Object)]
pub struct DeploymentObject {
    pub(super) name: String,
    /// A live provider of this gateway.
    pub(super) provider: String,
    /// The model id sent upstream.
    pub(super) model: String,
    pub(super) weight: u32,
    pub(super) priority: u32,
    #[oai(nullable)]
    pub(super) rpm: Option<u32>,
    #[oai(nullable)]
    pub(super) tpm: Option<u32>,
}

/// A route stored through the admin API.
#[derive(Object)]
pub struct StoredRouteObject {
    pub(super) alias: String,
    pub(super) deployments: Vec<DeploymentObject>,
    #[oai(nullable)]
    pub(super) updated_at: Option<String>,
}

impl From<StoredRoute> for StoredRouteObject {
    fn from(r: StoredRoute) -> Self {
        StoredRouteObject {
            alias: r.alias,
            deployments: r
                .deployments
                .into_iter()
                .map(|d| DeploymentObject {
                    name: d.name,
                    provider: d.provider,
                    model: d.model,
                    weight: d.weight,
                    priority: d.priority,
                    rpm: d.rpm,
                    tpm: d.tpm,
                })
                .collect(),
            updated_at: r.updated_at,
        }
    }
}

/// One deployment to store.
#[derive(Object)]
pub struct DeploymentBody {
    /// Default `provider:model` (`#2`, `#3`… when repeated in the route).
    #[oai(validator(max_length = 128, pattern = r"\S"))]
    pub(super) name: Option<String>,
    #[oai(validator(max_length = 128, pattern = r"\S"))]
    pub(super) provider: String,
    #[oai(validator(max_length = 256, pattern = r"\S"))]
    pub(super) model: String,
    /// Share of traffic inside the priority group (default 1).
    #[oai(validator(minimum(value = "1")))]
    pub(super) weight: Option<u32>,
    /// Lower is tried first (default 0).
    pub(super) priority: Option<u32>,
    #[oai(validator(minimum(value = "1")))]
    pub(super) rpm: Option<u32>,
    #[oai(validator(minimum(value = "1")))]
    pub(super) tpm: Option<u32>,
}

/// A route's deployments (replacing the stored ones).
#[derive(Object)]
pub struct RouteBody {
    #[oai(validator(min_items = 1, max_items = 64))]
    pub(super) deployments: Vec<DeploymentBody>,
}

impl RouteBody {
    /// The deployments, named.
    pub(super) fn deployments(self) -> Vec<Deployment> {
        let mut out: Vec<Deployment> = Vec::with_capacity(self.deployments.len());
        for d in self.deployments {
            let name = deployment_name(d.name.as_deref(), &d.provider, &d.model, &out);
            out.push(Deployment {
                name,
                provider: d.provider,
                model: d.model,
                weight: d.weight.unwrap_or(1),
                priority: d.priority.unwrap_or(0),
                rpm: d.rpm,
                tpm: d.tpm,
            });
        }
        out
    }
}
