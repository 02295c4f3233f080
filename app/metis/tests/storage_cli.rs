//! The storage commands through the real binary: `backup`/`restore` blocks and exit codes,
//! `trace migrate|prune|status`, `sessions list|show`, `patterns rebuild|stats|migrate`, and
//! the refusal of a database written by a newer binary by every command.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use metis_domain::events::{Event, make_event};
use metis_domain::patterns::{FingerprintInputs, PatternCaps, PatternRecorded, StructuralFeatures};
use metis_domain::sessions::{SessionId, SessionLink, SessionTurn};
use metis_ports::sessions::SessionStore;
use metis_ports::storage::PatternFiles;
use metis_ports::trace::EventSink;
use metis_storage_sqlite::patterns::{PatternPlace, SqlitePatternStore};
use metis_storage_sqlite::{SqliteTraceStore, TRACE_SCHEMA_VERSION, TraceReader, WriterOptions};
use rusqlite::Connection;

/// 2026-05-01T00:00:00Z
const T0: i64 = 1_777_593_600_000_000;

fn metis(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metis"));
    for var in [
        "METIS_GATEWAY_DB_PATH",
        "METIS_GATEWAY_DATA_DIR",
        "METIS_GATEWAY_PATTERNS_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn call(i: u64, ts: i64) -> Event {
    Event {
        id: format!("01CLI{i:021}"),
        timestamp_us: ts,
        session_id: "s".into(),
        turn_id: None,
        parent_event_id: None,
        event_type: "llm.call_completed",
        actor: metis_domain::events::Actor::Agent,
        sensitivity: metis_domain::events::Sensitivity::Pseudonymous,
        payload_json: r#"{"cost_usd":0.01}"#.into(),
    }
}

async fn seeded(dir: &Path, n: u64) -> PathBuf {
    let db = dir.join("metis.db");
    let store = SqliteTraceStore::open(&db, WriterOptions::default()).unwrap();
    for i in 0..n {
        store.emit(call(i, T0 + i64::try_from(i).unwrap()));
    }
    store.flush().await.unwrap();
    store.shutdown().await;
    db
}

#[tokio::test]
async fn backup_and_restore_print_their_blocks_and_refuse_unsafe_cases() {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path(), 3).await;
    let dest = dir.path().join("snap/pre-upgrade.db");
    let o = metis(&["backup", s(&dest), "--db-path", s(&db)]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let block = out(&o);
    assert_eq!(
        std::fs::read_to_string(format!("{}.meta", s(&dest))).unwrap(),
        block
    );
    let lines: Vec<&str> = block.lines().collect();
    assert_eq!(lines[0], "backup complete");
    assert_eq!(lines[1], format!("  source:         {}", s(&db)));
    assert_eq!(lines[2], format!("  destination:    {}", s(&dest)));
    assert_eq!(
        lines[4],
        format!("  schema version: {TRACE_SCHEMA_VERSION}")
    );
    assert_eq!(lines[5], "  events:         3");
    assert_eq!(lines[6], "  oldest event:   2026-05-01T00:00:00+00:00");
    assert_eq!(
        lines[7],
        "  newest event:   2026-05-01T00:00:00.000002+00:00"
    );
    assert!(lines[8].starts_with("  sha256:         ") && lines[8].len() == 18 + 64);

    let again = metis(&["backup", s(&dest), "--db-path", s(&db)]);
    assert_eq!(code(&again), 1);
    assert!(
        err(&again).starts_with("error: backup failed: "),
        "{}",
        err(&again)
    );

    let target = dir.path().join("restored.db");
    std::fs::write(&target, b"old").unwrap();
    let refused = metis(&["restore", s(&dest), "--db-path", s(&target)]);
    assert_eq!(code(&refused), 1);
    assert!(err(&refused).contains("--force"), "{}", err(&refused));
    assert_eq!(std::fs::read(&target).unwrap(), b"old");

    let ok = metis(&["restore", s(&dest), "--db-path", s(&target), "--force"]);
    assert_eq!(code(&ok), 0, "{}", err(&ok));
    assert_eq!(
        out(&ok),
        format!(
            "restore complete\n  source:         {}\n  destination:    {}\n  bytes:          {}\n  \
             schema version: {TRACE_SCHEMA_VERSION}\n  events:         3\n",
            s(&dest),
            s(&target),
            std::fs::metadata(&dest).unwrap().len()
        )
    );
    // The runbook's check works on the restored file.
    let c = Connection::open(&target).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let n: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM events WHERE timestamp_us > 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((v, n), (TRACE_SCHEMA_VERSION, 3));
}

#[tokio::test]
async fn every_command_refuses_a_database_from_a_newer_binary() {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path(), 2).await;
    let backup = dir.path().join("b.db");
    assert_eq!(
        code(&metis(&["backup", s(&backup), "--db-path", s(&db)])),
        0
    );
    let newer = TRACE_SCHEMA_VERSION + 1;
    for f in [&db, &backup] {
        Connection::open(f)
            .unwrap()
            .pragma_update(None, "user_version", newer)
            .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let d = s(&db);
    let target = dir.path().join("t.db");
    let x = dir.path().join("x.db");
    let cmds: Vec<Vec<&str>> = vec![
        vec!["backup", s(&x), "--db-path", d],
        vec!["trace", "status", "--db-path", d],
        vec!["trace", "prune", "--db-path", d],
        vec!["trace", "prune", "--dry-run", "--db-path", d],
        vec!["trace", "vacuum", "--db-path", d],
        vec!["trace", "migrate", "--db-path", d],
        vec!["trace", "migrate", "--dry-run", "--db-path", d],
        vec!["sessions", "list", "--db-path", d],
        vec!["sessions", "show", "x", "--db-path", d],
        vec!["sessions", "migrate", "--db-path", d],
    ];
    for args in cmds {
        let o = metis(&args);
        assert_eq!(code(&o), 1, "{args:?}: {}", out(&o));
        assert!(
            err(&o).contains("newer than this binary supports"),
            "{args:?}: {}",
            err(&o)
        );
    }
    let o = metis(&["restore", s(&backup), "--db-path", s(&target)]);
    assert_eq!(code(&o), 1);
    assert!(
        err(&o).contains(&format!("schema version {newer}")),
        "{}",
        err(&o)
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn trace_migrate_dry_run_then_apply_with_a_backup_first() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metis.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA foreign_keys=OFF;
         CREATE TABLE events (id TEXT PRIMARY KEY, timestamp_us INTEGER NOT NULL,
            session_id TEXT NOT NULL, turn_id TEXT, parent_event_id TEXT, type TEXT NOT NULL,
            actor TEXT NOT NULL, sensitivity TEXT NOT NULL, payload_json TEXT NOT NULL);
         INSERT INTO events VALUES ('01A', 1, 's', NULL, NULL, 'x', 'agent', 'private', '{}');
         INSERT INTO events VALUES ('01B', 2, 's', NULL, NULL, 'x', 'agent', 'private', '{}');",
    )
    .unwrap();
    drop(c);
    let dry = metis(&["trace", "migrate", "--dry-run", "--db-path", s(&db)]);
    assert_eq!(code(&dry), 0, "{}", err(&dry));
    let text = out(&dry);
    assert!(
        text.starts_with("trace migrate (dry run: nothing changed)\n"),
        "{text}"
    );
    assert!(
        text.contains("  current version: 0\n  target version:  1\n"),
        "{text}"
    );
    assert!(
        text.contains("    1. create index idx_events_session_id\n"),
        "{text}"
    );
    assert!(
        text.contains(". set PRAGMA user_version 0 -> 1\n"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "a dry run writes nothing"
    );

    let applied = metis(&["trace", "migrate", "--db-path", s(&db)]);
    assert_eq!(code(&applied), 0, "{}", err(&applied));
    let text = out(&applied);
    assert!(text.starts_with("trace migrate complete\n"), "{text}");
    let backup_line = text.lines().find(|l| l.starts_with("  backup:")).unwrap();
    let backup = PathBuf::from(backup_line.trim_start_matches("  backup:").trim());
    assert!(backup.is_file(), "{text}");
    assert!(backup.to_str().unwrap().contains("metis.db.pre-migrate-"));
    assert_eq!(
        Connection::open(&backup)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        0,
        "the backup is the file before the migration"
    );
    assert_eq!(TraceReader::open(&db).unwrap().count_all().unwrap(), 2);
    let again = metis(&["trace", "migrate", "--db-path", s(&db)]);
    assert!(
        out(&again).contains("none (already at version 1)"),
        "{}",
        out(&again)
    );
}

#[tokio::test]
async fn prune_records_a_chained_trace_swept_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded(dir.path(), 10).await;
    let o = metis(&["trace", "prune", "--days", "30", "--db-path", s(&db)]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let text = out(&o);
    assert!(
        text.starts_with("trace prune complete (dry_run=false)\n"),
        "{text}"
    );
    assert!(text.contains("  rows_deleted:          10\n"), "{text}");
    assert!(
        text.contains("  oldest_kept_timestamp: \u{2014}\n"),
        "{text}"
    );
    let reader = TraceReader::open(&db).unwrap();
    let swept = reader.events_of_type("trace.swept").unwrap();
    assert_eq!(swept.len(), 1);
    let p: serde_json::Value = serde_json::from_str(&swept[0].payload_json).unwrap();
    assert_eq!(p["rows_deleted"], 10);
    assert_eq!(p["rows_audit_exempt"], 0);
    assert_eq!(p["dry_run"], false);
    assert_eq!(p["audit_seq"], 1);
    assert_eq!(swept[0].session_id, "system");
    assert!(p["cutoff_timestamp"].as_str().unwrap().ends_with("+00:00"));
    assert!(reader.verify_audit_chain().unwrap().is_ok());
    let status = metis(&["trace", "status", "--db-path", s(&db)]);
    assert!(
        out(&status).contains("  events:            1\n"),
        "{}",
        out(&status)
    );
}

#[tokio::test]
async fn sessions_list_and_show_the_worker_tree() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metis.db");
    let store = SqliteTraceStore::open(&db, WriterOptions::default()).unwrap();
    let sessions = store.session_store().unwrap();
    let id = |x: &str| SessionId::parse(x).unwrap();
    let turn = |sid: &str, parent: Option<&str>, cost: f64, at: i64| {
        let link = SessionLink {
            session_id: id(sid),
            parent_session_id: parent.map(id),
            parent_tool_use_id: parent.map(|_| "toolu_9".to_owned()),
            is_worker: parent.is_some(),
        };
        SessionTurn::new(&link, "/srv/ws", Some("mock:echo"), cost, at)
    };
    sessions
        .record_turn(turn("agent-1", None, 0.5, T0))
        .unwrap();
    sessions
        .record_turn(turn("worker-a", Some("agent-1"), 0.25, T0 + 1))
        .unwrap();
    sessions
        .record_turn(turn("worker-b", Some("agent-1"), 0.125, T0 + 2))
        .unwrap();
    sessions
        .record_turn(turn("worker-a1", Some("worker-a"), 0.0625, T0 + 3))
        .unwrap();
    sessions.flush().await.unwrap();
    store.shutdown().await;

    let list = metis(&["sessions", "list", "--db-path", s(&db)]);
    assert_eq!(code(&list), 0, "{}", err(&list));
    let text = out(&list);
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        text.lines().nth(1).unwrap().starts_with("worker-a1"),
        "{text}"
    );
    let limited = metis(&[
        "sessions",
        "list",
        "--limit",
        "1",
        "--format",
        "json",
        "--db-path",
        s(&db),
    ]);
    let v: serde_json::Value = serde_json::from_str(out(&limited).trim()).unwrap();
    assert_eq!(v["id"], "worker-a1");
    assert_eq!(v["parent_session_id"], "worker-a");

    let show = metis(&["sessions", "show", "agent-1", "--db-path", s(&db)]);
    assert_eq!(code(&show), 0, "{}", err(&show));
    let text = out(&show);
    assert!(text.starts_with("session agent-1\n"), "{text}");
    assert!(text.contains("  tree cost_usd:   0.937500\n"), "{text}");
    assert!(
        text.contains("agent-1  turns=1 cost=0.500000 total=0.937500"),
        "{text}"
    );
    assert!(
        text.contains("\u{251c}\u{2500}\u{2500} worker-a  turns=1 cost=0.250000 total=0.312500"),
        "{text}"
    );
    assert!(
        text.contains("\u{2502}   \u{2514}\u{2500}\u{2500} worker-a1"),
        "{text}"
    );
    assert!(text.contains("[worker, tool_use toolu_9]"), "{text}");

    let missing = metis(&["sessions", "show", "nobody", "--db-path", s(&db)]);
    assert_eq!(code(&missing), 1);
    assert!(err(&missing).contains("session nobody not found"));
}

