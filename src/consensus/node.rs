//! [`Node`]: one Raft member's decision logic, driven by the RaftActor.

use std::collections::{HashMap, VecDeque};

use raft::eraftpb::{
    ConfChangeV2, ConfState, Entry, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
};
use raft::{Config, RawNode, SnapshotStatus, StateRole, Storage as _};

use crate::error::ApiError;
use crate::storage::raft_log::{Fetched, LogFetch, RaftLog};

/// Reads wait this many ticks for their ReadState before `read_index` is retried.
const READ_RETRY_TICKS: u64 = 5;
/// ... and this many before they fail with "request timed out".
const READ_TIMEOUT_TICKS: u64 = 50;

/// What the WalWriter must make durable for ready `number`, in this order:
/// the log restarting at a snapshot, new entries, the hard state.
#[derive(Debug, Default)]
pub struct Persist {
    /// Ready number, echoed back in `on_persisted`.
    pub number: u64,
    /// An installed snapshot: the log starts over after it.
    pub snapshot: Option<SnapshotMetadata>,
    /// New log entries.
    pub entries: Vec<Entry>,
    /// Changed hard state, if any.
    pub hard_state: Option<HardState>,
    /// Whether an fsync is required (entries or a term/vote change).
    pub must_sync: bool,
}

/// The output of one turn.
#[derive(Debug)]
pub struct Turn<R> {
    /// A snapshot from the leader: install it into the state machine BEFORE
    /// handing `persist` (which records it in the log) to the WalWriter.
    pub install: Option<Snapshot>,
    /// Hand this to the WalWriter (at most one per turn).
    pub persist: Option<Persist>,
    /// Send these to peers now.
    pub messages: Vec<Message>,
    /// Committed (and locally durable) entries, in order, for the applier.
    pub committed: Vec<Entry>,
    /// Reads that may be served once the applied index reaches the index.
    pub reads: Vec<(u64, Vec<R>)>,
    /// Set when the leader changed in this turn: the new leader id (0 = none).
    pub leader_changed: Option<u64>,
    /// Set when this member's role changed in this turn.
    pub role_changed: Option<StateRole>,
    /// This member started an election (pre-vote or vote) in this turn.
    pub campaigned: bool,
}

impl<R> Default for Turn<R> {
    fn default() -> Self {
        Turn {
            install: None,
            persist: None,
            messages: Vec::new(),
            committed: Vec::new(),
            reads: Vec::new(),
            leader_changed: None,
            role_changed: None,
            campaigned: false,
        }
    }
}

impl<R> Turn<R> {
    /// True when the turn produced nothing to do.
    pub fn is_empty(&self) -> bool {
        self.install.is_none()
            && self.persist.is_none()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.leader_changed.is_none()
            && self.role_changed.is_none()
            && !self.campaigned
    }
}

/// A ready handed out and not yet known durable.
#[derive(Debug)]
struct PendingReady {
    number: u64,
    /// False for readies with nothing to write: durable as soon as all before are.
    needs_wal: bool,
    /// It carries a snapshot at this index: nothing after it is handed out
    /// until it is durable (and the state machine holds it by then).
    snapshot: Option<u64>,
    /// Messages that may leave only once this ready is durable.
    messages: Vec<Message>,
}

struct ReadBatch<R> {
    reads: Vec<R>,
    issued_at: u64,
    first_issued_at: u64,
}

/// One Raft member's decision logic.
pub struct Node<R> {
    raw: RawNode<RaftLog>,
    pending: VecDeque<PendingReady>,
    /// Readies with entries handed to the WAL and not yet persisted.
    entries_in_flight: usize,
    /// Hand out new entries while earlier ones are still being written
    /// (several appends in flight), instead of one append at a time.
    pipeline: bool,
    queued_reads: Vec<R>,
    reads_in_flight: HashMap<u64, ReadBatch<R>>,
    next_read_ctx: u64,
    ticks: u64,
    leader: u64,
    /// A commit-only hard state waiting for the next append with entries.
    deferred_hard_state: Option<HardState>,
    /// Role as of the last Ready's soft state.
    role: StateRole,
    /// `campaign()` was called since the last turn.
    campaign_started: bool,
}

