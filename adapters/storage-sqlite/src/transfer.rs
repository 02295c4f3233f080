//! Bulk copies into and out of SQLite stores, for `metis migrate-store` (the counterpart of
//! the redb adapter's `ops::import_*`, `query::events_page` and pattern export/import).
//!
//! - Main store (`metis.db`): [`events_page`] reads `events` in id order through a
//!   [`TraceReader`]; [`MainStoreImport`] creates the file like the trace store does
//!   (version check, PRAGMAs, schema, stamp) and inserts events and session rows as given.
//! - Pattern stores (`patterns.db`): [`export_patterns`] and [`import_patterns`] read and
//!   write the fingerprints without an embedding and every outcome.
//!
//! Invariants:
//! - Rows are copied as stored: event payloads byte-for-byte (audit events keep their chain
//!   links), session and pattern rows without recomputation.
//! - Every insert call is one transaction: a failure leaves none of its rows behind.
//! - Event inserts skip ids already stored (as the redb import does) and report how many
//!   rows they wrote; session and pattern inserts refuse duplicates (the caller copies into
//!   an empty store only).
//! - Reads never create, stamp or write a file; [`export_patterns`] reads a pattern store as
//!   it is (an older store is not migrated).
//! - Errors are the ports' errors: [`TraceError`] for the main store, [`PatternError`] for a
//!   pattern store.

use std::path::Path;
use std::time::Duration;

use metis_domain::sessions::SessionRecord;
use metis_ports::patterns::{FingerprintRow, OutcomeRow, PatternError};
use metis_ports::trace::{EventRow, TraceError};
use rusqlite::{Connection, OpenFlags, params};

use crate::patterns::{read_outcomes, unavailable};
use crate::query::COLUMNS;
use crate::reader::TraceReader;
use crate::schema::{INSERT_OR_IGNORE_SQL, backend, open_for_writing};
use crate::store::{WriterOptions, create_parent_dir};

/// How long a pattern store connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A session row as stored (`routing_policy_json` empty, `schema_version` 1, as the writer's
/// upsert creates them).
const INSERT_SESSION_SQL: &str = "INSERT INTO sessions (id, workspace_path, active_model, \
    routing_policy_json, cost_so_far_usd, turn_count, schema_version, created_at, updated_at, \
    parent_session_id, parent_tool_use_id, is_worker) \
    VALUES (?1, ?2, ?3, NULL, ?4, ?5, 1, ?6, ?7, ?8, ?9, ?10)";

/// Fingerprints without an embedding, ordered by id.
const SELECT_FINGERPRINTS_SQL: &str = "SELECT id, kind, structural_json, structural_sig, \
    created_at_us FROM fingerprints WHERE embedding_provider IS NULL ORDER BY id";

const INSERT_FINGERPRINT_SQL: &str = "INSERT INTO fingerprints (id, kind, structural_json, \
    structural_sig, embedding_blob, embedding_provider, embedding_dim, created_at_us) \
    VALUES (?1, ?2, ?3, ?4, NULL, NULL, NULL, ?5)";

const INSERT_OUTCOME_SQL: &str = "INSERT INTO outcomes (fingerprint_id, primary_model, \
    sample_size, success_score_mean, success_score_count, sum_cost_usd_micros, sum_latency_ms, \
    pricing_version_last, last_updated_at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// One page of the copy: events after `?1` in id order, at most `?2`.
pub(crate) fn events_page_sql() -> String {
    format!("SELECT {COLUMNS} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")
}

/// Up to `limit` events with an id after `after` (from the start when `None`), in id order.
///
/// # Errors
/// `Backend` on an SQLite error.
pub fn events_page(
    reader: &TraceReader,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<EventRow>, TraceError> {
    let rows = reader.query_events(
        &events_page_sql(),
        params![
            after.unwrap_or(""),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
    )?;
    Ok(rows.into_iter().map(EventRow::from).collect())
}

/// A writing connection to a main store being filled by a copy.
pub struct MainStoreImport {
    conn: Connection,
}

impl std::fmt::Debug for MainStoreImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainStoreImport").finish_non_exhaustive()
    }
}

impl MainStoreImport {
    /// Open the main store at `path`, creating it (with parent directories) when missing,
    /// exactly as [`SqliteTraceStore::open`](crate::SqliteTraceStore::open) with the default
    /// options: version check, PRAGMAs (the declared foreign key from `events` to `sessions`
    /// is not enforced), schema and version stamp.
    ///
    /// # Errors
    /// `TooNew` when the file was stamped by a newer binary (it is left untouched);
    /// `Unavailable` when it is not a SQLite database or cannot be created or opened.
    pub fn create(path: &Path) -> Result<Self, TraceError> {
        create_parent_dir(path)?;
        let conn = open_for_writing(path, WriterOptions::default().pragmas())?;
        Ok(Self { conn })
    }

