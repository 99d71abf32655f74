//! Choosing, bootstrapping, restoring and opening an engine: the one place
//! that knows which engines there are. Above it, a member sees a [`Store`]
//! (driven through [`KvEngine`] and [`StateEngine`] by [`on_store!`]), a
//! [`RaftLog`] to start Raft from, a [`LogStore`] for the WalWriter and an
//! [`AtShutdown`] to run once the actors are gone. A third engine is a
//! variant here and a folder beside `memory/` and `rocks/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::eraftpb::{HardState, SnapshotMetadata};
use serde::Deserialize;

use super::engine::{AppliedPoint, ImageIntake, InstallJob, LogStore, StateEngine};
use super::image::{self, ImageHeader};
use super::memory::mvcc::MemStore;
use super::memory::snapshots;
use super::memory::wal::{Wal, WalOptions};
use super::memory::wal_log::WalLog;
use super::memory::MemoryEngine;
use super::raft_log::{encode_message, record, RaftLog, Tail};
use super::rocks::{self, RocksKv, RocksLog};
use super::StorageError;

/// Which storage engine keeps the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// MVCC in memory; WAL segments and snapshot files make it durable.
    Memory,
    /// Raft log and MVCC in RocksDB; the key index in memory.
    Rocksdb,
}

impl Engine {
    /// The name used in config files, flags and the data dir marker.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Memory => "memory",
            Engine::Rocksdb => "rocksdb",
        }
    }
}

/// What storage needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// The engine.
    pub engine: Engine,
    /// The member's data dir.
    pub data_dir: PathBuf,
    /// Size of a log segment (the memory engine's WAL; rocksdb's own WAL).
    pub wal_segment_size: u64,
    /// rocksdb: Raft log entries kept in memory (see [`Tail`]).
    pub raft_log_memory_entries: usize,
}

/// Where snapshots from the leader are received, under the data dir.
pub const INCOMING: &str = "snap-incoming";

/// The MVCC store of the configured engine.
// One per process, never moved on a hot path: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Store {
    /// In memory (durable through the WAL and snapshot files).
    Memory(MemoryEngine),
    /// In RocksDB (durable by itself; see [`RocksKv`]).
    Rocks(RocksKv),
}

/// Runs `$body` with `$s` bound to the engine inside `$store`: the one
/// dispatch over the engines; everything else goes through [`KvEngine`]
/// and [`StateEngine`].
macro_rules! on_store {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            $crate::storage::Store::Memory($s) => $body,
            $crate::storage::Store::Rocks($s) => $body,
        }
    };
}
pub(crate) use on_store;

impl Store {
    /// Replacing the whole state with the checked image file at `path`, as
    /// a job for a worker (see [`StateEngine::install_job`]).
    pub fn install_job(&self, path: &Path, data_dir: &Path) -> InstallJob<Store> {
        match self {
            Store::Memory(s) => {
                let job = s.install_job(path, data_dir);
                Box::new(move || job().map(|(h, e)| (h, Store::Memory(e))))
            }
            Store::Rocks(s) => {
                let job = s.install_job(path, data_dir);
                Box::new(move || job().map(|(h, e)| (h, Store::Rocks(e))))
            }
        }
    }
}

/// A data dir opened at start-up, ready to hand to the actors.
pub struct Opened {
    /// The MVCC state at the applied point.
    pub store: Store,
    /// The applied point (index, term, membership, leases).
    pub point: AppliedPoint,
    /// The Raft log after it.
    pub log: RaftLog,
    /// Where the WalWriter makes new entries durable.
    pub log_store: Box<dyn LogStore>,
    /// What takes in images from the leader as they arrive.
    pub intake: Arc<dyn ImageIntake>,
    /// What to run once the actors are gone.
    pub at_shutdown: AtShutdown,
}

/// The memory engine's intake: a check (the install reads the file).
struct CheckImages;

impl ImageIntake for CheckImages {
    fn take_in(&self, _: &Path, input: &mut dyn std::io::Read) -> Result<(), StorageError> {
        super::image::check(input)
    }
}

/// The rocksdb engine's intake: the install's reading and table files,
/// done while the image arrives (see `RocksKv::prepare_install`).
struct PrepareInstalls(rocks::Dbs);

impl ImageIntake for PrepareInstalls {
    fn take_in(&self, path: &Path, input: &mut dyn std::io::Read) -> Result<(), StorageError> {
        RocksKv::prepare_install(&self.0, path, input)
    }
}

/// What a clean stop runs after the actors are gone (rocksdb flushes its
/// memtables, so the next start replays nothing).
pub struct AtShutdown(Option<rocks::Dbs>);

impl AtShutdown {
    /// Flushes what can be flushed.
    pub fn flush(self) -> Result<(), StorageError> {
        match self.0 {
            Some(dbs) => rocks::shutdown(&dbs),
            None => Ok(()),
        }
    }
}

