//! The ApplyActor: owns the state machine. Applies committed entries in log
//! order, one batch per `Apply` message; answers each waiting client by request
//! id; serves reads once the applied index reaches their read index; reports
//! `Applied` to the RaftActor; takes a snapshot every `snapshot_count`
//! entries; installs snapshots from the leader.
//!
//! Invariants:
//! - A membership change is applied here first (registry and conf state,
//!   stored with the applied index), then handed to the RaftActor to apply
//!   to Raft, before `Applied` for its index.
//! - A waiter lives until its entry is applied, the leader epoch it was
//!   proposed in ends ("leader changed"), or its client goes away: never
//!   longer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::lessor::Lessor;
use super::messages::*;
use super::messages::{LeasesChanged, LeasesReplaced};
use super::raft::RaftAddr;
use super::ranges::OpenRanges;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state_machine::{Installed, StateMachine};
use crate::status::NodeStatus;
use crate::storage::engine::Checkpoint;
use crate::watch::{Hub, HubConfig};

/// Mailbox depth for handlers' `send().await` (backpressure).
const MAILBOX: usize = 4096;
/// How often waiters whose clients went away are dropped.
const SWEEP: Duration = Duration::from_secs(1);
/// A snapshot that failed (a full disk) is tried again after this long,
/// not at the next applied batch: the WAL holds everything meanwhile.
pub const SNAPSHOT_RETRY: Duration = Duration::from_secs(5);
/// How often lagging watchers are given another slice when no batch comes.
const CATCH_UP: Duration = Duration::from_millis(10);

struct Waiter {
    reply: oneshot::Sender<WriteResult>,
    since: Instant,
    epoch: u64,
}

/// Owns the state machine.
pub struct ApplyActor {
    sm: StateMachine,
    raft: RaftAddr,
    lessor: Addr<Lessor>,
    status: Arc<NodeStatus>,
    waiters: HashMap<u64, Waiter>,
    /// Reads waiting for the applied index to reach their key.
    reads: BTreeMap<u64, Vec<PendingRead>>,
    /// Ranges being read a slice per turn.
    ranges: OpenRanges,
    data_dir: PathBuf,
    snapshot_count: u64,
    last_snapshot: u64,
    /// A snapshot file is being written by a background thread.
    saving: bool,
    /// The last snapshot failed: no new one before this instant.
    snapshot_retry_at: Option<Instant>,
    metrics: Arc<Metrics>,
    /// Every watcher of this member.
    hub: Hub,
    progress_notify: Duration,
    /// A [`CatchUpMore`] is in the mailbox.
    catch_up_queued: bool,
    /// Slower applies are logged.
    warn_apply: Duration,
    faults: Arc<crate::status::Faults>,
    /// A snapshot from the leader is being installed by a worker: the
    /// state may not be touched; what needs it waits in `deferred`.
    installing: bool,
    /// Work that arrived during an install, in arrival order.
    deferred: VecDeque<Deferred>,
    /// A turn of [`ApplyActor::step_idle_work`] is queued.
    idle_step_queued: bool,
    /// Compacts with `physical`, answered once the removal is through.
    physical: Vec<(oneshot::Sender<WriteResult>, WriteResult)>,
    /// Images asked for while a removal they wait for was under way.
    image_waiters: Vec<oneshot::Sender<ImageResult>>,
    /// The auth store as last published to the API.
    auth: AuthCell,
}

/// The auth store as of the last applied batch, for the API (tokens,
/// checks it runs itself): replaced whole when a change is applied.
pub type AuthCell = Arc<parking_lot::RwLock<Arc<crate::state_machine::auth::AuthStore>>>;

/// What waits for an install to finish.
enum Deferred {
    Apply(Apply),
    Reads(ServeReads),
    Local(LocalRead),
    Fault(FaultPut),
}

