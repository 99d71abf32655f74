//! What travels from Raft to the applier, bounded.
//!
//! Raft commits at the network's pace, the applier applies at the disk's;
//! when the applier is slower (a slow engine commit, a stalled disk), what
//! Raft hands it must not pile up in its mailbox without limit. This struct
//! decides, without I/O, what the RaftActor hands over and when:
//!
//! - Committed entries are handed over while fewer than `max_entries`
//!   entries and `max_bytes` bytes are in flight (handed over, not yet
//!   reported applied). The rest stay in the Raft log, which holds them
//!   anyway until they are applied, and are remembered by index only: as the
//!   applier reports progress, [`ApplyFlow::next_range`] says which to read
//!   back from the log and hand over. Order is kept: nothing is handed over
//!   while older entries wait.
//! - Reads whose read index is known wait in the applier until it reaches
//!   that index; [`ApplyFlow::reads_full`] says when `max_reads` wait there.
//! - [`ApplyFlow::gap_too_large`] is etcd's rule for new proposals: refused
//!   ("too many requests") while the commit index is more than
//!   `max_gap` entries ahead of the applied index.
//!
//! Invariants: indexes handed over are consecutive and increasing; what is
//! in flight is exactly what was handed over and not yet reported applied;
//! a snapshot install starts the flow over after the snapshot's index.

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::Entry;

/// Limits of the flow to the applier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Entries in flight to the applier, at most.
    pub max_entries: u64,
    /// Bytes of entry data in flight to the applier, at most (a single
    /// larger entry still goes, alone).
    pub max_bytes: u64,
    /// Reads waiting in the applier, at most.
    pub max_reads: usize,
    /// Commit index ahead of the applied index beyond which proposals are
    /// refused (etcd: 5000).
    pub max_gap: u64,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            max_entries: 4096,
            max_bytes: 64 << 20,
            max_reads: 16384,
            max_gap: 5000,
        }
    }
}

/// The flow of committed entries and reads to the applier.
#[derive(Debug)]
pub struct ApplyFlow {
    limits: FlowLimits,
    /// Batches handed over and not yet applied: (last index, entries, bytes).
    in_flight: VecDeque<(u64, u64, u64)>,
    entries: u64,
    bytes: u64,
    /// Last index handed over (or applied, or installed).
    handed: u64,
    /// Last committed index known; `handed..=committed` waits in the log.
    committed: u64,
    /// Reads handed over per read index, not yet served.
    reads: BTreeMap<u64, usize>,
    read_count: usize,
    /// Last index the applier reported.
    applied: u64,
}

fn size(e: &Entry) -> u64 {
    (e.data.len() + e.context.len()) as u64
}

impl ApplyFlow {
    /// A flow whose applier has applied up to `applied`.
    pub fn new(limits: FlowLimits, applied: u64) -> ApplyFlow {
        ApplyFlow {
            limits,
            in_flight: VecDeque::new(),
            entries: 0,
            bytes: 0,
            handed: applied,
            committed: applied,
            reads: BTreeMap::new(),
            read_count: 0,
            applied,
        }
    }

    fn room(&self) -> bool {
        self.entries < self.limits.max_entries && self.bytes < self.limits.max_bytes
    }