impl<R> Node<R> {
    /// Creates the node over a recovered log. `cfg.applied` must be the state
    /// machine's applied index.
    pub fn new(cfg: &Config, log: RaftLog, logger: &slog::Logger) -> raft::Result<Node<R>> {
        let raw = RawNode::new(cfg, log, logger)?;
        Ok(Node {
            raw,
            pending: VecDeque::new(),
            entries_in_flight: 0,
            pipeline: true,
            queued_reads: Vec::new(),
            reads_in_flight: HashMap::new(),
            next_read_ctx: 1,
            ticks: 0,
            leader: 0,
            deferred_hard_state: None,
            role: StateRole::Follower,
            campaign_started: false,
        })
    }

    /// Whether new entries may be handed out while earlier ones are being
    /// written (default: yes).
    pub fn set_pipeline(&mut self, on: bool) {
        self.pipeline = on;
    }

    /// This member's ID.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Known leader (0 = none).
    pub fn leader(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// Whether this member leads.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Current role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Index the applier reported applied (raft-rs's view).
    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// Commit index.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Committed entries `[low, high)` read back from the log, at most
    /// about `max_bytes` (at least one): what the applier is handed once it
    /// has room (see [`super::apply_flow`]).
    pub fn log_entries(&self, low: u64, high: u64, max_bytes: u64) -> raft::Result<Vec<Entry>> {
        self.raw
            .store()
            .entries(low, high, max_bytes, raft::GetEntriesContext::empty(false))
    }

    /// Log entries held in memory.
    pub fn log_in_memory(&self) -> usize {
        self.raw.store().in_memory()
    }

    /// Index of the last log entry.
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// The Raft configuration this member runs with.
    pub fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// Whether this member is a learner.
    pub fn is_learner(&self) -> bool {
        self.conf_state().learners.contains(&self.id())
    }

    /// A leader's view of how far `id`'s log matches its own (None when not
    /// leading or `id` is unknown).
    pub fn matched(&self, id: u64) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        self.raw.raft.prs().get(id).map(|p| p.matched)
    }