/// Where and how often the ApplyActor snapshots, and its watch settings.
#[derive(Debug, Clone)]
pub struct ApplySettings {
    /// The data dir (snapshot files, received images).
    pub data_dir: PathBuf,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// An applied batch slower than this is logged.
    pub warn_apply: Duration,
    /// The watch hub's settings.
    pub watch: WatchSettings,
    /// Test-only fault switches (a slow apply).
    pub faults: Arc<crate::status::Faults>,
    /// Where the auth store is published for the API.
    pub auth: AuthCell,
}

/// What the ApplyActor's watch hub needs.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Sizes and limits of the hub.
    pub hub: HubConfig,
    /// etcd's `--experimental-watch-progress-notify-interval`.
    pub progress_notify: Duration,
}

impl ApplyActor {
    /// Wraps a (restored) state machine.
    pub fn new(
        sm: StateMachine,
        raft: RaftAddr,
        lessor: Addr<Lessor>,
        status: Arc<NodeStatus>,
        metrics: Arc<Metrics>,
        settings: ApplySettings,
    ) -> ApplyActor {
        let ApplySettings {
            data_dir,
            snapshot_count,
            warn_apply,
            watch,
            faults,
            auth,
        } = settings;
        let last_snapshot = sm.applied_index();
        *status.removed.write() = sm.membership().removed().collect();
        let hub = Hub::new(
            watch.hub,
            status.clone(),
            sm.current_revision(),
            sm.compact_revision(),
        );
        let a = ApplyActor {
            sm,
            raft,
            lessor,
            status,
            waiters: HashMap::new(),
            reads: BTreeMap::new(),
            ranges: OpenRanges::default(),
            data_dir,
            snapshot_count: snapshot_count.max(1),
            last_snapshot,
            saving: false,
            snapshot_retry_at: None,
            metrics,
            hub,
            progress_notify: watch.progress_notify,
            catch_up_queued: false,
            warn_apply,
            faults,
            installing: false,
            deferred: VecDeque::new(),
            idle_step_queued: false,
            physical: Vec::new(),
            image_waiters: Vec::new(),
            auth,
        };
        a.publish();
        a
    }

    /// Events looked at per catch-up round: bounds how long a round keeps
    /// the applier (and, on a lone member, Raft) busy (about a millisecond
    /// from the ring). A round that moved a watcher queues the next one
    /// behind the messages already in the mailbox, so applies interleave
    /// with catching up, and lagging watchers move at their clients' pace.
    const CATCH_UP_BUDGET: usize = 10_000;

