//! Contract of the `KeyStore` port: existence, insertion order, duplicates, read-modify-write
//! updates (validated, atomic, no lost update under concurrency) and the change token.
#![expect(
    clippy::expect_used,
    reason = "contract tests fail loudly on a broken store"
)]

use std::collections::BTreeSet;

use metis_domain::keys::{KeyRecord, KeyStatus};
use metis_ports::keys::{KeyEdit, KeyStoreError};

use super::KeyBackend;

/// A valid active key record `gk_<n>` whose hash is derived from `n`.
#[must_use]
pub fn key(n: u32) -> KeyRecord {
    KeyRecord {
        key_id: format!("gk_{n:04}"),
        secret_hash: format!("{n:064x}"),
        name: Some(format!("key {n}")),
        workspace_path: "/work/space".to_owned(),
        created_at: Some("2026-01-01T00:00:00Z".to_owned()),
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
        extra: serde_json::Map::new(),
    }
}

fn ids(keys: &[KeyRecord]) -> Vec<String> {
    keys.iter().map(|k| k.key_id.clone()).collect()
}

/// `load` of a store that does not exist yet is `NotFound`, and `version` is `None`.
pub async fn a_missing_key_store_is_not_found(b: &dyn KeyBackend) {
    let ks = b.keys();
    let r = ks.load().await;
    assert!(matches!(r, Err(KeyStoreError::NotFound { .. })), "{r:?}");
    assert_eq!(ks.version().await, None);
}

/// `insert` creates the store when missing; `load` returns every key in insertion order with
/// every field as inserted.
pub async fn insert_creates_the_store_and_load_keeps_insertion_order(b: &dyn KeyBackend) {
    let ks = b.keys();
    let mut third = key(1);
    third.user_id = Some("alice".into());
    third.daily_cap_usd = Some("2.5".into());
    third
        .extra
        .insert("future_field".into(), serde_json::json!({"kept": true}));
    for k in [key(30), key(2), third.clone()] {
        ks.insert(k).await.expect("insert");
    }
    let loaded = b.keys().load().await.expect("load");
    assert_eq!(ids(&loaded), vec!["gk_0030", "gk_0002", "gk_0001"]);
    assert_eq!(loaded[2], third);
}

/// `insert` of an existing id or an existing token hash is `Duplicate` (naming the existing
/// key) and writes nothing.
pub async fn insert_refuses_a_duplicate_id_or_hash(b: &dyn KeyBackend) {
    let ks = b.keys();
    ks.insert(key(1)).await.expect("insert");
    let v = ks.version().await;
    let mut same_id = key(2);
    same_id.key_id = key(1).key_id;
    let r = ks.insert(same_id).await;
    assert!(
        matches!(&r, Err(KeyStoreError::Duplicate { key_id }) if key_id == "gk_0001"),
        "{r:?}"
    );
    let mut same_hash = key(3);
    same_hash.secret_hash = key(1).secret_hash.to_ascii_uppercase();
    let r = ks.insert(same_hash).await;
    assert!(
        matches!(&r, Err(KeyStoreError::Duplicate { key_id }) if key_id == "gk_0001"),
        "{r:?}"
    );
    assert_eq!(ids(&ks.load().await.expect("load")), vec!["gk_0001"]);
    assert_eq!(ks.version().await, v);
}

