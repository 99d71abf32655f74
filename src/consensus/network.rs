//! A deterministic in-memory network over [`Node`]s, as raft-rs's own test
//! harness: the test ticks the members, delivers, drops, delays and
//! partitions their messages, persists their writes (at once, or later),
//! and applies what they commit. No threads, no sockets, no clock.
//!
//! Each member's state machine is the list of entry payloads it applied;
//! a snapshot carries that list. Each member's log keeps only a short tail
//! in memory (as on the rocksdb engine): older entries are read back from
//! what it persisted, by reads the test may hold back. Tests are named after
//! the Raft behaviour (and the etcd/raft-rs case) they check.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState,
    Message, MessageType, SnapshotMetadata,
};
use raft::StateRole;

use super::node::{Node, Persist};
use crate::storage::engine::LogReader;
use crate::storage::raft_log::{LogFetch, RaftLog, Tail};
use crate::storage::StorageError;

/// Entries a member's log keeps in memory in these tests.
const TAIL: Tail = Tail {
    entries: 8,
    bytes: 1 << 20,
};

/// A member's durable log, by index: what its log reader reads back.
#[derive(Default)]
pub struct Disk(Mutex<BTreeMap<u64, Entry>>);

impl Disk {
    fn write(&self, p: &Persist) {
        let mut log = self.0.lock().expect("no test panics holding it");
        if p.snapshot.is_some() {
            log.clear();
        }
        if let Some(first) = p.entries.first() {
            log.split_off(&first.index);
        }
        for e in &p.entries {
            log.insert(e.index, e.clone());
        }
    }

    /// Drops every entry at or below `upto` (a purge after a snapshot).
    pub fn purge(&self, upto: u64) {
        let mut log = self.0.lock().expect("no test panics holding it");
        *log = log.split_off(&(upto + 1));
    }
}

impl LogReader for Disk {
    fn read(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let log = self.0.lock().expect("no test panics holding it");
        let mut out: Vec<Entry> = Vec::new();
        let mut size = 0;
        for (&i, e) in log.range(low..high) {
            size += u64::from(e.compute_size());
            if i != low + out.len() as u64 || (!out.is_empty() && size > max_bytes) {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }
}

/// Which messages to hold back.
type Filter = Box<dyn Fn(&Message) -> bool>;

/// One member and its state machine.
pub struct Member {
    /// The decision logic under test.
    pub node: Node<u64>,
    /// Payloads applied, in order (the state machine).
    pub applied: Vec<Vec<u8>>,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Term of the last applied entry.
    pub applied_term: u64,
    /// Raft membership as applied.
    pub conf: ConfState,
    /// Writes handed out and not yet durable (persisted in order).
    unpersisted: VecDeque<Persist>,
    /// Snapshots installed.
    pub installs: usize,
    /// Leader changes this member reported.
    pub leader_changes: Vec<u64>,
    /// Reads answered: (read id, read index).
    pub reads: Vec<(u64, u64)>,
    /// What it persisted (its log reads old entries back from here).
    pub disk: Arc<Disk>,
    /// Reads of old entries started.
    pub fetches: usize,
    /// Reads held back (see [`Network::slow_reads`]).
    held_reads: Vec<LogFetch>,
}

/// The network.
pub struct Network {
    /// The members by id.
    pub members: BTreeMap<u64, Member>,
    queue: VecDeque<Message>,
    /// Links that drop everything (from, to).
    cut: BTreeSet<(u64, u64)>,
    /// Members that are down: nothing to or from them, no ticks.
    down: BTreeSet<u64>,
    /// Members whose writes stay unpersisted until `persist` is called.
    slow_disk: BTreeSet<u64>,
    /// Members whose reads of old entries wait for `finish_reads`.
    slow_reads: BTreeSet<u64>,
    /// Messages held back (delivered by `deliver_held`).
    held: Vec<Message>,
    hold: Option<Filter>,
}

fn config(id: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: 10,
        heartbeat_tick: 1,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 4 << 20,
        max_inflight_msgs: 512,
        ..Default::default()
    }
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl Member {
    fn new(id: u64, cs: ConfState, index: u64) -> Member {
        let meta = SnapshotMetadata {
            index,
            term: index.min(1),
            conf_state: protobuf::SingularPtrField::some(cs.clone()),
            ..Default::default()
        };
        let hs = HardState {
            term: meta.term,
            commit: index,
            ..Default::default()
        };
        let disk = Arc::new(Disk::default());
        let log = RaftLog::from_snapshot(meta, hs).with_reader(disk.clone(), TAIL);
        let cfg = raft::Config {
            applied: index,
            ..config(id)
        };
        Member {
            node: Node::new(&cfg, log, &logger()).expect("valid config"),
            applied: Vec::new(),
            applied_index: index,
            applied_term: index.min(1),
            conf: cs,
            unpersisted: VecDeque::new(),
            installs: 0,
            leader_changes: Vec::new(),
            reads: Vec::new(),
            disk,
            fetches: 0,
            held_reads: Vec::new(),
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if e.index <= self.applied_index {
                continue;
            }
            self.applied_index = e.index;
            self.applied_term = e.term;
            match e.get_entry_type() {
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).expect("conf change");
                    self.conf = self.node.apply_conf_change(&cc).expect("valid change");
                }
                _ if !e.data.is_empty() => self.applied.push(e.data.to_vec()),
                _ => {}
            }
        }
        self.node.on_applied(self.applied_index);
    }
}

