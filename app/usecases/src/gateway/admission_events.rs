//! The events and metrics of the admission guards: authentication failures (sampled, the
//! excess folded into one `aggregated` event), rate-limit denials (sampled by the limiter),
//! and spend-cap alerts and refusals (one `quota.exceeded` per account per 10 s), plus the
//! error a refused reservation answers with and the per-key cap ratios a scrape reports.

use super::GatewayCore;
use crate::spend::{Caps, Refusal};
use metis_domain::budgets::ScopeKind;
use metis_domain::canonical::Shape;
use metis_domain::error::GatewayError;
use metis_domain::events::{AuthFailed, QuotaAlert, QuotaExceeded, RateLimited};
use metis_domain::keys::KeyRecord;
use metis_ports::metrics::QuotaRatio;
use std::sync::Mutex;

impl GatewayCore {
    /// Every active capped key's spend over each cap as of `now` (windows roll on read, so an
    /// idle key's ratio drops at midnight). A key sharing its spend account with another
    /// (rotation) reports the account's spend. With a store shared by replicas, the balances
    /// are the ones this process last saw (a scrape does not wait for the store).
    pub(super) fn quota_ratios(&self, index: &crate::keys::KeyIndex, now: i64) -> Vec<QuotaRatio> {
        let mut out = Vec::new();
        for key in index.records() {
            if key.check_active(now).is_err() {
                continue;
            }
            let caps = Caps::of(key);
            if caps.is_empty() {
                continue;
            }
            let spend = self.spend.known_balance(key.account(), now);
            for w in metis_domain::spend::WINDOWS {
                if let Some(cap) = caps.cap(w).filter(|c| *c > 0.0) {
                    out.push(QuotaRatio {
                        key_id: key.key_id.clone(),
                        scope: metis_domain::budgets::cap_name(ScopeKind::Key, w),
                        ratio: spend.spent(w) / cap,
                    });
                }
            }
        }
        out
    }

    pub(super) fn auth_failed(
        &self,
        reason: &'static str,
        shape: Shape,
        token: Option<&str>,
        key: Option<&str>,
    ) {
        self.metrics.auth_failure(reason);
        let (emit_this, summary) = self.auth_sampler.admit(self.clock.now_us());
        if let Some(suppressed) = summary {
            self.auth_failed_summary(shape, suppressed);
        }
        if !emit_this {
            return;
        }
        let session = format!("gw_{}", self.ids.ulid());
        let payload = AuthFailed {
            reason,
            inbound_shape: shape.as_str(),
            token_hash_prefix: token.map(metis_domain::keys::token_fingerprint),
            gateway_key_id: key.map(str::to_owned),
            suppressed: 0,
        };
        self.emit(&session, None, None, &payload);
    }

    /// One event standing for `suppressed` failures beyond the sampling budget.
    pub(super) fn auth_failed_summary(&self, shape: Shape, suppressed: u64) {
        let session = format!("gw_{}", self.ids.ulid());
        let payload = AuthFailed {
            reason: "aggregated",
            inbound_shape: shape.as_str(),
            token_hash_prefix: None,
            gateway_key_id: None,
            suppressed,
        };
        self.emit(&session, None, None, &payload);
    }

    /// Record a spend refusal (cap reached: `quota.exceeded`; store unavailable: counted by
    /// the guard) and the client's error.
    pub(super) fn spend_refused(
        &self,
        key: &KeyRecord,
        shape: Shape,
        refusal: &Refusal,
    ) -> GatewayError {
        match refusal {
            Refusal::Exceeded(e) => {
                // The refusal's own alerts (the 100 % level is raised by the first refusal).
                self.quota_events(key, shape, &e.alerts, Some(e));
                quota_error(e)
            }
            Refusal::Unavailable(_) => GatewayError::SpendStoreUnavailable {
                key_id: key.key_id.clone(),
            },
        }
    }

    pub(super) fn quota_events(
        &self,
        key: &KeyRecord,
        shape: Shape,
        alerts: &[crate::spend::Alert],
        exceeded: Option<&crate::spend::Exceeded>,
    ) {
        let session = format!("gw_{}", self.ids.ulid());
        for a in alerts {
            // `alert_<level>`: levels are whole percents, so the label values stay bounded.
            self.metrics
                .quota_event(a.scope, &format!("alert_{}", a.level));
            let payload = QuotaAlert {
                scope: a.scope,
                severity: a.severity,
                current_usd: usd(a.current_usd),
                limit_usd: usd(a.limit_usd),
                percentage: (a.ratio * 10_000.0).round() / 100.0,
                gateway_key_id: Some(key.key_id.clone()),
                user_id: key.user_id.clone(),
                team_id: key.team_id.clone(),
                level_percent: a.level,
                account: a.account.to_string(),
            };
            let id = self.emit(&session, None, None, &payload);
            // The notice names the event it was recorded as (its delivery id).
            if let Some(alerts) = self.alerts.get() {
                let now = self.clock.now_us();
                alerts.notify(metis_domain::alerts::AlertNotice::new(id, now, key, a));
            }
        }
        let Some(e) = exceeded else { return };
        self.metrics.quota_event(e.scope, "exceeded");
        // At most one event per refusing account (the key's, or the scope's) per 10 s; the rest
        // are counted into the next one.
        let now_s = self.clock.now_us() / 1_000_000;
        let suppressed = {
            let mut m = match self.quota_sampler.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let entry = m.entry(e.account.to_string()).or_insert((i64::MIN, 0));
            if now_s.saturating_sub(entry.0) < 10 {
                entry.1 += 1;
                return;
            }
            entry.0 = now_s;
            std::mem::take(&mut entry.1)
        };
        let payload = QuotaExceeded {
            scope: e.scope,
            current_usd: usd(e.current_usd),
            limit_usd: usd(e.limit_usd),
            inbound_shape: shape.as_str(),
            gateway_key_id: Some(key.key_id.clone()),
            user_id: key.user_id.clone(),
            team_id: key.team_id.clone(),
            suppressed,
        };
        self.emit(&session, None, None, &payload);
    }