/// `insert` MUST NOT lose a concurrent writer's update: keys inserted in parallel through
/// separate handles are all stored.
pub async fn parallel_inserts_lose_no_key(b: &dyn KeyBackend) {
    b.keys().insert(key(0)).await.expect("first insert");
    let mut tasks = Vec::new();
    for n in 1..=16u32 {
        let ks = b.keys();
        tasks.push(tokio::spawn(async move { ks.insert(key(n)).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("insert");
    }
    let loaded: BTreeSet<String> = ids(&b.keys().load().await.expect("load"))
        .into_iter()
        .collect();
    let want: BTreeSet<String> = (0..=16).map(|n| key(n).key_id).collect();
    assert_eq!(loaded, want);
}

/// `update` applies the edit to the current set, persists it and returns the new set.
pub async fn update_applies_the_edit_and_returns_the_new_set(b: &dyn KeyBackend) {
    let ks = b.keys();
    for n in 1..=3 {
        ks.insert(key(n)).await.expect("insert");
    }
    let out = ks
        .update(Box::new(|keys: &mut Vec<KeyRecord>| {
            keys[1].status = KeyStatus::Revoked;
            keys[1].revoked_at = Some("2026-02-01T00:00:00Z".into());
            keys.remove(0);
            keys.push(key(9));
            Ok(())
        }))
        .await
        .expect("update");
    assert_eq!(ids(&out), vec!["gk_0002", "gk_0003", "gk_0009"]);
    let loaded = b.keys().load().await.expect("load");
    assert_eq!(loaded, out);
    assert_eq!(loaded[0].status, KeyStatus::Revoked);
}

/// An edit that refuses (`Err(message)`) aborts the update with `Rejected` carrying the
/// message; nothing is written and the change token stays.
pub async fn a_refused_edit_is_rejected_and_writes_nothing(b: &dyn KeyBackend) {
    let ks = b.keys();
    ks.insert(key(1)).await.expect("insert");
    let v = ks.version().await;
    let r = ks
        .update(Box::new(|keys: &mut Vec<KeyRecord>| {
            keys.clear();
            Err("rotating a revoked key".to_owned())
        }))
        .await;
    assert!(
        matches!(&r, Err(KeyStoreError::Rejected { message }) if message == "rotating a revoked key"),
        "{r:?}"
    );
    assert_eq!(ids(&ks.load().await.expect("load")), vec!["gk_0001"]);
    assert_eq!(ks.version().await, v);
}

/// `update` MUST validate every resulting record and the absence of duplicate ids or hashes
/// before writing: an invalid result is `Corrupt` with a message naming the problem, and
/// nothing is written (the change token stays).
pub async fn an_invalid_edit_result_is_corrupt_and_writes_nothing(b: &dyn KeyBackend) {
    let ks = b.keys();
    ks.insert(key(1)).await.expect("insert");
    ks.insert(key(2)).await.expect("insert");
    let before = ks.load().await.expect("load");
    let v = ks.version().await;
    let cases: Vec<(&str, KeyEdit)> = vec![
        (
            "duplicate key_id",
            Box::new(|keys: &mut Vec<KeyRecord>| {
                keys[1].key_id = keys[0].key_id.clone();
                Ok(())
            }),
        ),
        (
            "secret_hash",
            Box::new(|keys: &mut Vec<KeyRecord>| {
                keys[1].secret_hash = keys[0].secret_hash.to_ascii_uppercase();
                Ok(())
            }),
        ),
        (
            "revoked_at",
            Box::new(|keys: &mut Vec<KeyRecord>| {
                keys[0].status = KeyStatus::Revoked; // without revoked_at
                Ok(())
            }),
        ),
        (
            "daily_cap_usd",
            Box::new(|keys: &mut Vec<KeyRecord>| {
                keys[0].daily_cap_usd = Some("NaN".into());
                Ok(())
            }),
        ),
    ];
    for (needle, edit) in cases {
        let r = ks.update(edit).await;
        assert!(
            matches!(&r, Err(KeyStoreError::Corrupt { message, .. }) if message.contains(needle)),
            "{needle}: {r:?}"
        );
    }
    assert_eq!(ks.load().await.expect("load"), before);
    assert_eq!(ks.version().await, v);
}

/// An edit that changes nothing succeeds with the current set and writes nothing: the change
/// token stays, so a gateway does not reload for it.
pub async fn a_no_op_edit_writes_nothing(b: &dyn KeyBackend) {
    let ks = b.keys();
    ks.insert(key(1)).await.expect("insert");
    ks.insert(key(2)).await.expect("insert");
    let before = ks.load().await.expect("load");
    let v = ks.version().await;
    let out = ks.update(Box::new(|_| Ok(()))).await.expect("update");
    assert_eq!(out, before);
    assert_eq!(ks.version().await, v);
}

/// `insert` of a record that fails validation is `Corrupt` naming the field; nothing is
/// written (a missing store is not created, an existing one keeps its change token).
pub async fn insert_refuses_an_invalid_record_and_writes_nothing(b: &dyn KeyBackend) {
    let ks = b.keys();
    let mut bad = key(2);
    bad.user_id = Some("Not A Slug".into());
    let r = ks.insert(bad.clone()).await;
    assert!(
        matches!(&r, Err(KeyStoreError::Corrupt { message, .. }) if message.contains("user_id")),
        "{r:?}"
    );
    assert!(matches!(
        ks.load().await,
        Err(KeyStoreError::NotFound { .. })
    ));
    assert_eq!(ks.version().await, None);
    ks.insert(key(1)).await.expect("insert");
    let v = ks.version().await;
    let r = ks.insert(bad).await;
    assert!(matches!(r, Err(KeyStoreError::Corrupt { .. })), "{r:?}");
    assert_eq!(ids(&ks.load().await.expect("load")), vec!["gk_0001"]);
    assert_eq!(ks.version().await, v);
}

/// `expires_at` is stored and loaded as written, by `insert` and by `update` (set, moved and
/// cleared); a record without it loads with none; an unparseable one is refused naming the
/// field, and nothing is written.
pub async fn expiry_is_stored_updated_and_validated(b: &dyn KeyBackend) {
    let ks = b.keys();
    let mut expiring = key(1);
    expiring.expires_at = Some("2027-01-01T00:00:00Z".into());
    ks.insert(expiring.clone()).await.expect("insert");
    ks.insert(key(2)).await.expect("insert");
    let loaded = b.keys().load().await.expect("load");
    assert_eq!(loaded[0], expiring);
    assert_eq!(
        loaded[0].expires_at.as_deref(),
        Some("2027-01-01T00:00:00Z")
    );
    assert_eq!(loaded[1].expires_at, None);
    let out = ks
        .update(Box::new(|keys: &mut Vec<KeyRecord>| {
            keys[0].expires_at = None;
            keys[1].expires_at = Some("2026-06-01T12:30:00.250000+00:00".into());
            Ok(())
        }))
        .await
        .expect("update");
    let loaded = b.keys().load().await.expect("load");
    assert_eq!(loaded, out);
    assert_eq!(loaded[0].expires_at, None);
    assert_eq!(
        loaded[1].expires_at.as_deref(),
        Some("2026-06-01T12:30:00.250000+00:00")
    );
    let v = ks.version().await;
    let mut bad = key(3);
    bad.expires_at = Some("next tuesday".into());
    let r = ks.insert(bad).await;
    assert!(
        matches!(&r, Err(KeyStoreError::Corrupt { message, .. }) if message.contains("expires_at")),
        "{r:?}"
    );
    assert_eq!(
        ids(&ks.load().await.expect("load")),
        vec!["gk_0001", "gk_0002"]
    );
    assert_eq!(ks.version().await, v);
}

/// `update` of a store that does not exist is `NotFound` (the edit does not create it).
pub async fn update_of_a_missing_store_is_not_found(b: &dyn KeyBackend) {
    let ks = b.keys();
    let r = ks
        .update(Box::new(|keys: &mut Vec<KeyRecord>| {
            keys.push(key(1));
            Ok(())
        }))
        .await;
    assert!(matches!(r, Err(KeyStoreError::NotFound { .. })), "{r:?}");
    assert!(matches!(
        ks.load().await,
        Err(KeyStoreError::NotFound { .. })
    ));
}

/// `update` MUST hold an exclusive lock across read, edit and write: revokes of different
/// keys racing through separate handles all land (no lost update).
pub async fn parallel_revokes_through_update_lose_no_update(b: &dyn KeyBackend) {
    let ks = b.keys();
    for n in 0..12 {
        ks.insert(key(n)).await.expect("insert");
    }
    let mut tasks = Vec::new();
    for n in 0..12u32 {
        let ks = b.keys();
        tasks.push(tokio::spawn(async move {
            ks.update(Box::new(move |keys: &mut Vec<KeyRecord>| {
                let id = key(n).key_id;
                let k = keys
                    .iter_mut()
                    .find(|k| k.key_id == id)
                    .ok_or_else(|| format!("{id} vanished"))?;
                k.status = KeyStatus::Revoked;
                k.revoked_at = Some("2026-03-01T00:00:00Z".into());
                Ok(())
            }))
            .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("update");
    }
    let loaded = b.keys().load().await.expect("load");
    assert_eq!(loaded.len(), 12);
    let active: Vec<&str> = loaded
        .iter()
        .filter(|k| k.status != KeyStatus::Revoked)
        .map(|k| k.key_id.as_str())
        .collect();
    assert!(active.is_empty(), "lost revokes: {active:?}");
}

/// `version` changes whenever the stored set changed (every insert and applied update), not
/// on a read, and another handle on the same store sees the same token.
pub async fn the_version_changes_with_every_write(b: &dyn KeyBackend) {
    let ks = b.keys();
    ks.insert(key(1)).await.expect("insert");
    let v1 = ks.version().await.expect("version after insert");
    ks.load().await.expect("load");
    assert_eq!(
        ks.version().await.as_ref(),
        Some(&v1),
        "a read changed the token"
    );
    ks.insert(key(2)).await.expect("insert");
    let v2 = ks.version().await.expect("version");
    assert_ne!(v1, v2);
    ks.update(Box::new(|keys: &mut Vec<KeyRecord>| {
        keys[0].name = Some("renamed".into());
        Ok(())
    }))
    .await
    .expect("update");
    let v3 = ks.version().await.expect("version");
    assert!(v3 != v2 && v3 != v1);
    assert_eq!(b.keys().version().await, Some(v3));
}

/// `load` of a store holding a record that fails validation is `Corrupt` (naming the problem)
/// and returns nothing: a half-valid key set is never served. `update` refuses it too.
pub async fn a_damaged_key_store_is_corrupt_and_serves_nothing(b: &dyn KeyBackend) {
    let ks = b.keys();
    for n in 1..=3 {
        ks.insert(key(n)).await.expect("insert");
    }
    b.corrupt_first_key().await;
    let r = b.keys().load().await;
    assert!(
        matches!(&r, Err(KeyStoreError::Corrupt { message, .. }) if message.contains("secret_hash")),
        "{r:?}"
    );
    let r = b
        .keys()
        .update(Box::new(|keys: &mut Vec<KeyRecord>| {
            keys.truncate(1);
            Ok(())
        }))
        .await;
    assert!(matches!(r, Err(KeyStoreError::Corrupt { .. })), "{r:?}");
}

/// A store whose writes are impossible (a read-only file or mount) answers `insert` and
/// `update` with `ReadOnly` and keeps serving `load`.
pub async fn a_read_only_key_store_refuses_writes_and_still_loads(b: &dyn KeyBackend) {
    b.keys().insert(key(1)).await.expect("insert");
    b.set_keys_read_only(true).await;
    let ks = b.keys();
    let r = ks.insert(key(2)).await;
    assert!(matches!(r, Err(KeyStoreError::ReadOnly { .. })), "{r:?}");
    let r = ks
        .update(Box::new(|keys: &mut Vec<KeyRecord>| {
            keys[0].name = Some("renamed".into());
            Ok(())
        }))
        .await;
    assert!(matches!(r, Err(KeyStoreError::ReadOnly { .. })), "{r:?}");
    assert_eq!(ids(&ks.load().await.expect("load")), vec!["gk_0001"]);
    b.set_keys_read_only(false).await;
}

fn team_budget(id: &str, monthly: &str) -> metis_domain::budgets::BudgetPolicy {
    metis_domain::budgets::BudgetPolicy {
        scope: metis_domain::budgets::ScopeKind::Team,
        id: id.to_owned(),
        daily_usd: None,
        weekly_usd: None,
        monthly_usd: Some(monthly.to_owned()),
        tpm: Some(50_000),
        alert_at: Some(vec![50, 90]),
        allowed_models: Some(vec!["group:cheap".to_owned(), "openai:gpt-5".to_owned()]),
        updated_at: Some("2026-01-02T03:04:05Z".to_owned()),
    }
}

fn group(name: &str, models: &[&str]) -> metis_domain::model_groups::ModelGroup {
    metis_domain::model_groups::ModelGroup {
        name: name.to_owned(),
        models: models.iter().map(|m| (*m).to_owned()).collect(),
    }
}

/// A route stored through the admin API, every field set.
fn stored_route() -> metis_domain::routing::StoredRoute {
    let d = |name: &str, provider: &str, priority: u32| metis_domain::routing::Deployment {
        name: name.to_owned(),
        provider: provider.to_owned(),
        model: "claude-haiku-4-5".to_owned(),
        weight: 3,
        priority,
        rpm: Some(600),
        tpm: Some(400_000),
    };
    metis_domain::routing::StoredRoute {
        alias: "claude".to_owned(),
        deployments: vec![
            d("direct", "anthropic", 0),
            d("vertex", "vertex-anthropic", 1),
        ],
        updated_at: Some("2026-12-07T22:00:00Z".to_owned()),
    }
}

/// A store that does not exist holds no policies (and `load_policies` does not create it).
pub async fn policies_of_a_missing_store_are_empty(b: &dyn KeyBackend) {
    let ks = b.keys();
    assert_eq!(
        ks.load_policies().await.expect("load_policies"),
        metis_domain::budgets::Policies::default()
    );
    assert_eq!(ks.version().await, None, "a read created the store");
}

/// `update_policies` stores budgets, model groups and routes beside the keys (every field kept),
/// creates a missing store, changes the change token (so running gateways reload them) and
/// leaves the keys alone; key writes leave the policies alone.
pub async fn policies_are_stored_beside_the_keys_and_move_the_version(b: &dyn KeyBackend) {
    let ks = b.keys();
    let out = ks
        .update_policies(Box::new(|p| {
            p.model_groups
                .push(group("cheap", &["anthropic:claude-haiku-4-5"]));
            Ok(())
        }))
        .await
        .expect("update_policies of a missing store");
    assert_eq!(out.model_groups.len(), 1);
    let v0 = ks
        .version()
        .await
        .expect("the store exists after a policy write");
    assert!(ks.load().await.expect("load").is_empty());
    ks.insert(key(1)).await.expect("insert");
    let v1 = ks.version().await.expect("version");
    assert_ne!(v0, v1);
    ks.update_policies(Box::new(|p| {
        p.budgets.push(team_budget("platform", "100"));
        p.model_groups[0].models.push("openai:gpt-5-mini".into());
        p.routes.push(stored_route());
        Ok(())
    }))
    .await
    .expect("update_policies");
    let v2 = ks.version().await.expect("version");
    assert!(v2 != v1 && v2 != v0, "a policy write kept the change token");
    let other = b.keys();
    let loaded = other.load_policies().await.expect("load_policies");
    assert_eq!(loaded.budgets, vec![team_budget("platform", "100")]);
    assert_eq!(
        loaded.model_groups,
        vec![group(
            "cheap",
            &["anthropic:claude-haiku-4-5", "openai:gpt-5-mini"]
        )]
    );
    assert_eq!(loaded.routes, vec![stored_route()]);
    assert_eq!(other.version().await, Some(v2));
    assert_eq!(ids(&other.load().await.expect("load")), vec!["gk_0001"]);
    ks.update(Box::new(|keys: &mut Vec<KeyRecord>| {
        keys[0].name = Some("renamed".into());
        Ok(())
    }))
    .await
    .expect("update");
    assert_eq!(ks.load_policies().await.expect("load_policies"), loaded);
}

/// A refused policy edit is `Rejected`, an invalid result is `Corrupt` naming the problem, a
/// no-op writes nothing: the stored policies and the change token stay as they were.
pub async fn a_refused_invalid_or_no_op_policy_edit_writes_nothing(b: &dyn KeyBackend) {
    let ks = b.keys();
    ks.insert(key(1)).await.expect("insert");
    ks.update_policies(Box::new(|p| {
        p.budgets.push(team_budget("platform", "100"));
        Ok(())
    }))
    .await
    .expect("update_policies");
    let before = ks.load_policies().await.expect("load_policies");
    let v = ks.version().await;
    let r = ks
        .update_policies(Box::new(|_| Err("budget team 'x' not found".into())))
        .await;
    assert!(
        matches!(&r, Err(KeyStoreError::Rejected { message }) if message.contains("'x'")),
        "{r:?}"
    );
    let invalid: [(&str, metis_ports::keys::PolicyEdit); 3] = [
        (
            "twice",
            Box::new(|p| {
                p.budgets.push(team_budget("platform", "5"));
                Ok(())
            }),
        ),
        (
            "monthly_usd",
            Box::new(|p| {
                p.budgets[0].monthly_usd = Some("-3".into());
                Ok(())
            }),
        ),
        (
            "cannot contain groups",
            Box::new(|p| {
                p.model_groups.push(group("all", &["group:cheap"]));
                Ok(())
            }),
        ),
    ];
    for (needle, edit) in invalid {
        let r = ks.update_policies(edit).await;
        assert!(
            matches!(&r, Err(KeyStoreError::Corrupt { message, .. }) if message.contains(needle)),
            "{needle}: {r:?}"
        );
    }
    let same = ks
        .update_policies(Box::new(|_| Ok(())))
        .await
        .expect("no-op");
    assert_eq!(same, before);
    assert_eq!(ks.load_policies().await.expect("load_policies"), before);
    assert_eq!(ks.version().await, v);
}

/// Concurrent policy writers (each adding its own group) lose no update.
pub async fn parallel_policy_updates_lose_no_update(b: &dyn KeyBackend) {
    b.keys().insert(key(1)).await.expect("insert");
    let mut tasks = Vec::new();
    for n in 0..8 {
        let ks = b.keys();
        tasks.push(tokio::spawn(async move {
            ks.update_policies(Box::new(move |p| {
                p.model_groups
                    .push(group(&format!("g{n}"), &[&format!("p:m{n}")]));
                Ok(())
            }))
            .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("update_policies");
    }
    let names: BTreeSet<String> = b
        .keys()
        .load_policies()
        .await
        .expect("load_policies")
        .model_groups
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names.len(), 8, "lost policy updates: {names:?}");
}

/// A read-only store refuses policy writes with `ReadOnly` and still serves its policies.
pub async fn a_read_only_key_store_refuses_policy_writes(b: &dyn KeyBackend) {
    let ks = b.keys();
    ks.insert(key(1)).await.expect("insert");
    ks.update_policies(Box::new(|p| {
        p.model_groups.push(group("cheap", &["p:m"]));
        Ok(())
    }))
    .await
    .expect("update_policies");
    b.set_keys_read_only(true).await;
    let r = b
        .keys()
        .update_policies(Box::new(|p| {
            p.model_groups.clear();
            Ok(())
        }))
        .await;
    assert!(matches!(r, Err(KeyStoreError::ReadOnly { .. })), "{r:?}");
    assert_eq!(
        b.keys()
            .load_policies()
            .await
            .expect("load_policies")
            .model_groups
            .len(),
        1
    );
    b.set_keys_read_only(false).await;
}
