//! Directories that survive a power cut. A directory's name is an entry in
//! its parent, and POSIX makes an entry durable only when the parent is
//! fsynced: a data dir, snapshot dir or database dir that was created but
//! whose parent never was fsynced can vanish with everything in it, however
//! carefully each file inside was synced.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Creates `path` and any missing parents, each made durable (its parent
/// fsynced). A directory already there still gets its parent fsynced: a
/// killed process may have made it without ever syncing it.
pub fn create_all(path: &Path) -> io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !path.is_dir() {
        if path.parent().is_some_and(|p| !p.as_os_str().is_empty()) {
            create_all(parent)?;
        }
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    sync(parent)
}

/// fsync of a directory: its entries (creations, renames, removals) durable.
pub fn sync(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes an unprivileged process may still write on the filesystem that
/// holds `path` (statvfs: available blocks times the fragment size).
pub fn free_space(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is NUL-terminated and outlives the call; `st` is a
    // writable statvfs that the call fills when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct (zeroed anyway).
    let st = unsafe { st.assume_init() };
    // fsblkcnt_t and c_ulong are u64 here but not on every target.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, size) = (st.f_bavail as u64, st.f_frsize as u64);
    Ok(blocks.saturating_mul(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_parents_and_accepts_an_existing_dir() {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let deep = tmp.path().join("a/b/c");
        create_all(&deep).expect("create");
        assert!(deep.is_dir());
        create_all(&deep).expect("already there");
        let file = tmp.path().join("f");
        fs::write(&file, b"x").expect("write");
        assert!(create_all(&file).is_err(), "a file is not a directory");
    }

    #[test]
    fn free_space_is_reported_and_a_missing_path_is_an_error() {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        assert!(free_space(tmp.path()).expect("statvfs") > 0);
        assert!(free_space(&tmp.path().join("missing")).is_err());
    }
}
