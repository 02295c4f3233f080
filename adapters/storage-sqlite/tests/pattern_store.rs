//! `SqlitePatternStore`: `record()` arithmetic and dedup, caps and eviction, the integer
//! monotonic version, skipped workspaces, and the v1 -> v2 migration of a v1 `patterns.db`
//! built here (the original's documented failure, "no such column: embedding_provider",
//! becomes a passing record).
#![expect(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::path::Path;

use metis_domain::patterns::{
    FingerprintInputs, PATTERN_SCHEMA_VERSION, PatternCaps, PatternRecord, PatternRecorded,
    StructuralFeatures,
};
use metis_ports::patterns::{PatternError, RecordOutcome};
use metis_ports::storage::PatternFiles;
use metis_storage_sqlite::patterns::{
    PatternPlace, SqlitePatternStore, apply_patterns_migration, plan_patterns_migration,
};
use rusqlite::{Connection, params};

fn features(text: &str, tokens: u64, ws: &str) -> StructuralFeatures {
    StructuralFeatures::compute(&FingerprintInputs {
        user_text: text,
        workspace_path: ws,
        estimated_input_tokens: tokens,
        ..FingerprintInputs::default()
    })
}

fn record(text: &str, model: &str, cost: f64, at: i64, ws: &str) -> PatternRecord {
    PatternRecorded::new(features(text, 100, ws), ws, model, cost, 250.0, None)
        .to_record(at)
        .unwrap()
}

/// Distinct features for legacy row `i`.
fn legacy_features(i: usize) -> StructuralFeatures {
    StructuralFeatures::compute(&FingerprintInputs {
        user_text: "legacy",
        workspace_path: "/legacy",
        workload_id: Some(&format!("legacy-{i}")),
        ..FingerprintInputs::default()
    })
}

fn recorded(o: RecordOutcome) -> metis_ports::patterns::RecordResult {
    match o {
        RecordOutcome::Recorded(r) => r,
        RecordOutcome::Skipped { reason } => panic!("skipped: {reason}"),
    }
}

#[test]
fn record_dedups_fingerprints_and_sums_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().to_str().unwrap().to_owned();
    let store = SqlitePatternStore::new(PatternPlace::InWorkspace, PatternCaps::default());

    let a = recorded(
        store
            .record(&ws, &record("fix the bug", "m1", 0.0015, 10, &ws))
            .unwrap(),
    );
    assert!(a.was_new_fingerprint);
    assert_eq!((a.sample_size_before, a.sample_size_after), (0, 1));
    let b = recorded(
        store
            .record(&ws, &record("fix the crash", "m1", 0.0025, 5, &ws))
            .unwrap(),
    );
    assert!(!b.was_new_fingerprint, "same features, same fingerprint");
    assert_eq!(b.fingerprint_id, a.fingerprint_id);
    assert_eq!((b.sample_size_before, b.sample_size_after), (1, 2));
    let c = recorded(
        store
            .record(&ws, &record("fix the bug", "m2", 0.01, 20, &ws))
            .unwrap(),
    );
    assert_eq!(c.sample_size_after, 1);
    recorded(
        store
            .record(&ws, &record("write docs", "m1", 0.0, 30, &ws))
            .unwrap(),
    );

    let rows = store.outcomes(&ws).unwrap();
    assert_eq!(rows.len(), 3);
    let m1 = rows
        .iter()
        .find(|r| r.fingerprint_id == a.fingerprint_id && r.primary_model == "m1")
        .unwrap();
    assert_eq!((m1.sample_size, m1.sum_cost_usd_micros), (2, 4_000));
    assert!((m1.sum_latency_ms - 500.0).abs() < 1e-9);
    assert_eq!(m1.last_updated_at_us, 10, "max, whatever the order");

    let stats = store.stats(&ws).unwrap().unwrap();
    assert_eq!(
        (stats.fingerprints, stats.outcomes, stats.samples),
        (2, 3, 4)
    );
    assert_eq!(stats.schema_version, PATTERN_SCHEMA_VERSION);
    assert!(Path::new(&ws).join(".metis/patterns.db").is_file());
}

