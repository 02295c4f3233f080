//! Behaviour of `SqliteTraceStore`: schema and version stamping, group-committed writes,
//! overflow and failure accounting, and draining on close.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metis_domain::events::{Actor, Event, Sensitivity};
use metis_ports::trace::{EventSink, TraceError};
use metis_storage_sqlite::{
    EVENT_INDEX_NAMES, SqliteTraceStore, TRACE_SCHEMA_VERSION, TraceReader, WriterOptions,
    schema_version,
};
use rusqlite::Connection;

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("metis.db")
}

fn event(i: u64, ty: &'static str, turn: Option<&str>) -> Event {
    Event {
        // Zero-padded so lexical order is numeric order, like ULIDs.
        id: format!("01TEST{i:020}"),
        timestamp_us: 1_700_000_000_000_000 + i64::try_from(i).unwrap(),
        session_id: "gw_session".into(),
        turn_id: turn.map(str::to_owned),
        parent_event_id: None,
        event_type: ty,
        actor: Actor::Agent,
        sensitivity: Sensitivity::Pseudonymous,
        payload_json: format!(r#"{{"gateway_key_id":"gk_{}","n":{i}}}"#, i % 7),
    }
}

fn open(path: &Path) -> SqliteTraceStore {
    init_logs();
    SqliteTraceStore::open(path, WriterOptions::default()).unwrap()
}

fn user_version(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// Show the store's WARN/ERROR lines in failing tests' output.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
}

/// Poll `cond` for up to 10 s.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn a_new_database_gets_the_original_table_the_current_indexes_and_is_stamped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dirs/metis.db");
    let store = open(&path);
    assert!(store.is_writable());

    let conn = Connection::open(&path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .unwrap();
    let mut names: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    names.sort();
    let mut expected: Vec<String> = EVENT_INDEX_NAMES.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(names, expected);

    let table_sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(table_sql.contains("FOREIGN KEY (session_id) REFERENCES sessions(id)"));
    let partial: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'idx_events_eval_subject_kind'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        partial.contains("WHERE type = 'eval.completed'"),
        "{partial}"
    );

    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(user_version(&path), TRACE_SCHEMA_VERSION);
    assert_eq!(schema_version(&path).unwrap(), 1);

    // An operator's by-key query written like the product's (README, "Trace store": call
    // events of a time window) searches the (type, time) index; the original's all-events
    // identity indexes are retired.
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT COUNT(*), TOTAL(json_extract(payload_json, '$.cost_usd')) \
             FROM events WHERE type IN ('llm.call_completed', 'llm.call_failed') \
             AND timestamp_us >= 0 AND json_extract(payload_json,'$.gateway_key_id') = 'gk_1'",
        )
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|l| l.starts_with("SEARCH events USING INDEX idx_events_type_timestamp")),
        "{plan:?}"
    );
    store.shutdown().await;
}

#[tokio::test]
async fn reopening_keeps_the_stamp_and_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    store.emit(event(1, "llm.call_completed", None));
    store.flush().await.unwrap();
    drop(store);
    let store = open(&path);
    assert_eq!(store.reader().count_all().unwrap(), 1);
    assert_eq!(user_version(&path), 1);
}

#[tokio::test]
async fn an_unstamped_database_with_rows_keeps_every_row_and_gets_stamped() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        // An early trace file: the table only, no indexes, user_version 0.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE events (id TEXT PRIMARY KEY, timestamp_us INTEGER NOT NULL, \
             session_id TEXT NOT NULL, turn_id TEXT, parent_event_id TEXT, type TEXT NOT NULL, \
             actor TEXT NOT NULL, sensitivity TEXT NOT NULL, payload_json TEXT NOT NULL);",
        )
        .unwrap();
        for i in 0..3 {
            conn.execute(
                "INSERT INTO events VALUES (?1, ?2, 'system', 't1', NULL, 'turn.completed', \
                 'system', 'pseudonymous', '{}')",
                rusqlite::params![format!("00OLD{i}"), i],
            )
            .unwrap();
        }
    }
    assert_eq!(user_version(&path), 0);

    let store = open(&path);
    assert_eq!(user_version(&path), 1);
    assert_eq!(store.count_by_type("turn.completed").unwrap(), 3);
    assert_eq!(store.events_for_turn("t1").unwrap().len(), 3);

    store.emit(event(10, "turn.completed", Some("t1")));
    store.flush().await.unwrap();
    let turn = store.events_for_turn("t1").unwrap();
    assert_eq!(turn.len(), 4);
    // Ordered by id: the old rows sort first.
    assert_eq!(turn[0].id, "00OLD0");
    assert_eq!(turn[3].actor, "agent");
}

