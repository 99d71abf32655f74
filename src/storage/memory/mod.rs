//! The `memory` engine: the MVCC state lives in a [`MemStore`]; it is durable
//! through the WAL (every applied entry can be replayed) and snapshot files
//! (so the WAL can be purged).
//!
//! Nothing whole-state runs on the apply thread. An image (a periodic
//! snapshot, Maintenance.Snapshot, a snapshot for a follower, the state a
//! hash is computed over) is taken in slices: the apply thread copies the
//! versions of a few thousand keys per turn ([`StateEngine::idle_step`],
//! about a millisecond each) and hands them to a thread of the image, which
//! sorts them by revision (spilling sorted runs to a temp file past 16 MiB,
//! [`crate::storage::image_sort`]) and writes the file. The slices read the store
//! at the revision the image started at: versions at or below it never
//! change, and compaction is held (it moves the compacted revision but
//! removes nothing) until the last slice is taken. A compaction's removal
//! is sliced the same way, after the images: the compacted revision moves
//! at once, reads and images leave out what it removes, and the versions
//! go a few thousand keys per turn. A received image is
//! decoded into a new store on a worker ([`StateEngine::install_job`]); the
//! apply thread only swaps it in.

pub mod mvcc;
pub mod snapshots;
pub mod wal;
pub mod wal_log;
pub mod writeback;

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::engine::{AppliedPoint, Checkpoint, InstallJob, KvEngine, StateEngine};
use super::image::{read_into_store, unlinked_temp, ImageHeader, ImageJob, RecordSlice};
use super::image_sort::{RevisionSorter, RUN_BYTES};
use crate::storage::memory::mvcc::{MemStore, WriteTxn};
use crate::storage::StorageError;
use crate::storage::{Event, MvccError, RangeOptions, RangeResult};

/// Keys and versions one image slice copies: about a millisecond of the
/// apply thread with 256-byte values.
const SLICE_BUDGET: usize = 4096;

/// Keys and versions one slice of a compaction's removal goes over: well
/// under a millisecond of the apply thread (a million keys took 67-85 ms
/// at once, 180 ms with three members on two cores).
const REMOVAL_BUDGET: usize = 8192;

/// What the apply thread hands an image's thread.
enum Piece {
    /// The versions of the next keys.
    Slice(RecordSlice),
    /// Every key was handed over.
    Done,
}

/// An image being taken in slices.
struct Export {
    /// Its revision: versions above it are left out.
    upto: i64,
    /// The compacted revision it was started at: what a compaction there
    /// removes is left out too, whether the removal reached it or not.
    compacted: i64,
    /// The last key handed over (`None`: none yet).
    cursor: Option<Box<[u8]>>,
    /// To the image's thread.
    pieces: mpsc::Sender<Piece>,
}

/// The memory engine: the store and the images being taken of it.
#[derive(Default)]
pub struct MemoryEngine {
    store: MemStore,
    exports: Vec<Export>,
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine")
            .field("revision", &self.store.current_revision())
            .field("images", &self.exports.len())
            .finish()
    }
}

