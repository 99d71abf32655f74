//! Segment files and the directory holding them: naming, listing, durable
//! creation, replay scanning with the torn-tail/corruption rule, and the
//! directory lock.
//!
//! Nothing here keeps state between calls; [`super::Wal`] owns the handles.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use super::codec::{self, MagicCheck, MAGIC, MAGIC_LEN};
use super::{Record, WalError};
use crate::storage::memory::writeback;

/// Extension of a live segment.
const SEGMENT_EXT: &str = "wal";
/// Suffix of a segment still being built by `create`; never replayed.
const TMP_SUFFIX: &str = ".wal.tmp";
/// Digits in a segment's sequence number, so names sort like numbers.
const SEQ_DIGITS: usize = 16;
/// Largest sequence number that fits in [`SEQ_DIGITS`] digits.
pub(super) const MAX_SEQ: u64 = 9_999_999_999_999_999;

/// Builds the `io::Error -> WalError` adapter for an operation on `path`.
pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// File name of segment `seq`, e.g. `0000000000000003.wal`.
pub(super) fn file_name(seq: u64) -> String {
    format!("{seq:0SEQ_DIGITS$}.{SEGMENT_EXT}")
}

/// Path of segment `seq` in `dir`.
pub(super) fn path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(file_name(seq))
}

pub(super) fn tmp_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:0SEQ_DIGITS$}{TMP_SUFFIX}"))
}

