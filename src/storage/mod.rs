//! Storage: the shared vocabulary of the key space (KeyValue, Event,
//! RangeOptions, RangeResult, Revision, the errors), the engine traits
//! ([`engine`]), the engines, and the one surface that chooses, bootstraps,
//! restores and opens an engine ([`engines`]). Everything above names only
//! what this file exports and the traits; which engine runs, and how it
//! is made durable, is decided here and nowhere else.
//!
//! Rooms:
//! - [`engines`]: the engine choice ([`Engine`]), the [`Store`] of the chosen
//!   engine and its dispatch, bootstrapping a new data dir, restoring one
//!   from an image (or an etcd data file), and recovering at start-up.
//! - [`marker`]: the data dir's marker (which engine and format wrote it,
//!   whose member it is).
//! - [`memory`]: the `memory` engine (MVCC in memory, its own WAL and
//!   snapshot files); [`rocks`]: the `rocksdb` engine.
//! - [`dirs`]: creating directories durably (their parent fsynced).
//! - [`raft_log`]: the in-memory Raft log both engines recover into;
//!   [`image`]: the state image format both engines read and write;
//!   [`bbolt`]: the reader for etcd's data files; [`leases`]: the lease table.
//!
//! Knows nothing of actors, Raft's driver, or gRPC: imports only `proto`.

#[cfg(test)]
pub(crate) mod alloc_probe;
pub mod bbolt;
#[cfg(test)]
pub mod conformance;
pub mod dirs;
pub mod engine;
pub mod engines;
mod error;
pub mod image;
pub mod image_sort;
pub mod leases;
#[cfg(test)]
pub mod log_conformance;
pub mod marker;
pub mod memory;
pub mod raft_log;
mod revision;
pub mod rocks;

pub(crate) use engines::on_store;
pub use engines::{
    bootstrap, open, restore, AtShutdown, Engine, Opened, StorageOptions, Store, INCOMING,
};
pub use error::StorageError;
pub use marker::Identity;
pub use revision::Revision;

/// A key's state at one revision, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key bytes.
    pub key: Vec<u8>,
    /// Main revision of the put that created the key's current generation.
    pub create_revision: i64,
    /// Main revision of the last modification.
    pub mod_revision: i64,
    /// Number of puts in the current generation (1 for a fresh key).
    pub version: i64,
    /// The value bytes (empty for tombstones and keys-only reads), shared
    /// with the engine's copy where it holds one in memory.
    pub value: bytes::Bytes,
    /// Lease id attached to the key, 0 for none.
    pub lease: i64,
}

/// What happened to a key in an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change made by a committed write transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The new key state; for deletes only `key` and `mod_revision` are set,
    /// as in etcd's tombstone events.
    pub kv: KeyValue,
    /// The live key state just before this operation, if the key was live.
    /// This includes earlier operations of the same transaction; etcd's watch
    /// instead reads at `mod_revision - 1`, which differs only when one
    /// transaction touches a key twice (etcd's txn API rejects that).
    pub prev_kv: Option<KeyValue>,
}

/// Errors from reads, compaction and snapshot decoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// The requested revision is older than the compacted revision.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// A snapshot (or stored version) could not be decoded.
    #[error("mvcc: corrupt snapshot: {0}")]
    CorruptSnapshot(String),
    /// The engine's storage failed to read.
    #[error("mvcc: storage: {0}")]
    Storage(String),
}

/// The result of a range read.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RangeResult {
    /// Live keys in ascending key order, at most `limit` of them.
    pub kvs: Vec<KeyValue>,
    /// Number of live keys in the range at the read revision, ignoring `limit`.
    pub count: i64,
    /// The store's current revision when the read was served.
    pub rev: i64,
}

/// Options for a range read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RangeOptions {
    /// Maximum number of kvs returned; `<= 0` means no limit.
    pub limit: i64,
    /// Revision to read at; `<= 0` means the current revision.
    pub rev: i64,
    /// Return only `count`, with `kvs` empty.
    pub count_only: bool,
    /// Return kvs with empty values.
    pub keys_only: bool,
    /// Stop at `limit` instead of counting the whole range: `count` is then
    /// the number of kvs returned (a range read a slice at a time counts
    /// once, not once per slice).
    pub uncounted: bool,
}
