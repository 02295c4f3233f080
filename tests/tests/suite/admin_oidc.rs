//! Admin identities from OpenID Connect, through the real server and the local test issuer
//! (`metis_tests::oidc_issuer`): each role on every admin route, every kind of refused token
//! with a 401 naming the problem, key rotation at the issuer followed without a restart, an
//! issuer outage (503, then recovery), the admin recorded in audit events, the limit on failed
//! admin authentications (429 + `Retry-After`), and the browser login client (code + PKCE).
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use metis_domain::admin::{AuthMethod, Role, RoleMapping};
use metis_oidc::{Oidc, OidcConfig};
use metis_ports::identity::OidcLogin as _;
use metis_tests::gateway::{Reply, chat_body};
use metis_tests::oidc_issuer::{DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, ROLE_MAP, TestIssuer};
use metis_tests::process::GatewayProcess;
use metis_tests::{GatewayOptions, Shape, TestGateway};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const STATIC: &str = "admin-oidc-static-token-5d1e8a";

async fn gateway(issuer: &TestIssuer, extra: &[&str]) -> TestGateway {
    let mut args: Vec<String> = [
        "--admin-token",
        STATIC,
        "--oidc-issuer",
        &issuer.issuer(),
        "--oidc-audience",
        DEFAULT_AUDIENCE,
        "--oidc-client-id",
        DEFAULT_CLIENT_ID,
        "--oidc-role-map",
        ROLE_MAP,
        // Short, so rotation tests need not wait 10 s for an unknown-kid refetch.
        "--oidc-min-refetch",
        "1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    TestGateway::spawn_with(GatewayOptions {
        extra_args: args,
        ..GatewayOptions::default()
    })
    .await
    .unwrap()
}

async fn call(
    gw: &TestGateway,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&Value>,
) -> Reply {
    let mut req = gw
        .client()
        .request(Method::from_bytes(method.as_bytes()).unwrap(), gw.url(path))
        .header("authorization", format!("Bearer {bearer}"));
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap();
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        text: resp.text().await.unwrap(),
        body_error: None,
    }
}

