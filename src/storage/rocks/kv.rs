//! [`RocksKv`]: etcd's MVCC over RocksDB. The key index is in memory; every
//! version is stored under its revision in the `kv` family.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::eraftpb::ConfState;
use rocksdb::{WriteBatch, WriteOptions, DB};

use bytes::Bytes;

use super::{
    cf, db_error, encode, pair, Dbs, CF_KV, CF_META, META_APPLIED, META_AUTH, META_CONF_STATE,
    META_INSTALLING, META_LEASES, META_MEMBERSHIP, META_REMOVING, META_REVISION,
};
use crate::proto::{metastorepb, mvccpb};
use crate::storage::engine::{
    AppliedPoint, Checkpoint, Fill, InstallJob, KvEngine, KvTxn, StateEngine,
};
use crate::storage::image::{
    encode_record, parse_revision_key, read_into_store_and, revision_key, ImageHeader, ImageJob,
    ImageWriter,
};
use crate::storage::memory::mvcc::{MemStore, Rebuild, WriteTxn};
use crate::storage::StorageError;
use crate::storage::{Event, EventKind, KeyValue, MvccError, RangeOptions, RangeResult, Revision};

fn corrupt(what: String) -> MvccError {
    MvccError::CorruptSnapshot(what)
}

/// How often the on-disk size estimate is refreshed (a RocksDB property read).
const SIZE_REFRESH: Duration = Duration::from_secs(1);

/// Keys and versions of the index the first slice of a compaction's
/// removal goes over (the memory engine's budget; the deletes join one
/// write). The next slices aim at [`REMOVAL_TIME`], within
/// [`REMOVAL_KEYS`].
const REMOVAL_BUDGET: usize = 8192;

/// The time a slice of a removal aims at: at ten million keys, slices of
/// 8,192 keys (each a write of up to as many deletes) held the apply
/// thread long enough to make put p99 during a Compact 2.7x the p99
/// before it.
const REMOVAL_TIME: Duration = Duration::from_millis(1);

/// The rest between slices of a removal: a fifth of the apply thread's
/// time goes to it (etcd sleeps 10 ms between batches of 1,000 keys). At
/// ten million keys the removal then takes a few seconds.
const REMOVAL_REST: Duration = Duration::from_millis(4);

/// Keys a slice of a removal goes over: at least, at most.
const REMOVAL_KEYS: (usize, usize) = (256, 65_536);

/// The MVCC store of the `rocksdb` engine.
///
/// Writes go to an in-memory index at once and to a pending write batch;
/// [`RocksKv::commit`] writes the batch together with the applied index, once
/// per applied batch of entries. Values written in the pending batch are kept
/// in `pending` so reads inside the batch (a txn reading its own writes, or
/// a later entry of the same batch) see them.
pub struct RocksKv {
    db: Arc<DB>,
    /// Both databases (an install also drops the Raft log).
    dbs: Dbs,
    index: MemStore,
    batch: WriteBatch,
    pending: HashMap<Revision, Bytes>,
    compacting: Arc<AtomicBool>,
    /// A write of removals failed: versions the index dropped may be left
    /// in the kv family, so `META_REMOVING` stays for the next start.
    removals_lost: bool,
    /// Keys and versions the next slice of a removal goes over.
    removal_budget: usize,
    /// A slice of the removal under way ran: the next one rests first (the
    /// first goes at once, as etcd's first batch does).
    removal_begun: bool,
    size: Cell<(u64, Option<Instant>)>,
    /// Bytes and entries of the versions written so far (revision key and
    /// stored value): the average prices the entries still in memtables.
    kv_written: (u64, u64),
    no_wal: WriteOptions,
    /// The conf state last written (written again only when it changes).
    conf_state: Option<ConfState>,
    /// The membership last written (likewise).
    membership: Option<metastorepb::Membership>,
    /// Write txns return complete events (values and previous states filled
    /// in): someone watches.
    fill_events: bool,
    /// Version of the lease table last written.
    leases_written: Option<u64>,
    /// The auth store's revision and switch last written (every change
    /// moves one of them).
    auth_written: Option<(u64, bool)>,
}

impl std::fmt::Debug for RocksKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKv")
            .field("revision", &self.index.current_revision())
            .field("keys", &self.index.key_count())
            .finish_non_exhaustive()
    }
}