impl Network {
    /// `n` voters (ids 1..=n), all starting from the same bootstrap point.
    pub fn new(n: u64) -> Network {
        let cs = ConfState {
            voters: (1..=n).collect(),
            ..Default::default()
        };
        let members = (1..=n)
            .map(|id| (id, Member::new(id, cs.clone(), 1)))
            .collect();
        Network {
            members,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            slow_disk: BTreeSet::new(),
            slow_reads: BTreeSet::new(),
            held: Vec::new(),
            hold: None,
        }
    }

    /// Adds a brand-new member that knows nothing (a member joining after
    /// MemberAdd): an empty log, no configuration.
    pub fn add_empty(&mut self, id: u64) {
        self.members
            .insert(id, Member::new(id, ConfState::default(), 0));
    }

    /// A member.
    pub fn m(&mut self, id: u64) -> &mut Member {
        self.members.get_mut(&id).expect("member exists")
    }

    /// Cuts `id` off from everyone, both ways.
    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for other in ids.into_iter().filter(|&o| o != id) {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    /// Heals every cut link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Stops a member (its messages are lost; it does not tick).
    pub fn stop(&mut self, id: u64) {
        self.down.insert(id);
    }

    /// Starts a stopped member again (its state is kept: a restart).
    pub fn start(&mut self, id: u64) {
        self.down.remove(&id);
    }

    /// `id`'s writes stay pending until [`Network::persist`].
    pub fn slow_disk(&mut self, id: u64) {
        self.slow_disk.insert(id);
    }

    /// `id`'s disk is fast again: what is pending becomes durable, and so
    /// does every later write at once.
    pub fn fast_disk(&mut self, id: u64) {
        self.slow_disk.remove(&id);
        self.persist(id);
    }

    /// `id`'s reads of old entries wait until [`Network::finish_reads`].
    pub fn slow_reads(&mut self, id: u64) {
        self.slow_reads.insert(id);
    }

    /// Runs `id`'s held reads (reading its disk as it is now) and hands
    /// their results to it; later reads run at once.
    pub fn finish_reads(&mut self, id: u64) {
        self.slow_reads.remove(&id);
        let m = self.m(id);
        for f in std::mem::take(&mut m.held_reads) {
            let done = f.run();
            m.node.on_fetched(done);
        }
        self.settle();
    }

    /// Holds back messages matching `f` (until [`Network::deliver_held`]).
    pub fn hold(&mut self, f: impl Fn(&Message) -> bool + 'static) {
        self.hold = Some(Box::new(f));
    }

    /// Delivers what was held back and stops holding.
    pub fn deliver_held(&mut self) {
        self.hold = None;
        self.queue.extend(self.held.drain(..));
    }

    /// Makes `id`'s pending writes durable.
    pub fn persist(&mut self, id: u64) {
        let m = self.members.get_mut(&id).expect("member");
        while let Some(p) = m.unpersisted.pop_front() {
            m.disk.write(&p);
            let out = m.node.on_persisted(p.number);
            self.queue.extend(out);
        }
    }

    /// One tick on every running member.
    pub fn tick(&mut self) {
        for (id, m) in self.members.iter_mut() {
            if !self.down.contains(id) {
                m.node.tick();
            }
        }
        self.settle();
    }

    /// Ticks `n` times, settling after each.
    pub fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.tick();
        }
    }

    /// Runs turns and delivers messages until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let ids: Vec<u64> = self.members.keys().copied().collect();
            for id in ids {
                if self.down.contains(&id) {
                    continue;
                }
                moved |= self.run_turns(id);
            }
            while let Some(msg) = self.queue.pop_front() {
                moved = true;
                self.deliver(msg);
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    fn run_turns(&mut self, id: u64) -> bool {
        let slow = self.slow_disk.contains(&id);
        let mut moved = false;
        loop {
            let m = self.members.get_mut(&id).expect("member");
            if !m.node.has_work() {
                break;
            }
            let turn = m.node.turn();
            if turn.is_empty() {
                break;
            }
            moved = true;
            if let Some(l) = turn.leader_changed {
                m.leader_changes.push(l);
            }
            for (index, reads) in turn.reads {
                m.reads.extend(reads.into_iter().map(|r| (r, index)));
            }
            if let Some(snap) = turn.install {
                // The state machine takes the image first (its data is the
                // leader's applied payloads).
                let meta = snap.get_metadata();
                m.applied = decode_state(&snap.data);
                m.applied_index = meta.index;
                m.applied_term = meta.term;
                m.conf = meta.get_conf_state().clone();
                m.installs += 1;
            }
            self.queue.extend(turn.messages);
            m.apply(turn.committed);
            if let Some(p) = turn.persist {
                m.unpersisted.push_back(p);
            }
            if !slow {
                self.persist(id);
            }
        }
        let hold = self.slow_reads.contains(&id);
        let m = self.members.get_mut(&id).expect("member");
        let fetches = m.node.take_fetches();
        m.fetches += fetches.len();
        for f in fetches {
            if hold {
                m.held_reads.push(f);
            } else {
                let done = f.run();
                m.node.on_fetched(done);
                moved = true;
            }
        }
        moved
    }

    fn deliver(&mut self, mut msg: Message) {
        if self.down.contains(&msg.from)
            || self.down.contains(&msg.to)
            || self.cut.contains(&(msg.from, msg.to))
            || !self.members.contains_key(&msg.to)
        {
            return;
        }
        if self.hold.as_ref().is_some_and(|f| f(&msg)) {
            self.held.push(msg);
            return;
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            // What the transport does: a fresh image of the sender's
            // applied state replaces the log's metadata-only snapshot.
            let from = &self.members[&msg.from];
            let snap = msg.mut_snapshot();
            snap.set_data(encode_state(&from.applied).into());
            let meta = snap.mut_metadata();
            meta.index = from.applied_index;
            meta.term = from.applied_term;
            meta.set_conf_state(from.conf.clone());
        }
        let to = msg.to;
        let _ = self.m(to).node.step(msg);
    }

    /// The member every running member agrees leads, if any.
    pub fn leader(&self) -> Option<u64> {
        let leaders: BTreeSet<u64> = self
            .members
            .iter()
            .filter(|(id, _)| !self.down.contains(id))
            .map(|(_, m)| m.node.leader())
            .collect();
        match leaders.into_iter().collect::<Vec<_>>()[..] {
            [l] if l != 0 => Some(l),
            _ => None,
        }
    }

    /// Ticks until a leader is agreed on (at most `max` ticks).
    pub fn elect(&mut self, max: usize) -> u64 {
        for _ in 0..max {
            if let Some(l) = self.leader() {
                if self.members[&l].node.role() == StateRole::Leader {
                    return l;
                }
            }
            self.tick();
        }
        panic!("no leader after {max} ticks");
    }

    /// Proposes `data` on `id`.
    pub fn propose(&mut self, id: u64, data: &[u8]) {
        self.m(id)
            .node
            .propose(data.to_vec())
            .expect("proposal accepted");
        self.settle();
    }
}

