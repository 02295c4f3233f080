//! What the listener counts and logs (refusals and accept failures, rate-limited so a
//! connection flood cannot flood the log), and how accept errors are classified.

use metis_ports::metrics::Metrics;
use metis_ports::queue::LogLimiter;
use poem::web::RemoteAddr;
use std::sync::Arc;
use std::time::Duration;

/// What the listener counts and logs, shared by every connection of both stacks.
pub struct Observer {
    pub(super) metrics: Arc<dyn Metrics>,
    /// Over-cap and out-of-descriptor refusals are logged at most once per interval (with
    /// the count since), so a connection flood cannot flood the log too.
    refused_log: LogLimiter,
    refused_since_log: std::sync::atomic::AtomicU64,
    accept_log: LogLimiter,
    accept_errors_since_log: std::sync::atomic::AtomicU64,
}

impl Observer {
    #[must_use]
    pub fn new(metrics: Arc<dyn Metrics>) -> Arc<Self> {
        Arc::new(Observer {
            metrics,
            refused_log: LogLimiter::new(Duration::from_secs(10)),
            refused_since_log: std::sync::atomic::AtomicU64::new(0),
            accept_log: LogLimiter::new(Duration::from_secs(10)),
            accept_errors_since_log: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A connection refused with 503 before any request was read.
    pub(super) fn refused(&self, reason: &'static str, peer: &RemoteAddr, limit: usize) {
        use std::sync::atomic::Ordering;
        self.metrics.refused(reason);
        let n = self.refused_since_log.fetch_add(1, Ordering::Relaxed) + 1;
        if self.refused_log.allow() {
            self.refused_since_log.store(0, Ordering::Relaxed);
            if reason == "fd_limit" {
                tracing::warn!(peer = %peer, refused = n, "out of file descriptors; answering 503 from the spare descriptor (see metis_accept_errors_total)");
            } else {
                tracing::warn!(peer = %peer, refused = n, max_connections = limit, "connection limit reached; answering 503 (refused counts those since the last such line)");
            }
        }
    }

    /// `accept` failed.
    pub(super) fn accept_failed(&self, e: &std::io::Error) {
        use std::sync::atomic::Ordering;
        let kind = if is_fd_limit(e) { "fd_limit" } else { "other" };
        self.metrics.accept_error(kind);
        let n = self.accept_errors_since_log.fetch_add(1, Ordering::Relaxed) + 1;
        if self.accept_log.allow() {
            self.accept_errors_since_log.store(0, Ordering::Relaxed);
            tracing::warn!(error = %e, kind, failures = n, "cannot accept a connection (failures since the last such line: {n})");
        }
    }
}

/// An error about one connection (reset or aborted before it was accepted), not about the
/// listener.
pub(super) fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// EMFILE (this process) or ENFILE (the whole system) is out of file descriptors.
pub(super) fn is_fd_limit(e: &std::io::Error) -> bool {
    // 24 = EMFILE, 23 = ENFILE on Linux and the BSDs.
    matches!(e.raw_os_error(), Some(23 | 24))
}
