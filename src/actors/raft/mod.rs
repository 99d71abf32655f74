//! The RaftActor: a thin actix shell around [`Node`], on a thread of its own
//! (with the Ticker, the PeerActors and the peer server). It collects
//! proposals, reads, ticks, peer messages and WAL answers from its mailbox,
//! then runs one turn and carries out the outputs: appends to the WalWriter,
//! committed entries to the ApplyActor, messages to the PeerActors.
//!
//! It never blocks and never does heavy work: fsync happens in the
//! WalWriter; apply, reads, images and snapshot installs in the ApplyActor
//! on another thread. So ticks and heartbeats stay on time whatever the
//! rest of the member is doing.
//!
//! Invariants:
//! - A snapshot from the leader is installed in the state machine before the
//!   ready that records it goes to the WAL (a crash in between restarts from
//!   the old state or the new one; see `storage::raft_log`).
//! - Proposals carry the leader epoch they were made in; the ApplyActor
//!   fails them with "leader changed" once the epoch moves on.
//! - Proposals that arrive without a leader wait (bounded) for one; their
//!   clients time out otherwise. None is proposed after its client left.
//!
//! The decisions are plain structs tested without actix: which proposals
//! wait or fail ([`proposals::ProposalQueue`]), MoveLeader transfers, the
//! hand-over of a leader leaving the configuration and when a removed
//! member stops ([`leadership`]). This actor carries out what they decide.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::prelude::*;
use prost::Message as _;
use raft::eraftpb::MessageType;
use raft::StateRole;
use tokio::sync::oneshot;

use super::apply::ApplyActor;
use super::messages::*;
use super::peer::{PeerActor, PeerContext};
use super::wal::{WalCommand, WalHandle};
use crate::consensus::apply_flow::{ApplyFlow, FlowLimits};
use crate::consensus::{Node, Persist, Turn};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::proto::etcdserverpb::Member;
use crate::proto::metastorepb::ConfChangeContext;
use crate::status::NodeStatus;
use crate::storage::raft_log::Fetched;
pub use moving::RaftAddr;

pub mod leadership;
pub mod moving;
pub mod proposals;

use leadership::{Removal, TransferCheck, Transfers};
use proposals::{Admission, Leadership, ProposalQueue, Waiter, MAX_WAITING};

/// Mailbox depth: senders that `send().await` wait beyond it (backpressure).
const MAILBOX: usize = 4096;
/// A heartbeat unanswered this long is not measured (the peer was away).
const RTT_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// A proposal waiting for a leader.
enum Waiting {
    Write(Propose),
    ConfChange(ProposeConfChange),
}

impl Waiter for Waiting {
    fn closed(&self) -> bool {
        match self {
            Waiting::Write(p) => p.reply.is_closed(),
            Waiting::ConfChange(p) => p.reply.is_closed(),
        }
    }
}

/// Where a MoveLeader's answer goes.
type TransferReply = oneshot::Sender<Result<(), ApiError>>;

/// How the RaftActor is set up.
pub struct RaftSettings {
    /// Entries kept behind a local snapshot for lagging followers.
    pub snapshot_catchup_entries: u64,
    /// The tick interval.
    pub tick: std::time::Duration,
    /// The shared context of the PeerActors (with the member's metrics).
    pub peers: PeerContext,
    /// Set while Raft shares the client thread (a member that started as
    /// the only voter): the Raft thread it moves to once it has peers (see
    /// [`moving`]).
    pub raft_thread: Option<ArbiterHandle>,
    /// Where the holders of this actor's address read it.
    pub addr: RaftAddr,
}

/// Owns the Raft state of this member.
pub struct RaftActor {
    node: Node<PendingRead>,
    wal: WalHandle,
    apply: Addr<ApplyActor>,
    status: Arc<NodeStatus>,
    settings: RaftSettings,
    turn_scheduled: bool,
    /// Proposals accepted since the last turn, registered with the applier in
    /// one message.
    registrations: Vec<(u64, oneshot::Sender<WriteResult>)>,
    /// One more per leader change.
    epoch: u64,
    waiting: ProposalQueue<Waiting>,
    peers: HashMap<u64, (Vec<String>, Addr<PeerActor>)>,
    /// When the oldest unanswered heartbeat left for each peer (the
    /// leader's round-trip measure).
    heartbeats: HashMap<u64, std::time::Instant>,
    /// A snapshot ready held back until the state machine installed it.
    held: Option<Persist>,
    transfers: Transfers<TransferReply>,
    ticks: u64,
    /// When the last tick was handled, and the nominal interval.
    last_tick: Option<std::time::Instant>,
    /// Whether and when this member stops for being removed.
    removal: Removal,
    /// What is handed to the applier, bounded.
    flow: ApplyFlow,
    /// Set in the husk of an actor that moved to the Raft thread: where
    /// everything still sent here goes.
    moved_to: Option<Addr<RaftActor>>,
}

