//! The real `metis` binary on the redb backend: a gateway started with `--store redb
//! --keystore store` serves, a CLI process issues a key into the same `metis.redb` while it
//! runs (multi-process writers) and the gateway sees it; backup is a snapshot with the
//! metadata block; restore refuses while the gateway holds the file and succeeds after it
//! stopped; status and audit verify read the file; migrate-store copies it to SQLite, where
//! the audit chain verifies.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::path::Path;
use std::time::{Duration, Instant};

use metis_tests::process::{GatewayProcess, metis};
use serde_json::json;

fn storage(dir: &Path) -> Vec<String> {
    vec![
        "--data-dir".into(),
        dir.display().to_string(),
        "--store".into(),
        "redb".into(),
        "--keystore".into(),
        "store".into(),
    ]
}

fn issue(dir: &Path, name: &str) -> (String, String) {
    let mut args: Vec<String> = vec![
        "gateway".into(),
        "issue-key".into(),
        "--name".into(),
        name.into(),
        "--workspace".into(),
        "/srv/ws".into(),
    ];
    args.extend(storage(dir));
    let out = metis(&args).unwrap();
    assert_eq!(out.code(), 0, "{}", out.describe());
    (out.field("key_id").unwrap(), out.field("token").unwrap())
}

async fn chat(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_gateway_and_the_storage_commands_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, first) = issue(d, "first");
    let mut args = storage(d);
    args.extend(["--port".into(), "0".into(), "--enable-mock-provider".into()]);
    let mut gw = GatewayProcess::spawn_async(args, Vec::new()).await.unwrap();
    assert!(
        gw.boot.line.contains("store=redb:") && gw.boot.line.contains("metis.redb"),
        "{}",
        gw.boot.line
    );
    assert_eq!(chat(&gw.url, &first).await, 200);

    // Another process writes a key into the file the gateway has open.
    let (_, second) = issue(d, "second");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = chat(&gw.url, &second).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "new key not live: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let db = d.join("metis.redb");
    let backup = d.join("backups").join("b1.redb");
    let out = metis(&[
        "backup".to_owned(),
        backup.display().to_string(),
        "--store".into(),
        "redb".into(),
        "--db-path".into(),
        db.display().to_string(),
    ])
    .unwrap();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.starts_with("backup complete\n"),
        "{}",
        out.stdout
    );
    let events: u64 = out.field("  events").unwrap().parse().unwrap();
    assert!(events >= 4, "{}", out.stdout);
    assert!(out.field("  sha256").is_some_and(|s| s.len() == 64));

    let busy = metis(&[
        "restore".to_owned(),
        backup.display().to_string(),
        "--force".into(),
        "--store".into(),
        "redb".into(),
        "--db-path".into(),
        db.display().to_string(),
    ])
    .unwrap();
    assert_eq!(busy.code(), 1, "{}", busy.describe());
    assert!(
        busy.stderr.contains("stop the writer first"),
        "{}",
        busy.stderr
    );

    let status = metis(&[
        "trace".to_owned(),
        "status".into(),
        "--store".into(),
        "redb".into(),
        "--db-path".into(),
        db.display().to_string(),
    ])
    .unwrap();
    assert_eq!(status.code(), 0, "{}", status.describe());
    assert!(
        status.stdout.contains("schema version:    1"),
        "{}",
        status.stdout
    );

    gw.stop(Duration::from_secs(20)).await.unwrap();

    let verify = metis(&[
        "audit".to_owned(),
        "verify".into(),
        "--store".into(),
        "redb".into(),
        "--data-dir".into(),
        d.display().to_string(),
    ])
    .unwrap();
    assert_eq!(verify.code(), 0, "{}", verify.describe());
    // Two key issues, plus the auth failures of the second key before the gateway saw it.
    assert!(
        verify.stdout.starts_with("audit chain ok: "),
        "{}",
        verify.stdout
    );

    let restored = metis(&[
        "restore".to_owned(),
        backup.display().to_string(),
        "--force".into(),
        "--store".into(),
        "redb".into(),
        "--db-path".into(),
        db.display().to_string(),
    ])
    .unwrap();
    assert_eq!(restored.code(), 0, "{}", restored.describe());
    assert!(restored.stdout.starts_with("restore complete\n"));
    let on_redb = metis(&[
        "audit".to_owned(),
        "verify".into(),
        "--store".into(),
        "redb".into(),
        "--data-dir".into(),
        d.display().to_string(),
    ])
    .unwrap();
    assert_eq!(on_redb.code(), 0, "{}", on_redb.describe());

    let migrated = metis(&[
        "migrate-store".to_owned(),
        "--from".into(),
        "redb".into(),
        "--to".into(),
        "sqlite".into(),
        "--data-dir".into(),
        d.display().to_string(),
    ])
    .unwrap();
    assert_eq!(migrated.code(), 0, "{}", migrated.describe());
    assert!(
        migrated.stdout.contains("keys:           2"),
        "{}",
        migrated.stdout
    );
    let verify = metis(&[
        "audit".to_owned(),
        "verify".into(),
        "--data-dir".into(),
        d.display().to_string(),
    ])
    .unwrap();
    assert_eq!(verify.code(), 0, "{}", verify.describe());
    assert_eq!(
        verify.stdout, on_redb.stdout,
        "the same chain on both backends"
    );
}
