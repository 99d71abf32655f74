//! Puts the records of a memory-engine image in revision order with bounded
//! memory. The apply thread hands the image's thread the versions key by
//! key ([`RecordSlice`]s); the image wants them by revision. Holding every
//! slice until the last one came would copy the whole state (at a million
//! keys, hundreds of MiB on top of the store itself, each time a snapshot
//! is taken), so once the slices held pass a budget they are sorted and
//! spilled as a run to an unlinked temp file; the image is then merged
//! from the runs. A state smaller than the budget never touches the disk.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::image::{
    revision_key, unlinked_temp, write_sorted, ImageHeader, ImageWriter, RecordSlice,
};

/// Bytes of slices held before they are spilled as a run.
pub const RUN_BYTES: usize = 16 << 20;

/// Buffer of each run while merging.
const MERGE_BUFFER: usize = 64 << 10;

/// Names the temp files of concurrent images apart.
static NEXT_SPILL: AtomicU64 = AtomicU64::new(0);

/// Gathers slices; see the module documentation.
pub struct RevisionSorter {
    dir: PathBuf,
    budget: usize,
    held: Vec<RecordSlice>,
    held_bytes: usize,
    spill: Option<Spill>,
}

/// The runs written so far: one after the other in one file.
struct Spill {
    file: File,
    /// Start and end offset of each run.
    runs: Vec<(u64, u64)>,
    len: u64,
}

impl RevisionSorter {
    /// A sorter whose runs, if any, go to an unlinked file in `dir`, each
    /// at most about `budget` bytes.
    pub fn new(dir: impl Into<PathBuf>, budget: usize) -> RevisionSorter {
        RevisionSorter {
            dir: dir.into(),
            budget,
            held: Vec::new(),
            held_bytes: 0,
            spill: None,
        }
    }

    /// Adds the next slice.
    pub fn push(&mut self, slice: RecordSlice) -> io::Result<()> {
        self.held_bytes += slice.memory_bytes();
        self.held.push(slice);
        if self.held_bytes >= self.budget {
            self.spill_held()?;
        }
        Ok(())
    }

    /// Number of runs spilled so far.
    pub fn runs(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.runs.len())
    }

    /// Writes what is held as one run, in revision order.
    fn spill_held(&mut self) -> io::Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        if self.spill.is_none() {
            let n = NEXT_SPILL.fetch_add(1, Ordering::Relaxed);
            let name = format!("image-sort-{}-{n}.tmp", std::process::id());
            let file = unlinked_temp(&self.dir, &name).map_err(io::Error::other)?;
            self.spill = Some(Spill {
                file,
                runs: Vec::new(),
                len: 0,
            });
        }
        let spill = self.spill.as_mut().expect("created above");
        let start = spill.len;
        let mut out = BufWriter::with_capacity(MERGE_BUFFER, &spill.file);
        let mut written = 0u64;
        for (rev, bytes) in sorted(&self.held) {
            out.write_all(&revision_key(rev))?;
            out.write_all(&(bytes.len() as u32).to_le_bytes())?;
            out.write_all(bytes)?;
            written += 20 + bytes.len() as u64;
        }
        out.flush()?;
        drop(out);
        spill.len += written;
        spill.runs.push((start, spill.len));
        self.held.clear();
        self.held_bytes = 0;
        Ok(())
    }

    /// Writes the image: every record pushed, in revision order.
    pub fn finish<W: Write>(mut self, h: &ImageHeader, out: W) -> io::Result<W> {
        if self.spill.is_none() {
            return write_sorted(h, &self.held, out);
        }
        self.spill_held()?;
        let spill = self.spill.take().expect("spilled");
        let mut readers: Vec<RunReader<'_>> = spill
            .runs
            .iter()
            .map(|&(start, end)| RunReader::new(&spill.file, start, end))
            .collect();
        let mut heads = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(key) = r.advance()? {
                heads.push(Reverse((key, i)));
            }
        }
        let mut w = ImageWriter::new(out, h)?;
        while let Some(Reverse((key, i))) = heads.pop() {
            w.raw_record(&key, &readers[i].value)?;
            if let Some(next) = readers[i].advance()? {
                heads.push(Reverse((next, i)));
            }
        }
        w.finish()
    }
}

