//! Multi-scope budgets under concurrency (issue 20): hundreds of parallel requests across the
//! keys of one team, each request checked and reserved on its key line, its user line and the
//! team line at once, through the spend guard the gateway uses, against
//!
//! - the in-process ledger (what a single node on SQLite or redb admits against: its spend
//!   store is the process, seeded from the trace),
//! - PostgreSQL through one guard, and through three guards on three pools (three replicas of
//!   a fleet sharing the database).
//!
//! Caps: each key $0.50 a day, each of two users $1.50 a day, the team $2.50 a month. Traffic
//! is skewed (30 % on one key, 70 % on the first user's keys) so every level is reached. Waves
//! of 100 parallel requests (reserve, a few ms "upstream", settle a cost below the estimate)
//! run until a whole wave is refused (about 500 admitted, 600-700 sent). The test then sums
//! what the admitted requests actually cost per account, asserts no level passes its cap by
//! more than one request's worth (the estimate, $0.01), that the store agrees with that sum,
//! and prints the overshoot per level.
//!
//! Then the real gateway on SQLite, redb and PostgreSQL with four tagged keys of one team
//! (two users), each key capped: 400 parallel requests in waves; per-key overshoot printed,
//! refusals name `key_daily`, each key's 100 % alert is raised once. Caps on the user and team
//! levels of a real gateway need the stored budgets (the key store's policies); until they
//! are wired, the admission-layer tests above are the measure for those levels.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis::background::TokioBackground;
use metis_domain::budgets::ScopeKind;
use metis_domain::canonical::Usage;
use metis_domain::spend::{Budget, BudgetLine, Caps};
use metis_domain::time::Calendar;
use metis_ports::admission::SpendAdmission;
use metis_ports::metrics::{Attribution, CallLabels, Metrics, QuotaRatio, ScrapeGauges};
use metis_ports::system::Background;
use metis_usecases::{OutagePolicy, SpendGuard, SpendGuardParts, SpendLedger};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// 2026-09-21T14:13:20Z.
const NOW: i64 = 1_790_000_000_000_000;
const CAL: Calendar = Calendar::CALENDAR_MONTH;
const KEY_DAILY: f64 = 0.50;
const USER_DAILY: f64 = 1.50;
const TEAM_MONTHLY: f64 = 2.50;
/// A request's worst-case cost (its reservation); it costs less.
const ESTIMATE: f64 = 0.01;
const KEYS: usize = 8;
const WAVE: usize = 100;

/// Metrics nobody reads.
struct Quiet;

impl Metrics for Quiet {
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

fn user_of(key: usize) -> &'static str {
    if key < KEYS / 2 { "ann" } else { "bob" }
}

/// Key `k`'s budget: its own daily cap, its user's daily cap, the team's monthly cap.
fn budget(k: usize) -> Budget {
    let caps = |d: Option<f64>, m: Option<f64>| Caps {
        daily_usd: d,
        monthly_usd: m,
        ..Caps::default()
    };
    Budget {
        lines: Arc::new([
            BudgetLine {
                kind: ScopeKind::Key,
                account: Arc::from(format!("gk_{k}")),
                caps: caps(Some(KEY_DAILY), None),
            },
            BudgetLine {
                kind: ScopeKind::User,
                account: Arc::from(format!("user:{}", user_of(k))),
                caps: caps(Some(USER_DAILY), None),
            },
            BudgetLine {
                kind: ScopeKind::Team,
                account: Arc::from("team:platform"),
                caps: caps(None, Some(TEAM_MONTHLY)),
            },
        ]),
    }
}

/// Which key request `i` uses: 30 % key 0, 70 % the first user's keys overall.
fn key_of(i: usize) -> usize {
    match i % 10 {
        0..=2 => 0,
        3..=6 => 1 + i % 3,
        _ => KEYS / 2 + i % (KEYS / 2),
    }
}

/// A deterministic cost in [0.004, 0.01] for request `i` (at most its estimate, as real
/// calls).
fn cost_of(i: usize) -> f64 {
    0.004 + 0.006 * ((i * 7919) % 101) as f64 / 100.0
}

fn guard(
    store: Arc<dyn SpendAdmission>,
    background: &TokioBackground,
    nonce: u64,
) -> Arc<SpendGuard> {
    SpendGuard::new(SpendGuardParts {
        store,
        outage: OutagePolicy::FailClosed,
        known: SpendLedger::default(),
        metrics: Arc::new(Quiet),
        background: Arc::new(background.clone()) as Arc<dyn Background>,
        process_nonce: nonce,
        calendar: CAL,
    })
}

