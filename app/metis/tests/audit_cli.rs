//! `metis audit export` / `metis audit verify` through the real binary: determinism, refusal
//! to overwrite, window and type validation, CSV quoting, exit codes, and chain verification
//! after tampering with or deleting an audit row.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use metis_domain::events::{Actor, Event, Sensitivity};
use metis_ports::trace::EventSink;
use metis_storage_sqlite::{SqliteTraceStore, WriterOptions};
use rusqlite::{Connection, params};

/// 2026-05-01T00:00:00Z
const T0: i64 = 1_777_593_600_000_000;
const HOUR: i64 = 3_600_000_000;

fn metis(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metis"));
    for var in ["METIS_GATEWAY_DB_PATH", "METIS_GATEWAY_DATA_DIR"] {
        cmd.env_remove(var);
    }
    cmd.args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn ev(id: &str, ts: i64, ty: &'static str, payload: &str) -> Event {
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

/// Audit ids in chain order, as seeded.
fn audit_id(i: usize) -> String {
    format!("01AUDIT{i:019}")
}

/// A trace DB with five audit events one hour apart from `T0` (one with a name that needs
/// CSV quoting), plus non-audit events in between.
async fn seed(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("metis.db");
    let store = SqliteTraceStore::open(&path, WriterOptions::default()).unwrap();
    for i in 0..5 {
        let ts = T0 + i64::try_from(i).unwrap() * HOUR;
        let payload = if i == 2 {
            r#"{"gateway_key_id":"gk_2","name":"ops, \"night\" shift","workspace_path":"/srv/a"}"#
                .to_owned()
        } else {
            format!(r#"{{"gateway_key_id":"gk_{i}","name":"key-{i}","workspace_path":"/srv/a"}}"#)
        };
        store.emit(ev(&audit_id(i), ts, "gateway.key_issued", &payload));
        store.emit(ev(
            &format!("01CALL{i:020}"),
            ts + 1,
            "llm.call_completed",
            r#"{"cost_usd":0.1}"#,
        ));
    }
    store.flush().await.unwrap();
    store.shutdown().await;
    path
}

fn raw(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
    conn
}

fn export(db: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "audit",
        "export",
        out.to_str().unwrap(),
        "--db-path",
        db.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    metis(&args)
}

const WINDOW: [&str; 4] = [
    "--since",
    "2026-05-01T00:00:00Z",
    "--until",
    "2026-05-01T04:00:00+00:00",
];

#[tokio::test]
async fn an_export_of_the_same_window_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let db = seed(&dir).await;
    for format in ["jsonl", "csv"] {
        let a = dir.path().join(format!("out/a.{format}"));
        let b = dir.path().join(format!("out/b.{format}"));
        let mut flags = WINDOW.to_vec();
        flags.extend(["--format", format]);
        let first = export(&db, &a, &flags);
        assert_eq!(code(&first), 0, "{}", stderr(&first));
        let second = export(&db, &b, &flags);
        assert_eq!(code(&second), 0, "{}", stderr(&second));
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap(), "{format}");

        let out = stdout(&first);
        let expected = format!(
            "audit export complete\n  destination:  {}\n  format:       {format}\n  events:       4\n  window start: 2026-05-01T00:00:00+00:00\n  window end:   2026-05-01T04:00:00+00:00\n  bytes:        {}\n",
            a.display(),
            bytes.len()
        );
        assert_eq!(out, expected);
    }
    // JSONL: four audit events (the fifth is at `until`, excluded), in id order, no calls.
    let text = std::fs::read_to_string(dir.path().join("out/a.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(text.ends_with('\n'));
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["id"], audit_id(i));
        assert_eq!(v["type"], "gateway.key_issued");
        assert_eq!(v["payload"]["audit_seq"], i + 1);
    }
    assert!(lines[0].starts_with(&format!(
        r#"{{"id":"{}","timestamp":"2026-05-01T00:00:00+00:00","session_id":"system","turn_id":null,"parent_event_id":null,"type":"gateway.key_issued","actor":"system","sensitivity":"pseudonymous","payload":{{"gateway_key_id":"gk_0","name":"key-0""#,
        audit_id(0)
    )));
    // No temp files are left beside the exports.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[tokio::test]
async fn csv_fields_are_quoted_as_rfc_4180() {
    let dir = tempfile::tempdir().unwrap();
    let db = seed(&dir).await;
    let out = dir.path().join("a.csv");
    let mut flags = WINDOW.to_vec();
    flags.extend(["--format", "csv", "--type", "gateway.key_issued"]);
    let o = export(&db, &out, &flags);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains('\r'), "line ends must be \\n");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "id,timestamp,session_id,turn_id,parent_event_id,type,actor,sensitivity,payload_json"
    );
    assert_eq!(lines.len(), 5);
    let quoted = lines[3];
    assert!(
        quoted.starts_with(&format!(
            "{},2026-05-01T02:00:00+00:00,system,,,gateway.key_issued,system,pseudonymous,\"{{\"\"gateway_key_id\"\":\"\"gk_2\"\",\"\"name\"\":\"\"ops, \\\"\"night\\\"\" shift\"\"",
            audit_id(2)
        )),
        "{quoted}"
    );
    assert!(quoted.ends_with("}\""), "{quoted}");
}

