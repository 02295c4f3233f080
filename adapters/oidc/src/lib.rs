//! `metis-oidc`: admin identities from an OpenID Connect issuer.
//!
//! - Discovery: `<issuer>/.well-known/openid-configuration`, whose `issuer` must equal the
//!   configured one exactly (a mismatch means a misconfigured or spoofed issuer).
//! - JWKS: fetched from the discovered `jwks_uri`, cached, refetched after `jwks_ttl` and when
//!   a token names an unknown `kid` (at most once per `min_refetch`), so an issuer's key
//!   rotation is followed without a restart while a flood of forged kids cannot make the
//!   gateway hammer the issuer.
//! - Tokens: RS256 and ES256 only; `iss`, `aud`, `exp`, `nbf` (60 s leeway) checked; the role
//!   comes from [`RoleMapping`].
//! - Browser login ([`OidcLogin`]): authorization code + PKCE (S256), `state` and `nonce`.
//!
//! An unreachable issuer is not fatal: the gateway starts, and admin requests that need the
//! issuer answer 503 (`IssuerUnavailable`) until discovery succeeds; attempts are spaced by
//! `min_refetch` so an outage does not turn into one outbound request per admin request.

pub mod jwt;

use async_trait::async_trait;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt::{Expect, VerifyKey};
use metis_domain::admin::{AdminIdentity, AuthMethod, RoleMapping};
use metis_ports::identity::{AdminVerifier, AuthRefusal, LoginStart, OidcLogin, PendingLogin};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// The scopes every login asks for; `OidcConfig::extra_scopes` are appended.
pub const BASE_SCOPES: &str = "openid email profile";

/// Configuration (from the `--oidc-*` flags).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer URL exactly as the issuer states it in its discovery document.
    pub issuer: String,
    /// Audiences a bearer token may carry (`--oidc-audience`; the client id when empty).
    pub audiences: Vec<String>,
    /// The console's OAuth client id (`--oidc-client-id`); the id_token audience.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub extra_scopes: Vec<String>,
    pub roles: RoleMapping,
    /// How long fetched keys are trusted before they are fetched again.
    pub jwks_ttl: Duration,
    /// The least time between two unscheduled fetches (unknown `kid`, discovery retries).
    pub min_refetch: Duration,
    /// Timeout of each request to the issuer.
    pub http_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    discovery: Option<Discovery>,
    keys: HashMap<String, VerifyKey>,
    /// When `keys` were fetched (None: never).
    fetched: Option<Instant>,
    /// The last unscheduled attempt (discovery or refetch), successful or not.
    last_attempt: Option<Instant>,
    /// Why the last attempt failed, for the 503 message while the issuer is down.
    last_error: Option<String>,
}

/// The OIDC adapter: implements [`AdminVerifier`] and [`OidcLogin`].
pub struct Oidc {
    cfg: OidcConfig,
    http: reqwest::Client,
    state: Mutex<State>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.cfg.issuer)
            .finish()
    }
}