/// Sequence number of a segment file name; `None` for anything else, which the
/// WAL then leaves alone.
pub(super) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?.strip_suffix('.')?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn is_tmp_name(name: &str) -> bool {
    name.strip_suffix(TMP_SUFFIX)
        .is_some_and(|d| d.len() == SEQ_DIGITS && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The open WAL directory: keeps an exclusive `flock` for the life of the WAL
/// (two writers interleaving appends would destroy the log) and is the handle
/// used to fsync directory entries.
#[derive(Debug)]
pub(super) struct Dir {
    path: PathBuf,
    handle: File,
}

impl Dir {
    /// Opens `path` (creating it and making its entry durable if missing) and
    /// takes the lock.
    pub(super) fn open(path: &Path) -> Result<Dir, WalError> {
        if !path.is_dir() {
            fs::create_dir_all(path).map_err(io_err("create directory", path))?;
            // The new directory's own entry must survive a crash too.
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent)?;
            }
        }
        let handle = File::open(path).map_err(io_err("open directory", path))?;
        lock_exclusive(&handle, path)?;
        Ok(Dir {
            path: path.to_path_buf(),
            handle,
        })
    }

    /// Directory path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Makes creations, renames and removals of entries durable.
    pub(super) fn sync(&self) -> Result<(), WalError> {
        self.handle
            .sync_all()
            .map_err(io_err("fsync directory", &self.path))
    }

    /// Sorted sequence numbers of the segments present. Removes leftovers of a
    /// creation interrupted before its rename: such a segment was never
    /// returned to a caller, so nothing in it was acknowledged.
    pub(super) fn list_segments(&self) -> Result<Vec<u64>, WalError> {
        let dir = &self.path;
        let mut seqs = Vec::new();
        let mut removed_tmp = false;
        for entry in fs::read_dir(dir).map_err(io_err("list directory", dir))? {
            let entry = entry.map_err(io_err("list directory", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = parse_name(name) {
                seqs.push(seq);
            } else if is_tmp_name(name) {
                let p = entry.path();
                tracing::warn!(file = %p.display(), "wal: removing unfinished segment {}", p.display());
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
                removed_tmp = true;
            }
        }
        if removed_tmp {
            self.sync()?;
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// First half of creating segment `seq`: writes the magic followed by
    /// `records` (already framed) under a temporary name and fsyncs it. Until
    /// [`Dir::install`] renames it, a crash leaves only a `.tmp` file that the
    /// next open deletes, so a segment never appears without its header records.
    /// The file is zero-filled to `preallocate` bytes: appends then overwrite
    /// blocks that already exist, so an fdatasync flushes data only, not the
    /// inode (measured: mean fsync 280 µs → 180 µs here).
    pub(super) fn prepare_segment(
        &self,
        seq: u64,
        records: &[u8],
        preallocate: u64,
    ) -> Result<Prepared, WalError> {
        let tmp = tmp_path(&self.path, seq);
        let made = (|| {
            let mut file = create_tmp(&tmp)?;
            let mut first = Vec::with_capacity(MAGIC_LEN + records.len());
            first.extend_from_slice(&MAGIC);
            first.extend_from_slice(records);
            file.write_all(&first).map_err(io_err("write", &tmp))?;
            zero_fill(&mut file, first.len() as u64, preallocate, None)
                .map_err(io_err("preallocate", &tmp))?;
            // sync_all, not sync_data: the new inode and its size must land too.
            file.sync_all().map_err(io_err("fsync", &tmp))?;
            Ok((file, first.len() as u64))
        })();
        let (file, len) = removed_on_error(&tmp, made)?;
        Ok(Prepared {
            seq,
            tmp,
            file,
            len,
        })
    }

    /// Second half: renames the prepared file into place and fsyncs the
    /// directory. Returns the handle positioned at its end, and its length.
    pub(super) fn install(&self, prepared: Prepared) -> Result<(File, u64), WalError> {
        let dst = path(&self.path, prepared.seq);
        // rename() would silently replace an existing segment.
        if dst.exists() {
            let _ = fs::remove_file(&prepared.tmp);
            return Err(WalError::Io {
                op: "create",
                path: dst,
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        fs::rename(&prepared.tmp, &dst).map_err(io_err("rename", &prepared.tmp))?;
        self.sync()?;
        Ok((prepared.file, prepared.len))
    }
}

/// A segment file made ahead of its rotation, off the WAL's thread: zeros
/// only, as long as a segment, fsynced (inode and size too), under its
/// temporary name. [`fill_spare`] turns it into a [`Prepared`] segment.
#[derive(Debug)]
pub(super) struct Spare {
    pub(super) seq: u64,
    pub(super) tmp: PathBuf,
    pub(super) file: File,
}

/// How a spare's zeros go to the disk: a trickle of 1 MiB writes, each
/// written back (data only, see [`writeback::wait`]) before a
/// pause, so the WAL's own fdatasyncs never queue behind more than one step.
/// On three members under 50 clients of 1 KiB puts (docs/bench/issue15/
/// wal-spare/), flushing 8 MiB per fdatasync instead doubled put p99 for a
/// second after each rotation, and 5 ms pauses left p99 at 18.5 ms against
/// 13.8 ms with 20 ms; writing the 64 MiB at once at the rotation, as
/// before spares, stalled every append 120-140 ms.
pub(super) const SPARE_STEP: Trickle = Trickle {
    bytes: 1 << 20,
    pause: std::time::Duration::from_millis(20),
};

/// A paced zero fill: write back `bytes` at a time, then rest `pause`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Trickle {
    pub(super) bytes: u64,
    pub(super) pause: std::time::Duration,
}

/// What the WAL asks of a spare being made, shared with its thread: keep the
/// pace, hurry (a rotation needs it: write the rest without pauses), or
/// abandon it (the WAL is closing: stop writing; the spare removes itself).
/// After changing it, unpark the spare's thread to cut a pause short.
#[derive(Debug, Default)]
pub(super) struct SpareWish(AtomicU8);

impl SpareWish {
    const PACED: u8 = 0;
    const HURRY: u8 = 1;
    const ABANDON: u8 = 2;

    pub(super) fn hurry(&self) {
        self.0.store(Self::HURRY, Ordering::SeqCst);
    }

    pub(super) fn abandon(&self) {
        self.0.store(Self::ABANDON, Ordering::SeqCst);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A [`Trickle`] governed by a [`SpareWish`].
#[derive(Debug, Clone, Copy)]
struct Pace<'a> {
    step: Trickle,
    wish: &'a SpareWish,
}

/// Makes the spare for segment `seq` in `dir`, `len` zero bytes long, at
/// the pace of `step` as long as `wish` says so. Blocking and slow (it
/// writes and syncs a whole segment): run it on a thread of its own. A
/// failed or abandoned spare leaves no file behind.
pub(super) fn prepare_spare(
    dir: &Path,
    seq: u64,
    len: u64,
    step: Trickle,
    wish: &SpareWish,
) -> Result<Spare, WalError> {
    let tmp = tmp_path(dir, seq);
    let made = (|| {
        let mut file = create_tmp(&tmp)?;
        zero_fill(&mut file, 0, len, Some(Pace { step, wish }))
            .map_err(io_err("preallocate", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        Ok(file)
    })();
    let file = removed_on_error(&tmp, made)?;
    Ok(Spare { seq, tmp, file })
}

/// Creates the temporary file `tmp` (which must not exist yet).
fn create_tmp(tmp: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(io_err("create", tmp))
}

/// `made`, after removing the temporary file `tmp` if it failed (best
/// effort: a leftover is also removed by the next open).
fn removed_on_error<T>(tmp: &Path, made: Result<T, WalError>) -> Result<T, WalError> {
    if made.is_err() {
        let _ = fs::remove_file(tmp);
    }
    made
}

/// Writes the magic and `records` at the start of `spare` and makes them
/// durable: the first half of a rotation with a spare, as
/// [`Dir::prepare_segment`] is without one. One fdatasync of the first
/// pages: the file's size and blocks were made durable with the spare.
pub(super) fn fill_spare(spare: Spare, records: &[u8]) -> Result<Prepared, WalError> {
    use std::io::{Seek, SeekFrom};
    let Spare { seq, tmp, mut file } = spare;
    let made = (|| {
        file.seek(SeekFrom::Start(0))
            .map_err(io_err("seek", &tmp))?;
        file.write_all(&MAGIC).map_err(io_err("write", &tmp))?;
        file.write_all(records).map_err(io_err("write", &tmp))?;
        file.sync_data().map_err(io_err("fsync", &tmp))?;
        Ok((MAGIC_LEN + records.len()) as u64)
    })();
    let len = removed_on_error(&tmp, made)?;
    Ok(Prepared {
        seq,
        tmp,
        file,
        len,
    })
}

/// A fully written and fsynced segment not yet visible under its real name.
#[derive(Debug)]
pub(super) struct Prepared {
    seq: u64,
    tmp: PathBuf,
    file: File,
    len: u64,
}

fn fsync_dir(path: &Path) -> Result<(), WalError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", path))
}

#[cfg(unix)]
fn lock_exclusive(handle: &File, path: &Path) -> Result<(), WalError> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `handle` keeps open.
    let rc = unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        Err(WalError::Locked {
            dir: path.to_path_buf(),
        })
    } else {
        Err(WalError::Io {
            op: "lock directory",
            path: path.to_path_buf(),
            source: err,
        })
    }
}

#[cfg(not(unix))]
fn lock_exclusive(_handle: &File, _path: &Path) -> Result<(), WalError> {
    Ok(())
}

/// Reads the whole file at `path` into `buf` (cleared first, capacity reused).
///
/// With `zero_tail` (the last segment, preallocated with zeros) whole MiB
/// chunks of zeros at the end of the file are left out: replay treats the
/// end of `buf` as it treats zeros to the end of the file (the end of the
/// log, or a write cut short there), and a restart does not copy and scan a
/// 64 MiB buffer of mostly zeros. Zeros followed by data are kept, so the
/// replay rules see them.
pub(super) fn read_all(path: &Path, buf: &mut Vec<u8>, zero_tail: bool) -> Result<(), WalError> {
    buf.clear();
    let mut file = File::open(path).map_err(io_err("open", path))?;
    if !zero_tail {
        file.read_to_end(buf).map_err(io_err("read", path))?;
        return Ok(());
    }
    const CHUNK: usize = 1 << 20;
    let mut chunk = Vec::with_capacity(CHUNK);
    // Zero bytes read and not yet put in `buf`: added only if data follows.
    let mut zeros = 0usize;
    loop {
        chunk.clear();
        let n = (&mut file)
            .take(CHUNK as u64)
            .read_to_end(&mut chunk)
            .map_err(io_err("read", path))?;
        if all_zero(&chunk) {
            zeros += n;
        } else {
            buf.resize(buf.len() + zeros, 0);
            zeros = 0;
            buf.extend_from_slice(&chunk);
        }
        if n < CHUNK {
            return Ok(());
        }
    }
}

/// Whether every byte is zero; ORs 4 KiB at a time (which vectorizes) and
/// stops at the first block that is not.
pub(super) fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// What replaying one segment found.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Scan {
    /// Bytes up to the end of the last valid record (at least the magic).
    pub valid_len: u64,
    /// Highest index_hint of any record in the segment (0 if none).
    pub max_hint: u64,
    /// Set when the segment ends in a torn write that must be cut off at
    /// `valid_len`; only ever set for the last segment.
    pub torn: Option<String>,
}

/// Checks the magic of a segment's content.
/// Returns `Ok(false)` when the segment is the last one and its creation was
/// cut short (empty or partial magic), which the caller repairs.
pub(super) fn check_header(file: &Path, data: &[u8], is_last: bool) -> Result<bool, WalError> {
    match codec::check_magic(data) {
        MagicCheck::Valid => Ok(true),
        MagicCheck::Incomplete if is_last => Ok(false),
        MagicCheck::Incomplete => Err(WalError::Corrupt {
            file: file.to_path_buf(),
            offset: data.len() as u64,
            reason: format!(
                "segment is shorter than its {MAGIC_LEN}-byte header and is not the last segment"
            ),
        }),
        MagicCheck::WrongVersion(version) => Err(WalError::UnsupportedVersion {
            file: file.to_path_buf(),
            version,
            supported: codec::FORMAT_VERSION,
        }),
        MagicCheck::Foreign => Err(WalError::NotASegment {
            file: file.to_path_buf(),
        }),
    }
}

/// Writes zeros from `from` up to `to` and leaves the position at `from`;
/// with `pace`, paced as it says (the final fsync is the caller's).
fn zero_fill(file: &mut File, from: u64, to: u64, pace: Option<Pace<'_>>) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    if to <= from {
        return Ok(());
    }
    let chunk = vec![0u8; 1 << 20];
    let mut at = from;
    let mut unflushed = 0;
    while at < to {
        let n = (to - at).min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        at += n as u64;
        unflushed += n as u64;
        let Some(p) = pace else { continue };
        match p.wish.get() {
            SpareWish::ABANDON => return Err(io::Error::other("spare abandoned")),
            SpareWish::PACED if unflushed >= p.step.bytes => {
                writeback::wait(file, at - unflushed, unflushed)?;
                unflushed = 0;
                // Woken early when the wish changes; a spurious wake-up
                // only shortens a pause.
                std::thread::park_timeout(p.step.pause);
            }
            _ => {}
        }
    }
    file.seek(SeekFrom::Start(from)).map(|_| ())
}

/// Granularity at which a disk loses writes at power failure: a sector
/// either has its new content or its old one (pages of the page cache are
/// written back in any order until an fsync has returned).
pub(super) const SECTOR: usize = 512;

/// Whether the bad frame at `offset` shows a sector lost at a power cut:
/// the frame starts in a sector that is zero from `offset` to its end (the
/// batch's first sector kept its old content: the synced prefix, then the
/// preallocated zeros), or a whole later sector it overlaps is zero (every
/// sector after a batch's first held only zeros before the batch). Pages of
/// the page cache reach the disk in any order until an fsync returns, so a
/// later page of the same unsynced batch may be there; nothing from the hole
/// on was acknowledged, since an fsync makes every earlier byte durable
/// first. Damage to synced data rarely zeroes whole sectors, and a hole in
/// any segment but the last is corruption whatever its shape.
fn lost_sector(data: &[u8], offset: usize, err: &codec::FrameError) -> bool {
    let zero = |from: usize, to: usize| {
        data.get(from..to)
            .is_some_and(|b| !b.is_empty() && all_zero(b))
    };
    let boundary = (offset / SECTOR + 1) * SECTOR;
    // The length field at least (past the boundary its high bytes were
    // kept, and are zero for any record under 16 MiB).
    if zero(offset, boundary.max(offset + 4)) {
        return true;
    }
    let frame_end = offset
        .saturating_add(err.extent().unwrap_or(0))
        .min(data.len());
    (boundary..frame_end)
        .step_by(SECTOR)
        .any(|s| zero(s, s + SECTOR))
}

/// Decodes every record of a segment whose magic was already checked,
/// appending them to `out`.
///
/// The rule: a bad frame in the last segment whose claimed extent reaches
/// end-of-file (or that is followed only by zero bytes, which is how a crash
/// after a size update but before the data write looks) is a torn write and is
/// reported in [`Scan::torn`]. Anything else is [`WalError::Corrupt`], because
/// bytes after it (or a later segment) prove it was once fully written.
pub(super) fn scan(
    file: &Path,
    data: &[u8],
    is_last: bool,
    out: &mut Vec<Record>,
) -> Result<Scan, WalError> {
    let mut offset = MAGIC_LEN;
    let mut max_hint = 0;
    while let Some(rest) = data.get(offset..).filter(|r| !r.is_empty()) {
        match codec::decode(rest) {
            Ok(frame) => {
                out.push(Record {
                    kind: frame.kind,
                    payload: frame.payload.to_vec(),
                });
                max_hint = max_hint.max(frame.index_hint);
                offset += frame.frame_len;
            }
            Err(err) => {
                if is_last && all_zero(rest) {
                    // Preallocated space (segments are zero-filled up front so
                    // fdatasync need not update the inode): the end of the log.
                    return Ok(Scan {
                        valid_len: offset as u64,
                        max_hint,
                        torn: None,
                    });
                }
                let reaches_end = err.reaches_end(rest.len());
                // A write cut short inside preallocated space: the broken frame
                // is followed by nothing but the zeros that were there before.
                let zeros_after = err
                    .extent()
                    .is_some_and(|n| rest.get(n..).is_none_or(all_zero));
                if is_last && (reaches_end || zeros_after || lost_sector(data, offset, &err)) {
                    return Ok(Scan {
                        valid_len: offset as u64,
                        max_hint,
                        torn: Some(err.to_string()),
                    });
                }
                let why = if !is_last {
                    "the segment is not the last one, so this is not a torn write"
                } else {
                    "more data follows the record, so this is not a torn write"
                };
                return Err(WalError::Corrupt {
                    file: file.to_path_buf(),
                    offset: offset as u64,
                    reason: format!("{err}; {why}"),
                });
            }
        }
    }
    Ok(Scan {
        valid_len: offset.min(data.len()) as u64,
        max_hint,
        torn: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::codec::encode;
    use super::*;

    fn segment(records: &[(u8, &[u8], u64)]) -> Vec<u8> {
        let mut data = MAGIC.to_vec();
        for &(k, p, h) in records {
            encode(&mut data, k, p, h);
        }
        data
    }

    fn scan_vec(data: &[u8], is_last: bool) -> Result<(Scan, Vec<Record>), WalError> {
        let mut out = Vec::new();
        let s = scan(Path::new("/x/seg.wal"), data, is_last, &mut out)?;
        Ok((s, out))
    }

    #[test]
    fn names() {
        assert_eq!(file_name(3), "0000000000000003.wal");
        assert_eq!(parse_name("0000000000000003.wal"), Some(3));
        assert_eq!(parse_name(&file_name(MAX_SEQ)), Some(MAX_SEQ));
        assert_eq!(parse_name(&file_name(MAX_SEQ + 1)), None);
        assert_eq!(parse_name("3.wal"), None);
        assert_eq!(parse_name("000000000000000a.wal"), None);
        assert_eq!(parse_name("0000000000000003.wal.tmp"), None);
        assert_eq!(parse_name("+000000000000003.wal"), None);
        assert!(is_tmp_name("0000000000000003.wal.tmp"));
        assert!(!is_tmp_name("x.wal.tmp"));
    }

    #[test]
    fn read_all_leaves_out_only_a_zero_tail() {
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path().join("seg");
        let mb = 1 << 20;
        let mut head = vec![7u8; mb + 100];
        head.extend(vec![0u8; 3 * mb]);
        fs::write(&path, &head).unwrap();
        let mut buf = vec![1, 2, 3];
        read_all(&path, &mut buf, true).unwrap();
        // The chunk holding the data's end keeps its zeros; the rest go.
        assert_eq!(buf, head[..2 * mb]);
        read_all(&path, &mut buf, false).unwrap();
        assert_eq!(buf, head);
        // Zeros with data after them are kept, whatever their size.
        let mut holed = head.clone();
        holed.extend(vec![9u8; 10]);
        fs::write(&path, &holed).unwrap();
        read_all(&path, &mut buf, true).unwrap();
        assert_eq!(buf, holed);
        fs::write(&path, vec![0u8; 2 * mb]).unwrap();
        read_all(&path, &mut buf, true).unwrap();
        assert!(buf.is_empty());
        assert!(all_zero(&[]) && all_zero(&[0; 9000]));
        let mut late = vec![0u8; 9000];
        late[8999] = 1;
        assert!(!all_zero(&late));
    }

    #[test]
    fn scan_clean_segment() {
        let data = segment(&[(1, b"a", 5), (2, b"bb", 3), (3, b"", 0)]);
        let (s, recs) = scan_vec(&data, false).unwrap();
        assert_eq!(s.valid_len, data.len() as u64);
        assert_eq!(s.max_hint, 5);
        assert_eq!(s.torn, None);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].payload, b"bb");
        let (s, recs) = scan_vec(&MAGIC, true).unwrap();
        assert_eq!((s.valid_len, s.max_hint, recs.len()), (8, 0, 0));
    }

    #[test]
    fn torn_only_in_last_segment() {
        let full = segment(&[(1, b"first", 1), (2, b"second", 2)]);
        let keep = segment(&[(1, b"first", 1)]).len();
        for cut in keep + 1..full.len() {
            let (s, recs) = scan_vec(&full[..cut], true).unwrap();
            assert_eq!(s.valid_len, keep as u64, "cut {cut}");
            assert!(s.torn.is_some());
            assert_eq!(recs.len(), 1);
            let err = scan_vec(&full[..cut], false).unwrap_err();
            assert!(
                matches!(err, WalError::Corrupt { offset, .. } if offset == keep as u64),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn crc_mismatch_in_final_record_is_torn_but_earlier_is_corrupt() {
        let mut data = segment(&[(1, b"first", 1), (2, b"second", 2)]);
        let second = segment(&[(1, b"first", 1)]).len();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        let (s, _) = scan_vec(&data, true).unwrap();
        assert_eq!(s.valid_len, second as u64);

        let mut data = segment(&[(1, b"first", 1), (2, b"second", 2)]);
        data[MAGIC_LEN + 17] ^= 0xff;
        let err = scan_vec(&data, true).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/x/seg.wal at offset 8: crc mismatch"),
            "{msg}"
        );
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let mut data = segment(&[(1, b"first", 1)]);
        let keep = data.len();
        data.resize(keep + 4096, 0);
        let (s, recs) = scan_vec(&data, true).unwrap();
        assert_eq!((s.valid_len, recs.len()), (keep as u64, 1));
        assert!(scan_vec(&data, false).is_err());
    }

    #[test]
    fn oversized_length_in_non_last_segment_is_corrupt() {
        let mut data = segment(&[(1, b"first", 1), (2, b"second", 2)]);
        data[MAGIC_LEN..MAGIC_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = scan_vec(&data, false).unwrap_err();
        assert!(err.to_string().contains("exceeds the maximum"), "{err}");
        // In the last segment the same header claims bytes past EOF: torn.
        let (s, recs) = scan_vec(&data, true).unwrap();
        assert_eq!((s.valid_len, recs.len()), (MAGIC_LEN as u64, 0));
    }

    #[test]
    fn header_checks() {
        let p = Path::new("/x/seg.wal");
        assert!(check_header(p, &MAGIC, false).unwrap());
        assert!(!check_header(p, b"", true).unwrap());
        assert!(!check_header(p, &MAGIC[..3], true).unwrap());
        assert!(matches!(
            check_header(p, b"", false),
            Err(WalError::Corrupt { .. })
        ));
        assert!(matches!(
            check_header(p, b"hello world", true),
            Err(WalError::NotASegment { .. })
        ));
        let mut v9 = MAGIC;
        v9[7] = 9;
        assert!(matches!(
            check_header(p, &v9, true),
            Err(WalError::UnsupportedVersion { version: 9, .. })
        ));
    }

    #[test]
    fn scan_never_panics_on_garbage() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = segment(&[(1, b"abc", 1), (2, b"defgh", 2), (3, b"ij", 3)]);
        for _ in 0..5_000 {
            let mut data = base.clone();
            for _ in 0..(next() % 4) {
                let i = MAGIC_LEN + (next() as usize % (data.len() - MAGIC_LEN));
                data[i] = next() as u8;
            }
            let cut = MAGIC_LEN + (next() as usize % (data.len() - MAGIC_LEN + 1));
            for is_last in [true, false] {
                match scan_vec(&data[..cut], is_last) {
                    Ok((s, _)) => assert!(s.valid_len <= cut as u64),
                    Err(WalError::Corrupt { offset, .. }) => assert!(offset < cut as u64),
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A segment of real Raft records with bytes changed and cut
        /// anywhere, scanned and its records' entries decoded as recovery
        /// does: records or an error, never a panic, and no allocation
        /// the bytes do not back.
        #[test]
        fn hostile_segments_never_panic_or_overallocate(
            pokes in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()),
                0..8,
            ),
            cut in proptest::prelude::any::<usize>(),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            use crate::storage::alloc_probe::{bound, largest_allocation};
            use crate::storage::raft_log::{decode_entries, encode_entries};
            let entries: Vec<raft::eraftpb::Entry> = (1..4u64)
                .map(|i| raft::eraftpb::Entry {
                    index: i,
                    term: 1,
                    data: vec![i as u8; 40].into(),
                    ..Default::default()
                })
                .collect();
            let mut payload = Vec::new();
            encode_entries(&entries, &mut payload);
            let mut data = segment(&[(1, payload.as_slice(), 3), (2, garbage.as_slice(), 4)]);
            let body = data.len() - MAGIC_LEN;
            for (at, b) in pokes {
                data[MAGIC_LEN + at % body] = b;
            }
            data.truncate(MAGIC_LEN + cut % (body + 1));
            let (_, largest) = largest_allocation(|| {
                for is_last in [true, false] {
                    if let Ok((_, records)) = scan_vec(&data, is_last) {
                        for r in &records {
                            let _ = decode_entries(&r.payload);
                        }
                    }
                }
                let _ = decode_entries(&garbage);
            });
            let input = data.len() + garbage.len();
            proptest::prop_assert!(largest <= bound(input), "{largest} for {input} bytes");
        }
    }
}
