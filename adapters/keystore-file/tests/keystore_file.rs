//! Behaviour of `FileKeyStore` beyond the `KeyStore` clauses of the storage contract suite
//! (`storage_contract::file_keystore`): format compatibility, validation messages for a
//! hand-edited file, atomic 0600 writes, read-only directories and symlinks.
#![expect(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use metis_domain::keys::{KeyRecord, KeyStatus, hash_token};
use metis_keystore_file::FileKeyStore;
use metis_ports::keys::{KeyStore, KeyStoreError};
use serde_json::{Map, Value, json};

fn record(n: u32) -> KeyRecord {
    KeyRecord {
        key_id: format!("gk_01TESTKEY{n:016}"),
        secret_hash: hash_token(&format!("gw_token_{n}")),
        name: Some(format!("key-{n}")),
        workspace_path: "/srv/work".into(),
        created_at: Some("2026-05-15T14:22:10.123456+00:00".into()),
        allowed_models: None,
        daily_cap_usd: Some("1.50".into()),
        monthly_cap_usd: None,
        rpm: None,
        user_id: Some("alice".into()),
        team_id: None,
        customer_tier: None,
        status: KeyStatus::Active,
        revoked_at: None,
        grace_period_until: None,
        expires_at: None,
        spend_account: None,
        customer_id: None,
        org_id: None,
        weekly_cap_usd: None,
        tpm: None,
        alert_at: None,
        extra: Map::new(),
    }
}

fn keys_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("gateway/keys.json")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The `Corrupt` message for a keystore file containing `text`.
async fn corrupt_message(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = keys_path(&dir);
    write(&path, text);
    match FileKeyStore::new(&path).load().await {
        Err(KeyStoreError::Corrupt { location, message }) => {
            assert_eq!(location, path.display().to_string());
            message
        }
        other => panic!("expected Corrupt for {text}, got {other:?}"),
    }
}

fn entry(extra: &Value) -> String {
    let mut base = json!({
        "key_id": "gk_A",
        "secret_hash": hash_token("gw_a"),
        "workspace_path": "/w",
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    json!({ "keys": [base] }).to_string()
}

#[tokio::test]
async fn an_empty_keys_array_loads_as_no_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = keys_path(&dir);
    write(&path, r#"{"keys": []}"#);
    assert!(FileKeyStore::new(&path).load().await.unwrap().is_empty());
}

#[tokio::test]
async fn corrupt_files_are_refused_with_a_message_naming_the_problem() {
    let cases: Vec<(String, &[&str])> = vec![
        ("{\"keys\": [".into(), &["not valid JSON", "line 1"]),
        (String::new(), &["not valid JSON"]),
        ("[1, 2]".into(), &["root must be a JSON object", "an array"]),
        (
            r#"{"keys": {}}"#.into(),
            &["\"keys\" must be an array", "an object"],
        ),
        (r#"{"other": 1}"#.into(), &["missing the \"keys\" array"]),
        (
            r#"{"keys": [7]}"#.into(),
            &["keys[0] must be an object", "a number"],
        ),
        (
            json!({"keys": [{"key_id": "gk_A", "secret_hash": hash_token("x")}]}).to_string(),
            &[
                "keys[0] (key_id 'gk_A')",
                "missing required field 'workspace_path'",
            ],
        ),
        (
            entry(&json!({"rpm": "sixty"})),
            &["key_id 'gk_A'", "'rpm'", "non-negative integer"],
        ),
        (entry(&json!({"rpm": -1})), &["'rpm'", "-1"]),
        (
            entry(&json!({"allowed_models": ["a", 3]})),
            &["'allowed_models'", "item 1"],
        ),
        (
            entry(&json!({"daily_cap_usd": true})),
            &["'daily_cap_usd'", "a boolean"],
        ),
        (
            entry(&json!({"daily_cap_usd": "0"})),
            &["gk_A", "daily_cap_usd", "> 0"],
        ),
        (
            entry(&json!({"status": "paused"})),
            &["'status'", "\"paused\""],
        ),
        (
            entry(&json!({"status": "revoked"})),
            &["gk_A", "revoked_at"],
        ),
        (
            entry(&json!({"secret_hash": "abc"})),
            &["gk_A", "secret_hash", "64 hex"],
        ),
        (
            entry(&json!({"user_id": "Alice"})),
            &["gk_A", "user_id", "^[a-z0-9_-]+$"],
        ),
        (
            entry(&json!({"grace_period_until": "2026-01-01T00:00:00"})),
            &["gk_A", "grace_period_until", "timezone"],
        ),
        (entry(&json!({"name": 5})), &["'name'", "must be a string"]),
    ];
    for (text, needles) in cases {
        let message = corrupt_message(&text).await;
        for needle in needles {
            assert!(
                message.contains(needle),
                "message for {text:?} lacks {needle:?}: {message}"
            );
        }
    }
}

#[tokio::test]
async fn duplicate_ids_and_hashes_in_the_file_are_refused() {
    let a = json!({"key_id": "gk_A", "secret_hash": hash_token("a"), "workspace_path": "/w"});
    let b_same_id =
        json!({"key_id": "gk_A", "secret_hash": hash_token("b"), "workspace_path": "/w"});
    let message = corrupt_message(&json!({"keys": [a, b_same_id]}).to_string()).await;
    assert!(message.contains("duplicate key_id 'gk_A'"), "{message}");
    assert!(message.contains("keys[0] and keys[1]"), "{message}");

    // Hashes compare case-insensitively (the original lowercased them on load).
    let upper = hash_token("a").to_ascii_uppercase();
    let c_same_hash = json!({"key_id": "gk_C", "secret_hash": upper, "workspace_path": "/w"});
    let message = corrupt_message(&json!({"keys": [a, c_same_hash]}).to_string()).await;
    assert!(message.contains("same secret_hash"), "{message}");
    assert!(
        message.contains("gk_C") && message.contains("gk_A"),
        "{message}"
    );
}

#[tokio::test]
async fn uppercase_hashes_load_lowercased() {
    let dir = tempfile::tempdir().unwrap();
    let path = keys_path(&dir);
    let upper = hash_token("gw_x").to_ascii_uppercase();
    write(
        &path,
        &json!({"keys": [{"key_id": "gk_X", "secret_hash": upper, "workspace_path": "/w"}]})
            .to_string(),
    );
    let keys = FileKeyStore::new(&path).load().await.unwrap();
    assert_eq!(keys[0].secret_hash, hash_token("gw_x"));
}

#[tokio::test]
async fn the_file_is_0600_in_a_0700_directory_and_temp_files_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/keys.json");
    let store = FileKeyStore::new(&path);
    store.insert(record(1)).await.unwrap();
    store.insert(record(2)).await.unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&store.lock_file()), 0o600);

    let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["keys.json", "keys.json.lock"]);

    // An existing, looser file is tightened by the rewrite.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    store.insert(record(3)).await.unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn the_layout_matches_the_original_tool() {
    let dir = tempfile::tempdir().unwrap();
    let path = keys_path(&dir);
    let store = FileKeyStore::new(&path);
    store.insert(record(1)).await.unwrap();
    assert_eq!(store.describe(), path.display().to_string());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("{\n  \"keys\": [\n    {\n      \"created_at\": "),
        "{text}"
    );
    assert!(text.ends_with("}\n") && !text.ends_with("\n\n"), "{text:?}");
    // Keys of each record are sorted, like `json.dump(sort_keys=True)`.
    let fields: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("      \""))
        .map(|l| l.trim().split('"').nth(1).unwrap())
        .collect();
    let mut sorted = fields.clone();
    sorted.sort_unstable();
    assert_eq!(fields, sorted);
    assert!(text.contains("\"daily_cap_usd\": \"1.50\""), "{text}");
}

