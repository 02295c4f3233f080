//! The operator console (`/ui`) through the real server: absent (404) without an admin
//! identity; the security headers on every answer; the token login (wrong token refused,
//! login CSRF, never echoed), the session cookie's attributes; the cookie as an admin
//! credential only together with its CSRF header; logout; tampered and expired cookies; the
//! embedded assets with their content types and caching.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::{GatewayOptions, TestGateway};
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::Value;
use std::time::Duration;

const ADMIN: &str = "console-test-admin-token-4b9e2a7c";

async fn gateway(extra: &[&str]) -> TestGateway {
    let mut extra_args: Vec<String> = vec!["--admin-token".into(), ADMIN.into()];
    extra_args.extend(extra.iter().map(|s| (*s).to_owned()));
    TestGateway::spawn_with(GatewayOptions {
        extra_args,
        ..GatewayOptions::default()
    })
    .await
    .unwrap()
}

/// A client that shows redirects instead of following them and keeps no cookies of its own
/// (each test sends exactly the cookies it means to).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    text: String,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        text: resp.text().await.unwrap(),
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).map_or("", |v| v.to_str().unwrap_or(""))
}

/// The `name=value` pair of the `Set-Cookie` header naming `name`, and the whole header.
fn set_cookie(a: &Answer, name: &str) -> Option<(String, String)> {
    a.headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| (v.split(';').next().unwrap().to_owned(), v.to_owned()))
}

/// The login page's cookie and hidden CSRF field.
async fn login_form(gw: &TestGateway, c: &reqwest::Client) -> (String, String) {
    let page = send(c.get(gw.url("/ui/login"))).await;
    assert_eq!(page.status, 200, "{}", page.text);
    let (cookie, _) = set_cookie(&page, "metis_console_login").expect("login form cookie");
    let field = page
        .text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf field in the login page")
        .to_owned();
    (cookie, field)
}

async fn post_login(
    gw: &TestGateway,
    c: &reqwest::Client,
    cookie: &str,
    csrf: &str,
    token: &str,
) -> Answer {
    send(
        c.post(gw.url("/ui/login"))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "csrf={csrf}&token={}",
                token.replace('%', "%25").replace('&', "%26")
            )),
    )
    .await
}

/// Log in with the admin token: the session cookie pair and its CSRF token.
async fn login(gw: &TestGateway, c: &reqwest::Client) -> (String, String) {
    let (form_cookie, field) = login_form(gw, c).await;
    let a = post_login(gw, c, &form_cookie, &field, ADMIN).await;
    assert_eq!(a.status, 303, "{}", a.text);
    assert_eq!(header(&a, "location"), "/ui/");
    let (cookie, _) = set_cookie(&a, "metis_console").expect("session cookie");
    let info = send(c.get(gw.url("/ui/api/session")).header("cookie", &cookie)).await;
    assert_eq!(info.status, 200, "{}", info.text);
    let v: Value = serde_json::from_str(&info.text).unwrap();
    (cookie, v["csrf"].as_str().unwrap().to_owned())
}

async fn keys_with(
    gw: &TestGateway,
    c: &reqwest::Client,
    cookie: &str,
    csrf: Option<&str>,
) -> Answer {
    let mut req = c.get(gw.url("/admin/v1/keys")).header("cookie", cookie);
    if let Some(t) = csrf {
        req = req.header("x-metis-csrf", t);
    }
    send(req).await
}