impl RocksKv {
    /// Rebuilds the key index from the `kv` family of an opened database
    /// whose meta says the store is at `revision` = (current, compacted).
    pub fn open(dbs: &Dbs, revision: (i64, i64)) -> Result<RocksKv, StorageError> {
        let db = dbs.kv.clone();
        let mut rebuild = Rebuild::new(false);
        let started = Instant::now();
        let mut n = 0u64;
        for item in db.iterator_cf(cf(&db, CF_KV), rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| db_error("read the kv family", e))?;
            let bad = |why: String| {
                StorageError::Rocks(format!(
                    "kv record {}: {why}",
                    k.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ))
            };
            let rev = parse_revision_key(&k).ok_or_else(|| bad("key is not a revision".into()))?;
            let kv = mvccpb::KeyValue::decode(&*v).map_err(|e| bad(e.to_string()))?;
            if kv.mod_revision != rev.main {
                return Err(bad(format!("holds mod_revision {}", kv.mod_revision)));
            }
            // The index keeps no value (Rebuild drops it).
            rebuild
                .push(kv.into(), rev.sub)
                .map_err(|e| bad(e.to_string()))?;
            n += 1;
        }
        let removing = db
            .get_cf(cf(&db, CF_META), META_REMOVING)
            .map_err(|e| db_error("read the meta family", e))?
            .is_some();
        let index = if removing {
            // Stopped midway: the removal goes on (RocksKv::idle_step).
            rebuild.finish_mid_removal(revision.0, revision.1)
        } else {
            rebuild.finish(revision.0, revision.1)
        }
        .map_err(|e| StorageError::Rocks(format!("kv family: {e}")))?;
        tracing::info!(
            versions = n,
            keys = index.key_count(),
            revision = index.current_revision(),
            ms = started.elapsed().as_millis() as u64,
            "key index rebuilt from rocksdb"
        );
        Ok(RocksKv::with_index(dbs, index))
    }

    /// Number of keys live at the current revision.
    pub fn key_count(&self) -> usize {
        self.index.key_count()
    }

    /// Bytes on disk and in memtables for the versions (refreshed at most
    /// once a second) plus the in-memory index.
    pub fn approximate_size_bytes(&self) -> u64 {
        let (bytes, at) = self.size.get();
        if at.is_some_and(|t| t.elapsed() < SIZE_REFRESH) {
            return bytes;
        }
        let kv = cf(&self.db, CF_KV);
        let prop = |name: &str| {
            self.db
                .property_int_value_cf(kv, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        // The memtables' data, not their memory: `cur-size-all-mem-tables`
        // counts the arena blocks allocated, about 3x the data at first and
        // in jumps (a 100 kB quota was hit after 19 to 34 puts of 1 kB;
        // the memory engine, which counts data, after 89).
        let (written, versions) = self.kv_written;
        let in_memtables = prop("rocksdb.num-entries-active-mem-table")
            + prop("rocksdb.num-entries-imm-mem-tables");
        let bytes = prop("rocksdb.estimate-live-data-size")
            + in_memtables * written.checked_div(versions).unwrap_or(0)
            + self.index.approximate_size_bytes();
        self.size.set((bytes, Some(Instant::now())));
        bytes
    }

    /// Writes the pending changes with the applied index, term and conf
    /// state, in one write batch, to the memtables only: an (atomic) flush
    /// makes it durable, and until then the Raft log holds the entries that
    /// produced it.
    pub fn commit(&mut self, point: &AppliedPoint) -> Result<(), StorageError> {
        let meta = cf(&self.db, CF_META);
        let mut batch = std::mem::take(&mut self.batch);
        batch.put_cf(meta, META_APPLIED, pair(point.index, point.term));
        if self.conf_state.as_ref() != Some(&point.conf_state) {
            batch.put_cf(meta, META_CONF_STATE, encode(&point.conf_state));
            self.conf_state = Some(point.conf_state.clone());
        }
        if self.membership.as_ref() != Some(&point.membership) {
            batch.put_cf(meta, META_MEMBERSHIP, point.membership.encode_to_vec());
            self.membership = Some(point.membership.clone());
        }
        if self.leases_written != Some(point.leases.version()) {
            batch.put_cf(meta, META_LEASES, point.leases.encode());
            self.leases_written = Some(point.leases.version());
        }
        let auth = (point.auth.revision, point.auth.enabled);
        if self.auth_written != Some(auth) {
            batch.put_cf(meta, META_AUTH, point.auth.encode_to_vec());
            self.auth_written = Some(auth);
        }
        batch.put_cf(
            meta,
            META_REVISION,
            pair(
                self.index.current_revision() as u64,
                self.index.compact_main_revision() as u64,
            ),
        );
        self.db
            .write_opt(batch, &self.no_wal)
            .map_err(|e| db_error("write applied changes", e))?;
        self.kv_written.0 += self
            .pending
            .values()
            .map(|v| v.len() as u64 + 16)
            .sum::<u64>();
        self.kv_written.1 += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// After etcd's Compact removed versions: let RocksDB drop them from its
    /// files now (on a thread of its own; one at a time).
    fn compact_files(&self, rev: i64) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let db = self.db.clone();
        let busy = self.compacting.clone();
        let end = revision_key(Revision::new(rev.saturating_add(1), 0));
        let spawned = super::spawn_background(&self.dbs, "rocksdb-compact", move || {
            let started = Instant::now();
            fail::fail_point!("engine::compact_files");
            db.compact_range_cf(cf(&db, CF_KV), None::<&[u8]>, Some(&end[..]));
            tracing::info!(
                upto = rev,
                ms = started.elapsed().as_millis() as u64,
                "rocksdb compaction of the kv family done"
            );
            busy.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.compacting.store(false, Ordering::Release);
        }
    }

    /// A job that compacts every file of the kv database, to run off the
    /// apply thread (Maintenance.Defragment).
    pub fn defragment_job(&self) -> impl FnOnce() + Send + 'static {
        let db = self.db.clone();
        let busy = super::Busy::start(&self.dbs);
        move || {
            let _busy = busy;
            fail::fail_point!("engine::defrag");
            for name in [CF_KV, CF_META] {
                db.compact_range_cf(cf(&db, name), None::<&[u8]>, None::<&[u8]>);
            }
        }
    }

    /// The kv database (for snapshots and tests).
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// Both databases.
    pub fn dbs(&self) -> &Dbs {
        &self.dbs
    }
}

impl RocksKv {
    /// Starts streaming a consistent image of the applied state (see
    /// [`image`](crate::storage::image)) into `out` on a thread of its own.
    /// The RocksDB snapshot is taken before this returns, between applied
    /// batches, so the image is exactly the state as of this call while
    /// applying goes on.
    pub fn spawn_image<W: Write + Send + 'static>(
        &self,
        out: W,
    ) -> Result<JoinHandle<Result<W, StorageError>>, StorageError> {
        if !self.batch.is_empty() {
            return Err(StorageError::Rocks(
                "an image was asked for inside an applied batch".into(),
            ));
        }
        let db = self.db.clone();
        let (taken, wait) = std::sync::mpsc::sync_channel(1);
        let busy = super::Busy::start(&self.dbs);
        let handle = std::thread::Builder::new()
            .name("rocksdb-image".into())
            .spawn(move || {
                let _busy = busy;
                let snap = db.snapshot();
                let _ = taken.send(());
                write_image(&db, &snap, out)
            })
            .map_err(|e| StorageError::io("start the image thread", e))?;
        wait.recv()
            .map_err(|_| StorageError::Rocks("the image thread died".into()))?;
        Ok(handle)
    }

    /// Replaces the whole state with the image in the file at `path`:
    /// checked completely first (nothing changes if it is damaged), then
    /// written under an "installing" mark so an interrupted install is
    /// refused at start-up rather than half-used. The Raft log is dropped:
    /// the image supersedes it. `members` replaces the image's conf state
    /// and membership (a restore into another cluster).
    pub fn install_image(
        dbs: &Dbs,
        path: &Path,
        members: Option<(&ConfState, &metastorepb::Membership)>,
    ) -> Result<(ImageHeader, RocksKv), StorageError> {
        let db = dbs.kv.clone();
        // Any install ends the wait of a prepared image: one for another
        // file was not wanted (raft ignored it) and goes now.
        let prepared = dbs.prepared.lock().take().filter(|p| p.path == path);
        let (h, index, files) = match prepared {
            // Read and made ready while it arrived: only moved in here.
            Some(p) => (p.header, p.index, p.files),
            None => {
                let input = std::fs::File::open(path)
                    .map(std::io::BufReader::new)
                    .map_err(|e| StorageError::io(format!("open image {}", path.display()), e))?;
                Self::build(&db, input, STAGING)?
            }
        };
        let meta = cf(&db, CF_META);
        let kv_cf = cf(&db, CF_KV);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, META_INSTALLING, b"1");
        batch.delete_range_cf(kv_cf, [0u8; 16], [0xffu8; 16]);
        db.write_opt(batch, &sync)
            .map_err(|e| db_error("start the image install", e))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&dbs.raft, super::CF_RAFT), [0u8; 8], [0xffu8; 8]);
        dbs.raft
            .write_opt(batch, &sync)
            .map_err(|e| db_error("drop the raft log", e))?;
        files.ingest(&db)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, META_APPLIED, pair(h.index, h.term));
        let (cs, membership) = members.unwrap_or((&h.conf_state, &h.membership));
        batch.put_cf(meta, META_CONF_STATE, encode(cs));
        batch.put_cf(meta, META_MEMBERSHIP, membership.encode_to_vec());
        batch.put_cf(meta, META_LEASES, h.leases.encode());
        batch.put_cf(meta, META_AUTH, h.auth.encode_to_vec());
        batch.put_cf(
            meta,
            META_REVISION,
            pair(h.current_rev as u64, h.compact_rev as u64),
        );
        batch.delete_cf(meta, META_INSTALLING);
        // The image holds only what its compaction keeps.
        batch.delete_cf(meta, META_REMOVING);
        db.write_opt(batch, &sync)
            .map_err(|e| db_error("finish the image install", e))?;
        let kv = RocksKv {
            index,
            ..RocksKv::with_index(dbs, MemStore::index_only())
        };
        Ok((h, kv))
    }

    /// One pass over an image: its key index, and its records into table
    /// files staged in the folder `staging` beside the database (the
    /// folder goes when the files do, whatever fails).
    fn build(
        db: &DB,
        input: impl std::io::Read,
        staging: &str,
    ) -> Result<(ImageHeader, MemStore, StagedFiles), StorageError> {
        let table_format = super::kv_file_options();
        let mut files = TableFiles::new(db, &table_format, staging)?;
        let (h, index) = read_into_store_and(input, false, |key, value| files.put(key, value))?;
        Ok((h, index, files.finish()?))
    }

    /// Reads an image from the leader as it arrives (`input`; `path` is
    /// the file it is written to): checks it whole and builds its key index
    /// and table files, so that installing it (`install_image` of `path`)
    /// only moves them in. Nothing of the database changes. Holds one
    /// image at a time: a newer one replaces it.
    pub fn prepare_install(
        dbs: &Dbs,
        path: &Path,
        input: &mut dyn std::io::Read,
    ) -> Result<(), StorageError> {
        let name = path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let (header, index, files) = Self::build(&dbs.kv, input, &format!("{STAGING}-{name}"))?;
        let old = dbs.prepared.lock().replace(Prepared {
            path: path.to_owned(),
            header,
            index,
            files,
        });
        drop(old); // its files go, outside the lock
        Ok(())
    }

    fn with_index(dbs: &Dbs, index: MemStore) -> RocksKv {
        RocksKv {
            db: dbs.kv.clone(),
            dbs: dbs.clone(),
            index,
            batch: WriteBatch::default(),
            pending: HashMap::new(),
            compacting: Arc::new(AtomicBool::new(false)),
            removals_lost: false,
            removal_budget: REMOVAL_BUDGET,
            removal_begun: false,
            size: Cell::new((0, None)),
            kv_written: (0, 0),
            no_wal: {
                let mut wo = WriteOptions::default();
                wo.disable_wal(true);
                wo
            },
            conf_state: None,
            membership: None,
            fill_events: false,
            leases_written: None,
            auth_written: None,
        }
    }
}

