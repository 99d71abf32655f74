//! The memory engine's [`LogStore`]: Raft entries and hard states as WAL
//! records (kinds in [`raft_log::record`](crate::storage::raft_log::record)).

use raft::eraftpb::{Entry, HardState};

use super::wal::Wal;
use crate::storage::engine::LogStore;
use crate::storage::raft_log::{encode_entries, encode_message, record};
use crate::storage::StorageError;

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

    fn purge(&mut self, upto: u64, _keep_after: u64) -> Result<(), StorageError> {
        // The in-memory log keeps the catch-up entries itself.
        let n = self.wal.purge(upto)?;
        if n > 0 {
            tracing::info!(segments = n, upto, "WAL segments purged");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::SnapshotMetadata;

    use super::*;
    use crate::storage::log_conformance::{LogHarness, Reopened, PURGE_ENTRY_BYTES};
    use crate::storage::memory::wal::{Record, WalOptions};
    use crate::storage::raft_log::{decode_entries, RaftLog};

    /// A WAL in a temporary data dir, opened as `storage::bootstrap` and
    /// `storage::open` open it.
    struct Harness {
        dir: tempfile::TempDir,
    }

    impl Harness {
        fn open(&self) -> (Wal, Vec<Record>) {
            // Segments smaller than one of the purge case's entries (so a
            // purge can drop whole synced batches), larger than the other
            // cases' logs (so each record is what the case wrote, not the
            // header of a new segment).
            let opts = WalOptions {
                segment_size: PURGE_ENTRY_BYTES as u64 / 2,
                preallocate: false,
            };
            Wal::open(&self.dir.path().join("wal"), opts).expect("open the WAL")
        }
    }

    impl LogHarness for Harness {
        type Log = WalLog;

        fn create(&mut self, start: &SnapshotMetadata, hs: &HardState) -> WalLog {
            // storage::engines::start_wal: where the log starts, then the hard state.
            let (mut wal, _) = self.open();
            wal.append(record::SNAPSHOT, &encode_message(start), start.index);
            wal.append(record::HARD_STATE, &encode_message(hs), 0);
            wal.sync().expect("sync the first records");
            WalLog::new(wal, hs.clone())
        }

        fn reopen(&mut self, log: WalLog, base: &SnapshotMetadata) -> Reopened<WalLog> {
            drop(log);
            let (wal, records) = self.open();
            let oldest = records
                .iter()
                .filter(|r| r.kind == record::ENTRIES)
                .flat_map(|r| decode_entries(&r.payload).expect("entries decode"))
                .map(|e| e.index)
                .min();
            let raft = RaftLog::recover(base.clone(), &records).expect("recover");
            let hard_state = raft.hard_state().clone();
            Reopened {
                log: WalLog::new(wal, hard_state),
                raft,
                oldest,
            }
        }

        fn install(&mut self, _: &mut WalLog, _: &SnapshotMetadata) {
            // The memory engine's install writes a snapshot file and leaves
            // the WAL alone: the marker `reset` writes starts the log over.
        }
    }

    fn harness() -> Harness {
        Harness {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// The LogStore suite against the WAL.
    mod conforms {
        use super::harness;
        crate::storage::log_conformance::log_store_conformance!(harness());
    }
}
