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

use prost::Message as _;
use raft::eraftpb::ConfState;

use crate::error::ApiError;
use crate::proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use crate::proto::metastorepb::{internal_request, InternalRequest};
use crate::storage::mvcc::MemStore;

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

/// No watcher consumes MVCC events yet, so the store does not build them
/// (each would copy the written value).
fn quiet(mut store: MemStore) -> MemStore {
    store.set_record_events(false);
    store
}

/// etcd's KV state machine over the in-memory MVCC store.
#[derive(Debug, Default)]
pub struct StateMachine {
    store: MemStore,
    applied_index: u64,
    applied_term: u64,
    conf_state: ConfState,
}

impl StateMachine {
    /// An empty state machine at `index` (the bootstrap point).
    pub fn new(index: u64, term: u64, conf_state: ConfState) -> StateMachine {
        StateMachine {
            store: quiet(MemStore::new()),
            applied_index: index,
            applied_term: term,
            conf_state,
        }
    }

    /// The MVCC store (for status and metrics).
    pub fn store(&self) -> &MemStore {
        &self.store
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
        let result = match req.request {
            Some(internal_request::Request::Put(p)) => {
                kv::put(&mut self.store, &p).map(|(r, _)| WriteResponse::Put(r))
            }
            Some(internal_request::Request::DeleteRange(d)) => Ok(WriteResponse::DeleteRange(
                kv::delete_range(&mut self.store, &d).0,
            )),
            Some(internal_request::Request::Txn(t)) => {
                kv::txn(&mut self.store, &t).map(|(r, _)| WriteResponse::Txn(r))
            }
            Some(internal_request::Request::Compaction(c)) => {
                kv::compact(&mut self.store, &c).map(WriteResponse::Compact)
            }
            None => Err(ApiError::Internal("empty request in log entry".into())),
        };
        Some(Applied { id: req.id, result })
    }

    /// Serves a read against the applied state.
    pub fn read(&mut self, req: &ReadRequest) -> Result<ReadResponse, ApiError> {
        match req {
            ReadRequest::Range(r) => kv::range(&self.store, r).map(ReadResponse::Range),
            ReadRequest::Txn(t) => kv::txn(&mut self.store, t).map(|(r, _)| ReadResponse::Txn(r)),
        }
    }

    /// Rebuilds from a snapshot.
    pub fn restore(store: MemStore, index: u64, term: u64, conf_state: ConfState) -> StateMachine {
        StateMachine {
            store: quiet(store),
            applied_index: index,
            applied_term: term,
            conf_state,
        }
    }
}
