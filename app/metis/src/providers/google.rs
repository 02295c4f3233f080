//! Google sections: the Gemini API (API key) and Vertex AI (Gemini and Claude, service-account
//! key file), registered from a section or the environment alone.

use super::*;

/// The first non-empty value of these environment variables.
fn env_first(vars: &[&str]) -> Option<String> {
    vars.iter()
        .filter_map(|v| std::env::var(v).ok())
        .find_map(|v| non_empty(Some(&v)))
}

/// A Google provider registered from the environment alone (no section of that name):
/// `gemini` when `GEMINI_API_KEY` or `GOOGLE_API_KEY` is set; `vertex` and
/// `vertex-anthropic` when `GOOGLE_APPLICATION_CREDENTIALS` and `GOOGLE_CLOUD_PROJECT` are.
pub(super) fn google_from_env(
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
pub(super) fn google_provider(
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
