//! What the API layer may do with images of the applied state without
//! knowing their format: stream one (Maintenance.Snapshot), hash one
//! (Hash, HashKV, the corruption check), check one received from the
//! leader before acknowledging it.

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

/// Reads a received image file whole (checksum and every record): blocking.
pub fn check_received(path: &Path) -> Result<(), String> {
    let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| e.to_string())?);
    let (_, mut r) = image::ImageReader::new(reader).map_err(|e| e.to_string())?;
    while r.next_raw().map_err(|e| e.to_string())?.is_some() {}
    Ok(())
}
