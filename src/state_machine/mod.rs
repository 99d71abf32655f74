//! The replicated state machine: etcd's KV semantics (Range, Put, DeleteRange,
//! Txn, Compact) executed on the MVCC store.
//!
//! Owned by the ApplyActor alone. Every write arrives as a committed Raft entry
//! and is applied exactly once, in log order; a write that fails a check (lease
//! not found, key not found for ignore_value) changes nothing and consumes no
//! revision, as in etcd. Reads run against the same store (serializable reads
//! at once, linearizable reads once the applied index reached their read index).

pub mod kv;
pub mod snapshot;

use std::path::Path;

use prost::Message as _;
use raft::eraftpb::ConfState;

use crate::error::ApiError;
use crate::error::StorageError;
use crate::proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use crate::proto::metastorepb::{internal_request, InternalRequest};
use crate::storage::engine::KvEngine;
use crate::storage::image::{self, ImageHeader, ImageJob};
use crate::storage::mvcc::MemStore;
use crate::storage::rocks::RocksKv;

/// The answer to a write, before the API layer fills the header's ids and term.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResponse {
    /// Put.
    Put(PutResponse),
    /// DeleteRange.
    DeleteRange(DeleteRangeResponse),
    /// Txn.
    Txn(TxnResponse),
    /// Compact.
    Compact(CompactionResponse),
}

/// A read request (Range, or a Txn without writes).
#[derive(Debug, Clone, PartialEq)]
pub enum ReadRequest {
    /// Range.
    Range(RangeRequest),
    /// A read-only Txn.
    Txn(TxnRequest),
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadResponse {
    /// Range.
    Range(RangeResponse),
    /// Txn.
    Txn(TxnResponse),
}

/// What applying one entry produced.
#[derive(Debug)]
pub struct Applied {
    /// The request id the proposer waits on (0 for entries nobody waits on).
    pub id: u64,
    /// The answer.
    pub result: Result<WriteResponse, ApiError>,
}

/// The MVCC store of the configured engine.
// One per process, never moved on a hot path: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Store {
    /// In memory (durable through the WAL and snapshot files).
    Memory(MemStore),
    /// In RocksDB (durable by itself; see [`RocksKv`]).
    Rocks(RocksKv),
}

/// Runs `$body` with `$s` bound to the engine inside `$store`.
macro_rules! on_store {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            Store::Memory($s) => $body,
            Store::Rocks($s) => $body,
        }
    };
}

/// etcd's KV state machine over the engine's MVCC store.
#[derive(Debug)]
pub struct StateMachine {
    store: Store,
    applied_index: u64,
    applied_term: u64,
    conf_state: ConfState,
}

impl StateMachine {
    /// An empty in-memory state machine at `index` (the bootstrap point).
    pub fn new(index: u64, term: u64, conf_state: ConfState) -> StateMachine {
        StateMachine::restore(MemStore::new(), index, term, conf_state)
    }

    /// Rebuilds from a memory-engine snapshot.
    pub fn restore(store: MemStore, index: u64, term: u64, conf_state: ConfState) -> StateMachine {
        let mut store = store;
        // No watcher consumes MVCC events yet, so the store does not build
        // them (each would copy the written value).
        store.set_record_events(false);
        StateMachine::with_store(Store::Memory(store), index, term, conf_state)
    }

    /// A state machine over a RocksDB store whose applied point is `index`.
    pub fn rocks(store: RocksKv, index: u64, term: u64, conf_state: ConfState) -> StateMachine {
        StateMachine::with_store(Store::Rocks(store), index, term, conf_state)
    }

    fn with_store(store: Store, index: u64, term: u64, conf_state: ConfState) -> StateMachine {
        StateMachine {
            store,
            applied_index: index,
            applied_term: term,
            conf_state,
        }
    }

    /// The MVCC store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Main revision of the last change.
    pub fn current_revision(&self) -> i64 {
        on_store!(&self.store, s => s.current_revision())
    }

    /// Number of live keys.
    pub fn key_count(&self) -> usize {
        on_store!(&self.store, s => KvEngine::key_count(s))
    }

