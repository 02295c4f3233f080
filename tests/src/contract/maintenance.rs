//! Contract of the storage backend port's offline side (`StorageBackend`: backup, restore,
//! status, retention, compaction, migrations, read-only views and copies), run against every
//! file backend. Each clause opens the store through the port, as the CLI does.
#![expect(
    clippy::expect_used,
    reason = "contract tests fail loudly on a broken store"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use metis_ports::storage::{
    MaintenanceError, PatternPlace, PruneOptions, Schema, ServeOptions, StorageBackend,
    StoreCounts, no_progress,
};
use metis_usecases::storage::transfer::{Side, copy_store};

use super::{Backend, audit, call, key, turn};

/// The port and main store path of a file backend.
fn port(b: &dyn Backend) -> (Arc<dyn StorageBackend>, PathBuf) {
    b.storage()
        .expect("maintenance clauses run against file backends only")
}

/// Fill the main store: `n` call events at `ts0 + i` (every fifth an audit event), two
/// sessions (one the other's worker), one key, and a budget and a model group beside it.
async fn fill(backend: &dyn StorageBackend, db: &Path, n: u64, ts0: i64) {
    let store = backend
        .open_main(db, ServeOptions::default())
        .expect("open");
    for i in 0..n {
        let e = if i % 5 == 0 {
            audit(i, ts0 + i as i64)
        } else {
            call(i, ts0 + i as i64, "gk_1", 0.25)
        };
        store.emit(e);
    }
    let sessions = store.sessions();
    sessions
        .record_turn(turn("root", ts0, 1.0, Some("m")))
        .expect("turn");
    let mut kid = turn("kid", ts0 + 1, 0.5, None);
    kid.parent_session_id = Some(metis_domain::sessions::SessionId::parse("root").expect("id"));
    kid.is_worker = true;
    sessions.record_turn(kid).expect("turn");
    store.flush().await.expect("flush");
    sessions.flush().await.expect("flush");
    store.shutdown().await;
    backend.key_store(db).insert(key(1)).await.expect("key");
    backend
        .key_store(db)
        .update_policies(Box::new(|p| {
            p.model_groups.push(metis_domain::model_groups::ModelGroup {
                name: "cheap".into(),
                models: vec!["anthropic:claude-haiku-4-5".into()],
            });
            p.budgets.push(metis_domain::budgets::BudgetPolicy {
                scope: metis_domain::budgets::ScopeKind::Team,
                id: "platform".into(),
                daily_usd: None,
                weekly_usd: Some("20".into()),
                monthly_usd: Some("100".into()),
                tpm: Some(1000),
                alert_at: Some(vec![50]),
                allowed_models: Some(vec!["group:cheap".into()]),
                updated_at: None,
            });
            Ok(())
        }))
        .await
        .expect("policies");
}

/// The budgets and model groups stored beside the keys.
fn policies(backend: &dyn StorageBackend, db: &Path) -> metis_domain::budgets::Policies {
    backend
        .open_reader(db)
        .expect("reader")
        .policies()
        .expect("policies")
}

fn counts(backend: &dyn StorageBackend, db: &Path) -> StoreCounts {
    backend
        .open_reader(db)
        .expect("reader")
        .counts()
        .expect("counts")
}

/// `recognizes` knows the backend's own main store by its content and nothing else.
pub async fn a_backend_recognizes_its_own_files_only(b: &dyn Backend) {
    let (backend, db) = port(b);
    assert!(!backend.recognizes(&db), "a missing file is nobody's");
    fill(backend.as_ref(), &db, 3, 1_000).await;
    assert!(backend.recognizes(&db));
    let other = b.dir().join("not-a-store");
    std::fs::write(&other, b"plain text, long enough to hold any magic number").expect("write");
    assert!(!backend.recognizes(&other));
}

