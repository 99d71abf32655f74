//! Write-ahead log: durable, ordered storage of opaque records.
//!
//! The WAL owns one directory of segment files and nothing else. It does not
//! know Raft: callers hand it `(kind, payload)` records (protobuf-encoded
//! entries, hard state, snapshot markers...) plus an `index_hint`, the highest
//! Raft index inside the record, used only to decide which segments may be
//! purged. `open` replays every record in the order it was appended.
//!
//! # On-disk format
//! - Segments are named `{seq:016}.wal` (e.g. `0000000000000003.wal`); sequence
//!   numbers are contiguous, purging only removes the oldest ones, and a gap is
//!   an error. Each segment begins with the 8-byte magic `b"MSWAL\0\0"` + format
//!   version byte, so a foreign or future file is refused rather than misread.
//! - Records are framed as `len: u32 | crc32c: u32 | index_hint: u64 | kind | payload`
//!   (little-endian; `len` counts kind + payload and is capped at 256 MiB; the
//!   crc covers hint, kind and payload). See `codec.rs` for the details.
//! - A new segment is built as `*.wal.tmp`, zero-filled to the segment size
//!   (so an fdatasync after an append flushes data blocks only, never the
//!   inode), fsynced, renamed into place and the directory fsynced: it either
//!   exists with all its header records or not at all. The zeros of the next
//!   segment are written and fsynced ahead, paced, on a thread of their own
//!   (the "spare", started as soon as a segment becomes the active one): a
//!   rotation then writes only the magic and header records over the
//!   spare's first bytes, fdatasyncs them, renames and fsyncs the
//!   directory. (Writing and syncing 64 MiB of zeros at the rotation itself
//!   stalled every append 119-142 ms on three members under load, all
//!   members at once since they rotate at the same log size.) Leftover
//!   `.tmp` files are deleted on open; a spare still being made when the
//!   WAL is dropped is abandoned and deleted. At rotation the old segment is
//!   cut back to its last record, so only the last segment ever ends in
//!   zeros; there, zeros after the last record are simply the end of the
//!   log.
//!
//! # Recovery: torn tail versus corruption
//! Only the last segment can have been mid-write at a crash. There, a record
//! whose header or body runs past end-of-file, whose crc fails while its
//! declared extent reaches end-of-file, or which is followed by nothing but
//! zero bytes, is a torn write: the file is truncated to the last good record,
//! fsynced, and a warning names file and offset. So is a bad record that shows
//! a sector lost at a power cut while a later one of the same unsynced batch
//! reached the disk (page write-back is in any order until fsync returns): it
//! starts in a sector that is zero from it to the sector's end, or overlaps a
//! whole zero sector (see `segment::lost_sector`); nothing from such a hole on
//! was acknowledged, because fsync makes every earlier byte durable first.
//! Any other bad record (one with
//! intact data after it, or anywhere in an older segment) means bytes that
//! were once durably written have changed; `open` fails with
//! [`WalError::Corrupt`] naming file and offset instead of silently dropping
//! acknowledged data. An empty or partially-written magic in the last segment
//! (crash during creation) is rewritten. A damaged *length* field in the last
//! segment that points past end-of-file is indistinguishable from a torn write
//! under this framing and is truncated like one.
//!
//! # Group commit
//! [`Wal::append`] only encodes into an in-memory buffer; [`Wal::sync`] writes
//! the whole buffer with one `write` and makes it durable with one
//! `fdatasync`. Callers batch many appends per sync. The buffer is reused, so
//! steady-state appends do not allocate. If a write or fdatasync fails the WAL
//! refuses further writes ([`WalError::Poisoned`]): after a failed fsync the
//! kernel may have dropped the dirty pages, so retrying could report success
//! for data that is gone. Reopening re-establishes the truth from disk.
//!
//! Records appended but not synced when the [`Wal`] is dropped are lost; a
//! crash can lose them too. Only what a successful `sync` or `rotate` covered
//! is durable. The directory is `flock`ed while a [`Wal`] is open.

mod codec;
mod segment;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use self::segment::{io_err, Dir, Spare, SpareWish};

/// Default [`WalOptions::segment_size`]: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

/// Largest payload a single record may carry (256 MiB minus the kind byte).
pub const MAX_PAYLOAD_LEN: usize = codec::MAX_BODY_LEN as usize - 1;

/// A `sync` buffer grown beyond this by a huge batch is shrunk back to it
/// afterwards, so one burst does not pin that much memory forever.
const MAX_RETAINED_BUFFER: usize = 4 << 20;

/// Tuning for a [`Wal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// [`Wal::should_rotate`] turns true once the current segment exceeds
    /// this many bytes.
    pub segment_size: u64,
    /// Zero-fill each new segment to `segment_size` up front, so that an
    /// fdatasync after an append never has to write the inode.
    pub preallocate: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
            preallocate: true,
        }
    }
}

impl WalOptions {
    fn prealloc_len(&self) -> u64 {
        if self.preallocate {
            self.segment_size
        } else {
            0
        }
    }
}

/// One replayed record, exactly as passed to [`Wal::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Caller-defined record type.
    pub kind: u8,
    /// Caller-encoded body.
    pub payload: Vec<u8>,
}

/// Errors from the WAL. Every variant's message starts with `wal:` and names
/// the file or directory involved.
#[derive(thiserror::Error, Debug)]
pub enum WalError {
    /// An I/O operation failed.
    #[error("wal: {op} {}: {source}", .path.display())]
    Io {
        /// What was being done ("write", "fdatasync", "rename", ...).
        op: &'static str,
        /// File or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A record that must have been fully written is damaged.
    #[error("wal: corrupt record in {} at offset {offset}: {reason}", .file.display())]
    Corrupt {
        /// Segment file.
        file: PathBuf,
        /// Byte offset of the bad record from the start of the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A file named like a segment does not start with the WAL magic.
    #[error("wal: {} is not a MetaStore WAL segment (bad magic)", .file.display())]
    NotASegment {
        /// The offending file.
        file: PathBuf,
    },
    /// A segment written by an incompatible format version.
    #[error(
        "wal: {} has format version {version}, this build reads only version {supported}",
        .file.display()
    )]
    UnsupportedVersion {
        /// The segment file.
        file: PathBuf,
        /// Version found in its magic.
        version: u8,
        /// Version this code understands.
        supported: u8,
    },
    /// Segment sequence numbers are not contiguous, so records are missing.
    #[error(
        "wal: segment {} is missing from {} (the segments on either side exist)",
        segment::file_name(*.missing),
        .dir.display()
    )]
    MissingSegment {
        /// WAL directory.
        dir: PathBuf,
        /// Sequence number of the first absent segment.
        missing: u64,
    },
    /// Another [`Wal`] (in this or another process) has the directory open.
    #[error("wal: {} is locked by another open WAL", .dir.display())]
    Locked {
        /// WAL directory.
        dir: PathBuf,
    },
    /// A payload over [`MAX_PAYLOAD_LEN`] was appended; the whole pending batch
    /// was discarded and nothing of it was written.
    #[error("wal: record payload of {len} bytes exceeds the maximum of {max}; batch discarded")]
    RecordTooLarge {
        /// Size of the offending payload.
        len: usize,
        /// [`MAX_PAYLOAD_LEN`].
        max: usize,
    },
    /// An earlier write or fdatasync failed; the on-disk state is unknown until
    /// the WAL is reopened.
    #[error("wal: an earlier write or fdatasync failed; reopen the WAL to recover")]
    Poisoned,
}

