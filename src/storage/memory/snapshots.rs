//! The memory engine's snapshot files: `snap/<index as 16 hex digits>.snap`,
//! each a state image (see [`image`](crate::storage::image)) of the whole state
//! machine at one applied index, so restart replays only the WAL after it.
//! A snapshot received from the leader is the same file, moved into place.
//!
//! Files are written to a temporary name, fsynced, renamed, and the
//! directory fsynced, so a crash leaves either the old set of snapshots or
//! the new one, never a half file under a real name.

use std::fs;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use crate::storage::image::{read_into_store, ImageHeader};
use crate::storage::memory::mvcc::MemStore;
use crate::storage::StorageError;

/// How many snapshot files to keep.
const KEEP: usize = 2;

/// The snapshot directory of a data dir.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snap")
}

fn final_path(data_dir: &Path, index: u64) -> PathBuf {
    dir(data_dir).join(format!("{index:016x}.snap"))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |e| StorageError::io(what, e)
}

/// Writes an image durably as the snapshot at `index`, then removes all but
/// the newest few.
pub fn save(data_dir: &Path, index: u64, image: &[u8]) -> Result<PathBuf, StorageError> {
    let (mut f, tmp) = create_tmp(data_dir, index)?;
    f.write_all(image)
        .map_err(io(format!("write {}", tmp.display())))?;
    commit_tmp(data_dir, index, f.into_file(), &tmp)
}

/// Bytes of a snapshot file between two write-backs (see [`Paced`]).
const WRITE_BACK_EVERY: u64 = 4 << 20;

/// A snapshot file whose write-back is paced: every [`WRITE_BACK_EVERY`]
/// bytes it asks the kernel to start writing them to the disk and waits
/// for the stretch before, so at most two stretches are dirty at a time.
/// Left to the page cache, a snapshot of a million keys (hundreds of MiB)
/// went to the disk at once in the final fsync, and the WAL's fdatasyncs on
/// the same disk waited behind it. The final fsync ([`commit_tmp`]) is what
/// makes the file durable; the write-back here is only a pace (an error in
/// it is ignored: that fsync reports it).
#[derive(Debug)]
pub struct Paced {
    file: fs::File,
    /// Written so far.
    written: u64,
    /// Where the stretch being written back starts, and the one before.
    started: u64,
    previous: u64,
}

impl Paced {
    fn new(file: fs::File) -> Paced {
        Paced {
            file,
            written: 0,
            started: 0,
            previous: 0,
        }
    }

    /// The file, written through (a [`std::io::BufWriter`] above flushed).
    pub fn into_file(self) -> fs::File {
        self.file
    }

