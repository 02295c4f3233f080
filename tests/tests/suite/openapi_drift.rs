//! The committed `openapi/openapi.json` must equal what the binary generates. On mismatch
//! the test fails naming the regenerate command (or rewrites the file with
//! `UPDATE_OPENAPI=1`).

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("openapi")
        .join("openapi.json")
}

#[test]
fn committed_openapi_document_matches_the_code() {
    let generated = format!("{}\n", metis_http::openapi_json());
    let path = committed_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write openapi/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .replace("\r\n", "\n");
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date with the code; regenerate it with \
         `cargo run -p metis -- openapi --out openapi/openapi.json` (or UPDATE_OPENAPI=1 cargo test -p metis-tests --test openapi_drift) and commit it"
    );
}

#[test]
fn the_document_describes_every_endpoint_with_an_operation_id() {
    let doc: serde_json::Value = serde_json::from_str(&metis_http::openapi_json()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/v1/keys",
        "/admin/v1/keys/{key_id}",
        "/admin/v1/keys/{key_id}/revoke",
        "/admin/v1/keys/{key_id}/rotate",
        "/admin/v1/usage",
        "/admin/v1/audit",
        "/admin/v1/overview",
        "/admin/v1/usage/series",
        "/admin/v1/audit/verify",
        "/admin/v1/audit/export",
        "/admin/v1/sessions",
        "/admin/v1/sessions/{session_id}",
    ] {
        let item = paths
            .get(p)
            .unwrap_or_else(|| panic!("{p} missing from the document"));
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op.get("operationId").is_some(),
                "{method} {p} has no operationId"
            );
        }
    }
}
