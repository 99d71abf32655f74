//! Leadership decisions of the RaftActor, with no actor and no I/O:
//! MoveLeader transfers ([`Transfers`]), whom a leader leaving the
//! configuration hands over to ([`handover_target`]), and when a removed
//! member stops ([`Removal`]). Time comes in as an argument (ticks for
//! transfers, an `Instant` for stops), so tests drive them on a fake clock.
//!
//! Invariants:
//! - a transfer is answered exactly once: Ok when its target becomes
//!   leader, "leader transfer timed out" after [`TRANSFER_TICKS`];
//! - a member stops once: [`STOP_AFTER_REMOVAL`] after applying its own
//!   removal (so whoever asked is answered first), or [`REMOVED_GRACE`]
//!   after peers call it removed (so the commit of that removal can still
//!   arrive), whichever comes first; after its removal it steps nothing.

use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChangeType, ConfChangeV2};

use crate::error::ApiError;

/// Ticks a MoveLeader waits for the transfer (etcd: its request timeout).
pub const TRANSFER_TICKS: u64 = 50;
/// How long a member its peers call removed keeps going, for the commit of
/// its removal to arrive and be answered.
pub const REMOVED_GRACE: Duration = Duration::from_secs(3);
/// How long a member that applied its own removal keeps going (as etcd),
/// so the removal is acknowledged to whoever asked.
pub const STOP_AFTER_REMOVAL: Duration = Duration::from_secs(1);

/// What to do with a MoveLeader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferCheck {
    /// Refuse it with this error.
    Refuse(ApiError),
    /// The target leads already: answer Ok.
    Done,
    /// Start the transfer and wait.
    Start,
}

/// Checks a MoveLeader to `to` on member `me` with these `voters`.
pub fn check_transfer(is_leader: bool, me: u64, voters: &[u64], to: u64) -> TransferCheck {
    if !is_leader {
        return TransferCheck::Refuse(ApiError::NotLeader);
    }
    if !voters.contains(&to) {
        return TransferCheck::Refuse(ApiError::BadLeaderTransferee);
    }
    if to == me {
        return TransferCheck::Done;
    }
    TransferCheck::Start
}

/// MoveLeaders waiting for their target to lead, each with its reply `R`.
#[derive(Debug)]
pub struct Transfers<R> {
    /// (target, deadline tick, reply)
    pending: Vec<(u64, u64, R)>,
}

impl<R> Default for Transfers<R> {
    fn default() -> Self {
        Transfers {
            pending: Vec::new(),
        }
    }
}

impl<R> Transfers<R> {
    /// A transfer to `to` started at tick `now`.
    pub fn start(&mut self, to: u64, now: u64, reply: R) {
        self.pending.push((to, now + TRANSFER_TICKS, reply));
    }

    /// `leader` leads now: the replies of the transfers to it (answer Ok).
    pub fn leader_changed(&mut self, leader: u64) -> Vec<R> {
        self.take(|to, _| to == leader)
    }

    /// Tick `now`: the replies of the transfers that gave up (answer
    /// "leader transfer timed out").
    pub fn expired(&mut self, now: u64) -> Vec<R> {
        self.take(|_, deadline| now >= deadline)
    }

    fn take(&mut self, done: impl Fn(u64, u64) -> bool) -> Vec<R> {
        let mut out = Vec::new();
        for (to, deadline, reply) in std::mem::take(&mut self.pending) {
            if done(to, deadline) {
                out.push(reply);
            } else {
                self.pending.push((to, deadline, reply));
            }
        }
        out
    }
}

/// The change removes member `id`.
pub fn removes(cc: &ConfChangeV2, id: u64) -> bool {
    cc.changes
        .iter()
        .any(|c| c.get_change_type() == ConfChangeType::RemoveNode && c.node_id == id)
}

/// The most caught-up other voter (by `matched`, the leader's view; ties go
/// to the higher id): whom a leader leaving the configuration hands over to.
pub fn handover_target(
    me: u64,
    voters: &[u64],
    matched: impl Fn(u64) -> Option<u64>,
) -> Option<u64> {
    voters
        .iter()
        .filter(|&&v| v != me)
        .filter_map(|&v| matched(v).map(|m| (m, v)))
        .max()
        .map(|(_, v)| v)
}

/// Whether and when this member stops for being removed.
#[derive(Debug, Default)]
pub struct Removal {
    /// This member applied its own removal.
    removed: bool,
    /// Peers refused this member's messages as those of a removed member.
    told: bool,
    /// The earliest stop scheduled.
    stop_at: Option<Instant>,
}

impl Removal {
    /// This member applied its own removal: it steps nothing more.
    pub fn removed(&self) -> bool {
        self.removed
    }

    /// The earliest stop scheduled so far.
    pub fn stop_at(&self) -> Option<Instant> {
        self.stop_at
    }

    /// This member applied its own removal at `now`: when to stop (None:
    /// already stopping for it).
    pub fn applied(&mut self, now: Instant) -> Option<Instant> {
        if self.removed {
            return None;
        }
        self.removed = true;
        Some(self.schedule(now + STOP_AFTER_REMOVAL))
    }

