//! Contract of the `PatternStore` port: one observation per `record`, fingerprint reuse,
//! Welford means, the caps, skipped workspaces, version refusal and `replace_all`.
#![expect(
    clippy::expect_used,
    reason = "contract tests fail loudly on a broken store"
)]

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use metis_domain::patterns::{PatternCaps, PatternRecord};
use metis_ports::patterns::{PatternError, PatternStore, RecordOutcome, RecordResult};

use super::Backend;

/// What the `PatternStore` clauses need of a backend: every [`Backend`] is one, and so is a
/// pattern-store-only fixture (PostgreSQL's pattern tables on a scratch database).
#[async_trait]
pub trait PatternBackend: Send + Sync {
    /// As [`Backend::patterns`].
    fn patterns(&self, caps: PatternCaps) -> Arc<dyn PatternStore>;

    /// As [`Backend::stamp_pattern_version`].
    async fn stamp_pattern_version(&self, workspace: &str, version: i64);

    /// As [`Backend::workspace`].
    fn workspace(&self, name: &str) -> String;

    /// As [`Backend::dir`].
    fn dir(&self) -> PathBuf;

    /// A workspace the store skips (for the file backends: a directory that does not exist).
    fn unusable_workspace(&self) -> String;
}

#[async_trait]
impl<B: Backend + ?Sized> PatternBackend for B {
    fn patterns(&self, caps: PatternCaps) -> Arc<dyn PatternStore> {
        Backend::patterns(self, caps)
    }

    async fn stamp_pattern_version(&self, workspace: &str, version: i64) {
        Backend::stamp_pattern_version(self, workspace, version).await;
    }

    fn workspace(&self, name: &str) -> String {
        Backend::workspace(self, name)
    }

    fn dir(&self) -> PathBuf {
        Backend::dir(self)
    }

    fn unusable_workspace(&self) -> String {
        Backend::dir(self).join("missing-ws").display().to_string()
    }
}

const DAY_US: i64 = 86_400 * 1_000_000;

/// An observation of signature `sig` (fingerprint `fp_<sig>`) on `model` at `at_us`.
#[must_use]
pub fn observation(sig: &str, model: &str, at_us: i64, cost_micros: i64) -> PatternRecord {
    PatternRecord {
        fingerprint_id: format!("fp_{sig}"),
        kind: "structural".to_owned(),
        structural_json: format!("{{\"sig\":\"{sig}\"}}"),
        structural_sig: sig.to_owned(),
        primary_model: model.to_owned(),
        cost_usd_micros: cost_micros,
        latency_ms: 10.0,
        pricing_version: format!("p{at_us}"),
        success_score: None,
        at_us,
    }
}

async fn recorded(store: &dyn PatternStore, ws: &str, r: PatternRecord) -> RecordResult {
    match store.record(ws, r).await.expect("record") {
        RecordOutcome::Recorded(res) => res,
        RecordOutcome::Skipped { reason } => {
            #[expect(clippy::panic, reason = "the clause failed")]
            {
                panic!("a writable workspace was skipped: {reason}")
            }
        }
    }
}

/// `record` creates the fingerprint when no row has the signature, and the (fingerprint,
/// model) outcome with sample size 1, the cost, the latency and `last_updated_at_us`.
pub async fn record_creates_a_fingerprint_and_an_outcome<B: PatternBackend + ?Sized>(b: &B) {
    let ws = b.workspace("w");
    let store = b.patterns(PatternCaps::default());
    let r = recorded(store.as_ref(), &ws, observation("aa", "m1", 1_000, 1500)).await;
    assert_eq!(
        r,
        RecordResult {
            fingerprint_id: "fp_aa".into(),
            primary_model: "m1".into(),
            sample_size_before: 0,
            sample_size_after: 1,
            was_new_fingerprint: true,
            over_soft_cap: false,
            rows_auto_evicted: 0,
        }
    );
    let rows = store.outcomes(&ws).await.expect("outcomes");
    assert_eq!(rows.len(), 1);
    let o = &rows[0];
    assert_eq!(
        (
            o.fingerprint_id.as_str(),
            o.structural_sig.as_str(),
            o.primary_model.as_str(),
            o.sample_size,
            o.sum_cost_usd_micros,
            o.sum_latency_ms,
            o.pricing_version_last.as_str(),
            o.last_updated_at_us,
            o.success_score_count
        ),
        ("fp_aa", "aa", "m1", 1, 1500, 10.0, "p1000", 1_000, 0)
    );
}

