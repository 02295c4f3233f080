//! What `/metrics` reads at scrape time, over the in-memory fakes and a clock the test moves:
//! every active capped key's spend over cap is computed as of the scrape, so an idle key's
//! daily ratio falls back to zero when the UTC day rolls over (it used to keep the value of
//! its last request, and a near-cap alert could never clear), revoked keys drop out, and the
//! readiness and store gauges are filled in.
#![expect(clippy::unwrap_used, reason = "tests")]

use metis_domain::canonical::Usage;
use metis_domain::keys::KeyRecord;
use metis_domain::models::Catalog;
use metis_domain::pricing::PriceTable;
use metis_ports::fakes::{InMemoryPatternStore, InMemorySessionStore, InMemoryTraceStore};
use metis_ports::gateway::GatewayService;
use metis_ports::metrics::{Attribution, CallLabels, Metrics, QuotaRatio, ScrapeGauges};
use metis_ports::system::{Background, Clock, IdSource, TraceContext};
use metis_ports::tokens::NoTokenizer;
use metis_ports::trace::KeySpend;
use metis_usecases::{
    CoreParts, GatewayCore, KeyBuckets, KeyRing, Limiter, OutagePolicy, RateLimitConfig,
    SpendGuard, SpendGuardParts, SpendLedger,
};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// 2026-05-20T12:00:00Z.
const NOON: i64 = 1_779_278_400_000_000;
const HOUR_US: i64 = 3_600_000_000;

struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct CountingIds(AtomicU64);

impl IdSource for CountingIds {
    fn ulid(&self) -> String {
        format!("01TEST{:020}", self.0.fetch_add(1, Ordering::SeqCst))
    }

    fn secret_bytes(&self) -> [u8; 24] {
        [7; 24]
    }
}

struct NoTrace;

impl TraceContext for NoTrace {
    fn exporting(&self) -> bool {
        false
    }

    fn current_traceparent(&self) -> Option<String> {
        None
    }
}

struct Detached;

impl Background for Detached {
    fn spawn(&self, task: futures_util::future::BoxFuture<'static, ()>) {
        tokio::spawn(task);
    }

    fn spawn_after(
        &self,
        delay: std::time::Duration,
        task: futures_util::future::BoxFuture<'static, ()>,
    ) {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            task.await;
        });
    }
}

/// Keeps what the core hands over at scrape time.
#[derive(Default)]
struct Recorded {
    ratios: Mutex<Vec<QuotaRatio>>,
    gauges: Mutex<Option<ScrapeGauges>>,
}

