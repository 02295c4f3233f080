//! Building the provider instances: the built-in ones from flags and the environment, and one
//! per `[providers.NAME]` section of the config file. A section's `kind` (default: its name)
//! picks the wire protocol; its name is the provider part of canonical ids (`vllm-a:llama-3`)
//! and what route deployments refer to.

use crate::cli::ServeArgs;
use anyhow::{Context, bail};
use metis_ports::upstream::Provider;
use metis_ports::upstream::WireFormat;
use metis_upstream::{
    AZURE_COGNITIVE_SCOPE, AZURE_DEFAULT_API_VERSION, AzureAuth, AzureConfig, AzureProvider,
    BedrockConfig, BedrockProvider, ClientCredentials, CredentialSource, ENTRA_DEFAULT_AUTHORITY,
    GoogleAuth, GoogleProvider, GoogleProviderConfig, HttpProvider, HttpProviderConfig,
    MockProvider, MockSettings, RetryPolicy, ServiceAccount, Timeouts,
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
    /// `azure`, the OpenAI-compatible presets `mistral`, `groq`, `deepseek`, `together`,
    /// `fireworks`, `gemini`, `vertex`, `vertex-anthropic`, `bedrock`, or `mock`. Default: the
    /// section's name.
    pub kind: Option<String>,
    pub api_key: Option<String>,
    /// Read the credential from this environment variable instead of the file.
    pub api_key_env: Option<String>,
    pub base_url: Option<String>,
    /// Whether an OpenAI-wire upstream serves the Responses API (`/responses`) natively.
    /// Default: on for OpenAI's own API, off for any other base URL (vLLM, Ollama, …), whose
    /// Responses clients are then translated to Chat Completions.
    pub responses_api: Option<bool>,
    /// Azure: the `api-version` query parameter (default `2024-10-21`).
    pub api_version: Option<String>,
    /// Azure: a ready Entra ID access token is in this environment variable.
    pub entra_token_env: Option<String>,
    /// Azure client-credentials flow: the directory (tenant) id.
    pub tenant_id: Option<String>,
    /// Azure client-credentials flow: the app registration's client id.
    pub client_id: Option<String>,
    /// Azure client-credentials flow: the client secret is in this environment variable.
    pub client_secret_env: Option<String>,
    /// Azure client-credentials flow: the Entra ID authority (default
    /// `https://login.microsoftonline.com`).
    pub authority_url: Option<String>,
    /// Mock: register it even when real providers have credentials.
    #[serde(default)]
    pub enabled: bool,
    /// Mock: delay before its response head.
    pub latency_ms: Option<u64>,
    /// Mock: pace streamed tokens at this rate.
    pub tokens_per_second: Option<f64>,
    /// Vertex kinds: the service-account JSON key file (default: the file
    /// `GOOGLE_APPLICATION_CREDENTIALS` names).
    pub credentials_file: Option<String>,
    /// Vertex kinds: the Google Cloud project (default: `GOOGLE_CLOUD_PROJECT`, else the key
    /// file's `project_id`).
    pub project: Option<String>,
    /// Vertex kinds: the region, or `global` (default: `GOOGLE_CLOUD_LOCATION`, else `global`).
    pub location: Option<String>,
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
            .field("api_version", &self.api_version)
            .field("entra_token_env", &self.entra_token_env)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret_env", &self.client_secret_env)
            .field("authority_url", &self.authority_url)
            .field("credentials_file", &self.credentials_file)
            .field("project", &self.project)
            .field("location", &self.location)
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
    Azure,
    Mistral,
    Groq,
    DeepSeek,
    Together,
    Fireworks,
    Bedrock,
    Mock,
    /// Gemini API (`x-goog-api-key`).
    Gemini,
    /// Gemini on Vertex AI (service account).
    Vertex,
    /// Claude on Vertex AI (service account).
    VertexAnthropic,
}

/// An OpenAI-compatible provider known by name: its default base URL and the environment
/// variable holding its API key.
struct Preset {
    kind: Kind,
    name: &'static str,
    base_url: &'static str,
    key_env: &'static str,
}

