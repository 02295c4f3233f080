//! The key commands and the serve-time refusals through the real `metis` binary (a separate
//! process per command): `issue-key` with every flag and every validation error (exit 1, the
//! message names the flag), `list-keys` in both formats without secrets, idempotent
//! `revoke-key`, `rotate-key` inheritance and refusals, `--keystore store`, a read-only keystore
//! file, eight concurrent `issue-key` processes, the non-loopback bind rules and the TLS flag
//! checks.
//!
//! Needs `target/debug/metis` (`cargo build --workspace --bins`; scripts/test.sh does it).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::certs::TestPki;
use metis_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY};
use metis_tests::gateway::read_events;
use metis_tests::process::{
    CliOutput, GatewayProcess, issue_key, metis, upstream_args, upstream_env,
};
use metis_tests::{Combo, FakeUpstream};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `--data-dir <dir>` as owned args.
fn data_dir_args(dir: &Path) -> Vec<String> {
    vec!["--data-dir".into(), dir.display().to_string()]
}

/// `metis gateway <sub> <args…> --data-dir <dir>`.
fn gateway_cmd(dir: &Path, sub: &str, args: &[&str]) -> CliOutput {
    let mut all: Vec<String> = vec!["gateway".into(), sub.into()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    all.extend(data_dir_args(dir));
    metis(&all).unwrap()
}

fn list_json(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let out = gateway_cmd(dir, "list-keys", &args);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("list-keys --format json is JSON ({e}): {}", out.stdout));
    v.as_array().cloned().expect("a JSON array of keys")
}

fn key_in<'a>(keys: &'a [Value], key_id: &str) -> &'a Value {
    keys.iter()
        .find(|k| k["key_id"] == key_id)
        .unwrap_or_else(|| panic!("{key_id} listed: {keys:?}"))
}

fn assert_no_secrets(text: &str, tokens: &[&str]) {
    assert!(
        !text.contains("secret_hash"),
        "listing shows no secret_hash: {text}"
    );
    for t in tokens {
        assert!(!text.contains(t), "listing shows no token: {text}");
        let hash = metis_domain::keys::hash_token(t);
        assert!(!text.contains(&hash), "listing shows no token hash: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// issue-key
// ---------------------------------------------------------------------------------------------

#[test]
fn issue_key_with_every_flag_prints_the_key_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let out = gateway_cmd(
        dir.path(),
        "issue-key",
        &[
            "--name",
            "alice-laptop",
            "--workspace",
            "/srv/app",
            "--allow-model",
            "haiku",
            "--allow-model",
            "openai:gpt-5",
            "--daily-cap-usd",
            "5",
            "--monthly-cap-usd",
            "50.5",
            "--rpm",
            "120",
            "--user",
            "alice",
            "--team",
            "eng-1",
            "--customer-tier",
            "paid",
        ],
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    let key_id = out.field("key_id").expect("key_id line");
    let token = out.field("token").expect("token line");
    assert!(key_id.starts_with("gk_"), "{key_id}");
    assert!(token.starts_with("gw_"), "{token}");
    assert!(
        !token.contains(&key_id[3..]),
        "the token is independent of the key id"
    );
    assert_eq!(
        out.field("user").as_deref(),
        Some("alice"),
        "{}",
        out.stdout
    );
    assert_eq!(out.field("team").as_deref(), Some("eng-1"));
    assert_eq!(out.field("customer_tier").as_deref(), Some("paid"));
    assert_eq!(out.field("daily_cap_usd").as_deref(), Some("5"));
    assert_eq!(out.field("monthly_cap_usd").as_deref(), Some("50.5"));
    assert_eq!(out.field("rpm").as_deref(), Some("120"));
    assert!(
        !out.stderr.contains(&token),
        "the token is printed once (stdout), never logged: {}",
        out.stderr
    );

    let keystore = std::fs::read_to_string(dir.path().join("gateway/keys.json")).unwrap();
    assert!(!keystore.contains(&token), "only the hash is stored");
    assert!(keystore.contains(&metis_domain::keys::hash_token(&token)));

    let keys = list_json(dir.path(), &[]);
    let k = key_in(&keys, &key_id);
    assert_eq!(k["workspace_path"], "/srv/app");
    assert_eq!(
        k["allowed_models"],
        serde_json::json!(["haiku", "openai:gpt-5"])
    );
    assert_eq!(k["daily_cap_usd"], "5");
    assert_eq!(k["monthly_cap_usd"], "50.5");
    assert_eq!(k["rpm"], 120);
    assert_eq!(k["user_id"], "alice");
    assert_eq!(k["team_id"], "eng-1");
    assert_eq!(k["customer_tier"], "paid");
    assert_eq!(k["status"], "active");
    assert_eq!(k["effective_status"], "active");

    // The issuance is audited in the trace DB beside the keystore.
    let issued: Vec<_> = read_events(&dir.path().join("metis.db"))
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "gateway.key_issued")
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].payload["gateway_key_id"], key_id.as_str());
    assert!(!issued[0].payload_json.contains(&token));
}

