//! The seams where a storage engine plugs in.
//!
//! [`KvEngine`] is the MVCC key-value state with etcd's semantics (one main
//! revision per write txn, sub-revisions, tombstones, compaction) that the
//! state machine's applier runs on; [`KvTxn`] is one write transaction on it.
//! [`LogStore`] makes Raft's entries and hard state durable for the WalWriter.
//! [`StateEngine`] adds what differs between engines around the MVCC state:
//! how an applied batch becomes durable, how an image is taken and
//! installed, what a periodic snapshot means. The state machine and the
//! ApplyActor only ever call these; they never ask which engine runs.
//! The `memory` engine implements them with [`MemStore`](crate::storage::memory::mvcc::MemStore),
//! snapshot files and the [`Wal`](crate::storage::memory::wal::Wal); the `rocksdb` engine with
//! [`RocksKv`](super::rocks::RocksKv) and [`RocksLog`](super::rocks::RocksLog).

use std::path::Path;

use raft::eraftpb::{ConfState, Entry, HardState};

use bytes::Bytes;

use super::image::{ImageHeader, ImageJob};
use super::leases::LeaseTable;
use crate::proto::metastorepb;
use crate::storage::StorageError;
use crate::storage::{Event, KeyValue, MvccError, RangeOptions, RangeResult};

/// MVCC key-value state with etcd's semantics.
pub trait KvEngine {
    /// A write transaction borrowed from the engine.
    type Txn<'a>: KvTxn
    where
        Self: 'a;

    /// Main revision of the last change (1 for an empty store).
    fn current_revision(&self) -> i64;
    /// etcd's `compactMainRev`: -1 before the first compaction.
    fn compact_main_revision(&self) -> i64;
    /// Range read at `opts.rev` (0 = current).
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError>;
    /// [`KvEngine::range`], with the values that are costly to read left
    /// for the returned [`Fill`] to read later, on another thread, as they
    /// are now. The memory engine has every value at hand and fills them
    /// at once (no `Fill`); rocksdb walks its key index now and reads the
    /// values from a RocksDB snapshot later.
    fn range_later(
        &self,
        key: &[u8],
        end: &[u8],
        opts: &RangeOptions,
    ) -> Result<(RangeResult, Option<Fill>), MvccError> {
        Ok((self.range(key, end, opts)?, None))
    }
    /// Counts the keys of `[key, end)` live at `rev` (0: current), going
    /// over at most `max` keys (at least one): the count, and the key to go
    /// on from (`None`: through). Checks `rev` as [`KvEngine::range`] does.
    fn count_slice(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
        max: usize,
    ) -> Result<(i64, Option<Vec<u8>>), MvccError>;
    /// The count a limited range read at `rev` left for the page of
    /// `[key, end)` that follows it, if remembered (taken: one read uses it).
    fn page_count(&self, key: &[u8], end: &[u8], rev: i64) -> Option<i64>;
    /// Remembers that `[key, end)` counts `count` live keys at `rev`: the
    /// page that follows a limited read (a paginated LIST's next page is
    /// then counted without going over the rest of the range again).
    fn remember_page(&self, key: Vec<u8>, end: &[u8], rev: i64, count: i64);
    /// Changes to `[key, end)` from revision `from` on, values and previous
    /// values filled, in revision order, about `max` at most (never a
    /// revision split): what a watcher that starts in the past is sent.
    fn history(
        &self,
        key: &[u8],
        end: &[u8],
        from: i64,
        max: usize,
    ) -> Result<Vec<Event>, MvccError>;
    /// Opens a write transaction at revision current + 1.
    fn write(&mut self) -> Self::Txn<'_>;
    /// Drops history at or below `rev`, keeping the newest version of live keys.
    fn compact(&mut self, rev: i64) -> Result<(), MvccError>;
    /// Number of keys live at the current revision.
    fn key_count(&self) -> usize;
    /// Rough bytes the state takes (for status and metrics).
    fn approximate_size_bytes(&self) -> u64;
}