const PRESETS: [Preset; 5] = [
    Preset {
        kind: Kind::Mistral,
        name: "mistral",
        base_url: "https://api.mistral.ai/v1",
        key_env: "MISTRAL_API_KEY",
    },
    Preset {
        kind: Kind::Groq,
        name: "groq",
        base_url: "https://api.groq.com/openai/v1",
        key_env: "GROQ_API_KEY",
    },
    Preset {
        kind: Kind::DeepSeek,
        name: "deepseek",
        base_url: "https://api.deepseek.com/v1",
        key_env: "DEEPSEEK_API_KEY",
    },
    Preset {
        kind: Kind::Together,
        name: "together",
        base_url: "https://api.together.xyz/v1",
        key_env: "TOGETHER_API_KEY",
    },
    Preset {
        kind: Kind::Fireworks,
        name: "fireworks",
        base_url: "https://api.fireworks.ai/inference/v1",
        key_env: "FIREWORKS_API_KEY",
    },
];

impl Kind {
    const ALL: [(&'static str, Kind); 14] = [
        ("anthropic", Kind::Anthropic),
        ("openai", Kind::OpenAi),
        ("openrouter", Kind::OpenRouter),
        ("azure", Kind::Azure),
        ("mistral", Kind::Mistral),
        ("groq", Kind::Groq),
        ("deepseek", Kind::DeepSeek),
        ("together", Kind::Together),
        ("fireworks", Kind::Fireworks),
        ("bedrock", Kind::Bedrock),
        ("mock", Kind::Mock),
        ("gemini", Kind::Gemini),
        ("vertex", Kind::Vertex),
        ("vertex-anthropic", Kind::VertexAnthropic),
    ];

    fn preset(self) -> Option<&'static Preset> {
        PRESETS.iter().find(|p| p.kind == self)
    }

