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
//! refusals name `key_daily`, each key's 100 % alert is raised once.
//!
//! And the scope budgets through the real path (`scope_budgets_hold`, also run across three
//! replicas by `fleet.rs`): a `metis gateway` process per store, four keys of team `platform`
//! on two users (key daily caps), spend charged before any budget exists, then ann's daily
//! budget set by the CLI (another process, into the key store) and enforced within the 2 s key
//! reload starting from that spend, the team's monthly budget and ann's raised one through the
//! admin API, then waves of 100 parallel calls until all are refused. Every level (key_daily,
//! user_daily, team_monthly) stays within one call's cost of its cap by the traced spend
//! (`GET /admin/v1/usage`), refusals name the scope and its cap, the budgets' listed spend
//! (`GET /admin/v1/budgets`) equals the traced spend (on every replica; on a single gateway
//! also after a restart), alerts are raised once each. The overshoot per level is printed.
//! These need `target/debug/metis` (`cargo build --workspace --bins`) and, for PostgreSQL,
//! `METIS_TEST_DATABASE_URL` (`scripts/pg-server.sh`).
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
use std::time::{Duration, Instant};

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

// ---------------------------------------------------------------------------------------------
// Scope budgets stored through the real path (CLI and admin API), enforced by running gateways
// ---------------------------------------------------------------------------------------------

/// The admin token of the single scope-budget gateways.
const SCOPE_ADMIN: &str = "scope-budget-admin-token-0123456789";
/// $100 per million tokens in and out for `openai:gpt-5` (as the fleet's prices): a call of
/// the scenario costs about $0.0017.
const SCOPE_PRICES: &str = "[pricing]\nversion = \"scope-budget-test-2026\"\n\n[prices.\"openai:gpt-5\"]\ninput_per_mtok = 100.0\noutput_per_mtok = 100.0\n";
/// The four keys of team `platform`: name, user, daily cap. Only k1's cap is meant to bind;
/// the others are caps too (every key line is capped) but above what their user or team
/// leaves them.
pub(crate) const SCOPE_KEYS: [(&str, &str, &str); 4] = [
    ("k1", "ann", "0.005"),
    ("k2", "ann", "0.05"),
    ("k3", "bob", "0.05"),
    ("k4", "bob", "0.05"),
];
/// Ann's daily budget once the test raises it (her keys could spend 0.055 without it).
const ANN_DAILY_USD: f64 = 0.024;
/// The team's monthly budget (its keys could spend 0.155 without it).
const TEAM_MONTHLY_USD: f64 = 0.06;
/// Ann's first daily budget, set by the CLI below what she has already spent.
const ANN_FIRST: f64 = 0.001;
const SCOPE_WAVE: usize = 100;

/// `issue-key` flags of key `i` of [`SCOPE_KEYS`].
pub(crate) fn scope_key_flags(i: usize) -> Vec<String> {
    let (_, user, cap) = SCOPE_KEYS[i];
    ["--daily-cap-usd", cap, "--user", user, "--team", "platform"]
        .map(str::to_owned)
        .to_vec()
}

/// One gateway (or a fleet) serving the keys of [`SCOPE_KEYS`] (issued with
/// [`scope_key_flags`] before the gateways started, no budget stored yet) at $100 per million
/// tokens in and out for `openai:gpt-5`.
pub(crate) struct ScopeRun {
    pub label: String,
    pub client: reqwest::Client,
    /// Base URL of each replica.
    pub urls: Vec<String>,
    /// The storage flags of `metis gateway budget set` for this deployment's key store.
    pub storage: Vec<String>,
    /// (key id, token) of each key of [`SCOPE_KEYS`], in order.
    pub keys: Vec<(String, String)>,
    /// The replicas' `--admin-token`.
    pub admin: String,
}

/// What one call answered.
struct Answer {
    status: u16,
    body: serde_json::Value,
    /// What the call cost by its usage at $100 per million tokens (0 when refused).
    cost: f64,
}

/// The admitted calls per key: their count and summed cost, and the dearest call.
#[derive(Default)]
struct Tally {
    calls: [u64; 4],
    cost: [f64; 4],
    dearest: f64,
    sent: usize,
}

impl Tally {
    fn add(&mut self, k: usize, a: &Answer) {
        self.sent += 1;
        if a.status == 200 {
            self.calls[k] += 1;
            self.cost[k] += a.cost;
            self.dearest = self.dearest.max(a.cost);
        }
    }
    fn ann(&self) -> f64 {
        self.cost[0] + self.cost[1]
    }
    fn team(&self) -> f64 {
        self.cost.iter().sum()
    }
    fn admitted(&self) -> u64 {
        self.calls.iter().sum()
    }
}

