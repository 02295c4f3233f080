//! A local OpenID Connect issuer for tests (bound to `127.0.0.1:0` only).
//!
//! - `GET /.well-known/openid-configuration`: discovery (`issuer` = the base URL).
//! - `GET /jwks`: the current public keys (one RSA and one P-256 key at start, generated with
//!   aws-lc-rs; [`TestIssuer::rotate`] adds a new key and drops the old one).
//! - Token minting for any claims, header or key, including expired, wrong-audience,
//!   wrong-signature and unknown-kid tokens ([`TestIssuer::mint`], [`TestIssuer::sign`]).
//! - `GET /authorize`: auto-approves a code + PKCE login (302 to `redirect_uri` with `code` and
//!   `state`); the user is picked by `login_hint` from [`USERS`], or given by `sub`, `email`
//!   and `groups` (comma list) query parameters.
//! - `POST /token`: checks the code, client id, `redirect_uri` and the PKCE S256 verifier,
//!   and answers an `id_token` carrying the login's nonce (plus an access token).
//! - `POST /test/mint` (`{"claims": {...}, "kid": optional}`) and `POST /test/rotate`, for
//!   tests that drive the binary (`fake-oidc`) from outside Rust.
//! - [`TestIssuer::set_down`] makes every endpoint answer 503 (issuer outage).

use anyhow::{Context, anyhow};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
use poem::web::{Data, Form, Json, Query};
use poem::{EndpointExt, IntoResponse, Response, Route, Server, get, handler, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The client id the token endpoint accepts unless told otherwise.
pub const DEFAULT_CLIENT_ID: &str = "metis-console";
/// The audience of access tokens minted by the token endpoint and [`TestIssuer::claims`].
pub const DEFAULT_AUDIENCE: &str = "metis-admin";

/// Preset users for `login_hint`: (hint, sub, email, groups).
pub const USERS: [(&str, &str, &str, &[&str]); 4] = [
    (
        "alice",
        "user-alice",
        "alice@example.test",
        &["metis-admins"],
    ),
    ("oscar", "user-oscar", "oscar@example.test", &["metis-ops"]),
    ("vera", "user-vera", "vera@example.test", &["metis-read"]),
    ("nobody", "user-nobody", "nobody@example.test", &[]),
];

/// The role map matching [`USERS`]' groups (`--oidc-role-map`).
pub const ROLE_MAP: &str = "admin=metis-admins,operator=metis-ops,viewer=metis-read";

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct SigningKey {
    kid: String,
    pair: Pair,
}

impl SigningKey {
    fn generate(kid: String, rsa: bool) -> anyhow::Result<Self> {
        let pair = if rsa {
            Pair::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).map_err(|e| anyhow!("rsa: {e}"))?)
        } else {
            Pair::Ec(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|e| anyhow!("ec: {e}"))?,
            )
        };
        Ok(SigningKey { kid, pair })
    }

    fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::Ec(_) => "ES256",
        }
    }

    fn jwk(&self) -> Value {
        match &self.pair {
            Pair::Rsa(k) => {
                let pk = k.public_key();
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                    "n": URL_SAFE_NO_PAD.encode(pk.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(pk.exponent().big_endian_without_leading_zero())})
            }
            Pair::Ec(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
            }
        }
    }

    fn sign(&self, input: &[u8]) -> anyhow::Result<Vec<u8>> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, input, &mut sig)
                    .map_err(|e| anyhow!("sign: {e}"))?;
                Ok(sig)
            }
            Pair::Ec(k) => Ok(k
                .sign(&rng, input)
                .map_err(|e| anyhow!("sign: {e}"))?
                .as_ref()
                .to_vec()),
        }
    }
}

struct PendingCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    sub: String,
    email: Option<String>,
    groups: Vec<String>,
}

struct State {
    base: String,
    client_id: String,
    audience: String,
    /// Keys published in the JWKS.
    keys: Mutex<Vec<SigningKey>>,
    /// Keys rotated out: still usable to mint (for "old kid refused" tests), not published.
    retired: Mutex<Vec<SigningKey>>,
    codes: Mutex<HashMap<String, PendingCode>>,
    down: AtomicBool,
    jwks_fetches: AtomicU64,
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
}

impl State {
    fn with_key<R>(
        &self,
        kid: Option<&str>,
        f: impl FnOnce(&SigningKey) -> R,
    ) -> anyhow::Result<R> {
        let keys = lock(&self.keys);
        let retired = lock(&self.retired);
        let found = match kid {
            Some(k) => keys.iter().chain(retired.iter()).find(|s| s.kid == k),
            None => keys.first(),
        };
        found.map(f).ok_or_else(|| anyhow!("no key {kid:?}"))
    }

