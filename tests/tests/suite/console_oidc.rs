//! The console's single sign-on (OpenID Connect authorization code + PKCE) through a real
//! gateway process and the test issuer, driven like a browser: a small cookie jar that honours
//! `Path` and `Max-Age=0`, and redirects followed by hand so each hop can be checked.
//!
//! Covered: the full login (authorize, callback, the same-origin "signed in" page, the
//! session's identity, an admin change recorded with `method: oidc`), the pending-login
//! cookie's attributes, state mismatch, a replayed code, a missing / forged / expired pending
//! login, a user without a role (403), the issuer down (503), the failed-login limit shared
//! with the admin API (429), the redirect URI from `--console-public-url` or the request, and
//! which login forms an OIDC-only gateway shows.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use metis_ports::identity::PendingLogin;
use metis_tests::oidc_issuer::{DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, ROLE_MAP, TestIssuer};
use metis_tests::{GatewayOptions, TestGateway};
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::{Value, json};
use std::time::Duration;

const SESSION_KEY: &str = "console-oidc-test-session-key-0123456789";
const STATIC: &str = "console-oidc-static-token-7c2d9e";

async fn gateway(issuer: &TestIssuer, extra: &[&str]) -> TestGateway {
    let mut args: Vec<String> = [
        "--oidc-issuer",
        &issuer.issuer(),
        "--oidc-audience",
        DEFAULT_AUDIENCE,
        "--oidc-client-id",
        DEFAULT_CLIENT_ID,
        "--oidc-role-map",
        ROLE_MAP,
        "--console-session-key",
        SESSION_KEY,
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

struct Answer {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or(""))
    }

    /// The whole `Set-Cookie` header naming `name`.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }
}

/// A browser's cookies for the gateway's origin: name, value, path.
#[derive(Default)]
struct Jar(Vec<(String, String, String)>);

impl Jar {
    fn take(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let v = v.to_str().unwrap();
            let mut parts = v.split(';').map(str::trim);
            let (name, value) = parts.next().unwrap().split_once('=').unwrap();
            let mut path = "/".to_owned();
            let mut gone = value.is_empty();
            for attr in parts {
                if let Some(p) = attr.strip_prefix("Path=") {
                    path = p.to_owned();
                }
                if attr == "Max-Age=0" {
                    gone = true;
                }
            }
            self.0.retain(|(n, _, p)| !(n == name && *p == path));
            if !gone {
                self.0.push((name.to_owned(), value.to_owned(), path));
            }
        }
    }

    fn header_for(&self, path: &str) -> String {
        self.0
            .iter()
            .filter(|(_, _, p)| {
                path == p || path.starts_with(&format!("{}/", p.trim_end_matches('/')))
            })
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _, _)| n == name)
    }
}

/// One browser: no automatic redirects; the jar's cookies go to the gateway only.
struct Browser {
    c: reqwest::Client,
    base: String,
    jar: Jar,
}

