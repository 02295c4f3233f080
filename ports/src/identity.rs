//! Admin identities from an OpenID Connect issuer: the driven ports the admin API and the
//! console use to turn a bearer JWT, or a browser login, into an [`AdminIdentity`].
//!
//! The static admin token is checked by the HTTP adapter itself; these ports cover only the
//! issuer's tokens, so a gateway without `--oidc-issuer` has no verifier at all.

use async_trait::async_trait;
use metis_domain::admin::AdminIdentity;

/// Why an admin credential was refused. Every message names the problem (expired, wrong
/// audience, bad signature, unknown key, no role, issuer unreachable) and never contains the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    /// 401: the credential does not prove an identity. `code` is a stable machine-readable
    /// reason (`token_expired`, `wrong_audience`, `bad_signature`, `unknown_key`, …), also used
    /// as the `auth_failures` metric label.
    #[error("{message}")]
    Unauthenticated { code: &'static str, message: String },
    /// 403: the identity is proven, but the claims grant no role.
    #[error("{0}")]
    NoRole(String),
    /// 503: the issuer (discovery document, JWKS or token endpoint) cannot be reached, so
    /// nothing can be verified right now; retrying later may succeed.
    #[error("{0}")]
    IssuerUnavailable(String),
}

impl AuthRefusal {
    /// A 401 refusal.
    #[must_use]
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        AuthRefusal::Unauthenticated {
            code,
            message: message.into(),
        }
    }

    /// The stable reason code (for logs and the `auth_failures` metric).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            AuthRefusal::Unauthenticated { code, .. } => code,
            AuthRefusal::NoRole(_) => "no_role",
            AuthRefusal::IssuerUnavailable(_) => "issuer_unavailable",
        }
    }
}

/// Verifies bearer JWTs of the configured issuer (`Authorization: Bearer <jwt>` on
/// `/admin/v1`).
#[async_trait]
pub trait AdminVerifier: Send + Sync {
    /// The identity a bearer JWT proves, with its role from the claim mapping.
    ///
    /// # Errors
    /// `Unauthenticated` (malformed, expired, not yet valid, wrong issuer or audience, bad
    /// signature, unknown key, refused algorithm), `NoRole`, `IssuerUnavailable`.
    async fn verify(&self, bearer: &str) -> Result<AdminIdentity, AuthRefusal>;
}

/// What the browser login must remember between [`OidcLogin::start`] and
/// [`OidcLogin::finish`] (keep it server-side or in a signed, short-lived cookie: the
/// verifier and nonce are secrets of this login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    /// Sent as `state`; the callback must bring it back unchanged.
    pub state: String,
    /// Sent as `nonce`; the returned `id_token` must carry it.
    pub nonce: String,
    /// The PKCE verifier; its S256 challenge was sent in the authorization URL.
    pub code_verifier: String,
    /// The `redirect_uri` used in the authorization URL (the token request repeats it).
    pub redirect_uri: String,
}

/// A started browser login: send the browser to `authorization_url`, keep `pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginStart {
    pub authorization_url: String,
    pub pending: PendingLogin,
}

/// The authorization-code + PKCE login of the console.
#[async_trait]
pub trait OidcLogin: Send + Sync {
    /// A fresh login: random `state`, `nonce` and PKCE verifier, and the issuer's
    /// authorization URL (`response_type=code`, S256 challenge, the configured scopes).
    ///
    /// # Errors
    /// `IssuerUnavailable` while the discovery document cannot be fetched.
    async fn start(&self, redirect_uri: &str) -> Result<LoginStart, AuthRefusal>;

    /// Finish a login from the callback's `code` and `state`: the state must equal the
    /// pending one, the code is exchanged (with the verifier) at the token endpoint, and the
    /// returned `id_token` is verified like a bearer token, for the client id as audience
    /// and with the pending nonce.
    ///
    /// # Errors
    /// `Unauthenticated` (state mismatch, refused code, bad `id_token`, nonce mismatch),
    /// `NoRole`, `IssuerUnavailable`.
    async fn finish(
        &self,
        code: &str,
        state: &str,
        pending: &PendingLogin,
    ) -> Result<AdminIdentity, AuthRefusal>;
}
