//! The audit chain the writer maintains (sequence, links, several writers, tampering) and the
//! `TraceQuery` side of `SqliteTraceStore` (spend, usage, audit events).
#![expect(clippy::unwrap_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use metis_domain::audit::{AUDIT_TYPES, GENESIS_HASH};
use metis_domain::events::{Actor, Event, Sensitivity};
use metis_ports::trace::{EventSink, TraceQuery, UsageGroup};
use metis_storage_sqlite::{SqliteTraceStore, TraceReader, WriterOptions};
use rusqlite::{Connection, params};
use serde_json::Value;

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("metis.db")
}

fn open(path: &Path) -> SqliteTraceStore {
    SqliteTraceStore::open(path, WriterOptions::default()).unwrap()
}

fn event(id: &str, ts: i64, ty: &'static str, payload: &str) -> Event {
    Event {
        id: id.to_owned(),
        timestamp_us: ts,
        session_id: "system".into(),
        turn_id: None,
        parent_event_id: None,
        event_type: ty,
        actor: Actor::System,
        sensitivity: Sensitivity::Pseudonymous,
        payload_json: payload.to_owned(),
    }
}

fn audit(i: u64) -> Event {
    event(
        &format!("01AUDIT{i:019}"),
        1_700_000_000_000_000 + i64::try_from(i).unwrap(),
        "gateway.auth_failed",
        r#"{"reason":"invalid_token","inbound_shape":"openai","token_hash_prefix":"abcd1234","gateway_key_id":null}"#,
    )
}

/// A plain connection, as an operator's `sqlite3` would open it (the bundled SQLite enforces
/// foreign keys by default; the trace DB declares one it never enforces).
fn raw(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
    conn
}

fn payload_of(path: &Path, id: &str) -> Value {
    let conn = raw(path);
    let text: String = conn
        .query_row(
            "SELECT payload_json FROM events WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn verify(path: &Path) -> Result<u64, metis_domain::audit::BrokenLink> {
    TraceReader::open(path)
        .unwrap()
        .verify_audit_chain()
        .unwrap()
}

#[tokio::test]
async fn audit_events_are_chained_in_order_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    store.emit(audit(1));
    store.emit(event(
        "01ROUTE",
        5,
        "route.decided",
        r#"{"chosen_model":"m"}"#,
    ));
    store.emit(audit(2));
    store.flush().await.unwrap();
    store.emit(audit(3)); // a later batch continues the chain
    store.flush().await.unwrap();

    let first = payload_of(&path, &audit(1).id);
    assert_eq!(first["audit_seq"], 1);
    assert_eq!(first["audit_prev_hash"], GENESIS_HASH);
    // The original fields stay first, in order; the link is appended.
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(keys.first().map(|k| k.as_str()), Some("reason"));
    assert_eq!(keys.last().map(|k| k.as_str()), Some("audit_prev_hash"));
    assert_eq!(payload_of(&path, &audit(3).id)["audit_seq"], 3);
    assert!(payload_of(&path, "01ROUTE").get("audit_seq").is_none());
    assert_eq!(verify(&path), Ok(3));
    assert_eq!(
        TraceReader::open(&path)
            .unwrap()
            .count_unchained_audit_events()
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn the_chain_survives_reopening_and_a_rejected_row_does_not_advance_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    store.emit(audit(1));
    store.emit(audit(1)); // duplicate id: rejected, must not take sequence 2
    store.emit(audit(2));
    assert!(store.flush().await.is_err());
    drop(store);
    let store = open(&path);
    store.emit(audit(3));
    store.flush().await.unwrap();
    assert_eq!(payload_of(&path, &audit(2).id)["audit_seq"], 2);
    assert_eq!(payload_of(&path, &audit(3).id)["audit_seq"], 3);
    assert_eq!(verify(&path), Ok(3));
}

#[test]
fn several_writers_on_one_file_extend_one_chain() {
    // The gateway and CLI admin commands are separate processes with their own writer; here
    // four stores on one file stand in for them.
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let stores: Vec<Arc<SqliteTraceStore>> = (0..4).map(|_| Arc::new(open(&path))).collect();
    let handles: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(w, store)| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                for i in 0..150_u64 {
                    store.emit(audit(u64::try_from(w).unwrap() * 1_000 + i));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for store in stores {
        let store = Arc::into_inner(store).unwrap();
        assert_eq!(store.close().written, 150);
    }
    assert_eq!(verify(&path), Ok(600));
}

#[tokio::test]
async fn tampering_and_deletion_are_reported_at_the_right_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    for i in 1..=5 {
        store.emit(audit(i));
    }
    store.flush().await.unwrap();
    store.shutdown().await;

    let conn = raw(&path);
    conn.execute(
        "UPDATE events SET payload_json = json_set(payload_json, '$.reason', 'missing_token') \
         WHERE id = ?1",
        params![audit(2).id],
    )
    .unwrap();
    let broken = verify(&path).unwrap_err();
    assert_eq!(
        (broken.id.as_str(), broken.expected_seq),
        (audit(3).id.as_str(), 3)
    );
    assert!(broken.problem.contains("modified"), "{broken:?}");

    // Put it back, then delete a row instead: the gap is named at its successor.
    conn.execute(
        "UPDATE events SET payload_json = json_set(payload_json, '$.reason', 'invalid_token') \
         WHERE id = ?1",
        params![audit(2).id],
    )
    .unwrap();
    assert_eq!(verify(&path), Ok(5));
    conn.execute("DELETE FROM events WHERE id = ?1", params![audit(4).id])
        .unwrap();
    let broken = verify(&path).unwrap_err();
    assert_eq!(
        (broken.id.as_str(), broken.expected_seq),
        (audit(5).id.as_str(), 4)
    );
    assert!(broken.problem.contains("removed"), "{broken:?}");
}

#[tokio::test]
async fn audit_rows_from_before_the_chain_are_counted_as_unchained() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    open(&path).close();
    let conn = raw(&path);
    conn.execute(
        "INSERT INTO events VALUES ('00OLD', 1, 'system', NULL, NULL, 'gateway.key_issued', \
         'system', 'pseudonymous', '{\"gateway_key_id\":\"gk_old\"}')",
        [],
    )
    .unwrap();
    let store = open(&path);
    store.emit(audit(1));
    store.flush().await.unwrap();
    let reader = TraceReader::open(&path).unwrap();
    assert_eq!(reader.verify_audit_chain().unwrap(), Ok(1));
    assert_eq!(reader.count_unchained_audit_events().unwrap(), 1);
}

