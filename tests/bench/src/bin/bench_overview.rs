//! `bench-overview`: what the console overview's recorder adds to each request.
//!
//! A provider request makes three metric calls the recorder counts (`http_request`,
//! `upstream_call`, `usage`). This times those three calls through `LiveMetrics` wrapping a
//! registry that does nothing, against the same calls on the bare no-op registry, so the
//! difference is the recorder alone (the system clock read included), single-threaded and
//! with two threads hitting the same minute slot. Then it times one overview read (the
//! 1440-minute scan). Prints one JSON line per measurement.
//!
//! Usage: `bench-overview [--requests N]` (default 2,000,000 per thread).

use metis_domain::canonical::Usage;
use metis_ports::metrics::{Attribution, CallLabels, Metrics, QuotaRatio, ScrapeGauges};
use metis_ports::system::Clock;
use metis_usecases::{LiveMetrics, LiveWindow};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }
}

/// A registry that records nothing (the baseline).
struct Nothing;

impl Metrics for Nothing {
    fn http_request(&self, _: &str, _: &str, _: u16, _: &str, _: f64) {}
    fn upstream_call(&self, _: &CallLabels<'_>, _: &str, _: f64) {}
    fn upstream_retries(&self, _: &CallLabels<'_>, _: u32) {}
    fn first_token(&self, _: &CallLabels<'_>, _: f64) {}
    fn usage(&self, _: &CallLabels<'_>, _: &Attribution<'_>, _: &Usage, _: f64) {}
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
        String::new()
    }
}

/// The three calls one provider request makes, `n` times; ns per request.
fn requests(m: &dyn Metrics, n: u64) -> f64 {
    let call = CallLabels {
        operation: "chat",
        provider: "openai",
        model: "openai:gpt-5",
    };
    let who = Attribution {
        key_id: "gk_01BENCH",
        user_id: None,
        team_id: None,
    };
    let usage = Usage {
        input_tokens: 120,
        output_tokens: 40,
        ..Usage::default()
    };
    let start = Instant::now();
    for i in 0..n {
        // Vary latency and outcome so every bucket path is taken.
        #[expect(clippy::cast_precision_loss, reason = "small values")]
        let seconds = 0.005 + (i % 97) as f64 * 0.003;
        let status = if i % 50 == 0 { 502 } else { 200 };
        m.http_request("/v1/chat/completions", "POST", status, "openai", seconds);
        m.upstream_call(
            &call,
            if i % 50 == 0 { "server_error" } else { "ok" },
            seconds,
        );
        m.usage(&call, &who, &usage, 0.000_42);
    }
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds and counts fit f64")]
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    per
}

fn threaded(m: &Arc<dyn Metrics>, threads: u64, n: u64) -> f64 {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let m = Arc::clone(m);
            std::thread::spawn(move || requests(m.as_ref(), n))
        })
        .collect();
    let per: Vec<f64> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    #[expect(clippy::cast_precision_loss, reason = "a handful of threads")]
    let mean = per.iter().sum::<f64>() / per.len().max(1) as f64;
    mean
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .iter()
        .position(|a| a == "--requests")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let providers = vec![
        "anthropic".to_owned(),
        "openai".to_owned(),
        "mock".to_owned(),
    ];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let live = Arc::new(LiveWindow::new(Arc::clone(&clock), &providers));
    let bare: Arc<dyn Metrics> = Arc::new(Nothing);
    let wrapped: Arc<dyn Metrics> =
        Arc::new(LiveMetrics::new(Arc::new(Nothing), Arc::clone(&live)));
    // Warm up (page in the 1440 slots).
    requests(wrapped.as_ref(), n / 10);
    for threads in [1u64, 2] {
        let base = threaded(&bare, threads, n);
        let with = threaded(&wrapped, threads, n);
        println!(
            "{{\"kind\":\"overview_recorder\",\"threads\":{threads},\"requests_per_thread\":{n},\"ns_per_request_bare\":{base:.1},\"ns_per_request_recorded\":{with:.1},\"ns_per_request_added\":{:.1}}}",
            with - base
        );
    }
    // The clock read the recorder makes once per call (three per request).
    let start = Instant::now();
    let mut acc = 0i64;
    for _ in 0..n {
        acc = acc.wrapping_add(clock.now_us());
    }
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds and counts fit f64")]
    let clock_ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{{\"kind\":\"clock_read\",\"ns_per_read\":{clock_ns:.1},\"checksum\":{}}}",
        acc & 1
    );
    let reads = 200u32;
    let start = Instant::now();
    let mut seen = 0;
    for _ in 0..reads {
        seen += live.overview().day.requests;
    }
    let per_read_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(reads);
    println!(
        "{{\"kind\":\"overview_read\",\"reads\":{reads},\"us_per_read\":{per_read_us:.1},\"day_requests_seen\":{}}}",
        seen / u64::from(reads)
    );
}
