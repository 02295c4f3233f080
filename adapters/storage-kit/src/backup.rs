//! The order of a backup and of a restore, once for every file-backed engine; the engine
//! supplies only what needs it (taking a consistent snapshot, reading a version, proving a
//! copy is usable, claiming the target).
//!
//! Invariants:
//! - Backup: the source must exist and neither `<dest>` nor `<dest>.meta` may; the snapshot is
//!   written under a temp name beside `dest`, synced, described, hashed, and published with a
//!   no-clobber link together with its `.meta` block (no backup without its metadata); on any
//!   failure every temp file is removed.
//! - Restore checks, in order: source present, engine refusals about the source, target
//!   absent or `force`, source version equal to the binary's, `.meta` version (and later
//!   checksum) matching, then on a private copy beside the target: the engine's proof that it
//!   is a usable store. The target is renamed over only after all of them, and is never
//!   changed before (the engine's claims on it hold until the rename).

use std::any::Any;
use std::fs;
use std::io;
use std::path::Path;

use metis_domain::backup::{BackupMeta, MetaFields, RestoreSummary, parse_meta};
use metis_ports::storage::{MaintenanceError, Progress};

use crate::files::{
    TempFile, copy_hashing, fsync_dir, io_err, parent_dir, publish_no_clobber, require_file,
    sha256_file, sync_file, temp_name, with_suffix, write_synced,
};

/// What a store file holds, read back from a written copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFacts {
    pub schema_version: i64,
    pub events: u64,
    pub oldest_event_us: Option<i64>,
    pub newest_event_us: Option<i64>,
}

/// The engine's part of a backup.
pub trait BackupEngine {
    /// The open source (released before the copy is described).
    type Source;

    /// Open the source for a consistent read, refusing a file from a newer binary.
    ///
    /// # Errors
    /// `TooNew`, or `Failed` when it cannot be opened.
    fn open_source(&self, src: &Path) -> Result<Self::Source, MaintenanceError>;

    /// Write one consistent snapshot of `source` into the new file `tmp`, reporting progress.
    ///
    /// # Errors
    /// `Failed` (the caller removes `tmp`).
    fn snapshot(
        &self,
        source: Self::Source,
        src: &Path,
        tmp: &Path,
        progress: Progress<'_>,
    ) -> Result<(), MaintenanceError>;

    /// Read the version and event span of the closed file `path`.
    ///
    /// # Errors
    /// `Failed` when it cannot be read.
    fn describe(&self, path: &Path) -> Result<FileFacts, MaintenanceError>;
}

/// Hot backup of `src` into the new file `dest` and `<dest>.meta` (see the module docs).
///
/// # Errors
/// `Refused` when `src` is missing or `dest` (or `<dest>.meta`) exists; the engine's errors;
/// `Failed` on I/O errors. No file is left behind on error.
pub fn backup<E: BackupEngine>(
    engine: &E,
    src: &Path,
    dest: &Path,
    progress: Progress<'_>,
) -> Result<BackupMeta, MaintenanceError> {
    require_file(src, "source database")?;
    refuse_existing(dest)?;
    let source = engine.open_source(src)?;
    publish_backup(src, dest, |tmp| {
        engine.snapshot(source, src, tmp, progress)?;
        engine.describe(tmp)
    })
}

