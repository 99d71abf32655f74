//! Snapshot files of the memory engine: the whole state machine at one applied
//! index, so restart replays only the WAL after it.
//!
//! File `snap/<index as 16 hex digits>.snap`: magic, index, term, conf state,
//! MVCC image, CRC32C of everything before it. Written to a temporary name,
//! fsynced, renamed, and the directory fsynced, so a crash leaves either the old
//! set of snapshots or the new one, never a half file under a real name.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::ConfState;

use crate::error::StorageError;
use crate::storage::mvcc::MemStore;

const MAGIC: &[u8; 8] = b"MSSNAP01";
/// How many snapshot files to keep.
const KEEP: usize = 2;

/// A decoded snapshot file.
pub struct SnapshotFile {
    /// Applied index the image is at.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Membership at that index.
    pub conf_state: ConfState,
    /// The MVCC image.
    pub store: MemStore,
}

fn snap_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snap")
}

/// Encodes a snapshot image.
pub fn encode(index: u64, term: u64, cs: &ConfState, store: &MemStore) -> Vec<u8> {
    let mut out = Vec::with_capacity(store.approximate_size_bytes() as usize + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    let cs_bytes = cs.write_to_bytes().expect("protobuf encode into Vec");
    out.extend_from_slice(&(cs_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&cs_bytes);
    let mut image = Vec::new();
    store.encode_snapshot(&mut image);
    out.extend_from_slice(&(image.len() as u64).to_le_bytes());
    out.extend_from_slice(&image);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a snapshot image, refusing anything damaged.
pub fn decode(bytes: &[u8]) -> Result<SnapshotFile, String> {
    if bytes.len() < MAGIC.len() + 8 + 8 + 4 + 8 + 4 {
        return Err("file too short".into());
    }
    if &bytes[..8] != MAGIC {
        return Err("not a MetaStore memory-engine snapshot (bad magic)".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != want {
        return Err("checksum mismatch".into());
    }
    let mut at = 8;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = body.get(at..at + n).ok_or("truncated")?;
        at += n;
        Ok(s)
    };
    let u64_of = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
    let index = u64_of(take(8)?);
    let term = u64_of(take(8)?);
    let cs_len = u32::from_le_bytes(take(4)?.try_into().unwrap_or([0; 4])) as usize;
    let conf_state =
        ConfState::parse_from_bytes(take(cs_len)?).map_err(|e| format!("conf state: {e}"))?;
    let image_len = u64_of(take(8)?) as usize;
    let image = take(image_len)?;
    let store = MemStore::decode_snapshot(image).map_err(|e| e.to_string())?;
    Ok(SnapshotFile {
        index,
        term,
        conf_state,
        store,
    })
}

/// Writes a snapshot durably and removes all but the newest few.
pub fn save(data_dir: &Path, index: u64, image: &[u8]) -> Result<PathBuf, StorageError> {
    let dir = snap_dir(data_dir);
    fs::create_dir_all(&dir)
        .map_err(|e| StorageError::io(format!("create {}", dir.display()), e))?;
    let path = dir.join(format!("{index:016x}.snap"));
    let tmp = dir.join(format!("{index:016x}.snap.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(image)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&dir)?.sync_all()
    };
    write().map_err(|e| StorageError::io(format!("write {}", path.display()), e))?;
    let mut names = list(&dir)?;
    while names.len() > KEEP {
        let old = names.remove(0);
        if let Err(e) = fs::remove_file(&old) {
            tracing::warn!(file = %old.display(), error = %e, "cannot remove old snapshot");
        }
    }
    Ok(path)
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StorageError::io(format!("read {}", dir.display()), e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| StorageError::io(format!("read {}", dir.display()), e))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".snap") {
            out.push(ent.path());
        } else if name.ends_with(".snap.tmp") {
            // A crash while writing: the rename never happened, so it never counted.
            let _ = fs::remove_file(ent.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the newest snapshot, if any. A damaged newest snapshot is an error:
/// starting from an older one would silently forget acknowledged writes whose
/// WAL segments were already purged.
pub fn load_latest(data_dir: &Path) -> Result<Option<SnapshotFile>, StorageError> {
    let names = list(&snap_dir(data_dir))?;
    let Some(newest) = names.last() else {
        return Ok(None);
    };
    let bytes =
        fs::read(newest).map_err(|e| StorageError::io(format!("read {}", newest.display()), e))?;
    decode(&bytes)
        .map(Some)
        .map_err(|why| StorageError::Snapshot {
            path: newest.clone(),
            why,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MemStore {
        let mut s = MemStore::new();
        let mut w = s.write();
        w.put(b"a", b"1".to_vec(), 0);
        w.put(b"b", b"2".to_vec(), 0);
        w.end();
        s
    }

    #[test]
    fn save_then_load_returns_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ConfState {
            voters: vec![7],
            ..Default::default()
        };
        let store = sample();
        for index in [10, 20, 30] {
            save(dir.path(), index, &encode(index, 2, &cs, &store)).unwrap();
        }
        let snap = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!((snap.index, snap.term), (30, 2));
        assert_eq!(snap.conf_state.voters, vec![7]);
        assert_eq!(snap.store.current_revision(), store.current_revision());
        assert_eq!(list(&snap_dir(dir.path())).unwrap().len(), KEEP);
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let image = encode(5, 1, &ConfState::default(), &sample());
        for cut in [0, 8, image.len() / 2, image.len() - 1] {
            assert!(decode(&image[..cut]).is_err());
        }
        let mut flipped = image.clone();
        flipped[30] ^= 0x40;
        assert!(decode(&flipped).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = save(dir.path(), 5, &image).unwrap();
        fs::write(&path, &flipped).unwrap();
        let err = load_latest(dir.path()).err().expect("refused");
        assert!(err.to_string().contains(".snap"), "{err}");
    }
}
