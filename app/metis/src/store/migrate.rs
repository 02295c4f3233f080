//! `metis migrate-store --from sqlite --to redb` (and back): copy the main store (events,
//! sessions, keys) and the pattern stores of the given workspaces between the backends.
//!
//! Invariants:
//! - The destination must be empty (no events, sessions or keys; no outcomes in a pattern
//!   store): nothing is ever merged or overwritten.
//! - Events are copied as stored, in id order, payloads byte-for-byte: audit events keep their
//!   `audit_seq`/`audit_prev_hash`, so the destination's chain verifies with the same length.
//! - Sessions and pattern rows are copied as stored (no recomputation).
//! - After the copy the counts are compared (events, sessions, keys, chain links, outcomes);
//!   any difference is an error.
//! - Each side goes through its adapter's copy functions: `gw_storage_sqlite::transfer`
//!   (which opens and stamps a new SQLite destination first) and the redb adapter's
//!   import/export functions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use gw_domain::patterns::PatternCaps;
use gw_ports::keys::KeyStoreError;
use gw_storage_redb::{RedbKeyStore, RedbPatternLocation, RedbPatternStore};
use gw_storage_sqlite::patterns::{PatternLocation, SqlitePatternStore};
use gw_storage_sqlite::transfer::{self, MainStoreImport};
use gw_storage_sqlite::{SessionReader, SqliteKeyStore, TraceReader};

use super::StoreKind;

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

/// What a store migration copied (and verified).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub from: PathBuf,
    pub to: PathBuf,
    pub events: u64,
    pub audit_chain: u64,
    pub sessions: u64,
    pub keys: u64,
    pub pattern_stores: u64,
    pub outcomes: u64,
}

impl MigrateReport {
    /// The block `migrate-store` prints.
    #[must_use]
    pub fn block(&self, from: StoreKind, to: StoreKind) -> String {
        let mut out = format!("migrate-store complete ({from} -> {to})\n");
        for (k, v) in [
            ("from:", self.from.display().to_string()),
            ("to:", self.to.display().to_string()),
            ("events:", self.events.to_string()),
            (
                "audit chain:",
                format!("{} links verified", self.audit_chain),
            ),
            ("sessions:", self.sessions.to_string()),
            ("keys:", self.keys.to_string()),
            ("pattern stores:", self.pattern_stores.to_string()),
            ("outcomes:", self.outcomes.to_string()),
        ] {
            out.push_str(&format!("  {k:<16}{v}\n"));
        }
        out
    }
}

/// Rows per copy transaction.
const COPY_PAGE: usize = 5_000;

fn redb_existing(db: &Path) -> anyhow::Result<std::sync::Arc<gw_storage_redb::Database>> {
    if !db.is_file() {
        bail!("redb database {} does not exist", db.display());
    }
    gw_storage_redb::open_shared(db, gw_storage_redb::Sharing::default(), false)
        .map_err(|e| anyhow::anyhow!("{}: {e}", db.display()))
}

/// One side of a migration: the main store file of a backend.
struct Side {
    kind: StoreKind,
    path: PathBuf,
}

impl Side {
    /// (events, sessions, keys) stored; zeros for a missing file.
    fn counts(&self) -> anyhow::Result<(u64, u64, u64)> {
        if !self.path.exists() {
            return Ok((0, 0, 0));
        }
        match self.kind {
            StoreKind::Sqlite => {
                let events = TraceReader::open(&self.path)?.count_all()?;
                let sessions = SessionReader::open(&self.path)?.count()?;
                let keys = match SqliteKeyStore::new(&self.path).load_blocking() {
                    Ok(k) => k.len() as u64,
                    Err(KeyStoreError::NotFound { .. }) => 0,
                    Err(e) => return Err(e.into()),
                };
                Ok((events, sessions, keys))
            }
            StoreKind::Redb => {
                let db = redb_existing(&self.path)?;
                Ok(gw_storage_redb::ops::counts(&db)?)
            }
        }
    }

    /// Verify the audit chain; `Ok(n)` links.
    fn verify_chain(&self) -> anyhow::Result<u64> {
        let r = match self.kind {
            StoreKind::Sqlite => TraceReader::open(&self.path)?.verify_audit_chain()?,
            StoreKind::Redb => {
                gw_storage_redb::query::verify_audit_chain(&*redb_existing(&self.path)?)?
            }
        };
        r.map_err(|b| {
            anyhow::anyhow!(
                "the audit chain of {} is broken at event {} (expected audit_seq {}): {}",
                self.path.display(),
                b.id,
                b.expected_seq,
                b.problem
            )
        })
    }

