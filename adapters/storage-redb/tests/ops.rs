//! Operations on the main redb file: snapshot backup with its metadata block, restore with
//! the same refusals as SQLite, batched prune (audit events exempt, index entries removed),
//! compaction and import with the audit chain kept.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use metis_ports::storage::StorageBackend;
use metis_storage_redb::RedbBackend;
use std::path::Path;
use std::sync::Arc;

use metis_domain::events::{Actor, Event, Sensitivity};
use metis_ports::trace::{EventSink, TraceQuery, UsageGroup};
use metis_storage_redb::ops::{self, MaintenanceError};
use metis_storage_redb::{RedbOptions, RedbTraceStore, Sharing, open_shared, query};

fn ev(n: u64, ts: i64, ty: &'static str) -> Event {
    Event {
        id: format!("01J{n:023}"),
        timestamp_us: ts,
        session_id: "s".into(),
        turn_id: None,
        parent_event_id: None,
        event_type: ty,
        actor: Actor::System,
        sensitivity: Sensitivity::Pseudonymous,
        payload_json: format!(
            r#"{{"gateway_key_id":"gk_{}","cost_usd":1.0,"n":{n}}}"#,
            n % 3
        ),
    }
}

async fn store_with(path: &Path, events: Vec<Event>) -> Arc<RedbTraceStore> {
    let p = path.to_path_buf();
    let s = tokio::task::spawn_blocking(move || RedbTraceStore::open(&p, RedbOptions::default()))
        .await
        .unwrap()
        .unwrap();
    for e in events {
        s.emit(e);
    }
    s.flush().await.unwrap();
    Arc::new(s)
}