    /// A compact JWS of `claims`, signed with `kid` (default: the first published key).
    fn mint(&self, kid: Option<&str>, claims: &Value) -> anyhow::Result<String> {
        let (alg, kid, header) = self.with_key(kid, |k| {
            (
                k.alg(),
                k.kid.clone(),
                json!({"alg": k.alg(), "kid": k.kid, "typ": "JWT"}),
            )
        })?;
        let _ = alg;
        let input = format!("{}.{}", b64json(&header), b64json(claims));
        let sig = self.with_key(Some(&kid), |k| k.sign(input.as_bytes()))??;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    fn next_kid(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.seq.fetch_add(1, Ordering::Relaxed) + 2)
    }

    fn rotate(&self, rsa: bool) -> anyhow::Result<String> {
        let kid = self.next_kid(if rsa { "rsa" } else { "ec" });
        let fresh = SigningKey::generate(kid.clone(), rsa)?;
        let mut keys = lock(&self.keys);
        let (old, kept): (Vec<SigningKey>, Vec<SigningKey>) = keys
            .drain(..)
            .partition(|k| matches!(k.pair, Pair::Rsa(_)) == rsa);
        *keys = std::iter::once(fresh).chain(kept).collect();
        lock(&self.retired).extend(old);
        Ok(kid)
    }
}