fn unavailable(what: impl std::fmt::Display) -> AuthRefusal {
    AuthRefusal::IssuerUnavailable(format!("OIDC issuer unavailable: {what}"))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Oidc {
    /// A verifier for `cfg`. Nothing is fetched yet; call [`Oidc::refresh`] to discover
    /// eagerly (the gateway does at start, and logs the outcome).
    ///
    /// # Errors
    /// The issuer is not an http(s) URL, there is no audience (neither `--oidc-audience` nor
    /// `--oidc-client-id`), or the HTTP client cannot be built.
    pub fn new(mut cfg: OidcConfig) -> Result<Oidc, String> {
        let url = url::Url::parse(&cfg.issuer)
            .map_err(|e| format!("--oidc-issuer '{}' is not a URL: {e}", cfg.issuer))?;
        // The JWKS decides who is admin: fetched over plain HTTP, anyone on the path could
        // swap the keys. http:// is accepted only for an issuer on this machine (tests, a
        // local sidecar).
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
            return Err(format!(
                "--oidc-issuer '{}' must be an https:// URL (http:// only on a loopback address)",
                cfg.issuer
            ));
        }
        if cfg.audiences.is_empty() {
            match &cfg.client_id {
                Some(id) => cfg.audiences.push(id.clone()),
                None => {
                    return Err(
                        "OIDC needs --oidc-audience (the `aud` admin tokens carry) or --oidc-client-id".to_owned(),
                    );
                }
            }
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the OIDC HTTP client: {e}"))?;
        Ok(Oidc {
            cfg,
            http,
            state: Mutex::new(State::default()),
            rng: SystemRandom::new(),
        })
    }

    /// The configured issuer.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
    }

    async fn get_json(&self, url: &str) -> Result<Vec<u8>, String> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url} answered {}", resp.status()));
        }
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| format!("GET {url}: {e}"))
    }

    async fn discover(&self) -> Result<Discovery, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.cfg.issuer.trim_end_matches('/')
        );
        let body = self.get_json(&url).await?;
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("{url} is not a discovery document: {e}"))?;
        if doc.issuer != self.cfg.issuer {
            return Err(format!(
                "{url} names the issuer '{}', not '{}' (they must match exactly)",
                doc.issuer, self.cfg.issuer
            ));
        }
        Ok(doc)
    }

    /// Fetch discovery (if missing) and the JWKS now, regardless of the refetch spacing.
    ///
    /// # Errors
    /// What failed (discovery, mismatching issuer, JWKS fetch or parse).
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut st = self.state.lock().await;
        self.refresh_locked(&mut st).await
    }

    async fn refresh_locked(&self, st: &mut State) -> Result<usize, String> {
        st.last_attempt = Some(Instant::now());
        let result = async {
            let doc = match &st.discovery {
                Some(d) => d.clone(),
                None => self.discover().await?,
            };
            let body = self.get_json(&doc.jwks_uri).await?;
            let keys = jwt::parse_jwks(&body)?;
            Ok::<_, String>((doc, keys))
        }
        .await;
        match result {
            Ok((doc, keys)) => {
                let n = keys.len();
                if st.discovery.is_none() {
                    tracing::info!(issuer = %self.cfg.issuer, keys = n, "OIDC issuer discovered");
                }
                st.discovery = Some(doc);
                st.keys = keys;
                st.fetched = Some(Instant::now());
                st.last_error = None;
                Ok(n)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.cfg.issuer, error = %e, "OIDC issuer discovery or JWKS fetch failed; admin tokens are answered 503 until it succeeds");
                st.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn may_refetch(&self, st: &State) -> bool {
        st.last_attempt
            .is_none_or(|t| t.elapsed() >= self.cfg.min_refetch)
    }

    /// The key for `kid`, fetching the JWKS when it is stale, missing, or lacks the kid (the
    /// latter at most once per `min_refetch`).
    async fn key_for(
        &self,
        kid: Option<&str>,
        alg: jwt::Alg,
    ) -> Result<Vec<VerifyKey>, AuthRefusal> {
        let mut st = self.state.lock().await;
        let stale = st.fetched.is_none_or(|t| t.elapsed() >= self.cfg.jwks_ttl);
        if stale && self.may_refetch(&st) {
            if let Err(e) = self.refresh_locked(&mut st).await
                && st.fetched.is_none()
            {
                return Err(unavailable(e));
            }
        } else if st.fetched.is_none() {
            // Not fetched yet and the last attempt was moments ago: do not retry per request.
            return Err(unavailable(
                st.last_error
                    .clone()
                    .unwrap_or_else(|| "discovery has not succeeded yet".to_owned()),
            ));
        }
        let found = |st: &State| -> Vec<VerifyKey> {
            match kid {
                Some(k) => st.keys.get(k).cloned().into_iter().collect(),
                // Without a kid, any key of the token's type may have signed it.
                None => st
                    .keys
                    .values()
                    .filter(|v| {
                        matches!(
                            (v, alg),
                            (VerifyKey::Rsa { .. }, jwt::Alg::Rs256)
                                | (VerifyKey::P256 { .. }, jwt::Alg::Es256)
                        )
                    })
                    .cloned()
                    .collect(),
            }
        };
        let mut keys = found(&st);
        if keys.is_empty() && self.may_refetch(&st) {
            // The issuer may have rotated its keys since the last fetch.
            if let Err(e) = self.refresh_locked(&mut st).await {
                return Err(unavailable(e));
            }
            keys = found(&st);
        }
        if keys.is_empty() {
            return Err(AuthRefusal::unauthenticated(
                "unknown_key",
                format!(
                    "unknown key: the issuer's JWKS has no key '{}' (rotated out, or not this issuer's token)",
                    kid.unwrap_or("(no kid)")
                ),
            ));
        }
        Ok(keys)
    }

    async fn verify_token(
        &self,
        token: &str,
        audiences: &[String],
        nonce: Option<&str>,
    ) -> Result<AdminIdentity, AuthRefusal> {
        let t = jwt::decode(token)?;
        let keys = self.key_for(t.kid.as_deref(), t.alg).await?;
        let mut outcome = Err(AuthRefusal::unauthenticated(
            "bad_signature",
            "bad signature",
        ));
        for key in &keys {
            outcome = t.verify_signature(key);
            if outcome.is_ok() {
                break;
            }
        }
        outcome?;
        jwt::check_claims(
            &t.claims,
            &Expect {
                issuer: &self.cfg.issuer,
                audiences,
                now: now_secs(),
                nonce,
            },
        )?;
        let role = self
            .cfg
            .roles
            .role_of(&t.claims)
            .map_err(AuthRefusal::NoRole)?;
        Ok(AdminIdentity {
            sub: t
                .claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            email: t
                .claims
                .get("email")
                .and_then(Value::as_str)
                .map(str::to_owned),
            role,
            method: AuthMethod::Oidc,
        })
    }

    fn random_token(&self) -> Result<String, AuthRefusal> {
        let mut buf = [0u8; 32];
        self.rng
            .fill(&mut buf)
            .map_err(|_| unavailable("the system random generator failed"))?;
        Ok(URL_SAFE_NO_PAD.encode(buf))
    }

    async fn discovery(&self) -> Result<Discovery, AuthRefusal> {
        let mut st = self.state.lock().await;
        if let Some(d) = &st.discovery {
            return Ok(d.clone());
        }
        if !self.may_refetch(&st) {
            return Err(unavailable(
                st.last_error
                    .clone()
                    .unwrap_or_else(|| "discovery has not succeeded yet".to_owned()),
            ));
        }
        self.refresh_locked(&mut st).await.map_err(unavailable)?;
        st.discovery
            .clone()
            .ok_or_else(|| unavailable("discovery has not succeeded yet"))
    }
}

/// The PKCE S256 challenge of a verifier.
#[must_use]
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()).as_ref())
}