/// A second observation of a known signature reuses its fingerprint (even under another
/// fingerprint id) and adds to the outcome: `sample_size + 1`, cost and latency summed,
/// `last_updated_at_us = max(previous, at)`; the pricing version follows the newest record.
pub async fn a_known_signature_accumulates_on_its_outcome<B: PatternBackend + ?Sized>(b: &B) {
    let ws = b.workspace("w");
    let store = b.patterns(PatternCaps::default());
    recorded(store.as_ref(), &ws, observation("aa", "m1", 5_000, 100)).await;
    let mut again = observation("aa", "m1", 2_000, 50); // older
    again.fingerprint_id = "fp_other_id".into();
    let r = recorded(store.as_ref(), &ws, again).await;
    assert_eq!(
        (
            r.fingerprint_id.as_str(),
            r.was_new_fingerprint,
            r.sample_size_before,
            r.sample_size_after
        ),
        ("fp_aa", false, 1, 2)
    );
    let other_model = recorded(store.as_ref(), &ws, observation("aa", "m2", 1, 7)).await;
    assert_eq!(
        (
            other_model.fingerprint_id.as_str(),
            other_model.sample_size_after
        ),
        ("fp_aa", 1)
    );
    let rows = store.outcomes(&ws).await.expect("outcomes");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let m1 = &rows[0];
    assert_eq!(
        (
            m1.primary_model.as_str(),
            m1.sample_size,
            m1.sum_cost_usd_micros,
            m1.sum_latency_ms,
            m1.last_updated_at_us,
            m1.pricing_version_last.as_str()
        ),
        ("m1", 2, 150, 20.0, 5_000, "p5000")
    );
    let stats = store.stats(&ws).await.expect("stats").expect("exists");
    assert_eq!(
        (stats.fingerprints, stats.outcomes, stats.samples),
        (1, 2, 3)
    );
    assert_eq!(stats.models[0].model, "m1");
    assert_eq!(
        (stats.oldest_update_us, stats.newest_update_us),
        (Some(1), Some(5_000))
    );
}

/// With a score, the outcome's mean is updated by Welford's rule and counted; records
/// without a score leave the mean alone.
pub async fn scores_update_the_mean_by_welford<B: PatternBackend + ?Sized>(b: &B) {
    let ws = b.workspace("w");
    let store = b.patterns(PatternCaps::default());
    for (i, score) in [Some(1.0), None, Some(0.0), Some(0.5)]
        .into_iter()
        .enumerate()
    {
        let mut r = observation("aa", "m", i as i64, 1);
        r.success_score = score;
        recorded(store.as_ref(), &ws, r).await;
    }
    let o = &store.outcomes(&ws).await.expect("outcomes")[0];
    assert_eq!((o.sample_size, o.success_score_count), (4, 3));
    assert!((o.success_score_mean - 0.5).abs() < 1e-12, "{o:?}");
}

