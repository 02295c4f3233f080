//! The real `metis` binary on PostgreSQL (`--store postgres --database-url …`, a fresh
//! database of the server named by `METIS_TEST_DATABASE_URL`): a gateway with `--keystore
//! store` serves; a CLI process issues a key into the same database while it runs and the
//! gateway serves it; `trace status|migrate|prune`, `sessions list`, `audit export|verify`
//! read the database; `backup` writes a snapshot while the gateway runs; `migrate-store` copies the store to
//! SQLite and from SQLite into another database, the audit chain verifying on every side.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use metis_storage_postgres::ScratchDatabase;
use metis_tests::process::{CliOutput, GatewayProcess, metis};
use serde_json::json;

fn scratch() -> ScratchDatabase {
    ScratchDatabase::from_env().expect("a scratch database")
}

/// `--data-dir D --store postgres --database-url URL` (the storage commands' flags).
fn db_args(dir: &Path, db: &ScratchDatabase) -> Vec<String> {
    vec![
        "--data-dir".into(),
        dir.display().to_string(),
        "--store".into(),
        "postgres".into(),
        "--database-url".into(),
        db.url().to_owned(),
    ]
}

/// `--data-dir D --database-url URL` (`migrate-store`: `--from`/`--to` name the engines).
fn copy_args(dir: &Path, db: &ScratchDatabase) -> Vec<String> {
    vec![
        "--data-dir".into(),
        dir.display().to_string(),
        "--database-url".into(),
        db.url().to_owned(),
    ]
}

/// [`db_args`] and `--keystore store` (the gateway's and the key commands' flags).
fn storage(dir: &Path, db: &ScratchDatabase) -> Vec<String> {
    let mut v = db_args(dir, db);
    v.extend(["--keystore".into(), "store".into()]);
    v
}

fn run(args: &[&str], tail: &[String]) -> CliOutput {
    let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    all.extend(tail.iter().cloned());
    metis(&all).unwrap()
}

fn ok(out: CliOutput) -> CliOutput {
    assert_eq!(out.code(), 0, "{}", out.describe());
    out
}

fn issue(dir: &Path, db: &ScratchDatabase, name: &str) -> (String, String) {
    let out = ok(run(
        &[
            "gateway",
            "issue-key",
            "--name",
            name,
            "--workspace",
            "/srv/ws",
        ],
        &storage(dir, db),
    ));
    (out.field("key_id").unwrap(), out.field("token").unwrap())
}

