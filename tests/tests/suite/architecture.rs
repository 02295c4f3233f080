//! The hexagon's dependency rules, checked on the real dependency graph:
//! - `metis-domain` and `metis-ports` pull in no runtime, storage engine or HTTP stack;
//! - use cases see only `metis-domain` and `metis-ports` among workspace crates;
//! - adapters depend on `metis-domain`/`metis-ports` only — never on another adapter or on `app` —
//!   plus `metis-storage-kit`, the storage adapters' shared support crate, which itself depends
//!   on no adapter and no storage engine;
//! - no crate of the `metis` binary parses XML (deny.toml's quick-xml exception rests on it).
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
    assert_pure("metis-domain");
}

#[test]
fn ports_have_no_io_runtime_storage_or_http_dependency() {
    assert_pure("metis-ports");
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

/// The support crate adapters may share (it knows no storage engine and no adapter).
const STORAGE_KIT: &str = "metis-storage-kit";

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
            .filter(|d| *d != "metis-domain" && *d != "metis-ports" && *d != STORAGE_KIT)
            .collect();
        assert!(bad.is_empty(), "adapter {} depends on {bad:?}", a.name);
    }
}

#[test]
fn the_storage_kit_depends_on_no_adapter_and_no_storage_engine() {
    let all = members();
    let kit = all
        .iter()
        .find(|m| m.name == STORAGE_KIT)
        .expect("metis-storage-kit exists");
    assert!(
        kit.internal_deps
            .iter()
            .all(|d| d == "metis-domain" || d == "metis-ports"),
        "{STORAGE_KIT} depends on {:?}",
        kit.internal_deps
    );
    let tree = normal_tree(STORAGE_KIT);
    let engines: Vec<&str> = ["rusqlite", "libsqlite3-sys", "redb"]
        .into_iter()
        .filter(|e| tree.contains(*e))
        .collect();
    assert!(engines.is_empty(), "{STORAGE_KIT} pulls in {engines:?}");
}

#[test]
fn use_cases_see_only_domain_and_ports() {
    let all = members();
    let usecases = all
        .iter()
        .find(|m| m.name == "metis-usecases")
        .expect("metis-usecases exists");
    let bad: Vec<&String> = usecases
        .internal_deps
        .iter()
        .filter(|d| *d != "metis-domain" && *d != "metis-ports")
        .collect();
    assert!(bad.is_empty(), "metis-usecases depends on {bad:?}");
    let ports = all
        .iter()
        .find(|m| m.name == "metis-ports")
        .expect("metis-ports exists");
    assert!(
        ports.internal_deps.iter().all(|d| d == "metis-domain"),
        "{:?}",
        ports.internal_deps
    );
    let domain = all
        .iter()
        .find(|m| m.name == "metis-domain")
        .expect("metis-domain exists");
    assert!(
        domain.internal_deps.is_empty(),
        "{:?}",
        domain.internal_deps
    );
}

/// Identifiers through which poem / poem-openapi would parse a request body as XML with
/// quick-xml (poem-openapi forces poem's `xml` feature on, so the code is compiled in).
const XML_PARSING: &[&str] = &[
    "quick_xml",
    "Xml",
    "into_xml",
    "ParseFromXML",
    "parse_from_xml",
    "parse_from_xml_string",
];

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// deny.toml ignores RUSTSEC-2026-0194/0195 (quick-xml 0.36, pulled in by poem-openapi)
/// because no client input ever reaches quick-xml. That stays true only while no crate of
/// ours uses poem's or poem-openapi's XML API; this fails the day one does.
#[test]
fn no_crate_of_the_binary_parses_xml() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut files = Vec::new();
    for dir in ["domain", "ports", "app", "adapters"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 20,
        "found the workspace's sources: {}",
        files.len()
    );
    let mut hits = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("source is UTF-8");
        for (n, line) in text.lines().enumerate() {
            let used = line
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .find(|ident| XML_PARSING.contains(ident));
            if let Some(ident) = used {
                hits.push(format!("{}:{}: `{ident}`", file.display(), n + 1));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "XML parsing would make quick-xml's RUSTSEC-2026-0194/0195 reachable from clients; \
         remove it or revisit the exception in deny.toml:\n{}",
        hits.join("\n")
    );
}

/// The composition root picks a storage backend in exactly one place (`store.rs`, the
/// `StoreKind::backend` match); every other file of the app speaks to the `StorageBackend`
/// port. Tests may name an adapter to set up fixtures, so `tests/` directories and a file's
/// `#[cfg(test)]` tail are not checked.
#[test]
fn only_the_selection_point_names_a_storage_adapter() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../app"));
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(files.len() > 10, "found the app's sources: {}", files.len());
    let mut hits = Vec::new();
    for file in &files {
        let is_test_dir = file.components().any(|c| c.as_os_str() == "tests");
        if file.ends_with("metis/src/store.rs") || is_test_dir {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("source is UTF-8");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            if [
                "metis_storage_sqlite",
                "metis_storage_redb",
                "redb::",
                "is_redb_file",
            ]
            .iter()
            .any(|name| line.contains(name))
            {
                hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "a storage adapter is named outside app/metis/src/store.rs:\n{}",
        hits.join("\n")
    );
}