/// Above the hard cap, in the same transaction as the record: outcomes older than the age
/// limit go first, then the least recently updated (then smallest) down to the soft cap, and
/// fingerprints left without outcomes are removed.
pub async fn above_the_hard_cap_the_store_is_evicted_to_the_soft_cap<B: PatternBackend + ?Sized>(
    b: &B,
) {
    let ws = b.workspace("w");
    let caps = PatternCaps {
        soft_outcomes: 3,
        hard_outcomes: 5,
        max_age_days: 30,
    };
    let store = b.patterns(caps);
    let t0 = 1_000 * DAY_US;
    let t2 = t0 + 2 * DAY_US;
    for (sig, at) in [
        ("a", t0),
        ("b", t0 + 1),
        ("c", t2),
        ("c", t2), // c has two samples
        ("d", t2), // same time as c, one sample: evicted before c
        ("e", t2 + 5),
    ] {
        recorded(store.as_ref(), &ws, observation(sig, "m", at, 1)).await;
    }
    // Six outcomes > hard cap 5: a and b are past the age limit (30 days before f), then the
    // least recently updated, smallest outcome (d) goes to reach the soft cap of 3.
    let r = recorded(
        store.as_ref(),
        &ws,
        observation("f", "m", t0 + 31 * DAY_US + 10, 1),
    )
    .await;
    assert_eq!((r.rows_auto_evicted, r.over_soft_cap), (3, false), "{r:?}");
    let rows = store.outcomes(&ws).await.expect("outcomes");
    let sigs: Vec<&str> = rows.iter().map(|o| o.structural_sig.as_str()).collect();
    assert_eq!(sigs, vec!["c", "e", "f"], "kept: {rows:?}");
    let stats = store.stats(&ws).await.expect("stats").expect("exists");
    assert_eq!((stats.fingerprints, stats.outcomes), (3, 3));
}

/// Above the soft cap but not the hard cap only the age trim runs (fresh rows stay), the
/// trimmed rows are reported, and `over_soft_cap` says whether the store is still above it.
pub async fn above_the_soft_cap_only_the_age_trim_runs<B: PatternBackend + ?Sized>(b: &B) {
    let ws = b.workspace("w");
    let caps = PatternCaps {
        soft_outcomes: 2,
        hard_outcomes: 10,
        max_age_days: 30,
    };
    let store = b.patterns(caps);
    let now = 100 * DAY_US;
    recorded(
        store.as_ref(),
        &ws,
        observation("stale", "m", now - 31 * DAY_US, 1),
    )
    .await;
    recorded(store.as_ref(), &ws, observation("f1", "m", now - 2, 1)).await;
    let r = recorded(store.as_ref(), &ws, observation("f2", "m", now - 1, 1)).await;
    // Three outcomes > soft cap 2: the stale one is trimmed; two remain (not over).
    assert_eq!((r.rows_auto_evicted, r.over_soft_cap), (1, false), "{r:?}");
    let r = recorded(store.as_ref(), &ws, observation("f3", "m", now, 1)).await;
    // Three fresh outcomes: nothing is old, nothing is evicted, still over the soft cap.
    assert_eq!((r.rows_auto_evicted, r.over_soft_cap), (0, true), "{r:?}");
    let sigs: Vec<String> = store
        .outcomes(&ws)
        .await
        .expect("outcomes")
        .into_iter()
        .map(|o| o.structural_sig)
        .collect();
    assert_eq!(sigs, vec!["f1", "f2", "f3"]);
}

/// A workspace that is not a writable directory MUST yield `Skipped`, never an error, and
/// nothing is created for it.
pub async fn an_unusable_workspace_is_skipped<B: PatternBackend + ?Sized>(b: &B) {
    let store = b.patterns(PatternCaps::default());
    let missing = b.dir().join("no-such-dir").display().to_string();
    let file = b.dir().join("a-file");
    std::fs::write(&file, b"x").expect("write file");
    for ws in [
        missing.clone(),
        file.display().to_string(),
        "relative/ws".into(),
    ] {
        let r = store
            .record(&ws, observation("aa", "m", 1, 1))
            .await
            .expect("record must not fail");
        assert!(matches!(r, RecordOutcome::Skipped { .. }), "{ws}: {r:?}");
    }
    assert!(!std::path::Path::new(&missing).exists());
    assert_eq!(store.stats(&missing).await.expect("stats"), None);
}

/// A store from a newer binary MUST be refused untouched (`TooNew`).
pub async fn a_newer_pattern_store_is_refused<B: PatternBackend + ?Sized>(b: &B) {
    let ws = b.workspace("w");
    {
        let store = b.patterns(PatternCaps::default());
        recorded(store.as_ref(), &ws, observation("aa", "m", 1, 1)).await;
    }
    b.stamp_pattern_version(&ws, 99).await;
    let store = b.patterns(PatternCaps::default());
    let r = store.record(&ws, observation("bb", "m", 2, 1)).await;
    assert!(
        matches!(
            r,
            Err(PatternError::TooNew {
                found: 99,
                supported: 2,
                ..
            })
        ),
        "{r:?}"
    );
    let r = store.stats(&ws).await;
    assert!(matches!(r, Err(PatternError::TooNew { .. })), "{r:?}");
}

