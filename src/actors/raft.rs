//! The RaftActor: a thin actix shell around [`Node`]. It collects proposals,
//! reads, ticks and WAL answers from its mailbox, then runs one turn and carries
//! out the outputs: appends to the WalWriter, committed entries to the
//! ApplyActor, messages to peers. It never blocks: fsync happens in the
//! WalWriter, apply in the ApplyActor.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::prelude::*;

use super::apply::ApplyActor;
use super::messages::*;
use super::wal::{WalCommand, WalHandle};
use crate::consensus::{Node, Turn};
use crate::error::ApiError;
use crate::metrics::METRICS;
use crate::status::NodeStatus;

/// Entries kept in the log behind a snapshot so a slightly lagging follower can
/// catch up from the log instead of a snapshot (etcd keeps 5000).
const SNAPSHOT_CATCHUP_ENTRIES: u64 = 5000;
/// Mailbox depth: senders that `send().await` wait beyond it (backpressure).
const MAILBOX: usize = 4096;

/// Owns the Raft state of this member.
pub struct RaftActor {
    node: Node<PendingRead>,
    wal: WalHandle,
    apply: Addr<ApplyActor>,
    status: Arc<NodeStatus>,
    turn_scheduled: bool,
    /// Proposals accepted since the last turn, registered with the applier in
    /// one message.
    registrations: Vec<(u64, tokio::sync::oneshot::Sender<WriteResult>)>,
}

impl RaftActor {
    /// Wraps a node.
    pub fn new(
        node: Node<PendingRead>,
        wal: WalHandle,
        apply: Addr<ApplyActor>,
        status: Arc<NodeStatus>,
    ) -> RaftActor {
        RaftActor {
            node,
            wal,
            apply,
            status,
            turn_scheduled: false,
            registrations: Vec::new(),
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

    fn execute(&mut self, turn: Turn<PendingRead>) {
        if turn.campaigned {
            METRICS.election_timeouts.inc();
        }
        if let Some(leader) = turn.leader_changed {
            self.status.leader.store(leader, Relaxed);
            METRICS.has_leader.set(i64::from(leader != 0));
            METRICS.is_leader.set(i64::from(self.node.is_leader()));
            METRICS.leader_changes_seen.inc();
            METRICS.raft_leader_changes.inc();
            tracing::info!(leader, term = self.node.term(), "leader changed");
        }
        self.status.term.store(self.node.term(), Relaxed);
        self.status
            .commit_index
            .store(self.node.commit_index(), Relaxed);
        METRICS
            .proposals_committed
            .set(self.node.commit_index() as i64);
        if let Some(p) = turn.persist {
            self.wal.send(WalCommand::Append(Append {
                number: p.number,
                entries: p.entries,
                hard_state: p.hard_state,
                must_sync: p.must_sync,
            }));
        }
        if !turn.messages.is_empty() {
            // Peers arrive with multi-member clusters; a lone member sends nothing.
            tracing::debug!(
                n = turn.messages.len(),
                "raft messages without peers dropped"
            );
        }
        if !turn.committed.is_empty() {
            self.apply.do_send(Apply {
                entries: turn.committed,
            });
        }
        for (index, reads) in turn.reads {
            self.apply.do_send(ServeReads { index, reads });
        }
    }
}

impl Actor for RaftActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        self.status.term.store(self.node.term(), Relaxed);
        // A lone voter need not wait an election timeout to lead.
        if let Err(e) = self.node.campaign() {
            tracing::warn!(error = %e, "campaign failed");
        }
        self.schedule(ctx);
    }
}

impl Handler<Propose> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Propose, ctx: &mut Context<Self>) {
        match self.node.propose(msg.data) {
            Ok(()) => self.registrations.push((msg.id, msg.reply)),
            Err(e) => {
                METRICS.proposals_failed.inc();
                let _ = msg.reply.send(Err(e));
            }
        }
        self.schedule(ctx);
    }
}

impl Handler<ReadIndex> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: ReadIndex, ctx: &mut Context<Self>) {
        self.node.read(msg.0);
        self.schedule(ctx);
    }
}

impl Handler<Tick> for RaftActor {
    type Result = ();
    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        if self.node.is_leader() {
            METRICS.heartbeat_timeouts.inc();
        }
        for read in self.node.tick() {
            let _ = read.reply.send(Err(ApiError::Timeout));
        }
        self.schedule(ctx);
    }
}

impl Handler<Persisted> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Persisted, ctx: &mut Context<Self>) {
        let ready_messages = self.node.on_persisted(msg.number);
        if !ready_messages.is_empty() {
            tracing::debug!(
                n = ready_messages.len(),
                "persisted raft messages without peers dropped"
            );
        }
        self.schedule(ctx);
    }
}

impl Handler<Applied> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Applied, ctx: &mut Context<Self>) {
        self.node.on_applied(msg.index);
        self.schedule(ctx);
    }
}

impl Handler<Snapshotted> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Snapshotted, _: &mut Context<Self>) {
        self.node
            .compact_log(msg.index.saturating_sub(SNAPSHOT_CATCHUP_ENTRIES));
        self.wal.send(WalCommand::Purge(Purge {
            upto: msg.index,
            term: msg.term,
        }));
    }
}

impl Handler<RunTurn> for RaftActor {
    type Result = ();
    fn handle(&mut self, _: RunTurn, _: &mut Context<Self>) {
        self.turn_scheduled = false;
        if !self.registrations.is_empty() {
            // Before any Apply of this turn: an entry's waiter is always known
            // to the applier by the time the entry arrives.
            self.apply
                .do_send(Register(std::mem::take(&mut self.registrations)));
        }
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
            self.execute(turn);
        }
    }
}