fn assert_security_headers(a: &Answer, what: &str) {
    let csp = header(a, "content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "{what}: CSP {csp:?} lacks {part}");
    }
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(header(a, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header(a, "referrer-policy"), "no-referrer", "{what}");
}

#[tokio::test]
async fn the_console_is_absent_without_an_admin_identity() {
    let gw = TestGateway::spawn().await.unwrap();
    let c = client();
    for path in [
        "/ui",
        "/ui/",
        "/ui/login",
        "/ui/api/session",
        "/ui/assets/app.js",
    ] {
        let a = send(c.get(gw.url(path))).await;
        assert_eq!(a.status, 404, "{path}: {}", a.text);
        assert_security_headers(&a, path);
    }
    let a = send(
        c.post(gw.url("/ui/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("token=x"),
    )
    .await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn every_console_answer_carries_the_security_headers() {
    let gw = gateway(&[]).await;
    let c = client();
    let (cookie, _) = login(&gw, &c).await;
    for (path, with_cookie) in [
        ("/ui", false),
        ("/ui/", true),
        ("/ui/login", false),
        ("/ui/api/session", false),
        ("/ui/api/session", true),
        ("/ui/assets/app.js", false),
        ("/ui/nope", true),
    ] {
        let mut req = c.get(gw.url(path));
        if with_cookie {
            req = req.header("cookie", &cookie);
        }
        let a = send(req).await;
        assert_security_headers(&a, path);
    }
    // Pages and JSON are never cached; without a session the app redirects to the login.
    let a = send(c.get(gw.url("/ui/"))).await;
    assert_eq!(a.status, 303);
    assert_eq!(header(&a, "location"), "/ui/login");
    let a = send(c.get(gw.url("/ui/")).header("cookie", &cookie)).await;
    assert_eq!(a.status, 200);
    assert!(header(&a, "content-type").starts_with("text/html"));
    assert_eq!(header(&a, "cache-control"), "no-store");
    assert!(!a.text.contains("<style") && !a.text.contains("<script>"));
}

#[tokio::test]
async fn assets_have_their_content_types_and_versioned_caching() {
    let gw = gateway(&[]).await;
    let c = client();
    let (cookie, _) = login(&gw, &c).await;
    let index = send(c.get(gw.url("/ui/")).header("cookie", &cookie)).await;
    let js_url = index
        .text
        .split("src=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    assert!(js_url.starts_with("/ui/assets/app.js?v="), "{js_url}");
    let js = send(c.get(gw.url(&js_url))).await;
    assert_eq!(js.status, 200);
    assert_eq!(
        header(&js, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert!(header(&js, "cache-control").contains("immutable"));
    let etag = header(&js, "etag").to_owned();
    assert!(etag.starts_with('"'), "{etag}");
    let again = send(c.get(gw.url(&js_url)).header("if-none-match", &etag)).await;
    assert_eq!(again.status, 304);
    assert!(again.text.is_empty());
    // The bare URL is revalidated, never cached as immutable.
    let bare = send(c.get(gw.url("/ui/assets/app.css"))).await;
    assert_eq!(header(&bare, "content-type"), "text/css; charset=utf-8");
    assert_eq!(header(&bare, "cache-control"), "no-cache");
    let svg = send(c.get(gw.url("/ui/assets/favicon.svg"))).await;
    assert_eq!(header(&svg, "content-type"), "image/svg+xml");
    let missing = send(c.get(gw.url("/ui/assets/other.js"))).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn login_refuses_a_wrong_token_and_a_forged_form_and_never_echoes_it() {
    let gw = gateway(&[]).await;
    let c = client();
    let (form_cookie, field) = login_form(&gw, &c).await;
    let wrong = "wrong-token-<script>alert(1)</script>";
    let a = post_login(&gw, &c, &form_cookie, &field, wrong).await;
    assert_eq!(a.status, 401);
    assert!(a.text.contains("wrong admin token"), "{}", a.text);
    assert!(!a.text.contains("wrong-token"), "the token was echoed");
    assert!(set_cookie(&a, "metis_console").is_none());
    // The right token without the form's cookie (a post from another site) is refused.
    let a = post_login(&gw, &c, "", &field, ADMIN).await;
    assert_eq!(a.status, 403, "{}", a.text);
    assert!(set_cookie(&a, "metis_console").is_none());
    // ... and so is a field that does not belong to the cookie.
    let a = post_login(&gw, &c, &form_cookie, "00", ADMIN).await;
    assert_eq!(a.status, 403);
    assert!(set_cookie(&a, "metis_console").is_none());
}

#[tokio::test]
async fn the_right_token_starts_a_strict_http_only_session() {
    let gw = gateway(&[]).await;
    let c = client();
    let (form_cookie, field) = login_form(&gw, &c).await;
    let a = post_login(&gw, &c, &form_cookie, &field, ADMIN).await;
    assert_eq!(a.status, 303, "{}", a.text);
    let (_, whole) = set_cookie(&a, "metis_console").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(whole.contains(attr), "{whole} lacks {attr}");
    }
    assert!(!whole.contains("Secure"), "plain HTTP listener: {whole}");
    assert!(!whole.contains(ADMIN), "the cookie carries the admin token");
    let (cookie, csrf) = login(&gw, &c).await;
    let info: Value = serde_json::from_str(
        &send(c.get(gw.url("/ui/api/session")).header("cookie", &cookie))
            .await
            .text,
    )
    .unwrap();
    assert_eq!(info["sub"], "static-token");
    assert_eq!(info["role"], "admin");
    assert_eq!(info["method"], "static_token");
    assert_eq!(info["oidc_login"], false);
    assert_eq!(info["csrf"], csrf.as_str());
    assert!(info["email"].is_null());
    let none = send(c.get(gw.url("/ui/api/session"))).await;
    assert_eq!(none.status, 401);
}

#[tokio::test]
async fn the_admin_api_takes_the_cookie_only_with_its_csrf_header() {
    let gw = gateway(&[]).await;
    let c = client();
    let (cookie, csrf) = login(&gw, &c).await;
    let a = keys_with(&gw, &c, &cookie, None).await;
    assert!(matches!(a.status, 401 | 403), "{}: {}", a.status, a.text);
    let a = keys_with(&gw, &c, &cookie, Some("0123")).await;
    assert!(matches!(a.status, 401 | 403), "{}: {}", a.status, a.text);
    assert!(a.text.contains("X-Metis-CSRF"), "{}", a.text);
    let a = keys_with(&gw, &c, &cookie, Some(&csrf)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v: Value = serde_json::from_str(&a.text).unwrap();
    assert!(v["keys"].is_array());
    // A change through the cookie works the same way.
    let created = send(
        c.post(gw.url("/admin/v1/keys"))
            .header("cookie", &cookie)
            .header("x-metis-csrf", &csrf)
            .json(&serde_json::json!({"name": "from-console", "workspace": "/srv/console"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    // The CSRF header alone (no cookie) is no credential.
    let a = send(
        c.get(gw.url("/admin/v1/keys"))
            .header("x-metis-csrf", &csrf),
    )
    .await;
    assert_eq!(a.status, 401);
    // The bearer token keeps working.
    let a = send(c.get(gw.url("/admin/v1/keys")).bearer_auth(ADMIN)).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn logout_ends_the_session() {
    let gw = gateway(&[]).await;
    let c = client();
    let (cookie, csrf) = login(&gw, &c).await;
    // Logout needs the CSRF header too.
    let a = send(c.post(gw.url("/ui/logout")).header("cookie", &cookie)).await;
    assert_eq!(a.status, 403, "{}", a.text);
    assert_eq!(keys_with(&gw, &c, &cookie, Some(&csrf)).await.status, 200);
    let a = send(
        c.post(gw.url("/ui/logout"))
            .header("cookie", &cookie)
            .header("x-metis-csrf", &csrf),
    )
    .await;
    assert_eq!(a.status, 204, "{}", a.text);
    let (cleared, whole) = set_cookie(&a, "metis_console").unwrap();
    assert_eq!(cleared, "metis_console=");
    assert!(whole.contains("Max-Age=0"));
    // The old cookie, replayed, is refused everywhere.
    let a = keys_with(&gw, &c, &cookie, Some(&csrf)).await;
    assert_eq!(a.status, 401, "{}", a.text);
    assert!(a.text.contains("logged out"), "{}", a.text);
    assert_eq!(
        send(c.get(gw.url("/ui/api/session")).header("cookie", &cookie))
            .await
            .status,
        401
    );
    assert_eq!(
        send(c.get(gw.url("/ui/")).header("cookie", &cookie))
            .await
            .status,
        303
    );
}

#[tokio::test]
async fn tampered_and_foreign_cookies_are_refused() {
    let gw = gateway(&[]).await;
    let c = client();
    let (cookie, csrf) = login(&gw, &c).await;
    // Change the role inside the signed payload (hex of JSON): "admin" → "admio".
    let (name, value) = cookie.split_once('=').unwrap();
    let (payload, sig) = value.split_once('.').unwrap();
    let admin_hex = "61646d696e"; // "admin"
    assert!(payload.contains(admin_hex));
    let forged = format!(
        "{name}={}.{sig}",
        payload.replacen(admin_hex, "61646d696f", 1)
    );
    let a = keys_with(&gw, &c, &forged, Some(&csrf)).await;
    assert_eq!(a.status, 401, "{}", a.text);
    assert!(a.text.contains("not valid"), "{}", a.text);
    // A cookie signed by another gateway (another key) is refused too.
    let other = gateway(&[]).await;
    let (foreign, foreign_csrf) = login(&other, &client()).await;
    let a = keys_with(&gw, &c, &foreign, Some(&foreign_csrf)).await;
    assert_eq!(a.status, 401, "{}", a.text);
}

#[tokio::test]
async fn replicas_with_the_same_session_key_accept_each_others_cookies() {
    let key = "a-shared-console-session-key-0123456789";
    let a = gateway(&["--console-session-key", key]).await;
    let b = gateway(&["--console-session-key", key]).await;
    let c = client();
    let (cookie, csrf) = login(&a, &c).await;
    let r = keys_with(&b, &c, &cookie, Some(&csrf)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn an_expired_cookie_is_refused() {
    let gw = gateway(&["--console-session-ttl", "3s"]).await;
    let c = client();
    let (cookie, csrf) = login(&gw, &c).await;
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let a = keys_with(&gw, &c, &cookie, Some(&csrf)).await;
    assert_eq!(a.status, 401, "{}", a.text);
    assert!(a.text.contains("expired"), "{}", a.text);
}

/// The console asks for windows such as "the last 7 days", which start on the 29th, 30th or
/// 31st of a month on many days of the year. `/admin/v1/usage` and `/admin/v1/audit` used to
/// refuse those days (their `since`/`until` pattern allowed days 01–28 only), so the Spend
/// and Audit pages failed with a 400 on those days. Impossible dates still get a 400 naming
/// the field.
#[tokio::test]
async fn usage_and_audit_take_windows_starting_late_in_a_month() {
    let gw = gateway(&[]).await;
    let c = client();
    for path in [
        "/admin/v1/usage?since=2026-11-30T10:00:00Z&until=2026-12-07T10:00:00Z",
        "/admin/v1/usage?since=2026-01-31T00:00:00Z&until=2026-02-01T00:00:00Z&group_by=team",
        "/admin/v1/audit?since=2026-10-29T00:00:00Z&until=2026-10-31T23:59:59Z",
    ] {
        let a = send(c.get(gw.url(path)).bearer_auth(ADMIN)).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
    }
    let a = send(
        c.get(gw.url("/admin/v1/usage?since=2026-02-30T00:00:00Z"))
            .bearer_auth(ADMIN),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(a.text.contains("since"), "{}", a.text);
}

/// A console session carries its identity's role into the admin API: a `viewer` session
/// (minted with the gateway's session key through the module's public `start`) reads keys but
/// may not issue one (403 naming the role), and the operator's actions stay hidden from it.
#[tokio::test]
async fn a_console_session_has_its_identitys_role() {
    use metis_domain::admin::{AdminIdentity, AuthMethod, Role};
    use metis_http::console::ConsoleSessions;
    let key = "console-role-test-session-key-0123456789";
    let gw = gateway(&["--console-session-key", key]).await;
    let sessions = ConsoleSessions::new(metis_http::SessionSettings {
        key: key.as_bytes().to_vec(),
        ttl: Duration::from_secs(600),
        secure: false,
    });
    let viewer = AdminIdentity {
        sub: "viewer-1".to_owned(),
        email: Some("viewer@example.com".to_owned()),
        role: Role::Viewer,
        method: AuthMethod::Oidc,
    };
    let set = sessions.start(&viewer).unwrap();
    let cookie = set.to_str().unwrap().split(';').next().unwrap().to_owned();
    let c = client();
    let info = send(c.get(gw.url("/ui/api/session")).header("cookie", &cookie)).await;
    assert_eq!(info.status, 200, "{}", info.text);
    let v: Value = serde_json::from_str(&info.text).unwrap();
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["email"], "viewer@example.com");
    let csrf = v["csrf"].as_str().unwrap().to_owned();
    assert_eq!(keys_with(&gw, &c, &cookie, Some(&csrf)).await.status, 200);
    let issue = send(
        c.post(gw.url("/admin/v1/keys"))
            .header("cookie", &cookie)
            .header("x-metis-csrf", &csrf)
            .json(&serde_json::json!({"name": "nope", "workspace": "/srv/nope"})),
    )
    .await;
    assert_eq!(issue.status, 403, "{}", issue.text);
    assert!(issue.text.contains("operator"), "{}", issue.text);
}
