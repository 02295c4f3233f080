//! Where the database is and how to talk to it: `--database-url`, `--database-pool-size`,
//! `--database-statement-timeout`.
//!
//! Invariants:
//! - The URL's password never reaches a log line or an error message: [`PgConfig`]'s `Debug`
//!   and [`PgConfig::redacted`] show the URL with the password replaced by `***`.
//! - `sslmode` follows libpq's names. `disable` connects in plain text; `prefer` tries TLS
//!   first and falls back to plain text; `require`, `verify-ca` and `verify-full` demand TLS
//!   and always verify the server's certificate chain and name (stricter than libpq's
//!   `require`, which encrypts without verifying: a gateway carries API keys and spend, so an
//!   unverified server is not offered). Trust comes from `sslrootcert=<file>` when given,
//!   else from the system's roots.
//! - Every pooled connection runs with the configured `statement_timeout`, so a stuck query
//!   fails instead of holding a pool slot forever.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Default pool size (`--database-pool-size`).
pub const DEFAULT_POOL_SIZE: usize = 8;

/// Default `statement_timeout` (`--database-statement-timeout`).
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS to the server, by libpq's `sslmode` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `disable`: plain text.
    Disable,
    /// `prefer` (libpq's default): TLS when the server offers it, verified; else plain text.
    Prefer,
    /// `require`, `verify-ca`, `verify-full`: TLS with a verified certificate, or no connection.
    Require,
}

/// A bad `--database-url` or option, with what is wrong in words an operator can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--database-url: {0}")]
pub struct ConfigError(pub String);

/// How to reach the database.
#[derive(Clone)]
pub struct PgConfig {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) tls: TlsMode,
    pub(crate) root_cert: Option<PathBuf>,
    pub(crate) pool_size: usize,
    pub(crate) statement_timeout: Duration,
    redacted: String,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.redacted)
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

impl PgConfig {
    /// Parse a `postgres://` / `postgresql://` URL (or a libpq `key=value` string), taking
    /// `sslmode` and `sslrootcert` out of it.
    ///
    /// # Errors
    /// A URL the driver cannot parse, an unknown `sslmode`, a zero pool size or timeout, or a
    /// URL naming no database.
    pub fn new(
        url: &str,
        pool_size: usize,
        statement_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let redacted = redact(url);
        let (rest, tls, root_cert) = take_tls_params(url)?;
        let mut pg = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| ConfigError(format!("cannot parse {redacted}: {e}")))?;
        if pg.get_dbname().is_none() {
            return Err(ConfigError(format!(
                "{redacted} names no database (postgres://user@host:port/DATABASE)"
            )));
        }
        if pool_size == 0 {
            return Err(ConfigError(
                "--database-pool-size must be at least 1".into(),
            ));
        }
        if statement_timeout.is_zero() {
            return Err(ConfigError(
                "--database-statement-timeout must be more than 0 (it bounds every query)".into(),
            ));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("metis-gateway");
        }
        pg.options(format!(
            "-c statement_timeout={}",
            statement_timeout.as_millis()
        ));
        // TLS is negotiated by our connector; the driver only needs to know whether to ask.
        pg.ssl_mode(match tls {
            TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
            TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            TlsMode::Require => tokio_postgres::config::SslMode::Require,
        });
        Ok(Self {
            pg,
            tls,
            root_cert,
            pool_size,
            statement_timeout,
            redacted,
        })
    }

    /// The URL with its password replaced by `***`: safe for logs, errors and `/readyz`.
    #[must_use]
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The database's name.
    #[must_use]
    pub fn database(&self) -> &str {
        self.pg.get_dbname().unwrap_or_default()
    }

    /// The same server and credentials with another database (tests make throwaway ones).
    #[must_use]
    pub fn with_database(&self, name: &str) -> Self {
        let mut c = self.clone();
        c.pg.dbname(name);
        c.redacted = replace_database(&self.redacted, self.database(), name);
        c
    }

    /// The same database with another pool size and statement timeout.
    #[must_use]
    pub fn with_limits(&self, pool_size: usize, statement_timeout: Duration) -> Self {
        let mut c = self.clone();
        c.pool_size = pool_size.max(1);
        c.statement_timeout = statement_timeout;
        c.pg.options(format!(
            "-c statement_timeout={}",
            statement_timeout.as_millis()
        ));
        c
    }
}

