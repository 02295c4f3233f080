//! Where a Bedrock provider's AWS credentials come from: static keys (environment or config
//! file), or a web identity token exchanged with STS `AssumeRoleWithWebIdentity` (what EKS
//! IRSA and similar setups provide: a role ARN and a token file the platform rotates).
//!
//! Web-identity credentials are cached and refreshed 5 minutes before they expire; the token
//! file is read again on every refresh (the platform rewrites it). One lock guards the
//! refresh, so concurrent requests wait for a single exchange instead of each starting one.
//! Failures name the step and the STS error code, never a token or key.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Mutex;

use super::sigv4::{Credentials, uri_encode};

/// Refresh this long before the credentials expire, so no request is signed with keys that
/// expire while it is in flight.
const REFRESH_MARGIN: time::Duration = time::Duration::minutes(5);
/// Longest wait for an STS answer.
const STS_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest role session STS is asked for (its default; the role may allow less).
const SESSION_SECONDS: u32 = 3600;

/// How credentials are obtained. `Debug` shows the key id, role and paths, never a secret.
#[derive(Clone)]
pub enum CredentialSource {
    /// Access key, secret and optional session token, used as they are.
    Static {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
    /// STS `AssumeRoleWithWebIdentity` with the token read from `token_file`.
    WebIdentity {
        role_arn: String,
        token_file: std::path::PathBuf,
        session_name: String,
        /// STS base URL (`https://sts.{region}.amazonaws.com` unless configured).
        sts_endpoint: String,
    },
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::Static {
                access_key_id,
                session_token,
                ..
            } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"<redacted>")
                .field(
                    "session_token",
                    &session_token.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
            CredentialSource::WebIdentity {
                role_arn,
                token_file,
                session_name,
                sts_endpoint,
            } => f
                .debug_struct("WebIdentity")
                .field("role_arn", role_arn)
                .field("token_file", token_file)
                .field("session_name", session_name)
                .field("sts_endpoint", sts_endpoint)
                .finish(),
        }
    }
}

/// Credentials with their expiry.
struct Cached {
    creds: Credentials,
    expires: OffsetDateTime,
}

/// The credential provider of one Bedrock provider.
pub(crate) struct CredentialProvider {
    source: CredentialSource,
    cache: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for CredentialProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.source {
            CredentialSource::Static { .. } => "static",
            CredentialSource::WebIdentity { .. } => "web_identity",
        };
        f.debug_struct("CredentialProvider")
            .field("source", &kind)
            .finish_non_exhaustive()
    }
}

impl CredentialProvider {
    pub(crate) fn new(source: CredentialSource) -> Self {
        Self {
            source,
            cache: Mutex::new(None),
        }
    }

    /// Current credentials, exchanging the web identity token when none are cached or they
    /// expire within the margin.
    ///
    /// # Errors
    /// A message naming what failed (reading the token file, reaching STS, STS's error code,
    /// an answer without credentials).
    pub(crate) async fn get(&self, client: &reqwest::Client) -> Result<Credentials, String> {
        let (role_arn, token_file, session_name, sts_endpoint) = match &self.source {
            CredentialSource::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                return Ok(Credentials {
                    access_key_id: access_key_id.clone(),
                    secret_access_key: secret_access_key.clone(),
                    session_token: session_token.clone(),
                });
            }
            CredentialSource::WebIdentity {
                role_arn,
                token_file,
                session_name,
                sts_endpoint,
            } => (role_arn, token_file, session_name, sts_endpoint),
        };
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref()
            && c.expires - REFRESH_MARGIN > OffsetDateTime::now_utc()
        {
            return Ok(c.creds.clone());
        }
        let token = tokio::fs::read_to_string(token_file).await.map_err(|e| {
            format!(
                "cannot read the web identity token file {}: {e}",
                token_file.display()
            )
        })?;
        let body = format!(
            "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&DurationSeconds={SESSION_SECONDS}&RoleArn={}&RoleSessionName={}&WebIdentityToken={}",
            uri_encode(role_arn, true),
            uri_encode(session_name, true),
            uri_encode(token.trim(), true),
        );
        let url = format!("{}/", sts_endpoint.trim_end_matches('/'));
        let response = client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/xml")
            .body(body)
            .timeout(STS_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "STS AssumeRoleWithWebIdentity unreachable: {}",
                    crate::transport::describe(&e)
                )
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|_| "STS AssumeRoleWithWebIdentity answer could not be read".to_owned())?;
        if !status.is_success() {
            let code = xml_field(&text, "Code").unwrap_or_else(|| "unknown".to_owned());
            return Err(format!(
                "STS AssumeRoleWithWebIdentity failed: HTTP {} ({code})",
                status.as_u16()
            ));
        }
        let fresh = parse_credentials(&text)?;
        let creds = fresh.creds.clone();
        *cache = Some(fresh);
        Ok(creds)
    }
}

/// The `Credentials` of an `AssumeRoleWithWebIdentityResponse`.
fn parse_credentials(xml: &str) -> Result<Cached, String> {
    let field = |name: &str| {
        xml_field(xml, name)
            .ok_or_else(|| format!("STS AssumeRoleWithWebIdentity answer has no {name}"))
    };
    let expiration = field("Expiration")?;
    let expires =
        OffsetDateTime::parse(&expiration, &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
                format!("STS AssumeRoleWithWebIdentity answer has a bad Expiration '{expiration}'")
            })?;
    Ok(Cached {
        creds: Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
        },
        expires,
    })
}

/// The text of the first element named `name` (the five predefined entities unescaped).
///
/// STS answers a fixed document whose credential elements hold plain text, so a tag search is
/// enough; no XML parser is linked in (quick-xml 0.36, the one in the tree, carries advisories
/// the gateway avoids by parsing no XML, see deny.toml).
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    let text = xml[start..end]
        .trim()
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ns:sa</SubjectFromWebIdentityToken>
    <Credentials>
      <SessionToken>tok&amp;en</SessionToken>
      <SecretAccessKey>secret</SecretAccessKey>
      <Expiration>2030-10-24T23:00:23Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn parses_the_sts_answer() {
        let c = parse_credentials(ANSWER).unwrap();
        assert_eq!(c.creds.access_key_id, "ASIAEXAMPLE");
        assert_eq!(c.creds.secret_access_key, "secret");
        assert_eq!(c.creds.session_token.as_deref(), Some("tok&en"));
        assert_eq!(c.expires.year(), 2030);
        let err = parse_credentials("<x/>").err().unwrap_or_default();
        assert!(err.contains("no Expiration"), "{err}");
    }

    #[test]
    fn reads_the_error_code() {
        let xml = r#"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>bad</Message></Error></ErrorResponse>"#;
        assert_eq!(
            xml_field(xml, "Code").as_deref(),
            Some("InvalidIdentityToken")
        );
    }
}
