//! The perimeter checks that run before authentication: per-key and per-IP token buckets,
//! plus the key-leak detector that runs after it.
//!
//! Buckets are sharded LRU maps behind short mutexes (no await while held), so memory stays
//! bounded under millions of distinct keys or addresses and contention stays low.

use metis_domain::ratelimit::{BucketMap, Cidr, LeakDetector, LeakSignal, client_ip};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            per_key_rpm: 60,
            per_ip_rpm: 1000,
            trusted_proxies: Vec::new(),
            max_tracked: 100_000,
        }
    }
}

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

    fn try_take(&self, key: K, rpm: u32, now_us: i64) -> Result<(), u64> {
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
        map.try_take(key, rpm, now_us)
    }
}

/// A denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub scope: &'static str,
    pub rpm: u32,
    pub retry_after_secs: u64,
}

/// The limiter state of one gateway process.
pub struct Limiter {
    pub config: RateLimitConfig,
    per_key: Sharded<String>,
    per_ip: Sharded<IpAddr>,
    leaks: Mutex<LeakDetector>,
    epoch: Instant,
    last_event_sec: AtomicI64,
    suppressed: AtomicU64,
}

impl Limiter {
    #[must_use]
    pub fn new(config: RateLimitConfig) -> Self {
        let max = config.max_tracked;
        Limiter {
            per_key: Sharded::new(max),
            per_ip: Sharded::new(max),
            leaks: Mutex::new(LeakDetector::new(max.min(100_000))),
            config,
            epoch: Instant::now(),
            last_event_sec: AtomicI64::new(i64::MIN),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Monotonic µs since the limiter was built.
    fn now_us(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
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
    /// # Errors
    /// The first bucket that denied.
    pub fn check(
        &self,
        token_hash: Option<&str>,
        key_rpm: Option<u32>,
        ip: Option<IpAddr>,
    ) -> Result<(), Denied> {
        if !self.config.enabled {
            return Ok(());
        }
        let now = self.now_us();
        if let Some(hash) = token_hash {
            let rpm = key_rpm.unwrap_or(self.config.per_key_rpm);
            self.per_key
                .try_take(hash.to_owned(), rpm, now)
                .map_err(|secs| Denied {
                    scope: "per_key",
                    rpm,
                    retry_after_secs: secs,
                })?;
        }
        if let Some(ip) = ip {
            let rpm = self.config.per_ip_rpm;
            self.per_ip.try_take(ip, rpm, now).map_err(|secs| Denied {
                scope: "per_ip",
                rpm,
                retry_after_secs: secs,
            })?;
        }
        Ok(())
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
