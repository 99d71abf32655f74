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
}