impl StateEngine for RocksKv {
    fn commit(&mut self, point: &AppliedPoint) -> Result<(), StorageError> {
        RocksKv::commit(self, point)
    }

    fn image(&mut self, point: &AppliedPoint, tmp_dir: &Path) -> Result<ImageJob, StorageError> {
        let file =
            super::super::image::unlinked_temp(tmp_dir, &format!("image-{}.tmp", point.index))?;
        Ok(ImageJob::Writing(
            self.spawn_image(std::io::BufWriter::new(file))?,
        ))
    }

    fn has_idle_work(&self) -> bool {
        self.index.removal_pending()
    }

    fn compaction_pending(&self) -> bool {
        self.index.removal_pending()
    }

    fn idle_rest(&self) -> Option<Duration> {
        // The removal is the only idle work here.
        (self.removal_begun && self.index.removal_pending()).then_some(REMOVAL_REST)
    }

    fn image_waits(&self) -> bool {
        // An image reads the kv family as it is: midway through a removal
        // some keys still hold what others dropped, and members would hash
        // differently.
        self.index.removal_pending()
    }

    fn idle_step(&mut self) -> bool {
        let started = Instant::now();
        let budget = self.removal_budget;
        let mut removed = Vec::new();
        let more = self.index.removal_step_collect(budget, Some(&mut removed));
        let kv_cf = cf(&self.db, CF_KV);
        let mut batch = WriteBatch::default();
        for r in &removed {
            batch.delete_cf(kv_cf, revision_key(*r));
        }
        if !more && !self.removals_lost {
            batch.delete_cf(cf(&self.db, CF_META), META_REMOVING);
        }
        // Like the applied batches: durable with the next (atomic) flush;
        // a member stopped before it finds META_REMOVING and goes on.
        if let Err(e) = self.db.write_opt(batch, &self.no_wal) {
            // Left in the kv family; the next start removes them again.
            tracing::error!(error = %e, "cannot write a compaction's removals");
            self.removals_lost = true;
            return more;
        }
        // The next slice aims at the time.
        let took = started.elapsed().as_nanos().max(1);
        let aimed = (budget as u128 * REMOVAL_TIME.as_nanos() / took) as usize;
        self.removal_budget = aimed.clamp(REMOVAL_KEYS.0, REMOVAL_KEYS.1);
        self.removal_begun = more;
        if !more {
            let rev = self.index.compact_main_revision();
            tracing::debug!(rev, "compaction's removal done");
            self.compact_files(rev);
            self.removal_budget = REMOVAL_BUDGET;
        }
        more
    }

    fn checkpoint(&mut self, _: &AppliedPoint, _: &Path) -> Checkpoint {
        // The applied state is in RocksDB already: the Raft log up to here
        // may go once the kv database is flushed (RocksLog::purge does).
        Checkpoint::Durable
    }

    fn install_job(&self, path: &Path, _: &Path) -> InstallJob<Self> {
        let dbs = self.dbs.clone();
        let path = path.to_owned();
        Box::new(move || {
            let (h, kv) = RocksKv::install_image(&dbs, &path, None)?;
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove an installed image");
            }
            Ok((h, kv))
        })
    }

    fn defragment_job(&self) -> Option<Box<dyn FnOnce() + Send>> {
        Some(Box::new(RocksKv::defragment_job(self)))
    }

    fn forget_size(&self) {
        self.size.set((0, None));
    }

    fn set_watched(&mut self, on: bool) {
        self.fill_events = on;
        self.index.set_event_prevs(on);
    }
}

/// Table files an install writes its records into, each closed past this
/// size (the family's compactions then work on files of a usual size).
const INGEST_FILE_BYTES: u64 = 64 << 20;

/// Name (or name prefix) of the folders table files are staged in, beside
/// the databases; any left at start-up are removed.
pub(super) const STAGING: &str = "kv-ingest";

/// An image received from the leader, checked and made ready to install
/// while it arrived: its header, its key index and its records as staged
/// table files.
pub struct Prepared {
    path: std::path::PathBuf,
    header: ImageHeader,
    index: MemStore,
    files: StagedFiles,
}

/// An image's records written as table files of the kv family beside the
/// database, then moved into it (RocksDB's external file ingestion).
/// Written through memtables in batches, a million-key image (415 MB) took
/// 5.3 s to install: every record went through a memtable, a flush and the
/// compaction of the files those flushes made. The image's records come in
/// revision order, the family's key order, so they can be written as
/// finished files.
struct TableFiles<'a> {
    writer: rocksdb::SstFileWriter<'a>,
    staged: StagedFiles,
    open: bool,
}

/// Finished table files in their staging folder, which goes when they do
/// (moved into the database by then, or not wanted).
struct StagedFiles {
    dir: std::path::PathBuf,
    files: Vec<std::path::PathBuf>,
}