/// A backup is a new file holding every row (never overwriting), and a restore of it into a
/// fresh path gives the same store; a damaged backup is refused and the target untouched.
pub async fn backup_then_restore_gives_the_same_store(b: &dyn Backend) {
    let (backend, db) = port(b);
    fill(backend.as_ref(), &db, 20, 1_000).await;
    let dest = b.dir().join("backups").join("b1");
    let meta = backend.backup(&db, &dest, &no_progress).expect("backup");
    assert_eq!(meta.events, 20);
    assert!(matches!(
        backend.backup(&db, &dest, &no_progress),
        Err(MaintenanceError::Refused(_))
    ));
    let restored = b.dir().join("restored").join(backend.main_file());
    std::fs::create_dir_all(restored.parent().expect("parent")).expect("mkdir");
    backend
        .restore(&dest, &restored, false, &no_progress)
        .expect("restore");
    assert_eq!(
        counts(backend.as_ref(), &restored),
        counts(backend.as_ref(), &db)
    );
    let kept = policies(backend.as_ref(), &restored);
    assert_eq!(kept, policies(backend.as_ref(), &db));
    assert_eq!(kept.budgets.len(), 1, "the budget travels with the backup");

    // Damage the backup: the restore refuses, and the existing target stays byte-identical.
    let mut bytes = std::fs::read(&dest).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&dest, &bytes).expect("write");
    let before = std::fs::read(&restored).expect("read");
    assert!(
        backend
            .restore(&dest, &restored, true, &no_progress)
            .is_err()
    );
    assert!(
        std::fs::read(&restored).expect("read") == before,
        "a refused restore changed the target"
    );
}

/// `status` reports the rows stored and the versions (the file's and this binary's).
pub async fn status_counts_events_audit_events_and_sessions(b: &dyn Backend) {
    let (backend, db) = port(b);
    fill(backend.as_ref(), &db, 10, 1_000).await;
    let s = backend.status(&db, 2_000).expect("status");
    assert_eq!((s.events, s.audit_events, s.sessions), (10, 2, 2));
    assert_eq!(s.schema_version, s.supported_version);
    assert_eq!(
        (s.oldest_event_us, s.newest_event_us),
        (Some(1_000), Some(1_009))
    );
}

/// Retention deletes non-audit events older than the cutoff only; the dry run counts the
/// same rows and deletes nothing; the audit chain still verifies afterwards.
pub async fn prune_deletes_old_non_audit_events_only(b: &dyn Backend) {
    let (backend, db) = port(b);
    fill(backend.as_ref(), &db, 20, 1_000).await;
    let dry = backend.prune_dry_run(&db, 1_010).expect("dry run");
    assert_eq!(
        (dry.rows_eligible, dry.rows_audit_exempt, dry.rows_deleted),
        (8, 2, 0)
    );
    assert_eq!(counts(backend.as_ref(), &db).events, 20);
    let done = backend
        .prune(&db, 1_010, PruneOptions::default(), &no_progress)
        .expect("prune");
    assert_eq!((done.rows_eligible, done.rows_deleted), (8, 8));
    let reader = backend.open_reader(&db).expect("reader");
    assert_eq!(reader.counts().expect("counts").events, 12);
    assert_eq!(reader.verify_audit_chain().expect("chain"), Ok(4));
}

/// Compaction keeps every row.
pub async fn compaction_keeps_every_row(b: &dyn Backend) {
    let (backend, db) = port(b);
    fill(backend.as_ref(), &db, 30, 1_000).await;
    backend
        .prune(&db, 1_020, PruneOptions::default(), &no_progress)
        .expect("prune");
    let before = counts(backend.as_ref(), &db);
    backend.compact(&db).expect("compact");
    assert_eq!(counts(backend.as_ref(), &db), before);
}

/// A store this binary created has nothing to migrate, and a second plan after an apply is
/// empty too (migrations are idempotent).
pub async fn a_current_store_has_no_migration_steps(b: &dyn Backend) {
    let (backend, db) = port(b);
    fill(backend.as_ref(), &db, 2, 1_000).await;
    for schema in [Schema::Trace, Schema::Sessions] {
        let m = backend.migration(&db, schema);
        let plan = m.plan().expect("plan");
        assert!(plan.is_noop(), "{schema:?}: {plan:?}");
        assert_eq!(plan.current, plan.target);
        m.apply().expect("apply");
        assert!(m.plan().expect("plan").is_noop());
    }
}

