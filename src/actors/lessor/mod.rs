//! The Lessor: when leases expire. Runs on every member, decides only on
//! the leader (as etcd's lessor): a follower's clock means nothing.
//!
//! - The lease table itself is replicated state (the ApplyActor applies
//!   grants, revocations and checkpoints and tells the Lessor what changed);
//!   the Lessor keeps one clock per lease: its expiry on this leader.
//! - Expired leases are revoked through Raft (a LeaseRevoke entry, as etcd),
//!   never locally: every member deletes the keys at the same revision.
//! - Renewals (keep-alives) only move the leader's clock; nothing is written,
//!   except when the lease had a checkpoint (then the checkpoint is reset,
//!   through Raft, before the keep-alive is answered, so a new leader cannot
//!   start the lease from the old, shorter remaining TTL).
//! - Checkpoints: every `checkpoint_interval` the leader records, in one
//!   proposal, the remaining TTL of every lease that is not being kept alive
//!   (less than half its TTL left). A new leader starts each lease from its
//!   checkpoint, or from its full TTL if it has none, plus an election
//!   timeout (etcd's promotion rule): a lease that is kept alive is never
//!   cut short by a failover, and one that is not is never restarted from
//!   its full TTL once it is past half of it.
//! - Leadership is read from the member's status every tick.
//!
//! The decisions (which lease expires, what to checkpoint, how clocks start
//! on a new leader, what a renewal answers) are [`clocks::LeaseClocks`]'s,
//! tested on a fake clock; this actor only reads the time and leadership,
//! and proposes what it is told.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::messages::{LeasesByExpiry, LeasesChanged, LeasesReplaced, Renew, TimeToLive};
use super::propose::Proposer;
use crate::error::ApiError;
use crate::proto::etcdserverpb::LeaseRevokeRequest;
use crate::proto::metastorepb::{internal_request, LeaseCheckpoint, LeaseCheckpointRequest};
use crate::status::NodeStatus;
use crate::storage::leases::LeaseTable;

pub mod clocks;

use clocks::{LeaseClocks, TICK};

/// Settings.
#[derive(Debug, Clone)]
pub struct LessorConfig {
    /// Added to every lease's TTL when this member becomes leader (etcd:
    /// the election timeout), so no lease expires in the hand-over.
    pub extend: Duration,
    /// How often remaining TTLs are checkpointed.
    pub checkpoint_interval: Duration,
}

/// The Lessor actor: reads leadership and the time, asks [`LeaseClocks`]
/// what to do, and proposes it.
pub struct Lessor {
    status: Arc<NodeStatus>,
    proposer: Proposer,
    clocks: LeaseClocks,
}

impl Lessor {
    /// A Lessor over the applied lease table.
    pub fn new(
        cfg: LessorConfig,
        status: Arc<NodeStatus>,
        proposer: Proposer,
        table: &LeaseTable,
    ) -> Lessor {
        Lessor {
            status,
            proposer,
            clocks: LeaseClocks::new(cfg.extend, cfg.checkpoint_interval, table, Instant::now()),
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let leading = self.status.leader() == self.status.member_id;
        let decided = self.clocks.tick(leading, Instant::now());
        for id in decided.revoke {
            self.revoke(id, ctx);
        }
        for req in decided.checkpoints {
            self.checkpoint(req, ctx);
        }
    }

    /// Proposes the revocation of an expired lease.
    fn revoke(&mut self, id: i64, ctx: &mut Context<Self>) {
        let proposer = self.proposer.clone();
        ctx.spawn(
            async move {
                let req = internal_request::Request::LeaseRevoke(LeaseRevokeRequest { id });
                match proposer.write(req).await {
                    Ok(_) | Err(ApiError::LeaseNotFound) => {
                        tracing::debug!(lease = id, "expired lease revoked");
                    }
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "expired lease not revoked yet")
                    }
                }
            }
            .into_actor(self),
        );
    }

    /// Proposes one batch of remaining TTLs.
    fn checkpoint(&mut self, req: LeaseCheckpointRequest, ctx: &mut Context<Self>) {
        let proposer = self.proposer.clone();
        let req = internal_request::Request::LeaseCheckpoint(req);
        ctx.spawn(
            async move {
                if let Err(e) = proposer.write(req).await {
                    tracing::debug!(error = %e, "lease checkpoint not applied");
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Lessor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, |l, ctx| l.tick(ctx));
    }
}

impl Handler<LeasesChanged> for Lessor {
    type Result = ();
    fn handle(&mut self, msg: LeasesChanged, _: &mut Context<Self>) {
        self.clocks.applied(msg.0, Instant::now());
    }
}

impl Handler<LeasesReplaced> for Lessor {
    type Result = ();
    fn handle(&mut self, msg: LeasesReplaced, _: &mut Context<Self>) {
        self.clocks.load(&msg.0, Instant::now());
    }
}

impl Handler<Renew> for Lessor {
    type Result = ResponseFuture<Result<i64, ApiError>>;
    fn handle(&mut self, msg: Renew, _: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let renewal = match self.clocks.renew(id, Instant::now()) {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let ttl = renewal.ttl;
        if !renewal.reset_checkpoint {
            return Box::pin(async move { Ok(ttl) });
        }
        // A checkpoint says less remains than the renewal grants: reset it
        // before answering, or a new leader would cut the lease short.
        let proposer = self.proposer.clone();
        Box::pin(async move {
            let req = internal_request::Request::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: vec![LeaseCheckpoint {
                    id,
                    remaining_ttl: 0,
                }],
            });
            proposer.write(req).await?;
            Ok(ttl)
        })
    }
}

impl Handler<LeasesByExpiry> for Lessor {
    type Result = MessageResult<LeasesByExpiry>;
    fn handle(&mut self, _: LeasesByExpiry, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.clocks.by_expiry())
    }
}

impl Handler<TimeToLive> for Lessor {
    type Result = Result<(i64, i64), ApiError>;
    fn handle(&mut self, msg: TimeToLive, _: &mut Context<Self>) -> Self::Result {
        self.clocks.time_to_live(msg.0, Instant::now())
    }
}
