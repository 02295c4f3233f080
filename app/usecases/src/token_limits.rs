//! Token limits (tokens per minute, input + output) per key, user and team.
//!
//! A model call takes its estimate — input tokens plus the requested maximum output (or
//! `--tpm-default-output-tokens` when the request sets none) — from every bucket it belongs to,
//! all or none, before it goes upstream; a refusal is a 429 naming the bucket. When the call
//! ends (a response, the end of a stream, a failure, a client that hung up) its [`TpmHold`] is
//! settled to the actual usage: the difference is refunded or charged, so a bucket may go
//! below zero and the next request waits.
//!
//! The buckets go through the `TokenRateLimiter` port: [`TokenBuckets`] in the process, or a
//! store shared by replicas. When a shared store does not answer a take, the request is
//! decided on this process's own buckets (a limit per replica instead of per fleet, counted as
//! `token_limit` / `local`), so an outage neither refuses every key nor lifts the limit; a
//! settlement it does not answer is logged and dropped (leniency of one request's difference).

use metis_domain::ratelimit::{BucketMap, TpmLine};
use metis_ports::admission::{Answer, StoreUnavailable};
use metis_ports::system::Background;
use metis_ports::token_limits::{TokenRateLimiter, TokenTake};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// The in-process token buckets: one bounded LRU map behind one short mutex (a request's
/// buckets must change together, so they share the lock), on this process's monotonic clock.
pub struct TokenBuckets {
    buckets: Mutex<BucketMap<String>>,
    epoch: Instant,
}

impl TokenBuckets {
    /// Buckets for at most `max_tracked` names (LRU beyond that).
    #[must_use]
    pub fn new(max_tracked: usize) -> Self {
        TokenBuckets {
            buckets: Mutex::new(BucketMap::new(max_tracked)),
            epoch: Instant::now(),
        }
    }

    fn now_us(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    fn names(lines: &[TpmLine]) -> Vec<(&str, u32)> {
        lines.iter().map(|l| (l.bucket.as_str(), l.tpm)).collect()
    }

    /// Take `amount` from every line's bucket, all or none.
    #[must_use]
    pub fn take_now(&self, lines: &[TpmLine], amount: u64) -> TokenTake {
        let now = self.now_us();
        let names = Self::names(lines);
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        match map.take_amount(&names, amount, now) {
            Ok(()) => TokenTake::Allowed,
            Err((line, retry_after_secs)) => TokenTake::Denied {
                line,
                retry_after_secs,
            },
        }
    }

    /// Debit `delta` (negative: refund) from every line's bucket.
    pub fn adjust_now(&self, lines: &[TpmLine], delta: i64) {
        let now = self.now_us();
        let names = Self::names(lines);
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        map.adjust(&names, delta, now);
    }
}

impl TokenRateLimiter for TokenBuckets {
    fn shared(&self) -> bool {
        false
    }

    fn take(&self, lines: &[TpmLine], amount: u64) -> Answer<Result<TokenTake, StoreUnavailable>> {
        Answer::Now(Ok(self.take_now(lines, amount)))
    }

    fn adjust(&self, lines: &[TpmLine], delta: i64) -> Answer<Result<(), StoreUnavailable>> {
        self.adjust_now(lines, delta);
        Answer::Now(Ok(()))
    }
}

/// A refusal: the line that refused and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokensDenied {
    /// `key_tpm`, `user_tpm`, `team_tpm`.
    pub scope: &'static str,
    pub tpm: u32,
    pub retry_after_secs: u64,
}

/// The outcome of [`TokenLimiter::take`].
pub struct TokensTaken {
    pub result: Result<Option<TpmHold>, TokensDenied>,
    /// A shared store did not answer: the decision was this process's own.
    pub store_unavailable: bool,
}

/// The token limits of one gateway process: a store (in-process or shared) and, for a shared
/// one, this process's own buckets for when it does not answer.
pub struct TokenLimiter {
    store: Arc<dyn TokenRateLimiter>,
    fallback: Option<Arc<TokenBuckets>>,
    background: Option<Arc<dyn Background>>,
}

impl TokenLimiter {
    /// In-process buckets only.
    #[must_use]
    pub fn in_process(max_tracked: usize) -> Self {
        TokenLimiter {
            store: Arc::new(TokenBuckets::new(max_tracked)),
            fallback: None,
            background: None,
        }
    }

    /// Buckets in `store` (shared by replicas when `store.shared()`); settlements the store
    /// answers later run on `background`.
    #[must_use]
    pub fn over(
        store: Arc<dyn TokenRateLimiter>,
        background: Arc<dyn Background>,
        max_tracked: usize,
    ) -> Self {
        TokenLimiter {
            fallback: store
                .shared()
                .then(|| Arc::new(TokenBuckets::new(max_tracked))),
            store,
            background: Some(background),
        }
    }

