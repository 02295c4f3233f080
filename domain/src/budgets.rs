//! Budget scopes (issue 20): the caps, token limits, alert levels and model allow-lists an
//! operator assigns to a user, a team, a customer or an organisation, shared by every key that
//! carries the matching tag (`user_id`, `team_id`, `customer_id`, `org_id`). A key's own caps
//! stay on its record; this module holds the other four levels.
//!
//! Invariants:
//! - A scope is identified by its kind and id; ids follow the key tag rules (`validate_tag`).
//!   At most one policy per (kind, id) in a stored set.
//! - Every scope has its own spend account, named `<kind>:<id>` (`team:platform`); a key's
//!   account keeps its historical name (the key id, or its predecessor's after rotation), and
//!   the `:` that no key id contains keeps the two name spaces apart.
//! - A request belongs to its key's scope and to the scope of every tag the key carries, in
//!   the fixed order key, user, team, customer, org ([`SCOPE_ORDER`]): refusals name the first
//!   level that refused in that order, and a store locks the accounts in their sorted order.
//! - Alert levels are whole percents in 1..=100, strictly increasing, at most
//!   [`MAX_ALERT_LEVELS`]; absent means [`DEFAULT_ALERT_LEVELS`].

use crate::keys::{KeyRecord, validate_cap, validate_tag};
use crate::model_groups::ModelGroup;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A level a budget is assigned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    Key,
    User,
    Team,
    Customer,
    Org,
}

/// The order in which a request's scopes are checked (and refusals named).
pub const SCOPE_ORDER: [ScopeKind; 5] = [
    ScopeKind::Key,
    ScopeKind::User,
    ScopeKind::Team,
    ScopeKind::Customer,
    ScopeKind::Org,
];

impl ScopeKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Key => "key",
            ScopeKind::User => "user",
            ScopeKind::Team => "team",
            ScopeKind::Customer => "customer",
            ScopeKind::Org => "org",
        }
    }

    /// Parse `key|user|team|customer|org`.
    ///
    /// # Errors
    /// A message naming the accepted kinds.
    pub fn parse(raw: &str) -> Result<ScopeKind, String> {
        SCOPE_ORDER
            .into_iter()
            .find(|k| k.as_str() == raw)
            .ok_or_else(|| {
                format!("scope must be one of key, user, team, customer, org, got '{raw}'")
            })
    }

    /// The key field that places a key in this scope (`None` for [`ScopeKind::Key`]).
    #[must_use]
    pub fn tag_field(self) -> Option<&'static str> {
        match self {
            ScopeKind::Key => None,
            ScopeKind::User => Some("user_id"),
            ScopeKind::Team => Some("team_id"),
            ScopeKind::Customer => Some("customer_id"),
            ScopeKind::Org => Some("org_id"),
        }
    }
}

/// A spend window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Day,
    Week,
    Month,
}

/// The name of one cap in refusals, alerts, events and metrics: `team_monthly`, `key_daily`.
#[must_use]
pub fn cap_name(kind: ScopeKind, window: Window) -> &'static str {
    use ScopeKind as K;
    use Window as W;
    match (kind, window) {
        (K::Key, W::Day) => "key_daily",
        (K::Key, W::Week) => "key_weekly",
        (K::Key, W::Month) => "key_monthly",
        (K::User, W::Day) => "user_daily",
        (K::User, W::Week) => "user_weekly",
        (K::User, W::Month) => "user_monthly",
        (K::Team, W::Day) => "team_daily",
        (K::Team, W::Week) => "team_weekly",
        (K::Team, W::Month) => "team_monthly",
        (K::Customer, W::Day) => "customer_daily",
        (K::Customer, W::Week) => "customer_weekly",
        (K::Customer, W::Month) => "customer_monthly",
        (K::Org, W::Day) => "org_daily",
        (K::Org, W::Week) => "org_weekly",
        (K::Org, W::Month) => "org_monthly",
    }
}

/// The spend account of a non-key scope: `<kind>:<id>`.
#[must_use]
pub fn scope_account(kind: ScopeKind, id: &str) -> String {
    format!("{}:{id}", kind.as_str())
}

/// The scopes a key belongs to besides its own, in [`SCOPE_ORDER`]: (kind, id) for every tag
/// the key carries.
pub fn tags_of(key: &KeyRecord) -> impl Iterator<Item = (ScopeKind, &str)> {
    [
        (ScopeKind::User, key.user_id.as_deref()),
        (ScopeKind::Team, key.team_id.as_deref()),
        (ScopeKind::Customer, key.customer_id.as_deref()),
        (ScopeKind::Org, key.org_id.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, id)| id.map(|id| (k, id)))
}