impl<'a> TableFiles<'a> {
    /// An empty staging folder `name` next to `db`'s; `opts` gives the
    /// table format (the family's own: `super::kv_file_options`).
    fn new(
        db: &DB,
        opts: &'a rocksdb::Options,
        name: &str,
    ) -> Result<TableFiles<'a>, StorageError> {
        let dir = db.path().parent().unwrap_or_else(|| db.path()).join(name);
        let io = |what: &str, e| StorageError::io(format!("{what} {}", dir.display()), e);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io("clear", e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io("create", e))?;
        Ok(TableFiles {
            writer: rocksdb::SstFileWriter::create(opts),
            staged: StagedFiles {
                dir,
                files: Vec::new(),
            },
            open: false,
        })
    }

    /// Adds a record; keys must ascend (an image's do: reading it into the
    /// index checks that).
    fn put(&mut self, key: &[u8; 16], value: &[u8]) -> Result<(), StorageError> {
        let write_error = |e| db_error("write image records into a table file", e);
        if !self.open {
            let file = self
                .staged
                .dir
                .join(format!("{:06}.sst", self.staged.files.len()));
            self.writer.open(&file).map_err(write_error)?;
            self.staged.files.push(file);
            self.open = true;
        }
        self.writer.put(key, value).map_err(write_error)?;
        if self.writer.file_size() >= INGEST_FILE_BYTES {
            self.writer.finish().map_err(write_error)?;
            self.open = false;
        }
        Ok(())
    }

    /// Closes the last file.
    fn finish(mut self) -> Result<StagedFiles, StorageError> {
        if self.open {
            self.writer
                .finish()
                .map_err(|e| db_error("write image records into a table file", e))?;
        }
        Ok(self.staged)
    }
}

impl StagedFiles {
    /// Moves the files into the kv family (the staging folder goes on drop).
    fn ingest(mut self, db: &DB) -> Result<(), StorageError> {
        if self.files.is_empty() {
            return Ok(());
        }
        let mut ingest = rocksdb::IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        db.ingest_external_file_cf_opts(cf(db, CF_KV), &ingest, std::mem::take(&mut self.files))
            .map_err(|e| db_error("ingest the image's table files", e))
    }
}

impl Drop for StagedFiles {
    /// Whatever is left staged (all of it, if the image was damaged or the
    /// install failed) goes; the next install would clear it otherwise.
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the staged table files");
        }
    }
}

/// Streams the image of the state in `snap`.
fn write_image<W: Write>(db: &DB, snap: &rocksdb::Snapshot<'_>, out: W) -> Result<W, StorageError> {
    let meta_cf = cf(db, CF_META);
    let meta = super::meta_from(|key| snap.get_cf(meta_cf, key))?;
    let (index, term) = meta
        .applied
        .ok_or_else(|| StorageError::Rocks("no applied index to image".into()))?;
    let h = ImageHeader {
        index,
        term,
        conf_state: meta.conf_state,
        current_rev: meta.revision.0,
        compact_rev: meta.revision.1,
        membership: meta.membership,
        leases: meta.leases,
        auth: meta.auth,
    };
    let io = |e| StorageError::io("write the image", e);
    let mut w = ImageWriter::new(out, &h).map_err(io)?;
    for item in snap.iterator_cf(cf(db, CF_KV), rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| db_error("read the kv family", e))?;
        w.raw_record(&k, &v).map_err(io)?;
    }
    w.finish().map_err(io)
}

/// Versions one multi-get reads: each pins its block until the chunk is
/// decoded (2048 blocks of about 1 KiB at most).
const READ_CHUNK: usize = 2048;

/// Reads of more values than this leave the block cache as it was: a large
/// range touches blocks once, and inserting each (evicting another) cost a
/// fifth of its time while pushing out the blocks small reads come back to.
const CACHED_READ_MAX: usize = 256;

/// Fills `kvs[i].value` with the value stored at `revs[i]`: from the pending
/// batch if written there, else from RocksDB.
fn fill_values(
    db: &DB,
    pending: &HashMap<Revision, Bytes>,
    kvs: &mut [KeyValue],
    revs: &[Revision],
) -> Result<(), MvccError> {
    let missing = fill_pending(pending, kvs, revs);
    read_values(db, None, kvs, &missing)
}

/// Fills the values written in the pending batch; returns the positions
/// (and revisions) of the others.
fn fill_pending(
    pending: &HashMap<Revision, Bytes>,
    kvs: &mut [KeyValue],
    revs: &[Revision],
) -> Vec<(usize, Revision)> {
    let mut missing = Vec::new();
    for (i, rev) in revs.iter().enumerate() {
        match pending.get(rev) {
            Some(v) => kvs[i].value = v.clone(),
            None => missing.push((i, *rev)),
        }
    }
    missing
}

/// Reads the values at `missing` (positions in `kvs` and their revisions)
/// from the kv family, as of `snapshot` if given. Positions past the end
/// of `kvs` (cut off since) are not read.
fn read_values(
    db: &DB,
    snapshot: Option<&rocksdb::Snapshot<'_>>,
    kvs: &mut [KeyValue],
    missing: &[(usize, Revision)],
) -> Result<(), MvccError> {
    let missing = &missing[..missing.partition_point(|&(i, _)| i < kvs.len())];
    if missing.is_empty() {
        return Ok(());
    }
    let kv_cf = cf(db, CF_KV);
    let mut opts = rocksdb::ReadOptions::default();
    opts.fill_cache(missing.len() <= CACHED_READ_MAX);
    if let Some(snapshot) = snapshot {
        opts.set_snapshot(snapshot);
    }
    // In chunks, read in place (pinned): a range of 100,000 keys read in
    // one multi-get had RocksDB copy every value into buffers of its own
    // allocator first, which kept 150 MiB after the answer was gone.
    for chunk in missing.chunks(READ_CHUNK) {
        let keys: Vec<[u8; 16]> = chunk.iter().map(|&(_, rev)| revision_key(rev)).collect();
        let got = db.batched_multi_get_cf_opt(kv_cf, &keys, false, &opts);
        for (&(i, rev), result) in chunk.iter().zip(got) {
            let bytes = result
                .map_err(|e| MvccError::Storage(format!("read revision {rev:?}: {e}")))?
                .ok_or_else(|| corrupt(format!("revision {rev:?} is indexed but not stored")))?;
            let stored = mvccpb::KeyValue::decode(&*bytes)
                .map_err(|e| corrupt(format!("revision {rev:?}: {e}")))?;
            if stored.key != kvs[i].key || stored.mod_revision != rev.main {
                return Err(corrupt(format!("revision {rev:?} holds another key")));
            }
            kvs[i].value = stored.value;
        }
    }
    Ok(())
}

/// A RocksDB snapshot that owns a handle on its database, so that it can
/// go to another thread and outlive the borrow it was taken under.
struct HeldSnapshot {
    /// Borrows `*db`; declared first, so dropped (released) first.
    snapshot: rocksdb::Snapshot<'static>,
    db: Arc<DB>,
}

impl HeldSnapshot {
    fn new(db: Arc<DB>) -> HeldSnapshot {
        // SAFETY: the DB lives in the Arc's allocation, which does not move
        // and is not freed while `db` (kept beside the snapshot, dropped
        // after it) holds the Arc. The 'static borrow never leaves this
        // struct: `read` lends the snapshot out for its own call only.
        let at: &'static DB = unsafe { &*Arc::as_ptr(&db) };
        HeldSnapshot {
            snapshot: at.snapshot(),
            db,
        }
    }

