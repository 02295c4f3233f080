//! The admin endpoints the operator console reads, through the real server: the live
//! overview after real requests (one provider failing), usage series (every bucket present,
//! sums equal to `/admin/v1/usage`, the 744-bucket cap), the audit chain check (ok, then
//! broken once a stored event is altered), the audit download (the bytes of `metis audit
//! export`), and sessions with their worker tree.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use metis_tests::gateway::{Reply, chat_body};
use metis_tests::{GatewayOptions, KeySpec, Shape, TestGateway};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ADMIN: &str = "console-api-test-token-4be1d07a";

async fn with_admin(opts: GatewayOptions) -> TestGateway {
    let mut opts = opts;
    opts.extra_args
        .extend(["--admin-token".to_owned(), ADMIN.to_owned()]);
    TestGateway::spawn_with(opts).await.unwrap()
}

async fn get_as(gw: &TestGateway, path: &str, auth: Option<&str>) -> Reply {
    let mut req = gw.client().get(gw.url(path));
    if let Some(a) = auth {
        req = req.bearer_auth(a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Reply {
        status,
        headers,
        text,
        body_error: None,
    }
}

async fn get(gw: &TestGateway, path: &str) -> Reply {
    get_as(gw, path, Some(ADMIN)).await
}

async fn get_ok(gw: &TestGateway, path: &str) -> Value {
    let r = get(gw, path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text);
    r.json()
}

async fn chat(gw: &TestGateway, token: &str, model: &str) -> u16 {
    gw.post_as(
        Shape::OpenAi,
        token,
        &chat_body(Shape::OpenAi, model, "console api", false),
    )
    .await
    .status
}

/// Poll `/admin/v1/usage` until it counts `calls` calls, completed or failed (the trace writer
/// commits in batches).
async fn usage_with(gw: &TestGateway, query: &str, calls: u64) -> Value {
    let start = Instant::now();
    loop {
        let v = get_ok(gw, &format!("/admin/v1/usage?{query}")).await;
        let seen: u64 = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["calls"].as_u64().unwrap() + r["failed_calls"].as_u64().unwrap())
            .sum();
        if seen >= calls {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "usage: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sum(rows: &Value, field: &str) -> f64 {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r[field].as_f64().unwrap())
        .sum()
}

const NEW_ROUTES: [&str; 6] = [
    "/admin/v1/overview",
    "/admin/v1/usage/series",
    "/admin/v1/audit/verify",
    "/admin/v1/audit/export",
    "/admin/v1/sessions",
    "/admin/v1/sessions/any-session",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_routes_need_the_admin_token_and_exist_only_with_one() {
    let gw = TestGateway::spawn().await.unwrap();
    for path in NEW_ROUTES {
        let r = get_as(&gw, path, Some(ADMIN)).await;
        assert_eq!(r.status, 404, "{path} without an admin token configured");
    }
    let gw = with_admin(GatewayOptions::default()).await;
    for path in NEW_ROUTES {
        let r = get_as(&gw, path, None).await;
        assert_eq!(r.status, 401, "{path} without a bearer: {}", r.text);
        let r = get_as(&gw, path, Some(&gw.key.token)).await;
        assert_eq!(r.status, 401, "{path} with a gateway key: {}", r.text);
        assert_eq!(
            r.json()["error"]["code"],
            "invalid_admin_token",
            "{}",
            r.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_requests_errors_tokens_and_provider_health() {
    // OpenAI points at a closed port: every gpt-5 call fails (network, 502); Anthropic works.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = with_admin(GatewayOptions {
        openai_base_url: Some(format!("http://127.0.0.1:{closed}/v1")),
        extra_args: vec!["--upstream-retries".into(), "0".into()],
        ..GatewayOptions::default()
    })
    .await;
    let before = get_ok(&gw, "/admin/v1/overview").await;
    assert_eq!(before["replica_scope"], "this_process");
    assert_eq!(before["windows"]["hour"]["requests"], 0, "{before}");
    assert_eq!(before["windows"]["hour"]["p50_ms"], Value::Null, "{before}");
    for p in before["providers"].as_array().unwrap() {
        assert_eq!(p["status"], "idle", "{before}");
        assert_eq!(p["last_success_at"], Value::Null, "{before}");
    }

    const OK: u64 = 4;
    const FAILING: u64 = 3;
    for _ in 0..OK {
        assert_eq!(chat(&gw, &gw.key.token, "haiku").await, 200);
    }
    for _ in 0..FAILING {
        assert_eq!(chat(&gw, &gw.key.token, "gpt-5").await, 502);
    }
    // Not provider traffic: a model list and a refused key are not counted.
    assert_eq!(
        gw.request(reqwest::Method::GET, "/v1/models").await.status,
        401
    );

    let o = get_ok(&gw, "/admin/v1/overview").await;
    let hour = &o["windows"]["hour"];
    assert_eq!(hour["requests"], OK + FAILING, "{o}");
    assert_eq!(hour["errors"], FAILING, "{o}");
    assert_eq!(hour["upstream_failures"], FAILING, "{o}");
    assert!(hour["p50_ms"].as_f64().unwrap() >= 1.0, "{o}");
    assert!(
        hour["p99_ms"].as_f64().unwrap() >= hour["p50_ms"].as_f64().unwrap(),
        "{o}"
    );
    assert_eq!(
        o["windows"]["day"], *hour,
        "everything happened this hour: {o}"
    );
    assert!(o["uptime_seconds"].as_u64().is_some(), "{o}");
    assert_eq!(o["health_window_seconds"], 300, "{o}");

    // Tokens and cost are the ones the trace records for the same calls.
    let usage = usage_with(&gw, "group_by=key", OK + FAILING).await;
    let rows = &usage["rows"];
    assert_eq!(
        hour["input_tokens"].as_f64().unwrap(),
        sum(rows, "input_tokens"),
        "{o} {usage}"
    );
    assert_eq!(
        hour["output_tokens"].as_f64().unwrap(),
        sum(rows, "output_tokens"),
        "{o} {usage}"
    );
    assert!(sum(rows, "output_tokens") > 0.0, "{usage}");
    let cost = hour["cost_usd"].as_f64().unwrap();
    assert!(
        cost > 0.0 && (cost - sum(rows, "cost_usd")).abs() < 1e-6,
        "{o} {usage}"
    );

    let provider = |name: &str| {
        o["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["provider"] == name)
            .unwrap_or_else(|| panic!("{name} listed: {o}"))
            .clone()
    };
    let anthropic = provider("anthropic");
    assert_eq!(anthropic["calls"], OK, "{o}");
    assert_eq!(anthropic["failures"], 0, "{o}");
    assert_eq!(anthropic["status"], "healthy", "{o}");
    assert!(anthropic["last_success_at"].is_string(), "{o}");
    assert_eq!(anthropic["last_error"], Value::Null, "{o}");
    let openai = provider("openai");
    assert_eq!(
        (openai["calls"].clone(), openai["failures"].clone()),
        (json!(FAILING), json!(FAILING)),
        "{o}"
    );
    assert_eq!(openai["status"], "down", "{o}");
    assert_eq!(openai["last_error"], "network", "{o}");
    assert!(openai["last_failure_at"].is_string(), "{o}");
    assert_eq!(openai["last_success_at"], Value::Null, "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_series_have_every_bucket_and_sum_to_the_usage_report() {
    let gw = with_admin(GatewayOptions {
        extra_keys: vec![KeySpec {
            name: "alice".into(),
            user: Some("alice".into()),
            ..KeySpec::default()
        }],
        ..GatewayOptions::default()
    })
    .await;
    let alice = gw.key_named("alice").clone();
    for (token, model) in [
        (&alice.token, "gpt-5"),
        (&alice.token, "haiku"),
        (&gw.key.token, "gpt-5"),
    ] {
        assert_eq!(chat(&gw, token, model).await, 200);
    }
    // The usage report's default window (7 days) holds every call of this fresh store.
    let report = usage_with(&gw, "group_by=key", 3).await;

    for (query, buckets) in [("bucket=hour", 25), ("bucket=day", 31)] {
        let v = get_ok(&gw, &format!("/admin/v1/usage/series?{query}&group_by=key")).await;
        assert_eq!(v["group_by"], "key", "{v}");
        let series = v["series"].as_array().unwrap();
        assert_eq!(series.len(), 2, "one series per key: {v}");
        for s in series {
            let points = s["points"].as_array().unwrap();
            assert_eq!(points.len(), buckets, "{query}: every bucket present: {v}");
            let busy = points
                .iter()
                .filter(|p| p["calls"].as_u64() > Some(0))
                .count();
            assert!((1..=2).contains(&busy), "{query}: {v}");
            assert!(
                points
                    .iter()
                    .any(|p| p["calls"] == 0 && p["cost_usd"] == 0.0),
                "{query}: empty buckets are zeros: {v}"
            );
            let row = report["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["group"] == s["group"])
                .unwrap_or_else(|| panic!("{} in the report: {report}", s["group"]));
            for field in ["calls", "failed_calls", "input_tokens", "output_tokens"] {
                let total: u64 = points.iter().map(|p| p[field].as_u64().unwrap()).sum();
                assert_eq!(json!(total), row[field], "{query} {field}: {v} vs {report}");
            }
            let cost: f64 = points.iter().map(|p| p["cost_usd"].as_f64().unwrap()).sum();
            assert!(
                (cost - row["cost_usd"].as_f64().unwrap()).abs() < 1e-9,
                "{v}"
            );
        }
        // Buckets start on boundaries and follow each other.
        let starts: Vec<i64> = series[0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| metis_domain::time::parse_iso(p["start"].as_str().unwrap()).unwrap())
            .collect();
        let width = if query == "bucket=hour" {
            3_600
        } else {
            86_400
        } * 1_000_000i64;
        assert_eq!(starts[0] % width, 0, "{v}");
        assert!(starts.windows(2).all(|w| w[1] - w[0] == width), "{v}");
        assert_eq!(v["since"], series[0]["points"][0]["start"], "{v}");
    }

    // A filter and another grouping.
    let v = get_ok(&gw, "/admin/v1/usage/series?group_by=model&user=alice").await;
    let calls: u64 = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["points"].as_array().unwrap().iter())
        .map(|p| p["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(calls, 2, "alice's two calls: {v}");

    // 744 buckets are served (31 days of hours); one more is refused, naming the limit.
    let v = get_ok(
        &gw,
        "/admin/v1/usage/series?bucket=hour&since=2026-01-01T00:00:00Z&until=2026-02-01T00:00:00Z",
    )
    .await;
    assert_eq!(v["series"], json!([]), "nothing in that window: {v}");
    for q in [
        "bucket=hour&since=2026-01-01T00:00:00Z&until=2026-02-01T00:30:00Z",
        "bucket=day&since=2020-01-01T00:00:00Z&until=2023-01-01T00:00:00Z",
    ] {
        let r = get(&gw, &format!("/admin/v1/usage/series?{q}")).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("744"),
            "{}",
            r.text
        );
    }
    for q in [
        "bucket=week",
        "group_by=colour",
        "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
        "user=alice&team=eng",
        "since=yesterday",
    ] {
        let r = get(&gw, &format!("/admin/v1/usage/series?{q}")).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
    }
}

/// The audit download of the running gateway, and the same window through `metis audit
/// export`'s own code over the same store.
async fn export_pair(gw: &TestGateway, format: &str, extra: &str) -> (Reply, String) {
    let (since, until) = ("2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z");
    let r = get(
        gw,
        &format!("/admin/v1/audit/export?format={format}&since={since}&until={until}{extra}"),
    )
    .await;
    let types: Vec<String> = extra.split("&type=").skip(1).map(str::to_owned).collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("export.{format}"));
    let backend = gw.paths().backend().unwrap();
    let fmt = if format == "csv" {
        metis::audit_cli::ExportFormat::Csv
    } else {
        metis::audit_cli::ExportFormat::Jsonl
    };
    let db = gw.db_path.clone();
    let window = (
        metis_domain::time::parse_iso(since).unwrap(),
        metis_domain::time::parse_iso(until).unwrap(),
    );
    let out2 = out.clone();
    tokio::task::spawn_blocking(move || {
        let selection = metis::audit_cli::select_types(&types).unwrap();
        metis::audit_cli::export(
            (&db, backend.as_ref()),
            &out2,
            fmt,
            window,
            &selection,
            false,
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    })
    .await
    .unwrap();
    (r, std::fs::read_to_string(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_and_download_match_the_cli_and_see_a_tampered_row() {
    let gw = with_admin(GatewayOptions::default()).await;
    let r = gw
        .client()
        .post(gw.url("/admin/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "console", "workspace": "/srv/console"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let key_id = r.json::<Value>().await.unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = gw
        .client()
        .post(gw.url(&format!("/admin/v1/keys/{key_id}/revoke")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let v = get_ok(&gw, "/admin/v1/audit/verify").await;
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["events_checked"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["first_break"], Value::Null, "{v}");
    assert!(v["checked_at"].is_string(), "{v}");

    let (r, cli) = export_pair(&gw, "jsonl", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.content_type(), "application/x-ndjson");
    let disposition = r.header("content-disposition").unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"metis-audit-")
            && disposition.ends_with(".jsonl\""),
        "{disposition}"
    );
    assert_eq!(r.text, cli, "the download is the CLI's export");
    assert!(
        r.text.contains("gateway.key_issued") && r.text.contains("gateway.key_revoked"),
        "{}",
        r.text
    );

    let (r, cli) = export_pair(&gw, "csv", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.content_type().starts_with("text/csv"),
        "{}",
        r.content_type()
    );
    assert!(r.header("content-disposition").unwrap().ends_with(".csv\""));
    assert_eq!(r.text, cli);
    assert!(r.text.starts_with("id,timestamp,session_id,"), "{}", r.text);

    let (r, cli) = export_pair(
        &gw,
        "jsonl",
        "&type=gateway.key_revoked&type=llm.call_completed",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text, cli);
    assert_eq!(r.text.lines().count(), 1, "only the revoke: {}", r.text);

    for q in [
        "type=gateway.key_issed",
        "format=xml",
        "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
    ] {
        let r = get(&gw, &format!("/admin/v1/audit/export?{q}")).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert!(r.content_type().starts_with("application/json"), "{q}");
    }

    // Alter the stored issue event behind the gateway's back: the chain no longer verifies.
    let Some(tampered) = tamper(&gw).await else {
        eprintln!(
            "the tamper step needs SQL access: SQLite or PostgreSQL, not {}",
            gw.store.name()
        );
        return;
    };
    let v = get_ok(&gw, "/admin/v1/audit/verify").await;
    assert_eq!(v["ok"], false, "{v}");
    // The chain breaks at the row after the altered one (its stored link no longer matches).
    assert!(
        v["first_break"]["problem"]
            .as_str()
            .unwrap()
            .contains("modified"),
        "{v}"
    );
    assert_ne!(v["first_break"]["event_id"], json!(tampered), "{v}");
    assert!(
        v["first_break"]["expected_seq"].as_u64().unwrap() >= 2,
        "{v}"
    );
}

/// Rename the `console` key in its stored `gateway.key_issued` payload, through SQL (the
/// file engines' other one, redb, has no SQL: `None`). Returns the altered event's id.
async fn tamper(gw: &TestGateway) -> Option<String> {
    const FIND: &str = "SELECT id FROM events WHERE type = 'gateway.key_issued' AND payload_json LIKE '%\"console\"%'";
    let update = |id: &str| {
        format!(
            "UPDATE events SET payload_json = replace(payload_json, '\"console\"', '\"c0nsole\"') WHERE id = '{id}'"
        )
    };
    match gw.store {
        metis::store::StoreKind::Sqlite => {
            let db = gw.db_path.clone();
            let id = tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(&db).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                let id: String = conn.query_row(FIND, [], |r| r.get(0)).unwrap();
                assert_eq!(conn.execute(&update(&id), []).unwrap(), 1);
                id
            })
            .await
            .unwrap();
            Some(id)
        }
        metis::store::StoreKind::Postgres => {
            let url = gw.database.database_url.clone().unwrap();
            let config =
                metis_storage_postgres::PgConfig::new(&url, 1, Duration::from_secs(30)).unwrap();
            let db = metis_storage_postgres::Db::new(config).unwrap();
            let id: String = db
                .with_connection(|c| async move { c.query_one(FIND, &[]).await.map(|r| r.get(0)) })
                .await
                .unwrap();
            let sql = update(&id);
            let changed = db
                .with_connection(move |c| async move { c.execute(&sql, &[]).await })
                .await
                .unwrap();
            assert_eq!(changed, 1);
            Some(id)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_and_the_worker_tree() {
    let gw = with_admin(GatewayOptions::default()).await;
    let turn = |session: &'static str, parent: Option<&'static str>| {
        let gw = &gw;
        async move {
            let mut req = gw
                .client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&gw.key.token)
                .header("x-metis-session-id", session)
                .json(&chat_body(Shape::OpenAi, "gpt-5", "tree", false));
            if let Some(p) = parent {
                req = req
                    .header("x-metis-parent-session-id", p)
                    .header("x-metis-parent-tool-use-id", format!("toolu_{session}"))
                    .header("x-metis-worker", "true");
            }
            assert_eq!(
                req.send().await.unwrap().status().as_u16(),
                200,
                "{session}"
            );
        }
    };
    turn("lead-1", None).await;
    turn("lead-1", None).await;
    turn("worker-a", Some("lead-1")).await;
    turn("worker-b", Some("lead-1")).await;
    turn("worker-a1", Some("worker-a")).await;
    turn("other-1", None).await;

    let v = get_ok(&gw, "/admin/v1/sessions").await;
    let ids: Vec<&str> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "{v}");
    assert_eq!(ids[0], "other-1", "most recently updated first: {v}");
    let lead = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "lead-1")
        .unwrap();
    assert_eq!(lead["turn_count"], 2, "{v}");
    assert_eq!(lead["is_worker"], false, "{v}");
    assert_eq!(lead["parent_session_id"], Value::Null, "{v}");
    let workspace = lead["workspace_path"].as_str().unwrap().to_owned();
    let v = get_ok(&gw, "/admin/v1/sessions?limit=2").await;
    assert_eq!(v["sessions"].as_array().unwrap().len(), 2, "{v}");
    let v = get_ok(&gw, "/admin/v1/sessions?workspace=/nowhere").await;
    assert_eq!(v["sessions"], json!([]), "{v}");
    let v = get_ok(
        &gw,
        &format!("/admin/v1/sessions?workspace={}", urlencode(&workspace)),
    )
    .await;
    assert_eq!(v["sessions"].as_array().unwrap().len(), 5, "{v}");

    let t = get_ok(&gw, "/admin/v1/sessions/lead-1").await;
    assert_eq!(t["id"], "lead-1", "{t}");
    assert_eq!(t["turn_count"], 2, "{t}");
    assert_eq!(t["subtree_sessions"], 4, "{t}");
    let kids: Vec<&str> = t["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["worker-a", "worker-b"], "oldest first: {t}");
    let a = &t["children"][0];
    assert_eq!(a["is_worker"], true, "{t}");
    assert_eq!(a["parent_session_id"], "lead-1", "{t}");
    assert_eq!(a["parent_tool_use_id"], "toolu_worker-a", "{t}");
    assert_eq!(a["children"][0]["id"], "worker-a1", "{t}");
    assert_eq!(a["children"][0]["children"], json!([]), "{t}");
    let own = |n: &Value| n["cost_so_far_usd"].as_f64().unwrap();
    let total = own(&t) + own(a) + own(&t["children"][1]) + own(&a["children"][0]);
    assert!(own(&t) > 0.0, "{t}");
    assert!(
        (t["subtree_cost_usd"].as_f64().unwrap() - total).abs() < 1e-9,
        "{t}"
    );

    let r = get(&gw, "/admin/v1/sessions/no-such-session").await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = get(&gw, "/admin/v1/sessions/bad%20id").await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = get(&gw, "/admin/v1/sessions?limit=0").await;
    assert_eq!(r.status, 400, "{}", r.text);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
