//! The `rocksdb` engine: the Raft log and hard state in one RocksDB database
//! (`rocksdb/raft`), the MVCC state, applied index and conf state in another
//! (`rocksdb/kv`), each with column families.
//!
//! - raft db, `raft` family: Raft entries keyed by index (8 bytes, big-endian),
//!   written by the WalWriter through [`RocksLog`] with `sync = true`: ONE
//!   synced write per Raft batch, the only fsync on the write path; `meta`
//!   family: the hard state, in the same write batch as the entries.
//! - kv db, `kv` family: every stored version keyed by its revision (main and
//!   sub, 8 bytes each, big-endian), its value an `mvccpb.KeyValue` (version 0
//!   marks a tombstone), as etcd keys its bbolt bucket; `meta` family: in the
//!   same write batch as each applied batch of MVCC changes, the applied index
//!   and term, the conf state and the current and compacted revisions.
//!
//! Two databases, not one, because RocksDB groups concurrent writers of one
//! database behind a single WAL write: an unsynced state-machine write that
//! arrives while the Raft log's synced write is in flight waits for its fsync,
//! and the apply loop shares its thread with Raft and the client handlers
//! (measured: 0.79x of the memory engine with one database).
//!
//! The state-machine batch skips RocksDB's WAL altogether (the Raft log is the
//! log): it lands in the memtables, and the kv database flushes its families
//! atomically (RocksDB's `atomic_flush`), so what reaches the disk is always
//! a prefix of applied batches with its own applied index. The Raft log is
//! only truncated after such a flush ([`RocksLog::purge`]). A crash loses at
//! most the applied batches since the last flush, and restart replays the
//! Raft log from the persisted applied index: nothing acknowledged is lost
//! and nothing is applied twice. (With the WAL on, every applied batch also
//! cost a write(2) on the thread the API shares.)
//!
//! The key index (key → versions, without values) lives in memory as a
//! [`MemStore`](crate::storage::memory::mvcc::MemStore) built with `index_only`, rebuilt from
//! the `kv` family at start-up; values are read from RocksDB by revision.
//! Beside it, RocksDB's memory is one budget for both databases: a shared
//! block cache and a cap on their memtables together (`Budget`).

mod kv;
mod log;

use std::path::Path;
use std::sync::Arc;

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use rocksdb::{ColumnFamilyDescriptor, DBCompressionType, Options, DB};

#[cfg(test)]
pub(crate) use kv::empty_for_test as kv_for_test;
pub use kv::RocksKv;
pub use log::{RocksLog, RocksLogReader};

use crate::storage::StorageError;

/// Column family of the Raft log.
pub const CF_RAFT: &str = "raft";
/// Column family of the MVCC versions.
pub const CF_KV: &str = "kv";
/// Column family of the small state records.
pub const CF_META: &str = "meta";

const META_HARD_STATE: &[u8] = b"hard_state";
const META_APPLIED: &[u8] = b"applied";
const META_CONF_STATE: &[u8] = b"conf_state";
const META_REVISION: &[u8] = b"revision";
const META_MEMBERSHIP: &[u8] = b"membership";
const META_LEASES: &[u8] = b"leases";
const META_AUTH: &[u8] = b"auth";
/// Present while an image is being installed.
const META_INSTALLING: &[u8] = b"installing";
/// Present while a compaction's removal is under way (the compaction
/// revision): versions it drops may still be in the kv family.
const META_REMOVING: &[u8] = b"removing";

/// Name of the directory inside the data dir that holds both databases.
pub const DIR: &str = "rocksdb";

fn db_error(what: &str, e: rocksdb::Error) -> StorageError {
    StorageError::Rocks(format!("{what}: {e}"))
}

/// The engine's two databases.
#[derive(Clone)]
pub struct Dbs {
    /// The Raft log and hard state.
    pub raft: Arc<DB>,
    /// The MVCC state and the applied point.
    pub kv: Arc<DB>,
    /// Threads of ours working on them (log purges, file compactions,
    /// images): a shutdown waits for them.
    background: Arc<std::sync::atomic::AtomicUsize>,
    /// The last image from the leader made ready to install as it arrived
    /// (see [`kv::Prepared`]).
    prepared: Arc<parking_lot::Mutex<Option<kv::Prepared>>>,
}

