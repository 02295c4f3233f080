//! The pattern projection built live by the gateway equals the one `patterns rebuild`
//! derives from the trace: every completed turn emits `pattern.recorded`, and replaying those
//! events into an empty store reproduces the live store's outcomes exactly.

use metis_domain::patterns::{PatternCaps, PatternRecorded};

use metis_ports::storage::{PatternFiles, no_progress};
use metis_storage_sqlite::patterns::{PatternPlace, SqlitePatternStore};
use metis_tests::gateway::chat_body;
use metis_tests::{Combo, GatewayOptions, TestGateway};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pattern_store_equals_the_rebuild_from_the_trace() {
    let live_dir = tempfile::tempdir().unwrap();
    let mut gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec![
            "--patterns-dir".into(),
            live_dir.path().display().to_string(),
        ],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let texts = [
        "please debug this failing test",
        "refactor the parser module",
        "please debug this failing test",
        "write the architecture doc",
    ];
    for combo in [Combo::OPENAI_TO_ANTHROPIC, Combo::ANTHROPIC_TO_OPENAI] {
        for t in texts {
            let r = gw
                .post(
                    combo.client,
                    &chat_body(combo.client, combo.model(), t, false),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
    }
    // A turn with tools has a different fingerprint.
    let mut with_tools = chat_body(
        Combo::OPENAI_TO_OPENAI.client,
        "gpt-5",
        "commit the change",
        false,
    );
    with_tools["tools"] = json!([{"type": "function", "function": {"name": "git_commit", "parameters": {"type": "object"}}}]);
    assert_eq!(
        gw.post(Combo::OPENAI_TO_OPENAI.client, &with_tools)
            .await
            .status,
        200
    );
    gw.stop().await.unwrap();

    let events = gw.events_of("pattern.recorded").unwrap();
    assert_eq!(events.len(), 9, "one pattern.recorded per completed turn");
    let workspace = events[0].payload["workspace_path"]
        .as_str()
        .unwrap()
        .to_owned();
    let records: Vec<_> = events
        .iter()
        .map(|e| {
            let p: PatternRecorded = serde_json::from_value(e.payload.clone()).unwrap();
            assert!(
                !e.payload_json.contains("debug this failing"),
                "no raw text in the event"
            );
            p.to_record(e.timestamp_us).unwrap()
        })
        .collect();

    let live = SqlitePatternStore::new(
        PatternPlace::Dir(live_dir.path().to_path_buf()),
        PatternCaps::default(),
    );
    let rebuilt_dir = tempfile::tempdir().unwrap();
    let rebuilt = SqlitePatternStore::new(
        PatternPlace::Dir(rebuilt_dir.path().to_path_buf()),
        PatternCaps::default(),
    );
    assert_eq!(
        rebuilt
            .replace_all(&workspace, &records, &no_progress)
            .unwrap(),
        9
    );
    let live_rows = live.outcomes(&workspace).unwrap();
    let rebuilt_rows = rebuilt.outcomes(&workspace).unwrap();
    assert!(!live_rows.is_empty());
    assert_eq!(live_rows, rebuilt_rows);
    // Repeated text, same model: one fingerprint with two samples.
    assert!(live_rows.iter().any(|r| r.sample_size == 2));
}