fn features(text: &str, tokens: u64, ws: &str, tools: &[String]) -> StructuralFeatures {
    StructuralFeatures::compute(&FingerprintInputs {
        user_text: text,
        workspace_path: ws,
        estimated_input_tokens: tokens,
        has_tool_calls_in_history: tokens.is_multiple_of(2),
        tool_names: tools,
        ..FingerprintInputs::default()
    })
}

#[tokio::test]
async fn patterns_rebuild_from_the_trace_equals_the_live_projection() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("workspace");
    std::fs::create_dir(&ws).unwrap();
    let ws = ws.to_str().unwrap().to_owned();
    let db = dir.path().join("metis.db");
    let trace = SqliteTraceStore::open(&db, WriterOptions::default()).unwrap();
    let live = SqlitePatternStore::new(
        PatternPlace::Dir(dir.path().join("live")),
        PatternCaps::default(),
    );
    let texts = [
        "fix this failing test",
        "refactor the parser",
        "hello",
        "write the docs",
    ];
    let models = ["anthropic:claude-haiku-4-5", "openai:gpt-4o-mini"];
    let tools = ["bash".to_owned(), "read_file".to_owned()];
    // What the gateway does per completed turn: emit `pattern.recorded`, record live with the
    // event's timestamp.
    for i in 0..60u64 {
        let at = T0 + i64::try_from(i).unwrap() * 1_000_000;
        let t = usize::try_from(i).unwrap();
        let (workspace, tools) = if i % 10 == 9 {
            ("/elsewhere", &[][..])
        } else {
            (ws.as_str(), &tools[..])
        };
        let p = PatternRecorded::new(
            features(texts[t % texts.len()], 500 * i, workspace, tools),
            workspace,
            models[t % 2],
            0.000_1 * i as f64,
            100.0 + i as f64,
            Some("builtin-2026-05"),
        );
        trace.emit(make_event(
            format!("01PAT{i:021}"),
            at,
            "sess",
            Some("turn"),
            None,
            &p,
        ));
        if workspace == ws {
            live.record(&ws, &p.to_record(at).unwrap()).unwrap();
        }
    }
    trace.flush().await.unwrap();
    trace.shutdown().await;

    let rebuilt_dir = dir.path().join("rebuilt");
    let o = metis(&[
        "patterns",
        "rebuild",
        "--workspace",
        &ws,
        "--patterns-dir",
        s(&rebuilt_dir),
        "--db-path",
        s(&db),
    ]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let text = out(&o);
    assert!(text.contains("  events read:     54\n"), "{text}");
    assert!(text.contains("  records applied: 54\n"), "{text}");

    let rebuilt = SqlitePatternStore::new(
        PatternPlace::Dir(rebuilt_dir.clone()),
        PatternCaps::default(),
    );
    let a = live.outcomes(&ws).unwrap();
    let b = rebuilt.outcomes(&ws).unwrap();
    assert!(!a.is_empty());
    assert_eq!(a, b, "rebuild equals live");
    assert_eq!(
        live.stats(&ws)
            .unwrap()
            .map(|s| (s.fingerprints, s.outcomes, s.samples)),
        rebuilt
            .stats(&ws)
            .unwrap()
            .map(|s| (s.fingerprints, s.outcomes, s.samples))
    );

    // Rebuilding again gives the same store (idempotent), and stats show it.
    let o = metis(&[
        "patterns",
        "rebuild",
        "--workspace",
        &ws,
        "--patterns-dir",
        s(&rebuilt_dir),
        "--db-path",
        s(&db),
    ]);
    assert_eq!(code(&o), 0);
    rebuilt.forget(&ws);
    assert_eq!(rebuilt.outcomes(&ws).unwrap(), a);
    let st = metis(&[
        "patterns",
        "stats",
        "--workspace",
        &ws,
        "--patterns-dir",
        s(&rebuilt_dir),
    ]);
    assert_eq!(code(&st), 0, "{}", err(&st));
    assert!(out(&st).contains("  samples:         54\n"), "{}", out(&st));
    assert!(
        out(&st).contains("anthropic:claude-haiku-4-5"),
        "{}",
        out(&st)
    );
}

