//! Token-bucket rate limiting, client-IP resolution behind trusted proxies, and the
//! key-leak signal. Pure arithmetic over caller-supplied monotonic time (µs).
//!
//! Invariants:
//! - A bucket's capacity is `rpm` tokens and it refills at `rpm / 60` tokens per second; each
//!   request costs one token. A denied request gets `Retry-After` = ceil(seconds until one
//!   token), at least 1.
//! - Memory is bounded: buckets live in LRU maps of fixed capacity; an evicted bucket comes
//!   back full (the only effect of eviction is leniency, never a false deny).
//! - `X-Forwarded-For` is believed only when the socket peer is a trusted proxy, and is walked
//!   right to left: the first address that is not itself a trusted proxy is the client.

use lru::LruCache;
use std::borrow::Borrow;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroUsize;

/// Microseconds per second, as a float for refill arithmetic.
const US_PER_SEC: f64 = 1_000_000.0;

/// One token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last_us: i64,
}

impl TokenBucket {
    /// A full bucket for `rpm`.
    #[must_use]
    pub fn full(rpm: u32, now_us: i64) -> Self {
        TokenBucket {
            tokens: f64::from(rpm),
            last_us: now_us,
        }
    }

    /// A bucket as stored (e.g. a database row shared by replicas): `tokens` available at
    /// `last_us`. The stored form is exactly [`tokens`](Self::tokens) and
    /// [`last_us`](Self::last_us).
    #[must_use]
    pub fn from_parts(tokens: f64, last_us: i64) -> Self {
        TokenBucket { tokens, last_us }
    }

    /// Tokens held at [`last_us`](Self::last_us) (not refilled).
    #[must_use]
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// When the bucket was last refilled (µs, the caller's clock).
    #[must_use]
    pub fn last_us(&self) -> i64 {
        self.last_us
    }

    /// Tokens currently available (after refilling to `now_us`).
    #[must_use]
    pub fn available(&self, rpm: u32, now_us: i64) -> f64 {
        let mut b = *self;
        b.refill(rpm, now_us);
        b.tokens
    }

    fn refill(&mut self, rpm: u32, now_us: i64) {
        let cap = f64::from(rpm);
        if now_us > self.last_us {
            #[expect(clippy::cast_precision_loss, reason = "µs deltas are far below 2^52")]
            let elapsed = (now_us - self.last_us) as f64 / US_PER_SEC;
            self.tokens = (self.tokens + elapsed * cap / 60.0).min(cap);
            self.last_us = now_us;
        }
        // A capacity lowered since the bucket was made (per-key rpm edit) applies at once.
        self.tokens = self.tokens.min(cap);
    }

    /// Take one token.
    ///
    /// # Errors
    /// The `Retry-After` seconds (≥ 1) when the bucket is empty; no token is taken then.
    pub fn try_take(&mut self, rpm: u32, now_us: i64) -> Result<(), u64> {
        if rpm == 0 {
            return Err(60);
        }
        self.refill(rpm, now_us);
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return Ok(());
        }
        let per_sec = f64::from(rpm) / 60.0;
        // The epsilon keeps float noise (3.0000000000000004) from adding a whole second.
        let wait = ((1.0 - self.tokens) / per_sec - 1e-9).ceil();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "wait is positive and at most 60 s for rpm >= 1"
        )]
        let secs = wait as u64;
        Err(secs.max(1))
    }
}

/// A bounded map of buckets (LRU).
#[derive(Debug)]
pub struct BucketMap<K: Hash + Eq> {
    buckets: LruCache<K, TokenBucket>,
}

impl<K: Hash + Eq> BucketMap<K> {
    /// A map holding at most `capacity` buckets (minimum 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        BucketMap {
            buckets: LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// Take one token from `key`'s bucket, creating it full when absent.
    ///
    /// # Errors
    /// `Retry-After` seconds when denied.
    pub fn try_take(&mut self, key: K, rpm: u32, now_us: i64) -> Result<(), u64> {
        self.buckets
            .get_or_insert_mut(key, || TokenBucket::full(rpm, now_us))
            .try_take(rpm, now_us)
    }