impl Metrics for Recorded {
    fn http_request(&self, _: &str, _: &str, _: u16, _: &str, _: f64) {}
    fn upstream_call(&self, _: &CallLabels<'_>, _: &str, _: f64) {}
    fn upstream_retries(&self, _: &CallLabels<'_>, _: u32) {}
    fn first_token(&self, _: &CallLabels<'_>, _: f64) {}
    fn usage(&self, _: &CallLabels<'_>, _: &Attribution<'_>, _: &Usage, _: f64) {}
    fn auth_failure(&self, _: &str) {}
    fn rate_limit(&self, _: &str, _: bool) {}
    fn quota_ratios(&self, ratios: &[QuotaRatio]) {
        *self.ratios.lock().unwrap() = ratios.to_vec();
    }
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
    fn render(&self, gauges: &ScrapeGauges) -> String {
        *self.gauges.lock().unwrap() = Some(gauges.clone());
        String::new()
    }
}

fn key(id: &str, daily: Option<&str>, monthly: Option<&str>, revoked: bool) -> KeyRecord {
    let mut v = serde_json::json!({
        "key_id": id,
        "secret_hash": format!("{:0>64}", id.len()),
        "workspace_path": "/w",
        "status": if revoked { "revoked" } else { "active" },
    });
    if revoked {
        v["revoked_at"] = "2026-05-01T00:00:00+00:00".into();
    }
    if let Some(d) = daily {
        v["daily_cap_usd"] = d.into();
    }
    if let Some(m) = monthly {
        v["monthly_cap_usd"] = m.into();
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn cap_ratios_are_computed_at_scrape_time_and_fall_back_when_the_day_rolls_over() {
    let clock = Arc::new(ManualClock(AtomicI64::new(NOON)));
    let keys = vec![
        key("gk_daily", Some("2.00"), Some("100.00"), false),
        key("gk_uncapped", None, None, false),
        key("gk_revoked", Some("1.00"), None, true),
    ];
    let spend: Vec<KeySpend> = ["gk_daily", "gk_uncapped", "gk_revoked"]
        .iter()
        .map(|k| KeySpend {
            gateway_key_id: (*k).to_owned(),
            user_id: None,
            team_id: None,
            day_usd: 1.9,
            month_usd: 10.0,
        })
        .collect();
    let metrics = Arc::new(Recorded::default());
    let spend = SpendGuard::new(SpendGuardParts {
        store: Arc::new(SpendLedger::rebuild(
            &spend,
            &[],
            &keys,
            metis_domain::time::Calendar::default(),
            NOON,
        )),
        outage: OutagePolicy::FailClosed,
        known: SpendLedger::default(),
        metrics: Arc::clone(&metrics) as Arc<dyn Metrics>,
        background: Arc::new(Detached),
        process_nonce: 1,
        calendar: metis_domain::time::Calendar::default(),
    });
    let sink = Arc::new(InMemoryTraceStore::default());
    let core = GatewayCore::new(CoreParts {
        keys: Arc::new(KeyRing::new(keys)),
        sink,
        providers: Vec::new(),
        catalog: Catalog::default(),
        prices: PriceTable::builtin(),
        clock: Arc::clone(&clock) as Arc<dyn Clock>,
        ids: Arc::new(CountingIds::default()),
        limiter: Arc::new(Limiter::new(
            RateLimitConfig::default(),
            Arc::new(KeyBuckets::new(1_000)),
        )),
        spend,
        metrics: Arc::clone(&metrics) as Arc<dyn Metrics>,
        trace: Arc::new(NoTrace),
        sessions: Arc::new(InMemorySessionStore::default()),
        patterns: Arc::new(InMemoryPatternStore::default()),
        background: Arc::new(Detached),
        tokenizer: Arc::new(NoTokenizer),
        router: Arc::new(metis_usecases::routing::Router::empty(
            Arc::clone(&clock) as Arc<dyn Clock>
        )),
    });

    let _ = core.metrics_text();
    let ratios = |m: &Recorded| -> Vec<(String, &'static str, f64)> {
        m.ratios
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.key_id.clone(),
                    r.scope,
                    (r.ratio * 1000.0).round() / 1000.0,
                )
            })
            .collect()
    };
    assert_eq!(
        ratios(&metrics),
        vec![
            ("gk_daily".to_owned(), "key_daily", 0.95),
            ("gk_daily".to_owned(), "key_monthly", 0.1),
        ],
        "active capped keys only, as of now"
    );
    let g = metrics.gauges.lock().unwrap().clone().unwrap();
    assert!(g.trace_store_writable && !g.draining);
    assert_eq!((g.keys_active, g.keys_revoked), (2, 1));

    // No request since; the UTC day rolls over at midnight, 12 hours later.
    clock.0.fetch_add(13 * HOUR_US, Ordering::SeqCst);
    let _ = core.metrics_text();
    assert_eq!(
        ratios(&metrics),
        vec![
            ("gk_daily".to_owned(), "key_daily", 0.0),
            ("gk_daily".to_owned(), "key_monthly", 0.1),
        ],
        "the daily window is new; the month goes on"
    );

    core.begin_drain();
    let _ = core.metrics_text();
    assert!(metrics.gauges.lock().unwrap().as_ref().unwrap().draining);
}
