//! The [`LogStore`] conformance suite: what every Raft log store must do,
//! written once against the trait, as [`conformance`](super::conformance)
//! is for [`KvEngine`](super::engine::KvEngine). Each implementation's
//! tests invoke [`log_store_conformance!`] with a constructor for a
//! [`LogHarness`] on a fresh data dir; the harness creates the log as a new
//! member's bootstrap does and reopens it the way the daemon recovers it
//! (`storage::engines::open_memory`, `storage::engines::open_rocks`), so every case checks
//! what a restart sees.
//!
//! The contract:
//! - what was appended and synced is there after a reopen: entries in
//!   order, and the last hard state synced;
//! - entries that overwrite a conflicting tail replace it, and everything
//!   after them is gone, before and after a reopen;
//! - empty appends change nothing; a hard state alone moves only the hard
//!   state;
//! - after `purge(upto)` the entries above `upto` are all kept and the log
//!   recovers from a state machine at `upto`; what was synced in whole
//!   batches at or below `upto` is gone from the disk (the memory engine
//!   drops whole WAL segments, so the suite makes each batch fill one);
//! - after a snapshot install at index N and `reset`, the log restarts
//!   after N: entries of the old log (even beyond N) are gone, the reset's
//!   hard state is the one recovered.

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use raft::{GetEntriesContext, Storage};

use super::engine::LogStore;
use super::raft_log::RaftLog;

/// What a restart sees.
pub struct Reopened<L> {
    /// The log store, open again.
    pub log: L,
    /// The Raft log recovered from it, as the daemon builds it.
    pub raft: RaftLog,
    /// The lowest entry index still stored, whatever the state machine's
    /// point (None: no entry at all).
    pub oldest: Option<u64>,
}

/// One implementation's way to create and reopen its log in a data dir.
pub trait LogHarness {
    /// The log store under test.
    type Log: LogStore;
    /// The log of a new member whose log starts after `start`, with hard
    /// state `hs` (what bootstrapping a data dir writes).
    fn create(&mut self, start: &SnapshotMetadata, hs: &HardState) -> Self::Log;
    /// Drops `log` (everything synced is durable; nothing else is promised)
    /// and recovers it as the daemon does, with the state machine at `base`.
    fn reopen(&mut self, log: Self::Log, base: &SnapshotMetadata) -> Reopened<Self::Log>;
    /// What the engine's install of a snapshot at `meta` does to the log
    /// before the RaftActor's ready calls `reset`.
    fn install(&mut self, log: &mut Self::Log, meta: &SnapshotMetadata);
}