/// The values a [`KvEngine::range_later`] left out, to read on any thread:
/// what the state held when the range was read, whatever was applied,
/// compacted or installed since.
pub struct Fill(Box<FillFn>);

type FillFn = dyn FnOnce(&mut [KeyValue]) -> Result<(), MvccError> + Send;

impl Fill {
    /// A fill that runs `f` on the range's kvs.
    pub fn new(f: impl FnOnce(&mut [KeyValue]) -> Result<(), MvccError> + Send + 'static) -> Fill {
        Fill(Box::new(f))
    }

    /// Fills in the values of `kvs`: the range's kvs, or the first of them
    /// (the values of those cut off are not read).
    pub fn run(self, kvs: &mut [KeyValue]) -> Result<(), MvccError> {
        (self.0)(kvs)
    }
}

impl std::fmt::Debug for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fill")
    }
}

/// One write transaction: its reads see its own writes; `end` publishes it.
pub trait KvTxn {
    /// Range read including this transaction's writes.
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError>;
    /// Writes `key = value` without returning the previous state.
    fn put_blind(&mut self, key: &[u8], value: Bytes, lease: i64);
    /// Deletes the live keys in range; returns their previous states.
    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Vec<KeyValue>;
    /// Commits: the revision afterwards and the events.
    fn end(self) -> (i64, Vec<Event>);
}

/// Where the applied state stands: what an engine stores atomically with it
/// and what an image's header carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppliedPoint {
    /// Index of the last applied entry.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Raft membership as of that entry.
    pub conf_state: ConfState,
    /// The member registry as of that entry.
    pub membership: metastorepb::Membership,
    /// Every lease as of that entry.
    pub leases: LeaseTable,
    /// The auth store as of that entry.
    pub auth: metastorepb::AuthState,
}

impl AppliedPoint {
    /// The image header for this point over a store at these revisions.
    pub fn header(&self, current_rev: i64, compact_rev: i64) -> ImageHeader {
        ImageHeader {
            index: self.index,
            term: self.term,
            conf_state: self.conf_state.clone(),
            current_rev,
            compact_rev,
            membership: self.membership.clone(),
            leases: self.leases.clone(),
            auth: self.auth.clone(),
        }
    }
}

/// What a periodic snapshot takes for an engine.
pub enum Checkpoint {
    /// The applied state is durable by itself (rocksdb): the Raft log up to
    /// here may go once the engine flushed (its log store's purge does).
    Durable,
    /// Run this off the apply thread; when it returns Ok the snapshot is
    /// durable (memory: the image is encoded, the job writes the file).
    Write(Box<dyn FnOnce() -> Result<(), StorageError> + Send>),
}

/// Replaces an engine's whole state with a received image, off the apply
/// thread: run on a worker, it returns the image's header and the engine
/// over the new state, for the apply thread to swap in.
pub type InstallJob<E> = Box<dyn FnOnce() -> Result<(ImageHeader, E), StorageError> + Send>;