impl ScopeRun {
    async fn call(&self, replica: usize, k: usize, text: &str) -> Answer {
        chat_call(
            &self.client,
            &self.urls[replica],
            &self.keys[k].1,
            text.to_owned(),
        )
        .await
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        replica: usize,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.urls[replica]))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    async fn cli(&self, args: &[&str]) {
        let mut a: Vec<String> = vec!["gateway".to_owned()];
        a.extend(args.iter().map(|s| (*s).to_owned()));
        a.extend(self.storage.iter().cloned());
        let out = tokio::task::spawn_blocking(move || metis_tests::process::metis(&a).unwrap())
            .await
            .unwrap();
        assert_eq!(out.code(), 0, "{}", out.describe());
    }
}

/// A chat call of ~17 tokens each way (`[slow:50]`: long enough for a wave to overlap).
async fn chat_call(client: &reqwest::Client, base: &str, token: &str, text: String) -> Answer {
    use metis_tests::Shape;
    use metis_tests::gateway::chat_body;
    let mut body = chat_body(Shape::OpenAi, "gpt-5", &format!("[slow:50] {text}"), false);
    body["max_tokens"] = serde_json::Value::from(32);
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    let tokens = |f: &str| body["usage"][f].as_f64().unwrap_or(0.0);
    let cost = if status == 200 {
        (tokens("prompt_tokens") + tokens("completion_tokens")) * 100.0 / 1e6
    } else {
        0.0
    };
    Answer { status, body, cost }
}

/// A USD amount of a refusal body (a decimal string).
fn usd(v: &serde_json::Value) -> f64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_f64())
        .unwrap_or(f64::NAN)
}

/// A refusal: 429 `quota_exceeded` naming one of `scopes`, with that scope's limit. Returns
/// the scope.
fn refusal_scope(label: &str, key: &str, a: &Answer, scopes: &[(&str, f64)]) -> String {
    let e = &a.body["error"];
    assert_eq!(a.status, 429, "{label}: {key}: {}", a.body);
    assert_eq!(e["code"], "quota_exceeded", "{label}: {key}: {}", a.body);
    let scope = e["scope"].as_str().unwrap_or_default().to_owned();
    let Some((_, limit)) = scopes.iter().find(|(s, _)| *s == scope) else {
        panic!(
            "{label}: {key} refused naming {scope}, expected one of {scopes:?}: {}",
            a.body
        );
    };
    let limit_usd = usd(&e["limit_usd"]);
    assert!(
        (limit_usd - limit).abs() < 1e-9,
        "{label}: {key}'s {scope} refusal names limit {limit_usd}, the cap is {limit}: {}",
        a.body
    );
    scope
}