#[test]
fn a_database_from_a_newer_binary_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 2;")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();

    let err = SqliteTraceStore::open(&path, WriterOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            TraceError::TooNew {
                found: 2,
                supported: 1
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade metis"), "{err}");

    assert_eq!(std::fs::read(&path).unwrap(), before, "file was modified");
    assert_eq!(schema_version(&path).unwrap(), 2);
    let conn = Connection::open(&path).unwrap();
    let events_tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(events_tables, 0, "schema was applied to a refused file");
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let text = "this is a keys.json, not a database\n".repeat(40);
    std::fs::write(&path, &text).unwrap();

    let err = SqliteTraceStore::open(&path, WriterOptions::default()).unwrap_err();
    assert!(matches!(err, TraceError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().contains("is not a SQLite database"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    let err = schema_version(&path).unwrap_err();
    assert!(
        err.to_string().contains("is not a SQLite database"),
        "{err}"
    );
    let err = TraceReader::open(&dir.path().join("missing.db")).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn ten_thousand_events_are_all_present_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    for i in 0..10_000 {
        let ty = if i % 2 == 0 {
            "llm.call_completed"
        } else {
            "route.decided"
        };
        store.emit(event(i, ty, Some(&format!("turn{}", i / 100))));
    }
    store.flush().await.unwrap();

    let stats = store.stats();
    assert_eq!(stats.accepted, 10_000);
    assert_eq!(stats.written, 10_000);
    assert_eq!((stats.overflowed, stats.failed, stats.queued), (0, 0, 0));
    assert_eq!(store.reader().count_all().unwrap(), 10_000);
    assert_eq!(store.count_by_type("route.decided").unwrap(), 5_000);
    let turn = store.events_for_turn("turn42").unwrap();
    assert_eq!(turn.len(), 100);
    assert!(turn.windows(2).all(|w| w[0].id < w[1].id));
    let completed = store.events_of_type("llm.call_completed").unwrap();
    assert_eq!(completed.len(), 5_000);
    assert_eq!(completed[0].sensitivity, "pseudonymous");
    assert_eq!(
        completed[0].payload_json,
        r#"{"gateway_key_id":"gk_0","n":0}"#
    );
    let page = store
        .reader()
        .events_for_session("gw_session", Some(&completed[0].id), Some(3))
        .unwrap();
    assert_eq!(page.len(), 3);
    assert!(page[0].id > completed[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_counts_overflow_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let opts = WriterOptions {
        queue_capacity: 16,
        max_batch: 4,
        ..WriterOptions::default()
    };
    let store = Arc::new(SqliteTraceStore::open(&path, opts).unwrap());

    // Another connection holds the write lock, so the writer stalls on its first batch.
    let blocker = Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    let emitted = 200_u64;
    let started = Instant::now();
    for i in 0..emitted {
        store.emit(event(i, "llm.call_completed", None));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "emit blocked on a stalled writer"
    );
    let stats = store.stats();
    assert!(stats.overflowed > 0, "{stats:?}");
    assert_eq!(stats.accepted + stats.overflowed, emitted, "{stats:?}");
    // At most the queue plus one batch in the writer's hands.
    assert!(stats.accepted <= 16 + 4 + 1, "{stats:?}");

    // A flush issued while the queue is full is queued anyway (never dropped like an event)
    // and answered once everything before it is committed.
    let flusher = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.flush().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!flusher.is_finished());
    blocker.execute_batch("COMMIT").unwrap();
    flusher.await.unwrap().unwrap();

    let stats = store.stats();
    assert_eq!(stats.written, stats.accepted, "{stats:?}");
    assert_eq!(stats.failed, 0);
    assert_eq!(store.reader().count_all().unwrap(), stats.accepted);
    assert!(store.is_writable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_keeps_failing_is_counted_and_the_store_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let opts = WriterOptions {
        busy_timeout: Duration::from_millis(20),
        retry_attempts: 3,
        retry_backoff: Duration::from_millis(5),
        ..WriterOptions::default()
    };
    let store = SqliteTraceStore::open(&path, opts).unwrap();
    let blocker = Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    store.emit(event(1, "llm.call_completed", None));
    store.emit(event(2, "llm.call_completed", None));
    let err = store.flush().await.unwrap_err();
    assert!(err.to_string().contains("could not be written"), "{err}");
    let stats = store.stats();
    assert_eq!((stats.accepted, stats.written, stats.failed), (2, 0, 2));
    assert_eq!(stats.queued, 0);
    assert!(!store.is_writable());

    blocker.execute_batch("COMMIT").unwrap();
    store.emit(event(3, "llm.call_completed", None));
    store.flush().await.unwrap();
    assert!(store.is_writable());
    assert_eq!(store.stats().written, 1);
    assert_eq!(store.reader().count_all().unwrap(), 1);
}

#[tokio::test]
async fn a_rejected_row_does_not_sink_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    store.emit(event(1, "llm.call_completed", None));
    store.emit(event(1, "llm.call_completed", None)); // duplicate primary key
    store.emit(event(2, "llm.call_completed", None));
    assert!(store.flush().await.is_err());
    let stats = store.stats();
    assert_eq!((stats.written, stats.failed), (2, 1), "{stats:?}");
    assert!(store.is_writable());
    store.flush().await.unwrap();
}

#[test]
fn close_drains_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    for i in 0..5_000 {
        store.emit(event(i, "route.decided", None));
    }
    let stats = store.close();
    assert_eq!(stats.written, 5_000, "{stats:?}");
    assert_eq!(stats.queued, 0);
    assert_eq!(
        TraceReader::open(&path).unwrap().count_all().unwrap(),
        5_000
    );
}

#[test]
fn dropping_the_store_drains_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    for i in 0..2_000 {
        store.emit(event(i, "route.decided", None));
    }
    drop(store);
    assert_eq!(
        TraceReader::open(&path).unwrap().count_all().unwrap(),
        2_000
    );
}

#[tokio::test]
async fn after_shutdown_events_are_counted_as_failed_and_flush_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    store.emit(event(1, "route.decided", None));
    let stats = store.shutdown().await;
    assert_eq!(stats.written, 1);
    assert!(!store.is_writable());

    store.emit(event(2, "route.decided", None));
    let stats = store.stats();
    assert_eq!((stats.accepted, stats.failed), (1, 1));
    assert!(matches!(
        store.flush().await,
        Err(TraceError::Unavailable(_))
    ));
    // Idempotent.
    assert_eq!(store.shutdown().await.written, 1);
}

#[test]
fn emit_works_from_plain_threads_without_a_runtime() {
    // `emit` is a plain `try_send`: callable from any thread, with or without tokio.
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Arc::new(open(&path));
    let handles: Vec<_> = (0..4_u64)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..500 {
                    store.emit(event(t * 1_000 + i, "route.decided", None));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    wait_for("all events written", || store.stats().written == 2_000);
    assert_eq!(store.reader().count_all().unwrap(), 2_000);
}

/// The commit deadline holds under a sustained load: 20,000 events, 100 every 5 ms, into a
/// writer whose linger alone (5 s) would keep each event uncommitted for seconds. The
/// writer's own accounting (the `/metrics` commit-lag series) must show every batch
/// committed within the 50 ms deadline plus a generous slack (1 s: an unoptimised build on a
/// loaded 2-core machine is descheduled for hundreds of milliseconds at times),
/// with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_deadline_holds_under_a_sustained_load() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let deadline = Duration::from_millis(50);
    let store = SqliteTraceStore::open(
        &db_path(&dir),
        WriterOptions {
            linger: Duration::from_secs(5),
            commit_deadline: deadline,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let mut next = tokio::time::Instant::now();
    for chunk in 0..200u64 {
        for i in 0..100 {
            store.emit(event(chunk * 100 + i, "route.decided", None));
        }
        next += Duration::from_millis(5);
        tokio::time::sleep_until(next).await;
    }
    store.flush().await.unwrap();
    let s = store.stats();
    assert_eq!((s.written, s.overflowed, s.failed), (20_000, 0, 0));
    let lag = s.commit_lag;
    eprintln!(
        "sqlite commit lag under load: {} batches, max {:.1} ms, mean {:.1} ms, {} past the {} ms deadline",
        lag.count,
        lag.max_us as f64 / 1e3,
        lag.sum_us as f64 / 1e3 / lag.count.max(1) as f64,
        lag.deadline_misses,
        deadline.as_millis()
    );
    assert_eq!(lag.deadline_us, 50_000);
    assert!(lag.count >= 10, "{lag:?}");
    assert_eq!(lag.buckets.iter().sum::<u64>(), lag.count);
    assert!(
        lag.max_us < 1_050_000,
        "a batch waited {} ms: the 5 s linger was not cut to the 50 ms deadline",
        lag.max_us / 1000
    );
    store.shutdown().await;
}
