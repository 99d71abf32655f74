//! Raft driving logic, free of actix: [`node::Node`] wraps raft-rs's `RawNode`
//! and turns its `Ready`s into plain outputs (what to persist, what to send,
//! what to apply, which reads may proceed) that the RaftActor carries out.
//!
//! Invariants:
//! - Readies are persisted in order; `on_persisted(n)` means every ready up to
//!   `n` is durable, and only then are a follower's or candidate's messages
//!   (raft's `persisted_messages`) released.
//! - At most one ready carrying new entries is being persisted at a time: what is
//!   proposed meanwhile waits in raft's unstable log and goes out as one larger
//!   append (group commit).
//! - Linearizable reads that arrive in one turn share ONE `read_index` call, with
//!   a context never used before.

pub mod apply_flow;
#[cfg(test)]
pub mod network;
pub mod node;
pub mod raft_config;

pub use node::{Node, Persist, Turn};
pub use raft_config::{logger, raft_config};