#[test]
fn caps_evict_to_the_soft_cap_and_drop_orphaned_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().to_str().unwrap().to_owned();
    let caps = PatternCaps {
        soft_outcomes: 3,
        hard_outcomes: 5,
        max_age_days: 180,
    };
    let store = SqlitePatternStore::new(PatternPlace::InWorkspace, caps);
    let texts = ["commit", "refactor", "architecture", "debug", "doc", "test"];
    let mut last = None;
    for (i, t) in texts.iter().enumerate() {
        let at = 1_000 + i64::try_from(i).unwrap();
        last = Some(recorded(
            store.record(&ws, &record(t, "m", 0.001, at, &ws)).unwrap(),
        ));
    }
    let last = last.unwrap();
    // The sixth outcome crossed the hard cap: evicted down to the soft cap, oldest first.
    assert_eq!(last.rows_auto_evicted, 3);
    assert!(!last.over_soft_cap);
    let stats = store.stats(&ws).unwrap().unwrap();
    assert_eq!((stats.outcomes, stats.fingerprints), (3, 3));
    assert_eq!(stats.oldest_update_us, Some(1_003));
    // Over the soft cap only: flagged, nothing young evicted.
    let r = recorded(
        store
            .record(&ws, &record("plain words", "m", 0.001, 2_000, &ws))
            .unwrap(),
    );
    assert!(r.over_soft_cap);
    assert_eq!(r.rows_auto_evicted, 0);
}

#[test]
fn a_workspace_that_is_not_a_writable_directory_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlitePatternStore::new(PatternPlace::InWorkspace, PatternCaps::default());
    let missing = dir.path().join("gone").display().to_string();
    for _ in 0..2 {
        let o = store
            .record(&missing, &record("x", "m", 0.0, 1, &missing))
            .unwrap();
        assert!(matches!(o, RecordOutcome::Skipped { .. }), "{o:?}");
    }
    let o = store
        .record("relative/ws", &record("x", "m", 0.0, 1, "relative/ws"))
        .unwrap();
    assert!(matches!(o, RecordOutcome::Skipped { .. }));
    assert!(
        !dir.path().join("gone").exists(),
        "nothing created for a missing workspace"
    );
    // With a patterns directory the workspace need not exist on this host.
    let pd = SqlitePatternStore::new(
        PatternPlace::Dir(dir.path().join("patterns")),
        PatternCaps::default(),
    );
    recorded(
        pd.record(&missing, &record("x", "m", 0.0, 1, &missing))
            .unwrap(),
    );
    assert!(
        pd.db_path(&missing)
            .starts_with(dir.path().join("patterns"))
    );
}

/// The v1 layout of the original's forward-compat test: `fingerprints` without the
/// embedding columns and with `UNIQUE(structural_sig)`, `outcomes` without a foreign key,
/// `store_meta.schema_version = "1"`.
fn v1_fixture(path: &Path, fingerprints: usize) -> Vec<String> {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE fingerprints (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
            structural_json TEXT NOT NULL, structural_sig TEXT NOT NULL,
            created_at_us INTEGER NOT NULL, UNIQUE(structural_sig));
         CREATE INDEX idx_fp_created ON fingerprints(created_at_us);
         CREATE TABLE outcomes (fingerprint_id TEXT NOT NULL, primary_model TEXT NOT NULL,
            sample_size INTEGER NOT NULL, success_score_mean REAL NOT NULL,
            success_score_count INTEGER NOT NULL, sum_cost_usd_micros INTEGER NOT NULL,
            sum_latency_ms REAL NOT NULL, pricing_version_last TEXT NOT NULL,
            last_updated_at_us INTEGER NOT NULL, PRIMARY KEY (fingerprint_id, primary_model));
         CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO store_meta VALUES ('schema_version', '1');",
    )
    .unwrap();
    let mut sigs = Vec::new();
    for i in 0..fingerprints {
        let f = legacy_features(i);
        let (json, sig) = (f.canonical_json(), f.signature());
        c.execute(
            "INSERT INTO fingerprints VALUES (?1, 'structural', ?2, ?3, ?4)",
            params![format!("01LEGACY{i:018}"), json, sig, i as i64],
        )
        .unwrap();
        c.execute(
            "INSERT INTO outcomes VALUES (?1, 'old-model', 3, 0.5, 1, 3000, 300.0, 'v0', ?2)",
            params![format!("01LEGACY{i:018}"), 1_000 + i as i64],
        )
        .unwrap();
        sigs.push(sig);
    }
    sigs
}

