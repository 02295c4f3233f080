use super::*;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

/// A clock the test moves by hand.
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Counts what reaches the wrapped registry.
#[derive(Default)]
struct Forwarded {
    calls: AtomicUsize,
    last_route: Mutex<String>,
}

impl Metrics for Forwarded {
    fn http_request(&self, route: &str, _: &str, _: u16, _: &str, _: f64) {
        self.calls.fetch_add(1, Relaxed);
        *self.last_route.lock().unwrap() = route.to_owned();
    }
    fn upstream_call(&self, _: &CallLabels<'_>, _: &str, _: f64) {
        self.calls.fetch_add(1, Relaxed);
    }
    fn upstream_retries(&self, _: &CallLabels<'_>, _: u32) {}
    fn first_token(&self, _: &CallLabels<'_>, _: f64) {}
    fn usage(&self, _: &CallLabels<'_>, _: &Attribution<'_>, _: &Usage, _: f64) {
        self.calls.fetch_add(1, Relaxed);
    }
    fn auth_failure(&self, _: &str) {}
    fn rate_limit(&self, _: &str, _: bool) {}
    fn quota_ratios(&self, _: &[QuotaRatio]) {}
    fn quota_event(&self, _: &str, _: &str) {}
    fn key_leak_suspected(&self) {}
    fn admission_outage(&self, _: &str, _: &str) {}
    fn inflight(&self, _: i64) {}
    fn streams(&self, _: i64) {}
    fn token_count(&self, _: &str) {}
    fn accept_error(&self, _: &str) {}
    fn refused(&self, _: &str) {}
    fn connections(&self, _: i64) {}
    fn connection_limit(&self, _: u64) {}
    fn inflight_body_bytes(&self, _: i64) {}
    fn render(&self, _: &ScrapeGauges) -> String {
        "rendered".to_owned()
    }
}

const T0: i64 = 1_780_000_000_000_000 - 1_780_000_000_000_000 % MINUTE_US;

fn window(providers: &[&str]) -> (Arc<ManualClock>, LiveWindow) {
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let names: Vec<String> = providers.iter().map(|p| (*p).to_owned()).collect();
    let live = LiveWindow::new(Arc::clone(&clock) as Arc<dyn Clock>, &names);
    (clock, live)
}

fn at_minute(clock: &ManualClock, minutes: i64) {
    clock.0.store(T0 + minutes * MINUTE_US + 1_000, Relaxed);
}

#[test]
fn only_provider_route_posts_are_requests_and_5xx_are_errors() {
    let (_, live) = window(&[]);
    live.request("/v1/chat/completions", "POST", 200, 0.010);
    live.request("/v1/messages", "POST", 502, 0.020);
    live.request("/v1/embeddings", "POST", 429, 0.005);
    live.request("/v1/models", "GET", 200, 0.001);
    live.request("/admin/v1/keys", "POST", 500, 0.001);
    live.request("/v1/responses", "GET", 101, 0.001);
    let o = live.overview();
    assert_eq!(o.hour.requests, 3);
    assert_eq!(o.hour.errors, 1);
    assert_eq!(o.day, o.hour);
}

#[test]
fn minutes_roll_out_of_the_hour_then_the_day_and_slots_are_recycled() {
    let (clock, live) = window(&[]);
    live.request("/v1/chat/completions", "POST", 200, 0.01);
    live.usage(
        &Usage {
            input_tokens: 10,
            output_tokens: 5,
            ..Usage::default()
        },
        0.25,
    );
    at_minute(&clock, 59);
    live.request("/v1/chat/completions", "POST", 500, 0.01);
    let o = live.overview();
    assert_eq!((o.hour.requests, o.hour.errors), (2, 1));
    assert_eq!(o.hour.input_tokens, 10);
    assert!((o.hour.cost_usd - 0.25).abs() < 1e-9, "{}", o.hour.cost_usd);

    // Minute 60: minute 0 left the hour but not the day.
    at_minute(&clock, 60);
    let o = live.overview();
    assert_eq!((o.hour.requests, o.hour.errors), (1, 1));
    assert_eq!(o.hour.input_tokens, 0);
    assert_eq!(o.hour.cost_usd, 0.0);
    assert_eq!((o.day.requests, o.day.input_tokens), (2, 10));

    // Minute 1440 maps to minute 0's slot: recording there recycles it.
    at_minute(&clock, 1440);
    live.request("/v1/messages", "POST", 200, 0.01);
    let o = live.overview();
    assert_eq!(o.hour.requests, 1);
    assert_eq!(o.day.requests, 2, "minute 59 and minute 1440");
    assert_eq!(o.day.input_tokens, 0, "minute 0's tokens were recycled");
    assert_eq!(o.uptime_seconds, 1440 * 60);

    // A day later nothing is left.
    at_minute(&clock, 2 * 1440 + 1);
    let o = live.overview();
    assert_eq!(o.day, WindowStats::default());
}

#[test]
fn percentiles_come_from_log_buckets_within_their_resolution() {
    let (_, live) = window(&[]);
    assert_eq!(live.overview().hour.p50_ms, None);
    // 98 fast answers (10 ms) and 2 slow ones (2 s).
    for _ in 0..98 {
        live.request("/v1/chat/completions", "POST", 200, 0.010);
    }
    for _ in 0..2 {
        live.request("/v1/chat/completions", "POST", 200, 2.0);
    }
    let o = live.overview();
    let p50 = o.hour.p50_ms.unwrap();
    let p99 = o.hour.p99_ms.unwrap();
    assert!((10.0..=10.0 * 1.19).contains(&p50), "p50 {p50}");
    assert!((2000.0..=2000.0 * 1.19).contains(&p99), "p99 {p99}");
    assert_eq!(latency_bucket(0.0), 0);
    assert_eq!(latency_bucket(0.001), 0);
    assert_eq!(latency_bucket(f64::NAN), 0);
    assert_eq!(latency_bucket(1e9), LATENCY_BUCKETS - 1);
    assert_eq!(bucket_bound_ms(latency_bucket(0.016)), 16.0);
}

#[test]
fn provider_health_looks_at_the_last_five_minutes() {
    let (clock, live) = window(&["openai", "anthropic", "mock"]);
    for _ in 0..3 {
        live.upstream("openai", "ok");
    }
    live.upstream("openai", "network");
    live.upstream("anthropic", "auth");
    live.upstream("anthropic", "cancelled"); // the client's doing, not the provider's
    live.upstream("unknown-provider", "ok"); // not configured: ignored
    let o = live.overview();
    let by = |name: &str| o.providers.iter().find(|p| p.provider == name).unwrap();
    assert_eq!(o.providers.len(), 3);
    let openai = by("openai");
    assert_eq!(
        (openai.calls, openai.failures, openai.status),
        (4, 1, "degraded")
    );
    assert_eq!(openai.last_error.as_deref(), Some("network"));
    assert_eq!(openai.last_success_us, Some(T0));
    assert_eq!(openai.last_failure_us, Some(T0));
    let anthropic = by("anthropic");
    assert_eq!((anthropic.calls, anthropic.failures), (2, 1));
    assert_eq!(anthropic.status, "degraded");
    assert_eq!(anthropic.last_success_us, None);
    assert_eq!(anthropic.last_error.as_deref(), Some("auth"));
    let mock = by("mock");
    assert_eq!(
        (mock.calls, mock.status, mock.last_error.clone()),
        (0, "idle", None)
    );
    assert_eq!(
        o.hour.upstream_failures, 3,
        "every failed call, cancelled included"
    );

    at_minute(&clock, 2);
    live.upstream("anthropic", "server_error");
    assert_eq!(live.overview().providers[1].status, "degraded");
    // Minute 5: the calls of minute 0 are out of the health window.
    at_minute(&clock, 5);
    let o = live.overview();
    assert_eq!((o.providers[0].calls, o.providers[0].status), (0, "idle"));
    assert_eq!(
        (
            o.providers[1].calls,
            o.providers[1].failures,
            o.providers[1].status
        ),
        (1, 1, "down")
    );
    assert_eq!(
        o.providers[0].last_error.as_deref(),
        Some("network"),
        "kept"
    );
    at_minute(&clock, 7);
    live.upstream("anthropic", "ok");
    let o = live.overview();
    assert_eq!(
        (o.providers[1].calls, o.providers[1].status),
        (1, "healthy")
    );
}

#[test]
fn the_decorator_forwards_every_call_and_counts_its_own() {
    let (_, live) = window(&["mock"]);
    let live = Arc::new(live);
    let inner = Arc::new(Forwarded::default());
    let m = LiveMetrics::new(Arc::clone(&inner) as Arc<dyn Metrics>, Arc::clone(&live));
    let call = CallLabels {
        operation: "chat",
        provider: "mock",
        model: "mock:m",
    };
    m.http_request("/v1/messages", "POST", 200, "anthropic", 0.003);
    m.upstream_call(&call, "ok", 0.002);
    m.usage(
        &call,
        &Attribution::default(),
        &Usage {
            input_tokens: 3,
            output_tokens: 4,
            ..Usage::default()
        },
        0.5,
    );
    assert_eq!(inner.calls.load(Relaxed), 3);
    assert_eq!(*inner.last_route.lock().unwrap(), "/v1/messages");
    assert_eq!(m.render(&ScrapeGauges::default()), "rendered");
    let o = live.overview();
    assert_eq!((o.hour.requests, o.hour.output_tokens), (1, 4));
    assert_eq!(o.providers[0].status, "healthy");
}