    /// On a leader: append messages sent to followers and not yet answered
    /// (raft's in-flight windows, summed).
    pub fn inflight_appends(&self) -> usize {
        if !self.is_leader() {
            return 0;
        }
        let me = self.id();
        self.raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, p)| p.ins.count())
            .sum()
    }

    /// A leadership transfer is under way.
    pub fn transferring(&self) -> bool {
        self.raw.raft.lead_transferee.is_some()
    }

    /// Starts an election at once (a lone member need not wait a timeout).
    pub fn campaign(&mut self) -> raft::Result<()> {
        if self.installing_snapshot() {
            return Ok(());
        }
        self.campaign_started = self.role == StateRole::Follower;
        self.raw.campaign()
    }

    /// Whether a snapshot from the leader replaced the log and the state
    /// machine has not applied it yet (it is being installed: seconds at a
    /// million keys). raft-rs's election reads the entries between the
    /// applied and the committed index to look for a configuration change,
    /// and panics when the snapshot replaced them ("unexpected error
    /// getting unapplied entries ... Compacted"): a member whose election
    /// timer ran out during an install (its leader gone) would crash.
    /// Until the install is done the member cannot lead anyway, so it
    /// neither campaigns nor counts down to a campaign.
    fn installing_snapshot(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        log.applied + 1 < log.first_index()
    }

    /// Proposes an encoded request. A follower forwards it to the leader.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ApiError> {
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Proposes a membership change (`context` travels with the entry).
    pub fn propose_conf_change(
        &mut self,
        context: Vec<u8>,
        cc: ConfChangeV2,
    ) -> Result<(), ApiError> {
        match self.raw.propose_conf_change(context, cc) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.refused(e)),
        }
    }

    fn refused(&self, e: raft::Error) -> ApiError {
        match e {
            raft::Error::ProposalDropped if self.leader() == 0 => ApiError::NoLeader,
            raft::Error::ProposalDropped if self.transferring() => ApiError::NoLeader,
            raft::Error::ProposalDropped => ApiError::TooManyRequests,
            e => ApiError::Internal(format!("propose: {e}")),
        }
    }

    /// Applies a committed membership change to Raft (once the applier
    /// applied its entry, as raft-rs requires).
    pub fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> raft::Result<ConfState> {
        self.raw.apply_conf_change(cc)
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// The transport could not deliver to `id`.
    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// How a snapshot sent to `id` ended.
    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, status);
    }

    /// Queues a linearizable read; it joins this turn's batch.
    pub fn read(&mut self, r: R) {
        self.queued_reads.push(r);
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, m: Message) -> raft::Result<()> {
        if m.get_msg_type() == MessageType::MsgTimeoutNow && self.installing_snapshot() {
            // A leadership transfer to a member still installing: it cannot
            // campaign yet (see `installing_snapshot`); the transfer times out.
            return Ok(());
        }
        self.raw.step(m)
    }

    /// Advances the logical clock; returns reads that waited too long.
    pub fn tick(&mut self) -> Vec<R> {
        // Only a follower installs a snapshot, and a follower's tick only
        // counts down to a campaign (see `installing_snapshot`).
        if !self.installing_snapshot() {
            self.raw.tick();
        }
        self.ticks += 1;
        let now = self.ticks;
        let mut expired = Vec::new();
        let mut retry = Vec::new();
        let ctxs: Vec<u64> = self.reads_in_flight.keys().copied().collect();
        for ctx in ctxs {
            let b = &self.reads_in_flight[&ctx];
            if now - b.first_issued_at >= READ_TIMEOUT_TICKS {
                if let Some(b) = self.reads_in_flight.remove(&ctx) {
                    expired.extend(b.reads);
                }
            } else if now - b.issued_at >= READ_RETRY_TICKS {
                // raft-rs drops read_index silently without a leader or before the
                // leader committed in its term: ask again under a fresh context.
                retry.push(ctx);
            }
        }
        self.reissue_reads(retry);
        expired
    }

    fn reissue_reads(&mut self, ctxs: Vec<u64>) {
        for ctx in ctxs {
            if let Some(mut b) = self.reads_in_flight.remove(&ctx) {
                b.issued_at = self.ticks;
                let new_ctx = self.issue_read_index();
                self.reads_in_flight.insert(new_ctx, b);
            }
        }
    }

    fn issue_read_index(&mut self) -> u64 {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        // The leader keeps pending reads by context and silently drops a
        // second request with the same one: contexts are unique in the
        // cluster (this member's id, then a counter).
        let mut bytes = self.id().to_le_bytes().to_vec();
        bytes.extend_from_slice(&ctx.to_le_bytes());
        self.raw.read_index(bytes);
        ctx
    }

    /// The WAL made ready `number` (and all before it) durable. Returns the
    /// messages that may now be sent.
    pub fn on_persisted(&mut self, number: u64) -> Vec<Message> {
        let mut out = Vec::new();
        let mut last = None;
        let mut installed = None;
        while let Some(front) = self.pending.front() {
            if front.needs_wal && front.number > number {
                break;
            }
            let p = self.pending.pop_front().expect("front exists");
            if p.needs_wal {
                self.entries_in_flight = self.entries_in_flight.saturating_sub(1);
            }
            last = Some(p.number);
            installed = p.snapshot.or(installed);
            out.extend(p.messages);
        }
        if let Some(n) = last {
            self.raw.on_persist_ready(n);
        }
        if let Some(index) = installed {
            // The state machine installed the snapshot before its ready was
            // written: it is applied up to there.
            self.on_applied(index);
        }
        out
    }

    /// The applier has applied everything up to `index`.
    pub fn on_applied(&mut self, index: u64) {
        let log = &self.raw.raft.raft_log;
        // raft-rs insists applied <= min(committed, persisted); the applier
        // never runs ahead of what Raft handed out, but a panic here would
        // take the member down, so hold to it explicitly.
        let index = index.min(log.committed).min(log.persisted);
        if index > log.applied {
            self.raw.advance_apply_to(index);
            // Applied and durable: may leave memory (with a log reader).
            self.raw.mut_store().trim(index);
        }
    }

    /// Reads of old entries raft is waiting for (to send a follower far
    /// behind): run each on a worker and hand its result to
    /// [`Node::on_fetched`].
    pub fn take_fetches(&mut self) -> Vec<LogFetch> {
        self.raw.mut_store().take_fetches()
    }

    /// A read of old entries finished: raft sends what waited on it (the
    /// messages come out of the next turn).
    pub fn on_fetched(&mut self, done: Fetched) {
        let waiting = self.raw.mut_store().fetched(done);
        for context in waiting {
            self.raw.on_entries_fetched(context);
        }
        self.raw.mut_store().fetch_served();
    }

    /// Drops log entries up to `index` (a snapshot covers them).
    pub fn compact_log(&mut self, index: u64) {
        let applied = self.raw.raft.raft_log.applied;
        self.raw.mut_store().compact(index.min(applied));
    }

    /// True when a turn may have work.
    pub fn has_work(&self) -> bool {
        !self.queued_reads.is_empty() || self.raw.has_ready()
    }

    /// Whether the next Ready must wait: a snapshot is being installed, a
    /// snapshot must not overtake earlier writes, or (without pipelining)
    /// an append is in flight and new entries wait to leave as one batch.
    fn must_wait(&self) -> bool {
        if self.pending.iter().any(|p| p.snapshot.is_some()) {
            return true;
        }
        let log = &self.raw.raft.raft_log;
        if log.unstable.snapshot.is_some() && !self.pending.is_empty() {
            return true;
        }
        !self.pipeline && self.entries_in_flight > 0 && !log.unstable_entries().is_empty()
    }

    /// Runs one turn: batches queued reads into one `read_index`, then handles at
    /// most one `Ready`.
    pub fn turn(&mut self) -> Turn<R> {
        let mut turn = Turn {
            campaigned: std::mem::take(&mut self.campaign_started),
            ..Turn::default()
        };
        if !self.queued_reads.is_empty() {
            let reads = std::mem::take(&mut self.queued_reads);
            let ctx = self.issue_read_index();
            self.reads_in_flight.insert(
                ctx,
                ReadBatch {
                    reads,
                    issued_at: self.ticks,
                    first_issued_at: self.ticks,
                },
            );
        }
        if !self.raw.has_ready() || self.must_wait() {
            return turn;
        }
        let mut rd = self.raw.ready();

        if let Some(ss) = rd.ss() {
            // An election starts when a follower turns (pre-)candidate; the
            // step from pre-candidate to candidate is the same election.
            let campaigning = matches!(
                ss.raft_state,
                StateRole::PreCandidate | StateRole::Candidate
            );
            turn.campaigned |= campaigning && self.role == StateRole::Follower;
            if ss.raft_state != self.role {
                turn.role_changed = Some(ss.raft_state);
            }
            self.role = ss.raft_state;
            if ss.leader_id != self.leader {
                self.leader = ss.leader_id;
                turn.leader_changed = Some(ss.leader_id);
            }
        }
        for rs in rd.take_read_states() {
            let Some(ctx) = read_ctx(self.id(), &rs.request_ctx) else {
                continue;
            };
            if let Some(b) = self.reads_in_flight.remove(&ctx) {
                turn.reads.push((rs.index, b.reads));
            }
        }
        if matches!(turn.leader_changed, Some(l) if l != 0) {
            // raft-rs forgets read requests across a leader change: ask the
            // new leader at once rather than after the retry interval.
            let ctxs: Vec<u64> = self.reads_in_flight.keys().copied().collect();
            self.reissue_reads(ctxs);
        }
        // A leader may send its appends before its own fsync (Raft thesis 10.2.1).
        turn.messages = rd.take_messages();
        let snapshot = rd.snapshot().clone();
        let mut snapshot_meta = None;
        if !snapshot.is_empty() {
            let meta = snapshot.get_metadata().clone();
            self.raw.mut_store().apply_snapshot(meta.clone());
            snapshot_meta = Some(meta);
            turn.install = Some(snapshot);
        }
        let entries = rd.take_entries();
        if !entries.is_empty() {
            if let Err(e) = self.raw.mut_store().append(&entries) {
                // raft-rs hands out only contiguous entries after the snapshot.
                panic!("raft log append violated an invariant: {e}");
            }
        }
        let hard_state = rd.hs().cloned();
        if let Some(hs) = &hard_state {
            self.raw.mut_store().set_hard_state(hs.clone());
        }
        turn.committed = rd.take_committed_entries();
        let persisted_messages = rd.take_persisted_messages();
        let number = rd.number();
        let must_sync = rd.must_sync();
        self.raw.advance_append_async(rd);
        let snapshot_index = snapshot_meta.as_ref().map(|m| m.index);
        let has_snapshot = snapshot_index.is_some();
        // A hard state that only moved the commit index needs no fsync (raft
        // can recompute commit after a crash); rather than wake the WalWriter
        // for it, it rides along with the next append that has entries.
        let hard_state = match hard_state {
            // The log restarts at the snapshot: its hard state (commit at
            // least the snapshot's index) is written with the marker.
            _ if has_snapshot => {
                self.deferred_hard_state = None;
                Some(self.raw.store().hard_state().clone())
            }
            Some(hs) if entries.is_empty() && !must_sync => {
                self.deferred_hard_state = Some(hs);
                None
            }
            Some(hs) => {
                self.deferred_hard_state = None;
                Some(hs)
            }
            None if !entries.is_empty() => self.deferred_hard_state.take(),
            None => None,
        };
        let needs_wal = !entries.is_empty() || hard_state.is_some() || has_snapshot;

        if needs_wal {
            if !entries.is_empty() {
                self.entries_in_flight += 1;
            }
            self.pending.push_back(PendingReady {
                number,
                needs_wal: true,
                snapshot: snapshot_index,
                messages: persisted_messages,
            });
            turn.persist = Some(Persist {
                number,
                snapshot: snapshot_meta,
                entries,
                hard_state,
                must_sync: must_sync || has_snapshot,
            });
        } else if self.pending.is_empty() {
            self.raw.on_persist_ready(number);
            turn.messages.extend(persisted_messages);
        } else {
            self.pending.push_back(PendingReady {
                number,
                needs_wal: false,
                snapshot: None,
                messages: persisted_messages,
            });
        }
        turn
    }
}