    /// Committed entries from a Raft turn (consecutive, in order): returns
    /// those to hand over now. The rest are left to [`ApplyFlow::next_range`].
    pub fn committed(&mut self, entries: Vec<Entry>) -> Vec<Entry> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return entries;
        };
        self.committed = self.committed.max(last);
        if self.handed + 1 < entries[0].index || !self.room() {
            // Older entries wait in the log, or no room: these wait too.
            return Vec::new();
        }
        let mut take = 0;
        let (mut n, mut b) = (self.entries, self.bytes);
        for e in &entries {
            if e.index <= self.handed {
                // Already handed over (raft never repeats, but be sure).
                take += 1;
                continue;
            }
            if n >= self.limits.max_entries || (b >= self.limits.max_bytes && take > 0) {
                break;
            }
            n += 1;
            b += size(e);
            take += 1;
        }
        let mut entries = entries;
        entries.truncate(take);
        entries.retain(|e| e.index > self.handed);
        self.handed_over(&entries);
        entries
    }

    /// Records entries handed over (read back from the log after
    /// [`ApplyFlow::next_range`], or from [`ApplyFlow::committed`]).
    pub fn handed_over(&mut self, entries: &[Entry]) {
        let Some(last) = entries.last() else { return };
        let bytes: u64 = entries.iter().map(size).sum();
        self.in_flight
            .push_back((last.index, entries.len() as u64, bytes));
        self.entries += entries.len() as u64;
        self.bytes += bytes;
        self.handed = last.index;
    }

    /// The entries to read back from the log and hand over now, as
    /// `[low, high)` with the most bytes to read, if there are any and room.
    pub fn next_range(&self) -> Option<(u64, u64, u64)> {
        if self.handed >= self.committed || !self.room() {
            return None;
        }
        let count = (self.limits.max_entries - self.entries).min(self.committed - self.handed);
        let bytes = self.limits.max_bytes - self.bytes;
        Some((self.handed + 1, self.handed + 1 + count, bytes))
    }

    /// The applier applied everything up to `index`.
    pub fn applied(&mut self, index: u64) {
        self.applied = self.applied.max(index);
        while let Some(&(last, n, b)) = self.in_flight.front() {
            if last > self.applied {
                break;
            }
            self.in_flight.pop_front();
            self.entries -= n;
            self.bytes -= b;
        }
        let later = self.reads.split_off(&(self.applied + 1));
        let served: usize = std::mem::replace(&mut self.reads, later).values().sum();
        self.read_count -= served;
    }

    /// The state was replaced by a snapshot at `index`: entries up to it
    /// will never be applied, and the applier starts after it.
    pub fn installed(&mut self, index: u64) {
        self.in_flight.clear();
        self.entries = 0;
        self.bytes = 0;
        self.handed = self.handed.max(index);
        self.committed = self.committed.max(index);
        self.applied(index);
    }

    /// `count` reads with read index `index` were handed over.
    pub fn reads_handed(&mut self, index: u64, count: usize) {
        if index <= self.applied || count == 0 {
            // Served at once by the applier.
            return;
        }
        *self.reads.entry(index).or_default() += count;
        self.read_count += count;
    }

    /// Whether as many reads as allowed wait in the applier.
    pub fn reads_full(&self) -> bool {
        self.read_count >= self.limits.max_reads
    }

    /// Whether a new proposal is to be refused: the commit index `commit`
    /// is too far ahead of what is applied.
    pub fn gap_too_large(&self, commit: u64) -> bool {
        commit > self.applied + self.limits.max_gap
    }

    /// Entries and bytes in flight to the applier, and entries committed
    /// but not yet handed over.
    pub fn backlog(&self) -> (u64, u64, u64) {
        (self.entries, self.bytes, self.committed - self.handed)
    }

    /// Reads waiting in the applier.
    pub fn waiting_reads(&self) -> usize {
        self.read_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(from: u64, to: u64, bytes: usize) -> Vec<Entry> {
        (from..=to)
            .map(|index| Entry {
                index,
                term: 1,
                data: vec![0; bytes].into(),
                ..Default::default()
            })
            .collect()
    }

    fn limits(max_entries: u64, max_bytes: u64) -> FlowLimits {
        FlowLimits {
            max_entries,
            max_bytes,
            max_reads: 3,
            max_gap: 10,
        }
    }

    fn indexes(es: &[Entry]) -> Vec<u64> {
        es.iter().map(|e| e.index).collect()
    }

    #[test]
    fn entries_beyond_the_cap_wait_in_the_log_until_the_applier_makes_room() {
        let mut f = ApplyFlow::new(limits(4, 1 << 20), 0);
        assert_eq!(indexes(&f.committed(entries(1, 3, 10))), [1, 2, 3]);
        // Only one more fits; 5 and 6 stay in the log, by index.
        assert_eq!(indexes(&f.committed(entries(4, 6, 10))), [4]);
        assert_eq!(f.backlog(), (4, 40, 2));
        assert_eq!(f.next_range(), None, "no room while 4 are in flight");
        // Newer entries do not jump the queue.
        assert!(f.committed(entries(7, 7, 10)).is_empty());
        f.applied(3);
        assert_eq!(f.backlog(), (1, 10, 3));
        let (lo, hi, _) = f.next_range().expect("room for 3");
        assert_eq!((lo, hi), (5, 8));
        f.handed_over(&entries(lo, hi - 1, 10));
        assert_eq!(f.backlog(), (4, 40, 0));
        f.applied(7);
        assert_eq!(f.backlog(), (0, 0, 0));
        assert_eq!(indexes(&f.committed(entries(8, 8, 10))), [8]);
    }

    #[test]
    fn bytes_cap_the_flow_but_one_large_entry_still_goes() {
        let mut f = ApplyFlow::new(limits(100, 100), 0);
        assert_eq!(indexes(&f.committed(entries(1, 5, 60))), [1, 2]);
        f.applied(2);
        let (lo, hi, max) = f.next_range().expect("room");
        assert_eq!((lo, max), (3, 100));
        assert!(hi > lo);
        let mut g = ApplyFlow::new(limits(100, 100), 0);
        assert_eq!(indexes(&g.committed(entries(1, 2, 500))), [1], "alone");
    }

    #[test]
    fn reads_waiting_in_the_applier_are_capped_and_freed_as_it_applies() {
        let mut f = ApplyFlow::new(limits(10, 1 << 20), 5);
        f.reads_handed(4, 5);
        assert!(!f.reads_full(), "served at once: below the applied index");
        f.reads_handed(7, 2);
        f.reads_handed(9, 1);
        assert!(f.reads_full());
        assert_eq!(f.waiting_reads(), 3);
        f.applied(7);
        assert_eq!(f.waiting_reads(), 1);
        assert!(!f.reads_full());
    }

    #[test]
    fn proposals_are_refused_while_commit_runs_too_far_ahead_of_apply() {
        let mut f = ApplyFlow::new(limits(10, 1 << 20), 0);
        assert!(!f.gap_too_large(10));
        assert!(f.gap_too_large(11));
        f.applied(5);
        assert!(!f.gap_too_large(15));
    }

    #[test]
    fn a_snapshot_starts_the_flow_over_after_its_index() {
        let mut f = ApplyFlow::new(limits(2, 1 << 20), 0);
        f.committed(entries(1, 5, 1));
        f.reads_handed(4, 1);
        f.installed(20);
        assert_eq!(f.backlog(), (0, 0, 0));
        assert_eq!(f.waiting_reads(), 0);
        assert_eq!(f.next_range(), None);
        assert_eq!(indexes(&f.committed(entries(21, 22, 1))), [21, 22]);
    }
}
