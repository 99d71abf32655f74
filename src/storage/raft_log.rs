//! The Raft log as raft-rs reads it: hard state, conf state, the snapshot
//! marker and every entry after it.
//!
//! Owned by the RaftActor alone (inside `RawNode`), so no lock guards it.
//! Durability is the WAL's job: the RaftActor appends entries here (so raft can
//! read them at once, as `advance_append_async` requires) and hands the same
//! entries to the WalWriter. On start-up the log is rebuilt from the WAL records
//! and the latest snapshot file with [`RaftLog::recover`].
//!
//! With a [`LogReader`] (the rocksdb engine, whose log store can read entries
//! back by index) only a tail of the log stays in memory: entries that are
//! applied and durable beyond the newest [`Tail`] go, and only their terms
//! (as runs) stay. They are still in the log: raft reads them back to send
//! a follower far behind. That read happens off the Raft thread: `entries`
//! answers `LogTemporarilyUnavailable` and records the request,
//! [`RaftLog::take_fetches`] hands it to a worker, and once its result is in
//! ([`RaftLog::fetched`]) raft is told to send again (`on_entries_fetched`)
//! and is served from it. What the worker could not read, or no longer
//! matches the log, is answered `Compacted`: the follower gets a snapshot,
//! as when the entries are gone. Without a reader every entry stays in
//! memory, as before (the memory engine).
//!
//! Invariants: the on-disk part is `(snapshot.index, mem_first)`, all of it
//! applied and durable, so never truncated by a new leader; a fetched entry
//! is served only while its index is in that part and its term is the one
//! recorded for it.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

use crate::storage::engine::LogReader;
use crate::storage::StorageError;

/// WAL record kinds written by the Raft layer.
pub mod record {
    /// A run of consecutive entries (each length-prefixed protobuf).
    pub const ENTRIES: u8 = 1;
    /// A HardState (protobuf).
    pub const HARD_STATE: u8 = 2;
    /// A snapshot marker: SnapshotMetadata (protobuf). The log starts over
    /// after it: a new member's starting point, or a snapshot from the
    /// leader that the state machine installed before the marker was
    /// written.
    pub const SNAPSHOT: u8 = 3;
}

/// How much of the log stays in memory when a [`LogReader`] holds the rest:
/// the newest `entries`, at most about `bytes` of them (applied entries
/// beyond either limit go to disk only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// Entries kept at most.
    pub entries: usize,
    /// Bytes kept at most (payload plus a fixed per-entry overhead).
    pub bytes: u64,
}

impl Default for Tail {
    /// Enough for followers a few seconds behind under load to be served
    /// from memory; about 4 MiB of small puts.
    fn default() -> Tail {
        Tail {
            entries: 8192,
            bytes: 16 << 20,
        }
    }
}

/// What an in-memory entry is counted as besides its payload (the struct,
/// the deque slot, the buffers' headers).
const ENTRY_OVERHEAD: u64 = 128;

/// Requests waiting on one read at most; more callers for the same index
/// ask again at their next heartbeat response.
const MAX_WAITING: usize = 16;

fn entry_bytes(e: &Entry) -> u64 {
    (e.data.len() + e.context.len()) as u64 + ENTRY_OVERHEAD
}

/// A read of on-disk entries raft asked for, to run on a worker.
pub struct LogFetch {
    low: u64,
    high: u64,
    max_size: u64,
    reader: Arc<dyn LogReader>,
}

impl LogFetch {
    /// Reads the entries (blocking I/O: never on the Raft thread).
    pub fn run(self) -> Fetched {
        let entries = self.reader.read(self.low, self.high, self.max_size);
        if let Err(e) = &entries {
            tracing::warn!(error = %e, low = self.low, "reading old Raft log entries failed");
        }
        Fetched {
            low: self.low,
            entries: entries.unwrap_or_default(),
        }
    }

    /// First index asked for.
    pub fn low(&self) -> u64 {
        self.low
    }
}

/// The result of a [`LogFetch`]: entries from `low` on (none when they
/// could not be read).
pub struct Fetched {
    low: u64,
    entries: Vec<Entry>,
}

