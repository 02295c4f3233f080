//! Building the provider instances: the built-in ones from flags and the environment, and one
//! per `[providers.NAME]` section of the config file. A section's `kind` (default: its name)
//! picks the wire protocol; its name is the provider part of canonical ids (`vllm-a:llama-3`)
//! and what route deployments refer to.

use crate::cli::ServeArgs;
use anyhow::{Context, bail};
use metis_ports::upstream::Provider;
use metis_upstream::{
    BedrockConfig, BedrockProvider, CredentialSource, HttpProvider, HttpProviderConfig,
    MockProvider, MockSettings, RetryPolicy, Timeouts,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One `[providers.NAME]` section. Which fields apply depends on `kind`; a field another kind
/// needs is refused for this one, naming it.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// The protocol: `anthropic`, `openai` (any OpenAI-compatible server), `openrouter`,
    /// `bedrock`, `mock`. Default: the section's name.
    pub kind: Option<String>,
    pub api_key: Option<String>,
    /// Read the credential from this environment variable instead of the file.
    pub api_key_env: Option<String>,
    pub base_url: Option<String>,
    /// Whether an OpenAI-wire upstream serves the Responses API (`/responses`) natively.
    /// Default: on for OpenAI's own API, off for any other base URL (vLLM, Ollama, …), whose
    /// Responses clients are then translated to Chat Completions.
    pub responses_api: Option<bool>,
    /// Mock: register it even when real providers have credentials.
    #[serde(default)]
    pub enabled: bool,
    /// Mock: delay before its response head.
    pub latency_ms: Option<u64>,
    /// Mock: pace streamed tokens at this rate.
    pub tokens_per_second: Option<f64>,
    /// Bedrock: AWS region (else `AWS_REGION`, then `AWS_DEFAULT_REGION`).
    pub region: Option<String>,
    /// Bedrock: static access key id (its secret from `secret_access_key` or the variable
    /// `secret_access_key_env` names, default `AWS_SECRET_ACCESS_KEY`).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub secret_access_key_env: Option<String>,
    /// Bedrock: variable holding a session token for the static keys.
    pub session_token_env: Option<String>,
    /// Bedrock: role assumed with a web identity token (IRSA), with `web_identity_token_file`.
    pub role_arn: Option<String>,
    pub web_identity_token_file: Option<String>,
    /// Bedrock: STS endpoint for the web identity exchange (default
    /// `https://sts.{region}.amazonaws.com`).
    pub sts_endpoint: Option<String>,
}

impl std::fmt::Debug for ProviderSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSection")
            .field("kind", &self.kind)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_env", &self.api_key_env)
            .field("base_url", &self.base_url)
            .field("responses_api", &self.responses_api)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("secret_access_key_env", &self.secret_access_key_env)
            .field("session_token_env", &self.session_token_env)
            .field("role_arn", &self.role_arn)
            .field("web_identity_token_file", &self.web_identity_token_file)
            .field("sts_endpoint", &self.sts_endpoint)
            .finish_non_exhaustive()
    }
}

/// The provider kinds this binary speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Anthropic,
    OpenAi,
    OpenRouter,
    Bedrock,
    Mock,
}

impl Kind {
    const ALL: [(&'static str, Kind); 5] = [
        ("anthropic", Kind::Anthropic),
        ("openai", Kind::OpenAi),
        ("openrouter", Kind::OpenRouter),
        ("bedrock", Kind::Bedrock),
        ("mock", Kind::Mock),
    ];

    fn parse(s: &str) -> Option<Kind> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }

