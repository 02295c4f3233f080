//! How admins authenticate on `/admin/v1` and in the console: the static admin token and/or
//! an OpenID Connect issuer (`--oidc-*`), wired into the HTTP adapter's admin auth, and the
//! console's session settings.

use crate::cli::ServeArgs;
use anyhow::{Context, anyhow, bail};
use metis_domain::admin::RoleMapping;
use metis_http::AdminAuthConfig;
use metis_oidc::{Oidc, OidcConfig};
use metis_ports::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

/// Timeout of each request to the issuer (discovery, JWKS, token endpoint).
const ISSUER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between two discovery attempts while the issuer is down at start.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// The OIDC adapter from the flags, or None without `--oidc-issuer`.
///
/// # Errors
/// A bad flag (role map, default role, issuer URL, missing audience), naming it.
pub fn oidc(args: &ServeArgs) -> anyhow::Result<Option<Arc<Oidc>>> {
    let o = &args.oidc;
    let Some(issuer) = &o.oidc_issuer else {
        return Ok(None);
    };
    let roles = RoleMapping::parse(
        &o.oidc_role_claim,
        &o.oidc_role_map,
        o.oidc_default_role.as_deref(),
    )
    .map_err(|e| anyhow!(e))?;
    let oidc = Oidc::new(OidcConfig {
        issuer: issuer.trim().to_owned(),
        audiences: o
            .oidc_audience
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
        client_id: o.oidc_client_id.clone(),
        client_secret: o.oidc_client_secret.clone(),
        extra_scopes: o.oidc_scope.clone(),
        roles,
        jwks_ttl: Duration::from_secs(o.oidc_jwks_ttl),
        min_refetch: Duration::from_secs(o.oidc_min_refetch),
        http_timeout: ISSUER_TIMEOUT,
    })
    .map_err(|e| anyhow!(e))
    .context("invalid OIDC configuration")?;
    Ok(Some(Arc::new(oidc)))
}

/// Discover the issuer in the background. The gateway does not wait for it: an issuer that
/// is down at start must not take the provider endpoints down with it. Until discovery
/// succeeds, admin JWTs are answered 503 (the static token keeps working), and each admin
/// request may retry (spaced by `--oidc-min-refetch`); this loop retries too, so the log
/// says when the issuer came back.
pub fn discover_in_background(oidc: &Arc<Oidc>) {
    let oidc = Arc::clone(oidc);
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        loop {
            match oidc.refresh().await {
                Ok(keys) => {
                    tracing::info!(issuer = %oidc.issuer(), keys, "OIDC admin login ready");
                    return;
                }
                Err(e) => {
                    tracing::warn!(issuer = %oidc.issuer(), error = %e, retry_in_secs = wait.as_secs(), "OIDC issuer discovery failed; admin JWTs get 503 until it succeeds");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RETRY);
        }
    });
}

/// The admin auth configuration, or None when neither a token nor an issuer is configured
/// (the admin API then answers 404).
#[must_use]
pub fn auth_config(
    args: &ServeArgs,
    token: Option<String>,
    oidc: Option<Arc<Oidc>>,
    metrics: Arc<dyn Metrics>,
) -> Option<AdminAuthConfig> {
    if token.is_none() && oidc.is_none() {
        return None;
    }
    Some(AdminAuthConfig {
        token,
        verifier: oidc.map(|o| o as Arc<dyn metis_ports::identity::AdminVerifier>),
        max_failures: args.oidc.admin_auth_failures_per_minute,
        failure_window: Duration::from_secs(60),
        trusted_proxies: args.trusted_proxy.clone(),
        metrics,
    })
}

/// The admin API token from `--admin-token-file` or `METIS_GATEWAY_ADMIN_TOKEN`.
pub fn admin_token(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let token = match (&args.admin_token_file, &args.admin_token) {
        (Some(path), _) => {
            let raw = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --admin-token-file {}", path.display()))?;
            raw.trim().to_owned()
        }
        (None, Some(t)) => t.trim().to_owned(),
        (None, None) => return Ok(None),
    };
    if token.len() < 16 {
        bail!("the admin token must be at least 16 characters");
    }
    Ok(Some(token))
}

/// The operator console's settings, when someone can log in (`login`: the admin token or
/// single sign-on is configured; otherwise `/ui` answers 404). `oidc`: the single sign-on
/// login, when the issuer has a client id.
pub fn console_config(
    args: &ServeArgs,
    login: bool,
    oidc: Option<Arc<dyn metis_ports::identity::OidcLogin>>,
    tls: bool,
) -> anyhow::Result<Option<metis_http::ConsoleConfig>> {
    if !login {
        return Ok(None);
    }
    let key = match &args.console_session_key {
        Some(k) if k.trim().len() < 32 => {
            bail!("the console session key must be at least 32 characters")
        }
        Some(k) => k.trim().as_bytes().to_vec(),
        None => {
            tracing::warn!(
                "no --console-session-key: console sessions are signed with a random per-process key, so they end at restart and a fleet of replicas needs one shared key"
            );
            metis_http::console::session::random_key()
                .context("the operating system's random number generator is unavailable")?
        }
    };
    Ok(Some(metis_http::ConsoleConfig {
        session: metis_http::SessionSettings {
            key,
            ttl: args.console_session_ttl,
            secure: tls,
        },
        oidc,
        public_url: args.console_public_url.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut a = vec!["gateway"];
        a.extend_from_slice(extra);
        ServeArgs::try_parse_from(a).unwrap()
    }

    #[test]
    fn oidc_flags_build_a_verifier_or_name_the_bad_flag() {
        assert!(oidc(&args(&[])).unwrap().is_none());
        let base = [
            "--oidc-issuer",
            "https://login.example.test",
            "--oidc-audience",
            "metis",
        ];
        let ok = [&base[..], &["--oidc-role-map", "admin=a,viewer=b"]].concat();
        assert!(oidc(&args(&ok)).unwrap().is_some());
        let err = |extra: &[&str]| {
            format!(
                "{:#}",
                oidc(&args(&[&base[..], extra].concat())).unwrap_err()
            )
        };
        assert!(err(&["--oidc-role-map", "root=a"]).contains("'root=a'"));
        assert!(err(&[]).contains("--oidc-role-map"));
        assert!(err(&["--oidc-default-role", "boss"]).contains("--oidc-default-role"));
        let no_aud = [
            "--oidc-issuer",
            "https://x.test",
            "--oidc-default-role",
            "viewer",
        ];
        assert!(format!("{:#}", oidc(&args(&no_aud)).unwrap_err()).contains("--oidc-audience"));
    }

    #[test]
    fn the_admin_api_is_served_with_a_token_or_an_issuer() {
        let metrics: Arc<dyn Metrics> = Arc::new(metis_telemetry_stub());
        let a = args(&[]);
        assert!(auth_config(&a, None, None, Arc::clone(&metrics)).is_none());
        let with_token = auth_config(&a, Some("t".repeat(16)), None, Arc::clone(&metrics));
        assert_eq!(with_token.map(|c| c.max_failures), Some(20));
        let issuer = oidc(&args(&[
            "--oidc-issuer",
            "https://login.example.test",
            "--oidc-client-id",
            "console",
            "--oidc-default-role",
            "viewer",
        ]))
        .unwrap();
        let c = auth_config(&a, None, issuer, metrics).unwrap();
        assert!(c.token.is_none() && c.verifier.is_some());
    }

    fn metis_telemetry_stub() -> metis_telemetry::Prometheus {
        metis_telemetry::Prometheus::default()
    }
}
