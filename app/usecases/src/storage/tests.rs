//! Unit tests of the storage use cases against small in-memory stand-ins for the port
//! (`StoreReader`, `Migratable`, `PatternFiles`); the real engines are covered by the
//! storage contract suite in `metis-tests`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use metis_domain::audit::BrokenLink;
use metis_domain::keys::KeyRecord;
use metis_domain::patterns::{
    FingerprintInputs, PatternRecord, PatternRecorded, StructuralFeatures,
};
use metis_domain::sessions::SessionRecord;
use metis_ports::keys::KeyStoreError;
use metis_ports::patterns::{OutcomeRow, PatternError, PatternStats, RecordOutcome};
use metis_ports::storage::{
    MaintenanceError, Migratable, MigrationPlan, PatternDump, PatternFiles, Progress, StoreCounts,
    StoreReader, no_progress,
};
use metis_ports::trace::{EventRow, TraceError};

use super::migrate::{backup_path, migrate};
use super::{audit, projection, sessions};

#[derive(Default)]
struct Reader {
    events: Vec<EventRow>,
    sessions: Vec<SessionRecord>,
    chain: Option<Result<u64, BrokenLink>>,
}

impl StoreReader for Reader {
    fn counts(&self) -> Result<StoreCounts, TraceError> {
        Ok(StoreCounts {
            events: self.events.len() as u64,
            sessions: self.sessions.len() as u64,
            keys: 0,
        })
    }

    fn events_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<EventRow>, TraceError> {
        Ok(self
            .events
            .iter()
            .filter(|e| after.is_none_or(|a| e.id.as_str() > a))
            .take(limit)
            .cloned()
            .collect())
    }

    fn events_of_type(&self, event_type: &str) -> Result<Vec<EventRow>, TraceError> {
        Ok(self
            .events
            .iter()
            .filter(|e| e.event_type == event_type)
            .cloned()
            .collect())
    }

    fn audit_events(&self, _: i64, _: i64, _: &[String]) -> Result<Vec<EventRow>, TraceError> {
        Ok(Vec::new())
    }

    fn verify_audit_chain(&self) -> Result<Result<u64, BrokenLink>, TraceError> {
        self.chain
            .clone()
            .ok_or_else(|| TraceError::Unavailable("no chain in this fake".into()))
    }

    fn count_unchained_audit(&self) -> Result<u64, TraceError> {
        Ok(3)
    }

    fn session(&self, id: &str) -> Result<Option<SessionRecord>, TraceError> {
        Ok(self.sessions.iter().find(|s| s.id == id).cloned())
    }

    fn sessions(&self, _: Option<&str>, limit: u32) -> Result<Vec<SessionRecord>, TraceError> {
        Ok(self.sessions.iter().take(limit as usize).cloned().collect())
    }

    fn session_children(&self, parent: &str) -> Result<Vec<SessionRecord>, TraceError> {
        Ok(self
            .sessions
            .iter()
            .filter(|s| s.parent_session_id.as_deref() == Some(parent))
            .cloned()
            .collect())
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        Ok(Vec::new())
    }

    fn policies(&self) -> Result<metis_domain::budgets::Policies, KeyStoreError> {
        Ok(metis_domain::budgets::Policies::default())
    }
}

fn session(id: &str, parent: Option<&str>) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        workspace_path: "/w".into(),
        active_model: None,
        cost_so_far_usd: 1.0,
        turn_count: 1,
        created_at_us: 0,
        updated_at_us: 0,
        parent_session_id: parent.map(Into::into),
        parent_tool_use_id: None,
        is_worker: parent.is_some(),
    }
}