/// The running issuer.
pub struct TestIssuer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestIssuer {
    /// Start on `127.0.0.1:0` with [`DEFAULT_CLIENT_ID`] and [`DEFAULT_AUDIENCE`].
    ///
    /// # Errors
    /// Bind or key generation failures.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(0, DEFAULT_CLIENT_ID, DEFAULT_AUDIENCE).await
    }

    /// Start on `127.0.0.1:port`.
    ///
    /// # Errors
    /// Bind or key generation failures.
    pub async fn start_on(port: u16, client_id: &str, audience: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let state = Arc::new(State {
            base: format!("http://{addr}"),
            client_id: client_id.to_owned(),
            audience: audience.to_owned(),
            keys: Mutex::new(vec![
                SigningKey::generate("rsa-1".to_owned(), true)?,
                SigningKey::generate("ec-1".to_owned(), false)?,
            ]),
            retired: Mutex::new(Vec::new()),
            codes: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            jwks_fetches: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        });
        let app = Route::new()
            .at("/.well-known/openid-configuration", get(discovery))
            .at("/jwks", get(jwks))
            .at("/authorize", get(authorize))
            .at("/token", post(token))
            .at("/test/mint", post(test_mint))
            .at("/test/rotate", post(test_rotate))
            .data(Arc::clone(&state));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let signal = async {
                let _ = rx.await;
            };
            let _ = Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(app, signal, Some(Duration::from_millis(200)))
                .await;
        });
        Ok(TestIssuer {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The issuer URL (`--oidc-issuer`), also the discovery document's `issuer`.
    #[must_use]
    pub fn issuer(&self) -> String {
        self.state.base.clone()
    }

    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Claims for an access token of `groups`, valid for 5 minutes, for [`DEFAULT_AUDIENCE`]
    /// (or the audience given at start).
    #[must_use]
    pub fn claims(&self, sub: &str, email: Option<&str>, groups: &[&str]) -> Value {
        let t = now();
        let mut c = json!({"iss": self.state.base, "aud": self.state.audience, "sub": sub,
            "groups": groups, "iat": t, "nbf": t, "exp": t + 300});
        if let Some(e) = email {
            c["email"] = json!(e);
        }
        c
    }

    /// Sign `claims` with the first published key (RS256).
    ///
    /// # Errors
    /// Signing failures.
    pub fn mint(&self, claims: &Value) -> anyhow::Result<String> {
        self.state.mint(None, claims)
    }

    /// Sign `claims` with the key `kid` (published or retired).
    ///
    /// # Errors
    /// No such key.
    pub fn mint_with(&self, kid: &str, claims: &Value) -> anyhow::Result<String> {
        self.state.mint(Some(kid), claims)
    }

    /// A token with any header (e.g. `{"alg": "none"}`), signed with the first published key
    /// over exactly that header, or with an empty signature when `signed` is false.
    ///
    /// # Errors
    /// Signing failures.
    pub fn sign_raw(&self, header: &Value, claims: &Value, signed: bool) -> anyhow::Result<String> {
        let input = format!("{}.{}", b64json(header), b64json(claims));
        if !signed {
            return Ok(format!("{input}."));
        }
        let sig = self.state.with_key(None, |k| k.sign(input.as_bytes()))??;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// The kids currently published.
    #[must_use]
    pub fn kids(&self) -> Vec<String> {
        lock(&self.state.keys)
            .iter()
            .map(|k| k.kid.clone())
            .collect()
    }

    /// Replace the RSA (or EC) key with a new one: the new kid is published, the old one is
    /// dropped from the JWKS (still usable with [`TestIssuer::mint_with`]).
    ///
    /// # Errors
    /// Key generation failures.
    pub fn rotate(&self, rsa: bool) -> anyhow::Result<String> {
        self.state.rotate(rsa)
    }

    /// Make every endpoint answer 503 (true) or serve again (false).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// How many times the JWKS was served.
    #[must_use]
    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Stop serving.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn down(state: &State) -> Option<Response> {
    state
        .down
        .load(Ordering::SeqCst)
        .then(|| (StatusCode::SERVICE_UNAVAILABLE, "issuer down (test)").into_response())
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

#[handler]
fn discovery(Data(state): Data<&Arc<State>>) -> Response {
    if let Some(r) = down(state) {
        return r;
    }
    let b = &state.base;
    Json(json!({
        "issuer": b,
        "jwks_uri": format!("{b}/jwks"),
        "authorization_endpoint": format!("{b}/authorize"),
        "token_endpoint": format!("{b}/token"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "email", "profile"],
    }))
    .into_response()
}

#[handler]
fn jwks(Data(state): Data<&Arc<State>>) -> Response {
    if let Some(r) = down(state) {
        return r;
    }
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys: Vec<Value> = lock(&state.keys).iter().map(SigningKey::jwk).collect();
    Json(json!({ "keys": keys })).into_response()
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    login_hint: Option<String>,
    sub: Option<String>,
    email: Option<String>,
    groups: Option<String>,
}

#[handler]
fn authorize(Data(state): Data<&Arc<State>>, Query(q): Query<AuthorizeQuery>) -> Response {
    if let Some(r) = down(state) {
        return r;
    }
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_owned()).into_response();
    if q.response_type.as_deref() != Some("code") {
        return bad("response_type must be code");
    }
    if q.client_id.as_deref() != Some(state.client_id.as_str()) {
        return bad("unknown client_id");
    }
    let Some(redirect_uri) = q.redirect_uri else {
        return bad("redirect_uri is required");
    };
    let (Some(challenge), Some("S256")) = (q.code_challenge, q.code_challenge_method.as_deref())
    else {
        return bad("PKCE S256 is required");
    };
    let (sub, email, groups) = match q.login_hint.as_deref() {
        Some(hint) => match USERS.iter().find(|u| u.0 == hint) {
            Some((_, sub, email, groups)) => (
                (*sub).to_owned(),
                Some((*email).to_owned()),
                groups.iter().map(|g| (*g).to_owned()).collect(),
            ),
            None => return bad("unknown login_hint"),
        },
        None => (
            q.sub.unwrap_or_else(|| "user-custom".to_owned()),
            q.email,
            q.groups
                .map(|g| g.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        ),
    };
    let code = format!("code-{}", state.seq.fetch_add(1, Ordering::Relaxed));
    lock(&state.codes).insert(
        code.clone(),
        PendingCode {
            client_id: state.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            challenge,
            nonce: q.nonce,
            sub,
            email,
            groups,
        },
    );
    let Ok(mut location) = url::Url::parse(&redirect_uri) else {
        return bad("redirect_uri is not a URL");
    };
    location.query_pairs_mut().append_pair("code", &code);
    if let Some(s) = q.state {
        location.query_pairs_mut().append_pair("state", &s);
    }
    Response::builder()
        .status(StatusCode::FOUND)
        .header("location", location.as_str())
        .finish()
}

#[handler]
fn token(Data(state): Data<&Arc<State>>, Form(form): Form<HashMap<String, String>>) -> Response {
    if let Some(r) = down(state) {
        return r;
    }
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("grant_type") != "authorization_code" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only authorization_code",
        );
    }
    // A code is good once, whatever the outcome.
    let Some(pending) = lock(&state.codes).remove(field("code")) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or used code",
        );
    };
    if field("client_id") != pending.client_id {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client_id mismatch",
        );
    }
    if field("redirect_uri") != pending.redirect_uri {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "redirect_uri mismatch",
        );
    }
    let verifier = field("code_verifier");
    let challenge = URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()).as_ref());
    if verifier.is_empty() || challenge != pending.challenge {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "PKCE verifier mismatch",
        );
    }
    let t = now();
    let mut id = json!({"iss": state.base, "aud": pending.client_id, "sub": pending.sub,
        "groups": pending.groups, "iat": t, "exp": t + 300});
    if let Some(n) = pending.nonce {
        id["nonce"] = json!(n);
    }
    if let Some(e) = &pending.email {
        id["email"] = json!(e);
    }
    let mut access = id.clone();
    access["aud"] = json!(state.audience);
    if let Some(o) = access.as_object_mut() {
        o.remove("nonce");
    }
    match (state.mint(None, &id), state.mint(None, &access)) {
        (Ok(id_token), Ok(access_token)) => Json(json!({
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
            "access_token": access_token,
        }))
        .into_response(),
        _ => oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "signing failed",
        ),
    }
}

#[derive(Deserialize)]
struct MintBody {
    claims: Value,
    kid: Option<String>,
}

#[handler]
fn test_mint(Data(state): Data<&Arc<State>>, Json(body): Json<MintBody>) -> Response {
    match state.mint(body.kid.as_deref(), &body.claims) {
        Ok(t) => Json(json!({ "token": t })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

#[handler]
fn test_rotate(Data(state): Data<&Arc<State>>) -> Response {
    match state.rotate(true).context("rotate") {
        Ok(kid) => Json(json!({ "kid": kid })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
