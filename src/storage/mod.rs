//! Storage: the Raft log store, the WAL that makes it durable, and the MVCC
//! key-value state. Knows nothing of actors or gRPC.

pub mod mvcc;
pub mod raft_log;
pub mod wal;