/// Run the waves through `guards` (request `i` goes to guard `i % len`); what the admitted
/// requests cost per account, and how many were admitted.
async fn run(
    guards: &[Arc<SpendGuard>],
    background: &TokioBackground,
) -> (HashMap<String, f64>, usize) {
    let mut spent: HashMap<String, f64> = HashMap::new();
    let mut admitted = 0;
    for wave in 0..30 {
        let mut tasks = Vec::new();
        for j in 0..WAVE {
            let i = wave * WAVE + j;
            let g = Arc::clone(&guards[i % guards.len()]);
            tasks.push(tokio::spawn(async move {
                let k = key_of(i);
                let b = budget(k);
                if g.check(&b, NOW).await.is_err() {
                    return None;
                }
                let Ok((mut hold, _)) = g.reserve(&b, ESTIMATE, NOW).await else {
                    return None;
                };
                // The upstream call: long enough for the wave's requests to overlap.
                tokio::time::sleep(Duration::from_millis(2 + (i % 7) as u64)).await;
                let cost = cost_of(i);
                hold.settle(cost, NOW);
                Some((k, cost))
            }));
        }
        let mut this_wave = 0;
        for t in tasks {
            if let Some((k, cost)) = t.await.unwrap() {
                this_wave += 1;
                for line in budget(k).lines.iter() {
                    *spent.entry(line.account.to_string()).or_default() += cost;
                }
            }
        }
        // Settlements to a shared store run in the background: let them land.
        background.drain(Duration::from_secs(60)).await;
        admitted += this_wave;
        if this_wave == 0 {
            println!(
                "budget concurrency: {} requests sent in waves of {WAVE}, {admitted} admitted",
                (wave + 1) * WAVE
            );
            return (spent, admitted);
        }
    }
    panic!("requests were still admitted after 30 waves of {WAVE}");
}

