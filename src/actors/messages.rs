//! Every message the actors exchange, each a named struct.

use actix::Message;
use raft::eraftpb::{ConfChangeV2, Entry, HardState, Snapshot, SnapshotMetadata};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::proto::etcdserverpb::Member;
use crate::state_machine::membership::Membership;
use crate::state_machine::{ReadRequest, ReadResponse, WriteResponse};

/// The answer a writer waits for.
pub type WriteResult = Result<WriteResponse, ApiError>;
/// The answer a reader waits for.
pub type ReadResult = Result<ReadResponse, ApiError>;

/// A read waiting to be served, with the channel its answer goes to.
#[derive(Debug)]
pub struct PendingRead {
    /// The read.
    pub request: ReadRequest,
    /// Who reads (checked when it is served).
    pub caller: crate::state_machine::auth::Caller,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ReadResult>,
    /// Told when the read is a Range left open to be read a slice per turn:
    /// from then on it takes the range's time, which the request timeout
    /// (meant for the wait on Raft) does not bound.
    pub opened: Option<oneshot::Sender<()>>,
}

/// Handler → RaftActor: propose an encoded `InternalRequest` whose id is `id`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Propose {
    /// Request id inside `data`; the applier answers `reply` by it.
    pub id: u64,
    /// Encoded InternalRequest.
    pub data: Vec<u8>,
    /// Where the applied answer goes.
    pub reply: oneshot::Sender<WriteResult>,
}

/// Handler → RaftActor: propose a membership change (a ConfChangeV2 whose
/// context carries `id` and the member); answered like a write.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProposeConfChange {
    /// Request id inside the context.
    pub id: u64,
    /// The change.
    pub cc: ConfChangeV2,
    /// Where the applied answer goes.
    pub reply: oneshot::Sender<WriteResult>,
}

/// Handler → RaftActor: MoveLeader; answered once `to` leads (or not).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TransferLeader {
    /// The member that should lead.
    pub to: u64,
    /// Ok once it leads.
    pub reply: oneshot::Sender<Result<(), ApiError>>,
}

/// Handler → RaftActor: what only Raft knows, for membership checks.
#[derive(Message)]
#[rtype(result = "RaftView")]
pub struct QueryRaft;

/// Raft's view for membership checks.
#[derive(Debug, Clone, Default)]
pub struct RaftView {
    /// This member leads.
    pub is_leader: bool,
    /// The known leader.
    pub leader: u64,
    /// On a leader: how far each member's log matches (its own included).
    pub matched: Vec<(u64, u64)>,
}

/// Peer transport → RaftActor: messages from other members.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StepBatch(pub Vec<raft::eraftpb::Message>);

/// PeerActor → RaftActor: messages to `0` were lost.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unreachable(pub u64);

/// Peer server → RaftActor → that member's PeerActor: member `0` opened a
/// stream to this one (it is up, maybe just restarted): if this member's
/// stream to it is down, redial now instead of at the end of the backoff.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerBack(pub u64);

/// PeerActor → RaftActor: how a snapshot sent to `to` ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotSent {
    /// The receiving member.
    pub to: u64,
    /// Whether it received and checked the whole image.
    pub ok: bool,
}

/// RaftActor → ApplyActor: replace the state with the snapshot from the
/// leader (its data is the path of the received, checked image file).
#[derive(Message)]
#[rtype(result = "()")]
pub struct InstallSnapshot(pub Snapshot);

/// ApplyActor → RaftActor: the snapshot is installed (durably).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotInstalled {
    /// Its index.
    pub index: u64,
}

/// ApplyActor → RaftActor: the member registry changed; `conf_change` is a
/// membership change Raft must apply now (its entry was just applied).
#[derive(Message)]
#[rtype(result = "()")]
pub struct MembershipChanged {
    /// The conf change to apply to Raft, if this was one.
    pub conf_change: Option<ConfChangeV2>,
    /// Every member, for the transport.
    pub members: Vec<Member>,
}

/// PeerActor → RaftActor: a peer says this member was removed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemovedFromCluster;

/// RaftActor → ApplyActor: the leader changed; proposals registered in an
/// earlier epoch can no longer be trusted to commit and fail at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaderChanged {
    /// The new epoch (one more per leader change).
    pub epoch: u64,
}

/// Handler → ApplyActor: the member registry.
#[derive(Message)]
#[rtype(result = "Membership")]
pub struct QueryMembers;

/// Handler → RaftActor: a linearizable read; joins this turn's ReadIndex batch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadIndex(pub PendingRead);

/// Ticker → RaftActor: one logical clock tick.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Tick;

/// RaftActor → itself: handle what accumulated (one Ready per turn).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunTurn;

/// RaftActor → WalWriter: make ready `number`'s entries and hard state durable.
pub struct Append {
    /// Ready number, answered in `Persisted`.
    pub number: u64,
    /// A snapshot the state machine installed: the log starts over after it.
    pub snapshot: Option<SnapshotMetadata>,
    /// New entries.
    pub entries: Vec<Entry>,
    /// Changed hard state.
    pub hard_state: Option<HardState>,
    /// Whether an fsync is required before answering.
    pub must_sync: bool,
}

/// WalWriter → RaftActor: every ready up to `number` is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persisted {
    /// Highest durable ready number.
    pub number: u64,
}

/// RaftActor → WalWriter: a snapshot at `upto` is durable; drop entries (and
/// WAL segments) wholly at or below it, but those after `keep_after` where
/// the Raft log reads them back (see `LogStore::purge`).
pub struct Purge {
    /// Snapshot index.
    pub upto: u64,
    /// The first entry the Raft log keeps, less one.
    pub keep_after: u64,
    /// Snapshot term.
    pub term: u64,
}

