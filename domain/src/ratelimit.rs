//! Token-bucket rate limiting, client-IP resolution behind trusted proxies, and the
//! key-leak signal. Pure arithmetic over caller-supplied monotonic time (µs).
//!
//! Invariants:
//! - A bucket's capacity is `rpm` tokens and it refills at `rpm / 60` tokens per second; each
//!   request costs one token. A denied request gets `Retry-After` = ceil(seconds until one
//!   token), at least 1.
//! - Memory is bounded: buckets live in LRU maps of fixed capacity; an evicted bucket comes
//!   back full (the only effect of eviction is leniency, never a false deny).
//! - Token limits (tokens per minute, [`TpmLine`]) use the same bucket with an amount: capacity
//!   `tpm`, refill `tpm / 60` per second. A request takes its estimate from every bucket it
//!   belongs to, all or none ([`take_all`]); an estimate larger than the capacity is admitted
//!   when the bucket is full (it could never be covered otherwise) and drives the bucket below
//!   zero. Settlement ([`adjust_all`]) refunds or charges the difference to the actual usage;
//!   a bucket may go negative, so the next request waits until it has refilled.
//! - `X-Forwarded-For` is believed only when the socket peer is a trusted proxy, and is walked
//!   right to left: the first address that is not itself a trusted proxy is the client.

use crate::budgets::{PolicyIndex, ScopeKind};
use crate::keys::KeyRecord;
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

    /// The `Retry-After` seconds (≥ 1) until this bucket, at capacity `tpm`, can cover
    /// `amount`, or `None` when it can now. An amount above the capacity needs a full bucket
    /// (it could never be covered otherwise). Refills to `now_us`.
    pub fn wait_for(&mut self, tpm: u32, amount: u64, now_us: i64) -> Option<u64> {
        if tpm == 0 {
            return Some(60);
        }
        self.refill(tpm, now_us);
        let cap = f64::from(tpm);
        #[expect(
            clippy::cast_precision_loss,
            reason = "token counts are far below 2^52"
        )]
        let need = (amount as f64).min(cap);
        if self.tokens >= need - 1e-9 {
            return None;
        }
        let wait = ((need - self.tokens) / (cap / 60.0) - 1e-9).ceil();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "wait is positive; a deeply negative bucket saturates"
        )]
        let secs = wait as u64;
        Some(secs.max(1))
    }

    /// Debit `delta` tokens (a negative delta refunds), after refilling to `now_us`. The
    /// bucket may go below zero; a refund never lifts it above the capacity.
    pub fn debit(&mut self, tpm: u32, delta: i64, now_us: i64) {
        self.refill(tpm, now_us);
        #[expect(
            clippy::cast_precision_loss,
            reason = "token counts are far below 2^52"
        )]
        let d = delta as f64;
        self.tokens = (self.tokens - d).min(f64::from(tpm));
    }
}

/// One token-per-minute limit a request is subject to: the bucket named `bucket`
/// (`tpm:key:<account>`, `tpm:user:<id>`, `tpm:team:<id>`) at capacity `tpm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmLine {
    pub scope: ScopeKind,
    pub bucket: String,
    pub tpm: u32,
}

impl TpmLine {
    /// The refusal's `scope` in a 429 body: `key_tpm`, `user_tpm`, `team_tpm`.
    #[must_use]
    pub fn scope_name(&self) -> &'static str {
        match self.scope {
            ScopeKind::Key => "key_tpm",
            ScopeKind::User => "user_tpm",
            ScopeKind::Team => "team_tpm",
            ScopeKind::Customer => "customer_tpm",
            ScopeKind::Org => "org_tpm",
        }
    }
}