    /// Insert `rows` as given in one transaction, skipping ids already stored. Returns how
    /// many were written.
    ///
    /// # Errors
    /// `Backend` on an SQLite error (nothing of this call is kept).
    pub fn insert_events(&mut self, rows: &[EventRow]) -> Result<u64, TraceError> {
        let tx = self.conn.transaction().map_err(backend)?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(INSERT_OR_IGNORE_SQL).map_err(backend)?;
            for r in rows {
                n += stmt
                    .execute(params![
                        r.id,
                        r.timestamp_us,
                        r.session_id,
                        r.turn_id,
                        r.parent_event_id,
                        r.event_type,
                        r.actor,
                        r.sensitivity,
                        r.payload_json
                    ])
                    .map_err(backend)? as u64;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(n)
    }

    /// Insert session rows as given in one transaction. Returns how many were written.
    ///
    /// # Errors
    /// `Backend` on an SQLite error, including a session id already stored (nothing of this
    /// call is kept).
    pub fn insert_sessions(&mut self, rows: &[SessionRecord]) -> Result<u64, TraceError> {
        let tx = self.conn.transaction().map_err(backend)?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(INSERT_SESSION_SQL).map_err(backend)?;
            for s in rows {
                n += stmt
                    .execute(params![
                        s.id,
                        s.workspace_path,
                        s.active_model,
                        s.cost_so_far_usd,
                        i64::try_from(s.turn_count).unwrap_or(i64::MAX),
                        s.created_at_us,
                        s.updated_at_us,
                        s.parent_session_id,
                        s.parent_tool_use_id,
                        i64::from(s.is_worker)
                    ])
                    .map_err(backend)? as u64;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(n)
    }
}

/// Open an existing pattern store file (never creating it).
fn open_pattern_file(path: &Path, write: bool) -> Result<Connection, PatternError> {
    let mode = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn = Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| unavailable(path, format!("cannot open: {e}")))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| unavailable(path, e))?;
    Ok(conn)
}

fn read_fingerprints(conn: &Connection) -> rusqlite::Result<Vec<FingerprintRow>> {
    let mut stmt = conn.prepare(SELECT_FINGERPRINTS_SQL)?;
    let rows = stmt.query_map([], |r| {
        Ok(FingerprintRow {
            id: r.get(0)?,
            kind: r.get(1)?,
            structural_json: r.get(2)?,
            structural_sig: r.get(3)?,
            created_at_us: r.get(4)?,
        })
    })?;
    rows.collect()
}

fn insert_pattern_rows(
    conn: &mut Connection,
    fingerprints: &[FingerprintRow],
    outcomes: &[OutcomeRow],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut fp = tx.prepare(INSERT_FINGERPRINT_SQL)?;
        for f in fingerprints {
            fp.execute(params![
                f.id,
                f.kind,
                f.structural_json,
                f.structural_sig,
                f.created_at_us
            ])?;
        }
        let mut o = tx.prepare(INSERT_OUTCOME_SQL)?;
        for r in outcomes {
            o.execute(params![
                r.fingerprint_id,
                r.primary_model,
                i64::try_from(r.sample_size).unwrap_or(i64::MAX),
                r.success_score_mean,
                i64::try_from(r.success_score_count).unwrap_or(i64::MAX),
                r.sum_cost_usd_micros,
                r.sum_latency_ms,
                r.pricing_version_last,
                r.last_updated_at_us
            ])?;
        }
    }
    tx.commit()
}

/// Every fingerprint without an embedding (by id) and every outcome (by fingerprint, then
/// model) of the pattern store file at `path`, read-only; both empty when the file does not
/// exist.
///
/// # Errors
/// `Unavailable` when the file cannot be opened or read (not a database, a store too old to
/// have the embedding columns).
pub fn export_patterns(
    path: &Path,
) -> Result<(Vec<FingerprintRow>, Vec<OutcomeRow>), PatternError> {
    if !path.is_file() {
        return Ok((Vec::new(), Vec::new()));
    }
    let conn = open_pattern_file(path, false)?;
    let fingerprints = read_fingerprints(&conn).map_err(|e| unavailable(path, e))?;
    let outcomes = read_outcomes(&conn).map_err(|e| unavailable(path, e))?;
    Ok((fingerprints, outcomes))
}

/// Insert fingerprints (without embeddings) and outcomes as given into the existing pattern
/// store file at `path`, in one transaction. The store must already have its schema (open it
/// through [`SqlitePatternStore`](crate::patterns::SqlitePatternStore) first) and hold none
/// of these rows.
///
/// # Errors
/// `Unavailable` when the file cannot be opened, or a row cannot be inserted (a duplicate,
/// an outcome of a missing fingerprint); nothing of this call is kept.
pub fn import_patterns(
    path: &Path,
    fingerprints: &[FingerprintRow],
    outcomes: &[OutcomeRow],
) -> Result<(), PatternError> {
    let mut conn = open_pattern_file(path, true)?;
    insert_pattern_rows(&mut conn, fingerprints, outcomes).map_err(|e| unavailable(path, e))
}

#[cfg(test)]
mod tests {
    use metis_domain::patterns::{PatternCaps, PatternRecord};

