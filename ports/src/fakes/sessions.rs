//! The session store fake: sessions in memory, each turn applied by the domain's upsert rule.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use metis_domain::sessions::{SessionId, SessionRecord, SessionTurn, apply_turn};

use super::lock;
use crate::sessions::{SessionError, SessionStats, SessionStore};

#[derive(Debug, Default)]
struct SessionFile {
    sessions: BTreeMap<String, SessionRecord>,
}

#[derive(Debug, Default)]
struct SessionQueue {
    pending: Vec<SessionTurn>,
    stats: SessionStats,
    closed: bool,
}

/// An in-memory `SessionStore`. Like [`InMemoryTraceStore`](super::InMemoryTraceStore) it either applies each turn as it
/// is recorded ([`new`](Self::new)) or queues turns until `flush`
/// ([`with_queue_capacity`](Self::with_queue_capacity)).
#[derive(Debug, Clone)]
pub struct InMemorySessionStore {
    file: Arc<Mutex<SessionFile>>,
    queue: Arc<Mutex<SessionQueue>>,
    capacity: Option<usize>,
}

impl Default for InMemorySessionStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemorySessionStore {
    /// A store that applies each turn as it is recorded.
    #[must_use]
    pub fn new() -> Self {
        Self {
            file: Arc::new(Mutex::new(SessionFile::default())),
            queue: Arc::new(Mutex::new(SessionQueue::default())),
            capacity: None,
        }
    }

    /// A store whose queue holds at most `capacity` turns until `flush`.
    #[must_use]
    pub fn with_queue_capacity(capacity: usize) -> Self {
        Self {
            capacity: Some(capacity.max(1)),
            ..Self::new()
        }
    }

    /// A new handle (own queue and counters) on the same sessions.
    #[must_use]
    pub fn reopen(&self) -> Self {
        self.reopen_with(self.capacity)
    }

    /// As [`reopen`](Self::reopen), choosing the queue mode (`None` = apply at once).
    #[must_use]
    pub fn reopen_with(&self, capacity: Option<usize>) -> Self {
        Self {
            file: Arc::clone(&self.file),
            queue: Arc::new(Mutex::new(SessionQueue::default())),
            capacity: capacity.map(|c| c.max(1)),
        }
    }

    /// Stop accepting turns after applying the queued ones. Idempotent.
    pub fn close(&self) {
        let mut q = lock(&self.queue);
        self.apply_pending(&mut q);
        q.closed = true;
    }

    fn apply_pending(&self, q: &mut SessionQueue) {
        if q.pending.is_empty() {
            return;
        }
        let turns = std::mem::take(&mut q.pending);
        let mut f = lock(&self.file);
        for t in &turns {
            let id = t.session_id.as_str();
            match apply_turn(f.sessions.get(id), t) {
                Some(next) => {
                    f.sessions.insert(id.to_owned(), next);
                    q.stats.recorded += 1;
                }
                None => q.stats.workspace_conflicts += 1,
            }
        }
    }
}

#[async_trait]
impl SessionStore for InMemorySessionStore {
    fn record_turn(&self, turn: SessionTurn) -> Result<(), SessionError> {
        let mut q = lock(&self.queue);
        if q.closed {
            q.stats.failed += 1;
            return Err(SessionError::Unavailable(
                "the session store is closed".into(),
            ));
        }
        if let Some(cap) = self.capacity
            && q.pending.len() >= cap
        {
            q.stats.failed += 1;
            return Err(SessionError::Overflow);
        }
        q.pending.push(turn);
        if self.capacity.is_none() {
            self.apply_pending(&mut q);
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SessionError> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(SessionError::Unavailable(
                "the session store is closed".into(),
            ));
        }
        self.apply_pending(&mut q);
        Ok(())
    }

    async fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, SessionError> {
        Ok(lock(&self.file).sessions.get(id.as_str()).cloned())
    }

    async fn list(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, SessionError> {
        let f = lock(&self.file);
        let mut out: Vec<SessionRecord> = f
            .sessions
            .values()
            .filter(|s| workspace.is_none_or(|w| s.workspace_path == w))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            b.updated_at_us
                .cmp(&a.updated_at_us)
                .then_with(|| a.id.cmp(&b.id))
        });
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn children(&self, parent: &SessionId) -> Result<Vec<SessionRecord>, SessionError> {
        let f = lock(&self.file);
        let mut out: Vec<SessionRecord> = f
            .sessions
            .values()
            .filter(|s| s.parent_session_id.as_deref() == Some(parent.as_str()))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            a.created_at_us
                .cmp(&b.created_at_us)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    fn stats(&self) -> SessionStats {
        lock(&self.queue).stats
    }
}
