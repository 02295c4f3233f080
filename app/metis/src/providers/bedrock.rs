//! Amazon Bedrock sections: region and AWS credentials (static keys or a web identity), from
//! the section first, then the variables the AWS SDKs read.

use super::*;

/// Whether the environment alone configures Bedrock: a region and either static keys or a
/// web identity (role ARN and token file).
pub(super) fn aws_env_configured(env: &dyn Fn(&str) -> Option<String>) -> bool {
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
pub(super) fn bedrock_config(
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
pub(super) fn bedrock_provider(
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
mod tests {
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