fn meta(index: u64, term: u64) -> SnapshotMetadata {
    SnapshotMetadata {
        index,
        term,
        conf_state: protobuf::SingularPtrField::some(ConfState {
            voters: vec![1],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

/// Entries `from..=to` of `term`, each carrying its index and term as data.
fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|index| Entry {
            index,
            term,
            data: format!("{index}@{term}").into_bytes().into(),
            ..Default::default()
        })
        .collect()
}

/// (index, term, data) of every entry after the log's first index.
fn read(raft: &RaftLog) -> Vec<(u64, u64, String)> {
    let first = raft
        .first_index()
        .expect("an in-memory log has a first index");
    let last = raft.last();
    if last < first {
        return Vec::new();
    }
    raft.entries(first, last + 1, None, GetEntriesContext::empty(false))
        .expect("entries between first and last")
        .into_iter()
        .map(|e| {
            (
                e.index,
                e.term,
                String::from_utf8_lossy(&e.data).into_owned(),
            )
        })
        .collect()
}

/// What `read` returns for `entries(from, to, term)`.
fn expect(runs: &[(u64, u64, u64)]) -> Vec<(u64, u64, String)> {
    runs.iter()
        .flat_map(|&(from, to, term)| (from..=to).map(move |i| (i, term, format!("{i}@{term}"))))
        .collect()
}

/// Appended and synced entries and hard state survive a reopen, and the
/// reopened log goes on from where it was.
pub fn append_sync_reopen<H: LogHarness>(mut h: H) {
    let base = meta(0, 0);
    let mut log = h.create(&base, &hs(0, 0, 0));
    log.append(&entries(1, 3, 1), Some(&hs(1, 1, 2)));
    log.sync().expect("sync");
    let r = h.reopen(log, &base);
    assert_eq!(read(&r.raft), expect(&[(1, 3, 1)]));
    assert_eq!(r.raft.hard_state(), &hs(1, 1, 2));
    let mut log = r.log;
    log.append(&entries(4, 5, 2), Some(&hs(2, 3, 4)));
    log.sync().expect("sync");
    let r = h.reopen(log, &base);
    assert_eq!(read(&r.raft), expect(&[(1, 3, 1), (4, 5, 2)]));
    assert_eq!(r.raft.hard_state(), &hs(2, 3, 4));
    assert_eq!(r.oldest, Some(1));
}

/// A new leader's entries replace a conflicting tail, in one batch or
/// after a reopen; a longer replacement extends the log.
pub fn overwrite_conflicting_tail<H: LogHarness>(mut h: H) {
    let base = meta(0, 0);
    let mut log = h.create(&base, &hs(0, 0, 0));
    log.append(&entries(1, 6, 1), Some(&hs(1, 1, 1)));
    log.sync().expect("sync");
    // Shorter: 5 and 6 of term 1 must go.
    log.append(&entries(3, 4, 2), Some(&hs(2, 2, 1)));
    log.sync().expect("sync");
    let r = h.reopen(log, &base);
    assert_eq!(read(&r.raft), expect(&[(1, 2, 1), (3, 4, 2)]));
    // After the reopen the store still knows where its log ends.
    let mut log = r.log;
    log.append(&entries(2, 2, 3), Some(&hs(3, 3, 1)));
    log.sync().expect("sync");
    let r = h.reopen(log, &base);
    assert_eq!(read(&r.raft), expect(&[(1, 1, 1), (2, 2, 3)]));
    // Longer: replaces and goes beyond.
    let mut log = r.log;
    log.append(&entries(2, 4, 4), Some(&hs(4, 4, 1)));
    log.sync().expect("sync");
    let r = h.reopen(log, &base);
    assert_eq!(read(&r.raft), expect(&[(1, 1, 1), (2, 4, 4)]));
    // Overwritten and overwritten again inside one unsynced batch.
    let mut log = r.log;
    log.append(&entries(3, 6, 5), None);
    log.append(&entries(4, 4, 6), Some(&hs(6, 1, 2)));
    log.sync().expect("sync");
    let r = h.reopen(log, &base);
    assert_eq!(
        read(&r.raft),
        expect(&[(1, 1, 1), (2, 2, 4), (3, 3, 5), (4, 4, 6)])
    );
    assert_eq!(r.raft.hard_state(), &hs(6, 1, 2));
}

/// Empty appends (no entries, no hard state) change nothing.
pub fn empty_appends<H: LogHarness>(mut h: H) {
    let base = meta(0, 0);
    let mut log = h.create(&base, &hs(0, 0, 0));
    log.append(&[], None);
    log.sync().expect("sync of nothing");
    log.append(&entries(1, 4, 1), Some(&hs(1, 1, 3)));
    log.sync().expect("sync");
    log.append(&[], None);
    log.sync().expect("sync of nothing");
    let r = h.reopen(log, &base);
    assert_eq!(read(&r.raft), expect(&[(1, 4, 1)]));
    assert_eq!(r.raft.hard_state(), &hs(1, 1, 3));
}

/// A hard state alone moves the hard state and leaves every entry.
pub fn hard_state_only<H: LogHarness>(mut h: H) {
    let base = meta(0, 0);
    let mut log = h.create(&base, &hs(0, 0, 0));
    log.append(&entries(1, 4, 1), Some(&hs(1, 1, 1)));
    log.sync().expect("sync");
    log.append(&[], Some(&hs(1, 1, 3)));
    log.sync().expect("sync");
    let r = h.reopen(log, &base);
    assert_eq!(read(&r.raft), expect(&[(1, 4, 1)]));
    assert_eq!(r.raft.hard_state(), &hs(1, 1, 3));
    // Two in one batch: the later wins.
    let mut log = r.log;
    log.append(&[], Some(&hs(2, 0, 3)));
    log.append(&[], Some(&hs(2, 2, 4)));
    log.sync().expect("sync");
    let r = h.reopen(log, &base);
    assert_eq!(read(&r.raft), expect(&[(1, 4, 1)]));
    assert_eq!(r.raft.hard_state(), &hs(2, 2, 4));
}

/// Bytes of data in each of [`purge`]'s entries: more than a memory engine
/// harness's WAL segment, so each synced batch ends a segment (the WAL
/// purges whole segments).
pub const PURGE_ENTRY_BYTES: usize = 8 << 10;

/// Entry `index` of `term`, its data padded to [`PURGE_ENTRY_BYTES`].
fn big_entry(index: u64, term: u64) -> Entry {
    let mut e = entries(index, index, term).remove(0);
    let mut data = e.data.to_vec();
    data.resize(PURGE_ENTRY_BYTES, b'.');
    e.data = data.into();
    e
}

/// (index, term, data length) of every entry after the log's first index.
fn read_sizes(raft: &RaftLog) -> Vec<(u64, u64, usize)> {
    let first = raft
        .first_index()
        .expect("an in-memory log has a first index");
    raft.entries(
        first,
        raft.last() + 1,
        None,
        GetEntriesContext::empty(false),
    )
    .expect("entries between first and last")
    .into_iter()
    .map(|e| (e.index, e.term, e.data.len()))
    .collect()
}

/// A purge drops the synced batches it covers and nothing after them.
pub fn purge<H: LogHarness>(mut h: H) {
    let mut log = h.create(&meta(0, 0), &hs(0, 0, 0));
    for i in 1..=10 {
        log.append(&[big_entry(i, 1)], Some(&hs(1, 1, i)));
        log.sync().expect("sync");
    }
    log.purge(5, 5).expect("purge");
    let at5 = meta(5, 1);
    let r = h.reopen(log, &at5);
    assert_eq!(
        r.oldest,
        Some(6),
        "entries at or below 5 are gone, 6 is kept"
    );
    let want: Vec<_> = (6..=10).map(|i| (i, 1, PURGE_ENTRY_BYTES)).collect();
    assert_eq!(read_sizes(&r.raft), want);
    assert_eq!(r.raft.hard_state(), &hs(1, 1, 10));
    // The purged log goes on.
    let mut log = r.log;
    log.append(&entries(11, 11, 1), Some(&hs(1, 1, 11)));
    log.sync().expect("sync");
    let r = h.reopen(log, &at5);
    let mut want = want;
    want.push((11, 1, "11@1".len()));
    assert_eq!(read_sizes(&r.raft), want);
}

/// After a snapshot install and `reset`, the log restarts after the
/// snapshot: the old log is gone even where it went beyond it.
pub fn reset_after_snapshot<H: LogHarness>(mut h: H) {
    let mut log = h.create(&meta(0, 0), &hs(0, 0, 0));
    log.append(&entries(1, 12, 1), Some(&hs(1, 1, 4)));
    log.sync().expect("sync");
    let snap = meta(8, 2);
    h.install(&mut log, &snap);
    log.reset(&snap, &hs(2, 3, 8));
    log.sync().expect("sync");
    let r = h.reopen(log, &snap);
    assert_eq!(read(&r.raft), Vec::new());
    assert_eq!(r.raft.last(), 8);
    assert_eq!(r.raft.hard_state(), &hs(2, 3, 8));
    let mut log = r.log;
    log.append(&entries(9, 10, 2), None);
    log.sync().expect("sync");
    let r = h.reopen(log, &snap);
    assert_eq!(read(&r.raft), expect(&[(9, 10, 2)]));
    assert_eq!(r.raft.hard_state(), &hs(2, 3, 8));
    // Without a reopen in between: entries right after the reset.
    let mut log = r.log;
    let snap = meta(20, 3);
    h.install(&mut log, &snap);
    log.reset(&snap, &hs(3, 2, 20));
    log.append(&entries(21, 22, 3), Some(&hs(3, 2, 21)));
    log.sync().expect("sync");
    let r = h.reopen(log, &snap);
    assert_eq!(read(&r.raft), expect(&[(21, 22, 3)]));
    assert_eq!(r.raft.hard_state(), &hs(3, 2, 21));
}

/// One `#[test]` per case of the suite, each on a fresh harness from
/// `$make` (an expression evaluated once per test), so a failure names its
/// case. Used inside an implementation's test module.
macro_rules! log_store_conformance {
    ($make:expr) => {
        #[test]
        fn append_sync_reopen() {
            $crate::storage::log_conformance::append_sync_reopen($make);
        }
        #[test]
        fn overwrite_conflicting_tail() {
            $crate::storage::log_conformance::overwrite_conflicting_tail($make);
        }
        #[test]
        fn empty_appends() {
            $crate::storage::log_conformance::empty_appends($make);
        }
        #[test]
        fn hard_state_only() {
            $crate::storage::log_conformance::hard_state_only($make);
        }
        #[test]
        fn purge() {
            $crate::storage::log_conformance::purge($make);
        }
        #[test]
        fn reset_after_snapshot() {
            $crate::storage::log_conformance::reset_after_snapshot($make);
        }
    };
}
pub(crate) use log_store_conformance;
