//! Batches pattern-store updates off the request path.
//!
//! Every completed turn contributes one observation. Writing each in its own transaction (on
//! its own blocking thread) would cost more than the request itself, so observations queue
//! here and one background task applies whatever has accumulated, a workspace at a time in
//! one transaction, looping until the queue is empty. The task waits [`LINGER`] after it
//! starts, so that under load one transaction carries hundreds of observations instead of a
//! handful (each commit rewrites the touched pages into the WAL; per observation, small
//! batches cost more than the request itself). The projection therefore trails the trace by
//! at most about `LINGER` plus one transaction; shutdown waits for the task. Order per
//! workspace is preserved, so the store still equals the replay of the trace's
//! `pattern.recorded` events.

use metis_domain::patterns::PatternRecord;
use metis_ports::patterns::PatternStore;
use metis_ports::system::Background;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the drain task lets observations accumulate before its first transaction.
pub const LINGER: Duration = Duration::from_millis(20);

/// The queue and its single drain task.
pub struct PatternBatcher {
    store: Arc<dyn PatternStore>,
    background: Arc<dyn Background>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: Vec<(String, PatternRecord)>,
    draining: bool,
}

impl PatternBatcher {
    #[must_use]
    pub fn new(store: Arc<dyn PatternStore>, background: Arc<dyn Background>) -> Arc<Self> {
        Arc::new(PatternBatcher {
            store,
            background,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Queue one observation; starts the drain task unless it is running.
    pub fn submit(self: &Arc<Self>, workspace: String, record: PatternRecord) {
        let start = {
            let mut st = self.lock();
            st.pending.push((workspace, record));
            !std::mem::replace(&mut st.draining, true)
        };
        if start {
            let me = Arc::clone(self);
            self.background
                .spawn_after(LINGER, Box::pin(async move { me.drain().await }));
        }
    }

    async fn drain(self: Arc<Self>) {
        loop {
            let batch = {
                let mut st = self.lock();
                if st.pending.is_empty() {
                    st.draining = false;
                    return;
                }
                std::mem::take(&mut st.pending)
            };
            // Group by workspace, keeping each workspace's order.
            let mut groups: Vec<(String, Vec<PatternRecord>)> = Vec::new();
            for (ws, r) in batch {
                match groups.iter_mut().find(|(w, _)| *w == ws) {
                    Some((_, rs)) => rs.push(r),
                    None => groups.push((ws, vec![r])),
                }
            }
            for (ws, records) in groups {
                if let Err(e) = self.store.record_many(&ws, records).await {
                    tracing::warn!(error = %e, workspace = %ws, "pattern store update failed");
                }
            }
        }
    }
}
