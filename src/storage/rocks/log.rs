//! [`RocksLog`]: the `rocksdb` engine's [`LogStore`], written by the
//! WalWriter; [`RocksLogReader`] reads entries back for followers far behind
//! (the in-memory Raft log keeps only its tail on this engine).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use rocksdb::{ReadOptions, WriteBatch, WriteOptions, DB};

use super::{cf, db_error, encode, index_key, Dbs, CF_META, CF_RAFT, META_HARD_STATE};
use crate::storage::engine::{LogReader, LogStore};
use crate::storage::StorageError;

/// Raft entries and hard state in the `raft` and `meta` families.
pub struct RocksLog {
    /// The raft database.
    db: Arc<DB>,
    /// Both databases (background purges are counted on them).
    dbs: Dbs,
    /// The kv database, flushed before entries it was built from are dropped.
    kv: Arc<DB>,
    /// A purge is running on its thread.
    purging: Arc<AtomicBool>,
    buf: Vec<u8>,
    batch: WriteBatch,
    /// Index of the last entry written (to drop a replaced suffix).
    last: u64,
    sync: WriteOptions,
}

impl RocksLog {
    /// Wraps the opened databases; the log ends at `last`.
    pub fn new(dbs: &Dbs, last: u64) -> RocksLog {
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        RocksLog {
            db: dbs.raft.clone(),
            dbs: dbs.clone(),
            kv: dbs.kv.clone(),
            purging: Arc::new(AtomicBool::new(false)),
            buf: Vec::new(),
            batch: WriteBatch::default(),
            last,
            sync,
        }
    }
}

impl LogStore for RocksLog {
    fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) {
        let raft = cf(&self.db, CF_RAFT);
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            for e in entries {
                self.buf.clear();
                e.write_to_vec(&mut self.buf)
                    .unwrap_or_else(|err| unreachable!("an entry always encodes: {err}"));
                self.batch.put_cf(raft, index_key(e.index), &self.buf);
            }
            if first.index <= self.last && last.index < self.last {
                // A new leader's entries replace our tail: drop what is beyond.
                self.batch.delete_range_cf(
                    raft,
                    index_key(last.index + 1),
                    index_key(self.last + 1),
                );
            }
            self.last = last.index;
        }
        if let Some(hs) = hard_state {
            self.batch
                .put_cf(cf(&self.db, CF_META), META_HARD_STATE, encode(hs));
        }
    }

    fn reset(&mut self, meta: &raft::eraftpb::SnapshotMetadata, hard_state: &HardState) {
        // The install dropped the Raft log already (RocksKv::install_image);
        // what is still buffered may only hold entries the snapshot covers.
        let raft = cf(&self.db, CF_RAFT);
        self.batch
            .delete_range_cf(raft, index_key(0), index_key(meta.index.saturating_add(1)));
        self.batch
            .put_cf(cf(&self.db, CF_META), META_HARD_STATE, encode(hard_state));
        self.last = meta.index;
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let batch = std::mem::take(&mut self.batch);
        self.db
            .write_opt(batch, &self.sync)
            .map_err(|e| db_error("write the raft log", e))
    }

    fn purge(&mut self, _snapshot: u64, upto: u64) -> Result<(), StorageError> {
        // The catch-up entries after `upto` stay: the in-memory log reads
        // them back from here.
        if self.purging.swap(true, Ordering::AcqRel) {
            // One at a time; the next snapshot's purge covers this one.
            return Ok(());
        }
        let raft = self.db.clone();
        let kv = self.kv.clone();
        let busy = self.purging.clone();
        // Flushing memtables takes a while: not on the thread Raft waits on.
        super::spawn_background(&self.dbs, "raft-log-purge", move || {
            if let Err(e) = purge(&raft, &kv, upto) {
                tracing::warn!(error = %e, upto, "raft log purge failed");
            }
            busy.store(false, Ordering::Release);
        })
        .map_err(|e| {
            self.purging.store(false, Ordering::Release);
            StorageError::io("start the purge thread", e)
        })
    }
}

/// Reads entries from the raft family, on a worker thread.
pub struct RocksLogReader {
    db: Arc<DB>,
}

impl RocksLogReader {
    /// Reads from the opened databases' raft family.
    pub fn new(dbs: &Dbs) -> RocksLogReader {
        RocksLogReader {
            db: dbs.raft.clone(),
        }
    }
}