#[test]
fn patterns_migrate_backs_up_then_migrates_a_v1_store() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().to_str().unwrap().to_owned();
    let path = dir.path().join(".metis/patterns.db");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE fingerprints (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
                structural_json TEXT NOT NULL, structural_sig TEXT NOT NULL,
                created_at_us INTEGER NOT NULL, UNIQUE(structural_sig));
             CREATE TABLE outcomes (fingerprint_id TEXT NOT NULL, primary_model TEXT NOT NULL,
                sample_size INTEGER NOT NULL, success_score_mean REAL NOT NULL,
                success_score_count INTEGER NOT NULL, sum_cost_usd_micros INTEGER NOT NULL,
                sum_latency_ms REAL NOT NULL, pricing_version_last TEXT NOT NULL,
                last_updated_at_us INTEGER NOT NULL, PRIMARY KEY (fingerprint_id, primary_model));
             CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO store_meta VALUES ('schema_version', '1');
             INSERT INTO fingerprints VALUES ('fp1', 'structural', '{}', 'sig1', 1);
             INSERT INTO outcomes VALUES ('fp1', 'm', 4, 0, 0, 40, 4.0, 'v0', 1);",
        )
        .unwrap();
    let dry = metis(&["patterns", "migrate", "--workspace", &ws, "--dry-run"]);
    assert_eq!(code(&dry), 0, "{}", err(&dry));
    assert!(
        out(&dry).contains("  current version: 1\n  target version:  2\n"),
        "{}",
        out(&dry)
    );
    assert!(
        out(&dry).contains("rebuild table fingerprints"),
        "{}",
        out(&dry)
    );
    let applied = metis(&["patterns", "migrate", "--workspace", &ws]);
    assert_eq!(code(&applied), 0, "{}", err(&applied));
    let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("patterns.db.pre-migrate-") && n.ends_with("Z.db")),
        "{names:?}"
    );
    let again = metis(&["patterns", "migrate", "--workspace", &ws]);
    assert!(
        out(&again).contains("none (already at version 2)"),
        "{}",
        out(&again)
    );
    let st = metis(&["patterns", "stats", "--workspace", &ws]);
    assert!(out(&st).contains("  samples:         4\n"), "{}", out(&st));
}