    /// Routes the applied batch's events to the watchers; moves lagging
    /// watchers on by one slice.
    fn feed_watchers(&mut self, ctx: &mut Context<Self>) {
        let changes = self.sm.take_lease_changes();
        if !changes.is_empty() {
            self.lessor.do_send(LeasesChanged(changes));
        }
        let events = self.sm.take_events();
        self.hub.compacted(self.sm.compact_revision());
        self.hub.publish(&events, self.sm.current_revision());
        self.catch_up(ctx);
    }

    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        if !self.hub.has_lagging() || self.installing {
            return;
        }
        let round = self.hub.catch_up(&self.sm, Self::CATCH_UP_BUDGET);
        if round.lagging && round.progressed && !self.catch_up_queued {
            self.catch_up_queued = true;
            ctx.notify(CatchUpMore);
        }
    }

    /// The engine returns events only while someone watches.
    fn watchers_changed(&mut self) {
        self.sm.set_watched(self.hub.watching());
        let st = self.hub.stats();
        self.metrics.watchers.set(st.watchers as i64);
        self.metrics.slow_watchers.set(st.lagging as i64);
        self.metrics.watch_streams.set(st.streams as i64);
        self.metrics.watch_ring_bytes.set(st.ring_bytes as i64);
    }

    fn publish(&self) {
        let size = self.sm.approximate_size_bytes();
        let revision = self.sm.current_revision();
        self.status
            .applied_index
            .store(self.sm.applied_index(), Relaxed);
        self.status.revision.store(revision, Relaxed);
        self.status.db_size.store(size, Relaxed);
        let alarms = self.sm.membership().alarms();
        if *self.status.alarms.read() != alarms {
            *self.status.alarms.write() = alarms;
        }
        if !Arc::ptr_eq(&self.auth.read(), self.sm.auth()) {
            *self.auth.write() = self.sm.auth().clone();
        }
        self.metrics
            .proposals_applied
            .set(self.sm.applied_index() as i64);
        self.metrics.mvcc_revision.set(revision);
        self.metrics.db_total_size.set(size as i64);
        // Neither engine keeps free pages as bbolt does: what it holds is in
        // use (old versions count until compaction removes them).
        self.metrics.db_in_use_size.set(size as i64);
        self.metrics.keys_total.set(self.sm.key_count() as i64);
        self.metrics
            .proposals_pending
            .set(self.waiters.len() as i64);
    }

    fn serve_ready_reads(&mut self, ctx: &mut Context<Self>) {
        let applied = self.sm.applied_index();
        let later = self.reads.split_off(&(applied + 1));
        let ready = std::mem::replace(&mut self.reads, later);
        for read in ready.into_values().flatten() {
            self.ranges.serve(&mut self.sm, read);
        }
        self.step_idle_work(ctx);
    }

    /// Serves one read now (a Range with more than a slice to read: its
    /// first slice now, the rest on the next turns).
    fn serve_read(&mut self, read: PendingRead, ctx: &mut Context<Self>) {
        self.ranges.serve(&mut self.sm, read);
        self.step_idle_work(ctx);
    }

    /// Every `snapshot_count` entries: what the engine needs to make the
    /// applied state durable (memory: an image encoded here, written and
    /// fsynced on a background thread), then the log before it may go.
    fn maybe_snapshot(&mut self, ctx: &mut Context<Self>) {
        let applied = self.sm.applied_index();
        if self.saving || self.installing || applied < self.last_snapshot + self.snapshot_count {
            return;
        }
        if self.snapshot_retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let term = self.sm.applied_term();
        match self.sm.checkpoint(&self.data_dir) {
            Checkpoint::Durable => {
                self.last_snapshot = applied;
                self.raft.do_send(Snapshotted {
                    index: applied,
                    term,
                });
            }
            Checkpoint::Write(job) => {
                self.saving = true;
                self.step_idle_work(ctx);
                let me = ctx.address();
                let spawned =
                    std::thread::Builder::new()
                        .name("snapshot".into())
                        .spawn(move || {
                            let ok = match job() {
                                Ok(()) => true,
                                Err(e) => {
                                    // The WAL still holds everything; try again later.
                                    tracing::error!(
                                        error = %e,
                                        retry_in_s = SNAPSHOT_RETRY.as_secs(),
                                        "snapshot failed"
                                    );
                                    false
                                }
                            };
                            me.do_send(SnapshotSaved {
                                index: applied,
                                term,
                                ok,
                            });
                        });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start the snapshot thread");
                    self.saving = false;
                }
            }
        }
    }

    /// Moves whole-state work (images being taken, a compaction's removal)
    /// on by one slice per turn, yielding the thread before each, so
    /// everything else on it (the gRPC handlers that bring new requests,
    /// the mailbox) runs in between. (`ctx.notify` would not do: actix runs
    /// the items it adds within the same poll of the actor, so the whole
    /// image would be one long turn, measured as a 1.2 s stall of puts at a
    /// million keys.) Nothing runs while an install has the state.
    fn step_idle_work(&mut self, ctx: &mut Context<Self>) {
        if self.idle_step_queued
            || self.installing
            || (!self.sm.has_idle_work() && self.ranges.is_empty())
        {
            return;
        }
        self.idle_step_queued = true;
        // Test-only: a slow removal (turns apart), to tell a `physical`
        // Compact waits for it; slow slices of a Range, to tell the rest
        // goes on between them.
        let pause = self
            .sm
            .compaction_pending()
            .then(|| crate::failpoints::delay("engine::removal_delay"))
            .flatten()
            .or_else(|| {
                (!self.ranges.is_empty())
                    .then(|| crate::failpoints::delay("apply::range_slice_delay"))
                    .flatten()
            })
            // The engine's rest (a removal's), unless a Range is open.
            .or_else(|| {
                self.ranges
                    .is_empty()
                    .then(|| self.sm.idle_rest())
                    .flatten()
            });
        // Open Ranges all wait for the reader thread: wait for it rather
        // than spin.
        let reader =
            (!self.sm.has_idle_work() && self.ranges.all_wait()).then(|| self.ranges.progress());
        let turn = async move {
            match (pause, reader) {
                (Some(d), _) => actix::clock::sleep(d).await,
                (None, Some(progress)) => {
                    // (Bounded, should the thread be gone.)
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_millis(50),
                        progress.notified(),
                    )
                    .await;
                }
                (None, None) => tokio::task::yield_now().await,
            }
        };
        ctx.spawn(turn.into_actor(self).map(|(), a, ctx| {
            a.idle_step_queued = false;
            if !a.installing {
                a.sm.idle_step();
                a.ranges.step(&a.sm);
            }
            a.answer_physical();
            a.serve_image_waiters(ctx);
            a.step_idle_work(ctx);
        }));
    }

    /// Answers the Compacts with `physical` once no removal is under way.
    fn answer_physical(&mut self) {
        if !self.physical.is_empty() && !self.sm.compaction_pending() {
            for (reply, result) in self.physical.drain(..) {
                let _ = reply.send(result);
            }
        }
    }

    /// Drops waiters whose clients went away (they timed out).
    fn sweep(&mut self) {
        self.waiters.retain(|_, w| !w.reply.is_closed());
    }
}