/// The MVCC state as the state machine drives it, engine by engine.
///
/// Whole-state work never runs on the apply thread: images are written by
/// threads of their own (from a consistent view: a RocksDB snapshot, or
/// slices of the memory engine's store at one revision, see
/// [`StateEngine::idle_step`]), and an install runs on a worker while the
/// apply thread holds the work that needs the state.
pub trait StateEngine: KvEngine + Sized {
    /// Ends a batch of applied entries at `point` (rocksdb: one unsynced
    /// write with the applied point; memory: nothing, the WAL has it).
    fn commit(&mut self, point: &AppliedPoint) -> Result<(), StorageError>;
    /// Starts a consistent image of the applied state at `point`; `tmp_dir`
    /// holds any temporary file.
    fn image(&mut self, point: &AppliedPoint, tmp_dir: &Path) -> Result<ImageJob, StorageError>;
    /// Whether work is left for [`StateEngine::idle_step`].
    fn has_idle_work(&self) -> bool {
        false
    }
    /// Whether a compaction's removal is still under way (a Compact with
    /// `physical` is answered once it is not).
    fn compaction_pending(&self) -> bool {
        false
    }
    /// Whether an image must wait for [`StateEngine::idle_step`] to finish
    /// a compaction's removal first (one taken midway would differ from
    /// another member's at the same revision).
    fn image_waits(&self) -> bool {
        false
    }
    /// How long the apply thread rests before the next
    /// [`StateEngine::idle_step`] (`None`: it only yields). A compaction's
    /// removal on rocksdb rests between its slices, as etcd's scheduled
    /// compaction sleeps between its batches: run back to back, its 1 ms
    /// slices doubled the put p99 while it went (every step of a put on the
    /// thread waited for one).
    fn idle_rest(&self) -> Option<std::time::Duration> {
        None
    }
    /// Moves whole-state work on by one bounded slice (about a
    /// millisecond): the images being taken, then a compaction's removal.
    /// Returns whether any is left. The apply thread calls it between its
    /// other messages until it returns false.
    fn idle_step(&mut self) -> bool {
        false
    }
    /// Every `snapshot-count` entries: what makes the state at `point`
    /// durable so the log before it may go.
    fn checkpoint(&mut self, point: &AppliedPoint, data_dir: &Path) -> Checkpoint;
    /// Replacing the whole state with the image in the file at `path`
    /// (received from the leader and checked), durably: after a crash the
    /// member restarts from the old state or the new one, never a mix. The
    /// file is consumed. While the job runs, the apply thread touches
    /// neither this engine's state nor its files.
    fn install_job(&self, path: &Path, data_dir: &Path) -> InstallJob<Self>;
    /// What Maintenance.Defragment runs off the apply thread, if anything.
    fn defragment_job(&self) -> Option<Box<dyn FnOnce() + Send>>;
    /// The files changed size outside of writes (a defragmentation ran):
    /// a cached size estimate is stale.
    fn forget_size(&self) {}
    /// Someone watches (or no longer does): write txns return complete
    /// events, values and previous states filled, or none at all.
    fn set_watched(&mut self, on: bool);
}

/// Reads back entries of the Raft log by index, from a worker thread: what
/// lets the log keep only its tail in memory (see `raft_log`).
pub trait LogReader: Send + Sync {
    /// Entries `[low, high)` in order, about `max_bytes` at most but at
    /// least one; fewer (or none) when the log no longer holds them.
    fn read(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
}

/// What a member does with an image from the leader as it arrives: checks
/// it whole and, where the engine can, builds what installing it takes, so
/// that the install that follows has less left to do. Changes no state.
pub trait ImageIntake: Send + Sync {
    /// Reads the image from `input` to its end; `path` is the file it is
    /// written to meanwhile (what an install is asked for later).
    fn take_in(&self, path: &Path, input: &mut dyn std::io::Read) -> Result<(), StorageError>;
}

/// Durable home of the Raft log: what the WalWriter writes through.
pub trait LogStore: Send {
    /// Buffers entries and/or a hard state (no I/O promised yet).
    fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>);
    /// Makes everything buffered durable (one fsync for all of it).
    fn sync(&mut self) -> Result<(), StorageError>;
    /// A durable snapshot covers the log up to `snapshot`: forgets entries
    /// at or below it, except those after `keep_after` (at or below
    /// `snapshot`) where the log reads entries back from this store (the
    /// entries kept for followers catching up).
    fn purge(&mut self, snapshot: u64, keep_after: u64) -> Result<(), StorageError>;
    /// The state machine installed a snapshot at `meta`'s index: the log
    /// starts over after it (everything buffered before is written first).
    /// Made durable by the next `sync`.
    fn reset(&mut self, meta: &raft::eraftpb::SnapshotMetadata, hard_state: &HardState);
}
