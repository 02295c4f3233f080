//! Backup, restore, migrations, prune, vacuum and status of a trace database: hot backups
//! under a continuous writer, every refusal of restore, forward-compat fixtures built here
//! (an unstamped trace DB, a file from a newer binary), prune under concurrent writes.
#![expect(clippy::unwrap_used, clippy::panic, reason = "test code")]

use metis_ports::storage::StorageBackend;
use metis_storage_sqlite::SqliteBackend;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metis_domain::events::{Actor, Event, Sensitivity};
use metis_ports::trace::EventSink;
use metis_storage_sqlite::ops::{
    self, MaintenanceError, PruneOptions, header_user_version, no_progress, parse_meta, with_suffix,
};
use metis_storage_sqlite::{
    EVENT_INDEX_NAMES, RETIRED_EVENT_INDEXES, START_SWITCH_MAX_ROWS, SqliteTraceStore,
    TRACE_SCHEMA_VERSION, TraceReader, WriterLock, WriterOptions,
};
use rusqlite::{Connection, params};

const DAY: i64 = 86_400_000_000;
/// 2026-05-01T00:00:00Z
const NOW: i64 = 1_777_593_600_000_000;

fn ev(i: u64, ts: i64, ty: &'static str) -> Event {
    Event {
        id: format!("01OPS{i:021}"),
        timestamp_us: ts,
        session_id: "s".into(),
        turn_id: Some(format!("t{}", i / 3)),
        parent_event_id: None,
        event_type: ty,
        actor: Actor::Agent,
        sensitivity: Sensitivity::Pseudonymous,
        payload_json: format!(
            r#"{{"gateway_key_id":"gk_{}","cost_usd":0.001,"n":{i}}}"#,
            i % 5
        ),
    }
}

fn open(path: &Path) -> SqliteTraceStore {
    SqliteTraceStore::open(path, WriterOptions::default()).unwrap()
}

/// A trace DB with `n` events one minute apart ending at `NOW`.
async fn seeded(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("metis.db");
    let store = open(&path);
    for i in 0..n {
        let ts = NOW - i64::try_from(n - i).unwrap() * 60_000_000;
        store.emit(ev(i, ts, "llm.call_completed"));
    }
    store.flush().await.unwrap();
    store.shutdown().await;
    path
}

