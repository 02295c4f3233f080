//! The PostgreSQL pattern tables on a scratch database: replicas writing one workspace,
//! workspaces sharing the tables, the schema and its migration, copies in and out. The port's
//! clauses run in the contract suite (`metis-tests`, `patterns_postgres`).

use std::sync::Arc;
use std::thread;

use metis_domain::patterns::{MemoryRows, PatternCaps, PatternRecord, apply_record};
use metis_ports::patterns::{PatternError, RecordOutcome};
use metis_ports::storage::{MaintenanceError, PatternFiles, no_progress};

use super::schema::{COMPONENT, V1};
use super::{PgPatterns, files};
use crate::pool::Db;
use crate::schema::{self as versions, Component};
use crate::scratch::ScratchDatabase;

type R = Result<(), Box<dyn std::error::Error>>;

fn scratch() -> Result<(ScratchDatabase, Db), Box<dyn std::error::Error>> {
    let s = ScratchDatabase::from_env()?;
    let db = Db::new(s.config().clone())?;
    Ok((s, db))
}

fn obs(sig: &str, model: &str, at_us: i64, cost: i64) -> PatternRecord {
    PatternRecord {
        fingerprint_id: format!("fp_{sig}"),
        kind: "structural".into(),
        structural_json: format!("{{\"sig\":\"{sig}\"}}"),
        structural_sig: sig.into(),
        primary_model: model.into(),
        cost_usd_micros: cost,
        latency_ms: 1.5,
        pricing_version: format!("p{at_us}"),
        success_score: None,
        at_us,
    }
}

/// Run one SQL batch on `db` (test set-up: stamps, rows the store never writes).
fn sql(db: &Db, batch: &str) -> R {
    let pool = db.clone();
    let batch = batch.to_owned();
    db.block_on(async move {
        pool.get().await?.batch_execute(&batch).await?;
        Ok(())
    })?;
    Ok(())
}

fn recorded(files: &dyn PatternFiles, ws: &str, r: &PatternRecord) -> u64 {
    match files.record(ws, r).unwrap() {
        RecordOutcome::Recorded(res) => res.rows_auto_evicted,
        RecordOutcome::Skipped { reason } => panic!("skipped {ws}: {reason}"),
    }
}

/// Two replicas (each its own pool) record into one workspace at the same time, one record
/// or a batch per transaction: every sample, cost and score is counted once.
#[test]
fn two_replicas_recording_into_one_workspace_lose_no_update() -> R {
    let (_s, db) = scratch()?;
    let ws = "/fleet/ws";
    // Create the tables first so both replicas start on the same schema.
    files(db.clone()).record_many(ws, &[])?;
    const PER_REPLICA: i64 = 120;
    let replicas: Vec<_> = (0..2)
        .map(|replica| {
            let files = files(Db::new(db.config().clone()).unwrap());
            thread::spawn(move || {
                let records: Vec<PatternRecord> = (0..PER_REPLICA)
                    .map(|i| {
                        let mut r = obs(&format!("s{}", i % 3), &format!("m{}", i % 2), i, 7);
                        r.success_score = Some(if replica == 0 { 1.0 } else { 0.0 });
                        r
                    })
                    .collect();
                // Alternate single records and batches of five.
                let mut i = 0;
                while i < records.len() {
                    if i % 10 == 0 {
                        let end = (i + 5).min(records.len());
                        assert_eq!(
                            files.record_many(ws, &records[i..end]).unwrap(),
                            (end - i) as u64
                        );
                        i = end;
                    } else {
                        recorded(files.as_ref(), ws, &records[i]);
                        i += 1;
                    }
                }
            })
        })
        .collect();
    for r in replicas {
        r.join().map_err(|_| "a replica thread panicked")?;
    }
    let rows = files(db).outcomes(ws)?;
    assert_eq!(rows.len(), 6, "{rows:?}");
    for o in &rows {
        // Each (signature, model) pair gets 20 records from each replica.
        assert_eq!(o.sample_size, 40, "{o:?}");
        assert_eq!(o.sum_cost_usd_micros, 280, "{o:?}");
        assert!((o.sum_latency_ms - 60.0).abs() < 1e-9, "{o:?}");
        assert_eq!(o.success_score_count, 40, "{o:?}");
        assert!((o.success_score_mean - 0.5).abs() < 1e-9, "{o:?}");
    }
    Ok(())
}

