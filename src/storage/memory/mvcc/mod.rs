//! In-memory multi-version key-value store with etcd v3 MVCC semantics
//! (etcd `server/storage/mvcc`: kvstore*.go, index.go, key_index.go).
//!
//! This module owns the versioned key space: revision numbering, reads at
//! historical revisions, write transactions, compaction and the snapshot
//! format. It knows nothing about leases beyond storing the lease id, nor
//! about watchers, raft or the wire protocol.
//!
//! Invariants (checked again by `Rebuild`, relied on everywhere):
//! - The store's main revision starts at 1 for an empty store. A write
//!   transaction that changes something commits as `current + 1`; its n-th
//!   put/delete gets sub revision n. A transaction without changes does not
//!   move the revision.
//! - Every key maps to a non-empty history ordered strictly by `Revision`.
//!   A tombstone (a version with `version == 0`) always follows a live
//!   version and never another tombstone; a history starts with one only
//!   after compaction at exactly its revision.
//!   Within a generation `version` grows by one and `create_revision` stays;
//!   the first put after a tombstone has `version == 1` and
//!   `create_revision == mod_revision`.
//! - After compaction at C, every key holds at most one version with
//!   `main <= C`, and that version is live or a tombstone at exactly C (so
//!   a watch from C is sent that deletion); keys whose history would
//!   become empty are removed. Reads at any revision `>= C` are unaffected.
//! - The cached live-key count and byte estimate always equal a full
//!   recomputation over the map.
//!
//! Concurrency is the caller's business: reads take `&self`, writes `&mut self`.
//!
//! A later watch implementation can find the changes after revision R by
//! walking the key histories for versions with `main > R` (each history is
//! sorted, so this is a binary search per key), or more cheaply by keeping a
//! bounded log of the `Event`s returned from `WriteTxn::end`; neither is
//! built here.

mod history;
mod rebuild;
mod store;
mod txn;
mod value;

pub use rebuild::Rebuild;
pub use store::{MemStore, VersionView};
pub use txn::WriteTxn;

use bytes::Bytes;

use crate::storage::{Event, EventKind, KeyValue, MvccError, RangeOptions, RangeResult, Revision};

/// A change from the store's history (see `MemStore::history`), with where
/// its versions are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEvent {
    /// The change.
    pub event: Event,
    /// Where `event.kv` was written.
    pub rev: Revision,
    /// Where `event.prev_kv` was written.
    pub prev_rev: Option<Revision>,
}

impl crate::storage::engine::KvEngine for MemStore {
    type Txn<'a> = WriteTxn<'a>;

    fn current_revision(&self) -> i64 {
        MemStore::current_revision(self)
    }
    fn compact_main_revision(&self) -> i64 {
        MemStore::compact_main_revision(self)
    }
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        MemStore::range(self, key, end, opts)
    }
    fn count_slice(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
        max: usize,
    ) -> Result<(i64, Option<Vec<u8>>), MvccError> {
        MemStore::count_slice(self, key, end, rev, max)
    }
    fn page_count(&self, key: &[u8], end: &[u8], rev: i64) -> Option<i64> {
        MemStore::page_count(self, key, end, rev)
    }
    fn remember_page(&self, key: Vec<u8>, end: &[u8], rev: i64, count: i64) {
        MemStore::remember_page(self, key, end, rev, count)
    }
    fn history(
        &self,
        key: &[u8],
        end: &[u8],
        from: i64,
        max: usize,
    ) -> Result<Vec<Event>, MvccError> {
        Ok(MemStore::history(self, key, end, from, max)?
            .into_iter()
            .map(|h| h.event)
            .collect())
    }
    fn write(&mut self) -> WriteTxn<'_> {
        MemStore::write(self)
    }
    fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        MemStore::compact(self, rev)
    }
    fn key_count(&self) -> usize {
        MemStore::key_count(self)
    }
    fn approximate_size_bytes(&self) -> u64 {
        MemStore::approximate_size_bytes(self)
    }
}

impl crate::storage::engine::KvTxn for WriteTxn<'_> {
    fn range(&self, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        WriteTxn::range(self, key, end, opts)
    }
    fn put_blind(&mut self, key: &[u8], value: Bytes, lease: i64) {
        WriteTxn::put_blind(self, key, value, lease)
    }
    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        WriteTxn::delete_range(self, key, end)
    }
    fn end(self) -> (i64, Vec<Event>) {
        WriteTxn::end(self)
    }
}