fn count(path: &Path) -> u64 {
    TraceReader::open(path).unwrap().count_all().unwrap()
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_a_continuous_writer_restores_to_the_count_in_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path(), 20_000).await;
    let store = Arc::new(open(&db));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, stop, written) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&written));
        tokio::spawn(async move {
            let mut i = 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..200 {
                    store.emit(ev(i, NOW + i64::try_from(i).unwrap(), "llm.call_completed"));
                    i += 1;
                }
                store.flush().await.unwrap();
                written.fetch_add(200, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    // Let the writer get going, then back up while it runs.
    while written.load(Ordering::Relaxed) < 2_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dest = dir.path().join("snap").join("backup.db");
    let (db2, dest2) = (db.clone(), dest.clone());
    let meta =
        tokio::task::spawn_blocking(move || SqliteBackend.backup(&db2, &dest2, &no_progress))
            .await
            .unwrap()
            .unwrap();
    let during = written.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    store.shutdown().await;
    assert!(
        written.load(Ordering::Relaxed) > during || during > 2_000,
        "the writer kept writing during the backup"
    );

    // The block describes the published file, and is stored beside it.
    assert_eq!(meta.destination, dest);
    assert_eq!(meta.schema_version, TRACE_SCHEMA_VERSION);
    assert_eq!(meta.bytes, std::fs::metadata(&dest).unwrap().len());
    assert_eq!(
        std::fs::read_to_string(with_suffix(&dest, ".meta")).unwrap(),
        meta.block()
    );
    assert!(
        meta.block()
            .starts_with("backup complete\n  source:         ")
    );
    assert!(meta.events >= 20_000 + 2_000, "{}", meta.events);
    assert!(meta.events < count(&db), "the snapshot is a point in time");
    assert_eq!(
        names_in(dest.parent().unwrap()),
        ["backup.db", "backup.db.meta"]
    );

    let target = dir.path().join("restored").join("metis.db");
    let s = SqliteBackend
        .restore(&dest, &target, false, &no_progress)
        .unwrap();
    assert_eq!(s.events, meta.events);
    assert_eq!(count(&target), meta.events);
    assert_eq!(s.bytes, meta.bytes);
    assert!(
        s.block()
            .starts_with("restore complete\n  source:         ")
    );
    // The restored file opens as a live store again.
    let again = open(&target);
    again.shutdown().await;
}

#[tokio::test]
async fn backup_refuses_existing_destinations_and_leaves_nothing_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path(), 10).await;
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let dest = out.join("b.db");
    std::fs::write(&dest, b"keep me").unwrap();
    let e = SqliteBackend.backup(&db, &dest, &no_progress).unwrap_err();
    assert!(matches!(e, MaintenanceError::Refused(_)), "{e}");
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(file_bytes(&dest), b"keep me");

    std::fs::remove_file(&dest).unwrap();
    std::fs::write(with_suffix(&dest, ".meta"), b"old").unwrap();
    assert!(SqliteBackend.backup(&db, &dest, &no_progress).is_err());
    assert!(!dest.exists());

    // A source that is not a database: the backup fails and no temp file remains.
    std::fs::remove_file(with_suffix(&dest, ".meta")).unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    assert!(SqliteBackend.backup(&junk, &dest, &no_progress).is_err());
    assert!(names_in(&out).is_empty(), "{:?}", names_in(&out));
    assert!(matches!(
        SqliteBackend.backup(&dir.path().join("missing.db"), &dest, &no_progress),
        Err(MaintenanceError::Refused(_))
    ));
}

/// A backup pair and a live target with different contents.
async fn restore_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let live = dir.join("live");
    std::fs::create_dir(&live).unwrap();
    let db = seeded(&live, 50).await;
    let bdir = dir.join("b");
    std::fs::create_dir(&bdir).unwrap();
    let src_db = seeded(&bdir, 7).await;
    let backup = dir.join("backup.db");
    SqliteBackend
        .backup(&src_db, &backup, &no_progress)
        .unwrap();
    (backup, db)
}

