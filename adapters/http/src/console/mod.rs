//! The operator console at `/ui`: a single-page app embedded in the binary (plain HTML, CSS
//! and JavaScript, no third-party code, so nothing to vendor and it works offline), the token
//! login, the OpenID Connect single sign-on login (authorization code + PKCE), logout, and the
//! session the page's `/admin/v1` calls run on.
//!
//! Served only when an admin identity is configured; otherwise `/ui` answers 404 like any
//! unknown path. Every `/ui` answer carries a strict Content-Security-Policy (no inline script
//! or style, nothing from another origin) and is never framed (see `security_headers`).

pub mod session;

use crate::admin_auth::AdminAccess;
use crate::reply::json_response;
use metis_domain::admin::AdminIdentity;
use metis_ports::identity::{AuthRefusal, OidcLogin};
use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Request, Response};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::ApiKey;
use serde_json::json;
pub use session::{ConsoleSessions, Refusal, SessionSettings};
use sha2::{Digest, Sha256};
use std::sync::{Arc, LazyLock};

/// How the console is configured (the composition root builds it when an admin identity is
/// configured).
#[derive(Clone)]
pub struct ConsoleConfig {
    pub session: SessionSettings,
    /// The OpenID Connect browser login ("Sign in with SSO"), when an issuer and a client id
    /// are configured.
    pub oidc: Option<Arc<dyn OidcLogin>>,
    /// The gateway's public base URL (`--console-public-url`, e.g.
    /// `https://metis.example.com`): the SSO `redirect_uri` is this plus
    /// `/ui/oidc/callback`. Without it the URL is taken from the request (see
    /// `Console::redirect_uri`).
    pub public_url: Option<String>,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("session", &self.session)
            .field("oidc_login", &self.oidc.is_some())
            .field("public_url", &self.public_url)
            .finish()
    }
}

/// The console's state, shared by its pages and the admin auth checker.
pub struct Console {
    pub sessions: ConsoleSessions,
    /// SHA-256 of the static admin token the login form checks (absent: no token login).
    /// Digests are compared, so the comparison takes the same time whatever the lengths.
    token_digest: Option<[u8; 32]>,
    oidc: Option<Arc<dyn OidcLogin>>,
    public_url: Option<String>,
    /// The admin API's failed-authentication limiter: failed console logins count against
    /// the same per-address budget as bad bearer tokens.
    access: AdminAccess,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("sessions", &self.sessions)
            .field("token_login", &self.token_digest.is_some())
            .field("oidc_login", &self.oidc.is_some())
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

fn digest(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(s.as_bytes()));
    out
}

impl Console {
    /// `token`: the static admin token, when one is configured (enables the token login);
    /// `access`: the admin API's auth state, whose failure limiter the logins feed.
    #[must_use]
    pub(crate) fn new(config: ConsoleConfig, token: Option<&str>, access: AdminAccess) -> Self {
        Console {
            sessions: ConsoleSessions::new(config.session),
            token_digest: token.map(digest),
            oidc: config.oidc,
            public_url: config
                .public_url
                .map(|u| u.trim().trim_end_matches('/').to_owned()),
            access,
        }
    }
}

/// The Content-Security-Policy of every `/ui` answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Add the console's security headers (and `no-store` unless the answer set its own caching).
pub fn security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// Whether `path` belongs to the console.
#[must_use]
pub fn is_console_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The console's session as an admin credential: the `metis_console` cookie together with
/// the `X-Metis-CSRF` header from `GET /ui/api/session`.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "X-Metis-CSRF",
    key_in = "header",
    checker = "check_console"
)]
pub struct ConsoleAuth(pub AdminIdentity);

async fn check_console(req: &Request, _csrf: ApiKey) -> poem::Result<AdminIdentity> {
    let refused = |message: &str| {
        poem::Error::from_response(json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {
                "message": message,
                "type": "authentication_error",
                "code": "invalid_console_session",
            }})
            .to_string(),
        ))
    };
    let console = req
        .data::<Arc<Console>>()
        .ok_or_else(|| refused("the console is not enabled on this gateway"))?;
    console
        .sessions
        .authenticate(req)
        .map_err(|r| refused(r.message()))
}

