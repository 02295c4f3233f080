//! Wiring of the admission guards: which spend admission and which per-key rate limiter the
//! gateway uses, and the outage policy of `--spend-outage`.
//!
//! One node (SQLite, redb): both live in the process (the spend ledger rebuilt from the trace,
//! the per-key buckets beside the per-IP ones). The ledger is seeded per account: each key's
//! spend over the current day, week and budget month (`--budget-month-start-day`), folded
//! into its account and added to the account of every scope tag it carries now
//! (`user:ann`, `team:platform`, …), so user and team budgets start from their real spend. A store shared by replicas (PostgreSQL) hands
//! out its own (`StorageBackend::fleet_admission`): its `SpendAdmission` becomes the store,
//! seeded with the trace's balances for accounts it has never seen, which are also this
//! process's first "last known" ones (what `--spend-outage fail-open` decides on); its
//! `KeyRateLimiter` holds the per-key buckets and its `TokenRateLimiter` the token buckets.

use crate::cli::{ServeArgs, SpendOutage};
use anyhow::Context;
use metis_domain::keys::KeyRecord;
use metis_domain::time::{Calendar, day_start, week_start};
use metis_ports::admission::SpendAdmission;
use metis_ports::metrics::Metrics;
use metis_ports::storage::{FleetAdmission, StorageBackend};
use metis_ports::system::{Background, Clock, IdSource};
use metis_ports::trace::TraceQuery;
use metis_usecases::{
    KeyBuckets, Limiter, OutagePolicy, RateLimitConfig, SpendGuard, SpendGuardParts, SpendLedger,
    TokenLimiter,
};
use std::sync::Arc;

/// The admission guards: the spend guard and, for a shared store, its per-key limiter. Spend
/// is rebuilt from the trace once (the current day, week and budget month, per key, folded
/// into accounts and summed per scope tag); afterwards it is kept incrementally.
///
/// # Errors
/// The trace cannot be read; a shared store cannot be reached or is too new.
pub async fn guards(
    args: &ServeArgs,
    backend: Arc<dyn StorageBackend>,
    trace: &dyn TraceQuery,
    keys: &[KeyRecord],
    (clock, ids): (&dyn Clock, &dyn IdSource),
    (metrics, background): (Arc<dyn Metrics>, Arc<dyn Background>),
) -> anyhow::Result<(Arc<SpendGuard>, Option<FleetAdmission>)> {
    let now = clock.now_us();
    let calendar = Calendar::new(args.budget_month_start_day).map_err(anyhow::Error::msg)?;
    let spent = trace
        .spend_by_key(day_start(now), calendar.month_start(now))
        .await
        .context("cannot read current spend from the trace store")?;
    // The week's spend per key, in `day_usd` (both windows start at the week's start).
    let weekly = trace
        .spend_by_key(week_start(now), week_start(now))
        .await
        .context("cannot read this week's spend from the trace store")?;
    let ledger = SpendLedger::rebuild(&spent, &weekly, keys, calendar, now);
    let seed = ledger.accounts(calendar, now);
    let fleet = tokio::task::spawn_blocking(move || {
        backend.fleet_admission(&seed, RateLimitConfig::default().max_tracked)
    })
    .await
    .context("admission store task failed")?
    .context("cannot open the shared admission store")?;
    let (store, known, shared): (Arc<dyn SpendAdmission>, SpendLedger, _) = match fleet {
        Some(fleet) => (Arc::clone(&fleet.spend), ledger, Some(fleet)),
        // The in-process ledger is never unavailable: it needs no second copy.
        None => (Arc::new(ledger), SpendLedger::default(), None),
    };
    let nonce = ids.secret_bytes();
    let guard = SpendGuard::new(SpendGuardParts {
        store,
        outage: match args.spend_outage {
            SpendOutage::FailClosed => OutagePolicy::FailClosed,
            SpendOutage::FailOpen => OutagePolicy::FailOpen,
        },
        known,
        metrics,
        background,
        process_nonce: u64::from_le_bytes([
            nonce[0], nonce[1], nonce[2], nonce[3], nonce[4], nonce[5], nonce[6], nonce[7],
        ]),
        calendar,
    });
    Ok((guard, shared))
}

/// The rate limiter of `--rate-limit…` and the token limits, with per-key and token buckets
/// in `shared` (a fleet store) or in the process.
#[must_use]
pub fn limiter(
    args: &ServeArgs,
    shared: Option<FleetAdmission>,
    background: Arc<dyn Background>,
) -> Arc<Limiter> {
    let config = RateLimitConfig {
        enabled: args.rate_limit,
        per_key_rpm: args.rate_limit_per_key_rpm,
        per_ip_rpm: args.rate_limit_per_ip_rpm,
        trusted_proxies: args.trusted_proxy.clone(),
        tpm_default_output_tokens: args.tpm_default_output_tokens,
        ..RateLimitConfig::default()
    };
    let max = config.max_tracked;
    match shared {
        Some(fleet) => Arc::new(
            Limiter::new(config, fleet.per_key).with_tokens(TokenLimiter::over(
                fleet.tokens,
                background,
                max,
            )),
        ),
        None => Arc::new(Limiter::new(config, Arc::new(KeyBuckets::new(max)))),
    }
}