    use super::*;
    use crate::TRACE_SCHEMA_VERSION;
    use crate::patterns::{PatternPlace, SqlitePatternStore};
    use crate::sessions::SessionReader;
    use metis_ports::storage::PatternFiles;

    fn event(i: u32) -> EventRow {
        EventRow {
            id: format!("01J{i:023}"),
            timestamp_us: 1_000 + i64::from(i),
            session_id: format!("s{}", i % 2),
            turn_id: (!i.is_multiple_of(3)).then(|| format!("t{i}")),
            parent_event_id: (i > 0).then(|| format!("01J{:023}", i - 1)),
            event_type: "gateway.key_issued".into(),
            actor: "system".into(),
            sensitivity: "pseudonymous".into(),
            // Stored as given: key order, spacing and chain fields are not touched.
            payload_json: format!(r#"{{"z":1, "audit_seq":{i},"audit_prev_hash":"h{i}"}}"#),
        }
    }

    fn session(id: &str, parent: Option<&str>, updated: i64) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            workspace_path: "/w".into(),
            active_model: parent.is_none().then(|| "m".to_owned()),
            cost_so_far_usd: 1.25,
            turn_count: 3,
            created_at_us: 10,
            updated_at_us: updated,
            parent_session_id: parent.map(str::to_owned),
            parent_tool_use_id: parent.map(|_| "tu_1".to_owned()),
            is_worker: parent.is_some(),
        }
    }

    #[test]
    fn events_and_sessions_round_trip_through_a_new_main_store() {
        let dir = tempfile::tempdir().unwrap();
        // The parent directory does not exist yet: `create` makes it, as the trace store does.
        let db = dir.path().join("sub").join("metis.db");
        let mut dst = MainStoreImport::create(&db).unwrap();

        let events: Vec<EventRow> = (0..7).map(event).collect();
        assert_eq!(dst.insert_events(&events[..4]).unwrap(), 4);
        // Ids already stored are skipped and not counted.
        assert_eq!(dst.insert_events(&events[2..]).unwrap(), 3);

        let sessions = vec![session("root", None, 30), session("kid", Some("root"), 20)];
        assert_eq!(dst.insert_sessions(&sessions).unwrap(), 2);
        // A duplicate fails the whole call: the new row before it is not kept either.
        assert!(
            dst.insert_sessions(&[session("other", None, 5), session("root", None, 5)])
                .is_err()
        );
        drop(dst);

        let reader = TraceReader::open(&db).unwrap();
        assert_eq!(reader.schema_version().unwrap(), TRACE_SCHEMA_VERSION);
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = events_page(&reader, after.as_deref(), 3).unwrap();
            let Some(last) = page.last() else { break };
            assert!(page.len() <= 3);
            after = Some(last.id.clone());
            paged.extend(page);
        }
        assert_eq!(paged, events, "every event, in id order, byte-for-byte");
        assert_eq!(
            events_page(&reader, Some(&events[4].id), 100).unwrap(),
            events[5..]
        );

        // Most recently updated first.
        assert_eq!(
            SessionReader::open(&db).unwrap().list(None, 10).unwrap(),
            sessions
        );
    }

    #[test]
    fn a_pattern_store_round_trips_through_export_and_import() {
        let dir = tempfile::tempdir().unwrap();
        let ws = |name: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            p.display().to_string()
        };
        let (src_ws, dst_ws) = (ws("src"), ws("dst"));
        let store = SqlitePatternStore::new(PatternPlace::InWorkspace, PatternCaps::default());

        // No store yet: nothing to export.
        assert_eq!(
            export_patterns(&store.db_path(&src_ws)).unwrap(),
            (Vec::new(), Vec::new())
        );

        for (sig, model, score, at) in [
            ("a", "m1", Some(1.0), 7),
            ("a", "m1", Some(0.0), 9),
            ("a", "m2", None, 8),
            ("b", "m2", Some(0.5), 6),
        ] {
            store
                .record(
                    &src_ws,
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
                        at_us: at,
                    },
                )
                .unwrap();
        }
        let (fps, outcomes) = export_patterns(&store.db_path(&src_ws)).unwrap();
        assert_eq!(
            fps.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
            ["fp_a", "fp_b"]
        );
        assert_eq!(outcomes, store.outcomes(&src_ws).unwrap());
        assert_eq!(outcomes.len(), 3);

        // The destination gets its schema from the store, then the rows as given.
        store.replace_all(&dst_ws, &[], &|_, _| {}).unwrap();
        import_patterns(&store.db_path(&dst_ws), &fps, &outcomes).unwrap();
        assert_eq!(
            export_patterns(&store.db_path(&dst_ws)).unwrap(),
            (fps.clone(), outcomes.clone())
        );
        assert_eq!(store.outcomes(&dst_ws).unwrap(), outcomes);

        // A second import collides and keeps nothing of itself.
        assert!(import_patterns(&store.db_path(&dst_ws), &fps, &outcomes).is_err());
        assert_eq!(store.outcomes(&dst_ws).unwrap(), outcomes);
    }
}