/// Refuse a backup destination that exists, or whose `.meta` does.
fn refuse_existing(dest: &Path) -> Result<(), MaintenanceError> {
    let meta_path = with_suffix(dest, ".meta");
    for p in [dest, meta_path.as_path()] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(MaintenanceError::Refused(format!(
                "backup destination {} already exists (backups never overwrite; choose a new name)",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Publish a backup written by `write` (into a temp file beside `dest`, returning what it
/// holds) as `dest` with its `<dest>.meta`, with the no-clobber and no-partial-file rules of
/// the module docs. For engines without a source file (a database server), `source` is what
/// the metadata names as the source.
///
/// # Errors
/// `Refused` when `dest` (or `<dest>.meta`) exists; `write`'s errors; `Failed` on I/O errors.
/// No file is left behind on error.
pub fn publish_backup(
    source: &Path,
    dest: &Path,
    write: impl FnOnce(&Path) -> Result<FileFacts, MaintenanceError>,
) -> Result<BackupMeta, MaintenanceError> {
    refuse_existing(dest)?;
    let meta_path = with_suffix(dest, ".meta");
    let dir = parent_dir(dest);
    fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create directory"))?;
    let dir = dir.canonicalize().map_err(io_err(&dir, "cannot resolve"))?;
    let tmp = TempFile::new(temp_name(&dir, dest, "backup"));
    let tmp_meta = TempFile::new(temp_name(&dir, &meta_path, "meta"));
    let facts = write(tmp.path())?;
    let bytes = sync_file(tmp.path())?;
    let meta = BackupMeta {
        source: source.to_path_buf(),
        destination: dest.to_path_buf(),
        bytes,
        schema_version: facts.schema_version,
        events: facts.events,
        oldest_event_us: facts.oldest_event_us,
        newest_event_us: facts.newest_event_us,
        sha256: sha256_file(tmp.path())?,
    };
    write_synced(tmp_meta.path(), &meta.block())?;
    publish_no_clobber(tmp.path(), dest)?;
    tmp.disarm();
    if let Err(e) = publish_no_clobber(tmp_meta.path(), &meta_path) {
        // Keep the pair consistent: no backup without its metadata.
        let _ = fs::remove_file(dest);
        return Err(e);
    }
    tmp_meta.disarm();
    fsync_dir(&dir);
    Ok(meta)
}

/// Something the engine holds on the restore target until the rename (a lock, an exclusive
/// open); dropped after it.
pub type Claim = Box<dyn Any>;

/// The engine's part of a restore.
pub trait RestoreEngine {
    /// The schema version this binary reads and writes.
    fn supported(&self) -> i64;

    /// Refusals about the backup file before any other check (e.g. a live database).
    ///
    /// # Errors
    /// `Refused`.
    fn check_source(&self, _src: &Path) -> Result<(), MaintenanceError> {
        Ok(())
    }

    /// The schema version of the backup file, read without changing it.
    ///
    /// # Errors
    /// `Refused` when it is not a file of this engine.
    fn version_of(&self, src: &Path) -> Result<i64, MaintenanceError>;

    /// Claim the target before the copy is made; `None` when the engine claims it later.
    ///
    /// # Errors
    /// `Refused` when another process holds it.
    fn claim_before_copy(&self, _dest: &Path) -> Result<Option<Claim>, MaintenanceError> {
        Ok(None)
    }

    /// Prove the private `copy` of `src` is a usable store of this binary; returns its number
    /// of events.
    ///
    /// # Errors
    /// `Refused` naming the damage.
    fn verify_copy(&self, src: &Path, copy: &Path) -> Result<u64, MaintenanceError>;

    /// The last step before the verified copy is renamed over `dest` (which may not exist).
    ///
    /// # Errors
    /// `Refused` when another process holds the target; `Failed` on I/O errors.
    fn before_replace(&self, dest: &Path) -> Result<Option<Claim>, MaintenanceError>;
}

/// The checks of a backup file before it is read into a store: its schema `version` is the
/// binary's (`supported`), and `<src>.meta`, when present, says the same. Returns the
/// metadata for [`check_checksum`].
///
/// # Errors
/// `Refused` naming the mismatch.
pub fn check_backup(
    src: &Path,
    version: i64,
    supported: i64,
) -> Result<Option<MetaFields>, MaintenanceError> {
    if version != supported {
        return Err(MaintenanceError::Refused(format!(
            "backup {} has schema version {version} but this binary uses schema version \
             {supported}; restore it with a metis binary of schema version {version} \
             (there is no in-place migration of a backup)",
            src.display()
        )));
    }
    checked_meta(src, version, supported)
}

/// Refuse a backup whose bytes (`sha`, SHA-256 hex) are not the ones its `.meta` recorded.
///
/// # Errors
/// `Refused` naming both checksums.
pub fn check_checksum(
    src: &Path,
    meta: Option<&MetaFields>,
    sha: &str,
) -> Result<(), MaintenanceError> {
    if let Some(expected) = meta.and_then(|m| m.sha256.as_deref())
        && expected != sha
    {
        return Err(MaintenanceError::Refused(format!(
            "checksum mismatch: {} records sha256 {expected} but {} has {sha}; the backup is \
             damaged or was modified",
            with_suffix(src, ".meta").display(),
            src.display()
        )));
    }
    Ok(())
}

/// Read `<src>.meta` when present and check its version line against the file's `version`.
fn checked_meta(
    src: &Path,
    version: i64,
    supported: i64,
) -> Result<Option<MetaFields>, MaintenanceError> {
    let meta_path = with_suffix(src, ".meta");
    let meta = match fs::read_to_string(&meta_path) {
        Ok(text) => parse_meta(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&meta_path, "cannot read")(e)),
    };
    match meta.schema_version.as_deref() {
        Some(v) if v == version.to_string() => Ok(Some(meta)),
        Some(v) => Err(MaintenanceError::Refused(format!(
            "{} says schema version {v} but the backup file has schema version \
             {version} (this binary: {supported}); the metadata does not \
             belong to this file",
            meta_path.display()
        ))),
        None => Err(MaintenanceError::Refused(format!(
            "{} has no `schema version:` line",
            meta_path.display()
        ))),
    }
}

/// Replace the store `dest` with the backup `src` (checks in the module docs' order).
///
/// # Errors
/// `Refused` for every failed check (nothing changed); `Failed` on I/O errors (the target is
/// unchanged unless the final rename happened).
pub fn restore<E: RestoreEngine>(
    engine: &E,
    src: &Path,
    dest: &Path,
    force: bool,
    progress: Progress<'_>,
) -> Result<RestoreSummary, MaintenanceError> {
    require_file(src, "backup")?;
    engine.check_source(src)?;
    if dest.exists() && !force {
        return Err(MaintenanceError::Refused(format!(
            "restore target {} exists; pass --force to replace it",
            dest.display()
        )));
    }
    let supported = engine.supported();
    let version = engine.version_of(src)?;
    let meta = check_backup(src, version, supported)?;
    let dir = parent_dir(dest);
    fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create directory"))?;
    let _early = engine.claim_before_copy(dest)?;
    // Everything about the backup is proven on a private copy before the target is touched.
    let tmp = TempFile::new(temp_name(&dir, dest, "restore"));
    let (bytes, sha) = copy_hashing(src, tmp.path(), progress)?;
    check_checksum(src, meta.as_ref(), &sha)?;
    let events = engine.verify_copy(src, tmp.path())?;
    let _late = engine.before_replace(dest)?;
    fs::rename(tmp.path(), dest).map_err(io_err(dest, "cannot replace"))?;
    tmp.disarm();
    fsync_dir(&dir);
    Ok(RestoreSummary {
        source: src.to_path_buf(),
        destination: dest.to_path_buf(),
        bytes,
        schema_version: version,
        events,
    })
}