fn assert_refused(r: Result<ops::RestoreSummary, MaintenanceError>, needle: &str) {
    match r {
        Err(MaintenanceError::Refused(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn restore_refuses_every_unsafe_case_and_leaves_the_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (backup, db) = restore_fixture(dir.path()).await;
    let before = file_bytes(&db);
    let r = |src: &Path, force: bool| SqliteBackend.restore(src, &db, force, &no_progress);

    assert_refused(r(&dir.path().join("nope.db"), true), "does not exist");
    assert_refused(r(&backup, false), "--force");

    for side in ["-wal", "-shm"] {
        let p = with_suffix(&backup, side);
        std::fs::write(&p, b"").unwrap();
        assert_refused(r(&backup, true), "not a clean backup");
        std::fs::remove_file(&p).unwrap();
    }

    // Schema version differs from the binary's (older and newer); the message names both.
    for v in [0, TRACE_SCHEMA_VERSION + 1] {
        let odd = dir.path().join(format!("v{v}.db"));
        std::fs::copy(&backup, &odd).unwrap();
        Connection::open(&odd)
            .unwrap()
            .pragma_update(None, "user_version", v)
            .unwrap();
        let e = r(&odd, true).unwrap_err().to_string();
        assert!(
            e.contains(&format!("schema version {v}"))
                && e.contains(&format!("schema version {TRACE_SCHEMA_VERSION}")),
            "{e}"
        );
    }

    // The .meta must belong to the file: its version line and its checksum.
    let meta_path = with_suffix(&backup, ".meta");
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    std::fs::write(
        &meta_path,
        meta.replace("schema version: 1", "schema version: 2"),
    )
    .unwrap();
    assert_refused(r(&backup, true), "schema version 2");
    let sha = parse_meta(&meta).sha256.unwrap();
    std::fs::write(&meta_path, meta.replace(&sha, &"0".repeat(64))).unwrap();
    assert_refused(r(&backup, true), "checksum mismatch");
    std::fs::write(&meta_path, &meta).unwrap();

    // A running gateway holds the target.
    let gateway = SqliteTraceStore::open(
        &db,
        WriterOptions {
            hold_writer_lock: true,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    assert_refused(r(&backup, true), "stop the writer first");
    gateway.shutdown().await;
    drop(gateway);

    assert_eq!(file_bytes(&db), before, "no refusal touched the target");
    assert!(
        !names_in(dir.path().join("live").as_path())
            .iter()
            .any(|n| n.ends_with(".tmp")),
        "no temp file left"
    );

    // And with everything in order, it restores.
    let s = r(&backup, true).unwrap();
    assert_eq!((s.events, count(&db)), (7, 7));
}

#[tokio::test]
async fn restore_replaces_the_target_and_its_stale_wal_and_shm() {
    let dir = tempfile::tempdir().unwrap();
    let (backup, db) = restore_fixture(dir.path()).await;
    std::fs::write(with_suffix(&db, "-wal"), vec![1u8; 4096]).unwrap();
    std::fs::write(with_suffix(&db, "-shm"), vec![2u8; 4096]).unwrap();
    let s = SqliteBackend
        .restore(&backup, &db, true, &no_progress)
        .unwrap();
    assert_eq!(s.schema_version, TRACE_SCHEMA_VERSION);
    assert_eq!(header_user_version(&db).unwrap(), TRACE_SCHEMA_VERSION);
    assert_eq!(count(&db), 7);
    let store = open(&db);
    store.shutdown().await;
    assert_eq!(count(&db), 7);
}

#[tokio::test]
async fn a_gateway_cannot_start_while_a_restore_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metis.db");
    let restore_lock = WriterLock::exclusive(&db).unwrap();
    let opts = WriterOptions {
        hold_writer_lock: true,
        ..WriterOptions::default()
    };
    let e = SqliteTraceStore::open(&db, opts).unwrap_err().to_string();
    assert!(e.contains("being restored"), "{e}");
    drop(restore_lock);
    // Two gateways can share the file (a --reuse-port hand-over).
    let a = SqliteTraceStore::open(&db, opts).unwrap();
    let b = SqliteTraceStore::open(&db, opts).unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

/// An unstamped trace DB as an older binary left it: the original `events` DDL with only
/// the v1 indexes, `user_version` 0.
fn unstamped_fixture(path: &Path, rows: u64) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA foreign_keys=OFF;
         CREATE TABLE events (id TEXT PRIMARY KEY, timestamp_us INTEGER NOT NULL,
            session_id TEXT NOT NULL, turn_id TEXT, parent_event_id TEXT, type TEXT NOT NULL,
            actor TEXT NOT NULL, sensitivity TEXT NOT NULL, payload_json TEXT NOT NULL,
            FOREIGN KEY (session_id) REFERENCES sessions(id));
         CREATE INDEX idx_events_session_id ON events(session_id, id);
         CREATE INDEX idx_events_type_timestamp ON events(type, timestamp_us);
         CREATE INDEX idx_events_turn ON events(turn_id);
         CREATE INDEX idx_events_parent ON events(parent_event_id);",
    )
    .unwrap();
    for i in 0..rows {
        c.execute(
            "INSERT INTO events VALUES (?1, ?2, 's', NULL, NULL, 'llm.call_completed', 'agent', \
             'pseudonymous', '{}')",
            params![format!("01OLD{i:021}"), NOW + i64::try_from(i).unwrap()],
        )
        .unwrap();
    }
}

#[test]
fn trace_migrate_plans_applies_in_one_go_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    unstamped_fixture(&db, 1_000);
    let before = file_bytes(&db);

    let plan = ops::plan_trace_migration(&db).unwrap();
    assert_eq!((plan.current, plan.target), (0, TRACE_SCHEMA_VERSION));
    assert!(
        plan.steps
            .contains(&"create index idx_events_audit_seq".to_owned())
    );
    assert!(
        plan.steps
            .contains(&"create index idx_events_timestamp_us".to_owned())
    );
    // The fixture's v1 indexes: two kept, two retired (dropped, with why).
    assert!(
        plan.steps
            .iter()
            .any(|s| s.starts_with("drop index idx_events_turn (a prefix of")),
        "{:?}",
        plan.steps
    );
    assert!(
        plan.steps
            .iter()
            .any(|s| s.starts_with("drop index idx_events_parent (")),
        "{:?}",
        plan.steps
    );
    assert_eq!(
        plan.steps.last().unwrap(),
        &format!("set PRAGMA user_version 0 -> {TRACE_SCHEMA_VERSION}")
    );
    assert_eq!(plan.steps.len(), 2 + (EVENT_INDEX_NAMES.len() - 2) + 1);
    assert_eq!(file_bytes(&db), before, "planning is read-only");

    let applied = ops::apply_trace_migration(&db).unwrap();
    assert_eq!(applied.steps, plan.steps);
    assert_eq!(header_user_version(&db).unwrap(), TRACE_SCHEMA_VERSION);
    assert_eq!(count(&db), 1_000, "every row survives");
    assert!(ops::plan_trace_migration(&db).unwrap().is_noop());
    assert!(ops::apply_trace_migration(&db).unwrap().is_noop());
    assert_eq!(event_indexes(&db), sorted(&EVENT_INDEX_NAMES));
}

/// The non-automatic indexes on `events`, sorted.
fn event_indexes(path: &Path) -> Vec<String> {
    let c = Connection::open(path).unwrap();
    let mut stmt = c
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

/// A file as a binary with the original gateway's index set left it, with `n` call events
/// of several keys, and a last row at `rowid` (so it looks as large as `rowid` rows to the
/// open path's size guess, without writing them all).
fn original_indexes_fixture(path: &Path, n: u64, rowid: i64) {
    open(path).close();
    let c = Connection::open(path).unwrap();
    c.execute_batch("PRAGMA foreign_keys=OFF").unwrap();
    for r in RETIRED_EVENT_INDEXES {
        c.execute_batch(r.sql).unwrap();
    }
    for i in 0..n {
        let ty = if i % 4 == 3 {
            "llm.call_failed"
        } else {
            "llm.call_completed"
        };
        let e = ev(i, NOW - 1_000_000 + i64::try_from(i).unwrap(), ty);
        c.execute(
            "INSERT INTO events VALUES (?1, ?2, ?3, ?4, NULL, ?5, 'agent', 'pseudonymous', ?6)",
            params![
                e.id,
                e.timestamp_us,
                e.session_id,
                e.turn_id,
                e.event_type,
                e.payload_json
            ],
        )
        .unwrap();
    }
    c.execute(
        "INSERT INTO events (rowid, id, timestamp_us, session_id, type, actor, sensitivity, \
         payload_json) VALUES (?1, '01ZLAST', ?2, 's', 'route.decided', 'agent', 'private', '{}')",
        params![rowid, NOW],
    )
    .unwrap();
}

fn original_set() -> Vec<String> {
    let mut v: Vec<&str> = EVENT_INDEX_NAMES.to_vec();
    v.extend(RETIRED_EVENT_INDEXES.iter().map(|r| r.name));
    sorted(&v)
}

fn usage_by_key(path: &Path) -> Vec<metis_ports::trace::UsageRow> {
    let r = TraceReader::open(path).unwrap();
    let mut all = r
        .usage(0, NOW + 1, metis_ports::trace::UsageGroup::Key, None)
        .unwrap();
    all.extend(
        r.usage(
            0,
            NOW + 1,
            metis_ports::trace::UsageGroup::Model,
            Some((metis_ports::trace::UsageGroup::Key, "gk_3")),
        )
        .unwrap(),
    );
    all
}

#[tokio::test]
async fn a_large_file_keeps_the_retired_indexes_on_open_and_migrate_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metis.db");
    original_indexes_fixture(&db, 200, START_SWITCH_MAX_ROWS + 1);
    let answers = usage_by_key(&db);
    assert!(answers.len() > 5, "{answers:?}");

    // Opening does not build indexes over a large table: the set stays, writes go on.
    let store = open(&db);
    store.emit(ev(10_000, NOW + 5, "llm.call_completed"));
    store.flush().await.unwrap();
    store.shutdown().await;
    assert_eq!(event_indexes(&db), original_set());
    assert_eq!(count(&db), 202);

    let plan = ops::plan_trace_migration(&db).unwrap();
    assert_eq!(plan.current, TRACE_SCHEMA_VERSION, "no version change");
    let drops: Vec<&String> = plan
        .steps
        .iter()
        .filter(|s| s.starts_with("drop index"))
        .collect();
    assert_eq!(drops.len(), RETIRED_EVENT_INDEXES.len(), "{:?}", plan.steps);
    assert_eq!(
        plan.steps.len(),
        drops.len(),
        "nothing else: {:?}",
        plan.steps
    );
    let applied = ops::apply_trace_migration(&db).unwrap();
    assert_eq!(applied.steps, plan.steps);
    assert_eq!(event_indexes(&db), sorted(&EVENT_INDEX_NAMES));
    assert_eq!(header_user_version(&db).unwrap(), TRACE_SCHEMA_VERSION);
    assert_eq!(count(&db), 202, "every row survives");
    // The same answers without the retired indexes (plus the event written meanwhile: gk_0).
    let after = usage_by_key(&db);
    assert_eq!(after.len(), answers.len());
    for (a, b) in answers.iter().zip(&after) {
        if a.group.as_deref() != Some("gk_0") {
            assert_eq!(a, b);
        }
    }
    assert!(ops::plan_trace_migration(&db).unwrap().is_noop());
}

#[tokio::test]
async fn a_small_file_drops_the_retired_indexes_on_open_also_after_an_older_binary_ran() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metis.db");
    original_indexes_fixture(&db, 50, 1_000);
    let answers = usage_by_key(&db);
    open(&db).shutdown().await;
    assert_eq!(event_indexes(&db), sorted(&EVENT_INDEX_NAMES));
    assert_eq!(usage_by_key(&db), answers);
    assert_eq!(header_user_version(&db).unwrap(), TRACE_SCHEMA_VERSION);

    // An older binary recreates the indexes it knows on open (and SQLite maintains the
    // others for it): the file stays readable both ways, and this binary drops them again.
    {
        let c = Connection::open(&db).unwrap();
        for r in RETIRED_EVENT_INDEXES {
            c.execute_batch(r.sql).unwrap();
        }
    }
    assert_eq!(usage_by_key(&db), answers);
    let store = open(&db);
    store.emit(ev(10_000, NOW + 5, "route.decided"));
    store.flush().await.unwrap();
    store.shutdown().await;
    assert_eq!(event_indexes(&db), sorted(&EVENT_INDEX_NAMES));
    assert_eq!(count(&db), 52);
}

#[tokio::test]
async fn an_unstamped_db_opened_by_the_store_is_stamped_keeps_rows_and_accepts_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    unstamped_fixture(&db, 100);
    let store = open(&db);
    store.emit(ev(1, NOW + 1_000_000, "llm.call_completed"));
    store.flush().await.unwrap();
    store.shutdown().await;
    assert_eq!(count(&db), 101);
    assert_eq!(
        metis_storage_sqlite::schema_version(&db).unwrap(),
        TRACE_SCHEMA_VERSION
    );
}

