//! This replica's live counters for `GET /admin/v1/overview`: a rolling per-minute window of
//! requests, errors, latency, tokens and cost over the last day, and each provider's recent
//! health. Fed by [`LiveMetrics`], a [`Metrics`] decorator: every call the gateway already
//! makes to its metrics registry is forwarded unchanged and also counted here.
//!
//! Hot path: a request touches one minute slot through atomics only (no lock, no allocation).
//! A slot is recycled (zeroed) by the first recording of a new minute that maps to it; a
//! sample recorded by another thread in the instant of that reset may be lost, which an
//! overview can afford (it is not billing: spend comes from the trace store).
//!
//! Latency percentiles come from fixed log-scale buckets, four per doubling (bounds
//! `2^(i/4)` ms): a percentile is reported as its bucket's upper bound, at most 19 % above
//! the true value; everything at or under 1 ms is reported as 1 ms.

use metis_domain::canonical::Usage;
use metis_ports::console::{Overview, ProviderHealth, WindowStats};
use metis_ports::metrics::{Attribution, CallLabels, Metrics, QuotaRatio, ScrapeGauges};
use metis_ports::system::Clock;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};

const MINUTE_US: i64 = 60_000_000;
/// Minutes kept: one day.
const DAY_MINUTES: usize = 1440;
const HOUR_MINUTES: i64 = 60;
/// Provider health looks at the last five minutes (the current one included).
const HEALTH_MINUTES: i64 = 5;
/// Latency buckets: bucket `i` holds latencies up to `2^(i/4)` ms; the last one everything
/// above `2^(78/4)` ms (about 13 minutes).
const LATENCY_BUCKETS: usize = 80;
/// Cost is summed in nano-USD (an f64 cannot be added atomically).
const NANO_PER_USD: f64 = 1e9;
const NEVER: i64 = i64::MIN;

/// The provider routes whose answers the overview counts (calls that reach a model).
const PROVIDER_ROUTES: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/responses",
    "/v1/embeddings",
];

/// Upstream error classes that are the provider's failures; the rest (`cancelled`: the client
/// went away, `invalid_request` and `context_overflow`: the request was wrong) say nothing
/// about the provider's health.
const PROVIDER_FAILURES: [&str; 5] = ["auth", "rate_limit", "network", "server_error", "other"];

/// Error classes the last failure can name (an index into this list is stored atomically).
const ERROR_CLASSES: [&str; 8] = [
    "auth",
    "rate_limit",
    "context_overflow",
    "invalid_request",
    "network",
    "server_error",
    "cancelled",
    "other",
];

/// The latency bucket of `seconds`.
fn latency_bucket(seconds: f64) -> usize {
    let ms = seconds * 1000.0;
    if ms.is_nan() || ms <= 1.0 {
        return 0;
    }
    let idx = (ms.log2() * 4.0).ceil();
    if idx >= (LATENCY_BUCKETS - 1) as f64 {
        LATENCY_BUCKETS - 1
    } else {
        // In 1..LATENCY_BUCKETS - 1 by the checks above.
        idx as usize
    }
}

/// The upper bound of latency bucket `i` in milliseconds.
fn bucket_bound_ms(i: usize) -> f64 {
    let exp = i as f64 / 4.0;
    exp.exp2()
}