    fn read(&self, kvs: &mut [KeyValue], missing: &[(usize, Revision)]) -> Result<(), MvccError> {
        read_values(&self.db, Some(&self.snapshot), kvs, missing)
    }
}

fn wants_values(opts: &RangeOptions) -> bool {
    !opts.keys_only && !opts.count_only
}

impl KvEngine for RocksKv {
    type Txn<'a> = RocksTxn<'a>;

    fn current_revision(&self) -> i64 {
        self.index.current_revision()
    }
    fn compact_main_revision(&self) -> i64 {
        self.index.compact_main_revision()
    }
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        let (mut r, revs) = self.index.range_with_revisions(key, end, opts)?;
        if wants_values(opts) {
            fill_values(&self.db, &self.pending, &mut r.kvs, &revs)?;
        }
        Ok(r)
    }
    fn count_slice(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
        max: usize,
    ) -> Result<(i64, Option<Vec<u8>>), MvccError> {
        self.index.count_slice(key, end, rev, max)
    }
    fn page_count(&self, key: &[u8], end: &[u8], rev: i64) -> Option<i64> {
        self.index.page_count(key, end, rev)
    }
    fn remember_page(&self, key: Vec<u8>, end: &[u8], rev: i64, count: i64) {
        self.index.remember_page(key, end, rev, count)
    }
    fn range_later(
        &self,
        key: &[u8],
        end: &[u8],
        opts: &RangeOptions,
    ) -> Result<(RangeResult, Option<Fill>), MvccError> {
        let (mut r, revs) = self.index.range_with_revisions(key, end, opts)?;
        if !wants_values(opts) {
            return Ok((r, None));
        }
        // The pending batch's values now (the batch reaches the database
        // later, after the snapshot); the others from the database as it
        // is now: a compaction's removal or an install that runs before
        // the fill does not change what the snapshot reads.
        let missing = fill_pending(&self.pending, &mut r.kvs, &revs);
        if missing.is_empty() {
            return Ok((r, None));
        }
        let snapshot = HeldSnapshot::new(self.db.clone());
        let fill = Fill::new(move |kvs: &mut [KeyValue]| snapshot.read(kvs, &missing));
        Ok((r, Some(fill)))
    }
    fn history(
        &self,
        key: &[u8],
        end: &[u8],
        from: i64,
        max: usize,
    ) -> Result<Vec<Event>, MvccError> {
        let history = self.index.history(key, end, from, max)?;
        // The index holds no values: read them (and the previous ones) by
        // revision, from the pending batch or the database.
        let mut kvs = Vec::new();
        let mut revs = Vec::new();
        for h in &history {
            if h.event.kind == EventKind::Put {
                kvs.push(h.event.kv.clone());
                revs.push(h.rev);
            }
            if let (Some(p), Some(r)) = (&h.event.prev_kv, h.prev_rev) {
                kvs.push(p.clone());
                revs.push(r);
            }
        }
        fill_values(&self.db, &self.pending, &mut kvs, &revs)?;
        let mut filled = kvs.into_iter();
        let mut out = Vec::with_capacity(history.len());
        for h in history {
            let mut e = h.event;
            if e.kind == EventKind::Put {
                e.kv = filled.next().unwrap_or_default();
            }
            if e.prev_kv.is_some() && h.prev_rev.is_some() {
                e.prev_kv = filled.next();
            }
            out.push(e);
        }
        Ok(out)
    }
    fn write(&mut self) -> RocksTxn<'_> {
        RocksTxn {
            txn: Some(self.index.write()),
            db: &self.db,
            batch: &mut self.batch,
            pending: &mut self.pending,
            fill: self.fill_events,
        }
    }
    fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        // The removal goes in slices (StateEngine::idle_step): going over
        // the index of a million keys at once held the apply thread
        // 64-170 ms. The mark goes with the compaction's applied batch.
        self.index.compact_in_slices(rev)?;
        self.batch
            .put_cf(cf(&self.db, CF_META), META_REMOVING, rev.to_be_bytes());
        Ok(())
    }
    fn key_count(&self) -> usize {
        RocksKv::key_count(self)
    }
    fn approximate_size_bytes(&self) -> u64 {
        RocksKv::approximate_size_bytes(self)
    }
}

/// A write transaction on [`RocksKv`]: the index changes at once; the versions
/// join the pending batch when the transaction ends (or is dropped).
pub struct RocksTxn<'a> {
    txn: Option<WriteTxn<'a>>,
    db: &'a DB,
    batch: &'a mut WriteBatch,
    pending: &'a mut HashMap<Revision, Bytes>,
    /// Fill the events' values and previous states.
    fill: bool,
}

impl<'a> RocksTxn<'a> {
    fn txn(&self) -> &WriteTxn<'a> {
        self.txn
            .as_ref()
            .unwrap_or_else(|| unreachable!("the txn is only taken by finish"))
    }

    fn txn_mut(&mut self) -> &mut WriteTxn<'a> {
        self.txn
            .as_mut()
            .unwrap_or_else(|| unreachable!("the txn is only taken by finish"))
    }

    /// Ends the index txn and adds its versions to the batch, sub revision
    /// n for the n-th change as the index numbered them.
    fn finish(&mut self) -> (i64, Vec<Event>) {
        let Some(txn) = self.txn.take() else {
            return (0, Vec::new());
        };
        let (rev, mut events, prev_revs) = txn.end_with_prev_revisions();
        let kv_cf = cf(self.db, CF_KV);
        for (sub, ev) in events.iter().enumerate() {
            let at = Revision::new(ev.kv.mod_revision, sub as i64);
            let record = match ev.kind {
                EventKind::Put => {
                    let value = self.pending.get(&at).cloned().unwrap_or_default();
                    encode_record(&ev.kv, value)
                }
                EventKind::Delete => encode_record(
                    &KeyValue {
                        key: ev.kv.key.clone(),
                        mod_revision: ev.kv.mod_revision,
                        ..KeyValue::default()
                    },
                    Bytes::new(),
                ),
            };
            self.batch.put_cf(kv_cf, revision_key(at), record);
        }
        if self.fill {
            self.fill_events(&mut events, &prev_revs);
        }
        (rev, events)
    }

    /// Puts the written values into the put events and the previous values
    /// into their previous states (the index holds no values).
    fn fill_events(&self, events: &mut [Event], prev_revs: &[Option<Revision>]) {
        let mut prevs = Vec::new();
        let mut revs = Vec::new();
        for (sub, ev) in events.iter_mut().enumerate() {
            if ev.kind == EventKind::Put {
                let at = Revision::new(ev.kv.mod_revision, sub as i64);
                ev.kv.value = self.pending.get(&at).cloned().unwrap_or_default();
            }
            if let Some(Some(r)) = prev_revs.get(sub) {
                if let Some(p) = ev.prev_kv.take() {
                    prevs.push(p);
                    revs.push(*r);
                }
            }
        }
        if let Err(e) = fill_values(self.db, self.pending, &mut prevs, &revs) {
            // The writes stand; only the watchers' previous values are
            // missing, which a damaged database explains in the log.
            tracing::error!(error = %e, "cannot read previous values for watchers");
            return;
        }
        let mut prevs = prevs.into_iter();
        for (sub, ev) in events.iter_mut().enumerate() {
            if matches!(prev_revs.get(sub), Some(Some(_))) && ev.prev_kv.is_none() {
                ev.prev_kv = prevs.next();
            }
        }
    }
}