    fn names() -> String {
        Self::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ProviderSection {
    /// The section's kind, or an error naming the section and the kinds there are.
    ///
    /// # Errors
    /// An unknown kind.
    pub fn kind_of(&self, name: &str) -> anyhow::Result<Kind> {
        let kind = self.kind.as_deref().unwrap_or(name);
        Kind::parse(kind).with_context(|| {
            format!(
                "[providers.{name}]: unknown kind '{kind}' (one of: {})",
                Kind::names()
            )
        })
    }

    /// The credential: `api_key`, else the variable `api_key_env` names.
    fn credential(&self) -> Option<String> {
        non_empty(self.api_key.as_ref()).or_else(|| {
            self.api_key_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
                .and_then(|v| non_empty(Some(&v)))
        })
    }
}

/// Check every section's kind and that it uses only its kind's fields.
///
/// # Errors
/// Names the section and the field.
pub fn validate(sections: &BTreeMap<String, ProviderSection>) -> anyhow::Result<()> {
    for (name, s) in sections {
        if name.is_empty() || name.contains(':') {
            bail!("[providers.{name}]: a provider name must be non-empty and contain no ':'");
        }
        let kind = s.kind_of(name)?;
        let mock_fields = s.enabled || s.latency_ms.is_some() || s.tokens_per_second.is_some();
        if kind == Kind::Mock {
            if s.api_key.is_some() || s.base_url.is_some() || s.api_key_env.is_some() {
                bail!("[providers.{name}]: the mock takes no api_key or base_url");
            }
        } else if mock_fields {
            bail!(
                "[providers.{name}]: enabled, latency_ms and tokens_per_second apply to the mock only"
            );
        }
        let bedrock_fields = [
            ("region", s.region.is_some()),
            ("access_key_id", s.access_key_id.is_some()),
            ("secret_access_key", s.secret_access_key.is_some()),
            ("secret_access_key_env", s.secret_access_key_env.is_some()),
            ("session_token_env", s.session_token_env.is_some()),
            ("role_arn", s.role_arn.is_some()),
            (
                "web_identity_token_file",
                s.web_identity_token_file.is_some(),
            ),
            ("sts_endpoint", s.sts_endpoint.is_some()),
        ];
        if kind == Kind::Bedrock {
            for (field, set) in [
                ("api_key", s.api_key.is_some()),
                ("api_key_env", s.api_key_env.is_some()),
                ("responses_api", s.responses_api.is_some()),
            ] {
                if set {
                    bail!(
                        "[providers.{name}]: {field} does not apply to kind bedrock (it signs with AWS credentials: access_key_id/secret_access_key or role_arn/web_identity_token_file)"
                    );
                }
            }
        } else if let Some((field, _)) = bedrock_fields.iter().find(|(_, set)| *set) {
            bail!("[providers.{name}]: {field} applies to kind bedrock only");
        }
    }
    Ok(())
}

fn non_empty(s: Option<&String>) -> Option<String> {
    s.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Every live provider: the built-in ones with a credential (flag or environment first, then
/// their section), each other section, and the mock when asked for or when nothing else is.
///
/// # Errors
/// A section that cannot be built (bad base URL, missing credential for a named section).
pub fn build(
    args: &ServeArgs,
    sections: &BTreeMap<String, ProviderSection>,
) -> anyhow::Result<Vec<Arc<dyn Provider>>> {
    let mut out: Vec<Arc<dyn Provider>> = Vec::new();
    let builtin = [
        (
            "anthropic",
            &args.anthropic_api_key,
            &args.anthropic_base_url,
        ),
        ("openai", &args.openai_api_key, &args.openai_base_url),
        (
            "openrouter",
            &args.openrouter_api_key,
            &args.openrouter_base_url,
        ),
    ];
    let empty = ProviderSection::default();
    for (name, flag_key, flag_base) in builtin {
        let section = sections.get(name).unwrap_or(&empty);
        let Some(key) = non_empty(flag_key.as_ref()).or_else(|| section.credential()) else {
            continue;
        };
        let base = flag_base.clone().or_else(|| section.base_url.clone());
        out.push(http_provider(
            args,
            name,
            section.kind_of(name)?,
            key,
            base,
            section,
        )?);
    }
    for (name, section) in sections {
        let kind = section.kind_of(name)?;
        if matches!(name.as_str(), "anthropic" | "openai" | "openrouter") || kind == Kind::Mock {
            continue;
        }
        if kind == Kind::Bedrock {
            let env = |v: &str| std::env::var(v).ok().filter(|v| !v.trim().is_empty());
            out.push(bedrock_provider(args, name, section, &env)?);
            continue;
        }
        let key = section.credential().unwrap_or_default();
        out.push(http_provider(
            args,
            name,
            kind,
            key,
            section.base_url.clone(),
            section,
        )?);
    }
    // Bedrock from the environment alone: a region and AWS credentials, no section needed.
    let bedrock_section = sections
        .iter()
        .any(|(name, s)| s.kind_of(name).is_ok_and(|k| k == Kind::Bedrock));
    if !bedrock_section {
        let env = |v: &str| std::env::var(v).ok().filter(|v| !v.trim().is_empty());
        if aws_env_configured(&env) {
            out.push(bedrock_provider(args, "bedrock", &empty, &env)?);
        }
    }
    let mock = sections
        .iter()
        .find(|(name, s)| s.kind_of(name).is_ok_and(|k| k == Kind::Mock));
    let mock_wanted = args.enable_mock_provider || mock.is_some_and(|(_, s)| s.enabled);
    if out.is_empty() || mock_wanted {
        let section = mock.map(|(_, s)| s);
        let settings = MockSettings {
            latency_ms: if args.mock_latency_ms > 0 {
                args.mock_latency_ms
            } else {
                section.and_then(|m| m.latency_ms).unwrap_or(0)
            },
            tokens_per_second: args
                .mock_tokens_per_second
                .or_else(|| section.and_then(|m| m.tokens_per_second)),
            ..MockSettings::default()
        };
        out.push(Arc::new(MockProvider::new(settings)));
    }
    Ok(out)
}

/// An Anthropic, OpenAI-compatible or OpenRouter provider named `name`.
fn http_provider(
    args: &ServeArgs,
    name: &str,
    kind: Kind,
    key: String,
    base: Option<String>,
    section: &ProviderSection,
) -> anyhow::Result<Arc<dyn Provider>> {
    let mut config = match kind {
        Kind::Anthropic => HttpProviderConfig::anthropic(key),
        Kind::OpenAi => HttpProviderConfig::openai(key),
        Kind::OpenRouter => HttpProviderConfig::openrouter(key),
        Kind::Mock => bail!("[providers.{name}]: the mock is not an HTTP provider"),
        Kind::Bedrock => bail!("[providers.{name}]: bedrock is built by bedrock_provider"),
    }
    .with_name(name);
    // Responses clients are forwarded natively only to upstreams known to serve the
    // Responses API: OpenAI's own, or one configured with `responses_api = true`.
    let native_responses = section
        .responses_api
        .unwrap_or(config.responses_api && base.is_none());
    if let Some(base) = base {
        config = config.with_base_url(base);
    }
    config = config
        .with_responses_api(native_responses)
        .with_response_head_timeout(args.upstream_timeout)
        .with_max_retries(args.upstream_retries);
    let provider =
        HttpProvider::new(config).with_context(|| format!("cannot configure provider '{name}'"))?;
    Ok(Arc::new(provider))
}

/// Whether the environment alone configures Bedrock: a region and either static keys or a
/// web identity (role ARN and token file).
fn aws_env_configured(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .is_some();
    let keys = env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some();
    let web = env("AWS_ROLE_ARN").is_some() && env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some();
    region && (keys || web)
}

/// The Bedrock settings of a section, completed from the environment (`env`): the section's
/// own credentials first, then the AWS variables in the order the AWS SDKs use (static keys,
/// then web identity).
fn bedrock_config(
    name: &str,
    section: &ProviderSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<BedrockConfig> {
    let region = non_empty(section.region.as_ref())
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .with_context(|| {
            format!(
                "[providers.{name}]: no AWS region (set region, or AWS_REGION / AWS_DEFAULT_REGION)"
            )
        })?;
    let web_identity = |role_arn: String, token_file: String| CredentialSource::WebIdentity {
        role_arn,
        token_file: token_file.into(),
        session_name: env("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "metis-gateway".to_owned()),
        sts_endpoint: non_empty(section.sts_endpoint.as_ref())
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com")),
    };
    let credentials = if let Some(role_arn) = non_empty(section.role_arn.as_ref()) {
        let token_file = non_empty(section.web_identity_token_file.as_ref())
            .or_else(|| env("AWS_WEB_IDENTITY_TOKEN_FILE"))
            .with_context(|| {
                format!("[providers.{name}]: role_arn needs web_identity_token_file (or AWS_WEB_IDENTITY_TOKEN_FILE)")
            })?;
        web_identity(role_arn, token_file)
    } else if let Some(access_key_id) = non_empty(section.access_key_id.as_ref()) {
        let secret_var = section
            .secret_access_key_env
            .clone()
            .unwrap_or_else(|| "AWS_SECRET_ACCESS_KEY".to_owned());
        let secret_access_key = non_empty(section.secret_access_key.as_ref())
            .or_else(|| env(&secret_var))
            .with_context(|| {
                format!("[providers.{name}]: access_key_id needs secret_access_key or the variable {secret_var}")
            })?;
        CredentialSource::Static {
            access_key_id,
            secret_access_key,
            session_token: section.session_token_env.as_deref().and_then(env),
        }
    } else if let (Some(access_key_id), Some(secret_access_key)) =
        (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
    {
        CredentialSource::Static {
            access_key_id,
            secret_access_key,
            session_token: env("AWS_SESSION_TOKEN"),
        }
    } else if let (Some(role_arn), Some(token_file)) =
        (env("AWS_ROLE_ARN"), env("AWS_WEB_IDENTITY_TOKEN_FILE"))
    {
        web_identity(role_arn, token_file)
    } else {
        bail!(
            "[providers.{name}]: no AWS credentials (set access_key_id or role_arn, or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, or AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE)"
        );
    };
    Ok(BedrockConfig {
        name: name.to_owned(),
        region,
        base_url: non_empty(section.base_url.as_ref()),
        credentials,
        timeouts: Timeouts::default(),
        retry: RetryPolicy::default(),
    })
}

/// A Bedrock provider named `name`.
fn bedrock_provider(
    args: &ServeArgs,
    name: &str,
    section: &ProviderSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Arc<dyn Provider>> {
    let mut config = bedrock_config(name, section, env)?;
    config.timeouts.response_head = args.upstream_timeout;
    config.retry.max_retries = args.upstream_retries;
    let provider = BedrockProvider::new(config)
        .with_context(|| format!("cannot configure provider '{name}'"))?;
    Ok(Arc::new(provider))
}

#[cfg(test)]
mod bedrock_tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn environment_alone_needs_a_region_and_credentials() {
        assert!(!aws_env_configured(&env_of(&[
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "s")
        ])));
        assert!(aws_env_configured(&env_of(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ])));
        assert!(aws_env_configured(&env_of(&[
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
        ])));
    }

    #[test]
    fn static_keys_from_env_then_web_identity() {
        let empty = ProviderSection::default();
        let c = bedrock_config(
            "bedrock",
            &empty,
            &env_of(&[
                ("AWS_REGION", "us-west-2"),
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "very-secret"),
                ("AWS_SESSION_TOKEN", "tok"),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ]),
        )
        .unwrap();
        assert_eq!(c.region, "us-west-2");
        assert!(
            matches!(&c.credentials, CredentialSource::Static { session_token: Some(t), .. } if t == "tok")
        );
        assert!(!format!("{c:?}").contains("very-secret"));
        let c = bedrock_config(
            "bedrock",
            &empty,
            &env_of(&[
                ("AWS_REGION", "us-west-2"),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ]),
        )
        .unwrap();
        assert!(
            matches!(&c.credentials, CredentialSource::WebIdentity { sts_endpoint, .. } if sts_endpoint == "https://sts.us-west-2.amazonaws.com")
        );
    }

    #[test]
    fn missing_pieces_are_named() {
        let empty = ProviderSection::default();
        let err = bedrock_config("bedrock", &empty, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no AWS region"), "{err}");
        let err = bedrock_config("bedrock", &empty, &env_of(&[("AWS_REGION", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no AWS credentials"), "{err}");
        let section = ProviderSection {
            access_key_id: Some("AKID".into()),
            secret_access_key_env: Some("MY_SECRET".into()),
            region: Some("us-east-1".into()),
            ..ProviderSection::default()
        };
        let err = bedrock_config("aws", &section, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[providers.aws]") && err.contains("MY_SECRET"),
            "{err}"
        );
    }

    #[test]
    fn fields_of_another_kind_are_refused_by_name() {
        let mut sections = BTreeMap::new();
        sections.insert(
            "bedrock".to_owned(),
            ProviderSection {
                api_key: Some("k".into()),
                ..ProviderSection::default()
            },
        );
        let err = validate(&sections).unwrap_err().to_string();
        assert!(
            err.contains("api_key does not apply to kind bedrock"),
            "{err}"
        );
        let mut sections = BTreeMap::new();
        sections.insert(
            "openai".to_owned(),
            ProviderSection {
                role_arn: Some("arn".into()),
                ..ProviderSection::default()
            },
        );
        let err = validate(&sections).unwrap_err().to_string();
        assert!(
            err.contains("role_arn applies to kind bedrock only"),
            "{err}"
        );
    }
}