    /// [`try_take`](Self::try_take) by a borrowed key: the owned key is made only when the
    /// bucket is new (no allocation for a key seen before).
    ///
    /// # Errors
    /// `Retry-After` seconds when denied.
    pub fn try_take_borrowed<Q>(&mut self, key: &Q, rpm: u32, now_us: i64) -> Result<(), u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.try_take(rpm, now_us);
        }
        let mut bucket = TokenBucket::full(rpm, now_us);
        let taken = bucket.try_take(rpm, now_us);
        self.buckets.put(key.to_owned(), bucket);
        taken
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `addr/prefix` or a bare address.
    ///
    /// # Errors
    /// A message naming the bad value.
    pub fn parse(raw: &str) -> Result<Cidr, String> {
        let raw = raw.trim();
        let (a, p) = raw.split_once('/').unwrap_or((raw, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("'{raw}' is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("'{raw}' has an invalid prefix length (0..={max})"))?
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses match IPv4 networks).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The client address of a request: the socket peer, or — only when the peer is a trusted
/// proxy — the right-most `X-Forwarded-For` entry that is not itself trusted. Empty and
/// unparseable entries are skipped.
#[must_use]
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    xff.rsplit(',')
        .filter_map(|part| part.trim().parse::<IpAddr>().ok())
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// Detects a key used from many addresses: more than `threshold` distinct IPs within
/// `window_us` raises a signal, at most once per key per `cooldown_us`.
#[derive(Debug)]
pub struct LeakDetector {
    keys: LruCache<String, KeyIps>,
    threshold: usize,
    window_us: i64,
    cooldown_us: i64,
    ips_per_key: usize,
}

/// Addresses seen for one key with their last-seen time. A small vector (most keys have a
/// handful of addresses) capped at `ips_per_key`, so memory is allocated only as addresses
/// appear; when full, the stalest address is replaced.
#[derive(Debug, Default)]
struct KeyIps {
    ips: Vec<(IpAddr, i64)>,
    last_alert_us: Option<i64>,
}

impl KeyIps {
    fn record(&mut self, ip: IpAddr, now_us: i64, cap: usize) {
        if let Some(slot) = self.ips.iter_mut().find(|(a, _)| *a == ip) {
            slot.1 = now_us;
        } else if self.ips.len() < cap {
            self.ips.push((ip, now_us));
        } else if let Some(oldest) = self.ips.iter_mut().min_by_key(|(_, t)| *t) {
            *oldest = (ip, now_us);
        }
    }
}

/// What a leak signal reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakSignal {
    pub distinct_ips: usize,
    pub window_seconds: i64,
}

impl LeakDetector {
    /// Defaults of the original design: 10 IPs per hour, one alert per hour, 256 IPs tracked
    /// per key, `max_keys` keys tracked.
    #[must_use]
    pub fn new(max_keys: usize) -> Self {
        LeakDetector {
            keys: LruCache::new(NonZeroUsize::new(max_keys.max(1)).unwrap_or(NonZeroUsize::MIN)),
            threshold: 10,
            window_us: 3_600 * 1_000_000,
            cooldown_us: 3_600 * 1_000_000,
            ips_per_key: 256,
        }
    }

    /// Record that `key_id` was used from `ip`; returns a signal when it should be raised.
    pub fn observe(&mut self, key_id: &str, ip: IpAddr, now_us: i64) -> Option<LeakSignal> {
        let cap = self.ips_per_key;
        if !self.keys.contains(key_id) {
            self.keys.put(key_id.to_owned(), KeyIps::default());
        }
        let entry = self.keys.get_mut(key_id)?;
        entry.record(ip, now_us, cap);
        let cutoff = now_us - self.window_us;
        let distinct = entry.ips.iter().filter(|(_, seen)| *seen > cutoff).count();
        let cooled = entry
            .last_alert_us
            .is_none_or(|t| now_us - t >= self.cooldown_us);
        if distinct > self.threshold && cooled {
            entry.last_alert_us = Some(now_us);
            return Some(LeakSignal {
                distinct_ips: distinct,
                window_seconds: self.window_us / 1_000_000,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: i64 = 1_000_000;

    #[test]
    fn a_burst_of_rpm_passes_then_denies_with_retry_after() {
        let mut b = TokenBucket::full(60, 0);
        for _ in 0..60 {
            assert!(b.try_take(60, 0).is_ok());
        }
        assert_eq!(b.try_take(60, 0), Err(1));
        assert!(b.try_take(60, SEC).is_ok());
    }

    #[test]
    fn retry_after_is_the_ceiling_of_the_wait() {
        let mut b = TokenBucket::full(6, 0); // one token per 10 s
        for _ in 0..6 {
            b.try_take(6, 0).unwrap();
        }
        assert_eq!(b.try_take(6, 0), Err(10));
        assert_eq!(b.try_take(6, 7 * SEC), Err(3));
    }

    #[test]
    fn evicted_buckets_come_back_full() {
        let mut m = BucketMap::new(2);
        for _ in 0..5 {
            m.try_take("a", 5, 0).unwrap();
        }
        assert!(m.try_take("a", 5, 0).is_err());
        m.try_take("b", 5, 0).unwrap();
        m.try_take("c", 5, 0).unwrap(); // evicts "a"
        assert_eq!(m.len(), 2);
        assert!(m.try_take("a", 5, 0).is_ok());
    }

    #[test]
    fn borrowed_keys_share_the_bucket_of_their_owned_form() {
        let mut m: BucketMap<String> = BucketMap::new(4);
        for _ in 0..3 {
            m.try_take_borrowed("k", 3, 0).unwrap();
        }
        assert_eq!(m.try_take("k".to_owned(), 3, 0), Err(20));
        assert_eq!(m.try_take_borrowed("k", 3, 0), Err(20));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_bucket_round_trips_through_its_stored_parts() {
        let mut b = TokenBucket::full(6, 0);
        b.try_take(6, 0).unwrap();
        let mut stored = TokenBucket::from_parts(b.tokens(), b.last_us());
        assert_eq!(stored, b);
        assert_eq!(stored.try_take(6, 0), b.try_take(6, 0));
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, Some("1.2.3.4"), &trusted), peer);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            client_ip(proxy, Some("1.2.3.4, 198.51.100.7, 10.9.9.9"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, Some("garbage, 10.0.0.1"), &trusted), proxy);
    }

    #[test]
    fn cidr_parsing_names_bad_values() {
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        let v4 = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(v4.contains("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn leak_signal_fires_once_per_hour_above_ten_ips() {
        let mut d = LeakDetector::new(100);
        for i in 0..10u8 {
            assert!(d.observe("gk_1", IpAddr::from([10, 0, 0, i]), 0).is_none());
        }
        let s = d
            .observe("gk_1", IpAddr::from([10, 0, 0, 10]), SEC)
            .unwrap();
        assert_eq!(s.distinct_ips, 11);
        assert!(
            d.observe("gk_1", IpAddr::from([10, 0, 0, 11]), 2 * SEC)
                .is_none()
        );
        assert!(
            d.observe("gk_1", IpAddr::from([10, 0, 1, 0]), 3_601 * SEC)
                .is_none()
        );
    }

    proptest! {
        #[test]
        fn admitted_requests_never_exceed_capacity_plus_refill(
            rpm in 1u32..600,
            gaps in proptest::collection::vec(0i64..2_000_000, 1..400),
        ) {
            let mut b = TokenBucket::full(rpm, 0);
            let mut now = 0i64;
            let mut admitted = 0u64;
            for g in &gaps {
                now += g;
                if b.try_take(rpm, now).is_ok() { admitted += 1; }
            }
            #[expect(clippy::cast_precision_loss, reason = "test bounds")]
            let bound = f64::from(rpm) + now as f64 / 1e6 * f64::from(rpm) / 60.0;
            #[expect(clippy::cast_precision_loss, reason = "test bounds")]
            let admitted_f = admitted as f64;
            prop_assert!(admitted_f <= bound + 1e-6);
        }

        #[test]
        fn retry_after_is_at_least_one_and_sufficient(rpm in 1u32..1000, start in 0i64..10_000_000) {
            let mut b = TokenBucket::full(rpm, start);
            for _ in 0..rpm { b.try_take(rpm, start).unwrap(); }
            let wait = b.try_take(rpm, start).unwrap_err();
            prop_assert!(wait >= 1);
            #[expect(clippy::cast_possible_wrap, reason = "wait <= 60")]
            let later = start + wait as i64 * 1_000_000;
            prop_assert!(b.try_take(rpm, later).is_ok());
        }
    }
}