impl RaftActor {
    /// Wraps a node; `members` are the known members (PeerActors start for
    /// every other one).
    pub fn new(
        node: Node<PendingRead>,
        wal: WalHandle,
        apply: Addr<ApplyActor>,
        status: Arc<NodeStatus>,
        settings: RaftSettings,
    ) -> RaftActor {
        let applied = node.applied_index();
        RaftActor {
            node,
            wal,
            apply,
            status,
            settings,
            turn_scheduled: false,
            registrations: Vec::new(),
            epoch: 0,
            waiting: ProposalQueue::new(MAX_WAITING),
            peers: HashMap::new(),
            heartbeats: HashMap::new(),
            held: None,
            transfers: Transfers::default(),
            ticks: 0,
            last_tick: None,
            removal: Removal::default(),
            flow: ApplyFlow::new(FlowLimits::default(), applied),
            moved_to: None,
        }
    }

    /// Asks for a turn after the messages already queued are handled, so that
    /// everything that arrived together is handled together.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if !self.turn_scheduled {
            self.turn_scheduled = true;
            ctx.notify(RunTurn);
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.settings.peers.metrics
    }

    fn me(&self) -> String {
        format!("{:x}", self.node.id())
    }

    /// Starts, updates or stops PeerActors to match the registry.
    fn set_peers(&mut self, members: &[Member]) {
        let me = self.node.id();
        let wanted: HashMap<u64, &Member> = members
            .iter()
            .filter(|m| m.id != me)
            .map(|m| (m.id, m))
            .collect();
        self.peers.retain(|id, (_, addr)| {
            let keep = wanted.contains_key(id);
            if !keep {
                tracing::info!(peer = format!("{id:x}"), "peer removed; closing its stream");
                addr.do_send(Stop);
            }
            keep
        });
        for (id, m) in wanted {
            match self.peers.get_mut(&id) {
                Some((urls, addr)) if *urls != m.peer_ur_ls => {
                    *urls = m.peer_ur_ls.clone();
                    addr.do_send(NewUrls(m.peer_ur_ls.clone()));
                }
                Some(_) => {}
                None => {
                    let addr =
                        PeerActor::new(id, m.peer_ur_ls.clone(), self.settings.peers.clone())
                            .start();
                    self.peers.insert(id, (m.peer_ur_ls.clone(), addr));
                }
            }
        }
    }

    /// The most caught-up other voter: whom a leader leaving the
    /// configuration hands over to.
    fn handover_target(&self) -> Option<u64> {
        leadership::handover_target(self.node.id(), &self.node.conf_state().voters, |v| {
            self.node.matched(v)
        })
    }

    fn leadership(&self) -> Leadership {
        Leadership {
            leader: self.node.leader(),
            transferring: self.node.transferring(),
        }
    }

    fn send(&mut self, messages: Vec<raft::eraftpb::Message>) {
        let mut by_peer: HashMap<u64, Vec<raft::eraftpb::Message>> = HashMap::new();
        let now = std::time::Instant::now();
        for m in messages {
            if m.get_msg_type() == MessageType::MsgHeartbeat {
                let sent = self.heartbeats.entry(m.to).or_insert(now);
                if now.duration_since(*sent) > RTT_GIVE_UP {
                    // Never answered: measure from this one.
                    *sent = now;
                }
            }
            by_peer.entry(m.to).or_default().push(m);
        }
        for (to, msgs) in by_peer {
            match self.peers.get(&to) {
                Some((_, addr)) => addr.do_send(Outbox(msgs)),
                None => {
                    tracing::debug!(
                        to = format!("{to:x}"),
                        n = msgs.len(),
                        "no peer for messages"
                    );
                    self.node.report_unreachable(to);
                }
            }
        }
    }

    fn propose(&mut self, w: Waiting) {
        let w = match self.waiting.admit(w, self.leadership()) {
            Admission::Propose(w) => w,
            Admission::Queued | Admission::Dropped => return,
            Admission::Fail(w, e) => return reply_err(w, e),
        };
        if self.flow.gap_too_large(self.node.commit_index()) {
            // etcd's rule: the applier is too far behind to take more.
            self.metrics().proposals_failed.inc();
            return reply_err(w, ApiError::TooManyRequests);
        }
        let result = match &w {
            Waiting::Write(p) => self.node.propose(p.data.clone()),
            Waiting::ConfChange(p) => {
                let ctx = p.cc.context.to_vec();
                self.node.propose_conf_change(ctx, p.cc.clone())
            }
        };
        match (result, w) {
            (Ok(()), Waiting::Write(p)) => self.registrations.push((p.id, p.reply)),
            (Ok(()), Waiting::ConfChange(p)) => self.registrations.push((p.id, p.reply)),
            (Err(e), w) => {
                if let Some((w, e)) = self.waiting.refused(w, e) {
                    self.metrics().proposals_failed.inc();
                    reply_err(w, e);
                }
            }
        }
    }

    fn propose_waiting(&mut self) {
        for w in self.waiting.release(self.leadership()) {
            self.propose(w);
        }
    }

    fn execute(&mut self, turn: Turn<PendingRead>) {
        if turn.campaigned {
            self.metrics().election_timeouts.inc();
            tracing::info!(member = %self.me(), term = self.node.term(), "election timeout: campaigning");
        }
        if let Some(role) = turn.role_changed {
            tracing::info!(member = %self.me(), term = self.node.term(), ?role, "raft role changed");
            self.metrics()
                .is_leader
                .set(i64::from(role == StateRole::Leader));
        }
        self.status.term.store(self.node.term(), Relaxed);
        self.status
            .commit_index
            .store(self.node.commit_index(), Relaxed);
        self.metrics()
            .proposals_committed
            .set(self.node.commit_index() as i64);
        self.metrics()
            .raft_inflight_messages
            .set(self.node.inflight_appends() as i64);
        match (turn.install, turn.persist) {
            (Some(snapshot), Some(persist)) => {
                // The state first, then the log that says it is there.
                tracing::info!(
                    member = %self.me(),
                    index = snapshot.get_metadata().index,
                    "installing a snapshot from the leader"
                );
                self.held = Some(persist);
                self.flow.installed(snapshot.get_metadata().index);
                self.apply.do_send(InstallSnapshot(snapshot));
            }
            (_, Some(p)) => self.wal.send(WalCommand::Append(append(p))),
            (_, None) => {}
        }
        if !turn.messages.is_empty() {
            self.send(turn.messages);
        }
        if !turn.committed.is_empty() {
            let now = self.flow.committed(turn.committed);
            if !now.is_empty() {
                self.apply.do_send(Apply { entries: now });
            }
        }
        for (index, reads) in turn.reads {
            self.flow.reads_handed(index, reads.len());
            self.apply.do_send(ServeReads { index, reads });
        }
        self.publish_flow();
        if let Some(leader) = turn.leader_changed {
            self.on_leader_changed(leader);
        }
    }

    /// Hands the applier the committed entries that waited in the log, as
    /// far as it has room.
    fn pump(&mut self) {
        while let Some((low, high, max_bytes)) = self.flow.next_range() {
            match self.node.log_entries(low, high, max_bytes) {
                Ok(entries) if !entries.is_empty() => {
                    self.flow.handed_over(&entries);
                    self.apply.do_send(Apply { entries });
                }
                Ok(_) => break,
                Err(e) => {
                    // Committed entries are in the log until applied: a
                    // failure here is a broken invariant, not load.
                    tracing::error!(member = %self.me(), low, high, "committed entries unreadable");
                    self.status.fatal.stop("committed entries unreadable", &e);
                    return;
                }
            }
        }
        self.publish_flow();
    }

    fn publish_flow(&self) {
        let (entries, bytes, waiting) = self.flow.backlog();
        let m = self.metrics();
        m.apply_inflight_entries.set(entries as i64);
        m.apply_inflight_bytes.set(bytes as i64);
        m.apply_waiting_entries.set(waiting as i64);
        m.apply_waiting_reads.set(self.flow.waiting_reads() as i64);
    }

    fn on_leader_changed(&mut self, leader: u64) {
        self.status.leader.store(leader, Relaxed);
        self.metrics().has_leader.set(i64::from(leader != 0));
        self.metrics()
            .is_leader
            .set(i64::from(self.node.is_leader()));
        self.metrics().leader_changes_seen.inc();
        self.metrics().raft_leader_changes.inc();
        tracing::info!(
            member = %self.me(),
            leader = format!("{leader:x}"),
            term = self.node.term(),
            "leader changed"
        );
        // After this turn's Apply: what committed is answered first.
        self.epoch += 1;
        self.apply.do_send(LeaderChanged { epoch: self.epoch });
        for reply in self.transfers.leader_changed(leader) {
            let _ = reply.send(Ok(()));
        }
    }
}