impl Console {
    /// The refusal of a `/admin/v1` request that presents the console session (the CSRF
    /// header) and no bearer, when that session does not authenticate: answered before the
    /// route runs, so the client learns why (expired, logged out, wrong CSRF token) instead
    /// of the bearer scheme's "missing credentials".
    #[must_use]
    pub fn refuse_admin(&self, req: &Request) -> Option<Response> {
        let headers = req.headers();
        if !headers.contains_key(session::CSRF_HEADER)
            || headers.contains_key(header::AUTHORIZATION)
        {
            return None;
        }
        let refusal = self.sessions.authenticate(req).err()?;
        Some(json_error(
            StatusCode::UNAUTHORIZED,
            "invalid_console_session",
            refusal.message(),
        ))
    }
}

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../console/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../console/favicon.svg"),
    },
];

/// Each asset's version: the first 16 hex digits of its SHA-256. Pages link
/// `/ui/assets/NAME?v=VERSION`, so an asset can be cached as immutable and a new binary's
/// assets are fetched under new URLs.
static VERSIONS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            Sha256::digest(a.body.as_bytes())
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect()
});

/// Replace `{{asset:NAME}}` with the asset's versioned URL.
fn link_assets(html: &str) -> String {
    let mut out = html.to_owned();
    for (a, v) in ASSETS.iter().zip(VERSIONS.iter()) {
        out = out.replace(
            &format!("{{{{asset:{}}}}}", a.name),
            &format!("/ui/assets/{}?v={v}", a.name),
        );
    }
    out
}

static INDEX: LazyLock<String> =
    LazyLock::new(|| link_assets(include_str!("../../console/index.html")));
static LOGIN: LazyLock<String> =
    LazyLock::new(|| link_assets(include_str!("../../console/login.html")));
/// The page a successful single sign-on lands on; see `Console::signed_in`.
static SIGNED_IN: LazyLock<String> =
    LazyLock::new(|| link_assets(include_str!("../../console/signed_in.html")));

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn html(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .body(body)
}

fn redirect(to: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to)
        .finish()
}

/// Percent-encode a query parameter value (everything but RFC 3986 unreserved characters).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `Host` value fit to build a URL from: a name or address with an optional port.
fn plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

fn unavailable() -> Response {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the operating system's random number generator is unavailable",
    )
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"error": {"message": message, "type": "authentication_error", "code": code}})
            .to_string(),
    )
}

/// Decode an `application/x-www-form-urlencoded` body into (name, value) pairs.
fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h << 4) | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Login form bodies are tiny; anything bigger is refused before it is read.
const MAX_FORM_BYTES: usize = 8 * 1024;