/// Opens both databases; `create` only for a brand-new data dir, so that a
/// missing database is an error and never a silent empty store.
pub fn open(data_dir: &Path, create: bool) -> Result<Dbs, StorageError> {
    open_with(data_dir, create, None)
}

/// [`open`], then primes the Raft log's WAL with `wal_size` bytes (see
/// [`prime_wal`]): what the daemon does.
pub fn open_with(
    data_dir: &Path,
    create: bool,
    wal_size: Option<u64>,
) -> Result<Dbs, StorageError> {
    let root = data_dir.join(DIR);
    if create {
        // RocksDB fsyncs its own directory, not the parents it creates.
        for db in ["raft", "kv"] {
            let dir = root.join(db);
            super::dirs::create_all(&dir)
                .map_err(|e| StorageError::io(format!("create {}", dir.display()), e))?;
        }
    }
    let budget = Budget::new();
    let raft = open_one(
        data_dir,
        &root.join("raft"),
        &[CF_RAFT, CF_META],
        create,
        wal_size,
        &budget,
    )?;
    if let Some(size) = wal_size {
        prime_wal(&raft, size)?;
    }
    let kv = open_one(
        data_dir,
        &root.join("kv"),
        &[CF_KV, CF_META],
        create,
        None,
        &budget,
    )?;
    // Table files staged by an install or a prepared image that a crash
    // cut short: never part of the database.
    if let Ok(dir) = std::fs::read_dir(&root) {
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with(kv::STAGING) {
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove staged table files");
                }
            }
        }
    }
    Ok(Dbs {
        raft,
        kv,
        background: Arc::default(),
        prepared: Arc::default(),
    })
}

const WAL_PRIMER: &[u8] = b"wal-primer";

/// Every Raft batch ends in an fdatasync of the raft database's WAL. When
/// that file grows (or fills preallocated, unwritten extents), each
/// fdatasync must also commit the inode to the filesystem journal, roughly
/// doubling its cost; a WAL file RocksDB recycles is overwritten in place.
/// RocksDB recycles only files retired in the current session, so at open
/// this writes `size` bytes of filler through the WAL and flushes twice: the
/// filled file is retired, then taken back as the live WAL. (The memory
/// engine zero-fills its WAL segments for the same reason.)
fn prime_wal(db: &DB, size: u64) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    let meta = cf(db, CF_META);
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..size.div_ceil(1 << 20) {
        db.put_cf(meta, WAL_PRIMER, &chunk)
            .map_err(|e| db_error("prime the WAL", e))?;
    }
    let flush = || {
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        db.flush_cfs_opt(&[cf(db, CF_RAFT), cf(db, CF_META)], &opts)
            .map_err(|e| db_error("prime the WAL (flush)", e))
    };
    flush()?;
    db.delete_cf(meta, WAL_PRIMER)
        .map_err(|e| db_error("prime the WAL", e))?;
    flush()?;
    tracing::debug!(
        bytes = size,
        ms = started.elapsed().as_millis() as u64,
        "raft database WAL primed"
    );
    Ok(())
}

/// Block cache shared by every column family of both databases. Left to
/// RocksDB, each family got its own 32 MiB cache (six of them).
const BLOCK_CACHE_BYTES: usize = 32 << 20;

/// Block size of the kv family (see `open_one`).
pub(super) const KV_BLOCK_BYTES: usize = 1024;

/// Memtables of both databases together: past it, RocksDB flushes the
/// largest. Left to RocksDB, each family could hold two 64 MiB memtables.
const MEMTABLE_BYTES: usize = 64 << 20;

/// What both databases of a member share: one memory budget. Writers never
/// stall on it (RocksDB flushes instead).
struct Budget {
    cache: rocksdb::Cache,
    memtables: rocksdb::WriteBufferManager,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            cache: rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES),
            memtables: rocksdb::WriteBufferManager::new_write_buffer_manager(MEMTABLE_BYTES, false),
        }
    }
}

