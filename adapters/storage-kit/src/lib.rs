//! `metis-storage-kit`: what the storage adapters share, so each backend crate keeps only its
//! engine-specific code. It knows no storage engine and depends on no adapter (the
//! architecture test checks it); the writer loop and its sending side ([`WriterHandle`]) live
//! in `metis-ports`, which may not depend on a runtime.
//!
//! - [`backup()`]/[`restore()`]: the order of steps and checks of a crash-safe backup and a
//!   checked restore, each engine plugging in its snapshot, version and integrity checks; the
//!   file mechanics under them (temp names, durable writes, no-clobber publish, hashing).
//! - [`prune_in_batches`] and [`status`]: the frames of retention and `trace status`.
//! - [`WorkspaceStores`], [`pattern_file`]: where each workspace's pattern store lives and
//!   the cache of open stores; [`PatternsOnPool`]: the async `PatternStore` port over a
//!   backend's blocking pattern stores.
//! - [`flush`] and [`shutdown`]: the async waits on a [`WriterHandle`] (a flush's reply, a
//!   join kept off the async workers).
//! - [`blocking`]: run a blocking read or write on tokio's blocking pool.
//! - [`keys`]: the rules both key stores apply around their transactions, and the
//!   `KeyStore` port over their `*_blocking` methods.
//! - [`sessions`]: the `SessionStore` port of a store whose turns ride its trace writer.
//! - [`trace`]: the `EventSink` port of a trace store over the shared writer.
//!
//! Where a port can be served generically over a backend's blocking side, it is one generic
//! type here ([`PatternsOnPool`]); where it needs the backend's own store type, it is written
//! out by a macro that expands in the adapter crate ([`key_store_on_blocking_pool!`],
//! [`session_store_on_writer!`], [`event_sink_on_writer!`]). Either way each backend writes
//! only what differs.

use std::sync::Arc;

use metis_ports::trace::SinkStats;
use metis_ports::writer::{STOPPED, WriterHandle};
use tokio::sync::oneshot;

mod backup;
mod files;
pub mod keys;
mod maintenance;
mod patterns;
pub mod sessions;
pub mod trace;
mod workspaces;

pub use backup::{
    BackupEngine, Claim, FileFacts, RestoreEngine, backup, check_backup, check_checksum,
    publish_backup, restore,
};
pub use files::{
    SIDE_FILES, TempFile, copy_hashing, file_len, fsync_dir, io_err, parent_dir,
    publish_no_clobber, remove_side_files, remove_with_side_files, require_file, sha256_file,
    sync_file, temp_name, with_suffix, write_synced,
};
pub use maintenance::{Batch, RECENT_WINDOW_US, StatusSource, prune_in_batches, status};
pub use patterns::PatternsOnPool;
pub use workspaces::{MAX_OPEN_STORES, WorkspaceStores, pattern_file, prepare_pattern_file};

#[doc(hidden)]
pub use async_trait::async_trait as __async_trait;
#[doc(hidden)]
pub use metis_domain as __domain;
#[doc(hidden)]
pub use metis_ports as __ports;

/// Run `f` on tokio's blocking pool (a store's reads and writes block on the disk), or on
/// this thread when no runtime is running (CLI code).
///
/// # Errors
/// The task's failure (it panicked or the runtime is shutting down), as text.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.spawn_blocking(f).await.map_err(|e| e.to_string()),
        Err(_) => Ok(f()),
    }
}

/// Wait until everything queued on `writer` before this call was committed (the
/// `EventSink::flush` and `SessionStore::flush` contracts).
///
/// # Errors
/// The message for the port's `Unavailable`: the store is closed, the writer stopped, or
/// rows failed since the previous flush (how many).
pub async fn flush(writer: &WriterHandle) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    writer.send_flush(move |r| {
        // The flusher may have given up waiting; nothing to do then.
        let _ = tx.send(r);
    })?;
    rx.await.unwrap_or_else(|_| Err(STOPPED.to_owned()))
}

/// [`WriterHandle::shutdown_blocking`] on the blocking pool (joining blocks); on this task
/// when the pool is gone (the runtime is shutting down).
pub async fn shutdown(writer: &Arc<WriterHandle>) -> SinkStats {
    let w = Arc::clone(writer);
    match tokio::task::spawn_blocking(move || w.shutdown_blocking()).await {
        Ok(stats) => stats,
        Err(_) => writer.shutdown_blocking(),
    }
}