#[tokio::test]
async fn unknown_fields_survive_an_insert() {
    let dir = tempfile::tempdir().unwrap();
    let path = keys_path(&dir);
    let secret = hash_token("gw_old");
    let original_text = format!(
        r#"{{"version_note": "managed by hand",
  "zz_meta": {{"owner": "ops", "limits": [1, 2.50]}},
  "keys": [{{"key_id": "gk_OLD", "secret_hash": "{secret}", "workspace_path": "/srv/old",
    "daily_cap_usd": 2, "x_custom": {{"nested": [true, null, 1e3]}}, "future_field": "kept"}}]}}"#
    );
    write(&path, &original_text);
    let original: Value = serde_json::from_str(&original_text).unwrap();

    let store = FileKeyStore::new(&path);
    let mut rec = record(1);
    rec.extra.insert("x_new".into(), json!({"k": "v"}));
    store.insert(rec).await.unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    let back: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["version_note"], "managed by hand");
    assert_eq!(back["zz_meta"], original["zz_meta"]);
    assert_eq!(
        back["keys"][0], original["keys"][0],
        "existing entry changed"
    );
    assert_eq!(back["keys"][1]["x_new"], json!({"k": "v"}));
    // Numbers are not round-tripped through f64 (serde_json keeps their decimal text).
    assert!(text.contains("2.50"), "{text}");

    let keys = store.load().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].extra["future_field"], "kept");
}

#[tokio::test]
async fn a_corrupt_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = keys_path(&dir);
    write(&path, "{\"keys\": [ oops");
    let err = FileKeyStore::new(&path)
        .insert(record(1))
        .await
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"keys\": [ oops");
}

#[tokio::test]
async fn a_read_only_directory_answers_writes_with_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores directory permissions (this machine runs tests as root), so the kernel
    // would let the write through; then there is nothing to observe here. EROFS itself (a
    // read-only mount, as with a Kubernetes Secret) needs a mount we cannot make in a test;
    // its mapping to `ReadOnly` is unit-tested in `fsio`.
    if std::fs::write(ro.join("probe"), b"x").is_ok() {
        return;
    }
    let err = FileKeyStore::new(ro.join("keys.json"))
        .insert(record(1))
        .await
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::ReadOnly { .. }), "{err:?}");
}

#[tokio::test]
async fn a_parent_that_is_a_file_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("plainfile");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let path = not_a_dir.join("keys.json");
    let err = FileKeyStore::new(&path)
        .insert(record(1))
        .await
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::Io { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("cannot create directory"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(matches!(
        FileKeyStore::new(&path).load().await,
        Err(KeyStoreError::Io { .. } | KeyStoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_symlinked_keystore_is_written_through_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real/keys.json");
    write(&real, r#"{"keys": []}"#);
    let link = dir.path().join("keys.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let store = FileKeyStore::new(&link);
    store.insert(record(1)).await.unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(FileKeyStore::new(&real).load().await.unwrap().len(), 1);
    assert_eq!(store.lock_file(), dir.path().join("real/keys.json.lock"));
}