fn encode_state(applied: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in applied {
        out.extend_from_slice(&(a.len() as u32).to_le_bytes());
        out.extend_from_slice(a);
    }
    out
}

fn decode_state(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let n = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        out.push(bytes[4..4 + n].to_vec());
        bytes = &bytes[4 + n..];
    }
    out
}

/// A single conf change.
pub fn change(t: ConfChangeType, id: u64) -> ConfChangeV2 {
    ConfChangeV2 {
        changes: vec![ConfChangeSingle {
            change_type: t,
            node_id: id,
            ..Default::default()
        }]
        .into(),
        ..Default::default()
    }
}

impl Network {
    /// The leader the given members agree on, ticking until they do.
    pub fn leader_among(&mut self, ids: &[u64]) -> u64 {
        for _ in 0..100 {
            let ls: BTreeSet<u64> = ids.iter().map(|i| self.members[i].node.leader()).collect();
            if ls.len() == 1 {
                let l = *ls.iter().next().expect("one");
                if l != 0 && ids.contains(&l) {
                    return l;
                }
            }
            self.tick();
        }
        panic!("{ids:?} agree on no leader");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(net: &Network, id: u64) -> Vec<String> {
        net.members[&id]
            .applied
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    fn same_everywhere(net: &Network) -> Vec<String> {
        let first = applied(net, 1);
        for id in net.members.keys() {
            assert_eq!(applied(net, *id), first, "member {id} differs");
        }
        first
    }

    #[test]
    fn a_leader_is_elected_and_every_member_applies_the_same_entries() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        for i in 0..10 {
            net.propose(l, format!("e{i}").as_bytes());
        }
        net.ticks(3);
        let all = same_everywhere(&net);
        assert_eq!(all.len(), 10);
        // A follower forwards its proposal to the leader.
        let f = (1..=3).find(|&i| i != l).unwrap();
        net.propose(f, b"from-follower");
        net.ticks(2);
        assert_eq!(same_everywhere(&net).last().unwrap(), "from-follower");
    }

    /// Raft thesis 9.6 / etcd's TestPreVoteWithCheckQuorum: a member cut off
    /// campaigns without raising its term, so healing causes no election.
    #[test]
    fn prevote_keeps_a_cut_off_members_term_and_healing_elects_no_one() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        let f = (1..=3).find(|&i| i != l).unwrap();
        let term = net.members[&l].node.term();
        net.isolate(f);
        net.ticks(100);
        assert_eq!(
            net.members[&f].node.term(),
            term,
            "pre-vote raised the term"
        );
        net.heal();
        net.ticks(20);
        assert_eq!(net.leader(), Some(l));
        for m in net.members.values() {
            assert_eq!(m.node.term(), term);
        }
    }