/// Writes a new member's starting point (`point`: its membership, at index
/// 1 for a new cluster, 0 for a member joining one) into its empty data dir.
pub fn bootstrap(opts: &StorageOptions, point: &AppliedPoint) -> Result<(), StorageError> {
    match opts.engine {
        // The initial membership lives in the first snapshot file.
        Engine::Memory => seed_memory(opts, point, &MemStore::new())?,
        Engine::Rocksdb => {
            let (_, hs) = start_point(point);
            let dbs = rocks::open(&opts.data_dir, true)?;
            rocks::bootstrap(&dbs, point, &hs)?;
            rocks::shutdown(&dbs)?;
        }
    }
    Ok(())
}

/// Seeds a brand-new data dir from the image at `path` (a MetaStore image,
/// or an etcd data file as `etcdctl snapshot save` stores it): the image's
/// state, applied index, term and leases, with the membership of `point`
/// (every member of the new cluster restores the same image with the same
/// flags, as with `etcdctl snapshot restore`).
pub fn restore(
    opts: &StorageOptions,
    path: &Path,
    point: &AppliedPoint,
) -> Result<ImageHeader, StorageError> {
    let mut head = [0u8; 64];
    let n = fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| StorageError::io(format!("open image {}", path.display()), e))?;
    if !super::bbolt::is_bbolt(&head[..n]) {
        return restore_image(opts, path, point);
    }
    let converted = opts.data_dir.with_extension("from-etcd.img");
    let c = super::bbolt::convert_file(path, &converted)?;
    tracing::info!(
        file = %path.display(),
        versions = c.versions,
        revision = c.current_rev,
        compacted = c.compact_rev,
        leases = c.leases,
        "converted an etcd data file"
    );
    let result = restore_image(opts, &converted, point);
    let _ = fs::remove_file(&converted);
    result
}

fn restore_image(
    opts: &StorageOptions,
    path: &Path,
    plan: &AppliedPoint,
) -> Result<ImageHeader, StorageError> {
    let open = || {
        fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| StorageError::io(format!("open image {}", path.display()), e))
    };
    let (h, _) = image::ImageReader::new(open()?)?;
    // The new cluster's membership; the image's state, leases included.
    let point = AppliedPoint {
        index: h.index,
        term: h.term,
        leases: h.leases.clone(),
        auth: h.auth.clone(),
        ..plan.clone()
    };
    let data_dir = &opts.data_dir;
    match opts.engine {
        Engine::Memory => {
            let (_, store) = image::read_into_store(open()?, true)?;
            seed_memory(opts, &point, &store)?;
        }
        Engine::Rocksdb => {
            let (_, hs) = start_point(&point);
            let dbs = rocks::open(data_dir, true)?;
            rocks::bootstrap(&dbs, &point, &hs)?;
            RocksKv::install_image(&dbs, path, Some((&point.conf_state, &point.membership)))?;
            rocks::shutdown(&dbs)?;
        }
    }
    Ok(h)
}

/// Opens a bootstrapped member's data dir with the configured engine:
/// the state at its applied point and the Raft log after it.
pub fn open(opts: &StorageOptions) -> Result<Opened, StorageError> {
    // Partly received snapshots from a previous run are of no use.
    let incoming = opts.data_dir.join(INCOMING);
    let _ = fs::remove_dir_all(&incoming);
    fs::create_dir_all(&incoming)
        .map_err(|e| StorageError::io(format!("create {}", incoming.display()), e))?;
    match opts.engine {
        Engine::Memory => open_memory(&opts.data_dir, wal_options(opts)),
        Engine::Rocksdb => open_rocks(opts),
    }
}

/// The memory engine's WAL options.
fn wal_options(opts: &StorageOptions) -> WalOptions {
    WalOptions {
        segment_size: opts.wal_segment_size,
        ..WalOptions::default()
    }
}

/// Where a member's log starts: committed at `point`.
fn start_point(point: &AppliedPoint) -> (SnapshotMetadata, HardState) {
    let meta = SnapshotMetadata {
        index: point.index,
        term: point.term,
        conf_state: protobuf::SingularPtrField::some(point.conf_state.clone()),
        ..Default::default()
    };
    let hs = HardState {
        term: point.term,
        commit: point.index,
        ..Default::default()
    };
    (meta, hs)
}

