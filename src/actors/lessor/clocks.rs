//! [`LeaseClocks`]: the Lessor's decisions, with no actor and no clock of
//! its own (every call is given `now`), so unit tests drive it with a fake
//! clock and assert what it decides.
//!
//! It owns one clock per lease (its expiry on this leader) and decides:
//! - which leases expired and must be revoked (through Raft), at most
//!   [`REVOKES_PER_SECOND`] a second, proposing a revocation again only
//!   after [`REVOKE_RETRY`] without its result being applied;
//! - which leases to checkpoint, with what remaining TTL: those with less
//!   than half their TTL left (not being kept alive) whose remaining TTL
//!   changed since the last checkpoint, every `checkpoint_interval`;
//! - where the clocks start when this member becomes leader: from each
//!   lease's checkpoint, or its full TTL if none, plus `extend` (etcd's
//!   promotion rule);
//! - what a renewal (keep-alive) answers, and whether it must reset a
//!   checkpoint through Raft first.
//!
//! Invariants: a follower has no running clocks and decides nothing (no
//! revocation, no checkpoint, no renewal); the clocks only ever follow the
//! applied lease table ([`LeaseClocks::applied`], [`LeaseClocks::load`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::proto::metastorepb::{LeaseCheckpoint, LeaseCheckpointRequest};
use crate::state_machine::lease::LeaseChange;
use crate::storage::leases::LeaseTable;

/// How often the Lessor looks at expiries and leadership.
pub const TICK: Duration = Duration::from_millis(100);
/// Most revocations proposed per second (etcd's `leaseRevokeRate`).
pub const REVOKES_PER_SECOND: usize = 1000;
/// A proposed revocation not applied after this long is proposed again.
pub const REVOKE_RETRY: Duration = Duration::from_secs(3);
/// Most checkpoints in one proposal.
pub const CHECKPOINT_BATCH: usize = 1000;

/// Revocations one tick may propose: the per-second rate spread over the
/// ticks of a second (at least one, so expiry always makes progress).
fn revoke_budget() -> usize {
    let budget = (REVOKES_PER_SECOND as u128 * TICK.as_millis() / 1000) as usize;
    budget.max(1)
}

#[derive(Debug, Clone, Copy)]
struct Clock {
    ttl: i64,
    /// The checkpointed remaining TTL (0: none).
    remaining: i64,
    /// When the lease expires (only on the leader).
    expiry: Option<Instant>,
}

/// What one tick decided: the proposals the Lessor makes.
#[derive(Debug, Default, PartialEq)]
pub struct Decisions {
    /// Leases to revoke (each its own LeaseRevoke proposal).
    pub revoke: Vec<i64>,
    /// Checkpoint proposals, at most [`CHECKPOINT_BATCH`] leases each.
    pub checkpoints: Vec<LeaseCheckpointRequest>,
}

/// What a renewal answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// The lease's TTL, which the keep-alive answers.
    pub ttl: i64,
    /// The lease has a checkpoint that must be reset (remaining TTL 0,
    /// through Raft) before the keep-alive is answered, or a new leader
    /// would start it from the older, shorter remaining TTL.
    pub reset_checkpoint: bool,
}

/// The leader's clock for every lease, and the rules that move them.
#[derive(Debug)]
pub struct LeaseClocks {
    extend: Duration,
    checkpoint_interval: Duration,
    clocks: HashMap<i64, Clock>,
    leading: bool,
    /// Revocations proposed and not applied yet, with when.
    revoking: HashMap<i64, Instant>,
    last_checkpoint: Instant,
}

impl LeaseClocks {
    /// Clocks for the leases of the applied `table`, not leading yet.
    /// `extend` is added to every lease when this member becomes leader;
    /// remaining TTLs are checkpointed every `checkpoint_interval`.
    pub fn new(
        extend: Duration,
        checkpoint_interval: Duration,
        table: &LeaseTable,
        now: Instant,
    ) -> LeaseClocks {
        let mut c = LeaseClocks {
            extend,
            checkpoint_interval,
            clocks: HashMap::new(),
            leading: false,
            revoking: HashMap::new(),
            last_checkpoint: now,
        };
        c.load(table, now);
        c
    }

    /// Whether this member leads (as of the last tick).
    pub fn leading(&self) -> bool {
        self.leading
    }

