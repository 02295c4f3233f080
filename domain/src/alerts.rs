//! Budget alerts that reach a person: the notice a webhook receives (its JSON body) and the
//! audit events recording what became of each delivery.
//!
//! Invariants:
//! - A notice carries ids, tags, amounts and levels only: no token, prompt or secret, so it
//!   can be posted to a third-party receiver and kept in its logs.
//! - `id` is the id of the `quota.alert` event the alert was recorded as: the delivery
//!   events and the receiver's `X-Metis-Delivery` header name it, so an alert can be followed
//!   from the trace to the receiver and back. It is the same on every attempt and every
//!   endpoint (receivers de-duplicate on it).
//! - Field order is declaration order (receivers and audit exports see stable JSON).

use crate::budgets::{ScopeKind, Window, cap_name};
use crate::events::{Actor, Payload, Sensitivity, types};
use crate::keys::KeyRecord;
use crate::spend::Alert;
use crate::time::{Timestamp, format_iso};
use serde::Serialize;

/// The `type` of every notice body (receivers may get other types later).
pub const NOTICE_TYPE: &str = "budget.alert";

/// Who an alert is about: the scope whose cap it measures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NoticeScope {
    /// `key`, `user`, `team`, `customer` or `org`.
    pub kind: ScopeKind,
    /// The key id, user id, team id, customer id or org id.
    pub id: String,
    /// The spend account the cap is measured on (`team:platform`; a key's own account is its
    /// id, or the key it inherited its spend from on rotation).
    pub account: String,
}

/// One budget alert, as posted to every configured webhook (the request body).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertNotice {
    /// The `quota.alert` event id (a ULID); also `X-Metis-Delivery`.
    pub id: String,
    /// Always [`NOTICE_TYPE`].
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the gateway raised the alert (ISO-8601 UTC).
    pub raised_at: String,
    /// The cap: `key_daily`, `team_monthly`, … (see `budgets::cap_name`).
    pub cap: &'static str,
    pub scope: NoticeScope,
    /// `day`, `week` or `month`.
    pub window: &'static str,
    /// The level crossed, in percent of the cap (80, 95, 100 by default).
    pub level_percent: u8,
    /// `warning` (< 95 %), `critical` (< 100 %) or `exhausted` (100 %).
    pub severity: &'static str,
    /// Decimal strings, as in refusals and events.
    pub limit_usd: String,
    pub current_usd: String,
    /// Settled spend / cap when the alert was raised.
    pub ratio: f64,
    /// The key whose request raised it, and that key's tags.
    pub gateway_key_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub customer_id: Option<String>,
    pub org_id: Option<String>,
}

/// The name of a window in notices.
#[must_use]
pub fn window_name(w: Window) -> &'static str {
    match w {
        Window::Day => "day",
        Window::Week => "week",
        Window::Month => "month",
    }
}

impl AlertNotice {
    /// The notice of `alert`, raised by a request with `key` and recorded as the `quota.alert`
    /// event `id` at `raised_at`.
    #[must_use]
    pub fn new(id: String, raised_at: Timestamp, key: &KeyRecord, alert: &Alert) -> Self {
        // A scope account is `<kind>:<id>` (`budgets::scope_account`); a key's is its own.
        let scope_id = match alert.kind {
            ScopeKind::Key => key.key_id.clone(),
            kind => alert
                .account
                .strip_prefix(kind.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                .unwrap_or(&alert.account)
                .to_owned(),
        };
        AlertNotice {
            id,
            kind: NOTICE_TYPE,
            raised_at: format_iso(raised_at),
            cap: cap_name(alert.kind, alert.window),
            scope: NoticeScope {
                kind: alert.kind,
                id: scope_id,
                account: alert.account.to_string(),
            },
            window: window_name(alert.window),
            level_percent: alert.level,
            severity: alert.severity,
            limit_usd: usd(alert.limit_usd),
            current_usd: usd(alert.current_usd),
            ratio: (alert.ratio * 10_000.0).round() / 10_000.0,
            gateway_key_id: Some(key.key_id.clone()),
            user_id: key.user_id.clone(),
            team_id: key.team_id.clone(),
            customer_id: key.customer_id.clone(),
            org_id: key.org_id.clone(),
        }
    }
}

/// USD amount as a decimal string (up to 6 places, at least 2), as in `quota.alert`.
#[must_use]
pub fn usd(x: f64) -> String {
    let s = format!("{x:.6}");
    let trimmed = s.trim_end_matches('0');
    let decimals = trimmed.split_once('.').map_or(0, |(_, d)| d.len());
    if decimals < 2 {
        format!("{x:.2}")
    } else {
        trimmed.to_owned()
    }
}

/// Why an alert did not reach an endpoint (`reason` of `quota.alert_undelivered`).
pub mod undelivered {
    /// Every attempt failed (connect error, timeout, 408/429/5xx) up to the attempt limit.
    pub const GAVE_UP: &str = "gave_up";
    /// The receiver answered a 4xx other than 408/429: retrying the same body cannot help.
    pub const REJECTED: &str = "rejected";
    /// The delivery queue was full: the oldest pending alert made room for a newer one.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The gateway shut down before the delivery finished (the drain bound passed).
    pub const SHUTDOWN: &str = "shutdown";
}

/// An alert reached one webhook endpoint (a 2xx answer).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertDelivered {
    /// The `quota.alert` event id (`X-Metis-Delivery`).
    pub alert_id: String,
    pub cap: &'static str,
    pub scope_kind: ScopeKind,
    pub scope_id: String,
    pub level_percent: u8,
    pub severity: &'static str,
    /// The endpoint without credentials, path or query: `#1 https://hooks.example.com`.
    pub endpoint: String,
    /// Attempts made, the successful one included.
    pub attempts: u32,
    pub status: u16,
    pub gateway_key_id: Option<String>,
}

