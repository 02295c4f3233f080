//! Building the provider instances: the built-in ones from flags and the environment, and one
//! per `[providers.NAME]` section of the config file. A section's `kind` (default: its name)
//! picks the wire protocol; its name is the provider part of canonical ids (`vllm-a:llama-3`)
//! and what route deployments refer to.

use crate::cli::ServeArgs;
use anyhow::{Context, bail};
use metis_ports::upstream::Provider;
use metis_ports::upstream::WireFormat;
use metis_upstream::{
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
    /// `mock`. Default: the section's name.
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
    /// Vertex kinds: the service-account JSON key file (default: the file
    /// `GOOGLE_APPLICATION_CREDENTIALS` names).
    pub credentials_file: Option<String>,
    /// Vertex kinds: the Google Cloud project (default: `GOOGLE_CLOUD_PROJECT`, else the key
    /// file's `project_id`).
    pub project: Option<String>,
    /// Vertex kinds: the region, or `global` (default: `GOOGLE_CLOUD_LOCATION`, else `global`).
    pub location: Option<String>,
}

impl std::fmt::Debug for ProviderSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSection")
            .field("kind", &self.kind)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_env", &self.api_key_env)
            .field("base_url", &self.base_url)
            .field("responses_api", &self.responses_api)
            .field("credentials_file", &self.credentials_file)
            .field("project", &self.project)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The provider kinds this binary speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Anthropic,
    OpenAi,
    OpenRouter,
    Mock,
    /// Gemini API (`x-goog-api-key`).
    Gemini,
    /// Gemini on Vertex AI (service account).
    Vertex,
    /// Claude on Vertex AI (service account).
    VertexAnthropic,
}