/// Log reader worker → RaftActor: old Raft log entries read back from disk
/// for a follower far behind.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EntriesFetched(pub crate::storage::raft_log::Fetched);

/// RaftActor → ApplyActor: committed entries, in log order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply {
    /// The entries.
    pub entries: Vec<Entry>,
}

/// RaftActor → ApplyActor: proposals with these ids are in the log; answer each
/// `reply` when its entry is applied. Sent once per turn, before any `Apply`
/// of that turn, so a registration always precedes its entry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    /// Request ids and where their answers go.
    pub waiters: Vec<(u64, oneshot::Sender<WriteResult>)>,
    /// The leader epoch they were proposed in (see [`LeaderChanged`]).
    pub epoch: u64,
}

/// RaftActor → ApplyActor: these reads may be served once `index` is applied.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeReads {
    /// Read index.
    pub index: u64,
    /// The reads.
    pub reads: Vec<PendingRead>,
}

/// Handler → ApplyActor: a serializable read, served from local state at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LocalRead(pub PendingRead);

/// ApplyActor → RaftActor: everything up to `index` is applied.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Applied {
    /// Applied index.
    pub index: u64,
}

/// ApplyActor → RaftActor: a local snapshot at `index` is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Snapshotted {
    /// Snapshot index.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
}

/// Snapshot writer thread → ApplyActor: the local snapshot at `index` is saved (or not).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotSaved {
    /// Snapshot index.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Whether the file is durable.
    pub ok: bool,
}

/// Handler → ApplyActor: the store's figures for Maintenance.Status.
#[derive(Message)]
#[rtype(result = "StoreStatus")]
pub struct QueryStore;

/// The store's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStatus {
    /// Current revision.
    pub revision: i64,
    /// Approximate size in bytes.
    pub db_size: u64,
    /// Applied index.
    pub applied_index: u64,
}

/// Handler → ApplyActor: a consistent image of the applied state, for
/// Maintenance.Snapshot (and, later, a lagging follower).
#[derive(Message)]
#[rtype(result = "Result<super::images::ImageJob, crate::error::ApiError>")]
pub struct TakeImage;

/// Handler → ApplyActor: the engine's defragmentation job, if it has one.
#[derive(Message)]
#[rtype(result = "Option<Box<dyn FnOnce() + Send>>")]
pub struct Defragment;

/// Test-only fault: write a key into this member's store, outside Raft.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FaultPut {
    /// The key.
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
}

/// Handler → ApplyActor: the defragmentation job finished (the store's
/// size is measured and published again, e.g. for the quota check).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Defragmented;

/// The requests of one Watch stream, as the client sends them.
pub type WatchRequests = futures::stream::BoxStream<
    'static,
    Result<crate::proto::etcdserverpb::WatchRequest, tonic::Status>,
>;

/// Watch service → ApplyActor: a new Watch stream whose responses go to
/// `outbox`; answers its id in the hub (the caller starts its session,
/// see [`Core::open_watch`](super::Core::open_watch)).
#[derive(Message)]
#[rtype(result = "crate::watch::StreamId")]
pub struct WatchOpen {
    /// Where the stream's responses go.
    pub outbox: crate::watch::Outbox,
}

/// Watch session → ApplyActor: create a watcher.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchCreate {
    /// The stream.
    pub stream: crate::watch::StreamId,
    /// The request.
    pub request: crate::proto::etcdserverpb::WatchCreateRequest,
    /// Who watches (needs read permission on the range).
    pub caller: crate::state_machine::auth::Caller,
}

/// Watch session → ApplyActor: cancel a watcher.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchCancel {
    /// The stream.
    pub stream: crate::watch::StreamId,
    /// The watcher's id on the stream.
    pub watch_id: i64,
}

/// Watch session → ApplyActor: a progress request.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchProgress {
    /// The stream.
    pub stream: crate::watch::StreamId,
}

/// Watch session → ApplyActor: the client ended the stream.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchClose {
    /// The stream.
    pub stream: crate::watch::StreamId,
}

/// Lease service → ApplyActor: the keys a lease holds, in order.
#[derive(Message)]
#[rtype(result = "Vec<Vec<u8>>")]
pub struct LeaseKeys(pub i64);

/// RaftActor → PeerActor: messages for this member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Outbox(pub Vec<raft::eraftpb::Message>);

/// RaftActor → PeerActor: the member's peer URLs changed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NewUrls(pub Vec<String>);

/// RaftActor → PeerActor: stop (the member was removed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// start_core → RaftActor: start the PeerActors for the members known at start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InitialMembers(pub Vec<Member>);

/// ApplyActor → Lessor: what an applied batch changed about leases.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeasesChanged(pub Vec<crate::state_machine::lease::LeaseChange>);

/// ApplyActor → Lessor: the whole table was replaced (a snapshot install).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeasesReplaced(pub crate::storage::leases::LeaseTable);

/// Keep-alive → Lessor (on the leader): renew a lease; answers its TTL.
#[derive(Message)]
#[rtype(result = "Result<i64, ApiError>")]
pub struct Renew(pub i64);

/// LeaseLeases → Lessor: every lease's ID, soonest expiry first.
#[derive(Message)]
#[rtype(result = "Vec<i64>")]
pub struct LeasesByExpiry;

/// LeaseTimeToLive → Lessor (on the leader): (remaining, granted) TTLs.
#[derive(Message)]
#[rtype(result = "Result<(i64, i64), ApiError>")]
pub struct TimeToLive(pub i64);