/// Two replicas adding new outcomes at once: the caps see every row (the store never ends
/// above the hard cap) and the count equals one writer applying all the records in turn.
#[test]
fn the_caps_hold_with_concurrent_writers() -> R {
    let (_s, db) = scratch()?;
    let ws = "/fleet/capped";
    let caps = PatternCaps {
        soft_outcomes: 5,
        hard_outcomes: 8,
        max_age_days: 10_000,
    };
    PgPatterns::new(db.clone(), caps).record_many(ws, &[])?;
    const PER_REPLICA: i64 = 60;
    let replicas: Vec<_> = (0..2)
        .map(|replica| {
            let store = PgPatterns::new(Db::new(db.config().clone()).unwrap(), caps);
            thread::spawn(move || {
                (0..PER_REPLICA)
                    .map(|i| {
                        let r = obs(&format!("r{replica}_{i:03}"), "m", 1_000 + i, 1);
                        recorded(&store, ws, &r)
                    })
                    .sum::<u64>()
            })
        })
        .collect();
    let mut evicted = 0;
    for r in replicas {
        evicted += r.join().map_err(|_| "a replica thread panicked")?;
    }
    let mut reference = MemoryRows::default();
    for i in 0..2 * PER_REPLICA {
        apply_record(&mut reference, &obs(&format!("x{i:03}"), "m", i, 1), &caps).unwrap();
    }
    let stats = files(db).stats(ws)?.ok_or("the store exists")?;
    assert!(stats.outcomes <= caps.hard_outcomes, "{stats:?}");
    assert_eq!(stats.outcomes, reference.outcomes.len() as u64);
    assert_eq!(stats.fingerprints, stats.outcomes, "orphans were removed");
    assert_eq!(evicted + stats.outcomes, 2 * PER_REPLICA as u64);
    Ok(())
}

/// Workspaces share the tables but nothing else: the same signatures in two workspaces are
/// two projections, a rebuild and the caps of one leave the other as it was.
#[test]
fn workspaces_are_isolated_in_the_shared_tables() -> R {
    let (_s, db) = scratch()?;
    let (a, b) = ("/ws/a", "/ws/b");
    let small = PgPatterns::new(
        db.clone(),
        PatternCaps {
            soft_outcomes: 1,
            hard_outcomes: 2,
            max_age_days: 10_000,
        },
    );
    let plain = files(db.clone());
    for (i, sig) in ["s1", "s2", "s3"].iter().enumerate() {
        recorded(plain.as_ref(), b, &obs(sig, "m", i as i64, 10));
        recorded(plain.as_ref(), a, &obs(sig, "m", i as i64, 1));
    }
    let b_before = plain.outcomes(b)?;
    assert_eq!(b_before.len(), 3);
    assert!(b_before.iter().all(|o| o.sum_cost_usd_micros == 10));
    // Three outcomes in `a` > its hard cap of 2: only `a` is evicted to one row.
    assert_eq!(recorded(&small, a, &obs("s4", "m", 9, 1)), 3);
    assert_eq!(plain.outcomes(a)?.len(), 1);
    plain.replace_all(a, &[obs("only", "m", 1, 5)], &no_progress)?;
    let a_rows = plain.outcomes(a)?;
    assert_eq!(a_rows.len(), 1);
    assert_eq!(a_rows[0].structural_sig, "only");
    assert_eq!(plain.outcomes(b)?, b_before);
    let (sa, sb) = (
        plain.stats(a)?.ok_or("a exists")?,
        plain.stats(b)?.ok_or("b exists")?,
    );
    assert_eq!((sa.fingerprints, sa.outcomes, sa.samples), (1, 1, 1));
    assert_eq!((sb.fingerprints, sb.outcomes, sb.samples), (3, 3, 3));
    assert_eq!(plain.stats("/ws/never")?, None);
    assert!(plain.outcomes("/ws/never")?.is_empty());
    Ok(())
}