/// A key issued with the static token; its id.
async fn new_key(gw: &TestGateway, name: &str) -> String {
    let r = call(
        gw,
        "POST",
        "/admin/v1/keys",
        STATIC,
        Some(&json!({"name": name, "workspace": "/srv/oidc"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()["key_id"].as_str().unwrap().to_owned()
}

fn token(issuer: &TestIssuer, who: &str, groups: &[&str]) -> String {
    let email = format!("{who}@example.test");
    issuer
        .mint(&issuer.claims(&format!("user-{who}"), Some(&email), groups))
        .unwrap()
}

/// Every admin route with the least role it needs.
/// Every admin operation with its least role (`{id}`: a key, `{session}`: a session); the
/// test below checks this list against the OpenAPI document, so a new route cannot be missed.
const ROUTES: [(&str, &str, Role); 23] = [
    ("GET", "/admin/v1/keys", Role::Viewer),
    ("GET", "/admin/v1/keys/{id}", Role::Viewer),
    ("GET", "/admin/v1/usage", Role::Viewer),
    ("GET", "/admin/v1/usage/series", Role::Viewer),
    ("GET", "/admin/v1/audit", Role::Viewer),
    ("GET", "/admin/v1/audit/verify", Role::Viewer),
    ("GET", "/admin/v1/audit/export", Role::Viewer),
    ("GET", "/admin/v1/overview", Role::Viewer),
    ("GET", "/admin/v1/sessions", Role::Viewer),
    ("GET", "/admin/v1/sessions/{session}", Role::Viewer),
    ("POST", "/admin/v1/keys", Role::Operator),
    ("POST", "/admin/v1/keys/{id}/revoke", Role::Operator),
    ("POST", "/admin/v1/keys/{id}/rotate", Role::Operator),
    ("PATCH", "/admin/v1/keys/{id}", Role::Operator),
    ("GET", "/admin/v1/budgets", Role::Viewer),
    ("PUT", "/admin/v1/budgets/{scope}/{bid}", Role::Operator),
    ("DELETE", "/admin/v1/budgets/{scope}/{bid}", Role::Operator),
    ("GET", "/admin/v1/model-groups", Role::Viewer),
    ("PUT", "/admin/v1/model-groups/{group}", Role::Operator),
    ("DELETE", "/admin/v1/model-groups/{group}", Role::Operator),
    ("GET", "/admin/v1/routes", Role::Viewer),
    ("PUT", "/admin/v1/routes/{route}", Role::Operator),
    ("DELETE", "/admin/v1/routes/{route}", Role::Operator),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_answers_each_role_by_its_least_role() {
    let document: Value = serde_json::from_str(&metis_http::openapi_json()).unwrap();
    let mut documented: Vec<String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("/admin/"))
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    let mut listed: Vec<String> = ROUTES
        .iter()
        .map(|(m, p, _)| {
            let p = p
                .replace("{id}", "{key_id}")
                .replace("{session}", "{session_id}")
                .replace("{bid}", "{id}")
                .replace("{group}", "{name}")
                .replace("{route}", "{alias}");
            format!("{m} {p}")
        })
        .collect();
    documented.sort();
    listed.sort();
    assert_eq!(listed, documented, "ROUTES must list every admin operation");

    let issuer = TestIssuer::start().await.unwrap();
    let gw = gateway(&issuer, &[]).await;
    // One session for the tree route, made by a request through the mock provider.
    let r = gw
        .client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key.token)
        .header("x-metis-session-id", "route-table")
        .json(&chat_body(Shape::OpenAi, "gpt-5", "route table", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let roles = [
        (Role::Viewer, token(&issuer, "vera", &["metis-read"])),
        (
            Role::Operator,
            token(&issuer, "oscar", &["metis-ops", "metis-read"]),
        ),
        (Role::Admin, token(&issuer, "alice", &["metis-admins"])),
        (Role::Admin, STATIC.to_owned()),
    ];
    let mut checked = 0;
    for (method, template, least) in ROUTES {
        for (role, bearer) in &roles {
            // A fresh key per call: a revoke must not turn the next rotate into a 409.
            let id = new_key(&gw, "route-table").await;
            // A budget and a group for the deletes to delete.
            let budget = json!({"monthly_usd": "10"});
            let group = json!({"models": ["openai:gpt-5"]});
            let route = json!({"deployments": [{"provider": "openai", "model": "gpt-5"}]});
            for (path, body) in [
                ("/admin/v1/budgets/team/route-table", &budget),
                ("/admin/v1/model-groups/route-table", &group),
                ("/admin/v1/routes/route-table", &route),
            ] {
                let r = call(&gw, "PUT", path, STATIC, Some(body)).await;
                assert_eq!(r.status, 200, "{path}: {}", r.text);
            }
            let path = template
                .replace("{id}", &id)
                .replace("{session}", "route-table")
                .replace("{scope}", "team")
                .replace("{bid}", "route-table")
                .replace("{group}", "route-table")
                .replace("{route}", "route-table");
            let body = match (method, template) {
                ("POST", "/admin/v1/keys") => {
                    Some(json!({"name": "by-role", "workspace": "/srv/r"}))
                }
                ("POST", _) => Some(json!({})),
                ("PATCH", _) => Some(json!({"team": "by-role"})),
                ("PUT", t) if t.starts_with("/admin/v1/budgets") => Some(budget.clone()),
                ("PUT", t) if t.starts_with("/admin/v1/routes") => Some(route.clone()),
                ("PUT", _) => Some(group.clone()),
                _ => None,
            };
            let r = call(&gw, method, &path, bearer, body.as_ref()).await;
            if role.allows(least) {
                assert!(
                    (200..300).contains(&r.status),
                    "{method} {template} as {role:?}: {} {}",
                    r.status,
                    r.text
                );
            } else {
                assert_eq!(r.status, 403, "{method} {template} as {role:?}: {}", r.text);
                let v = r.json();
                assert_eq!(v["error"]["code"], "insufficient_role", "{v}");
                let m = v["error"]["message"].as_str().unwrap();
                assert!(
                    m.contains(least.as_str()) && m.contains(role.as_str()),
                    "the 403 names the role needed and held: {m}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * roles.len());
    // A valid token whose groups map to no role: 403 naming the claim.
    let r = call(
        &gw,
        "GET",
        "/admin/v1/keys",
        &token(&issuer, "nobody", &["other"]),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "no_role");
    assert!(r.text.contains("groups"), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_get_a_401_naming_the_problem() {
    let issuer = TestIssuer::start().await.unwrap();
    // Another issuer: same kid names, other keys (a forged signature), and a rotated kid this
    // gateway's issuer never published.
    let other = TestIssuer::start().await.unwrap();
    let foreign_kid = other.rotate(true).unwrap();
    let gw = gateway(&issuer, &[]).await;
    let ok = issuer.claims("user-vera", None, &["metis-read"]);
    let now = ok["iat"].as_i64().unwrap();
    let with = |patch: Value| {
        let mut c = ok.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // Accepted first, so every refusal below is about the token, not the setup. ES256 too.
    for good in [
        issuer.mint(&ok).unwrap(),
        issuer.mint_with("ec-1", &ok).unwrap(),
    ] {
        let r = call(&gw, "GET", "/admin/v1/keys", &good, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "expired",
            issuer.mint(&with(json!({"exp": now - 600}))).unwrap(),
            "token_expired",
            "expired",
        ),
        (
            "wrong audience",
            issuer.mint(&with(json!({"aud": "someone-else"}))).unwrap(),
            "wrong_audience",
            "someone-else",
        ),
        (
            "audience array without ours",
            issuer.mint(&with(json!({"aud": ["a", "b"]}))).unwrap(),
            "wrong_audience",
            "wrong audience",
        ),
        (
            "wrong signature",
            // Same kid as one of ours, another key.
            other.mint_with("ec-1", &ok).unwrap(),
            "bad_signature",
            "bad signature",
        ),
        (
            "unknown kid",
            other.mint_with(&foreign_kid, &ok).unwrap(),
            "unknown_key",
            &foreign_kid,
        ),
        (
            "wrong issuer",
            issuer
                .mint(&with(json!({"iss": "https://elsewhere.example"})))
                .unwrap(),
            "wrong_issuer",
            "elsewhere",
        ),
        (
            "not yet valid",
            issuer.mint(&with(json!({"nbf": now + 600}))).unwrap(),
            "token_not_yet_valid",
            "not valid yet",
        ),
        (
            "alg none",
            issuer
                .sign_raw(&json!({"alg": "none", "kid": "rsa-1"}), &ok, false)
                .unwrap(),
            "unsupported_alg",
            "'none'",
        ),
        (
            "HS256",
            issuer
                .sign_raw(&json!({"alg": "HS256", "kid": "rsa-1"}), &ok, true)
                .unwrap(),
            "unsupported_alg",
            "HS256",
        ),
    ];
    for (what, bad, code, says) in cases {
        let r = call(&gw, "GET", "/admin/v1/keys", &bad, None).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert_eq!(v["error"]["type"], "authentication_error", "{what}: {v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(
            m.contains(says),
            "{what}: the message says what failed: {m}"
        );
        assert!(!r.text.contains(&bad), "{what}: the token is never echoed");
    }
    // A wrong static token is still the static token's 401.
    let r = call(
        &gw,
        "GET",
        "/admin/v1/keys",
        "not-the-admin-token-at-all",
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error"]["code"],
        "invalid_admin_token",
        "{}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_at_the_issuer_is_followed_without_a_restart() {
    let issuer = TestIssuer::start().await.unwrap();
    let gw = gateway(&issuer, &[]).await;
    let claims = issuer.claims("user-oscar", None, &["metis-ops"]);
    let old = issuer.mint_with("rsa-1", &claims).unwrap();
    let r = call(&gw, "GET", "/admin/v1/keys", &old, None).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let new_kid = issuer.rotate(true).unwrap();
    assert!(!issuer.kids().contains(&"rsa-1".to_owned()));
    let fresh = issuer.mint_with(&new_kid, &claims).unwrap();
    // The unknown kid triggers a refetch once the spacing (1 s here) has passed since the
    // last fetch; poll with a generous bound rather than timing it.
    let start = Instant::now();
    loop {
        let r = call(&gw, "GET", "/admin/v1/keys", &fresh, None).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.json()["error"]["code"], "unknown_key", "{}", r.text);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "new kid never accepted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The old kid is gone from the refetched set: refused, naming the key.
    let r = call(&gw, "GET", "/admin/v1/keys", &old, None).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "unknown_key");
    assert!(r.text.contains("rsa-1"), "{}", r.text);

    // A burst of unknown kids refetches at most once per spacing, not once per token.
    let before = issuer.jwks_fetches();
    let burst_start = Instant::now();
    for _ in 0..10 {
        let forged = issuer
            .sign_raw(
                &json!({"alg": "RS256", "kid": "no-such-kid"}),
                &claims,
                true,
            )
            .unwrap();
        let r = call(&gw, "GET", "/admin/v1/keys", &forged, None).await;
        assert_eq!(r.status, 401);
    }
    let fetched = issuer.jwks_fetches() - before;
    let allowed = 1 + burst_start.elapsed().as_secs();
    assert!(
        fetched <= allowed,
        "{fetched} JWKS fetches for 10 unknown kids in {:?}",
        burst_start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_issuer_gets_503_until_it_answers_and_the_static_token_keeps_working() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.set_down(true);
    let gw = gateway(&issuer, &[]).await;
    let jwt = token(&issuer, "alice", &["metis-admins"]);
    let r = call(&gw, "GET", "/admin/v1/keys", &jwt, None).await;
    assert_eq!(r.status, 503, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], "oidc_issuer_unavailable", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("issuer unavailable"),
        "{v}"
    );
    let r = call(&gw, "GET", "/admin/v1/keys", STATIC, None).await;
    assert_eq!(
        r.status, 200,
        "the static token does not need the issuer: {}",
        r.text
    );

    issuer.set_down(false);
    let start = Instant::now();
    loop {
        let r = call(&gw, "GET", "/admin/v1/keys", &jwt, None).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        assert!(start.elapsed() < Duration::from_secs(30), "never recovered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The real binary, started while the issuer is down: it boots anyway (provider endpoints must
/// not depend on the identity provider), says so in its log, answers admin JWTs 503, and takes
/// them once the issuer is back, without a restart; the environment variables work as flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_while_the_issuer_is_down_and_accepts_jwts_once_it_is_back() {
    let issuer = TestIssuer::start().await.unwrap();
    issuer.set_down(true);
    let data = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--port",
        "0",
        "--data-dir",
        &data.path().display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let env = vec![
        ("METIS_GATEWAY_OIDC_ISSUER".to_owned(), issuer.issuer()),
        (
            "METIS_GATEWAY_OIDC_AUDIENCE".to_owned(),
            DEFAULT_AUDIENCE.to_owned(),
        ),
        (
            "METIS_GATEWAY_OIDC_ROLE_MAP".to_owned(),
            ROLE_MAP.to_owned(),
        ),
        ("METIS_GATEWAY_OIDC_MIN_REFETCH".to_owned(), "1".to_owned()),
    ];
    let mut gw = GatewayProcess::spawn_async(args, env).await.unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let jwt = token(&issuer, "vera", &["metis-read"]);
    let get = || {
        client
            .get(gw.url_of("/admin/v1/keys"))
            .bearer_auth(&jwt)
            .send()
    };
    let r = get().await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "{}", r.text().await.unwrap());
    assert!(
        gw.stderr().contains("OIDC issuer discovery failed"),
        "the outage is logged: {}",
        gw.stderr()
    );
    issuer.set_down(false);
    let start = Instant::now();
    loop {
        let r = get().await.unwrap();
        if r.status().as_u16() == 200 {
            break;
        }
        assert_eq!(r.status().as_u16(), 503);
        assert!(start.elapsed() < Duration::from_secs(30), "never recovered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Without an admin token, the admin API is there because of the issuer alone.
    let r = client
        .get(gw.url_of("/admin/v1/keys"))
        .bearer_auth("not-a-token-of-anyone-here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let status = gw.stop(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_record_who_made_them_and_other_changes_do_not() {
    let issuer = TestIssuer::start().await.unwrap();
    let gw = gateway(&issuer, &[]).await;
    let oscar = token(&issuer, "oscar", &["metis-ops"]);
    let r = call(
        &gw,
        "POST",
        "/admin/v1/keys",
        &oscar,
        Some(&json!({"name": "by-oscar", "workspace": "/srv/o"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["key_id"].as_str().unwrap().to_owned();
    let r = call(
        &gw,
        "POST",
        &format!("/admin/v1/keys/{id}/revoke"),
        &oscar,
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let static_id = new_key(&gw, "by-static").await;

    let r = call(
        &gw,
        "GET",
        "/admin/v1/audit?type=gateway.key_revoked&type=gateway.key_issued",
        STATIC,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = r.json()["events"].as_array().unwrap().clone();
    let find = |ty: &str, key: &str| -> Value {
        events
            .iter()
            .find(|e| e["type"] == ty && e["payload"]["gateway_key_id"] == key)
            .unwrap_or_else(|| panic!("no {ty} for {key} in {events:?}"))
            .clone()
    };
    let by_oscar = json!({"sub": "user-oscar", "email": "oscar@example.test", "role": "operator", "method": "oidc"});
    assert_eq!(
        find("gateway.key_revoked", &id)["payload"]["admin"],
        by_oscar
    );
    assert_eq!(
        find("gateway.key_issued", &id)["payload"]["admin"],
        by_oscar
    );
    assert_eq!(
        find("gateway.key_issued", &static_id)["payload"]["admin"],
        json!({"sub": "static-token", "email": null, "role": "admin", "method": "static_token"})
    );
    // The gateway's own test key was not issued through the admin API: no `admin` at all.
    let own = find("gateway.key_issued", &gw.key.key_id);
    assert!(
        own["payload"].get("admin").is_none(),
        "absent, not null: {own}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_admin_authentications_are_limited_per_address_and_counted() {
    let issuer = TestIssuer::start().await.unwrap();
    let gw = gateway(&issuer, &["--admin-auth-failures-per-minute", "3"]).await;
    // Successes are never limited.
    for _ in 0..10 {
        let r = call(&gw, "GET", "/admin/v1/keys", STATIC, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let expired = issuer
        .mint(&{
            let mut c = issuer.claims("user-x", None, &["metis-read"]);
            c["exp"] = json!(0);
            c
        })
        .unwrap();
    for bad in [
        "guess-number-one-xxxx",
        "guess-number-two-xxxx",
        expired.as_str(),
    ] {
        let r = call(&gw, "GET", "/admin/v1/keys", bad, None).await;
        assert_eq!(r.status, 401, "{}", r.text);
    }
    for bearer in ["guess-number-four-xxx", STATIC] {
        let r = call(&gw, "GET", "/admin/v1/keys", bearer, None).await;
        assert_eq!(
            r.status, 429,
            "blocked, even with the right token: {}",
            r.text
        );
        assert_eq!(
            r.json()["error"]["code"],
            "admin_auth_rate_limited",
            "{}",
            r.text
        );
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    let metrics = gw.request(Method::GET, "/metrics").await.text;
    for line in [
        "metis_gateway_auth_failures_total{reason=\"admin_invalid_token\"} 2",
        "metis_gateway_auth_failures_total{reason=\"admin_token_expired\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_login_client_yields_a_verified_identity() {
    let issuer = TestIssuer::start().await.unwrap();
    let oidc = Oidc::new(OidcConfig {
        issuer: issuer.issuer(),
        audiences: vec![DEFAULT_AUDIENCE.to_owned()],
        client_id: Some(DEFAULT_CLIENT_ID.to_owned()),
        client_secret: None,
        extra_scopes: vec!["groups".to_owned()],
        roles: RoleMapping::parse("groups", &[ROLE_MAP.to_owned()], None).unwrap(),
        jwks_ttl: Duration::from_secs(300),
        min_refetch: Duration::from_secs(1),
        http_timeout: Duration::from_secs(10),
    })
    .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = "http://127.0.0.1:9/ui/callback";
    // The browser's trip: authorization URL -> 302 back to redirect_uri with code and state.
    let approve = |url: &str, hint: &str| {
        let http = http.clone();
        let url = format!("{url}&login_hint={hint}");
        async move {
            let resp = http.get(url).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 302);
            let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
            assert!(loc.as_str().starts_with(redirect), "{loc}");
            let q: std::collections::HashMap<String, String> =
                loc.query_pairs().into_owned().collect();
            (q["code"].clone(), q["state"].clone())
        }
    };

    let login = oidc.start(redirect).await.unwrap();
    let url = url::Url::parse(&login.authorization_url).unwrap();
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["scope"], "openid email profile groups");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(
        q["code_challenge"],
        metis_oidc::pkce_challenge(&login.pending.code_verifier)
    );
    assert_eq!(q["redirect_uri"], redirect);
    assert_eq!(q["state"], login.pending.state);
    assert_eq!(q["nonce"], login.pending.nonce);
    let (code, state) = approve(&login.authorization_url, "oscar").await;
    let who = oidc.finish(&code, &state, &login.pending).await.unwrap();
    assert_eq!(who.sub, "user-oscar");
    assert_eq!(who.email.as_deref(), Some("oscar@example.test"));
    assert_eq!(who.role, Role::Operator);
    assert_eq!(who.method, AuthMethod::Oidc);
    // A code is good once.
    let again = oidc
        .finish(&code, &state, &login.pending)
        .await
        .unwrap_err();
    assert_eq!(again.code(), "code_refused", "{again}");

    // A forged callback (other state) is refused before the code is spent.
    let login = oidc.start(redirect).await.unwrap();
    let (code, _) = approve(&login.authorization_url, "alice").await;
    let err = oidc
        .finish(&code, "forged", &login.pending)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "state_mismatch");
    // The right state with another login's verifier: the issuer refuses the PKCE check.
    let other = oidc.start(redirect).await.unwrap();
    let mut pending = login.pending.clone();
    pending.code_verifier = other.pending.code_verifier.clone();
    let err = oidc
        .finish(&code, &login.pending.state, &pending)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "code_refused", "{err}");
    // Another login's nonce: the id_token is refused.
    let (code, state) = approve(&other.authorization_url, "alice").await;
    let mut pending = other.pending.clone();
    pending.nonce = login.pending.nonce.clone();
    let err = oidc.finish(&code, &state, &pending).await.unwrap_err();
    assert_eq!(err.code(), "nonce_mismatch", "{err}");
    // A user without a mapped group logs in but gets no role.
    let login = oidc.start(redirect).await.unwrap();
    let (code, state) = approve(&login.authorization_url, "nobody").await;
    let err = oidc
        .finish(&code, &state, &login.pending)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "no_role", "{err}");
}
