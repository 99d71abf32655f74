//! What handlers and `/metrics` need to know about the member without asking
//! an actor: atomics written by the actors, read by anyone. Not a lock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Identity and live state of this member.
#[derive(Debug, Default)]
pub struct NodeStatus {
    /// Cluster ID (fixed at start-up).
    pub cluster_id: u64,
    /// This member's ID (fixed at start-up).
    pub member_id: u64,
    /// Current Raft term.
    pub term: AtomicU64,
    /// Current leader (0 = none).
    pub leader: AtomicU64,
    /// Raft commit index.
    pub commit_index: AtomicU64,
    /// Applied index.
    pub applied_index: AtomicU64,
    /// Current MVCC revision.
    pub revision: AtomicI64,
    /// Approximate bytes of the store.
    pub db_size: AtomicU64,
}

impl NodeStatus {
    /// A status for a member.
    pub fn new(cluster_id: u64, member_id: u64) -> NodeStatus {
        NodeStatus {
            cluster_id,
            member_id,
            ..Default::default()
        }
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.term.load(Relaxed)
    }

    /// Current leader.
    pub fn leader(&self) -> u64 {
        self.leader.load(Relaxed)
    }
}
