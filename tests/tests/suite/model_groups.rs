//! Model access groups and budget allow-lists against the real binary (issue 20 item 5): a
//! key allowed `group:cheap` may use a model added to the group by another process (the CLI)
//! within 2 s, with no key edited; a team budget's allow-list limits every key of the team
//! (the 403 names the team); an unknown group is refused when a key or budget names it. On
//! the JSON key file, on `--keystore store` (SQLite) and on PostgreSQL.
//!
//! Needs `target/debug/metis` (`cargo build --workspace --bins`).
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use metis_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY};
use metis_tests::gateway::chat_body;
use metis_tests::process::{GatewayProcess, issue_key, metis, upstream_args, upstream_env};
use metis_tests::{FakeUpstream, Shape};
use std::time::{Duration, Instant};

/// In the group from the start.
const OPENAI: &str = "gpt-5";
/// Added to the group while the gateway runs.
const ANTHROPIC: &str = "claude-haiku-4-5";

async fn call(client: &reqwest::Client, url: &str, token: &str, model: &str) -> (u16, String) {
    let r = client
        .post(url)
        .bearer_auth(token)
        .json(&chat_body(Shape::OpenAi, model, "group?", false))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Run `metis gateway <args…> <storage…>` in a child process.
async fn cli(args: &[&str], storage: &[String]) -> metis_tests::process::CliOutput {
    let mut a: Vec<String> = vec!["gateway".to_owned()];
    a.extend(args.iter().map(|s| (*s).to_owned()));
    a.extend(storage.iter().cloned());
    tokio::task::spawn_blocking(move || metis(&a).unwrap())
        .await
        .unwrap()
}

async fn groups_and_team_lists_reach_a_running_gateway(keystore: &[&str]) {
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut storage = vec!["--data-dir".to_owned(), dir.path().display().to_string()];
    storage.extend(keystore.iter().map(|s| (*s).to_owned()));

    // A key naming a group that does not exist is refused, naming the group.
    let out = cli(
        &[
            "issue-key",
            "--name",
            "early",
            "--workspace",
            "/srv/ws",
            "--allow-model",
            "group:cheap",
        ],
        &storage,
    )
    .await;
    assert_ne!(out.code(), 0, "{}", out.describe());
    assert!(out.stderr.contains("'group:cheap'"), "{}", out.describe());

    let out = cli(
        &["model-group", "set", "cheap", "--models", "openai:gpt-5"],
        &storage,
    )
    .await;
    assert_eq!(out.code(), 0, "{}", out.describe());
    let (_, grouped) = issue_key(&storage, "grouped", &["--allow-model", "group:cheap"]).unwrap();
    // A team budget naming an unknown group is refused too; with a known one it is stored.
    let out = cli(
        &[
            "budget",
            "set",
            "--team",
            "platform",
            "--allowed-models",
            "group:nope",
        ],
        &storage,
    )
    .await;
    assert_ne!(out.code(), 0, "{}", out.describe());
    assert!(out.stderr.contains("'group:nope'"), "{}", out.describe());
    let out = cli(
        &[
            "budget",
            "set",
            "--team",
            "platform",
            "--monthly-usd",
            "100",
            "--allowed-models",
            "group:cheap",
        ],
        &storage,
    )
    .await;
    assert_eq!(out.code(), 0, "{}", out.describe());
    let (_, teamed) = issue_key(&storage, "teamed", &["--team", "platform"]).unwrap();
    let (free_id, free) = issue_key(&storage, "free", &["--team", "data"]).unwrap();
    let out = cli(&["budget", "list", "--format", "json"], &storage).await;
    assert_eq!(out.code(), 0, "{}", out.describe());
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(listed[0]["scope"], "team", "{listed}");
    assert_eq!(listed[0]["monthly_usd"], "100", "{listed}");

    let mut args = vec!["--port".to_owned(), "0".to_owned()];
    args.extend(keystore.iter().map(|s| (*s).to_owned()));
    args.extend(upstream_args(&upstream.base_url(), dir.path()));
    let mut gw = GatewayProcess::spawn_async(
        args,
        upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY),
    )
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = gw.url_of("/v1/chat/completions");

    assert_eq!(call(&client, &url, &grouped, OPENAI).await.0, 200);
    let (status, body) = call(&client, &url, &grouped, ANTHROPIC).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("model_not_allowed"), "{body}");
    // The team's list limits a key without a list of its own, and the 403 names the team.
    assert_eq!(call(&client, &url, &teamed, OPENAI).await.0, 200);
    let (status, body) = call(&client, &url, &teamed, ANTHROPIC).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not allowed for team 'platform'"), "{body}");
    assert_eq!(call(&client, &url, &free, ANTHROPIC).await.0, 200);

    // Another process adds a model to the group: both holders may use it within 2 s.
    let out = cli(
        &[
            "model-group",
            "set",
            "cheap",
            "--models",
            "openai:gpt-5,anthropic:claude-haiku-4-5",
        ],
        &storage,
    )
    .await;
    assert_eq!(out.code(), 0, "{}", out.describe());
    let start = Instant::now();
    let took = loop {
        let (status, body) = call(&client, &url, &grouped, ANTHROPIC).await;
        if status == 200 {
            break start.elapsed();
        }
        assert_eq!(status, 403, "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the group change is not in force after 5 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(call(&client, &url, &teamed, ANTHROPIC).await.0, 200);
    eprintln!(
        "model group change (CLI, keystore {keystore:?}) in force after {took:?} \
         (from the command's return)"
    );
    assert!(took <= Duration::from_secs(2), "took {took:?} (> 2 s)");

    // Deleting the group allows its members no more (never more access).
    let out = cli(&["model-group", "delete", "cheap"], &storage).await;
    assert_eq!(out.code(), 0, "{}", out.describe());
    let start = Instant::now();
    loop {
        let (status, body) = call(&client, &url, &grouped, OPENAI).await;
        if status == 403 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(start.elapsed() < Duration::from_secs(5), "{body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // update-key: naming the deleted group is refused; moving a key into the team (whose
    // list now names a deleted group, so allows nothing) is in force within 2 s.
    let out = cli(
        &["update-key", &free_id, "--allow-model", "group:cheap"],
        &storage,
    )
    .await;
    assert_ne!(out.code(), 0, "{}", out.describe());
    assert!(out.stderr.contains("'group:cheap'"), "{}", out.describe());
    assert_eq!(call(&client, &url, &free, OPENAI).await.0, 200);
    let out = cli(&["update-key", &free_id, "--team", "platform"], &storage).await;
    assert_eq!(out.code(), 0, "{}", out.describe());
    let shown: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["team_id"], "platform", "{shown}");
    let start = Instant::now();
    let took = loop {
        let (status, body) = call(&client, &url, &free, OPENAI).await;
        if status == 403 {
            assert!(body.contains("team 'platform'"), "{body}");
            break start.elapsed();
        }
        assert_eq!(status, 200, "{body}");
        assert!(start.elapsed() < Duration::from_secs(5), "{body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        took <= Duration::from_secs(2),
        "update-key took {took:?} (> 2 s)"
    );
    let status = gw.stop(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_groups_on_the_json_key_file_reach_a_running_gateway() {
    groups_and_team_lists_reach_a_running_gateway(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_groups_on_the_sqlite_store_reach_a_running_gateway() {
    groups_and_team_lists_reach_a_running_gateway(&["--keystore", "store"]).await;
}

/// The same on PostgreSQL (`--store postgres --keystore store`, a fresh database of the
/// server named by `METIS_TEST_DATABASE_URL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_groups_on_postgres_reach_a_running_gateway() {
    let db = metis_storage_postgres::ScratchDatabase::from_env().unwrap();
    groups_and_team_lists_reach_a_running_gateway(&[
        "--store",
        "postgres",
        "--database-url",
        db.url(),
        "--keystore",
        "store",
    ])
    .await;
}

const ADMIN: &str = "model-groups-admin-token-42";

async fn admin(
    gw: &metis_tests::TestGateway,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = gw.client().request(method, gw.url(path)).bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// The admin API manages budgets and groups: errors name the problem (unknown group, bad
/// scope, missing budget), a budget is listed with its scope's spend, a change is in force in
/// the answering process at once (a user's list limits the user's key), and every change is
/// audited with the admin identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_budgets_and_model_groups() {
    use reqwest::Method;
    use serde_json::json;
    let gw = metis_tests::TestGateway::spawn_with(metis_tests::GatewayOptions {
        extra_args: vec!["--admin-token".into(), ADMIN.into()],
        ..metis_tests::GatewayOptions::default()
    })
    .await
    .unwrap();
    let (status, body) = admin(
        &gw,
        Method::PUT,
        "/admin/v1/budgets/user/ana",
        Some(json!({"daily_usd": "5", "allowed_models": ["group:frontier"]})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'group:frontier'"),
        "{body}"
    );
    let (status, body) = admin(
        &gw,
        Method::PUT,
        "/admin/v1/budgets/user/ana",
        Some(json!({"daily_usd": "5", "alert_at": [90, 50]})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alert_at"),
        "{body}"
    );
    let (status, body) = admin(
        &gw,
        Method::PUT,
        "/admin/v1/model-groups/frontier",
        Some(json!({"models": ["anthropic:claude-haiku-4-5"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["models"], json!(["anthropic:claude-haiku-4-5"]));
    let (status, body) = admin(
        &gw,
        Method::PUT,
        "/admin/v1/budgets/user/ana",
        Some(
            json!({"daily_usd": "5", "weekly_usd": "20", "tpm": 1_000_000,
                    "allowed_models": ["group:frontier"]}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "user");
    assert_eq!(body["weekly_usd"], "20");
    assert_eq!(body["spend_day_usd"], 0.0);
    let (status, body) = admin(&gw, Method::GET, "/admin/v1/budgets", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["budgets"][0]["id"], "ana", "{body}");
    assert!(body["budgets"][0]["spend_month_usd"].is_number(), "{body}");
    let (_, body) = admin(&gw, Method::GET, "/admin/v1/model-groups", None).await;
    assert_eq!(body["model_groups"][0]["name"], "frontier", "{body}");

    // A key of user ana, issued with the new tags and limits, is held to ana's list at once.
    // (Its token limits are far above what the calls below take: each estimate counts the
    // default 4,096 output tokens.)
    let (status, key) = admin(
        &gw,
        Method::POST,
        "/admin/v1/keys",
        Some(
            json!({"name": "ana", "workspace": "/srv/ana", "user": "ana",
                    "org": "acme", "customer": "bigco", "weekly_cap_usd": "7",
                    "tpm": 500_000, "alert_at": [50, 100]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    for (field, want) in [
        ("org_id", json!("acme")),
        ("customer_id", json!("bigco")),
        ("weekly_cap_usd", json!("7")),
        ("tpm", json!(500_000)),
        ("alert_at", json!([50, 100])),
    ] {
        assert_eq!(key["key"][field], want, "{field}: {key}");
    }
    let token = key["token"].as_str().unwrap();
    let url = gw.url("/v1/chat/completions");
    let (status, body) = call(gw.client(), &url, token, OPENAI).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not allowed for user 'ana'"), "{body}");
    assert_eq!(call(gw.client(), &url, token, ANTHROPIC).await.0, 200);

    // PATCH: an unknown group is a 400 naming it; null clears a setting, a value sets it.
    let key_path = format!("/admin/v1/keys/{}", key["key_id"].as_str().unwrap());
    let (status, body) = admin(
        &gw,
        Method::PATCH,
        &key_path,
        Some(json!({"allowed_models": ["group:nope"]})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'group:nope'"),
        "{body}"
    );
    let (status, body) = admin(
        &gw,
        Method::PATCH,
        &key_path,
        Some(json!({"org": null, "tpm": 900_000})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["org_id"], serde_json::Value::Null, "{body}");
    assert_eq!(body["tpm"], 900_000, "{body}");
    assert_eq!(body["customer_id"], "bigco", "kept: {body}");
    let (status, body) = admin(
        &gw,
        Method::PATCH,
        "/admin/v1/keys/gk_nope",
        Some(json!({"tpm": 1})),
    )
    .await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = admin(&gw, Method::DELETE, "/admin/v1/budgets/squad/x", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin(&gw, Method::DELETE, "/admin/v1/budgets/team/none", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team 'none'"),
        "{body}"
    );
    let (status, _) = admin(&gw, Method::DELETE, "/admin/v1/budgets/user/ana", None).await;
    assert_eq!(status, 200);
    assert_eq!(call(gw.client(), &url, token, OPENAI).await.0, 200);
    let (status, _) = admin(&gw, Method::DELETE, "/admin/v1/model-groups/frontier", None).await;
    assert_eq!(status, 200);
    let (status, _) = admin(&gw, Method::DELETE, "/admin/v1/model-groups/frontier", None).await;
    assert_eq!(status, 404);

    let (_, audit) = admin(
        &gw,
        Method::GET,
        "/admin/v1/audit?since=2020-01-01T00:00:00Z&type=gateway.budget_set\
         &type=gateway.budget_deleted&type=gateway.model_group_set\
         &type=gateway.model_group_deleted",
        None,
    )
    .await;
    let types: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "gateway.model_group_set",
            "gateway.budget_set",
            "gateway.budget_deleted",
            "gateway.model_group_deleted"
        ],
        "{audit}"
    );
    for e in audit["events"].as_array().unwrap() {
        assert_eq!(e["payload"]["source"], "admin_api", "{e}");
        assert_eq!(e["payload"]["admin"]["method"], "static_token", "{e}");
    }
    assert_eq!(audit["events"][1]["payload"]["budget"]["daily_usd"], "5");
    // The key's issue event carries its new tags and limits.
    let (_, issued) = admin(
        &gw,
        Method::GET,
        "/admin/v1/audit?since=2020-01-01T00:00:00Z&type=gateway.key_issued\
         &type=gateway.key_updated",
        None,
    )
    .await;
    let ana = issued["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["payload"]["name"] == "ana")
        .unwrap();
    for (field, want) in [
        ("org_id", json!("acme")),
        ("customer_id", json!("bigco")),
        ("weekly_cap_usd", json!("7")),
        ("tpm", json!(500_000)),
        ("alert_at", json!([50, 100])),
    ] {
        assert_eq!(ana["payload"][field], want, "{field}: {ana}");
    }
    let updated = issued["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "gateway.key_updated")
        .unwrap();
    assert_eq!(
        updated["payload"]["changes"],
        json!({"org_id": {"from": "acme", "to": null}, "tpm": {"from": 500_000, "to": 900_000}}),
        "{updated}"
    );
    assert_eq!(
        updated["payload"]["admin"]["method"], "static_token",
        "{updated}"
    );
}
