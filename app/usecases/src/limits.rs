//! The perimeter checks that run before authentication: per-key and per-IP token buckets,
//! plus the key-leak detector that runs after it.
//!
//! Per-key buckets go through the `KeyRateLimiter` port, so a store shared by replicas can hold
//! a key's limit across a fleet; [`KeyBuckets`] is its in-process implementation. Per-IP
//! buckets protect this process and stay in it. When a shared per-key store does not answer,
//! the request is decided on this process's own buckets (a limit per replica instead of per
//! fleet, counted as `rate_limit` / `local`), so an outage neither refuses every key nor lifts
//! the limit.
//!
//! In-process buckets are sharded LRU maps behind short mutexes (no await while held), so
//! memory stays bounded under millions of distinct keys or addresses and contention stays low.

use crate::token_limits::TokenLimiter;
use metis_domain::ratelimit::{BucketMap, Cidr, LeakDetector, LeakSignal, client_ip};
use metis_ports::admission::{Answer, KeyRateLimiter, StoreUnavailable, Take};
use std::borrow::Borrow;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Rate-limit settings.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Default per-key budget (a key's own `rpm` overrides it).
    pub per_key_rpm: u32,
    pub per_ip_rpm: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Buckets kept per map (LRU beyond that).
    pub max_tracked: usize,
    /// Output tokens a token-limit estimate assumes when the request sets no maximum
    /// (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
    pub tpm_default_output_tokens: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            per_key_rpm: 60,
            per_ip_rpm: 1000,
            trusted_proxies: Vec::new(),
            max_tracked: 100_000,
            tpm_default_output_tokens: DEFAULT_TPM_OUTPUT_TOKENS,
        }
    }
}

/// The default of `--tpm-default-output-tokens`: the output a token-limit estimate assumes
/// when the request names no maximum (the same figure the spend reservation assumes).
pub const DEFAULT_TPM_OUTPUT_TOKENS: u64 = 4096;

const SHARDS: usize = 16;

struct Sharded<K: Hash + Eq> {
    shards: Vec<Mutex<BucketMap<K>>>,
}

impl<K: Hash + Eq> Sharded<K> {
    fn new(total: usize) -> Self {
        let per = total.div_ceil(SHARDS).max(1);
        Sharded {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(BucketMap::new(per)))
                .collect(),
        }
    }

    /// Take from `key`'s bucket; the owned key is made only for a new bucket. A key hashes
    /// to the same shard as its owned form (`Borrow` keeps `Hash` consistent).
    fn try_take<Q>(&self, key: &Q, rpm: u32, now_us: i64) -> Result<(), u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let idx = usize::try_from(h.finish() % SHARDS as u64).unwrap_or(0);
        let Some(shard) = self.shards.get(idx) else {
            return Ok(());
        };
        let mut map = match shard.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.try_take_borrowed(key, rpm, now_us)
    }
}

/// Monotonic µs since `epoch`.
fn micros_since(epoch: Instant) -> i64 {
    i64::try_from(epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
}

/// The in-process per-key buckets: sharded, bounded (LRU), on this process's monotonic clock.
pub struct KeyBuckets {
    buckets: Sharded<String>,
    epoch: Instant,
}

impl KeyBuckets {
    /// Buckets for at most about `max_tracked` tokens.
    #[must_use]
    pub fn new(max_tracked: usize) -> Self {
        KeyBuckets {
            buckets: Sharded::new(max_tracked),
            epoch: Instant::now(),
        }
    }

    /// Take one token now.
    ///
    /// # Errors
    /// `Retry-After` seconds when the bucket is empty.
    pub fn take(&self, bucket: &str, rpm: u32) -> Result<(), u64> {
        self.buckets.try_take(bucket, rpm, micros_since(self.epoch))
    }
}

impl KeyRateLimiter for KeyBuckets {
    fn shared(&self) -> bool {
        false
    }

    fn try_take(&self, bucket: &str, rpm: u32) -> Answer<Result<Take, StoreUnavailable>> {
        Answer::Now(Ok(match self.take(bucket, rpm) {
            Ok(()) => Take::Allowed,
            Err(retry_after_secs) => Take::Denied { retry_after_secs },
        }))
    }
}

/// A denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub scope: &'static str,
    pub rpm: u32,
    pub retry_after_secs: u64,
}

/// What [`Limiter::check`] decided, and whether a shared per-key store failed to answer (the
/// per-key decision was then this process's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub result: Result<(), Denied>,
    pub key_store_unavailable: bool,
}