/// The token limits of `key` (whose spend account is `account`): its own `tpm`, then its
/// user's and team's budget `tpm` from `policies`, in that order (the refusal order). Customer
/// and org budgets carry no token limit. The key's bucket is named after its spend account,
/// so keys sharing one (a rotated key and its successor) share the bucket.
#[must_use]
pub fn tpm_lines(key: &KeyRecord, account: &str, policies: &PolicyIndex) -> Vec<TpmLine> {
    let mut lines = Vec::new();
    if let Some(tpm) = key.tpm.filter(|t| *t > 0) {
        lines.push(TpmLine {
            scope: ScopeKind::Key,
            bucket: format!("tpm:key:{account}"),
            tpm,
        });
    }
    let tags = [
        (ScopeKind::User, key.user_id.as_deref()),
        (ScopeKind::Team, key.team_id.as_deref()),
    ];
    for (scope, id) in tags {
        let Some(id) = id else { continue };
        if let Some(tpm) = policies
            .get(scope, id)
            .and_then(|p| p.tpm)
            .filter(|t| *t > 0)
        {
            lines.push(TpmLine {
                scope,
                bucket: format!("tpm:{}:{id}", scope.as_str()),
                tpm,
            });
        }
    }
    lines
}

/// Take `amount` tokens from every bucket (`buckets[i]` at capacity `tpms[i]`), all or none.
///
/// # Errors
/// `(index, retry_after_secs)` of the bucket that needs the longest wait (the request cannot
/// pass before it; the first such in order on a tie); nothing is taken then.
pub fn take_all(
    buckets: &mut [TokenBucket],
    tpms: &[u32],
    amount: u64,
    now_us: i64,
) -> Result<(), (usize, u64)> {
    let mut refused: Option<(usize, u64)> = None;
    for (i, (b, tpm)) in buckets.iter_mut().zip(tpms).enumerate() {
        if let Some(wait) = b.wait_for(*tpm, amount, now_us)
            && refused.is_none_or(|(_, w)| wait > w)
        {
            refused = Some((i, wait));
        }
    }
    if let Some(r) = refused {
        return Err(r);
    }
    let amount = i64::try_from(amount).unwrap_or(i64::MAX);
    adjust_all(buckets, tpms, amount, now_us);
    Ok(())
}

/// Debit `delta` from every bucket (a negative delta refunds): the settlement of a take to the
/// actual usage.
pub fn adjust_all(buckets: &mut [TokenBucket], tpms: &[u32], delta: i64, now_us: i64) {
    for (b, tpm) in buckets.iter_mut().zip(tpms) {
        b.debit(*tpm, delta, now_us);
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

    /// Take `amount` from the buckets named in `lines` (`(name, tpm)`), all or none (see
    /// [`take_all`]); absent buckets start full.
    ///
    /// # Errors
    /// `(index, retry_after_secs)` of the refusing line.
    pub fn take_amount<Q>(
        &mut self,
        lines: &[(&Q, u32)],
        amount: u64,
        now_us: i64,
    ) -> Result<(), (usize, u64)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (mut buckets, tpms) = self.current(lines, now_us);
        let taken = take_all(&mut buckets, &tpms, amount, now_us);
        if taken.is_ok() {
            self.store(lines, &buckets);
        }
        taken
    }

    /// Debit `delta` (negative: refund) from the buckets named in `lines`.
    pub fn adjust<Q>(&mut self, lines: &[(&Q, u32)], delta: i64, now_us: i64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (mut buckets, tpms) = self.current(lines, now_us);
        adjust_all(&mut buckets, &tpms, delta, now_us);
        self.store(lines, &buckets);
    }

    fn current<Q>(&mut self, lines: &[(&Q, u32)], now_us: i64) -> (Vec<TokenBucket>, Vec<u32>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        lines
            .iter()
            .map(|(name, tpm)| {
                let b = self
                    .buckets
                    .get(*name)
                    .copied()
                    .unwrap_or_else(|| TokenBucket::full(*tpm, now_us));
                (b, *tpm)
            })
            .unzip()
    }

    fn store<Q>(&mut self, lines: &[(&Q, u32)], buckets: &[TokenBucket])
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        for ((name, _), b) in lines.iter().zip(buckets) {
            match self.buckets.get_mut(*name) {
                Some(slot) => *slot = *b,
                None => {
                    self.buckets.put((*name).to_owned(), *b);
                }
            }
        }
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
mod tests;