/// The records of `slices` (revision, encoded record), by revision.
fn sorted(slices: &[RecordSlice]) -> Vec<(crate::storage::Revision, &[u8])> {
    let mut all: Vec<_> = slices.iter().flat_map(RecordSlice::records).collect();
    all.sort_unstable_by_key(|r| r.0);
    all
}

/// Reads one run's records back, buffered, at its own offsets.
struct RunReader<'f> {
    input: BufReader<At<'f>>,
    /// The current record's encoded value.
    value: Vec<u8>,
}

impl<'f> RunReader<'f> {
    fn new(file: &'f File, start: u64, end: u64) -> RunReader<'f> {
        RunReader {
            input: BufReader::with_capacity(
                MERGE_BUFFER,
                At {
                    file,
                    pos: start,
                    end,
                },
            ),
            value: Vec::new(),
        }
    }

    /// Moves to the next record; its revision key, or `None` at the end.
    fn advance(&mut self) -> io::Result<Option<[u8; 16]>> {
        let mut key = [0u8; 16];
        match self.input.read_exact(&mut key) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        self.value.resize(u32::from_le_bytes(len) as usize, 0);
        self.input.read_exact(&mut self.value)?;
        Ok(Some(key))
    }
}

/// A window of a file read by offset (runs share the file).
struct At<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = (self.end - self.pos).min(buf.len() as u64) as usize;
        if left == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..left], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the image's sort file ended early",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::mvcc::MemStore;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A store whose key order and revision order disagree, with
    /// tombstones and several versions per key.
    fn store() -> MemStore {
        let mut rng = StdRng::seed_from_u64(7);
        let mut s = MemStore::new();
        for i in 0..5_000u32 {
            let k = format!("k{:05}", rng.gen_range(0..1_500u32));
            let mut t = s.write();
            if i % 17 == 0 {
                t.delete_range(k.as_bytes(), b"");
            } else {
                t.put(
                    k.as_bytes(),
                    vec![(i % 251) as u8; (i % 300) as usize].into(),
                    0,
                );
            }
            t.end();
        }
        s
    }

    fn slices(s: &MemStore, per: usize) -> Vec<RecordSlice> {
        let mut out = Vec::new();
        let mut cursor: Option<Box<[u8]>> = None;
        loop {
            let mut slice = RecordSlice::default();
            let next = s.export_slice(
                cursor.as_deref(),
                i64::MAX,
                s.compact_main_revision(),
                per,
                &mut |v| slice.push(v),
            );
            out.push(slice);
            match next {
                Some(k) => cursor = Some(k),
                None => return out,
            }
        }
    }

    #[test]
    fn spilled_runs_merge_into_the_same_image_as_an_in_memory_sort() {
        let s = store();
        let h = ImageHeader {
            current_rev: s.current_revision(),
            ..Default::default()
        };
        let want = write_sorted(&h, &slices(&s, 100), Vec::new()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for budget in [1, 4 << 10, 64 << 10, usize::MAX] {
            let mut sorter = RevisionSorter::new(dir.path(), budget);
            for slice in slices(&s, 100) {
                sorter.push(slice).unwrap();
            }
            let runs = sorter.runs();
            if budget == usize::MAX {
                assert_eq!(runs, 0);
            } else {
                assert!(runs > 1, "budget {budget}: {runs} runs");
            }
            let got = sorter.finish(&h, Vec::new()).unwrap();
            assert!(got == want, "budget {budget}: the images differ");
        }
        // The spill file was unlinked at once: nothing is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn memory_held_is_bounded_by_the_budget() {
        let s = store();
        let dir = tempfile::tempdir().unwrap();
        let mut sorter = RevisionSorter::new(dir.path(), 32 << 10);
        for slice in slices(&s, 40) {
            sorter.push(slice).unwrap();
            assert!(sorter.held_bytes < 32 << 10);
        }
        assert!(sorter.runs() > 1);
    }
}
