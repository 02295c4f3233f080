//! Sessions in the main redb file: the upsert of one turn (applied by the trace writer in its
//! batch transaction), the reads, and [`RedbSessionStore`] (the `SessionStore` port).
//!
//! Invariants:
//! - A session row and its index entries (`sessions_by_parent`, `sessions_by_updated`) change
//!   in the same transaction.
//! - The upsert is the SQLite adapter's: count + 1, cost added, model replaced when given,
//!   `updated_at = max`, `created_at` from the first turn, parent link kept from the first
//!   turn that names one, `is_worker` sticky, and no change at all to a session of another
//!   workspace.
//! - `record_turn` only queues onto the trace writer; reads run on tokio's blocking pool.

use std::sync::Arc;

use metis_domain::sessions::{SessionRecord, SessionTurn};
use metis_ports::sessions::SessionError;
use metis_ports::writer::WriterHandle;
use redb::{Database, ReadableDatabase, ReadableTable, Table, WriteTransaction};

use crate::db::{
    Result, SESSIONS, SESSIONS_BY_PARENT, SESSIONS_BY_UPDATED, SessionTuple, SessionValue,
    StoreError,
};
use crate::trace::Inner;

fn to_record(id: &str, v: SessionTuple<'_>) -> SessionRecord {
    let (ws, model, cost, turns, created, updated, parent, tool, worker) = v;
    SessionRecord {
        id: id.to_owned(),
        workspace_path: ws.to_owned(),
        active_model: model.map(str::to_owned),
        cost_so_far_usd: cost,
        turn_count: turns,
        created_at_us: created,
        updated_at_us: updated,
        parent_session_id: parent.map(str::to_owned),
        parent_tool_use_id: tool.map(str::to_owned),
        is_worker: worker,
    }
}

/// The session tables of one write transaction.
pub(crate) struct SessionTables<'txn> {
    sessions: Table<'txn, &'static str, SessionValue>,
    by_parent: Table<'txn, (&'static str, i64, &'static str), ()>,
    by_updated: Table<'txn, (i64, &'static str), ()>,
}

impl<'txn> SessionTables<'txn> {
    pub(crate) fn open(tx: &'txn WriteTransaction) -> Result<Self> {
        Ok(Self {
            sessions: tx.open_table(SESSIONS)?,
            by_parent: tx.open_table(SESSIONS_BY_PARENT)?,
            by_updated: tx.open_table(SESSIONS_BY_UPDATED)?,
        })
    }

    /// Write `rec` (new or changed), keeping the indexes in step with `previous`.
    pub(crate) fn put(
        &mut self,
        rec: &SessionRecord,
        previous: Option<&SessionRecord>,
    ) -> Result<()> {
        if let Some(p) = previous {
            self.by_updated.remove((p.updated_at_us, p.id.as_str()))?;
            if let Some(parent) = &p.parent_session_id {
                self.by_parent
                    .remove((parent.as_str(), p.created_at_us, p.id.as_str()))?;
            }
        }
        let value: SessionTuple<'_> = (
            rec.workspace_path.as_str(),
            rec.active_model.as_deref(),
            rec.cost_so_far_usd,
            rec.turn_count,
            rec.created_at_us,
            rec.updated_at_us,
            rec.parent_session_id.as_deref(),
            rec.parent_tool_use_id.as_deref(),
            rec.is_worker,
        );
        self.sessions.insert(rec.id.as_str(), value)?;
        self.by_updated
            .insert((rec.updated_at_us, rec.id.as_str()), ())?;
        if let Some(parent) = &rec.parent_session_id {
            self.by_parent
                .insert((parent.as_str(), rec.created_at_us, rec.id.as_str()), ())?;
        }
        Ok(())
    }

    pub(crate) fn get(&self, id: &str) -> Result<Option<SessionRecord>> {
        Ok(self.sessions.get(id)?.map(|g| to_record(id, g.value())))
    }

    /// Apply one turn. Returns `false` when the session belongs to another workspace (then
    /// nothing changed).
    pub(crate) fn apply(&mut self, t: &SessionTurn) -> Result<bool> {
        let previous = self.get(t.session_id.as_str())?;
        let Some(next) = metis_domain::sessions::apply_turn(previous.as_ref(), t) else {
            return Ok(false);
        };
        self.put(&next, previous.as_ref())?;
        Ok(true)
    }
}

/// Read-only session queries over a database (blocking).
pub mod read {
    use super::{
        Database, ReadableDatabase, ReadableTable, Result, SESSIONS, SESSIONS_BY_PARENT,
        SESSIONS_BY_UPDATED, SessionRecord, to_record,
    };

