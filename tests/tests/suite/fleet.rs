//! A fleet: several `metis gateway` processes on one PostgreSQL database (`--store postgres
//! --keystore store`), each with its own data directory, behind no load balancer (the tests
//! spread requests across them). What must hold across replicas, measured and printed:
//!
//! - a daily cap under concurrent load through every replica: overshoot ≤ one request;
//! - team and user budgets set by the CLI and the admin API with key caps on the keys of one
//!   team: no level overshoots by more than one request fleet-wide;
//! - a per-key rpm limit: admitted ≤ the bucket's bound + one per replica;
//! - revoke through one replica: 401 on the others within 2 s;
//! - usage totals on any replica equal the requests sent, and the audit chain verifies after
//!   concurrent lifecycle operations through different replicas;
//! - SIGKILL of one replica under load: the others keep serving; the events the killed one
//!   had acknowledged but not committed are counted;
//! - the database stopped and started mid-load (a dedicated server): no crash, capped keys
//!   refused with 503 while it is down (fail-closed), every acknowledged request's events
//!   written once it is back, no double charge.
//!
//! Needs `METIS_TEST_DATABASE_URL` (scripts/pg-server.sh) and `target/debug/metis`.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use metis_storage_postgres::{Db, ScratchDatabase};
use metis_tests::Combo;
use metis_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY, FakeUpstream};
use metis_tests::process::{GatewayProcess, issue_key, metis, upstream_args, upstream_env};
use serde_json::Value;
use std::time::{Duration, Instant};

const ADMIN: &str = "fleet-test-admin-token-0123456789";

/// $100 per million tokens in and out for `openai:gpt-5`.
const PRICES: &str = "[pricing]\nversion = \"fleet-test-2026\"\n\n[prices.\"openai:gpt-5\"]\ninput_per_mtok = 100.0\noutput_per_mtok = 100.0\n";

struct Fleet {
    database: ScratchDatabase,
    upstream: FakeUpstream,
    config: tempfile::TempDir,
    dirs: Vec<tempfile::TempDir>,
    gateways: Vec<GatewayProcess>,
    client: reqwest::Client,
}

impl Fleet {
    async fn start(replicas: usize, extra: &[&str]) -> Fleet {
        Fleet::start_on(ScratchDatabase::from_env().unwrap(), replicas, extra).await
    }

    async fn start_on(database: ScratchDatabase, replicas: usize, extra: &[&str]) -> Fleet {
        let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
            .await
            .unwrap();
        let config = tempfile::tempdir().unwrap();
        std::fs::write(config.path().join("metis.toml"), PRICES).unwrap();
        let mut fleet = Fleet {
            database,
            upstream,
            config,
            dirs: Vec::new(),
            gateways: Vec::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        for _ in 0..replicas {
            fleet.add_replica(extra).await;
        }
        fleet
    }

    /// `--store postgres --database-url … --keystore store`.
    fn storage(&self) -> Vec<String> {
        vec![
            "--store".into(),
            "postgres".into(),
            "--database-url".into(),
            self.database.url().to_owned(),
            "--keystore".into(),
            "store".into(),
        ]
    }

    async fn add_replica(&mut self, extra: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--port".to_owned(), "0".to_owned()];
        args.extend(upstream_args(&self.upstream.base_url(), dir.path()));
        args.extend(self.storage());
        args.extend(
            [
                "--admin-token",
                ADMIN,
                "--config",
                &self.config.path().join("metis.toml").display().to_string(),
            ]
            .map(str::to_owned),
        );
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let gw = GatewayProcess::spawn_async(
            args,
            upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY),
        )
        .await
        .unwrap();
        self.dirs.push(dir);
        self.gateways.push(gw);
    }