impl Fetched {
    /// The result of a read from `low` that could not run: nothing read.
    pub fn nothing(low: u64) -> Fetched {
        Fetched {
            low,
            entries: Vec::new(),
        }
    }
}

/// Callers waiting for one read.
struct Request {
    high: u64,
    max_size: u64,
    waiting: Vec<GetEntriesContext>,
    issued: bool,
}

/// The part of the log held on disk only, and reads of it.
#[derive(Default)]
struct Cold {
    reader: Option<Arc<dyn LogReader>>,
    tail: Tail,
    /// Entries after the snapshot point held on disk only.
    len: u64,
    /// Their terms as runs (first index, term), ascending; the first run
    /// may start at or before the first on-disk index.
    terms: VecDeque<(u64, u64)>,
    /// Reads raft asked for, by first index (interior mutability: raft
    /// asks through `&self`).
    requests: RefCell<BTreeMap<u64, Request>>,
    /// The read whose callers are being told (served to them, then dropped).
    fetched: Option<Fetched>,
}

/// In-memory Raft log backing `raft::Storage`.
#[derive(Default)]
pub struct RaftLog {
    hard_state: HardState,
    /// Index, term and membership of the last snapshot (or the bootstrap point).
    snapshot: SnapshotMetadata,
    /// The oldest entries after the snapshot, when a reader holds them.
    cold: Cold,
    /// entries[i] has index `mem_first() + i`.
    entries: VecDeque<Entry>,
    /// Payload bytes of `entries` (as [`entry_bytes`] counts them).
    mem_bytes: u64,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog")
            .field("hard_state", &self.hard_state)
            .field("snapshot", &(self.snapshot.index, self.snapshot.term))
            .field("on_disk_only", &self.cold.len)
            .field("in_memory", &self.entries.len())
            .finish()
    }
}

impl RaftLog {
    /// A log that starts at a snapshot point (bootstrap or restored snapshot).
    pub fn from_snapshot(meta: SnapshotMetadata, hard_state: HardState) -> RaftLog {
        let mut log = RaftLog {
            hard_state,
            snapshot: meta,
            ..RaftLog::default()
        };
        log.fix_commit();
        log
    }

    /// Keeps only a tail of the log in memory from now on: `reader` reads
    /// back what [`RaftLog::trim`] drops.
    pub fn with_reader(mut self, reader: Arc<dyn LogReader>, tail: Tail) -> RaftLog {
        self.cold.reader = Some(reader);
        self.cold.tail = tail;
        self
    }

    /// Rebuilds the log from WAL records, on top of the snapshot the state
    /// machine was restored from (entries it covers are skipped). A snapshot
    /// marker drops every entry before it: they belong to a log a snapshot
    /// from the leader replaced.
    pub fn recover(
        base: SnapshotMetadata,
        records: &[crate::storage::memory::wal::Record],
    ) -> Result<RaftLog, StorageError> {
        let mut log = RaftLog::from_snapshot(base, HardState::default());
        for rec in records {
            match rec.kind {
                record::ENTRIES => {
                    let entries = decode_entries(&rec.payload)?;
                    let keep: Vec<Entry> = entries
                        .into_iter()
                        .filter(|e| e.index > log.snapshot.index)
                        .collect();
                    if !keep.is_empty() {
                        log.append(&keep)?;
                    }
                }
                record::HARD_STATE => {
                    log.hard_state = parse_bounded::<HardState>(&rec.payload)
                        .map_err(|e| StorageError::Decode(format!("hard state: {e}")))?;
                }
                record::SNAPSHOT => {
                    let meta = parse_bounded::<SnapshotMetadata>(&rec.payload)
                        .map_err(|e| StorageError::Decode(format!("snapshot marker: {e}")))?;
                    if meta.index > log.snapshot.index {
                        // The state machine must hold at least what the log
                        // restarts after, or entries in between are lost.
                        return Err(StorageError::Decode(format!(
                            "the log restarts after index {} but the newest snapshot is at {}; \
                             an install of a snapshot from the leader did not finish",
                            meta.index, log.snapshot.index
                        )));
                    }
                    log.clear_entries();
                }
                other => {
                    return Err(StorageError::Decode(format!("unknown record kind {other}")));
                }
            }
        }
        log.fix_commit();
        Ok(log)
    }