impl MemoryEngine {
    /// The engine over a recovered (or new) store.
    pub fn new(store: MemStore) -> MemoryEngine {
        MemoryEngine {
            store,
            exports: Vec::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &MemStore {
        &self.store
    }

    /// Starts an image of the store at its current revision with header
    /// `h`; its thread writes it to `out` once the slices are through.
    fn start_export<W: Write + Send + 'static>(
        &mut self,
        h: ImageHeader,
        tmp_dir: &Path,
        out: W,
    ) -> Result<std::thread::JoinHandle<Result<W, StorageError>>, StorageError> {
        let (pieces, rx) = mpsc::channel();
        let tmp_dir = tmp_dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("memory-image".into())
            .spawn(move || assemble(&h, rx, &tmp_dir, out))
            .map_err(|e| StorageError::io("start the image thread", e))?;
        self.store.hold_compaction();
        self.exports.push(Export {
            upto: self.store.current_revision(),
            compacted: self.store.compact_main_revision(),
            cursor: None,
            pieces,
        });
        Ok(thread)
    }

    fn header(&self, point: &AppliedPoint) -> ImageHeader {
        point.header(
            self.store.current_revision(),
            self.store.compact_main_revision(),
        )
    }
}

/// The image's thread: gathers the slices, then writes them in revision
/// order. Ends with an error if the apply thread gives up on the image
/// (the state was replaced by a snapshot meanwhile).
fn assemble<W: Write>(
    h: &ImageHeader,
    pieces: mpsc::Receiver<Piece>,
    tmp_dir: &Path,
    out: W,
) -> Result<W, StorageError> {
    let mut sorter = RevisionSorter::new(tmp_dir, RUN_BYTES);
    loop {
        match pieces.recv() {
            Ok(Piece::Slice(s)) => sorter
                .push(s)
                .map_err(|e| StorageError::io("spill the image's versions", e))?,
            Ok(Piece::Done) => break,
            Err(_) => {
                return Err(StorageError::Image(
                    "image abandoned: the state was replaced before it was through".into(),
                ))
            }
        }
    }
    sorter
        .finish(h, out)
        .map_err(|e| StorageError::io("write the image", e))
}

impl KvEngine for MemoryEngine {
    type Txn<'a> = WriteTxn<'a>;

    fn current_revision(&self) -> i64 {
        self.store.current_revision()
    }
    fn compact_main_revision(&self) -> i64 {
        self.store.compact_main_revision()
    }
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        self.store.range(key, end, opts)
    }
    fn count_slice(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
        max: usize,
    ) -> Result<(i64, Option<Vec<u8>>), MvccError> {
        self.store.count_slice(key, end, rev, max)
    }
    fn page_count(&self, key: &[u8], end: &[u8], rev: i64) -> Option<i64> {
        self.store.page_count(key, end, rev)
    }
    fn remember_page(&self, key: Vec<u8>, end: &[u8], rev: i64, count: i64) {
        self.store.remember_page(key, end, rev, count)
    }
    fn history(
        &self,
        key: &[u8],
        end: &[u8],
        from: i64,
        max: usize,
    ) -> Result<Vec<Event>, MvccError> {
        KvEngine::history(&self.store, key, end, from, max)
    }
    fn write(&mut self) -> WriteTxn<'_> {
        self.store.write()
    }
    fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        // A million keys at once held the apply thread 67-180 ms.
        self.store.compact_in_slices(rev)
    }
    fn key_count(&self) -> usize {
        self.store.key_count()
    }
    fn approximate_size_bytes(&self) -> u64 {
        self.store.approximate_size_bytes()
    }
}

impl StateEngine for MemoryEngine {
    fn commit(&mut self, _: &AppliedPoint) -> Result<(), StorageError> {
        // The WAL holds every applied entry already.
        Ok(())
    }

    fn image(&mut self, point: &AppliedPoint, tmp_dir: &Path) -> Result<ImageJob, StorageError> {
        let file = unlinked_temp(tmp_dir, &format!("image-{}.tmp", point.index))?;
        let h = self.header(point);
        self.start_export(h, tmp_dir, BufWriter::new(file))
            .map(ImageJob::Writing)
    }

    fn has_idle_work(&self) -> bool {
        !self.exports.is_empty() || self.store.removal_pending()
    }

    fn compaction_pending(&self) -> bool {
        self.store.removal_pending()
    }

    fn idle_step(&mut self) -> bool {
        if self.exports.is_empty() {
            // Images first: a removal waits for them anyway (it is held).
            self.store.removal_step(REMOVAL_BUDGET);
            return self.has_idle_work();
        }
        let store = &mut self.store;
        let mut finished = 0;
        self.exports.retain_mut(|x| {
            let mut slice = RecordSlice::default();
            let next = store.export_slice(
                x.cursor.as_deref(),
                x.upto,
                x.compacted,
                SLICE_BUDGET,
                &mut |v| slice.push(v),
            );
            let sent = x.pieces.send(Piece::Slice(slice)).is_ok();
            let done = match next {
                Some(key) if sent => {
                    x.cursor = Some(key);
                    false
                }
                // Through, or the image's thread is gone (it failed).
                _ => {
                    let _ = x.pieces.send(Piece::Done);
                    true
                }
            };
            if done {
                finished += 1;
            }
            !done
        });
        for _ in 0..finished {
            store.release_compaction();
        }
        self.has_idle_work()
    }