fn append(p: Persist) -> Append {
    Append {
        number: p.number,
        snapshot: p.snapshot,
        entries: p.entries,
        hard_state: p.hard_state,
        must_sync: p.must_sync,
    }
}

fn reply_err(w: Waiting, e: ApiError) {
    match w {
        Waiting::Write(p) => {
            let _ = p.reply.send(Err(e));
        }
        Waiting::ConfChange(p) => {
            let _ = p.reply.send(Err(e));
        }
    }
}

impl Actor for RaftActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        self.status.term.store(self.node.term(), Relaxed);
        self.status
            .is_learner
            .store(self.node.is_learner(), Relaxed);
        let cs = self.node.conf_state();
        if cs.voters == [self.node.id()] && cs.learners.is_empty() {
            // A lone voter need not wait an election timeout to lead.
            if let Err(e) = self.node.campaign() {
                tracing::warn!(error = %e, "campaign failed");
            }
        }
        self.schedule(ctx);
    }
}

impl Handler<InitialMembers> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: InitialMembers, _: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        self.set_peers(&msg.0);
    }
}

impl Handler<Propose> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Propose, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        self.propose(Waiting::Write(msg));
        self.schedule(ctx);
    }
}

impl Handler<ProposeConfChange> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: ProposeConfChange, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        let removes_me = leadership::removes(&msg.cc, self.node.id());
        if removes_me && self.node.is_leader() {
            // Hand over first: a leader that removed itself would keep
            // leading a cluster it is no longer part of until it stops.
            if let Some(to) = self.handover_target() {
                tracing::info!(member = %self.me(), to = format!("{to:x}"), "removing the leader: handing leadership over first");
                self.node.transfer_leader(to);
                self.waiting.hold(Waiting::ConfChange(msg));
                self.schedule(ctx);
                return;
            }
        }
        self.propose(Waiting::ConfChange(msg));
        self.schedule(ctx);
    }
}

