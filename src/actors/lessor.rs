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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::propose::Proposer;
use crate::error::ApiError;
use crate::proto::etcdserverpb::LeaseRevokeRequest;
use crate::proto::metastorepb::{internal_request, LeaseCheckpoint, LeaseCheckpointRequest};
use crate::state_machine::lease::LeaseChange;
use crate::status::NodeStatus;
use crate::storage::leases::LeaseTable;

/// How often expiries and leadership are looked at.
const TICK: Duration = Duration::from_millis(100);
/// Most revocations proposed per second (etcd's `leaseRevokeRate`).
const REVOKES_PER_SECOND: usize = 1000;
/// A proposed revocation not applied after this long is proposed again.
const REVOKE_RETRY: Duration = Duration::from_secs(3);
/// Most checkpoints in one proposal.
const CHECKPOINT_BATCH: usize = 1000;

#[derive(Debug, Clone, Copy)]
struct Clock {
    ttl: i64,
    /// The checkpointed remaining TTL (0: none).
    remaining: i64,
    /// When the lease expires (only on the leader).
    expiry: Option<Instant>,
}

/// Settings.
#[derive(Debug, Clone)]
pub struct LessorConfig {
    /// Added to every lease's TTL when this member becomes leader (etcd:
    /// the election timeout), so no lease expires in the hand-over.
    pub extend: Duration,
    /// How often remaining TTLs are checkpointed.
    pub checkpoint_interval: Duration,
}

/// The Lessor actor.
pub struct Lessor {
    cfg: LessorConfig,
    status: Arc<NodeStatus>,
    proposer: Proposer,
    clocks: HashMap<i64, Clock>,
    leading: bool,
    /// Revocations proposed and not applied yet, with when.
    revoking: HashMap<i64, Instant>,
    last_checkpoint: Instant,
}

impl Lessor {
    /// A Lessor over the applied lease table.
    pub fn new(
        cfg: LessorConfig,
        status: Arc<NodeStatus>,
        proposer: Proposer,
        table: &LeaseTable,
    ) -> Lessor {
        let mut l = Lessor {
            cfg,
            status,
            proposer,
            clocks: HashMap::new(),
            leading: false,
            revoking: HashMap::new(),
            last_checkpoint: Instant::now(),
        };
        l.load(table);
        l
    }

    fn load(&mut self, table: &LeaseTable) {
        self.clocks = table
            .iter()
            .map(|(id, e)| {
                (
                    id,
                    Clock {
                        ttl: e.ttl,
                        remaining: e.remaining,
                        expiry: None,
                    },
                )
            })
            .collect();
        self.revoking.clear();
        if self.leading {
            self.promote();
        }
    }

    fn promote(&mut self) {
        let now = Instant::now();
        for c in self.clocks.values_mut() {
            let left = if c.remaining > 0 { c.remaining } else { c.ttl };
            c.expiry = Some(now + self.cfg.extend + secs(left));
        }
        self.last_checkpoint = now;
        tracing::info!(
            leases = self.clocks.len(),
            "lessor: leading; lease clocks started"
        );
    }

    fn demote(&mut self) {
        for c in self.clocks.values_mut() {
            c.expiry = None;
        }
        self.revoking.clear();
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let leading = self.status.leader() == self.status.member_id;
        if leading != self.leading {
            self.leading = leading;
            if leading {
                self.promote();
            } else {
                self.demote();
            }
        }
        if !self.leading {
            return;
        }
        self.expire(ctx);
        if self.last_checkpoint.elapsed() >= self.cfg.checkpoint_interval {
            self.last_checkpoint = Instant::now();
            self.checkpoint(ctx);
        }
    }