fn meta_version(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT value FROM store_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn a_v1_store_is_migrated_on_open_and_the_next_record_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().to_str().unwrap().to_owned();
    let store = SqlitePatternStore::new(PatternPlace::InWorkspace, PatternCaps::default());
    let path = store.db_path(&ws);
    let sigs = v1_fixture(&path, 20);

    // Record an observation whose signature already exists in the v1 file: the original
    // failed here with "no such column: embedding_provider".
    let again: PatternRecord = PatternRecorded::new(
        legacy_features(3),
        "/legacy",
        "new-model",
        0.002,
        100.0,
        None,
    )
    .to_record(5_000)
    .unwrap();
    assert_eq!(again.structural_sig, sigs[3]);
    let r = recorded(store.record(&ws, &again).unwrap());
    assert!(
        !r.was_new_fingerprint,
        "the legacy row is found by its signature"
    );
    assert_eq!(r.fingerprint_id, format!("01LEGACY{:018}", 3));
    let fresh = recorded(
        store
            .record(&ws, &record("brand new", "m", 0.001, 6_000, &ws))
            .unwrap(),
    );
    assert!(fresh.was_new_fingerprint);

    let rows = store.outcomes(&ws).unwrap();
    assert_eq!(rows.len(), 22, "every legacy row survives");
    assert_eq!(
        rows.iter()
            .filter(|r| r.primary_model == "old-model")
            .count(),
        20
    );
    assert!(
        rows.iter()
            .filter(|r| r.primary_model == "old-model")
            .all(|r| r.sample_size == 3)
    );
    assert_eq!(meta_version(&path), "2");

    let c = Connection::open(&path).unwrap();
    // Two-column UNIQUE: a hybrid row may share a legacy signature.
    c.execute(
        "INSERT INTO fingerprints VALUES ('fp_hybrid', 'hybrid', '{}', ?1, x'00', 'deterministic:sha256:64', 64, 1)",
        params![sigs[0]],
    )
    .unwrap();
    // The outcomes foreign key now cascades.
    c.execute_batch("PRAGMA foreign_keys=ON").unwrap();
    c.execute(
        "DELETE FROM fingerprints WHERE id = ?1",
        params![format!("01LEGACY{:018}", 5)],
    )
    .unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM outcomes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 21);
}

#[test]
fn patterns_migrate_dry_run_then_apply_is_one_transaction_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".metis").join("patterns.db");
    v1_fixture(&path, 5);
    let before = std::fs::read(&path).unwrap();
    let plan = plan_patterns_migration(&path).unwrap();
    assert_eq!((plan.current, plan.target), (1, 2));
    let text = plan.steps.join("\n");
    for needle in [
        "add column embedding_blob BLOB",
        "add column embedding_provider TEXT",
        "add column embedding_dim INTEGER",
        "rebuild table fingerprints",
        "rebuild table outcomes",
        "create table outcome_score_history",
        "create table embedding_cache",
        "set store_meta.schema_version 1 -> 2",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a plan changes nothing"
    );
    let applied = apply_patterns_migration(&path).unwrap();
    assert_eq!(applied.steps, plan.steps);
    assert!(plan_patterns_migration(&path).unwrap().is_noop());
    let n: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM outcomes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5);
}

#[test]
fn a_store_from_a_newer_binary_is_refused_comparing_versions_as_integers() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().to_str().unwrap().to_owned();
    let store = SqlitePatternStore::new(PatternPlace::InWorkspace, PatternCaps::default());
    recorded(store.record(&ws, &record("x", "m", 0.0, 1, &ws)).unwrap());
    let path = store.db_path(&ws);
    // "10" < "2" as text; as an integer it is newer.
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE store_meta SET value = '10' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
    let fresh = SqlitePatternStore::new(PatternPlace::InWorkspace, PatternCaps::default());
    let e = fresh
        .record(&ws, &record("x", "m", 0.0, 2, &ws))
        .unwrap_err();
    assert!(matches!(e, PatternError::TooNew { found: 10, .. }), "{e}");
    assert!(plan_patterns_migration(&path).is_err());
    assert_eq!(meta_version(&path), "10", "never lowered");
}