// ---------------------------------------------------------------------------------------------
// Restore refusals leave the target byte-identical, on both backends
// ---------------------------------------------------------------------------------------------

/// The bytes of the target and of its `-wal`/`-shm` (`None`: absent).
fn target_bytes(db: &Path) -> Vec<Option<Vec<u8>>> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| std::fs::read(format!("{}{suffix}", s(db))).ok())
        .collect()
}

/// A copy of `src` as `name` in `dir`, changed by `damage`, without a `.meta`.
fn damaged_copy(src: &Path, dir: &Path, name: &str, damage: impl FnOnce(&Path)) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(src, &p).unwrap();
    damage(&p);
    p
}

fn truncate_4k(p: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 4096).unwrap();
}

/// Overwrite 4 KiB in the middle of the file (page-aligned) with a pattern.
fn scribble_middle(p: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    let len = f.metadata().unwrap().len();
    f.seek(SeekFrom::Start((len / 2) & !4095)).unwrap();
    f.write_all(&[0xA5; 4096]).unwrap();
}

/// `metis restore <src> --db-path <target> --force` must fail naming `why`, with the target
/// and its side files unchanged to the byte.
fn assert_refused_untouched(store: &str, src: &Path, target: &Path, why: &str) {
    let before = target_bytes(target);
    let o = metis(&[
        "restore",
        s(src),
        "--db-path",
        s(target),
        "--force",
        "--store",
        store,
    ]);
    assert_eq!(
        code(&o),
        1,
        "{store}: {} must be refused: {}{}",
        s(src),
        out(&o),
        err(&o)
    );
    assert!(
        err(&o).starts_with("error: restore failed: ") && err(&o).contains(why),
        "{store}: {} refused for the wrong reason (want {why:?}): {}",
        s(src),
        err(&o)
    );
    assert!(
        target_bytes(target) == before,
        "{store}: refusing {} changed the target or its -wal/-shm",
        s(src)
    );
}