/// Assert every level stayed within one request's worth of its cap, that the store holds the
/// same spend and no reservation, and print the overshoot per level.
async fn verify(
    label: &str,
    spent: &HashMap<String, f64>,
    admitted: usize,
    store: &dyn SpendAdmission,
) {
    let levels = [
        ("key_daily", "gk_", KEY_DAILY),
        ("user_daily", "user:", USER_DAILY),
        ("team_monthly", "team:", TEAM_MONTHLY),
    ];
    let mut report = Vec::new();
    for (name, prefix, cap) in levels {
        let mut worst = f64::NEG_INFINITY;
        let mut worst_account = String::new();
        for (account, usd) in spent.iter().filter(|(a, _)| a.starts_with(prefix)) {
            let over = usd - cap;
            assert!(
                over <= ESTIMATE + 1e-9,
                "{label}: {account} spent ${usd:.4} against its {name} cap ${cap} (more than one request over)"
            );
            let stored = store.balance(account, CAL, NOW).get().await.unwrap();
            let stored_usd = if name == "team_monthly" {
                stored.month_usd
            } else {
                stored.day_usd
            };
            assert!(
                (stored_usd - usd).abs() < 1e-6,
                "{label}: the store holds ${stored_usd} for {account}, the admitted requests cost ${usd}"
            );
            assert!(
                stored.reserved_usd.abs() < 1e-9,
                "{label}: {account} still holds {stored:?}"
            );
            if over > worst {
                worst = over;
                worst_account = account.clone();
            }
        }
        assert!(
            worst > -ESTIMATE,
            "{label}: {name} was never reached (worst {worst_account} at {worst:+.4}): the test did not exercise it"
        );
        report.push(format!(
            "{name} {:+.4} USD ({worst_account}, cap {cap})",
            worst
        ));
    }
    println!(
        "budget overshoot [{label}] {admitted} requests admitted; per level, max(spent - cap): {}; one request is at most {ESTIMATE} USD",
        report.join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_team_of_keys_on_the_in_process_ledger_overshoots_no_level_by_more_than_one_request() {
    let background = TokioBackground::default();
    let ledger = Arc::new(SpendLedger::default());
    let g = guard(
        Arc::clone(&ledger) as Arc<dyn SpendAdmission>,
        &background,
        1,
    );
    let (spent, admitted) = run(&[g], &background).await;
    verify(
        "in-process (SQLite, redb nodes)",
        &spent,
        admitted,
        &*ledger,
    )
    .await;
}

fn scratch() -> metis_storage_postgres::ScratchDatabase {
    let scratch = metis_storage_postgres::ScratchDatabase::from_env().unwrap();
    let db = metis_storage_postgres::Db::new(scratch.config().clone()).unwrap();
    let m = db.clone();
    db.block_on(async move { metis_storage_postgres::admission::migrate(&m).await })
        .unwrap();
    scratch
}

fn pg(scratch: &metis_storage_postgres::ScratchDatabase) -> Arc<dyn SpendAdmission> {
    let db = metis_storage_postgres::Db::new(scratch.config().clone()).unwrap();
    Arc::new(metis_storage_postgres::admission::PgSpendAdmission::new(db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_team_of_keys_on_postgresql_overshoots_no_level_by_more_than_one_request() {
    let scratch = scratch();
    let background = TokioBackground::default();
    let g = guard(pg(&scratch), &background, 1);
    let (spent, admitted) = run(&[g], &background).await;
    verify("PostgreSQL, one gateway", &spent, admitted, &*pg(&scratch)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_team_of_keys_across_three_replicas_on_postgresql_overshoots_no_level_by_more_than_one_request()
 {
    let scratch = scratch();
    let background = TokioBackground::default();
    let replicas: Vec<_> = (1..=3u64)
        .map(|n| guard(pg(&scratch), &background, n))
        .collect();
    let (spent, admitted) = run(&replicas, &background).await;
    verify(
        "PostgreSQL, three replicas",
        &spent,
        admitted,
        &*pg(&scratch),
    )
    .await;
}

/// The real gateway (one process per store: SQLite, redb, PostgreSQL) with four keys of one
/// team (two users), each key capped daily: hundreds of parallel requests in waves across the
/// keys until every one is refused. Every key stays within one request's cost of its cap,
/// every refusal names `key_daily`, and each key's 100 % alert is raised once. (Caps on the
/// user and team levels need their stored budgets, which the key store brings; the admission
/// layer's tests above measure those levels.)
async fn tagged_keys_on_a_real_gateway(store: metis::store::StoreKind, label: &str) {
    use metis_tests::gateway::chat_body;
    use metis_tests::{GatewayOptions, KeySpec, Shape, TestGateway};
    use serde_json::Value;
    const CAP: f64 = 0.01;
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("metis.toml");
    std::fs::write(
        &path,
        "[pricing]\nversion = \"budget-test-2026\"\n\n[prices.\"openai:gpt-5\"]\ninput_per_mtok = 100.0\noutput_per_mtok = 100.0\n",
    )
    .unwrap();
    let names = [("k1", "ann"), ("k2", "ann"), ("k3", "bob"), ("k4", "bob")];
    let mut gw = TestGateway::spawn_with(GatewayOptions {
        extra_keys: names
            .iter()
            .map(|(name, user)| KeySpec {
                name: (*name).into(),
                daily_cap_usd: Some(CAP.to_string()),
                user: Some((*user).into()),
                team: Some("platform".into()),
                ..KeySpec::default()
            })
            .collect(),
        extra_args: vec!["--config".into(), path.display().to_string()],
        store: Some(store),
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let tokens: Vec<String> = names
        .iter()
        .map(|(n, _)| gw.key_named(n).token.clone())
        .collect();
    let mut sent = 0;
    let mut admitted = 0;
    for wave in 0..12 {
        let mut tasks = Vec::new();
        for i in 0..WAVE {
            let client = gw.client().clone();
            let url = gw.url("/v1/chat/completions");
            let token = tokens[i % tokens.len()].clone();
            let mut body = chat_body(
                Shape::OpenAi,
                "gpt-5",
                &format!("[slow:50] w{wave} q{i}"),
                false,
            );
            body["max_tokens"] = Value::from(32);
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }));
        }
        let mut in_wave = 0;
        for t in tasks {
            let (status, v) = tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("bounded")
                .unwrap();
            sent += 1;
            match status {
                200 => in_wave += 1,
                429 => assert_eq!(v["error"]["scope"], "key_daily", "{v}"),
                other => panic!("only 200 or 429, got {other}: {v}"),
            }
        }
        admitted += in_wave;
        if in_wave == 0 {
            break;
        }
    }
    gw.stop().await.unwrap();
    let events = gw.events().unwrap();
    let mut worst = f64::NEG_INFINITY;
    let mut one = 0.0f64;
    let mut team = 0.0;
    for (name, _) in names {
        let key_id = gw.key_named(name).key_id.clone();
        let costs: Vec<f64> = events
            .iter()
            .filter(|e| {
                (e.event_type == "llm.call_completed" || e.event_type == "llm.call_failed")
                    && e.payload["gateway_key_id"] == key_id.as_str()
            })
            .map(|e| e.payload["cost_usd"].as_f64().unwrap_or(0.0))
            .collect();
        let total: f64 = costs.iter().sum();
        team += total;
        one = costs.iter().copied().fold(one, f64::max);
        worst = worst.max(total - CAP);
        let exhausted = events
            .iter()
            .filter(|e| {
                e.event_type == "quota.alert"
                    && e.payload["gateway_key_id"] == key_id.as_str()
                    && e.payload["severity"] == "exhausted"
            })
            .count();
        assert_eq!(exhausted, 1, "{label}: {name}'s 100 % alert is raised once");
    }
    println!(
        "budget concurrency [real gateway, {label}]: {sent} requests sent, {admitted} admitted; key_daily worst overshoot {worst:+.6} USD (cap {CAP}, one request <= {one:.6}); team spend {team:.6}"
    );
    assert!(one > 0.0, "{label}: calls were priced");
    assert!(
        worst <= one + 1e-12,
        "{label}: a key passed its cap by {worst} (> one request {one})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_keys_on_a_real_gateway_on_sqlite_stay_within_one_request_of_their_caps() {
    tagged_keys_on_a_real_gateway(metis::store::StoreKind::Sqlite, "SQLite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_keys_on_a_real_gateway_on_redb_stay_within_one_request_of_their_caps() {
    tagged_keys_on_a_real_gateway(metis::store::StoreKind::Redb, "redb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_keys_on_a_real_gateway_on_postgresql_stay_within_one_request_of_their_caps() {
    tagged_keys_on_a_real_gateway(metis::store::StoreKind::Postgres, "PostgreSQL").await;
}
