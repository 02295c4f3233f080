//! Behaviour of `SqliteKeyStore` (`--keystore store`) beyond the `KeyStore` clauses of the
//! storage contract suite: the schema stamp, unknown fields in `record_json`, reordering,
//! tampered rows, version rules, sharing the trace file, read-only files and mixed
//! concurrent writers.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use metis_domain::keys::{KeyRecord, KeyStatus, hash_token};
use metis_ports::keys::{KeyStore, KeyStoreError};
use metis_ports::trace::EventSink;
use metis_storage_sqlite::{SqliteKeyStore, SqliteTraceStore, TraceReader, WriterOptions};
use rusqlite::{Connection, params};
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

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data/metis.db")
}

fn raw(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
    conn
}

fn stored_json(path: &Path, key_id: &str) -> String {
    raw(path)
        .query_row(
            "SELECT record_json FROM gateway_keys WHERE key_id = ?1",
            params![key_id],
            |r| r.get(0),
        )
        .unwrap()
}

fn ids(keys: &[KeyRecord]) -> Vec<String> {
    keys.iter().map(|k| k.key_id.clone()).collect()
}

#[tokio::test]
async fn a_missing_database_is_not_found_and_reads_do_not_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteKeyStore::new(&path);
    assert_eq!(store.describe(), format!("store:{}", path.display()));
    assert!(matches!(
        store.load().await,
        Err(KeyStoreError::NotFound { .. })
    ));
    assert_eq!(store.version().await, None);
    assert!(matches!(
        store.update(Box::new(|_| Ok(()))).await,
        Err(KeyStoreError::NotFound { .. })
    ));
    assert!(!path.exists());

    // A trace-only database has no key table yet: still not found, and left alone.
    SqliteTraceStore::open(&path, WriterOptions::default())
        .unwrap()
        .close();
    let store = SqliteKeyStore::new(&path);
    assert!(matches!(
        store.load().await,
        Err(KeyStoreError::NotFound { .. })
    ));
    assert_eq!(store.version().await, None);
    let tables: i64 = raw(&path)
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'gateway_keys%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
}

/// Key order, duplicates, validation, no-op edits and the change token are clauses of the
/// storage contract suite (`storage_contract::sqlite`); here only what is SQLite's own.
#[tokio::test]
async fn the_key_store_stamps_the_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    SqliteKeyStore::new(&path).insert(record(1)).await.unwrap();
    let uv: i64 = raw(&path)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(uv, 1);
}

#[tokio::test]
async fn update_applies_the_edit_and_keeps_unknown_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteKeyStore::new(&path);
    let mut a = record(1);
    a.extra.insert("x_owner".into(), json!({"team": "infra"}));
    let mut b = record(2);
    b.extra.insert("x_note".into(), json!("keep me"));
    store.insert(a.clone()).await.unwrap();
    store.insert(b.clone()).await.unwrap();
    let b_before = stored_json(&path, &b.key_id);
    let v = store.version().await;

    let a_id = a.key_id.clone();
    let keys = store
        .update(Box::new(move |keys: &mut Vec<KeyRecord>| {
            let k = keys
                .iter_mut()
                .find(|k| k.key_id == a_id)
                .ok_or("missing")?;
            k.status = KeyStatus::Revoked;
            k.revoked_at = Some("2026-05-16T00:00:00+00:00".into());
            keys.push(record(3));
            Ok(())
        }))
        .await
        .unwrap();
    assert_eq!(ids(&keys), ids(&[record(1), record(2), record(3)]));
    assert_ne!(store.version().await, v);

    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, keys);
    assert_eq!(loaded[0].status, KeyStatus::Revoked);
    assert_eq!(loaded[0].extra["x_owner"], json!({"team": "infra"}));
    let touched: Value = serde_json::from_str(&stored_json(&path, &a.key_id)).unwrap();
    assert_eq!(touched["x_owner"], json!({"team": "infra"}));
    assert_eq!(
        stored_json(&path, &b.key_id),
        b_before,
        "untouched row rewritten"
    );
}

#[tokio::test]
async fn removal_and_reordering_persist() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteKeyStore::new(db_path(&dir));
    for n in 1..=4 {
        store.insert(record(n)).await.unwrap();
    }
    store
        .update(Box::new(|keys: &mut Vec<KeyRecord>| {
            keys.remove(1);
            keys.reverse();
            Ok(())
        }))
        .await
        .unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(ids(&loaded), ids(&[record(4), record(3), record(1)]));
    // The next insert goes last.
    store.insert(record(5)).await.unwrap();
    assert_eq!(
        ids(&store.load().await.unwrap()).last(),
        Some(&record(5).key_id)
    );
}