impl Console {
    /// Serve one `/ui` request.
    pub async fn serve(&self, mut req: Request) -> Response {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/ui" | "/ui/") => {
                if self.sessions.identify(&req).is_some() {
                    html(StatusCode::OK, INDEX.clone())
                } else {
                    redirect("/ui/login")
                }
            }
            (Method::GET | Method::HEAD, "/ui/login") => {
                if self.sessions.identify(&req).is_some() {
                    redirect("/ui/")
                } else {
                    self.login_page(StatusCode::OK, None)
                }
            }
            (Method::POST, "/ui/login") => {
                let body = req.take_body().into_bytes_limit(MAX_FORM_BYTES).await;
                match body {
                    Ok(b) => self.login(&req, &b),
                    Err(_) => self.login_page(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Some("the login form could not be read"),
                    ),
                }
            }
            (Method::POST, "/ui/logout") => self.logout(&req),
            (Method::GET, "/ui/oidc/login") => self.oidc_start(&req).await,
            (Method::GET, session::CALLBACK_PATH) => self.oidc_callback(&req).await,
            (Method::GET, "/ui/api/session") => self.session_info(&req),
            (Method::GET | Method::HEAD, p) if p.starts_with("/ui/assets/") => {
                asset(&req, &p["/ui/assets/".len()..])
            }
            (
                _,
                "/ui"
                | "/ui/"
                | "/ui/login"
                | "/ui/logout"
                | "/ui/api/session"
                | "/ui/oidc/login"
                | session::CALLBACK_PATH,
            ) => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this console path",
            ),
            _ => json_response(
                StatusCode::NOT_FOUND,
                json!({"error": {
                    "message": format!("no console page at {path}"),
                    "type": "invalid_request_error",
                    "code": "not_found",
                }})
                .to_string(),
            ),
        }
    }

    fn login_page(&self, status: StatusCode, error: Option<&str>) -> Response {
        let Some((cookie, field)) = self.sessions.login_form() else {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the operating system's random number generator is unavailable",
            );
        };
        let error_html = error.map_or_else(String::new, |e| {
            format!(
                "<p class=\"banner error\" role=\"alert\" id=\"login-error\">{}</p>",
                escape_html(e)
            )
        });
        let token_form = if self.token_digest.is_some() {
            ""
        } else {
            "hidden"
        };
        let oidc = if self.oidc.is_some() { "" } else { "hidden" };
        let body = LOGIN
            .replace("{{error}}", &error_html)
            .replace("{{csrf}}", &field)
            .replace("{{token_form_hidden}}", token_form)
            .replace("{{oidc_hidden}}", oidc);
        let mut resp = html(status, body);
        resp.headers_mut().append(header::SET_COOKIE, cookie);
        resp
    }

    fn login(&self, req: &Request, body: &[u8]) -> Response {
        if let Some(resp) = self.over_limit(req) {
            return resp;
        }
        let fields = form_fields(body);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        if !self.sessions.login_form_matches(req, field("csrf")) {
            return self.login_page(
                StatusCode::FORBIDDEN,
                Some("the login form has expired or was not sent from this page; try again"),
            );
        }
        let Some(expected) = &self.token_digest else {
            return self.login_page(
                StatusCode::FORBIDDEN,
                Some("token login is not enabled on this gateway"),
            );
        };
        if !session::constant_time_eq(&digest(field("token")), expected) {
            tracing::warn!("console login refused: wrong admin token");
            self.access.record_failure(req, "console_invalid_token");
            return self.login_page(StatusCode::UNAUTHORIZED, Some("wrong admin token"));
        }
        match self.sessions.start(&AdminIdentity::static_token()) {
            Some(cookie) => {
                let mut resp = redirect("/ui/");
                resp.headers_mut().append(header::SET_COOKIE, cookie);
                resp.headers_mut()
                    .append(header::SET_COOKIE, self.sessions.clear_login_form());
                resp
            }
            None => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the operating system's random number generator is unavailable",
            ),
        }
    }

    /// Logout needs the CSRF header too: otherwise a page elsewhere could log the operator
    /// out (a nuisance, not a breach, but free to prevent).
    fn logout(&self, req: &Request) -> Response {
        let session = match self.sessions.session(req) {
            Ok(s) => s,
            Err(_) => {
                let mut resp = Response::builder().status(StatusCode::NO_CONTENT).finish();
                resp.headers_mut()
                    .append(header::SET_COOKIE, self.sessions.clear());
                return resp;
            }
        };
        if let Err(r) = self.sessions.authenticate(req) {
            return json_error(StatusCode::FORBIDDEN, "invalid_csrf_token", r.message());
        }
        self.sessions.deny(&session);
        let mut resp = Response::builder().status(StatusCode::NO_CONTENT).finish();
        resp.headers_mut()
            .append(header::SET_COOKIE, self.sessions.clear());
        resp
    }

    fn session_info(&self, req: &Request) -> Response {
        match self.sessions.session(req) {
            Ok(s) => {
                let csrf = self.sessions.csrf_token(&s);
                let i = s.identity;
                json_response(
                    StatusCode::OK,
                    json!({
                        "sub": i.sub,
                        "email": i.email,
                        "role": i.role.as_str(),
                        "method": session::method_name(i.method),
                        "csrf": csrf,
                        "oidc_login": self.oidc.is_some(),
                    })
                    .to_string(),
                )
            }
            Err(r) => json_error(StatusCode::UNAUTHORIZED, "no_console_session", r.message()),
        }
    }
}

