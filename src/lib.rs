//! MetaStore: a distributed metadata store that speaks the etcd v3 API.
//!
//! Layers, imports flowing one way: [`api`] (gRPC/HTTP handlers) → [`actors`]
//! (RaftActor, WalWriter, ApplyActor, Ticker) → [`consensus`] and
//! [`state_machine`] (plain logic) → [`storage`] (Raft log, WAL, MVCC).

pub mod actors;
pub mod api;
pub mod config;
pub mod consensus;
pub mod error;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod state_machine;
pub mod status;
pub mod storage;
pub mod watch;