#[tokio::test]
async fn a_db_from_a_newer_binary_is_refused_by_every_operation_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path(), 5).await;
    Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", TRACE_SCHEMA_VERSION + 1)
        .unwrap();
    let before = file_bytes(&db);
    let newer = |r: Result<(), MaintenanceError>, what: &str| match r {
        Err(e @ MaintenanceError::TooNew { .. }) => {
            let m = e.to_string();
            assert!(m.contains("newer than this binary supports"), "{what}: {m}");
        }
        other => panic!("{what}: expected TooNew, got {other:?}"),
    };
    newer(
        SqliteBackend
            .backup(&db, &dir.path().join("b.db"), &no_progress)
            .map(drop),
        "backup",
    );
    newer(ops::plan_trace_migration(&db).map(drop), "plan");
    newer(ops::apply_trace_migration(&db).map(drop), "migrate");
    newer(ops::plan_sessions_migration(&db).map(drop), "sessions plan");
    newer(
        ops::apply_sessions_migration(&db).map(drop),
        "sessions migrate",
    );
    newer(ops::prune_dry_run(&db, NOW).map(drop), "prune --dry-run");
    newer(
        ops::prune(&db, NOW, PruneOptions::default(), &no_progress).map(drop),
        "prune",
    );
    newer(ops::vacuum(&db).map(drop), "vacuum");
    newer(ops::status(&db, NOW).map(drop), "status");
    assert!(!dir.path().join("b.db").exists());
    assert_eq!(file_bytes(&db), before);
}