#[tokio::test]
async fn a_tampered_row_makes_the_whole_set_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteKeyStore::new(&path);
    store.insert(record(1)).await.unwrap();
    store.insert(record(2)).await.unwrap();
    raw(&path)
        .execute(
            "UPDATE gateway_keys SET record_json = json_set(record_json, '$.status', 'paused') \
             WHERE key_id = ?1",
            params![record(2).key_id],
        )
        .unwrap();
    for result in [
        store.load().await.map(|_| ()),
        store.update(Box::new(|_| Ok(()))).await.map(|_| ()),
    ] {
        match result {
            Err(KeyStoreError::Corrupt { message, .. }) => {
                assert!(message.contains(&record(2).key_id), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_database_from_a_newer_binary_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    raw(&path)
        .execute_batch("CREATE TABLE future (x); PRAGMA user_version = 2;")
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let store = SqliteKeyStore::new(&path);
    for err in [
        store.insert(record(1)).await.unwrap_err(),
        store.load().await.unwrap_err(),
    ] {
        assert!(err.to_string().contains("upgrade metis"), "{err}");
    }
    assert_eq!(store.version().await, None);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn keys_and_the_trace_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    // The key store creates the file with the full trace schema and stamp…
    let store = SqliteKeyStore::new(&path);
    store.insert(record(1)).await.unwrap();
    // …so the trace store opens it as its own and both keep working side by side.
    let trace = SqliteTraceStore::open(&path, WriterOptions::default()).unwrap();
    trace.emit(metis_domain::events::Event {
        id: "01EVENT".into(),
        timestamp_us: 1,
        session_id: "system".into(),
        turn_id: None,
        parent_event_id: None,
        event_type: "gateway.auth_failed",
        actor: metis_domain::events::Actor::System,
        sensitivity: metis_domain::events::Sensitivity::Pseudonymous,
        payload_json: r#"{"reason":"invalid_token"}"#.into(),
    });
    trace.flush().await.unwrap();
    store.insert(record(2)).await.unwrap();
    trace.shutdown().await;
    assert_eq!(store.load().await.unwrap().len(), 2);
    assert_eq!(TraceReader::open(&path).unwrap().count_all().unwrap(), 1);
}

#[tokio::test]
async fn a_read_only_database_answers_writes_with_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteKeyStore::new(&path);
    store.insert(record(1)).await.unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let fresh = SqliteKeyStore::new(&path);
    for s in [&store, &fresh] {
        match s.insert(record(2)).await {
            Err(KeyStoreError::ReadOnly { message, .. }) => {
                assert!(message.contains("read-only"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.update(Box::new(|_| Ok(()))).await,
            Err(KeyStoreError::ReadOnly { .. })
        ));
        assert_eq!(s.load().await.unwrap().len(), 1, "reads still work");
    }
}

#[test]
fn concurrent_writers_with_separate_handles_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    SqliteKeyStore::new(&path)
        .insert_blocking(record(0))
        .unwrap();
    let threads = 8_u32;
    let per_thread = 10_u32;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = SqliteKeyStore::new(&path);
                for i in 0..per_thread {
                    let n = 1 + t * 100 + i;
                    if i % 2 == 0 {
                        store.insert_blocking(record(n)).unwrap();
                    } else {
                        // Read-modify-write: append, and bump a counter on key 0.
                        store
                            .update_blocking(Box::new(move |keys: &mut Vec<KeyRecord>| {
                                let first = keys.first_mut().ok_or("empty")?;
                                let count = first
                                    .extra
                                    .get("x_updates")
                                    .and_then(Value::as_u64)
                                    .unwrap_or(0);
                                first.extra.insert("x_updates".into(), json!(count + 1));
                                keys.push(record(n));
                                Ok(())
                            }))
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let keys = SqliteKeyStore::new(&path).load_blocking().unwrap();
    assert_eq!(keys.len(), 1 + (threads * per_thread) as usize);
    assert_eq!(
        keys[0].extra["x_updates"],
        json!(threads * per_thread / 2),
        "an update was lost"
    );
}