fn open_one(
    data_dir: &Path,
    path: &Path,
    families: &[&str],
    create: bool,
    raft_wal: Option<u64>,
    budget: &Budget,
) -> Result<Arc<DB>, StorageError> {
    if !create && !path.join("CURRENT").exists() {
        return Err(StorageError::DataDir {
            path: data_dir.to_owned(),
            why: format!(
                "is marked engine=rocksdb but {} holds no database (deleted or damaged); refusing to start empty",
                path.display()
            ),
        });
    }
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_paranoid_checks(true);
    opts.increase_parallelism(2);
    opts.set_max_background_jobs(2);
    // WAL files stay until every family flushed past them; the meta family
    // is tiny, so cap the total to make RocksDB flush it now and then.
    opts.set_max_total_wal_size(256 << 20);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_write_buffer_manager(&budget.memtables);
    // The kv database is written without its WAL: its families must reach
    // the disk together, so the applied index never runs ahead of the data.
    opts.set_atomic_flush(families.contains(&CF_KV));
    if let Some(size) = raft_wal {
        // Recycled WAL files, each as big as a memtable (see prime_wal).
        opts.set_recycle_log_file_num(2);
        opts.set_write_buffer_size(size as usize);
        opts.set_max_total_wal_size(2 * size);
    }
    let cfs = families
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, family_options(name, Some(&budget.cache))));
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| StorageError::DataDir {
        path: path.to_owned(),
        why: format!("cannot open the RocksDB database: {e}"),
    })?;
    Ok(Arc::new(db))
}

/// A family's options: its table format, and the shared block cache (none
/// for files written outside the database to be ingested).
fn family_options(name: &str, cache: Option<&rocksdb::Cache>) -> Options {
    let mut cf = Options::default();
    cf.set_compression_type(DBCompressionType::Lz4);
    let mut table = rocksdb::BlockBasedOptions::default();
    if let Some(cache) = cache {
        table.set_block_cache(cache);
    }
    if name == CF_KV {
        // Versions are keyed by revision, so the keys of one range lie
        // all over the family: a read pulls a whole block for each value.
        // At RocksDB's 4 KiB a 100,000-key range of 256-byte values read
        // (copied, checksummed) about 400 MB of blocks.
        table.set_block_size(KV_BLOCK_BYTES);
    }
    cf.set_block_based_table_factory(&table);
    cf
}

/// Options for table files of the kv family written outside the database
/// (an installed image) and then ingested: the same format as its own.
pub(super) fn kv_file_options() -> Options {
    family_options(CF_KV, None)
}

/// Counts one piece of our work on a member's databases while it lives, so
/// a shutdown can wait for it.
pub(crate) struct Busy(Arc<std::sync::atomic::AtomicUsize>);

impl Busy {
    pub(crate) fn start(dbs: &Dbs) -> Busy {
        dbs.background
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Busy(dbs.background.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Runs `job` on a thread of its own, counted so a shutdown can wait for it.
pub(crate) fn spawn_background(
    dbs: &Dbs,
    name: &str,
    job: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let busy = Busy::start(dbs);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _busy = busy;
            job();
        })
        .map(|_| ())
}

/// A clean stop: waits for our background threads, writes the kv
/// memtables to disk, and stops RocksDB's own background work, so the
/// process never exits in the middle of a flush or compaction.
pub fn shutdown(dbs: &Dbs) -> Result<(), StorageError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dbs.background.load(std::sync::atomic::Ordering::Acquire) > 0
        && std::time::Instant::now() < deadline
    {
        // Called (through storage::AtShutdown) from server::run_until after the member's System stopped:
        // a plain thread, no async task waits behind this sleep.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let flushed = flush_kv(&dbs.kv);
    dbs.kv.cancel_all_background_work(true);
    dbs.raft.cancel_all_background_work(true);
    flushed
}

/// Writes the kv database's memtables to disk, all families at one point
/// (its writes skip the WAL: this is what makes them durable).
pub fn flush_kv(kv: &DB) -> Result<(), StorageError> {
    let families = [cf(kv, CF_KV), cf(kv, CF_META)];
    let mut opts = rocksdb::FlushOptions::default();
    opts.set_wait(true);
    kv.flush_cfs_opt(&families, &opts)
        .map_err(|e| db_error("flush the kv database", e))
}

/// A column family handle (all three are created at open).
fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .unwrap_or_else(|| unreachable!("column family {name} is opened with the database"))
}

