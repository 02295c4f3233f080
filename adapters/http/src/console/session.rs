//! The operator console's session: a signed cookie, its CSRF token, logout.
//!
//! The cookie `metis_console` carries the identity and an expiry, signed with HMAC-SHA256
//! under the console session key, so the gateway keeps no session table and any replica given
//! the same `--console-session-key` accepts it. What the browser cannot read (`HttpOnly`) it
//! cannot leak to a script; what another site cannot send (`SameSite=Strict`) it cannot use.
//!
//! Cookies alone would let a page elsewhere make the browser act (CSRF): every
//! cookie-authenticated `/admin/v1` request must also carry `X-Metis-CSRF`, a second HMAC of
//! the session id that only a page of this origin can learn (from `GET /ui/api/session`).
//!
//! Logout clears the cookie and puts its session id on this process's deny list until the
//! cookie would have expired anyway; other replicas learn nothing (the cookie expires there
//! at its expiry — documented in the README).

use metis_domain::admin::{AdminIdentity, AuthMethod, Role};
use metis_ports::identity::PendingLogin;
use poem::Request;
use poem::http::HeaderValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The session cookie's name.
pub const COOKIE: &str = "metis_console";
/// The short-lived cookie that binds the token login form to this browser (login CSRF).
pub const LOGIN_COOKIE: &str = "metis_console_login";
/// The header a cookie-authenticated admin request must carry.
pub const CSRF_HEADER: &str = "x-metis-csrf";
/// How long a login form stays valid.
const LOGIN_FORM_TTL_SECS: u64 = 600;
/// The cookie that carries a started single sign-on login (state, nonce, PKCE verifier) to
/// its callback.
pub const PENDING_COOKIE: &str = "metis_console_oidc";
/// The only path the pending-login cookie is sent to.
pub const CALLBACK_PATH: &str = "/ui/oidc/callback";
/// How long a started single sign-on login may take at the identity provider.
pub const PENDING_TTL_SECS: u64 = 600;
/// Bound on the logout deny list: beyond it the oldest entries are dropped first (they are
/// the ones nearest their expiry), so a flood of logins and logouts cannot grow memory.
const MAX_DENIED: usize = 100_000;

/// How the console signs and scopes its cookies.
#[derive(Clone)]
pub struct SessionSettings {
    /// HMAC key. Replicas behind one load balancer need the same key.
    pub key: Vec<u8>,
    /// Session lifetime.
    pub ttl: Duration,
    /// Add `Secure` (the listener serves TLS).
    pub secure: bool,
}

impl std::fmt::Debug for SessionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSettings")
            .field("key", &"<redacted>")
            .field("ttl", &self.ttl)
            .field("secure", &self.secure)
            .finish()
    }
}

/// Why a cookie-authenticated admin request was refused (the message goes to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No console cookie, or one that is tampered, expired or logged out.
    NoSession(&'static str),
    /// A valid session without the matching `X-Metis-CSRF` header.
    Csrf,
}

impl Refusal {
    #[must_use]
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::NoSession(m) => m,
            Refusal::Csrf => {
                "console session without a valid X-Metis-CSRF header (get it from GET /ui/api/session)"
            }
        }
    }
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub identity: AdminIdentity,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Issues and checks console sessions.
pub struct ConsoleSessions {
    settings: SessionSettings,
    /// Logged-out session ids with their expiry (unix seconds).
    denied: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for ConsoleSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSessions")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer.finalize());
    out
}

/// Compare two byte strings without an early exit (lengths are public: hex of fixed-size MACs).
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
}

/// 16 random bytes as hex, or `None` when the OS cannot supply randomness (then no session
/// or login form is issued: a guessable id would be worse than none).
fn random_id() -> Option<String> {
    let mut buf = [0u8; 16];
    getrandom::fill(&mut buf).ok()?;
    Some(to_hex(&buf))
}

/// A fresh random session key (32 bytes), for a gateway started without
/// `--console-session-key`.
#[must_use]
pub fn random_key() -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 32];
    getrandom::fill(&mut buf).ok()?;
    Some(buf)
}