fn mixed(n: u64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let ty = if i % 4 == 0 {
                "gateway.key_issued"
            } else {
                "llm.call_completed"
            };
            ev(i, 1_000 + i as i64, ty)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_is_a_snapshot_with_the_sqlite_metadata_block() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("metis.redb");
    // The store stays open (a live gateway) while the backup runs.
    let live = store_with(&src, mixed(40)).await;
    let dest = dir.path().join("backups/b1.redb");
    let meta = RedbBackend.backup(&src, &dest, &|_, _| {}).unwrap();
    assert_eq!(
        (
            meta.events,
            meta.schema_version,
            meta.oldest_event_us,
            meta.newest_event_us
        ),
        (40, 1, Some(1_000), Some(1_039))
    );
    let block = meta.block();
    let labels: Vec<&str> = block
        .lines()
        .skip(1)
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k))
        .collect();
    assert_eq!(
        labels,
        vec![
            "source",
            "destination",
            "bytes",
            "schema version",
            "events",
            "oldest event",
            "newest event",
            "sha256"
        ]
    );
    assert!(block.starts_with("backup complete\n"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("backups/b1.redb.meta")).unwrap(),
        block
    );
    assert_eq!(meta.bytes, std::fs::metadata(&dest).unwrap().len());
    // Never overwrites.
    let again = RedbBackend.backup(&src, &dest, &|_, _| {});
    assert!(
        matches!(again, Err(MaintenanceError::Refused(_))),
        "{again:?}"
    );
    live.shutdown().await;
    drop(live);
    // The backup is a complete store: its chain verifies.
    let b = open_shared(&dest, Sharing::default(), false).unwrap();
    assert_eq!(query::verify_audit_chain(&b).unwrap(), Ok(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_applies_the_same_refusals_and_replaces_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("metis.redb");
    let s = store_with(&src, mixed(8)).await;
    s.shutdown().await;
    drop(s);
    let backup = dir.path().join("b.redb");
    RedbBackend.backup(&src, &backup, &|_, _| {}).unwrap();
    let target = dir.path().join("target.redb");
    let t = store_with(&target, mixed(3)).await;
    t.shutdown().await;
    drop(t);

    let r = RedbBackend.restore(&backup, &target, false, &|_, _| {});
    assert!(
        matches!(&r, Err(MaintenanceError::Refused(m)) if m.contains("--force")),
        "{r:?}"
    );
    // A tampered backup fails its checksum.
    let tampered = dir.path().join("t.redb");
    std::fs::copy(&backup, &tampered).unwrap();
    let mut meta = std::fs::read_to_string(dir.path().join("b.redb.meta")).unwrap();
    meta = meta.replace("sha256:         ", "sha256:         00");
    std::fs::write(dir.path().join("t.redb.meta"), meta).unwrap();
    let r = RedbBackend.restore(&tampered, &target, true, &|_, _| {});
    assert!(
        matches!(&r, Err(MaintenanceError::Refused(m)) if m.contains("checksum")),
        "{r:?}"
    );
    // A backup from a newer binary is refused, naming both versions.
    let newer = dir.path().join("newer.redb");
    std::fs::copy(&backup, &newer).unwrap();
    metis_storage_redb::stamp_schema_version(&newer, 7).unwrap();
    let r = RedbBackend.restore(&newer, &target, true, &|_, _| {});
    assert!(
        matches!(&r, Err(MaintenanceError::Refused(m)) if m.contains("version 7") && m.contains("schema version 1")),
        "{r:?}"
    );
    // A target open in another handle (a live gateway) is refused.
    let live = store_with(&target, Vec::new()).await;
    let r = RedbBackend.restore(&backup, &target, true, &|_, _| {});
    assert!(matches!(&r, Err(MaintenanceError::Refused(_))), "{r:?}");
    live.shutdown().await;
    drop(live);

    let done = RedbBackend
        .restore(&backup, &target, true, &|_, _| {})
        .unwrap();
    assert_eq!((done.events, done.schema_version), (8, 1));
    assert!(done.block().starts_with("restore complete\n"));
    let db = open_shared(&target, Sharing::default(), false).unwrap();
    assert_eq!(ops::counts(&db).unwrap().0, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_spares_audit_events_and_their_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metis.redb");
    let s = store_with(&path, mixed(100)).await;
    let dry = ops::prune_dry_run(&path, 1_050).unwrap();
    assert_eq!(
        (dry.rows_eligible, dry.rows_audit_exempt, dry.rows_deleted),
        (37, 13, 0)
    );
    assert_eq!(dry.oldest_kept_us, Some(1_000));
    let done = ops::prune(&path, 1_050, 10, std::time::Duration::ZERO, &|_, _| {}).unwrap();
    assert_eq!((done.rows_deleted, done.rows_audit_exempt), (37, 13));
    let usage = s
        .usage(i64::MIN, i64::MAX, UsageGroup::Key, None)
        .await
        .unwrap();
    let calls: u64 = usage.iter().map(|u| u.calls).sum();
    assert_eq!(calls, 75 - 37);
    let spend = s.spend_by_key(0, 0).await.unwrap();
    let total: f64 = spend.iter().map(|k| k.day_usd).sum();
    assert!((total - 38.0).abs() < 1e-9, "{spend:?}");
    let db = s.database().unwrap();
    assert_eq!(query::verify_audit_chain(&db).unwrap(), Ok(25));
    // Index entries went with the rows: nothing older than the cutoff but audit events.
    let (n, oldest, _) = query::event_span(&db).unwrap();
    assert_eq!((n, oldest), (63, Some(1_000)));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_needs_the_file_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metis.redb");
    let s = store_with(&path, mixed(500)).await;
    let busy = ops::compact(&path);
    assert!(
        matches!(busy, Err(MaintenanceError::Refused(_))),
        "{busy:?}"
    );
    ops::prune(&path, 1_400, 100, std::time::Duration::ZERO, &|_, _| {}).unwrap();
    s.shutdown().await;
    drop(s);
    let r = ops::compact(&path).unwrap();
    assert!(r.bytes_after > 0);
    let db = open_shared(&path, Sharing::default(), false).unwrap();
    assert_eq!(query::verify_audit_chain(&db).unwrap(), Ok(125));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_rows_keep_their_audit_chain() {
    let dir = tempfile::tempdir().unwrap();
    let a = store_with(&dir.path().join("a.redb"), mixed(30)).await;
    let rows = query::events_page(&a.database().unwrap(), None, 1_000).unwrap();
    assert_eq!(rows.len(), 30);
    let b = open_shared(&dir.path().join("b.redb"), Sharing::default(), true).unwrap();
    assert_eq!(ops::import_events(&b, &rows[..10]).unwrap(), 10);
    assert_eq!(
        ops::import_events(&b, &rows).unwrap(),
        20,
        "known ids are skipped"
    );
    assert_eq!(query::verify_audit_chain(&b).unwrap(), Ok(8));
    assert_eq!(query::events_page(&b, None, 1_000).unwrap(), rows);
    a.shutdown().await;
}
