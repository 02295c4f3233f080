use super::azure::azure_auth;
use super::*;

fn sections(text: &str) -> BTreeMap<String, ProviderSection> {
    let mut file: BTreeMap<String, BTreeMap<String, ProviderSection>> =
        toml::from_str(text).expect("valid TOML");
    file.remove("providers").unwrap_or_default()
}

fn error_of(text: &str) -> String {
    match validate(&sections(text)) {
        Ok(()) => String::new(),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn azure_and_preset_kinds_are_known() {
    for (name, kind) in [
        ("azure", Kind::Azure),
        ("mistral", Kind::Mistral),
        ("groq", Kind::Groq),
        ("deepseek", Kind::DeepSeek),
        ("together", Kind::Together),
        ("fireworks", Kind::Fireworks),
    ] {
        assert_eq!(Kind::parse(name), Some(kind));
    }
    assert_eq!(
        Kind::Groq.preset().map(|p| p.base_url),
        Some("https://api.groq.com/openai/v1")
    );
    assert!(Kind::Azure.preset().is_none());
    assert!(Kind::names().contains("fireworks"));
}

#[test]
fn a_valid_azure_section_passes() {
    let ok = [
        "[providers.azure]\nbase_url = \"https://r.openai.azure.com\"\napi_key_env = \"K\"\napi_version = \"2025-01-01-preview\"\n",
        "[providers.az]\nkind = \"azure\"\nentra_token_env = \"T\"\n",
        "[providers.az]\nkind = \"azure\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret_env = \"S\"\nauthority_url = \"https://login.microsoftonline.us\"\n",
        "[providers.groq]\nbase_url = \"http://127.0.0.1:1/v1\"\n",
    ];
    for text in ok {
        assert_eq!(error_of(text), "", "{text}");
    }
}

#[test]
fn an_azure_field_on_another_kind_is_refused_by_name() {
    let e = error_of("[providers.groq]\napi_version = \"2024-10-21\"\n");
    assert!(
        e.contains("[providers.groq]: api_version applies to kind 'azure' only"),
        "{e}"
    );
    let e = error_of("[providers.openai]\ntenant_id = \"t\"\n");
    assert!(e.contains("tenant_id applies to kind 'azure'"), "{e}");
}

#[test]
fn azure_auth_must_be_one_complete_way() {
    let e = error_of("[providers.azure]\napi_key = \"k\"\nentra_token_env = \"T\"\n");
    assert!(
        e.contains(
            "choose one way to authenticate to Azure, not api_key/api_key_env and entra_token_env"
        ),
        "{e}"
    );
    let e = error_of("[providers.azure]\ntenant_id = \"t\"\nclient_id = \"c\"\n");
    assert!(e.contains("needs client_secret_env"), "{e}");
    let e = error_of("[providers.azure]\nauthority_url = \"https://x\"\n");
    assert!(
        e.contains("authority_url applies to the client-credentials flow"),
        "{e}"
    );
    let e = error_of("[providers.azure]\nresponses_api = true\n");
    assert!(e.contains("responses_api does not apply"), "{e}");
}

#[test]
fn a_missing_azure_credential_variable_is_named() {
    let s = sections(
        "[providers.az]\nkind = \"azure\"\nentra_token_env = \"METIS_TEST_SURELY_UNSET_TOKEN_VAR\"\n",
    );
    let e = azure_auth("az", &s["az"]).map(|_| ()).unwrap_err();
    assert!(
        e.to_string()
            .contains("entra_token_env names METIS_TEST_SURELY_UNSET_TOKEN_VAR, which is not set"),
        "{e}"
    );
    let s = sections("[providers.az]\nkind = \"azure\"\napi_key = \"k\"\n");
    assert!(matches!(azure_auth("az", &s["az"]), Ok(AzureAuth::ApiKey(k)) if k == "k"));
}

#[test]
fn debug_redacts_the_key_and_shows_azure_fields() {
    let s = sections(
        "[providers.az]\nkind = \"azure\"\napi_key = \"sk-very-secret\"\napi_version = \"v1\"\n",
    );
    let d = format!("{:?}", s["az"]);
    assert!(!d.contains("very-secret"), "{d}");
    assert!(d.contains("api_version: Some(\"v1\")"), "{d}");
}

use clap::Parser as _;

fn one_section(name: &str, s: ProviderSection) -> BTreeMap<String, ProviderSection> {
    BTreeMap::from([(name.to_owned(), s)])
}

#[test]
fn google_fields_are_refused_on_the_wrong_kind_naming_them() {
    let err = validate(&one_section(
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
    let err = validate(&one_section(
        "openai",
        ProviderSection {
            location: Some("us-east5".into()),
            ..ProviderSection::default()
        },
    ))
    .unwrap_err();
    assert!(err.to_string().contains("location"), "{err}");
    let err = validate(&one_section(
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
    validate(&one_section(
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
