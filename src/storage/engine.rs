//! The seams where a storage engine plugs in.
//!
//! [`KvEngine`] is the MVCC key-value state with etcd's semantics (one main
//! revision per write txn, sub-revisions, tombstones, compaction) that the
//! state machine's applier runs on; [`KvTxn`] is one write transaction on it.
//! [`LogStore`] makes Raft's entries and hard state durable for the WalWriter.
//! The `memory` engine implements them with [`MemStore`](super::mvcc::MemStore)
//! and the [`Wal`](super::wal::Wal); a RocksDB engine implements the same
//! traits over column families.

use raft::eraftpb::{Entry, HardState};

use super::mvcc::{Event, KeyValue, MvccError, RangeOptions, RangeResult};
use crate::error::StorageError;

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
    /// Opens a write transaction at revision current + 1.
    fn write(&mut self) -> Self::Txn<'_>;
    /// Drops history at or below `rev`, keeping the newest version of live keys.
    fn compact(&mut self, rev: i64) -> Result<(), MvccError>;
    /// Number of keys live at the current revision.
    fn key_count(&self) -> usize;
    /// Rough bytes the state takes (for status and metrics).
    fn approximate_size_bytes(&self) -> u64;
}

/// One write transaction: its reads see its own writes; `end` publishes it.
pub trait KvTxn {
    /// Range read including this transaction's writes.
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError>;
    /// Writes `key = value` without returning the previous state.
    fn put_blind(&mut self, key: &[u8], value: Vec<u8>, lease: i64);
    /// Deletes the live keys in range; returns their previous states.
    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Vec<KeyValue>;
    /// Commits: the revision afterwards and the events.
    fn end(self) -> (i64, Vec<Event>);
}

/// Durable home of the Raft log: what the WalWriter writes through.
pub trait LogStore: Send {
    /// Buffers entries and/or a hard state (no I/O promised yet).
    fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>);
    /// Makes everything buffered durable (one fsync for all of it).
    fn sync(&mut self) -> Result<(), StorageError>;
    /// Forgets entries at or below `upto`, which a durable snapshot covers.
    fn purge(&mut self, upto: u64) -> Result<(), StorageError>;
}