impl Payload for AlertDelivered {
    const TYPE: &'static str = types::QUOTA_ALERT_DELIVERED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// An alert that did not reach one webhook endpoint: given up, rejected, or dropped.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertUndelivered {
    pub alert_id: String,
    pub cap: &'static str,
    pub scope_kind: ScopeKind,
    pub scope_id: String,
    pub level_percent: u8,
    pub severity: &'static str,
    pub endpoint: String,
    /// One of [`undelivered`].
    pub reason: &'static str,
    /// Attempts made (0 for an alert dropped before its first attempt).
    pub attempts: u32,
    /// The last attempt's failure (`status 503`, `timeout after 10s`, `connect error`);
    /// never a URL or the response body.
    pub last_error: Option<String>,
    pub gateway_key_id: Option<String>,
}

impl Payload for AlertUndelivered {
    const TYPE: &'static str = types::QUOTA_ALERT_UNDELIVERED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyRecord {
        serde_json::from_value(serde_json::json!({
            "key_id": "gk_a",
            "secret_hash": "00",
            "workspace_path": "/w",
            "status": "active",
            "user_id": "alice",
            "team_id": "platform"
        }))
        .unwrap()
    }

    fn alert(
        kind: ScopeKind,
        window: Window,
        account: &str,
        level: u8,
        limit: f64,
        current: f64,
    ) -> Alert {
        Alert {
            scope: cap_name(kind, window),
            kind,
            window,
            account: account.into(),
            level,
            severity: crate::spend::severity(level),
            limit_usd: limit,
            current_usd: current,
            ratio: current / limit,
        }
    }

    #[test]
    fn a_key_alert_becomes_a_notice_naming_cap_window_level_and_tags() {
        let a = alert(ScopeKind::Key, Window::Month, "gk_a", 95, 10.0, 9.6);
        let n = AlertNotice::new("01ALERT".into(), 1_000_000, &key(), &a);
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["type"], "budget.alert");
        assert_eq!(v["cap"], "key_monthly");
        assert_eq!(v["window"], "month");
        assert_eq!(v["level_percent"], 95);
        assert_eq!(v["severity"], "critical");
        assert_eq!(v["limit_usd"], "10.00");
        assert_eq!(v["current_usd"], "9.60");
        assert_eq!(
            v["scope"],
            serde_json::json!({"kind": "key", "id": "gk_a", "account": "gk_a"})
        );
        assert_eq!(v["team_id"], "platform");
        assert_eq!(v["org_id"], serde_json::Value::Null);
        assert_eq!(v["raised_at"], "1970-01-01T00:00:01+00:00");
        assert_eq!(v["ratio"], 0.96);
    }

    #[test]
    fn a_team_alert_names_its_scope_cap_and_severity() {
        let a = alert(
            ScopeKind::Team,
            Window::Month,
            "team:platform",
            100,
            500.0,
            500.25,
        );
        let n = AlertNotice::new("01T".into(), 0, &key(), &a);
        assert_eq!(n.cap, "team_monthly");
        assert_eq!(n.severity, "exhausted");
        assert_eq!(n.scope.id, "platform");
        assert_eq!(n.scope.account, "team:platform");
        assert_eq!(n.current_usd, "500.25");
        assert_eq!(n.gateway_key_id.as_deref(), Some("gk_a"));
    }
}
