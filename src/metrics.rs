//! Prometheus metrics served at `/metrics`: the report's names
//! (`raft_leader_changes_total`, `raft_propose_duration_ms`, ...) and etcd's own
//! where they mean the same (`etcd_server_has_leader`,
//! `etcd_disk_wal_fsync_duration_seconds`, ...) so existing dashboards work.
//!
//! Metrics are atomics inside prometheus-client types: updating one never takes
//! a lock on the write path. Each member has its own [`Metrics`] (no
//! process-wide registry), shared by its actors and handlers through an `Arc`.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod process;

/// Labels of a gRPC method (go-grpc-prometheus's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// e.g. `etcdserverpb.KV`.
    pub grpc_service: String,
    /// e.g. `Put`.
    pub grpc_method: String,
}

impl RpcLabels {
    /// The labels of the latency histogram.
    pub fn duration_labels(&self) -> MethodLabels {
        MethodLabels {
            grpc_service: self.grpc_service.clone(),
            grpc_method: self.grpc_method.clone(),
        }
    }
}

/// Labels of a finished call: its method and status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// As [`RpcLabels`].
    pub grpc_type: &'static str,
    /// As [`RpcLabels`].
    pub grpc_service: String,
    /// As [`RpcLabels`].
    pub grpc_method: String,
    /// go-grpc's code name (`OK`, `Unavailable`, ...).
    pub grpc_code: &'static str,
}

impl RpcLabels {
    /// The labels of a call of this method that ended with `code`.
    pub fn with_code(&self, code: &'static str) -> CallLabels {
        CallLabels {
            grpc_type: self.grpc_type,
            grpc_service: self.grpc_service.clone(),
            grpc_method: self.grpc_method.clone(),
            grpc_code: code,
        }
    }
}

/// Labels of the gRPC latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// e.g. `etcdserverpb.KV`.
    pub grpc_service: String,
    /// e.g. `Put`.
    pub grpc_method: String,
}

/// Labels of the per-peer network metrics (etcd's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(non_snake_case)]
pub struct ToPeer {
    /// The peer's member ID in hex (etcd's label name).
    pub To: String,
}

/// Labels of the per-peer received bytes (etcd's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(non_snake_case)]
pub struct FromPeer {
    /// The peer's member ID in hex (etcd's label name).
    pub From: String,
}

/// Every metric MetaStore exports.
pub struct Metrics {
    registry: Registry,
    /// 1 when a leader is known.
    pub has_leader: Gauge,
    /// 1 when this member leads.
    pub is_leader: Gauge,
    /// Leader changes seen (etcd name).
    pub leader_changes_seen: Counter,
    /// Leader changes seen (report name).
    pub raft_leader_changes: Counter,
    /// Elections this member started.
    pub election_timeouts: Counter,
    /// Heartbeat ticks while leading.
    pub heartbeat_timeouts: Counter,
    /// Proposals committed.
    pub proposals_committed: Gauge,
    /// Proposals applied.
    pub proposals_applied: Gauge,
    /// Proposals waiting to be applied.
    pub proposals_pending: Gauge,
    /// Proposals that failed.
    pub proposals_failed: Counter,
    /// Committed entries handed to the applier and not yet applied (capped).
    pub apply_inflight_entries: Gauge,
    /// Their bytes.
    pub apply_inflight_bytes: Gauge,
    /// Committed entries waiting in the log for room at the applier.
    pub apply_waiting_entries: Gauge,
    /// Reads waiting in the applier for their read index (capped).
    pub apply_waiting_reads: Gauge,
    /// Propose → apply time in milliseconds.
    pub propose_duration_ms: Histogram,
    /// Time to apply one batch in milliseconds.
    pub apply_duration_ms: Histogram,
    /// WAL fsync time in seconds.
    pub wal_fsync_seconds: Histogram,
    /// Entries per WAL write (group-commit batch size).
    pub wal_batch_entries: Histogram,
    /// On the leader: append messages sent to followers and not yet
    /// answered by them.
    pub raft_inflight_messages: Gauge,
    /// Times messages to a peer were dropped (queue full or stream down).
    pub peer_dropped_messages: Counter,
    /// Raft messages from peers dropped because they were addressed to
    /// another member.
    pub peer_misaddressed_messages: Counter,
    /// Reads of old Raft log entries from disk, to send a follower behind
    /// the in-memory tail (rocksdb engine).
    pub raft_log_disk_reads: Counter,
    /// Time between two ticks handled by the RaftActor.
    pub tick_interval_seconds: Histogram,
    /// The longest a tick was late (beyond its interval) since start, in ms.
    pub tick_delay_max_ms: Gauge,
    /// Bytes held by the MVCC store.
    pub db_total_size: Gauge,
    /// Current MVCC revision.
    pub mvcc_revision: Gauge,
    /// Live keys.
    pub keys_total: Gauge,
    /// Watchers on this member.
    pub watchers: Gauge,
    /// Watchers catching up (their clients read slower than writes come).
    pub slow_watchers: Gauge,
    /// Watch streams.
    pub watch_streams: Gauge,
    /// Bytes of encoded events kept for watchers catching up.
    pub watch_ring_bytes: Gauge,
    /// Requests started, per method.
    pub grpc_started: Family<RpcLabels, Counter>,
    /// Requests finished, per method and code.
    pub grpc_handled: Family<CallLabels, Counter>,
    /// Request latency in milliseconds, per method.
    pub grpc_duration_ms: Family<MethodLabels, Histogram>,
    /// gRPC message bytes sent to clients.
    pub grpc_sent_bytes: Counter,
    /// gRPC message bytes received from clients.
    pub grpc_received_bytes: Counter,
    /// Time to make an applied batch durable in the engine (etcd's backend
    /// commit).
    pub backend_commit_seconds: Histogram,
    /// Bytes of the store that hold live data.
    pub db_in_use_size: Gauge,
    /// Raft message bytes sent, per peer.
    pub peer_sent_bytes: Family<ToPeer, Counter>,
    /// Raft message bytes received, per peer.
    pub peer_received_bytes: Family<FromPeer, Counter>,
    /// Heartbeat → answer time to each peer, measured by the leader.
    pub peer_round_trip_seconds: Family<ToPeer, Histogram>,
}