/// A new memory-engine data dir holding `store` at `point`: its snapshot
/// file (none for a member that joins with nothing), then a WAL that
/// starts there.
fn seed_memory(
    opts: &StorageOptions,
    point: &AppliedPoint,
    store: &MemStore,
) -> Result<(), StorageError> {
    if point.index > 0 {
        let header = point.header(store.current_revision(), store.compact_main_revision());
        let bytes = image::write_memory_image(store, &header, Vec::new())
            .map_err(|e| StorageError::io("encode the image", e))?;
        snapshots::save(&opts.data_dir, point.index, &bytes)?;
    }
    let (meta, hs) = start_point(point);
    let (mut wal, _) = Wal::open(&opts.data_dir.join("wal"), wal_options(opts))?;
    start_wal(&mut wal, &meta, &hs)
}

/// Writes a new WAL's first records (where the log starts, the hard state), synced.
fn start_wal(wal: &mut Wal, meta: &SnapshotMetadata, hs: &HardState) -> Result<(), StorageError> {
    wal.append(record::SNAPSHOT, &encode_message(meta), meta.index);
    wal.append(record::HARD_STATE, &encode_message(hs), 0);
    wal.sync()?;
    Ok(())
}

/// The `rocksdb` engine: state machine and Raft log from the database; the
/// log is replayed from the persisted applied index.
fn open_rocks(opts: &StorageOptions) -> Result<Opened, StorageError> {
    let data_dir = &opts.data_dir;
    let dbs = rocks::open_with(data_dir, false, Some(opts.wal_segment_size))?;
    let meta = rocks::read_meta(&dbs)?;
    let Some((applied, applied_term)) = meta.applied else {
        return Err(StorageError::DataDir {
            path: data_dir.to_owned(),
            why: "the RocksDB database has no applied index (not written by MetaStore, or damaged)"
                .into(),
        });
    };
    let kv = RocksKv::open(&dbs, meta.revision)?;
    let point = AppliedPoint {
        index: applied,
        term: applied_term,
        conf_state: meta.conf_state.clone(),
        membership: meta.membership.clone(),
        leases: meta.leases.clone(),
        auth: meta.auth.clone(),
    };
    let (base, _) = start_point(&point);
    let entries = rocks::read_entries(&dbs.raft, applied)?;
    // Older entries are read back from the raft family when a follower
    // far behind needs them: only the tail stays in memory.
    let reader = Arc::new(rocks::RocksLogReader::new(&dbs));
    let mut log = RaftLog::from_snapshot(base, meta.hard_state).with_reader(
        reader,
        Tail {
            entries: opts.raft_log_memory_entries,
            ..Tail::default()
        },
    );
    log.append(&entries)?;
    tracing::info!(
        applied,
        last = log.last(),
        commit = log.hard_state().commit,
        revision = meta.revision.0,
        "recovered from rocksdb"
    );
    let last = log.last();
    Ok(Opened {
        store: Store::Rocks(kv),
        point,
        log,
        log_store: Box::new(RocksLog::new(&dbs, last)),
        intake: Arc::new(PrepareInstalls(dbs.clone())),
        at_shutdown: AtShutdown(Some(dbs)),
    })
}

/// The `memory` engine: latest snapshot file plus the WAL after it.
fn open_memory(data_dir: &Path, wal_options: WalOptions) -> Result<Opened, StorageError> {
    let snap = snapshots::load_latest(data_dir)?;
    let (wal, records) = Wal::open(&data_dir.join("wal"), wal_options)?;
    let marker = records
        .iter()
        .find(|r| r.kind == record::SNAPSHOT)
        .map(|r| crate::storage::raft_log::parse_bounded::<SnapshotMetadata>(&r.payload))
        .transpose()
        .map_err(|e| StorageError::Decode(format!("snapshot marker: {e}")))?;
    let (point, store) = match snap {
        Some((h, store)) => (
            AppliedPoint {
                index: h.index,
                term: h.term,
                conf_state: h.conf_state,
                membership: h.membership,
                leases: h.leases,
                auth: h.auth,
            },
            store,
        ),
        None => {
            // A member that joined and has not received its first snapshot.
            let meta = marker.ok_or_else(|| StorageError::DataDir {
                path: data_dir.to_owned(),
                why: "the WAL has no starting point and there is no snapshot".into(),
            })?;
            let point = AppliedPoint {
                index: meta.index,
                term: meta.term,
                conf_state: meta.get_conf_state().clone(),
                ..Default::default()
            };
            (point, MemStore::new())
        }
    };
    let (base, _) = start_point(&point);
    let log = RaftLog::recover(base, &records)?;
    tracing::info!(
        applied = point.index,
        last = log.last(),
        commit = log.hard_state().commit,
        "recovered from snapshot and WAL"
    );
    let hard_state = log.hard_state().clone();
    Ok(Opened {
        store: Store::Memory(MemoryEngine::new(store)),
        point,
        log,
        log_store: Box::new(WalLog::new(wal, hard_state)),
        intake: Arc::new(CheckImages),
        at_shutdown: AtShutdown(None),
    })
}