    /// A peer called this member removed at `now`: when to stop, whatever
    /// happens meanwhile (None: already stopping).
    pub fn told(&mut self, now: Instant) -> Option<Instant> {
        if self.removed || self.told {
            return None;
        }
        self.told = true;
        Some(self.schedule(now + REMOVED_GRACE))
    }

    fn schedule(&mut self, at: Instant) -> Instant {
        self.stop_at = Some(self.stop_at.map_or(at, |s| s.min(at)));
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::ConfChangeSingle;

    #[test]
    fn a_transfer_is_answered_when_its_target_leads() {
        let mut t = Transfers::default();
        t.start(2, 10, "to 2");
        t.start(3, 10, "to 3");
        assert!(t.leader_changed(0).is_empty());
        assert_eq!(t.leader_changed(3), vec!["to 3"]);
        assert_eq!(t.leader_changed(2), vec!["to 2"]);
        assert!(t.expired(1000).is_empty(), "each answered once");
    }

    #[test]
    fn a_transfer_times_out_after_transfer_ticks() {
        let mut t = Transfers::default();
        t.start(2, 10, "a");
        t.start(2, 20, "b");
        assert!(t.expired(10 + TRANSFER_TICKS - 1).is_empty());
        assert_eq!(t.expired(10 + TRANSFER_TICKS), vec!["a"]);
        assert_eq!(t.expired(20 + TRANSFER_TICKS), vec!["b"]);
        assert!(t.leader_changed(2).is_empty());
    }

    #[test]
    fn move_leader_is_checked_like_etcd() {
        let voters = [1, 2, 3];
        assert_eq!(
            check_transfer(false, 1, &voters, 2),
            TransferCheck::Refuse(ApiError::NotLeader)
        );
        assert_eq!(
            check_transfer(true, 1, &voters, 9),
            TransferCheck::Refuse(ApiError::BadLeaderTransferee)
        );
        assert_eq!(check_transfer(true, 1, &voters, 1), TransferCheck::Done);
        assert_eq!(check_transfer(true, 1, &voters, 2), TransferCheck::Start);
    }

    #[test]
    fn the_handover_target_is_the_most_caught_up_other_voter() {
        let matched = |v: u64| match v {
            1 => Some(100),
            2 => Some(40),
            3 => Some(90),
            _ => None,
        };
        assert_eq!(handover_target(1, &[1, 2, 3, 4], matched), Some(3));
        // Ties go to the higher id; voters without progress never.
        assert_eq!(
            handover_target(1, &[1, 2, 4], |v| (v == 2 || v == 3).then_some(7)),
            Some(2)
        );
        assert_eq!(
            handover_target(1, &[1, 2, 3], |v| (v != 1).then_some(7)),
            Some(3)
        );
        assert_eq!(handover_target(1, &[1], matched), None);
        assert_eq!(handover_target(1, &[1, 4], matched), None);
    }

    #[test]
    fn removes_sees_only_the_removal_of_that_member() {
        let mut cc = ConfChangeV2::default();
        let mut add = ConfChangeSingle::default();
        add.set_change_type(ConfChangeType::AddNode);
        add.node_id = 1;
        let mut rm = ConfChangeSingle::default();
        rm.set_change_type(ConfChangeType::RemoveNode);
        rm.node_id = 2;
        cc.set_changes(vec![add, rm].into());
        assert!(!removes(&cc, 1));
        assert!(removes(&cc, 2));
        assert!(!removes(&cc, 3));
    }

    #[test]
    fn a_removed_member_stops_once_shortly_after_applying_its_removal() {
        let t0 = Instant::now();
        let mut r = Removal::default();
        assert!(!r.removed());
        assert_eq!(r.applied(t0), Some(t0 + STOP_AFTER_REMOVAL));
        assert!(r.removed());
        assert_eq!(r.applied(t0 + Duration::from_millis(10)), None);
        assert_eq!(
            r.told(t0 + Duration::from_millis(20)),
            None,
            "stopping already"
        );
        assert_eq!(r.stop_at(), Some(t0 + STOP_AFTER_REMOVAL));
    }

    #[test]
    fn a_member_called_removed_stops_after_the_grace_unless_its_removal_comes_first() {
        let t0 = Instant::now();
        let mut r = Removal::default();
        assert_eq!(r.told(t0), Some(t0 + REMOVED_GRACE));
        assert!(!r.removed(), "it keeps stepping messages meanwhile");
        assert_eq!(r.told(t0 + Duration::from_secs(1)), None, "one grace");
        assert_eq!(r.stop_at(), Some(t0 + REMOVED_GRACE));
        // The removal arrives after half a second: it stops 1 s later.
        let applied = t0 + Duration::from_millis(500);
        assert_eq!(r.applied(applied), Some(applied + STOP_AFTER_REMOVAL));
        assert_eq!(r.stop_at(), Some(applied + STOP_AFTER_REMOVAL));
    }

    #[test]
    fn a_late_removal_does_not_postpone_the_grace_stop() {
        let t0 = Instant::now();
        let mut r = Removal::default();
        r.told(t0);
        let late = t0 + Duration::from_millis(2500);
        r.applied(late);
        assert_eq!(r.stop_at(), Some(t0 + REMOVED_GRACE));
    }
}