    fn keys(&self) -> anyhow::Result<Vec<gw_domain::keys::KeyRecord>> {
        let r = match self.kind {
            StoreKind::Sqlite => SqliteKeyStore::new(&self.path).load_blocking(),
            StoreKind::Redb => RedbKeyStore::new(&self.path).load_blocking(),
        };
        match r {
            Ok(k) => Ok(k),
            Err(KeyStoreError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn insert_key(&self, k: gw_domain::keys::KeyRecord) -> anyhow::Result<()> {
        match self.kind {
            StoreKind::Sqlite => SqliteKeyStore::new(&self.path).insert_blocking(k)?,
            StoreKind::Redb => RedbKeyStore::new(&self.path).insert_blocking(k)?,
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// The main store
// ------------------------------------------------------------------------------------------

fn copy_sqlite_to_redb(
    from: &Path,
    to: &Path,
    total: u64,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<()> {
    let db = gw_storage_redb::open_shared(to, gw_storage_redb::Sharing::default(), true)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", to.display()))?;
    let src = TraceReader::open(from)?;
    let mut after: Option<String> = None;
    let mut done = 0u64;
    loop {
        let page = transfer::events_page(&src, after.as_deref(), COPY_PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        done += gw_storage_redb::ops::import_events(&db, &page)?;
        progress(done, total);
    }
    let sessions = SessionReader::open(from)?.list(None, u32::MAX)?;
    gw_storage_redb::ops::import_sessions(&db, &sessions)?;
    Ok(())
}

fn copy_redb_to_sqlite(
    from: &Path,
    to: &Path,
    total: u64,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<()> {
    let src = redb_existing(from)?;
    // The adapter creates the file with its schema, pragmas and version stamp.
    let mut dst = MainStoreImport::create(to)?;
    let mut after: Option<String> = None;
    let mut done = 0u64;
    loop {
        let page = gw_storage_redb::query::events_page(&src, after.as_deref(), COPY_PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        done += dst.insert_events(&page)?;
        progress(done, total);
    }
    let sessions = gw_storage_redb::sessions::read::all(&src)?;
    dst.insert_sessions(&sessions)?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Pattern stores
// ------------------------------------------------------------------------------------------

/// Copy one workspace's pattern store; returns the outcome rows copied.
fn copy_pattern_store(from: StoreKind, ws: &str, dir: Option<&Path>) -> anyhow::Result<u64> {
    let sqlite_loc = dir.map_or(PatternLocation::InWorkspace, |d| {
        PatternLocation::Dir(d.to_path_buf())
    });
    let redb_loc = dir.map_or(RedbPatternLocation::InWorkspace, |d| {
        RedbPatternLocation::Dir(d.to_path_buf())
    });
    let sqlite = SqlitePatternStore::new(sqlite_loc, PatternCaps::default());
    let redb = RedbPatternStore::new(redb_loc, PatternCaps::default());
    let (dump, copied) = match from {
        StoreKind::Sqlite => {
            if redb.stats_blocking(ws)?.is_some_and(|s| s.outcomes > 0) {
                bail!("the destination pattern store of {ws} is not empty");
            }
            let dump = transfer::export_patterns(&sqlite.db_path(ws))?;
            redb.import_blocking(ws, &dump.0, &dump.1)?;
            let copied = redb.outcomes_blocking(ws)?;
            (dump, copied)
        }
        StoreKind::Redb => {
            if sqlite.stats_blocking(ws)?.is_some_and(|s| s.outcomes > 0) {
                bail!("the destination pattern store of {ws} is not empty");
            }
            let dump = redb.export_blocking(ws)?;
            // The adapter creates (or migrates) the store with its schema and version.
            sqlite.replace_all_blocking(ws, &[], &|_, _| {})?;
            sqlite.forget(ws);
            transfer::import_patterns(&sqlite.db_path(ws), &dump.0, &dump.1)?;
            let copied = sqlite.outcomes_blocking(ws)?;
            (dump, copied)
        }
    };
    if copied != dump.1 {
        bail!(
            "pattern store of {ws}: {} outcomes in the source but {} (or different ones) in the destination",
            dump.1.len(),
            copied.len()
        );
    }
    Ok(copied.len() as u64)
}

// ------------------------------------------------------------------------------------------
// The command
// ------------------------------------------------------------------------------------------

fn default_path(data_dir: &Path, given: Option<&PathBuf>, kind: StoreKind) -> PathBuf {
    given
        .cloned()
        .unwrap_or_else(|| data_dir.join(kind.main_file()))
}

/// Copy the main store and the given pattern stores from one backend to the other (see the
/// module invariants). Blocking.
///
/// # Errors
/// Same backend on both sides, a missing source, a non-empty destination, a copy failure, or
/// counts that differ after the copy.
pub fn migrate_store(
    args: &MigrateStoreArgs,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<MigrateReport> {
    if args.from == args.to {
        bail!("--from and --to are both {}; nothing to migrate", args.from);
    }
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .context("HOME is not set; pass --data-dir (or METIS_GATEWAY_DATA_DIR)")?,
        )
        .join(".metis"),
    };
    let from = Side {
        kind: args.from,
        path: default_path(&data_dir, args.from_path.as_ref(), args.from),
    };
    let to = Side {
        kind: args.to,
        path: default_path(&data_dir, args.to_path.as_ref(), args.to),
    };
    if !from.path.is_file() {
        bail!("source store {} does not exist", from.path.display());
    }
    let (events, sessions, keys) = from.counts()?;
    let dest = to.counts()?;
    if dest != (0, 0, 0) {
        bail!(
            "destination store {} is not empty ({} events, {} sessions, {} keys); migrate-store \
             only fills an empty store (move it aside or choose --to-path)",
            to.path.display(),
            dest.0,
            dest.1,
            dest.2
        );
    }
    let chain_before = from.verify_chain()?;
    let key_records = from.keys()?;
    match from.kind {
        StoreKind::Sqlite => copy_sqlite_to_redb(&from.path, &to.path, events, progress)?,
        StoreKind::Redb => copy_redb_to_sqlite(&from.path, &to.path, events, progress)?,
    }
    for k in key_records {
        to.insert_key(k)?;
    }
    let after = to.counts()?;
    if after != (events, sessions, keys) {
        bail!(
            "count mismatch after the copy: source has {events} events, {sessions} sessions, \
             {keys} keys; destination has {} events, {} sessions, {} keys",
            after.0,
            after.1,
            after.2
        );
    }
    let chain_after = to.verify_chain()?;
    if chain_after != chain_before {
        bail!(
            "the audit chain has {chain_before} links in the source but {chain_after} in the destination"
        );
    }
    let mut pattern_stores = 0;
    let mut outcomes = 0;
    for ws in &args.workspaces {
        let ws = crate::keys_cli::absolute(ws)?;
        outcomes += copy_pattern_store(args.from, &ws, args.patterns_dir.as_deref())?;
        pattern_stores += 1;
    }
    Ok(MigrateReport {
        from: from.path,
        to: to.path,
        events,
        audit_chain: chain_after,
        sessions,
        keys,
        pattern_stores,
        outcomes,
    })
}

/// `metis migrate-store`.
pub async fn migrate_store_cmd(args: MigrateStoreArgs) -> ExitCode {
    crate::storage_cli::run_blocking("migrate-store", move || {
        let bar = crate::storage_cli::Progress::new("events", false);
        let r = migrate_store(&args, &|d, t| bar.update(d, t));
        bar.finish();
        super::print(&r?.block(args.from, args.to))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_domain::events::{Actor, Event, Sensitivity};
    use gw_domain::keys::{KeyRecord, KeyStatus};
    use gw_domain::patterns::PatternRecord;
    use gw_domain::sessions::{SessionId, SessionTurn};
    use gw_ports::sessions::SessionStore;
    use gw_ports::trace::{EventRow, EventSink};
    use gw_storage_sqlite::{SqliteTraceStore, WriterOptions};

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
        let patterns =
            SqlitePatternStore::new(PatternLocation::InWorkspace, PatternCaps::default());
        for (sig, model, score) in [
            ("a", "m1", Some(1.0)),
            ("a", "m1", Some(0.0)),
            ("b", "m2", None),
        ] {
            patterns
                .record_blocking(
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
        let outcomes_before = patterns.outcomes_blocking(&ws).unwrap();
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
            there
                .block(StoreKind::Sqlite, StoreKind::Redb)
                .contains("10 links verified")
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
        let fresh = SqlitePatternStore::new(PatternLocation::InWorkspace, PatternCaps::default());
        assert_eq!(fresh.outcomes_blocking(&ws).unwrap(), outcomes_before);
    }
}
