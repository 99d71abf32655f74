//! The memory engine's [`LogStore`]: Raft entries and hard states as WAL
//! records (kinds in [`raft_log::record`](super::raft_log::record)).

use raft::eraftpb::{Entry, HardState};

use super::engine::LogStore;
use super::raft_log::{encode_entries, encode_message, record};
use super::wal::Wal;
use crate::error::StorageError;

/// Raft log durability through the WAL.
pub struct WalLog {
    wal: Wal,
    /// Latest hard state, written at the head of every new segment so each
    /// segment stands alone once older ones are purged.
    hard_state: HardState,
    buf: Vec<u8>,
}

impl WalLog {
    /// Wraps an opened WAL whose last hard state is `hard_state`.
    pub fn new(wal: Wal, hard_state: HardState) -> WalLog {
        WalLog {
            wal,
            hard_state,
            buf: Vec::new(),
        }
    }
}

impl LogStore for WalLog {
    fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) {
        if let Some(last) = entries.last() {
            self.buf.clear();
            encode_entries(entries, &mut self.buf);
            self.wal.append(record::ENTRIES, &self.buf, last.index);
        }
        if let Some(hs) = hard_state {
            self.wal.append(record::HARD_STATE, &encode_message(hs), 0);
            self.hard_state = hs.clone();
        }
    }

    fn reset(&mut self, meta: &raft::eraftpb::SnapshotMetadata, hard_state: &HardState) {
        // On recovery a snapshot marker starts the log over (RaftLog::recover).
        self.wal
            .append(record::SNAPSHOT, &encode_message(meta), meta.index);
        self.wal
            .append(record::HARD_STATE, &encode_message(hard_state), 0);
        self.hard_state = hard_state.clone();
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.wal.sync()?;
        if self.wal.should_rotate() {
            let header = vec![(record::HARD_STATE, encode_message(&self.hard_state))];
            self.wal.rotate(&header)?;
        }
        Ok(())
    }

    fn purge(&mut self, upto: u64) -> Result<(), StorageError> {
        let n = self.wal.purge(upto)?;
        if n > 0 {
            tracing::info!(segments = n, upto, "WAL segments purged");
        }
        Ok(())
    }
}
