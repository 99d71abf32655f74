//! What the API layer may do with images of the applied state without
//! knowing their format: turn one into etcd's data file (Maintenance.Snapshot
//! streams that), hash one (Hash, HashKV, the corruption check), check one
//! received from the leader before acknowledging it.

use std::path::Path;

use crate::error::ApiError;
use crate::storage::image;

pub use crate::storage::image::ImageJob;

/// The hashes of the applied state at one revision, with where the state
/// stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateHash {
    /// The state's current revision.
    pub current_rev: i64,
    /// Its compacted revision (-1 before the first compaction).
    pub compact_rev: i64,
    /// etcd's HashKV: every stored version up to the asked revision.
    pub kv: u32,
    /// etcd's Hash: every stored version.
    pub all: u32,
}

/// Hashes the image `job` produces up to `rev` (0: all); on a blocking
/// thread. Errors as etcd's HashKV for a revision above the current one or
/// below the compacted one.
pub async fn hash(job: ImageJob, rev: i64) -> Result<StateHash, ApiError> {
    let (h, hashes) = tokio::task::spawn_blocking(move || {
        let (source, _) = job.open()?;
        image::hash_image(std::io::BufReader::new(source), rev).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(ApiError::Internal)?;
    if rev > h.current_rev {
        return Err(ApiError::FutureRevision);
    }
    if rev > 0 && rev < h.compact_rev {
        return Err(ApiError::Compacted);
    }
    Ok(StateHash {
        current_rev: h.current_rev,
        compact_rev: h.compact_rev,
        kv: hashes.kv,
        all: hashes.all,
    })
}

/// Writes the image `job` produces as etcd's data file (a bbolt database,
/// `storage::bbolt::write`) to an unlinked temp file in `tmp_dir`: blocking.
/// Returns the file, at its start, and its length. The file has no name
/// once created, so it is gone when the returned handle is dropped, however
/// the stream that reads it ends.
pub fn etcd_data_file(job: ImageJob, tmp_dir: &Path) -> Result<(std::fs::File, u64), String> {
    use std::io::{Seek, SeekFrom};
    let (source, _) = job.open()?;
    // One conversion per thread at a time: the thread names the file.
    let thread = format!("{:?}", std::thread::current().id());
    let name: String = thread.chars().filter(char::is_ascii_digit).collect();
    let file = image::unlinked_temp(tmp_dir, &format!("snapshot-{name}.db.tmp"))
        .map_err(|e| e.to_string())?;
    let (out, _) = crate::storage::bbolt::write::write_bbolt(
        std::io::BufReader::new(source),
        std::io::BufWriter::new(file),
    )
    .map_err(|e| e.to_string())?;
    let mut file = out.into_inner().map_err(|e| e.error().to_string())?;
    let len = file.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok((file, len))
}

/// Reads a received image file whole (checksum and every record): blocking.
pub fn check_received(path: &Path) -> Result<(), String> {
    let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| e.to_string())?);
    let (_, mut r) = image::ImageReader::new(reader).map_err(|e| e.to_string())?;
    while r.next_raw().map_err(|e| e.to_string())?.is_some() {}
    Ok(())
}