fn redb_seeded(path: &Path, n: u64) -> metis_storage_redb::RedbTraceStore {
    let store =
        metis_storage_redb::RedbTraceStore::open(path, metis_storage_redb::RedbOptions::default())
            .unwrap();
    for i in 0..n {
        store.emit(call(i, T0 + i64::try_from(i).unwrap()));
    }
    store
}

/// The damaged backups of `good` (made by `metis backup`) that every backend must refuse.
fn refusal_cases(store: &str, good: &Path, dir: &Path, target: &Path) {
    let truncated = damaged_copy(good, dir, "truncated.bak", truncate_4k);
    assert_refused_untouched(store, &truncated, target, "damaged");
    let corrupt = damaged_copy(good, dir, "corrupt.bak", scribble_middle);
    assert_refused_untouched(store, &corrupt, target, "damaged");
    // Intact backup, `.meta` with another checksum.
    let meta = std::fs::read_to_string(format!("{}.meta", s(good))).unwrap();
    let sha = meta
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256:"))
        .unwrap()
        .trim()
        .to_owned();
    let mismatched = damaged_copy(good, dir, "mismatch.bak", |_| {});
    std::fs::write(
        format!("{}.meta", s(&mismatched)),
        meta.replace(&sha, &"0".repeat(64)),
    )
    .unwrap();
    assert_refused_untouched(store, &mismatched, target, "checksum mismatch");
    // `.meta` naming another schema version.
    let other_schema = damaged_copy(good, dir, "schema.bak", |_| {});
    std::fs::write(
        format!("{}.meta", s(&other_schema)),
        meta.replace(
            &format!("schema version: {TRACE_SCHEMA_VERSION}"),
            "schema version: 99",
        ),
    )
    .unwrap();
    assert_refused_untouched(store, &other_schema, target, "schema version");
}