    /// Take `amount` from every bucket of `lines` (nothing to do, and no hold, without lines).
    pub async fn take(&self, lines: &Arc<[TpmLine]>, amount: u64) -> TokensTaken {
        let mut taken = TokensTaken {
            result: Ok(None),
            store_unavailable: false,
        };
        if lines.is_empty() {
            return taken;
        }
        let (decision, target): (TokenTake, Arc<dyn TokenRateLimiter>) =
            match self.store.take(lines, amount).get().await {
                Ok(t) => (t, Arc::clone(&self.store)),
                Err(e) => {
                    taken.store_unavailable = true;
                    tracing::debug!(error = %e, "token limit decided on this process's buckets");
                    match &self.fallback {
                        Some(local) => (local.take_now(lines, amount), Arc::clone(local) as _),
                        None => (TokenTake::Allowed, Arc::clone(&self.store)),
                    }
                }
            };
        taken.result = match decision {
            TokenTake::Allowed => Ok(Some(TpmHold {
                target,
                background: self.background.clone(),
                lines: Arc::clone(lines),
                taken: amount,
                done: false,
            })),
            TokenTake::Denied {
                line,
                retry_after_secs,
            } => {
                let l = lines.get(line).or_else(|| lines.first());
                Err(TokensDenied {
                    scope: l.map_or("key_tpm", TpmLine::scope_name),
                    tpm: l.map_or(0, |l| l.tpm),
                    retry_after_secs,
                })
            }
        };
        taken
    }
}

/// The estimate a call took from its token buckets; settled once to the actual usage (a hold
/// dropped unsettled gives the whole estimate back: the call never reached the upstream).
pub struct TpmHold {
    target: Arc<dyn TokenRateLimiter>,
    background: Option<Arc<dyn Background>>,
    lines: Arc<[TpmLine]>,
    taken: u64,
    done: bool,
}

impl std::fmt::Debug for TpmHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmHold")
            .field("lines", &self.lines)
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

impl TpmHold {
    /// Tokens taken on admission.
    #[must_use]
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Replace the estimate by the `actual` tokens (input + output) of the call.
    pub fn settle(&mut self, actual: u64) {
        if self.done {
            return;
        }
        self.done = true;
        let delta = i64::try_from(actual)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(self.taken).unwrap_or(i64::MAX));
        if delta == 0 {
            return;
        }
        match self.target.adjust(&self.lines, delta) {
            Answer::Now(Ok(())) => {}
            Answer::Now(Err(e)) => settle_failed(&e),
            Answer::Later(pending) => match &self.background {
                Some(bg) => bg.spawn(Box::pin(async move {
                    if let Err(e) = pending.await {
                        settle_failed(&e);
                    }
                })),
                None => tracing::warn!("token-limit settlement dropped: nothing to run it on"),
            },
        }
    }
}

fn settle_failed(e: &StoreUnavailable) {
    tracing::warn!(error = %e, "token-limit settlement not applied (the buckets stay at the estimate)");
}

