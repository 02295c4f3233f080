//! File mechanics every file-backed store needs for backup and restore: side-file names, temp
//! names that never collide with a real file, a guard that removes a temp file on any early
//! return, durable writes, a no-clobber publish and hashing copies.
//!
//! Invariants:
//! - A temp file lives in the directory of the file it will become (so the final rename or
//!   link stays on one filesystem) under a hidden, process- and time-unique name.
//! - [`TempFile`] removes its file, and any SQLite side files next to it, unless disarmed: an
//!   error anywhere leaves nothing behind.
//! - [`publish_no_clobber`] never replaces an existing file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use metis_ports::storage::{MaintenanceError, Progress};
use sha2::{Digest, Sha256};

/// The side files a SQLite database may have next to it (harmless to clear for other engines:
/// they never create them).
pub const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// A `Failed` error naming what could not be done to which file.
pub fn io_err(path: &Path, what: &str) -> impl Fn(io::Error) -> MaintenanceError {
    let shown = path.display().to_string();
    let what = what.to_owned();
    move |e| MaintenanceError::Failed(format!("{what} {shown}: {e}"))
}

/// `Refused` unless `path` is an existing regular file (`what` names it in the message).
///
/// # Errors
/// `Refused` when the file is missing or not a file.
pub fn require_file(path: &Path, what: &str) -> Result<(), MaintenanceError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(MaintenanceError::Refused(format!(
            "{what} {} is not a file",
            path.display()
        ))),
        Err(_) => Err(MaintenanceError::Refused(format!(
            "{what} {} does not exist",
            path.display()
        ))),
    }
}

/// `<path><suffix>` (e.g. `-wal`, `.meta`).
#[must_use]
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The directory of `path` (`.` for a bare file name).
#[must_use]
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A hidden temp name in `dir` for a file that will become `target` (`tag` says what for).
#[must_use]
pub fn temp_name(dir: &Path, target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map_or_else(|| "metis".into(), |n| n.to_string_lossy().into_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dir.join(format!(".{name}.{tag}.{}.{nanos}.tmp", std::process::id()))
}

/// Removes a temp file (and its side files) when dropped, unless disarmed.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    #[must_use]
    pub fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep the file: it was published or renamed into place.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            remove_with_side_files(&self.path);
        }
    }
}

/// Best-effort removal of the side files of `path`.
pub fn remove_side_files(path: &Path) {
    for s in SIDE_FILES {
        let _ = fs::remove_file(with_suffix(path, s));
    }
}

/// Best-effort removal of `path` and its side files.
pub fn remove_with_side_files(path: &Path) {
    let _ = fs::remove_file(path);
    remove_side_files(path);
}

/// Make a rename or link in `dir` durable (best effort: not every filesystem allows it).
pub fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Size of `path` in bytes (0 when it does not exist).
#[must_use]
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// Flush `path`'s content to disk and return its size.
///
/// # Errors
/// `Failed` when the file cannot be synced or read.
pub fn sync_file(path: &Path) -> Result<u64, MaintenanceError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path, "cannot sync"))?;
    Ok(fs::metadata(path)
        .map_err(io_err(path, "cannot stat"))?
        .len())
}

/// Lowercase hex SHA-256 of a file's bytes.
///
/// # Errors
/// `Failed` when the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String, MaintenanceError> {
    let mut f = File::open(path).map_err(io_err(path, "cannot read"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path, "cannot read"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Publish `tmp` at `dest` without ever replacing an existing file (a hard link fails when
/// `dest` exists), then drop the temp name.
///
/// # Errors
/// `Refused` when `dest` exists; `Failed` when the file cannot be published.
pub fn publish_no_clobber(tmp: &Path, dest: &Path) -> Result<(), MaintenanceError> {
    let exists = || {
        MaintenanceError::Refused(format!(
            "backup destination {} already exists (backups never overwrite)",
            dest.display()
        ))
    };
    match fs::hard_link(tmp, dest) {
        Ok(()) => {
            let _ = fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(exists()),
        Err(_) => {
            // No hard links on this filesystem: check, then rename (a narrow race remains).
            if fs::symlink_metadata(dest).is_ok() {
                return Err(exists());
            }
            fs::rename(tmp, dest).map_err(io_err(dest, "cannot publish"))
        }
    }
}

/// Write `text` to the new file `path` and sync it.
///
/// # Errors
/// `Failed` when the file exists or cannot be written.
pub fn write_synced(path: &Path, text: &str) -> Result<(), MaintenanceError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path, "cannot create"))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(path, "cannot write"))
}

/// Copy `src` to the new file `dst`, hashing as it goes, and sync `dst`. Returns the bytes
/// copied and their SHA-256; `progress` gets `(copied, size)`.
///
/// # Errors
/// `Failed` on any read or write error (`dst` is left for the caller's guard to remove).
pub fn copy_hashing(
    src: &Path,
    dst: &Path,
    progress: Progress<'_>,
) -> Result<(u64, String), MaintenanceError> {
    let mut input = File::open(src).map_err(io_err(src, "cannot read"))?;
    let total = input.metadata().map_err(io_err(src, "cannot stat"))?.len();
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io_err(dst, "cannot create"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io_err(src, "cannot read"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io_err(dst, "cannot write"))?;
        done += n as u64;
        progress(done, total);
    }
    out.sync_all().map_err(io_err(dst, "cannot sync"))?;
    Ok((done, hex::encode(h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_file_is_removed_with_its_side_files_unless_disarmed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("metis.db");
        let tmp = TempFile::new(temp_name(dir.path(), &target, "backup"));
        std::fs::write(tmp.path(), b"x").unwrap();
        std::fs::write(with_suffix(tmp.path(), "-wal"), b"x").unwrap();
        let (kept, gone) = (
            TempFile::new(dir.path().join("kept")),
            tmp.path().to_path_buf(),
        );
        std::fs::write(kept.path(), b"x").unwrap();
        let kept_path = kept.path().to_path_buf();
        kept.disarm();
        drop(tmp);
        assert!(!gone.exists());
        assert!(!with_suffix(&gone, "-wal").exists());
        assert!(kept_path.exists());
    }

    #[test]
    fn publishing_never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, dest) = (dir.path().join("t"), dir.path().join("d"));
        std::fs::write(&tmp, b"new").unwrap();
        std::fs::write(&dest, b"old").unwrap();
        let e = publish_no_clobber(&tmp, &dest).unwrap_err();
        assert!(matches!(e, MaintenanceError::Refused(m) if m.contains("already exists")));
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        std::fs::remove_file(&dest).unwrap();
        publish_no_clobber(&tmp, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_hashing_copy_gives_the_file_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("s"), dir.path().join("d"));
        std::fs::write(&src, b"abc").unwrap();
        let (n, sha) = copy_hashing(&src, &dst, &|_, _| {}).unwrap();
        assert_eq!(n, 3);
        assert_eq!(sha, sha256_file(&dst).unwrap());
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parent_dir(Path::new("x.db")), PathBuf::from("."));
    }
}
