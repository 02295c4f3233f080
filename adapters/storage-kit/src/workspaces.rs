//! Where the per-workspace pattern stores live and which of them are open, once for every
//! engine: the file of a workspace, the check that its directory is usable, a bounded cache of
//! open stores and the one-WARN-per-workspace skip rule.
//!
//! Invariants:
//! - `InWorkspace` stores live in `<workspace>/.metis/<file>` and need an existing, absolute
//!   workspace directory; `Dir(d)` stores live in `<d>/<first 16 hex of the workspace
//!   hash>/<file>`. Nothing is created outside those directories.
//! - A workspace whose directory cannot be used is skipped (the caller records nothing) and
//!   logged once per workspace, not once per record.
//! - An open store was checked when it was opened; only new ones are probed. At most
//!   [`MAX_OPEN_STORES`] stay open (beyond it the cache is emptied and refilled).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use metis_domain::patterns::workspace_hash;
use metis_ports::storage::PatternPlace;

/// Most store files kept open at once.
pub const MAX_OPEN_STORES: usize = 64;

/// The store file `file_name` of `workspace` at `place`.
#[must_use]
pub fn pattern_file(place: &PatternPlace, workspace: &str, file_name: &str) -> PathBuf {
    match place {
        PatternPlace::InWorkspace => Path::new(workspace).join(".metis").join(file_name),
        PatternPlace::Dir(d) => d.join(&workspace_hash(workspace)[..16]).join(file_name),
    }
}

/// Check that the store's directory can be used, creating `.metis` (or the hash directory)
/// when missing; returns the store file. `Err(reason)` means "skip this workspace".
///
/// # Errors
/// The reason the workspace cannot hold a store.
pub fn prepare_pattern_file(
    place: &PatternPlace,
    workspace: &str,
    file_name: &str,
) -> Result<PathBuf, String> {
    let path = pattern_file(place, workspace, file_name);
    if *place == PatternPlace::InWorkspace {
        let ws = Path::new(workspace);
        if !ws.is_absolute() {
            return Err(format!("workspace {workspace} is not an absolute path"));
        }
        if !ws.is_dir() {
            return Err(format!(
                "workspace {workspace} is not a directory on this host"
            ));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let probe = dir.join(format!(".write-probe.{}", std::process::id()));
        std::fs::write(&probe, b"")
            .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
    }
    Ok(path)
}

/// The open pattern stores of every workspace (`H` is the engine's shared handle, e.g. an
/// `Arc`).
#[derive(Debug)]
pub struct WorkspaceStores<H> {
    place: PatternPlace,
    file_name: &'static str,
    open: Mutex<HashMap<PathBuf, H>>,
    skipped: Mutex<HashSet<String>>,
}

impl<H: Clone> WorkspaceStores<H> {
    #[must_use]
    pub fn new(place: PatternPlace, file_name: &'static str) -> Self {
        Self {
            place,
            file_name,
            open: Mutex::new(HashMap::new()),
            skipped: Mutex::new(HashSet::new()),
        }
    }

    #[must_use]
    pub fn place(&self) -> &PatternPlace {
        &self.place
    }

    /// The store file of `workspace`.
    #[must_use]
    pub fn path(&self, workspace: &str) -> PathBuf {
        pattern_file(&self.place, workspace, self.file_name)
    }

    /// The open store at `path`, opening it with `open` when it is not cached. The cache is
    /// locked while `open` runs, so one file is never opened twice at once.
    ///
    /// # Errors
    /// `open`'s error (nothing is cached).
    pub fn open<E>(&self, path: &Path, open: impl FnOnce(&Path) -> Result<H, E>) -> Result<H, E> {
        let mut cache = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = cache.get(path) {
            return Ok(h.clone());
        }
        let h = open(path)?;
        if cache.len() >= MAX_OPEN_STORES {
            cache.clear();
        }
        cache.insert(path.to_path_buf(), h.clone());
        Ok(h)
    }

    /// The store of `workspace` to write to (created when missing), or the reason to skip the
    /// workspace (logged once per workspace).
    ///
    /// # Errors
    /// `open`'s error.
    pub fn writable<E>(
        &self,
        workspace: &str,
        open: impl FnOnce(&Path) -> Result<H, E>,
    ) -> Result<Result<(PathBuf, H), String>, E> {
        let path = self.path(workspace);
        let cached = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&path)
            .cloned();
        if let Some(h) = cached {
            return Ok(Ok((path, h)));
        }
        match prepare_pattern_file(&self.place, workspace, self.file_name) {
            Ok(path) => {
                let h = self.open(&path, open)?;
                Ok(Ok((path, h)))
            }
            Err(reason) => {
                let first = self
                    .skipped
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(workspace.to_owned());
                if first {
                    tracing::warn!(workspace, reason = %reason, "pattern store skipped for this workspace");
                }
                Ok(Err(reason))
            }
        }
    }

    /// The existing store of `workspace` to read (`None` when its file does not exist).
    ///
    /// # Errors
    /// `open`'s error.
    pub fn existing<E>(
        &self,
        workspace: &str,
        open: impl FnOnce(&Path) -> Result<H, E>,
    ) -> Result<Option<(PathBuf, H)>, E> {
        let path = self.path(workspace);
        if !path.is_file() {
            return Ok(None);
        }
        let h = self.open(&path, open)?;
        Ok(Some((path, h)))
    }

    /// Drop the cached store of `workspace` (after an outside change to its file).
    pub fn forget(&self, workspace: &str) {
        let path = self.path(workspace);
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn stores_are_placed_by_workspace_or_by_hash() {
        let p = pattern_file(&PatternPlace::InWorkspace, "/w", "patterns.db");
        assert_eq!(p, PathBuf::from("/w/.metis/patterns.db"));
        let p = pattern_file(&PatternPlace::Dir("/d".into()), "/w", "patterns.redb");
        assert_eq!(
            p,
            PathBuf::from("/d")
                .join(&workspace_hash("/w")[..16])
                .join("patterns.redb")
        );
    }

    #[test]
    fn an_unusable_workspace_is_skipped_and_an_open_store_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let stores: WorkspaceStores<u32> = WorkspaceStores::new(PatternPlace::InWorkspace, "p");
        let missing = dir.path().join("missing");
        let r = stores
            .writable(missing.to_str().unwrap(), |_| Ok::<_, ()>(1))
            .unwrap();
        assert!(r.unwrap_err().contains("not a directory"));
        assert!(
            stores
                .writable("relative", |_| Ok::<_, ()>(1))
                .unwrap()
                .is_err()
        );

        let opened = Cell::new(0);
        let ws = dir.path().to_str().unwrap();
        for _ in 0..3 {
            let (path, h) = stores
                .writable(ws, |_| {
                    opened.set(opened.get() + 1);
                    Ok::<_, ()>(7)
                })
                .unwrap()
                .unwrap();
            assert_eq!(h, 7);
            assert_eq!(path, dir.path().join(".metis").join("p"));
        }
        assert_eq!(opened.get(), 1);
        stores.forget(ws);
        assert!(stores.existing(ws, |_| Ok::<_, ()>(8)).unwrap().is_none());
    }
}