impl Handler<SnapshotSaved> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: SnapshotSaved, _: &mut Context<Self>) {
        self.saving = false;
        self.snapshot_retry_at = (!msg.ok).then(|| Instant::now() + SNAPSHOT_RETRY);
        if msg.ok {
            self.last_snapshot = msg.index;
            self.raft.do_send(Snapshotted {
                index: msg.index,
                term: msg.term,
            });
        }
    }
}

impl Actor for ApplyActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        ctx.run_interval(SWEEP, |a, _| {
            a.sweep();
            a.hub.sweep();
            a.watchers_changed();
        });
        // Lagging watchers whose clients made room since the last batch.
        ctx.run_interval(CATCH_UP, |a, ctx| a.catch_up(ctx));
        ctx.run_interval(self.progress_notify, |a, _| a.hub.progress_tick());
        // A compaction replayed from the WAL left its removal to do.
        self.step_idle_work(ctx);
    }
}

impl Handler<Register> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        let now = Instant::now();
        let epoch = msg.epoch;
        self.waiters
            .extend(msg.waiters.into_iter().map(|(id, reply)| {
                (
                    id,
                    Waiter {
                        reply,
                        since: now,
                        epoch,
                    },
                )
            }));
    }
}

impl Handler<LeaderChanged> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: LeaderChanged, _: &mut Context<Self>) {
        // Everything committed before the change was applied already (the
        // RaftActor sent it first); what is left was proposed to a leader
        // that is gone and may never commit.
        let before = self.waiters.len();
        self.waiters.retain(|_, w| {
            if w.epoch < msg.epoch {
                let reply = std::mem::replace(&mut w.reply, oneshot::channel().0);
                let _ = reply.send(Err(ApiError::LeaderChanged));
                false
            } else {
                true
            }
        });
        let failed = before - self.waiters.len();
        if failed > 0 {
            self.metrics.proposals_failed.inc_by(failed as u64);
            tracing::info!(failed, "pending proposals failed: leader changed");
        }
    }
}

impl Handler<Apply> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) {
        if self.installing {
            self.deferred.push_back(Deferred::Apply(msg));
        } else {
            self.apply(msg, ctx);
        }
    }
}

