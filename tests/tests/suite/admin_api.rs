//! The admin API (`/admin/v1`) through the real server: absent (404) without a configured
//! token, 401 JSON envelopes for missing or wrong tokens, the key lifecycle (issue, list, get,
//! rotate with grace, revoke, conflicts), usage rollups by key/user/team/model with filters and
//! window validation, and the audit export with type filters.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::gateway::{Reply, chat_body};
use metis_tests::{GatewayOptions, KeySpec, Shape, TestGateway};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ADMIN: &str = "admin-api-test-token-7f3a9c1e5b";

async fn with_admin(extra_keys: Vec<KeySpec>) -> TestGateway {
    TestGateway::spawn_with(GatewayOptions {
        extra_args: vec!["--admin-token".into(), ADMIN.into()],
        extra_keys,
        ..GatewayOptions::default()
    })
    .await
    .unwrap()
}

/// An admin request with `auth` as the whole `Authorization` header (if any).
async fn admin_as(
    gw: &TestGateway,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut req = gw.client().request(method, gw.url(path));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.json(b);
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

async fn admin(gw: &TestGateway, method: Method, path: &str, body: Option<&Value>) -> Reply {
    admin_as(gw, method, path, Some(&format!("Bearer {ADMIN}")), body).await
}

async fn chat(gw: &TestGateway, token: &str, model: &str) -> Reply {
    gw.post_as(
        Shape::OpenAi,
        token,
        &chat_body(Shape::OpenAi, model, "admin api", false),
    )
    .await
}

/// Poll until `token` gets `status` on a chat call (bounded by `within`); the elapsed time.
async fn wait_for_status(gw: &TestGateway, token: &str, status: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = chat(gw, token, "gpt-5").await;
        if r.status == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "expected {status} within {within:?}, still {}: {}",
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const ADMIN_ROUTES: [(&str, &str); 7] = [
    ("GET", "/admin/v1/keys"),
    ("POST", "/admin/v1/keys"),
    ("GET", "/admin/v1/keys/gk_01ANY"),
    ("POST", "/admin/v1/keys/gk_01ANY/revoke"),
    ("POST", "/admin/v1/keys/gk_01ANY/rotate"),
    ("GET", "/admin/v1/usage"),
    ("GET", "/admin/v1/audit"),
];

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_whole_admin_prefix_is_404() {
    let gw = TestGateway::spawn().await.unwrap();
    let key_auth = format!("Bearer {}", gw.key.token);
    let body = json!({"name": "x", "workspace": "/srv/x"});
    let mut paths: Vec<(&str, &str)> = ADMIN_ROUTES.to_vec();
    paths.extend([
        ("GET", "/admin"),
        ("GET", "/admin/"),
        ("GET", "/admin/v2/anything"),
    ]);
    for (m, path) in paths {
        for auth in [
            None,
            Some(key_auth.as_str()),
            Some("Bearer some-guess-0123456789"),
        ] {
            let r = admin_as(&gw, method(m), path, auth, Some(&body)).await;
            assert_eq!(r.status, 404, "{m} {path} (auth {auth:?}): {}", r.text);
            assert!(
                r.json()["error"]["message"].is_string(),
                "{m} {path}: a JSON envelope: {}",
                r.text
            );
        }
    }
    assert_eq!(gw.request(Method::GET, "/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_admin_tokens_get_a_401_envelope() {
    let gw = with_admin(Vec::new()).await;
    let key_auth = format!("Bearer {}", gw.key.token);
    let wrong = format!("Bearer {ADMIN}x");
    let basic = format!("Basic {ADMIN}");
    let lower = format!("bearer {ADMIN}");
    let body = json!({"name": "sneaky", "workspace": "/srv/x"});
    for (m, path) in ADMIN_ROUTES {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(key_auth.as_str()),
            Some(basic.as_str()),
            Some("Bearer "),
        ] {
            let r = admin_as(&gw, method(m), path, auth, Some(&body)).await;
            assert_eq!(r.status, 401, "{m} {path} (auth {auth:?}): {}", r.text);
            let v = r.json();
            assert_eq!(v["error"]["code"], "invalid_admin_token", "{m} {path}: {v}");
            assert_eq!(v["error"]["type"], "authentication_error", "{v}");
            assert!(
                !r.text.contains(ADMIN),
                "the configured token is never echoed"
            );
        }
    }
    let r = admin_as(&gw, Method::GET, "/admin/v1/keys", Some(&lower), None).await;
    assert_eq!(r.status, 200, "the scheme is case-insensitive: {}", r.text);
    let keys = r.json()["keys"].as_array().unwrap().len();
    assert_eq!(keys, 1, "no key was created by the refused calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lifecycle_through_the_admin_api() {
    let gw = with_admin(Vec::new()).await;
    let spec = json!({
        "name": "api-issued",
        "workspace": "/srv/api",
        "allowed_models": ["gpt-5"],
        "daily_cap_usd": "5",
        "monthly_cap_usd": "50",
        "rpm": 100,
        "user": "alice",
        "team": "eng",
        "customer_tier": "paid",
    });
    let r = admin(&gw, Method::POST, "/admin/v1/keys", Some(&spec)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let created = r.json();
    let id = created["key_id"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("gk_") && token.starts_with("gw_"),
        "{created}"
    );
    let k = &created["key"];
    for (field, want) in [
        ("name", json!("api-issued")),
        ("workspace_path", json!("/srv/api")),
        ("allowed_models", json!(["gpt-5"])),
        ("daily_cap_usd", json!("5")),
        ("monthly_cap_usd", json!("50")),
        ("rpm", json!(100)),
        ("user_id", json!("alice")),
        ("team_id", json!("eng")),
        ("customer_tier", json!("paid")),
        ("status", json!("active")),
        ("effective_status", json!("active")),
    ] {
        assert_eq!(k[field], want, "{field}: {k}");
    }

    // Listed and fetched without secrets.
    let list = admin(&gw, Method::GET, "/admin/v1/keys", None).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let listed: Vec<String> = list.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["key_id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        listed.contains(&id) && listed.contains(&gw.key.key_id),
        "{listed:?}"
    );
    let got = admin(&gw, Method::GET, &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["user_id"], "alice");
    for text in [&list.text, &got.text] {
        assert!(
            !text.contains(&token) && !text.contains("secret_hash"),
            "{text}"
        );
        assert!(!text.contains(&metis_domain::keys::hash_token(&token)));
    }

    // The running gateway accepts the new key within 2 s, scoped to its models.
    let took = wait_for_status(&gw, &token, 200, Duration::from_secs(2)).await;
    eprintln!("admin API: an issued key authenticates after {took:?}");
    let r = chat(&gw, &token, "haiku").await;
    assert_eq!(r.status, 403, "allowed_models is enforced: {}", r.text);

    // Validation errors are 400s naming the field.
    for (bad, field) in [
        (
            json!({"name": "x", "workspace": "/srv/x", "user": "Alice"}),
            "user",
        ),
        (
            json!({"name": "x", "workspace": "/srv/x", "team": "a team"}),
            "team",
        ),
        (
            json!({"name": "x", "workspace": "/srv/x", "daily_cap_usd": "NaN"}),
            "daily-cap-usd",
        ),
        (
            json!({"name": "x", "workspace": "/srv/x", "monthly_cap_usd": "-3"}),
            "monthly-cap-usd",
        ),
        (json!({"name": "x", "workspace": "/srv/x", "rpm": 0}), "rpm"),
        (
            json!({"name": "x", "workspace": "/srv/x", "customer_tier": "gold"}),
            "customer-tier",
        ),
        (
            json!({"name": "x", "workspace": "relative/path"}),
            "workspace",
        ),
    ] {
        let r = admin(&gw, Method::POST, "/admin/v1/keys", Some(&bad)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        let msg = r.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            msg.replace('_', "-").contains(field),
            "{bad}: the message names {field}: {msg}"
        );
    }

    // Rotate with a grace period: both keys work, the successor inherits everything.
    let r = admin(
        &gw,
        Method::POST,
        &format!("/admin/v1/keys/{id}/rotate"),
        Some(&json!({"grace_period": "30s"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rotated = r.json();
    assert_eq!(rotated["old_key_id"], id.as_str());
    let new_id = rotated["new_key_id"].as_str().unwrap().to_owned();
    let new_token = rotated["new_token"].as_str().unwrap().to_owned();
    assert!(rotated["grace_period_until"].is_string(), "{rotated}");
    for field in [
        "workspace_path",
        "allowed_models",
        "daily_cap_usd",
        "monthly_cap_usd",
        "rpm",
        "user_id",
        "team_id",
        "customer_tier",
    ] {
        assert_eq!(
            rotated["key"][field], k[field],
            "successor inherits {field}"
        );
    }
    wait_for_status(&gw, &new_token, 200, Duration::from_secs(2)).await;
    assert_eq!(
        chat(&gw, &token, "gpt-5").await.status,
        200,
        "old key in its grace"
    );
    let old = admin(&gw, Method::GET, &format!("/admin/v1/keys/{id}"), None)
        .await
        .json();
    assert!(old["grace_period_until"].is_string(), "{old}");
    let new = admin(&gw, Method::GET, &format!("/admin/v1/keys/{new_id}"), None)
        .await
        .json();
    assert!(
        new["spend_day_usd"].as_f64().unwrap_or(0.0) > 0.0,
        "rotation keeps the account's spend: {new}"
    );

    // Revoke: idempotent, refused within 2 s.
    let r1 = admin(
        &gw,
        Method::POST,
        &format!("/admin/v1/keys/{id}/revoke"),
        None,
    )
    .await;
    assert_eq!(r1.status, 200, "{}", r1.text);
    let r1 = r1.json();
    assert_eq!(r1["already_revoked"], false, "{r1}");
    let r2 = admin(
        &gw,
        Method::POST,
        &format!("/admin/v1/keys/{id}/revoke"),
        None,
    )
    .await;
    assert_eq!(r2.status, 200, "{}", r2.text);
    let r2 = r2.json();
    assert_eq!(r2["already_revoked"], true, "{r2}");
    assert_eq!(r2["revoked_at"], r1["revoked_at"], "idempotent");
    wait_for_status(&gw, &token, 401, Duration::from_secs(2)).await;
    let r = chat(&gw, &token, "gpt-5").await;
    assert_eq!(r.json()["error"]["code"], "key_revoked", "{}", r.text);
    assert_eq!(
        chat(&gw, &new_token, "gpt-5").await.status,
        200,
        "the successor lives on"
    );

    // Conflicts and unknown keys.
    let r = admin(
        &gw,
        Method::POST,
        &format!("/admin/v1/keys/{id}/rotate"),
        Some(&json!({"grace_period": "1h"})),
    )
    .await;
    assert_eq!(r.status, 409, "a revoked key cannot be rotated: {}", r.text);
    assert!(r.json()["error"]["message"].is_string());
    let r = admin(
        &gw,
        Method::POST,
        &format!("/admin/v1/keys/{new_id}/rotate"),
        Some(&json!({"grace_period": "soon"})),
    )
    .await;
    assert_eq!(r.status, 400, "a bad grace period is a 400: {}", r.text);
    assert!(r.text.contains("grace_period"), "{}", r.text);
    let unknown = "gk_01UNKNOWNKEY000000000000000";
    for (m, path, body) in [
        ("GET", format!("/admin/v1/keys/{unknown}"), None),
        ("POST", format!("/admin/v1/keys/{unknown}/revoke"), None),
        (
            "POST",
            format!("/admin/v1/keys/{unknown}/rotate"),
            Some(json!({"grace_period": "1h"})),
        ),
    ] {
        let r = admin(&gw, method(m), &path, body.as_ref()).await;
        assert_eq!(r.status, 404, "{m} {path}: {}", r.text);
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(unknown)
        );
    }
}

fn rows(v: &Value) -> Vec<(Option<String>, u64, f64)> {
    v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("rows in {v}"))
        .iter()
        .map(|r| {
            (
                r["group"].as_str().map(str::to_owned),
                r["calls"].as_u64().unwrap_or(0),
                r["cost_usd"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

fn calls_for(rows: &[(Option<String>, u64, f64)], group: Option<&str>) -> u64 {
    rows.iter()
        .filter(|(g, _, _)| g.as_deref() == group)
        .map(|(_, c, _)| *c)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_audit_reports() {
    let gw = with_admin(vec![
        KeySpec {
            name: "alice".into(),
            user: Some("alice".into()),
            team: Some("eng".into()),
            ..KeySpec::default()
        },
        KeySpec {
            name: "bob".into(),
            user: Some("bob".into()),
            team: Some("eng".into()),
            ..KeySpec::default()
        },
    ])
    .await;
    let alice = gw.key_named("alice").clone();
    let bob = gw.key_named("bob").clone();
    for (token, model) in [
        (&alice.token, "gpt-5"),
        (&alice.token, "gpt-5"),
        (&bob.token, "haiku"),
        (&gw.key.token, "gpt-5"),
    ] {
        assert_eq!(chat(&gw, token, model).await.status, 200);
    }
    // One authentication failure for the audit trail.
    assert_eq!(chat(&gw, "gw_not-a-real-token", "gpt-5").await.status, 401);

    // The report reads the trace, which the writer fills in batches: wait for all four.
    let start = Instant::now();
    let by_key = loop {
        let r = admin(&gw, Method::GET, "/admin/v1/usage?group_by=key", None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = r.json();
        if rows(&v).iter().map(|(_, c, _)| c).sum::<u64>() >= 4 {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "usage appears: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(by_key["group_by"], "key");
    let r = rows(&by_key);
    assert_eq!(calls_for(&r, Some(&alice.key_id)), 2, "{by_key}");
    assert_eq!(calls_for(&r, Some(&bob.key_id)), 1, "{by_key}");
    assert_eq!(calls_for(&r, Some(&gw.key.key_id)), 1, "{by_key}");
    assert!(r.iter().all(|(_, _, cost)| *cost > 0.0), "priced: {by_key}");

    let get = |q: &'static str| {
        let gw = &gw;
        async move {
            let r = admin(gw, Method::GET, &format!("/admin/v1/usage?{q}"), None).await;
            (r.status, r.json())
        }
    };
    let (s, v) = get("group_by=user").await;
    assert_eq!(s, 200, "{v}");
    let r = rows(&v);
    assert_eq!(
        (calls_for(&r, Some("alice")), calls_for(&r, Some("bob"))),
        (2, 1),
        "{v}"
    );
    assert_eq!(
        calls_for(&r, None),
        1,
        "the untagged key is the null group: {v}"
    );
    let (_, v) = get("group_by=team").await;
    assert_eq!(calls_for(&rows(&v), Some("eng")), 3, "{v}");
    let (_, v) = get("group_by=model").await;
    let r = rows(&v);
    let model_calls = |needle: &str| -> u64 {
        r.iter()
            .filter(|(g, _, _)| g.as_deref().is_some_and(|g| g.contains(needle)))
            .map(|(_, c, _)| *c)
            .sum()
    };
    assert_eq!((model_calls("gpt-5"), model_calls("haiku")), (3, 1), "{v}");
    let (_, v) = get("group_by=model&user=alice").await;
    let r = rows(&v);
    assert_eq!(r.len(), 1, "alice used one model: {v}");
    assert_eq!(r[0].1, 2, "{v}");
    let (_, v) = get("group_by=user&team=eng").await;
    assert_eq!(rows(&v).len(), 2, "{v}");
    let (s, v) = get("since=2020-01-01T00:00:00Z&until=2020-02-01T00:00:00Z").await;
    assert_eq!(s, 200, "{v}");
    assert!(rows(&v).is_empty(), "an old window has nothing: {v}");

    for (q, names) in [
        ("group_by=colour", "group_by"),
        ("group_by=key&user=alice&team=eng", "at most one"),
        (
            "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            "since",
        ),
        (
            "since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:00Z",
            "since",
        ),
        ("since=yesterday", "since"),
        ("until=not-a-time", "until"),
    ] {
        let (s, v) = get(q).await;
        assert_eq!(s, 400, "{q}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(names), "{q}: the message names {names}: {msg}");
    }

    // Audit: the same envelope as the JSONL export, filtered by type.
    let audit = |q: String| {
        let gw = &gw;
        async move {
            let r = admin(gw, Method::GET, &format!("/admin/v1/audit{q}"), None).await;
            (r.status, r.json())
        }
    };
    let start = Instant::now();
    let all = loop {
        let (s, v) = audit(String::new()).await;
        assert_eq!(s, 200, "{v}");
        let has_failure = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "gateway.auth_failed");
        if has_failure {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "auth failure audited: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let events = all["events"].as_array().unwrap();
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "ordered by id");
    assert!(
        events
            .iter()
            .all(|e| e["timestamp"].is_string() && e["payload"].is_object()),
        "{all}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "gateway.key_issued")
            .count(),
        3,
        "{all}"
    );
    assert!(
        !events.iter().any(|e| e["type"] == "llm.call_completed"),
        "only audit types"
    );
    let (s, v) = audit("?type=gateway.key_issued".into()).await;
    assert_eq!(s, 200, "{v}");
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs.len(), 3, "{v}");
    assert!(evs.iter().all(|e| e["type"] == "gateway.key_issued"));
    let (_, v) = audit("?type=gateway.key_issued&type=gateway.auth_failed".into()).await;
    assert_eq!(v["events"].as_array().unwrap().len(), 4, "{v}");
    let (s, v) = audit("?type=llm.call_completed".into()).await;
    assert_eq!(s, 400, "only audit types may be requested: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("llm.call_completed")
    );
    let (s, v) = audit("?since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z".into()).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = audit("?since=garbage".into()).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = audit("?since=2020-01-01T00:00:00Z&until=2020-01-02T00:00:00Z".into()).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["events"].as_array().unwrap().is_empty(), "{v}");
}

/// The schema of `components/schemas/<name>` in the served document.
async fn schema_of(gw: &TestGateway, name: &str) -> Value {
    let doc = gw.request(Method::GET, "/openapi.json").await.json();
    doc["components"]["schemas"][name].clone()
}

/// Every `null` in `object` is allowed by `schema` (its property is `nullable`).
fn assert_nulls_declared(what: &str, object: &Value, schema: &Value) {
    let fields = object.as_object().unwrap();
    let mut nulls = 0;
    for (field, value) in fields {
        if value.is_null() {
            nulls += 1;
            assert_eq!(
                schema["properties"][field]["nullable"], true,
                "{what}.{field} is null in the answer but not nullable in the document"
            );
        }
    }
    assert!(nulls > 0, "the case under test has null fields: {object}");
}

/// Answers match the document: a key with no caps, tags, rpm or models returns those as
/// `null`, which the document declares (they were non-nullable, a schema violation for every
/// client that validates), and a validation error's `code` may be `null`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_fields_in_admin_answers_are_declared_nullable() {
    let gw = with_admin(vec![]).await;
    let created = admin(
        &gw,
        Method::POST,
        "/admin/v1/keys",
        Some(&json!({"name": "bare", "workspace": "/srv/bare"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let key_schema = schema_of(&gw, "KeyObject").await;
    assert_nulls_declared("KeyObject", &created.json()["key"], &key_schema);
    let list = admin(&gw, Method::GET, "/admin/v1/keys", None).await;
    for key in list.json()["keys"].as_array().unwrap() {
        assert_nulls_declared("KeyObject", key, &key_schema);
    }

    // A body poem cannot parse: the envelope's code is null.
    let r = gw
        .client()
        .post(gw.url("/admin/v1/keys"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_nulls_declared(
        "ErrorBody",
        &body["error"],
        &schema_of(&gw, "ErrorBody").await,
    );
}

/// String fields take JSON strings only: poem-openapi alone would turn `false` or `5` into the
/// text "false" / "5", accepting input the document (`type: string`) forbids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_string_fields_refuse_other_json_types() {
    let gw = with_admin(vec![]).await;
    for (field, value) in [
        ("team", json!(false)),
        ("user", json!(7)),
        ("daily_cap_usd", json!(5)),
        ("name", json!(true)),
    ] {
        let mut body = json!({"name": "typed", "workspace": "/srv/typed"});
        body[field] = value.clone();
        let r = admin(&gw, Method::POST, "/admin/v1/keys", Some(&body)).await;
        assert_eq!(r.status, 400, "{field}: {value} → {}", r.text);
        assert!(
            r.text.contains(field) || r.text.contains("string"),
            "{}",
            r.text
        );
    }
    let list = admin(&gw, Method::GET, "/admin/v1/keys", None).await;
    assert!(
        !list.text.contains("\"typed\""),
        "nothing was created: {}",
        list.text
    );
}