impl Drop for TpmHold {
    fn drop(&mut self) {
        self.settle(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metis_domain::budgets::ScopeKind;

    fn lines(spec: &[(ScopeKind, &str, u32)]) -> Arc<[TpmLine]> {
        spec.iter()
            .map(|(scope, bucket, tpm)| TpmLine {
                scope: *scope,
                bucket: (*bucket).to_owned(),
                tpm: *tpm,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_dropped_hold_refunds_and_a_settled_one_charges_the_difference() {
        let limiter = TokenLimiter::in_process(100);
        let l = lines(&[
            (ScopeKind::Key, "tpm:key:a", 6000),
            (ScopeKind::Team, "tpm:team:t", 1000),
        ]);
        let hold = limiter.take(&l, 1000).await.result.unwrap().unwrap();
        assert_eq!(hold.taken(), 1000);
        // The team bucket is empty: refused, scope named, ~1 token per 60 ms.
        let denied = limiter.take(&l, 100).await.result.unwrap_err();
        assert_eq!((denied.scope, denied.tpm), ("team_tpm", 1000));
        assert!((6..=7).contains(&denied.retry_after_secs), "{denied:?}");
        drop(hold); // never reached the upstream: all back
        let mut hold = limiter.take(&l, 1000).await.result.unwrap().unwrap();
        // The call used 1500: the team bucket is now 500 below zero, so even 1 token waits
        // about 30 s.
        hold.settle(1500);
        let denied = limiter.take(&l, 1).await.result.unwrap_err();
        assert_eq!(denied.scope, "team_tpm");
        assert!((30..=31).contains(&denied.retry_after_secs), "{denied:?}");
    }

    #[tokio::test]
    async fn settling_below_the_estimate_refunds_the_rest() {
        let limiter = TokenLimiter::in_process(100);
        let l = lines(&[(ScopeKind::Key, "tpm:key:a", 1000)]);
        let mut hold = limiter.take(&l, 900).await.result.unwrap().unwrap();
        hold.settle(100);
        // 900 available again (within refill noise).
        assert!(limiter.take(&l, 890).await.result.is_ok());
        assert!(limiter.take(&l, 0).await.result.unwrap().is_some());
    }

    #[tokio::test]
    async fn keys_of_one_team_share_its_bucket_and_the_refusal_names_it() {
        let limiter = TokenLimiter::in_process(100);
        let team = (ScopeKind::Team, "tpm:team:ml", 1200);
        let a = lines(&[(ScopeKind::Key, "tpm:key:a", 100_000), team]);
        let b = lines(&[(ScopeKind::User, "tpm:user:bo", 100_000), team]);
        let _held = limiter.take(&a, 1000).await.result.unwrap().unwrap();
        let denied = limiter.take(&b, 500).await.result.unwrap_err();
        assert_eq!((denied.scope, denied.tpm), ("team_tpm", 1200));
        // 300 missing at 20 per second.
        assert!((14..=15).contains(&denied.retry_after_secs), "{denied:?}");
        // The refusal took nothing: the team's remaining ~200 still cover 150.
        assert!(limiter.take(&b, 150).await.result.is_ok());
    }

    /// A shared store that does not answer takes, and answers adjustments later (counted).
    struct Flaky {
        adjusted: Arc<std::sync::atomic::AtomicI64>,
    }

    impl TokenRateLimiter for Flaky {
        fn shared(&self) -> bool {
            true
        }
        fn take(&self, _: &[TpmLine], _: u64) -> Answer<Result<TokenTake, StoreUnavailable>> {
            Answer::Now(Err(StoreUnavailable {
                store: "token-limit store",
                message: "down".to_owned(),
            }))
        }
        fn adjust(&self, _: &[TpmLine], delta: i64) -> Answer<Result<(), StoreUnavailable>> {
            let adjusted = Arc::clone(&self.adjusted);
            Answer::Later(Box::pin(async move {
                adjusted.fetch_add(delta, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }))
        }
    }

    /// Runs background tasks on the test's runtime.
    struct Spawner;

    impl Background for Spawner {
        fn spawn(&self, task: futures_util::future::BoxFuture<'static, ()>) {
            tokio::spawn(task);
        }
        fn spawn_after(
            &self,
            _: std::time::Duration,
            task: futures_util::future::BoxFuture<'static, ()>,
        ) {
            tokio::spawn(task);
        }
    }

    #[tokio::test]
    async fn a_shared_store_that_does_not_answer_leaves_the_limit_to_this_process() {
        let adjusted = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let store = Arc::new(Flaky {
            adjusted: Arc::clone(&adjusted),
        });
        let limiter = TokenLimiter::over(store, Arc::new(Spawner), 100);
        let l = lines(&[(ScopeKind::Key, "tpm:key:a", 1000)]);
        let taken = limiter.take(&l, 900).await;
        assert!(taken.store_unavailable);
        let mut hold = taken.result.unwrap().unwrap();
        // This process's own bucket holds the limit meanwhile.
        let again = limiter.take(&l, 900).await;
        assert!(again.store_unavailable);
        assert_eq!(again.result.unwrap_err().scope, "key_tpm");
        // The settlement goes to the buckets that took the estimate: the local ones, at once.
        hold.settle(100);
        assert!(limiter.take(&l, 850).await.result.is_ok());
        assert_eq!(adjusted.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_settlement_a_shared_store_answers_later_runs_in_the_background() {
        let adjusted = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let store: Arc<dyn TokenRateLimiter> = Arc::new(Flaky {
            adjusted: Arc::clone(&adjusted),
        });
        let mut hold = TpmHold {
            target: Arc::clone(&store),
            background: Some(Arc::new(Spawner)),
            lines: lines(&[(ScopeKind::Team, "tpm:team:t", 1000)]),
            taken: 700,
            done: false,
        };
        hold.settle(1000);
        drop(hold); // settled once: the drop gives nothing back
        for _ in 0..100 {
            if adjusted.load(std::sync::atomic::Ordering::SeqCst) != 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(adjusted.load(std::sync::atomic::Ordering::SeqCst), 300);
    }

    #[tokio::test]
    async fn no_lines_no_hold() {
        let limiter = TokenLimiter::in_process(10);
        let none: Arc<[TpmLine]> = Arc::from(Vec::new());
        assert!(
            limiter
                .take(&none, 1_000_000)
                .await
                .result
                .unwrap()
                .is_none()
        );
    }
}
