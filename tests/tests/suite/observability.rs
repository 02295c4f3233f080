//! Observability an SRE can adopt, proven against the real thing:
//!
//! - a real Prometheus (Debian's `prometheus`, on 127.0.0.1 with a temporary data dir and a
//!   1 s scrape interval) scrapes a gateway over in-process TLS while traffic goes through
//!   the fake upstream (successes in both shapes, a stream, upstream failures and a retried
//!   call, 429s from the rate limiter and the spend cap, auth failures, token counts, a key
//!   seen from many addresses); every query of every dashboard panel, evaluated through
//!   Prometheus's HTTP API, returns data; every alert rule of
//!   `infra/prometheus/metis-gateway.rules.yaml` evaluates without error against the real
//!   series, and the ones this traffic should trip are firing;
//! - `promtool check metrics` accepts a live scrape (format and naming lint);
//! - with 10,000 keys issued (through the keystore file, picked up by the running gateway)
//!   and each one used, the scrape stays within the documented series budget.
//!
//! Needs `prometheus` and `promtool` on PATH (`apt-get install prometheus`; `.ci/run`
//! installs it), or `METIS_PROMETHEUS` / `METIS_PROMTOOL` naming them.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use futures_util::StreamExt;
use metis_tests::certs::{PkiFiles, TestPki};
use metis_tests::{Combo, GatewayOptions, KeySpec, Shape, TestGateway};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `name` from its override variable or PATH, or a failure saying how to install it.
fn tool(var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` not found: install Prometheus (Debian/Ubuntu: `apt-get install prometheus`, as .ci/run does) or set {var}"
        )
    })
}

struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client that trusts the test CA only.
fn tls_client(pki: &TestPki) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(pki.ca_cert_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A real Prometheus scraping `target` (https, trusting `ca`) every second as job
/// `metis-gateway`, evaluating `rules` every second.
struct Prometheus {
    _child: Killer,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(dir: &Path, target: &str, ca: &Path, rules: &Path) -> Prometheus {
        let bin = tool("METIS_PROMETHEUS", "prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: metis-gateway\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rules.display(),
                ca = ca.display(),
            ),
        )
        .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        // Prometheus cannot report a port it picked itself: take a free one, release it and
        // hand it over, retrying if something else grabbed it in between.
        for attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = std::fs::File::create(dir.join(format!("prometheus-{attempt}.log"))).unwrap();
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut child = Killer(child);
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if child.0.try_wait().unwrap().is_some() {
                    break;
                }
                if let Ok(r) = http.get(format!("{base}/-/ready")).send().await
                    && r.status().is_success()
                {
                    return Prometheus {
                        _child: child,
                        base,
                        http,
                    };
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = child.0.kill();
        }
        let log = std::fs::read_to_string(dir.join("prometheus-2.log")).unwrap_or_default();
        panic!("Prometheus did not become ready:\n{log}");
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let r = self
            .http
            .get(format!("{}{path}?{}", self.base, qs.join("&")))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.get("/api/v1/query", &[("query", expr)]).await;
        match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![json!({"metric": {}, "value": data["result"]})],
            other => panic!("{expr}: unexpected result type {other:?}"),
        }
    }

    /// Wait until the gateway target has been scraped at least `n` more times.
    async fn wait_scrapes(&self, n: u32) {
        let count = || async {
            self.query(r#"count_over_time(up{job="metis-gateway"}[10m])"#)
                .await
                .first()
                .and_then(|s| s["value"][1].as_str().map(str::to_owned))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let start = count().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while count().await < start + f64::from(n) {
            assert!(Instant::now() < deadline, "Prometheus stopped scraping");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Percent-encode a query parameter (everything but RFC 3986 unreserved characters).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn sample_value(s: &Value) -> f64 {
    s["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// One round of every kind of traffic the dashboard shows.
async fn drive_traffic(
    client: &reqwest::Client,
    base: &str,
    keys: &BTreeMap<&str, String>,
    round: u32,
) {
    let post = |path: &str, token: &str, body: Value, xff: Option<String>| {
        let mut req = client
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .header("anthropic-version", "2023-06-01")
            .json(&body);
        if let Some(ip) = xff {
            req = req.header("x-forwarded-for", ip);
        }
        req.send()
    };
    let status = |r: reqwest::Response| async move {
        let s = r.status().as_u16();
        let _ = r.bytes().await;
        s
    };
    let team = &keys["team"];
    // Successes in both shapes, and a stream (time to first token).
    for combo in [Combo::OPENAI_TO_ANTHROPIC, Combo::ANTHROPIC_TO_ANTHROPIC] {
        let path = combo.client.gateway_path();
        let body = combo.body(&format!("hello round {round}"), false);
        assert_eq!(
            status(post(path, team, body, None).await.unwrap()).await,
            200
        );
    }
    let body = Combo::ANTHROPIC_TO_ANTHROPIC.body("stream please", true);
    let r = post(Shape::Anthropic.gateway_path(), team, body, None)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("message_stop"), "{text}");
    // An upstream failure (retried, then given up) and a call that succeeds on its retry.
    let body = Combo::ANTHROPIC_TO_ANTHROPIC.body("break [status:500]", false);
    let s = status(
        post(Shape::Anthropic.gateway_path(), team, body, None)
            .await
            .unwrap(),
    )
    .await;
    assert!(s >= 500, "upstream failure answered {s}");
    let body = Combo::ANTHROPIC_TO_ANTHROPIC.body(&format!("flaky {round} [fail-once:503]"), false);
    assert_eq!(
        status(
            post(Shape::Anthropic.gateway_path(), team, body, None)
                .await
                .unwrap()
        )
        .await,
        200
    );
    // Token counts.
    let body = json!({"model": "haiku", "messages": [{"role": "user", "content": "count me"}]});
    assert_eq!(
        status(
            post("/v1/messages/count_tokens", team, body, None)
                .await
                .unwrap()
        )
        .await,
        200
    );
    // Authentication failures.
    let body = Combo::OPENAI_TO_ANTHROPIC.body("who am I", false);
    assert_eq!(
        status(
            post("/v1/chat/completions", "gw_not_a_key", body.clone(), None)
                .await
                .unwrap()
        )
        .await,
        401
    );
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(status(r).await, 401);
    // Rate limit: the `limited` key allows 2 requests a minute.
    let mut limited = 0;
    for _ in 0..3 {
        let body = Combo::OPENAI_TO_ANTHROPIC.body("limited", false);
        if status(
            post("/v1/chat/completions", &keys["limited"], body, None)
                .await
                .unwrap(),
        )
        .await
            == 429
        {
            limited += 1;
        }
    }
    assert!(limited >= 1, "the per-key bucket refused nothing");
    // Spend cap: the `capped` key spends past its tiny daily cap (alerts, then 429).
    let mut capped = 0;
    for i in 0..6 {
        let body = Combo::OPENAI_TO_ANTHROPIC.body(&format!("spend {round} {i}"), false);
        if status(
            post("/v1/chat/completions", &keys["capped"], body, None)
                .await
                .unwrap(),
        )
        .await
            == 429
        {
            capped += 1;
        }
    }
    assert!(capped >= 1, "the spend cap refused nothing");
    // A key used from more client addresses than the leak threshold (10 per hour).
    for i in 0..12 {
        let body = Combo::OPENAI_TO_ANTHROPIC.body("from everywhere", false);
        let ip = format!("203.0.113.{}", round * 20 + i + 1);
        assert_eq!(
            status(
                post("/v1/chat/completions", &keys["leaky"], body, Some(ip))
                    .await
                    .unwrap()
            )
            .await,
            200
        );
    }
}

fn tls_args(files: &PkiFiles) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        files.leaf_cert.display().to_string(),
        "--tls-key".into(),
        files.leaf_key.display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_gateway_and_every_dashboard_panel_and_alert_rule_evaluates() {
    let promtool = tool("METIS_PROMTOOL", "promtool");
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate().unwrap();
    let files = pki.write_to(dir.path()).unwrap();
    let spec = |name: &str| KeySpec {
        name: name.into(),
        ..KeySpec::default()
    };
    let mut extra_args = tls_args(&files);
    extra_args.extend(
        [
            "--rate-limit",
            "--trusted-proxy",
            "127.0.0.1/32",
            "--upstream-retries",
            "1",
        ]
        .map(String::from),
    );
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_keys: vec![
            KeySpec {
                user: Some("alice".into()),
                team: Some("platform".into()),
                ..spec("team")
            },
            KeySpec {
                rpm: Some(2),
                user: Some("bob".into()),
                team: Some("research".into()),
                ..spec("limited")
            },
            KeySpec {
                daily_cap_usd: Some("0.0001".into()),
                ..spec("capped")
            },
            spec("leaky"),
        ],
        extra_args,
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let keys: BTreeMap<&str, String> = ["team", "limited", "capped", "leaky"]
        .into_iter()
        .map(|k| (k, gw.key_named(k).token.clone()))
        .collect();
    let target = format!("127.0.0.1:{}", gw.addr.port());
    let base = format!("https://{target}");
    let client = tls_client(&pki);
    let rules = repo().join("infra/prometheus/metis-gateway.rules.yaml");
    let prom = Prometheus::start(dir.path(), &target, &files.ca_cert, &rules).await;
    prom.wait_scrapes(2).await;

    // Two rounds of traffic with scrapes in between, so every counter has a rate.
    let started = Instant::now();
    drive_traffic(&client, &base, &keys, 0).await;
    prom.wait_scrapes(3).await;
    drive_traffic(&client, &base, &keys, 1).await;
    prom.wait_scrapes(3).await;
    eprintln!(
        "traffic and scrapes: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // promtool check metrics on a live scrape: format and naming lint.
    let scrape = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && lint.trim().is_empty(),
        "promtool check metrics: {:?}\n{lint}",
        out.status
    );

    // The dashboard's variables find the job and the instance.
    let jobs = prom
        .get(
            "/api/v1/label/job/values",
            &[("match[]", "metis_build_info")],
        )
        .await;
    assert_eq!(jobs, json!(["metis-gateway"]));

    // Every panel query returns data, with at least one finite value.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("infra/gateway/helm/dashboards/metis-gateway.json"))
            .unwrap(),
    )
    .unwrap();
    let mut evaluated = 0;
    let mut empty = Vec::new();
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$job", "metis-gateway")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m");
            let result = prom.query(&expr).await;
            evaluated += 1;
            let finite: Vec<f64> = result
                .iter()
                .map(sample_value)
                .filter(|v| v.is_finite())
                .collect();
            if finite.is_empty() {
                empty.push(format!(
                    "{title} [{}]: {expr} -> {result:?}",
                    target["refId"]
                ));
            }
            let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            values.insert(
                format!("{title} {}", target["refId"].as_str().unwrap()),
                max,
            );
        }
    }
    assert!(evaluated >= 50, "only {evaluated} queries");
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
    // The traffic above shows up where it should, not only as zeros.
    for (panel, what) in [
        ("Rate-limit denials A", "429s from the per-key bucket"),
        ("Authentication failures by reason A", "401s"),
        ("Upstream retries A", "the retried calls"),
        ("Upstream failures by class A", "the failed calls"),
        ("Spend-cap events A", "cap alerts and refusals"),
        ("Key leak signals in the time range A", "the leak signal"),
        ("Token counts by method A", "count_tokens"),
        ("Time to first token by model A", "the streams"),
        (
            "Cap utilisation (keys nearest their caps) A",
            "the capped key",
        ),
        ("5xx ratio A", "the upstream failures"),
        ("TLS certificate expires in A", "the in-process certificate"),
        ("Top keys by cost (USD per hour) A", "per-key spend"),
    ] {
        let v = values[panel];
        assert!(v > 0.0, "{panel} should show {what}, got {v}");
    }
    eprintln!("{evaluated} panel queries returned data");

    // Every alert rule evaluates against the real series without error; the ones this
    // traffic trips (for: 0m) fire, and the certificate (valid for centuries) does not.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = prom.get("/api/v1/rules", &[]).await;
        let rules: Vec<Value> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(rules.len(), 13, "{groups}");
        let unhealthy: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        let firing: BTreeSet<String> = rules
            .iter()
            .filter(|r| r["state"] == "firing")
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        let want: BTreeSet<String> = ["MetisKeyNearSpendCap", "MetisKeyLeakSuspected"]
            .map(String::from)
            .into();
        let evaluated = rules.iter().all(|r| r["health"] != "unknown");
        if evaluated && unhealthy.is_empty() && firing == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules: unhealthy {unhealthy:?}, firing {firing:?} (want {want:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The series the exporter may hold for the families that grow with keys, users and teams
/// (README "Observability", docs/observability.md): with `m` models used.
fn key_dependent_budget(m: usize) -> BTreeMap<&'static str, usize> {
    let (top_keys, users, teams) = (20, 100, 50);
    BTreeMap::from([
        ("metis_tokens_total", (teams + 2) * m * 4),
        ("metis_cost_usd_total", (teams + 2) * m),
        ("metis_user_tokens_total", (users + 2) * 4),
        ("metis_user_cost_usd_total", users + 2),
        ("metis_key_tokens_total", top_keys * m * 4),
        ("metis_key_cost_usd_total", top_keys * m),
        ("metis_quota_used_ratio", top_keys),
        ("metis_quota_keys", 6),
    ])
}

/// Sample lines of the scrape by family (histogram suffixes folded into their family).
fn series_by_family(scrape: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        *out.entry(name.to_owned()).or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_used_stay_within_the_series_budget() {
    const KEYS: usize = 10_000;
    let gw = TestGateway::spawn().await.unwrap();
    // Issue the keys in bulk through the keystore file, as an operator's tooling would:
    // the running gateway picks the new file up (file watch).
    let started = Instant::now();
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&gw.keystore).unwrap()).unwrap();
    let entries = doc["keys"].as_array_mut().unwrap();
    let mut tokens = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let token = format!("gw_bulk{i:032x}");
        entries.push(json!({
            "key_id": format!("gk_{i:026}"),
            "secret_hash": metis_domain::keys::hash_token(&token),
            "name": format!("bulk-{i}"),
            "workspace_path": "/bulk",
            "created_at": "2026-01-01T00:00:00+00:00",
            "daily_cap_usd": "5.00",
            "user_id": format!("user-{i}"),
            "team_id": format!("team-{}", i % 100),
            "status": "active",
        }));
        tokens.push(token);
    }
    let tmp = gw.keystore.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&doc).unwrap()).unwrap();
    std::fs::rename(&tmp, &gw.keystore).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = gw.request(reqwest::Method::GET, "/metrics").await.text;
        if m.contains(&format!("metis_gateway_keys_active {}", KEYS + 1)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not load the keys"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let issued = started.elapsed();

    // Use every key once, 32 at a time.
    let started = Instant::now();
    let body = Combo::OPENAI_TO_ANTHROPIC.body("one call per key", false);
    let statuses: Vec<u16> = futures_util::stream::iter(tokens.iter())
        .map(|t| {
            let req = gw
                .client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(t)
                .json(&body);
            async move {
                match req.send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => 0,
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let used = started.elapsed();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, KEYS, "every key answered 200");

    let started = Instant::now();
    let scrape = gw.request(reqwest::Method::GET, "/metrics").await.text;
    let scrape_time = started.elapsed();
    let families = series_by_family(&scrape);
    let total: usize = families.values().sum();
    let models: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("metis_cost_usd_total{"))
        .filter_map(|l| l.split("model=\"").nth(1)?.split('"').next())
        .collect();
    assert!(!models.is_empty(), "{scrape}");
    let budget = key_dependent_budget(models.len());
    for (family, limit) in &budget {
        let n = families.get(*family).copied().unwrap_or(0);
        assert!(n <= *limit, "{family}: {n} series, budget {limit}");
        assert!(n > 0, "{family} missing");
    }
    assert!(
        scrape.contains("metis_metrics_folded_total{label=\"user\"} 9900"),
        "users beyond the budget folded"
    );
    // Key ids become label values only for the top spenders and the keys nearest their
    // caps: at most 2 x --metrics-top-keys distinct ids, whatever the number of keys.
    let key_labels: BTreeSet<&str> = scrape
        .lines()
        .filter_map(|l| l.split("gateway_key_id=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        key_labels.len() <= 2 * 20,
        "{} distinct key labels",
        key_labels.len()
    );
    // Everything else is independent of the number of keys (routes, providers, models,
    // statuses, process and store gauges): a few hundred lines at most.
    let dependent: usize = budget.keys().filter_map(|f| families.get(*f)).sum();
    let independent = total - dependent;
    assert!(independent < 400, "{independent} key-independent series");
    eprintln!(
        "{KEYS} keys: issued via the keystore file and loaded in {:.1}s, used in {:.1}s ({:.0} req/s); scrape {:.0} ms, {} bytes, {total} series ({dependent} key/user/team-dependent, budget {}; {independent} other); models {models:?}",
        issued.as_secs_f64(),
        used.as_secs_f64(),
        KEYS as f64 / used.as_secs_f64(),
        scrape_time.as_secs_f64() * 1000.0,
        scrape.len(),
        budget.values().sum::<usize>(),
    );
}