    /// Proposes the revocation of expired leases (rate-limited as etcd's).
    fn expire(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let budget = (REVOKES_PER_SECOND as u128 * TICK.as_millis() / 1000) as usize;
        let expired: Vec<i64> = self
            .clocks
            .iter()
            .filter(|(id, c)| {
                c.expiry.is_some_and(|e| e <= now)
                    && self
                        .revoking
                        .get(id)
                        .is_none_or(|at| at.elapsed() >= REVOKE_RETRY)
            })
            .map(|(id, _)| *id)
            .take(budget.max(1))
            .collect();
        for id in expired {
            self.revoking.insert(id, now);
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
    }

    /// Records the remaining TTL of leases nobody keeps alive.
    fn checkpoint(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let due: Vec<LeaseCheckpoint> = self
            .clocks
            .iter()
            .filter_map(|(id, c)| {
                let left = c.expiry?.saturating_duration_since(now).as_secs() as i64;
                (left > 0 && left * 2 < c.ttl && left != c.remaining).then_some(LeaseCheckpoint {
                    id: *id,
                    remaining_ttl: left,
                })
            })
            .collect();
        for chunk in due.chunks(CHECKPOINT_BATCH) {
            let proposer = self.proposer.clone();
            let req = internal_request::Request::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: chunk.to_vec(),
            });
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
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

impl Actor for Lessor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, |l, ctx| l.tick(ctx));
    }
}

/// ApplyActor → Lessor: what an applied batch changed about leases.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeasesChanged(pub Vec<LeaseChange>);

/// ApplyActor → Lessor: the whole table was replaced (a snapshot install).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeasesReplaced(pub LeaseTable);

/// Keep-alive → Lessor (on the leader): renew a lease; answers its TTL.
#[derive(Message)]
#[rtype(result = "Result<i64, ApiError>")]
pub struct Renew(pub i64);

/// LeaseTimeToLive → Lessor (on the leader): (remaining, granted) TTLs.
#[derive(Message)]
#[rtype(result = "Result<(i64, i64), ApiError>")]
pub struct TimeToLive(pub i64);

impl Handler<LeasesChanged> for Lessor {
    type Result = ();
    fn handle(&mut self, msg: LeasesChanged, _: &mut Context<Self>) {
        let now = Instant::now();
        for change in msg.0 {
            match change {
                LeaseChange::Granted { id, ttl } => {
                    let expiry = self.leading.then(|| now + secs(ttl));
                    self.clocks.insert(
                        id,
                        Clock {
                            ttl,
                            remaining: 0,
                            expiry,
                        },
                    );
                }
                LeaseChange::Revoked { id } => {
                    self.clocks.remove(&id);
                    self.revoking.remove(&id);
                }
                LeaseChange::Checkpointed { id, remaining } => {
                    if let Some(c) = self.clocks.get_mut(&id) {
                        c.remaining = remaining;
                    }
                }
            }
        }
    }
}

impl Handler<LeasesReplaced> for Lessor {
    type Result = ();
    fn handle(&mut self, msg: LeasesReplaced, _: &mut Context<Self>) {
        self.load(&msg.0);
    }
}

impl Handler<Renew> for Lessor {
    type Result = ResponseFuture<Result<i64, ApiError>>;
    fn handle(&mut self, msg: Renew, _: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        if !self.leading {
            return Box::pin(async { Err(ApiError::NotLeader) });
        }
        let now = Instant::now();
        let Some(c) = self.clocks.get_mut(&id) else {
            return Box::pin(async { Err(ApiError::LeaseNotFound) });
        };
        // Expired, its revocation on the way: gone (etcd answers the same).
        if c.expiry.is_some_and(|e| e <= now) {
            return Box::pin(async { Err(ApiError::LeaseNotFound) });
        }
        c.expiry = Some(now + secs(c.ttl));
        let ttl = c.ttl;
        if c.remaining == 0 {
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

impl Handler<TimeToLive> for Lessor {
    type Result = Result<(i64, i64), ApiError>;
    fn handle(&mut self, msg: TimeToLive, _: &mut Context<Self>) -> Self::Result {
        if !self.leading {
            return Err(ApiError::NotLeader);
        }
        let c = self.clocks.get(&msg.0).ok_or(ApiError::LeaseNotFound)?;
        let left = c.expiry.map_or(c.ttl, |e| {
            e.saturating_duration_since(Instant::now()).as_secs() as i64
        });
        Ok((left, c.ttl))
    }
}

/// Runs a closure on the Lessor's arbiter (where actors can be started;
/// gRPC handlers run on plain tasks).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunHere(pub Box<dyn FnOnce() + Send>);

impl Handler<RunHere> for Lessor {
    type Result = ();
    fn handle(&mut self, msg: RunHere, _: &mut Context<Self>) {
        (msg.0)();
    }
}
