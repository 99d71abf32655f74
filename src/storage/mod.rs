//! Storage: the Raft log store, the WAL that makes it durable, and the MVCC
//! key-value state, behind the engine traits in [`engine`]. Knows nothing of
//! actors or gRPC.

pub mod bbolt;
#[cfg(test)]
pub mod conformance;
pub mod engine;
pub mod image;
pub mod leases;
#[cfg(test)]
pub mod log_conformance;
pub mod memory;
pub mod mvcc;
pub mod raft_log;
pub mod rocks;
pub mod snapshots;
pub mod wal;
pub mod wal_log;
