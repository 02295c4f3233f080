//! A service that is never served: the OpenAPI document needs API instances, and the
//! document must not depend on a database. It also stands behind the admin routes when
//! the admin API is disabled (they answer 404 before reaching it). Every call fails.

use super::empty_model_list;
use bytes::Bytes;
use metis_domain::admin::AdminIdentity;
use metis_domain::budgets::{BudgetPolicy, ScopeKind};
use metis_domain::error::GatewayError;
use metis_domain::model_groups::ModelGroup;
use metis_domain::sessions::{SessionNode, SessionRecord};
use metis_ports::admin::{AdminFailure, AdminService};
use metis_ports::admin::{
    BudgetSummary, CreatedKey, KeyChanges, KeySummary, NewKey, RevokeResult, RotateResult,
};
use metis_ports::console::{
    AuditExport, AuditFormat, ChainStatus, OpsService, Overview, SeriesQuery, UsageSeries,
    WindowStats,
};
use metis_ports::gateway::TokenCount;
use metis_ports::gateway::{Admission, GatewayService, InboundMeta, ModelsQuery, Reply};
use metis_ports::trace::{EventRow, UsageGroup, UsageRow};

pub struct NoService;

#[async_trait::async_trait]
impl GatewayService for NoService {
    async fn admit(&self, _meta: InboundMeta) -> Result<Admission, GatewayError> {
        Err(GatewayError::Unavailable {
            message: "document-only service".to_owned(),
        })
    }
    async fn handle(&self, _a: Admission, _b: Bytes) -> Result<Reply, GatewayError> {
        Err(GatewayError::Unavailable {
            message: "document-only service".to_owned(),
        })
    }
    fn models(&self, _a: &Admission, _q: &ModelsQuery) -> Result<Bytes, GatewayError> {
        Ok(empty_model_list())
    }
    async fn count_tokens(&self, _a: Admission, _b: Bytes) -> Result<TokenCount, GatewayError> {
        Err(GatewayError::Unavailable {
            message: "document-only service".to_owned(),
        })
    }
    async fn embeddings(&self, _a: Admission, _b: Bytes) -> Result<Bytes, GatewayError> {
        Err(GatewayError::Unavailable {
            message: "document-only service".to_owned(),
        })
    }
    fn readiness(&self) -> Result<Option<String>, String> {
        Err("document-only service".to_owned())
    }
    fn begin_drain(&self) {}
    fn metrics_text(&self) -> String {
        String::new()
    }
    fn record_http(&self, _r: &str, _m: &str, _s: u16, _sh: &str, _t: f64) {}
}

fn unavailable() -> AdminFailure {
    AdminFailure::Unavailable("document-only service".to_owned())
}

#[async_trait::async_trait]
impl AdminService for NoService {
    async fn create_key(&self, _n: NewKey, _b: &AdminIdentity) -> Result<CreatedKey, AdminFailure> {
        Err(unavailable())
    }
    async fn list_keys(&self) -> Result<Vec<KeySummary>, AdminFailure> {
        Err(unavailable())
    }
    async fn get_key(&self, _k: &str) -> Result<KeySummary, AdminFailure> {
        Err(unavailable())
    }
    async fn revoke_key(&self, _k: &str, _b: &AdminIdentity) -> Result<RevokeResult, AdminFailure> {
        Err(unavailable())
    }
    async fn rotate_key(
        &self,
        _k: &str,
        _g: u64,
        _e: metis_domain::keys::RotationExpiry,
        _b: &AdminIdentity,
    ) -> Result<RotateResult, AdminFailure> {
        Err(unavailable())
    }
    async fn usage(
        &self,
        _s: i64,
        _u: i64,
        _g: UsageGroup,
        _f: Option<(UsageGroup, String)>,
    ) -> Result<Vec<UsageRow>, AdminFailure> {
        Err(unavailable())
    }
    async fn audit(
        &self,
        _s: i64,
        _u: i64,
        _t: Vec<String>,
    ) -> Result<Vec<EventRow>, AdminFailure> {
        Err(unavailable())
    }
    async fn update_key(
        &self,
        _k: &str,
        _c: KeyChanges,
        _by: &AdminIdentity,
    ) -> Result<KeySummary, AdminFailure> {
        Err(unavailable())
    }
    async fn list_budgets(&self) -> Result<Vec<BudgetSummary>, AdminFailure> {
        Err(unavailable())
    }
    async fn put_budget(
        &self,
        _b: BudgetPolicy,
        _by: &AdminIdentity,
    ) -> Result<BudgetSummary, AdminFailure> {
        Err(unavailable())
    }
    async fn delete_budget(
        &self,
        _s: ScopeKind,
        _id: &str,
        _by: &AdminIdentity,
    ) -> Result<BudgetPolicy, AdminFailure> {
        Err(unavailable())
    }
    async fn list_model_groups(&self) -> Result<Vec<ModelGroup>, AdminFailure> {
        Err(unavailable())
    }
    async fn put_model_group(
        &self,
        _n: &str,
        _m: Vec<String>,
        _by: &AdminIdentity,
    ) -> Result<ModelGroup, AdminFailure> {
        Err(unavailable())
    }
    async fn delete_model_group(
        &self,
        _n: &str,
        _by: &AdminIdentity,
    ) -> Result<ModelGroup, AdminFailure> {
        Err(unavailable())
    }
    async fn put_route(
        &self,
        _a: &str,
        _d: Vec<metis_domain::routing::Deployment>,
        _by: &AdminIdentity,
    ) -> Result<metis_domain::routing::StoredRoute, AdminFailure> {
        Err(unavailable())
    }
    async fn delete_route(
        &self,
        _a: &str,
        _by: &AdminIdentity,
    ) -> Result<metis_domain::routing::StoredRoute, AdminFailure> {
        Err(unavailable())
    }
    fn now_us(&self) -> i64 {
        0
    }
}

#[async_trait::async_trait]
impl OpsService for NoService {
    fn routes(&self) -> Vec<metis_ports::console::RouteStatus> {
        Vec::new()
    }

    fn overview(&self) -> Overview {
        Overview {
            generated_at_us: 0,
            uptime_seconds: 0,
            hour: WindowStats::default(),
            day: WindowStats::default(),
            health_window_seconds: 0,
            providers: Vec::new(),
        }
    }
    async fn usage_series(&self, _q: SeriesQuery) -> Result<UsageSeries, AdminFailure> {
        Err(unavailable())
    }
    async fn verify_audit(&self) -> Result<ChainStatus, AdminFailure> {
        Err(unavailable())
    }
    async fn export_audit(
        &self,
        _s: Option<i64>,
        _u: Option<i64>,
        _t: &[String],
        _f: AuditFormat,
    ) -> Result<AuditExport, AdminFailure> {
        Err(unavailable())
    }
    async fn sessions(
        &self,
        _w: Option<&str>,
        _l: u32,
    ) -> Result<Vec<SessionRecord>, AdminFailure> {
        Err(unavailable())
    }
    async fn session_tree(&self, _id: &str) -> Result<SessionNode, AdminFailure> {
        Err(unavailable())
    }
    fn now_us(&self) -> i64 {
        0
    }
}