impl Handler<ReadIndex> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: ReadIndex, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        if self.flow.reads_full() {
            let _ = msg.0.reply.send(Err(ApiError::TooManyRequests));
            return;
        }
        self.node.read(msg.0);
        self.schedule(ctx);
    }
}

impl Handler<StepBatch> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: StepBatch, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        if self.removal.removed() {
            // Stopping: what Raft would make of it no longer matters.
            return;
        }
        for m in msg.0 {
            if m.get_msg_type() == MessageType::MsgHeartbeatResponse {
                if let Some(sent) = self.heartbeats.remove(&m.from) {
                    let rtt = sent.elapsed();
                    if rtt <= RTT_GIVE_UP {
                        self.metrics()
                            .peer_round_trip_seconds
                            .get_or_create(&crate::metrics::ToPeer {
                                To: format!("{:x}", m.from),
                            })
                            .observe(rtt.as_secs_f64());
                    }
                }
            }
            if let Err(e) = self.node.step(m) {
                tracing::debug!(error = %e, "raft message refused");
            }
        }
        self.schedule(ctx);
    }
}

impl Handler<PeerBack> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: PeerBack, _: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        if let Some((_, peer)) = self.peers.get(&msg.0) {
            peer.do_send(msg);
        }
    }
}

impl Handler<Unreachable> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Unreachable, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        self.node.report_unreachable(msg.0);
        self.schedule(ctx);
    }
}

impl Handler<SnapshotSent> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: SnapshotSent, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        self.node.report_snapshot(msg.to, msg.ok);
        if !msg.ok {
            self.node.report_unreachable(msg.to);
        }
        self.schedule(ctx);
    }
}

impl Handler<SnapshotInstalled> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: SnapshotInstalled, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        if let Some(p) = self.held.take() {
            tracing::info!(member = %self.me(), index = msg.index, "snapshot installed");
            self.wal.send(WalCommand::Append(append(p)));
        }
        self.schedule(ctx);
    }
}