/// The projection is not on the gateway's disk, so a workspace need not exist on this host;
/// only names PostgreSQL cannot key are skipped.
#[test]
fn any_workspace_name_is_stored_but_empty_and_nul_are_skipped() -> R {
    let (_s, db) = scratch()?;
    let f = files(db);
    for ws in ["/not/on/this/host", "relative/ws", "C:\\Users\\dev\\repo"] {
        recorded(f.as_ref(), ws, &obs("aa", "m", 1, 1));
        assert_eq!(f.stats(ws)?.map(|s| s.outcomes), Some(1), "{ws}");
    }
    for ws in ["", "a\0b"] {
        let r = f.record(ws, &obs("aa", "m", 1, 1))?;
        assert!(matches!(r, RecordOutcome::Skipped { .. }), "{ws:?}: {r:?}");
        assert_eq!(f.record_many(ws, &[obs("aa", "m", 1, 1)])?, 0);
        assert!(f.replace_all(ws, &[], &no_progress).is_err());
    }
    Ok(())
}

/// Reads never create the tables; a schema from a newer, incompatible binary is refused
/// untouched, a newer compatible one is used.
#[test]
fn reads_create_nothing_and_a_newer_schema_is_refused() -> R {
    let (_s, db) = scratch()?;
    assert_eq!(files(db.clone()).stats("/w")?, None);
    assert!(files(db.clone()).export("/w")?.outcomes.is_empty());
    let probe = db.clone();
    let tables: i64 = db.block_on(async move {
        let c = probe.get().await?;
        Ok(c.query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pattern_%'",
            &[],
        )
        .await?
        .get(0))
    })?;
    assert_eq!(tables, 0);

    recorded(files(db.clone()).as_ref(), "/w", &obs("aa", "m", 1, 1));
    sql(
        &db,
        "UPDATE metis_schema SET version = 3, compatible_from = 2 WHERE component = 'patterns'",
    )?;
    recorded(files(db.clone()).as_ref(), "/w", &obs("bb", "m", 2, 1));
    sql(
        &db,
        "UPDATE metis_schema SET version = 99, compatible_from = 99 WHERE component = 'patterns'",
    )?;
    let f = files(db.clone());
    let r = f.record("/w", &obs("cc", "m", 3, 1));
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
    assert!(matches!(f.stats("/w"), Err(PatternError::TooNew { .. })));
    let plan = f.migration("/w").plan();
    assert!(
        matches!(
            plan,
            Err(MaintenanceError::TooNew {
                found: 99,
                supported: 2,
                ..
            })
        ),
        "{plan:?}"
    );
    sql(
        &db,
        "UPDATE metis_schema SET version = 2, compatible_from = 1 WHERE component = 'patterns'",
    )?;
    assert_eq!(files(db).stats("/w")?.map(|s| s.outcomes), Some(2));
    Ok(())
}

/// `patterns migrate` on tables of version 1: the plan names the step and changes nothing,
/// apply runs it keeping every row, a second plan is empty; no safety copy is written.
#[test]
fn the_migration_brings_version_1_tables_to_2_keeping_rows() -> R {
    let (_s, db) = scratch()?;
    let f = files(db.clone());
    assert!(matches!(
        f.migration("/w").plan(),
        Err(MaintenanceError::Refused(_))
    ));
    const ONLY_V1: Component = Component {
        name: "patterns",
        steps: &[V1],
        compatible_from: 1,
    };
    let pool = db.clone();
    db.block_on(async move {
        let mut c = pool.get().await?;
        versions::migrate(&mut c, &ONLY_V1)
            .await
            .map_err(|e| crate::pool::DbError::Stopped(e.to_string()))?;
        Ok(())
    })?;
    sql(
        &db,
        "INSERT INTO pattern_workspaces (workspace) VALUES ('/w');
         INSERT INTO pattern_fingerprints (workspace, id, structural_json, structural_sig,
             created_at_us) VALUES ('/w', 'fp_aa', '{}', 'aa', 5);
         INSERT INTO pattern_outcomes (workspace, fingerprint_id, primary_model, sample_size,
             last_updated_at_us) VALUES ('/w', 'fp_aa', 'm', 3, 5);",
    )?;
    let m = f.migration("/w");
    let plan = m.plan()?;
    assert_eq!((plan.current, plan.target), (1, 2));
    assert_eq!(plan.steps, vec![COMPONENT.steps[1].description.to_owned()]);
    assert_eq!(m.plan()?, plan, "plan changes nothing");
    let backup = m.backup(&std::env::temp_dir().join("never-written"), &no_progress);
    assert!(
        matches!(&backup, Err(MaintenanceError::Refused(t)) if t.contains("pg_dump")),
        "{backup:?}"
    );
    let applied = m.apply()?;
    assert_eq!(applied.steps, plan.steps);
    assert!(m.plan()?.is_noop());
    assert!(
        m.path().display().to_string().contains("pattern tables"),
        "{}",
        m.path().display()
    );
    // The row is kept and the store goes on from it.
    recorded(f.as_ref(), "/w", &obs("aa", "m", 9, 1));
    let rows = f.outcomes("/w")?;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].sample_size, rows[0].last_updated_at_us), (4, 9));
    Ok(())
}

