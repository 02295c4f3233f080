//! File-system plumbing for the keystore: the advisory lock, the atomic replace and the
//! mapping of OS errors to the port's error enum.
//!
//! Invariants:
//! - Writers serialise on an exclusive advisory lock of `<file>.lock` (a sibling that is never
//!   deleted, so every process locks the same inode).
//! - A write goes to a fresh temp file in the target's directory, created 0600, then is
//!   fsynced, renamed over the target and the directory is fsynced: a reader sees the old
//!   file or the new one, never a partial one. The temp file is removed on any error.
//! - "Cannot write here" (EROFS, EACCES, EPERM) becomes `KeyStoreError::ReadOnly`.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use metis_ports::keys::KeyStoreError;

/// Mode of the keystore, its lock file and temp files.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of a keystore directory this adapter creates.
pub(crate) const DIR_MODE: u32 = 0o700;

const READ_ONLY_HINT: &str = "the keystore cannot be written here (a read-only mount such as a \
     Kubernetes Secret or ConfigMap, or missing permissions); issue keys where the file is \
     writable, or keep keys in the main store (--keystore store)";

/// Map an I/O error during `op` to the port error.
pub(crate) fn classify(location: &Path, op: &str, e: &io::Error) -> KeyStoreError {
    let location = location.display().to_string();
    match e.kind() {
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => {
            KeyStoreError::ReadOnly {
                location,
                message: format!("{op}: {e}; {READ_ONLY_HINT}"),
            }
        }
        _ => KeyStoreError::Io {
            location,
            message: format!("{op}: {e}"),
        },
    }
}

/// `<path>.lock`, beside the keystore.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name: OsString = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Create the keystore's directory (and missing ancestors) with mode 0700.
pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// An exclusive advisory lock, released when dropped (closing the file releases it).
#[derive(Debug)]
pub(crate) struct WriteLock {
    _file: File,
}

/// Block until this process holds the exclusive lock on `lock_file` (created 0600 if missing).
pub(crate) fn lock_exclusive(lock_file: &Path) -> io::Result<WriteLock> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(lock_file)?;
    file.lock()?;
    Ok(WriteLock { _file: file })
}

/// Deletes the temp file unless the rename consumed it.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The step of [`replace_atomically`] that failed, for the error message.
#[derive(Debug)]
pub(crate) struct WriteError {
    pub op: &'static str,
    pub error: io::Error,
}

fn step<T>(op: &'static str, r: io::Result<T>) -> Result<T, WriteError> {
    r.map_err(|error| WriteError { op, error })
}

/// Replace `target` with `contents`: temp file (0600) in the same directory, write, fsync,
/// rename, fsync the directory.
pub(crate) fn replace_atomically(target: &Path, contents: &[u8]) -> Result<(), WriteError> {
    let dir = parent_dir(target);
    let base = target
        .file_name()
        .map_or_else(|| "keys.json".into(), |n| n.to_string_lossy().into_owned());
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_path = dir.join(format!(".{base}.{}.{n}.tmp", std::process::id()));

    let mut file = step(
        "cannot create a temporary file",
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp_path),
    )?;
    let mut guard = TempFile {
        path: tmp_path,
        armed: true,
    };
    // The umask can only remove bits from 0600, but make the mode exact anyway.
    step(
        "cannot set the temporary file's mode",
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE)),
    )?;
    step("cannot write the temporary file", file.write_all(contents))?;
    step("cannot fsync the temporary file", file.sync_all())?;
    drop(file);
    step(
        "cannot rename the temporary file over the keystore",
        fs::rename(&guard.path, target),
    )?;
    guard.armed = false;

    // The new file is in place; a failed directory fsync only weakens crash durability, so it
    // is reported but does not turn a completed write into an error.
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not fsync the keystore directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(e: &KeyStoreError) -> &'static str {
        match e {
            KeyStoreError::ReadOnly { .. } => "read-only",
            KeyStoreError::Io { .. } => "io",
            _ => "other",
        }
    }

    #[test]
    fn erofs_eacces_and_eperm_mean_read_only() {
        // Linux errno values: EPERM 1, EACCES 13, EROFS 30, ENOSPC 28.
        let p = Path::new("/etc/metis/keys.json");
        for errno in [1, 13, 30] {
            let e = classify(p, "cannot lock", &io::Error::from_raw_os_error(errno));
            assert_eq!(kind_of(&e), "read-only", "errno {errno}");
            let text = e.to_string();
            assert!(text.contains("Kubernetes Secret"), "{text}");
            assert!(text.contains("/etc/metis/keys.json"), "{text}");
        }
        let full = classify(p, "cannot write", &io::Error::from_raw_os_error(28));
        assert_eq!(kind_of(&full), "io");
    }

    #[test]
    fn the_lock_file_sits_beside_the_keystore() {
        assert_eq!(
            lock_path(Path::new("/a/keys.json")),
            PathBuf::from("/a/keys.json.lock")
        );
        assert_eq!(parent_dir(Path::new("keys.json")), Path::new("."));
    }
}