/// A segment no longer written to, kept for purge decisions.
#[derive(Debug)]
struct ClosedSegment {
    seq: u64,
    max_hint: u64,
}

/// The segment receiving appends.
#[derive(Debug)]
struct ActiveSegment {
    seq: u64,
    file: File,
    /// Durable length (what previous syncs wrote).
    len: u64,
    /// Length when this segment began receiving appends; rotating a segment
    /// that holds nothing past this would only produce another such segment.
    header_end: u64,
    max_hint: u64,
}

/// An open write-ahead log; see the module docs for format and guarantees.
pub struct Wal {
    dir: Dir,
    opts: WalOptions,
    /// Oldest first.
    closed: VecDeque<ClosedSegment>,
    active: ActiveSegment,
    /// Frames appended since the last sync; reused across syncs.
    buf: Vec<u8>,
    pending_max_hint: u64,
    /// Length of the first too-large payload of the pending batch, if any.
    oversized: Option<usize>,
    poisoned: bool,
    /// The next segment's spare, being made (see the module docs).
    spare: Option<SpareJob>,
}

/// A spare being made on its thread, and what the WAL asks of it.
#[derive(Debug)]
struct SpareJob {
    handle: JoinHandle<Result<Spare, WalError>>,
    wish: Arc<SpareWish>,
}

impl SpareJob {
    /// Waits for the spare, cutting its pacing short: a rotation waits for
    /// at most the writes left, never for the pauses.
    fn finish(self) -> std::thread::Result<Result<Spare, WalError>> {
        self.wish.hurry();
        self.handle.thread().unpark();
        self.handle.join()
    }