/// What the `meta` family says about the persisted state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// Last applied index and its term (None: a database never bootstrapped).
    pub applied: Option<(u64, u64)>,
    /// Membership as of the applied index.
    pub conf_state: ConfState,
    /// The Raft hard state.
    pub hard_state: HardState,
    /// Current and compacted (-1: never) MVCC revisions.
    pub revision: (i64, i64),
    /// The member registry as of the applied index.
    pub membership: crate::proto::metastorepb::Membership,
    /// Every lease as of the applied index.
    pub leases: crate::storage::leases::LeaseTable,
    /// The auth store as of the applied index (none before auth existed:
    /// a fresh store).
    pub auth: crate::proto::metastorepb::AuthState,
}

fn two_u64(what: &str, b: &[u8]) -> Result<(u64, u64), StorageError> {
    if b.len() != 16 {
        return Err(StorageError::Rocks(format!(
            "meta {what}: {} bytes, want 16",
            b.len()
        )));
    }
    let (a, c) = b.split_at(8);
    Ok((
        u64::from_be_bytes(a.try_into().unwrap_or_default()),
        u64::from_be_bytes(c.try_into().unwrap_or_default()),
    ))
}

fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

/// Reads both `meta` families.
pub fn read_meta(dbs: &Dbs) -> Result<Meta, StorageError> {
    let mut m = read_kv_meta(&dbs.kv)?;
    let raft_meta = cf(&dbs.raft, CF_META);
    if let Some(b) = dbs
        .raft
        .get_cf(raft_meta, META_HARD_STATE)
        .map_err(|e| db_error("read the hard state", e))?
    {
        m.hard_state = HardState::parse_from_bytes(&b)
            .map_err(|e| StorageError::Rocks(format!("meta hard_state: {e}")))?;
    }
    Ok(m)
}

/// Reads the kv database's `meta` family (the applied point).
pub fn read_kv_meta(kv: &DB) -> Result<Meta, StorageError> {
    let meta = cf(kv, CF_META);
    meta_from(|key| kv.get_cf(meta, key))
}