/// Most alert levels per scope.
pub const MAX_ALERT_LEVELS: usize = 8;

/// The alert levels (percent of a cap, on settled spend) when none are configured.
pub const DEFAULT_ALERT_LEVELS: [u8; 3] = [80, 95, 100];

/// Validate alert levels: whole percents in 1..=100, strictly increasing, 1 to
/// [`MAX_ALERT_LEVELS`] of them.
///
/// # Errors
/// A message naming `field` and the offending level.
pub fn validate_alert_levels(field: &str, levels: &[u8]) -> Result<(), String> {
    if levels.is_empty() || levels.len() > MAX_ALERT_LEVELS {
        return Err(format!(
            "{field} needs 1 to {MAX_ALERT_LEVELS} levels, got {}",
            levels.len()
        ));
    }
    for (i, l) in levels.iter().enumerate() {
        if !(1..=100).contains(l) {
            return Err(format!("{field}: {l} is not a percent in 1..=100"));
        }
        if i > 0 && levels[i - 1] >= *l {
            return Err(format!(
                "{field} must be strictly increasing, got {} then {l}",
                levels[i - 1]
            ));
        }
    }
    Ok(())
}

/// One stored budget: the caps, token limit, alert levels and model allow-list of a user,
/// team, customer or organisation. Caps are decimal strings like a key's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetPolicy {
    pub scope: ScopeKind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly_usd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<String>,
    /// Tokens per minute (input + output) across every key of the scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Percent levels of each cap that raise an alert; `None` = [`DEFAULT_ALERT_LEVELS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_at: Option<Vec<u8>>,
    /// Models (and `group:NAME` entries) every key of the scope is limited to, on top of the
    /// key's own list; `None` = no limit at this level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// When the policy was last written (ISO-8601 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl BudgetPolicy {
    /// The name used in messages: `team 'platform'`.
    #[must_use]
    pub fn label(&self) -> String {
        format!("{} '{}'", self.scope.as_str(), self.id)
    }

    /// Validate one policy.
    ///
    /// # Errors
    /// A message naming the scope and the field.
    pub fn validate(&self) -> Result<(), String> {
        let Some(field) = self.scope.tag_field() else {
            return Err(format!(
                "budget for key '{}': a key's caps live on the key (issue-key/update --daily-cap-usd …)",
                self.id
            ));
        };
        let label = self.label();
        validate_tag(field, &self.id).map_err(|e| format!("budget {label}: {e}"))?;
        for (field, cap) in [
            ("daily_usd", &self.daily_usd),
            ("weekly_usd", &self.weekly_usd),
            ("monthly_usd", &self.monthly_usd),
        ] {
            if let Some(c) = cap {
                validate_cap(field, c).map_err(|e| format!("budget {label}: {e}"))?;
            }
        }
        if self.tpm == Some(0) {
            return Err(format!("budget {label}: tpm must be > 0"));
        }
        if let Some(levels) = &self.alert_at {
            validate_alert_levels("alert_at", levels)
                .map_err(|e| format!("budget {label}: {e}"))?;
        }
        if let Some(models) = &self.allowed_models
            && models.iter().any(|m| m.trim().is_empty())
        {
            return Err(format!("budget {label}: allowed_models has a blank entry"));
        }
        if let Some(t) = &self.updated_at {
            crate::time::parse_iso(t).map_err(|e| format!("budget {label}: updated_at: {e}"))?;
        }
        Ok(())
    }
}

/// Everything besides the keys that a key store holds: budgets and model groups. Stored and
/// reloaded with the keys (same store, same version token), so a change reaches every replica
/// with the next key reload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policies {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_groups: Vec<ModelGroup>,
    /// Routes set through the admin API (see [`crate::routing::StoredRoute`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::routing::StoredRoute>,
}

impl Policies {
    /// Validate every budget and group, and that no scope or group name appears twice.
    ///
    /// # Errors
    /// A message naming the first offending entry.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for b in &self.budgets {
            b.validate()?;
            if !seen.insert((b.scope, b.id.as_str())) {
                return Err(format!("budget {} appears twice", b.label()));
            }
        }
        let mut names = std::collections::HashSet::new();
        for g in &self.model_groups {
            g.validate()?;
            if !names.insert(g.name.as_str()) {
                return Err(format!("model group '{}' appears twice", g.name));
            }
        }
        let mut aliases = std::collections::HashSet::new();
        for r in &self.routes {
            crate::routing::validate(&r.alias, &r.deployments)?;
            if !aliases.insert(r.alias.as_str()) {
                return Err(format!("route '{}' appears twice", r.alias));
            }
        }
        Ok(())
    }

    /// The budget of a scope, if one is set.
    #[must_use]
    pub fn budget(&self, scope: ScopeKind, id: &str) -> Option<&BudgetPolicy> {
        self.budgets.iter().find(|b| b.scope == scope && b.id == id)
    }
}