/// Old events (some audit) then a writer adding new ones while the prune runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_old_non_audit_events_in_batches_under_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metis.db");
    let store = Arc::new(open(&db));
    let old = 12_000u64;
    for i in 0..old {
        let ty = if i % 100 == 0 {
            "gateway.key_issued"
        } else {
            "llm.call_completed"
        };
        store.emit(ev(i, NOW - 200 * DAY + i64::try_from(i).unwrap(), ty));
    }
    store.flush().await.unwrap();
    let cutoff = NOW - 90 * DAY;

    let dry = ops::prune_dry_run(&db, cutoff).unwrap();
    assert_eq!(
        (dry.rows_eligible, dry.rows_audit_exempt, dry.rows_deleted),
        (11_880, 120, 0)
    );
    assert_eq!(dry.oldest_kept_us, Some(NOW - 200 * DAY));
    assert_eq!(count(&db), old, "a dry run changes nothing");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    store.emit(ev(
                        1_000_000 + n,
                        NOW + i64::try_from(n).unwrap(),
                        "llm.call_completed",
                    ));
                    n += 1;
                }
                store.flush().await.unwrap();
            }
            n
        })
    };
    let db2 = db.clone();
    let opts = PruneOptions {
        batch_rows: 1_000,
        pause: Duration::from_millis(1),
    };
    let counts = tokio::task::spawn_blocking(move || ops::prune(&db2, cutoff, opts, &no_progress))
        .await
        .unwrap()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let new = writer.await.unwrap();
    store.shutdown().await;

    assert_eq!(counts.rows_deleted, 11_880);
    assert_eq!(counts.rows_audit_exempt, 120);
    assert_eq!(
        counts.oldest_kept_us,
        Some(NOW - 200 * DAY),
        "audit rows are kept"
    );
    let reader = TraceReader::open(&db).unwrap();
    assert_eq!(reader.count_by_type("gateway.key_issued").unwrap(), 120);
    assert_eq!(
        reader.count_all().unwrap(),
        120 + new,
        "every concurrent write survived"
    );
    assert!(new > 0);
    // The audit chain is intact: prune never touches audit rows.
    assert!(reader.verify_audit_chain().unwrap().is_ok());

    let v = ops::vacuum(&db).unwrap();
    assert!(v.bytes_after <= v.bytes_before);
    let st = ops::status(&db, NOW + 60_000_000).unwrap();
    assert_eq!(st.events, 120 + new);
    assert_eq!(st.audit_events, 120);
    assert_eq!(st.schema_version, TRACE_SCHEMA_VERSION);
    assert_eq!(st.wal_bytes, 0, "vacuum truncates the WAL");
}

#[test]
fn migration_backups_are_named_next_to_the_file_with_the_time() {
    let p = ops::migration_backup_path(Path::new("/var/lib/metis/metis.db"), 1_747_318_930_123_456);
    assert_eq!(
        p,
        PathBuf::from("/var/lib/metis/metis.db.pre-migrate-20250515T142210Z.db")
    );
}
