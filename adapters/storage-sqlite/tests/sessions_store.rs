//! `SqliteSessionStore`: the per-turn upsert contract, the delegation tree, the partial
//! index, and the forward migration of a pre-delegation `sessions` table (built here) that
//! keeps every row.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::path::Path;

use metis_domain::sessions::{SessionId, SessionLink, SessionTurn};
use metis_ports::sessions::SessionStore;
use metis_storage_sqlite::ops;
use metis_storage_sqlite::{SessionReader, SqliteTraceStore, WriterOptions, sessions_schema_level};
use rusqlite::{Connection, params};

fn link(id: &str, parent: Option<&str>, worker: bool) -> SessionLink {
    SessionLink {
        session_id: SessionId::parse(id).unwrap(),
        parent_session_id: parent.map(|p| SessionId::parse(p).unwrap()),
        parent_tool_use_id: parent.map(|_| "toolu_1".to_owned()),
        is_worker: worker,
    }
}

fn turn(id: &str, parent: Option<&str>, ws: &str, cost: f64, at: i64) -> SessionTurn {
    SessionTurn::new(
        &link(id, parent, parent.is_some()),
        ws,
        Some("anthropic:claude-haiku-4-5"),
        cost,
        at,
    )
}

#[tokio::test]
async fn turns_upsert_sessions_and_keep_the_first_parent_link() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteTraceStore::open(&dir.path().join("metis.db"), WriterOptions::default()).unwrap();
    let sessions = store.session_store().unwrap();

    sessions
        .record_turn(turn("root", None, "/w", 0.5, 100))
        .unwrap();
    sessions
        .record_turn(turn("root", None, "/w", 0.25, 200))
        .unwrap();
    sessions
        .record_turn(turn("child", Some("root"), "/w", 0.125, 150))
        .unwrap();
    // A later turn without the headers keeps the link and the worker flag.
    let mut plain = turn("child", None, "/w", 0.125, 300);
    plain.active_model = None;
    sessions.record_turn(plain).unwrap();
    // Another workspace never changes a session it does not own.
    sessions
        .record_turn(turn("root", None, "/other", 9.0, 400))
        .unwrap();
    sessions.flush().await.unwrap();

    let id = |s: &str| SessionId::parse(s).unwrap();
    let root = sessions.get(&id("root")).await.unwrap().unwrap();
    assert_eq!(root.turn_count, 2);
    assert!((root.cost_so_far_usd - 0.75).abs() < 1e-12);
    assert_eq!((root.created_at_us, root.updated_at_us), (100, 200));
    assert_eq!(root.workspace_path, "/w");
    assert!(!root.is_worker);

    let child = sessions.get(&id("child")).await.unwrap().unwrap();
    assert_eq!(child.turn_count, 2);
    assert_eq!(child.parent_session_id.as_deref(), Some("root"));
    assert_eq!(child.parent_tool_use_id.as_deref(), Some("toolu_1"));
    assert!(child.is_worker);
    assert_eq!(
        child.active_model.as_deref(),
        Some("anthropic:claude-haiku-4-5")
    );
    assert_eq!(child.updated_at_us, 300);

    let kids = sessions.children(&id("root")).await.unwrap();
    assert_eq!(
        kids.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["child"]
    );
    let listed = sessions.list(None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["child", "root"]
    );
    assert!(sessions.list(Some("/other"), 10).await.unwrap().is_empty());
    assert_eq!(sessions.list(None, 1).await.unwrap().len(), 1);
    assert!(sessions.get(&id("nobody")).await.unwrap().is_none());

    let stats = sessions.stats();
    assert_eq!(
        (stats.recorded, stats.workspace_conflicts, stats.failed),
        (4, 1, 0)
    );
    store.shutdown().await;
    assert!(
        sessions
            .record_turn(turn("late", None, "/w", 0.0, 1))
            .is_err()
    );
    assert_eq!(sessions.stats().failed, 1);
}

