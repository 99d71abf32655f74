//! What the API layer may do with images of the applied state without
//! knowing their format: turn one into etcd's data file (Maintenance.Snapshot
//! streams that), hash one (Hash, HashKV, the corruption check), check one
//! received from the leader before acknowledging it.

use std::path::Path;

use crate::error::ApiError;
use crate::storage::image;

pub use crate::storage::engine::ImageIntake;
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

/// Writes the chunks of an image received from the leader to the file at
/// `path` as they come, and hands them to `intake` at the same time (which
/// checks the checksum and every record, and may prepare the install);
/// then fsyncs the file: blocking. The check is done when the last chunk
/// is in, rather than a second read of the whole file afterwards. Stops at
/// the first error (the caller then stops receiving and removes the file).
pub fn write_and_check(
    chunks: impl Iterator<Item = Vec<u8>>,
    path: &Path,
    file: std::fs::File,
    intake: &dyn ImageIntake,
) -> Result<(), String> {
    let mut tee = Tee {
        chunks,
        chunk: Vec::new(),
        at: 0,
        out: std::io::BufWriter::with_capacity(1 << 20, file),
    };
    intake.take_in(path, &mut tee).map_err(|e| e.to_string())?;
    // Whatever follows the image's end is kept as received (a reader of
    // the file stops at the end as this one did); the current chunk was
    // written whole when it was taken.
    use std::io::Write as _;
    for chunk in tee.chunks.by_ref() {
        tee.out.write_all(&chunk).map_err(|e| e.to_string())?;
    }
    let file = tee.out.into_inner().map_err(|e| e.error().to_string())?;
    file.sync_all().map_err(|e| e.to_string())
}

/// Reads chunks in turn, each written to `out` as it is taken.
struct Tee<I> {
    chunks: I,
    chunk: Vec<u8>,
    at: usize,
    out: std::io::BufWriter<std::fs::File>,
}

impl<I: Iterator<Item = Vec<u8>>> std::io::Read for Tee<I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Write as _;
        while self.at == self.chunk.len() {
            match self.chunks.next() {
                Some(next) => {
                    self.out.write_all(&next)?;
                    self.chunk = next;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::engine::AppliedPoint;
    use crate::storage::memory::mvcc::MemStore;
    use crate::storage::StorageError;

    /// What the memory engine's intake does: the check alone.
    struct Check;

    impl ImageIntake for Check {
        fn take_in(&self, _: &Path, input: &mut dyn std::io::Read) -> Result<(), StorageError> {
            image::check(input)
        }
    }

    fn an_image() -> Vec<u8> {
        let mut s = MemStore::new();
        for i in 0..300u32 {
            let mut t = s.write();
            t.put_blind(format!("k{i}").as_bytes(), vec![i as u8; 100].into(), 0);
            t.end();
        }
        let h = AppliedPoint::default().header(s.current_revision(), s.compact_main_revision());
        image::write_memory_image(&s, &h, Vec::new()).unwrap()
    }

    fn received(image: &[u8], chunk: usize) -> (Result<(), String>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.image");
        let file = std::fs::File::create(&path).unwrap();
        let chunks: Vec<Vec<u8>> = image.chunks(chunk).map(<[u8]>::to_vec).collect();
        let result = write_and_check(chunks.into_iter(), &path, file, &Check);
        (result, std::fs::read(&path).unwrap())
    }

    /// Whatever the chunking, a whole image is written as received and
    /// passes; a changed byte or a cut one fails the check.
    #[test]
    fn received_images_are_written_and_checked_as_they_come() {
        let image = an_image();
        for chunk in [1, 7, 4096, image.len()] {
            let (result, written) = received(&image, chunk);
            assert_eq!(result, Ok(()), "chunks of {chunk}");
            assert_eq!(written, image, "chunks of {chunk}");
        }
        // Bytes after the image's end are kept once, as received.
        let mut trailing = image.clone();
        trailing.extend_from_slice(b"tail");
        let (result, written) = received(&trailing, 7);
        assert_eq!(result, Ok(()));
        assert_eq!(written, trailing);
        let mut flipped = image.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        assert!(received(&flipped, 4096).0.is_err(), "a changed byte");
        assert!(
            received(&image[..image.len() - 3], 4096).0.is_err(),
            "a cut image"
        );
    }
}