    fn is_vertex(self) -> bool {
        matches!(self, Kind::Vertex | Kind::VertexAnthropic)
    }

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
        non_empty(self.api_key.as_ref())
            .or_else(|| self.api_key_env.as_ref().and_then(|v| env_value(v)))
    }

    /// The Azure-only fields that are set, by name.
    fn azure_fields(&self) -> Vec<&'static str> {
        [
            ("api_version", self.api_version.is_some()),
            ("entra_token_env", self.entra_token_env.is_some()),
            ("tenant_id", self.tenant_id.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret_env", self.client_secret_env.is_some()),
            ("authority_url", self.authority_url.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect()
    }
}

/// A non-empty environment variable's trimmed value.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().and_then(|v| non_empty(Some(&v)))
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
        if kind == Kind::Azure {
            validate_azure(name, s)?;
        } else if let Some(field) = s.azure_fields().first() {
            bail!("[providers.{name}]: {field} applies to kind 'azure' only");
        }
        if kind == Kind::Azure && s.responses_api.is_some() {
            bail!("[providers.{name}]: responses_api does not apply to kind 'azure'");
        }
        let vertex_fields = [
            ("credentials_file", s.credentials_file.is_some()),
            ("project", s.project.is_some()),
            ("location", s.location.is_some()),
        ];
        if !kind.is_vertex()
            && let Some((field, _)) = vertex_fields.iter().find(|(_, set)| *set)
        {
            bail!("[providers.{name}]: {field} applies to kinds vertex and vertex-anthropic only");
        }
        if kind.is_vertex() {
            for (field, set) in [
                ("api_key", s.api_key.is_some()),
                ("api_key_env", s.api_key_env.is_some()),
                ("responses_api", s.responses_api.is_some()),
            ] {
                if set {
                    bail!(
                        "[providers.{name}]: {field} does not apply to kind {} (it authenticates with a service account: credentials_file)",
                        s.kind.as_deref().unwrap_or(name)
                    );
                }
            }
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
        if kind == Kind::Gemini && s.responses_api.is_some() {
            bail!("[providers.{name}]: responses_api does not apply to kind gemini");
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
    for (name, kind) in [
        ("gemini", Kind::Gemini),
        ("vertex", Kind::Vertex),
        ("vertex-anthropic", Kind::VertexAnthropic),
    ] {
        if !sections.contains_key(name)
            && let Some(p) = google_from_env(args, name, kind)?
        {
            out.push(p);
        }
    }
    for (name, section) in sections {
        let kind = section.kind_of(name)?;
        if matches!(name.as_str(), "anthropic" | "openai" | "openrouter") || kind == Kind::Mock {
            continue;
        }
        out.push(section_provider(args, name, kind, section)?);
    }
    // Registration from the environment alone: a preset or Azure whose documented variables
    // are set, unless a section of that name configures it (the section wins).
    for preset in &PRESETS {
        if sections.contains_key(preset.name) {
            continue;
        }
        if let Some(key) = env_value(preset.key_env) {
            out.push(http_provider(
                args,
                preset.name,
                preset.kind,
                key,
                None,
                &empty,
            )?);
        }
    }
    if !sections.contains_key("azure")
        && let Some(endpoint) = env_value(AZURE_ENDPOINT_ENV)
    {
        if env_value(AZURE_KEY_ENV).is_some() || env_value(AZURE_TOKEN_ENV).is_some() {
            let section = ProviderSection {
                base_url: Some(endpoint),
                ..ProviderSection::default()
            };
            out.push(azure_provider(args, "azure", &section)?);
        } else {
            tracing::warn!(
                "{AZURE_ENDPOINT_ENV} is set but neither {AZURE_KEY_ENV} nor {AZURE_TOKEN_ENV}: \
                 Azure OpenAI is not registered"
            );
        }
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

/// The provider of a `[providers.NAME]` section of an HTTP kind.
fn section_provider(
    args: &ServeArgs,
    name: &str,
    kind: Kind,
    section: &ProviderSection,
) -> anyhow::Result<Arc<dyn Provider>> {
    if kind == Kind::Azure {
        return azure_provider(args, name, section);
    }
    if matches!(kind, Kind::Gemini | Kind::Vertex | Kind::VertexAnthropic) {
        return google_provider(args, name, kind, section);
    }
    if kind == Kind::Bedrock {
        let env = |v: &str| std::env::var(v).ok().filter(|v| !v.trim().is_empty());
        return bedrock_provider(args, name, section, &env);
    }
    let key = match kind.preset() {
        // A preset section without its own credential takes the kind's variable; a preset
        // without any key would only collect 401s, so it is refused at startup.
        Some(preset) => section
            .credential()
            .or_else(|| env_value(preset.key_env))
            .with_context(|| {
                format!(
                    "[providers.{name}]: no API key: set api_key or api_key_env, or {}",
                    preset.key_env
                )
            })?,
        None => section.credential().unwrap_or_default(),
    };
    http_provider(args, name, kind, key, section.base_url.clone(), section)
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
        Kind::Mistral | Kind::Groq | Kind::DeepSeek | Kind::Together | Kind::Fireworks => {
            HttpProviderConfig::openai(key)
        }
        Kind::Azure => bail!("[providers.{name}]: Azure is built by azure_provider"),
        Kind::Mock => bail!("[providers.{name}]: the mock is not an HTTP provider"),
        Kind::Bedrock => bail!("[providers.{name}]: bedrock is built by bedrock_provider"),
        Kind::Gemini | Kind::Vertex | Kind::VertexAnthropic => {
            bail!("[providers.{name}]: a Google kind is built by google_provider")
        }
    }
    .with_name(name);
    // A preset's own base URL counts as configured, so Responses clients are translated to
    // Chat Completions there unless the section says the upstream serves `/responses`.
    let base = base.or_else(|| kind.preset().map(|p| p.base_url.to_owned()));
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

/// The routes of the config file over the live providers.
///
/// # Errors
/// A deployment naming a provider that is not live (no credentials, or no such section), or
/// an invalid `[routing]` table.
pub fn router(
    cfg: &crate::config::ConfigFile,
    providers: &[Arc<dyn Provider>],
    clock: Arc<dyn metis_ports::system::Clock>,
) -> anyhow::Result<metis_usecases::routing::Router> {
    metis_usecases::routing::Router::new(
        cfg.deployments()?,
        providers,
        cfg.routing.policy()?,
        clock,
    )
    .map_err(|e| anyhow::anyhow!("invalid [routes]: {e}"))
}

mod azure;
mod bedrock;
mod google;

use azure::{AZURE_ENDPOINT_ENV, AZURE_KEY_ENV, AZURE_TOKEN_ENV, azure_provider, validate_azure};
use bedrock::{aws_env_configured, bedrock_provider};
use google::{google_from_env, google_provider};

#[cfg(test)]
mod tests;