/// The counter of a read context this member issued.
fn read_ctx(me: u64, bytes: &[u8]) -> Option<u64> {
    let (id, ctx) = bytes.split_at_checked(8)?;
    let id = u64::from_le_bytes(id.try_into().ok()?);
    (id == me).then_some(u64::from_le_bytes(ctx.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{ConfState, SnapshotMetadata};

    fn single(id: u64) -> Node<u32> {
        let cs = ConfState {
            voters: vec![id],
            ..Default::default()
        };
        let meta = SnapshotMetadata {
            index: 1,
            term: 1,
            conf_state: protobuf::SingularPtrField::some(cs),
            ..Default::default()
        };
        let log = RaftLog::from_snapshot(meta, HardState::default());
        let cfg = Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            applied: 1,
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        Node::new(&cfg, log, &logger).unwrap()
    }

    type Settled = (Vec<Entry>, Vec<(u64, Vec<u32>)>, usize);

    /// Runs turns until nothing is left, persisting every write at once.
    fn settle(n: &mut Node<u32>) -> Settled {
        let mut committed = Vec::new();
        let mut reads = Vec::new();
        let mut persists = 0;
        for _ in 0..100 {
            if !n.has_work() {
                break;
            }
            let t = n.turn();
            committed.extend(t.committed);
            reads.extend(t.reads);
            if let Some(p) = t.persist {
                persists += 1;
                n.on_persisted(p.number);
            }
        }
        (committed, reads, persists)
    }

    #[test]
    fn a_lone_member_elects_itself_and_commits_proposals() {
        let mut n = single(1);
        // One turn, with what it asked the WAL to persist made durable.
        let step = |n: &mut Node<u32>| {
            let t = n.turn();
            if let Some(p) = &t.persist {
                n.on_persisted(p.number);
            }
            t.campaigned
        };
        n.campaign().unwrap();
        assert!(step(&mut n), "the election is reported");
        settle(&mut n);
        n.campaign().unwrap();
        assert!(!step(&mut n), "a leader's campaign() starts no election");
        assert!(n.is_leader());
        n.propose(b"a".to_vec()).unwrap();
        let (committed, _, _) = settle(&mut n);
        assert!(committed.iter().any(|e| e.data.as_ref() == b"a"));
    }

    #[test]
    fn proposals_during_a_write_leave_as_one_batch() {
        let mut n = single(1);
        n.set_pipeline(false);
        n.campaign().unwrap();
        settle(&mut n);
        n.propose(b"1".to_vec()).unwrap();
        let t = n.turn();
        let first = t.persist.expect("the first proposal is written");
        assert_eq!(first.entries.len(), 1);
        // While that write is in flight, three more arrive.
        for d in [b"2", b"3", b"4"] {
            n.propose(d.to_vec()).unwrap();
        }
        let t = n.turn();
        assert!(
            t.persist.is_none(),
            "no second append while one is in flight"
        );
        // (with pipelining off; see set_pipeline)
        n.on_persisted(first.number);
        let t = n.turn();
        let second = t.persist.expect("the batch is written");
        assert_eq!(second.entries.len(), 3, "one append carries all three");
        assert!(second.must_sync);
    }

    #[test]
    fn a_commit_only_hard_state_rides_with_the_next_append() {
        let mut n = single(1);
        n.campaign().unwrap();
        settle(&mut n);
        n.propose(b"x".to_vec()).unwrap();
        let p = n.turn().persist.expect("entries are written");
        n.on_persisted(p.number);
        // The commit moves: the entry is handed to apply without a WAL write.
        let t = n.turn();
        assert_eq!(t.committed.len(), 1);
        assert!(t.persist.is_none(), "no WAL round trip for a commit index");
        // The next append carries the new commit index.
        n.propose(b"y".to_vec()).unwrap();
        let p = n.turn().persist.expect("entries are written");
        let hs = p.hard_state.expect("the deferred hard state rides along");
        assert!(hs.commit >= 3, "commit {}", hs.commit);
    }

    #[test]
    fn nothing_commits_before_the_wal_answers() {
        let mut n = single(1);
        n.campaign().unwrap();
        settle(&mut n);
        n.propose(b"x".to_vec()).unwrap();
        let t = n.turn();
        let p = t.persist.unwrap();
        assert!(n.turn().committed.is_empty());
        n.on_persisted(p.number);
        let (committed, _, _) = settle(&mut n);
        assert_eq!(committed.len(), 1);
    }

    #[test]
    fn reads_of_one_turn_share_one_read_index() {
        let mut n = single(1);
        n.campaign().unwrap();
        settle(&mut n);
        for r in 0..5 {
            n.read(r);
        }
        let (_, reads, _) = settle(&mut n);
        assert_eq!(reads.len(), 1, "one ReadState for the whole batch");
        assert_eq!(reads[0].1, vec![0, 1, 2, 3, 4]);
        assert_eq!(reads[0].0, n.commit_index());
    }

    #[test]
    fn reads_without_a_leader_time_out() {
        let mut n = single(1);
        n.read(7);
        let _ = n.turn();
        let mut expired = Vec::new();
        for _ in 0..READ_TIMEOUT_TICKS {
            // Keep the member from electing itself: drop its turns' outputs.
            expired.extend(n.tick());
            if !expired.is_empty() {
                break;
            }
        }
        // It may have become leader by election timeout and answered instead;
        // either way the read is never lost.
        let (_, reads, _) = settle(&mut n);
        let answered: Vec<u32> = reads.into_iter().flat_map(|(_, r)| r).collect();
        assert_eq!(expired.len() + answered.len(), 1);
    }
}