impl ApplyActor {
    fn apply(&mut self, msg: Apply, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let slow = self.faults.slow_apply_ms.load(Relaxed);
        if slow > 0 {
            // Test-only: a slow disk. The actor takes no message until the
            // time has passed (as if its commit took that long); the thread
            // stays free for the client API, so the test can watch it.
            ctx.wait(actix::clock::sleep(Duration::from_millis(slow)).into_actor(self));
        }
        if let Some(delay) = crate::failpoints::delay("apply::delay") {
            ctx.wait(actix::clock::sleep(delay).into_actor(self));
        }
        let mut last = None;
        for entry in &msg.entries {
            fail::fail_point!("apply::before_entry");
            last = Some(entry.index);
            if !self.ranges.is_empty() {
                if let Some(rev) = StateMachine::compaction_in(entry) {
                    self.ranges.finish_below(&self.sm, rev);
                }
            }
            let Some(applied) = self.sm.apply(entry) else {
                continue;
            };
            if applied.members_changed {
                *self.status.removed.write() = self.sm.membership().removed().collect();
                self.raft.do_send(MembershipChanged {
                    conf_change: applied.conf_change,
                    members: self.sm.membership().members(),
                });
            }
            if let Some(w) = self.waiters.remove(&applied.id) {
                self.metrics
                    .propose_duration_ms
                    .observe(w.since.elapsed().as_secs_f64() * 1000.0);
                if applied.physical && self.sm.compaction_pending() {
                    self.physical.push((w.reply, applied.result));
                } else {
                    let _ = w.reply.send(applied.result);
                }
            }
        }
        fail::fail_point!("apply::before_commit");
        let committing = Instant::now();
        let committed = if self.faults.fail_commit.load(Relaxed) {
            Err(crate::storage::StorageError::io(
                "commit the applied batch",
                std::io::Error::other("engine commit failed by fault injection"),
            ))
        } else {
            self.sm.commit()
        };
        self.metrics
            .backend_commit_seconds
            .observe(committing.elapsed().as_secs_f64());
        if let Err(e) = committed {
            // The applied state cannot be recorded; going on would apply the
            // next entries onto a state the disk does not have (as etcd, stop).
            self.status.fatal.stop("cannot write applied changes", &e);
            ctx.stop();
            return;
        }
        fail::fail_point!("apply::after_commit");
        let took = started.elapsed();
        self.metrics
            .apply_duration_ms
            .observe(took.as_secs_f64() * 1000.0);
        if took > self.warn_apply {
            tracing::warn!(
                member = format!("{:x}", self.status.member_id),
                term = self.status.term(),
                entries = msg.entries.len(),
                took_ms = took.as_millis() as u64,
                expected_ms = self.warn_apply.as_millis() as u64,
                "apply request took too long"
            );
        }
        self.feed_watchers(ctx);
        if let Some(index) = last {
            self.raft.do_send(Applied { index });
        }
        self.publish();
        self.serve_ready_reads(ctx);
        self.maybe_snapshot(ctx);
        self.step_idle_work(ctx);
    }
}

impl Handler<InstallSnapshot> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: InstallSnapshot, ctx: &mut Context<Self>) {
        let path = PathBuf::from(String::from_utf8_lossy(&msg.0.data).into_owned());
        if self.installing {
            // Raft hands over one snapshot at a time; a second would race
            // the first for the engine's files.
            tracing::error!(file = %path.display(), "a snapshot arrived during an install; ignored");
            return;
        }
        // Decoding (memory) or writing (rocksdb) a whole state takes
        // seconds at a million keys: a worker does it, the apply thread
        // goes on serving what does not need the state, and holds the rest.
        // The open Ranges read the state being replaced: they end first.
        self.ranges.finish_below(&self.sm, i64::MAX);
        self.installing = true;
        let job = self.sm.install_job(&path, &self.data_dir);
        let me = ctx.address();
        let started = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("install".into())
            .spawn(move || {
                fail::fail_point!("snapshot::before_install");
                let result = job();
                fail::fail_point!("snapshot::after_install");
                me.do_send(SnapshotLoaded {
                    result,
                    path,
                    started,
                })
            });
        if let Err(e) = spawned {
            self.status
                .fatal
                .stop("cannot start the snapshot install thread", &e);
            ctx.stop();
        }
    }
}

/// A worker finished decoding or writing a snapshot from the leader
/// (sent by the ApplyActor's install thread to the ApplyActor).
#[derive(Message)]
#[rtype(result = "()")]
struct SnapshotLoaded {
    result: Result<Installed, crate::storage::StorageError>,
    path: PathBuf,
    started: Instant,
}

