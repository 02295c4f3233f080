//! Azure OpenAI sections: one way to authenticate (api-key, a fixed Entra ID token or the
//! client-credentials flow), checked and built.

use super::*;

/// Azure OpenAI's environment variables (the names the official SDKs read).
pub(super) const AZURE_ENDPOINT_ENV: &str = "AZURE_OPENAI_ENDPOINT";
pub(super) const AZURE_KEY_ENV: &str = "AZURE_OPENAI_API_KEY";
pub(super) const AZURE_TOKEN_ENV: &str = "AZURE_OPENAI_AD_TOKEN";

/// An Azure section names one way to authenticate, completely.
pub(super) fn validate_azure(name: &str, s: &ProviderSection) -> anyhow::Result<()> {
    let flow = [&s.tenant_id, &s.client_id, &s.client_secret_env];
    let mut ways = Vec::new();
    if s.api_key.is_some() || s.api_key_env.is_some() {
        ways.push("api_key/api_key_env");
    }
    if s.entra_token_env.is_some() {
        ways.push("entra_token_env");
    }
    if flow.iter().any(|f| f.is_some()) {
        ways.push("tenant_id/client_id/client_secret_env");
        for (field, value) in ["tenant_id", "client_id", "client_secret_env"]
            .into_iter()
            .zip(flow)
        {
            if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                bail!(
                    "[providers.{name}]: the Entra ID client-credentials flow needs {field} \
                     (with tenant_id, client_id and client_secret_env)"
                );
            }
        }
    } else if s.authority_url.is_some() {
        bail!(
            "[providers.{name}]: authority_url applies to the client-credentials flow \
             (tenant_id, client_id, client_secret_env)"
        );
    }
    if ways.len() > 1 {
        bail!(
            "[providers.{name}]: choose one way to authenticate to Azure, not {}",
            ways.join(" and ")
        );
    }
    if s.api_version
        .as_deref()
        .is_some_and(|v| v.trim().is_empty())
    {
        bail!("[providers.{name}]: api_version must not be empty");
    }
    Ok(())
}

/// How a section authenticates to Azure: the one way it names, else the environment.
pub(super) fn azure_auth(name: &str, s: &ProviderSection) -> anyhow::Result<AzureAuth> {
    let from_env = |field: &str, var: &str| {
        env_value(var).with_context(|| {
            format!("[providers.{name}]: {field} names {var}, which is not set or empty")
        })
    };
    if let (Some(tenant_id), Some(client_id), Some(secret_env)) =
        (&s.tenant_id, &s.client_id, &s.client_secret_env)
    {
        return Ok(AzureAuth::ClientCredentials(ClientCredentials {
            authority_url: s
                .authority_url
                .clone()
                .unwrap_or_else(|| ENTRA_DEFAULT_AUTHORITY.to_owned()),
            tenant_id: tenant_id.trim().to_owned(),
            client_id: client_id.trim().to_owned(),
            client_secret: from_env("client_secret_env", secret_env)?,
            scope: AZURE_COGNITIVE_SCOPE.to_owned(),
        }));
    }
    if let Some(var) = &s.entra_token_env {
        return Ok(AzureAuth::EntraToken(from_env("entra_token_env", var)?));
    }
    if let Some(var) = &s.api_key_env
        && s.api_key.is_none()
    {
        return Ok(AzureAuth::ApiKey(from_env("api_key_env", var)?));
    }
    if let Some(key) = s.credential() {
        return Ok(AzureAuth::ApiKey(key));
    }
    if let Some(key) = env_value(AZURE_KEY_ENV) {
        return Ok(AzureAuth::ApiKey(key));
    }
    if let Some(token) = env_value(AZURE_TOKEN_ENV) {
        return Ok(AzureAuth::EntraToken(token));
    }
    bail!(
        "[providers.{name}]: no Azure credential: set api_key, api_key_env, entra_token_env or \
         tenant_id + client_id + client_secret_env, or the environment variable \
         {AZURE_KEY_ENV} or {AZURE_TOKEN_ENV}"
    )
}

/// An Azure OpenAI resource named `name`.
pub(super) fn azure_provider(
    args: &ServeArgs,
    name: &str,
    section: &ProviderSection,
) -> anyhow::Result<Arc<dyn Provider>> {
    let endpoint = non_empty(section.base_url.as_ref())
        .or_else(|| env_value(AZURE_ENDPOINT_ENV))
        .with_context(|| {
            format!(
                "[providers.{name}]: no endpoint: set base_url (https://RESOURCE.openai.azure.com) \
                 or {AZURE_ENDPOINT_ENV}"
            )
        })?;
    let mut config = AzureConfig::new(endpoint, azure_auth(name, section)?);
    config.name = name.to_owned();
    config.api_version = non_empty(section.api_version.as_ref())
        .unwrap_or_else(|| AZURE_DEFAULT_API_VERSION.to_owned());
    config.timeouts.response_head = args.upstream_timeout;
    config.retry.max_retries = args.upstream_retries;
    let provider = AzureProvider::new(config)
        .with_context(|| format!("cannot configure provider '{name}'"))?;
    Ok(Arc::new(provider))
}
