//! The Raft log as raft-rs reads it: hard state, conf state, the snapshot
//! marker and every entry after it, held in memory.
//!
//! Owned by the RaftActor alone (inside `RawNode`), so no lock guards it.
//! Durability is the WAL's job: the RaftActor appends entries here (so raft can
//! read them at once, as `advance_append_async` requires) and hands the same
//! entries to the WalWriter. On start-up the log is rebuilt from the WAL records
//! and the latest snapshot file with [`RaftLog::recover`].

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

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

/// In-memory Raft log backing `raft::Storage`.
#[derive(Debug, Default, Clone)]
pub struct RaftLog {
    hard_state: HardState,
    /// Index, term and membership of the last snapshot (or the bootstrap point).
    snapshot: SnapshotMetadata,
    /// entries[i] has index snapshot.index + 1 + i.
    entries: VecDeque<Entry>,
}

impl RaftLog {
    /// A log that starts at a snapshot point (bootstrap or restored snapshot).
    pub fn from_snapshot(meta: SnapshotMetadata, hard_state: HardState) -> RaftLog {
        let mut log = RaftLog {
            hard_state,
            snapshot: meta,
            entries: VecDeque::new(),
        };
        log.fix_commit();
        log
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
                    log.entries.clear();
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
        self.snapshot.index + self.entries.len() as u64
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
        let keep = (first.index - self.snapshot.index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend(ents.iter().cloned());
        Ok(())
    }

    /// Restarts the log at a snapshot from the leader: every entry goes, the
    /// commit index reaches the snapshot.
    pub fn apply_snapshot(&mut self, meta: SnapshotMetadata) {
        self.entries.clear();
        self.snapshot = meta;
        self.fix_commit();
    }

    /// Drops entries up to and including `index` (they live on in a snapshot).
    pub fn compact(&mut self, index: u64) {
        if index <= self.snapshot.index || index > self.last() {
            return;
        }
        let term = self.term_of(index).unwrap_or(self.snapshot.term);
        let drop = (index - self.snapshot.index) as usize;
        self.entries.drain(..drop);
        self.snapshot.index = index;
        self.snapshot.term = term;
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if idx < self.snapshot.index || idx > self.last() {
            return None;
        }
        Some(self.entries[(idx - self.snapshot.index - 1) as usize].term)
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
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let lo = (low - self.snapshot.index - 1) as usize;
        let hi = (high - self.snapshot.index - 1) as usize;
        let mut out: Vec<Entry> = self.entries.range(lo..hi).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
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
