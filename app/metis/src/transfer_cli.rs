//! `metis migrate-store --from sqlite --to redb` (and back): copy the main store (events,
//! sessions, keys) and the pattern stores of the given workspaces between backends. The copy
//! and its checks are the use case `gw_usecases::storage::transfer`; this module parses the
//! flags and prints the report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use gw_ports::storage::PatternPlace;
use gw_usecases::storage::transfer::{CopyReport, Side, copy_store};

use crate::store::StoreKind;

/// `metis migrate-store --from sqlite --to redb` (or back).
#[derive(Debug, Args)]
pub struct MigrateStoreArgs {
    /// The backend to copy from.
    #[arg(long, value_enum)]
    pub from: StoreKind,
    /// The backend to copy to (its store must be empty or absent).
    #[arg(long, value_enum)]
    pub to: StoreKind,
    /// Data directory (default `~/.metis`): `metis.db` and `metis.redb` live there.
    #[arg(long, env = "METIS_GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The source main store file (default `<data-dir>/metis.db` or `metis.redb`).
    #[arg(long)]
    pub from_path: Option<PathBuf>,
    /// The destination main store file (default `<data-dir>/metis.db` or `metis.redb`).
    #[arg(long)]
    pub to_path: Option<PathBuf>,
    /// Also copy this workspace's pattern store (repeatable).
    #[arg(long = "workspace")]
    pub workspaces: Vec<PathBuf>,
    /// Pattern stores live under this directory (one per workspace hash) instead of
    /// `<workspace>/.metis/`.
    #[arg(long, env = "METIS_GATEWAY_PATTERNS_DIR")]
    pub patterns_dir: Option<PathBuf>,
}

/// The block `migrate-store` prints.
#[must_use]
pub fn report_block(r: &CopyReport, from: StoreKind, to: StoreKind) -> String {
    let mut out = format!("migrate-store complete ({from} -> {to})\n");
    for (k, v) in [
        ("from:", r.from.display().to_string()),
        ("to:", r.to.display().to_string()),
        ("events:", r.events.to_string()),
        ("audit chain:", format!("{} links verified", r.audit_chain)),
        ("sessions:", r.sessions.to_string()),
        ("keys:", r.keys.to_string()),
        ("pattern stores:", r.pattern_stores.to_string()),
        ("outcomes:", r.outcomes.to_string()),
    ] {
        out.push_str(&format!("  {k:<16}{v}\n"));
    }
    out
}

fn default_path(data_dir: &Path, given: Option<&PathBuf>, kind: StoreKind) -> PathBuf {
    given
        .cloned()
        .unwrap_or_else(|| data_dir.join(kind.backend().main_file()))
}

/// Copy the main store and the given pattern stores from one backend to the other. Blocking.
///
/// # Errors
/// Same backend on both sides, a missing source, a non-empty destination, a copy failure, or
/// counts that differ after the copy.
pub fn migrate_store(
    args: &MigrateStoreArgs,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> anyhow::Result<CopyReport> {
    if args.from == args.to {
        anyhow::bail!("--from and --to are both {}; nothing to migrate", args.from);
    }
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .context("HOME is not set; pass --data-dir (or METIS_GATEWAY_DATA_DIR)")?,
        )
        .join(".metis"),
    };
    let from_path = default_path(&data_dir, args.from_path.as_ref(), args.from);
    let to_path = default_path(&data_dir, args.to_path.as_ref(), args.to);
    let workspaces = args
        .workspaces
        .iter()
        .map(|w| crate::keys_cli::absolute(w))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let place = args
        .patterns_dir
        .clone()
        .map_or(PatternPlace::InWorkspace, PatternPlace::Dir);
    let (from, to) = (args.from.backend(), args.to.backend());
    Ok(copy_store(
        Side {
            backend: from.as_ref(),
            path: &from_path,
        },
        Side {
            backend: to.as_ref(),
            path: &to_path,
        },
        &workspaces,
        &place,
        progress,
    )?)
}