    /// Stops the spare and waits until its file is gone: one finished
    /// meanwhile is deleted here, one still being written deletes itself.
    fn abandon(self) {
        self.wish.abandon();
        self.handle.thread().unpark();
        if let Ok(Ok(spare)) = self.handle.join() {
            let _ = fs::remove_file(&spare.tmp);
        }
    }
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir.path())
            .field("segments", &self.segment_count())
            .field("active_seq", &self.active.seq)
            .field("active_len", &self.active.len)
            .field("pending_bytes", &self.buf.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Wal {
    /// Opens (creating the dir if missing) and replays every segment in order.
    /// Returns the WAL positioned for appending and all valid records in order.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Vec<Record>), WalError> {
        let dir = Dir::open(dir)?;
        let seqs = dir.list_segments()?;
        if let Some(pair) = seqs.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(WalError::MissingSegment {
                dir: dir.path().to_path_buf(),
                missing: pair[0] + 1,
            });
        }

        let mut records = Vec::new();
        let Some((&last_seq, older)) = seqs.split_last() else {
            let (file, len) = dir.install(dir.prepare_segment(1, &[], opts.prealloc_len())?)?;
            let active = ActiveSegment {
                seq: 1,
                file,
                len,
                header_end: len,
                max_hint: 0,
            };
            return Ok((Wal::new(dir, opts, VecDeque::new(), active), records));
        };

        // One read buffer for all segments: replay cost is the records, not
        // a fresh allocation per file.
        let mut data = Vec::new();
        let mut closed = VecDeque::with_capacity(older.len());
        for &seq in older {
            let path = segment::path(dir.path(), seq);
            segment::read_all(&path, &mut data, false)?;
            segment::check_header(&path, &data, false)?;
            let scan = segment::scan(&path, &data, false, &mut records)?;
            closed.push_back(ClosedSegment {
                seq,
                max_hint: scan.max_hint,
            });
        }
        let active = open_last(&dir, last_seq, &mut data, &mut records)?;
        tracing::debug!(
            dir = %dir.path().display(),
            segments = closed.len() + 1,
            records = records.len(),
            "wal: opened"
        );
        Ok((Wal::new(dir, opts, closed, active), records))
    }

    fn new(
        dir: Dir,
        opts: WalOptions,
        closed: VecDeque<ClosedSegment>,
        active: ActiveSegment,
    ) -> Wal {
        let mut wal = Wal {
            dir,
            opts,
            closed,
            active,
            buf: Vec::new(),
            pending_max_hint: 0,
            oversized: None,
            poisoned: false,
            spare: None,
        };
        wal.start_spare();
        wal
    }

    /// Starts making the spare of the segment after the active one, when
    /// segments are preallocated (without, a new segment is only its header:
    /// nothing to make ahead).
    fn start_spare(&mut self) {
        let len = self.opts.prealloc_len();
        let seq = self.active.seq + 1;
        if len == 0 || seq > segment::MAX_SEQ {
            return;
        }
        let dir = self.dir.path().to_path_buf();
        let wish = Arc::new(SpareWish::default());
        let theirs = Arc::clone(&wish);
        let spawned = std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || segment::prepare_spare(&dir, seq, len, segment::SPARE_STEP, &theirs));
        match spawned {
            Ok(handle) => self.spare = Some(SpareJob { handle, wish }),
            // The rotation makes the segment itself, as without a spare.
            Err(e) => tracing::warn!(error = %e, "wal: cannot start the spare's thread"),
        }
    }

    /// The spare for segment `seq`, once made (if it is still being written,
    /// waiting for the rest of its writes, unpaced: less than making one
    /// from nothing). `None` if there is none or it failed; the rotation
    /// then makes the segment itself.
    fn take_spare(&mut self, seq: u64) -> Option<Spare> {
        let made = self.spare.take()?.finish();
        match made {
            Ok(Ok(spare)) if spare.seq == seq => Some(spare),
            // Only rotations move the active segment, so a spare is always
            // for the next one; a wrong one is never installed regardless.
            Ok(Ok(spare)) => {
                let _ = fs::remove_file(&spare.tmp);
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "wal: the next segment's spare failed; making it at the rotation");
                None
            }
            Err(_) => {
                tracing::warn!(
                    "wal: the spare's thread panicked; making the segment at the rotation"
                );
                let _ = fs::remove_file(segment::tmp_path(self.dir.path(), seq));
                None
            }
        }
    }

    /// Buffers a record (no I/O yet).
    ///
    /// A payload over [`MAX_PAYLOAD_LEN`] is not buffered; the next
    /// [`sync`](Wal::sync) then fails with [`WalError::RecordTooLarge`] and
    /// discards the whole batch, so a batch is never partially persisted.
    pub fn append(&mut self, kind: u8, payload: &[u8], index_hint: u64) {
        if !codec::fits(payload.len()) {
            self.oversized.get_or_insert(payload.len());
            return;
        }
        codec::encode(&mut self.buf, kind, payload, index_hint);
        self.pending_max_hint = self.pending_max_hint.max(index_hint);
    }

    /// Writes everything buffered with one write call (repeated only if the
    /// kernel accepts part of it) and one fdatasync; returns bytes written
    /// (0, with no I/O, when nothing is buffered). Group commit: append many
    /// records, then sync once.
    pub fn sync(&mut self) -> Result<u64, WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        if let Some(len) = self.oversized.take() {
            self.clear_pending();
            return Err(WalError::RecordTooLarge {
                len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        if self.buf.is_empty() {
            return Ok(0);
        }
        let written = self.buf.len() as u64;
        let result = self
            .active
            .file
            .write_all(&self.buf)
            .map_err(|e| ("write", e))
            .and_then(|()| self.active.file.sync_data().map_err(|e| ("fdatasync", e)));
        if let Err((op, source)) = result {
            self.poisoned = true;
            return Err(WalError::Io {
                op,
                path: self.active_path(),
                source,
            });
        }
        self.active.len += written;
        self.active.max_hint = self.active.max_hint.max(self.pending_max_hint);
        self.clear_pending();
        Ok(written)
    }

    /// True when the current segment (including records buffered for it) has
    /// grown past `segment_size`. Never true for a segment holding only the
    /// header records it was created with, so a header larger than
    /// `segment_size` cannot cause endless rotation.
    pub fn should_rotate(&self) -> bool {
        let size = self.active.len + self.buf.len() as u64;
        size > self.opts.segment_size && size > self.active.header_end
    }

    /// Closes the current segment and starts a new one whose first records are
    /// `header` (written with index_hint 0); synced, and the directory fsynced.
    ///
    /// Records still buffered are synced into the old segment first, so replay
    /// order equals append order. If creating the new segment fails before it
    /// is renamed into place, the WAL keeps appending to the old segment.
    pub fn rotate(&mut self, header: &[(u8, Vec<u8>)]) -> Result<(), WalError> {
        self.sync()?;
        if let Some((_, payload)) = header.iter().find(|(_, p)| !codec::fits(p.len())) {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        let Some(seq) = Some(self.active.seq + 1).filter(|&s| s <= segment::MAX_SEQ) else {
            return Err(WalError::Io {
                op: "rotate",
                path: self.active_path(),
                source: io::Error::other("segment sequence number exhausted"),
            });
        };
        // An older segment must end at its last record: only the last one may
        // carry preallocated zeros (anywhere else they would read as damage).
        let trimmed = self
            .active
            .file
            .set_len(self.active.len)
            .and_then(|()| self.active.file.sync_all());
        if let Err(source) = trimmed {
            self.poisoned = true;
            return Err(WalError::Io {
                op: "truncate",
                path: self.active_path(),
                source,
            });
        }
        for (kind, payload) in header {
            codec::encode(&mut self.buf, *kind, payload, 0);
        }
        let prepared = match self.take_spare(seq) {
            Some(spare) => segment::fill_spare(spare, &self.buf),
            None => self
                .dir
                .prepare_segment(seq, &self.buf, self.opts.prealloc_len()),
        };
        self.clear_pending();
        fail::fail_point!("wal::rotate");
        let installed = self.dir.install(prepared?);
        let (file, len) = installed.inspect_err(|_| {
            // Whether the rename or its directory fsync took effect is unknown;
            // appending to the old segment could put records before a header
            // that replays after them.
            self.poisoned = true;
        })?;
        let old = std::mem::replace(
            &mut self.active,
            ActiveSegment {
                seq,
                file,
                len,
                header_end: len,
                max_hint: 0,
            },
        );
        self.closed.push_back(ClosedSegment {
            seq: old.seq,
            max_hint: old.max_hint,
        });
        tracing::debug!(dir = %self.dir.path().display(), seq, "wal: rotated");
        self.start_spare();
        Ok(())
    }

    /// Deletes whole segments (never the current one, only a contiguous prefix
    /// of the oldest ones) whose every record has index_hint <= upto. Returns
    /// how many were removed.
    pub fn purge(&mut self, upto: u64) -> Result<usize, WalError> {
        let mut removed = 0;
        let mut failure = None;
        while let Some(seg) = self.closed.front() {
            if seg.max_hint > upto {
                break;
            }
            let path = segment::path(self.dir.path(), seg.seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                // Already gone: the goal is reached either way.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    failure = Some(WalError::Io {
                        op: "remove",
                        path,
                        source: e,
                    });
                    break;
                }
            }
            self.closed.pop_front();
            removed += 1;
        }
        if removed > 0 {
            self.dir.sync()?;
            tracing::debug!(dir = %self.dir.path().display(), removed, upto, "wal: purged");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Number of segment files, including the current one.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }

    fn active_path(&self) -> PathBuf {
        segment::path(self.dir.path(), self.active.seq)
    }

    fn clear_pending(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > MAX_RETAINED_BUFFER {
            self.buf.shrink_to(MAX_RETAINED_BUFFER);
        }
        self.pending_max_hint = 0;
        self.oversized = None;
    }
}

impl Drop for Wal {
    /// Abandons a spare being made (no use writing the rest of it) and
    /// waits until its file is gone: the directory is then only segments
    /// when the lock is released.
    fn drop(&mut self) {
        if let Some(job) = self.spare.take() {
            job.abandon();
        }
    }
}