/// The value of cookie `name` in the request's `Cookie` headers.
#[must_use]
pub fn cookie_value<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(poem::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn role_of(raw: &str) -> Option<Role> {
    Role::parse(raw).ok()
}

fn method_of(raw: &str) -> Option<AuthMethod> {
    match raw {
        "static_token" => Some(AuthMethod::StaticToken),
        "oidc" => Some(AuthMethod::Oidc),
        _ => None,
    }
}

/// The `method` name used in cookies and `GET /ui/api/session`.
#[must_use]
pub fn method_name(m: AuthMethod) -> &'static str {
    match m {
        AuthMethod::StaticToken => "static_token",
        AuthMethod::Oidc => "oidc",
    }
}

impl ConsoleSessions {
    #[must_use]
    pub fn new(settings: SessionSettings) -> Self {
        ConsoleSessions {
            settings,
            denied: Mutex::new(HashMap::new()),
        }
    }

    fn attributes(&self, max_age: u64) -> String {
        let secure = if self.settings.secure { "; Secure" } else { "" };
        format!("Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
    }

    /// Start a session for `identity`: the `Set-Cookie` value to send (the token login calls
    /// it, and so will the OpenID Connect browser login). `None` when the OS has no
    /// randomness for the session id.
    #[must_use]
    pub fn start(&self, identity: &AdminIdentity) -> Option<HeaderValue> {
        let id = random_id()?;
        let expires_at = now_secs().saturating_add(self.settings.ttl.as_secs().max(1));
        let payload = json!({
            "sid": id,
            "sub": identity.sub,
            "email": identity.email,
            "role": identity.role.as_str(),
            "method": method_name(identity.method),
            "exp": expires_at,
        })
        .to_string();
        let payload = to_hex(payload.as_bytes());
        let sig = to_hex(&hmac(&self.settings.key, &[b"cookie:", payload.as_bytes()]));
        let value = format!(
            "{COOKIE}={payload}.{sig}; {}",
            self.attributes(self.settings.ttl.as_secs().max(1))
        );
        HeaderValue::from_str(&value).ok()
    }

    /// The `Set-Cookie` value that removes the session cookie.
    #[must_use]
    pub fn clear(&self) -> HeaderValue {
        let value = format!("{COOKIE}=; {}", self.attributes(0));
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
    }

    /// The verified session of the request's cookie.
    ///
    /// # Errors
    /// Names why the cookie is not a session (absent, tampered, expired, logged out).
    pub fn session(&self, req: &Request) -> Result<Session, Refusal> {
        let raw = cookie_value(req, COOKIE)
            .filter(|v| !v.is_empty())
            .ok_or(Refusal::NoSession("no console session cookie"))?;
        self.verify(raw)
    }

    fn verify(&self, raw: &str) -> Result<Session, Refusal> {
        const BAD: Refusal = Refusal::NoSession("the console session cookie is not valid");
        let (payload, sig) = raw.split_once('.').ok_or(BAD)?;
        let expected = to_hex(&hmac(&self.settings.key, &[b"cookie:", payload.as_bytes()]));
        if !constant_time_eq(sig.as_bytes(), expected.as_bytes()) {
            return Err(BAD);
        }
        let claims: Value = from_hex(payload)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(BAD)?;
        let text = |k: &str| claims.get(k).and_then(Value::as_str);
        let expires_at = claims.get("exp").and_then(Value::as_u64).ok_or(BAD)?;
        if now_secs() >= expires_at {
            return Err(Refusal::NoSession(
                "the console session has expired; log in again",
            ));
        }
        let id = text("sid").ok_or(BAD)?.to_owned();
        if self.is_denied(&id) {
            return Err(Refusal::NoSession(
                "the console session was logged out; log in again",
            ));
        }
        let identity = AdminIdentity {
            sub: text("sub").ok_or(BAD)?.to_owned(),
            email: text("email").map(str::to_owned),
            role: text("role").and_then(role_of).ok_or(BAD)?,
            method: text("method").and_then(method_of).ok_or(BAD)?,
        };
        Ok(Session {
            id,
            identity,
            expires_at,
        })
    }

    /// The CSRF token of a session (an HMAC of its id: any replica with the key agrees).
    #[must_use]
    pub fn csrf_token(&self, session: &Session) -> String {
        to_hex(&hmac(
            &self.settings.key,
            &[b"csrf:", session.id.as_bytes()],
        ))
    }

    /// The identity behind a cookie-authenticated admin request: a valid session and its
    /// CSRF header. The admin auth checker calls this when no bearer token was presented.
    ///
    /// # Errors
    /// No valid session, or the CSRF header is missing or wrong.
    pub fn authenticate(&self, req: &Request) -> Result<AdminIdentity, Refusal> {
        let session = self.session(req)?;
        let presented = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if constant_time_eq(presented.as_bytes(), self.csrf_token(&session).as_bytes()) {
            Ok(session.identity)
        } else {
            Err(Refusal::Csrf)
        }
    }

    /// The identity of the request's console session, if any (no CSRF check: for reads that
    /// cannot change anything, such as the console's own pages).
    #[must_use]
    pub fn identify(&self, req: &Request) -> Option<AdminIdentity> {
        self.session(req).ok().map(|s| s.identity)
    }

    /// End `session` in this process (until its expiry).
    pub fn deny(&self, session: &Session) {
        let now = now_secs();
        let mut denied = match self.denied.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        denied.retain(|_, exp| *exp > now);
        if denied.len() >= MAX_DENIED
            && let Some(oldest) = denied
                .iter()
                .min_by_key(|(_, exp)| **exp)
                .map(|(k, _)| k.clone())
        {
            denied.remove(&oldest);
        }
        denied.insert(session.id.clone(), session.expires_at);
    }

    fn is_denied(&self, id: &str) -> bool {
        let denied = match self.denied.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        denied.contains_key(id)
    }

    /// A login form's binding: the cookie to set and the hidden field value that must come
    /// back with it. A page elsewhere can post the form but cannot read or set our cookie,
    /// so it cannot log a browser into a session of its choosing.
    #[must_use]
    pub fn login_form(&self) -> Option<(HeaderValue, String)> {
        let nonce = random_id()?;
        let field = to_hex(&hmac(&self.settings.key, &[b"login:", nonce.as_bytes()]));
        let secure = if self.settings.secure { "; Secure" } else { "" };
        let cookie = format!(
            "{LOGIN_COOKIE}={nonce}; Path=/ui/login; Max-Age={LOGIN_FORM_TTL_SECS}; HttpOnly; SameSite=Strict{secure}"
        );
        Some((HeaderValue::from_str(&cookie).ok()?, field))
    }

    /// Whether the posted login form's `csrf` field belongs to this browser's login cookie.
    #[must_use]
    pub fn login_form_matches(&self, req: &Request, field: &str) -> bool {
        let Some(nonce) = cookie_value(req, LOGIN_COOKIE) else {
            return false;
        };
        let expected = to_hex(&hmac(&self.settings.key, &[b"login:", nonce.as_bytes()]));
        constant_time_eq(field.as_bytes(), expected.as_bytes())
    }

    /// The `Set-Cookie` value that removes the login form cookie.
    #[must_use]
    pub fn clear_login_form(&self) -> HeaderValue {
        HeaderValue::from_static(
            "metis_console_login=; Path=/ui/login; Max-Age=0; HttpOnly; SameSite=Strict",
        )
    }
}

impl ConsoleSessions {
    /// The `Set-Cookie` value that carries a started single sign-on login to the callback.
    ///
    /// Signed (so it cannot be forged or altered), not encrypted: it holds this login's
    /// state, nonce and PKCE verifier, which only matter together with the authorization
    /// code the identity provider sends to the same browser. `HttpOnly` keeps them from
    /// scripts; `Path` keeps them off every request but the callback; 10 minutes bound a
    /// stale tab. `SameSite=Lax`, not Strict: the identity provider's redirect back is a
    /// cross-site top-level GET, which a Strict cookie would not accompany.
    #[must_use]
    pub fn pending_login_cookie(&self, pending: &PendingLogin) -> Option<HeaderValue> {
        self.pending_login_cookie_at(pending, now_secs())
    }