    /// A snapshot's index is committed by definition; the hard state that said so
    /// may not have reached the disk before the snapshot file did.
    fn fix_commit(&mut self) {
        if self.hard_state.commit < self.snapshot.index {
            self.hard_state.commit = self.snapshot.index;
        }
        if self.hard_state.term < self.snapshot.term {
            self.hard_state.term = self.snapshot.term;
        }
    }

    /// Current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Records a new hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Index of the last entry (or of the snapshot when there is none).
    pub fn last(&self) -> u64 {
        self.mem_first() - 1 + self.entries.len() as u64
    }

    /// Index of the first entry held in memory.
    fn mem_first(&self) -> u64 {
        self.snapshot.index + 1 + self.cold.len
    }

    /// Entries held in memory (the rest is on disk only).
    pub fn in_memory(&self) -> usize {
        self.entries.len()
    }

    fn clear_entries(&mut self) {
        self.entries.clear();
        self.mem_bytes = 0;
        self.cold.len = 0;
        self.cold.terms.clear();
        self.cold.fetched = None;
    }

    /// Appends entries, replacing any conflicting suffix (a new leader's log wins).
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.snapshot.index {
            return Err(StorageError::Decode(format!(
                "append at {} overwrites the snapshot at {}",
                first.index, self.snapshot.index
            )));
        }
        if first.index > self.last() + 1 {
            return Err(StorageError::Decode(format!(
                "append at {} leaves a gap after {}",
                first.index,
                self.last()
            )));
        }
        if first.index < self.mem_first() {
            // Only applied entries are on disk only, and raft never
            // replaces those; should it, the on-disk part ends before them.
            self.cold.len = first.index - self.snapshot.index - 1;
            while self.cold.terms.back().is_some_and(|r| r.0 >= first.index) {
                self.cold.terms.pop_back();
            }
            if self.cold.len == 0 {
                self.cold.terms.clear();
            }
            self.entries.clear();
            self.mem_bytes = 0;
        }
        let keep = (first.index - self.mem_first()) as usize;
        for e in self.entries.drain(keep..) {
            self.mem_bytes -= entry_bytes(&e);
        }
        for e in ents {
            self.mem_bytes += entry_bytes(e);
            self.entries.push_back(e.clone());
        }
        Ok(())
    }

    /// Restarts the log at a snapshot from the leader: every entry goes, the
    /// commit index reaches the snapshot.
    pub fn apply_snapshot(&mut self, meta: SnapshotMetadata) {
        self.clear_entries();
        self.snapshot = meta;
        self.fix_commit();
    }

    /// Drops entries up to and including `index` (they live on in a snapshot).
    pub fn compact(&mut self, index: u64) {
        if index <= self.snapshot.index || index > self.last() {
            return;
        }
        let term = self.term_of(index).unwrap_or(self.snapshot.term);
        let drop = index - self.snapshot.index;
        if drop <= self.cold.len {
            self.cold.len -= drop;
            while self.cold.terms.len() > 1 && self.cold.terms[1].0 <= index + 1 {
                self.cold.terms.pop_front();
            }
        } else {
            let from_memory = (drop - self.cold.len) as usize;
            self.cold.len = 0;
            for e in self.entries.drain(..from_memory) {
                self.mem_bytes -= entry_bytes(&e);
            }
        }
        if self.cold.len == 0 {
            self.cold.terms.clear();
        }
        self.snapshot.index = index;
        self.snapshot.term = term;
    }

    /// With a reader: leaves on disk only the entries up to `upto` (applied
    /// and durable) that are beyond the in-memory tail.
    pub fn trim(&mut self, upto: u64) {
        if self.cold.reader.is_none() {
            return;
        }
        let tail = self.cold.tail;
        while self.entries.len() > tail.entries || self.mem_bytes > tail.bytes {
            let Some(front) = self.entries.front() else {
                break;
            };
            if front.index > upto {
                break;
            }
            let e = self.entries.pop_front().expect("front exists");
            self.mem_bytes -= entry_bytes(&e);
            if self.cold.terms.back().map(|r| r.1) != Some(e.term) {
                self.cold.terms.push_back((e.index, e.term));
            }
            self.cold.len += 1;
        }
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if idx < self.snapshot.index || idx > self.last() {
            return None;
        }
        let mem_first = self.mem_first();
        if idx < mem_first {
            let run = self.cold.terms.partition_point(|r| r.0 <= idx);
            return run.checked_sub(1).map(|i| self.cold.terms[i].1);
        }
        Some(self.entries[(idx - mem_first) as usize].term)
    }

    /// The reads raft asked for that no worker runs yet.
    pub fn take_fetches(&mut self) -> Vec<LogFetch> {
        let Some(reader) = &self.cold.reader else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (&low, req) in self.cold.requests.get_mut().iter_mut() {
            if !req.issued {
                req.issued = true;
                out.push(LogFetch {
                    low,
                    high: req.high,
                    max_size: req.max_size,
                    reader: reader.clone(),
                });
            }
        }
        out
    }

    /// A read is done: holds its entries for the callers that waited on
    /// it, and returns those callers (hand each to raft's
    /// `on_entries_fetched`, then call [`RaftLog::fetch_served`]).
    pub fn fetched(&mut self, done: Fetched) -> Vec<GetEntriesContext> {
        let waiting = self
            .cold
            .requests
            .get_mut()
            .remove(&done.low)
            .map(|r| r.waiting)
            .unwrap_or_default();
        self.cold.fetched = Some(done);
        waiting
    }

    /// The callers of the last read were served: its entries go.
    pub fn fetch_served(&mut self) {
        self.cold.fetched = None;
    }

    /// On-disk entries from `low` on, from a read that finished, as far as
    /// they are still the log's: `None` when no read covers `low`.
    fn served_from_read(&self, low: u64, high: u64, max_size: Option<u64>) -> Option<Vec<Entry>> {
        let f = self.cold.fetched.as_ref()?;
        if low < f.low || low >= f.low + (f.entries.len() as u64).max(1) {
            return None;
        }
        let from = (low - f.low) as usize;
        Some(self.still_ours(low, high, &f.entries[from..], max_size))
    }

    /// The entries read back from `low` on that are still the log's (in
    /// order, before `high` and the in-memory part, with the terms
    /// recorded for them), about `max_size` of them.
    fn still_ours(&self, low: u64, high: u64, read: &[Entry], max_size: Option<u64>) -> Vec<Entry> {
        let end = high.min(self.mem_first());
        let mut out: Vec<Entry> = read
            .iter()
            .enumerate()
            .take_while(|(i, e)| {
                e.index == low + *i as u64 && e.index < end && self.term_of(e.index) == Some(e.term)
            })
            .map(|(_, e)| e.clone())
            .collect();
        raft::util::limit_size(&mut out, max_size);
        out
    }

    /// Entries `[low, high)` of the on-disk part (`high <= mem_first`).
    fn cold_entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let compacted = || raft::Error::Store(RaftStorageError::Compacted);
        if let Some(got) = self.served_from_read(low, high, max_size) {
            // Nothing usable read back: the follower gets a snapshot.
            return if got.is_empty() {
                Err(compacted())
            } else {
                Ok(got)
            };
        }
        let Some(reader) = &self.cold.reader else {
            return Err(compacted());
        };
        let max = max_size.unwrap_or(u64::MAX);
        if context.can_async() {
            let mut requests = self.cold.requests.borrow_mut();
            let req = requests.entry(low).or_insert_with(|| Request {
                high,
                max_size: max,
                waiting: Vec::new(),
                issued: false,
            });
            if req.waiting.len() < MAX_WAITING {
                req.waiting.push(context);
            }
            return Err(raft::Error::Store(
                RaftStorageError::LogTemporarilyUnavailable,
            ));
        }
        // Callers that cannot wait only read recent entries; should one
        // reach this far back, it reads here rather than fail.
        tracing::debug!(low, high, "old Raft log entries read on the Raft thread");
        let read = LogFetch {
            low,
            high,
            max_size: max,
            reader: reader.clone(),
        }
        .run();
        let got = self.still_ours(low, high, &read.entries, max_size);
        if got.is_empty() {
            return Err(compacted());
        }
        Ok(got)
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.snapshot.get_conf_state().clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        if low <= self.snapshot.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let mem_first = self.mem_first();
        if low < mem_first {
            // Fewer entries than asked for is fine: raft sends what it got.
            return self.cold_entries(low, high.min(mem_first), max_size, context);
        }
        let lo = (low - mem_first) as usize;
        let hi = (high - mem_first) as usize;
        let mut out: Vec<Entry> = self.entries.range(lo..hi).cloned().collect();
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(RaftStorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// Where the log starts. Only the metadata: the transport replaces it
    /// with a fresh image of the applied state (at or after this index) and
    /// that image's index, term and membership before it leaves.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snapshot.clone());
        Ok(snap)
    }
}

