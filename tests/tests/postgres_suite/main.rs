//! The HTTP suites on PostgreSQL: `http_trace.rs`, `http_translation.rs`, `http_errors.rs`,
//! `http_features.rs`, `http_agents.rs`, `admin_api.rs` (usage and audit reads),
//! `quota_concurrency.rs` (spend) and `revoke_latency.rs` of `tests/tests/suite/` compiled
//! again into this binary (whose name starts with `postgres_`, so `TestGateway` runs every
//! gateway with `--store postgres` on a fresh database of the server named by
//! `METIS_TEST_DATABASE_URL`; unset, every test fails saying how to start one), plus a smoke
//! test that the gateway really used the database.

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
use metis_tests::{Combo, TestGateway};
use serde_json::json;

/// A request through the real gateway on PostgreSQL: answered, its events (and the audited
/// key issue before the start) stored in the database with a verifiable chain, its session
/// recorded, usage readable through the admin-free query port; and no store file in the data
/// directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_binary_runs_its_gateways_on_postgres() {
    let mut gw = TestGateway::spawn().await.expect("gateway starts");
    assert_eq!(gw.store, StoreKind::Postgres);
    let combo = Combo::ANTHROPIC_TO_ANTHROPIC;
    for _ in 0..2 {
        let r = gw
            .client()
            .post(gw.url(combo.client.gateway_path()))
            .header("x-api-key", &gw.key.token)
            .header("anthropic-version", "2023-06-01")
            .header("x-metis-session-id", "pg-session-1")
            .json(&json!({
                "model": combo.model(),
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "hello postgres"}],
            }))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    gw.stop().await.expect("stop");
    for file in ["metis.db", "metis.redb", StoreKind::Postgres.main_file()] {
        assert!(
            !gw.data_dir.path().join(file).exists(),
            "a postgres gateway must not create {file}"
        );
    }
    let events = gw.events().expect("events");
    let calls = events
        .iter()
        .filter(|e| e.event_type == "llm.call_completed")
        .count();
    assert_eq!(calls, 2, "{events:?}");
    let paths = gw.paths();
    let backend = paths.backend().expect("backend");
    let (chain, unchained) = metis::audit_cli::verify(&paths.db, backend.as_ref()).expect("verify");
    assert!(matches!(chain, Ok(n) if n >= 1), "{chain:?}");
    assert_eq!(unchained, 0);
    let reader = backend.open_reader(&paths.db).expect("reader");
    let s = reader
        .session("pg-session-1")
        .expect("session read")
        .expect("session stored");
    assert_eq!(s.turn_count, 2);
    assert!(s.cost_so_far_usd > 0.0, "{s:?}");
    assert_eq!(
        reader.keys().expect("keys").len(),
        0,
        "keys are in the JSON file here"
    );
}