impl KvTxn for RocksTxn<'_> {
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        let (mut r, revs) = self.txn().range_with_revisions(key, end, opts)?;
        if wants_values(opts) {
            fill_values(self.db, self.pending, &mut r.kvs, &revs)?;
        }
        Ok(r)
    }
    fn put_blind(&mut self, key: &[u8], value: Bytes, lease: i64) {
        let at = self.txn().next_revision();
        self.pending.insert(at, value);
        self.txn_mut().put_blind(key, Bytes::new(), lease);
    }
    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        let (mut deleted, revs) = self.txn_mut().delete_range_with_revisions(key, end);
        if let Err(e) = fill_values(self.db, self.pending, &mut deleted, &revs) {
            // The deletes stand (they are in the index); only prev values are
            // unavailable, which a damaged database explains in the log.
            tracing::error!(error = %e, "cannot read deleted values");
        }
        deleted
    }
    fn end(mut self) -> (i64, Vec<Event>) {
        self.finish()
    }
}

impl Drop for RocksTxn<'_> {
    fn drop(&mut self) {
        // As the index txn commits when dropped, so must its versions.
        self.finish();
    }
}

/// Fresh databases, bootstrapped at index 1.
#[cfg(test)]
pub(crate) fn fresh_for_test(dir: &Path) -> Dbs {
    let dbs = super::open(dir, true).expect("open fresh databases");
    let point = AppliedPoint {
        index: 1,
        term: 1,
        ..Default::default()
    };
    super::bootstrap(&dbs, &point, &raft::eraftpb::HardState::default()).expect("bootstrap");
    dbs
}