impl LogReader for RocksLogReader {
    fn read(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(index_key(high));
        // A follower's catch-up reads each entry once: not worth evicting
        // what the cache holds for it.
        opts.fill_cache(false);
        let start = index_key(low);
        let iter = self.db.iterator_cf_opt(
            cf(&self.db, CF_RAFT),
            opts,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out: Vec<Entry> = Vec::new();
        let mut size = 0u64;
        for item in iter {
            let (_, v) = item.map_err(|e| db_error("read the raft log", e))?;
            let e = Entry::parse_from_bytes(&v)
                .map_err(|e| StorageError::Rocks(format!("raft entry: {e}")))?;
            if e.index != low + out.len() as u64 {
                // Purged meanwhile (or never there): what follows is no use.
                break;
            }
            size += v.len() as u64;
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }
}

/// The applied state up to `upto` is only in the kv database's memtables (it
/// is written without a WAL): flush it to disk, atomically across its
/// families, before the entries that could rebuild it go.
fn purge(raft: &DB, kv: &DB, upto: u64) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    super::flush_kv(kv)?;
    raft.delete_range_cf(cf(raft, CF_RAFT), index_key(0), index_key(upto + 1))
        .map_err(|e| db_error("truncate the raft log", e))?;
    tracing::info!(
        upto,
        ms = started.elapsed().as_millis() as u64,
        "kv database flushed, raft log truncated"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::SnapshotMetadata;

    use super::*;
    use crate::storage::engine::AppliedPoint;
    use crate::storage::log_conformance::{LogHarness, Reopened};
    use crate::storage::raft_log::RaftLog;

    /// Both databases in a temporary data dir, created as
    /// `storage::bootstrap` does and reopened as `storage::open` does.
    struct Harness {
        dir: tempfile::TempDir,
        dbs: Option<Dbs>,
    }

    impl LogHarness for Harness {
        type Log = RocksLog;

        fn create(&mut self, start: &SnapshotMetadata, hs: &HardState) -> RocksLog {
            let dbs = super::super::open(self.dir.path(), true).expect("create the databases");
            let point = AppliedPoint {
                index: start.index,
                term: start.term,
                conf_state: start.get_conf_state().clone(),
                ..Default::default()
            };
            super::super::bootstrap(&dbs, &point, hs).expect("bootstrap");
            let log = RocksLog::new(&dbs, start.index);
            self.dbs = Some(dbs);
            log
        }

        fn reopen(&mut self, log: RocksLog, base: &SnapshotMetadata) -> Reopened<RocksLog> {
            let dbs = self.dbs.take().expect("created before reopened");
            // A purge runs on a thread of its own: let it finish (what a
            // clean shutdown waits for too), then close both databases.
            while dbs.background.load(Ordering::Acquire) > 0 {
                #[allow(clippy::disallowed_methods)] // a test thread, not async
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(log);
            drop(dbs);
            let dbs = super::super::open_with(self.dir.path(), false, Some(64 << 10))
                .expect("reopen the databases");
            let meta = super::super::read_meta(&dbs).expect("read meta");
            let entries = super::super::read_entries(&dbs.raft, base.index).expect("entries");
            let mut raft = RaftLog::from_snapshot(base.clone(), meta.hard_state);
            raft.append(&entries).expect("recovered entries append");
            let oldest = dbs
                .raft
                .iterator_cf(cf(&dbs.raft, CF_RAFT), rocksdb::IteratorMode::Start)
                .next()
                .map(|item| {
                    let (k, _) = item.expect("read the raft log");
                    u64::from_be_bytes(<[u8; 8]>::try_from(&*k).expect("8-byte index keys"))
                });
            let log = RocksLog::new(&dbs, raft.last());
            self.dbs = Some(dbs);
            Reopened { log, raft, oldest }
        }

        fn install(&mut self, _: &mut RocksLog, _: &SnapshotMetadata) {
            // RocksKv::install_image drops the whole Raft log before the
            // image goes in (the same delete, synced).
            let dbs = self.dbs.as_ref().expect("created before installing");
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(&dbs.raft, CF_RAFT), [0u8; 8], [0xffu8; 8]);
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            dbs.raft.write_opt(batch, &sync).expect("drop the raft log");
        }
    }

    fn harness() -> Harness {
        Harness {
            dir: tempfile::tempdir().expect("a temporary directory"),
            dbs: None,
        }
    }

    /// Entries written through the log store are read back by index, in
    /// order, about `max_bytes` at most, and none once purged.
    #[test]
    fn the_reader_reads_back_what_the_store_wrote() {
        let mut h = harness();
        let start = SnapshotMetadata {
            index: 1,
            term: 1,
            ..Default::default()
        };
        let mut log = h.create(&start, &HardState::default());
        let ents: Vec<Entry> = (2..=100)
            .map(|i| Entry {
                index: i,
                term: 2,
                data: vec![i as u8; 100].into(),
                ..Default::default()
            })
            .collect();
        log.append(&ents, None);
        log.sync().unwrap();
        let reader = RocksLogReader::new(h.dbs.as_ref().unwrap());
        let got = reader.read(10, 20, u64::MAX).unwrap();
        assert_eq!(got, ents[8..18].to_vec());
        let got = reader.read(10, 100, 350).unwrap();
        assert_eq!(got.len(), 3, "about 350 bytes of ~105-byte entries");
        assert_eq!(reader.read(50, 51, 1).unwrap().len(), 1, "at least one");
        // A purge after a snapshot at 40 keeps what follows 30.
        log.purge(40, 30).unwrap();
        let dbs = h.dbs.as_ref().unwrap();
        while dbs.background.load(Ordering::Acquire) > 0 {
            #[allow(clippy::disallowed_methods)] // a test thread, not async
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(reader.read(10, 50, u64::MAX).unwrap().is_empty());
        assert_eq!(
            reader.read(31, 33, u64::MAX).unwrap(),
            ents[29..31].to_vec()
        );
    }

    /// The LogStore suite against RocksDB.
    mod conforms {
        use super::harness;
        crate::storage::log_conformance::log_store_conformance!(harness());
    }
}