/// The scenario, on one gateway or a fleet:
///
/// 1. k2 and k3 spend (two calls each) while no budget exists: the `user:ann` and
///    `team:platform` accounts are charged anyway.
/// 2. `metis gateway budget set --user ann --daily-usd 0.001` (the CLI, another process, into
///    the key store): every replica refuses ann's keys naming `user_daily` within the key
///    reload, and the refusal's `current_usd` is the spend charged before the budget existed.
/// 3. The admin API (`PUT /admin/v1/budgets/…` on replica 0) sets the team's monthly budget and
///    raises ann's daily one; every replica admits ann's keys again.
/// 4. Waves of parallel calls spread over the four keys and the replicas until a whole wave is
///    refused. Refusals name a scope the key belongs to, with its cap.
/// 5. The trace (`GET /admin/v1/usage`) has every admitted call; the budgets' spend
///    (`GET /admin/v1/budgets`, on every replica) equals it; no level passed its cap by more
///    than one request.
pub(crate) async fn scope_budgets_hold(run: &ScopeRun) -> (f64, f64) {
    let label = run.label.as_str();
    let replicas = run.urls.len();
    let mut tally = Tally::default();

    // 1. Spend before any budget.
    for (k, n) in [(1, 2), (2, 2)] {
        for j in 0..n {
            let a = run
                .call(j % replicas, k, &format!("before budgets {k} {j}"))
                .await;
            assert_eq!(a.status, 200, "{label}: {}", a.body);
            tally.add(k, &a);
        }
    }
    let ann_before = tally.ann();
    println!(
        "scope budgets [{label}]: a call costs ${:.6}; ann spent ${ann_before:.6} before any budget",
        tally.dearest
    );

    // 2. A budget set by the CLI while the gateways run, below the spend already charged.
    run.cli(&[
        "budget",
        "set",
        "--user",
        "ann",
        "--daily-usd",
        &ANN_FIRST.to_string(),
    ])
    .await;
    let set_at = Instant::now();
    let mut reload = Vec::new();
    for r in 0..replicas {
        loop {
            let a = run.call(r, 1, "after the cli").await;
            tally.add(1, &a);
            if a.status != 200 {
                let scope = refusal_scope(label, "k2", &a, &[("user_daily", ANN_FIRST)]);
                // Printed to 4 decimals.
                let current = usd(&a.body["error"]["current_usd"]);
                assert!(
                    current >= ann_before - 0.00005,
                    "{label}: the {scope} refusal counts ${current}, ann had spent ${ann_before} before her budget was set"
                );
                reload.push(set_at.elapsed().as_secs_f64());
                break;
            }
            // The key reload polls every 500 ms: a change is in force within 2 s.
            assert!(
                set_at.elapsed() <= Duration::from_secs(2),
                "{label}: replica {r} does not enforce the budget set by the CLI after 2 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // 3. Budgets through the admin API of replica 0: the team's, and ann's raised.
    let put = reqwest::Method::PUT;
    let team = run
        .admin(
            put.clone(),
            0,
            "/admin/v1/budgets/team/platform",
            Some(serde_json::json!({"monthly_usd": TEAM_MONTHLY_USD.to_string()})),
        )
        .await;
    assert_eq!(team["monthly_usd"], TEAM_MONTHLY_USD.to_string(), "{team}");
    run.admin(
        put,
        0,
        "/admin/v1/budgets/user/ann",
        Some(serde_json::json!({"daily_usd": ANN_DAILY_USD.to_string()})),
    )
    .await;
    let api_at = Instant::now();
    let mut api_reload = Vec::new();
    for r in 0..replicas {
        loop {
            let a = run.call(r, 1, "after the api").await;
            tally.add(1, &a);
            if a.status == 200 {
                api_reload.push(api_at.elapsed().as_secs_f64());
                break;
            }
            refusal_scope(label, "k2", &a, &[("user_daily", ANN_FIRST)]);
            assert!(
                api_at.elapsed() <= Duration::from_secs(2),
                "{label}: replica {r} still has ann's first budget 2 s after the API raised it"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let team_before = tally.team();

    // 4. Waves of parallel calls over the four keys and the replicas.
    let scopes_of = |k: usize| -> Vec<(&'static str, f64)> {
        let key_cap: f64 = SCOPE_KEYS[k].2.parse().unwrap();
        let mut s = vec![("key_daily", key_cap), ("team_monthly", TEAM_MONTHLY_USD)];
        if SCOPE_KEYS[k].1 == "ann" {
            s.push(("user_daily", ANN_DAILY_USD));
        }
        s
    };
    let mut named: HashMap<String, usize> = HashMap::new();
    let mut waves = 0;
    loop {
        waves += 1;
        assert!(
            waves <= 30,
            "{label}: calls were still admitted after 30 waves"
        );
        let mut tasks = Vec::new();
        for i in 0..SCOPE_WAVE {
            // The first wave is k1's alone, so its key cap is reached under concurrency
            // before the user and team budgets it shares can run out (otherwise which level
            // refuses k1 first depends on how the replicas interleave the calls).
            let (k, r) = if waves == 1 {
                (0, i % replicas)
            } else {
                (i % 4, (i / 4) % replicas)
            };
            let (client, base, token) = (
                run.client.clone(),
                run.urls[r].clone(),
                run.keys[k].1.clone(),
            );
            tasks.push(tokio::spawn(async move {
                (
                    k,
                    chat_call(&client, &base, &token, format!("w{waves} q{i}")).await,
                )
            }));
        }
        let mut in_wave = 0;
        for t in tasks {
            let (k, a) = tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("bounded")
                .unwrap();
            tally.add(k, &a);
            if a.status == 200 {
                in_wave += 1;
            } else {
                let scope = refusal_scope(label, SCOPE_KEYS[k].0, &a, &scopes_of(k));
                *named.entry(scope).or_default() += 1;
            }
        }
        if in_wave == 0 {
            break;
        }
    }
    for scope in ["key_daily", "user_daily", "team_monthly"] {
        assert!(
            named.get(scope).copied().unwrap_or(0) > 0,
            "{label}: no refusal named {scope} ({named:?}): the level was not exercised"
        );
    }

    // 5. The trace has every admitted call (its writes are batched: wait for them).
    let ids: Vec<&str> = run.keys.iter().map(|(id, _)| id.as_str()).collect();
    let start = Instant::now();
    let traced = loop {
        let usage = run
            .admin(
                reqwest::Method::GET,
                replicas - 1,
                "/admin/v1/usage?group_by=key",
                None,
            )
            .await;
        let rows = usage["rows"].as_array().cloned().unwrap_or_default();
        let of = |id: &str, f: &str| -> f64 {
            rows.iter()
                .find(|r| r["group"] == id)
                .map_or(0.0, |r| r[f].as_f64().unwrap_or(0.0))
        };
        let calls: Vec<u64> = ids.iter().map(|id| of(id, "calls") as u64).collect();
        if calls == tally.calls {
            break ids
                .iter()
                .map(|id| of(id, "cost_usd"))
                .collect::<Vec<f64>>();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{label}: the trace has {calls:?} calls per key after 15 s, {:?} were admitted",
            tally.calls
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (k, (traced, answered)) in traced.iter().zip(tally.cost).enumerate() {
        assert!(
            (traced - answered).abs() < 1e-9,
            "{label}: {} traced ${traced}, its answers' usage prices to ${answered}",
            SCOPE_KEYS[k].0
        );
    }
    let (ann, team) = (tally.ann(), tally.team());
    // The budgets' spend is the scopes' accounts (settled in the background on a fleet).
    for r in 0..replicas {
        let start = Instant::now();
        loop {
            let listed = run
                .admin(reqwest::Method::GET, r, "/admin/v1/budgets", None)
                .await;
            let budgets = listed["budgets"].as_array().cloned().unwrap_or_default();
            let spend = |scope: &str, id: &str, f: &str| {
                budgets
                    .iter()
                    .find(|b| b["scope"] == scope && b["id"] == id)
                    .and_then(|b| b[f].as_f64())
                    .unwrap_or(f64::NAN)
            };
            let (t, u) = (
                spend("team", "platform", "spend_month_usd"),
                spend("user", "ann", "spend_day_usd"),
            );
            if (t - team).abs() < 1e-9 && (u - ann).abs() < 1e-9 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{label}: replica {r} lists team spend ${t} (traced ${team}) and ann's ${u} (traced ${ann})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Alerts: each (account, cap, limit, level) at most once, fleet-wide; the team's 80 and
    // 95 % once, and its 100 % once when its settled spend reached the cap (raised by the
    // first check that sees it: a call refused at the cap).
    let mut team_levels_expected = vec![80, 95];
    if team >= TEAM_MONTHLY_USD {
        let a = run.call(replicas - 1, 2, "after the waves").await;
        refusal_scope(label, "k3", &a, &[("team_monthly", TEAM_MONTHLY_USD)]);
        team_levels_expected.push(100);
    }
    let start = Instant::now();
    let alerts = loop {
        let audit = run
            .admin(
                reqwest::Method::GET,
                replicas - 1,
                "/admin/v1/audit?type=quota.alert",
                None,
            )
            .await;
        let events = audit["events"].as_array().cloned().unwrap_or_default();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut team_levels = Vec::new();
        for e in &events {
            let p = &e["payload"];
            *seen
                .entry(format!(
                    "{} {} {} {}%",
                    p["account"], p["scope"], p["limit_usd"], p["level_percent"]
                ))
                .or_default() += 1;
            if p["account"] == "team:platform" && p["scope"] == "team_monthly" {
                team_levels.push(p["level_percent"].as_u64().unwrap_or(0));
            }
        }
        for (alert, n) in &seen {
            assert_eq!(*n, 1, "{label}: alert {alert} raised {n} times");
        }
        team_levels.sort_unstable();
        if team_levels == team_levels_expected {
            break events.len();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{label}: the team's alerts are at levels {team_levels:?} after 15 s, expected {team_levels_expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let one = tally.dearest;
    let key_over = SCOPE_KEYS
        .iter()
        .zip(tally.cost)
        .map(|((_, _, cap), spent)| spent - cap.parse::<f64>().unwrap())
        .fold(f64::NEG_INFINITY, f64::max);
    let (user_over, team_over) = (ann - ANN_DAILY_USD, team - TEAM_MONTHLY_USD);
    println!(
        "scope budgets [{label}]: {} calls sent, {} admitted, {waves} waves of {SCOPE_WAVE}; \
         overshoot key_daily {:+.6} (k1 ${:.6} of {}), user_daily {:+.6} (ann ${ann:.6} of {ANN_DAILY_USD}), \
         team_monthly {:+.6} (platform ${team:.6} of {TEAM_MONTHLY_USD}); one request <= ${one:.6}; \
         refusals {named:?}; {alerts} alerts, each once (team {team_levels_expected:?} %); CLI budget enforced by each replica after {reload:.2?} s, API change after {api_reload:.2?} s; \
         budgets set on ${ann_before:.6} (ann) and ${team_before:.6} (team) already charged",
        tally.sent,
        tally.admitted(),
        key_over,
        tally.cost[0],
        SCOPE_KEYS[0].2,
        user_over,
        team_over,
    );
    assert!(one > 0.0, "{label}: calls were priced");
    for (name, o) in [
        ("key_daily", key_over),
        ("user_daily", user_over),
        ("team_monthly", team_over),
    ] {
        assert!(
            o <= one + 1e-12,
            "{label}: {name} passed its cap by ${o} (more than one request, ${one})"
        );
    }
    (ann, team)
}

/// One `metis gateway` process on `store` (`sqlite`, `redb`, `postgres`), keys in its JSON
/// key file, serving the scenario.
async fn scope_budgets_on_one_gateway(store: &str, label: &str) {
    use metis_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY};
    use metis_tests::process::{GatewayProcess, issue_key, upstream_args, upstream_env};
    let upstream = metis_tests::FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prices.toml");
    std::fs::write(&config, SCOPE_PRICES).unwrap();
    let scratch = if store == "postgres" {
        Some(
            tokio::task::spawn_blocking(metis_storage_postgres::ScratchDatabase::from_env)
                .await
                .unwrap()
                .unwrap(),
        )
    } else {
        None
    };
    let mut storage = vec![
        "--data-dir".to_owned(),
        dir.path().display().to_string(),
        "--store".to_owned(),
        store.to_owned(),
    ];
    if let Some(s) = &scratch {
        storage.extend(["--database-url".to_owned(), s.url().to_owned()]);
    }
    let mut keys = Vec::new();
    for (i, (name, _, _)) in SCOPE_KEYS.iter().enumerate() {
        let (storage, flags) = (storage.clone(), scope_key_flags(i));
        keys.push(
            tokio::task::spawn_blocking(move || {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                issue_key(&storage, name, &flags).unwrap()
            })
            .await
            .unwrap(),
        );
    }
    let mut args = vec!["--port".to_owned(), "0".to_owned()];
    args.extend(upstream_args(&upstream.base_url(), dir.path()));
    args.extend(storage[2..].iter().cloned());
    args.extend(
        [
            "--admin-token",
            SCOPE_ADMIN,
            "--config",
            &config.display().to_string(),
        ]
        .map(str::to_owned),
    );
    let mut gw = GatewayProcess::spawn_async(
        args.clone(),
        upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY),
    )
    .await
    .unwrap();
    let run = ScopeRun {
        label: label.to_owned(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        urls: vec![gw.url.clone()],
        storage,
        keys,
        admin: SCOPE_ADMIN.to_owned(),
    };
    let (ann, team) = scope_budgets_hold(&run).await;
    gw.stop(Duration::from_secs(15)).await.unwrap();

    // Restarted, the gateway knows the scopes' spend (a single node seeds its ledger from the
    // trace): the budgets list it, and the team, at its cap, is still refused.
    let gw = GatewayProcess::spawn_async(
        args,
        upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY),
    )
    .await
    .unwrap();
    let run = ScopeRun {
        urls: vec![gw.url.clone()],
        ..run
    };
    let listed = run
        .admin(reqwest::Method::GET, 0, "/admin/v1/budgets", None)
        .await;
    let budgets = listed["budgets"].as_array().cloned().unwrap_or_default();
    let spend = |scope: &str, f: &str| {
        budgets
            .iter()
            .find(|b| b["scope"] == scope)
            .and_then(|b| b[f].as_f64())
            .unwrap_or(f64::NAN)
    };
    assert!(
        (spend("team", "spend_month_usd") - team).abs() < 1e-9
            && (spend("user", "spend_day_usd") - ann).abs() < 1e-9,
        "{label}: after a restart the budgets list {listed}, the trace has team ${team}, ann ${ann}"
    );
    let a = run.call(0, 2, "after the restart").await;
    refusal_scope(label, "k3", &a, &[("team_monthly", TEAM_MONTHLY_USD)]);
    let mut gw = gw;
    gw.stop(Duration::from_secs(15)).await.unwrap();
    drop(scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_budgets_set_by_cli_and_api_hold_on_a_real_gateway_on_sqlite() {
    scope_budgets_on_one_gateway("sqlite", "SQLite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_budgets_set_by_cli_and_api_hold_on_a_real_gateway_on_redb() {
    scope_budgets_on_one_gateway("redb", "redb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_budgets_set_by_cli_and_api_hold_on_a_real_gateway_on_postgresql() {
    scope_budgets_on_one_gateway("postgres", "PostgreSQL").await;
}