/// Split `sslmode`/`sslrootcert` off the URL's query string (or a `key=value` string): the
/// driver knows only three modes and no root file, and we verify with rustls ourselves.
fn take_tls_params(url: &str) -> Result<(String, TlsMode, Option<PathBuf>), ConfigError> {
    let mut tls = TlsMode::Prefer;
    let mut root = None;
    let mut apply = |key: &str, value: &str| -> Result<bool, ConfigError> {
        match key {
            "sslmode" => {
                tls = match value {
                    "disable" => TlsMode::Disable,
                    "prefer" | "allow" => TlsMode::Prefer,
                    "require" | "verify-ca" | "verify-full" => TlsMode::Require,
                    other => {
                        return Err(ConfigError(format!(
                            "unknown sslmode `{other}` (disable, prefer, require, verify-ca, \
                             verify-full)"
                        )));
                    }
                };
                Ok(true)
            }
            "sslrootcert" => {
                root = Some(PathBuf::from(value));
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !apply(k, v)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !apply(k, v)? {
                kept.push(pair);
            }
        }
        kept.join(" ")
    };
    Ok((rest, tls, root))
}

/// The URL with any password shown as `***` (`postgres://user:***@host/db`, `password=***`).
#[must_use]
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        let tail = redact_query_password(tail);
        format!("{scheme}://{authority}{tail}")
    } else {
        url.split_whitespace()
            .map(|pair| {
                if pair.starts_with("password=") {
                    "password=***".to_owned()
                } else {
                    pair.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query = query
        .split('&')
        .map(|p| {
            if p.starts_with("password=") {
                "password=***"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{path}?{query}")
}

/// `url` (a URL or a `key=value` string) naming database `new` instead of `old`.
pub(crate) fn replace_database(redacted: &str, old: &str, new: &str) -> String {
    if let Some((scheme, rest)) = redacted.split_once("://")
        && let Some(slash) = rest.find('/')
    {
        let (authority, tail) = rest.split_at(slash);
        let tail = &tail[1..];
        let query = tail.find('?').map_or("", |i| &tail[i..]);
        return format!("{scheme}://{authority}/{new}{query}");
    }
    redacted.replace(&format!("dbname={old}"), &format!("dbname={new}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> Result<PgConfig, ConfigError> {
        PgConfig::new(url, DEFAULT_POOL_SIZE, DEFAULT_STATEMENT_TIMEOUT)
    }

    #[test]
    fn the_password_never_shows() -> Result<(), ConfigError> {
        let c = cfg("postgres://metis:s3cret@db.internal:5432/metis?sslmode=disable")?;
        assert_eq!(
            c.redacted(),
            "postgres://metis:***@db.internal:5432/metis?sslmode=disable"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let kv = cfg("host=db user=metis password=s3cret dbname=metis sslmode=disable")?;
        assert!(!kv.redacted().contains("s3cret"), "{}", kv.redacted());
        assert_eq!(
            redact("postgres://h/db?user=u&password=pw"),
            "postgres://h/db?user=u&password=***"
        );
        Ok(())
    }

    #[test]
    fn sslmode_and_root_cert_are_ours() -> Result<(), ConfigError> {
        let c = cfg("postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=3")?;
        assert_eq!(c.tls, TlsMode::Require);
        assert_eq!(
            c.root_cert.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(c.pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(cfg("postgres://u@h/db")?.tls, TlsMode::Prefer);
        assert_eq!(
            cfg("postgres://u@h/db?sslmode=disable")?.tls,
            TlsMode::Disable
        );
        Ok(())
    }

    #[test]
    fn bad_settings_are_named() {
        let err = |url: &str| cfg(url).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("postgres://u@h/db?sslmode=sometimes").contains("unknown sslmode `sometimes`"));
        assert!(err("postgres://u:pw@h").contains("names no database"));
        assert!(!err("postgres://u:pw@h").contains("pw@"));
        assert!(
            PgConfig::new("postgres://u@h/db", 0, DEFAULT_STATEMENT_TIMEOUT)
                .err()
                .is_some_and(|e| e.0.contains("pool-size"))
        );
        assert!(
            PgConfig::new("postgres://u@h/db", 1, Duration::ZERO)
                .err()
                .is_some_and(|e| e.0.contains("statement-timeout"))
        );
    }

    #[test]
    fn another_database_keeps_the_rest() -> Result<(), ConfigError> {
        let c = cfg("postgres://u:pw@h:5433/metis?sslmode=disable")?.with_database("scratch_1");
        assert_eq!(c.database(), "scratch_1");
        assert_eq!(
            c.redacted(),
            "postgres://u:***@h:5433/scratch_1?sslmode=disable"
        );
        Ok(())
    }
}