impl Kind {
    const ALL: [(&'static str, Kind); 7] = [
        ("anthropic", Kind::Anthropic),
        ("openai", Kind::OpenAi),
        ("openrouter", Kind::OpenRouter),
        ("mock", Kind::Mock),
        ("gemini", Kind::Gemini),
        ("vertex", Kind::Vertex),
        ("vertex-anthropic", Kind::VertexAnthropic),
    ];

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
        if matches!(kind, Kind::Gemini | Kind::Vertex | Kind::VertexAnthropic) {
            out.push(google_provider(args, name, kind, section)?);
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
        Kind::Gemini | Kind::Vertex | Kind::VertexAnthropic => {
            bail!("[providers.{name}]: a Google kind is built by google_provider")
        }
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

/// The first non-empty value of these environment variables.
fn env_first(vars: &[&str]) -> Option<String> {
    vars.iter()
        .filter_map(|v| std::env::var(v).ok())
        .find_map(|v| non_empty(Some(&v)))
}

/// A Google provider registered from the environment alone (no section of that name):
/// `gemini` when `GEMINI_API_KEY` or `GOOGLE_API_KEY` is set; `vertex` and
/// `vertex-anthropic` when `GOOGLE_APPLICATION_CREDENTIALS` and `GOOGLE_CLOUD_PROJECT` are.
fn google_from_env(
    args: &ServeArgs,
    name: &str,
    kind: Kind,
) -> anyhow::Result<Option<Arc<dyn Provider>>> {
    let wanted = if kind == Kind::Gemini {
        env_first(&["GEMINI_API_KEY", "GOOGLE_API_KEY"]).is_some()
    } else {
        env_first(&["GOOGLE_APPLICATION_CREDENTIALS"]).is_some()
            && env_first(&["GOOGLE_CLOUD_PROJECT"]).is_some()
    };
    if !wanted {
        return Ok(None);
    }
    // Nothing asked for this provider by name: a key file it cannot use (an `authorized_user`
    // file from `gcloud auth application-default login`, say) must not stop the gateway.
    match google_provider(args, name, kind, &ProviderSection::default()) {
        Ok(p) => Ok(Some(p)),
        Err(e) if kind != Kind::Gemini => {
            tracing::warn!(
                provider = name,
                error = %format!("{e:#}"),
                "provider not registered from the environment (add a [providers.{name}] section to make this an error)"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A Gemini API, Vertex Gemini or Vertex Claude provider named `name`.
fn google_provider(
    args: &ServeArgs,
    name: &str,
    kind: Kind,
    section: &ProviderSection,
) -> anyhow::Result<Arc<dyn Provider>> {
    let (wire, auth, default_base) = if kind == Kind::Gemini {
        let key = section
            .credential()
            .or_else(|| env_first(&["GEMINI_API_KEY", "GOOGLE_API_KEY"]))
            .with_context(|| {
                format!(
                    "[providers.{name}]: no API key (set api_key, api_key_env, GEMINI_API_KEY or GOOGLE_API_KEY)"
                )
            })?;
        (
            WireFormat::GeminiGenerateContent,
            GoogleAuth::ApiKey(key),
            metis_upstream::google::GEMINI_BASE_URL.to_owned(),
        )
    } else {
        let path = section
            .credentials_file
            .clone()
            .or_else(|| env_first(&["GOOGLE_APPLICATION_CREDENTIALS"]))
            .with_context(|| {
                format!(
                    "[providers.{name}]: no service-account key file (set credentials_file or GOOGLE_APPLICATION_CREDENTIALS)"
                )
            })?;
        let json = std::fs::read_to_string(&path).with_context(|| {
            format!("[providers.{name}]: cannot read the credentials file {path}")
        })?;
        let account = ServiceAccount::from_json(&json)
            .map_err(|e| anyhow::anyhow!("[providers.{name}]: {path}: {e}"))?;
        let project = section
            .project
            .clone()
            .or_else(|| env_first(&["GOOGLE_CLOUD_PROJECT"]))
            .or_else(|| {
                serde_json::from_str::<serde_json::Value>(&json)
                    .ok()
                    .and_then(|v| v.get("project_id")?.as_str().map(str::to_owned))
            })
            .with_context(|| {
                format!("[providers.{name}]: no project (set project or GOOGLE_CLOUD_PROJECT)")
            })?;
        let location = section
            .location
            .clone()
            .or_else(|| env_first(&["GOOGLE_CLOUD_LOCATION"]))
            .unwrap_or_else(|| "global".to_owned());
        let base = metis_upstream::google::vertex_base_url(&location);
        let wire = if kind == Kind::VertexAnthropic {
            WireFormat::AnthropicMessages
        } else {
            WireFormat::GeminiGenerateContent
        };
        (
            wire,
            GoogleAuth::Vertex {
                project,
                location,
                account,
            },
            base,
        )
    };
    let config = GoogleProviderConfig {
        name: name.to_owned(),
        wire,
        auth,
        base_url: section.base_url.clone().unwrap_or(default_base),
        timeouts: Timeouts {
            response_head: args.upstream_timeout,
            ..Timeouts::default()
        },
        retry: RetryPolicy {
            max_retries: args.upstream_retries,
            ..RetryPolicy::default()
        },
    };
    let provider = GoogleProvider::new(config)
        .with_context(|| format!("cannot configure provider '{name}'"))?;
    Ok(Arc::new(provider))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn sections(name: &str, s: ProviderSection) -> BTreeMap<String, ProviderSection> {
        BTreeMap::from([(name.to_owned(), s)])
    }

    #[test]
    fn google_fields_are_refused_on_the_wrong_kind_naming_them() {
        let err = validate(&sections(
            "gemini",
            ProviderSection {
                credentials_file: Some("sa.json".into()),
                ..ProviderSection::default()
            },
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("credentials_file applies to kinds vertex"),
            "{err}"
        );
        let err = validate(&sections(
            "openai",
            ProviderSection {
                location: Some("us-east5".into()),
                ..ProviderSection::default()
            },
        ))
        .unwrap_err();
        assert!(err.to_string().contains("location"), "{err}");
        let err = validate(&sections(
            "claude",
            ProviderSection {
                kind: Some("vertex-anthropic".into()),
                api_key: Some("k".into()),
                ..ProviderSection::default()
            },
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("api_key does not apply to kind vertex-anthropic"),
            "{err}"
        );
        validate(&sections(
            "vertex",
            ProviderSection {
                credentials_file: Some("sa.json".into()),
                project: Some("p".into()),
                location: Some("global".into()),
                ..ProviderSection::default()
            },
        ))
        .unwrap();
    }

    #[test]
    fn a_vertex_section_with_an_unreadable_or_foreign_key_file_fails_naming_it() {
        let args = ServeArgs::try_parse_from(["gateway"]).unwrap();
        let dir = std::env::temp_dir().join(format!("metis-google-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("user.json");
        std::fs::write(&file, r#"{"type":"authorized_user"}"#).unwrap();
        let section = ProviderSection {
            kind: Some("vertex".into()),
            credentials_file: Some(file.display().to_string()),
            project: Some("p".into()),
            ..ProviderSection::default()
        };
        let err = google_provider(&args, "v", Kind::Vertex, &section)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("authorized_user"), "{err}");
        let section = ProviderSection {
            credentials_file: Some(dir.join("missing.json").display().to_string()),
            ..section
        };
        let err = google_provider(&args, "v", Kind::Vertex, &section)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot read the credentials file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