    /// Rough size of the state in bytes.
    pub fn approximate_size_bytes(&self) -> u64 {
        on_store!(&self.store, s => KvEngine::approximate_size_bytes(s))
    }

    /// Ends a batch of applied entries: the RocksDB engine writes the changes
    /// with the applied index in one (unsynced) write batch.
    pub fn commit(&mut self) -> Result<(), StorageError> {
        match &mut self.store {
            Store::Memory(_) => Ok(()),
            Store::Rocks(s) => s.commit(self.applied_index, self.applied_term, &self.conf_state),
        }
    }

    /// Starts an image of the applied state (see [`image`]); the rocksdb
    /// engine streams it into an unlinked file under `tmp_dir`.
    pub fn take_image(&self, tmp_dir: &Path) -> Result<ImageJob, StorageError> {
        match &self.store {
            Store::Memory(m) => {
                let header = ImageHeader {
                    index: self.applied_index,
                    term: self.applied_term,
                    conf_state: self.conf_state.clone(),
                    current_rev: m.current_revision(),
                    compact_rev: m.compact_main_revision(),
                };
                let bytes = image::write_memory_image(m, &header, Vec::new())
                    .map_err(|e| StorageError::io("encode the image", e))?;
                Ok(ImageJob::Ready(bytes))
            }
            Store::Rocks(r) => {
                let path = tmp_dir.join(format!("image-{}.tmp", self.applied_index));
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|e| StorageError::io(format!("create {}", path.display()), e))?;
                // Unlinked at once: the file lives as long as the stream reads it.
                std::fs::remove_file(&path)
                    .map_err(|e| StorageError::io(format!("unlink {}", path.display()), e))?;
                Ok(ImageJob::Writing(
                    r.spawn_image(std::io::BufWriter::new(file))?,
                ))
            }
        }
    }

    /// What Maintenance.Defragment runs off the apply thread: the rocksdb
    /// engine compacts its files; the memory engine has nothing to do.
    pub fn defragment_job(&self) -> Option<Box<dyn FnOnce() + Send>> {
        match &self.store {
            Store::Memory(_) => None,
            Store::Rocks(s) => Some(Box::new(s.defragment_job())),
        }
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Term of the last applied entry.
    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    /// Membership as of the applied index.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Applies one committed entry's payload. `data` empty (a new leader's
    /// no-op) only advances the applied index.
    pub fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Option<Applied> {
        if index <= self.applied_index {
            // Already in the snapshot we restored from: never apply twice.
            return None;
        }
        self.applied_index = index;
        self.applied_term = term;
        if data.is_empty() {
            return None;
        }
        let req = match InternalRequest::decode(data) {
            Ok(r) => r,
            Err(e) => {
                // Every replica decodes the same bytes the same way, so skipping
                // keeps them identical; the proposer validated before proposing.
                tracing::error!(index, error = %e, "undecodable entry skipped");
                return None;
            }
        };
        // The MVCC events the writes return are for watchers; none exist yet.
        let result = on_store!(&mut self.store, store => match req.request {
            Some(internal_request::Request::Put(p)) => {
                kv::put(store, &p).map(|(r, _)| WriteResponse::Put(r))
            }
            Some(internal_request::Request::DeleteRange(d)) => {
                Ok(WriteResponse::DeleteRange(kv::delete_range(store, &d).0))
            }
            Some(internal_request::Request::Txn(t)) => {
                kv::txn(store, &t).map(|(r, _)| WriteResponse::Txn(r))
            }
            Some(internal_request::Request::Compaction(c)) => {
                kv::compact(store, &c).map(WriteResponse::Compact)
            }
            None => Err(ApiError::Internal("empty request in log entry".into())),
        });
        Some(Applied { id: req.id, result })
    }

    /// Serves a read against the applied state.
    pub fn read(&mut self, req: &ReadRequest) -> Result<ReadResponse, ApiError> {
        on_store!(&mut self.store, store => match req {
            ReadRequest::Range(r) => kv::range(store, r).map(ReadResponse::Range),
            ReadRequest::Txn(t) => kv::txn(store, t).map(|(r, _)| ReadResponse::Txn(r)),
        })
    }
}
