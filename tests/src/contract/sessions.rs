//! Contract of the `SessionStore` port: the upsert of one turn, sticky delegation links,
//! workspace isolation, ordering, flush, and the list/children reads.
#![expect(
    clippy::expect_used,
    reason = "contract tests fail loudly on a broken store"
)]

use std::sync::Arc;

use metis_domain::sessions::{SessionId, SessionRecord, SessionTurn};
use metis_ports::sessions::{SessionError, SessionStore};

use super::Backend;

/// A parsed session id.
#[must_use]
pub fn sid(raw: &str) -> SessionId {
    SessionId::parse(raw).expect("valid session id")
}

/// A turn of `session` in workspace `/ws/a` at `at_us`, costing `cost`, routed to `model`.
#[must_use]
pub fn turn(session: &str, at_us: i64, cost: f64, model: Option<&str>) -> SessionTurn {
    SessionTurn {
        session_id: sid(session),
        workspace_path: "/ws/a".to_owned(),
        active_model: model.map(str::to_owned),
        cost_usd: cost,
        at_us,
        parent_session_id: None,
        parent_tool_use_id: None,
        is_worker: false,
    }
}

/// A worker turn of `session` delegated from `parent` (tool use `tool`).
#[must_use]
pub fn worker_turn(session: &str, parent: &str, tool: &str, at_us: i64) -> SessionTurn {
    SessionTurn {
        parent_session_id: Some(sid(parent)),
        parent_tool_use_id: Some(tool.to_owned()),
        is_worker: true,
        ..turn(session, at_us, 0.0, Some("m"))
    }
}

async fn get(s: &dyn SessionStore, id: &str) -> Option<SessionRecord> {
    s.get(&sid(id)).await.expect("get")
}

async fn record_all(s: &dyn SessionStore, turns: Vec<SessionTurn>) {
    for t in turns {
        s.record_turn(t).expect("record_turn");
    }
    s.flush().await.expect("flush");
}

/// Once its first turn is applied, a session exists with `turn_count` 1, the turn's cost and
/// model, and `created_at` = `updated_at` = the turn's time.
pub async fn a_first_turn_creates_the_session(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    record_all(
        o.sessions.as_ref(),
        vec![turn("sess-1", 1_000, 0.25, Some("anthropic:haiku"))],
    )
    .await;
    let s = get(o.sessions.as_ref(), "sess-1").await.expect("session");
    assert_eq!(
        s,
        SessionRecord {
            id: "sess-1".into(),
            workspace_path: "/ws/a".into(),
            active_model: Some("anthropic:haiku".into()),
            cost_so_far_usd: 0.25,
            turn_count: 1,
            created_at_us: 1_000,
            updated_at_us: 1_000,
            parent_session_id: None,
            parent_tool_use_id: None,
            is_worker: false,
        }
    );
    assert_eq!(o.sessions.stats().recorded, 1);
    o.close().await;
}

/// Each later turn adds one to `turn_count` and its cost to `cost_so_far_usd`, sets
/// `active_model` when it names one, and `updated_at` becomes max(previous, turn time);
/// `created_at` stays the first turn's time.
pub async fn later_turns_accumulate(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    record_all(
        o.sessions.as_ref(),
        vec![
            turn("s", 1_000, 0.5, Some("m1")),
            turn("s", 3_000, 0.25, Some("m2")),
            turn("s", 2_000, 0.25, None), // older turn, no model
        ],
    )
    .await;
    let s = get(o.sessions.as_ref(), "s").await.expect("session");
    assert_eq!(s.turn_count, 3);
    assert!((s.cost_so_far_usd - 1.0).abs() < 1e-9, "{s:?}");
    assert_eq!(s.active_model.as_deref(), Some("m2"));
    assert_eq!((s.created_at_us, s.updated_at_us), (1_000, 3_000));
    o.close().await;
}

/// The parent link (`parent_session_id`, `parent_tool_use_id`) is kept from the first turn
/// that carries one and never overwritten; `is_worker` is sticky.
pub async fn the_parent_link_is_kept_and_is_worker_is_sticky(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    record_all(
        o.sessions.as_ref(),
        vec![
            turn("w", 1, 0.0, None), // no link yet
            worker_turn("w", "root-1", "tu_1", 2),
            worker_turn("w", "root-2", "tu_2", 3), // a later, different link
            turn("w", 4, 0.0, None),               // not a worker turn
        ],
    )
    .await;
    let s = get(o.sessions.as_ref(), "w").await.expect("session");
    assert_eq!(s.parent_session_id.as_deref(), Some("root-1"));
    assert_eq!(s.parent_tool_use_id.as_deref(), Some("tu_1"));
    assert!(s.is_worker);
    assert_eq!(s.turn_count, 4);
    o.close().await;
}

/// A turn whose session exists in another workspace MUST NOT change that session; it is
/// counted in `workspace_conflicts`.
pub async fn a_turn_from_another_workspace_changes_nothing(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    let mut foreign = turn("s", 9_000, 7.0, Some("other"));
    foreign.workspace_path = "/ws/b".into();
    record_all(
        o.sessions.as_ref(),
        vec![turn("s", 1_000, 1.0, Some("m")), foreign],
    )
    .await;
    let s = get(o.sessions.as_ref(), "s").await.expect("session");
    assert_eq!(
        (
            s.workspace_path.as_str(),
            s.turn_count,
            s.cost_so_far_usd,
            s.active_model.as_deref(),
            s.updated_at_us
        ),
        ("/ws/a", 1, 1.0, Some("m"), 1_000)
    );
    let st = o.sessions.stats();
    assert_eq!((st.recorded, st.workspace_conflicts), (1, 1), "{st:?}");
    o.close().await;
}