#[tokio::test]
async fn sqlite_restore_refusals_leave_the_target_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let source = seeded(dir.path(), 2000).await;
    let good = dir.path().join("good.bak");
    let o = metis(&["backup", s(&good), "--db-path", s(&source)]);
    assert_eq!(code(&o), 0, "{}", err(&o));

    // The target is live (an open writer with a WAL and shared memory file).
    let target = dir.path().join("target.db");
    let writer = SqliteTraceStore::open(&target, WriterOptions::default()).unwrap();
    for i in 0..50 {
        writer.emit(call(10_000 + i, T0));
    }
    writer.flush().await.unwrap();
    assert!(
        target_bytes(&target).iter().all(Option::is_some),
        "-wal and -shm exist"
    );
    refusal_cases("sqlite", &good, dir.path(), &target);
    // A backup stamped by another binary.
    let stamped = damaged_copy(&good, dir.path(), "stamped.bak", |p| {
        Connection::open(p)
            .unwrap()
            .execute_batch("PRAGMA user_version = 2")
            .unwrap();
    });
    assert_refused_untouched("sqlite", &stamped, &target, "schema version 2");
    writer.shutdown().await;
    drop(writer);

    // A gateway holds the target (its shared writer lock).
    let gateway = SqliteTraceStore::open(
        &target,
        WriterOptions {
            hold_writer_lock: true,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    gateway.emit(call(20_000, T0));
    gateway.flush().await.unwrap();
    assert_refused_untouched("sqlite", &good, &target, "running gateway");
    gateway.shutdown().await;
    drop(gateway);

    // The intact backup is restored and opens.
    let o = metis(&["restore", s(&good), "--db-path", s(&target), "--force"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let reopened = SqliteTraceStore::open(&target, WriterOptions::default()).unwrap();
    assert_eq!(reopened.count_by_type("llm.call_completed").unwrap(), 2000);
}

#[tokio::test]
async fn redb_restore_refusals_leave_the_target_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.redb");
    let seed = redb_seeded(&source, 2000);
    seed.flush().await.unwrap();
    seed.shutdown().await;
    drop(seed);
    let good = dir.path().join("good.bak");
    let o = metis(&[
        "backup",
        s(&good),
        "--db-path",
        s(&source),
        "--store",
        "redb",
    ]);
    assert_eq!(code(&o), 0, "{}", err(&o));

    let target = dir.path().join("target.redb");
    let t = redb_seeded(&target, 50);
    t.flush().await.unwrap();
    t.shutdown().await;
    drop(t);
    refusal_cases("redb", &good, dir.path(), &target);
    let stamped = damaged_copy(&good, dir.path(), "stamped.bak", |p| {
        metis_storage_redb::stamp_schema_version(p, 2).unwrap();
    });
    assert_refused_untouched("redb", &stamped, &target, "schema version 2");

    // A gateway has the target open (shared multi-process mode, as `metis gateway` does).
    let gateway = metis_storage_redb::RedbTraceStore::open(
        &target,
        metis_storage_redb::RedbOptions::default(),
    )
    .unwrap();
    gateway.emit(call(30_000, T0));
    gateway.flush().await.unwrap();
    assert_refused_untouched("redb", &good, &target, "running gateway");
    gateway.shutdown().await;
    drop(gateway);

    // The intact backup is restored and opens the way the gateway opens it.
    let o = metis(&[
        "restore",
        s(&good),
        "--db-path",
        s(&target),
        "--force",
        "--store",
        "redb",
    ]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("events:         2000"), "{}", out(&o));
    let reopened = metis_storage_redb::RedbTraceStore::open(
        &target,
        metis_storage_redb::RedbOptions::default(),
    )
    .unwrap();
    let db = reopened.database().unwrap();
    assert_eq!(metis_storage_redb::query::event_span(&db).unwrap().0, 2000);
}