impl Handler<MembershipChanged> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: MembershipChanged, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        if self.removal.removed() {
            return;
        }
        let me = self.node.id();
        let removes_me = msg
            .conf_change
            .as_ref()
            .is_some_and(|cc| leadership::removes(cc, me));
        if removes_me && self.node.is_leader() {
            // A leader outside its own configuration trips raft-rs (its own
            // progress is gone); the others applied the removal and elect a
            // successor. Hand over at once to the most caught-up voter so
            // they need not wait an election timeout, and stop.
            if let Some(to) = self.handover_target() {
                self.node.transfer_leader(to);
            }
            self.stop_removed(ctx);
            self.schedule(ctx);
            return;
        }
        if let Some(cc) = &msg.conf_change {
            match self.node.apply_conf_change(cc) {
                Ok(cs) => {
                    tracing::info!(member = %self.me(), voters = ?cs.voters, learners = ?cs.learners, "raft configuration changed");
                    self.status
                        .is_learner
                        .store(cs.learners.contains(&me), Relaxed);
                    if !cs.voters.contains(&me) && !cs.learners.contains(&me) {
                        self.stop_removed(ctx);
                    }
                }
                Err(e) => tracing::error!(error = %e, "raft refused an applied conf change"),
            }
        }
        if msg.members.len() > 1 {
            if let Some(thread) = self.settings.raft_thread.take() {
                // The moved actor starts the PeerActors and takes its turn.
                if self.move_to(thread, msg.members.clone(), ctx) {
                    return;
                }
            }
        }
        self.set_peers(&msg.members);
        self.schedule(ctx);
    }
}

impl RaftActor {
    /// This member was removed: stop shortly after (as etcd), once the
    /// removal is acknowledged to whoever asked.
    fn stop_removed(&mut self, ctx: &mut Context<Self>) {
        let now = std::time::Instant::now();
        if let Some(at) = self.removal.applied(now) {
            tracing::warn!(member = %self.me(), "{}; stopping", crate::status::REMOVED);
            stop_after(ctx, at.saturating_duration_since(now));
        }
    }
}

impl Handler<RemovedFromCluster> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: RemovedFromCluster, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        // A peer refused this member: the others applied its removal. The
        // commit of that removal may still be on its way here, and whoever
        // asked this member to leave waits for it to be applied; keep
        // stepping messages a little longer, then stop whatever happened.
        let now = std::time::Instant::now();
        if let Some(at) = self.removal.told(now) {
            tracing::warn!(member = %self.me(), "peers report this member removed; stopping soon");
            stop_after(ctx, at.saturating_duration_since(now));
        }
    }
}

/// Stops the member (its actor system) after `delay`.
fn stop_after(ctx: &mut Context<RaftActor>, delay: std::time::Duration) {
    ctx.run_later(delay, |_, _| System::current().stop_with_code(0));
}

impl Handler<TransferLeader> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: TransferLeader, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        let voters = self.node.conf_state().voters;
        match leadership::check_transfer(self.node.is_leader(), self.node.id(), &voters, msg.to) {
            TransferCheck::Refuse(e) => {
                let _ = msg.reply.send(Err(e));
                return;
            }
            TransferCheck::Done => {
                let _ = msg.reply.send(Ok(()));
                return;
            }
            TransferCheck::Start => {}
        }
        tracing::info!(member = %self.me(), to = format!("{:x}", msg.to), term = self.node.term(), "leadership transfer");
        self.node.transfer_leader(msg.to);
        self.transfers.start(msg.to, self.ticks, msg.reply);
        self.schedule(ctx);
    }
}

impl Handler<QueryRaft> for RaftActor {
    type Result = ResponseFuture<RaftView>;
    fn handle(&mut self, msg: QueryRaft, _: &mut Context<Self>) -> Self::Result {
        if let Some(to) = self.moved_to.clone() {
            return Box::pin(async move { to.send(msg).await.unwrap_or_default() });
        }
        let cs = self.node.conf_state();
        let matched = cs
            .voters
            .iter()
            .chain(cs.learners.iter())
            .filter_map(|&id| self.node.matched(id).map(|m| (id, m)))
            .collect();
        let view = RaftView {
            is_leader: self.node.is_leader(),
            leader: self.node.leader(),
            matched,
        };
        Box::pin(async move { view })
    }
}