/// The limiter state of one gateway process.
pub struct Limiter {
    pub config: RateLimitConfig,
    per_key: Arc<dyn KeyRateLimiter>,
    /// This process's own per-key buckets, for when a shared `per_key` does not answer.
    per_key_fallback: Option<KeyBuckets>,
    per_ip: Sharded<IpAddr>,
    leaks: Mutex<LeakDetector>,
    /// Token-per-minute limits (key, user, team); enforced whenever a key has any, whatever
    /// `config.enabled` says (a `tpm` is set explicitly per key or budget).
    pub tokens: TokenLimiter,
    epoch: Instant,
    last_event_sec: AtomicI64,
    suppressed: AtomicU64,
}

impl Limiter {
    /// A limiter taking per-key tokens from `per_key` (the in-process [`KeyBuckets`], or a
    /// store shared by replicas).
    #[must_use]
    pub fn new(config: RateLimitConfig, per_key: Arc<dyn KeyRateLimiter>) -> Self {
        let max = config.max_tracked;
        Limiter {
            per_key_fallback: per_key.shared().then(|| KeyBuckets::new(max)),
            per_key,
            per_ip: Sharded::new(max),
            leaks: Mutex::new(LeakDetector::new(max.min(100_000))),
            tokens: TokenLimiter::in_process(max),
            config,
            epoch: Instant::now(),
            last_event_sec: AtomicI64::new(i64::MIN),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Keep token buckets in `tokens` (instead of this process).
    #[must_use]
    pub fn with_tokens(mut self, tokens: TokenLimiter) -> Self {
        self.tokens = tokens;
        self
    }

    /// Monotonic µs since the limiter was built.
    fn now_us(&self) -> i64 {
        micros_since(self.epoch)
    }

    /// The address the per-IP bucket and the leak detector use.
    #[must_use]
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        peer.map(|p| client_ip(p, forwarded_for, &self.config.trusted_proxies))
    }

    /// Spend one token from the per-key bucket (keyed by token hash, at `key_rpm` or the
    /// default) and one from the per-IP bucket. The per-key token is spent even when the
    /// per-IP bucket then denies.
    ///
    /// The result is the first bucket that denied, if any.
    pub async fn check(
        &self,
        token_hash: Option<&str>,
        key_rpm: Option<u32>,
        ip: Option<IpAddr>,
    ) -> Checked {
        let mut checked = Checked {
            result: Ok(()),
            key_store_unavailable: false,
        };
        if !self.config.enabled {
            return checked;
        }
        if let Some(hash) = token_hash {
            let rpm = key_rpm.unwrap_or(self.config.per_key_rpm);
            let taken = match self.per_key.try_take(hash, rpm).get().await {
                Ok(Take::Allowed) => Ok(()),
                Ok(Take::Denied { retry_after_secs }) => Err(retry_after_secs),
                Err(e) => {
                    checked.key_store_unavailable = true;
                    tracing::debug!(error = %e, "per-key rate limit decided on this process's buckets");
                    match &self.per_key_fallback {
                        Some(local) => local.take(hash, rpm),
                        None => Ok(()),
                    }
                }
            };
            if let Err(secs) = taken {
                checked.result = Err(Denied {
                    scope: "per_key",
                    rpm,
                    retry_after_secs: secs,
                });
                return checked;
            }
        }
        if let Some(ip) = ip {
            let rpm = self.config.per_ip_rpm;
            if let Err(secs) = self.per_ip.try_take(&ip, rpm, self.now_us()) {
                checked.result = Err(Denied {
                    scope: "per_ip",
                    rpm,
                    retry_after_secs: secs,
                });
            }
        }
        checked
    }

    /// Whether a denial event should be written now (at most one per second); returns the
    /// number of denials folded into it.
    pub fn sample_denial(&self) -> Option<u64> {
        let sec = self.now_us() / 1_000_000;
        let prev = self.last_event_sec.load(Ordering::Relaxed);
        if prev != sec
            && self
                .last_event_sec
                .compare_exchange(prev, sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Record a successful authentication from `ip`; a signal when the key looks leaked.
    pub fn observe_key_ip(&self, key_id: &str, ip: Option<IpAddr>) -> Option<LeakSignal> {
        let ip = ip?;
        let now = self.now_us();
        let mut d = match self.leaks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        d.observe(key_id, ip, now)
    }
}