    /// [`Self::pending_login_cookie`] as if the clock read `now` (unix seconds): tests use it
    /// to present a login started more than 10 minutes ago.
    #[must_use]
    pub fn pending_login_cookie_at(&self, pending: &PendingLogin, now: u64) -> Option<HeaderValue> {
        let payload = json!({
            "state": pending.state,
            "nonce": pending.nonce,
            "verifier": pending.code_verifier,
            "redirect_uri": pending.redirect_uri,
            "exp": now.saturating_add(PENDING_TTL_SECS),
        })
        .to_string();
        let payload = to_hex(payload.as_bytes());
        let sig = to_hex(&hmac(&self.settings.key, &[b"oidc:", payload.as_bytes()]));
        let secure = if self.settings.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{PENDING_COOKIE}={payload}.{sig}; Path={CALLBACK_PATH}; Max-Age={PENDING_TTL_SECS}; HttpOnly; SameSite=Lax{secure}"
        ))
        .ok()
    }

    /// The started login of the request's pending-login cookie.
    ///
    /// # Errors
    /// Names why there is none: absent (cookies blocked, another browser, already used),
    /// altered, or older than 10 minutes.
    pub fn pending_login(&self, req: &Request) -> Result<PendingLogin, &'static str> {
        let raw = cookie_value(req, PENDING_COOKIE)
            .filter(|v| !v.is_empty())
            .ok_or(
                "no single sign-on login was started in this browser, or it was already used; start the login again",
            )?;
        self.verify_pending(raw, now_secs())
    }

    fn verify_pending(&self, raw: &str, now: u64) -> Result<PendingLogin, &'static str> {
        const BAD: &str = "the single sign-on login cookie is not valid; start the login again";
        let (payload, sig) = raw.split_once('.').ok_or(BAD)?;
        let expected = to_hex(&hmac(&self.settings.key, &[b"oidc:", payload.as_bytes()]));
        if !constant_time_eq(sig.as_bytes(), expected.as_bytes()) {
            return Err(BAD);
        }
        let claims: Value = from_hex(payload)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(BAD)?;
        let expires_at = claims.get("exp").and_then(Value::as_u64).ok_or(BAD)?;
        if now >= expires_at {
            return Err(
                "the single sign-on login took longer than 10 minutes and has expired; start the login again",
            );
        }
        let text = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(BAD)
        };
        Ok(PendingLogin {
            state: text("state")?,
            nonce: text("nonce")?,
            code_verifier: text("verifier")?,
            redirect_uri: text("redirect_uri")?,
        })
    }

    /// The `Set-Cookie` value that removes the pending-login cookie (a login is finished
    /// once, whatever the outcome).
    #[must_use]
    pub fn clear_pending_login(&self) -> HeaderValue {
        let secure = if self.settings.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{PENDING_COOKIE}=; Path={CALLBACK_PATH}; Max-Age=0; HttpOnly; SameSite=Lax{secure}"
        ))
        .unwrap_or(HeaderValue::from_static(""))
    }

    /// Whether the listener serves TLS (cookies get `Secure`, URLs `https`).
    #[must_use]
    pub fn secure(&self) -> bool {
        self.settings.secure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(ttl: u64) -> ConsoleSessions {
        ConsoleSessions::new(SessionSettings {
            key: b"test key of the console".to_vec(),
            ttl: Duration::from_secs(ttl),
            secure: false,
        })
    }

    fn request_with(cookie: &str, csrf: Option<&str>) -> Request {
        let mut b = Request::builder().header("cookie", cookie);
        if let Some(c) = csrf {
            b = b.header(CSRF_HEADER, c);
        }
        b.finish()
    }

    fn cookie_pair(set_cookie: &HeaderValue) -> String {
        set_cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            to_hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(from_hex(&to_hex(b"\x00\xffab")).unwrap(), b"\x00\xffab");
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }

    #[test]
    fn a_started_session_authenticates_only_with_its_csrf_token() {
        let s = sessions(3600);
        let set = s.start(&AdminIdentity::static_token()).unwrap();
        let text = set.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(!text.contains("Secure"));
        let pair = cookie_pair(&set);
        let session = s.session(&request_with(&pair, None)).unwrap();
        assert_eq!(session.identity, AdminIdentity::static_token());
        let csrf = s.csrf_token(&session);
        assert_eq!(
            s.authenticate(&request_with(&pair, Some(&csrf))).unwrap(),
            AdminIdentity::static_token()
        );
        assert_eq!(
            s.authenticate(&request_with(&pair, None)),
            Err(Refusal::Csrf)
        );
        assert_eq!(
            s.authenticate(&request_with(&pair, Some("00"))),
            Err(Refusal::Csrf)
        );
    }

    #[test]
    fn tampered_foreign_and_logged_out_cookies_are_refused() {
        let s = sessions(3600);
        let pair = cookie_pair(&s.start(&AdminIdentity::static_token()).unwrap());
        // Flip one payload digit.
        let mut bytes = pair.into_bytes();
        let i = COOKIE.len() + 3;
        bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(s.session(&request_with(&tampered, None)).is_err());
        // Another key's cookie.
        let other = ConsoleSessions::new(SessionSettings {
            key: b"another key".to_vec(),
            ..s.settings.clone()
        });
        let foreign = cookie_pair(&other.start(&AdminIdentity::static_token()).unwrap());
        assert!(s.session(&request_with(&foreign, None)).is_err());
        // Logout.
        let pair = cookie_pair(&s.start(&AdminIdentity::static_token()).unwrap());
        let session = s.session(&request_with(&pair, None)).unwrap();
        s.deny(&session);
        assert!(
            s.session(&request_with(&pair, None))
                .unwrap_err()
                .message()
                .contains("logged out")
        );
    }

    #[test]
    fn secure_flag_follows_tls() {
        let s = ConsoleSessions::new(SessionSettings {
            key: b"k".to_vec(),
            ttl: Duration::from_secs(60),
            secure: true,
        });
        let set = s.start(&AdminIdentity::static_token()).unwrap();
        assert!(set.to_str().unwrap().ends_with("; Secure"));
        assert!(s.clear().to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn login_forms_are_bound_to_their_cookie() {
        let s = sessions(60);
        let (cookie, field) = s.login_form().unwrap();
        let pair = cookie_pair(&cookie);
        assert!(s.login_form_matches(&request_with(&pair, None), &field));
        let (_, other_field) = s.login_form().unwrap();
        assert!(!s.login_form_matches(&request_with(&pair, None), &other_field));
        assert!(!s.login_form_matches(&Request::builder().finish(), &field));
    }

    fn pending() -> PendingLogin {
        PendingLogin {
            state: "st".to_owned(),
            nonce: "no".to_owned(),
            code_verifier: "ve".to_owned(),
            redirect_uri: "https://metis.example.com/ui/oidc/callback".to_owned(),
        }
    }

    fn raw_value(set_cookie: &HeaderValue) -> String {
        cookie_pair(set_cookie)
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    }

    #[test]
    fn a_pending_login_round_trips_only_signed_and_within_ten_minutes() {
        let s = sessions(60);
        let set = s.pending_login_cookie_at(&pending(), 1_000).unwrap();
        let text = set.to_str().unwrap();
        assert!(text.contains("Path=/ui/oidc/callback"), "{text}");
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Lax"));
        assert!(text.contains("Max-Age=600"));
        let raw = raw_value(&set);
        assert_eq!(s.verify_pending(&raw, 1_599).unwrap(), pending());
        assert!(
            s.verify_pending(&raw, 1_600)
                .unwrap_err()
                .contains("expired")
        );
        let other = ConsoleSessions::new(SessionSettings {
            key: b"another key".to_vec(),
            ..s.settings.clone()
        });
        assert!(
            other
                .verify_pending(&raw, 1_001)
                .unwrap_err()
                .contains("not valid")
        );
        // A session cookie's signature does not make a pending login (distinct HMAC labels).
        let session = raw_value(&s.start(&AdminIdentity::static_token()).unwrap());
        assert!(s.verify_pending(&session, 1_001).is_err());
        let req = request_with(&format!("{PENDING_COOKIE}={raw}"), None);
        assert!(
            s.pending_login(&req).is_err(),
            "long expired by the real clock"
        );
        assert!(
            s.pending_login(&Request::builder().finish())
                .unwrap_err()
                .contains("start the login again")
        );
        assert!(
            s.clear_pending_login()
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
    }
}
