//! The writer lock: an advisory file lock on `<db>.lock` that tells a restore a gateway is
//! using the database.
//!
//! Invariants:
//! - A gateway holds a *shared* lock for its whole lifetime (taken before the database is
//!   opened, released when the process exits, even on a crash: the kernel drops it). Shared,
//!   so two gateways can overlap on one file during a `--reuse-port` hand-over.
//! - `metis restore` takes the lock *exclusively* without waiting: if any gateway holds it the
//!   restore is refused ("stop the writer first"); while the restore holds it, a starting
//!   gateway is refused instead of opening a half-replaced file.
//! - Read-only CLI commands and short admin writes take no lock.
//! - The lock file is never deleted (deleting a lock file races with its next locker).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// `<db>.lock`.
#[must_use]
pub fn lock_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it in a conflicting mode.
    Held { path: PathBuf },
    /// The lock file cannot be created or locked.
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { path } => write!(f, "{} is held by another process", path.display()),
            LockError::Io { path, error } => {
                write!(f, "cannot lock {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for LockError {}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
    path: PathBuf,
    exclusive: bool,
}

impl WriterLock {
    /// Take the shared (gateway) lock without waiting.
    ///
    /// # Errors
    /// `Held` while a restore holds it; `Io` when the lock file cannot be created.
    pub fn shared(db: &Path) -> Result<Self, LockError> {
        Self::take(db, false)
    }

    /// Take the exclusive (restore) lock without waiting.
    ///
    /// # Errors
    /// `Held` while any gateway (or another restore) holds it; `Io` otherwise.
    pub fn exclusive(db: &Path) -> Result<Self, LockError> {
        Self::take(db, true)
    }

    fn take(db: &Path, exclusive: bool) -> Result<Self, LockError> {
        let path = lock_path(db);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|error| LockError::Io {
                path: path.clone(),
                error,
            })?;
        let res = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match res {
            Ok(()) => Ok(Self {
                _file: file,
                path,
                exclusive,
            }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held { path }),
            Err(TryLockError::Error(error)) => Err(LockError::Io { path, error }),
        }
    }

    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[must_use]
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_coexist_and_exclude_the_exclusive_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metis.db");
        let a = WriterLock::shared(&db).unwrap();
        let b = WriterLock::shared(&db).unwrap();
        assert!(matches!(
            WriterLock::exclusive(&db),
            Err(LockError::Held { .. })
        ));
        drop((a, b));
        let x = WriterLock::exclusive(&db).unwrap();
        assert!(x.is_exclusive());
        assert!(matches!(
            WriterLock::shared(&db),
            Err(LockError::Held { .. })
        ));
        assert_eq!(x.path(), lock_path(&db));
    }
}