#[test]
fn issue_key_validation_errors_name_the_flag_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--daily-cap-usd", "NaN"], "--daily-cap-usd"),
        (&["--daily-cap-usd", "inf"], "--daily-cap-usd"),
        (&["--daily-cap-usd", "0"], "--daily-cap-usd"),
        (&["--daily-cap-usd=-1"], "--daily-cap-usd"),
        (&["--daily-cap-usd", "five"], "--daily-cap-usd"),
        (&["--monthly-cap-usd", "NaN"], "--monthly-cap-usd"),
        (&["--monthly-cap-usd=-inf"], "--monthly-cap-usd"),
        (&["--monthly-cap-usd", "0.0"], "--monthly-cap-usd"),
        (&["--monthly-cap-usd=-20"], "--monthly-cap-usd"),
        (&["--user", "Alice"], "--user"),
        (&["--user", "a b"], "--user"),
        (&["--user", "bob@example.com"], "--user"),
        (&["--team", "Eng!"], "--team"),
        (&["--team", ""], "--team"),
        (&["--customer-tier", "gold"], "--customer-tier"),
        (&["--rpm", "0"], "--rpm"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["--name", "bad", "--workspace", "/srv/app"];
        args.extend_from_slice(flags);
        let out = gateway_cmd(dir.path(), "issue-key", &args);
        assert_eq!(
            out.code(),
            1,
            "{flags:?} is a validation error (exit 1): {}",
            out.describe()
        );
        let line = out
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("{flags:?}: one `error: …` line: {}", out.describe()));
        assert!(
            line.contains(named),
            "{flags:?}: the error names {named}: {line}"
        );
        assert!(out.field("token").is_none(), "{flags:?}: no key printed");
    }
    // Nothing was stored by any of the refused commands.
    let out = gateway_cmd(dir.path(), "list-keys", &[]);
    assert!(
        !out.stdout.contains("gk_"),
        "refused issues store nothing: {}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// list-keys, revoke-key, rotate-key
// ---------------------------------------------------------------------------------------------

#[test]
fn list_keys_shows_status_in_both_formats_and_never_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let storage = data_dir_args(dir.path());
    let (a_id, a_token) = issue_key(&storage, "first", &["--user", "ann"]).unwrap();
    let (b_id, b_token) = issue_key(&storage, "second", &["--daily-cap-usd", "3"]).unwrap();
    let out = gateway_cmd(dir.path(), "revoke-key", &[&b_id]);
    assert_eq!(out.code(), 0, "{}", out.describe());

    let text = gateway_cmd(dir.path(), "list-keys", &[]);
    assert_eq!(text.code(), 0, "{}", text.describe());
    assert_no_secrets(&text.stdout, &[&a_token, &b_token]);
    let row = |id: &str| {
        text.stdout
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} listed: {}", text.stdout))
            .to_owned()
    };
    assert!(
        row(&a_id).contains("active") && row(&a_id).contains("first"),
        "{}",
        row(&a_id)
    );
    assert!(row(&a_id).contains("ann"), "{}", row(&a_id));
    assert!(row(&b_id).contains("revoked"), "{}", row(&b_id));

    let json = gateway_cmd(dir.path(), "list-keys", &["--format", "json"]);
    assert_eq!(json.code(), 0, "{}", json.describe());
    assert_no_secrets(&json.stdout, &[&a_token, &b_token]);
    let keys: Vec<Value> = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(keys.len(), 2);
    for k in &keys {
        let obj = k.as_object().unwrap();
        assert!(
            !obj.contains_key("secret_hash") && !obj.contains_key("token"),
            "{k}"
        );
    }
    assert_eq!(key_in(&keys, &a_id)["effective_status"], "active");
    assert_eq!(key_in(&keys, &b_id)["status"], "revoked");
    assert_eq!(key_in(&keys, &b_id)["effective_status"], "revoked");
    assert!(key_in(&keys, &b_id)["revoked_at"].is_string());

    // An empty keystore is not an error.
    let empty = tempfile::tempdir().unwrap();
    let out = gateway_cmd(empty.path(), "list-keys", &["--format", "json"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn revoke_key_is_idempotent_and_unknown_keys_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = issue_key(&data_dir_args(dir.path()), "rev", &[]).unwrap();
    let first = gateway_cmd(dir.path(), "revoke-key", &[&id]);
    assert_eq!(first.code(), 0, "{}", first.describe());
    assert_eq!(first.field("revoked").as_deref(), Some(id.as_str()));
    let at = first.field("revoked_at").expect("revoked_at line");
    let second = gateway_cmd(dir.path(), "revoke-key", &[&id]);
    assert_eq!(
        second.code(),
        0,
        "revoking twice succeeds: {}",
        second.describe()
    );
    assert_eq!(
        second.field("revoked_at").as_deref(),
        Some(at.as_str()),
        "the second revoke keeps the first revoked_at"
    );
    let revoked: Vec<_> = read_events(&dir.path().join("metis.db"))
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "gateway.key_revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "one audit event for one revocation");
    assert_eq!(revoked[0].payload["reason"], "admin_revoke");

    let out = gateway_cmd(
        dir.path(),
        "revoke-key",
        &["gk_01NOSUCHKEY0000000000000000"],
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("gk_01NOSUCHKEY0000000000000000"),
        "{}",
        out.stderr
    );
}

#[test]
fn rotate_key_inherits_everything_and_refuses_inactive_keys() {
    let dir = tempfile::tempdir().unwrap();
    let storage = data_dir_args(dir.path());
    let (old_id, old_token) = issue_key(
        &storage,
        "rotating",
        &[
            "--allow-model",
            "haiku",
            "--daily-cap-usd",
            "7",
            "--monthly-cap-usd",
            "70",
            "--rpm",
            "33",
            "--user",
            "carol",
            "--team",
            "ops",
            "--customer-tier",
            "internal",
            "--customer",
            "bigco",
            "--org",
            "acme",
            "--weekly-cap-usd",
            "30",
            "--tpm",
            "9000",
            "--alert-at",
            "50,90",
        ],
    )
    .unwrap();
    let out = gateway_cmd(dir.path(), "rotate-key", &[&old_id, "--grace-period", "1s"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.field("old_key_id").as_deref(), Some(old_id.as_str()));
    let new_id = out.field("new_key_id").expect("new_key_id line");
    let new_token = out.field("new_token").expect("new_token line");
    assert!(new_token.starts_with("gw_") && new_token != old_token);
    assert!(out.field("grace_period_until").is_some(), "{}", out.stdout);

    let keys = list_json(dir.path(), &[]);
    let (old, new) = (key_in(&keys, &old_id), key_in(&keys, &new_id));
    for field in [
        "workspace_path",
        "allowed_models",
        "daily_cap_usd",
        "monthly_cap_usd",
        "rpm",
        "user_id",
        "team_id",
        "customer_tier",
        "customer_id",
        "org_id",
        "weekly_cap_usd",
        "tpm",
        "alert_at",
    ] {
        assert_eq!(
            new[field], old[field],
            "the successor inherits {field}: {new}"
        );
        assert!(!new[field].is_null(), "{field} was set: {new}");
    }
    assert_eq!(new["effective_status"], "active");
    assert!(old["grace_period_until"].is_string(), "{old}");

    // After the 1 s grace the predecessor is lapsed and cannot be rotated again.
    std::thread::sleep(Duration::from_millis(1500));
    let out = gateway_cmd(dir.path(), "rotate-key", &[&old_id, "--grace-period", "1h"]);
    assert_eq!(
        out.code(),
        1,
        "a lapsed key cannot be rotated: {}",
        out.describe()
    );
    assert!(out.stderr.contains(&old_id), "{}", out.stderr);
    assert!(out.field("new_token").is_none());

    // A revoked key cannot be rotated either.
    let out = gateway_cmd(dir.path(), "revoke-key", &[&new_id]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let out = gateway_cmd(dir.path(), "rotate-key", &[&new_id]);
    assert_eq!(
        out.code(),
        1,
        "a revoked key cannot be rotated: {}",
        out.describe()
    );
    assert!(out.stderr.contains(&new_id), "{}", out.stderr);

    let types: Vec<String> = read_events(&dir.path().join("metis.db"))
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        types.iter().filter(|t| *t == "gateway.key_rotated").count(),
        1,
        "{types:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Key stores
// ---------------------------------------------------------------------------------------------

#[test]
fn keystore_store_works_for_issue_list_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = data_dir_args(dir.path());
    storage.extend(["--keystore".to_owned(), "store".to_owned()]);
    let (id, token) = issue_key(&storage, "in-db", &["--team", "data"]).unwrap();
    assert!(
        !dir.path().join("gateway/keys.json").exists(),
        "--keystore store writes no JSON file"
    );
    let out = gateway_cmd(
        dir.path(),
        "list-keys",
        &["--format", "json", "--keystore", "store"],
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_no_secrets(&out.stdout, &[&token]);
    let keys: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(key_in(&keys, &id)["team_id"], "data");
    // The default (file) keystore of the same data dir does not see it.
    let out = gateway_cmd(dir.path(), "list-keys", &["--format", "json"]);
    assert!(!out.stdout.contains(&id), "{}", out.describe());

    let out = gateway_cmd(dir.path(), "revoke-key", &[&id, "--keystore", "store"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let out = gateway_cmd(
        dir.path(),
        "list-keys",
        &["--format", "json", "--keystore", "store"],
    );
    let keys: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(key_in(&keys, &id)["status"], "revoked");
}

#[test]
fn concurrent_issue_key_processes_never_lose_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let storage = data_dir_args(dir.path());
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let storage = storage.clone();
            std::thread::spawn(move || issue_key(&storage, &format!("parallel-{i}"), &[]))
        })
        .collect();
    let mut ids: Vec<String> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap()
                .expect("every concurrent issue-key succeeds")
                .0
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8);
    let keys = list_json(dir.path(), &[]);
    assert_eq!(keys.len(), 8, "list-keys shows all 8 keys: {keys:?}");
    for id in &ids {
        key_in(&keys, id);
    }
    let issued = read_events(&dir.path().join("metis.db"))
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "gateway.key_issued")
        .count();
    assert_eq!(issued, 8, "every issuance is audited");
}

fn gateway_args(upstream: &FakeUpstream, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--port".to_owned(), "0".to_owned()];
    args.extend(upstream_args(&upstream.base_url(), dir));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn provider_env() -> Vec<(String, String)> {
    upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_keystore_refuses_admin_writes_while_the_gateway_serves() {
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = data_dir_args(dir.path());
    let (id, token) = issue_key(&storage, "serving", &[]).unwrap();
    let mut gw =
        GatewayProcess::spawn_async(gateway_args(&upstream, dir.path(), &[]), provider_env())
            .await
            .unwrap();
    let keystore: PathBuf = dir.path().join("gateway/keys.json");
    set_mode(&keystore, 0o444);

    let d = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        gateway_cmd(
            &d,
            "issue-key",
            &["--name", "denied", "--workspace", "/srv/x"],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code(), 1, "{}", out.describe());
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("read-only") && err.contains("keys.json"),
        "a clear read-only error naming the keystore: {}",
        out.stderr
    );
    let d = dir.path().to_path_buf();
    let rid = id.clone();
    let out = tokio::task::spawn_blocking(move || gateway_cmd(&d, "revoke-key", &[&rid]))
        .await
        .unwrap();
    assert_eq!(
        out.code(),
        1,
        "revoke on a read-only keystore fails: {}",
        out.describe()
    );

    // The running gateway keeps serving with the keys it has.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = client
            .post(gw.url_of("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&Combo::OPENAI_TO_OPENAI.body("still here", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    set_mode(&keystore, 0o600);
    let status = gw.stop(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Serve-time refusals and the perimeter WARN
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_bind_needs_keys_and_warns_once() {
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = gateway_args(&upstream, dir.path(), &["--host", "0.0.0.0"]);
    let a = args.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let env = provider_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        GatewayProcess::try_spawn(&a, &env).unwrap()
    })
    .await
    .unwrap();
    let failure = match refused {
        Ok(p) => panic!(
            "an empty keystore on 0.0.0.0 must refuse to start, but it serves: {}",
            p.stderr()
        ),
        Err(f) => f,
    };
    assert_eq!(failure.code, Some(1), "{}", failure.stderr);
    assert!(
        failure
            .stderr
            .lines()
            .any(|l| l.starts_with("error:") && l.contains("issue-key")),
        "one error line saying how to issue a key: {}",
        failure.stderr
    );
    assert!(
        !dir.path().join("gateway/keys.json").exists()
            || !std::fs::read_to_string(dir.path().join("gateway/keys.json"))
                .unwrap()
                .contains("gk_"),
        "no quickstart key is minted for a non-loopback bind"
    );

    let (_, token) = issue_key(&data_dir_args(dir.path()), "exposed", &[]).unwrap();
    let mut gw = GatewayProcess::spawn_async(args, provider_env())
        .await
        .unwrap();
    assert_eq!(gw.boot.host, "0.0.0.0", "{}", gw.boot.line);
    let r = reqwest::Client::new()
        .post(gw.url_of("/v1/chat/completions"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(20))
        .json(&Combo::OPENAI_TO_ANTHROPIC.body("exposed", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status = gw.stop(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());
    let stderr = gw.stderr();
    let warns: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("gateway bound to non-loopback"))
        .collect();
    assert_eq!(warns.len(), 1, "exactly one perimeter WARN: {stderr}");
    let w = warns[0];
    assert!(w.contains("WARN"), "logged at WARN: {w}");
    assert!(
        w.contains("gateway bound to non-loopback host=0.0.0.0"),
        "{w}"
    );
    assert!(w.contains("tls_in_process=off rate_limit=off"), "{w}");
    assert!(w.contains("README"), "points at the hardening section: {w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_flag_errors_exit_1_naming_the_flag_or_file() {
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    issue_key(&data_dir_args(dir.path()), "tls", &[]).unwrap();
    let pki = TestPki::generate().unwrap();
    let files = pki.write_to(dir.path()).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let cert = files.leaf_cert.display().to_string();
    let key = files.leaf_key.display().to_string();
    let other = files.other_key.display().to_string();
    let garbage = garbage.display().to_string();
    let missing = missing.display().to_string();
    let a_dir = dir.path().display().to_string();

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--tls-cert", &cert], vec!["--tls-key"]),
        (vec!["--tls-key", &key], vec!["--tls-cert"]),
        (
            vec!["--tls-cert", &missing, "--tls-key", &key],
            vec![&missing],
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &missing],
            vec![&missing],
        ),
        // A directory cannot be read as a file (root reads every mode, so no chmod here).
        (vec!["--tls-cert", &a_dir, "--tls-key", &key], vec![&a_dir]),
        (
            vec!["--tls-cert", &garbage, "--tls-key", &key],
            vec![&garbage],
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &garbage],
            vec![&garbage],
        ),
        (vec!["--tls-cert", &cert, "--tls-key", &other], vec![&other]),
    ];
    for (flags, named) in cases {
        let args = gateway_args(&upstream, dir.path(), &flags);
        let result = tokio::task::spawn_blocking(move || {
            let env = provider_env();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            GatewayProcess::try_spawn(&args, &env).unwrap()
        })
        .await
        .unwrap();
        let failure = match result {
            Ok(p) => panic!(
                "{flags:?} must fail the start, but it serves: {}",
                p.boot.line
            ),
            Err(f) => f,
        };
        assert_eq!(failure.code, Some(1), "{flags:?}: {}", failure.stderr);
        let line = failure
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("{flags:?}: an `error:` line: {}", failure.stderr));
        for n in named {
            assert!(line.contains(n), "{flags:?}: the error names {n}: {line}");
        }
    }
}