/// One minute of counters.
struct Slot {
    /// The minute (unix minutes) the counters belong to; `NEVER` when unused.
    minute: AtomicI64,
    requests: AtomicU64,
    errors: AtomicU64,
    upstream_failures: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    cost_nano_usd: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Slot {
    fn new() -> Self {
        Slot {
            minute: AtomicI64::new(NEVER),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            upstream_failures: AtomicU64::new(0),
            input_tokens: AtomicU64::new(0),
            output_tokens: AtomicU64::new(0),
            cost_nano_usd: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn reset(&self) {
        for c in [
            &self.requests,
            &self.errors,
            &self.upstream_failures,
            &self.input_tokens,
            &self.output_tokens,
            &self.cost_nano_usd,
        ] {
            c.store(0, Relaxed);
        }
        for b in &self.latency {
            b.store(0, Relaxed);
        }
    }
}

/// Take the slot of `minute` in `ring`, recycling it when it still holds an older minute.
fn claim<T>(ring: &[T], minute: i64, stamp: impl Fn(&T) -> &AtomicI64, reset: impl Fn(&T)) -> &T {
    let len = i64::try_from(ring.len()).unwrap_or(1);
    let idx = usize::try_from(minute.rem_euclid(len)).unwrap_or(0);
    let slot = &ring[idx];
    let seen = stamp(slot).load(Relaxed);
    // A slot holding a later minute (the clock stepped back) is used as it is.
    if seen < minute
        && stamp(slot)
            .compare_exchange(seen, minute, Relaxed, Relaxed)
            .is_ok()
    {
        reset(slot);
    }
    slot
}

/// One provider's last minutes.
struct ProviderMinute {
    minute: AtomicI64,
    calls: AtomicU64,
    failures: AtomicU64,
}

struct ProviderCounters {
    name: String,
    ring: [ProviderMinute; HEALTH_MINUTES as usize + 1],
    last_success_us: AtomicI64,
    last_failure_us: AtomicI64,
    /// Index into [`ERROR_CLASSES`] + 1; 0 = no failure yet.
    last_error: AtomicU8,
}

/// The rolling window. One per process, shared by the metrics decorator and the console.
pub struct LiveWindow {
    clock: Arc<dyn Clock>,
    started_us: i64,
    slots: Box<[Slot]>,
    providers: Vec<ProviderCounters>,
}

impl LiveWindow {
    /// A window counting the given providers (the configured ones: other names are ignored,
    /// so a client cannot grow the list).
    #[must_use]
    pub fn new(clock: Arc<dyn Clock>, providers: &[String]) -> Self {
        let started_us = clock.now_us();
        LiveWindow {
            clock,
            started_us,
            slots: (0..DAY_MINUTES).map(|_| Slot::new()).collect(),
            providers: providers
                .iter()
                .map(|name| ProviderCounters {
                    name: name.clone(),
                    ring: std::array::from_fn(|_| ProviderMinute {
                        minute: AtomicI64::new(NEVER),
                        calls: AtomicU64::new(0),
                        failures: AtomicU64::new(0),
                    }),
                    last_success_us: AtomicI64::new(NEVER),
                    last_failure_us: AtomicI64::new(NEVER),
                    last_error: AtomicU8::new(0),
                })
                .collect(),
        }
    }

    fn now(&self) -> (i64, i64) {
        let now = self.clock.now_us();
        (now, now.div_euclid(MINUTE_US))
    }

    fn slot(&self, minute: i64) -> &Slot {
        claim(&self.slots, minute, |s| &s.minute, Slot::reset)
    }

    /// A request answered on `route`.
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        if method != "POST" || !PROVIDER_ROUTES.contains(&route) {
            return;
        }
        let (_, minute) = self.now();
        let s = self.slot(minute);
        s.requests.fetch_add(1, Relaxed);
        if status >= 500 {
            s.errors.fetch_add(1, Relaxed);
        }
        s.latency[latency_bucket(seconds)].fetch_add(1, Relaxed);
    }

    /// An upstream call of `provider` ended with `outcome` (`ok` or an error class).
    pub fn upstream(&self, provider: &str, outcome: &str) {
        let (now, minute) = self.now();
        let ok = outcome == "ok";
        if !ok {
            self.slot(minute).upstream_failures.fetch_add(1, Relaxed);
        }
        let Some(p) = self.providers.iter().find(|p| p.name == provider) else {
            return;
        };
        let m = claim(
            &p.ring,
            minute,
            |m| &m.minute,
            |m| {
                m.calls.store(0, Relaxed);
                m.failures.store(0, Relaxed);
            },
        );
        m.calls.fetch_add(1, Relaxed);
        // Plain stores (not read-modify-write): of two calls ending in the same instant
        // either may be the last one.
        if ok {
            p.last_success_us.store(now, Relaxed);
        } else if PROVIDER_FAILURES.contains(&outcome) {
            m.failures.fetch_add(1, Relaxed);
            p.last_failure_us.store(now, Relaxed);
            let class = ERROR_CLASSES
                .iter()
                .position(|c| *c == outcome)
                .unwrap_or(ERROR_CLASSES.len() - 1);
            p.last_error
                .store(u8::try_from(class + 1).unwrap_or(0), Relaxed);
        }
    }

    /// Tokens and cost of one call.
    pub fn usage(&self, usage: &Usage, cost_usd: f64) {
        let (_, minute) = self.now();
        let s = self.slot(minute);
        s.input_tokens.fetch_add(usage.input_tokens, Relaxed);
        s.output_tokens.fetch_add(usage.output_tokens, Relaxed);
        if cost_usd.is_finite() && cost_usd > 0.0 {
            let nano = (cost_usd * NANO_PER_USD).round() as u64;
            s.cost_nano_usd.fetch_add(nano, Relaxed);
        }
    }

    fn window(&self, now_minute: i64, minutes: i64) -> WindowStats {
        let mut w = WindowStats::default();
        let mut hist = [0u64; LATENCY_BUCKETS];
        let mut cost_nano = 0u64;
        for s in self.slots.iter() {
            let m = s.minute.load(Relaxed);
            if m > now_minute || m <= now_minute - minutes {
                continue;
            }
            w.requests += s.requests.load(Relaxed);
            w.errors += s.errors.load(Relaxed);
            w.upstream_failures += s.upstream_failures.load(Relaxed);
            w.input_tokens += s.input_tokens.load(Relaxed);
            w.output_tokens += s.output_tokens.load(Relaxed);
            cost_nano += s.cost_nano_usd.load(Relaxed);
            for (h, b) in hist.iter_mut().zip(&s.latency) {
                *h += b.load(Relaxed);
            }
        }
        let cost = cost_nano as f64 / NANO_PER_USD;
        w.cost_usd = cost;
        w.p50_ms = percentile(&hist, 0.50);
        w.p99_ms = percentile(&hist, 0.99);
        w
    }

    /// The overview as of now.
    #[must_use]
    pub fn overview(&self) -> Overview {
        let (now, minute) = self.now();
        let providers = self
            .providers
            .iter()
            .map(|p| {
                let (mut calls, mut failures) = (0, 0);
                for m in &p.ring {
                    let at = m.minute.load(Relaxed);
                    if at <= minute && at > minute - HEALTH_MINUTES {
                        calls += m.calls.load(Relaxed);
                        failures += m.failures.load(Relaxed);
                    }
                }
                let stamp = |a: &AtomicI64| Some(a.load(Relaxed)).filter(|v| *v != NEVER);
                let last_error = match p.last_error.load(Relaxed) {
                    0 => None,
                    i => ERROR_CLASSES
                        .get(usize::from(i) - 1)
                        .map(|c| (*c).to_owned()),
                };
                ProviderHealth {
                    provider: p.name.clone(),
                    calls,
                    failures,
                    last_success_us: stamp(&p.last_success_us),
                    last_failure_us: stamp(&p.last_failure_us),
                    last_error,
                    status: health(calls, failures),
                }
            })
            .collect();
        Overview {
            generated_at_us: now,
            uptime_seconds: u64::try_from((now - self.started_us) / 1_000_000).unwrap_or(0),
            hour: self.window(minute, HOUR_MINUTES),
            day: self.window(minute, DAY_MINUTES as i64),
            health_window_seconds: HEALTH_MINUTES as u64 * 60,
            providers,
        }
    }
}

/// A provider's status from its calls and failures in the health window.
fn health(calls: u64, failures: u64) -> &'static str {
    match (calls, failures) {
        (0, _) => "idle",
        (c, f) if f >= c => "down",
        (_, 0) => "healthy",
        _ => "degraded",
    }
}

/// The upper bound (ms) of the bucket holding quantile `q`, `None` for an empty histogram.
fn percentile(hist: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_bound_ms(i));
        }
    }
    Some(bucket_bound_ms(LATENCY_BUCKETS - 1))
}

