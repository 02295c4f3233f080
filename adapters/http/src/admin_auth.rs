//! Authentication and authorization of `/admin/v1`: the static admin token or an OIDC JWT
//! (through the [`AdminVerifier`] port), each route's least [`Role`], and a per-client limit
//! on FAILED authentications so admin credentials cannot be guessed.
//!
//! Answers: 401 when the credential proves nothing (the message says what failed: expired,
//! wrong audience, bad signature, unknown key…), 403 when the identity's role is too low (the
//! message names the role needed), 429 + `Retry-After` while a client address is over the
//! failure limit, 503 when the OIDC issuer cannot be reached to check a JWT.

use crate::admin::{AdminError, envelope};
use metis_domain::admin::{AdminIdentity, Role};
use metis_domain::ratelimit::{Cidr, client_ip};
use metis_ports::identity::{AdminVerifier, AuthRefusal};
use metis_ports::metrics::Metrics;
use poem::{IntoResponse as _, Request};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the admin API authenticates (built by the composition root).
#[derive(Clone)]
pub struct AdminAuthConfig {
    /// The static admin token (`--admin-token[-file]`); it is always `admin`.
    pub token: Option<String>,
    /// The OIDC verifier (`--oidc-issuer`).
    pub verifier: Option<Arc<dyn AdminVerifier>>,
    /// Failed authentications allowed per client address and window before 429.
    pub max_failures: u32,
    pub failure_window: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`), so clients
    /// behind one ingress are limited one by one, not as one address.
    pub trusted_proxies: Vec<Cidr>,
    /// Where failures are counted (`metis_gateway_auth_failures_total{reason="admin_…"}`).
    pub metrics: Arc<dyn Metrics>,
}

/// Tracked client addresses at most; beyond it, the oldest windows are forgotten first (an
/// attacker rotating addresses cannot grow memory without bound).
const MAX_TRACKED: usize = 10_000;

/// Failed admin authentications per client address, in fixed windows.
#[derive(Debug, Default)]
struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    /// Seconds until `ip` may try again, when it is over the limit.
    fn blocked(&self, ip: IpAddr, max: u32, window: Duration) -> Option<u64> {
        let map = self.windows.lock().ok()?;
        let (start, count) = map.get(&ip)?;
        let elapsed = start.elapsed();
        (*count >= max && elapsed < window)
            .then(|| (window - elapsed).as_secs_f64().ceil().max(1.0) as u64)
    }

    fn record_failure(&self, ip: IpAddr, window: Duration) {
        let Ok(mut map) = self.windows.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| start.elapsed() < window);
            if map.len() >= MAX_TRACKED
                && let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= window {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// The admin auth state, attached to each admin request as poem data.
#[derive(Clone)]
pub struct AdminAccess {
    cfg: Arc<AdminAuthConfig>,
    limiter: Arc<FailureLimiter>,
}

impl AdminAccess {
    #[must_use]
    pub fn new(cfg: AdminAuthConfig) -> Self {
        AdminAccess {
            cfg: Arc::new(cfg),
            limiter: Arc::new(FailureLimiter::default()),
        }
    }

    fn client(&self, req: &Request) -> Option<IpAddr> {
        let peer = req
            .remote_addr()
            .as_socket_addr()
            .map(std::net::SocketAddr::ip)?;
        let xff = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        Some(client_ip(peer, xff, &self.cfg.trusted_proxies))
    }

    fn failed(&self, ip: Option<IpAddr>, code: &'static str) {
        if let Some(ip) = ip {
            self.limiter.record_failure(ip, self.cfg.failure_window);
        }
        self.cfg.metrics.auth_failure(&format!("admin_{code}"));
    }

    /// Seconds until the request's client address may try to authenticate again, while it
    /// is over the failed-authentication limit. The console's logins check it too, so the
    /// login form and the single sign-on callback cannot be used to guess around the limit.
    #[must_use]
    pub fn retry_after(&self, req: &Request) -> Option<u64> {
        let ip = self.client(req)?;
        self.limiter
            .blocked(ip, self.cfg.max_failures, self.cfg.failure_window)
    }

    /// Count one failed authentication of the request's client address (`code`: the
    /// `auth_failures` metric reason, prefixed `admin_`).
    pub fn record_failure(&self, req: &Request, code: &'static str) {
        self.failed(self.client(req), code);
    }

    /// Count a refusal that is no guess (a proven identity without a role): the metric
    /// only, like the bearer path.
    pub fn record_refusal(&self, code: &str) {
        self.cfg.metrics.auth_failure(&format!("admin_{code}"));
    }

    /// The limit, for messages: failures allowed per window, and the window in seconds.
    #[must_use]
    pub fn limit(&self) -> (u32, u64) {
        (self.cfg.max_failures, self.cfg.failure_window.as_secs())
    }

    /// Whether the socket peer is a `--trusted-proxy`, whose `X-Forwarded-*` headers are
    /// believed.
    #[must_use]
    pub fn peer_is_trusted_proxy(&self, req: &Request) -> bool {
        req.remote_addr()
            .as_socket_addr()
            .map(std::net::SocketAddr::ip)
            .is_some_and(|ip| self.cfg.trusted_proxies.iter().any(|c| c.contains(ip)))
    }

    /// Who presents `bearer`.
    async fn authenticate(
        &self,
        req: &Request,
        bearer: &str,
    ) -> Result<AdminIdentity, poem::Error> {
        let ip = self.client(req);
        if let Some(ip) = ip
            && let Some(retry) =
                self.limiter
                    .blocked(ip, self.cfg.max_failures, self.cfg.failure_window)
        {
            // Refused without looking at the credential: a right guess must look exactly like
            // a wrong one while the address is blocked.
            return Err(too_many(
                retry,
                self.cfg.max_failures,
                self.cfg.failure_window,
            ));
        }
        if let Some(token) = &self.cfg.token
            && token_matches(bearer, token)
        {
            return Ok(AdminIdentity::static_token());
        }
        let Some(verifier) = &self.cfg.verifier else {
            self.failed(ip, "invalid_token");
            return Err(unauthorized(
                "invalid_admin_token",
                "invalid admin token (Authorization: Bearer <admin token>)".to_owned(),
            ));
        };
        match verifier.verify(bearer).await {
            Ok(identity) => Ok(identity),
            Err(AuthRefusal::IssuerUnavailable(m)) => Err(refusal(AdminError::Unavailable(
                envelope("api_error", "oidc_issuer_unavailable", m),
            ))),
            Err(AuthRefusal::NoRole(m)) => {
                self.cfg.metrics.auth_failure("admin_no_role");
                Err(refusal(AdminError::Forbidden(envelope(
                    "permission_error",
                    "no_role",
                    m,
                ))))
            }
            Err(AuthRefusal::Unauthenticated { code, message }) => {
                if code == "malformed_token" && self.cfg.token.is_some() {
                    // Most likely a mistyped static token: say so, with the static token's code.
                    self.failed(ip, "invalid_token");
                    return Err(unauthorized(
                        "invalid_admin_token",
                        "invalid admin token: the bearer is neither the admin token nor a JWT"
                            .to_owned(),
                    ));
                }
                self.failed(ip, code);
                Err(unauthorized(code, message))
            }
        }
    }
}

/// Constant-time comparison of the presented token with the configured one (both hashed
/// first, so lengths never leak).
pub(crate) fn token_matches(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn refusal(err: AdminError) -> poem::Error {
    poem::Error::from_response(err.into_response())
}

fn unauthorized(code: &str, message: String) -> poem::Error {
    refusal(AdminError::Unauthorized(envelope(
        "authentication_error",
        code,
        message,
    )))
}

fn too_many(retry_after: u64, max: u32, window: Duration) -> poem::Error {
    refusal(AdminError::TooManyRequests(
        envelope(
            "rate_limit_error",
            "admin_auth_rate_limited",
            format!(
                "too many failed admin authentications from this address ({max} per {} s); retry after {retry_after} s",
                window.as_secs()
            ),
        ),
        retry_after,
    ))
}

async fn check_admin(req: &Request, bearer: Bearer) -> poem::Result<AdminIdentity> {
    let Some(access) = req.data::<AdminAccess>() else {
        return Err(unauthorized(
            "invalid_admin_token",
            "the admin API is not configured".to_owned(),
        ));
    };
    access.authenticate(req, &bearer.token).await
}

/// Admin credential: `Authorization: Bearer <static admin token or OIDC JWT>`. The static token is role admin; a JWT of the configured OpenID Connect issuer (RS256/ES256, iss, aud, exp checked) gets the role its claims map to (viewer reads, operator also manages keys, admin everything).
#[derive(SecurityScheme)]
#[oai(
    ty = "bearer",
    rename = "AdminAuth",
    bearer_format = "JWT or opaque admin token",
    checker = "check_admin"
)]
pub struct AdminBearer(pub AdminIdentity);

/// An admin credential: the operator console's session cookie with its `X-Metis-CSRF` header,
/// or the bearer. Tried in this order because poem answers the last refusal: a client of the
/// API then gets the bearer's specific 401 (`api::routes` answers a failed console session
/// itself, with its own reason).
#[derive(SecurityScheme)]
pub enum AdminAuth {
    Console(crate::console::ConsoleAuth),
    Bearer(AdminBearer),
}

impl AdminAuth {
    /// The identity, when its role allows what `needed` may do.
    ///
    /// # Errors
    /// 403 naming the role needed and the role held.
    pub fn require(&self, needed: Role) -> Result<&AdminIdentity, AdminError> {
        let identity = match self {
            AdminAuth::Console(c) => &c.0,
            AdminAuth::Bearer(b) => &b.0,
        };
        if identity.role.allows(needed) {
            Ok(identity)
        } else {
            Err(AdminError::forbidden(format!(
                "forbidden: this operation needs the {} role; '{}' has {}",
                needed.as_str(),
                identity.sub,
                identity.role.as_str()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_value() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("", "abc"));
    }

    #[test]
    fn an_address_is_blocked_after_max_failures_for_the_rest_of_the_window() {
        let l = FailureLimiter::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let w = Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.blocked(ip, 3, w), None);
            l.record_failure(ip, w);
        }
        let retry = l.blocked(ip, 3, w).unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(l.blocked(other, 3, w), None);
        // A new window starts once the old one is over.
        let short = Duration::from_millis(1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.blocked(ip, 3, short), None);
        l.record_failure(ip, short);
        assert_eq!(l.windows.lock().unwrap()[&ip].1, 1);
    }

    #[test]
    fn tracked_addresses_stay_bounded() {
        let l = FailureLimiter::default();
        let w = Duration::from_secs(60);
        for i in 0..(MAX_TRACKED as u32 + 50) {
            l.record_failure(IpAddr::from(i.to_be_bytes()), w);
        }
        assert!(l.windows.lock().unwrap().len() <= MAX_TRACKED);
    }
}
