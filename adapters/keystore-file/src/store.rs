//! [`FileKeyStore`]: the `KeyStore` port over a JSON file `{"keys": [ … ]}`.
//!
//! Invariants:
//! - Budgets and model groups live in the same file (top-level `budgets` and `model_groups`
//!   arrays) and are written under the same lock and rules as the keys, so the file's change
//!   token covers both.
//! - `load` returns every key or an error: a half-valid key set is never served.
//! - `insert` holds the exclusive lock of `<file>.lock` for the whole read-modify-write, so
//!   concurrent admin commands (any process, any thread) never lose an update, and writes the
//!   file atomically with mode 0600.
//! - A corrupt file is never overwritten by `insert`.
//! - When the configured path is a symlink, the write replaces the file it points to (the link
//!   stays), and the lock is taken beside that file.
//! - All file work runs on tokio's blocking pool; `*_blocking` variants exist for code without
//!   a runtime.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use metis_domain::budgets::Policies;
use metis_domain::keys::KeyRecord;
use metis_ports::keys::{KeyEdit, KeyStore, KeyStoreError, PolicyEdit};

use crate::document::{Conflict, Document};
use crate::fsio::{
    WriteLock, classify, ensure_dir, lock_exclusive, lock_path, parent_dir, replace_atomically,
};

/// A keystore kept in one JSON file (compatible with the original `keys.json`).
#[derive(Debug, Clone)]
pub struct FileKeyStore {
    path: PathBuf,
}