/// Replays the last segment, repairing a torn tail or an interrupted creation,
/// and opens it for appending.
fn open_last(
    dir: &Dir,
    seq: u64,
    data: &mut Vec<u8>,
    records: &mut Vec<Record>,
) -> Result<ActiveSegment, WalError> {
    let path = segment::path(dir.path(), seq);
    segment::read_all(&path, data, true)?;
    let mut file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    let (len, max_hint) = if segment::check_header(&path, data, true)? {
        let scan = segment::scan(&path, data, true, records)?;
        if let Some(reason) = &scan.torn {
            tracing::warn!(
                file = %path.display(),
                offset = scan.valid_len,
                dropped = (data.len() as u64).saturating_sub(scan.valid_len),
                "wal: torn write in {} at offset {}: {}; truncating {} trailing bytes",
                path.display(),
                scan.valid_len,
                reason,
                (data.len() as u64).saturating_sub(scan.valid_len)
            );
            file.set_len(scan.valid_len)
                .map_err(io_err("truncate", &path))?;
            file.sync_all().map_err(io_err("fsync", &path))?;
        }
        (scan.valid_len, scan.max_hint)
    } else {
        tracing::warn!(
            file = %path.display(),
            len = data.len(),
            "wal: segment {} was cut short during creation ({} bytes); rewriting its header",
            path.display(),
            data.len()
        );
        file.set_len(0).map_err(io_err("truncate", &path))?;
        file.write_all(&codec::MAGIC)
            .map_err(io_err("write", &path))?;
        file.sync_all().map_err(io_err("fsync", &path))?;
        (codec::MAGIC_LEN as u64, 0)
    };
    file.seek(SeekFrom::Start(len))
        .map_err(io_err("seek", &path))?;
    Ok(ActiveSegment {
        seq,
        file,
        len,
        // The header size of a reopened segment is unknown; assume none so an
        // oversized segment found at startup is rotated promptly.
        header_end: codec::MAGIC_LEN as u64,
        max_hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    const HDR: u8 = 0xF0;

    /// Without preallocation file lengths equal the data written, which the
    /// torn-tail tests below reason about; preallocation has its own tests.
    fn opts(segment_size: u64) -> WalOptions {
        WalOptions {
            segment_size,
            preallocate: false,
        }
    }

    fn rec(kind: u8, payload: &[u8]) -> Record {
        Record {
            kind,
            payload: payload.to_vec(),
        }
    }

    fn open(dir: &Path) -> (Wal, Vec<Record>) {
        Wal::open(dir, opts(1 << 20)).unwrap()
    }

    fn seg_path(dir: &Path, seq: u64) -> PathBuf {
        segment::path(dir, seq)
    }

    fn segment_files(dir: &Path) -> Vec<u64> {
        let mut v: Vec<u64> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| segment::parse_name(e.unwrap().file_name().to_str()?))
            .collect();
        v.sort_unstable();
        v
    }

    /// Deterministic pseudo-random payloads without an extra dependency.
    fn payload(i: usize) -> Vec<u8> {
        let len = (i * 7919) % 300;
        (0..len).map(|j| (i * 31 + j * 17) as u8).collect()
    }

    fn corrupt_err(err: WalError) -> (PathBuf, u64, String) {
        let msg = err.to_string();
        match err {
            WalError::Corrupt { file, offset, .. } => (file, offset, msg),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn empty_dir_opens_with_no_records() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("nested/wal");
        let (wal, recs) = Wal::open(&dir, opts(1 << 20)).unwrap();
        assert!(recs.is_empty());
        assert_eq!(wal.segment_count(), 1);
        assert_eq!(segment_files(&dir), vec![1]);
        assert_eq!(fs::read(seg_path(&dir, 1)).unwrap(), codec::MAGIC);
        drop(wal);
        let (_, recs) = open(&dir);
        assert!(recs.is_empty());
    }

    #[test]
    fn roundtrip_across_rotations_and_reopen() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, recs) = Wal::open(dir, opts(2048)).unwrap();
        assert!(recs.is_empty());
        let mut expected = Vec::new();
        for i in 0..600 {
            let p = payload(i);
            wal.append((i % 5) as u8, &p, i as u64);
            expected.push(rec((i % 5) as u8, &p));
            if i % 7 == 6 {
                wal.sync().unwrap();
                if wal.should_rotate() {
                    let hdr = vec![(HDR, format!("hard state {i}").into_bytes())];
                    wal.rotate(&hdr).unwrap();
                    expected.push(rec(HDR, &hdr[0].1));
                }
            }
        }
        wal.sync().unwrap();
        let segments = wal.segment_count();
        assert!(segments > 5, "only {segments} segments");
        assert_eq!(segment_files(dir).len(), segments);
        drop(wal);

        let (wal, recs) = Wal::open(dir, opts(2048)).unwrap();
        assert_eq!(recs, expected);
        assert_eq!(wal.segment_count(), segments);
        drop(wal);
        // Reopening changes nothing on disk.
        let (_, recs) = Wal::open(dir, opts(2048)).unwrap();
        assert_eq!(recs, expected);
    }

    #[test]
    fn group_commit_writes_batch_once_and_reuses_buffer() {
        let tmp = TempDir::new().unwrap();
        let (mut wal, _) = open(tmp.path());
        let mut total = 0;
        for i in 0..100 {
            wal.append(1, &payload(i), 0);
            total += codec::frame_len(payload(i).len()) as u64;
        }
        let cap = wal.buf.capacity();
        assert_eq!(wal.sync().unwrap(), total);
        assert_eq!(wal.sync().unwrap(), 0);
        assert_eq!(wal.buf.capacity(), cap);
        assert_eq!(
            fs::metadata(seg_path(tmp.path(), 1)).unwrap().len(),
            codec::MAGIC_LEN as u64 + total
        );
    }

    #[test]
    fn unsynced_records_are_not_persisted() {
        let tmp = TempDir::new().unwrap();
        let (mut wal, _) = open(tmp.path());
        wal.append(1, b"durable", 1);
        wal.sync().unwrap();
        wal.append(1, b"lost", 2);
        drop(wal);
        let (_, recs) = open(tmp.path());
        assert_eq!(recs, vec![rec(1, b"durable")]);
    }

    #[test]
    fn rotate_syncs_pending_records_into_old_segment_first() {
        let tmp = TempDir::new().unwrap();
        let (mut wal, _) = open(tmp.path());
        wal.append(1, b"a", 1);
        wal.rotate(&[(HDR, b"h1".to_vec()), (HDR, b"h2".to_vec())])
            .unwrap();
        wal.append(1, b"b", 2);
        wal.sync().unwrap();
        drop(wal);
        let (wal, recs) = open(tmp.path());
        assert_eq!(
            recs,
            vec![rec(1, b"a"), rec(HDR, b"h1"), rec(HDR, b"h2"), rec(1, b"b")]
        );
        assert_eq!(wal.segment_count(), 2);
        assert_eq!(segment_files(tmp.path()), vec![1, 2]);
    }

    #[test]
    fn should_rotate_ignores_header_only_segments() {
        let tmp = TempDir::new().unwrap();
        let (mut wal, _) = Wal::open(tmp.path(), opts(100)).unwrap();
        assert!(!wal.should_rotate());
        wal.append(1, &[0; 50], 0);
        assert!(!wal.should_rotate());
        wal.append(1, &[0; 50], 0);
        assert!(wal.should_rotate(), "pending bytes count toward the size");
        wal.sync().unwrap();
        assert!(wal.should_rotate());
        wal.rotate(&[(HDR, vec![7; 200])]).unwrap();
        assert!(!wal.should_rotate());
        wal.append(1, b"x", 0);
        assert!(wal.should_rotate());
    }

    /// Builds a WAL with one closed segment and a last segment whose final
    /// record is `last`; returns (records before it, offset where it starts,
    /// the last segment's bytes).
    fn wal_with_last_record(dir: &Path, last: &[u8]) -> (Vec<Record>, u64, Vec<u8>) {
        let (mut wal, _) = open(dir);
        let mut before = Vec::new();
        for i in 0..5 {
            wal.append(1, &payload(i), i as u64);
            before.push(rec(1, &payload(i)));
        }
        wal.rotate(&[(HDR, b"hdr".to_vec())]).unwrap();
        before.push(rec(HDR, b"hdr"));
        for i in 5..9 {
            wal.append(2, &payload(i), i as u64);
            before.push(rec(2, &payload(i)));
        }
        wal.sync().unwrap();
        let start = wal.active.len;
        wal.append(3, last, 9);
        wal.sync().unwrap();
        drop(wal);
        (before, start, fs::read(seg_path(dir, 2)).unwrap())
    }

    #[test]
    fn torn_tail_at_every_offset_is_repaired() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (before, start, full) = wal_with_last_record(dir, b"the final record, torn by a crash");
        let last = seg_path(dir, 2);
        for cut in start..full.len() as u64 {
            fs::write(&last, &full[..cut as usize]).unwrap();
            let (mut wal, recs) = open(dir);
            assert_eq!(recs, before, "cut at {cut}");
            assert_eq!(fs::metadata(&last).unwrap().len(), start, "cut at {cut}");
            wal.append(4, b"after repair", 10);
            wal.sync().unwrap();
            drop(wal);
            let (_, recs) = open(dir);
            assert_eq!(recs.len(), before.len() + 1, "cut at {cut}");
            assert_eq!(recs[..before.len()], before[..]);
            assert_eq!(recs.last(), Some(&rec(4, b"after repair")));
        }
    }

    #[test]
    fn crc_mismatch_in_final_record_is_a_torn_tail() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (before, start, mut full) = wal_with_last_record(dir, b"half-written");
        let n = full.len();
        full[n - 3] ^= 0x55;
        fs::write(seg_path(dir, 2), &full).unwrap();
        let (_, recs) = open(dir);
        assert_eq!(recs, before);
        assert_eq!(fs::metadata(seg_path(dir, 2)).unwrap().len(), start);
    }

    #[test]
    fn zero_filled_tail_is_the_end_of_the_log() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut before, _, mut full) = wal_with_last_record(dir, b"kept");
        before.push(rec(3, b"kept"));
        full.resize(full.len() + 8192, 0);
        fs::write(seg_path(dir, 2), &full).unwrap();
        let (mut wal, recs) = open(dir);
        assert_eq!(recs, before);
        // Zeros read as preallocated space: kept, and overwritten by appends.
        assert_eq!(
            fs::metadata(seg_path(dir, 2)).unwrap().len(),
            full.len() as u64
        );
        wal.append(4, b"next", 10);
        wal.sync().unwrap();
        drop(wal);
        let (_, recs) = open(dir);
        assert_eq!(recs.last(), Some(&rec(4, b"next")));
        assert_eq!(recs.len(), before.len() + 1);
    }

    #[test]
    fn corruption_in_the_middle_fails_with_file_and_offset() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = open(dir);
        let mut offsets = Vec::new();
        let mut off = codec::MAGIC_LEN as u64;
        for i in 0..10 {
            offsets.push(off);
            wal.append(1, format!("record number {i}").as_bytes(), i);
            off += wal.sync().unwrap();
        }
        drop(wal);
        let path = seg_path(dir, 1);
        let good = fs::read(&path).unwrap();

        // A payload byte of record 2.
        let mut bad = good.clone();
        bad[offsets[2] as usize + 20] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        let (file, offset, msg) = corrupt_err(Wal::open(dir, opts(1 << 20)).unwrap_err());
        assert_eq!(file, path);
        assert_eq!(offset, offsets[2]);
        let expected = format!(
            "wal: corrupt record in {} at offset {}: crc mismatch",
            path.display(),
            offsets[2]
        );
        assert!(msg.starts_with(&expected), "{msg}");
        // The file is left untouched for inspection.
        assert_eq!(fs::read(&path).unwrap(), bad);

        // A length field shrunk so the frame still lies inside the file.
        let mut bad = good.clone();
        bad[offsets[3] as usize] -= 2;
        fs::write(&path, &bad).unwrap();
        let (_, offset, _) = corrupt_err(Wal::open(dir, opts(1 << 20)).unwrap_err());
        assert_eq!(offset, offsets[3]);

        // Zeroed hole followed by valid data (lost block), not a torn tail.
        let mut bad = good.clone();
        bad[offsets[4] as usize..offsets[5] as usize].fill(0);
        fs::write(&path, &bad).unwrap();
        let (_, offset, _) = corrupt_err(Wal::open(dir, opts(1 << 20)).unwrap_err());
        assert_eq!(offset, offsets[4]);
    }

    #[test]
    fn damage_in_a_non_last_segment_is_corruption() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = open(dir);
        for s in 0..3u64 {
            wal.append(1, b"some record", s);
            wal.append(1, b"final record of segment", s);
            wal.rotate(&[(HDR, b"hdr".to_vec())]).unwrap();
        }
        drop(wal);
        let first = seg_path(dir, 1);
        let good = fs::read(&first).unwrap();
        let last_start = (good.len() - codec::frame_len(b"final record of segment".len())) as u64;

        // Its final record ends exactly at EOF: torn in a last segment, but
        // later segments prove it was complete once.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        fs::write(&first, &bad).unwrap();
        let (file, offset, msg) = corrupt_err(Wal::open(dir, opts(1 << 20)).unwrap_err());
        assert_eq!((file, offset), (first.clone(), last_start));
        assert!(msg.contains("not the last"), "{msg}");

        fs::write(&first, &good[..good.len() - 5]).unwrap();
        let (_, offset, _) = corrupt_err(Wal::open(dir, opts(1 << 20)).unwrap_err());
        assert_eq!(offset, last_start);

        let mut bad = good.clone();
        bad[last_start as usize..last_start as usize + 4]
            .copy_from_slice(&(codec::MAX_BODY_LEN + 1).to_le_bytes());
        fs::write(&first, &bad).unwrap();
        let (_, offset, msg) = corrupt_err(Wal::open(dir, opts(1 << 20)).unwrap_err());
        assert_eq!(offset, last_start);
        assert!(msg.contains("exceeds the maximum"), "{msg}");

        fs::write(&first, b"").unwrap();
        assert!(matches!(
            Wal::open(dir, opts(1 << 20)),
            Err(WalError::Corrupt { .. })
        ));

        fs::write(&first, &good).unwrap();
        assert_eq!(open(dir).1.len(), 9);
    }

    #[test]
    fn foreign_file_is_refused() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let path = seg_path(dir, 1);
        fs::write(&path, b"this is certainly not a wal segment").unwrap();
        let err = Wal::open(dir, opts(1 << 20)).unwrap_err();
        assert!(matches!(err, WalError::NotASegment { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(err.to_string().contains("bad magic"));
        // Short foreign content is not mistaken for an interrupted creation.
        fs::write(&path, b"xyz").unwrap();
        assert!(matches!(
            Wal::open(dir, opts(1 << 20)),
            Err(WalError::NotASegment { .. })
        ));
        // A file from a future format version.
        let mut future = codec::MAGIC.to_vec();
        future[7] = codec::FORMAT_VERSION + 1;
        fs::write(&path, &future).unwrap();
        let err = Wal::open(dir, opts(1 << 20)).unwrap_err();
        assert!(
            matches!(err, WalError::UnsupportedVersion { version: 2, .. }),
            "{err:?}"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            future,
            "refused files are untouched"
        );
    }

    #[test]
    fn empty_last_segment_gets_its_magic_back() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = open(dir);
        wal.append(1, b"one", 1);
        wal.sync().unwrap();
        drop(wal);
        for partial in [&b""[..], &codec::MAGIC[..3]] {
            fs::write(seg_path(dir, 2), partial).unwrap();
            let (mut wal, recs) = open(dir);
            assert_eq!(recs, vec![rec(1, b"one")]);
            assert_eq!(fs::read(seg_path(dir, 2)).unwrap(), codec::MAGIC);
            wal.append(1, b"two", 2);
            wal.sync().unwrap();
            drop(wal);
            let (_, recs) = open(dir);
            assert_eq!(recs, vec![rec(1, b"one"), rec(1, b"two")]);
            fs::remove_file(seg_path(dir, 2)).unwrap();
        }
    }

    #[test]
    fn purge_removes_only_an_old_prefix_and_survives_reopen() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = open(dir);
        // Segment s (1-based) holds hints 10*(s-1)+1 ..= 10*s; segment 5 is current.
        let mut hint = 0u64;
        for s in 1..=5u64 {
            for _ in 0..10 {
                hint += 1;
                wal.append(1, &hint.to_le_bytes(), hint);
            }
            if s < 5 {
                wal.rotate(&[(HDR, s.to_le_bytes().to_vec())]).unwrap();
            }
        }
        wal.sync().unwrap();
        assert_eq!(wal.segment_count(), 5);

        assert_eq!(wal.purge(0).unwrap(), 0);
        assert_eq!(wal.purge(15).unwrap(), 1);
        assert_eq!(segment_files(dir), vec![2, 3, 4, 5]);
        assert_eq!(wal.purge(15).unwrap(), 0);
        assert_eq!(wal.purge(30).unwrap(), 2);
        assert_eq!(segment_files(dir), vec![4, 5]);
        drop(wal);

        // Hints are recovered from disk, so purge still works after reopen.
        let (mut wal, recs) = open(dir);
        assert_eq!(wal.segment_count(), 2);
        assert_eq!(recs.len(), 1 + 10 + 1 + 10);
        assert_eq!(recs[0], rec(HDR, &3u64.to_le_bytes()));
        assert_eq!(wal.purge(39).unwrap(), 0);
        assert_eq!(wal.purge(u64::MAX).unwrap(), 1);
        assert_eq!(wal.segment_count(), 1);
        assert_eq!(segment_files(dir), vec![5]);
        assert_eq!(wal.purge(u64::MAX).unwrap(), 0, "never the current segment");
        wal.append(1, b"more", 51);
        wal.sync().unwrap();
        drop(wal);
        let (wal, recs) = open(dir);
        assert_eq!(wal.segment_count(), 1);
        assert_eq!(recs.len(), 1 + 10 + 1);
    }

    #[test]
    fn purge_stops_at_first_segment_with_a_higher_hint() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = open(dir);
        for hint in [5u64, 100, 6, 7] {
            wal.append(1, b"x", hint);
            wal.rotate(&[]).unwrap();
        }
        drop(wal);
        let (mut wal, _) = open(dir);
        assert_eq!(wal.segment_count(), 5);
        // Segments 3 and 4 qualify but are not a prefix.
        assert_eq!(wal.purge(10).unwrap(), 1);
        assert_eq!(segment_files(dir), vec![2, 3, 4, 5]);
        assert_eq!(wal.purge(100).unwrap(), 3);
    }

    #[test]
    fn missing_middle_segment_is_an_error() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = open(dir);
        wal.rotate(&[]).unwrap();
        wal.rotate(&[]).unwrap();
        drop(wal);
        fs::remove_file(seg_path(dir, 2)).unwrap();
        let err = Wal::open(dir, opts(1 << 20)).unwrap_err();
        assert!(
            matches!(err, WalError::MissingSegment { missing: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("0000000000000002.wal"));
    }

    #[test]
    fn unfinished_segment_and_unrelated_files() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = open(dir);
        wal.append(1, b"a", 1);
        wal.sync().unwrap();
        drop(wal);
        let leftover = dir.join("0000000000000002.wal.tmp");
        fs::write(&leftover, b"partial").unwrap();
        fs::write(dir.join("README"), b"not ours").unwrap();
        let (mut wal, recs) = open(dir);
        assert_eq!(recs, vec![rec(1, b"a")]);
        assert!(!leftover.exists());
        assert!(dir.join("README").exists());
        wal.rotate(&[]).unwrap();
        assert_eq!(segment_files(dir), vec![1, 2]);
    }

    #[test]
    fn second_open_of_same_dir_is_refused() {
        let tmp = TempDir::new().unwrap();
        let (wal, _) = open(tmp.path());
        let err = Wal::open(tmp.path(), opts(1 << 20)).unwrap_err();
        assert!(matches!(err, WalError::Locked { .. }), "{err:?}");
        drop(wal);
        open(tmp.path());
    }

    #[test]
    fn oversized_record_discards_the_batch() {
        let tmp = TempDir::new().unwrap();
        let (mut wal, _) = open(tmp.path());
        wal.append(1, b"before", 1);
        // calloc'd and never copied: cheap despite its size.
        let huge = vec![0u8; MAX_PAYLOAD_LEN + 1];
        wal.append(1, &huge, 2);
        let err = wal.sync().unwrap_err();
        assert!(matches!(err, WalError::RecordTooLarge { .. }), "{err:?}");
        assert_eq!(wal.sync().unwrap(), 0);
        assert!(matches!(
            wal.rotate(&[(HDR, huge)]),
            Err(WalError::RecordTooLarge { .. })
        ));
        wal.append(1, b"after", 3);
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(open(tmp.path()).1, vec![rec(1, b"after")]);
    }

    #[test]
    fn poisoned_wal_refuses_writes() {
        let tmp = TempDir::new().unwrap();
        let (mut wal, _) = open(tmp.path());
        wal.poisoned = true;
        wal.append(1, b"x", 0);
        assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
        assert!(matches!(wal.rotate(&[]), Err(WalError::Poisoned)));
    }

    #[test]
    fn garbage_in_last_segment_never_panics() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = open(dir);
        for i in 0..6 {
            wal.append(1, &payload(i + 3), i as u64);
        }
        wal.sync().unwrap();
        drop(wal);
        let good = fs::read(seg_path(dir, 1)).unwrap();
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200 {
            let mut bad = good.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % bad.len();
                bad[i] = next() as u8;
            }
            fs::write(seg_path(dir, 1), &bad).unwrap();
            match Wal::open(dir, opts(1 << 20)) {
                Ok((_, recs)) => assert!(recs.len() <= 6),
                Err(
                    WalError::Corrupt { .. }
                    | WalError::NotASegment { .. }
                    | WalError::UnsupportedVersion { .. },
                ) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    }

    fn prealloc(segment_size: u64) -> WalOptions {
        WalOptions {
            segment_size,
            preallocate: true,
        }
    }

    #[test]
    fn preallocated_segments_replay_reopen_and_rotate() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
        assert_eq!(fs::metadata(seg_path(dir, 1)).unwrap().len(), 64 * 1024);
        let mut want = Vec::new();
        for i in 0..40 {
            wal.append(1, &payload(i), i as u64);
            want.push(rec(1, &payload(i)));
        }
        wal.sync().unwrap();
        drop(wal);
        // The zeros after the last record are the end of the log, kept as they are.
        let (mut wal, recs) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
        assert_eq!(recs, want);
        assert_eq!(fs::metadata(seg_path(dir, 1)).unwrap().len(), 64 * 1024);
        // Appending after a reopen overwrites the zeros.
        for i in 40..600 {
            wal.append(1, &payload(i), i as u64);
            want.push(rec(1, &payload(i)));
            if wal.should_rotate() {
                wal.rotate(&[(HDR, b"hdr".to_vec())]).unwrap();
                want.push(rec(HDR, b"hdr"));
            }
        }
        wal.sync().unwrap();
        let segs = segment_files(dir);
        assert!(segs.len() > 1);
        // Every closed segment was cut back to its last record.
        for seq in &segs[..segs.len() - 1] {
            let bytes = fs::read(seg_path(dir, *seq)).unwrap();
            assert_ne!(bytes.last(), Some(&0), "segment {seq} ends in zeros");
        }
        drop(wal);
        let (_, recs) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
        assert_eq!(recs, want);
    }

    fn tmp_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    /// A spare job whose thread returns what `f` gives.
    fn made(f: impl FnOnce() -> Result<Spare, WalError> + Send + 'static) -> SpareJob {
        SpareJob {
            handle: std::thread::spawn(f),
            wish: Arc::default(),
        }
    }

    /// A spare of 2 MiB for segment 2 in `dir`, paced at 1 MiB per hour,
    /// once it has written its first MiB and fallen into the pause after
    /// it: only what the WAL asks of it can make it end in time.
    fn paused_spare(dir: &Path) -> SpareJob {
        let step = segment::Trickle {
            bytes: 1 << 20,
            pause: std::time::Duration::from_secs(3600),
        };
        let wish = Arc::new(SpareWish::default());
        let theirs = Arc::clone(&wish);
        let at = dir.to_path_buf();
        let job = SpareJob {
            handle: std::thread::spawn(move || {
                segment::prepare_spare(&at, 2, 2 << 20, step, &theirs)
            }),
            wish,
        };
        let spare_path = segment::tmp_path(dir, 2);
        while fs::metadata(&spare_path).map_or(0, |m| m.len()) < 1 << 20 {
            std::thread::yield_now();
        }
        #[allow(clippy::disallowed_methods)] // a test thread: nothing else runs on it
        std::thread::sleep(std::time::Duration::from_millis(200));
        job
    }

    /// What `f` returns, if it returns within a minute.
    fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("the spare ended its pause when asked")
    }

    #[test]
    fn a_rotation_needing_the_spare_cuts_its_pauses_short() {
        let tmp = TempDir::new().unwrap();
        let job = paused_spare(tmp.path());
        let spare = within_a_minute(move || job.finish().unwrap().unwrap());
        assert_eq!(spare.file.metadata().unwrap().len(), 2 << 20);
        assert_eq!(spare.seq, 2);
    }

    #[test]
    fn an_abandoned_spare_stops_midway_and_removes_itself() {
        let tmp = TempDir::new().unwrap();
        let job = paused_spare(tmp.path());
        // As `SpareJob::abandon` asks, but keeping what the thread ended with.
        let ended = within_a_minute(move || {
            job.wish.abandon();
            job.handle.thread().unpark();
            job.handle.join().unwrap()
        });
        assert!(ended.is_err(), "the spare was written to its end");
        assert!(
            tmp_files(tmp.path()).is_empty(),
            "{:?}",
            tmp_files(tmp.path())
        );
    }

    /// Waits for the spare being made and puts it back; its inode.
    fn spare_inode(wal: &mut Wal) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let spare = wal
            .spare
            .take()
            .expect("a spare")
            .finish()
            .unwrap()
            .unwrap();
        let ino = spare.file.metadata().unwrap().ino();
        wal.spare = Some(made(move || Ok(spare)));
        ino
    }

    #[test]
    fn a_rotation_takes_the_spare_made_ahead_and_starts_the_next() {
        use std::os::unix::fs::MetadataExt;
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
        // Segment 2's zeros are made ahead, under a temporary name.
        let ino = spare_inode(&mut wal);
        assert_eq!(tmp_files(dir), vec!["0000000000000002.wal.tmp"]);
        let spare_len = fs::metadata(dir.join("0000000000000002.wal.tmp"))
            .unwrap()
            .len();
        assert_eq!(spare_len, 64 * 1024);
        wal.append(1, b"a", 1);
        wal.rotate(&[(HDR, b"hdr".to_vec())]).unwrap();
        // The rotation renamed that very file, its header written over the
        // first zeros; the next spare is on its way.
        let seg2 = fs::metadata(seg_path(dir, 2)).unwrap();
        assert_eq!((seg2.ino(), seg2.len()), (ino, 64 * 1024));
        spare_inode(&mut wal);
        assert_eq!(tmp_files(dir), vec!["0000000000000003.wal.tmp"]);
        wal.append(1, b"b", 2);
        wal.sync().unwrap();
        drop(wal);
        // Dropped, the WAL leaves only segments.
        assert!(tmp_files(dir).is_empty(), "{:?}", tmp_files(dir));
        let (_, recs) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
        assert_eq!(recs, vec![rec(1, b"a"), rec(HDR, b"hdr"), rec(1, b"b")]);
    }

    #[test]
    fn a_rotation_without_its_spare_makes_the_segment_itself() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
        // The spare failed (a full disk, say): the rotation goes on without.
        let spare = wal.spare.take().unwrap().finish().unwrap().unwrap();
        fs::remove_file(&spare.tmp).unwrap();
        wal.spare = Some(made(|| {
            Err(WalError::Io {
                op: "preallocate",
                path: PathBuf::from("spare"),
                source: io::Error::other("no space"),
            })
        }));
        wal.append(1, b"a", 1);
        wal.rotate(&[(HDR, b"hdr".to_vec())]).unwrap();
        assert_eq!(fs::metadata(seg_path(dir, 2)).unwrap().len(), 64 * 1024);
        drop(wal);
        let (_, recs) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
        assert_eq!(recs, vec![rec(1, b"a"), rec(HDR, b"hdr")]);
    }

    #[test]
    fn without_preallocation_no_spare_is_made() {
        let tmp = TempDir::new().unwrap();
        let (wal, _) = open(tmp.path());
        assert!(wal.spare.is_none());
        assert!(tmp_files(tmp.path()).is_empty());
    }

    /// A preallocated WAL in `dir` with five records synced; the length
    /// they end at.
    fn five_synced(dir: &Path) -> (Wal, usize) {
        let (mut wal, _) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
        for i in 0..5 {
            wal.append(1, &payload(i), i as u64);
        }
        wal.sync().unwrap();
        let synced = wal.active.len as usize;
        (wal, synced)
    }

    #[test]
    fn a_torn_write_inside_preallocated_space_is_repaired() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, start) = five_synced(dir);
        wal.append(2, &[7u8; 500], 9);
        wal.sync().unwrap();
        drop(wal);
        let path = seg_path(dir, 1);
        let full = fs::read(&path).unwrap();
        // Only part of the last record reached the disk: the rest of its bytes
        // read back as the zeros that were there before.
        for kept in [1, 8, 20, 300] {
            let mut torn = full.clone();
            for b in &mut torn[start + kept..] {
                *b = 0;
            }
            fs::write(&path, &torn).unwrap();
            let (mut wal, recs) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
            assert_eq!(recs.len(), 5, "kept {kept}");
            wal.append(3, b"after", 10);
            wal.sync().unwrap();
            drop(wal);
            let (_, recs) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
            assert_eq!(recs.last(), Some(&rec(3, b"after")), "kept {kept}");
            fs::write(&path, &full).unwrap();
        }
    }

    /// A power cut that kept a later sector of the last unsynced batch but
    /// not an earlier one (write-back in any order): the hole ends the log,
    /// the batch is dropped from its first damaged record, and nothing synced
    /// before it is lost. The same hole anywhere but in the last segment, or
    /// a hole smaller than a sector, stays corruption.
    #[test]
    fn a_lost_sector_inside_the_last_unsynced_batch_ends_the_log() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        let (mut wal, synced) = five_synced(dir);
        // One batch of 40 records of 200 bytes: about 16 sectors.
        for i in 0..40u64 {
            wal.append(2, &[i as u8 + 1; 200], 100 + i);
        }
        wal.sync().unwrap();
        let batch_end = wal.active.len as usize;
        drop(wal);
        let path = seg_path(dir, 1);
        let full = fs::read(&path).unwrap();
        let frame = codec::frame_len(200);
        let first_sector = synced.div_ceil(segment::SECTOR) * segment::SECTOR;
        // Lose, in turn: the batch's first sector (it keeps its old content:
        // the synced prefix, then zeros), and whole sectors further in.
        assert!(
            first_sector > synced,
            "the batch starts on a sector boundary"
        );
        let mut lost: Vec<(usize, usize)> = vec![(synced, first_sector)];
        for s in (first_sector..batch_end - segment::SECTOR).step_by(3 * segment::SECTOR) {
            lost.push((s, s + segment::SECTOR));
        }
        for (from, to) in lost {
            let mut cut = full.clone();
            cut[from..to].fill(0);
            fs::write(&path, &cut).unwrap();
            let (mut wal, recs) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
            // Records wholly before the hole survive; the one it touches and
            // everything after are gone.
            let whole = (from - synced) / frame;
            assert_eq!(recs.len(), 5 + whole, "hole {from}..{to}");
            wal.append(3, b"after", 1000);
            wal.sync().unwrap();
            drop(wal);
            let (_, recs) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
            assert_eq!(recs.len(), 5 + whole + 1, "hole {from}..{to}");
            assert_eq!(recs.last(), Some(&rec(3, b"after")));
            fs::write(&path, &full).unwrap();
        }
        // A hole of less than a sector inside the batch, data on both sides:
        // damage, not a lost write.
        let mid = first_sector + 4 * segment::SECTOR + 100;
        let mut cut = full.clone();
        cut[mid..mid + 300].fill(0);
        fs::write(&path, &cut).unwrap();
        let (file, _, msg) = corrupt_err(Wal::open(dir, prealloc(64 * 1024)).unwrap_err());
        assert_eq!(file, path);
        assert!(msg.contains("not a torn write"), "{msg}");
        // A lost sector in a segment that is not the last: corruption.
        fs::write(&path, &full).unwrap();
        let (mut wal, _) = Wal::open(dir, prealloc(64 * 1024)).unwrap();
        wal.rotate(&[(HDR, b"hdr".to_vec())]).unwrap();
        wal.append(1, b"next", 2000);
        wal.sync().unwrap();
        drop(wal);
        let mut cut = fs::read(&path).unwrap();
        cut[first_sector + segment::SECTOR..first_sector + 2 * segment::SECTOR].fill(0);
        fs::write(&path, &cut).unwrap();
        let (file, _, msg) = corrupt_err(Wal::open(dir, prealloc(64 * 1024)).unwrap_err());
        assert_eq!(file, path);
        assert!(msg.contains("not the last"), "{msg}");
    }
}