#[tokio::test]
async fn children_are_served_by_the_partial_parent_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metis.db");
    let store = SqliteTraceStore::open(&path, WriterOptions::default()).unwrap();
    store.shutdown().await;
    let c = Connection::open(&path).unwrap();
    let plan: String = c
        .query_row(
            "EXPLAIN QUERY PLAN SELECT id FROM sessions WHERE parent_session_id = 'x' \
             ORDER BY created_at, id",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("idx_sessions_parent"), "{plan}");
}

/// The `sessions` table as a pre-delegation binary created it, with rows.
fn pre_delegation_fixture(path: &Path, rows: i64) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, workspace_path TEXT NOT NULL,
            active_model TEXT, routing_policy_json TEXT,
            cost_so_far_usd REAL NOT NULL DEFAULT 0, turn_count INTEGER NOT NULL DEFAULT 0,
            schema_version INTEGER NOT NULL, created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL);
         CREATE TABLE messages (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, role TEXT NOT NULL,
            content_json TEXT NOT NULL, metadata_json TEXT NOT NULL, created_at INTEGER NOT NULL,
            schema_version INTEGER NOT NULL);",
    )
    .unwrap();
    for i in 0..rows {
        c.execute(
            "INSERT INTO sessions VALUES (?1, '/w', 'm', NULL, ?2, ?3, 1, ?4, ?4)",
            params![format!("sess_{i:04}"), 0.01 * i as f64, i, 1_000 + i],
        )
        .unwrap();
    }
}

#[test]
fn sessions_migrate_plans_then_adds_the_columns_before_the_index_keeping_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metis.db");
    pre_delegation_fixture(&path, 25);

    let plan = ops::plan_sessions_migration(&path).unwrap();
    assert_eq!((plan.current, plan.target), (1, 2));
    assert_eq!(
        plan.steps,
        [
            "alter table sessions add column parent_session_id TEXT",
            "alter table sessions add column parent_tool_use_id TEXT",
            "alter table sessions add column is_worker INTEGER NOT NULL DEFAULT 0",
            "create index idx_sessions_parent",
            "create index idx_sessions_updated",
        ]
    );
    let applied = ops::apply_sessions_migration(&path).unwrap();
    assert_eq!(applied.steps, plan.steps);
    assert!(ops::plan_sessions_migration(&path).unwrap().is_noop());
    assert!(ops::apply_sessions_migration(&path).unwrap().is_noop());

    let reader = SessionReader::open(&path).unwrap();
    assert_eq!(reader.count().unwrap(), 25);
    let s = reader.get("sess_0007").unwrap().unwrap();
    assert_eq!(
        (s.turn_count, s.is_worker, s.parent_session_id),
        (7, false, None)
    );
    assert!((s.cost_so_far_usd - 0.07).abs() < 1e-12);
    assert_eq!(reader.schema_level().unwrap(), 2);
}

#[tokio::test]
async fn opening_a_pre_delegation_db_migrates_it_and_the_next_turn_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metis.db");
    pre_delegation_fixture(&path, 10);
    // Reads before any writer opened it see the rows, without the delegation fields.
    let before = SessionReader::open(&path).unwrap();
    assert_eq!(before.list(None, 100).unwrap().len(), 10);
    assert!(before.children("sess_0001").unwrap().is_empty());
    assert!(!before.get("sess_0001").unwrap().unwrap().is_worker);
    drop(before);

    let store = SqliteTraceStore::open(&path, WriterOptions::default()).unwrap();
    let sessions = store.session_store().unwrap();
    sessions
        .record_turn(turn("sess_0003", None, "/w", 1.0, 5_000))
        .unwrap();
    sessions
        .record_turn(turn("new-worker", Some("sess_0003"), "/w", 0.5, 5_001))
        .unwrap();
    sessions.flush().await.unwrap();
    assert_eq!(sessions.list(None, 100).await.unwrap().len(), 11);
    let s3 = sessions
        .get(&SessionId::parse("sess_0003").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s3.turn_count, 4);
    assert!((s3.cost_so_far_usd - 1.03).abs() < 1e-12);
    store.shutdown().await;
    let c = Connection::open(&path).unwrap();
    assert_eq!(sessions_schema_level(&c).unwrap(), 2);
    let messages: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'messages'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(messages, 1, "other tables are left alone");
}
