//! Google service-account credentials: the OAuth 2.0 JWT-bearer flow (RFC 7523) Vertex AI
//! takes. The gateway signs a short-lived RS256 assertion with the account's private key,
//! posts it to the key file's `token_uri`, and sends the access token it gets back as
//! `Authorization: Bearer`.
//!
//! Invariants:
//! - The private key and access tokens never reach a log, an error message or `Debug`.
//! - One token is shared by every request and reused until 5 minutes before it expires; a
//!   refresh happens under an async lock, so a burst of requests after expiry causes one
//!   exchange, not one per request.
//! - A token the upstream answers 401 to is dropped from the cache, so one refused call (a
//!   revoked token) is followed by a fresh exchange rather than by an hour of 401s.
//! - A failed exchange is an error naming the step that failed and the token endpoint's
//!   HTTP status and OAuth `error` code (never its description, never the assertion).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::transport::describe;

/// The OAuth scope Vertex AI calls need.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Token endpoint used when the key file names none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// A token is refreshed this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Lifetime asked for the assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Longest wait for the token endpoint.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A service account read from its JSON key file.
pub struct ServiceAccount {
    client_email: String,
    token_uri: String,
    key: RsaKeyPair,
    key_id: Option<String>,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("private_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Parse a key file's JSON (`type: service_account`, `client_email`, `private_key` as a
    /// PKCS#8 PEM, optional `token_uri` and `private_key_id`).
    ///
    /// # Errors
    /// Names the missing or malformed field (never its value).
    pub fn from_json(json: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(json)
            .map_err(|e| format!("the credentials file is not JSON: {e}"))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        match field("type") {
            Some("service_account") => {}
            Some(other) => {
                return Err(format!(
                    "the credentials file has type '{other}'; only 'service_account' keys are supported"
                ));
            }
            None => return Err("the credentials file has no 'type'".to_owned()),
        }
        let client_email = field("client_email")
            .ok_or("the credentials file has no 'client_email'")?
            .to_owned();
        let pem = field("private_key").ok_or("the credentials file has no 'private_key'")?;
        let der = pem_body(pem)
            .ok_or("the credentials file's 'private_key' is not a PEM 'PRIVATE KEY' block")?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|e| {
            format!("the credentials file's 'private_key' is not a PKCS#8 RSA key: {e}")
        })?;
        Ok(Self {
            client_email,
            token_uri: field("token_uri").unwrap_or(DEFAULT_TOKEN_URI).to_owned(),
            key,
            key_id: field("private_key_id").map(str::to_owned),
        })
    }

    /// The account's token endpoint.
    #[must_use]
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// A signed assertion for `scope`, issued at `now` (seconds since the epoch).
    ///
    /// # Errors
    /// Signing failed (the message says so, nothing more).
    pub fn assertion(&self, scope: &str, now: u64) -> Result<String, String> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = Value::String(kid.clone());
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": scope,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "signing the token request failed".to_owned())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// The DER bytes of a `-----BEGIN PRIVATE KEY-----` PEM block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN PRIVATE KEY-----")? + "-----BEGIN PRIVATE KEY-----".len();
    let end = pem[start..].find("-----END PRIVATE KEY-----")? + start;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

struct Cached {
    token: String,
    /// When the token must no longer be used (its expiry minus the refresh margin).
    refresh_at: SystemTime,
}

/// Access tokens of one service account, cached and refreshed once for all callers.
pub struct TokenSource {
    account: ServiceAccount,
    scope: String,
    cached: Mutex<Option<Cached>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("account", &self.account)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    #[must_use]
    pub fn new(account: ServiceAccount, scope: &str) -> Self {
        Self {
            account,
            scope: scope.to_owned(),
            cached: Mutex::new(None),
        }
    }

    /// A valid access token: the cached one, or a fresh one from the token endpoint.
    ///
    /// # Errors
    /// The exchange failed: unreachable endpoint, non-2xx answer (its status and OAuth
    /// `error` code), or an answer without `access_token`.
    pub async fn token(&self, client: &reqwest::Client) -> Result<String, String> {
        // Held across the exchange: concurrent callers wait for this refresh.
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && SystemTime::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.exchange(client).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forget `token` if it is the cached one (the upstream refused it: revoked, or the
    /// clock moved), so the next call exchanges a fresh one.
    pub async fn invalidate(&self, token: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == token) {
            *cached = None;
        }
    }

    async fn exchange(&self, client: &reqwest::Client) -> Result<Cached, String> {
        let now = SystemTime::now();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let assertion = self.account.assertion(&self.scope, secs)?;
        let body = format!(
            "grant_type={}&assertion={assertion}",
            "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
        );
        let uri = &self.account.token_uri;
        let response = client
            .post(uri.as_str())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .timeout(TOKEN_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("service-account token exchange failed: {}", describe(&e)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            format!(
                "service-account token exchange: reading the answer failed: {}",
                describe(&e)
            )
        })?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let code = v.get("error").and_then(Value::as_str).unwrap_or("unknown");
            return Err(format!(
                "service-account token exchange refused: HTTP {} ({code})",
                status.as_u16()
            ));
        }
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or("service-account token exchange: the answer has no access_token")?
            .to_owned();
        let lifetime = v.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
        let refresh_at = now + Duration::from_secs(lifetime).saturating_sub(REFRESH_MARGIN);
        Ok(Cached { token, refresh_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    fn key_file() -> (String, Vec<u8>) {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&pair).unwrap();
        let b64 = STANDARD.encode(der.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let json = json!({"type": "service_account", "client_email": "sa@p.iam.gserviceaccount.com",
            "private_key": pem, "private_key_id": "k1", "token_uri": "http://127.0.0.1:1/token"});
        (json.to_string(), pair.public_key().as_ref().to_vec())
    }

    #[test]
    fn assertion_is_an_rs256_jwt_that_verifies_with_the_public_key() {
        let (json, public) = key_file();
        let sa = ServiceAccount::from_json(&json).unwrap();
        let jwt = sa.assertion(CLOUD_PLATFORM_SCOPE, 1_000).unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
            .verify(input.as_bytes(), &sig)
            .unwrap();
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(input.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["iss"], "sa@p.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], "http://127.0.0.1:1/token");
        assert_eq!(claims["exp"], 4_600);
        assert!(!format!("{sa:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_key_files_name_the_field() {
        let e = ServiceAccount::from_json(r#"{"type":"authorized_user"}"#).unwrap_err();
        assert!(e.contains("authorized_user"), "{e}");
        let e = ServiceAccount::from_json(r#"{"type":"service_account","client_email":"a"}"#)
            .unwrap_err();
        assert!(e.contains("'private_key'"), "{e}");
        let e = ServiceAccount::from_json(
            r#"{"type":"service_account","client_email":"a","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"}"#,
        )
        .unwrap_err();
        assert!(e.contains("PKCS#8"), "{e}");
    }
}
