//! Issue 12 item 6, as an operator runs it: keys are issued, revoked and rotated with the CLI
//! against the gateway's keystore file from another machine (a laptop with its own `--db-path`,
//! then a Kubernetes Secret). The gateway records each change it finds in its keystore in its
//! own audit trail, so `metis audit export` on the server lists every change exactly once —
//! also across a restart — and `metis audit verify` passes.
//!
//! Needs `target/debug/metis` (`cargo build --workspace --bins`).
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::process::{GatewayProcess, metis};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ADMIN: &str = "key-audit-admin-token-5d1e";
const KEY_EVENTS: &str =
    "type=gateway.key_issued&type=gateway.key_revoked&type=gateway.key_rotated";

/// The laptop: the CLI on the server's keystore file, auditing into its own database.
struct Laptop {
    keystore: PathBuf,
    db: PathBuf,
}

impl Laptop {
    async fn run(&self, args: &[&str]) -> String {
        let mut a: Vec<String> = vec!["gateway".into()];
        a.extend(args.iter().map(|s| (*s).to_owned()));
        a.extend([
            "--keystore".into(),
            self.keystore.display().to_string(),
            "--db-path".into(),
            self.db.display().to_string(),
        ]);
        let out = tokio::task::spawn_blocking(move || metis(&a).unwrap())
            .await
            .unwrap();
        assert_eq!(out.code(), 0, "{}", out.describe());
        out.stdout
    }

    async fn issue(&self, name: &str) -> String {
        let out = self
            .run(&["issue-key", "--name", name, "--workspace", "/srv/ws"])
            .await;
        field(&out, "key_id")
    }
}

fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {label} in {out}"))
}

/// A key lifecycle event as (type suffix, key ids), e.g. `("rotated", "gk_a>gk_b")`.
fn change_of(e: &Value) -> (String, String) {
    let ty = e["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("gateway.key_")
        .to_owned();
    let p = &e["payload"];
    let ids = if ty == "rotated" {
        format!(
            "{}>{}",
            p["old_gateway_key_id"].as_str().unwrap_or_default(),
            p["new_gateway_key_id"].as_str().unwrap_or_default()
        )
    } else {
        p["gateway_key_id"].as_str().unwrap_or_default().to_owned()
    };
    (ty, ids)
}

async fn start(server: &Path, store: &str) -> GatewayProcess {
    GatewayProcess::spawn_async(
        vec![
            "--port".into(),
            "0".into(),
            "--data-dir".into(),
            server.display().to_string(),
            "--store".into(),
            store.into(),
            "--admin-token".into(),
            ADMIN.into(),
        ],
        Vec::new(),
    )
    .await
    .unwrap()
}

/// Poll the gateway's audit API until every change in `want` is recorded (bounded).
async fn wait_for(gw: &GatewayProcess, want: &[(String, String)], within: Duration) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let v: Value = client
            .get(gw.url_of(&format!(
                "/admin/v1/audit?since=2020-01-01T00:00:00Z&{KEY_EVENTS}"
            )))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got: Vec<(String, String)> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(change_of)
            .collect();
        if want.iter().all(|w| got.contains(w)) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "the gateway did not record {want:?} within {within:?}; it has {got:?}\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn change(ty: &str, ids: &str) -> (String, String) {
    (ty.to_owned(), ids.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_key_changes_on_another_database_reach_the_servers_audit_export_once() {
    cli_changes_reach_the_server_export_once("sqlite", "metis.db").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_key_changes_reach_the_audit_export_of_a_redb_server_once() {
    cli_changes_reach_the_server_export_once("redb", "metis.redb").await;
}

/// The runbook flow against a gateway on `store` (its main file `file` in the data dir).
async fn cli_changes_reach_the_server_export_once(store: &str, file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server");
    let laptop = Laptop {
        keystore: server.join("gateway").join("keys.json"),
        db: dir.path().join("laptop").join("metis.db"),
    };
    let first = laptop.issue("first").await;

    let mut gw = start(&server, store).await;
    let second = laptop.issue("second").await;
    laptop.run(&["revoke-key", &first]).await;
    let out = laptop
        .run(&["rotate-key", &second, "--grace-period", "2s"])
        .await;
    let third = field(&out, "new_key_id");
    let rotation = format!("{second}>{third}");
    let mut want = vec![
        change("issued", &first),
        change("issued", &second),
        change("revoked", &first),
        change("rotated", &rotation),
        change("issued", &third),
        // The 2 s grace of `second` lapses while the gateway runs.
        change("revoked", &second),
    ];
    wait_for(&gw, &want, Duration::from_secs(30)).await;
    let status = gw.stop(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());

    // A restart, then one more out-of-band issue: once the gateway has recorded it, it has
    // also settled everything it found at start (those changes were pending no later).
    let mut gw = start(&server, store).await;
    let fourth = laptop.issue("fourth").await;
    want.push(change("issued", &fourth));
    wait_for(&gw, &want, Duration::from_secs(30)).await;
    let status = gw.stop(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());

    // The server's export, as the runbook feeds it to a SIEM.
    let export = dir.path().join("audit.jsonl");
    let db = server.join(file);
    let args: Vec<String> = vec![
        "audit".into(),
        "export".into(),
        export.display().to_string(),
        "--store".into(),
        store.to_owned(),
        "--db-path".into(),
        db.display().to_string(),
        "--since".into(),
        "2020-01-01T00:00:00Z".into(),
    ];
    let out = tokio::task::spawn_blocking(move || metis(&args).unwrap())
        .await
        .unwrap();
    assert_eq!(out.code(), 0, "{}", out.describe());
    let text = std::fs::read_to_string(&export).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("gateway.key_"))
        })
        .collect();
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &events {
        *counts.entry(change_of(e)).or_default() += 1;
    }
    for w in &want {
        assert_eq!(counts.get(w), Some(&1), "{w:?} in the export:\n{text}");
    }
    assert_eq!(events.len(), want.len(), "no other key events:\n{text}");
    for e in &events {
        let p = &e["payload"];
        let source = p["source"].as_str().unwrap_or_default();
        let lapse = change_of(e) == change("revoked", &second);
        // The lapse is recorded by whichever comes first: the gateway's sweep writing it into
        // the keystore, or the gateway noticing the grace end in the keystore it reads.
        if lapse {
            assert!(source == "gateway" || source == "keystore_observed", "{e}");
            assert_eq!(p["reason"], "grace_period_expired", "{e}");
        } else {
            assert_eq!(source, "keystore_observed", "{e}");
        }
        assert!(p["audit_seq"].as_u64().is_some(), "chained: {e}");
    }
    let revoked_first = events
        .iter()
        .find(|e| change_of(e) == change("revoked", &first))
        .unwrap();
    assert_eq!(revoked_first["payload"]["reason"], "admin_revoke");

    let args: Vec<String> = vec![
        "audit".into(),
        "verify".into(),
        "--store".into(),
        store.to_owned(),
        "--db-path".into(),
        db.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || metis(&args).unwrap())
        .await
        .unwrap();
    assert_eq!(out.code(), 0, "{}", out.describe());
}