/// Every maintenance operation refuses a store from a newer binary, untouched.
pub async fn maintenance_refuses_a_newer_store(b: &dyn Backend) {
    let (backend, db) = port(b);
    fill(backend.as_ref(), &db, 2, 1_000).await;
    b.stamp_trace_version(99).await;
    let before = std::fs::read(&db).expect("read");
    let too_new = |r: Result<(), MaintenanceError>| {
        assert!(
            matches!(&r, Err(MaintenanceError::TooNew { found: 99, .. })),
            "{r:?}"
        );
    };
    too_new(backend.status(&db, 0).map(drop));
    too_new(backend.prune_dry_run(&db, 0).map(drop));
    too_new(
        backend
            .prune(&db, 0, PruneOptions::default(), &no_progress)
            .map(drop),
    );
    too_new(backend.migration(&db, Schema::Trace).plan().map(drop));
    too_new(
        backend
            .backup(&db, &b.dir().join("b"), &no_progress)
            .map(drop),
    );
    assert!(backend.open_main(&db, ServeOptions::default()).is_err());
    assert!(
        std::fs::read(&db).expect("read") == before,
        "a refused operation changed the file"
    );
}

/// The read-only view pages events in id order and reads sessions and keys, without
/// changing the file.
pub async fn the_reader_pages_events_and_reads_sessions(b: &dyn Backend) {
    let (backend, db) = port(b);
    fill(backend.as_ref(), &db, 12, 1_000).await;
    let before = counts(backend.as_ref(), &db);
    let reader = backend.open_reader(&db).expect("reader");
    let first = reader.events_page(None, 5).expect("page");
    let rest = reader
        .events_page(first.last().map(|e| e.id.as_str()), 100)
        .expect("page");
    assert_eq!((first.len(), rest.len()), (5, 7));
    let ids: Vec<_> = first.iter().chain(&rest).map(|e| e.id.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(
        reader
            .session_children("root")
            .expect("children")
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["kid"]
    );
    assert_eq!(reader.keys().expect("keys").len(), 1);
    assert_eq!(
        reader
            .events_of_type("gateway.key_issued")
            .expect("type")
            .len(),
        3
    );
    drop(reader);
    assert_eq!(counts(backend.as_ref(), &db), before);
    assert_eq!(
        backend
            .migration(&db, Schema::Trace)
            .plan()
            .expect("plan")
            .current,
        backend.status(&db, 0).expect("status").supported_version,
        "reading leaves the version stamp alone"
    );
}

/// A copy into a new store of the same backend (the generic `migrate-store` path) keeps
/// every event byte-for-byte, the audit chain, sessions and keys; a second copy into the
/// now non-empty store is refused.
pub async fn a_copy_keeps_every_row_and_the_audit_chain(b: &dyn Backend) {
    let (backend, db) = port(b);
    fill(backend.as_ref(), &db, 25, 1_000).await;
    let to = b.dir().join("copy").join(backend.main_file());
    let side = |path| Side {
        backend: backend.as_ref(),
        path,
    };
    let report = copy_store(
        side(&db),
        side(&to),
        &[],
        &PatternPlace::InWorkspace,
        &no_progress,
    )
    .expect("copy");
    assert_eq!(
        (
            report.events,
            report.audit_chain,
            report.sessions,
            report.keys
        ),
        (25, 5, 2, 1)
    );
    let page = |p: &Path| {
        backend
            .open_reader(p)
            .expect("reader")
            .events_page(None, 1_000)
            .expect("page")
    };
    assert_eq!(page(&to), page(&db));
    assert!(
        copy_store(
            side(&db),
            side(&to),
            &[],
            &PatternPlace::InWorkspace,
            &no_progress
        )
        .is_err()
    );
}

/// `metis migrate-store` between two different backends and back: events byte-for-byte with
/// their audit chain, sessions, keys and a workspace's pattern outcomes arrive unchanged, a
/// non-empty destination is refused, and the round trip gives the source again.
pub async fn a_copy_to_another_backend_and_back_is_identical(a: &dyn Backend, b: &dyn Backend) {
    round_trip(a, b, true).await;
}

/// As [`a_copy_to_another_backend_and_back_is_identical`] for the main store only (events
/// with their audit chain, sessions, keys), for a backend whose pattern stores are not in
/// this build (PostgreSQL): equal counts and equal rows after the round trip.
pub async fn a_main_store_copy_to_another_backend_and_back_is_identical(
    a: &dyn Backend,
    b: &dyn Backend,
) {
    round_trip(a, b, false).await;
}

async fn round_trip(a: &dyn Backend, b: &dyn Backend, with_patterns: bool) {
    let ((from, db), (to, _)) = (port(a), port(b));
    assert_ne!(from.name(), to.name(), "two different backends");
    fill(from.as_ref(), &db, 50, 1_000).await;
    let ws = a.workspace("copied");
    let place = PatternPlace::InWorkspace;
    if with_patterns {
        for (i, (sig, model)) in [("a", "m1"), ("a", "m1"), ("b", "m2")]
            .into_iter()
            .enumerate()
        {
            let o = super::observation(sig, model, 7 + i as i64, 100);
            from.pattern_files(&place).record(&ws, &o).expect("record");
        }
    }
    let there = b.dir().join("copy").join(to.main_file());
    let workspaces: Vec<String> = if with_patterns {
        vec![ws.clone()]
    } else {
        Vec::new()
    };
    let report = copy_store(
        side(&from, &db),
        side(&to, &there),
        &workspaces,
        &place,
        &no_progress,
    )
    .expect("copy");
    assert_eq!(
        (
            report.events,
            report.audit_chain,
            report.sessions,
            report.keys
        ),
        (50, 10, 2, 1)
    );
    let patterns = if with_patterns { (1, 2) } else { (0, 0) };
    assert_eq!((report.pattern_stores, report.outcomes), patterns);
    assert_eq!(
        counts(to.as_ref(), &there),
        counts(from.as_ref(), &db),
        "equal counts on the other backend"
    );
    assert_eq!(policies(to.as_ref(), &there), policies(from.as_ref(), &db));
    assert_eq!(policies(to.as_ref(), &there).budgets.len(), 1);
    assert!(
        copy_store(
            side(&from, &db),
            side(&to, &there),
            &[],
            &place,
            &no_progress
        )
        .is_err(),
        "a destination that holds anything is refused"
    );

    // And back into a fresh store of the first backend (its pattern store moved aside).
    let outcomes_before = if with_patterns {
        from.pattern_files(&place).outcomes(&ws).expect("outcomes")
    } else {
        Vec::new()
    };
    let pattern_file = from.pattern_files(&place).path(&ws);
    for f in [
        pattern_file.clone(),
        with_suffix(&pattern_file, "-wal"),
        with_suffix(&pattern_file, "-shm"),
    ] {
        let _ = std::fs::remove_file(f);
    }
    let back = a.dir().join("back").join(from.main_file());
    let report = copy_store(
        side(&to, &there),
        side(&from, &back),
        &workspaces,
        &place,
        &no_progress,
    )
    .expect("copy back");
    assert_eq!(
        (report.events, report.audit_chain, report.outcomes),
        (50, 10, patterns.1)
    );
    let read = |backend: &Arc<dyn StorageBackend>, path: &Path| {
        let r = backend.open_reader(path).expect("reader");
        (
            r.events_page(None, 1_000).expect("events"),
            r.sessions(None, 100).expect("sessions"),
            r.keys().expect("keys"),
            r.policies().expect("policies"),
        )
    };
    assert!(
        read(&from, &back) == read(&from, &db),
        "the round trip changed rows"
    );
    if with_patterns {
        assert_eq!(
            from.pattern_files(&place).outcomes(&ws).expect("outcomes"),
            outcomes_before
        );
    }
}

/// A server engine (PostgreSQL) recognizes no file as its store (not even the data-dir path
/// the app hands it). Its backup is a new portable file with its `.meta` (never
/// overwriting); a restore refuses a file that is not such a snapshot, a non-empty database
/// without `force` and a damaged snapshot, changing nothing, and with `force` brings back
/// exactly the rows of the snapshot.
pub async fn a_server_engine_backs_up_to_a_portable_file_and_restores_it(b: &dyn Backend) {
    let (backend, db) = port(b);
    fill(backend.as_ref(), &db, 3, 1_000).await;
    assert!(!backend.recognizes(&db));
    let file = b.dir().join("some-file");
    std::fs::write(&file, b"SQLite format 3\0 and more bytes").expect("write");
    assert!(!backend.recognizes(&file));
    assert!(backend.main_exists(&db), "the database holds the store");
    let dest = b.dir().join("b1");
    let meta = backend
        .backup(&db, &dest, &no_progress)
        .expect("backup of a PostgreSQL store");
    assert_eq!(meta.events, 3);
    assert!(dest.exists() && b.dir().join("b1.meta").exists());
    let again = backend.backup(&db, &dest, &no_progress);
    assert!(
        matches!(&again, Err(MaintenanceError::Refused(m)) if m.contains("already exists")),
        "{again:?}"
    );
    let r = backend.restore(&file, &db, true, &no_progress);
    assert!(
        matches!(&r, Err(MaintenanceError::Refused(m)) if m.contains("not a PostgreSQL store snapshot")),
        "{r:?}"
    );
    let r = backend.restore(&dest, &db, false, &no_progress);
    assert!(
        matches!(&r, Err(MaintenanceError::Refused(m)) if m.contains("--force")),
        "{r:?}"
    );
    let store = backend
        .open_main(&db, ServeOptions::default())
        .expect("open");
    for i in 100..102 {
        store.emit(call(i, 5_000 + i as i64, "gk_1", 0.25));
    }
    store.flush().await.expect("flush");
    store.shutdown().await;
    assert_eq!(counts(backend.as_ref(), &db).events, 5);
    let mut damaged = std::fs::read(&dest).expect("read");
    let last = damaged.len() - 3;
    damaged[last] ^= 0x01;
    let broken = b.dir().join("b2");
    std::fs::write(&broken, &damaged).expect("write");
    std::fs::copy(b.dir().join("b1.meta"), b.dir().join("b2.meta")).expect("copy meta");
    let r = backend.restore(&broken, &db, true, &no_progress);
    assert!(
        matches!(&r, Err(MaintenanceError::Refused(m)) if m.contains("checksum mismatch")),
        "{r:?}"
    );
    assert_eq!(counts(backend.as_ref(), &db).events, 5, "nothing changed");
    let summary = backend
        .restore(&dest, &db, true, &no_progress)
        .expect("restore with force");
    assert_eq!(summary.events, 3);
    assert_eq!(
        counts(backend.as_ref(), &db).events,
        3,
        "the snapshot's rows, exactly"
    );
    let kept = policies(backend.as_ref(), &db);
    assert_eq!(
        (kept.budgets.len(), kept.model_groups.len()),
        (1, 1),
        "budgets and groups travel with the snapshot"
    );
}

/// A server store stamped by a newer binary this one cannot run on is refused by every
/// maintenance operation (`TooNew`) and by opening, and its stamp is left alone.
pub async fn a_newer_server_store_refuses_maintenance_untouched(b: &dyn Backend) {
    let (backend, db) = port(b);
    fill(backend.as_ref(), &db, 2, 1_000).await;
    b.stamp_trace_version(99).await;
    let too_new = |r: Result<(), MaintenanceError>| {
        assert!(
            matches!(&r, Err(MaintenanceError::TooNew { found: 99, .. })),
            "{r:?}"
        );
    };
    too_new(backend.status(&db, 0).map(drop));
    too_new(backend.prune_dry_run(&db, 0).map(drop));
    too_new(
        backend
            .prune(&db, 0, PruneOptions::default(), &no_progress)
            .map(drop),
    );
    too_new(backend.compact(&db).map(drop));
    too_new(backend.migration(&db, Schema::Trace).plan().map(drop));
    too_new(backend.migration(&db, Schema::Trace).apply().map(drop));
    assert!(backend.open_main(&db, ServeOptions::default()).is_err());
    assert!(backend.open_reader(&db).is_err());
    assert_eq!(b.trace_version().await, Some(99), "the stamp was changed");
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn side<'a>(backend: &'a Arc<dyn StorageBackend>, path: &'a Path) -> Side<'a> {
    Side {
        backend: backend.as_ref(),
        path,
    }
}