impl Handler<SnapshotLoaded> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: SnapshotLoaded, ctx: &mut Context<Self>) {
        let installed = match msg.result {
            Ok(i) => i,
            Err(e) => {
                // Raft moved on to the snapshot already; the state cannot
                // follow. The data dir holds the old state or the new one
                // (never a mix): a restart tries again.
                tracing::error!(file = %msg.path.display(), "cannot install the leader's snapshot");
                self.status
                    .fatal
                    .stop("cannot install the leader's snapshot", &e);
                ctx.stop();
                return;
            }
        };
        let h = self.sm.finish_install(installed);
        self.installing = false;
        tracing::info!(
            index = h.index,
            revision = h.current_rev,
            ms = msg.started.elapsed().as_millis() as u64,
            "state replaced by the leader's snapshot"
        );
        self.last_snapshot = h.index;
        self.hub
            .state_replaced(self.sm.current_revision(), self.sm.compact_revision());
        self.lessor
            .do_send(LeasesReplaced(self.sm.leases().clone()));
        *self.status.removed.write() = self.sm.membership().removed().collect();
        self.raft.do_send(MembershipChanged {
            conf_change: None,
            members: self.sm.membership().members(),
        });
        // Raft counts it applied once its ready is durable.
        self.raft.do_send(SnapshotInstalled { index: h.index });
        self.publish();
        self.serve_ready_reads(ctx);
        // The new state has no removal under way.
        self.answer_physical();
        self.serve_image_waiters(ctx);
        self.step_idle_work(ctx);
        // What waited, in the order it came.
        while let Some(d) = self.deferred.pop_front() {
            match d {
                Deferred::Apply(m) => self.apply(m, ctx),
                Deferred::Reads(m) => self.queue_reads(m, ctx),
                Deferred::Local(m) => self.serve_read(m.0, ctx),
                Deferred::Fault(m) => self.fault_put(m),
            }
        }
        self.catch_up(ctx);
    }
}

impl Handler<ServeReads> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: ServeReads, ctx: &mut Context<Self>) {
        if self.installing {
            self.deferred.push_back(Deferred::Reads(msg));
        } else {
            self.queue_reads(msg, ctx);
        }
    }
}

impl ApplyActor {
    fn queue_reads(&mut self, msg: ServeReads, ctx: &mut Context<Self>) {
        self.reads.entry(msg.index).or_default().extend(msg.reads);
        self.serve_ready_reads(ctx);
    }

    fn fault_put(&mut self, msg: FaultPut) {
        self.sm.fault_put(&msg.key, msg.value);
        if let Err(e) = self.sm.commit() {
            tracing::error!(error = %e, "fault put not written");
        }
        self.publish();
    }
}

impl Handler<LocalRead> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: LocalRead, ctx: &mut Context<Self>) {
        if self.installing {
            self.deferred.push_back(Deferred::Local(msg));
        } else {
            self.serve_read(msg.0, ctx);
        }
    }
}

impl Handler<QueryStore> for ApplyActor {
    type Result = MessageResult<QueryStore>;
    fn handle(&mut self, _: QueryStore, _: &mut Context<Self>) -> Self::Result {
        MessageResult(StoreStatus {
            revision: self.sm.current_revision(),
            db_size: self.sm.approximate_size_bytes(),
            applied_index: self.sm.applied_index(),
        })
    }
}

impl Handler<QueryMembers> for ApplyActor {
    type Result = MessageResult<QueryMembers>;
    fn handle(&mut self, _: QueryMembers, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.sm.membership().clone())
    }
}

impl Handler<TakeImage> for ApplyActor {
    type Result = ResponseFuture<ImageResult>;
    fn handle(&mut self, _: TakeImage, ctx: &mut Context<Self>) -> Self::Result {
        if self.sm.image_waits() && !self.installing {
            // After the compaction's removal (the idle turns answer it).
            let (tx, rx) = oneshot::channel();
            self.image_waiters.push(tx);
            self.step_idle_work(ctx);
            return Box::pin(async move { rx.await.unwrap_or(Err(ApiError::Stopped)) });
        }
        let job = self.take_image(ctx);
        Box::pin(async move { job })
    }
}