#[test]
fn descendants_walk_every_generation_once_and_stop_at_the_limit() {
    // a -> b -> c, and c names a as its child's parent chain back (c -> a would be a cycle):
    // here `a` is also listed as a child of `c`, which the walk must not revisit.
    let reader = Reader {
        sessions: vec![
            session("a", Some("c")),
            session("b", Some("a")),
            session("c", Some("b")),
            session("d", Some("a")),
        ],
        ..Reader::default()
    };
    let ids = |v: Vec<SessionRecord>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let all = ids(sessions::descendants(&reader, "a", 100).unwrap());
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        !all.contains(&"a".to_owned()),
        "the root is never its own descendant"
    );
    assert_eq!(sessions::descendants(&reader, "a", 2).unwrap().len(), 2);
    assert!(
        sessions::descendants(&reader, "nobody", 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn verify_reports_the_chain_and_the_unchained_count() {
    let broken = BrokenLink {
        id: "e2".into(),
        expected_seq: 2,
        problem: "hash mismatch".into(),
    };
    let reader = Reader {
        chain: Some(Err(broken.clone())),
        ..Reader::default()
    };
    let r = audit::verify(&reader).unwrap();
    assert_eq!((r.chain, r.unchained), (Err(broken), 3));
    assert!(
        audit::verify(&Reader::default()).is_err(),
        "a read error is an error"
    );
}

/// A migration target that records what was done to it.
struct Target {
    path: PathBuf,
    steps: Vec<String>,
    fail_backup: bool,
    log: Mutex<Vec<String>>,
}

impl Target {
    fn new(steps: &[&str], fail_backup: bool) -> Self {
        Self {
            path: PathBuf::from("/data/metis.db"),
            steps: steps.iter().map(|s| (*s).to_owned()).collect(),
            fail_backup,
            log: Mutex::new(Vec::new()),
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Migratable for Target {
    fn path(&self) -> &Path {
        &self.path
    }

    fn plan(&self) -> Result<MigrationPlan, MaintenanceError> {
        self.log.lock().unwrap().push("plan".into());
        Ok(MigrationPlan {
            path: self.path.clone(),
            current: 1,
            target: 1 + self.steps.len() as i64,
            steps: self.steps.clone(),
        })
    }

    fn apply(&self) -> Result<MigrationPlan, MaintenanceError> {
        self.log.lock().unwrap().push("apply".into());
        Ok(MigrationPlan {
            current: 1 + self.steps.len() as i64,
            ..self.plan()?
        })
    }

    fn backup(&self, dest: &Path, _: Progress<'_>) -> Result<(), MaintenanceError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("backup {}", dest.display()));
        if self.fail_backup {
            return Err(MaintenanceError::Failed("disk full".into()));
        }
        Ok(())
    }
}

#[test]
fn the_safety_copy_is_named_after_the_file_and_the_utc_time() {
    assert_eq!(
        backup_path(Path::new("/d/metis.db"), 1_747_318_930_000_000),
        PathBuf::from("/d/metis.db.pre-migrate-20250515T142210Z.db")
    );
    assert_eq!(
        backup_path(Path::new("metis.db"), 0),
        PathBuf::from("./metis.db.pre-migrate-19700101T000000Z.db")
    );
}

#[test]
fn a_dry_run_only_plans_and_names_the_copy_it_would_take() {
    let t = Target::new(&["create index x"], false);
    let out = migrate(&t, true, 0, &no_progress).unwrap();
    assert_eq!(t.log(), ["plan"]);
    assert!(out.dry_run);
    assert_eq!(out.plan.steps, ["create index x"]);
    assert!(out.backup.is_some());
}

#[test]
fn a_migration_copies_the_file_before_applying_and_reports_the_old_version() {
    let t = Target::new(&["a", "b"], false);
    let out = migrate(&t, false, 0, &no_progress).unwrap();
    let log = t.log();
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(
        log[1].starts_with("backup /data/metis.db.pre-migrate-"),
        "{log:?}"
    );
    assert_eq!(log[2], "apply");
    assert_eq!((out.plan.current, out.plan.target), (1, 3));
    assert!(!out.dry_run);
}

#[test]
fn no_migration_runs_without_its_copy() {
    let t = Target::new(&["a"], true);
    let err = migrate(&t, false, 0, &no_progress).unwrap_err().to_string();
    assert!(
        err.contains("nothing was migrated") && err.contains("disk full"),
        "{err}"
    );
    assert!(!t.log().contains(&"apply".to_owned()));
}

#[test]
fn an_up_to_date_file_is_neither_copied_nor_touched() {
    let t = Target::new(&[], false);
    let out = migrate(&t, false, 0, &no_progress).unwrap();
    assert_eq!(t.log(), ["plan"]);
    assert_eq!(out.backup, None);
}

/// A pattern store that keeps what it was given.
#[derive(Default)]
struct Files {
    replaced: Mutex<Vec<PatternRecord>>,
}

impl PatternFiles for Files {
    fn path(&self, workspace: &str) -> PathBuf {
        Path::new(workspace).join("patterns.fake")
    }

    fn record(&self, _: &str, _: &PatternRecord) -> Result<RecordOutcome, PatternError> {
        Ok(RecordOutcome::Skipped {
            reason: "this fake keeps only what replace_all gives it".into(),
        })
    }

    fn record_many(&self, _: &str, _: &[PatternRecord]) -> Result<u64, PatternError> {
        Ok(0)
    }

    fn outcomes(&self, _: &str) -> Result<Vec<OutcomeRow>, PatternError> {
        Ok(Vec::new())
    }

    fn stats(&self, _: &str) -> Result<Option<PatternStats>, PatternError> {
        Ok(Some(PatternStats {
            outcomes: self.replaced.lock().unwrap().len() as u64,
            ..PatternStats::default()
        }))
    }

    fn replace_all(
        &self,
        _: &str,
        records: &[PatternRecord],
        _: Progress<'_>,
    ) -> Result<u64, PatternError> {
        *self.replaced.lock().unwrap() = records.to_vec();
        Ok(records.len() as u64)
    }

    fn export(&self, _: &str) -> Result<PatternDump, PatternError> {
        Ok(PatternDump::default())
    }

    fn import(&self, _: &str, _: &PatternDump) -> Result<(), PatternError> {
        Ok(())
    }

    fn migration(&self, workspace: &str) -> Box<dyn Migratable> {
        Box::new(Target {
            path: self.path(workspace),
            ..Target::new(&[], false)
        })
    }
}

fn recorded(id: &str, ts: i64, payload: String) -> EventRow {
    EventRow {
        id: id.into(),
        timestamp_us: ts,
        session_id: "s".into(),
        turn_id: None,
        parent_event_id: None,
        event_type: metis_domain::patterns::PATTERN_RECORDED.into(),
        actor: "system".into(),
        sensitivity: "pseudonymous".into(),
        payload_json: payload,
    }
}

#[test]
fn a_rebuild_replays_this_workspace_in_event_order_and_counts_damaged_events() {
    let features = StructuralFeatures::compute(&FingerprintInputs {
        user_text: "fix the build",
        workspace_path: "/ws/a",
        ..FingerprintInputs::default()
    });
    let payload = |ws: &str, model: &str| {
        serde_json::to_string(&PatternRecorded::new(
            features.clone(),
            ws,
            model,
            0.5,
            12.0,
            None,
        ))
        .unwrap()
    };
    let reader = Reader {
        events: vec![
            recorded("01", 10, payload("/ws/a", "m1")),
            recorded("02", 20, payload("/ws/b", "m1")),
            recorded(
                "03",
                30,
                r#"{"workspace_path":"/ws/a","primary_model":7}"#.into(),
            ),
            recorded("04", 40, payload("/ws/a", "m2")),
            recorded("05", 50, "not json".into()),
        ],
        ..Reader::default()
    };
    let files = Files::default();
    let r = projection::rebuild(&reader, &files, "/ws/a", &no_progress).unwrap();
    assert_eq!((r.events, r.applied, r.skipped), (3, 2, 1));
    let replayed = files.replaced.lock().unwrap().clone();
    assert_eq!(
        replayed
            .iter()
            .map(|p| (p.primary_model.as_str(), p.at_us))
            .collect::<Vec<_>>(),
        [("m1", 10), ("m2", 40)],
        "each record carries its event's time, in event order"
    );
    assert_eq!(r.store, PathBuf::from("/ws/a/patterns.fake"));
    assert_eq!(r.stats.map(|s| s.outcomes), Some(2));
}