impl FileKeyStore {
    /// A store at `path`. Nothing is read or created until first use.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The configured file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sibling lock file writers serialise on (`<file>.lock`).
    #[must_use]
    pub fn lock_file(&self) -> PathBuf {
        lock_path(&self.resolved())
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    /// The file writes go to: the symlink target when the path is a symlink.
    fn resolved(&self) -> PathBuf {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => {
                fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone())
            }
            _ => self.path.clone(),
        }
    }

    /// Take the exclusive write lock beside `target` (held until the guard drops).
    fn lock(&self, target: &Path) -> Result<WriteLock, KeyStoreError> {
        let lock_file = lock_path(target);
        lock_exclusive(&lock_file).map_err(|e| {
            classify(
                &self.path,
                &format!("cannot lock {}", lock_file.display()),
                &e,
            )
        })
    }

    /// [`lock`](Self::lock), creating `target`'s directory first (writes that may create the
    /// file).
    fn lock_creating(&self, target: &Path) -> Result<WriteLock, KeyStoreError> {
        let dir = parent_dir(target);
        ensure_dir(dir).map_err(|e| {
            classify(
                &self.path,
                &format!("cannot create directory {}", dir.display()),
                &e,
            )
        })?;
        self.lock(target)
    }

    fn read_document(&self) -> Result<Option<Document>, KeyStoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(KeyStoreError::Io {
                    location: self.location(),
                    message: format!("cannot read: {e}"),
                });
            }
        };
        Document::parse(&bytes)
            .map(Some)
            .map_err(|message| KeyStoreError::Corrupt {
                location: self.location(),
                message,
            })
    }

    /// Blocking form of [`KeyStore::load`].
    ///
    /// # Errors
    /// `NotFound` when the file is missing; `Corrupt` naming the problem; `Io` otherwise.
    pub fn load_blocking(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        match self.read_document()? {
            Some(doc) => Ok(doc.into_records()),
            None => Err(KeyStoreError::NotFound {
                location: self.location(),
            }),
        }
    }

    /// Blocking form of [`KeyStore::insert`].
    ///
    /// # Errors
    /// `Duplicate` on an existing id or hash; `Corrupt` when the record fails validation or
    /// the existing file is corrupt; `ReadOnly` when the file, its directory or its lock file
    /// cannot be written; `Io` otherwise.
    pub fn insert_blocking(&self, mut record: KeyRecord) -> Result<(), KeyStoreError> {
        // Stored lowercase, as presented tokens are hashed to lowercase hex.
        record.secret_hash.make_ascii_lowercase();
        record
            .validate()
            .map_err(|message| KeyStoreError::Corrupt {
                location: self.location(),
                message: format!("refusing to store an invalid key record: {message}"),
            })?;
        let target = self.resolved();
        let _lock = self.lock_creating(&target)?;

        // Re-read under the lock: this is the set the write is based on.
        let mut doc = match self.read_document()? {
            Some(doc) => {
                self.refuse_read_only_file(&target)?;
                doc
            }
            None => Document::empty(),
        };
        match doc.conflict(&record) {
            Some(Conflict::KeyId(key_id)) => return Err(KeyStoreError::Duplicate { key_id }),
            Some(Conflict::SecretHash { existing_key_id }) => {
                return Err(KeyStoreError::Duplicate {
                    key_id: existing_key_id,
                });
            }
            None => {}
        }
        let key_id = record.key_id.clone();
        doc.push(record).map_err(|message| KeyStoreError::Io {
            location: self.location(),
            message,
        })?;
        let bytes = doc.to_bytes().map_err(|message| KeyStoreError::Io {
            location: self.location(),
            message,
        })?;
        replace_atomically(&target, &bytes).map_err(|e| classify(&self.path, e.op, &e.error))?;
        tracing::info!(
            keystore = %self.location(),
            key_id = %key_id,
            keys = doc.records().len(),
            "key stored"
        );
        Ok(())
    }

    /// Blocking form of [`KeyStore::update`].
    ///
    /// # Errors
    /// `NotFound` when the file is missing; `Rejected` when the edit refused; `Corrupt` when
    /// the stored file or the edited set is invalid; `ReadOnly` / `Io` on write failures.
    pub fn update_blocking(&self, edit: KeyEdit) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let target = self.resolved();
        if !target.exists() {
            return Err(KeyStoreError::NotFound {
                location: self.location(),
            });
        }
        let _lock = self.lock(&target)?;
        let Some(mut doc) = self.read_document()? else {
            return Err(KeyStoreError::NotFound {
                location: self.location(),
            });
        };
        let mut records = doc.records().to_vec();
        edit(&mut records).map_err(|message| KeyStoreError::Rejected { message })?;
        if records.as_slice() == doc.records() {
            return Ok(records);
        }
        self.refuse_read_only_file(&target)?;
        doc.replace_records(records)
            .map_err(|message| KeyStoreError::Corrupt {
                location: self.location(),
                message: format!("refusing to store an invalid key set: {message}"),
            })?;
        let bytes = doc.to_bytes().map_err(|message| KeyStoreError::Io {
            location: self.location(),
            message,
        })?;
        replace_atomically(&target, &bytes).map_err(|e| classify(&self.path, e.op, &e.error))?;
        tracing::info!(keystore = %self.location(), keys = doc.records().len(), "keystore updated");
        Ok(doc.into_records())
    }

    /// Blocking form of [`KeyStore::load_policies`].
    ///
    /// # Errors
    /// `Corrupt` naming the problem; `Io` otherwise. A missing file holds no policies.
    pub fn load_policies_blocking(&self) -> Result<Policies, KeyStoreError> {
        Ok(self
            .read_document()?
            .map(|d| d.policies().clone())
            .unwrap_or_default())
    }

    /// Blocking form of [`KeyStore::update_policies`]: the same lock, checks and atomic
    /// write as `update`; creates the file (with no key) when missing.
    ///
    /// # Errors
    /// As the port.
    pub fn update_policies_blocking(&self, edit: PolicyEdit) -> Result<Policies, KeyStoreError> {
        let target = self.resolved();
        let _lock = self.lock_creating(&target)?;
        let mut doc = self.read_document()?.unwrap_or_else(Document::empty);
        let mut policies = doc.policies().clone();
        edit(&mut policies).map_err(|message| KeyStoreError::Rejected { message })?;
        if &policies == doc.policies() {
            return Ok(policies);
        }
        self.refuse_read_only_file(&target)?;
        doc.replace_policies(&policies)
            .map_err(|message| KeyStoreError::Corrupt {
                location: self.location(),
                message: format!("refusing to store invalid policies: {message}"),
            })?;
        let bytes = doc.to_bytes().map_err(|message| KeyStoreError::Io {
            location: self.location(),
            message,
        })?;
        replace_atomically(&target, &bytes).map_err(|e| classify(&self.path, e.op, &e.error))?;
        tracing::info!(
            keystore = %self.location(),
            budgets = policies.budgets.len(),
            model_groups = policies.model_groups.len(),
            "policies updated"
        );
        Ok(doc.policies().clone())
    }

    /// A file without any write permission bit is the operator saying "do not edit": honour
    /// it even when running as root (where the kernel would let the rename through).
    fn refuse_read_only_file(&self, target: &Path) -> Result<(), KeyStoreError> {
        match fs::metadata(target) {
            Ok(m) if m.permissions().mode() & 0o222 == 0 => Err(KeyStoreError::ReadOnly {
                location: self.location(),
                message: format!(
                    "the file is read-only (mode {:o}); make it writable (chmod 600) to issue keys",
                    m.permissions().mode() & 0o7777
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Blocking form of [`KeyStore::version`]: mtime (ns), size and inode, or `None` when the
    /// file is missing or cannot be inspected.
    #[must_use]
    pub fn version_blocking(&self) -> Option<String> {
        let m = fs::metadata(&self.path).ok()?;
        Some(format!(
            "{}.{:09}-{}-{}",
            m.mtime(),
            m.mtime_nsec(),
            m.size(),
            m.ino()
        ))
    }
}

fn join_failed(location: &Path, e: &tokio::task::JoinError) -> KeyStoreError {
    KeyStoreError::Io {
        location: location.display().to_string(),
        message: format!("keystore task failed: {e}"),
    }
}

#[async_trait]
impl KeyStore for FileKeyStore {
    fn describe(&self) -> String {
        self.location()
    }

    async fn load(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.load_blocking())
            .await
            .unwrap_or_else(|e| Err(join_failed(&self.path, &e)))
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), KeyStoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.insert_blocking(record))
            .await
            .unwrap_or_else(|e| Err(join_failed(&self.path, &e)))
    }

    async fn update(&self, edit: KeyEdit) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.update_blocking(edit))
            .await
            .unwrap_or_else(|e| Err(join_failed(&self.path, &e)))
    }

    async fn version(&self) -> Option<String> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.version_blocking())
            .await
            .ok()
            .flatten()
    }

    async fn load_policies(&self) -> Result<Policies, KeyStoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.load_policies_blocking())
            .await
            .unwrap_or_else(|e| Err(join_failed(&self.path, &e)))
    }

    async fn update_policies(&self, edit: PolicyEdit) -> Result<Policies, KeyStoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.update_policies_blocking(edit))
            .await
            .unwrap_or_else(|e| Err(join_failed(&self.path, &e)))
    }
}