impl Handler<Tick> for RaftActor {
    type Result = ();
    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        if self.moved_to.is_some() {
            return; // the husk: the moved actor has its own
        }
        self.ticks += 1;
        let now = std::time::Instant::now();
        if let Some(last) = self.last_tick.replace(now) {
            // A late tick is a late heartbeat: what nothing on this thread
            // may cause.
            let gap = now - last;
            self.metrics()
                .tick_interval_seconds
                .observe(gap.as_secs_f64());
            let late = gap.saturating_sub(self.settings.tick).as_millis() as i64;
            if late > self.metrics().tick_delay_max_ms.get() {
                self.metrics().tick_delay_max_ms.set(late);
            }
        }
        if self.node.is_leader() {
            self.metrics().heartbeat_timeouts.inc();
        }
        for read in self.node.tick() {
            let _ = read.reply.send(Err(ApiError::Timeout));
        }
        // Clients that gave up while their proposal waited for a leader.
        self.waiting.sweep();
        // A leadership transfer that gave up leaves the leader in place.
        self.propose_waiting();
        for reply in self.transfers.expired(self.ticks) {
            let _ = reply.send(Err(ApiError::TimeoutLeaderTransfer));
        }
        self.schedule(ctx);
    }
}

impl Handler<Persisted> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Persisted, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        let ready_messages = self.node.on_persisted(msg.number);
        if !ready_messages.is_empty() {
            self.send(ready_messages);
        }
        self.schedule(ctx);
    }
}

impl Handler<Applied> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Applied, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        self.node.on_applied(msg.index);
        self.flow.applied(msg.index);
        self.pump();
        self.schedule(ctx);
    }
}

impl Handler<Snapshotted> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Snapshotted, _: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        // Entries kept for followers catching up stay on disk as well where
        // the log reads them back from there (rocksdb).
        let keep_after = msg
            .index
            .saturating_sub(self.settings.snapshot_catchup_entries);
        self.node.compact_log(keep_after);
        self.wal.send(WalCommand::Purge(Purge {
            upto: msg.index,
            keep_after,
            term: msg.term,
        }));
    }
}

impl Handler<RunTurn> for RaftActor {
    type Result = ();
    fn handle(&mut self, _: RunTurn, ctx: &mut Context<Self>) {
        if self.moved_to.is_some() {
            return; // the husk: the moved actor has its own
        }
        self.turn_scheduled = false;
        // Proposals made before this turn, in the epoch they were made in,
        // before any Apply of this turn.
        self.register();
        // A turn may unlock another (e.g. a no-entry ready behind the last one);
        // bounded so the mailbox is never starved.
        for _ in 0..4 {
            if !self.node.has_work() {
                break;
            }
            let turn = self.node.turn();
            if turn.is_empty() {
                break;
            }
            let leader_known = matches!(turn.leader_changed, Some(l) if l != 0);
            self.execute(turn);
            if leader_known {
                self.propose_waiting();
            }
        }
        // Proposals made in this turn (to a leader just found).
        self.register();
        self.start_fetches(ctx);
    }
}

impl Handler<EntriesFetched> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: EntriesFetched, ctx: &mut Context<Self>) {
        moving::forward_if_moved!(self, msg);
        self.node.on_fetched(msg.0);
        self.schedule(ctx);
    }
}

impl RaftActor {
    /// Reads of old log entries raft waits for, each on a thread of its own
    /// (disk reads never run on the Raft thread; they are rare: a follower
    /// far behind, one read per message of up to `max-request-bytes`).
    fn start_fetches(&mut self, ctx: &mut Context<Self>) {
        for fetch in self.node.take_fetches() {
            self.metrics().raft_log_disk_reads.inc();
            let me = ctx.address();
            let low = fetch.low();
            let spawned = std::thread::Builder::new()
                .name("raft-log-read".into())
                .spawn(move || me.do_send(EntriesFetched(fetch.run())));
            if let Err(e) = spawned {
                // Nothing read: raft sends that follower a snapshot.
                tracing::warn!(error = %e, low, "cannot start a Raft log read");
                self.node.on_fetched(Fetched::nothing(low));
                self.schedule(ctx);
            }
        }
    }
}

impl RaftActor {
    /// Tells the applier who waits for which request id. An entry can only
    /// commit in a later turn than the one it was proposed in, so its waiter
    /// is always known to the applier by the time the entry arrives.
    fn register(&mut self) {
        if !self.registrations.is_empty() {
            self.apply.do_send(Register {
                waiters: std::mem::take(&mut self.registrations),
                epoch: self.epoch,
            });
        }
    }
}

/// Encodes a membership change's context.
pub fn conf_change_context(id: u64, member: Option<Member>) -> Vec<u8> {
    ConfChangeContext { id, member }.encode_to_vec()
}
