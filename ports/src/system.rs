//! Clock and id/randomness sources, so use cases never read the system directly.

use metis_domain::time::Timestamp;

/// Wall clock.
pub trait Clock: Send + Sync {
    /// Current unix time in microseconds (UTC).
    fn now_us(&self) -> Timestamp;
}

/// Identifiers and secrets.
pub trait IdSource: Send + Sync {
    /// A new ULID string. MUST be unique and monotonic within the process.
    fn ulid(&self) -> String;
    /// 24 bytes (192 bits) from a CSPRNG, for gateway tokens. MUST NOT be derived from any
    /// id or timestamp.
    fn secret_bytes(&self) -> [u8; 24];
}

/// Distributed-tracing context of the current request (W3C trace context).
pub trait TraceContext: Send + Sync {
    /// Whether spans are exported at all (when not, callers skip building them).
    fn exporting(&self) -> bool;

    /// The `traceparent` naming the current span, when tracing is exported; `None`
    /// otherwise (the caller then propagates the client's header unchanged).
    fn current_traceparent(&self) -> Option<String>;
}

/// Runs work in the background, detached from the request that started it (e.g. updating a
/// workspace's pattern store after the answer was sent).
pub trait Background: Send + Sync {
    /// Start `task`; it MUST NOT delay the caller.
    fn spawn(&self, task: futures_util::future::BoxFuture<'static, ()>);

    /// Start `task` after `delay` (a graceful shutdown still waits for it).
    fn spawn_after(
        &self,
        delay: std::time::Duration,
        task: futures_util::future::BoxFuture<'static, ()>,
    );
}