fn ms_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

impl Metrics {
    /// A fresh set of metrics with its registry.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes_seen: Counter::default(),
            raft_leader_changes: Counter::default(),
            election_timeouts: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            proposals_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            apply_inflight_entries: Gauge::default(),
            apply_inflight_bytes: Gauge::default(),
            apply_waiting_entries: Gauge::default(),
            apply_waiting_reads: Gauge::default(),
            propose_duration_ms: ms_histogram(),
            apply_duration_ms: ms_histogram(),
            wal_fsync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            wal_batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            raft_inflight_messages: Gauge::default(),
            peer_dropped_messages: Counter::default(),
            peer_misaddressed_messages: Counter::default(),
            raft_log_disk_reads: Counter::default(),
            tick_interval_seconds: Histogram::new(exponential_buckets(0.05, 1.5, 12)),
            tick_delay_max_ms: Gauge::default(),
            db_total_size: Gauge::default(),
            mvcc_revision: Gauge::default(),
            keys_total: Gauge::default(),
            watchers: Gauge::default(),
            slow_watchers: Gauge::default(),
            watch_streams: Gauge::default(),
            watch_ring_bytes: Gauge::default(),
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            grpc_duration_ms: Family::new_with_constructor(ms_histogram),
            grpc_sent_bytes: Counter::default(),
            grpc_received_bytes: Counter::default(),
            backend_commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            db_in_use_size: Gauge::default(),
            peer_sent_bytes: Family::default(),
            peer_received_bytes: Family::default(),
            peer_round_trip_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 16))
            }),
            registry: Registry::default(),
        };
        registry.register(
            "etcd_server_has_leader",
            "Whether a leader exists (1) or not (0)",
            m.has_leader.clone(),
        );
        registry.register(
            "etcd_server_is_leader",
            "Whether this member is the leader",
            m.is_leader.clone(),
        );
        registry.register(
            "etcd_server_leader_changes_seen",
            "Leader changes seen",
            m.leader_changes_seen.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Leader changes seen by this member",
            m.raft_leader_changes.clone(),
        );
        registry.register(
            "raft_election_timeout",
            "Elections started by this member",
            m.election_timeouts.clone(),
        );
        registry.register(
            "raft_heartbeat_timeout",
            "Heartbeat intervals elapsed while leading",
            m.heartbeat_timeouts.clone(),
        );
        registry.register(
            "etcd_server_proposals_committed_total",
            "Committed proposals (raft index)",
            m.proposals_committed.clone(),
        );
        registry.register(
            "etcd_server_proposals_applied_total",
            "Applied proposals (raft index)",
            m.proposals_applied.clone(),
        );
        registry.register(
            "etcd_server_proposals_pending",
            "Proposals waiting for apply",
            m.proposals_pending.clone(),
        );
        registry.register(
            "etcd_server_proposals_failed",
            "Failed proposals",
            m.proposals_failed.clone(),
        );
        registry.register(
            "metastore_apply_inflight_entries",
            "Committed entries handed to the applier and not yet applied",
            m.apply_inflight_entries.clone(),
        );
        registry.register(
            "metastore_apply_inflight_bytes",
            "Bytes of committed entries handed to the applier and not yet applied",
            m.apply_inflight_bytes.clone(),
        );
        registry.register(
            "metastore_apply_waiting_entries",
            "Committed entries waiting in the Raft log for room at the applier",
            m.apply_waiting_entries.clone(),
        );
        registry.register(
            "metastore_apply_waiting_reads",
            "Linearizable reads waiting in the applier for their read index",
            m.apply_waiting_reads.clone(),
        );
        registry.register(
            "raft_propose_duration_ms",
            "Time from proposal to applied answer",
            m.propose_duration_ms.clone(),
        );
        registry.register(
            "raft_apply_duration_ms",
            "Time to apply one batch of committed entries",
            m.apply_duration_ms.clone(),
        );
        registry.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "WAL fsync latency",
            m.wal_fsync_seconds.clone(),
        );
        registry.register(
            "metastore_wal_batch_entries",
            "Raft entries written per WAL fsync",
            m.wal_batch_entries.clone(),
        );
        registry.register(
            "raft_inflight_messages",
            "Append messages the leader sent to followers and they have not answered yet",
            m.raft_inflight_messages.clone(),
        );
        registry.register(
            "metastore_peer_dropped_messages",
            "Times Raft messages to a peer were dropped (queue full or stream down)",
            m.peer_dropped_messages.clone(),
        );
        registry.register(
            "metastore_peer_misaddressed_messages",
            "Raft messages from peers dropped because they were addressed to another member",
            m.peer_misaddressed_messages.clone(),
        );
        registry.register(
            "metastore_raft_log_disk_reads",
            "Reads of old Raft log entries from disk to send a follower behind the in-memory tail (rocksdb engine)",
            m.raft_log_disk_reads.clone(),
        );
        registry.register(
            "metastore_raft_tick_interval_seconds",
            "Time between two ticks handled by Raft (nominally raft.tick-ms)",
            m.tick_interval_seconds.clone(),
        );
        registry.register(
            "metastore_raft_tick_delay_max_ms",
            "Longest a Raft tick was late since start (a late tick delays heartbeats)",
            m.tick_delay_max_ms.clone(),
        );
        registry.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Bytes held by the MVCC store",
            m.db_total_size.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_current_revision",
            "Current MVCC revision",
            m.mvcc_revision.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_keys_total",
            "Live keys",
            m.keys_total.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_watcher_total",
            "Watchers",
            m.watchers.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_slow_watcher_total",
            "Watchers catching up from history",
            m.slow_watchers.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_watch_stream_total",
            "Watch streams",
            m.watch_streams.clone(),
        );
        registry.register(
            "metastore_watch_ring_bytes",
            "Bytes of encoded events kept for watchers catching up",
            m.watch_ring_bytes.clone(),
        );
        registry.register(
            "grpc_server_started",
            "RPCs started",
            m.grpc_started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs completed, by code",
            m.grpc_handled.clone(),
        );
        registry.register(
            "grpc_request_duration_ms",
            "RPC latency",
            m.grpc_duration_ms.clone(),
        );
        registry.register(
            "etcd_network_client_grpc_sent_bytes",
            "gRPC message bytes sent to clients",
            m.grpc_sent_bytes.clone(),
        );
        registry.register(
            "etcd_network_client_grpc_received_bytes",
            "gRPC message bytes received from clients",
            m.grpc_received_bytes.clone(),
        );
        registry.register(
            "etcd_disk_backend_commit_duration_seconds",
            "Time to make an applied batch durable in the storage engine",
            m.backend_commit_seconds.clone(),
        );
        registry.register(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Bytes of the store that hold live data",
            m.db_in_use_size.clone(),
        );
        registry.register(
            "etcd_network_peer_sent_bytes",
            "Raft message bytes sent to a peer",
            m.peer_sent_bytes.clone(),
        );
        registry.register(
            "etcd_network_peer_received_bytes",
            "Raft message bytes received from a peer",
            m.peer_received_bytes.clone(),
        );
        registry.register(
            "etcd_network_peer_round_trip_time_seconds",
            "Time from a heartbeat to its answer, per peer (measured by the leader)",
            m.peer_round_trip_seconds.clone(),
        );
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Formatting into a String cannot fail.
        encode(&mut out, &self.registry).expect("encode metrics into String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