    /// A token-limit refusal: its WARN line and, sampled like the rpm denials (at most one
    /// per second), a `gateway.rate_limited` event with `scope` and `tpm`.
    pub(super) fn tokens_limited(
        &self,
        d: crate::token_limits::TokensDenied,
        estimate: u64,
        shape: Shape,
        key: &metis_domain::keys::KeyRecord,
    ) {
        tracing::warn!(
            "rate-limit deny bucket={} tpm={} estimate={} retry_after={}s shape={} key_id={}",
            d.scope,
            d.tpm,
            estimate,
            d.retry_after_secs,
            shape.as_str(),
            key.key_id
        );
        if let Some(suppressed) = self.limiter.sample_denial() {
            let session = format!("gw_{}", self.ids.ulid());
            let payload = RateLimited {
                scope: d.scope,
                rpm: 0,
                tpm: Some(d.tpm),
                retry_after_seconds: d.retry_after_secs,
                inbound_shape: shape.as_str(),
                token_hash_prefix: Some(
                    key.secret_hash
                        .chars()
                        .take(8)
                        .collect::<String>()
                        .to_ascii_lowercase(),
                ),
                client_ip: None,
                suppressed,
            };
            self.emit(&session, None, None, &payload);
        }
    }

    pub(super) fn rate_limited(
        &self,
        d: crate::limits::Denied,
        shape: Shape,
        token: Option<&str>,
        ip: Option<std::net::IpAddr>,
    ) {
        let key_fp = token.map(metis_domain::keys::token_fingerprint);
        match d.scope {
            "per_key" => tracing::warn!(
                "rate-limit deny bucket=per_key rpm={} retry_after={}s shape={} key_fp={}",
                d.rpm,
                d.retry_after_secs,
                shape.as_str(),
                key_fp.as_deref().unwrap_or("-")
            ),
            _ => tracing::warn!(
                "rate-limit deny bucket=per_ip rpm={} retry_after={}s shape={} ip={}",
                d.rpm,
                d.retry_after_secs,
                shape.as_str(),
                ip.map_or_else(|| "-".to_owned(), |i| i.to_string())
            ),
        }
        if let Some(suppressed) = self.limiter.sample_denial() {
            let session = format!("gw_{}", self.ids.ulid());
            let payload = RateLimited {
                scope: d.scope,
                rpm: d.rpm,
                tpm: None,
                retry_after_seconds: d.retry_after_secs,
                inbound_shape: shape.as_str(),
                token_hash_prefix: (d.scope == "per_key").then_some(key_fp).flatten(),
                client_ip: ip.map(|i| i.to_string()),
                suppressed,
            };
            self.emit(&session, None, None, &payload);
        }
    }
}

/// Individual `gateway.auth_failed` events allowed per second; beyond that failures are
/// counted and folded into one `reason: "aggregated"` event (bounded growth under
/// credential stuffing).
const AUTH_FAILED_EVENTS_PER_SEC: u64 = 20;

#[derive(Debug, Default)]
pub(super) struct AuthFailSampler {
    state: Mutex<(i64, u64, u64)>, // (second, emitted this second, suppressed this second)
}

impl AuthFailSampler {
    /// Whether to write this failure individually, and a summary count to write first when
    /// a new second began after suppressions.
    pub(super) fn admit(&self, now_us: i64) -> (bool, Option<u64>) {
        let sec = now_us / 1_000_000;
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut summary = None;
        if st.0 != sec {
            if st.2 > 0 {
                summary = Some(st.2);
            }
            *st = (sec, 0, 0);
        }
        if st.1 < AUTH_FAILED_EVENTS_PER_SEC {
            st.1 += 1;
            (true, summary)
        } else {
            st.2 += 1;
            (false, summary)
        }
    }

    /// Suppressed failures not yet written (for the shutdown flush).
    pub(super) fn take_pending(&self) -> u64 {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::take(&mut st.2)
    }
}

/// USD amount as a decimal string (up to 6 places, at least 2).
fn usd(x: f64) -> String {
    let s = format!("{x:.6}");
    let trimmed = s.trim_end_matches('0');
    let decimals = trimmed.split_once('.').map_or(0, |(_, d)| d.len());
    if decimals < 2 {
        format!("{x:.2}")
    } else {
        trimmed.to_owned()
    }
}

fn quota_error(e: &crate::spend::Exceeded) -> GatewayError {
    GatewayError::QuotaExceeded {
        scope: e.scope,
        limit_usd: usd(e.limit_usd),
        current_usd: usd(e.current_usd),
    }
}