/// What [`TakeImage`] answers.
type ImageResult = Result<crate::storage::image::ImageJob, ApiError>;

impl ApplyActor {
    fn take_image(&mut self, ctx: &mut Context<Self>) -> ImageResult {
        if self.installing {
            // The state is being replaced: an image now would be of neither.
            return Err(ApiError::Internal(
                "a snapshot from the leader is being installed; try again".into(),
            ));
        }
        let job = self
            .sm
            .take_image(&self.data_dir)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.step_idle_work(ctx);
        Ok(job)
    }

    /// Takes the images that waited for a compaction's removal, once it is
    /// through.
    fn serve_image_waiters(&mut self, ctx: &mut Context<Self>) {
        if self.image_waiters.is_empty() || self.sm.image_waits() {
            return;
        }
        for w in std::mem::take(&mut self.image_waiters) {
            let _ = w.send(self.take_image(ctx));
        }
    }
}

impl Handler<Defragment> for ApplyActor {
    type Result = Option<Box<dyn FnOnce() + Send>>;
    fn handle(&mut self, _: Defragment, _: &mut Context<Self>) -> Self::Result {
        self.sm.defragment_job()
    }
}

impl Handler<FaultPut> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: FaultPut, _: &mut Context<Self>) {
        if self.installing {
            self.deferred.push_back(Deferred::Fault(msg));
        } else {
            self.fault_put(msg);
        }
    }
}

impl Handler<Defragmented> for ApplyActor {
    type Result = ();
    fn handle(&mut self, _: Defragmented, _: &mut Context<Self>) {
        self.sm.forget_size();
        self.publish();
    }
}

impl Handler<WatchOpen> for ApplyActor {
    type Result = MessageResult<WatchOpen>;
    fn handle(&mut self, msg: WatchOpen, _: &mut Context<Self>) -> Self::Result {
        let stream = self.hub.open_stream(msg.outbox);
        self.watchers_changed();
        MessageResult(stream)
    }
}

impl Handler<WatchCreate> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: WatchCreate, ctx: &mut Context<Self>) {
        // etcd checks read permission on the whole watched range when the
        // watch is created.
        let r = &msg.request;
        let check = self.sm.auth().check(
            &msg.caller,
            crate::watch::hub::watched_key(&r.key),
            &r.range_end,
            crate::state_machine::auth::Access::Read,
        );
        if check.is_err() {
            self.hub.refuse(msg.stream, PERMISSION_DENIED);
            return;
        }
        self.hub.create(msg.stream, &msg.request);
        self.watchers_changed();
        self.catch_up(ctx);
    }
}

/// The cancel reason of a watch refused for want of read permission, as
/// etcd words it (its gRPC error printed whole).
const PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

/// Another catch-up round (queued by the actor itself).
#[derive(Message)]
#[rtype(result = "()")]
struct CatchUpMore;

impl Handler<CatchUpMore> for ApplyActor {
    type Result = ();
    fn handle(&mut self, _: CatchUpMore, ctx: &mut Context<Self>) {
        self.catch_up_queued = false;
        self.catch_up(ctx);
    }
}

impl Handler<WatchCancel> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: WatchCancel, _: &mut Context<Self>) {
        self.hub.cancel(msg.stream, msg.watch_id);
        self.watchers_changed();
    }
}

impl Handler<WatchProgress> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: WatchProgress, _: &mut Context<Self>) {
        self.hub.progress(msg.stream);
    }
}

impl Handler<WatchClose> for ApplyActor {
    type Result = ();
    fn handle(&mut self, msg: WatchClose, _: &mut Context<Self>) {
        self.hub.close_stream(msg.stream);
        self.watchers_changed();
    }
}

impl Handler<LeaseKeys> for ApplyActor {
    type Result = MessageResult<LeaseKeys>;
    fn handle(&mut self, msg: LeaseKeys, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.sm.lease_keys(msg.0))
    }
}