    fn write_back(&mut self) {
        use super::writeback;
        // Errors are left to the final fsync (see above).
        let _ = writeback::wait(&self.file, self.previous, self.started - self.previous);
        let _ = writeback::start(&self.file, self.started, self.written - self.started);
        self.previous = self.started;
        self.started = self.written;
    }
}

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITE_BACK_EVERY {
            self.write_back();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Opens the temporary file the snapshot at `index` is written to (see
/// [`commit_tmp`]); a crash before the commit leaves only a `.tmp` file,
/// which the next listing removes.
pub fn create_tmp(data_dir: &Path, index: u64) -> Result<(Paced, PathBuf), StorageError> {
    let d = dir(data_dir);
    crate::storage::dirs::create_all(&d).map_err(io(format!("create {}", d.display())))?;
    let tmp = d.join(format!("{index:016x}.snap.tmp"));
    let f = fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    Ok((Paced::new(f), tmp))
}

/// Makes the image written to `file` (at `tmp`, from [`create_tmp`]) the
/// snapshot at `index`: fsync, rename, fsync of the directory; then
/// removes all but the newest few.
pub fn commit_tmp(
    data_dir: &Path,
    index: u64,
    file: fs::File,
    tmp: &Path,
) -> Result<PathBuf, StorageError> {
    let d = dir(data_dir);
    let path = final_path(data_dir, index);
    let write = || -> std::io::Result<()> {
        file.sync_all()?;
        fail::fail_point!("snapshot::save");
        fs::rename(tmp, &path)?;
        fs::File::open(&d)?.sync_all()
    };
    write().map_err(io(format!("write {}", path.display())))?;
    trim(&d);
    Ok(path)
}

/// Moves a received, checked image file into place as the snapshot at
/// `index` (fsynced before and after the rename).
pub fn adopt(data_dir: &Path, index: u64, received: &Path) -> Result<PathBuf, StorageError> {
    let d = dir(data_dir);
    crate::storage::dirs::create_all(&d).map_err(io(format!("create {}", d.display())))?;
    let path = final_path(data_dir, index);
    let moved = || -> std::io::Result<()> {
        fs::File::open(received)?.sync_all()?;
        fs::rename(received, &path)?;
        fs::File::open(&d)?.sync_all()
    };
    moved().map_err(io(format!("install {}", path.display())))?;
    trim(&d);
    Ok(path)
}

fn trim(d: &Path) {
    let Ok(mut names) = list(d) else { return };
    while names.len() > KEEP {
        let old = names.remove(0);
        if let Err(e) = fs::remove_file(&old) {
            tracing::warn!(file = %old.display(), error = %e, "cannot remove old snapshot");
        }
    }
}

fn list(d: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StorageError::io(format!("read {}", d.display()), e)),
    };
    for ent in rd {
        let ent = ent.map_err(io(format!("read {}", d.display())))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".snap") {
            out.push(ent.path());
        } else if name.ends_with(".tmp") {
            // A crash while writing or receiving: never renamed, never counted.
            let _ = fs::remove_file(ent.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the newest snapshot, if any. A damaged newest snapshot is an error:
/// starting from an older one would silently forget acknowledged writes whose
/// WAL segments were already purged.
pub fn load_latest(data_dir: &Path) -> Result<Option<(ImageHeader, MemStore)>, StorageError> {
    let names = list(&dir(data_dir))?;
    let Some(newest) = names.last() else {
        return Ok(None);
    };
    let file = fs::File::open(newest).map_err(io(format!("read {}", newest.display())))?;
    read_into_store(BufReader::new(file), true)
        .map(Some)
        .map_err(|e| StorageError::Snapshot {
            path: newest.clone(),
            why: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::engine::AppliedPoint;
    use crate::storage::image::write_memory_image;
    use raft::eraftpb::ConfState;

    fn sample() -> MemStore {
        let mut s = MemStore::new();
        let mut w = s.write();
        w.put(b"a", b"1".to_vec().into(), 0);
        w.put(b"b", b"2".to_vec().into(), 0);
        w.end();
        s
    }

    fn image(index: u64, store: &MemStore) -> Vec<u8> {
        let point = AppliedPoint {
            index,
            term: 2,
            conf_state: ConfState {
                voters: vec![7],
                ..Default::default()
            },
            ..Default::default()
        };
        let h = point.header(store.current_revision(), store.compact_main_revision());
        write_memory_image(store, &h, Vec::new()).unwrap()
    }

    /// A file written through the paced writer in pieces of odd sizes,
    /// across several write-back stretches, holds every byte in order.
    #[test]
    fn a_paced_file_holds_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let (file, tmp) = create_tmp(dir.path(), 7).unwrap();
        let mut out = std::io::BufWriter::new(file);
        let mut expected = Vec::new();
        let mut n = 0u32;
        while expected.len() < 3 * WRITE_BACK_EVERY as usize + 12_345 {
            let piece: Vec<u8> = (0..(n % 70_001)).map(|i| (i ^ n) as u8).collect();
            out.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
            n += 1;
        }
        let paced = out.into_inner().unwrap();
        assert_eq!(paced.written, expected.len() as u64);
        assert!(paced.previous > 0, "no stretch was written back");
        let path = commit_tmp(dir.path(), 7, paced.into_file(), &tmp).unwrap();
        assert_eq!(fs::read(path).unwrap(), expected);
    }

    #[test]
    fn save_then_load_returns_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = sample();
        for index in [10, 20, 30] {
            save(dir.path(), index, &image(index, &store)).unwrap();
        }
        let (h, loaded) = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!((h.index, h.term), (30, 2));
        assert_eq!(h.conf_state.voters, vec![7]);
        assert_eq!(loaded, store);
        assert_eq!(list(&super::dir(dir.path())).unwrap().len(), KEEP);
    }

    #[test]
    fn a_received_image_is_adopted_as_the_newest_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), 10, &image(10, &MemStore::new())).unwrap();
        let received = dir.path().join("incoming");
        fs::write(&received, image(40, &sample())).unwrap();
        adopt(dir.path(), 40, &received).unwrap();
        assert!(!received.exists());
        let (h, loaded) = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(h.index, 40);
        assert_eq!(loaded, sample());
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let img = image(5, &sample());
        let dir = tempfile::tempdir().unwrap();
        let path = save(dir.path(), 5, &img).unwrap();
        let mut flipped = img.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        fs::write(&path, &flipped).unwrap();
        let err = load_latest(dir.path()).expect_err("refused");
        assert!(err.to_string().contains(".snap"), "{err}");
        fs::write(&path, &img[..img.len() - 3]).unwrap();
        assert!(load_latest(dir.path()).is_err(), "a truncated file too");
    }
}