    /// The whole lease table was replaced (a snapshot install): clocks start
    /// over from it (running at once if leading).
    pub fn load(&mut self, table: &LeaseTable, now: Instant) {
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
            self.promote(now);
        }
    }

    /// This member became leader: every clock starts from the lease's
    /// checkpoint (or full TTL) plus `extend`, so no lease expires in the
    /// hand-over and none restarts from its full TTL past half of it.
    fn promote(&mut self, now: Instant) {
        for c in self.clocks.values_mut() {
            let left = if c.remaining > 0 { c.remaining } else { c.ttl };
            c.expiry = Some(now + self.extend + secs(left));
        }
        self.last_checkpoint = now;
        tracing::info!(
            leases = self.clocks.len(),
            "lessor: leading; lease clocks started"
        );
    }

    /// This member no longer leads: its clocks mean nothing.
    fn demote(&mut self) {
        for c in self.clocks.values_mut() {
            c.expiry = None;
        }
        self.revoking.clear();
    }

    /// One tick: follows leadership (`leading` as read from the member's
    /// status), then, on the leader, decides revocations and checkpoints.
    pub fn tick(&mut self, leading: bool, now: Instant) -> Decisions {
        if leading != self.leading {
            self.leading = leading;
            if leading {
                self.promote(now);
            } else {
                self.demote();
            }
        }
        if !self.leading {
            return Decisions::default();
        }
        let revoke = self.expire(now);
        let mut checkpoints = Vec::new();
        if now.saturating_duration_since(self.last_checkpoint) >= self.checkpoint_interval {
            self.last_checkpoint = now;
            checkpoints = self.checkpoint(now);
        }
        Decisions {
            revoke,
            checkpoints,
        }
    }

    /// Expired leases whose revocation is not on its way (or has been for
    /// [`REVOKE_RETRY`]), within this tick's share of the rate; each is
    /// marked as being revoked.
    fn expire(&mut self, now: Instant) -> Vec<i64> {
        let expired: Vec<i64> = self
            .clocks
            .iter()
            .filter(|(id, c)| {
                c.expiry.is_some_and(|e| e <= now)
                    && self
                        .revoking
                        .get(id)
                        .is_none_or(|at| now.saturating_duration_since(*at) >= REVOKE_RETRY)
            })
            .map(|(id, _)| *id)
            .take(revoke_budget())
            .collect();
        for id in &expired {
            self.revoking.insert(*id, now);
        }
        expired
    }

    /// The remaining TTL of leases nobody keeps alive (less than half left),
    /// unless it is already what the last checkpoint recorded.
    fn checkpoint(&self, now: Instant) -> Vec<LeaseCheckpointRequest> {
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
        due.chunks(CHECKPOINT_BATCH)
            .map(|chunk| LeaseCheckpointRequest {
                checkpoints: chunk.to_vec(),
            })
            .collect()
    }

    /// What an applied batch changed: grants start a clock (running on the
    /// leader), revocations end one, checkpoints are remembered.
    pub fn applied(&mut self, changes: Vec<LeaseChange>, now: Instant) {
        for change in changes {
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

    /// A keep-alive (on the leader): the lease's clock restarts from its
    /// full TTL.
    pub fn renew(&mut self, id: i64, now: Instant) -> Result<Renewal, ApiError> {
        if !self.leading {
            return Err(ApiError::NotLeader);
        }
        let c = self.clocks.get_mut(&id).ok_or(ApiError::LeaseNotFound)?;
        // Expired, its revocation on the way: gone (etcd answers the same).
        if c.expiry.is_some_and(|e| e <= now) {
            return Err(ApiError::LeaseNotFound);
        }
        c.expiry = Some(now + secs(c.ttl));
        Ok(Renewal {
            ttl: c.ttl,
            reset_checkpoint: c.remaining != 0,
        })
    }

    /// Every lease's ID, soonest expiry first (as etcd's `Leases()`):
    /// leases without a running clock (a follower's) last, ties by ID.
    pub fn by_expiry(&self) -> Vec<i64> {
        let mut ids: Vec<(Option<Instant>, i64)> =
            self.clocks.iter().map(|(&id, c)| (c.expiry, id)).collect();
        ids.sort_by(|a, b| match (a.0, b.0) {
            (Some(x), Some(y)) => x.cmp(&y).then(a.1.cmp(&b.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(&b.1),
        });
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// (remaining, granted) TTLs of a lease, on the leader.
    pub fn time_to_live(&self, id: i64, now: Instant) -> Result<(i64, i64), ApiError> {
        if !self.leading {
            return Err(ApiError::NotLeader);
        }
        let c = self.clocks.get(&id).ok_or(ApiError::LeaseNotFound)?;
        let left = c
            .expiry
            .map_or(c.ttl, |e| e.saturating_duration_since(now).as_secs() as i64);
        Ok((left, c.ttl))
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::leases::LeaseEntry;

    const EXTEND: Duration = Duration::from_secs(1);
    const INTERVAL: Duration = Duration::from_secs(300);

    /// A fake clock: `t0` plus whole or fractional seconds.
    struct Fake {
        t0: Instant,
    }

    impl Fake {
        fn new() -> Fake {
            Fake { t0: Instant::now() }
        }
        fn at(&self, secs: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(secs)
        }
    }

    fn table(leases: &[(i64, i64, i64)]) -> LeaseTable {
        let mut t = LeaseTable::default();
        for &(id, ttl, remaining) in leases {
            t.insert(id, LeaseEntry { ttl, remaining });
        }
        t
    }

    /// Clocks over `leases` (id, ttl, remaining), leading from `clock.at(0)`.
    fn leader(clock: &Fake, leases: &[(i64, i64, i64)]) -> LeaseClocks {
        let mut c = LeaseClocks::new(EXTEND, INTERVAL, &table(leases), clock.at(0.0));
        assert_eq!(c.tick(true, clock.at(0.0)), Decisions::default());
        c
    }

    fn sorted(mut v: Vec<i64>) -> Vec<i64> {
        v.sort_unstable();
        v
    }

    fn checkpointed(d: &Decisions) -> Vec<(i64, i64)> {
        let mut v: Vec<(i64, i64)> = d
            .checkpoints
            .iter()
            .flat_map(|r| r.checkpoints.iter().map(|c| (c.id, c.remaining_ttl)))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn leases_are_listed_soonest_expiry_first() {
        let clock = Fake::new();
        let follower = LeaseClocks::new(
            EXTEND,
            INTERVAL,
            &table(&[(3, 5, 0), (1, 50, 0), (2, 20, 0)]),
            clock.at(0.0),
        );
        // No clock runs on a follower: by ID.
        assert_eq!(follower.by_expiry(), vec![1, 2, 3]);
        let c = leader(&clock, &[(3, 5, 0), (1, 50, 0), (2, 20, 0), (4, 20, 0)]);
        assert_eq!(c.by_expiry(), vec![3, 2, 4, 1]);
    }

    #[test]
    fn a_lease_expires_after_its_ttl_plus_the_promotion_extension() {
        let clock = Fake::new();
        let mut c = leader(&clock, &[(1, 5, 0), (2, 10, 0)]);
        // Promoted at 0: lease 1 runs until 0 + 1 (extend) + 5.
        assert!(c.tick(true, clock.at(5.9)).revoke.is_empty());
        assert_eq!(c.tick(true, clock.at(6.0)).revoke, vec![1]);
        c.applied(vec![LeaseChange::Revoked { id: 1 }], clock.at(6.5));
        assert!(c.tick(true, clock.at(10.9)).revoke.is_empty());
        assert_eq!(c.tick(true, clock.at(11.0)).revoke, vec![2]);
    }

    #[test]
    fn a_new_leader_starts_clocks_from_checkpoints_plus_the_extension() {
        let clock = Fake::new();
        let mut c = LeaseClocks::new(EXTEND, INTERVAL, &table(&[(1, 60, 4)]), clock.at(0.0));
        // Following for a long while: the follower's clock means nothing.
        assert_eq!(c.tick(false, clock.at(100.0)), Decisions::default());
        assert_eq!(c.time_to_live(1, clock.at(100.0)), Err(ApiError::NotLeader));
        // Leading from 100: the checkpoint's 4 s, not the full 60, plus 1.
        c.tick(true, clock.at(100.0));
        assert_eq!(c.time_to_live(1, clock.at(100.0)), Ok((5, 60)));
        assert!(c.tick(true, clock.at(104.9)).revoke.is_empty());
        assert_eq!(c.tick(true, clock.at(105.0)).revoke, vec![1]);
    }

    #[test]
    fn a_new_leader_starts_unchecked_leases_from_their_full_ttl() {
        let clock = Fake::new();
        let mut c = LeaseClocks::new(EXTEND, INTERVAL, &table(&[(1, 30, 0)]), clock.at(0.0));
        c.tick(true, clock.at(50.0));
        assert_eq!(c.time_to_live(1, clock.at(50.0)), Ok((31, 30)));
    }

    #[test]
    fn a_follower_decides_nothing() {
        let clock = Fake::new();
        let mut c = LeaseClocks::new(EXTEND, INTERVAL, &table(&[(1, 1, 0)]), clock.at(0.0));
        c.applied(vec![LeaseChange::Granted { id: 2, ttl: 1 }], clock.at(0.0));
        for t in [0.0, 10.0, 400.0, 1000.0] {
            assert_eq!(c.tick(false, clock.at(t)), Decisions::default());
        }
        assert_eq!(c.renew(1, clock.at(1.0)), Err(ApiError::NotLeader));
        assert!(!c.leading());
    }

    #[test]
    fn losing_leadership_stops_the_clocks_and_forgets_revocations() {
        let clock = Fake::new();
        let mut c = leader(&clock, &[(1, 2, 0)]);
        assert_eq!(c.tick(true, clock.at(3.0)).revoke, vec![1]);
        assert_eq!(c.tick(false, clock.at(4.0)), Decisions::default());
        // Leading again at 10: a fresh clock (2 + 1 s), no pending revocation.
        assert!(c.tick(true, clock.at(10.0)).revoke.is_empty());
        assert_eq!(c.tick(true, clock.at(13.0)).revoke, vec![1]);
    }

    #[test]
    fn an_unapplied_revocation_is_proposed_again_after_revoke_retry() {
        let clock = Fake::new();
        let mut c = leader(&clock, &[(1, 1, 0)]);
        assert_eq!(c.tick(true, clock.at(2.0)).revoke, vec![1]);
        let retry = REVOKE_RETRY.as_secs_f64();
        assert!(c.tick(true, clock.at(2.1)).revoke.is_empty());
        assert!(c.tick(true, clock.at(2.0 + retry - 0.1)).revoke.is_empty());
        assert_eq!(c.tick(true, clock.at(2.0 + retry)).revoke, vec![1]);
        // Applied: the lease is gone, nothing more to revoke.
        c.applied(vec![LeaseChange::Revoked { id: 1 }], clock.at(6.0));
        assert!(c.tick(true, clock.at(20.0)).revoke.is_empty());
    }

    #[test]
    fn revocations_are_rate_limited_per_tick() {
        let clock = Fake::new();
        let per_tick = REVOKES_PER_SECOND * TICK.as_millis() as usize / 1000;
        let n = per_tick * 2 + 7;
        let leases: Vec<(i64, i64, i64)> = (1..=n as i64).map(|id| (id, 1, 0)).collect();
        let mut c = leader(&clock, &leases);
        let mut all = Vec::new();
        for i in 0..3 {
            let d = c.tick(true, clock.at(5.0 + 0.1 * f64::from(i)));
            assert!(d.revoke.len() <= per_tick, "tick {i}: {}", d.revoke.len());
            all.extend(d.revoke);
        }
        assert_eq!(sorted(all), (1..=n as i64).collect::<Vec<_>>());
    }

    #[test]
    fn checkpoints_only_leases_past_half_their_ttl_every_interval() {
        let clock = Fake::new();
        // Promoted at 0: lease 1 ends at 101, lease 2 at 1001.
        let mut c = leader(&clock, &[(1, 100, 0), (2, 1000, 0)]);
        // At 80 lease 1 has 21 s left (< 50): due, but not yet the interval.
        assert!(c.tick(true, clock.at(80.0)).checkpoints.is_empty());
        // At 300 (the interval): lease 1 expired (nothing left to record),
        // lease 2 has 701 s left, more than half: not checkpointed.
        let d = c.tick(true, clock.at(300.0));
        assert!(checkpointed(&d).is_empty());
        // At 600 lease 2 has 401 s left (< 500): checkpointed.
        let d = c.tick(true, clock.at(600.0));
        assert_eq!(checkpointed(&d), vec![(2, 401)]);
    }

    #[test]
    fn a_kept_alive_lease_is_not_checkpointed() {
        let clock = Fake::new();
        let mut c = leader(&clock, &[(1, 400, 0), (2, 400, 0)]);
        // Lease 1 is kept alive at 250: it has 400 s left at 300.
        assert_eq!(
            c.renew(1, clock.at(250.0)),
            Ok(Renewal {
                ttl: 400,
                reset_checkpoint: false
            })
        );
        let d = c.tick(true, clock.at(300.0));
        assert_eq!(checkpointed(&d), vec![(2, 101)]);
    }

    #[test]
    fn an_unchanged_remaining_ttl_is_not_checkpointed_again() {
        let clock = Fake::new();
        let mut c = leader(&clock, &[(1, 1000, 0)]);
        let d = c.tick(true, clock.at(600.0));
        assert_eq!(checkpointed(&d), vec![(1, 401)]);
        c.applied(
            vec![LeaseChange::Checkpointed {
                id: 1,
                remaining: 101,
            }],
            clock.at(600.0),
        );
        // At 900, 101 s left: what the applied checkpoint already says.
        assert!(checkpointed(&c.tick(true, clock.at(900.0))).is_empty());
    }

    #[test]
    fn checkpoints_are_proposed_in_batches() {
        let clock = Fake::new();
        let n = CHECKPOINT_BATCH + 3;
        let leases: Vec<(i64, i64, i64)> = (1..=n as i64).map(|id| (id, 1000, 0)).collect();
        let mut c = leader(&clock, &leases);
        let d = c.tick(true, clock.at(600.0));
        let sizes: Vec<usize> = d.checkpoints.iter().map(|r| r.checkpoints.len()).collect();
        assert_eq!(sizes, vec![CHECKPOINT_BATCH, 3]);
    }

    #[test]
    fn a_keep_alive_restarts_the_clock_from_the_full_ttl() {
        let clock = Fake::new();
        let mut c = leader(&clock, &[(1, 10, 0)]);
        assert_eq!(c.renew(1, clock.at(9.0)).map(|r| r.ttl), Ok(10));
        assert_eq!(c.time_to_live(1, clock.at(9.0)), Ok((10, 10)));
        assert!(c.tick(true, clock.at(18.9)).revoke.is_empty());
        assert_eq!(c.tick(true, clock.at(19.0)).revoke, vec![1]);
    }

    #[test]
    fn a_keep_alive_of_a_checkpointed_lease_resets_the_checkpoint() {
        let clock = Fake::new();
        let mut c = leader(&clock, &[(1, 100, 30)]);
        assert_eq!(
            c.renew(1, clock.at(1.0)),
            Ok(Renewal {
                ttl: 100,
                reset_checkpoint: true
            })
        );
        c.applied(
            vec![LeaseChange::Checkpointed {
                id: 1,
                remaining: 0,
            }],
            clock.at(1.0),
        );
        assert_eq!(
            c.renew(1, clock.at(2.0)).map(|r| r.reset_checkpoint),
            Ok(false)
        );
    }

    #[test]
    fn an_expired_or_unknown_lease_cannot_be_renewed() {
        let clock = Fake::new();
        let mut c = leader(&clock, &[(1, 2, 0)]);
        assert_eq!(c.renew(1, clock.at(3.0)), Err(ApiError::LeaseNotFound));
        assert_eq!(c.renew(9, clock.at(0.0)), Err(ApiError::LeaseNotFound));
        assert_eq!(
            c.time_to_live(9, clock.at(0.0)),
            Err(ApiError::LeaseNotFound)
        );
    }

    #[test]
    fn a_lease_granted_on_the_leader_runs_from_its_grant() {
        let clock = Fake::new();
        let mut c = leader(&clock, &[]);
        c.applied(vec![LeaseChange::Granted { id: 7, ttl: 5 }], clock.at(10.0));
        assert!(c.tick(true, clock.at(14.9)).revoke.is_empty());
        assert_eq!(c.tick(true, clock.at(15.0)).revoke, vec![7]);
    }

    #[test]
    fn a_replaced_table_restarts_the_clocks_of_a_leader() {
        let clock = Fake::new();
        let mut c = leader(&clock, &[(1, 5, 0)]);
        c.load(&table(&[(2, 5, 3)]), clock.at(10.0));
        // Lease 1 is gone; lease 2 starts from its checkpoint + extend.
        assert_eq!(
            c.time_to_live(1, clock.at(10.0)),
            Err(ApiError::LeaseNotFound)
        );
        assert_eq!(c.time_to_live(2, clock.at(10.0)), Ok((4, 5)));
        assert_eq!(c.tick(true, clock.at(14.0)).revoke, vec![2]);
    }
}