/// Constant-time string equality (state comparison).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[async_trait]
impl AdminVerifier for Oidc {
    async fn verify(&self, bearer: &str) -> Result<AdminIdentity, AuthRefusal> {
        self.verify_token(bearer, &self.cfg.audiences, None).await
    }
}

#[async_trait]
impl OidcLogin for Oidc {
    async fn start(&self, redirect_uri: &str) -> Result<LoginStart, AuthRefusal> {
        let client_id = self.cfg.client_id.clone().ok_or_else(|| {
            AuthRefusal::unauthenticated(
                "login_not_configured",
                "browser login needs --oidc-client-id",
            )
        })?;
        let doc = self.discovery().await?;
        let endpoint = doc
            .authorization_endpoint
            .ok_or_else(|| unavailable("the discovery document has no authorization_endpoint"))?;
        let pending = PendingLogin {
            state: self.random_token()?,
            nonce: self.random_token()?,
            code_verifier: self.random_token()?,
            redirect_uri: redirect_uri.to_owned(),
        };
        let mut url = url::Url::parse(&endpoint)
            .map_err(|e| unavailable(format!("authorization_endpoint '{endpoint}': {e}")))?;
        let mut scope = BASE_SCOPES.to_owned();
        for s in &self.cfg.extra_scopes {
            scope.push(' ');
            scope.push_str(s);
        }
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scope)
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &pkce_challenge(&pending.code_verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(LoginStart {
            authorization_url: url.into(),
            pending,
        })
    }

