//! The `PatternStore` clauses on PostgreSQL's pattern tables (each test on its own scratch
//! database of `METIS_TEST_DATABASE_URL`), and the rebuild compared with SQLite's.
//!
//! `an_unusable_workspace_is_skipped` is not run here: its premise is a store inside the
//! workspace directory, and PostgreSQL keeps the projection in the database, so a workspace
//! missing on the gateway's host is stored like any other (as under `--patterns-dir`); the
//! adapter's own tests cover the names it does skip.

use metis_domain::patterns::{PatternCaps, PatternRecord};
use metis_ports::storage::{PatternPlace, StorageBackend};
use metis_tests::contract::patterns_postgres::postgres_patterns;
use metis_tests::contract::{PatternBackend, observation};

macro_rules! case {
    ($t:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $t() {
            let backend = postgres_patterns().await;
            metis_tests::contract::$t(&*backend).await;
        }
    };
}

case!(record_creates_a_fingerprint_and_an_outcome);
case!(a_known_signature_accumulates_on_its_outcome);
case!(scores_update_the_mean_by_welford);
case!(above_the_hard_cap_the_store_is_evicted_to_the_soft_cap);
case!(above_the_soft_cap_only_the_age_trim_runs);
case!(a_newer_pattern_store_is_refused);
case!(replace_all_equals_a_fresh_replay);
case!(record_many_equals_recording_one_by_one);
case!(reads_of_a_missing_store_are_empty_and_outcomes_are_ordered);

const DAY_US: i64 = 86_400 * 1_000_000;

/// Records that exercise every rule: out-of-order times (a replay lowers a fingerprint's
/// creation time), scores, the age trim and the hard cap.
fn mixed_records() -> Vec<PatternRecord> {
    (0..400_i64)
        .map(|i| {
            // A permutation of 0..400 spread over 80 days.
            let t = (i * 157) % 400;
            let mut r = observation(
                &format!("s{:02}", (i * 7) % 45),
                &format!("m{}", i % 3),
                t * DAY_US / 5,
                i,
            );
            r.success_score = (i % 3 != 0).then_some((i % 5) as f64 / 4.0);
            r
        })
        .collect()
}

/// `replace_all` on PostgreSQL leaves exactly what SQLite's leaves for the same records and
/// caps (outcomes and fingerprints), and what recording them one transaction at a time
/// leaves on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_all_equals_the_sqlite_store_for_the_same_records() {
    let caps = PatternCaps {
        soft_outcomes: 25,
        hard_outcomes: 40,
        max_age_days: 30,
    };
    let records = mixed_records();
    let pg = postgres_patterns().await;
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    let sqlite_ws = sqlite_dir.path().display().to_string();
    let sqlite = metis_storage_sqlite::SqliteBackend;
    let place = PatternPlace::InWorkspace;

    let pg_store = pg.patterns(caps);
    let (rebuilt, live) = (pg.workspace("rebuilt"), pg.workspace("live"));
    pg_store
        .replace_all(&rebuilt, records.clone())
        .await
        .expect("postgres replace_all");
    for chunk in records.chunks(37) {
        pg_store
            .record_many(&live, chunk.to_vec())
            .await
            .expect("postgres record_many");
    }
    sqlite
        .pattern_store(&place, caps)
        .replace_all(&sqlite_ws, records.clone())
        .await
        .expect("sqlite replace_all");

    let want = sqlite.pattern_files(&place);
    let pg_files = pg.files();
    let (want_dump, got_dump, live_dump) = tokio::task::spawn_blocking(move || {
        (
            want.export(&sqlite_ws).expect("sqlite export"),
            pg_files.export(&rebuilt).expect("postgres export"),
            pg_files.export(&live).expect("postgres export"),
        )
    })
    .await
    .expect("export task");
    assert!(
        (25..=40).contains(&want_dump.outcomes.len()),
        "the caps ran: {} outcomes",
        want_dump.outcomes.len()
    );
    assert_eq!(got_dump.outcomes, want_dump.outcomes);
    assert_eq!(got_dump.fingerprints, want_dump.fingerprints);
    assert_eq!(live_dump, got_dump);
    // The blocking side's progress ends at the total once the transaction committed.
    let files = pg.files();
    let last = std::sync::Mutex::new((0, 0));
    let n = tokio::task::block_in_place(|| {
        files.replace_all(&pg.workspace("again"), &records, &|d, t| {
            *last.lock().expect("lock") = (d, t)
        })
    })
    .expect("replace_all");
    assert_eq!((n, *last.lock().expect("lock")), (400, (400, 400)));
}
