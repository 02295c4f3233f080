//! The HTTP suites on the redb backend: `http_trace.rs`, `http_translation.rs`,
//! `http_errors.rs`, `http_features.rs`, `http_agents.rs` (agent sessions, trace events of
//! Responses, count and embeddings calls), `admin_api.rs` (usage and audit reads),
//! `quota_concurrency.rs` (spend) and `revoke_latency.rs` of `tests/tests/suite/` compiled
//! again into this binary (whose name starts with `redb_`, so `TestGateway` runs every gateway
//! with `--store redb`), plus checks that the gateway really used redb.

#[path = "../suite/http_trace.rs"]
mod http_trace;

#[path = "../suite/http_translation.rs"]
mod http_translation;

#[path = "../suite/http_errors.rs"]
mod http_errors;

#[path = "../suite/http_features.rs"]
mod http_features;

#[path = "../suite/http_agents.rs"]
mod http_agents;

#[path = "../suite/admin_api.rs"]
mod admin_api;

#[path = "../suite/quota_concurrency.rs"]
mod quota_concurrency;

#[path = "../suite/revoke_latency.rs"]
mod revoke_latency;

use metis::store::StoreKind;
use metis_tests::{Combo, GatewayOptions, TestGateway};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_binary_runs_its_gateways_on_redb() {
    let mut gw = TestGateway::spawn().await.expect("gateway starts");
    assert_eq!(gw.store, StoreKind::Redb);
    assert!(
        gw.db_path.ends_with("metis.redb"),
        "{}",
        gw.db_path.display()
    );
    let r = gw
        .post(
            Combo::OPENAI_TO_ANTHROPIC.client,
            &Combo::OPENAI_TO_ANTHROPIC.body("hello redb", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    gw.stop().await.unwrap();
    assert!(gw.db_path.is_file());
    assert!(
        !gw.data_dir.path().join("metis.db").exists(),
        "a redb gateway must not create metis.db"
    );
    let events = gw.events().unwrap();
    assert!(events.iter().any(|e| e.event_type == "llm.call_completed"));
    // The key issued before the start is an audit event, chained in the redb file.
    let db =
        metis_storage_redb::open_shared(&gw.db_path, metis_storage_redb::Sharing::default(), false)
            .unwrap();
    let chain = metis_storage_redb::query::verify_audit_chain(&db).unwrap();
    assert!(matches!(chain, Ok(n) if n >= 1), "{chain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_recorded_in_the_redb_file() {
    let mut gw = TestGateway::spawn_with(GatewayOptions {
        store: Some(StoreKind::Redb),
        ..GatewayOptions::default()
    })
    .await
    .expect("gateway starts");
    let combo = Combo::ANTHROPIC_TO_ANTHROPIC;
    for _ in 0..2 {
        let r = gw
            .client()
            .post(gw.url(combo.client.gateway_path()))
            .header("x-api-key", &gw.key.token)
            .header("anthropic-version", "2023-06-01")
            .header("x-metis-session-id", "redb-session-1")
            .json(&json!({
                "model": combo.model(),
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "hi"}],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    gw.stop().await.unwrap();
    let db =
        metis_storage_redb::open_shared(&gw.db_path, metis_storage_redb::Sharing::default(), false)
            .unwrap();
    let s = metis_storage_redb::sessions::read::get(&db, "redb-session-1")
        .unwrap()
        .expect("session stored");
    assert_eq!(s.turn_count, 2);
    assert!(s.cost_so_far_usd > 0.0, "{s:?}");
}
