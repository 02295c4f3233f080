//! Background work on the tokio runtime (pattern store updates), counted so a shutdown can
//! wait for it.

use std::sync::Arc;
use std::time::Duration;

/// Background work on the tokio runtime, counted so shutdown can wait for it.
#[derive(Debug, Default, Clone)]
pub struct TokioBackground {
    state: Arc<BackgroundState>,
}

#[derive(Debug, Default)]
struct BackgroundState {
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl TokioBackground {
    /// Wait until no background task runs, or `grace` passes.
    pub async fn drain(&self, grace: Duration) {
        let st = &self.state;
        let wait = async {
            loop {
                let idle = st.idle.notified();
                if st.running.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!("background work still running at shutdown (pattern store updates)");
        }
    }
}

impl metis_ports::system::Background for TokioBackground {
    fn spawn(&self, task: futures_util::future::BoxFuture<'static, ()>) {
        self.spawn_after(Duration::ZERO, task);
    }

    fn spawn_after(&self, delay: Duration, task: futures_util::future::BoxFuture<'static, ()>) {
        self.state
            .running
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let st = Arc::clone(&self.state);
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            task.await;
            if st.running.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                st.idle.notify_waiters();
            }
        });
    }
}