/// Turns of one store MUST be applied in the order they were recorded: the last recorded
/// model wins even when all turns carry the same time.
pub async fn turns_apply_in_record_order(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    let turns = (0..200)
        .map(|i| turn("ordered", 5, 0.0, Some(&format!("model-{i:03}"))))
        .collect();
    record_all(o.sessions.as_ref(), turns).await;
    let s = get(o.sessions.as_ref(), "ordered").await.expect("session");
    assert_eq!(s.active_model.as_deref(), Some("model-199"));
    assert_eq!(s.turn_count, 200);
    o.close().await;
}

/// Concurrent `record_turn` calls from many tasks lose no turn, and each task's own turns
/// keep their order (its last model wins on its session).
pub async fn concurrent_record_turn_keeps_every_turn_in_order(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = Arc::clone(&o.sessions);
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let own = format!("task-{t}");
                store
                    .record_turn(turn(&own, 10, 0.0, Some(&format!("m{i:02}"))))
                    .expect("record own");
                store
                    .record_turn(turn("shared", 10, 0.125, None))
                    .expect("record shared");
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    o.sessions.flush().await.expect("flush");
    let shared = get(o.sessions.as_ref(), "shared").await.expect("shared");
    assert_eq!(shared.turn_count, 400);
    assert!((shared.cost_so_far_usd - 50.0).abs() < 1e-9, "{shared:?}");
    for t in 0..8 {
        let s = get(o.sessions.as_ref(), &format!("task-{t}"))
            .await
            .expect("own session");
        assert_eq!((s.turn_count, s.active_model.as_deref()), (50, Some("m49")));
    }
    o.close().await;
}

/// `flush` resolves only after every turn recorded before it is applied; `record_turn` itself
/// only queues (it returns without waiting for the write).
pub async fn flush_applies_every_earlier_turn(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    for i in 0..500 {
        o.sessions
            .record_turn(turn(&format!("f-{}", i % 7), i, 0.01, None))
            .expect("record");
    }
    o.sessions.flush().await.expect("flush");
    let total: u64 = o
        .sessions
        .list(None, 100)
        .await
        .expect("list")
        .iter()
        .map(|s| s.turn_count)
        .sum();
    assert_eq!(total, 500);
    assert_eq!(o.sessions.stats().recorded, 500);
    o.close().await;
}

/// `get` of a session that was never recorded is `None`.
pub async fn an_unknown_session_is_none(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    assert_eq!(get(o.sessions.as_ref(), "never").await, None);
    o.close().await;
}

/// `list`: most recently updated first (then id), optionally one workspace only, at most
/// `limit` sessions.
pub async fn list_orders_by_latest_update_then_id(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    let mut other = turn("z-other", 9_999, 0.0, None);
    other.workspace_path = "/ws/b".into();
    record_all(
        o.sessions.as_ref(),
        vec![
            turn("b", 100, 0.0, None),
            turn("a", 300, 0.0, None),
            turn("c", 300, 0.0, None),
            turn("d", 200, 0.0, None),
            other,
        ],
    )
    .await;
    let names = |v: Vec<SessionRecord>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        names(o.sessions.list(None, 10).await.expect("list")),
        vec!["z-other", "a", "c", "d", "b"]
    );
    assert_eq!(
        names(o.sessions.list(Some("/ws/a"), 3).await.expect("list")),
        vec!["a", "c", "d"]
    );
    assert!(
        o.sessions
            .list(Some("/ws/none"), 10)
            .await
            .expect("list")
            .is_empty()
    );
    o.close().await;
}

/// `children`: the direct children of a session (naming it as parent), oldest first, then
/// id; grandchildren are not children.
pub async fn children_are_direct_and_oldest_first(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    record_all(
        o.sessions.as_ref(),
        vec![
            turn("root", 1, 0.0, None),
            worker_turn("kid-b", "root", "tu_b", 30),
            worker_turn("kid-a", "root", "tu_a", 30),
            worker_turn("kid-c", "root", "tu_c", 10),
            worker_turn("grandkid", "kid-a", "tu_g", 40),
            worker_turn("elsewhere", "other-root", "tu_x", 5),
        ],
    )
    .await;
    let kids: Vec<String> = o
        .sessions
        .children(&sid("root"))
        .await
        .expect("children")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(kids, vec!["kid-c", "kid-a", "kid-b"]);
    assert!(
        o.sessions
            .children(&sid("grandkid"))
            .await
            .expect("children")
            .is_empty()
    );
    o.close().await;
}

/// Applied sessions are durable: they read back unchanged after a close and a reopen.
pub async fn sessions_survive_reopen(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    record_all(
        o.sessions.as_ref(),
        vec![
            turn("keep", 1, 0.5, Some("m")),
            worker_turn("kid", "keep", "tu", 2),
        ],
    )
    .await;
    let before = o.sessions.list(None, 10).await.expect("list");
    o.close().await;
    let o = b.open(None).await.expect("reopen");
    assert_eq!(o.sessions.list(None, 10).await.expect("list"), before);
    o.close().await;
}

/// After the store is closed, `record_turn` fails with `Unavailable` (the request continues)
/// and the turn is counted in `failed`.
pub async fn record_turn_after_close_is_unavailable(b: &dyn Backend) {
    let o = b.open(None).await.expect("open");
    let sessions = Arc::clone(&o.sessions);
    o.close().await;
    let r = sessions.record_turn(turn("late", 1, 0.0, None));
    assert!(matches!(r, Err(SessionError::Unavailable(_))), "{r:?}");
    assert_eq!(sessions.stats().failed, 1);
}