/// The single sign-on login (authorization code + PKCE, README "Operator console").
impl Console {
    /// While the client address is over the failed-authentication limit: the login page with
    /// 429 and `Retry-After`, without looking at what was presented (a right guess must look
    /// like a wrong one).
    fn over_limit(&self, req: &Request) -> Option<Response> {
        let retry = self.access.retry_after(req)?;
        let (max, window) = self.access.limit();
        let mut resp = self.login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "too many failed logins from this address ({max} per {window} s); try again in {retry} s"
            )),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry));
        Some(resp)
    }

    /// The `redirect_uri` of this gateway's callback: `--console-public-url` when set, else
    /// the scheme and `Host` of the request (https when the listener serves TLS, or when a
    /// `--trusted-proxy` says `X-Forwarded-Proto: https`). Behind a proxy that rewrites
    /// `Host`, only the flag gives the URL the identity provider has registered.
    fn redirect_uri(&self, req: &Request) -> Result<String, &'static str> {
        if let Some(base) = &self.public_url {
            return Ok(format!("{base}{}", session::CALLBACK_PATH));
        }
        let forwarded_https = || {
            self.access.peer_is_trusted_proxy(req)
                && req
                    .headers()
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
        };
        let scheme = if self.sessions.secure() || forwarded_https() {
            "https"
        } else {
            "http"
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(ToString::to_string))
            .filter(|h| plausible_host(h))
            .ok_or(
                "cannot tell this gateway's public URL from the request (no usable Host header); set --console-public-url",
            )?;
        Ok(format!("{scheme}://{host}{}", session::CALLBACK_PATH))
    }

    /// `GET /ui/oidc/login`: start a login at the identity provider. The started login rides
    /// in a signed cookie to the callback; `?login_hint=` is passed on (the provider may
    /// pre-fill the user name).
    async fn oidc_start(&self, req: &Request) -> Response {
        let Some(oidc) = &self.oidc else {
            return self.login_page(
                StatusCode::NOT_FOUND,
                Some("single sign-on is not configured on this gateway"),
            );
        };
        let redirect_uri = match self.redirect_uri(req) {
            Ok(u) => u,
            Err(m) => return self.login_page(StatusCode::BAD_REQUEST, Some(m)),
        };
        let start = match oidc.start(&redirect_uri).await {
            Ok(s) => s,
            Err(r) => return self.refused_login(req, &r),
        };
        let Some(cookie) = self.sessions.pending_login_cookie(&start.pending) else {
            return unavailable();
        };
        let mut url = start.authorization_url;
        let query = form_fields(req.uri().query().unwrap_or("").as_bytes());
        if let Some((_, hint)) = query
            .iter()
            .find(|(k, v)| k == "login_hint" && !v.is_empty())
        {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("login_hint=");
            url.push_str(&percent_encode(hint));
        }
        let Ok(location) = HeaderValue::from_str(&url) else {
            return self.login_page(
                StatusCode::BAD_GATEWAY,
                Some("the identity provider's authorization URL is not a valid URL"),
            );
        };
        let mut resp = Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, location)
            .finish();
        resp.headers_mut().append(header::SET_COOKIE, cookie);
        resp
    }

    /// `GET /ui/oidc/callback?code&state` (or `?error=` from the provider): finish the login.
    /// The pending-login cookie is cleared whatever the outcome: a login is finished once.
    async fn oidc_callback(&self, req: &Request) -> Response {
        let mut resp = self.finish_login(req).await;
        resp.headers_mut()
            .append(header::SET_COOKIE, self.sessions.clear_pending_login());
        resp
    }

    async fn finish_login(&self, req: &Request) -> Response {
        if let Some(resp) = self.over_limit(req) {
            return resp;
        }
        let Some(oidc) = &self.oidc else {
            return self.login_page(
                StatusCode::NOT_FOUND,
                Some("single sign-on is not configured on this gateway"),
            );
        };
        let query = form_fields(req.uri().query().unwrap_or("").as_bytes());
        let field = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        if !field("error").is_empty() {
            // The provider refused (the user cancelled, or is not allowed this client): no
            // guess, so not counted against the address.
            let told: String = format!("{}: {}", field("error"), field("error_description"))
                .trim_end_matches([' ', ':'])
                .chars()
                .take(300)
                .collect();
            tracing::warn!(error = %told, "console single sign-on refused by the identity provider");
            return self.login_page(
                StatusCode::UNAUTHORIZED,
                Some(&format!(
                    "the identity provider refused the login ({told}); start the login again"
                )),
            );
        }
        let pending = match self.sessions.pending_login(req) {
            Ok(p) => p,
            Err(m) => {
                self.access.record_failure(req, "console_no_pending_login");
                return self.login_page(StatusCode::UNAUTHORIZED, Some(m));
            }
        };
        let (code, state) = (field("code"), field("state"));
        if code.is_empty() || state.is_empty() {
            self.access.record_failure(req, "console_bad_callback");
            return self.login_page(
                StatusCode::UNAUTHORIZED,
                Some("the identity provider's callback lacks its code or state; start the login again"),
            );
        }
        match oidc.finish(code, state, &pending).await {
            Ok(identity) => self.signed_in(&identity),
            Err(r) => self.refused_login(req, &r),
        }
    }

    /// A refused login's page: 401 (counted against the address), 403 for a proven identity
    /// without a role, 503 while the identity provider is unreachable.
    fn refused_login(&self, req: &Request, refusal: &AuthRefusal) -> Response {
        tracing::warn!(code = refusal.code(), reason = %refusal, "console single sign-on refused");
        match refusal {
            AuthRefusal::Unauthenticated { code, message } => {
                self.access.record_failure(req, code);
                self.login_page(StatusCode::UNAUTHORIZED, Some(message))
            }
            AuthRefusal::NoRole(m) => {
                self.access.record_refusal("no_role");
                self.login_page(StatusCode::FORBIDDEN, Some(m))
            }
            AuthRefusal::IssuerUnavailable(m) => self.login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&format!(
                    "the identity provider cannot be reached right now; try again shortly ({m})"
                )),
            ),
        }
    }

    /// The session starts here, on a small page of our own origin that moves on to `/ui/`
    /// (meta refresh and a link; no script under the CSP). Not a redirect: the browser got
    /// here through the provider's cross-site redirect, and a navigation in such a chain
    /// does not carry the `SameSite=Strict` session cookie (Chromium), so `/ui/` would look
    /// logged out. The refresh starts from this page, so it is same-site.
    fn signed_in(&self, identity: &AdminIdentity) -> Response {
        let Some(cookie) = self.sessions.start(identity) else {
            return unavailable();
        };
        tracing::info!(sub = %identity.sub, role = identity.role.as_str(), "console single sign-on");
        let who = match &identity.email {
            Some(e) => format!("{e} ({}) · {}", identity.sub, identity.role.as_str()),
            None => format!("{} · {}", identity.sub, identity.role.as_str()),
        };
        let mut resp = html(
            StatusCode::OK,
            SIGNED_IN.replace("{{who}}", &escape_html(&who)),
        );
        resp.headers_mut().append(header::SET_COOKIE, cookie);
        resp
    }
}

fn asset(req: &Request, name: &str) -> Response {
    let Some((i, a)) = ASSETS.iter().enumerate().find(|(_, a)| a.name == name) else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {
                "message": format!("no console asset named {name}"),
                "type": "invalid_request_error",
                "code": "not_found",
            }})
            .to_string(),
        );
    };
    let version = VERSIONS.get(i).map_or("", String::as_str);
    let etag = format!("\"{version}\"");
    // Immutable only under the versioned URL; a bare URL is revalidated every time.
    let versioned = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == format!("v={version}")));
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let builder = Response::builder()
        .header(header::ETAG, etag.clone())
        .header(header::CACHE_CONTROL, cache);
    let unchanged = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if unchanged {
        return builder.status(StatusCode::NOT_MODIFIED).finish();
    }
    builder.content_type(a.content_type).body(a.body)
}

#[cfg(test)]
mod tests;