/// `replace_all` MUST leave the store equal to applying `records` in order to an empty store,
/// and returns how many were applied.
pub async fn replace_all_equals_a_fresh_replay<B: PatternBackend + ?Sized>(b: &B) {
    let (ws_live, ws_fresh) = (b.workspace("live"), b.workspace("fresh"));
    let store = b.patterns(PatternCaps::default());
    recorded(store.as_ref(), &ws_live, observation("junk", "x", 1, 1)).await;
    let records: Vec<PatternRecord> = (0..20)
        .map(|i| {
            let mut r = observation(&format!("s{}", i % 4), &format!("m{}", i % 3), i, i);
            r.success_score = (i % 2 == 0).then_some(0.25 * (i % 5) as f64);
            r
        })
        .collect();
    for r in &records {
        recorded(store.as_ref(), &ws_fresh, r.clone()).await;
    }
    let n = store
        .replace_all(&ws_live, records)
        .await
        .expect("replace_all");
    assert_eq!(n, 20);
    assert_eq!(
        store.outcomes(&ws_live).await.expect("outcomes"),
        store.outcomes(&ws_fresh).await.expect("outcomes")
    );
}

/// `stats` of a workspace without a store is `None` (and `outcomes` empty); `outcomes` are
/// ordered by fingerprint id, then model.
pub async fn reads_of_a_missing_store_are_empty_and_outcomes_are_ordered<
    B: PatternBackend + ?Sized,
>(
    b: &B,
) {
    let ws = b.workspace("w");
    let store = b.patterns(PatternCaps::default());
    assert_eq!(store.stats(&ws).await.expect("stats"), None);
    assert!(store.outcomes(&ws).await.expect("outcomes").is_empty());
    for (sig, model) in [("b", "z"), ("a", "y"), ("b", "a"), ("a", "b")] {
        recorded(store.as_ref(), &ws, observation(sig, model, 1, 1)).await;
    }
    let order: Vec<(String, String)> = store
        .outcomes(&ws)
        .await
        .expect("outcomes")
        .into_iter()
        .map(|o| (o.fingerprint_id, o.primary_model))
        .collect();
    let want: Vec<(String, String)> = [("fp_a", "b"), ("fp_a", "y"), ("fp_b", "a"), ("fp_b", "z")]
        .iter()
        .map(|(f, m)| ((*f).to_owned(), (*m).to_owned()))
        .collect();
    assert_eq!(order, want);
}

/// `record_many` applies the observations in order (the same store as recording them one by
/// one) and returns how many were applied; a skipped workspace applies none (0).
pub async fn record_many_equals_recording_one_by_one<B: PatternBackend + ?Sized>(b: &B) {
    let (ws_batch, ws_single) = (b.workspace("batch"), b.workspace("single"));
    let store = b.patterns(PatternCaps::default());
    let records: Vec<PatternRecord> = (0..12)
        .map(|i| {
            let mut r = observation(&format!("s{}", i % 3), &format!("m{}", i % 2), 100 - i, i);
            r.success_score = (i % 3 == 0).then_some(0.5);
            r
        })
        .collect();
    for r in &records {
        recorded(store.as_ref(), &ws_single, r.clone()).await;
    }
    let n = store
        .record_many(&ws_batch, records.clone())
        .await
        .expect("record_many");
    assert_eq!(n, 12);
    assert_eq!(
        store.outcomes(&ws_batch).await.expect("outcomes"),
        store.outcomes(&ws_single).await.expect("outcomes")
    );
    let unusable = b.unusable_workspace();
    assert_eq!(
        store
            .record_many(&unusable, records)
            .await
            .expect("skipped"),
        0
    );
}