/// Export then import gives the same rows; import refuses a store that holds rows and
/// changes nothing; a duplicate in the dump fails the whole import.
#[test]
fn export_and_import_copy_rows_as_given() -> R {
    let (_s, db) = scratch()?;
    let f = files(db.clone());
    for i in 0..12 {
        let mut r = obs(&format!("s{}", i % 4), &format!("m{}", i % 3), 100 + i, i);
        r.success_score = (i % 2 == 0).then_some(0.25);
        recorded(f.as_ref(), "/src", &r);
    }
    let dump = f.export("/src")?;
    assert_eq!((dump.fingerprints.len(), dump.outcomes.len()), (4, 12));
    f.import("/dst", &dump)?;
    assert_eq!(f.export("/dst")?, dump);
    let again = f.import("/dst", &dump);
    assert!(
        matches!(&again, Err(PatternError::Unavailable { message, .. }) if message.contains("already holds rows")),
        "{again:?}"
    );
    assert_eq!(f.export("/dst")?, dump);
    let mut dup = dump.clone();
    dup.outcomes.push(dump.outcomes[0].clone());
    let r = f.import("/dup", &dup);
    assert!(
        matches!(&r, Err(PatternError::Unavailable { message, .. }) if message.contains("duplicate key")),
        "{r:?}"
    );
    assert!(f.export("/dup")?.outcomes.is_empty(), "nothing was kept");
    Ok(())
}

/// `replace_all` keeps the workspace's embedding cache and reports progress at the end.
#[test]
fn replace_all_keeps_the_embedding_cache() -> R {
    let (_s, db) = scratch()?;
    let f = files(db.clone());
    recorded(f.as_ref(), "/w", &obs("aa", "m", 1, 1));
    sql(
        &db,
        "INSERT INTO pattern_embedding_cache (workspace, text_sha256, provider_id,
             embedding_blob, embedding_dim, created_at_us, last_used_at_us)
         VALUES ('/w', 'h', 'p', '\\x00', 1, 1, 1)",
    )?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let progress = move |d: u64, t: u64| s2.lock().unwrap().push((d, t));
    let records: Vec<PatternRecord> = (0..1500).map(|i| obs("bb", "m", i, 1)).collect();
    assert_eq!(f.replace_all("/w", &records, &progress)?, 1500);
    assert_eq!(*seen.lock().unwrap(), vec![(1000, 1500), (1500, 1500)]);
    let stats = f.stats("/w")?.ok_or("exists")?;
    assert_eq!(
        (stats.embedding_cache_rows, stats.outcomes, stats.samples),
        (1, 1, 1500)
    );
    Ok(())
}

/// Text keys sort by bytes whatever the database's locale, so outcome lists and eviction
/// order match SQLite and the domain's `MemoryRows`.
#[test]
fn text_keys_use_the_byte_order_collation() -> R {
    let (_s, db) = scratch()?;
    files(db.clone()).record_many("/w", &[])?;
    let probe = db.clone();
    let not_c: Vec<String> = db.block_on(async move {
        let c = probe.get().await?;
        Ok(c.query(
            "SELECT table_name || '.' || column_name FROM information_schema.columns \
             WHERE table_name LIKE 'pattern_%' AND data_type = 'text' \
             AND column_name IN ('workspace', 'id', 'fingerprint_id', 'primary_model', \
                 'structural_sig', 'turn_id', 'text_sha256', 'provider_id') \
             AND collation_name IS DISTINCT FROM 'C' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    })?;
    assert!(
        not_c.is_empty(),
        "key columns without COLLATE \"C\": {not_c:?}"
    );
    Ok(())
}