#[tokio::test]
async fn an_older_database_gets_the_audit_index_without_a_version_bump() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    open(&path).close();
    let conn = raw(&path);
    conn.execute_batch("DROP INDEX idx_events_audit_seq")
        .unwrap();
    open(&path).close();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'idx_events_audit_seq'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 1);
}

fn call(id: &str, ts: i64, ty: &'static str, key: &str, model: &str, cost: f64) -> Event {
    let mut e = event(
        id,
        ts,
        ty,
        &format!(
            r#"{{"model":"{model}","input_tokens":100,"output_tokens":20,"cached_input_tokens":5,"cache_creation_input_tokens":0,"cost_usd":{cost},"gateway_key_id":"{key}","inbound_shape":"openai","user_id":"alice","team_id":null}}"#
        ),
    );
    e.session_id = "gw_s".into();
    e.actor = Actor::Agent;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_answers_trace_queries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&db_path(&dir)));
    let sink: Arc<dyn EventSink> = store.clone();
    let query: Arc<dyn TraceQuery> = store.clone();
    sink.emit(call("01A", 100, "llm.call_completed", "gk_a", "m1", 1.0));
    sink.emit(call("01B", 200, "llm.call_failed", "gk_a", "m2", 0.5));
    sink.emit(call("01C", 300, "llm.call_completed", "gk_b", "m1", 2.0));
    sink.emit(audit(1));
    sink.emit(event("01Q", 250, "quota.alert", r#"{"scope":"key_daily"}"#));
    sink.flush().await.unwrap();

    let spend = query.spend_by_key(200, 0).await.unwrap();
    assert_eq!(spend.len(), 2);
    assert_eq!(
        (
            spend[0].gateway_key_id.as_str(),
            spend[0].day_usd,
            spend[0].month_usd
        ),
        ("gk_a", 0.5, 1.5)
    );

    let by_model = query
        .usage(0, 1_000, UsageGroup::Model, None)
        .await
        .unwrap();
    assert_eq!(by_model[0].group.as_deref(), Some("m1"));
    assert_eq!((by_model[0].calls, by_model[0].failed_calls), (2, 0));
    assert_eq!(by_model[0].input_tokens, 200);
    let by_team = query
        .usage(
            0,
            1_000,
            UsageGroup::Team,
            Some((UsageGroup::Key, "gk_a".into())),
        )
        .await
        .unwrap();
    assert_eq!(by_team.len(), 1);
    assert_eq!(by_team[0].group, None);
    assert_eq!((by_team[0].calls, by_team[0].failed_calls), (1, 1));

    // Half-open window; all audit types by default, ordered by id.
    let all = query.audit_events(0, i64::MAX, &[]).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec![audit(1).id.as_str(), "01Q"]);
    assert!(query.audit_events(0, 250, &[]).await.unwrap().is_empty());
    let only = query
        .audit_events(
            0,
            i64::MAX,
            &["quota.alert".into(), "llm.call_completed".into()],
        )
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].event_type, "quota.alert");
    assert!(
        query
            .audit_events(0, i64::MAX, &["llm.call_completed".into()])
            .await
            .unwrap()
            .is_empty(),
        "a list without audit types selects nothing"
    );
    assert_eq!(AUDIT_TYPES.len(), 22);
}