impl Browser {
    fn new(gw: &TestGateway) -> Self {
        Browser {
            c: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: gw.base_url.trim_end_matches('/').to_owned(),
            jar: Jar::default(),
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder, url: &str) -> Answer {
        let req = match url.strip_prefix(&self.base) {
            Some(rest) => {
                let path = rest.split('?').next().unwrap_or("/");
                let cookies = self.jar.header_for(path);
                if cookies.is_empty() {
                    req
                } else {
                    req.header("cookie", cookies)
                }
            }
            None => req,
        };
        let resp = req.send().await.unwrap();
        let headers = resp.headers().clone();
        if url.starts_with(&self.base) {
            self.jar.take(&headers);
        }
        Answer {
            status: resp.status().as_u16(),
            headers,
            text: resp.text().await.unwrap(),
        }
    }

    async fn get(&mut self, url: &str) -> Answer {
        let req = self.c.get(url);
        self.send(req, url).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Start a login as `hint` and follow the issuer's redirect: the callback URL.
    async fn authorize(&mut self, hint: &str) -> String {
        let start = self
            .get(&self.url(&format!("/ui/oidc/login?login_hint={hint}")))
            .await;
        assert_eq!(start.status, 302, "{}", start.text);
        let at_issuer = start.header("location").to_owned();
        let approved = self.get(&at_issuer).await;
        assert_eq!(approved.status, 302, "{}", approved.text);
        let callback = approved.header("location").to_owned();
        assert!(
            callback.starts_with(&self.url("/ui/oidc/callback?")),
            "{callback}"
        );
        callback
    }

    /// The session's `GET /ui/api/session`.
    async fn session(&mut self) -> Answer {
        let url = self.url("/ui/api/session");
        self.get(&url).await
    }

    async fn admin(
        &mut self,
        method: reqwest::Method,
        path: &str,
        csrf: &str,
        body: Option<Value>,
    ) -> Answer {
        let url = self.url(path);
        let mut req = self.c.request(method, &url).header("x-metis-csrf", csrf);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req, &url).await
    }
}

fn query_param(url: &str, name: &str) -> String {
    let parsed = url::Url::parse(url).unwrap();
    parsed
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A refused login renders the login page (HTML, the security headers) with its reason,
/// and never the code it was given.
fn assert_login_page(a: &Answer, status: u16, reason: &str, code: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert!(
        a.header("content-type").starts_with("text/html"),
        "{}",
        a.header("content-type")
    );
    assert!(
        a.header("content-security-policy")
            .contains("script-src 'self'")
    );
    assert!(a.text.contains("id=\"login-error\""), "{}", a.text);
    assert!(a.text.contains(reason), "wanted '{reason}' in {}", a.text);
    assert!(
        code.is_empty() || !a.text.contains(code),
        "the code is echoed: {}",
        a.text
    );
    assert!(
        a.set_cookie("metis_console").is_none(),
        "no session on a refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_logs_in_and_admin_changes_record_the_oidc_identity() {
    let issuer = TestIssuer::start().await.unwrap();
    let gw = gateway(&issuer, &[]).await;
    let mut b = Browser::new(&gw);

    // An OIDC-only gateway: the SSO button, no token form.
    let page = b.get(&b.url("/ui/login")).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(
        page.text
            .contains("<p ><a class=\"button\" href=\"/ui/oidc/login\""),
        "{}",
        page.text
    );
    assert!(
        page.text.contains("id=\"token-login\" hidden"),
        "{}",
        page.text
    );

    let start = b.get(&b.url("/ui/oidc/login?login_hint=oscar")).await;
    assert_eq!(start.status, 302, "{}", start.text);
    let location = start.header("location").to_owned();
    assert!(
        location.starts_with(&format!("{}/authorize?", issuer.issuer())),
        "{location}"
    );
    assert_eq!(query_param(&location, "response_type"), "code");
    assert_eq!(query_param(&location, "client_id"), DEFAULT_CLIENT_ID);
    assert_eq!(query_param(&location, "code_challenge_method"), "S256");
    assert_eq!(query_param(&location, "login_hint"), "oscar");
    assert_eq!(
        query_param(&location, "redirect_uri"),
        b.url("/ui/oidc/callback")
    );
    let pending = start
        .set_cookie("metis_console_oidc")
        .expect("pending-login cookie");
    for attr in [
        "Path=/ui/oidc/callback",
        "Max-Age=600",
        "HttpOnly",
        "SameSite=Lax",
    ] {
        assert!(pending.contains(attr), "{attr} missing: {pending}");
    }
    // The pending login's secrets are not sent anywhere but the callback.
    assert!(b.jar.header_for("/ui/").is_empty());

    let approved = b.get(&location).await;
    assert_eq!(approved.status, 302, "{}", approved.text);
    let callback = approved.header("location").to_owned();
    let code = query_param(&callback, "code");
    let done = b.get(&callback).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert!(
        done.header("content-security-policy")
            .contains("script-src 'self'")
    );
    assert!(
        done.text
            .contains("<meta http-equiv=\"refresh\" content=\"0;url=/ui/\">"),
        "{}",
        done.text
    );
    assert!(done.text.contains("href=\"/ui/\""), "{}", done.text);
    assert!(done.text.contains("oscar@example.test"), "{}", done.text);
    assert!(!done.text.contains(&code), "the code is echoed");
    let session = done.set_cookie("metis_console").expect("session cookie");
    assert!(
        session.contains("SameSite=Strict") && session.contains("HttpOnly"),
        "{session}"
    );
    assert!(
        done.set_cookie("metis_console_oidc")
            .unwrap()
            .contains("Max-Age=0")
    );
    assert!(
        !b.jar.has("metis_console_oidc"),
        "the pending login is used up"
    );

    let ui = b.get(&b.url("/ui/")).await;
    assert_eq!(
        ui.status,
        200,
        "the console, not the login: {}",
        ui.header("location")
    );
    let info = b.session().await;
    assert_eq!(info.status, 200, "{}", info.text);
    let v: Value = serde_json::from_str(&info.text).unwrap();
    assert_eq!(v["sub"], "user-oscar");
    assert_eq!(v["email"], "oscar@example.test");
    assert_eq!(v["role"], "operator");
    assert_eq!(v["method"], "oidc");
    assert_eq!(v["oidc_login"], true);
    let csrf = v["csrf"].as_str().unwrap().to_owned();

    let issued = b
        .admin(
            reqwest::Method::POST,
            "/admin/v1/keys",
            &csrf,
            Some(json!({"name": "by-sso", "workspace": "/srv/sso"})),
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.text);
    let id = serde_json::from_str::<Value>(&issued.text).unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = b
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/keys/{id}/revoke"),
            &csrf,
            Some(json!({})),
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    let audit = b
        .admin(
            reqwest::Method::GET,
            "/admin/v1/audit?type=gateway.key_revoked",
            &csrf,
            None,
        )
        .await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    let events: Value = serde_json::from_str(&audit.text).unwrap();
    let event = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["payload"]["gateway_key_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no revoke of {id}: {events}"))
        .clone();
    assert_eq!(
        event["payload"]["admin"],
        json!({"sub": "user-oscar", "email": "oscar@example.test", "role": "operator", "method": "oidc"})
    );

    // Replaying the callback: without the pending cookie (used up) it is refused outright;
    // with the old cookie put back, the issuer refuses the used code.
    let again = b.get(&callback).await;
    assert_login_page(&again, 401, "no single sign-on login was started", &code);
    b.jar.0.push((
        "metis_console_oidc".to_owned(),
        pending
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned(),
        "/ui/oidc/callback".to_owned(),
    ));
    let replay = b.get(&callback).await;
    assert_login_page(&replay, 401, "refused the login code", &code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_whose_state_differs_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let gw = gateway(&issuer, &[]).await;
    let mut b = Browser::new(&gw);
    let callback = b.authorize("alice").await;
    let state = query_param(&callback, "state");
    let code = query_param(&callback, "code");
    let forged = callback.replace(&format!("state={state}"), "state=forged-state");
    assert_ne!(forged, callback);
    let a = b.get(&forged).await;
    assert_login_page(&a, 401, "state does not match", &code);
    // The pending login is gone too: the right state now finds nothing to finish.
    let a = b.get(&callback).await;
    assert_login_page(&a, 401, "no single sign-on login was started", &code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_forged_or_expired_pending_login_is_refused() {
    let issuer = TestIssuer::start().await.unwrap();
    let gw = gateway(&issuer, &[]).await;
    // Another browser than the one that started the login (no pending cookie).
    let mut started = Browser::new(&gw);
    let callback = started.authorize("alice").await;
    let code = query_param(&callback, "code");
    let mut other = Browser::new(&gw);
    let a = other.get(&callback).await;
    assert_login_page(&a, 401, "no single sign-on login was started", &code);

    // A pending cookie not signed by this gateway.
    other.jar.0.push((
        "metis_console_oidc".to_owned(),
        "7b7d.00".to_owned(),
        "/ui/oidc/callback".to_owned(),
    ));
    let a = other.get(&callback).await;
    assert_login_page(&a, 401, "not valid", &code);

    // A login started 11 minutes ago (signed with the gateway's key, so only its age is wrong).
    let sessions = metis_http::console::ConsoleSessions::new(metis_http::SessionSettings {
        key: SESSION_KEY.as_bytes().to_vec(),
        ttl: Duration::from_secs(600),
        secure: false,
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = sessions
        .pending_login_cookie_at(
            &PendingLogin {
                state: query_param(&callback, "state"),
                nonce: "n".to_owned(),
                code_verifier: "v".to_owned(),
                redirect_uri: other.url("/ui/oidc/callback"),
            },
            now - 660,
        )
        .unwrap();
    let pair = old.to_str().unwrap().split(';').next().unwrap().to_owned();
    other.jar.0.clear();
    other.jar.0.push((
        "metis_console_oidc".to_owned(),
        pair.split_once('=').unwrap().1.to_owned(),
        "/ui/oidc/callback".to_owned(),
    ));
    let a = other.get(&callback).await;
    assert_login_page(&a, 401, "has expired", &code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_a_role_gets_403_and_an_unreachable_issuer_503() {
    let issuer = TestIssuer::start().await.unwrap();
    let gw = gateway(&issuer, &[]).await;
    let mut b = Browser::new(&gw);
    let callback = b.authorize("nobody").await;
    let a = b.get(&callback).await;
    assert_login_page(&a, 403, "role", &query_param(&callback, "code"));
    assert!(b.session().await.status == 401);

    let callback = b.authorize("vera").await;
    issuer.set_down(true);
    let a = b.get(&callback).await;
    assert_login_page(
        &a,
        503,
        "cannot be reached",
        &query_param(&callback, "code"),
    );
    issuer.set_down(false);

    // The issuer's own refusal (`?error=`) is shown, not counted as a guess.
    let a = b
        .get(&b.url("/ui/oidc/callback?error=access_denied&error_description=user+cancelled"))
        .await;
    assert_login_page(&a, 401, "access_denied: user cancelled", "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_console_logins_feed_the_admin_auth_limit() {
    let issuer = TestIssuer::start().await.unwrap();
    let gw = gateway(
        &issuer,
        &[
            "--admin-token",
            STATIC,
            "--admin-auth-failures-per-minute",
            "3",
        ],
    )
    .await;
    let mut b = Browser::new(&gw);
    // The token form shows next to SSO when both are configured.
    let page = b.get(&b.url("/ui/login")).await;
    assert!(page.text.contains("id=\"token-login\" >"), "{}", page.text);
    // Each answer is the login page again, with a fresh form binding (cookie and field).
    let field_of = |a: &Answer| {
        a.text
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned()
    };
    let (c, login_url) = (b.c.clone(), b.url("/ui/login"));
    let post = |field: &str, token: &str| {
        let req = c
            .post(&login_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={field}&token={token}"));
        (req, login_url.clone())
    };
    let (req, url) = post(&field_of(&page), "wrong-token-1");
    let a = b.send(req, &url).await;
    assert_eq!(a.status, 401, "{}", a.text);
    let (req, url) = post(&field_of(&a), "wrong-token-2");
    let a = b.send(req, &url).await;
    assert_eq!(a.status, 401, "{}", a.text);
    let last_form = field_of(&a);
    let cb = b.url("/ui/oidc/callback?code=guess&state=guess");
    let a = b.get(&cb).await;
    assert_eq!(a.status, 401, "{}", a.text);

    // Over the limit: the right token, the callback and the admin API all answer 429.
    let (req, url) = post(&last_form, STATIC);
    let a = b.send(req, &url).await;
    assert_eq!(a.status, 429, "{}", a.text);
    let retry: u64 = a.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(a.text.contains("too many failed logins"), "{}", a.text);
    assert!(a.set_cookie("metis_console").is_none());
    let a = b.get(&cb).await;
    assert_eq!(a.status, 429, "{}", a.text);
    let api = gw
        .client()
        .get(gw.url("/admin/v1/keys"))
        .bearer_auth(STATIC)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_uri_comes_from_the_public_url_or_the_request() {
    let issuer = TestIssuer::start().await.unwrap();
    let redirect_of = |a: &Answer| query_param(a.header("location"), "redirect_uri");

    let gw = gateway(
        &issuer,
        &["--console-public-url", "https://metis.example.com/"],
    )
    .await;
    let mut b = Browser::new(&gw);
    let a = b.get(&b.url("/ui/oidc/login")).await;
    assert_eq!(
        redirect_of(&a),
        "https://metis.example.com/ui/oidc/callback"
    );

    // X-Forwarded-Proto counts only from a trusted proxy.
    let gw = gateway(&issuer, &[]).await;
    let mut b = Browser::new(&gw);
    let url = b.url("/ui/oidc/login");
    let req = b.c.get(&url).header("x-forwarded-proto", "https");
    let a = b.send(req, &url).await;
    assert_eq!(redirect_of(&a), b.url("/ui/oidc/callback"));
    let gw = gateway(&issuer, &["--trusted-proxy", "127.0.0.1"]).await;
    let mut b = Browser::new(&gw);
    let url = b.url("/ui/oidc/login");
    let req = b.c.get(&url).header("x-forwarded-proto", "https");
    let a = b.send(req, &url).await;
    assert_eq!(
        redirect_of(&a),
        b.url("/ui/oidc/callback")
            .replacen("http://", "https://", 1)
    );
}

/// An issuer without a client id verifies bearer JWTs only: no browser login, so no console
/// (a login page nobody could pass); the admin API is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_without_a_client_id_serves_no_console() {
    let issuer = TestIssuer::start().await.unwrap();
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec![
            "--oidc-issuer".into(),
            issuer.issuer(),
            "--oidc-audience".into(),
            DEFAULT_AUDIENCE.into(),
            "--oidc-role-map".into(),
            ROLE_MAP.into(),
        ],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let mut b = Browser::new(&gw);
    assert_eq!(b.get(&b.url("/ui/login")).await.status, 404);
    assert_eq!(b.get(&b.url("/admin/v1/keys")).await.status, 401);
}