/// Budgets indexed by scope, built once per key reload. Lookups borrow the id (no allocation),
/// since allow-list checks look up each tag of a key on the request path.
#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    by_scope: HashMap<ScopeKind, HashMap<String, BudgetPolicy>>,
}

impl PolicyIndex {
    #[must_use]
    pub fn new(policies: &Policies) -> PolicyIndex {
        let mut by_scope: HashMap<ScopeKind, HashMap<String, BudgetPolicy>> = HashMap::new();
        for b in &policies.budgets {
            by_scope
                .entry(b.scope)
                .or_default()
                .insert(b.id.clone(), b.clone());
        }
        PolicyIndex { by_scope }
    }

    #[must_use]
    pub fn get(&self, scope: ScopeKind, id: &str) -> Option<&BudgetPolicy> {
        self.by_scope.get(&scope)?.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(id: &str) -> BudgetPolicy {
        BudgetPolicy {
            scope: ScopeKind::Team,
            id: id.into(),
            daily_usd: None,
            weekly_usd: None,
            monthly_usd: Some("100".into()),
            tpm: None,
            alert_at: None,
            allowed_models: None,
            updated_at: None,
        }
    }

    #[test]
    fn cap_names_are_distinct_and_follow_kind_and_window() {
        let mut names = std::collections::HashSet::new();
        for k in SCOPE_ORDER {
            for w in [Window::Day, Window::Week, Window::Month] {
                let n = cap_name(k, w);
                assert!(n.starts_with(k.as_str()), "{n}");
                assert!(names.insert(n));
            }
        }
        assert_eq!(cap_name(ScopeKind::Team, Window::Month), "team_monthly");
    }

    #[test]
    fn scope_kinds_round_trip_and_bad_ones_are_named() {
        for k in SCOPE_ORDER {
            assert_eq!(ScopeKind::parse(k.as_str()), Ok(k));
        }
        assert!(ScopeKind::parse("squad").unwrap_err().contains("'squad'"));
    }

    #[test]
    fn alert_levels_must_be_increasing_percents() {
        assert!(validate_alert_levels("alert_at", &DEFAULT_ALERT_LEVELS).is_ok());
        assert!(validate_alert_levels("alert_at", &[]).is_err());
        assert!(
            validate_alert_levels("alert_at", &[0])
                .unwrap_err()
                .contains("0")
        );
        assert!(validate_alert_levels("alert_at", &[101]).is_err());
        assert!(
            validate_alert_levels("alert_at", &[90, 80])
                .unwrap_err()
                .contains("increasing")
        );
        assert!(validate_alert_levels("alert_at", &[1, 2, 3, 4, 5, 6, 7, 8, 9]).is_err());
    }

    #[test]
    fn policies_refuse_duplicates_key_scopes_and_bad_caps() {
        let mut p = Policies {
            budgets: vec![team("platform"), team("data")],
            model_groups: Vec::new(),
            routes: Vec::new(),
        };
        assert!(p.validate().is_ok());
        p.budgets.push(team("platform"));
        assert!(p.validate().unwrap_err().contains("twice"));
        p.budgets.pop();
        let mut bad = team("x");
        bad.monthly_usd = Some("-1".into());
        p.budgets.push(bad);
        assert!(p.validate().unwrap_err().contains("team 'x'"));
        p.budgets.pop();
        let mut key = team("gk_1");
        key.scope = ScopeKind::Key;
        assert!(
            BudgetPolicy::validate(&key)
                .unwrap_err()
                .contains("live on the key")
        );
        let mut zero = team("y");
        zero.tpm = Some(0);
        assert!(zero.validate().unwrap_err().contains("tpm"));
    }

    #[test]
    fn stored_json_uses_lowercase_scope_and_omits_absent_fields() {
        let json = serde_json::to_value(team("platform")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"scope": "team", "id": "platform", "monthly_usd": "100"})
        );
        let back: BudgetPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, team("platform"));
    }

    #[test]
    fn index_finds_by_kind_and_id() {
        let idx = PolicyIndex::new(&Policies {
            budgets: vec![team("platform")],
            model_groups: Vec::new(),
            routes: Vec::new(),
        });
        assert!(idx.get(ScopeKind::Team, "platform").is_some());
        assert!(idx.get(ScopeKind::User, "platform").is_none());
        assert_eq!(scope_account(ScopeKind::Team, "platform"), "team:platform");
    }
}