/// A [`Metrics`] that forwards every call to the registry it wraps and counts the overview's
/// figures into a [`LiveWindow`].
pub struct LiveMetrics {
    inner: Arc<dyn Metrics>,
    live: Arc<LiveWindow>,
}

impl LiveMetrics {
    #[must_use]
    pub fn new(inner: Arc<dyn Metrics>, live: Arc<LiveWindow>) -> Self {
        LiveMetrics { inner, live }
    }
}

impl Metrics for LiveMetrics {
    fn http_request(&self, route: &str, method: &str, status: u16, shape: &str, seconds: f64) {
        self.live.request(route, method, status, seconds);
        self.inner
            .http_request(route, method, status, shape, seconds);
    }
    fn upstream_call(&self, call: &CallLabels<'_>, outcome: &str, seconds: f64) {
        self.live.upstream(call.provider, outcome);
        self.inner.upstream_call(call, outcome, seconds);
    }
    fn upstream_retries(&self, call: &CallLabels<'_>, retries: u32) {
        self.inner.upstream_retries(call, retries);
    }
    fn first_token(&self, call: &CallLabels<'_>, seconds: f64) {
        self.inner.first_token(call, seconds);
    }
    fn usage(&self, call: &CallLabels<'_>, who: &Attribution<'_>, usage: &Usage, cost_usd: f64) {
        self.live.usage(usage, cost_usd);
        self.inner.usage(call, who, usage, cost_usd);
    }
    fn auth_failure(&self, reason: &str) {
        self.inner.auth_failure(reason);
    }
    fn rate_limit(&self, bucket: &str, allowed: bool) {
        self.inner.rate_limit(bucket, allowed);
    }
    fn quota_ratios(&self, ratios: &[QuotaRatio]) {
        self.inner.quota_ratios(ratios);
    }
    fn quota_event(&self, scope: &str, event: &str) {
        self.inner.quota_event(scope, event);
    }
    fn key_leak_suspected(&self) {
        self.inner.key_leak_suspected();
    }
    fn admission_outage(&self, step: &str, decision: &str) {
        self.inner.admission_outage(step, decision);
    }
    fn inflight(&self, delta: i64) {
        self.inner.inflight(delta);
    }
    fn streams(&self, delta: i64) {
        self.inner.streams(delta);
    }
    fn token_count(&self, method: &str) {
        self.inner.token_count(method);
    }
    fn accept_error(&self, kind: &str) {
        self.inner.accept_error(kind);
    }
    fn refused(&self, reason: &str) {
        self.inner.refused(reason);
    }
    fn connections(&self, delta: i64) {
        self.inner.connections(delta);
    }
    fn connection_limit(&self, limit: u64) {
        self.inner.connection_limit(limit);
    }
    fn inflight_body_bytes(&self, delta: i64) {
        self.inner.inflight_body_bytes(delta);
    }
    fn render(&self, gauges: &ScrapeGauges) -> String {
        self.inner.render(gauges)
    }
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
