//! Wiring of the admission guards: which spend admission and which per-key rate limiter the
//! gateway uses, and the outage policy of `--spend-outage`.
//!
//! One node: both live in the process (the spend ledger rebuilt from the trace, the per-key
//! buckets beside the per-IP ones). A store shared by replicas plugs in here: its
//! `SpendAdmission` becomes the store, the trace's balances its first "last known" ones (what
//! `--spend-outage fail-open` decides on), and its `KeyRateLimiter` the per-key limiter.

use crate::cli::{ServeArgs, SpendOutage};
use anyhow::Context;
use metis_domain::keys::KeyRecord;
use metis_domain::time::{day_start, month_start};
use metis_ports::admission::{KeyRateLimiter, SpendAdmission};
use metis_ports::metrics::Metrics;
use metis_ports::system::{Background, Clock, IdSource};
use metis_ports::trace::TraceQuery;
use metis_usecases::{
    KeyBuckets, Limiter, OutagePolicy, RateLimitConfig, SpendGuard, SpendGuardParts, SpendLedger,
};
use std::sync::Arc;

/// The spend guard over the in-process ledger. Spend is rebuilt from the trace once (the
/// current UTC day and month, per key, folded into accounts); afterwards it is kept
/// incrementally.
///
/// # Errors
/// The trace cannot be read.
pub async fn spend_guard(
    args: &ServeArgs,
    trace: &dyn TraceQuery,
    keys: &[KeyRecord],
    clock: &dyn Clock,
    ids: &dyn IdSource,
    (metrics, background): (Arc<dyn Metrics>, Arc<dyn Background>),
) -> anyhow::Result<Arc<SpendGuard>> {
    let now = clock.now_us();
    let spent = trace
        .spend_by_key(day_start(now), month_start(now))
        .await
        .context("cannot read current spend from the trace store")?;
    let store: Arc<dyn SpendAdmission> = Arc::new(SpendLedger::rebuild(&spent, keys, now));
    let nonce = ids.secret_bytes();
    Ok(SpendGuard::new(SpendGuardParts {
        store,
        outage: match args.spend_outage {
            SpendOutage::FailClosed => OutagePolicy::FailClosed,
            SpendOutage::FailOpen => OutagePolicy::FailOpen,
        },
        // The in-process ledger is never unavailable: it needs no second copy.
        known: SpendLedger::default(),
        metrics,
        background,
        process_nonce: u64::from_le_bytes([
            nonce[0], nonce[1], nonce[2], nonce[3], nonce[4], nonce[5], nonce[6], nonce[7],
        ]),
    }))
}

/// The rate limiter of `--rate-limit…`, with per-key buckets in the process.
#[must_use]
pub fn limiter(args: &ServeArgs) -> Arc<Limiter> {
    let config = RateLimitConfig {
        enabled: args.rate_limit,
        per_key_rpm: args.rate_limit_per_key_rpm,
        per_ip_rpm: args.rate_limit_per_ip_rpm,
        trusted_proxies: args.trusted_proxy.clone(),
        ..RateLimitConfig::default()
    };
    let per_key: Arc<dyn KeyRateLimiter> = Arc::new(KeyBuckets::new(config.max_tracked));
    Arc::new(Limiter::new(config, per_key))
}