    /// Issue a key through the CLI into the database.
    async fn issue(&self, name: &str, extra: &[&str]) -> (String, String) {
        let storage = self.storage();
        let (name, extra): (String, Vec<String>) = (
            name.to_owned(),
            extra.iter().map(|s| (*s).to_owned()).collect(),
        );
        tokio::task::spawn_blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            issue_key(&storage, &name, &extra).unwrap()
        })
        .await
        .unwrap()
    }

    /// One chat call through replica `i`: (status, body).
    async fn call(&self, i: usize, token: &str, text: &str) -> (u16, String) {
        let r = self
            .client
            .post(self.gateways[i].url_of("/v1/chat/completions"))
            .bearer_auth(token)
            .json(&Combo::OPENAI_TO_OPENAI.body(text, false))
            .send()
            .await;
        match r {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }

    async fn admin_get(&self, i: usize, path: &str) -> Value {
        self.client
            .get(self.gateways[i].url_of(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Wait until every replica knows `token` (keys issued by the CLI arrive by polling).
    async fn wait_known(&self, token: &str) {
        let start = Instant::now();
        for i in 0..self.gateways.len() {
            loop {
                let (status, body) = self.call(i, token, "hello").await;
                if status == 200 {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "replica {i} does not know the key after 10 s: {status} {body}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn db(&self) -> Db {
        Db::new(self.database.config().clone()).unwrap()
    }

    /// One number from the database.
    fn scalar_f64(&self, sql: &'static str, key_id: &str) -> f64 {
        let db = self.db();
        let (pool, key) = (db.clone(), key_id.to_owned());
        db.block_on(async move {
            let c = pool.get().await?;
            let row = c.query_one(sql, &[&key]).await?;
            Ok(row.get::<_, Option<f64>>(0).unwrap_or(0.0))
        })
        .unwrap()
    }

    /// Events of `key_id` of one type, counted in the database.
    fn count_events(&self, event_type: &str, key_id: &str) -> i64 {
        let db = self.db();
        let (pool, key, ty) = (db.clone(), key_id.to_owned(), event_type.to_owned());
        db.block_on(async move {
            let c = pool.get().await?;
            let row = c
                .query_one(
                    "SELECT count(*) FROM events WHERE type = $1
                     AND payload_json::jsonb ->> 'gateway_key_id' = $2",
                    &[&ty, &key],
                )
                .await?;
            Ok(row.get::<_, i64>(0))
        })
        .unwrap()
    }

    /// Recorded cost of `key_id`'s calls (completed and failed), from the trace.
    fn traced_cost(&self, key_id: &str) -> f64 {
        self.scalar_f64(
            "SELECT sum((payload_json::jsonb ->> 'cost_usd')::float8) FROM events
             WHERE type IN ('llm.call_completed', 'llm.call_failed')
             AND payload_json::jsonb ->> 'gateway_key_id' = $1",
            key_id,
        )
    }

    /// The admission ledger's day spend of `account`.
    fn ledger_day(&self, account: &str) -> f64 {
        self.scalar_f64(
            "SELECT day_usd FROM spend_accounts WHERE account = $1",
            account,
        )
    }

    async fn stop(mut self) {
        for gw in &mut self.gateways {
            let _ = gw.stop(Duration::from_secs(15)).await;
        }
    }
}

/// Wait until `check` holds (bounded), e.g. for batched trace writes to land.
async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_cap_holds_across_three_replicas() {
    const CAP: f64 = 0.02;
    let fleet = Fleet::start(3, &[]).await;
    let (key_id, token) = fleet
        .issue("capped", &["--daily-cap-usd", &CAP.to_string()])
        .await;
    fleet.wait_known(&token).await;
    let mut refused_wave = false;
    for wave in 0..10 {
        let mut tasks = Vec::new();
        for i in 0..30 {
            let (client, url, token) = (
                fleet.client.clone(),
                fleet.gateways[i % 3].url_of("/v1/chat/completions"),
                token.clone(),
            );
            let mut body = Combo::OPENAI_TO_OPENAI.body(&format!("[slow:100] w{wave} q{i}"), false);
            body["max_tokens"] = 40.into();
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "only admits and cap refusals: {statuses:?}"
        );
        if statuses.iter().all(|s| *s == 429) {
            refused_wave = true;
            break;
        }
    }
    assert!(refused_wave, "the cap was never reached");
    let traced = {
        let mut last = 0.0;
        eventually("the trace settles", Duration::from_secs(10), || {
            let now = fleet.traced_cost(&key_id);
            let settled = (now - last).abs() < 1e-12 && now > 0.0;
            last = now;
            settled
        })
        .await;
        last
    };
    eventually("the ledger settles", Duration::from_secs(10), || {
        (fleet.ledger_day(&key_id) - traced).abs() < 1e-9
    })
    .await;
    let ledger = fleet.ledger_day(&key_id);
    let one_request = fleet.scalar_f64(
        "SELECT max((payload_json::jsonb ->> 'cost_usd')::float8) FROM events
         WHERE type = 'llm.call_completed' AND payload_json::jsonb ->> 'gateway_key_id' = $1",
        &key_id,
    );
    eprintln!(
        "fleet cap: cap ${CAP}, traced spend ${traced:.6}, ledger ${ledger:.6}, overshoot \
         ${:.6} (one request ≤ ${one_request:.6})",
        traced - CAP
    );
    assert!(
        (traced - ledger).abs() < 1e-9,
        "ledger and trace agree: no double charge"
    );
    assert!(
        traced - CAP <= one_request,
        "overshoot {} exceeds one request's worth {one_request}",
        traced - CAP
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_key_rpm_limit_holds_across_three_replicas() {
    const RPM: u32 = 30;
    let fleet = Fleet::start(3, &["--rate-limit"]).await;
    let (_key_id, token) = fleet.issue("limited", &["--rpm", &RPM.to_string()]).await;
    // Known everywhere before the count starts, without probing: a probe would take a token
    // (the buckets run before authentication). Keys reach replicas within 2 s by design
    // (`a_revoke_through_one_replica_…` measures it).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let start = Instant::now();
    let mut admitted = 0u32;
    let mut denied = 0u32;
    for i in 0..90 {
        let (status, body) = fleet.call(i % 3, &token, &format!("r{i}")).await;
        match status {
            200 => admitted += 1,
            429 => {
                assert!(body.contains("rate"), "{body}");
                denied += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // A full bucket, its refill over the run, and one per replica.
    let bound = f64::from(RPM) + elapsed * f64::from(RPM) / 60.0 + 3.0;
    eprintln!(
        "fleet rpm: limit {RPM}/min, admitted {admitted} and denied {denied} in {elapsed:.1} s \
         across 3 replicas (bound {bound:.1})"
    );
    assert!(
        f64::from(admitted) <= bound,
        "admitted {admitted} > {bound}"
    );
    assert!(
        admitted >= RPM,
        "the bucket admits its capacity ({admitted})"
    );
    assert!(denied > 0);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_through_one_replica_reaches_the_others_within_two_seconds() {
    let fleet = Fleet::start(3, &[]).await;
    let (key_id, token) = fleet.issue("revoked", &[]).await;
    fleet.wait_known(&token).await;
    let start = Instant::now();
    let r = fleet
        .client
        .post(fleet.gateways[0].url_of(&format!("/admin/v1/keys/{key_id}/revoke")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = Vec::new();
    for i in 1..3 {
        loop {
            let (status, body) = fleet.call(i, &token, "still valid?").await;
            if status == 401 {
                assert!(body.contains("key_revoked"), "{body}");
                seen.push(start.elapsed());
                break;
            }
            assert_eq!(status, 200, "{body}");
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "still accepted after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "fleet revoke propagation: replica 1 {:?}, replica 2 {:?}",
        seen[0], seen[1]
    );
    assert!(
        seen.iter().all(|d| *d <= Duration::from_secs(2)),
        "{seen:?}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_on_any_replica_counts_the_whole_fleet_and_the_audit_chain_verifies() {
    const SENT: usize = 60;
    let fleet = Fleet::start(3, &[]).await;
    let (key_id, token) = fleet.issue("counted", &[]).await;
    fleet.wait_known(&token).await; // 3 calls
    let mut tasks = Vec::new();
    for i in 0..SENT - 3 {
        let (client, url, token) = (
            fleet.client.clone(),
            fleet.gateways[i % 3].url_of("/v1/chat/completions"),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&Combo::OPENAI_TO_OPENAI.body(&format!("u{i}"), false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    // Lifecycle operations through different replicas at the same time (audit writers).
    let mut lifecycle = Vec::new();
    for i in 0..6 {
        let (client, url) = (
            fleet.client.clone(),
            fleet.gateways[i % 3].url_of("/admin/v1/keys"),
        );
        lifecycle.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(ADMIN)
                .json(&serde_json::json!({"name": format!("audit-{i}"), "workspace": "/srv/ws"}))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    for t in lifecycle {
        let status = t.await.unwrap();
        assert!(matches!(status, 200 | 201), "create key: {status}");
    }
    let expected = u64::try_from(SENT).unwrap();
    for i in 0..3 {
        let start = Instant::now();
        loop {
            let usage = fleet
                .admin_get(i, &format!("/admin/v1/usage?group_by=key&key={key_id}"))
                .await;
            let calls: u64 = usage["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["calls"].as_u64().unwrap_or(0))
                .sum();
            if calls == expected {
                break;
            }
            assert!(
                calls < expected,
                "replica {i} counts {calls} > {expected} sent"
            );
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "replica {i} counts {calls} of {expected} after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let storage = fleet.storage();
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec!["audit".to_owned(), "verify".to_owned()];
        // `--store postgres --database-url …` (audit commands take no keystore).
        args.extend(storage.into_iter().take(4));
        metis(&args).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.code(), 0, "audit verify: {}", out.describe());
    eprintln!("fleet usage: {SENT} sent, {SENT} counted on each of 3 replicas; audit verify ok");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_leaves_the_others_serving() {
    let mut fleet = Fleet::start(3, &[]).await;
    let (victim_key, victim_token) = fleet.issue("victim", &[]).await;
    let (_, token) = fleet.issue("survivor", &[]).await;
    fleet.wait_known(&victim_token).await;
    fleet.wait_known(&token).await;
    // The victim replica only ever serves `victim_token`, so its acknowledged requests can be
    // matched with the events that reached the database.
    let victim_url = fleet.gateways[2].url_of("/v1/chat/completions");
    let client = fleet.client.clone();
    let victim_load = tokio::spawn(async move {
        let mut acknowledged = 0u64;
        for i in 0..10_000 {
            let r = client
                .post(&victim_url)
                .bearer_auth(&victim_token)
                .json(&Combo::OPENAI_TO_OPENAI.body(&format!("v{i}"), false))
                .send()
                .await;
            let Ok(r) = r else { break };
            if r.status() != 200 || r.text().await.is_err() {
                break;
            }
            acknowledged += 1;
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = fleet.gateways[2].pid;
    metis_tests::process::send_signal(pid, "KILL").unwrap();
    let acknowledged = victim_load.await.unwrap() + 1; // + the wait_known probe
    for i in 0..40 {
        let (status, body) = fleet.call(i % 2, &token, &format!("s{i}")).await;
        assert_eq!(status, 200, "replica {} after the kill: {body}", i % 2);
    }
    let written = u64::try_from(fleet.count_events("turn.completed", &victim_key)).unwrap();
    eprintln!(
        "fleet SIGKILL: the killed replica acknowledged {acknowledged} requests; {written} \
         reached the database; lost {} (those inside the last commit window; one more may be \
         written whose answer the kill cut off)",
        acknowledged.saturating_sub(written)
    );
    // The request in flight at the kill may have been committed without its answer reaching
    // the client (the load is sequential: at most one). Ids are primary keys, so nothing is
    // ever stored twice.
    assert!(
        written <= acknowledged + 1,
        "{written} written for {acknowledged} acknowledged (+1 in flight)"
    );
    fleet.gateways.remove(2);
    fleet.stop().await;
}

/// `scripts/pg-server.sh` with its own port and directory: a server this test may stop.
struct OwnServer {
    env: Vec<(&'static str, String)>,
}

impl OwnServer {
    fn run(&self, verb: &str) -> String {
        let script = metis_tests::process::workspace_root().join("scripts/pg-server.sh");
        let out = std::process::Command::new(script)
            .arg(verb)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-server.sh {verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.run("stop"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_mid_load_loses_and_double_charges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = metis_tests::process::free_port().unwrap();
    let server = OwnServer {
        env: vec![
            ("METIS_PG_PORT", port.to_string()),
            ("METIS_PG_DIR", dir.path().join("pg").display().to_string()),
        ],
    };
    let started = server.run("start");
    let admin_url = started
        .trim()
        .trim_start_matches("export METIS_TEST_DATABASE_URL=")
        .trim_matches('\'')
        .to_owned();
    let database = ScratchDatabase::create(&admin_url).unwrap();
    let fleet = Fleet::start_on(database, 2, &[]).await;
    let (free_id, free) = fleet.issue("uncapped", &[]).await;
    let (capped_id, capped) = fleet.issue("capped", &["--daily-cap-usd", "100"]).await;
    fleet.wait_known(&free).await;
    fleet.wait_known(&capped).await;

    server.run("halt");
    // The outage is the fleet's: each replica says so and stays in rotation.
    let mut free_ok = 0u64;
    let start = Instant::now();
    loop {
        let r = fleet
            .client
            .get(fleet.gateways[0].url_of("/readyz"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if body["status"] == "degraded" {
            assert_eq!(status, 200, "{body}");
            assert!(
                body["reason"].as_str().unwrap().contains("unreachable"),
                "{body}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never degraded: {body}"
        );
        // The writer notices on its next commit: give it one.
        let (status, body) = fleet.call(0, &free, "notice").await;
        assert_eq!(status, 200, "{body}");
        free_ok += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut capped_refused = 0u64;
    for i in 0..20 {
        let (status, body) = fleet.call(i % 2, &free, &format!("f{i}")).await;
        assert_eq!(status, 200, "an uncapped key is served from memory: {body}");
        free_ok += 1;
        let (status, body) = fleet.call(i % 2, &capped, &format!("c{i}")).await;
        assert_eq!(status, 503, "fail-closed refuses a capped key: {body}");
        assert!(body.contains("spend_store_unavailable"), "{body}");
        capped_refused += 1;
    }
    server.run("resume");
    // Both replicas recover: the capped key is served again.
    let start = Instant::now();
    for i in 0..2 {
        loop {
            let (status, _) = fleet.call(i, &capped, "back").await;
            if status == 200 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no recovery in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Every acknowledged uncapped request reaches the database, once.
    let expected_free = i64::try_from(free_ok).unwrap() + 2; // + the wait_known probes
    eventually(
        "queued events flow after reconnect",
        Duration::from_secs(20),
        || fleet.count_events("turn.completed", &free_id) >= expected_free,
    )
    .await;
    assert_eq!(
        fleet.count_events("turn.completed", &free_id),
        expected_free
    );
    // Settlements land after the response: wait for the ledger to catch up with the trace.
    eventually("the ledger settles", Duration::from_secs(10), || {
        (fleet.traced_cost(&capped_id) - fleet.ledger_day(&capped_id)).abs() < 1e-9
    })
    .await;
    let traced = fleet.traced_cost(&capped_id);
    let ledger = fleet.ledger_day(&capped_id);
    eprintln!(
        "fleet database outage: {free_ok} uncapped requests served from memory and written \
         after reconnect; {capped_refused} capped requests refused (503); capped spend traced \
         ${traced:.6} = ledger ${ledger:.6}"
    );
    assert!((traced - ledger).abs() < 1e-9, "no double charge");
    fleet.stop().await;
    drop(server);
}

/// Issue 20 across a fleet: the keys of one team, each capped daily, under parallel load
/// through three replicas. Every key stays within one request of its cap, and every request
/// is charged once to each scope account its key is tagged with (`user:…`, `team:…`) in the
/// shared database, whichever replica served it: the team's and users' rows equal the traced
/// spend of their keys. (Caps on the team itself come with the stored budgets, which the key
/// store carries; `budget_concurrency.rs` measures them on the admission layer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_keys_charge_their_user_and_team_accounts_once_across_three_replicas() {
    const CAP: f64 = 0.01;
    let fleet = Fleet::start(3, &[]).await;
    let mut keys = Vec::new();
    for (name, user) in [("k1", "ann"), ("k2", "ann"), ("k3", "bob"), ("k4", "bob")] {
        let (key_id, token) = fleet
            .issue(
                name,
                &[
                    "--daily-cap-usd",
                    &CAP.to_string(),
                    "--user",
                    user,
                    "--team",
                    "platform",
                ],
            )
            .await;
        keys.push((key_id, token, user));
    }
    for (_, token, _) in &keys {
        fleet.wait_known(token).await;
    }
    let mut refused_wave = false;
    for wave in 0..12 {
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (client, url, token) = (
                fleet.client.clone(),
                fleet.gateways[i % 3].url_of("/v1/chat/completions"),
                keys[i % keys.len()].1.clone(),
            );
            let mut body = Combo::OPENAI_TO_OPENAI.body(&format!("[slow:50] w{wave} q{i}"), false);
            body["max_tokens"] = 40.into();
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                (status, body)
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            let (status, body) = t.await.unwrap();
            if status == 429 {
                assert_eq!(body["error"]["scope"], "key_daily", "{body}");
            }
            statuses.push(status);
        }
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "only admits and cap refusals: {statuses:?}"
        );
        if statuses.iter().all(|s| *s == 429) {
            refused_wave = true;
            break;
        }
    }
    assert!(refused_wave, "the caps were never reached");
    let traced_total = |fleet: &Fleet| -> Vec<f64> {
        keys.iter()
            .map(|(id, _, _)| fleet.traced_cost(id))
            .collect()
    };
    let traced = {
        let mut last = Vec::new();
        eventually("the trace settles", Duration::from_secs(10), || {
            let now = traced_total(&fleet);
            let settled = now == last && now.iter().all(|c| *c > 0.0);
            last = now;
            settled
        })
        .await;
        last
    };
    let sum = |pick: &dyn Fn(&str) -> bool| -> f64 {
        keys.iter()
            .zip(&traced)
            .filter(|((_, _, user), _)| pick(user))
            .map(|(_, c)| c)
            .sum()
    };
    let (team, ann, bob) = (sum(&|_| true), sum(&|u| u == "ann"), sum(&|u| u == "bob"));
    eventually("the scope accounts settle", Duration::from_secs(10), || {
        (fleet.ledger_day("team:platform") - team).abs() < 1e-9
            && (fleet.ledger_day("user:ann") - ann).abs() < 1e-9
            && (fleet.ledger_day("user:bob") - bob).abs() < 1e-9
    })
    .await;
    let worst_key = traced.iter().copied().fold(f64::NEG_INFINITY, f64::max) - CAP;
    let one_request = keys
        .iter()
        .map(|(id, _, _)| {
            fleet.scalar_f64(
                "SELECT max((payload_json::jsonb ->> 'cost_usd')::float8) FROM events
                 WHERE type = 'llm.call_completed' AND payload_json::jsonb ->> 'gateway_key_id' = $1",
                id,
            )
        })
        .fold(0.0, f64::max);
    eprintln!(
        "fleet scopes: 4 keys of team platform, key cap ${CAP}: worst key overshoot ${worst_key:.6} \
         (one request ≤ ${one_request:.6}); team:platform ${team:.6}, user:ann ${ann:.6}, \
         user:bob ${bob:.6} = their keys' traced spend"
    );
    assert!(
        worst_key <= one_request,
        "key overshoot {worst_key} exceeds one request's worth {one_request}"
    );
    fleet.stop().await;
}

/// Issue 20 across a fleet, with the budgets stored: the four keys of team `platform` (two
/// users, each key capped daily), issued before three replicas start on one PostgreSQL
/// database (`--keystore store`); ann's daily budget set by the CLI into the database (every
/// replica enforces it within the key reload, counting the spend charged before it existed),
/// the team's monthly budget and ann's raised one through replica 0's admin API; then waves of
/// parallel calls through all three replicas. No level (key_daily, user_daily, team_monthly)
/// passes its cap by more than one request fleet-wide, refusals name the scope, and every
/// replica lists the budgets' spend equal to the traced spend (the scenario is
/// `budget_concurrency::scope_budgets_hold`, also run on single gateways).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_budgets_hold_across_three_replicas() {
    use crate::budget_concurrency::{SCOPE_KEYS, ScopeRun, scope_budgets_hold, scope_key_flags};
    let mut fleet = Fleet::start(0, &[]).await;
    let mut keys = Vec::new();
    for (i, (name, _, _)) in SCOPE_KEYS.iter().enumerate() {
        let flags = scope_key_flags(i);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        keys.push(fleet.issue(name, &flags).await);
    }
    for _ in 0..3 {
        fleet.add_replica(&[]).await;
    }
    let run = ScopeRun {
        label: "PostgreSQL, three replicas".to_owned(),
        client: fleet.client.clone(),
        urls: fleet.gateways.iter().map(|g| g.url.clone()).collect(),
        storage: fleet.storage(),
        keys,
        admin: ADMIN.to_owned(),
    };
    scope_budgets_hold(&run).await;
    fleet.stop().await;
}
