//! [`ProposalQueue`]: which proposals wait, which go to Raft, which fail.
//! No actor and no I/O: the RaftActor feeds it what arrives and what Raft
//! answered, and carries out the outcome.
//!
//! Rules (raft-rs drops a proposal made with no leader or during a leader
//! transfer, so such proposals wait here instead):
//! - while there is no leader or a transfer is on, a proposal waits, at
//!   most `max` of them; beyond that it fails with "too many requests";
//! - a proposal whose client left (its reply channel closed) is never
//!   proposed: dropped on arrival, and swept out of the queue every tick;
//! - once a leader is known and no transfer is on, the waiting proposals
//!   go, oldest first;
//! - a proposal Raft refused for want of a leader waits again; any other
//!   refusal fails it;
//! - a conf change held back for a leader hand-over waits whatever the
//!   bound (it is one, and its client waits for the hand-over).

use std::collections::VecDeque;

use crate::error::ApiError;

/// Proposals held while there is no leader, at most.
pub const MAX_WAITING: usize = 16384;

/// A proposal as the queue sees it.
pub trait Waiter {
    /// Its client is gone: proposing it would be wasted.
    fn closed(&self) -> bool;
}

/// What Raft's leadership allows right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The leader this member knows of (0: none).
    pub leader: u64,
    /// A leadership transfer is in progress.
    pub transferring: bool,
}

impl Leadership {
    /// Raft takes proposals now (it drops them with no leader or during a
    /// transfer).
    pub fn takes_proposals(&self) -> bool {
        self.leader != 0 && !self.transferring
    }
}

/// What to do with an arriving proposal.
#[derive(Debug, PartialEq)]
pub enum Admission<T> {
    /// Propose it to Raft now.
    Propose(T),
    /// It waits in the queue.
    Queued,
    /// Its client left: nothing to do.
    Dropped,
    /// Fail it with this error.
    Fail(T, ApiError),
}

/// Proposals waiting for Raft to take them.
#[derive(Debug)]
pub struct ProposalQueue<T> {
    waiting: VecDeque<T>,
    max: usize,
}

impl<T: Waiter> ProposalQueue<T> {
    /// An empty queue holding at most `max` proposals.
    pub fn new(max: usize) -> ProposalQueue<T> {
        ProposalQueue {
            waiting: VecDeque::new(),
            max,
        }
    }

    /// Proposals waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// A proposal arrives.
    pub fn admit(&mut self, w: T, now: Leadership) -> Admission<T> {
        if w.closed() {
            return Admission::Dropped;
        }
        if now.takes_proposals() {
            return Admission::Propose(w);
        }
        if self.waiting.len() >= self.max {
            return Admission::Fail(w, ApiError::TooManyRequests);
        }
        self.waiting.push_back(w);
        Admission::Queued
    }

    /// Raft refused `w` with `e`: it waits again if only the leader was
    /// missing; otherwise it is handed back to be failed with `e`.
    pub fn refused(&mut self, w: T, e: ApiError) -> Option<(T, ApiError)> {
        if e == ApiError::NoLeader {
            self.waiting.push_back(w);
            None
        } else {
            Some((w, e))
        }
    }

    /// Holds `w` back until Raft takes proposals again (a conf change that
    /// waits for the hand-over it started); not bounded.
    pub fn hold(&mut self, w: T) {
        self.waiting.push_back(w);
    }

    /// Everything waiting, oldest first, if Raft takes proposals now
    /// (otherwise nothing, and they keep waiting).
    pub fn release(&mut self, now: Leadership) -> Vec<T> {
        if !now.takes_proposals() {
            return Vec::new();
        }
        std::mem::take(&mut self.waiting).into()
    }

    /// Forgets the proposals whose clients left.
    pub fn sweep(&mut self) {
        self.waiting.retain(|w| !w.closed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A proposal with a client that can leave.
    #[derive(Debug, Clone, PartialEq)]
    struct P(u32, Rc<Cell<bool>>);

    impl Waiter for P {
        fn closed(&self) -> bool {
            self.1.get()
        }
    }

    fn p(n: u32) -> P {
        P(n, Rc::new(Cell::new(false)))
    }

    const NO_LEADER: Leadership = Leadership {
        leader: 0,
        transferring: false,
    };
    const LEADER: Leadership = Leadership {
        leader: 1,
        transferring: false,
    };
    const TRANSFER: Leadership = Leadership {
        leader: 1,
        transferring: true,
    };

    fn ids(v: Vec<P>) -> Vec<u32> {
        v.into_iter().map(|p| p.0).collect()
    }

    #[test]
    fn with_a_leader_a_proposal_goes_at_once() {
        let mut q = ProposalQueue::new(4);
        assert_eq!(q.admit(p(1), LEADER), Admission::Propose(p(1)));
        assert!(q.is_empty());
    }

    #[test]
    fn without_a_leader_proposals_wait_and_go_in_order_once_one_is_known() {
        let mut q = ProposalQueue::new(4);
        for n in 1..=3 {
            assert_eq!(q.admit(p(n), NO_LEADER), Admission::Queued);
        }
        assert!(q.release(NO_LEADER).is_empty());
        assert_eq!(q.len(), 3);
        assert_eq!(ids(q.release(LEADER)), vec![1, 2, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn during_a_leader_transfer_proposals_wait() {
        let mut q = ProposalQueue::new(4);
        assert_eq!(q.admit(p(1), TRANSFER), Admission::Queued);
        assert!(q.release(TRANSFER).is_empty());
        assert_eq!(ids(q.release(LEADER)), vec![1]);
    }

    #[test]
    fn a_full_queue_fails_proposals_with_too_many_requests() {
        let mut q = ProposalQueue::new(2);
        q.admit(p(1), NO_LEADER);
        q.admit(p(2), NO_LEADER);
        match q.admit(p(3), NO_LEADER) {
            Admission::Fail(w, e) => {
                assert_eq!(w.0, 3);
                assert_eq!(e, ApiError::TooManyRequests);
            }
            other => panic!("want a failure, got {other:?}"),
        }
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_held_conf_change_waits_beyond_the_bound() {
        let mut q = ProposalQueue::new(1);
        q.admit(p(1), NO_LEADER);
        q.hold(p(2));
        assert_eq!(q.len(), 2);
        assert!(q.release(TRANSFER).is_empty());
        assert_eq!(ids(q.release(LEADER)), vec![1, 2]);
    }

    #[test]
    fn a_proposal_whose_client_left_is_never_proposed() {
        let mut q = ProposalQueue::new(4);
        let gone = p(1);
        gone.1.set(true);
        assert_eq!(q.admit(gone, LEADER), Admission::Dropped);
        assert!(q.is_empty());
        let leaves = p(2);
        q.admit(leaves.clone(), NO_LEADER);
        q.admit(p(3), NO_LEADER);
        leaves.1.set(true);
        q.sweep();
        assert_eq!(ids(q.release(LEADER)), vec![3]);
    }

    #[test]
    fn refused_for_want_of_a_leader_waits_again_other_refusals_fail() {
        let mut q = ProposalQueue::new(4);
        assert_eq!(q.refused(p(1), ApiError::NoLeader), None);
        assert_eq!(q.len(), 1);
        let failed = q.refused(p(2), ApiError::TooManyRequests);
        assert_eq!(
            failed.map(|(w, e)| (w.0, e)),
            Some((2, ApiError::TooManyRequests))
        );
        assert_eq!(ids(q.release(LEADER)), vec![1]);
    }
}