/// Encodes a run of entries as one WAL payload: u32 length + protobuf, repeated.
pub fn encode_entries(entries: &[Entry], out: &mut Vec<u8>) {
    for e in entries {
        let len = e.compute_size();
        out.extend_from_slice(&len.to_le_bytes());
        // Writing a computed-size message into a Vec cannot fail.
        e.write_to_vec(out).expect("protobuf encode into Vec");
    }
}

/// Decodes what [`encode_entries`] wrote.
pub fn decode_entries(mut buf: &[u8]) -> Result<Vec<Entry>, StorageError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 4 {
            return Err(StorageError::Decode("truncated entry length".into()));
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        buf = &buf[4..];
        if buf.len() < len {
            return Err(StorageError::Decode("truncated entry".into()));
        }
        let e = parse_bounded::<Entry>(&buf[..len])
            .map_err(|e| StorageError::Decode(format!("entry: {e}")))?;
        out.push(e);
        buf = &buf[len..];
    }
    Ok(out)
}

/// Decodes a Raft protobuf message from untrusted bytes. Read from a plain
/// slice, the protobuf library allocates a buffer of a bytes field's
/// declared length (up to 10 MB) before it finds the input shorter (a
/// 141-byte peer message made it allocate 10 MB, a 10-byte one 1 MB).
/// Here the input is one shared buffer (one copy) that fields are sliced
/// from, checked against its end first, and its length is the limit for
/// the fields that are copied.
pub fn parse_bounded<M: protobuf::Message>(bytes: &[u8]) -> protobuf::ProtobufResult<M> {
    let bytes = bytes::Bytes::copy_from_slice(bytes);
    let mut is = protobuf::CodedInputStream::from_carllerche_bytes(&bytes);
    is.push_limit(bytes.len() as u64)?;
    let m = M::parse_from(&mut is)?;
    is.check_eof()?;
    Ok(m)
}