    async fn finish(
        &self,
        code: &str,
        state: &str,
        pending: &PendingLogin,
    ) -> Result<AdminIdentity, AuthRefusal> {
        if !same(state, &pending.state) {
            return Err(AuthRefusal::unauthenticated(
                "state_mismatch",
                "the login's state does not match (stale tab or forged callback); start the login again",
            ));
        }
        let client_id = self.cfg.client_id.clone().ok_or_else(|| {
            AuthRefusal::unauthenticated(
                "login_not_configured",
                "browser login needs --oidc-client-id",
            )
        })?;
        let doc = self.discovery().await?;
        let endpoint = doc
            .token_endpoint
            .ok_or_else(|| unavailable("the discovery document has no token_endpoint"))?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", pending.redirect_uri.as_str()),
            ("client_id", client_id.as_str()),
            ("code_verifier", pending.code_verifier.as_str()),
        ];
        if let Some(secret) = &self.cfg.client_secret {
            form.push(("client_secret", secret.as_str()));
        }
        let resp = self
            .http
            .post(&endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable(format!("POST {endpoint}: {e}")))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| unavailable(format!("POST {endpoint}: the answer is not JSON: {e}")))?;
        if status.is_server_error() {
            return Err(unavailable(format!("POST {endpoint} answered {status}")));
        }
        if !status.is_success() {
            let why = body
                .get("error_description")
                .or_else(|| body.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return Err(AuthRefusal::unauthenticated(
                "code_refused",
                format!("the issuer refused the login code ({status}): {why}"),
            ));
        }
        let id_token = body
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                AuthRefusal::unauthenticated(
                    "missing_id_token",
                    "the token endpoint answered without an id_token (is the `openid` scope allowed for this client?)",
                )
            })?;
        self.verify_token(
            id_token,
            std::slice::from_ref(&client_id),
            Some(&pending.nonce),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_rfc7636_s256() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn configuration_errors_name_the_flag() {
        let roles = RoleMapping::parse("groups", &["admin=a".to_owned()], None).unwrap();
        let cfg = |issuer: &str, aud: Vec<String>, client: Option<&str>| OidcConfig {
            issuer: issuer.to_owned(),
            audiences: aud,
            client_id: client.map(str::to_owned),
            client_secret: None,
            extra_scopes: Vec::new(),
            roles: roles.clone(),
            jwks_ttl: Duration::from_secs(300),
            min_refetch: Duration::from_secs(10),
            http_timeout: Duration::from_secs(5),
        };
        assert!(
            Oidc::new(cfg("nope", vec!["a".into()], None))
                .unwrap_err()
                .contains("--oidc-issuer")
        );
        assert!(
            Oidc::new(cfg("ftp://x", vec!["a".into()], None))
                .unwrap_err()
                .contains("https")
        );
        assert!(
            Oidc::new(cfg("https://x", vec![], None))
                .unwrap_err()
                .contains("--oidc-audience")
        );
        let plain = Oidc::new(cfg("http://login.example.com", vec!["a".into()], None));
        assert!(plain.unwrap_err().contains("loopback"));
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:2",
        ] {
            assert!(
                Oidc::new(cfg(local, vec!["a".into()], None)).is_ok(),
                "{local}"
            );
        }
        let o = Oidc::new(cfg("https://x", vec![], Some("console"))).unwrap();
        assert_eq!(o.cfg.audiences, ["console"]);
    }

    #[tokio::test]
    async fn an_unreachable_issuer_is_503_and_retried_at_most_once_per_interval() {
        let roles = RoleMapping::parse("groups", &["admin=a".to_owned()], None).unwrap();
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let o = Oidc::new(OidcConfig {
            issuer: format!("http://127.0.0.1:{port}"),
            audiences: vec!["metis".into()],
            client_id: None,
            client_secret: None,
            extra_scopes: Vec::new(),
            roles,
            jwks_ttl: Duration::from_secs(300),
            min_refetch: Duration::from_secs(3600),
            http_timeout: Duration::from_secs(2),
        })
        .unwrap();
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let first = o.verify(token).await.unwrap_err();
        assert_eq!(first.code(), "issuer_unavailable", "{first}");
        let at = o.state.lock().await.last_attempt;
        let second = o.verify(token).await.unwrap_err();
        assert_eq!(second.code(), "issuer_unavailable");
        // The second refusal reused the first attempt's error instead of calling out again.
        assert_eq!(o.state.lock().await.last_attempt, at);
        assert!(second.to_string().contains("127.0.0.1"), "{second}");
    }
}