    /// One session.
    ///
    /// # Errors
    /// redb errors.
    pub fn get(db: &Database, id: &str) -> Result<Option<SessionRecord>> {
        let tx = db.begin_read()?;
        let t = tx.open_table(SESSIONS)?;
        Ok(t.get(id)?.map(|g| to_record(id, g.value())))
    }

    /// Most recently updated first (then id), optionally one workspace, at most `limit`.
    ///
    /// # Errors
    /// redb errors.
    pub fn list(db: &Database, workspace: Option<&str>, limit: u32) -> Result<Vec<SessionRecord>> {
        let tx = db.begin_read()?;
        let sessions = tx.open_table(SESSIONS)?;
        let by_updated = tx.open_table(SESSIONS_BY_UPDATED)?;
        let limit = limit as usize;
        let mut out: Vec<SessionRecord> = Vec::new();
        // Walk newest first; ids of one `updated_at` come back descending, so each group is
        // sorted ascending before it is emitted.
        let mut group: Vec<SessionRecord> = Vec::new();
        let mut group_ts: Option<i64> = None;
        let flush = |group: &mut Vec<SessionRecord>, out: &mut Vec<SessionRecord>| {
            group.sort_by(|a, b| a.id.cmp(&b.id));
            out.append(group);
        };
        for item in by_updated.iter()?.rev() {
            let (k, _) = item?;
            let (ts, id) = k.value();
            if group_ts != Some(ts) {
                flush(&mut group, &mut out);
                if out.len() >= limit {
                    break;
                }
                group_ts = Some(ts);
            }
            if let Some(v) = sessions.get(id)? {
                let rec = to_record(id, v.value());
                if workspace.is_none_or(|w| rec.workspace_path == w) {
                    group.push(rec);
                }
            }
        }
        flush(&mut group, &mut out);
        out.truncate(limit);
        Ok(out)
    }

    /// Direct children of `parent`, oldest first (then id), from `sessions_by_parent`.
    ///
    /// # Errors
    /// redb errors.
    pub fn children(db: &Database, parent: &str) -> Result<Vec<SessionRecord>> {
        let tx = db.begin_read()?;
        let sessions = tx.open_table(SESSIONS)?;
        let by_parent = tx.open_table(SESSIONS_BY_PARENT)?;
        let mut out = Vec::new();
        for item in by_parent.range((parent, i64::MIN, "")..)? {
            let (k, _) = item?;
            let (p, _, id) = k.value();
            if p != parent {
                break;
            }
            if let Some(v) = sessions.get(id)? {
                out.push(to_record(id, v.value()));
            }
        }
        Ok(out)
    }

    /// Every session, in id order (for copies between backends).
    ///
    /// # Errors
    /// redb errors.
    pub fn all(db: &Database) -> Result<Vec<SessionRecord>> {
        let tx = db.begin_read()?;
        let sessions = tx.open_table(SESSIONS)?;
        let mut out = Vec::new();
        for item in sessions.iter()? {
            let (k, v) = item?;
            out.push(to_record(k.value(), v.value()));
        }
        Ok(out)
    }

    /// Number of sessions.
    ///
    /// # Errors
    /// redb errors.
    pub fn count(db: &Database) -> Result<u64> {
        use redb::ReadableTableMetadata;
        let tx = db.begin_read()?;
        Ok(tx.open_table(SESSIONS)?.len()?)
    }
}

/// The `SessionStore` port over the main redb file, sharing the trace store's writer thread.
/// Obtain one with `RedbTraceStore::session_store`.
#[derive(Clone)]
pub struct RedbSessionStore {
    pub(crate) inner: Arc<Inner>,
}

impl RedbSessionStore {
    /// The trace store's writer, which applies the turns.
    fn writer(&self) -> &WriterHandle {
        &self.inner.writer
    }

    /// The current database handle for the reads of `SessionStore` (run on the blocking
    /// pool); `Unavailable` while the writer reopens the file after an I/O error.
    fn reads(&self) -> std::result::Result<Snapshot, SessionError> {
        self.inner
            .db
            .get()
            .map(Snapshot)
            .map_err(|e| SessionError::Unavailable(e.to_string()))
    }
}

/// One database handle, read with the port's errors.
struct Snapshot(Arc<Database>);

impl Snapshot {
    fn get(&self, id: &str) -> std::result::Result<Option<SessionRecord>, SessionError> {
        read::get(&self.0, id).map_err(backend)
    }

    fn list(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> std::result::Result<Vec<SessionRecord>, SessionError> {
        read::list(&self.0, workspace, limit).map_err(backend)
    }

    fn children(&self, parent: &str) -> std::result::Result<Vec<SessionRecord>, SessionError> {
        read::children(&self.0, parent).map_err(backend)
    }
}

fn backend(e: StoreError) -> SessionError {
    SessionError::Backend(Box::new(e))
}

metis_storage_kit::session_store_on_writer!(RedbSessionStore);