/// An empty store on fresh databases.
#[cfg(test)]
pub(crate) fn empty_for_test(dir: &Path) -> RocksKv {
    RocksKv::open(&fresh_for_test(dir), (1, -1)).expect("empty store")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::image::read_into_store;
    use crate::storage::memory::mvcc::MemStore;
    use crate::storage::RangeOptions;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn rocks_kv_conforms() {
        let parent = tempfile::tempdir().unwrap();
        let n = Cell::new(0);
        crate::storage::conformance::run_all(|| {
            n.set(n.get() + 1);
            empty_for_test(&parent.path().join(n.get().to_string()))
        });
    }

    fn all_at(e: &impl KvEngine, rev: i64) -> Result<RangeResult, MvccError> {
        e.range(
            b"",
            &[0],
            &RangeOptions {
                rev,
                ..Default::default()
            },
        )
    }

    /// A compaction's removal goes in slices of deletes; a member stopped
    /// midway (its mark written with the compaction) finds the versions it
    /// had not removed yet, starts, and goes on; images wait for the end,
    /// then equal the memory store's compacted at once.
    #[test]
    fn a_removal_stopped_midway_goes_on_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = empty_for_test(dir.path());
        let mut mem = MemStore::new();
        for round in 0..3 {
            for i in 0..REMOVAL_BUDGET {
                let key = format!("k{i:05}").into_bytes();
                for e in [&mut mem as &mut dyn TwoPuts, &mut rocks] {
                    e.two_puts(&key, b"z", round);
                }
            }
        }
        rocks.commit(&at(10, 2)).unwrap();
        let versions = |kv: &RocksKv| {
            kv.db
                .iterator_cf(cf(&kv.db, CF_KV), rocksdb::IteratorMode::Start)
                .count()
        };
        let all = versions(&rocks);
        let rev = mem.current_revision() - 100;
        mem.compact(rev).unwrap();
        KvEngine::compact(&mut rocks, rev).unwrap();
        rocks.commit(&at(11, 2)).unwrap();
        assert!(rocks.image_waits() && rocks.compaction_pending());
        assert!(rocks.idle_step(), "more than one slice");
        let partly = versions(&rocks);
        assert!(partly < all, "a slice removed versions ({partly} of {all})");
        let mut rocks = reopen(rocks);
        same_at_every_revision(&mem, &rocks);
        assert!(rocks.image_waits(), "the removal goes on after the reopen");
        let mut turns = 0;
        while rocks.idle_step() {
            turns += 1;
        }
        assert!(turns >= 1);
        assert!(!rocks.image_waits());
        let mut in_mem = 0;
        mem.export_slice(None, i64::MAX, rev, usize::MAX, &mut |_| in_mem += 1);
        assert_eq!(versions(&rocks), in_mem, "every dropped version deleted");
        let header = at(11, 2).header(mem.current_revision(), mem.compact_main_revision());
        let from_mem =
            crate::storage::image::write_memory_image(&mem, &header, Vec::new()).unwrap();
        let from_rocks = rocks
            .spawn_image(Vec::new())
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(from_rocks == from_mem, "the same image");
        // Through: the mark is gone and a reopen checks history strictly.
        let rocks = reopen(rocks);
        assert!(!rocks.compaction_pending());
        same_at_every_revision(&mem, &rocks);
    }

    fn reopen(kv: RocksKv) -> RocksKv {
        let dbs = kv.dbs().clone();
        drop(kv);
        let meta = super::super::read_kv_meta(&dbs.kv).unwrap();
        RocksKv::open(&dbs, meta.revision).unwrap()
    }

    fn at(index: u64, term: u64) -> AppliedPoint {
        AppliedPoint {
            index,
            term,
            ..Default::default()
        }
    }

    /// A range of more versions than one multi-get reads, whose key order
    /// is not their revision order, some committed and some still pending:
    /// every value comes back with its key.
    #[test]
    fn a_range_larger_than_a_read_chunk_returns_every_value() {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = empty_for_test(dir.path());
        let n = 2 * READ_CHUNK + 100;
        // Key i is written at a revision unrelated to its place in the range.
        let key = |i: usize| format!("k{:06}", (i * 7919) % n).into_bytes();
        let value = |k: &[u8]| [k, b"=value"].concat();
        for i in 0..n {
            let mut t = rocks.write();
            t.put_blind(&key(i), value(&key(i)).into(), 0);
            t.end();
            if i == n - 50 {
                rocks.commit(&at(i as u64 + 1, 1)).unwrap();
            }
        }
        // The last 49 puts are still in the pending batch.
        assert!(!rocks.pending.is_empty());
        let r = all_at(&rocks, 0).unwrap();
        assert_eq!(r.kvs.len(), n);
        for (i, kv) in r.kvs.iter().enumerate() {
            assert_eq!(kv.key, format!("k{i:06}").into_bytes());
            assert_eq!(
                kv.value,
                value(&kv.key),
                "{}",
                String::from_utf8_lossy(&kv.key)
            );
        }
    }

    /// A range whose values are left for later reads them as they were when
    /// it walked the index, after every version it read was overwritten,
    /// compacted away and removed from the database; values of the pending
    /// batch come at once; kvs cut off are not read.
    #[test]
    fn values_left_for_later_are_read_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = empty_for_test(dir.path());
        let n = 300;
        let key = |i: usize| format!("k{:06}", (i * 7919) % n).into_bytes();
        let value = |k: &[u8], round: &[u8]| [k, round].concat();
        for i in 0..n {
            let mut t = rocks.write();
            t.put_blind(&key(i), value(&key(i), b"=old").into(), 0);
            t.end();
            if i == n - 50 {
                rocks.commit(&at(i as u64 + 1, 1)).unwrap();
            }
        }
        let opts = RangeOptions::default();
        let (mut r, fill) = rocks.range_later(b"k", &[0], &opts).unwrap();
        let fill = fill.expect("committed values are left for later");
        let waiting = r.kvs.iter().filter(|kv| kv.value.is_empty()).count();
        assert_eq!(waiting, n - 49, "the pending batch's values are filled");
        // Every version read is overwritten, compacted and removed.
        for i in 0..n {
            let mut t = rocks.write();
            t.put_blind(&key(i), value(&key(i), b"=new").into(), 0);
            t.end();
        }
        rocks.commit(&at(n as u64 + 1, 1)).unwrap();
        rocks.compact(rocks.current_revision()).unwrap();
        rocks.commit(&at(n as u64 + 2, 1)).unwrap();
        while rocks.idle_step() {}
        let stored = rocks
            .db
            .iterator_cf(cf(&rocks.db, CF_KV), rocksdb::IteratorMode::Start)
            .count();
        assert_eq!(stored, n, "the old versions are gone");
        // Read the first 200 only.
        r.kvs.truncate(200);
        fill.run(&mut r.kvs).unwrap();
        for (i, kv) in r.kvs.iter().enumerate() {
            assert_eq!(kv.key, format!("k{i:06}").into_bytes());
            assert_eq!(kv.value, value(&kv.key, b"=old"));
        }
    }

    /// A large range reads its blocks past the block cache (it would evict
    /// what small reads come back to, for blocks it touches once); a small
    /// read fills the cache. The kv family's blocks are about 1 KiB, so a
    /// value read from a scattered range costs a small block, not 4 KiB.
    #[test]
    fn large_ranges_leave_the_block_cache_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = empty_for_test(dir.path());
        let n = 4 * CACHED_READ_MAX;
        for i in 0..n {
            let mut t = rocks.write();
            t.put_blind(format!("k{i:06}").as_bytes(), vec![b'v'; 200].into(), 0);
            t.end();
        }
        rocks.commit(&at(2, 1)).unwrap();
        super::super::flush_kv(&rocks.db).unwrap();
        let usage = |kv: &RocksKv| {
            kv.db
                .property_int_value_cf(cf(&kv.db, CF_KV), "rocksdb.block-cache-usage")
                .unwrap()
                .unwrap()
        };
        let blocks = rocks
            .db
            .property_value_cf(cf(&rocks.db, CF_KV), "rocksdb.sstables")
            .unwrap()
            .unwrap_or_default();
        let before = usage(&rocks);
        let all = all_at(&rocks, 0).unwrap();
        assert_eq!(all.kvs.len(), n);
        assert!(all.kvs.iter().all(|kv| kv.value.len() == 200));
        assert_eq!(
            usage(&rocks),
            before,
            "a range of {n} values went through the block cache"
        );
        let few = rocks
            .range(b"k000000", b"k000010", &RangeOptions::default())
            .unwrap();
        assert_eq!(few.kvs.len(), 10);
        let after = usage(&rocks);
        assert!(after > before, "a small read did not fill the cache");
        // Ten values of 200 bytes in consecutive revisions: about two
        // blocks of KV_BLOCK_BYTES, where RocksDB's default 4 KiB block
        // would cache one block of 4 KiB.
        assert!(
            after - before < 3 * super::super::KV_BLOCK_BYTES as u64 + 1024,
            "ten values cached {} bytes of blocks ({blocks})",
            after - before
        );
    }

    /// Random puts, deletes, txns and compactions on the memory store and on
    /// RocksKv (committing in batches, reopening now and then): every read
    /// at every retained revision answers the same.
    #[test]
    fn matches_the_memory_store_across_commits_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = empty_for_test(dir.path());
        let mut mem = MemStore::new();
        let mut rng = StdRng::seed_from_u64(7);
        let mut applied = 1;
        for step in 0..600 {
            let key = format!("k{}", rng.gen_range(0..30)).into_bytes();
            match rng.gen_range(0..10) {
                0..=5 => {
                    let value = format!("v{step}").into_bytes();
                    let mut t = mem.write();
                    t.put_blind(&key, value.clone().into(), 0);
                    t.end();
                    let mut t = rocks.write();
                    t.put_blind(&key, value.into(), 0);
                    t.end();
                }
                6 | 7 => {
                    let end = format!("k{}", rng.gen_range(0..30)).into_bytes();
                    let a = mem.write().delete_range(&key, &end);
                    let b = {
                        let mut t = rocks.write();
                        let d = KvTxn::delete_range(&mut t, &key, &end);
                        t.end();
                        d
                    };
                    assert_eq!(a, b, "deleted previous states");
                }
                8 => {
                    // Two puts in one txn, then a read of the first inside it.
                    let k2 = format!("k{}", rng.gen_range(30..40)).into_bytes();
                    for e in [&mut mem as &mut dyn TwoPuts, &mut rocks] {
                        e.two_puts(&key, &k2, step);
                    }
                }
                _ => {
                    let cur = mem.current_revision();
                    let at = rng.gen_range(cur.saturating_sub(20).max(1)..=cur);
                    assert_eq!(
                        KvEngine::compact(&mut mem, at),
                        KvEngine::compact(&mut rocks, at)
                    );
                }
            }
            if rng.gen_bool(0.3) {
                applied += 1;
                rocks.commit(&at(applied, 1)).unwrap();
            }
            if step % 97 == 0 {
                rocks.commit(&at(applied, 1)).unwrap();
                rocks = reopen(rocks);
            }
            let cur = mem.current_revision();
            assert_eq!(rocks.current_revision(), cur);
            let rev = rng.gen_range(1..=cur);
            assert_eq!(
                all_at(&mem, rev),
                all_at(&rocks, rev),
                "step {step} rev {rev}"
            );
            assert_eq!(all_at(&mem, 0), all_at(&rocks, 0), "step {step}");
        }
        rocks.commit(&at(applied, 1)).unwrap();
        let rocks = reopen(rocks);
        assert_eq!(all_at(&mem, 0), all_at(&rocks, 0));
        assert_eq!(mem.key_count(), rocks.key_count());
    }

    /// A store with history, tombstones and a compaction, on both engines.
    fn history(mem: &mut MemStore, rocks: &mut RocksKv) {
        let mut rng = StdRng::seed_from_u64(11);
        for step in 0..300 {
            let key = format!("k{}", rng.gen_range(0..25)).into_bytes();
            if rng.gen_range(0..5) == 0 {
                mem.write().delete_range(&key, &[]);
                KvTxn::delete_range(&mut rocks.write(), &key, &[]);
            } else {
                for e in [mem as &mut dyn TwoPuts, rocks] {
                    e.two_puts(&key, b"z", step);
                }
            }
            if step == 150 {
                let at = mem.current_revision() - 30;
                mem.compact(at).unwrap();
                KvEngine::compact(rocks, at).unwrap();
            }
        }
        rocks.commit(&at(300, 2)).unwrap();
        // As the apply thread does before an image.
        while rocks.idle_step() {}
    }

    fn same_at_every_revision(a: &impl KvEngine, b: &impl KvEngine) {
        assert_eq!(a.current_revision(), b.current_revision());
        assert_eq!(a.compact_main_revision(), b.compact_main_revision());
        for rev in 0..=a.current_revision() {
            assert_eq!(all_at(a, rev), all_at(b, rev), "rev {rev}");
        }
    }

    /// The image streamed from a RocksDB snapshot is the state as of the
    /// call, even while writes go on; it installs into a fresh RocksDB store
    /// and reads into a memory store, both equal to the original; the memory
    /// engine's image of the same state is the same bytes.
    /// An install that stopped halfway (its mark still set) refuses to be
    /// opened: the member must be re-seeded, never started on a mix.
    #[test]
    fn an_interrupted_install_refuses_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let dbs = fresh_for_test(dir.path());
        let meta = cf(&dbs.kv, CF_META);
        dbs.kv.put_cf(meta, META_INSTALLING, b"1").unwrap();
        let err = super::super::read_kv_meta(&dbs.kv).unwrap_err().to_string();
        assert!(err.contains("interrupted"), "{err}");
    }

    #[test]
    fn images_are_consistent_and_install_on_both_engines() {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = empty_for_test(&dir.path().join("a"));
        let mut mem = MemStore::new();
        history(&mut mem, &mut rocks);
        let before = mem.clone();
        let job = rocks.spawn_image(Vec::new()).unwrap();
        // Writes after the snapshot was taken are not in the image.
        let mut t = rocks.write();
        t.put_blind(b"late", b"x".to_vec().into(), 0);
        t.end();
        rocks.commit(&at(301, 2)).unwrap();
        let bytes = job.join().unwrap().unwrap();

        let header = at(300, 2).header(before.current_revision(), before.compact_main_revision());
        let from_mem =
            crate::storage::image::write_memory_image(&before, &header, Vec::new()).unwrap();
        assert_eq!(bytes, from_mem, "both engines write the same image");

        let (h, read) = read_into_store(bytes.as_slice(), true).unwrap();
        assert_eq!(h, header);
        same_at_every_revision(&before, &read);

        let path = dir.path().join("image");
        std::fs::write(&path, &bytes).unwrap();
        let dbs = fresh_for_test(&dir.path().join("b"));
        let (h, installed) = RocksKv::install_image(&dbs, &path, None).unwrap();
        assert_eq!(h.index, 300);
        same_at_every_revision(&before, &installed);
        // The records came in as table files, not through a memtable, and
        // the files' staging folder is gone.
        let in_memtable = installed
            .db
            .property_int_value_cf(
                cf(&installed.db, CF_KV),
                "rocksdb.num-entries-active-mem-table",
            )
            .unwrap();
        assert_eq!(in_memtable, Some(0));
        let staging = dir.path().join("b").join("rocksdb").join("kv-ingest");
        assert!(!staging.exists());
        let reopened = reopen(installed);
        same_at_every_revision(&before, &reopened);
        assert_eq!(
            super::super::read_kv_meta(reopened.db()).unwrap().applied,
            Some((300, 2))
        );

        // A damaged image changes nothing.
        let mut broken = bytes.clone();
        let mid = broken.len() / 2;
        broken[mid] ^= 0x40;
        std::fs::write(&path, &broken).unwrap();
        drop(reopened);
        assert!(RocksKv::install_image(&dbs, &path, None).is_err());
        assert!(!staging.exists(), "a damaged image left its staged files");
        let meta = super::super::read_kv_meta(&dbs.kv).unwrap();
        let still = RocksKv::open(&dbs, meta.revision).unwrap();
        same_at_every_revision(&before, &still);
    }

    /// An image prepared while it arrived installs without being read
    /// again (its file is gone here by then) into the same state as one
    /// read from its file; one prepared under another name is not used,
    /// and staged files go when a newer image replaces them, or when the
    /// databases are opened after a crash left them.
    #[test]
    fn an_image_prepared_as_it_arrived_installs_without_being_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = empty_for_test(&dir.path().join("a"));
        let mut mem = MemStore::new();
        history(&mut mem, &mut rocks);
        let bytes = rocks
            .spawn_image(Vec::new())
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        let dbs = fresh_for_test(&dir.path().join("b"));
        let staged = |name: &str| {
            dir.path()
                .join("b")
                .join("rocksdb")
                .join(format!("kv-ingest-{name}"))
        };
        let first = dir.path().join("first.image");
        RocksKv::prepare_install(&dbs, &first, &mut bytes.as_slice()).unwrap();
        assert!(staged("first").exists());
        let path = dir.path().join("second.image");
        RocksKv::prepare_install(&dbs, &path, &mut bytes.as_slice()).unwrap();
        assert!(!staged("first").exists(), "replaced, its files went");
        assert!(staged("second").exists());
        // Another name: read from its file (missing here), so refused; the
        // prepared image was not wanted, and goes.
        assert!(RocksKv::install_image(&dbs, &first, None).is_err());
        assert!(
            !staged("second").exists(),
            "an install drops what it does not use"
        );
        RocksKv::prepare_install(&dbs, &path, &mut bytes.as_slice()).unwrap();
        let (h, installed) = RocksKv::install_image(&dbs, &path, None).unwrap();
        assert_eq!(h.index, 300);
        same_at_every_revision(&mem, &installed);
        assert!(!staged("second").exists(), "moved in");
        let reopened = reopen(installed);
        same_at_every_revision(&mem, &reopened);
        // A damaged image is refused while it arrives and leaves nothing.
        let mut broken = bytes.clone();
        let mid = broken.len() / 2;
        broken[mid] ^= 0x40;
        let third = dir.path().join("third.image");
        assert!(RocksKv::prepare_install(&dbs, &third, &mut broken.as_slice()).is_err());
        assert!(!staged("third").exists());
        assert!(RocksKv::install_image(&dbs, &third, None).is_err());
        // Files a crash left staged are gone once the databases reopen.
        RocksKv::prepare_install(&dbs, &third, &mut bytes.as_slice()).unwrap();
        let left = staged("third");
        assert!(left.exists());
        std::fs::create_dir_all(left.with_file_name("kv-ingest")).unwrap();
        drop(reopened);
        let prepared = dbs.prepared.lock().take();
        std::mem::forget(prepared); // as a crash: nothing removes them
        drop(dbs);
        let _dbs = super::super::open(&dir.path().join("b"), false).unwrap();
        assert!(!left.exists());
        assert!(!left.with_file_name("kv-ingest").exists());
    }

    /// Both engines, as the test drives them.
    trait TwoPuts {
        fn two_puts(&mut self, a: &[u8], b: &[u8], step: usize);
    }

    impl<E: KvEngine> TwoPuts for E {
        fn two_puts(&mut self, a: &[u8], b: &[u8], step: usize) {
            let mut t = self.write();
            t.put_blind(a, format!("x{step}").into_bytes().into(), 0);
            t.put_blind(b, format!("y{step}").into_bytes().into(), 0);
            let seen = t.range(a, &[], &RangeOptions::default()).unwrap();
            assert_eq!(seen.kvs[0].value, format!("x{step}").into_bytes());
            t.end();
        }
    }
}