/// Protobuf bytes of a message (hard state, snapshot metadata).
pub fn encode_message(m: &impl protobuf::Message) -> Vec<u8> {
    m.write_to_bytes().expect("protobuf encode into Vec")
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    fn base() -> RaftLog {
        let meta = SnapshotMetadata {
            index: 1,
            term: 1,
            ..Default::default()
        };
        RaftLog::from_snapshot(meta, HardState::default())
    }

    #[test]
    fn append_truncates_a_conflicting_suffix() {
        let mut log = base();
        log.append(&[ent(2, 1), ent(3, 1), ent(4, 1)]).unwrap();
        log.append(&[ent(3, 2)]).unwrap();
        assert_eq!(log.last_index().unwrap(), 3);
        assert_eq!(log.term(3).unwrap(), 2);
        assert!(log.append(&[ent(6, 2)]).is_err(), "a gap is refused");
        assert!(
            log.append(&[ent(1, 2)]).is_err(),
            "the snapshot is immutable"
        );
    }

    #[test]
    fn compaction_moves_the_first_index() {
        let mut log = base();
        log.append(&[ent(2, 1), ent(3, 2), ent(4, 2)]).unwrap();
        log.compact(3);
        assert_eq!(log.first_index().unwrap(), 4);
        assert_eq!(log.term(3).unwrap(), 2);
        assert!(log.term(2).is_err());
        assert!(log
            .entries(3, 5, None, GetEntriesContext::empty(false))
            .is_err());
        let got = log
            .entries(4, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, vec![ent(4, 2)]);
    }

    #[test]
    fn recover_replays_entries_and_hard_state_over_a_snapshot() {
        use crate::storage::memory::wal::Record;
        let mut payload = Vec::new();
        encode_entries(&[ent(2, 1), ent(3, 1), ent(4, 1)], &mut payload);
        let hs = HardState {
            term: 2,
            commit: 3,
            ..Default::default()
        };
        let mut rewrite = Vec::new();
        encode_entries(&[ent(4, 2)], &mut rewrite);
        let records = vec![
            Record {
                kind: record::ENTRIES,
                payload,
            },
            Record {
                kind: record::HARD_STATE,
                payload: encode_message(&hs),
            },
            Record {
                kind: record::ENTRIES,
                payload: rewrite,
            },
        ];
        let meta = SnapshotMetadata {
            index: 2,
            term: 1,
            ..Default::default()
        };
        let log = RaftLog::recover(meta, &records).unwrap();
        assert_eq!(log.first_index().unwrap(), 3);
        assert_eq!(log.last_index().unwrap(), 4);
        assert_eq!(log.term(4).unwrap(), 2);
        assert_eq!(log.hard_state().commit, 3);
    }

    /// A reader over a copy of what was appended (the durable log).
    struct Copy(std::sync::Mutex<Vec<Entry>>);

    impl LogReader for Copy {
        fn read(&self, low: u64, high: u64, _max: u64) -> Result<Vec<Entry>, StorageError> {
            let all = self.0.lock().unwrap();
            Ok(all
                .iter()
                .filter(|e| e.index >= low && e.index < high)
                .cloned()
                .collect())
        }
    }

    /// Entries 2..=41, the term moving up every 10.
    fn trimmed_log(tail: usize) -> (RaftLog, Arc<Copy>) {
        let ents: Vec<Entry> = (2..=41).map(|i| ent(i, 1 + i / 10)).collect();
        let disk = Arc::new(Copy(std::sync::Mutex::new(ents.clone())));
        let tail = Tail {
            entries: tail,
            bytes: 1 << 20,
        };
        let mut log = base().with_reader(disk.clone(), tail);
        log.append(&ents).unwrap();
        log.trim(35);
        (log, disk)
    }

    fn later() -> GetEntriesContext {
        GetEntriesContext::empty(true)
    }

    #[test]
    fn trimmed_entries_keep_their_terms_and_are_read_back_off_the_thread() {
        let (mut log, _) = trimmed_log(4);
        // Only entries past 35 (not applied) or among the newest 4 stay.
        assert_eq!(log.in_memory(), 6);
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (2, 41)
        );
        for i in 1..=41 {
            let want = if i == 1 { 1 } else { 1 + i / 10 };
            assert_eq!(log.term(i).unwrap(), want, "term of {i}");
        }
        let unavailable = raft::Error::Store(RaftStorageError::LogTemporarilyUnavailable);
        assert_eq!(log.entries(5, 42, None, later()).unwrap_err(), unavailable);
        assert_eq!(log.entries(5, 42, None, later()).unwrap_err(), unavailable);
        let fetches = log.take_fetches();
        assert_eq!(fetches.len(), 1, "one read for both callers");
        assert!(log.take_fetches().is_empty(), "handed out once");
        let waiting = log.fetched(fetches.into_iter().next().unwrap().run());
        assert_eq!(waiting.len(), 2);
        // Served up to the in-memory part (raft sends the rest next).
        let got = log.entries(5, 42, None, later()).unwrap();
        let want: Vec<Entry> = (5..36).map(|i| ent(i, 1 + i / 10)).collect();
        assert_eq!(got, want);
        log.fetch_served();
        assert_eq!(log.entries(5, 42, None, later()).unwrap_err(), unavailable);
        // Callers that cannot wait read at once.
        let got = log
            .entries(30, 38, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 6, "30..36 from disk; the rest next call");
        let got = log.entries(36, 42, None, later()).unwrap();
        assert_eq!(got.first().map(|e| e.index), Some(36));
    }

    #[test]
    fn entries_read_back_that_the_log_no_longer_has_are_not_served() {
        let (mut log, disk) = trimmed_log(4);
        // The disk holds a different history from 20 on (never so for
        // applied entries; a read racing a purge and a new log is the case).
        for e in disk.0.lock().unwrap().iter_mut().filter(|e| e.index >= 20) {
            e.term = 9;
        }
        let _ = log.entries(10, 42, None, later());
        let f = log.take_fetches().pop().unwrap();
        log.fetched(f.run());
        let got = log.entries(10, 42, None, later()).unwrap();
        assert_eq!(
            got.last().map(|e| e.index),
            Some(19),
            "stops at the mismatch"
        );
        let compacted = raft::Error::Store(RaftStorageError::Compacted);
        assert_eq!(log.entries(20, 42, None, later()).unwrap_err(), compacted);
        log.fetch_served();
        // Nothing read at all: the caller sends a snapshot.
        disk.0.lock().unwrap().clear();
        let _ = log.entries(10, 42, None, later());
        let f = log.take_fetches().pop().unwrap();
        log.fetched(f.run());
        assert_eq!(log.entries(10, 42, None, later()).unwrap_err(), compacted);
    }

    #[test]
    fn compaction_and_appends_reach_into_the_on_disk_part() {
        let (mut log, _) = trimmed_log(4);
        log.compact(25);
        assert_eq!(log.first_index().unwrap(), 26);
        assert_eq!(log.term(25).unwrap(), 3);
        assert_eq!(log.term(33).unwrap(), 4);
        assert_eq!(log.in_memory(), 6);
        log.compact(37);
        assert_eq!((log.first_index().unwrap(), log.in_memory()), (38, 4));
        assert_eq!(log.term(37).unwrap(), 4);
        let (mut log, _) = trimmed_log(4);
        log.append(&[ent(30, 7), ent(31, 7)]).unwrap();
        assert_eq!((log.last_index().unwrap(), log.in_memory()), (31, 2));
        assert_eq!(log.term(29).unwrap(), 3);
        assert_eq!(log.term(30).unwrap(), 7);
        // Without a reader nothing leaves memory.
        let mut plain = base();
        plain
            .append(&(2..=41).map(|i| ent(i, 1)).collect::<Vec<_>>())
            .unwrap();
        plain.trim(41);
        assert_eq!(plain.in_memory(), 40);
    }

    #[test]
    fn decode_refuses_truncated_payloads() {
        let mut payload = Vec::new();
        encode_entries(&[ent(2, 1)], &mut payload);
        for cut in 1..payload.len() {
            assert!(decode_entries(&payload[..cut]).is_err());
        }
    }

    /// A snapshot from the leader was installed after some entries of an
    /// older log: its marker starts the log over, and entries after it
    /// follow. A marker beyond the state machine's snapshot means the
    /// install did not finish: refused.
    #[test]
    fn a_snapshot_marker_starts_the_log_over() {
        use crate::storage::memory::wal::Record;
        let entries = |es: &[Entry]| {
            let mut payload = Vec::new();
            encode_entries(es, &mut payload);
            Record {
                kind: record::ENTRIES,
                payload,
            }
        };
        let marker = |index| Record {
            kind: record::SNAPSHOT,
            payload: encode_message(&SnapshotMetadata {
                index,
                term: 3,
                ..Default::default()
            }),
        };
        // Stale entries 2..=6 of an old term, then the install at 10.
        let records = vec![
            entries(&[ent(2, 1), ent(3, 1), ent(4, 1), ent(5, 1), ent(6, 1)]),
            marker(10),
            entries(&[ent(11, 3), ent(12, 3)]),
        ];
        let base = |index| SnapshotMetadata {
            index,
            term: 3,
            ..Default::default()
        };
        let log = RaftLog::recover(base(10), &records).unwrap();
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (11, 12)
        );
        assert_eq!(log.hard_state().commit, 10);
        let err = RaftLog::recover(base(1), &records).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
    }
}
