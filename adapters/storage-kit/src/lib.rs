//! `gw-storage-kit`: engine-free machinery the storage adapters share, so each adapter keeps
//! only what needs its engine. It implements no port and depends on no storage engine or
//! adapter (the architecture test checks it).

mod backup;
mod files;
mod maintenance;
mod workspaces;

pub use backup::{BackupEngine, Claim, FileFacts, RestoreEngine, backup, restore};
pub use files::{
    SIDE_FILES, TempFile, copy_hashing, file_len, fsync_dir, io_err, parent_dir,
    publish_no_clobber, remove_side_files, remove_with_side_files, require_file, sha256_file,
    sync_file, temp_name, with_suffix, write_synced,
};
pub use maintenance::{Batch, RECENT_WINDOW_US, StatusSource, prune_in_batches, status};
pub use workspaces::{MAX_OPEN_STORES, WorkspaceStores, pattern_file, prepare_pattern_file};