#[tokio::test]
async fn an_existing_destination_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let db = seed(&dir).await;
    let out = dir.path().join("taken.jsonl");
    std::fs::write(&out, "precious\n").unwrap();
    let o = export(&db, &out, &WINDOW);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).starts_with("error: audit export destination already exists"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious\n");
    assert!(stdout(&o).is_empty());
}

#[tokio::test]
async fn bad_windows_and_types_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = seed(&dir).await;
    let out = dir.path().join("x.jsonl");

    let naive = export(&db, &out, &["--since", "2026-05-01T00:00:00"]);
    assert_eq!(code(&naive), 2, "{}", stderr(&naive));
    assert!(stderr(&naive).contains("timezone"), "{}", stderr(&naive));

    let empty = export(
        &db,
        &out,
        &[
            "--since",
            "2026-05-02T00:00:00Z",
            "--until",
            "2026-05-01T00:00:00Z",
        ],
    );
    assert_eq!(code(&empty), 2);
    assert!(
        stderr(&empty).contains("empty window"),
        "{}",
        stderr(&empty)
    );
    let same = export(
        &db,
        &out,
        &[
            "--since",
            "2026-05-01T00:00:00Z",
            "--until",
            "2026-05-01T02:00:00+02:00",
        ],
    );
    assert_eq!(code(&same), 2, "since == until (in UTC) is empty");

    let unknown = export(&db, &out, &["--type", "gateway.key_isued"]);
    assert_eq!(code(&unknown), 2);
    assert!(
        stderr(&unknown).contains("unknown event type(s): gateway.key_isued"),
        "{}",
        stderr(&unknown)
    );

    let format = export(&db, &out, &["--format", "xml"]);
    assert_eq!(code(&format), 2);
    assert!(!out.exists(), "a refused export wrote a file");

    // A known non-audit type is warned about and dropped; the export is then empty.
    let mut flags = WINDOW.to_vec();
    flags.extend(["--type", "llm.call_completed"]);
    let dropped = export(&db, &out, &flags);
    assert_eq!(code(&dropped), 0, "{}", stderr(&dropped));
    assert!(
        stderr(&dropped).contains("warning: ignoring non-audit event type(s): llm.call_completed"),
        "{}",
        stderr(&dropped)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"");
}

#[tokio::test]
async fn a_missing_database_is_a_runtime_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nope.db");
    let out = dir.path().join("x.jsonl");
    let o = export(&db, &out, &[]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    let v = metis(&["audit", "verify", "--db-path", db.to_str().unwrap()]);
    assert_eq!(code(&v), 1);
    assert!(stderr(&v).starts_with("error: "), "{}", stderr(&v));
    assert!(!db.exists());
    assert!(!out.exists());
}

#[tokio::test]
async fn verify_reports_an_intact_chain() {
    let dir = tempfile::tempdir().unwrap();
    let db = seed(&dir).await;
    let o = metis(&["audit", "verify", "--db-path", db.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "audit chain ok: 5 events\n");
    // `--data-dir` finds `<dir>/metis.db`.
    let o = metis(&[
        "audit",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(stdout(&o), "audit chain ok: 5 events\n");
}

#[tokio::test]
async fn verify_names_the_successor_of_a_modified_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = seed(&dir).await;
    raw(&db)
        .execute(
            "UPDATE events SET payload_json = json_set(payload_json, '$.name', 'innocent') \
             WHERE id = ?1",
            params![audit_id(1)],
        )
        .unwrap();
    let o = metis(&["audit", "verify", "--db-path", db.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).starts_with(&format!(
            "audit chain broken at event {} (seq 3): ",
            audit_id(2)
        )),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn verify_names_the_gap_left_by_a_deleted_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = seed(&dir).await;
    raw(&db)
        .execute("DELETE FROM events WHERE id = ?1", params![audit_id(3)])
        .unwrap();
    let o = metis(&["audit", "verify", "--db-path", db.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    let line = stdout(&o);
    assert!(
        line.starts_with(&format!(
            "audit chain broken at event {} (seq 4): audit_seq is 5, expected 4",
            audit_id(4)
        )),
        "{line}"
    );
}

#[test]
fn verify_never_stamps_or_changes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    raw(&db)
        .execute_batch(
            "CREATE TABLE events (id TEXT PRIMARY KEY, timestamp_us INTEGER NOT NULL, \
             session_id TEXT NOT NULL, turn_id TEXT, parent_event_id TEXT, type TEXT NOT NULL, \
             actor TEXT NOT NULL, sensitivity TEXT NOT NULL, payload_json TEXT NOT NULL);",
        )
        .unwrap();
    let before = std::fs::read(&db).unwrap();
    let o = metis(&["audit", "verify", "--db-path", db.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "audit chain ok: 0 events\n");
    assert_eq!(std::fs::read(&db).unwrap(), before);
}
