//! `FileKeyStore::update` beyond the `KeyStore` clauses of the storage contract suite
//! (`storage_contract::file_keystore`): what an edit does to the file (unknown fields, entry
//! order, mode 0600) and that a corrupt or read-only file is never rewritten.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use metis_domain::keys::{KeyRecord, KeyStatus, hash_token};
use metis_keystore_file::FileKeyStore;
use metis_ports::keys::{KeyStore, KeyStoreError};
use serde_json::{Map, Value, json};

fn record(n: u32) -> KeyRecord {
    KeyRecord {
        key_id: format!("gk_01UPDATEKEY{n:014}"),
        secret_hash: hash_token(&format!("gw_update_{n}")),
        name: Some(format!("key-{n}")),
        workspace_path: "/srv/work".into(),
        created_at: Some("2026-05-15T14:22:10+00:00".into()),
        allowed_models: None,
        daily_cap_usd: None,
        monthly_cap_usd: None,
        rpm: None,
        user_id: None,
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

fn json_of(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A hand-written keystore with unknown fields at the root and on both entries.
fn seed(path: &Path) -> String {
    let a = hash_token("gw_a");
    let b = hash_token("gw_b");
    let text = format!(
        r#"{{"zz_meta": {{"owner": "ops"}},
  "keys": [
    {{"key_id": "gk_A", "secret_hash": "{a}", "workspace_path": "/a", "daily_cap_usd": "2.50",
      "x_custom": {{"nested": [true, null, 1e3]}}}},
    {{"key_id": "gk_B", "secret_hash": "{b}", "workspace_path": "/b", "x_note": "keep me",
      "x_num": 1.10}}
  ]}}"#
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &text).unwrap();
    text
}

fn revoke(id: &'static str) -> metis_ports::keys::KeyEdit {
    Box::new(move |keys: &mut Vec<KeyRecord>| {
        let k = keys
            .iter_mut()
            .find(|k| k.key_id == id)
            .ok_or_else(|| format!("key '{id}' not found in keystore"))?;
        k.status = KeyStatus::Revoked;
        k.revoked_at = Some("2026-05-16T00:00:00+00:00".into());
        Ok(())
    })
}

#[tokio::test]
async fn the_edit_is_applied_and_unknown_fields_survive_on_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = keys_path(&dir);
    seed(&path);
    let before = json_of(&path);
    let store = FileKeyStore::new(&path);

    let keys = store.update(revoke("gk_A")).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].status, KeyStatus::Revoked);

    let after = json_of(&path);
    assert_eq!(after["zz_meta"], before["zz_meta"]);
    // Untouched entry: exactly as it was (including number text such as 1.10).
    assert_eq!(after["keys"][1], before["keys"][1]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("1.10"), "{text}");
    // Touched entry: the edit plus its unknown fields.
    let a = &after["keys"][0];
    assert_eq!(a["status"], "revoked");
    assert_eq!(a["revoked_at"], "2026-05-16T00:00:00+00:00");
    assert_eq!(a["x_custom"], before["keys"][0]["x_custom"]);
    assert_eq!(a["daily_cap_usd"], "2.50");

    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, keys);
    assert_eq!(loaded[1].extra["x_note"], "keep me");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn appended_and_removed_entries_are_written_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = keys_path(&dir);
    seed(&path);
    let store = FileKeyStore::new(&path);
    let mut extra = record(7);
    extra.extra.insert("x_new".into(), json!({"k": "v"}));
    let added = extra.clone();
    store
        .update(Box::new(move |keys: &mut Vec<KeyRecord>| {
            keys.remove(0);
            keys.push(added);
            Ok(())
        }))
        .await
        .unwrap();
    let after = json_of(&path);
    let ids: Vec<&str> = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["gk_B", extra.key_id.as_str()]);
    assert_eq!(after["keys"][1]["x_new"], json!({"k": "v"}));
}

#[tokio::test]
async fn a_corrupt_or_read_only_file_is_never_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = keys_path(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "{\"keys\": [ oops").unwrap();
    let err = FileKeyStore::new(&path)
        .update(revoke("gk_A"))
        .await
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"keys\": [ oops");

    let original = seed(&path);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let err = FileKeyStore::new(&path)
        .update(revoke("gk_A"))
        .await
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::ReadOnly { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
}

/// A policy write keeps every key entry and unknown root field as it was, stores the
/// top-level `budgets` and `model_groups` arrays in the file's layout (sorted keys, 2-space
/// indent, trailing newline, mode 0600), and removes an array again when it becomes empty; a
/// hand-edited invalid policy makes the whole file corrupt, naming the problem.
#[tokio::test]
async fn policies_are_top_level_arrays_beside_untouched_keys() {
    use metis_domain::model_groups::ModelGroup;
    let dir = tempfile::tempdir().unwrap();
    let path = keys_path(&dir);
    seed(&path);
    let before = json_of(&path);
    let store = FileKeyStore::new(&path);
    store
        .update_policies(Box::new(|p| {
            p.model_groups.push(ModelGroup {
                name: "cheap".into(),
                models: vec!["haiku".into()],
            });
            Ok(())
        }))
        .await
        .unwrap();
    let after = json_of(&path);
    assert_eq!(after["keys"], before["keys"]);
    assert_eq!(after["zz_meta"], before["zz_meta"]);
    assert_eq!(
        after["model_groups"],
        json!([{"name": "cheap", "models": ["haiku"]}])
    );
    assert!(after.get("budgets").is_none(), "{after}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.ends_with("}\n") && text.contains("\n  \"keys\": ["),
        "{text}"
    );
    let root_keys: Vec<&String> = after.as_object().unwrap().keys().collect();
    let order: Vec<usize> = ["keys", "model_groups", "zz_meta"]
        .iter()
        .map(|k| text.find(&format!("\n  \"{k}\"")).unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "sorted: {root_keys:?}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    store
        .update_policies(Box::new(|p| {
            p.model_groups.clear();
            Ok(())
        }))
        .await
        .unwrap();
    assert!(json_of(&path).get("model_groups").is_none());

    let mut doc = json_of(&path);
    doc["budgets"] = json!([{"scope": "team", "id": "x", "monthly_usd": "-1"}]);
    std::fs::write(&path, doc.to_string()).unwrap();
    let r = store.load().await;
    assert!(
        matches!(&r, Err(KeyStoreError::Corrupt { message, .. }) if message.contains("team 'x'")),
        "{r:?}"
    );
    let r = store.load_policies().await;
    assert!(matches!(r, Err(KeyStoreError::Corrupt { .. })), "{r:?}");
}
