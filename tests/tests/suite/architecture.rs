//! The hexagon's dependency rules, checked on the real dependency graph:
//! - `gw-domain` and `gw-ports` pull in no runtime, storage engine or HTTP stack;
//! - use cases see only `gw-domain` and `gw-ports` among workspace crates;
//! - adapters depend on `gw-domain`/`gw-ports` only — never on another adapter or on `app`.
#![expect(clippy::expect_used, reason = "test helpers outside #[test] functions")]

use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

const FORBIDDEN_IN_CORE: &[&str] = &[
    "tokio",
    "rusqlite",
    "libsqlite3-sys",
    "redb",
    "poem",
    "poem-openapi",
    "reqwest",
    "hyper",
    "hyper-util",
];

fn cargo() -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    c
}

/// Package names in the normal (non-dev, non-build) dependency tree of `package`.
fn normal_tree(package: &str) -> BTreeSet<String> {
    let out = cargo()
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_pure(package: &str) {
    let tree = normal_tree(package);
    assert!(
        tree.contains(package),
        "{package} is in its own tree: {tree:?}"
    );
    let bad: Vec<&&str> = FORBIDDEN_IN_CORE
        .iter()
        .filter(|f| tree.contains(**f))
        .collect();
    assert!(bad.is_empty(), "{package} depends on {bad:?} (normal deps)");
}

#[test]
fn domain_has_no_io_runtime_storage_or_http_dependency() {
    assert_pure("gw-domain");
}

#[test]
fn ports_have_no_io_runtime_storage_or_http_dependency() {
    assert_pure("gw-ports");
}

struct Member {
    name: String,
    dir: String,
    /// Normal (non-dev, non-build) dependencies on workspace members.
    internal_deps: BTreeSet<String>,
}

fn members() -> Vec<Member> {
    let out = cargo()
        .args([
            "metadata",
            "--offline",
            "--format-version",
            "1",
            "--no-deps",
        ])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    packages
        .iter()
        .map(|p| Member {
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            dir: p["manifest_path"]
                .as_str()
                .unwrap_or_default()
                .trim_end_matches("Cargo.toml")
                .to_owned(),
            internal_deps: p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|n| names.contains(*n))
                .map(str::to_owned)
                .collect(),
        })
        .collect()
}

#[test]
fn adapters_depend_only_on_domain_and_ports() {
    let all = members();
    let adapters: Vec<&Member> = all
        .iter()
        .filter(|m| m.dir.contains("/adapters/"))
        .collect();
    assert!(
        adapters.len() >= 3,
        "found the adapter crates: {:?}",
        adapters.iter().map(|m| &m.name).collect::<Vec<_>>()
    );
    for a in adapters {
        let bad: Vec<&String> = a
            .internal_deps
            .iter()
            .filter(|d| *d != "gw-domain" && *d != "gw-ports")
            .collect();
        assert!(bad.is_empty(), "adapter {} depends on {bad:?}", a.name);
    }
}

#[test]
fn use_cases_see_only_domain_and_ports() {
    let all = members();
    let usecases = all
        .iter()
        .find(|m| m.name == "gw-usecases")
        .expect("gw-usecases exists");
    let bad: Vec<&String> = usecases
        .internal_deps
        .iter()
        .filter(|d| *d != "gw-domain" && *d != "gw-ports")
        .collect();
    assert!(bad.is_empty(), "gw-usecases depends on {bad:?}");
    let ports = all
        .iter()
        .find(|m| m.name == "gw-ports")
        .expect("gw-ports exists");
    assert!(
        ports.internal_deps.iter().all(|d| d == "gw-domain"),
        "{:?}",
        ports.internal_deps
    );
    let domain = all
        .iter()
        .find(|m| m.name == "gw-domain")
        .expect("gw-domain exists");
    assert!(
        domain.internal_deps.is_empty(),
        "{:?}",
        domain.internal_deps
    );
}