    /// etcd's TestLeaderElectionWithCheckQuorum: a leader that cannot reach a
    /// quorum steps down within two election timeouts; the others elect.
    #[test]
    fn check_quorum_makes_a_cut_off_leader_step_down() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        net.isolate(l);
        let mut stepped = None;
        for t in 1..=20 {
            net.tick();
            if net.members[&l].node.role() != StateRole::Leader {
                stepped = Some(t);
                break;
            }
        }
        let t = stepped.expect("the cut-off leader kept leading for 2 election timeouts");
        assert!(t <= 20, "stepped down after {t} ticks");
        net.ticks(30);
        let others: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
        let new = net.members[&others[0]].node.leader();
        assert!(new != 0 && new != l);
        assert_eq!(net.members[&others[1]].node.leader(), new);
    }

    /// Proposals a leader took while cut off never commit: the new leader's
    /// log wins, the old leader reports the change, every member ends equal.
    #[test]
    fn a_leader_change_overwrites_proposals_that_never_reached_a_quorum() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        net.propose(l, b"before");
        net.isolate(l);
        for i in 0..3 {
            net.propose(l, format!("lost{i}").as_bytes());
        }
        net.ticks(40);
        let new = net.leader_among(&(1..=3).filter(|&i| i != l).collect::<Vec<_>>());
        net.propose(new, b"after");
        net.heal();
        net.ticks(20);
        let all = same_everywhere(&net);
        assert_eq!(all, vec!["before", "after"]);
        assert!(
            net.members[&l].leader_changes.contains(&new),
            "the old leader learned of the new one: {:?}",
            net.members[&l].leader_changes
        );
    }

    /// A member that was down while the leader compacted its log catches up
    /// through a snapshot of the leader's applied state, then the log.
    #[test]
    fn a_lagging_member_catches_up_through_a_snapshot() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        let lag = (1..=3).find(|&i| i != l).unwrap();
        net.stop(lag);
        for i in 0..50 {
            net.propose(l, format!("e{i}").as_bytes());
        }
        let applied = net.members[&l].applied_index;
        for id in 1..=3 {
            if id != lag {
                net.m(id).node.compact_log(applied);
            }
        }
        net.start(lag);
        net.ticks(5);
        net.propose(l, b"tail");
        net.ticks(3);
        assert_eq!(net.members[&lag].installs, 1);
        assert_eq!(same_everywhere(&net).len(), 51);
    }

    /// A member that was down while the others went on is sent the entries
    /// it missed, read back from the leader's disk (its log keeps only a
    /// short tail in memory), not a snapshot; the leader's memory holds no
    /// more than the tail meanwhile.
    #[test]
    fn a_follower_far_behind_is_sent_old_entries_read_back_from_disk() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        let lag = (1..=3).find(|&i| i != l).unwrap();
        net.stop(lag);
        for i in 0..200 {
            net.propose(l, format!("e{i}").as_bytes());
        }
        let in_memory = net.members[&l].node.log_in_memory();
        assert!(in_memory <= TAIL.entries, "{in_memory} entries in memory");
        net.start(lag);
        net.ticks(5);
        assert!(net.members[&l].fetches > 0, "old entries were read back");
        assert_eq!(net.members[&lag].installs, 0, "no snapshot was needed");
        assert_eq!(same_everywhere(&net).len(), 200);
        assert!(net.members[&lag].node.log_in_memory() <= TAIL.entries);
    }

    /// A read of old entries that finds them gone (the log was compacted
    /// and purged while it ran) ends in a snapshot, and the cluster goes on;
    /// the leader keeps serving while the read is out.
    #[test]
    fn old_entries_purged_while_being_read_are_replaced_by_a_snapshot() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        let lag = (1..=3).find(|&i| i != l).unwrap();
        net.stop(lag);
        for i in 0..100 {
            net.propose(l, format!("e{i}").as_bytes());
        }
        net.slow_reads(l);
        net.start(lag);
        net.ticks(3);
        assert!(net.members[&l].fetches > 0, "a read was asked for");
        assert!(net.members[&lag].applied.len() < 100);
        net.propose(l, b"while reading");
        let applied = net.members[&l].applied_index;
        net.m(l).node.compact_log(applied);
        net.members[&l].disk.purge(applied);
        net.finish_reads(l);
        net.ticks(3);
        assert_eq!(net.members[&lag].installs, 1);
        assert_eq!(same_everywhere(&net).len(), 101);
    }

    /// A member installing the leader's snapshot (seconds at a million
    /// keys; here its write stays pending) loses its leader meanwhile: its
    /// election timer must not run out into a campaign that reads the
    /// entries the snapshot replaced (raft-rs panics on them). Once the
    /// snapshot is in place it campaigns as any member, and the cluster
    /// goes on with it.
    #[test]
    fn a_member_installing_a_snapshot_does_not_campaign_until_it_is_in_place() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        let lag = (1..=3).find(|&i| i != l).unwrap();
        let other = (1..=3).find(|&i| i != l && i != lag).unwrap();
        net.stop(lag);
        for i in 0..50 {
            net.propose(l, format!("e{i}").as_bytes());
        }
        let upto = net.members[&l].applied_index;
        for id in [l, other] {
            net.m(id).node.compact_log(upto);
        }
        net.slow_disk(lag);
        net.start(lag);
        net.ticks(3);
        assert_eq!(net.members[&lag].installs, 1);
        assert!(
            !net.members[&lag].unpersisted.is_empty(),
            "the install is still under way"
        );
        // The leader goes; the installing member hears from no one for
        // many election timeouts, and neither campaigns nor crashes.
        net.stop(l);
        let term = net.members[&lag].node.term();
        net.ticks(40);
        assert_eq!(net.members[&lag].node.role(), StateRole::Follower);
        assert_eq!(net.members[&lag].node.term(), term);
        // Installed: it and the other survivor elect one of them and go on.
        net.fast_disk(lag);
        net.ticks(40);
        let new = net.leader_among(&[lag, other]);
        net.propose(new, b"after");
        assert_eq!(applied(&net, lag), applied(&net, other));
        assert_eq!(applied(&net, lag).last().map(String::as_str), Some("after"));
        assert_eq!(applied(&net, lag).len(), 51);
    }

    /// A leader sends its appends before its own write is durable (Raft
    /// thesis 10.2.1); a follower answers only once its write is durable.
    #[test]
    fn a_leader_replicates_while_its_own_write_is_in_flight() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        net.slow_disk(l);
        net.propose(l, b"x");
        // The followers wrote it and answered; the leader's disk has not.
        assert_eq!(net.members[&l].unpersisted.len(), 1);
        // And the next proposal leaves while the first write is still in
        // flight (appends are pipelined, not one at a time).
        net.propose(l, b"y");
        assert_eq!(net.members[&l].unpersisted.len(), 2);
        for id in (1..=3).filter(|&i| i != l) {
            assert!(net.members[&id].node.last_index() >= net.members[&l].node.last_index());
        }
        // A quorum of two followers commits it without the leader's write.
        assert!(net.members[&l].node.commit_index() >= net.members[&l].node.last_index());
        net.persist(l);
        net.settle();
        net.ticks(2);
        assert_eq!(same_everywhere(&net), vec!["x", "y"]);
    }

    /// Linearizable reads through ReadIndex, from a follower too.
    #[test]
    fn reads_of_one_turn_share_one_read_index_on_any_member() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        net.propose(l, b"w");
        let f = (1..=3).find(|&i| i != l).unwrap();
        for r in 0..4 {
            net.m(f).node.read(r);
        }
        net.settle();
        let reads = net.members[&f].reads.clone();
        assert_eq!(reads.len(), 4);
        let index = reads[0].1;
        assert!(reads.iter().all(|r| r.1 == index), "{reads:?}");
        assert!(index >= net.members[&l].applied_index);
    }

    /// Two members' reads reach the leader in the same round with the same
    /// counters: neither is dropped (contexts carry the member id).
    #[test]
    fn concurrent_reads_from_two_followers_are_both_answered() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        net.propose(l, b"w");
        let fs: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
        for &f in &fs {
            net.m(f).node.read(7);
        }
        net.settle();
        for &f in &fs {
            assert_eq!(
                net.members[&f].reads.len(),
                1,
                "follower {f}'s read was dropped"
            );
        }
    }

    /// MemberAdd as a learner, catch up (snapshot), promote; MemberRemove.
    #[test]
    fn a_learner_joins_catches_up_is_promoted_and_a_member_is_removed() {
        let mut net = Network::new(3);
        let l = net.elect(50);
        for i in 0..20 {
            net.propose(l, format!("e{i}").as_bytes());
        }
        net.m(l).node.compact_log(10);
        net.m(l)
            .node
            .propose_conf_change(Vec::new(), change(ConfChangeType::AddLearnerNode, 4))
            .unwrap();
        net.settle();
        net.add_empty(4);
        net.ticks(10);
        assert_eq!(net.members[&4].conf.learners, vec![4]);
        assert_eq!(net.members[&4].installs, 1);
        assert!(net.members[&4].node.is_learner());
        net.propose(l, b"to-the-learner");
        net.ticks(2);
        assert_eq!(applied(&net, 4), applied(&net, l));
        net.m(l)
            .node
            .propose_conf_change(Vec::new(), change(ConfChangeType::AddNode, 4))
            .unwrap();
        net.ticks(2);
        assert!(net.members[&4].conf.voters.contains(&4));
        assert!(!net.members[&4].node.is_learner());
        let gone = (1..=3).find(|&i| i != l).unwrap();
        net.m(l)
            .node
            .propose_conf_change(Vec::new(), change(ConfChangeType::RemoveNode, gone))
            .unwrap();
        net.ticks(2);
        assert!(!net.members[&l].conf.voters.contains(&gone));
        net.stop(gone);
        // Three voters left (two of the old ones and 4): a quorum is two.
        net.propose(l, b"after-removal");
        net.ticks(2);
        assert_eq!(applied(&net, 4).last().unwrap(), "after-removal");
    }
}