async fn chat(url: &str, token: &str, session: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(token)
        .header("x-metis-session-id", session)
        .json(&json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_gateway_and_the_storage_commands_share_one_database() {
    let db = scratch();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, first) = issue(d, &db, "first");
    let mut args = storage(d, &db);
    args.extend(["--port".into(), "0".into(), "--enable-mock-provider".into()]);
    let mut gw = GatewayProcess::spawn_async(args, Vec::new()).await.unwrap();
    assert!(
        gw.boot.line.contains("store=postgres:postgres://") && gw.boot.line.contains(db.name()),
        "{}",
        gw.boot.line
    );
    assert_eq!(chat(&gw.url, &first, "sess-1").await, 200);

    // Another process writes a key into the database the gateway serves from.
    let (_, second) = issue(d, &db, "second");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = chat(&gw.url, &second, "sess-2").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "new key not live: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let status = ok(run(&["trace", "status"], &db_args(d, &db)));
    assert!(
        status
            .stdout
            .contains("schema version:    1 (this binary: 1)")
            && status.stdout.contains(db.name()),
        "{}",
        status.stdout
    );
    let events: u64 = status.field("  events").unwrap().parse().unwrap();
    assert!(events >= 4, "{}", status.stdout);
    let plan = ok(run(&["trace", "migrate", "--dry-run"], &db_args(d, &db)));
    assert!(
        plan.stdout.contains("none (already at version 1)"),
        "{}",
        plan.stdout
    );
    // A hot backup while the gateway runs: the portable snapshot and its .meta.
    let backup = ok(run(
        &["backup", &d.join("b1").display().to_string()],
        &db_args(d, &db),
    ));
    assert!(
        backup.stdout.contains("backup complete"),
        "{}",
        backup.stdout
    );
    assert!(d.join("b1").exists() && d.join("b1.meta").exists());

    gw.stop(Duration::from_secs(20)).await.unwrap();

    let sessions = ok(run(&["sessions", "list"], &db_args(d, &db)));
    assert!(
        sessions.stdout.contains("sess-1") && sessions.stdout.contains("sess-2"),
        "{}",
        sessions.stdout
    );
    let prune = ok(run(
        &["trace", "prune", "--days", "1", "--dry-run"],
        &db_args(d, &db),
    ));
    assert!(
        prune.stdout.contains("rows_deleted:          0"),
        "{}",
        prune.stdout
    );
    let verify = ok(run(&["audit", "verify"], &db_args(d, &db)));
    assert!(
        verify.stdout.starts_with("audit chain ok: "),
        "{}",
        verify.stdout
    );
    let out = d.join("audit.jsonl");
    ok(run(
        &[
            "audit",
            "export",
            &out.display().to_string(),
            "--since",
            "2000-01-01T00:00:00Z",
        ],
        &db_args(d, &db),
    ));
    let exported = std::fs::read_to_string(&out).unwrap();
    assert!(
        exported.lines().count() >= 2 && exported.contains("gateway.key_issued"),
        "{exported}"
    );

    // PostgreSQL -> SQLite: the file side is named by --to-path, the database by its URL.
    let copy = d.join("copy").join("metis.db");
    let wrong = run(
        &[
            "migrate-store",
            "--from",
            "postgres",
            "--to",
            "sqlite",
            "--from-path",
            "/tmp/metis.db",
        ],
        &copy_args(d, &db),
    );
    assert_eq!(wrong.code(), 1, "{}", wrong.describe());
    assert!(
        wrong.stderr.contains("--from-path") && wrong.stderr.contains("--database-url"),
        "{}",
        wrong.stderr
    );
    let to_sqlite = ok(run(
        &[
            "migrate-store",
            "--from",
            "postgres",
            "--to",
            "sqlite",
            "--to-path",
            &copy.display().to_string(),
        ],
        &copy_args(d, &db),
    ));
    assert!(
        to_sqlite.stdout.contains("keys:           2"),
        "{}",
        to_sqlite.stdout
    );
    let on_sqlite = ok(run(
        &["audit", "verify", "--db-path", &copy.display().to_string()],
        &[],
    ));
    assert_eq!(on_sqlite.stdout, verify.stdout, "the same chain on both");

    // SQLite -> another PostgreSQL database, then the chain verifies there too.
    let other = scratch();
    let to_pg = ok(run(
        &[
            "migrate-store",
            "--from",
            "sqlite",
            "--to",
            "postgres",
            "--from-path",
            &copy.display().to_string(),
        ],
        &copy_args(d, &other),
    ));
    assert_eq!(
        to_pg.field("  events"),
        to_sqlite.field("  events"),
        "{}",
        to_pg.stdout
    );
    let on_other = ok(run(&["audit", "verify"], &db_args(d, &other)));
    assert_eq!(on_other.stdout, verify.stdout);
    let again = run(
        &[
            "migrate-store",
            "--from",
            "sqlite",
            "--to",
            "postgres",
            "--from-path",
            &copy.display().to_string(),
        ],
        &copy_args(d, &other),
    );
    assert_eq!(again.code(), 1, "a non-empty database is refused");
    assert!(again.stderr.contains("not empty"), "{}", again.stderr);
}

/// `--store postgres` without a database URL fails with a message naming the flag.
#[test]
fn postgres_without_a_database_url_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = metis(&[
        "trace",
        "status",
        "--store",
        "postgres",
        "--data-dir",
        &dir.path().display().to_string(),
    ])
    .unwrap();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(out.stderr.contains("--database-url"), "{}", out.stderr);
}

/// A pool of one connection is refused naming the flag: the trace writer would hold it and
/// every read would wait.
#[test]
fn a_pool_of_one_connection_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = metis(&[
        "trace",
        "status",
        "--store",
        "postgres",
        "--database-url",
        "postgres://metis@127.0.0.1:9/metis",
        "--database-pool-size",
        "1",
        "--data-dir",
        &dir.path().display().to_string(),
    ])
    .unwrap();
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("--database-pool-size must be at least 2"),
        "{}",
        out.stderr
    );
}
