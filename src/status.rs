//! What handlers and `/metrics` need to know about the member without asking
//! an actor: atomics written by the actors, read by anyone. Not a lock on
//! any write path (the peer table is written on connect and disconnect only).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

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
    /// This member is a learner.
    pub is_learner: AtomicBool,
    /// Since when each peer's stream has been up (None: down).
    pub peers: parking_lot::RwLock<HashMap<u64, Option<Instant>>>,
    /// Members removed for good: their traffic is refused.
    pub removed: parking_lot::RwLock<HashSet<u64>>,
    /// Raised alarms as (member, `AlarmType` value), as last applied.
    pub alarms: parking_lot::RwLock<Vec<(u64, i32)>>,
    /// The member's one way to stop on an error it cannot survive.
    pub fatal: crate::fatal::Fatal,
}

/// What a removed member's peers answer it (etcd's words).
pub const REMOVED: &str = "the member has been permanently removed from the cluster";

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

    /// MVCC revision as of the last applied batch.
    pub fn revision(&self) -> i64 {
        self.revision.load(Relaxed)
    }

    /// The known leader (0: none).
    pub fn leader(&self) -> u64 {
        self.leader.load(Relaxed)
    }

    /// Whether this member is a learner.
    pub fn is_learner(&self) -> bool {
        self.is_learner.load(Relaxed)
    }

    /// Records a peer's stream going up or down.
    pub fn set_peer_active(&self, id: u64, up: bool) {
        let mut peers = self.peers.write();
        let entry = peers.entry(id).or_insert(None);
        match (up, entry.is_some()) {
            (true, false) => *entry = Some(Instant::now()),
            (false, _) => *entry = None,
            (true, true) => {}
        }
    }

    /// Whether `id` was removed from the cluster.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.read().contains(&id)
    }

    /// Forgets a removed peer.
    pub fn forget_peer(&self, id: u64) {
        self.peers.write().remove(&id);
    }

    /// Whether `id` (a peer; this member always is) has been connected
    /// since `since` or earlier.
    pub fn connected_since(&self, id: u64, since: Instant) -> bool {
        if id == self.member_id {
            return true;
        }
        matches!(self.peers.read().get(&id), Some(Some(t)) if *t <= since)
    }
}

/// Test-only fault switches, set through the client port when the member
/// runs with `--experimental-fault-injection`.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every applied batch takes this many more milliseconds, as on a slow
    /// disk (the applier's thread sleeps: it is what a slow commit does).
    pub slow_apply_ms: std::sync::atomic::AtomicU64,
    /// Fail the WAL writer's next fsync (the member must stop alone).
    pub fail_wal_sync: AtomicBool,
    /// Fail the engine's next commit of an applied batch (the member must
    /// stop alone, and lose nothing it acknowledged).
    pub fail_commit: AtomicBool,
}