/// Reads the meta records through `get` (the database or a snapshot of it).
fn meta_from(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<Meta, StorageError> {
    let get = |key: &[u8]| {
        get(key).map_err(|e| db_error(&format!("read meta {}", String::from_utf8_lossy(key)), e))
    };
    if get(META_INSTALLING)?.is_some() {
        return Err(StorageError::Rocks(
            "an image install was interrupted; this member must be re-seeded".into(),
        ));
    }
    let mut m = Meta {
        revision: (1, -1),
        ..Meta::default()
    };
    if let Some(b) = get(META_APPLIED)? {
        m.applied = Some(two_u64("applied", &b)?);
    }
    if let Some(b) = get(META_CONF_STATE)? {
        m.conf_state = ConfState::parse_from_bytes(&b)
            .map_err(|e| StorageError::Rocks(format!("meta conf_state: {e}")))?;
    }
    if let Some(b) = get(META_REVISION)? {
        let (cur, compact) = two_u64("revision", &b)?;
        m.revision = (cur as i64, compact as i64);
    }
    if let Some(b) = get(META_MEMBERSHIP)? {
        m.membership = crate::proto::metastorepb::Membership::decode(b.as_slice())
            .map_err(|e| StorageError::Rocks(format!("meta membership: {e}")))?;
    }
    if let Some(b) = get(META_LEASES)? {
        m.leases = crate::storage::leases::LeaseTable::decode(&b)
            .map_err(|e| StorageError::Rocks(format!("meta leases: {e}")))?;
    }
    if let Some(b) = get(META_AUTH)? {
        m.auth = crate::proto::metastorepb::AuthState::decode(b.as_slice())
            .map_err(|e| StorageError::Rocks(format!("meta auth: {e}")))?;
    }
    Ok(m)
}

/// Writes the starting point of a new member, synced.
pub fn bootstrap(
    dbs: &Dbs,
    point: &crate::storage::engine::AppliedPoint,
    hard_state: &HardState,
) -> Result<(), StorageError> {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    let mut b = rocksdb::WriteBatch::default();
    b.put_cf(cf(&dbs.raft, CF_META), META_HARD_STATE, encode(hard_state));
    dbs.raft
        .write_opt(b, &wo)
        .map_err(|e| db_error("write the bootstrap hard state", e))?;
    let meta = cf(&dbs.kv, CF_META);
    let mut b = rocksdb::WriteBatch::default();
    b.put_cf(meta, META_APPLIED, pair(point.index, point.term));
    b.put_cf(meta, META_CONF_STATE, encode(&point.conf_state));
    b.put_cf(meta, META_MEMBERSHIP, point.membership.encode_to_vec());
    b.put_cf(meta, META_AUTH, point.auth.encode_to_vec());
    b.put_cf(meta, META_REVISION, pair(1, -1i64 as u64));
    dbs.kv
        .write_opt(b, &wo)
        .map_err(|e| db_error("write the bootstrap state", e))
}

fn encode(m: &impl protobuf::Message) -> Vec<u8> {
    m.write_to_bytes()
        .unwrap_or_else(|e| unreachable!("an in-memory protobuf always encodes: {e}"))
}

/// Key of the entry at `index` in the `raft` family.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The Raft entries after `after`, in order (checked to be consecutive).
pub fn read_entries(db: &DB, after: u64) -> Result<Vec<Entry>, StorageError> {
    let mut out: Vec<Entry> = Vec::new();
    let start = index_key(after.saturating_add(1));
    let iter = db.iterator_cf(
        cf(db, CF_RAFT),
        rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
    );
    for item in iter {
        let (k, v) = item.map_err(|e| db_error("read the raft log", e))?;
        let e = Entry::parse_from_bytes(&v)
            .map_err(|e| StorageError::Rocks(format!("raft entry: {e}")))?;
        let key_index = <[u8; 8]>::try_from(&*k).map(u64::from_be_bytes).ok();
        let expected = out.last().map_or(after + 1, |l| l.index + 1);
        if key_index != Some(e.index) || e.index != expected {
            return Err(StorageError::Rocks(format!(
                "raft log: entry {} where {expected} was expected",
                e.index
            )));
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_usage(db: &DB, family: &str) -> u64 {
        db.property_int_value_cf(cf(db, family), "rocksdb.block-cache-usage")
            .unwrap()
            .unwrap()
    }

    /// Both databases and all their families use one block cache: a block
    /// read from the kv family shows in the Raft family's cache usage.
    #[test]
    fn both_databases_share_one_block_cache() {
        let dir = tempfile::tempdir().unwrap();
        let dbs = open(dir.path(), true).unwrap();
        let kv = cf(&dbs.kv, CF_KV);
        for i in 0..2000u32 {
            dbs.kv.put_cf(kv, i.to_be_bytes(), [7u8; 200]).unwrap();
        }
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        dbs.kv
            .flush_cfs_opt(&[kv, cf(&dbs.kv, CF_META)], &opts)
            .unwrap();
        let before = cache_usage(&dbs.raft, CF_RAFT);
        for i in (0..2000u32).step_by(50) {
            assert!(dbs.kv.get_cf(kv, i.to_be_bytes()).unwrap().is_some());
        }
        let after = cache_usage(&dbs.raft, CF_RAFT);
        assert!(
            after > before,
            "the Raft family's cache did not see the kv reads: {before} -> {after}"
        );
        assert_eq!(
            dbs.raft
                .property_int_value_cf(cf(&dbs.raft, CF_RAFT), "rocksdb.block-cache-capacity")
                .unwrap(),
            Some(BLOCK_CACHE_BYTES as u64)
        );
    }
}