    fn checkpoint(&mut self, point: &AppliedPoint, data_dir: &Path) -> Checkpoint {
        let index = point.index;
        let started = std::time::Instant::now();
        let h = self.header(point);
        let thread = snapshots::create_tmp(data_dir, index).and_then(|(file, tmp)| {
            match self.start_export(h, data_dir, BufWriter::new(file)) {
                Ok(t) => Ok((t, tmp)),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(e)
                }
            }
        });
        let dir = data_dir.to_owned();
        Checkpoint::Write(Box::new(move || {
            let (thread, tmp): (_, PathBuf) = thread?;
            let written = (|| {
                let written = thread
                    .join()
                    .map_err(|_| StorageError::Image("the image thread panicked".into()))??;
                let file = written
                    .into_inner()
                    .map_err(|e| StorageError::io("write the snapshot", e.into_error()))?
                    .into_file();
                let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
                let path = snapshots::commit_tmp(&dir, index, file, &tmp)?;
                Ok::<_, StorageError>((path, bytes))
            })();
            let (path, bytes) = written.inspect_err(|_| {
                // A full disk: leave no partial file to fill it further.
                let _ = std::fs::remove_file(&tmp);
            })?;
            tracing::info!(
                index,
                bytes,
                ms = started.elapsed().as_millis() as u64,
                file = %path.display(),
                "snapshot saved"
            );
            Ok(())
        }))
    }

    fn install_job(&self, path: &Path, data_dir: &Path) -> InstallJob<Self> {
        let (path, data_dir) = (path.to_owned(), data_dir.to_owned());
        let watched = self.store.records_events();
        Box::new(move || {
            let file = std::fs::File::open(&path)
                .map_err(|e| StorageError::io(format!("open {}", path.display()), e))?;
            let (h, mut store) = read_into_store(BufReader::new(file), true)?;
            // The rename into snap/ is the moment the new state counts.
            snapshots::adopt(&data_dir, h.index, &path)?;
            store.set_record_events(watched);
            Ok((h, MemoryEngine::new(store)))
        })
    }

    fn defragment_job(&self) -> Option<Box<dyn FnOnce() + Send>> {
        None
    }

    fn set_watched(&mut self, on: bool) {
        self.store.set_record_events(on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::image::{encode_record, write_memory_image, ImageJob};
    use crate::storage::KeyValue;
    use std::io::Read;

    fn put(e: &mut MemoryEngine, k: &str, v: &str) {
        let mut t = e.write();
        t.put_blind(k.as_bytes(), v.as_bytes().to_vec().into(), 0);
        t.end();
    }

    fn read(job: ImageJob) -> Vec<u8> {
        let (mut r, _) = job.open().expect("image");
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("read");
        out
    }

    fn point() -> AppliedPoint {
        AppliedPoint {
            index: 7,
            term: 2,
            ..Default::default()
        }
    }

    #[test]
    fn an_image_taken_in_slices_is_the_state_it_started_at_despite_writes_and_compaction() {
        let mut e = MemoryEngine::default();
        for i in 0..3 * SLICE_BUDGET {
            put(&mut e, &format!("k{i:05}"), "v1");
        }
        for i in 0..50 {
            put(&mut e, &format!("k{i:05}"), "v2");
        }
        let before = e.store().clone();
        let expected = write_memory_image(&before, &e.header(&point()), Vec::new()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let job = e.image(&point(), dir.path()).unwrap();
        // Between slices: new keys before and after the cursor, overwrites,
        // deletes and a compaction that would drop the versions of "v1".
        let mut steps = 0;
        loop {
            put(&mut e, &format!("a{steps}"), "new");
            put(&mut e, &format!("k{:05}", steps * 7), "v3");
            put(&mut e, &format!("z{steps}"), "new");
            let rev = e.current_revision();
            e.compact(rev).unwrap();
            steps += 1;
            // Each step also compacts: the image ends, the removal goes on.
            if !e.idle_step() || e.exports.is_empty() {
                break;
            }
        }
        assert!(steps >= 3, "taken in several slices ({steps})");
        assert_eq!(read(job), expected, "byte for byte the image at the start");
        // Held compaction took effect once the image was through.
        let (h, restored) = read_into_store(&read_image(&mut e)[..], true).unwrap();
        assert_eq!(h.compact_rev, e.compact_main_revision());
        assert!(
            restored
                .range(b"k00000", b"", &Default::default())
                .unwrap()
                .kvs[0]
                .value
                == b"v3"[..]
        );
        assert_eq!(
            e.store().recount_for_tests(),
            (e.key_count(), e.approximate_size_bytes())
        );
        let versions = restored
            .range(b"k", b"l", &Default::default())
            .unwrap()
            .count;
        assert_eq!(versions as usize, 3 * SLICE_BUDGET);
    }

    fn read_image(e: &mut MemoryEngine) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let job = e.image(&point(), dir.path()).unwrap();
        while e.idle_step() {}
        read(job)
    }

    /// A compaction's removal goes in slices between other work, and an
    /// image taken while it is under way is byte for byte the image of a
    /// member that was through with it (members compare their hashes).
    #[test]
    fn a_compaction_is_removed_in_slices_and_images_meanwhile_agree() {
        let (mut slow, mut done) = (MemoryEngine::default(), MemoryEngine::default());
        for e in [&mut slow, &mut done] {
            for round in 0..3 {
                for i in 0..REMOVAL_BUDGET {
                    put(e, &format!("k{i:05}"), &format!("v{round}"));
                }
            }
            let mut t = e.write();
            t.delete_range(b"k0", b"k1");
            t.end();
        }
        let rev = done.current_revision() - 1;
        done.compact(rev).unwrap();
        while done.idle_step() {}
        slow.compact(rev).unwrap();
        assert!(slow.has_idle_work(), "the removal waits for idle turns");
        let dir = tempfile::tempdir().unwrap();
        let job = slow.image(&point(), dir.path()).unwrap();
        while !slow.exports.is_empty() {
            slow.idle_step();
        }
        assert!(
            slow.store().removal_pending(),
            "held while the image was taken"
        );
        assert_eq!(read(job), read_image(&mut done));
        // The image held the removal back; now it goes, a slice a turn.
        let mut turns = 0;
        while slow.idle_step() {
            turns += 1;
        }
        assert!(turns >= 2, "in slices ({turns} turns)");
        assert_eq!(slow.store(), done.store());
        assert_eq!(
            slow.store().recount_for_tests(),
            (slow.key_count(), slow.approximate_size_bytes())
        );
    }

    #[test]
    fn an_image_abandoned_by_a_replaced_state_fails_instead_of_hanging() {
        let mut e = MemoryEngine::default();
        for i in 0..2 * SLICE_BUDGET {
            put(&mut e, &format!("k{i}"), "v");
        }
        let dir = tempfile::tempdir().unwrap();
        let job = e.image(&point(), dir.path()).unwrap();
        e.idle_step();
        drop(e);
        let err = job.open().map(|_| ()).expect_err("abandoned");
        assert!(err.contains("abandoned"), "{err}");
    }

    #[test]
    fn records_are_encoded_as_prost_encodes_them() {
        let mut s = MemStore::new();
        let mut t = s.write();
        t.put(b"a", b"x".to_vec().into(), 5);
        t.put(b"", Vec::new().into(), 0);
        t.end();
        let mut t = s.write();
        t.delete_range(b"a", b"");
        t.end();
        let mut n = 0;
        s.export_slice(None, i64::MAX, -1, usize::MAX, &mut |v| {
            let mut mine = RecordSlice::default();
            mine.push(v);
            let kv = KeyValue {
                key: v.key.to_vec(),
                create_revision: v.create_revision,
                mod_revision: v.rev.main,
                version: v.version,
                value: Vec::new().into(),
                lease: v.lease,
            };
            let theirs = encode_record(&kv, bytes::Bytes::copy_from_slice(v.value));
            assert_eq!(mine.bytes_for_tests(), &theirs[..]);
            n += 1;
        });
        assert_eq!(n, 3);
    }
}