/// `metis migrate-store`.
pub async fn migrate_store_cmd(args: MigrateStoreArgs) -> ExitCode {
    crate::storage_cli::run_blocking("migrate-store", move || {
        let bar = crate::storage_cli::Progress::new("events", false);
        let r = migrate_store(&args, &|d, t| bar.update(d, t));
        bar.finish();
        crate::storage_cli::print(&report_block(&r?, args.from, args.to))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_domain::events::{Actor, Event, Sensitivity};
    use gw_domain::keys::{KeyRecord, KeyStatus};
    use gw_domain::patterns::{PatternCaps, PatternRecord};
    use gw_domain::sessions::{SessionId, SessionTurn};
    use gw_ports::sessions::SessionStore;
    use gw_ports::storage::PatternFiles;
    use gw_ports::trace::{EventRow, EventSink};
    use gw_storage_sqlite::patterns::{PatternPlace, SqlitePatternStore};
    use gw_storage_sqlite::transfer;
    use gw_storage_sqlite::{
        SessionReader, SqliteKeyStore, SqliteTraceStore, TraceReader, WriterOptions,
    };

    fn args(
        dir: &Path,
        from: StoreKind,
        to: StoreKind,
        from_path: &str,
        to_path: &str,
        ws: Option<&str>,
    ) -> MigrateStoreArgs {
        MigrateStoreArgs {
            from,
            to,
            data_dir: Some(dir.to_path_buf()),
            from_path: Some(dir.join(from_path)),
            to_path: Some(dir.join(to_path)),
            workspaces: ws.map(PathBuf::from).into_iter().collect(),
            patterns_dir: None,
        }
    }

    fn turn(id: &str, parent: Option<&str>, at: i64) -> SessionTurn {
        SessionTurn {
            session_id: SessionId::parse(id).unwrap(),
            workspace_path: "/w".into(),
            active_model: Some("m".into()),
            cost_usd: 0.5,
            at_us: at,
            parent_session_id: parent.map(|p| SessionId::parse(p).unwrap()),
            parent_tool_use_id: parent.map(|_| "tu_1".to_owned()),
            is_worker: parent.is_some(),
        }
    }

    fn all_events(db: &Path) -> Vec<EventRow> {
        transfer::events_page(&TraceReader::open(db).unwrap(), None, 1_000_000).unwrap()
    }

    #[test]
    fn sqlite_to_redb_and_back_copies_everything_with_the_audit_chain() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ws_dir = d.join("ws");
        std::fs::create_dir_all(&ws_dir).unwrap();
        let ws = ws_dir.display().to_string();

        let db = d.join("metis.db");
        let s = SqliteTraceStore::open(&db, WriterOptions::default()).unwrap();
        for i in 0..50u64 {
            let ty = if i % 5 == 0 {
                "gateway.key_issued"
            } else {
                "llm.call_completed"
            };
            s.emit(Event {
                id: format!("01J{i:023}"),
                timestamp_us: 1_000 + i as i64,
                session_id: "s".into(),
                turn_id: Some(format!("t{i}")),
                parent_event_id: None,
                event_type: ty,
                actor: Actor::System,
                sensitivity: Sensitivity::Pseudonymous,
                payload_json: format!(r#"{{"gateway_key_id":"gk_1","cost_usd":0.25,"i":{i}}}"#),
            });
        }
        let sessions = s.session_store().unwrap();
        sessions.record_turn(turn("root", None, 10)).unwrap();
        sessions.record_turn(turn("root", None, 20)).unwrap();
        sessions.record_turn(turn("kid", Some("root"), 15)).unwrap();
        s.close();
        SqliteKeyStore::new(&db)
            .insert_blocking(KeyRecord {
                key_id: "gk_1".into(),
                secret_hash: "ab".repeat(32),
                name: Some("k".into()),
                workspace_path: "/w".into(),
                created_at: None,
                allowed_models: None,
                daily_cap_usd: Some("5".into()),
                monthly_cap_usd: None,
                rpm: None,
                user_id: None,
                team_id: None,
                customer_tier: None,
                status: KeyStatus::Active,
                revoked_at: None,
                grace_period_until: None,
                spend_account: None,
                extra: serde_json::Map::new(),
            })
            .unwrap();
        let patterns = SqlitePatternStore::new(PatternPlace::InWorkspace, PatternCaps::default());
        for (sig, model, score) in [
            ("a", "m1", Some(1.0)),
            ("a", "m1", Some(0.0)),
            ("b", "m2", None),
        ] {
            patterns
                .record(
                    &ws,
                    &PatternRecord {
                        fingerprint_id: format!("fp_{sig}"),
                        kind: "structural".into(),
                        structural_json: format!("{{\"s\":\"{sig}\"}}"),
                        structural_sig: sig.into(),
                        primary_model: model.into(),
                        cost_usd_micros: 100,
                        latency_ms: 5.0,
                        pricing_version: "p".into(),
                        success_score: score,
                        at_us: 7,
                    },
                )
                .unwrap();
        }
        let outcomes_before = patterns.outcomes(&ws).unwrap();
        let events_before = all_events(&db);
        let sessions_before = SessionReader::open(&db).unwrap().list(None, 100).unwrap();
        let keys_before = SqliteKeyStore::new(&db).load_blocking().unwrap();

        let there = migrate_store(
            &args(
                d,
                StoreKind::Sqlite,
                StoreKind::Redb,
                "metis.db",
                "metis.redb",
                Some(&ws),
            ),
            &|_, _| {},
        )
        .unwrap();
        assert_eq!(
            (
                there.events,
                there.audit_chain,
                there.sessions,
                there.keys,
                there.pattern_stores,
                there.outcomes
            ),
            (50, 10, 2, 1, 1, 2)
        );
        assert!(
            report_block(&there, StoreKind::Sqlite, StoreKind::Redb).contains("10 links verified")
        );

        // A destination that holds anything is refused.
        let again = migrate_store(
            &args(
                d,
                StoreKind::Sqlite,
                StoreKind::Redb,
                "metis.db",
                "metis.redb",
                None,
            ),
            &|_, _| {},
        );
        assert!(again.unwrap_err().to_string().contains("not empty"));

        // And back, into a fresh SQLite file (the workspace's SQLite pattern store moved aside).
        for f in ["patterns.db", "patterns.db-wal", "patterns.db-shm"] {
            let _ = std::fs::remove_file(ws_dir.join(".metis").join(f));
        }
        let back = migrate_store(
            &args(
                d,
                StoreKind::Redb,
                StoreKind::Sqlite,
                "metis.redb",
                "back.db",
                Some(&ws),
            ),
            &|_, _| {},
        )
        .unwrap();
        assert_eq!((back.events, back.audit_chain, back.outcomes), (50, 10, 2));
        let back_db = d.join("back.db");
        assert_eq!(all_events(&back_db), events_before, "events byte-for-byte");
        assert_eq!(
            SessionReader::open(&back_db)
                .unwrap()
                .list(None, 100)
                .unwrap(),
            sessions_before
        );
        assert_eq!(
            SqliteKeyStore::new(&back_db).load_blocking().unwrap(),
            keys_before
        );
        let fresh = SqlitePatternStore::new(PatternPlace::InWorkspace, PatternCaps::default());
        assert_eq!(fresh.outcomes(&ws).unwrap(), outcomes_before);
    }
}
